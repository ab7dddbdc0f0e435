"""Benchmark: accelerator readiness of pairwise and batched registration (one 3D pair; a batch of 3D pairs).

Each pair is the 3D phantom (:func:`jaxreg.data.phantom`, ``--size`` voxels per side, ``--mm`` mm voxels) against
itself deformed by a seeded random diffeomorphism (:func:`jaxreg.data.random_velocity_field`, up to ``--disp`` mm,
default two voxels)
and moved by a small translation, so every pair is different and the truth is known. For each device (the default
backend, e.g. a GPU, and a CPU row for reference) it times:

* **one pair**: ``register(fixed, moving, method="default")``, cold (JAX caches cleared: compilation included)
  and warm (compiled);
* **a batch**: ``register([fixed] * B, movings, method="default")``, one vmapped call (sharded over the backend's
  devices with ``mesh=`` when it has several), cold and warm; pairs/s from the warm time.

Quality: mean Dice of the phantom's six labels warped through the result (before -> after), and the mean error of
the recovered mapping against the known one over the phantom's head (mm). Without an accelerator it runs on CPU
at a small size (defaults ``--size 32``, ``--batch 4``), so a machine without a GPU can try it; on a GPU the
defaults are ``--size 128`` and ``--batch 8``. ``--cpu-size`` sets the CPU reference row's size (default: the same
as the accelerator's when that is small, else 48: the CPU would take minutes at 128^3).

Usage::

    python benchmarks/gpu_register.py [--size N] [--batch B] [--cpu-size N] [--no-cpu] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

import jax
import jax.numpy as jnp
import numpy as np

import jaxreg as jr
from jaxreg.data import phantom, random_velocity_field
from jaxreg.evaluation import mean_dice
from jaxreg.optimize import register
from jaxreg.parallel import make_mesh


def make_pairs(size: int, mm: float, batch: int, disp: float):
    """``(fixed, fixed_labels, movings, moving_labels, truths)``: truths are the pull maps fixed -> moving."""
    fixed = phantom((size,) * 3, spacing=mm)
    labels = phantom((size,) * 3, spacing=mm, labels=True)
    grid = fixed.grid
    movings, mlabels, truths = [], [], []
    for i in range(batch):
        v = random_velocity_field(jax.random.key(i), grid, smoothness_mm=4 * mm * size / 32, max_displacement_mm=disp)
        shift = jr.Translation(jnp.asarray([1.5 * mm, -1.0 * mm, 0.5 * mm]) * ((i % 3) - 1))
        inv = jr.compose(v.inverse(), jr.invert(shift))  # moving = fixed o inv: then truth(x) = shift(exp(v)(x))
        movings.append(jr.warp(fixed, inv, grid))
        mlabels.append(jr.warp_labels(labels, inv, grid))
        truths.append(jr.compose(shift, v))
    return fixed, labels, movings, mlabels, truths


def quality(fixed, labels, movings, mlabels, truths, transforms) -> tuple[float, float, float]:
    """Mean Dice before, after, and mean |T(x) - truth(x)| over the head (mm), over the pairs."""
    g = fixed.grid
    head = np.asarray(labels.data) > 0
    before, after, err = [], [], []
    for i, t in enumerate(transforms):
        warped = jr.warp_labels(mlabels[i], t, g)
        before.append(float(mean_dice(labels.data, mlabels[i].data, labels=list(range(1, 7)))))
        after.append(float(mean_dice(labels.data, warped.data, labels=list(range(1, 7)))))
        d = np.linalg.norm(np.asarray(t.sample_displacement(g)) - np.asarray(truths[i].sample_displacement(g)), axis=-1)
        err.append(float(d[head].mean()))
    return float(np.mean(before)), float(np.mean(after)), float(np.mean(err))


def _clear() -> None:
    from jaxreg.optimize import engine

    jax.clear_caches()
    engine._EXECUTABLES.clear()


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    jax.block_until_ready(jax.tree_util.tree_leaves(out.transform))
    return out, time.perf_counter() - t0


def run_device(device, size: int, mm: float, batch: int, disp: float) -> list[dict]:
    devices = [d for d in jax.devices(device.platform)]
    mesh = make_mesh(devices=devices) if len(devices) > 1 else None
    with jax.default_device(device):
        fixed, labels, movings, mlabels, truths = make_pairs(size, mm, batch, disp)
        rows = []
        _clear()
        r1, cold1 = timed(lambda: register(fixed, movings[0], method="default"))
        _, warm1 = timed(lambda: register(fixed, movings[0], method="default"))
        q = quality(fixed, labels, movings[:1], mlabels[:1], truths[:1], [r1.transform])
        rows.append({"device": str(device.device_kind), "platform": device.platform, "case": "one pair",
                     "size": size, "pairs": 1, "cold_s": cold1, "warm_s": warm1, "pairs_per_s": 1 / warm1,
                     "dice_before": q[0], "dice_after": q[1], "error_mm": q[2]})  # fmt: skip
        print(f"  {device.platform} one pair {size}^3: {cold1:.1f} s cold, {warm1:.2f} s warm, Dice {q[0]:.3f} -> "
              f"{q[1]:.3f}, error {q[2]:.2f} mm", flush=True)  # fmt: skip
        rb, coldb = timed(lambda: register([fixed] * batch, movings, method="default", mesh=mesh))
        _, warmb = timed(lambda: register([fixed] * batch, movings, method="default", mesh=mesh))
        q = quality(fixed, labels, movings, mlabels, truths, [rb.pair(i).transform for i in range(batch)])
        rows.append({"device": str(device.device_kind), "platform": device.platform, "case": f"batch of {batch}",
                     "size": size, "pairs": batch, "cold_s": coldb, "warm_s": warmb, "pairs_per_s": batch / warmb,
                     "dice_before": q[0], "dice_after": q[1], "error_mm": q[2]})  # fmt: skip
        print(f"  {device.platform} batch of {batch}: {coldb:.1f} s cold, {warmb:.2f} s warm "
              f"({batch / warmb:.2f} pairs/s), Dice {q[0]:.3f} -> {q[1]:.3f}", flush=True)  # fmt: skip
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    accel = jax.default_backend() != "cpu"
    ap.add_argument("--size", type=int, default=128 if accel else 32, help="voxels per side of the phantom")
    ap.add_argument("--mm", type=float, default=None, help="voxel size, mm (default 192 mm field of view / size)")
    ap.add_argument("--batch", type=int, default=8 if accel else 4, help="pairs in the batch")
    ap.add_argument("--disp", type=float, default=None, help="largest velocity of the random deformation, mm")
    ap.add_argument("--cpu-size", type=int, default=None, help="size of the CPU reference rows")
    ap.add_argument("--no-cpu", action="store_true", help="no CPU reference rows")
    ap.add_argument("--json", default=None, help="write the rows as JSON here")
    args = ap.parse_args(argv)

    def setting(size):
        mm = args.mm or 192.0 / size
        return size, mm, args.disp or 2 * mm

    rows = []
    dev = jax.devices()[0]
    print(f"jax {jax.__version__}: default backend {jax.default_backend()} ({len(jax.devices())} x {dev.device_kind})")
    rows += run_device(dev, *setting(args.size)[:2], args.batch, setting(args.size)[2])
    if accel and not args.no_cpu:
        size = args.cpu_size or (args.size if args.size <= 48 else 48)
        cpu = jax.devices("cpu")[0]
        s, mm, disp = setting(size)
        rows += run_device(cpu, s, mm, min(args.batch, 4), disp)

    head = ["device", "case", "size", "cold s", "warm s", "pairs/s", "Dice before", "Dice after", "error mm"]
    body = [[f"{r['platform']} ({r['device']})", r["case"], f"{r['size']}^3", f"{r['cold_s']:.1f}", f"{r['warm_s']:.2f}",
             f"{r['pairs_per_s']:.2f}", f"{r['dice_before']:.3f}", f"{r['dice_after']:.3f}", f"{r['error_mm']:.2f}"]
            for r in rows]  # fmt: skip
    width = [max(len(x[i]) for x in [head] + body) for i in range(len(head))]
    print()
    for cells in [head, ["-" * w for w in width]] + body:
        print("| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, width))) + " |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"rows": rows, "jax": jax.__version__}, fh, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
