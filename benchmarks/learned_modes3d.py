"""Every training mode of ``jaxreg.learn`` in 3D: a short run of each on the same data, held-out Dice before/after.

Data: the label maps of ``../shared/data/labelmaps`` affinely pre-aligned onto one 3D network grid
(``--spacing`` mm, default 4.5 mm: 32x48x48 voxels), subj01-08 for training and the two ordered pairs of
subj09/subj10 held out. The modes that need intensity images get one fixed synthetic contrast per label
(:func:`jaxreg.learn.synthesize_image` with a fixed key, the same for every map: a mono-modal "T1-like" set);
``synthesis`` and ``supervised_engine`` synthesise their own random contrasts at every step. Every trained
network is evaluated on the held-out pairs with those fixed-contrast images as inputs: mean Dice over the 28
brain labels of the warped label maps (nearest neighbour), before (identity) and after, and the folding %.

Each mode trains ``--steps`` steps (batch 1, Adam, warm-up + cosine, the mode's own defaults otherwise); the
table gives the wall time of the run (compilation included) and the training curve is written to
``--out/curves.png`` (training loss per step, smoothed).

Usage::

    python benchmarks/learned_modes3d.py [--steps 200] [--spacing 4.5] [--modes unsupervised,...]
        [--deformation-mm 4] [--same-contrast] [--lr 1e-3] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "labelmaps"
LABELS = [2, 3, 4, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17, 18, 24, 28, 41, 42, 43, 46, 47, 49, 50, 51, 52, 53, 54, 60]
SYNTH = [2, 3, 4, 5, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17, 18, 24, 26, 28, 30, 41, 42, 43, 44, 46, 47, 49, 50, 51,
         52, 53, 54, 58, 60, 62, 72, 85]  # fmt: skip


def _data(spacing: float, shape: tuple[int, ...]):
    from jaxreg.io import load_image
    from jaxreg.learn.setup import load_aligned, network_grid

    files = [str(DATA / f"subj{i:02d}_labels.nii.gz") for i in range(1, 11)]
    grid = network_grid(shape, spacing, load_image(files[0]).grid)
    _, labels, _ = load_aligned([], files, grid, align="affine", centroid_labels=LABELS)
    return grid, labels


def _images(grid, labels, prior=None):
    """One fixed synthetic contrast for every map (the same intensity per label for all): a random one, or the
    middle of each range of an intensity prior (e.g. ``"t1_brain"``)."""
    import jax

    from jaxreg.learn.synthesis import intensity_prior, relabel, synthesize_image

    kw = {}
    if prior:
        lo, hi = intensity_prior(prior, SYNTH)
        kw = {"mean_range": ((lo + hi) / 2, (lo + hi) / 2), "gamma_std": 0.0}
    out = []
    for lab in labels:
        idx = relabel(lab, SYNTH, unknown=len(SYNTH))
        img = synthesize_image(jax.random.key(0), idx, len(SYNTH) + 1, grid=grid, noise_std_max=0.0, bias_std=0.0, **kw)
        out.append(np.asarray(img, np.float32))
    return np.stack(out)


def run_mode(name, grid, images, labels, steps, seed=0, cache=None, deformation_mm=4.0, head_mask=False,
             same_contrast=False, lr=1e-3, prior=None):
    import jax
    from flax import nnx

    from jaxreg.learn import (
        PairLoader,
        RegistrationNet,
        make_eval_step,
        make_optimizer,
        make_train_step,
        modes,
    )
    from jaxreg.learn.losses import registration_metrics

    tr_img, tr_lab = images[:8], labels[:8]
    factory = modes.MODES[name]
    kw = {
        "unsupervised": {"similarity": "lncc(window=5)", "regularizer_weight": 1.0},
        "supervised": {"max_displacement_mm": 6.0, "smoothness_mm": 12.0},
        "supervised_engine": {"label_values": LABELS, "synthesis_labels": SYNTH, "deformation_mm": deformation_mm,
                              "head_mask": head_mask, "same_contrast": same_contrast,
                              "synth_options": {"mean_range": prior} if prior else None},
        "weakly_supervised": {"label_values": LABELS, "regularizer_weight": 0.1},
        "synthesis": {"label_values": LABELS, "synthesis_labels": SYNTH, "deformation_mm": deformation_mm,
                      "regularizer_weight": 0.1, "same_contrast": same_contrast,
                      "image_weight": 1.0 if same_contrast else 0.0, "similarity": "lncc(window=5)",
                      "synth_options": {"mean_range": prior} if prior else None},
    }[name]
    mode = factory(grid, **kw)
    targets = None
    if mode.targets is not None:
        targets = mode.targets(grid, labels=tr_lab, images=None, cache_dir=cache, log=print)
    need = set(mode.inputs)
    use_img = tr_img if need & {"fixed", "moving"} else None
    use_lab = tr_lab if need & {"fixed_labels", "moving_labels"} else None  # supervised: one image per pair
    model = RegistrationNet(3, transform="velocity", field_factor=2, rngs=nnx.Rngs(seed))
    graphdef, params = nnx.split(model, nnx.Param)
    opt = make_optimizer(lr, schedule="warmup_cosine", total_steps=steps, warmup_steps=max(1, steps // 10), clip_norm=10.0)
    state = opt.init(params)
    step = make_train_step(graphdef, mode.loss, opt, augment=mode.augment)
    loader = PairLoader(use_img, use_lab, batch_size=1, seed=seed, prefetch=0, targets=targets)
    evaluate = make_eval_step(graphdef, registration_metrics(grid, label_values=LABELS))
    held = [{"fixed": images[a][None, ..., None], "moving": images[b][None, ..., None],
             "fixed_labels": labels[a][None], "moving_labels": labels[b][None]} for a, b in ((8, 9), (9, 8))]  # fmt: skip

    def score(p):
        ms = [evaluate(p, h) for h in held]
        return {k: float(np.mean([float(m[k]) for m in ms])) for k in ms[0]}

    before = score(params)
    t0 = time.perf_counter()
    curve = []
    for s in range(steps):
        batch = loader.make_batch(s)
        if name == "supervised":
            batch = {"moving": batch["moving"]}
        params, state, m = step(params, state, batch, jax.random.fold_in(jax.random.key(seed), s))
        curve.append(float(m["loss"]))
    jax.block_until_ready(params)
    sec = time.perf_counter() - t0
    after = score(params)
    return {"mode": name, "steps": steps, "seconds": sec, "dice_before": before["dice_before"], "dice_after": after["dice"],
            "folding_pct": after["folding"], "curve": curve}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--spacing", type=float, default=4.5)
    ap.add_argument("--shape", default="32,48,48")
    ap.add_argument("--modes", default="unsupervised,supervised,supervised_engine,weakly_supervised,synthesis")
    ap.add_argument("--deformation-mm", type=float, default=4.0,
                    help="random deformation of each label map in supervised_engine and synthesis (0 = off)")
    ap.add_argument("--head-mask", action="store_true", help="supervised_engine: supervised error in the head only")
    ap.add_argument("--same-contrast", action="store_true", help="supervised_engine, synthesis: one random contrast per pair (synthesis adds an LNCC term)")
    ap.add_argument("--prior", default=None, help="supervised_engine, synthesis: intensity prior of the synthesis "
                    "(e.g. t1_brain; the held-out images then use its mid-range contrast)")
    ap.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (warm-up 10 %% of the steps, cosine)")
    ap.add_argument("--out", default=str(HERE / ".learned_modes3d"))
    args = ap.parse_args()
    if not DATA.is_dir():
        print(f"skipped: {DATA} not found")
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shape = tuple(int(s) for s in args.shape.split(","))
    t = time.perf_counter()
    grid, labels = _data(args.spacing, shape)
    images = _images(grid, labels, args.prior)
    print(f"data: 10 label maps on {shape} at {args.spacing} mm ({time.perf_counter() - t:.0f} s)", flush=True)
    rows = []
    for name in args.modes.split(","):
        r = run_mode(name, grid, images, labels, args.steps, cache=out / "targets", deformation_mm=args.deformation_mm,
                     head_mask=args.head_mask, same_contrast=args.same_contrast, lr=args.lr, prior=args.prior)
        rows.append(r)
        print(f"  {name:18s} {r['steps']} steps {r['seconds']:6.0f} s  held-out Dice {r['dice_before']:.3f} -> "
              f"{r['dice_after']:.3f}  folding {r['folding_pct']:.3f} %", flush=True)  # fmt: skip
    print("\n| mode | steps | s | held-out Dice before | after | folding % |\n| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['mode']} | {r['steps']} | {r['seconds']:.0f} | {r['dice_before']:.3f} | {r['dice_after']:.3f} | "
              f"{r['folding_pct']:.3f} |")  # fmt: skip
    (out / "modes3d.json").write_text(json.dumps(rows, indent=1))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(1, len(rows), figsize=(3.2 * len(rows), 2.6))
        for a, r in zip(np.atleast_1d(ax), rows):
            c = np.asarray(r["curve"])
            k = max(1, len(c) // 20)
            a.plot(np.convolve(c, np.ones(k) / k, mode="valid"))
            a.set_title(r["mode"], fontsize=8)
            a.set_xlabel("step", fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "curves.png", dpi=100)
        print(f"curves: {out / 'curves.png'}")
    except ImportError:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
