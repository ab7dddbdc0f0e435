"""Weakly supervised learned registration: a network trained on label overlap (Hu et al. 2018), 2D.

Axial slices of the ten ``labelmaps`` (``../shared/data``) on a 2 mm 128x128 grid; each slice gets one fixed
T1-like image made from its labels (:func:`jaxreg.learn.synthesize_image` with one key for all, so every image
has the same contrast). A :class:`~jaxreg.learn.RegistrationNet` (velocity field at half resolution) is trained
with :func:`jaxreg.learn.modes.weakly_supervised`: ``1 - soft Dice`` of the warped one-hot brain labels + a small
MSE image term + diffusion, on pairs of the first eight subjects; the pairs of subjects 9 and 10 with the
others are held out. Prints the held-out mean Dice over the brain structures before and after and the folding,
the Dice of the iterative default pipeline's greedy deformable stage on the same image pairs (it sees the
images, not the labels; the network's share of its gain), and writes a figure.

Usage::

    python examples/learn_weakly_supervised_2d.py [-o example_out] [--steps 300] [--data ../shared/data]
"""

from __future__ import annotations

import sys
from pathlib import Path

import _learn_common as C
import jax
import jax.numpy as jnp
import numpy as np

from jaxreg.learn import modes, relabel, synthesize_image


def main() -> int:
    args = C.parser(__doc__, 300).parse_args()
    labels = C.labelmap_slices(Path(args.data))
    if labels is None:
        print(f"skipping: {args.data}/labelmaps not found (the shared data folder is absent)")
        return 0
    values = sorted(set(np.unique(labels).tolist()))
    contrast = jax.random.key(7)  # one key: the same intensity per label in every image
    images = np.stack([
        np.asarray(synthesize_image(contrast, relabel(jnp.asarray(lab), values), len(values), grid=C.GRID, noise_std_max=0.0, bias_std=0.0))
        for lab in labels
    ])
    train_pairs = [(i, j) for i in range(8) for j in range(8) if i != j]
    test_pairs = [(i, j) for i in (8, 9) for j in range(8)] + [(j, i) for i in (8, 9) for j in range(8)]
    mode = modes.weakly_supervised(C.GRID, label_values=C.BRAIN, image_weight=0.5, regularizer_weight=0.2)
    net, seconds = C.train(C.model(args.seed), mode, C.pair_batches(images, labels, train_pairs, args.seed),
                           steps=args.steps, seed=args.seed, workdir=Path(args.output) / "learn_weakly_supervised_2d")
    ts = C.predict_pairs(net, images, test_pairs)
    from jaxreg import Affine

    before = [C.dice(labels[i], labels[j], Affine.identity(2)) for i, j in test_pairs]
    after = [C.dice(labels[i], labels[j], t) for (i, j), t in zip(test_pairs, ts)]
    fold = [C.folding(t) for t in ts]
    print(f"trained {args.steps} steps in {seconds:.1f} s")
    print(f"held-out pairs ({len(test_pairs)}): mean Dice over the brain labels {np.mean(before):.4f} -> "
          f"{np.mean(after):.4f}; max folding {max(fold):.3f} %")
    its = C.iterative([images[i] for i, _ in test_pairs], [images[j] for _, j in test_pairs])
    iterative = [C.dice(labels[i], labels[j], t) for (i, j), t in zip(test_pairs, its)]
    print(C.summary("Dice", np.mean(before), np.mean(after), np.mean(iterative)))
    print(f"figure: {C.figure(images[8], images[0], ts[0], Path(args.output) / 'learn_weakly_supervised_2d.png', 'weakly supervised network: subj01 -> subj09 (slice)')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
