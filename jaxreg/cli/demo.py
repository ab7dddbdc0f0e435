"""``jaxreg demo``: register the MNI152 template to a copy of itself deformed by a known transform.

Steps (each timed; JAX times include compilation unless the persistent cache already holds it):

1. load the MNI152 T1 template and its grey-matter, white-matter and brain masks, all shipped with nilearn
   (:func:`jaxreg.data.load_mni152`, :func:`jaxreg.data.load_mni152_masks`; nothing is downloaded). The
   template is the *fixed* image;
2. draw a known fixed -> moving transform ``T = A o exp(v)``: a seeded random smooth stationary velocity field
   ``v`` (:func:`jaxreg.data.random_velocity_field`) followed by an affine ``A`` about the template centre
   (rotations of a few degrees, translations of a few mm, scalings of about 5 %), all drawn from
   ``jax.random.PRNGKey(seed)``;
3. make the *moving* image: the template pulled through ``T^-1 = exp(-v) o A^-1`` (so that
   ``moving(T(x)) = template(x)``), times a smooth multiplicative bias field (up to +-20 %), plus Gaussian noise
   (2 % of the intensity range);
4. register with :func:`jaxreg.optimize.register` (the default pipeline: best candidate start -> affine (NCC)
   -> symmetric diffeomorphic greedy registration with local NCC) with its default levels, except that no level
   is coarser than 8 mm (:func:`cap_levels`; this only changes quick runs at ``--resolution`` 3 or more);
5. evaluate against the known truth: Dice of each mask ``m`` with ``warp_labels(m_moving, T_hat)`` where
   ``m_moving = warp_labels(m, T^-1)`` is the mask carried into the moving image and ``T_hat`` the registration
   result (before registration: Dice of ``m`` and ``m_moving``); the mean distance ``|T_hat(x) - T(x)|`` (mm)
   over the brain mask; the folding fraction of the deformable part; the time;
6. write the inputs ``fixed.nii.gz`` (template) and ``moving.nii.gz`` and everything ``jaxreg register`` writes
   (``warped.nii.gz``, ``affine.mat``, ``warp.nii.gz``, ``inverse_warp.nii.gz``, ``report.json`` with a ``demo``
   section, ``report.png``;
   :func:`jaxreg.evaluation.summarize` computes them, :func:`jaxreg.io.write_outputs` writes them all or nothing).

``jaxreg apply --fixed fixed.nii.gz --moving moving.nii.gz -t warp.nii.gz -t affine.mat -o check.nii.gz``
recomputes ``warped.nii.gz``.
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["run_demo", "known_transform", "make_moving", "cap_levels"]


@functools.partial(
    jax.jit,
    static_argnames=("grid", "max_displacement_mm", "smoothness_mm", "max_angle_deg", "max_shift_mm", "max_scale"),
)
def known_transform(
    key: Any,
    grid: Any,
    *,
    max_displacement_mm: float = 5.0,
    smoothness_mm: float = 12.0,
    max_angle_deg: float = 4.0,
    max_shift_mm: float = 4.0,
    max_scale: float = 0.05,
) -> Any:
    """A seeded random fixed -> moving transform ``A o exp(v)`` on ``grid`` (see the module docstring).

    Args:
      key: PRNG key.
      grid: the fixed grid (``v`` lives on it, ``A`` is about its centre).
      max_displacement_mm: largest velocity vector of ``v``.
      smoothness_mm: Gaussian smoothing of ``v``'s white noise.
      max_angle_deg: rotation angles drawn uniformly in +-this (degrees, each axis).
      max_shift_mm: translations drawn uniformly in +-this (mm, each axis).
      max_scale: log-scales drawn uniformly in +-this (each axis).

    Returns:
      ``Composite(A, exp(v))``: ``T(x) = A(exp(v)(x))``.
    """
    from jaxreg.data import random_velocity_field
    from jaxreg.transforms import Affine, compose, euler_to_matrix, rotation_matrix

    k_v, k_rot, k_shift, k_scale = jax.random.split(key, 4)
    n = grid.ndim
    velocity = random_velocity_field(
        k_v, grid, smoothness_mm=smoothness_mm, max_displacement_mm=max_displacement_mm
    )
    n_angles = 3 if n == 3 else 1
    angles = jnp.deg2rad(jax.random.uniform(k_rot, (n_angles,), minval=-max_angle_deg, maxval=max_angle_deg))
    rot = euler_to_matrix(angles) if n == 3 else rotation_matrix(angles[0])
    scale = jnp.exp(jax.random.uniform(k_scale, (n,), minval=-max_scale, maxval=max_scale))
    shift = jax.random.uniform(k_shift, (n,), minval=-max_shift_mm, maxval=max_shift_mm)
    affine = Affine(rot @ jnp.diag(scale), shift, jnp.asarray(grid.center, jnp.float32))
    return compose(affine, velocity)


@functools.partial(jax.jit, static_argnames=("inverse",))
def make_moving(
    key: Any,
    template: Any,
    transform: Any,
    *,
    inverse: bool = False,
    bias: float = 0.2,
    bias_mm: float = 40.0,
    noise: float = 0.02,
) -> Any:
    """The template pulled through ``invert(transform)``, with a smooth multiplicative bias and noise.

    ``moving(y) = template(T^-1(y)) * exp(b(y)) + noise``, ``b`` a Gaussian-smoothed white noise field
    (``bias_mm`` sigma) scaled to ``max |b| = bias``, the noise Gaussian with standard deviation ``noise``.

    Args:
      key: PRNG key of the bias field and the noise.
      template: the fixed image.
      transform: the fixed -> moving transform ``T``, or ``T^-1`` itself when ``inverse`` is true.
      inverse: ``transform`` already is the inverse.
      bias: largest log-gain of the bias field.
      bias_mm: smoothness (Gaussian sigma, mm) of the bias field.
      noise: standard deviation of the additive Gaussian noise (the template's intensities are in [0, 1]).
    """
    from jaxreg.core.grid import Image
    from jaxreg.data import gaussian_smooth
    from jaxreg.transforms import invert
    from jaxreg.warp import warp

    g = template.grid
    k_bias, k_noise = jax.random.split(key)
    moved = warp(template, transform if inverse else invert(transform), g, order=1)
    b = gaussian_smooth(jax.random.normal(k_bias, g.shape), g, bias_mm)
    b = b * (bias / jnp.maximum(jnp.abs(b).max(), 1e-12))
    data = moved.data * jnp.exp(b) + noise * jax.random.normal(k_noise, g.shape)
    return Image(data.astype(jnp.float32), g)


def cap_levels(levels: Any, resolution: float, *, coarsest_mm: float = 8.0) -> tuple:
    """``levels`` with no level coarser than ``coarsest_mm`` voxels: shrink factors are capped at
    ``coarsest_mm / resolution`` and levels that become equal merge (the first one's iterations are kept).

    At the demo's 2 mm the default levels (shrink 4 and 2: 8 and 4 mm) are unchanged; a quick run at 6 mm gets
    one full-resolution level per stage instead of 24 and 12 mm ones (a 9-voxel-wide brain).
    """
    from jaxreg.optimize.engine import Level

    top = max(1, int(coarsest_mm // resolution))
    out: list[Any] = []
    for lv in levels:
        capped = Level(min(int(lv.shrink), top), float(lv.smooth_mm), int(lv.iterations))
        if not out or out[-1].shrink != capped.shrink:
            out.append(capped)
    return tuple(out)


@functools.partial(jax.jit, static_argnames=("grid", "max_displacement_mm", "smoothness_mm"))
def _synthesize(
    key: Any, template: Any, masks: tuple, *, grid: Any, max_displacement_mm: float, smoothness_mm: float
) -> tuple:
    """The known transform, the moving image, the masks carried into it and the true displacement on the grid,
    compiled as one program (a single compilation instead of one per operation)."""
    from jaxreg.core.grid import Image
    from jaxreg.transforms import invert, to_displacement
    from jaxreg.warp import warp_labels

    k_t, k_img = jax.random.split(key)
    truth = known_transform(k_t, grid, max_displacement_mm=max_displacement_mm, smoothness_mm=smoothness_mm)
    inverse = to_displacement(invert(truth), grid)
    moving = make_moving(k_img, Image(template, grid), inverse, inverse=True)
    moving_masks = tuple(warp_labels(Image(m, grid), inverse, grid).data for m in masks)
    return truth, moving.data, moving_masks, to_displacement(truth, grid).displacement


@functools.partial(jax.jit, static_argnames=("grid",))
def _evaluate(transform: Any, true_displacement: Any, moving_masks: tuple, *, grid: Any) -> tuple:
    """The masks carried back by the registration result and ``|T_hat(x) - T(x)|`` (mm) at the voxels."""
    from jaxreg.core.grid import Image
    from jaxreg.transforms import to_displacement
    from jaxreg.warp import warp_labels

    field = to_displacement(transform, grid)
    back = tuple(warp_labels(Image(m, grid), field, grid).data for m in moving_masks)
    err = jnp.sqrt(jnp.sum((field.displacement - true_displacement) ** 2, axis=-1))
    return back, err


def run_demo(
    output: str | os.PathLike = "jaxreg_demo",
    *,
    seed: int = 0,
    resolution: int = 2,
    max_displacement_mm: float = 5.0,
    smoothness_mm: float = 12.0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the demo, writing into the folder ``output`` (created if needed).

    Args:
      output: output folder.
      seed: PRNG seed of the known transform, the bias field and the noise (``jax.random.PRNGKey(seed)``).
      resolution: template voxel size in mm (integer; 2 by default, 4 or more for a quick run).
      max_displacement_mm: length of the largest velocity vector of the known deformation (mm).
      smoothness_mm: standard deviation of the Gaussian smoothing its random field (mm).
      log: where progress lines go (default :func:`print`).

    Returns:
      dict with ``dice`` (``{mask: {"before", "after"}}``), ``error_mm`` (``{"before", "after"}``: mean
      ``|T_hat(x) - T(x)|`` in the brain mask), ``folding_percent``, ``sdlogj``, ``timings`` (s) and ``paths``.
    """
    from jaxreg.cli.register import check_output, pipeline_options, stages_from_options
    from jaxreg.core.grid import Image
    from jaxreg.data import MNI152_MASKS, load_mni152, load_mni152_masks
    from jaxreg.evaluation import RegistrationInputs, dice, summarize
    from jaxreg.io import save_image, write_outputs

    out = Path(output)
    check_output(out, [])
    from jaxreg.optimize import register  # after the checks: a bad -o fails without the engine
    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    t0 = time.perf_counter()
    template = load_mni152(resolution)
    masks = load_mni152_masks(resolution)
    timings["load"] = time.perf_counter() - t0
    g = template.grid
    log(
        f"fixed:      MNI152 T1 template (nilearn), {'x'.join(map(str, g.shape))} voxels, "
        f"{'x'.join(f'{s:g}' for s in g.spacing)} mm; grey-matter, white-matter and brain masks  "
        f"[{timings['load']:.1f} s]"
    )

    t0 = time.perf_counter()
    names = MNI152_MASKS
    truth, moving_data, moving_masks, true_disp = _synthesize(
        jax.random.PRNGKey(seed),
        template.data,
        tuple(masks[k].data for k in names),
        grid=g,
        max_displacement_mm=float(max_displacement_mm),
        smoothness_mm=float(smoothness_mm),
    )
    moving = Image(moving_data, g)
    moving.data.block_until_ready()
    timings["moving"] = time.perf_counter() - t0
    aff = truth.transforms[0]
    comp = np.linalg.svd(np.asarray(aff.matrix), compute_uv=False)
    log(
        f"moving:     template through a known T^-1 (seed {seed}): random SVF (max {max_displacement_mm:g} mm, "
        f"smoothness {smoothness_mm:g} mm), affine with singular values {', '.join(f'{s:.3f}' for s in comp)} "
        f"and shift {', '.join(f'{t:+.1f}' for t in np.asarray(aff.translation))} mm; x bias field, + noise  "
        f"[{timings['moving']:.1f} s]"
    )

    opts = pipeline_options()
    opts["linear_levels"] = cap_levels(opts["linear_levels"], resolution)
    opts["deformable_levels"] = cap_levels(opts["deformable_levels"], resolution)
    t0 = time.perf_counter()
    result = register(template, moving, method=stages_from_options(opts))
    timings["registration"] = time.perf_counter() - t0
    log(
        f"register:   default pipeline (start: {result.stages[0].start})  [{timings['registration']:.1f} s, "
        "including compilation]"
    )

    t0 = time.perf_counter()
    back, err = _evaluate(result.transform, true_disp, moving_masks, grid=g)
    brain = np.asarray(masks["brain"].data) > 0
    err_after = np.asarray(err)[brain]
    err_before = np.sqrt((np.asarray(true_disp) ** 2).sum(-1))[brain]
    dice_rows: dict[str, dict[str, float]] = {}
    for i, name in enumerate(names):
        fixed_mask = np.asarray(masks[name].data)
        before = float(dice(fixed_mask, np.asarray(moving_masks[i]), labels=[1])[0])
        after = float(dice(fixed_mask, np.asarray(back[i]), labels=[1])[0])
        dice_rows[name] = {"before": before, "after": after}
    timings["evaluation"] = time.perf_counter() - t0
    long_names = {"gm": "grey matter", "wm": "white matter", "brain": "brain"}
    log(f"Dice of the template's masks with the moving masks carried back  [{timings['evaluation']:.1f} s]:")
    log(f"  {'mask':<13} {'before':>7}  {'after':>7}")
    for name in names:
        r = dice_rows[name]
        log(f"  {long_names[name]:<13} {r['before']:7.4f}  {r['after']:7.4f}")
    log(
        f"error:      |T_hat(x) - T(x)| in the brain mask: mean {err_after.mean():.2f} mm (median "
        f"{np.median(err_after):.2f}, 95th percentile {np.percentile(err_after, 95):.2f}); before registration "
        f"mean {err_before.mean():.2f} mm"
    )

    inputs = RegistrationInputs(template, moving)
    demo = {
        "seed": int(seed),
        "resolution_mm": int(resolution),
        "max_displacement_mm": float(max_displacement_mm),
        "smoothness_mm": float(smoothness_mm),
        "dice": {k: {kk: round(vv, 6) for kk, vv in v.items()} for k, v in dice_rows.items()},
        "error_mm": {
            "before_mean": round(float(err_before.mean()), 4),
            "after_mean": round(float(err_after.mean()), 4),
            "after_median": round(float(np.median(err_after)), 4),
            "after_p95": round(float(np.percentile(err_after, 95)), 4),
        },
    }
    t0 = time.perf_counter()
    outs = summarize(
        inputs,
        result,
        opts,
        title=f"jaxreg demo: MNI152 registered to a known deformation of itself (seed {seed})",
        extra={"command": "jaxreg demo", "demo": demo},
    )
    timings["report"] = time.perf_counter() - t0
    jac = outs.report["jacobian"]
    log(
        f"folding:    {jac['num_nonpositive']} of {jac['num_voxels']} voxels with det J <= 0 "
        f"({jac['percent_nonpositive']:.4f} %), SDlogJ {jac['sdlogj']:.4f}  [report {timings['report']:.1f} s]"
    )
    t0 = time.perf_counter()
    fixed_path, moving_path = "fixed.nii.gz", "moving.nii.gz"
    timings["total"] = time.perf_counter() - t_all
    outs.report["timings"].update({k: round(v, 3) for k, v in timings.items()})
    written = write_outputs(
        out,
        outs,
        extra_files=[
            (fixed_path, lambda tmp: save_image(template, tmp)),
            (moving_path, lambda tmp: save_image(moving, tmp)),
        ],
    )
    timings["write"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_all
    log(f"wrote:      {', '.join(p.name for p in written)} in {out}  [{timings['write']:.1f} s]")
    log(f"total:      {timings['total']:.1f} s (JAX steps include compilation unless cached)")
    return {
        "shape": tuple(g.shape),
        "spacing": tuple(float(s) for s in g.spacing),
        "dice": dice_rows,
        "error_mm": {"before": float(err_before.mean()), "after": float(err_after.mean())},
        "folding_percent": jac["percent_nonpositive"],
        "sdlogj": jac["sdlogj"],
        "timings": timings,
        "paths": {p.name: str(p) for p in written},
    }
