"""Diagnosis: why label-driven 3D training stayed at the identity, and what learns.

For each training recipe, on the label maps of ``../shared/data/labelmaps`` (the brain model's data: affinely
pre-aligned onto the 3 mm 48x64x64 network grid, loaded through ``benchmarks/learned_brain.toml``; the 2D rows
use the central axial slice of the same maps), at initialisation and after ``--steps`` training steps:

* the gradient's global norm of each loss term alone (its weight set to 1, the others to 0; mean over
  ``--batches`` batches) and its *coherence* ``|mean_b g_b| / mean_b |g_b|`` over those batches (1: every
  batch pushes the parameters the same way; ``~1/sqrt(batches)``: the directions are random, and Adam, whose
  step is ``lr`` whatever the gradient's size, then walks at random);
* the gradient norm of the total loss per layer (first encoder conv, last decoder conv, flow head);
* the size of the predicted field (largest and mean displacement ``|T(x) - x|``, mm) and the loss terms.

Recipes: ``synthesis`` (``benchmarks/learned_synthmorph.toml``: soft Dice + diffusion 1.0 + LNCC of
same-contrast synthetic images, 6 mm random deformations, half the pairs from one map) and
``supervised_engine`` (``benchmarks/learned_brain.toml``: mean squared error against the engine's fields).

Usage::

    python benchmarks/learned_diagnosis.py [--steps 60] [--batches 6] [--dims 2,3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import tomllib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _cfg(name: str) -> dict:
    from jaxreg.cli.learn import read_train_config

    return read_train_config(HERE / name)


def _setup():
    """Labels on the brain model's grid, its engine targets, and both recipes' options."""
    from jaxreg.learn.setup import build_training

    cfg = _cfg("learned_brain.toml")
    parts = build_training(cfg, log=lambda s: print("  " + s))
    loader = parts.train_data(0)
    labels = loader._labels
    targets = loader._targets
    loader.close()
    return cfg, parts.grid, labels, targets


def _grid2d(grid):
    from jaxreg import Grid

    sp = np.asarray(grid.spacing)
    return Grid.from_spacing(tuple(grid.shape[:2]), tuple(sp[:2]))


def _recipes(cfg, grid, dims):
    """``{name: (mode, lr, clip)}`` for the grid."""
    from jaxreg.learn.setup import _similarity, build_mode

    syn = tomllib.loads((HERE / "learned_synthmorph.toml").read_text())
    lv = cfg["data"]["label_values"]
    out = {}
    t = syn["train"]
    out["synthesis"] = (
        build_mode(
            "synthesis", grid, similarity=_similarity(t["similarity"], t["window"]),
            regularizer_weight=float(t["regularizer_weight"]), label_values=lv, bidirectional=False,
            synthesis_labels=syn["data"]["synthesis_labels"], options=syn["mode"],
        ),
        float(t["learning_rate"]), float(t["clip_norm"]),
    )  # fmt: skip
    b = cfg["train"]
    opts = dict(cfg["mode"])
    out["supervised_engine"] = (
        build_mode(
            "supervised_engine", grid, similarity=_similarity("mse", 9), regularizer_weight=0.0, label_values=lv,
            bidirectional=False, synthesis_labels=cfg["data"]["synthesis_labels"], options=opts,
        ),
        float(b["learning_rate"]), float(b["clip_norm"]),
    )  # fmt: skip
    return out


def _layers(grad):
    """Gradient norms of a few layers of a RegistrationNet: first encoder conv, last U-Net conv, flow head."""
    from flax import nnx

    flat = {"/".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(grad)}
    extra = sorted({int(k.split("/")[2]) for k in flat if k.startswith("unet/extra/")})
    groups = {"encoder[0]": "unet/enc/0/", "flow head": "flow/"}
    if extra:
        groups["decoder[-1]"] = f"unet/extra/{extra[-1]}/"
    return {name: float(np.sqrt(sum(np.sum(np.square(v)) for k, v in flat.items() if k.startswith(prefix))))
            for name, prefix in groups.items()}  # fmt: skip


def measure(mode, model, batches, grid, key):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jaxreg.learn.losses import displacement_on_grid
    from jaxreg.learn.train import split_model

    graphdef, params = split_model(model)
    loss = mode.loss
    names = loss.names

    @jax.jit
    def grads(params, batch, k, w):
        ka, kl = jax.random.split(k)
        b = mode.augment(ka, batch) if mode.augment is not None else batch

        def f(p):
            m = nnx.merge(graphdef, p)
            val, met = loss.replace(weights=w)(m, b, kl)
            return val, met

        (_, met), g = jax.value_and_grad(f, has_aux=True)(params)
        m = nnx.merge(graphdef, params)
        pred = m(b["fixed"], b["moving"])
        t = jax.vmap(lambda p: m.to_transform(p, grid))(pred)
        d = jax.vmap(lambda tt: displacement_on_grid(tt, grid))(t)
        size = jnp.linalg.norm(d, axis=-1)
        return g, met, jnp.max(size), jnp.mean(size)

    w_all = jnp.asarray(loss.weights)
    rows = {}
    flat_all = []
    sizes = []
    metrics = []
    for i, batch in enumerate(batches):
        k = jax.random.fold_in(key, i)
        g, met, smax, smean = grads(params, batch, k, w_all)
        flat_all.append(jax.tree_util.tree_map(np.asarray, g))
        sizes.append((float(smax), float(smean)))
        metrics.append({kk: float(v) for kk, v in met.items()})
    for ti, name in enumerate(names):
        if float(w_all[ti]) == 0.0:
            continue
        w = jnp.zeros_like(w_all).at[ti].set(1.0)
        gs = []
        for i, batch in enumerate(batches):
            g, *_ = grads(params, batch, jax.random.fold_in(key, i), w)
            gs.append(np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree_util.tree_leaves(g)]))
        gs = np.stack(gs)
        norms = np.linalg.norm(gs, axis=1)
        rows[name] = {
            "weight": float(w_all[ti]),
            "grad_norm": float(norms.mean()),
            "coherence": float(np.linalg.norm(gs.mean(0)) / max(norms.mean(), 1e-30)),
        }
    tot = np.stack([np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(g)]) for g in flat_all])
    tn = np.linalg.norm(tot, axis=1)
    rows["total"] = {"weight": None, "grad_norm": float(tn.mean()), "coherence": float(np.linalg.norm(tot.mean(0)) / max(tn.mean(), 1e-30))}
    mean_g = jax.tree_util.tree_map(lambda *xs: np.mean(xs, axis=0), *flat_all)
    layers = _layers(mean_g)
    terms = {k: float(np.mean([m[k] for m in metrics])) for k in metrics[0]}
    return {"terms": rows, "layers": layers, "field_max_mm": float(np.mean([s[0] for s in sizes])),
            "field_mean_mm": float(np.mean([s[1] for s in sizes])), "loss_terms": terms}  # fmt: skip


def run_case(name, mode, lr, clip, grid, labels, targets, steps, n_batches, seed=0):
    import jax
    from flax import nnx

    from jaxreg.learn import PairLoader, RegistrationNet, make_optimizer, make_train_step, split_model

    need = set(mode.inputs)
    tg = targets if "displacement" in need else None
    model = RegistrationNet(grid.ndim, transform="velocity", field_factor=2, rngs=nnx.Rngs(seed))
    evalb = PairLoader(None, labels, batch_size=1, seed=123, prefetch=0, targets=tg)
    batches = [{k: v for k, v in evalb.make_batch(i).items()} for i in range(n_batches)]
    key = jax.random.key(7)
    out = {"init": measure(mode, model, batches, grid, key)}
    graphdef, params = split_model(model)
    opt = make_optimizer(lr, schedule="constant", clip_norm=clip)
    opt_state = opt.init(params)
    step = make_train_step(graphdef, mode.loss, opt, augment=mode.augment)
    loader = PairLoader(None, labels, batch_size=1, seed=0, prefetch=0, targets=tg)
    t0 = time.perf_counter()
    for s in range(steps):
        params, opt_state, _ = step(params, opt_state, loader.make_batch(s), jax.random.fold_in(jax.random.key(0), s))
    jax.block_until_ready(params)
    sec = time.perf_counter() - t0
    trained = nnx.merge(graphdef, params)
    out["trained"] = measure(mode, trained, batches, grid, key)
    out["steps"] = steps
    out["seconds"] = sec
    return out


def _print(case, res):
    print(f"\n{case}: {res['steps']} steps in {res['seconds']:.0f} s")
    hdr = f"  {'when':8} {'term':12} {'weight':>7} {'|grad|':>10} {'coherence':>10}"
    print(hdr)
    for when in ("init", "trained"):
        r = res[when]
        for term, v in r["terms"].items():
            wt = "-" if v["weight"] is None else f"{v['weight']:.3g}"
            print(f"  {when:8} {term:12} {wt:>7} {v['grad_norm']:10.3e} {v['coherence']:10.3f}")
    for when in ("init", "trained"):
        r = res[when]
        lay = ", ".join(f"{k} {v:.2e}" for k, v in r["layers"].items())
        terms = ", ".join(f"{k} {v:.4g}" for k, v in r["loss_terms"].items())
        print(f"  {when:8} field max {r['field_max_mm']:.3f} mm, mean {r['field_mean_mm']:.3f} mm | layers: {lay}")
        print(f"  {'':8} loss terms: {terms}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60, help="training steps between the two measurements")
    ap.add_argument("--batches", type=int, default=6, help="batches per measurement (coherence)")
    ap.add_argument("--dims", default="3,2", help="which of 2D (central slices) and 3D to run")
    ap.add_argument("--json", help="write the figures as JSON")
    args = ap.parse_args()
    if not (HERE.parent.parent / "shared" / "data" / "labelmaps").is_dir():
        print("skipped: ../shared/data/labelmaps not found")
        return 0
    cfg, grid3, labels3, targets3 = _setup()
    results = {}
    for dim in [int(d) for d in args.dims.split(",")]:
        if dim == 3:
            grid, labels, targets = grid3, labels3, np.asarray(targets3)
        else:
            from jaxreg.learn.targets import engine_targets

            grid = _grid2d(grid3)
            z = labels3.shape[3] // 2
            labels = np.ascontiguousarray(labels3[:, :, :, z])
            targets = engine_targets(grid, labels=labels, label_values=cfg["data"]["label_values"],
                                     cache_dir=HERE / ".learned_brain" / "targets")  # fmt: skip
        for name, (mode, lr, clip) in _recipes(cfg, grid, dim).items():
            case = f"{dim}D {name}"
            res = run_case(case, mode, lr, clip, grid, labels, targets, args.steps, args.batches)
            results[case] = res
            _print(case, res)
            sys.stdout.flush()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
