"""``jaxreg register``'s engine flags: every preset, ``--initial-transform``, multi-metric and multi-channel stages
from the config file, ``--quiet``/``--json`` and the progress reports; each with its bad-input cases (one line,
exit status 2, nothing written).

A tiny 2-D pair: a phantom and the same phantom pulled through a smooth displacement plus a shift (every preset
has something to recover). Similarity is checked with NumPy's correlation of the files written.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage as ndi

from jaxreg.cli import register as reg
from jaxreg.cli.main import main
from jaxreg.core.grid import Grid, Image
from jaxreg.data import phantom
from jaxreg.io import load_image, read_transform, save_image, write_transform
from jaxreg.optimize import PRESETS, Level, Progress, preset, register
from jaxreg.similarity import lncc, ncc, nmi, weighted_sum
from jaxreg.terms import parse
from jaxreg.transforms import Affine, compose, invert, rotation_matrix
from jaxreg.warp import warp

SHAPE = (44, 44)


def padded_phantom() -> Image:
    """The 2-D phantom (32 x 32 voxels of 1.5 mm) in the middle of a zero background: nothing leaves the field of
    view when it moves by a few mm."""
    data = np.pad(np.asarray(phantom((32, 32)).data), 6)
    return Image(jnp.asarray(data), Grid.centered(SHAPE, 1.5))


@pytest.fixture(autouse=True)
def _no_cache_no_figure(monkeypatch):
    monkeypatch.setenv("JAXREG_CACHE_DIR", "")
    # report.png is drawn and checked in tests/test_cli_register.py; here it would cost 0.7 s of every run
    import jaxreg.evaluation.report

    monkeypatch.setattr(jaxreg.evaluation.report, "_figure_png", lambda *args, **kwargs: None)


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_error(rc: int, out: str, err: str, *fragments: str) -> None:
    assert rc == 2 and out == ""
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1 and lines[0].startswith("jaxreg: error: "), err
    for f in fragments:
        assert f in lines[0], (f, lines[0])


def corr(a, b) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("flags")
    fixed = padded_phantom()
    f = np.asarray(fixed.data)
    yy, xx = np.meshgrid(*(np.arange(s, dtype=np.float64) for s in SHAPE), indexing="ij")
    dy = 1.5 * np.sin(2 * np.pi * xx / SHAPE[1]) + 2.0
    dx = 1.2 * np.cos(2 * np.pi * yy / SHAPE[0]) - 1.0
    m = ndi.map_coordinates(f, [yy + dy, xx + dx], order=1)
    paths = {k: root / f"{k}.nii.gz" for k in ("fixed", "moving", "fixed2", "moving2")}
    save_image(fixed, paths["fixed"])
    save_image(Image(jnp.asarray(m, jnp.float32), fixed.grid), paths["moving"])
    # a second "contrast" of the same pair (inverted intensities), for [[channels]]
    save_image(Image(jnp.asarray(1.0 - f, jnp.float32), fixed.grid), paths["fixed2"])
    save_image(Image(jnp.asarray(1.0 - m, jnp.float32), fixed.grid), paths["moving2"])
    return paths


def register_json(capsys, pair, out, *flags) -> dict:
    rc, stdout, err = run(capsys, "register", pair["fixed"], pair["moving"], "-o", out, "--quick", "--json", *flags)
    assert rc == 0, err
    lines = stdout.strip("\n").split("\n")
    assert len(lines) == 1, stdout  # --json: one object on stdout, the usual lines on stderr
    assert "pipeline:" in err and "wrote:" in err
    return json.loads(lines[0])


# -- presets -------------------------------------------------------------------------------------------------------
def test_pipeline_choices_are_the_library_presets():
    assert reg.PRESET_PIPELINES == tuple(PRESETS)
    assert {"similarity", "syn", "demons", "bspline", "dense", "rigid", "affine"} <= set(PRESETS)
    assert reg.PIPELINES == tuple(PRESETS) + ("organ",)
    assert [st.model.family for st in PRESETS["similarity"]] == ["similarity"]
    assert not any(reg._is_linear_stage(st) for st in PRESETS["syn"])  # SyN-only: no linear stage
    assert PRESETS["demons"][1].method.force == "demons"


# default, rigid and multimodal run through the command line in tests/test_cli_register.py
@pytest.mark.parametrize("name", sorted(set(PRESETS) - {"default", "rigid", "multimodal"}))
def test_every_preset_runs_from_the_command_line_and_improves(pair, capsys, tmp_path, name):
    out = tmp_path / "out"
    summary = register_json(capsys, pair, out, "--pipeline", name)
    assert summary["pipeline"] == name
    assert set(summary["files"]) == {p.name for p in out.iterdir()}
    fixed = np.asarray(load_image(pair["fixed"]).data)
    before = corr(fixed, load_image(pair["moving"]).data)
    after = corr(fixed, load_image(out / "warped.nii.gz").data)
    assert after > before + 0.15, (name, before, after)
    assert summary["metrics"]["ncc_after"] == pytest.approx(after, abs=1e-3)
    linear_only = all(reg._is_linear_stage(st) for st in PRESETS[name])
    assert (out / "warp.nii.gz").exists() != linear_only


# -- --json, --quiet -------------------------------------------------------------------------------------------------
def test_json_summary_matches_the_report(pair, capsys, tmp_path):
    s = register_json(capsys, pair, tmp_path / "j", "--pipeline", "rigid")
    rep = json.loads((tmp_path / "j" / "report.json").read_text())
    assert s["metrics"] == rep["metrics"] and s["stages"] == rep["stages"] and s["jacobian"] == rep["jacobian"]
    assert s["timings"]["total"] > 0 and s["output"] == str(tmp_path / "j")
    assert all(Path(p).is_file() for p in s["files"].values())


def test_quiet_json_errors(pair, capsys, tmp_path):
    out = tmp_path / "o"
    rc, so, err = run(capsys, "register", pair["fixed"], pair["moving"], "-o", out, "--quiet", "--json")
    assert_error(rc, so, err, "not allowed with")
    rc, so, err = run(capsys, "register", pair["fixed"], tmp_path / "nope.nii.gz", "-o", out, "--json")
    assert_error(rc, so, err, "MOVING", "no such file")
    assert not out.exists()


# -- progress ------------------------------------------------------------------------------------------------------
def test_register_reports_progress_per_level(pair):
    fixed, moving = load_image(pair["fixed"]), load_image(pair["moving"])
    quick = Level(2, 0.0, 40)  # the levels of --quick: kernels compiled once for the whole file
    stages = preset("default", linear_levels=(quick, quick), deformable_levels=(Level(2, 0.0, 15),))
    events: list[Progress] = []
    register(fixed, moving, method=stages, progress=events.append)
    assert [(e.stage, e.level_index, e.result is None) for e in events] == [
        ("affine", 0, True), ("affine", 0, False), ("affine", 1, True), ("affine", 1, False),
        ("deformable", 0, True), ("deformable", 0, False),
    ]  # fmt: skip
    assert {e.total_iterations for e in events} == {95}
    assert sum(e.level.iterations for e in events if e.result is not None) == 95
    assert events[-1].result.iterations == 15 and events[-1].stages == 2


def test_progress_bars_advance_to_their_totals(pair, capsys, tmp_path, monkeypatch):
    import tqdm

    bars = []

    class Recorder:
        def __init__(self, total, disable=None, **kw):
            self.total, self.n, self.disable, self.closed, self.descs = total, 0, disable, False, []
            bars.append(self)

        def update(self, k):
            self.n += k

        def set_description(self, d):
            self.descs.append(d)

        def close(self):
            self.closed = True

    monkeypatch.setattr(tqdm, "tqdm", Recorder)
    rc, _, err = run(capsys, "register", pair["fixed"], pair["moving"], "-o", tmp_path / "p", "--quick")
    assert rc == 0, err
    levels, steps = bars
    assert levels.total == levels.n == 40 + 15 and levels.closed and levels.disable is None
    assert levels.descs == ["affine level 1/1", "deformable level 1/1"]
    assert steps.total == steps.n == 2 and steps.descs == ["report", "write"] and steps.closed
    bars.clear()
    rc, out, err = run(capsys, "register", pair["fixed"], pair["moving"], "-o", tmp_path / "q", "--quick", "-q")
    assert rc == 0 and out == "" and err == ""  # --quiet: nothing printed, no bars, every file written
    assert all(b.disable is True for b in bars) and len(bars) == 2
    assert (tmp_path / "q" / "report.json").exists() and (tmp_path / "q" / "warp.nii.gz").exists()


# -- --initial-transform -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def moved(tmp_path_factory) -> dict:
    """The phantom pulled through the inverse of a known rigid transform, on the same grid: the answer is known."""
    root = tmp_path_factory.mktemp("moved")
    fixed = padded_phantom()
    r = jnp.asarray(rotation_matrix(jnp.deg2rad(jnp.float32(5.0))), jnp.float32)
    truth = Affine(r, jnp.asarray([3.0, -2.0], jnp.float32), jnp.zeros(2, jnp.float32))  # fixed -> moving world
    moving = warp(fixed, invert(truth), fixed.grid, order=3)  # moving(T(x)) = fixed(x)
    paths = {k: root / f"{k}.nii.gz" for k in ("fixed", "moving")}
    paths.update(truth=root / "truth.mat", inverse=root / "inverse.mat")
    save_image(fixed, paths["fixed"])
    save_image(moving, paths["moving"])
    write_transform(truth, paths["truth"])
    write_transform(invert(truth), paths["inverse"])
    return {"paths": paths, "truth": np.asarray(truth.homogeneous(), np.float64)}


def matrix(path) -> np.ndarray:
    return np.asarray(read_transform(path).linear_part().homogeneous(), np.float64)


def test_initial_transform_at_the_answer_stays_there(moved, capsys, tmp_path):
    p = moved["paths"]
    fg = np.asarray(padded_phantom().data) > 0
    pts = np.asarray(Grid.centered(SHAPE, 1.5).world_coords())[fg]
    pts = np.concatenate([pts, np.ones((len(pts), 1))], 1)  # the object's voxel centres (mm), homogeneous
    found = []
    for i, spec in enumerate([str(p["truth"]), f"[{p['inverse']},1]"]):
        out = tmp_path / f"o{i}"
        rc, _, err = run(
            capsys, "register", p["fixed"], p["moving"], "-o", out, "--pipeline", "affine", "--quick", "-q",
            "--initial-transform", spec,
        )  # fmt: skip
        assert rc == 0, err
        got = matrix(out / "affine.mat")
        # Adam's first steps have a set size whatever the gradient, and the NCC of the 3 mm level is flat near the
        # answer: the stage wanders a little (about 1 degree) and stops; the object stays within a voxel (1.5 mm)
        err_mm = np.linalg.norm(pts @ (got - moved["truth"])[:2].T, axis=1)
        assert err_mm.max() < 1.5 and err_mm.mean() < 0.75, (err_mm.max(), err_mm.mean())
        rep = json.loads((out / "report.json").read_text())
        assert rep["inputs"]["initial_transform"] == spec and rep["metrics"]["ncc_after"] > 0.95
        found.append(got)
    np.testing.assert_allclose(found[0], found[1], atol=1e-4)  # T and [inverse of T, 1] are one start


def test_initial_transform_from_an_earlier_run(pair, capsys, tmp_path):
    """``affine`` then ``syn --initial-transform affine.mat`` is the ``default`` pipeline in two commands."""
    a = register_json(capsys, pair, tmp_path / "a", "--pipeline", "affine")
    s = register_json(
        capsys, pair, tmp_path / "s", "--pipeline", "syn", "--initial-transform", tmp_path / "a" / "affine.mat"
    )
    d = register_json(capsys, pair, tmp_path / "d", "--pipeline", "default")
    first = matrix(tmp_path / "a" / "affine.mat")
    np.testing.assert_allclose(matrix(tmp_path / "s" / "affine.mat"), first, atol=1e-6)  # -r kept as it is
    np.testing.assert_allclose(matrix(tmp_path / "d" / "affine.mat"), first, atol=1e-6)
    ws, wd = (np.asarray(load_image(tmp_path / k / "warp.nii.gz", channels=True).data) for k in ("s", "d"))
    assert np.abs(ws - wd).max() < 0.05  # mm
    assert s["metrics"]["ncc_after"] == pytest.approx(d["metrics"]["ncc_after"], abs=2e-3)
    assert s["metrics"]["ncc_after"] > a["metrics"]["ncc_after"]
    # the outputs compose as usual: apply -t warp -t affine.mat reproduces warped.nii.gz
    rc, _, err = run(
        capsys, "apply", "--fixed", pair["fixed"], "--moving", pair["moving"], "-o", tmp_path / "w.nii.gz",
        "-t", tmp_path / "s" / "warp.nii.gz", "-t", tmp_path / "s" / "affine.mat",
    )  # fmt: skip
    assert rc == 0, err
    np.testing.assert_allclose(
        load_image(tmp_path / "w.nii.gz").data, load_image(tmp_path / "s" / "warped.nii.gz").data, atol=1e-3
    )


def test_initial_transform_keywords(pair, capsys, tmp_path):
    s = register_json(capsys, pair, tmp_path / "i", "--pipeline", "affine", "--initial-transform", "identity")
    assert s["stages"]["linear"]["start"] == "identity" and s["inputs"]["initial_transform"] == "identity"
    # without a linear stage, center/com/moments become the fixed initial transform
    register_json(capsys, pair, tmp_path / "c", "--pipeline", "syn", "--initial-transform", "com")
    from jaxreg.optimize import moments_init

    com = moments_init(load_image(pair["fixed"]), load_image(pair["moving"]), mode="com")
    np.testing.assert_allclose(
        matrix(tmp_path / "c" / "affine.mat"), np.asarray(com.linear_part().homogeneous()), atol=1e-5
    )


def bad_transforms(root: Path) -> dict[str, tuple[str, ...]]:
    (root / "garbage.mat").write_bytes(b"not a transform at all")
    (root / "garbage.txt").write_text("#Insight Transform File V1.0\nTransform: Nope_double_2_2\n")
    write_transform(Affine.identity(3), root / "three.mat")
    write_transform(Affine(jnp.zeros((2, 2)), jnp.zeros(2), jnp.zeros(2)), root / "singular.mat")
    g = Grid.centered(SHAPE, 1.5)
    from jaxreg.transforms import DisplacementField

    write_transform(DisplacementField(jnp.ones((*SHAPE, 2)), g), root / "field.nii.gz")
    return {
        str(root / "missing.mat"): ("missing.mat", "no such file"),
        str(root / "garbage.mat"): ("garbage.mat",),
        str(root / "garbage.txt"): ("garbage.txt",),
        str(root / "three.mat"): ("3-D transform for 2-D images",),
        str(root / "singular.mat"): ("singular",),
        str(root / "field.nii.gz"): ("expected a linear transform",),
        f"[{root / 'three.mat'},2]": ("[file,0] / [file,1]",),
        str(root): ("is a folder",),
    }


def test_initial_transform_bad_inputs(pair, capsys, tmp_path):
    out = tmp_path / "out"
    for spec, fragments in bad_transforms(tmp_path).items():
        rc, so, err = run(
            capsys, "register", pair["fixed"], pair["moving"], "-o", out, "--quick", "--initial-transform", spec
        )
        assert_error(rc, so, err, "--initial-transform", *fragments)
        assert not out.exists()
    for pipeline, spec, fragment in (("syn", "auto", "no linear stage"), ("organ", "moments", "its own start")):
        rc, so, err = run(
            capsys, "register", pair["fixed"], pair["moving"], "-o", out, "--quick", "--pipeline", pipeline,
            "--initial-transform", spec, "--ct-labels", pair["fixed"], "--rigid", "1",
        )  # fmt: skip
        assert_error(rc, so, err, "--initial-transform", fragment)
        assert not out.exists()


def test_library_linear_part_includes_a_given_outer(pair):
    fixed, moving = load_image(pair["fixed"]), load_image(pair["moving"])
    outer = Affine(jnp.eye(2), jnp.asarray([0.5, -0.25]), jnp.zeros(2))
    r = register(fixed, moving, method=preset("syn", deformable_levels=(Level(2, 0.0, 15),)), outer=outer)
    np.testing.assert_allclose(np.asarray(r.linear.homogeneous()), np.asarray(outer.homogeneous()))
    pts = fixed.grid.world_coords(jnp.float32)
    np.testing.assert_allclose(compose(r.linear, r.deformable)(pts), r.transform(pts), atol=1e-5)


# -- multi-metric and multi-channel stages ---------------------------------------------------------------------------
def test_weighted_sum_is_the_sum_of_its_terms():
    rng = np.random.default_rng(3)
    f, m = (jnp.asarray(rng.random((14, 12, 2)), jnp.float32) for _ in range(2))
    term = weighted_sum((("lncc(window=5)", 1.0), ("nmi(bins=16)", 0.5)))
    assert term == weighted_sum((("lncc(window=5)", 1.0), ("nmi(bins=16)", 0.5)))  # hashes by value
    want = lncc(5)(f[..., 0], m[..., 0]) + 0.5 * nmi(16)(f[..., 0], m[..., 0])
    np.testing.assert_allclose(term(f[..., 0], m[..., 0]), want, rtol=1e-6)
    per_channel = weighted_sum((("ncc", 1.0, 0), ("ncc", 2.0, 1)))
    want = ncc(f[..., 0], m[..., 0]) + 2.0 * ncc(f[..., 1], m[..., 1])
    np.testing.assert_allclose(per_channel(f, m), want, rtol=1e-6)
    block = weighted_sum((("ssd", 1.0, (1, None)), ("ssd", 0.5, (0, 1))))  # channel ranges, as slices
    want = np.sum((np.asarray(f)[..., 1:] - np.asarray(m)[..., 1:]) ** 2)
    want += 0.5 * np.sum((np.asarray(f)[..., :1] - np.asarray(m)[..., :1]) ** 2)
    np.testing.assert_allclose(block(f, m), want, rtol=1e-5)
    for bad, fragment in (((), "at least one"), ((("nope", 1.0),), "unknown similarity"),
                          ((("ncc", float("nan")),), "finite"), ((("ncc", 1.0, -1),), "channel"),
                          ((("ncc", 1.0, (2, 1)),), "channel")):  # fmt: skip
        with pytest.raises(ValueError, match=fragment):
            weighted_sum(bad)


def test_multi_metric_and_channels_from_the_config(pair, capsys, tmp_path):
    cfg = tmp_path / "mm.toml"
    cfg.write_text(
        '[deformable]\nsimilarity = ["lncc(window=5)", {spec = "nmi(bins=32)", weight = 0.5}]\n'
        f'[[channels]]\nfixed = "{pair["fixed2"]}"\nmoving = "{pair["moving2"]}"\nsimilarity = "ncc"\nweight = 0.5\n'
    )
    rc, stdout, err = run(
        capsys, "register", pair["fixed"], pair["moving"], "-o", tmp_path / "m", "--quick", "--json", "--config", cfg
    )
    assert rc == 0, err
    s = json.loads(stdout)
    rep = json.loads((tmp_path / "m" / "report.json").read_text())
    assert "channels:   2 image pairs" in err
    assert rep["options"]["similarity"].startswith("weighted_sum(")
    assert rep["inputs"]["channels"] == [[str(pair["fixed2"]), str(pair["moving2"])]]
    assert s["metrics"]["ncc_after"] > s["metrics"]["ncc_affine"] + 0.03
    stages = reg.stages_from_options(reg.pipeline_options(config=cfg, quick=True))
    assert stages[1].method.similarity == weighted_sum(
        (
            ("weighted_sum(terms=(('lncc(window=5)', 1.0), ('nmi()', 0.5)))", 1.0, 0),
            ("ncc", 0.5, 1),
        )
    )
    assert stages[0].method.objective.terms[0].fn == weighted_sum((("ncc", 1.0, 0),))  # linear: FIXED/MOVING
    # without a similarity in the file, the pairs use the preset's deformable one (B-spline: lncc, not the affine's ncc)
    cfg.write_text(f'[[channels]]\nfixed = "{pair["fixed2"]}"\nmoving = "{pair["moving2"]}"\n')
    stages = reg.stages_from_options(reg.pipeline_options(config=cfg, pipeline="bspline"))
    want = weighted_sum((("lncc(window=5)", 1.0, 0), ("lncc(window=5)", 1.0, 1)))
    assert all(st.method.objective.terms[0].fn == want for st in stages[1:])


def test_config_similarity_of_linear_and_gradient_stages(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[linear]\nsimilarity = "mi(bins=16)"\n[deformable]\nsimilarity = "lncc(window=3)"\n')
    stages = reg.stages_from_options(reg.pipeline_options(config=cfg, pipeline="bspline"))
    assert [t.fn for t in stages[0].method.objective.terms] == [parse("mi(bins=16)", "similarity")]
    for st in stages[1:]:
        assert [t.name for t in st.method.objective.terms] == ["lncc", "bending"]
        assert st.method.objective.terms[0].fn == lncc(3)


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("[deformable]\nsimilarity = []\n", "non-empty list"),
        ('[deformable]\nsimilarity = [{spec = "ncc", wieght = 1}]\n', "unknown key 'deformable.similarity[1].wieght'"),
        ("[deformable]\nsimilarity = [{weight = 1}]\n", "table with spec"),
        ('[deformable]\nsimilarity = ["nope"]\n', "unknown similarity"),
        ('[deformable]\nsimilarity = [{spec = "ncc", weight = "a"}]\n', "weight: expected a number"),
        ('[linear]\nsimilarity = "lncc(size=3)"\n', "linear.similarity"),
        ('[[channels]]\nmoving = "m.nii.gz"\n', "channels[1].fixed: expected the path"),
        ('[[channels]]\nfixed = "f.nii.gz"\nmoving = "m.nii.gz"\ncolour = 1\n', "unknown key 'channels[1].colour'"),
        ('[[channels]]\nfixed = "nope.nii.gz"\nmoving = "nope.nii.gz"\n', "no such file"),
        ("channels = 3\n", "[[channels]] tables"),
    ],
)
def test_config_rejects_bad_similarity_and_channels(tmp_path, text, fragment):
    for name in ("f.nii.gz", "m.nii.gz"):
        (tmp_path / name).write_bytes(b"")
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ValueError) as e:
        reg.read_config(f)
    assert fragment in str(e.value) and str(f) in str(e.value) and "\n" not in str(e.value).strip()


def test_channel_errors_through_the_command_line(pair, capsys, tmp_path):
    other = tmp_path / "small.nii.gz"
    save_image(phantom((30, 30), spacing=2.0), other)
    out = tmp_path / "out"
    cases = [
        (f'[[channels]]\nfixed = "{other}"\nmoving = "{pair["moving2"]}"\n', (), ("--config", "different grid")),
        (f'[[channels]]\nfixed = "{pair["fixed2"]}"\nmoving = "{pair["moving2"]}"\n', ("--pipeline", "affine"),
         ("--config", "no deformable stage")),
        (f'[[channels]]\nfixed = "{pair["fixed2"]}"\nmoving = "{pair["moving2"]}"\n', ("--pipeline", "demons"),
         ("--config", "demons")),
    ]  # fmt: skip
    for text, flags, fragments in cases:
        cfg = tmp_path / "c.toml"
        cfg.write_text(text)
        rc, so, err = run(
            capsys, "register", pair["fixed"], pair["moving"], "-o", out, "--quick", "--config", cfg, *flags
        )
        assert_error(rc, so, err, *fragments)
        assert not out.exists()


# -- --winsorize, --histogram-matching -----------------------------------------------------------------------------
def test_winsorize_and_histogram_matching_register_the_prepared_images(pair, capsys, tmp_path):
    """The metrics compare the prepared images (the library's winsorize, then match_histogram, as antsRegistration
    orders them): the transform equals the library's registration of those images; the outputs are of the
    original images; bad quantiles are one-line errors with nothing written."""
    from jaxreg.warp.intensity import match_histogram, winsorize

    fixed = load_image(pair["fixed"])
    m = load_image(pair["moving"])
    rng = np.random.default_rng(0)
    data = np.asarray(m.data) * 40.0 + 7.0
    data[rng.random(data.shape) < 0.004] = 400.0  # bright outliers that winsorising clips
    moving = Image(jnp.asarray(data, jnp.float32), m.grid)
    path = tmp_path / "moving_scaled.nii.gz"
    save_image(moving, path)
    out = tmp_path / "out"
    rc, stdout, err = run(capsys, "register", pair["fixed"], path, "-o", out, "--quick", "--json", "--pipeline",
                          "rigid", "--winsorize", "0.005", "0.995", "--histogram-matching")  # fmt: skip
    assert rc == 0, err
    assert "winsorized to the 0.005-0.995 quantiles" in err and "histogram" in err
    report = json.loads((out / "report.json").read_text())
    assert report["inputs"]["winsorize"] == [0.005, 0.995] and report["inputs"]["histogram_matching"] is True
    wf = winsorize(fixed, 0.005, 0.995)
    wm = match_histogram(winsorize(moving, 0.005, 0.995), wf)
    stages = reg.stages_from_options(reg.pipeline_options(pipeline="rigid", quick=True))
    lib = register(wf, wm, method=stages)
    got = read_transform(out / "affine.mat")
    pts = fixed.grid.world_coords(jnp.float32).reshape(-1, 2)
    np.testing.assert_allclose(np.asarray(got(pts)), np.asarray(lib.transform(pts)), atol=1e-3)
    # warped.nii.gz is the original moving image (its own intensity scale), resampled
    np.testing.assert_allclose(np.asarray(load_image(out / "warped.nii.gz").data),
                               np.asarray(warp(moving, lib.transform, fixed.grid).data), rtol=1e-4, atol=1e-2)  # fmt: skip
    bad = tmp_path / "bad"
    for flags, fragment in ((("--winsorize", "0.9", "0.1"), "--winsorize: expected quantiles 0 <= LOW < HIGH <= 1"),
                            (("--winsorize", "0", "1", "--pipeline", "organ", "--ct-labels", pair["fixed"]),
                             "--winsorize: not supported by --pipeline organ")):  # fmt: skip
        rc, so, err = run(capsys, "register", pair["fixed"], path, "-o", bad, *flags)
        assert_error(rc, so, err, fragment)
        assert not bad.exists()
