"""Image formats besides NIfTI (jaxreg.io.formats): FreeSurfer MGH/MGZ, NRRD, MetaImage and DICOM series.

References are independent of jaxreg's writers: SimpleITK converts a NIfTI file to NRRD/MetaImage/DICOM and
reports each voxel's physical (LPS) point, nibabel writes MGZ from an affine, and the same anatomy must land on
the same RAS+ grid whichever file it was read from.
"""

from __future__ import annotations

import os
import subprocess
import sys

import jax.numpy as jnp
import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from jaxreg import Grid, Image
from jaxreg.io import load_image, load_labels, save_image

LPS = np.diag([-1.0, -1.0, 1.0])


def _oblique_grid(shape=(7, 6, 5)) -> Grid:
    """A 3-D grid with a rotation, anisotropic voxels and an offset origin (no shear)."""
    c, s = np.cos(0.3), np.sin(0.3)
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ np.array(
        [[1.0, 0.0, 0.0], [0.0, np.cos(0.2), -np.sin(0.2)], [0.0, np.sin(0.2), np.cos(0.2)]]
    )
    a = np.eye(4)
    a[:3, :3] = rot @ np.diag([1.5, 0.8, 2.5])
    a[:3, 3] = [-40.0, 12.5, 7.0]
    return Grid(shape, a)


def _image(grid: Grid, dtype=np.float32) -> Image:
    data = np.random.default_rng(0).normal(size=grid.shape).astype(np.float32)
    if np.issubdtype(dtype, np.integer):
        data = (np.abs(data) * 10).astype(dtype)
    return Image(jnp.asarray(data), grid)


def _assert_same_image(a: Image, b: Image, atol_mm=1e-4):
    assert a.grid.shape == b.grid.shape
    np.testing.assert_allclose(a.grid.affine, b.grid.affine, atol=atol_mm)
    np.testing.assert_array_equal(np.asarray(a.data), np.asarray(b.data))


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".mgz", ".mgh", ".nii.gz"])
@pytest.mark.parametrize("ndim", [2, 3])
def test_round_trip_keeps_data_and_world_grid(tmp_path, suffix, ndim):
    grid = _oblique_grid() if ndim == 3 else Grid.from_spacing((7, 6), (1.5, 0.75)).with_affine(
        np.array([[0.0, -0.75, 30.0], [1.5, 0.0, -12.0], [0.0, 0.0, 1.0]]))
    img = _image(grid)
    path = tmp_path / f"img{suffix}"
    save_image(img, path)
    back = load_image(path)
    _assert_same_image(img, back)
    labels = _image(grid, np.int16)
    save_image(labels, tmp_path / f"lab{suffix}")
    lab = load_labels(tmp_path / f"lab{suffix}")
    _assert_same_image(labels, lab)
    assert lab.data.dtype == jnp.int32


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".mhd"])
def test_simpleitk_conversions_land_on_the_nifti_world_grid(tmp_path, suffix):
    """SimpleITK converts jaxreg's NIfTI: reading the copy gives the same grid; SimpleITK's physical points of
    jaxreg's own NRRD/MHA files are the LPS flips of the grid's world points."""
    img = _image(_oblique_grid())
    nii = tmp_path / "a.nii.gz"
    save_image(img, nii)
    copy = tmp_path / f"copy{suffix}"
    sitk.WriteImage(sitk.ReadImage(str(nii)), str(copy))
    _assert_same_image(load_image(nii), load_image(copy))
    if suffix != ".mhd":
        ours = tmp_path / f"ours{suffix}"
        save_image(img, ours)
        s = sitk.ReadImage(str(ours))
        for idx in [(0, 0, 0), (6, 0, 0), (0, 5, 0), (3, 2, 4), (6, 5, 4)]:
            ras = np.asarray(img.grid.index_to_world(jnp.asarray(idx, jnp.float32)))
            np.testing.assert_allclose(s.TransformIndexToPhysicalPoint(idx), LPS @ ras, atol=1e-4)
            assert s.GetPixel(idx) == pytest.approx(float(img.data[idx]))


def test_mgz_written_by_nibabel_reads_with_its_vox2ras(tmp_path):
    grid = _oblique_grid()
    data = np.arange(np.prod(grid.shape), dtype=np.int32).reshape(grid.shape)
    nib.save(nib.MGHImage(data, grid.affine), str(tmp_path / "x.mgz"))
    img = load_labels(tmp_path / "x.mgz")
    np.testing.assert_allclose(img.grid.affine, grid.affine, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(img.data), data)
    # and ours is read by nibabel with the same vox2ras
    save_image(img, tmp_path / "y.mgz")
    np.testing.assert_allclose(nib.load(str(tmp_path / "y.mgz")).affine, grid.affine, atol=1e-5)


def _write_dicom_series(img: sitk.Image, folder) -> None:
    """A DICOM series of ``img`` (one file per slice) with its geometry tags, as scanners write them."""
    os.makedirs(folder)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    direction = img.GetDirection()
    series = "1.2.826.0.1.3680043.2.1125.1.42"
    for k in range(img.GetDepth()):
        sl = img[:, :, k]
        sl.SetMetaData("0008|0060", "CT")
        sl.SetMetaData("0020|000e", series)
        sl.SetMetaData("0020|000d", series + ".1")
        sl.SetMetaData("0020|0037", "\\".join(f"{v:.10f}" for v in direction[0::3] + direction[1::3]))
        sl.SetMetaData("0020|0032", "\\".join(f"{v:.10f}" for v in img.TransformIndexToPhysicalPoint((0, 0, k))))
        sl.SetMetaData("0020|0013", str(k + 1))
        sl.SetMetaData("0018|0050", str(img.GetSpacing()[2]))
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(sl)


def test_dicom_series_folder(tmp_path):
    grid = _oblique_grid((8, 7, 5))
    img = _image(grid, np.int16)
    save_image(img, tmp_path / "a.nii.gz")
    ref = sitk.Cast(sitk.ReadImage(str(tmp_path / "a.nii.gz")), sitk.sitkInt16)
    _write_dicom_series(ref, tmp_path / "dicom")
    back = load_labels(tmp_path / "dicom")
    _assert_same_image(img, back, atol_mm=1e-3)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda p: (p / "x.png").write_bytes(b"\x89PNG"), "unknown image format '.png'"),
        (lambda p: (p / "x.nrrd").write_text("not nrrd"), "not a readable image file"),
        (lambda p: (p / "x.mgz").write_bytes(b"\x1f\x8b garbage"), "not a readable MGH/MGZ file"),
        (lambda p: (p / "x").mkdir(), "no DICOM series"),
    ],
)
def test_bad_files_name_the_path(tmp_path, make, match):
    make(tmp_path)
    path = next(p for p in tmp_path.iterdir())
    with pytest.raises(ValueError, match=match) as e:
        load_image(path)
    assert str(path) in str(e.value)


def test_bad_destinations_write_nothing(tmp_path):
    img = _image(_oblique_grid())
    with pytest.raises(ValueError, match=r"\.mhd"):
        save_image(img, tmp_path / "x.mhd")  # two files (header and raw) cannot be written atomically as one
    sheared = Image(img.data, Grid(img.grid.shape, np.array([[1, 0.5, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])))
    with pytest.raises(ValueError, match="shear"):
        save_image(sheared, tmp_path / "x.nrrd")
    assert list(tmp_path.iterdir()) == []


def test_cli_apply_reads_and_writes_every_format(tmp_path):
    """``jaxreg apply`` reads MGZ and NRRD and writes MHA, the same voxels as through NIfTI."""
    from jaxreg.cli.main import main

    grid = _oblique_grid((10, 9, 8))
    fixed, moving = _image(grid), _image(grid)
    save_image(fixed, tmp_path / "f.mgz")
    save_image(moving, tmp_path / "m.nrrd")
    save_image(fixed, tmp_path / "f.nii.gz")
    save_image(moving, tmp_path / "m.nii.gz")
    (tmp_path / "t.txt").write_text(
        "#Insight Transform File V1.0\n#Transform 0\nTransform: TranslationTransform_double_3_3\n"
        "Parameters: 1.5 -0.5 2\nFixedParameters:\n")
    for f, m, o in (("f.mgz", "m.nrrd", "o.mha"), ("f.nii.gz", "m.nii.gz", "o.nii.gz")):
        assert main(["apply", "--fixed", str(tmp_path / f), "--moving", str(tmp_path / m), "-t", str(tmp_path / "t.txt"),
                     "-o", str(tmp_path / o)]) == 0
    a, b = load_image(tmp_path / "o.mha"), load_image(tmp_path / "o.nii.gz")
    np.testing.assert_allclose(a.grid.affine, b.grid.affine, atol=1e-4)
    np.testing.assert_allclose(np.asarray(a.data), np.asarray(b.data), atol=1e-3 * float(np.ptp(np.asarray(b.data))))  # NIfTI stores the affine in float32
    r = subprocess.run([sys.executable, "-m", "jaxreg.cli", "apply", "--fixed", str(tmp_path / "f.mgz"), "--moving",
                        str(tmp_path / "m.nrrd"), "-t", str(tmp_path / "t.txt"), "-o", str(tmp_path / "o.png")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "o.png" in r.stderr
    assert not (tmp_path / "o.png").exists()
