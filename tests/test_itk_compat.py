"""ITK/ANTs transform files against SimpleITK (and ANTsPy when installed).

Conventions checked here:

* ITK's physical space is LPS; jaxreg's is RAS. A point ``p_ras`` corresponds to ``F p_ras`` with
  ``F = diag(-1, -1, 1)`` (2-D: ``diag(-1, -1)``), so a jaxreg transform ``T`` read from a file must satisfy
  ``T(p) = F sitk_T(F p)``.
* SimpleITK arrays are ``(z, y, x)``; jaxreg arrays are in index order ``(i, j, k)`` (see ``grid_from_sitk``).
* ``sitk.CompositeTransform([A, B])`` maps ``p`` to ``A(B(p))``; ``antsApplyTransforms -t A -t B`` samples the
  moving image at ``B(A(x))`` (``jaxreg.io.compose_files``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from jaxreg.core.grid import Grid, Image
from jaxreg.io import (
    compose_files,
    read_displacement_field,
    read_itk_transforms,
    read_transform,
    write_displacement_field,
    write_transform,
)
from jaxreg.transforms.compose import Composite, compose
from jaxreg.transforms.dense import DisplacementField
from jaxreg.transforms.linear import Affine, Rigid, Similarity, Translation
from jaxreg.warp import warp


@pytest.fixture(autouse=True)
def _x64():
    # Compare mappings in double precision: files hold doubles and ITK computes in double.
    with jax.enable_x64(True):
        yield


def _flip(n: int) -> np.ndarray:
    return np.diag([-1.0, -1.0] + [1.0] * (n - 2))


def sitk_points(tx, points_ras: np.ndarray) -> np.ndarray:
    """Map RAS points through a SimpleITK transform (which works in LPS)."""
    f = _flip(points_ras.shape[-1])
    return np.array([f @ np.array(tx.TransformPoint(tuple(float(v) for v in f @ p))) for p in points_ras])


def grid_from_sitk(img) -> Grid:
    """jaxreg Grid of a SimpleITK image.

    Index ``(i, j, k)`` -> RAS world: ``A = F D diag(spacing)``, ``o = F origin``.
    """
    n = img.GetDimension()
    f = _flip(n)
    d = np.array(img.GetDirection(), dtype=np.float64).reshape(n, n)
    a = np.eye(n + 1)
    a[:n, :n] = f @ d * np.array(img.GetSpacing())[None, :]
    a[:n, n] = f @ np.array(img.GetOrigin())
    return Grid(img.GetSize(), a)


def image_from_sitk(img) -> Image:
    """SimpleITK image -> jaxreg Image (array axes reversed from SimpleITK's z, y, x to index order)."""
    arr = sitk.GetArrayFromImage(img)
    n = img.GetDimension()
    perm = tuple(range(n - 1, -1, -1)) + tuple(range(n, arr.ndim))
    return Image(jnp.asarray(arr.transpose(perm)), grid_from_sitk(img))


def sitk_image(data_xyz: np.ndarray, spacing, origin, direction, *, vector: bool = False):
    """SimpleITK image from an index-ordered array ``(i, j, k[, c])`` and LPS geometry."""
    n = len(spacing)
    perm = tuple(range(n - 1, -1, -1)) + tuple(range(n, data_xyz.ndim))
    img = sitk.GetImageFromArray(np.ascontiguousarray(data_xyz.transpose(perm)), isVector=vector)
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetOrigin(tuple(float(o) for o in origin))
    img.SetDirection(tuple(float(v) for v in np.asarray(direction).ravel()))
    return img


def _random_direction(rng, n: int, reflect: bool = False) -> np.ndarray:
    if n == 2:
        th = rng.uniform(-np.pi, np.pi)
        r = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    else:
        r = Rotation.from_rotvec(rng.normal(size=3) * 0.5).as_matrix()
    if reflect:
        r = r @ np.diag([1.0] * (n - 1) + [-1.0])
    return r


def _random_points(rng, n: int, count: int = 20, scale: float = 40.0) -> np.ndarray:
    return rng.uniform(-scale, scale, size=(count, n))


# -- conventions ---------------------------------------------------------------------------------------------
def test_sitk_composite_applies_last_transform_first():
    a = sitk.TranslationTransform(3, (10.0, 0.0, 0.0))
    b = sitk.AffineTransform(3)
    b.SetMatrix((2, 0, 0, 0, 1, 0, 0, 0, 1))
    c = sitk.CompositeTransform([a, b])
    np.testing.assert_allclose(
        c.TransformPoint((1.0, 1.0, 1.0)), (12.0, 1.0, 1.0)
    )  # A(B(p)), not B(A(p)) = 22


def test_grid_from_sitk_matches_sitk_geometry():
    rng = np.random.default_rng(0)
    d = _random_direction(rng, 3, reflect=True)
    img = sitk_image(rng.random((4, 5, 6)), (1.2, 0.7, 2.1), (3.0, -4.0, 5.0), d)
    grid = grid_from_sitk(img)
    idx = rng.uniform(0, 4, size=(10, 3))
    lps = np.array([img.TransformContinuousIndexToPhysicalPoint(tuple(i)) for i in idx])
    np.testing.assert_allclose(np.asarray(grid.index_to_world(jnp.asarray(idx))), lps @ _flip(3), atol=1e-10)


# -- images: geometry as ITK reads it ------------------------------------------------------------------------
@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("channels", [False, True])
def test_image_geometry_agrees_with_sitk(tmp_path, n, channels):
    from jaxreg.io import load_image, save_image

    rng = np.random.default_rng(16)
    shape = (5, 6, 7)[:n]
    grid = Grid.from_spacing(
        shape,
        (0.9, 1.7, 2.3)[:n],
        origin=(12.0, -30.0, 4.0)[:n],
        direction=_random_direction(rng, n, reflect=True),
    )
    data = rng.random(shape + ((3,) if channels else ())).astype(np.float32)
    # jaxreg writes, SimpleITK reads
    save_image(Image(jnp.asarray(data), grid), tmp_path / "j.nii.gz")
    img = sitk.ReadImage(str(tmp_path / "j.nii.gz"))
    assert img.GetDimension() == n and img.GetNumberOfComponentsPerPixel() == (3 if channels else 1)
    assert grid_from_sitk(img) == grid
    np.testing.assert_array_equal(np.asarray(image_from_sitk(img).data), data)
    # SimpleITK writes, jaxreg reads
    sitk.WriteImage(
        sitk_image(
            data, (1.1, 0.6, 1.9)[:n], (-3.0, 8.0, 1.0)[:n], _random_direction(rng, n), vector=channels
        ),
        str(tmp_path / "s.nii.gz"),
    )
    back = sitk.ReadImage(str(tmp_path / "s.nii.gz"))
    out = load_image(tmp_path / "s.nii.gz", channels=channels)
    assert out.grid == grid_from_sitk(back)
    np.testing.assert_array_equal(np.asarray(out.data), data)


# -- linear transforms written by SimpleITK ------------------------------------------------------------------
def _sitk_linear_transforms():
    rng = np.random.default_rng(1)
    out = {}
    a = sitk.AffineTransform(3)
    a.SetCenter((4.0, -7.0, 12.0))
    a.SetMatrix(tuple((np.eye(3) + 0.2 * rng.normal(size=(3, 3))).ravel()))
    a.SetTranslation((3.0, -2.0, 5.5))
    out["affine3d"] = a
    a2 = sitk.AffineTransform(2)
    a2.SetCenter((1.0, -3.0))
    a2.SetMatrix(tuple((np.eye(2) + 0.2 * rng.normal(size=(2, 2))).ravel()))
    a2.SetTranslation((-2.0, 4.0))
    out["affine2d"] = a2
    out["euler3d"] = sitk.Euler3DTransform((5.0, 6.0, -7.0), 0.3, -0.2, 0.5, (1.0, 2.0, 3.0))
    e = sitk.Euler3DTransform((5.0, 6.0, -7.0), 0.3, -0.2, 0.5, (1.0, 2.0, 3.0))
    e.SetComputeZYX(True)
    out["euler3d_zyx"] = e
    out["euler2d"] = sitk.Euler2DTransform((3.0, 4.0), 0.7, (-1.0, 2.0))
    s3 = sitk.Similarity3DTransform()
    s3.SetCenter((2.0, -1.0, 8.0))
    s3.SetParameters((0.1, -0.2, 0.15, 4.0, -5.0, 6.0, 1.3))
    out["similarity3d"] = s3
    out["similarity2d"] = sitk.Similarity2DTransform(0.8, 0.4, (2.0, -3.0), (5.0, 5.0))
    v = sitk.VersorRigid3DTransform()
    v.SetCenter((-3.0, 2.0, 1.0))
    v.SetParameters((0.2, 0.1, -0.3, 7.0, 8.0, -9.0))
    out["versorrigid3d"] = v
    out["translation3d"] = sitk.TranslationTransform(3, (1.5, -2.5, 3.5))
    out["translation2d"] = sitk.TranslationTransform(2, (1.5, -2.5))
    sc = sitk.ScaleTransform(3, (1.2, 0.9, 1.1))
    sc.SetCenter((1.0, 2.0, 3.0))
    out["scale3d"] = sc
    sv = sitk.ScaleVersor3DTransform()
    sv.SetCenter((1.0, 2.0, 3.0))
    sv.SetParameters((0.1, 0.2, 0.05, 1.0, 2.0, 3.0, 1.5, 0.8, 1.2))
    out["scaleversor3d"] = sv
    ssv = sitk.ScaleSkewVersor3DTransform()
    ssv.SetCenter((1.0, 2.0, 3.0))
    ssv.SetParameters((0.1, 0.2, 0.05, 1.0, 2.0, 3.0, 1.5, 0.8, 1.2, 0.1, 0.2, 0.3, 0.05, 0.02, 0.04))
    out["scaleskewversor3d"] = ssv
    out["identity3d"] = sitk.Transform(3, sitk.sitkIdentity)
    return out


_LINEAR = _sitk_linear_transforms()


@pytest.mark.parametrize("suffix", [".tfm", ".txt", ".mat"])
@pytest.mark.parametrize("name", sorted(_LINEAR))
def test_read_linear_written_by_sitk(tmp_path, name, suffix):
    tx = _LINEAR[name]
    path = tmp_path / f"{name}{suffix}"
    sitk.WriteTransform(tx, str(path))
    t = read_transform(path)
    assert isinstance(t, Affine)
    pts = _random_points(np.random.default_rng(2), t.ndim)
    np.testing.assert_allclose(np.asarray(t(jnp.asarray(pts))), sitk_points(tx, pts), atol=1e-9)
    # the ITK centre is kept: the RAS centre is the LPS centre flipped
    if hasattr(tx, "GetCenter") and name != "identity3d":
        np.testing.assert_allclose(np.asarray(t.center), _flip(t.ndim) @ np.array(tx.GetCenter()), atol=1e-12)


def test_read_linear_float32_precision_without_x64(tmp_path):
    tx = _LINEAR["affine3d"]
    sitk.WriteTransform(tx, str(tmp_path / "a.mat"))
    with jax.enable_x64(False):
        t = read_transform(tmp_path / "a.mat")
        pts = _random_points(np.random.default_rng(3), 3)
        got = np.asarray(t(jnp.asarray(pts, jnp.float32)))
    np.testing.assert_allclose(got, sitk_points(tx, pts), atol=1e-4)


def test_read_composite_written_by_sitk(tmp_path):
    members = [_LINEAR["affine3d"], _LINEAR["euler3d"], _LINEAR["translation3d"]]
    comp = sitk.CompositeTransform(members)
    sitk.WriteTransform(comp, str(tmp_path / "comp.tfm"))
    ts = read_itk_transforms(tmp_path / "comp.tfm")
    assert len(ts) == 3 and all(isinstance(t, Affine) for t in ts)
    t = read_transform(tmp_path / "comp.tfm")
    assert isinstance(t, Composite)
    pts = _random_points(np.random.default_rng(4), 3)
    np.testing.assert_allclose(np.asarray(t(jnp.asarray(pts))), sitk_points(comp, pts), atol=1e-9)


# -- linear transforms written by jaxreg ---------------------------------------------------------------------
def _jaxreg_linear_transforms():
    rng = np.random.default_rng(5)
    return {
        "affine3d": Affine(
            jnp.asarray(np.eye(3) + 0.2 * rng.normal(size=(3, 3))),
            jnp.asarray([1.0, -2.0, 3.0]),
            jnp.asarray([10.0, 20.0, -5.0]),
        ),
        "affine2d": Affine(
            jnp.asarray(np.eye(2) + 0.2 * rng.normal(size=(2, 2))),
            jnp.asarray([1.0, -2.0]),
            jnp.asarray([3.0, 4.0]),
        ),
        "rigid3d": Rigid(
            jnp.asarray([0.2, -0.1, 0.3]), jnp.asarray([4.0, 5.0, 6.0]), jnp.asarray([1.0, 1.0, 1.0])
        ),
        "rigid2d": Rigid(jnp.asarray(0.4), jnp.asarray([4.0, 5.0]), jnp.asarray([-1.0, 1.0])),
        "similarity3d": Similarity(
            jnp.asarray([0.1, 0.2, -0.3]),
            jnp.asarray(0.2),
            jnp.asarray([1.0, 2.0, 3.0]),
            jnp.asarray([-4.0, 0.0, 9.0]),
        ),
        "translation3d": Translation(jnp.asarray([1.0, 2.0, -3.0])),
    }


_JLINEAR_NAMES = ["affine2d", "affine3d", "rigid2d", "rigid3d", "similarity3d", "translation3d"]


def _jlinear(name: str):
    # built inside the tests' x64 context so that parameters are float64
    return _jaxreg_linear_transforms()[name]


@pytest.mark.parametrize("suffix", [".tfm", ".mat"])
@pytest.mark.parametrize("name", _JLINEAR_NAMES)
def test_write_linear_read_by_sitk_and_jaxreg(tmp_path, name, suffix):
    t = _jlinear(name)
    path = tmp_path / f"{name}{suffix}"
    write_transform(t, path)
    tx = sitk.ReadTransform(str(path))
    pts = _random_points(np.random.default_rng(6), t.ndim)
    expected = np.asarray(t(jnp.asarray(pts)))
    np.testing.assert_allclose(sitk_points(tx, pts), expected, atol=1e-9)
    back = read_transform(path)
    np.testing.assert_allclose(np.asarray(back(jnp.asarray(pts))), expected, atol=1e-12)
    if hasattr(t, "center"):
        np.testing.assert_allclose(np.asarray(back.center), np.asarray(t.center), atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(
    matrix=st.lists(st.floats(-2.0, 2.0), min_size=9, max_size=9),
    translation=st.lists(st.floats(-100.0, 100.0), min_size=3, max_size=3),
    center=st.lists(st.floats(-100.0, 100.0), min_size=3, max_size=3),
    suffix=st.sampled_from([".mat", ".tfm"]),
)
def test_affine_file_roundtrip_property(matrix, translation, center, suffix):
    """Any affine written by jaxreg reads back (jaxreg and SimpleITK) as the same map of points."""
    import tempfile

    with jax.enable_x64(True):
        t = Affine(jnp.asarray(np.reshape(matrix, (3, 3))), jnp.asarray(translation), jnp.asarray(center))
        pts = _random_points(np.random.default_rng(0), 3, count=5)
        expected = np.asarray(t(jnp.asarray(pts)))
        with tempfile.TemporaryDirectory() as d:
            path = f"{d}/t{suffix}"
            write_transform(t, path)
            back = read_transform(path)
            tx = sitk.ReadTransform(path)
        np.testing.assert_allclose(np.asarray(back(jnp.asarray(pts))), expected, rtol=0, atol=1e-9)
        np.testing.assert_allclose(np.asarray(back.center), center, rtol=0, atol=0)
        np.testing.assert_allclose(sitk_points(tx, pts), expected, rtol=0, atol=1e-9)


def test_write_composite_tfm(tmp_path):
    t = compose(_jlinear("affine3d"), _jlinear("rigid3d"), _jlinear("translation3d"))
    write_transform(t, tmp_path / "c.tfm")
    tx = sitk.ReadTransform(str(tmp_path / "c.tfm"))
    pts = _random_points(np.random.default_rng(7), 3)
    np.testing.assert_allclose(sitk_points(tx, pts), np.asarray(t(jnp.asarray(pts))), atol=1e-9)
    # .mat holds one affine: a linear composite is collapsed exactly
    write_transform(t, tmp_path / "c.mat")
    np.testing.assert_allclose(
        sitk_points(sitk.ReadTransform(str(tmp_path / "c.mat")), pts),
        np.asarray(t(jnp.asarray(pts))),
        atol=1e-9,
    )


def test_written_mat_layout_matches_itk(tmp_path):
    import scipy.io

    write_transform(_jlinear("affine3d"), tmp_path / "j.mat")
    tx = sitk.AffineTransform(3)
    sitk.WriteTransform(tx, str(tmp_path / "s.mat"))
    mj, ms = scipy.io.loadmat(tmp_path / "j.mat"), scipy.io.loadmat(tmp_path / "s.mat")

    def keys(m):
        return sorted(k for k in m if not k.startswith("__"))

    assert keys(mj) == keys(ms) == ["AffineTransform_double_3_3", "fixed"]
    assert mj["AffineTransform_double_3_3"].shape == ms["AffineTransform_double_3_3"].shape == (12, 1)
    assert mj["fixed"].shape == ms["fixed"].shape == (3, 1)


# -- displacement fields -------------------------------------------------------------------------------------
def _sitk_field(rng, n: int = 3):
    size = (7, 6, 5) if n == 3 else (7, 6)
    spacing = (1.5, 2.0, 2.5)[:n]
    origin = (-5.0, 3.0, 8.0)[:n]
    direction = _random_direction(rng, n, reflect=True)
    u = rng.normal(scale=2.0, size=size + (n,))
    img = sitk_image(u, spacing, origin, direction, vector=True)
    return sitk.Cast(img, sitk.sitkVectorFloat64), u


def _points_around(grid: Grid, rng, count: int = 200) -> np.ndarray:
    """World points spread over the grid and a margin of two voxels beyond it (inside and outside)."""
    idx = rng.uniform(-2.0, np.asarray(grid.shape) + 1.0, size=(count, grid.ndim))
    return np.asarray(grid.index_to_world(jnp.asarray(idx)))


@pytest.mark.parametrize("n", [2, 3])
def test_read_field_written_by_sitk(tmp_path, n):
    rng = np.random.default_rng(8)
    img, _ = _sitk_field(rng, n)
    sitk.WriteImage(img, str(tmp_path / "warp.nii.gz"))
    field = read_transform(tmp_path / "warp.nii.gz")
    assert isinstance(field, DisplacementField) and field.ndim == n
    assert field.grid == grid_from_sitk(img)
    # Compare with the field as SimpleITK reads it back. The NIfTI header stores the geometry in float32 and
    # ITK
    # re-orthonormalises the direction it reads, nibabel does not: the grids differ by ~1e-8 mm, which a
    # random
    # field (gradients of a few mm per voxel) turns into ~1e-7 mm; hence atol 1e-6 for fields read from NIfTI.
    tx = sitk.DisplacementFieldTransform(
        sitk.ReadImage(str(tmp_path / "warp.nii.gz"), sitk.sitkVectorFloat64)
    )
    pts = _points_around(field.grid, rng)
    np.testing.assert_allclose(np.asarray(field(jnp.asarray(pts))), sitk_points(tx, pts), atol=1e-6)


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_write_field_read_by_sitk(tmp_path, n, dtype):
    rng = np.random.default_rng(9)
    shape = (6, 7, 5)[:n]
    grid = Grid.from_spacing(
        shape, (1.2, 0.8, 2.0)[:n], origin=(10.0, -4.0, 3.0)[:n], direction=_random_direction(rng, n)
    )
    field = DisplacementField(jnp.asarray(rng.normal(scale=1.5, size=(*shape, n)).astype(dtype)), grid)
    write_displacement_field(field, tmp_path / "w.nii.gz")
    img = sitk.ReadImage(str(tmp_path / "w.nii.gz"))
    assert img.GetDimension() == n and img.GetNumberOfComponentsPerPixel() == n
    assert grid_from_sitk(img) == grid
    tx = sitk.DisplacementFieldTransform(sitk.Cast(img, sitk.sitkVectorFloat64))
    pts = _points_around(grid, rng)
    tol = (
        1e-6 if dtype == np.float64 else 1e-5
    )  # float32 header geometry, see test_read_field_written_by_sitk
    np.testing.assert_allclose(sitk_points(tx, pts), np.asarray(field(jnp.asarray(pts))), atol=tol)
    back = read_displacement_field(tmp_path / "w.nii.gz")
    assert back.grid == grid and back.displacement.dtype == dtype
    np.testing.assert_array_equal(np.asarray(back.displacement), np.asarray(field.displacement))


def test_field_in_itk_text_format(tmp_path):
    rng = np.random.default_rng(10)
    img, _ = _sitk_field(rng, 3)
    tx = sitk.DisplacementFieldTransform(sitk.Image(img))
    sitk.WriteTransform(tx, str(tmp_path / "f.tfm"))
    field = read_transform(tmp_path / "f.tfm")
    assert isinstance(field, DisplacementField) and field.grid == grid_from_sitk(img)
    pts = _points_around(field.grid, rng)
    np.testing.assert_allclose(np.asarray(field(jnp.asarray(pts))), sitk_points(tx, pts), atol=1e-9)
    write_transform(field, tmp_path / "g.tfm")
    np.testing.assert_allclose(
        sitk_points(sitk.ReadTransform(str(tmp_path / "g.tfm")), pts),
        np.asarray(field(jnp.asarray(pts))),
        atol=1e-9,
    )


# -- ITK HDF5 (.h5): what antsRegistration --write-composite-transform writes -----------------------------------
def _sitk_composite_with_field(rng, n: int):
    field_img, _ = _sitk_field(rng, n)
    members = [_LINEAR[f"affine{n}d"], sitk.DisplacementFieldTransform(field_img)]
    if n == 3:
        members.append(_LINEAR["euler3d"])
    return sitk.CompositeTransform(members)


@pytest.mark.parametrize("n", [2, 3])
def test_read_h5_composite_written_by_sitk(tmp_path, n):
    """A composite of linear transforms and a displacement field, written by ITK's HDF5TransformIO."""
    rng = np.random.default_rng(21 + n)
    comp = _sitk_composite_with_field(rng, n)
    sitk.WriteTransform(comp, str(tmp_path / "Composite.h5"))
    ts = read_itk_transforms(tmp_path / "Composite.h5")
    assert [type(t).__name__ for t in ts][:2] == ["Affine", "DisplacementField"]
    t = read_transform(tmp_path / "Composite.h5")
    pts = _points_around(ts[1].grid, rng)
    np.testing.assert_allclose(np.asarray(t(jnp.asarray(pts))), sitk_points(comp, pts), atol=1e-9)


@pytest.mark.parametrize("n", [2, 3])
def test_write_h5_read_by_sitk_and_jaxreg(tmp_path, n):
    rng = np.random.default_rng(31 + n)
    field_img, _ = _sitk_field(rng, n)
    sitk.WriteImage(field_img, str(tmp_path / "warp.nii.gz"))
    t = compose(_jlinear(f"affine{n}d"), read_transform(tmp_path / "warp.nii.gz"))
    write_transform(t, tmp_path / "c.h5")
    tx = sitk.ReadTransform(str(tmp_path / "c.h5"))
    assert tx.GetName() == "CompositeTransform"
    pts = _points_around(t.transforms[1].grid, rng)
    want = np.asarray(t(jnp.asarray(pts)))
    np.testing.assert_allclose(sitk_points(tx, pts), want, atol=1e-9)
    back = read_transform(tmp_path / "c.h5")
    assert isinstance(back, Composite) and len(back.transforms) == 2
    np.testing.assert_allclose(np.asarray(back(jnp.asarray(pts))), want, atol=1e-12)
    # one linear transform: a plain (non-composite) file, as ITK writes it
    write_transform(_jlinear(f"affine{n}d"), tmp_path / "a.hdf5")
    single = sitk.ReadTransform(str(tmp_path / "a.hdf5"))
    np.testing.assert_allclose(
        sitk_points(single, pts), np.asarray(_jlinear(f"affine{n}d")(jnp.asarray(pts))), atol=1e-9
    )


def test_resample_h5_composite_matches_sitk(tmp_path):
    """Every file jaxreg writes is applied by SimpleITK to the same image (1e-4 of a [0, 1] range)."""
    rng = np.random.default_rng(41)
    moving, fixed = _resample_setup(rng)
    u = rng.normal(scale=1.5, size=(8, 9, 7, 3))
    field = read_transform(_write_sitk_field(tmp_path, u, rng))
    t = compose(_jlinear("rigid3d"), field)
    write_transform(t, tmp_path / "Composite.h5")
    _compare_resample(moving, fixed, sitk.ReadTransform(str(tmp_path / "Composite.h5")), t)


def _write_sitk_field(tmp_path, u, rng):
    img = sitk.Cast(
        sitk_image(u, (1.6, 1.5, 2.0), (-5.0, 0.0, -9.0), _random_direction(rng, 3), vector=True),
        sitk.sitkVectorFloat64,
    )
    sitk.WriteImage(img, str(tmp_path / "field.nii.gz"))
    return tmp_path / "field.nii.gz"


def _h5_type(group, name: str) -> None:
    """A ``TransformType`` dataset as ITK writes it (one variable-length ASCII string)."""
    import h5py

    group.create_dataset("TransformType", data=np.array([name.encode()], dtype=object),
                         dtype=h5py.string_dtype("ascii"))


def test_read_h5_itk4_spelling(tmp_path):
    """ITK 4 wrote ``TranformParameters`` / ``TranformFixedParameters`` (sic); both spellings are read."""
    import h5py

    tx = _LINEAR["affine3d"]
    with h5py.File(tmp_path / "old.h5", "w") as f:
        g = f.create_group("TransformGroup/0")
        _h5_type(g, "AffineTransform_double_3_3")
        g.create_dataset("TranformParameters", data=np.array(tx.GetParameters()))
        g.create_dataset("TranformFixedParameters", data=np.array(tx.GetFixedParameters()))
    pts = _random_points(np.random.default_rng(5), 3)
    np.testing.assert_allclose(np.asarray(read_transform(tmp_path / "old.h5")(jnp.asarray(pts))),
                               sitk_points(tx, pts), atol=1e-9)


def test_errors_h5_files(tmp_path):
    import h5py

    (tmp_path / "text.h5").write_text("not HDF5\n")
    with pytest.raises(ValueError, match=r"text\.h5: not an HDF5 file"):
        read_transform(tmp_path / "text.h5")
    with h5py.File(tmp_path / "empty.h5", "w") as f:
        f.create_group("Other")
    with pytest.raises(ValueError, match=r"empty\.h5: not an ITK HDF5 transform file \(no /TransformGroup\)"):
        read_transform(tmp_path / "empty.h5")
    with h5py.File(tmp_path / "noparams.h5", "w") as f:
        g = f.create_group("TransformGroup/0")
        _h5_type(g, "AffineTransform_double_3_3")
    with pytest.raises(ValueError, match=r"noparams\.h5: transform 0: .*no 'Parameters:'"):
        read_transform(tmp_path / "noparams.h5")
    with h5py.File(tmp_path / "gap.h5", "w") as f:
        f.create_group("TransformGroup/1")
    with pytest.raises(ValueError, match=r"gap\.h5: /TransformGroup must hold groups 0, 1"):
        read_transform(tmp_path / "gap.h5")
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        read_transform(tmp_path / "missing.h5")
    field = DisplacementField(jnp.zeros((2, 2, 2, 3)), Grid((2, 2, 2)))
    write_transform(compose(_jlinear("affine3d"), field), tmp_path / "ok.h5")
    with pytest.raises(ValueError, match="refusing to overwrite an input file"):
        write_transform(_jlinear("affine3d"), tmp_path / "ok.h5", inputs=[tmp_path / "ok.h5"])
    assert sitk.ReadTransform(str(tmp_path / "ok.h5")).GetName() == "CompositeTransform"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp.h5")]


# -- resampling against sitk.Resample ------------------------------------------------------------------------
def _interior_mask(moving_grid: Grid, transform, fixed_grid: Grid, tol: float = 1e-6) -> np.ndarray:
    """Fixed voxels whose mapped point is not in the moving image's outer half-voxel rim.

    ITK's ``ResampleImageFilter`` treats a point as inside the moving image when its continuous index lies in
    ``[-0.5, n - 0.5]`` and then clamps the linear interpolation to the edge voxel; jaxreg/scipy's
    ``mode="constant"`` instead blends the edge voxel with ``cval`` (or returns ``cval``) beyond the outermost
    voxel centres ``[0, n - 1]``. The two agree everywhere except for points in that half-voxel rim, which
    this mask leaves out.
    """
    idx = np.asarray(moving_grid.world_to_index(transform.sample_grid(fixed_grid, jnp.float64)))
    hi = np.asarray(moving_grid.shape) - 1.0
    inside = np.all((idx >= -tol) & (idx <= hi + tol), axis=-1)
    outside = np.any((idx < -0.5 - tol) | (idx > hi + 0.5 + tol), axis=-1)
    return inside | outside


def _centred_image(data, spacing, centre, direction):
    """SimpleITK image whose grid centre is at ``centre`` (LPS mm)."""
    origin = np.asarray(centre) - direction @ (np.asarray(spacing) * (np.asarray(data.shape[:3]) - 1) / 2.0)
    return sitk_image(data, spacing, origin, direction)


def _resample_setup(rng):
    """A moving image (anisotropic, rotated, reflected) and a smaller, rotated fixed grid inside it."""
    moving = _centred_image(
        rng.random((16, 14, 12)), (1.6, 1.3, 2.1), (1.0, -2.0, 3.0), _random_direction(rng, 3, reflect=True)
    )
    fixed = _centred_image(
        np.zeros((10, 11, 9)), (1.1, 1.4, 1.2), (-1.0, 0.5, 2.0), _random_direction(rng, 3)
    )
    return moving, fixed


def _compare_resample(moving, fixed, tx, transform):
    expected = image_from_sitk(sitk.Resample(moving, fixed, tx, sitk.sitkLinear, 0.0, sitk.sitkFloat64))
    mov = image_from_sitk(moving)
    fixed_grid = grid_from_sitk(fixed)
    got = warp(mov, transform, fixed_grid, order=1)
    mask = _interior_mask(mov.grid, transform, fixed_grid)
    assert mask.mean() > 0.8, "test geometry: too many voxels in the boundary rim"
    assert (np.asarray(expected.data)[mask] != 0).sum() > 100, "test geometry: the images barely overlap"
    np.testing.assert_allclose(np.asarray(got.data)[mask], np.asarray(expected.data)[mask], atol=1e-4)


@pytest.mark.parametrize("suffix", [".mat", ".tfm"])
def test_resample_affine_matches_sitk(tmp_path, suffix):
    rng = np.random.default_rng(11)
    moving, fixed = _resample_setup(rng)
    tx = sitk.AffineTransform(3)
    tx.SetCenter((1.0, 2.0, -3.0))
    tx.SetMatrix(tuple((np.eye(3) + 0.1 * rng.normal(size=(3, 3))).ravel()))
    tx.SetTranslation((1.5, -1.0, 2.0))
    sitk.WriteTransform(tx, str(tmp_path / f"a{suffix}"))
    _compare_resample(moving, fixed, tx, read_transform(tmp_path / f"a{suffix}"))


def test_resample_affine_matches_sitk_in_float32(tmp_path):
    """The default (float32) jaxreg pipeline agrees with ITK's double-precision resampling to 1e-4."""
    rng = np.random.default_rng(15)
    moving, fixed = _resample_setup(rng)
    tx = sitk.Euler3DTransform((2.0, -1.0, 0.5), 0.2, -0.1, 0.3, (1.0, 2.0, -1.0))
    sitk.WriteTransform(tx, str(tmp_path / "e.tfm"))
    expected = image_from_sitk(sitk.Resample(moving, fixed, tx, sitk.sitkLinear, 0.0, sitk.sitkFloat64))
    with jax.enable_x64(False):
        t = read_transform(tmp_path / "e.tfm")
        mov = image_from_sitk(sitk.Cast(moving, sitk.sitkFloat32))
        fixed_grid = grid_from_sitk(fixed)
        got = warp(mov, t, fixed_grid, order=1)
        assert got.data.dtype == jnp.float32
    # float32 coordinates can move a point across the rim by ~1e-5 voxel: widen the rim tolerance accordingly
    mask = _interior_mask(mov.grid, t, fixed_grid, tol=1e-4)
    assert mask.mean() > 0.8
    np.testing.assert_allclose(np.asarray(got.data)[mask], np.asarray(expected.data)[mask], atol=1e-4)


def test_resample_field_matches_sitk(tmp_path):
    rng = np.random.default_rng(12)
    moving, fixed = _resample_setup(rng)
    # a smooth field on its own grid, partly covering the fixed image (zero displacement outside it)
    shape = (8, 9, 7)
    u = rng.normal(scale=1.5, size=shape + (3,))
    field_img = sitk.Cast(
        sitk_image(u, (1.6, 1.5, 2.0), (-5.0, 0.0, -9.0), _random_direction(rng, 3), vector=True),
        sitk.sitkVectorFloat64,
    )
    sitk.WriteImage(field_img, str(tmp_path / "warp.nii.gz"))
    tx = sitk.DisplacementFieldTransform(
        sitk.ReadImage(str(tmp_path / "warp.nii.gz"), sitk.sitkVectorFloat64)
    )
    _compare_resample(moving, fixed, tx, read_transform(tmp_path / "warp.nii.gz"))


def test_compose_files_follows_ants_order(tmp_path):
    """``-t A.mat -t warp.nii.gz``: the point goes through A first: sitk ``CompositeTransform([warp, A])``."""
    rng = np.random.default_rng(13)
    moving, fixed = _resample_setup(rng)
    a = sitk.AffineTransform(3)
    a.SetMatrix(tuple((np.eye(3) + 0.1 * rng.normal(size=(3, 3))).ravel()))
    a.SetTranslation((2.0, -1.0, 1.0))
    sitk.WriteTransform(a, str(tmp_path / "A.mat"))
    field_img = sitk.Cast(
        sitk_image(
            rng.normal(scale=1.5, size=(9, 9, 7, 3)),
            (1.5, 1.5, 2.0),
            (-6.0, 0.0, -9.0),
            np.eye(3),
            vector=True,
        ),
        sitk.sitkVectorFloat64,
    )
    sitk.WriteImage(field_img, str(tmp_path / "warp.nii.gz"))
    w = sitk.DisplacementFieldTransform(sitk.ReadImage(str(tmp_path / "warp.nii.gz"), sitk.sitkVectorFloat64))
    t = compose_files([tmp_path / "A.mat", tmp_path / "warp.nii.gz"])
    ants_like = sitk.CompositeTransform([w, a])  # ANTs' internal ITK queue for "-t A.mat -t warp.nii.gz"
    pts = _points_around(grid_from_sitk(fixed), rng)
    np.testing.assert_allclose(np.asarray(t(jnp.asarray(pts))), sitk_points(ants_like, pts), atol=1e-6)
    assert not np.allclose(
        np.asarray(t(jnp.asarray(pts))), sitk_points(sitk.CompositeTransform([a, w]), pts), atol=1e-3
    )
    _compare_resample(moving, fixed, ants_like, t)
    # [file, 1] inversion of the linear file
    ti = compose_files([tmp_path / "A.mat", tmp_path / "warp.nii.gz"], invert=[True, False])
    ants_inv = sitk.CompositeTransform([w, a.GetInverse()])
    np.testing.assert_allclose(np.asarray(ti(jnp.asarray(pts))), sitk_points(ants_inv, pts), atol=1e-6)
    with pytest.raises(ValueError, match="cannot invert a DisplacementField"):
        compose_files([tmp_path / "A.mat", tmp_path / "warp.nii.gz"], invert=[False, True])
    with pytest.raises(ValueError, match="expected 2 flags"):
        compose_files([tmp_path / "A.mat", tmp_path / "warp.nii.gz"], invert=[True])
    assert isinstance(compose_files([tmp_path / "A.mat"]), Affine)


# -- errors --------------------------------------------------------------------------------------------------
def _write(path, text):
    path.write_text(text)
    return path


def test_errors_text_files(tmp_path):
    head = "#Insight Transform File V1.0\n#Transform 0\n"
    cases = {
        "unknown.tfm": (
            head + "Transform: FancyTransform_double_3_3\nParameters: 1 2\nFixedParameters: 0\n",
            r"unknown\.tfm: transform 0: unsupported ITK transform type 'FancyTransform_double_3_3'",
        ),
        "count.tfm": (
            head
            + "Transform: AffineTransform_double_3_3\nParameters: 1 0 0 0 1 0 0 0 1\n"
            + "FixedParameters: 0 0 0\n",
            r"count\.tfm: transform 0: AffineTransform_double_3_3: expected 12 parameters \(n\*n matrix",
        ),
        "fixed.tfm": (
            head
            + "Transform: AffineTransform_double_3_3\nParameters: 1 0 0 0 1 0 0 0 1 0 0 0\n"
            + "FixedParameters: 0 0\n",
            (
                r"fixed\.tfm: transform 0: AffineTransform_double_3_3: "
                r"expected 3 fixed parameters \(centre\), got 2"
            ),
        ),
        "trunc.tfm": (
            head + "Transform: AffineTransform_double_3_3\nParameters: 1 0 0 0 1 0\n",
            r"trunc\.tfm: transform 0: AffineTransform_double_3_3 has no 'FixedParameters:' line",
        ),
        "trunc1.tfm": (
            head + "Transform: Euler2DTransform_double_2_2\nParameters: 1 0 0\n",
            r"trunc1\.tfm: transform 0: Euler2DTransform_double_2_2 has no 'FixedParameters:' line",
        ),
        "trunc2.tfm": (
            head + "Transform: Euler3DTransform_double_3_3\n",
            r"trunc2\.tfm: transform 0: Euler3DTransform_double_3_3 has no 'Parameters:' line",
        ),
        "empty.tfm": ("#Insight Transform File V1.0\n", r"empty\.tfm: no 'Transform:' entry"),
        "notitk.txt": ("hello world\n", r"notitk\.txt: not an ITK transform text file"),
        "nan.tfm": (
            head + "Transform: TranslationTransform_double_3_3\nParameters: 1 nan 0\nFixedParameters:\n",
            r"nan\.tfm.*NaN",
        ),
        "words.tfm": (
            head + "Transform: TranslationTransform_double_3_3\nParameters: 1 x 0\n",
            r"words\.tfm: line 4: Parameters must be numbers",
        ),
        "dims.tfm": (
            head + "Transform: AffineTransform_double_3_2\nParameters: 1\nFixedParameters:\n",
            r"dims\.tfm.*only N_N",
        ),
        "comp.tfm": (
            head + "Transform: CompositeTransform_double_3_3\n",
            r"comp\.tfm: CompositeTransform with no member",
        ),
    }
    for name, (text, pattern) in cases.items():
        with pytest.raises(ValueError, match=pattern):
            read_transform(_write(tmp_path / name, text))
    # translation needs no fixed parameters, even without the line
    t = read_transform(
        _write(tmp_path / "t.tfm", head + "Transform: TranslationTransform_double_2_2\nParameters: 1 2\n")
    )
    np.testing.assert_allclose(np.asarray(t(jnp.zeros(2))), [-1.0, -2.0])


def test_errors_mat_and_misc(tmp_path):
    sitk.WriteTransform(_LINEAR["affine3d"], str(tmp_path / "a.mat"))
    raw = (tmp_path / "a.mat").read_bytes()
    (tmp_path / "cut.mat").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=r"cut\.mat: not a readable ITK/ANTs MATLAB transform file"):
        read_transform(tmp_path / "cut.mat")
    (tmp_path / "text.mat").write_text("not a mat file at all\n")
    with pytest.raises(ValueError, match=r"text\.mat: not a readable"):
        read_transform(tmp_path / "text.mat")
    import scipy.io

    scipy.io.savemat(
        tmp_path / "short.mat",
        {"AffineTransform_double_3_3": np.zeros((9, 1)), "fixed": np.zeros((3, 1))},
        format="4",
    )
    with pytest.raises(ValueError, match=r"short\.mat: AffineTransform_double_3_3: expected 12 parameters"):
        read_transform(tmp_path / "short.mat")
    scipy.io.savemat(tmp_path / "novar.mat", {"fixed": np.zeros((3, 1))}, format="4")
    with pytest.raises(ValueError, match=r"novar\.mat: expected one transform variable"):
        read_transform(tmp_path / "novar.mat")
    with pytest.raises(FileNotFoundError, match="missing.mat"):
        read_transform(tmp_path / "missing.mat")
    with pytest.raises(ValueError, match=r"unsupported transform file suffix '\.xfm'"):
        read_transform(tmp_path / "x.xfm")
    with pytest.raises(ValueError, match="a .mat file holds one linear transform"):
        field = DisplacementField(jnp.zeros((2, 2, 2, 3)), Grid((2, 2, 2)))
        write_transform(field, tmp_path / "f.mat")
    with pytest.raises(TypeError, match="expected a DisplacementField"):
        write_transform(_jlinear("affine3d"), tmp_path / "f.nii.gz")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("f.")) == []


def test_errors_field_files(tmp_path):
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), tmp_path / "scalar.nii.gz")
    with pytest.raises(
        ValueError, match=r"scalar\.nii\.gz: not an ITK displacement field: data of shape \(4, 4, 4\)"
    ):
        read_transform(tmp_path / "scalar.nii.gz")
    bad = np.zeros((4, 4, 4, 1, 3), np.float32)
    bad[1, 1, 1, 0, 2] = np.nan
    nib.save(nib.Nifti1Image(bad, np.eye(4)), tmp_path / "nan.nii.gz")
    with pytest.raises(ValueError, match=r"nan\.nii\.gz: displacement field contains 1 NaN"):
        read_transform(tmp_path / "nan.nii.gz")


def test_write_transform_refuses_inputs_and_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "a.tfm"
    write_transform(_jlinear("affine3d"), path)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="refusing to overwrite"):
        write_transform(_jlinear("rigid3d"), path, inputs=[path])
    import scipy.io

    def broken(*args, **kwargs):
        raise OSError("simulated failure")

    monkeypatch.setattr(scipy.io, "savemat", broken)
    with pytest.raises(OSError, match="simulated"):
        write_transform(_jlinear("affine3d"), tmp_path / "b.mat")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tfm"]


# -- ANTs itself (optional) ----------------------------------------------------------------------------------
def test_ants_registration_outputs_apply_identically(tmp_path):
    """Real ``antsRegistration`` SyN outputs (``0GenericAffine.mat``, ``1Warp.nii.gz``): ANTs vs jaxreg."""
    ants = pytest.importorskip("ants", reason="antspyx not installed (optional ANTs cross-check)")
    rng = np.random.default_rng(14)
    from scipy.ndimage import gaussian_filter

    base = gaussian_filter(rng.random((28, 26, 24)), 2.0)
    base = (base - base.min()) / np.ptp(base)
    fixed = sitk_image(base, (1.2, 1.0, 1.4), (-10.0, 5.0, -3.0), _random_direction(rng, 3))
    shifted = np.roll(base, (2, -1, 1), axis=(0, 1, 2))
    moving = sitk_image(shifted, (1.0, 1.1, 1.3), (-8.0, 4.0, -2.0), _random_direction(rng, 3))
    sitk.WriteImage(sitk.Cast(fixed, sitk.sitkFloat32), str(tmp_path / "fixed.nii.gz"))
    sitk.WriteImage(sitk.Cast(moving, sitk.sitkFloat32), str(tmp_path / "moving.nii.gz"))
    f_ants, m_ants = (
        ants.image_read(str(tmp_path / "fixed.nii.gz")),
        ants.image_read(str(tmp_path / "moving.nii.gz")),
    )
    reg = ants.registration(
        f_ants, m_ants, type_of_transform="SyN", reg_iterations=(20, 10), outprefix=str(tmp_path / "reg_")
    )
    paths = reg["fwdtransforms"]
    assert paths[0].endswith("Warp.nii.gz") and paths[1].endswith("GenericAffine.mat")
    expected = ants.apply_transforms(f_ants, m_ants, transformlist=paths, interpolator="linear")
    ants.image_write(expected, str(tmp_path / "expected.nii.gz"))
    expected_img = image_from_sitk(sitk.ReadImage(str(tmp_path / "expected.nii.gz"), sitk.sitkFloat64))
    mov = image_from_sitk(sitk.ReadImage(str(tmp_path / "moving.nii.gz"), sitk.sitkFloat64))
    fixed_grid = grid_from_sitk(sitk.ReadImage(str(tmp_path / "fixed.nii.gz")))
    assert expected_img.grid == fixed_grid
    t = compose_files(paths)
    got = warp(mov, t, fixed_grid, order=1)
    mask = _interior_mask(mov.grid, t, fixed_grid)
    assert mask.mean() > 0.8
    np.testing.assert_allclose(np.asarray(got.data)[mask], np.asarray(expected_img.data)[mask], atol=1e-4)
    wrong = warp(mov, compose(*read_transform_list(paths)), fixed_grid, order=1)
    assert np.abs(np.asarray(wrong.data) - np.asarray(expected_img.data))[mask].max() > 1e-2


def read_transform_list(paths):
    return [read_transform(p) for p in paths]
