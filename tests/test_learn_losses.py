"""Training losses, modes and inference of learned registration, against independent references.

References: ``scipy.ndimage.map_coordinates`` for warped images, NumPy soft Dice / MSE, closed-form transforms
(stub models that predict a known field), and invariants (zero supervised loss at the true field, symmetric
bidirectional terms, deterministic augmentation per key).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from scipy import ndimage

from jaxreg import Affine, DisplacementField, Grid, Image, VelocityField
from jaxreg.learn import modes
from jaxreg.learn.inference import place_grid, predict
from jaxreg.learn.losses import displacement_on_grid, registration_loss, registration_metrics
from jaxreg.learn.networks import Prediction, RegistrationNet
from jaxreg.optimize import Level, Registration
from jaxreg.similarity import mse, ncc
from jaxreg.warp import warp

GRID = Grid.from_spacing((16, 20), (1.5, 1.0))


class FieldModel:
    """A stub 'network' that predicts a fixed index-unit field (displacement or velocity) on ``GRID``."""

    def __init__(self, field: np.ndarray, kind: str = "displacement"):
        self.field = jnp.asarray(field, jnp.float32)
        self.kind = kind

    def __call__(self, fixed, moving):
        b = fixed.shape[0]
        return Prediction(None, jnp.broadcast_to(self.field, (b, *self.field.shape)))

    def to_transform(self, prediction, grid):
        u = prediction.field * jnp.asarray(grid.spacing, jnp.float32)  # axis-aligned grid: voxels -> mm
        if self.kind == "velocity":
            return VelocityField(u, grid, 6)
        return DisplacementField(u, grid)


def _smooth(key, shape, sigma=3.0):
    x = np.asarray(jax.random.normal(key, shape))
    return ndimage.gaussian_filter(x, sigma).astype(np.float32)


def _pair(seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    f = _smooth(k1, GRID.shape)
    m = _smooth(k2, GRID.shape)
    f = (f - f.min()) / (f.max() - f.min())
    m = (m - m.min()) / (m.max() - m.min())
    return f, m


def _labels(shift=0):
    i, j = np.meshgrid(np.arange(16), np.arange(20), indexing="ij")
    lab = 1 + (i // 6) + 3 * ((j + shift) // 7)
    return lab.astype(np.int32)


def _field(seed=1, scale=1.5):
    k1, k2 = jax.random.split(jax.random.key(seed))
    u = np.stack([_smooth(k1, GRID.shape, 4.0), _smooth(k2, GRID.shape, 4.0)], -1)
    return (scale * u / np.abs(u).max()).astype(np.float32)


def test_image_term_matches_scipy_warp():
    f, m = _pair()
    u = _field()
    loss = registration_loss(GRID, similarity=mse, regularizer_weight=0.0)
    batch = {"fixed": jnp.asarray(f)[None, ..., None], "moving": jnp.asarray(m)[None, ..., None]}
    value, metrics = loss(FieldModel(u), batch, jax.random.key(0))
    coords = np.indices(GRID.shape).astype(np.float64) + np.moveaxis(u, -1, 0)
    warped = ndimage.map_coordinates(m.astype(np.float64), coords, order=1, mode="constant", cval=0.0)
    ref = np.mean((f - warped) ** 2)
    np.testing.assert_allclose(float(value), ref, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(float(metrics["similarity"]), ref, rtol=1e-4, atol=1e-6)


def test_supervised_term_zero_at_truth_and_closed_form_for_offset():
    u = _field()
    t = FieldModel(u).to_transform(Prediction(None, jnp.asarray(u)), GRID)
    truth = displacement_on_grid(t, GRID)
    f, m = _pair()
    batch = {"fixed": jnp.asarray(f)[None, ..., None], "moving": jnp.asarray(m)[None, ..., None], "displacement": truth[None]}
    loss = registration_loss(GRID, image_weight=0.0, regularizer_weight=0.0, supervised_weight=1.0)
    assert float(loss(FieldModel(u), batch, jax.random.key(0))[0]) < 1e-8
    off = np.array([0.5, -1.0], np.float32)  # mm
    batch["displacement"] = truth[None] + off
    np.testing.assert_allclose(float(loss(FieldModel(u), batch, jax.random.key(0))[0]), float(np.sum(off**2)), rtol=1e-5)


def test_label_term_matches_numpy_soft_dice():
    f, m = _pair()
    lf, lm = _labels(0), _labels(3)
    values = (1, 2, 3, 4, 5)
    loss = registration_loss(GRID, image_weight=0.0, regularizer_weight=0.0, label_values=values, label_weight=1.0)
    batch = {
        "fixed": jnp.asarray(f)[None, ..., None], "moving": jnp.asarray(m)[None, ..., None],
        "fixed_labels": jnp.asarray(lf)[None], "moving_labels": jnp.asarray(lm)[None],
    }
    value, _ = loss(FieldModel(np.zeros((*GRID.shape, 2), np.float32)), batch, jax.random.key(0))
    p = np.stack([lf == v for v in values], -1).astype(np.float64)
    q = np.stack([lm == v for v in values], -1).astype(np.float64)
    dice = (2 * (p * q).sum((0, 1)) + 1e-6) / (p.sum((0, 1)) + q.sum((0, 1)) + 1e-6)
    np.testing.assert_allclose(float(value), 1.0 - dice.mean(), rtol=1e-5, atol=1e-6)
    # identical label maps: no label loss
    batch["moving_labels"] = batch["fixed_labels"]
    assert float(loss(FieldModel(np.zeros((*GRID.shape, 2), np.float32)), batch, jax.random.key(0))[0]) < 1e-6


def test_bidirectional_is_symmetric_for_identity_and_uses_inverse():
    f, m = _pair()
    zero = np.zeros((*GRID.shape, 2), np.float32)
    batch = {"fixed": jnp.asarray(f)[None, ..., None], "moving": jnp.asarray(m)[None, ..., None]}
    loss = registration_loss(GRID, similarity=ncc, regularizer_weight=0.0, bidirectional=True)
    np.testing.assert_allclose(float(loss(FieldModel(zero, "velocity"), batch, None)[0]), float(ncc(f[..., None], m[..., None])), rtol=1e-5)
    # moving = fixed o exp(v): the forward term is ~perfect; the backward term warps fixed by exp(-v)
    v = _field(scale=1.0)
    t = FieldModel(v, "velocity").to_transform(Prediction(None, jnp.asarray(v)), GRID)
    moved = warp(Image(jnp.asarray(f), GRID), t.inverse(), GRID, mode="nearest").data
    batch = {"fixed": jnp.asarray(f)[None, ..., None], "moving": moved[None, ..., None]}
    one_way = registration_loss(GRID, similarity=mse, regularizer_weight=0.0)
    both = registration_loss(GRID, similarity=mse, regularizer_weight=0.0, bidirectional=True)
    fw = float(one_way(FieldModel(v, "velocity"), batch, None)[0])
    bw_ref = float(mse(moved[..., None], warp(Image(jnp.asarray(f)[..., None], GRID), t.inverse(), GRID).data))
    np.testing.assert_allclose(float(both(FieldModel(v, "velocity"), batch, None)[0]), 0.5 * (fw + bw_ref), rtol=1e-5, atol=1e-7)


def test_regularizer_term_is_diffusion_of_the_velocity_mm():
    from jaxreg.regularizers import diffusion

    v = _field(scale=1.0)
    f, m = _pair()
    batch = {"fixed": jnp.asarray(f)[None, ..., None], "moving": jnp.asarray(m)[None, ..., None]}
    loss = registration_loss(GRID, regularizer_weight=2.0)
    _, met = loss(FieldModel(v, "velocity"), batch, None)
    ref = diffusion(jnp.asarray(v) * jnp.asarray(GRID.spacing, jnp.float32), spacing=(1.5, 1.0))
    np.testing.assert_allclose(float(met["regularizer"]), float(ref), rtol=1e-5)
    np.testing.assert_allclose(float(met["loss"]), float(met["similarity"]) + 2.0 * float(ref), rtol=1e-5)


def test_loss_errors_name_the_argument():
    with pytest.raises(ValueError, match="label_values"):
        registration_loss(GRID, label_weight=1.0)
    with pytest.raises(ValueError, match="image_weight/label_weight/supervised_weight"):
        registration_loss(GRID, image_weight=0.0)
    with pytest.raises(ValueError, match="regularizer_weight"):
        registration_loss(GRID, regularizer_weight=-1.0)
    with pytest.raises(TypeError, match="grid"):
        registration_loss((16, 20))
    loss = registration_loss(GRID, supervised_weight=1.0)
    f, m = _pair()
    with pytest.raises(KeyError, match="displacement"):
        loss(FieldModel(np.zeros((*GRID.shape, 2), np.float32)), {"fixed": jnp.asarray(f)[None, ..., None], "moving": jnp.asarray(m)[None, ..., None]}, None)


def test_metrics_dice_matches_numpy_and_no_folding_for_identity():
    f, m = _pair()
    lf, lm = _labels(0), _labels(3)
    values = (1, 2, 3, 4, 5, 6)
    ev = registration_metrics(GRID, label_values=values)
    batch = {
        "fixed": jnp.asarray(f)[None, ..., None], "moving": jnp.asarray(m)[None, ..., None],
        "fixed_labels": jnp.asarray(lf)[None], "moving_labels": jnp.asarray(lm)[None],
    }
    out = ev(FieldModel(np.zeros((*GRID.shape, 2), np.float32)), batch)
    ref = [2 * np.sum((lf == v) & (lm == v)) / (np.sum(lf == v) + np.sum(lm == v)) for v in values if np.any(lf == v) or np.any(lm == v)]
    np.testing.assert_allclose(float(out["dice"]), np.mean(ref), rtol=1e-5)
    np.testing.assert_allclose(float(out["dice_before"]), np.mean(ref), rtol=1e-5)
    assert float(out["folding"]) == 0.0
    # a folding field is reported
    fold = np.zeros((*GRID.shape, 2), np.float32)
    fold[..., 0] = -2.0 * np.indices(GRID.shape)[0]
    assert float(ev(FieldModel(fold), batch)["folding"]) > 50.0


# -- modes ---------------------------------------------------------------------------------------------------
def test_supervised_augment_fixed_is_moving_warped_by_the_recorded_displacement():
    f, m = _pair()
    mode = modes.supervised(GRID, max_displacement_mm=2.0, smoothness_mm=6.0)
    batch = {"moving": jnp.asarray(np.stack([m, f]))[..., None]}
    out = mode.augment(jax.random.key(3), batch)
    assert set(out) >= {"fixed", "moving", "displacement"}
    for b in range(2):
        d_vox = np.asarray(out["displacement"][b]) / np.asarray(GRID.spacing)
        coords = np.indices(GRID.shape).astype(np.float64) + np.moveaxis(d_vox, -1, 0)
        ref = ndimage.map_coordinates(np.asarray(batch["moving"][b, ..., 0], np.float64), coords, order=1, mode="constant")
        np.testing.assert_allclose(np.asarray(out["fixed"][b, ..., 0]), ref, atol=1e-4)
        assert 0.5 < np.abs(np.asarray(out["displacement"][b])).max() <= 2.0 + 1e-3
    again = mode.augment(jax.random.key(3), batch)
    np.testing.assert_array_equal(np.asarray(again["fixed"]), np.asarray(out["fixed"]))
    other = mode.augment(jax.random.key(4), batch)
    assert not np.allclose(np.asarray(other["displacement"]), np.asarray(out["displacement"]))


def test_synthesis_augment_makes_label_driven_images():
    lf, lm = _labels(0), _labels(3)
    values = tuple(range(1, 10))
    mode = modes.synthesis(GRID, label_values=values, synth_options={"noise_std_max": 0.0, "bias_std": 0.0, "blur_mm_max": 0.0, "std_range": (0.0, 0.0)})
    out = mode.augment(jax.random.key(0), {"fixed_labels": jnp.asarray(lf)[None], "moving_labels": jnp.asarray(lm)[None]})
    img = np.asarray(out["fixed"][0, ..., 0])
    assert img.min() >= 0.0 and img.max() <= 1.0
    for v in np.unique(lf):  # no noise, blur or bias: one intensity per label
        assert np.ptp(img[lf == v]) < 1e-5
    means = [img[lf == v].mean() for v in np.unique(lf)]
    assert len(set(np.round(means, 4))) > len(means) // 2
    np.testing.assert_array_equal(np.asarray(out["fixed_labels"][0]), lf)
    assert mode.inputs == ("fixed_labels", "moving_labels")


def _train(mode, net, batch, steps=25, lr=3e-3):
    gd, params = nnx.split(net, nnx.Param)
    opt = optax.adam(lr)
    state = opt.init(params)

    @jax.jit
    def step(params, state, key):
        b = batch if mode.augment is None else mode.augment(key, batch)

        def lossf(p):
            return mode.loss(nnx.merge(gd, p), b, key)[0]

        val, g = jax.value_and_grad(lossf)(params)
        upd, state = opt.update(g, state, params)
        return optax.apply_updates(params, upd), state, val

    hist = []
    key = jax.random.key(0)
    for s in range(steps):
        params, state, val = step(params, state, jax.random.fold_in(key, s % 2))
        hist.append(float(val))
    return hist


@pytest.mark.parametrize("name", ["unsupervised", "supervised", "weakly_supervised", "synthesis"])
def test_each_mode_trains_a_tiny_network(name):
    grid = Grid.from_spacing((16, 16), 1.0)
    i, j = np.meshgrid(np.arange(16), np.arange(16), indexing="ij")
    blob = lambda ci, cj: np.exp(-((i - ci) ** 2 + (j - cj) ** 2) / 18.0).astype(np.float32)
    f, m = blob(7.5, 7.5), blob(8.5, 6.5)
    lf, lm = (f > 0.4).astype(np.int32) + 1, (m > 0.4).astype(np.int32) + 1
    batch = {"fixed": jnp.asarray(f)[None, ..., None], "moving": jnp.asarray(m)[None, ..., None], "fixed_labels": jnp.asarray(lf)[None], "moving_labels": jnp.asarray(lm)[None]}
    if name == "unsupervised":
        mode = modes.unsupervised(grid, similarity=mse, regularizer_weight=0.001)
    elif name == "supervised":
        mode = modes.supervised(grid, max_displacement_mm=1.5, smoothness_mm=4.0)
        batch = {"moving": batch["moving"]}
    elif name == "weakly_supervised":
        mode = modes.weakly_supervised(grid, label_values=(2,), regularizer_weight=0.001)
    else:
        mode = modes.synthesis(grid, label_values=(2,), synthesis_labels=(1, 2), regularizer_weight=0.001)
        batch = {"fixed_labels": batch["fixed_labels"], "moving_labels": batch["moving_labels"]}
    net = RegistrationNet(2, transform="displacement", encoder=(4, 8), decoder=(8, 8, 8), rngs=nnx.Rngs(0))
    hist = _train(mode, net, batch, steps=30 if name != "supervised" else 40)
    first, last = np.mean(hist[:4]), np.mean(hist[-4:])
    assert last < 0.8 * first, (name, hist[:4], hist[-4:])


# -- inference -----------------------------------------------------------------------------------------------
def test_place_grid_centres_the_network_grid_on_the_fixed_image():
    fixed = Grid(GRID.shape, np.array([[0.0, -2.0, 30.0], [1.5, 0.0, -4.0], [0, 0, 1]]))
    g = place_grid(Grid.from_spacing((8, 12), (3.0, 2.0)), fixed)
    assert g.shape == (8, 12)
    np.testing.assert_allclose(g.spacing, (3.0, 2.0))
    np.testing.assert_allclose(g.center, fixed.center, atol=1e-9)
    np.testing.assert_allclose(g.direction, np.eye(2), atol=1e-12)
    with pytest.raises(ValueError, match="where"):
        place_grid(Grid.from_spacing((8, 8, 8)), fixed)


def _shifted_pair():
    grid = Grid.from_spacing((32, 32), 1.0)
    i, j = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    f = np.exp(-((i - 15.5) ** 2 / 40.0 + (j - 15.5) ** 2 / 20.0)).astype(np.float32)
    t_true = Affine.from_homogeneous(np.array([[1, 0, 1.5], [0, 1, -1.0], [0, 0, 1.0]]))
    m = np.asarray(warp(Image(jnp.asarray(f), grid), t_true, grid).data)
    return grid, Image(jnp.asarray(f), grid), Image(jnp.asarray(m), grid)


def _random_head(net, seed=1, scale=0.3):
    """Give the flow head random weights so that the network's field is far from zero."""
    k = jax.random.key(seed)
    net.flow.kernel[...] = scale * jax.random.normal(k, net.flow.kernel[...].shape)
    return net


def test_predict_is_register_with_linear_network_and_greedy_stages():
    grid, fixed, moving = _shifted_pair()
    net = RegistrationNet(2, transform="velocity", encoder=(4, 8), decoder=(8, 8, 8), rngs=nnx.Rngs(0))
    res = predict(net, fixed, moving, network_grid=grid, init="none")
    assert isinstance(res, Registration)
    assert [st.name for st in res.stages] == ["network"]
    pts = grid.world_coords()[::5, ::5].reshape(-1, 2)
    np.testing.assert_allclose(np.asarray(res.transform(pts)), np.asarray(pts), atol=1e-2)  # untrained ~ identity
    ref = predict(net, fixed, moving, network_grid=grid, init="com", refine_levels=(Level(1, 0.0, 30),))
    assert [st.name for st in ref.stages] == ["linear", "network", "refine"]
    assert ref.stages[0].start == "com" and ref.stages[2].continues
    assert isinstance(ref.stages[1].transform, VelocityField) and isinstance(ref.deformable, VelocityField)
    assert ref.linear is not None and ref.linear.is_linear
    before = float(ncc(fixed.data, warp(moving, res.transform, grid).data))
    after = float(ncc(fixed.data, warp(moving, ref.transform, grid).data))
    assert after < before - 0.02, (before, after)


def test_network_stage_equals_a_direct_network_evaluation():
    from jaxreg.learn.inference import normalize_image
    from jaxreg.optimize.init import center_of_mass
    from jaxreg.warp import resample

    grid, fixed, moving = _shifted_pair()
    # the fixed image on a larger oblique-free grid; the network grid is placed on its centre of mass
    big = Grid.from_spacing((40, 36), (1.0, 1.0), origin=(-3.0, -2.0))
    fixed = resample(fixed, big)
    net = _random_head(RegistrationNet(2, transform="velocity", encoder=(4, 8), decoder=(8, 8, 8), rngs=nnx.Rngs(0)))
    a = Affine.from_homogeneous(np.array([[1, 0, 0.7], [0, 1, -0.4], [0, 0, 1.0]]))
    res = predict(net, fixed, moving, network_grid=Grid.from_spacing((16, 16), 2.0), init=a)
    assert [st.name for st in res.stages] == ["linear", "network"]
    # direct: the network on the placed grid, the moving image pulled through the start
    f, m = normalize_image(fixed), normalize_image(moving)
    placed = place_grid(Grid.from_spacing((16, 16), 2.0), center_of_mass(f))
    f_net = resample(f, placed).data
    m_net = warp(m, a, placed).data
    pred = jax.tree_util.tree_map(lambda x: x[0], net(f_net[None, ..., None], m_net[None, ..., None]))
    direct = net.to_transform(pred, placed)
    assert float(jnp.abs(direct.velocity).max()) > 0.5  # a field worth comparing (mm)
    stage = res.stages[1].transform
    assert stage.grid == fixed.grid
    np.testing.assert_allclose(np.asarray(stage.velocity), np.asarray(direct.on_grid(fixed.grid).velocity), atol=2e-4)
    np.testing.assert_allclose(np.asarray(res.linear.homogeneous()), np.asarray(a.homogeneous()), atol=1e-5)
    # another pair with another placement reuses the compiled network kernel (centre and weights are traced)
    again = predict(net, fixed, warp(moving, a, grid), network_grid=Grid.from_spacing((16, 16), 2.0), init="com")
    assert again.stages[1].levels[0].compile_seconds == 0.0


def test_affine_network_stages_continue_the_linear_start():
    from jaxreg.learn.inference import normalize_image

    grid, fixed, moving = _shifted_pair()
    net = RegistrationNet(2, transform="affine+displacement", encoder=(4, 8), decoder=(8, 8, 8), affine_encoder=(4, 8), rngs=nnx.Rngs(0))
    k = jax.random.key(2)
    net.affine_net.out.kernel[...] = 0.05 * jax.random.normal(k, net.affine_net.out.kernel[...].shape)
    _random_head(net)
    res = predict(net, fixed, moving, network_grid=grid, init="none", center="grid", refine_levels=(Level(1, 0.0, 5),))
    assert [st.name for st in res.stages] == ["network affine", "network", "refine"]
    f, m = normalize_image(fixed), normalize_image(moving)
    pred = jax.tree_util.tree_map(lambda x: x[0], net(f.data[None, ..., None], m.data[None, ..., None]))
    direct = net.to_transform(pred, grid)
    np.testing.assert_allclose(
        np.asarray(res.linear.homogeneous()), np.asarray(direct.transforms[0].homogeneous()), atol=1e-5
    )
    assert not np.allclose(np.asarray(res.linear.homogeneous()), np.eye(3), atol=1e-3)
    # the field stage is stacked on the affine and the greedy stage continues it (compositive updates)
    assert isinstance(res.stages[1].transform, DisplacementField) and res.stages[2].continues
    assert isinstance(res.deformable, DisplacementField)
    # the U-Net sees the moving image pulled through the affine: the one-shot field in the interior
    inner = (slice(6, 26), slice(6, 26))
    np.testing.assert_allclose(
        np.asarray(res.stages[1].transform.displacement)[inner],
        np.asarray(direct.transforms[1].displacement)[inner],
        atol=0.05 * float(np.abs(np.asarray(direct.transforms[1].displacement)).max()),
    )


def test_network_method_contract():
    from jaxreg.learn.method import Network
    from jaxreg.optimize import Field, Linear, register

    grid, fixed, moving = _shifted_pair()
    net = _random_head(RegistrationNet(2, transform="displacement", encoder=(4, 8), decoder=(8, 8, 8), rngs=nnx.Rngs(0)))
    a, b = Network(net), Network(net)
    assert a == b and hash(a) == hash(b) and a.default_model == Field("displacement")
    leaves = jax.tree_util.tree_leaves(a)
    assert len(leaves) == len(jax.tree_util.tree_leaves(nnx.state(net)))
    with pytest.raises(AttributeError, match="frozen"):
        a.output = "affine"
    with pytest.raises(ValueError, match="output"):
        Network(net, output="affine")
    assert Network(RegistrationNet(2, transform="affine", rngs=nnx.Rngs(0))).default_model == Linear("affine")
    # on the fixed grid as it is: the stage's field is the network's, and the loss is the given similarity
    res = register(fixed, moving, method=Network(net, similarity="ncc"), levels=(Level(1, 0.0, 3),))
    pred = jax.tree_util.tree_map(lambda x: x[0], net(fixed.data[None, ..., None], moving.data[None, ..., None]))
    np.testing.assert_allclose(
        np.asarray(res.transform.displacement), np.asarray(net.to_transform(pred, grid).displacement), atol=1e-5
    )
    lv = res.stages[0].levels[0]
    assert lv.iterations == 1 and lv.loss.shape == (3,) and np.isnan(lv.loss[1:]).all()
    np.testing.assert_allclose(lv.loss[0], float(ncc(fixed.data, warp(moving, res.transform, grid).data)), rtol=1e-4)
    # a batch is the vmapped kernel: equal to a loop
    batch = register([fixed, moving], [moving, fixed], method=Network(net), levels=(Level(1, 0.0, 1),))
    for i, (f, m) in enumerate([(fixed, moving), (moving, fixed)]):
        one = register(f, m, method=Network(net), levels=(Level(1, 0.0, 1),))
        np.testing.assert_allclose(
            np.asarray(batch.pair(i).transform.displacement), np.asarray(one.transform.displacement), atol=1e-5
        )


def test_multiscale_label_term_matches_scipy_normalised_convolution():
    f, m = _pair()
    lf, lm = _labels(0), _labels(3)
    values, scales = (1, 2, 3), (0.0, 1.0, 2.0)
    loss = registration_loss(GRID, image_weight=0.0, regularizer_weight=0.0, label_values=values, label_weight=1.0, label_scales=scales)
    batch = {"fixed": jnp.asarray(f)[None, ..., None], "moving": jnp.asarray(m)[None, ..., None], "fixed_labels": jnp.asarray(lf)[None], "moving_labels": jnp.asarray(lm)[None]}
    zero = FieldModel(np.zeros((*GRID.shape, 2), np.float32))

    def smooth(x, s):  # Gaussian normalised convolution (border weights renormalised), per label channel
        if s == 0:
            return x
        num = ndimage.gaussian_filter(x, s, mode="constant", truncate=3.0)
        return num / ndimage.gaussian_filter(np.ones_like(x), s, mode="constant", truncate=3.0)

    dices = []
    for s in scales:
        for v in values:
            p, q = smooth((lf == v).astype(np.float64), s), smooth((lm == v).astype(np.float64), s)
            dices.append((2 * np.sum(p * q) + 1e-6) / (np.sum(p) + np.sum(q) + 1e-6))
    np.testing.assert_allclose(float(loss(zero, batch, None)[0]), 1.0 - np.mean(dices), rtol=1e-4)
    with pytest.raises(ValueError, match="label_scales"):
        registration_loss(GRID, label_values=(1,), label_weight=1.0, label_scales=(-1.0,))


def test_synthesis_same_subject_and_same_contrast_pairs():
    lf, lm = _labels(0), _labels(3)
    values = tuple(range(1, 10))
    quiet = {"noise_std_max": 0.0, "bias_std": 0.0, "blur_mm_max": 0.0, "std_range": (0.0, 0.0), "gamma_std": 0.0}
    mode = modes.synthesis(GRID, label_values=values, deformation_mm=1e-3, same_subject=1.0, same_contrast=True, synth_options=quiet)
    out = mode.augment(jax.random.key(5), {"fixed_labels": jnp.asarray(lf)[None], "moving_labels": jnp.asarray(lm)[None]})
    # one source map: both label maps are (negligibly deformed) copies of the fixed one
    assert np.mean(np.asarray(out["moving_labels"][0]) == lf) > 0.95
    f, m = np.asarray(out["fixed"][0, ..., 0]), np.asarray(out["moving"][0, ..., 0])
    lab_m = np.asarray(out["moving_labels"][0])
    for v in values:  # one intensity model per pair: each label has the same intensity in both images
        if np.any(lab_m == v) and np.any(lf == v):
            assert abs(f[lf == v].mean() - m[lab_m == v].mean()) < 1e-3
    with pytest.raises(ValueError, match="same_subject"):
        modes.synthesis(GRID, label_values=values, same_subject=0.5)
    with pytest.raises(ValueError, match="same_subject"):
        modes.synthesis(GRID, label_values=values, same_subject=1.5, deformation_mm=1.0)


def test_normalisation_matches_the_training_definition():
    from jaxreg.learn import normalize_intensity
    from jaxreg.learn.inference import normalize_image

    grid = Grid(GRID.shape, np.array([[0.0, -2.0, 30.0], [1.5, 0.0, -4.0], [0, 0, 1]]))
    f, _ = _pair()
    img = Image(jnp.asarray(f - 0.2), grid)
    np.testing.assert_allclose(np.asarray(normalize_image(img).data), np.asarray(normalize_intensity(img.data)), atol=1e-6)


# -- traced weights ------------------------------------------------------------------------------------------
def _weighted_batch():
    f, m = _pair()
    lf, lm = _labels(0), _labels(3)
    u = _field()
    t = FieldModel(u).to_transform(Prediction(None, jnp.asarray(u)), GRID)
    return {
        "fixed": jnp.asarray(np.stack([f, m]))[..., None],
        "moving": jnp.asarray(np.stack([m, f]))[..., None],
        "fixed_labels": jnp.asarray(np.stack([lf, lm])),
        "moving_labels": jnp.asarray(np.stack([lm, lf])),
        "displacement": jnp.stack([displacement_on_grid(t, GRID)] * 2) + 0.3,
    }


def test_learned_loss_weights_are_traced():
    batch = _weighted_batch()
    model = FieldModel(_field(scale=1.0), "velocity")
    loss = registration_loss(
        GRID, similarity="lncc(window=5)", regularizer_weight=0.5, label_values=(1, 2, 3), label_weight=2.0,
        supervised_weight=0.1,
    )
    assert loss.names == ("similarity", "regularizer", "label", "supervised")
    assert [t.kind for t in loss.objective.terms] == ["similarity", "field"]
    leaves = jax.tree_util.tree_leaves(loss)
    assert len(leaves) == 1 and leaves[0].shape == (4,)
    _, metrics = loss(model, batch, None)
    values = np.array([float(metrics[n]) for n in loss.names])
    # d loss / d weights = the unweighted terms
    grad = jax.grad(lambda w: loss.replace(weights=w)(model, batch, None)[0])(loss.weights)
    np.testing.assert_allclose(np.asarray(grad), values, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(loss.terms(model, batch)), values, rtol=1e-6)
    # a sweep of weights in one vmapped call equals a loop, also through jit with the loss as an argument
    ws = jnp.asarray([[1.0, 0.0, 0.0, 0.0], [0.5, 2.0, 1.0, 0.1], [0.0, 1.0, 3.0, 1.0]])
    swept = jax.vmap(lambda w: loss.replace(weights=w)(model, batch, None)[0])(ws)
    jitted = jax.jit(lambda l: l(model, batch, None)[0])  # one function: the loss (and its weights) an argument
    looped = [float(jitted(loss.replace(weights=w))) for w in ws]
    np.testing.assert_allclose(np.asarray(swept), looped, rtol=1e-5)
    np.testing.assert_allclose(looped, np.asarray(ws) @ values, rtol=1e-5)


@pytest.mark.parametrize("spec", ["mse", "ncc", "lncc", "lncc(window=9)", "nmi"])
def test_similarity_names_come_from_the_registry(spec):
    from jaxreg.terms import parse

    f, m = _pair()
    batch = {"fixed": jnp.asarray(f)[None, ..., None], "moving": jnp.asarray(m)[None, ..., None]}
    zero = FieldModel(np.zeros((*GRID.shape, 2), np.float32))
    value, _ = registration_loss(GRID, similarity=spec, regularizer_weight=0.0)(zero, batch, None)
    np.testing.assert_allclose(float(value), float(parse(spec, "similarity")(batch["fixed"][0], batch["moving"][0], None)), rtol=1e-5)
    assert modes.unsupervised(GRID, similarity=spec).loss.objective.terms[0].fn == parse(spec, "similarity")
