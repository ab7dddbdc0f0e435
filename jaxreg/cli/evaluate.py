"""``jaxreg evaluate``: overlap and surface distances of label maps, and the Jacobian of a transform.

* ``--fixed-labels A --warped-labels B [--labels L ... | --labels-json FILE]`` prints, per label, Dice and the
  95th-percentile Hausdorff distance (mm, on A's grid), the voxel counts, and the means: mean Dice counts a
  label missing from one map as 0 and skips labels missing from both; mean HD95 is over labels present in
  both. Without ``--labels``/``--labels-json`` every non-zero label of either map is evaluated.
* ``--transform T --grid IMAGE [--mask M]`` prints the statistics of ``det J`` of the transform file ``T`` on
  the grid of ``IMAGE`` (folding count and fraction, min/max/mean, SDlogJ).
* ``--json OUT`` also writes everything as JSON (atomically; never over an input). Non-finite values
  (NaN: label in neither map; inf: in one only) are written as ``null``.

Conventions are those of :mod:`jaxreg.evaluation` (surfaces, HD95 = max of the two directed 95th percentiles,
SDlogJ of ``log det J`` clipped to [1e-9, 1e9]).

The module plugs into the main parser: :func:`add_parser` adds the subcommand to the ``add_subparsers``
object of :func:`jaxreg.cli.main.build_parser` (which creates its parsers with the CLI's parser class) and
sets ``func=run``. Errors are raised as ``ValueError``/``OSError`` for the main entry point to report.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from jaxreg.cli._args import argument

__all__ = ["add_parser", "run", "read_label_list", "evaluate_labels", "evaluate_transform"]

_DESCRIPTION = (
    "Evaluate a registration. With --fixed-labels/--warped-labels: Dice and HD95 (mm) per label of two label "
    "maps on the same grid (e.g. the fixed segmentation and the moving one warped with "
    "'jaxreg apply --labels'). "
    "With --transform/--grid: statistics of the Jacobian determinant of a transform file on an image's grid "
    "(folding, SDlogJ). --json OUT writes the results as JSON."
)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``evaluate`` subcommand to ``subparsers`` (the object returned by ``add_subparsers``).

    The subparser is created by ``subparsers.add_parser``, hence with the parser class the main parser gave
    ``add_subparsers(parser_class=...)``. Its ``func`` default is :func:`run`.

    Returns:
      The new subparser.
    """
    p = subparsers.add_parser(
        "evaluate",
        help="Dice/HD95 of label maps and Jacobian statistics of a transform",
        description=_DESCRIPTION,
    )
    p.add_argument("--fixed-labels", metavar="A", help="reference label map (an image file of any supported format)")
    p.add_argument("--warped-labels", metavar="B", help="label map to compare, on the same grid as A")
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--labels",
        nargs="+",
        type=int,
        metavar="L",
        help="label values to evaluate (default: every non-zero label of A or B)",
    )
    which.add_argument(
        "--labels-json",
        metavar="FILE",
        help="JSON list of labels: [2, 3, ...], {'eval_labels': [...]}, {'labels': [{'id': 2, "
        "'name': ...}, ...]} or {'2': 'name', ...}",
    )
    p.add_argument(
        "--transform", "-t", metavar="T", help="transform file (ITK/ANTs .mat/.tfm/.txt/.h5, field .nii.gz)"
    )
    p.add_argument("--grid", metavar="IMAGE", help="image whose grid the Jacobian of T is evaluated on")
    p.add_argument(
        "--mask", metavar="MASK", help="optional mask on IMAGE's grid restricting the Jacobian statistics"
    )
    p.add_argument("--json", metavar="OUT", help="also write the results to this JSON file (atomically)")
    p.set_defaults(func=run)
    return p


# -- labels --------------------------------------------------------------------------------------------------
def _as_label(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{path}: expected integer label values, got {value!r}")
    try:
        f = float(value)
    except ValueError:
        raise ValueError(f"{path}: expected integer label values, got {value!r}") from None
    if not math.isfinite(f) or f != int(f):
        raise ValueError(f"{path}: expected integer label values, got {value!r}")
    return int(f)


def read_label_list(path: str | os.PathLike) -> tuple[list[int], dict[int, str]]:
    """Labels (and optional names) from a JSON file.

    Accepted layouts: a list of integers; an object with ``"eval_labels"`` or ``"labels"`` holding a list of
    integers or of objects with ``"id"``/``"label"``/``"value"`` and optional ``"name"``; or an object mapping
    label values (as strings) to names. Other keys (e.g. ``"note"``) are ignored.

    Returns:
      ``(labels, names)``: labels in file order, names by label (possibly empty).

    Raises:
      ValueError: unreadable JSON, an unknown layout, non-integer or duplicate labels (the message names
        the file).
    """
    path = os.fspath(path)
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    names: dict[int, str] = {}
    entries: Any
    if isinstance(data, list):
        entries = data
    elif isinstance(data, dict):
        key = next((k for k in ("eval_labels", "labels") if k in data), None)
        if key is not None:
            entries = data[key]
        elif data and all(isinstance(v, str) for v in data.values()):
            entries = [{"id": k, "name": v} for k, v in data.items()]
        else:
            raise ValueError(
                f"{path}: expected a list of labels, an object with 'eval_labels' or 'labels', or a mapping "
                "of label values to names"
            )
    else:
        raise ValueError(f"{path}: expected a JSON list or object, got {type(data).__name__}")
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: expected a non-empty list of labels")
    labels: list[int] = []
    for e in entries:
        if isinstance(e, dict):
            key = next((k for k in ("id", "label", "value") if k in e), None)
            if key is None:
                raise ValueError(f"{path}: label entry {e!r} has no 'id', 'label' or 'value'")
            lab = _as_label(e[key], path)
            if "name" in e:
                names[lab] = str(e["name"])
        else:
            lab = _as_label(e, path)
        labels.append(lab)
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise ValueError(f"{path}: duplicate labels {dup}")
    return labels, names


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(float(x)) else None


def evaluate_labels(
    fixed_path: str | os.PathLike, warped_path: str | os.PathLike, labels: Sequence[int] | None = None
) -> dict[str, Any]:
    """Dice and HD95 per label of two label-map files on the same grid (what ``jaxreg evaluate`` reports).

    Args:
      fixed_path: reference label map.
      warped_path: label map on the same grid (same shape and affine).
      labels: labels to evaluate; default every non-zero value present in either map.

    Returns:
      dict with ``labels`` (list of per-label dicts: ``label``, ``dice``, ``hd95_mm``, ``voxels_fixed``,
      ``voxels_warped``), ``mean_dice``, ``num_labels_dice``, ``mean_hd95_mm``, ``num_labels_hd95``,
      ``spacing_mm``, ``shape``; non-finite values as ``None``.

    Raises:
      ValueError: the maps differ in shape or grid (the message names both files), or are not label maps.
    """
    from jaxreg.evaluation import hd95_per_label, overlap
    from jaxreg.io import load_labels

    with argument("--fixed-labels"):
        a_img = load_labels(fixed_path)
    with argument("--warped-labels"):
        b_img = load_labels(warped_path)
    ga, gb = a_img.grid, b_img.grid
    if ga.shape != gb.shape:
        raise ValueError(
            f"--warped-labels: label maps on different grids: {os.fspath(fixed_path)} is {'x'.join(map(str, ga.shape))} but "
            f"{os.fspath(warped_path)} is {'x'.join(map(str, gb.shape))}; resample one onto the other's grid "
            "first (jaxreg apply --labels)"
        )
    if not np.allclose(ga.affine, gb.affine, rtol=0, atol=1e-4):
        raise ValueError(
            f"--warped-labels: label maps on different grids: {os.fspath(fixed_path)} and {os.fspath(warped_path)} have the "
            "same shape but different voxel-to-world affines; resample one onto the other's grid first "
            "(jaxreg apply --labels)"
        )
    a, b = np.asarray(a_img.data), np.asarray(b_img.data)
    if labels is None:
        labels = [int(v) for v in np.union1d(np.unique(a), np.unique(b)) if v != 0]
        if not labels:
            raise ValueError(
                f"--fixed-labels, --warped-labels: {os.fspath(fixed_path)}, {os.fspath(warped_path)}: no non-zero "
                "labels to evaluate"
            )
    labels = [int(v) for v in labels]
    ov = overlap(a, b, labels=labels)
    hd95 = np.asarray(hd95_per_label(a, b, labels=labels, spacing=tuple(ga.spacing)))
    d = np.asarray(ov.dice, np.float64)
    rows = [
        {
            "label": lab,
            "dice": _finite_or_none(d[i]),
            "hd95_mm": _finite_or_none(hd95[i]),
            "voxels_fixed": int(ov.count_a[i]),
            "voxels_warped": int(ov.count_b[i]),
        }
        for i, lab in enumerate(labels)
    ]
    finite_d = d[np.isfinite(d)]
    finite_h = hd95[np.isfinite(hd95)]
    return {
        "fixed_labels": os.fspath(fixed_path),
        "warped_labels": os.fspath(warped_path),
        "shape": list(ga.shape),
        "spacing_mm": [float(s) for s in ga.spacing],
        "labels": rows,
        "mean_dice": float(finite_d.mean()) if finite_d.size else None,
        "num_labels_dice": int(finite_d.size),
        "mean_hd95_mm": float(finite_h.mean()) if finite_h.size else None,
        "num_labels_hd95": int(finite_h.size),
    }


def evaluate_transform(
    transform_path: str | os.PathLike,
    grid_path: str | os.PathLike,
    mask_path: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Jacobian-determinant statistics of a transform file on an image's grid (see
    :func:`jaxreg.evaluation.jacobian_statistics`), as plain Python values (non-finite as ``None``)."""
    from jaxreg.evaluation import jacobian_statistics
    from jaxreg.io import load_image, read_transform

    with argument("--transform"):
        transform = read_transform(transform_path)
    with argument("--grid"):
        grid = load_image(grid_path, channels=True).grid
    if transform.ndim != grid.ndim:
        raise ValueError(
            f"--transform: {os.fspath(transform_path)} is a {transform.ndim}-D transform but {os.fspath(grid_path)} is a "
            f"{grid.ndim}-D image"
        )
    mask = None
    if mask_path is not None:
        with argument("--mask"):
            m = load_image(mask_path)
        if m.grid.shape != grid.shape:
            raise ValueError(
                f"--mask {os.fspath(mask_path)} is {'x'.join(map(str, m.grid.shape))} but --grid "
                f"{os.fspath(grid_path)} is {'x'.join(map(str, grid.shape))}: the mask must be on the grid"
            )
        mask = np.asarray(m.data) != 0
    st = jacobian_statistics(transform, grid, mask=mask)
    out: dict[str, Any] = {"transform": os.fspath(transform_path), "grid": os.fspath(grid_path)}
    if mask_path is not None:
        out["mask"] = os.fspath(mask_path)
    for k, v in st._asdict().items():
        out[k] = int(v) if k.startswith("num_") else _finite_or_none(v)
    return out


# -- text output ---------------------------------------------------------------------------------------------
def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _format_labels(res: dict[str, Any], names: dict[int, str]) -> str:
    width = min(max([4] + [len(names.get(r["label"], "")) for r in res["labels"]]), 32)
    name_col = f"  {'name':<{width}}" if names else ""
    head = f"{'label':>7}{name_col}  {'Dice':>7}  {'HD95 mm':>8}  {'voxels A':>9}  {'voxels B':>9}"
    lines = [head, "-" * len(head)]
    for r in res["labels"]:
        note = ""
        if r["voxels_fixed"] == 0 and r["voxels_warped"] == 0:
            note = "  (in neither map)"
        elif r["voxels_fixed"] == 0:
            note = "  (missing in A)"
        elif r["voxels_warped"] == 0:
            note = "  (missing in B)"
        name = f"  {names.get(r['label'], '')[:width]:<{width}}" if names else ""
        lines.append(
            f"{r['label']:>7}{name}  {_fmt(r['dice'], '7.4f')}  {_fmt(r['hd95_mm'], '8.3f')}  "
            f"{r['voxels_fixed']:>9}  {r['voxels_warped']:>9}{note}"
        )
    lines.append("-" * len(head))
    lines.append(
        f"mean Dice {_fmt(res['mean_dice'], '.4f')} over {res['num_labels_dice']} labels (a label missing in "
        "one map counts as 0)"
    )
    lines.append(
        f"mean HD95 {_fmt(res['mean_hd95_mm'], '.3f')} mm over {res['num_labels_hd95']} labels present in "
        "both maps"
    )
    return "\n".join(lines)


def _format_jacobian(res: dict[str, Any]) -> str:
    frac = res["fraction_nonpositive"]
    where = f" inside {res['mask']}" if "mask" in res else ""
    return "\n".join(
        [
            f"Jacobian determinant of {res['transform']} on the grid of {res['grid']}{where} "
            f"({res['num_voxels']} voxels):",
            f"  det J <= 0 (folding): {res['num_nonpositive']} voxels "
            f"({_fmt(None if frac is None else 100 * frac, '.4f')} %)",
            f"  min / max / mean:     {_fmt(res['min'], '.4g')} / {_fmt(res['max'], '.4g')} / "
            f"{_fmt(res['mean'], '.4g')}",
            f"  SDlogJ:               {_fmt(res['std_log'], '.4f')} (std of log det J, det clipped to "
            "[1e-9, 1e9]; "
            f"mean log det J {_fmt(res['mean_log'], '.4f')})",
        ]
    )


def run(args: argparse.Namespace) -> int:
    """Run ``jaxreg evaluate`` with parsed arguments; returns the exit status (0).

    Raises:
      ValueError: incomplete or inconsistent arguments, label maps on different grids, bad label lists.
      OSError: unreadable inputs or an unwritable ``--json`` destination.
    """
    have_labels = args.fixed_labels is not None or args.warped_labels is not None
    have_jac = args.transform is not None or args.grid is not None
    if (args.fixed_labels is None) != (args.warped_labels is None):
        raise ValueError("evaluate: --fixed-labels and --warped-labels go together")
    if (args.transform is None) != (args.grid is None):
        raise ValueError(
            "evaluate: --transform and --grid go together (the grid comes from the image's header)"
        )
    if args.mask is not None and args.transform is None:
        raise ValueError(
            "evaluate: --mask restricts the Jacobian statistics; it needs --transform and --grid"
        )
    if (args.labels is not None or args.labels_json is not None) and not have_labels:
        raise ValueError("evaluate: --labels/--labels-json need --fixed-labels and --warped-labels")
    if not have_labels and not have_jac:
        raise ValueError(
            "evaluate: nothing to do; give --fixed-labels A --warped-labels B and/or --transform T "
            "--grid IMAGE"
        )
    inputs = [
        p
        for p in (
            args.fixed_labels,
            args.warped_labels,
            args.labels_json,
            args.transform,
            args.grid,
            args.mask,
        )
        if p is not None
    ]
    if args.json is not None:
        from jaxreg.io import check_not_input

        with argument("--json"):
            check_not_input(args.json, inputs)  # fail before the (possibly long) computation
            out_dir = Path(args.json).parent if str(Path(args.json).parent) else Path(".")
            if not out_dir.is_dir():
                raise FileNotFoundError(2, f"{args.json}: the output directory does not exist")

    result: dict[str, Any] = {}
    names: dict[int, str] = {}
    t0 = time.perf_counter()
    if have_labels:
        labels: list[int] | None = None
        if args.labels_json is not None:
            with argument("--labels-json"):
                labels, names = read_label_list(args.labels_json)
        elif args.labels is not None:
            labels = list(args.labels)
            dup = sorted({x for x in labels if labels.count(x) > 1})
            if dup:
                raise ValueError(f"--labels: duplicate labels {dup}")
        res = evaluate_labels(args.fixed_labels, args.warped_labels, labels)
        for r in res["labels"]:
            if r["label"] in names:
                r["name"] = names[r["label"]]
        print(f"A = {args.fixed_labels}\nB = {args.warped_labels}")
        print(_format_labels(res, names))
        result["labels"] = res
    if have_jac:
        res = evaluate_transform(args.transform, args.grid, args.mask)
        if have_labels:
            print()
        print(_format_jacobian(res))
        result["jacobian"] = res
    result["seconds"] = round(time.perf_counter() - t0, 3)
    if args.json is not None:
        from jaxreg.io import atomic_write

        text = json.dumps(result, indent=2, allow_nan=False) + "\n"

        def write(tmp: str) -> None:
            Path(tmp).write_text(text)

        atomic_write(args.json, write, inputs=inputs)
        print(f"wrote {args.json}")
    return 0
