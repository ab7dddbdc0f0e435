"""Target fields computed by jaxreg's own engine: supervision for learned registration ("category B").

The lecture's supervised family obtains the target transform of each training pair "using a classical
registration method". :func:`engine_targets` runs :func:`jaxreg.optimize.register` (a greedy SyN-like stage,
the pairs batched with ``jax.vmap`` as every batch of ``register`` is) on every ordered pair of the training
volumes and returns the displacement of each result on the network grid. When label maps are given, the
engine registers the *label maps themselves*: each map becomes a ``channels``-vector image through a fixed
random embedding of its labels (one unit vector per label, background zero), compared with the mean squared
difference. Two maps then match exactly where their labels agree, whatever contrast a scanner would give them,
so a network trained on images synthesised from the maps (:func:`jaxreg.learn.modes.supervised_engine`) learns
a contrast-agnostic registration from the engine's fields. Without label maps the intensity images are
registered with local NCC.

The fields are computed once and cached: ``cache_dir/targets-<hash>.npy`` where the hash covers the data
(bytes of every volume), the grid and every setting, written to a temporary file and renamed (a killed run
leaves no partial cache); a resumed training run finds and memory-maps it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxreg.core.grid import Grid, Image

__all__ = ["DEFAULT_TARGET_LEVELS", "compose_target", "engine_targets", "label_embedding", "target_stages"]

DEFAULT_TARGET_LEVELS = ((2, 40), (1, 20))
"""``(shrink, iterations)`` per level of the engine's greedy stage computing the targets."""


def label_embedding(num_labels: int, channels: int, *, seed: int = 0) -> np.ndarray:
    """Fixed random unit vectors for labels ``1..num_labels`` (row 0, the background, is zero).

    Args:
      num_labels: number of labels ``L`` (the background excluded).
      channels: ``C``, the dimension of the vectors.
      seed: NumPy seed of the draw.

    Returns:
      ``(L + 1, C)`` float32; rows ``1..L`` have unit length, so two different labels differ by
      ``|e_a - e_b|^2 = 2 - 2 cos(a, b)`` and a label differs from the background by exactly 1.
    """
    if not isinstance(num_labels, (int, np.integer)) or num_labels < 1:
        raise ValueError(f"num_labels: expected a positive int, got {num_labels!r}")
    if not isinstance(channels, (int, np.integer)) or channels < 1:
        raise ValueError(f"channels: expected a positive int, got {channels!r}")
    e = np.random.default_rng(int(seed)).normal(size=(int(num_labels) + 1, int(channels)))
    e /= np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    e[0] = 0.0
    return e.astype(np.float32)


def target_stages(levels: Sequence[Sequence[int]] = DEFAULT_TARGET_LEVELS, *, similarity: Any = "mse") -> tuple:
    """The engine pipeline of the targets: one symmetric greedy SVF stage (the ``default`` preset's method).

    Args:
      levels: ``(shrink, iterations)`` per level, coarse to fine (shrink factors relative to the network grid).
      similarity: the greedy force's similarity (``"mse"`` for embedded label maps).

    Returns:
      A one-stage pipeline for :func:`jaxreg.optimize.register`.
    """
    from jaxreg.optimize import Greedy, Level, Stage

    lv = _check_levels(levels)
    return (Stage(Greedy(similarity, step=0.5), None, tuple(Level(s, 0.0, i) for s, i in lv), name="targets"),)


def compose_target(displacement: jax.Array, grid: Grid, *, phi: Any = None, psi: Any = None) -> jax.Array:
    """The target of a pair whose fixed side is deformed by ``phi`` and moving side by ``psi``.

    If ``T(x) = x + u(x)`` maps fixed ``F`` onto moving ``M`` (pull, ``F(x) ~ M(T(x))``), then ``F o phi``
    and ``M o psi`` correspond through ``T' = psi^-1 o T o phi``:
    ``u'(x) = psi^-1(phi(x) + u(phi(x))) - x``, with ``u`` linearly interpolated (edge values beyond the grid).

    Args:
      displacement: ``u``, ``(*grid.shape, ndim)`` mm.
      grid: its grid.
      phi: transform of the fixed side (``None``: identity).
      psi: transform of the moving side (``None``: identity), inverted by :func:`jaxreg.transforms.invert`
        (``exp(-v)`` for a velocity field, exact for linear maps).

    Returns:
      ``u'``, ``(*grid.shape, ndim)`` mm, the dtype of ``displacement``.
    """
    from jaxreg.transforms import invert
    from jaxreg.warp import sample_points

    x = grid.world_coords()
    pts = x if phi is None else phi.sample_grid(grid)
    y = pts + sample_points(Image(displacement, grid), pts, order=1, mode="nearest")
    if psi is not None:
        y = invert(psi)(y)
    return (y - x).astype(displacement.dtype)


def _check_levels(levels: Any) -> tuple[tuple[int, int], ...]:
    try:
        out = tuple((int(s), int(i)) for s, i in levels)
    except (TypeError, ValueError):
        raise ValueError(f"levels: expected (shrink, iterations) pairs, got {levels!r}") from None
    if not out or any(s < 1 or i < 0 for s, i in out):
        raise ValueError(f"levels: expected at least one (shrink >= 1, iterations >= 0) pair, got {levels!r}")
    return out


def _digest(arrays: Sequence[np.ndarray | None], settings: dict) -> str:
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for a in arrays:
        if a is None:
            h.update(b"none")
            continue
        a = np.ascontiguousarray(a)
        h.update(str((a.shape, a.dtype.str)).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def engine_targets(
    grid: Grid,
    *,
    labels: np.ndarray | None = None,
    images: np.ndarray | None = None,
    label_values: Sequence[int] | None = None,
    levels: Sequence[Sequence[int]] = DEFAULT_TARGET_LEVELS,
    channels: int = 4,
    batch_size: int = 8,
    cache_dir: str | os.PathLike | None = None,
    log: Callable[[str], None] | None = None,
) -> np.ndarray:
    """Displacements of the engine's registration of every ordered pair of training volumes.

    For ``i != j``, ``T_ij = register(F=item_i, M=item_j)`` (pull: ``T_ij`` maps points of item ``i`` to
    corresponding points of item ``j``) and ``targets[i, j] = T_ij(x) - x`` at the voxel centres ``x`` of
    ``grid`` (world mm); ``targets[i, i] = 0``. With ``labels`` the items are the embedded label maps
    (:func:`label_embedding`, mean squared difference; labels not in ``label_values`` count as background),
    otherwise the images (local NCC, window 5). The pairs go through :func:`jaxreg.optimize.register` in
    batches of ``batch_size`` (one vmapped compiled call per level and batch).

    Args:
      grid: the network grid every volume is sampled on (static).
      labels: ``(N, *grid.shape)`` int label maps (preferred), or ``None``.
      images: ``(N, *grid.shape)`` float images, used when ``labels`` is ``None``.
      label_values: the labels embedded (required with ``labels``).
      levels: ``(shrink, iterations)`` of the greedy levels (:func:`target_stages`).
      channels: dimension of the label embedding.
      batch_size: pairs per batched ``register`` call.
      cache_dir: folder of the cache file (created); ``None`` disables caching.
      log: progress lines.

    Returns:
      ``(N, N, *grid.shape, ndim)`` float32 displacements in mm (a read-only memory map when read from the
      cache).

    Raises:
      ValueError: no data, shapes that do not match ``grid``, ``labels`` without ``label_values``.
    """
    from jaxreg.learn.losses import displacement_on_grid
    from jaxreg.learn.synthesis import relabel
    from jaxreg.optimize import register

    if not isinstance(grid, Grid):
        raise TypeError(f"grid: expected a jaxreg Grid, got {type(grid).__name__}")
    data = labels if labels is not None else images
    if data is None:
        raise ValueError("labels, images: expected label maps or images of the training volumes")
    data = np.asarray(data)
    name = "labels" if labels is not None else "images"
    if data.ndim != grid.ndim + 1 or tuple(data.shape[1:]) != tuple(grid.shape) or data.shape[0] < 2:
        raise ValueError(f"{name}: expected (N >= 2, *{tuple(grid.shape)}) volumes on the grid, got {data.shape}")
    if labels is not None:
        if not label_values:
            raise ValueError("label_values: the label maps' labels to embed are required with labels")
        values = tuple(int(v) for v in label_values)
    else:
        values = ()
    lv = _check_levels(levels)
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    settings = {
        "version": 1, "source": name, "levels": lv, "channels": int(channels), "values": values,
        "grid": [list(grid.shape), np.asarray(grid.affine).round(6).tolist()],
    }  # fmt: skip
    n = data.shape[0]
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"targets-{_digest([data], settings)}.npy"
        if path.is_file():
            out = np.load(path, mmap_mode="r")
            if out.shape == (n, n, *grid.shape, grid.ndim):
                if log:
                    log(f"targets:    {n * (n - 1)} engine fields read from {path}")
                return out

    if labels is not None:
        emb = label_embedding(len(values), channels)
        # values[k] -> row k + 1, every other value (the background too) -> row 0
        idx = (relabel(data, values, unknown=len(values)) + 1) % (len(values) + 1)
        vols = [Image(emb[idx[k]], grid) for k in range(n)]
        stages = target_stages(lv, similarity="mse")
    else:
        vols = [Image(np.asarray(data[k], np.float32), grid) for k in range(n)]
        stages = target_stages(lv, similarity="lncc(window=5)")
    pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
    out = np.zeros((n, n, *grid.shape, grid.ndim), np.float32)
    t0 = time.perf_counter()
    for start in range(0, len(pairs), int(batch_size)):
        chunk = pairs[start : start + int(batch_size)]
        while len(chunk) < int(batch_size) and len(pairs) > int(batch_size):  # one batch shape: one compilation
            chunk = chunk + [chunk[-1]]
        res = register([vols[i] for i, _ in chunk], [vols[j] for _, j in chunk], method=stages)
        for b, (i, j) in enumerate(chunk):
            out[i, j] = np.asarray(jax.device_get(displacement_on_grid(res.pair(b).transform, grid)))
        if log:
            done = min(start + int(batch_size), len(pairs))
            log(f"targets:    {done}/{len(pairs)} pairs registered by the engine ({time.perf_counter() - t0:.0f} s)")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".targets-", suffix=".npy", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, out)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return out
