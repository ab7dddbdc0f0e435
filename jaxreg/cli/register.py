"""``jaxreg register``: register two images with a ready pipeline and write the result, its files and a report.

``jaxreg register FIXED MOVING -o OUTDIR [--pipeline default|multimodal|affine|rigid] [--fixed-mask M]
[--moving-mask M] [--labels FIXED_LABELS MOVING_LABELS [--label-list L ... | --labels-json F]]
[--config file.toml] [--quick]``

runs :func:`jaxreg.optimize.pipelines.register_pair` (moments -> affine -> symmetric diffeomorphic greedy
registration, or its multi-modal or linear variants) and writes into ``OUTDIR``:

* ``warped.nii.gz``: the moving image on the fixed grid (linear interpolation);
* ``affine.mat``: the linear stage as an ITK/ANTs ``AffineTransform`` (MATLAB format, as ``antsRegistration``
  writes ``0GenericAffine.mat``);
* ``warp.nii.gz`` (deformable pipelines): the deformable part sampled on the fixed grid as an ITK displacement
  field, so that ``jaxreg apply --fixed FIXED --moving MOVING -t OUTDIR/warp.nii.gz -t OUTDIR/affine.mat``
  (``antsApplyTransforms`` order: the fixed point goes through the warp first, then the affine) reproduces
  ``warped.nii.gz``;
* with ``--labels``: ``warped_labels.nii.gz`` (nearest neighbour) and ``dice.json`` (Dice before, after the
  affine stage and after registration, HD95 in mm, per label and their means), also printed as a table;
* ``report.json``: the options, similarity before/after, per-stage iterations, losses and timings, the
  Jacobian statistics of the deformable part (% of ``det J <= 0``, SDlogJ) and the total time;
* ``report.png``: the figure of :func:`jaxreg.plot.registration_report`.

Everything is computed before the first file is written, each file is written atomically, and if a write
fails the files this run created are removed again, so ``OUTDIR`` never holds a partial result. Inputs are
checked first (missing files, 2-D against 3-D, labels or masks on another grid than their image, empty masks,
NaN values); problems are raised as ``ValueError``/``OSError`` for :mod:`jaxreg.cli.main` to report in one
line.

``--config file.toml`` sets pipeline options; every key is optional::

    pipeline = "default"            # default | multimodal | affine | rigid (--pipeline overrides it)
    window = 5                      # local NCC window of the deformable stage, voxels

    [linear]
    levels = [[4, 0.0, 100], [2, 0.0, 50]]   # [shrink, smooth_mm, iterations], coarse to fine

    [deformable]
    levels = [[4, 0.0, 40], [2, 0.0, 20]]
    step = 0.25                     # largest update per iteration, voxels of the level
    sigma_update = 1.732            # "fluid" smoothing of each update, voxels
    sigma_field = 0.707             # "diffusion" smoothing of the velocity field, voxels
    symmetric = true                # SyN-like mid-space force
    exp_steps = 6                   # scaling-and-squaring steps
    force = "metric"                # metric | demons

Options are taken from, in increasing priority: :func:`register_pair`'s defaults, ``--quick`` (one coarse
level per stage, for tests and previews), the config file, and ``--pipeline``.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import io
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

__all__ = [
    "add_parser",
    "run",
    "read_config",
    "pipeline_options",
    "RegisterInputs",
    "load_inputs",
    "Outputs",
    "summarize",
    "write_outputs",
    "format_dice_table",
    "OUTPUT_NAMES",
    "QUICK_LINEAR_LEVELS",
    "QUICK_DEFORMABLE_LEVELS",
]

PIPELINES = ("default", "multimodal", "affine", "rigid")
OUTPUT_NAMES = {
    "warped": "warped.nii.gz",
    "affine": "affine.mat",
    "warp": "warp.nii.gz",
    "warped_labels": "warped_labels.nii.gz",
    "dice": "dice.json",
    "report_json": "report.json",
    "report_png": "report.png",
}
"""File names of the outputs in ``OUTDIR`` (``warp``: deformable pipelines; ``warped_labels``/``dice``: with
``--labels``)."""

QUICK_LINEAR_LEVELS = ((2, 0.0, 40),)
"""``--quick`` levels of the linear stage ``(shrink, smooth_mm, iterations)``."""
QUICK_DEFORMABLE_LEVELS = ((2, 0.0, 15),)
"""``--quick`` levels of the deformable stage."""

_DESCRIPTION = (
    "Register MOVING to FIXED with a ready pipeline (default: moments -> affine (NCC) -> symmetric "
    "diffeomorphic greedy registration with local NCC; multimodal: mutual information then MIND-SSC; affine or "
    "rigid: the linear stage only) and write into OUTDIR: warped.nii.gz (moving on the fixed grid), affine.mat "
    "(ITK/ANTs), warp.nii.gz (ITK displacement field of the deformable part, on the fixed grid), report.json "
    "and report.png; with --labels also warped_labels.nii.gz and dice.json. 'jaxreg apply --fixed FIXED "
    "--moving MOVING -t OUTDIR/warp.nii.gz -t OUTDIR/affine.mat' (antsApplyTransforms order) reproduces "
    "warped.nii.gz. Nothing is written unless the whole run succeeds."
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
    p.add_argument("fixed", metavar="FIXED", help="fixed (reference) image, .nii/.nii.gz")
    p.add_argument("moving", metavar="MOVING", help="moving image, .nii/.nii.gz (any grid)")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder (created)")
    p.add_argument(
        "--pipeline",
        choices=PIPELINES,
        default=None,
        help="default (mono-modal, the default), multimodal, affine or rigid; overrides the config file",
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
        "--config", metavar="TOML", help="pipeline options (levels, greedy step and sigmas, window)"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="one coarse level per stage (a fast preview; levels in the config file take precedence)",
    )
    p.set_defaults(func=run)
    return p


# -- options ---------------------------------------------------------------------------------------------------
def _defaults() -> dict[str, Any]:
    """register_pair's own defaults, read from its signature (so they stay in step with the library)."""
    from jaxreg.optimize.pipelines import register_pair

    params = inspect.signature(register_pair).parameters
    return {
        "pipeline": params["pipeline"].default,
        "linear_levels": tuple(params["linear_levels"].default),
        "deformable_levels": tuple(params["deformable_levels"].default),
        "greedy": params["greedy"].default,
        "window": int(params["window"].default),
    }


_TOP_KEYS = ("pipeline", "window", "linear", "deformable")
_LINEAR_KEYS = ("levels",)
_GREEDY_KEYS = ("step", "sigma_update", "sigma_field", "symmetric", "exp_steps", "force")
_DEFORMABLE_KEYS = ("levels",) + _GREEDY_KEYS


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
    for key in ("sigma_update", "sigma_field"):
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
    if greedy:
        out["greedy"] = greedy
    return out


def pipeline_options(
    *, config: str | os.PathLike | None = None, pipeline: str | None = None, quick: bool = False
) -> dict[str, Any]:
    """The keyword arguments of :func:`register_pair` for a command line.

    Priority, low to high: ``register_pair``'s defaults, ``quick`` (:data:`QUICK_LINEAR_LEVELS`,
    :data:`QUICK_DEFORMABLE_LEVELS`), the ``config`` file (:func:`read_config`), ``pipeline``.

    Returns:
      ``{"pipeline", "linear_levels", "deformable_levels", "greedy" (GreedyOptions), "window"}``.
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
        opts["greedy"] = opts["greedy"]._replace(**greedy)
    if pipeline is not None:
        if pipeline not in PIPELINES:
            raise ValueError(f"--pipeline: expected one of {', '.join(PIPELINES)}, got {pipeline!r}")
        opts["pipeline"] = pipeline
    return opts


def options_json(opts: dict[str, Any]) -> dict[str, Any]:
    """:func:`pipeline_options` as plain JSON values."""
    return {
        "pipeline": opts["pipeline"],
        "linear_levels": [[int(a), float(b), int(c)] for a, b, c in opts["linear_levels"]],
        "deformable_levels": [[int(a), float(b), int(c)] for a, b, c in opts["deformable_levels"]],
        "greedy": {
            k: (v if isinstance(v, (bool, str)) else float(v) if isinstance(v, float) else int(v))
            for k, v in opts["greedy"]._asdict().items()
        },
        "window": int(opts["window"]),
    }


# -- inputs ----------------------------------------------------------------------------------------------------
class RegisterInputs(NamedTuple):
    """Checked inputs of a run (images as float32 scalars, masks as 0/1 float32, labels int32)."""

    fixed: Any
    moving: Any
    fixed_mask: Any
    moving_mask: Any
    fixed_labels: Any
    moving_labels: Any
    labels: list[int] | None
    names: dict[int, str]
    paths: list[str]


def _require_file(path: str, what: str) -> None:
    if not os.path.exists(path):
        raise FileNotFoundError(2, f"{path}: no such file ({what})", path)
    if os.path.isdir(path):
        raise ValueError(f"{path}: is a folder, expected a NIfTI file ({what})")


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
) -> RegisterInputs:
    """Read and check every input of a run before any computation.

    Raises:
      FileNotFoundError: a missing file.
      ValueError: unreadable or NaN images (:func:`jaxreg.io.load_image`), 2-D against 3-D images, a mask or
        label map on a different grid than its image, an empty mask, non-integer or duplicate labels.
    """
    import jax.numpy as jnp

    from jaxreg.core.grid import Image
    from jaxreg.io import load_image, load_labels

    named = [(fixed, "fixed image"), (moving, "moving image")]
    if fixed_mask is not None:
        named.append((fixed_mask, "--fixed-mask"))
    if moving_mask is not None:
        named.append((moving_mask, "--moving-mask"))
    if labels is not None:
        named += [(labels[0], "fixed labels"), (labels[1], "moving labels")]
    if labels_json is not None:
        if labels is None:
            raise ValueError("--labels-json needs --labels FIXED_LABELS MOVING_LABELS")
        named.append((labels_json, "--labels-json"))
    if label_list is not None and labels is None:
        raise ValueError("--label-list needs --labels FIXED_LABELS MOVING_LABELS")
    for p, what in named:
        _require_file(os.fspath(p), what)

    def image(path: str) -> Any:
        im = load_image(path)
        return Image(jnp.asarray(im.data, jnp.float32), im.grid)

    f_img, m_img = image(fixed), image(moving)
    if f_img.grid.ndim != m_img.grid.ndim:
        raise ValueError(
            f"the fixed image {fixed} is {f_img.grid.ndim}-D but the moving image {moving} is {m_img.grid.ndim}-D "
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
        mk = load_image(path)
        _check_on_grid(mk, ref, what, path, ref_what, ref_path)
        data = np.asarray(mk.data) != 0
        if not data.any():
            raise ValueError(f"{what} {path} is empty (no non-zero voxel)")
        masks.append(Image(jnp.asarray(data, jnp.float32), ref.grid))
    fl = ml = None
    chosen: list[int] | None = None
    names: dict[int, str] = {}
    if labels is not None:
        fl, ml = load_labels(labels[0]), load_labels(labels[1])
        _check_on_grid(fl, f_img, "the fixed label map", labels[0], "fixed image", fixed)
        _check_on_grid(ml, m_img, "the moving label map", labels[1], "moving image", moving)
        fl, ml = Image(fl.data, f_img.grid), Image(ml.data, m_img.grid)
        if labels_json is not None:
            from jaxreg.cli.evaluate import read_label_list

            chosen, names = read_label_list(labels_json)
        elif label_list is not None:
            chosen = [int(v) for v in label_list]
            dup = sorted({x for x in chosen if chosen.count(x) > 1})
            if dup:
                raise ValueError(f"--label-list: duplicate labels {dup}")
        else:
            vals = np.union1d(np.unique(np.asarray(fl.data)), np.unique(np.asarray(ml.data)))
            chosen = [int(v) for v in vals if v != 0]
            if not chosen:
                raise ValueError(f"--labels {labels[0]} {labels[1]}: no non-zero labels to evaluate")
    return RegisterInputs(
        f_img, m_img, masks[0], masks[1], fl, ml, chosen, names, [os.fspath(p) for p, _ in named]
    )


# -- results ---------------------------------------------------------------------------------------------------
class Outputs(NamedTuple):
    """Everything a run writes, computed in memory first (see :func:`write_outputs`).

    Attributes:
      warped: moving image on the fixed grid.
      affine: the linear stage's transform.
      field: the deformable part as a ``DisplacementField`` on the fixed grid, or ``None``.
      warped_labels: moving labels on the fixed grid (nearest neighbour), or ``None``.
      dice: the Dice/HD95 summary (JSON values), or ``None``.
      report: the ``report.json`` content.
      figure_png: ``report.png`` bytes (``None`` when matplotlib is missing).
      text: the lines printed for the run (summary and Dice table).
    """

    warped: Any
    affine: Any
    field: Any
    warped_labels: Any
    dice: dict | None
    report: dict
    figure_png: bytes | None
    text: list[str]


def _finite(x: Any, digits: int = 6) -> float | None:
    x = float(x)
    return float(f"{x:.{digits}g}") if math.isfinite(x) else None


def _ncc(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None) -> float:
    sel = np.ones(a.shape, bool) if mask is None else mask > 0
    x, y = a[sel].astype(np.float64), b[sel].astype(np.float64)
    x, y = x - x.mean(), y - y.mean()
    den = math.sqrt(float((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / den) if den > 0 else 0.0


def _nmi(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None, bins: int = 32) -> float:
    sel = np.ones(a.shape, bool) if mask is None else mask > 0
    h, _, _ = np.histogram2d(a[sel].ravel(), b[sel].ravel(), bins=bins)
    p = h / max(h.sum(), 1.0)

    def ent(q: np.ndarray) -> float:
        q = q[q > 0]
        return float(-(q * np.log(q)).sum())

    hab = ent(p)
    return (ent(p.sum(1)) + ent(p.sum(0))) / hab if hab > 0 else 1.0


def _similarity(fixed: np.ndarray, images: dict[str, np.ndarray], mask: np.ndarray | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, im in images.items():
        out[f"ncc_{name}"] = _finite(_ncc(fixed, im, mask))
        out[f"nmi_{name}"] = _finite(_nmi(fixed, im, mask))
    return out


def _stage_json(name: str, stage: Any, levels: Sequence[Any]) -> dict[str, Any]:
    recs = []
    for lv, rec in zip(levels, stage.levels):
        loss = np.asarray(rec.loss, np.float64)
        loss = loss[np.isfinite(loss)]
        recs.append(
            {
                "shrink": int(lv[0]),
                "smooth_mm": float(lv[1]),
                "iterations_cap": int(lv[2]),
                "iterations": int(rec.iterations),
                "converged": bool(rec.converged),
                "seconds": round(float(rec.seconds), 3),
                "compile_seconds": round(float(rec.compile_seconds), 3),
                "first_loss": _finite(loss[0]) if loss.size else None,
                "final_loss": _finite(loss[-1]) if loss.size else None,
                "loss": [_finite(v) for v in loss],
            }
        )
    return {
        "stage": name,
        "iterations": int(sum(r["iterations"] for r in recs)),
        "seconds": round(float(stage.seconds), 3),
        "levels": recs,
    }


def _stage_line(name: str, stage: dict[str, Any]) -> str:
    def g(x: float | None) -> str:
        return "-" if x is None else f"{x:.4g}"

    levels = "; ".join(
        f"x{lv['shrink']}: {lv['iterations']} it, {g(lv['first_loss'])} -> {g(lv['final_loss'])}"
        for lv in stage["levels"]
    )
    return f"{name + ':':<11} {levels}  [{stage['seconds']:.1f} s]"


def _dice_summary(
    fixed_labels: np.ndarray,
    stages: dict[str, np.ndarray],
    labels: list[int],
    names: dict[int, str],
    spacing: Sequence[float],
) -> dict[str, Any]:
    from jaxreg.evaluation import hd95_per_label, overlap

    result: dict[str, Any] = {"labels": [], "spacing_mm": [float(s) for s in spacing]}
    dice = {}
    for key, warped in stages.items():
        dice[key] = np.asarray(overlap(fixed_labels, warped, labels=labels).dice, np.float64)
    final = stages["after"]
    ov = overlap(fixed_labels, final, labels=labels)
    hd95 = np.asarray(hd95_per_label(fixed_labels, final, labels=labels, spacing=tuple(spacing)), np.float64)
    for i, lab in enumerate(labels):
        row: dict[str, Any] = {"label": int(lab)}
        if lab in names:
            row["name"] = names[lab]
        for key in stages:
            row["dice" if key == "after" else f"dice_{key}"] = _finite(dice[key][i])
        row["hd95_mm"] = _finite(hd95[i])
        row["voxels_fixed"] = int(ov.count_a[i])
        row["voxels_warped"] = int(ov.count_b[i])
        result["labels"].append(row)
    for key in stages:
        d = dice[key][np.isfinite(dice[key])]
        result["mean_dice" if key == "after" else f"mean_dice_{key}"] = _finite(d.mean()) if d.size else None
    result["num_labels_dice"] = int(np.isfinite(dice["after"]).sum())
    h = hd95[np.isfinite(hd95)]
    result["mean_hd95_mm"] = _finite(h.mean()) if h.size else None
    result["num_labels_hd95"] = int(h.size)
    return result


def format_dice_table(summary: dict[str, Any]) -> str:
    """The printed Dice table of a :func:`summarize` Dice summary (``dice.json``)."""

    def f(x: float | None, spec: str) -> str:
        return "-" if x is None else format(x, spec)

    rows = summary["labels"]
    named = any("name" in r for r in rows)
    width = min(max([4] + [len(r.get("name", "")) for r in rows]), 28)
    keys = [k for k in ("before", "affine") if f"mean_dice_{k}" in summary]
    head = f"{'label':>6}" + (f"  {'name':<{width}}" if named else "")
    head += (
        "".join(f"  {'Dice ' + k:>11}" for k in keys)
        + f"  {'Dice':>7}  {'HD95 mm':>8}  {'voxels F':>9}  {'voxels W':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        line = f"{r['label']:>6}" + (f"  {r.get('name', '')[:width]:<{width}}" if named else "")
        line += "".join(f"  {f(r[f'dice_{k}'], '11.4f')}" for k in keys)
        line += f"  {f(r['dice'], '7.4f')}  {f(r['hd95_mm'], '8.3f')}"
        line += f"  {r['voxels_fixed']:>9}  {r['voxels_warped']:>9}"
        lines.append(line)
    lines.append("-" * len(head))
    means = ", ".join(f"{k} {f(summary[f'mean_dice_{k}'], '.4f')}" for k in keys)
    lines.append(
        f"mean Dice {f(summary['mean_dice'], '.4f')} over {summary['num_labels_dice']} labels"
        + (f" ({means})" if means else "")
        + f"; mean HD95 {f(summary['mean_hd95_mm'], '.3f')} mm over {summary['num_labels_hd95']} labels"
    )
    return "\n".join(lines)


def _figure_png(fixed, moving_before, warped, field, jac, losses, title) -> bytes | None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return None
    from jaxreg.plot import _pyplot, registration_report

    fig = registration_report(
        fixed, moving_before, warped, deformation=field, jacobian=jac, losses=losses, title=title
    )
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    finally:
        _pyplot().close(fig)
    return buf.getvalue()


@functools.cache
def _jitted() -> tuple[Callable, Callable]:
    """``to_displacement`` and ``jacobian_determinant`` compiled whole (grid static): one compilation each instead
    of one per operation."""
    import jax

    from jaxreg.transforms import jacobian_determinant, to_displacement

    return jax.jit(to_displacement, static_argnums=1), jax.jit(jacobian_determinant, static_argnums=1)


def summarize(
    inputs: RegisterInputs,
    result: Any,
    options: dict[str, Any],
    *,
    title: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Outputs:
    """Compute every output of a registration in memory (nothing is written).

    Args:
      inputs: the run's inputs (:func:`load_inputs`, or built directly as the demo does).
      result: :class:`~jaxreg.optimize.pipelines.PipelineResult` of ``register_pair``.
      options: the options it ran with (:func:`pipeline_options`).
      title: figure title.
      extra: more ``report.json`` entries.

    Returns:
      :class:`Outputs`.
    """

    from jaxreg.evaluation import jacobian_statistics
    from jaxreg.transforms import Affine, compose
    from jaxreg.warp import warp, warp_labels

    to_displacement, jacobian_determinant = _jitted()
    t0 = time.perf_counter()
    fixed, moving = inputs.fixed, inputs.moving
    g = fixed.grid
    field = None if result.deformable is None else to_displacement(result.deformable, g)
    full = result.affine if field is None else compose(result.affine, field)
    warped = warp(moving, full, g, order=1)
    identity = Affine.identity(g.ndim)
    before = warp(moving, identity, g, order=1)
    affine_only = warp(moving, result.affine, g, order=1) if field is not None else warped
    f = np.asarray(fixed.data)
    fmask = None if inputs.fixed_mask is None else np.asarray(inputs.fixed_mask.data)
    stages_img = {
        "before": np.asarray(before.data),
        "affine": np.asarray(affine_only.data),
        "after": np.asarray(warped.data),
    }
    metrics = _similarity(f, stages_img, fmask)

    of = "deformable" if field is not None else "affine"
    jt = field if field is not None else result.affine
    st = jacobian_statistics(jt, g)
    jac = np.asarray(jacobian_determinant(jt, g)) if field is not None else None
    jacobian = {
        "of": of,
        "percent_nonpositive": _finite(100.0 * float(st.fraction_nonpositive)),
        "num_nonpositive": int(st.num_nonpositive),
        "num_voxels": int(st.num_voxels),
        "sdlogj": _finite(st.std_log),
        "min": _finite(st.min),
        "max": _finite(st.max),
        "mean": _finite(st.mean),
    }
    warped_labels = None
    dice = None
    if inputs.fixed_labels is not None:
        warped_labels = warp_labels(inputs.moving_labels, full, g)
        lab_stages = {"before": np.asarray(warp_labels(inputs.moving_labels, identity, g).data)}
        if field is not None:
            lab_stages["affine"] = np.asarray(warp_labels(inputs.moving_labels, result.affine, g).data)
        lab_stages["after"] = np.asarray(warped_labels.data)
        dice = _dice_summary(
            np.asarray(inputs.fixed_labels.data), lab_stages, list(inputs.labels), inputs.names, g.spacing
        )
        metrics["mean_dice_before"] = dice["mean_dice_before"]
        if "mean_dice_affine" in dice:
            metrics["mean_dice_affine"] = dice["mean_dice_affine"]
        metrics["mean_dice"] = dice["mean_dice"]
        metrics["mean_hd95_mm"] = dice["mean_hd95_mm"]

    stages = {"linear": _stage_json("linear", result.stages["linear"], options["linear_levels"])}
    if "deformable" in result.stages:
        stages["deformable"] = _stage_json(
            "deformable", result.stages["deformable"], options["deformable_levels"]
        )
    t_eval = time.perf_counter() - t0
    losses = {name: [np.asarray(lv.loss) for lv in st_.levels] for name, st_ in result.stages.items()}
    t1 = time.perf_counter()
    png = _figure_png(fixed, before, warped, field, jac, losses, title)
    t_fig = time.perf_counter() - t1

    report: dict[str, Any] = {
        "pipeline": options["pipeline"],
        "options": options_json(options),
        "fixed_grid": {"shape": list(g.shape), "spacing_mm": [float(s) for s in g.spacing]},
        "moving_grid": {
            "shape": list(moving.grid.shape),
            "spacing_mm": [float(s) for s in moving.grid.spacing],
        },
        "metrics": metrics,
        "stages": stages,
        "jacobian": jacobian,
        "timings": {
            "registration": round(float(result.seconds), 3),
            "evaluation": round(t_eval, 3),
            "figure": round(t_fig, 3),
        },
    }
    if extra:
        report.update(extra)
    text = [_stage_line(name, st_) for name, st_ in stages.items()]
    keys = ["before", "affine", "after"] if field is not None else ["before", "after"]
    text.append("NCC:        " + ", ".join(f"{k} {metrics[f'ncc_{k}']:.4f}" for k in keys))
    text.append("NMI:        " + ", ".join(f"{k} {metrics[f'nmi_{k}']:.4f}" for k in keys))
    text.append(
        f"det J:      {jacobian['num_nonpositive']} of {jacobian['num_voxels']} voxels <= 0 "
        f"({jacobian['percent_nonpositive']:.4f} %), SDlogJ {jacobian['sdlogj']:.4f}, "
        f"range [{jacobian['min']:.3f}, {jacobian['max']:.3f}] ({of} part)"
    )
    if dice is not None:
        text.append(format_dice_table(dice))
    if png is None:
        text.append("report.png: skipped (matplotlib is not installed: pip install 'jaxreg[plot]')")
    return Outputs(warped, result.affine, field, warped_labels, dice, report, png, text)


# -- writing ---------------------------------------------------------------------------------------------------
def output_paths(outdir: str | os.PathLike) -> dict[str, Path]:
    """``{key: OUTDIR / name}`` for every possible output (:data:`OUTPUT_NAMES`)."""
    return {k: Path(outdir) / v for k, v in OUTPUT_NAMES.items()}


def check_output_folder(outdir: str | os.PathLike, inputs: Sequence[str | os.PathLike]) -> None:
    """Fail early: ``outdir`` is not a folder, or one of its output names is an input of the run."""
    from jaxreg.io import check_not_input

    out = Path(outdir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"-o {outdir}: exists and is not a folder")
    for p in output_paths(out).values():
        check_not_input(p, inputs)


def write_outputs(
    outdir: str | os.PathLike,
    outputs: Outputs,
    *,
    inputs: Sequence[str | os.PathLike] = (),
    extra_files: Sequence[tuple[str, Callable[[str], None]]] = (),
) -> list[Path]:
    """Write :class:`Outputs` into ``outdir`` (created), each file atomically.

    If any write fails, the files created by this call are removed again (files that existed before are left
    as they were or replaced whole, never half-written) and a folder created by this call is removed if empty.

    Args:
      outdir: output folder.
      outputs: what :func:`summarize` computed.
      inputs: the run's input files, never overwritten.
      extra_files: more ``(file name, writer(tmp_path))`` pairs written into ``outdir`` the same way.

    Returns:
      The paths written, in order.
    """
    from jaxreg.io import atomic_write, save_image, write_transform

    out = Path(outdir)
    check_output_folder(out, inputs)
    paths = output_paths(out)
    jobs: list[tuple[Path, Callable[[Path], None]]] = []
    jobs.append((paths["warped"], lambda p: save_image(outputs.warped, p, inputs=inputs)))
    jobs.append((paths["affine"], lambda p: write_transform(outputs.affine, p, inputs=inputs)))
    if outputs.field is not None:
        jobs.append((paths["warp"], lambda p: write_transform(outputs.field, p, inputs=inputs)))
    if outputs.warped_labels is not None:
        jobs.append((paths["warped_labels"], lambda p: save_image(outputs.warped_labels, p, inputs=inputs)))
    if outputs.dice is not None:
        text = json.dumps(outputs.dice, indent=2, allow_nan=False) + "\n"
        jobs.append(
            (
                paths["dice"],
                lambda p, t=text: atomic_write(p, lambda tmp: Path(tmp).write_text(t), inputs=inputs),
            )
        )
    for name, writer in extra_files:
        jobs.append((out / name, lambda p, w=writer: atomic_write(p, w, inputs=inputs)))
    if outputs.figure_png is not None:
        png = outputs.figure_png
        jobs.append(
            (
                paths["report_png"],
                lambda p: atomic_write(p, lambda tmp: Path(tmp).write_bytes(png), inputs=inputs),
            )
        )
    report = dict(outputs.report)
    report["files"] = [p.name for p, _ in jobs] + [paths["report_json"].name]
    text = json.dumps(report, indent=2, allow_nan=False) + "\n"
    jobs.append(
        (
            paths["report_json"],
            lambda p: atomic_write(p, lambda tmp: Path(tmp).write_text(text), inputs=inputs),
        )
    )

    made_dir = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    created: list[Path] = []
    written: list[Path] = []
    try:
        for path, job in jobs:
            existed = path.exists()
            job(path)
            written.append(path)
            if not existed:
                created.append(path)
    except BaseException:
        for p in created:
            try:
                p.unlink()
            except OSError:
                pass
        if made_dir:
            try:
                out.rmdir()
            except OSError:
                pass
        raise
    return written


# -- run -------------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace, *, log: Callable[[str], None] = print) -> int:
    """Run ``jaxreg register`` with parsed arguments; returns the exit status (0).

    Raises:
      ValueError, OSError: bad inputs or options (nothing is written then), or a failed write (the files this
        run created are removed).
    """
    from jaxreg.optimize.pipelines import register_pair

    t_all = time.perf_counter()
    opts = pipeline_options(config=args.config, pipeline=args.pipeline, quick=args.quick)
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
    all_inputs = inp.paths + ([args.config] if args.config else [])
    check_output_folder(args.output, all_inputs)
    t_load = time.perf_counter() - t0
    log(f"fixed:      {args.fixed}  ({_grid_text(inp.fixed.grid)})")
    log(f"moving:     {args.moving}  ({_grid_text(inp.moving.grid)})")
    log(
        f"pipeline:   {opts['pipeline']}; linear levels {[list(lv) for lv in opts['linear_levels']]}"
        + (
            ""
            if opts["pipeline"] in ("affine", "rigid")
            else f", deformable levels {[list(lv) for lv in opts['deformable_levels']]}"
        )
    )
    result = register_pair(
        inp.fixed,
        inp.moving,
        pipeline=opts["pipeline"],
        linear_levels=opts["linear_levels"],
        deformable_levels=opts["deformable_levels"],
        greedy=opts["greedy"],
        window=opts["window"],
        fixed_mask=inp.fixed_mask,
        moving_mask=inp.moving_mask,
    )
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
        },
    }
    outs = summarize(
        inp,
        result,
        opts,
        title=f"jaxreg register ({opts['pipeline']}): {Path(args.moving).name} -> {Path(args.fixed).name}",
        extra=extra,
    )
    for line in outs.text:
        log(line)
    outs.report["timings"]["load"] = round(t_load, 3)
    outs.report["timings"]["total"] = round(time.perf_counter() - t_all, 3)
    written = write_outputs(args.output, outs, inputs=all_inputs)
    log(f"wrote:      {', '.join(p.name for p in written)} in {args.output}")
    log(
        f"total:      {time.perf_counter() - t_all:.1f} s "
        f"(registration {result.seconds:.1f} s, including compilation)"
    )
    return 0
