"""``jaxreg train`` and ``jaxreg predict``: learned registration from the command line.

``jaxreg train --config cfg.toml`` trains a :class:`~jaxreg.learn.networks.RegistrationNet` on NIfTI folders
(all options in the TOML file, see :data:`EXAMPLE_CONFIG`), writing checkpoints, ``metrics.csv``,
``metrics.png`` and ``model.json`` into the work folder; a second call resumes from the last checkpoint.

``jaxreg predict --model DIR FIXED MOVING -o OUTDIR`` registers a pair with a trained model, optionally refined by
the iterative engine (``--refine``), and writes the outputs of ``jaxreg register`` (warped image, ITK/ANTs
``affine.mat`` and ``warp.nii.gz``, warped labels and Dice with ``--labels``, ``report.json``, ``report.png``).
"""

from __future__ import annotations

import argparse
import glob
import os
import time
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["EXAMPLE_CONFIG", "add_parsers", "build_training", "read_train_config", "run_predict", "run_train"]

EXAMPLE_CONFIG = """\
# jaxreg train configuration (TOML). Paths are relative to this file.
workdir = "runs/synthmorph"          # checkpoints, metrics.csv/png, model.json (-o overrides)

[data]
labels = ["labelmaps/*_labels.nii.gz"]   # label maps (globs); needed by 'synthesis' and 'weakly_supervised'
# images = ["images/*.nii.gz"]           # intensity images (globs, same order as labels when both are given)
validation_labels = []                   # held-out maps for the validation Dice (default: the last 2 training items)
shape = [64, 64, 64]                     # network grid, voxels (divisible by 2^len(encoder))
spacing = 3.0                            # network grid voxel size, mm
align = "affine"                         # pre-align: "affine" (to the first item), "com" (centres of mass) or "none"
pairs = "random"                         # "random" pairs or "atlas" (item `atlas` is always the fixed image)
atlas = 0
label_values = [2, 3, 4, 7, 8, 10, 11, 12, 13, 16, 17, 18, 24, 26, 28]   # labels of the Dice (loss and validation)

[model]
transform = "velocity"                   # displacement | velocity | affine | affine+displacement | affine+velocity
encoder = [16, 32, 32, 32]
decoder = [32, 32, 32, 32, 32, 16, 16]
field_factor = 2                         # field at 1/2 of the network grid's resolution
steps = 7

[train]
mode = "synthesis"                       # unsupervised | supervised | weakly_supervised | synthesis
steps = 2000
batch_size = 1
learning_rate = 1e-3
schedule = "cosine"                      # constant | cosine | warmup_cosine
warmup_steps = 0
clip_norm = 1.0
seed = 0
similarity = "lncc"                      # image term: mse | ncc | lncc
window = 5                               # lncc window (voxels)
regularizer_weight = 1.0
bidirectional = false
eval_every = 100
save_every = 100
validation_pairs = 4

[mode]                                   # options of the mode's factory in jaxreg.learn.modes
deformation_mm = 6.0                     # random diffeomorphism of each label map (mm)
same_subject = 0.5                       # fraction of pairs made from one map (two deformed copies)
same_contrast = true                     # one intensity model per pair (mono-modal pairs) ...
image_weight = 1.0                       # ... so the image term ([train] similarity) can help the Dice
"""

_TOP = ("workdir", "data", "model", "train", "mode")
_DATA = (
    "images", "labels", "validation_images", "validation_labels", "shape", "spacing", "pairs", "atlas", "label_values",
    "synthesis_labels", "align",
)
_MODEL = ("transform", "encoder", "decoder", "field_factor", "steps", "affine_encoder")
_TRAIN = (
    "mode", "steps", "batch_size", "learning_rate", "schedule", "warmup_steps", "clip_norm", "seed", "similarity",
    "window", "regularizer_weight", "bidirectional", "eval_every", "save_every", "validation_pairs", "max_to_keep",
)


def _unknown(table: dict, allowed: Sequence[str], where: str, path: Any) -> None:
    bad = sorted(set(table) - set(allowed))
    if bad:
        raise ValueError(f"{path}: unknown key(s) {', '.join(bad)} in [{where}] (allowed: {', '.join(allowed)})")


def _globs(patterns: Any, base: Path, what: str, path: Any) -> list[str]:
    if patterns is None:
        return []
    if isinstance(patterns, str):
        patterns = [patterns]
    if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
        raise ValueError(f"{path}: [data] {what}: expected a list of file globs")
    out: list[str] = []
    for p in patterns:
        full = p if os.path.isabs(p) else str(base / p)
        hits = sorted(glob.glob(full))
        if not hits:
            raise FileNotFoundError(f"{path}: [data] {what}: no file matches {p!r} (looked for {full})")
        out.extend(hits)
    return out


def read_train_config(path: str | os.PathLike, *, workdir: str | None = None, steps: int | None = None) -> dict[str, Any]:
    """Read and check a ``jaxreg train`` TOML file (see :data:`EXAMPLE_CONFIG`); globs are expanded.

    Returns:
      ``{"workdir", "data", "model", "train", "mode"}`` with defaults filled in.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--config {path}: no such file")
    try:
        cfg = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"--config {path}: not valid TOML ({e})") from None
    base = path.parent
    _unknown(cfg, _TOP, "top level", path)
    data = dict(cfg.get("data", {}))
    model = dict(cfg.get("model", {}))
    train = dict(cfg.get("train", {}))
    mode = dict(cfg.get("mode", {}))
    _unknown(data, _DATA, "data", path)
    _unknown(model, _MODEL, "model", path)
    _unknown(train, _TRAIN, "train", path)
    wd = workdir if workdir is not None else cfg.get("workdir")
    if not wd:
        raise ValueError(f"{path}: 'workdir' is required (or pass -o WORKDIR)")
    if workdir is None and not os.path.isabs(wd):
        wd = str(base / wd)
    d = {
        "images": _globs(data.get("images"), base, "images", path),
        "labels": _globs(data.get("labels"), base, "labels", path),
        "validation_images": _globs(data.get("validation_images"), base, "validation_images", path),
        "validation_labels": _globs(data.get("validation_labels"), base, "validation_labels", path),
        "shape": data.get("shape"),
        "spacing": data.get("spacing", 1.0),
        "pairs": data.get("pairs", "random"),
        "atlas": int(data.get("atlas", 0)),
        "label_values": data.get("label_values"),
        "synthesis_labels": data.get("synthesis_labels"),
        "align": data.get("align", "com"),
    }
    if d["align"] not in ("com", "affine", "none"):
        raise ValueError(f"{path}: [data] align: expected 'com', 'affine' or 'none', got {d['align']!r}")
    if not d["images"] and not d["labels"]:
        raise ValueError(f"{path}: [data] needs 'images' and/or 'labels'")
    if d["images"] and d["labels"] and len(d["images"]) != len(d["labels"]):
        raise ValueError(f"{path}: [data] images ({len(d['images'])} files) and labels ({len(d['labels'])}) differ in number")
    if not (isinstance(d["shape"], list) and d["shape"] and all(isinstance(s, int) and s > 0 for s in d["shape"])):
        raise ValueError(f"{path}: [data] shape: expected a list of positive integers (the network grid), got {d['shape']!r}")
    if d["pairs"] not in ("random", "atlas"):
        raise ValueError(f"{path}: [data] pairs: expected 'random' or 'atlas', got {d['pairs']!r}")
    t = {
        "mode": "unsupervised", "steps": 1000, "batch_size": 1, "learning_rate": 1e-4, "schedule": "constant",
        "warmup_steps": 0, "clip_norm": None, "seed": 0, "similarity": "mse", "window": 9, "regularizer_weight": 0.01,
        "bidirectional": False, "eval_every": 100, "save_every": 100, "validation_pairs": 4, "max_to_keep": 3,
    }
    t.update(train)
    if steps is not None:
        t["steps"] = int(steps)
    from jaxreg.learn.modes import MODES

    if t["mode"] not in MODES:
        raise ValueError(f"{path}: [train] mode: expected one of {', '.join(MODES)}, got {t['mode']!r}")
    if t["mode"] in ("synthesis", "weakly_supervised") and not d["labels"]:
        raise ValueError(f"{path}: [train] mode {t['mode']!r} needs label maps ([data] labels)")
    if t["mode"] in ("synthesis", "weakly_supervised") and not d["label_values"]:
        raise ValueError(f"{path}: [train] mode {t['mode']!r} needs [data] label_values")
    if t["mode"] in ("unsupervised", "supervised", "weakly_supervised") and not d["images"]:
        raise ValueError(f"{path}: [train] mode {t['mode']!r} needs intensity images ([data] images)")
    return {"workdir": wd, "data": d, "model": model, "train": t, "mode": mode, "config_path": str(path)}


def _similarity(name: str, window: int) -> Callable:
    from jaxreg.similarity import lncc, mse, ncc

    if name == "mse":
        return mse
    if name == "ncc":
        return ncc
    if name == "lncc":
        return lncc(int(window))
    raise ValueError(f"[train] similarity: expected mse, ncc or lncc, got {name!r}")


def network_grid_from(shape: Sequence[int], spacing: Any, reference: Any) -> Any:
    """The training grid: ``shape`` voxels of ``spacing`` mm, axis-aligned, centred on ``reference``'s centre."""
    from jaxreg.core.grid import Grid
    from jaxreg.learn.inference import place_grid

    n = len(shape)
    sp = np.broadcast_to(np.asarray(spacing, np.float64), (n,))
    return place_grid(Grid.from_spacing(tuple(shape), tuple(sp)), reference)


def _weight_image(image_path: str | None, label_path: str | None, centroid_labels: Sequence[int] | None) -> Any:
    """The image whose centre of mass (and, for ``align="affine"``, whose shape) places an item."""
    from jaxreg.core.grid import Image
    from jaxreg.io import load_image, load_labels
    from jaxreg.learn.inference import normalize_image

    if label_path is not None:
        src = load_labels(label_path)
        lab = np.asarray(src.data)
        sel = np.isin(lab, np.asarray(centroid_labels)) if centroid_labels else lab != 0
        if not sel.any():
            raise ValueError(f"{label_path}: none of the labels {list(centroid_labels or [])} is present")
        return Image(sel.astype(np.float32), src.grid)
    return normalize_image(load_image(image_path))


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
    * ``align="affine"``: each item is registered affinely (NCC of the weight images, coarse levels) to the
      reference (``reference``, or the first item), and sampled through that affine on the grid centred on the
      reference's centre of mass (pairs then differ by non-linear deformations only, as when ``predict`` runs
      with ``init="affine"``).

    Returns:
      ``(images (N, *shape) or None, labels (N, *shape) int32 or None, reference weight image or None)``.
    """
    from jaxreg.io import load_image, load_labels
    from jaxreg.learn import data as ld
    from jaxreg.learn.inference import center_of_mass, normalize_image, place_grid
    from jaxreg.optimize.engine import Level
    from jaxreg.optimize.pipelines import register_linear
    from jaxreg.warp import warp, warp_labels

    if align == "none":
        img = ld.load_volumes(images, grid, labels=False) if images else None
        lab = ld.load_volumes(labels, grid, labels=True) if labels else None
        return img, lab, None
    n = max(len(images), len(labels))
    out_i, out_l = [], []
    for k in range(n):
        weight = _weight_image(images[k] if images else None, labels[k] if labels else None, centroid_labels)
        if align == "com":
            g = place_grid(grid, center_of_mass(weight))
            if images:
                out_i.append(ld.load_volumes([images[k]], g, labels=False)[0])
            if labels:
                out_l.append(ld.load_volumes([labels[k]], g, labels=True)[0])
            continue
        if reference is None:
            reference = weight
        g = place_grid(grid, center_of_mass(reference))
        a = register_linear(
            reference, weight, model="affine", metric="ncc", init="com", levels=(Level(8, 0.0, 60), Level(4, 0.0, 40))
        ).transform
        if images:
            out_i.append(np.asarray(warp(normalize_image(load_image(images[k])), a, g).data, np.float32))
        if labels:
            out_l.append(np.asarray(warp_labels(load_labels(labels[k]), a, g).data, np.int32))
    return (np.stack(out_i) if out_i else None), (np.stack(out_l) if out_l else None), reference


def build_training(cfg: dict[str, Any], *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Load the data and build the model, mode, optimiser and data factories of a training run."""
    from flax import nnx

    from jaxreg.io import load_image
    from jaxreg.learn import data as ld
    from jaxreg.learn import modes as lm
    from jaxreg.learn.networks import RegistrationNet
    from jaxreg.learn.train import make_optimizer

    d, t = cfg["data"], cfg["train"]
    first = (d["images"] or d["labels"])[0]
    ref = load_image(first).grid
    if len(d["shape"]) != ref.ndim:
        raise ValueError(f"[data] shape: {len(d['shape'])} axes for {ref.ndim}-D images")
    grid = network_grid_from(d["shape"], d["spacing"], ref)
    t0 = time.perf_counter()
    images, labels, ref_w = load_aligned(d["images"], d["labels"], grid, align=d["align"], centroid_labels=d["label_values"])
    v_images, v_labels = (None, None)
    if d["validation_images"] or d["validation_labels"]:
        v_images, v_labels, _ = load_aligned(
            d["validation_images"], d["validation_labels"], grid, align=d["align"], centroid_labels=d["label_values"],
            reference=ref_w,
        )
    n = (images if images is not None else labels).shape[0]
    log(f"data:       {n} training volumes on a {tuple(grid.shape)} grid of {tuple(float(s) for s in grid.spacing)} mm ({time.perf_counter() - t0:.1f} s)")
    if v_images is None and v_labels is None:
        if n < 4:
            raise ValueError(f"[data]: {n} volumes are too few to hold out validation pairs; give validation_* files")
        v_images = None if images is None else images[-2:]
        v_labels = None if labels is None else labels[-2:]
        images = None if images is None else images[:-2]
        labels = None if labels is None else labels[:-2]
        log("validation: the last 2 volumes are held out")
    lv = d["label_values"]
    sim = _similarity(t["similarity"], t["window"])
    name = t["mode"]
    extra = dict(cfg["mode"])
    if name == "unsupervised":
        mode = lm.unsupervised(grid, similarity=sim, regularizer_weight=t["regularizer_weight"], label_values=lv, bidirectional=t["bidirectional"], **extra)
    elif name == "supervised":
        mode = lm.supervised(grid, regularizer_weight=t["regularizer_weight"], label_values=lv, **extra)
    elif name == "weakly_supervised":
        mode = lm.weakly_supervised(grid, label_values=lv, similarity=sim, regularizer_weight=t["regularizer_weight"], bidirectional=t["bidirectional"], **extra)
    else:
        mode = lm.synthesis(
            grid, label_values=lv, synthesis_labels=d["synthesis_labels"], regularizer_weight=t["regularizer_weight"],
            bidirectional=t["bidirectional"], similarity=sim, **extra,
        )
    mcfg = {"transform": "velocity", **cfg["model"]}
    model = RegistrationNet(grid.ndim, rngs=nnx.Rngs(int(t["seed"])), **mcfg)
    opt = make_optimizer(
        float(t["learning_rate"]), schedule=t["schedule"], total_steps=int(t["steps"]), warmup_steps=int(t["warmup_steps"]),
        clip_norm=None if t["clip_norm"] is None else float(t["clip_norm"]),
    )
    need = set(mode.inputs)
    use_images = images if need & {"fixed", "moving"} else None
    use_labels = labels if (need & {"fixed_labels", "moving_labels"} or (lv and labels is not None)) else None

    def train_data(start: int):
        return ld.PairLoader(
            use_images, use_labels, batch_size=int(t["batch_size"]), seed=int(t["seed"]), mode=d["pairs"], atlas=d["atlas"],
            start_step=start,
        )

    n_val = int(t["validation_pairs"])
    v_img = v_images if use_images is not None else None
    v_lab = v_labels if (use_labels is not None or name == "synthesis") else None

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
        "grid": {"shape": list(grid.shape), "spacing": [float(s) for s in grid.spacing], "affine": np.asarray(grid.affine).tolist()},
        "label_values": lv,
        "mode": name,
        "config": cfg.get("config_path"),
        "normalize": True,
        "align": d["align"],
    }
    return {"grid": grid, "model": model, "mode": mode, "optimizer": opt, "train_data": train_data, "eval_data": eval_data, "metadata": meta}


def run_train(args: argparse.Namespace, *, log: Callable[[str], None] = print) -> int:
    """``jaxreg train``: train (or resume) a registration network from a TOML configuration."""
    import jax

    from jaxreg.learn.train import fit, initialize_distributed

    cfg = read_train_config(args.config, workdir=args.output, steps=args.steps)
    if initialize_distributed():  # multi-host: only when the launcher's environment says so
        log(f"distributed: process {jax.process_index()} of {jax.process_count()}, {jax.device_count()} devices")
    parts = build_training(cfg, log=log)
    t = cfg["train"]
    log(f"training:   mode {t['mode']}, {t['steps']} steps of batch {t['batch_size']}, workdir {cfg['workdir']}")
    mode = parts["mode"]
    fit(
        parts["model"], mode.loss, parts["optimizer"], parts["train_data"],
        steps=int(t["steps"]), key=jax.random.key(int(t["seed"])), workdir=cfg["workdir"], augment=mode.augment,
        eval_fn=mode.metrics, eval_data=parts["eval_data"], eval_every=int(t["eval_every"]), save_every=int(t["save_every"]),
        max_to_keep=int(t["max_to_keep"]), best_metric="dice" if parts["metadata"]["label_values"] else "loss",
        best_mode="max" if parts["metadata"]["label_values"] else "min", resume=not args.restart, progress=not args.quiet,
        metadata=parts["metadata"],
    )
    log(f"done:       {cfg['workdir']} (metrics.csv, metrics.png, model.json, checkpoints/)")
    return 0


def load_trained(model_dir: str | os.PathLike, *, which: str = "best") -> tuple[Any, Any, dict]:
    """(model, network grid, metadata) of a ``jaxreg train`` work folder."""
    from flax import nnx

    from jaxreg.core.grid import Grid
    from jaxreg.learn.networks import RegistrationNet
    from jaxreg.learn.train import load_model

    if not Path(model_dir).is_dir():
        raise FileNotFoundError(f"--model {model_dir}: no such folder")
    build = lambda c: RegistrationNet.from_config(c, rngs=nnx.Rngs(0))
    try:
        model, meta = load_model(model_dir, build, which=which)
    except FileNotFoundError:
        if which != "best":
            raise
        model, meta = load_model(model_dir, build, which="latest")  # trained without validation: no best/
    g = meta.get("grid") if isinstance(meta, dict) else None
    if not g:
        raise ValueError(f"--model {model_dir}: model.json has no training grid (not a 'jaxreg train' folder?)")
    return model, Grid(tuple(g["shape"]), np.asarray(g["affine"])), meta


def run_predict(args: argparse.Namespace, *, log: Callable[[str], None] = print) -> int:
    """``jaxreg predict``: register a pair with a trained network (and optional instance optimisation)."""
    from jaxreg.cli import register as reg
    from jaxreg.learn.inference import predict
    from jaxreg.optimize.engine import Level, RegistrationResult
    from jaxreg.optimize.greedy import GreedyOptions
    from jaxreg.optimize.pipelines import PipelineResult

    t_all = time.perf_counter()
    inp = reg.load_inputs(args.fixed, args.moving, labels=args.labels, label_list=args.label_list, labels_json=args.labels_json)
    all_inputs = inp.paths
    reg.check_output_folder(args.output, all_inputs)
    model, grid, meta = load_trained(args.model, which=args.which)
    if grid.ndim != inp.fixed.grid.ndim:
        raise ValueError(f"--model {args.model}: trained on {grid.ndim}-D images, FIXED is {inp.fixed.grid.ndim}-D")
    levels = tuple(Level(*lv) for lv in ([(2, 0.0, args.refine), (1, 0.0, max(1, args.refine // 4))] if args.refine else []))
    greedy = GreedyOptions(step=0.5, symmetric=True)
    align = meta.get("align", "com")
    center = "grid" if align == "none" else "com"
    if args.init is None:
        args.init = "affine" if align == "affine" else ("none" if align == "none" else "com")
    res = predict(model, inp.fixed, inp.moving, network_grid=grid, init=args.init, center=center, refine_levels=levels, refine_options=greedy)
    log(
        f"network:    {res.seconds['network']:.2f} s (init {args.init} {res.seconds['init']:.2f} s"
        + (f", refinement {res.seconds['refine']:.1f} s" if levels else "")
        + ")"
    )
    empty = RegistrationResult(res.affine, res.affine, (), 0.0)
    stages = {"linear": empty}
    if res.refine is not None:
        stages["deformable"] = res.refine
    result = PipelineResult(res.transform, res.affine, res.field, stages, res.seconds["total"])
    opts = {"pipeline": "learned", "linear_levels": (), "deformable_levels": levels, "greedy": greedy, "window": 5}
    extra = {
        "command": "jaxreg predict",
        "model": {"folder": os.fspath(args.model), "which": args.which, "training_mode": meta.get("mode")},
        "inputs": {"fixed": os.fspath(args.fixed), "moving": os.fspath(args.moving), "labels": list(args.labels) if args.labels else None},
        "predict_seconds": {k: round(float(v), 3) for k, v in res.seconds.items()},
        "init": args.init,
        "refine_iterations": int(args.refine),
    }
    outs = reg.summarize(inp, result, opts, title=f"jaxreg predict: {Path(args.moving).name} -> {Path(args.fixed).name}", extra=extra)
    for line in outs.text:
        log(line)
    outs.report["timings"]["total"] = round(time.perf_counter() - t_all, 3)
    written = reg.write_outputs(args.output, outs, inputs=all_inputs)
    log(f"wrote:      {', '.join(p.name for p in written)} in {args.output}")
    log(f"total:      {time.perf_counter() - t_all:.1f} s")
    return 0


def add_parsers(subparsers: Any) -> None:
    """Add ``train`` and ``predict`` to ``subparsers``."""
    from jaxreg.cli.main import int_at_least

    _nonneg_int = int_at_least(0)
    pt = subparsers.add_parser(
        "train",
        help="train a registration network (VoxelMorph / SynthMorph style) from a TOML configuration",
        description="Train a registration network on NIfTI folders as the TOML file says (data, model, training "
        "mode, optimiser; 'jaxreg train --example-config' prints a commented example). Writes checkpoints/, best/, "
        "metrics.csv, metrics.png and model.json into the work folder and resumes from its last checkpoint when "
        "run again.",
    )
    pt.add_argument("--config", metavar="TOML", help="training configuration")
    pt.add_argument("-o", "--output", metavar="WORKDIR", default=None, help="work folder (overrides 'workdir')")
    pt.add_argument("--steps", type=_nonneg_int, default=None, help="training steps (overrides [train] steps)")
    pt.add_argument("--restart", action="store_true", help="ignore existing checkpoints (start from step 0)")
    pt.add_argument("--quiet", action="store_true", help="no progress bar")
    pt.add_argument("--example-config", action="store_true", help="print an example configuration and exit")
    pt.set_defaults(func=_train_entry)

    pp = subparsers.add_parser(
        "predict",
        help="register two images with a trained network (optionally refined by the iterative engine)",
        description="Register MOVING to FIXED with a network trained by 'jaxreg train': linear initialisation "
        "(centres of mass by default), one network evaluation on the training grid placed on FIXED, optional test-time "
        "instance optimisation (--refine N greedy iterations at half resolution, N/4 at full), and the outputs of "
        "'jaxreg register' (warped.nii.gz, affine.mat, warp.nii.gz that ANTs/ITK apply alike, report.json/png, "
        "warped labels and Dice with --labels).",
    )
    pp.add_argument("fixed", metavar="FIXED")
    pp.add_argument("moving", metavar="MOVING")
    pp.add_argument("--model", required=True, metavar="DIR", help="a 'jaxreg train' work folder")
    pp.add_argument("-o", "--output", required=True, metavar="OUTDIR")
    pp.add_argument("--which", choices=("best", "latest"), default="best", help="checkpoint to use (default best)")
    pp.add_argument(
        "--init", choices=("com", "moments", "affine", "none"), default=None,
        help="linear initialisation: centres of mass, principal axes, NCC affine or none (default: as the training "
        "data were aligned, 'affine' or 'com')",
    )
    pp.add_argument("--refine", type=_nonneg_int, default=0, metavar="N", help="instance-optimisation iterations (default 0: none)")
    pp.add_argument("--labels", nargs=2, metavar=("FIXED_LABELS", "MOVING_LABELS"), help="label maps: warped labels and Dice")
    which = pp.add_mutually_exclusive_group()
    which.add_argument("--label-list", nargs="+", type=int, metavar="L", help="labels to evaluate")
    which.add_argument("--labels-json", metavar="F", help="JSON list of labels to evaluate")
    pp.set_defaults(func=run_predict)


def _train_entry(args: argparse.Namespace) -> int:
    if args.example_config:
        print(EXAMPLE_CONFIG, end="")
        return 0
    if not args.config:
        raise ValueError("--config: required (a TOML file; 'jaxreg train --example-config' prints one)")
    return run_train(args)
