"""Benchmark: warping a 3D volume by a dense displacement field (linear interpolation), forward and backward.

Compares, on one float32 volume and two displacement fields in voxels (smooth: Gaussian-smoothed noise with
~3 voxels std; rough: i.i.d. normal with 2 voxels std):

1. ``jaxreg.core.sampling.map_coordinates(img, grid + disp, order=1, mode="constant")`` under ``jax.jit``;
2. the gradient of ``sum(warped * w)`` with respect to the displacement (forward + backward);
3. the same two with ``jax.scipy.ndimage.map_coordinates`` (coordinates first-axis);
4. ``scipy.ndimage.map_coordinates`` (forward, order 1);
5. ``torch.nn.functional.grid_sample`` (CPU float32, trilinear, zeros padding, ``align_corners=True``)
   forward and forward + backward, if torch is importable.

Times are medians over ``--repeats`` runs after a warm-up call; compile times are reported separately.
Boundary handling differs slightly between the methods (scipy "constant" returns cval outside [0, n - 1];
jax.scipy "constant" and torch zeros padding fade to zero over one voxel); this does not affect the timings.

Usage::

    python benchmarks/warp.py [--shape 160 192 224] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from scipy import ndimage as ndi  # noqa: E402

from jaxreg.core.sampling import map_coordinates  # noqa: E402

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "brain3d")


def load_image(shape, rng):
    """The subject-1 T1 volume when it exists and has ``shape``; otherwise a smooth random volume."""
    path = os.path.join(DATA, "subj1_t1.nii.gz")
    if os.path.exists(path):
        try:
            import nibabel as nib

            img = np.asarray(nib.load(path).dataobj, dtype=np.float32)
            if img.shape == tuple(shape):
                return img, "subj1_t1.nii.gz"
        except ImportError:
            pass
    img = ndi.gaussian_filter(rng.standard_normal(shape), 2.0)
    img = (img - img.min()) / (img.max() - img.min())
    return img.astype(np.float32), "smooth random volume"


def make_fields(shape, rng):
    nd = len(shape)
    smooth = np.stack([ndi.gaussian_filter(rng.standard_normal(shape), 6.0) for _ in range(nd)], axis=-1)
    smooth *= 3.0 / smooth.std()
    rough = 2.0 * rng.standard_normal(tuple(shape) + (nd,))
    return {"smooth": smooth.astype(np.float32), "rough": rough.astype(np.float32)}


def identity_grid(shape):
    """Voxel index grid ``(*shape, ndim)``, components in array-axis order (traced, so it fuses under jit)."""
    return jnp.stack(jnp.meshgrid(*[jnp.arange(n, dtype=jnp.float32) for n in shape], indexing="ij"), axis=-1)


def time_call(fn, repeats):
    """Median wall-clock and CPU (all threads of this process) seconds of ``fn()`` over ``repeats`` runs."""
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn())
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def time_scipy(img_np, disp_np, repeats):
    shape = img_np.shape
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij"), -1)
    coords_first = np.moveaxis(grid + disp_np, -1, 0)  # scipy wants the components first
    return time_call(lambda: ndi.map_coordinates(img_np, coords_first, order=1, mode="constant"), repeats)


def compile_jax(fn, *args):
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - t0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=3, default=[160, 192, 224], metavar=("D", "H", "W"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    shape = tuple(args.shape)
    rng = np.random.default_rng(0)
    img_np, source = load_image(shape, rng)
    fields = make_fields(shape, rng)
    w_np = rng.standard_normal(shape).astype(np.float32)
    print(f"volume {shape} float32 ({source}); jax {jax.__version__} on {jax.devices()[0].platform}, "
          f"{os.cpu_count()} CPU cores; median of {args.repeats} runs")

    img = jnp.asarray(img_np)
    w = jnp.asarray(w_np)

    def ours_fwd(img, d):
        return map_coordinates(img, identity_grid(shape) + d, order=1, mode="constant")

    def ours_bwd(img, w, d):
        return jax.grad(lambda d: jnp.sum(map_coordinates(img, identity_grid(shape) + d, order=1) * w))(d)

    def jsp_coords(d):
        c = identity_grid(shape) + d
        return [c[..., i] for i in range(len(shape))]

    def jsp_fwd(img, d):
        return jax.scipy.ndimage.map_coordinates(img, jsp_coords(d), order=1, mode="constant")

    def jsp_bwd(img, w, d):
        def loss(d):
            warped = jax.scipy.ndimage.map_coordinates(img, jsp_coords(d), order=1, mode="constant")
            return jnp.sum(warped * w)

        return jax.grad(loss)(d)

    try:
        import torch
        import torch.nn.functional as F

        torch.set_num_threads(os.cpu_count() or 1)
    except ImportError:
        torch = None

    jax_methods = [
        ("jaxreg map_coordinates", "fwd", ours_fwd, lambda d: (img, d)),
        ("jaxreg map_coordinates", "fwd+bwd", ours_bwd, lambda d: (img, w, d)),
        ("jax.scipy map_coordinates", "fwd", jsp_fwd, lambda d: (img, d)),
        ("jax.scipy map_coordinates", "fwd+bwd", jsp_bwd, lambda d: (img, w, d)),
    ]
    compiled = {}
    compile_rows = []
    disp0 = jnp.asarray(next(iter(fields.values())))
    for method, pss, fn, make_args in jax_methods:  # both fields have the same shapes: compile once
        compiled[(method, pss)], compile_s = compile_jax(fn, *make_args(disp0))
        compile_rows.append((method, pss, compile_s))

    rows = []  # (method, field, pass, wall seconds, cpu seconds)
    for name, disp_np in fields.items():
        disp = jnp.asarray(disp_np)
        for method, pss, _, make_args in jax_methods:
            fn, fargs = compiled[(method, pss)], make_args(disp)
            jax.block_until_ready(fn(*fargs))  # warm-up
            rows.append((method, name, pss, *time_call(lambda: fn(*fargs), args.repeats)))

        t = time_scipy(img_np, disp_np, args.repeats)
        rows.append(("scipy.ndimage map_coordinates", name, "fwd", *t))

        if torch is not None:
            timg = torch.from_numpy(img_np)[None, None]
            tw = torch.from_numpy(w_np)[None, None]
            base = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij"), -1)
            tbase = torch.from_numpy(base)
            scale = torch.tensor([2.0 / (n - 1) for n in shape])

            def torch_grid(d):
                g = (tbase + d) * scale - 1.0  # normalised, components (z, y, x) = array-axis order
                return g.flip(-1)[None]  # grid_sample wants (x, y, z)

            tdisp = torch.from_numpy(disp_np)

            def t_fwd():
                with torch.no_grad():
                    return F.grid_sample(timg, torch_grid(tdisp), mode="bilinear", padding_mode="zeros",
                                         align_corners=True)

            def t_bwd():
                d = tdisp.clone().requires_grad_(True)
                out = F.grid_sample(timg, torch_grid(d), mode="bilinear", padding_mode="zeros",
                                    align_corners=True)
                (out * tw).sum().backward()
                return d.grad

            for fn, pss in [(t_fwd, "fwd"), (t_bwd, "fwd+bwd")]:
                fn()  # warm-up
                rows.append(("torch grid_sample", name, pss, *time_call(fn, args.repeats)))

    ref = {(f, p): t for m, f, p, t, _ in rows if m == "jax.scipy map_coordinates"}
    tref = {(f, p): t for m, f, p, t, _ in rows if m == "torch grid_sample"}
    print()
    header = f"{'method':<31}{'pass':<9}{'field':<8}{'time (s)':>9}{'cpu (s)':>9}"
    print(header + f"{'/ jax.scipy':>13}{'/ torch':>9}")
    for method, field, pss, t, c in sorted(rows, key=lambda r: (r[2], r[1])):
        r1 = f"{t / ref[(field, pss)]:.2f}" if (field, pss) in ref else "-"
        r2 = f"{t / tref[(field, pss)]:.2f}" if (field, pss) in tref else "-"
        print(f"{method:<31}{pss:<9}{field:<8}{t:>9.4f}{c:>9.4f}{r1:>13}{r2:>9}")
    if torch is None:
        print("torch grid_sample: skipped (torch is not importable; "
              "pip install -r benchmarks/requirements.txt)")
    print("time: median wall-clock seconds; cpu: median CPU seconds of this process (all threads); "
          "ratios use time")
    print()
    print("compile times (jax.jit(...).lower(...).compile(), once per method and pass):")
    for method, pss, t in compile_rows:
        print(f"  {method:<30}{pss:<9}{t:>8.2f} s")


if __name__ == "__main__":
    main()
