"""The registration engine: one entry point, stages of strategies, one result type.

:func:`register` registers a moving image to a fixed image (or many pairs at once) with a *pipeline*: a
sequence of :class:`Stage` s, each a method (:class:`~jaxreg.optimize.Gradient`,
:class:`~jaxreg.optimize.Greedy`, ...) optimising a transform model (:class:`~jaxreg.optimize.Linear`,
:class:`~jaxreg.optimize.BSpline`, :class:`~jaxreg.optimize.Field`) over resolution :class:`Level` s. A stage
either continues the previous one (rigid -> affine; B-spline -> refined B-spline) or is stacked on it (a
deformable field after the affine: the moving image is sampled at ``affine(field(x))``, pull). Named pipelines
(``"default"``, ``"multimodal"``, ...) are stage tuples in :data:`jaxreg.optimize.PRESETS`.

Each level smooths and downsamples both images (:class:`Level`: shrink factor, smoothing in mm, iteration
cap), prepares them when the method's similarity is a prepared one (a method's ``preparation()``: e.g. the
learned feature maps of :func:`jaxreg.similarity.features`, computed once per image and level, not per
iteration), re-expresses the transform on the level grid (:meth:`~jaxreg.transforms.Transform.on_grid`) and runs the
method's pure per-level kernel, compiled ahead of time once per configuration and input signature: methods,
terms and grids compare by value, so a second call with equal (even freshly built) settings compiles nothing.
Many pairs (a list of images per side) or a sweep of a method's weights (``sweep=True``) run as ``jax.vmap``
of the same kernel: one compiled call per level for the whole batch. With ``mesh=`` (:func:`jaxreg.parallel.make_mesh`) that
batch's pair axis is split over the mesh's devices (``jax.sharding.NamedSharding``), padded to a multiple of
the device count. Linear stages start from the best of
several candidate starts (:func:`~jaxreg.optimize.init.candidate_starts`), scored by the stage's similarity
at its coarsest level in one vmapped call; the winner is reported in :attr:`StageResult.start`.

The result is one :class:`Registration`: the full pull transform (fixed world mm -> moving world mm), one
:class:`StageResult` per stage with one :class:`LevelResult` per level (loss history, iterations, convergence,
wall and compile times).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxreg.core.compilation import compiler_options, jit
from jaxreg.core.grid import Grid, Image
from jaxreg.optimize.init import INITS, candidate_starts, center_init, moments_init
from jaxreg.transforms.base import Transform
from jaxreg.transforms.compose import compose
from jaxreg.warp.pyramid import level_image

__all__ = ["Level", "LevelResult", "Progress", "Registration", "Stage", "StageResult", "register"]


class Level(NamedTuple):
    """One resolution level.

    Attributes:
      shrink: integer downsampling factor of both images (1 = full resolution).
      smooth_mm: Gaussian smoothing sigma in mm applied before downsampling (0 = none at full resolution,
        and an anti-aliasing sigma of ``shrink / 2`` voxels when downsampling).
      iterations: iteration cap of this level.
    """

    shrink: int = 1
    smooth_mm: float = 0.0
    iterations: int = 100


class Stage(NamedTuple):
    """One stage of a pipeline: a method optimising a transform model over levels.

    Attributes:
      method: the strategy (:class:`~jaxreg.optimize.Gradient`, :class:`~jaxreg.optimize.Greedy`).
      model: the transform model (:class:`~jaxreg.optimize.Linear`, :class:`~jaxreg.optimize.BSpline`,
        :class:`~jaxreg.optimize.Field`); ``None`` for the method's default (affine for ``Gradient``, the
        velocity or displacement field of a ``Greedy`` method).
      levels: resolution levels, coarse to fine.
      init: start of a linear stage that does not continue a previous one: ``"auto"`` (best of the candidate
        starts by the stage's similarity at its coarsest level), ``"moments"`` (principal axes closest to the
        identity), ``"com"`` (centres of mass), ``"center"`` (grid centres) or ``"identity"``.
      name: label of the stage in results and reports (default: the model's kind).
    """

    method: Any
    model: Any = None
    levels: tuple = (Level(),)
    init: str = "auto"
    name: str | None = None


class LevelResult(NamedTuple):
    """Per-level record.

    Attributes:
      loss: ``(iterations_cap,)`` loss per iteration (NaN after stopping); ``(B, cap)`` for a batch.
      iterations: iterations run (``(B,)`` for a batch).
      converged: whether the stopping rule held before the cap (``(B,)`` for a batch).
      seconds: wall time of the level (s), compilation included.
      compile_seconds: ahead-of-time compilation of the level's kernel (0 when it was cached).
      level: the :class:`Level` it ran (shrink, smoothing, iteration cap).
    """

    loss: np.ndarray
    iterations: Any
    converged: Any
    seconds: float
    compile_seconds: float
    level: Level | None = None


class Progress(NamedTuple):
    """What :func:`register` reports to its ``progress`` callback: a level starting or finished.

    Attributes:
      stage: the stage's label.
      stage_index: index of the stage in the pipeline (0-based).
      stages: number of stages.
      level_index: index of the level in the stage (0-based).
      levels: number of levels of the stage.
      level: the :class:`Level` (its ``iterations`` is the level's share of :attr:`total_iterations`).
      total_iterations: the iteration caps of every level of every stage, summed (a progress bar's total).
      result: ``None`` when the level starts (compilation and the run follow), its :class:`LevelResult` when
        it has finished.
    """

    stage: str
    stage_index: int
    stages: int
    level_index: int
    levels: int
    level: Level
    total_iterations: int
    result: LevelResult | None = None


class StageResult(NamedTuple):
    """Per-stage record.

    Attributes:
      name: the stage's label.
      transform: the optimised transform of the stage on the fixed grid (the field, the B-spline, the linear
        map); leading batch axis on every leaf for a batch.
      outer: the fixed transform it was stacked on (pull: moving sampled at ``outer(transform(x))``) or ``None``.
      levels: one :class:`LevelResult` per level.
      start: which candidate start won (``"com"``, ``"principal(+x+y+z, 3 deg)"``, ...; a tuple for a batch), the
        continued stage, or ``None``.
      seconds: wall time of the stage (s).
      continues: whether the stage continued the previous stage's transform (replacing it) rather than being
        stacked on it.
    """

    name: str
    transform: Transform
    outer: Transform | None
    levels: tuple
    start: Any
    seconds: float
    continues: bool = False

    @property
    def full(self) -> Transform:
        """The stage's full pull transform ``outer o transform``."""
        return self.transform if self.outer is None else compose(self.outer, self.transform)


class Registration(NamedTuple):
    """The outcome of :func:`register` (one pair, or a batch with a leading axis on every array).

    Attributes:
      transform: the full pull transform (fixed world mm -> moving world mm).
      stages: one :class:`StageResult` per stage.
      seconds: total wall time (s).
    """

    transform: Transform
    stages: tuple
    seconds: float

    @property
    def optimized(self) -> Transform:
        """The last stage's optimised transform."""
        return self.stages[-1].transform

    @property
    def linear(self) -> Transform | None:
        """The full transform of the last linear stage that nothing non-linear precedes (``None`` if none).

        A linear ``outer`` given to :func:`register` (a known pre-alignment) is the linear part of a pipeline
        that starts with a non-linear stage.
        """
        out = None
        first = self.stages[0].outer if self.stages else None
        if first is not None and _is_linear(first):
            out = first
        for st in self.stages:
            if not _is_linear(st.full):
                break
            out = st.full
        return out

    @property
    def deformable(self) -> Transform | None:
        """The non-linear part after :attr:`linear`: ``transform = compose(linear, deformable)``; or ``None``.

        Stages that continue the previous one (B-spline refinements) replace it; stacked stages compose.
        """
        groups: list = []
        for st in self.stages:
            if st.continues and groups:
                groups[-1] = st
            else:
                groups.append(st)
        parts = [st.transform for st in groups if not _is_linear(st.transform)]
        if self.linear is None and _is_linear(self.transform):
            return None
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else compose(*parts)

    @property
    def levels(self) -> tuple:
        """All levels of all stages, in order."""
        return tuple(lv for st in self.stages for lv in st.levels)

    @property
    def loss_history(self) -> np.ndarray:
        """All levels' losses concatenated, NaNs dropped (``(B, total)`` with NaNs kept for a batch)."""
        if self.pairs:
            return np.concatenate([np.asarray(lv.loss) for lv in self.levels], axis=1)
        out = np.concatenate([np.asarray(lv.loss).ravel() for lv in self.levels])
        return out[np.isfinite(out)]

    @property
    def iterations(self) -> Any:
        """Total iterations over all levels (``(B,)`` for a batch)."""
        return sum(np.asarray(lv.iterations) for lv in self.levels)

    @property
    def converged(self) -> Any:
        """Whether the last level stopped on its tolerance rather than its cap (``(B,)`` for a batch)."""
        return np.asarray(self.levels[-1].converged) if self.pairs else bool(self.levels[-1].converged)

    @property
    def pairs(self) -> int:
        """Number of registrations of a batch, 0 for a single registration."""
        return int(np.asarray(self.levels[0].loss).shape[0]) if np.ndim(self.levels[0].loss) == 2 else 0

    def pair(self, i: int) -> Registration:
        """The ``i``-th registration of a batch as a single :class:`Registration` (times of the batch)."""
        if not 0 <= int(i) < self.pairs:
            raise ValueError(f"i: expected 0 <= i < {self.pairs} (registrations in the batch), got {i}")
        take = functools.partial(jax.tree_util.tree_map, lambda x: x[int(i)])
        stages = []
        for st in self.stages:
            levels = tuple(
                lv._replace(
                    loss=np.asarray(lv.loss)[i],
                    iterations=int(np.asarray(lv.iterations)[i]),
                    converged=bool(np.asarray(lv.converged)[i]),
                )
                for lv in st.levels
            )
            start = st.start[i] if isinstance(st.start, tuple) else st.start
            stages.append(
                st._replace(
                    transform=take(st.transform),
                    outer=None if st.outer is None else take(st.outer),
                    levels=levels,
                    start=start,
                )
            )
        return Registration(take(self.transform), tuple(stages), self.seconds)


def _is_linear(t: Transform) -> bool:
    return t.linear_part() is not None


# -- compiled kernels ---------------------------------------------------------------------------------------------
_EXECUTABLES: collections.OrderedDict[Any, Any] = collections.OrderedDict()
_MAX_EXECUTABLES = 64


def _signature(args: tuple) -> tuple:
    leaves, treedef = jax.tree_util.tree_flatten(args)
    return treedef, tuple(
        (tuple(np.shape(x)), jnp.result_type(x), bool(getattr(x, "weak_type", False))) for x in leaves
    )


def _compiled(
    key: tuple, make: Callable[[], Callable], args: tuple, work: float, platform: str | None = None
) -> tuple[Any, float]:
    """The ahead-of-time compiled ``make()`` for ``args``, cached by ``key`` and the input signature.

    The cache is keyed by values only (methods, grids and transform structures compare by value), so equal
    configurations built independently reuse one executable. ``work`` (voxels x iterations of one call)
    chooses the XLA options (:func:`jaxreg.core.compilation.compiler_options`: fast-compiled code for a small
    program that runs once, inside :func:`~jaxreg.core.compilation.single_use`), which are part of the cache key.
    Returns ``(executable, compile_seconds)``.
    """
    opts = compiler_options(work, platform=platform)
    sig = (key, _signature(args), None if opts is None else tuple(sorted(opts.items())))
    exe = _EXECUTABLES.get(sig)
    if exe is not None:
        _EXECUTABLES.move_to_end(sig)
        return exe, 0.0
    t0 = time.perf_counter()
    exe = jax.jit(make()).lower(*args).compile(compiler_options=opts)
    seconds = time.perf_counter() - t0
    _EXECUTABLES[sig] = exe
    while len(_EXECUTABLES) > _MAX_EXECUTABLES:
        _EXECUTABLES.popitem(last=False)
    return exe, seconds


def _voxels(grid: Grid) -> int:
    return int(np.prod(grid.shape))


def _mesh_key(mesh: Any) -> Any:
    return None if mesh is None else (mesh.axis_names, tuple(int(d.id) for d in mesh.devices.flat))


def _run_level(method, fgrid, mgrid, cap, batch, sweep, args, mesh=None):
    """Run one level's kernel (vmapped over the batch): ``(params, losses, iterations, converged), compile_s``.

    With a ``mesh`` the batched arguments (everything but the method) are split over its devices along the pair
    axis (:func:`jaxreg.parallel.shard_leading`) and XLA partitions the vmapped kernel: each device runs its rows.
    """
    if mesh is not None:
        from jaxreg.parallel import shard_leading

        args = (args[0], *shard_leading(args[1:], mesh))

    def make():
        kernel = method.level_kernel(fgrid, mgrid, cap)
        if not batch:
            return kernel
        axes = (0 if sweep else None, 0, 0, 0, 0, 0, 0)
        return jax.vmap(kernel, in_axes=axes)

    key = ("level", fgrid, mgrid, int(cap), bool(batch), bool(sweep), _mesh_key(mesh))
    pairs = int(np.shape(args[2])[0]) if batch else 1
    platform = None if mesh is None else mesh.devices.flat[0].platform
    exe, compile_s = _compiled(key, make, args, _voxels(fgrid) * max(int(cap), 1) * pairs, platform)
    return exe(*args), compile_s


def _level_arrays(data: jax.Array | None, grid: Grid, level: Level, batch: bool) -> tuple[Any, Grid]:
    """One pyramid level of ``data`` (vmapped over a leading batch axis)."""
    if data is None:
        return None, grid.downsample(level.shrink) if level.shrink > 1 else grid
    if batch:
        out = jax.vmap(lambda d: level_image(Image(d, grid), level.shrink, level.smooth_mm))(data)
    else:
        out = level_image(Image(data, grid), level.shrink, level.smooth_mm)
    return out.data, out.grid


@functools.partial(jit, static_argnums=1)
def _on_grid(transform: Transform, grid: Grid) -> Transform:
    return transform.on_grid(grid)


def _on_grid_batched(transform: Transform, grid: Grid, batch: bool) -> Transform:
    if type(transform).on_grid is Transform.on_grid or getattr(transform, "grid", None) == grid:
        return transform  # world-mm transforms and fields already on the grid: unchanged, nothing to compile
    if batch:
        return jax.vmap(lambda t: _on_grid(t, grid))(transform)
    return _on_grid(transform, grid)


# -- starts of linear stages ----------------------------------------------------------------------------------------
def _stack(trees: Sequence[Any]) -> Any:
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)


def _linear_start(stage, model, method, level_data, fixed, moving, fmasks, mmasks, batch, sweep):
    """The start of a linear stage (stacked for a batch) and the name of the start chosen for each pair.

    ``level_data`` is the stage's coarsest level ``(fixed, fixed_grid, moving, moving_grid, fixed_mask,
    moving_mask)`` (arrays stacked for a batch), on which ``init="auto"`` scores the candidates.
    """
    init = stage.init
    pairs = list(zip(fixed, moving, fmasks, mmasks))
    if init in ("moments", "com", "center", "identity"):
        starts = []
        for f, m, fm, mm in pairs:
            if init == "identity":
                starts.append(None)
            elif init == "center":
                starts.append(center_init(f, m))
            else:
                starts.append(
                    moments_init(
                        f, m, mode="principal" if init == "moments" else "com", fixed_mask=fm, moving_mask=mm
                    )
                )
        params = [model.start(f.grid, s) for (f, *_), s in zip(pairs, starts)]
        return (_stack(params) if batch else params[0]), ((init,) * len(pairs) if batch else init)
    # "auto": score every candidate with the stage's loss at its coarsest level, in one vmapped call
    if not hasattr(method, "loss_fn"):
        raise ValueError(
            f"init: 'auto' needs a method with a loss (Gradient), got {type(method).__name__}; use 'moments' or 'com'"
        )
    cands = [candidate_starts(f, m, fixed_mask=fm, moving_mask=mm) for f, m, fm, mm in pairs]
    names = [[n for n, _ in c] for c in cands]
    params = [_stack([model.start(f.grid, t) for _, t in c]) for (f, *_), c in zip(pairs, cands)]
    params = _stack(params) if batch else params[0]
    fa, fg, ma, mg, fma, mma = level_data

    def make():
        loss = method.loss_fn(fg, mg)
        score = jax.vmap(loss, in_axes=(None, 0, None, None, None, None, None))
        if batch:
            score = jax.vmap(score, in_axes=(0 if sweep else None, 0, 0, 0, 0, 0, None))
        return score

    args = (method, params, fa, ma, fma, mma, None)
    work = _voxels(fg) * int(np.prod(np.shape(jax.tree_util.tree_leaves(params)[0])[: 2 if batch else 1]))
    exe, _ = _compiled(("score", fg, mg, bool(batch), bool(sweep)), make, args, work)
    scores = np.asarray(exe(*args))
    scores = np.where(np.isfinite(scores), scores, np.inf)
    best = np.argmin(scores, axis=-1)
    if batch:
        chosen = jax.tree_util.tree_map(lambda x: x[np.arange(len(pairs)), best], params)
        return chosen, tuple(names[i][int(b)] for i, b in enumerate(best))
    # picked on the host: indexing on the device would compile one program per leaf shape
    return jax.tree_util.tree_map(lambda x: jax.device_put(np.asarray(x)[int(best)]), params), names[0][int(best)]


def _search_start(model, method, level_data, p0, outer):
    """The best of ``p0`` moved by each of ``model.candidate_translations(p0)``, scored by the stage's loss at its
    first level (sequentially, ``lax.map``), and its name; ``p0`` unchanged when the model has no lattice."""
    trans = model.candidate_translations(p0)
    if trans is None or not hasattr(method, "loss_fn"):
        return p0, None
    fa, fg, ma, mg, fma, mma = level_data

    def make():
        loss = method.loss_fn(fg, mg)

        def score(method, p0, trans, fa, ma, fma, mma, outer):
            one = lambda t: loss(method, dataclasses.replace(p0, translation=t), fa, ma, fma, mma, outer)  # noqa: E731
            return jax.lax.map(one, trans)

        return score

    args = (method, p0, jnp.asarray(trans), fa, ma, fma, mma, outer)
    exe, _ = _compiled(("search", fg, mg, trans.shape), make, args, _voxels(fg) * len(trans))
    scores = np.asarray(exe(*args))
    scores = np.where(np.isfinite(scores), scores, np.inf)
    best = int(np.argmin(scores))
    t = trans[best]
    return dataclasses.replace(p0, translation=jnp.asarray(t)), f"search({', '.join(f'{v:+g}' for v in t)} mm)"


def _stack_data(images: Sequence[Image | None], batch: bool) -> Any:
    if images[0] is None:
        return None
    return jnp.stack([im.data for im in images]) if batch else images[0].data


# -- the entry point ---------------------------------------------------------------------------------------------------
def _as_stages(method: Any, levels: Any, init: str | None) -> tuple[Stage, ...]:
    if isinstance(method, str):
        from jaxreg.optimize.presets import preset

        if levels is not None:
            raise ValueError("levels: a named pipeline has its own levels; build the stages to change them")
        return preset(method)
    if isinstance(method, Stage):
        stages: tuple = (method,)
    elif isinstance(method, (tuple, list)) and method and all(isinstance(s, Stage) for s in method):
        stages = tuple(method)
    elif hasattr(method, "level_kernel"):
        lv = (Level(),) if levels is None else tuple(levels)
        return (Stage(method, levels=lv, init=init or "auto"),)
    else:
        raise TypeError(
            "method: expected a method (Gradient, Greedy), a Stage, a sequence of Stages or a pipeline name, "
            f"got {type(method).__name__}"
        )
    if levels is not None:
        raise ValueError("levels: stages carry their own levels; pass levels only with a bare method")
    return stages


def _check_stage(stage: Stage, i: int) -> None:
    if not hasattr(stage.method, "level_kernel"):
        raise TypeError(
            f"stages[{i}].method: expected a method (Gradient, Greedy), got {type(stage.method).__name__}"
        )
    if not stage.levels or not all(isinstance(lv, Level) for lv in stage.levels):
        raise ValueError(f"stages[{i}].levels: expected a non-empty tuple of Level, got {stage.levels!r}")
    for lv in stage.levels:
        if int(lv.shrink) < 1 or int(lv.iterations) < 0 or float(lv.smooth_mm) < 0:
            raise ValueError(
                f"stages[{i}].levels: expected shrink >= 1, iterations >= 0, smooth_mm >= 0, got {lv}"
            )
    if stage.init not in INITS:
        raise ValueError(f"stages[{i}].init: expected one of {INITS}, got {stage.init!r}")


def register(
    fixed: Image | Sequence[Image],
    moving: Image | Sequence[Image],
    *,
    method: Any = "default",
    transform: Transform | None = None,
    levels: Sequence[Level] | None = None,
    init: str | None = None,
    outer: Transform | None = None,
    fixed_mask: Image | Sequence[Image] | None = None,
    moving_mask: Image | Sequence[Image] | None = None,
    sweep: bool = False,
    mesh: Any = None,
    log: Callable[[str], None] | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> Registration:
    """Register ``moving`` to ``fixed``: the one entry point of every method and pipeline.

    The moving image is sampled (pull) at ``T(x)`` for fixed voxel centres ``x``, with ``T`` the returned
    ``transform`` (fixed world mm -> moving world mm); images may live on different grids.

    Args:
      fixed: fixed image ``(*shape[, C])``, or a sequence of ``B`` fixed images on one grid (a batch).
      moving: moving image (its own grid, same channels), or a sequence of ``B`` on one grid.
      method: a method (:class:`~jaxreg.optimize.Gradient`, :class:`~jaxreg.optimize.Greedy`), a
        :class:`Stage`, a sequence of stages, or the name of a pipeline in :data:`jaxreg.optimize.PRESETS`
        (``"default"``, ``"multimodal"``, ``"affine"``, ``"rigid"``, ``"similarity"``, ``"syn"``, ``"demons"``,
        ``"bspline"``, ``"dense"``).
      transform: initial transform of the first stage (otherwise the stage's model starts it); for a batch,
        every leaf has a leading axis ``B``.
      levels: levels of a bare method (default one full-resolution level of 100 iterations).
      init: start of a bare method's linear stage (see :class:`Stage`).
      outer: a fixed transform applied after everything optimised (``T = outer o ...``), e.g. a known
        pre-alignment; for a batch, stacked or shared.
      fixed_mask: optional mask (weights in [0, 1]) on the fixed grid (one per pair, or one for all).
      moving_mask: optional mask on the moving grid, warped with the image (gradient methods).
      sweep: the method's numeric weights carry a leading batch axis ``B`` (a hyperparameter sweep in one
        vmapped call); images not given as sequences are shared by all members.
      mesh: a 1-D device mesh (:func:`jaxreg.parallel.make_mesh`) to split a batch of pairs over: each level's
        vmapped kernel runs with its pair axis sharded over the mesh's devices (``NamedSharding``, ``jax.sharding``);
        a batch that does not divide the device count is padded with copies of its last pair, dropped from the
        result. The transforms equal those of the unsharded batch to float tolerance. Needs a batch (lists of
        images); not with ``sweep``.
      log: called with one line per level (progress), outside the compiled code.
      progress: called with a :class:`Progress` when each level starts and when it finishes, outside the
        compiled code (a level runs as one compiled call: a progress bar advances by levels, weighted by their
        iteration caps); the library draws nothing itself.

    Returns:
      :class:`Registration`.
    """
    t_start = time.perf_counter()
    stages = _as_stages(method, levels, init)
    for i, st in enumerate(stages):
        _check_stage(st, i)
    batch_in = isinstance(fixed, (list, tuple)) or isinstance(moving, (list, tuple))
    fixed_l, moving_l = _as_list(fixed, "fixed"), _as_list(moving, "moving")
    b = max(len(fixed_l), len(moving_l))
    if sweep:
        b = _sweep_size(stages, b if batch_in else None)
    batch = batch_in or sweep
    fixed_l, moving_l = _broadcast(fixed_l, b, "fixed"), _broadcast(moving_l, b, "moving")
    fm_l = (
        _broadcast(_as_list(fixed_mask, "fixed_mask"), b, "fixed_mask")
        if fixed_mask is not None
        else [None] * b
    )
    mm_l = (
        _broadcast(_as_list(moving_mask, "moving_mask"), b, "moving_mask")
        if moving_mask is not None
        else [None] * b
    )
    _check_inputs(fixed_l, moving_l, fm_l, mm_l, transform, outer)
    b_out = b
    if mesh is not None:
        from jaxreg.parallel import padded_size

        if not batch_in or sweep:
            raise ValueError("mesh: shards the pairs of a batch; pass lists of images (and no sweep)")
        if not hasattr(mesh, "devices") or len(getattr(mesh, "axis_names", ())) != 1:
            raise ValueError(f"mesh: expected a 1-D jax.sharding.Mesh (jaxreg.parallel.make_mesh), got {mesh!r}")
        b = padded_size(b_out, mesh)
        fixed_l, moving_l, fm_l, mm_l = (_pad_list(x, b) for x in (fixed_l, moving_l, fm_l, mm_l))
        transform = None if transform is None else _pad_rows(transform, b_out, b)
        if outer is not None and _has_batch(outer, b_out):
            outer = _pad_rows(outer, b_out, b)
    fgrid, mgrid = fixed_l[0].grid, moving_l[0].grid
    f_all, m_all = _stack_data(fixed_l, batch), _stack_data(moving_l, batch)
    fm_all, mm_all = _stack_data(fm_l, batch), _stack_data(mm_l, batch)
    if batch and outer is not None and not _has_batch(outer, b):
        outer = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (b, *jnp.shape(x))), outer)

    pyramid: dict = {}  # (shrink, smooth_mm) -> level arrays: each level is built once per call, for all stages

    def level_data(level: Level) -> tuple:
        key = (int(level.shrink), float(level.smooth_mm))
        if key not in pyramid:
            f, fg = _level_arrays(f_all, fgrid, level, batch)
            m, mg = _level_arrays(m_all, mgrid, level, batch)
            fmk = _level_arrays(fm_all, fgrid, level, batch)[0]
            mmk = _level_arrays(mm_all, mgrid, level, batch)[0]
            pyramid[key] = (f, fg, m, mg, fmk, mmk)
        return pyramid[key]

    total_iterations = sum(int(lv.iterations) for st in stages for lv in st.levels)
    prepared: dict = {}  # (term, shrink, smooth_mm) -> level arrays with prepared images (features)

    def level_inputs(method: Any, level: Level) -> tuple[Any, tuple]:
        """The method to run and its level arrays: a prepared similarity's images are prepared once per level."""
        data = level_data(level)
        prep = method.preparation() if hasattr(method, "preparation") else None
        if prep is None:
            return method, data
        term, method_p = prep
        key = (term, int(level.shrink), float(level.smooth_mm))
        if key not in prepared:
            f, fg, m, mg, fmk, mmk = data
            fn = jax.vmap(term.prepare) if batch else term.prepare
            prepared[key] = (fn(f), fg, fn(m), mg, fmk, mmk)
        return method_p, prepared[key]

    results = []
    prev_model = prev_params = None
    prev_outer = prev_full = outer
    for si, stage in enumerate(stages):
        ts = time.perf_counter()
        method_s = stage.method.resolved(fgrid)
        model = stage.model if stage.model is not None else method_s.default_model
        model.check()
        name = stage.name or (getattr(model, "family", None) or type(model).__name__.lower())
        cont = None
        if prev_model is not None and batch:
            # a batch carries a leading axis on every leaf: ask with pair 0 whether the stage continues, then map
            # the continuation (e.g. the exact B-spline refinement) over the pairs
            if model.continue_from(prev_model, jax.tree_util.tree_map(lambda x: x[0], prev_params)) is not None:
                cont = jax.vmap(functools.partial(model.continue_from, prev_model))(prev_params)
        elif prev_model is not None:
            cont = model.continue_from(prev_model, prev_params)
        if cont is not None:
            params, stage_outer, start = cont, prev_outer, f"continued {results[-1].name}"
        else:
            stage_outer = prev_full
            if si == 0 and transform is not None:
                # a given transform is optimised as it is, unless the stage names a model to convert it to
                params = transform if (stage.model is None or batch) else model.start(fgrid, transform)
                start = "given"
                if stage.model is None:
                    model = None
            elif model.is_linear and stage_outer is None:
                params, start = _linear_start(
                    stage,
                    model,
                    *level_inputs(method_s, stage.levels[0]),
                    fixed_l,
                    moving_l,
                    fm_l,
                    mm_l,
                    batch,
                    sweep,
                )
            else:
                start_after = getattr(model, "start_after", None)  # a model placed through the earlier stages
                p0 = start_after(fgrid, stage_outer) if (start_after and not batch) else model.start(fgrid, None)
                start = None
                if hasattr(model, "candidate_translations") and not batch:
                    p0, start = _search_start(model, *level_inputs(method_s, stage.levels[0]), p0, stage_outer)
                params = (
                    jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (b, *jnp.shape(x))), p0)
                    if batch
                    else p0
                )
        records = []
        uses_mmask = getattr(method_s, "uses_moving_mask", True)
        for li, level in enumerate(stage.levels):
            t0 = time.perf_counter()
            event = Progress(name, si, len(stages), li, len(stage.levels), level, total_iterations)
            if progress is not None:
                progress(event)
            method_l, (f, fg, m, mg, fmk, mmk) = level_inputs(method_s, level)
            mmk = mmk if uses_mmask else None
            params = _on_grid_batched(params, fg, batch)
            args = (method_l, params, f, m, fmk, mmk, stage_outer)
            (params, losses, its, conv), compile_s = _run_level(
                method_l, fg, mg, int(level.iterations), batch, sweep, args, mesh
            )
            losses = _host(losses, b_out) if batch else np.asarray(losses)
            rec = LevelResult(
                losses,
                _host(its, b_out) if batch else int(its),
                _host(conv, b_out) if batch else bool(conv),
                time.perf_counter() - t0,
                compile_s,
                level,
            )
            records.append(rec)
            if progress is not None:
                progress(event._replace(result=rec))
            if log is not None:
                last = losses[..., :][np.isfinite(losses)]
                log(
                    f"{name} level {li + 1}/{len(stage.levels)} (shrink {level.shrink}): "
                    f"{np.max(rec.iterations)} iterations, loss {float(last[-1]) if last.size else float('nan'):.5g}, "
                    f"{rec.seconds:.2f} s (compile {compile_s:.2f} s)"
                )
        params = _on_grid_batched(params, fgrid, batch)
        res = StageResult(
            name, params, stage_outer, tuple(records), start, time.perf_counter() - ts, cont is not None
        )
        results.append(res)
        prev_model, prev_params, prev_outer, prev_full = model, params, stage_outer, res.full
    if mesh is not None:  # back to one device (uncommitted), without the padding rows
        results = [
            st._replace(
                transform=_rows(st.transform, b_out),
                outer=None if st.outer is None else _rows(st.outer, b_out),
                start=st.start[:b_out] if isinstance(st.start, tuple) else st.start,
            )
            for st in results
        ]
        prev_full = _rows(prev_full, b_out)
    return Registration(prev_full, tuple(results), time.perf_counter() - t_start)


def _pad_list(items: list, b: int) -> list:
    return items + [items[-1]] * (b - len(items))


def _pad_rows(tree: Any, b: int, size: int) -> Any:
    """``tree`` (leading axis ``b`` on every leaf) padded to ``size`` rows with copies of its last row."""
    return jax.tree_util.tree_map(
        lambda x: jnp.concatenate([x, jnp.repeat(x[-1:], size - b, axis=0)]) if size > b else x, tree
    )


def _rows(tree: Any, b: int) -> Any:
    """The first ``b`` rows of every leaf of a sharded result, gathered onto the default device (uncommitted, so
    the result mixes with any other array, as an unsharded run's does)."""
    from jaxreg.parallel import gather

    return jax.tree_util.tree_map(lambda x: jnp.asarray(gather(x)[:b]), tree)


def _host(x: Any, b: int) -> np.ndarray:
    """A level's per-pair record on the host, without padding rows."""
    from jaxreg.parallel import gather

    out = gather(x)
    return out[:b] if np.ndim(out) else out


def _as_list(x: Any, name: str) -> list:
    if isinstance(x, (list, tuple)):
        if not x:
            raise ValueError(f"{name}: expected at least one image")
        return list(x)
    return [x]


def _broadcast(items: list, b: int, name: str) -> list:
    if len(items) == b:
        return items
    if len(items) == 1:
        return items * b
    raise ValueError(f"{name}: expected {b} images (one per pair) or one for all, got {len(items)}")


def _has_batch(tree: Any, b: int) -> bool:
    leaves = jax.tree_util.tree_leaves(tree)
    return bool(leaves) and all(jnp.ndim(x) >= 1 and jnp.shape(x)[0] == b for x in leaves)


def _sweep_size(stages: Sequence[Stage], b: int | None) -> int:
    sizes = {
        int(jnp.shape(x)[0])
        for st in stages
        for x in jax.tree_util.tree_leaves(st.method)
        if jnp.ndim(x) >= 1
    }
    if not sizes:
        raise ValueError("sweep: the methods have no numeric weights to sweep over")
    if len(sizes) != 1 or (b is not None and b not in sizes and b != 1):
        raise ValueError(
            f"sweep: expected every method weight with one leading batch size{'' if b is None else f' {b}'}, got {sorted(sizes)}"
        )
    return sizes.pop()


def _check_inputs(fixed, moving, fmasks, mmasks, transform, outer) -> None:
    for name, ims in (("fixed", fixed), ("moving", moving)):
        for im in ims:
            if not isinstance(im, Image):
                raise TypeError(f"{name}: expected a jaxreg Image, got {type(im).__name__}")
            if im.grid != ims[0].grid or im.data.shape != ims[0].data.shape:
                raise ValueError(f"{name}: every image of a batch must share one grid and shape")
        for i, im in enumerate(ims):
            if jnp.iscomplexobj(im.data):
                raise ValueError(f"{name}: expected a real-valued image, got {im.data.dtype}")
            data = np.asarray(im.data)  # checked on the host (no program compiled per image shape)
            lo, hi = (float(data.min()), float(data.max())) if data.size else (np.nan, np.nan)
            where = f"{name}[{i}]" if len(ims) > 1 else name
            if not (np.isfinite(lo) and np.isfinite(hi)):
                raise ValueError(f"{where}: the image contains NaN or Inf")
            if lo == hi:
                raise ValueError(f"{where}: the image is constant ({lo:g}): nothing to register")
    f0, m0 = fixed[0], moving[0]
    if f0.grid.ndim != m0.grid.ndim:
        raise ValueError(f"fixed/moving: dimensions differ ({f0.grid.ndim}-D vs {m0.grid.ndim}-D)")
    if f0.has_channels != m0.has_channels or (f0.has_channels and f0.data.shape[-1] != m0.data.shape[-1]):
        raise ValueError("fixed/moving: channel counts differ")
    for name, t in (("transform", transform), ("outer", outer)):
        if t is not None and (not isinstance(t, Transform) or t.ndim != f0.grid.ndim):
            raise ValueError(f"{name}: expected a {f0.grid.ndim}-D jaxreg transform, got {type(t).__name__}")
    for name, mks, refs in (("fixed_mask", fmasks, fixed), ("moving_mask", mmasks, moving)):
        for mk, ref in zip(mks, refs):
            if mk is None:
                continue
            if not isinstance(mk, Image) or mk.grid != ref.grid or mk.data.shape != ref.grid.shape:
                raise ValueError(
                    f"{name}: expected an Image on the {name.split('_')[0]} image's grid without channels"
                )
            if not bool(jnp.any(mk.data > 0)):
                raise ValueError(f"{name}: the mask is empty")
