"""Before/after benchmark of the registration API (issue 10): accuracy, wall time, recompilation, robust starts.

Runs the same cases with an earlier revision of jaxreg (extracted with ``git archive`` into a temporary folder,
imported in a subprocess) and with the working tree (another subprocess), in one run, so the ratios are fair on
a loaded machine. Each case runs in a fresh process (cold compilation, no persistent cache), one after the other.

Cases:

* ``brain3d``: ``../shared/data/brain3d`` subj2 -> subj1 with the default pipeline (affine -> symmetric greedy
  SVF): mean Dice over the 30 labels of ``labels.json``, % of det J <= 0, SDlogJ, wall time (compilation
  included) of the registration call.
* ``recompile``: brain2d r64 -> r16, a gradient method (LNCC window 5, Adam 1e-2, 30 iterations at shrink 2) on
  an affine, called twice with freshly built but equal configuration objects: the second call's wall time.
* ``pelvis_start``: the pelvis CT and a synthetic "MR" of it (a monotone-free intensity remapping of the CT's
  tissues, rotated 2 degrees, shifted 3 mm, cropped to another field of view): the multi-modal pipeline's affine
  stage (Mattes MI) from the default start; mean error (mm) of the mapping inside the body against the truth.

Usage::

    python benchmarks/api_regression.py                       # before = ec1c698 (main before issue 10)
    python benchmarks/api_regression.py --before REV --cases brain3d recompile
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.normpath(os.path.join(ROOT, "..", "shared", "data"))
CASES = ("brain3d", "recompile", "pelvis_start")


# -- the worker (runs inside the subprocess with either revision on sys.path) ----------------------------------
def _new_api() -> bool:
    import jaxreg.optimize as jo

    return not hasattr(jo, "register_many")


def _register_default(fixed, moving):
    if _new_api():
        from jaxreg.optimize import register

        r = register(fixed, moving, method="default")
        return r.transform, r.deformable, r.stages[0].start
    from jaxreg.optimize.pipelines import register_pair

    r = register_pair(fixed, moving)
    return r.transform, r.deformable, "moments"


def case_brain3d() -> dict:
    import numpy as np

    import jaxreg as jr
    from jaxreg.evaluation import dice, jacobian_statistics
    from jaxreg.io import load_image, load_labels

    d = os.path.join(DATA, "brain3d")
    labels = json.load(open(os.path.join(d, "labels.json")))["eval_labels"]
    fixed, moving = load_image(os.path.join(d, "subj1_t1.nii.gz")), load_image(os.path.join(d, "subj2_t1.nii.gz"))
    fl, ml = load_labels(os.path.join(d, "subj1_aseg.nii.gz")), load_labels(os.path.join(d, "subj2_aseg.nii.gz"))
    t0 = time.perf_counter()
    transform, deformable, start = _register_default(fixed, moving)
    jr.warp(moving, transform, fixed.grid).data.block_until_ready()
    seconds = time.perf_counter() - t0
    w = jr.warp_labels(ml, transform, fixed.grid).data
    dsc = float(np.nanmean(np.asarray(dice(fl.data, w, labels=labels))))
    st = jacobian_statistics(deformable, fixed.grid)
    return {"dice": dsc, "folding_pct": 100 * float(st.fraction_nonpositive), "sdlogj": float(st.std_log),
            "seconds": seconds, "start": start}


def case_recompile() -> dict:
    import jax.numpy as jnp

    from jaxreg.io import load_image
    from jaxreg.optimize import Level, objective, similarity_term
    from jaxreg.similarity import lncc
    from jaxreg.transforms import Affine

    d = os.path.join(DATA, "brain2d")
    fixed, moving = load_image(os.path.join(d, "r16.nii.gz")), load_image(os.path.join(d, "r64.nii.gz"))
    center = jnp.asarray(fixed.grid.center, jnp.float32)

    def once() -> float:
        t0 = time.perf_counter()
        obj = objective(similarity_term(lncc(5)))
        if _new_api():
            from jaxreg.optimize import Gradient, Optimizer, register

            r = register(fixed, moving, method=Gradient(obj, Optimizer("adam", 1e-2)), transform=Affine.identity(2, center=center),
                         levels=(Level(2, 0.0, 30),))
        else:
            import optax

            from jaxreg.optimize import register

            r = register(fixed, moving, Affine.identity(2, center=center), objective=obj, optimizer=optax.adam(1e-2),
                         levels=(Level(2, 0.0, 30),))
        r.transform.matrix.block_until_ready()
        return time.perf_counter() - t0

    first = once()
    second = once()
    return {"first_seconds": first, "second_seconds": second}


def _synthetic_mr():
    """The pelvis CT, its body mask, a synthetic MR-like image of it on a cropped grid, and the true transform."""
    import jax.numpy as jnp
    import numpy as np

    import jaxreg as jr
    from jaxreg.io import load_image
    from jaxreg.transforms import Rigid, invert

    ct = load_image(os.path.join(DATA, "pelvis_ct", "ct.nii.gz"), dtype="float32")
    hu = np.asarray(ct.data)
    # tissue classes of the CT -> MR-like intensities (fat bright, muscle/organs grey, bone and air dark)
    mr = np.interp(hu, [-1000, -400, -150, -60, 0, 60, 200, 600, 2000], [0.0, 0.02, 0.95, 0.9, 0.45, 0.55, 0.3, 0.1, 0.05])
    body = hu > -400
    n = ct.grid.ndim
    center = jnp.asarray(ct.grid.center, jnp.float32)
    truth = Rigid(jnp.asarray(np.deg2rad([2.0, -1.0, 1.5]), jnp.float32), jnp.asarray([3.0, -2.0, 1.5], jnp.float32), center)
    # the daily MR covers another field of view: 25 % less at one end along the first and last axes
    sh = np.asarray(ct.grid.shape)
    crop = (int(0.75 * sh[0]), sh[1], int(0.75 * sh[2]))
    aff = np.asarray(ct.grid.affine).copy()
    aff[:n, n] += aff[:n, :n] @ np.asarray([0.25 * sh[0], 0.0, 0.0])
    mgrid = jr.Grid(crop, aff)
    moving = jr.warp(jr.Image(jnp.asarray(mr, jnp.float32), ct.grid), invert(truth), mgrid)  # moving(truth(x)) = mr(x)
    return jr.Image(jnp.asarray(np.clip((hu + 1000) / 2000, 0, 1), jnp.float32), ct.grid), moving, truth, body


def case_pelvis_start() -> dict:
    import numpy as np

    fixed, moving, truth, body = _synthetic_mr()
    t0 = time.perf_counter()
    if _new_api():
        from jaxreg.optimize import preset, register

        r = register(fixed, moving, method=preset("multimodal")[:1])
        transform, start = r.transform, r.stages[0].start
    else:
        from jaxreg.optimize.pipelines import register_linear

        transform, start = register_linear(fixed, moving, metric="mi").transform, "moments"
    seconds = time.perf_counter() - t0
    pts = np.asarray(fixed.grid.world_coords())[body]
    err = np.linalg.norm(np.asarray(transform(pts)) - np.asarray(truth(pts)), axis=-1)
    return {"error_mm": float(err.mean()), "start": start, "seconds": seconds}


def worker(case: str) -> None:
    out = globals()[f"case_{case}"]()
    print("RESULT " + json.dumps(out))


# -- the driver -------------------------------------------------------------------------------------------------
def _run(src: str, case: str) -> dict:
    env = dict(os.environ, PYTHONPATH=src, JAXREG_CACHE_DIR="")
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", case], env=env, capture_output=True, text=True, cwd=src)
    wall = time.perf_counter() - t0
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            out = json.loads(line[7:])
            out["process_seconds"] = wall
            return out
    return {"error": (p.stderr or p.stdout).strip().splitlines()[-1:] or ["no output"]}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default="ec1c698", help="git revision of the 'before' column (default: main before issue 10)")
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker)
        return
    if not os.path.isdir(DATA):
        sys.exit(f"shared data folder {DATA} not found")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        before = os.path.join(tmp, "before")
        os.makedirs(before)
        archive = subprocess.run(["git", "-C", ROOT, "archive", args.before], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", before], input=archive, check=True)
        for case in args.cases:
            for label, src in (("before", before), ("after", ROOT)):
                res = _run(src, case)
                print(f"{case:13s} {label:6s} {json.dumps(res)}", flush=True)
                rows.append((case, label, res))
    print()
    print(f"| case | revision | {'metric':24s} | value |")
    print("| --- | --- | --- | --- |")
    for case, label, res in rows:
        for k, v in res.items():
            print(f"| {case} | {label} | {k:24s} | {v:.4g} |" if isinstance(v, float) else f"| {case} | {label} | {k:24s} | {v} |")
    by = {(c, lab): r for c, lab, r in rows}
    print()
    for case, key in (("brain3d", "seconds"), ("recompile", "second_seconds"), ("pelvis_start", "error_mm")):
        b, a = by.get((case, "before"), {}), by.get((case, "after"), {})
        if key in b and key in a and b[key]:
            print(f"{case}: after/before {key} = {a[key] / b[key]:.3f}")


if __name__ == "__main__":
    main()
