"""Greedy diffeomorphic registration: demons-like compositive updates of a stationary velocity field.

Autodiff through a whole scaling-and-squaring integration is exact but costly (every squaring step's
transpose is a scatter). Greedy methods (Thirion's demons, Vercauteren's log-domain demons, ANTs' SyN,
PICSL greedy) instead take, at each iteration, the *force* field of the similarity metric with respect to
the sampling position of each fixed voxel, smooth it ("fluid" regularisation), and add it to the transform
parameters, then smooth the parameters ("diffusion" regularisation). Here the parameters are a stationary
velocity field ``v`` in voxel units of the level grid, so every iterate ``exp(v)`` is a diffeomorphism (up to
the discretisation of scaling and squaring): folding-free by construction.

For a similarity ``S(F, W)`` between the fixed image ``F`` and the warped moving image ``W = M o phi``, the
force at fixed voxel ``x`` is ``dS/dW(x) * grad W(x)`` (the chain rule through the sampling position). Each
iteration:

1. ``delta = -G_{sigma_u} * force``, scaled so that ``max |delta| = step`` voxels;
2. ``v <- G_{sigma_f} * (v + delta)`` (first-order log-domain update, Vercauteren et al. 2008);

In the symmetric variant (``symmetric=True``, as in SyN, Avants et al. 2008) both images are warped half way,
``F o exp(-v/2)`` and ``M o exp(v/2)``, compared in the mid space, and the force is the average of the two
sides; the final transform is still ``exp(v)`` from fixed to moving. An optional ``outer`` linear transform
(the affine stage) is applied after ``exp(v)`` to reach the moving image.

Thirion's demons force (``force="demons"``) replaces the metric gradient by
``(W - F) grad W / (|grad W|^2 + (W - F)^2 / K)`` (Thirion 1998; ``K`` the normaliser, 1 by default).
"""

from __future__ import annotations

import functools
import time
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxreg.core.diff import index_gradient
from jaxreg.core.grid import Grid, Image
from jaxreg.core.sampling import map_coordinates
from jaxreg.optimize.engine import Level, LevelResult, RegistrationResult, adapt_transform
from jaxreg.transforms.base import LinearTransform, Transform
from jaxreg.transforms.compose import compose
from jaxreg.transforms.dense import (
    DisplacementField,
    VelocityField,
    from_voxel_displacement,
    to_voxel_displacement,
)
from jaxreg.warp.pyramid import smooth_array

__all__ = ["GreedyManyResult", "GreedyOptions", "greedy_register", "greedy_register_many"]


class GreedyOptions(NamedTuple):
    """Settings of :func:`greedy_register` (all static).

    Attributes:
      step: maximum update per iteration, in voxels of the level grid.
      sigma_update: Gaussian sigma (voxels) of the update ("fluid") smoothing.
      sigma_field: Gaussian sigma (voxels) of the velocity ("diffusion") smoothing.
      symmetric: warp both images half way (SyN-like) instead of the moving image all the way.
      exp_steps: scaling-and-squaring steps for ``exp(v)``.
      force: ``"metric"`` (gradient of the similarity) or ``"demons"`` (Thirion's force, SSD-like).
      update: how the smoothed update ``delta`` enters the transform:
        ``"svf"`` (default): ``v <- G_f * (v + delta)``, transform ``exp(v)`` (log-domain, diffeomorphic);
        ``"additive"``: displacement ``u <- G_f * (u + delta)`` (Thirion's original demons);
        ``"compositive"``: ``u <- G_f * (u o (id + delta))``;
        ``"diffeomorphic"``: ``u <- G_f * (u o exp(delta))`` (diffeomorphic demons, Vercauteren et al. 2009).
        The three displacement updates use no exponential of the whole field, so they are cheaper per
        iteration; ``symmetric=True`` requires ``"svf"``.
    """

    step: float = 1.0
    sigma_update: float = 1.732
    sigma_field: float = 0.707
    symmetric: bool = True
    exp_steps: int = 6
    force: str = "metric"
    update: str = "svf"


def _exp_vox(v: jax.Array, index: jax.Array, steps: int) -> jax.Array:
    u = v / (2.0**steps)
    return jax.lax.fori_loop(0, steps, lambda _, w: w + map_coordinates(w, index + w, order=1, mode="nearest"), u)


def _level_image(image: Image, level: Level) -> Image:
    from jaxreg.optimize.engine import _level_data_jit

    return _level_data_jit(image, level)


def _make_level_runner(sim: Callable, fgrid: Grid, mgrid: Grid, opts: GreedyOptions, iterations: int):
    n = fgrid.ndim

    def force_of(fixed_w, moving_w, mask):
        if opts.force == "demons":
            if moving_w.ndim > n:
                raise ValueError("options.force: 'demons' needs scalar images; use force='metric' with channels")
            diff = moving_w - fixed_w
            gw = index_gradient(moving_w, n)
            denom = jnp.sum(gw**2, -1) + diff**2
            f = diff[..., None] * gw / jnp.where(denom > 1e-9, denom, 1.0)[..., None]
            f = jnp.where((denom > 1e-9)[..., None], f, 0.0)
            if mask is not None:
                f = f * mask[..., None]
            return f, jnp.mean(diff**2)
        val, (dfix, dmov) = jax.value_and_grad(sim, argnums=(0, 1))(fixed_w, moving_w, mask)
        force = _chain(dmov, moving_w)
        if opts.symmetric:
            force = 0.5 * (force - _chain(dfix, fixed_w))
        return force, val

    def _chain(dimage, image):
        # dS/dposition = sum over channels of dS/dW_c * grad W_c (index units)
        g = index_gradient(image, n)  # (*shape[, C], n)
        return (dimage[..., None] * g).sum(axis=-2) if image.ndim > n else dimage[..., None] * g

    def run(v, fixed, moving, mask, hmat):
        index = fgrid.index_coords(fixed.dtype)
        hm = hmat.astype(fixed.dtype)

        def sample_moving(u):
            pts = index + u
            idx = pts @ hm[:n, :n].T + hm[:n, n]
            r = jnp.round(idx)
            idx = jnp.where(jnp.abs(r - idx) < 1e-4, r, idx)
            return map_coordinates(moving, idx, order=1, mode="constant", cval=0.0)

        def displacement_of(v):
            return v if opts.update != "svf" else _exp_vox(v, index, opts.exp_steps)

        def apply_update(v, delta):
            if opts.update in ("svf", "additive"):
                new = v + delta
            else:
                step = delta if opts.update == "compositive" else _exp_vox(delta, index, 4)
                new = step + map_coordinates(v, index + step, order=1, mode="nearest")
            return smooth_array(new, (opts.sigma_field,) * n)

        def body(v, _):
            if opts.symmetric:
                up = _exp_vox(0.5 * v, index, opts.exp_steps)
                um = _exp_vox(-0.5 * v, index, opts.exp_steps)
                mw = sample_moving(up)
                fw = map_coordinates(fixed, index + um, order=1, mode="nearest")
            else:
                mw = sample_moving(displacement_of(v))
                fw = fixed
            force, val = force_of(fw, mw, mask)
            delta = -smooth_array(force, (opts.sigma_update,) * n)
            # robust step scaling: the RMS update magnitude over moving voxels becomes step / 3, then each
            # voxel's update is clipped at step (a max-norm would let a few outliers freeze everything else)
            mag2 = jnp.sum(delta**2, -1)
            active = mag2 > 1e-6 * jnp.max(mag2)
            rms = jnp.sqrt(jnp.sum(jnp.where(active, mag2, 0.0)) / jnp.maximum(jnp.sum(active), 1))
            delta = delta * (opts.step / (3.0 * jnp.maximum(rms, 1e-20)))
            mag = jnp.sqrt(jnp.sum(delta**2, -1, keepdims=True))
            delta = delta * jnp.minimum(1.0, opts.step / jnp.maximum(mag, 1e-20))
            return apply_update(v, delta), val

        return jax.lax.scan(body, v, None, length=iterations)

    return run



class _LevelRunner:
    """One level's compiled loop (single pair or vmapped over pairs), compiled ahead of time per input signature.

    Compiling explicitly (``lower(...).compile()``) separates the compilation time from the run time, so that a
    level's ``compile_seconds`` is what it says (0 when the executable was already built).
    """

    def __init__(self, run: Callable, batched: bool):
        self._jit = jax.jit(jax.vmap(run) if batched else run)
        self._compiled: dict = {}

    def __call__(self, *args) -> tuple[tuple[jax.Array, jax.Array], float]:
        leaves, treedef = jax.tree_util.tree_flatten(args)
        sig = (treedef, tuple((tuple(x.shape), jnp.dtype(x.dtype), bool(getattr(x, "weak_type", False))) for x in leaves))
        exe = self._compiled.get(sig)
        compile_s = 0.0
        if exe is None:
            t0 = time.perf_counter()
            exe = self._jit.lower(*args).compile()
            compile_s = time.perf_counter() - t0
            self._compiled[sig] = exe
        return exe(*args), compile_s


@functools.lru_cache(maxsize=16)
def _runner(sim: Callable, fgrid: Grid, mgrid: Grid, opts: GreedyOptions, iterations: int, batched: bool = False) -> _LevelRunner:
    """The cached level runner: ``run(v_vox, fixed, moving, mask, hmat) -> ((v_vox, losses), compile_seconds)``."""
    return _LevelRunner(_make_level_runner(sim, fgrid, mgrid, opts, iterations), batched)


def _check_options(options: GreedyOptions) -> None:
    if not isinstance(options, GreedyOptions):
        raise TypeError(f"options: expected GreedyOptions, got {type(options).__name__}")
    if options.force not in ("metric", "demons"):
        raise ValueError(f"options.force: expected 'metric' or 'demons', got {options.force!r}")
    if options.update not in ("svf", "additive", "compositive", "diffeomorphic"):
        raise ValueError(f"options.update: expected 'svf', 'additive', 'compositive' or 'diffeomorphic', got {options.update!r}")
    if options.symmetric and options.update != "svf":
        raise ValueError("options.symmetric: the symmetric (mid-space) variant needs update='svf'")


def _check_initial(initial, options: GreedyOptions) -> None:
    if initial is None:
        return
    want = VelocityField if options.update == "svf" else DisplacementField
    if not isinstance(initial, want):
        raise TypeError(f"initial: update={options.update!r} expects a {want.__name__}, got {type(initial).__name__}")


def _level_arrays(data: jax.Array, grid: Grid, level: Level, batched: bool) -> tuple[jax.Array, Grid]:
    """Smoothed and downsampled level data (the engine's pyramid), vmapped over a leading pair axis if batched."""
    if not batched:
        out = _level_image(Image(data, grid), level)
    else:
        out = jax.vmap(lambda d: _level_image(Image(d, grid), level))(data)
    return out.data, out.grid


def _adapt_to(transform: Transform, *, grid: Grid) -> Transform:
    return adapt_transform(transform, grid)


def _greedy_levels(fixed, moving, fgrid, mgrid, mask, hom, initial, similarity, levels, options, batched):
    """The level loop shared by :func:`greedy_register` and :func:`greedy_register_many`.

    ``fixed``/``moving``/``mask`` are arrays on ``fgrid``/``mgrid`` (leading pair axis when ``batched``), ``hom``
    the float64 homogeneous matrix of the outer linear transform (``(P, n+1, n+1)`` when batched). Returns the
    optimised field (on ``fgrid``) and the per-level records.
    """
    n = fgrid.ndim
    b = fixed.shape[0] if batched else None
    vmap = jax.vmap if batched else (lambda fn: fn)
    vel = initial
    records = []
    for level in levels:
        t0 = time.perf_counter()
        f, fg = _level_arrays(fixed, fgrid, level, batched)
        m, mg = _level_arrays(moving, mgrid, level, batched)
        mk = None if mask is None else _level_arrays(mask, fgrid, level, batched)[0]
        if vel is None:
            lead = () if b is None else (b,)
            v_vox = jnp.zeros((*lead, *fg.shape, n), jnp.float32)
        else:
            vel = vmap(functools.partial(_adapt_to, grid=fg))(vel)
            v_vox = to_voxel_displacement(vel.velocity if options.update == "svf" else vel.displacement, fg)
        hmat = jnp.asarray(mg.inverse_affine @ hom @ fg.affine, jnp.float32)
        run = _runner(similarity, fg, mg, options, int(level.iterations), batched)
        (v_vox, hist), compile_s = run(v_vox, f, m, mk, hmat)
        hist = np.asarray(hist)
        mm = from_voxel_displacement(v_vox, fg)
        vel = VelocityField(mm, fg, options.exp_steps) if options.update == "svf" else DisplacementField(mm, fg)
        records.append(LevelResult(hist, int(level.iterations), False, time.perf_counter() - t0, compile_s))
    if vel is None:
        raise ValueError("levels: expected at least one level")
    vel = vmap(functools.partial(_adapt_to, grid=fgrid))(vel)
    return vel, tuple(records)


def greedy_register(
    fixed: Image,
    moving: Image,
    *,
    similarity: Callable,
    levels: Sequence[Level] = (Level(4, 0.0, 100), Level(2, 0.0, 50), Level(1, 0.0, 10)),
    options: GreedyOptions = GreedyOptions(),
    outer: LinearTransform | None = None,
    fixed_mask: Image | None = None,
    initial: VelocityField | DisplacementField | None = None,
) -> RegistrationResult:
    """Greedy (demons-like) diffeomorphic registration with a stationary velocity field.

    The moving image is sampled (pull) at ``outer(exp(v)(x))`` for fixed voxel centres ``x``.

    Args:
      fixed: fixed image ``(*shape[, C])``.
      moving: moving image on its own grid (same dimension and channels).
      similarity: ``sim(fixed, warped, mask) -> scalar`` (lower is better), e.g. ``lncc(5)``; unused by
        ``force="demons"`` (the demons force is SSD-like; its loss history is the mean squared difference).
      levels: resolution levels, coarse to fine (iterations per level; ``smooth_mm`` as in the engine).
      options: :class:`GreedyOptions`.
      outer: linear transform applied after ``exp(v)`` (e.g. the affine stage), fixed.
      fixed_mask: optional mask on the fixed grid, weighting the similarity.
      initial: optional initial velocity field (``update="svf"``) or displacement field (other updates), on any
        grid (resampled onto each level's grid).

    Returns:
      :class:`~jaxreg.optimize.RegistrationResult` whose ``optimized`` is the :class:`VelocityField` (or, for
      the displacement updates, the :class:`DisplacementField`) on the fixed grid and ``transform`` is
      ``compose(outer, exp(v))`` (or the field alone). ``levels[i].loss`` holds the similarity value per
      iteration, ``levels[i].seconds`` the level's wall time and ``levels[i].compile_seconds`` the part of it
      spent compiling the level's loop (0 when it was compiled by an earlier call).
    """
    if not isinstance(fixed, Image) or not isinstance(moving, Image):
        raise TypeError("fixed/moving: expected jaxreg Images")
    if fixed.grid.ndim != moving.grid.ndim:
        raise ValueError(f"fixed/moving: dimensions differ ({fixed.grid.ndim}-D vs {moving.grid.ndim}-D)")
    _check_options(options)
    _check_initial(initial, options)
    if fixed_mask is not None and (not isinstance(fixed_mask, Image) or fixed_mask.grid != fixed.grid):
        raise ValueError("fixed_mask: expected an Image on the fixed image's grid")
    t_start = time.perf_counter()
    n = fixed.grid.ndim
    hom = np.eye(n + 1) if outer is None else np.asarray(outer.homogeneous(), np.float64)
    mask = None if fixed_mask is None else fixed_mask.data
    vel, records = _greedy_levels(
        fixed.data, moving.data, fixed.grid, moving.grid, mask, hom, initial, similarity, levels, options, False
    )
    full = vel if outer is None else compose(outer, vel)
    return RegistrationResult(full, vel, records, time.perf_counter() - t_start)


class GreedyManyResult(NamedTuple):
    """Outcome of :func:`greedy_register_many`: ``P`` registrations stacked along a leading axis.

    Attributes:
      transform: the full pull transforms (``compose(outer, exp(v))`` or the fields alone), every leaf with a
        leading axis of size ``P``.
      optimized: the optimised fields on the fixed grid, :class:`VelocityField` (``velocity`` ``(P, *shape,
        ndim)``, mm) or :class:`DisplacementField`.
      levels: one :class:`~jaxreg.optimize.LevelResult` per level whose ``loss`` is ``(P, iterations)``; its
        ``seconds``/``compile_seconds`` are those of the one batched call.
      seconds: total wall time (s).
    """

    transform: Transform
    optimized: Transform
    levels: tuple
    seconds: float

    @property
    def pairs(self) -> int:
        """Number of registrations ``P``."""
        return int(np.asarray(self.levels[0].loss).shape[0])

    @property
    def loss_history(self) -> np.ndarray:
        """``(P, total_iterations)``: every pair's losses over all levels."""
        return np.concatenate([np.asarray(lv.loss) for lv in self.levels], axis=1)

    def pair(self, i: int) -> RegistrationResult:
        """The ``i``-th registration as a :class:`~jaxreg.optimize.RegistrationResult` (times of the batch)."""
        if not 0 <= int(i) < self.pairs:
            raise ValueError(f"i: expected 0 <= i < {self.pairs}, got {i}")
        take = functools.partial(jax.tree_util.tree_map, lambda x: x[int(i)])
        levels = tuple(lv._replace(loss=np.asarray(lv.loss)[int(i)]) for lv in self.levels)
        return RegistrationResult(take(self.transform), take(self.optimized), levels, self.seconds)


def greedy_register_many(
    fixed: jax.Array,
    moving: jax.Array,
    *,
    fixed_grid: Grid,
    moving_grid: Grid,
    similarity: Callable,
    levels: Sequence[Level] = (Level(4, 0.0, 100), Level(2, 0.0, 50), Level(1, 0.0, 10)),
    options: GreedyOptions = GreedyOptions(),
    outer: LinearTransform | None = None,
    fixed_mask: jax.Array | None = None,
    initial: VelocityField | DisplacementField | None = None,
) -> GreedyManyResult:
    """:func:`greedy_register` for ``P`` pairs at once: each level is one vmapped, compiled call over the pairs.

    All fixed images share one grid and all moving images another (e.g. slices or volumes resampled to a
    common space); the pairs are stacked along a leading axis. Every pair runs the same iterations, so pair
    ``p`` gets (up to floating-point reassociation) what ``greedy_register(Image(fixed[p], fixed_grid),
    Image(moving[p], moving_grid), ...)`` would give. The moving image of pair ``p`` is sampled (pull) at
    ``outer_p(exp(v_p)(x))``.

    Args:
      fixed: ``(P, *fixed_grid.shape[, C])`` fixed images.
      moving: ``(P, *moving_grid.shape[, C])`` moving images (same channels).
      fixed_grid: the fixed images' common grid.
      moving_grid: the moving images' common grid (same dimension).
      similarity: ``sim(fixed, warped, mask) -> scalar`` (lower is better), as for :func:`greedy_register`.
      levels: resolution levels, coarse to fine.
      options: :class:`GreedyOptions` (shared by all pairs).
      outer: optional per-pair linear transforms applied after ``exp(v)``, stacked: every leaf has a leading
        axis of size ``P`` (e.g. the affines returned by :func:`~jaxreg.optimize.register_many`).
      fixed_mask: optional ``(P, *fixed_grid.shape)`` masks (or one ``fixed_grid.shape`` mask for all pairs).
      initial: optional initial fields, stacked (leading axis ``P`` on the field array), on any one grid:
        :class:`VelocityField` for ``update="svf"``, :class:`DisplacementField` otherwise.

    Returns:
      :class:`GreedyManyResult` with stacked transforms and ``(P, iterations)`` loss histories per level.
    """
    if isinstance(fixed, Image) or isinstance(moving, Image):
        raise TypeError("fixed/moving: expected stacked arrays (P, *grid.shape[, C]) with fixed_grid/moving_grid, got Images")
    for name, g in (("fixed_grid", fixed_grid), ("moving_grid", moving_grid)):
        if not isinstance(g, Grid):
            raise TypeError(f"{name}: expected a jaxreg Grid, got {type(g).__name__}")
    if fixed_grid.ndim != moving_grid.ndim:
        raise ValueError(f"fixed_grid/moving_grid: dimensions differ ({fixed_grid.ndim}-D vs {moving_grid.ndim}-D)")
    fixed, moving = jnp.asarray(fixed), jnp.asarray(moving)
    n = fixed_grid.ndim
    for name, x, g in (("fixed", fixed, fixed_grid), ("moving", moving, moving_grid)):
        if x.ndim not in (n + 1, n + 2) or tuple(x.shape[1 : n + 1]) != g.shape:
            raise ValueError(f"{name}: expected shape (P, *{g.shape}[, C]) on {name}_grid, got {tuple(x.shape)}")
    p = fixed.shape[0]
    if moving.shape[0] != p:
        raise ValueError(f"moving: expected {p} images like fixed, got {moving.shape[0]}")
    if p < 1:
        raise ValueError("fixed: expected at least one pair")
    if fixed.shape[n + 1 :] != moving.shape[n + 1 :]:
        raise ValueError(f"fixed/moving: channel counts differ ({fixed.shape[n + 1:]} vs {moving.shape[n + 1:]})")
    _check_options(options)
    _check_initial(initial, options)
    if initial is not None:
        arr = initial.velocity if options.update == "svf" else initial.displacement
        if arr.ndim != n + 2 or arr.shape[0] != p:
            raise ValueError(f"initial: expected a field stacked along a leading axis of {p} pairs, got shape {tuple(arr.shape)}")
    mask = None
    if fixed_mask is not None:
        mask = jnp.asarray(fixed_mask)
        if tuple(mask.shape) == fixed_grid.shape:
            mask = jnp.broadcast_to(mask, (p, *fixed_grid.shape))
        if tuple(mask.shape) != (p, *fixed_grid.shape):
            raise ValueError(f"fixed_mask: expected shape {(p, *fixed_grid.shape)} or {fixed_grid.shape}, got {tuple(mask.shape)}")
    if outer is None:
        hom = np.broadcast_to(np.eye(n + 1), (p, n + 1, n + 1))
    else:
        if not isinstance(outer, LinearTransform):
            raise TypeError(f"outer: expected a jaxreg linear transform, got {type(outer).__name__}")
        if any(jnp.ndim(x) < 1 or jnp.shape(x)[0] != p for x in jax.tree_util.tree_leaves(outer)):
            raise ValueError(f"outer: expected linear transforms stacked along a leading axis of {p} pairs")
        hom = np.asarray(jax.vmap(lambda t: t.homogeneous())(outer), np.float64)
        if hom.shape != (p, n + 1, n + 1):
            raise ValueError(f"outer: expected {n}-D transforms (homogeneous {(n + 1, n + 1)}), got {hom.shape[1:]}")
    t_start = time.perf_counter()
    vel, records = _greedy_levels(fixed, moving, fixed_grid, moving_grid, mask, hom, initial, similarity, levels, options, True)
    full = vel if outer is None else compose(outer, vel)
    return GreedyManyResult(full, vel, records, time.perf_counter() - t_start)
