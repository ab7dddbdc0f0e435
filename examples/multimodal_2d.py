"""Register a head slice across two MR contrasts with the multi-modal pipeline; Dice of the head masks.

Uses ``../shared/data/head2d_multimodal`` (``fixed``, ``moving`` and their masks; the script skips with a
message when the folder is absent). :func:`jaxreg.optimize.register` with ``method="multimodal"`` runs an affine stage with Mattes mutual information, then the greedy diffeomorphic
stage with normalised mutual information, which does not depend on the contrast. The script prints the
Dice of ``fixed_mask`` with ``moving_mask`` carried onto the fixed grid (nearest neighbour) before
registration, after the affine stage and after the deformable one, with the normalised mutual information of
the images, and writes the report figure.

Usage::

    python examples/multimodal_2d.py [-o example_out] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import jaxreg
from jaxreg.evaluation import dice, jacobian_statistics
from jaxreg.io import load_image, load_labels
from jaxreg.optimize import register
from jaxreg.plot import registration_report, save_figure
from jaxreg.transforms import to_displacement

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def nmi(a: jaxreg.Image, b: jaxreg.Image, bins: int = 32) -> float:
    """Studholme's normalised mutual information (H(A) + H(B)) / H(A, B) of a joint histogram."""
    h, _, _ = np.histogram2d(np.asarray(a.data).ravel(), np.asarray(b.data).ravel(), bins=bins)
    p = h / h.sum()

    def ent(q: np.ndarray) -> float:
        q = q[q > 0]
        return float(-(q * np.log(q)).sum())

    return (ent(p.sum(0)) + ent(p.sum(1))) / ent(p)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-o", "--output", default="example_out", help="output folder (default ./example_out)")
    p.add_argument("--data", default=str(DATA), help="the shared data folder (default ../shared/data)")
    args = p.parse_args()
    src = Path(args.data) / "head2d_multimodal"
    names = ("fixed", "moving", "fixed_mask", "moving_mask")
    if not all((src / f"{n}.nii.gz").is_file() for n in names):
        print(f"skipping: {src} not found (the shared data folder is absent)")
        return 0

    fixed = load_image(src / "fixed.nii.gz", dtype=np.float32)
    moving = load_image(src / "moving.nii.gz", dtype=np.float32)
    fixed_mask = load_labels(src / "fixed_mask.nii.gz")
    moving_mask = load_labels(src / "moving_mask.nii.gz")
    g = fixed.grid
    print(f"fixed:  {g.shape[0]}x{g.shape[1]} voxels of {g.spacing[0]:g} mm; moving: the other contrast")

    t0 = time.perf_counter()
    result = register(fixed, moving, method="multimodal")
    field = to_displacement(result.deformable, g)
    full = jaxreg.compose(result.linear, field)
    identity = jaxreg.Affine.identity(2)
    dt = time.perf_counter() - t0
    for stage in result.stages:
        its = " + ".join(str(lv.iterations) for lv in stage.levels)
        start = f", start {stage.start}" if stage.start else ""
        print(f"{stage.name + ':':<12}{its} iterations, {stage.seconds:.1f} s (including compilation){start}")
    f_mask = np.asarray(fixed_mask.data)
    print(f"{'':<12}{'Dice':>7}  {'NMI':>7}")
    for label, t in (("before", identity), ("affine", result.linear), ("after", full)):
        m = np.asarray(jaxreg.warp_labels(moving_mask, t, g).data)
        d = float(dice(f_mask, m, labels=[1])[0])
        print(f"{label:<12}{d:7.4f}  {nmi(fixed, jaxreg.warp(moving, t, g)):7.4f}")
    st = jacobian_statistics(field, g)
    print(f"det J:      {100 * float(st.fraction_nonpositive):.3f}% <= 0, SDlogJ {float(st.std_log):.4f}")
    print(f"time:       {dt:.1f} s")

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    det = np.asarray(jaxreg.jacobian_determinant(field, g))
    losses = {s.name: [lv.loss for lv in s.levels] for s in result.stages}
    fig = registration_report(
        fixed,
        jaxreg.warp(moving, identity, g),
        jaxreg.warp(moving, full, g),
        deformation=field,
        jacobian=det,
        losses=losses,
        title="register (multimodal): MI affine, NMI deformable",
    )
    print(f"figure:     {save_figure(fig, out / 'multimodal_2d.png', dpi=80)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
