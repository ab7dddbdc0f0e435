"""The ``jaxreg`` command line (info, apply, demo), the README quick start and the examples.

Most tests call :func:`jaxreg.cli.main.main` in-process; a few run ``python -m jaxreg.cli...`` as a subprocess
to check real exit codes and stderr. Images are small generated phantoms; the demo runs at 6 mm.
"""

from __future__ import annotations

import contextlib
import io as _io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import nibabel as nib
import numpy as np
import pytest
import scipy.ndimage as ndi
import SimpleITK as sitk  # the test extra installs it: a missing reference library is an error, not a skip

import jaxreg
from jaxreg.cli.main import main
from jaxreg.core.grid import Grid, Image
from jaxreg.data import phantom
from jaxreg.io import load_image, load_labels, read_transform, save_image, write_transform

REPO = Path(__file__).resolve().parents[1]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc: int, err: str, *fragments: str) -> None:
    assert rc == 2
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1, err
    assert lines[0].startswith("jaxreg: error: ")
    assert "Traceback" not in err
    for f in fragments:
        assert f in lines[0], (f, lines[0])


@pytest.fixture
def pair(tmp_path):
    """A moving phantom and a fixed image on another (oblique, coarser) grid, as NIfTI files."""
    moving = phantom((24, 28, 20), spacing=(1.0, 1.5, 2.0))
    labels = phantom((24, 28, 20), spacing=(1.0, 1.5, 2.0), labels=True)
    rot = jaxreg.transforms.euler_to_matrix(jnp.deg2rad(jnp.array([0.0, 0.0, 10.0])))
    fixed_grid = Grid.from_spacing(
        (20, 22, 16), (1.2, 1.8, 2.2), origin=(-11.0, -19.0, -15.0), direction=np.asarray(rot)
    )
    paths = {
        "moving": tmp_path / "moving.nii.gz",
        "labels": tmp_path / "labels.nii.gz",
        "fixed": tmp_path / "fixed.nii.gz",
    }
    save_image(moving, paths["moving"])
    save_image(labels, paths["labels"])
    save_image(Image(jnp.zeros(fixed_grid.shape, jnp.float32), fixed_grid), paths["fixed"])
    return paths


# -- info --------------------------------------------------------------------------------------------------------
def test_info_matches_nibabel(tmp_path, capsys):
    aff = np.array([[-0.9, 0.0, 0.1, 20.0], [0.0, 0.0, 1.2, -30.0], [0.0, -1.1, 0.0, 15.0], [0, 0, 0, 1]])
    data = np.zeros((10, 12, 8), np.int16)
    data[2:5, 3:9, 1:4] = 3
    data[6:9, 1:4, 5:7] = 17
    path = tmp_path / "labels.nii.gz"
    nib.save(nib.Nifti1Image(data, aff), path)

    rc, out, err = run(capsys, "info", path, "--json")
    assert rc == 0 and err == ""
    info = json.loads(out)
    img = nib.load(path)
    assert info["shape"] == [10, 12, 8] and info["ndim"] == 3
    assert info["axcodes"] == "".join(nib.aff2axcodes(img.affine)) == "LIA"
    np.testing.assert_allclose(info["affine"], img.affine, atol=1e-6)
    np.testing.assert_allclose(info["spacing"], img.header.get_zooms(), atol=1e-6)
    np.testing.assert_allclose(info["origin"], aff[:3, 3], atol=1e-6)
    assert info["dtype"] == "int16" and (info["min"], info["max"]) == (0, 17) and info["n_labels"] == 3

    rc, out, err = run(capsys, "info", path)
    assert rc == 0
    assert "10 x 12 x 8 (3-D)" in out
    assert "orientation: LIA" in out
    assert "labels:      3 distinct values" in out
    assert "range:       [0, 17]" in out
    assert "int16" in out
    assert re.search(r"\[\s+-0\.9000\s+0\.0000\s+0\.1000\s+20\.0000 \]", out)


def test_info_2d_float_image(tmp_path, capsys):
    path = tmp_path / "slice.nii"
    save_image(phantom((16, 12), spacing=2.0), path)
    rc, out, _ = run(capsys, "info", path)
    assert rc == 0
    assert "16 x 12 (2-D)" in out and "spacing:     2 x 2 mm" in out and "orientation: RA " in out
    assert "range:       [0, 1]" in out and "labels:" not in out


def test_info_real_brain(shared_data, capsys):
    path = shared_data / "brain3d" / "subj1_t1.nii.gz"
    rc, out, _ = run(capsys, "info", path, "--json")
    assert rc == 0
    info = json.loads(out)
    codes = "".join(nib.aff2axcodes(nib.load(path).affine))
    assert info["shape"] == [160, 192, 224]
    assert info["axcodes"] == codes
    rc, out, _ = run(capsys, "info", path)
    assert "160 x 192 x 224 (3-D)" in out and f"orientation: {codes}" in out


# -- apply -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("writer", ["io-mat", "sitk-tfm"])
def test_apply_integer_voxel_translation(tmp_path, capsys, writer):
    img = phantom((20, 24, 16), spacing=(1.0, 2.0, 1.5))
    mpath, fpath = tmp_path / "m.nii.gz", tmp_path / "f.nii.gz"
    save_image(img, mpath)
    save_image(img, fpath)
    k = np.array([2, -1, 3])  # voxels
    offset = k * img.grid.spacing  # RAS mm: the fixed voxel i samples the moving voxel i + k
    if writer == "io-mat":
        tpath = tmp_path / "t.mat"
        write_transform(jaxreg.Translation(jnp.asarray(offset, jnp.float32)), tpath)
    else:
        tpath = tmp_path / "t.tfm"
        lps = (-offset[0], -offset[1], offset[2])  # ITK works in LPS
        sitk.WriteTransform(sitk.TranslationTransform(3, [float(v) for v in lps]), str(tpath))
    out = tmp_path / "out.nii.gz"
    rc, stdout, err = run(capsys, "apply", "--fixed", fpath, "--moving", mpath, "-t", tpath, "-o", out)
    assert rc == 0, err
    assert stdout.startswith(f"wrote {out}")
    got = load_image(out)
    assert got.grid == img.grid and got.data.dtype == jnp.float32
    want = ndi.shift(np.asarray(img.data), -k, order=1, mode="constant", cval=0.0)
    np.testing.assert_allclose(got.data, want, atol=1e-6)
    py = jaxreg.warp(img, jaxreg.Translation(jnp.asarray(offset, jnp.float32)), img.grid)
    np.testing.assert_allclose(got.data, py.data, atol=1e-6)


def test_apply_matches_python_on_another_grid(pair, tmp_path, capsys):
    rot = jaxreg.Rigid(jnp.array([0.05, -0.1, 0.2]), jnp.array([1.0, -2.0, 0.5]), jnp.array([1.0, 2.0, 3.0]))
    tpath = tmp_path / "rigid.tfm"
    write_transform(rot, tpath)
    moving, fixed = load_image(pair["moving"]), load_image(pair["fixed"])
    for interp, order in (("linear", 1), ("cubic", 3), ("nearest", 0)):
        out = tmp_path / f"out_{interp}.nii.gz"
        rc, _, err = run(
            capsys,
            "apply",
            "--fixed",
            pair["fixed"],
            "--moving",
            pair["moving"],
            "-t",
            tpath,
            "-o",
            out,
            "--interp",
            interp,
        )
        assert rc == 0, err
        got = load_image(out)
        want = jaxreg.warp(moving, read_transform(tpath), fixed.grid, order=order)
        assert got.grid == fixed.grid
        np.testing.assert_allclose(got.data, want.data, atol=1e-5)


def test_apply_quiet_and_json(pair, tmp_path, capsys):
    t = tmp_path / "t.mat"
    write_transform(jaxreg.Translation(jnp.asarray([1.0, -2.0, 0.5], jnp.float32)), t)
    base = ["apply", "--fixed", pair["fixed"], "--moving", pair["moving"], "-t", t]
    rc, out, err = run(capsys, *base, "-o", tmp_path / "q.nii.gz", "--quiet")
    assert rc == 0 and out == "" and (tmp_path / "q.nii.gz").is_file(), err
    rc, out, err = run(capsys, *base, "-o", tmp_path / "j.nii.gz", "--json")
    assert rc == 0, err
    info = json.loads(out)
    assert info["output"] == str(tmp_path / "j.nii.gz") and info["transforms"] == [str(t)]
    assert info["shape"] == list(load_image(pair["fixed"]).grid.shape)
    np.testing.assert_array_equal(load_image(tmp_path / "q.nii.gz").data, load_image(tmp_path / "j.nii.gz").data)
    rc, _, err = run(capsys, *base, "-o", tmp_path / "x.nii.gz", "--quiet", "--json")
    assert rc == 2 and "not allowed with" in err and not (tmp_path / "x.nii.gz").exists()


def test_apply_h5_composite_like_sitk(pair, tmp_path, capsys):
    """An ITK HDF5 composite (ANTs' Composite.h5 layout) written by SimpleITK, applied like sitk.Resample."""
    moving, fixed = load_image(pair["moving"]), load_image(pair["fixed"])
    g = fixed.grid
    rng = np.random.default_rng(3)
    u = (rng.normal(scale=1.0, size=g.shape + (3,)) * np.array([-1.0, -1.0, 1.0])).astype(np.float64)
    field = jaxreg.DisplacementField(jnp.asarray(ndi.gaussian_filter(u, (2, 2, 2, 0))), g)
    write_transform(field, tmp_path / "w.nii.gz")
    aff = sitk.Euler3DTransform((1.0, -2.0, 3.0), 0.05, -0.04, 0.1, (1.5, 0.5, -1.0))
    disp = sitk.DisplacementFieldTransform(sitk.ReadImage(str(tmp_path / "w.nii.gz"), sitk.sitkVectorFloat64))
    sitk.WriteTransform(sitk.CompositeTransform([aff, disp]), str(tmp_path / "Composite.h5"))
    out = tmp_path / "out.nii.gz"
    rc, _, err = run(capsys, "apply", "--fixed", pair["fixed"], "--moving", pair["moving"],
                     "-t", tmp_path / "Composite.h5", "-o", out)
    assert rc == 0, err
    want = sitk.Resample(sitk.ReadImage(str(pair["moving"]), sitk.sitkFloat64),
                         sitk.ReadImage(str(pair["fixed"]), sitk.sitkFloat64),
                         sitk.CompositeTransform([aff, disp]), sitk.sitkLinear, 0.0)
    want = sitk.GetArrayFromImage(want).transpose(2, 1, 0)
    got = np.asarray(load_image(out).data)
    inner = (slice(3, -3),) * 3  # ITK and jaxreg differ only in the half-voxel rim of the moving image
    rng_ = float(np.ptp(np.asarray(moving.data)))
    assert np.abs(got[inner] - want[inner]).max() <= 1e-3 * rng_
    (tmp_path / "bad.h5").write_text("no HDF5 here")
    rc, _, err = run(capsys, "apply", "--fixed", pair["fixed"], "--moving", pair["moving"],
                     "-t", tmp_path / "bad.h5", "-o", tmp_path / "bad_out.nii.gz")
    assert rc == 2 and "bad.h5: not an HDF5 file" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad_out.nii.gz").exists()


def test_apply_order_follows_ants_and_inverse(pair, tmp_path, capsys):
    a = jaxreg.Rigid(jnp.array([0.0, 0.0, 0.3]), jnp.zeros(3), jnp.zeros(3))
    b = jaxreg.Translation(jnp.array([3.0, 0.0, 0.0]))
    apath, bpath = tmp_path / "a.mat", tmp_path / "b.tfm"
    write_transform(a, apath)
    write_transform(b, bpath)
    moving, fixed = load_image(pair["moving"]), load_image(pair["fixed"])
    out = tmp_path / "ab.nii.gz"
    rc, _, err = run(
        capsys, "apply", "-r", pair["fixed"], "-i", pair["moving"], "-t", apath, "-t", bpath, "-o", out
    )
    assert rc == 0, err
    got = np.asarray(load_image(out).data)
    # antsApplyTransforms -t A -t B: the fixed point goes through A first, the moving image is sampled at B(A(x))
    want = jaxreg.warp(moving, jaxreg.compose(b, a), fixed.grid)
    other = jaxreg.warp(moving, jaxreg.compose(a, b), fixed.grid)
    np.testing.assert_allclose(got, want.data, atol=1e-5)
    assert np.abs(got - np.asarray(other.data)).max() > 0.1
    # [file,1] uses the inverse of a linear transform
    out = tmp_path / "inv.nii.gz"
    rc, _, err = run(
        capsys, "apply", "-r", pair["fixed"], "-i", pair["moving"], "-t", f"[{apath}, 1]", "-o", out
    )
    assert rc == 0, err
    want = jaxreg.warp(moving, jaxreg.invert(a), fixed.grid)
    np.testing.assert_allclose(load_image(out).data, want.data, atol=1e-5)


@pytest.mark.parametrize("flags", [["--labels"], ["--interp", "nearest"]])
def test_apply_labels_stay_integer(pair, tmp_path, capsys, flags):
    tpath = tmp_path / "t.mat"
    write_transform(jaxreg.Rigid(jnp.array([0.0, 0.1, 0.0]), jnp.array([0.5, 1.0, 0.0]), jnp.zeros(3)), tpath)
    out = tmp_path / "lab.nii.gz"
    rc, _, err = run(
        capsys, "apply", "--fixed", pair["fixed"], "--moving", pair["labels"], "-t", tpath, "-o", out, *flags
    )
    assert rc == 0, err
    got = load_labels(out)
    assert np.issubdtype(np.dtype(nib.load(out).get_data_dtype()), np.integer)
    labels = load_labels(pair["labels"])
    want = jaxreg.warp_labels(labels, read_transform(tpath), load_image(pair["fixed"]).grid)
    np.testing.assert_array_equal(got.data, want.data)
    assert set(np.unique(np.asarray(got.data))) <= set(range(7))


# -- errors ------------------------------------------------------------------------------------------------------
def test_missing_files_are_one_line_errors(pair, tmp_path, capsys):
    t = tmp_path / "t.mat"
    write_transform(jaxreg.Translation(jnp.zeros(3)), t)
    out = tmp_path / "out.nii.gz"
    rc, stdout, err = run(capsys, "info", tmp_path / "nope.nii.gz")
    assert_one_line_error(rc, err, "nope.nii.gz")
    assert stdout == ""
    for args in (
        ["--fixed", pair["fixed"], "--moving", tmp_path / "nope.nii.gz", "-t", t],
        ["--fixed", tmp_path / "nope.nii.gz", "--moving", pair["moving"], "-t", t],
        ["--fixed", pair["fixed"], "--moving", pair["moving"], "-t", tmp_path / "nope.mat"],
    ):
        rc, _, err = run(capsys, "apply", *args, "-o", out)
        assert_one_line_error(rc, err, "nope.")
    assert not out.exists()
    rc, _, err = run(
        capsys,
        "apply",
        "--fixed",
        pair["fixed"],
        "--moving",
        pair["moving"],
        "-t",
        t,
        "-o",
        tmp_path / "no_such_dir" / "out.nii.gz",
    )
    assert_one_line_error(rc, err, "no_such_dir")


def test_bad_inputs_are_one_line_errors(pair, tmp_path, capsys):
    junk = tmp_path / "junk.nii.gz"
    junk.write_text("not a nifti file\n")
    rc, _, err = run(capsys, "info", junk)
    assert_one_line_error(rc, err, "junk.nii.gz")
    bad_mat = tmp_path / "bad.mat"
    bad_mat.write_bytes(b"\x00garbage")
    t = tmp_path / "t.mat"
    write_transform(jaxreg.Translation(jnp.zeros(3)), t)
    out = tmp_path / "o.nii.gz"
    base = ["apply", "--fixed", pair["fixed"], "--moving", pair["moving"]]
    rc, _, err = run(capsys, *base, "-t", bad_mat, "-o", out)
    assert_one_line_error(rc, err, "bad.mat")
    rc, _, err = run(capsys, *base, "-t", t, "-o", tmp_path / "o.png")
    assert_one_line_error(rc, err, ".nii")
    rc, _, err = run(capsys, *base, "-t", t, "-o", out, "--labels", "--interp", "cubic")
    assert_one_line_error(rc, err, "--labels")
    rc, _, err = run(capsys, *base, "-t", f"[{t},2]", "-o", out)
    assert_one_line_error(rc, err, "[file,1]")
    rc, _, err = run(capsys, *base, "-o", out)  # no -t
    assert_one_line_error(rc, err, "-t")
    rc, _, err = run(capsys, "frobnicate")
    assert_one_line_error(rc, err, "frobnicate")
    rc, _, err = run(capsys)
    assert_one_line_error(rc, err, "command")
    # a 2D image through a 3D transform
    img2 = tmp_path / "img2.nii.gz"
    save_image(phantom((12, 10)), img2)
    rc, _, err = run(capsys, "apply", "--fixed", img2, "--moving", img2, "-t", t, "-o", out)
    assert_one_line_error(rc, err)
    assert not out.exists()


def test_refuses_to_overwrite_inputs(pair, tmp_path, capsys):
    t = tmp_path / "t.mat"
    write_transform(jaxreg.Translation(jnp.array([1.0, 0.0, 0.0])), t)
    before = {k: (p.read_bytes(), p.stat().st_mtime_ns) for k, p in pair.items()}
    t_before = t.read_bytes()
    base = ["apply", "--fixed", pair["fixed"], "--moving", pair["moving"], "-t", t]
    for target in (pair["moving"], pair["fixed"], tmp_path / "sub" / ".." / "fixed.nii.gz", t):
        (tmp_path / "sub").mkdir(exist_ok=True)
        rc, _, err = run(capsys, *base, "-o", target)
        assert_one_line_error(rc, err, "refusing to overwrite")
    os.link(pair["moving"], tmp_path / "hardlink.nii.gz")  # same file under another name
    rc, _, err = run(capsys, *base, "-o", tmp_path / "hardlink.nii.gz")
    assert_one_line_error(rc, err, "refusing to overwrite")
    assert {k: (p.read_bytes(), p.stat().st_mtime_ns) for k, p in pair.items()} == before
    assert t.read_bytes() == t_before


# -- demo --------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    pytest.importorskip("nilearn")
    pytest.importorskip("matplotlib")
    root = tmp_path_factory.mktemp("demo")
    buf_out, buf_err = _io.StringIO(), _io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JAXREG_CACHE_DIR", "")  # no persistent compilation cache from tests
        with contextlib.redirect_stdout(buf_out), contextlib.redirect_stderr(buf_err):
            rc = main(["demo", "-o", str(root / "demo_out"), "--resolution", "8", "--seed", "1"])
    return root, rc, buf_out.getvalue(), buf_err.getvalue()


def test_demo_end_to_end(demo_run, capsys, monkeypatch):
    """One demo run checked three ways (one test, so that the parallel workers do not both run the demo)."""
    _demo_writes_files_and_reports(demo_run)
    _demo_outputs_reproduce_warped_through_apply(demo_run, capsys)
    _readme_quick_start_runs(demo_run, monkeypatch)


def _demo_writes_files_and_reports(demo_run):
    root, rc, out, err = demo_run
    assert rc == 0, err
    d = root / "demo_out"
    assert sorted(p.name for p in d.iterdir()) == [
        "affine.mat",
        "fixed.nii.gz",
        "inverse_warp.nii.gz",
        "moving.nii.gz",
        "report.json",
        "report.png",
        "warp.nii.gz",
        "warped.nii.gz",
    ]
    assert (d / "report.png").read_bytes()[:4] == b"\x89PNG"
    assert "26x30x25 voxels, 8x8x8 mm" in out
    for name in ("grey matter", "white matter", "brain"):  # Dice before/after: registration helps
        m = re.search(rf"{name}\s+([\d.]+)\s+([\d.]+)", out)
        assert m, (name, out)
        before, after = float(m.group(1)), float(m.group(2))
        assert 0.5 < before < after <= 1.0, (name, before, after)
    m = re.search(r"mean ([\d.]+) mm .*before registration mean ([\d.]+) mm", out)
    assert m and float(m.group(1)) < 0.6 * float(m.group(2))
    m = re.search(r"\(([\d.]+) %\), SDlogJ ([\d.]+)", out)
    assert m and float(m.group(1)) == 0.0 and 0.0 < float(m.group(2)) < 0.3
    rep = json.loads((d / "report.json").read_text())
    assert rep["command"] == "jaxreg demo" and rep["pipeline"] == "default"
    assert rep["demo"]["seed"] == 1 and set(rep["demo"]["dice"]) == {"gm", "wm", "brain"}
    assert rep["demo"]["error_mm"]["after_mean"] < rep["demo"]["error_mm"]["before_mean"]
    assert rep["stages"]["deformable"]["iterations"] > 0 and rep["timings"]["total"] > 0


def _demo_outputs_reproduce_warped_through_apply(demo_run, capsys):
    root, rc, _, _ = demo_run
    assert rc == 0
    d = root / "demo_out"
    out = root / "check.nii.gz"
    rc, _, err = run(
        capsys,
        "apply",
        "--fixed",
        d / "fixed.nii.gz",
        "--moving",
        d / "moving.nii.gz",
        "-t",
        d / "warp.nii.gz",
        "-t",
        d / "affine.mat",
        "-o",
        out,
    )
    assert rc == 0, err
    np.testing.assert_allclose(load_image(out).data, load_image(d / "warped.nii.gz").data, atol=1e-4)


def test_mni152_masks_on_the_template_grid():
    pytest.importorskip("nilearn")
    from jaxreg.data import load_mni152, load_mni152_masks

    masks = load_mni152_masks(8)
    t = load_mni152(8)
    assert sorted(masks) == ["brain", "gm", "wm"]
    for m in masks.values():
        assert m.grid == t.grid and m.data.dtype == jnp.int32
        assert set(np.unique(np.asarray(m.data))) == {0, 1}
    brain = np.asarray(masks["brain"].data) > 0
    assert np.asarray(t.data)[brain].mean() > 3 * np.asarray(t.data)[~brain].mean()
    assert np.asarray(masks["wm"].data).sum() < brain.sum()
    with pytest.raises(ValueError, match="positive integer"):
        load_mni152_masks(0)


def test_demo_bad_output_folder(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    rc, _, err = run(capsys, "demo", "-o", f, "--resolution", "8")
    assert_one_line_error(rc, err, "not a folder")
    rc, _, err = run(capsys, "demo", "--resolution", "0")
    assert_one_line_error(rc, err, "positive integer")


def _readme_quick_start_runs(demo_run, monkeypatch):
    """The README's Python quick start runs as written (in the folder where `jaxreg demo -o demo_out` ran)."""
    root, rc, _, _ = demo_run
    assert rc == 0
    text = (REPO / "README.md").read_text()
    section = text.split("## Quick start", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) <= 16
    monkeypatch.chdir(root)
    exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
    assert (root / "demo_out" / "moved.nii.gz").is_file()


def test_readme_commands_match_ci_script():
    text = (REPO / "README.md").read_text()
    test_cmd = re.search(r"```bash\n# tests\n(.*?)\n```", text, re.S).group(1).strip()
    demo_cmd = re.search(r"```bash\n# demo\n(.*?)\n```", text, re.S).group(1).strip()
    assert re.search(r"python -m pytest -q( -n \d+)?$", test_cmd) and demo_cmd.endswith("jaxreg demo -o demo_out")
    ci = (REPO / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == test_cmd  # .ci/run runs exactly the README's test command, last
    assert "set -euo pipefail" in ci
    assert os.access(REPO / ".ci" / "run", os.X_OK)


# -- subprocesses: real exit codes -------------------------------------------------------------------------------
def test_subprocess_exit_codes(tmp_path):
    small = tmp_path / "small.nii.gz"
    save_image(phantom((8, 9, 7)), small)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    ok = subprocess.run(
        [sys.executable, "-m", "jaxreg.cli", "info", str(small)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert "8 x 9 x 7 (3-D)" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "jaxreg.cli.main", "info", str(tmp_path / "missing.nii")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert bad.returncode == 2
    assert bad.stdout == ""
    assert bad.stderr.strip().count("\n") == 0 and bad.stderr.startswith("jaxreg: error: ")
    script = Path(sys.executable).parent / "jaxreg"
    if script.exists():  # the console script of an installed package
        v = subprocess.run([str(script), "--version"], capture_output=True, text=True, env=env, timeout=120)
        assert v.returncode == 0 and v.stdout.startswith("jaxreg ")


# -- examples ----------------------------------------------------------------------------------------------------
def test_examples_run(tmp_path):
    pytest.importorskip("matplotlib")
    img = tmp_path / "small2d.nii.gz"
    save_image(phantom((48, 40), spacing=2.0), img)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    r = subprocess.run(
        [
            sys.executable,
            str(REPO / "examples" / "warp_2d.py"),
            "-o",
            str(tmp_path / "ex"),
            "--image",
            str(img),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "det J in [" in r.stdout and (tmp_path / "ex" / "warp_2d.png").is_file()
    r = subprocess.run(
        [
            sys.executable,
            str(REPO / "examples" / "transforms_3d.py"),
            "-o",
            str(tmp_path / "ex"),
            "--resolution",
            "8",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "chain rule" in r.stdout and (tmp_path / "ex" / "transforms_3d.png").is_file()
