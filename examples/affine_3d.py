"""Rigid, similarity and affine registration of the MNI152 template to a known affine copy of itself.

The demo data of ``jaxreg demo`` without its deformable part: the MNI152 T1 template (shipped with nilearn,
no download) is the fixed image; the moving image is the template pulled through the inverse of a known seeded
affine ``A`` (a few degrees, a few mm, about 5 % scaling; :func:`jaxreg.cli.demo.known_transform` with a zero
velocity field) with a smooth bias field and noise (:func:`jaxreg.cli.demo.make_moving`).
:func:`jaxreg.optimize.register` then fits each model with the linear stage of the ``"affine"`` pipeline
(NCC, its resolution levels without those coarser than 8 mm, :func:`jaxreg.cli.demo.cap_levels`), started
from the principal axes of the image moments (``init="moments"``) and with the stage's model replaced by
:class:`jaxreg.optimize.Linear` ``(model)``. For each the
script prints the NCC after registration, the mean and largest distance ``|T_hat(x) - A(x)|`` (mm) over the
brain mask, the iterations and the time; the affine model should recover ``A`` to a fraction of a voxel, the
rigid and similarity ones cannot represent its anisotropic scaling. The
figure shows the last model's result (:func:`jaxreg.plot.registration_report`).

Usage::

    python examples/affine_3d.py [-o example_out] [--seed 0] [--resolution 2] [--models rigid similarity affine]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import numpy as np

import jaxreg
from jaxreg.cli.demo import cap_levels, known_transform, make_moving
from jaxreg.optimize import DEFAULT_LINEAR_LEVELS, Linear, preset, register
from jaxreg.plot import registration_report, save_figure


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-o", "--output", default="example_out", help="output folder (default ./example_out)")
    p.add_argument("--seed", type=int, default=0, help="seed of the known affine, bias and noise")
    p.add_argument("--resolution", type=int, default=2, help="template voxel size in mm (integer)")
    p.add_argument(
        "--models",
        nargs="+",
        choices=("rigid", "similarity", "affine"),
        default=["rigid", "similarity", "affine"],
    )
    args = p.parse_args()
    try:
        from jaxreg.data import load_mni152, load_mni152_masks

        fixed = load_mni152(args.resolution)
        brain = np.asarray(load_mni152_masks(args.resolution)["brain"].data) > 0
    except ImportError:
        print(
            "skipping: nilearn (which ships the MNI152 template) is not installed: pip install 'jaxreg[demo]'"
        )
        return 0
    g = fixed.grid
    print(f"fixed:   MNI152 T1, {'x'.join(map(str, g.shape))} voxels of {g.spacing[0]:g} mm")

    k_t, k_img = jax.random.split(jax.random.PRNGKey(args.seed))
    truth = known_transform(k_t, g, max_displacement_mm=0.0).transforms[0]  # the affine alone
    moving = make_moving(k_img, fixed, truth)
    m = np.asarray(truth.matrix)
    print(
        f"truth:   A = M (x - c) + c + t, singular values of M {np.linalg.svd(m, compute_uv=False).round(3)}, "
        f"t = {np.asarray(truth.translation).round(2)} mm"
    )

    x = g.world_coords()
    true_pts = np.asarray(truth(x))[brain]
    f = np.asarray(fixed.data, np.float64).ravel()
    print(f"{'model':<11} {'NCC':>7} {'mean err mm':>12} {'max err mm':>11} {'iterations':>11} {'time s':>7}")
    ncc0 = np.corrcoef(f, np.asarray(jaxreg.warp(moving, jaxreg.Affine.identity(3), g).data).ravel())[0, 1]
    err0 = np.linalg.norm(np.asarray(x)[brain] - true_pts, axis=-1)
    print(f"{'(none)':<11} {ncc0:7.4f} {err0.mean():12.3f} {err0.max():11.3f} {'':>11} {'':>7}")
    levels = cap_levels(DEFAULT_LINEAR_LEVELS, args.resolution)  # no level coarser than 8 mm, as in the demo
    # the linear stage of the pipelines (NCC, unit-scaled Adam), from the moments start
    (stage,) = preset("affine", linear_levels=levels, init="moments")
    results = {}
    for model in args.models:
        t0 = time.perf_counter()
        res = register(fixed, moving, method=stage._replace(model=Linear(model), name=model))
        warped = jaxreg.warp(moving, res.transform, g)
        dt = time.perf_counter() - t0
        err = np.linalg.norm(np.asarray(res.transform(x))[brain] - true_pts, axis=-1)
        c = np.corrcoef(f, np.asarray(warped.data).ravel())[0, 1]
        print(f"{model:<11} {c:7.4f} {err.mean():12.3f} {err.max():11.3f} {res.iterations:>11} {dt:7.1f}")
        results[model] = (res, warped)

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    model = args.models[-1]
    res, warped = results[model]
    before = jaxreg.warp(moving, jaxreg.Affine.identity(3), g)
    fig = registration_report(
        fixed,
        before,
        warped,
        losses={model: [lv.loss for lv in res.levels]},
        title=f"register ({model}, NCC) on MNI152 and a known affine copy",
    )
    print(f"figure:  {save_figure(fig, out / 'affine_3d.png', dpi=80)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
