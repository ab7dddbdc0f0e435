"""Evaluation metrics: overlap vs NumPy, EDT and surface distances vs ``scipy.ndimage`` on anisotropic grids
(both the traced JAX path and the concrete host path), TRE, and Jacobian statistics on analytic fields."""

from __future__ import annotations

import inspect
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage as ndi

import jaxreg.evaluation as E
from jaxreg import Affine, DisplacementField, Grid, Translation, VelocityField
from jaxreg.transforms import euler_to_matrix


# ---- overlap -----------------------------------------------------------------------------------------------
def np_dice(a, b, lab):
    x, y = a == lab, b == lab
    s = x.sum() + y.sum()
    return np.nan if s == 0 else 2 * np.sum(x & y) / s


def test_dice_jaccard_vs_numpy_with_missing_labels():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 6, (23, 17, 9))
    b = rng.integers(0, 6, (23, 17, 9))
    a[a == 4] = 0  # label 4 only in b
    labels = [1, 2, 3, 4, 5, 9]  # 9 in neither
    ov = E.overlap(a, b, labels=labels)
    ref = np.array([np_dice(a, b, lab) for lab in labels])
    np.testing.assert_allclose(ov.dice, ref, rtol=1e-6)
    np.testing.assert_allclose(ov.jaccard, ref / (2 - ref), rtol=1e-6)
    assert float(ov.dice[3]) == 0.0 and np.isnan(float(ov.dice[5]))
    np.testing.assert_array_equal(ov.present_a, [True, True, True, False, True, False])
    np.testing.assert_array_equal(ov.present_b, [True, True, True, True, True, False])
    np.testing.assert_array_equal(ov.count_a, [np.sum(a == lab) for lab in labels])
    np.testing.assert_array_equal(ov.intersection, [np.sum((a == lab) & (b == lab)) for lab in labels])
    # the mean counts the one-sided label as 0 and skips the absent one
    np.testing.assert_allclose(E.mean_dice(a, b, labels=labels), np.nanmean(ref), rtol=1e-6)
    assert np.isnan(float(E.mean_dice(a, b, labels=[9, 10])))
    np.testing.assert_allclose(E.dice(a, a, labels=[1, 2]), [1.0, 1.0])
    np.testing.assert_allclose(E.jaccard(a, b, labels=labels), ov.jaccard)


def test_dice_labels_order_unlisted_values_and_negative_labels():
    a = np.array([[0, 1, 2], [2, -3, 7]])
    b = np.array([[0, 1, 1], [2, -3, 8]])
    d = E.dice(a, b, labels=[2, -3, 1])
    np.testing.assert_allclose(d, [np_dice(a, b, 2), 1.0, np_dice(a, b, 1)], rtol=1e-6)


def test_dice_jit_traced_labels_and_vmap():
    rng = np.random.default_rng(1)
    a = jnp.asarray(rng.integers(0, 4, (3, 12, 14)))
    b = jnp.asarray(rng.integers(0, 4, (3, 12, 14)))
    labels = jnp.array([1, 2, 3])
    f = jax.jit(lambda x, y, labs: E.dice(x, y, labels=labs))
    out = jax.vmap(lambda x, y: f(x, y, labels))(a, b)
    loop = np.stack([[np_dice(np.asarray(x), np.asarray(y), lab) for lab in (1, 2, 3)] for x, y in zip(a, b)])
    np.testing.assert_allclose(out, loop, rtol=1e-6)


def test_overlap_errors():
    with pytest.raises(ValueError, match="same shape"):
        E.dice(np.zeros((3, 4), int), np.zeros((4, 3), int), labels=[1])
    with pytest.raises(ValueError, match="duplicates"):
        E.dice(np.zeros((3, 4), int), np.zeros((3, 4), int), labels=[1, 1])
    with pytest.raises(ValueError, match="integer label map"):
        E.dice(np.zeros((3, 4)), np.zeros((3, 4)), labels=[1])


def test_soft_dice():
    rng = np.random.default_rng(2)
    a = rng.integers(0, 4, (10, 11))
    b = rng.integers(0, 4, (10, 11))
    b[b == 3] = 0
    p, q = jax.nn.one_hot(a, 5), jax.nn.one_hot(b, 5)
    sd = E.soft_dice(p, q)
    ref = E.dice(a, b, labels=range(5))
    np.testing.assert_allclose(sd[:4], ref[:4], rtol=1e-5, atol=1e-6)  # up to eps
    np.testing.assert_allclose(sd[4], 1.0)  # empty in both: 1, not NaN (a loss must stay finite)
    g = jax.grad(lambda x: jnp.sum(E.soft_dice(jax.nn.softmax(x), q)))(jnp.zeros((10, 11, 5)))
    assert np.all(np.isfinite(np.asarray(g))) and float(jnp.abs(g).max()) > 0
    mask = np.zeros((10, 11))
    mask[:5] = 1
    np.testing.assert_allclose(E.soft_dice(p, q, mask=mask)[:3], E.soft_dice(p[:5], q[:5])[:3], rtol=1e-6)


# ---- distance transform and surfaces -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "shape,spacing",
    [((40,), (0.7,)), ((31, 40), (1.0, 2.5)), ((24, 20, 28), (0.7, 1.3, 2.0)), ((9, 1, 12), 1.5)],
)
def test_edt_matches_scipy(shape, spacing):
    rng = np.random.default_rng(len(shape))
    features = rng.random(shape) < 0.02
    features.flat[0] = True
    ref = ndi.distance_transform_edt(~features, sampling=spacing)
    got = E.euclidean_distance_transform(features, spacing=spacing)
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(
        E.euclidean_distance_transform(features, spacing=spacing, squared=True), ref**2, rtol=1e-5, atol=1e-4
    )
    jitted = jax.jit(lambda f: E.euclidean_distance_transform(f, spacing=spacing))
    np.testing.assert_allclose(jitted(features), ref, rtol=1e-6, atol=1e-5)
    assert np.all(
        np.isinf(np.asarray(E.euclidean_distance_transform(np.zeros(shape, bool), spacing=spacing)))
    )


def test_edt_single_feature_and_far_lines():
    f = np.zeros((50, 3, 60), bool)
    f[0, 0, 0] = True  # most lines have no feature: distances must still reach across the whole volume
    ref = ndi.distance_transform_edt(~f, sampling=(1.0, 3.0, 0.5))
    np.testing.assert_allclose(E.euclidean_distance_transform(f, spacing=(1.0, 3.0, 0.5)), ref, rtol=1e-6)


@pytest.mark.parametrize("ndim,connectivity", [(2, 1), (2, 2), (3, 1), (3, 2), (3, 3)])
def test_surface_matches_scipy_erosion(ndim, connectivity):
    rng = np.random.default_rng(ndim + connectivity)
    mask = ndi.gaussian_filter(rng.random((20, 22, 18)[:ndim]), 2) > 0.5
    mask[0] = True  # touches the border: surface there (border counts as background)
    st = ndi.generate_binary_structure(ndim, connectivity)
    ref = mask & ~ndi.binary_erosion(mask, structure=st, border_value=0)
    np.testing.assert_array_equal(E.surface(mask, connectivity=connectivity), ref)


# ---- surface distances -------------------------------------------------------------------------------------
def reference_surface_distances(a, b, spacing, percentile, connectivity=1, pooled=False):
    """Independent reference: scipy erosion surfaces and scipy EDTs (the MedPy recipe)."""
    st = ndi.generate_binary_structure(a.ndim, connectivity)
    sa = a & ~ndi.binary_erosion(a, structure=st, border_value=0)
    sb = b & ~ndi.binary_erosion(b, structure=st, border_value=0)
    d_ab = ndi.distance_transform_edt(~sb, sampling=spacing)[sa]
    d_ba = ndi.distance_transform_edt(~sa, sampling=spacing)[sb]
    hd = max(d_ab.max(), d_ba.max())
    if pooled:
        hdp = np.percentile(np.hstack([d_ab, d_ba]), percentile)
    else:
        hdp = max(np.percentile(d_ab, percentile), np.percentile(d_ba, percentile))
    return hd, hdp, 0.5 * (d_ab.mean() + d_ba.mean())


def random_shapes(shape, seed, sigma=2.5):
    rng = np.random.default_rng(seed)
    a = ndi.gaussian_filter(rng.random(shape), sigma) > 0.52
    b = ndi.gaussian_filter(rng.random(shape), sigma) > 0.52
    return a, b


SHAPES = [((40, 52), (0.8, 2.1)), ((30, 26, 22), (0.9, 1.4, 2.5)), ((25, 30, 20), (1.0, 1.0, 1.0))]


@pytest.mark.parametrize("shape,spacing", SHAPES)
@pytest.mark.parametrize("pooled", [False, True])
def test_surface_distances_match_scipy_host_and_jit(shape, spacing, pooled):
    a, b = random_shapes(shape, seed=len(shape) + int(pooled))
    for p in (95.0, 100.0, 50.0):
        hd, hdp, assd = reference_surface_distances(a, b, spacing, p, pooled=pooled)
        host = E.surface_distances(a, b, spacing=spacing, percentile=p, pooled=pooled)
        np.testing.assert_allclose(host, [hd, hdp, assd], rtol=1e-5)
        if p == 95.0:  # the traced (all-JAX) path: one compilation per test
            traced = jax.jit(
                lambda x, y: E.surface_distances(x, y, spacing=spacing, percentile=p, pooled=pooled)
            )
            np.testing.assert_allclose(traced(a, b), [hd, hdp, assd], rtol=1e-5)
    np.testing.assert_allclose(E.hausdorff(a, b, spacing=spacing), hd, rtol=1e-5)
    np.testing.assert_allclose(
        E.hausdorff(a, b, spacing=spacing, percentile=95, pooled=pooled),
        reference_surface_distances(a, b, spacing, 95, pooled=pooled)[1],
        rtol=1e-5,
    )
    np.testing.assert_allclose(E.average_surface_distance(a, b, spacing=spacing), assd, rtol=1e-5)


def test_surface_distances_full_connectivity_and_symmetry():
    a, b = random_shapes((26, 24, 20), seed=7)
    sp = (1.2, 0.8, 2.0)
    ref = reference_surface_distances(a, b, sp, 95, connectivity=3)
    np.testing.assert_allclose(E.surface_distances(a, b, spacing=sp, connectivity=3), ref, rtol=1e-5)
    np.testing.assert_allclose(
        E.surface_distances(a, b, spacing=sp), E.surface_distances(b, a, spacing=sp), rtol=1e-6
    )
    assert np.allclose(E.surface_distances(a, a, spacing=sp), 0.0)


def test_surface_distances_known_values_and_empty_masks():
    # two points 3 voxels apart along an axis of spacing 2 mm: every distance is 6 mm
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[2, 5], b[5, 5] = True, True
    np.testing.assert_allclose(E.surface_distances(a, b, spacing=(2.0, 1.0)), [6.0, 6.0, 6.0])
    # a square and the same square shifted by one voxel along axis 1 (spacing 0.5)
    a = np.zeros((12, 12), bool)
    a[3:8, 3:8] = True
    b = np.roll(a, 1, axis=1)
    np.testing.assert_allclose(E.hausdorff(a, b, spacing=(1.0, 0.5)), 0.5)
    empty = np.zeros((12, 12), bool)
    for fn in (
        lambda x, y: E.surface_distances(x, y, spacing=1.0),
        jax.jit(lambda x, y: E.surface_distances(x, y, spacing=1.0)),
    ):
        assert np.all(np.isnan(np.asarray(fn(empty, empty))))
        assert np.all(np.isinf(np.asarray(fn(a, empty))))
        assert np.all(np.isinf(np.asarray(fn(empty, a))))


def test_traced_path_when_axis_bounds_miss():
    """Query voxels whose axis lines meet no surface voxel of the other mask: the capped EDT cannot vouch for
    them, so the traced path must fall back to the full transform (here the far point is 14.1 mm away)."""
    for far in ((10, 10), (1, 1)):
        a = np.zeros((12, 12), bool)
        b = np.zeros((12, 12), bool)
        a[1, 0] = a[far] = True
        b[0, 0] = True
        ref = reference_surface_distances(a, b, (1.0, 1.0), 95)
        traced = jax.jit(lambda x, y: E.surface_distances(x, y, spacing=(1.0, 1.0)))(a, b)
        np.testing.assert_allclose(traced, ref, rtol=1e-6)
        np.testing.assert_allclose(E.surface_distances(a, b, spacing=1.0), ref, rtol=1e-6)


def test_surface_distances_vmap_equals_loop():
    pairs = [random_shapes((20, 24), seed=s) for s in range(3)]
    a = jnp.asarray(np.stack([p[0] for p in pairs]))
    b = jnp.asarray(np.stack([p[1] for p in pairs]))
    out = jax.vmap(lambda x, y: E.surface_distances(x, y, spacing=(1.0, 1.5)))(a, b)
    loop = np.array([reference_surface_distances(x, y, (1.0, 1.5), 95) for x, y in pairs])
    np.testing.assert_allclose(np.stack(out, -1), loop, rtol=1e-5)


def test_per_label_surface_distances():
    rng = np.random.default_rng(11)
    base = ndi.gaussian_filter(rng.random((30, 28, 24)), 3)
    a = np.digitize(base, np.quantile(base, [0.2, 0.45, 0.7, 0.9])).astype(np.int32)
    b = np.roll(a, (1, -2, 1), axis=(0, 1, 2))
    b[b == 3] = 0  # label 3 missing from b
    labels = [1, 2, 3, 4, 6]  # 6 in neither; 0 is background
    sp = (1.1, 0.9, 1.7)
    res = E.surface_distances_per_label(a, b, labels=labels, spacing=sp)
    for i, lab in enumerate(labels):
        if lab in (3, 6):
            continue
        np.testing.assert_allclose(
            [res.hausdorff[i], res.percentile[i], res.assd[i]],
            reference_surface_distances(a == lab, b == lab, sp, 95),
            rtol=1e-5,
        )
    assert np.isinf(float(res.percentile[2])) and np.isnan(float(res.percentile[4]))
    np.testing.assert_allclose(E.hd95_per_label(a, b, labels=labels, spacing=sp), res.percentile)
    with pytest.raises(ValueError, match="same shape"):
        E.hd95_per_label(a, b[:-1], labels=labels, spacing=sp)


def test_per_label_negative_and_huge_label_values():
    a = np.zeros((10, 10), np.int64)
    a[2:5, 2:5], a[6:8, 6:8], a[0:2, 7:9] = 10**9, 3, -4
    b = np.roll(a, 1, axis=0)
    hd = E.hd95_per_label(a, b, labels=[10**9, 3, -4, 7], spacing=(1.0, 2.0))
    np.testing.assert_allclose(hd[:3], 1.0)
    assert np.isnan(float(hd[3]))


def test_distance_argument_errors():
    a = np.ones((5, 5), bool)
    with pytest.raises(ValueError, match="spacing"):
        E.hausdorff(a, a, spacing=(1.0, 0.0))
    with pytest.raises(ValueError, match="percentile"):
        E.hausdorff(a, a, spacing=1.0, percentile=101)
    with pytest.raises(ValueError, match="connectivity"):
        E.surface(a, connectivity=3)
    with pytest.raises(ValueError, match="same shape"):
        E.hausdorff(a, a[:4], spacing=1.0)


def test_real_brain_labels_hd95(shared_data):
    """HD95 of the 30 aseg structures of subj1 against a copy shifted by (2, -1, 3) voxels: each structure's
    value equals the scipy reference on three spot-checked labels; all 30 in a few seconds (no
    compilation)."""
    from jaxreg.io import load_labels

    lab = load_labels(shared_data / "brain3d" / "subj1_aseg.nii.gz")
    labels = json.loads((shared_data / "brain3d" / "labels.json").read_text())["eval_labels"]
    a = np.asarray(lab.data)
    b = np.roll(a, (2, -1, 3), axis=(0, 1, 2))
    t0 = time.perf_counter()
    hd95 = np.asarray(E.hd95_per_label(a, b, labels=labels, spacing=tuple(lab.grid.spacing)))
    elapsed = time.perf_counter() - t0
    assert hd95.shape == (30,) and np.all(np.isfinite(hd95))
    assert np.all(hd95 <= np.sqrt(14) + 1e-5)  # a (2, 1, 3) voxel shift moves no surface point farther
    for lab_id in (17, 4, 3):
        i = labels.index(lab_id)
        box = ndi.find_objects(((a == lab_id) | (b == lab_id)).astype(int))[0]
        ref = reference_surface_distances(a[box] == lab_id, b[box] == lab_id, tuple(lab.grid.spacing), 95)[1]
        np.testing.assert_allclose(hd95[i], ref, rtol=1e-5)
    assert elapsed < 60, elapsed


# ---- landmarks ---------------------------------------------------------------------------------------------
def test_target_registration_error():
    p = np.random.default_rng(0).normal(size=(7, 3))
    r = E.target_registration_error(p, p)
    assert float(r.mean) == 0.0 and float(r.std) == 0.0 and r.distances.shape == (7,)
    q = p + np.array([3.0, 4.0, 0.0])
    r = E.target_registration_error(p, q)
    np.testing.assert_allclose(r.distances, 5.0, rtol=1e-6)
    d = np.array([1.0, 2.0, 4.0])
    r = E.target_registration_error(np.zeros((3, 2)), np.stack([d, np.zeros(3)], -1))
    np.testing.assert_allclose([r.mean, r.std], [d.mean(), d.std()], rtol=1e-6)
    with pytest.raises(ValueError, match="equal shapes"):
        E.target_registration_error(np.zeros((3, 2)), np.zeros((3, 3)))


# ---- Jacobian statistics -----------------------------------------------------------------------------------
def test_jacobian_statistics_affine():
    rot = np.asarray(euler_to_matrix(jnp.deg2rad(jnp.array([10.0, 20.0, -30.0]))))
    grid = Grid.from_spacing((10, 12, 8), (1.0, 2.0, 1.5), direction=rot)
    m = rot @ np.diag([2.0, 1.0, 1.0]) @ rot.T  # det 2
    st = E.jacobian_statistics(
        Affine.from_homogeneous(
            jnp.asarray(np.block([[m, np.ones((3, 1))], [np.zeros((1, 3)), np.ones((1, 1))]]), jnp.float32)
        ),
        grid,
    )
    np.testing.assert_allclose([st.min, st.max, st.mean], 2.0, rtol=1e-5)
    np.testing.assert_allclose(st.mean_log, np.log(2.0), rtol=1e-5)
    assert float(st.std_log) < 1e-6 and float(st.std) < 1e-5
    assert (
        int(st.num_nonpositive) == 0 and int(st.num_voxels) == 960 and float(st.fraction_nonpositive) == 0.0
    )


def test_jacobian_statistics_counts_analytic_folds():
    """Along axis 0 the map is the zigzag y(i) = i (i <= 5), 10 - i (5..8), i - 6 (>= 8), in mm: central
    differences give slopes 1, 0 at i = 5 and 8, -1 at i = 6, 7, so exactly 4 slices are non-positive."""
    shape, sp = (14, 6, 5), (1.5, 1.0, 2.0)
    grid = Grid.from_spacing(shape, sp)
    i = np.arange(shape[0])
    y = np.where(i <= 5, i, np.where(i <= 8, 10 - i, i - 6))
    u = np.zeros(shape + (3,), np.float32)
    u[..., 0] = (sp[0] * (y - i))[:, None, None]
    st = E.jacobian_statistics(DisplacementField(jnp.asarray(u), grid), grid)
    per_slice = 6 * 5
    assert int(st.num_nonpositive) == 4 * per_slice
    np.testing.assert_allclose(st.fraction_nonpositive, 4 / 14, rtol=1e-6)
    np.testing.assert_allclose([st.min, st.max], [-1.0, 1.0], atol=1e-6)
    # masked: only slices 0..6 -> the folds at 5 and 6
    mask = np.zeros(shape, bool)
    mask[:7] = True
    st = E.jacobian_statistics(DisplacementField(jnp.asarray(u), grid), grid, mask=mask)
    assert int(st.num_voxels) == 7 * per_slice and int(st.num_nonpositive) == 2 * per_slice
    # SDlogJ uses det clipped to 1e-9: finite even with folds
    assert np.isfinite(float(st.std_log)) and float(st.std_log) > 1.0
    empty = E.jacobian_statistics(Translation(jnp.zeros(3)), grid, mask=np.zeros(shape))
    assert int(empty.num_voxels) == 0 and np.isnan(float(empty.mean))


def test_jacobian_statistics_smooth_diffeomorphism_and_jit():
    grid = Grid.centered((16, 18, 14), (1.5, 1.2, 1.0))
    x = np.asarray(grid.world_coords())
    v = jnp.asarray(2.0 * np.sin(x[..., ::-1] / 6.0), jnp.float32)
    st = jax.jit(E.jacobian_statistics, static_argnames="grid")(VelocityField(v, grid), grid=grid)
    assert int(st.num_nonpositive) == 0 and float(st.min) > 0
    assert 0.0 < float(st.std_log) < 1.0 and abs(float(st.mean) - 1.0) < 0.2


# ---- API ---------------------------------------------------------------------------------------------------
def test_public_api_documented_and_keyword_only():
    for name in E.__all__:
        obj = getattr(E, name)
        assert obj.__doc__ and obj.__doc__.strip(), name
        if inspect.isclass(obj):
            continue
        for p in inspect.signature(obj).parameters.values():
            option = p.name in ("labels", "spacing") or p.default is not inspect.Parameter.empty
            if option:
                assert p.kind == p.KEYWORD_ONLY, (name, p.name)
