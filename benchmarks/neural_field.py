"""Benchmark: per-pair neural fields (``jaxreg.learn.NeuralField``) against the greedy default pipeline.

Issue 12's bound: on brain3d subj2 -> subj1, mean Dice over the 30 labels of the neural field at least the
greedy default's, 0 % det J <= 0, time reported against the greedy method. Both pipelines share the default's
linear stages (the same affine start); the neural-field pipeline replaces the greedy stage by ``NeuralField``
levels. The default pipeline runs first in the same process (the baseline of the time ratio; each pipeline's
time includes its own compilation).

Usage::

    python benchmarks/neural_field.py [--levels 4:300,2:300,1:200] [--points 4096] [--hidden 64,64,64]
        [--similarity ncc] [--lr 3e-4] [--jacobian 0.1] [--patch R] [--omega0 W] [--schedule cosine|constant]
        [--output displacement|velocity] [--lattice MM] [--exp-steps N] [--diffusion W] [--folding W]
        [--case brain3d|brain2d]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / ".." / "shared" / "data"


def _case(name: str):
    from jaxreg.io import load_image, load_labels

    if name == "brain3d":
        d = DATA / "brain3d"
        if not (d / "subj1_t1.nii.gz").is_file():
            return None
        labels = json.loads((d / "labels.json").read_text())["eval_labels"]
        return (load_image(d / "subj1_t1.nii.gz"), load_image(d / "subj2_t1.nii.gz"),
                load_labels(d / "subj1_aseg.nii.gz"), load_labels(d / "subj2_aseg.nii.gz"), labels)  # fmt: skip
    d = DATA / "brain2d"
    if not (d / "r16.nii.gz").is_file():
        return None
    return load_image(d / "r16.nii.gz"), load_image(d / "r64.nii.gz"), None, None, None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", default="brain3d", choices=("brain3d", "brain2d"))
    ap.add_argument("--levels", default="4:300,2:300,1:200", help="shrink:iterations of the neural-field levels")
    ap.add_argument("--points", type=int, default=4096)
    ap.add_argument("--hidden", default="64,64,64")
    ap.add_argument("--similarity", default="ncc")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--jacobian", type=float, default=0.1)
    ap.add_argument("--patch", type=int, default=0, help="patch radius (voxels) of the local similarity")
    ap.add_argument("--omega0", type=float, default=30.0)
    ap.add_argument("--schedule", default="cosine", choices=("cosine", "constant"))
    ap.add_argument("--output", default="displacement", choices=("displacement", "velocity"))
    ap.add_argument("--lattice", type=float, default=0.0, help="velocity lattice spacing (mm), 0: each level grid")
    ap.add_argument("--exp-steps", type=int, default=7)
    ap.add_argument("--diffusion", type=float, default=0.0)
    ap.add_argument("--folding", type=float, default=0.0)
    args = ap.parse_args()

    import jax

    from jaxreg.evaluation import dice, jacobian_statistics
    from jaxreg.learn import NeuralField
    from jaxreg.optimize import Level, Stage, preset, register
    from jaxreg.similarity import ncc
    from jaxreg.warp import warp, warp_labels

    case = _case(args.case)
    if case is None:
        print(f"skipped: {DATA / args.case} not found")
        return 0
    fixed, moving, fl, ml, labels = case
    default = preset("default")
    linear = preset("affine")  # the default pipeline's affine stage
    nf = NeuralField(hidden=tuple(int(h) for h in args.hidden.split(",")), similarity=args.similarity,
                     points=args.points, learning_rate=args.lr, jacobian_weight=args.jacobian, patch=args.patch,
                     omega0=args.omega0, schedule=args.schedule, output=args.output, lattice=args.lattice,
                     exp_steps=args.exp_steps, diffusion_weight=args.diffusion, folding_weight=args.folding)  # fmt: skip
    levels = tuple(Level(int(a), 0.0, int(b)) for a, b in (x.split(":") for x in args.levels.split(",")))
    pipelines = {"default (affine + greedy SVF)": default, "affine + NeuralField": (*linear, Stage(nf, levels=levels))}
    rows = []
    for name, stages in pipelines.items():
        t = time.perf_counter()
        res = register(fixed, moving, method=stages)
        jax.block_until_ready(jax.tree_util.tree_leaves(res.transform))
        sec = time.perf_counter() - t
        st = jacobian_statistics(res.deformable if res.deformable is not None else res.transform, fixed.grid)
        row = {"pipeline": name, "seconds": sec, "folding_pct": 100 * float(st.fraction_nonpositive),
               "sdlogj": float(st.std_log)}  # fmt: skip
        if labels is not None:
            w = warp_labels(ml, res.transform, fl.grid).data
            row["dice"] = float(np.nanmean(np.asarray(dice(fl.data, w, labels=labels))))
        row["ncc"] = float(-ncc(fixed.data, warp(moving, res.transform, fixed.grid).data))
        rows.append(row)
        print(json.dumps(row), flush=True)
    base = rows[0]["seconds"]
    print(f"\n{args.case}: NeuralField levels {args.levels}, points {args.points}, hidden {args.hidden}, "
          f"{args.similarity}, lr {args.lr}, jacobian {args.jacobian}, patch {args.patch}, omega0 {args.omega0}, "
          f"{args.schedule}, output {args.output}, lattice {args.lattice}, exp steps {args.exp_steps}, "
          f"diffusion {args.diffusion}, folding {args.folding}")  # fmt: skip
    print("| pipeline | Dice | NCC | det J <= 0 % | SDlogJ | s (incl. compilation) | time ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        d = f"{r['dice']:.4f}" if "dice" in r else "-"
        print(f"| {r['pipeline']} | {d} | {r['ncc']:.4f} | {r['folding_pct']:.3f} | {r['sdlogj']:.3f} | "
              f"{r['seconds']:.1f} | {r['seconds'] / base:.2f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
