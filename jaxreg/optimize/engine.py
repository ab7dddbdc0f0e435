"""The iterative registration engine: one entry point, compiled loops, multi-resolution.

:func:`register` optimises the parameters of a transform pytree with an optax optimiser so that the moving
image, warped onto the fixed grid (pull), minimises an :class:`~jaxreg.optimize.Objective`. Each resolution
level smooths and downsamples both images (:class:`Level`: shrink factor, smoothing in mm, iteration cap),
adapts the transform to the level (dense fields are resampled onto the level grid; linear, polynomial and
B-spline transforms carry over unchanged since they live in world mm) and runs the optimisation loop compiled:
``lax.scan`` over chunks of steps, with steps after convergence masked out, so that the loop can be vmapped
over many pairs or weights (:func:`register_many`). Between chunks the host reports progress (tqdm when
installed); nothing is printed inside the compiled code.

Convergence (:class:`Stopping`): the relative change of the loss over ``window`` iterations falls below
``tol`` (``|L[k - window] - L[k]| <= tol * |L[k - window]|``), or the level's iteration cap is reached.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxreg.core.grid import Grid, Image
from jaxreg.core.sampling import map_coordinates
from jaxreg.optimize.objective import Objective
from jaxreg.transforms.base import Transform
from jaxreg.transforms.compose import Composite, compose
from jaxreg.transforms.dense import DisplacementField, VelocityField
from jaxreg.warp import _moving_index
from jaxreg.warp.pyramid import smooth_array

__all__ = ["Level", "Stopping", "LevelResult", "RegistrationResult", "register", "register_many", "adapt_transform"]


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


class Stopping(NamedTuple):
    """Stopping rule: relative loss change below ``tol`` over ``window`` iterations (after ``min_iterations``)."""

    tol: float = 1e-5
    window: int = 10
    min_iterations: int = 10


class LevelResult(NamedTuple):
    """Per-level record: ``loss`` ``(iterations_cap,)`` (NaN after stopping), ``iterations``, ``converged``,
    ``seconds`` (wall time including compilation) and ``compile_seconds``.

    For :func:`register` ``compile_seconds`` is the wall time of the level's first compiled call: compilation
    (or a compilation-cache hit) plus its first ``chunk`` steps, an upper bound of the compilation time. For
    :func:`~jaxreg.optimize.greedy_register` it is the ahead-of-time compilation alone (0 when cached).
    """

    loss: np.ndarray
    iterations: int
    converged: bool
    seconds: float
    compile_seconds: float


class RegistrationResult(NamedTuple):
    """Outcome of :func:`register`.

    Attributes:
      transform: the optimised transform (the full pull transform, ``outer`` included when given).
      optimized: the optimised part alone (same type as the initial ``transform``).
      levels: one :class:`LevelResult` per level.
      seconds: total wall time (s).
    """

    transform: Transform
    optimized: Transform
    levels: tuple
    seconds: float

    @property
    def loss_history(self) -> np.ndarray:
        """All levels' losses concatenated (NaNs dropped)."""
        out = np.concatenate([np.asarray(lv.loss) for lv in self.levels])
        return out[np.isfinite(out)]

    @property
    def iterations(self) -> int:
        """Total iterations over all levels."""
        return int(sum(lv.iterations for lv in self.levels))

    @property
    def converged(self) -> bool:
        """Whether the last level stopped on the tolerance rather than the cap."""
        return bool(self.levels[-1].converged)


# -- transforms across levels ----------------------------------------------------------------------------------
def _resample_field(values: jax.Array, src: Grid, dst: Grid) -> jax.Array:
    if src == dst:
        return values
    idx = _moving_index(src, dst.world_coords(values.dtype))
    return map_coordinates(values, idx, order=1, mode="nearest")


def adapt_transform(transform: Transform, grid: Grid) -> Transform:
    """The transform re-expressed for a level on ``grid``.

    Dense fields (:class:`DisplacementField`, :class:`VelocityField`) are resampled (linear interpolation,
    world mm values) onto ``grid``: this both restricts them to a coarse level and lifts them to a finer one.
    Linear, polynomial and B-spline transforms are defined in world mm and returned unchanged. Composites adapt
    each member.
    """
    if isinstance(transform, DisplacementField):
        return DisplacementField(_resample_field(transform.displacement, transform.grid, grid), grid)
    if isinstance(transform, VelocityField):
        return VelocityField(_resample_field(transform.velocity, transform.grid, grid), grid, transform.steps)
    if isinstance(transform, Composite):
        return Composite(tuple(adapt_transform(t, grid) for t in transform.transforms))
    return transform


# -- the compiled loop -----------------------------------------------------------------------------------------
class _State(NamedTuple):
    params: Any
    opt_state: Any
    losses: jax.Array  # (cap,)
    k: jax.Array  # iterations done
    done: jax.Array  # bool
    converged: jax.Array  # bool


def _level_data(image: Image, level: Level) -> tuple[jax.Array, Grid]:
    out = _level_data_jit(image, level)
    return out.data, out.grid


@functools.partial(jax.jit, static_argnums=1)
def _level_data_jit(image: Image, level: Level) -> Image:
    data = image.data if jnp.issubdtype(image.data.dtype, jnp.floating) else image.data.astype(jnp.float32)
    sig = np.zeros(image.grid.ndim) if level.smooth_mm <= 0 else level.smooth_mm / image.grid.spacing
    if level.shrink > 1 and level.smooth_mm <= 0:
        sig = np.full(image.grid.ndim, 0.5 * level.shrink)  # anti-aliasing before decimation, in voxels
    data = smooth_array(data, sig) if np.any(sig > 0) else data
    if level.shrink == 1:
        return Image(data, image.grid)
    grid = image.grid.downsample(level.shrink)
    idx = _moving_index(image.grid, grid.world_coords(data.dtype))
    return Image(map_coordinates(data, idx, order=1, mode="nearest"), grid)


def _make_loss(terms: tuple, fixed_grid: Grid, moving_grid: Grid):
    """loss(params, weights, fixed, moving, fmask, mmask, outer) for one level (params: the transform pytree)."""

    def loss(params: Transform, weights, fixed, moving, fmask, mmask, outer):
        full = params if outer is None else compose(outer, params)
        idx = _moving_index(moving_grid, full.sample_grid(fixed_grid, fixed.dtype))
        warped = map_coordinates(moving, idx, order=1, mode="constant", cval=0.0)
        mask = fmask
        if mmask is not None:
            wm = map_coordinates(mmask, idx, order=1, mode="constant", cval=0.0)
            mask = wm if mask is None else mask * wm
        return Objective(terms, weights)(params, fixed, warped, mask, fixed_grid)

    return loss


def _make_chunk(loss_fn: Callable, optimizer: optax.GradientTransformation, cap: int, stopping: Stopping, chunk: int):
    vg = jax.value_and_grad(loss_fn)

    def step(state: _State, data) -> tuple[_State, None]:
        weights, fixed, moving, fmask, mmask, outer = data
        loss, grads = vg(state.params, weights, fixed, moving, fmask, mmask, outer)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        keep = state.done
        sel = lambda old, new: jax.tree_util.tree_map(lambda a, b: jnp.where(keep, a, b), old, new)  # noqa: E731
        k = state.k
        losses = jnp.where(keep, state.losses, state.losses.at[jnp.minimum(k, cap - 1)].set(loss))
        past = losses[jnp.maximum(k - stopping.window, 0)]
        rel = jnp.abs(past - loss) <= stopping.tol * jnp.abs(past)
        conv = (k >= jnp.maximum(stopping.window, stopping.min_iterations)) & rel & jnp.isfinite(loss)
        new_k = jnp.where(keep, k, k + 1)
        done = keep | conv | (new_k >= cap)
        return (
            _State(sel(state.params, params), sel(state.opt_state, opt_state), losses, new_k, done, state.converged | (conv & ~keep)),
            None,
        )

    def run(state: _State, weights, fixed, moving, fmask, mmask, outer) -> _State:
        data = (weights, fixed, moving, fmask, mmask, outer)
        state, _ = jax.lax.scan(lambda s, _: step(s, data), state, None, length=chunk)
        return state

    return run


@functools.lru_cache(maxsize=32)
def _compiled_run(terms: tuple, fixed_grid: Grid, moving_grid: Grid, optimizer, cap: int, stopping: Stopping, chunk: int, batched: bool):
    """The jitted chunk runner for one configuration, cached so a repeated call does not recompile."""
    run = _make_chunk(_make_loss(terms, fixed_grid, moving_grid), optimizer, cap, stopping, chunk)
    return jax.jit(jax.vmap(run) if batched else run)


_adapt_jit = jax.jit(lambda t, g: adapt_transform(t, g), static_argnums=1)


def _init_state(params, optimizer, cap: int, dtype) -> _State:
    return _State(
        params,
        optimizer.init(params),
        jnp.full((cap,), jnp.nan, dtype),
        jnp.zeros((), jnp.int32),
        jnp.zeros((), bool),
        jnp.zeros((), bool),
    )


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - optional
        return None
    return tqdm(total=total, desc=desc, leave=False)


def register(
    fixed: Image,
    moving: Image,
    transform: Transform,
    *,
    objective: Objective,
    optimizer: optax.GradientTransformation,
    levels: Sequence[Level] = (Level(),),
    stopping: Stopping = Stopping(),
    outer: Transform | None = None,
    fixed_mask: Image | None = None,
    moving_mask: Image | None = None,
    chunk: int = 25,
    progress: bool = False,
) -> RegistrationResult:
    """Register ``moving`` to ``fixed`` by optimising ``transform``.

    The moving image is sampled at ``outer(transform(x))`` for fixed voxel centres ``x`` (pull; ``outer``, when
    given, is a fixed earlier stage such as an affine, applied last). Images may live on different grids.

    Args:
      fixed: fixed image ``(*shape[, C])`` on its grid.
      moving: moving image on its own grid (same channels).
      transform: initial transform (a pytree; all its leaves are optimised, centres have stopped gradients).
      objective: weighted sum of terms (:func:`jaxreg.optimize.objective`).
      optimizer: any optax gradient transformation (its state is re-initialised at each level).
      levels: resolution levels, coarse to fine.
      stopping: convergence rule.
      outer: optional fixed transform applied after ``transform``.
      fixed_mask: optional mask on the fixed grid (weights in [0, 1]).
      moving_mask: optional mask on the moving grid, warped with the image.
      chunk: steps per compiled call between progress reports (static).
      progress: show a tqdm bar per level.

    Returns:
      :class:`RegistrationResult`.
    """
    _check_inputs(fixed, moving, transform, fixed_mask, moving_mask)
    t_start = time.perf_counter()
    params = transform
    records = []
    for li, level in enumerate(levels):
        params, rec = _run_level(fixed, moving, params, objective, optimizer, level, stopping, outer, fixed_mask, moving_mask, chunk, progress, li)
        records.append(rec)
    final = adapt_transform(params, fixed.grid)
    full = final if outer is None else compose(outer, final)
    return RegistrationResult(full, final, tuple(records), time.perf_counter() - t_start)


def _run_level(fixed, moving, params, objective, optimizer, level, stopping, outer, fixed_mask, moving_mask, chunk, progress, li, batched=False):
    t0 = time.perf_counter()
    f, fgrid = _level_data(fixed, level)
    m, mgrid = _level_data(moving, level)
    fm = None if fixed_mask is None else _level_data(fixed_mask, level)[0]
    mm = None if moving_mask is None else _level_data(moving_mask, level)[0]
    params = _adapt_jit(params, fgrid)
    cap = int(level.iterations)
    run_j = _compiled_run(objective.terms, fgrid, mgrid, optimizer, cap, stopping, int(chunk), False)
    state = _init_state(params, optimizer, cap, f.dtype)
    bar = _progress(cap, f"level {li} (shrink {level.shrink})", progress)
    compile_s = 0.0
    first = True
    while True:
        tc = time.perf_counter()
        state = run_j(state, objective.weights, f, m, fm, mm, outer)
        k = int(state.k)
        if first:
            compile_s = time.perf_counter() - tc
            first = False
        if bar is not None:
            bar.n = k
            last = np.asarray(state.losses)[max(k - 1, 0)]
            bar.set_postfix(loss=f"{last:.5g}")
            bar.refresh()
        if bool(state.done):
            break
    if bar is not None:
        bar.close()
    rec = LevelResult(np.asarray(state.losses), int(state.k), bool(state.converged), time.perf_counter() - t0, compile_s)
    return state.params, rec


def register_many(
    fixed: jax.Array,
    moving: jax.Array,
    transform: Transform,
    *,
    fixed_grid: Grid,
    moving_grid: Grid,
    objective: Objective,
    optimizer: optax.GradientTransformation,
    iterations: int = 100,
    stopping: Stopping = Stopping(),
    chunk: int = 25,
) -> tuple[Transform, jax.Array, jax.Array]:
    """Many registrations in one compiled, vmapped call (single resolution level).

    Everything is batched along a leading axis of size ``B``: pairs of equal shape, or one pair broadcast
    against a batch of objective weights (a hyperparameter sweep), or both. Each member stops on its own
    (converged members are masked), the call returns when all are done.

    Args:
      fixed: ``(B, *fixed_grid.shape[, C])`` fixed images.
      moving: ``(B, *moving_grid.shape[, C])`` moving images.
      transform: initial transforms with a leading batch axis on every leaf.
      fixed_grid: the shared fixed grid.
      moving_grid: the shared moving grid.
      objective: terms, with ``weights`` ``(B, n_terms)`` (or ``(n_terms,)``, broadcast).
      optimizer: optax optimiser.
      iterations: iteration cap.
      stopping: convergence rule.
      chunk: steps per compiled call.

    Returns:
      ``(transforms, losses (B, iterations), iterations_used (B,))``.
    """
    b = fixed.shape[0]
    if moving.shape[0] != b:
        raise ValueError(f"moving: expected a leading batch of {b} like fixed, got {moving.shape[0]}")
    weights = jnp.asarray(objective.weights, jnp.float32)
    if weights.ndim == 1:
        weights = jnp.broadcast_to(weights, (b, weights.shape[0]))
    run_v = _compiled_run(objective.terms, fixed_grid, moving_grid, optimizer, int(iterations), stopping, int(chunk), True)
    state = jax.vmap(lambda p: _init_state(p, optimizer, int(iterations), fixed.dtype))(transform)
    while True:
        state = run_v(state, weights, fixed, moving, None, None, None)
        if bool(jnp.all(state.done)):
            break
    return state.params, state.losses, state.k


def _check_inputs(fixed, moving, transform, fixed_mask, moving_mask) -> None:
    for name, im in (("fixed", fixed), ("moving", moving)):
        if not isinstance(im, Image):
            raise TypeError(f"{name}: expected a jaxreg Image, got {type(im).__name__}")
        if not bool(jnp.all(jnp.isfinite(im.data))):
            raise ValueError(f"{name}: the image contains NaN or Inf")
    if fixed.grid.ndim != moving.grid.ndim:
        raise ValueError(f"fixed/moving: dimensions differ ({fixed.grid.ndim}-D vs {moving.grid.ndim}-D)")
    if fixed.has_channels != moving.has_channels or (fixed.has_channels and fixed.data.shape[-1] != moving.data.shape[-1]):
        raise ValueError("fixed/moving: channel counts differ")
    if not isinstance(transform, Transform) or transform.ndim != fixed.grid.ndim:
        raise ValueError(f"transform: expected a {fixed.grid.ndim}-D jaxreg transform, got {type(transform).__name__}")
    for name, mk, ref in (("fixed_mask", fixed_mask, fixed), ("moving_mask", moving_mask, moving)):
        if mk is None:
            continue
        if not isinstance(mk, Image) or mk.grid != ref.grid:
            raise ValueError(f"{name}: expected an Image on the {name.split('_')[0]} image's grid")
        if not bool(jnp.any(mk.data > 0)):
            raise ValueError(f"{name}: the mask is empty")
