"""Organ-aware regularisers: local rigidity, incompressibility, and weight maps built from label groups.

In adaptive radiotherapy some structures move rigidly (bones), some deform but keep their volume (soft
organs, nearly incompressible tissue) and the rest may deform freely. These penalties encode that locally,
through a *weight map* ``c(x) >= 0`` (usually in ``[0, 1]``) on the field's voxels, passed as the regulariser
contract's ``mask``:

* :func:`rigidity` -- the local rigidity penalty of Staring, Klein & Pluim (2007): with ``J = I + grad u``
  the deformation gradient of ``T(x) = x + u(x)``, the weighted mean of

  - linearity ``L = sum_k ||Hess u_k||_F^2`` (the mapping is affine: its second derivatives vanish),
  - orthonormality ``O = sum_ij ((J^T J - I)_ij)^2`` (the linear part is a rotation),
  - properness ``P = (det J - 1)^2`` (no reflection, no volume change),

  combined as ``w_L L + w_O O + w_P P``; all three vanish exactly for any rigid motion ``x -> R x + t``.
* :func:`incompressibility` -- the weighted mean of ``(det J - 1)^2`` or ``(log det J)^2``: zero for every
  volume-preserving map (rotations, shears), whatever its shape change.
* Spatially varying smoothness: :func:`~jaxreg.regularizers.diffusion`, :func:`~jaxreg.regularizers.bending`
  (and every other field regulariser) already take a float ``mask`` as per-voxel weights, so a stiffness map
  is ``diffusion(u, spacing=sp, mask=c)``; no separate function is needed. Note that the result is the
  *weighted mean* ``sum(c e) / sum(c)`` (the library's mask semantics): only the relative weights matter, the
  overall strength is the objective's weight of the term.

Weight maps come from label maps with :func:`label_weight_map` (groups of label values with a weight each,
optionally dilated by a distance in world mm, resampled onto any grid), and reach a registration through
:func:`weight_mapped`: a field term carrying its map in world coordinates, which an objective resamples onto
the grid of whatever field it regularises (each level's grid for a dense displacement or velocity field, the
level grid on which a B-spline is sampled).

Discretisation. Orthonormality and properness use :func:`~jaxreg.regularizers.forward_jacobian` (forward
differences at each voxel with a forward neighbour, exact for affine fields, weighted by the mean of the map
over the stencil's voxels, as :func:`~jaxreg.regularizers.elastic` does); linearity *is* the thin-plate
energy :func:`~jaxreg.regularizers.bending` with the same map. Staring et al. count each mixed second
derivative once; here it counts twice, as in the Frobenius norm of the Hessian, which makes the term
rotation invariant. :func:`incompressibility` uses the voxel-wise determinant of
:func:`~jaxreg.regularizers.jacobian_determinant_field` (central differences), the one that
:func:`jaxreg.evaluation.jacobian_statistics` reports, so a zero penalty there means ``det J = 1`` as evaluated.

Velocity fields. On a stationary velocity field ``v`` the objective regularises ``v`` itself, and
``exp(v)`` is rigid exactly when ``v`` is an affine field with a skew-symmetric linear part (a Killing field).
``rigidity(v, linearized=True)`` penalises exactly that: orthonormality becomes ``||grad v + grad v^T||_F^2``
and properness ``(div v)^2``, the first-order parts of ``J^T J - I`` and ``det J - 1``. With
``weights=(0, 0, 1)`` it is the incompressibility of a velocity (``div v = 0`` makes ``exp(v)`` volume
preserving).

References: M. Staring, S. Klein, J.P.W. Pluim, "A rigidity penalty term for nonrigid registration",
Med. Phys. 34(11):4098-4108, 2007 (elastix's ``TransformRigidityPenalty``); T. Rohlfing et al.,
"Volume-preserving nonrigid registration of MR breast images using free-form deformation with an
incompressibility constraint", IEEE TMI 22(6), 2003; Loeckx et al., "Nonrigid image registration using
free-form deformations with a local rigidity constraint", MICCAI 2004.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxreg.core.grid import Grid, Image
from jaxreg.core.registry import parse, register_term
from jaxreg.evaluation.distance import euclidean_distance_transform
from jaxreg.regularizers._common import check_field, check_mask, check_min_size, det, frame, weighted_mean
from jaxreg.regularizers.jacobian import _determinants_and_mask, log_jacobian
from jaxreg.regularizers.smoothness import (
    _as_static,
    _bending,
    _forward_jacobian,
    _forward_weights,
    _require_orthonormal,
)
from jaxreg.warp import resample, sample_points

__all__ = ["WeightMapped", "incompressibility", "label_weight_map", "rigidity", "weight_mapped"]


# -- rigidity ----------------------------------------------------------------------------------------------------
@register_term("regularizer")
def rigidity(
    u: jax.Array,
    *,
    spacing: float | Sequence[float] | None = None,
    grid: Grid | None = None,
    mask: jax.Array | None = None,
    weights: Any = (1.0, 1.0, 1.0),
    linearized: bool = False,
) -> jax.Array:
    """Local rigidity penalty: ``w_L L + w_O O + w_P P`` weighted by the rigidity coefficient map ``mask``.

    With ``J = I + grad u`` (world derivatives) and ``c(x)`` the map (``mask``; 1 everywhere if ``None``)::

        L = <sum_k sum_ij (d^2 u_k / dx_i dx_j)^2>_c       linearity      (mm^-2)
        O = <sum_ij ((J^T J - I)_ij)^2>_c                  orthonormality (dimensionless)
        P = <(det J - 1)^2>_c                              properness     (dimensionless)

    where ``<e>_c = sum(c e) / sum(c)`` (0 if ``c`` vanishes). Every rigid motion ``u(x) = R x + t - x``
    gives exactly 0 (up to rounding); a uniform scaling ``J = s I`` gives ``O = n (s^2 - 1)^2`` and
    ``P = (s^n - 1)^2``; a simple shear ``J = I + g e_a e_b^T`` gives ``O = 2 g^2 + g^4``, ``P = 0``;
    ``u_k = a x_j^2`` gives ``L = 4 a^2``. With ``linearized=True`` (for velocity fields, module docstring)
    ``O = <||grad u + grad u^T||_F^2>_c`` and ``P = <(div u)^2>_c``. Discretisation in the module docstring.

    Reference: Staring, Klein & Pluim, Med. Phys. 34(11), 2007, eqs. (4)-(7) (there with each mixed second
    derivative counted once).

    Args:
      u: ``(*spatial, ndim)`` displacement in mm (world components, array-axis order), ndim in 1..3, at least
        3 samples per axis.
      spacing: voxel size in mm (static), scalar or per axis; default 1. Exclusive with ``grid``.
      grid: the field's grid (spacing and an orthonormal direction are used).
      mask: the rigidity coefficient map ``c``, ``spatial`` non-negative weights (traced), e.g. from
        :func:`label_weight_map`.
      weights: ``(w_L, w_O, w_P)`` (traced), non-negative; ``(1, 0, 0)`` is :func:`bending` alone.
      linearized: first-order orthonormality and properness (static).

    Returns:
      Scalar, ``u``'s dtype.
    """
    n = check_field(u)
    check_min_size(u, n, 3, "rigidity")
    sp, minv = frame(n, spacing, grid)
    _require_orthonormal(grid, "rigidity")
    mask = check_mask(mask, tuple(u.shape[:n]))
    w = jnp.asarray(weights, dtype=u.dtype)
    if w.shape != (3,):
        raise ValueError(
            f"weights: expected (linearity, orthonormality, properness), 3 numbers, got shape {tuple(w.shape)}"
        )
    if not isinstance(linearized, (bool, np.bool_)):
        raise TypeError(f"linearized: expected a Python bool (static), got {type(linearized).__name__}")
    return _rigidity(
        u, mask, w, spacing=tuple(float(s) for s in sp), minv=_as_static(minv), linearized=bool(linearized)
    )


@functools.partial(jax.jit, static_argnames=("spacing", "minv", "linearized"))
def _rigidity(u, mask, w, *, spacing, minv, linearized):
    n = len(spacing)
    lin = _bending(u, mask, spacing=spacing)
    g = _forward_jacobian(u, spacing=spacing, minv=minv)  # [..., i, j] = du_i/dx_j
    eye = jnp.eye(n, dtype=g.dtype)
    if linearized:
        e = g + jnp.swapaxes(g, -1, -2)
        proper = jnp.trace(g, axis1=-2, axis2=-1) ** 2
    else:
        jac = g + eye
        e = jnp.swapaxes(jac, -1, -2) @ jac - eye
        proper = (det(jac) - 1.0) ** 2
    ortho = jnp.sum(e * e, axis=(-2, -1))
    cw = _forward_weights(mask, n, tuple(g.shape[:n]))
    return w[0] * lin + w[1] * weighted_mean(ortho, cw) + w[2] * weighted_mean(proper, cw)


# -- incompressibility -------------------------------------------------------------------------------------------
_FORMS = ("det", "log")


@register_term("regularizer")
def incompressibility(
    u: jax.Array,
    *,
    spacing: float | Sequence[float] | None = None,
    grid: Grid | None = None,
    mask: jax.Array | None = None,
    form: str = "det",
    eps: Any = 1e-3,
) -> jax.Array:
    """Incompressibility: the weighted mean of ``(det J - 1)^2`` (``form="det"``) or ``(log det J)^2``.

    ``J = I + grad u``; ``det J`` is the local volume ratio, computed per voxel as
    :func:`jacobian_determinant_field` does. Zero for any volume-preserving map (rotations, shears, any
    divergence-free flow); a uniform scaling ``J = s I`` gives ``(s^n - 1)^2`` (``"det"``) or
    ``(n log s)^2`` (``"log"``). ``"log"`` treats expansion by ``k`` and compression by ``1/k`` alike and
    is :func:`log_jacobian` restricted to the mask (its safe log below ``eps``); ``"det"`` is the properness
    term of :func:`rigidity` on its own, bounded for folded voxels. For a velocity field use
    ``rigidity(v, weights=(0, 0, 1), linearized=True)`` (``(div v)^2``, module docstring).

    Units: dimensionless. Reference: Rohlfing et al., IEEE TMI 22(6), 2003 (``|log det J|``); Staring et al.,
    Med. Phys. 2007 (properness).

    Args:
      u: ``(*spatial, ndim)`` displacement in mm, at least 2 samples per axis.
      spacing: voxel size in mm (static); exclusive with ``grid``.
      grid: the field's grid (spacing and direction are used).
      mask: ``spatial`` voxel weights: where the tissue is incompressible (e.g. :func:`label_weight_map`).
      form: ``"det"`` or ``"log"`` (static).
      eps: where the log turns linear (traced; ``"log"`` only).

    Returns:
      Scalar.
    """
    if form not in _FORMS:
        raise ValueError(f"form: expected one of {_FORMS}, got {form!r}")
    if form == "log":
        return log_jacobian(u, spacing=spacing, grid=grid, mask=mask, eps=eps)
    return _det_penalty(*_determinants_and_mask(u, spacing, grid, mask))


@jax.jit
def _det_penalty(d: jax.Array, mask: jax.Array | None) -> jax.Array:
    return weighted_mean((d - 1.0) ** 2, mask)


# -- weight maps from labels -------------------------------------------------------------------------------------
def _concrete(x: Any, name: str) -> np.ndarray:
    if isinstance(x, jax.core.Tracer):
        raise TypeError(
            f"{name}: expected a concrete array (a weight map is built once, outside jit), got a tracer"
        )
    return np.asarray(x)


def _groups(groups: Any) -> list[tuple[int, ...]]:
    if isinstance(groups, np.ndarray):
        groups = groups.tolist()
    if isinstance(groups, (int, np.integer)):
        groups = [groups]
    if isinstance(groups, (str, bytes, Mapping)) or not isinstance(groups, Sequence):
        raise TypeError(
            "groups: expected a sequence of groups, each a label value or a sequence of label values, "
            f"got {type(groups).__name__}"
        )
    out: list[tuple[int, ...]] = []
    seen: dict[int, int] = {}
    for g, grp in enumerate(groups):
        vals = [grp] if isinstance(grp, (int, np.integer)) else grp
        vals = vals.tolist() if isinstance(vals, np.ndarray) else vals
        if isinstance(vals, (str, bytes)) or not isinstance(vals, Sequence) or not len(vals):
            raise ValueError(
                f"groups[{g}]: expected a label value or a non-empty sequence of them, got {grp!r}"
            )
        vals_t = []
        for v in vals:
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"groups[{g}]: expected integer label values, got {v!r}")
            v = int(v)
            if v in seen:
                raise ValueError(f"groups: label {v} is listed in group {seen[v]} and in group {g}")
            seen[v] = g
            vals_t.append(v)
        out.append(tuple(vals_t))
    if not out:
        raise ValueError("groups: expected at least one group of label values")
    return out


def _per_group(x: Any, count: int, name: str, default: float) -> np.ndarray:
    if x is None:
        return np.full(count, default)
    if isinstance(x, jax.core.Tracer):
        raise TypeError(f"{name}: expected static numbers, got a traced array")
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 0:
        return np.full(count, float(a))
    if a.shape != (count,):
        raise ValueError(f"{name}: expected a number or one per group ({count}), got shape {a.shape}")
    return a


def label_weight_map(
    labels: Image,
    groups: Sequence[int | Sequence[int]],
    *,
    weights: float | Sequence[float] | None = None,
    dilate_mm: float | Sequence[float] = 0.0,
    grid: Grid | None = None,
    order: int = 1,
) -> Image:
    """A weight map in ``[0, 1]`` from groups of label values, optionally dilated in mm and resampled.

    For each group ``g`` (a set of label values) the binary mask ``M_g = labels in g`` is dilated by
    ``r_g = dilate_mm[g]`` mm: a voxel belongs to the dilated mask when the Euclidean distance between its
    centre and the centre of a voxel of ``M_g`` is at most ``r_g`` (the exact distance transform
    :func:`jaxreg.evaluation.euclidean_distance_transform` on the label grid's anisotropic spacing; equal to
    ``scipy.ndimage.distance_transform_edt(~M_g, sampling=spacing) <= r_g``). The map is
    ``c(x) = max_g weights[g] * M_g(x)`` (overlaps of dilated groups take the larger weight), 0 elsewhere; it is
    then resampled onto ``grid`` through world coordinates (pull, the identity transform; 0 outside the label
    grid), by nearest neighbour (``order=0``) or linearly (``order=1``, values stay in ``[0, 1]``).

    Host-side and eager (the label values are checked), not jit-able; the map is a constant of a registration.

    Args:
      labels: integer label map (or floats holding integers) ``(*labels.grid.shape)``.
      groups: groups of label values, each an int or a sequence of ints, e.g. ``[(11, 12), 7]``; every value
        must occur in ``labels`` and belong to one group only.
      weights: weight in ``[0, 1]`` per group (or one for all); default 1.
      dilate_mm: dilation radius in mm, >= 0, per group or one for all.
      grid: the output grid (any shape, spacing, origin, direction; same dimension); default ``labels.grid``.
      order: 0 (nearest) or 1 (linear) resampling onto ``grid``.

    Returns:
      float32 :class:`Image` on ``grid``, values in ``[0, 1]``.

    Raises:
      TypeError: ``labels`` not an :class:`Image`, ``grid`` not a :class:`Grid`, traced inputs.
      ValueError: non-integer labels, a value absent from ``labels``, a value in two groups, weights outside
        ``[0, 1]``, negative radii, a grid of another dimension, or an empty map (on ``grid``).
    """
    if not isinstance(labels, Image):
        raise TypeError(
            f"labels: expected a jaxreg Image (a label map on a Grid), got {type(labels).__name__}"
        )
    if labels.has_channels:
        raise ValueError(f"labels: expected a single-channel label map {labels.grid.shape}, got channels")
    lab = _concrete(labels.data, "labels")
    if lab.dtype == np.bool_:
        lab = lab.astype(np.int32)
    elif np.issubdtype(lab.dtype, np.floating):
        if not np.all(np.isfinite(lab)) or np.any(lab != np.round(lab)):
            raise ValueError("labels: expected integer label values, got non-integer floats")
    elif not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"labels: expected an integer label map, got dtype {lab.dtype}")
    grps = _groups(groups)
    present = set(np.unique(lab).tolist())
    absent = sorted(v for grp in grps for v in grp if v not in present)
    if absent:
        shown = sorted(int(v) for v in present)
        raise ValueError(
            f"groups: label value(s) {absent} do not occur in labels (present: {shown[:20]}"
            f"{', ...' if len(shown) > 20 else ''})"
        )
    w = _per_group(weights, len(grps), "weights", 1.0)
    if not np.all(np.isfinite(w)) or np.any(w < 0) or np.any(w > 1):
        raise ValueError(f"weights: expected weights in [0, 1], got {w.tolist()}")
    radii = _per_group(dilate_mm, len(grps), "dilate_mm", 0.0)
    if not np.all(np.isfinite(radii)) or np.any(radii < 0):
        raise ValueError(f"dilate_mm: expected radii >= 0 in mm, got {radii.tolist()}")
    if grid is None:
        grid = labels.grid
    if not isinstance(grid, Grid):
        raise TypeError(f"grid: expected a jaxreg Grid, got {type(grid).__name__}")
    if grid.ndim != labels.grid.ndim:
        raise ValueError(f"grid: expected a {labels.grid.ndim}-D grid like labels, got {grid.ndim}-D")
    if order not in (0, 1):
        raise ValueError(f"order: expected 0 (nearest) or 1 (linear), got {order!r}")
    d = labels.grid.direction
    if np.any(radii > 0) and not np.allclose(d.T @ d, np.eye(labels.grid.ndim), atol=1e-6):
        raise ValueError(
            "labels: dilation in mm assumes orthonormal axes; this label grid's axes are sheared"
        )

    spacing = tuple(float(s) for s in labels.grid.spacing)
    out = np.zeros(lab.shape, np.float32)
    for grp, wg, r in zip(grps, w, radii):
        m = np.isin(lab, grp)
        if r > 0:
            dist = np.asarray(euclidean_distance_transform(m, spacing=spacing))
            m = dist <= r * (1 + 1e-6) + 1e-6  # float32 distances: a voxel exactly at r stays in
        out = np.maximum(out, np.float32(wg) * m)
    if not np.any(out > 0):
        raise ValueError("weights: every group has weight 0, the map is empty")
    result = Image(jnp.asarray(out), labels.grid)
    if grid != labels.grid:
        data = np.clip(
            np.asarray(resample(result, grid, order=order, mode="constant", cval=0.0).data), 0.0, 1.0
        )
        if not np.any(data > 0):
            raise ValueError("grid: the weight map is empty on this grid (no group voxel falls inside it)")
        result = Image(jnp.asarray(data, jnp.float32), grid)
    return result


# -- weight maps in objectives -----------------------------------------------------------------------------------
class WeightMapped:
    """A field regulariser with a weight map in world coordinates; made by :func:`weight_mapped`.

    Call it as the regulariser contract says, ``term(u, *, spacing=None, grid=None, mask=None)``: the map is
    resampled onto ``grid`` (or used as is when ``u`` lies on the map's own lattice and only ``spacing`` is
    given) and multiplied into ``mask``. :meth:`on_grid` is the protocol an objective uses: it returns the
    regulariser with the map on the grid of the field being regularised bound as its ``mask``.

    With ``side="moving"`` the map lies in the *moving* image's space (labels of the moving image): on a field
    grid it is pulled through the registration's fixed outer transform (the linear stages before this one),
    ``c_fixed(x) = c(A(x))``, so it covers the moving image's organs where the linear alignment puts them; dilate
    the map by the deformation expected beyond that alignment.

    Compares and hashes by value (``fn``, ``order``, ``side``, the map's grid and a SHA-1 digest of its data), so
    two equal maps built independently share one compiled kernel.

    Attributes:
      fn: the regulariser ``fn(u, *, spacing, grid, mask) -> scalar``.
      weight_map: the map, float32 :class:`Image` (world coordinates).
      order: interpolation order of the resampling (0 nearest, 1 linear).
      side: ``"fixed"`` (the map lies in the fixed image's space) or ``"moving"``.
    """

    __slots__ = ("_cache", "_digest", "fn", "kind", "order", "side", "weight_map")

    def __init__(
        self, fn: Callable, weight_map: Image, *, order: int = 1, side: str = "fixed", kind: str = "regularizer"
    ):
        object.__setattr__(self, "fn", fn)
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "weight_map", weight_map)
        object.__setattr__(self, "order", order)
        object.__setattr__(self, "side", side)
        object.__setattr__(self, "_cache", {})
        data = np.ascontiguousarray(np.asarray(weight_map.data, np.float32))
        object.__setattr__(self, "_digest", hashlib.sha1(data.tobytes()).hexdigest())

    def _key(self) -> tuple:
        return (self.fn, self.kind, self.order, self.side, self.weight_map.grid, self._digest)

    def __eq__(self, other: object) -> bool:
        return type(other) is WeightMapped and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __setattr__(self, attr: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen")

    @property
    def __name__(self) -> str:
        return f"{getattr(self.fn, '__name__', 'regularizer')}[mapped]"

    def __repr__(self) -> str:
        return (
            f"weight_mapped({self.fn!r}, <map on {self.weight_map.grid!r}>, order={self.order}, side={self.side!r})"
        )

    def map_on(self, grid: Grid) -> jax.Array:
        """The weight map resampled onto ``grid`` (``(*grid.shape)`` float32; cached, a constant under jit)."""
        if not isinstance(grid, Grid):
            raise TypeError(f"grid: expected a jaxreg Grid, got {type(grid).__name__}")
        if grid.ndim != self.weight_map.ndim:
            raise ValueError(
                f"grid: expected a {self.weight_map.ndim}-D grid like the weight map, got {grid.ndim}-D"
            )
        hit = self._cache.get(grid)
        if hit is None:
            with jax.ensure_compile_time_eval():
                if grid == self.weight_map.grid:
                    hit = np.asarray(self.weight_map.data, np.float32)
                else:
                    hit = np.asarray(resample(self.weight_map, grid, order=self.order).data, np.float32)
            self._cache[grid] = hit
        return jnp.asarray(hit)

    def map_through(self, grid: Grid, outer: Any) -> jax.Array:
        """The map sampled at ``outer(x)`` for the voxel centres ``x`` of ``grid``: ``(*grid.shape)`` (traced).

        The gradient does not flow into ``outer`` through the map (``stop_gradient``): the map places the
        penalty, it is not a term to optimise.
        """
        if outer is None:
            return self.map_on(grid)
        with jax.ensure_compile_time_eval():
            pts = jnp.asarray(grid.world_coords(jnp.float32))
        pts = jax.lax.stop_gradient(outer(pts))
        return sample_points(self.weight_map, pts, order=self.order, mode="nearest")  # edge values beyond the grid

    def mask_on_grid(self, grid: Grid, outer: Any = None) -> jax.Array:
        """The map on ``grid`` (``side="fixed"``) or pulled through ``outer`` (``side="moving"``): ``(*grid.shape)``."""
        return self.map_through(grid, outer) if self.side == "moving" else self.map_on(grid)

    def on_grid(self, grid: Grid, outer: Any = None) -> Callable:
        """``fn`` with the map on ``grid`` bound as ``mask``: ``f(u, *, spacing) -> scalar`` for a field on ``grid``.

        Args:
          grid: the grid of the regularised field.
          outer: the registration's fixed transform applied after the optimised one (used when
            ``side="moving"``; ``None`` means the identity).
        """
        return functools.partial(self.fn, mask=self.mask_on_grid(grid, outer))

    def __call__(
        self,
        u: jax.Array,
        *,
        spacing: float | Sequence[float] | None = None,
        grid: Grid | None = None,
        mask: jax.Array | None = None,
    ) -> jax.Array:
        """``fn(u, spacing=..., grid=..., mask=map * mask)`` with the map on the field's grid."""
        if self.kind == "similarity":
            raise TypeError(
                "a weight-mapped similarity is evaluated inside an objective (it needs the level's grid): use it as "
                "similarity_term(weight_mapped(sim, map, kind='similarity'))"
            )
        n = check_field(u)
        shape = tuple(u.shape[:n])
        if grid is not None:
            c = self.map_on(grid)
            if tuple(c.shape) != shape:
                raise ValueError(f"grid: expected the field's grid of shape {shape}, got {grid.shape}")
        else:
            mg = self.weight_map.grid
            sp = np.broadcast_to(np.asarray(1.0 if spacing is None else spacing, np.float64), (n,))
            if mg.shape != shape or not np.allclose(mg.spacing, sp):
                raise ValueError(
                    f"grid: the weight map lies on {mg!r}; a field of shape {shape} and spacing {sp.tolist()} "
                    "needs its grid (grid=...) to place the map"
                )
            c = self.map_on(mg)
        c = c if mask is None else c * check_mask(mask, shape)
        kw = {"grid": grid} if grid is not None else {"spacing": spacing}
        return self.fn(u, mask=c, **kw)


def weight_mapped(
    fn: Any, weight_map: Image, *, order: int = 1, side: str = "fixed", kind: str = "regularizer"
) -> WeightMapped:
    """A field regulariser whose ``mask`` is a weight map in world coordinates, for any field grid.

    Use it as a field term of an objective: ``field_term(weight_mapped("rigidity", c), 0.1)``. The objective
    asks it for the regulariser on the grid of the field it regularises (:meth:`WeightMapped.on_grid`), so
    the same map serves every level of a multi-resolution registration and every transform model (dense
    displacement, velocity, B-spline sampled on the level grid).

    Args:
      fn: a regulariser ``fn(u, *, spacing, mask=None)`` or a registry spec (``"rigidity"``,
        ``"incompressibility(form='log')"``, ``{"name": "bending"}``).
      weight_map: non-negative weights as an :class:`Image` (e.g. :func:`label_weight_map`), concrete.
      order: 0 (nearest) or 1 (linear) resampling onto field grids.
      side: ``"fixed"``: the map lies in the fixed image's space (labels of the fixed image); ``"moving"``: in the
        moving image's space, pulled through the linear stages' transform on each level (see
        :class:`WeightMapped`).
      kind: ``"regularizer"`` (a field term) or ``"similarity"``: a similarity ``fn(fixed, warped, mask)`` whose
        mask is the map on each level's fixed grid (pulled through the earlier stages' transform for
        ``side="moving"``), for a ``similarity_term`` that looks at one region only (a stage aligning one organ).

    Returns:
      A :class:`WeightMapped` term.
    """
    if kind not in ("regularizer", "similarity"):
        raise ValueError(f"kind: expected 'regularizer' or 'similarity', got {kind!r}")
    if not callable(fn) or isinstance(fn, (str, Mapping)):
        fn = parse(fn, kind, argument="fn")
    if not isinstance(weight_map, Image):
        raise TypeError(
            f"weight_map: expected a jaxreg Image (weights on a Grid), got {type(weight_map).__name__}"
        )
    if weight_map.has_channels:
        raise ValueError("weight_map: expected a single-channel map")
    data = _concrete(weight_map.data, "weight_map")
    if not np.all(np.isfinite(data)) or np.any(data < 0):
        raise ValueError("weight_map: expected finite non-negative weights")
    if not np.any(data > 0):
        raise ValueError("weight_map: the map is empty (all weights 0)")
    if order not in (0, 1):
        raise ValueError(f"order: expected 0 (nearest) or 1 (linear), got {order!r}")
    if side not in ("fixed", "moving"):
        raise ValueError(f"side: expected 'fixed' or 'moving', got {side!r}")
    return WeightMapped(
        fn, Image(jnp.asarray(data, jnp.float32), weight_map.grid), order=order, side=side, kind=kind
    )
