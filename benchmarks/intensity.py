"""Benchmark: intensity preparation (``--winsorize``, ``--histogram-matching``) before the default pipeline.

brain3d subj2 -> subj1 (or brain2d r16/r64 with ``--case brain2d``, NCC only): the default pipeline on the
original images (the baseline, first), on both images winsorised to the 0.005/0.995 quantiles
(:func:`jaxreg.warp.intensity.winsorize`), and winsorised with the moving image histogram-matched to the fixed
one (:func:`jaxreg.warp.intensity.match_histogram`), as ``antsRegistration`` prepares its metric images. Every
row is evaluated on the original images: mean Dice over the 30 labels, % det J <= 0, SDlogJ, NCC, seconds and
the time ratio. One untimed registration compiles the pipeline first, so each row's seconds are the warm
registration plus its own preparation (the preparation's compilation included).

Usage::

    python benchmarks/intensity.py [--case brain3d|brain2d] [--only none,w,w+hm]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent.parent / ".." / "shared" / "data"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", default="brain3d", choices=("brain3d", "brain2d"))
    ap.add_argument("--only", default="none,w,w+hm", help="comma-separated rows: none, w, w+hm")
    args = ap.parse_args()

    import jax

    from jaxreg.evaluation import dice, jacobian_statistics
    from jaxreg.io import load_image, load_labels
    from jaxreg.optimize import preset, register
    from jaxreg.similarity import ncc
    from jaxreg.warp import warp, warp_labels
    from jaxreg.warp.intensity import match_histogram, winsorize

    if args.case == "brain3d":
        d = DATA / "brain3d"
        if not (d / "subj1_t1.nii.gz").is_file():
            print(f"skipped: {d} not found")
            return 0
        f, m = load_image(d / "subj1_t1.nii.gz"), load_image(d / "subj2_t1.nii.gz")
        fl, ml = load_labels(d / "subj1_aseg.nii.gz"), load_labels(d / "subj2_aseg.nii.gz")
        labels = json.loads((d / "labels.json").read_text())["eval_labels"]
    else:
        d = DATA / "brain2d"
        if not (d / "r16.nii.gz").is_file():
            print(f"skipped: {d} not found")
            return 0
        f, m = load_image(d / "r16.nii.gz"), load_image(d / "r64.nii.gz")
        fl = ml = labels = None

    def prepared(kind):
        if kind == "none":
            return f, m
        ff, mm = winsorize(f, 0.005, 0.995), winsorize(m, 0.005, 0.995)
        return (ff, match_histogram(mm, ff)) if kind == "w+hm" else (ff, mm)

    names = {"none": "original images (baseline)", "w": "--winsorize 0.005 0.995",
             "w+hm": "--winsorize 0.005 0.995 --histogram-matching"}  # fmt: skip
    rows = []
    jax.block_until_ready(jax.tree_util.tree_leaves(register(f, m, method=preset("default")).transform))  # compile
    for kind in args.only.split(","):
        t = time.perf_counter()
        ff, mm = prepared(kind)
        res = register(ff, mm, method=preset("default"))
        jax.block_until_ready(jax.tree_util.tree_leaves(res.transform))
        sec = time.perf_counter() - t
        st = jacobian_statistics(res.deformable, f.grid)
        row = {"row": names[kind], "seconds": sec, "folding_pct": 100 * float(st.fraction_nonpositive),
               "sdlogj": float(st.std_log), "ncc": float(-ncc(f.data, warp(m, res.transform, f.grid).data))}  # fmt: skip
        if labels is not None:
            w = warp_labels(ml, res.transform, fl.grid).data
            row["dice"] = float(np.nanmean(np.asarray(dice(fl.data, w, labels=labels))))
        rows.append(row)
        print(json.dumps(row), flush=True)
    base = rows[0]["seconds"]
    print(f"\n{args.case}: default pipeline, metrics on the original images")
    print("| images registered | Dice | NCC | det J <= 0 % | SDlogJ | s | time ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        dc = f"{r['dice']:.4f}" if "dice" in r else "-"
        print(f"| {r['row']} | {dc} | {r['ncc']:.4f} | {r['folding_pct']:.3f} | {r['sdlogj']:.3f} | "
              f"{r['seconds']:.1f} | {r['seconds'] / base:.2f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
