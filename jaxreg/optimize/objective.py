"""Objectives: explicit weighted sums of similarity, field and transform terms.

An :class:`Objective` is a pytree whose only leaf is the ``weights`` vector, so weights can be traced, vmapped
(a sweep of regularisation weights in one compiled call) and differentiated; the terms themselves are static
callables. Three kinds of term exist, distinguished by what they read:

* ``similarity``: ``fn(fixed, warped, mask) -> scalar`` on the fixed grid (fixed and warped moving image
  arrays ``(*shape[, C])``, ``mask`` ``(*shape)`` weights or ``None``), e.g. ``jaxreg.similarity.lncc(9)``;
* ``field``: ``fn(field, *, spacing, mask=None) -> scalar`` (the regulariser contract of
  :mod:`jaxreg.regularizers`) on the regularised dense field (the velocity of a
  :class:`~jaxreg.transforms.VelocityField`, the displacement of a
  :class:`~jaxreg.transforms.DisplacementField`, the sampled displacement of any other non-linear
  transform; linear transforms contribute 0: :meth:`~jaxreg.transforms.Transform.regularized_field`), in mm
  on its grid with ``spacing`` its voxel size in mm, e.g. ``jaxreg.regularizers.diffusion``. A field term
  with an ``on_grid(grid)`` method (a term carrying a weight map in world coordinates,
  :func:`jaxreg.regularizers.weight_mapped`) is first specialised to the grid of that field, which changes
  from level to level;
* ``transform``: ``fn(transform) -> scalar`` on the transform pytree itself (an analytic B-spline bending
  energy, a landmark distance).

The value is ``sum_k weights[k] * term_k``; lower is better. Terms may be given by registry name
(``similarity_term("lncc(window=5)")``, ``field_term("diffusion", 0.5)``; see :mod:`jaxreg.terms`). Terms
compare by value when their functions do (registry terms and module-level functions), so equal objectives
built twice share compiled kernels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxreg.core.grid import Grid
from jaxreg.transforms.base import Transform

__all__ = ["Objective", "Term", "field_term", "objective", "similarity_term", "transform_term"]

_KINDS = ("similarity", "field", "transform")


class Term(NamedTuple):
    """One term of an objective: a ``kind`` in {"similarity", "field", "transform"}, a ``name`` and ``fn``."""

    kind: str
    name: str
    fn: Callable[..., jax.Array]


def _resolve(spec: Any, kind: str, argname: str) -> Callable:
    """A callable term from a callable or a registry spec (name, ``"name(k=v)"`` or mapping)."""
    if callable(spec):
        return spec
    if isinstance(spec, (str, dict)) or hasattr(spec, "keys"):
        from jaxreg.terms import parse

        return parse(spec, kind)
    raise TypeError(f"{argname}: expected a callable {kind} or a registry name, got {type(spec).__name__}")


def as_similarity(spec: Any, argname: str = "similarity") -> Callable:
    """``spec`` as a similarity function ``sim(fixed, warped, mask=None) -> scalar`` (callable or registry spec)."""
    return _resolve(spec, "similarity", argname)


def _term(kind: str, fn: Any, weight: float, name: str | None) -> tuple[Term, float]:
    registry_kind = {"similarity": "similarity", "field": "regularizer"}.get(kind)
    fn = _resolve(fn, registry_kind, "fn") if registry_kind else fn
    if not callable(fn):
        raise TypeError(f"fn: expected a callable {kind} term, got {type(fn).__name__}")
    try:
        weight = float(weight)
    except (TypeError, ValueError):
        raise TypeError(f"weight: expected a number, got {weight!r}") from None
    return Term(kind, name or getattr(fn, "__name__", kind), fn), weight


def similarity_term(fn: Any, weight: float = 1.0, *, name: str | None = None) -> tuple[Term, float]:
    """A similarity term ``fn(fixed, warped, mask) -> scalar`` (lower is better) with its weight.

    ``fn`` is a function or a registry spec (``"ncc"``, ``"lncc(window=5)"``, ``{"name": "mi", "bins": 64}``).
    """
    return _term("similarity", fn, weight, name)


def field_term(fn: Any, weight: float = 1.0, *, name: str | None = None) -> tuple[Term, float]:
    """A regulariser ``fn(field, *, spacing, mask=None) -> scalar`` of the dense field (mm) with its weight.

    ``fn`` is a function following that contract (every function of :mod:`jaxreg.regularizers` does) or a
    registry spec (``"diffusion"``, ``"elastic(mu=1.0, lam=2.0)"``).
    """
    return _term("field", fn, weight, name)


def transform_term(fn: Callable, weight: float = 1.0, *, name: str | None = None) -> tuple[Term, float]:
    """A term ``fn(transform) -> scalar`` of the transform pytree with its weight."""
    return _term("transform", fn, weight, name)


@jax.tree_util.register_pytree_node_class
class Objective:
    """Weighted sum of terms; ``weights`` ``(n_terms,)`` is the only pytree leaf.

    Build it with :func:`objective`. ``objective.replace(weights=w)`` gives the same terms with other weights.
    """

    def __init__(self, terms: tuple[Term, ...], weights: Any):
        if not terms:
            raise ValueError("terms: an objective needs at least one term")
        for t in terms:
            if not isinstance(t, Term) or t.kind not in _KINDS:
                raise ValueError(f"terms: expected Term with kind in {_KINDS}, got {t!r}")
        if not any(t.kind == "similarity" for t in terms):
            raise ValueError("terms: an image registration objective needs at least one similarity term")
        self.terms = tuple(terms)
        self.weights = weights

    def replace(self, *, weights: Any) -> Objective:
        """The same terms with other ``weights`` ``(n_terms,)`` (may be traced or batched)."""
        return Objective(self.terms, weights)

    @property
    def names(self) -> tuple[str, ...]:
        """Term names in order."""
        return tuple(t.name for t in self.terms)

    def tree_flatten(self):
        return (self.weights,), self.terms

    @classmethod
    def tree_unflatten(cls, terms, children):
        obj = object.__new__(cls)
        obj.terms = terms
        obj.weights = children[0]
        return obj

    def __repr__(self) -> str:
        return (
            "Objective("
            + " + ".join(f"{w} * {t.name}" for t, w in zip(self.terms, np.asarray(self.weights).tolist()))
            + ")"
        )

    def terms_values(
        self,
        transform: Transform,
        fixed: jax.Array,
        warped: jax.Array,
        mask: jax.Array | None,
        grid: Grid,
        outer: Transform | None = None,
    ) -> jax.Array:
        """Unweighted value of every term, ``(n_terms,)``.

        Args:
          transform: the transform being optimised (its dense field is read by field terms).
          fixed: fixed image array on ``grid``.
          warped: moving image warped onto ``grid``.
          mask: optional ``(*grid.shape)`` weights.
          grid: the fixed grid of this level.
          outer: the fixed transform applied after ``transform`` (earlier stages), or ``None``; a field term with
            an ``on_grid(grid, outer)`` method (a weight map in the moving image's space) places itself with it.
        """
        vals = []
        field = None
        for t in self.terms:
            if t.kind == "similarity":
                mapped = getattr(t.fn, "mask_on_grid", None)
                if mapped is None:
                    vals.append(t.fn(fixed, warped, mask))
                else:  # a weight-mapped similarity: its map, on this level's grid, is (part of) the mask
                    m = mapped(grid, outer).astype(fixed.dtype)
                    vals.append(t.fn.fn(fixed, warped, m if mask is None else m * mask))
            elif t.kind == "field":
                if field is None:
                    field = transform.regularized_field(grid)
                if field[0] is None:
                    vals.append(jnp.zeros((), fixed.dtype))
                else:
                    on_grid = getattr(t.fn, "on_grid", None)
                    fn = t.fn if on_grid is None else on_grid(field[1], outer)
                    vals.append(fn(field[0], spacing=tuple(float(s) for s in field[1].spacing)))
            else:
                vals.append(t.fn(transform))
        return jnp.stack([jnp.asarray(v, fixed.dtype).reshape(()) for v in vals])

    def __call__(self, transform, fixed, warped, mask, grid, outer=None) -> jax.Array:
        """Weighted sum ``sum_k w_k term_k`` (a scalar); arguments as :meth:`terms_values`."""
        return jnp.dot(
            jnp.asarray(self.weights, fixed.dtype),
            self.terms_values(transform, fixed, warped, mask, grid, outer),
        )


def objective(*terms: tuple[Term, float]) -> Objective:
    """An :class:`Objective` from ``(term, weight)`` pairs made by the ``*_term`` helpers.

    Example:
      ``objective(similarity_term(lncc(9)), field_term(diffusion, 0.5))``
    """
    for t in terms:
        if not (isinstance(t, tuple) and len(t) == 2 and isinstance(t[0], Term)):
            raise ValueError(
                "terms: pass (term, weight) pairs made by similarity_term/field_term/transform_term"
            )
    return Objective(tuple(t for t, _ in terms), jnp.asarray(np.asarray([w for _, w in terms], np.float32)))
