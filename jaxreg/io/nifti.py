"""NIfTI images <-> :class:`~jaxreg.core.grid.Image` (array on a voxel-to-world grid).

Geometry comes from the header's best affine (nibabel's ``get_best_affine``: the sform when ``sform_code >
0``,
else the qform when ``qform_code > 0``, else the pixdim-only fallback without orientation), which already is
the
jaxreg convention: RAS+ world in mm, integer index at the voxel centre.

On-disk layouts (NIfTI dimensions ``dim[1..]``, first axis fastest, as nibabel returns them):

=========================  ============================  =================================================
file data shape            loads as                      notes
=========================  ============================  =================================================
``(X, Y)``                 2-D, ``(X, Y)``               in-plane 2x2 block of the affine and its x/y offset
``(X, Y, 1)``              2-D, ``(X, Y)``               3-D with ``ndim=3``
``(X, Y, Z)``              3-D, ``(X, Y, Z)``
``(X, Y, Z, C)``           ``(X, Y, Z, C)``              ``channels=True`` only (a 4-D series is an error)
``(X, Y, Z, 1, C)``        ``(X, Y, Z, C)``              ``channels=True``; ITK/ANTs multi-component layout
=========================  ============================  =================================================

Trailing singleton dimensions are dropped (``(X, Y, Z, 1)`` is a 3-D scalar image). :func:`save_image` writes
scalar images as 2-D/3-D files and channel images as 5-D ``(X, Y, Z, 1, C)`` (``(X, Y, 1, 1, C)`` in 2-D) with
intent ``NIFTI_INTENT_VECTOR`` (1007), the layout ITK, SimpleITK and ANTs use for vector images. It sets the
sform and the qform to the same geometry with the same code (default 1, scanner anatomical, as ITK writes), so
nibabel, ITK and ANTs read one geometry. A grid with shear cannot be stored in a qform; the qform then holds
the nearest rotation-and-zoom geometry and only the sform is exact (ITK cannot represent shear either). The
header stores the affine in float32, so a saved grid reads back to float32 precision (about 1e-7 relative,
e.g.
1e-5 mm at a 100 mm origin).

Data keep their stored dtype (integer label maps stay integer; scaled data, ``scl_slope != 1``, become float)
within what JAX holds: 64-bit types become 32-bit unless ``jax_enable_x64`` is on. Every write is atomic (see
:func:`jaxreg.io.atomic_write`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxreg.core.grid import Grid, Image
from jaxreg.io._atomic import PathLike, atomic_write, split_suffix
from jaxreg.io.formats import check_write_suffix, read_volume, write_volume

__all__ = [
    "check_registrable",
    "grid_to_nifti_affine",
    "load_image",
    "load_labels",
    "load_nifti",
    "nifti_grid",
    "save_image",
]

NIFTI_INTENT_VECTOR = 1007
_NIFTI_SUFFIXES = (".nii", ".nii.gz")


# -- reading -------------------------------------------------------------------------------------------------
def _check_exists(path: PathLike) -> None:
    if not os.path.exists(path):
        raise FileNotFoundError(2, f"{path}: no such file", str(path))
    if os.path.isdir(path):
        raise ValueError(f"{path}: is a directory, expected a NIfTI file (.nii or .nii.gz)")


def load_nifti(path: PathLike) -> tuple[Any, np.ndarray]:
    """Open a NIfTI file with nibabel and read all of its data, with clear errors.

    Args:
      path: ``.nii`` or ``.nii.gz`` file (NIfTI-1 or NIfTI-2).

    Returns:
      ``(nibabel_image, data)``: the image (header and affines) and its data as a NumPy array in native byte
      order, scaled by ``scl_slope``/``scl_inter`` when those are set, in the file's axis order.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ValueError: ``path: not a readable NIfTI file (...)`` for other formats, corrupt or truncated files.
    """
    import nibabel as nib

    _check_exists(path)
    try:
        img = nib.load(os.fspath(path))
        if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
            raise ValueError(f"a {type(img).__name__}, not NIfTI-1/2")
        data = np.asanyarray(img.dataobj)
    except Exception as e:  # nibabel raises ImageFileError, EOFError, zlib.error, OSError, ValueError, ...
        raise ValueError(f"{path}: not a readable NIfTI file ({type(e).__name__}: {e})") from e
    data = np.asarray(data)
    if not data.dtype.isnative:
        data = data.astype(data.dtype.newbyteorder("="))
    return img, data


def _affine_or_error(img: Any, path: PathLike) -> np.ndarray:
    aff = np.asarray(img.header.get_best_affine(), dtype=np.float64)
    if not np.all(np.isfinite(aff)):
        raise ValueError(f"{path}: the voxel-to-world affine contains NaN or Inf:\n{aff}")
    if abs(np.linalg.det(aff[:3, :3])) < 1e-12:
        h = img.header
        raise ValueError(
            f"{path}: singular voxel-to-world affine (a zero voxel size or degenerate direction; "
            f"sform_code={int(h['sform_code'])}, qform_code={int(h['qform_code'])}, "
            f"pixdim={np.asarray(h['pixdim'][1:4]).tolist()}):\n{aff}"
        )
    return aff


def nifti_grid(affine: np.ndarray, spatial_shape: tuple[int, ...]) -> Grid:
    """Grid of a NIfTI image from its 4x4 affine and its 2 or 3 spatial sizes.

    A 2-D grid keeps the in-plane 2x2 block of the affine and its x/y offsets (as
    :meth:`Grid.from_nifti_header` does).
    """
    a = np.asarray(affine, dtype=np.float64)
    if len(spatial_shape) == 2:
        a2 = np.eye(3)
        a2[:2, :2] = a[:2, :2]
        a2[:2, 2] = a[:2, 3]
        return Grid(spatial_shape, a2)
    return Grid(spatial_shape, a)


def _split_layout(
    shape: tuple[int, ...], path: PathLike, *, ndim: int | None, channels: bool
) -> tuple[tuple[int, ...], int | None]:
    """``(spatial_shape, n_channels or None)`` of a file data shape, following the module's layout table."""
    shp = tuple(int(s) for s in shape)
    if len(shp) > 5:
        raise ValueError(f"{path}: data of shape {shp} ({len(shp)}-D): expected at most 5 dimensions")
    comps: int | None = None
    if len(shp) == 5:
        if shp[3] != 1:
            raise ValueError(
                f"{path}: data of shape {shp}: a 5-D NIfTI must be (X, Y, Z, 1, C) (one time point); "
                "time series of vectors are not supported"
            )
        comps, shp = shp[4], shp[:3]
    elif len(shp) == 4:
        comps, shp = shp[3], shp[:3]
    if comps == 1 and not channels:
        comps = None
    if comps is not None and not channels:
        raise ValueError(
            f"{path}: data of shape {tuple(shape)} has {comps} volumes/components beyond the "
            f"{'spatial' if ndim is None else f'{ndim}-D spatial'} axes: expected a scalar image; "
            "pass channels=True to load the last axis as channels"
        )
    while len(shp) < 2:
        shp = shp + (1,)
    if ndim is None:
        ndim = 2 if len(shp) == 2 or shp[2] == 1 else 3
    if ndim not in (2, 3):
        raise ValueError(f"ndim: expected 2, 3 or None, got {ndim!r}")
    if ndim == 2:
        if len(shp) == 3 and shp[2] != 1:
            raise ValueError(f"{path}: data of shape {tuple(shape)} is 3-D ({shp}), expected a 2-D image")
        shp = shp[:2]
    elif len(shp) == 2:
        shp = shp + (1,)
    return shp, comps


def _check_real(data: np.ndarray, path: PathLike) -> None:
    """Refuse data jaxreg cannot register: complex values (e.g. raw MR phase/k-space data) and RGB or other
    structured voxel types."""
    d = data.dtype
    if np.issubdtype(d, np.complexfloating):
        raise ValueError(
            f"{path}: complex-valued data ({d}); jaxreg works on real images: save the magnitude (or the real "
            "part) as a real-valued NIfTI first"
        )
    if not (np.issubdtype(d, np.integer) or np.issubdtype(d, np.floating) or d == np.bool_):
        raise ValueError(f"{path}: unsupported voxel type {d} (expected integer or real floating-point data)")


def _jax_dtype(dtype: Any) -> np.dtype:
    d = np.dtype(dtype)
    if d == np.bool_:
        return d
    return np.dtype(jax.dtypes.canonicalize_dtype(d))


def _to_jax(data: np.ndarray, dtype: Any, path: PathLike) -> jax.Array:
    target = _jax_dtype(data.dtype if dtype is None else dtype)
    if np.issubdtype(target, np.integer) and data.size:
        if np.issubdtype(data.dtype, np.floating) and not np.all(np.round(data) == data):
            raise ValueError(f"{path}: has non-integer values, cannot convert to {target}")
        info = np.iinfo(target)
        lo, hi = data.min(), data.max()
        if lo < info.min or hi > info.max:
            raise ValueError(f"{path}: values in [{lo}, {hi}] do not fit in {target}")
    return jnp.asarray(data.astype(target, copy=False))


def load_image(
    path: PathLike,
    *,
    ndim: int | None = None,
    channels: bool = False,
    dtype: Any = None,
) -> Image:
    """Read an image file as an :class:`Image` on its world grid.

    NIfTI (``.nii``/``.nii.gz``) and FreeSurfer ``.mgz``/``.mgh`` are read with nibabel; NRRD (``.nrrd``,
    ``.nhdr``), MetaImage (``.mha``, ``.mhd``) and DICOM (a folder holding one series, or a ``.dcm`` file) with
    SimpleITK (``pip install 'jaxreg[itk]'``), their LPS geometry converted to RAS+ (:mod:`jaxreg.io.formats`).

    Args:
      path: the file (or DICOM folder).
      ndim: required number of spatial dimensions, 2 or 3; ``None`` infers it (a single slice ``(X, Y, 1)``
        is 2-D). ``ndim=3`` loads a single slice as a 3-D grid with one voxel along z.
      channels: load the 4th (or 5th, for ``(X, Y, Z, 1, C)``) dimension as a trailing channel axis. When
        False (default) such files raise unless that dimension has size 1.
      dtype: NumPy/JAX dtype of ``data``; default the stored dtype (after scaling), as far as JAX allows.

    Returns:
      ``Image`` with ``data`` of shape ``(*grid.shape)`` or, with ``channels=True``, ``(*grid.shape, C)``,
      in the file's voxel order (no reorientation), and the grid of the header's best affine.

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: not a readable NIfTI file, complex or structured (RGB) voxels, wrong number of dimensions,
        NaN/Inf values, a singular or non-finite affine, or values that do not fit ``dtype``. Messages start
        with the path.
    """
    vol = read_volume(path)
    data = vol.data
    _check_real(data, path)
    spatial, comps = _split_layout(data.shape, path, ndim=ndim, channels=channels)
    data = data.reshape(spatial + ((comps,) if comps is not None else ()))
    if channels and comps is None:
        data = data[..., None]
    if np.issubdtype(data.dtype, np.floating):
        bad = ~np.isfinite(data)
        if bad.any():
            raise ValueError(
                f"{path}: contains {int(bad.sum())} NaN/Inf values (first at voxel "
                f"{tuple(int(i) for i in np.argwhere(bad)[0])}); replace them before loading"
            )
    grid = nifti_grid(vol.affine, spatial)
    return Image(_to_jax(data, dtype, path), grid)


def load_labels(path: PathLike, *, ndim: int | None = None, dtype: Any = jnp.int32) -> Image:
    """Read an integer label map.

    Label maps stored as floats (common after some pipelines) are accepted when every value is an integer.

    Args:
      path: image file with one label per voxel, any format of :func:`load_image`.
      ndim: required number of spatial dimensions (see :func:`load_image`).
      dtype: integer dtype of the returned labels (default int32).

    Returns:
      ``Image`` with integer ``data`` of shape ``grid.shape``.

    Raises:
      ValueError: the map has non-integer values or a non-integer ``dtype`` was requested, plus the errors of
        :func:`load_image`.
    """
    if not np.issubdtype(np.dtype(dtype), np.integer):
        raise ValueError(f"dtype: expected an integer dtype for labels, got {np.dtype(dtype)}")
    vol = read_volume(path)
    data = vol.data
    _check_real(data, path)
    spatial, _ = _split_layout(data.shape, path, ndim=ndim, channels=False)
    data = data.reshape(spatial)
    if not np.issubdtype(data.dtype, np.integer):
        if np.issubdtype(data.dtype, np.bool_):
            data = data.astype(np.uint8)
        else:
            finite = np.isfinite(data)
            nonint = ~finite | (np.round(np.where(finite, data, 0)) != data)
            if nonint.any():
                first = tuple(int(i) for i in np.argwhere(nonint)[0])
                raise ValueError(
                    f"{path}: not a label map: {int(nonint.sum())} voxels have non-integer values "
                    f"(e.g. {data[first]!r} at voxel {first})"
                )
    grid = nifti_grid(vol.affine, spatial)
    return Image(_to_jax(data, dtype, path), grid)


def check_registrable(image: Image, *, name: str = "image") -> None:
    """Check that an image can drive a registration; raise a clear error when it cannot.

    A registration compares intensities: an image whose voxels all hold one value has no gradient, zero
    variance (NCC and LNCC are undefined) and a one-bin histogram (MI is 0), so every method would return
    the initial transform and report success. This check refuses it, together with what :func:`load_image`
    refuses for data built in memory: complex values and NaN/Inf.

    Args:
      image: the fixed or moving image, ``data`` of shape ``(*grid.shape)`` or ``(*grid.shape, C)``.
      name: how the error message names it (a file name, ``"moving image"``...).

    Raises:
      ValueError: ``"{name}: ..."``: complex or non-numeric data, no voxels, NaN/Inf values, or constant
        (every voxel, in every channel, holds the same value).
    """
    data = np.asarray(image.data)
    if jnp.issubdtype(data.dtype, jnp.complexfloating):
        raise ValueError(f"{name}: complex-valued data ({data.dtype}); register the magnitude or the real part")
    if not (jnp.issubdtype(data.dtype, jnp.number) or data.dtype == np.bool_):
        raise ValueError(f"{name}: unsupported voxel type {data.dtype}")
    if data.size == 0:
        raise ValueError(f"{name}: the image has no voxels (shape {data.shape})")
    if jnp.issubdtype(data.dtype, jnp.floating):
        n_bad = int(data.size - np.count_nonzero(np.isfinite(data)))
        if n_bad:
            raise ValueError(f"{name}: contains {n_bad} NaN/Inf values; replace them before registering")
    lo, hi = data.min(), data.max()
    if lo == hi:
        raise ValueError(
            f"{name}: constant image (all {data.size} voxels are {lo.item():g}): there is nothing to register"
        )


# -- writing -------------------------------------------------------------------------------------------------
def grid_to_nifti_affine(grid: Grid) -> np.ndarray:
    """The 4x4 NIfTI affine of a 2-D or 3-D grid (a 2-D grid gets a unit z axis at z = 0)."""
    a = grid.affine
    if grid.ndim == 3:
        return a
    if grid.ndim != 2:
        raise ValueError(f"grid: expected a 2-D or 3-D grid, got {grid.ndim}-D")
    a4 = np.eye(4)
    a4[:2, :2] = a[:2, :2]
    a4[:2, 3] = a[:2, 2]
    return a4


def _check_suffix(path: PathLike, what: str = "a NIfTI image") -> None:
    _, suffix = split_suffix(path)
    if suffix.lower() not in _NIFTI_SUFFIXES:
        raise ValueError(f"{path}: expected a .nii or .nii.gz file name for {what}, got suffix {suffix!r}")


def _storage_dtype(data: np.ndarray, dtype: Any) -> np.dtype:
    d = data.dtype if dtype is None else np.dtype(dtype)
    if d == np.bool_:
        return np.dtype(np.uint8)
    if d == np.float16 or d.name == "bfloat16":
        return np.dtype(np.float32)
    if not (np.issubdtype(d, np.integer) or np.issubdtype(d, np.floating)):
        raise ValueError(f"dtype: expected an integer or float dtype to store, got {d}")
    return d


def make_nifti(
    data: np.ndarray, affine: np.ndarray, *, dtype: np.dtype, xform_code: int, intent: int = 0
) -> Any:
    """A ``nibabel.Nifti1Image`` with sform and qform both set to ``affine`` with ``xform_code``."""
    import nibabel as nib

    img = nib.Nifti1Image(data, affine, dtype=dtype)
    hdr = img.header
    hdr.set_sform(affine, code=int(xform_code))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nibabel warns when it strips shears from the qform
        hdr.set_qform(affine, code=int(xform_code), strip_shears=True)
    hdr.set_xyzt_units("mm", "sec")
    if intent:
        hdr.set_intent(int(intent))
    hdr.set_slope_inter(1.0, 0.0)
    return img


def save_image(
    image: Image,
    path: PathLike,
    *,
    dtype: Any = None,
    xform_code: int = 1,
    inputs: Iterable[PathLike] = (),
) -> None:
    """Write an :class:`Image` atomically, as NIfTI-1 (``.nii`` or ``.nii.gz``) or by the suffix as FreeSurfer
    ``.mgz``/``.mgh`` (nibabel; stored as uint8, int16, int32 or float32) or NRRD ``.nrrd`` / MetaImage ``.mha``
    (SimpleITK, LPS geometry; no shear).

    Args:
      image: 2-D or 3-D image; ``data`` ``(*grid.shape)`` or ``(*grid.shape, C)``. Channel images are stored
        as ``(X, Y, Z, 1, C)`` (``(X, Y, 1, 1, C)`` in 2-D) with intent vector (1007), as ITK/ANTs do.
      path: destination; ``.nii.gz`` is gzip-compressed.
      dtype: stored dtype; default the data's (bool becomes uint8, float16 float32). Converting floats to an
        integer dtype requires integer values in range.
      xform_code: NIfTI only: code of both the sform and the qform: 1 (scanner anatomical, ITK's choice) or 2 (aligned),
        3 (Talairach), 4 (MNI).
      inputs: paths that must not be overwritten (ValueError), e.g. the inputs of the run.

    Raises:
      ValueError: wrong suffix, non-finite affine or data not fitting ``dtype``.
    """
    if not isinstance(image, Image):
        raise TypeError(f"image: expected a jaxreg Image, got {type(image).__name__}")
    fmt = check_write_suffix(path)
    if int(xform_code) not in (1, 2, 3, 4):
        raise ValueError(
            f"xform_code: expected 1 (scanner), 2 (aligned), 3 (Talairach) or 4 (MNI), got {xform_code}"
        )
    grid = image.grid
    if grid.ndim not in (2, 3):
        raise ValueError(f"image: expected a 2-D or 3-D image, got a {grid.ndim}-D grid")
    data = np.asarray(image.data)
    store = _storage_dtype(data, dtype)
    if np.issubdtype(store, np.integer) and not np.issubdtype(data.dtype, np.integer) and data.size:
        if not np.all(np.isfinite(data)) or not np.all(np.round(data) == data):
            raise ValueError(f"{path}: cannot store non-integer values as {store}")
    if np.issubdtype(store, np.integer) and data.size:
        info = np.iinfo(store)
        if data.min() < info.min or data.max() > info.max:
            raise ValueError(f"{path}: values in [{data.min()}, {data.max()}] do not fit in {store}")
    if fmt != "nifti":
        a = grid.affine
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{path}: non-finite grid affine")
        out = data.astype(store, copy=False)
        atomic_write(path, lambda tmp: write_volume(tmp, out, a, grid.ndim, path), inputs=inputs)
        return
    intent = 0
    if image.has_channels:
        c = data.shape[-1]
        spatial = grid.shape if grid.ndim == 3 else grid.shape + (1,)
        data = data.reshape(spatial + (1, c))
        intent = NIFTI_INTENT_VECTOR
    nii = make_nifti(
        data.astype(store, copy=False),
        grid_to_nifti_affine(grid),
        dtype=store,
        xform_code=xform_code,
        intent=intent,
    )
    atomic_write(path, lambda tmp: nii.to_filename(tmp), inputs=inputs)


def is_nifti_path(path: PathLike) -> bool:
    """Whether ``path`` ends in ``.nii`` or ``.nii.gz`` (any case)."""
    return split_suffix(path)[1].lower() in _NIFTI_SUFFIXES
