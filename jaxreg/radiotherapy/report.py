"""Per-organ report of a planning CT <-> daily MR registration: overlap, distances, volume and rigidity.

For each organ of the :class:`~jaxreg.radiotherapy.OrganGroups` (and any other label asked for),
:func:`organ_report` measures the registration ``T`` (pull: fixed world mm -> moving world mm) where that organ
lies in the fixed image:

* ``dice``, ``hd95_mm`` -- the CT's organ carried to the other side vs that side's reference labels (when given);
* ``centroid_error_mm`` -- distance between the centroids of the carried organ and the reference organ;
* ``volume_change_pct`` -- ``100 (mean_organ det J - 1)``: how much the mapping compresses or expands the organ;
* ``rigid_residual_mm`` -- RMS residual of the best rigid fit (Kabsch/Procrustes, no scaling) of
  ``x -> T(x)`` over the organ's voxels: 0 for a mapping that moves the organ rigidly;
* ``orthonormality_pct`` -- ``100 mean_organ max_k |sigma_k(J) - 1|``, the largest deviation of the Jacobian's
  singular values from 1 (0 for a local rotation, ``100 s`` for a scaling by ``1 + s``);
* ``error_mm`` / ``error_max_mm`` -- with a ground-truth mapping, ``|T(x) - T_true(x)|`` over the organ.

The organ's voxels in the fixed image are its reference labels on the fixed grid when the CT is fixed
(``side="fixed"``); when the CT is moving they are the voxels whose image ``T(x)`` falls in the organ (the CT's
labels pulled through ``T``), or the reference labels when ``reference_on_fixed`` is passed.

References: W. Kabsch, Acta Cryst. A32, 1976 (best rigid fit); M. Staring et al., Med. Phys. 2007 (rigidity of a
registration over bones).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxreg.core.grid import Grid, Image
from jaxreg.evaluation.distance import hd95_per_label
from jaxreg.radiotherapy.groups import GROUP_NAMES, OrganGroups
from jaxreg.transforms.base import Transform
from jaxreg.transforms.jacobian import jacobian
from jaxreg.warp import warp_labels

__all__ = ["ORGAN_COLUMNS", "format_organ_table", "organ_report", "rigid_fit_residual"]

ORGAN_COLUMNS = (
    "label",
    "name",
    "group",
    "voxels",
    "dice",
    "hd95_mm",
    "centroid_error_mm",
    "volume_change_pct",
    "rigid_residual_mm",
    "orthonormality_pct",
    "error_mm",
    "error_max_mm",
)


def rigid_fit_residual(points: np.ndarray, mapped: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """RMS residual (mm) of the best rigid fit ``mapped ~ R points + t`` (Kabsch, proper rotation).

    Args:
      points: ``(N, ndim)`` world mm.
      mapped: ``(N, ndim)`` their images under a mapping, world mm.

    Returns:
      ``(rms, R, t)`` with ``R`` ``(ndim, ndim)`` (``det R = +1``) and ``t`` ``(ndim,)``.
    """
    p = np.asarray(points, np.float64)
    q = np.asarray(mapped, np.float64)
    if p.shape != q.shape or p.ndim != 2 or len(p) < p.shape[1] + 1:
        raise ValueError(f"points: expected two (N, ndim) arrays with N > ndim, got {p.shape} and {q.shape}")
    pc, qc = p.mean(0), q.mean(0)
    h = (p - pc).T @ (q - qc)
    u, _, vt = np.linalg.svd(h)
    d = np.ones(p.shape[1])
    d[-1] = np.sign(np.linalg.det(vt.T @ u.T)) or 1.0
    r = vt.T @ np.diag(d) @ u.T
    t = qc - r @ pc
    res = q - (p @ r.T + t)
    return float(np.sqrt(np.mean(np.sum(res**2, axis=1)))), r, t


@functools.partial(jax.jit, static_argnums=1)
def _jacobian_stats(transform: Transform, grid: Grid) -> tuple[jax.Array, jax.Array]:
    """``det J`` and ``max_k |sigma_k(J) - 1|`` of ``transform`` at the voxels of ``grid``."""
    j = jacobian(transform, grid)
    s = jnp.linalg.svd(j, compute_uv=False)
    return jnp.linalg.det(j), jnp.max(jnp.abs(s - 1.0), axis=-1)


def _centroid(mask: np.ndarray, grid: Grid) -> np.ndarray | None:
    idx = np.argwhere(mask)
    if not len(idx):
        return None
    return np.asarray(grid.index_to_world(jnp.asarray(idx.mean(0), jnp.float32)))


def organ_report(
    transform: Transform,
    ct_labels: Image,
    groups: OrganGroups,
    *,
    fixed_grid: Grid,
    moving_grid: Grid,
    side: str = "moving",
    reference: Image | None = None,
    truth: Transform | None = None,
    names: Mapping[int, str] | None = None,
    extra_labels: Sequence[int] = (),
) -> list[dict[str, Any]]:
    """Per-organ figures of a registration (module docstring), one row per label.

    Args:
      transform: the registration's pull transform, fixed world mm -> moving world mm.
      ct_labels: the CT's labels (on the moving grid when ``side="moving"``, on the fixed grid otherwise).
      groups: the organ groups; each of their labels gets a row (in group order), then ``extra_labels``.
      fixed_grid: the fixed image's grid.
      moving_grid: the moving image's grid.
      side: ``"moving"`` (CT moving) or ``"fixed"`` (CT fixed).
      reference: the other image's labels in the same label space (on its grid), for Dice, HD95 and centroids.
      truth: a ground-truth pull transform fixed -> moving, for ``error_mm``.
      names: label names for the ``name`` column.
      extra_labels: more labels to report (group ``"other"``).

    Returns:
      A list of dicts with the keys :data:`ORGAN_COLUMNS` (``None`` where a figure does not apply).

    Raises:
      ValueError: labels on the wrong grid, an unknown ``side``, groups absent from the labels.
    """
    if side not in ("fixed", "moving"):
        raise ValueError(f"side: expected 'fixed' or 'moving', got {side!r}")
    ct_grid = moving_grid if side == "moving" else fixed_grid
    other_grid = fixed_grid if side == "moving" else moving_grid
    if ct_labels.grid != ct_grid:
        raise ValueError(f"ct_labels: expected the {side} image's grid {ct_grid.shape}, got {ct_labels.grid.shape}")
    if reference is not None and reference.grid != other_grid:
        raise ValueError(
            f"reference: expected the other image's grid {other_grid.shape}, got {reference.grid.shape}"
        )
    groups.check(ct_labels, name="ct_labels")
    rows_spec = [(v, g) for g, vals in zip(GROUP_NAMES, groups) for v in vals]
    rows_spec += [(int(v), "other") for v in extra_labels if int(v) not in groups.labels]

    pts = fixed_grid.world_coords(jnp.float32)
    mapped = transform.sample_grid(fixed_grid, jnp.float32)
    detj, ortho = _jacobian_stats(transform, fixed_grid)
    detj, ortho = np.asarray(detj), np.asarray(ortho)
    pts_np, mapped_np = np.asarray(pts), np.asarray(mapped)
    err = None if truth is None else np.linalg.norm(mapped_np - np.asarray(truth.sample_grid(fixed_grid, jnp.float32)), axis=-1)

    if side == "moving":
        on_fixed = np.asarray(warp_labels(ct_labels, transform, fixed_grid).data)  # the CT's organs carried to the MR
        ref_fixed = None if reference is None else np.asarray(reference.data)
    else:
        on_fixed = np.asarray(ct_labels.data)
        ref_fixed = None
    carried_other = on_fixed if side == "moving" else None
    ref_other = None if reference is None else np.asarray(reference.data)
    if side == "fixed" and reference is not None:
        # the MR's labels pulled into the CT (fixed) frame: compared with the CT's labels there
        carried_other = np.asarray(warp_labels(reference, transform, fixed_grid).data)
        ref_other = np.asarray(ct_labels.data)
    vals = [v for v, _ in rows_spec]
    hd = None
    if reference is not None:
        hd = np.asarray(
            hd95_per_label(
                jnp.asarray(carried_other), jnp.asarray(ref_other), labels=vals, spacing=tuple(fixed_grid.spacing)
            )
        )
    rows = []
    for i, (v, g) in enumerate(rows_spec):
        region = (ref_fixed == v) if ref_fixed is not None else (on_fixed == v)
        row: dict[str, Any] = dict.fromkeys(ORGAN_COLUMNS)
        row.update(label=v, name=(names or {}).get(v, str(v)), group=g, voxels=int(region.sum()))
        if reference is not None:
            a, b = carried_other == v, ref_other == v
            denom = a.sum() + b.sum()
            row["dice"] = float(2 * np.logical_and(a, b).sum() / denom) if denom else None
            row["hd95_mm"] = float(hd[i]) if np.isfinite(hd[i]) else None
            ca, cb = _centroid(a, fixed_grid), _centroid(b, fixed_grid)
            if ca is not None and cb is not None:
                row["centroid_error_mm"] = float(np.linalg.norm(ca - cb))
        if region.any():
            row["volume_change_pct"] = float(100 * (detj[region].mean() - 1.0))
            row["orthonormality_pct"] = float(100 * ortho[region].mean())
            if region.sum() > fixed_grid.ndim:
                row["rigid_residual_mm"] = rigid_fit_residual(pts_np[region], mapped_np[region])[0]
            if err is not None:
                row["error_mm"] = float(err[region].mean())
                row["error_max_mm"] = float(err[region].max())
        rows.append(row)
    return rows


def format_organ_table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Text lines of a per-organ table (:func:`organ_report`'s rows), for terminals and reports."""
    cols = [
        ("organ", 22), ("group", 14), ("Dice", 6), ("HD95", 6), ("centr.", 6), ("vol%", 6), ("rigid", 6),
        ("orth%", 6), ("err", 6),
    ]
    keys = ["dice", "hd95_mm", "centroid_error_mm", "volume_change_pct", "rigid_residual_mm", "orthonormality_pct", "error_mm"]
    head = " ".join(f"{c:>{w}}" if i > 1 else f"{c:<{w}}" for i, (c, w) in enumerate(cols))
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = [f"{(str(r['label']) + ' ' + str(r['name']))[:22]:<22}", f"{r['group']:<14}"]
        for k in keys:
            v = r.get(k)
            fmt = "{:6.3f}" if k == "dice" else "{:6.2f}"
            cells.append(fmt.format(v) if v is not None else f"{'-':>6}")
        lines.append(" ".join(cells))
    lines.append("(HD95, centroid, rigid residual, error in mm; vol% = 100 (mean det J - 1); orth% = mean max|sigma(J) - 1|)")
    return lines
