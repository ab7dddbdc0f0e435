"""Register two 2D brain slices of different people with the default pipeline and show the result.

Fixed ``brain2d/r16``, moving ``brain2d/r64`` from ``../shared/data`` (relative to the repository; the script
skips with a message when the folder is absent). :func:`jaxreg.optimize.register` runs the default
pipeline (``method="default"``): affine (NCC, from the best of the scored candidate starts) -> symmetric
diffeomorphic greedy registration (SVF, local NCC). The script prints the NCC of the pair before registration (moving resampled on the fixed grid
through world coordinates), after the affine stage and after the deformable one, the iterations and times of
the stages and the Jacobian statistics of the deformation, and writes the report figure
(:func:`jaxreg.plot.registration_report`).

Usage::

    python examples/register_2d.py [-o example_out] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import jaxreg
from jaxreg.evaluation import jacobian_statistics
from jaxreg.io import load_image
from jaxreg.optimize import register
from jaxreg.plot import registration_report, save_figure
from jaxreg.transforms import to_displacement

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def ncc(a: jaxreg.Image, b: jaxreg.Image) -> float:
    """Pearson correlation of two images on one grid."""
    x, y = np.asarray(a.data, np.float64).ravel(), np.asarray(b.data, np.float64).ravel()
    return float(np.corrcoef(x, y)[0, 1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-o", "--output", default="example_out", help="output folder (default ./example_out)")
    p.add_argument("--data", default=str(DATA), help="the shared data folder (default ../shared/data)")
    args = p.parse_args()
    src = Path(args.data) / "brain2d"
    if not (src / "r16.nii.gz").is_file() or not (src / "r64.nii.gz").is_file():
        print(f"skipping: {src}/r16.nii.gz and r64.nii.gz not found (the shared data folder is absent)")
        return 0

    fixed = load_image(src / "r16.nii.gz", dtype=np.float32)
    moving = load_image(src / "r64.nii.gz", dtype=np.float32)
    g = fixed.grid
    print(f"fixed:  r16, {g.shape[0]}x{g.shape[1]} voxels of {g.spacing[0]:g} mm; moving: r64")

    t0 = time.perf_counter()
    result = register(fixed, moving, method="default")
    field = to_displacement(result.deformable, g)
    warped = jaxreg.warp(moving, jaxreg.compose(result.linear, field), g)
    affine_only = jaxreg.warp(moving, result.linear, g)
    before = jaxreg.warp(moving, jaxreg.Affine.identity(2), g)
    dt = time.perf_counter() - t0
    for stage in result.stages:
        its = " + ".join(str(lv.iterations) for lv in stage.levels)
        start = f", start {stage.start}" if stage.start else ""
        print(f"{stage.name + ':':<12}{its} iterations, {stage.seconds:.1f} s (including compilation){start}")
    print(
        f"NCC:        before {ncc(fixed, before):.4f}, affine {ncc(fixed, affine_only):.4f}, "
        f"after {ncc(fixed, warped):.4f}"
    )
    st = jacobian_statistics(field, g)
    det = np.asarray(jaxreg.jacobian_determinant(field, g))
    print(
        f"det J:      {100 * float(st.fraction_nonpositive):.3f}% <= 0, SDlogJ {float(st.std_log):.4f}, "
        f"range [{float(st.min):.3f}, {float(st.max):.3f}]"
    )
    print(f"time:       {dt:.1f} s")

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    losses = {s.name: [lv.loss for lv in s.levels] for s in result.stages}
    fig = registration_report(
        fixed,
        before,
        warped,
        deformation=field,
        jacobian=det,
        losses=losses,
        title="register (default): r64 -> r16",
    )
    print(f"figure:     {save_figure(fig, out / 'register_2d.png', dpi=80)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
