"""Accelerator check of learned registration: train a fixed number of steps, then time inference.

Builds the VoxelMorph-width :class:`~jaxreg.learn.RegistrationNet` (velocity field, ``--field-factor``), trains it
for ``--steps`` steps of the SynthMorph synthesis mode on random blocky label maps made on the device (no data
files needed, so it runs on a bare accelerator machine), and times: the first step (compilation), the warm
training steps (pairs/s), and warm inference of one pair (network + scaling and squaring). The baseline row is
the same measurement on the CPU device of the same process at the same size (``--cpu-baseline``, on by
default when an accelerator is present). Prints one table.

Usage::

    python benchmarks/gpu_learned.py --size small      # 2D 128x128 and 3D 32x48x32: runs anywhere, ~1 min on CPU
    python benchmarks/gpu_learned.py --size full       # 3D 160x192x224 (the brain3d grid) at batch 1
"""

from __future__ import annotations

import argparse
import sys
import time

SIZES = {"small": [(128, 128), (32, 48, 32)], "full": [(160, 192, 224)]}


def _labels(key, shape, batch, n):
    import jax
    import jax.numpy as jnp

    coarse = jax.random.randint(key, (batch, *[max(1, s // 8) for s in shape]), 0, n)
    for ax in range(1, len(shape) + 1):
        coarse = jnp.repeat(coarse, 8, axis=ax)
    return coarse[(slice(None), *[slice(0, s) for s in shape])]


def run(device, shape, steps: int, batch: int, field_factor: int) -> dict:
    import jax
    from flax import nnx

    from jaxreg import Grid
    from jaxreg.learn import RegistrationNet, make_optimizer, make_train_step, modes, split_model

    with jax.default_device(device):
        grid = Grid.from_spacing(shape, 1.0)
        values = tuple(range(1, 8))
        mode = modes.synthesis(grid, label_values=values, regularizer_weight=1.0)
        net = RegistrationNet(len(shape), transform="velocity", field_factor=field_factor, rngs=nnx.Rngs(0))
        gd, params = split_model(net)
        opt = make_optimizer(1e-4)
        state = opt.init(params)
        step = make_train_step(gd, mode.loss, opt, augment=mode.augment)
        k1 = jax.random.key(0)
        lab = _labels(k1, shape, batch, len(values) + 1)
        batch_d = {"fixed_labels": lab, "moving_labels": jax.numpy.roll(lab, 2, axis=1)}
        t = time.perf_counter()
        params, state, m = step(params, state, batch_d, jax.random.key(1))
        jax.block_until_ready(m)
        first = time.perf_counter() - t
        t = time.perf_counter()
        for s in range(steps):
            params, state, m = step(params, state, batch_d, jax.random.key(2 + s))
        jax.block_until_ready(m)
        per_step = (time.perf_counter() - t) / max(steps, 1)
        model = nnx.merge(gd, params)
        g2, st2 = nnx.split(model)

        @jax.jit
        def infer(st, f, mv):
            n = nnx.merge(g2, st)
            p = n(f, mv)
            return n.to_transform(jax.tree_util.tree_map(lambda a: a[0], p), grid).exp().displacement

        x = jax.numpy.zeros((1, *shape, 1), jax.numpy.float32)
        jax.block_until_ready(infer(st2, x, x))
        t = time.perf_counter()
        for _ in range(3):
            out = infer(st2, x, x)
        jax.block_until_ready(out)
        inf = (time.perf_counter() - t) / 3
    return {"first_step_s": first, "step_s": per_step, "pairs_per_s": batch / per_step, "inference_s": inf, "loss": float(m["loss"])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="small")
    ap.add_argument("--steps", type=int, default=10, help="timed training steps per case")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--field-factor", type=int, default=2)
    ap.add_argument("--no-cpu-baseline", action="store_true", help="skip the CPU rows")
    args = ap.parse_args()
    import jax

    acc = [d for d in jax.devices() if d.platform != "cpu"]
    cpu = jax.devices("cpu")[0]
    targets = ([("accelerator", acc[0])] if acc else []) + ([] if (acc and args.no_cpu_baseline) else [("cpu", cpu)])
    print(f"jax {jax.__version__}; devices: {', '.join(str(d) for d in jax.devices())}", flush=True)
    rows = []
    for shape in SIZES[args.size]:
        for name, dev in targets:
            r = run(dev, shape, args.steps, args.batch, args.field_factor)
            rows.append((shape, name, r))
            print(f"  {shape} on {name}: {r}", flush=True)
    hdr = f"{'shape':<18} {'device':<12} {'first step s':>12} {'step s':>9} {'pairs/s':>9} {'infer s':>9} {'vs cpu':>8}"
    print(hdr)
    print("-" * len(hdr))
    for shape, name, r in rows:
        base = next((b for s, n, b in rows if s == shape and n == "cpu"), None)
        ratio = "-" if base is None else f"{base['inference_s'] / r['inference_s']:.1f}x"
        print(f"{shape!s:<18} {name:<12} {r['first_step_s']:>12.2f} {r['step_s']:>9.4f} {r['pairs_per_s']:>9.2f} {r['inference_s']:>9.4f} {ratio:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
