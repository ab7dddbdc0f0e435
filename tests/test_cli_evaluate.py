"""``jaxreg evaluate`` (jaxreg/cli/evaluate.py): parsed with a parser built here exactly as the main parser
builds its subcommands, and through ``jaxreg.cli.main.main`` (exit status and one-line errors)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from jaxreg import Affine, DisplacementField, Grid
from jaxreg.cli import evaluate
from jaxreg.cli._args import Parser as _Parser
from jaxreg.cli.main import build_parser, main
from jaxreg.core.grid import Image
from jaxreg.evaluation import dice, hd95_per_label
from jaxreg.io import save_image, write_transform


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="jaxreg")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    evaluate.add_parser(sub)
    return p


def run(capsys, *argv) -> tuple[int, str]:
    args = parser().parse_args(["evaluate", *map(str, argv)])
    rc = evaluate.run(args)
    return rc, capsys.readouterr().out


GRID = Grid.from_spacing((20, 22, 16), (1.0, 1.5, 2.0), origin=(-10.0, -15.0, -16.0))


@pytest.fixture
def label_pair(tmp_path):
    """Two label maps on one anisotropic grid: blocks 1..3 in A; in B block 2 is shifted, 3 is missing,
    5 is new."""
    a = np.zeros(GRID.shape, np.int16)
    a[2:8, 3:10, 2:7] = 1
    a[10:17, 5:15, 4:12] = 2
    a[3:6, 14:20, 9:14] = 3
    b = np.zeros_like(a)
    b[2:8, 3:10, 2:7] = 1
    b[11:18, 6:15, 4:11] = 2
    b[15:19, 1:4, 1:3] = 5
    pa, pb = tmp_path / "fixed_seg.nii.gz", tmp_path / "warped_seg.nii.gz"
    save_image(Image(jnp.asarray(a), GRID), pa)
    save_image(Image(jnp.asarray(b), GRID), pb)
    return pa, pb, a, b


def test_parser_class_and_defaults():
    p = parser()
    args = p.parse_args(
        ["evaluate", "--fixed-labels", "a.nii", "--warped-labels", "b.nii", "--labels", "2", "3"]
    )
    assert args.func is evaluate.run and args.labels == [2, 3]
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    assert isinstance(sub.choices["evaluate"], _Parser)
    with pytest.raises(ValueError, match="not allowed with"):  # _Parser raises instead of exiting
        p.parse_args(["evaluate", "--labels", "2", "--labels-json", "x.json"])


def test_labels_table_and_json(capsys, tmp_path, label_pair):
    pa, pb, a, b = label_pair
    out_json = tmp_path / "metrics.json"
    rc, out = run(
        capsys, "--fixed-labels", pa, "--warped-labels", pb, "--labels", 1, 2, 3, 4, 5, "--json", out_json
    )
    assert rc == 0
    assert "missing in B" in out and "in neither map" in out and "missing in A" in out
    res = json.loads(out_json.read_text())["labels"]
    rows = {r["label"]: r for r in res["labels"]}
    ref_d = np.asarray(dice(a, b, labels=[1, 2, 3, 4, 5]))
    ref_h = np.asarray(hd95_per_label(a, b, labels=[1, 2, 3, 4, 5], spacing=GRID.spacing))
    assert rows[1]["dice"] == pytest.approx(1.0) and rows[1]["hd95_mm"] == pytest.approx(0.0)
    assert rows[2]["dice"] == pytest.approx(ref_d[1], rel=1e-6) and rows[2]["hd95_mm"] == pytest.approx(
        ref_h[1]
    )
    assert rows[3]["dice"] == 0.0 and rows[3]["hd95_mm"] is None  # missing in B: Dice 0, HD95 inf -> null
    assert rows[4]["dice"] is None and rows[4]["voxels_fixed"] == 0  # in neither: excluded from the means
    assert res["num_labels_dice"] == 4 and res["mean_dice"] == pytest.approx(np.nanmean(ref_d), rel=1e-6)
    assert res["num_labels_hd95"] == 2 and res["mean_hd95_mm"] == pytest.approx(np.mean(ref_h[:2]), rel=1e-6)
    assert res["spacing_mm"] == [1.0, 1.5, 2.0]
    assert f"mean Dice {np.nanmean(ref_d):.4f}" in out
    # default labels: every non-zero label of either map
    rc, out = run(capsys, "--fixed-labels", pa, "--warped-labels", pb, "--json", out_json)
    assert [r["label"] for r in json.loads(out_json.read_text())["labels"]["labels"]] == [1, 2, 3, 5]


def test_labels_json_formats(capsys, tmp_path, label_pair):
    pa, pb, *_ = label_pair
    formats = {
        "list.json": [2, 1],
        "l2r.json": {"eval_labels": [2, 1], "note": "aseg-like"},
        "objects.json": {"labels": [{"id": 2, "name": "Two"}, {"label": 1, "name": "One"}]},
        "mapping.json": {"2": "Two", "1": "One"},
    }
    for name, content in formats.items():
        path = tmp_path / name
        path.write_text(json.dumps(content))
        out_json = tmp_path / f"out_{name}"
        rc, out = run(
            capsys, "--fixed-labels", pa, "--warped-labels", pb, "--labels-json", path, "--json", out_json
        )
        rows = json.loads(out_json.read_text())["labels"]["labels"]
        assert [r["label"] for r in rows] == [2, 1], name
        if name in ("objects.json", "mapping.json"):
            assert rows[0]["name"] == "Two" and "Two" in out
    bad = tmp_path / "bad.json"
    for content, match in (
        ({"foo": [1, 2]}, "eval_labels"),
        ([1, 1], "duplicate"),
        ([1.5], "integer"),
        ([], "non-empty"),
    ):
        bad.write_text(json.dumps(content))
        with pytest.raises(ValueError, match=match):
            run(capsys, "--fixed-labels", pa, "--warped-labels", pb, "--labels-json", bad)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        run(capsys, "--fixed-labels", pa, "--warped-labels", pb, "--labels-json", bad)


def test_shared_labels_json(capsys, shared_data, tmp_path):
    """The 30-structure list of ../shared/data/brain3d/labels.json, on a label map holding some of them."""
    labels, names = evaluate.read_label_list(shared_data / "brain3d" / "labels.json")
    assert len(labels) == 30 and labels[:3] == [2, 3, 4] and names == {}
    a = np.zeros((12, 12, 12), np.int16)
    a[2:6, 2:6, 2:6] = 2
    a[6:10, 6:10, 6:10] = 17
    grid = Grid.from_spacing(a.shape, 1.0)
    pa = tmp_path / "a.nii.gz"
    save_image(Image(jnp.asarray(a), grid), pa)
    out_json = tmp_path / "m.json"
    rc, out = run(
        capsys,
        "--fixed-labels",
        pa,
        "--warped-labels",
        pa,
        "--labels-json",
        shared_data / "brain3d" / "labels.json",
        "--json",
        out_json,
    )
    res = json.loads(out_json.read_text())["labels"]
    assert len(res["labels"]) == 30 and res["num_labels_dice"] == 2 and res["mean_dice"] == 1.0


def test_different_grids_name_both_files(capsys, tmp_path, label_pair):
    pa, _, a, _ = label_pair
    other_shape = tmp_path / "other_shape.nii.gz"
    save_image(Image(jnp.asarray(a[:-1]), Grid.from_spacing(a[:-1].shape, (1.0, 1.5, 2.0))), other_shape)
    with pytest.raises(ValueError, match="different grids") as e:
        run(capsys, "--fixed-labels", pa, "--warped-labels", other_shape)
    assert str(pa) in str(e.value) and str(other_shape) in str(e.value)
    other_affine = tmp_path / "other_affine.nii.gz"
    save_image(Image(jnp.asarray(a), Grid.from_spacing(a.shape, (1.0, 1.5, 2.0))), other_affine)
    with pytest.raises(ValueError, match="different voxel-to-world affines") as e:
        run(capsys, "--fixed-labels", pa, "--warped-labels", other_affine)
    assert str(pa) in str(e.value) and str(other_affine) in str(e.value)


def test_jacobian_statistics_of_transform_files(capsys, tmp_path, label_pair):
    pa, pb, *_ = label_pair
    aff = Affine.from_homogeneous(
        jnp.diag(jnp.array([2.0, 1.0, 1.0, 1.0])), center=jnp.array([1.0, 2.0, 3.0])
    )
    tpath = tmp_path / "affine.mat"
    write_transform(aff, tpath)
    out_json = tmp_path / "jac.json"
    rc, out = run(capsys, "--transform", tpath, "--grid", pa, "--json", out_json)
    assert rc == 0 and "SDlogJ" in out and "folding" in out
    jac = json.loads(out_json.read_text())["jacobian"]
    assert jac["num_voxels"] == int(np.prod(GRID.shape)) and jac["num_nonpositive"] == 0
    assert jac["mean"] == pytest.approx(2.0, rel=1e-5) and jac["mean_log"] == pytest.approx(
        np.log(2), rel=1e-5
    )
    assert jac["std_log"] == pytest.approx(0.0, abs=1e-6)
    # a displacement field file with a reflected slab, and a mask: counts restricted to the mask
    u = np.zeros(GRID.shape + (3,), np.float32)
    i = np.arange(GRID.shape[0])
    y = np.where(i <= 5, i, np.where(i <= 8, 10 - i, i - 6))
    u[..., 0] = (1.0 * (y - i))[:, None, None]
    fpath = tmp_path / "field.nii.gz"
    write_transform(DisplacementField(jnp.asarray(u), GRID), fpath)
    mask = np.zeros(GRID.shape, np.uint8)
    mask[:7] = 1
    mpath = tmp_path / "mask.nii.gz"
    save_image(Image(jnp.asarray(mask), GRID), mpath)
    rc, out = run(capsys, "--transform", fpath, "--grid", pa, "--mask", mpath, "--json", out_json)
    jac = json.loads(out_json.read_text())["jacobian"]
    per_slice = GRID.shape[1] * GRID.shape[2]
    assert jac["num_voxels"] == 7 * per_slice and jac["num_nonpositive"] == 2 * per_slice
    # both parts at once
    rc, out = run(
        capsys,
        "--fixed-labels",
        pa,
        "--warped-labels",
        pb,
        "--transform",
        tpath,
        "--grid",
        pa,
        "--json",
        out_json,
    )
    both = json.loads(out_json.read_text())
    assert "labels" in both and "jacobian" in both


def test_argument_errors(capsys, tmp_path, label_pair):
    pa, pb, *_ = label_pair
    with pytest.raises(ValueError, match="nothing to do"):
        run(capsys)
    with pytest.raises(ValueError, match="go together"):
        run(capsys, "--fixed-labels", pa)
    with pytest.raises(ValueError, match="go together"):
        run(capsys, "--transform", "t.mat")
    with pytest.raises(ValueError, match="need --fixed-labels"):
        run(capsys, "--labels", 1, "--transform", "t.mat", "--grid", pa)
    with pytest.raises(ValueError, match="duplicate"):
        run(capsys, "--fixed-labels", pa, "--warped-labels", pb, "--labels", 1, 1)
    with pytest.raises(ValueError, match="refusing to overwrite"):
        run(capsys, "--fixed-labels", pa, "--warped-labels", pb, "--json", pb)
    with pytest.raises(FileNotFoundError):
        run(
            capsys,
            "--fixed-labels",
            pa,
            "--warped-labels",
            pb,
            "--json",
            tmp_path / "no" / "such" / "dir.json",
        )
    with pytest.raises(FileNotFoundError):
        run(capsys, "--fixed-labels", tmp_path / "missing.nii.gz", "--warped-labels", pb)
    # a failed run leaves no partial JSON behind
    assert not list(Path(tmp_path).glob("*.json*"))


def test_wired_into_main():
    p = build_parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    assert isinstance(sub.choices["evaluate"], _Parser)


def test_through_main(capsys, tmp_path, label_pair):
    pa, pb, *_ = label_pair
    out_json = tmp_path / "m.json"
    rc = main(["evaluate", "--fixed-labels", str(pa), "--warped-labels", str(pb), "--labels", "1", "--json", str(out_json)])
    assert rc == 0
    assert json.loads(out_json.read_text())["labels"]["labels"][0]["dice"] == pytest.approx(1.0)
    capsys.readouterr()
    rc = main(["evaluate", "--fixed-labels", str(pa)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("jaxreg: error: ") and "go together" in err


def test_main_reports_user_errors_in_one_line(capsys, tmp_path, label_pair):
    pa, pb, *_ = label_pair
    other = tmp_path / "other.nii.gz"
    save_image(Image(jnp.zeros((4, 4, 4), jnp.int16), Grid((4, 4, 4))), other)
    rc = main(["evaluate", "--fixed-labels", str(pa), "--warped-labels", str(other)])
    err = capsys.readouterr().err.strip().split("\n")
    assert rc == 2 and len(err) == 1
    assert err[0].startswith("jaxreg: error: --warped-labels: label maps on different grids")
    assert str(pa) in err[0] and str(other) in err[0]
    rc = main(["evaluate", "--labels", "1", "--labels-json", "x.json"])
    err = capsys.readouterr().err
    assert rc == 2 and "not allowed with" in err and "--labels-json" in err
    rc = main(["evaluate", "--fixed-labels", str(tmp_path / "missing.nii.gz"), "--warped-labels", str(pb)])
    err = capsys.readouterr().err.strip().split("\n")
    assert rc == 2 and len(err) == 1 and err[0].startswith("jaxreg: error: --fixed-labels: ")
    assert "missing.nii.gz" in err[0]
    assert not list(tmp_path.glob("*.json*"))
