"""Configured terms that hash by value, and the one registry of term names (similarities, regularisers).

**Configured terms.** A factory such as ``lncc(window=5)`` returns a loss function. If every call returned a
fresh closure, two equal configurations would be two different objects, and every compile cache keyed on the
function (a static argument of ``jax.jit``, a dict of compiled steps) would miss. A :class:`Configured` term
is instead a small frozen callable identified by its *value* ``(kind, name, options)``::

    lncc(5) == lncc(window=5)                    # options are bound to the factory's signature
    hash(lncc(5)) == hash(lncc(window=5))
    repr(lncc(5)) == "lncc(window=5)"            # options at their defaults are not shown

It builds the underlying (jitted) function from its factory on first use, shares it with every equal term
(a bounded cache keyed by value), and delegates ``__call__`` to it. It is usable as a ``jax.jit`` static
argument and a dict key, and pickles by name (unpickling looks the entry up in the registry).

**The registry.** Terms are registered per *kind*, ``"similarity"`` (``loss(fixed, moving, mask=None)``) or
``"regularizer"`` (``fn(u, *, spacing, mask=None)``, ``u`` ``(*spatial, ndim)`` in mm), by decorators in the
modules that define them: :func:`configured` turns a factory into a value-hashed one and registers it,
:func:`register_term` registers a plain function. Looking a name up imports the defining package
(:mod:`jaxreg.similarity`, :mod:`jaxreg.regularizers`) on demand, so the core does not import them.

* :func:`similarity` / :func:`regularizer` -- ``(name, **options) -> term``. A factory entry returns the
  factory's configured term; a plain function is returned itself, or, with options, as a configured term with
  those keyword options bound (numeric options are then fixed at configuration time).
* :func:`parse` -- the same from a spec as a TOML file or a command line gives it: ``"lncc"``,
  ``"lncc(window=5)"``, ``"lncc(5)"`` (literals only, read with :mod:`ast`), a legacy ``"lncc5"`` (a factory
  name followed by an integer, its first parameter), or a mapping ``{"name": "lncc", "window": 5}``.
* :func:`names` -- the registered names of a kind.

Unknown names, unknown or ill-typed options raise ``ValueError`` naming the argument and the known names.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import re
from typing import Any, Callable, Mapping, NamedTuple

import numpy as np

__all__ = [
    "Configured",
    "configured",
    "register_term",
    "similarity",
    "regularizer",
    "parse",
    "names",
    "KINDS",
]

#: the kinds of term and the package whose import registers them
KINDS: dict[str, str] = {"similarity": "jaxreg.similarity", "regularizer": "jaxreg.regularizers"}

# arguments of the calling contract of each kind: never configuration options
_CONTRACT = {"similarity": ("fixed", "moving", "mask"), "regularizer": ("u", "spacing", "grid", "mask")}

Options = tuple[tuple[str, Any], ...]


class _Entry(NamedTuple):
    kind: str
    name: str
    target: Callable  # the public object: a value-hashed factory, or the plain function
    build: Callable[..., Callable]  # build(**options) -> the function a Configured term delegates to
    signature: inspect.Signature  # of the factory, or of the options a plain function accepts
    is_factory: bool


_REGISTRY: dict[str, dict[str, _Entry]] = {kind: {} for kind in KINDS}


# ----------------------------------------------------------------------------------------------------------
# value-hashed terms
# ----------------------------------------------------------------------------------------------------------


class Configured:
    """A configured term: a frozen callable that compares and hashes by ``(kind, name, options)``.

    Calling it calls the function its factory builds from the options (built once, on first use, and shared
    by all equal terms). Equal configurations are interchangeable: as static arguments of ``jax.jit`` they
    hit the same compiled code, as dict keys the same entry.

    Attributes:
      kind: ``"similarity"`` or ``"regularizer"``.
      name: the registered name (also ``__name__``).
      options: ``((key, value), ...)`` sorted by key, every option of the factory with defaults applied;
        values are hashable (lists become tuples, NumPy scalars Python numbers).
    """

    __slots__ = ("kind", "name", "options", "_build", "_defaults", "_fn", "__weakref__")

    def __init__(
        self,
        kind: str,
        name: str,
        options: Options,
        build: Callable[..., Callable],
        defaults: Mapping[str, Any] | None = None,
    ):
        options = tuple(sorted((str(k), _normalise(v, f"{name}: {k}")) for k, v in options))
        hash(options)
        for attr, value in (
            ("kind", kind),
            ("name", name),
            ("options", options),
            ("_build", build),
            ("_defaults", dict(defaults or {})),
            ("_fn", None),
        ):
            object.__setattr__(self, attr, value)

    def __setattr__(self, attr: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen")

    def __delattr__(self, attr: str) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen")

    @property
    def __name__(self) -> str:  # type: ignore[override]
        return self.name

    @property
    def __signature__(self) -> inspect.Signature:
        """The call signature of the underlying function (e.g. ``(fixed, moving, mask=None, *, eps=1e-05)``)."""
        return inspect.signature(self.function)

    @property
    def key(self) -> tuple[str, str, Options]:
        """``(kind, name, options)``: what equality and the hash are defined by."""
        return (self.kind, self.name, self.options)

    @property
    def function(self) -> Callable:
        """The underlying function (e.g. the jitted loss), built from the factory on first access."""
        fn = self._fn
        if fn is None:
            fn = _built(self)
            object.__setattr__(self, "_fn", fn)
        return fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.function(*args, **kwargs)

    def __getattr__(self, attr: str) -> Any:
        # other attributes are the built function's (``lower``, ``trace`` of a jitted loss); never dunders or
        # this class's own slots, so that probes before the slots are set (copying, unpickling) do not recurse
        if attr.startswith("__") or attr in Configured.__slots__:
            raise AttributeError(attr)
        return getattr(self.function, attr)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Configured):
            return NotImplemented
        return self.key == other.key

    def __hash__(self) -> int:
        return hash((Configured, self.key))

    def __repr__(self) -> str:
        shown = [
            f"{k}={v!r}"
            for k, v in self.options
            if k not in self._defaults or not _same(self._defaults[k], v)
        ]
        return f"{self.name}({', '.join(shown)})"

    def __reduce__(self):
        return (_from_registry, (self.kind, self.name, self.options))

    def __copy__(self) -> Configured:
        return self

    def __deepcopy__(self, memo: Any) -> Configured:
        return self


@functools.lru_cache(maxsize=256)
def _built(term: Configured) -> Callable:
    """The function of a configuration, shared by all equal terms (bounded, like JAX's own caches)."""
    return term._build(**dict(term.options))


def _same(a: Any, b: Any) -> bool:
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:  # noqa: BLE001 - an odd default is simply shown
        return False


def _normalise(value: Any, where: str) -> Any:
    """A hashable, canonical form of an option value: tuples for sequences, Python scalars for NumPy ones."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (list, tuple)):
        return tuple(_normalise(v, where) for v in value)
    try:
        hash(value)
    except TypeError:
        raise ValueError(
            f"{where}: expected a hashable option value (number, string, bool, None or a tuple of them), "
            f"got {type(value).__name__}"
        ) from None
    return value


def _from_registry(kind: str, name: str, options: Options) -> Configured:
    """Rebuild a pickled :class:`Configured` term from the registry."""
    entry = _entry(kind, name, kind)
    return _configure(entry, dict(options), kind)


# ----------------------------------------------------------------------------------------------------------
# registration
# ----------------------------------------------------------------------------------------------------------


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {', '.join(map(repr, KINDS))}, got {kind!r}")


def _add(entry: _Entry) -> None:
    table = _REGISTRY[entry.kind]
    old = table.get(entry.name)
    if old is not None and (old.target.__module__, old.target.__qualname__) != (
        entry.target.__module__,
        entry.target.__qualname__,
    ):
        raise ValueError(
            f"name: {entry.kind} {entry.name!r} is already registered by {old.target.__module__}"
        )
    table[entry.name] = entry


def configured(kind: str, name: str | None = None) -> Callable[[Callable], Callable]:
    """Decorator: make a factory return value-hashed :class:`Configured` terms and register it.

    The decorated factory keeps its signature and docstring. A call binds its arguments to the signature
    (defaults applied, so ``lncc(5)`` and ``lncc(window=5)`` are one configuration) and builds the term's
    function at once, so invalid options still raise on the call.

    Args:
      kind: ``"similarity"`` or ``"regularizer"``.
      name: registry name; default the factory's ``__name__``.
    """
    _check_kind(kind)

    def decorate(factory: Callable) -> Callable:
        nm = name or factory.__name__
        sig = inspect.signature(factory)
        for p in sig.parameters.values():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                raise TypeError(f"{nm}: a configured factory takes named options only, not *{p.name}")
        defaults = {k: p.default for k, p in sig.parameters.items() if p.default is not p.empty}

        @functools.wraps(factory)
        def make(*args: Any, **kwargs: Any) -> Configured:
            try:
                bound = sig.bind(*args, **kwargs)
            except TypeError as exc:
                raise TypeError(f"{nm}: {exc} (options: {', '.join(sig.parameters)})") from None
            bound.apply_defaults()
            term = Configured(kind, nm, tuple(bound.arguments.items()), factory, defaults)
            term.function  # noqa: B018 - build now: the factory validates its options on the call
            return term

        _add(_Entry(kind, nm, make, factory, sig, True))
        return make

    return decorate


def register_term(kind: str, name: str | None = None) -> Callable[[Callable], Callable]:
    """Decorator: register a plain term function (``ssd``, ``diffusion``) under ``name``; returns it unchanged.

    Its keyword-only parameters other than the contract's (``mask``; ``spacing``, ``grid`` for regularisers)
    are the options :func:`similarity` / :func:`regularizer` can bind.

    Args:
      kind: ``"similarity"`` or ``"regularizer"``.
      name: registry name; default the function's ``__name__``.
    """
    _check_kind(kind)

    def decorate(fn: Callable) -> Callable:
        nm = name or fn.__name__
        params = inspect.signature(fn).parameters.values()
        opts = [p for p in params if p.kind == p.KEYWORD_ONLY and p.name not in _CONTRACT[kind]]
        _add(_Entry(kind, nm, fn, _Bind(fn), inspect.Signature(opts), False))
        return fn

    return decorate


class _Bind:
    """``build(**options)`` of a plain function: the function with those keyword options fixed."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable):
        self.fn = fn

    def __call__(self, **options: Any) -> Callable:
        return functools.partial(self.fn, **options)


# ----------------------------------------------------------------------------------------------------------
# look-up
# ----------------------------------------------------------------------------------------------------------


def _table(kind: str) -> dict[str, _Entry]:
    _check_kind(kind)
    importlib.import_module(KINDS[kind])  # registers the package's terms (idempotent)
    return _REGISTRY[kind]


def names(kind: str) -> tuple[str, ...]:
    """The registered names of a kind of term, sorted.

    Args:
      kind: ``"similarity"`` or ``"regularizer"``.

    Returns:
      e.g. ``("correlation_ratio", "lncc", "mi", ...)``.
    """
    return tuple(sorted(_table(kind)))


def _entry(kind: str, name: Any, argument: str) -> _Entry:
    table = _table(kind)
    if not isinstance(name, str) or name not in table:
        raise ValueError(f"{argument}: unknown {kind} {name!r}; expected one of: {', '.join(sorted(table))}")
    return table[name]


def _configure(entry: _Entry, options: Mapping[str, Any], argument: str, args: tuple = ()) -> Callable:
    """The term of an entry with ``args``/``options``; a plain function without options is returned itself."""
    if entry.is_factory:
        try:
            return entry.target(*args, **options)
        except (TypeError, ValueError) as exc:  # the factory's own checks of its options
            msg = str(exc)
            if not msg.startswith(entry.name + ":"):
                msg = f"{entry.name}: {msg}"
            raise ValueError(f"{argument}: {msg}") from None
    sig = entry.signature
    if args:
        raise ValueError(
            f"{argument}: {entry.name} takes options by name only, got positional {list(args)!r}"
            + (f" (options: {', '.join(sig.parameters)})" if sig.parameters else "")
        )
    if not options:
        return entry.target
    unknown = sorted(set(options) - set(sig.parameters))
    if unknown:
        known = ", ".join(sig.parameters) if sig.parameters else "none"
        raise ValueError(f"{argument}: {entry.name} has no option {', '.join(unknown)} (options: {known})")
    bound = sig.bind(**options)
    bound.apply_defaults()
    defaults = {k: p.default for k, p in sig.parameters.items()}
    return Configured(entry.kind, entry.name, tuple(bound.arguments.items()), entry.build, defaults)


def similarity(name: str, /, **options: Any) -> Callable:
    """The similarity loss registered as ``name``, configured with ``options``.

    ``similarity("lncc", window=5) == lncc(5)``; ``similarity("ssd") is ssd``; a plain loss with options
    (``similarity("ngf", eta=0.1)``) is a :class:`Configured` term with those keyword options fixed.

    Args:
      name: one of :func:`names` ``("similarity")``.
      **options: the factory's (or plain loss's keyword) options.

    Returns:
      ``loss(fixed, moving, mask=None, ...) -> scalar`` (lower is better).

    Raises:
      ValueError: for an unknown name or options, naming them and the known ones.
    """
    return _configure(_entry("similarity", name, "similarity"), options, "similarity")


def regularizer(name: str, /, **options: Any) -> Callable:
    """The regulariser registered as ``name``, its numeric options fixed (``regularizer("elastic", mu=2.0)``).

    Every regulariser follows the contract ``fn(u, *, spacing, mask=None) -> scalar`` with ``u``
    ``(*spatial, ndim)`` displacements in mm and ``spacing`` the voxel size in mm per axis (static).

    Args:
      name: one of :func:`names` ``("regularizer")``.
      **options: its keyword options (e.g. ``mu``, ``lam`` of ``elastic``, ``eps`` of ``total_variation``).

    Returns:
      The function itself without options, else a :class:`Configured` term with the options bound.

    Raises:
      ValueError: for an unknown name or options, naming them and the known ones.
    """
    return _configure(_entry("regularizer", name, "regularizer"), options, "regularizer")


_LEGACY = re.compile(r"([A-Za-z_][A-Za-z_]*?)(\d+)")


def _literal(node: ast.AST, where: str) -> Any:
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise ValueError(f"{where}: expected a literal (number, string, bool, None, tuple or list)") from None


def _parse_call(text: str, argument: str) -> tuple[str, tuple, dict[str, Any]]:
    """``"name(arg, key=value)"`` -> ``(name, args, options)``; only literals are evaluated."""
    try:
        node = ast.parse(text, mode="eval").body
    except SyntaxError:
        raise ValueError(f"{argument}: cannot read {text!r}; expected name or name(key=value, ...)") from None
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        raise ValueError(f"{argument}: cannot read {text!r}; expected name or name(key=value, ...)")
    name = node.func.id
    args = []
    for a in node.args:
        if isinstance(a, ast.Starred):
            raise ValueError(f"{argument}: {text!r}: *arguments are not allowed")
        args.append(_literal(a, f"{argument}: {name} argument {ast.unparse(a)!r}"))
    options: dict[str, Any] = {}
    for kw in node.keywords:
        if kw.arg is None:
            raise ValueError(f"{argument}: {text!r}: **options are not allowed")
        options[kw.arg] = _literal(kw.value, f"{argument}: {name} option {kw.arg}={ast.unparse(kw.value)}")
    return name, tuple(args), options


def parse(spec: Any, kind: str, *, argument: str | None = None) -> Callable:
    """A term from a spec as configuration files and command lines give it.

    Accepted forms (for ``kind="similarity"``; regularisers alike)::

        "lncc"                          -> lncc()                 (the factory's defaults)
        "lncc(window=5)", "lncc(5)"     -> lncc(window=5)         (literal arguments only, read with ast)
        "lncc5"                         -> lncc(window=5)         (legacy: a factory name + its first option)
        {"name": "lncc", "window": 5}   -> lncc(window=5)         (a TOML table; lists become tuples)
        "ssd", "ngf(eta=0.1)"           -> ssd, ngf with eta fixed

    A callable (an already configured term, or any loss function) is returned unchanged.

    Args:
      spec: the spec, see above.
      kind: ``"similarity"`` or ``"regularizer"``.
      argument: the name of the setting ``spec`` came from, used in error messages (default ``kind``).

    Returns:
      The term, as :func:`similarity` / :func:`regularizer` return it.

    Raises:
      ValueError: for an unreadable spec, an unknown name or bad options; the message starts with
        ``argument`` and lists the known names or options.
    """
    _check_kind(kind)
    argument = kind if argument is None else argument
    if callable(spec) and not isinstance(spec, (str, Mapping)):
        return spec
    args: tuple = ()
    if isinstance(spec, Mapping):
        options = dict(spec)
        if "name" not in options:
            raise ValueError(f"{argument}: a table needs a 'name' key (one of: {', '.join(names(kind))})")
        name = options.pop("name")
        bad = [k for k in options if not isinstance(k, str)]
        if bad:
            raise ValueError(f"{argument}: option names must be strings, got {bad!r}")
    elif isinstance(spec, str):
        text = spec.strip()
        options = {}
        if "(" in text:
            name, args, options = _parse_call(text, argument)
        else:
            name = text
            table = _table(kind)
            legacy = _LEGACY.fullmatch(text)
            if name not in table and legacy and legacy.group(1) in table:
                entry = table[legacy.group(1)]
                first = next(iter(entry.signature.parameters.values()), None)
                if entry.is_factory and first is not None and first.kind == first.POSITIONAL_OR_KEYWORD:
                    name, args = legacy.group(1), (int(legacy.group(2)),)
    else:
        raise ValueError(
            f"{argument}: expected a name, 'name(key=value, ...)' or a table with a 'name' key, "
            f"got {type(spec).__name__}"
        )
    return _configure(_entry(kind, name, argument), options, argument, args)
