"""Flax NNX networks for learned (amortised) registration.

A :class:`RegistrationNet` maps a batch of image pairs to a :class:`Prediction` in network units, and
:meth:`RegistrationNet.to_transform` turns one unbatched prediction into an ordinary jaxreg transform in world
millimetres, so that everything downstream (``warp``, losses, regularisers, evaluation, I/O) is the same as for
classical registration. The network never sees a :class:`~jaxreg.core.grid.Grid`: it works on arrays, and the
grid the inputs were sampled on is only needed to read its output in world coordinates.

Layout: inputs are batched and channel-last, ``(B, *spatial, C)`` with ``spatial`` of length ``ndim`` (2 or 3);
fields are ``(B, *field_spatial, ndim)`` with components in array-axis order. Pull semantics throughout: the
predicted transform maps *fixed* points to *moving* points, ``warped(x) = moving(T(x))``.

Network units (private to this module and its :class:`Prediction`):

* **fields** are in index units (voxels) of the *field grid*, the input grid downsampled by ``field_factor``
  (:meth:`Grid.downsample`, which keeps the outer voxel edges: field voxel ``j`` covers input voxels
  ``f j .. f j + f - 1``, exactly the cells a stride-``f`` pooling pyramid averages over).
* **affine matrices** act on normalised index coordinates ``p = (i - c) / h`` with ``c = h = (n - 1) / 2`` per
  axis (``p = -1`` and ``+1`` at the centres of the first and last voxels), as ``p_moving = A p_fixed``
  (homogeneous, ``(ndim + 1, ndim + 1)``).

Architectures:

* :class:`UNet`: the VoxelMorph U-Net (Balakrishnan et al., IEEE TMI 2019; Dalca et al., MICCAI 2018).
* ``transform="affine"``: a spatial-transformer localisation network (Jaderberg et al., NeurIPS 2015).
* ``"displacement"`` / ``"velocity"``: the U-Net and a flow head; a velocity is a stationary velocity field
  integrated by scaling and squaring in :class:`~jaxreg.transforms.VelocityField` (Dalca et al. 2018).
* ``"affine+displacement"`` / ``"affine+velocity"``: both in one model, the U-Net seeing the fixed image and the
  moving image already warped (differentiably) by the predicted affine; the transform is ``A o phi``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxreg.core.grid import Grid, Image
from jaxreg.transforms import (
    Affine,
    DisplacementField,
    Transform,
    VelocityField,
    compose,
    from_voxel_displacement,
)
from jaxreg.warp import sample_points

__all__ = ["TRANSFORM_KINDS", "Prediction", "RegistrationNet", "UNet"]

TRANSFORM_KINDS = ("displacement", "velocity", "affine", "affine+displacement", "affine+velocity")
"""The values of ``RegistrationNet(transform=...)``."""

_NEG_SLOPE = 0.2  # LeakyReLU slope of VoxelMorph


def _act(x: jax.Array) -> jax.Array:
    return jax.nn.leaky_relu(x, negative_slope=_NEG_SLOPE)


# -- argument checks ------------------------------------------------------------------------------------------
def _check_ndim(ndim: Any) -> int:
    if isinstance(ndim, bool) or not isinstance(ndim, (int, np.integer)) or int(ndim) not in (2, 3):
        raise ValueError(f"ndim: expected 2 or 3 spatial dimensions, got {ndim!r}")
    return int(ndim)


def _check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    return int(value)


def _check_widths(widths: Any, name: str, *, min_len: int = 1) -> tuple[int, ...]:
    if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence):
        raise TypeError(f"{name}: expected a sequence of positive ints (channel widths), got {widths!r}")
    out = tuple(widths)
    if len(out) < min_len or any(
        isinstance(w, bool) or not isinstance(w, (int, np.integer)) or w < 1 for w in out
    ):
        raise ValueError(f"{name}: expected at least {min_len} positive int widths, got {widths!r}")
    return tuple(int(w) for w in out)


def _check_batch(x: Any, name: str, ndim: int, channels: int) -> jax.Array:
    x = jnp.asarray(x)
    if x.ndim != ndim + 2 or x.shape[-1] != channels:
        want = "(B, " + ", ".join(["n"] * ndim) + f", {channels})"
        raise ValueError(
            f"{name}: expected a batched channel-last {ndim}-D image {want}, got {tuple(x.shape)}"
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    return x


def _check_divisible(shape: tuple[int, ...], multiple: int, name: str, why: str) -> None:
    if any(s % multiple for s in shape):
        raise ValueError(
            f"{name}: spatial shape {shape} must be divisible by {multiple} ({why}); pad or crop the images"
        )


# -- normalised index coordinates ------------------------------------------------------------------------------
def _normalizer(shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Centre ``c`` and half-width ``h`` (both ``(n - 1) / 2``) per axis, float64: ``p = (i - c) / h``."""
    c = (np.asarray(shape, dtype=np.float64) - 1.0) / 2.0
    return c, c.copy()


def _normalized_to_index_matrix(shape: Sequence[int]) -> np.ndarray:
    """``S`` with ``[i, 1] = S [p, 1]``: ``i = h p + c``, ``(ndim + 1, ndim + 1)`` float64."""
    c, h = _normalizer(shape)
    n = len(c)
    s = np.eye(n + 1)
    s[:n, :n] = np.diag(h)
    s[:n, n] = c
    return s


def _normalized_coords(shape: Sequence[int], dtype: Any) -> jax.Array:
    """``p`` of every voxel centre, ``(*shape, ndim)`` in ``[-1, 1]``."""
    axes = [jnp.linspace(-1.0, 1.0, s, dtype=dtype) for s in shape]
    return jnp.stack(jnp.meshgrid(*axes, indexing="ij"), axis=-1)


def _affine_warp(moving: jax.Array, affine: jax.Array) -> jax.Array:
    """Pull ``moving`` through a normalised-coordinate affine, differentiably (linear, zero outside).

    The normalised matrix is re-expressed as an index-to-index map ``S A S^-1`` (``S``: normalised -> index) and
    the image is sampled by the one pull sampler, :func:`jaxreg.warp.sample_points`, on the index grid of the
    array (identity voxel-to-world matrix, so world points are voxel indices).

    Args:
      moving: ``(*spatial, C)`` one image.
      affine: ``(ndim + 1, ndim + 1)`` normalised-coordinate matrix, fixed -> moving.

    Returns:
      ``(*spatial, C)``: ``moving`` sampled at ``S A S^-1 i`` for every voxel index ``i``; the same as
      :func:`jaxreg.warp` through the :meth:`RegistrationNet.to_transform` affine.
    """
    shape = moving.shape[:-1]
    n = len(shape)
    dt = moving.dtype
    index_grid = Grid(shape)  # identity voxel-to-world matrix: world mm == voxel index
    s = _normalized_to_index_matrix(shape)
    m = jnp.asarray(s, dt) @ affine.astype(dt) @ jnp.asarray(np.linalg.inv(s), dt)
    pts = index_grid.index_coords(dt) @ m[:n, :n].T + m[:n, n]
    return sample_points(Image(moving, index_grid), pts, order=1, mode="constant", cval=0.0)


# -- modules --------------------------------------------------------------------------------------------------
def _conv(cin: int, cout: int, ndim: int, rngs: nnx.Rngs, *, strides: int = 1, **kw: Any) -> nnx.Conv:
    return nnx.Conv(cin, cout, (3,) * ndim, strides=(strides,) * ndim, padding="SAME", rngs=rngs, **kw)


class UNet(nnx.Module):
    """The VoxelMorph U-Net: a convolutional encoder-decoder with skip connections, 2D or 3D.

    With ``L = len(encoder)`` levels, ``k = skip_levels`` and ``LeakyReLU(0.2)`` after every convolution
    (``3^ndim`` kernels, "same" padding):

    * encoder level ``l = 0 .. L-1``: conv to ``encoder[l]`` channels at resolution ``1/2^l``, kept as the skip
      ``s_l``, then 2x max-pooling (VoxelMorph's downsampling);
    * decoder level ``l = 0 .. L-1``: conv to ``decoder[l]`` channels at the current resolution, then (for the
      first ``L - k`` levels) 2x nearest-neighbour upsampling and concatenation of the skip ``s_{L-1-l}``; the
      last ``k`` levels skip the upsampling, so the output stays at ``1/2^k`` of the input resolution (``k = 1``
      is VoxelMorph's ``half_res``);
    * ``decoder[L:]``: further convs at the output resolution (VoxelMorph's 32-16-16).

    The defaults are VoxelMorph's ``[[16, 32, 32, 32], [32, 32, 32, 32, 32, 16, 16]]``.

    Attributes:
      ndim: number of spatial dimensions (2 or 3).
      in_channels: input channels.
      encoder: encoder widths.
      decoder: decoder widths (``len(encoder)`` levels, then the final convs).
      skip_levels: ``k``.
      out_channels: ``decoder[-1]``.
    """

    def __init__(
        self,
        ndim: int,
        in_channels: int,
        *,
        encoder: Sequence[int] = (16, 32, 32, 32),
        decoder: Sequence[int] = (32, 32, 32, 32, 32, 16, 16),
        skip_levels: int = 0,
        rngs: nnx.Rngs,
    ):
        """Build the U-Net.

        Args:
          ndim: 2 or 3.
          in_channels: channels of the input (e.g. 2 for a moving/fixed pair of single-channel images).
          encoder: at least one positive width; input sizes must be divisible by ``2^len(encoder)``.
          decoder: at least ``len(encoder) + 1`` positive widths.
          skip_levels: ``0 <= k <= len(encoder)``; the output is at ``1/2^k`` of the input resolution.
          rngs: Flax NNX random streams for the initial weights (``params``).
        """
        self.ndim = _check_ndim(ndim)
        self.in_channels = _check_positive_int(in_channels, "in_channels")
        self.encoder = _check_widths(encoder, "encoder")
        levels = len(self.encoder)
        self.decoder = _check_widths(decoder, "decoder", min_len=levels + 1)
        if isinstance(skip_levels, bool) or not isinstance(skip_levels, (int, np.integer)):
            raise TypeError(f"skip_levels: expected an int, got {skip_levels!r}")
        if not 0 <= skip_levels <= levels:
            raise ValueError(
                f"skip_levels: expected 0 <= skip_levels <= len(encoder) = {levels}, got {skip_levels}"
            )
        self.skip_levels = int(skip_levels)
        n = self.ndim
        enc, ch = [], self.in_channels
        for w in self.encoder:
            enc.append(_conv(ch, w, n, rngs))
            ch = w
        dec = []
        for lev in range(levels):
            w = self.decoder[lev]
            dec.append(_conv(ch, w, n, rngs))
            ch = w + (self.encoder[levels - 1 - lev] if lev < levels - self.skip_levels else 0)
        extra = []
        for w in self.decoder[levels:]:
            extra.append(_conv(ch, w, n, rngs))
            ch = w
        self.enc = nnx.List(enc)
        self.dec = nnx.List(dec)
        self.extra = nnx.List(extra)
        self.out_channels = ch

    @property
    def multiple(self) -> int:
        """Input sizes must be divisible by this, ``2^len(encoder)``."""
        return 2 ** len(self.encoder)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Features of a batch.

        Args:
          x: ``(B, *spatial, in_channels)``, every spatial size divisible by :attr:`multiple`.

        Returns:
          ``(B, *(spatial / 2^skip_levels), decoder[-1])`` features.
        """
        x = _check_batch(x, "x", self.ndim, self.in_channels)
        _check_divisible(
            x.shape[1:-1], self.multiple, "x", f"2^len(encoder) for {len(self.encoder)} poolings"
        )
        n = self.ndim
        levels = len(self.encoder)
        window = (2,) * n
        skips = []
        for conv in self.enc:
            x = _act(conv(x))
            skips.append(x)
            x = nnx.max_pool(x, window, strides=window, padding="VALID")
        for lev, conv in enumerate(self.dec):
            x = _act(conv(x))
            if lev < levels - self.skip_levels:
                for ax in range(1, n + 1):
                    x = jnp.repeat(x, 2, axis=ax)
                x = jnp.concatenate([x, skips[levels - 1 - lev]], axis=-1)
        for conv in self.extra:
            x = _act(conv(x))
        return x


class _AffineHead(nnx.Module):
    """Spatial-transformer localisation network (Jaderberg et al. 2015) in normalised index coordinates.

    Input: the pair concatenated with the ``ndim`` normalised coordinate channels ``p`` (CoordConv, which makes
    positions and hence translations visible to the convolutions). Each stage is a stride-2 ``3^ndim`` conv with
    LeakyReLU(0.2); then global average pooling, a dense layer with LeakyReLU and a dense regression of the
    ``ndim (ndim + 1)`` entries of ``A - I`` (top rows), zero-initialised so that the initial ``A`` is exactly the
    identity.
    """

    def __init__(self, ndim: int, in_channels: int, widths: tuple[int, ...], rngs: nnx.Rngs):
        self.ndim = ndim
        convs, ch = [], in_channels + ndim
        for w in widths:
            convs.append(_conv(ch, w, ndim, rngs, strides=2))
            ch = w
        self.convs = nnx.List(convs)
        self.hidden = nnx.Linear(ch, ch, rngs=rngs)
        self.out = nnx.Linear(
            ch,
            ndim * (ndim + 1),
            kernel_init=nnx.initializers.zeros_init(),
            bias_init=nnx.initializers.zeros_init(),
            rngs=rngs,
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        n = self.ndim
        coords = jnp.broadcast_to(_normalized_coords(x.shape[1:-1], x.dtype), (*x.shape[:-1], n))
        x = jnp.concatenate([x, coords], axis=-1)
        for conv in self.convs:
            x = _act(conv(x))
        x = jnp.mean(x, axis=tuple(range(1, n + 1)))
        x = _act(self.hidden(x))
        delta = self.out(x).reshape(x.shape[0], n, n + 1)
        top = jnp.eye(n, n + 1, dtype=delta.dtype) + delta
        bottom = jnp.broadcast_to(jnp.eye(n + 1, dtype=delta.dtype)[n], (x.shape[0], 1, n + 1))
        return jnp.concatenate([top, bottom], axis=1)


class Prediction(NamedTuple):
    """Output of :class:`RegistrationNet`, in network units (see the module docstring); a pytree.

    Batched from the network (leading ``B`` axis); :meth:`RegistrationNet.to_transform` takes one unbatched
    prediction (use ``jax.vmap`` over the batch).

    Attributes:
      affine: ``(B, ndim + 1, ndim + 1)`` homogeneous matrix acting on normalised index coordinates
        ``p = (i - c) / h``, ``c = h = (n - 1) / 2`` per axis, mapping fixed to moving (pull); ``None`` for
        purely deformable models.
      field: ``(B, *(spatial / field_factor), ndim)`` displacement or stationary velocity in index units
        (voxels) of the field grid, components in array-axis order; ``None`` for the purely affine model.
    """

    affine: jax.Array | None
    field: jax.Array | None


class RegistrationNet(nnx.Module):
    """Learned pairwise registration: ``(fixed, moving) -> Prediction -> jaxreg transform``.

    ``transform`` selects the model:

    * ``"displacement"``: U-Net on ``concat(moving, fixed)`` and a flow head, ``T(x) = x + u(x)``.
    * ``"velocity"``: the same, read as a stationary velocity ``v``; ``T = exp(v)`` by scaling and squaring
      with ``steps`` squarings (diffeomorphic, VoxelMorph-diff).
    * ``"affine"``: a spatial-transformer localisation network regressing ``A``; exactly the identity at
      initialisation.
    * ``"affine+displacement"``, ``"affine+velocity"``: the affine network, then the U-Net on the moving image
      warped by ``A`` (differentiable, linear interpolation, zero outside) and the fixed image;
      ``T = A o phi``, i.e. ``T(x) = A(phi(x))``.

    The flow head is a ``3^ndim`` conv to ``ndim`` channels with ``N(0, 1e-5^2)`` weights and zero bias
    (VoxelMorph), so the initial field is about zero. With ``field_factor = f = 2^k`` the U-Net stops ``k``
    upsamplings early (:class:`UNet` ``skip_levels``) and the field lives on ``grid.downsample(f)``; jaxreg's
    dense transforms interpolate it linearly at full-resolution points (the upsampling).

    Attributes:
      ndim, transform, in_channels, encoder, decoder, field_factor, steps, affine_encoder: the configuration.
      unet: the :class:`UNet` (``None`` for ``"affine"``).
      flow: the flow head (``None`` for ``"affine"``).
      affine_net: the localisation network (``None`` for purely deformable models).
    """

    def __init__(
        self,
        ndim: int,
        *,
        transform: str = "velocity",
        in_channels: int = 1,
        encoder: Sequence[int] = (16, 32, 32, 32),
        decoder: Sequence[int] = (32, 32, 32, 32, 32, 16, 16),
        field_factor: int = 1,
        steps: int = 7,
        affine_encoder: Sequence[int] = (16, 32, 32, 32),
        rngs: nnx.Rngs,
    ):
        """Build the model.

        Args:
          ndim: 2 or 3 spatial dimensions.
          transform: one of :data:`TRANSFORM_KINDS`.
          in_channels: channels ``C`` of each of the fixed and moving images.
          encoder: U-Net encoder widths (deformable models); inputs must be divisible by ``2^len(encoder)``.
          decoder: U-Net decoder widths, at least ``len(encoder) + 1``.
          field_factor: power of two ``f <= 2^len(encoder)``; the field is predicted at ``1/f`` of the input
            resolution.
          steps: scaling-and-squaring steps of velocity models (``>= 0``).
          affine_encoder: widths of the stride-2 conv stages of the affine network (affine models).
          rngs: Flax NNX random streams for the initial weights.
        """
        self.ndim = _check_ndim(ndim)
        if transform not in TRANSFORM_KINDS:
            raise ValueError(f"transform: expected one of {TRANSFORM_KINDS}, got {transform!r}")
        self.transform = str(transform)
        self.in_channels = _check_positive_int(in_channels, "in_channels")
        self.encoder = _check_widths(encoder, "encoder")
        self.decoder = _check_widths(decoder, "decoder", min_len=len(self.encoder) + 1)
        f = _check_positive_int(field_factor, "field_factor")
        k = round(math.log2(f))
        if 2**k != f or k > len(self.encoder):
            raise ValueError(
                f"field_factor: expected a power of two at most 2^len(encoder) = {2 ** len(self.encoder)}, got {f}"
            )
        self.field_factor = f
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
            raise ValueError(
                f"steps: expected a non-negative int (scaling-and-squaring steps), got {steps!r}"
            )
        self.steps = int(steps)
        self.affine_encoder = _check_widths(affine_encoder, "affine_encoder")

        n, c = self.ndim, self.in_channels
        self.affine_net = _AffineHead(n, 2 * c, self.affine_encoder, rngs) if self.has_affine else None
        if self.has_field:
            self.unet = UNet(n, 2 * c, encoder=self.encoder, decoder=self.decoder, skip_levels=k, rngs=rngs)
            self.flow = _conv(
                self.unet.out_channels,
                n,
                n,
                rngs,
                kernel_init=nnx.initializers.normal(stddev=1e-5),
                bias_init=nnx.initializers.zeros_init(),
            )
        else:
            self.unet = None
            self.flow = None

    # -- configuration --------------------------------------------------------------------------------------
    @property
    def has_affine(self) -> bool:
        """Whether the model predicts an affine part."""
        return self.transform.startswith("affine")

    @property
    def has_field(self) -> bool:
        """Whether the model predicts a dense field."""
        return self.transform != "affine"

    @property
    def multiple(self) -> int:
        """Input spatial sizes must be divisible by this (``2^len(encoder)`` with a U-Net, else 1)."""
        return 2 ** len(self.encoder) if self.has_field else 1

    @property
    def config(self) -> dict[str, Any]:
        """The constructor arguments (without ``rngs``) as a JSON-serialisable dict; see :meth:`from_config`."""
        return {
            "ndim": self.ndim,
            "transform": self.transform,
            "in_channels": self.in_channels,
            "encoder": list(self.encoder),
            "decoder": list(self.decoder),
            "field_factor": self.field_factor,
            "steps": self.steps,
            "affine_encoder": list(self.affine_encoder),
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, rngs: nnx.Rngs) -> RegistrationNet:
        """Rebuild the architecture of :attr:`config` (weights freshly initialised from ``rngs``).

        Args:
          config: a dict as returned by :attr:`config` (e.g. read back from JSON).
          rngs: random streams; the same seed gives the same initial weights.

        Returns:
          A new :class:`RegistrationNet`.
        """
        if not isinstance(config, Mapping):
            raise TypeError(
                f"config: expected a mapping of constructor arguments, got {type(config).__name__}"
            )
        known = {
            "ndim",
            "transform",
            "in_channels",
            "encoder",
            "decoder",
            "field_factor",
            "steps",
            "affine_encoder",
        }
        unknown = set(config) - known
        if unknown or "ndim" not in config:
            raise ValueError(
                f"config: expected keys {sorted(known)} (ndim required), got unknown {sorted(unknown)}"
            )
        kw = dict(config)
        for name in ("encoder", "decoder", "affine_encoder"):
            if name in kw:
                kw[name] = tuple(kw[name])
        ndim = kw.pop("ndim")
        return cls(ndim, rngs=rngs, **kw)

    # -- forward --------------------------------------------------------------------------------------------
    def _inputs(self, fixed: jax.Array, moving: jax.Array) -> tuple[jax.Array, jax.Array]:
        fixed = _check_batch(fixed, "fixed", self.ndim, self.in_channels)
        moving = _check_batch(moving, "moving", self.ndim, self.in_channels)
        if fixed.shape != moving.shape:
            raise ValueError(
                f"fixed/moving: expected equal shapes (one common grid), got {tuple(fixed.shape)} and "
                f"{tuple(moving.shape)}"
            )
        spatial = fixed.shape[1:-1]
        if any(s < 2 for s in spatial):
            raise ValueError(f"fixed/moving: expected spatial sizes >= 2, got {spatial}")
        _check_divisible(
            spatial, self.multiple, "fixed/moving", f"2^len(encoder) for {len(self.encoder)} poolings"
        )
        dt = jnp.result_type(fixed.dtype, moving.dtype)
        return fixed.astype(dt), moving.astype(dt)

    def __call__(self, fixed: jax.Array, moving: jax.Array) -> Prediction:
        """Predict the transforms registering a batch of pairs.

        Args:
          fixed: ``(B, *spatial, in_channels)``.
          moving: ``(B, *spatial, in_channels)``, on the same grid as ``fixed`` (same shape).

        Returns:
          :class:`Prediction` with ``affine`` ``(B, ndim+1, ndim+1)`` and/or ``field``
          ``(B, *(spatial / field_factor), ndim)`` (network units, see the module docstring).
        """
        fixed, moving = self._inputs(fixed, moving)
        affine = None
        if self.affine_net is not None:
            affine = self.affine_net(jnp.concatenate([moving, fixed], axis=-1))
            if self.has_field:
                moving = jax.vmap(_affine_warp)(moving, affine)
        field = None
        if self.unet is not None:
            field = self.flow(self.unet(jnp.concatenate([moving, fixed], axis=-1)))
        return Prediction(affine=affine, field=field)

    def predict_affine(self, fixed: jax.Array, moving: jax.Array) -> jax.Array:
        """The affine part alone, ``(B, ndim + 1, ndim + 1)`` (normalised coordinates; affine models only).

        Args:
          fixed: as for :meth:`__call__`.
          moving: as for :meth:`__call__`.
        """
        if self.affine_net is None:
            raise ValueError(f"transform: the {self.transform!r} model predicts no affine")
        fixed, moving = self._inputs(fixed, moving)
        return self.affine_net(jnp.concatenate([moving, fixed], axis=-1))

    def predict_field(self, fixed: jax.Array, moving: jax.Array) -> jax.Array:
        """The deformable part alone on a pair already aligned by the affine part (the U-Net and flow head;
        for an ``"affine+..."`` model the affine network is skipped and ``moving`` is taken as warped by it).

        Args:
          fixed: as for :meth:`__call__`.
          moving: as for :meth:`__call__`.

        Returns:
          ``(B, *(spatial / field_factor), ndim)`` field (voxels of the field grid).
        """
        if self.unet is None:
            raise ValueError(f"transform: the {self.transform!r} model predicts no field")
        fixed, moving = self._inputs(fixed, moving)
        return self.flow(self.unet(jnp.concatenate([moving, fixed], axis=-1)))

    # -- world coordinates ----------------------------------------------------------------------------------
    def field_grid(self, grid: Grid) -> Grid:
        """The grid of the predicted field for inputs on ``grid``: ``grid.downsample(field_factor)``."""
        if not isinstance(grid, Grid):
            raise TypeError(f"grid: expected a jaxreg Grid, got {type(grid).__name__}")
        if grid.ndim != self.ndim:
            raise ValueError(f"grid: expected a {self.ndim}-D grid, got {grid.ndim}-D")
        _check_divisible(grid.shape, self.field_factor, "grid", f"field_factor = {self.field_factor}")
        return grid.downsample(self.field_factor)

    @property
    def field_kind(self) -> str | None:
        """``"velocity"``, ``"displacement"`` or ``None`` (the purely affine model)."""
        if not self.has_field:
            return None
        return "velocity" if self.transform.endswith("velocity") else "displacement"

    def affine_transform(self, affine: jax.Array, grid: Grid) -> Affine:
        """One unbatched normalised affine ``(ndim + 1, ndim + 1)`` as a world-mm :class:`Affine` about the grid's
        centre: ``G S A S^-1 G^-1`` (``G``: the grid's voxel-to-world matrix, ``S``: normalised -> index)."""
        n = self.ndim
        if affine is None or jnp.shape(affine) != (n + 1, n + 1):
            raise ValueError(
                f"prediction: expected an unbatched affine of shape {(n + 1, n + 1)} (use jax.vmap over the "
                f"batch), got {None if affine is None else tuple(jnp.shape(affine))}"
            )
        a = jnp.asarray(affine)
        dt = a.dtype if jnp.issubdtype(a.dtype, jnp.floating) else jnp.float32
        g = grid.affine @ _normalized_to_index_matrix(grid.shape)  # normalised -> world, float64
        world = jnp.asarray(g, dt) @ a.astype(dt) @ jnp.asarray(np.linalg.inv(g), dt)
        return Affine.from_homogeneous(world, center=jnp.asarray(grid.center, dt))

    def field_transform(self, field: jax.Array, grid: Grid) -> Transform:
        """One unbatched field (voxels of ``field_grid(grid)``) as a world-mm
        :class:`~jaxreg.transforms.VelocityField` (``steps``) or :class:`~jaxreg.transforms.DisplacementField`."""
        fgrid = self.field_grid(grid)
        want = (*fgrid.shape, self.ndim)
        if field is None or tuple(jnp.shape(field)) != want:
            raise ValueError(
                f"prediction: expected an unbatched field of shape {want} on {fgrid} for grid {grid} (use "
                f"jax.vmap over the batch), got {None if field is None else tuple(jnp.shape(field))}"
            )
        u_mm = from_voxel_displacement(jnp.asarray(field), fgrid)
        if self.field_kind == "velocity":
            return VelocityField(u_mm, fgrid, self.steps)
        return DisplacementField(u_mm, fgrid)

    def to_transform(self, prediction: Prediction, grid: Grid) -> Transform:
        """One unbatched prediction as a jaxreg transform in world mm (fixed -> moving, pull).

        Works under ``jax.vmap`` over the batch axis of a :class:`Prediction` (with the model closed over).

        * field ``u`` (voxels of the field grid ``F = grid.downsample(field_factor)``) -> ``A_F u`` mm on ``F``:
          :class:`~jaxreg.transforms.DisplacementField` or :class:`~jaxreg.transforms.VelocityField` (``steps``);
        * affine ``A`` (normalised coordinates) -> world ``G S A S^-1 G^-1`` with ``G`` the grid's voxel-to-world
          matrix and ``S`` the normalised-to-index matrix: :class:`~jaxreg.transforms.Affine` about the grid's
          centre;
        * both -> ``compose(affine, field)``, ``T(x) = A(phi(x))``.

        Args:
          prediction: a :class:`Prediction` without the batch axis: ``affine`` ``(ndim+1, ndim+1)``, ``field``
            ``(*(spatial / field_factor), ndim)``.
          grid: the common grid the network's inputs (fixed and moving) were sampled on; its shape is the
            input's spatial shape.

        Returns:
          The transform (``Affine``, ``DisplacementField``, ``VelocityField`` or a ``Composite``).
        """
        if not isinstance(prediction, Prediction):
            raise TypeError(f"prediction: expected a Prediction, got {type(prediction).__name__}")
        if not isinstance(grid, Grid):
            raise TypeError(f"grid: expected a jaxreg Grid, got {type(grid).__name__}")
        if grid.ndim != self.ndim:
            raise ValueError(f"grid: expected a {self.ndim}-D grid, got {grid.ndim}-D")
        parts: list[Transform] = []
        if self.has_affine:
            parts.append(self.affine_transform(prediction.affine, grid))
        if self.has_field:
            parts.append(self.field_transform(prediction.field, grid))
        return parts[0] if len(parts) == 1 else compose(*parts)
