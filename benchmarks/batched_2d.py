"""Benchmark: all 30 ordered pairs of the six 2D brain slices registered in one vmapped call, against ANTs.

The six slices of ``../shared/data/brain2d`` share one 256x256 grid, so every ordered pair (fixed ``i``, moving
``j != i``) can be registered at once with a leading batch axis: :func:`jaxreg.optimize.register` with lists
of images and ``method="default"`` runs the default pipeline (the stages and settings of
:data:`jaxreg.optimize.PRESETS` ``["default"]``) as ``jax.vmap`` of the same per-level kernels, one compiled call
per level for the whole batch:

1. the start of each pair's linear stage: the best of the scored candidate starts (grid centres, centres of
   mass, principal axes), scored in one vmapped call;
2. affine with global NCC on the preset's linear levels (per-unit Adam, relative-change stopping rule: each
   pair stops on its own, masked, while the batch runs on);
3. symmetric greedy registration of a stationary velocity field with local NCC on the preset's deformable
   levels, stacked on the affines of step 2.

Baselines measured in the same run: ``register(fixed, moving, method="default")`` called pair by pair (same
stages, not batched), and ANTs ``SyN`` (antspyx defaults; see ``benchmarks/peers.py``) pair by pair in the
peers' venv, on all 30 pairs or, with ``--ants-pairs N``, on the first N with the total time extrapolated
(labelled as such). ``--pairs N`` runs every method on the first N ordered pairs only (a quick check). Times
are wall seconds: "cold" after clearing every JAX cache (compilation included), "warm" a second run; ANTs'
time is the sum of its ``ants.registration`` calls. CPU seconds (all threads of the process, over the same
spans) are reported too: on a machine shared with other work they are a steadier basis for the ratios.
Quality: global NCC between the fixed slice and the warped moving slice (jaxreg's warp for every method,
linear interpolation), mean and minimum over the pairs.

Usage::

    python benchmarks/batched_2d.py [--ants-python benchmarks/.venv-ants/bin/python] [--ants-pairs 30]
        [--threads 2] [--pairs 30] [--no-loop] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, ".."))

import jax
import jax.numpy as jnp
import numpy as np
from peers import DEFAULT_ANTS_PYTHON, run_worker

import jaxreg as jr
from jaxreg.core.grid import Image
from jaxreg.io import compose_files, load_image
from jaxreg.optimize import PRESETS, Greedy, register
from jaxreg.similarity import ncc

DATA = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "data", "brain2d"))
SLICES = ("r16", "r27", "r30", "r62", "r64", "r85")
# the settings of the default pipeline (printed with the table): its linear stage, then its greedy stage
_LINEAR_STAGE, _GREEDY_STAGE = PRESETS["default"]
GREEDY: Greedy = _GREEDY_STAGE.method
LINEAR_LEVELS = tuple(_LINEAR_STAGE.levels)
GREEDY_LEVELS = tuple(_GREEDY_STAGE.levels)


def load_pairs():
    """(names, fixed (30, 256, 256), moving (30, 256, 256), grid, paths) of all ordered pairs."""
    paths = {s: os.path.join(DATA, f"{s}.nii.gz") for s in SLICES}
    ims = {s: load_image(p) for s, p in paths.items()}
    grid = ims[SLICES[0]].grid
    if any(im.grid != grid for im in ims.values()):
        raise SystemExit("brain2d: the slices do not share one grid; the batched benchmark needs one")
    pairs = [(a, b) for a in SLICES for b in SLICES if a != b]
    fixed = jnp.stack([ims[a].data.astype(jnp.float32) for a, _ in pairs])
    moving = jnp.stack([ims[b].data.astype(jnp.float32) for _, b in pairs])
    return pairs, fixed, moving, grid, paths


# -- the batched pipeline ----------------------------------------------------------------------------------
def batched_pipeline(fixed, moving, grid):
    """The default pipeline on a batch of pairs on one grid: one :func:`register` call on lists of images.

    Returns:
      The pull transforms ``compose(affine_b, exp(v_b))`` of the pairs, one transform with a leading batch
      axis ``B`` on every leaf.
    """
    fixed_l = [Image(fixed[i], grid) for i in range(fixed.shape[0])]
    moving_l = [Image(moving[i], grid) for i in range(moving.shape[0])]
    r = register(fixed_l, moving_l, method="default")
    return jax.block_until_ready(r.transform)


def _clear() -> None:
    from jaxreg.optimize import engine

    jax.clear_caches()
    engine._EXECUTABLES.clear()  # the engine's ahead-of-time compiled level kernels


@functools.cache
def _ncc_batch(grid):
    def one(f, m, t):
        return -ncc(f, jr.warp(Image(m, grid), t, grid).data)

    return jax.jit(jax.vmap(one))


def batched_ncc(fixed, moving, grid, transforms) -> np.ndarray:
    """Global NCC of each fixed slice and its warped moving slice, ``(B,)``."""
    return np.asarray(_ncc_batch(grid)(fixed, moving, transforms))


def stack_transforms(ts):
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *ts)


# -- main ----------------------------------------------------------------------------------------------------
def timed(fn):
    """``(fn(), wall seconds, CPU seconds of this process over all its threads)``."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--ants-python", default=None, help=f"python of the peers' venv (default {DEFAULT_ANTS_PYTHON})"
    )
    ap.add_argument(
        "--ants-pairs", type=int, default=30, help="ANTs on the first N pairs only (time extrapolated)"
    )
    ap.add_argument("--threads", type=int, default=2, help="ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS of ANTs")
    ap.add_argument(
        "--pairs", type=int, default=None, help="register the first N ordered pairs only (default all 30)"
    )
    ap.add_argument("--no-loop", action="store_true", help="skip the pair-by-pair register baseline")
    ap.add_argument("--json", default=None, help="write the table as JSON here")
    args = ap.parse_args(argv)

    pairs, fixed, moving, grid, paths = load_pairs()
    if args.pairs is not None:
        k = max(1, min(args.pairs, len(pairs)))
        pairs, fixed, moving = pairs[:k], fixed[:k], moving[:k]
    n = len(pairs)
    rows = []
    load_before = os.getloadavg()

    def add(method, pairs_run, cold, cpu, warm, scores):
        rows.append(
            {
                "method": method,
                "pairs": pairs_run,
                "seconds": cold,
                "cpu_seconds": cpu,
                "warm_seconds": warm,
                "mean_ncc": float(np.mean(scores)),
                "min_ncc": float(np.min(scores)),
            }
        )
        times = "" if cold is None else f": {cold:.1f} s cold ({cpu:.1f} s CPU)"
        times += "" if warm is None else f", {warm:.1f} s warm"
        print(f"  {method}{times}, mean NCC {np.mean(scores):.4f}", flush=True)

    ident = stack_transforms([jr.Translation.identity(2)] * n)
    add("identity (no registration)", n, None, None, None, batched_ncc(fixed, moving, grid, ident))

    print(f"jaxreg batched: {n} pairs in one vmapped pipeline", flush=True)
    _clear()
    batched, cold, cpu = timed(lambda: batched_pipeline(fixed, moving, grid))
    warm = timed(lambda: batched_pipeline(fixed, moving, grid))[1]
    batched_scores = batched_ncc(fixed, moving, grid, batched)
    add("jaxreg batched (register on lists of images)", n, cold, cpu, warm, batched_scores)

    if not args.no_loop:
        print("jaxreg register, pair by pair", flush=True)

        def loop():
            out = []
            for i in range(n):
                r = register(Image(fixed[i], grid), Image(moving[i], grid), method="default")
                out.append(jax.block_until_ready(r.transform))
            return out

        _clear()
        ts, cold_l, cpu_l = timed(loop)
        warm_l = timed(loop)[1]
        loop_scores = batched_ncc(fixed, moving, grid, stack_transforms(ts))
        add("jaxreg register loop", n, cold_l, cpu_l, warm_l, loop_scores)
        diff = np.abs(batched_scores - loop_scores)
        print(f"  batched vs loop NCC: max |difference| {diff.max():.2e} over the pairs", flush=True)

    python = args.ants_python or (DEFAULT_ANTS_PYTHON if os.path.exists(DEFAULT_ANTS_PYTHON) else None)
    ants_row = None
    if python is None:
        print(
            f"note: {DEFAULT_ANTS_PYTHON} not found and no --ants-python given: ANTs skipped (benchmarks/README.md)"
        )
    else:
        k = max(1, min(args.ants_pairs, n))
        print(f"ANTs SyN, pair by pair ({k} of {n} pairs)", flush=True)
        work = tempfile.mkdtemp(prefix="jaxreg_batched_")
        try:
            tasks = [
                {"tool": "ants", "type": "SyN", "fixed": paths[a], "moving": paths[b], "labels": None,
                 "multimodal": False, "ndim": 2, "threads": args.threads, "out": os.path.join(work, f"pair_{i}"),
                 "seed": None}
                for i, (a, b) in enumerate(pairs[:k])
            ]  # fmt: skip
            results = run_worker(python, tasks, work, args.threads, print)
            errors = [r["error"] for r in results if "error" in r]
            if errors:
                print(f"  ANTs failed: {errors[0]}")
            else:
                ts = [compose_files(r["transforms"]) for r in results]
                warped = [jr.warp(Image(moving[i], grid), t, grid).data for i, t in enumerate(ts)]
                scores = np.asarray([-float(ncc(fixed[i], w)) for i, w in enumerate(warped)])
                label = "ANTs SyN, pair by pair"
                if k < n:
                    label += f" (time extrapolated from {k} pairs; NCC over those {k})"
                add(
                    label,
                    k,
                    sum(r["seconds"] for r in results),
                    sum(r["cpu_seconds"] for r in results),
                    None,
                    scores,
                )
                ants_row = rows[-1]
                ants_row["version"] = results[0].get("version")
        finally:
            shutil.rmtree(work, ignore_errors=True)

    for r in rows:  # per-pair figures, scaled to all n pairs, and ratios of per-pair figures to ANTs'
        for key in ("seconds", "cpu_seconds", "warm_seconds"):
            r[f"{key}_for_all"] = None if r[key] is None else r[key] / r["pairs"] * n
        r["pairs_per_second"] = None if r["seconds"] is None else r["pairs"] / r["seconds"]
        r["warm_pairs_per_second"] = None if r["warm_seconds"] is None else r["pairs"] / r["warm_seconds"]
    for r in rows:
        for key, base in (
            ("seconds", "seconds"),
            ("cpu_seconds", "cpu_seconds"),
            ("warm_seconds", "seconds"),
        ):
            mine = r[f"{key}_for_all"]
            ok = ants_row is not None and mine is not None
            r[f"{key}_ratio_to_ants"] = mine / ants_row[f"{base}_for_all"] if ok else None
    load_after = os.getloadavg()
    print_table(rows, n, args, load_before, load_after)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {"rows": rows, "pairs": [f"{b}->{a}" for a, b in pairs], "jax": jax.__version__, "cpus": os.cpu_count(),
                 "threads": args.threads, "load_before": load_before, "load_after": load_after,
                 "greedy_options": _greedy_options(), "linear_levels": LINEAR_LEVELS, "greedy_levels": GREEDY_LEVELS},
                fh, indent=1,
            )  # fmt: skip
        print(f"\nwrote {args.json}")


def _greedy_options() -> dict:
    """The default pipeline's greedy settings as JSON values (the similarity by its registry spec)."""
    return {
        f.name: repr(getattr(GREEDY, f.name)) if f.name == "similarity" else getattr(GREEDY, f.name)
        for f in dataclasses.fields(GREEDY)
    }


def print_table(rows, n, args, load_before, load_after) -> None:
    def fmt(v, spec):
        return "-" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, spec)

    head = ["method", "pairs run", f"s ({n} pairs)", f"CPU s ({n})", f"warm s ({n})", "pairs/s", "warm pairs/s",
            "time/ANTs", "CPU/ANTs", "warm/ANTs", "mean NCC", "min NCC"]  # fmt: skip
    body = [
        [r["method"], str(r["pairs"]), fmt(r["seconds_for_all"], ".1f"), fmt(r["cpu_seconds_for_all"], ".1f"),
         fmt(r["warm_seconds_for_all"], ".1f"), fmt(r["pairs_per_second"], ".2f"), fmt(r["warm_pairs_per_second"], ".2f"),
         fmt(r["seconds_ratio_to_ants"], ".3f"), fmt(r["cpu_seconds_ratio_to_ants"], ".3f"), fmt(r["warm_seconds_ratio_to_ants"], ".3f"),
         fmt(r["mean_ncc"], ".4f"), fmt(r["min_ncc"], ".4f")]
        for r in rows
    ]  # fmt: skip
    width = [max(len(x[i]) for x in [head] + body) for i in range(len(head))]

    def line(cells):
        return (
            "| "
            + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, width)))
            + " |"
        )

    print(
        f"\njax {jax.__version__} ({jax.default_backend()}, {os.cpu_count()} CPUs); ANTs on {args.threads} ITK threads"
    )
    print(f"greedy {GREEDY}; linear levels {LINEAR_LEVELS}; greedy levels {GREEDY_LEVELS}")
    print(
        f"s ({n} pairs): wall seconds, jaxreg cold (compilation included), ANTs the sum of its ants.registration calls "
        f"(scaled to {n} pairs if extrapolated); CPU s: CPU seconds of the process (all threads) over the same span; "
        "warm: jaxreg again, compiled; x/ANTs: per-pair time over ANTs' per-pair time"
    )
    lb, la = load_before, load_after
    print(
        f"load average (1, 5, 15 min) before {lb[0]:.1f} {lb[1]:.1f} {lb[2]:.1f}, after {la[0]:.1f} {la[1]:.1f} "
        f"{la[2]:.1f} on {os.cpu_count()} CPUs (above the CPU count, other processes shared the machine)\n"
    )
    print(
        "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in width) + "|"] + [line(b) for b in body])
    )


if __name__ == "__main__":
    main()
