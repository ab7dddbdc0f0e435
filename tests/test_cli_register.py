"""``jaxreg register``: outputs, their agreement with ``jaxreg apply``, labels, errors, the config file, the
compilation cache of the command line and the report figure.

Runs are in-process through :func:`jaxreg.cli.main.main` on small 2-D phantoms (one registration shared by the
module) with ``--quick``/tiny config levels; one test uses the real 2-D slices of ``../shared/data`` downsampled.
The persistent compilation cache is off (``JAXREG_CACHE_DIR=""``) except in the test that checks it.
"""

from __future__ import annotations

import contextlib
import io as _io
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np
import pytest

from jaxreg.cli import register as reg
from jaxreg.cli.main import cache_dir, compilation_cache, main
from jaxreg.core.grid import Grid, Image
from jaxreg.data import phantom
from jaxreg.io import load_image, load_labels, read_transform, save_image
from jaxreg.transforms import Affine, DisplacementField, rotation_matrix

CONFIG = """\
pipeline = "default"
window = 5

[linear]
levels = [[2, 0.0, 40]]

[deformable]
levels = [[2, 0.0, 12]]
step = 0.3
symmetric = true
"""


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc: int, err: str, *fragments: str) -> None:
    assert rc == 2
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1, err
    assert lines[0].startswith("jaxreg: error: ") and "Traceback" not in err
    for f in fragments:
        assert f in lines[0], (f, lines[0])


@pytest.fixture(autouse=True)
def _no_cache(monkeypatch):
    monkeypatch.setenv("JAXREG_CACHE_DIR", "")


def _moved_grid(shape, spacing, angle_deg, shift):
    """A centred grid rotated by ``angle_deg`` and shifted by ``shift`` mm: the phantom drawn on it moves."""
    g = Grid.centered(shape, spacing)
    a = np.array(g.affine)
    r = np.asarray(rotation_matrix(jnp.deg2rad(jnp.float32(angle_deg))), np.float64)
    a[:2, :2] = r @ a[:2, :2]
    a[:2, 2] = r @ a[:2, 2] + np.asarray(shift)
    return Grid(shape, a)


def write_pair(root: Path) -> dict[str, Path]:
    """Fixed phantom, moving phantom on a rotated, shifted grid (another shape), their label maps."""
    fixed = phantom((48, 44), spacing=2.0)
    mgrid = _moved_grid((44, 48), (2.2, 1.9), 6.0, (3.0, -2.5))
    moving = Image(phantom((44, 48)).data * 200.0, mgrid)  # other intensity scale
    paths = {k: root / f"{k}.nii.gz" for k in ("fixed", "moving", "fixed_labels", "moving_labels")}
    save_image(fixed, paths["fixed"])
    save_image(moving, paths["moving"])
    save_image(phantom((48, 44), spacing=2.0, labels=True), paths["fixed_labels"])
    save_image(Image(phantom((44, 48), labels=True).data, mgrid), paths["moving_labels"])
    return paths


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """One deformable run with labels and a config file (shared by the output tests)."""
    root = tmp_path_factory.mktemp("register")
    paths = write_pair(root)
    cfg = root / "options.toml"
    cfg.write_text(CONFIG)
    (root / "labels.json").write_text(
        json.dumps({"labels": [{"id": i, "name": f"blob{i}"} for i in range(1, 7)]})
    )
    out = root / "out"
    buf_out, buf_err = _io.StringIO(), _io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JAXREG_CACHE_DIR", "")
        with contextlib.redirect_stdout(buf_out), contextlib.redirect_stderr(buf_err):
            rc = main(
                [
                    "register", str(paths["fixed"]), str(paths["moving"]), "-o", str(out),
                    "--labels", str(paths["fixed_labels"]), str(paths["moving_labels"]),
                    "--labels-json", str(root / "labels.json"), "--config", str(cfg),
                    "--write-composite-transform",
                ]
            )  # fmt: skip
    return {
        "root": root,
        "out": out,
        "paths": paths,
        "rc": rc,
        "stdout": buf_out.getvalue(),
        "stderr": buf_err.getvalue(),
    }


def test_outputs_exist_and_are_valid(registered):
    assert registered["rc"] == 0, registered["stderr"]
    out, paths = registered["out"], registered["paths"]
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        [
            "warped.nii.gz",
            "affine.mat",
            "warp.nii.gz",
            "inverse_warp.nii.gz",
            "Composite.h5",
            "InverseComposite.h5",
            "warped_labels.nii.gz",
            "dice.json",
            "report.json",
            "report.png",
        ]
    )
    fixed = load_image(paths["fixed"])
    warped = load_image(out / "warped.nii.gz")
    assert warped.grid == fixed.grid and warped.data.dtype == jnp.float32
    np.testing.assert_allclose(
        nib.load(out / "warped.nii.gz").affine, nib.load(paths["fixed"]).affine, atol=1e-5
    )
    assert isinstance(read_transform(out / "affine.mat"), Affine)
    field = read_transform(out / "warp.nii.gz")
    assert isinstance(field, DisplacementField) and field.grid == fixed.grid
    assert nib.load(out / "warp.nii.gz").shape == (48, 44, 1, 1, 2)  # ITK 2-D displacement field layout
    labels = load_labels(out / "warped_labels.nii.gz")
    assert labels.grid == fixed.grid and jnp.issubdtype(labels.data.dtype, jnp.integer)
    assert set(np.unique(np.asarray(labels.data))) <= set(range(7))
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_report_json(registered):
    rep = json.loads((registered["out"] / "report.json").read_text())
    assert rep["pipeline"] == "default" and rep["command"] == "jaxreg register"
    assert rep["options"]["linear_levels"] == [[2, 0.0, 40]] and rep["options"]["deformable_levels"] == [
        [2, 0.0, 12]
    ]
    assert rep["options"]["greedy"]["step"] == 0.3  # from the config file
    lin, de = rep["stages"]["linear"], rep["stages"]["deformable"]
    assert 10 <= lin["iterations"] <= 40 and de["iterations"] == 12
    assert len(de["levels"][0]["loss"]) == 12 and de["levels"][0]["seconds"] > 0
    m = rep["metrics"]
    assert m["ncc_after"] > m["ncc_affine"] > m["ncc_before"]
    assert m["mean_dice"] > m["mean_dice_before"]
    jac = rep["jacobian"]
    assert jac["of"] == "deformable" and jac["percent_nonpositive"] == 0.0 and 0 < jac["sdlogj"] < 0.5
    assert rep["timings"]["total"] >= rep["timings"]["registration"] > 0
    assert set(rep["files"]) == {p.name for p in registered["out"].iterdir()}


def test_apply_reproduces_warped(registered, capsys, tmp_path):
    out, paths = registered["out"], registered["paths"]
    check = tmp_path / "check.nii.gz"
    rc, _, err = run(
        capsys, "apply", "--fixed", paths["fixed"], "--moving", paths["moving"],
        "-t", out / "warp.nii.gz", "-t", out / "affine.mat", "-o", check,
    )  # fmt: skip
    assert rc == 0, err
    ref = np.asarray(load_image(out / "warped.nii.gz").data)
    np.testing.assert_allclose(np.asarray(load_image(check).data), ref, atol=1e-4 * np.abs(ref).max())
    check_l = tmp_path / "check_labels.nii.gz"
    rc, _, err = run(
        capsys, "apply", "--fixed", paths["fixed"], "--moving", paths["moving_labels"], "--labels",
        "-t", out / "warp.nii.gz", "-t", out / "affine.mat", "-o", check_l,
    )  # fmt: skip
    assert rc == 0, err
    a = np.asarray(load_labels(check_l).data)
    b = np.asarray(load_labels(out / "warped_labels.nii.gz").data)
    assert np.mean(a != b) < 0.002  # nearest neighbour: ties at voxel boundaries may flip


def test_inverse_warp_carries_fixed_labels_to_the_moving_space(registered, capsys, tmp_path):
    """``-t [affine.mat,1] -t inverse_warp.nii.gz`` (antsApplyTransforms order) brings the fixed labels onto the
    moving grid as well as the forward chain brings the moving labels onto the fixed grid."""
    out, paths = registered["out"], registered["paths"]
    rep = json.loads((out / "report.json").read_text())["inverse_warp"]
    assert rep["method"] == "exp(-v)" and rep["mean_mm"] < 0.02 and rep["max_mm"] < 0.2
    back = tmp_path / "fixed_labels_in_moving.nii.gz"
    rc, _, err = run(
        capsys, "apply", "--fixed", paths["moving"], "--moving", paths["fixed_labels"], "--labels",
        "-t", f"[{out / 'affine.mat'},1]", "-t", out / "inverse_warp.nii.gz", "-o", back,
    )  # fmt: skip
    assert rc == 0, err
    got = load_labels(back)
    ref = load_labels(paths["moving_labels"])
    assert got.grid == ref.grid
    a, b = np.asarray(got.data), np.asarray(ref.data)
    dice = [2 * np.sum((a == k) & (b == k)) / (np.sum(a == k) + np.sum(b == k)) for k in range(1, 7)]
    forward = json.loads((out / "dice.json").read_text())["mean_dice"]
    assert np.mean(dice) > forward - 0.05 and np.mean(dice) > 0.85, (dice, forward)


def test_composite_files_equal_the_chains(registered, capsys, tmp_path):
    """``-t Composite.h5`` is ``-t warp.nii.gz -t affine.mat`` and ``-t InverseComposite.h5`` is ``-t [affine.mat,1]
    -t inverse_warp.nii.gz`` (ANTs' --write-composite-transform files), in jaxreg and in SimpleITK."""
    import SimpleITK as sitk

    from jaxreg.cli._args import load_transforms

    out, paths = registered["out"], registered["paths"]
    chains = {
        "Composite.h5": [str(out / "warp.nii.gz"), str(out / "affine.mat")],
        "InverseComposite.h5": [f"[{out / 'affine.mat'},1]", str(out / "inverse_warp.nii.gz")],
    }
    grid = load_image(paths["fixed"]).grid
    x = np.asarray(grid.world_coords(jnp.float32)).reshape(-1, 2)[::7].astype(np.float64)
    flip = np.array([-1.0, -1.0])
    for name, chain in chains.items():
        want = np.asarray(load_transforms(chain)(jnp.asarray(x, jnp.float32)))
        got = np.asarray(read_transform(out / name)(jnp.asarray(x, jnp.float32)))
        np.testing.assert_allclose(got, want, atol=1e-4)
        tx = sitk.ReadTransform(str(out / name))
        assert tx.GetName() == "CompositeTransform"
        ref = np.array([np.array(tx.TransformPoint(tuple(p * flip))) * flip for p in x])
        np.testing.assert_allclose(ref, want, atol=1e-3)
    check = tmp_path / "check.nii.gz"
    rc, _, err = run(
        capsys, "apply", "--fixed", paths["fixed"], "--moving", paths["moving"], "-t", out / "Composite.h5",
        "-o", check,
    )  # fmt: skip
    assert rc == 0, err
    ref = np.asarray(load_image(out / "warped.nii.gz").data)
    np.testing.assert_allclose(np.asarray(load_image(check).data), ref, atol=1e-4 * np.abs(ref).max())


def test_dice_table_and_json(registered):
    out = registered["stdout"]
    d = json.loads((registered["out"] / "dice.json").read_text())
    assert [r["label"] for r in d["labels"]] == list(range(1, 7))
    assert [r["name"] for r in d["labels"]] == [f"blob{i}" for i in range(1, 7)]
    for r in d["labels"]:
        assert 0.0 <= r["dice_before"] <= 1.0 and 0.0 <= r["dice"] <= 1.0 and r["hd95_mm"] >= 0.0
    assert d["mean_dice"] > 0.85 > d["mean_dice_before"]
    assert d["mean_hd95_mm"] is not None and d["num_labels_dice"] == 6
    assert "Dice before" in out and "HD95 mm" in out and "blob3" in out
    assert f"mean Dice {d['mean_dice']:.4f} over 6 labels" in out
    assert "NCC:" in out and "det J:" in out and "wrote:" in out


def test_affine_pipeline_and_label_list(tmp_path, capsys):
    paths = write_pair(tmp_path)
    out = tmp_path / "lin"
    rc, _, err = run(
        capsys, "register", paths["fixed"], paths["moving"], "-o", out, "--pipeline", "rigid", "--quick",
        "--labels", paths["fixed_labels"], paths["moving_labels"], "--label-list", "2", "3",
        "--write-composite-transform",
    )  # fmt: skip
    assert rc == 0, err
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["warped.nii.gz", "affine.mat", "warped_labels.nii.gz", "dice.json", "report.json", "report.png",
         "Composite.h5", "InverseComposite.h5"]
    )  # fmt: skip
    lin, inv = read_transform(out / "Composite.h5"), read_transform(out / "InverseComposite.h5")
    assert isinstance(lin, Affine) and isinstance(inv, Affine)  # linear runs: one affine per file
    np.testing.assert_allclose(
        np.asarray(lin.homogeneous() @ inv.homogeneous()), np.eye(3), atol=1e-5
    )
    rep = json.loads((out / "report.json").read_text())
    assert rep["pipeline"] == "rigid" and "deformable" not in rep["stages"]
    assert rep["jacobian"]["of"] == "affine" and abs(rep["jacobian"]["mean"] - 1.0) < 1e-3  # rigid: det J = 1
    assert [r["label"] for r in json.loads((out / "dice.json").read_text())["labels"]] == [2, 3]
    check = tmp_path / "check.nii.gz"
    rc, _, err = run(
        capsys,
        "apply",
        "--fixed",
        paths["fixed"],
        "--moving",
        paths["moving"],
        "-t",
        out / "affine.mat",
        "-o",
        check,
    )
    assert rc == 0, err
    ref = np.asarray(load_image(out / "warped.nii.gz").data)
    np.testing.assert_allclose(np.asarray(load_image(check).data), ref, atol=1e-4 * np.abs(ref).max())


def test_multimodal_pipeline_runs(tmp_path, capsys):
    p = write_pair(tmp_path)
    inverted = tmp_path / "inverted.nii.gz"  # another "contrast": intensities reversed inside the head
    im = load_image(p["moving"])
    save_image(Image(jnp.where(im.data > 0, 250.0 - im.data, 0.0), im.grid), inverted)
    out = tmp_path / "mm"
    rc, _, err = run(
        capsys, "register", p["fixed"], inverted, "-o", out, "--pipeline", "multimodal", "--quick"
    )
    assert rc == 0, err
    rep = json.loads((out / "report.json").read_text())
    assert rep["pipeline"] == "multimodal" and rep["stages"]["deformable"]["iterations"] > 0
    assert rep["metrics"]["nmi_affine"] > rep["metrics"]["nmi_before"]
    assert read_transform(out / "warp.nii.gz").grid == load_image(p["fixed"]).grid


def test_real_slices_improve(shared_data, tmp_path, capsys):
    from jaxreg.warp import resample

    src = shared_data / "brain2d"
    for name in ("r16", "r64"):
        im = load_image(src / f"{name}.nii.gz")
        save_image(
            resample(Image(im.data.astype(jnp.float32), im.grid), im.grid.downsample(4)),
            tmp_path / f"{name}.nii.gz",
        )
    out = tmp_path / "out"
    rc, _, err = run(
        capsys, "register", tmp_path / "r16.nii.gz", tmp_path / "r64.nii.gz", "-o", out, "--quick"
    )
    assert rc == 0, err
    m = json.loads((out / "report.json").read_text())["metrics"]
    assert m["ncc_after"] > m["ncc_affine"] > m["ncc_before"] + 0.1


# -- errors ------------------------------------------------------------------------------------------------------
def _tree(folder: Path) -> dict[str, bytes] | None:
    """Names and contents of the files under ``folder`` (``None`` when it does not exist)."""
    if not folder.exists():
        return None
    return {str(q.relative_to(folder)): q.read_bytes() for q in sorted(folder.rglob("*")) if q.is_file()}


def _error_case(tmp_path: Path, case: str, out: Path) -> tuple[list, tuple[str, ...]]:
    p = write_pair(tmp_path)
    args = ["register", p["fixed"], p["moving"], "--quick"]
    if case == "missing":
        return ["register", tmp_path / "nope.nii.gz", p["moving"]], ("FIXED", "nope.nii.gz", "no such file")
    if case == "missing_labels":
        return args + ["--labels", p["fixed_labels"], tmp_path / "gone.nii.gz"], (
            "--labels",
            "gone.nii.gz",
            "no such file",
        )
    if case == "dims":
        save_image(phantom((12, 10, 8)), tmp_path / "vol.nii.gz")
        return ["register", p["fixed"], tmp_path / "vol.nii.gz"], ("MOVING", "2-D", "3-D")
    if case == "labels_grid":
        return args + ["--labels", p["moving_labels"], p["moving_labels"]], ("--labels", "different grid", "fixed image")
    if case == "mask_grid":
        return args + ["--fixed-mask", p["moving_labels"]], ("--fixed-mask", "different grid")
    if case == "empty_mask":
        g = load_image(p["fixed"]).grid
        save_image(Image(jnp.zeros(g.shape, jnp.uint8), g), tmp_path / "empty.nii.gz")
        return args + ["--fixed-mask", tmp_path / "empty.nii.gz"], ("--fixed-mask", "empty")
    if case == "nan":
        g = load_image(p["moving"]).grid
        data = np.asarray(phantom((44, 48)).data).copy()
        data[3, 4] = np.nan
        save_image(Image(jnp.asarray(data), g), tmp_path / "nan.nii.gz")
        return ["register", p["fixed"], tmp_path / "nan.nii.gz"], ("MOVING", "nan.nii.gz", "NaN")
    if case == "config_key":
        (tmp_path / "bad.toml").write_text("[deformable]\nstepp = 0.3\n")
        return args + ["--config", tmp_path / "bad.toml"], ("--config", "bad.toml", "unknown key 'deformable.stepp'")
    if case == "output_is_input":  # the moving label map sits where warped_labels.nii.gz would be written
        out.mkdir(exist_ok=True)
        inside = out / "warped_labels.nii.gz"
        inside.write_bytes(p["moving_labels"].read_bytes())
        return args + ["--labels", p["fixed_labels"], inside], ("-o", "refusing to overwrite")
    if case == "constant_moving":
        g = load_image(p["moving"]).grid
        save_image(Image(jnp.full(g.shape, 7.0, jnp.float32), g), tmp_path / "flat.nii.gz")
        return ["register", p["fixed"], tmp_path / "flat.nii.gz", "--quick"], ("MOVING", "constant image")
    if case == "complex_moving":
        g = load_image(p["moving"]).grid
        data = np.asarray(phantom((44, 48)).data).astype(np.complex64) * (1 + 1j)
        nib.save(nib.Nifti1Image(data, np.asarray(nib.load(p["moving"]).affine)), tmp_path / "cplx.nii.gz")
        return ["register", p["fixed"], tmp_path / "cplx.nii.gz", "--quick"], ("MOVING", "complex")
    if case == "label_list_alone":
        return args + ["--label-list", "1"], ("--label-list needs --labels",)
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "missing_labels",
        "dims",
        "labels_grid",
        "mask_grid",
        "empty_mask",
        "nan",
        "config_key",
        "output_is_input",
        "label_list_alone",
        "constant_moving",
        "complex_moving",
    ],
)
def test_errors_are_one_line_and_write_nothing(tmp_path, capsys, case):
    # a new output folder is not created; an existing one (with a file of its own) stays as it was
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("x")
    for out in (tmp_path / "out", existing):
        argv, fragments = _error_case(tmp_path, case, out)
        before = _tree(out)
        rc, _, err = run(capsys, *argv, "-o", out)
        assert_one_line_error(rc, err, *fragments)
        assert _tree(out) == before


def test_refuses_output_folder_holding_an_input(tmp_path, capsys):
    p = write_pair(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    moving = out / "warped.nii.gz"  # the moving image sits where the output would go
    moving.write_bytes(p["moving"].read_bytes())
    before = moving.read_bytes()
    rc, _, err = run(capsys, "register", p["fixed"], moving, "-o", out, "--quick")
    assert_one_line_error(rc, err, "-o", "refusing to overwrite")
    assert moving.read_bytes() == before and sorted(q.name for q in out.iterdir()) == ["warped.nii.gz"]
    f = tmp_path / "file"
    f.write_text("x")
    rc, _, err = run(capsys, "register", p["fixed"], p["moving"], "-o", f, "--quick")
    assert_one_line_error(rc, err, "-o", "not a folder")


def test_failed_write_removes_created_files(tmp_path, monkeypatch):
    import jaxreg.io.outputs
    from jaxreg.io import Outputs, write_outputs

    fixed = phantom((16, 12))
    outs = Outputs(fixed, Affine.identity(2), None, None, {"labels": []}, {"pipeline": "affine"}, b"png", [], None)

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(jaxreg.io.outputs, "write_transform", boom)  # the second file fails
    out = tmp_path / "out"
    with pytest.raises(OSError, match="No space"):
        write_outputs(out, outs)
    assert not out.exists()
    out.mkdir()
    (out / "warped.nii.gz").write_bytes(b"old")
    with pytest.raises(OSError):
        write_outputs(out, outs)
    assert sorted(p.name for p in out.iterdir()) == ["warped.nii.gz"]  # replaced whole, not removed
    assert load_image(out / "warped.nii.gz").data.shape == (16, 12)


# -- config ------------------------------------------------------------------------------------------------------
def test_read_config(tmp_path):
    from jaxreg.optimize.engine import Level

    f = tmp_path / "c.toml"
    f.write_text(CONFIG + 'sigma_field = 1.0\nexp_steps = 5\nexp_tolerance = 0.25\nstep_decay = 0.5\nforce = "demons"\n')
    cfg = reg.read_config(f)
    assert cfg["linear_levels"] == (Level(2, 0.0, 40),) and cfg["deformable_levels"] == (Level(2, 0.0, 12),)
    assert cfg["greedy"] == {
        "step": 0.3,
        "sigma_field": 1.0,
        "exp_steps": 5,
        "exp_tolerance": 0.25,
        "step_decay": 0.5,
        "symmetric": True,
        "force": "demons",
    }
    opts = reg.pipeline_options(config=f, pipeline="multimodal", quick=True)
    assert opts["pipeline"] == "multimodal"  # the command line wins
    assert opts["deformable_levels"] == (Level(2, 0.0, 12),)  # the config file beats --quick
    assert opts["greedy"] == cfg["greedy"]
    # the stages they describe: the greedy stage takes the file's settings, untouched keys keep the preset's
    from jaxreg.optimize import PRESETS, Greedy

    greedy = [st.method for st in reg.stages_from_options(opts) if isinstance(st.method, Greedy)][0]
    assert greedy.step == 0.3 and greedy.sigma_field == 1.0 and greedy.exp_steps == 5 and greedy.force == "demons"
    assert greedy.exp_tolerance == 0.25 and greedy.step_decay == 0.5
    assert greedy.sigma_update == PRESETS["multimodal"][1].method.sigma_update
    assert reg.stages_from_options(opts)[1].levels == (Level(2, 0.0, 12),)
    quick = reg.pipeline_options(quick=True)
    assert quick["linear_levels"] == tuple(Level(*lv) for lv in reg.QUICK_LINEAR_LEVELS)
    default = reg.pipeline_options()
    from jaxreg.optimize import DEFAULT_GREEDY_LEVELS, DEFAULT_LINEAR_LEVELS

    assert default["linear_levels"] == tuple(DEFAULT_LINEAR_LEVELS)
    assert default["deformable_levels"] == tuple(DEFAULT_GREEDY_LEVELS)


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("levels = 3\n", "unknown key 'levels'"),
        ("[linear]\nlevel = [[2, 0, 10]]\n", "unknown key 'linear.level'"),
        ("[linear]\nlevels = [[2, 0, 10, 4]]\n", "[shrink, smooth_mm, iterations]"),
        ("[linear]\nlevels = []\n", "non-empty list"),
        ("[deformable]\nlevels = [[0, 0, 10]]\n", "shrink: expected a positive integer"),
        ("[deformable]\nlevels = [[2, -1.0, 10]]\n", "smooth_mm: expected a number >= 0"),
        ("[deformable]\nlevels = [[2, 0, 2.5]]\n", "iterations: expected an integer"),
        ("[deformable]\nstep = -1\n", "deformable.step: expected a positive number"),
        ("[deformable]\nsymmetric = 1\n", "expected true or false"),
        ('[deformable]\nforce = "fast"\n', "'metric' or 'demons'"),
        ('pipeline = "fancy"\n', "pipeline: expected one of"),
        ("window = 0\n", "window: expected a positive integer"),
        ("linear = 3\n", "expected a table"),
        ("pipeline = \n", "not valid TOML"),
    ],
)
def test_config_rejects_bad_files(tmp_path, text, fragment):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ValueError) as e:
        reg.read_config(f)
    assert fragment in str(e.value) and str(f) in str(e.value)
    assert "\n" not in str(e.value).strip()


def test_config_errors_through_the_command_line(tmp_path, capsys):
    p = write_pair(tmp_path)
    rc, _, err = run(
        capsys, "register", p["fixed"], p["moving"], "-o", tmp_path / "o", "--config", tmp_path / "no.toml"
    )
    assert_one_line_error(rc, err, "--config", "no.toml", "no such file")
    rc, _, err = run(capsys, "register", p["fixed"], p["moving"], "-o", tmp_path / "o", "--pipeline", "fancy")
    assert_one_line_error(rc, err, "invalid choice")


# -- compilation cache ---------------------------------------------------------------------------------------------
def test_cache_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("JAXREG_CACHE_DIR", str(tmp_path / "c"))
    assert cache_dir() == str(tmp_path / "c") and cache_dir(no_cache=True) is None
    monkeypatch.setenv("JAXREG_CACHE_DIR", "")
    assert cache_dir() is None
    monkeypatch.delenv("JAXREG_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == str(tmp_path / "xdg" / "jaxreg" / "jax")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == str(tmp_path / "home" / ".cache" / "jaxreg" / "jax")


def test_cache_is_used_by_commands_and_restored(tmp_path, capsys, monkeypatch, without_jax_cache):
    if jax.config.jax_compilation_cache_dir:
        pytest.skip("JAX's own compilation cache is configured (JAX_COMPILATION_CACHE_DIR); jaxreg leaves it alone")
    old_min = jax.config.jax_persistent_cache_min_compile_time_secs
    with compilation_cache(str(tmp_path / "inside")) as used:
        assert used == str(tmp_path / "inside")
        assert jax.config.jax_compilation_cache_dir == used
        jax.jit(lambda x: jnp.sin(x) * 3.0 + 1.25)(jnp.arange(7.0)).block_until_ready()
    assert jax.config.jax_compilation_cache_dir is None
    assert jax.config.jax_persistent_cache_min_compile_time_secs == old_min
    assert any((tmp_path / "inside").iterdir())  # the program was written
    p = write_pair(tmp_path)
    monkeypatch.setenv("JAXREG_CACHE_DIR", str(tmp_path / "cache"))
    rc, _, err = run(
        capsys,
        "--no-cache",
        "register",
        p["fixed"],
        p["moving"],
        "-o",
        tmp_path / "o1",
        "--quick",
        "--pipeline",
        "rigid",
    )
    assert rc == 0, err
    assert not (tmp_path / "cache").exists()
    rc, _, err = run(
        capsys, "register", p["fixed"], p["moving"], "-o", tmp_path / "o2", "--quick", "--pipeline", "rigid"
    )
    assert rc == 0, err
    assert (tmp_path / "cache").is_dir()  # created; entries appear for programs compiled in this run
    assert jax.config.jax_compilation_cache_dir is None


# -- report figure -------------------------------------------------------------------------------------------------
def test_report_grid_lines_match_plot_grid():
    pytest.importorskip("matplotlib")
    from jaxreg.plot import _pyplot, plot_grid
    from jaxreg.plot.report import _draw_grid

    plt = _pyplot()
    g = Grid.from_spacing((9, 7, 5), (1.5, 2.0, 2.5), origin=(-5.0, 3.0, 1.0))
    u = jax.random.normal(jax.random.PRNGKey(0), (*g.shape, 3)) * 0.8
    field = DisplacementField(u, g)
    fig, (a1, a2) = plt.subplots(1, 2)
    _draw_grid(a1, np.asarray(u), g, 1, 3, 2)  # the field's displacement at the voxels of g
    plot_grid(field, g, ax=a2, axis=1, index=3, every=2)
    assert len(a1.lines) == len(a2.lines) > 0
    for l1, l2 in zip(a1.lines, a2.lines):
        np.testing.assert_allclose(l1.get_xydata(), l2.get_xydata(), atol=1e-4)
    plt.close(fig)


def test_registration_report_figure():
    pytest.importorskip("matplotlib")
    from jaxreg.plot import _pyplot, registration_report

    f = phantom((20, 16, 12))
    fig = registration_report(
        f, f, f, deformation=DisplacementField(jnp.zeros((20, 16, 12, 3)), f.grid), jacobian=np.ones((20, 16, 12)),
        losses={"linear": [np.arange(5.0), np.array([1.0, np.nan])], "deformable": [np.ones(3)]}, title="t",
    )  # fmt: skip
    assert len(fig.axes) >= 3 * 8 + 2
    _pyplot().close(fig)
    with pytest.raises(ValueError, match="fixed grid"):
        registration_report(f, phantom((20, 16, 10)), f)


# -- examples ------------------------------------------------------------------------------------------------------
REPO = Path(__file__).resolve().parents[1]


def _example(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, str(REPO / "examples" / name), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


# runs each script as ``__main__`` (its folder first on sys.path, its own argv), as ``python script.py`` would, and
# reports its exit status, stdout and stderr: the eight scripts share one interpreter (one import of JAX and
# jaxreg instead of eight, ~20 s of CPU)
_RUN_SCRIPTS = """
import contextlib, io, json, os, runpy, sys, traceback
results = []
for path, args in json.loads(sys.argv[1]):
    out, err, code = io.StringIO(), io.StringIO(), 0
    sys.argv, sys.path[0] = [path, *args], os.path.dirname(path)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_path(path, run_name="__main__")
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = 1
    results.append({"returncode": code, "stdout": out.getvalue(), "stderr": err.getvalue()})
print("RESULTS" + json.dumps(results))
"""


def test_2d_examples_skip_without_shared_data(tmp_path):
    names = [
        "register_2d.py", "multimodal_2d.py", "greedy_demons_2d.py", "learn_unsupervised_2d.py", "learn_supervised_2d.py",
        "learn_weakly_supervised_2d.py", "learn_synthmorph_2d.py", "learned_rigid_2d.py",
    ]
    runs = [(str(REPO / "examples" / n), ["-o", str(tmp_path / n / "ex"), "--data", str(tmp_path / "absent")]) for n in names]
    proc = subprocess.run(
        [sys.executable, "-c", _RUN_SCRIPTS, json.dumps(runs)],
        capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=300,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS")]
    assert proc.returncode == 0 and lines, proc.stderr
    for name, r in zip(names, json.loads(lines[-1][len("RESULTS"):]), strict=True):
        assert r["returncode"] == 0, (name, r["stderr"])
        assert r["stdout"].startswith("skipping:") and not (tmp_path / name / "ex").exists(), (name, r["stdout"])


def test_learned_example_trains_and_reports(tmp_path):
    if not (REPO / ".." / "shared" / "data" / "brain2d" / "r16.nii.gz").is_file():
        pytest.skip("../shared/data/brain2d is absent")
    pytest.importorskip("matplotlib")
    r = _example("learn_unsupervised_2d.py", "-o", str(tmp_path / "ex"), "--steps", "3")
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("held-out pairs"))
    before, after = (float(v) for v in line.split("NCC ")[1].split(";")[0].split(" -> "))
    assert 0.5 < before < 1.0 and 0.5 < after < 1.0
    # the iterative default pipeline on the same held-out pairs, compared in one line
    line = next(x for x in r.stdout.splitlines() if x.startswith("held-out NCC: before"))
    iterative = float(line.split("iterative default ")[1].split()[0])
    assert before < iterative < 1.0 and "of the iterative gain" in line
    assert (tmp_path / "ex" / "learn_unsupervised_2d.png").is_file()
    assert (tmp_path / "ex" / "learn_unsupervised_2d" / "metrics.csv").is_file()


def test_affine_3d_example_runs(tmp_path):
    pytest.importorskip("nilearn")
    pytest.importorskip("matplotlib")
    r = _example("affine_3d.py", "-o", str(tmp_path / "ex"), "--resolution", "8", "--models", "affine")
    assert r.returncode == 0, r.stderr
    rows = {line.split()[0]: line.split() for line in r.stdout.splitlines() if line.split()}
    assert float(rows["affine"][2]) < float(rows["(none)"][2]) / 3  # mean error (mm) falls
    assert float(rows["affine"][1]) > float(rows["(none)"][1])  # NCC rises
    assert (tmp_path / "ex" / "affine_3d.png").is_file()
