"""Overlap of label maps: Dice, Jaccard and a differentiable soft Dice.

For integer label maps ``a`` and ``b`` on the same grid and a list of labels ``l_1..l_L``, every statistic is
read off one joint histogram of ``(index of a's label, index of b's label)`` (one pass over the voxels,
``bincount``), not one pass per label.

Missing labels are reported, not dropped: a label present in one map only has Dice 0 and Jaccard 0 (its
``present_a``/``present_b`` flags say which map lacks it); a label absent from both has Dice and Jaccard NaN
(0/0: nothing to compare), and :func:`mean_dice` excludes exactly those. (Learn2Reg's evaluation instead
returns NaN when a label is missing from the fixed or the *unwarped* moving segmentation; the flags let a
caller reproduce that.)

Reference: Dice, Ecology 26(3), 1945; Jaccard, New Phytologist 11(2), 1912; soft Dice: Milletari et al.,
V-Net, 3DV 2016.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Overlap", "overlap", "dice", "jaccard", "mean_dice", "soft_dice"]


class Overlap(NamedTuple):
    """Per-label overlap statistics, each ``(L,)`` in the order of ``labels``.

    Attributes:
      dice: ``2 |A n B| / (|A| + |B|)`` in [0, 1]; 0 if the label is in one map only, NaN if in neither.
      jaccard: ``|A n B| / |A u B|`` in [0, 1]; same conventions.
      intersection: ``|A n B|`` in voxels (int32).
      count_a: ``|A|``, voxels of the label in ``a`` (int32).
      count_b: ``|B|``, voxels of the label in ``b`` (int32).
      present_a: ``count_a > 0``.
      present_b: ``count_b > 0``.
    """

    dice: jax.Array
    jaccard: jax.Array
    intersection: jax.Array
    count_a: jax.Array
    count_b: jax.Array
    present_a: jax.Array
    present_b: jax.Array


def _check_labels(labels: Any) -> jax.Array:
    if labels is None:
        raise ValueError("labels: expected a sequence of integer label values, got None")
    if isinstance(labels, jax.core.Tracer):
        lab = labels
    else:
        arr = np.asarray(labels)
        if arr.ndim != 1 or arr.size == 0:
            raise ValueError(
                f"labels: expected a non-empty 1-D sequence of label values, got shape {arr.shape}"
            )
        if not (np.issubdtype(arr.dtype, np.integer) or np.all(np.round(arr) == arr)):
            raise ValueError(f"labels: expected integer label values, got {arr.tolist()}")
        if np.unique(arr).size != arr.size:
            raise ValueError(f"labels: contains duplicates: {arr.tolist()}")
        lab = jnp.asarray(arr.astype(np.int64) if jax.config.jax_enable_x64 else arr.astype(np.int32))
    if lab.ndim != 1:
        raise ValueError(f"labels: expected a 1-D sequence, got shape {tuple(lab.shape)}")
    return lab


def _check_maps(a: Any, b: Any) -> tuple[jax.Array, jax.Array]:
    a, b = jnp.asarray(a), jnp.asarray(b)
    if a.shape != b.shape:
        raise ValueError(
            f"a, b: label maps must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    for name, x in (("a", a), ("b", b)):
        if not (jnp.issubdtype(x.dtype, jnp.integer) or x.dtype == jnp.bool_):
            raise ValueError(f"{name}: expected an integer label map, got dtype {x.dtype}")
    return a, b


def _label_index(x: jax.Array, labels: jax.Array) -> jax.Array:
    """Position of each voxel's label in ``labels``, or ``L`` for values not listed."""
    num = labels.shape[0]
    order = jnp.argsort(labels)
    srt = labels[order]
    flat = x.ravel().astype(labels.dtype)
    pos = jnp.clip(jnp.searchsorted(srt, flat), 0, num - 1)
    return jnp.where(srt[pos] == flat, order[pos], num)


@jax.jit
def _overlap(a: jax.Array, b: jax.Array, labels: jax.Array) -> Overlap:
    num = labels.shape[0]
    ia, ib = _label_index(a, labels), _label_index(b, labels)
    joint = jnp.bincount(ia * (num + 1) + ib, length=(num + 1) ** 2).reshape(num + 1, num + 1)
    inter = jnp.diagonal(joint)[:num].astype(jnp.int32)
    ca = jnp.sum(joint, axis=1)[:num].astype(jnp.int32)
    cb = jnp.sum(joint, axis=0)[:num].astype(jnp.int32)
    total = (ca + cb).astype(jnp.float32)
    union = (ca + cb - inter).astype(jnp.float32)
    empty = total == 0
    d = jnp.where(empty, jnp.nan, 2.0 * inter / jnp.where(empty, 1.0, total))
    j = jnp.where(empty, jnp.nan, inter / jnp.where(empty, 1.0, union))
    return Overlap(d, j, inter, ca, cb, ca > 0, cb > 0)


def overlap(a: jax.Array, b: jax.Array, *, labels: Sequence[int] | jax.Array) -> Overlap:
    """Dice, Jaccard, intersections and label counts of two label maps, per label.

    Args:
      a: integer label map, any shape (e.g. the fixed segmentation).
      b: integer label map of the same shape (e.g. the warped moving segmentation).
      labels: ``(L,)`` distinct label values to evaluate (values of ``a``/``b`` not listed are ignored).

    Returns:
      :class:`Overlap` of ``(L,)`` arrays (float32 scores, int32 counts). Jit-able (``labels`` may be traced).
    """
    a, b = _check_maps(a, b)
    return _overlap(a, b, _check_labels(labels))


def dice(a: jax.Array, b: jax.Array, *, labels: Sequence[int] | jax.Array) -> jax.Array:
    """Dice coefficient ``2 |A n B| / (|A| + |B|)`` per label, ``(L,)`` in [0, 1].

    0 for a label present in only one map, NaN for a label in neither (see :func:`overlap` for the counts and
    presence flags). Args as :func:`overlap`.
    """
    return overlap(a, b, labels=labels).dice


def jaccard(a: jax.Array, b: jax.Array, *, labels: Sequence[int] | jax.Array) -> jax.Array:
    """Jaccard index (IoU) ``|A n B| / |A u B|`` per label, ``(L,)``; ``J = D / (2 - D)``. Conventions as
    :func:`dice`."""
    return overlap(a, b, labels=labels).jaccard


def mean_dice(a: jax.Array, b: jax.Array, *, labels: Sequence[int] | jax.Array) -> jax.Array:
    """Mean Dice over ``labels``, excluding labels absent from both maps (NaN if every label is).

    Labels present in one map only count as 0. Args as :func:`overlap`; returns a float32 scalar.
    """
    return jnp.nanmean(dice(a, b, labels=labels))


@jax.jit
def _soft_dice(p, q, mask, eps):
    axes = tuple(range(p.ndim - 1))
    if mask is not None:
        w = mask.astype(p.dtype)[..., None]
        inter, total = jnp.sum(w * p * q, axis=axes), jnp.sum(w * (p + q), axis=axes)
    else:
        inter, total = jnp.sum(p * q, axis=axes), jnp.sum(p + q, axis=axes)
    return (2.0 * inter + eps) / (total + eps)


def soft_dice(p: jax.Array, q: jax.Array, *, mask: jax.Array | None = None, eps: Any = 1e-6) -> jax.Array:
    """Soft Dice per channel of two probability maps: ``(2 sum p q + eps) / (sum p + sum q + eps)``.

    Differentiable in both inputs, for label-supervised losses (use ``1 - soft_dice``). With one-hot inputs it
    equals :func:`dice` up to ``eps``; a channel empty in both gives 1 (nothing to disagree on).

    Args:
      p: ``(*spatial, C)`` probabilities (channels last), e.g. one-hot fixed labels.
      q: same shape, e.g. moving labels warped with :func:`jaxreg.warp_onehot`.
      mask: optional ``spatial`` voxel weights.
      eps: smoothing (traced), in voxels.

    Returns:
      ``(C,)`` in [0, 1].
    """
    p, q = jnp.asarray(p), jnp.asarray(q)
    if p.shape != q.shape or p.ndim < 2:
        raise ValueError(
            f"p, q: expected equal shapes (*spatial, C), got {tuple(p.shape)} and {tuple(q.shape)}"
        )
    dt = jnp.result_type(p.dtype, q.dtype, jnp.float32)
    if mask is not None:
        mask = jnp.asarray(mask)
        if mask.shape != p.shape[:-1]:
            raise ValueError(f"mask: expected shape {tuple(p.shape[:-1])}, got {tuple(mask.shape)}")
    return _soft_dice(p.astype(dt), q.astype(dt), mask, eps)
