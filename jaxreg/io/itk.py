"""ITK / ANTs transform files <-> jaxreg transforms.

Formats:

* ``.mat``: the MATLAB v4 file ITK's ``MatlabTransformIO`` and ANTs write (``*GenericAffine.mat``): one
  variable named after the transform type (e.g. ``AffineTransform_double_3_3``, a column of parameters) and
  ``fixed`` (the fixed parameters, the centre for matrix transforms).
* ``.tfm`` / ``.txt``: ITK's text format (``#Insight Transform File V1.0``, then ``Transform:``,
  ``Parameters:``, ``FixedParameters:`` per transform). A ``CompositeTransform_*`` line is followed by its
  members, listed in ITK queue order.
* ``.h5`` / ``.hdf5``: ITK's HDF5 transform format (``HDF5TransformIO``; what ``antsRegistration
  --write-composite-transform 1`` writes as ``*Composite.h5`` / ``*InverseComposite.h5``): groups
  ``/TransformGroup/0``, ``/1``, ... in ITK queue order, each with the datasets ``TransformType`` (a string),
  ``TransformParameters`` and ``TransformFixedParameters`` (ITK 4 spelled the last two ``Tranform...``; both
  are read). A composite's group 0 holds only ``TransformType: CompositeTransform_double_N_N``. Read and written
  through h5py.
* ``.nii`` / ``.nii.gz``: displacement fields as ITK/ANTs write them (``*Warp.nii.gz``,
  ``sitk.WriteImage`` of a vector image): 5-D ``(X, Y, Z, 1, 3)`` (2-D: ``(X, Y, 1, 1, 2)``), intent
  ``NIFTI_INTENT_VECTOR`` (1007), float32/64, displacement vectors in ITK's LPS world frame.

Coordinates. ITK's physical space is LPS: ``x_lps = F x_ras`` with ``F = diag(-1, -1, 1)`` (2-D:
``diag(-1, -1)``), while jaxreg works in RAS. An ITK matrix transform ``y = M (x - c) + c + t`` (LPS) is the
jaxreg :class:`~jaxreg.transforms.linear.Affine` with ``M_ras = F M F``, ``t_ras = F t``, ``c_ras = F c``; a
displacement vector ``u_ras = F u_lps``. Both directions of this conversion are checked against SimpleITK in
``tests/test_itk_compat.py``.

Order of transforms.

* Within one file, and in ITK/SimpleITK's ``CompositeTransform([A, B])``, the *last* transform is applied
  first to a point: ``CompositeTransform([A, B]).TransformPoint(p) = A(B(p))`` (checked empirically with
  SimpleITK 2.5). jaxreg's ``compose(A, B)(x) = A(B(x))`` uses the same order, so a composite file reads as
  ``compose(*members)``.
* On the ``antsApplyTransforms -t T1 -t T2 ... -t Tn`` command line (and in ANTsPy's ``transformlist``), the
  fixed-space point goes through the *first listed* transform first: the moving image is sampled at
  ``Tn(...T2(T1(x)))``, i.e. jaxreg ``compose(Tn, ..., T1)``. This is the meaning of ANTs' "the last
  transform listed is applied first" (to the *image*; the point goes the other way). ANTs pushes repeated
  ``-t`` options onto a stack (``push_front``) and adds them to its ITK composite from the front, so the ITK
  queue is ``[Tn, ..., T1]`` (``antsApplyTransforms --verbose`` prints it in that order). Evidence: with
  ANTsPy 0.6.3, ``ants.apply_transforms(fixed, moving, ["A.mat", "B.mat"])`` equals SimpleITK's
  ``Resample`` with ``CompositeTransform([B, A])`` (max difference 7e-8) and differs from
  ``CompositeTransform([A, B])`` (max difference 0.93); ``ants.apply_transforms_to_points(3, pts,
  ["A.mat", "B.mat"])`` returns ``B(A(p))``; the usual ``-t 1Warp.nii.gz -t 0GenericAffine.mat`` gives
  ``affine(warp(x))``; see also SimpleITK issue #2505 and PR #2628, ANTsPy issues #137 and #271.
  :func:`compose_files` implements this convention.

Writing. One table in this module (``_ITK_TEXT_FORMATS``) maps transform classes to their ITK text encoders;
it is looked up along the class's MRO, so every :class:`~jaxreg.transforms.base.LinearTransform` shares one
entry, and a new transform that ITK can hold adds one entry there. A ``.mat`` file holds the transform's
:meth:`~jaxreg.transforms.base.Transform.linear_part`; a ``.nii`` file a displacement field.

Every writer is atomic (see :func:`jaxreg.io.atomic_write`).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxreg.core.compilation import jit
from jaxreg.core.grid import Grid
from jaxreg.io._atomic import PathLike, atomic_write, split_suffix
from jaxreg.io.nifti import (
    NIFTI_INTENT_VECTOR,
    _check_exists,
    grid_to_nifti_affine,
    load_nifti,
    make_nifti,
    nifti_grid,
)
from jaxreg.transforms.base import LinearTransform, Transform
from jaxreg.transforms.compose import Composite
from jaxreg.transforms.dense import DisplacementField
from jaxreg.transforms.linear import Affine

__all__ = [
    "compose_files",
    "itk_to_transform",
    "lps_to_ras_affine",
    "read_displacement_field",
    "read_itk_transforms",
    "read_transform",
    "read_transforms",
    "transform_to_itk",
    "write_displacement_field",
    "write_transform",
]

_TEXT_HEADER = "#Insight Transform File V1.0"
_TYPE_RE = re.compile(r"^(?P<kind>[A-Za-z0-9]+)_(?P<prec>double|float)_(?P<n>\d)_(?P<m>\d)$")
_TEXT_SUFFIXES = (".tfm", ".txt")
_FIELD_SUFFIXES = (".nii", ".nii.gz")
_H5_SUFFIXES = (".h5", ".hdf5")
DISPVECT_INTENTS = (0, 1006, NIFTI_INTENT_VECTOR)  # none, NIFTI_INTENT_DISPVECT, NIFTI_INTENT_VECTOR


def _flip(ndim: int) -> np.ndarray:
    """The LPS <-> RAS sign flip ``F`` (its own inverse)."""
    return np.diag([-1.0, -1.0] + [1.0] * (ndim - 2))


def lps_to_ras_affine(matrix: Any, translation: Any, center: Any) -> Affine:
    """An ITK matrix transform in LPS, ``y = M (x - c) + c + t``, as a jaxreg :class:`Affine` in RAS.

    Args:
      matrix: ``(n, n)`` LPS matrix ``M``.
      translation: ``(n,)`` LPS translation ``t`` (mm).
      center: ``(n,)`` LPS centre ``c`` (mm).

    Returns:
      ``Affine(F M F, F t, F c)`` with ``F = diag(-1, -1[, 1])``; the same map of physical points.
    """
    m = np.asarray(matrix, dtype=np.float64)
    n = m.shape[0]
    f = _flip(n)
    return Affine(
        jnp.asarray(f @ m @ f),
        jnp.asarray(f @ np.asarray(translation, dtype=np.float64)),
        jnp.asarray(f @ np.asarray(center, dtype=np.float64)),
    )


# -- ITK parameterisations -----------------------------------------------------------------------------------
def _rot2(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s], [s, c]])


def _versor(v: np.ndarray, what: str) -> np.ndarray:
    """Rotation matrix of an ITK versor (the vector part of a unit quaternion, ``w = sqrt(1 - |v|^2)``)."""
    x, y, z = (float(a) for a in v)
    n2 = x * x + y * y + z * z
    if n2 > 1.0 + 1e-6:
        raise ValueError(f"{what}: versor {v.tolist()} has norm {math.sqrt(n2):.6g} > 1")
    w = math.sqrt(max(0.0, 1.0 - n2))
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def _euler3(ax: float, ay: float, az: float, zyx: bool) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = (
        math.cos(ax),
        math.sin(ax),
        math.cos(ay),
        math.sin(ay),
        math.cos(az),
        math.sin(az),
    )
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx if zyx else rz @ rx @ ry


# Each entry: (allowed dimensions, number of parameters, allowed numbers of fixed parameters, description,
# decoder(params, fixed, n, what) -> (M, t, c) in LPS).
_Decoder = Callable[[np.ndarray, np.ndarray, int, str], tuple[np.ndarray, np.ndarray, np.ndarray]]


def _matrix_offset(p: np.ndarray, fx: np.ndarray, n: int, what: str):
    return p[: n * n].reshape(n, n), p[n * n :], fx[:n] if fx.size else np.zeros(n)


def _center(fx: np.ndarray, n: int) -> np.ndarray:
    return fx[:n] if fx.size else np.zeros(n)


_LINEAR: dict[
    str, tuple[tuple[int, ...], Callable[[int], int], tuple[Callable[[int], int], ...], str, _Decoder]
] = {
    "AffineTransform": (
        (2, 3),
        lambda n: n * n + n,
        (lambda n: n,),
        "n*n matrix (row-major) + n translation",
        _matrix_offset,
    ),
    "MatrixOffsetTransformBase": (
        (2, 3),
        lambda n: n * n + n,
        (lambda n: n,),
        "n*n matrix (row-major) + n translation",
        _matrix_offset,
    ),
    "Rigid3DTransform": ((3,), lambda n: 12, (lambda n: 3,), "9 matrix + 3 translation", _matrix_offset),
    "Euler3DTransform": (
        (3,),
        lambda n: 6,
        (lambda n: 3, lambda n: 4),
        "3 angles (x, y, z, rad) + 3 translation",
        lambda p, fx, n, w: (_euler3(p[0], p[1], p[2], fx.size > 3 and fx[3] != 0), p[3:6], _center(fx, 3)),
    ),
    "Euler2DTransform": (
        (2,),
        lambda n: 3,
        (lambda n: 2,),
        "angle (rad) + 2 translation",
        lambda p, fx, n, w: (_rot2(p[0]), p[1:3], _center(fx, 2)),
    ),
    "Rigid2DTransform": (
        (2,),
        lambda n: 3,
        (lambda n: 2,),
        "angle (rad) + 2 translation",
        lambda p, fx, n, w: (_rot2(p[0]), p[1:3], _center(fx, 2)),
    ),
    "Similarity2DTransform": (
        (2,),
        lambda n: 4,
        (lambda n: 2,),
        "scale + angle (rad) + 2 translation",
        lambda p, fx, n, w: (p[0] * _rot2(p[1]), p[2:4], _center(fx, 2)),
    ),
    "VersorTransform": (
        (3,),
        lambda n: 3,
        (lambda n: 3,),
        "3 versor",
        lambda p, fx, n, w: (_versor(p[:3], w), np.zeros(3), _center(fx, 3)),
    ),
    "VersorRigid3DTransform": (
        (3,),
        lambda n: 6,
        (lambda n: 3,),
        "3 versor + 3 translation",
        lambda p, fx, n, w: (_versor(p[:3], w), p[3:6], _center(fx, 3)),
    ),
    "Similarity3DTransform": (
        (3,),
        lambda n: 7,
        (lambda n: 3,),
        "3 versor + 3 translation + scale",
        lambda p, fx, n, w: (p[6] * _versor(p[:3], w), p[3:6], _center(fx, 3)),
    ),
    # ITK's ScaleVersor3D matrix is R + diag(s) - I (not R diag(s)); ScaleSkewVersor3D adds the 6 skew terms
    # at (0,1), (0,2), (1,0), (1,2), (2,0), (2,1). Both checked against SimpleITK's GetMatrix().
    "ScaleVersor3DTransform": (
        (3,),
        lambda n: 9,
        (lambda n: 3,),
        "3 versor + 3 translation + 3 scale",
        lambda p, fx, n, w: (_versor(p[:3], w) + np.diag(p[6:9] - 1.0), p[3:6], _center(fx, 3)),
    ),
    "ScaleSkewVersor3DTransform": (
        (3,),
        lambda n: 15,
        (lambda n: 3,),
        "3 versor + 3 translation + 3 scale + 6 skew",
        lambda p, fx, n, w: (
            _versor(p[:3], w) + np.diag(p[6:9] - 1.0) + _skew(p[9:15]),
            p[3:6],
            _center(fx, 3),
        ),
    ),
    "ScaleTransform": (
        (2, 3),
        lambda n: n,
        (lambda n: n,),
        "n scale factors",
        lambda p, fx, n, w: (np.diag(p[:n]), np.zeros(n), _center(fx, n)),
    ),
    "TranslationTransform": (
        (2, 3),
        lambda n: n,
        (lambda n: 0,),
        "n translation",
        lambda p, fx, n, w: (np.eye(n), p[:n], np.zeros(n)),
    ),
    "IdentityTransform": (
        (2, 3),
        lambda n: 0,
        (lambda n: 0,),
        "no parameters",
        lambda p, fx, n, w: (np.eye(n), np.zeros(n), np.zeros(n)),
    ),
}


def _skew(k: np.ndarray) -> np.ndarray:
    s = np.zeros((3, 3))
    s[0, 1], s[0, 2], s[1, 0], s[1, 2], s[2, 0], s[2, 1] = k
    return s


def _parse_type(name: str, what: str) -> tuple[str, int]:
    m = _TYPE_RE.match(name.strip())
    if not m:
        raise ValueError(
            f"{what}: unrecognised ITK transform type {name!r} (expected e.g. AffineTransform_double_3_3)"
        )
    n, n2 = int(m["n"]), int(m["m"])
    if n != n2:
        raise ValueError(
            f"{what}: transform type {name!r} maps {n}-D to {n2}-D points; only N_N is supported"
        )
    return m["kind"], n


def itk_to_transform(
    name: str, parameters: Sequence[float], fixed_parameters: Sequence[float], *, what: str = "transform"
) -> Transform:
    """Decode one ITK transform (type name and parameters, LPS) into a jaxreg transform (RAS).

    Supported: ``AffineTransform``, ``MatrixOffsetTransformBase``, ``Rigid3DTransform``, ``Euler2DTransform``,
    ``Rigid2DTransform``, ``Euler3DTransform`` (incl. the ZYX flag, 4th fixed parameter), ``VersorTransform``,
    ``VersorRigid3DTransform``, ``Similarity2DTransform``, ``Similarity3DTransform``, ``ScaleTransform``,
    ``ScaleVersor3DTransform``, ``ScaleSkewVersor3DTransform``, ``TranslationTransform``,
    ``IdentityTransform`` (all ``_double_`` or ``_float_``), decoded to an :class:`Affine` about the ITK
    centre;
    and ``DisplacementFieldTransform`` (text form: fixed parameters size, origin, spacing, direction) decoded
    to a
    :class:`~jaxreg.transforms.dense.DisplacementField`.

    Args:
      name: e.g. ``"AffineTransform_double_3_3"``.
      parameters: the ``Parameters`` values.
      fixed_parameters: the ``FixedParameters`` values.
      what: prefix for error messages (e.g. the file name).

    Returns:
      The transform, mapping RAS world points (mm) as ITK maps the LPS-flipped points.

    Raises:
      ValueError: unknown type or wrong number of (fixed) parameters, naming what was expected.
    """
    kind, n = _parse_type(name, what)
    p = np.asarray(parameters, dtype=np.float64).ravel()
    fx = np.asarray(fixed_parameters, dtype=np.float64).ravel()
    if not (np.all(np.isfinite(p)) and np.all(np.isfinite(fx))):
        raise ValueError(f"{what}: {name} has NaN or Inf parameters")
    if kind == "DisplacementFieldTransform":
        return _field_from_itk_parameters(p, fx, n, f"{what}: {name}")
    if kind not in _LINEAR:
        supported = ", ".join(sorted(_LINEAR) + ["DisplacementFieldTransform", "CompositeTransform"])
        raise ValueError(f"{what}: unsupported ITK transform type {name!r}; supported: {supported}")
    dims, n_params, n_fixed, desc, decode = _LINEAR[kind]
    if n not in dims:
        raise ValueError(f"{what}: {name}: {kind} exists in {' or '.join(f'{d}-D' for d in dims)} only")
    if p.size != n_params(n):
        raise ValueError(f"{what}: {name}: expected {n_params(n)} parameters ({desc}), got {p.size}")
    allowed = sorted({f(n) for f in n_fixed})
    if fx.size not in allowed:
        raise ValueError(
            f"{what}: {name}: expected {' or '.join(map(str, allowed))} fixed parameters "
            f"({'centre' if max(allowed) else 'none'}), got {fx.size}"
        )
    m, t, c = decode(p, fx, n, f"{what}: {name}")
    return lps_to_ras_affine(m, t, c)


def _affine(transform: Transform) -> Affine:
    return Affine.from_transform(transform)


_as_affine = jit(_affine)  # one compiled program per transform structure, not one per operation


def transform_to_itk(transform: LinearTransform) -> tuple[str, np.ndarray, np.ndarray]:
    """Encode a jaxreg linear transform (RAS) as an ITK ``AffineTransform_double_N_N`` (LPS).

    Args:
      transform: any linear transform (its :meth:`~jaxreg.transforms.base.Transform.linear_part` is encoded,
        so a composite of linear transforms works too); its ``center`` (if any) becomes the ITK centre,
        otherwise the origin.

    Returns:
      ``(type_name, parameters (n*n + n,), fixed_parameters (n,))`` float64: the LPS matrix row-major, the
      LPS translation, the LPS centre.
    """
    linear = transform.linear_part() if isinstance(transform, Transform) else None
    if linear is None:
        raise TypeError(f"transform: expected a jaxreg LinearTransform, got {type(transform).__name__}")
    a = _as_affine(linear)
    n = a.ndim
    f = _flip(n)
    m = f @ np.asarray(a.matrix, dtype=np.float64) @ f
    t = f @ np.asarray(a.translation, dtype=np.float64)
    c = f @ np.asarray(a.center, dtype=np.float64)
    return f"AffineTransform_double_{n}_{n}", np.concatenate([m.ravel(), t]), c


# -- displacement fields -------------------------------------------------------------------------------------
def _field_from_itk_parameters(p: np.ndarray, fx: np.ndarray, n: int, what: str) -> Transform:
    nfix = n + n + n + n * n
    if fx.size != nfix:
        raise ValueError(
            f"{what}: expected {nfix} fixed parameters (size {n}, origin {n}, spacing {n}, "
            f"direction {n * n}), got {fx.size}"
        )
    size = fx[:n]
    if np.any(size < 1) or np.any(size != np.round(size)):
        raise ValueError(f"{what}: invalid field size {size.tolist()}")
    size_t = tuple(int(s) for s in size)
    if p.size != int(np.prod(size_t)) * n:
        raise ValueError(
            f"{what}: expected {int(np.prod(size_t)) * n} parameters (size {size_t} x {n} components), "
            f"got {p.size}"
        )
    origin, spacing, direction = fx[n : 2 * n], fx[2 * n : 3 * n], fx[3 * n :].reshape(n, n)
    grid = _grid_from_lps(size_t, origin, spacing, direction, what)
    # ITK order: index 0 fastest, components interleaved -> C-order array (k, j, i, c); reverse the axes.
    u = p.reshape(size_t[::-1] + (n,)).transpose(tuple(range(n - 1, -1, -1)) + (n,))
    u = u @ _flip(n)  # F is diagonal: u_ras = F u_lps
    return DisplacementField(jnp.asarray(u), grid)


def _grid_from_lps(size, origin, spacing, direction, what: str) -> Grid:
    n = len(size)
    f = _flip(n)
    a = np.eye(n + 1)
    a[:n, :n] = f @ np.asarray(direction) * np.asarray(spacing)[None, :]
    a[:n, n] = f @ np.asarray(origin)
    try:
        return Grid(size, a)
    except ValueError as e:
        raise ValueError(f"{what}: invalid field geometry ({e})") from e


def _field_to_itk_parameters(field: Any) -> tuple[str, np.ndarray, np.ndarray]:
    g: Grid = field.grid
    n = g.ndim
    f = _flip(n)
    u = np.asarray(field.displacement, dtype=np.float64) @ f
    params = u.transpose(tuple(range(n - 1, -1, -1)) + (n,)).ravel()
    lps_dir = f @ g.direction
    fixed = np.concatenate([np.asarray(g.shape, np.float64), f @ g.origin, g.spacing, lps_dir.ravel()])
    return f"DisplacementFieldTransform_double_{n}_{n}", params, fixed


def read_displacement_field(path: PathLike) -> Any:
    """Read an ITK/ANTs displacement field NIfTI (``*Warp.nii.gz``) as a ``DisplacementField``.

    Args:
      path: ``.nii``/``.nii.gz`` with data ``(X, Y, Z, 1, 3)`` (3-D) or ``(X, Y, 1, 1, 2)`` (2-D), vectors in
        LPS mm (intent 1007 as ITK writes; intents 0 and 1006 are accepted too).

    Returns:
      :class:`~jaxreg.transforms.dense.DisplacementField` on the file's grid with RAS displacements
      ``(*grid.shape, ndim)`` in mm: ``T(x) = x + u(x)``, zero outside the grid, as ITK's
      ``DisplacementFieldTransform``.

    Raises:
      FileNotFoundError: missing file.
      ValueError: unreadable file, wrong shape or intent, NaN/Inf values, singular affine.
    """
    from jaxreg.io.nifti import _affine_or_error

    img, data = load_nifti(path)
    shp = data.shape
    intent = int(img.header["intent_code"])
    if len(shp) != 5 or shp[3] != 1 or shp[4] not in (2, 3):
        raise ValueError(
            f"{path}: not an ITK displacement field: data of shape {shp}, "
            "expected (X, Y, Z, 1, 3) for 3-D or "
            "(X, Y, 1, 1, 2) for 2-D"
        )
    n = shp[4]
    if n == 2 and shp[2] != 1:
        raise ValueError(f"{path}: a 2-component field must have one slice, (X, Y, 1, 1, 2), got {shp}")
    if intent not in DISPVECT_INTENTS:
        raise ValueError(
            f"{path}: NIfTI intent code {intent}, expected 1007 (vector) for a displacement field"
        )
    if not np.issubdtype(data.dtype, np.floating):
        data = data.astype(np.float32)
    bad = ~np.isfinite(data)
    if bad.any():
        raise ValueError(f"{path}: displacement field contains {int(bad.sum())} NaN/Inf values")
    spatial = shp[:3] if n == 3 else shp[:2]
    u = data.reshape(spatial + (n,)) @ _flip(n).astype(data.dtype)
    dt = jax.dtypes.canonicalize_dtype(u.dtype)
    grid = nifti_grid(_affine_or_error(img, path), spatial)
    return DisplacementField(jnp.asarray(u.astype(dt, copy=False)), grid)


def write_displacement_field(
    field: Any, path: PathLike, *, dtype: Any = None, inputs: Iterable[PathLike] = ()
) -> None:
    """Write a ``DisplacementField`` as an ITK/ANTs displacement field NIfTI, atomically.

    Args:
      field: :class:`~jaxreg.transforms.dense.DisplacementField` (RAS mm), 2-D or 3-D.
      path: ``.nii`` or ``.nii.gz``.
      dtype: float32 or float64; default the field's dtype.
      inputs: paths that must not be overwritten.

    The file holds ``(X, Y, Z, 1, 3)`` (2-D: ``(X, Y, 1, 1, 2)``) LPS vectors, intent 1007, sform = qform
    (code 1): what ``antsApplyTransforms`` and ``sitk.ReadImage`` + ``sitk.DisplacementFieldTransform``
    expect.
    """
    if not isinstance(field, DisplacementField):
        raise TypeError(
            f"field: expected a DisplacementField, got {type(field).__name__}; "
            "sample other transforms first with "
            "jaxreg.transforms.compose.to_displacement(transform, grid)"
        )
    if split_suffix(path)[1].lower() not in _FIELD_SUFFIXES:
        raise ValueError(f"{path}: expected a .nii or .nii.gz file name for a displacement field")
    g = field.grid
    n = g.ndim
    if n not in (2, 3):
        raise ValueError(f"field: expected a 2-D or 3-D field, got {n}-D")
    u = np.asarray(field.displacement)
    store = np.dtype(u.dtype if dtype is None else dtype)
    if store not in (np.float32, np.float64):
        raise ValueError(f"dtype: expected float32 or float64 for a displacement field, got {store}")
    if not np.all(np.isfinite(u)):
        raise ValueError(f"{path}: the displacement field contains NaN or Inf")
    u = (u.astype(np.float64) @ _flip(n)).astype(store)
    spatial = g.shape if n == 3 else g.shape + (1,)
    data = u.reshape(spatial + (1, n))
    nii = make_nifti(data, grid_to_nifti_affine(g), dtype=store, xform_code=1, intent=NIFTI_INTENT_VECTOR)
    atomic_write(path, lambda tmp: nii.to_filename(tmp), inputs=inputs)


# -- text (.tfm / .txt) --------------------------------------------------------------------------------------
def _parse_numbers(text: str, path: PathLike, lineno: int, key: str) -> np.ndarray:
    try:
        return np.array([float(v) for v in text.split()], dtype=np.float64)
    except ValueError as e:
        raise ValueError(f"{path}: line {lineno}: {key} must be numbers ({e})") from e


def _read_text_blocks(path: PathLike) -> list[tuple[str, np.ndarray | None, np.ndarray | None]]:
    try:
        with open(path, "r", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not an ITK transform text file (not UTF-8 text: {e})") from e
    first = next((ln.strip() for ln in lines if ln.strip()), "")
    if not first.startswith("#Insight Transform File"):
        raise ValueError(
            f"{path}: not an ITK transform text file "
            f"(expected first line {_TEXT_HEADER!r}, got {first[:60]!r})"
        )
    blocks: list[list[Any]] = []
    for i, raw in enumerate(lines, start=1):
        ln = raw.strip()
        if not ln or ln.startswith("#"):
            continue
        key, sep, val = ln.partition(":")
        key = key.strip()
        if not sep:
            raise ValueError(f"{path}: line {i}: expected 'Key: value', got {ln[:60]!r}")
        if key == "Transform":
            blocks.append([val.strip(), None, None, i])
        elif key in ("Parameters", "FixedParameters"):
            if not blocks:
                raise ValueError(f"{path}: line {i}: {key} before any 'Transform:' line")
            slot = 1 if key == "Parameters" else 2
            if blocks[-1][slot] is not None:
                raise ValueError(f"{path}: line {i}: second {key} line for transform {len(blocks) - 1}")
            blocks[-1][slot] = _parse_numbers(val, path, i, key)
        else:
            raise ValueError(
                f"{path}: line {i}: unknown key {key!r} (expected Transform, Parameters, FixedParameters)"
            )
    if not blocks:
        raise ValueError(f"{path}: no 'Transform:' entry (empty or truncated ITK transform file)")
    return [(b[0], b[1], b[2]) for b in blocks]


def _decode_blocks(blocks: list[tuple[str, Any, Any]], path: PathLike) -> list[Transform]:
    out: list[Transform] = []
    start = 0
    if blocks and blocks[0][0].startswith("CompositeTransform"):
        _parse_type(blocks[0][0], str(path))
        start = 1
        if len(blocks) == 1:
            raise ValueError(f"{path}: CompositeTransform with no member transforms (truncated file?)")
    for k in range(start, len(blocks)):
        name, params, fixed = blocks[k]
        what = f"{path}: transform {k}"
        if name.startswith("CompositeTransform"):
            raise ValueError(f"{what}: nested CompositeTransform is not supported")
        kind, n = _parse_type(name, what)
        spec = _LINEAR.get(kind)
        if params is None:
            if spec is None or spec[1](n) > 0:
                raise ValueError(f"{what}: {name} has no 'Parameters:' line (truncated file?)")
            params = np.zeros(0)
        if fixed is None:
            if spec is None or all(f(n) > 0 for f in spec[2]):
                raise ValueError(f"{what}: {name} has no 'FixedParameters:' line (truncated file?)")
            fixed = np.zeros(0)
        out.append(itk_to_transform(name, params, fixed, what=what))
    dims = {t.ndim for t in out}
    if len(dims) > 1:
        raise ValueError(f"{path}: transforms of different dimensions {sorted(dims)} in one file")
    return out


def _fmt(values: np.ndarray) -> str:
    # Shortest round-trip decimal (repr) so that files re-read to the same doubles; integers without ".0".
    out = []
    for v in np.asarray(values, dtype=np.float64).ravel():
        f = float(v)
        out.append(str(int(f)) if f.is_integer() and abs(f) < 1e15 else repr(f))
    return " ".join(out)


def _write_text(
    entries: list[tuple[str, np.ndarray, np.ndarray]],
    path: PathLike,
    inputs: Iterable[PathLike],
    composite: bool,
) -> None:
    lines = [_TEXT_HEADER]
    k = 0
    if composite:
        n = entries[0][0][-1]
        lines += ["#Transform 0", f"Transform: CompositeTransform_double_{n}_{n}"]
        k = 1
    for name, params, fixed in entries:
        lines += [
            f"#Transform {k}",
            f"Transform: {name}",
            f"Parameters: {_fmt(params)}",
            f"FixedParameters: {_fmt(fixed)}",
        ]
        k += 1
    text = "\n".join(lines) + "\n"

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(path, write, inputs=inputs)


# -- MATLAB v4 (.mat) ----------------------------------------------------------------------------------------
def _read_mat(path: PathLike) -> list[Transform]:
    import scipy.io

    try:
        mat = scipy.io.loadmat(os.fspath(path), squeeze_me=False)
    except Exception as e:  # scipy raises ValueError, TypeError, OSError, MatReadError on bad input
        raise ValueError(
            f"{path}: not a readable ITK/ANTs MATLAB transform file ({type(e).__name__}: {e})"
        ) from e
    names = [k for k in mat if not k.startswith("__") and k != "fixed"]
    if len(names) != 1:
        raise ValueError(
            f"{path}: expected one transform variable (e.g. AffineTransform_double_3_3) and 'fixed', "
            f"found variables {sorted(k for k in mat if not k.startswith('__'))}"
        )
    name = names[0]
    params = np.asarray(mat[name], dtype=np.float64).ravel()
    fixed = np.asarray(mat["fixed"], dtype=np.float64).ravel() if "fixed" in mat else np.zeros(0)
    return [itk_to_transform(name, params, fixed, what=str(path))]


def _write_mat(
    name: str, params: np.ndarray, fixed: np.ndarray, path: PathLike, inputs: Iterable[PathLike]
) -> None:
    import scipy.io

    def write(tmp: str) -> None:
        # Column vectors of doubles, transform variable first, as ITK's MatlabTransformIO writes them.
        scipy.io.savemat(tmp, {name: params.reshape(-1, 1), "fixed": fixed.reshape(-1, 1)}, format="4")

    atomic_write(path, write, inputs=inputs)


# -- HDF5 (.h5 / .hdf5) -------------------------------------------------------------------------------------
_H5_PARAMS = ("TransformParameters", "TranformParameters")  # ITK >= 5 spelling first, then ITK 4's
_H5_FIXED = ("TransformFixedParameters", "TranformFixedParameters")


def _h5py(path: PathLike) -> Any:
    try:
        import h5py
    except ImportError as e:  # a dependency of jaxreg; only a broken installation lacks it
        raise ValueError(f"{path}: reading or writing ITK .h5 transforms needs h5py (pip install h5py)") from e
    return h5py


def _read_h5_blocks(path: PathLike) -> list[tuple[str, np.ndarray | None, np.ndarray | None]]:
    h5py = _h5py(path)
    try:
        f = h5py.File(os.fspath(path), "r")
    except OSError as e:
        raise ValueError(f"{path}: not an HDF5 file ({e})") from e
    with f:
        group = f.get("TransformGroup")
        if not isinstance(group, h5py.Group):
            raise ValueError(f"{path}: not an ITK HDF5 transform file (no /TransformGroup)")
        keys = sorted(group, key=lambda k: int(k) if k.isdigit() else -1)
        if not keys or not all(k.isdigit() for k in keys) or [int(k) for k in keys] != list(range(len(keys))):
            raise ValueError(f"{path}: /TransformGroup must hold groups 0, 1, ..., got {sorted(group)}")
        blocks: list[tuple[str, Any, Any]] = []
        for k in keys:
            g = group[k]
            if "TransformType" not in g:
                raise ValueError(f"{path}: /TransformGroup/{k} has no TransformType")
            raw = np.asarray(g["TransformType"][()]).ravel()
            name = raw[0] if raw.size else b""
            name = name.decode("ascii", "replace") if isinstance(name, bytes) else str(name)

            def numbers(names: tuple[str, str], g: Any = g) -> np.ndarray | None:
                for n in names:
                    if n in g:
                        return np.asarray(g[n][()], dtype=np.float64).ravel()
                return None

            blocks.append((name.strip(), numbers(_H5_PARAMS), numbers(_H5_FIXED)))
    return blocks


def _write_h5(entries: list[_Entry], path: PathLike, inputs: Iterable[PathLike], composite: bool) -> None:
    import platform

    h5py = _h5py(path)
    text = h5py.string_dtype("ascii")
    groups: list[tuple[str, np.ndarray | None, np.ndarray | None]] = []
    if composite:
        n = entries[0][0][-1]
        groups.append((f"CompositeTransform_double_{n}_{n}", None, None))
    groups += [(name, params, fixed) for name, params, fixed in entries]

    def write(tmp: str) -> None:
        with h5py.File(tmp, "w") as f:
            # The provenance strings ITK writes; its reader does not require them.
            for key, value in (
                ("HDFVersion", f"HDF5 library version: {h5py.version.hdf5_version}"),
                ("ITKVersion", "jaxreg"),
                ("OSName", platform.system()),
                ("OSVersion", platform.release()),
            ):
                f.create_dataset(key, data=np.array([value], dtype=object), dtype=text)
            root = f.create_group("TransformGroup")
            for i, (name, params, fixed) in enumerate(groups):
                g = root.create_group(str(i))
                g.create_dataset("TransformType", data=np.array([name], dtype=object), dtype=text)
                if params is not None:
                    g.create_dataset("TransformParameters", data=np.asarray(params, np.float64).ravel())
                    g.create_dataset("TransformFixedParameters", data=np.asarray(fixed, np.float64).ravel())

    atomic_write(path, write, inputs=inputs)


# -- public entry points -------------------------------------------------------------------------------------
def _kind_of(path: PathLike) -> str:
    suffix = split_suffix(path)[1].lower()
    if suffix == ".mat":
        return "mat"
    if suffix in _TEXT_SUFFIXES:
        return "text"
    if suffix in _FIELD_SUFFIXES:
        return "field"
    if suffix in _H5_SUFFIXES:
        return "h5"
    raise ValueError(
        f"{path}: unsupported transform file suffix {suffix!r}; expected .mat (ITK/ANTs MATLAB), .tfm/.txt "
        "(ITK text), .h5/.hdf5 (ITK HDF5, e.g. ANTs' Composite.h5) or .nii/.nii.gz (displacement field)"
    )


def read_itk_transforms(path: PathLike) -> list[Transform]:
    """The transforms stored in one ITK file, in the file's (ITK queue) order.

    A composite ``.tfm`` yields its members ``[T0, T1, ...]``, which ITK applies to a point last-first:
    ``T0(T1(...(p)))``; a single transform, a ``.mat`` file or a displacement field yields a one-element list.

    Args:
      path: ``.mat``, ``.tfm``, ``.txt``, ``.h5``, ``.hdf5``, ``.nii`` or ``.nii.gz``.

    Returns:
      List of jaxreg transforms (linear ones as :class:`Affine`, RAS world mm).

    Raises:
      FileNotFoundError: missing file.
      ValueError: unknown suffix, unreadable or truncated file, unsupported transform type, wrong numbers of
        parameters; messages name the path.
    """
    kind = _kind_of(path)
    _check_exists(path)
    if kind == "field":
        return [read_displacement_field(path)]
    if kind == "mat":
        return _read_mat(path)
    if kind == "h5":
        return _decode_blocks(_read_h5_blocks(path), path)
    return _decode_blocks(_read_text_blocks(path), path)


def read_transform(path: PathLike) -> Transform:
    """Read one transform file (dispatch on the suffix) as a single jaxreg transform.

    ``.mat`` (ITK/ANTs MATLAB v4), ``.tfm``/``.txt`` (ITK text) and ``.h5``/``.hdf5`` (ITK HDF5; a composite
    becomes ``compose(T0, T1, ...)``, the ITK order), ``.nii``/``.nii.gz`` (ITK displacement field). The result maps
    fixed-space RAS world points (mm) to moving-space points, exactly as ITK maps the LPS-flipped points.

    Args:
      path: the file.

    Returns:
      :class:`Affine` for linear transforms, ``DisplacementField`` for fields, ``Composite`` for composites.

    Raises:
      See :func:`read_itk_transforms`.
    """
    ts = read_itk_transforms(path)
    if len(ts) == 1:
        return ts[0]
    from jaxreg.transforms.compose import compose

    return compose(*ts)


def read_transforms(paths: Sequence[PathLike]) -> list[Transform]:
    """:func:`read_transform` of each path, in the given order (no composition)."""
    if isinstance(paths, (str, os.PathLike)):
        raise TypeError("paths: expected a sequence of paths, got a single path; use read_transform")
    return [read_transform(p) for p in paths]


def compose_files(paths: Sequence[PathLike], *, invert: Sequence[bool] | None = None) -> Transform:
    """The transform ``antsApplyTransforms -t paths[0] -t paths[1] ... -t paths[-1]`` applies.

    ANTs' convention: the fixed point ``x`` goes through the *first* listed file first, and the moving image
    is
    sampled at ``Tn(...T2(T1(x)))``: this returns ``compose(Tn, ..., T1)``. For the output of
    ``antsRegistration`` (``-t 1Warp.nii.gz -t 0GenericAffine.mat``) that is ``affine(warp(x))``: the warp
    lives in the fixed space and the affine carries the result into the moving space. (Evidence for this
    order is in the module docstring.) Use it with ``warp(moving, compose_files(paths), fixed_grid)``.

    Args:
      paths: transform files in command-line order.
      invert: per-file flags as in ``-t [file.mat, 1]``: use the inverse of that (linear) transform.

    Returns:
      A single transform (the file's own when there is one path), else a ``Composite``.

    Raises:
      ValueError: empty list, ``invert`` of the wrong length or on a non-linear transform, plus the errors of
        :func:`read_transform`.
    """
    from jaxreg.transforms.compose import compose
    from jaxreg.transforms.compose import invert as invert_transform

    ts = read_transforms(paths)
    if not ts:
        raise ValueError("paths: expected at least one transform file")
    flags = [False] * len(ts) if invert is None else [bool(f) for f in invert]
    if len(flags) != len(ts):
        raise ValueError(f"invert: expected {len(ts)} flags (one per path), got {len(flags)}")
    for i, (t, flag) in enumerate(zip(ts, flags, strict=True)):
        if flag:
            if not t.is_linear:
                raise ValueError(
                    f"{paths[i]}: cannot invert a {type(t).__name__} (ANTs does not either); use the inverse "
                    "warp file (e.g. *InverseWarp.nii.gz) instead"
                )
            ts[i] = invert_transform(t)
    if len(ts) == 1:
        return ts[0]
    return compose(*reversed(ts))


_Entry = tuple[str, np.ndarray, np.ndarray]  # (ITK type name, parameters, fixed parameters)


class _ItkTextFormat(NamedTuple):
    """How the instances of one transform class are written to an ITK text file.

    Attributes:
      entries: ``(transform, path) -> [(type_name, parameters, fixed_parameters), ...]``, the ``Transform:``
        blocks of the transform in ITK queue order (``path`` is for error messages).
      composite: whether the blocks are wrapped in a ``CompositeTransform_double_N_N`` header.
    """

    entries: Callable[[Any, PathLike], list[_Entry]]
    composite: bool = False


def _itk_text_entries(transform: Transform, path: PathLike) -> list[_Entry]:
    return _itk_text_format(transform, path).entries(transform, path)


def _itk_text_format(transform: Transform, path: PathLike) -> _ItkTextFormat:
    """The :data:`_ITK_TEXT_FORMATS` entry of the nearest class in ``type(transform).__mro__``."""
    for cls in type(transform).__mro__:
        fmt = _ITK_TEXT_FORMATS.get(cls)
        if fmt is not None:
            return fmt
    raise ValueError(
        f"{path}: cannot write a {type(transform).__name__} to an ITK text file (linear transforms and "
        "displacement fields only); sample it with to_displacement(transform, grid) first"
    )


# Transform class -> ITK text format; found along the MRO, so subclasses inherit their base's entry. A composite
# writes its members' blocks in order (ITK's CompositeTransform queue is jaxreg's compose order).
_ITK_TEXT_FORMATS: dict[type, _ItkTextFormat] = {
    LinearTransform: _ItkTextFormat(lambda t, _: [transform_to_itk(t)]),
    DisplacementField: _ItkTextFormat(lambda t, _: [_field_to_itk_parameters(t)]),
    Composite: _ItkTextFormat(
        lambda t, path: [e for m in t.transforms for e in _itk_text_entries(m, path)], composite=True
    ),
}


def write_transform(transform: Transform, path: PathLike, *, inputs: Iterable[PathLike] = ()) -> None:
    """Write a transform in the format given by the suffix, atomically.

    * ``.mat``: any linear transform, or a composite of linear ones collapsed into one, as
      ``AffineTransform_double_N_N`` + ``fixed`` (MATLAB v4, as ANTs writes ``*GenericAffine.mat``);
    * ``.tfm``/``.txt``: a linear transform as ``AffineTransform_double_N_N``; a ``Composite`` as
      ``CompositeTransform_double_N_N`` with its members in jaxreg (= ITK) order; members may be linear or
      displacement fields (ITK's text field format);
    * ``.h5``/``.hdf5``: as ``.tfm`` in ITK's HDF5 layout (a ``Composite`` as ANTs'
      ``--write-composite-transform`` writes one: displacement fields are stored as their parameters);
    * ``.nii``/``.nii.gz``: a ``DisplacementField`` (see :func:`write_displacement_field`).

    Parameters are converted from RAS to ITK's LPS (see the module docstring), so ITK/ANTs/SimpleITK map the
    LPS-flipped points exactly as ``transform`` maps RAS points.

    Args:
      transform: the transform.
      path: destination file.
      inputs: paths that must not be overwritten (ValueError).

    Raises:
      ValueError: unsupported suffix or a transform the format cannot hold.
    """
    if not isinstance(transform, Transform):
        raise TypeError(f"transform: expected a jaxreg transform, got {type(transform).__name__}")
    kind = _kind_of(path)
    if kind == "field":
        write_displacement_field(transform, path, inputs=inputs)
        return
    if kind == "mat":
        linear = transform.linear_part()
        if linear is None:
            raise ValueError(
                f"{path}: a .mat file holds one linear transform (or a composite of linear ones), got a "
                f"non-linear {type(transform).__name__}"
            )
        _write_mat(*transform_to_itk(linear), path, inputs)
        return
    fmt = _itk_text_format(transform, path)
    if kind == "h5":
        _write_h5(fmt.entries(transform, path), path, inputs, composite=fmt.composite)
        return
    _write_text(fmt.entries(transform, path), path, inputs, composite=fmt.composite)
