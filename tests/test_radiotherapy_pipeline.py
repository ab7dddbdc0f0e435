"""Adaptive radiotherapy: organ groups, the organ-aware pipeline, the per-organ report and ``register --pipeline organ``.

References: closed-form rigid motions and scalings (rigid residual 0, det J = s^n, singular values s), scipy's
Kabsch solver (``Rotation.align_vectors``) for the best rigid fit, warping through the transform for moving-side
weight maps, and small 2-D phantoms with a known rigid bone motion and a swelling "bladder".
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from jaxreg.cli.main import main
from jaxreg.core.grid import Grid, Image
from jaxreg.io import save_image
from jaxreg.optimize import register
from jaxreg.optimize.engine import Level
from jaxreg.radiotherapy import (
    OrganGroups,
    format_organ_table,
    load_groups,
    organ_aware,
    organ_maps,
    organ_report,
    rigid_fit_residual,
)
from jaxreg.regularizers.organ import label_weight_map, weight_mapped
from jaxreg.transforms import Affine, Rigid
from jaxreg.transforms.dense import DisplacementField
from jaxreg.warp import warp, warp_labels

BONE, PROSTATE, BLADDER = 5, 7, 9


# -- groups ------------------------------------------------------------------------------------------------------
def _labels2d(shape=(40, 40), spacing=(2.0, 2.0)) -> Image:
    lab = np.zeros(shape, np.int32)
    lab[5:15, 5:15] = BONE
    lab[25:30, 8:13] = PROSTATE
    lab[20:34, 22:36] = BLADDER
    return Image(jnp.asarray(lab), Grid.from_spacing(shape, spacing))


def test_groups_from_flags_toml_and_json(tmp_path):
    g = OrganGroups.create("5, 6", [7], (9,))
    assert g == OrganGroups((5, 6), (7,), (9,)) and hash(g) == hash(OrganGroups((5, 6), (7,), (9,)))
    assert g.labels == (5, 6, 7, 9)
    (tmp_path / "g.toml").write_text("rigid = [5, 6]\nincompressible = [7]\ncompressible = [9]\n")
    (tmp_path / "t.toml").write_text("[groups]\nrigid = [5, 6]\nincompressible = [7]\ncompressible = [9]\n")
    (tmp_path / "g.json").write_text(json.dumps({"labels": {"5": "bone"}, "rigid": [5, 6], "incompressible": [7],
                                                 "compressible": [9]}))
    for name in ("g.toml", "t.toml", "g.json"):
        assert load_groups(tmp_path / name) == g


@pytest.mark.parametrize(
    "args, match",
    [
        (([5], [5], []), "also listed in rigid"),
        (([5, 5], [], []), "listed twice"),
        (([], [], []), "at least one label"),
        (([0], [], []), "positive label"),
        ((["x"], [], []), "integer label"),
    ],
)
def test_groups_bad_values(args, match):
    with pytest.raises(ValueError, match=match):
        OrganGroups.create(*args)


def test_groups_check_against_labels(tmp_path):
    lab = _labels2d()
    OrganGroups.create([BONE], [PROSTATE], [BLADDER]).check(lab)
    with pytest.raises(ValueError, match=r"compressible: label value\(s\) \[21\] do not occur"):
        OrganGroups.create([BONE], [], [21]).check(lab)
    other = Image(jnp.zeros((40, 41)), Grid.from_spacing((40, 41), (2.0, 2.0)))
    with pytest.raises(ValueError, match="labels: expected the grid of its image"):
        OrganGroups.create([BONE]).check(lab, image=other)
    (tmp_path / "bad.toml").write_text("rigid = [5\n")
    with pytest.raises(ValueError, match="cannot parse"):
        load_groups(tmp_path / "bad.toml")
    (tmp_path / "none.toml").write_text("other = [5]\n")
    with pytest.raises(ValueError, match="expected at least one of the keys"):
        load_groups(tmp_path / "none.toml")


# -- moving-side weight maps -----------------------------------------------------------------------------------
def test_moving_side_map_is_pulled_through_the_outer_transform():
    lab = _labels2d()
    m = label_weight_map(lab, [BONE], dilate_mm=2.0)
    t = Rigid(jnp.asarray(0.1), jnp.asarray([3.0, -2.0]), jnp.asarray(lab.grid.center, jnp.float32))
    w = weight_mapped("diffusion", m, side="moving")
    np.testing.assert_allclose(np.asarray(w.map_through(lab.grid, t)), np.asarray(warp(m, t, lab.grid).data), atol=1e-5)
    # the fixed-side map ignores the outer transform; equal maps built twice are one configuration
    f = weight_mapped("diffusion", m)
    assert f == weight_mapped("diffusion", label_weight_map(lab, [BONE], dilate_mm=2.0))
    assert hash(f) == hash(weight_mapped("diffusion", label_weight_map(lab, [BONE], dilate_mm=2.0)))
    assert f != w and f != weight_mapped("diffusion", label_weight_map(lab, [BONE], dilate_mm=4.0))
    with pytest.raises(ValueError, match="side: expected 'fixed' or 'moving'"):
        weight_mapped("diffusion", m, side="both")


def test_organ_maps_values():
    lab = _labels2d()
    g = OrganGroups.create([BONE], [PROSTATE], [BLADDER])
    maps = organ_maps(lab, g, margin_mm=0.0, compressible_smoothness=0.2)
    lab_np = np.asarray(lab.data)
    np.testing.assert_array_equal(np.asarray(maps["rigid"].data) > 0, lab_np == BONE)
    np.testing.assert_array_equal(np.asarray(maps["incompressible"].data) > 0, lab_np == PROSTATE)
    s = np.asarray(maps["smoothness"].data)
    np.testing.assert_allclose(s[lab_np == BLADDER], 0.2, atol=1e-6)
    np.testing.assert_allclose(s[lab_np != BLADDER], 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="compressible_smoothness"):
        organ_maps(lab, g, compressible_smoothness=0.0)
    with pytest.raises(ValueError, match="side: expected"):
        organ_aware(lab, g, side="left")
    with pytest.raises(ValueError, match="rigidity_weight: expected a non-negative"):
        organ_aware(lab, g, rigidity_weight=-1.0)


# -- report ------------------------------------------------------------------------------------------------------
def test_rigid_fit_residual_matches_scipy_and_closed_forms():
    rng = np.random.default_rng(0)
    p = rng.normal(size=(200, 3)) * 20
    r = Rotation.from_rotvec([0.1, -0.2, 0.05]).as_matrix()
    q = p @ r.T + [1.0, 2.0, -3.0]
    rms, r_fit, t_fit = rigid_fit_residual(p, q)
    assert rms < 1e-9
    np.testing.assert_allclose(r_fit, r, atol=1e-9)
    # noisy: the fitted rotation equals scipy's Kabsch solution, the residual is its RMS
    qn = q + rng.normal(size=q.shape) * 0.5
    rms, r_fit, t_fit = rigid_fit_residual(p, qn)
    ref, _ = Rotation.align_vectors(qn - qn.mean(0), p - p.mean(0))
    np.testing.assert_allclose(r_fit, ref.as_matrix(), atol=1e-8)
    res = qn - (p @ r_fit.T + t_fit)
    assert rms == pytest.approx(np.sqrt((res**2).sum(1).mean()), rel=1e-12)
    # a uniform scaling by s about the centroid: residual = |s - 1| x RMS distance to the centroid
    s = 1.1
    rms, _, _ = rigid_fit_residual(p, (p - p.mean(0)) * s)
    assert rms == pytest.approx(0.1 * np.sqrt(((p - p.mean(0)) ** 2).sum(1).mean()), rel=1e-9)
    with pytest.raises(ValueError, match="points"):
        rigid_fit_residual(p[:2], q[:2])


def test_organ_report_on_closed_form_transforms():
    lab = _labels2d()
    g = OrganGroups.create([BONE], [PROSTATE], [BLADDER])
    grid = lab.grid
    c = jnp.asarray(grid.center, jnp.float32)
    rig = Rigid(jnp.asarray(0.05), jnp.asarray([2.0, 1.0]), c)
    # CT fixed: organs are the CT's own labels; a rigid map is rigid, volume-preserving and orthonormal
    rows = {r["label"]: r for r in organ_report(rig, lab, g, fixed_grid=grid, moving_grid=grid, side="fixed", truth=rig)}
    for v in (BONE, PROSTATE, BLADDER):
        assert rows[v]["rigid_residual_mm"] < 1e-3
        assert abs(rows[v]["volume_change_pct"]) < 1e-3
        assert rows[v]["orthonormality_pct"] < 1e-3
        assert rows[v]["error_mm"] < 1e-5
        assert rows[v]["voxels"] == int((np.asarray(lab.data) == v).sum())
    # a scaling by 1.05: det J = 1.05^2, singular values 1.05, error |0.05 (x - c)| against the rigid truth
    sc = Affine(jnp.eye(2) * 1.05, jnp.zeros(2), c)
    rows = {r["label"]: r for r in organ_report(sc, lab, g, fixed_grid=grid, moving_grid=grid, side="fixed", truth=Affine.identity(2, center=c))}
    assert rows[BONE]["volume_change_pct"] == pytest.approx(100 * (1.05**2 - 1), rel=1e-3)
    assert rows[BONE]["orthonormality_pct"] == pytest.approx(5.0, rel=1e-3)
    pts = np.asarray(grid.world_coords())[np.asarray(lab.data) == BONE]
    assert rows[BONE]["error_mm"] == pytest.approx(np.linalg.norm(0.05 * (pts - np.asarray(c)), axis=1).mean(), rel=1e-4)
    assert rows[BONE]["rigid_residual_mm"] > 0.1
    # CT moving with the MR's labels made by the same transform: Dice 1, HD95 0, centroid error ~0
    mr_labels = warp_labels(lab, rig, grid)
    rows = organ_report(rig, lab, g, fixed_grid=grid, moving_grid=grid, side="moving", reference=mr_labels, names={BONE: "bone"})
    by = {r["label"]: r for r in rows}
    assert by[BONE]["dice"] == 1.0 and by[BONE]["hd95_mm"] == 0.0 and by[BONE]["centroid_error_mm"] < 1e-4
    assert by[BONE]["name"] == "bone" and by[BLADDER]["group"] == "compressible"
    assert any("bone" in line for line in format_organ_table(rows))
    with pytest.raises(ValueError, match="ct_labels: expected the moving image's grid"):
        organ_report(rig, lab, g, fixed_grid=grid, moving_grid=Grid.from_spacing((30, 30), (2.0, 2.0)), side="moving")


# -- the pipeline on a 2-D phantom ----------------------------------------------------------------------------
def _phantom_case():
    """"CT" (bright bone, grey organs) and an "MR" of other contrast: bone moved rigidly, bladder swollen."""
    lab = _labels2d((48, 48), (2.0, 2.0))
    lab_np = np.asarray(lab.data).copy()
    lab_np[2:46, 2:46] = np.where(lab_np[2:46, 2:46] == 0, 1, lab_np[2:46, 2:46])  # body
    lab = Image(jnp.asarray(lab_np), lab.grid)
    ct_values = {0: -1000.0, 1: 40.0, BONE: 900.0, PROSTATE: 60.0, BLADDER: 5.0}
    mr_values = {0: 0.0, 1: 0.45, BONE: 0.1, PROSTATE: 0.6, BLADDER: 0.95}
    ct = Image(jnp.asarray(np.vectorize(ct_values.get)(lab_np), jnp.float32), lab.grid)
    grid = lab.grid
    x = np.asarray(grid.world_coords())
    # truth (MR -> CT, pull): everything shifted by (2, -1.5) mm, the bladder swelling about its centre
    bc = x[lab_np == BLADDER].mean(0)
    r = np.linalg.norm(x - bc, axis=-1, keepdims=True)
    swell = -0.12 * (x - bc) * np.exp(-((r / 14.0) ** 2))
    u = np.asarray([2.0, -1.5]) + swell
    truth = DisplacementField(jnp.asarray(u, jnp.float32), grid)
    mr_lab = warp_labels(lab, truth, grid)
    mr = Image(jnp.asarray(np.vectorize(mr_values.get)(np.asarray(mr_lab.data)), jnp.float32), grid)
    return ct, lab, mr, mr_lab, truth


@pytest.fixture(scope="module")
def phantom_runs():
    ct, lab, mr, mr_lab, truth = _phantom_case()
    g = OrganGroups.create([BONE], [PROSTATE], [BLADDER])
    kw = dict(linear_levels=(Level(2, 0.0, 40), Level(1, 0.0, 30)), levels=(Level(1, 0.0, 60),))
    stages = organ_aware(lab, g, side="moving", similarity="mind", **kw)
    res = register(mr, ct, method=stages)
    again = register(mr, ct, method=organ_aware(lab, g, side="moving", similarity="mind", **kw))
    plain = organ_aware(lab, g, side="moving", similarity="mind", rigidity_weight=0.0, target_rigidity=0.0,
                        incompressibility_weight=0.0, smoothness=0.05, **kw)
    res_plain = register(mr, ct, method=plain)
    return {"ct": ct, "lab": lab, "mr": mr, "mr_lab": mr_lab, "truth": truth, "g": g, "res": res, "again": again,
            "plain": res_plain}


def test_organ_pipeline_keeps_bones_rigid_and_follows_the_bladder(phantom_runs):
    p = phantom_runs
    rows = {r["label"]: r for r in organ_report(p["res"].transform, p["lab"], p["g"], fixed_grid=p["mr"].grid, moving_grid=p["ct"].grid,
                                                 side="moving", reference=p["mr_lab"], truth=p["truth"])}
    plain = {r["label"]: r for r in organ_report(p["plain"].transform, p["lab"], p["g"], fixed_grid=p["mr"].grid, moving_grid=p["ct"].grid,
                                                  side="moving", reference=p["mr_lab"], truth=p["truth"])}
    assert rows[BONE]["error_mm"] < 1.0, rows[BONE]
    assert rows[BONE]["rigid_residual_mm"] < 0.1 and rows[BONE]["orthonormality_pct"] < 1.0, rows[BONE]
    assert rows[BONE]["rigid_residual_mm"] < plain[BONE]["rigid_residual_mm"]
    assert abs(rows[PROSTATE]["volume_change_pct"]) < 2.0
    assert rows[BLADDER]["dice"] > 0.9
    # the deformable stage improved the bladder over the rigid stage alone
    rigid_only = warp_labels(p["lab"], p["res"].stages[0].full, p["mr"].grid).data
    a, b = np.asarray(rigid_only) == BLADDER, np.asarray(p["mr_lab"].data) == BLADDER
    assert rows[BLADDER]["dice"] > 2 * (a & b).sum() / (a.sum() + b.sum())


def test_second_equal_pipeline_compiles_nothing(phantom_runs):
    res, again = phantom_runs["res"], phantom_runs["again"]
    assert all(lv.compile_seconds == 0.0 for st in again.stages for lv in st.levels)
    np.testing.assert_array_equal(np.asarray(res.transform.sample_grid(phantom_runs["mr"].grid)),
                                  np.asarray(again.transform.sample_grid(phantom_runs["mr"].grid)))


# -- command line ------------------------------------------------------------------------------------------------
def test_cli_organ_pipeline_writes_the_organ_report_and_rejects_bad_input(tmp_path, capsys):
    ct, lab, mr, mr_lab, _ = _phantom_case()
    for name, im in (("ct", ct), ("ct_labels", lab), ("mr", mr), ("mr_labels", mr_lab)):
        save_image(im, tmp_path / f"{name}.nii.gz")
    (tmp_path / "groups.toml").write_text(f"rigid = [{BONE}]\nincompressible = [{PROSTATE}]\ncompressible = [{BLADDER}]\n")
    out = tmp_path / "out"
    base = ["register", tmp_path / "mr.nii.gz", tmp_path / "ct.nii.gz", "--pipeline", "organ", "--quick"]
    rc = main([str(a) for a in base + ["-o", out, "--ct-labels", tmp_path / "ct_labels.nii.gz", "--groups",
                                      tmp_path / "groups.toml", "--labels", tmp_path / "mr_labels.nii.gz",
                                      tmp_path / "ct_labels.nii.gz"]])
    text = capsys.readouterr().out
    assert rc == 0
    for f in ("warped.nii.gz", "affine.mat", "warp.nii.gz", "organs.json", "organs.csv", "report.json", "report.png"):
        assert (out / f).is_file(), f
    organs = json.loads((out / "organs.json").read_text())
    assert [r["label"] for r in organs] == [BONE, PROSTATE, BLADDER]
    assert organs[0]["dice"] > 0.8 and organs[0]["rigid_residual_mm"] < 0.2
    assert json.loads((out / "report.json").read_text())["groups"]["rigid"] == [BONE]
    assert "rigid" in text and "organ" in text
    assert nib.load(out / "warp.nii.gz").shape[:2] == mr.grid.shape
    # the CT as the fixed image: its own labels are the organs; bones stay rigid
    rc = main([str(a) for a in ["register", tmp_path / "ct.nii.gz", tmp_path / "mr.nii.gz", "--pipeline", "organ",
                                "--quick", "-o", tmp_path / "fixed_ct", "--ct-labels", tmp_path / "ct_labels.nii.gz",
                                "--ct-side", "fixed", "--rigid", BONE, "--compressible", BLADDER]])
    capsys.readouterr()
    assert rc == 0
    rows = json.loads((tmp_path / "fixed_ct" / "organs.json").read_text())
    assert [r["label"] for r in rows] == [BONE, BLADDER] and rows[0]["rigid_residual_mm"] < 0.2
    # bad inputs: one-line errors naming the argument, nothing written
    bad = [
        (["--ct-labels", tmp_path / "mr_labels_small.nii.gz", "--groups", tmp_path / "groups.toml"], "--ct-labels"),
        (["--ct-labels", tmp_path / "ct_labels.nii.gz", "--rigid", BONE, "--compressible", BONE], "also listed"),
        (["--ct-labels", tmp_path / "ct_labels.nii.gz", "--rigid", 42], "do not occur"),
        (["--groups", tmp_path / "groups.toml"], "--ct-labels"),
        (["--ct-labels", tmp_path / "ct_labels.nii.gz"], "--groups"),
    ]
    small = Image(lab.data[:40], Grid.from_spacing((40, 48), (2.0, 2.0)))
    save_image(small, tmp_path / "mr_labels_small.nii.gz")
    for i, (extra, frag) in enumerate(bad):
        o = tmp_path / f"bad{i}"
        rc = main([str(a) for a in base + ["-o", o] + extra])
        err = capsys.readouterr().err
        assert rc == 2 and frag in err, (extra, err)
        assert not o.exists()


# -- region-rigid transform and its stage ----------------------------------------------------------------------
def test_region_rigid_is_rigid_inside_identity_outside_and_blends_between():
    from jaxreg.transforms import RegionRigid

    grid = Grid.from_spacing((30, 30), (2.0, 2.0))
    x = np.asarray(grid.world_coords())
    w = np.clip(1.0 - (np.linalg.norm(x - [30.0, 30.0], axis=-1) - 8.0) / 10.0, 0.0, 1.0)
    c = jnp.asarray([30.0, 30.0])
    t = RegionRigid(jnp.asarray(0.1 * 50.0), jnp.asarray([2.0, -1.0]), c, jnp.asarray(w, jnp.float32), grid, 50.0)
    rig = Rigid(jnp.asarray(0.1), jnp.asarray([2.0, -1.0]), c)
    out, ref = np.asarray(t(jnp.asarray(x))), np.asarray(rig(jnp.asarray(x)))
    inside, outside = w == 1.0, w == 0.0
    np.testing.assert_allclose(out[inside], ref[inside], atol=1e-4)
    np.testing.assert_allclose(out[outside], x[outside], atol=1e-5)
    mid = (w > 0) & (w < 1)
    np.testing.assert_allclose(out[mid], x[mid] + w[mid, None] * (ref[mid] - x[mid]), atol=1e-4)
    # the map is frozen: no gradient reaches it, the motion parameters get one
    g = jax.grad(lambda p: jnp.sum(p(jnp.asarray(x)) ** 2))(t)
    assert float(jnp.abs(g.weight).max()) == 0.0 and float(jnp.abs(g.translation).max()) > 0


def test_region_stage_searches_past_a_local_minimum_and_leaves_the_rest_in_place():
    """A 2-D blob that moved 6 mm on its own inside a static frame with a decoy edge: the lattice search starts
    the region stage in the right basin; the rest of the image does not move."""
    from jaxreg.optimize import Gradient, Optimizer, Region, Stage, Stopping
    from jaxreg.optimize.objective import objective, similarity_term

    grid = Grid.from_spacing((48, 48), (2.0, 2.0))
    x = np.asarray(grid.world_coords())
    frame = ((np.abs(x[..., 0] - 47) < 40) & (np.abs(x[..., 1] - 47) < 40)).astype(np.float32)
    blob = lambda cx, cy: (np.linalg.norm(x - [cx, cy], axis=-1) < 7).astype(np.float32)  # noqa: E731
    moving = Image(jnp.asarray(0.3 * frame + 0.7 * blob(47, 47)), grid)
    fixed = Image(jnp.asarray(1.0 - (0.3 * frame + 0.7 * blob(47, 53))), grid)  # other contrast, blob +6 mm in y
    lab = Image(jnp.asarray(blob(47, 47).astype(np.int32) * PROSTATE), grid)
    d = np.linalg.norm(x - [47, 47], axis=-1)
    region = Image(jnp.asarray(np.clip(1 - (d - 12) / 10, 0, 1), jnp.float32), grid)
    focus = label_weight_map(lab, [PROSTATE], dilate_mm=8.0)
    method = Gradient(
        objective(similarity_term(weight_mapped("nmi(bins=16)", focus, side="moving", kind="similarity"))),
        Optimizer("adam", 0.1),
        Stopping(tol=1e-6),
    )
    stage = Stage(method, Region(region, side="moving", search_mm=(8.0, 2.0)), (Level(1, 0.0, 40),), name="target")
    res = register(fixed, moving, method=(stage,))
    assert res.stages[0].start.startswith("search(")
    t = res.transform
    np.testing.assert_allclose(np.asarray(t(jnp.asarray([[47.0, 53.0]]))), [[47.0, 47.0]], atol=1.0)
    np.testing.assert_allclose(np.asarray(t(jnp.asarray([[10.0, 10.0]]))), [[10.0, 10.0]], atol=1e-4)
    with pytest.raises(ValueError, match="model.search_mm"):
        register(fixed, moving, method=(stage._replace(model=Region(region, search_mm=(1.0, -1.0))),))
