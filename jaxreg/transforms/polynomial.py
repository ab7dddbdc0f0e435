"""Global polynomial transforms of order 2 and 3.

``T(x) = x + sum_k c_k m_k((x - c) / s)`` where ``m_k`` runs over all monomials of total degree ``<= order`` in
the normalised coordinates ``(x - c) / s`` (constant and linear terms included, so a polynomial transform
contains every affine transform), ``c_k`` are ``(ndim,)`` coefficients in mm, ``c`` a centre and ``s`` a length
scale in mm (both fixed, gradients stopped) that keep the coefficients well conditioned.
"""

from __future__ import annotations

import itertools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxreg.transforms.base import Transform, _check_points, pytree_dataclass

__all__ = ["Polynomial", "monomial_exponents"]


def monomial_exponents(ndim: int, order: int) -> np.ndarray:
    """Exponents ``(n_terms, ndim)`` of all monomials of total degree ``<= order``, by increasing degree."""
    if order < 1:
        raise ValueError(f"order: expected a positive int, got {order}")
    rows = [e for deg in range(order + 1) for e in itertools.product(range(deg + 1), repeat=ndim) if sum(e) == deg]
    return np.asarray(sorted(rows, key=lambda e: (sum(e), tuple(-v for v in e))), dtype=np.int32)


@pytree_dataclass(static=("order",))
class Polynomial(Transform):
    """Polynomial displacement of a given total ``order`` (static).

    Attributes:
      coefficients: ``(n_terms, ndim)`` mm, one row per monomial of :func:`monomial_exponents`.
      center: ``(ndim,)`` world mm (gradient stopped).
      scale: ``()`` normalisation length in mm (gradient stopped).
      order: total degree, 2 or 3 (any positive int works).
    """

    coefficients: jax.Array
    center: jax.Array
    scale: jax.Array
    order: int = 2

    def __post_init__(self) -> None:
        shp = tuple(self.coefficients.shape)
        if len(shp) >= 2:
            want = len(monomial_exponents(shp[-1], self.order))
            if shp[-2] != want:
                raise ValueError(f"coefficients: expected ({want}, {shp[-1]}) for order {self.order}, got {shp}")

    @classmethod
    def identity(
        cls, ndim: int, *, order: int = 2, center: Any = None, scale: float = 100.0, dtype: Any = jnp.float32
    ) -> "Polynomial":
        """Zero polynomial displacement about ``center`` with length ``scale`` (mm)."""
        n_terms = len(monomial_exponents(ndim, order))
        c = jnp.zeros((ndim,), dtype) if center is None else jnp.asarray(center, dtype)
        return cls(jnp.zeros((n_terms, ndim), dtype), c, jnp.asarray(scale, dtype), order)

    @property
    def ndim(self) -> int:
        return self.coefficients.shape[-1]

    def __call__(self, points: jax.Array) -> jax.Array:
        points = jnp.asarray(points)
        _check_points(points, self.ndim)
        dt = points.dtype if jnp.issubdtype(points.dtype, jnp.floating) else jnp.float32
        points = points.astype(dt)
        y = (points - jax.lax.stop_gradient(self.center).astype(dt)) / jax.lax.stop_gradient(self.scale).astype(dt)
        ex = monomial_exponents(self.ndim, self.order)
        # powers[..., d, p] = y_d ** p
        powers = jnp.stack([jnp.ones_like(y)] + [y**p for p in range(1, self.order + 1)], axis=-1)
        mono = jnp.ones(points.shape[:-1] + (len(ex),), dt)
        for d in range(self.ndim):
            mono = mono * powers[..., d, :][..., ex[:, d]]
        return points + mono @ self.coefficients.astype(dt)
