"""Benchmark: predicted TRE (Fitzpatrick, West and Maurer 1998) against Monte Carlo simulation.

For random fiducial configurations (4-12 fiducials with anisotropic spread, random orientation and offset; 2-D
and 3-D; rigid, similarity and affine fits) and random targets around them, compares
:func:`jaxreg.points.predict_tre` with :func:`jaxreg.points.simulate_tre` (isotropic Gaussian FLE, every draw
refitted with the vmapped closed-form fit) and prints one row per configuration and target with the ratio
simulated / predicted and its standard error. The issue's acceptance criterion is agreement within 5%.

Usage::

    python benchmarks/tre_prediction.py [--configs 4] [--samples 20000] [--fle 1.0] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax
from scipy.spatial.transform import Rotation

from jaxreg.points import predict_tre, simulate_tre


def configuration(rng: np.random.Generator, ndim: int, n_targets: int):
    n = int(rng.integers(4, 13))
    spread = rng.uniform(20.0, 80.0, size=ndim)
    rot = Rotation.random(random_state=rng).as_matrix() if ndim == 3 else np.eye(2)
    fid = (rng.normal(size=(n, ndim)) * spread) @ rot.T + rng.normal(scale=50.0, size=ndim)
    targets = fid.mean(0) + rng.normal(size=(n_targets, ndim)) * 60.0
    return fid.astype(np.float32), targets.astype(np.float32)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--configs", type=int, default=4, help="random configurations per (ndim, model) (default 4)"
    )
    p.add_argument("--targets", type=int, default=3, help="targets per configuration (default 3)")
    p.add_argument(
        "--samples", type=int, default=20000, help="Monte Carlo draws per configuration (default 20000)"
    )
    p.add_argument("--fle", type=float, default=1.0, help="RMS FLE, mm (default 1)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = np.random.default_rng(args.seed)
    key = jax.random.key(args.seed)
    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform}; FLE {args.fle} mm RMS; {args.samples} draws per "
        "configuration; TRE in mm (RMS over draws)"
    )
    print(
        f"{'fit':<15}{'N':>3}{'target':>7}{'dist (mm)':>10}{'predicted':>10}{'simulated':>10}{'+-SE':>7}"
        f"{'ratio':>8}{'within 5%':>10}{'draws/s':>10}"
    )
    worst, count, failures = 0.0, 0, 0
    for ndim, model in ((3, "rigid"), (2, "rigid"), (3, "similarity"), (3, "affine")):
        for _ in range(args.configs):
            fid, targets = configuration(rng, ndim, args.targets)
            key, sub = jax.random.split(key)
            sim = simulate_tre(sub, fid, targets, fle_rms=args.fle, num_samples=args.samples, model=model)
            jax.block_until_ready(sim.tre_rms)
            t0 = time.perf_counter()  # second call: compiled
            sim = simulate_tre(sub, fid, targets, fle_rms=args.fle, num_samples=args.samples, model=model)
            jax.block_until_ready(sim.tre_rms)
            rate = args.samples / (time.perf_counter() - t0)
            pred = np.asarray(predict_tre(fid, targets, fle_rms=args.fle, model=model))
            rms, se = np.asarray(sim.tre_rms), np.asarray(sim.tre_rms_se)
            dist = np.linalg.norm(targets - fid.mean(0), axis=1)
            for j in range(len(targets)):
                ratio = rms[j] / pred[j]
                ok = abs(ratio - 1) <= 0.05
                worst, count, failures = max(worst, abs(ratio - 1)), count + 1, failures + (not ok)
                print(
                    f"{f'{ndim}-D {model}':<15}{len(fid):>3}{j + 1:>7}{dist[j]:>10.1f}{pred[j]:>10.3f}{rms[j]:>10.3f}"
                    f"{se[j]:>7.3f}{ratio:>8.3f}{'yes' if ok else 'NO':>10}{rate if j == 0 else float('nan'):>10.0f}".replace(
                        " nan", "    "
                    )
                )
    print(
        f"{count} comparisons: largest |simulated/predicted - 1| = {100 * worst:.2f}%, {failures} outside 5%"
    )


if __name__ == "__main__":
    main()
