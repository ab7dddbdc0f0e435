"""Landmark files (jaxreg.io.landmarks) and the ``jaxreg landmarks`` command.

Checks the coordinate conventions of each format (plain CSV in RAS, Slicer .fcsv in RAS or LPS, ANTs CSV in
LPS), the direction of the written transform against SimpleITK and against ``jaxreg apply`` on images, and,
when ANTsPy is installed, against ``ants.apply_transforms_to_points``.
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import SimpleITK as sitk

from jaxreg.cli.landmarks import add_parser, parse_weights
from jaxreg.io import read_transform
from jaxreg.io.landmarks import Landmarks, match_landmarks, read_landmarks, write_landmarks
from jaxreg.points import fit_rigid
from jaxreg.transforms import Rigid

F3 = np.diag([-1.0, -1.0, 1.0])
PTS = np.array([[1.5, -2.0, 3.0], [40.25, 5.0, -6.125], [-0.1, 0.2, 1e-3], [10.0, 20.0, 30.0]])


# -- round trips and conventions ----------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt,suffix", [("csv", ".csv"), ("fcsv", ".fcsv"), ("ants", ".csv")])
def test_round_trip_is_exact(tmp_path, fmt, suffix):
    path = tmp_path / f"pts{suffix}"
    labels = ["nasion", "left, ear", 'say "hi"', ""]
    write_landmarks(path, PTS, labels=labels, format=fmt)
    lm = read_landmarks(path)  # auto-detection picks the same format back
    np.testing.assert_array_equal(lm.points, PTS)
    if fmt == "ants":
        assert lm.labels == ("",) * 4  # ANTs files hold numbers only
    else:
        assert lm.labels == tuple(labels)


def test_file_coordinates_follow_each_convention(tmp_path):
    write_landmarks(tmp_path / "a.csv", PTS)
    write_landmarks(tmp_path / "a.fcsv", PTS)
    write_landmarks(tmp_path / "b.csv", PTS, format="ants")
    plain = np.loadtxt(tmp_path / "a.csv", delimiter=",", skiprows=1)
    np.testing.assert_array_equal(plain, PTS)  # RAS
    slicer = np.genfromtxt(tmp_path / "a.fcsv", delimiter=",", comments="#", usecols=(1, 2, 3))
    np.testing.assert_array_equal(slicer, PTS @ F3)  # LPS
    text = (tmp_path / "a.fcsv").read_text()
    assert text.startswith(
        "# Markups fiducial file version = 4.11\n# CoordinateSystem = LPS\n# columns = id,x,y,z,"
    )
    ants = np.loadtxt(tmp_path / "b.csv", delimiter=",", skiprows=1)
    assert (tmp_path / "b.csv").read_text().startswith("x,y,z,t\n")
    np.testing.assert_array_equal(ants[:, :3], PTS @ F3)  # LPS
    np.testing.assert_array_equal(ants[:, 3], 0.0)
    assert "-0.0" not in (tmp_path / "b.csv").read_text()


SLICER_LPS = """# Markups fiducial file version = 4.13
# CoordinateSystem = LPS
# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID
0,-19.9067,13.9347,29.44297,0,0,0,1,1,1,0,F-1,,
1,-7.3939,-76.9499,17.55254,0,0,0,1,1,1,0,F-2,,
2,81.7333,-42.9415,9.625587,0,0,0,1,1,1,0,F-3,,
"""


@pytest.mark.parametrize(
    "line,flip",
    [
        ("# CoordinateSystem = LPS", True),
        ("# CoordinateSystem = RAS", False),
        ("# CoordinateSystem = 1", True),
        ("# CoordinateSystem = 0", False),
        (None, False),
    ],
)
def test_slicer_coordinate_systems(tmp_path, line, flip):
    text = (
        SLICER_LPS.replace("# CoordinateSystem = LPS", line)
        if line
        else SLICER_LPS.replace("# CoordinateSystem = LPS\n", "")
    )
    (tmp_path / "f.fcsv").write_text(text)
    lm = read_landmarks(tmp_path / "f.fcsv")
    raw = np.array(
        [[-19.9067, 13.9347, 29.44297], [-7.3939, -76.9499, 17.55254], [81.7333, -42.9415, 9.625587]]
    )
    np.testing.assert_allclose(lm.points, raw @ F3 if flip else raw)
    assert lm.labels == ("F-1", "F-2", "F-3")


def test_slicer_columns_line_is_honoured(tmp_path):
    text = "# CoordinateSystem = RAS\n# columns = label,z,y,x\nA,3,2,1\nB,6,5,4\n"
    (tmp_path / "f.fcsv").write_text(text)
    lm = read_landmarks(tmp_path / "f.fcsv")
    np.testing.assert_array_equal(lm.points, [[1, 2, 3], [4, 5, 6]])
    assert lm.labels == ("A", "B")


@pytest.mark.parametrize(
    "text,points,labels",
    [
        ("1,2,3\n4,5,6\n", [[1, 2, 3], [4, 5, 6]], ("", "")),
        ("# comment\n\n1, 2, 3, tip\n4,5,6,tail\n", [[1, 2, 3], [4, 5, 6]], ("tip", "tail")),
        ("tip,1,2,3\ntail,4,5,6\n", [[1, 2, 3], [4, 5, 6]], ("tip", "tail")),
        ("label,x,y,z\ntip,1,2,3\n", [[1, 2, 3]], ("tip",)),
        ("Z,Y,X,Name\n3,2,1,a\n", [[1, 2, 3]], ("a",)),
        ("x,y\n1,2\n3,4\n", [[1, 2], [3, 4]], ("", "")),
        ("1.5,2\n3,4e1\n", [[1.5, 2], [3, 40]], ("", "")),
    ],
)
def test_plain_csv_variants(tmp_path, text, points, labels):
    (tmp_path / "p.csv").write_text(text)
    lm = read_landmarks(tmp_path / "p.csv")
    np.testing.assert_array_equal(lm.points, points)
    assert lm.labels == labels


def test_ants_csv_is_detected_and_flipped(tmp_path):
    (tmp_path / "a.csv").write_text("x,y,z,t,label,comment\n-1,2,3,0,1,\n4,-5,6,0,2,\n")
    lm = read_landmarks(tmp_path / "a.csv")
    np.testing.assert_array_equal(lm.points, [[1, -2, 3], [-4, 5, 6]])
    # the same file read as plain RAS CSV on request
    np.testing.assert_array_equal(
        read_landmarks(tmp_path / "a.csv", format="csv").points, [[-1, 2, 3], [4, -5, 6]]
    )


def test_2d_points(tmp_path):
    p2 = PTS[:, :2]
    write_landmarks(tmp_path / "a.csv", p2)
    np.testing.assert_array_equal(read_landmarks(tmp_path / "a.csv").points, p2)
    write_landmarks(tmp_path / "b.csv", p2, format="ants")
    np.testing.assert_array_equal(read_landmarks(tmp_path / "b.csv", ndim=2).points, p2)
    with pytest.raises(ValueError, match="non-zero z"):
        read_landmarks(_write(tmp_path / "c.csv", "1,2,3\n"), ndim=2)
    with pytest.raises(ValueError, match="3-D points"):
        write_landmarks(tmp_path / "a.fcsv", p2)


def _write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "name,text,match",
    [
        ("e.csv", "", "no landmarks"),
        ("e.csv", "# only a comment\n", "no landmarks"),
        ("b.csv", "1,2,3\n4,five,6\n", r"b\.csv:2: expected numbers"),
        ("b.csv", "1,2,3\n4,nan,6\n", r"b\.csv:2: non-finite"),
        ("b.csv", "1,2,3,4\n", "2 or 3 coordinates"),
        ("b.csv", "a,b,c\n1,2,3\n", "lacks column"),
        ("b.fcsv", "# CoordinateSystem = XYZ\n1,2,3,4\n", "unknown CoordinateSystem"),
        ("b.json", "{}", "cannot tell the landmark format"),
    ],
)
def test_read_errors_name_the_file(tmp_path, name, text, match):
    with pytest.raises(ValueError, match=match):
        read_landmarks(_write(tmp_path / name, text))


def test_read_and_write_argument_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_landmarks(tmp_path / "missing.csv")
    with pytest.raises(ValueError, match="format"):
        read_landmarks(_write(tmp_path / "a.csv", "1,2,3\n"), format="xml")
    with pytest.raises(ValueError, match="labels: expected 4"):
        write_landmarks(tmp_path / "x.csv", PTS, labels=["a"])
    with pytest.raises(ValueError, match="points: expected finite"):
        write_landmarks(tmp_path / "x.csv", PTS * np.nan)
    with pytest.raises(ValueError, match="points: expected shape"):
        write_landmarks(tmp_path / "x.csv", PTS[0])


def test_writes_are_atomic_and_spare_inputs(tmp_path):
    dest = tmp_path / "keep.csv"
    dest.write_text("old\n")
    with pytest.raises(ValueError):
        write_landmarks(dest, PTS * np.nan)
    assert dest.read_text() == "old\n"
    with pytest.raises(ValueError, match="refusing to overwrite"):
        write_landmarks(dest, PTS, inputs=[dest])
    assert dest.read_text() == "old\n"
    assert sorted(os.listdir(tmp_path)) == ["keep.csv"]  # no temporary file left behind


def test_match_landmarks():
    fixed = Landmarks(PTS, ("a", "b", "c", "d"))
    moving = Landmarks(PTS[::-1] + 1.0, ("d", "c", "b", "x"))
    fx, mv, labels = match_landmarks(fixed, moving, by="label")
    assert labels == ("b", "c", "d")
    np.testing.assert_allclose(mv - fx, 1.0)
    fx, mv, labels = match_landmarks(fixed, moving)
    np.testing.assert_array_equal(mv, PTS[::-1] + 1.0)
    with pytest.raises(ValueError, match="same number"):
        match_landmarks(fixed, Landmarks(PTS[:3], ("a", "b", "c")))
    with pytest.raises(ValueError, match="duplicate labels"):
        match_landmarks(fixed, Landmarks(PTS, ("a", "a", "b", "c")), by="label")
    with pytest.raises(ValueError, match="no label"):
        match_landmarks(fixed, Landmarks(PTS, ("p", "q", "r", "s")), by="label")


# -- the command ------------------------------------------------------------------------------------------------------
def _parser():
    from jaxreg.cli.main import _Parser  # the parser class of main.py, as jaxreg wires the subcommand

    p = _Parser(prog="jaxreg")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    add_parser(sub)
    return p


def _cli(argv):
    args = _parser().parse_args(argv)
    return args.func(args)


def _pair(rng, n=7):
    fixed = rng.uniform(-60, 60, size=(n, 3))
    with jax.enable_x64(True):
        true = Rigid(jnp.asarray([0.2, -0.1, 0.3]), jnp.asarray([5.0, -7.0, 3.0]), jnp.asarray(fixed.mean(0)))
        moving = np.asarray(true(jnp.asarray(fixed)))
    return fixed, moving, true


def test_cli_writes_a_transform_that_itk_applies_in_the_fit_direction(tmp_path, capsys):
    rng = np.random.default_rng(0)
    fixed, moving, _ = _pair(rng)
    noisy = moving + rng.normal(scale=0.5, size=moving.shape)
    write_landmarks(tmp_path / "F.csv", fixed, labels=[f"L{i}" for i in range(7)])
    write_landmarks(tmp_path / "M.fcsv", noisy)  # LPS on disk
    assert (
        _cli(
            [
                "landmarks",
                "--fixed",
                str(tmp_path / "F.csv"),
                "--moving",
                str(tmp_path / "M.fcsv"),
                "-o",
                str(tmp_path / "T.mat"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    with jax.enable_x64(True):
        t = fit_rigid(fixed, noisy)
        errors = np.linalg.norm(np.asarray(t(jnp.asarray(fixed))) - noisy, axis=1)
        for i, e in enumerate(errors):
            assert f"L{i}" in out and f"{e:.3f}" in out
        assert f"RMS FRE: {np.sqrt(np.mean(errors**2)):.3f} mm" in out
        # jaxreg reads it back as the fitted transform ...
        back = read_transform(tmp_path / "T.mat")
        expected = np.asarray(t(jnp.asarray(fixed)))
        np.testing.assert_allclose(np.asarray(back(jnp.asarray(fixed))), expected, atol=1e-9)
    # ... and ITK maps the LPS fixed landmarks onto the LPS moving landmarks with it
    tx = sitk.ReadTransform(str(tmp_path / "T.mat"))
    mapped = np.array([tx.TransformPoint(tuple(p)) for p in fixed @ F3]) @ F3
    np.testing.assert_allclose(mapped, expected, atol=1e-9)
    assert np.sqrt(np.mean(np.sum((mapped - noisy) ** 2, 1))) < 1.0


def test_cli_transform_aligns_images_with_jaxreg_apply(tmp_path, capsys):
    """The documented workflow: landmarks -> T.mat -> ``jaxreg apply`` brings moving blobs onto fixed landmarks."""
    from jaxreg.cli.main import main
    from jaxreg.core.grid import Grid, Image
    from jaxreg.io import load_image, save_image
    from jaxreg.transforms import invert
    from jaxreg.warp import warp

    rng = np.random.default_rng(1)
    fixed_grid = Grid.from_spacing((28, 30, 26), spacing=3.0, origin=(-42.0, -45.0, -39.0))
    moving_grid = Grid.from_spacing((30, 28, 28), spacing=3.0, origin=(-45.0, -40.0, -40.0))
    fixed_lm = rng.uniform(-20, 20, size=(5, 3))
    true = Rigid(jnp.asarray([0.1, 0.15, -0.2]), jnp.asarray([3.0, -2.0, 4.0]), jnp.zeros(3))
    h = np.asarray(true.homogeneous(), np.float64)
    moving_lm = fixed_lm @ h[:3, :3].T + h[:3, 3]

    def blobs(grid, centres):
        w = np.asarray(grid.world_coords(jnp.float32), np.float64)
        return np.exp(-np.sum((w[..., None, :] - centres) ** 2, -1) / (2 * 5.0**2)).sum(-1).astype(np.float32)

    save_image(Image(jnp.asarray(blobs(moving_grid, moving_lm)), moving_grid), tmp_path / "moving.nii.gz")
    save_image(Image(jnp.asarray(blobs(fixed_grid, fixed_lm)), fixed_grid), tmp_path / "fixed.nii.gz")
    write_landmarks(tmp_path / "fixed.fcsv", fixed_lm)
    write_landmarks(tmp_path / "moving.csv", moving_lm, format="ants")
    assert (
        _cli(
            [
                "landmarks",
                "--fixed",
                str(tmp_path / "fixed.fcsv"),
                "--moving",
                str(tmp_path / "moving.csv"),
                "-o",
                str(tmp_path / "T.tfm"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "apply",
                "--fixed",
                str(tmp_path / "fixed.nii.gz"),
                "--moving",
                str(tmp_path / "moving.nii.gz"),
                "-t",
                str(tmp_path / "T.tfm"),
                "-o",
                str(tmp_path / "out.nii.gz"),
            ]
        )
        == 0
    )
    capsys.readouterr()
    out = np.asarray(load_image(tmp_path / "out.nii.gz").data)
    moving = Image(jnp.asarray(blobs(moving_grid, moving_lm)), moving_grid)
    # the same as warping with the true transform (the noiseless fit is exact), up to float32 file precision
    np.testing.assert_allclose(out, np.asarray(warp(moving, true, fixed_grid).data), atol=1e-4)
    # and the moving blobs sit on the fixed landmarks (up to linear interpolation of 5 mm blobs on a 3 mm grid)
    expected = blobs(fixed_grid, fixed_lm)
    assert np.max(np.abs(out - expected)) < 0.15
    assert np.corrcoef(out.ravel(), expected.ravel())[0, 1] > 0.99
    wrong = np.asarray(warp(moving, invert(true), fixed_grid).data)
    assert np.max(np.abs(wrong - expected)) > 0.5


def test_cli_weights_models_and_errors(tmp_path, capsys):
    rng = np.random.default_rng(2)
    fixed, moving, _ = _pair(rng, n=5)
    moving = moving + rng.normal(scale=1.0, size=moving.shape)
    write_landmarks(tmp_path / "F.csv", fixed)
    write_landmarks(tmp_path / "M.csv", moving)
    (tmp_path / "w.txt").write_text("# weights\n1\n2\n1\n0.5\n1\n")
    base = ["landmarks", "--fixed", str(tmp_path / "F.csv"), "--moving", str(tmp_path / "M.csv")]
    for model in ("similarity", "affine"):
        assert (
            _cli(
                base
                + [
                    "--model",
                    model,
                    "-o",
                    str(tmp_path / f"{model}.txt"),
                    "--weights",
                    str(tmp_path / "w.txt"),
                ]
            )
            == 0
        )
        assert "weighted RMS FRE" in capsys.readouterr().out
    assert _cli(base + ["-o", str(tmp_path / "r.mat"), "--weights", "1,2,1,0.5,1"]) == 0
    np.testing.assert_array_equal(parse_weights("1, 2 3", 3), [1, 2, 3])
    with pytest.raises(ValueError, match="expected 5 weights"):
        _cli(base + ["-o", str(tmp_path / "r.mat"), "--weights", "1,2"])
    with pytest.raises(ValueError, match="non-negative"):
        _cli(base + ["-o", str(tmp_path / "r.mat"), "--weights", "1,2,-1,1,1"])
    with pytest.raises(ValueError, match=r"\.mat, \.tfm, \.txt or \.h5"):
        _cli(base + ["-o", str(tmp_path / "r.nii.gz")])
    with pytest.raises(ValueError, match="refusing to overwrite"):
        _cli(base + ["-o", str(tmp_path / "w.txt"), "--weights", str(tmp_path / "w.txt")])
    assert (tmp_path / "w.txt").read_text().startswith("# weights")
    write_landmarks(tmp_path / "M4.csv", moving[:4])
    with pytest.raises(ValueError, match="same number of landmarks"):
        _cli(
            [
                "landmarks",
                "--fixed",
                str(tmp_path / "F.csv"),
                "--moving",
                str(tmp_path / "M4.csv"),
                "-o",
                str(tmp_path / "r.mat"),
            ]
        )
    line = np.stack([np.linspace(0, 1, 5)] * 3, axis=1) * 50.0
    write_landmarks(tmp_path / "L.csv", line)
    with pytest.raises(ValueError, match="fixed_points: .*collinear"):
        _cli(
            [
                "landmarks",
                "--fixed",
                str(tmp_path / "L.csv"),
                "--moving",
                str(tmp_path / "M.csv"),
                "-o",
                str(tmp_path / "r.mat"),
            ]
        )


def test_main_reports_landmark_errors_in_one_line(tmp_path, capsys):
    """Through ``jaxreg`` itself: the subcommand is wired into the main parser."""
    from jaxreg.cli.main import build_parser, main

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert "landmarks" in sub.choices
    write_landmarks(tmp_path / "F.csv", PTS)
    assert (
        main(
            [
                "landmarks",
                "--fixed",
                str(tmp_path / "F.csv"),
                "--moving",
                str(tmp_path / "F.csv"),
                "-o",
                str(tmp_path / "T.mat"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "landmarks",
                "--fixed",
                str(tmp_path / "F.csv"),
                "--moving",
                str(tmp_path / "nope.csv"),
                "-o",
                str(tmp_path / "T.mat"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope.csv" in err


# -- ANTs (optional) ----------------------------------------------------------------------------------------------------
def test_ants_maps_points_with_the_fitted_transform_fixed_to_moving(tmp_path):
    """``ants.apply_transforms_to_points`` with a written ``T.mat`` maps fixed-space points to the moving space."""
    ants = pytest.importorskip("ants", reason="antspyx not installed (optional ANTs cross-check)")
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(3)
    fixed, moving, _ = _pair(rng)
    with jax.enable_x64(True):
        t = fit_rigid(fixed, moving)
        from jaxreg.io import write_transform
        from jaxreg.transforms import invert

        write_transform(t, tmp_path / "T.mat")
        write_landmarks(tmp_path / "fixed_ants.csv", fixed, format="ants")
        df = pd.read_csv(tmp_path / "fixed_ants.csv")
        out = ants.apply_transforms_to_points(3, df, [str(tmp_path / "T.mat")])
        mapped = out[["x", "y", "z"]].to_numpy() @ F3
        np.testing.assert_allclose(mapped, moving, atol=1e-3)  # ANTs holds the points in float32
        # moving-space points go to the fixed space through the inverse, as with jaxreg.invert
        df_m = pd.DataFrame(moving @ F3, columns=["x", "y", "z"]).assign(t=0.0)
        back = ants.apply_transforms_to_points(3, df_m, [str(tmp_path / "T.mat")], whichtoinvert=[True])
        np.testing.assert_allclose(back[["x", "y", "z"]].to_numpy() @ F3, fixed, atol=1e-3)
        np.testing.assert_allclose(np.asarray(invert(t)(jnp.asarray(moving))), fixed, atol=1e-9)
