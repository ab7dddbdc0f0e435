"""``jaxreg`` command-line entry point: argument parsing, dispatch and error reporting.

Subcommands:

* ``jaxreg info IMAGE [--json]`` -- geometry and values of a NIfTI image;
* ``jaxreg apply --fixed F --moving M -t T1 [-t T2 ...] -o OUT`` -- warp an image through transform files
  (``antsApplyTransforms`` order: the moving image is sampled at ``T2(T1(x))``, see :func:`load_transforms`);
* ``jaxreg apply-points -i POINTS -t T1 [-t T2 ...] [-o OUT] [--reference-points R]`` -- map landmark files
  through transform files (``antsApplyTransformsToPoints`` convention: the ``-t`` list that warps the moving
  image onto the fixed grid maps fixed-space points to the moving space), with TRE against reference points
  (:mod:`jaxreg.cli.points`);
* ``jaxreg demo [-o DIR] [--seed N]`` -- register the MNI152 template to a known deformation of itself;
* ``jaxreg evaluate`` -- Dice/HD95 of label maps, Jacobian statistics of a transform (:mod:`jaxreg.cli.evaluate`);
* ``jaxreg landmarks`` -- fit a rigid/similarity/affine transform to landmark files (:mod:`jaxreg.cli.landmarks`);
* ``jaxreg register FIXED MOVING -o OUTDIR`` -- register two images, write the warped image, the transforms and a
  report (:mod:`jaxreg.cli.register`);
* ``jaxreg register-many (--csv F | --fixed F --moving-dir D) -o OUTDIR`` -- many pairs, batched and sharded over
  devices, one folder per pair, resumable; ``jaxreg template IMAGES... -o OUTDIR`` -- an unbiased template
  (:mod:`jaxreg.cli.cohort`);
* ``jaxreg train --config cfg.toml`` -- train a registration network (:mod:`jaxreg.cli.learn`);
* ``jaxreg predict --model DIR FIXED MOVING -o OUTDIR`` -- register two images with a trained network
  (:mod:`jaxreg.cli.learn`).

Compilation cache: every command runs with JAX's persistent compilation cache on (:func:`compilation_cache`),
in ``$JAXREG_CACHE_DIR`` or ``~/.cache/jaxreg/jax`` (``$XDG_CACHE_HOME/jaxreg/jax`` when that is set), so a
second run skips most of XLA's compilation; ``--no-cache`` or ``JAXREG_CACHE_DIR=""`` turns it off. The library
itself never turns the cache on. Without the cache, ``register`` compiles its programs for one run each
(:func:`jaxreg.core.compilation.single_use`: small programs with XLA's fast-compile options).

User errors (missing or unreadable files, bad arguments, anything jaxreg raises as ``ValueError`` or
``OSError``) print one line ``jaxreg: error: ...`` on stderr, naming the argument concerned, and exit with
status 2 before anything is written; ``--debug`` shows the traceback instead. Argument types and the error
helpers shared by the subcommands are in :mod:`jaxreg.cli._args` (the subcommand modules never import this
one, which imports them).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from jaxreg.cli._args import Parser as _Parser
from jaxreg.cli._args import (  # noqa: F401 (parse_transform_spec, load_transforms: re-exported)
    UsageError,
    argument,
    int_at_least,
    load_transforms,
    one_line,
    parse_transform_spec,
    positive_float,
)

__all__ = ["main", "build_parser", "cache_dir", "compilation_cache"]

PROG = "jaxreg"
_INTERP_ORDER = {"linear": 1, "nearest": 0, "cubic": 3}


# -- info -------------------------------------------------------------------------------------------------------
def _file_layout(shape: tuple[int, ...]) -> tuple[tuple[int, ...], int | None]:
    """``(spatial_shape, components)`` of a NIfTI data shape (see :mod:`jaxreg.io.nifti`)."""
    comps: int | None = None
    if len(shape) == 5 and shape[3] == 1:
        shape, comps = shape[:3], shape[4]
    elif len(shape) >= 4:
        shape, comps = shape[:3], int(np.prod(shape[3:]))
    if len(shape) == 3 and shape[2] == 1:
        shape = shape[:2]
    if comps == 1:
        comps = None
    return tuple(int(s) for s in shape), comps


def image_info(path: str | os.PathLike) -> dict[str, Any]:
    """Geometry and value summary of an image file (any format of :func:`jaxreg.io.load_image`), as plain Python
    values (what ``jaxreg info`` prints).

    Returns:
      dict with ``path``, ``shape`` (spatial), ``ndim``, ``components`` (or None), ``spacing`` (mm),
      ``axcodes``, ``origin`` (mm, world position of voxel 0), ``affine`` (the file's 4x4), ``dtype`` (stored),
      ``loaded_dtype``, ``real_valued`` (False for complex or RGB voxels, which jaxreg does not load; their
      ``min``/``max`` are NaN), ``min``, ``max``, ``n_labels`` (distinct values of an integer image, else None), ``n_nonfinite``,
      ``format`` (``nifti``, ``mgh`` or ``itk``), ``sform_code``, ``qform_code`` (NIfTI only, else None).
    """
    from jaxreg.io.formats import read_volume
    from jaxreg.io.nifti import nifti_grid

    vol = read_volume(path)
    data = vol.data
    spatial, comps = _file_layout(tuple(data.shape))
    affine = np.asarray(vol.affine, dtype=np.float64)
    grid = nifti_grid(affine, spatial)
    real = np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)
    real = real or data.dtype == np.bool_
    finite = np.isfinite(data) if np.issubdtype(data.dtype, np.inexact) else None
    n_bad = 0 if finite is None else int(data.size - np.count_nonzero(finite))
    if not real or data.size == 0 or n_bad == data.size:  # complex/RGB voxels: no range
        lo = hi = float("nan")
    elif n_bad:
        lo, hi = (
            float(np.nanmin(np.where(finite, data, np.nan))),
            float(np.nanmax(np.where(finite, data, np.nan))),
        )
    else:
        lo, hi = data.min().item(), data.max().item()
    n_labels = int(np.unique(data).size) if np.issubdtype(data.dtype, np.integer) else None
    hdr = vol.image.header if vol.image is not None else None
    nifti = vol.format == "nifti"
    return {
        "path": os.fspath(path),
        "shape": list(grid.shape),
        "ndim": grid.ndim,
        "components": comps,
        "spacing": [float(s) for s in grid.spacing],
        "axcodes": "".join(grid.axcodes),
        "origin": [float(o) for o in grid.origin],
        "affine": affine.tolist(),
        "dtype": str(hdr.get_data_dtype()) if hdr is not None else str(data.dtype),
        "loaded_dtype": str(data.dtype),
        "real_valued": bool(real),
        "min": lo,
        "max": hi,
        "n_labels": n_labels,
        "n_nonfinite": n_bad,
        "format": vol.format,
        "sform_code": int(hdr["sform_code"]) if nifti else None,
        "qform_code": int(hdr["qform_code"]) if nifti else None,
    }


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def format_info(info: dict[str, Any]) -> str:
    """Human-readable text of :func:`image_info`."""
    x = " x "
    shape = x.join(str(s) for s in info["shape"])
    lines = [
        f"file:        {info['path']}",
        f"shape:       {shape} ({info['ndim']}-D"
        + (f", {info['components']} components per voxel)" if info["components"] else ")"),
        f"spacing:     {x.join(_fmt(s) for s in info['spacing'])} mm",
        f"orientation: {info['axcodes']} (array axes point towards {', '.join(info['axcodes'])}; RAS+ world)",
        f"origin:      ({', '.join(_fmt(o) for o in info['origin'])}) mm (world position of voxel 0's centre)",
        "affine:      voxel-to-world, mm (sform_code {}, qform_code {})".format(
            info["sform_code"], info["qform_code"]
        )
        if info.get("format", "nifti") == "nifti"
        else f"affine:      voxel-to-world, mm (RAS+, converted from the {info['format'].upper()} file's geometry)",
    ]
    for row in info["affine"]:
        lines.append("             [" + " ".join(f"{v:10.4f}" for v in row) + " ]")
    dtype = info["dtype"]
    if info["loaded_dtype"] != dtype:
        dtype += f" (scaled to {info['loaded_dtype']})"
    lines.append(f"dtype:       {dtype}")
    if not info["real_valued"]:
        lines.append(f"range:       - ({info['loaded_dtype']} voxels: jaxreg.io.load_image refuses them)")
    else:
        lines.append(f"range:       [{_fmt(info['min'])}, {_fmt(info['max'])}]")
    if info["n_nonfinite"]:
        lines.append(f"non-finite:  {info['n_nonfinite']} NaN/Inf values (jaxreg.io.load_image refuses them)")
    if info["n_labels"] is not None:
        lines.append(f"labels:      {info['n_labels']} distinct values")
    return "\n".join(lines)


def cmd_info(args: argparse.Namespace) -> int:
    with argument("IMAGE"):
        info = image_info(args.image)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(format_info(info))
    return 0


# -- apply ------------------------------------------------------------------------------------------------------
def _same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    pa, pb = Path(a), Path(b)
    if pa.resolve() == pb.resolve():
        return True
    try:
        return pa.exists() and pb.exists() and os.path.samefile(pa, pb)
    except OSError:
        return False


def cmd_apply(args: argparse.Namespace) -> int:
    from jaxreg.core.grid import Image
    from jaxreg.io import load_image, load_labels, save_image
    from jaxreg.warp import warp, warp_labels

    specs = [parse_transform_spec(s) for s in args.transform]
    inputs = [args.fixed, args.moving] + [p for p, _ in specs]
    for p in inputs:
        if _same_file(args.output, p):
            raise ValueError(f"-o {args.output}: refusing to overwrite the input file {p}")
    from jaxreg.io.formats import WRITE_SUFFIXES, split_suffix

    if split_suffix(args.output)[1].lower() not in WRITE_SUFFIXES:
        raise ValueError(f"-o {args.output}: expected an image file name ending in {', '.join(WRITE_SUFFIXES)}")
    out_dir = Path(args.output).parent
    if not out_dir.is_dir():
        raise FileNotFoundError(2, f"-o {args.output}: the output directory does not exist")
    if args.labels and args.interp not in (None, "nearest"):
        raise UsageError(f"--labels warps with nearest-neighbour interpolation; drop --interp {args.interp}")
    if not np.isfinite(args.default_value) or (args.labels and args.default_value != int(args.default_value)):
        what = "an integer label" if args.labels else "a finite number"
        raise UsageError(f"--default-value: expected {what}, got {args.default_value!r}")

    t0 = time.perf_counter()
    with argument("--fixed"):
        fixed_grid = load_image(args.fixed, channels=True).grid
    with argument("-t"):
        transform = load_transforms(args.transform)
        if transform.ndim != fixed_grid.ndim:
            raise ValueError(
                f"a {transform.ndim}-D transform for the {fixed_grid.ndim}-D --fixed image {args.fixed}"
            )
    interp = args.interp or ("nearest" if args.labels else "linear")
    with argument("--moving"):
        if args.labels:
            moving = load_labels(args.moving)
        else:
            moving = load_image(args.moving, channels=True)
            if moving.data.shape[-1] == 1:
                moving = Image(moving.data[..., 0], moving.grid)
        if moving.grid.ndim != fixed_grid.ndim:
            raise ValueError(
                f"{args.moving} is {moving.grid.ndim}-D but --fixed {args.fixed} is {fixed_grid.ndim}-D"
            )
    is_int = np.issubdtype(np.dtype(moving.data.dtype), np.integer)
    if args.labels or (interp == "nearest" and is_int):
        out = warp_labels(moving, transform, fixed_grid, background=int(args.default_value))
        how = "nearest-neighbour labels"
    else:
        out = warp(moving, transform, fixed_grid, order=_INTERP_ORDER[interp], cval=float(args.default_value))
        how = f"{interp} interpolation"
    save_image(out, args.output, inputs=inputs)
    dt = time.perf_counter() - t0
    shape = "x".join(str(s) for s in fixed_grid.shape)
    if getattr(args, "json", False):
        print(json.dumps({
            "output": os.fspath(args.output), "shape": list(fixed_grid.shape), "dtype": str(out.data.dtype),
            "transforms": [os.fspath(t) for t in args.transform], "interpolation": how, "seconds": round(dt, 3),
        }))  # fmt: skip
    elif not getattr(args, "quiet", False):
        print(f"wrote {args.output}: {shape} {out.data.dtype}, {len(specs)} transform(s), {how} ({dt:.1f} s)")
    return 0


# -- demo -------------------------------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    from jaxreg.cli.demo import run_demo

    run_demo(
        args.output,
        seed=args.seed,
        resolution=args.resolution,
        max_displacement_mm=args.max_displacement,
        smoothness_mm=args.smoothness,
    )
    return 0


# -- compilation cache ------------------------------------------------------------------------------------------
CACHE_ENV = "JAXREG_CACHE_DIR"
CACHE_MIN_COMPILE_SECONDS = 0.0
"""Compilations shorter than this are not cached. A registration compiles a few big kernels and a great many
small ones (level data, transforms, metrics, figures), and the small ones add up: on the 2-D brain pair a
threshold of 0.5 s cached 5 programs and the second run took 18 s instead of 20 s, 0.1 s gave 10.5 s and 0 (cache
everything; about 200 programs, 1 MB) 5 s."""


def cache_dir(*, no_cache: bool = False) -> str | None:
    """The persistent compilation cache folder of the command line, or ``None`` when it is off.

    ``$JAXREG_CACHE_DIR`` when set (the empty string turns the cache off), else ``$XDG_CACHE_HOME/jaxreg/jax``
    or ``~/.cache/jaxreg/jax``; ``no_cache`` (``--no-cache``) turns it off.
    """
    if no_cache:
        return None
    env = os.environ.get(CACHE_ENV)
    if env is not None:
        return os.path.expanduser(env) if env.strip() else None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "jaxreg", "jax")


@contextlib.contextmanager
def compilation_cache(path: str | None) -> Iterator[str | None]:
    """Run a block with JAX's persistent compilation cache in ``path`` (``None``: leave JAX as it is).

    Sets ``jax_compilation_cache_dir`` and a low ``jax_persistent_cache_min_compile_time_secs``
    (:data:`CACHE_MIN_COMPILE_SECONDS`) for the block and restores both afterwards, so in-process callers (tests,
    notebooks) are left as they were. A cache folder the user configured for JAX itself
    (``JAX_COMPILATION_CACHE_DIR``) is respected; a folder that cannot be created turns the cache off.

    Yields:
      The folder in use, or ``None``.
    """
    if path is None:
        yield None
        return
    import jax

    if jax.config.jax_compilation_cache_dir:  # configured for JAX directly: leave it alone
        yield jax.config.jax_compilation_cache_dir
        return
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        yield None
        return
    try:
        from jax.experimental.compilation_cache import compilation_cache as cc

        reset = cc.reset_cache
    except (ImportError, AttributeError):  # pragma: no cover - older or newer JAX

        def reset() -> None:
            return None

    old_min = jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", CACHE_MIN_COMPILE_SECONDS)
    reset()
    try:
        yield path
    finally:
        jax.config.update("jax_compilation_cache_dir", None)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", old_min)
        reset()


# -- parser -----------------------------------------------------------------------------------------------------
_positive_int = int_at_least(1)


def build_parser() -> argparse.ArgumentParser:
    """The ``jaxreg`` argument parser (``info``, ``apply``, ``apply-points``, ``demo``, ``evaluate``, ``landmarks``,
    ``register``, ``register-many``, ``template``, ``train``, ``predict``)."""
    from jaxreg import __version__

    p = _Parser(
        prog=PROG,
        description="jaxreg: medical image registration in JAX. World coordinates are RAS+ mm from the NIfTI "
        "affine; transforms map fixed-space points to moving-space points (pull warping).",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--debug", action="store_true", help="show full tracebacks instead of one-line errors")
    p.add_argument(
        "--no-cache",
        action="store_true",
        help="do not use the persistent compilation cache (default: on, in $JAXREG_CACHE_DIR or "
        "~/.cache/jaxreg/jax; JAXREG_CACHE_DIR='' turns it off too)",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    pi = sub.add_parser(
        "info",
        help="print the geometry and value range of an image (NIfTI, MGH, NRRD, MetaImage, DICOM)",
        description="Print shape, spacing (mm), orientation codes, origin, the 4x4 voxel-to-world "
        "affine, dtype, value range and (integer images) the number of distinct labels.",
    )
    pi.add_argument("image", metavar="IMAGE", help="an image file (.nii/.nii.gz, .mgz/.mgh, .nrrd, .mha/.mhd) or a DICOM folder")
    pi.add_argument("--json", action="store_true", help="print a JSON object instead of text")
    pi.set_defaults(func=cmd_info)

    pa = sub.add_parser(
        "apply",
        help="warp an image through transform files (ANTs/ITK)",
        description="Resample MOVING on the grid of FIXED through the transforms, like antsApplyTransforms: "
        "with -t T1 -t T2 the moving image is sampled at T2(T1(x)) for each fixed point x (the fixed point goes "
        "through the first listed transform first; the image through the last), so the output of "
        "antsRegistration is applied as -t 1Warp.nii.gz -t 0GenericAffine.mat. Transform files: ANTs/ITK .mat, "
        "ITK .tfm/.txt, ITK HDF5 .h5 (e.g. antsRegistration's Composite.h5), ITK displacement-field NIfTI. OUT is written atomically and never over an input.",
    )
    pa.add_argument(
        "--fixed", "-r", required=True, metavar="F", help="reference image: its grid is the output grid"
    )
    pa.add_argument("--moving", "-i", required=True, metavar="M", help="image to warp")
    pa.add_argument(
        "-t",
        "--transform",
        action="append",
        required=True,
        metavar="T",
        help="transform file, repeatable, in ANTs order; [file,1] uses the inverse (linear only; for a "
        "'jaxreg register' field use its inverse_warp.nii.gz: --fixed MOVING --moving FIXED -t [affine.mat,1] -t "
        "inverse_warp.nii.gz carries fixed-space images into the moving space)",
    )
    pa.add_argument(
        "-o", "--output", required=True, metavar="OUT", help="output image (.nii/.nii.gz, .mgz/.mgh, .nrrd, .mha)"
    )
    pa.add_argument(
        "--interp",
        "-n",
        choices=sorted(_INTERP_ORDER),
        default=None,
        help="interpolation (default linear; nearest on an integer image keeps its labels)",
    )
    pa.add_argument(
        "--labels",
        action="store_true",
        help="the moving image is a label map: nearest neighbour, integer output",
    )
    pa.add_argument(
        "--default-value",
        "-f",
        type=float,
        default=0.0,
        metavar="V",
        help="value outside the moving image (default 0)",
    )
    pq = pa.add_mutually_exclusive_group()
    pq.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    pq.add_argument(
        "--json", action="store_true", help="print one JSON object (output, shape, dtype, transforms, time)"
    )
    pa.set_defaults(func=cmd_apply)

    pd = sub.add_parser(
        "demo",
        help="register the MNI152 template to a known random deformation of itself",
        description="Load the MNI152 T1 template and its tissue masks shipped with nilearn (no download), deform "
        "it by a seeded known transform (random diffeomorphism + affine) with a bias field and noise, register it "
        "back with the default pipeline, print Dice of the grey-matter, white-matter and brain masks before and "
        "after, the error against the known transform (mm), folding and timings, and write fixed.nii.gz, "
        "moving.nii.gz and the 'jaxreg register' outputs (warped.nii.gz, affine.mat, warp.nii.gz, inverse_warp.nii.gz, "
        "report.json, "
        "report.png) into DIR.",
    )
    pd.add_argument(
        "-o", "--output", default="jaxreg_demo", metavar="DIR", help="output folder (default ./jaxreg_demo)"
    )
    pd.add_argument(
        "--seed", type=int, default=0, help="random seed of the known transform, bias and noise (default 0)"
    )
    pd.add_argument(
        "--resolution",
        type=_positive_int,
        default=2,
        metavar="MM",
        help="template voxel size in mm, an integer (default 2; 4 or more for a quick run)",
    )
    pd.add_argument(
        "--max-displacement",
        type=positive_float,
        default=5.0,
        metavar="MM",
        help="largest velocity vector of the known deformation in mm (default 5)",
    )
    pd.add_argument(
        "--smoothness",
        type=positive_float,
        default=12.0,
        metavar="MM",
        help="standard deviation of the Gaussian smoothing the random field, mm (default 12)",
    )
    pd.set_defaults(func=cmd_demo)

    from jaxreg.cli import cohort, evaluate, landmarks, learn, points, register  # subcommands kept in their own modules

    points.add_parser(sub)
    evaluate.add_parser(sub)
    landmarks.add_parser(sub)
    register.add_parser(sub)
    cohort.add_parsers(sub)
    learn.add_parsers(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``jaxreg`` command line with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    0 on success, 2 on a user error (one line ``jaxreg: error: ...`` on stderr), 130 on Ctrl-C.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:  # --help and --version
            return int(e.code or 0) if not isinstance(e.code, str) else 2
        if getattr(args, "func", None) is None:
            print(
                f"{PROG}: error: a command is required: info, apply, apply-points, demo, evaluate, landmarks, register, "
                f"register-many, template, train or predict "
                f"(see '{PROG} --help')",
                file=sys.stderr,
            )
            return 2
        with compilation_cache(cache_dir(no_cache=args.no_cache)):
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (e.g. `jaxreg info --json IMG | head`): stop quietly, as Unix tools do
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 1
    except (ValueError, OSError, ImportError) as e:
        if debug:
            raise
        print(f"{PROG}: error: {one_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
