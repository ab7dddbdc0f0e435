"""jaxreg.learn.NeuralField: a per-pair SIREN displacement field as a method of the one registration API.

References: an analytic smooth displacement (the pair is made by warping an image through it), the greedy
method on the same pair (a peer run in the same test), the SIREN initialisation's closed-form bounds.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxreg.core.grid import Grid, Image
from jaxreg.evaluation import jacobian_statistics
from jaxreg.learn import NeuralField
from jaxreg.learn.neural_field import siren_apply, siren_init
from jaxreg.optimize import Greedy, Level, Stage, register
from jaxreg.transforms import DisplacementField
from jaxreg.warp import warp


def _pair():
    """Three Gaussian blobs (moving) and the fixed image ``F(x) = M(x + u(x))`` for a smooth analytic ``u``."""
    g = Grid.from_spacing((48, 48), (2.0, 2.0))
    i, j = np.indices(g.shape).astype(np.float32)
    img = (
        np.exp(-((i - 24) ** 2 / 120 + (j - 22) ** 2 / 60))
        + 0.6 * np.exp(-((i - 14) ** 2 / 20 + (j - 32) ** 2 / 30))
        + 0.5 * np.exp(-((i - 33) ** 2 / 25 + (j - 12) ** 2 / 25))
    )
    x = np.asarray(g.world_coords(np.float32))
    c = x.reshape(-1, 2).mean(0)
    r2 = (x[..., 0] - c[0]) ** 2 + (x[..., 1] - c[1]) ** 2
    u = np.stack([3.0 * np.exp(-r2 / 800), -2.0 * np.exp(-((x[..., 0] - c[0] - 10) ** 2 + (x[..., 1] - c[1]) ** 2) / 600)], -1)  # fmt: skip
    moving = Image(jnp.asarray(img, jnp.float32), g)
    fixed = warp(moving, DisplacementField(jnp.asarray(u, jnp.float32), g), g)
    return g, fixed, moving, u.astype(np.float32), x


def _recovered(result, g, u, x):
    est = np.asarray(result.transform.sample_grid(g)) - x
    inner = (slice(6, -6),) * 2
    return 1.0 - np.sqrt(((est - u)[inner] ** 2).sum(-1).mean()) / np.sqrt((u[inner] ** 2).sum(-1).mean())


def test_neural_field_recovers_a_known_smooth_field_like_the_greedy_method():
    g, fixed, moving, u, x = _pair()
    nf = NeuralField(similarity="mse", points=1024, learning_rate=3e-4, jacobian_weight=0.01)
    res = register(fixed, moving, method=Stage(nf, levels=(Level(1, 0.0, 200),)))
    assert isinstance(res.transform, DisplacementField) and res.transform.grid == g
    frac = _recovered(res, g, u, x)
    peer = _recovered(register(fixed, moving, method=Stage(Greedy(similarity="mse"), levels=(Level(1, 0.0, 100),))), g, u, x)
    assert frac >= 0.35, f"neural field recovered {frac:.2f} of the known field (greedy {peer:.2f})"
    assert frac >= peer - 0.3
    stats = jacobian_statistics(res.transform, g)
    assert int(stats.num_nonpositive) == 0 and float(stats.min) > 0.5
    losses = np.asarray(res.stages[0].levels[0].loss)
    assert losses[-20:].mean() < 0.5 * losses[:20].mean()


def test_velocity_output_recovers_the_field_and_is_folding_free_without_a_jacobian_penalty():
    """output='velocity': u = exp(v_theta) by the library's scaling and squaring on a 4 mm lattice (every
    second voxel of the 2 mm grid), the similarity on the whole image: the known field is recovered and
    det J > 0 without any Jacobian term (the flow of a smooth velocity does not fold); also in the symmetric
    (mid-space) form."""
    g, fixed, moving, u, x = _pair()
    nf = NeuralField(similarity="mse", output="velocity", lattice=4.0, learning_rate=1e-3, jacobian_weight=0.0)
    res = register(fixed, moving, method=Stage(nf, levels=(Level(1, 0.0, 150),)))
    assert isinstance(res.transform, DisplacementField) and res.transform.grid == g
    frac = _recovered(res, g, u, x)
    assert frac >= 0.4, f"velocity neural field recovered {frac:.2f} of the known field"
    stats = jacobian_statistics(res.transform, g)
    assert int(stats.num_nonpositive) == 0 and float(stats.min) > 0.3
    losses = np.asarray(res.stages[0].levels[0].loss)
    assert losses[-10:].mean() < 0.5 * losses[:10].mean()
    # symmetric=True compares F o exp(-v/2) with M o exp(v/2) (mid-space, as the greedy SyN-like method): at the
    # identity start its loss equals the one-sided loss; it recovers the field without folding, by another path
    sym = register(fixed, moving, method=Stage(dataclasses.replace(nf, symmetric=True), levels=(Level(1, 0.0, 150),)))
    l_sym = np.asarray(sym.stages[0].levels[0].loss)
    np.testing.assert_allclose(l_sym[0], losses[0], rtol=1e-5)
    assert l_sym[-10:].mean() < 0.5 * l_sym[:10].mean()
    frac_sym = _recovered(sym, g, u, x)
    assert frac_sym >= 0.4, f"symmetric velocity neural field recovered {frac_sym:.2f} of the known field"
    stats = jacobian_statistics(sym.transform, g)
    assert int(stats.num_nonpositive) == 0 and float(stats.min) > 0.3
    assert not np.allclose(np.asarray(sym.transform.displacement), np.asarray(res.transform.displacement), atol=1e-3)
    assert NeuralField(output="velocity", symmetric=True) != NeuralField(output="velocity")


def test_a_level_with_its_own_learning_rate_is_a_second_stage_that_continues_the_first():
    """A per-level learning rate is a second NeuralField stage on that level: Field("displacement") continues
    itself, so the second stage starts from the first's field (one stage of both levels, when the settings are
    equal), and a different learning rate changes only that level."""
    g, fixed, moving, _, _ = _pair()
    nf = NeuralField(similarity="mse", output="velocity", lattice=4.0, learning_rate=1e-3, jacobian_weight=0.0)
    levels = (Level(2, 0.0, 4), Level(1, 0.0, 4))
    one = register(fixed, moving, method=Stage(nf, levels=levels))
    two = register(fixed, moving, method=(Stage(nf, levels=levels[:1]), Stage(nf, levels=levels[1:])))
    assert two.stages[1].continues and not two.stages[0].continues
    np.testing.assert_allclose(
        np.asarray(two.transform.displacement), np.asarray(one.transform.displacement), rtol=0, atol=1e-5
    )
    fine = dataclasses.replace(nf, learning_rate=3e-3)
    other = register(fixed, moving, method=(Stage(nf, levels=levels[:1]), Stage(fine, levels=levels[1:])))
    np.testing.assert_array_equal(np.asarray(other.stages[0].transform.displacement),
                                  np.asarray(two.stages[0].transform.displacement))  # fmt: skip
    assert not np.allclose(np.asarray(other.transform.displacement), np.asarray(two.transform.displacement))


def test_neural_field_same_seed_same_result_and_no_recompilation():
    g, fixed, moving, _, _ = _pair()
    stage = lambda seed: Stage(NeuralField(points=64, patch=1, seed=seed), levels=(Level(2, 0.0, 10),))  # noqa: E731
    a = register(fixed, moving, method=stage(0))
    b = register(fixed, moving, method=stage(0))  # a fresh but equal configuration: cached kernel
    c = register(fixed, moving, method=stage(1))
    np.testing.assert_array_equal(np.asarray(a.transform.displacement), np.asarray(b.transform.displacement))
    assert not np.allclose(np.asarray(a.transform.displacement), np.asarray(c.transform.displacement))
    assert b.stages[0].levels[0].compile_seconds == 0.0
    assert NeuralField(points=256) == NeuralField(points=256) and hash(NeuralField()) == hash(NeuralField())
    assert NeuralField(jacobian_weight=0.1) != NeuralField(jacobian_weight=0.2)
    assert NeuralField(patch=1) != NeuralField(patch=2) and NeuralField(schedule="constant") != NeuralField()
    assert NeuralField(output="velocity") != NeuralField() and NeuralField(lattice=8.0) != NeuralField()
    assert NeuralField(stride=2) != NeuralField()
    assert NeuralField(folding_weight=1.0) != NeuralField()
    # the three regulariser weights are the pytree's traced leaves (a sweep is a vmap); the rest is static
    assert len(jax.tree_util.tree_leaves(NeuralField(folding_weight=1.0))) == 3


def test_siren_starts_at_the_identity_with_the_papers_bounds():
    layers = siren_init(jax.random.key(0), 3, (32, 16), 30.0)
    assert len(layers) == 3
    assert float(jnp.max(jnp.abs(layers[0]["w"]))) <= 1.0 / 3
    assert float(jnp.max(jnp.abs(layers[1]["w"]))) <= np.sqrt(6.0 / 32) / 30.0
    x = jax.random.uniform(jax.random.key(1), (50, 3), minval=-1, maxval=1)
    np.testing.assert_array_equal(np.asarray(siren_apply(layers, x, 30.0)), 0.0)


def test_siren_hidden_layers_have_unit_scale_preactivations():
    """Sitzmann et al. 2020, Sec. 3.2: with hidden weights U(+-sqrt(6/n)/omega_0), every layer's sine input
    omega_0 (W h + b) has a standard deviation of order one (the network is not a near-linear map of the first
    layer's features, as it is without omega_0 on the hidden layers: std ~ 1/omega_0 = 0.03)."""
    layers = siren_init(jax.random.key(0), 3, (64, 64, 64), 30.0)
    x = jax.random.uniform(jax.random.key(1), (4000, 3), minval=-1, maxval=1)
    for depth in (1, 2):
        h = jnp.sin(30.0 * (x @ layers[0]["w"] + layers[0]["b"]))
        for layer in layers[1:depth]:
            h = jnp.sin(30.0 * (h @ layer["w"] + layer["b"]))
        pre = 30.0 * (h @ layers[depth]["w"] + layers[depth]["b"])
        assert 0.6 < float(pre.std()) < 1.5, (depth, float(pre.std()))
    # siren_apply uses the same layers: a non-zero output layer reads the last hidden features exactly
    out = [dict(layer) for layer in layers]
    out[-1] = {"w": jnp.eye(64, 3), "b": jnp.zeros(3)}
    h = x
    for k, layer in enumerate(layers[:-1]):
        h = jnp.sin(30.0 * (h @ layer["w"] + layer["b"]))
    np.testing.assert_allclose(np.asarray(siren_apply(out, x, 30.0)), np.asarray(h[:, :3]), atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"hidden": ()}, "hidden"),
        ({"hidden": (8, 0)}, "hidden"),
        ({"points": 0}, "points"),
        ({"learning_rate": -1.0}, "learning_rate"),
        ({"omega0": float("nan")}, "omega0"),
        ({"jacobian_weight": -1.0}, "jacobian_weight"),
        ({"seed": 1.5}, "seed"),
        ({"patch": -1}, "patch"),
        ({"schedule": "linear"}, "schedule"),
        ({"output": "svf"}, "output"),
        ({"lattice": -1.0}, "lattice"),
        ({"stride": 0}, "stride"),
        ({"exp_steps": -1}, "exp_steps"),
        ({"folding_weight": -1.0}, "folding_weight"),
        ({"similarity": "no_such_similarity"}, "similarity"),
        ({"symmetric": True}, "symmetric"),
        ({"output": "velocity", "symmetric": "yes"}, "symmetric"),
    ],
)
def test_neural_field_bad_input(kwargs, match):
    with pytest.raises((ValueError, KeyError, TypeError), match=match):
        NeuralField(**kwargs)
