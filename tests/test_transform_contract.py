"""The transform contract: every concrete transform class honours the protocol of ``Transform``.

One contract test runs over every concrete :class:`~jaxreg.transforms.base.Transform` subclass of the library
(discovered from ``Transform.__subclasses__()``, so a new class without an entry here fails), in 2D and 3D on
small oblique anisotropic grids, against independent references: NumPy float64 evaluation of the analytic
fields, central finite differences of ``__call__`` for Jacobians, Python loops for ``vmap`` and SciPy's
``map_coordinates`` for scaling and squaring.
"""

import inspect
import itertools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.ndimage
from scipy.spatial.transform import Rotation

import jaxreg as jr
from jaxreg.transforms import (
    Affine,
    BSplineTransform,
    Composite,
    DisplacementField,
    LinearTransform,
    NumericalInverse,
    Polynomial,
    RegionRigid,
    Rigid,
    Similarity,
    Transform,
    Translation,
    VelocityField,
    bspline_control_grid,
    compose,
    exp_voxel_field,
    from_voxel_displacement,
    jacobian,
    monomial_exponents,
    to_voxel_displacement,
)


def _grid_affine(linear: np.ndarray, origin: np.ndarray) -> np.ndarray:
    n = len(origin)
    a = np.eye(n + 1)
    a[:n, :n] = linear
    a[:n, n] = origin
    return a


_ROT2 = np.array([[np.cos(0.5), -np.sin(0.5)], [np.sin(0.5), np.cos(0.5)]])
_ROT3 = Rotation.from_rotvec([0.3, -0.2, 0.4]).as_matrix()
# oblique, anisotropic voxel-to-world affines (RAS mm)
GRIDS = {
    2: jr.Grid((6, 7), _grid_affine(_ROT2 @ np.diag([0.9, 1.3]), np.array([4.0, -3.0]))),
    3: jr.Grid((5, 6, 4), _grid_affine(_ROT3 @ np.diag([1.1, 0.8, 1.5]), np.array([3.0, -2.0, 5.0]))),
}


# -- analytic fields (NumPy float64 references) ------------------------------------------------------------
def _world(grid: jr.Grid, index: np.ndarray) -> np.ndarray:
    a = grid.affine
    n = grid.ndim
    return np.asarray(index, np.float64) @ a[:n, :n].T + a[:n, n]


def _index(grid: jr.Grid, points: np.ndarray) -> np.ndarray:
    a = grid.inverse_affine
    n = grid.ndim
    return np.asarray(points, np.float64) @ a[:n, :n].T + a[:n, n]


def _voxel_centres(grid: jr.Grid) -> np.ndarray:
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in grid.shape], indexing="ij"), axis=-1)
    return _world(grid, idx)


def _linear_values(points: np.ndarray, ndim: int, k: int) -> np.ndarray:
    """``u(x) = B_k (x - x0) + c_k`` (mm), an affine world field: linear interpolation reproduces it exactly."""
    rng = np.random.default_rng(10 + ndim)
    b = 0.06 * rng.normal(size=(ndim, ndim)) * (1.0 + 0.2 * k)
    c = 0.4 * rng.normal(size=ndim) + 0.1 * k
    return (np.asarray(points) - GRIDS[ndim].center) @ b.T + c


def linear_field(grid: jr.Grid, k: int) -> jax.Array:
    return jnp.asarray(_linear_values(_voxel_centres(grid), grid.ndim, k), jnp.float32)


def noisy_field(grid: jr.Grid, k: int) -> jax.Array:
    noise = 0.15 * np.random.default_rng(100 + k).normal(size=(*grid.shape, grid.ndim))
    return jnp.asarray(_linear_values(_voxel_centres(grid), grid.ndim, k) + noise, jnp.float32)


# -- one small non-trivial instance of every class ------------------------------------------------------------
def _f32(x) -> jax.Array:
    return jnp.asarray(x, jnp.float32)


def _rotation(ndim: int, k: int) -> jax.Array:
    return _f32(0.2 + 0.05 * k) if ndim == 2 else _f32(np.array([0.1, -0.2, 0.15]) * (1.0 + 0.1 * k))


def _translation(ndim: int, k: int) -> jax.Array:
    return _f32(np.array([1.0, -0.5, 0.3])[:ndim] * (1.0 + 0.1 * k))


def _centre(ndim: int) -> jax.Array:
    return _f32(GRIDS[ndim].center)


def make_translation(ndim, k, field):
    return Translation(_translation(ndim, k))


def make_rigid(ndim, k, field):
    return Rigid(_rotation(ndim, k), _translation(ndim, k), _centre(ndim))


def make_similarity(ndim, k, field):
    return Similarity(_rotation(ndim, k), _f32(0.08 - 0.02 * k), _translation(ndim, k), _centre(ndim))


def make_affine(ndim, k, field):
    m = np.eye(ndim) + 0.1 * np.random.default_rng(20 + k).normal(size=(ndim, ndim))
    return Affine(_f32(m), _translation(ndim, k), _centre(ndim))


def make_polynomial(ndim, k, field):
    n_terms = len(monomial_exponents(ndim, 2))
    c = 0.4 * np.random.default_rng(30 + k).normal(size=(n_terms, ndim))
    return Polynomial(_f32(c), _centre(ndim), _f32(5.0), 2)


def make_bspline(ndim, k, field):
    cg = bspline_control_grid(GRIDS[ndim], 2.5)
    c = 0.3 * np.random.default_rng(40 + k).normal(size=(*cg.shape, ndim))
    return BSplineTransform(_f32(c), cg)


def make_displacement(ndim, k, field):
    return DisplacementField(field(GRIDS[ndim], k), GRIDS[ndim])


def make_velocity(ndim, k, field):
    return VelocityField(field(GRIDS[ndim], k), GRIDS[ndim], 3)


def make_composite(ndim, k, field):
    return compose(make_rigid(ndim, k, field), make_displacement(ndim, k, field))


def make_region(ndim, k, field):
    g = GRIDS[ndim]
    x = np.asarray(g.world_coords())
    c = x.reshape(-1, ndim).mean(0)
    w = np.clip(1.5 - np.linalg.norm(x - c, axis=-1) / (0.3 * np.abs(np.asarray(g.extent)).max()), 0.0, 1.0)
    rng = np.random.default_rng(60 + k)
    rot = _f32(rng.normal(size=()) * 2.0) if ndim == 2 else _f32(rng.normal(size=3) * 2.0)
    return RegionRigid(rot, _f32(rng.normal(size=ndim)), _f32(c), _f32(w), g, 50.0)


def make_numerical_inverse(ndim, k, field):
    return NumericalInverse(make_polynomial(ndim, k, field), 20)


class Case(NamedTuple):
    """``build(ndim, k, field) -> transform`` (``k`` varies the parameters, ``field(grid, k)`` gives the dense
    values on ``GRIDS[ndim]``) and its kind: ``"linear"``; ``"world"`` (non-linear, defined in world mm);
    ``"dense"`` (its regularised field is ``field`` on ``GRIDS[ndim]`` and its outputs are kept by ``on_grid``
    where both grids interpolate the linear field); ``"velocity"`` (as dense, but ``exp`` of the resampled
    velocity differs near the borders, so only the velocity values are compared)."""

    cls: type
    build: Callable
    kind: str


CASES = {
    "Translation": Case(Translation, make_translation, "linear"),
    "Rigid": Case(Rigid, make_rigid, "linear"),
    "Similarity": Case(Similarity, make_similarity, "linear"),
    "Affine": Case(Affine, make_affine, "linear"),
    "Polynomial": Case(Polynomial, make_polynomial, "world"),
    "BSplineTransform": Case(BSplineTransform, make_bspline, "world"),
    "DisplacementField": Case(DisplacementField, make_displacement, "dense"),
    "VelocityField": Case(VelocityField, make_velocity, "velocity"),
    "Composite": Case(Composite, make_composite, "dense"),
    "NumericalInverse": Case(NumericalInverse, make_numerical_inverse, "world"),
    "RegionRigid": Case(RegionRigid, make_region, "world"),
}


def _concrete_transform_classes() -> set[type]:
    out: set[type] = set()
    todo = [Transform]
    while todo:
        for sub in todo.pop().__subclasses__():
            todo.append(sub)
            if not inspect.isabstract(sub) and sub.__module__.startswith("jaxreg."):
                out.add(sub)
    return out


def test_contract_covers_every_transform_class():
    assert _concrete_transform_classes() == {c.cls for c in CASES.values()}


def _points(ndim: int, seed: int = 0) -> jax.Array:
    g = GRIDS[ndim]
    rng = np.random.default_rng(seed)
    idx = rng.uniform(-1.0, 1.0, size=(4, 3, ndim)) + rng.uniform(0, 1, size=(4, 3, ndim)) * np.asarray(g.shape)
    return _f32(_world(g, idx))


# -- 1. distinct treedefs ---------------------------------------------------------------------------------
def test_distinct_classes_have_distinct_treedefs():
    ts = {name: case.build(2, 0, noisy_field) for name, case in CASES.items()}
    # same leaf counts across classes: one leaf (Translation, a one-member Composite, a NumericalInverse of a
    # Translation, DisplacementField), three leaves (Rigid, Affine, Polynomial)
    off = _translation(2, 0)
    ts["Composite of one Translation"] = Composite((Translation(off),))
    ts["NumericalInverse of a Translation"] = NumericalInverse(Translation(off), 20)
    defs = {name: jax.tree_util.tree_structure(t) for name, t in ts.items()}
    assert defs["Translation"].num_leaves == defs["Composite of one Translation"].num_leaves == 1
    assert defs["Rigid"].num_leaves == defs["Affine"].num_leaves == defs["Polynomial"].num_leaves == 3
    for (a, da), (b, db) in itertools.combinations(defs.items(), 2):
        assert da != db, f"{a} and {b} share a treedef"
    # a jitted function shared by classes with equal leaf counts returns each one's own class
    same = jax.jit(lambda t: t)
    for name in ("Rigid", "Affine", "Polynomial", "Translation", "Composite of one Translation"):
        assert type(same(ts[name])) is type(ts[name])


# -- 2. the contract ---------------------------------------------------------------------------------------
def _check_pytree(t: Transform, pts: jax.Array) -> None:
    leaves, treedef = jax.tree_util.tree_flatten(t)
    back = jax.tree_util.tree_unflatten(treedef, leaves)
    assert type(back) is type(t)
    assert jax.tree_util.tree_structure(back) == treedef
    np.testing.assert_array_equal(np.asarray(back(pts)), np.asarray(t(pts)))
    # every leaf has an attribute key path
    for path, _ in jax.tree_util.tree_flatten_with_path(t)[0]:
        assert path and all(isinstance(p, (jax.tree_util.GetAttrKey, jax.tree_util.SequenceKey)) for p in path)


def _check_on_grid(case: Case, ndim: int) -> None:
    g = GRIDS[ndim]
    t = case.build(ndim, 1, linear_field)
    assert t.on_grid(g).ndim == ndim
    for new in (g.downsample(2), g.upsample(2)):
        t2 = t.on_grid(new)
        assert type(t2) is type(t)
        assert t2.is_linear == t.is_linear
        centres = _voxel_centres(new)
        old_idx = _index(g, centres)
        inside = np.all((old_idx >= -1e-6) & (old_idx <= np.asarray(g.shape) - 1 + 1e-6), axis=-1)
        if case.kind in ("linear", "world"):
            # defined in world mm: the same transform everywhere
            if case.cls is not NumericalInverse:
                assert t2 is t
            pts = _points(ndim, 3)
            np.testing.assert_allclose(np.asarray(t2(pts)), np.asarray(t(pts)), atol=1e-5)
            continue
        # dense: the field's values at the new voxel centres are those of the (linear) field, with the edge
        # values repeated beyond the old voxel centres (index clamped to [0, n - 1] per axis)
        field, fgrid = t2.regularized_field(new)
        assert fgrid == new
        clamped = np.clip(old_idx, 0, np.asarray(g.shape) - 1)
        want = _linear_values(_world(g, clamped), ndim, 1)
        np.testing.assert_allclose(np.asarray(field), want, atol=2e-5)
        assert inside.any()
        if new == g.downsample(2):
            assert inside.all()  # the coarse grid's centres lie inside the fine grid's
        if case.kind == "dense":
            # where both grids interpolate the linear field, the transform is unchanged
            p = _f32(centres[inside])
            np.testing.assert_allclose(np.asarray(t2(p)), np.asarray(t(p)), atol=2e-5)


def _check_regularized_field(case: Case, t: Transform, ndim: int) -> None:
    g = GRIDS[ndim]
    other = g.downsample(2)  # a sampling grid different from the fields' own
    field, fgrid = t.regularized_field(other)
    if case.kind == "linear":
        assert field is None and fgrid == other
    elif case.kind == "world":
        assert fgrid == other and field.shape == (*other.shape, ndim)
        x = _f32(_voxel_centres(other))
        np.testing.assert_allclose(np.asarray(field), np.asarray(t(x) - x), atol=2e-5)
    else:  # the dense field itself, on its own grid
        assert fgrid == g and field.shape == (*g.shape, ndim)
        np.testing.assert_array_equal(np.asarray(field), np.asarray(noisy_field(g, 0)))


def _check_linear_part(t: Transform, pts: jax.Array) -> None:
    lin = t.linear_part()
    assert isinstance(t.is_linear, bool)
    if t.is_linear:
        assert isinstance(lin, LinearTransform)
        np.testing.assert_allclose(np.asarray(lin(pts)), np.asarray(t(pts)), atol=1e-5)
    else:
        assert lin is None


def _check_jacobian(t: Transform, ndim: int) -> None:
    """``jacobian`` (central differences of the sampled transform, one voxel apart) against central
    differences of ``__call__`` at the world neighbours ``x +- a_j`` (``a_j`` the grid's axis vectors, mm):
    ``J = D A^-1`` with ``D[:, j] = (T(x + a_j) - T(x - a_j)) / 2``, compared on interior voxels."""
    g = GRIDS[ndim]
    a = g.affine[:ndim, :ndim]
    x = _voxel_centres(g)
    d = np.stack(
        [(np.asarray(t(_f32(x + a[:, j]))) - np.asarray(t(_f32(x - a[:, j])))) / 2.0 for j in range(ndim)], -1
    )
    ref = d @ np.linalg.inv(a)
    got = np.asarray(jacobian(t, g))
    assert got.shape == (*g.shape, ndim, ndim)
    inner = tuple(slice(1, -1) for _ in range(ndim))
    np.testing.assert_allclose(got[inner], ref[inner], atol=5e-5)
    if t.is_linear:
        np.testing.assert_allclose(got, np.broadcast_to(ref[inner][(0,) * ndim], got.shape), atol=5e-5)


def _check_jit(t: Transform, pts: jax.Array, ndim: int) -> None:
    g = GRIDS[ndim]
    np.testing.assert_allclose(np.asarray(jax.jit(lambda t, p: t(p))(t, pts)), np.asarray(t(pts)), atol=1e-5)
    got = jax.jit(lambda t: t.sample_grid(g))(t)
    np.testing.assert_allclose(np.asarray(got), np.asarray(t.sample_grid(g)), atol=1e-5)
    coarse = g.downsample(2)
    jit_field = jax.jit(lambda t: t.on_grid(coarse).regularized_field(coarse)[0])(t)
    field = t.on_grid(coarse).regularized_field(coarse)[0]
    if field is None:
        assert jit_field is None
    else:
        np.testing.assert_allclose(np.asarray(jit_field), np.asarray(field), atol=1e-5)


def _check_vmap(case: Case, ndim: int, pts: jax.Array) -> None:
    ts = [case.build(ndim, k, noisy_field) for k in range(3)]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *ts)
    assert type(stacked) is case.cls
    got = jax.vmap(lambda t: t(pts))(stacked)
    want = np.stack([np.asarray(t(pts)) for t in ts])
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)
    assert not np.allclose(want[0], want[1])  # the three instances differ


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("name", sorted(CASES))
def test_transform_contract(name, ndim):
    case = CASES[name]
    t = case.build(ndim, 0, noisy_field)
    assert type(t) is case.cls and t.ndim == ndim
    assert t.is_linear == (case.kind == "linear")
    pts = _points(ndim)
    _check_pytree(t, pts)
    _check_on_grid(case, ndim)
    _check_regularized_field(case, t, ndim)
    _check_linear_part(t, pts)
    _check_jacobian(t, ndim)
    _check_jit(t, pts, ndim)
    _check_vmap(case, ndim, pts)


@pytest.mark.parametrize("ndim", [2, 3])
def test_dense_on_own_grid_is_identity(ndim):
    g = GRIDS[ndim]
    for t in (make_displacement(ndim, 0, noisy_field), make_velocity(ndim, 0, noisy_field)):
        assert t.on_grid(g) is t
    c = make_composite(ndim, 0, noisy_field)
    assert all(a is b for a, b in zip(c.on_grid(g).transforms, c.transforms))


def test_composite_of_linear_members_is_linear():
    g = GRIDS[3]
    c = compose(make_rigid(3, 0, None), make_affine(3, 1, None), make_translation(3, 2, None))
    assert c.is_linear is True
    lin = c.linear_part()
    assert isinstance(lin, Affine)
    pts = _points(3)
    np.testing.assert_allclose(np.asarray(lin(pts)), np.asarray(c(pts)), atol=1e-5)
    assert c.regularized_field(g) == (None, g)
    assert c.on_grid(g.downsample(2)).is_linear is True
    # the last non-linear member (the first applied) is the one regularised
    field = make_displacement(3, 0, noisy_field)
    mixed = compose(make_bspline(3, 0, None), field, make_rigid(3, 0, None))
    assert mixed.is_linear is False and mixed.linear_part() is None
    assert mixed.regularized_field(g)[0] is field.displacement


# -- 3. scaling and squaring ------------------------------------------------------------------------------
def _exp_reference(v: np.ndarray, steps: int) -> np.ndarray:
    """Scaling and squaring in float64 with SciPy: ``u <- u + u o (id + u)``, linear, edge mode nearest."""
    ndim = v.shape[-1]
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in v.shape[:-1]], indexing="ij"), axis=-1)
    u = np.asarray(v, np.float64) / 2.0**steps
    for _ in range(steps):
        at = np.moveaxis(idx + u, -1, 0)
        u = u + np.stack(
            [scipy.ndimage.map_coordinates(u[..., c], at, order=1, mode="nearest") for c in range(ndim)], -1
        )
    return u


@pytest.mark.parametrize("ndim", [2, 3])
def test_exp_voxel_field_matches_scipy_and_velocity_field(ndim):
    g = GRIDS[ndim]
    v_mm = 2.0 * noisy_field(g, 0)
    v_vox = to_voxel_displacement(v_mm, g)
    got = exp_voxel_field(v_vox, 4)
    assert got.shape == v_vox.shape and got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), _exp_reference(np.asarray(v_vox), 4), atol=1e-5)
    exp = VelocityField(v_mm, g, 4).exp()
    assert exp.grid == g
    want = from_voxel_displacement(_f32(_exp_reference(np.asarray(v_vox), 4)), g)
    np.testing.assert_allclose(np.asarray(exp.displacement), np.asarray(want), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(exp_voxel_field(v_vox, 0)), np.asarray(v_vox))


@pytest.mark.parametrize("ndim", [2, 3])
def test_exp_of_constant_velocity_is_the_translation(ndim):
    g = GRIDS[ndim]
    c = np.array([0.7, -1.3, 0.4])[:ndim]
    v = jnp.broadcast_to(_f32(c), (*g.shape, ndim))
    # index units: a constant field composes with itself exactly (edge values are the same constant)
    np.testing.assert_allclose(np.asarray(exp_voxel_field(v, 5)), np.broadcast_to(c, v.shape), rtol=1e-6)
    # world mm, oblique grid: exp(v) is the translation by v inside the grid
    field = VelocityField(v, g, 5)
    np.testing.assert_allclose(np.asarray(field.exp().displacement), np.broadcast_to(c, v.shape), atol=1e-5)
    x = _f32(_voxel_centres(g)[tuple(slice(1, -1) for _ in range(ndim))])
    np.testing.assert_allclose(np.asarray(field(x)), np.asarray(Translation(_f32(c))(x)), atol=1e-5)


def test_exp_of_linear_velocity_closed_form():
    """``v(x) = L (x - x0)`` in voxels: each squaring of a linear field is linear, ``u_N = ((I + L / 2^N)^(2^N)
    - I)(x - x0)``, exact wherever the edge clamping has not reached (``N + 2`` voxels from the border); it
    tends to ``(expm(L) - I)(x - x0)``."""
    shape, steps = (20, 18), 4
    lmat = np.array([[0.04, -0.05], [0.03, 0.02]])
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1).astype(np.float64)
    x0 = (np.asarray(shape) - 1) / 2.0
    v = (idx - x0) @ lmat.T
    got = np.asarray(exp_voxel_field(_f32(v), steps))
    step = np.linalg.matrix_power(np.eye(2) + lmat / 2.0**steps, 2**steps) - np.eye(2)
    want = (idx - x0) @ step.T
    m = steps + 2
    np.testing.assert_allclose(got[m:-m, m:-m], want[m:-m, m:-m], atol=1e-5)
    near = (idx - x0) @ (scipy.linalg.expm(lmat) - np.eye(2)).T
    np.testing.assert_allclose(got[m:-m, m:-m], near[m:-m, m:-m], atol=2e-3)


def test_exp_voxel_field_tolerance_picks_the_fewest_squarings():
    """``tolerance``: ``N = min(steps, ceil(log2(max |v| / tol)))`` squarings, chosen per field at run time
    (ITK's automatic rule), equal to the fixed-``N`` exponential; under ``vmap`` each member gets its own ``N``."""
    shape = (20, 18)
    lmat = np.array([[0.04, -0.05], [0.03, 0.02]])
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1).astype(np.float64)
    base = (idx - (np.asarray(shape) - 1) / 2.0) @ lmat.T
    biggest = np.sqrt((base**2).sum(-1)).max()
    fields, wants = [], []
    for scale in (0.3, 3.0, 40.0):
        v = _f32(scale * base)
        n = int(min(6, max(0, np.ceil(np.log2(scale * biggest / 0.5)))))
        got = exp_voxel_field(v, 6, tolerance=0.5)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(exp_voxel_field(v, n)))
        fields.append(v)
        wants.append(np.asarray(got))
    assert [int(min(6, max(0, np.ceil(np.log2(s * biggest / 0.5))))) for s in (0.3, 3.0, 40.0)] == [0, 3, 6]
    batched = jax.vmap(lambda v: exp_voxel_field(v, 6, tolerance=0.5))(jnp.stack(fields))
    np.testing.assert_allclose(np.asarray(batched), np.stack(wants), rtol=1e-5, atol=1e-4)
    # close to the 6-step exponential where the fixed-N one is accurate
    np.testing.assert_allclose(
        np.asarray(exp_voxel_field(fields[1], 6, tolerance=0.5)), np.asarray(exp_voxel_field(fields[1], 6)), atol=0.02
    )
    np.testing.assert_array_equal(np.asarray(exp_voxel_field(jnp.zeros((5, 4, 2)), 6, tolerance=0.5)), 0.0)
    with pytest.raises(ValueError, match="tolerance"):
        exp_voxel_field(fields[0], 6, tolerance=-0.1)


def test_exp_voxel_field_rejects_bad_input():
    with pytest.raises(ValueError, match="shape"):
        exp_voxel_field(jnp.zeros((4, 5, 3)), 2)
    with pytest.raises(ValueError, match="steps"):
        exp_voxel_field(jnp.zeros((4, 5, 2)), -1)
    with pytest.raises(ValueError, match="steps"):
        exp_voxel_field(jnp.zeros((4, 5, 2)), 1.5)
