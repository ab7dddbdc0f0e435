"""``jaxreg demo``: warp the MNI152 template with a random smooth diffeomorphism and show the result.

Steps (each timed; JAX times include compilation, since every step runs once):

1. load the MNI152 T1 template shipped with nilearn (:func:`jaxreg.data.load_mni152`, no download);
2. draw a seeded random stationary velocity field on the template grid
   (:func:`jaxreg.data.random_velocity_field`) and integrate it, ``phi = exp(v)`` (scaling and squaring);
3. warp the template, ``warped(x) = template(phi(x))`` (:func:`jaxreg.warp`, pull), and measure ``phi``: largest
   displacement (mm) and the Jacobian determinant (:func:`jaxreg.jacobian_determinant`; ``<= 0`` is folding);
4. write ``template.nii.gz``, ``warped.nii.gz``, ``field.nii.gz`` (the displacement of ``phi``) and
   ``demo.png`` (orthogonal slices of template / warped / difference, and ``det J`` with the deformation grid).

In registration terms the warped image is the *fixed* image and the template the *moving* one: ``phi`` maps
warped-image points to template points, and ``jaxreg apply --fixed warped.nii.gz --moving template.nii.gz
-t field.nii.gz -o check.nii.gz`` recomputes ``warped.nii.gz`` (the field is an ITK displacement field, which
``antsApplyTransforms`` reads too).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = ["run_demo"]


def _figure(template: Any, warped: Any, field: Any, jac: np.ndarray, path: Path) -> None:
    from jaxreg.core.grid import Image
    from jaxreg.plot import plot_grid, save_figure, show_slices, slice_planes

    diff = Image(warped.data - template.data, template.grid)
    lim = float(np.abs(np.asarray(diff.data)).max()) or 1.0
    jdev = max(float(np.abs(jac - 1.0).max()), 1e-3)
    fig = show_slices(
        [template, warped, diff, Image(jac, template.grid)],
        titles=["template (moving)", "warped (fixed)", "warped - template", "det J and grid"],
        cmap=["gray", "gray", "RdBu_r", "PuOr_r"],
        vmin=[0.0, 0.0, -lim, 1.0 - jdev],
        vmax=[1.0, 1.0, lim, 1.0 + jdev],
        colorbar=True,
    )
    grid_row = fig.axes[9:12]  # the panels come first in row order (colorbars are added after them)
    for ax, (axis, index) in zip(grid_row, slice_planes(template.grid)):
        plot_grid(field, template.grid, ax=ax, axis=axis, index=index, every=4, color="k", linewidth=0.4)
    fig.suptitle("jaxreg demo: MNI152 warped by a random diffeomorphism exp(v)", fontsize=10)
    save_figure(fig, path, dpi=90)


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
      seed: PRNG seed of the random velocity field (``jax.random.PRNGKey(seed)``).
      resolution: template voxel size in mm (integer; 2 by default, larger is faster).
      max_displacement_mm: length of the largest velocity vector (mm).
      smoothness_mm: standard deviation of the Gaussian smoothing the random field (mm).
      log: where progress lines go (default :func:`print`).

    Returns:
      dict of statistics (``shape``, ``spacing``, ``max_displacement_mm``, ``jac_min``, ``jac_max``,
      ``folding_percent``), ``timings`` (s) and ``paths``.
    """
    import jax

    from jaxreg.data import load_mni152, random_velocity_field
    from jaxreg.io import save_image, write_transform
    from jaxreg.transforms import jacobian_determinant
    from jaxreg.warp import warp

    out = Path(output)
    if out.exists() and not out.is_dir():
        raise ValueError(f"-o {output}: exists and is not a folder")
    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    def tick(name: str, t0: float) -> None:
        timings[name] = time.perf_counter() - t0

    t0 = time.perf_counter()
    template = load_mni152(resolution)
    tick("load", t0)
    g = template.grid
    log(
        f"template: MNI152 T1 (nilearn), {'x'.join(map(str, g.shape))} voxels, "
        f"{'x'.join(f'{s:g}' for s in g.spacing)} mm, {''.join(g.axcodes)}  [{timings['load']:.1f} s]"
    )

    t0 = time.perf_counter()
    velocity = random_velocity_field(
        jax.random.PRNGKey(seed), g, smoothness_mm=smoothness_mm, max_displacement_mm=max_displacement_mm
    )
    field = velocity.exp()
    disp = np.asarray(field.displacement)
    tick("field", t0)
    max_disp = float(np.sqrt((disp**2).sum(-1)).max())
    log(
        f"field:    seed {seed}, smoothness {smoothness_mm:g} mm, exp(v) by {velocity.steps} squarings; "
        f"max displacement {max_disp:.2f} mm  [{timings['field']:.1f} s]"
    )

    t0 = time.perf_counter()
    warped = warp(template, field, g, order=1)
    warped.data.block_until_ready()
    tick("warp", t0)
    t0 = time.perf_counter()
    jac = np.asarray(jacobian_determinant(field, g))
    tick("jacobian", t0)
    folding = 100.0 * float(np.mean(jac <= 0))
    log(f"warp:     template(phi(x)) on the template grid, linear interpolation  [{timings['warp']:.1f} s]")
    log(
        f"jacobian: det J min {jac.min():.3f}, max {jac.max():.3f}, {folding:.2f}% non-positive (folding)  "
        f"[{timings['jacobian']:.1f} s]"
    )

    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "template": out / "template.nii.gz",
        "warped": out / "warped.nii.gz",
        "field": out / "field.nii.gz",
        "figure": out / "demo.png",
    }
    save_image(template, paths["template"])
    save_image(warped, paths["warped"])
    write_transform(field, paths["field"])  # ITK displacement field: LPS vectors, 5-D (X, Y, Z, 1, 3)
    tick("write", t0)
    t0 = time.perf_counter()
    _figure(template, warped, field, jac, paths["figure"])
    tick("figure", t0)
    timings["total"] = time.perf_counter() - t_all
    log(f"wrote:    {paths['template']}  (the template: moving image)")
    log(f"          {paths['warped']}  (warped template: fixed image)")
    log(f"          {paths['field']}  (displacement of phi, ITK/ANTs displacement-field NIfTI)")
    log(f"          {paths['figure']}  [{timings['write'] + timings['figure']:.1f} s]")
    log(f"total:    {timings['total']:.1f} s (JAX steps include compilation)")
    return {
        "shape": tuple(g.shape),
        "spacing": tuple(float(s) for s in g.spacing),
        "max_displacement_mm": max_disp,
        "jac_min": float(jac.min()),
        "jac_max": float(jac.max()),
        "folding_percent": folding,
        "timings": timings,
        "paths": {k: str(v) for k, v in paths.items()},
    }
