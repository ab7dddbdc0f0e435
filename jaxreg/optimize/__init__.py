"""Optimisation-based registration: objectives, the compiled multi-resolution engine.

:func:`register` is the one iterative entry point: a fixed and a moving image, an initial transform, an
:class:`Objective` (weighted terms), an optax optimiser, resolution :class:`Level` s and a :class:`Stopping`
rule; it returns a :class:`RegistrationResult`. :func:`register_many` runs a batch of registrations (pairs or
weight sweeps) in one vmapped, compiled call. :func:`greedy_register` is the greedy (demons-like, SyN-like)
diffeomorphic alternative for dense fields, and :func:`greedy_register_many` runs it for many pairs with one
vmapped, compiled call per level.
"""

from jaxreg.optimize.engine import (
    Level,
    LevelResult,
    RegistrationResult,
    Stopping,
    adapt_transform,
    register,
    register_many,
)
from jaxreg.optimize.greedy import GreedyManyResult, GreedyOptions, greedy_register, greedy_register_many
from jaxreg.optimize.objective import (
    Objective,
    Term,
    field_term,
    objective,
    regularized_field,
    similarity_term,
    transform_term,
)

__all__ = [
    "GreedyManyResult",
    "GreedyOptions",
    "Level",
    "LevelResult",
    "Objective",
    "RegistrationResult",
    "Stopping",
    "Term",
    "adapt_transform",
    "field_term",
    "greedy_register",
    "greedy_register_many",
    "objective",
    "register",
    "register_many",
    "regularized_field",
    "similarity_term",
    "transform_term",
]
