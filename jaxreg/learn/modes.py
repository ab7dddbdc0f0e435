"""Training modes of learned registration: what the data pipeline provides, what is made on the device, and
which loss trains the network.

Each factory returns a :class:`TrainingMode`, a triple of pure functions for :func:`jaxreg.learn.train.fit`:

* ``augment(key, batch) -> batch`` runs on the device inside the jitted step (each pair gets its own key
  ``split(key, B)[i]``);
* ``loss(model, batch, key) -> (loss, metrics)``, a :class:`~jaxreg.learn.losses.RegistrationLoss` (the
  engine's objective of similarity and regulariser terms plus label/supervised terms; weights traced, so
  ``mode.loss.replace(weights=w)`` sweeps or differentiates them);
* ``metrics(model, batch) -> metrics`` for validation pairs (:func:`jaxreg.learn.losses.registration_metrics`).

Modes:

* :func:`unsupervised` (VoxelMorph, Balakrishnan et al., IEEE TMI 2019): image similarity of the warped moving
  image plus a regulariser; optional intensity augmentation.
* :func:`supervised` (Eppenhof & Pluim, IEEE TMI 2018): a random smooth deformation ``T*`` is drawn per pair
  on the fly, the fixed image is the moving image warped by it, the loss is the squared error of the predicted
  displacement against ``T*`` (mm^2).
* :func:`weakly_supervised` (Hu et al., MedIA 2018): soft Dice of the warped one-hot labels, with or without an
  image term.
* :func:`synthesis` (SynthMorph, Hoffmann et al., IEEE TMI 2022): both images are synthesised from label maps
  with random intensities per label, blur, bias field and noise, so the network never sees a real contrast and
  registers any; trained with the label Dice (images are only the network's inputs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

import jaxreg.learn.synthesis as syn
from jaxreg.core.grid import Grid, Image
from jaxreg.learn.losses import displacement_on_grid, registration_loss, registration_metrics
from jaxreg.warp import warp, warp_labels

__all__ = ["MODES", "TrainingMode", "supervised", "supervised_engine", "synthesis", "unsupervised", "weakly_supervised"]


class TrainingMode(NamedTuple):
    """The pure functions of one training mode (see the module docstring).

    Attributes:
      augment: ``augment(key, batch) -> batch`` run on the device before the loss, or ``None``.
      loss: ``loss(model, batch, key) -> (scalar, metrics)``.
      metrics: ``metrics(model, batch) -> dict`` for validation batches.
      inputs: batch keys the data pipeline must provide for training (``"fixed"``, ``"moving"``,
        ``"fixed_labels"``, ``"moving_labels"``, ``"displacement"``).
      targets: for modes trained on precomputed fields, ``targets(grid, *, labels, images, cache_dir, log) ->
        (N, N, *grid.shape, ndim)`` displacements (mm) of every ordered pair of the training volumes, which the
        data pipeline serves as ``"displacement"`` (:class:`~jaxreg.learn.data.PairLoader` ``targets``);
        ``None`` otherwise.
    """

    augment: Callable | None
    loss: Callable
    metrics: Callable
    inputs: tuple[str, ...]
    targets: Callable | None = None


def _per_pair(fn: Callable) -> Callable:
    """``fn(key, item) -> item`` to a batched ``augment(key, batch) -> batch`` (one key per pair)."""

    def augment(key, batch):
        b = jax.tree_util.tree_leaves(batch)[0].shape[0]
        keys = jax.random.split(key, b)
        return jax.vmap(fn)(keys, batch)

    return augment


def _intensity(key, image, strength: float, grid: Grid):
    """Intensity augmentation of a ``(*spatial, 1)`` image (gamma, bias field, noise)."""
    if strength <= 0:
        return image
    x = image[..., 0]
    x = syn.augment_intensity(key, x, grid=grid, gamma_std=0.2 * strength, bias_std=0.2 * strength, noise_std=0.02 * strength)
    return x[..., None].astype(image.dtype)


def unsupervised(
    grid: Grid,
    *,
    similarity: Any = "mse",
    regularizer: Any = "diffusion",
    regularizer_weight: float = 0.01,
    label_values: Sequence[int] | None = None,
    bidirectional: bool = False,
    intensity_augmentation: float = 0.0,
) -> TrainingMode:
    """VoxelMorph-style training: ``sim(F, M o T) + w R``.

    Args:
      grid: common grid of the training pairs (static).
      similarity: image similarity (lower is better): a function such as ``jaxreg.similarity.lncc(9)`` or a
        registry spec (``"mse"``, ``"ncc"``, ``"lncc(window=9)"``, ``"nmi"``; :mod:`jaxreg.terms`).
      regularizer: field regulariser ``R(u, *, spacing)`` or registry spec (``"diffusion"``, ``"bending"``).
      regularizer_weight: its weight ``w``.
      label_values: labels for the validation Dice (optional).
      bidirectional: symmetrise the image term with the inverse transform.
      intensity_augmentation: strength (0 = off, 1 = default) of random gamma, bias field and noise applied to
        each training image independently.

    Returns:
      :class:`TrainingMode` needing ``fixed`` and ``moving``.
    """
    aug = None
    if intensity_augmentation > 0:

        def one(key, item):
            kf, km = jax.random.split(key)
            out = dict(item)
            out["fixed"] = _intensity(kf, item["fixed"], intensity_augmentation, grid)
            out["moving"] = _intensity(km, item["moving"], intensity_augmentation, grid)
            return out

        aug = _per_pair(one)
    loss = registration_loss(grid, similarity=similarity, regularizer=regularizer, regularizer_weight=regularizer_weight, bidirectional=bidirectional)
    return TrainingMode(aug, loss, registration_metrics(grid, label_values=label_values, similarity=similarity), ("fixed", "moving"))


def supervised(
    grid: Grid,
    *,
    max_displacement_mm: float = 6.0,
    smoothness_mm: float = 12.0,
    kind: str = "velocity",
    image_weight: float = 0.0,
    similarity: Any = "mse",
    regularizer_weight: float = 0.0,
    label_values: Sequence[int] | None = None,
    intensity_augmentation: float = 0.0,
) -> TrainingMode:
    """Supervised training on synthetic deformations drawn on the fly (Eppenhof & Pluim 2018).

    For each pair the data pipeline provides one image (``moving``); a random smooth transform ``T*``
    (:func:`jaxreg.learn.synthesis.random_deformation`) is drawn, ``fixed = moving o T*`` (pull), and the
    loss is ``mean_x ||T(x) - T*(x)||^2`` (mm^2) plus optional image and regulariser terms. Moving labels, when
    present, are warped the same way so that the validation Dice is defined.

    Args:
      grid: common grid (static).
      max_displacement_mm: largest displacement of ``T*``, mm.
      smoothness_mm: its smoothness (Gaussian sigma of the random field), mm.
      kind: ``"velocity"`` (diffeomorphic ``T*``) or ``"displacement"``.
      image_weight: optional weight of an image term ``sim(F, M o T)``.
      similarity: that term's similarity.
      regularizer_weight: optional diffusion weight.
      label_values: labels for the validation Dice.
      intensity_augmentation: strength of independent intensity augmentation of both images (so the network
        cannot match intensities exactly).

    Returns:
      :class:`TrainingMode` needing ``moving`` only (``fixed`` is made on the device).
    """

    def one(key, item):
        kd, kf, km = jax.random.split(key, 3)
        t = syn.random_deformation(kd, grid, max_displacement_mm=max_displacement_mm, smoothness_mm=smoothness_mm, kind=kind)
        out = dict(item)
        moving = item["moving"]
        out["fixed"] = _intensity(kf, warp(Image(moving, grid), t, grid).data.astype(moving.dtype), intensity_augmentation, grid)
        out["moving"] = _intensity(km, moving, intensity_augmentation, grid)
        out["displacement"] = displacement_on_grid(t, grid).astype(moving.dtype)
        if "moving_labels" in item:
            out["fixed_labels"] = warp_labels(Image(item["moving_labels"], grid), t, grid).data
        return out

    loss = registration_loss(grid, similarity=similarity, image_weight=image_weight, regularizer_weight=regularizer_weight, supervised_weight=1.0)
    return TrainingMode(_per_pair(one), loss, registration_metrics(grid, label_values=label_values), ("moving",))


def weakly_supervised(
    grid: Grid,
    *,
    label_values: Sequence[int],
    image_weight: float = 0.0,
    similarity: Any = "mse",
    regularizer: Any = "diffusion",
    regularizer_weight: float = 0.01,
    bidirectional: bool = False,
) -> TrainingMode:
    """Label-supervised training: ``(1 - mean soft Dice(F_labels, M_labels o T)) + w_img sim + w R``.

    Args:
      grid: common grid (static).
      label_values: the labels of the Dice term (also the validation Dice).
      image_weight: weight of an optional image term.
      similarity: that term's similarity.
      regularizer: field regulariser.
      regularizer_weight: its weight.
      bidirectional: symmetrise with the inverse transform.

    Returns:
      :class:`TrainingMode` needing images and labels of both.
    """
    loss = registration_loss(
        grid, similarity=similarity, image_weight=image_weight, regularizer=regularizer, regularizer_weight=regularizer_weight,
        label_values=label_values, label_weight=1.0, bidirectional=bidirectional,
    )
    return TrainingMode(None, loss, registration_metrics(grid, label_values=label_values), ("fixed", "moving", "fixed_labels", "moving_labels"))


def _label_synthesis(
    grid: Grid, values: tuple[int, ...], synthesis_labels: Sequence[int] | None, synth_options: dict | None,
    same_contrast: bool,
) -> tuple[Callable, Callable]:
    """The label-driven image synthesis shared by the modes that train on label maps.

    Returns:
      ``image(key, labels) -> (*shape)``, the synthetic image of a label map (each of ``synthesis_labels``,
      default ``values``, gets its own random intensity; other values share one), and
      ``noisy(key_level, key_noise, image)``, which adds independent Gaussian noise of a random level in
      ``[0, noise_std_max]`` to an image of a ``same_contrast`` pair (synthesised without noise, so that the two
      images of a pair do not share it); the identity otherwise.
    """
    all_values = tuple(int(v) for v in (synthesis_labels if synthesis_labels is not None else values))
    opts = dict(synth_options or {})
    if isinstance(opts.get("mean_range"), str):  # a named prior, e.g. "t1_brain" (from a TOML file)
        opts["mean_range"] = syn.intensity_prior(opts["mean_range"], all_values)
    noise_max = float(opts.get("noise_std_max", 0.05))
    if same_contrast:
        opts["noise_std_max"] = 0.0

    def image(key, labels):
        idx = syn.relabel(labels, all_values, unknown=len(all_values))
        return syn.synthesize_image(key, idx, len(all_values) + 1, grid=grid, **opts)

    def noisy(key_level, key_noise, img):
        if not same_contrast or noise_max <= 0:
            return img
        return img + jax.random.uniform(key_level, (), minval=0.0, maxval=noise_max) * jax.random.normal(key_noise, img.shape)

    return image, noisy


def synthesis(
    grid: Grid,
    *,
    label_values: Sequence[int],
    synthesis_labels: Sequence[int] | None = None,
    regularizer: Any = "diffusion",
    regularizer_weight: float = 1.0,
    deformation_mm: float = 0.0,
    same_subject: float = 0.0,
    same_contrast: bool = False,
    image_weight: float = 0.0,
    similarity: Any = "mse",
    label_scales: Sequence[float] = (0.0,),
    bidirectional: bool = False,
    synth_options: dict[str, Any] | None = None,
) -> TrainingMode:
    """Label-driven synthesis (SynthMorph): images synthesised from label maps, trained with label Dice.

    Per pair, each label map is (optionally) deformed by its own random smooth diffeomorphism
    (``deformation_mm`` > 0, more variety from few maps) and an image is synthesised from it
    (:func:`jaxreg.learn.synthesis.synthesize_image`: a random intensity per label, blur, bias field, gamma,
    noise). The network sees only the synthetic images; the loss is the soft Dice of the warped one-hot labels
    plus ``regularizer_weight`` times the regulariser.

    Args:
      grid: common grid (static).
      label_values: labels of the Dice loss (e.g. the brain structures).
      synthesis_labels: all label values that get their own intensity (default: ``label_values``; values not
        listed share the background's). Use every label of the maps (extra-cerebral classes too) so the
        synthetic heads look like heads.
      regularizer: field regulariser.
      regularizer_weight: its weight (SynthMorph uses 1 with the velocity gradient).
      deformation_mm: largest displacement of the random per-map deformation, mm (0 = off).
      same_subject: probability (traced-free Python float in [0, 1]) that a pair is made from one label map:
        the moving map is the fixed map itself before the two random deformations, as in SynthMorph's
        training on deformed copies of one label map (Hoffmann et al. 2022); the correspondence is then fully
        known to the Dice, which gives a consistent learning signal early in training. Needs
        ``deformation_mm > 0``.
      same_contrast: both images of a pair get the same random intensity per label, blur, bias field and gamma
        (one key), with independent noise; contrasts still differ from pair to pair. The pair is then
        mono-modal, so an image term can help the label Dice (a dense learning signal); leave it off to train
        for any pair of contrasts, as SynthMorph does.
      image_weight: weight of an image term ``sim(F, M o T)`` (meaningful with ``same_contrast``).
      similarity: that term's similarity (e.g. ``lncc(9)``).
      label_scales: Gaussian sigmas (voxels) of the multi-scale Dice (see
        :func:`~jaxreg.learn.losses.registration_loss`).
      bidirectional: symmetrise the Dice with the inverse transform.
      synth_options: keyword options of :func:`~jaxreg.learn.synthesis.synthesize_image`; ``mean_range`` may
        name an intensity prior (``"t1_brain"``: :func:`~jaxreg.learn.synthesis.intensity_prior`).

    Returns:
      :class:`TrainingMode` needing ``fixed_labels`` and ``moving_labels`` (images are made on the device).
    """
    values = tuple(int(v) for v in label_values)
    if not 0.0 <= float(same_subject) <= 1.0:
        raise ValueError(f"same_subject: expected a probability in [0, 1], got {same_subject!r}")
    if same_subject > 0 and not deformation_mm > 0:
        raise ValueError("same_subject: pairs made from one label map need deformation_mm > 0 (else fixed == moving)")
    image, noisy = _label_synthesis(grid, values, synthesis_labels, synth_options, same_contrast)

    def make(key, labels, contrast_key):
        kd, ks, kn, ka = jax.random.split(key, 4)
        if deformation_mm > 0:
            t = syn.random_deformation(kd, grid, max_displacement_mm=deformation_mm, smoothness_mm=10.0, kind="velocity")
            labels = warp_labels(Image(labels, grid), t, grid).data
        img = noisy(ka, kn, image(ks if contrast_key is None else contrast_key, labels))
        return labels, img[..., None].astype(jnp.float32)

    def one(key, item):
        kf, km, ks, kc = jax.random.split(key, 4)
        out = dict(item)
        src = item["moving_labels"]
        if same_subject > 0:
            src = jnp.where(jax.random.bernoulli(ks, float(same_subject)), item["fixed_labels"], src)
        contrast = kc if same_contrast else None
        out["fixed_labels"], out["fixed"] = make(kf, item["fixed_labels"], contrast)
        out["moving_labels"], out["moving"] = make(km, src, contrast)
        return out

    # validation pairs are label maps too: their images are synthesised with a fixed key (the same images at
    # every evaluation), without the random deformation
    metrics = _synthetic_metrics(grid, values, image, same_contrast)
    loss = registration_loss(
        grid, image_weight=image_weight, similarity=similarity, regularizer=regularizer,
        regularizer_weight=regularizer_weight, label_values=values, label_weight=1.0, bidirectional=bidirectional,
        label_scales=label_scales,
    )
    return TrainingMode(_per_pair(one), loss, metrics, ("fixed_labels", "moving_labels"))


def _synthetic_metrics(grid: Grid, values: tuple[int, ...], image: Callable, same_contrast: bool) -> Callable:
    """Validation metrics of label-map pairs: images synthesised with a fixed key (the same at every
    evaluation), then :func:`~jaxreg.learn.losses.registration_metrics` (Dice over ``values``)."""

    def one_eval(key, item):
        kf, km = jax.random.split(key)
        out = dict(item)
        for side, k in (("fixed", kf), ("moving", km)):
            out[side] = image(kf if same_contrast else k, item[f"{side}_labels"])[..., None].astype(jnp.float32)
        return out

    base = registration_metrics(grid, label_values=values)
    synth_eval = _per_pair(one_eval)

    def metrics(model, batch):
        if "fixed" not in batch or "moving" not in batch:
            batch = synth_eval(jax.random.key(0), batch)
        return base(model, batch)

    return metrics


def supervised_engine(
    grid: Grid,
    *,
    label_values: Sequence[int],
    synthesis_labels: Sequence[int] | None = None,
    synthesize: bool = True,
    deformation_mm: float = 4.0,
    same_contrast: bool = False,
    label_weight: float = 0.0,
    image_weight: float = 0.0,
    similarity: Any = "mse",
    regularizer_weight: float = 0.0,
    target_levels: Sequence[Sequence[int]] = ((2, 40), (1, 20)),
    target_channels: int = 4,
    head_mask: bool = False,
    synth_options: dict[str, Any] | None = None,
) -> TrainingMode:
    """Supervised by the engine's own fields (the lecture's category B: targets from a classical method).

    The target ``T*_ij`` of every ordered training pair is computed once by :func:`jaxreg.optimize.register`
    on the label maps themselves (:func:`jaxreg.learn.targets.engine_targets`: a greedy SyN-like stage on
    embedded label maps, cached in the work folder) and served by the data pipeline as ``"displacement"``.
    Per pair, on the device:

    * both label maps (and images, if any) are deformed by their own random diffeomorphisms ``phi`` (fixed)
      and ``psi`` (moving), up to ``deformation_mm``, and the target follows exactly:
      ``T' = psi^-1 o T* o phi``, so ``F o phi`` and ``M o psi`` correspond through ``T'`` wherever ``F`` and
      ``M`` did through ``T*`` (``psi^-1 = exp(-v)``); a few maps give endless distinct pairs;
    * with ``synthesize`` the network's inputs are images synthesised from the deformed maps
      (:func:`jaxreg.learn.synthesis.synthesize_image`: random intensity per label, blur, bias, gamma, noise;
      independent contrasts unless ``same_contrast``), so the network learns a contrast-agnostic mapping.

    The loss is ``mean_x |T(x) - T'(x)|^2`` (mm^2) plus optional label Dice, image and regulariser terms
    (:func:`~jaxreg.learn.losses.registration_loss`).

    Args:
      grid: common grid (static).
      label_values: labels of the engine's embedding, the Dice term and the validation Dice.
      synthesis_labels: labels that get their own synthetic intensity (default ``label_values``; the others
        share the background's: leave extra-cerebral classes out to synthesise skull-stripped heads).
      synthesize: make the inputs from the label maps (else the data pipeline's images are used).
      deformation_mm: largest displacement of ``phi`` and ``psi``, mm (0 = off).
      same_contrast: one intensity model per pair (mono-modal pairs).
      label_weight: weight of ``1 - mean soft Dice`` of the warped labels.
      image_weight: weight of an image term (meaningful with ``same_contrast`` or real images).
      similarity: that term's similarity.
      regularizer_weight: diffusion weight.
      target_levels: ``(shrink, iterations)`` of the engine's levels on the network grid.
      target_channels: dimension of the label embedding the engine registers.
      head_mask: average the supervised error over the fixed map's labelled voxels only (the engine's field is
        extrapolated, and unpredictable from the images, in the background).
      synth_options: keyword options of :func:`~jaxreg.learn.synthesis.synthesize_image`; ``mean_range`` may
        name an intensity prior (``"t1_brain"``: :func:`~jaxreg.learn.synthesis.intensity_prior`).

    Returns:
      :class:`TrainingMode` needing ``fixed_labels``, ``moving_labels``, ``displacement`` (and ``fixed``,
      ``moving`` without ``synthesize``), with ``targets`` set.
    """
    from jaxreg.learn.targets import compose_target, engine_targets

    values = tuple(int(v) for v in label_values)
    if not values:
        raise ValueError("label_values: expected at least one label value")
    if not deformation_mm >= 0:
        raise ValueError(f"deformation_mm: expected a non-negative number of mm, got {deformation_mm!r}")
    levels = tuple((int(a), int(b)) for a, b in target_levels)
    channels = int(target_channels)
    image, noisy = _label_synthesis(grid, values, synthesis_labels, synth_options, same_contrast)

    def one(key, item):
        kf, km, kc, kn1, kn2, ka1, ka2 = jax.random.split(key, 7)
        out = dict(item)
        fl, ml = item["fixed_labels"], item["moving_labels"]
        phi = psi = None
        if deformation_mm > 0:
            phi = syn.random_deformation(kf, grid, max_displacement_mm=deformation_mm, smoothness_mm=10.0)
            psi = syn.random_deformation(km, grid, max_displacement_mm=deformation_mm, smoothness_mm=10.0)
            fl = warp_labels(Image(fl, grid), phi, grid).data
            ml = warp_labels(Image(ml, grid), psi, grid).data
            if not synthesize:
                out["fixed"] = warp(Image(item["fixed"][..., 0], grid), phi, grid).data[..., None]
                out["moving"] = warp(Image(item["moving"][..., 0], grid), psi, grid).data[..., None]
        out["displacement"] = compose_target(item["displacement"], grid, phi=phi, psi=psi)  # psi^-1 o T* o phi
        out["fixed_labels"], out["moving_labels"] = fl, ml
        if head_mask:  # the engine's field is known where there is tissue, only extrapolated in the background
            out["supervised_mask"] = (fl != 0).astype(jnp.float32)
        if synthesize:
            if same_contrast:
                f_img, m_img = noisy(ka1, kn1, image(kc, fl)), noisy(ka2, kn2, image(kc, ml))
            else:
                f_img, m_img = image(kn1, fl), image(kn2, ml)
            out["fixed"], out["moving"] = f_img[..., None].astype(jnp.float32), m_img[..., None].astype(jnp.float32)
        return out

    def targets(grid_, *, labels=None, images=None, cache_dir=None, log=None):
        return engine_targets(
            grid_, labels=labels, images=images, label_values=values, levels=levels, channels=channels,
            cache_dir=cache_dir, log=log,
        )  # fmt: skip

    loss = registration_loss(
        grid, similarity=similarity, image_weight=image_weight, regularizer_weight=regularizer_weight,
        label_values=values, label_weight=label_weight, supervised_weight=1.0,
    )  # fmt: skip
    metrics = _synthetic_metrics(grid, values, image, same_contrast) if synthesize else registration_metrics(
        grid, label_values=values
    )
    inputs = ("fixed_labels", "moving_labels", "displacement") + (() if synthesize else ("fixed", "moving"))
    return TrainingMode(_per_pair(one), loss, metrics, inputs, targets)


MODES = {
    "unsupervised": unsupervised,
    "supervised": supervised,
    "supervised_engine": supervised_engine,
    "weakly_supervised": weakly_supervised,
    "synthesis": synthesis,
}
"""Mode name -> factory (the names ``jaxreg train`` accepts)."""
