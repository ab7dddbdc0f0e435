"""Named pipelines: tuples of :class:`~jaxreg.optimize.Stage` (data, not code).

=============  ======================================================================================
name           stages
=============  ======================================================================================
``default``    affine (NCC, best candidate start) -> symmetric greedy SVF with local NCC (window 5),
               tuned on brain MRI (mono-modal)
``multimodal`` affine (Mattes MI, 32 bins) -> symmetric greedy SVF with normalised MI (32 bins)
``affine``     the affine stage of ``default`` alone
``rigid``      a rigid stage (NCC) alone
``similarity`` a similarity-transform stage (rotation, isotropic scale, translation; NCC) alone
``syn``        symmetric greedy SVF with local NCC (window 5) alone, no linear stage: for pairs already
               aligned (by their headers or an initial transform, ``outer`` of :func:`register`)
``demons``     affine -> diffeomorphic demons (Thirion's force, compositive ``exp`` updates of a
               displacement field; Vercauteren et al. 2009): mono-modal images of equal intensity scales
``bspline``    affine -> cubic B-spline FFD at 40, 20, 10 mm control spacing (local NCC + 0.01 x analytic
               bending energy, as NiftyReg ``reg_f3d``)
``dense``      affine -> variational displacement field (local NCC + diffusion, gradient descent)
=============  ======================================================================================

:func:`preset` returns a pipeline with some settings replaced (the command line's options).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from jaxreg.optimize.engine import Level, Stage
from jaxreg.optimize.methods import Gradient, Greedy, Optimizer, Stopping
from jaxreg.optimize.models import BSpline, Field, Linear
from jaxreg.optimize.objective import Objective, field_term, objective, similarity_term, transform_term
from jaxreg.regularizers import bspline_bending_energy

__all__ = ["DEFAULT_GREEDY_LEVELS", "DEFAULT_LINEAR_LEVELS", "PRESETS", "preset"]

DEFAULT_LINEAR_LEVELS = (Level(4, 0.0, 100), Level(2, 0.0, 50))
DEFAULT_GREEDY_LEVELS = (Level(4, 0.0, 40), Level(2, 0.0, 20), Level(1, 0.0, 5))

_LINEAR_OPT = Optimizer("adam", 0.2, radius_mm="auto")


def _linear(metric: str, family: str = "affine") -> Stage:
    method = Gradient(objective(similarity_term(metric)), _LINEAR_OPT, Stopping(tol=1e-5))
    return Stage(method, Linear(family), DEFAULT_LINEAR_LEVELS, "auto", family)


_AFFINE_NCC = _linear("ncc")

PRESETS: dict[str, tuple[Stage, ...]] = {
    "default": (
        _AFFINE_NCC,
        Stage(Greedy("lncc(window=5)", step=0.5), None, DEFAULT_GREEDY_LEVELS, name="deformable"),
    ),
    "multimodal": (
        _linear("mi(bins=32)"),
        Stage(Greedy("nmi(bins=32)", step=0.5), None, DEFAULT_GREEDY_LEVELS, name="deformable"),
    ),
    "affine": (_AFFINE_NCC,),
    "rigid": (_linear("ncc", "rigid"),),
    "similarity": (_linear("ncc", "similarity"),),
    "syn": (Stage(Greedy("lncc(window=5)", step=0.5), None, DEFAULT_GREEDY_LEVELS, name="deformable"),),
    "demons": (
        _AFFINE_NCC,
        Stage(
            Greedy(force="demons", symmetric=False, update="diffeomorphic", step=0.5, sigma_update=1.0,
                   sigma_field=1.0),
            None,
            DEFAULT_GREEDY_LEVELS,
            name="deformable",
        ),
    ),
    "bspline": (_AFFINE_NCC,)
    + tuple(
        Stage(
            Gradient(
                objective(
                    similarity_term("lncc(window=5)"),
                    transform_term(bspline_bending_energy, 0.01, name="bending"),
                ),
                Optimizer("adam", 0.5),
            ),
            BSpline(spacing),
            (level,),
            name=f"bspline{spacing:g}",
        )
        for spacing, level in (
            (40.0, Level(4, 0.0, 60)),
            (20.0, Level(2, 0.0, 40)),
            (10.0, Level(1, 0.0, 20)),
        )
    ),
    "dense": (
        _AFFINE_NCC,
        Stage(
            Gradient(
                objective(similarity_term("lncc(window=5)"), field_term("diffusion", 1.0)),
                Optimizer("adam", 0.2),
            ),
            Field("displacement"),
            (Level(4, 0.0, 80), Level(2, 0.0, 40)),
            name="dense",
        ),
    ),
}


def preset(
    name: str,
    *,
    linear_levels: Sequence[Level] | None = None,
    deformable_levels: Sequence[Level] | None = None,
    similarity: Any = None,
    linear_similarity: Any = None,
    greedy: dict[str, Any] | None = None,
    init: str | None = None,
) -> tuple[Stage, ...]:
    """The pipeline ``name`` of :data:`PRESETS`, with some settings replaced.

    Args:
      name: a key of :data:`PRESETS`.
      linear_levels: levels of the linear stage(s).
      deformable_levels: levels of a greedy deformable stage.
      similarity: similarity of the deformable stage(s) (function or registry spec, e.g. ``"lncc(window=7)"``
        or a :func:`~jaxreg.similarity.weighted_sum` of several): the greedy stage's, or the similarity terms of
        a gradient-based deformable stage's objective (B-spline, dense), each replaced with its weight kept.
      linear_similarity: similarity of the linear stage(s), replacing their objective's similarity terms.
      greedy: other settings of the greedy stage (:class:`~jaxreg.optimize.Greedy` field names).
      init: start of the linear stage (``"auto"``, ``"moments"``, ``"com"``, ``"center"``, ``"identity"``).

    Returns:
      A tuple of stages for :func:`~jaxreg.optimize.register`.
    """
    if name not in PRESETS:
        raise ValueError(f"pipeline: expected one of {sorted(PRESETS)}, got {name!r}")
    out = []
    for st in PRESETS[name]:
        model = st.model
        if isinstance(model, Linear):
            if linear_levels is not None:
                st = st._replace(levels=tuple(linear_levels))
            if init is not None:
                st = st._replace(init=init)
            if linear_similarity is not None:
                st = st._replace(method=_with_similarity(st.method, linear_similarity))
        elif isinstance(st.method, Greedy):
            changes = dict(greedy or {})
            if similarity is not None:
                changes["similarity"] = similarity
            if changes:
                unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(Greedy)})
                if unknown:
                    raise ValueError(f"greedy: unknown settings {unknown}")
                st = st._replace(method=dataclasses.replace(st.method, **changes))
            if deformable_levels is not None:
                st = st._replace(levels=tuple(deformable_levels))
        elif similarity is not None:
            st = st._replace(method=_with_similarity(st.method, similarity))
        out.append(st)
    return tuple(out)


def _with_similarity(method: Gradient, similarity: Any) -> Gradient:
    """``method`` with every similarity term of its objective replaced by ``similarity`` (weights kept)."""
    obj = method.objective
    terms = tuple(
        similarity_term(similarity)[0] if t.kind == "similarity" else t for t in obj.terms
    )
    return dataclasses.replace(method, objective=Objective(terms, obj.weights))
