"""Unbiased template (atlas) construction: groupwise registration by iterated batched pairwise registration.

:func:`build_template` follows ANTs' ``antsMultivariateTemplateConstruction2.sh`` (Avants et al., NeuroImage
49(3), 2010, "The optimal template effect in hippocampus studies of diseased populations"):

1. **Start**: the mean of the images affinely aligned (one batched affine registration) to their plain mean, or a
   given initial template.
2. **Each iteration**: register every image ``I_i`` to the current template ``T`` in *one* batched
   :func:`~jaxreg.optimize.register` call (the same per-level kernels under ``jax.vmap``, optionally sharded
   over a device mesh), giving pull mappings ``phi_i`` (template world mm -> image world mm) with
   ``I_i o phi_i ~ T``; average the warped images, ``A = mean_i I_i o phi_i``.
3. **Shape update**: the mean displacement ``u_bar(x) = mean_i (phi_i(x) - x)`` measures how far the template
   sits from the average shape of the group. The new template is the average pulled through the inverse of
   the mean mapping, ``T' = A o (id + u_bar)^-1``: then ``phi_i o (id + u_bar)^-1`` map ``T'`` to the images
   and their mean displacement vanishes to first order. (ANTs applies ``-0.25 x`` the mean warp four times
   and the inverse mean affine; here the mean of the full mappings, affine parts included, is inverted as one
   displacement field by fixed-point iteration, :func:`jaxreg.transforms.invert`.)

After the last update every image is registered once more to the final template: these are the returned
mappings, and their mean |displacement| over the template's foreground (``mean_displacement_mm``, ~0 for an
unbiased template) is measured on them, not assumed. Its floor is the registration's precision, not the update
(whose inverse is exact to < 1e-4 mm): fresh registrations follow only part of a small smooth change of the
template (on 3 mm synthesised brains the default greedy pipeline recovers about 40 % of a 0.8 mm deformation of a
template's own copy), and those errors depend on the template, so they are shared by all subjects and do not
average out; ``benchmarks/template_diagnose.py`` measures each step. Two settings lower it on those brains
(4 updates, ``benchmarks/README.md``): ``Greedy(step_decay=0)`` (no dither of the fixed-RMS step at the end of
each level) 0.81 -> 0.72 mm, and rounds of the greedy stage alone, ``preset("syn", greedy={"step_decay": 0})``
for images already aligned (a per-round affine stage leaves a mean linear part that every deformable stage must
undo, and they undo only part of it) 0.62 mm, in 60 % of the time. A third is ANTs' own: its template script
sharpens every average before it becomes the template (``sharpen``, an unsharp mask; the script's default is a
Laplacian filter, ``-A 2`` the unsharp mask 0.5): the subjects register more precisely to a sharper template, and
the 4-subject figure above falls from 0.58 to 0.43 mm (ten subjects: 0.70 -> 0.50 mm after 4 updates, 0.49 mm
after 6). Sharpness is the mean gradient magnitude of the template over its foreground divided by its mean
foreground intensity (per mm; higher is sharper).

Images must share one grid (the batched registration stacks them); the template lives on that grid, or on the
initial template's grid. 2-D and 3-D.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxreg.core.diff import spatial_gradient
from jaxreg.core.grid import Grid, Image
from jaxreg.transforms import DisplacementField, Transform, invert
from jaxreg.warp import warp
from jaxreg.warp.intensity import unsharp_mask

__all__ = ["TemplateResult", "build_template", "template_stats", "write_template"]


class TemplateResult(NamedTuple):
    """The outcome of :func:`build_template`.

    Attributes:
      template: the template image on the template grid.
      registration: the final batched :class:`~jaxreg.optimize.Registration` of every image to ``template``
        (``registration.pair(i)``; ``registration.transform``: pull mappings template world mm -> image ``i``
        world mm, leading axis ``N`` on every leaf).
      history: one dict per round of registrations: ``iteration`` (0 = the affine start, ``k`` = after ``k``
        shape updates), ``mean_displacement_mm`` (mean over the template foreground of ``|mean_i u_i(x)|``),
        ``max_displacement_mm``, ``sharpness`` (of the template registered to), ``seconds``.
      registrations: the number of pairwise registrations run (affine start included).
      seconds: total wall time (s), compilation included.
    """

    template: Image
    registration: Any
    history: list
    registrations: int
    seconds: float

    @property
    def transforms(self) -> Transform:
        """The mappings of the images at the template (``registration.transform``)."""
        return self.registration.transform


def template_stats(template: Image, displacements: jax.Array, *, threshold: float = 0.1) -> dict[str, float]:
    """Mean displacement and sharpness of a template and the mappings at it.

    Args:
      template: the template ``(*shape)``.
      displacements: ``(N, *shape, ndim)`` displacements ``u_i(x) = phi_i(x) - x`` (world mm) of the images'
        mappings at the template's voxel centres.
      threshold: the foreground is where ``template > threshold * max(template)``.

    Returns:
      ``{"mean_displacement_mm": mean_x |mean_i u_i(x)|, "max_displacement_mm": max_x |mean_i u_i(x)|,
      "sharpness": mean_x |grad template| / mean_x template}`` over the foreground (gradient per mm).
    """
    data = jnp.asarray(template.data, jnp.float32)
    fg = data > threshold * jnp.max(data)
    mean_u = jnp.linalg.norm(jnp.mean(displacements, axis=0), axis=-1)
    grad = jnp.linalg.norm(spatial_gradient(data, template.grid), axis=-1)
    n = jnp.maximum(jnp.sum(fg), 1)
    return {
        "mean_displacement_mm": float(jnp.sum(jnp.where(fg, mean_u, 0.0)) / n),
        "max_displacement_mm": float(jnp.max(jnp.where(fg, mean_u, 0.0))),
        "sharpness": float(jnp.sum(jnp.where(fg, grad, 0.0)) / jnp.sum(jnp.where(fg, data, 0.0))),
    }


def _warp_all(images: jax.Array, grid: Grid, transforms: Transform, tgrid: Grid) -> jax.Array:
    return jax.vmap(lambda m, t: warp(Image(m, grid), t, tgrid).data)(images, transforms)


def _displacements(transforms: Transform, tgrid: Grid) -> jax.Array:
    return jax.vmap(lambda t: t.sample_displacement(tgrid))(transforms)


def build_template(
    images: Sequence[Image],
    *,
    iterations: int = 4,
    initial: Image | None = None,
    method: Any = "default",
    affine_method: Any = "affine",
    step: float = 1.0,
    sharpen: float = 0.0,
    sharpen_sigma_mm: Any = None,
    mesh: Any = None,
    log: Callable[[str], None] | None = None,
) -> TemplateResult:
    """Build an unbiased template of ``images`` (algorithm in the module docstring).

    Args:
      images: ``N >= 2`` images ``(*shape)`` on one grid (2-D or 3-D, scalar).
      iterations: shape updates (ANTs' ``-i``); the images are registered ``iterations + 1`` times to a
        template, plus once affinely for the start.
      initial: initial template (any grid: the template's grid); default the mean of the affinely aligned images.
      method: the pipeline of each round (a :data:`~jaxreg.optimize.PRESETS` name or stages), default
        ``"default"`` (affine -> symmetric greedy SVF); for images already roughly aligned in world space (the
        ``"syn"`` rounds fit no linear part) ``preset("syn", greedy={"step_decay": 0})`` gave the less biased
        3-D template (module docstring).
      affine_method: the pipeline of the affine start (default ``"affine"``).
      step: the shape update inverts ``id + step * u_bar`` (1: the first-order update; ANTs' script applies
        ``0.25 * u_bar`` four times, also 1 in total).
      sharpen: ``amount`` of the unsharp mask applied to every average before it becomes a template
        (:func:`jaxreg.warp.intensity.unsharp_mask`; ANTs' script sharpens each template, by default with a
        Laplacian filter, ``-A 2``: unsharp mask 0.5); 0: none.
      sharpen_sigma_mm: the unsharp mask's Gaussian (mm); ``None``: one voxel of the template grid.
      mesh: a 1-D device mesh (:func:`jaxreg.parallel.make_mesh`) to shard the images over.
      log: called with one line per round.

    Returns:
      :class:`TemplateResult`.

    Raises:
      ValueError: fewer than two images, images on different grids or with channels, ``iterations < 0``, a
        negative ``sharpen`` or a bad ``sharpen_sigma_mm`` (all before any registration).
    """
    from jaxreg.optimize.engine import register

    t_all = time.perf_counter()
    log = log or (lambda s: None)
    images = list(images)
    if len(images) < 2:
        raise ValueError(f"images: a template needs two or more images, got {len(images)}")
    if int(iterations) < 0:
        raise ValueError(f"iterations: expected a non-negative integer, got {iterations!r}")
    ok = isinstance(sharpen, (int, float)) and not isinstance(sharpen, bool) and math.isfinite(sharpen)
    if not ok or sharpen < 0:
        raise ValueError(f"sharpen: expected a non-negative amount, got {sharpen!r}")

    def summarize(average: Image) -> Image:  # ANTs' summarizeimageset: the average, sharpened
        return unsharp_mask(average, sharpen, sharpen_sigma_mm) if sharpen > 0 else average

    for i, im in enumerate(images):
        if not isinstance(im, Image):
            raise TypeError(f"images[{i}]: expected a jaxreg Image, got {type(im).__name__}")
        if im.has_channels:
            raise ValueError(f"images[{i}]: expected a scalar image, got channels")
        if im.grid != images[0].grid:
            raise ValueError(
                f"images[{i}]: every image must share one grid (the batch stacks them); resample onto one grid first"
            )
    grid = images[0].grid
    if sharpen > 0 and sharpen_sigma_mm is not None:  # checked now, not after the first round's registrations
        try:
            sig = np.broadcast_to(np.asarray(sharpen_sigma_mm, np.float64), (grid.ndim,))
        except (ValueError, TypeError):
            sig = None
        if sig is None or not np.all(np.isfinite(sig)) or np.any(sig < 0):
            raise ValueError(
                f"sharpen_sigma_mm: expected None or non-negative finite mm, a scalar or {grid.ndim} values, "
                f"got {sharpen_sigma_mm!r}"
            )
    stack = jnp.stack([jnp.asarray(im.data, jnp.float32) for im in images])
    n_reg = 0
    history: list[dict] = []

    def round_(template: Image, pipeline: Any) -> tuple[Any, jax.Array, float]:
        t0 = time.perf_counter()
        res = register([template] * len(images), images, method=pipeline, mesh=mesh)
        warped = _warp_all(stack, grid, res.transform, template.grid)
        return res, jax.block_until_ready(warped), time.perf_counter() - t0

    if initial is None:
        mean0 = Image(jnp.mean(stack, axis=0), grid)
        res, warped, sec = round_(mean0, affine_method)
        n_reg += len(images)
        template = summarize(Image(jnp.mean(warped, axis=0), grid))
        stats = template_stats(mean0, _displacements(res.transform, grid))  # of the plain mean
        history.append({"iteration": 0, **stats, "seconds": round(sec, 3), "what": "affine to the plain mean"})
        log(f"start:      affine to the plain mean, {sec:.1f} s")
    else:
        if not isinstance(initial, Image) or initial.grid.ndim != grid.ndim or initial.has_channels:
            raise ValueError(f"initial: expected a scalar {grid.ndim}-D jaxreg Image")
        template = Image(jnp.asarray(initial.data, jnp.float32), initial.grid)
    tgrid = template.grid

    res = None
    for k in range(int(iterations) + 1):
        res, warped, sec = round_(template, method)
        n_reg += len(images)
        u = _displacements(res.transform, tgrid)
        stats = template_stats(template, u)
        history.append({"iteration": k + 1, **stats, "seconds": round(sec, 3), "what": "mappings at the template"})
        log(
            f"round {k + 1}/{int(iterations) + 1}: mean |displacement| {stats['mean_displacement_mm']:.3f} mm "
            f"(max {stats['max_displacement_mm']:.2f}), sharpness {stats['sharpness']:.4g}, {sec:.1f} s"
        )
        if k == int(iterations):
            break
        average = summarize(Image(jnp.mean(warped, axis=0), tgrid))
        mean_map = DisplacementField(float(step) * jnp.mean(u, axis=0), tgrid)
        template = warp(average, invert(mean_map), tgrid)  # T' = A o (id + u_bar)^-1  (pull)
    return TemplateResult(template, res, history, n_reg, time.perf_counter() - t_all)


def write_template(
    outdir: str | os.PathLike,
    result: TemplateResult,
    *,
    names: Sequence[str],
    inputs: Sequence[str | os.PathLike] = (),
) -> list[Path]:
    """Write a template folder atomically: ``template.nii.gz``, ``template.json`` and ``NAME/`` per image with
    ``affine.mat`` and ``warp.nii.gz`` (the image's pull mapping from template space, ``antsApplyTransforms -r
    template.nii.gz -t NAME/warp.nii.gz -t NAME/affine.mat`` order).

    Everything is written into a temporary folder beside ``outdir`` and renamed into place; ``outdir`` must not
    exist or be empty.

    Returns:
      The files written.

    Raises:
      ValueError: ``outdir`` is a file or a non-empty folder, or ``names`` does not match the images.
    """
    import json

    from jaxreg.io import save_image, write_transform
    from jaxreg.transforms import Affine, to_displacement

    out = Path(outdir)
    reg = result.registration
    if len(names) != reg.pairs:
        raise ValueError(f"names: expected {reg.pairs} names, got {len(names)}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{os.fspath(outdir)}: exists and is not an empty folder")
    uniq: list[str] = []
    for nm in names:
        nm2, k = nm, 2
        while nm2 in uniq or nm2 in ("template.nii.gz", "template.json"):
            nm2, k = f"{nm}_{k}", k + 1
        uniq.append(nm2)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    grid = result.template.grid
    try:
        save_image(result.template, tmp / "template.nii.gz", inputs=inputs)
        for i, nm in enumerate(uniq):
            r = reg.pair(i)
            (tmp / nm).mkdir()
            lin = r.linear if r.linear is not None else Affine.identity(grid.ndim)
            write_transform(lin, tmp / nm / "affine.mat", inputs=inputs)
            if r.deformable is not None:
                write_transform(to_displacement(r.deformable, grid), tmp / nm / "warp.nii.gz", inputs=inputs)
        info = {
            "images": list(uniq),
            "registrations": result.registrations,
            "seconds": round(result.seconds, 3),
            "history": result.history,
            "mean_displacement_mm": result.history[-1]["mean_displacement_mm"],
            "sharpness": result.history[-1]["sharpness"],
        }
        (tmp / "template.json").write_text(json.dumps(info, indent=2) + "\n")
        if out.exists():
            out.rmdir()
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [out / "template.nii.gz", out / "template.json"] + [out / nm for nm in uniq]
