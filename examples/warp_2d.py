"""Warp a 2D brain slice with a random smooth diffeomorphism and draw its deformation grid.

Uses ``../shared/data/brain2d/r16.nii.gz`` (relative to the repository) when it exists, else a synthetic
phantom (:func:`jaxreg.data.phantom`). A random stationary velocity field ``v`` on the image grid
(:func:`jaxreg.data.random_velocity_field`) gives the diffeomorphism ``phi = exp(v)``; the image is warped by
pulling, ``warped(x) = image(phi(x))``, and the figure shows the image, the warped image, their difference and
the Jacobian determinant of ``phi`` with the deformed grid.

Usage::

    python examples/warp_2d.py [-o example_out] [--seed 0] [--image PATH] [--max-displacement 8]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import numpy as np

import jaxreg
from jaxreg.data import phantom, random_velocity_field
from jaxreg.io import load_image, save_image
from jaxreg.plot import plot_grid, save_figure, show_slices

DEFAULT_IMAGE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "brain2d" / "r16.nii.gz"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-o", "--output", default="example_out", help="output folder (default ./example_out)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image", default=None, help="a 2D NIfTI image (default: brain2d/r16 or a phantom)")
    p.add_argument("--max-displacement", type=float, default=8.0, help="largest velocity vector, mm")
    p.add_argument(
        "--smoothness", type=float, default=12.0, help="Gaussian smoothing of the random field, mm"
    )
    args = p.parse_args()

    path = Path(args.image) if args.image else DEFAULT_IMAGE
    if path.exists():
        image = load_image(path, ndim=2, dtype=np.float32)
        name = path.name
    else:
        image = phantom((128, 128), spacing=1.5)
        name = "phantom (shared data not found)"
    g = image.grid
    print(f"image:    {name}, {g.shape[0]}x{g.shape[1]} voxels, spacing {g.spacing.tolist()} mm")

    t0 = time.perf_counter()
    velocity = random_velocity_field(
        jax.random.PRNGKey(args.seed),
        g,
        smoothness_mm=args.smoothness,
        max_displacement_mm=args.max_displacement,
    )
    phi = velocity.exp()  # DisplacementField of exp(v) on the image grid
    warped = jaxreg.warp(image, phi, g, order=3)  # cubic B-spline interpolation
    det = np.asarray(jaxreg.jacobian_determinant(phi, g))
    back = jaxreg.warp(warped, jaxreg.invert(velocity), g, order=3)  # exp(-v) undoes exp(v)
    dt = time.perf_counter() - t0
    disp = np.linalg.norm(np.asarray(phi.displacement), axis=-1)
    inside = np.asarray(image.data) > 0.05 * float(np.max(image.data))
    err = np.abs(np.asarray(back.data) - np.asarray(image.data))[inside].mean() / float(np.max(image.data))
    print(f"field:    max displacement {disp.max():.2f} mm, mean {disp.mean():.2f} mm")
    print(f"jacobian: det J in [{det.min():.3f}, {det.max():.3f}], {100 * np.mean(det <= 0):.2f}% folded")
    print(f"inverse:  warping back with exp(-v): mean |error| {100 * err:.2f}% of the maximum intensity")
    print(f"time:     {dt:.2f} s (including JIT compilation)")

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    diff = jaxreg.Image(warped.data - image.data, g)
    lim = float(np.abs(np.asarray(diff.data)).max()) or 1.0
    lo, hi = float(np.min(image.data)), float(np.max(image.data))
    fig = show_slices(
        [image, warped, diff, jaxreg.Image(det, g)],
        titles=["image", "warped", "warped - image", "det J, grid"],
        cmap=["gray", "gray", "RdBu_r", "PuOr_r"],
        vmin=[lo, lo, -lim, 0.5],
        vmax=[hi, hi, lim, 1.5],
    )
    # four rows of one panel: put them side by side
    for k, ax in enumerate(fig.axes):
        ax.set_position([0.01 + 0.25 * k, 0.05, 0.23, 0.85])
        ax.set_title(ax.get_ylabel(), fontsize=9)
        ax.set_ylabel("")
    fig.set_size_inches(12, 3.4)
    plot_grid(phi, g, ax=fig.axes[3], every=6, color="k", linewidth=0.4)
    fig_path = save_figure(fig, out / "warp_2d.png", dpi=90)
    save_image(warped, out / "warp_2d_warped.nii.gz")
    print(f"figure:   {fig_path}")
    print(f"image:    {out / 'warp_2d_warped.nii.gz'}")


if __name__ == "__main__":
    main()
