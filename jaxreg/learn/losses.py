"""Training objectives of learned registration: the iterative engine's terms, applied to a network's output.

A registration network maps a batch of pairs ``(fixed, moving)`` on one common grid to a batch of transforms
(:class:`~jaxreg.learn.networks.RegistrationNet`). The loss of one pair is the same weighted sum that the
iterative engine minimises, written with the same functions::

    L = w_img * sim(F, M o T)                                (unsupervised; VoxelMorph, Balakrishnan et al. 2019)
      + w_reg * R(v or u)                                    (regulariser of the predicted field, mm)
      + w_lab * (1 - mean_l softDice(onehot(S_F)_l, onehot(S_M)_l o T))   (weak supervision, Hu et al. 2018)
      + w_sup * mean_x ||T(x) - T*(x)||^2                    (supervised by a known T*, Eppenhof & Pluim 2018)

with ``T`` mapping fixed world points to moving world points (pull: ``M o T`` is the moving image warped onto
the fixed grid). With ``bidirectional=True`` the image and label terms are symmetrised with the inverse
transform: ``1/2 [sim(F, M o T) + sim(M, F o T^-1)]`` (exact and cheap for velocity fields, ``T^-1 = exp(-v)``;
Dalca et al., MICCAI 2018).

Factories return ``loss_fn(model, batch, key) -> (loss, metrics)`` and ``eval_fn(model, batch) -> metrics``,
the interface of :func:`jaxreg.learn.train.fit`. ``batch`` is a dict of arrays with a leading batch axis:
``fixed``/``moving`` ``(B, *grid.shape, C)``, optionally ``fixed_labels``/``moving_labels``
``(B, *grid.shape)`` integers and ``displacement`` ``(B, *grid.shape, ndim)`` (mm, the true ``T*(x) - x``).
Each pair's loss is computed by a per-pair function vmapped over the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxreg.core.grid import Grid, Image
from jaxreg.evaluation.jacobian import jacobian_statistics
from jaxreg.evaluation.overlap import dice, soft_dice
from jaxreg.optimize.objective import regularized_field
from jaxreg.regularizers import diffusion
from jaxreg.similarity import mse
from jaxreg.transforms.compose import invert
from jaxreg.warp import warp, warp_labels, warp_onehot
from jaxreg.warp.pyramid import smooth_array

__all__ = ["displacement_on_grid", "registration_loss", "registration_metrics"]

LossFn = Callable[[Any, dict, jax.Array], tuple[jax.Array, dict]]


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


def registration_loss(
    grid: Grid,
    *,
    similarity: Callable = mse,
    image_weight: float = 1.0,
    regularizer: Callable = diffusion,
    regularizer_weight: float = 0.01,
    label_values: Sequence[int] | None = None,
    label_weight: float = 0.0,
    supervised_weight: float = 0.0,
    bidirectional: bool = False,
    label_scales: Sequence[float] = (0.0,),
) -> LossFn:
    """The training loss of a registration network (see the module docstring for the equation).

    Args:
      grid: the common grid of the training pairs (static): the network's field lives on it (or on a coarser
        grid with the same extent) and world units (mm) come from its affine.
      similarity: ``sim(fixed, warped, mask=None) -> scalar`` (lower is better), e.g. ``mse``, ``ncc``,
        ``lncc(9)``, ``nmi()``.
      image_weight: weight of the image term (0 to train on labels or a known field only).
      regularizer: ``R(u, *, spacing) -> scalar`` of the predicted velocity (velocity networks) or displacement
        (displacement networks) in mm, e.g. :func:`jaxreg.regularizers.diffusion`.
      regularizer_weight: its weight.
      label_values: label values compared by the label term and reported by ``dice``.
      label_weight: weight of ``1 - mean soft Dice`` of the warped one-hot moving labels (needs
        ``fixed_labels``/``moving_labels`` in the batch).
      supervised_weight: weight of the mean squared displacement error against ``batch["displacement"]``
        (mm^2).
      bidirectional: symmetrise the image and label terms with the inverse transform.
      label_scales: Gaussian sigmas (voxels of ``grid``, static) at which the one-hot maps are compared; the
        label term is the mean of ``1 - soft Dice`` over the scales (the multi-scale Dice of Hu et al., MedIA
        2018): sigmas above 0 widen the capture range of the label gradient beyond the one-voxel band of the
        label boundaries.

    Returns:
      ``loss_fn(model, batch, key) -> (loss, metrics)``; ``metrics`` holds ``loss`` and each unweighted term
      (``similarity``, ``regularizer``, ``label``, ``supervised`` when used), batch means.
    """
    values = _check_common(grid, label_values, label_weight)
    scales = tuple(float(x) for x in label_scales)
    if not scales or any(not (x >= 0) for x in scales):
        raise ValueError(f"label_scales: expected one or more non-negative sigmas (voxels), got {label_scales!r}")
    for name, w in (("image_weight", image_weight), ("regularizer_weight", regularizer_weight), ("label_weight", label_weight), ("supervised_weight", supervised_weight)):
        if not (isinstance(w, (int, float)) and w >= 0):
            raise ValueError(f"{name}: expected a non-negative number, got {w!r}")
    if not (image_weight or label_weight or supervised_weight):
        raise ValueError("image_weight/label_weight/supervised_weight: at least one data term must have a positive weight")

    def pair_terms(model, pred, item):
        t = model.to_transform(pred, grid)
        inv = invert(t) if bidirectional else None
        terms = {}
        dtype = item["fixed"].dtype
        if image_weight:
            warped = warp(Image(item["moving"], grid), t, grid).data
            s = similarity(item["fixed"], warped)
            if bidirectional:
                back = warp(Image(item["fixed"], grid), inv, grid).data
                s = 0.5 * (s + similarity(item["moving"], back))
            terms["similarity"] = s
        if regularizer_weight:
            field, fgrid = regularized_field(t, grid)
            if field is None:
                terms["regularizer"] = jnp.zeros((), dtype)
            else:
                terms["regularizer"] = regularizer(field, spacing=tuple(float(s) for s in fgrid.spacing))
        if label_weight:
            fl = _onehot(item["fixed_labels"], values, dtype)
            wl = warp_onehot(Image(item["moving_labels"], grid), t, grid, label_values=values, dtype=dtype).data
            d = _multiscale_dice(fl, wl, scales)
            if bidirectional:
                ml = _onehot(item["moving_labels"], values, dtype)
                bl = warp_onehot(Image(item["fixed_labels"], grid), inv, grid, label_values=values, dtype=dtype).data
                d = 0.5 * (d + _multiscale_dice(ml, bl, scales))
            terms["label"] = 1.0 - d
        if supervised_weight:
            err = displacement_on_grid(t, grid) - item["displacement"].astype(dtype)
            terms["supervised"] = jnp.mean(jnp.sum(err * err, axis=-1))
        return terms

    weights = {"similarity": image_weight, "regularizer": regularizer_weight, "label": label_weight, "supervised": supervised_weight}

    def loss_fn(model, batch, key):
        del key  # the loss itself is deterministic; randomness lives in the augmentation
        if label_weight:
            for k in ("fixed_labels", "moving_labels"):
                if k not in batch:
                    raise KeyError(f"batch: the label term needs {k!r}; got keys {sorted(batch)}")
        if supervised_weight and "displacement" not in batch:
            raise KeyError(f"batch: the supervised term needs 'displacement' (B, *spatial, ndim) mm; got keys {sorted(batch)}")
        pred = _predict(model, batch)
        keys = ["fixed", "moving"] + [k for k in ("fixed_labels", "moving_labels", "displacement") if k in batch]
        items = {k: batch[k] for k in keys}
        terms = jax.vmap(lambda p, it: pair_terms(model, p, it))(pred, items)
        terms = {k: jnp.mean(v) for k, v in terms.items()}
        total = sum(weights[k] * v for k, v in terms.items())
        return total, {"loss": total, **terms}

    return loss_fn


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
      similarity: optional ``sim(fixed, warped)`` reported as ``similarity``.

    Returns:
      ``eval_fn(model, batch) -> metrics`` with batch means of ``dice`` (in [0, 1], when ``label_values``),
      ``dice_before`` (identity), ``folding`` (% of voxels with ``det J <= 0``) and ``similarity``.
    """
    values = _check_common(grid, label_values, 0.0)

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
