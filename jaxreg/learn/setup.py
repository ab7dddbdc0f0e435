"""Set-up of a training run from a checked configuration: data on the network grid, the mode, model and optimiser.

``jaxreg train`` reads a TOML file into a configuration dict (:func:`jaxreg.cli.learn.read_train_config`) and
calls :func:`build_training`, which

1. places the network grid (``[data] shape`` voxels of ``spacing`` mm) on the first volume (:func:`network_grid`);
2. loads every training and validation volume onto it, pre-aligned (:func:`load_aligned`: as they are, by
   centres of mass, or affinely onto a reference: a least-squares fit of the labels' centroids when label maps
   are given, else an affine registration);
3. builds the training mode from the modes table :data:`jaxreg.learn.modes.MODES` (:func:`build_mode`: the
   common options the mode's factory takes, plus the ``[mode]`` table, checked against the factory's signature
   by :func:`check_mode_options`);
4. builds the network, the optimiser and the data factories, and returns them as a :class:`TrainingSetup` for
   :func:`jaxreg.learn.train.fit`.

:func:`load_trained` is the other end: the model, training grid and metadata of a trained work folder.

Adding a training mode is one factory in :mod:`jaxreg.learn.modes` and one entry of ``MODES``; nothing here
switches on mode names.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "COMMON_MODE_OPTIONS",
    "TrainingSetup",
    "build_mode",
    "build_training",
    "check_mode_options",
    "label_centroids",
    "load_aligned",
    "load_trained",
    "network_grid",
]

COMMON_MODE_OPTIONS = ("similarity", "regularizer_weight", "label_values", "bidirectional", "synthesis_labels")
"""Mode options set from the ``[train]`` and ``[data]`` tables; each is passed to the modes whose factory takes
it, so they cannot be set in ``[mode]``."""


class TrainingSetup(NamedTuple):
    """What :func:`jaxreg.learn.train.fit` needs for one training run (see :func:`build_training`).

    Attributes:
      grid: the network grid (static).
      model: the :class:`~jaxreg.learn.networks.RegistrationNet`.
      mode: the :class:`~jaxreg.learn.modes.TrainingMode`.
      optimizer: the optax optimiser.
      train_data: ``train_data(start_step) -> PairLoader`` of training batches.
      eval_data: ``eval_data() -> [batch, ...]`` of validation pairs.
      metadata: JSON values saved with the model (grid, labels, mode, alignment).
    """

    grid: Any
    model: Any
    mode: Any
    optimizer: Any
    train_data: Callable[[int], Any]
    eval_data: Callable[[], list]
    metadata: dict


def _similarity(spec: Any, window: int) -> Callable:
    """``[train] similarity`` through the term registry (:mod:`jaxreg.terms`); a bare ``"lncc"`` takes ``window``."""
    from jaxreg.terms import parse

    if spec == "lncc":
        spec = {"name": "lncc", "window": int(window)}
    return parse(spec, "similarity", argument="[train] similarity")


def network_grid(shape: Sequence[int], spacing: Any, reference: Any) -> Any:
    """The training grid: ``shape`` voxels of ``spacing`` mm, axis-aligned, centred on ``reference``'s centre.

    Args:
      shape: voxels per axis (2 or 3 axes).
      spacing: voxel size in mm, one number or one per axis.
      reference: a :class:`~jaxreg.core.grid.Grid` (or anything :func:`~jaxreg.learn.inference.place_grid`
        centres on).
    """
    from jaxreg.core.grid import Grid
    from jaxreg.learn.inference import place_grid

    n = len(shape)
    sp = np.broadcast_to(np.asarray(spacing, np.float64), (n,))
    return place_grid(Grid.from_spacing(tuple(shape), tuple(sp)), reference)


def _weight_image(
    image_path: str | None, label_path: str | None, centroid_labels: Sequence[int] | None, label_image: Any = None
) -> Any:
    """The image whose centre of mass (and, for ``align="affine"``, whose shape) places an item (``label_image``:
    the label map of ``label_path`` when the caller has read it already)."""
    from jaxreg.core.grid import Image
    from jaxreg.io import load_image, load_labels
    from jaxreg.learn.inference import normalize_image

    if label_path is not None:
        src = load_labels(label_path) if label_image is None else label_image
        lab = np.asarray(src.data)
        sel = np.isin(lab, np.asarray(centroid_labels)) if centroid_labels else lab != 0
        if not sel.any():
            raise ValueError(f"{label_path}: none of the labels {list(centroid_labels or [])} is present")
        return Image(sel.astype(np.float32), src.grid)
    return normalize_image(load_image(image_path))


@dataclasses.dataclass(frozen=True)
class _Reference:
    """What ``align="affine"`` aligns items onto: the reference's weight image and its label centroids."""

    weight: Any
    centroids: dict


def label_centroids(labels: Any, values: Sequence[int] | None = None) -> dict[int, np.ndarray]:
    """World centroid (mm) of each label of a label map.

    Args:
      labels: a label :class:`~jaxreg.core.grid.Image` (integer data on its grid).
      values: the labels wanted (default every non-zero label present); absent ones are left out.

    Returns:
      ``{label: (ndim,) float64 world mm}`` for every wanted label with at least one voxel:
      ``c_l = A [mean_{x: L(x)=l} x, 1]`` with ``A`` the grid's voxel-to-world affine.
    """
    lab = np.asarray(labels.data)
    flat = lab.reshape(-1).astype(np.int64)
    if flat.size and flat.min() < 0:
        raise ValueError("labels: expected non-negative integer labels")
    wanted = [int(v) for v in values] if values else [int(v) for v in np.unique(flat) if v != 0]
    n = int(max(flat.max(initial=0), max(wanted, default=0))) + 1
    counts = np.bincount(flat, minlength=n)
    sums = np.empty((n, lab.ndim))
    for a, m in enumerate(lab.shape):  # one axis at a time: never the whole (ndim, *shape) index array
        axis_shape = [1] * lab.ndim
        axis_shape[a] = m
        coord = np.broadcast_to(np.arange(m, dtype=np.float64).reshape(axis_shape), lab.shape)
        sums[:, a] = np.bincount(flat, weights=coord.ravel(), minlength=n)
    aff = labels.grid.affine
    out = {}
    for v in wanted:
        if 0 <= v < n and counts[v] > 0:
            out[v] = aff[: lab.ndim, : lab.ndim] @ (sums[v] / counts[v]) + aff[: lab.ndim, lab.ndim]
    return out


def load_aligned(
    images: Sequence[str],
    labels: Sequence[str],
    grid: Any,
    *,
    align: str,
    centroid_labels: Sequence[int] | None = None,
    reference: Any = None,
) -> tuple[np.ndarray | None, np.ndarray | None, Any]:
    """Volumes (and their label maps) resampled onto ``grid``'s shape and spacing, pre-aligned.

    The *weight image* of an item is its label map's ``centroid_labels`` voxels (or non-zero voxels) when label
    maps are given, else its normalised intensities.

    * ``align="none"``: every item is sampled on ``grid`` as it is.
    * ``align="com"``: each item gets its own copy of the grid centred on its weight image's centre of mass (a
      translation-only pre-alignment: what :func:`jaxreg.learn.inference.predict` does to a new pair with
      ``init="com"``).
    * ``align="affine"``: each item is mapped affinely onto the reference (``reference``, or the first item) and
      sampled through that affine on the grid centred on the reference's centre of mass (pairs then differ by
      non-linear deformations only, as when ``predict`` runs with ``init="affine"``). With label maps the affine
      is the least-squares fit (:func:`jaxreg.points.fit_affine`) of the world centroids of the labels both maps
      contain (at least ``ndim + 2``): closed form, and it leaves 2-4 mm between the structures of different
      brains where a registration of the binary masks left 10-12 mm (benchmarks/README.md, issue 11). Without
      label maps (or too few common labels) the weight images are registered affinely (NCC, coarse levels).

    Args:
      images: intensity image files (may be empty).
      labels: label map files, in the same order (may be empty).
      grid: the network grid (:func:`network_grid`).
      align: ``"none"``, ``"com"`` or ``"affine"``.
      centroid_labels: the labels whose voxels place an item (default: every non-zero label).
      reference: the reference that an earlier call returned (``align="affine"``; default the first item).

    Returns:
      ``(images (N, *shape) or None, labels (N, *shape) int32 or None, reference or None)``; pass the reference
      back to align further volumes (validation) onto the same one.
    """
    from jaxreg.io import load_image, load_labels
    from jaxreg.learn import data as ld
    from jaxreg.learn.inference import normalize_image, place_grid
    from jaxreg.optimize import Level, center_of_mass, preset, register
    from jaxreg.points import fit_affine
    from jaxreg.warp import warp, warp_labels

    if align not in ("none", "com", "affine"):
        raise ValueError(f"align: expected 'none', 'com' or 'affine', got {align!r}")
    if align == "none":
        img = ld.load_volumes(images, grid, labels=False) if images else None
        lab = ld.load_volumes(labels, grid, labels=True) if labels else None
        return img, lab, None
    n = max(len(images), len(labels))
    out_i, out_l = [], []
    for k in range(n):
        # the affine branch reads each label map once (its weight image, its centroids, the warp)
        lab_img = load_labels(labels[k]) if labels and align == "affine" else None
        weight = _weight_image(
            images[k] if images else None, labels[k] if labels else None, centroid_labels, lab_img
        )
        if align == "com":
            g = place_grid(grid, center_of_mass(weight))
            if images:
                out_i.append(ld.load_volumes([images[k]], g, labels=False)[0])
            if labels:
                out_l.append(ld.load_volumes([labels[k]], g, labels=True)[0])
            continue
        cents = label_centroids(lab_img, centroid_labels) if labels else {}
        if reference is None:
            reference = _Reference(weight, cents)
        g = place_grid(grid, center_of_mass(reference.weight))
        common = sorted(set(cents) & set(reference.centroids))
        if len(common) >= grid.ndim + 2:
            a = fit_affine(
                np.stack([reference.centroids[v] for v in common]), np.stack([cents[v] for v in common])
            )
        else:
            stages = preset("affine", linear_levels=(Level(8, 0.0, 60), Level(4, 0.0, 40)), init="com")
            a = register(reference.weight, weight, method=stages).transform
        if images:
            out_i.append(np.asarray(warp(normalize_image(load_image(images[k])), a, g).data, np.float32))
        if labels:
            out_l.append(np.asarray(warp_labels(lab_img, a, g).data, np.int32))
    return (np.stack(out_i) if out_i else None), (np.stack(out_l) if out_l else None), reference


def _settable(name: str) -> dict[str, inspect.Parameter]:
    """The ``[mode]`` options of mode ``name``: its factory's keyword options that are neither set from
    ``[train]``/``[data]`` (:data:`COMMON_MODE_OPTIONS`) nor functions (a TOML file cannot hold one)."""
    from jaxreg.learn.modes import MODES

    params = inspect.signature(MODES[name]).parameters
    return {
        k: p
        for k, p in params.items()
        if k != "grid" and k not in COMMON_MODE_OPTIONS and (p.default is p.empty or not callable(p.default))
    }


def check_mode_options(name: str, options: Mapping[str, Any]) -> None:
    """Check the ``[mode]`` options of a training mode against its factory's signature.

    Args:
      name: a key of :data:`jaxreg.learn.modes.MODES`.
      options: keyword options for the factory (e.g. ``{"deformation_mm": 6.0}``).

    Raises:
      ValueError: an unknown mode, an option the factory does not take, one set elsewhere
        (:data:`COMMON_MODE_OPTIONS`), or a value whose type does not match the option's default (a number for
        a number, true/false for a flag). The message starts with ``[mode]``.
    """
    from jaxreg.learn.modes import MODES

    if name not in MODES:
        raise ValueError(f"[train] mode: expected one of {', '.join(MODES)}, got {name!r}")
    allowed = _settable(name)
    for key, value in options.items():
        if key in COMMON_MODE_OPTIONS:
            raise ValueError(f"[mode] {key}: set from [train]/[data], not in [mode]")
        if key not in allowed:
            raise ValueError(
                f"[mode] {key}: not an option of the {name!r} mode (options: {', '.join(allowed) or 'none'})"
            )
        default = allowed[key].default
        if isinstance(default, bool):
            ok = isinstance(value, bool)
            kind = "true or false"
        elif isinstance(default, (int, float)):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)
            kind = "a number"
        elif isinstance(default, (tuple, list)):
            ok = isinstance(value, list)
            kind = "a list"
        else:
            ok, kind = True, ""
        if not ok:
            raise ValueError(f"[mode] {key}: expected {kind}, got {value!r}")


def build_mode(
    name: str,
    grid: Any,
    *,
    similarity: Callable,
    regularizer_weight: float,
    label_values: Sequence[int] | None,
    bidirectional: bool,
    synthesis_labels: Sequence[int] | None = None,
    options: Mapping[str, Any] | None = None,
) -> Any:
    """The training mode ``name`` from :data:`jaxreg.learn.modes.MODES`.

    Each common option (:data:`COMMON_MODE_OPTIONS`) is passed to the factory when its signature takes it
    (e.g. ``supervised`` takes no ``bidirectional``), then ``options`` (checked by :func:`check_mode_options`).

    Args:
      name: the mode's key in ``MODES``.
      grid: the network grid (static).
      similarity: the image term's similarity.
      regularizer_weight: the regulariser's weight.
      label_values: the labels of the Dice terms and the validation Dice.
      bidirectional: symmetrise the loss with the inverse transform (modes that support it).
      synthesis_labels: every label value that gets its own synthetic intensity (``synthesis``).
      options: more keyword options of the factory (the ``[mode]`` table).

    Returns:
      :class:`~jaxreg.learn.modes.TrainingMode`.
    """
    from jaxreg.learn.modes import MODES

    options = dict(options or {})
    check_mode_options(name, options)
    factory = MODES[name]
    params = inspect.signature(factory).parameters
    common = {
        "similarity": similarity,
        "regularizer_weight": regularizer_weight,
        "label_values": label_values,
        "bidirectional": bidirectional,
        "synthesis_labels": synthesis_labels,
    }
    kwargs = {k: v for k, v in common.items() if k in params}
    return factory(grid, **kwargs, **options)


def build_training(cfg: dict[str, Any], *, log: Callable[[str], None] = print) -> TrainingSetup:
    """Load the data and build the model, mode, optimiser and data factories of a training run.

    Args:
      cfg: a checked configuration (:func:`jaxreg.cli.learn.read_train_config`): ``{"data": {"images",
        "labels", "validation_images", "validation_labels" (file lists), "shape", "spacing", "align", "pairs",
        "atlas", "label_values", "synthesis_labels"}, "model": RegistrationNet options, "train": {"mode",
        "steps", "batch_size", "learning_rate", "schedule", "warmup_steps", "clip_norm", "seed", "similarity",
        "window", "regularizer_weight", "bidirectional", "validation_pairs", ...}, "mode": factory options,
        "config_path": str}``.
      log: where progress lines go.

    Returns:
      :class:`TrainingSetup`. Without validation files the last 2 training volumes are held out.

    Raises:
      ValueError: ``[data] shape`` has another number of axes than the images, too few volumes to hold out
        validation pairs, bad ``[mode]`` options, and the errors of loading the volumes.
    """
    from flax import nnx

    from jaxreg.io import load_image
    from jaxreg.learn import data as ld
    from jaxreg.learn.networks import RegistrationNet
    from jaxreg.learn.train import make_optimizer

    d, t = cfg["data"], cfg["train"]
    check_mode_options(t["mode"], cfg["mode"])
    similarity = _similarity(t["similarity"], t["window"])  # checked before any volume is read
    first = (d["images"] or d["labels"])[0]
    ref = load_image(first).grid
    if len(d["shape"]) != ref.ndim:
        raise ValueError(f"[data] shape: {len(d['shape'])} axes for {ref.ndim}-D images")
    grid = network_grid(d["shape"], d["spacing"], ref)
    t0 = time.perf_counter()
    images, labels, ref_w = load_aligned(
        d["images"], d["labels"], grid, align=d["align"], centroid_labels=d["label_values"]
    )
    v_images, v_labels = (None, None)
    if d["validation_images"] or d["validation_labels"]:
        v_images, v_labels, _ = load_aligned(
            d["validation_images"], d["validation_labels"], grid, align=d["align"], centroid_labels=d["label_values"],
            reference=ref_w,
        )
    n = (images if images is not None else labels).shape[0]
    log(
        f"data:       {n} training volumes on a {tuple(grid.shape)} grid of {tuple(float(s) for s in grid.spacing)} "
        f"mm ({time.perf_counter() - t0:.1f} s)"
    )
    if v_images is None and v_labels is None:
        if n < 4:
            raise ValueError(f"[data]: {n} volumes are too few to hold out validation pairs; give validation_* files")
        v_images = None if images is None else images[-2:]
        v_labels = None if labels is None else labels[-2:]
        images = None if images is None else images[:-2]
        labels = None if labels is None else labels[:-2]
        log("validation: the last 2 volumes are held out")
    lv = d["label_values"]
    mode = build_mode(
        t["mode"],
        grid,
        similarity=similarity,
        regularizer_weight=t["regularizer_weight"],
        label_values=lv,
        bidirectional=t["bidirectional"],
        synthesis_labels=d["synthesis_labels"],
        options=cfg["mode"],
    )
    mcfg = {"transform": "velocity", **cfg["model"]}
    model = RegistrationNet(grid.ndim, rngs=nnx.Rngs(int(t["seed"])), **mcfg)
    opt = make_optimizer(
        float(t["learning_rate"]), schedule=t["schedule"], total_steps=int(t["steps"]),
        warmup_steps=int(t["warmup_steps"]), clip_norm=None if t["clip_norm"] is None else float(t["clip_norm"]),
    )  # fmt: skip
    need = set(mode.inputs)
    use_images = images if need & {"fixed", "moving"} else None
    use_labels = labels if (need & {"fixed_labels", "moving_labels"} or (lv and labels is not None)) else None
    targets = None
    if mode.targets is not None:  # fields of every training pair, computed once (cached in the work folder)
        cache = Path(cfg["workdir"]) / "targets" if cfg.get("workdir") else None
        targets = mode.targets(grid, labels=labels, images=images, cache_dir=cache, log=log)

    def train_data(start: int):
        return ld.PairLoader(
            use_images, use_labels, batch_size=int(t["batch_size"]), seed=int(t["seed"]), mode=d["pairs"],
            atlas=d["atlas"], start_step=start, targets=targets,
        )  # fmt: skip

    n_val = int(t["validation_pairs"])
    v_img = v_images if use_images is not None else None
    v_lab = v_labels if use_labels is not None else None

    def eval_data():
        loader = ld.PairLoader(v_img, v_lab, batch_size=1, seed=int(t["seed"]) + 1, mode="random", start_step=0, prefetch=0)
        try:
            out = []
            for i, b in enumerate(loader):
                if i >= n_val:
                    break
                out.append(b)
            return out
        finally:
            loader.close()

    meta = {
        "grid": {
            "shape": list(grid.shape),
            "spacing": [float(s) for s in grid.spacing],
            "affine": np.asarray(grid.affine).tolist(),
        },
        "label_values": lv,
        "mode": t["mode"],
        "config": cfg.get("config_path"),
        "normalize": True,
        "align": d["align"],
    }
    return TrainingSetup(grid, model, mode, opt, train_data, eval_data, meta)


def load_trained(model_dir: str | os.PathLike, *, which: str = "best") -> tuple[Any, Any, dict]:
    """The model, network grid and metadata of a trained network: a ``jaxreg train`` work folder, an exported
    model folder (:func:`jaxreg.learn.export_model`) or the name of a model shipped with jaxreg (``"brain"``).

    Args:
      model_dir: the folder or the shipped model's name.
      which: ``"best"`` (best validation checkpoint; the latest when the run had no validation) or
        ``"latest"``.

    Returns:
      ``(RegistrationNet, Grid, metadata dict)``.

    Raises:
      FileNotFoundError: no such folder, or no checkpoint in it.
      ValueError: its ``model.json`` holds no training grid.
    """
    from jaxreg.core.grid import Grid
    from jaxreg.learn.train import load_model, resolve_model

    model_dir = resolve_model(model_dir)  # a folder, or the name of a model shipped in jaxreg/models/
    try:
        model, meta = load_model(model_dir, which=which)
    except FileNotFoundError:
        if which != "best":
            raise
        model, meta = load_model(model_dir, which="latest")  # trained without validation: no best/
    g = meta.get("grid") if isinstance(meta, dict) else None
    if not g:
        raise ValueError(f"{os.fspath(model_dir)}: model.json has no training grid (not a 'jaxreg train' folder?)")
    return model, Grid(tuple(g["shape"]), np.asarray(g["affine"])), meta
