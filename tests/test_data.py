"""Built-in data (jaxreg.data) and the matplotlib helpers (jaxreg.plot)."""

from __future__ import annotations

import inspect
import socket

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage as ndi

import jaxreg
from jaxreg import data
from jaxreg.core.grid import Grid, Image


# -- phantom ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(40, 48), (24, 28, 20)])
def test_phantom_intensities_and_labels_agree(shape):
    img = data.phantom(shape, spacing=1.5)
    lab = data.phantom(shape, spacing=1.5, labels=True)
    assert img.data.shape == shape and img.data.dtype == jnp.float32
    assert lab.data.dtype == jnp.int32
    assert img.grid == lab.grid
    np.testing.assert_allclose(img.grid.spacing, 1.5)
    np.testing.assert_allclose(img.grid.center, 0.0, atol=1e-9)  # centred grid
    labels = np.asarray(lab.data)
    values = np.asarray(img.data)
    assert set(np.unique(labels)) == set(range(7))  # background + 6 ellipsoids, all visible
    assert 0.0 <= values.min() and values.max() <= 1.0
    for k in range(7):  # one intensity per label
        assert np.ptp(values[labels == k]) == 0.0
    assert values[labels == 0].max() == 0.0


@pytest.mark.parametrize("shape", [(10,), (4, 4, 4, 4), (0, 5)])
def test_phantom_rejects_bad_shapes(shape):
    with pytest.raises(ValueError, match="shape"):
        data.phantom(shape)


# -- smoothing and random fields --------------------------------------------------------------------------------
def test_gaussian_smooth_matches_scipy_inside_and_keeps_constants():
    grid = Grid.from_spacing((40, 36, 30), (1.0, 2.0, 1.5))
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), grid.shape))
    sigma_mm = 3.0
    got = np.asarray(data.gaussian_smooth(jnp.asarray(x), grid, sigma_mm))
    want = ndi.gaussian_filter(x, sigma_mm / grid.spacing, truncate=4.0, mode="constant")
    inner = tuple(
        slice(int(np.ceil(4 * sigma_mm / s)) + 1, -int(np.ceil(4 * sigma_mm / s)) - 1) for s in grid.spacing
    )
    np.testing.assert_allclose(got[inner], want[inner], atol=1e-5)
    ones = data.gaussian_smooth(jnp.ones(grid.shape + (2,)), grid, sigma_mm)  # channels, border renormalised
    np.testing.assert_allclose(ones, 1.0, atol=1e-5)
    np.testing.assert_allclose(data.gaussian_smooth(jnp.asarray(x), grid, 0.0), x, atol=1e-6)


def test_gaussian_smooth_validates():
    grid = Grid((8, 8))
    with pytest.raises(ValueError, match="data"):
        data.gaussian_smooth(jnp.zeros((8, 7)), grid, 1.0)
    with pytest.raises(ValueError, match="sigma_mm"):
        data.gaussian_smooth(jnp.zeros((8, 8)), grid, -1.0)


def test_random_velocity_field_signature_is_key_first_keyword_only():
    params = list(inspect.signature(data.random_velocity_field).parameters.values())
    assert params[0].name == "key"
    assert params[1].name == "grid"
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[2:])


@pytest.mark.parametrize("shape,spacing", [((48, 40), (1.0, 1.5)), ((24, 26, 22), 2.0)])
def test_random_velocity_field_is_seeded_scaled_and_smooth(shape, spacing):
    grid = Grid.from_spacing(shape, spacing)
    v = data.random_velocity_field(
        jax.random.PRNGKey(3), grid, smoothness_mm=8.0, max_displacement_mm=4.0, steps=6
    )
    assert isinstance(v, jaxreg.VelocityField) and v.grid == grid and v.steps == 6
    assert v.velocity.shape == (*shape, len(shape))
    same = data.random_velocity_field(jax.random.PRNGKey(3), grid, smoothness_mm=8.0, max_displacement_mm=4.0)
    other = data.random_velocity_field(
        jax.random.PRNGKey(4), grid, smoothness_mm=8.0, max_displacement_mm=4.0
    )
    np.testing.assert_array_equal(v.velocity, same.velocity)
    assert not np.allclose(v.velocity, other.velocity)
    norms = np.linalg.norm(np.asarray(v.velocity), axis=-1)
    assert norms.max() == pytest.approx(4.0, rel=1e-5)
    # smooth, moderate field: exp(v) moves points by about |v| and does not fold
    phi = v.exp()
    disp = np.linalg.norm(np.asarray(phi.displacement), axis=-1)
    assert 0.7 * 4.0 < disp.max() < 1.3 * 4.0
    det = np.asarray(jaxreg.jacobian_determinant(phi, grid))
    assert det.min() > 0.3 and det.max() < 3.0
    # exp(-v) inverts exp(v)
    pts = grid.world_coords()[tuple(slice(4, -4) for _ in shape)]
    back = jaxreg.invert(v)(phi(pts))
    np.testing.assert_allclose(back, pts, atol=0.05)


def test_random_velocity_field_validates():
    grid = Grid((8, 8))
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="smoothness_mm"):
        data.random_velocity_field(key, grid, smoothness_mm=0.0)
    with pytest.raises(ValueError, match="max_displacement_mm"):
        data.random_velocity_field(key, grid, max_displacement_mm=-1.0)
    with pytest.raises(TypeError, match="grid"):
        data.random_velocity_field(key, (8, 8))
    zero = data.random_velocity_field(key, grid, max_displacement_mm=0.0)
    np.testing.assert_array_equal(zero.velocity, 0.0)


# -- MNI152 ------------------------------------------------------------------------------------------------------
def test_load_mni152_offline(monkeypatch):
    pytest.importorskip("nilearn")

    def no_network(*args, **kwargs):
        raise AssertionError("load_mni152 tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    img = data.load_mni152(6)
    assert img.grid.shape == (34, 40, 33)
    np.testing.assert_allclose(img.grid.spacing, 6.0)
    assert img.grid.axcodes == ("R", "A", "S")
    np.testing.assert_allclose(img.grid.origin, (-98.0, -134.0, -72.0))
    assert img.data.dtype == jnp.float32
    assert float(img.data.min()) >= 0.0 and 0.5 < float(img.data.max()) <= 1.0


@pytest.mark.parametrize("resolution", [0, 2.5, True])
def test_load_mni152_rejects_bad_resolution(resolution):
    with pytest.raises(ValueError, match="resolution"):
        data.load_mni152(resolution)


# -- plot helpers ------------------------------------------------------------------------------------------------
def test_checkerboard_arrays_and_images():
    from jaxreg.plot import checkerboard

    a, b = np.zeros((8, 6)), np.ones((8, 6))
    cb = checkerboard(a, b, tiles=2)
    np.testing.assert_array_equal(cb[:4, :3], 0)
    np.testing.assert_array_equal(cb[4:, :3], 1)
    np.testing.assert_array_equal(cb[:4, 3:], 1)
    np.testing.assert_array_equal(cb[4:, 3:], 0)
    g = Grid((8, 6, 4))
    ci = checkerboard(Image(jnp.zeros(g.shape), g), Image(jnp.ones(g.shape), g), tiles=(2, 1, 2))
    assert isinstance(ci, Image) and ci.grid == g
    assert float(ci.data[0, 0, 0]) == 0 and float(ci.data[0, 0, 3]) == 1 and float(ci.data[5, 0, 0]) == 1
    with pytest.raises(ValueError, match="same shape"):
        checkerboard(a, np.ones((8, 5)))
    with pytest.raises(ValueError, match="same grid"):
        checkerboard(
            Image(jnp.zeros((8, 6)), Grid((8, 6))), Image(jnp.zeros((8, 6)), Grid.from_spacing((8, 6), 2.0))
        )


def test_show_slices_and_plot_grid(tmp_path):
    pytest.importorskip("matplotlib")
    from jaxreg.plot import plot_grid, save_figure, show_slices

    img3 = data.phantom((20, 24, 16), spacing=(1.0, 1.0, 2.0))
    fig = show_slices([img3, img3], titles=["a", "b"], colorbar=True)
    assert len([ax for ax in fig.axes if ax.images]) == 6  # 2 rows x 3 planes
    shift = jaxreg.Translation(jnp.array([2.0, 0.0, 0.0]))
    ax = plot_grid(shift, img3.grid, ax=fig.axes[3], axis=2, every=4)
    lines = ax.get_lines()
    assert len(lines) == len(range(0, 20, 4)) + len(range(0, 24, 4))
    # a 2 mm shift along axis 0 (spacing 1 mm) moves the first vertical line from x=0 to x=2
    np.testing.assert_allclose(lines[0].get_xdata(), 2.0, atol=1e-5)
    out = save_figure(fig, tmp_path / "f.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fig2 = show_slices([data.phantom((16, 12)), np.zeros((16, 12))])
    assert len([ax for ax in fig2.axes if ax.images]) == 2  # 2D: one panel per image
    save_figure(fig2, tmp_path / "g.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.png", "g.png"]  # no temporary leftovers


def test_save_figure_is_atomic(tmp_path):
    pytest.importorskip("matplotlib")
    from jaxreg.plot import save_figure, show_slices

    dest = tmp_path / "fig.xyz"  # unknown format: savefig fails
    dest.write_bytes(b"old")
    with pytest.raises(ValueError):
        save_figure(show_slices([np.zeros((4, 4))]), dest)
    assert dest.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["fig.xyz"]
    with pytest.raises(FileNotFoundError):
        save_figure(show_slices([np.zeros((4, 4))]), tmp_path / "missing" / "fig.png")
