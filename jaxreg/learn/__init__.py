"""Learned (amortised) registration with Flax NNX and optax.

A network predicts the transform of a pair in one evaluation; the same transforms, warps and objective terms
as the iterative engine train it. The layers, from data to deployment:

* :mod:`~jaxreg.learn.networks`: the VoxelMorph U-Net and :class:`RegistrationNet` (displacement, stationary
  velocity, spatial-transformer affine, affine then deformable), fields at a fraction of the resolution, and
  ``to_transform`` to world-mm jaxreg transforms.
* :mod:`~jaxreg.learn.synthesis`: random affines and smooth deformations, SynthMorph label-driven image
  synthesis, intensity augmentation (pure, key-first, on the device).
* :mod:`~jaxreg.learn.data`: NIfTI folders resampled onto a common grid, deterministic per-step pair sampling,
  a prefetching pair loader.
* :mod:`~jaxreg.learn.losses` and :mod:`~jaxreg.learn.modes`: the training losses (an
  :class:`~jaxreg.optimize.Objective` of the engine's terms plus label and supervised terms, weights traced)
  and the five training modes (``modes.unsupervised``, ``modes.supervised`` on synthetic deformations,
  ``modes.supervised_engine`` on the engine's own fields, ``modes.weakly_supervised`` by labels,
  ``modes.synthesis`` from label maps; the submodule names ``synthesis`` and ``data`` are modules, so
  the mode factories are reached through ``jaxreg.learn.modes``).
* :mod:`~jaxreg.learn.targets`: target fields computed by the engine on every training pair (cached), for
  ``modes.supervised_engine``.
* :mod:`~jaxreg.learn.train`: pure jitted train/eval steps, data parallelism with ``jax.sharding``, ``fit``
  with orbax checkpoints, resumption, best-by-validation, CSV/PNG logs.
* :mod:`~jaxreg.learn.neural_field`: :class:`NeuralField`, a SIREN displacement field optimised per pair (a
  method of :func:`jaxreg.optimize.register`, like the classical ones).
* :mod:`~jaxreg.learn.pose`: deep iterative rigid registration, :class:`LearnedMetric` (a network predicting
  the misalignment of a pose, the cost of a global search and a gradient refinement; Haskins et al. 2019) and
  :class:`RigidAgent` (greedy-supervised action rewards, coarse-to-fine; Liao et al. 2017), methods of
  :func:`jaxreg.optimize.register` trained by :func:`train_pose_net`.
* :mod:`~jaxreg.learn.features`: :class:`FeatureNet`, contrast-invariant features trained on label maps
  (:func:`train_feature_net`), frozen in the similarity ``features`` (:func:`jaxreg.similarity.features`; the
  shipped model ``labelmind``, :func:`load_feature_net`).
* :mod:`~jaxreg.learn.method`: :class:`Network`, a trained network as a method (a stage) of
  :func:`jaxreg.optimize.register`.
* :mod:`~jaxreg.learn.inference`: ``predict`` on pairs of any grids, the pipeline "linear start -> network
  stage -> greedy stage" of :func:`jaxreg.optimize.register` (test-time instance optimisation).
"""

from jaxreg.learn import modes as modes
from jaxreg.learn.data import (
    PairLoader,
    atlas_pairs,
    common_grid,
    list_images,
    load_volumes,
    match_labels,
    random_pairs,
    sample_pairs,
)
from jaxreg.learn.features import FeatureNet, load_feature_net, save_feature_net, train_feature_net
from jaxreg.learn.inference import network_stages, normalize_image, place_grid, predict
from jaxreg.learn.losses import (
    RegistrationLoss,
    displacement_on_grid,
    registration_loss,
    registration_metrics,
)
from jaxreg.learn.method import Network
from jaxreg.learn.modes import MODES, TrainingMode
from jaxreg.learn.neural_field import NeuralField
from jaxreg.learn.pose import LearnedMetric, PoseNet, RigidAgent, load_pose_net, train_pose_net
from jaxreg.learn.networks import TRANSFORM_KINDS, Prediction, RegistrationNet, UNet
from jaxreg.learn.synthesis import (
    augment_intensity,
    normalize_intensity,
    random_affine,
    random_deformation,
    relabel,
    synthesize_image,
)
from jaxreg.learn.targets import compose_target, engine_targets, label_embedding
from jaxreg.learn.train import (
    FitResult,
    available_models,
    export_model,
    fit,
    initialize_distributed,
    load_model,
    make_eval_step,
    make_mesh,
    make_optimizer,
    make_train_step,
    resolve_model,
    shard_batch,
    split_model,
)

__all__ = [
    "MODES",
    "TRANSFORM_KINDS",
    "FeatureNet",
    "FitResult",
    "LearnedMetric",
    "Network",
    "NeuralField",
    "PairLoader",
    "PoseNet",
    "Prediction",
    "RegistrationLoss",
    "RegistrationNet",
    "RigidAgent",
    "TrainingMode",
    "UNet",
    "atlas_pairs",
    "augment_intensity",
    "available_models",
    "common_grid",
    "compose_target",
    "displacement_on_grid",
    "engine_targets",
    "export_model",
    "fit",
    "initialize_distributed",
    "label_embedding",
    "list_images",
    "load_feature_net",
    "load_model",
    "load_pose_net",
    "load_volumes",
    "make_eval_step",
    "make_mesh",
    "make_optimizer",
    "make_train_step",
    "match_labels",
    "network_stages",
    "normalize_image",
    "normalize_intensity",
    "place_grid",
    "predict",
    "random_affine",
    "random_deformation",
    "random_pairs",
    "registration_loss",
    "registration_metrics",
    "relabel",
    "resolve_model",
    "sample_pairs",
    "save_feature_net",
    "shard_batch",
    "split_model",
    "synthesize_image",
    "train_feature_net",
    "train_pose_net",
]
