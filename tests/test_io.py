"""NIfTI image I/O: round trips, header geometry, validation errors and atomic writes."""

from __future__ import annotations

import gzip
import inspect
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxreg.io as jio
from jaxreg.core.grid import Grid, Image
from jaxreg.io import atomic_write, load_image, load_labels, save_image

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def _oblique_affine(
    spacing=(1.2, 0.8, 2.5), origin=(-30.0, 12.5, 7.0), angles=(0.3, -0.2, 0.5)
) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    a = np.eye(4)
    a[:3, :3] = Rotation.from_euler("xyz", angles).as_matrix() * np.asarray(spacing)[None, :]
    a[:3, 3] = origin
    return a


def _grid3(shape=(5, 6, 7)) -> Grid:
    return Grid(shape, _oblique_affine())


def _grid2(shape=(6, 5)) -> Grid:
    c, s = np.cos(0.4), np.sin(0.4)
    a = np.array([[1.5 * c, -0.7 * s, 10.0], [1.5 * s, 0.7 * c, -4.0], [0, 0, 1]])
    return Grid(shape, a)


# -- round trips ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("dtype", [np.float32, np.int16, np.uint8, np.int32])
def test_roundtrip_3d_preserves_data_dtype_grid(tmp_path, suffix, dtype):
    rng = np.random.default_rng(0)
    grid = _grid3()
    data = (rng.random(grid.shape) * 100).astype(dtype)
    path = tmp_path / f"img{suffix}"
    save_image(Image(jnp.asarray(data), grid), path)
    out = load_image(path)
    assert out.grid == grid
    assert out.data.dtype == dtype
    np.testing.assert_array_equal(np.asarray(out.data), data)
    # The geometry nibabel sees is the grid's affine, in both sform and qform, with code 1.
    nii = nib.load(path)
    np.testing.assert_allclose(nii.affine, grid.affine, atol=1e-5)
    np.testing.assert_allclose(nii.get_qform(), grid.affine, atol=1e-5)
    assert int(nii.header["sform_code"]) == 1 and int(nii.header["qform_code"]) == 1


def test_roundtrip_float64_under_x64(tmp_path):
    with jax.enable_x64(True):
        grid = _grid3()
        data = np.random.default_rng(1).normal(size=grid.shape)
        save_image(Image(jnp.asarray(data), grid), tmp_path / "f64.nii.gz")
        out = load_image(tmp_path / "f64.nii.gz")
        assert out.data.dtype == np.float64
        np.testing.assert_array_equal(np.asarray(out.data), data)


def test_dtype_argument_on_load_and_save(tmp_path):
    grid = _grid3()
    data = np.arange(np.prod(grid.shape), dtype=np.float32).reshape(grid.shape) % 7
    save_image(Image(jnp.asarray(data), grid), tmp_path / "a.nii", dtype=np.uint8)
    assert nib.load(tmp_path / "a.nii").get_data_dtype() == np.uint8
    out = load_image(tmp_path / "a.nii", dtype=jnp.float32)
    assert out.data.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(out.data), data)
    with pytest.raises(ValueError, match="non-integer"):
        save_image(Image(jnp.asarray(data + 0.5), grid), tmp_path / "b.nii", dtype=np.int16)
    with pytest.raises(ValueError, match="do not fit"):
        save_image(Image(jnp.asarray(data + 300), grid), tmp_path / "b.nii", dtype=np.uint8)
    assert not (tmp_path / "b.nii").exists()


def test_roundtrip_2d(tmp_path):
    grid = _grid2()
    data = np.random.default_rng(2).random(grid.shape).astype(np.float32)
    save_image(Image(jnp.asarray(data), grid), tmp_path / "s.nii.gz")
    out = load_image(tmp_path / "s.nii.gz")
    assert out.grid == grid and out.grid.ndim == 2
    np.testing.assert_array_equal(np.asarray(out.data), data)
    # ndim=3 keeps the stored (X, Y) image as one slice of a 3-D grid.
    out3 = load_image(tmp_path / "s.nii.gz", ndim=3)
    assert out3.grid.shape == (*grid.shape, 1)
    np.testing.assert_allclose(out3.grid.affine[:2, [0, 1, 3]], grid.affine[:2], atol=1e-6)


def test_single_slice_3d_file_loads_as_2d(tmp_path):
    aff = np.diag([0.5, 0.7, 3.0, 1.0])
    aff[:3, 3] = [1, 2, 3]
    data = np.random.default_rng(3).random((4, 5, 1)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, aff), tmp_path / "slice.nii")
    out = load_image(tmp_path / "slice.nii")
    assert out.grid.shape == (4, 5)
    np.testing.assert_allclose(out.grid.affine, [[0.5, 0, 1], [0, 0.7, 2], [0, 0, 1]])
    assert load_image(tmp_path / "slice.nii", ndim=3).grid.shape == (4, 5, 1)


@pytest.mark.parametrize("twod", [False, True])
def test_roundtrip_channels(tmp_path, twod):
    grid = _grid2() if twod else _grid3()
    data = np.random.default_rng(4).random((*grid.shape, 3)).astype(np.float32)
    save_image(Image(jnp.asarray(data), grid), tmp_path / "c.nii.gz")
    nii = nib.load(tmp_path / "c.nii.gz")
    expected = (*grid.shape, 1, 1, 3) if twod else (*grid.shape, 1, 3)
    assert nii.shape == expected
    assert int(nii.header["intent_code"]) == 1007
    out = load_image(tmp_path / "c.nii.gz", channels=True)
    assert out.grid == grid and out.has_channels
    np.testing.assert_array_equal(np.asarray(out.data), data)
    with pytest.raises(ValueError, match="channels=True"):
        load_image(tmp_path / "c.nii.gz")


def test_4d_file_as_channels_and_scalar_with_channel_axis(tmp_path):
    data = np.random.default_rng(5).random((4, 5, 6, 2)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, _oblique_affine()), tmp_path / "four.nii")
    out = load_image(tmp_path / "four.nii", channels=True)
    assert out.data.shape == (4, 5, 6, 2)
    np.testing.assert_array_equal(np.asarray(out.data), data)
    # a 4-D file with one volume is a 3-D scalar image
    nib.save(nib.Nifti1Image(data[..., :1], _oblique_affine()), tmp_path / "one.nii")
    assert load_image(tmp_path / "one.nii").data.shape == (4, 5, 6)
    assert load_image(tmp_path / "one.nii", channels=True).data.shape == (4, 5, 6, 1)


def test_labels(tmp_path):
    grid = _grid3()
    labels = np.random.default_rng(6).integers(0, 40, grid.shape).astype(np.int16)
    save_image(Image(jnp.asarray(labels), grid), tmp_path / "lab.nii.gz")
    out = load_labels(tmp_path / "lab.nii.gz")
    assert out.data.dtype == jnp.int32 and out.grid == grid
    np.testing.assert_array_equal(np.asarray(out.data), labels)
    # integral floats are accepted, anything else is not
    nib.save(nib.Nifti1Image(labels.astype(np.float32), grid.affine), tmp_path / "labf.nii.gz")
    np.testing.assert_array_equal(np.asarray(load_labels(tmp_path / "labf.nii.gz").data), labels)
    bad = labels.astype(np.float32)
    bad[1, 2, 3] = 2.5
    nib.save(nib.Nifti1Image(bad, grid.affine), tmp_path / "bad.nii.gz")
    with pytest.raises(ValueError, match=r"bad\.nii\.gz.*non-integer.*2\.5.*\(1, 2, 3\)"):
        load_labels(tmp_path / "bad.nii.gz")


def test_bool_saved_as_uint8(tmp_path):
    grid = _grid3()
    mask = np.random.default_rng(7).random(grid.shape) > 0.5
    save_image(Image(jnp.asarray(mask), grid), tmp_path / "m.nii")
    out = load_image(tmp_path / "m.nii")
    assert out.data.dtype == np.uint8
    np.testing.assert_array_equal(np.asarray(out.data), mask)


@settings(max_examples=25, deadline=None)
@given(
    shape=st.lists(st.integers(1, 4), min_size=2, max_size=3),
    spacing=st.lists(st.floats(0.2, 5.0), min_size=3, max_size=3),
    origin=st.lists(st.floats(-200.0, 200.0), min_size=3, max_size=3),
    rotvec=st.lists(st.floats(-2.0, 2.0), min_size=3, max_size=3),
    reflect=st.booleans(),
)
def test_grid_roundtrip_property(shape, spacing, origin, rotvec, reflect):
    """Any rotated/reflected, anisotropic grid survives save/load to float32 header precision."""
    import tempfile

    from scipy.spatial.transform import Rotation

    n = len(shape)
    if n == 2:
        th = rotvec[0]
        r = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    else:
        r = Rotation.from_rotvec(rotvec).as_matrix()
    if reflect:
        r = r @ np.diag([1.0] * (n - 1) + [-1.0])
    if n == 3 and shape[2] == 1:
        shape = shape[:2] + [2]  # a 3-D single slice would load as 2-D (by design; see test_roundtrip_2d)
    grid = Grid.from_spacing(shape, spacing[:n], origin=origin[:n], direction=r)
    data = np.arange(np.prod(shape), dtype=np.int16).reshape(shape)
    with tempfile.TemporaryDirectory() as d:
        save_image(Image(jnp.asarray(data), grid), Path(d) / "g.nii.gz")
        out = load_image(Path(d) / "g.nii.gz")
    assert out.grid.shape == grid.shape
    # the NIfTI header stores the affine as float32
    np.testing.assert_allclose(out.grid.affine, grid.affine, rtol=1e-6, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(out.data), data)


# -- header geometry -----------------------------------------------------------------------------------------
def test_qform_only_and_sform_only(tmp_path):
    aff = _oblique_affine()
    data = np.zeros((3, 4, 5), np.float32)
    q = nib.Nifti1Image(data, None)
    q.header.set_qform(aff, code=1)
    q.header.set_sform(np.eye(4), code=0)
    nib.save(q, tmp_path / "q.nii")
    s = nib.Nifti1Image(data, None)
    s.header.set_sform(aff, code=2)
    s.header.set_qform(np.diag([3.0, 3.0, 3.0, 1.0]), code=0)
    nib.save(s, tmp_path / "s.nii")
    for name in ("q.nii", "s.nii"):
        h = nib.load(tmp_path / name).header
        assert (int(h["qform_code"]), int(h["sform_code"])) == ((1, 0) if name == "q.nii" else (0, 2))
        np.testing.assert_allclose(load_image(tmp_path / name).grid.affine, aff, atol=1e-5)


def test_sform_preferred_over_qform(tmp_path):
    data = np.zeros((3, 4, 5), np.float32)
    img = nib.Nifti1Image(data, None)
    img.header.set_qform(np.diag([2.0, 2.0, 2.0, 1.0]), code=1)
    img.header.set_sform(_oblique_affine(), code=1)
    nib.save(img, tmp_path / "both.nii")
    np.testing.assert_allclose(load_image(tmp_path / "both.nii").grid.affine, _oblique_affine(), atol=1e-5)


def test_sheared_grid_keeps_exact_sform(tmp_path):
    aff = _oblique_affine()
    aff[0, 1] += 0.3  # shear: not representable by a qform
    grid = Grid((3, 4, 5), aff)
    save_image(Image(jnp.zeros(grid.shape), grid), tmp_path / "shear.nii")
    assert load_image(tmp_path / "shear.nii").grid == grid


@pytest.mark.skipif(
    not (DATA / "brain3d").is_dir(), reason=f"real data folder {DATA / 'brain3d'} not present"
)
def test_real_file_grid_matches_nibabel():
    path = DATA / "brain3d" / "subj1_aseg.nii.gz"
    nii = nib.load(path)
    img = load_labels(path)
    assert img.grid.shape == nii.shape
    np.testing.assert_allclose(img.grid.affine, nii.affine, atol=1e-6)
    assert img.grid.axcodes == nib.aff2axcodes(nii.affine)
    assert img.data.dtype == jnp.int32
    np.testing.assert_array_equal(np.unique(np.asarray(img.data)), np.unique(np.asanyarray(nii.dataobj)))


@pytest.mark.skipif(
    not (DATA / "brain2d").is_dir(), reason=f"real data folder {DATA / 'brain2d'} not present"
)
def test_real_2d_file():
    path = DATA / "brain2d" / "r16.nii.gz"
    nii = nib.load(path)
    img = load_image(path)
    assert img.grid.ndim == 2 and img.grid.shape == nii.shape[:2]
    np.testing.assert_allclose(img.grid.affine[:2, :2], nii.affine[:2, :2])
    np.testing.assert_allclose(img.grid.affine[:2, 2], nii.affine[:2, 3])


# -- validation errors ---------------------------------------------------------------------------------------
def test_missing_file(tmp_path):
    path = tmp_path / "nope.nii.gz"
    with pytest.raises(FileNotFoundError, match="nope.nii.gz") as e:
        load_image(path)
    assert e.value.filename == str(path)


def test_truncated_gz(tmp_path):
    grid = _grid3((10, 10, 10))
    save_image(
        Image(jnp.asarray(np.random.default_rng(8).random(grid.shape), jnp.float32), grid),
        tmp_path / "t.nii.gz",
    )
    raw = (tmp_path / "t.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=r"cut\.nii\.gz: not a readable NIfTI file \("):
        load_image(tmp_path / "cut.nii.gz")
    # an uncompressed file cut inside the data
    raw = gzip.decompress(raw)
    (tmp_path / "cut.nii").write_bytes(raw[: len(raw) - 100])
    with pytest.raises(ValueError, match=r"cut\.nii: not a readable NIfTI file"):
        load_image(tmp_path / "cut.nii")


def test_text_file_and_directory(tmp_path):
    (tmp_path / "notes.nii").write_text("this is not an image\n")
    with pytest.raises(ValueError, match=r"notes\.nii: not a readable NIfTI file"):
        load_image(tmp_path / "notes.nii")
    with pytest.raises(ValueError, match="directory"):
        load_image(tmp_path)


def test_non_nifti_content_behind_a_nifti_suffix_rejected(tmp_path):
    # .mgz files load (tests/test_formats.py); an MGH file named .nii is not taken for NIfTI
    nib.save(nib.MGHImage(np.zeros((3, 3, 3), np.float32), np.eye(4)), tmp_path / "x.mgz")
    (tmp_path / "x.mgz").rename(tmp_path / "x.nii")
    with pytest.raises(ValueError, match="x.nii: not a readable NIfTI file"):
        load_image(tmp_path / "x.nii")


def test_nan_and_inf_rejected(tmp_path):
    data = np.zeros((3, 4, 5), np.float32)
    data[1, 2, 3] = np.nan
    data[0, 0, 1] = np.inf
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "nan.nii")
    with pytest.raises(
        ValueError, match=r"nan\.nii: contains 2 NaN/Inf values \(first at voxel \(0, 0, 1\)\)"
    ):
        load_image(tmp_path / "nan.nii")


def test_4d_when_3d_required(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6, 7), np.float32), np.eye(4)), tmp_path / "series.nii")
    with pytest.raises(ValueError, match=r"series\.nii: data of shape \(4, 5, 6, 7\).*3-D spatial.*scalar"):
        load_image(tmp_path / "series.nii", ndim=3)
    with pytest.raises(ValueError, match=r"series\.nii.*\(4, 5, 6, 7\)"):
        load_image(tmp_path / "series.nii")


def test_3d_when_2d_required(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.float32), np.eye(4)), tmp_path / "vol.nii")
    with pytest.raises(ValueError, match=r"vol\.nii: data of shape \(4, 5, 6\) is 3-D"):
        load_image(tmp_path / "vol.nii", ndim=2)


def test_singular_affine(tmp_path):
    aff = np.eye(4)
    aff[2, 2] = 0.0
    img = nib.Nifti1Image(np.zeros((3, 4, 5), np.float32), None)
    img.header.set_sform(aff, code=1)
    nib.save(img, tmp_path / "flat.nii")
    with pytest.raises(ValueError, match=r"flat\.nii: singular voxel-to-world affine"):
        load_image(tmp_path / "flat.nii")


def test_save_rejects_bad_suffix(tmp_path):
    with pytest.raises(ValueError, match=r"x\.png: expected a file name ending in \.nii, \.nii\.gz, .*got suffix '\.png'"):
        save_image(Image(jnp.zeros((2, 3)), Grid((2, 3))), tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []


# -- atomic writes -------------------------------------------------------------------------------------------
def test_failing_write_leaves_no_partial_file_and_keeps_destination(tmp_path, monkeypatch):
    grid = _grid3()
    dest = tmp_path / "out.nii.gz"
    save_image(Image(jnp.ones(grid.shape, jnp.float32), grid), dest)
    before = dest.read_bytes()

    def broken_to_filename(self, filename, **kwargs):
        with open(filename, "wb") as f:
            f.write(b"partial garbage")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(nib.Nifti1Image, "to_filename", broken_to_filename)
    with pytest.raises(OSError, match="disk full"):
        save_image(Image(jnp.zeros(grid.shape, jnp.float32), grid), dest)
    with pytest.raises(OSError, match="disk full"):
        save_image(Image(jnp.zeros(grid.shape, jnp.float32), grid), tmp_path / "new.nii.gz")
    assert dest.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nii.gz"]


def test_atomic_write_helper(tmp_path):
    dest = tmp_path / "f.nii.gz"
    seen = []

    def write(tmp):
        seen.append(tmp)
        Path(tmp).write_bytes(b"ok")

    atomic_write(dest, write)
    assert dest.read_bytes() == b"ok"
    tmp = Path(seen[0])
    assert tmp.parent == tmp_path and tmp.name.endswith(".nii.gz") and not tmp.exists()
    assert os.stat(dest).st_mode & 0o777 == 0o666 & ~_umask()
    with pytest.raises(ValueError, match="refusing to overwrite an input"):
        atomic_write(dest, write, inputs=[tmp_path / "x" / ".." / "f.nii.gz"])
    with pytest.raises(FileNotFoundError):
        atomic_write(tmp_path / "missing_dir" / "f.nii", write)


def test_save_refuses_to_overwrite_inputs(tmp_path):
    grid = _grid3()
    src = tmp_path / "in.nii.gz"
    save_image(Image(jnp.ones(grid.shape, jnp.float32), grid), src)
    before = src.read_bytes()
    with pytest.raises(ValueError, match="refusing to overwrite"):
        save_image(Image(jnp.zeros(grid.shape, jnp.float32), grid), src, inputs=[src])
    assert src.read_bytes() == before


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


# -- API -----------------------------------------------------------------------------------------------------
def test_public_api_documented_and_keyword_only():
    for name in jio.__all__:
        fn = getattr(jio, name)
        if not callable(fn):
            continue  # constants (tables of names) carry no docstring; tests/test_api.py checks the rest
        assert inspect.getdoc(fn), f"{name} has no docstring"
        sig = inspect.signature(fn)
        for p in sig.parameters.values():
            if p.default is not inspect.Parameter.empty:
                assert p.kind is inspect.Parameter.KEYWORD_ONLY, f"{name}({p.name}=) not keyword-only"


# -- transform files: read_transforms -------------------------------------------------------------------------
_F3 = np.diag([-1.0, -1.0, 1.0])  # RAS <-> LPS (ITK's physical space)


def _itk_map(tx, points_ras: np.ndarray) -> np.ndarray:
    """RAS points through a SimpleITK transform, which works on LPS points (independent reference)."""
    return np.array([_F3 @ np.asarray(tx.TransformPoint(tuple(float(v) for v in _F3 @ p))) for p in points_ras])


def _sitk_field_image(sitk, rng):
    """A random 3-D displacement field as a SimpleITK vector image (LPS geometry, LPS components)."""
    from scipy.spatial.transform import Rotation

    shape = (6, 5, 4)  # index order (i, j, k); SimpleITK arrays are (k, j, i)
    u = rng.normal(scale=1.5, size=(*shape, 3))
    img = sitk.GetImageFromArray(np.ascontiguousarray(u.transpose(2, 1, 0, 3)), isVector=True)
    img.SetSpacing((1.3, 0.9, 2.1))
    img.SetOrigin((-4.0, 7.5, 2.0))
    img.SetDirection(tuple(Rotation.from_rotvec([0.2, -0.3, 0.4]).as_matrix().ravel()))
    return img


def test_read_transforms_reads_sitk_and_jaxreg_files_in_order(tmp_path):
    """One transform per path, in the given order, without composing them.

    The files are written by SimpleITK (an affine ``.mat``, an Euler ``.tfm``, a displacement field
    ``.nii.gz``) and by jaxreg's writers (a rigid ``.mat``, a displacement field ``.nii.gz``). Each transform
    read must map RAS points (mm) as SimpleITK maps the LPS-flipped points with the same file, and the
    jaxreg-written ones must map as the transforms that were written.
    """
    import SimpleITK as sitk

    from jaxreg.transforms import Affine, DisplacementField, Rigid

    rng = np.random.default_rng(21)
    aff = sitk.AffineTransform(3)
    aff.SetMatrix(tuple((np.eye(3) + rng.uniform(-0.3, 0.3, (3, 3))).ravel()))
    aff.SetTranslation(tuple(rng.uniform(-10, 10, 3)))
    aff.SetCenter(tuple(rng.uniform(-20, 20, 3)))
    sitk.WriteTransform(aff, str(tmp_path / "a.mat"))
    eul = sitk.Euler3DTransform((3.0, -2.0, 5.0), 0.2, -0.4, 0.7, (4.0, 1.0, -6.0))
    sitk.WriteTransform(eul, str(tmp_path / "e.tfm"))
    sitk.WriteImage(_sitk_field_image(sitk, rng), str(tmp_path / "u.nii.gz"))
    field_grid = Grid.from_spacing((5, 7, 6), (1.1, 0.8, 1.7), origin=(2.0, -3.0, 9.0))
    with jax.enable_x64(True):
        rigid = Rigid(jnp.asarray([0.3, -0.2, 0.1]), jnp.asarray([2.0, -1.0, 4.0]), jnp.asarray([5.0, 6.0, -7.0]))
        field = DisplacementField(jnp.asarray(rng.normal(scale=2.0, size=(5, 7, 6, 3))), field_grid)
        jio.write_transform(rigid, tmp_path / "r.mat")
        jio.write_displacement_field(field, tmp_path / "w.nii.gz")
        names = ["a.mat", "e.tfm", "u.nii.gz", "r.mat", "w.nii.gz"]
        # str and Path mixed, and a tuple: any sequence of paths
        paths = tuple(str(tmp_path / n) if i % 2 else tmp_path / n for i, n in enumerate(names))
        ts = jio.read_transforms(paths)
        assert isinstance(ts, list) and len(ts) == len(names)
        assert [type(t) for t in ts] == [Affine, Affine, DisplacementField, Affine, DisplacementField]

        pts = rng.uniform(-40, 40, size=(30, 3))
        for t, name in zip(ts[:2], names[:2], strict=True):
            want = _itk_map(sitk.ReadTransform(str(tmp_path / name)), pts)
            np.testing.assert_allclose(np.asarray(t(jnp.asarray(pts))), want, atol=1e-9, err_msg=name)
        want_r = _itk_map(sitk.ReadTransform(str(tmp_path / "r.mat")), pts)
        np.testing.assert_allclose(np.asarray(ts[3](jnp.asarray(pts))), want_r, atol=1e-9)
        np.testing.assert_allclose(np.asarray(ts[3](jnp.asarray(pts))), np.asarray(rigid(jnp.asarray(pts))), atol=1e-9)

        # fields: compare inside each field's grid (SimpleITK reads the float32 NIfTI geometry and
        # re-orthonormalises its direction, nibabel does not: ~1e-7 mm, hence atol 1e-6)
        for t, name in ((ts[2], "u.nii.gz"), (ts[4], "w.nii.gz")):
            idx = rng.uniform(0.0, np.asarray(t.grid.shape) - 1.0, size=(40, 3))
            p = np.asarray(t.grid.index_to_world(jnp.asarray(idx)))
            tx = sitk.DisplacementFieldTransform(sitk.ReadImage(str(tmp_path / name), sitk.sitkVectorFloat64))
            np.testing.assert_allclose(np.asarray(t(jnp.asarray(p))), _itk_map(tx, p), atol=1e-6, err_msg=name)
        assert ts[4].grid == field_grid
        np.testing.assert_array_equal(np.asarray(ts[4].displacement), np.asarray(field.displacement))

        # each entry is what read_transform gives for that path alone (no composition across entries)
        for t, name in zip(ts, names, strict=True):
            one = jio.read_transform(tmp_path / name)
            assert type(one) is type(t)
            np.testing.assert_array_equal(np.asarray(one(jnp.asarray(pts))), np.asarray(t(jnp.asarray(pts))))


def test_read_transforms_errors(tmp_path):
    with jax.enable_x64(True):
        from jaxreg.transforms import Translation

        jio.write_transform(Translation(jnp.asarray([1.0, 2.0, 3.0])), tmp_path / "t.mat")
    assert jio.read_transforms([]) == []
    for single in (str(tmp_path / "t.mat"), tmp_path / "t.mat"):
        with pytest.raises(TypeError, match="single path"):
            jio.read_transforms(single)
    with pytest.raises(FileNotFoundError, match="nope.mat"):
        jio.read_transforms([tmp_path / "t.mat", tmp_path / "nope.mat"])
    (tmp_path / "bad.xyz").write_text("not a transform")
    with pytest.raises(ValueError, match="bad.xyz"):
        jio.read_transforms([tmp_path / "bad.xyz"])
