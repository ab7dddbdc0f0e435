"""Label-driven synthesis (SynthMorph): a contrast-agnostic network trained on label maps only, 2D.

Axial slices of the ``labelmaps`` (``../shared/data``) on a 2 mm 128x128 grid. At every step both label
slices are deformed by their own random diffeomorphism (up to 6 mm; half the pairs are two deformed copies of
one slice) and turned into images with a random intensity per label, blur, bias field and noise
(:func:`jaxreg.learn.modes.synthesis`; the two images of a pair share the intensity model, which changes from
pair to pair); the network (velocity field at half resolution) is trained on the soft Dice of the warped brain
labels + local NCC of the synthetic images + diffusion; it never sees a real image.
Held out: pairs involving subjects 9 and 10, evaluated on images synthesised with new keys (Dice; one new
intensity model per pair), and the real
``brain2d`` T1 pair r64 -> r16 (NCC), a contrast and subjects the network never saw. The iterative default
pipeline's greedy deformable stage registers the same synthetic image pairs and the same T1 pair (the network's
share of its Dice gain is printed).

Usage::

    python examples/learn_synthmorph_2d.py [-o example_out] [--steps 1000] [--data ../shared/data]
"""

from __future__ import annotations

import sys
from pathlib import Path

import _learn_common as C
import jax
import jax.numpy as jnp
import numpy as np

from jaxreg.learn import modes
from jaxreg.similarity import lncc, ncc


def main() -> int:
    args = C.parser(__doc__, 1000).parse_args()
    labels = C.labelmap_slices(Path(args.data))
    if labels is None:
        print(f"skipping: {args.data}/labelmaps not found (the shared data folder is absent)")
        return 0
    values = sorted(set(np.unique(labels).tolist()))
    mode = modes.synthesis(
        C.GRID, label_values=C.BRAIN, synthesis_labels=values, regularizer_weight=1.0, deformation_mm=6.0,
        same_subject=0.5, same_contrast=True, image_weight=1.0, similarity=lncc(9),
    )
    train_pairs = [(i, j) for i in range(8) for j in range(8) if i != j]
    test_pairs = [(i, j) for i in (8, 9) for j in range(8)] + [(j, i) for i in (8, 9) for j in range(8)]
    net, seconds = C.train(C.model(args.seed), mode, C.pair_batches(None, labels, train_pairs, args.seed),
                           steps=args.steps, seed=args.seed, workdir=Path(args.output) / "learn_synthmorph_2d")
    # held-out label pairs, images synthesised with keys never used in training (no extra deformation)
    batch = {"fixed_labels": jnp.asarray(labels[[i for i, _ in test_pairs]]), "moving_labels": jnp.asarray(labels[[j for _, j in test_pairs]])}
    # (one new intensity model per pair, shared by its two images, as in training)
    val = modes.synthesis(C.GRID, label_values=C.BRAIN, synthesis_labels=values, same_contrast=True).augment(jax.random.key(10_000 + args.seed), batch)
    from flax import nnx

    gd, st = nnx.split(net)
    run = jax.jit(lambda st, f, m: nnx.merge(gd, st)(f, m))
    pred = run(st, val["fixed"], val["moving"])
    from jaxreg import Affine

    before, after, fold = [], [], []
    for b, (i, j) in enumerate(test_pairs):
        t = net.to_transform(jax.tree_util.tree_map(lambda a, b=b: a[b], pred), C.GRID)
        before.append(C.dice(labels[i], labels[j], Affine.identity(2)))
        after.append(C.dice(labels[i], labels[j], t))
        fold.append(C.folding(t))
    print(f"trained {args.steps} steps in {seconds:.1f} s")
    print(f"held-out label pairs ({len(test_pairs)}, synthetic images): mean Dice {np.mean(before):.4f} -> "
          f"{np.mean(after):.4f}; max folding {max(fold):.3f} %")
    its = C.iterative(val["fixed"][..., 0], val["moving"][..., 0])
    iterative = [C.dice(labels[i], labels[j], t) for (i, j), t in zip(test_pairs, its)]
    print(C.summary("Dice", np.mean(before), np.mean(after), np.mean(iterative)))
    images = C.brain2d_slices(Path(args.data))
    if images is not None:
        t = C.predict_pairs(net, images, [(0, 4)])[0]
        import jaxreg

        warped = jaxreg.warp(jaxreg.Image(images[4], C.GRID), t, C.GRID).data
        t_it = C.iterative([images[0]], [images[4]])[0]
        warped_it = jaxreg.warp(jaxreg.Image(images[4], C.GRID), t_it, C.GRID).data
        print(f"real T1 pair r64 -> r16 (never seen): NCC {float(-ncc(images[0], images[4])):.4f} -> "
              f"{float(-ncc(images[0], warped)):.4f}, folding {C.folding(t):.3f} % "
              f"(iterative default: NCC {float(-ncc(images[0], warped_it)):.4f})")
        print(f"figure: {C.figure(images[0], images[4], t, Path(args.output) / 'learn_synthmorph_2d.png', 'SynthMorph-style network on real T1: r64 -> r16')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
