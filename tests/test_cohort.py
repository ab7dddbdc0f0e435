"""Cohorts: register(..., mesh=) over 4 forced CPU devices vs 1, register-many (resume, summary, bad inputs) and
template building (a template of shifted phantoms sits at their mean shape)."""

import csv
import json
import textwrap
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from jaxreg.cli.main import main
from jaxreg.cli.register import pipeline_options, stages_from_options
from jaxreg.core.grid import Image
from jaxreg.data import phantom
from jaxreg.io import save_image
from jaxreg.optimize.cohort import SUMMARY_COLUMNS, Pair, read_pairs_csv, register_pairs
from jaxreg.optimize.template import build_template

REPO = Path(__file__).resolve().parents[1]
SHAPE = (32, 32)
SHIFTS = ((0.0, 0.0), (1.5, -1.0), (-1.0, 2.0), (2.0, 1.0))  # voxels (1 mm), index axes


def quick_stages(pipeline: str = "default"):
    return stages_from_options({**pipeline_options(quick=True), "pipeline": pipeline})


def shifted(k: int, labels: bool = False) -> Image:
    base = phantom(SHAPE, labels=labels)
    data = ndimage.shift(np.asarray(base.data), SHIFTS[k], order=0 if labels else 1)
    return Image(jnp.asarray(data), base.grid)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """Four shifted phantoms with label maps and a pairs CSV (im1, im2, im3 -> im0, labels, relative paths)."""
    d = tmp_path_factory.mktemp("cohort")
    for k in range(len(SHIFTS)):
        save_image(shifted(k), d / f"im{k}.nii.gz")
        save_image(shifted(k, labels=True), d / f"lab{k}.nii.gz")
    rows = "".join(f"im0.nii.gz,im{k}.nii.gz,lab0.nii.gz,lab{k}.nii.gz\n" for k in (1, 2, 3))
    (d / "pairs.csv").write_text("fixed,moving,fixed_labels,moving_labels\n" + rows)
    return d


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


# -- sharding: 4 forced CPU devices against 1 ------------------------------------------------------------------
CHILD = textwrap.dedent(
    """
    import os, sys, json
    # four CPU devices, plus the compile flags of the test run (tests/conftest.py), handed over by the parent
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4 " + os.environ.pop("PARENT_XLA_FLAGS", "")
    os.environ["JAX_PLATFORMS"] = "cpu"
    sys.path.insert(0, sys.argv[1])
    sys.path.insert(0, os.path.join(sys.argv[1], "tests"))
    import jax, numpy as np
    import test_cohort as t
    from jaxreg.optimize import engine, register
    from jaxreg.parallel import make_mesh
    ims = [t.shifted(k) for k in range(4)]
    fixed, moving = [ims[0]] * 3 + [ims[1], ims[2]], [ims[1], ims[2], ims[3], ims[0], ims[3]]  # 5 pairs: padded to 8
    stages = t.quick_stages()
    one = register(fixed, moving, method=stages)
    four = register(fixed, moving, method=stages, mesh=make_mesh())
    grid = ims[0].grid
    disp = lambda r: np.stack([np.asarray(r.pair(i).transform.sample_displacement(grid)) for i in range(5)])
    out = {
        "devices": jax.device_count(),
        "pairs": four.pairs,
        "max_diff_mm": float(np.abs(disp(one) - disp(four)).max()),
        "max_disp_mm": float(np.abs(disp(one)).max()),
        "iterations_equal": bool(np.array_equal(one.iterations, four.iterations)),
        "sharded_kernels": sum(1 for k in engine._EXECUTABLES if k[0][0] == "level" and k[0][-1] is not None
                               and len(k[0][-1][1]) == 4),
    }
    print("RESULT" + json.dumps(out))
    """
)


def test_register_sharded_over_four_cpu_devices_matches_one_device(child_result):
    out = child_result(CHILD, REPO)
    assert out["devices"] == 4 and out["pairs"] == 5  # padding rows dropped
    assert out["sharded_kernels"] >= 2  # the linear and the greedy level kernels ran on the 4-device mesh
    assert out["max_disp_mm"] > 1.0  # the pairs moved
    assert out["max_diff_mm"] < 2e-3, out  # same transforms within float tolerance (1 mm voxels)
    assert out["iterations_equal"]


# -- register-many ---------------------------------------------------------------------------------------------
def read_summary(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_register_many_summary_and_resume(cohort, tmp_path, capsys):
    out = tmp_path / "out"
    rc, text, err = run(capsys, "register-many", "--csv", cohort / "pairs.csv", "-o", out, "--quick", "--no-progress")
    assert rc == 0, err
    names = ["im1_to_im0", "im2_to_im0", "im3_to_im0"]
    rows = read_summary(out / "summary.csv")
    assert [r["pair"] for r in rows] == names and list(rows[0]) == list(SUMMARY_COLUMNS)
    for r in rows:
        assert r["status"] == "registered"
        rep = json.loads((out / r["pair"] / "report.json").read_text())
        dice = json.loads((out / r["pair"] / "dice.json").read_text())
        assert float(r["mean_dice"]) == pytest.approx(dice["mean_dice"], rel=1e-5)
        assert float(r["ncc"]) == pytest.approx(rep["metrics"]["ncc_after"], rel=1e-5)
        assert float(r["mean_dice"]) > float(r["mean_dice_before"]) + 0.2  # shifts of 1.8-2.2 voxels undone
        assert float(r["ncc"]) > float(r["ncc_before"])
        assert float(r["percent_folding"]) == 0.0 and float(r["sdlogj"]) < 0.3
        assert float(r["registration_s"]) > 0
        assert (out / r["pair"] / "warp.nii.gz").is_file() and (out / r["pair"] / "warped_labels.nii.gz").is_file()

    # an interrupted run: one folder missing, the temporary folder of its write left behind
    kept = (out / "im1_to_im0" / "report.json").read_bytes()
    mtime = (out / "im1_to_im0" / "report.json").stat().st_mtime_ns
    for f in (out / "im2_to_im0").iterdir():
        f.unlink()
    (out / "im2_to_im0").rmdir()
    partial = out / ".im2_to_im0.tmp-x1y2"
    partial.mkdir()
    (partial / "warped.nii.gz").write_bytes(b"half")
    rc, text, err = run(capsys, "register-many", "--csv", cohort / "pairs.csv", "-o", out, "--quick", "--no-progress")
    assert rc == 0, err
    rows2 = read_summary(out / "summary.csv")
    assert [r["status"] for r in rows2] == ["skipped", "registered", "skipped"]
    assert not partial.exists() and (out / "im2_to_im0" / "report.json").is_file()
    assert (out / "im1_to_im0" / "report.json").read_bytes() == kept
    assert (out / "im1_to_im0" / "report.json").stat().st_mtime_ns == mtime
    assert float(rows2[1]["mean_dice"]) == pytest.approx(float(rows[1]["mean_dice"]), abs=1e-4)  # redone alike
    assert "1 of 3" not in text and "2 of 3 pairs done already" in text


def test_register_pairs_fixed_against_folder(cohort, tmp_path):
    from jaxreg.optimize.cohort import folder_pairs

    pairs = folder_pairs(cohort / "im0.nii.gz", cohort)
    assert [p.name for p in pairs] == [f"im{k}_to_im0" for k in (1, 2, 3)] + [f"lab{k}_to_im0" for k in range(4)]
    assert all(p.fixed == str(cohort / "im0.nii.gz") and p.fixed_labels is None for p in pairs)
    with pytest.raises(ValueError, match="unique"):
        register_pairs([pairs[0], pairs[0]], tmp_path / "o", progress=False)
    with pytest.raises(ValueError, match="folder name"):
        register_pairs([pairs[0]._replace(name="../escape")], tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists()


def test_register_pairs_winsorize_and_histogram_matching(cohort, tmp_path):
    """winsorize / histogram_matching: each pair is registered as jaxreg.warp.intensity.prepare_pair prepares it
    (the same transform as register() of the prepared images), the outputs are of the original images, and
    report.json records the options."""
    from jaxreg.io import load_image
    from jaxreg.optimize import register
    from jaxreg.warp import warp
    from jaxreg.warp.intensity import prepare_pair

    data = 3.0 * np.asarray(shifted(1).data) + 0.5
    data[2, 2] = 50.0  # one bright outlier: winsorizing changes the registered images
    moving = Image(jnp.asarray(data, jnp.float32), shifted(1).grid)
    save_image(moving, tmp_path / "bright.nii.gz")
    pair = Pair("bright_to_im0", str(cohort / "im0.nii.gz"), str(tmp_path / "bright.nii.gz"))
    stages = quick_stages()
    rows = register_pairs([pair], tmp_path / "out", method=stages, winsorize=(0.01, 0.99), histogram_matching=True,
                          progress=False)  # fmt: skip
    assert rows[0]["status"] == "registered"
    fixed = load_image(cohort / "im0.nii.gz")
    pf, pm = prepare_pair(fixed, moving, winsorize=(0.01, 0.99), histogram_matching=True)
    assert float(jnp.max(pm.data)) < 2.0 < float(jnp.max(moving.data))
    ref = register(pf, pm, method=stages)
    warped = np.asarray(load_image(tmp_path / "out" / pair.name / "warped.nii.gz").data)
    expect = np.asarray(warp(moving, ref.transform, fixed.grid).data)  # the original moving image, warped
    np.testing.assert_allclose(warped, expect, atol=1e-4 * float(np.max(expect)))
    report = json.loads((tmp_path / "out" / pair.name / "report.json").read_text())
    assert report["intensity"] == {"winsorize": [0.01, 0.99], "histogram_matching": True}
    with pytest.raises(ValueError, match="winsorize: expected quantiles"):
        register_pairs([pair], tmp_path / "bad", winsorize=(0.9, 0.1), progress=False)
    assert not (tmp_path / "bad").exists()


def test_read_pairs_csv(tmp_path):
    (tmp_path / "p.csv").write_text("# comment\na.nii.gz,b.nii.gz\n/x/c.nii,d.nii,,,mine\na.nii.gz,b.nii.gz\n")
    pairs = read_pairs_csv(tmp_path / "p.csv")
    assert pairs[0] == Pair("b_to_a", str(tmp_path / "a.nii.gz"), str(tmp_path / "b.nii.gz"))
    assert pairs[1].name == "mine" and pairs[1].fixed == "/x/c.nii" and pairs[1].fixed_labels is None
    assert pairs[2].name == "b_to_a_2"


@pytest.mark.parametrize(
    "case",
    [
        "missing", "constant", "cells", "one_label", "moving_dir", "out_is_file", "template_one", "template_missing",
        "template_config", "winsorize", "template_sharpen",
    ],
)
def test_bad_inputs_exit_2_and_write_nothing(case, cohort, tmp_path, capsys):
    out = tmp_path / "out"
    csv_path = tmp_path / "p.csv"
    im = cohort / "im0.nii.gz"
    argv: list = ["register-many", "--csv", csv_path, "-o", out, "--quick"]
    if case == "missing":
        csv_path.write_text(f"{im},{cohort / 'im1.nii.gz'}\n{im},{tmp_path / 'nope.nii.gz'}\n")
    elif case == "constant":
        save_image(Image(jnp.ones(SHAPE), phantom(SHAPE).grid), tmp_path / "flat.nii.gz")
        csv_path.write_text(f"{im},{cohort / 'im1.nii.gz'}\n{im},{tmp_path / 'flat.nii.gz'}\n")
    elif case == "cells":
        csv_path.write_text(f"{im},{im},{im}\n")
    elif case == "one_label":
        csv_path.write_text(f"{im},{cohort / 'im1.nii.gz'},{cohort / 'lab0.nii.gz'},\n")
    elif case == "moving_dir":
        argv = ["register-many", "--fixed", im, "-o", out]
    elif case == "out_is_file":
        csv_path.write_text(f"{im},{cohort / 'im1.nii.gz'}\n")
        out.write_text("x")
    elif case == "template_one":
        argv = ["template", im, "-o", out, "--quick"]
    elif case == "template_missing":
        argv = ["template", im, tmp_path / "nope.nii.gz", "-o", out, "--quick"]
    elif case == "winsorize":
        csv_path.write_text(f"{im},{cohort / 'im1.nii.gz'}\n")
        argv += ["--winsorize", "0.9", "0.1"]
    elif case == "template_sharpen":
        argv = ["template", im, cohort / "im1.nii.gz", "-o", out, "--quick", "--sharpen", "-0.5"]
    elif case == "template_config":
        (tmp_path / "bad.toml").write_text("[deformable]\nstep_decay = 2.0\n")
        argv = ["template", im, cohort / "im1.nii.gz", "-o", out, "--quick", "--config", tmp_path / "bad.toml"]
    before = out.read_text() if out.is_file() else None
    rc, text, err = run(capsys, *argv)
    assert rc == 2, (text, err)
    assert err.startswith("jaxreg: error: ") and len(err.strip().splitlines()) == 1
    if case == "out_is_file":
        assert out.read_text() == before
    else:
        assert not out.exists()
    if case in ("missing", "constant"):
        assert "pair im1_to_im0" not in err and ("nope" in err or "flat" in err)  # names the bad pair's file


# -- template --------------------------------------------------------------------------------------------------
def test_template_of_shifted_phantoms_sits_at_their_mean_shape(tmp_path, capsys):
    shifts = SHIFTS[1:]  # three images: the batch of register-many's test, so the compiled kernels are reused
    images = [shifted(k) for k in (1, 2, 3)]
    res = build_template(
        images, iterations=2, method=quick_stages(), affine_method=quick_stages("affine")
    )
    last = res.history[-1]
    assert res.registrations == 3 * 4 and len(res.history) == 4
    assert last["mean_displacement_mm"] < 0.3  # unbiased: the mappings at the template average to ~0
    # the template is the phantom moved by the mean shift (independent reference: scipy's centre of mass)
    com = np.asarray(ndimage.center_of_mass(np.asarray(res.template.data)))
    ref = np.asarray(ndimage.center_of_mass(np.asarray(phantom(SHAPE).data))) + np.mean(shifts, axis=0)
    assert np.abs(com - ref).max() < 0.3, (com, ref)
    first = ref - np.mean(shifts, axis=0) + np.asarray(shifts[0])  # a template biased to image 0 would sit here
    assert np.linalg.norm(com - ref) < np.linalg.norm(com - first)
    assert last["sharpness"] > 0.8 * res.history[0]["sharpness"]  # no blur build-up over the rounds

    from jaxreg.optimize.template import write_template

    files = write_template(tmp_path / "t", res, names=["im1", "im2", "im3"])
    assert (tmp_path / "t" / "template.nii.gz").is_file() and (tmp_path / "t" / "im3" / "warp.nii.gz").is_file()
    info = json.loads((tmp_path / "t" / "template.json").read_text())
    assert info["mean_displacement_mm"] == pytest.approx(last["mean_displacement_mm"]) and len(files) == 5
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_template_sharpen_is_an_unsharp_mask_of_each_average():
    """sharpen=a: each average becomes the template through jaxreg.warp.intensity.unsharp_mask (ANTs' script
    sharpens its templates): with no shape update the template is the affine start's average, sharpened."""
    from jaxreg.warp.intensity import unsharp_mask

    images = [shifted(k) for k in (1, 2, 3)]
    kw = dict(iterations=0, method=quick_stages(), affine_method=quick_stages("affine"))
    plain = build_template(images, **kw)
    sharp = build_template(images, sharpen=0.5, **kw)
    np.testing.assert_allclose(np.asarray(sharp.template.data), np.asarray(unsharp_mask(plain.template, 0.5).data),
                               atol=1e-5)  # fmt: skip
    assert sharp.history[-1]["sharpness"] > 1.1 * plain.history[-1]["sharpness"]
    with pytest.raises(ValueError, match="sharpen"):
        build_template(images, sharpen=-1.0, **kw)
    unusable = {**kw, "affine_method": object()}  # fails in the first registration: the check must come first
    for bad in (-1.0, float("nan"), (1.0, 2.0, 3.0), "wide"):
        with pytest.raises(ValueError, match="sharpen_sigma_mm: expected None or non-negative finite mm"):
            build_template(images, sharpen=0.5, sharpen_sigma_mm=bad, **unusable)


def test_template_command(cohort, tmp_path, capsys):
    out = tmp_path / "tpl"
    ims = [cohort / f"im{k}.nii.gz" for k in (1, 2, 3)]
    rc, text, err = run(capsys, "template", *ims, "-o", out, "--quick", "--iterations", "2")
    assert rc == 0, err
    info = json.loads((out / "template.json").read_text())
    assert info["images"] == ["im1", "im2", "im3"] and info["registrations"] == 12
    assert info["mean_displacement_mm"] < 0.3 and f"{info['mean_displacement_mm']:.3f} mm" in text
    from jaxreg.io import compose_files, load_image
    from jaxreg.similarity import ncc
    from jaxreg.warp import warp

    template = load_image(out / "template.nii.gz")
    for k, p in zip((1, 2, 3), ims):  # each image's files map it onto the template (antsApplyTransforms order)
        t = compose_files([out / f"im{k}" / "warp.nii.gz", out / f"im{k}" / "affine.mat"])
        moved = warp(load_image(p), t, template.grid)
        assert -float(ncc(template.data, moved.data)) > 0.9


def test_template_command_pipeline_and_config(cohort, tmp_path, capsys):
    """--pipeline syn with a config's greedy settings: the rounds run the greedy stage alone (identity affine.mat)."""
    out = tmp_path / "tpl"
    cfg = tmp_path / "decay.toml"
    cfg.write_text("[deformable]\nstep_decay = 0.0\n")
    ims = [cohort / f"im{k}.nii.gz" for k in (1, 2, 3)]
    rc, text, err = run(capsys, "template", *ims, "-o", out, "--quick", "--iterations", "1", "--pipeline", "syn",
                        "--config", cfg, "--sharpen", "0.5")  # fmt: skip
    assert rc == 0, err
    info = json.loads((out / "template.json").read_text())
    assert info["registrations"] == 9 and info["mean_displacement_mm"] < 0.5
    from jaxreg.io import read_transform

    lin = read_transform(out / "im1" / "affine.mat")
    np.testing.assert_allclose(np.asarray(lin.homogeneous()), np.eye(3), atol=1e-6)
