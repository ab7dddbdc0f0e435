"""Small matplotlib helpers to look at images and deformations.

* :func:`show_slices` -- rows of images, three orthogonal slices for 3D (one panel for 2D);
* :func:`plot_grid` -- deformation-grid lines of a transform over one slice;
* :func:`checkerboard` -- interleave two images on one grid in tiles (NumPy only);
* :func:`save_figure` -- write a figure atomically (temporary file, then rename);
* :func:`registration_report` -- the one-page figure of a registration (:mod:`jaxreg.plot.report`).

Display convention: a slice is drawn with its first remaining array axis horizontal and the second vertical,
origin at the bottom left, with the aspect ratio of the voxel spacing. For a RAS image the axial slice then
shows right-left horizontally (patient's right on the right: "neurological" view) and anterior at the top.

matplotlib is an optional dependency (``pip install 'jaxreg[plot]'``) imported inside the functions; the
Agg backend is selected when no display is available, so figures can be made on headless machines.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from jaxreg.core.grid import Grid, Image
from jaxreg.transforms.base import Transform

__all__ = ["show_slices", "plot_grid", "checkerboard", "save_figure", "slice_planes", "registration_report"]

_PLANE_NAMES = {0: "sagittal", 1: "coronal", 2: "axial"}


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once at import: toggling it later would race with other threads


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "jaxreg.plot needs matplotlib: install jaxreg[plot] (pip install 'jaxreg[plot]')"
        ) from e
    if not os.environ.get("DISPLAY") and not os.environ.get("MPLBACKEND"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def slice_planes(grid: Grid, *, index: Sequence[int] | None = None) -> list[tuple[int, int]]:
    """The ``(axis, index)`` of the slices :func:`show_slices` draws: one per axis in 3D, ``[]`` in 2D.

    Args:
      grid: the image grid.
      index: voxel index of the slices' intersection; default the grid centre.
    """
    if grid.ndim == 2:
        return []
    idx = [s // 2 for s in grid.shape] if index is None else [int(i) for i in index]
    if len(idx) != grid.ndim or any(not 0 <= i < s for i, s in zip(idx, grid.shape)):
        raise ValueError(f"index: expected {grid.ndim} voxel indices inside {grid.shape}, got {index}")
    return [(ax, idx[ax]) for ax in range(grid.ndim)]


def _slice(data: np.ndarray, ndim: int, axis: int | None, index: int | None) -> np.ndarray:
    if axis is None:
        return data
    return np.take(data, index, axis=axis)


def _aspect(grid: Grid, axis: int | None) -> float:
    sp = grid.spacing
    keep = [d for d in range(grid.ndim) if d != axis]
    # imshow(aspect) is the height/width ratio of one pixel; rows are the second kept axis.
    return float(sp[keep[1]] / sp[keep[0]])


def _as_image(image: Any) -> Image:
    if isinstance(image, Image):
        return image
    arr = np.asarray(image)
    return Image(arr, Grid(arr.shape[: min(arr.ndim, 3)]))


def show_slices(
    images: Sequence[Image | np.ndarray],
    *,
    titles: Sequence[str] | None = None,
    index: Sequence[int] | None = None,
    cmap: str | Sequence[str] = "gray",
    vmin: float | Sequence[float | None] | None = None,
    vmax: float | Sequence[float | None] | None = None,
    colorbar: bool = False,
    fig: Any = None,
    axes: Any = None,
    panel_size: float = 2.6,
) -> Any:
    """Draw images in rows: three orthogonal slices of a 3D image, or the whole 2D image.

    Args:
      images: scalar :class:`Image` values (or 2D/3D arrays, taken with unit spacing). All 3D images share
        the slice positions, so they should be on one grid.
      titles: one label per image (row).
      index: voxel index where the three slices of 3D images meet; default the centre of the first image.
      cmap: colormap name, or one per image.
      vmin, vmax: display range, scalar or one per image (``None``: the image's own min/max).
      colorbar: add a colorbar to the last panel of each row.
      fig: figure to draw in (a new one by default); ignored when ``axes`` is given.
      axes: ``(len(images), panels)`` array of matplotlib axes to draw in.
      panel_size: inches per panel for a new figure.

    Returns:
      The matplotlib figure.
    """
    plt = _pyplot()
    imgs = [_as_image(im) for im in images]
    if not imgs:
        raise ValueError("images: expected at least one image")
    g0 = imgs[0].grid
    planes: list[tuple[int | None, int | None]] = list(slice_planes(g0, index=index)) or [(None, None)]
    n_rows, n_cols = len(imgs), len(planes)

    def per_image(value: Any, name: str) -> list[Any]:
        if isinstance(value, (list, tuple)):
            if len(value) != n_rows:
                raise ValueError(f"{name}: expected {n_rows} values, one per image, got {len(value)}")
            return list(value)
        return [value] * n_rows

    cmaps, vmins, vmaxs = per_image(cmap, "cmap"), per_image(vmin, "vmin"), per_image(vmax, "vmax")
    if titles is not None and len(titles) != n_rows:
        raise ValueError(f"titles: expected {n_rows} titles, one per image, got {len(titles)}")
    if axes is None:
        if fig is None:
            fig = plt.figure(figsize=(panel_size * n_cols, panel_size * n_rows))
        axes = fig.subplots(n_rows, n_cols, squeeze=False)
    else:
        axes = np.asarray(axes, dtype=object).reshape(n_rows, n_cols)
        fig = axes[0, 0].figure
    for r, im in enumerate(imgs):
        data = np.asarray(im.data, dtype=np.float32)
        lo = float(np.min(data)) if vmins[r] is None else vmins[r]
        hi = float(np.max(data)) if vmaxs[r] is None else vmaxs[r]
        for c, (axis, idx) in enumerate(planes):
            ax = axes[r, c]
            sl = _slice(data, im.grid.ndim, axis, idx)
            sl = np.swapaxes(sl, 0, 1)  # first kept axis horizontal
            h = ax.imshow(
                sl,
                cmap=cmaps[r],
                vmin=lo,
                vmax=hi,
                origin="lower",
                aspect=_aspect(im.grid, axis),
                interpolation="nearest",
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0 and axis is not None:
                ax.set_title(f"{_PLANE_NAMES.get(axis, f'axis {axis}')} {idx}", fontsize=9)
            if c == 0 and titles is not None:
                ax.set_ylabel(titles[r], fontsize=9)
            if colorbar and c == n_cols - 1:
                fig.colorbar(h, ax=ax, fraction=0.046, pad=0.04)
    return fig


def plot_grid(
    transform: Transform,
    grid: Grid,
    *,
    ax: Any = None,
    axis: int | None = None,
    index: int | None = None,
    every: int = 4,
    color: str = "tab:orange",
    linewidth: float = 0.6,
) -> Any:
    """Draw the deformation grid of ``transform`` over one slice of ``grid``.

    Lines of ``grid`` every ``every`` voxels are mapped through ``transform`` (fixed -> moving, the pull
    direction) and drawn at ``grid.world_to_index(T(x))``: where each fixed-grid point samples the moving image,
    in voxel units of ``grid``, projected on the slice plane. This matches :func:`show_slices`' axes, so the
    lines can be overlaid on a slice of the fixed or the moving image (when they share ``grid``).

    Args:
      transform: any jaxreg transform of ``grid``'s dimension.
      grid: the grid whose lines are deformed (usually the fixed grid).
      ax: matplotlib axes (default: the current axes).
      axis: 3D only: the array axis normal to the slice; default 2.
      index: 3D only: slice index along ``axis``; default the middle.
      every: spacing of the grid lines in voxels.
      color, linewidth: line style.

    Returns:
      The matplotlib axes.
    """
    plt = _pyplot()
    if ax is None:
        ax = plt.gca()
    if every < 1:
        raise ValueError(f"every: expected a positive number of voxels, got {every}")
    n = grid.ndim
    if n == 3:
        axis = 2 if axis is None else int(axis)
        index = grid.shape[axis] // 2 if index is None else int(index)
        if not 0 <= axis < 3 or not 0 <= index < grid.shape[axis]:
            raise ValueError(f"axis/index: slice {axis}/{index} outside {grid.shape}")
        keep = [d for d in range(3) if d != axis]
    elif n == 2:
        keep = [0, 1]
    else:
        raise ValueError(f"grid: expected a 2-D or 3-D grid, got {n}-D")
    a_len, b_len = grid.shape[keep[0]], grid.shape[keep[1]]
    ia = np.arange(a_len, dtype=np.float32)
    ib = np.arange(b_len, dtype=np.float32)
    aa, bb = np.meshgrid(ia, ib, indexing="ij")
    idx = np.zeros((a_len, b_len, n), np.float32)
    idx[..., keep[0]] = aa
    idx[..., keep[1]] = bb
    if n == 3:
        idx[..., axis] = index
    world = np.asarray(grid.index_to_world(idx))
    moved = np.asarray(grid.world_to_index(transform(world)))
    x, y = moved[..., keep[0]], moved[..., keep[1]]
    for i in range(0, a_len, every):
        ax.plot(x[i, :], y[i, :], color=color, linewidth=linewidth)
    for j in range(0, b_len, every):
        ax.plot(x[:, j], y[:, j], color=color, linewidth=linewidth)
    ax.set_xlim(-0.5, a_len - 0.5)
    ax.set_ylim(-0.5, b_len - 0.5)
    return ax


def checkerboard(a: Image | np.ndarray, b: Image | np.ndarray, *, tiles: int | Sequence[int] = 8) -> Any:
    """Interleave two images of one shape in a checkerboard of ``tiles`` tiles per axis.

    Args:
      a, b: two :class:`Image` values on the same grid, or two arrays of the same shape (spatial axes first;
        a trailing channel axis is carried along).
      tiles: number of tiles along each spatial axis, scalar or per axis.

    Returns:
      An :class:`Image` on ``a``'s grid if ``a`` is an Image, else a NumPy array; tiles whose index sum is even
      come from ``a``.
    """
    is_image = isinstance(a, Image)
    if is_image != isinstance(b, Image):
        raise TypeError("a, b: expected two Images or two arrays")
    if is_image and a.grid != b.grid:
        raise ValueError(f"a, b: expected images on the same grid, got {a.grid} and {b.grid}")
    da, db = np.asarray(a.data if is_image else a), np.asarray(b.data if is_image else b)
    if da.shape != db.shape:
        raise ValueError(f"a, b: expected the same shape, got {da.shape} and {db.shape}")
    n = a.grid.ndim if is_image else da.ndim
    t = np.broadcast_to(np.asarray(tiles, dtype=int), (n,))
    if np.any(t < 1):
        raise ValueError(f"tiles: expected positive counts, got {t.tolist()}")
    parity = np.zeros(da.shape[:n], dtype=int)
    for d in range(n):
        s = da.shape[d]
        k = (np.arange(s) * int(t[d])) // s
        parity = parity + k.reshape([-1 if e == d else 1 for e in range(n)])
    mask = (parity % 2 == 0).reshape(da.shape[:n] + (1,) * (da.ndim - n))
    out = np.where(mask, da, db)
    if is_image:
        import jax.numpy as jnp

        return Image(jnp.asarray(out), a.grid)
    return out


def save_figure(fig: Any, path: str | os.PathLike, *, dpi: int = 100, close: bool = True) -> Path:
    """Save a matplotlib figure atomically: into a temporary file next to ``path``, then renamed onto it.

    Args:
      fig: the figure.
      path: destination; its suffix picks the format (``.png``, ``.pdf``, ``.svg``, ...). The directory must
        exist.
      dpi: resolution for raster formats.
      close: close the figure afterwards (frees its memory in long scripts).

    Returns:
      ``path`` as a :class:`~pathlib.Path`.

    Raises:
      FileNotFoundError: the destination directory does not exist.
    """
    dest = Path(path)
    directory = dest.parent if str(dest.parent) else Path(".")
    if not directory.is_dir():
        raise FileNotFoundError(2, f"{dest}: the destination directory does not exist", str(directory))
    fmt = dest.suffix.lstrip(".").lower() or "png"
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{dest.name}.", suffix=".tmp")
    os.close(fd)
    try:
        fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight")
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; use what a plain open() would
        os.replace(tmp, dest)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    finally:
        if close:
            _pyplot().close(fig)
    return dest


from jaxreg.plot.report import registration_report  # noqa: E402  (uses the helpers above)
