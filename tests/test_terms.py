"""Terms by name: value-hashed configured terms, the registry of names, spec parsing and the term contracts."""

from __future__ import annotations

import copy
import pickle
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxreg.regularizers as R
import jaxreg.similarity as S
from jaxreg import terms
from jaxreg.core.registry import Configured

SIMILARITIES = ("correlation_ratio", "lncc", "mi", "mind", "mse", "ncc", "ngf", "nmi", "ssd")
REGULARIZERS = ("bending", "diffusion", "elastic", "folding", "log_jacobian", "total_variation")
FACTORIES = ("lncc", "mi", "nmi", "correlation_ratio", "mind")


def images(shape=(12, 14), seed=0):
    rng = np.random.default_rng(seed)
    f = rng.random(shape).astype(np.float32)
    m = (0.6 * f + 0.4 * rng.random(shape)).astype(np.float32)
    mask = (rng.random(shape) > 0.3).astype(np.float32)
    return jnp.asarray(f), jnp.asarray(m), jnp.asarray(mask)


def field(shape, seed=0, scale=0.3):
    rng = np.random.default_rng(seed)
    return jnp.asarray(scale * rng.standard_normal(tuple(shape) + (len(shape),)), jnp.float32)


# ---------------------------------------------------------------------------------------------------------
# value-hashed configured terms
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "a, b",
    [
        (lambda: S.lncc(5), lambda: S.lncc(window=5)),
        (lambda: S.lncc(5), lambda: S.lncc(5, truncate=3.0)),
        (lambda: S.lncc((5, 3)), lambda: S.lncc(window=[5, 3])),
        (lambda: S.lncc(sigma=1.5), lambda: S.lncc(None, sigma=1.5, ndim=None)),
        (lambda: S.mi(), lambda: S.mi(32, kernel="bspline")),
        (lambda: S.mi(np.int64(64)), lambda: S.mi(bins=64)),
        (lambda: S.nmi(16), lambda: S.nmi(bins=16, sigma=1.0)),
        (lambda: S.correlation_ratio(8, kernel="box"), lambda: S.correlation_ratio(bins=8)),
        (lambda: S.mind(1), lambda: S.mind(radius=1, dilation=2)),
    ],
)
def test_equal_configurations_are_equal_and_hash_alike(a, b):
    x, y = a(), b()
    assert isinstance(x, Configured) and x is not y
    assert x == y and hash(x) == hash(y)
    assert len({x, y}) == 1 and {x: 1}[y] == 1


def test_different_configurations_differ():
    assert S.lncc(5) != S.lncc(7)
    assert S.lncc(5) != S.lncc(5, ndim=2)
    assert S.mi(32) != S.nmi(32)
    assert S.mi(32) != S.mi(32, kernel="gaussian")
    assert terms.similarity("ngf", eta=0.1) != terms.similarity("ngf", eta=0.2)
    assert terms.regularizer("elastic", mu=2.0) != terms.regularizer("total_variation", eps=2.0)
    assert S.lncc(5) != "lncc(window=5)"


def test_repr_name_options_and_signature():
    t = S.lncc(window=5)
    assert repr(t) == "lncc(window=5)" and t.__name__ == "lncc" and t.name == "lncc"
    assert t.kind == "similarity"
    assert t.options == (("ndim", None), ("sigma", None), ("truncate", 3.0), ("window", 5))
    assert repr(S.mi(64, kernel="gaussian")) == "mi(bins=64, kernel='gaussian')"
    assert repr(S.lncc()) == "lncc()"
    assert repr(terms.regularizer("elastic", mu=2.0)) == "elastic(mu=2.0)"
    assert list(__import__("inspect").signature(t).parameters) == ["fixed", "moving", "mask", "eps"]


def test_configured_terms_are_frozen_pickle_and_copy():
    t = S.lncc(5)
    with pytest.raises(AttributeError):
        t.name = "other"
    for term in (t, S.mind(1), terms.similarity("ngf", eta=0.1), terms.regularizer("elastic", mu=0.5)):
        back = pickle.loads(pickle.dumps(term))
        assert back == term and hash(back) == hash(term) and repr(back) == repr(term)
        assert copy.deepcopy(term) == term
    f, m, mask = images()
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(t))(f, m, mask), t(f, m, mask))


def test_factories_keep_their_docstrings_and_checks():
    for name in FACTORIES:
        fn = getattr(S, name)
        assert fn.__name__ == name and "Args:" in fn.__doc__
    with pytest.raises(ValueError, match="odd"):
        S.lncc(4)
    with pytest.raises(ValueError, match="bins"):
        S.mi(2)
    with pytest.raises(TypeError, match="widow"):
        S.lncc(widow=3)


def test_equal_fresh_terms_compile_once_as_static_arguments():
    traces = []

    def loss(term, f, m):
        traces.append(term)
        return term(f, m)

    jitted = jax.jit(loss, static_argnums=0)
    f, m, _ = images()
    a = jitted(S.lncc(5), f, m)
    b = jitted(S.lncc(5), f, m)  # a fresh, equal object
    c = jitted(terms.parse("lncc(window=5)", "similarity"), f, m)
    assert len(traces) == 1
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    jitted(S.lncc(7), f, m)
    assert len(traces) == 2


def test_equal_terms_share_the_built_function():
    assert S.lncc(5).function is S.lncc(window=5).function
    assert S.mi(16).function is not S.mi(17).function


# ---------------------------------------------------------------------------------------------------------
# the registry
# ---------------------------------------------------------------------------------------------------------


def test_names():
    assert set(terms.names("similarity")) >= set(SIMILARITIES)
    assert set(terms.names("regularizer")) >= set(REGULARIZERS)
    assert terms.names("similarity") == tuple(sorted(terms.names("similarity")))
    with pytest.raises(ValueError, match="kind"):
        terms.names("metric")


def test_core_registry_does_not_import_the_terms():
    code = (
        "import sys, jaxreg.core.registry, jaxreg.terms; "
        "assert 'jaxreg.similarity' not in sys.modules and 'jaxreg.regularizers' not in sys.modules; "
        "jaxreg.terms.names('similarity'); assert 'jaxreg.similarity' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _direct(name):
    return getattr(S, name)() if name in FACTORIES else getattr(S, name)


@pytest.mark.parametrize("name", SIMILARITIES)
def test_similarity_round_trip_under_jit(name):
    f, m, mask = images()
    term = terms.similarity(name)
    direct = _direct(name)
    assert term == direct
    if name not in FACTORIES:
        assert term is direct
    got = jax.jit(lambda a, b, w: term(a, b, w))(f, m, mask)
    want = jax.jit(lambda a, b, w: direct(a, b, w))(f, m, mask)
    assert got.shape == () and np.isfinite(got)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(terms.parse(name, "similarity")(f, m, mask), want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "name, options, direct",
    [
        ("lncc", {"window": 5}, lambda: S.lncc(5)),
        ("lncc", {"sigma": 1.5}, lambda: S.lncc(sigma=1.5)),
        ("mi", {"bins": 16, "kernel": "gaussian"}, lambda: S.mi(16, kernel="gaussian")),
        ("nmi", {"bins": 24}, lambda: S.nmi(24)),
        ("correlation_ratio", {"bins": 8}, lambda: S.correlation_ratio(8)),
        ("mind", {"radius": 1, "dilation": 1}, lambda: S.mind(1, dilation=1)),
    ],
)
def test_similarity_with_options(name, options, direct):
    f, m, mask = images(seed=1)
    term = terms.similarity(name, **options)
    assert term == direct()
    np.testing.assert_allclose(jax.jit(term)(f, m, mask), direct()(f, m, mask), rtol=1e-6, atol=1e-7)


def test_plain_similarity_with_keyword_options_fixed():
    f, m, mask = images(seed=2)
    term = terms.similarity("ngf", eta=0.1, spacing=(1.0, 2.0))
    assert isinstance(term, Configured) and term == terms.parse(
        "ngf(spacing=(1.0, 2.0), eta=0.1)", "similarity"
    )
    np.testing.assert_allclose(term(f, m, mask), S.ngf(f, m, mask, eta=0.1, spacing=(1.0, 2.0)), rtol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# parsing specs
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        "lncc(window=5)",
        " lncc(5) ",
        "lncc5",
        {"name": "lncc", "window": 5},
        {"name": "lncc", "window": 5, "truncate": 3.0},
        S.lncc(5),
    ],
)
def test_parse_spellings_of_one_term(spec):
    assert terms.parse(spec, "similarity") == S.lncc(window=5)


def test_parse_other_forms():
    assert terms.parse("mi(bins=64)", "similarity") == S.mi(64)
    assert terms.parse("mi64", "similarity") == S.mi(64)
    assert terms.parse("ssd", "similarity") is S.ssd
    assert terms.parse("ssd()", "similarity") is S.ssd
    assert terms.parse({"name": "lncc", "window": [5, 3]}, "similarity") == S.lncc((5, 3))
    assert terms.parse("lncc(window=(5, 3))", "similarity") == S.lncc((5, 3))
    assert terms.parse("mi(kernel='gaussian', sigma=0.5)", "similarity") == S.mi(kernel="gaussian", sigma=0.5)
    assert terms.parse("diffusion", "regularizer") is R.diffusion
    assert terms.parse({"name": "elastic", "mu": 2.0}, "regularizer") == terms.regularizer(
        "elastic", mu=2.0, lam=1.0
    )
    assert terms.parse("total_variation(eps=1e-3)", "regularizer") == terms.regularizer(
        "total_variation", eps=0.001
    )
    custom = lambda f, m, mask=None: jnp.sum(f - m)
    assert terms.parse(custom, "similarity") is custom


@pytest.mark.parametrize(
    "spec, kind, match",
    [
        ("foo", "similarity", r"metric: unknown similarity 'foo'; expected one of: .*lncc.*ssd"),
        ({"name": "foo"}, "similarity", r"metric: unknown similarity 'foo'"),
        ("ssd5", "similarity", r"metric: unknown similarity 'ssd5'"),
        ("lncc(widow=5)", "similarity", r"metric: lncc: .*widow.*options: window, sigma"),
        ("lncc(4)", "similarity", r"metric: lncc: window"),
        ("mi(bins='x')", "similarity", r"metric: mi: bins"),
        ("mi(bins=nbins)", "similarity", r"metric: mi option bins=nbins: expected a literal"),
        ("lncc(window=__import__('os'))", "similarity", r"metric: .*expected a literal"),
        ("lncc(**{'window': 5})", "similarity", r"metric: .*\*\*options"),
        ("lncc(window=5", "similarity", r"metric: cannot read"),
        ("os.system('x')", "similarity", r"metric: cannot read"),
        ({"window": 5}, "similarity", r"metric: a table needs a 'name' key"),
        ("ssd(eps=1)", "similarity", r"metric: ssd has no option eps"),
        ("ssd(1)", "similarity", r"metric: ssd takes options by name only"),
        ("elastic(nu=0.3)", "regularizer", r"metric: elastic has no option nu \(options: mu, lam\)"),
        ("lncc", "regularizer", r"metric: unknown regularizer 'lncc'; expected one of: bending"),
        (3, "similarity", r"metric: expected a name"),
    ],
)
def test_parse_errors_name_the_argument(spec, kind, match):
    with pytest.raises(ValueError, match=match):
        terms.parse(spec, kind, argument="metric")


def test_lookup_errors():
    with pytest.raises(ValueError, match=r"^similarity: unknown similarity 'nope'; expected one of"):
        terms.similarity("nope")
    with pytest.raises(ValueError, match=r"^regularizer: unknown regularizer 'nope'"):
        terms.regularizer("nope")
    with pytest.raises(ValueError, match=r"^similarity: lncc: .*widow"):
        terms.similarity("lncc", widow=3)
    with pytest.raises(ValueError, match="hashable"):
        terms.regularizer("elastic", mu=jnp.ones(3))
    with pytest.raises(ValueError, match="kind"):
        terms.parse("lncc", "metric")


# ---------------------------------------------------------------------------------------------------------
# the regulariser contract
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(9, 10), (6, 7, 8)])
@pytest.mark.parametrize("name", REGULARIZERS)
def test_registered_regularizers_follow_the_contract(name, shape):
    spacing = (1.0, 2.0) if len(shape) == 2 else (1.0, 2.0, 1.5)
    u = field(shape)
    fn = terms.regularizer(name)
    assert fn is getattr(R, name)
    got = fn(u, spacing=spacing, mask=None)
    want = getattr(R, name)(u, spacing=spacing)
    assert got.shape == () and np.isfinite(got)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # under jit, with a mask, spacing static
    mask = jnp.asarray(np.random.default_rng(3).random(shape) > 0.4, jnp.float32)
    jitted = jax.jit(lambda v, w: fn(v, spacing=spacing, mask=w))
    np.testing.assert_allclose(jitted(u, mask), getattr(R, name)(u, spacing=spacing, mask=mask), rtol=1e-6)


@pytest.mark.parametrize(
    "name, options",
    [
        ("elastic", {"mu": 2.0, "lam": 0.5}),
        ("total_variation", {"eps": 1e-3}),
        ("folding", {"eps": 0.1}),
        ("log_jacobian", {"eps": 1e-2}),
    ],
)
@pytest.mark.parametrize("shape", [(9, 10), (6, 7, 8)])
def test_configured_regularizers_fix_their_options(name, options, shape):
    spacing = (1.0, 2.0) if len(shape) == 2 else (1.0, 2.0, 1.5)
    u = field(shape, seed=4, scale=1.0)
    fn = terms.regularizer(name, **options)
    assert fn == terms.regularizer(name, **options) and fn.__name__ == name
    got = fn(u, spacing=spacing, mask=None)
    assert got.shape == () and np.isfinite(got)
    np.testing.assert_allclose(got, getattr(R, name)(u, spacing=spacing, **options), rtol=1e-6)
    assert not np.allclose(got, getattr(R, name)(u, spacing=spacing))  # the options took effect


def test_regularizer_as_static_argument_compiles_once():
    traces = []

    def energy(reg, u):
        traces.append(reg)
        return reg(u, spacing=(1.0, 2.0), mask=None)

    jitted = jax.jit(energy, static_argnums=0)
    u = field((8, 9))
    jitted(terms.regularizer("elastic", mu=2.0), u)
    jitted(terms.parse("elastic(mu=2.0, lam=1.0)", "regularizer"), u)
    assert len(traces) == 1


def test_terms_module_is_curated_and_documented():
    import inspect

    assert terms.__doc__ and set(terms.__all__) == {
        "similarity",
        "regularizer",
        "names",
        "parse",
        "Configured",
    }
    for name in terms.__all__:
        assert inspect.getdoc(getattr(terms, name)), name
