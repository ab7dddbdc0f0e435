"""Benchmark: learned registration — training throughput, inference time, and Dice on the real 3D brain pair.

Three tables, each with a baseline measured in the same process:

1. **Training throughput** (pairs per second, warm: compiled step, 2 warm-up steps then ``--steps`` timed) of
   :class:`~jaxreg.learn.RegistrationNet` (VoxelMorph widths, velocity field, unsupervised MSE + diffusion or
   SynthMorph synthesis + Dice) on 2D 192x192 and 3D 64x80x64 inputs; baseline: the VoxelMorph configuration
   with the field at full resolution (``field_factor=1``); ratio = pairs/s relative to it.
2. **Inference per 160x192x224 pair** (fixed grid of ``brain3d/subj1``, warm): the network alone on its 2.5 mm
   grid, the whole :func:`jaxreg.learn.predict` without refinement (centre-of-mass initialisation, resampling,
   network), and the VoxelMorph architecture run at the full 1 mm resolution of the pair (baseline). Goal:
   under 2 s per pair on the 2-core CPU machine.
3. **Dice** over the 30 labels of ``brain3d/labels.json`` (subj2 moving onto subj1) for the model trained on
   ``../shared/data/labelmaps`` by label-driven synthesis (``benchmarks/learned_synthmorph.toml``; train it
   first with ``jaxreg train --config benchmarks/learned_synthmorph.toml``), without and with test-time instance
   optimisation, next to the iterative default pipeline (``jaxreg.optimize.register(..., method="default")``)
   run in the same process (the baseline of the time ratios). Goal: with instance optimisation, Dice at least the
   iterative pipeline's.

Times are wall seconds on this machine (and CPU seconds of the process: steadier when the machine is shared).

Usage::

    python benchmarks/learned.py [--model benchmarks/.learned_synthmorph] [--skip throughput,inference,dice]
        [--steps 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / ".." / "shared" / "data"


def _clock():
    return time.perf_counter(), time.process_time()


def _since(t):
    return time.perf_counter() - t[0], time.process_time() - t[1]


def _table(title: str, header: list[str], rows: list[list]) -> str:
    cells = [header] + [[("-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)) for v in r] for r in rows]
    w = [max(len(c[i]) for c in cells) for i in range(len(header))]
    line = "  ".join("-" * x for x in w)
    out = [title, line, "  ".join(c.ljust(x) for c, x in zip(cells[0], w)), line]
    out += ["  ".join(c.ljust(x) for c, x in zip(r, w)) for r in cells[1:]]
    out.append(line)
    return "\n".join(out)


# -- 1. throughput ---------------------------------------------------------------------------------------------
def throughput(steps: int) -> list[dict]:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jaxreg import Grid
    from jaxreg.learn import RegistrationNet, make_optimizer, make_train_step, modes, split_model

    cases = [
        ("2D 192x192 unsupervised", (192, 192), 4, "unsupervised"),
        ("3D 64x80x64 unsupervised", (64, 80, 64), 1, "unsupervised"),
        ("3D 64x80x64 synthesis", (64, 80, 64), 1, "synthesis"),
    ]
    out = []
    for name, shape, batch, mode_name in cases:
        grid = Grid.from_spacing(shape, 2.5 if len(shape) == 3 else 1.0)
        key = jax.random.key(0)
        k1, k2, k3 = jax.random.split(key, 3)
        if mode_name == "unsupervised":
            mode = modes.unsupervised(grid)
            f = jax.random.uniform(k1, (batch, *shape, 1))
            data = {"fixed": f, "moving": jax.random.uniform(k2, (batch, *shape, 1))}
        else:
            values = tuple(range(1, 9))
            mode = modes.synthesis(grid, label_values=values, regularizer_weight=1.0)
            lab = jax.random.randint(k3, (batch, *[s // 8 for s in shape]), 0, 9)
            lab = jnp.repeat(jnp.repeat(jnp.repeat(lab, 8, 1), 8, 2), 8, 3)
            data = {"fixed_labels": lab, "moving_labels": jnp.roll(lab, 3, 1)}
        row = {"case": name, "batch": batch}
        for ff in (1, 2):
            net = RegistrationNet(len(shape), transform="velocity", field_factor=ff, rngs=nnx.Rngs(0))
            gd, params = split_model(net)
            opt = make_optimizer(1e-4)
            step = make_train_step(gd, mode.loss, opt, augment=mode.augment)
            state = opt.init(params)
            t = _clock()
            params, state, m = step(params, state, data, jax.random.key(1))
            jax.block_until_ready(m)
            compile_s = _since(t)[0]
            params, state, m = step(params, state, data, jax.random.key(2))
            jax.block_until_ready(m)
            t = _clock()
            for s in range(steps):
                params, state, m = step(params, state, data, jax.random.key(3 + s))
            jax.block_until_ready(m)
            wall, cpu = _since(t)
            row[f"ff{ff}"] = {"pairs_per_s": batch * steps / wall, "s_per_step": wall / steps, "cpu_s_per_step": cpu / steps, "first_step_s": compile_s}
            print(f"  {name}, field_factor {ff}: {wall / steps:.3f} s/step, {batch * steps / wall:.3f} pairs/s (first step {compile_s:.1f} s)", flush=True)
        out.append(row)
    return out


# -- 2 and 3: the brain pair -----------------------------------------------------------------------------------
def _brain():
    from jaxreg.io import load_image, load_labels

    d = DATA / "brain3d"
    if not (d / "subj1_t1.nii.gz").is_file():
        return None
    labels = json.loads((d / "labels.json").read_text())["eval_labels"]
    return (
        load_image(d / "subj1_t1.nii.gz"), load_image(d / "subj2_t1.nii.gz"),
        load_labels(d / "subj1_aseg.nii.gz"), load_labels(d / "subj2_aseg.nii.gz"), labels,
    )


def _dice(transform, fixed_labels, moving_labels, labels) -> float:
    from jaxreg.evaluation import dice
    from jaxreg.warp import warp_labels

    w = warp_labels(moving_labels, transform, fixed_labels.grid).data
    return float(np.nanmean(np.asarray(dice(fixed_labels.data, w, labels=labels))))


def _folding(transform, grid) -> float:
    from jaxreg.evaluation import jacobian_statistics

    return 100.0 * float(jacobian_statistics(transform, grid).fraction_nonpositive)


def _load(model: str):
    """A trained model by shipped name, exported folder or work folder; an untrained one when there is none."""
    from flax import nnx

    from jaxreg.learn import RegistrationNet
    from jaxreg.learn.setup import load_trained

    try:
        net, grid, meta = load_trained(model)
        return net, grid, meta, True
    except FileNotFoundError:
        pass
    from jaxreg import Grid

    print(f"  (no trained model {model!r}: timing an untrained network of the same architecture)")
    net = RegistrationNet(3, transform="velocity", field_factor=2, rngs=nnx.Rngs(0))
    return net, Grid.from_spacing((64, 80, 64), 2.5), {"align": "affine"}, False


def _default_model() -> str:
    from jaxreg.learn import available_models

    return "brain" if "brain" in available_models() else str(HERE / ".learned_brain")


def inference(model_dir: str, repeats: int) -> list[dict]:
    import jax
    from flax import nnx

    from jaxreg.learn import RegistrationNet, normalize_image, predict
    from jaxreg.warp import resample

    brain = _brain()
    if brain is None:
        print("  skipped: ../shared/data/brain3d not found")
        return []
    fixed, moving = brain[0], brain[1]
    model, grid, _meta, _ = _load(model_dir)
    rows = []
    f = normalize_image(fixed)
    m = resample(normalize_image(moving), fixed.grid)
    # (a) the network alone on its grid
    from jaxreg.learn.inference import place_grid

    g = place_grid(grid, fixed.grid)
    fn, mn = resample(f, g).data, resample(m, g).data
    gd_m, st_m = nnx.split(model)
    fwd_m = jax.jit(lambda st, a, b: nnx.merge(gd_m, st)(a, b))

    def call(a, b):
        return jax.tree_util.tree_map(lambda x: x[0], fwd_m(st_m, a[None, ..., None], b[None, ..., None]))

    def timed(fun, n):
        out = fun()
        jax.block_until_ready(out)
        t = _clock()
        for _ in range(n):
            out = fun()
        jax.block_until_ready(out)
        w, c = _since(t)
        return w / n, c / n

    w, c = timed(lambda: model.to_transform(call(fn, mn), g).exp().displacement, repeats)
    rows.append({"method": f"network on its grid {tuple(grid.shape)} @ {float(grid.spacing[0])} mm (+ exp)", "s": w, "cpu_s": c})
    # (b) the whole predict() without refinement, centre-of-mass init
    w, c = timed(lambda: jax.tree_util.tree_leaves(predict(model, fixed, moving, network_grid=grid, init="com").transform), repeats)
    rows.append({"method": "predict(): normalise + com init + resample + network", "s": w, "cpu_s": c})
    w, c = timed(lambda: jax.tree_util.tree_leaves(predict(model, fixed, moving, network_grid=grid, init="affine").transform), 1)
    rows.append({"method": "predict(): normalise + NCC affine stage + resample + network", "s": w, "cpu_s": c})
    # (c) baseline: VoxelMorph at the full 1 mm resolution of the pair (untrained weights: same cost)
    shape = tuple(int(np.ceil(s / 16) * 16) for s in fixed.grid.shape)
    full = RegistrationNet(3, transform="velocity", field_factor=1, rngs=nnx.Rngs(0))
    x = np.zeros((1, *shape, 1), np.float32)
    gd, st = nnx.split(full)
    fwd = jax.jit(lambda st, a, b: nnx.merge(gd, st)(a, b).field)
    w, c = timed(lambda: fwd(st, x, x), 1)
    rows.append({"method": f"VoxelMorph at full resolution {shape} (baseline)", "s": w, "cpu_s": c})
    base = rows[-1]["s"]
    for r in rows:
        r["ratio"] = r["s"] / base
    return rows


def dice_table(model_dir: str, refine_scale: float) -> list[dict]:
    import jax

    from jaxreg.learn import predict
    from jaxreg.optimize import DEFAULT_GREEDY_LEVELS, Level, register

    brain = _brain()
    if brain is None:
        print("  skipped: ../shared/data/brain3d not found")
        return []
    fixed, moving, fl, ml, labels = brain
    model, grid, _meta, trained = _load(model_dir)
    rows = []
    rows.append({"method": "identity", "dice": _dice(_identity(), fl, ml, labels), "s": None, "fold_pct": 0.0})
    t = _clock()
    it = register(fixed, moving, method="default")
    w, c = _since(t)
    rows.append({"method": "iterative default (affine + greedy SyN-like)", "dice": _dice(it.transform, fl, ml, labels), "s": w, "cpu_s": c, "fold_pct": _folding(it.deformable, fixed.grid)})
    rows.append({"method": "  its affine stage", "dice": _dice(it.linear, fl, ml, labels), "s": None})
    levels = tuple(Level(lv.shrink, lv.smooth_mm, max(1, int(round(lv.iterations * refine_scale)))) for lv in DEFAULT_GREEDY_LEVELS)
    tag = "" if trained else " [untrained]"
    for init in ("com", "affine"):
        t = _clock()
        res = predict(model, fixed, moving, network_grid=grid, init=init)
        jax.block_until_ready(jax.tree_util.tree_leaves(res.transform))
        w, c = _since(t)
        net_s = sum(st.seconds for st in res.stages if st.name.startswith("network"))
        rows.append({"method": f"network{tag}, init {init}", "dice": _dice(res.transform, fl, ml, labels), "s": w, "cpu_s": c, "fold_pct": _folding(res.deformable, fixed.grid), "network_s": net_s})
        if init == "affine":
            rows.append({"method": "  its affine alone", "dice": _dice(res.linear, fl, ml, labels), "s": None})
    t = _clock()
    res = predict(model, fixed, moving, network_grid=grid, init="affine", refine_levels=levels)
    w, c = _since(t)
    its = "/".join(str(lv.iterations) for lv in levels)
    rows.append({"method": f"network{tag} + instance optimisation ({its} its)", "dice": _dice(res.transform, fl, ml, labels), "s": w, "cpu_s": c, "fold_pct": _folding(res.deformable, fixed.grid)})
    base = rows[1]["s"]
    for r in rows:
        r["ratio"] = None if r.get("s") is None else r["s"] / base
    return rows


def _identity():
    from jaxreg import Affine

    return Affine.identity(3)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="a shipped model's name, an exported folder or a 'jaxreg train' work "
                    "folder (default: the shipped 'brain' model, else benchmarks/.learned_brain)")
    ap.add_argument("--skip", default="", help="comma-separated sections to skip: throughput, inference, dice")
    ap.add_argument("--steps", type=int, default=5, help="timed training steps per configuration")
    ap.add_argument("--repeats", type=int, default=3, help="timed inference repeats")
    ap.add_argument("--refine-scale", type=float, default=1.0, help="instance-optimisation iterations relative to the iterative pipeline's")
    ap.add_argument("--json", default=None, help="write the tables as JSON here")
    args = ap.parse_args()
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    model = args.model or _default_model()
    import jax

    print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({os.cpu_count()} CPUs)", flush=True)
    result: dict = {}
    if "throughput" not in skip:
        print("training throughput ...", flush=True)
        rows = throughput(args.steps)
        result["throughput"] = rows
        print(_table(
            "Training throughput (warm, VoxelMorph widths, velocity field); baseline = field at full resolution",
            ["case", "batch", "pairs/s ff1", "pairs/s ff2", "ratio ff2/ff1", "s/step ff1", "s/step ff2", "CPU s/step ff2"],
            [[r["case"], r["batch"], r["ff1"]["pairs_per_s"], r["ff2"]["pairs_per_s"], r["ff2"]["pairs_per_s"] / r["ff1"]["pairs_per_s"], r["ff1"]["s_per_step"], r["ff2"]["s_per_step"], r["ff2"]["cpu_s_per_step"]] for r in rows],
        ), flush=True)
    if "inference" not in skip:
        print("inference ...", flush=True)
        rows = inference(model, args.repeats)
        result["inference"] = rows
        if rows:
            print(_table("Inference per 160x192x224 pair (warm; ratio to VoxelMorph at full resolution)", ["method", "s", "CPU s", "ratio"], [[r["method"], r["s"], r["cpu_s"], r["ratio"]] for r in rows]), flush=True)
    if "dice" not in skip:
        print("Dice on brain3d subj2 -> subj1 ...", flush=True)
        rows = dice_table(model, args.refine_scale)
        result["dice"] = rows
        if rows:
            print(_table(
                "brain3d subj2 -> subj1: mean Dice over 30 labels (times incl. compilation; ratio to the iterative pipeline)",
                ["method", "Dice", "s", "CPU s", "ratio", "J<=0 %"],
                [[r["method"], r["dice"], r.get("s"), r.get("cpu_s"), r.get("ratio"), r.get("fold_pct")] for r in rows],
            ), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
