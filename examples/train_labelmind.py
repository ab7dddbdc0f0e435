"""Train the shipped contrast-invariant feature network ``labelmind`` (jaxreg/models/labelmind).

A small 2-D dilated-convolution :class:`jaxreg.learn.features.FeatureNet` learns to output the label
self-similarity descriptor (:func:`jaxreg.learn.features.label_descriptor`) of a label map from images synthesised
from it with random contrasts (:func:`jaxreg.learn.synthesize_image`), on slices of the ten whole-head label maps of
``../shared/data/labelmaps``. The similarity ``features(model="labelmind")`` then compares images by their features.

The network replicate-pads its input (``--padding edge``, the default): applied plane by plane to a thin volume
(abdomen_ct_mr's MR has 20 slices), most of a through-plane slice's receptive field is border.

Usage (5 minutes on 2 idle CPU cores, 27 when they were shared with other jobs)::

    python examples/train_labelmind.py --out jaxreg/models/labelmind [--steps 3000] [--seed 0]

``--body`` adds body anatomy: the TotalSegmentator labels of ``../shared/data/pelvis_ct`` (abdomen-pelvis of one
person, 3 mm, zoomed x2 to 1.5 mm voxels), whose unlabelled voxels are split by the CT's Hounsfield units (smoothed by 1 voxel) into air
(< -500), fat (-500..-30), soft tissue (-30..200) and bone (> 200) so that the body wall is not one flat region; as
many slices as from the ten head maps together, on 256-voxel canvases. Neither body variant was better than
``labelmind`` on abdomen_ct_mr (benchmarks/README.md, learned_features), so none is shipped; they were::

    python examples/train_labelmind.py --out /tmp/body --body --steps 3000 --seed 0      # 23 min, shared cores
    python examples/train_labelmind.py --out /tmp/body21 --body --steps 3000 --seed 0 \
        --net-dilations 1 2 4 2 1 --std-max 0.1 --blur-max 1.5 --bias-std 0.5 --gamma-std 0.35 --noise-max 0.06  # 7.5 min
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
BODY = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "data", "pelvis_ct"))
HU_CLASSES = ((-500.0, -30.0), (-30.0, 200.0), (200.0, float("inf")))  # fat, soft tissue, bone; air stays 0


def body_labels(folder: str) -> np.ndarray:
    """``pelvis_ct``'s label map with its unlabelled voxels split into air / fat / soft tissue / bone by the CT."""
    import nibabel as nib

    lab = np.rint(np.asarray(nib.load(os.path.join(folder, "labels.nii.gz")).dataobj)).astype(np.int32)
    from scipy.ndimage import gaussian_filter

    # smoothed (1 voxel) so that CT noise does not speckle the boundaries between the classes
    ct = gaussian_filter(np.asarray(nib.load(os.path.join(folder, "ct.nii.gz")).dataobj, np.float32), 1.0)
    if ct.shape != lab.shape:
        raise SystemExit(f"--body: ct {ct.shape} and labels {lab.shape} differ in shape")
    free = lab == 0
    top = int(lab.max())
    for i, (lo, hi) in enumerate(HU_CLASSES):
        lab[free & (ct >= lo) & (ct < hi)] = top + 1 + i
    return lab


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
    ap.add_argument("--body", action="store_true", help="add pelvis_ct's body labels (+ CT tissue classes)")
    ap.add_argument("--body-data", default=BODY, help="folder with labels.nii.gz and ct.nii.gz (--body)")
    ap.add_argument("--std-max", type=float, default=0.08, help="largest within-label standard deviation")
    ap.add_argument("--blur-max", type=float, default=1.0, help="largest blur sigma (voxels, per axis)")
    ap.add_argument("--bias-std", type=float, default=0.3, help="largest std of the log-bias field")
    ap.add_argument("--gamma-std", type=float, default=0.25, help="std of the log-gamma exponent")
    ap.add_argument("--noise-max", type=float, default=0.05, help="largest additive noise std")
    args = ap.parse_args(argv)

    paths = sorted(os.path.join(args.data, f) for f in os.listdir(args.data) if f.endswith((".nii", ".nii.gz")))
    if not paths:
        raise SystemExit(f"--data: no label maps in {args.data}")
    key = jax.random.key(args.seed)
    k_slices, k_train = jax.random.split(key)
    t0 = time.perf_counter()
    size = 256 if args.body else 192
    slices = load_label_slices(k_slices, paths, per_volume=64, size=size)
    data = f"shared/data/labelmaps ({len(paths)} whole-head label maps)"
    if args.body:
        body = load_label_slices(
            jax.random.fold_in(k_slices, 1), [body_labels(args.body_data)], per_volume=len(slices), size=size, zoom=2
        )
        slices = np.concatenate([slices, body])
        data += " + shared/data/pelvis_ct labels with CT tissue classes (zoom 2)"
    print(f"{len(slices)} label slices: {data} ({time.perf_counter() - t0:.1f} s)")
    settings = FeatureTraining(
        steps=args.steps, batch_size=args.batch_size, normalize=args.normalize, padding=args.padding,
        dilations=tuple(args.target_dilations), radius=args.target_radius, std_max=args.std_max,
        blur_max=args.blur_max, bias_std=args.bias_std, gamma_std=args.gamma_std, noise_max=args.noise_max,
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
            f"{' --body' if args.body else ''} --std-max {args.std_max:g} --blur-max {args.blur_max:g} "
            f"--bias-std {args.bias_std:g} --gamma-std {args.gamma_std:g} --noise-max {args.noise_max:g}"
        ),
        "data": data,
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
