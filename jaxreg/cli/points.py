"""``jaxreg apply-points``: move landmark files through transform files, and measure TRE against reference points.

``jaxreg apply-points -i POINTS -t T1 [-t T2 ...] [-o OUT] [--reference-points R] [--json]``

Direction: the convention of ``antsApplyTransformsToPoints``. Points go through the *inverse* of what images go
through: the ``-t`` list that warps the moving image onto the fixed grid (``jaxreg apply --fixed F --moving M -t
warp.nii.gz -t affine.mat``) maps *fixed-space* points to the *moving* space, ``T(p) = affine(warp(p))`` with the
first listed transform applied first to the point, exactly the pull transform the image warp samples at. To map
moving-space points into the fixed space, give the list that warps the fixed image into the moving space: ``-t
[affine.mat,1] -t inverse_warp.nii.gz`` (what ``jaxreg register`` writes; ``1InverseWarp.nii.gz`` for ANTs).

Point files are read and written by :mod:`jaxreg.io.landmarks` (as ``jaxreg landmarks`` reads them): plain CSV in
RAS mm, 3D Slicer ``.fcsv`` (RAS or LPS), ANTs CSV (header ``x,y,z,t``, LPS). The moved points are written in the
input's format unless ``--output-format`` or a ``.fcsv`` output name says otherwise; labels are kept. The
transforms' dimension decides the points': for a 2-D transform, rows ``x,y,0`` (ANTs files always have ``x,y,z,t``)
are read as 2-D points and written back with ``z = 0``.

With ``--reference-points R`` the moved points are paired with ``R`` (row by row, or ``--pair label``) and the
target registration error ``|T(p_i) - r_i|`` is printed per point with its mean, median and maximum (mm), next to
the error before (``|p_i - r_i|``, the identity): after ``jaxreg register F M -o out``, ``jaxreg apply-points -i
F_landmarks.csv -t out/warp.nii.gz -t out/affine.mat --reference-points M_landmarks.csv`` is the TRE of the
registration in one command. ``--json`` prints one JSON object instead of the text.

Everything is read and checked before the output file is written (atomically, never over an input); errors are
one line, exit status 2 (:mod:`jaxreg.cli.main`). Wired into ``jaxreg`` by :func:`add_parser` and :func:`run`.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from jaxreg.cli._args import UsageError, argument, load_transforms, parse_transform_spec

__all__ = ["add_parser", "run", "tre_summary"]

_FORMATS = ("auto", "csv", "fcsv", "ants")
_SUFFIXES = (".csv", ".fcsv", ".txt")

_DESCRIPTION = (
    "Map landmark points through transform files in the convention of antsApplyTransformsToPoints: points go "
    "through the inverse of what images go through. The -t list that warps the moving image onto the fixed grid "
    "(jaxreg apply --fixed F --moving M -t warp.nii.gz -t affine.mat) maps FIXED-space points into the MOVING "
    "space (the first listed transform is applied first to the point: affine(warp(p))); to map moving-space "
    "points into the fixed space give -t [affine.mat,1] -t inverse_warp.nii.gz (the list that warps the fixed "
    "image into the moving space). Transform files: ANTs/ITK .mat, ITK .tfm/.txt, ITK HDF5 .h5 (Composite.h5), ITK displacement-field NIfTI; "
    "[file,1] uses the inverse of a linear transform. Point files: plain CSV x,y[,z] in RAS mm (optional header and "
    "label column), 3D Slicer .fcsv (RAS or LPS), ANTs CSV (header x,y,z,t, LPS). With --reference-points the "
    "target registration error of the moved points against the reference (mean, median, max mm) is printed."
)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``apply-points`` subcommand to ``jaxreg``'s subparsers (created with main.py's parser class)."""
    p = subparsers.add_parser(
        "apply-points",
        help="map landmark files through transform files (antsApplyTransformsToPoints convention), with TRE",
        description=_DESCRIPTION,
    )
    p.add_argument("-i", "--input", required=True, metavar="POINTS", help="landmark file (.csv, .fcsv)")
    p.add_argument(
        "-t",
        "--transform",
        action="append",
        required=True,
        metavar="T",
        help="transform file, repeatable, in the order of 'jaxreg apply' (the first is applied first to the "
        "point); [file,1] uses the inverse (linear only)",
    )
    p.add_argument(
        "-o",
        "--output",
        metavar="OUT",
        default=None,
        help="write the moved points here (.csv, .fcsv or .txt; written atomically, never over an input)",
    )
    p.add_argument(
        "--format",
        choices=_FORMATS,
        default="auto",
        help="format of POINTS and R (default: from the suffix; a .csv with an x,y,z,t header is ANTs/LPS)",
    )
    p.add_argument(
        "--output-format",
        choices=_FORMATS,
        default="auto",
        help="format of OUT (default: fcsv for a .fcsv name, else the format of POINTS)",
    )
    p.add_argument(
        "--reference-points",
        metavar="R",
        default=None,
        help="the corresponding points in the target space: print the TRE |T(p_i) - r_i| (mm)",
    )
    p.add_argument(
        "--pair",
        choices=("order", "label"),
        default="order",
        help="pair POINTS with R row by row (default) or by their labels",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=run)
    return p


def tre_summary(distances: np.ndarray) -> dict[str, float]:
    """``{"mean_mm", "median_mm", "max_mm", "rms_mm"}`` of per-point distances (mm)."""
    d = np.asarray(distances, np.float64)
    return {
        "mean_mm": float(d.mean()),
        "median_mm": float(np.median(d)),
        "max_mm": float(d.max()),
        "rms_mm": float(np.sqrt(np.mean(d**2))),
    }


def _check_output(path: str, inputs: list[str]) -> None:
    if Path(path).suffix.lower() not in _SUFFIXES:
        raise UsageError(f"-o {path}: expected a .csv, .fcsv or .txt point file name")
    for q in inputs:
        a, b = Path(path), Path(q)
        if a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b)):
            raise ValueError(f"-o {path}: refusing to overwrite the input file {q}")
    if not Path(path).parent.is_dir():
        raise FileNotFoundError(2, f"-o {path}: the output directory does not exist")


def _read_points(read: Any, path: str, fmt: str, ndim: int, what: str) -> Any:
    """Points of ``path`` as ``ndim``-D (a zero ``z`` column is dropped for a 2-D transform)."""
    lm = read(path, format=fmt)
    if lm.points.shape[1] == ndim:
        return lm
    if ndim == 2 and lm.points.shape[1] == 3 and not np.any(lm.points[:, 2]):
        return read(path, format=fmt, ndim=2)
    extra = " (non-zero z)" if ndim == 2 else ""
    raise ValueError(f"{path}: {lm.points.shape[1]}-D points{extra} for the {ndim}-D transform of {what}")


def _output_format(path: str, requested: str, input_format: str) -> str:
    if requested != "auto":
        return requested
    if Path(path).suffix.lower() == ".fcsv":
        return "fcsv"
    return "csv" if input_format == "fcsv" else input_format


def run(args: argparse.Namespace) -> int:
    """Run ``jaxreg apply-points`` (see the module docstring); returns the exit status (0)."""
    import jax
    import jax.numpy as jnp

    from jaxreg.io.landmarks import Landmarks, landmark_format, match_landmarks, read_landmarks, write_landmarks

    specs = [parse_transform_spec(s) for s in args.transform]
    inputs = [args.input] + [p for p, _ in specs] + ([args.reference_points] if args.reference_points else [])
    if args.output is not None:
        _check_output(args.output, inputs)
    t0 = time.perf_counter()
    with argument("-i"):
        in_format = landmark_format(args.input, format=args.format)
    with jax.enable_x64(True):  # files hold doubles: map in double precision
        with argument("-t"):
            transform = load_transforms(args.transform)
        ndim = transform.ndim
        # the transforms' dimension decides: a 2-D transform reads x,y,0 rows (ANTs' x,y,z,t files) as 2-D points
        with argument("-i"):
            points = _read_points(read_landmarks, args.input, in_format, ndim, "-t")
        reference = None
        if args.reference_points is not None:
            with argument("--reference-points"):
                reference = _read_points(read_landmarks, args.reference_points, args.format, ndim, "-t")
        out_format = None
        if args.output is not None:
            out_format = _output_format(args.output, args.output_format, in_format)
            if out_format == "fcsv" and ndim != 3:
                raise UsageError(f"-o {args.output}: Slicer .fcsv files hold 3-D points, -i {args.input} has {ndim}-D")
        moved = np.asarray(transform(jnp.asarray(points.points, jnp.float64)), np.float64)
    if not np.all(np.isfinite(moved)):
        raise ValueError(f"-t: the transforms map some points of -i {args.input} to non-finite coordinates")
    labels = points.labels if any(points.labels) else None
    result: dict[str, Any] = {
        "input": os.fspath(args.input),
        "input_format": in_format,
        "transforms": list(args.transform),
        "num_points": int(moved.shape[0]),
        "ndim": int(ndim),
        "points": moved.tolist(),
        "labels": list(points.labels),
    }
    if reference is not None:
        try:
            mv, ref, pair_labels = match_landmarks(Landmarks(moved, points.labels), reference, by=args.pair)
            before, _, _ = match_landmarks(points, reference, by=args.pair)
        except ValueError as e:  # "fixed/moving: ..." -> the options they concern
            msg = str(e).replace("fixed/moving:", "-i/--reference-points:", 1)
            msg = msg.replace("fixed:", "-i:", 1).replace("moving:", "--reference-points:", 1)
            raise UsageError(msg) from e
        d_after = np.linalg.norm(mv - ref, axis=-1)
        d_before = np.linalg.norm(before - ref, axis=-1)
        result["tre"] = {
            "reference": os.fspath(args.reference_points),
            "pairs": int(len(d_after)),
            "labels": list(pair_labels),
            "distances_mm": d_after.tolist(),
            "distances_before_mm": d_before.tolist(),
            **tre_summary(d_after),
            "before": tre_summary(d_before),
        }
    if args.output is not None:
        write_landmarks(args.output, moved, labels=labels, format=out_format, inputs=inputs)
        result["output"] = os.fspath(args.output)
        result["output_format"] = out_format
    result["seconds"] = round(time.perf_counter() - t0, 3)

    if args.json:
        print(json.dumps(result, indent=2, allow_nan=False))
        return 0
    print(f"{len(moved)} {ndim}-D points of {args.input} mapped through {len(specs)} transform(s) (RAS mm)")
    if "tre" in result:
        tre = result["tre"]
        width = max([5] + [len(lab) for lab in tre["labels"]])
        print(f"{'#':>3}  {'label':<{width}}  {'before (mm)':>11}  {'TRE (mm)':>9}")
        for i, (lab, b, a) in enumerate(zip(tre["labels"], tre["distances_before_mm"], tre["distances_mm"])):
            print(f"{i + 1:>3}  {lab or '-':<{width}}  {b:>11.3f}  {a:>9.3f}")
        bf = tre["before"]
        print(
            f"TRE over {tre['pairs']} pairs: mean {tre['mean_mm']:.3f}, median {tre['median_mm']:.3f}, "
            f"max {tre['max_mm']:.3f} mm (before: mean {bf['mean_mm']:.3f}, median {bf['median_mm']:.3f}, "
            f"max {bf['max_mm']:.3f} mm)"
        )
    else:
        for i, p in enumerate(moved[:10]):
            lab = points.labels[i] or "-"
            print(f"{i + 1:>3}  {lab:<8}  " + "  ".join(f"{v:10.3f}" for v in p))
        if len(moved) > 10:
            print(f"... ({len(moved) - 10} more; -o writes them all, --json prints them)")
    if args.output is not None:
        print(f"wrote {args.output} ({out_format}, {result['seconds']:.1f} s)")
    return 0
