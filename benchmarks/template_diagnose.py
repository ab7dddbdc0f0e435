"""Diagnosis of the residual mean displacement of a template's mappings (:mod:`jaxreg.optimize.template`).

Builds the 3D template of ``benchmarks/template.py`` (label maps synthesised at ``--mm`` mm) and then asks where
the residual ``mean_x |mean_i u_i(x)|`` of the fresh mappings at the final template comes from. With
``u_bar = mean_i u_i`` (world mm, on the template grid) and ``psi = id + u_bar``:

1. **update exact?** the inverse residual ``|psi(psi^-1(x)) - x|`` of the shape update's inverse;
2. **affine?** ``u_bar`` split into its least-squares affine fit and the rest, and the mean of the linear stages;
3. **where?** ``|u_bar|`` by depth inside the template foreground (the domain of the figure);
4. **persistent or noise?** one more shape update ``T' = A o psi^-1`` (``A`` the mean of the warped images),
   fresh registrations to ``T'``: their ``|u_bar'|``, the cosine between ``u_bar'`` and ``u_bar`` and the
   regression coefficient of ``u_bar'`` on ``u_bar`` (0: the update removed it; 1: it came back unchanged);
5. **equivariance**: the subjects registered to the template itself deformed, ``T o psi^-1``: an equivariant
   registration returns ``phi_i o psi^-1``, whose mean displacement is 0 (regression coefficient 0);
6. **precision**: the template registered to ``T o psi^-1`` (one pair of identical content): the fraction of the
   known deformation ``psi^-1`` recovered (regression coefficient, 1 = all) and the mean error (mm).

Usage::

    python benchmarks/template_diagnose.py [--subjects 4] [--mm 3] [--iterations 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, ".."))

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage
from template import images_3d

from jaxreg.core.grid import Image
from jaxreg.optimize import register
from jaxreg.optimize.template import build_template
from jaxreg.transforms import DisplacementField, LinearTransform, invert
from jaxreg.warp import warp


def _disp(transforms, grid) -> np.ndarray:
    return np.asarray(jax.vmap(lambda t: t.sample_displacement(grid))(transforms))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--subjects", type=int, default=4, help="label maps synthesised")
    ap.add_argument("--mm", type=float, default=3.0, help="voxel size, mm")
    ap.add_argument("--iterations", type=int, default=3, help="shape updates of the template")
    ap.add_argument("--json", default=None, help="write the figures as JSON here")
    args = ap.parse_args(argv)
    t_all = time.perf_counter()
    images = images_3d(args.subjects, args.mm)
    grid = images[0].grid
    stack = jnp.stack([im.data for im in images])
    res = build_template(images, iterations=args.iterations, log=lambda s: print("  " + s, flush=True))
    tpl = res.template
    t = np.asarray(tpl.data)
    fg = t > 0.1 * t.max()
    u = _disp(res.transforms, grid)
    ub = u.mean(0)
    norm = lambda f, m=fg: float(np.linalg.norm(f, axis=-1)[m].mean())
    out: dict = {
        "subjects": args.subjects,
        "mm": args.mm,
        "iterations": args.iterations,
        "history": res.history,
    }
    out["mean_displacement_mm"] = norm(ub)
    print(f"mappings at the final template: mean |u_bar| {norm(ub):.3f} mm", flush=True)

    # 1. the shape update's inverse
    psi = DisplacementField(jnp.asarray(ub), grid)
    ipsi = invert(psi)
    pts = np.asarray(grid.index_to_world(jnp.asarray(np.stack(np.indices(grid.shape), -1), jnp.float32)))
    back = np.asarray(psi(ipsi(jnp.asarray(pts)))) - pts
    out["inverse_residual_mm"] = norm(back)
    # 2. affine part
    idx = np.stack(np.nonzero(fg), -1).astype(np.float64)
    design = np.c_[idx, np.ones(len(idx))]
    coef, *_ = np.linalg.lstsq(design, ub[fg], rcond=None)
    fit = design @ coef
    lin = [m for m in res.transforms.transforms if isinstance(m, LinearTransform)]
    out["affine_fit_mm"] = float(np.linalg.norm(fit, axis=-1).mean())
    out["non_affine_mm"] = float(np.linalg.norm(ub[fg] - fit, axis=-1).mean())
    out["mean_linear_stage_mm"] = norm(_disp(lin[0], grid).mean(0)) if lin else 0.0
    # 3. by depth in the foreground
    depth = ndimage.distance_transform_edt(fg)
    out["by_depth"] = {
        f"{lo}-{hi} voxels": [float(np.mean((fg & (depth > lo) & (depth <= hi))[fg])), norm(ub, fg & (depth > lo) & (depth <= hi))]
        for lo, hi in ((0, 2), (2, 5), (5, 10), (10, 999))
    }  # fmt: skip
    print(f"1. inverse residual {out['inverse_residual_mm']:.4f} mm; 2. affine fit {out['affine_fit_mm']:.3f} mm, "
          f"rest {out['non_affine_mm']:.3f} mm, mean linear stage {out['mean_linear_stage_mm']:.3f} mm; "
          f"3. by depth (share of foreground, mm) {out['by_depth']}", flush=True)  # fmt: skip

    def regress(new):
        return float((new[fg] * ub[fg]).sum() / (ub[fg] ** 2).sum())

    def cosine(new):
        return float((new[fg] * ub[fg]).sum() / np.sqrt((new[fg] ** 2).sum() * (ub[fg] ** 2).sum()))

    n = len(images)
    # 4. one more shape update, fresh registrations
    warped = jax.vmap(lambda m, tr: warp(Image(m, grid), tr, grid).data)(stack, res.transforms)
    t_next = warp(Image(jnp.mean(warped, 0), grid), ipsi, grid)
    ub4 = _disp(register([t_next] * n, images).transform, grid).mean(0)
    out["next_update"] = {"mean_mm": norm(ub4), "cosine": cosine(ub4), "regression": regress(ub4)}
    print(f"4. after one more update: mean |u_bar'| {norm(ub4):.3f} mm, cosine {cosine(ub4):.3f}, "
          f"regression {regress(ub4):.3f}", flush=True)  # fmt: skip
    # 5. equivariance: the template itself deformed by psi^-1
    t_def = warp(tpl, ipsi, grid)
    ub5 = _disp(register([t_def] * n, images).transform, grid).mean(0)
    out["equivariance"] = {"mean_mm": norm(ub5), "regression": regress(ub5)}
    print(f"5. subjects to T o psi^-1: mean |u_bar| {norm(ub5):.3f} mm, regression {regress(ub5):.3f} "
          f"(equivariant: 0)", flush=True)  # fmt: skip
    # 6. precision: T to T o psi^-1
    truth = np.asarray(ipsi.sample_displacement(grid))
    found = np.asarray(register(t_def, tpl).transform.sample_displacement(grid))
    rec = float((found[fg] * truth[fg]).sum() / (truth[fg] ** 2).sum())
    out["precision"] = {"truth_mm": norm(truth), "error_mm": norm(found - truth), "recovered": rec}
    print(f"6. T registered to T o psi^-1: |psi^-1 - id| {norm(truth):.3f} mm, error {norm(found - truth):.3f} mm, "
          f"fraction recovered {rec:.3f}", flush=True)  # fmt: skip
    out["seconds"] = time.perf_counter() - t_all
    print(f"{out['seconds']:.0f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
