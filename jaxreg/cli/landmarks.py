"""``jaxreg landmarks``: fit a transform to corresponding landmarks and write it as an ITK/ANTs file.

``jaxreg landmarks --fixed F.csv --moving M.csv --model rigid|similarity|affine -o T.mat [--weights W]``

The fit gives ``T`` with ``T(fixed_i) ~ moving_i`` (jaxreg's fixed -> moving direction, see
:mod:`jaxreg.points.fit`), so the written file aligns the images exactly like a registration result:
``jaxreg apply --fixed F_img --moving M_img -t T.mat -o out.nii.gz`` (or ``antsApplyTransforms -r F_img -i M_img
-t T.mat``) resamples the moving image onto the fixed one. Landmark files are read by
:func:`jaxreg.io.landmarks.read_landmarks` (plain RAS CSV, Slicer ``.fcsv``, ANTs LPS CSV).

The command prints the per-landmark FRE and, when there are enough landmarks, the leave-one-out error at each
landmark (the fit without it), then the RMS FRE and the FLE it implies. Wired into ``jaxreg`` by
:func:`add_parser` and :func:`run`.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from jaxreg.cli._args import UsageError, argument

__all__ = ["add_parser", "parse_weights", "run"]

_SUFFIXES = (".mat", ".tfm", ".txt", ".h5")


def parse_weights(spec: str, count: int) -> np.ndarray:
    """``--weights``: comma/space-separated numbers, or a file of them (``#`` comments allowed); ``count`` values.

    Raises:
      ValueError: not numbers, wrong count, negative or non-finite values.
    """
    text = spec
    if os.path.isfile(spec):
        text = "\n".join(
            line.split("#", 1)[0] for line in Path(spec).read_text(encoding="utf-8").splitlines()
        )
    fields = [f for f in text.replace(",", " ").split()]
    try:
        w = np.array([float(f) for f in fields], dtype=np.float64)
    except ValueError:
        raise ValueError(
            f"--weights {spec}: expected {count} comma-separated numbers or a file of them (one weight per landmark pair)"
        ) from None
    if w.size != count:
        raise ValueError(f"--weights {spec}: expected {count} weights (one per landmark pair), got {w.size}")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError(f"--weights {spec}: expected finite non-negative weights")
    return w


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``landmarks`` subcommand to ``jaxreg``'s subparsers (created with main.py's parser class)."""
    from jaxreg.points.fit import MODELS

    p = subparsers.add_parser(
        "landmarks",
        help="fit a rigid/similarity/affine transform to landmark pairs and write it (.mat/.tfm)",
        description="Fit the least-squares transform T with T(fixed_i) ~ moving_i (closed form: Kabsch, Umeyama or "
        "affine least squares) and write it as an ITK/ANTs transform file. T maps fixed-space points to the moving "
        "space like any registration result, so 'jaxreg apply --fixed F_img --moving M_img -t T.mat' (or "
        "antsApplyTransforms) brings the moving image onto the fixed one. Landmark files: plain CSV x,y,z in RAS mm "
        "(optional header and label column), 3D Slicer .fcsv (RAS or LPS), ANTs CSV (header x,y,z,t, LPS). Prints "
        "the fiducial registration error (FRE) of every landmark and the RMS FRE.",
    )
    p.add_argument("--fixed", required=True, metavar="F", help="landmarks in the fixed (reference) space")
    p.add_argument(
        "--moving", required=True, metavar="M", help="the corresponding landmarks in the moving space"
    )
    p.add_argument("--model", choices=MODELS, default="rigid", help="transform family (default rigid)")
    p.add_argument(
        "-o", "--output", required=True, metavar="T", help="output transform: .mat (ANTs), .tfm/.txt (ITK text) or .h5 (ITK HDF5)"
    )
    p.add_argument(
        "--weights",
        metavar="W",
        default=None,
        help="per-pair weights (e.g. 1/FLE_i^2): comma-separated numbers or a file of them",
    )
    p.add_argument(
        "--pair",
        choices=("order", "label"),
        default="order",
        help="pair landmarks row by row (default) or by their labels",
    )
    p.add_argument(
        "--format",
        choices=("auto", "csv", "fcsv", "ants"),
        default="auto",
        help="landmark file format (default: from the suffix; a .csv with an x,y,z,t header is ANTs/LPS)",
    )
    p.set_defaults(func=run)
    return p


def _check_output(path: str, inputs: list[str]) -> None:
    suffix = Path(path).suffix.lower()
    if suffix not in _SUFFIXES:
        raise UsageError(f"-o {path}: expected a .mat, .tfm, .txt or .h5 transform file name")
    for q in inputs:
        a, b = Path(path), Path(q)
        if a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b)):
            raise ValueError(f"-o {path}: refusing to overwrite the input file {q}")
    out_dir = Path(path).parent
    if not out_dir.is_dir():
        raise FileNotFoundError(2, f"-o {path}: the output directory does not exist")


def run(args: argparse.Namespace) -> int:
    """Run ``jaxreg landmarks`` (see the module docstring); returns the exit status (0)."""
    import jax
    import jax.numpy as jnp

    from jaxreg.io import write_transform
    from jaxreg.io.landmarks import match_landmarks, read_landmarks
    from jaxreg.points import fit_transform, fle_from_fre, leave_one_out_errors, min_points, num_parameters
    from jaxreg.points.errors import registration_errors

    inputs = [args.fixed, args.moving] + (
        [args.weights] if args.weights and os.path.isfile(args.weights) else []
    )
    _check_output(args.output, inputs)
    t0 = time.perf_counter()
    with argument("--fixed"):
        fixed = read_landmarks(args.fixed, format=args.format)
    with argument("--moving"):
        moving = read_landmarks(args.moving, format=args.format)
    try:
        x, y, labels = match_landmarks(fixed, moving, by=args.pair)
    except ValueError as e:  # "fixed/moving: ...", "fixed: ..." -> the options they concern
        raise UsageError(f"--{str(e).replace('fixed/moving:', 'fixed/--moving:', 1)}") from e
    n_pts, ndim = x.shape
    w = parse_weights(args.weights, n_pts) if args.weights else None
    if n_pts < min_points(args.model, ndim):
        raise UsageError(
            f"--fixed/--moving: a {ndim}-D {args.model} fit needs at least {min_points(args.model, ndim)} landmark "
            f"pairs, got {n_pts}"
        )
    with jax.enable_x64(True):  # files hold doubles: fit in double precision
        with argument("--fixed/--moving"):
            t = fit_transform(
                jnp.asarray(x), jnp.asarray(y), model=args.model, weights=None if w is None else jnp.asarray(w)
            )
        errors = np.asarray(registration_errors(t, x, y))
        loo = None
        if n_pts > min_points(args.model, ndim):
            loo = np.asarray(
                leave_one_out_errors(
                    jnp.asarray(x),
                    jnp.asarray(y),
                    model=args.model,
                    weights=None if w is None else jnp.asarray(w),
                )
            )
        write_transform(t, args.output, inputs=inputs)
    dt = time.perf_counter() - t0

    width = max([5] + [len(lab) for lab in labels])
    header = f"{'#':>3}  {'label':<{width}}  {'FRE (mm)':>9}"
    if loo is not None:
        header += f"  {'left out (mm)':>13}"
    if w is not None:
        header += f"  {'weight':>8}"
    print(
        f"{args.model} fit of {n_pts} {ndim}-D landmark pairs (T maps fixed to moving points, T(fixed) ~ moving)"
    )
    print(header)
    for i in range(n_pts):
        line = f"{i + 1:>3}  {labels[i] or '-':<{width}}  {errors[i]:>9.3f}"
        if loo is not None:
            line += f"  {loo[i]:>13.3f}"
        if w is not None:
            line += f"  {w[i]:>8.3g}"
        print(line)
    if w is None:
        rms = float(np.sqrt(np.mean(errors**2)))
        print(f"RMS FRE: {rms:.3f} mm")
    else:
        rms = float(np.sqrt(np.sum(w * errors**2) / np.sum(w)))
        print(f"weighted RMS FRE: {rms:.3f} mm")
    if w is None and ndim * n_pts > num_parameters(args.model, ndim):
        fle = float(fle_from_fre(rms, n_pts, ndim=ndim, model=args.model))
        print(
            f"FLE implied by the FRE: {fle:.3f} mm RMS (equal isotropic FLE assumed; a low FRE does not mean a low TRE)"
        )
    elif w is None:
        print(
            "the landmarks determine the fit exactly: FRE carries no information about the localisation error"
        )
    if loo is not None and not np.all(np.isfinite(loo)):
        print("note: NaN leave-one-out errors mark landmarks without which the rest are degenerate")
    print(
        f"wrote {args.output} ({dt:.1f} s); apply it with: jaxreg apply --fixed FIXED_IMAGE --moving MOVING_IMAGE "
        f"-t {args.output} -o OUT.nii.gz"
    )
    return 0
