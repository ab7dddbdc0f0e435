"""Deep iterative rigid registration of two 2D brain slices: a learned metric and an RL agent in the classical loop.

Trains, on four brain2d slices (r27, r30, r62, r85; their 16 ordered pairs, each pair's true pose the NCC rigid
stage's result), a registration agent (Liao et al., AAAI 2017: the reward of each +/- 1 degree / 1 mm action,
greedy supervision) and a learned misalignment metric (Haskins et al., IJCARS 2019: the mean target error of a
pose), then registers the unseen pair r16 (fixed) / r64 (moving) from random starts misaligned by up to
+/-30 degrees and +/-30 mm (all starts in one batched ``register`` call) with

* the rigid NCC stage alone (the intensity-based baseline),
* the agent, then the rigid NCC stage (the agent's stage continues into the NCC stage: one pipeline),
* the learned metric's search, then the rigid NCC stage,

and prints the success rate (final mean target error in the head below 2 mm, against the NCC stage's pose from
the aligned start) and the time per registration. It writes the agent's result for the first start
(``learned_rigid_2d.mat``, ITK/ANTs) and a figure (``learned_rigid_2d.png``: the start, the agent, the agent +
NCC, each as a checkerboard of fixed and warped). ``../shared/data`` is required (the script skips when absent).

Usage::

    python examples/learned_rigid_2d.py [-o example_out] [--data ../shared/data] [--steps 3000] [--starts 12]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-o", "--output", default="example_out", help="output folder (default ./example_out)")
    p.add_argument("--data", default=str(DATA), help="the shared data folder (default ../shared/data)")
    p.add_argument("--steps", type=int, default=3000, help="training updates of each network (default 3000)")
    p.add_argument("--starts", type=int, default=12, help="random starts of the test pair (default 12)")
    args = p.parse_args()
    src = Path(args.data) / "brain2d"
    names = ("r16", "r27", "r30", "r62", "r64", "r85")
    if not all((src / f"{n}.nii.gz").is_file() for n in names):
        print(f"skipping: {src} does not hold {', '.join(names)} (the shared data folder is absent)")
        return 0
    if args.steps < 1 or args.starts < 1:
        p.error("--steps and --starts: expected positive ints")

    import jax
    import jax.numpy as jnp

    import jaxreg
    from jaxreg.io import load_image, write_transform
    from jaxreg.learn.inference import normalize_image
    from jaxreg.learn.pose import LearnedMetric, RigidAgent, pose_error, pose_rigid, pose_theta, train_pose_net
    from jaxreg.optimize import Stage, preset, register

    ims = {n: normalize_image(load_image(src / f"{n}.nii.gz", dtype=np.float32)) for n in names}
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    rigid = preset("rigid")
    train = list(itertools.product(("r27", "r30", "r62", "r85"), repeat=2))
    t0 = time.perf_counter()
    truths = [register(ims[a], ims[b], method=rigid).transform for a, b in train]
    nets = {}
    for kind in ("agent", "metric"):
        res = train_pose_net(
            kind, [ims[a] for a, _ in train], [ims[b] for _, b in train], truths=truths, workdir=out / f"learned_rigid_2d_{kind}",
            key=jax.random.key(0), steps=args.steps, progress=False,
        )  # fmt: skip
        nets[kind] = res.model
    print(f"training:   {len(train)} pairs, agent and metric {args.steps} updates each, {time.perf_counter() - t0:.0f} s")

    fixed, moving = ims["r16"], ims["r64"]
    c = jnp.asarray(fixed.grid.center, jnp.float32)
    theta_true = pose_theta(register(fixed, moving, method=rigid).transform, c)[0]
    truth = pose_rigid(theta_true, c)
    rng = np.random.default_rng(0)
    deltas = jnp.asarray(rng.uniform(-1, 1, (args.starts, 3)) * np.array([30.0, 30.0, 30.0]), jnp.float32)
    starts = jax.vmap(lambda d: pose_rigid(theta_true + d, c))(deltas)
    sl = (slice(None, None, 4),) * 2
    pts, w = fixed.grid.world_coords(jnp.float32)[sl], (fixed.data[sl] > 0.05).astype(jnp.float32)

    def errors(transforms):
        return np.asarray([float(pose_error(jax.tree_util.tree_map(lambda x: x[i], transforms), truth, pts, w))
                           for i in range(args.starts)])  # fmt: skip

    agent, metric = RigidAgent(nets["agent"]), LearnedMetric(nets["metric"])
    agent_stage = Stage(agent, levels=(agent.level(200),), name="agent")
    pipelines = {
        "NCC rigid": rigid,
        "agent": (agent_stage,),
        "agent + NCC rigid": (agent_stage, *rigid),
        "learned metric + NCC rigid": (Stage(metric, levels=(metric.level(50),), name="metric"), *rigid),
    }
    e0 = errors(starts)
    print(f"test pair:  r16 (fixed) / r64 (moving), {args.starts} starts, initial error median {np.median(e0):.1f} mm "
          f"(max {e0.max():.1f} mm)")  # fmt: skip
    results = {}
    for name, stages in pipelines.items():
        register([fixed] * args.starts, [moving] * args.starts, method=stages, transform=starts)  # compile
        t0 = time.perf_counter()
        res = register([fixed] * args.starts, [moving] * args.starts, method=stages, transform=starts)
        jax.block_until_ready(jax.tree_util.tree_leaves(res.transform))
        sec = (time.perf_counter() - t0) / args.starts
        e = errors(res.transform)
        results[name] = res
        print(f"{name + ':':27s} success {np.mean(e < 2):4.0%} (error < 2 mm), median error {np.median(e):5.2f} mm, "
              f"{1000 * sec:.0f} ms per registration (warm, batched)")  # fmt: skip

    first = results["agent"].pair(0).transform
    write_transform(first, out / "learned_rigid_2d.mat")
    print(f"transform:  {out / 'learned_rigid_2d.mat'} (the agent's pose for the first start, ITK/ANTs)")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return 0
    g = fixed.grid
    checker = ((np.indices(g.shape) // 32).sum(0) % 2).astype(bool)
    panels = {"start": jax.tree_util.tree_map(lambda x: x[0], starts), "agent": first,
              "agent + NCC": results["agent + NCC rigid"].pair(0).transform}  # fmt: skip
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.6))
    for ax, (title, t) in zip(axes, panels.items()):
        warped = np.asarray(jaxreg.warp(moving, t, g).data)
        ax.imshow(np.where(checker, np.asarray(fixed.data), warped).T, cmap="gray", origin="lower")
        ax.set_title(f"{title}: {float(pose_error(t, truth, pts, w)):.1f} mm")
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out / "learned_rigid_2d.png", dpi=80)
    print(f"figure:     {out / 'learned_rigid_2d.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
