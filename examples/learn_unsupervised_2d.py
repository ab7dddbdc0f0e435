"""Unsupervised learned registration (VoxelMorph) of 2D brain slices: a network trained on image similarity.

The six ``brain2d`` slices (``../shared/data``; the script skips with a message when it is absent) are put on a
2 mm 128x128 grid centred on each slice's centre of mass. A :class:`~jaxreg.learn.RegistrationNet` (VoxelMorph
widths, stationary velocity field at half resolution, diffeomorphic) is trained with
:func:`jaxreg.learn.modes.unsupervised`: local NCC (window 9) of the warped moving slice + diffusion of the
velocity, with random intensity augmentation, on the 20 ordered pairs that do not involve r16; the 10 pairs
with r16 are held out. The script prints the held-out NCC before and after (one network evaluation per pair),
the folding, the training time, the NCC of the iterative default pipeline's greedy deformable stage on the same
centre-of-mass aligned pairs (the network's share of its gain), and writes the figure of r64 -> r16.

Usage::

    python examples/learn_unsupervised_2d.py [-o example_out] [--steps 300] [--data ../shared/data]
"""

from __future__ import annotations

import sys
from pathlib import Path

import _learn_common as C
import numpy as np

from jaxreg.learn import modes
from jaxreg.similarity import lncc, ncc


def main() -> int:
    args = C.parser(__doc__, 300).parse_args()
    images = C.brain2d_slices(Path(args.data))
    if images is None:
        print(f"skipping: {args.data}/brain2d not found (the shared data folder is absent)")
        return 0
    train_pairs = [(i, j) for i in range(1, 6) for j in range(1, 6) if i != j]
    test_pairs = [(0, j) for j in range(1, 6)] + [(j, 0) for j in range(1, 6)]
    mode = modes.unsupervised(C.GRID, similarity=lncc(9), regularizer_weight=1.0, intensity_augmentation=0.5)
    net, seconds = C.train(C.model(args.seed), mode, C.pair_batches(images, None, train_pairs, args.seed),
                           steps=args.steps, seed=args.seed, workdir=Path(args.output) / "learn_unsupervised_2d")
    ts = C.predict_pairs(net, images, test_pairs)
    import jaxreg

    before, after, fold = [], [], []
    for (i, j), t in zip(test_pairs, ts):
        m = jaxreg.Image(images[j], C.GRID)
        before.append(float(-ncc(images[i], images[j])))
        after.append(float(-ncc(images[i], jaxreg.warp(m, t, C.GRID).data)))
        fold.append(C.folding(t))
    print(f"trained {args.steps} steps in {seconds:.1f} s")
    print(f"held-out pairs (r16 <-> others): NCC {np.mean(before):.4f} -> {np.mean(after):.4f}; "
          f"max folding {max(fold):.3f} %")
    its = C.iterative([images[i] for i, _ in test_pairs], [images[j] for _, j in test_pairs])
    iterative = [float(-ncc(images[i], jaxreg.warp(jaxreg.Image(images[j], C.GRID), t, C.GRID).data))
                 for (i, j), t in zip(test_pairs, its)]
    print(C.summary("NCC", np.mean(before), np.mean(after), np.mean(iterative)))
    k = test_pairs.index((0, 4))
    print(f"figure: {C.figure(images[0], images[4], ts[k], Path(args.output) / 'learn_unsupervised_2d.png', 'unsupervised network: r64 -> r16')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
