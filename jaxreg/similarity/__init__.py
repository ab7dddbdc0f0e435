"""Similarity metrics (image-matching terms of a registration objective).

Every metric compares a fixed image ``F`` with a moving image ``M`` that has already been resampled on the
fixed grid (pull warping: ``M = warp(moving, T, fixed_grid)``), and returns a scalar **loss where lower is
better**. Conventions shared by all of them:

* Images are ``(*spatial)`` (2D or 3D) or, where stated, channel-last ``(*spatial, C)``; the result keeps the
  images' float dtype (float32 in, float32 out).
* ``mask`` (optional, keyword or third positional argument) has the spatial shape; bool or float weights in
  [0, 1]; voxels of weight 0 do not count and an empty mask gives a finite value, never NaN.
* Options that change shapes or loops (window, bins, kernel, radius) configure a *factory* that returns the
  loss function, e.g. ``lncc(window=9)(fixed, moving, mask)``; numeric options (``eps``, ``eta``, intensity
  ranges) are traced arguments of the loss. Metrics without such options are plain functions
  (``ssd(fixed, moving, mask)``). A factory returns a :class:`jaxreg.core.registry.Configured` term that
  compares and hashes by its options (``lncc(5) == lncc(window=5)``), so equal configurations share compiled
  code; every metric is also registered by name (:func:`jaxreg.terms.similarity`, :func:`jaxreg.terms.parse`).
* All are pure and jitted, differentiable with respect to both images (except the hard ``"box"`` binning;
  reverse mode only for B-spline MI/NMI, whose backward pass is a custom VJP), and vmappable over batches.

=====================  =========================================  ========================  ==========
name                   measure                                    loss                      form
=====================  =========================================  ========================  ==========
``ssd``, ``mse``       sum / mean of squared differences          >= 0                      function
``ncc``                global normalised cross-correlation        ``-NCC`` in [-1, 1]       function
``lncc``               local NCC (box or Gaussian window)         ``-LNCC`` in [-1, 0]      factory
``mi``, ``nmi``        (normalised) mutual information, Parzen    ``-MI``, ``-NMI``         factory
``correlation_ratio``  Roche's eta^2(M | F)                       ``1 - eta^2`` in [0, 1]   factory
``ngf``                normalised gradient fields                 in [0, 1]                 function
``mind``               SSD of MIND-SSC descriptors                in [0, 1]                 factory
``weighted_sum``       sum of weighted terms, each on all or one  the terms' weighted sum   factory
                       channel (multi-metric, multi-channel)
``features``           SSD of learned feature maps (+ a little    >= -nmi                   factory
                       NMI); a *prepared* similarity
``feature_distance``   SSD of multi-channel maps (+ NMI of the    >= -nmi                   factory
                       last channel)
=====================  =========================================  ========================  ==========

``joint_histogram`` and ``mind_ssc`` expose the underlying histogram and descriptors. ``features`` (a trained
network, :mod:`jaxreg.similarity.learned`) is a *prepared* similarity: it has ``prepare(image)`` (the feature
maps, computed once per image and level by :func:`jaxreg.optimize.register`) and ``prepared`` (the distance of
prepared maps, :func:`feature_distance`).
"""

from jaxreg.similarity.combine import weighted_sum
from jaxreg.similarity.histogram import correlation_ratio, joint_histogram, mi, nmi
from jaxreg.similarity.intensity import lncc, mse, ncc, ssd
from jaxreg.similarity.learned import feature_distance, features
from jaxreg.similarity.structure import mind, mind_ssc, ngf, ssc_pairs

__all__ = [
    "ssd",
    "mse",
    "ncc",
    "lncc",
    "joint_histogram",
    "mi",
    "nmi",
    "correlation_ratio",
    "ngf",
    "mind_ssc",
    "mind",
    "ssc_pairs",
    "weighted_sum",
    "features",
    "feature_distance",
]
