"""One synthetic adaptive-radiotherapy day: a daily MR of the planning CT's patient and the exact mapping.

:func:`jaxreg.radiotherapy.synthesis.synthesize_daily_case` draws a rigid pelvis motion, an extra rotation of each
femur in its hip joint, a rigid motion of the prostate, a bladder volume change and smooth bowel and tissue
motion, integrates them as a poly-affine stationary velocity field, and renders an MR-linac-like T2 image on
its own grid; :func:`~jaxreg.radiotherapy.synthesis.save_case` writes the CT, the MR, both label maps, the body
mask, the truth (an ITK/ANTs displacement field on the MR grid, MR -> CT points) and ``motion.json``.

The script prints the sampled motion and checks the truth with independent code: the largest displacement, the
smallest Jacobian determinant, per rigid label the largest ``|truth(x) - M x|`` and the Kabsch residual of a
rigid fit (:func:`jaxreg.points.fit_rigid`) over its MR voxels, and the bladder's volume change (MR voxel count
and mean Jacobian determinant against the sampled factor).

Usage::

    python examples/radiotherapy_case.py [--ct CT] [--labels LABELS] [--groups labels.json] [--seed 0] [-o OUTDIR]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import numpy as np

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "pelvis_ct"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ct", default=str(DATA / "ct.nii.gz"), help="planning CT (HU), default the shared pelvis CT")
    p.add_argument("--labels", default=str(DATA / "labels.nii.gz"), help="its TotalSegmentator label map")
    p.add_argument("--groups", default=str(DATA / "labels.json"), help="organ groups (labels.json or TOML)")
    p.add_argument("--seed", type=int, default=0, help="seed of the day (same seed, same case)")
    p.add_argument("-o", "--output", default="radiotherapy_case_out", help="output folder")
    args = p.parse_args()
    for f in (args.ct, args.labels, args.groups):
        if not Path(f).is_file():
            print(f"skipping: {f} not found (pass --ct, --labels and --groups)")
            return 0

    from jaxreg.evaluation import jacobian_statistics
    from jaxreg.io import load_image, load_labels
    from jaxreg.points import fit_rigid
    from jaxreg.radiotherapy.groups import load_groups
    from jaxreg.radiotherapy.synthesis import save_case, synthesize_daily_case

    ct, labels, groups = load_image(args.ct), load_labels(args.labels), load_groups(args.groups)
    print(f"CT:      {'x'.join(map(str, ct.grid.shape))} voxels of {ct.grid.spacing.round(2).tolist()} mm; {groups}")
    t0 = time.perf_counter()
    case = synthesize_daily_case(jax.random.key(args.seed), ct, labels, groups)
    t_case = time.perf_counter() - t0
    t0 = time.perf_counter()
    paths = save_case(case, args.output, inputs=[args.ct, args.labels, args.groups])
    t_save = time.perf_counter() - t0
    m = case.motion
    g = case.mr.grid
    print(f"MR:      {'x'.join(map(str, g.shape))} voxels of {g.spacing.round(2).tolist()} mm")
    print(f"time:    {t_case:.1f} s to synthesize (compilation included), {t_save:.1f} s to write")

    def fmt(v):
        return "(" + ", ".join(f"{x:+.2f}" for x in v) + ")"

    pel = m["pelvis"]
    print(f"pelvis:  rotation {fmt(pel['rotation_deg'])} deg (x, y, z), translation {fmt(pel['translation_mm'])} mm")
    for f, fm in m["femurs"].items():
        r = fm["head_radius_mm"]
        print(f"femur {f}: extra rotation {fm['rotation_deg']:.2f} deg about its head at "
              f"{fmt(fm['head_center_mm'])} mm" + (f" (sphere fit, radius {r:.1f} mm)" if r else ""))  # fmt: skip
    for i, om in m["incompressible"].items():
        print(f"organ {i}: rotation {fmt(om['rotation_deg'])} deg, translation {fmt(om['translation_mm'])} mm "
              "on top of the pelvis")  # fmt: skip
    b = m["bladder"]
    print(f"bladder: volume factor {b['volume_factor']:.3f} (dV {b['dV']:+.3f}), rate {b['rate']:+.4f} "
          f"(nominal -ln(1 + dV)/3 = {b['rate_nominal']:+.4f})")  # fmt: skip

    # -- the truth, checked with independent code -----------------------------------------------------------
    x = np.asarray(g.world_coords(), np.float64)
    u = np.asarray(case.truth.displacement, np.float64)
    y = x + u
    stats = jacobian_statistics(case.truth, g)
    print(f"truth:   max displacement {np.linalg.norm(u, axis=-1).max():.2f} mm, det J in "
          f"[{float(stats.min):.3f}, {float(stats.max):.3f}], {int(stats.num_nonpositive)} folded voxels")  # fmt: skip
    lab = np.asarray(case.mr_labels.data)
    print(f"{'label':>7} {'voxels':>8} {'max |truth - M x| mm':>21} {'<0.05 mm':>9} {'Kabsch RMS mm':>14}")
    for v in list(groups.rigid) + list(groups.incompressible):
        sel = lab == v
        mat = np.asarray(m["matrices"][str(v)])
        err = np.linalg.norm(x[sel] @ mat[:3, :3].T + mat[:3, 3] - y[sel], axis=1)
        rigid = fit_rigid(x[sel], y[sel])
        rms = np.sqrt(np.mean(np.sum((np.asarray(rigid(x[sel])) - y[sel]) ** 2, axis=1)))
        print(f"{v:>7} {sel.sum():>8} {err.max():>21.3f} {np.mean(err < 0.05):>9.1%} {rms:>14.3f}")
    vol_ct = np.sum(np.asarray(case.ct_labels.data) == b["label"]) * np.prod(ct.grid.spacing) / 1000
    vol_mr = np.sum(lab == b["label"]) * np.prod(g.spacing) / 1000
    mean_j = float(jacobian_statistics(case.truth, g, mask=lab == b["label"]).mean)
    print(f"bladder: {vol_ct:.1f} ml -> {vol_mr:.1f} ml (x{vol_mr / vol_ct:.3f} by voxel count, "
          f"x{1 / mean_j:.3f} by mean det J; sampled x{b['volume_factor']:.3f})")  # fmt: skip
    print(f"wrote:   {', '.join(p.name for p in paths.values())} in {Path(args.output).resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
