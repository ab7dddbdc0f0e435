"""Shared pieces of the learned-registration examples (``learn_*_2d.py``): data, training, evaluation, figure.

Data come from ``../shared/data`` (the examples skip with a message when it is absent):

* ``brain2d_slices()``: the six 256x256 T1 slices of ``brain2d``, intensities in [0, 1], on a 2 mm grid of
  128x128 voxels (the network grid);
* ``labelmap_slices()``: one axial slice (through the centre of the brain labels) of each of the ten label maps
  of ``labelmaps``, on the same kind of 2 mm grid, each centred on its brain's centre of mass.

Every example also registers its held-out pairs with jaxreg's iterative default pipeline (:func:`iterative`)
and prints one comparison line (:func:`summary`): the gain of the network over the starting point, the gain of
the iterative registration, and the network's share of it.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jaxreg
from jaxreg.learn import RegistrationNet, fit, make_optimizer

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
GRID = jaxreg.Grid.centered((128, 128), 2.0)
BRAIN = (2, 3, 4, 7, 8, 10, 11, 12, 13, 16, 17, 18, 24, 26, 28, 41, 42, 43, 46, 47, 49, 50, 51, 52, 53, 54, 60)
"""Brain structures of the label maps used for Dice (FreeSurfer ids)."""


def parser(doc: str, steps: int) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("-o", "--output", default="example_out", help="output folder (default ./example_out)")
    p.add_argument("--data", default=str(DATA), help="the shared data folder (default ../shared/data)")
    p.add_argument("--steps", type=int, default=steps, help=f"training steps (default {steps})")
    p.add_argument("--seed", type=int, default=0, help="PRNG seed of the network and the training run")
    return p


def brain2d_slices(data: Path) -> np.ndarray | None:
    """``(6, 128, 128)`` float32 slices in [0, 1] (r16 first), or ``None`` when the data are absent."""
    from jaxreg.io import load_image
    from jaxreg.learn import normalize_intensity
    from jaxreg.learn.inference import place_grid
    from jaxreg.optimize import center_of_mass

    names = ("r16", "r27", "r30", "r62", "r64", "r85")
    src = Path(data) / "brain2d"
    if not all((src / f"{n}.nii.gz").is_file() for n in names):
        return None
    out = []
    for n in names:
        img = load_image(src / f"{n}.nii.gz")
        img = jaxreg.Image(normalize_intensity(img.data), img.grid)
        g = place_grid(GRID, center_of_mass(img))
        out.append(np.asarray(jaxreg.resample(img, g).data, np.float32))
    return np.stack(out)


def labelmap_slices(data: Path) -> np.ndarray | None:
    """``(10, 128, 128)`` int32 axial label slices (2 mm), or ``None`` when the data are absent."""
    from jaxreg.io import load_labels

    files = sorted((Path(data) / "labelmaps").glob("subj*_labels.nii.gz"))
    if len(files) < 4:
        return None
    out = []
    for f in files:
        lab = load_labels(f)
        d = np.asarray(lab.data)
        brain = np.isin(d, BRAIN)
        idx = np.argwhere(brain).mean(0)
        c = np.asarray(lab.grid.index_to_world(jnp.asarray(idx, jnp.float32)))
        # an axial (constant S) plane through the brain centre: a 3D grid of one slice, sampled by nearest
        g3 = jaxreg.Grid.from_spacing((128, 128, 1), 2.0, origin=(c[0] - 127.0, c[1] - 127.0, c[2]))
        sl = jaxreg.warp_labels(lab, jaxreg.Affine.identity(3), g3).data[..., 0]
        out.append(np.asarray(sl, np.int32))
    return np.stack(out)


def model(seed: int, transform: str = "velocity") -> RegistrationNet:
    """The VoxelMorph-width 2D network of the examples (field at half resolution)."""
    from flax import nnx

    return RegistrationNet(2, transform=transform, field_factor=2, rngs=nnx.Rngs(seed))


def train(net, mode, batches: Callable[[int], Any], *, steps: int, seed: int, workdir: Path, eval_batches=None, lr: float = 2e-3):
    """``fit`` with the examples' settings; returns the trained network and the wall time."""
    t0 = time.perf_counter()
    res = fit(
        net, mode.loss, make_optimizer(lr, schedule="cosine", total_steps=steps, clip_norm=1.0), batches,
        steps=steps, key=jax.random.key(seed), workdir=workdir, augment=mode.augment,
        eval_fn=mode.metrics if eval_batches is not None else None, eval_data=eval_batches,
        eval_every=max(1, steps // 4), save_every=steps, resume=False, progress=True,
        best_metric="dice", best_mode="max",
    )
    return res.model, time.perf_counter() - t0


def pair_batches(images: np.ndarray | None, labels: np.ndarray | None, pairs: list[tuple[int, int]], seed: int):
    """``train_data(start)`` cycling deterministically through random ``pairs`` (one pair per step)."""

    def gen(start: int):
        step = start
        while True:
            rng = np.random.default_rng([seed, step])
            i, j = pairs[rng.integers(len(pairs))]
            b = {}
            if images is not None:
                b["fixed"], b["moving"] = images[i][None, ..., None], images[j][None, ..., None]
            if labels is not None:
                b["fixed_labels"], b["moving_labels"] = labels[i][None], labels[j][None]
            yield b
            step += 1

    return gen


def predict_pairs(net, images: np.ndarray, pairs: list[tuple[int, int]]):
    """The trained network's transforms of ``pairs`` (one jitted call each) on :data:`GRID`."""
    from flax import nnx

    gd, st = nnx.split(net)

    @jax.jit
    def run(st, f, m):
        n = nnx.merge(gd, st)
        p = n(f[None, ..., None], m[None, ..., None])
        return jax.tree_util.tree_map(lambda a: a[0], p)

    return [net.to_transform(run(st, jnp.asarray(images[i]), jnp.asarray(images[j])), GRID) for i, j in pairs]


def figure(fixed: np.ndarray, moving: np.ndarray, transform, out: Path, title: str) -> Path | None:
    """The registration report figure of one pair (fixed, moving, warped, grid, det J)."""
    from jaxreg.plot import registration_report, save_figure

    f, m = jaxreg.Image(jnp.asarray(fixed), GRID), jaxreg.Image(jnp.asarray(moving), GRID)
    warped = jaxreg.warp(m, transform, GRID)
    field = jaxreg.to_displacement(transform, GRID)
    fig = registration_report(f, m, warped, deformation=field, jacobian=np.asarray(jaxreg.jacobian_determinant(field, GRID)), title=title)
    out.parent.mkdir(parents=True, exist_ok=True)
    return save_figure(fig, out, dpi=80)


def dice(fixed_labels: np.ndarray, moving_labels: np.ndarray, transform) -> float:
    """Mean Dice over :data:`BRAIN` of the fixed labels and the moving labels warped by ``transform``."""
    from jaxreg.evaluation import dice as _dice

    w = jaxreg.warp_labels(jaxreg.Image(jnp.asarray(moving_labels), GRID), transform, GRID).data
    return float(np.nanmean(np.asarray(_dice(jnp.asarray(fixed_labels), w, labels=BRAIN))))


def folding(transform) -> float:
    """% of voxels of :data:`GRID` with ``det J <= 0``."""
    from jaxreg.evaluation import jacobian_statistics

    return 100.0 * float(jacobian_statistics(transform, GRID).fraction_nonpositive)


def iterative(fixed, moving) -> list:
    """The iterative default pipeline's transforms of pairs ``fixed[b] <- moving[b]`` (2D, on :data:`GRID`).

    The pairs are already on one grid and start from the network's initialisation (centre-of-mass aligned or
    identity), so only the greedy deformable stage of ``PRESETS["default"]`` runs (the affine stage would start
    from somewhere else); the ``B`` pairs go to :func:`jaxreg.optimize.register` as one batch (vmapped).
    Returns ``B`` unbatched pull transforms (fixed world mm -> moving world mm).
    """
    from jaxreg.optimize import PRESETS, register

    f = [jaxreg.Image(jnp.asarray(a, jnp.float32), GRID) for a in fixed]
    m = [jaxreg.Image(jnp.asarray(a, jnp.float32), GRID) for a in moving]
    result = register(f, m, method=PRESETS["default"][1:])
    return [result.pair(b).transform for b in range(len(f))]


def summary(
    metric: str, before: float, network: float, iterative: float, *, lower_is_better: bool = False, digits: int = 4
) -> str:
    """One line comparing the network's held-out gain with the iterative default pipeline's on the same pairs.

    The gain is ``after - before`` (``before - after`` when ``lower_is_better``, e.g. an error in mm); the
    share is ``100 * gain_network / gain_iterative`` (``n/a`` when the iterative gain is not positive).
    """
    sign = -1.0 if lower_is_better else 1.0
    g1, g2 = sign * (network - before), sign * (iterative - before)
    share = f"{100.0 * g1 / g2:.0f} %" if g2 > 0 else "n/a"
    d = digits
    return (f"held-out {metric}: before {before:.{d}f}, network {network:.{d}f} (gain {g1:.{d}f}), "
            f"iterative default {iterative:.{d}f} (gain {g2:.{d}f}): "
            f"network reaches {share} of the iterative gain")
