"""Learned similarity: SSD of contrast-invariant feature maps from a frozen network (deep iterative registration).

``features(model="labelmind")`` compares two images by the feature maps of a trained
:class:`jaxreg.learn.features.FeatureNet` (a shipped model name or a model folder): inputs scaled as the model
says (rank-equalised for ``labelmind``), the network applied per 2-D slice (on every plane of a 3-D volume),
then the mean squared difference of the features plus (default) 0.3 x normalised MI of the rank-equalised
images.

**Prepared similarity.** The network is costly compared with a warp, and the fixed and moving images do not
change during a level, so the term is a *prepared similarity*: besides the ordinary contract
``loss(fixed, moving, mask=None)`` (features of both images, then the distance) it offers

* ``prepare(image) -> (*spatial, C)``: the image's channels (features and, with ``nmi > 0``, the
  rank-equalised image as the last channel), jitted;
* ``prepared``: the distance on prepared arrays, a registered, value-hashed term
  (:func:`feature_distance`), with ``loss(f, m, mask) == prepared(prepare(f), prepare(m), mask)``.

:func:`jaxreg.optimize.register` calls ``prepare`` once per image and level, before the level's loop, and runs
the method with ``prepared`` on the multi-channel level images (moving channels are pulled like any
multi-channel image), so the network never runs inside the optimisation loop.

Flax is imported when a model is loaded, not when :mod:`jaxreg.similarity` is imported.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxreg.core.registry import configured
from jaxreg.similarity import _utils as U
from jaxreg.similarity.histogram import nmi as _nmi

__all__ = ["features", "feature_distance"]

Loss = Callable[..., jax.Array]


def _check_weight(nmi: Any) -> float:
    if isinstance(nmi, bool) or not isinstance(nmi, (int, float)) or not (0.0 <= float(nmi) < float("inf")):
        raise ValueError(f"nmi: expected a non-negative weight, got {nmi!r}")
    return float(nmi)


@configured("similarity")
def feature_distance(nmi: float = 0.0, *, bins: int = 32) -> Loss:
    """Mean squared difference of multi-channel feature maps, plus ``nmi`` times -NMI of a last intensity channel.

    For ``(*spatial, C)`` arrays ``F``, ``M`` (``C >= 2`` when ``nmi > 0``)::

        loss = sum_x w(x) mean_c (F_c(x) - M_c(x))^2 / sum_x w(x)  -  nmi NMI(F_C, M_C)

    where the squared difference runs over every channel when ``nmi == 0`` and over the first ``C - 1`` when
    ``nmi > 0``, whose last channel (intensities in [0, 1], e.g. rank-equalised) is then compared by normalised
    MI (:func:`jaxreg.similarity.nmi`, ``bins`` bins over the fixed range [0, 1]). It is the distance of the ``features`` similarity on prepared arrays (``features(...).prepared``).

    Args:
      nmi: weight of the -NMI term (0: none).
      bins: histogram bins of the NMI term. Static.

    Returns:
      ``loss(fixed, moving, mask=None) -> scalar`` (jitted).
    """
    w_nmi = _check_weight(nmi)
    nmi_loss = _nmi(bins) if w_nmi > 0 else None

    def loss(fixed, moving, mask=None):
        fixed, moving = U.check_pair(fixed, moving)
        if fixed.ndim < 3:
            raise ValueError(f"fixed: expected feature maps (*spatial, C), got shape {tuple(fixed.shape)}")
        nd = fixed.ndim - 1
        w = U.check_mask(mask, fixed.shape[:nd], fixed.dtype, spatial_ndim=nd)
        if nmi_loss is None:
            return U.weighted_mean(jnp.mean((fixed - moving) ** 2, axis=-1), w)
        if fixed.shape[-1] < 2:
            raise ValueError("fixed: with nmi > 0 the feature maps need an intensity channel after the features")
        sq = jnp.mean((fixed[..., :-1] - moving[..., :-1]) ** 2, axis=-1)
        rng = (0.0, 1.0)  # the intensity channel is rank-equalised: a fixed range (no min/max of the data to trace)
        return U.weighted_mean(sq, w) + w_nmi * nmi_loss(
            fixed[..., -1], moving[..., -1], mask, fixed_range=rng, moving_range=rng
        )

    loss.__doc__ = f"feature SSD (nmi={w_nmi:g}); see :func:`jaxreg.similarity.feature_distance`."
    return jax.jit(loss)


class _FeatureSimilarity:
    """The built ``features`` term: ``__call__``, ``prepare`` and ``prepared`` (see the module docstring)."""

    def __init__(self, model: str, nmi: float, bins: int, axes: tuple[int, ...]):
        from flax import nnx

        from jaxreg.learn.features import apply_features, equalize, load_feature_net

        try:
            net, _ = load_feature_net(model)
        except FileNotFoundError as exc:
            raise ValueError(f"model: {exc.strerror or exc}") from None
        graphdef, state = nnx.split(net)
        self.prepared = feature_distance(nmi, bins=bins)
        self.channels = int(net.out_channels)
        self._state = state
        with_intensity = nmi > 0

        @jax.jit
        def prepare(state, image):
            image = jnp.asarray(image)
            feats = apply_features(nnx.merge(graphdef, state), image, axes=axes)
            if with_intensity:
                feats = jnp.concatenate([feats, equalize(image)[..., None]], axis=-1)
            return feats.astype(U.float_dtype(image))

        self._prepare = prepare

    def prepare(self, image: jax.Array) -> jax.Array:
        """The image's channels ``(*spatial, C)``: features (and the equalised image when ``nmi > 0``)."""
        image = jnp.asarray(image)
        if image.ndim not in (2, 3):
            raise ValueError(f"image: expected a 2-D or 3-D single-channel image, got shape {tuple(image.shape)}")
        return self._prepare(self._state, image)

    def __call__(self, fixed: jax.Array, moving: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        fixed, moving = U.check_pair(fixed, moving)
        return self.prepared(self.prepare(fixed), self.prepare(moving), mask)


@configured("similarity")
def features(model: str = "labelmind", *, nmi: float = 0.3, bins: int = 32, axes: tuple = (0, 1, 2)) -> Loss:
    """Learned multi-modal similarity: SSD of frozen contrast-invariant feature maps (+ NMI).

    ``loss(F, M, mask) = feature_distance(nmi, bins)(P(F), P(M), mask)`` with ``P`` the prepared channels:
    the :class:`~jaxreg.learn.features.FeatureNet` features of the scaled image (2-D, or every plane of a 3-D
    volume, :func:`jaxreg.learn.features.apply_features`) and, when ``nmi > 0``, the rank-equalised image. The
    network was trained to output the label self-similarity descriptor of the anatomy whatever the contrast
    (:mod:`jaxreg.learn.features`; after Simonovsky et al., MICCAI 2016, and Heinrich et al.'s MIND). In
    :func:`jaxreg.optimize.register` the network runs once per image and level (``prepare``) and the methods
    differentiate ``prepared`` with respect to the pulled moving maps (and, symmetric, the fixed ones). Called
    directly, the loss computes both feature maps; its derivative with respect to the image *intensities* is 0
    almost everywhere when the inputs are rank-equalised (ranks are piecewise constant), so optimise a
    transform through ``register`` (or warp the prepared maps), not through a direct call.

    Args:
      model: a shipped model's name (``"labelmind"``, :func:`jaxreg.learn.available_models`) or a model folder
        written by :func:`jaxreg.learn.features.save_feature_net`.
      nmi: weight of -NMI of the rank-equalised images (0: features only). The default 0.3: of 0, 0.1, 0.3,
        0.5, 0.7 and 1, 0.5 was best on ``abdomen_ct_mr`` with the earlier, zero-padded model (0.460 vs 0.457 at 0.3) but put head2d_multimodal
        below the NMI pipeline (0.9949); 0.3 is above NMI on both (benchmarks/README.md).
      bins: NMI histogram bins. Static.
      axes: for a 3-D volume, the array axes it is sliced along (the 2-D network runs on the planes normal to
        each; :func:`jaxreg.learn.features.apply_features`): all three (the default, ``len(axes) C`` channels) or
        e.g. ``(2,)``, the planes normal to the last axis only (axial for RAS volumes; on ``abdomen_ct_mr``, whose MR
        has 20 slices, better: benchmarks/README.md). Ignored for 2-D images. Static.

    Returns:
      The loss, with ``prepare`` and ``prepared`` (a prepared similarity).

    Raises:
      ValueError: ``model`` is not a feature network's folder or name, ``nmi`` is negative or ``axes`` is not a
        set of distinct array axes from 0, 1, 2.
    """
    from jaxreg.learn.features import check_axes

    if not isinstance(model, (str, os.PathLike)) or not str(model):
        raise ValueError(f"model: expected a model name or folder, got {model!r}")
    return _FeatureSimilarity(os.fspath(model), _check_weight(nmi), bins, check_axes(axes))

