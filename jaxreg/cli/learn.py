"""``jaxreg train`` and ``jaxreg predict``: learned registration from the command line.

``jaxreg train --config cfg.toml`` trains a :class:`~jaxreg.learn.networks.RegistrationNet` on NIfTI folders
(all options in the TOML file, see :data:`EXAMPLE_CONFIG`), writing checkpoints, ``metrics.csv``,
``metrics.png`` and ``model.json`` into the work folder; a second call resumes from the last checkpoint.

``jaxreg train ... --export DIR`` then writes the best model as a small self-contained folder
(:func:`jaxreg.learn.train.export_model`: ``model.json`` and ``params.npz``).

``jaxreg predict --model NAME|DIR FIXED MOVING -o OUTDIR`` registers a pair with a trained model (a model shipped
in the package, by name; a work folder; an exported folder), optionally refined by the iterative engine
(``--refine``), and writes the outputs of ``jaxreg register`` (warped image, ITK/ANTs ``affine.mat`` and
``warp.nii.gz``, its inverse ``inverse_warp.nii.gz``, warped labels and Dice with ``--labels``, ``report.json``,
``report.png``).

This module reads and checks the TOML file (:func:`read_train_config`), calls the library and prints: the
training set-up is :func:`jaxreg.learn.setup.build_training`, the trained model is read by
:func:`jaxreg.learn.setup.load_trained`, the report and the output files are :func:`jaxreg.evaluation.summarize`
and :func:`jaxreg.io.write_outputs`. Errors name the argument concerned (``--config: ...``, ``--model: ...``).
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

from jaxreg._models import available_models
from jaxreg.cli._args import UsageError, argument, int_at_least

__all__ = ["EXAMPLE_CONFIG", "add_parsers", "load_trained", "read_train_config", "run_predict", "run_train"]

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
mode = "synthesis"                       # unsupervised | supervised | supervised_engine | weakly_supervised | synthesis
steps = 2000
batch_size = 1
learning_rate = 1e-3
schedule = "cosine"                      # constant | cosine | warmup_cosine
warmup_steps = 0
clip_norm = 1.0
seed = 0
similarity = "lncc"                      # image term: a registry name (mse, ncc, lncc, nmi, "lncc(window=7)", ...)
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


def _unknown(table: Any, allowed: Sequence[str], where: str, path: Any) -> None:
    if not isinstance(table, dict):
        raise ValueError(f"{path}: [{where}]: expected a table, got {table!r}")
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
      ``{"workdir", "data", "model", "train", "mode", "config_path"}`` with defaults filled in.

    Raises:
      FileNotFoundError: no such file, or a data glob that matches nothing.
      ValueError: not valid TOML, an unknown key, a missing or wrong value (the message names the file and the
        key).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(2, f"{path}: no such file")
    try:
        cfg = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: not valid TOML ({e})") from None
    base = path.parent
    _unknown(cfg, _TOP, "top level", path)
    for key, allowed in (("data", _DATA), ("model", _MODEL), ("train", _TRAIN)):
        _unknown(cfg.get(key, {}), allowed, key, path)
    if not isinstance(cfg.get("mode", {}), dict):  # its keys are checked against the mode's factory below
        raise ValueError(f"{path}: [mode]: expected a table, got {cfg['mode']!r}")
    data = dict(cfg.get("data", {}))
    model = dict(cfg.get("model", {}))
    train = dict(cfg.get("train", {}))
    mode = dict(cfg.get("mode", {}))
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
    from jaxreg.learn.setup import check_mode_options

    try:
        check_mode_options(t["mode"], mode)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    if t["mode"] in ("synthesis", "weakly_supervised", "supervised_engine") and not d["labels"]:
        raise ValueError(f"{path}: [train] mode {t['mode']!r} needs label maps ([data] labels)")
    if t["mode"] in ("synthesis", "weakly_supervised", "supervised_engine") and not d["label_values"]:
        raise ValueError(f"{path}: [train] mode {t['mode']!r} needs [data] label_values")
    if t["mode"] in ("unsupervised", "supervised", "weakly_supervised") and not d["images"]:
        raise ValueError(f"{path}: [train] mode {t['mode']!r} needs intensity images ([data] images)")
    return {"workdir": wd, "data": d, "model": model, "train": t, "mode": mode, "config_path": str(path)}


def run_train(args: argparse.Namespace, *, log: Callable[[str], None] = print) -> int:
    """``jaxreg train``: train (or resume) a registration network from a TOML configuration."""
    with argument("--config"):
        cfg = read_train_config(args.config, workdir=args.output, steps=args.steps)
    wd = Path(cfg["workdir"])
    if wd.exists() and not wd.is_dir():
        raise ValueError(f"{'-o' if args.output is not None else '--config: workdir'} {wd}: exists and is not a folder")
    import jax

    from jaxreg.learn.setup import build_training
    from jaxreg.learn.train import _check_export_dest, export_model, fit, initialize_distributed

    export = getattr(args, "export", None)
    if export is not None:
        with argument("--export"):  # before training: a bad destination must not wait for the end of the run
            _check_export_dest(export)

    if initialize_distributed():  # multi-host: only when the launcher's environment says so
        log(f"distributed: process {jax.process_index()} of {jax.process_count()}, {jax.device_count()} devices")
    with argument("--config"):
        parts = build_training(cfg, log=log)
    t = cfg["train"]
    log(f"training:   mode {t['mode']}, {t['steps']} steps of batch {t['batch_size']}, workdir {cfg['workdir']}")
    mode = parts.mode
    labelled = bool(parts.metadata["label_values"])
    fit(
        parts.model, mode.loss, parts.optimizer, parts.train_data,
        steps=int(t["steps"]), key=jax.random.key(int(t["seed"])), workdir=cfg["workdir"], augment=mode.augment,
        eval_fn=mode.metrics, eval_data=parts.eval_data, eval_every=int(t["eval_every"]), save_every=int(t["save_every"]),
        max_to_keep=int(t["max_to_keep"]), best_metric="dice" if labelled else "loss",
        best_mode="max" if labelled else "min", resume=not args.restart, progress=not args.quiet,
        metadata=parts.metadata,
    )  # fmt: skip
    log(f"done:       {cfg['workdir']} (metrics.csv, metrics.png, model.json, checkpoints/)")
    if export is not None and jax.process_index() == 0:
        which = "best" if (wd / "best").is_dir() else "latest"  # a run without validation has no best/
        with argument("--export"):
            dest = export_model(cfg["workdir"], export, which=which)
        size = sum(f.stat().st_size for f in dest.iterdir() if f.is_file())
        log(f"exported:   {dest} ({which} model: model.json, params.npz; {size / 1e6:.2f} MB)")
    return 0


def load_trained(model_dir: str | os.PathLike, *, which: str = "best") -> tuple[Any, Any, dict]:
    """:func:`jaxreg.learn.setup.load_trained` of a folder or a shipped model's name (imported when called: the
    parser does not import Flax)."""
    from jaxreg.learn.setup import load_trained as load

    return load(model_dir, which=which)


def run_predict(args: argparse.Namespace, *, log: Callable[[str], None] = print) -> int:
    """``jaxreg predict``: register a pair with a trained network (and optional instance optimisation)."""
    from jaxreg.cli.register import check_output, load_inputs
    from jaxreg.evaluation import summarize
    from jaxreg.io import write_outputs

    t_all = time.perf_counter()
    with argument("--model"):  # before the images are read
        from jaxreg.learn.train import resolve_model

        model_dir = resolve_model(args.model)
    inp = load_inputs(args.fixed, args.moving, labels=args.labels, label_list=args.label_list, labels_json=args.labels_json)
    all_inputs = list(inp.paths)
    check_output(args.output, all_inputs)
    with argument("--model"):
        model, grid, meta = load_trained(model_dir, which=args.which)
        if grid.ndim != inp.fixed.grid.ndim:
            raise ValueError(f"{args.model}: trained on {grid.ndim}-D images, FIXED is {inp.fixed.grid.ndim}-D")
    # every input is checked: only now are inference and the registration engine imported
    from jaxreg.learn.inference import predict
    from jaxreg.optimize import Level

    levels = tuple(Level(*lv) for lv in ([(2, 0.0, args.refine), (1, 0.0, max(1, args.refine // 4))] if args.refine else []))
    align = meta.get("align", "com")
    center = "grid" if align == "none" else "com"
    if args.init is None:
        args.init = "affine" if align == "affine" else ("none" if align == "none" else "com")
    result = predict(model, inp.fixed, inp.moving, network_grid=grid, init=args.init, center=center, refine_levels=levels)
    seconds = {"init": 0.0, "network": 0.0, "refine": 0.0}
    for st in result.stages:
        key = "network" if st.name.startswith("network") else ("refine" if st.name == "refine" else "init")
        seconds[key] += float(st.seconds)
    seconds["total"] = float(result.seconds)
    log(
        f"network:    {seconds['network']:.2f} s (init {args.init} {seconds['init']:.2f} s"
        + (f", refinement {seconds['refine']:.1f} s" if levels else "")
        + ")"
    )
    opts = {"pipeline": "learned", "linear_levels": (), "deformable_levels": levels, "greedy": {}, "window": 5}
    extra = {
        "command": "jaxreg predict",
        "model": {
            "folder": os.fspath(model_dir), "name": os.fspath(args.model), "which": args.which,
            "training_mode": meta.get("mode"),
        },
        "inputs": {"fixed": os.fspath(args.fixed), "moving": os.fspath(args.moving), "labels": list(args.labels) if args.labels else None},
        "predict_seconds": {k: round(float(v), 3) for k, v in seconds.items()},
        "init": args.init,
        "refine_iterations": int(args.refine),
    }
    outs = summarize(inp, result, opts, title=f"jaxreg predict: {Path(args.moving).name} -> {Path(args.fixed).name}", extra=extra)
    for line in outs.text:
        log(line)
    outs.report["timings"]["total"] = round(time.perf_counter() - t_all, 3)
    written = write_outputs(args.output, outs, inputs=all_inputs)
    log(f"wrote:      {', '.join(p.name for p in written)} in {args.output}")
    log(f"total:      {time.perf_counter() - t_all:.1f} s")
    return 0


def add_parsers(subparsers: Any) -> None:
    """Add ``train`` and ``predict`` to ``subparsers``."""
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
    pt.add_argument(
        "--export", metavar="DIR", default=None,
        help="after training, write the best model to DIR as a small self-contained folder (model.json, params.npz) "
        "that 'jaxreg predict --model DIR' reads and that ships in the package under jaxreg/models/<name>/ "
        "(default: no export)",
    )
    pt.set_defaults(func=_train_entry)

    pp = subparsers.add_parser(
        "predict",
        help="register two images with a trained network (optionally refined by the iterative engine)",
        description="Register MOVING to FIXED with a network trained by 'jaxreg train' (or shipped in the package, "
        "--model NAME): linear initialisation "
        "(centres of mass by default), one network evaluation on the training grid placed on FIXED, optional test-time "
        "instance optimisation (--refine N greedy iterations at half resolution, N/4 at full), and the outputs of "
        "'jaxreg register' (warped.nii.gz, affine.mat, warp.nii.gz and inverse_warp.nii.gz that ANTs/ITK apply "
        "alike, report.json/png, "
        "warped labels and Dice with --labels).",
    )
    pp.add_argument("fixed", metavar="FIXED")
    pp.add_argument("moving", metavar="MOVING")
    shipped = available_models()
    pp.add_argument(
        "--model", required=True, metavar="NAME|DIR",
        help="a shipped model's name (" + (", ".join(shipped) if shipped else "none shipped in this installation")
        + "), a 'jaxreg train' work folder or a folder written by 'jaxreg train --export'",
    )
    pp.add_argument("-o", "--output", required=True, metavar="OUTDIR")
    pp.add_argument(
        "--which", choices=("best", "latest"), default="best",
        help="checkpoint of a work folder to use (default best; an exported or shipped model has one)",
    )
    pp.add_argument(
        "--init", choices=("com", "moments", "auto", "center", "identity", "affine", "none"), default=None,
        help="linear start: centres of mass, principal axes, the best scored candidate, grid centres, identity, an "
        "NCC affine registration or none (default: as the training data were aligned, 'affine' or 'com')",
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
        raise UsageError("--config: required (a TOML file; 'jaxreg train --example-config' prints one)")
    return run_train(args)
