"""Linear (affine-family) transforms about a world-space centre.

All map world points ``x`` (mm) as ``T(x) = A (x - c) + c + t`` with a linear part ``A`` built from the family's
parameters, a centre ``c`` (mm, not optimised: its gradient is stopped) and a translation ``t`` (mm): the ITK
``MatrixOffsetTransformBase`` convention, so parameters read the same as in ITK/ANTs files.

========================  ===========================================  ==========================
family                    parameters (leaves)                          linear part ``A``
========================  ===========================================  ==========================
:class:`Translation`      ``offset (n,)``                              ``I``
:class:`Rigid`            ``rotation`` (2D: angle rad; 3D: rotvec)     ``R``
:class:`Similarity`       ``rotation``, ``log_scale ()``               ``exp(log_scale) R``
:class:`Affine`           ``matrix (n, n)``                            ``matrix``
========================  ===========================================  ==========================

3D rotations use the rotation vector (axis times angle in radians) and the exponential map (Rodrigues'
formula, written to be smooth at zero); Euler angles convert to and from matrices with
:func:`euler_to_matrix` and :func:`matrix_to_euler`. :func:`decompose_affine` splits any affine matrix into
translation, rotation, scale and shear, and :func:`compose_affine` builds it back.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxreg.transforms.base import LinearTransform, pytree_dataclass

__all__ = [
    "Translation",
    "Rigid",
    "Similarity",
    "Affine",
    "AffineComponents",
    "rotation_matrix",
    "rotation_vector",
    "euler_to_matrix",
    "matrix_to_euler",
    "decompose_affine",
    "compose_affine",
]

_AXES = {"x": 0, "y": 1, "z": 2}


def _f(x: Any) -> jax.Array:
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)


def _center(center: Any, ndim: int, dtype: Any) -> jax.Array:
    if center is None:
        return jnp.zeros((ndim,), dtype)
    c = jnp.asarray(center, dtype=dtype)
    if c.shape != (ndim,):
        raise ValueError(f"center: expected shape ({ndim},) in world mm, got {tuple(c.shape)}")
    return c


def _homogeneous(a: jax.Array, t: jax.Array, c: jax.Array) -> jax.Array:
    n = a.shape[-1]
    c = jax.lax.stop_gradient(c)
    offset = t + c - a @ c
    top = jnp.concatenate([a, offset[:, None]], axis=1)
    bottom = jnp.zeros((1, n + 1), a.dtype).at[0, n].set(1)
    return jnp.concatenate([top, bottom], axis=0)


# -- rotations ------------------------------------------------------------------------------------------------
def rotation_matrix(rotation: jax.Array) -> jax.Array:
    """Rotation matrix from a 2D angle or a 3D rotation vector.

    Args:
      rotation: shape ``()`` (2D, angle in radians, counter-clockwise from array axis 0 towards axis 1) or
        ``(3,)`` (3D rotation vector: unit axis times angle in radians).

    Returns:
      ``(2, 2)`` or ``(3, 3)`` rotation matrix. In 3D: ``R = I + a K + b K^2`` (Rodrigues) with ``K`` the
      cross-product matrix of the vector, ``a = sin(th)/th``, ``b = (1 - cos(th))/th^2``, using their Taylor
      series near ``th = 0`` so the map and its gradient are smooth at the identity.
    """
    r = _f(rotation)
    if r.shape == ():
        c, s = jnp.cos(r), jnp.sin(r)
        return jnp.stack([jnp.stack([c, -s]), jnp.stack([s, c])])
    if r.shape != (3,):
        raise ValueError(f"rotation: expected shape () for 2D or (3,) for 3D, got {tuple(r.shape)}")
    th2 = jnp.sum(r * r)
    small = th2 < 1e-6
    th2s = jnp.where(small, 1.0, th2)
    th = jnp.sqrt(th2s)
    a = jnp.where(small, 1.0 - th2 / 6.0 + th2 * th2 / 120.0, jnp.sin(th) / th)
    b = jnp.where(small, 0.5 - th2 / 24.0 + th2 * th2 / 720.0, (1.0 - jnp.cos(th)) / th2s)
    zero = jnp.zeros((), r.dtype)
    k = jnp.stack(
        [
            jnp.stack([zero, -r[2], r[1]]),
            jnp.stack([r[2], zero, -r[0]]),
            jnp.stack([-r[1], r[0], zero]),
        ]
    )
    return jnp.eye(3, dtype=r.dtype) + a * k + b * (k @ k)


def rotation_vector(matrix: jax.Array) -> jax.Array:
    """Inverse of :func:`rotation_matrix`: the angle (2D, ``()``) or rotation vector (3D, ``(3,)``).

    3D goes through the unit quaternion (Shepperd's method), which is stable for every angle in [0, pi].
    """
    m = _f(matrix)
    if m.shape == (2, 2):
        return jnp.arctan2(m[1, 0], m[0, 0])
    if m.shape != (3, 3):
        raise ValueError(f"matrix: expected a (2, 2) or (3, 3) rotation matrix, got {tuple(m.shape)}")
    tr = jnp.trace(m)
    d = jnp.diag(m)
    cands = jnp.stack([tr, d[0], d[1], d[2]])
    i = jnp.argmax(cands)

    def q_from(k: int) -> jax.Array:
        if k == 0:
            w = jnp.sqrt(jnp.maximum(1.0 + tr, 1e-30)) / 2.0
            return jnp.stack([w, (m[2, 1] - m[1, 2]) / (4 * w), (m[0, 2] - m[2, 0]) / (4 * w), (m[1, 0] - m[0, 1]) / (4 * w)])
        a, b, c = k - 1, k % 3, (k + 1) % 3
        qa = jnp.sqrt(jnp.maximum(1.0 + 2 * m[a, a] - tr, 1e-30)) / 2.0
        q = [None, None, None, None]
        q[0] = (m[c, b] - m[b, c]) / (4 * qa)
        q[1 + a] = qa
        q[1 + b] = (m[b, a] + m[a, b]) / (4 * qa)
        q[1 + c] = (m[c, a] + m[a, c]) / (4 * qa)
        return jnp.stack(q)

    q = jax.lax.switch(i, [lambda k=k: q_from(k) for k in range(4)])
    q = q * jnp.where(q[0] < 0, -1.0, 1.0)
    v = q[1:]
    nv = jnp.sqrt(jnp.sum(v * v))
    small = nv < 1e-7
    angle = 2.0 * jnp.arctan2(nv, q[0])
    scale = jnp.where(small, 2.0 / jnp.where(small, q[0], 1.0), angle / jnp.where(small, 1.0, nv))
    return v * scale


def _axis_rotation(axis: int, angle: jax.Array) -> jax.Array:
    c, s = jnp.cos(angle), jnp.sin(angle)
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    m = jnp.eye(3, dtype=angle.dtype)
    return m.at[i, i].set(c).at[j, j].set(c).at[i, j].set(-s).at[j, i].set(s)


def _parse_order(order: str) -> tuple[int, int, int]:
    if len(order) != 3 or set(order) != {"x", "y", "z"}:
        raise ValueError(f"order: expected a permutation of 'xyz' (extrinsic Tait-Bryan axes), got {order!r}")
    return tuple(_AXES[a] for a in order)  # type: ignore[return-value]


def euler_to_matrix(angles: jax.Array, *, order: str = "xyz") -> jax.Array:
    """3D rotation matrix from Euler angles (radians) about fixed (extrinsic) world axes.

    ``order="xyz"`` rotates about x by ``angles[0]``, then y by ``angles[1]``, then z by ``angles[2]``:
    ``R = Rz Ry Rx`` (the same as ``scipy.spatial.transform.Rotation.from_euler("xyz", angles)``). ITK's
    ``Euler3DTransform`` uses ``R = Rz Rx Ry``, i.e. ``order="yxz"`` with angles given as (y, x, z).

    Args:
      angles: ``(3,)`` radians, in the order of ``order``.
      order: a permutation of ``"xyz"``.

    Returns:
      ``(3, 3)`` rotation matrix.
    """
    ax = _parse_order(order)
    a = _f(angles)
    if a.shape != (3,):
        raise ValueError(f"angles: expected shape (3,), got {tuple(a.shape)}")
    r = jnp.eye(3, dtype=a.dtype)
    for k in range(3):
        r = _axis_rotation(ax[k], a[k]) @ r
    return r


def matrix_to_euler(matrix: jax.Array, *, order: str = "xyz") -> jax.Array:
    """Inverse of :func:`euler_to_matrix`: extrinsic Euler angles ``(3,)`` in radians.

    The middle angle is in ``[-pi/2, pi/2]``; the others in ``(-pi, pi]``. At gimbal lock (middle angle
    +-pi/2) the first angle is set to zero.
    """
    i, j, k = _parse_order(order)
    m = _f(matrix)
    if m.shape != (3, 3):
        raise ValueError(f"matrix: expected shape (3, 3), got {tuple(m.shape)}")
    # parity of the permutation (i, j, k)
    s = 1.0 if (j - i) % 3 == 1 else -1.0
    sb = jnp.clip(-s * m[k, i], -1.0, 1.0)
    beta = jnp.arcsin(sb)
    lock = jnp.abs(sb) > 1.0 - 1e-7
    alpha = jnp.where(lock, 0.0, jnp.arctan2(s * m[k, j], m[k, k]))
    gamma_free = jnp.arctan2(s * m[j, i], m[i, i])
    # at gimbal lock R = R_k(gamma) R_j(beta) with alpha = 0: recover gamma from the remaining block
    gamma_lock = jnp.arctan2(-s * m[i, j], m[j, j])
    gamma = jnp.where(lock, gamma_lock, gamma_free)
    return jnp.stack([alpha, beta, gamma])


# -- affine decomposition --------------------------------------------------------------------------------------
class AffineComponents(NamedTuple):
    """Parts of an affine matrix ``A = R @ diag(scale) @ H`` (see :func:`decompose_affine`).

    Attributes:
      translation: ``(n,)`` mm.
      rotation: ``(n, n)`` proper rotation (det +1).
      scale: ``(n,)`` scale factors (the last is negative when ``A`` reflects).
      shear: ``(n*(n-1)/2,)`` upper-triangle entries of the unit upper-triangular ``H``, row by row.
    """

    translation: jax.Array
    rotation: jax.Array
    scale: jax.Array
    shear: jax.Array


def decompose_affine(matrix: jax.Array, *, translation: jax.Array | None = None) -> AffineComponents:
    """Split an affine linear part into rotation, scale and shear (QR decomposition).

    ``A = R @ diag(scale) @ H`` where ``R`` is a rotation, ``H`` unit upper triangular (shear). A reflection
    is carried by a negative last scale so that ``R`` stays a proper rotation.

    Args:
      matrix: ``(n, n)`` linear part, or ``(n+1, n+1)`` homogeneous matrix (its translation column is used).
      translation: ``(n,)`` mm, when ``matrix`` is ``(n, n)``; default zero.

    Returns:
      :class:`AffineComponents`.
    """
    m = _f(matrix)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] not in (2, 3, 4):
        raise ValueError(f"matrix: expected (n, n) or (n+1, n+1) with n in {{2, 3}}, got {tuple(m.shape)}")
    if translation is None and m.shape[0] in (3, 4) and bool(np.allclose(np.asarray(m[-1]), np.eye(m.shape[0])[-1])):
        n = m.shape[0] - 1
        t, a = m[:n, n], m[:n, :n]
    else:
        a = m
        n = a.shape[0]
        t = jnp.zeros((n,), a.dtype) if translation is None else _f(translation)
    q, r = jnp.linalg.qr(a)
    sign = jnp.where(jnp.diag(r) < 0, -1.0, 1.0).astype(a.dtype)
    q = q * sign[None, :]
    r = r * sign[:, None]
    det = jnp.linalg.det(q)
    flip = jnp.ones((n,), a.dtype).at[-1].set(jnp.where(det < 0, -1.0, 1.0))
    q = q * flip[None, :]
    r = r * flip[:, None]
    scale = jnp.diag(r)
    h = r / scale[:, None]
    iu = np.triu_indices(n, 1)
    return AffineComponents(translation=t, rotation=q, scale=scale, shear=h[iu])


def compose_affine(components: AffineComponents) -> jax.Array:
    """Inverse of :func:`decompose_affine`: the ``(n+1, n+1)`` homogeneous matrix."""
    r = _f(components.rotation)
    n = r.shape[0]
    h = jnp.eye(n, dtype=r.dtype).at[np.triu_indices(n, 1)].set(_f(components.shear))
    a = r @ jnp.diag(_f(components.scale)) @ h
    return _homogeneous(a, _f(components.translation), jnp.zeros((n,), r.dtype))


# -- transform families ----------------------------------------------------------------------------------------
@pytree_dataclass
class Translation(LinearTransform):
    """``T(x) = x + offset``.

    Attributes:
      offset: ``(ndim,)`` mm.
    """

    offset: jax.Array

    @classmethod
    def identity(cls, ndim: int, dtype: Any = jnp.float32) -> "Translation":
        """Zero translation."""
        return cls(jnp.zeros((ndim,), dtype))

    @property
    def ndim(self) -> int:
        return self.offset.shape[-1]

    def homogeneous(self) -> jax.Array:
        o = _f(self.offset)
        return _homogeneous(jnp.eye(self.ndim, dtype=o.dtype), o, jnp.zeros_like(o))


@pytree_dataclass
class Rigid(LinearTransform):
    """Rotation about ``center`` then translation: ``T(x) = R (x - c) + c + t``.

    Attributes:
      rotation: 2D: ``()`` angle in radians; 3D: ``(3,)`` rotation vector (see :func:`rotation_matrix`).
      translation: ``(ndim,)`` mm.
      center: ``(ndim,)`` world mm, fixed (gradient stopped).
    """

    rotation: jax.Array
    translation: jax.Array
    center: jax.Array

    @classmethod
    def identity(cls, ndim: int, *, center: Any = None, dtype: Any = jnp.float32) -> "Rigid":
        """Identity rigid transform about ``center`` (default the world origin)."""
        rot = jnp.zeros((), dtype) if ndim == 2 else jnp.zeros((3,), dtype)
        return cls(rot, jnp.zeros((ndim,), dtype), _center(center, ndim, dtype))

    @property
    def ndim(self) -> int:
        return self.translation.shape[-1]

    @property
    def matrix(self) -> jax.Array:
        """``(ndim, ndim)`` rotation matrix."""
        return rotation_matrix(self.rotation)

    def homogeneous(self) -> jax.Array:
        return _homogeneous(self.matrix, _f(self.translation), _f(self.center))


@pytree_dataclass
class Similarity(LinearTransform):
    """Isotropic scaling and rotation about ``center``, then translation: ``T(x) = s R (x - c) + c + t``.

    Attributes:
      rotation: as in :class:`Rigid`.
      log_scale: ``()`` natural log of the scale ``s`` (so ``s > 0`` whatever the optimiser does).
      translation: ``(ndim,)`` mm.
      center: ``(ndim,)`` world mm, fixed (gradient stopped).
    """

    rotation: jax.Array
    log_scale: jax.Array
    translation: jax.Array
    center: jax.Array

    @classmethod
    def identity(cls, ndim: int, *, center: Any = None, dtype: Any = jnp.float32) -> "Similarity":
        """Identity similarity transform about ``center``."""
        rot = jnp.zeros((), dtype) if ndim == 2 else jnp.zeros((3,), dtype)
        return cls(rot, jnp.zeros((), dtype), jnp.zeros((ndim,), dtype), _center(center, ndim, dtype))

    @property
    def ndim(self) -> int:
        return self.translation.shape[-1]

    @property
    def scale(self) -> jax.Array:
        """``()`` the isotropic scale factor ``exp(log_scale)``."""
        return jnp.exp(self.log_scale)

    @property
    def matrix(self) -> jax.Array:
        """``(ndim, ndim)`` linear part ``s R``."""
        return self.scale * rotation_matrix(self.rotation)

    def homogeneous(self) -> jax.Array:
        return _homogeneous(self.matrix, _f(self.translation), _f(self.center))


@pytree_dataclass
class Affine(LinearTransform):
    """General affine transform about ``center``: ``T(x) = M (x - c) + c + t``.

    This is ITK's ``AffineTransform`` parameterisation (``matrix``, ``translation`` and fixed ``center``), so
    ITK/ANTs files map onto it one to one.

    Attributes:
      matrix: ``(ndim, ndim)`` linear part.
      translation: ``(ndim,)`` mm.
      center: ``(ndim,)`` world mm, fixed (gradient stopped).
    """

    matrix: jax.Array
    translation: jax.Array
    center: jax.Array

    @classmethod
    def identity(cls, ndim: int, *, center: Any = None, dtype: Any = jnp.float32) -> "Affine":
        """Identity affine transform about ``center``."""
        # host constants: no program is compiled for them
        dt = jnp.dtype(dtype)
        eye, zero = jax.device_put(np.eye(ndim, dtype=dt)), jax.device_put(np.zeros(ndim, dt))
        return cls(eye, zero, jax.device_put(np.zeros(ndim, dt)) if center is None else _center(center, ndim, dtype))

    @classmethod
    def from_homogeneous(cls, homogeneous: jax.Array, *, center: Any = None) -> "Affine":
        """Affine from an ``(n+1, n+1)`` world-to-world matrix, re-expressed about ``center``."""
        h = _f(homogeneous)
        if h.ndim != 2 or h.shape[0] != h.shape[1] or h.shape[0] not in (3, 4):
            raise ValueError(f"homogeneous: expected a (3, 3) or (4, 4) matrix, got {tuple(h.shape)}")
        n = h.shape[0] - 1
        a, b = h[:n, :n], h[:n, n]
        c = _center(center, n, h.dtype)
        # b = t + c - A c  =>  t = b - c + A c
        return cls(a, b - c + a @ c, c)

    @classmethod
    def from_transform(cls, transform: LinearTransform, *, center: Any = None) -> "Affine":
        """Any linear transform as an :class:`Affine` (about ``center``, default the transform's own)."""
        if center is None:
            center = getattr(transform, "center", None)
        return cls.from_homogeneous(transform.homogeneous(), center=center)

    @property
    def ndim(self) -> int:
        return self.translation.shape[-1]

    def homogeneous(self) -> jax.Array:
        return _homogeneous(_f(self.matrix), _f(self.translation), _f(self.center))

    def components(self) -> AffineComponents:
        """:func:`decompose_affine` of this transform's world-to-world matrix."""
        return decompose_affine(self.homogeneous())
