"""Ready registration pipelines, assembled from the engine's parts.

* :func:`linear_optimizer`: an optax optimiser that scales each kind of linear parameter by its unit
  (translations in mm, matrices and rotations dimensionless, divided by a radius in mm) and freezes centres.
* :func:`register_linear`: moments initialisation, then rigid, similarity or affine optimisation with a global
  metric (NCC for mono-modal pairs, Mattes MI for multi-modal ones) over a resolution pyramid.
* :func:`register_pair`: the default pipeline that works on brain MRI without tuning: moments -> affine (NCC)
  -> symmetric diffeomorphic greedy registration (stationary velocity field, local NCC, SyN-like), or the
  multi-modal variant (affine with MI, deformable with MIND-SSC descriptors compared by SSD).

Each returns the full pull transform (fixed -> moving world points) with its parts and per-stage records.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxreg.core.grid import Image
from jaxreg.optimize.engine import Level, RegistrationResult, Stopping, register
from jaxreg.optimize.greedy import GreedyOptions, greedy_register
from jaxreg.optimize.init import center_init, moments_init
from jaxreg.optimize.objective import objective, similarity_term
from jaxreg.transforms.base import LinearTransform, Transform
from jaxreg.transforms.compose import compose
from jaxreg.transforms.linear import Affine, Rigid, Similarity

__all__ = ["linear_optimizer", "register_linear", "register_pair", "PipelineResult", "DEFAULT_LINEAR_LEVELS", "DEFAULT_GREEDY_LEVELS"]

DEFAULT_LINEAR_LEVELS = (Level(4, 0.0, 100), Level(2, 0.0, 50))
DEFAULT_GREEDY_LEVELS = (Level(4, 0.0, 40), Level(2, 0.0, 20))

_UNIT = {"offset": "mm", "translation": "mm", "matrix": "lin", "rotation": "lin", "log_scale": "lin", "center": "frozen"}


def linear_optimizer(*, step_mm: float = 0.2, radius_mm: float = 80.0) -> optax.GradientTransformation:
    """Adam with per-parameter units for linear transforms.

    Translations move by about ``step_mm`` per iteration; matrix entries, rotation angles and log-scales by
    ``step_mm / radius_mm`` (which moves a point at ``radius_mm`` from the centre by about ``step_mm``);
    centres are frozen.

    Args:
      step_mm: Adam learning rate of translations, mm.
      radius_mm: typical distance of the image content from the centre, mm.
    """

    def labels(t: Any) -> Any:
        return type(t)(**{k: _UNIT.get(k, "lin") for k in t.__dataclass_fields__})

    return optax.multi_transform(
        {"mm": optax.adam(step_mm), "lin": optax.adam(step_mm / radius_mm), "frozen": optax.set_to_zero()}, labels
    )


def _metric(name: str):
    from jaxreg import similarity as sim

    table = {"ncc": lambda: sim.ncc, "ssd": lambda: sim.ssd, "mi": lambda: sim.mi(32), "nmi": lambda: sim.nmi(32), "lncc": lambda: sim.lncc(5)}
    if name not in table:
        raise ValueError(f"metric: expected one of {sorted(table)}, got {name!r}")
    return table[name]()


_METRIC_CACHE: dict[str, Any] = {}


def _cached_metric(name: str):
    # the same function object across calls keeps the engine's compilation cache warm
    if name not in _METRIC_CACHE:
        _METRIC_CACHE[name] = _metric(name)
    return _METRIC_CACHE[name]


def _radius(image: Image) -> float:
    return float(0.25 * np.linalg.norm(image.grid.extent))


def register_linear(
    fixed: Image,
    moving: Image,
    *,
    model: str = "affine",
    metric: str = "ncc",
    init: str | LinearTransform | None = "moments",
    levels: Sequence[Level] = DEFAULT_LINEAR_LEVELS,
    stopping: Stopping = Stopping(tol=1e-5),
    fixed_mask: Image | None = None,
    moving_mask: Image | None = None,
    step_mm: float = 0.2,
    progress: bool = False,
) -> RegistrationResult:
    """Intensity-based rigid, similarity or affine registration.

    Args:
      fixed: fixed image.
      moving: moving image.
      model: ``"rigid"``, ``"similarity"`` or ``"affine"``.
      metric: ``"ncc"``, ``"ssd"``, ``"lncc"`` (mono-modal) or ``"mi"``, ``"nmi"`` (multi-modal).
      init: ``"moments"`` (centres of mass + principal axes), ``"com"``, ``"center"`` (grid centres), ``None``
        (identity about the fixed centre) or a linear transform.
      levels: resolution levels.
      stopping: convergence rule.
      fixed_mask: optional fixed-grid mask.
      moving_mask: optional moving-grid mask.
      step_mm: translation step of :func:`linear_optimizer`.
      progress: tqdm bars.

    Returns:
      :class:`RegistrationResult` whose ``transform`` is of the requested family.
    """
    if model not in ("rigid", "similarity", "affine"):
        raise ValueError(f"model: expected 'rigid', 'similarity' or 'affine', got {model!r}")
    if isinstance(init, LinearTransform):
        start = Affine.from_transform(init)
    elif init == "moments":
        start = Affine.from_transform(moments_init(fixed, moving, mode="principal", fixed_mask=fixed_mask, moving_mask=moving_mask))
    elif init == "com":
        start = Affine.from_transform(moments_init(fixed, moving, mode="com", fixed_mask=fixed_mask, moving_mask=moving_mask))
    elif init == "center":
        start = Affine.from_transform(center_init(fixed, moving))
    elif init is None:
        start = Affine.identity(fixed.grid.ndim, center=fixed.grid.center)
    else:
        raise ValueError(f"init: expected 'moments', 'com', 'center', None or a linear transform, got {init!r}")
    if model == "affine":
        t0: Transform = start
    else:
        from jaxreg.transforms.linear import decompose_affine, rotation_vector

        comp = decompose_affine(start.matrix)
        rot = rotation_vector(comp.rotation)
        if model == "rigid":
            t0 = Rigid(rot, start.translation, start.center)
        else:
            t0 = Similarity(rot, jnp.log(jnp.abs(jnp.prod(comp.scale)) ** (1.0 / fixed.grid.ndim)), start.translation, start.center)
    return register(
        fixed, moving, t0,
        objective=objective(similarity_term(_cached_metric(metric), name=metric)),
        optimizer=_linear_opt(step_mm, round(_radius(fixed), 1)),
        levels=levels, stopping=stopping, fixed_mask=fixed_mask, moving_mask=moving_mask, progress=progress,
    )


_OPT_CACHE: dict[tuple, optax.GradientTransformation] = {}


def _linear_opt(step_mm: float, radius_mm: float) -> optax.GradientTransformation:
    key = (float(step_mm), float(radius_mm))
    if key not in _OPT_CACHE:
        _OPT_CACHE[key] = linear_optimizer(step_mm=step_mm, radius_mm=radius_mm)
    return _OPT_CACHE[key]


class PipelineResult(NamedTuple):
    """Outcome of :func:`register_pair`.

    Attributes:
      transform: the full pull transform, ``compose(affine, deformable)`` (or the affine alone).
      affine: the linear stage's transform.
      deformable: the deformable stage's transform (a :class:`~jaxreg.transforms.VelocityField`) or ``None``.
      stages: ``{"linear": RegistrationResult, "deformable": RegistrationResult}``.
      seconds: wall time of the whole pipeline (s).
    """

    transform: Transform
    affine: Transform
    deformable: Transform | None
    stages: dict
    seconds: float


def _mind_images(fixed: Image, moving: Image) -> tuple[Image, Image]:
    from jaxreg.similarity import mind_ssc

    f = jax.jit(lambda x: mind_ssc(x))
    return Image(f(fixed.data), fixed.grid), Image(f(moving.data), moving.grid)


def register_pair(
    fixed: Image,
    moving: Image,
    *,
    pipeline: str = "default",
    linear_levels: Sequence[Level] = DEFAULT_LINEAR_LEVELS,
    deformable_levels: Sequence[Level] = DEFAULT_GREEDY_LEVELS,
    greedy: GreedyOptions = GreedyOptions(step=0.25, symmetric=True),
    fixed_mask: Image | None = None,
    moving_mask: Image | None = None,
    window: int = 5,
    progress: bool = False,
) -> PipelineResult:
    """Moments -> affine -> symmetric diffeomorphic registration, tuned for brain MRI.

    Args:
      fixed: fixed image.
      moving: moving image (its own grid).
      pipeline: ``"default"`` (mono-modal: affine with NCC, deformable with local NCC of ``window``),
        ``"multimodal"`` (affine with Mattes MI, deformable with MIND-SSC descriptors compared by SSD),
        ``"affine"`` or ``"rigid"`` (linear stage only, NCC).
      linear_levels: levels of the linear stage.
      deformable_levels: levels of the greedy deformable stage.
      greedy: :class:`GreedyOptions` of the deformable stage.
      fixed_mask: optional fixed-grid mask (linear stage and deformable similarity).
      moving_mask: optional moving-grid mask (linear stage).
      window: local NCC window (voxels of each level).
      progress: tqdm bars for the linear stage.

    Returns:
      :class:`PipelineResult`.
    """
    if pipeline not in ("default", "multimodal", "affine", "rigid"):
        raise ValueError(f"pipeline: expected 'default', 'multimodal', 'affine' or 'rigid', got {pipeline!r}")
    t0 = time.perf_counter()
    model = "rigid" if pipeline == "rigid" else "affine"
    metric = "mi" if pipeline == "multimodal" else "ncc"
    lin = register_linear(fixed, moving, model=model, metric=metric, levels=linear_levels, fixed_mask=fixed_mask, moving_mask=moving_mask, progress=progress)
    affine = lin.transform
    stages = {"linear": lin}
    if pipeline in ("affine", "rigid"):
        return PipelineResult(affine, affine, None, stages, time.perf_counter() - t0)
    if pipeline == "multimodal":
        f, m = _mind_images(fixed, moving)
        sim = _cached_metric("ssd")
    else:
        f, m = fixed, moving
        key = f"lncc{window}"
        if key not in _METRIC_CACHE:
            from jaxreg.similarity import lncc

            _METRIC_CACHE[key] = lncc(window)
        sim = _METRIC_CACHE[key]
    deform = greedy_register(f, m, similarity=sim, levels=deformable_levels, options=greedy, outer=affine, fixed_mask=fixed_mask)
    stages["deformable"] = deform
    return PipelineResult(compose(affine, deform.optimized), affine, deform.optimized, stages, time.perf_counter() - t0)
