"""Train the shipped contrast-invariant feature network ``labelmind`` (jaxreg/models/labelmind).

A small 2-D dilated-convolution :class:`jaxreg.learn.features.FeatureNet` learns to output the label
self-similarity descriptor (:func:`jaxreg.learn.features.label_descriptor`) of a label map from images synthesised
from it with random contrasts (:func:`jaxreg.learn.synthesize_image`), on slices of the ten whole-head label maps of
``../shared/data/labelmaps``. The similarity ``features(model="labelmind")`` then compares images by their features.

The network replicate-pads its input (``--padding edge``, the default): applied plane by plane to a thin volume
(abdomen_ct_mr's MR has 20 slices), most of a through-plane slice's receptive field is border.

Usage (5 minutes on 2 idle CPU cores, 27 when they were shared with other jobs)::

    python examples/train_labelmind.py --out jaxreg/models/labelmind [--steps 3000] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import numpy as np

from jaxreg.learn.features import FeatureTraining, load_label_slices, save_feature_net, train_feature_net

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "data", "labelmaps"))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="model folder to write (e.g. jaxreg/models/labelmind)")
    ap.add_argument("--data", default=DATA, help="folder of NIfTI label maps")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target-dilations", type=int, nargs="+", default=[1, 2], help="dilations of the target descriptor")
    ap.add_argument("--target-radius", type=int, default=1, help="patch radius of the target descriptor")
    ap.add_argument("--normalize", choices=("equalize", "minmax"), default="equalize",
                    help="input scaling (minmax: robust min-max; on abdomen_ct_mr it was far worse than equalize)")
    ap.add_argument("--padding", choices=("zero", "edge"), default="edge",
                    help="border handling of the network (edge: replicate padding of the input)")
    ap.add_argument("--width", type=int, default=16, help="hidden channels of the network")
    ap.add_argument("--net-dilations", type=int, nargs="+", default=[1, 1, 2, 4, 8, 2],
                    help="dilations of the network's 3x3 convolutions")
    args = ap.parse_args(argv)

    paths = sorted(os.path.join(args.data, f) for f in os.listdir(args.data) if f.endswith((".nii", ".nii.gz")))
    if not paths:
        raise SystemExit(f"--data: no label maps in {args.data}")
    key = jax.random.key(args.seed)
    k_slices, k_train = jax.random.split(key)
    t0 = time.perf_counter()
    slices = load_label_slices(k_slices, paths, per_volume=64, size=192)
    print(f"{len(slices)} label slices from {len(paths)} maps ({time.perf_counter() - t0:.1f} s)")
    settings = FeatureTraining(
        steps=args.steps, batch_size=args.batch_size, normalize=args.normalize, padding=args.padding,
        dilations=tuple(args.target_dilations), radius=args.target_radius,
    )
    t0 = time.perf_counter()
    net, losses = train_feature_net(
        k_train, slices, settings=settings, width=args.width, dilations=tuple(args.net_dilations),
        log=lambda i, loss: print(f"step {i:5d}  loss {loss:.5f}  ({time.perf_counter() - t0:.0f} s)", flush=True),
    )
    meta = {
        "description": "contrast-invariant label self-similarity features (jaxreg.learn.features)",
        "command": (
            f"python examples/train_labelmind.py --out {args.out} --steps {args.steps} --seed {args.seed} "
            f"--normalize {args.normalize} --padding {args.padding} --width {args.width} "
            f"--net-dilations {' '.join(map(str, args.net_dilations))} "
            f"--target-dilations {' '.join(map(str, args.target_dilations))} --target-radius {args.target_radius}"
        ),
        "data": "shared/data/labelmaps (10 whole-head label maps)",
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in settings._asdict().items()},
        "loss_first_50": float(np.mean(losses[:50])),
        "loss_last_50": float(np.mean(losses[-50:])),
        "train_seconds": round(time.perf_counter() - t0, 1),
    }
    out = save_feature_net(net, args.out, metadata=meta)
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f"wrote {out} ({size / 1024:.0f} kB); loss {meta['loss_first_50']:.4f} -> {meta['loss_last_50']:.4f}")


if __name__ == "__main__":
    main()
