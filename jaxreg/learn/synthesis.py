"""On-the-fly synthesis of training data: random transforms, label-driven images and intensity augmentation.

Every function here is pure JAX, works in 2D and 3D, takes its PRNG ``key`` first and handles *one* item
(one transform, one label map, one image); batches are ``jax.vmap`` over keys (and items). Options that change
array shapes (grids, ``num_labels``, ``coarse_factor``, ``blur_mm_max``, ...) are static Python values;
magnitudes (``max_displacement_mm``, ``rotation_deg``, ``bias_std``, ...) may be traced, so they can be
vmapped too.

* :func:`random_affine` -- a random affine about the grid centre (rotation, scale, shear, translation).
* :func:`random_deformation` -- a random smooth deformation drawn on a coarse grid and upsampled (a
  diffeomorphic :class:`~jaxreg.transforms.VelocityField` or a plain
  :class:`~jaxreg.transforms.DisplacementField`), after Eppenhof & Pluim (IEEE TMI 2018) and SynthMorph.
* :func:`relabel` -- arbitrary label values to contiguous indices ``0..L-1``.
* :func:`synthesize_image` -- SynthMorph's label-driven image synthesis (Hoffmann et al., IEEE TMI 2022):
  Gaussian mixture per label, blur, smooth multiplicative bias field, gamma, noise, min-max normalisation.
* :func:`augment_intensity` / :func:`normalize_intensity` -- augmentation and robust [0, 1] scaling of real
  images.

Smooth random fields are drawn on coarse lattices and brought to the full grid by separable linear
interpolation (one small matrix product per axis), so drawing a 3D 160^3 deformation per training step is
cheap.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxreg.core.grid import Grid
from jaxreg.data import random_velocity_field
from jaxreg.transforms.dense import DisplacementField, VelocityField
from jaxreg.transforms.linear import Affine, euler_to_matrix, rotation_matrix

__all__ = [
    "INTENSITY_PRIORS",
    "intensity_prior",
    "random_affine",
    "random_deformation",
    "relabel",
    "synthesize_image",
    "augment_intensity",
    "normalize_intensity",
]

_HIGHEST = jax.lax.Precision.HIGHEST


# -- helpers ---------------------------------------------------------------------------------------------------
def _check_grid(grid: Any, name: str = "grid") -> Grid:
    if not isinstance(grid, Grid):
        raise TypeError(f"{name}: expected a jaxreg Grid, got {type(grid).__name__}")
    if grid.ndim not in (2, 3):
        raise ValueError(f"{name}: expected a 2-D or 3-D grid, got {grid.ndim}-D")
    return grid


def _check_nonneg(value: Any, name: str, unit: str = "") -> None:
    """Validate a magnitude when it is a concrete Python/NumPy number (tracers pass through)."""
    if isinstance(value, (int, float, np.integer, np.floating)):
        if not (math.isfinite(float(value)) and float(value) >= 0):
            raise ValueError(f"{name}: expected a non-negative finite value{unit}, got {value!r}")


def _check_range(value: Any, name: str) -> tuple[Any, Any]:
    try:
        lo, hi = value
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a pair (low, high), got {value!r}") from None
    if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and not lo <= hi:
        raise ValueError(f"{name}: expected low <= high, got {value!r}")
    return lo, hi


def _linear_resize_matrix(n_out: int, n_in: int) -> np.ndarray:
    """``(n_out, n_in)`` linear interpolation from ``n_in`` to ``n_out`` samples over the same extent.

    Output sample ``j`` sits at input index ``(j + 0.5) * n_in / n_out - 0.5`` (the convention of
    :meth:`Grid.resize`), clamped to ``[0, n_in - 1]`` (edge extension).
    """
    x = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0, n_in - 1)
    i0 = np.floor(x).astype(int)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = x - i0
    m = np.zeros((n_out, n_in), np.float64)
    m[np.arange(n_out), i0] += 1.0 - w1
    m[np.arange(n_out), i1] += w1
    return m


def _resize_linear(data: jax.Array, shape: Sequence[int]) -> jax.Array:
    """Separable linear resize of the leading ``len(shape)`` axes of ``data`` (grid-resize convention)."""
    out = data
    for ax, n_out in enumerate(shape):
        n_in = out.shape[ax]
        if n_in == n_out:
            continue
        m = jnp.asarray(_linear_resize_matrix(int(n_out), int(n_in)), out.dtype)
        out = jnp.moveaxis(jnp.tensordot(m, out, axes=([1], [ax]), precision=_HIGHEST), 0, ax)
    return out


def _uniform(key: jax.Array, shape: tuple[int, ...], lo: Any, hi: Any) -> jax.Array:
    return jax.random.uniform(key, shape, jnp.float32) * (jnp.asarray(hi, jnp.float32) - lo) + lo


def _minmax(x: jax.Array) -> jax.Array:
    lo, hi = jnp.min(x), jnp.max(x)
    span = hi - lo
    return jnp.where(span > 0, (x - lo) / jnp.where(span > 0, span, 1.0), jnp.zeros_like(x))


def _spatial_grid(grid: Any, shape: tuple[int, ...], name: str = "grid") -> Grid:
    """``grid`` itself, or a centred grid of ``shape`` with ``grid`` as spacing (mm; ``None`` = 1 mm)."""
    if isinstance(grid, Grid):
        if grid.shape != shape:
            raise ValueError(f"{name}: shape {grid.shape} differs from the data's spatial shape {shape}")
        return grid
    if len(shape) not in (2, 3):
        raise ValueError(f"{name}: expected 2-D or 3-D data, got spatial shape {shape}")
    return Grid.centered(shape, 1.0 if grid is None else grid)


def _bias_field(key: jax.Array, grid: Grid, std: Any, smoothness_mm: float) -> jax.Array:
    """Smooth log-bias ``(*grid.shape)``: N(0, std) on a lattice of spacing ~``smoothness_mm``, upsampled."""
    coarse = tuple(
        min(n, max(2, int(math.ceil(e / smoothness_mm)) + 1)) for n, e in zip(grid.shape, grid.extent)
    )
    b = jax.random.normal(key, coarse, jnp.float32) * std
    return _resize_linear(b, grid.shape)


# -- random transforms -----------------------------------------------------------------------------------------
def random_affine(
    key: jax.Array,
    grid: Grid,
    *,
    rotation_deg: float = 10.0,
    scale: float = 0.1,
    shear: float = 0.05,
    translation_mm: float = 5.0,
) -> Affine:
    """A random affine transform about the centre of ``grid``.

    ``T(x) = R diag(s) H (x - c) + c + t`` with ``c = grid.center`` (world mm) and, each drawn uniformly and
    independently:

    * ``R``: 2D rotation by an angle in ``[-rotation_deg, rotation_deg]``; 3D: extrinsic Euler angles about
      x, y and z (``euler_to_matrix(order="xyz")``), each in ``[-rotation_deg, rotation_deg]``;
    * ``s``: per-axis scale factors in ``[1 - scale, 1 + scale]``;
    * ``H``: unit upper-triangular shear with off-diagonal entries in ``[-shear, shear]``;
    * ``t``: translation in ``[-translation_mm, translation_mm]`` per axis (mm).

    This is the factorisation of :func:`jaxreg.transforms.decompose_affine`, which recovers ``R``, ``s`` and
    ``H``. The centre maps to ``c + t``.

    Args:
      key: PRNG key.
      grid: the grid whose world centre is the centre of rotation, scaling and shear (static).
      rotation_deg: largest rotation angle per axis, degrees (``< 90``).
      scale: largest relative scale change per axis (``< 1``).
      shear: largest shear coefficient.
      translation_mm: largest translation per axis, mm.

    Returns:
      An :class:`~jaxreg.transforms.Affine` (float32), fixed -> moving world mm.
    """
    grid = _check_grid(grid)
    for name, v in (("rotation_deg", rotation_deg), ("scale", scale), ("shear", shear),
                    ("translation_mm", translation_mm)):
        _check_nonneg(v, name)
    if isinstance(rotation_deg, (int, float)) and rotation_deg >= 90:
        raise ValueError(f"rotation_deg: expected an angle below 90 degrees, got {rotation_deg!r}")
    if isinstance(scale, (int, float)) and scale >= 1:
        raise ValueError(f"scale: expected a relative scale change below 1, got {scale!r}")
    n = grid.ndim
    k_rot, k_scale, k_shear, k_t = jax.random.split(key, 4)
    max_rad = jnp.deg2rad(jnp.asarray(rotation_deg, jnp.float32))
    if n == 2:
        rot = rotation_matrix(_uniform(k_rot, (), -max_rad, max_rad))
    else:
        rot = euler_to_matrix(_uniform(k_rot, (3,), -max_rad, max_rad), order="xyz")
    s = 1.0 + _uniform(k_scale, (n,), -scale, scale)
    iu = np.triu_indices(n, 1)
    h = jnp.eye(n, dtype=jnp.float32).at[iu].set(_uniform(k_shear, (len(iu[0]),), -shear, shear))
    matrix = rot @ jnp.diag(s) @ h
    t = _uniform(k_t, (n,), -translation_mm, translation_mm)
    return Affine(matrix, t, jnp.asarray(grid.center, jnp.float32))


def random_deformation(
    key: jax.Array,
    grid: Grid,
    *,
    max_displacement_mm: float = 4.0,
    smoothness_mm: float = 10.0,
    kind: str = "velocity",
    coarse_factor: int = 4,
    steps: int = 7,
) -> VelocityField | DisplacementField:
    """A random smooth deformation on ``grid``, drawn on a coarse grid and upsampled.

    White Gaussian noise on ``grid.downsample(coarse_factor)`` is smoothed with a Gaussian of standard deviation
    ``smoothness_mm`` and scaled so that its longest vector is ``max_displacement_mm``
    (:func:`jaxreg.data.random_velocity_field` on the coarse grid), then linearly interpolated onto ``grid``
    (separably, edge-clamped). Linear interpolation is a convex combination, so the longest vector on ``grid``
    is at most ``max_displacement_mm`` (and close to it for smooth fields).

    * ``kind="velocity"``: a stationary velocity field ``v``; ``exp(v)`` (scaling and squaring, ``steps``
      squarings) is a diffeomorphism whose displacements are at most ``~max_displacement_mm`` (the flow of
      ``v`` for unit time moves no point further than ``max |v|``). Its inverse is ``exp(-v)``.
    * ``kind="displacement"``: the same field used directly as a displacement ``T(x) = x + u(x)``, e.g. as the
      target of supervised displacement networks. It folds when the displacement is large compared with
      ``smoothness_mm``.

    Cost: noise and smoothing on the coarse grid, and one small matrix product per axis on the full grid.

    Args:
      key: PRNG key.
      grid: the field's grid (static), 2D or 3D.
      max_displacement_mm: length of the longest vector, mm (may be traced).
      smoothness_mm: standard deviation of the smoothing Gaussian, mm (static).
      kind: ``"velocity"`` or ``"displacement"`` (static).
      coarse_factor: integer downsampling factor of the grid on which the noise is drawn (static).
      steps: scaling-and-squaring steps of the velocity field (static).

    Returns:
      A :class:`~jaxreg.transforms.VelocityField` or :class:`~jaxreg.transforms.DisplacementField` on
      ``grid`` (float32, world mm, fixed -> moving).
    """
    grid = _check_grid(grid)
    if kind not in ("velocity", "displacement"):
        raise ValueError(f"kind: expected 'velocity' or 'displacement', got {kind!r}")
    if not isinstance(coarse_factor, (int, np.integer)) or coarse_factor < 1:
        raise ValueError(f"coarse_factor: expected a positive integer, got {coarse_factor!r}")
    if not isinstance(smoothness_mm, (int, float)) or not smoothness_mm > 0:
        raise ValueError(f"smoothness_mm: expected a positive standard deviation in mm, got {smoothness_mm!r}")
    _check_nonneg(max_displacement_mm, "max_displacement_mm", " in mm")
    coarse = grid.downsample(int(coarse_factor))
    unit = random_velocity_field(key, coarse, smoothness_mm=float(smoothness_mm), max_displacement_mm=1.0,
                                 steps=0).velocity
    field = _resize_linear(unit, grid.shape) * jnp.asarray(max_displacement_mm, jnp.float32)
    if kind == "velocity":
        return VelocityField(field, grid, int(steps))
    return DisplacementField(field, grid)


# -- labels ----------------------------------------------------------------------------------------------------
def relabel(labels: Any, label_values: Sequence[int], *, unknown: int = 0) -> Any:
    """Map label values to contiguous indices: ``label_values[i] -> i``.

    List the background value first (e.g. ``(0, 2, 3, 41, ...)``) so that index 0 is the background. Values
    that are not listed get index ``unknown``: by default 0, i.e. they merge with the first listed label (the
    background); pass ``unknown=len(label_values)`` to give them a dedicated index ``L`` instead.

    Works on the host (a NumPy array in, a NumPy array out) and in JAX (a JAX array in, a JAX array out,
    jittable; ``label_values`` is static).

    Args:
      labels: integer label map of any shape.
      label_values: the ``L`` distinct label values, in the order of their indices.
      unknown: index of values not in ``label_values``, in ``[0, L]``.

    Returns:
      int32 array of ``labels``' shape with values in ``0..L-1`` (or ``L`` when ``unknown=L``).
    """
    values = np.asarray(tuple(int(v) for v in label_values), dtype=np.int64)
    if values.size == 0:
        raise ValueError("label_values: expected at least one label value")
    if len(np.unique(values)) != values.size:
        raise ValueError(f"label_values: expected distinct values, got {values.tolist()}")
    if not 0 <= int(unknown) <= values.size:
        raise ValueError(f"unknown: expected an index in [0, {values.size}], got {unknown!r}")
    xp = np if isinstance(labels, (np.ndarray, np.generic, list, tuple)) else jnp
    lab = xp.asarray(labels)
    if not (xp.issubdtype(lab.dtype, xp.integer) or lab.dtype == bool):
        raise TypeError(f"labels: expected an integer label map, got dtype {lab.dtype}")
    order = np.argsort(values)
    sorted_vals = values[order]
    if xp is jnp and not jax.config.jax_enable_x64:
        if sorted_vals.min() < np.iinfo(np.int32).min or sorted_vals.max() > np.iinfo(np.int32).max:
            raise ValueError("label_values: values must fit in int32")
        sorted_vals = sorted_vals.astype(np.int32)
    sv = xp.asarray(sorted_vals)
    lab = lab.astype(sv.dtype)
    pos = xp.clip(xp.searchsorted(sv, lab), 0, values.size - 1)
    found = sv[pos] == lab
    idx = xp.asarray(order.astype(np.int32))[pos]
    return xp.where(found, idx, xp.asarray(int(unknown), dtype=xp.int32)).astype(xp.int32)


# -- image synthesis -------------------------------------------------------------------------------------------
def _random_blur(key: jax.Array, x: jax.Array, grid: Grid, blur_mm_max: float) -> jax.Array:
    """Separable Gaussian blur with a random per-axis sigma in ``[0, blur_mm_max]`` mm.

    The kernel radius is static (``ceil(3 blur_mm_max / spacing)`` voxels) and its taps are built in-graph from
    the traced sigma; at the border the kernel is renormalised over the voxels inside (constants stay constant).
    """
    sig = _uniform(key, (grid.ndim,), 0.0, blur_mm_max)
    out = x
    for ax in range(grid.ndim):
        sp = float(grid.spacing[ax])
        r = int(math.ceil(3.0 * blur_mm_max / sp))
        n = x.shape[ax]
        if r == 0 or n == 1:
            continue
        dist = jnp.arange(-r, r + 1, dtype=jnp.float32) * sp
        s = jnp.maximum(sig[ax], 1e-3 * sp)
        w = jnp.exp(-0.5 * (dist / s) ** 2)
        pad = [(0, 0)] * out.ndim
        pad[ax] = (r, r)
        xp = jnp.pad(out, pad)
        ones = jnp.pad(jnp.ones((n,), out.dtype), (r, r))
        acc = jnp.zeros_like(out)
        norm = jnp.zeros((n,), out.dtype)
        for k in range(2 * r + 1):
            acc = acc + w[k] * jax.lax.slice_in_dim(xp, k, k + n, axis=ax)
            norm = norm + w[k] * ones[k : k + n]
        shape = [1] * out.ndim
        shape[ax] = n
        out = acc / norm.reshape(shape)
    return out


# T1-weighted brain MRI, skull-stripped and scaled to [0, 1] (FreeSurfer aseg labels): the range each label's
# mean is drawn from. White matter brightest, deep grey nuclei between, cortex darker, CSF dark; every label not
# listed (background, skull, extra-cerebral classes) is drawn from ``"other"``.
_T1_WM, _T1_GM, _T1_CSF = (0.78, 0.95), (0.45, 0.62), (0.05, 0.22)
INTENSITY_PRIORS: dict[str, dict[Any, tuple[float, float]]] = {
    "t1_brain": {
        **{v: _T1_WM for v in (2, 41, 7, 46, 85)},  # cerebral and cerebellar white matter, optic chiasm
        **{v: _T1_GM for v in (3, 42, 8, 47, 17, 53, 18, 54)},  # cortex, cerebellar cortex, hippocampus, amygdala
        **{v: _T1_CSF for v in (4, 43, 5, 44, 14, 15, 24, 72)},  # ventricles, CSF
        10: (0.62, 0.78), 49: (0.62, 0.78),  # thalamus
        11: (0.52, 0.68), 50: (0.52, 0.68),  # caudate
        12: (0.56, 0.72), 51: (0.56, 0.72),  # putamen
        13: (0.66, 0.82), 52: (0.66, 0.82),  # pallidum
        26: (0.52, 0.68), 58: (0.52, 0.68),  # accumbens
        28: (0.66, 0.85), 60: (0.66, 0.85), 16: (0.7, 0.88),  # ventral DC, brain stem
        30: (0.35, 0.65), 62: (0.35, 0.65),  # vessels
        "other": (0.0, 0.04),
    },
}  # fmt: skip
"""Named intensity priors for :func:`synthesize_image`: ``{label: (low, high)}`` ranges of the label means, with
``"other"`` for every label not listed. ``"t1_brain"``: skull-stripped T1-weighted brain MRI in [0, 1] (the
tissue ordering of T1 contrast; the ranges jitter each label's mean by about +/-0.08)."""


def intensity_prior(prior: str | Mapping[Any, tuple[float, float]], labels: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Per-label mean ranges for :func:`synthesize_image` from a named or explicit prior.

    Args:
      prior: a name in :data:`INTENSITY_PRIORS` or a mapping ``{label: (low, high)}`` with an ``"other"`` entry.
      labels: the synthesis labels ``l_0 .. l_{L-1}`` in the order of :func:`relabel` (index ``L`` is "every
        other label", e.g. the background).

    Returns:
      ``(low, high)``, each ``(L + 1,)`` float32: the ``mean_range`` of :func:`synthesize_image` for
      ``num_labels = L + 1``.
    """
    if isinstance(prior, str):
        if prior not in INTENSITY_PRIORS:
            raise ValueError(f"prior: expected one of {sorted(INTENSITY_PRIORS)} or a mapping, got {prior!r}")
        prior = INTENSITY_PRIORS[prior]
    if not isinstance(prior, Mapping) or "other" not in prior:
        raise ValueError("prior: expected a mapping {label: (low, high)} with an 'other' entry")
    rows = [prior.get(int(v), prior["other"]) for v in labels] + [prior["other"]]
    lo, hi = (np.asarray(c, np.float32) for c in zip(*rows))
    if not np.all(lo <= hi):
        raise ValueError("prior: expected low <= high for every label")
    return lo, hi


def synthesize_image(
    key: jax.Array,
    label_indices: jax.Array,
    num_labels: int,
    *,
    grid: Grid | float | Sequence[float] | None = None,
    mean_range: tuple[float, float] = (0.0, 1.0),
    std_range: tuple[float, float] = (0.0, 0.1),
    blur_mm_max: float = 1.0,
    bias_std: float = 0.3,
    bias_smoothness_mm: float = 40.0,
    gamma_std: float = 0.25,
    noise_std_max: float = 0.05,
) -> jax.Array:
    """A random image from a label map, SynthMorph style (Hoffmann et al., IEEE TMI 2022).

    With every draw independent and uniform unless stated:

    1. Gaussian mixture: each label ``l`` gets a mean ``mu_l`` in ``mean_range`` and a standard deviation
       ``sigma_l`` in ``std_range``; each voxel ``x`` of label ``l`` is ``mu_l + sigma_l * N(0, 1)``.
    2. Blur: separable Gaussian with a standard deviation in ``[0, blur_mm_max]`` mm, drawn per axis.
    3. Bias: multiplication by ``exp(b)`` where ``b`` is ``N(0, sigma_b^2)`` noise, ``sigma_b`` in
       ``[0, bias_std]``, on a lattice of spacing about ``bias_smoothness_mm`` linearly interpolated onto the
       grid (a smooth field).
    4. Min-max normalisation to [0, 1], then gamma: ``x ** exp(g)``, ``g ~ N(0, gamma_std^2)``.
    5. Additive Gaussian noise, standard deviation in ``[0, noise_std_max]``, and a final min-max
       normalisation to [0, 1].

    With ``std_range=(0, 0)``, ``blur_mm_max=0``, ``bias_std=0`` and ``noise_std_max=0`` every label region is
    exactly constant (a random monotone map of the label means).

    Args:
      key: PRNG key.
      label_indices: ``(*spatial)`` integer map with values in ``0..num_labels-1`` (see :func:`relabel`);
        values outside are clamped into that range.
      num_labels: number of labels ``L`` (static).
      grid: the label map's grid, or a voxel spacing in mm (scalar or per axis; ``None``: 1 mm). Only the
        spacing matters (blur and bias are in mm).
      mean_range: range of the label means: two floats, or two ``(num_labels,)`` arrays of per-label ranges
        (:func:`intensity_prior`, e.g. T1-like contrast).
      std_range: range of the within-label standard deviations.
      blur_mm_max: largest blur standard deviation, mm (static: it sets the kernel size).
      bias_std: largest standard deviation of the log-bias field.
      bias_smoothness_mm: spacing of the bias field's lattice, mm (static).
      gamma_std: standard deviation of the log-gamma exponent.
      noise_std_max: largest standard deviation of the additive noise (in units of the [0, 1] image).

    Returns:
      float32 image ``(*spatial)`` with values in [0, 1].
    """
    lab = jnp.asarray(label_indices)
    if not jnp.issubdtype(lab.dtype, jnp.integer):
        raise TypeError(f"label_indices: expected an integer map of label indices, got dtype {lab.dtype}")
    g = _spatial_grid(grid, tuple(lab.shape))
    if not isinstance(num_labels, (int, np.integer)) or num_labels < 1:
        raise ValueError(f"num_labels: expected a positive Python int (static), got {num_labels!r}")
    mlo, mhi = _check_range(mean_range, "mean_range")
    slo, shi = _check_range(std_range, "std_range")
    if isinstance(slo, (int, float)) and slo < 0:
        raise ValueError(f"std_range: expected non-negative standard deviations, got {std_range!r}")
    if not isinstance(blur_mm_max, (int, float)) or not (math.isfinite(blur_mm_max) and blur_mm_max >= 0):
        raise ValueError(f"blur_mm_max: expected a non-negative float in mm (static), got {blur_mm_max!r}")
    if not isinstance(bias_smoothness_mm, (int, float)) or not bias_smoothness_mm > 0:
        raise ValueError(f"bias_smoothness_mm: expected a positive float in mm (static), got {bias_smoothness_mm!r}")
    for name, v in (("bias_std", bias_std), ("gamma_std", gamma_std), ("noise_std_max", noise_std_max)):
        _check_nonneg(v, name)

    k_mean, k_std, k_vox, k_blur, k_bias, k_bias_std, k_gamma, k_noise_std, k_noise = jax.random.split(key, 9)
    lab = jnp.clip(lab, 0, num_labels - 1)
    means = _uniform(k_mean, (num_labels,), mlo, mhi)
    stds = _uniform(k_std, (num_labels,), slo, shi)
    x = means[lab] + stds[lab] * jax.random.normal(k_vox, lab.shape, jnp.float32)
    if blur_mm_max > 0:
        x = _random_blur(k_blur, x, g, float(blur_mm_max))
    sigma_b = _uniform(k_bias_std, (), 0.0, bias_std)
    x = x * jnp.exp(_bias_field(k_bias, g, sigma_b, float(bias_smoothness_mm)))
    x = _minmax(x)
    x = x ** jnp.exp(jax.random.normal(k_gamma, (), jnp.float32) * gamma_std)
    x = x + _uniform(k_noise_std, (), 0.0, noise_std_max) * jax.random.normal(k_noise, lab.shape, jnp.float32)
    return _minmax(x)


# -- real images -----------------------------------------------------------------------------------------------
def augment_intensity(
    key: jax.Array,
    image: jax.Array,
    *,
    grid: Grid | float | Sequence[float] | None = None,
    gamma_std: float = 0.2,
    bias_std: float = 0.2,
    bias_smoothness_mm: float = 40.0,
    noise_std: float = 0.02,
) -> jax.Array:
    """Random intensity augmentation of a real image scaled to [0, 1] (e.g. by :func:`normalize_intensity`).

    ``y = clip(gamma(bias(x)) + n, 0, 1)``: a smooth multiplicative bias ``exp(b)`` (``b ~ N(0, bias_std^2)``
    on a lattice of spacing ``~bias_smoothness_mm``, linearly interpolated), division by the maximum (zero
    stays zero, so a black background stays black), gamma ``x ** exp(g)`` with ``g ~ N(0, gamma_std^2)``, and
    additive noise ``n ~ N(0, noise_std^2)`` per voxel. All channels share the bias and gamma.

    Args:
      key: PRNG key.
      image: ``(*spatial)`` or, when ``grid`` is a Grid, ``(*grid.shape)`` or ``(*grid.shape, C)``; values in
        [0, 1] (negative values are clipped to 0).
      grid: the image's grid, or its spacing in mm (scalar or per axis; ``None``: 1 mm, and ``image`` has no
        channel axis).
      gamma_std: standard deviation of the log-gamma exponent.
      bias_std: standard deviation of the log-bias field.
      bias_smoothness_mm: spacing of the bias lattice, mm (static).
      noise_std: standard deviation of the additive noise.

    Returns:
      float32 array of ``image``'s shape, values in [0, 1].
    """
    x = jnp.asarray(image)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    x = x.astype(jnp.float32)
    if isinstance(grid, Grid):
        spatial = tuple(x.shape[: grid.ndim])
        if x.ndim > grid.ndim + 1:
            raise ValueError(f"image: expected shape {grid.shape} or {grid.shape + ('C',)}, got {tuple(x.shape)}")
    else:
        spatial = tuple(x.shape)
    g = _spatial_grid(grid, spatial)
    if not isinstance(bias_smoothness_mm, (int, float)) or not bias_smoothness_mm > 0:
        raise ValueError(f"bias_smoothness_mm: expected a positive float in mm (static), got {bias_smoothness_mm!r}")
    for name, v in (("gamma_std", gamma_std), ("bias_std", bias_std), ("noise_std", noise_std)):
        _check_nonneg(v, name)
    k_bias, k_gamma, k_noise = jax.random.split(key, 3)
    b = _bias_field(k_bias, g, bias_std, float(bias_smoothness_mm))
    b = b.reshape(b.shape + (1,) * (x.ndim - g.ndim))
    y = jnp.maximum(x, 0.0) * jnp.exp(b)
    peak = jnp.max(y)
    y = y / jnp.where(peak > 0, peak, 1.0)
    y = y ** jnp.exp(jax.random.normal(k_gamma, (), jnp.float32) * gamma_std)
    y = y + noise_std * jax.random.normal(k_noise, y.shape, jnp.float32)
    return jnp.clip(y, 0.0, 1.0)


def normalize_intensity(
    image: jax.Array, *, mask: jax.Array | None = None, percentiles: tuple[float, float] = (0.5, 99.5)
) -> jax.Array:
    """Robust min-max scaling to [0, 1]: ``clip((x - p_lo) / (p_hi - p_lo), 0, 1)``.

    ``p_lo`` and ``p_hi`` are the ``percentiles`` of the voxels where ``mask`` is non-zero (all voxels without
    a mask), linear interpolation between order statistics (``numpy.percentile``'s default). ``(0, 100)`` is
    plain min-max scaling. A constant image (``p_hi == p_lo``) maps to zeros. Jittable.

    Args:
      image: array of any shape (real values).
      mask: optional array of ``image``'s shape.
      percentiles: ``(low, high)`` in [0, 100], ``low < high``.

    Returns:
      float32 array of ``image``'s shape in [0, 1].
    """
    x = jnp.asarray(image)
    x = x.astype(jnp.float32)
    lo_p, hi_p = _check_range(percentiles, "percentiles")
    if not (0 <= float(lo_p) < float(hi_p) <= 100):
        raise ValueError(f"percentiles: expected 0 <= low < high <= 100, got {percentiles!r}")
    q = jnp.asarray([lo_p, hi_p], jnp.float32)
    if mask is None:
        lo, hi = jnp.percentile(x, q)
    else:
        m = jnp.asarray(mask)
        if tuple(m.shape) != tuple(x.shape):
            raise ValueError(f"mask: expected shape {tuple(x.shape)} (the image's), got {tuple(m.shape)}")
        lo, hi = jnp.nanpercentile(jnp.where(m != 0, x, jnp.nan), q)
        lo = jnp.where(jnp.isnan(lo), 0.0, lo)
        hi = jnp.where(jnp.isnan(hi), 0.0, hi)
    span = hi - lo
    return jnp.where(span > 0, jnp.clip((x - lo) / jnp.where(span > 0, span, 1.0), 0.0, 1.0), jnp.zeros_like(x))
