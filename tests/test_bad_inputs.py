"""A catalogue of bad command lines: each is a one-line error that names the argument, and writes nothing.

Every case builds tiny synthetic inputs (NIfTI files written with nibabel, landmark and TOML files) in
``tmp_path`` and runs :func:`jaxreg.cli.main.main` in-process. The assertions, for every case:

* exit status 2;
* stderr is exactly one line, starting ``jaxreg: error:``, naming the offending argument (``MOVING``,
  ``--config``, ``-o``...) and the problem;
* nothing under ``tmp_path`` was created, changed or removed (no output folder, no partial file).

The cases fail before any registration or training runs, so the whole file takes seconds.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from jaxreg.cli.main import main

SHAPE = (16, 14)
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


@pytest.fixture(autouse=True)
def _no_cache(monkeypatch):
    monkeypatch.setenv("JAXREG_CACHE_DIR", "")


def _nii(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))
    return path


def _blob(shift: float = 0.0) -> np.ndarray:
    i, j = np.meshgrid(np.arange(SHAPE[0]), np.arange(SHAPE[1]), indexing="ij")
    r2 = ((i - 7.5 - shift) / 5.0) ** 2 + ((j - 6.5) / 4.0) ** 2
    return np.where(r2 < 1.0, 100.0 - 40.0 * r2, 5.0).astype(np.float32)


def _labels(shift: float = 0.0) -> np.ndarray:
    img = _blob(shift)
    return np.where(img > 80, 2, np.where(img > 50, 1, 0)).astype(np.int16)


class Inputs:
    """The inputs of one case, under ``tmp_path / "in"``."""

    def __init__(self, root: Path):
        self.root = root
        self.dir = root / "in"
        self.dir.mkdir()
        self.fixed = _nii(self.dir / "fixed.nii.gz", _blob())
        self.moving = _nii(self.dir / "moving.nii.gz", _blob(1.5))
        self.fixed_labels = _nii(self.dir / "fixed_labels.nii.gz", _labels())
        self.moving_labels = _nii(self.dir / "moving_labels.nii.gz", _labels(1.5))
        self.out = root / "out"

    def path(self, name: str) -> Path:
        return self.dir / name

    def nii(self, name: str, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
        return _nii(self.dir / name, data, affine)

    def text(self, name: str, text: str) -> Path:
        p = self.dir / name
        p.write_text(text)
        return p

    def transform(self, name: str = "t.mat", ndim: int = 2) -> Path:
        from jaxreg.io import write_transform
        from jaxreg.transforms import Translation

        p = self.dir / name
        write_transform(Translation(np.ones(ndim, np.float32)), p)
        return p

    def landmarks(self, name: str, n: int, shift: float = 0.0) -> Path:
        rng = np.random.default_rng(n)
        pts = rng.uniform(-20, 20, (n, 3)) + shift
        return self.text(name, "\n".join(",".join(f"{v:.3f}" for v in p) for p in pts) + "\n")

    def model_folder(self) -> Path:
        p = self.dir / "model"
        p.mkdir()
        return p

    def train_config(self, name: str = "train.toml", **sections: dict) -> Path:
        cfg = {
            "workdir": "run",
            "data": {"images": ["moving.nii.gz"], "shape": [16, 16], "spacing": 2.0},
            "train": {"mode": "unsupervised", "steps": 2},
        }
        for key, table in sections.items():
            cfg[key] = {**cfg.get(key, {}), **table} if isinstance(table, dict) else table
        lines = []
        for key, value in cfg.items():
            if not isinstance(value, dict):
                lines.append(f"{key} = {json.dumps(value)}")
        for key, value in cfg.items():
            if isinstance(value, dict):
                lines.append(f"[{key}]")
                lines += [f"{k} = {json.dumps(v)}" for k, v in value.items()]
        return self.text(name, "\n".join(lines) + "\n")


Case = Callable[[Inputs], tuple[list, tuple[str, ...]]]
CASES: dict[str, Case] = {}


def case(fn: Case) -> Case:
    CASES[fn.__name__] = fn
    return fn


def _register(t: Inputs, *extra) -> list:
    return ["register", t.fixed, t.moving, "-o", t.out, "--quick", *extra]


# -- register ---------------------------------------------------------------------------------------------------
@case
def register_missing_fixed(t):
    return ["register", t.path("nope.nii.gz"), t.moving, "-o", t.out], ("FIXED", "nope.nii.gz", "no such file")


@case
def register_moving_not_nifti(t):
    bad = t.text("notes.nii.gz", "this is not an image\n")
    return ["register", t.fixed, bad, "-o", t.out], ("MOVING", "notes.nii.gz", "not a readable NIfTI file")


@case
def register_moving_is_a_folder(t):
    return ["register", t.fixed, t.dir, "-o", t.out], ("MOVING", "folder")


@case
def register_3d_moving_for_2d_fixed(t):
    vol = t.nii("vol.nii.gz", np.random.default_rng(0).random((8, 8, 6)).astype(np.float32))
    return ["register", t.fixed, vol, "-o", t.out], ("MOVING", "3-D", "2-D")


@case
def register_4d_fixed(t):
    series = t.nii("series.nii.gz", np.random.default_rng(0).random((8, 8, 6, 3)).astype(np.float32))
    return ["register", series, t.moving, "-o", t.out], ("FIXED", "volumes/components")


@case
def register_constant_moving(t):
    flat = t.nii("flat.nii.gz", np.full(SHAPE, 3.0, np.float32))
    return ["register", t.fixed, flat, "-o", t.out], ("MOVING", "flat.nii.gz", "constant image")


@case
def register_constant_fixed(t):
    flat = t.nii("zeros.nii.gz", np.zeros(SHAPE, np.int16))
    return ["register", flat, t.moving, "-o", t.out], ("FIXED", "zeros.nii.gz", "constant image")


@case
def register_complex_moving(t):
    cplx = t.nii("cplx.nii.gz", _blob(1.5).astype(np.complex64) * np.complex64(1 - 2j))
    return ["register", t.fixed, cplx, "-o", t.out], ("MOVING", "cplx.nii.gz", "complex")


@case
def register_nan_moving(t):
    data = _blob(1.5)
    data[3, 4] = np.nan
    return ["register", t.fixed, t.nii("nan.nii.gz", data), "-o", t.out], ("MOVING", "NaN")


@case
def register_inf_fixed(t):
    data = _blob()
    data[0, 0] = np.inf
    return ["register", t.nii("inf.nii.gz", data), t.moving, "-o", t.out], ("FIXED", "NaN/Inf")


@case
def register_labels_on_another_grid(t):
    other = t.nii("other_labels.nii.gz", _labels(), np.diag([2.0, 2.5, 2.0, 1.0]))
    return _register(t, "--labels", other, t.moving_labels), ("--labels", "different grid")


@case
def register_labels_not_integer(t):
    frac = t.nii("frac.nii.gz", _labels().astype(np.float32) + 0.25)
    return _register(t, "--labels", frac, t.moving_labels), ("--labels", "not a label map")


@case
def register_mask_on_another_grid(t):
    mask = t.nii("mask.nii.gz", np.ones((10, 10), np.uint8))
    return _register(t, "--fixed-mask", mask), ("--fixed-mask", "different grid")


@case
def register_empty_mask(t):
    mask = t.nii("empty.nii.gz", np.zeros(SHAPE, np.uint8))
    return _register(t, "--moving-mask", mask), ("--moving-mask", "empty")


@case
def register_config_unknown_key(t):
    cfg = t.text("opts.toml", "[deformable]\nsteps = 0.3\n")
    return _register(t, "--config", cfg), ("--config", "opts.toml", "unknown key 'deformable.steps'")


@case
def register_config_not_toml(t):
    cfg = t.text("opts.toml", "pipeline = \n[linear\n")
    return _register(t, "--config", cfg), ("--config", "not valid TOML")


@case
def register_config_negative_level(t):
    cfg = t.text("opts.toml", "[linear]\nlevels = [[-2, 0.0, 10]]\n")
    return _register(t, "--config", cfg), ("--config", "shrink: expected a positive integer")


@case
def register_config_unknown_similarity(t):
    cfg = t.text("opts.toml", '[deformable]\nsimilarity = "cosine"\n')
    return _register(t, "--config", cfg), ("--config", "deformable.similarity", "cosine", "lncc")


@case
def register_config_bad_similarity_option(t):
    cfg = t.text("opts.toml", '[deformable]\nsimilarity = "lncc(widow=5)"\n')
    return _register(t, "--config", cfg), ("--config", "deformable.similarity", "widow")


@case
def register_config_missing(t):
    return _register(t, "--config", t.path("none.toml")), ("--config", "none.toml", "no such file")


@case
def register_output_is_a_file(t):
    return ["register", t.fixed, t.moving, "-o", t.moving], ("-o", "not a folder")


@case
def register_output_folder_holds_an_input(t):
    # the moving image sits where warped.nii.gz would be written
    t.out.mkdir()
    inside = t.out / "warped.nii.gz"
    inside.write_bytes(t.moving.read_bytes())
    return ["register", t.fixed, inside, "-o", t.out], ("-o", "refusing to overwrite")


@case
def register_label_list_without_labels(t):
    return _register(t, "--label-list", "1"), ("--label-list", "needs --labels")


@case
def register_label_list_and_labels_json(t):
    js = t.text("labels.json", "[1, 2]")
    args = ["--labels", t.fixed_labels, t.moving_labels, "--label-list", "1", "--labels-json", js]
    return _register(t, *args), ("--labels-json", "not allowed with", "--label-list")


@case
def register_label_list_not_integers(t):
    return _register(t, "--labels", t.fixed_labels, t.moving_labels, "--label-list", "one"), (
        "--label-list",
        "invalid int value",
    )


@case
def register_labels_json_not_json(t):
    js = t.text("labels.json", "{1: 'a'")
    return _register(t, "--labels", t.fixed_labels, t.moving_labels, "--labels-json", js), (
        "--labels-json",
        "not valid JSON",
    )


@case
def register_unknown_pipeline(t):
    return _register(t, "--pipeline", "fancy"), ("--pipeline", "invalid choice")


@case
def register_initial_transform_missing(t):
    return _register(t, "--initial-transform", t.path("nope.mat")), ("--initial-transform", "nope.mat", "no such file")


@case
def register_initial_transform_3d_for_2d(t):
    spec = f"[{t.transform('t3.mat', ndim=3)},1]"
    return _register(t, "--initial-transform", spec), ("--initial-transform", "3-D transform for 2-D images")


@case
def register_initial_transform_auto_without_linear_stage(t):
    return _register(t, "--pipeline", "syn", "--initial-transform", "auto"), ("--initial-transform", "no linear stage")


@case
def register_config_empty_similarity_list(t):
    cfg = t.text("c.toml", "[deformable]\nsimilarity = []\n")
    return _register(t, "--config", cfg), ("--config", "deformable.similarity", "non-empty list")


@case
def register_config_channel_on_another_grid(t):
    other = t.nii("other.nii.gz", _blob(), np.diag([3.0, 3.0, 3.0, 1.0]))
    cfg = t.text("c.toml", f'[[channels]]\nfixed = "{other}"\nmoving = "{t.moving}"\n')
    return _register(t, "--config", cfg), ("--config", "channels[1].fixed", "different grid")


@case
def register_quiet_and_json(t):
    return _register(t, "--quiet", "--json"), ("--json", "not allowed with")


# -- apply ------------------------------------------------------------------------------------------------------
def _apply(t: Inputs, *extra, output: Path | None = None) -> list:
    return ["apply", "--fixed", t.fixed, "--moving", t.moving, "-o", output or t.root / "warped.nii.gz", *extra]


@case
def apply_missing_moving(t):
    args = ["apply", "--fixed", t.fixed, "--moving", t.path("gone.nii.gz"), "-t", t.transform()]
    return [*args, "-o", t.root / "w.nii.gz"], ("--moving", "gone.nii.gz", "no such file")


@case
def apply_output_is_the_moving_image(t):
    return _apply(t, "-t", t.transform(), output=t.moving), ("-o", "refusing to overwrite")


@case
def apply_output_not_nifti(t):
    return _apply(t, "-t", t.transform(), output=t.root / "warped.png"), ("-o", ".nii.gz")


@case
def apply_output_folder_missing(t):
    return _apply(t, "-t", t.transform(), output=t.root / "nowhere" / "w.nii.gz"), ("-o", "does not exist")


@case
def apply_bad_transform_spec(t):
    return _apply(t, "-t", f"[{t.transform()},2]"), ("-t", "[file,1]")


@case
def apply_transform_file_is_junk(t):
    junk = t.path("junk.mat")
    junk.write_bytes(b"\x00\x01 not a transform")
    return _apply(t, "-t", junk), ("-t", "junk.mat")


@case
def apply_3d_transform_on_2d_images(t):
    return _apply(t, "-t", t.transform("t3.mat", ndim=3)), ("-t", "3-D", "2-D")


@case
def apply_labels_with_linear_interpolation(t):
    return _apply(t, "-t", t.transform(), "--labels", "--interp", "linear"), ("--labels", "--interp linear")


@case
def apply_complex_moving(t):
    cplx = t.nii("cplx.nii.gz", _blob().astype(np.complex64))
    args = ["apply", "--fixed", t.fixed, "--moving", cplx, "-t", t.transform(), "-o", t.root / "w.nii.gz"]
    return args, ("--moving", "complex")


@case
def apply_nan_default_value(t):
    return _apply(t, "-t", t.transform(), "--default-value", "nan"), ("--default-value", "finite")


# -- evaluate ---------------------------------------------------------------------------------------------------
@case
def evaluate_fixed_labels_alone(t):
    return ["evaluate", "--fixed-labels", t.fixed_labels], ("--fixed-labels", "--warped-labels", "go together")


@case
def evaluate_label_maps_on_different_grids(t):
    other = t.nii("other.nii.gz", np.zeros((8, 8), np.int16))
    return ["evaluate", "--fixed-labels", t.fixed_labels, "--warped-labels", other], (
        "--warped-labels",
        "different grids",
    )


@case
def evaluate_labels_not_integer(t):
    frac = t.nii("frac.nii.gz", _labels().astype(np.float32) / 3.0)
    return ["evaluate", "--fixed-labels", frac, "--warped-labels", t.moving_labels], (
        "--fixed-labels",
        "not a label map",
    )


@case
def evaluate_json_over_an_input(t):
    args = ["evaluate", "--fixed-labels", t.fixed_labels, "--warped-labels", t.moving_labels]
    return [*args, "--json", t.moving_labels], ("--json", "refusing to overwrite")


@case
def evaluate_transform_of_another_dimension(t):
    return ["evaluate", "--transform", t.transform("t3.mat", ndim=3), "--grid", t.fixed], (
        "--transform",
        "3-D",
        "2-D",
    )


@case
def evaluate_mask_without_transform(t):
    return ["evaluate", "--fixed-labels", t.fixed_labels, "--warped-labels", t.moving_labels, "--mask", t.fixed], (
        "--mask",
        "needs --transform",
    )


@case
def evaluate_nothing_to_do(t):
    return ["evaluate"], ("nothing to do", "--fixed-labels")


# -- landmarks --------------------------------------------------------------------------------------------------
@case
def landmarks_missing_fixed(t):
    return [
        "landmarks", "--fixed", t.path("none.csv"), "--moving", t.landmarks("m.csv", 5), "-o", t.root / "t.mat",
    ], ("--fixed", "none.csv")  # fmt: skip


@case
def landmarks_counts_differ(t):
    return [
        "landmarks", "--fixed", t.landmarks("f.csv", 5), "--moving", t.landmarks("m.csv", 6), "-o", t.root / "t.mat",
    ], ("--fixed/--moving", "same number")  # fmt: skip


@case
def landmarks_too_few_for_affine(t):
    return [
        "landmarks", "--fixed", t.landmarks("f.csv", 3), "--moving", t.landmarks("m.csv", 3, 1.0), "--model",
        "affine", "-o", t.root / "t.mat",
    ], ("--fixed/--moving", "at least 4")  # fmt: skip


@case
def landmarks_output_not_a_transform_file(t):
    return [
        "landmarks", "--fixed", t.landmarks("f.csv", 5), "--moving", t.landmarks("m.csv", 5, 1.0), "-o",
        t.root / "t.nii.gz",
    ], ("-o", ".mat")  # fmt: skip


@case
def landmarks_wrong_number_of_weights(t):
    return [
        "landmarks", "--fixed", t.landmarks("f.csv", 5), "--moving", t.landmarks("m.csv", 5, 1.0), "--weights",
        "1,2,3", "-o", t.root / "t.mat",
    ], ("--weights", "expected 5 weights")  # fmt: skip


# -- info -------------------------------------------------------------------------------------------------------
@case
def info_missing_image(t):
    return ["info", t.path("nope.nii")], ("IMAGE", "nope.nii", "no such file")


@case
def info_not_nifti(t):
    return ["info", t.text("scan.nii", "plain text")], ("IMAGE", "scan.nii", "not a readable NIfTI file")


# -- train ------------------------------------------------------------------------------------------------------
@case
def train_without_config(t):
    return ["train", "--steps", "2"], ("--config", "required")


@case
def train_config_missing(t):
    return ["train", "--config", t.path("none.toml")], ("--config", "none.toml", "no such file")


@case
def train_config_not_toml(t):
    return ["train", "--config", t.text("cfg.toml", "[train\nsteps = 2\n")], ("--config", "not valid TOML")


@case
def train_config_unknown_key(t):
    return ["train", "--config", t.train_config(train={"learnin_rate": 0.1})], ("--config", "learnin_rate")


@case
def train_unknown_mode(t):
    return ["train", "--config", t.train_config(train={"mode": "magic"})], ("--config", "[train] mode", "magic")


@case
def train_option_of_another_mode(t):
    cfg = t.train_config(mode={"deformation_mm": 4.0})  # a synthesis option for the unsupervised mode
    return ["train", "--config", cfg], ("--config", "[mode] deformation_mm", "unsupervised")


@case
def train_mode_option_of_the_wrong_type(t):
    cfg = t.train_config(mode={"intensity_augmentation": "strong"})
    return ["train", "--config", cfg], ("--config", "[mode] intensity_augmentation", "expected a number")


@case
def train_unknown_similarity(t):
    cfg = t.train_config(train={"similarity": "cosine"})
    return ["train", "--config", cfg], ("--config", "[train] similarity", "cosine")


@case
def train_glob_matches_nothing(t):
    cfg = t.train_config(data={"images": ["scans/*.nii.gz"]})
    return ["train", "--config", cfg], ("--config", "no file matches")


@case
def train_negative_steps(t):
    return ["train", "--config", t.train_config(), "--steps", "-3"], ("--steps", "non-negative integer")


@case
def train_workdir_is_a_file(t):
    return ["train", "--config", t.train_config(), "-o", t.fixed], ("-o", "not a folder")


# -- predict ----------------------------------------------------------------------------------------------------
@case
def predict_missing_model(t):
    return ["predict", "--model", t.path("nomodel"), t.fixed, t.moving, "-o", t.out], (
        "--model",
        "nomodel",
        "name of a shipped model",
    )


@case
def predict_constant_moving(t):
    flat = t.nii("flat.nii.gz", np.ones(SHAPE, np.float32))
    return ["predict", "--model", t.model_folder(), t.fixed, flat, "-o", t.out], ("MOVING", "constant image")


@case
def predict_folder_is_not_a_trained_model(t):
    return ["predict", "--model", t.model_folder(), t.fixed, t.moving, "-o", t.out], ("--model", "model.json")


@case
def predict_negative_refine(t):
    return ["predict", "--model", t.model_folder(), t.fixed, t.moving, "-o", t.out, "--refine", "-1"], (
        "--refine",
        "non-negative integer",
    )


# -- demo -------------------------------------------------------------------------------------------------------
@case
def demo_output_is_a_file(t):
    return ["demo", "-o", t.fixed, "--resolution", "8"], ("-o", "not a folder")


@case
def demo_zero_resolution(t):
    return ["demo", "-o", t.out, "--resolution", "0"], ("--resolution", "positive integer")


@case
def demo_negative_displacement(t):
    return ["demo", "-o", t.out, "--max-displacement", "-5"], ("--max-displacement", "positive number")


@case
def demo_infinite_smoothness(t):
    return ["demo", "-o", t.out, "--smoothness", "inf"], ("--smoothness", "positive number")


def _snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() else b"<dir>", p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    }


def test_catalogue_is_large_and_covers_every_command():
    assert len(CASES) >= 30
    commands = {name.split("_")[0] for name in CASES}
    assert commands == {"register", "apply", "evaluate", "landmarks", "info", "train", "predict", "demo"}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_line_error_and_writes_nothing(name, tmp_path, capsys, monkeypatch):
    t = Inputs(tmp_path)
    argv, fragments = CASES[name](t)
    monkeypatch.chdir(tmp_path)  # a relative default output (demo's ./jaxreg_demo) would land here
    before = _snapshot(tmp_path)
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    lines = err.strip("\n").split("\n")
    assert rc == 2, (rc, out, err)
    assert len(lines) == 1 and lines[0].startswith("jaxreg: error: "), err
    assert "Traceback" not in err
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    assert out == "", out  # failed before any work was reported
    assert _snapshot(tmp_path) == before
