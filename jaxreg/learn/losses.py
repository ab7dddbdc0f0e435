"""Training objectives of learned registration: the iterative engine's objective, applied to a network's output.

A registration network maps a batch of pairs ``(fixed, moving)`` on one common grid to a batch of transforms
(:class:`~jaxreg.learn.networks.RegistrationNet`). The loss of one pair is the engine's
:class:`~jaxreg.optimize.Objective` (``objective(similarity_term(sim, w_img), field_term(R, w_reg))``, the
same terms by the same registry names) plus two terms that read training data::

    L = w_img * sim(F, M o T)                                (unsupervised; VoxelMorph, Balakrishnan et al. 2019)
      + w_reg * R(v or u)                                    (regulariser of the predicted field, mm)
      + w_lab * (1 - mean_l softDice(onehot(S_F)_l, onehot(S_M)_l o T))   (weak supervision, Hu et al. 2018)
      + w_sup * mean_x ||T(x) - T*(x)||^2                    (supervised by a known T*, Eppenhof & Pluim 2018)

with ``T`` mapping fixed world points to moving world points (pull: ``M o T`` is the moving image warped onto
the fixed grid). With ``bidirectional=True`` the image and label terms are symmetrised with the inverse
transform: ``1/2 [sim(F, M o T) + sim(M, F o T^-1)]`` (exact and cheap for velocity fields, ``T^-1 = exp(-v)``;
Dalca et al., MICCAI 2018).

:func:`registration_loss` returns a :class:`RegistrationLoss`: a pytree whose only leaf is the weight vector
(traced, like the engine's objective weights: a loss can be vmapped over a batch of weights or differentiated
with respect to them), called as ``loss(model, batch, key) -> (loss, metrics)``, the interface of
:func:`jaxreg.learn.train.fit`. Which terms are present is static (a term with weight 0 at construction is
left out, except the image similarity, which every objective has: at weight 0 it is only reported). ``batch``
is a dict of arrays with a leading batch axis: ``fixed``/``moving`` ``(B, *grid.shape, C)``, optionally
``fixed_labels``/``moving_labels`` ``(B, *grid.shape)`` integers and ``displacement`` ``(B, *grid.shape,
ndim)`` (mm, the true ``T*(x) - x``). Each pair's terms are computed by a per-pair function vmapped over the
batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxreg.core.grid import Grid, Image
from jaxreg.evaluation.jacobian import jacobian_statistics
from jaxreg.evaluation.overlap import dice, soft_dice
from jaxreg.optimize.objective import Objective, as_similarity, field_term, similarity_term
from jaxreg.transforms.compose import invert
from jaxreg.warp import warp, warp_labels, warp_onehot
from jaxreg.warp.pyramid import smooth_array

__all__ = ["RegistrationLoss", "displacement_on_grid", "registration_loss", "registration_metrics"]

LossFn = Callable[[Any, dict, jax.Array], tuple[jax.Array, dict]]

TERMS = ("similarity", "regularizer", "label", "supervised")
"""Names of the terms of a learned loss, in order (also their keys in the metrics)."""


def displacement_on_grid(transform: Any, grid: Grid) -> jax.Array:
    """``T(x) - x`` at the voxel centres of ``grid``: ``(*grid.shape, ndim)``, world mm."""
    return transform.sample_grid(grid) - grid.world_coords()


def _check_common(grid: Any, label_values: Any, label_weight: float) -> tuple[int, ...] | None:
    if not isinstance(grid, Grid):
        raise TypeError(f"grid: expected the jaxreg Grid the training pairs are sampled on, got {type(grid).__name__}")
    if label_values is None:
        if label_weight:
            raise ValueError("label_values: a label term (label_weight > 0) needs the label values to compare")
        return None
    values = tuple(int(v) for v in label_values)
    if not values:
        raise ValueError("label_values: expected at least one label value")
    return values


def _predict(model: Any, batch: dict) -> Any:
    for k in ("fixed", "moving"):
        if k not in batch:
            raise KeyError(f"batch: expected key {k!r} (images (B, *spatial, C)); got keys {sorted(batch)}")
    return model(batch["fixed"], batch["moving"])


def _onehot(labels: jax.Array, values: tuple[int, ...], dtype: Any) -> jax.Array:
    return (labels[..., None] == jnp.asarray(values, labels.dtype)).astype(dtype)


def _multiscale_dice(p: jax.Array, q: jax.Array, scales: tuple[float, ...]) -> jax.Array:
    """Mean over scales and labels of the soft Dice of ``(*spatial, L)`` maps smoothed by ``sigma`` voxels."""
    n = p.ndim - 1
    out = []
    for s in scales:
        ps = p if s == 0 else smooth_array(p, (s,) * n)
        qs = q if s == 0 else smooth_array(q, (s,) * n)
        out.append(jnp.mean(soft_dice(ps, qs)))
    return sum(out) / len(out)


@jax.tree_util.register_pytree_node_class
class RegistrationLoss:
    """A learned registration loss ``loss(model, batch, key) -> (loss, metrics)`` (see the module docstring).

    A pytree whose only leaf is :attr:`weights` ``(len(names),)``; everything else (terms, grid, label values
    and scales, symmetrisation) is static. Build it with :func:`registration_loss`.

    Attributes:
      names: the present terms, a sub-sequence of :data:`TERMS`.
      weights: their weights (traced).
      objective: the engine :class:`~jaxreg.optimize.Objective` of the image similarity and the regulariser,
        with the first weights.
    """

    def __init__(
        self,
        grid: Grid,
        terms: tuple,
        names: tuple[str, ...],
        weights: Any,
        label_values: tuple[int, ...] | None,
        label_scales: tuple[float, ...],
        bidirectional: bool,
    ):
        self._static = (grid, tuple(terms), tuple(names), label_values, tuple(label_scales), bool(bidirectional))
        self.weights = weights

    def tree_flatten(self):
        return (self.weights,), self._static

    @classmethod
    def tree_unflatten(cls, static, children):
        obj = object.__new__(cls)
        obj._static = static
        obj.weights = children[0]
        return obj

    @property
    def names(self) -> tuple[str, ...]:
        """The present terms in order."""
        return self._static[2]

    @property
    def objective(self) -> Objective:
        """The image similarity and regulariser terms as the engine's :class:`~jaxreg.optimize.Objective`."""
        terms = self._static[1]
        return Objective(terms, jnp.asarray(self.weights)[: len(terms)])

    def replace(self, *, weights: Any) -> RegistrationLoss:
        """The same loss with other ``weights`` ``(len(names),)`` (may be traced or batched)."""
        obj = object.__new__(RegistrationLoss)
        obj._static = self._static
        obj.weights = weights
        return obj

    def __repr__(self) -> str:
        try:
            w: Any = dict(zip(self.names, np.asarray(self.weights).tolist()))
        except (TypeError, jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
            w = "traced weights"
        return f"RegistrationLoss({w})"

    def _pair_terms(self, model: Any, pred: Any, item: dict) -> jax.Array:
        """Unweighted values of the present terms for one pair, ``(len(names),)``."""
        grid, _, names, values, scales, bidirectional = self._static
        objective = self.objective
        t = model.to_transform(pred, grid)
        inv = invert(t) if bidirectional else None
        fixed, moving = item["fixed"], item["moving"]
        dtype = fixed.dtype
        warped = warp(Image(moving, grid), t, grid).data
        vals = objective.terms_values(t, fixed, warped, None, grid)
        if bidirectional:
            back = warp(Image(fixed, grid), inv, grid).data
            sims = jnp.asarray([term.kind == "similarity" for term in objective.terms])
            back_vals = jnp.stack(
                [
                    jnp.asarray(term.fn(moving, back, None), dtype) if term.kind == "similarity" else jnp.zeros((), dtype)
                    for term in objective.terms
                ]
            )
            vals = jnp.where(sims, 0.5 * (vals + back_vals), vals)
        extra = []
        if "label" in names:
            fl = _onehot(item["fixed_labels"], values, dtype)
            wl = warp_onehot(Image(item["moving_labels"], grid), t, grid, label_values=values, dtype=dtype).data
            d = _multiscale_dice(fl, wl, scales)
            if bidirectional:
                ml = _onehot(item["moving_labels"], values, dtype)
                bl = warp_onehot(Image(item["fixed_labels"], grid), inv, grid, label_values=values, dtype=dtype).data
                d = 0.5 * (d + _multiscale_dice(ml, bl, scales))
            extra.append(1.0 - d)
        if "supervised" in names:
            err = displacement_on_grid(t, grid) - item["displacement"].astype(dtype)
            sq = jnp.sum(err * err, axis=-1)
            if "supervised_mask" in item:  # mean over the masked voxels (e.g. the head: the target is known there)
                w = item["supervised_mask"].astype(dtype)
                extra.append(jnp.sum(w * sq) / jnp.maximum(jnp.sum(w), 1.0))
            else:
                extra.append(jnp.mean(sq))
        if extra:
            vals = jnp.concatenate([vals, jnp.stack([jnp.asarray(e, dtype) for e in extra])])
        return vals

    def terms(self, model: Any, batch: dict) -> jax.Array:
        """Batch means of the unweighted terms, ``(len(names),)`` (the gradient of the loss w.r.t. the weights)."""
        names = self.names
        if "label" in names:
            for k in ("fixed_labels", "moving_labels"):
                if k not in batch:
                    raise KeyError(f"batch: the label term needs {k!r}; got keys {sorted(batch)}")
        if "supervised" in names and "displacement" not in batch:
            raise KeyError(
                f"batch: the supervised term needs 'displacement' (B, *spatial, ndim) mm; got keys {sorted(batch)}"
            )
        pred = _predict(model, batch)
        keys = ["fixed", "moving"] + [
            k for k in ("fixed_labels", "moving_labels", "displacement", "supervised_mask") if k in batch
        ]
        items = {k: batch[k] for k in keys}
        vals = jax.vmap(lambda p, it: self._pair_terms(model, p, it))(pred, items)
        return jnp.mean(vals, axis=0)

    def __call__(self, model: Any, batch: dict, key: Any = None) -> tuple[jax.Array, dict]:
        """``(sum_k w_k term_k, metrics)``: ``metrics`` holds ``loss`` and every unweighted term (batch means)."""
        del key  # the loss itself is deterministic; randomness lives in the augmentation
        vals = self.terms(model, batch)
        total = jnp.dot(jnp.asarray(self.weights, vals.dtype), vals)
        return total, {"loss": total, **{n: vals[i] for i, n in enumerate(self.names)}}


def registration_loss(
    grid: Grid,
    *,
    similarity: Any = "mse",
    image_weight: float = 1.0,
    regularizer: Any = "diffusion",
    regularizer_weight: float = 0.01,
    label_values: Sequence[int] | None = None,
    label_weight: float = 0.0,
    supervised_weight: float = 0.0,
    bidirectional: bool = False,
    label_scales: Sequence[float] = (0.0,),
) -> RegistrationLoss:
    """The training loss of a registration network (see the module docstring for the equation).

    Args:
      grid: the common grid of the training pairs (static): the network's field lives on it (or on a coarser
        grid with the same extent) and world units (mm) come from its affine.
      similarity: ``sim(fixed, warped, mask=None) -> scalar`` (lower is better) or a registry spec
        (:mod:`jaxreg.terms`: ``"mse"``, ``"ncc"``, ``"lncc"``, ``"lncc(window=9)"``, ``"nmi"``, ...).
      image_weight: weight of the image term (0 to train on labels or a known field only; the term is then
        only reported).
      regularizer: ``R(u, *, spacing) -> scalar`` of the predicted velocity (velocity networks) or displacement
        (displacement networks) in mm, or a registry spec (``"diffusion"``, ``"bending"``, ...).
      regularizer_weight: its weight (0 leaves the term out).
      label_values: label values compared by the label term.
      label_weight: weight of ``1 - mean soft Dice`` of the warped one-hot moving labels (needs
        ``fixed_labels``/``moving_labels`` in the batch; 0 leaves the term out).
      supervised_weight: weight of the mean squared displacement error against ``batch["displacement"]``
        (mm^2; 0 leaves the term out), averaged over ``batch["supervised_mask"]`` ``(B, *spatial)`` when the
        batch has one (voxels where the target is meaningful), else over the grid.
      bidirectional: symmetrise the image and label terms with the inverse transform.
      label_scales: Gaussian sigmas (voxels of ``grid``, static) at which the one-hot maps are compared; the
        label term is the mean of ``1 - soft Dice`` over the scales (the multi-scale Dice of Hu et al., MedIA
        2018): sigmas above 0 widen the capture range of the label gradient beyond the one-voxel band of the
        label boundaries.

    Returns:
      :class:`RegistrationLoss`, ``loss(model, batch, key) -> (loss, metrics)``; ``metrics`` holds ``loss``
      and each unweighted term (``similarity``, ``regularizer``, ``label``, ``supervised`` when present), batch
      means.
    """
    values = _check_common(grid, label_values, label_weight)
    scales = tuple(float(x) for x in label_scales)
    if not scales or any(not (x >= 0) for x in scales):
        raise ValueError(f"label_scales: expected one or more non-negative sigmas (voxels), got {label_scales!r}")
    weights = {
        "similarity": image_weight,
        "regularizer": regularizer_weight,
        "label": label_weight,
        "supervised": supervised_weight,
    }
    for name, w in weights.items():
        arg = "image_weight" if name == "similarity" else f"{name}_weight"
        if isinstance(w, bool) or not (isinstance(w, (int, float)) and np.isfinite(w) and w >= 0):
            raise ValueError(f"{arg}: expected a non-negative number, got {w!r}")
    if not (image_weight or label_weight or supervised_weight):
        raise ValueError("image_weight/label_weight/supervised_weight: at least one data term must have a positive weight")
    terms = [similarity_term(similarity, image_weight, name="similarity")[0]]
    if regularizer_weight:
        terms.append(field_term(regularizer, regularizer_weight, name="regularizer")[0])
    names = tuple(t.name for t in terms) + tuple(n for n in ("label", "supervised") if weights[n])
    w = jnp.asarray([float(weights[n]) for n in names], jnp.float32)
    return RegistrationLoss(grid, tuple(terms), names, w, values, scales, bidirectional)


def registration_metrics(
    grid: Grid,
    *,
    label_values: Sequence[int] | None = None,
    similarity: Callable | None = None,
) -> Callable[[Any, dict], dict]:
    """Validation metrics of a registration network on a batch of pairs.

    Args:
      grid: the common grid of the pairs (static).
      label_values: labels whose Dice is averaged (nearest-neighbour warped labels, labels absent from both
        maps ignored); needs ``fixed_labels``/``moving_labels`` in the batch.
      similarity: optional ``sim(fixed, warped)`` (or registry spec) reported as ``similarity``.

    Returns:
      ``eval_fn(model, batch) -> metrics`` with batch means of ``dice`` (in [0, 1], when ``label_values``),
      ``dice_before`` (identity), ``folding`` (% of voxels with ``det J <= 0``) and ``similarity``.
    """
    values = _check_common(grid, label_values, 0.0)
    if similarity is not None:
        similarity = as_similarity(similarity, "similarity")

    def one(model, pred, item):
        t = model.to_transform(pred, grid)
        out = {"folding": 100.0 * jacobian_statistics(t, grid).fraction_nonpositive}
        if values is not None:
            warped = warp_labels(Image(item["moving_labels"], grid), t, grid).data
            out["dice"] = jnp.nanmean(dice(item["fixed_labels"], warped, labels=values))
            out["dice_before"] = jnp.nanmean(dice(item["fixed_labels"], item["moving_labels"], labels=values))
        if similarity is not None:
            out["similarity"] = similarity(item["fixed"], warp(Image(item["moving"], grid), t, grid).data)
        return out

    def eval_fn(model, batch):
        pred = _predict(model, batch)
        keys = ["fixed", "moving"] + [k for k in ("fixed_labels", "moving_labels") if k in batch]
        if values is not None and not {"fixed_labels", "moving_labels"} <= set(batch):
            raise KeyError(f"batch: Dice needs 'fixed_labels' and 'moving_labels'; got keys {sorted(batch)}")
        m = jax.vmap(lambda p, it: one(model, p, it))(pred, {k: batch[k] for k in keys})
        return {k: jnp.mean(v) for k, v in m.items()}

    return eval_fn
