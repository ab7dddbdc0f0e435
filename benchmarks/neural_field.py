"""Benchmark: per-pair neural fields (``jaxreg.learn.NeuralField``) against the greedy default pipeline.

Issue 12's bound: on brain3d subj2 -> subj1, mean Dice over the 30 labels of the neural field at least the
greedy default's, 0 % det J <= 0, time reported against the greedy method. Both pipelines share the default's
linear stages (the same affine start); the neural-field pipeline replaces the greedy stage by ``NeuralField``
levels. The default pipeline runs first in the same process (the baseline of the time ratio; each pipeline's
time includes its own compilation).

Usage::

    python benchmarks/neural_field.py [--case brain3d|brain2d] [--levels 4:100,2:100,1:30] [--greedy-levels 4:40]
        [--output displacement|velocity] [--hidden 128,128,128] [--similarity SPEC] [--lr 1e-3]
        [--lattice MM] [--stride S] [--exp-steps N] [--diffusion W] [--folding W] [--jacobian W]
        [--points K] [--patch R] [--omega0 W] [--schedule cosine|constant] [--fine-lr LR] [--symmetric all|fine]

Options left out keep the :class:`~jaxreg.learn.NeuralField` defaults. ``--fine-lr`` runs the last level as a
second ``NeuralField`` stage with its own learning rate (it continues the first stage's displacement field:
the same pipeline as one stage, but for that level's step size).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / ".." / "shared" / "data"
DISPLACEMENT_LEVELS = ((4, 300), (2, 300), (1, 200))  # (shrink, iterations)
VELOCITY_LEVELS = ((4, 100), (2, 100), (1, 30))


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
    ap.add_argument("--levels", default=None, help="shrink:iterations of the neural-field levels "
                    "(default 4:100,2:100,1:30 for the velocity output, 4:300,2:300,1:200 for the displacement)")
    ap.add_argument("--greedy-levels", default=None, help="shrink:iterations of the default's greedy levels "
                    "(default: the preset's 4:40,2:20,1:5; e.g. 4:40 for its coarse level alone)")
    # every option left out keeps the NeuralField default (the method's dataclass field)
    opt = lambda flag, **kw: ap.add_argument(flag, default=None, **kw)
    opt("--points", type=int)
    opt("--hidden", help="widths, e.g. 128,128,128")
    opt("--similarity")
    opt("--lr", type=float)
    opt("--jacobian", type=float)
    opt("--patch", type=int, help="patch radius (voxels) of the local similarity (displacement output)")
    opt("--omega0", type=float)
    opt("--schedule", choices=("cosine", "constant"))
    opt("--output", choices=("displacement", "velocity"))
    opt("--lattice", type=float, help="smallest velocity lattice spacing (mm)")
    opt("--stride", type=int, help="smallest velocity lattice step (level voxels)")
    opt("--exp-steps", type=int)
    opt("--diffusion", type=float)
    opt("--folding", type=float)
    opt("--fine-lr", type=float, help="learning rate of the last level (a second NeuralField stage)")
    ap.add_argument("--symmetric", choices=("all", "fine"), default=None,
                    help="mid-space similarity (velocity output) on every level, or on the last level only")
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
    greedy_levels = None
    if args.greedy_levels is not None:
        greedy_levels = [Level(int(a), 0.0, int(b)) for a, b in (x.split(":") for x in args.greedy_levels.split(","))]
    default = preset("default", deformable_levels=greedy_levels)
    linear = preset("affine")  # the default pipeline's affine stage
    names = {"points": "points", "hidden": "hidden", "similarity": "similarity", "lr": "learning_rate",
             "jacobian": "jacobian_weight", "patch": "patch", "omega0": "omega0", "schedule": "schedule",
             "output": "output", "lattice": "lattice", "stride": "stride", "exp_steps": "exp_steps",
             "diffusion": "diffusion_weight", "folding": "folding_weight"}  # fmt: skip
    given = {f: getattr(args, a) for a, f in names.items() if getattr(args, a) is not None}
    if "hidden" in given:
        given["hidden"] = tuple(int(h) for h in given["hidden"].split(","))
    if args.symmetric == "all":
        given["symmetric"] = True
    nf = NeuralField(**given)
    if args.levels is None:
        levels = VELOCITY_LEVELS if nf.output == "velocity" else DISPLACEMENT_LEVELS
        levels = tuple(Level(a, 0.0, b) for a, b in levels)
    else:
        levels = tuple(Level(int(a), 0.0, int(b)) for a, b in (x.split(":") for x in args.levels.split(",")))
    nf_stages: tuple = (Stage(nf, levels=levels),)
    if args.fine_lr is not None or args.symmetric == "fine":
        if len(levels) < 2:
            ap.error("--fine-lr, --symmetric fine: need at least two levels (the last one gets the setting)")
        fine = nf if args.fine_lr is None else dataclasses.replace(nf, learning_rate=args.fine_lr)
        fine = dataclasses.replace(fine, symmetric=True) if args.symmetric == "fine" else fine
        nf_stages = (Stage(nf, levels=levels[:-1]), Stage(fine, levels=levels[-1:]))
    pipelines = {"default (affine + greedy SVF)": default, "affine + NeuralField": (*linear, *nf_stages)}
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
    fine_note = "" if args.fine_lr is None else f", last level learning_rate={args.fine_lr:g}"
    fine_note += "" if args.symmetric != "fine" else ", last level symmetric"
    spec = ", ".join(f"{lv.shrink}:{lv.iterations}" for lv in levels)
    print(f"\n{args.case}: NeuralField levels {spec}{fine_note}, {nf}")
    print("| pipeline | Dice | NCC | det J <= 0 % | SDlogJ | s (incl. compilation) | time ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        d = f"{r['dice']:.4f}" if "dice" in r else "-"
        print(f"| {r['pipeline']} | {d} | {r['ncc']:.4f} | {r['folding_pct']:.3f} | {r['sdlogj']:.3f} | "
              f"{r['seconds']:.1f} | {r['seconds'] / base:.2f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
