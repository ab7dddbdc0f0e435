"""Synthetic adaptive-radiotherapy cases (jaxreg.radiotherapy.synthesis) against independent references.

Two cases are drawn once per module: a small phantom built here (ellipsoid bones, bladder, prostate and rectum
in a fake HU volume, no data needed) and the shared pelvis CT downsampled to 6 mm (skipped when
``../shared/data/pelvis_ct`` is absent). Their truths are checked with independent NumPy/SciPy code:

* rigid structures: ``truth(x) = M x`` over the structure's MR voxels (``M`` from ``motion["matrices"]``), and a
  Kabsch/Procrustes fit of ``x -> truth(x)`` has a sub-0.1 mm residual;
* the bladder: the mean Jacobian determinant over the MR bladder is ``1 / (1 + dV)`` (the MR bladder holds
  ``1 + dV`` times the CT volume) and so, within the discretisation, is the ratio of voxel counts;
* the mapping is a diffeomorphism (``det J > 0``, :func:`jaxreg.evaluation.jacobian_statistics`);
* the MR has T2-like contrast, the body mask covers the body, the same key gives bit-identical cases;
* :func:`save_case` writes readable NIfTIs on the right grids atomically, and bad inputs raise ValueErrors that
  name the argument.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from jaxreg.core.grid import Grid, Image
from jaxreg.evaluation import jacobian_statistics
from jaxreg.radiotherapy.groups import OrganGroups
from jaxreg.radiotherapy.synthesis import DailyCase, save_case, synthesize_daily_case
from jaxreg.transforms.linear import Translation
from jaxreg.warp import resample, warp_labels

PELVIS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "pelvis_ct"
PHANTOM_GROUPS = OrganGroups.create(rigid=(25, 75, 76, 77, 78), incompressible=(22,), compressible=(20, 21))
PHANTOM_OPTIONS = dict(mr_spacing=4.0, mr_margin_mm=12.0)


# -- independent references ------------------------------------------------------------------------------------
def kabsch(p: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Least-squares rigid ``q ~ R p + t`` (Kabsch 1976, SVD with the reflection fix) and its RMS residual."""
    pc, qc = p.mean(0), q.mean(0)
    u, _, vt = np.linalg.svd((p - pc).T @ (q - qc))
    d = np.diag([1.0, 1.0, np.sign(np.linalg.det(vt.T @ u.T))])
    r = vt.T @ d @ u.T
    t = qc - r @ pc
    return r, t, float(np.sqrt(np.mean(np.sum((p @ r.T + t - q) ** 2, axis=1))))


def points(case: DailyCase) -> tuple[np.ndarray, np.ndarray]:
    """MR voxel centres ``x`` and ``truth(x)`` (world mm, float64), each ``(*mr.shape, 3)``."""
    g = case.truth.grid
    x = np.asarray(g.world_coords(jnp.float32), np.float64)
    return x, x + np.asarray(case.truth.displacement, np.float64)


def apply(m: list, p: np.ndarray) -> np.ndarray:
    m = np.asarray(m)
    return p @ m[:3, :3].T + m[:3, 3]


def distance_at(case: DailyCase, labels: tuple[int, ...], y: np.ndarray) -> np.ndarray:
    """Distance (mm) from CT points ``y`` to the nearest CT voxel of ``labels`` (scipy EDT, linear sampling)."""
    g = case.ct_labels.grid
    lab = np.asarray(case.ct_labels.data)
    d = ndi.distance_transform_edt(~np.isin(lab, labels), sampling=g.spacing)
    idx = (y - g.affine[:3, 3]) @ np.linalg.inv(g.affine[:3, :3]).T
    return ndi.map_coordinates(d, np.moveaxis(idx, -1, 0), order=1, mode="nearest")


def check_rigid(
    case: DailyCase, label: int, sel: np.ndarray, *, tol: float = 0.05, min_voxels: int = 10
) -> None:
    """``truth = M`` on the selected voxels of ``label`` and the Kabsch fit is rigid to 0.1 mm RMS."""
    x, y = points(case)
    mask = (np.asarray(case.mr_labels.data) == label) & sel
    assert mask.sum() >= min_voxels, (label, int(mask.sum()))
    err = np.linalg.norm(apply(case.motion["matrices"][str(label)], x[mask]) - y[mask], axis=1)
    assert err.max() < tol, (label, float(err.max()))
    r, t, rms = kabsch(x[mask], y[mask])
    assert rms < 0.1, (label, rms)
    assert np.allclose(r, np.asarray(case.motion["matrices"][str(label)])[:3, :3], atol=1e-3), label


def check_bladder(case: DailyCase, *, count_tol: float) -> None:
    b = case.motion["bladder"]
    mr_bladder = np.asarray(case.mr_labels.data) == b["label"]
    stats = jacobian_statistics(case.truth, case.truth.grid, mask=mr_bladder)
    # MR volume * mean det J = CT volume: the mean det J over the MR bladder is 1 / (1 + dV)
    assert float(stats.mean) * b["volume_factor"] == pytest.approx(1.0, abs=0.02)
    ct_ml = np.sum(np.asarray(case.ct_labels.data) == b["label"]) * np.prod(case.ct.grid.spacing) / 1000
    mr_ml = mr_bladder.sum() * np.prod(case.mr.grid.spacing) / 1000
    assert mr_ml / ct_ml == pytest.approx(b["volume_factor"], rel=count_tol)


# -- the phantom ----------------------------------------------------------------------------------------------
def make_phantom(spacing: float = 4.0, shape: tuple[int, int, int] = (56, 44, 44)) -> tuple[Image, Image]:
    """A fake pelvis CT (HU) and its labels: hips 77/78, sacrum 25, femurs 75/76 (a 7 mm joint gap), bladder 21,
    prostate 22 and rectum 20 (with gas) in muscle (40 HU) under a fat layer (-100 HU), air outside."""
    grid = Grid.centered(shape, spacing)
    x = np.asarray(grid.world_coords(jnp.float32), np.float64)

    def ellipsoid(c, r):
        return np.sum(((x - np.asarray(c)) / np.asarray(r)) ** 2, axis=-1) <= 1.0

    hu = np.full(shape, -1000.0, np.float32)
    lab = np.zeros(shape, np.int32)
    hu[ellipsoid((0, 0, 0), (105, 85, 200))] = -100.0
    hu[ellipsoid((0, 0, 0), (95, 75, 200))] = 40.0
    for label, c, r, value in (
        (77, (-60, 0, 25), (22, 35, 35), 600.0),
        (78, (60, 0, 25), (22, 35, 35), 600.0),
        (25, (0, -55, 25), (25, 14, 35), 500.0),
        (75, (-62, 0, -45), (13, 13, 28), 700.0),
        (76, (62, 0, -45), (13, 13, 28), 700.0),
        (21, (0, 35, 15), (38, 26, 26), 10.0),
        (22, (0, 30, -38), (14, 11, 11), 40.0),
        (20, (0, -30, -25), (14, 14, 40), 30.0),
    ):
        m = ellipsoid(c, r)
        hu[m], lab[m] = value, label
    hu[ellipsoid((0, -30, -10), (6, 6, 6))] = -900.0  # rectal gas
    return Image(jnp.asarray(hu), grid), Image(jnp.asarray(lab), grid)


@pytest.fixture(scope="module")
def phantom():
    return make_phantom()


@pytest.fixture(scope="module")
def phantom_case(phantom):
    ct, labels = phantom
    return synthesize_daily_case(jax.random.key(0), ct, labels, PHANTOM_GROUPS, **PHANTOM_OPTIONS)


def test_phantom_truth_is_rigid_on_bones_and_prostate(phantom_case):
    x, _ = points(phantom_case)
    everywhere = np.ones(x.shape[:-1], bool)
    for label in (25, 75, 76, 77, 78, 22):
        check_rigid(phantom_case, label, everywhere)
    m = phantom_case.motion
    # the pelvic bones share one motion; the femurs and the prostate move on top of it
    assert m["matrices"]["25"] == m["matrices"]["77"] == m["matrices"]["78"] == m["pelvis"]["matrix"]
    for label in ("75", "76", "22"):
        assert not np.allclose(m["matrices"][label], m["pelvis"]["matrix"], atol=1e-3)
    assert 0 < m["femurs"]["75"]["rotation_deg"] <= 2.0
    assert np.all(np.abs(m["incompressible"]["22"]["translation_mm"]) <= 5.0)


def test_phantom_bladder_volume_and_diffeomorphism(phantom_case):
    b = phantom_case.motion["bladder"]
    assert -0.3 <= b["dV"] <= 0.3 and b["volume_factor"] == pytest.approx(1 + b["dV"])
    check_bladder(phantom_case, count_tol=0.07)  # 4 mm voxels: the count of a 100 ml bladder is coarse
    stats = jacobian_statistics(phantom_case.truth, phantom_case.truth.grid)
    assert int(stats.num_nonpositive) == 0 and float(stats.min) > 0.1
    assert phantom_case.motion["truth"]["folding_voxels"] == 0


def test_phantom_mr_contrast_and_body(phantom_case):
    mr = np.asarray(phantom_case.mr.data)
    lab = np.asarray(phantom_case.mr_labels.data)
    assert mr.dtype == np.float32 and lab.dtype == np.int32
    assert phantom_case.mr.grid == phantom_case.truth.grid == phantom_case.body.grid
    assert np.allclose(phantom_case.mr.grid.spacing, 4.0)

    def median(sel):
        return float(np.median(mr[sel]))

    _, y = points(phantom_case)  # the CT number at truth(x): the tissue class of unlabelled voxels
    g = phantom_case.ct.grid
    idx = (y - g.affine[:3, 3]) @ np.linalg.inv(g.affine[:3, :3]).T
    ct_hu = ndi.map_coordinates(np.asarray(phantom_case.ct.data), np.moveaxis(idx, -1, 0), order=0)
    urine, prostate, bone = median(lab == 21), median(lab == 22), median(np.isin(lab, (77, 78)))
    fat = median((lab == 0) & (ct_hu < -50) & (ct_hu > -500))
    muscle = median((lab == 0) & (ct_hu > 20) & (ct_hu < 100))
    body = np.asarray(phantom_case.body.data)
    air = median(body == 0)
    assert urine > fat > prostate > muscle > bone > air, (urine, fat, prostate, muscle, bone, air)
    assert air < 0.1 and 0.7 < urine < 1.3
    # the body mask: closed and filled (the rectal gas inside it), only background outside
    assert set(np.unique(body)) == {0, 1} and body.dtype == np.uint8
    assert np.all(lab[body == 0] == 0) and np.all(body[lab > 0] == 1)


def test_determinism_per_key(phantom, phantom_case):
    ct, labels = phantom
    again = synthesize_daily_case(jax.random.key(0), ct, labels, PHANTOM_GROUPS, **PHANTOM_OPTIONS)
    for a, b in ((again.mr, phantom_case.mr), (again.mr_labels, phantom_case.mr_labels),
                 (again.body, phantom_case.body)):  # fmt: skip
        assert np.array_equal(np.asarray(a.data), np.asarray(b.data))
    assert np.array_equal(np.asarray(again.truth.displacement), np.asarray(phantom_case.truth.displacement))
    assert json.dumps(again.motion) == json.dumps(phantom_case.motion)
    other = synthesize_daily_case(jax.random.key(1), ct, labels, PHANTOM_GROUPS, **PHANTOM_OPTIONS)
    assert other.mr.grid == phantom_case.mr.grid  # the grids do not depend on the draw
    assert not np.allclose(np.asarray(other.truth.displacement), np.asarray(phantom_case.truth.displacement))
    assert not np.allclose(np.asarray(other.mr.data), np.asarray(phantom_case.mr.data))
    assert other.motion["pelvis"]["matrix"] != phantom_case.motion["pelvis"]["matrix"]


def test_save_case(phantom_case, tmp_path):
    out = tmp_path / "case"
    paths = save_case(phantom_case, out)
    assert set(paths) == {"ct", "ct_labels", "mr", "mr_labels", "body", "truth", "motion"}
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths.values())  # no temporary files
    for name, image in (("ct", phantom_case.ct), ("mr", phantom_case.mr), ("mr_labels", phantom_case.mr_labels),
                        ("body", phantom_case.body)):  # fmt: skip
        nii = nib.load(paths[name])
        assert np.allclose(nii.affine, image.grid.affine, atol=1e-4), name
        assert np.array_equal(np.asanyarray(nii.dataobj), np.asarray(image.data)), name
    assert nib.load(paths["mr_labels"]).get_data_dtype() == np.int32
    warp = nib.load(paths["truth"])  # ITK/ANTs displacement field: (X, Y, Z, 1, 3) LPS vectors
    assert warp.shape == (*phantom_case.truth.grid.shape, 1, 3)
    assert np.allclose(warp.affine, phantom_case.truth.grid.affine, atol=1e-4)
    lps = np.asanyarray(warp.dataobj)[:, :, :, 0, :]
    assert np.allclose(lps * [-1, -1, 1], np.asarray(phantom_case.truth.displacement), atol=1e-5)
    assert json.loads(paths["motion"].read_text()) == json.loads(json.dumps(phantom_case.motion))
    # an existing file as the output folder, or an output that is an input, is refused
    with pytest.raises(ValueError, match="outdir"):
        save_case(phantom_case, paths["motion"])
    with pytest.raises(ValueError, match="input"):
        save_case(phantom_case, out, inputs=[paths["ct"]])


def test_bad_inputs_name_the_argument(phantom):
    ct, labels = phantom
    key = jax.random.key(0)
    cropped = Image(labels.data[:-2], Grid(labels.data[:-2].shape, labels.grid.affine))
    finer = Image(labels.data, Grid.centered(labels.grid.shape, 3.0))
    for bad in (cropped, finer):  # labels on another grid than the CT
        with pytest.raises(ValueError, match="ct_labels"):
            synthesize_daily_case(key, ct, bad, PHANTOM_GROUPS)
    absent = OrganGroups.create(rigid=(25, 99), incompressible=(22,), compressible=(21,))
    with pytest.raises(ValueError, match="99.*ct_labels"):
        synthesize_daily_case(key, ct, labels, absent)
    with pytest.raises(ValueError, match="mr_spacing"):
        synthesize_daily_case(key, ct, labels, PHANTOM_GROUPS, mr_spacing=(2.0, 0.0, 2.0))
    with pytest.raises(ValueError, match="bladder_volume"):
        synthesize_daily_case(key, ct, labels, PHANTOM_GROUPS, bladder_volume=(-1.5, 0.2))
    with pytest.raises(ValueError, match="bladder"):
        synthesize_daily_case(key, ct, labels, PHANTOM_GROUPS, bladder=19)
    with pytest.raises(TypeError, match="groups"):
        synthesize_daily_case(key, ct, labels, {"rigid": (25,)})


# -- the shared pelvis CT, downsampled ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pelvis_case():
    if not PELVIS.is_dir():
        pytest.skip(f"shared pelvis CT not found at {PELVIS}")
    from jaxreg.io import load_image, load_labels
    from jaxreg.radiotherapy.groups import load_groups

    ct = load_image(PELVIS / "ct.nii.gz")
    labels = load_labels(PELVIS / "labels.nii.gz")
    groups = load_groups(PELVIS / "labels.json")
    grid = ct.grid.downsample(2)  # 6 mm
    ct6 = resample(Image(ct.data.astype(jnp.float32), ct.grid), grid, order=1, mode="nearest")
    labels6 = warp_labels(labels, Translation.identity(3), grid)
    return synthesize_daily_case(jax.random.key(3), ct6, labels6, groups, mr_spacing=5.0), groups


def test_pelvis_ct_truth(pelvis_case):
    case, groups = pelvis_case
    x, y = points(case)
    m = case.motion
    femurs = (75, 76)
    pelvis = tuple(v for v in groups.rigid if v not in femurs)
    ct_diag = float(np.linalg.norm(case.ct.grid.spacing))
    # bones: rigid everywhere except within one CT voxel of the femur/hip contact (the sliding hip joint, where
    # both sides follow a blend: bounded by the femur's rotation times the head radius)
    for label in groups.rigid:
        others = femurs if label not in femurs else tuple(v for v in groups.rigid if v != label)
        away = distance_at(case, others, y) > ct_diag
        check_rigid(case, label, away)
        sel = np.asarray(case.mr_labels.data) == label
        err = np.linalg.norm(apply(m["matrices"][str(label)], x[sel]) - y[sel], axis=1)
        assert err.max() < np.deg2rad(2.0) * 35.0, (label, float(err.max()))
    # the prostate: rigid wherever its path (its displacement relative to the pelvis, ``rel``) and one
    # interpolation stencil (an MR voxel diagonal) stay clear of the bones (their CT voxels, 0.65 CT voxel
    # diagonals) and of the bones' protective fall-off (as wide as the prostate's speed there, plus 1 mm); its
    # apex, a few mm from the pubic bone, is held towards the pelvis; the rest of the gland (most) is rigid
    rel = np.linalg.norm(apply(m["matrices"]["22"], x) - apply(m["pelvis"]["matrix"], x), axis=-1)
    reach = np.linalg.norm(case.mr.grid.spacing) + 0.65 * ct_diag + 1.5 + 2.2 * rel
    clear = distance_at(case, groups.rigid, y) > reach
    check_rigid(case, 22, clear, min_voxels=4)
    prostate = np.asarray(case.mr_labels.data) == 22
    err = np.linalg.norm(apply(m["matrices"]["22"], x[prostate]) - y[prostate], axis=1)
    assert np.mean(err < 0.05) > 0.5 and err.max() < 2 * np.max(rel[prostate]) + 0.05
    assert m["matrices"]["25"] == m["pelvis"]["matrix"]
    check_bladder(case, count_tol=0.06)
    stats = jacobian_statistics(case.truth, case.truth.grid)
    assert int(stats.num_nonpositive) == 0 and float(stats.min) > 0.1
    # the MR box holds the bladder, prostate and femoral heads and stays inside the CT
    lab = np.asarray(case.mr_labels.data)
    assert all(np.any(lab == v) for v in (21, 22, 75, 76, 77, 78))
    corners = np.asarray(case.mr.grid.index_to_world(np.array([[0, 0, 0], np.asarray(case.mr.grid.shape) - 1])))
    ct_idx = np.asarray(case.ct.grid.world_to_index(corners))
    assert np.all(ct_idx >= -1e-3) and np.all(ct_idx <= np.asarray(case.ct.grid.shape) - 1 + 1e-3)
