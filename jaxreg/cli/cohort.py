"""``jaxreg register-many`` and ``jaxreg template``: cohorts of images.

``jaxreg register-many (--csv PAIRS.csv | --fixed F --moving-dir D) -o OUTDIR [--pipeline P] [--quick]
[--config C] [--devices N] [--batch-size N] [--figures]`` registers many pairs batched and sharded over the
local devices (and hosts, from the launcher's environment) with :func:`jaxreg.optimize.cohort.register_pairs`:
``OUTDIR/NAME/`` per pair (the files of ``jaxreg register``), ``OUTDIR/summary.csv``; a second run skips the pairs
already done.

``jaxreg template IMAGES... -o OUTDIR [--iterations N] [--pipeline P] [--config C] [--quick] [--initial T]``
builds an unbiased template with :func:`jaxreg.optimize.template.build_template` (``--pipeline``/``--config``: the
pipeline of each round, as for ``register-many``) and writes ``template.nii.gz``, one ``NAME/`` folder per image
(``affine.mat``, ``warp.nii.gz``: the image's mapping to the template, pull, image -> template space) and
``template.json`` (per iteration: mean |displacement|, sharpness, time).

Both are adapters: they parse, call the library and print. Bad inputs exit with status 2 before anything is
written.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from jaxreg.cli._args import UsageError, argument, int_at_least, non_negative_float

__all__ = ["add_parsers", "run_register_many", "run_template"]

_positive = int_at_least(1)


def add_parsers(subparsers: Any) -> None:
    """Add the ``register-many`` and ``template`` subcommands to ``subparsers``."""
    from jaxreg.cli.register import PRESET_PIPELINES, add_intensity_arguments

    p = subparsers.add_parser(
        "register-many",
        help="register many pairs (a CSV, or one fixed image against a folder), batched over devices",
        description="Register many pairs with one pipeline: pairs on common grids run as one batched (vmapped) "
        "registration, split over all local devices (jax.sharding; over hosts with jax.distributed when the "
        "launcher sets JAX_COORDINATOR_ADDRESS, SLURM or Open MPI). Writes OUTDIR/NAME/ per pair (the files of "
        "'jaxreg register': warped.nii.gz, affine.mat, warp.nii.gz, report.json; with labels warped_labels.nii.gz "
        "and dice.json), each folder atomically (complete or absent), and OUTDIR/summary.csv (Dice, NCC, folding, "
        "SDlogJ, times). A second run skips the pairs already done. Every input is checked before anything is "
        "written.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--csv",
        metavar="F",
        help="CSV of fixed,moving[,fixed_labels,moving_labels[,name]] rows (header optional; paths relative to it)",
    )
    src.add_argument("--fixed", metavar="F", help="one fixed image, registered with every image of --moving-dir")
    p.add_argument("--moving-dir", metavar="D", help="folder of moving images (with --fixed)")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder")
    p.add_argument("--pipeline", choices=PRESET_PIPELINES, default=None, help="named pipeline (default: default)")
    p.add_argument("--config", metavar="TOML", help="pipeline options, as for 'jaxreg register'")
    p.add_argument("--quick", action="store_true", help="one coarse level per stage (previews, tests)")
    add_intensity_arguments(p)
    p.add_argument(
        "--devices", type=_positive, default=None, metavar="N", help="use the first N devices (default: all)"
    )
    p.add_argument(
        "--batch-size", type=_positive, default=None, metavar="N", help="pairs per batched call (default: all)"
    )
    p.add_argument("--figures", action="store_true", help="also write report.png per pair (slower)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_register_many)

    t = subparsers.add_parser(
        "template",
        help="build an unbiased template (atlas) from images",
        description="Build an unbiased template as antsMultivariateTemplateConstruction2 does: start from the mean "
        "of the affinely aligned images (or --initial), then each iteration register every image to the current "
        "template in one batched call, average the warped images, and apply the inverse of the mean velocity "
        "field (the shape update) to the average. Writes OUTDIR/template.nii.gz, OUTDIR/NAME/ per image (affine.mat, "
        "warp.nii.gz: the image's pull mapping from template space) and OUTDIR/template.json (mean |displacement| "
        "of the mappings at the template, sharpness and time per iteration).",
    )
    t.add_argument("images", nargs="+", metavar="IMAGE", help="images (NIfTI), two or more")
    t.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder")
    t.add_argument("--iterations", type=_positive, default=4, metavar="N", help="template iterations (default 4)")
    t.add_argument("--initial", metavar="T", help="initial template (default: mean of the affinely aligned images)")
    t.add_argument(
        "--pipeline",
        choices=PRESET_PIPELINES,
        default=None,
        help="pipeline of each round (default: default, affine -> greedy SVF; 'syn': the greedy SVF alone, for "
        "images already aligned, which averaged to a less biased 3-D template)",
    )
    t.add_argument(
        "--config",
        metavar="TOML",
        help="pipeline options, as for 'jaxreg register' (e.g. [deformable] step_decay = 0; the affine start uses "
        "its [linear] settings)",
    )
    t.add_argument(
        "--sharpen",
        type=non_negative_float,
        default=0.0,
        metavar="AMOUNT",
        help="unsharp-mask amount applied to each new template, as ANTs' template script sharpens its templates "
        "(e.g. 0.5; default 0: none)",
    )
    t.add_argument("--quick", action="store_true", help="coarse levels only (previews, tests)")
    t.add_argument("--devices", type=_positive, default=None, metavar="N", help="use the first N devices")
    t.set_defaults(func=run_template)


def _mesh(n: int | None) -> Any:
    import jax

    from jaxreg.parallel import make_mesh

    devices = jax.devices()
    if n is not None:
        if n > len(devices):
            raise UsageError(f"--devices: {n} requested, {len(devices)} available")
        devices = devices[:n]
    return make_mesh(devices=devices)


def run_register_many(args: argparse.Namespace, *, log: Callable[[str], None] = print) -> int:
    """Run ``jaxreg register-many`` with parsed arguments; returns 0."""
    from jaxreg.cli.register import check_intensity_options, pipeline_options, read_config, stages_from_options
    from jaxreg.optimize.cohort import folder_pairs, read_pairs_csv, register_pairs
    from jaxreg.parallel import initialize_distributed

    t0 = time.perf_counter()
    if args.fixed is not None and args.moving_dir is None:
        raise UsageError("--moving-dir: needed with --fixed")
    if args.csv is not None and args.moving_dir is not None:
        raise UsageError("--moving-dir: only with --fixed, not with --csv")
    if args.config is not None:
        with argument("--config"):
            read_config(args.config)
    if args.csv is not None:
        with argument("--csv"):
            pairs = read_pairs_csv(args.csv)
    else:
        with argument("--fixed/--moving-dir"):
            pairs = folder_pairs(args.fixed, args.moving_dir)
    with argument("-o"):
        if os.path.exists(args.output) and not os.path.isdir(args.output):
            raise ValueError(f"{args.output}: exists and is not a folder")
    with argument("--config"):
        opts = pipeline_options(config=args.config, pipeline=args.pipeline, quick=args.quick)
        stages = stages_from_options(opts)
    check_intensity_options(args, channels=bool(opts.get("channels")), organ=opts["pipeline"] == "organ")
    initialize_distributed()
    mesh = _mesh(args.devices)
    log(f"pairs:      {len(pairs)}; devices: {mesh.devices.size} ({mesh.devices.flat[0].platform})")
    rows = register_pairs(
        pairs,
        args.output,
        method=stages,
        options=opts,
        mesh=mesh if mesh.devices.size > 1 else None,
        batch_size=args.batch_size,
        figure=args.figures,
        progress=not args.no_progress,
        log=log,
        winsorize=args.winsorize,
        histogram_matching=args.histogram_matching,
    )
    _print_summary(rows, log)
    n_new = sum(r["status"] == "registered" for r in rows)
    log(
        f"wrote:      {n_new} folder(s) and summary.csv in {args.output} "
        f"({len(rows) - n_new} skipped); total {time.perf_counter() - t0:.1f} s"
    )
    return 0


def _print_summary(rows: list[dict], log: Callable[[str], None]) -> None:
    def f(v: Any, spec: str) -> str:
        return "-" if v is None or v == "" else format(float(v), spec)

    log(f"{'pair':<32} {'status':<10} {'Dice':>6} {'NCC':>7} {'det<=0 %':>8} {'SDlogJ':>7} {'reg s':>6}")
    for r in rows:
        log(
            f"{r['pair'][:32]:<32} {r['status']:<10} {f(r['mean_dice'], '.3f'):>6} {f(r['ncc'], '.4f'):>7} "
            f"{f(r['percent_folding'], '.3f'):>8} {f(r['sdlogj'], '.3f'):>7} {f(r['registration_s'], '.2f'):>6}"
        )


def run_template(args: argparse.Namespace, *, log: Callable[[str], None] = print) -> int:
    """Run ``jaxreg template`` with parsed arguments; returns 0."""
    import jax.numpy as jnp

    from jaxreg.cli.register import check_intensity_options, pipeline_options, read_config, stages_from_options
    from jaxreg.core.grid import Image
    from jaxreg.io import check_registrable, load_image
    from jaxreg.optimize import PRESETS
    from jaxreg.optimize.template import build_template, write_template
    from jaxreg.parallel import initialize_distributed

    t0 = time.perf_counter()
    if len(args.images) < 2:
        raise UsageError("IMAGE: a template needs two or more images")
    if args.config is not None:
        with argument("--config"):
            read_config(args.config)
    ims = []
    for path in args.images:
        with argument("IMAGE"):
            if not os.path.exists(path):
                raise FileNotFoundError(2, f"{path}: no such file", path)
            im = load_image(path)
            check_registrable(im, name=path)
        ims.append(Image(jnp.asarray(im.data, jnp.float32), im.grid))
    initial = None
    if args.initial is not None:
        with argument("--initial"):
            if not os.path.exists(args.initial):
                raise FileNotFoundError(2, f"{args.initial}: no such file", args.initial)
            im = load_image(args.initial)
            check_registrable(im, name=args.initial)
        initial = Image(jnp.asarray(im.data, jnp.float32), im.grid)
    with argument("-o"):
        out = Path(args.output)
        if out.exists() and not out.is_dir():
            raise ValueError(f"{args.output}: exists and is not a folder")
        inputs = list(args.images) + ([args.initial] if args.initial else [])
        for p in inputs:
            if out.exists() and Path(p).resolve().parent == out.resolve():
                raise ValueError(f"{args.output}: holds the input {p}; write the template elsewhere")
    with argument("IMAGE"):
        if len({im.data.ndim for im in ims}) != 1:
            raise ValueError("the images mix 2-D and 3-D")
    with argument("--config"):
        opts = pipeline_options(config=args.config, pipeline=args.pipeline, quick=args.quick)
        if opts["pipeline"] not in PRESETS:
            raise ValueError(f"pipeline: expected one of {', '.join(PRESETS)} for a template, got {opts['pipeline']!r}")
        stages = stages_from_options(opts)
        affine = stages_from_options({**opts, "pipeline": "affine", "greedy": {}, "similarity": None})
    initialize_distributed()
    mesh = _mesh(args.devices)
    from tqdm import tqdm

    # one bar step per batched registration round: the affine start (unless --initial), then iterations + 1
    rounds = int(args.iterations) + 1 + (initial is None)
    with tqdm(total=rounds, unit="round", desc="template", file=sys.stderr, leave=False, disable=None) as bar:

        def round_log(line: str) -> None:
            bar.update(1)
            log(line)

        result = build_template(
            ims,
            iterations=args.iterations,
            initial=initial,
            method=stages,
            affine_method=affine,
            mesh=mesh if mesh.devices.size > 1 else None,
            log=round_log,
            sharpen=args.sharpen,
        )
    from jaxreg.io._atomic import split_suffix

    names = [split_suffix(p)[0] for p in args.images]  # file names without their image suffix
    write_template(out, result, names=names, inputs=inputs)
    last = result.history[-1]
    log(
        f"template:   {len(ims)} images, {args.iterations} iterations, mean |displacement| at the template "
        f"{last['mean_displacement_mm']:.3f} mm, sharpness {last['sharpness']:.4g}"
    )
    log(f"wrote:      template.nii.gz, template.json and {len(ims)} folders in {args.output}; "
        f"total {time.perf_counter() - t0:.1f} s")  # fmt: skip
    return 0
