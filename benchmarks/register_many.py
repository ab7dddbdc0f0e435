"""Benchmark: ``register-many`` on the 30 ordered pairs of the six 2D brain slices, against ANTs pair by pair.

Runs, in one process and one session:

1. :func:`jaxreg.optimize.cohort.register_pairs` (what ``jaxreg register-many --csv pairs.csv`` runs) with the
   default pipeline on all 30 ordered pairs of ``../shared/data/brain2d`` (fixed ``a``, moving ``b != a``): one
   batched (vmapped) registration of the 30 pairs, sharded over the local devices (one CPU device here), then
   each pair's evaluation and its output folder written. Timed end to end (loading, registration, evaluation,
   writing): cold (every JAX cache cleared, compilation included) and warm (again, into a fresh folder).
2. :func:`jaxreg.optimize.register` alone, pair by pair (the same pipeline, not batched): the quality reference.
3. ANTs ``SyN`` (antspyx defaults, ``benchmarks/peers.py``) pair by pair in the peers' venv, on the first
   ``--ants-pairs`` pairs (time extrapolated to 30 when fewer, labelled so).

Quality per pair: global NCC of the fixed slice and the moving slice warped through each method's transform
(jaxreg's warp, linear interpolation): for register-many the transform is read back from the pair's folder
(``warp.nii.gz`` then ``affine.mat``, antsApplyTransforms order), for ANTs from its files. brain2d has no label
maps, so there is no Dice; the bound "no worse than register alone" is checked on NCC, pair by pair.

Usage::

    python benchmarks/register_many.py [--ants-python benchmarks/.venv-ants/bin/python] [--ants-pairs 30]
        [--threads 2] [--pairs 30] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, ".."))

import jax
import numpy as np
from batched_2d import DATA, SLICES, _clear, timed
from peers import DEFAULT_ANTS_PYTHON, run_worker

import jaxreg as jr
from jaxreg.core.grid import Image
from jaxreg.io import compose_files, load_image
from jaxreg.optimize import register
from jaxreg.optimize.cohort import Pair, register_pairs
from jaxreg.parallel import make_mesh
from jaxreg.similarity import ncc


def ncc_of(fixed: Image, moving: Image, transform) -> float:
    return -float(ncc(fixed.data, jr.warp(moving, transform, fixed.grid).data))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ants-python", default=None, help=f"python of the peers' venv (default {DEFAULT_ANTS_PYTHON})")
    ap.add_argument("--ants-pairs", type=int, default=30, help="ANTs on the first N pairs only (time extrapolated)")
    ap.add_argument("--threads", type=int, default=2, help="ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS of ANTs")
    ap.add_argument("--pairs", type=int, default=None, help="the first N ordered pairs only (default all 30)")
    ap.add_argument("--json", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)

    paths = {s: os.path.join(DATA, f"{s}.nii.gz") for s in SLICES}
    ims = {s: load_image(p) for s, p in paths.items()}
    ims = {s: Image(im.data.astype(np.float32), im.grid) for s, im in ims.items()}
    order = [(a, b) for a in SLICES for b in SLICES if a != b]
    if args.pairs is not None:
        order = order[: max(1, min(args.pairs, len(order)))]
    n = len(order)
    pairs = [Pair(f"{b}_to_{a}", paths[a], paths[b]) for a, b in order]
    mesh = make_mesh()
    work = tempfile.mkdtemp(prefix="jaxreg_register_many_")
    rows, per_pair = [], {}
    load_before = os.getloadavg()
    try:
        print(f"register-many: {n} pairs, {mesh.devices.size} device(s) ({jax.default_backend()})", flush=True)
        _clear()
        summary, cold, cpu = timed(lambda: register_pairs(pairs, os.path.join(work, "cold"), mesh=mesh, progress=False))
        _, warm, _ = timed(lambda: register_pairs(pairs, os.path.join(work, "warm"), mesh=mesh, progress=False))
        reg_s = sum(float(r["registration_s"]) for r in summary)
        many = []
        for (a, b), p in zip(order, pairs):
            folder = os.path.join(work, "cold", p.name)
            t = compose_files([os.path.join(folder, "warp.nii.gz"), os.path.join(folder, "affine.mat")])
            many.append(ncc_of(ims[a], ims[b], t))
        per_pair["register_many"] = many
        rows.append({"method": "jaxreg register-many (batched, files written)", "pairs": n, "seconds": cold,
                     "cpu_seconds": cpu, "warm_seconds": warm, "registration_seconds": reg_s, "ncc": many})  # fmt: skip
        print(f"  {cold:.1f} s cold ({cpu:.1f} s CPU; registration {reg_s:.1f} s), {warm:.1f} s warm", flush=True)

        print("jaxreg register alone, pair by pair", flush=True)

        def loop():
            return [register(ims[a], ims[b], method="default") for a, b in order]

        _clear()
        res, cold_l, cpu_l = timed(loop)
        warm_l = timed(loop)[1]
        alone = [ncc_of(ims[a], ims[b], r.transform) for (a, b), r in zip(order, res)]
        per_pair["register_alone"] = alone
        rows.append({"method": "jaxreg register, pair by pair (no files)", "pairs": n, "seconds": cold_l,
                     "cpu_seconds": cpu_l, "warm_seconds": warm_l, "ncc": alone})  # fmt: skip
        print(f"  {cold_l:.1f} s cold, {warm_l:.1f} s warm", flush=True)

        python = args.ants_python or (DEFAULT_ANTS_PYTHON if os.path.exists(DEFAULT_ANTS_PYTHON) else None)
        if python is None:
            print("note: no ANTs python: ANTs skipped")
        else:
            k = max(1, min(args.ants_pairs, n))
            print(f"ANTs SyN, pair by pair ({k} of {n} pairs)", flush=True)
            ants_dir = os.path.join(work, "ants")
            os.makedirs(ants_dir)
            tasks = [
                {"tool": "ants", "type": "SyN", "fixed": paths[a], "moving": paths[b], "labels": None,
                 "multimodal": False, "ndim": 2, "threads": args.threads, "out": os.path.join(ants_dir, f"pair_{i}"),
                 "seed": None}
                for i, (a, b) in enumerate(order[:k])
            ]  # fmt: skip
            for t in tasks:
                os.makedirs(t["out"])
            results = run_worker(python, tasks, ants_dir, args.threads, print)
            errors = [r["error"] for r in results if "error" in r]
            if errors:
                print(f"  ANTs failed: {errors[0]}")
            else:
                scores = [ncc_of(ims[a], ims[b], compose_files(r["transforms"])) for (a, b), r in zip(order, results)]
                per_pair["ants"] = scores
                secs = sum(r["seconds"] for r in results)
                rows.append({"method": "ANTs SyN, pair by pair" + (f" (extrapolated from {k})" if k < n else ""),
                             "pairs": k, "seconds": secs, "cpu_seconds": sum(r["cpu_seconds"] for r in results),
                             "warm_seconds": None, "ncc": scores, "version": results[0].get("version")})  # fmt: skip
                print(f"  {secs:.1f} s for {k} pairs", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()

    ants = next((r for r in rows if r["method"].startswith("ANTs")), None)
    for r in rows:
        r["pairs_per_second"] = r["pairs"] / r["seconds"]
        r["cpu_pairs_per_second"] = r["pairs"] / r["cpu_seconds"]
        r["warm_pairs_per_second"] = None if r["warm_seconds"] is None else r["pairs"] / r["warm_seconds"]
    for r in rows:
        r["cpu_speedup_vs_ants"] = None if ants is None else r["cpu_pairs_per_second"] / ants["cpu_pairs_per_second"]
        base = None if ants is None else ants["pairs_per_second"]
        r["speedup_vs_ants"] = None if base is None else r["pairs_per_second"] / base
        r["warm_speedup_vs_ants"] = None if base is None or r["warm_pairs_per_second"] is None else (
            r["warm_pairs_per_second"] / base
        )
        r["mean_ncc"], r["min_ncc"] = float(np.mean(r["ncc"])), float(np.min(r["ncc"]))
    diff = np.asarray(per_pair["register_many"]) - np.asarray(per_pair["register_alone"])

    def f(v, spec):
        return "-" if v is None else format(v, spec)

    print(f"\njax {jax.__version__} ({jax.default_backend()}, {os.cpu_count()} CPUs, {mesh.devices.size} device(s)); "
          f"ANTs on {args.threads} ITK threads; load average before {load_before[0]:.1f}, after {load_after[0]:.1f}")  # fmt: skip
    print("pairs/s: pairs over wall seconds, jaxreg cold (compilation included, end to end for register-many); "
          "x ANTs: pairs/s over ANTs' pairs/s (ANTs: the sum of its ants.registration calls); CPU x ANTs: the same "
          "with CPU seconds (steadier on a shared machine)\n")  # fmt: skip
    head = ["method", "pairs", "s", "CPU s", "warm s", "pairs/s", "warm pairs/s", "x ANTs", "CPU x ANTs", "warm x ANTs",
            "mean NCC", "min NCC"]  # fmt: skip
    body = [[r["method"], str(r["pairs"]), f(r["seconds"], ".1f"), f(r["cpu_seconds"], ".1f"), f(r["warm_seconds"], ".1f"),
             f(r["pairs_per_second"], ".3f"), f(r["warm_pairs_per_second"], ".3f"), f(r["speedup_vs_ants"], ".2f"),
             f(r["cpu_speedup_vs_ants"], ".2f"), f(r["warm_speedup_vs_ants"], ".2f"), f(r["mean_ncc"], ".4f"), f(r["min_ncc"], ".4f")] for r in rows]  # fmt: skip
    width = [max(len(x[i]) for x in [head] + body) for i in range(len(head))]
    for cells in [head, ["-" * w for w in width]] + body:
        print("| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, width))) + " |")
    print(f"\nper pair, register-many NCC minus register-alone NCC: min {diff.min():+.4f}, mean {diff.mean():+.4f}, "
          f"max {diff.max():+.4f} ({int(np.sum(diff < -1e-3))} pairs lower by more than 0.001)")  # fmt: skip
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"rows": rows, "pairs": [p.name for p in pairs], "ncc_difference": diff.tolist(),
                       "load_before": load_before, "load_after": load_after, "jax": jax.__version__}, fh, indent=1)  # fmt: skip
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
