"""``jaxreg train`` and ``jaxreg predict`` end to end on tiny 2D NIfTI files made in the test."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from jaxreg.cli.learn import EXAMPLE_CONFIG, load_trained, read_train_config
from jaxreg.cli.main import main


def _blob_labels(ci, cj, n=32):
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    r2 = (i - ci) ** 2 / 64.0 + (j - cj) ** 2 / 36.0
    lab = np.zeros((n, n), np.int16)
    lab[r2 < 1.0] = 1
    lab[r2 < 0.4] = 2
    lab[(r2 < 1.0) & (i > ci + 3)] = 3
    return lab


def _write(path, data, affine):
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("learn_cli")
    rng = np.random.default_rng(0)
    aff = np.diag([1.2, 1.0, 1.0, 1.0])
    aff[:2, 3] = (-18.0, -15.0)
    for k in range(5):
        ci, cj = 15.5 + rng.uniform(-3, 3), 15.5 + rng.uniform(-3, 3)
        lab = _blob_labels(ci, cj)
        img = np.choose(lab, [0.05, 0.5, 0.9, 0.7]).astype(np.float32) + rng.normal(0, 0.01, lab.shape).astype(np.float32)
        _write(root / f"s{k}_labels.nii.gz", lab, aff)
        _write(root / f"s{k}_img.nii.gz", img, aff)
    return root


def _config(root: Path, mode: str, **train) -> Path:
    t = {"mode": mode, "steps": 4, "eval_every": 2, "save_every": 2, "validation_pairs": 2, "learning_rate": 1e-3, **train}
    lines = [
        'workdir = "run_' + mode + '"',
        "[data]",
        'labels = ["s[0-3]_labels.nii.gz"]',
        'images = ["s[0-3]_img.nii.gz"]',
        'validation_labels = ["s3_labels.nii.gz", "s4_labels.nii.gz"]',
        'validation_images = ["s3_img.nii.gz", "s4_img.nii.gz"]',
        "shape = [32, 32]",
        "spacing = 1.2",
        'align = "com"',
        "label_values = [1, 2, 3]",
        "[model]",
        'transform = "velocity"',
        "encoder = [4, 8]",
        "decoder = [8, 8, 8]",
        "[train]",
    ] + [f"{k} = {json.dumps(v)}" for k, v in t.items()]
    path = root / f"{mode}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_example_config_is_valid_toml_with_every_section(capsys):
    assert main(["train", "--example-config"]) == 0
    cfg = tomllib.loads(capsys.readouterr().out)
    assert set(cfg) == {"workdir", "data", "model", "train", "mode"}
    assert cfg["train"]["mode"] == "synthesis"
    assert tomllib.loads(EXAMPLE_CONFIG) == cfg


def test_train_resume_and_predict(dataset, tmp_path, capsys, monkeypatch):
    # the command line's default persistent compilation cache, in a folder of this test (hermetic): the resumed
    # run and predict read the first run's programs instead of compiling them again (about a third of the time).
    # Under tests/conftest.py's session cache (JAX_COMPILATION_CACHE_DIR) the command line uses that one instead.
    monkeypatch.setenv("JAXREG_CACHE_DIR", str(tmp_path / "jax_cache"))
    cfg = _config(dataset, "synthesis")
    assert main(["train", "--config", str(cfg), "--quiet"]) == 0
    run = dataset / "run_synthesis"
    for name in ("metrics.csv", "model.json", "checkpoints", "best"):
        assert (run / name).exists(), name
    rows = (run / "metrics.csv").read_text().strip().splitlines()
    assert rows[0].startswith("step,") and "val_dice" in rows[0]
    assert [r.split(",")[0] for r in rows[1:]] == ["2", "4"]
    meta = json.loads((run / "model.json").read_text())
    assert meta["metadata"]["grid"]["shape"] == [32, 32] and meta["metadata"]["label_values"] == [1, 2, 3]
    # resume: two more steps append rows 6 (and keep 2, 4); --export writes the best model as a small folder
    exported = tmp_path / "exported"
    assert main(["train", "--config", str(cfg), "--quiet", "--steps", "6", "--export", str(exported)]) == 0
    rows = (run / "metrics.csv").read_text().strip().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["2", "4", "6"]
    assert "exported:" in capsys.readouterr().out
    assert sorted(p.name for p in exported.iterdir()) == ["model.json", "params.npz"]
    net, grid, meta_exported = load_trained(exported)
    ref, ref_grid, meta_run = load_trained(run)
    assert grid.shape == ref_grid.shape == (32, 32) and meta_exported == meta_run
    x = np.asarray(nib.load(str(dataset / "s0_img.nii.gz")).dataobj, np.float32)[None, ..., None]
    np.testing.assert_array_equal(net(x, x[:, ::-1]).field, ref(x, x[:, ::-1]).field)

    out = tmp_path / "pred"
    args = [
        "predict", "--model", str(run), str(dataset / "s0_img.nii.gz"), str(dataset / "s1_img.nii.gz"), "-o", str(out),
        "--labels", str(dataset / "s0_labels.nii.gz"), str(dataset / "s1_labels.nii.gz"), "--refine", "8",
    ]
    assert main(args) == 0
    for name in ("warped.nii.gz", "affine.mat", "warp.nii.gz", "warped_labels.nii.gz", "dice.json", "report.json"):
        assert (out / name).is_file(), name
    rep = json.loads((out / "report.json").read_text())
    assert rep["command"] == "jaxreg predict" and rep["refine_iterations"] == 8
    assert rep["jacobian"]["percent_nonpositive"] == 0.0
    # the refined registration improves the label overlap of this pair of shifted blobs
    assert rep["metrics"]["mean_dice"] > rep["metrics"]["mean_dice_before"]
    # the written transforms reproduce warped.nii.gz through `jaxreg apply` (ANTs order: warp first, then affine)
    applied = tmp_path / "applied.nii.gz"
    assert main(["apply", "-r", str(dataset / "s0_img.nii.gz"), "-i", str(dataset / "s1_img.nii.gz"), "-t", str(out / "warp.nii.gz"), "-t", str(out / "affine.mat"), "-o", str(applied)]) == 0
    np.testing.assert_allclose(np.asarray(nib.load(str(applied)).dataobj), np.asarray(nib.load(str(out / "warped.nii.gz")).dataobj), atol=2e-3)


def test_config_errors_are_one_line_and_name_the_key(dataset, tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('workdir = "x"\n[data]\nlabels = ["s0_labels.nii.gz"]\nshape = [32, 32]\n[train]\nmode = "synthesis"\nlearnin_rate = 1\n')
    with pytest.raises(ValueError, match="learnin_rate"):
        read_train_config(bad)
    bad.write_text('workdir = "x"\n[data]\nlabels = ["nothing_*.nii.gz"]\nshape = [32, 32]\n')
    with pytest.raises(FileNotFoundError, match="nothing_"):
        read_train_config(bad)
    (tmp_path / "s0_labels.nii.gz").write_bytes((dataset / "s0_labels.nii.gz").read_bytes())
    bad.write_text('workdir = "x"\n[data]\nlabels = ["s0_labels.nii.gz"]\nshape = [32, 32]\n[train]\nmode = "synthesis"\n')
    with pytest.raises(ValueError, match="label_values"):
        read_train_config(bad)
    bad.write_text('workdir = "x"\n[data]\nlabels = ["s0_labels.nii.gz"]\nshape = [32, 32]\nlabel_values = [1]\n[train]\nmode = "unsupervised"\n')
    with pytest.raises(ValueError, match="intensity images"):
        read_train_config(bad)
    assert main(["train"]) == 2
    assert "--config" in capsys.readouterr().err
    assert main(["predict", "--model", str(tmp_path / "none"), str(dataset / "s0_img.nii.gz"), str(dataset / "s1_img.nii.gz"), "-o", str(tmp_path / "o")]) == 2
    assert "--model" in capsys.readouterr().err


def test_modes_are_built_from_the_modes_table(monkeypatch):
    """build_mode dispatches on jaxreg.learn.modes.MODES: a new mode is one factory and one table entry, and each
    common option reaches only the factories that take it."""
    from jaxreg.core.grid import Grid
    from jaxreg.learn import modes as lm
    from jaxreg.learn.setup import build_mode

    seen = {}

    def custom(grid, *, label_values, regularizer_weight=0.0, strength=1.0, penalty=abs):
        """A training mode made up for the test."""
        seen.update(grid=grid, label_values=label_values, regularizer_weight=regularizer_weight, strength=strength)
        return "custom mode"

    monkeypatch.setitem(lm.MODES, "custom", custom)
    g = Grid((8, 8))
    kw = {"similarity": "mse", "regularizer_weight": 0.5, "label_values": [1, 2], "bidirectional": True}
    assert build_mode("custom", g, **kw, options={"strength": 3.0}) == "custom mode"
    assert seen == {"grid": g, "label_values": [1, 2], "regularizer_weight": 0.5, "strength": 3.0}
    for options, fragment in (
        ({"strenght": 3.0}, r"\[mode\] strenght: not an option of the 'custom' mode \(options: strength\)"),
        ({"strength": "high"}, r"\[mode\] strength: expected a number"),
        ({"regularizer_weight": 1.0}, r"\[mode\] regularizer_weight: set from \[train\]/\[data\]"),
        ({"penalty": "l2"}, r"\[mode\] penalty: not an option"),  # function-valued options are not for TOML files
    ):
        with pytest.raises(ValueError, match=fragment):
            build_mode("custom", g, **kw, options=options)
    with pytest.raises(ValueError, match=r"\[train\] mode: expected one of"):
        build_mode("nonexistent", g, **kw)
    # every real mode builds from the same common options
    for name in lm.MODES:
        if name != "custom":
            assert isinstance(build_mode(name, g, **kw), lm.TrainingMode)


def test_config_mode_table_is_checked_against_the_mode(dataset, tmp_path):
    mode_table = "[mode]\ndeformation_mm = 4.0\nsame_subject = 0.5\n"
    good = dataset / "mode_good.toml"  # next to the data: the globs are relative to the file
    good.write_text(_config(dataset, "synthesis").read_text() + mode_table)
    assert read_train_config(good, workdir=str(tmp_path / "w"))["mode"] == {"deformation_mm": 4.0, "same_subject": 0.5}
    bad = dataset / "mode_bad.toml"
    bad.write_text(_config(dataset, "unsupervised").read_text() + mode_table)
    with pytest.raises(ValueError, match=r"\[mode\] deformation_mm: not an option of the 'unsupervised' mode"):
        read_train_config(bad, workdir=str(tmp_path / "w"))


def test_train_and_predict_errors_write_nothing(dataset, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("JAXREG_CACHE_DIR", "")
    rc = main(["train", "--config", str(_config(dataset, "unsupervised")), "-o", str(dataset / "s0_img.nii.gz")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("jaxreg: error: -o ") and "not a folder" in err[0]
    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((32, 32), np.float32), np.eye(4)), str(flat))
    model = tmp_path / "model"
    model.mkdir()
    out = tmp_path / "pred"
    rc = main(["predict", "--model", str(model), str(dataset / "s0_img.nii.gz"), str(flat), "-o", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("jaxreg: error: MOVING: ") and "constant image" in err[0]
    rc = main(["predict", "--model", str(model), str(dataset / "s0_img.nii.gz"), str(dataset / "s1_img.nii.gz"), "-o", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("jaxreg: error: --model: ") and "model.json" in err[0]
    assert not out.exists() and not any(model.iterdir())
