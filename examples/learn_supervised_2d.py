"""Supervised learned registration on synthetic deformations (Eppenhof & Pluim 2018), 2D brain slices.

Each training step takes one ``brain2d`` slice (r27..r85; r16 is held out), draws a random smooth
diffeomorphism ``T*`` on the device (:func:`jaxreg.learn.random_deformation`, up to 6 mm), makes the fixed
slice ``moving o T*`` with independent intensity augmentation of both, and trains a
:class:`~jaxreg.learn.RegistrationNet` (velocity field at half resolution) on ``mean ||T(x) - T*(x)||^2``
(:func:`jaxreg.learn.modes.supervised`). The script prints the mean displacement error (mm) on 8 new random
deformations of the held-out r16 before (identity) and after, the folding, the error of the iterative default
pipeline's greedy deformable stage on the same eight pairs (the network's share of its error reduction), and
writes a figure.

Usage::

    python examples/learn_supervised_2d.py [-o example_out] [--steps 300] [--data ../shared/data]
"""

from __future__ import annotations

import sys
from pathlib import Path

import _learn_common as C
import jax
import jax.numpy as jnp
import numpy as np

from jaxreg.learn import displacement_on_grid, modes


def main() -> int:
    args = C.parser(__doc__, 300).parse_args()
    images = C.brain2d_slices(Path(args.data))
    if images is None:
        print(f"skipping: {args.data}/brain2d not found (the shared data folder is absent)")
        return 0
    mode = modes.supervised(C.GRID, max_displacement_mm=6.0, smoothness_mm=12.0, intensity_augmentation=0.5)

    def batches(start: int):
        step = start
        while True:
            i = 1 + np.random.default_rng([args.seed, step]).integers(5)
            yield {"moving": images[i][None, ..., None]}
            step += 1

    net, seconds = C.train(C.model(args.seed), mode, batches, steps=args.steps, seed=args.seed,
                           workdir=Path(args.output) / "learn_supervised_2d")
    # held out: r16 under 8 new deformations (keys never used in training)
    test = mode.augment(jax.random.key(10_000 + args.seed), {"moving": jnp.repeat(jnp.asarray(images[0])[None, ..., None], 8, 0)})
    from flax import nnx

    gd, st = nnx.split(net)
    pred = jax.jit(lambda st, f, m: nnx.merge(gd, st)(f, m))(st, test["fixed"], test["moving"])
    mask = images[0] > 0.05
    err0, err1, fold = [], [], []
    for b in range(8):
        t = net.to_transform(jax.tree_util.tree_map(lambda a, b=b: a[b], pred), C.GRID)
        true = np.asarray(test["displacement"][b])
        est = np.asarray(displacement_on_grid(t, C.GRID))
        err0.append(np.linalg.norm(true, axis=-1)[mask].mean())
        err1.append(np.linalg.norm(est - true, axis=-1)[mask].mean())
        fold.append(C.folding(t))
    print(f"trained {args.steps} steps in {seconds:.1f} s")
    print(f"held-out r16, 8 random deformations: mean error in the head {np.mean(err0):.2f} mm (identity) -> "
          f"{np.mean(err1):.2f} mm; max folding {max(fold):.3f} %")
    its = C.iterative(test["fixed"][..., 0], test["moving"][..., 0])
    err2 = [
        np.linalg.norm(np.asarray(displacement_on_grid(t, C.GRID) - test["displacement"][b]), axis=-1)[mask].mean()
        for b, t in enumerate(its)
    ]
    print(C.summary("mean error in the head (mm)", np.mean(err0), np.mean(err1), np.mean(err2),
                    lower_is_better=True, digits=2))
    t0 = net.to_transform(jax.tree_util.tree_map(lambda a: a[0], pred), C.GRID)
    print(f"figure: {C.figure(np.asarray(test['fixed'][0, ..., 0]), np.asarray(test['moving'][0, ..., 0]), t0, Path(args.output) / 'learn_supervised_2d.png', 'supervised network on a synthetic deformation of r16')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
