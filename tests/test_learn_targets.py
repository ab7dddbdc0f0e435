"""Engine-computed targets (supervised from the classical engine) and the ``supervised_engine`` mode.

References: closed forms (label maps that are translated copies of each other, whose true correspondence is
the translation), nearest-neighbour resampling with ``scipy.ndimage.map_coordinates``, and invariants (the
augmented target maps the augmented fixed map onto the augmented moving map; cached fields equal fresh ones).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from jaxreg import Grid
from jaxreg.learn import PairLoader, modes
from jaxreg.learn.targets import engine_targets, label_embedding

GRID = Grid.from_spacing((32, 32), 1.0)
SHIFTS = ((0.0, 0.0), (2.0, -1.0), (-1.0, 2.0))  # mm (= voxels) of the three maps' content


def _maps() -> np.ndarray:
    """Three label maps: the same two nested blobs and a square, translated by ``SHIFTS``."""
    yy, xx = np.meshgrid(np.arange(32.0), np.arange(32.0), indexing="ij")
    out = []
    for dy, dx in SHIFTS:
        lab = np.zeros((32, 32), np.int32)
        lab[(yy - 14 - dy) ** 2 + (xx - 13 - dx) ** 2 < 64] = 1
        lab[(yy - 14 - dy) ** 2 + (xx - 13 - dx) ** 2 < 16] = 2
        lab[(np.abs(yy - 22 - dy) < 4) & (np.abs(xx - 22 - dx) < 3)] = 3
        out.append(lab)
    return np.stack(out)


def _pull_labels(labels: np.ndarray, disp_vox: np.ndarray) -> np.ndarray:
    coords = np.indices(labels.shape).astype(np.float64) + np.moveaxis(disp_vox, -1, 0)
    return ndimage.map_coordinates(labels, coords, order=0, mode="constant")


def _dice(a, b, values=(1, 2, 3)):
    return np.mean([2 * np.sum((a == v) & (b == v)) / (np.sum(a == v) + np.sum(b == v)) for v in values])


@pytest.fixture(scope="module")
def targets_and_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("targets")
    t = engine_targets(GRID, labels=_maps(), label_values=(1, 2, 3), levels=((1, 60),), batch_size=6, cache_dir=cache)
    return t, cache


def test_label_embedding_rows():
    e = label_embedding(5, 4, seed=1)
    assert e.shape == (6, 4) and e.dtype == np.float32
    np.testing.assert_array_equal(e[0], 0.0)
    np.testing.assert_allclose(np.linalg.norm(e[1:], axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(e, label_embedding(5, 4, seed=1))
    with pytest.raises(ValueError, match="channels"):
        label_embedding(3, 0)


def test_engine_targets_recover_the_translations(targets_and_cache):
    t, _ = targets_and_cache
    maps = _maps()
    assert t.shape == (3, 3, 32, 32, 2)
    np.testing.assert_array_equal(np.asarray(t[0, 0]), 0.0)
    inside = ndimage.binary_erosion(maps[0] > 0, iterations=2)
    for i in range(3):
        for j in range(3):
            if i == j:
                continue
            # pull convention: T_ij(x) = x + (s_j - s_i) maps map i onto map j
            want = np.subtract(SHIFTS[j], SHIFTS[i])
            inner = ndimage.binary_erosion(maps[i] > 0, iterations=2) if i else inside
            got = np.asarray(t[i, j])[inner].mean(axis=0)
            np.testing.assert_allclose(got, want, atol=0.35)
            before = _dice(maps[i], maps[j])
            after = _dice(maps[i], _pull_labels(maps[j], np.asarray(t[i, j])))
            assert after > before + 0.15 and after > 0.9


def test_engine_targets_are_cached_by_data_and_settings(targets_and_cache):
    t, cache = targets_and_cache
    files = sorted(cache.glob("targets-*.npy"))
    assert len(files) == 1 and not list(cache.glob(".targets-*"))
    again = engine_targets(GRID, labels=_maps(), label_values=(1, 2, 3), levels=((1, 60),), cache_dir=cache)
    assert isinstance(again, np.memmap)  # read back, not recomputed
    np.testing.assert_array_equal(np.asarray(again), np.asarray(t))
    other = _maps()
    other[0, 0, 0] = 3  # other data: another key
    engine_targets(GRID, labels=other, label_values=(1, 2, 3), levels=((1, 0),), cache_dir=cache)
    assert len(list(cache.glob("targets-*.npy"))) == 2


def test_engine_targets_bad_inputs():
    with pytest.raises(ValueError, match="label_values"):
        engine_targets(GRID, labels=_maps())
    with pytest.raises(ValueError, match="labels"):
        engine_targets(GRID, labels=_maps()[:, :16], label_values=(1,))
    with pytest.raises(ValueError, match="levels"):
        engine_targets(GRID, labels=_maps(), label_values=(1,), levels=((0, 5),))


def test_pair_loader_serves_the_target_of_each_sampled_pair():
    maps = _maps()
    t = np.random.default_rng(0).normal(size=(3, 3, 32, 32, 2)).astype(np.float32)
    loader = PairLoader(None, maps, batch_size=4, seed=2, prefetch=0, targets=t)
    batch = loader.make_batch(5)
    for b in range(4):
        i = int(np.flatnonzero((maps == batch["fixed_labels"][b]).all(axis=(1, 2)))[0])
        j = int(np.flatnonzero((maps == batch["moving_labels"][b]).all(axis=(1, 2)))[0])
        np.testing.assert_array_equal(batch["displacement"][b], t[i, j])
    with pytest.raises(ValueError, match="targets"):
        PairLoader(None, maps, batch_size=1, seed=0, targets=t[:2])


def test_supervised_engine_augment_keeps_the_target_exact(targets_and_cache):
    """The augmented target maps the deformed fixed map onto the deformed moving map (T' = psi^-1 T phi)."""
    t, _ = targets_and_cache
    maps = _maps()
    mode = modes.supervised_engine(GRID, label_values=(1, 2, 3), deformation_mm=3.0)
    assert mode.inputs == ("fixed_labels", "moving_labels", "displacement") and mode.targets is not None
    batch = {"fixed_labels": jnp.asarray(maps[[1, 2]]), "moving_labels": jnp.asarray(maps[[2, 0]]),
             "displacement": jnp.asarray(np.asarray(t)[[1, 2], [2, 0]])}  # fmt: skip
    out = mode.augment(jax.random.key(0), batch)
    assert out["fixed"].shape == (2, 32, 32, 1) and out["moving"].shape == (2, 32, 32, 1)
    for b in range(2):
        fl, ml = np.asarray(out["fixed_labels"][b]), np.asarray(out["moving_labels"][b])
        assert not np.array_equal(fl, np.asarray(batch["fixed_labels"][b]))  # really deformed
        f0, m0 = np.asarray(batch["fixed_labels"][b]), np.asarray(batch["moving_labels"][b])
        reference = _dice(f0, _pull_labels(m0, np.asarray(batch["displacement"][b])))  # the target before
        after = _dice(fl, _pull_labels(ml, np.asarray(out["displacement"][b])))
        # close to the original target, up to the nearest-neighbour resamplings of small blobs (a target that
        # ignored phi or psi would leave ~3 mm misalignments: Dice ~0.6-0.75)
        assert after > reference - 0.12 and after > 0.85
        assert after > _dice(fl, ml) + 0.1
    _, metrics = mode.loss(_Zero(), out, jax.random.key(1))
    want = np.mean(np.sum(np.asarray(out["displacement"]) ** 2, axis=-1))
    np.testing.assert_allclose(float(metrics["supervised"]), want, rtol=1e-4)
    masked = modes.supervised_engine(GRID, label_values=(1, 2, 3), deformation_mm=0.0, head_mask=True)
    out = masked.augment(jax.random.key(0), batch)
    # without map deformations the target is served unchanged
    np.testing.assert_allclose(np.asarray(out["displacement"]), np.asarray(batch["displacement"]), atol=1e-5)
    _, metrics = masked.loss(_Zero(), out, jax.random.key(1))
    sq = np.sum(np.asarray(out["displacement"]) ** 2, axis=-1)
    inside = np.asarray(batch["fixed_labels"]) != 0
    want = np.mean([sq[b][inside[b]].mean() for b in range(2)])  # per pair over its labelled voxels
    np.testing.assert_allclose(float(metrics["supervised"]), want, rtol=1e-4)
    assert not np.isclose(want, np.mean(sq), rtol=1e-2)


def test_compose_target_of_translations_is_closed_form():
    """phi, psi, T translations by a, b, c: T' = psi^-1 o T o phi is the translation a + c - b."""
    from jaxreg import Affine
    from jaxreg.learn.targets import compose_target

    a, b, c = np.array([1.5, -0.5]), np.array([-1.0, 2.0]), np.array([0.25, 0.75])
    u = jnp.broadcast_to(jnp.asarray(c, jnp.float32), (*GRID.shape, 2))
    phi = Affine(jnp.eye(2), jnp.asarray(a, jnp.float32), jnp.zeros(2))
    psi = Affine(jnp.eye(2), jnp.asarray(b, jnp.float32), jnp.zeros(2))
    got = np.asarray(compose_target(u, GRID, phi=phi, psi=psi))
    np.testing.assert_allclose(got, np.broadcast_to(a + c - b, got.shape), atol=1e-5)
    np.testing.assert_allclose(np.asarray(compose_target(u, GRID)), np.asarray(u), atol=1e-6)


class _Zero:
    """A stub network predicting the identity (zero displacement) on ``GRID``."""

    def __call__(self, fixed, moving):
        from jaxreg.learn.networks import Prediction

        return Prediction(None, jnp.zeros((fixed.shape[0], *GRID.shape, 2)))

    def to_transform(self, prediction, grid):
        from jaxreg import DisplacementField

        return DisplacementField(prediction.field, grid)
