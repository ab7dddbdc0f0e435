"""Registration as optimisation: one entry point, strategy objects, one result type.

:func:`register` runs any method on any transform model over resolution levels, for one pair or a batch
(``jax.vmap`` of the same per-level kernel), and returns one :class:`Registration`. The pieces are values:

* methods (:mod:`~jaxreg.optimize.methods`): :class:`Gradient` (an :class:`Objective` of weighted terms and
  an :class:`Optimizer`, :class:`Stopping`), :class:`Greedy` (demons/SyN-like diffeomorphic updates);
* transform models (:mod:`~jaxreg.optimize.models`): :class:`Linear`, :class:`BSpline`, :class:`Field`;
* pipelines: tuples of :class:`Stage` (method, model, :class:`Level` s, start); the named ones in
  :data:`PRESETS` (``"default"``, ``"multimodal"``, ``"affine"``, ``"rigid"``, ``"similarity"``, ``"syn"``,
  ``"demons"``, ``"bspline"``, ``"dense"``);
* starts (:mod:`~jaxreg.optimize.init`): centres of mass, principal axes, and the scored candidate starts;
* cohorts (:mod:`~jaxreg.optimize.cohort`): :func:`register_pairs`, many pairs from files, batched and sharded
  over devices, one atomic output folder per pair, resumable; templates (:mod:`~jaxreg.optimize.template`):
  :func:`build_template`, an unbiased groupwise template by iterated batched registration.

Example::

    from jaxreg.optimize import Gradient, Level, Optimizer, objective, register, similarity_term
    method = Gradient(objective(similarity_term("lncc(window=5)")), Optimizer("adam", 0.1))
    result = register(fixed, moving, method=method, levels=(Level(2, 0.0, 50), Level(1, 0.0, 20)))
    result = register(fixed, moving, method="default")   # affine -> symmetric greedy SVF
"""

from jaxreg.optimize.cohort import Pair, folder_pairs, read_pairs_csv, register_pairs
from jaxreg.optimize.engine import Level, LevelResult, Progress, Registration, Stage, StageResult, register
from jaxreg.optimize.init import candidate_starts, center_init, center_of_mass, image_moments, moments_init
from jaxreg.optimize.methods import Gradient, Greedy, Optimizer, Stopping
from jaxreg.optimize.models import BSpline, Field, Linear, Region, linear_as
from jaxreg.optimize.objective import Objective, Term, field_term, objective, similarity_term, transform_term
from jaxreg.optimize.presets import DEFAULT_GREEDY_LEVELS, DEFAULT_LINEAR_LEVELS, PRESETS, preset
from jaxreg.optimize.template import TemplateResult, build_template, write_template

__all__ = [
    "DEFAULT_GREEDY_LEVELS",
    "DEFAULT_LINEAR_LEVELS",
    "PRESETS",
    "BSpline",
    "Field",
    "Gradient",
    "Greedy",
    "Level",
    "LevelResult",
    "Linear",
    "Objective",
    "Optimizer",
    "Pair",
    "Progress",
    "Region",
    "Registration",
    "Stage",
    "StageResult",
    "Stopping",
    "TemplateResult",
    "Term",
    "build_template",
    "candidate_starts",
    "center_init",
    "center_of_mass",
    "field_term",
    "folder_pairs",
    "image_moments",
    "linear_as",
    "moments_init",
    "objective",
    "preset",
    "read_pairs_csv",
    "register",
    "register_pairs",
    "similarity_term",
    "transform_term",
    "write_template",
]
