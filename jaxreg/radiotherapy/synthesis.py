"""Synthetic adaptive-radiotherapy cases: a planning CT, a daily MR-like image and the known mapping between.

:func:`synthesize_daily_case` takes a planning CT with its organ labels (TotalSegmentator classes) and draws one
"treatment day": the patient lies a little differently (a rigid pelvis motion, each femur rotated a little more
in its hip joint), the prostate has moved rigidly on its own, the bladder has filled or emptied, the bowel has
moved, and the image is an MR-linac-like T2-weighted scan on its own grid. The mapping between the two days is
known exactly, so registration methods can be scored against it (:class:`DailyCase`).

Pull convention (as everywhere in jaxreg). ``truth`` is a displacement field on the MR grid that maps MR world
points (RAS mm) to CT world points: ``mr(x) ~ ct(truth(x))``, and the CT's labels were carried into the MR by
nearest-neighbour sampling at ``truth(x)``. Every matrix in ``motion`` is such a pull map:
``ct_point = M @ [mr_point, 1]``.

The deformation. ``truth = P o exp(w)``: an exact rigid motion ``P`` of the whole pelvis (``pelvis_degrees``,
``pelvis_mm`` about the centroid of the pelvic bones) composed with the flow of a stationary velocity field
``w`` (the library's scaling and squaring, :meth:`jaxreg.transforms.VelocityField.exp`, on a grid that covers
the MR field of view with a margin). ``w`` is written in the pelvis-aligned frame ``z = P^-1(y)`` (CT points
``y``) as a hierarchical partition of unity of per-structure velocities (Arsigny et al. 2009, poly-affine
fields):

* bones: zero velocity for the pelvis (sacrum, hips: exactly ``P``); a femur ``f`` gets the exact affine
  velocity ``v_f(z) = Omega_f (z - c_f)`` of a rotation of at most ``femur_degrees`` about its femoral head
  ``c_f``: ``Omega_f`` is the real matrix logarithm of the rotation (:func:`scipy.linalg.logm`), whose flow at
  time 1 is that rotation (the flow of an affine velocity is the matrix exponential);
* each incompressible label (the prostate): the logarithm of its own rigid motion (``prostate_degrees``,
  ``prostate_mm`` about its centroid) on top of the pelvis;
* the bladder: a radial field ``a (z - c)`` about its centroid, ``a`` chosen so that the bladder's volume on
  the MR is ``(1 + dV)`` times its planning volume (``a = -ln(1 + dV) / 3`` in this pull direction, then
  corrected by a few secant steps for the parts of the bladder held by the prostate and the bones);
* bowel (the other compressible labels, and ``bowel`` labels such as the small bowel): a seeded random smooth
  field of amplitude ``bowel_mm``; everything else a gentler one (``tissue_mm``).

The weights are compactly supported functions of the exact Euclidean distance to each structure
(:func:`jaxreg.evaluation.euclidean_distance_transform` on the CT grid, sampled at ``P(z)``): 1 up to a margin
(the structure's largest displacement, one interpolation stencil of the velocity grid and one CT voxel
diagonal; for the motionless pelvis just its CT voxels, 0.65 CT voxel diagonals), then a quintic smoothstep to 0
over ``falloff_mm``, applied in the priority order bones > incompressible organs > bladder > bowel > background
(``W_bone``, ``W_organ (1 - W_bone)``, ..., the background takes the rest). Within its margin a structure's
velocity is exactly affine, and scaling and squaring composes linear interpolations, which are exact for affine
fields: its flow is its rigid motion to float precision (up to the ``O(|A|^2 / 2^steps)`` of the first step
``v / 2^steps``, about 1e-3 mm). Between the partitions of the bones (pelvis, each femur) the nearest bone
decides, so the femur slides in its hip joint within a one-voxel layer.

Where a structure cannot be exact. Adjacent structures with different motions need room for the transition:

* the hip joint: femur and hip bone labels touch, so the voxels on both sides of the contact (within about one
  CT voxel) follow a blend of the two motions, off by at most the femur's rotation times the head radius
  (``femur_degrees = 2``: <= 0.9 mm); all other bone voxels are rigid;
* bones next to a moving organ: the bones' fall-off is shortened where it would reach an organ's margin, but is
  kept at least ``|v_organ| + 1 mm`` wide (a velocity gradient of at most 1, so no tissue is pushed into a bone
  and the bones stay exactly rigid). Organ voxels whose path comes closer to a bone than this transition plus
  one stencil (the prostate's apex, when it lies a few mm from the pubic bone) are held towards the pelvis, as
  the apex is anchored in the pelvic floor: the organ bends slightly there and is rigid elsewhere (on the
  shared pelvis CT, 85-100 % of the prostate's voxels at full resolution).

``motion["truth"]["rigid_error_mm"]`` reports, per label, the largest ``|truth(x) - M x|`` over its MR voxels
and the fraction of voxels within 0.05 mm; ``motion["truth"]`` also records the smallest Jacobian determinant
(the mapping is a diffeomorphism: the flow of a Lipschitz field composed with a rigid motion).

The MR. Label-driven synthesis with T2-weighted MR-linac contrast: each TotalSegmentator class has a tissue
kind and a mean (:data:`T2_TISSUES`: urine and fat bright, prostate intermediate, muscle dark grey, vessels
dark, cortical bone dark with brighter marrow by HU, bowel gas black); voxels without a label are classified by
their CT number (air below -500 HU, fat -200..-30, soft tissue, bone above 200) through a piecewise-linear
curve. Each class gets a smooth random texture, then partial-volume blur, a smooth multiplicative bias field
(at most ``bias``) and Rician noise (``noise``); there is no signal outside the body (air, the CT couch) and
voxels whose mapped point leaves the CT are exactly 0 (nothing is invented beyond the CT). The MR grid
(``mr_spacing``) is a box around the bones, the incompressible organs and the bladder plus ``mr_margin_mm``,
clipped to the CT's field of view.

References: V. Arsigny, O. Commowick, N. Ayache, X. Pennec, "A fast and log-Euclidean polyaffine framework for
locally linear registration", J. Math. Imaging Vis. 33(2), 2009; V. Arsigny et al., "A log-Euclidean framework
for statistics on diffeomorphisms", MICCAI 2006 (scaling and squaring); C. Zachiu et al., "Anatomically-adaptive
multi-modal image registration for image-guided external-beam radiotherapy", Phys. Med. Biol. 65(21), 2020;
J. Wasserthal et al., "TotalSegmentator", Radiol. Artif. Intell. 5(5), 2023 (class numbers).
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxreg.core.grid import Grid, Image
from jaxreg.core.sampling import map_coordinates
from jaxreg.data import gaussian_smooth, random_velocity_field
from jaxreg.evaluation.distance import euclidean_distance_transform
from jaxreg.evaluation.jacobian import jacobian_statistics
from jaxreg.radiotherapy.groups import OrganGroups
from jaxreg.transforms.compose import compose, to_displacement
from jaxreg.transforms.dense import DisplacementField, VelocityField
from jaxreg.transforms.linear import Affine
from jaxreg.warp import resample, warp, warp_labels

__all__ = ["DailyCase", "T2_TISSUES", "save_case", "synthesize_daily_case"]

PathLike = str | os.PathLike

# -- tissue model ----------------------------------------------------------------------------------------------
_BONE = "bone"  # mean = marrow level; cortical bone (high HU) dark
_HOLLOW = "hollow"  # mean = wall / content level; gas (low HU) black
_SOFT = "soft"  # mean
_fluid, _muscle, _vessel = 0.95, 0.27, 0.12
T2_TISSUES: dict[int, tuple[str, float]] = {
    1: (_SOFT, 0.45), 2: (_SOFT, 0.5), 3: (_SOFT, 0.5), 4: (_SOFT, _fluid), 5: (_SOFT, 0.25),  # spleen .. liver
    6: (_HOLLOW, 0.4), 7: (_SOFT, 0.4), 8: (_SOFT, 0.35), 9: (_SOFT, 0.35),  # stomach, pancreas, adrenals
    **{v: (_HOLLOW, 0.03) for v in range(10, 15)},  # lung lobes
    15: (_HOLLOW, 0.35), 16: (_HOLLOW, 0.03), 17: (_SOFT, 0.5),  # oesophagus, trachea, thyroid
    18: (_HOLLOW, 0.45), 19: (_HOLLOW, 0.45), 20: (_HOLLOW, 0.35),  # small bowel, duodenum, colon
    21: (_SOFT, 1.0), 22: (_SOFT, 0.5), 23: (_SOFT, _fluid), 24: (_SOFT, _fluid),  # bladder, prostate, cysts
    **{v: (_BONE, 0.5) for v in range(25, 51)},  # sacrum, vertebrae S1 .. C1
    51: (_SOFT, 0.3), **{v: (_SOFT, _vessel) for v in range(52, 69)},  # heart, vessels (flow voids)
    **{v: (_BONE, 0.55) for v in range(69, 79)},  # humeri, scapulae, clavicles, femurs, hips
    79: (_SOFT, 0.45), **{v: (_SOFT, _muscle) for v in range(80, 90)},  # cord, gluteal/back/psoas muscles
    90: (_SOFT, 0.45), 91: (_BONE, 0.3), **{v: (_BONE, 0.4) for v in range(92, 117)},  # brain, skull, ribs
    117: (_SOFT, 0.3),  # costal cartilages
}  # fmt: skip
"""T2-weighted (MR-linac-like) tissue model per TotalSegmentator v2 ``total`` class number: ``(kind, mean)``
with ``mean`` in arbitrary units ~[0, 1]. Kinds: ``"soft"`` (the mean), ``"bone"`` (the mean is bone marrow;
it darkens to cortical bone, 0.06, from 250 to 700 HU), ``"hollow"`` (the mean is the wall/content; gas below
-600 HU is black). Labels not listed follow the CT-number curve of unlabelled voxels: air (below -500 HU) black,
fat (-200..-30 HU) bright 0.85, soft tissue 0.32, marrow 0.5 at 250 HU, cortical bone dark (700 HU and up)."""

_HU_POINTS = (-1000.0, -500.0, -200.0, -80.0, -30.0, 20.0, 150.0, 250.0, 450.0, 700.0)
_HU_T2 = (0.0, 0.0, 0.8, 0.85, 0.6, 0.32, 0.32, 0.5, 0.35, 0.06)
_KIND_IDS = {"hu": 0, _SOFT: 1, _BONE: 2, _HOLLOW: 3}
_CORTEX_T2 = 0.06
_AIR_T2 = 0.02
_TEXTURE_MM = 4.0  # correlation length of the within-tissue texture
_BIAS_MM = 60.0  # smoothness of the bias field
_BOWEL_SMOOTHNESS_MM = 15.0
_TISSUE_SMOOTHNESS_MM = 30.0
_FEMORAL_HEAD_MM = 30.0  # the femoral head: femur voxels within this distance of the femur's superior end
_BODY_HU = -500.0
_GRADIENT = 1.0  # next to a moving organ the bones' fall-off is _GRADIENT x its speed + _MIN_WIDTH_MM wide
_MIN_WIDTH_MM = 1.0
_CONTRAST_JITTER = 0.05  # relative random change of each tissue class's mean per case


class DailyCase(NamedTuple):
    """One synthetic treatment day: the planning CT and a daily MR with the exact mapping between them.

    Attributes:
      ct: the planning CT, unchanged (HU).
      ct_labels: its label map, unchanged.
      mr: synthetic daily MR on its own grid, float32, arbitrary units ~[0, 1]; 0 where ``truth`` leaves the CT.
      mr_labels: the CT labels carried onto the MR grid by ``truth`` (nearest neighbour), int32; 0 where
        ``truth`` leaves the CT.
      body: body mask on the MR grid (uint8 0/1): mapped CT number above -500 HU, closed, holes filled per
        axial slice, largest component.
      truth: :class:`~jaxreg.transforms.DisplacementField` on the MR grid mapping MR world points (RAS mm) to CT
        world points, ``mr(x) ~ ct(truth(x))`` (pull), the mapping with which the CT's labels were carried
        into the MR.
      motion: what was sampled and achieved, JSON-serialisable: the PRNG key data, the pelvis rigid motion
        (degrees, mm, centre), each femur's extra rotation, each incompressible organ's rigid motion, the
        bladder volume factor, the amplitudes, ``"matrices"`` (``{label: 4x4 pull matrix}`` of every rigid and
        incompressible label, ``ct_point = M @ [mr_point, 1]``), the MR grid and ``"truth"`` statistics.
    """

    ct: Image
    ct_labels: Image
    mr: Image
    mr_labels: Image
    body: Image
    truth: DisplacementField
    motion: dict


# -- small helpers ---------------------------------------------------------------------------------------------
def _nonneg(value: Any, name: str, unit: str = "") -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a non-negative number{unit}, got {value!r}") from None
    if not (math.isfinite(v) and v >= 0):
        raise ValueError(f"{name}: expected a non-negative finite number{unit}, got {value!r}")
    return v


def _degrees(value: Any, name: str) -> float:
    v = _nonneg(value, name, " (degrees)")
    if v >= 45:
        raise ValueError(f"{name}: expected a small angle below 45 degrees, got {value!r}")
    return v


def _labels_tuple(x: Any, name: str) -> tuple[int, ...]:
    if x is None:
        return ()
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return (int(x),)
    try:
        vals = tuple(int(v) for v in x)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a sequence of integer label values, got {x!r}") from None
    return vals


def _translate(c: np.ndarray) -> np.ndarray:
    t = np.eye(4)
    t[:3, 3] = c
    return t


def _rigid_matrix(rotation: np.ndarray, translation: np.ndarray, center: np.ndarray) -> np.ndarray:
    """4x4 ``x -> R (x - c) + c + t``."""
    h = np.eye(4)
    h[:3, :3] = rotation
    h[:3, 3] = center + translation - rotation @ center
    return h


def _uniform3(key: jax.Array, bound: float) -> np.ndarray:
    """Three values (x, y, z angles in degrees, or a translation in mm), each uniform in ``[-bound, bound]``."""
    return np.asarray(jax.random.uniform(key, (3,), jnp.float32, -1.0, 1.0), np.float64) * bound


def _rotation(euler_deg: np.ndarray) -> np.ndarray:
    # the convention of jaxreg.transforms.euler_to_matrix(order="xyz"), in float64
    from scipy.spatial.transform import Rotation

    return Rotation.from_euler("xyz", euler_deg, degrees=True).as_matrix()


def _affine_velocity(h: np.ndarray, center: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(Omega, b)`` with ``v(z) = Omega (z - center) + b`` the affine velocity whose time-1 flow is ``h``.

    The real part of the principal matrix logarithm of ``h`` expressed about ``center``
    (:func:`scipy.linalg.logm`); ``expm`` of it is ``h`` again.
    """
    from scipy.linalg import logm

    hc = _translate(-center) @ h @ _translate(center)
    log = np.real(logm(hc))
    return log[:3, :3], log[:3, 3]


def _rotation_vector(rotvec: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_rotvec(rotvec).as_matrix()


def _femoral_head(
    points: np.ndarray, mask: np.ndarray, d_pelvis: np.ndarray, grid: Grid
) -> tuple[np.ndarray, float | None]:
    """Centre (world mm) and radius of a femoral head: a sphere fitted to the femur's joint surface.

    The joint surface is the femur's voxels within one voxel (face or edge neighbour) of the pelvis; the sphere
    is the algebraic least-squares fit ``|p|^2 = 2 c.p + k`` (radius ``sqrt(k + |c|^2)``). When there are fewer
    than 20 such voxels or the fit is implausible (radius outside 10..60 mm, or far from the femur's top), the
    centroid of the femur's voxels within ``_FEMORAL_HEAD_MM`` of its superior end is used (radius None).
    """
    top = points[:, 2].max()  # world z: superior
    cap = points[points[:, 2] >= top - _FEMORAL_HEAD_MM].mean(0)
    contact = mask & (d_pelvis <= 1.01 * math.sqrt(2.0) * float(grid.spacing.max()))
    p = _world(grid, np.argwhere(contact).astype(np.float64))
    if len(p) >= 20:
        a = np.concatenate([2.0 * p, np.ones((len(p), 1))], axis=1)
        sol = np.linalg.lstsq(a, np.sum(p * p, axis=1), rcond=None)[0]
        c, r2 = sol[:3], sol[3] + float(sol[:3] @ sol[:3])
        if r2 > 0 and 10.0 <= math.sqrt(r2) <= 60.0 and np.linalg.norm(c - cap) <= 2 * _FEMORAL_HEAD_MM:
            return c, math.sqrt(r2)
    return cap, None


def _apply(h: np.ndarray, p: np.ndarray) -> np.ndarray:
    return p @ h[:3, :3].T + h[:3, 3]


def _key_data(key: jax.Array) -> list[int]:
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return [int(v) for v in np.asarray(key).ravel()]


def _world(grid: Grid, index: np.ndarray) -> np.ndarray:
    a = grid.affine
    return index @ a[:3, :3].T + a[:3, 3]


def _smootherstep_falloff(d: jax.Array, margin: Any, width: Any) -> jax.Array:
    """1 for ``d <= margin``, 0 for ``d >= margin + width``, quintic smoothstep in between (C2)."""
    t = jnp.clip((d - margin) / width, 0.0, 1.0)
    return 1.0 - t * t * t * (t * (6.0 * t - 15.0) + 10.0)


def _smooth_noise(key: jax.Array, grid: Grid, channels: int, sigma_mm: float, coarse: int) -> jax.Array:
    """``(*grid.shape, channels)`` smooth Gaussian noise of unit standard deviation per channel.

    White noise on ``grid.downsample(coarse)`` smoothed by :func:`jaxreg.data.gaussian_smooth` (``sigma_mm``)
    and brought onto ``grid`` by linear resampling (:func:`jaxreg.warp.resample`, edge values repeated).
    """
    cgrid = grid.downsample(coarse) if coarse > 1 else grid
    x = gaussian_smooth(jax.random.normal(key, (*cgrid.shape, channels), jnp.float32), cgrid, sigma_mm)
    if cgrid != grid:
        x = resample(Image(x, cgrid), grid, order=1, mode="nearest").data
    x = x - jnp.mean(x, axis=tuple(range(grid.ndim)))
    return x / jnp.maximum(jnp.std(x, axis=tuple(range(grid.ndim))), 1e-12)


def _random_field(key: jax.Array, grid: Grid, amplitude_mm: float, smoothness_mm: float) -> jax.Array:
    """Seeded smooth random velocity ``(*grid.shape, 3)`` whose longest vector is ``amplitude_mm``.

    :func:`jaxreg.data.random_velocity_field` on ``grid.downsample(4)`` (noise smoothed by ``smoothness_mm``),
    linearly resampled onto ``grid`` (a convex combination: the longest vector stays at most ``amplitude_mm``).
    """
    coarse = grid.downsample(4)
    v = random_velocity_field(key, coarse, smoothness_mm=smoothness_mm, max_displacement_mm=1.0).velocity
    return resample(Image(v, coarse), grid, order=1, mode="nearest").data * amplitude_mm


# -- grids -----------------------------------------------------------------------------------------------------
def _mr_grid(ct_grid: Grid, mask: np.ndarray, spacing: np.ndarray, margin_mm: float) -> Grid:
    """Axis box of ``mask`` plus ``margin_mm``, clipped to the CT's voxel centres, sampled at ``spacing``."""
    idx = np.argwhere(mask)
    ct_sp = ct_grid.spacing
    hi_lim = np.asarray(ct_grid.shape, np.float64) - 1
    lo = np.clip(idx.min(0) - margin_mm / ct_sp, 0.0, hi_lim)
    hi = np.clip(idx.max(0) + margin_mm / ct_sp, 0.0, hi_lim)
    extent = (hi - lo) * ct_sp
    shape = np.floor(extent / spacing + 1e-6).astype(int) + 1
    start = lo + 0.5 * (extent - (shape - 1) * spacing) / ct_sp  # centre the lattice in the box
    a = np.eye(4)
    a[:3, :3] = ct_grid.direction * spacing[None, :]
    a[:3, 3] = _world(ct_grid, start)
    return Grid(tuple(int(s) for s in shape), a)


def _padded(grid: Grid, pad: int) -> Grid:
    a = grid.affine
    a[:3, 3] = a[:3, 3] - a[:3, :3] @ np.full(3, float(pad))
    return Grid(tuple(s + 2 * pad for s in grid.shape), a)


# -- the velocity field ----------------------------------------------------------------------------------------
class _Structures(NamedTuple):
    """Per-structure parameters of the velocity field (arrays; counts are static through their shapes)."""

    femur_omega: jax.Array  # (F, 3, 3)
    femur_b: jax.Array  # (F, 3)
    femur_center: jax.Array  # (F, 3) pelvis-aligned frame
    organ_omega: jax.Array  # (I, 3, 3) incompressible organs
    organ_b: jax.Array  # (I, 3)
    organ_center: jax.Array  # (I, 3)
    margins: jax.Array  # (K,) margin of each distance map (mm)
    bladder_center: jax.Array  # (3,)


@functools.partial(
    jax.jit, static_argnames=("ct_grid", "vgrid", "n_femurs", "n_organs", "has_bladder", "has_bowel", "falloff")
)
def _velocity_parts(
    maps, part, p_matrix, p_offset, s: _Structures, k_bowel, k_tissue, bowel_mm, tissue_mm, *,
    ct_grid, vgrid, n_femurs, n_organs, has_bladder, has_bowel, falloff,
):  # fmt: skip
    """``(w0, g)``: the velocity is ``w0 + a g`` for a bladder rate ``a`` (both ``(*vgrid.shape, 3)``, mm).

    Distance maps (CT grid, channels: pelvis, femurs, organs, bladder, bowel) and the bone partition (nearest
    bone group, +100 in a bone voxel) are sampled at ``P(z)`` for the voxel centres ``z`` of ``vgrid``
    (pelvis-aligned frame): linearly, and by nearest neighbour.
    """
    z = vgrid.world_coords(jnp.float32)
    idx = ct_grid.world_to_index(z @ p_matrix.T + p_offset)
    d = map_coordinates(maps, idx, order=1, mode="nearest") - s.margins  # distance beyond each margin
    code = map_coordinates(part, idx, order=0, mode="nearest")
    in_bone = code >= 100  # the nearest CT voxel is a bone's
    nearest_bone = jnp.where(in_bone, code - 100, code)
    k = 1 + n_femurs
    e_bone = jnp.where(in_bone, 0.0, jnp.maximum(jnp.min(d[..., :k], axis=-1), 0.0))
    organ_v = [(z - s.organ_center[i]) @ s.organ_omega[i].T + s.organ_b[i] for i in range(n_organs)]
    organ_phi = [_smootherstep_falloff(d[..., k + i], 0.0, falloff) for i in range(n_organs)]
    if n_organs:
        # the bones' fall-off ends where an organ's margin begins (both stay exact) but keeps a width of at
        # least _GRADIENT x the organ's speed there + 1 mm (a velocity gradient <= 1/_GRADIENT: no tissue
        # enters a bone)
        e_organ = jnp.maximum(jnp.min(d[..., k : k + n_organs], axis=-1), 0.0)
        speeds = [p * jnp.linalg.norm(v, axis=-1) for p, v in zip(organ_phi, organ_v)]
        speed = jnp.max(jnp.stack(speeds), axis=0)
        width = jnp.minimum(falloff, jnp.maximum(e_bone + e_organ, _GRADIENT * speed + _MIN_WIDTH_MM))
        w_bone = _smootherstep_falloff(jnp.where(e_bone > 0, e_bone / width, 0.0), 0.0, 1.0)
    else:
        w_bone = _smootherstep_falloff(e_bone, 0.0, falloff)
    v = jnp.zeros(z.shape, jnp.float32)
    for f in range(n_femurs):
        vf = (z - s.femur_center[f]) @ s.femur_omega[f].T + s.femur_b[f]
        v = v + jnp.where((nearest_bone == f + 1)[..., None], vf, 0.0)
    w0 = w_bone[..., None] * v
    rest = 1.0 - w_bone
    for phi, vi in zip(organ_phi, organ_v):
        w0 = w0 + (rest * phi)[..., None] * vi
        rest = rest * (1.0 - phi)
    c = k + n_organs
    g = jnp.zeros_like(w0)
    if has_bladder:
        phi = _smootherstep_falloff(d[..., c], 0.0, falloff)
        g = (rest * phi)[..., None] * (z - s.bladder_center)
        rest = rest * (1.0 - phi)
        c += 1
    if has_bowel:
        phi = _smootherstep_falloff(d[..., c], 0.0, falloff)
        w0 = w0 + (rest * phi)[..., None] * _random_field(k_bowel, vgrid, bowel_mm, _BOWEL_SMOOTHNESS_MM)
        rest = rest * (1.0 - phi)
    w0 = w0 + rest[..., None] * _random_field(k_tissue, vgrid, tissue_mm, _TISSUE_SMOOTHNESS_MM)
    return w0, g


@functools.partial(jax.jit, static_argnames=("vgrid", "mr_grid", "ct_grid", "pad", "steps"))
def _flow(w, p_matrix, p_translation, p_center, indicator, *, vgrid, mr_grid, ct_grid, pad, steps):
    """``(u, n)``: the displacement ``(*mr_grid.shape, 3)`` (mm) of ``P o exp(w)`` at the MR voxel centres,
    and the sum over the MR voxels of the CT ``indicator`` linearly interpolated at ``P(exp(w)(x))`` (a soft
    count)."""
    u = VelocityField(w, vgrid, steps).exp().displacement
    u = u[pad:-pad, pad:-pad, pad:-pad] if pad else u
    rigid = Affine(p_matrix, p_translation, p_center)
    disp = to_displacement(compose(rigid, DisplacementField(u, mr_grid)), mr_grid).displacement
    idx = ct_grid.world_to_index(mr_grid.world_coords(jnp.float32) + disp)
    return disp, jnp.sum(map_coordinates(indicator, idx, order=1, mode="constant", cval=0.0))


@functools.partial(jax.jit, static_argnames=("ct_grid", "mr_grid"))
def _sample_ct(ct, ct_labels, displacement, *, ct_grid, mr_grid):
    """``(hu, labels, inside)`` on the MR grid: the CT and its labels pulled through the truth (linear and nearest
    neighbour; -1024 HU and label 0 where ``truth(x)`` leaves the CT, ``inside`` false there)."""
    truth = DisplacementField(displacement, mr_grid)
    idx = ct_grid.world_to_index(mr_grid.world_coords(jnp.float32) + displacement)
    inside = jnp.all((idx >= -0.5) & (idx <= jnp.asarray(ct_grid.shape, jnp.float32) - 0.5), axis=-1)
    hu = warp(Image(ct, ct_grid), truth, mr_grid, order=1, mode="nearest").data
    labels = warp_labels(Image(ct_labels, ct_grid), truth, mr_grid).data
    return jnp.where(inside, hu, -1024.0), labels, inside


@functools.partial(jax.jit, static_argnames=("mr_grid", "blur_mm"))
def _render_mr(
    key, hu, labels, body, inside, kind_table, mean_table, *, mr_grid, blur_mm, texture, bias, noise, jitter
):
    """The synthetic T2 image from the mapped CT numbers and labels (see the module docstring): no signal
    outside the ``body`` (air, the CT couch), Rician noise, exactly 0 where ``truth(x)`` leaves the CT."""
    k_tex, k_alpha, k_jit, k_bias, k_n1, k_n2 = jax.random.split(key, 6)
    n_tab = kind_table.shape[0]
    lab = jnp.clip(labels, 0, n_tab - 1)
    kind = jnp.where(labels > 0, kind_table[lab], 0)
    scale = 1.0 + jitter * jax.random.uniform(k_jit, (n_tab + 4,), jnp.float32, -1.0, 1.0)
    hu_bin = jnp.digitize(hu, jnp.asarray([-500.0, -30.0, 200.0]))  # air, fat, soft tissue, bone
    cls = jnp.where(kind > 0, lab, n_tab + hu_bin)
    mean = mean_table[lab] * scale[cls]
    curve = jnp.interp(hu, jnp.asarray(_HU_POINTS), jnp.asarray(_HU_T2)) * scale[cls]
    t_bone = jnp.clip((hu - 250.0) / 450.0, 0.0, 1.0)
    t_gas = jnp.clip((hu + 600.0) / 400.0, 0.0, 1.0)
    x = jnp.select(
        [kind == 1, kind == 2, kind == 3],
        [mean, mean * (1.0 - t_bone) + _CORTEX_T2 * t_bone, _AIR_T2 * (1.0 - t_gas) + mean * t_gas],
        curve,
    )
    fields = _smooth_noise(k_tex, mr_grid, 3, _TEXTURE_MM, 1)
    alpha = jax.random.normal(k_alpha, (n_tab + 4, 3), jnp.float32) / jnp.sqrt(3.0)
    x = x * (1.0 + texture * jnp.sum(alpha[cls] * fields, axis=-1))
    x = gaussian_smooth(jnp.where(body > 0, x, 0.0), mr_grid, blur_mm)
    b = _smooth_noise(k_bias, mr_grid, 1, _BIAS_MM, 8)[..., 0]
    x = x * (1.0 + bias * b / jnp.maximum(jnp.max(jnp.abs(b)), 1e-12))
    x = jnp.maximum(x, 0.0)
    real = x + noise * jax.random.normal(k_n1, x.shape)  # Rician: the magnitude of a complex Gaussian
    imag = noise * jax.random.normal(k_n2, x.shape)
    return jnp.where(inside, jnp.sqrt(real * real + imag * imag), 0.0).astype(jnp.float32)


def _body_mask(hu: np.ndarray, inside: np.ndarray, grid: Grid) -> np.ndarray:
    """``hu > -500`` inside the CT, closed, holes filled per axial slice, largest connected component."""
    from scipy import ndimage as ndi

    m = (hu > _BODY_HU) & inside
    if not m.any():
        return m.astype(np.uint8)
    m = ndi.binary_closing(m, structure=ndi.generate_binary_structure(3, 1), iterations=2, border_value=0) | m
    axial = int(np.argmax(np.abs(grid.direction[2])))  # the array axis closest to world z (superior)
    m = np.moveaxis(m, axial, 0)
    m = np.stack([ndi.binary_fill_holes(s) for s in m])
    m = np.moveaxis(m, 0, axial)
    lab, n = ndi.label(m)
    if n > 1:
        sizes = ndi.sum_labels(m, lab, index=np.arange(1, n + 1))
        m = lab == (1 + int(np.argmax(sizes)))
    return (m & inside).astype(np.uint8)


# -- the case --------------------------------------------------------------------------------------------------
def synthesize_daily_case(
    key: jax.Array,
    ct: Image,
    ct_labels: Image,
    groups: OrganGroups,
    *,
    mr_spacing: float | Sequence[float] = (2.5, 2.5, 3.0),
    mr_margin_mm: float = 20.0,
    pelvis_degrees: float = 2.0,
    pelvis_mm: float = 3.0,
    femur_degrees: float = 2.0,
    prostate_degrees: float = 3.0,
    prostate_mm: float = 5.0,
    bladder_volume: tuple[float, float] = (-0.3, 0.3),
    bowel_mm: float = 4.0,
    tissue_mm: float = 1.5,
    falloff_mm: float = 15.0,
    bias: float = 0.2,
    noise: float = 0.02,
    texture: float = 0.08,
    blur_mm: float | Sequence[float] | None = None,
    femurs: Sequence[int] = (75, 76),
    bladder: int | None = 21,
    bowel: Sequence[int] = (18,),
    fov_labels: Sequence[int] | None = None,
    steps: int = 7,
    bladder_iterations: int = 2,
) -> DailyCase:
    """Draw one synthetic treatment day: a daily MR of the planning CT's patient and the exact mapping.

    The construction (pelvis rigid motion composed with the flow of a poly-affine stationary velocity field,
    label-driven T2 synthesis) is described in the module docstring. Everything random comes from ``key``:
    the same key gives bit-identical output.

    Args:
      key: PRNG key (``jax.random.key(seed)`` or ``jax.random.PRNGKey(seed)``).
      ct: planning CT ``(X, Y, Z)`` in HU, 3-D, orthonormal axes.
      ct_labels: its integer label map (TotalSegmentator ``total`` classes) on ``ct``'s grid.
      groups: :class:`~jaxreg.radiotherapy.OrganGroups`; rigid labels are bones, incompressible labels move
        rigidly on their own, compressible labels are the bladder and bowel.
      mr_spacing: MR voxel size in mm per array axis (or one value); the MR keeps the CT's axis directions.
      mr_margin_mm: margin around the box of the ``fov_labels`` (mm); the box is clipped to the CT.
      pelvis_degrees: largest rotation of the pelvis about each world axis (degrees, uniform).
      pelvis_mm: largest pelvis translation along each world axis (mm, uniform).
      femur_degrees: largest extra rotation of each femur about its femoral head (degrees; the rotation angle,
        about a random axis).
      prostate_degrees: largest rotation of each incompressible organ about each axis, about its centroid
        (degrees), on top of the pelvis.
      prostate_mm: largest translation of each incompressible organ per axis (mm), on top of the pelvis.
      bladder_volume: range ``(low, high)`` of the relative bladder volume change ``dV``: the MR bladder holds
        ``(1 + dV)`` times the CT bladder's volume; ``low > -1``.
      bowel_mm: largest velocity of the bowel's random smooth field (mm).
      tissue_mm: largest velocity of the background's random smooth field (mm).
      falloff_mm: width of each structure's weight fall-off (mm).
      bias: largest relative amplitude of the multiplicative bias field (0.2: intensities scaled by 0.8..1.2).
      noise: standard deviation of the Rician noise (image units; fat is ~0.85).
      texture: relative amplitude of the within-tissue texture.
      blur_mm: standard deviation of the partial-volume blur in mm (per axis or one value); default half the MR
        spacing.
      femurs: rigid labels that rotate about their superior end (the femoral head) on top of the pelvis;
        values that are not in ``groups.rigid`` are ignored.
      bladder: the compressible label that changes volume (None: none does); it must occur in ``ct_labels``.
      bowel: extra labels moving like bowel when present in ``ct_labels`` (besides the compressible labels other
        than ``bladder``).
      fov_labels: labels whose box defines the MR field of view; default the rigid and incompressible labels
        and the bladder.
      steps: scaling-and-squaring steps of the velocity field.
      bladder_iterations: secant corrections of the bladder's rate towards the sampled volume factor (0: use
        ``a = -ln(1 + dV) / 3``).

    Returns:
      A :class:`DailyCase`.

    Raises:
      TypeError: ``ct``/``ct_labels`` not Images, ``groups`` not OrganGroups, ``key`` not a key.
      ValueError: ``ct_labels`` on another grid than ``ct``, a groups label absent from ``ct_labels`` (or in two
        groups), a 2-D or sheared CT, a missing ``bladder`` or ``fov_labels`` label, or an invalid option (each
        message names the argument).
    """
    # -- checks --------------------------------------------------------------------------------------------
    if not isinstance(key, jax.Array):
        raise TypeError(f"key: expected a JAX PRNG key (jax.random.key(seed)), got {type(key).__name__}")
    if not isinstance(ct, Image):
        raise TypeError(f"ct: expected a jaxreg Image (the planning CT), got {type(ct).__name__}")
    if not isinstance(groups, OrganGroups):
        raise TypeError(f"groups: expected an OrganGroups, got {type(groups).__name__}")
    if ct.grid.ndim != 3 or ct.has_channels:
        raise ValueError(f"ct: expected a single-channel 3-D image, got {tuple(ct.data.shape)} on {ct.grid}")
    if isinstance(ct_labels, Image) and ct_labels.has_channels:
        raise ValueError(f"ct_labels: expected a single-channel label map, got {tuple(ct_labels.data.shape)}")
    groups.check(ct_labels, name="ct_labels", image=ct)
    labels_np = np.asarray(ct_labels.data).astype(np.int32)
    seen: dict[int, str] = {}
    for gname, vals in zip(("rigid", "incompressible", "compressible"), groups):
        for v in vals:
            if v in seen:
                raise ValueError(f"groups: label {v} is in both {seen[v]} and {gname}; a label has one group")
            seen[v] = gname
    d = ct.grid.direction
    if not np.allclose(d.T @ d, np.eye(3), atol=1e-5):
        raise ValueError("ct: expected orthonormal axes (distances in mm), this grid is sheared")
    sp = np.broadcast_to(np.asarray(mr_spacing, np.float64), (3,)).copy()
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"mr_spacing: expected positive voxel sizes in mm, got {mr_spacing!r}")
    mr_margin_mm = _nonneg(mr_margin_mm, "mr_margin_mm", " mm")
    pelvis_degrees = _degrees(pelvis_degrees, "pelvis_degrees")
    femur_degrees = _degrees(femur_degrees, "femur_degrees")
    prostate_degrees = _degrees(prostate_degrees, "prostate_degrees")
    pelvis_mm = _nonneg(pelvis_mm, "pelvis_mm", " mm")
    prostate_mm = _nonneg(prostate_mm, "prostate_mm", " mm")
    bowel_mm = _nonneg(bowel_mm, "bowel_mm", " mm")
    tissue_mm = _nonneg(tissue_mm, "tissue_mm", " mm")
    falloff_mm = _nonneg(falloff_mm, "falloff_mm", " mm")
    if falloff_mm <= 0:
        raise ValueError(f"falloff_mm: expected a positive width in mm, got {falloff_mm!r}")
    bias = _nonneg(bias, "bias")
    if bias >= 1:
        raise ValueError(f"bias: expected a relative amplitude below 1, got {bias!r}")
    noise = _nonneg(noise, "noise")
    texture = _nonneg(texture, "texture")
    try:
        dv_lo, dv_hi = (float(v) for v in bladder_volume)
    except (TypeError, ValueError):
        raise ValueError(f"bladder_volume: expected a pair (low, high), got {bladder_volume!r}") from None
    if not (-1 < dv_lo <= dv_hi and math.isfinite(dv_hi)):
        raise ValueError(f"bladder_volume: expected -1 < low <= high, got {bladder_volume!r}")
    blur = 0.5 * sp if blur_mm is None else np.broadcast_to(np.asarray(blur_mm, np.float64), (3,)).copy()
    if not np.all(np.isfinite(blur)) or np.any(blur < 0):
        raise ValueError(f"blur_mm: expected non-negative standard deviations in mm, got {blur_mm!r}")
    if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or not 0 <= steps <= 20:
        raise ValueError(f"steps: expected an integer number of squarings in [0, 20], got {steps!r}")
    if not isinstance(bladder_iterations, (int, np.integer)) or not 0 <= bladder_iterations <= 10:
        raise ValueError(f"bladder_iterations: expected an integer in [0, 10], got {bladder_iterations!r}")

    present = set(np.unique(labels_np).tolist())
    femur_labels = tuple(v for v in _labels_tuple(femurs, "femurs") if v in groups.rigid)
    pelvis_labels = tuple(v for v in groups.rigid if v not in femur_labels)
    organ_labels = tuple(groups.incompressible)
    if bladder is not None:
        if not isinstance(bladder, (int, np.integer)) or isinstance(bladder, bool):
            raise ValueError(f"bladder: expected an integer label value or None, got {bladder!r}")
        bladder = int(bladder)
        if bladder not in present:
            raise ValueError(f"bladder: label {bladder} does not occur in ct_labels; pass bladder=None")
        if bladder in groups.rigid or bladder in groups.incompressible:
            raise ValueError(f"bladder: label {bladder} is in groups.{seen[bladder]}, not a compressible organ")
    bowel_labels = tuple(v for v in groups.compressible if v != bladder) + tuple(
        v for v in _labels_tuple(bowel, "bowel") if v in present and v not in seen and v != bladder
    )
    if fov_labels is None:
        fov = groups.rigid + groups.incompressible + ((bladder,) if bladder is not None else ())
    else:
        fov = _labels_tuple(fov_labels, "fov_labels")
        missing = [v for v in fov if v not in present]
        if missing:
            raise ValueError(f"fov_labels: label(s) {missing} do not occur in ct_labels")
    if not fov:
        raise ValueError("fov_labels: no label defines the MR field of view (no groups and no bladder)")

    # -- distance maps on the CT grid (mm) --------------------------------------------------------------------
    ct_grid = ct.grid
    spacing = tuple(float(s) for s in ct_grid.spacing)
    ct_diag = float(np.linalg.norm(ct_grid.spacing))
    stencil = float(np.linalg.norm(sp))  # a velocity-grid voxel diagonal: how far a linear interpolation reads
    big = np.float32(1e4)

    def dist(vals: Sequence[int]) -> np.ndarray:
        m = np.isin(labels_np, vals)
        if not m.any():
            return np.full(labels_np.shape, big, np.float32)
        return np.minimum(np.asarray(euclidean_distance_transform(m, spacing=spacing)), big)

    def voxels(vals: Sequence[int]) -> np.ndarray:
        return _world(ct_grid, np.argwhere(np.isin(labels_np, vals)).astype(np.float64))

    bone_maps = [dist(pelvis_labels)] + [dist([f]) for f in femur_labels]
    organ_maps = [dist([i]) for i in organ_labels]

    # -- sampling ---------------------------------------------------------------------------------------------
    k_pelvis, k_femur, k_organ, k_bladder, k_bowel, k_tissue, k_mr = jax.random.split(key, 7)
    kp1, kp2 = jax.random.split(k_pelvis)
    c_pelvis = (voxels(pelvis_labels or groups.rigid) if groups.rigid else voxels(fov)).mean(0)
    pelvis_euler = _uniform3(kp1, pelvis_degrees)
    pelvis_t = _uniform3(kp2, pelvis_mm)
    h_pelvis = _rigid_matrix(_rotation(pelvis_euler), pelvis_t, c_pelvis)
    h_pelvis_inv = np.linalg.inv(h_pelvis)

    def to_frame(p: np.ndarray) -> np.ndarray:  # CT points -> pelvis-aligned frame z = P^-1 y
        return p @ h_pelvis_inv[:3, :3].T + h_pelvis_inv[:3, 3]

    def moved(h: np.ndarray, p: np.ndarray) -> float:  # largest |h(z) - z| over points p (frame)
        return float(np.max(np.linalg.norm(p @ h[:3, :3].T + h[:3, 3] - p, axis=1))) if len(p) else 0.0

    motion: dict[str, Any] = {
        "key": _key_data(key),
        "convention": "pull: ct_point = M @ [mr_point, 1], world RAS mm; truth = pelvis o exp(w)",
        "pelvis": {
            "labels": list(pelvis_labels),
            "rotation_deg": pelvis_euler.tolist(),
            "euler_order": "xyz (extrinsic)",
            "translation_mm": pelvis_t.tolist(),
            "center_mm": c_pelvis.tolist(),
            "matrix": h_pelvis.tolist(),
        },
        "femurs": {},
        "incompressible": {},
    }
    matrices = {v: h_pelvis for v in pelvis_labels}

    femur_omega, femur_b, femur_c, femur_margin, femur_bound = [], [], [], [], []
    for f in femur_labels:
        pts = voxels([f])
        head, radius = _femoral_head(pts, labels_np == f, bone_maps[0], ct_grid)
        femur_bound.append(math.radians(femur_degrees) * float(np.max(np.linalg.norm(pts - head, axis=1))))
        ka, kb = jax.random.split(jax.random.fold_in(k_femur, f))
        axis = np.asarray(jax.random.normal(ka, (3,), jnp.float32), np.float64)
        axis = axis / max(float(np.linalg.norm(axis)), 1e-12)
        angle = float(jax.random.uniform(kb, (), jnp.float32, 0.0, 1.0)) * femur_degrees
        c_frame = to_frame(head[None])[0]
        h_f = _rigid_matrix(_rotation_vector(np.deg2rad(angle) * axis), np.zeros(3), c_frame)
        om, b = _affine_velocity(h_f, c_frame)
        femur_omega.append(om), femur_b.append(b), femur_c.append(c_frame)
        femur_margin.append(ct_diag + stencil + moved(h_f, to_frame(pts)) + 0.5)
        matrices[f] = h_pelvis @ h_f
        motion["femurs"][str(f)] = {
            "rotation_deg": angle,
            "axis": axis.tolist(),
            "head_center_mm": head.tolist(),
            "head_radius_mm": radius,
            "matrix": matrices[f].tolist(),
        }

    organ_omega, organ_b, organ_c, organ_margin, organ_bound = [], [], [], [], []
    for i in organ_labels:
        pts = voxels([i])
        c = pts.mean(0)
        c_frame = to_frame(c[None])[0]
        radius = float(np.max(np.linalg.norm(pts - c, axis=1)))
        organ_bound.append(math.sqrt(3.0) * (prostate_mm + math.radians(prostate_degrees) * radius))
        ka, kb = jax.random.split(jax.random.fold_in(k_organ, i))
        eul, t = _uniform3(ka, prostate_degrees), _uniform3(kb, prostate_mm)
        h_i = _rigid_matrix(_rotation(eul), t, c_frame)
        om, b = _affine_velocity(h_i, c_frame)
        organ_omega.append(om), organ_b.append(b), organ_c.append(c_frame)
        organ_margin.append(ct_diag + stencil + moved(h_i, to_frame(pts)) + 0.5)
        matrices[i] = h_pelvis @ h_i
        motion["incompressible"][str(i)] = {
            "rotation_deg": eul.tolist(),
            "euler_order": "xyz (extrinsic)",
            "translation_mm": t.tolist(),
            "center_mm": c.tolist(),
            "matrix": matrices[i].tolist(),
        }

    dv = float(jax.random.uniform(k_bladder, (), jnp.float32, dv_lo, dv_hi)) if bladder is not None else 0.0
    rate0 = -math.log1p(dv) / 3.0
    rate_bound = max(abs(math.log1p(dv_lo)), abs(math.log1p(dv_hi))) / 3.0 if bladder is not None else 0.0
    if bladder is not None:
        bl_pts = voxels([bladder])
        c_bladder = bl_pts.mean(0)
        bl_radius = float(np.max(np.linalg.norm(bl_pts - c_bladder, axis=1)))
        bl_margin = ct_diag + stencil + abs(rate0) * bl_radius
    else:
        c_bladder, bl_radius, bl_margin = np.zeros(3), 0.0, 0.0

    # -- grids ------------------------------------------------------------------------------------------------
    mr_grid = _mr_grid(ct_grid, np.isin(labels_np, fov), sp, mr_margin_mm)
    # padding of the velocity grid beyond the MR grid: the largest displacement any sample could have (a bound
    # from the options, not the draw, so every key gives the same grids and nothing recompiles)
    bound = max([0.0, *femur_bound, *organ_bound, bowel_mm, tissue_mm, 2.0 * rate_bound * bl_radius])
    pad = int(math.ceil((bound + stencil + 1.0) / float(sp.min())))
    vgrid = _padded(mr_grid, pad)

    # -- the velocity field in the pelvis-aligned frame ------------------------------------------------------
    maps = bone_maps + organ_maps
    # the motionless pelvis: weight 1 over its CT voxels, i.e. up to the largest trilinearly interpolated
    # distance inside a voxel (1.12 voxels at a voxel's corner); continuous beyond, so no tissue flows in
    margins = [0.65 * ct_diag] + femur_margin + organ_margin
    if bladder is not None:
        maps.append(dist([bladder]))
        margins.append(bl_margin)
    if bowel_labels:
        maps.append(dist(bowel_labels))
        margins.append(ct_diag + bowel_mm)
    # nearest bone group (0 pelvis, f + 1 femur f), + 100 inside a bone voxel
    part = np.argmin(np.stack(bone_maps), axis=0) + 100 * np.isin(labels_np, groups.rigid)
    maps_j = jnp.asarray(np.stack(maps, axis=-1))
    del maps, bone_maps, organ_maps

    f32 = functools.partial(jnp.asarray, dtype=jnp.float32)

    def stack(xs: list, shape: tuple[int, ...]) -> jax.Array:
        return f32(np.stack(xs)) if xs else jnp.zeros((0, *shape), jnp.float32)

    structs = _Structures(
        stack(femur_omega, (3, 3)), stack(femur_b, (3,)), stack(femur_c, (3,)),
        stack(organ_omega, (3, 3)), stack(organ_b, (3,)), stack(organ_c, (3,)),
        f32(margins), f32(to_frame(c_bladder[None])[0]),
    )  # fmt: skip
    w0, g = _velocity_parts(
        maps_j, f32(part), f32(h_pelvis[:3, :3]), f32(h_pelvis[:3, 3]), structs, k_bowel, k_tissue,
        jnp.float32(bowel_mm), jnp.float32(tissue_mm),
        ct_grid=ct_grid, vgrid=vgrid, n_femurs=len(femur_labels), n_organs=len(organ_labels),
        has_bladder=bladder is not None, has_bowel=bool(bowel_labels), falloff=float(falloff_mm),
    )  # fmt: skip
    del maps_j

    p_args = (f32(h_pelvis[:3, :3]), f32(pelvis_t), f32(c_pelvis))
    flow = functools.partial(_flow, vgrid=vgrid, mr_grid=mr_grid, ct_grid=ct_grid, pad=pad, steps=int(steps))

    # -- bladder rate: a = -ln(1 + dV) / 3, corrected by secant steps on the achieved (soft) volume ratio -----
    rate = rate0
    ratio = None
    if bladder is not None:
        indicator = jnp.asarray((labels_np == bladder).astype(np.float32))
        vol_ct = float(np.sum(labels_np == bladder)) * float(np.prod(ct_grid.spacing))
        vox_mr = float(np.prod(sp))

        def volume_ratio(a: float) -> tuple[float, jax.Array]:
            disp, soft = flow(w0 + jnp.float32(a) * g, *p_args, indicator)
            return float(soft) * vox_mr / vol_ct, disp

        target = math.log1p(dv)
        ratio, disp = volume_ratio(rate)
        history = [(rate, math.log(ratio))]
        for _ in range(int(bladder_iterations) if dv != 0 else 0):
            if abs(history[-1][1] - target) < 1e-4:
                break
            if len(history) == 1:
                lr = history[-1][1]
                new = rate * target / lr if abs(lr) > 1e-9 and lr * target > 0 else rate
            else:
                (a0, l0), (a1, l1) = history[-2], history[-1]
                new = a1 + (target - l1) * (a1 - a0) / (l1 - l0) if abs(l1 - l0) > 1e-12 else a1
            lo, hi = sorted((0.5 * rate0, 2.0 * rate0))
            new = float(np.clip(new, lo, hi))
            if new == rate:
                break
            rate = new
            ratio, disp = volume_ratio(rate)
            history.append((rate, math.log(ratio)))
        del indicator
    else:
        disp, _ = flow(w0, *p_args, jnp.zeros(ct_grid.shape, jnp.float32))
    truth = DisplacementField(disp, mr_grid)
    del w0, g

    # -- the MR ------------------------------------------------------------------------------------------------
    n_tab = max([max(T2_TISSUES), int(labels_np.max())]) + 1
    kind_table = np.zeros(n_tab, np.int32)
    mean_table = np.zeros(n_tab, np.float32)
    for v, (kind, mean) in T2_TISSUES.items():
        kind_table[v], mean_table[v] = _KIND_IDS[kind], mean
    hu, mr_labels, inside = _sample_ct(
        jnp.asarray(ct.data, jnp.float32), jnp.asarray(labels_np), disp, ct_grid=ct_grid, mr_grid=mr_grid
    )
    inside = np.asarray(inside)
    body = _body_mask(np.asarray(hu), inside, mr_grid)
    mr = _render_mr(
        k_mr, hu, mr_labels, jnp.asarray(body), jnp.asarray(inside), jnp.asarray(kind_table),
        jnp.asarray(mean_table),
        mr_grid=mr_grid, blur_mm=tuple(float(b) for b in blur),
        texture=jnp.float32(texture), bias=jnp.float32(bias), noise=jnp.float32(noise),
        jitter=jnp.float32(_CONTRAST_JITTER),
    )  # fmt: skip

    # -- what was sampled and achieved ------------------------------------------------------------------------
    stats = jacobian_statistics(truth, mr_grid)
    mr_lab_np = np.asarray(mr_labels)
    motion["bladder"] = None
    if bladder is not None:
        vol_mr = float(np.sum(mr_lab_np == bladder)) * float(np.prod(sp))
        motion["bladder"] = {
            "label": bladder,
            "dV": dv,
            "volume_factor": 1.0 + dv,
            "rate": rate,
            "rate_nominal": rate0,
            "center_mm": c_bladder.tolist(),
            "volume_ct_ml": vol_ct / 1000.0,
            "volume_mr_ml": vol_mr / 1000.0,
            "volume_ratio_soft": ratio,
        }
    motion["bowel"] = {
        "labels": list(bowel_labels), "amplitude_mm": bowel_mm, "smoothness_mm": _BOWEL_SMOOTHNESS_MM
    }
    motion["tissue"] = {"amplitude_mm": tissue_mm, "smoothness_mm": _TISSUE_SMOOTHNESS_MM}
    motion["weights"] = {
        "falloff_mm": falloff_mm,
        "margins_mm": dict(zip(
            ["pelvis"] + [str(f) for f in femur_labels] + [str(i) for i in organ_labels]
            + (["bladder"] if bladder is not None else []) + (["bowel"] if bowel_labels else []),
            [float(m) for m in margins],
        )),
    }  # fmt: skip
    motion["matrices"] = {str(v): matrices[v].tolist() for v in sorted(matrices)}
    motion["mr"] = {
        "shape": list(mr_grid.shape),
        "spacing_mm": sp.tolist(),
        "affine": mr_grid.affine.tolist(),
        "velocity_padding_voxels": pad,
        "steps": int(steps),
        "bias": bias,
        "noise": noise,
        "texture": texture,
        "blur_mm": blur.tolist(),
    }
    # achieved rigidity: |truth(x) - M x| over the MR voxels of each rigid and incompressible label
    x = _world(mr_grid, np.stack(np.meshgrid(*(np.arange(n, dtype=np.float64) for n in mr_grid.shape),
                                             indexing="ij"), axis=-1))  # fmt: skip
    disp_np = np.asarray(disp, np.float64)
    y = x + disp_np
    rigid_error = {}
    for v in sorted(matrices):
        sel = mr_lab_np == v
        if sel.any():
            err = np.linalg.norm(_apply(matrices[v], x[sel]) - y[sel], axis=-1)
            rigid_error[str(v)] = {"max": float(err.max()), "fraction_below_0.05": float(np.mean(err < 0.05))}
    motion["truth"] = {
        "rigid_error_mm": rigid_error,
        "max_displacement_mm": float(np.max(np.linalg.norm(disp_np, axis=-1))),
        "min_det_jacobian": float(stats.min),
        "max_det_jacobian": float(stats.max),
        "folding_voxels": int(stats.num_nonpositive),
        "inside_ct_fraction": float(np.mean(inside)),
    }
    return DailyCase(
        ct,
        ct_labels,
        Image(mr, mr_grid),
        Image(jnp.asarray(mr_lab_np, jnp.int32), mr_grid),
        Image(jnp.asarray(body), mr_grid),
        truth,
        motion,
    )


# -- writing ---------------------------------------------------------------------------------------------------
CASE_FILES = {
    "ct": "ct.nii.gz",
    "ct_labels": "ct_labels.nii.gz",
    "mr": "mr.nii.gz",
    "mr_labels": "mr_labels.nii.gz",
    "body": "body.nii.gz",
    "truth": "truth.nii.gz",
    "motion": "motion.json",
}


def save_case(case: DailyCase, outdir: PathLike, *, inputs: Iterable[PathLike] = ()) -> dict[str, Path]:
    """Write a :class:`DailyCase` into ``outdir``, each file atomically (temporary file, then rename).

    Files: ``ct.nii.gz``, ``ct_labels.nii.gz``, ``mr.nii.gz`` (float32), ``mr_labels.nii.gz`` (int32),
    ``body.nii.gz`` (uint8), ``truth.nii.gz`` (the ITK/ANTs displacement field of
    :func:`jaxreg.io.write_displacement_field`: LPS vectors, ``(X, Y, Z, 1, 3)``, on the MR grid; with
    ``antsApplyTransforms -r mr.nii.gz -i ct.nii.gz -t truth.nii.gz`` it pulls the CT onto the MR) and
    ``motion.json``. Every path is checked against ``inputs`` before anything is written.

    Args:
      case: the case.
      outdir: output folder; created (with parents) when missing.
      inputs: paths the case was made from (the CT, its labels); none of them is overwritten.

    Returns:
      ``{name: path}`` of the written files (names ``ct``, ``ct_labels``, ``mr``, ``mr_labels``, ``body``,
      ``truth``, ``motion``).

    Raises:
      TypeError: ``case`` is not a DailyCase.
      ValueError: ``outdir`` is an existing file, or an output path is one of ``inputs``.
    """
    from jaxreg.io import atomic_write, check_not_input, save_image, write_displacement_field

    if not isinstance(case, DailyCase):
        raise TypeError(f"case: expected a DailyCase, got {type(case).__name__}")
    out = Path(outdir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"outdir: {os.fspath(outdir)} exists and is not a folder")
    inputs = [Path(p) for p in inputs]
    paths = {k: out / v for k, v in CASE_FILES.items()}
    for p in paths.values():
        check_not_input(p, inputs)
    text = json.dumps(case.motion, indent=1, allow_nan=False) + "\n"  # fails before writing if not JSON
    out.mkdir(parents=True, exist_ok=True)
    save_image(case.ct, paths["ct"], inputs=inputs)
    save_image(case.ct_labels, paths["ct_labels"], inputs=inputs)
    save_image(case.mr, paths["mr"], dtype=np.float32, inputs=inputs)
    save_image(case.mr_labels, paths["mr_labels"], dtype=np.int32, inputs=inputs)
    save_image(case.body, paths["body"], dtype=np.uint8, inputs=inputs)
    write_displacement_field(case.truth, paths["truth"], dtype=np.float32, inputs=inputs)
    atomic_write(paths["motion"], lambda tmp: Path(tmp).write_text(text), inputs=inputs)
    return paths
