"""Separable resampling of fields between aligned grids (the pads-and-slices path of
``DisplacementField.on_grid``) against the general ``map_coordinates`` path, forward and gradient, and the
time per full-resolution iteration of the neural field's velocity output on brain3d, which lifts its velocity
lattice onto the level grid every iteration.

    python benchmarks/resample_field.py [--iterations 1,3] [--no-neural-field]

Prints one table: seconds (warm, best of 3) and the ratio of the general path to the separable one. The neural
field rows run the same stage with each path (the general path is forced here through the module's private
``_PLANS_OFF`` switch; the library has no such option) and time iterations from the difference of two runs with
different iteration counts, so compilation cancels.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxreg.core.grid import Grid
from jaxreg.transforms import dense

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def best(fn, *args, repeats=3):
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return min(times)


def general(on: bool):
    """Force the general (map_coordinates) path when ``on``."""
    dense._axis_plans.cache_clear()
    dense._PLANS_OFF = on


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iterations", default="1,3", help="two iteration counts of the neural-field level")
    ap.add_argument("--no-neural-field", action="store_true")
    args = ap.parse_args()
    rows = []
    fine = Grid.from_spacing((160, 192, 224), (1.0, 1.0, 1.0))
    coarse = fine.downsample((2, 2, 2))
    v = jnp.asarray(np.random.default_rng(0).normal(size=(*coarse.shape, 3)), jnp.float32)
    for name, src, dst, x in (("2 mm -> 1 mm (160x192x224)", coarse, fine, v),):
        res = {}
        for path in ("general", "separable"):
            general(path == "general")
            f = jax.jit(lambda a, s=src, t=dst: dense._resample_field(a, s, t))
            g = jax.jit(jax.grad(lambda a, s=src, t=dst: jnp.sum(dense._resample_field(a, s, t) ** 2)))
            res[path] = (best(f, x), best(g, x))
        for k, what in enumerate(("forward", "gradient")):
            rows.append((f"{name}, {what}", res["general"][k], res["separable"][k]))
    if not args.no_neural_field and (DATA / "brain3d").is_dir():
        from jaxreg.io import load_image
        from jaxreg.learn import NeuralField
        from jaxreg.optimize import Level, Stage, register

        fixed = load_image(DATA / "brain3d" / "subj1_t1.nii.gz")
        moving = load_image(DATA / "brain3d" / "subj2_t1.nii.gz")
        nf = NeuralField(hidden=(128, 128, 128), similarity="lncc(window=5)", learning_rate=3e-3, jacobian_weight=0.0,
                         diffusion_weight=0.05, folding_weight=10.0, output="velocity", lattice=2.0, stride=2)
        a, b = (int(s) for s in args.iterations.split(","))
        res = {}
        for path in ("general", "separable"):
            general(path == "general")
            t = []
            for n in (a, b):
                s = time.perf_counter()
                out = register(fixed, moving, method=Stage(nf, levels=(Level(1, 0.0, n),)))
                jax.block_until_ready(out.transform)
                t.append(time.perf_counter() - s)
            res[path] = (t[1] - t[0]) / (b - a)
        rows.append(("neural field, brain3d full resolution, s per iteration", res["general"], res["separable"]))
    general(False)
    print("| case | general s | separable s | general / separable |")
    print("| --- | --- | --- | --- |")
    for name, g, s in rows:
        print(f"| {name} | {g:.3f} | {s:.3f} | {g / s:.2f} |")


if __name__ == "__main__":
    main()
