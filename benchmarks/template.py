"""Benchmark: unbiased template building (:func:`jaxreg.optimize.template.build_template`) in 2D and 3D, against
an estimate of ANTs' ``antsMultivariateTemplateConstruction2`` time.

* **2D**: the six slices of ``../shared/data/brain2d`` (one 256x256 grid).
* **3D**: T1-like volumes synthesised from the first ``--subjects`` label maps of ``../shared/data/labelmaps``
  at ``--mm`` mm (nearest-neighbour resampling onto subject 1's grid coarsened to that spacing, then every label
  a fixed intensity drawn once for all subjects with :func:`jaxreg.learn.synthesis.synthesize_image`, mildly
  blurred, no bias or noise: one contrast, ten people's anatomy).

jaxreg: the default pipeline (affine -> symmetric greedy SVF; another preset with ``--method``, greedy settings
with ``--greedy``) each round,
``--iterations`` shape updates, cold (JAX caches cleared, compilation included). ANTs: the script runs one SyN registration (with its rigid and affine
stages) per image per iteration; its time is estimated as ANTs' measured per-registration time (``ants.registration``
``SyN``, antspyx defaults, registering images to their plain mean in the same run, the first ``--ants-registrations``
images) times ``(iterations + 1) x N``, the number of deformable registrations jaxreg ran (its affine start not
counted for ANTs: the estimate is low for ANTs, i.e. favours it). Reported: time, the ratio to the ANTs estimate,
mean |displacement| of the mappings at the final template over its foreground (mm; ~0 when unbiased), sharpness.

Usage::

    python benchmarks/template.py [--ants-python benchmarks/.venv-ants/bin/python] [--iterations 4]
        [--method default] [--greedy '{"step_decay": 0}'] [--deformable-levels 4:40,2:20,1:20] [--sharpen 0.5]
        [--subjects 4] [--mm 3] [--only 2d|3d] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, ".."))

import jax
import jax.numpy as jnp
import numpy as np
from batched_2d import DATA as DATA_2D
from batched_2d import SLICES, _clear
from peers import DEFAULT_ANTS_PYTHON, run_worker

from jaxreg.core.grid import Image
from jaxreg.io import load_image, load_labels, save_image
from jaxreg.optimize import Level, preset
from jaxreg.optimize.template import build_template
from jaxreg.parallel import make_mesh
from jaxreg.warp import resample

LABELMAPS = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "data", "labelmaps"))


def images_2d() -> list[Image]:
    ims = [load_image(os.path.join(DATA_2D, f"{s}.nii.gz")) for s in SLICES]
    return [Image(jnp.asarray(im.data, jnp.float32), im.grid) for im in ims]


def images_3d(subjects: int, mm: float) -> list[Image]:
    """T1-like volumes from the label maps at ``mm`` mm, on one grid, one contrast for all."""
    from jaxreg.learn.synthesis import relabel, synthesize_image

    labs = [load_labels(os.path.join(LABELMAPS, f"subj{k:02d}_labels.nii.gz")) for k in range(1, subjects + 1)]
    grid = labs[0].grid.with_spacing(mm)
    coarse = [np.rint(np.asarray(resample(lab, grid, order=0).data)).astype(np.int32) for lab in labs]
    values = np.unique(np.concatenate([np.unique(c) for c in coarse]))
    values = [0] + [int(v) for v in values if v != 0]
    key = jax.random.key(7)  # one draw of label intensities for every subject: one contrast
    out = []
    for c in coarse:
        idx = jnp.asarray(relabel(c, values))
        img = synthesize_image(key, idx, len(values), grid=grid, std_range=(0.0, 0.0), blur_mm_max=0.0,
                               bias_std=0.0, gamma_std=0.0, noise_std_max=0.0)  # fmt: skip
        img = jnp.where(idx > 0, img, 0.0)  # background 0 (the mixture may give it any value)
        out.append(Image(jnp.asarray(img, jnp.float32), grid))
    return out


ANTS_SETTINGS = {
    # antspyx's defaults: Mattes MI, affine then SyN[0.2,3,0] at 40x20x0
    "antspyx SyN": {},
    # what antsMultivariateTemplateConstruction2.sh runs per image and iteration by default (-m CC[4],
    # -t SyN[0.1,3,0], -q 100x100x70x20, -s 3x2x1x0), after antspyx's affine stage
    "template script (CC, 100x100x70x20)": {
        "syn_metric": "CC", "syn_sampling": 4, "reg_iterations": [100, 100, 70, 20], "grad_step": 0.1,
    },
}  # fmt: skip


def ants_seconds(
    python: str, images: list[Image], k: int, threads: int, work: str, options: dict
) -> tuple[float, list[float], float]:
    """ANTs SyN per-registration time (wall seconds: mean and each; mean CPU seconds): the first ``k`` images registered to their plain mean (files in ``work``)."""
    mean = Image(jnp.mean(jnp.stack([im.data for im in images]), axis=0), images[0].grid)
    save_image(mean, os.path.join(work, "mean.nii.gz"))
    tasks = []
    for i in range(k):
        p = os.path.join(work, f"im{i}.nii.gz")
        save_image(images[i], p)
        out = os.path.join(work, f"ants_{i}")
        os.makedirs(out)
        tasks.append({"tool": "ants", "type": "SyN", "fixed": os.path.join(work, "mean.nii.gz"), "moving": p,
                      "labels": None, "multimodal": False, "ndim": images[0].grid.ndim, "threads": threads,
                      "out": out, "seed": None, "options": options})  # fmt: skip
    results = run_worker(python, tasks, work, threads, print)
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        raise RuntimeError(f"ANTs failed: {errors[0]}")
    secs = [float(r["seconds"]) for r in results]
    return float(np.mean(secs)), secs, float(np.mean([float(r["cpu_seconds"]) for r in results]))


def run_case(name: str, images: list[Image], args, python: str | None) -> dict:
    n = len(images)
    print(f"{name}: {n} images of {'x'.join(map(str, images[0].grid.shape))} voxels "
          f"({'x'.join(f'{s:g}' for s in images[0].grid.spacing)} mm), {args.iterations} iterations", flush=True)  # fmt: skip
    _clear()
    t0, c0 = time.perf_counter(), time.process_time()
    greedy = json.loads(args.greedy)
    levels = None
    if args.deformable_levels:
        levels = [Level(int(a), 0.0, int(b)) for a, b in (x.split(":") for x in args.deformable_levels.split(","))]
    method = preset(args.method, greedy=greedy or None, deformable_levels=levels) if greedy or levels else args.method
    res = build_template(images, iterations=args.iterations, method=method, sharpen=args.sharpen, mesh=None,
                         log=lambda s: print("  " + s, flush=True))  # fmt: skip
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    deformable = (args.iterations + 1) * n
    row = {"case": name, "method": args.method, "greedy": greedy, "deformable_levels": args.deformable_levels,
           "sharpen": args.sharpen, "images": n, "shape": list(images[0].grid.shape),
           "spacing_mm": [float(s) for s in images[0].grid.spacing], "iterations": args.iterations,
           "seconds": wall, "cpu_seconds": cpu, "registrations": res.registrations,
           "deformable_registrations": deformable, "history": res.history,
           "mean_displacement_mm": res.history[-1]["mean_displacement_mm"],
           "max_displacement_mm": res.history[-1]["max_displacement_mm"],
           "sharpness": res.history[-1]["sharpness"], "sharpness_plain_mean": res.history[0]["sharpness"],
           "ants": {}}  # fmt: skip
    print(f"  jaxreg: {wall:.1f} s ({cpu:.1f} s CPU), {res.registrations} registrations, mean |displacement| "
          f"{row['mean_displacement_mm']:.3f} mm", flush=True)  # fmt: skip
    if python is not None:
        k = max(1, min(args.ants_registrations, n))
        row["ants"] = {}
        for label, options in ANTS_SETTINGS.items():
            if args.ants_settings != "both" and not label.startswith(args.ants_settings):
                continue
            work = tempfile.mkdtemp(prefix="jaxreg_template_ants_")
            try:
                per, secs, per_cpu = ants_seconds(python, images, k, args.threads, work, options)
            except RuntimeError as e:
                print(f"  {e}")
                continue
            finally:
                shutil.rmtree(work, ignore_errors=True)
            est = per * deformable
            row["ants"][label] = {"per_registration_s": per, "seconds": secs, "estimate_s": est, "ratio": wall / est,
                                  "cpu_per_registration_s": per_cpu, "cpu_ratio": cpu / (per_cpu * deformable)}
            print(f"  ANTs {label}: {per:.1f} s per registration ({k} measured) x {deformable} = {est:.0f} s; "
                  f"jaxreg/ANTs {wall / est:.3f}", flush=True)  # fmt: skip
    return row


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ants-python", default=None, help=f"python of the peers' venv (default {DEFAULT_ANTS_PYTHON})")
    ap.add_argument("--ants-registrations", type=int, default=2, help="ANTs SyN registrations timed per case")
    ap.add_argument("--threads", type=int, default=2, help="ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS of ANTs")
    ap.add_argument("--ants-settings", choices=("both", "antspyx", "template"), default="both",
                    help="ANTs settings timed: antspyx's SyN defaults, the template script's, or both")  # fmt: skip
    ap.add_argument("--iterations", type=int, default=4, help="template iterations (shape updates)")
    ap.add_argument("--method", default="default", help="pipeline of each round (a jaxreg.optimize.PRESETS name)")
    ap.add_argument("--greedy", default="{}", help="greedy-stage settings of each round, JSON: '{\"step_decay\": 0}'")
    ap.add_argument("--deformable-levels", default=None,
                    help="shrink:iterations of the greedy stage's levels, e.g. 4:40,2:20,1:20 (default: the preset's)")
    ap.add_argument("--sharpen", type=float, default=0.0,
                    help="unsharp-mask amount applied to each new template (ANTs' script -A 2: 0.5; 0: none)")
    ap.add_argument("--subjects", type=int, default=4, help="label maps synthesised for the 3D case")
    ap.add_argument("--mm", type=float, default=3.0, help="voxel size of the 3D case, mm")
    ap.add_argument("--only", choices=("2d", "3d"), default=None, help="one case only")
    ap.add_argument("--json", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    python = args.ants_python or (DEFAULT_ANTS_PYTHON if os.path.exists(DEFAULT_ANTS_PYTHON) else None)
    rows = []
    load_before = os.getloadavg()
    if args.only in (None, "2d"):
        rows.append(run_case("2D brain2d", images_2d(), args, python))
    if args.only in (None, "3d"):
        rows.append(run_case(f"3D labelmaps at {args.mm:g} mm", images_3d(args.subjects, args.mm), args, python))
    load_after = os.getloadavg()

    def f(v, spec):
        return "-" if v is None else format(v, spec)

    print(f"\njax {jax.__version__} ({jax.default_backend()}, {os.cpu_count()} CPUs, {make_mesh().devices.size} "
          f"device(s)); ANTs on {args.threads} ITK threads; load average before {load_before[0]:.1f}, after "
          f"{load_after[0]:.1f}\n")  # fmt: skip
    head = ["case", "images", "iterations", "jaxreg s", "CPU s", "ANTs settings", "ANTs s/reg", "ANTs estimate s",
            "jaxreg/ANTs", "CPU jaxreg/ANTs", "mean |u| mm", "max |u| mm", "sharpness"]  # fmt: skip
    body = []
    for r in rows:
        for label, a in (r["ants"].items() or [("-", None)]):
            body.append([r["case"], str(r["images"]), str(r["iterations"]), f(r["seconds"], ".1f"),
                         f(r["cpu_seconds"], ".1f"), label, f(a and a["per_registration_s"], ".1f"),
                         f(a and a["estimate_s"], ".0f"), f(a and a["ratio"], ".3f"),
                         f(a and a["cpu_ratio"], ".3f"), f(r["mean_displacement_mm"], ".3f"),
                         f(r["max_displacement_mm"], ".2f"), f(r["sharpness"], ".4f")])  # fmt: skip
    width = [max(len(x[i]) for x in [head] + body) for i in range(len(head))]
    for cells in [head, ["-" * w for w in width]] + body:
        print("| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, width))) + " |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"rows": rows, "load_before": load_before, "load_after": load_after, "jax": jax.__version__},
                      fh, indent=1)  # fmt: skip
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
