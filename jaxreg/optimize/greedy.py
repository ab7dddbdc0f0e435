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
from jaxreg.transforms.base import LinearTransform
from jaxreg.transforms.compose import compose
from jaxreg.transforms.dense import DisplacementField, VelocityField, from_voxel_displacement, to_voxel_displacement
from jaxreg.warp.pyramid import smooth_array

__all__ = ["GreedyOptions", "greedy_register"]


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

    return jax.jit(run)


@functools.lru_cache(maxsize=16)
def _runner(sim, fgrid, mgrid, opts, iterations):
    return _make_level_runner(sim, fgrid, mgrid, opts, iterations)


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

    Args:
      fixed: fixed image.
      moving: moving image (its own grid).
      similarity: ``sim(fixed, warped, mask) -> scalar`` (lower is better), e.g. ``lncc(5)``; unused by
        ``force="demons"`` except for nothing (the demons force is SSD-like).
      levels: resolution levels, coarse to fine (iterations per level).
      options: :class:`GreedyOptions`.
      outer: linear transform applied after ``exp(v)`` (e.g. the affine stage), fixed.
      fixed_mask: optional mask on the fixed grid, weighting the similarity.
      initial: optional initial velocity field (``update="svf"``) or displacement field (any grid; resampled).

    Returns:
      :class:`~jaxreg.optimize.RegistrationResult` whose ``optimized`` is the :class:`VelocityField` (or, for
      the displacement updates, the :class:`DisplacementField`) on the fixed grid and ``transform`` is ``compose(outer, exp(v))`` (or the field alone). ``levels[i].loss`` holds the
      similarity value per iteration.
    """
    if not isinstance(fixed, Image) or not isinstance(moving, Image):
        raise TypeError("fixed/moving: expected jaxreg Images")
    if fixed.grid.ndim != moving.grid.ndim:
        raise ValueError(f"fixed/moving: dimensions differ ({fixed.grid.ndim}-D vs {moving.grid.ndim}-D)")
    if options.force not in ("metric", "demons"):
        raise ValueError(f"options.force: expected 'metric' or 'demons', got {options.force!r}")
    if options.update not in ("svf", "additive", "compositive", "diffeomorphic"):
        raise ValueError(f"options.update: expected 'svf', 'additive', 'compositive' or 'diffeomorphic', got {options.update!r}")
    if options.symmetric and options.update != "svf":
        raise ValueError("options.symmetric: the symmetric (mid-space) variant needs update='svf'")
    t_start = time.perf_counter()
    n = fixed.grid.ndim
    vel = initial
    records = []
    for level in levels:
        t0 = time.perf_counter()
        f = _level_image(fixed, level)
        m = _level_image(moving, level)
        mk = None if fixed_mask is None else _level_image(fixed_mask, level).data
        if vel is None:
            vel = VelocityField.identity(f.grid, steps=options.exp_steps) if options.update == "svf" else DisplacementField.identity(f.grid)
        vel = adapt_transform(vel, f.grid)
        v_vox = to_voxel_displacement(vel.velocity if options.update == "svf" else vel.displacement, f.grid)
        a = np.eye(n + 1) if outer is None else np.asarray(outer.homogeneous(), np.float64)
        hmat = jnp.asarray(m.grid.inverse_affine @ a @ f.grid.affine, jnp.float32)
        run = _runner(similarity, f.grid, m.grid, options, int(level.iterations))
        tc = time.perf_counter()
        v_vox, hist = run(v_vox, f.data, m.data, mk, hmat)
        hist = np.asarray(hist)
        compile_s = time.perf_counter() - tc
        mm = from_voxel_displacement(v_vox, f.grid)
        vel = VelocityField(mm, f.grid, options.exp_steps) if options.update == "svf" else DisplacementField(mm, f.grid)
        records.append(LevelResult(hist, int(level.iterations), False, time.perf_counter() - t0, compile_s))
    vel = adapt_transform(vel, fixed.grid)
    full = vel if outer is None else compose(outer, vel)
    return RegistrationResult(full, vel, tuple(records), time.perf_counter() - t_start)
