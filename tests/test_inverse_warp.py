"""``inverse_warp.nii.gz``: the inverse of the deformable part written by a registration run, checked against
closed forms, against SimpleITK's resampling of the inverse chain ``-t [affine.mat,1] -t inverse_warp.nii.gz``, and
by round trips through the written files.

A registration result with a known affine and a known stationary velocity field is built directly (a
:class:`~jaxreg.optimize.Registration` of two stages) and passed through :func:`jaxreg.evaluation.summarize` and
:func:`jaxreg.io.write_outputs`, the code path of ``jaxreg register``; the end-to-end ``jaxreg register`` run is
checked in ``tests/test_cli_register.py``.
"""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import SimpleITK as sitk

from jaxreg.cli._args import load_transforms
from jaxreg.cli.main import main
from jaxreg.core.grid import Grid, Image
from jaxreg.data import phantom
from jaxreg.evaluation import RegistrationInputs, inverse_consistency_error, summarize
from jaxreg.io import load_image, load_labels, read_transform, save_image, write_outputs
from jaxreg.optimize.engine import Registration, StageResult
from jaxreg.transforms import (
    Affine,
    DisplacementField,
    Translation,
    VelocityField,
    compose,
    inverse_displacement,
    inverse_method,
    invert,
    invert_field,
    rotation_matrix,
    to_displacement,
)

FIXED_SHAPE = (40, 36)


def _moving_grid() -> Grid:
    """A rotated (8 deg), shifted grid of another shape and spacing."""
    g = Grid.centered((38, 42), (2.1, 1.8))
    a = np.array(g.affine)
    r = np.asarray(rotation_matrix(jnp.deg2rad(jnp.float32(8.0))), np.float64)
    a[:2, :2] = r @ a[:2, :2]
    a[:2, 2] = r @ a[:2, 2] + np.array([2.5, -3.0])
    return Grid((38, 42), a)


def _velocity(grid: Grid, amplitude: float = 4.0) -> VelocityField:
    """A smooth velocity (mm): two Gaussian swirls/pushes, up to ``amplitude`` mm."""
    x = np.asarray(grid.world_coords(jnp.float32), np.float64)
    v = np.zeros_like(x)
    for c, w, s in (((-8.0, 6.0), (1.0, -0.6), 12.0), ((10.0, -8.0), (-0.4, 1.0), 10.0)):
        g = np.exp(-np.sum((x - np.asarray(c)) ** 2, -1) / (2 * s**2))
        v += amplitude * g[..., None] * np.asarray(w)
    return VelocityField(jnp.asarray(v, jnp.float32), grid, 7)


def _affine() -> Affine:
    m = np.asarray(rotation_matrix(jnp.deg2rad(jnp.float32(-6.0))), np.float64) * np.array([[1.05], [0.97]])
    h = np.eye(3)
    h[:2, :2] = m
    h[:2, 2] = [2.0, -1.5]
    return Affine.from_homogeneous(jnp.asarray(h, jnp.float32))


def _result(linear, deformable) -> Registration:
    stages = [StageResult("affine", linear, None, (), None, 0.0)]
    if deformable is not None:
        stages.append(StageResult("deformable", deformable, linear, (), None, 0.0))
    full = linear if deformable is None else compose(linear, deformable)
    return Registration(full, tuple(stages), 0.0)


def _write_run(root, deformable_kind="velocity"):
    fixed = phantom(FIXED_SHAPE, spacing=2.0)
    mg = _moving_grid()
    moving = Image(phantom(mg.shape).data * 50.0, mg)
    paths = {k: root / f"{k}.nii.gz" for k in ("fixed", "moving", "fixed_labels")}
    save_image(fixed, paths["fixed"])
    save_image(moving, paths["moving"])
    save_image(phantom(FIXED_SHAPE, spacing=2.0, labels=True), paths["fixed_labels"])
    v = _velocity(fixed.grid)
    deformable = {"velocity": v, "field": v.exp(), "none": None}[deformable_kind]
    result = _result(_affine(), deformable)
    opts = {"pipeline": "test", "linear_levels": [], "deformable_levels": [], "greedy": {}, "window": 5}
    outs = summarize(RegistrationInputs(fixed, moving), result, opts)
    out = root / "out"
    write_outputs(out, outs)
    return paths, out, result, json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("inverse")
    paths, out, result, report = _write_run(root)
    return {"root": root, "paths": paths, "out": out, "result": result, "report": report}


# -- the library -------------------------------------------------------------------------------------------------
def test_inverse_method_names_invert_branches():
    g = Grid.centered((8, 8), 1.0)
    v = VelocityField.identity(g)
    a = Affine.identity(2)
    assert inverse_method(a) == "exact"
    assert inverse_method(v) == "exp(-v)"
    assert inverse_method(compose(a, v)) == "exp(-v)"
    assert inverse_method(v.exp()) == "fixed-point"
    assert inverse_method(compose(a, v, v.exp())) == "fixed-point"


def test_inverse_displacement_of_velocity_is_exp_minus_v():
    g = Grid.centered(FIXED_SHAPE, 2.0)
    v = _velocity(g)
    got = inverse_displacement(v, g)
    want = VelocityField(-v.velocity, g, v.steps).exp()  # exp(-v), the one scaling-and-squaring kernel
    np.testing.assert_allclose(np.asarray(got.displacement), np.asarray(want.displacement), atol=2e-5)  # float32 world coordinates
    ic = inverse_consistency_error(v.exp(), got, g)
    assert ic.num_outside == 0 and ic.mean < 0.01 and ic.max < 0.05, ic


def test_relaxed_fixed_point_inverts_a_locally_expanding_field():
    """``du/dx`` up to 1.5 (local stretch 2.5, no folding): the plain iteration is no contraction there; the
    relaxed one (the default of inverse_displacement) converges to the exact inverse."""
    g = Grid.centered((64, 8), 1.0)
    x = np.asarray(g.world_coords(), np.float64)[..., 0]
    s = 4.0
    # u = 1.5 * integral of a Gaussian of height 1: du/dx = 1.5 exp(-x^2 / (2 s^2)) in (0, 1.5]
    u0 = 1.5 * s * math.sqrt(math.pi / 2) * np.vectorize(math.erf)(x / (s * math.sqrt(2)))
    u = np.stack([u0, np.zeros_like(u0)], -1)
    field = DisplacementField(jnp.asarray(u, jnp.float32), g)
    inv = inverse_displacement(field, g)
    ic = inverse_consistency_error(field, inv, g)
    assert ic.max < 1e-3, ic
    # closed form: y = x + u(x) is increasing; solve it by bisection for every voxel centre y
    y = x[:, 0]
    lo, hi = y - 20.0, y + 20.0
    f = lambda t: t + 1.5 * s * math.sqrt(math.pi / 2) * np.vectorize(math.erf)(t / (s * math.sqrt(2)))  # noqa: E731
    for _ in range(60):
        mid = (lo + hi) / 2
        below = f(mid) < y
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    want = (lo + hi) / 2 - y
    inside = np.abs((lo + hi) / 2) < 25.0  # the inverse point stays on the field's grid (|x| < 31.5)
    got = np.asarray(inv.displacement)[:, 0, 0]
    # linear interpolation of u between voxel centres: the discrete inverse differs from the smooth one by ~h^2 u''
    np.testing.assert_allclose(got[inside], want[inside], atol=0.05)
    with pytest.raises(ValueError, match="relaxation"):
        invert_field(field, relaxation=0.0)


def test_inverse_consistency_error_closed_form():
    """Forward: constant displacement ``a`` on the grid; inverse: translation by ``-a + e``: the error is ``|e|``
    wherever the inverse point stays on the grid, and those that leave it are counted."""
    g = Grid.centered((20, 16), 1.5)
    a = np.array([3.0, -2.0])
    e = np.array([0.3, 0.4])
    field = DisplacementField(jnp.broadcast_to(jnp.asarray(a, jnp.float32), (*g.shape, 2)), g)
    inv = Translation(jnp.asarray(-a + e, jnp.float32))
    ic = inverse_consistency_error(field, inv, g)
    idx = np.asarray(g.world_to_index(g.world_coords() + (-a + e).astype(np.float32)))
    inside = np.all((idx >= -0.5) & (idx <= np.asarray(g.shape) - 0.5), -1)
    assert ic.num_voxels == inside.sum() and ic.num_outside == (~inside).sum() > 0
    assert ic.mean == pytest.approx(0.5, abs=1e-5) and ic.max == pytest.approx(0.5, abs=1e-5)
    mask = np.zeros(g.shape)
    mask[5:10, 5:10] = 1
    assert inverse_consistency_error(field, inv, g, mask=mask).num_voxels == 25
    with pytest.raises(ValueError, match="mask"):
        inverse_consistency_error(field, inv, g, mask=np.zeros(g.shape))


# -- the written files -------------------------------------------------------------------------------------------
def test_run_writes_exp_minus_v_and_its_consistency(run):
    rep = run["report"]
    assert "inverse_warp.nii.gz" in rep["files"] and (run["out"] / "inverse_warp.nii.gz").is_file()
    inv = rep["inverse_warp"]
    assert inv["method"] == "exp(-v)"
    assert inv["mean_mm"] < 0.01 and inv["max_mm"] < 0.05 and inv["num_outside"] == 0
    g = load_image(run["paths"]["fixed"]).grid
    field = read_transform(run["out"] / "inverse_warp.nii.gz")
    assert isinstance(field, DisplacementField) and field.grid == g
    want = to_displacement(invert(run["result"].deformable), g)
    np.testing.assert_allclose(np.asarray(field.displacement), np.asarray(want.displacement), atol=1e-5)


@pytest.mark.parametrize("kind", ["field", "none"])
def test_fixed_point_inverse_and_linear_runs(tmp_path, kind):
    _, out, _, rep = _write_run(tmp_path, kind)
    if kind == "none":  # no deformable stage: no inverse warp
        assert "inverse_warp" not in rep and not (out / "inverse_warp.nii.gz").exists()
        return
    assert rep["inverse_warp"]["method"] == "fixed-point"
    assert rep["inverse_warp"]["max_mm"] < 1e-3  # the discrete inverse of the written field


def _sitk_inverse_chain(out):
    """SimpleITK's transform for ``-t [affine.mat,1] -t inverse_warp.nii.gz`` (the point goes through the
    inverse affine first: ITK's CompositeTransform applies its last member first)."""
    a = sitk.ReadTransform(str(out / "affine.mat"))
    w = sitk.DisplacementFieldTransform(sitk.ReadImage(str(out / "inverse_warp.nii.gz"), sitk.sitkVectorFloat64))
    return sitk.CompositeTransform([w, a.GetInverse()])


def _sitk_array(img) -> np.ndarray:
    return sitk.GetArrayFromImage(img).T  # (y, x) -> index order (i, j)


def _rim_free(transform, src_grid: Grid, dst_grid: Grid, tol: float = 1e-4) -> np.ndarray:
    """Voxels of ``dst_grid`` whose mapped point is not within the half-voxel rim of ``src_grid``, where ITK
    (clamped to the edge voxel) and jaxreg (blended with the background) differ by convention."""
    idx = np.asarray(src_grid.world_to_index(transform(dst_grid.world_coords(jnp.float64))))
    hi = np.asarray(src_grid.shape) - 1.0
    inside = np.all((idx >= -tol) & (idx <= hi + tol), -1)
    outside = np.any((idx < -0.5 - tol) | (idx > hi + 0.5 + tol), -1)
    return inside | outside


def test_apply_inverse_chain_matches_simpleitk(run, capsys):
    """``jaxreg apply --fixed MOVING --moving FIXED -t [affine.mat,1] -t inverse_warp.nii.gz`` (fixed image and labels
    into the moving space) against ``sitk.Resample`` of the same files, within 1e-3 of the intensity range."""
    p, out, root = run["paths"], run["out"], run["root"]
    chain = ["-t", f"[{out / 'affine.mat'},1]", "-t", str(out / "inverse_warp.nii.gz")]
    rc = main(["apply", "--fixed", str(p["moving"]), "--moving", str(p["fixed"]), *chain, "-o", str(root / "fm.nii.gz")])
    rc2 = main(
        ["apply", "--fixed", str(p["moving"]), "--moving", str(p["fixed_labels"]), "--labels", *chain,
         "-o", str(root / "lm.nii.gz")]
    )  # fmt: skip
    capsys.readouterr()
    assert rc == 0 and rc2 == 0
    tx = _sitk_inverse_chain(out)
    ref = sitk.ReadImage(str(p["moving"]))
    fixed_img = sitk.ReadImage(str(p["fixed"]), sitk.sitkFloat64)
    want = _sitk_array(sitk.Resample(fixed_img, ref, tx, sitk.sitkLinear, 0.0, sitk.sitkFloat64))
    got = np.asarray(load_image(root / "fm.nii.gz").data, np.float64)
    with jax.enable_x64(True):
        t = load_transforms([c for c in chain if c != "-t"])
        mg, fg = load_image(p["moving"]).grid, load_image(p["fixed"]).grid
        keep = _rim_free(t, fg, mg)
    assert keep.mean() > 0.9 and (want[keep] != 0).sum() > 500
    rng = float(np.ptp(np.asarray(load_image(p["fixed"]).data)))
    np.testing.assert_allclose(got[keep], want[keep], atol=1e-3 * rng)
    labels = sitk.ReadImage(str(p["fixed_labels"]))
    want_l = _sitk_array(sitk.Resample(labels, ref, tx, sitk.sitkNearestNeighbor, 0))
    got_l = np.asarray(load_labels(root / "lm.nii.gz").data)
    assert np.mean(got_l[keep] == want_l[keep]) > 0.995  # nearest-neighbour ties may round either way
    assert len(np.unique(got_l)) > 4


def test_forward_and_inverse_files_undo_each_other(run):
    """``(-t warp -t affine) o (-t [affine,1] -t inverse_warp)`` is the identity at moving-space points, and the
    other way round at fixed-space points, to a few hundredths of a millimetre (2-mm voxels, displacements up to
    8 mm: exp(v) and exp(-v) are each accurate to the scaling-and-squaring error, 0.056 mm at worst here)."""
    out = run["out"]
    with jax.enable_x64(True):
        fwd = load_transforms([str(out / "warp.nii.gz"), str(out / "affine.mat")])
        inv = load_transforms([f"[{out / 'affine.mat'},1]", str(out / "inverse_warp.nii.gz")])
        fg = load_image(run["paths"]["fixed"]).grid
        mg = _moving_grid()
        y = mg.world_coords(jnp.float64).reshape(-1, 2)
        x = inv(y)
        idx = np.asarray(fg.world_to_index(x))
        on = np.all((idx >= 0) & (idx <= np.asarray(fg.shape) - 1), -1)  # where the fields are defined
        err = np.linalg.norm(np.asarray(fwd(x)) - np.asarray(y), axis=-1)[on]
        assert on.sum() > 500 and err.max() < 0.1 and err.mean() < 0.01, (err.mean(), err.max())
        xf = fg.world_coords(jnp.float64).reshape(-1, 2)
        warp_only = load_transforms([str(out / "warp.nii.gz")])
        idx = np.asarray(fg.world_to_index(warp_only(xf)))
        on = np.all((idx >= 0) & (idx <= np.asarray(fg.shape) - 1), -1)
        err2 = np.linalg.norm(np.asarray(inv(fwd(xf))) - np.asarray(xf), axis=-1)[on]
        assert on.sum() > 1000 and err2.max() < 0.1 and err2.mean() < 0.01, (err2.mean(), err2.max())


def test_summarize_refuses_a_diverged_result():
    """A NaN field (a diverged optimisation) is a clear error before anything is computed from it."""
    fixed = phantom(FIXED_SHAPE, spacing=2.0)
    bad = DisplacementField(jnp.full(FIXED_SHAPE + (2,), jnp.nan, jnp.float32), fixed.grid)
    opts = {"pipeline": "test", "linear_levels": [], "deformable_levels": [], "greedy": {}, "window": 5}
    with pytest.raises(ValueError, match="deformable transform holds NaN or Inf values"):
        summarize(RegistrationInputs(fixed, fixed), _result(_affine(), bad), opts)
