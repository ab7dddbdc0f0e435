"""One-page figure of a registration: images, differences, the deformation and the loss curves.

:func:`registration_report` draws, for each slice plane (the whole image in 2D; axial, coronal and sagittal
slices through the centre in 3D), one row of panels:

``fixed | moving (before) | warped | checkerboard (fixed / warped) | fixed - moving | fixed - warped |
deformation grid | det J``

and, below, one plot of the loss per iteration for each stage (coarse-to-fine levels one after the other,
level boundaries marked). "moving (before)" is the moving image resampled on the fixed grid with the identity
(world coordinates), so "fixed - moving" is the misalignment before registration. The deformation grid shows
lines of the fixed grid mapped through the deformable part of the transform (pull direction, see
:func:`jaxreg.plot.plot_grid`) over the fixed image; ``det J`` is the Jacobian determinant of that part
(blue: expansion, red: contraction, symmetric about 1, folding where ``<= 0``).

All images must be scalar and on the fixed grid. Display conventions are those of :mod:`jaxreg.plot`.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from jaxreg.core.compilation import jit
from jaxreg.core.grid import Grid, Image
from jaxreg.plot import _PLANE_NAMES, _aspect, _pyplot, _slice, checkerboard, slice_planes
from jaxreg.transforms.base import Transform

__all__ = ["registration_report"]


def _robust_range(data: np.ndarray) -> tuple[float, float]:
    finite = data[np.isfinite(data)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(finite, [0.5, 99.5])
    return (float(lo), float(hi)) if hi > lo else (float(finite.min()), float(finite.min()) + 1.0)


def _draw_grid(
    ax: Any, displacement: np.ndarray, g: Any, axis: int | None, index: int | None, every: int
) -> None:
    """Deformation-grid lines over one slice, read from the displacement ``(*g.shape, ndim)`` (world mm) of the
    deformation at the voxels of ``g`` (NumPy; the same lines as :func:`jaxreg.plot.plot_grid`)."""
    style = {"color": "tab:orange", "linewidth": 0.4}
    n = g.ndim
    u = displacement
    keep = [0, 1] if axis is None else [d for d in range(n) if d != axis]
    u_sl = u if axis is None else np.take(u, index, axis=axis)  # (a, b, n) world mm
    a_len, b_len = u_sl.shape[:2]
    idx = np.zeros((a_len, b_len, n))
    idx[..., keep[0]], idx[..., keep[1]] = np.meshgrid(np.arange(a_len), np.arange(b_len), indexing="ij")
    if axis is not None:
        idx[..., axis] = index
    aff, inv = g.affine, g.inverse_affine
    world = idx @ aff[:n, :n].T + aff[:n, n] + u_sl
    moved = world @ inv[:n, :n].T + inv[:n, n]
    x, y = moved[..., keep[0]], moved[..., keep[1]]
    for i in range(0, a_len, every):
        ax.plot(x[i, :], y[i, :], **style)
    for j in range(0, b_len, every):
        ax.plot(x[:, j], y[:, j], **style)
    ax.set_xlim(-0.5, a_len - 0.5)
    ax.set_ylim(-0.5, b_len - 0.5)


def _draw_contours(ax: Any, contours: Mapping[str, np.ndarray], g: Grid, axis: Any, idx: Any) -> None:
    colours = ("tab:red", "tab:orange", "yellow", "tab:green", "tab:cyan", "tab:blue", "tab:purple", "magenta")
    for k, (_, lab) in enumerate(contours.items()):
        lab = np.asarray(lab)
        if lab.shape != g.shape:
            raise ValueError(f"contours: expected label maps of the fixed grid's shape {g.shape}, got {lab.shape}")
        sl = np.swapaxes(_slice(lab, g.ndim, axis, idx), 0, 1)
        values = [v for v in np.unique(lab) if v != 0]
        for i, v in enumerate(values):
            m = (sl == v).astype(np.float32)
            if m.any() and not m.all():
                ax.contour(
                    m, levels=[0.5], colors=colours[i % len(colours)], linewidths=0.6,
                    linestyles="solid" if k == 0 else "dashed",
                )


def _displacement(transform: Any, grid: Any) -> Any:
    return transform.sample_displacement(grid)


_sample_displacement = jit(_displacement, static_argnums=1)  # one compiled program, not one per operation


def registration_report(
    fixed: Image,
    moving: Image,
    warped: Image,
    *,
    deformation: Transform | None = None,
    jacobian: np.ndarray | None = None,
    losses: Mapping[str, Sequence[np.ndarray]] | None = None,
    title: str | None = None,
    index: Sequence[int] | None = None,
    panel_size: float = 2.0,
    contours: Mapping[str, np.ndarray] | None = None,
) -> Any:
    """Draw the report figure of a registration (see the module docstring for the panels).

    Args:
      fixed: fixed image, scalar.
      moving: moving image resampled on the fixed grid *before* registration (identity), scalar.
      warped: moving image warped on the fixed grid by the registration result, scalar.
      deformation: the deformable part of the transform (fixed -> fixed-ish world mm), for the grid lines;
        ``None`` (a linear registration) leaves the grid panel with the fixed image only.
      jacobian: ``fixed.grid.shape`` determinant of the deformation's Jacobian; ``None`` leaves it blank.
      losses: ``{stage name: [per-level loss arrays]}`` (NaN entries, e.g. after convergence, are skipped).
      title: figure title.
      index: 3D only: voxel index where the three slices meet (default the centre of the fixed grid).
      panel_size: inches per panel.
      contours: ``{name: label map on the fixed grid}`` whose label boundaries are drawn on the ``fixed`` and
        ``warped`` panels, one colour per label value; the first map with solid lines, the others dashed (e.g.
        the moving image's organs carried by the registration and the fixed image's own organs).

    Returns:
      The matplotlib figure (save it with :func:`jaxreg.plot.save_figure`).
    """
    plt = _pyplot()
    g = fixed.grid
    for name, im in (("moving", moving), ("warped", warped)):
        if im.grid != g or im.has_channels:
            raise ValueError(f"{name}: expected a scalar image on the fixed grid {g}")
    if fixed.has_channels:
        raise ValueError("fixed: expected a scalar image")
    if jacobian is not None and tuple(np.shape(jacobian)) != g.shape:
        raise ValueError(f"jacobian: expected shape {g.shape}, got {tuple(np.shape(jacobian))}")
    f = np.asarray(fixed.data, np.float32)
    m = np.asarray(moving.data, np.float32)
    w = np.asarray(warped.data, np.float32)
    lo, hi = _robust_range(f)
    mlo, mhi = _robust_range(np.concatenate([m.ravel(), w.ravel()]))

    def norm(x, a, b):  # display range of each image mapped to [0, 1]
        return np.clip((x - a) / (b - a), 0.0, 1.0)

    fn, mn, wn = norm(f, lo, hi), norm(m, mlo, mhi), norm(w, mlo, mhi)
    check = checkerboard(fn, wn, tiles=8)
    d_before, d_after = fn - mn, fn - wn
    dlim = max(float(np.percentile(np.abs(d_before), 99.5)), 1e-3)
    columns = [
        ("fixed", fn, "gray", 0.0, 1.0),
        ("moving (before)", mn, "gray", 0.0, 1.0),
        ("warped", wn, "gray", 0.0, 1.0),
        ("checkerboard", check, "gray", 0.0, 1.0),
        ("fixed - moving", d_before, "RdBu_r", -dlim, dlim),
        ("fixed - warped", d_after, "RdBu_r", -dlim, dlim),
        ("deformation grid", fn, "gray", 0.0, 1.6),
    ]
    if jacobian is not None:
        jac = np.asarray(jacobian, np.float32)
        jdev = max(float(np.percentile(np.abs(jac - 1.0), 99.9)), 1e-3)
        columns.append(("det J", jac, "RdBu", 1.0 - jdev, 1.0 + jdev))
    else:
        columns.append(("det J (none)", np.ones(g.shape, np.float32), "RdBu", 0.0, 2.0))

    # sampled once for all planes: a displacement field on the fixed grid is read at its voxels
    u = None if deformation is None else np.asarray(_sample_displacement(deformation, g), np.float64)
    planes: list[tuple[int | None, int | None]] = list(slice_planes(g, index=index)) or [(None, None)]
    stages = [(k, v) for k, v in (losses or {}).items() if v is not None and len(v)]
    n_rows, n_cols = len(planes), len(columns)
    loss_rows = 1 if stages else 0
    fig = plt.figure(figsize=(panel_size * n_cols, panel_size * (n_rows + 1.1 * loss_rows)))
    gs = fig.add_gridspec(n_rows + loss_rows, n_cols, height_ratios=[1.0] * n_rows + [1.1] * loss_rows)
    for r, (axis, idx) in enumerate(planes):
        for c, (name, data, cmap, vmin, vmax) in enumerate(columns):
            ax = fig.add_subplot(gs[r, c])
            sl = np.swapaxes(_slice(data, g.ndim, axis, idx), 0, 1)
            h = ax.imshow(
                sl,
                cmap=cmap,
                vmin=vmin,
                vmax=vmax,
                origin="lower",
                aspect=_aspect(g, axis),
                interpolation="nearest",
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=8)
            if c == 0 and axis is not None:
                ax.set_ylabel(f"{_PLANE_NAMES.get(axis, f'axis {axis}')} {idx}", fontsize=8)
            if contours and name in ("fixed", "warped"):
                _draw_contours(ax, contours, g, axis, idx)
            if name == "deformation grid" and u is not None:
                every = max(2, round(max(g.shape) / 20))
                _draw_grid(ax, u, g, axis, idx, every)
            if name.startswith("det J") and jacobian is not None and r == n_rows - 1:
                cb = fig.colorbar(h, ax=ax, fraction=0.046, pad=0.04, orientation="horizontal")
                cb.ax.tick_params(labelsize=6)
    if stages:
        sub = gs[n_rows, :].subgridspec(1, len(stages), wspace=0.25)
        for i, (name, levels) in enumerate(stages):
            ax = fig.add_subplot(sub[0, i])
            start = 0
            for li, loss in enumerate(levels):
                y = np.asarray(loss, np.float64)
                y = y[np.isfinite(y)]
                x = start + np.arange(y.size)
                ax.plot(x, y, linewidth=1.0, label=f"level {li + 1}")
                if li:
                    ax.axvline(start - 0.5, color="0.7", linewidth=0.6, linestyle=":")
                start += y.size
            ax.set_title(f"{name} loss", fontsize=8)
            ax.set_xlabel("iteration", fontsize=7)
            ax.tick_params(labelsize=6)
            if len(levels) > 1:
                ax.legend(fontsize=6, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
