"""Benchmark: how well ``inverse_warp.nii.gz`` inverts ``warp.nii.gz`` on the shared real images, next to ANTs SyN.

For each dataset and pipeline, ``jaxreg register FIXED MOVING -o DIR --pipeline P`` runs in this process (the
command-line code path) and the table reports:

* ``method``, ``mean``/``max`` of the inverse-consistency error ``|u(x + u_inv(x)) + u_inv(x)|`` in mm over the fixed
  grid (``report.json["inverse_warp"]``, :func:`jaxreg.evaluation.inverse_consistency_error`) and the voxels left
  out because ``x + u_inv(x)`` leaves the grid;
* the same error of the relaxed fixed-point inverse of ``warp.nii.gz`` read back (``fixed-point`` column; for the
  velocity-field pipelines this is the alternative to ``exp(-v)``) and its warm time;
* both directions on the data: brain3d (subj2 onto subj1): mean Dice over the 30 structures of ``labels.json`` of
  the moving aseg carried onto the fixed grid (forward, ``-t warp -t affine``) and of the fixed aseg carried onto
  the moving grid (inverse, ``-t [affine,1] -t inverse_warp``); brain2d (r64 onto r16): NCC of the fixed slice and
  the warped moving slice, and of the moving slice and the fixed slice carried into the moving space.
* ANTs SyN (antspyx, when ``--ants-python`` or ``benchmarks/.venv-ants`` exists): the same error of its
  ``1Warp.nii.gz``/``1InverseWarp.nii.gz`` pair, measured by the same jaxreg function, and the same two-direction
  Dice/NCC through its files (``-t [0GenericAffine.mat,1] -t 1InverseWarp.nii.gz``).

Usage::

    python benchmarks/inverse.py [--datasets brain2d brain3d] [--pipelines default bspline dense]
        [--ants-python PATH] [--no-ants] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import peers  # noqa: E402  (the peers' subprocess driver: ANTs runs in its own venv)

DATA = peers.DATA


def _pairs(ds: str) -> dict:
    d = os.path.join(DATA, ds)
    if ds == "brain2d":
        return {"fixed": os.path.join(d, "r16.nii.gz"), "moving": os.path.join(d, "r64.nii.gz")}
    with open(os.path.join(d, "labels.json")) as fh:
        labels = json.load(fh)["eval_labels"]
    return {
        "fixed": os.path.join(d, "subj1_t1.nii.gz"),
        "moving": os.path.join(d, "subj2_t1.nii.gz"),
        "fixed_labels": os.path.join(d, "subj1_aseg.nii.gz"),
        "moving_labels": os.path.join(d, "subj2_aseg.nii.gz"),
        "labels": labels,
    }


def _both_directions(pair: dict, forward: list, inverse: list) -> dict:
    """Dice (labels) or NCC (images) of the forward and the inverse chain, files read by jaxreg.io."""
    import numpy as np

    from jaxreg.evaluation import overlap
    from jaxreg.evaluation.report import _ncc
    from jaxreg.io import compose_files, load_image, load_labels
    from jaxreg.warp import warp, warp_labels

    fwd = compose_files([p for p, _ in forward], invert=[i for _, i in forward])
    inv = compose_files([p for p, _ in inverse], invert=[i for _, i in inverse])
    fixed, moving = load_image(pair["fixed"]), load_image(pair["moving"])
    if "labels" in pair:
        fl, ml = load_labels(pair["fixed_labels"]), load_labels(pair["moving_labels"])
        d_f = overlap(fl.data, warp_labels(ml, fwd, fl.grid).data, labels=pair["labels"]).dice
        d_i = overlap(ml.data, warp_labels(fl, inv, ml.grid).data, labels=pair["labels"]).dice
        return {"forward": float(np.nanmean(np.asarray(d_f))), "inverse": float(np.nanmean(np.asarray(d_i)))}
    a = _ncc(np.asarray(fixed.data), np.asarray(warp(moving, fwd, fixed.grid).data), None)
    b = _ncc(np.asarray(moving.data), np.asarray(warp(fixed, inv, moving.grid).data), None)
    return {"forward": a, "inverse": b}


def _consistency(warp_path: str, inverse_path: str) -> dict:
    from jaxreg.evaluation import inverse_consistency_error
    from jaxreg.io import read_transform

    f, i = read_transform(warp_path), read_transform(inverse_path)
    ic = inverse_consistency_error(f, i, f.grid)
    return {"mean_mm": ic.mean, "max_mm": ic.max, "num_outside": ic.num_outside}


def _fixed_point(warp_path: str) -> dict:
    import jax

    from jaxreg.evaluation import inverse_consistency_error
    from jaxreg.io import read_transform
    from jaxreg.transforms import inverse_displacement

    f = read_transform(warp_path)
    fn = jax.jit(inverse_displacement, static_argnums=1)
    jax.block_until_ready(fn(f, f.grid))
    t0 = time.perf_counter()
    inv = jax.block_until_ready(fn(f, f.grid))
    seconds = time.perf_counter() - t0
    ic = inverse_consistency_error(f, inv, f.grid)
    return {"mean_mm": ic.mean, "max_mm": ic.max, "seconds": seconds}


def run_jaxreg(ds: str, pipeline: str, work: str, log) -> dict:
    from jaxreg.cli.main import main

    pair = _pairs(ds)
    out = os.path.join(work, f"{ds}_{pipeline}")
    argv = ["register", pair["fixed"], pair["moving"], "-o", out, "--pipeline", pipeline]
    if "labels" in pair:
        argv += ["--labels", pair["fixed_labels"], pair["moving_labels"], "--label-list"]
        argv += [str(v) for v in pair["labels"]]
    t0 = time.perf_counter()
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(argv)
    if rc != 0:
        raise RuntimeError(f"jaxreg register failed ({rc}): {buf.getvalue()[-500:]}")
    seconds = time.perf_counter() - t0
    rep = json.load(open(os.path.join(out, "report.json")))
    inv = dict(rep["inverse_warp"])
    row = {"dataset": ds, "method": f"jaxreg {pipeline}", "seconds": seconds, "inverse_method": inv.pop("method")}
    row.update(inv)
    row["fixed_point"] = _fixed_point(os.path.join(out, "warp.nii.gz"))
    row.update(
        _both_directions(
            pair,
            [(os.path.join(out, "warp.nii.gz"), False), (os.path.join(out, "affine.mat"), False)],
            [(os.path.join(out, "affine.mat"), True), (os.path.join(out, "inverse_warp.nii.gz"), False)],
        )
    )
    log(f"  {row['method']}: {json.dumps({k: v for k, v in row.items() if k not in ('dataset', 'method')})}")
    return row


def run_ants(ds: str, python: str, work: str, log) -> dict:
    pair = _pairs(ds)
    out = os.path.join(work, f"{ds}_ants")
    task = {"tool": "ants", "type": "SyN", "fixed": pair["fixed"], "moving": pair["moving"], "out": out,
            "multimodal": False, "seed": 1}  # fmt: skip
    res = peers.run_worker(python, [task], work, 2, log)[0]
    if "error" in res:
        raise RuntimeError(res["error"])
    fwd = res["transforms"]  # [1Warp.nii.gz, 0GenericAffine.mat]
    warp_path, affine = fwd[0], fwd[1]
    inv_path = warp_path.replace("1Warp.nii.gz", "1InverseWarp.nii.gz")
    row = {"dataset": ds, "method": "ANTs SyN", "seconds": res["seconds"], "inverse_method": "1InverseWarp"}
    row.update(_consistency(warp_path, inv_path))
    row.update(_both_directions(pair, [(warp_path, False), (affine, False)], [(affine, True), (inv_path, False)]))
    log(f"  ANTs SyN: {json.dumps({k: v for k, v in row.items() if k not in ('dataset', 'method')})}")
    return row


def _table(rows: list) -> str:
    head = (
        f"{'dataset':<8} {'method':<16} {'inverse':<12} {'mean mm':>8} {'max mm':>8} {'outside':>7} "
        f"{'fixed-pt mean/max mm':>21} {'fwd':>6} {'inv':>6} {'time s':>7}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        fp = r.get("fixed_point")
        fps = f"{fp['mean_mm']:.2e}/{fp['max_mm']:.2e}" if fp else "-"
        lines.append(
            f"{r['dataset']:<8} {r['method']:<16} {r['inverse_method']:<12} {r['mean_mm']:>8.4f} {r['max_mm']:>8.4f} "
            f"{r.get('num_outside', 0):>7} {fps:>21} {r['forward']:>6.3f} {r['inverse']:>6.3f} {r['seconds']:>7.1f}"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["brain2d"], choices=["brain2d", "brain3d"])
    ap.add_argument("--pipelines", nargs="+", default=["default", "bspline", "dense"])
    ap.add_argument("--ants-python", default=peers.DEFAULT_ANTS_PYTHON)
    ap.add_argument("--no-ants", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    os.environ.setdefault("JAXREG_CACHE_DIR", "")
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for ds in args.datasets:
            print(f"{ds}:", flush=True)
            for p in args.pipelines:
                rows.append(run_jaxreg(ds, p, work, print))
            if not args.no_ants and os.path.exists(args.ants_python):
                rows.append(run_ants(ds, args.ants_python, work, print))
    print(_table(rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
