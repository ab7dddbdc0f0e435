"""Learned contrast-invariant features for multi-modal registration (deep iterative registration).

A small Flax NNX network, :class:`FeatureNet`, maps an image to a few channels of local structure that do not
depend on its contrast, so that a plain SSD of two images' feature maps compares a CT with an MR (after the
feature-based methods of Simonovsky et al., MICCAI 2016; Haskins et al., Mach. Vis. Appl. 2020 (the survey's
"deep iterative registration"); DINO-Reg, Song et al. 2024). The network is frozen and applied once per image
and resolution level by the similarity ``features`` (:mod:`jaxreg.similarity.learned`).

**Training target.** A regression target that is contrast-free by construction: the *label self-similarity
descriptor* of the label map the training images are synthesised from, :func:`label_descriptor`. For each
self-similarity-context pair of neighbours ``(a, b)`` at distance ``d`` (:func:`jaxreg.similarity.ssc_pairs`)
and each dilation ``d`` of ``dilations``::

    D_ab,d(x) = mean_{|p|_inf <= radius} [ L(x + p + d a) != L(x + p + d b) ]          (in [0, 1])

the fraction of a patch whose two shifted copies fall on different labels: MIND-SSC (Heinrich et al., MICCAI
2013) computed on the one-hot label image, without its intensity normalisation (a label map has no noise).
Images synthesised from the same label map with any two contrasts (:func:`jaxreg.learn.synthesize_image`)
have the same target, so the network learns to output the same descriptor for every contrast; unlike a
contrastive (InfoNCE) loss, the target also fixes *what* the features vary with, so they are not flat.

**Inputs** are scaled to [0, 1] first, in training and in use (:func:`scale_input`): rank-equalised
(:func:`equalize`, removes every monotone intensity change) or robust min-max (keeps noise at its amplitude),
as the model's ``normalize`` says.

**Layout.** The network is 2-D (channel-last ``(B, H, W, 1) -> (B, H, W, C)``); :func:`apply_features` applies it
to a 2-D image, or to a 3-D volume slice by slice along each array axis, concatenating the three planes'
channels (``3 C`` channels): a 3-D descriptor from a network trained on 2-D slices.

:func:`train_feature_net` trains it on slices of label maps with explicit PRNG keys and optax;
:func:`save_feature_net` / :func:`load_feature_net` write and read a shipped model folder
(``model.json`` + ``params.npz``, :func:`jaxreg.learn.train.export_model`'s layout; ``jaxreg/models/labelmind``).
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxreg.learn.synthesis import normalize_intensity, synthesize_image
from jaxreg.similarity import ssc_pairs

__all__ = [
    "FeatureNet",
    "FeatureTraining",
    "apply_features",
    "check_axes",
    "equalize",
    "scale_input",
    "label_descriptor",
    "feature_pair_batch",
    "load_label_slices",
    "train_feature_net",
    "save_feature_net",
    "load_feature_net",
]

_NEG_SLOPE = 0.2
_KIND = "features"
NORMALIZATIONS = ("equalize", "minmax")
"""Input scalings of :class:`FeatureNet` (its ``normalize``)."""
PADDINGS = ("zero", "edge")
"""Border handling of :class:`FeatureNet` (its ``padding``)."""


# -- the network -----------------------------------------------------------------------------------------------
class FeatureNet(nnx.Module):
    """A 2-D dilated-convolution feature network: ``(B, H, W, 1) -> (B, H, W, out_channels)``.

    ``len(dilations)`` 3x3 convolutions with ``width`` channels and the given dilations (LeakyReLU(0.2) after
    each, "same" zero padding), then a 1x1 convolution to ``out_channels``. Receptive field
    ``1 + 2 sum(dilations)`` voxels (the default 1, 1, 2, 4, 8, 2: 37 voxels). With ``padding="edge"`` the input
    is first replicate-padded by the receptive-field radius ``sum(dilations)`` and the output cropped back, so a
    voxel near the border sees its nearest image values instead of zeros (as the training target, whose
    descriptor is replicate-padded): on a thin volume (abdomen_ct_mr: 20 slices of 3 mm, 5 on the coarsest
    level) most of a through-plane slice's receptive field is border.

    Attributes:
      width: hidden channels.
      dilations: dilation of each 3x3 convolution.
      out_channels: feature channels ``C``.
      padding: ``"zero"`` (the convolutions' own zero padding) or ``"edge"`` (replicate padding of the input).
      normalize: how :func:`apply_features` scales an image first: ``"equalize"`` (:func:`equalize`, ranks) or
        ``"minmax"`` (robust min-max to [0, 1], the 0.5 and 99.5 percentiles:
        :func:`jaxreg.learn.normalize_intensity`). Ranks remove every monotone intensity change but spread noise
        in a flat region over that region's share of [0, 1]; min-max keeps noise at its own amplitude.
    """

    def __init__(
        self,
        *,
        width: int = 16,
        dilations: Sequence[int] = (1, 1, 2, 4, 8, 2),
        out_channels: int = 8,
        normalize: str = "equalize",
        padding: str = "zero",
        rngs: nnx.Rngs,
    ):
        """Build the network (``rngs`` draws the initial weights)."""
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize: expected one of {NORMALIZATIONS}, got {normalize!r}")
        self.normalize = normalize
        if padding not in PADDINGS:
            raise ValueError(f"padding: expected one of {PADDINGS}, got {padding!r}")
        self.padding = padding
        dilations = tuple(int(d) for d in dilations)
        if not dilations or any(d < 1 for d in dilations):
            raise ValueError(f"dilations: expected positive ints, got {dilations!r}")
        for name, v in (("width", width), ("out_channels", out_channels)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name}: expected a positive int, got {v!r}")
        self.width, self.dilations, self.out_channels = int(width), dilations, int(out_channels)
        cin = 1
        convs = []
        for d in dilations:
            convs.append(nnx.Conv(cin, self.width, (3, 3), kernel_dilation=(d, d), padding="SAME", rngs=rngs))
            cin = self.width
        self.convs = nnx.List(convs)
        self.head = nnx.Conv(cin, self.out_channels, (1, 1), rngs=rngs)

    @property
    def config(self) -> dict[str, Any]:
        """``{"kind": "features", "width", "dilations", "out_channels"}``: rebuilds it (:meth:`from_config`)."""
        return {
            "kind": _KIND,
            "width": self.width,
            "dilations": list(self.dilations),
            "out_channels": self.out_channels,
            "normalize": self.normalize,
            "padding": self.padding,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], *, rngs: nnx.Rngs | None = None) -> FeatureNet:
        """The network of a :attr:`config` (initial weights from ``rngs``, default ``nnx.Rngs(0)``)."""
        if not isinstance(config, dict) or config.get("kind") != _KIND:
            raise ValueError(f"config: expected a feature network configuration (kind 'features'), got {config!r}")
        return cls(
            width=config["width"],
            dilations=config["dilations"],
            out_channels=config["out_channels"],
            normalize=config.get("normalize", "equalize"),
            padding=config.get("padding", "zero"),
            rngs=rngs or nnx.Rngs(0),
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """Features of a batch ``(B, H, W, 1)`` -> ``(B, H, W, out_channels)``."""
        r = sum(self.dilations) if self.padding == "edge" else 0
        if r:
            x = jnp.pad(x, ((0, 0), (r, r), (r, r), (0, 0)), mode="edge")
        for conv in self.convs:
            x = jax.nn.leaky_relu(conv(x), _NEG_SLOPE)
        x = self.head(x)
        return x[:, r : x.shape[1] - r, r : x.shape[2] - r] if r else x


# -- inputs and targets ----------------------------------------------------------------------------------------
def equalize(image: jax.Array) -> jax.Array:
    """Rank (histogram) equalisation: each voxel's mid-rank among all voxels, in ``[0, 1]``.

    ``e(x) = (#{y < I(x)} + #{y <= I(x)}) / (2 N)``: invariant to every strictly increasing intensity map; ties
    (a flat background) share one value. Jittable; no division by anything that can vanish.

    Args:
      image: ``(*spatial)`` real image.

    Returns:
      float32 array of ``image``'s shape.
    """
    x = jnp.asarray(image, jnp.float32)
    flat = jnp.sort(x.ravel())
    lo = jnp.searchsorted(flat, x, side="left")
    hi = jnp.searchsorted(flat, x, side="right")
    return ((lo + hi).astype(jnp.float32) / (2.0 * flat.size)).reshape(x.shape)


def scale_input(image: jax.Array, normalize: str = "equalize") -> jax.Array:
    """An image scaled to [0, 1] as a :class:`FeatureNet` with that ``normalize`` expects it (float32)."""
    if normalize == "equalize":
        return equalize(image)
    if normalize == "minmax":
        return normalize_intensity(image)
    raise ValueError(f"normalize: expected one of {NORMALIZATIONS}, got {normalize!r}")


def label_descriptor(labels: jax.Array, *, dilations: Sequence[int] = (1, 2), radius: int = 1) -> jax.Array:
    """The label self-similarity descriptor of a 2-D label map (the training target of :class:`FeatureNet`).

    ``D_ab,d(x) = mean_{|p|_inf <= radius} [L(x + p + d a) != L(x + p + d b)]`` for the :func:`ssc_pairs` ``(a, b)``
    and each ``d`` of ``dilations`` (replicate padding at the border): MIND-SSC of the one-hot label image
    without normalisation, in ``[0, 1]``, independent of any contrast.

    Args:
      labels: ``(H, W)`` integer label map.
      dilations: neighbour distances ``d`` in voxels.
      radius: patch radius in voxels.

    Returns:
      ``(H, W, 4 len(dilations))`` float32.
    """
    lab = jnp.asarray(labels)
    if lab.ndim != 2:
        raise ValueError(f"labels: expected a 2-D label map, got shape {tuple(lab.shape)}")
    h, w = lab.shape
    out = []
    k = 2 * radius + 1
    for d in dilations:
        pad = jnp.pad(lab, d, mode="edge")
        for a, b in ssc_pairs(2):
            sa = jax.lax.dynamic_slice(pad, (d + d * a[0], d + d * a[1]), (h, w))
            sb = jax.lax.dynamic_slice(pad, (d + d * b[0], d + d * b[1]), (h, w))
            q = (sa != sb).astype(jnp.float32)
            if radius > 0:
                q = jnp.pad(q, radius, mode="edge")
                q = jax.lax.reduce_window(q, 0.0, jax.lax.add, (k, k), (1, 1), "VALID") / (k * k)
            out.append(q)
    return jnp.stack(out, axis=-1)


def check_axes(axes: Any) -> tuple[int, ...]:
    """``axes`` as a tuple of distinct array axes of a volume (0, 1, 2); raises ValueError naming ``axes``."""
    try:
        items = tuple(axes)
    except TypeError:
        items = ()
    ok = all(not isinstance(a, bool) and isinstance(a, (int, np.integer)) and a in (0, 1, 2) for a in items)
    if not items or not ok or len(set(items)) != len(items):
        raise ValueError(f"axes: expected distinct array axes from (0, 1, 2), e.g. (0, 1, 2) or (2,), got {axes!r}")
    return tuple(int(a) for a in items)


def apply_features(net: FeatureNet, image: jax.Array, *, axes: Sequence[int] = (0, 1, 2)) -> jax.Array:
    """Features of one image: scaled (:func:`scale_input`), then the network (2-D) or on planes of a volume (3-D).

    A 3-D volume is cut into slices along each array axis of ``axes`` in turn (the network runs on the planes
    normal to that axis); the planes' features are concatenated in the order of ``axes``. ``axes=(2,)`` keeps
    only the planes normal to the last axis (axial for a RAS volume): on a thin stack (abdomen_ct_mr's MR has 20
    slices of 3 mm) the other two planes are mostly border at the network's receptive field (37 voxels for
    ``labelmind``).

    Args:
      net: the (frozen) :class:`FeatureNet`.
      image: ``(H, W)`` or ``(X, Y, Z)`` real image.
      axes: array axes of a volume to slice along (distinct, from 0, 1, 2); ignored for a 2-D image. Static.

    Returns:
      ``(H, W, C)`` or ``(X, Y, Z, len(axes) C)`` float32 features (``C = net.out_channels``).
    """
    axes = check_axes(axes)
    x = scale_input(image, net.normalize)
    if x.ndim == 2:
        return net(x[None, ..., None])[0]
    if x.ndim != 3:
        raise ValueError(f"image: expected a 2-D or 3-D image, got shape {tuple(x.shape)}")
    planes = []
    for ax in axes:
        s = jnp.moveaxis(x, ax, 0)[..., None]  # (n_ax, ., ., 1): slices as a batch
        planes.append(jnp.moveaxis(net(s), 0, ax))
    return jnp.concatenate(planes, axis=-1)


# -- training --------------------------------------------------------------------------------------------------
class FeatureTraining(NamedTuple):
    """Settings of :func:`train_feature_net`.

    Attributes:
      steps: optimiser steps.
      batch_size: label slices per step (each gives two synthesised images).
      crop: side of the square training crops, voxels.
      learning_rate: Adam learning rate.
      dilations: dilations of the target descriptor (:func:`label_descriptor`); ``C = 4 len(dilations)``.
      radius: patch radius of the target.
      max_shrink: label slices are subsampled by a random integer factor in ``1..max_shrink`` (coarser voxels,
        as on the coarse levels of a registration).
      normalize: the network's input scaling (:data:`NORMALIZATIONS`).
      padding: the network's border handling (:data:`PADDINGS`).
      std_max: largest within-label standard deviation of the synthesis (:func:`jaxreg.learn.synthesize_image`'s
        ``std_range`` is ``(0, std_max)``).
      blur_max: largest blur standard deviation, in voxels of the crop, drawn per axis (anisotropic blur: a loss of
        resolution along one axis, as thick slices).
      bias_std: largest standard deviation of the log-bias field.
      gamma_std: standard deviation of the log-gamma exponent.
      noise_max: largest standard deviation of the additive noise ([0, 1] image units).
    """

    steps: int = 2000
    batch_size: int = 8
    crop: int = 64
    learning_rate: float = 3e-3
    dilations: tuple = (1, 2)
    radius: int = 1
    max_shrink: int = 3
    normalize: str = "equalize"
    padding: str = "zero"
    std_max: float = 0.08
    blur_max: float = 1.0
    bias_std: float = 0.3
    gamma_std: float = 0.25
    noise_max: float = 0.05

    @property
    def synthesis(self) -> tuple[float, float, float, float, float]:
        """``(std_max, blur_max, bias_std, gamma_std, noise_max)``: the synthesis settings, hashable."""
        return tuple(float(v) for v in (self.std_max, self.blur_max, self.bias_std, self.gamma_std, self.noise_max))


def feature_pair_batch(
    key: jax.Array, slices: np.ndarray, settings: FeatureTraining
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One training batch: two random-contrast images per label crop and the crops' descriptors.

    Args:
      key: PRNG key.
      slices: ``(N, S, S)`` host array of label-index slices (``0 .. L-1``), ``S >= crop * max_shrink``.
      settings: :class:`FeatureTraining`.

    Returns:
      ``(image_a, image_b, target)``: ``(B, crop, crop, 1)`` twice (scaled) and ``(B, crop, crop, C)``.
    """
    k_pick, k_shrink, k_off, k_a, k_b = jax.random.split(key, 5)
    n, size = slices.shape[0], slices.shape[1]
    b, c = settings.batch_size, settings.crop
    idx = np.asarray(jax.random.randint(k_pick, (b,), 0, n))
    shrink = np.asarray(jax.random.randint(k_shrink, (b,), 1, settings.max_shrink + 1))
    offs = np.asarray(jax.random.uniform(k_off, (b, 2)))
    crops = []
    for i in range(b):
        s = int(shrink[i])
        span = c * s
        o = (offs[i] * (size - span + 1)).astype(int)
        crops.append(slices[idx[i], o[0] : o[0] + span : s, o[1] : o[1] + span : s])
    lab = jnp.asarray(np.stack(crops))
    num = int(slices.max()) + 1
    return _pair_batch(
        k_a, k_b, lab, num, tuple(settings.dilations), int(settings.radius), settings.normalize, settings.synthesis
    )


@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6, 7))
def _pair_batch(k_a, k_b, lab, num, dilations, radius, normalize, synthesis):
    std_max, blur_max, bias_std, gamma_std, noise_max = synthesis

    def synth(key, l):
        img = synthesize_image(
            key, l, num, std_range=(0.0, std_max), blur_mm_max=blur_max, bias_std=bias_std, gamma_std=gamma_std,
            noise_std_max=noise_max,
        )
        return scale_input(img, normalize)[..., None]

    b = lab.shape[0]
    ia = jax.vmap(synth)(jax.random.split(k_a, b), lab)
    ib = jax.vmap(synth)(jax.random.split(k_b, b), lab)
    tgt = jax.vmap(lambda l: label_descriptor(l, dilations=dilations, radius=radius))(lab)
    return ia, ib, tgt


def load_label_slices(
    key: jax.Array,
    paths: Sequence[str | os.PathLike | np.ndarray],
    *,
    per_volume: int = 64,
    size: int = 192,
    zoom: int | Sequence[int] = 1,
) -> np.ndarray:
    """Random 2-D slices of 3-D label maps, along random axes, relabelled to contiguous indices.

    Args:
      key: PRNG key (which axis and slice).
      paths: NIfTI label maps, or ``(X, Y, Z)`` integer label arrays (e.g. a map with extra tissue classes made
        in memory).
      per_volume: slices per volume.
      size: side of the square slices (centred crops; volumes smaller than that are padded with 0).
      zoom: nearest-neighbour upsampling factor of each volume (one int for all, or one per volume): a 3 mm map
        zoomed by 3 has the 1 mm voxels of a 1 mm one, so that ``max_shrink`` spans the same range in mm.

    Returns:
      ``(len(paths) per_volume, size, size)`` int32 host array of label indices.
    """
    import nibabel as nib

    zooms = [int(zoom)] * len(paths) if isinstance(zoom, (int, np.integer)) else [int(z) for z in zoom]
    if len(zooms) != len(paths) or any(z < 1 for z in zooms):
        raise ValueError(f"zoom: expected a positive int or one per volume ({len(paths)}), got {zoom!r}")
    out = []
    values: set[int] = set()
    vols = []
    for p, z in zip(paths, zooms):
        src = p if isinstance(p, np.ndarray) else np.asarray(nib.load(os.fspath(p)).dataobj)
        vol = np.rint(src).astype(np.int32)
        if vol.ndim != 3:
            raise ValueError(f"paths: expected 3-D label maps, got shape {vol.shape}")
        if z > 1:
            vol = vol.repeat(z, 0).repeat(z, 1).repeat(z, 2)
        values |= set(np.unique(vol).tolist())
        vols.append(vol)
    for vi, vol in enumerate(vols):
        k = jax.random.fold_in(key, vi)
        axes = np.asarray(jax.random.randint(jax.random.fold_in(k, 0), (per_volume,), 0, 3))
        pos = np.asarray(jax.random.uniform(jax.random.fold_in(k, 1), (per_volume,), minval=0.25, maxval=0.75))
        for ax, q in zip(axes, pos):
            sl = np.take(vol, int(q * vol.shape[ax]), axis=int(ax))
            canvas = np.zeros((size, size), np.int32)
            h, w = min(size, sl.shape[0]), min(size, sl.shape[1])
            y0, x0 = (sl.shape[0] - h) // 2, (sl.shape[1] - w) // 2
            canvas[:h, :w] = sl[y0 : y0 + h, x0 : x0 + w]
            out.append(canvas)
    stack = np.stack(out)
    table = np.asarray(sorted(values), np.int32)
    return np.searchsorted(table, stack).astype(np.int32)


def train_feature_net(
    key: jax.Array,
    slices: np.ndarray,
    *,
    settings: FeatureTraining = FeatureTraining(),
    width: int = 16,
    dilations: Sequence[int] = (1, 1, 2, 4, 8, 2),
    log: Callable[[int, float], None] | None = None,
) -> tuple[FeatureNet, np.ndarray]:
    """Train a :class:`FeatureNet` to output the label descriptor of any synthesised contrast.

    Loss per step: ``mean (f(A) - D)^2 + mean (f(B) - D)^2`` over a batch, with ``A``, ``B`` two images
    synthesised from one label crop with independent random contrasts (:func:`feature_pair_batch`) and ``D``
    its :func:`label_descriptor`; Adam with a cosine-decayed learning rate.

    Args:
      key: PRNG key (initial weights and every batch).
      slices: ``(N, S, S)`` label-index slices (:func:`load_label_slices`).
      settings: :class:`FeatureTraining`.
      width: hidden channels of the network.
      dilations: dilations of its convolutions.
      log: called as ``log(step, loss)`` every 50 steps and at the end.

    Returns:
      ``(net, losses)``: the trained network and the ``(steps,)`` loss history.
    """
    slices = np.asarray(slices)
    if slices.ndim != 3 or slices.shape[1] < settings.crop * settings.max_shrink:
        raise ValueError(
            f"slices: expected (N, S, S) with S >= crop * max_shrink = {settings.crop * settings.max_shrink}, "
            f"got {slices.shape}"
        )
    if int(settings.steps) < 1:
        raise ValueError(f"settings.steps: expected a positive int, got {settings.steps!r}")
    k_init, k_data = jax.random.split(key)
    net = FeatureNet(
        width=width,
        dilations=dilations,
        out_channels=4 * len(settings.dilations),
        normalize=settings.normalize,
        padding=settings.padding,
        rngs=nnx.Rngs(params=k_init),
    )
    sched = optax.cosine_decay_schedule(settings.learning_rate, int(settings.steps), alpha=0.05)
    opt = nnx.Optimizer(net, optax.adam(sched), wrt=nnx.Param)

    @nnx.jit
    def step(net, opt, ia, ib, tgt):
        def loss_fn(net):
            x = net(jnp.concatenate([ia, ib]))
            return jnp.mean((x - jnp.concatenate([tgt, tgt])) ** 2)

        loss, grads = nnx.value_and_grad(loss_fn)(net)
        opt.update(net, grads)
        return loss

    losses = np.zeros(int(settings.steps), np.float32)
    for i in range(int(settings.steps)):
        ia, ib, tgt = feature_pair_batch(jax.random.fold_in(k_data, i), slices, settings)
        losses[i] = float(step(net, opt, ia, ib, tgt))
        if log is not None and (i % 50 == 0 or i == settings.steps - 1):
            log(i, float(losses[max(0, i - 49) : i + 1].mean()))
    return net, losses


# -- shipped models ----------------------------------------------------------------------------------------------
def save_feature_net(net: FeatureNet, dest: str | os.PathLike, *, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``net`` as a model folder (``model.json`` + ``params.npz``), atomically.

    The folder has :func:`jaxreg.learn.train.export_model`'s layout (and is written through it), so
    :func:`load_feature_net` and the shipped-model look-up (:func:`jaxreg.learn.available_models`) read it.

    Args:
      net: the trained network.
      dest: the folder (absent, empty, or an earlier model folder, which is replaced).
      metadata: JSON-serialisable training metadata (command, data, loss).

    Returns:
      ``dest`` as a Path.
    """
    from jaxreg.learn.train import _flat_params, export_model

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}.", suffix=".src") as tmp:
        flat = _flat_params(nnx.state(net, nnx.Param))
        np.savez_compressed(Path(tmp) / "params.npz", **flat)
        info = {"config": net.config, "metadata": dict(metadata or {}), "export": {}}
        (Path(tmp) / "model.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        return export_model(tmp, dest, build=lambda c: FeatureNet.from_config(c))


def load_feature_net(model: str | os.PathLike) -> tuple[FeatureNet, dict[str, Any]]:
    """A :class:`FeatureNet` from a model folder or a shipped model's name (e.g. ``"labelmind"``).

    Raises:
      FileNotFoundError: ``model`` is neither a folder nor a shipped model's name.
      ValueError: the folder holds another kind of model.
    """
    from jaxreg.learn.train import load_model, resolve_model

    folder = resolve_model(model)
    info_path = folder / "model.json"
    config = json.loads(info_path.read_text(encoding="utf-8")).get("config") if info_path.is_file() else None
    if not isinstance(config, dict) or config.get("kind") != _KIND:
        raise ValueError(f"model {os.fspath(model)!r}: not a feature network (model.json config kind != 'features')")
    return load_model(folder, build=lambda c: FeatureNet.from_config(c))
