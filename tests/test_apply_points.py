"""``jaxreg apply-points``: landmark files through transform files, in the ``antsApplyTransformsToPoints``
convention, against SimpleITK's ``TransformPoint`` of the same files, against the image warp of a one-voxel label,
with TRE on known points and the bad-input contract (one line, exit status 2, nothing written).
"""

from __future__ import annotations

import csv
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from jaxreg.cli.main import main
from jaxreg.core.grid import Grid, Image
from jaxreg.io import load_image, read_landmarks, save_image, write_landmarks, write_transform
from jaxreg.transforms import Affine, DisplacementField

_F3 = np.diag([-1.0, -1.0, 1.0])  # RAS <-> LPS


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _oblique_grid(shape, spacing, rotvec, centre) -> Grid:
    n = len(shape)
    r = Rotation.from_rotvec(rotvec).as_matrix()[:n, :n] if n == 3 else np.array(
        [[np.cos(rotvec), -np.sin(rotvec)], [np.sin(rotvec), np.cos(rotvec)]]
    )
    a = np.eye(n + 1)
    a[:n, :n] = r * np.asarray(spacing)[None, :]
    a[:n, n] = np.asarray(centre) - a[:n, :n] @ ((np.asarray(shape) - 1) / 2.0)
    return Grid(tuple(shape), a)


def _smooth_field(grid: Grid, amplitude: float, sigma: float, centre) -> DisplacementField:
    x = np.asarray(grid.world_coords(), np.float64)
    g = np.exp(-np.sum((x - np.asarray(centre)) ** 2, -1) / (2 * sigma**2))
    w = np.linspace(1.0, -0.5, grid.ndim)
    return DisplacementField(jnp.asarray(amplitude * g[..., None] * w, jnp.float32), grid)


def _affine(ndim: int) -> Affine:
    h = np.eye(ndim + 1)
    if ndim == 3:
        h[:3, :3] = Rotation.from_rotvec([0.05, -0.08, 0.1]).as_matrix() * np.array([1.04, 0.97, 1.01])
        h[:3, 3] = [3.0, -2.0, 1.5]
    else:
        c, s = np.cos(0.1), np.sin(0.1)
        h[:2, :2] = np.array([[c, -s], [s, c]]) * np.array([1.05, 0.96])
        h[:2, 2] = [2.5, -1.5]
    return Affine.from_homogeneous(jnp.asarray(h), center=jnp.asarray(np.linspace(-3.0, 4.0, ndim)))


@pytest.fixture(scope="module")
def files3d(tmp_path_factory):
    """A 3-D affine .mat and an oblique displacement field, and points inside and outside the field."""
    root = tmp_path_factory.mktemp("points3d")
    with jax.enable_x64(True):
        write_transform(_affine(3), root / "affine.mat")
    grid = _oblique_grid((14, 12, 10), (2.0, 2.2, 2.5), [0.1, 0.2, -0.15], (1.0, -2.0, 3.0))
    write_transform(_smooth_field(grid, 4.0, 8.0, (2.0, 0.0, 3.0)), root / "warp.nii.gz")
    rng = np.random.default_rng(5)
    pts = np.concatenate([rng.uniform(-10, 10, (12, 3)) + [1.0, -2.0, 3.0], rng.uniform(-40, 40, (4, 3))])
    return root, pts


def _sitk_map(tx, points_ras: np.ndarray) -> np.ndarray:
    return np.array([_F3 @ np.asarray(tx.TransformPoint(tuple(float(v) for v in _F3 @ p))) for p in points_ras])


def _sitk_chain(root):
    """SimpleITK's transform of ``-t warp.nii.gz -t affine.mat``: the point goes through the warp first (ITK's
    CompositeTransform applies its last member first)."""
    a = sitk.ReadTransform(str(root / "affine.mat"))
    w = sitk.DisplacementFieldTransform(sitk.ReadImage(str(root / "warp.nii.gz"), sitk.sitkVectorFloat64))
    return sitk.CompositeTransform([a, w])


# -- against SimpleITK -------------------------------------------------------------------------------------------
def test_matches_simpleitk_transform_point(files3d, capsys, tmp_path):
    root, pts = files3d
    labels = [f"P{i}" for i in range(len(pts))]
    write_landmarks(tmp_path / "p.csv", pts, labels=labels)
    rc, out, err = run(
        capsys, "apply-points", "-i", tmp_path / "p.csv", "-t", root / "warp.nii.gz", "-t", root / "affine.mat",
        "-o", tmp_path / "q.csv",
    )  # fmt: skip
    assert rc == 0, err
    got = read_landmarks(tmp_path / "q.csv")
    assert got.labels == tuple(labels)
    want = _sitk_map(_sitk_chain(root), pts)
    np.testing.assert_allclose(got.points, want, atol=1e-5)
    assert np.abs(want - pts).max() > 3.0  # the mapping moves the points
    # the affine alone, and its inverse ([file,1])
    a = sitk.ReadTransform(str(root / "affine.mat"))
    for spec, tx in ((str(root / "affine.mat"), a), (f"[{root / 'affine.mat'},1]", a.GetInverse())):
        rc, out, err = run(capsys, "apply-points", "-i", tmp_path / "p.csv", "-t", spec, "--json")
        assert rc == 0, err
        np.testing.assert_allclose(np.asarray(json.loads(out)["points"]), _sitk_map(tx, pts), atol=1e-6)


def test_ants_lps_csv_in_and_out(files3d, capsys, tmp_path):
    """An ANTs point file (header x,y,z,t, LPS) is written back as an ANTs file; its LPS values are ITK's
    TransformPoint of the LPS input, with no conversion at all."""
    root, pts = files3d
    lps = pts @ _F3
    with open(tmp_path / "p.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["x", "y", "z", "t"])
        w.writerows([[*(repr(float(v)) for v in p), "0"] for p in lps])
    rc, _, err = run(
        capsys, "apply-points", "-i", tmp_path / "p.csv", "-t", root / "warp.nii.gz", "-t", root / "affine.mat",
        "-o", tmp_path / "q.csv",
    )  # fmt: skip
    assert rc == 0, err
    rows = list(csv.reader(open(tmp_path / "q.csv")))
    assert rows[0] == ["x", "y", "z", "t"]
    got = np.array([[float(v) for v in r[:3]] for r in rows[1:]])
    tx = _sitk_chain(root)
    want = np.array([tx.TransformPoint(tuple(float(v) for v in p)) for p in lps])
    np.testing.assert_allclose(got, want, atol=1e-5)
    # Slicer .fcsv out (LPS in the file, RAS when read)
    rc, _, err = run(
        capsys, "apply-points", "-i", tmp_path / "p.csv", "-t", root / "affine.mat", "-o", tmp_path / "q.fcsv"
    )
    assert rc == 0, err
    a = sitk.ReadTransform(str(root / "affine.mat"))
    np.testing.assert_allclose(read_landmarks(tmp_path / "q.fcsv").points, _sitk_map(a, pts), atol=1e-6)


def test_ants_2d_points_keep_their_zero_z(capsys, tmp_path):
    """ANTs point files always have x,y,z,t: with a 2-D transform, rows x,y,0 are 2-D points (written back with
    z = 0), mapped as SimpleITK maps the LPS points."""
    with jax.enable_x64(True):
        write_transform(_affine(2), tmp_path / "a.mat")
    lps = np.array([[1.5, -2.0], [10.0, 4.0], [-7.5, 3.25]])
    (tmp_path / "p.csv").write_text("x,y,z,t\n" + "".join(f"{x},{y},0,0\n" for x, y in lps))
    rc, _, err = run(capsys, "apply-points", "-i", tmp_path / "p.csv", "-t", tmp_path / "a.mat", "-o", tmp_path / "q.csv")
    assert rc == 0, err
    rows = list(csv.reader(open(tmp_path / "q.csv")))
    assert rows[0] == ["x", "y", "z", "t"] and all(float(r[2]) == 0.0 for r in rows[1:])
    tx = sitk.ReadTransform(str(tmp_path / "a.mat"))
    want = np.array([tx.TransformPoint(tuple(p)) for p in lps])
    np.testing.assert_allclose(np.array([[float(v) for v in r[:2]] for r in rows[1:]]), want, atol=1e-9)


# -- against the image warp of a one-voxel label -----------------------------------------------------------------
def test_agrees_with_the_image_warp_of_a_one_voxel_label(capsys, tmp_path):
    """A single voxel at ``m`` in the moving image, warped onto a fine fixed grid with ``jaxreg apply -t warp -t
    affine`` (pull: the fixed point ``x`` samples the moving image at ``T(x)``), appears around ``c = T^-1(m)``:
    the warped blob's centroid ``c`` is where the fixed-space point lies that corresponds to ``m``. The same ``-t``
    list given to ``apply-points`` maps that fixed-space point to the moving space, ``T(c)``, which must be ``m``:
    points go through the inverse of what images go through (the antsApplyTransformsToPoints convention)."""
    mgrid = Grid.centered((21, 21), 2.0)
    m_index = (12, 8)
    data = np.zeros(mgrid.shape, np.float32)
    data[m_index] = 1.0
    save_image(Image(jnp.asarray(data), mgrid), tmp_path / "moving.nii.gz")
    fgrid = Grid.centered((160, 160), 0.25)  # fine: the blob covers hundreds of fixed voxels
    save_image(Image(jnp.zeros(fgrid.shape, jnp.float32), fgrid), tmp_path / "fixed.nii.gz")
    with jax.enable_x64(True):
        write_transform(_affine(2), tmp_path / "affine.mat")
    write_transform(_smooth_field(fgrid, 2.0, 15.0, (4.0, -3.0)), tmp_path / "warp.nii.gz")
    chain = ["-t", tmp_path / "warp.nii.gz", "-t", tmp_path / "affine.mat"]
    rc, _, err = run(
        capsys, "apply", "--fixed", tmp_path / "fixed.nii.gz", "--moving", tmp_path / "moving.nii.gz", *chain,
        "-o", tmp_path / "blob.nii.gz",
    )  # fmt: skip
    assert rc == 0, err
    blob = np.asarray(load_image(tmp_path / "blob.nii.gz").data, np.float64)
    assert blob.max() > 0.9 and (blob > 0).sum() > 100 and blob[0].max() == blob[-1].max() == 0.0
    x = np.asarray(fgrid.world_coords(), np.float64)
    c = (blob[..., None] * x).sum((0, 1)) / blob.sum()
    m = np.asarray(mgrid.index_to_world(jnp.asarray(m_index, jnp.float32)), np.float64)
    write_landmarks(tmp_path / "c.csv", c[None])
    rc, out, err = run(capsys, "apply-points", "-i", tmp_path / "c.csv", *chain, "--json")
    assert rc == 0, err
    got = np.asarray(json.loads(out)["points"][0])
    assert np.linalg.norm(got - m) < 0.05, (got, m)  # 2-mm moving voxels
    assert np.linalg.norm(c - m) > 3.0  # the transform moved the blob: the check is not vacuous


# -- TRE --------------------------------------------------------------------------------------------------------
def test_tre_on_known_points(capsys, tmp_path):
    pts = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 5.0], [-5.0, 8.0, 2.0], [3.0, -7.0, -4.0], [1.0, 1.0, 1.0]])
    t = np.array([2.0, -1.0, 3.0])
    e = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 3.0], [0.0, 2.4, 3.2]])  # 0..4 mm
    h = np.eye(4)
    h[:3, 3] = t
    with jax.enable_x64(True):
        write_transform(Affine.from_homogeneous(jnp.asarray(h)), tmp_path / "t.mat")
    labels = ["a", "b", "c", "d", "e"]
    write_landmarks(tmp_path / "p.fcsv", pts, labels=labels)
    order = [3, 0, 4, 1, 2]
    write_landmarks(tmp_path / "r.csv", (pts + t + e)[order], labels=[labels[i] for i in order])
    rc, out, err = run(
        capsys, "apply-points", "-i", tmp_path / "p.fcsv", "-t", tmp_path / "t.mat",
        "--reference-points", tmp_path / "r.csv", "--pair", "label", "--json",
    )  # fmt: skip
    assert rc == 0, err
    tre = json.loads(out)["tre"]
    assert tre["labels"] == labels and tre["pairs"] == 5
    np.testing.assert_allclose(tre["distances_mm"], [0, 1, 2, 3, 4], atol=1e-9)
    assert tre["mean_mm"] == pytest.approx(2.0) and tre["median_mm"] == pytest.approx(2.0)
    assert tre["max_mm"] == pytest.approx(4.0) and tre["rms_mm"] == pytest.approx(np.sqrt(6.0))
    np.testing.assert_allclose(tre["distances_before_mm"], np.linalg.norm(t + e, axis=-1), atol=1e-9)
    rc, out, err = run(
        capsys, "apply-points", "-i", tmp_path / "p.fcsv", "-t", tmp_path / "t.mat",
        "--reference-points", tmp_path / "r.csv", "--pair", "label",
    )  # fmt: skip
    assert rc == 0, err
    assert "TRE over 5 pairs: mean 2.000, median 2.000, max 4.000 mm" in out
    assert not list(tmp_path.glob("*.json"))  # nothing written without -o


# -- bad inputs --------------------------------------------------------------------------------------------------
def _bad_cases(tmp):
    (tmp / "p2.csv").write_text("x,y\n1,2\n3,4\n")
    (tmp / "p3.csv").write_text("x,y,z\n1,2,3\n3,4,5\n")
    (tmp / "r1.csv").write_text("x,y,z\n1,2,3\n")
    (tmp / "bad.mat").write_bytes(b"not a MATLAB file at all")
    with jax.enable_x64(True):
        write_transform(_affine(3), tmp / "a.mat")
        write_transform(_affine(2), tmp / "a2.mat")
    p, a, o = tmp / "p3.csv", tmp / "a.mat", tmp / "out.csv"
    return {
        "missing input": (["-i", tmp / "nope.csv", "-t", a, "-o", o], ["-i", "nope.csv"]),
        "wrong format": (["-i", p, "--format", "fcsv", "-t", a, "-o", o], ["-i", "expected numbers"]),
        "unknown format": (["-i", p, "--format", "xyz", "-t", a, "-o", o], ["--format"]),
        "unreadable transform": (["-i", p, "-t", tmp / "bad.mat", "-o", o], ["-t", "bad.mat"]),
        "missing transform": (["-i", p, "-t", tmp / "none.mat", "-o", o], ["-t", "none.mat"]),
        "bad spec": (["-i", p, "-t", f"[{a},2]", "-o", o], ["-t", "[file,1]"]),
        "dimension": (["-i", tmp / "p2.csv", "-t", a, "-o", o], ["-t", "3-D transform", "2-D points"]),
        "output suffix": (["-i", p, "-t", a, "-o", tmp / "out.nii.gz"], ["-o", ".csv"]),
        "output dir": (["-i", p, "-t", a, "-o", tmp / "no" / "out.csv"], ["-o", "does not exist"]),
        "output is input": (["-i", p, "-t", a, "-o", p], ["-o", "refusing to overwrite"]),
        "fcsv of 2-D": (["-i", tmp / "p2.csv", "-t", tmp / "a2.mat", "-o", tmp / "o.fcsv"], ["-o", ".fcsv", "2-D"]),
        "2-D with z": (["-i", p, "-t", tmp / "a2.mat", "-o", o], ["-i", "non-zero z"]),
        "reference count": (
            ["-i", p, "-t", a, "--reference-points", tmp / "r1.csv", "-o", o],
            ["-i/--reference-points", "same number"],
        ),
    }


@pytest.mark.parametrize("case", [
    "missing input", "wrong format", "unknown format", "unreadable transform", "missing transform", "bad spec",
    "dimension", "output suffix", "output dir", "output is input", "fcsv of 2-D", "2-D with z", "reference count",
])  # fmt: skip
def test_bad_inputs_are_one_line_and_write_nothing(tmp_path, capsys, case):
    argv, fragments = _bad_cases(tmp_path)[case]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    snapshot = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    rc, out, err = run(capsys, "apply-points", *argv)
    assert rc == 2
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1 and lines[0].startswith("jaxreg: error: ") and "Traceback" not in err, err
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == snapshot


def test_help_states_the_convention(capsys):
    assert main(["apply-points", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "antsApplyTransformsToPoints" in text and "inverse of what images go through" in text
