"""Per-program XLA options (jaxreg.core.compilation): the rules, nesting under jit, and no recompilation."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxreg as jr
from jaxreg.core.compilation import (
    FAST_COMPILE,
    FAST_COMPILE_MAX_WORK,
    compiler_options,
    is_single_use,
    jit,
    single_use,
)
from jaxreg.data import phantom
from jaxreg.optimize import Greedy, Level, Stage, preset, register
from jaxreg.warp.pyramid import gaussian_smooth


@pytest.fixture(scope="module")
def pair():
    fixed = gaussian_smooth(phantom((40, 40), spacing=2.0), 2.0)
    moving = jr.warp(fixed, jr.transforms.Rigid(jnp.asarray(0.1), jnp.asarray([2.0, -1.0]), jnp.zeros(2)), fixed.grid)
    return fixed, moving


def _stages():
    # the default pipeline (candidate starts, affine, symmetric greedy) with short levels
    return preset("default", linear_levels=(Level(2, 0.0, 8),), deformable_levels=(Level(2, 0.0, 4), Level(1, 0.0, 2)))


def test_options_follow_use_and_work():
    assert not is_single_use()
    assert compiler_options(10) is None  # programs are compiled for reuse by default
    with single_use():
        assert is_single_use()
        assert compiler_options(FAST_COMPILE_MAX_WORK) == FAST_COMPILE
        assert compiler_options(FAST_COMPILE_MAX_WORK + 1) is None  # big programs keep XLA's optimisations
        assert compiler_options(10, platform="gpu") is None  # the options are the CPU compiler's
        with single_use(False):
            assert compiler_options(10) is None
        assert is_single_use()
    assert not is_single_use()


def test_jit_matches_jax_jit_and_nests_under_jit():
    def f(x, k):
        return jnp.cumsum(jnp.sin(x) * k)

    g = jit(f, static_argnums=1)
    x = jnp.linspace(0.0, 3.0, 101)
    ref = np.asarray(jax.jit(f, static_argnums=1)(x, 3))
    with single_use():
        fast = np.asarray(g(x, 3))
        nested = np.asarray(jax.jit(lambda y: g(y, 3) + 1.0)(x))  # options apply to top-level programs only
        vmapped = np.asarray(jax.vmap(lambda y: g(y, 3))(x[None]))[0]
    np.testing.assert_allclose(fast, ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(nested, ref + 1.0, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(vmapped, ref, rtol=1e-6, atol=1e-6)


def test_single_use_register_matches_default_and_recompiles_nothing(pair, caplog):
    fixed, moving = pair
    ref = register(fixed, moving, method=_stages())
    with single_use():
        first = register(fixed, moving, method=_stages())
        assert all(lv.compile_seconds > 0 for lv in first.levels)  # its own (fast-compiled) executables
        with jax.log_compiles(True), caplog.at_level(logging.WARNING, logger="jax"):
            caplog.clear()
            second = register(fixed, moving, method=_stages())  # equal settings, freshly built
        compiled = [r.getMessage() for r in caplog.records if "ompil" in r.getMessage()]
    assert compiled == [], compiled
    assert all(lv.compile_seconds == 0.0 for lv in second.levels)
    assert first.stages[0].start == ref.stages[0].start
    x = fixed.grid.world_coords()
    for res in (first, second):
        # the same transform to float32 rounding of less optimised code
        np.testing.assert_allclose(np.asarray(res.transform(x)), np.asarray(ref.transform(x)), atol=2e-3)


def test_levels_choose_options_by_work(pair):
    fixed, moving = pair
    from jaxreg.optimize import engine

    seen = []
    real = engine._compiled

    def spy(key, make, args, work, platform=None):
        seen.append((key[0], work, compiler_options(work, platform=platform)))
        return real(key, make, args, work, platform)

    method = Stage(Greedy("lncc(window=5)"), None, (Level(1, 0.0, 3),))
    try:
        engine._compiled = spy
        with single_use():
            register(fixed, moving, method=method)
            register([fixed] * 2, [moving] * 2, method=method)  # a batch multiplies the work
    finally:
        engine._compiled = real
    works = [w for kind, w, _ in seen if kind == "level"]
    assert works[0] == 40 * 40 * 3 and works[-1] == 2 * 40 * 40 * 3
    assert all(opts == FAST_COMPILE for kind, _, opts in seen)
