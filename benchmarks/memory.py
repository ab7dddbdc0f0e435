"""Peak memory of full-resolution velocity-field registration on a large volume.

Registers a synthetic 512x512x160 float32 pair (smooth random image and a copy warped by a known smooth
diffeomorphism) with the greedy symmetric stationary-velocity-field method at FULL resolution, and reports
the process's peak resident memory (``ru_maxrss``) and the time per iteration, next to the same measurement
on a 4x smaller volume in the same run (the baseline).

    python benchmarks/memory.py [--shape 512 512 160] [--iterations 3]

Goal (registration-engine issue): peak memory within 16 GiB.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time


def run_one(shape: tuple[int, int, int], iterations: int) -> None:
    import jax

    import jaxreg as jr
    from jaxreg.data import random_velocity_field
    from jaxreg.optimize import Greedy, Level, register
    from jaxreg.warp.pyramid import smooth_array

    grid = jr.Grid.centered(shape, 1.0)
    key = jax.random.PRNGKey(0)
    img = jax.jit(lambda k: smooth_array(jax.random.uniform(k, shape), (3.0, 3.0, 3.0)))(key)
    fixed = jr.Image(img, grid)
    v = random_velocity_field(jax.random.PRNGKey(1), grid, smoothness_mm=20.0, max_displacement_mm=4.0)
    moving = jax.jit(lambda f, vv: jr.warp(f, vv, grid))(fixed, v)
    t0 = time.perf_counter()
    method = Greedy("lncc(window=5)", step=0.25, symmetric=True)
    res = register(fixed, moving, method=method, levels=[Level(1, 0.0, iterations)])
    jax.block_until_ready(res.optimized.velocity)
    el = time.perf_counter() - t0
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"{shape[0]}x{shape[1]}x{shape[2]}\t{iterations}\t{el:.1f}\t{peak_gib:.2f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=3, default=(512, 512, 160))
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        run_one(tuple(a.shape), a.iterations)
        return 0
    small = tuple(max(8, s // 4) for s in a.shape)
    rows = []
    for shape in (small, tuple(a.shape)):
        # a fresh process per size so that ru_maxrss is that size's own peak
        out = (
            subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    "--shape",
                    *map(str, shape),
                    "--iterations",
                    str(a.iterations),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        rows.append(out.split("\t"))
    base = float(rows[0][3])
    print(
        f"{'volume':>14} {'iters':>5} {'time s (incl. compile)':>22} {'peak RSS GiB':>12} {'ratio to small':>14} {'goal <= 16 GiB':>14}"
    )
    for shp, it, el, peak in rows:
        print(
            f"{shp:>14} {it:>5} {float(el):>22.1f} {float(peak):>12.2f} {float(peak) / base:>14.1f} {'yes' if float(peak) <= 16 else 'NO':>14}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
