"""Benchmark: value-and-gradient cost of the objective terms relative to one linear warp (forward + backward).

For a float32 image pair of ``--shape`` (default 160x192x224: ``../shared/data/brain3d/subj1_t1.nii.gz`` and a
copy of it warped by a smooth random displacement of ~2 voxels; smooth random volumes if the data is absent or
has another shape), times under ``jax.jit`` (after a warm-up call, median of ``--repeats`` runs,
``block_until_ready``):

* each similarity metric of :mod:`jaxreg.similarity`: ``jax.value_and_grad`` with respect to the moving image;
* each regulariser of :mod:`jaxreg.regularizers` (if importable): ``jax.value_and_grad`` with respect to a
  displacement field ``(*shape, 3)``;
* the reference: ONE linear warp forward + backward,
  ``jax.grad(lambda d: jnp.sum(map_coordinates(img, identity_index + d, order=1) * w))(d)`` with
  :func:`jaxreg.core.map_coordinates`.

Each term is timed alternately with the reference warp, and its ratio is the median of the per-run ratios
(``term / warp``), which is robust to load from other processes on a shared machine; the printed time is the
term's median. Goals (from the objective-terms issue): LNCC (window 9) and MI (32 bins) within 3x of the warp,
SSD, diffusion and bending within 1x.

Usage::

    python benchmarks/terms.py [--shape 160 192 224] [--repeats 5] [--only lncc mi ...]
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from scipy import ndimage as ndi  # noqa: E402

from jaxreg import similarity as sim  # noqa: E402
from jaxreg.core import map_coordinates  # noqa: E402

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "brain3d")


def load_pair(shape, rng):
    """(fixed, moving, source): the subject-1 T1 and a smoothly warped copy, or smooth random volumes."""
    fixed, source = None, None
    path = os.path.join(DATA, "subj1_t1.nii.gz")
    if os.path.exists(path):
        try:
            import nibabel as nib

            img = np.asarray(nib.load(path).dataobj, dtype=np.float32)
            if img.shape == tuple(shape):
                fixed, source = img, "subj1_t1.nii.gz + smoothly warped copy"
        except ImportError:
            pass
    if fixed is None:
        fixed = ndi.gaussian_filter(rng.standard_normal(shape), 2.0)
        fixed = ((fixed - fixed.min()) / (fixed.max() - fixed.min())).astype(np.float32)
        source = "smooth random volume + smoothly warped copy"
    disp = np.stack([ndi.gaussian_filter(rng.standard_normal(shape), 8.0) for _ in shape])
    disp *= 2.0 / disp.std()
    coords = np.indices(shape, dtype=np.float64) + disp
    moving = ndi.map_coordinates(fixed, coords, order=1, mode="nearest").astype(np.float32)
    return fixed, moving, source


def identity_index(shape):
    """Voxel index grid ``(*shape, ndim)`` (traced, so it fuses under jit)."""
    return jnp.stack(jnp.meshgrid(*[jnp.arange(n, dtype=jnp.float32) for n in shape], indexing="ij"), axis=-1)


def similarity_terms():
    """(name, loss(fixed, moving), goal ratio or None)."""
    return [
        ("ssd", sim.ssd, 1.0),
        ("mse", sim.mse, None),
        ("ncc", sim.ncc, None),
        ("lncc (box 9)", sim.lncc(9), 3.0),
        ("lncc (gaussian sigma 2)", sim.lncc(sigma=2.0), None),
        ("mi (32 bins, bspline)", sim.mi(32), 3.0),
        ("nmi (32 bins, bspline)", sim.nmi(32), None),
        ("mi (32 bins, gaussian)", sim.mi(32, kernel="gaussian"), None),
        ("correlation ratio (32)", sim.correlation_ratio(32), None),
        ("ngf", sim.ngf, None),
        ("mind (r2 d2)", sim.mind(2, dilation=2), None),
    ]


def regulariser_terms():
    """(name, loss(displacement), goal ratio or None); missing functions are reported and skipped."""
    try:
        import jaxreg.regularizers as reg
    except Exception as err:  # noqa: BLE001 - written concurrently; any import failure means "skip"
        print(
            f"note: jaxreg.regularizers is not importable ({type(err).__name__}: {err}); regularisers skipped"
        )
        return []
    wanted = [
        ("diffusion", {}, 1.0),
        ("bending", {}, 1.0),
        ("elastic", {"mu": 1.0, "lam": 1.0}, None),
        ("total_variation", {}, None),
        ("folding", {}, None),
        ("log_jacobian", {}, None),
    ]
    out = []
    for name, kw, goal in wanted:
        fn = getattr(reg, name, None)
        if fn is None:
            print(f"note: jaxreg.regularizers.{name} is missing; skipped")
            continue
        out.append((name, functools.partial(fn, spacing=(1.0, 1.0, 1.0), **kw), goal))
    return out


def _similarity_value_and_grad(loss):
    """``(moving, fixed) -> (loss, d loss / d moving)``."""
    return lambda moving, fixed: jax.value_and_grad(lambda m: loss(fixed, m))(moving)


def _regulariser_value_and_grad(reg):
    """``(displacement, _) -> (R, d R / d displacement)``."""
    return lambda disp, _: jax.value_and_grad(reg)(disp)


def compile_call(fn, *args):
    compiled = jax.jit(fn).lower(*args).compile()
    jax.block_until_ready(compiled(*args))  # warm-up
    return compiled


def timed(fn, *args):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - t0


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", type=int, nargs=3, default=[160, 192, 224], metavar=("D", "H", "W"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", nargs="*", default=None, help="substrings of the term names to run")
    args = parser.parse_args(argv)
    shape = tuple(args.shape)
    rng = np.random.default_rng(0)
    fixed_np, moving_np, source = load_pair(shape, rng)
    fixed, moving = jnp.asarray(fixed_np), jnp.asarray(moving_np)
    w = jnp.asarray(rng.standard_normal(shape).astype(np.float32))
    disp = jnp.asarray((0.5 * rng.standard_normal(shape + (3,))).astype(np.float32))
    print(
        f"pair {shape} float32 ({source}); jax {jax.__version__} on {jax.devices()[0].platform}, "
        f"{os.cpu_count()} CPU cores; median of {args.repeats} runs"
    )

    def warp_fwd_bwd(img, w, d):
        return jax.grad(lambda d: jnp.sum(map_coordinates(img, identity_index(shape) + d, order=1) * w))(d)

    warp = compile_call(warp_fwd_bwd, fixed, w, disp)
    warp_times = []

    terms = [(n, "similarity", _similarity_value_and_grad(f), g) for n, f, g in similarity_terms()]
    terms += [(n, "regulariser", _regulariser_value_and_grad(f), g) for n, f, g in regulariser_terms()]
    if args.only:
        terms = [t for t in terms if any(s in t[0] for s in args.only)]

    rows = []
    for name, kind, fn, goal in terms:
        targs = (moving, fixed) if kind == "similarity" else (disp, None)
        try:
            t0 = time.perf_counter()
            compiled = compile_call(fn, *targs)
            compile_s = time.perf_counter() - t0
        except Exception as err:  # noqa: BLE001 - report and go on with the other terms
            print(f"note: {name} failed to compile/run ({type(err).__name__}: {err}); skipped")
            continue
        times, ratios = [], []
        for _ in range(args.repeats):
            tw = timed(warp, fixed, w, disp)
            tt = timed(compiled, *targs)
            warp_times.append(tw)
            times.append(tt)
            ratios.append(tt / tw)
        rows.append((name, statistics.median(times), statistics.median(ratios), goal, compile_s))

    warp_med = statistics.median(warp_times) if warp_times else timed(warp, fixed, w, disp)
    print()
    print(f"reference: linear warp forward+backward (map_coordinates order=1): {warp_med:.3f} s (median)")
    print()
    header = f"{'term':<28}{'time (s)':>10}{'/ warp':>9}{'goal':>7}  {'met?':<5}{'compile (s)':>12}"
    print(header)
    print("-" * len(header))
    for name, t, r, goal, c in rows:
        g = f"{goal:.0f}x" if goal is not None else "-"
        met = "-" if goal is None else ("yes" if r <= goal else "NO")
        print(f"{name:<28}{t:>10.4f}{r:>9.2f}{g:>7}  {met:<5}{c:>12.1f}")


if __name__ == "__main__":
    main()
