"""Benchmark: settings of the greedy deformable stage on brain3d subj2 -> subj1 (issue 14 part 1's pair).

Issue 14's bound for the pair: mean Dice over the 30 labels >= 0.80, 0 % det J <= 0, SDlogJ no higher than ANTs
SyN's, wall time <= 0.25x ANTs Affine+SyN (``benchmarks/peers.py --datasets brain3d`` runs ANTs). This script
measures the deformable stage alone: the default pipeline's affine stage runs once, then every variant of the
greedy stage starts from that affine (``register(..., outer=affine)``), so variants differ only in the
deformable settings. The first row is the default stage (``PRESETS["default"][1]``), the baseline of the time
ratio; every row's time includes its own compilation (each variant compiles new level programs).

Usage::

    python benchmarks/greedy_sweep.py [--variant NAME:KEY=VALUE,...;LEVELS] ... [--json out.json]

``--variant`` gives a name, ``Greedy`` keyword arguments and levels ``shrink:iterations`` joined by ``/``, e.g.
``--variant "lattice2 f10:field_spacing=2;4:40/2:20/1:10"``. Without ``--variant`` the script runs the
variants of the session note (field_spacing 2 with 5 and 10 full-resolution iterations, step 1).
"""

from __future__ import annotations

import argparse
import ast
import json
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / ".." / "shared" / "data" / "brain3d"

DEFAULT_VARIANTS = (
    "lattice 2 mm:field_spacing=2;4:40/2:20/1:5",
    "lattice 2 mm, 10 fine:field_spacing=2;4:40/2:20/1:10",
    "10 fine:;4:40/2:20/1:10",
    "step 1:step=1.0;4:40/2:20/1:5",
)


def _parse(spec: str):
    head, levels = spec.rsplit(";", 1)
    name, _, kw = head.partition(":")
    kwargs = {}
    for item in filter(None, kw.split(",")):
        k, _, v = item.partition("=")
        try:
            kwargs[k.strip()] = ast.literal_eval(v.strip())
        except (ValueError, SyntaxError):
            kwargs[k.strip()] = v.strip()
    lv = [tuple(int(x) for x in part.split(":")) for part in levels.split("/")]
    return name.strip(), kwargs, lv


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variant", action="append", default=None, help="NAME:KEY=VALUE,...;SHRINK:ITERS/...")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if not (DATA / "subj1_t1.nii.gz").is_file():
        raise SystemExit(f"brain3d data not found under {DATA}")

    import jax

    import jaxreg as jr
    from jaxreg.evaluation import dice, jacobian_statistics
    from jaxreg.io import load_image, load_labels
    from jaxreg.optimize import PRESETS, Greedy, Level, Stage, register

    labels = json.loads((DATA / "labels.json").read_text())["eval_labels"]
    fixed, moving = load_image(DATA / "subj1_t1.nii.gz"), load_image(DATA / "subj2_t1.nii.gz")
    fl, ml = load_labels(DATA / "subj1_aseg.nii.gz"), load_labels(DATA / "subj2_aseg.nii.gz")
    t = time.perf_counter()
    affine = jax.block_until_ready(register(fixed, moving, method="affine").transform)
    print(f"affine stage: {time.perf_counter() - t:.1f} s", flush=True)

    rows = [("default stage", PRESETS["default"][1])]
    for spec in args.variant or DEFAULT_VARIANTS:
        name, kw, lv = _parse(spec)
        base = PRESETS["default"][1].method
        rows.append((name, Stage(Greedy(**{**_fields(base), **kw}), None,
                                 tuple(Level(s, 0.0, i) for s, i in lv), name="deformable")))  # fmt: skip
    out = []
    for name, stage in rows:
        jax.clear_caches()
        t = time.perf_counter()
        res = register(fixed, moving, method=(stage,), outer=affine)
        jax.block_until_ready(res.transform)
        sec = time.perf_counter() - t
        w = jr.warp_labels(ml, res.transform, fixed.grid).data
        d = float(np.nanmean(np.asarray(dice(fl.data, w, labels=labels))))
        st = jacobian_statistics(res.deformable, fixed.grid)
        lv = [(int(np.asarray(lr.iterations)), round(lr.seconds, 1)) for lr in res.stages[-1].levels]
        out.append({"variant": name, "dice": d, "folding_pct": 100 * float(st.fraction_nonpositive),
                    "sdlogj": float(st.std_log), "seconds": sec, "levels": lv,
                    "greedy": {k: str(v) for k, v in _fields(stage.method).items()}})  # fmt: skip
        print(f"{name:28s} Dice {d:.4f}  folding {out[-1]['folding_pct']:.4f} %  SDlogJ {out[-1]['sdlogj']:.4f}"
              f"  {sec:.1f} s  levels {lv}", flush=True)  # fmt: skip
    base = out[0]["seconds"]
    print("\n| variant | Dice | det J <= 0 % | SDlogJ | s (compile incl.) | time / default |")
    print("|---|---|---|---|---|---|")
    for r in out:
        print(f"| {r['variant']} | {r['dice']:.4f} | {r['folding_pct']:.4f} | {r['sdlogj']:.3f} | "
              f"{r['seconds']:.1f} | {r['seconds'] / base:.2f} |")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


def _fields(method) -> dict:
    import dataclasses

    return {f.name: getattr(method, f.name) for f in dataclasses.fields(method)}


if __name__ == "__main__":
    main()
