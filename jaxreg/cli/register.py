"""``jaxreg register``: register two images with a ready pipeline and write the result, its files and a report.

``jaxreg register FIXED MOVING -o OUTDIR [--pipeline NAME] [--initial-transform T] [--fixed-mask M]
[--moving-mask M] [--labels FIXED_LABELS MOVING_LABELS [--label-list L ... | --labels-json F]]
[--config file.toml] [--similarity SPEC] [--winsorize LOW HIGH] [--histogram-matching] [--quick] [--quiet | --json]``

runs a named pipeline of :data:`jaxreg.optimize.PRESETS` through :func:`jaxreg.optimize.register` (affine from
the best candidate start -> symmetric diffeomorphic greedy registration, or its multi-modal, rigid, similarity,
affine, SyN-only, demons, B-spline or dense variants; ``--pipeline`` accepts every key of ``PRESETS`` and
``organ``) and writes into ``OUTDIR``:

* ``warped.nii.gz``: the moving image on the fixed grid (linear interpolation);
* ``affine.mat``: the linear stage as an ITK/ANTs ``AffineTransform`` (MATLAB format, as ``antsRegistration``
  writes ``0GenericAffine.mat``);
* ``warp.nii.gz`` (deformable pipelines): the deformable part sampled on the fixed grid as an ITK displacement
  field, so that ``jaxreg apply --fixed FIXED --moving MOVING -t OUTDIR/warp.nii.gz -t OUTDIR/affine.mat``
  (``antsApplyTransforms`` order: the fixed point goes through the warp first, then the affine) reproduces
  ``warped.nii.gz``;
* ``inverse_warp.nii.gz`` (deformable pipelines): the inverse of the deformable part, same layout and grid
  (:func:`jaxreg.transforms.inverse_displacement`: ``exp(-v)`` for a velocity field, else the relaxed
  fixed-point inverse of ``warp.nii.gz``), so that ``jaxreg apply --fixed MOVING --moving FIXED -t
  [OUTDIR/affine.mat,1] -t OUTDIR/inverse_warp.nii.gz`` carries fixed-space images and label maps into the
  moving space (ANTs' ``1InverseWarp.nii.gz``); its inverse-consistency error (mean and max mm) is
  ``report.json["inverse_warp"]``;
* with ``--labels``: ``warped_labels.nii.gz`` (nearest neighbour) and ``dice.json`` (Dice before, after the
  affine stage and after registration, HD95 in mm, per label and their means), also printed as a table;
* ``report.json``: the options, similarity before/after, per-stage iterations, losses and timings, the
  Jacobian statistics of the deformable part (% of ``det J <= 0``, SDlogJ) and the total time;
* ``report.png``: the figure of :func:`jaxreg.plot.registration_report`.

The module is an adapter: the report is :func:`jaxreg.evaluation.summarize`, the transactional writer
:func:`jaxreg.io.write_outputs` (everything is computed before the first file is written, each file is written
atomically, and if a write fails the files this run created are removed again, so ``OUTDIR`` never holds a
partial result). Inputs are checked first, before anything is created: missing or unreadable files, complex,
NaN or constant images (:func:`jaxreg.io.load_image`, :func:`jaxreg.io.check_registrable`), 2-D against 3-D,
labels or masks on another grid than their image, empty masks, an output folder that is a file or would
overwrite an input. Problems are raised as ``ValueError``/``OSError`` whose message starts with the argument
concerned (``MOVING: ...``, ``--config: ...``), for :mod:`jaxreg.cli.main` to report in one line.

``--config file.toml`` sets pipeline options; every key is optional::

    pipeline = "default"            # a name of jaxreg.optimize.PRESETS (--pipeline overrides it)
    window = 5                      # local NCC window of the deformable stage, voxels

    [linear]
    levels = [[4, 0.0, 100], [2, 0.0, 50]]   # [shrink, smooth_mm, iterations], coarse to fine

    [deformable]
    levels = [[4, 0.0, 40], [2, 0.0, 20]]
    step = 0.25                     # largest update per iteration, voxels of the level
    step_decay = 1.0                # the step falls linearly to this fraction over each level (1: constant)
    sigma_update = 1.732            # "fluid" smoothing of each update, voxels
    sigma_field = 0.707             # "diffusion" smoothing of the velocity field, voxels
    symmetric = true                # SyN-like mid-space force
    exp_steps = 6                   # scaling-and-squaring steps (the most)
    exp_tolerance = 0.5             # fewer squarings while v / 2^N moves no voxel more than this (0: always exp_steps)
    force = "metric"                # metric | demons
    similarity = "lncc(window=5)"   # a registry name of jaxreg.terms (default: lncc(window) or, multimodal, nmi)

A stage may compare several metrics, or several image pairs (channels), as ``antsRegistration`` does with
several ``-m`` of one stage: ``similarity`` (of ``[deformable]`` or ``[linear]``) may be a list whose items are a
spec or a table ``{spec = "...", weight = w}``; the stage then uses their weighted sum
(:func:`jaxreg.similarity.weighted_sum`)::

    [deformable]
    similarity = ["lncc(window=5)", {spec = "nmi(bins=32)", weight = 0.5}]

    [linear]
    similarity = "mi(bins=32)"      # replaces the similarity of the linear stage(s)

Extra image pairs are ``[[channels]]`` tables (paths relative to the config file; ``fixed`` on the fixed image's
grid, ``moving`` on the moving image's grid). They are stacked as channels after FIXED and MOVING; the
deformable stage then sums its similarity on FIXED/MOVING and each pair's own similarity times its weight, the
linear stage uses FIXED/MOVING only, and every output (``warped.nii.gz``, the report) is of FIXED/MOVING::

    [[channels]]
    fixed = "fixed_t2.nii.gz"
    moving = "moving_t2.nii.gz"
    similarity = "lncc(window=5)"   # default: the deformable stage's similarity
    weight = 0.5                    # default 1

Options are taken from, in increasing priority: the default pipeline's settings, ``--quick`` (one coarse
level per stage, for tests and previews), the config file, and ``--pipeline`` / ``--similarity`` (the deformable
stage's similarity as a registry spec, e.g. ``features(model="labelmind")``: learned multi-modal features).

``--initial-transform T`` (``antsRegistration -r``) starts from a linear transform file (``affine.mat`` of an
earlier run, an ANTs ``0GenericAffine.mat``, an ITK ``.txt``/``.tfm``; ``[T.mat,1]`` uses its inverse), kept as
the first part of the result: the stages optimise on top of it and ``affine.mat`` includes it, also for a
pipeline without a linear stage (``syn``). The keywords ``identity``, ``center``, ``com`` and ``moments`` (and
``auto``, the default, for pipelines with a linear stage) choose the linear stage's start instead.

``--quiet`` prints nothing but errors; ``--json`` prints one JSON object on stdout (the files written, the
metrics, the Jacobian statistics and the timings) and the usual lines on stderr. Progress bars (tqdm) go to
stderr when it is a terminal, one per long step (the registration's levels, the outputs), and are off with
``--quiet``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from jaxreg.cli._args import UsageError, argument, parse_transform_spec
from jaxreg.evaluation.report import RegistrationInputs
from jaxreg.optimize.init import INITS
from jaxreg.optimize.presets import PRESETS

__all__ = [
    "add_parser",
    "run",
    "read_config",
    "pipeline_options",
    "initial_transform",
    "json_summary",
    "load_channels",
    "stages_from_options",
    "load_inputs",
    "check_output",
    "QUICK_LINEAR_LEVELS",
    "QUICK_DEFORMABLE_LEVELS",
]

PRESET_PIPELINES = tuple(PRESETS)  # the library's named pipelines: one source of truth
PIPELINES = PRESET_PIPELINES + ("organ",)  # "organ": jaxreg.radiotherapy.organ_aware, built from the CT's labels

QUICK_LINEAR_LEVELS = ((2, 0.0, 40),)
"""``--quick`` levels of the linear stage ``(shrink, smooth_mm, iterations)``."""
QUICK_DEFORMABLE_LEVELS = ((2, 0.0, 15),)
"""``--quick`` levels of the deformable stage."""

_DESCRIPTION = (
    "Register MOVING to FIXED with a ready pipeline (default: affine (NCC) from the best of several candidate "
    "starts (centres of mass, principal axes in every order and sign) -> symmetric diffeomorphic greedy "
    "registration with local NCC; multimodal: affine (Mattes mutual information) -> symmetric diffeomorphic "
    "greedy registration with normalised mutual information; affine, similarity or rigid: the linear stage only; "
    "syn: the symmetric greedy stage alone (pre-aligned pairs, or with --initial-transform); demons: affine -> "
    "diffeomorphic demons; bspline: "
    "affine -> cubic B-spline FFD at 40, 20, 10 mm; dense: affine -> variational displacement field) and write "
    "into OUTDIR: warped.nii.gz (moving on the fixed grid), affine.mat "
    "(ITK/ANTs), warp.nii.gz (ITK displacement field of the deformable part, on the fixed grid), "
    "inverse_warp.nii.gz (its inverse, same layout: exp(-v) of a velocity field, else a fixed-point inverse; "
    "report.json['inverse_warp'] holds its inverse-consistency error in mm), report.json "
    "and report.png; with --labels also warped_labels.nii.gz and dice.json. organ: planning CT <-> daily MR "
    "(adaptive radiotherapy): rigid (Mattes MI) -> the target's own rigid motion -> stationary velocity field "
    "with multi-modal similarity, rigid "
    "bones, an incompressible target and freely deforming organs from the CT's labels (--ct-labels, --ct-side, "
    "--groups or --rigid/--incompressible/--compressible); it also writes organs.json and organs.csv (per organ: "
    "Dice, HD95, centroid error, volume change, rigidity of bones and target) and draws the organs' contours on "
    "report.png. 'jaxreg apply --fixed FIXED "
    "--moving MOVING -t OUTDIR/warp.nii.gz -t OUTDIR/affine.mat' (antsApplyTransforms order) reproduces "
    "warped.nii.gz; 'jaxreg apply --fixed MOVING --moving FIXED -t [OUTDIR/affine.mat,1] -t "
    "OUTDIR/inverse_warp.nii.gz' carries fixed-space images and labels into the moving space, and 'jaxreg "
    "apply-points' moves landmarks. Inputs are checked first (a constant, complex or NaN image is an error); nothing is written "
    "unless the whole run succeeds."
)


# -- parser ----------------------------------------------------------------------------------------------------
def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``register`` subcommand to ``subparsers`` (the object returned by ``add_subparsers``).

    Returns:
      The new subparser, whose ``func`` default is :func:`run`.
    """
    p = subparsers.add_parser(
        "register",
        help="register two images and write the warped image, transforms and a report",
        description=_DESCRIPTION,
    )
    p.add_argument("fixed", metavar="FIXED", help="fixed (reference) image (NIfTI, .mgz, .nrrd, .mha/.mhd or a DICOM folder)")
    p.add_argument("moving", metavar="MOVING", help="moving image, any of FIXED's formats (any grid)")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder (created)")
    p.add_argument(
        "--pipeline",
        choices=PIPELINES,
        default=None,
        help=f"one of {', '.join(PIPELINES)} (default: default, mono-modal); overrides the config file",
    )
    p.add_argument(
        "--initial-transform",
        metavar="T",
        help="start from a linear transform file (ANTs -r: affine.mat, 0GenericAffine.mat, ITK .txt; [T.mat,1] "
        "for its inverse), kept as the first part of the result; or a start of the linear stage: "
        + ", ".join(INITS),
    )
    p.add_argument("--fixed-mask", metavar="M", help="mask on the fixed grid (non-zero: voxels that count)")
    p.add_argument("--moving-mask", metavar="M", help="mask on the moving grid (linear stage)")
    p.add_argument(
        "--labels",
        nargs=2,
        metavar=("FIXED_LABELS", "MOVING_LABELS"),
        help="label maps on the fixed and the moving grid: warped_labels.nii.gz, Dice and HD95",
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--label-list",
        nargs="+",
        type=int,
        metavar="L",
        help="labels to evaluate (default: every non-zero label of either map)",
    )
    which.add_argument(
        "--labels-json",
        metavar="F",
        help="JSON list of labels (the layouts 'jaxreg evaluate --labels-json' reads, with optional names)",
    )
    p.add_argument(
        "--config",
        metavar="TOML",
        help="pipeline options: pipeline, window; [linear] levels, similarity; [deformable] levels, similarity, "
        "step, step_decay, sigma_update, sigma_field, symmetric, exp_steps, exp_tolerance, force; [[channels]] fixed, moving, similarity, "
        "weight (extra image pairs). A similarity is a spec ('lncc(window=5)') or a list of specs and "
        "{spec, weight} tables (their weighted sum)",
    )
    p.add_argument(
        "--similarity",
        metavar="SPEC",
        help="similarity of the deformable (greedy) stage, a registry spec of jaxreg.terms, e.g. "
        "'features(model=\"labelmind\")' (learned multi-modal features), 'mind(radius=1)', 'lncc(window=7)'; "
        "overrides the config file",
    )
    organ = p.add_argument_group("organ-aware pipeline (--pipeline organ, adaptive radiotherapy)")
    organ.add_argument("--ct-labels", metavar="L", help="the CT's organ labels, on the CT's grid")
    organ.add_argument(
        "--ct-side",
        choices=("moving", "fixed"),
        default="moving",
        help="which image is the CT: moving (default; the plan is carried onto the daily MR) or fixed",
    )
    organ.add_argument(
        "--groups",
        metavar="F",
        help="TOML or JSON file with rigid = [...], incompressible = [...], compressible = [...] label lists",
    )
    for name, what in (
        ("rigid", "bones (each moves rigidly)"),
        ("incompressible", "the target, e.g. the prostate (volume kept)"),
        ("compressible", "bladder, rectum, bowel (deform freely)"),
    ):
        organ.add_argument(f"--{name}", nargs="+", type=int, metavar="L", help=f"labels of {what}; overrides --groups")
    organ.add_argument(
        "--organ-similarity",
        choices=("mind", "nmi", "ngf", "mi"),
        default="nmi",
        help="similarity of the organ-aware deformable stage (default nmi: normalised MI; mind: MIND-SSC)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="one coarse level per stage (a fast preview; levels in the config file take precedence)",
    )
    add_intensity_arguments(p)
    p.add_argument(
        "--write-composite-transform",
        action="store_true",
        help="also write Composite.h5 (-t Composite.h5 = -t warp.nii.gz -t affine.mat) and InverseComposite.h5 "
        "(= -t [affine.mat,1] -t inverse_warp.nii.gz), ITK HDF5 files as antsRegistration "
        "--write-composite-transform 1 writes them",
    )
    quiet = p.add_mutually_exclusive_group()
    quiet.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors (no progress bars)")
    quiet.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object on stdout (files written, metrics, timings); other lines go to stderr",
    )
    p.set_defaults(func=run)
    return p


# -- options ---------------------------------------------------------------------------------------------------
def _defaults() -> dict[str, Any]:
    """The default pipeline's settings, read from :data:`jaxreg.optimize.PRESETS` (in step with the library)."""
    from jaxreg.optimize import DEFAULT_GREEDY_LEVELS, DEFAULT_LINEAR_LEVELS

    return {
        "pipeline": "default",
        "linear_levels": tuple(DEFAULT_LINEAR_LEVELS),
        "deformable_levels": tuple(DEFAULT_GREEDY_LEVELS),
        "greedy": {},
        "window": 5,
    }


def stages_from_options(opts: dict[str, Any]) -> tuple:
    """The pipeline (:func:`jaxreg.optimize.preset`) that :func:`pipeline_options`' settings describe."""
    from jaxreg.optimize import preset

    similarity = opts.get("similarity")
    if similarity is None and opts["pipeline"] in ("default", "syn"):
        similarity = f"lncc(window={int(opts['window'])})"
    linear_similarity = opts.get("linear_similarity")
    channels = opts.get("channels") or ()
    if channels:
        from jaxreg.optimize.objective import as_similarity
        from jaxreg.similarity import weighted_sum

        stages = PRESETS[opts["pipeline"]]
        demons = opts["greedy"].get("force") == "demons" or any(
            getattr(st.method, "force", None) == "demons" for st in stages
        )
        if demons or all(_is_linear_stage(st) for st in stages):
            what = "the demons force compares one image pair" if demons else "it has no deformable stage"
            raise ValueError(f"channels: pipeline {opts['pipeline']} cannot use [[channels]] ({what})")
        if similarity is None:  # the preset's own deformable similarity
            similarity = next(
                (
                    _stage_similarity(st)
                    for st in stages
                    if not _is_linear_stage(st) and _stage_similarity(st) is not None
                ),
                None,
            )
        if similarity is None:
            raise ValueError(
                f"channels: pipeline {opts['pipeline']} has no deformable stage with a similarity to compare them"
            )
        own = as_similarity(similarity)
        items = [(_spec_text(own), 1.0, 0)]
        for k, ch in enumerate(channels):
            items.append((_spec_text(as_similarity(ch["similarity"] or own)), ch["weight"], k + 1))
        similarity = weighted_sum(tuple(items))
        if linear_similarity is None:  # the linear stage compares FIXED and MOVING only
            linear_similarity = next(
                (_stage_similarity(st) for st in PRESETS[opts["pipeline"]] if _is_linear_stage(st)), "ncc"
            )
        linear_similarity = weighted_sum(((_spec_text(as_similarity(linear_similarity)), 1.0, 0),))
    return preset(
        opts["pipeline"],
        linear_levels=opts["linear_levels"],
        deformable_levels=opts["deformable_levels"],
        greedy=dict(opts["greedy"]),
        similarity=similarity,
        linear_similarity=linear_similarity,
        init=opts.get("init"),
    )


def _is_linear_stage(stage: Any) -> bool:
    model = stage.model if stage.model is not None else stage.method.default_model
    return bool(model.is_linear)


def _stage_similarity(stage: Any) -> Any:
    """The similarity of a preset stage: a greedy stage's, or its objective's (first) similarity term."""
    if hasattr(stage.method, "similarity"):
        return None if stage.method.force == "demons" else stage.method.similarity
    terms = getattr(getattr(stage.method, "objective", None), "terms", ())
    return next((t.fn for t in terms if t.kind == "similarity"), None)


def _spec_text(fn: Any) -> str:
    """The registry spec of a similarity term (``"lncc(window=5)"``, ``"ncc"``)."""
    from jaxreg.core.registry import Configured

    return repr(fn) if isinstance(fn, Configured) else fn.__name__


_TOP_KEYS = ("pipeline", "window", "linear", "deformable", "channels")
_LINEAR_KEYS = ("levels", "similarity")
_CHANNEL_KEYS = ("fixed", "moving", "similarity", "weight")
_TERM_KEYS = ("spec", "weight")
_GREEDY_KEYS = (
    "step", "step_decay", "sigma_update", "sigma_field", "symmetric", "exp_steps", "exp_tolerance", "force"
)
_DEFORMABLE_KEYS = ("levels", "similarity") + _GREEDY_KEYS


def _unknown(table: dict, allowed: Sequence[str], where: str, path: str) -> None:
    extra = sorted(set(table) - set(allowed))
    if extra:
        raise ValueError(
            f"{path}: unknown key '{where}{extra[0]}' (expected one of {', '.join(sorted(allowed))})"
        )


def _number(
    value: Any,
    key: str,
    path: str,
    *,
    integer: bool = False,
    minimum: float | None = None,
    positive: bool = False,
) -> float | int:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if ok and integer:
        ok = isinstance(value, int) or float(value).is_integer()
    kind = "an integer" if integer else "a number"
    if not ok:
        raise ValueError(f"{path}: {key}: expected {kind}, got {value!r}")
    if positive and not value > 0:
        raise ValueError(
            f"{path}: {key}: expected a positive {'integer' if integer else 'number'}, got {value!r}"
        )
    if minimum is not None and value < minimum:
        raise ValueError(f"{path}: {key}: expected {kind} >= {minimum:g}, got {value!r}")
    return int(value) if integer else float(value)


def _levels(value: Any, key: str, path: str) -> tuple:
    from jaxreg.optimize.engine import Level

    shape_msg = f"{path}: {key}: expected a non-empty list of [shrink, smooth_mm, iterations] levels"
    if not isinstance(value, list) or not value:
        raise ValueError(f"{shape_msg}, got {value!r}")
    out = []
    for i, lv in enumerate(value):
        if not isinstance(lv, list) or len(lv) != 3:
            raise ValueError(f"{shape_msg}; level {i + 1} is {lv!r}")
        shrink = _number(lv[0], f"{key}[{i + 1}] shrink", path, integer=True, positive=True)
        smooth = _number(lv[1], f"{key}[{i + 1}] smooth_mm", path, minimum=0.0)
        iters = _number(lv[2], f"{key}[{i + 1}] iterations", path, integer=True, positive=True)
        out.append(Level(int(shrink), float(smooth), int(iters)))
    return tuple(out)


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a ``--config`` TOML file (layout in the module docstring).

    Returns:
      The options it sets, as ``{"pipeline": str, "window": int, "linear_levels": (Level, ...),
      "deformable_levels": (Level, ...), "greedy": {name: value}}`` (only the keys present).

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: not valid TOML, an unknown key or a value of the wrong type or range (the message names the
        file and the key).
    """
    import tomllib

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(2, f"{path}: no such file", path)
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: not valid TOML ({e})") from None
    _unknown(data, _TOP_KEYS, "", path)
    out: dict[str, Any] = {}
    if "pipeline" in data:
        if data["pipeline"] not in PIPELINES:
            raise ValueError(
                f"{path}: pipeline: expected one of {', '.join(PIPELINES)}, got {data['pipeline']!r}"
            )
        out["pipeline"] = data["pipeline"]
    if "window" in data:
        out["window"] = _number(data["window"], "window", path, integer=True, positive=True)
    for stage, allowed in (("linear", _LINEAR_KEYS), ("deformable", _DEFORMABLE_KEYS)):
        if stage not in data:
            continue
        table = data[stage]
        if not isinstance(table, dict):
            raise ValueError(f"{path}: {stage}: expected a table ([{stage}]), got {table!r}")
        _unknown(table, allowed, f"{stage}.", path)
        if "levels" in table:
            out[f"{stage}_levels"] = _levels(table["levels"], f"{stage}.levels", path)
    greedy: dict[str, Any] = {}
    table = data.get("deformable", {})
    for key in ("step",):
        if key in table:
            greedy[key] = _number(table[key], f"deformable.{key}", path, positive=True)
    if "step_decay" in table:
        greedy["step_decay"] = _number(table["step_decay"], "deformable.step_decay", path, minimum=0.0)
        if greedy["step_decay"] > 1:
            raise ValueError(f"{path}: deformable.step_decay: expected at most 1, got {greedy['step_decay']}")
    for key in ("sigma_update", "sigma_field", "exp_tolerance"):
        if key in table:
            greedy[key] = _number(table[key], f"deformable.{key}", path, minimum=0.0)
    if "exp_steps" in table:
        greedy["exp_steps"] = _number(
            table["exp_steps"], "deformable.exp_steps", path, integer=True, minimum=0
        )
        if greedy["exp_steps"] > 20:
            raise ValueError(f"{path}: deformable.exp_steps: expected at most 20, got {greedy['exp_steps']}")
    if "symmetric" in table:
        if not isinstance(table["symmetric"], bool):
            raise ValueError(
                f"{path}: deformable.symmetric: expected true or false, got {table['symmetric']!r}"
            )
        greedy["symmetric"] = table["symmetric"]
    if "force" in table:
        if table["force"] not in ("metric", "demons"):
            raise ValueError(
                f"{path}: deformable.force: expected 'metric' or 'demons', got {table['force']!r}"
            )
        greedy["force"] = table["force"]
    if "similarity" in table:
        out["similarity"] = _similarity(table["similarity"], "deformable.similarity", path)
    lin = data.get("linear", {})
    if "similarity" in lin:
        out["linear_similarity"] = _similarity(lin["similarity"], "linear.similarity", path)
    if greedy:
        out["greedy"] = greedy
    if "channels" in data:
        out["channels"] = _channels(data["channels"], path)
    return out


def _similarity(value: Any, key: str, path: str) -> Any:
    """A ``similarity`` value of the config file: a spec as it is, or a list as one ``weighted_sum`` term."""
    from jaxreg.similarity import weighted_sum
    from jaxreg.terms import parse

    def term(spec: Any, where: str) -> Any:
        try:
            return parse(spec, "similarity", argument=where)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: {e}") from None

    if not isinstance(value, list):
        term(value, key)
        return value
    if not value:
        raise ValueError(f"{path}: {key}: expected a spec or a non-empty list of specs, got []")
    items = []
    for i, item in enumerate(value):
        where = f"{key}[{i + 1}]"
        weight = 1.0
        if isinstance(item, dict) and "name" not in item:  # {spec = "...", weight = w}
            _unknown(item, _TERM_KEYS, f"{where}.", path)
            if "spec" not in item:
                raise ValueError(f"{path}: {where}: expected a spec or a table with spec (and weight)")
            if "weight" in item:
                weight = _number(item["weight"], f"{where}.weight", path)
            item = item["spec"]
        items.append((_spec_text(term(item, where)), weight))
    return weighted_sum(tuple(items))


def _channels(value: Any, path: str) -> tuple[dict[str, Any], ...]:
    """The ``[[channels]]`` tables: image paths (relative to the config file), similarity and weight."""
    if not isinstance(value, list) or not value or not all(isinstance(t, dict) for t in value):
        raise ValueError(f"{path}: channels: expected [[channels]] tables, got {value!r}")
    root = os.path.dirname(os.path.abspath(path))
    out = []
    for i, table in enumerate(value):
        where = f"channels[{i + 1}]"
        _unknown(table, _CHANNEL_KEYS, f"{where}.", path)
        files = {}
        for side in ("fixed", "moving"):
            if not isinstance(table.get(side), str) or not table[side]:
                raise ValueError(f"{path}: {where}.{side}: expected the path of an image, got {table.get(side)!r}")
            files[side] = os.path.join(root, table[side])
            if not os.path.isfile(files[side]):
                raise ValueError(f"{path}: {where}.{side}: {files[side]}: no such file")
        sim = None
        if "similarity" in table:
            sim = _similarity(table["similarity"], f"{where}.similarity", path)
        weight = _number(table.get("weight", 1.0), f"{where}.weight", path)
        out.append({"fixed": files["fixed"], "moving": files["moving"], "similarity": sim, "weight": weight})
    return tuple(out)


def pipeline_options(
    *, config: str | os.PathLike | None = None, pipeline: str | None = None, quick: bool = False
) -> dict[str, Any]:
    """The pipeline settings for a command line (:func:`stages_from_options` turns them into stages).

    Priority, low to high: the default pipeline's settings (:data:`jaxreg.optimize.PRESETS`), ``quick`` (:data:`QUICK_LINEAR_LEVELS`,
    :data:`QUICK_DEFORMABLE_LEVELS`), the ``config`` file (:func:`read_config`), ``pipeline``.

    Returns:
      ``{"pipeline", "linear_levels", "deformable_levels", "greedy" (settings of the greedy stage that differ
      from the preset's, :class:`~jaxreg.optimize.Greedy` field names), "window"}`` and ``"similarity"`` when the
      file sets one (a registry spec of the deformable stage's similarity, e.g. ``"lncc(window=7)"``).
    """
    from jaxreg.optimize.engine import Level

    opts = _defaults()
    if quick:
        opts["linear_levels"] = tuple(Level(*lv) for lv in QUICK_LINEAR_LEVELS)
        opts["deformable_levels"] = tuple(Level(*lv) for lv in QUICK_DEFORMABLE_LEVELS)
    if config is not None:
        cfg = read_config(config)
        greedy = cfg.pop("greedy", {})
        opts.update(cfg)
        opts["greedy"] = {**opts["greedy"], **greedy}
    if pipeline is not None:
        if pipeline not in PIPELINES:
            raise ValueError(f"--pipeline: expected one of {', '.join(PIPELINES)}, got {pipeline!r}")
        opts["pipeline"] = pipeline
    return opts


# -- inputs ----------------------------------------------------------------------------------------------------
def _require_file(path: str) -> None:
    if not os.path.exists(path):
        raise FileNotFoundError(2, f"{path}: no such file", path)
    if os.path.isdir(path):
        raise ValueError(f"{path}: is a folder, expected a NIfTI file")


def _same_grid(a: Any, b: Any) -> bool:
    if a.shape != b.shape:
        return False
    scale = max(1.0, float(np.abs(b.affine).max()))
    return bool(np.allclose(a.affine, b.affine, rtol=0, atol=1e-5 * scale))


def _grid_text(g: Any) -> str:
    return f"{'x'.join(map(str, g.shape))} voxels of {'x'.join(f'{s:g}' for s in g.spacing)} mm"


def _check_on_grid(image: Any, ref: Any, what: str, path: str, ref_what: str, ref_path: str) -> None:
    if image.grid.ndim != ref.grid.ndim:
        raise ValueError(
            f"{what} {path} is {image.grid.ndim}-D but the {ref_what} {ref_path} is {ref.grid.ndim}-D"
        )
    if not _same_grid(image.grid, ref.grid):
        where = "shape" if image.grid.shape != ref.grid.shape else "voxel-to-world affine"
        raise ValueError(
            f"{what} {path} is on a different grid than the {ref_what} {ref_path} ({where} differs: "
            f"{_grid_text(image.grid)} vs {_grid_text(ref.grid)}); resample it onto the {ref_what}'s grid first "
            "(jaxreg apply --labels with an identity transform)"
        )


def load_inputs(
    fixed: str,
    moving: str,
    *,
    fixed_mask: str | None = None,
    moving_mask: str | None = None,
    labels: Sequence[str] | None = None,
    label_list: Sequence[int] | None = None,
    labels_json: str | None = None,
) -> RegistrationInputs:
    """Read and check every input of a run before any computation (and before anything is written).

    Every error names the command-line argument it concerns (``FIXED``, ``MOVING``, ``--fixed-mask``,
    ``--moving-mask``, ``--labels``, ``--label-list``, ``--labels-json``).

    Raises:
      FileNotFoundError: a missing file.
      ValueError: unreadable, complex or NaN images (:func:`jaxreg.io.load_image`), constant images
        (:func:`jaxreg.io.check_registrable`), 2-D against 3-D images, a mask or label map on a different grid
        than its image, an empty mask, non-integer or duplicate labels.
    """
    import jax.numpy as jnp

    from jaxreg.core.grid import Image
    from jaxreg.io import check_registrable, load_image, load_labels

    named = [(fixed, "FIXED"), (moving, "MOVING")]
    if fixed_mask is not None:
        named.append((fixed_mask, "--fixed-mask"))
    if moving_mask is not None:
        named.append((moving_mask, "--moving-mask"))
    if labels is not None:
        named += [(labels[0], "--labels"), (labels[1], "--labels")]
    if labels_json is not None:
        if labels is None:
            raise UsageError("--labels-json needs --labels FIXED_LABELS MOVING_LABELS")
        named.append((labels_json, "--labels-json"))
    if label_list is not None and labels is None:
        raise UsageError("--label-list needs --labels FIXED_LABELS MOVING_LABELS")
    for p, what in named:
        with argument(what):
            _require_file(os.fspath(p))

    def image(path: str, what: str) -> Any:
        with argument(what):
            im = load_image(path)
            check_registrable(im, name=os.fspath(path))
        return Image(jnp.asarray(im.data, jnp.float32), im.grid)

    f_img, m_img = image(fixed, "FIXED"), image(moving, "MOVING")
    if f_img.grid.ndim != m_img.grid.ndim:
        raise UsageError(
            f"MOVING: {moving} is {m_img.grid.ndim}-D but FIXED {fixed} is {f_img.grid.ndim}-D "
            "(register 2-D with 2-D and 3-D with 3-D)"
        )
    masks = []
    for path, ref, ref_path, what, ref_what in (
        (fixed_mask, f_img, fixed, "--fixed-mask", "fixed image"),
        (moving_mask, m_img, moving, "--moving-mask", "moving image"),
    ):
        if path is None:
            masks.append(None)
            continue
        with argument(what):
            mk = load_image(path)
            _check_on_grid(mk, ref, what, path, ref_what, ref_path)
        data = np.asarray(mk.data) != 0
        if not data.any():
            raise UsageError(f"{what} {path} is empty (no non-zero voxel)")
        masks.append(Image(jnp.asarray(data, jnp.float32), ref.grid))
    fl = ml = None
    chosen: list[int] | None = None
    names: dict[int, str] = {}
    if labels is not None:
        with argument("--labels"):
            fl, ml = load_labels(labels[0]), load_labels(labels[1])
            _check_on_grid(fl, f_img, "the fixed label map", labels[0], "fixed image", fixed)
            _check_on_grid(ml, m_img, "the moving label map", labels[1], "moving image", moving)
        fl, ml = Image(fl.data, f_img.grid), Image(ml.data, m_img.grid)
        if labels_json is not None:
            from jaxreg.cli.evaluate import read_label_list

            with argument("--labels-json"):
                chosen, names = read_label_list(labels_json)
        elif label_list is not None:
            chosen = [int(v) for v in label_list]
            dup = sorted({x for x in chosen if chosen.count(x) > 1})
            if dup:
                raise UsageError(f"--label-list: duplicate labels {dup}")
        else:
            vals = np.union1d(np.unique(np.asarray(fl.data)), np.unique(np.asarray(ml.data)))
            chosen = [int(v) for v in vals if v != 0]
            if not chosen:
                raise UsageError(f"--labels {labels[0]} {labels[1]}: no non-zero labels to evaluate")
    return RegistrationInputs(
        f_img, m_img, masks[0], masks[1], fl, ml, chosen, names, tuple(os.fspath(p) for p, _ in named)
    )


def initial_transform(spec: str, inp: RegistrationInputs, pipeline: str) -> tuple[Any, str | None, str | None]:
    """The ``--initial-transform`` of a run, checked (nothing is written).

    Args:
      spec: a linear transform file (``[file,1]``: its inverse) or a keyword of
        :data:`jaxreg.optimize.init.INITS`.
      inp: the run's inputs (their dimension; the images, for a keyword start without a linear stage).
      pipeline: the pipeline's name.

    Returns:
      ``(outer, path, keyword)``: the fixed transform the stages start on top of (fixed world mm -> moving world
      mm, an :class:`~jaxreg.transforms.Affine`; ``None`` for none), the file read (or ``None``), and the start
      of the linear stage (``None`` unless ``spec`` is a keyword and the pipeline has a linear stage; without
      one, ``center``/``com``/``moments`` become ``outer``).

    Raises:
      ValueError, OSError: naming ``--initial-transform``: a missing or unreadable file, a non-linear or
        non-finite transform, another dimension than the images, a keyword the pipeline cannot use.
    """
    text = spec.strip()
    if text in INITS:
        if pipeline not in PRESETS:
            raise UsageError(
                f"--initial-transform {text}: pipeline {pipeline} chooses its own start; give a transform file"
            )
        if any(_is_linear_stage(st) for st in PRESETS[pipeline]):
            return None, None, text
        if text == "auto":
            raise UsageError(
                f"--initial-transform auto: pipeline {pipeline} has no linear stage to score candidate starts "
                "with; use center, com, moments or a transform file"
            )
        if text == "identity":
            return None, None, None
        from jaxreg.optimize.init import center_init, moments_init

        with argument("--initial-transform"):
            if text == "center":
                return center_init(inp.fixed, inp.moving).linear_part(), None, None
            mode = "principal" if text == "moments" else "com"
            t = moments_init(
                inp.fixed, inp.moving, mode=mode, fixed_mask=inp.fixed_mask, moving_mask=inp.moving_mask
            )
            return t.linear_part(), None, None
    from jaxreg.io import compose_files

    with argument("--initial-transform"):
        path, invert = parse_transform_spec(text)
        if not os.path.exists(path):
            raise FileNotFoundError(2, f"{path}: no such file", path)
        if os.path.isdir(path):
            raise ValueError(f"{path}: is a folder, expected a transform file (.mat, .txt, .tfm)")
        t = compose_files([path], invert=[invert])
        if not t.is_linear:
            raise ValueError(
                f"{path}: expected a linear transform (.mat, .txt, .tfm), got a {type(t).__name__}; the initial "
                "transform of a registration is linear"
            )
        n = inp.fixed.grid.ndim
        if t.ndim != n:
            raise ValueError(f"{path}: a {t.ndim}-D transform for {n}-D images")
        lin = t.linear_part()
        if not np.all(np.isfinite(np.asarray(lin.homogeneous()))):
            raise ValueError(f"{path}: the transform has NaN or infinite parameters")
        if abs(float(np.linalg.det(np.asarray(lin.homogeneous())[:n, :n]))) < 1e-12:
            raise ValueError(f"{path}: the transform is singular (its matrix has determinant 0)")
    return lin, os.fspath(path), None


def load_channels(channels: Sequence[dict[str, Any]], inp: RegistrationInputs) -> tuple[Any, Any] | None:
    """FIXED/MOVING and the ``[[channels]]`` images of ``--config`` stacked as channels ``(*shape, C)``.

    Returns:
      ``(fixed, moving)`` :class:`~jaxreg.core.grid.Image` s on the fixed and the moving grid, or ``None``
      without channels.

    Raises:
      ValueError: naming ``--config``: unreadable, constant or NaN images, an image on another grid than FIXED
        (``fixed``) or MOVING (``moving``).
    """
    if not channels:
        return None
    import jax.numpy as jnp

    from jaxreg.core.grid import Image
    from jaxreg.io import check_registrable, load_image

    data = {"fixed": [inp.fixed.data], "moving": [inp.moving.data]}
    for i, ch in enumerate(channels):
        for side, ref in (("fixed", inp.fixed), ("moving", inp.moving)):
            path = ch[side]
            with argument("--config"):
                im = load_image(path)
                check_registrable(im, name=os.fspath(path))
                _check_on_grid(im, ref, f"channels[{i + 1}].{side}", path, f"{side} image", side.upper())
            data[side].append(jnp.asarray(im.data, jnp.float32))
    return (
        Image(jnp.stack(data["fixed"], axis=-1), inp.fixed.grid),
        Image(jnp.stack(data["moving"], axis=-1), inp.moving.grid),
    )


def check_output(outdir: str | os.PathLike, inputs: Sequence[str | os.PathLike]) -> None:
    """:func:`jaxreg.io.check_output_folder` with its errors naming ``-o`` (nothing is created)."""
    from jaxreg.io import check_output_folder

    with argument("-o"):
        check_output_folder(outdir, inputs)


def load_organ_inputs(args: argparse.Namespace, inp: RegistrationInputs) -> tuple[Any, Any]:
    """The CT's labels and the organ groups of ``--pipeline organ``, checked (nothing is written).

    Returns:
      ``(ct_labels, groups, names)``: an :class:`~jaxreg.core.grid.Image` on the CT's grid,
      :class:`~jaxreg.radiotherapy.OrganGroups` and label names (from a groups JSON's ``labels`` table).

    Raises:
      ValueError: no ``--ct-labels``, no groups, labels on another grid than the CT (``--ct-side`` names which
        image the CT is), a label in two groups, a group label absent from the labels (an empty organ mask).
    """
    from jaxreg.core.grid import Image
    from jaxreg.io import load_labels
    from jaxreg.radiotherapy import OrganGroups, load_groups

    if args.ct_labels is None:
        raise UsageError("--ct-labels: --pipeline organ needs the CT's organ labels")
    ct_path = args.moving if args.ct_side == "moving" else args.fixed
    ct_img = inp.moving if args.ct_side == "moving" else inp.fixed
    with argument("--ct-labels"):
        _require_file(args.ct_labels)
        lab = load_labels(args.ct_labels)
        _check_on_grid(lab, ct_img, "the CT's label map", args.ct_labels, f"CT ({args.ct_side} image)", ct_path)
    lab = Image(lab.data, ct_img.grid)
    flags = {k: getattr(args, k) for k in ("rigid", "incompressible", "compressible")}
    if args.groups is not None:
        with argument("--groups"):
            _require_file(args.groups)
            base = load_groups(args.groups)
        flags = {k: (v if v is not None else getattr(base, k)) for k, v in flags.items()}
    elif all(v is None for v in flags.values()):
        raise UsageError("--groups: --pipeline organ needs --groups FILE or --rigid/--incompressible/--compressible")
    with argument("--rigid/--incompressible/--compressible"):  # the file's own groups were checked by load_groups
        groups = OrganGroups.create(**{k: (v or ()) for k, v in flags.items()})
    with argument("--ct-labels"):
        groups.check(lab, name=f"--ct-labels {args.ct_labels}")
    return lab, groups, _label_names(args.groups)


def _label_names(path: str | None) -> dict[int, str]:
    """Label names of a groups JSON with a ``labels`` table (TotalSegmentator's labels.json), else none."""
    if path is None or not str(path).endswith(".json"):
        return {}
    with open(path) as fh:
        data = json.load(fh)
    table = data.get("labels") if isinstance(data, dict) else None
    if not isinstance(table, dict):
        return {}
    out = {}
    for k, v in table.items():
        try:
            out[int(k)] = str(v)
        except ValueError:
            continue
    return out


def _organ_csv(rows: Sequence[dict]) -> Callable[[str], None]:
    import csv

    from jaxreg.radiotherapy import ORGAN_COLUMNS

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(ORGAN_COLUMNS))
            w.writeheader()
            for r in rows:
                w.writerow({k: ("" if r.get(k) is None else r[k]) for k in ORGAN_COLUMNS})

    return write


def add_intensity_arguments(p: argparse.ArgumentParser) -> None:
    """``--winsorize LOW HIGH`` and ``--histogram-matching`` (``jaxreg register`` and ``register-many``)."""
    p.add_argument(
        "--winsorize",
        nargs=2,
        type=float,
        metavar=("LOW", "HIGH"),
        help="register images clipped to their LOW and HIGH intensity quantiles and rescaled to [0, 1] "
        "(antsRegistration --winsorize-image-intensities [LOW,HIGH], e.g. 0.005 0.995); outputs are of the "
        "original images",
    )
    p.add_argument(
        "--histogram-matching",
        action="store_true",
        help="register MOVING with its intensities matched to FIXED's histogram (12 quantiles above the mean; "
        "antsRegistration --use-histogram-matching 1): for one modality only; outputs are of the original images",
    )


# -- run -------------------------------------------------------------------------------------------------------
def check_intensity_options(args: argparse.Namespace, *, channels: bool, organ: bool) -> None:
    """``--winsorize`` and ``--histogram-matching``: valid quantiles, and not with [[channels]] or the organ
    pipeline (which windows its CT itself). Raises :class:`UsageError` naming the flag."""
    from jaxreg.warp.intensity import check_winsorize

    w = getattr(args, "winsorize", None)
    hm = bool(getattr(args, "histogram_matching", False))
    check_winsorize(w, "--winsorize")  # its message names the flag
    for flag, on in (("--winsorize", w is not None), ("--histogram-matching", hm)):
        if on and channels:
            raise UsageError(f"{flag}: not supported with [[channels]] of --config")
        if on and organ:
            raise UsageError(f"{flag}: not supported by --pipeline organ (it windows the CT itself)")


def prepare_intensities(fixed: Any, moving: Any, args: argparse.Namespace, *, log: Callable[[str], None]) -> tuple:
    """The images the metrics compare (:mod:`jaxreg.warp.intensity`, antsRegistration's order): both winsorised
    (``--winsorize LOW HIGH``), then MOVING histogram-matched to FIXED (``--histogram-matching``)."""
    from jaxreg.warp.intensity import prepare_pair

    w, hm = getattr(args, "winsorize", None), bool(getattr(args, "histogram_matching", False))
    fixed, moving = prepare_pair(fixed, moving, winsorize=w, histogram_matching=hm)
    if w is not None:
        log(f"intensity:  winsorized to the {w[0]:g}-{w[1]:g} quantiles, rescaled to [0, 1]")
    if hm:
        log("intensity:  moving matched to the fixed image's histogram (12 quantiles above the mean)")
    return fixed, moving


def run(args: argparse.Namespace, *, log: Callable[[str], None] = print) -> int:
    """Run ``jaxreg register`` with parsed arguments; returns the exit status (0).

    One pair per process: without a persistent compilation cache (``--no-cache``) every program of the run is
    compiled for one use (:func:`jaxreg.core.compilation.single_use`: small programs fast-compiled); with the
    cache, for reuse by later runs.

    Raises:
      ValueError, OSError: bad inputs or options (raised before anything is written), or a failed write (the
        files this run created are removed).
    """
    import jax

    from jaxreg.core.compilation import single_use

    with single_use(not jax.config.jax_compilation_cache_dir):
        return _run(args, log=log)


def _run(args: argparse.Namespace, *, log: Callable[[str], None]) -> int:
    from jaxreg.evaluation import summarize
    from jaxreg.io import write_outputs

    t_all = time.perf_counter()
    quiet, as_json = bool(getattr(args, "quiet", False)), bool(getattr(args, "json", False))
    if quiet:
        log = _silent
    elif as_json:  # stdout carries the JSON object only
        log = _to_stderr
    if args.config is not None:
        with argument("--config"):
            read_config(args.config)  # checked before the images are read
    similarity = getattr(args, "similarity", None)
    if similarity is not None:
        from jaxreg.terms import parse

        with argument("--similarity"):
            parse(similarity, "similarity", argument="--similarity")  # checked (and a model loaded) first
    t0 = time.perf_counter()
    inp = load_inputs(
        args.fixed,
        args.moving,
        fixed_mask=args.fixed_mask,
        moving_mask=args.moving_mask,
        labels=args.labels,
        label_list=args.label_list,
        labels_json=args.labels_json,
    )
    with argument("--config"):
        opts = pipeline_options(config=args.config, pipeline=args.pipeline, quick=args.quick)
    check_intensity_options(args, channels=bool(opts.get("channels")), organ=opts["pipeline"] == "organ")
    outer, init_path = None, None
    if getattr(args, "initial_transform", None) is not None:
        outer, init_path, keyword = initial_transform(args.initial_transform, inp, opts["pipeline"])
        if keyword is not None:
            opts["init"] = keyword
    if similarity is not None:
        opts["similarity"] = similarity
    organ = None
    if opts["pipeline"] == "organ":
        if opts.get("channels"):
            raise UsageError("--config: [[channels]] are not supported by --pipeline organ")
        organ = load_organ_inputs(args, inp)
    channels = load_channels(opts.get("channels") or (), inp)
    all_inputs = list(inp.paths) + ([args.config] if args.config else [])
    all_inputs += [p for ch in opts.get("channels") or () for p in (ch["fixed"], ch["moving"])]
    all_inputs += [init_path] if init_path else []
    all_inputs += [p for p in (getattr(args, "ct_labels", None), getattr(args, "groups", None)) if p]
    check_output(args.output, all_inputs)
    t_load = time.perf_counter() - t0
    # every input is checked: only now is the registration engine imported
    from jaxreg.optimize import register

    with argument("--config"):
        if organ is not None:
            from jaxreg.radiotherapy import organ_aware

            kw = {}
            if args.quick:
                kw = {"linear_levels": opts["linear_levels"], "levels": opts["deformable_levels"]}
            stages = organ_aware(organ[0], organ[1], side=args.ct_side, similarity=args.organ_similarity, **kw)
        else:
            stages = stages_from_options(opts)
    log(f"fixed:      {args.fixed}  ({_grid_text(inp.fixed.grid)})")
    log(f"moving:     {args.moving}  ({_grid_text(inp.moving.grid)})")
    log(f"pipeline:   {opts['pipeline']}: " + "; ".join(
        f"{st.name} levels {[list(lv) for lv in st.levels]}" for st in stages
    ))
    reg_fixed, reg_moving = inp.fixed, inp.moving
    if organ is not None:  # the CT is registered windowed (jaxreg.radiotherapy.ct_window); outputs use the original
        from jaxreg.radiotherapy import ct_window

        if args.ct_side == "moving":
            reg_moving = ct_window(inp.moving, labels=organ[0], groups=organ[1])
        else:
            reg_fixed = ct_window(inp.fixed, labels=organ[0], groups=organ[1])
    if outer is not None:
        log(f"initial:    {args.initial_transform} (kept: the stages start on top of it)")
    reg_fixed, reg_moving = prepare_intensities(reg_fixed, reg_moving, args, log=log)
    if channels:
        reg_fixed, reg_moving = channels
        log(f"channels:   {reg_fixed.data.shape[-1]} image pairs (FIXED/MOVING and [[channels]] of --config)")
    bar, close_bar = _progress_bar(quiet)
    try:
        result = register(
            reg_fixed,
            reg_moving,
            method=stages,
            outer=outer,
            fixed_mask=inp.fixed_mask,
            moving_mask=inp.moving_mask,
            progress=bar,
        )
    finally:
        close_bar()
    if result.stages[0].start is not None:
        how = "best of the candidate starts" if result.stages[0].start not in INITS else "--initial-transform"
        log(f"start:      {result.stages[0].start} ({how})")
    extra = {
        "command": "jaxreg register",
        "inputs": {
            "fixed": os.fspath(args.fixed),
            "moving": os.fspath(args.moving),
            "fixed_mask": args.fixed_mask,
            "moving_mask": args.moving_mask,
            "labels": list(args.labels) if args.labels else None,
            "config": args.config,
            "quick": bool(args.quick),
            "initial_transform": getattr(args, "initial_transform", None),
            "channels": [[ch["fixed"], ch["moving"]] for ch in opts.get("channels") or ()] or None,
            "winsorize": list(args.winsorize) if getattr(args, "winsorize", None) else None,
            "histogram_matching": bool(getattr(args, "histogram_matching", False)),
        },
    }
    extra_files: list = []
    contours = None
    if organ is not None:
        from jaxreg.radiotherapy import format_organ_table, organ_report
        from jaxreg.warp import warp_labels

        ct_labels, groups, names = organ
        other = None
        if inp.fixed_labels is not None:
            other = inp.fixed_labels if args.ct_side == "moving" else inp.moving_labels
        rows = organ_report(
            result.transform, ct_labels, groups, fixed_grid=inp.fixed.grid, moving_grid=inp.moving.grid,
            side=args.ct_side, reference=other, names={**names, **(inp.names or {})},
        )
        keep = np.isin(np.asarray(ct_labels.data), groups.labels)
        kept = type(ct_labels)(np.where(keep, np.asarray(ct_labels.data), 0), ct_labels.grid)
        carried = kept if args.ct_side == "fixed" else warp_labels(kept, result.transform, inp.fixed.grid)
        contours = {"CT organs": np.asarray(carried.data)}
        if other is not None and args.ct_side == "moving":
            ref = np.where(np.isin(np.asarray(other.data), groups.labels), np.asarray(other.data), 0)
            contours["fixed labels"] = ref
        extra["organs"] = rows
        extra["groups"] = groups._asdict()
        extra["inputs"].update(ct_labels=args.ct_labels, ct_side=args.ct_side, groups=args.groups)
        organ_text = json.dumps(rows, indent=2, allow_nan=False) + "\n"
        extra_files = [
            ("organs.json", lambda tmp: Path(tmp).write_text(organ_text)),
            ("organs.csv", _organ_csv(rows)),
        ]
    steps, close_steps = _step_bar(quiet, ("report", "write"))
    try:
        steps("report")
        outs = summarize(
            inp,
            result,
            opts,
            title=f"jaxreg register ({opts['pipeline']}): {Path(args.moving).name} -> {Path(args.fixed).name}",
            extra=extra,
            contours=contours,
        )
        steps("write")
        outs.report["timings"]["load"] = round(t_load, 3)
        outs.report["timings"]["total"] = round(time.perf_counter() - t_all, 3)
        written = write_outputs(
            args.output, outs, inputs=all_inputs, extra_files=extra_files, composite=args.write_composite_transform
        )
    finally:
        close_steps()
    for line in outs.text:
        log(line)
    if organ is not None:
        for line in format_organ_table(rows):
            log(line)
    log(f"wrote:      {', '.join(p.name for p in written)} in {args.output}")
    log(
        f"total:      {time.perf_counter() - t_all:.1f} s "
        f"(registration {result.seconds:.1f} s, including compilation)"
    )
    if as_json:
        print(json.dumps(json_summary(outs.report, written, args.output), allow_nan=False))
    return 0


def json_summary(report: dict[str, Any], written: Sequence[Path], outdir: str | os.PathLike) -> dict[str, Any]:
    """The object ``jaxreg register --json`` prints: files written (name -> path), metrics, Jacobian statistics,
    per-stage iterations and times, timings (s), and the options of the run (a digest of ``report.json``)."""
    return {
        "command": "jaxreg register",
        "pipeline": report.get("pipeline"),
        "output": os.fspath(outdir),
        "files": {p.name: os.fspath(p) for p in written},
        "metrics": report.get("metrics"),
        "jacobian": report.get("jacobian"),
        "stages": report.get("stages"),
        "timings": report.get("timings"),
        "inputs": report.get("inputs"),
    }


def _silent(line: str) -> None:
    del line


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr)


def _progress_bar(disable: bool) -> tuple[Callable[[Any], None], Callable[[], None]]:
    """A tqdm bar on stderr fed by :func:`jaxreg.optimize.register`'s ``progress`` events, and its closer.

    The bar counts iterations (each level adds its cap when it ends) and names the running stage and level; it
    is off with ``disable`` (``--quiet``) and, by tqdm's rule, when stderr is not a terminal.
    """
    from tqdm import tqdm

    state: dict[str, Any] = {}

    def update(event: Any) -> None:
        bar = state.get("bar")
        if bar is None:
            bar = state["bar"] = tqdm(
                total=event.total_iterations, unit="it", file=sys.stderr, disable=True if disable else None,
                leave=False, dynamic_ncols=True,
            )  # fmt: skip
        if event.result is None:
            bar.set_description(f"{event.stage} level {event.level_index + 1}/{event.levels}")
        else:
            bar.update(int(event.level.iterations))

    def close() -> None:
        if "bar" in state:
            state.pop("bar").close()

    return update, close


def _step_bar(disable: bool, names: Sequence[str]) -> tuple[Callable[[str], None], Callable[[], None]]:
    """A tqdm bar of named steps on stderr (``step(name)`` starts the next one) and its closer."""
    from tqdm import tqdm

    bar = tqdm(total=len(names), unit="step", file=sys.stderr, disable=True if disable else None, leave=False)
    started = [0]

    def step(name: str) -> None:
        if started[0]:
            bar.update(1)
        started[0] += 1
        bar.set_description(name)

    def close() -> None:
        if started[0]:
            bar.update(1)
        bar.close()

    return step, close
