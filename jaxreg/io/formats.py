"""Image file formats other than NIfTI: FreeSurfer MGH/MGZ (nibabel) and NRRD, MetaImage and DICOM (SimpleITK).

Every reader returns the same thing as the NIfTI reader: the data in the NIfTI on-disk layout (first axis
fastest: ``(X, Y)``, ``(X, Y, Z)``, channels last as ``(X, Y, Z, C)`` or ``(X, Y, 1, C)`` in 2-D) and the 4x4
voxel-to-world affine in **RAS+ mm** with integer indices at voxel centres, so :func:`jaxreg.io.load_image`
builds one :class:`~jaxreg.core.grid.Image` from any of them, and the same anatomy read from a NIfTI file and
from its NRRD copy lands on the same world grid.

=========================  ===========  ==========================================================================
suffix                     library      geometry
=========================  ===========  ==========================================================================
``.nii``, ``.nii.gz``      nibabel      the header's best affine (RAS+), see :mod:`jaxreg.io.nifti`
``.mgz``, ``.mgh``         nibabel      FreeSurfer's vox2ras (RAS+)
``.nrrd``, ``.nhdr``       SimpleITK    origin, spacing and direction in ITK's LPS+, converted to RAS+
``.mha``, ``.mhd``         SimpleITK    as NRRD (``.mhd`` reads its data file next to it; written as ``.mha`` only)
a folder, ``.dcm``         SimpleITK    one DICOM series (a folder holding exactly one series, or one file)
=========================  ===========  ==========================================================================

ITK's image geometry is ``p_LPS = origin + D diag(spacing) index``; with ``F = diag(-1, -1, 1)`` the RAS+ affine
is ``[[F D diag(spacing), F origin], [0, 1]]`` (in 2-D, ``F = diag(-1, -1)``). NRRD, MetaImage and DICOM thus
carry a direction matrix and spacing, no shear: writing a grid with shear to them is an error. SimpleITK is an
optional dependency (``pip install 'jaxreg[itk]'``); NIfTI and MGH/MGZ need nibabel only.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import numpy as np

from jaxreg.io._atomic import PathLike, split_suffix

__all__ = [
    "IMAGE_SUFFIXES",
    "WRITE_SUFFIXES",
    "Volume",
    "read_volume",
    "write_volume",
]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
MGH_SUFFIXES = (".mgz", ".mgh")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")
IMAGE_SUFFIXES = NIFTI_SUFFIXES + MGH_SUFFIXES + ITK_SUFFIXES
"""Suffixes :func:`read_volume` reads (besides a folder holding one DICOM series)."""
WRITE_SUFFIXES = NIFTI_SUFFIXES + MGH_SUFFIXES + (".nrrd", ".mha")
"""Suffixes :func:`write_volume` writes."""
_MGH_DTYPES = (np.uint8, np.int16, np.int32, np.float32)


class Volume(NamedTuple):
    """A volume as read from a file, before it becomes an :class:`~jaxreg.core.grid.Image`.

    Attributes:
      data: voxels in the NIfTI layout (first axis fastest), native byte order.
      affine: ``(4, 4)`` voxel-to-world affine, RAS+ mm (a 2-D file has a unit z axis).
      format: ``"nifti"``, ``"mgh"`` or ``"itk"``.
      image: the nibabel image (NIfTI, MGH) or ``None`` (ITK formats).
    """

    data: np.ndarray
    affine: np.ndarray
    format: str
    image: Any = None


def _suffix(path: PathLike) -> str:
    return split_suffix(path)[1].lower()


def format_of(path: PathLike) -> str:
    """``"nifti"``, ``"mgh"`` or ``"itk"`` for a path (a folder is a DICOM series), by its suffix.

    Raises:
      ValueError: an unknown suffix, naming the supported ones.
    """
    if os.path.isdir(path):
        return "itk"
    s = _suffix(path)
    if s in NIFTI_SUFFIXES:
        return "nifti"
    if s in MGH_SUFFIXES:
        return "mgh"
    if s in ITK_SUFFIXES:
        return "itk"
    raise ValueError(
        f"{path}: unknown image format {s or '(no suffix)'!r}: expected one of {', '.join(IMAGE_SUFFIXES)} "
        "or a DICOM folder"
    )


def sitk_module(path: PathLike) -> Any:
    """SimpleITK, or a clear error naming the file and the optional extra that installs it."""
    try:
        import SimpleITK as sitk
    except ImportError as e:  # pragma: no cover - the test extra installs SimpleITK
        raise ValueError(
            f"{path}: reading or writing {_suffix(path) or 'DICOM'} files needs SimpleITK: "
            "pip install 'jaxreg[itk]'"
        ) from e
    return sitk


def _native(data: np.ndarray) -> np.ndarray:
    data = np.asarray(data)
    if not data.dtype.isnative:
        data = data.astype(data.dtype.newbyteorder("="))
    return data


def _flip(n: int) -> np.ndarray:
    return np.diag([-1.0, -1.0] + [1.0] * (n - 2))


def _read_mgh(path: PathLike) -> Volume:
    import nibabel as nib

    try:
        img = nib.load(os.fspath(path))
        if not isinstance(img, nib.MGHImage):
            raise ValueError(f"a {type(img).__name__}, not MGH/MGZ")
        data = np.asanyarray(img.dataobj)
    except Exception as e:  # nibabel raises many types on corrupt files
        raise ValueError(f"{path}: not a readable MGH/MGZ file ({type(e).__name__}: {e})") from e
    data = _native(data)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    return Volume(data, np.asarray(img.affine, np.float64), "mgh", img)


def _read_sitk_image(path: PathLike) -> Any:
    sitk = sitk_module(path)
    try:
        if os.path.isdir(path):
            ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(os.fspath(path))
            if not ids:
                raise ValueError("no DICOM series in this folder")
            if len(ids) > 1:
                raise ValueError(f"{len(ids)} DICOM series in this folder ({', '.join(ids)}): expected one")
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(os.fspath(path), ids[0]))
            return reader.Execute()
        return sitk.ReadImage(os.fspath(path))
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    except RuntimeError as e:  # SimpleITK's exceptions are RuntimeErrors with a long ITK trace
        first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path}: not a readable image file ({first})") from e


def _read_itk(path: PathLike) -> Volume:
    img = _read_sitk_image(path)
    n = img.GetDimension()
    if n not in (2, 3):
        raise ValueError(f"{path}: a {n}-D image, expected 2-D or 3-D")
    arr = _native(sitk_module(path).GetArrayFromImage(img))  # (z, y, x[, C]): last index fastest
    comps = img.GetNumberOfComponentsPerPixel()
    spatial_axes = tuple(range(n))[::-1]
    data = np.transpose(arr, spatial_axes + ((n,) if comps > 1 else ()))
    if comps > 1 and n == 2:
        data = data[:, :, None, :]
    direction = np.asarray(img.GetDirection(), np.float64).reshape(n, n)
    spacing = np.asarray(img.GetSpacing(), np.float64)
    origin = np.asarray(img.GetOrigin(), np.float64)
    f = _flip(n)
    a = np.eye(4)
    a[:n, :n] = f @ direction @ np.diag(spacing)
    a[:n, 3] = f @ origin
    return Volume(data, a, "itk", None)


def read_volume(path: PathLike) -> Volume:
    """Read an image file of any supported format (module docstring) as a :class:`Volume`.

    Args:
      path: a file with one of :data:`IMAGE_SUFFIXES`, or a folder holding one DICOM series.

    Returns:
      The data in the NIfTI layout and the RAS+ voxel-to-world affine.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ValueError: an unknown suffix, an unreadable or corrupt file, a folder without exactly one DICOM series,
        SimpleITK missing for the ITK formats. Messages start with the path.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(2, f"{path}: no such file", str(path))
    fmt = format_of(path)
    if fmt == "nifti":
        from jaxreg.io.nifti import _affine_or_error, load_nifti

        img, data = load_nifti(path)
        return Volume(data, _affine_or_error(img, path), "nifti", img)
    vol = _read_mgh(path) if fmt == "mgh" else _read_itk(path)
    aff = vol.affine
    if not np.all(np.isfinite(aff)):
        raise ValueError(f"{path}: the voxel-to-world affine contains NaN or Inf:\n{aff}")
    if abs(np.linalg.det(aff[:3, :3])) < 1e-12:
        raise ValueError(f"{path}: singular voxel-to-world affine (a zero voxel size?):\n{aff}")
    return vol


def check_write_suffix(path: PathLike, what: str = "an image") -> str:
    """The format of a destination path for :func:`write_volume`, or a ValueError naming the suffixes."""
    s = _suffix(path)
    if s not in WRITE_SUFFIXES:
        raise ValueError(
            f"{path}: expected a file name ending in {', '.join(WRITE_SUFFIXES)} for {what}, got suffix {s!r}"
        )
    return "nifti" if s in NIFTI_SUFFIXES else "mgh" if s in MGH_SUFFIXES else "itk"


def write_mgh(tmp: str, data: np.ndarray, affine: np.ndarray, ndim: int, path: PathLike) -> None:
    """Write ``data`` (``(*spatial)`` or ``(*spatial, C)``) as MGH/MGZ with a RAS+ 4x4 ``affine`` (frames = C)."""
    import nibabel as nib

    d = np.asarray(data)
    store = next((t for t in _MGH_DTYPES if d.dtype == t), None)
    if store is None:
        if np.issubdtype(d.dtype, np.integer) and d.size and d.min() >= np.iinfo(np.int32).min and d.max() <= np.iinfo(np.int32).max:
            store = np.int32
        else:
            store = np.float32
    if ndim == 2:
        d = d[:, :, None] if d.ndim == 2 else d[:, :, None, :]
    nib.save(nib.MGHImage(d.astype(store, copy=False), affine), tmp)


def write_itk(tmp: str, data: np.ndarray, affine: np.ndarray, ndim: int, path: PathLike) -> None:
    """Write ``data`` (NIfTI layout, ``(*spatial)`` or ``(*spatial, C)``) with SimpleITK (.nrrd, .mha).

    Raises:
      ValueError: the grid has shear (ITK images hold a direction and a spacing only).
    """
    sitk = sitk_module(path)
    lin = np.asarray(affine, np.float64)[:ndim, :ndim]
    spacing = np.linalg.norm(lin, axis=0)
    f = _flip(ndim)
    direction = f @ lin / spacing
    if not np.allclose(direction.T @ direction, np.eye(ndim), atol=1e-6):
        raise ValueError(
            f"{path}: the grid has shear (non-orthogonal voxel axes), which NRRD/MetaImage cannot store; "
            "write NIfTI instead"
        )
    d = np.asarray(data)
    vector = d.ndim == ndim + 1
    arr = np.transpose(d, tuple(range(ndim))[::-1] + ((ndim,) if vector else ()))
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr), isVector=vector)
    img.SetSpacing(spacing.tolist())
    img.SetOrigin((f @ np.asarray(affine, np.float64)[:ndim, 3]).tolist())
    img.SetDirection(direction.flatten().tolist())
    sitk.WriteImage(img, tmp, useCompression=True)


def write_volume(tmp: str, data: np.ndarray, affine: np.ndarray, ndim: int, path: PathLike) -> None:
    """Write to ``tmp`` (a temporary name with ``path``'s suffix) in the format of ``path``'s suffix.

    ``data`` is ``(*spatial)`` or ``(*spatial, C)``; ``affine`` is the grid's ``(ndim + 1)`` square affine.
    NIfTI files are written by :func:`jaxreg.io.save_image` itself (sform/qform codes, intents).
    """
    a = np.asarray(affine, np.float64)
    a4 = np.eye(4)
    a4[:ndim, :ndim] = a[:ndim, :ndim]
    a4[:ndim, 3] = a[:ndim, ndim]
    fmt = check_write_suffix(path)
    if fmt == "mgh":
        write_mgh(tmp, data, a4, ndim, path)
    elif fmt == "itk":
        write_itk(tmp, data, a4, ndim, path)
    else:  # pragma: no cover - save_image handles NIfTI
        raise ValueError(f"{path}: NIfTI is written by save_image")
