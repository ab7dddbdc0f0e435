"""The public API: every exported name is documented, options are keyword-only, random functions take key first.

The modules checked are found when the tests run, not listed here: ``jaxreg`` itself, every subpackage found by
walking the ``jaxreg`` folder with :mod:`pkgutil` (nested ones included), and every public top-level module
(``jaxreg.data``). Each must define ``__all__``; every name in it is checked. Names and parameters that do not
follow a rule for a documented reason are in the short allow-lists below, each with its reason.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import jaxreg

P = inspect.Parameter

# modules found by the walk that are not a Python API, with the reason
NOT_AN_API = {
    "jaxreg.cli": "the command line: its interface is argv (tests/test_cli*.py), it exports no Python names",
}

# functions whose leading positional parameters are data; everything after them must be keyword-only
MAX_POSITIONAL = 4

# parameters with a default that may stay positional: (module of the defining function, parameter) -> reason
POSITIONAL_DEFAULT_OK = {
    ("jaxreg.similarity", "mask"): "the similarity-term contract is sim(fixed, warped, mask=None); "
    "the engine and the greedy force call it positionally",
    ("jaxreg.data.load_mni152", "resolution"): "selects which template file is loaded (load_mni152(2)): "
    "the function's only argument, not an option after data",
    ("jaxreg.data.load_mni152_masks", "resolution"): "as for load_mni152",
}

# a lone ``dtype`` after the data may stay positional (``Grid.identity(3, jnp.float64)`` style)
POSITIONAL_DEFAULT_NAMES_OK = {"dtype"}

# factories that return a configured loss (``lncc(9)``, ``mi(32)``), optimiser (``make_optimizer(1e-3)``) or
# weighted objective term (``field_term(diffusion, 0.5)``) may take their configuration positionally
FACTORY_RETURNS = ("Loss", "Callable", "GradientTransformation", "Term")


def _walk() -> list[str]:
    """``jaxreg``, its subpackages at any depth and its public top-level modules, found on disk (no import)."""
    found = ["jaxreg"]

    def visit(path: Path, prefix: str, top: bool) -> None:
        for info in sorted(pkgutil.iter_modules([str(path)]), key=lambda i: i.name):
            if info.name.startswith("_"):
                continue
            name = prefix + info.name
            if info.ispkg:
                found.append(name)
                visit(path / info.name, name + ".", top=False)
            elif top:
                found.append(name)

    visit(Path(jaxreg.__file__).parent, "jaxreg.", top=True)
    return found


MODULES = [m for m in _walk() if m not in NOT_AN_API]


def test_the_walk_finds_every_subpackage():
    # the walk must at least see the layers of STYLE.md; new subpackages are picked up without editing this file
    expected = {
        "jaxreg", "jaxreg.core", "jaxreg.transforms", "jaxreg.warp", "jaxreg.similarity", "jaxreg.regularizers",
        "jaxreg.evaluation", "jaxreg.points", "jaxreg.optimize", "jaxreg.learn", "jaxreg.io", "jaxreg.plot",
        "jaxreg.data",
    }  # fmt: skip
    assert expected <= set(MODULES), sorted(expected - set(MODULES))
    assert set(NOT_AN_API) <= set(_walk()), "an exclusion names a module that no longer exists"


def _exports(modname: str):
    mod = importlib.import_module(modname)
    names = getattr(mod, "__all__", None)
    assert names is not None, f"{modname} must define __all__"
    assert len(set(names)) == len(names), (
        f"{modname}.__all__ repeats {sorted({n for n in names if names.count(n) > 1})}"
    )
    missing = [n for n in names if not hasattr(mod, n)]
    assert not missing, f"{modname}.__all__ names undefined attributes {missing}"
    return mod, [(n, getattr(mod, n)) for n in names]


def _target(obj):
    """The function or class a public callable stands for (a ``functools.partial`` stands for its function)."""
    while isinstance(obj, functools.partial):
        obj = obj.func
    return obj


def _own(obj) -> bool:
    """Defined in jaxreg (re-exports of jax, optax, ... are documented by their own libraries)."""
    module = str(getattr(obj, "__module__", "") or "")
    return module == "jaxreg" or module.startswith("jaxreg.")


def _own_doc(obj) -> str:
    """The docstring written for ``obj`` itself: not inherited, and not the ``Name(field, ...)`` text that
    dataclasses and NamedTuples generate when a class has none."""
    if inspect.isclass(obj):
        doc = obj.__dict__.get("__doc__") or ""
        if doc.startswith(obj.__name__ + "("):
            return ""
        return doc.strip()
    return (getattr(obj, "__doc__", None) or "").strip()


def _signature(obj):
    try:
        return inspect.signature(obj)
    except (TypeError, ValueError):
        return None


def _doc_problems(exports) -> list[str]:
    """Names of public callables defined in jaxreg without a docstring of their own."""
    return [name for name, obj in exports if callable(t := _target(obj)) and _own(t) and not _own_doc(t)]


def _key_problems(exports) -> list[str]:
    """Public callables (functions, jitted functions, classes) with a positional ``key`` that is not first."""
    bad = []
    for name, obj in exports:
        obj = _target(obj)
        if not (callable(obj) and _own(obj)) or (sig := _signature(obj)) is None:
            continue
        params = list(sig.parameters.values())
        keys = [p for p in params if p.name == "key"]
        # a keyword-only key (a training run's root key) is explicit anyway; a positional one comes first
        if keys and keys[0].kind != P.KEYWORD_ONLY and params[0].name != "key":
            bad.append(f"{name}{sig}")
    return bad


def _positional_default_ok(fn, param: str) -> bool:
    where = f"{fn.__module__}.{fn.__name__}"
    for prefix, name in POSITIONAL_DEFAULT_OK:
        if name == param and (where == prefix or where.startswith(prefix + ".")):
            return True
    return param in POSITIONAL_DEFAULT_NAMES_OK


def _option_problems(exports) -> list[str]:
    """Functions (plain or jitted): at most four positional data parameters; optional settings keyword-only."""
    bad = []
    for name, obj in exports:
        fn = _target(obj)
        if inspect.isclass(fn) or not (callable(fn) and _own(fn)):
            continue  # classes: constructors take their fields; constants
        sig = _signature(fn)
        if sig is None:
            bad.append(f"{name}: no introspectable signature")
            continue
        kinds = (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)
        positional = [p for p in sig.parameters.values() if p.kind in kinds]
        if isinstance(obj, functools.partial):
            positional = positional[len(obj.args) :]
        if len(positional) > MAX_POSITIONAL:
            bad.append(f"{name}: {len(positional)} positional parameters {[p.name for p in positional]}")
        if any(s in str(sig.return_annotation) for s in FACTORY_RETURNS):
            continue
        options = [p.name for p in positional if p.default is not P.empty]
        options = [o for o in options if not _positional_default_ok(fn, o)]
        if options:
            bad.append(f"{name}: options {options} should be keyword-only")
    return bad


@pytest.mark.parametrize("modname", MODULES)
def test_every_public_name_is_documented(modname):
    mod, exports = _exports(modname)
    assert mod.__doc__ and mod.__doc__.strip(), f"{modname} needs a module docstring"
    bad = _doc_problems(exports)
    assert not bad, f"{modname}: public callables without a docstring: {bad}"


@pytest.mark.parametrize("modname", MODULES)
def test_random_functions_take_key_first(modname):
    bad = _key_problems(_exports(modname)[1])
    assert not bad, f"{modname}: a PRNG key must be the first argument of {bad}"


@pytest.mark.parametrize("modname", MODULES)
def test_options_are_keyword_only(modname):
    bad = _option_problems(_exports(modname)[1])
    assert not bad, f"{modname}: {bad}"


def test_the_checks_catch_violations():
    """The checkers above flag what they claim to, on made-up exports (defined here, so ``_own`` is true)."""
    import dataclasses

    import jax

    def documented(x, y, *, scale=1.0):
        """Doc."""

    def undocumented(x):
        pass

    @dataclasses.dataclass(frozen=True)
    class NoDoc:  # dataclasses generate "NoDoc(a: int)" as the docstring
        a: int

    def key_second(x, key):
        """Doc."""

    def key_kw(x, *, key):
        """Doc."""

    def option_positional(x, scale=1.0):
        """Doc."""

    def too_many(a, b, c, d, e):
        """Doc."""

    for f in (documented, undocumented, key_second, key_kw, option_positional, too_many):
        f.__module__ = "jaxreg.fake"
    NoDoc.__module__ = "jaxreg.fake"
    jitted = jax.jit(option_positional)  # keeps the function's name, module and docstring
    exports = [
        (f.__name__, f) for f in (documented, undocumented, key_second, key_kw, option_positional, too_many)
    ]
    exports += [("NoDoc", NoDoc), ("jitted", jitted), ("partial", functools.partial(option_positional, 1.0))]
    assert _doc_problems(exports) == ["undocumented", "NoDoc"]
    assert [b.split("(")[0] for b in _key_problems(exports)] == ["key_second"]
    bad = _option_problems(exports)
    assert [b.split(":")[0] for b in bad] == ["option_positional", "too_many", "jitted", "partial"], bad
    assert _option_problems([("lncc", documented)]) == []  # keyword-only options pass


def test_allow_lists_name_existing_parameters():
    """Each allow-list entry still names a parameter of an exported function (no stale exceptions)."""
    exports = []
    for modname in MODULES:
        with contextlib.suppress(ImportError, AssertionError):  # reported by the per-module tests
            exports += _exports(modname)[1]
    seen = set()
    for _name, obj in exports:
        fn = _target(obj)
        if inspect.isclass(fn) or not (callable(fn) and _own(fn)) or (sig := _signature(fn)) is None:
            continue
        where = f"{fn.__module__}.{fn.__name__}"
        for prefix, param in POSITIONAL_DEFAULT_OK:
            if param in sig.parameters and (where == prefix or where.startswith(prefix + ".")):
                seen.add((prefix, param))
    assert seen == set(POSITIONAL_DEFAULT_OK), sorted(set(POSITIONAL_DEFAULT_OK) - seen)


def test_core_does_not_import_io_stack():
    code = (
        "import sys, jaxreg; assert 'nibabel' not in sys.modules, 'jaxreg core imported nibabel'; "
        "assert 'matplotlib' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
