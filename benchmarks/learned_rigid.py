"""Benchmark: capture range of the learned rigid metric and the registration agent against intensity-based rigid.

Issue 12's bound (parts 2 and 3): success rate (final mean target error < 2 mm over the fixed foreground) from
random initial misalignments up to +/-30 degrees and +/-30 mm, against intensity-based rigid registration (NCC
and MI) from the same starts; the goal is a wider capture range at equal final accuracy; time per registration.

Cases:

* ``brain2d``: the six 2D T1 slices. The networks train on the pairs of r27, r30, r62, r85 (12 inter-subject
  pairs and 4 self pairs, each "truth" the NCC rigid stage's pose from the aligned start); the test pairs are
  r16 <-> r64 (never seen), whose truth is the NCC rigid stage's pose from the aligned start.
* ``mni152``: the 3D MNI152 template (2 mm). Training pairs: the template and 8 copies deformed by random
  smooth fields (5 mm, seeds 1-8), truth the identity; test pairs: 2 copies deformed with seeds 101-102, gamma
  0.8 on the moving side.

Every pipeline runs all starts of a pair in one batched ``register`` call (``vmap`` of the same kernel); the
pipelines' second calls give the warm time per registration (the first call's compilation is reported apart).
The networks are trained first (resumable work folders under ``--workdir``; training time reported).

Usage::

    python benchmarks/learned_rigid.py [--case brain2d|mni152] [--starts 24] [--steps 3000] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / ".." / "shared" / "data"


def _brain2d():
    from jaxreg.io import load_image

    d = DATA / "brain2d"
    if not (d / "r16.nii.gz").is_file():
        return None
    ims = {k: load_image(d / f"{k}.nii.gz") for k in ("r16", "r27", "r30", "r62", "r64", "r85")}
    train = [(ims[a], ims[b]) for a, b in itertools.product(("r27", "r30", "r62", "r85"), repeat=2)]
    test = [("r16<-r64", ims["r16"], ims["r64"]), ("r64<-r16", ims["r64"], ims["r16"])]
    return train, test, True


def _mni152():
    import jax

    from jaxreg.core.grid import Image
    from jaxreg.data import load_mni152, random_velocity_field
    from jaxreg.warp import warp

    t = load_mni152(2)

    def deformed(seed, gamma=1.0):
        v = random_velocity_field(jax.random.key(seed), t.grid, smoothness_mm=15.0, max_displacement_mm=5.0)
        w = warp(t, v, t.grid)
        return Image(np.clip(np.asarray(w.data), 0, None) ** gamma, t.grid)

    train = [(t, t)] + [(t, deformed(s)) for s in range(1, 9)]
    test = [(f"mni<-deformed{s}", t, deformed(s, 0.8)) for s in (101, 102)]
    return train, test, False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", default="brain2d", choices=("brain2d", "mni152"))
    ap.add_argument("--starts", type=int, default=24, help="random starts per test pair")
    ap.add_argument("--steps", type=int, default=3000, help="training updates of each network")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workdir", default="/tmp/jaxreg_learned_rigid")
    ap.add_argument("--max-degrees", type=float, default=30.0)
    ap.add_argument("--max-mm", type=float, default=30.0)
    args = ap.parse_args()

    import jax
    import jax.numpy as jnp

    from jaxreg.learn.inference import normalize_image
    from jaxreg.learn.pose import LearnedMetric, RigidAgent, pose_error, pose_rigid, pose_theta, train_pose_net
    from jaxreg.optimize import Stage, objective, preset, register, similarity_term

    case = _brain2d() if args.case == "brain2d" else _mni152()
    if case is None:
        print(f"skipped: {DATA / 'brain2d'} not found")
        return 0
    train, test, engine_truth = case
    ncc_rigid = preset("rigid")
    ncc_stage = ncc_rigid[0]  # the rigid preset's stage with MI (32 bins) as its similarity, all else equal
    mi_rigid = (ncc_stage._replace(method=dataclasses.replace(ncc_stage.method, objective=objective(similarity_term("mi(bins=32)")))),)

    def truth_of(f, m):
        if not engine_truth:
            return None
        return register(f, m, method=ncc_rigid).transform

    t0 = time.perf_counter()
    truths = [truth_of(f, m) for f, m in train]
    print(f"truth poses of {len(train)} training pairs: {time.perf_counter() - t0:.1f} s")
    nets, train_s = {}, {}
    for kind in ("metric", "agent"):
        t0 = time.perf_counter()
        work = Path(args.workdir) / args.case / kind
        shape = (64, 64) if args.case == "brain2d" else (32, 32, 32)
        spacing = 4.0 if args.case == "brain2d" else 7.0
        res = train_pose_net(
            kind, [f for f, _ in train], [m for _, m in train], truths=truths if engine_truth else None,
            workdir=work, key=jax.random.key(0), steps=args.steps, batch=args.batch, shape=shape,
            spacing_mm=spacing, max_degrees=args.max_degrees, max_mm=args.max_mm, progress=False,
            shift_mm=30.0 if args.case == "brain2d" else 15.0,
        )  # fmt: skip
        nets[kind], train_s[kind] = res.model, time.perf_counter() - t0
        h = res.history["train"]
        if len(h.get("loss", [])):
            last = {k: float(np.mean(v[-50:])) for k, v in h.items() if k != "step"}
            print(f"trained {kind}: {train_s[kind]:.0f} s, last-50 means {last}")
        else:
            print(f"trained {kind}: resumed complete ({train_s[kind]:.0f} s)")

    metric = LearnedMetric(nets["metric"], search_degrees=args.max_degrees, search_mm=args.max_mm)
    agent = RigidAgent(nets["agent"])
    pipelines = {
        "NCC rigid (intensity)": ncc_rigid,
        "MI rigid (intensity)": mi_rigid,
        "learned metric": (Stage(metric, levels=(metric.level(50),), name="rigid"),),
        "learned metric + NCC rigid": (Stage(metric, levels=(metric.level(50),), name="rigid"), *ncc_rigid),
        "agent": (Stage(agent, levels=(agent.level(200),), name="rigid"),),
        "agent + NCC rigid": (Stage(agent, levels=(agent.level(200),), name="rigid"), *ncc_rigid),
    }

    rows = {name: {"err": [], "warm": [], "cold": []} for name in pipelines}
    rng = np.random.default_rng(0)
    for pname, f, m in test:
        f_n, m_n = normalize_image(f), normalize_image(m)
        truth = register(f_n, m_n, method=ncc_rigid).transform if engine_truth else None
        n = f.grid.ndim
        c = jnp.asarray(f.grid.center, jnp.float32)
        theta_t = pose_theta(truth, c)[0] if truth is not None else jnp.zeros((3 if n == 2 else 6,), jnp.float32)
        truth_r = pose_rigid(theta_t, c)
        nr = 1 if n == 2 else 3
        box = np.array([args.max_degrees] * nr + [args.max_mm] * n, np.float32)
        deltas = rng.uniform(-1, 1, (args.starts, len(box))).astype(np.float32) * box
        starts = jax.vmap(lambda d: pose_rigid(theta_t + d, c))(jnp.asarray(deltas))
        step = tuple(max(1, s // 64) for s in f.grid.shape)
        sl = tuple(slice(None, None, s) for s in step)
        pts = f.grid.world_coords(jnp.float32)[sl]
        w = (f_n.data[sl] > 0.05).astype(jnp.float32)
        e0 = [float(pose_error(jax.tree_util.tree_map(lambda x: x[i], starts), truth_r, pts, w)) for i in range(args.starts)]
        print(f"{pname}: {args.starts} starts, initial error median {np.median(e0):.1f} mm (max {np.max(e0):.1f})")
        fl, ml = [f_n] * args.starts, [m_n] * args.starts
        for name, stages in pipelines.items():
            t0 = time.perf_counter()
            res = register(fl, ml, method=stages, transform=starts)
            jax.block_until_ready(jax.tree_util.tree_leaves(res.transform))
            cold = time.perf_counter() - t0
            t0 = time.perf_counter()
            res = register(fl, ml, method=stages, transform=starts)
            jax.block_until_ready(jax.tree_util.tree_leaves(res.transform))
            warm = time.perf_counter() - t0
            errs = [float(pose_error(res.pair(i).transform, truth_r, pts, w)) for i in range(args.starts)]
            rows[name]["err"] += errs
            rows[name]["warm"].append(warm / args.starts)
            rows[name]["cold"].append(cold)
            print(f"  {name:28s} success {np.mean(np.asarray(errs) < 2):5.0%}  median {np.median(errs):6.2f} mm  "
                  f"warm {warm:.2f} s for {args.starts}")  # fmt: skip

    base = np.mean(rows["NCC rigid (intensity)"]["warm"])
    print()
    print(f"case {args.case}: {len(test)} test pairs x {args.starts} starts, misalignment up to "
          f"+/-{args.max_degrees:g} deg and +/-{args.max_mm:g} mm per parameter; success = error < 2 mm")  # fmt: skip
    print(f"training: metric {train_s['metric']:.0f} s, agent {train_s['agent']:.0f} s ({args.steps} updates each)")
    print("| pipeline | success | median error (mm) | mean error of successes (mm) | warm s / registration | ratio to NCC | first call (s, compile incl.) |")  # noqa: E501
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, r in rows.items():
        e = np.asarray(r["err"])
        ok = e[e < 2]
        warm = float(np.mean(r["warm"]))
        print(f"| {name} | {np.mean(e < 2):.0%} | {np.median(e):.2f} | {ok.mean() if ok.size else float('nan'):.2f} | "
              f"{warm:.3f} | {warm / base:.2f} | {np.mean(r['cold']):.1f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
