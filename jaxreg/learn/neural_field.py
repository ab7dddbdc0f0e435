"""Per-pair neural fields: an implicit neural representation of the displacement, optimised per pair.

:class:`NeuralField` is a method of :func:`jaxreg.optimize.register` (same contract as
:class:`~jaxreg.optimize.Gradient` and :class:`~jaxreg.optimize.Greedy`): on each level it optimises a small
SIREN MLP ``u_theta: R^ndim -> R^ndim`` (Sitzmann et al., NeurIPS 2020) with optax Adam on random batches of
fixed-grid voxels, as in implicit neural registration (Wolterink et al., "Implicit neural representations for
deformable image registration", MIDL 2022):

* coordinates are world mm normalised to ``[-1, 1]`` over the level's fixed grid,
  ``h_0 = sin(omega_0 (W_0 x + b_0))``, ``h_k = sin(omega_0 (W_k h_{k-1} + b_k))``,
  ``u_theta(x) = s * (W_L h + b_L)`` with ``s`` the grid spacing (mm per voxel), hidden weights drawn from
  ``U(-sqrt(6/n)/omega_0, sqrt(6/n)/omega_0)`` so that ``omega_0 W_k`` has the paper's unit-variance
  activations, and the last layer initialised to zero (the identity to start);
* the level's transform is ``T(x) = x + u_0(x) + u_theta(x)``, ``u_0`` the incoming displacement (the previous
  level's, so levels refine coarse to fine), and the moving image is pulled at ``outer(T(x))``;
* the loss on a batch ``B`` of ``points`` random voxels (a fresh batch each iteration, drawn from the static
  ``seed``) is
  ``sim(F(B), M(outer(T(B)))) + w_J mean_B |1 - det(I + J_theta)| + w_D mean_B ||J_theta||_F^2``
  where ``J_theta = d u_theta / d x`` (mm/mm) comes from forward-mode autodiff of the MLP at each point: the
  Jacobian regulariser of Wolterink et al. and a diffusion (first-order) penalty;
* with ``patch = r > 0`` each batch point is the centre of a ``(2r + 1)^ndim`` patch of fixed-grid voxels
  (the MLP is evaluated at every patch voxel) and the similarity term is the mean over the patches of the
  similarity of each patch's intensities: ``"ncc"`` then is the local NCC of the greedy methods (LNCC, window
  ``2r + 1``), which follows local contrast instead of one global linear intensity relation;
* Adam's step follows a cosine decay over the level's iterations (``schedule="cosine"``, down to 5 %) or stays
  constant (``schedule="constant"``).

The similarity is evaluated on intensity vectors (a batch, or one patch), so it must be a *global* similarity of
the registry (``"ncc"``, ``"mse"``, ``"nmi"``, ``"mi"``); neighbourhood metrics (LNCC, MIND, NGF) need an image
(``patch`` is the local form).
After the level's iterations the MLP is evaluated on every voxel of the fixed grid (in chunks) and the stage's
transform is the :class:`~jaxreg.transforms.DisplacementField` ``u_0 + u_theta`` on that grid: the output of every
other deformable method (ITK-writable, composable, evaluated by the same metrics).

With ``output="velocity"`` the MLP is a stationary velocity ``v_theta`` (mm; a neural velocity field, as in
Han et al., "Diffeomorphic image registration with neural velocity field", WACV 2023) and each iteration works
on whole images instead of point batches:

* ``v_theta`` is evaluated on the velocity lattice ``G_v``: the level's fixed grid downsampled by
  ``max(stride, round(lattice / spacing))`` voxels per axis, i.e. a lattice of at least ``lattice`` mm and at
  least ``stride`` level voxels (the MLP's cost per iteration stays bounded on the fine levels; ``lattice = 0``
  and ``stride = 1``: the level grid itself);
* ``w = exp(v_theta)`` is computed on ``G_v`` by the library's one scaling-and-squaring kernel
  (:func:`~jaxreg.transforms.exp_voxel_field`, ``exp_steps`` squarings) and linearly interpolated onto the
  level grid;
* the level's transform is the composition ``T = (id + u_0) o exp(v_theta)``,
  ``T(x) = x + w(x) + u_0(x + w(x))`` with ``u_0`` linearly interpolated and its edge values repeated where
  ``x + w(x)`` leaves the grid (with the zero outside of a :class:`~jaxreg.transforms.DisplacementField` the
  border voxels fold), and the loss is ::

      sim(F, M o outer o T) + w_J mean_{G_v} |1 - det(I + grad w)| + w_D mean_{G_v} ||grad v_theta||_F^2
                            + w_F mean_level relu(0.01 - det(I + grad(T - id)))^2

  with the similarity of the whole level images (any similarity of the registry, local ones included: the
  greedy default's ``"lncc(window=5)"``), the Jacobian and diffusion terms by finite differences on ``G_v``
  (:func:`~jaxreg.regularizers.jacobian_determinant_field`, :func:`~jaxreg.regularizers.diffusion`) and the
  folding term (:func:`~jaxreg.regularizers.folding`) on the level's whole displacement, ``u_0`` included;
* with ``symmetric=True`` the similarity compares the images half way, as the greedy SyN-like method does:
  ``sim(F o exp(-v/2), M o outer o (id + u_0) o exp(v/2))`` (the fixed image pulled with edge values repeated;
  the fixed mask is not warped), while the stage's transform stays ``(id + u_0) o exp(v_theta)``; two more
  scaling-and-squaring runs on ``G_v`` and one more pull of the fixed image per iteration;
* the flow of a smooth velocity does not fold, so no Jacobian term is needed to keep ``det J > 0``; the
  folding term acts on the few voxels where the interpolated compositions fold (it reduces them; it does not
  guarantee none). ``points``, ``patch`` and ``chunk`` are unused.

On brain3d (``benchmarks/neural_field.py``) the velocity output with ``hidden=(128, 128, 128)``,
``similarity="lncc(window=5)"``, ``learning_rate=1e-3``, ``jacobian_weight=0``, ``diffusion_weight=0.05``,
``folding_weight=10``, ``lattice=2``, ``stride=2`` (lattices of 8, 4 and 2 mm) and levels 4:100, 2:100, 1:30,
the last level a second stage with ``learning_rate=3e-3``, reaches a mean Dice of 0.781 with no folded voxel
(one stage at 1e-3 with ``lattice=4``: 0.779), against the greedy default's 0.785 and the point batches' 0.712.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxreg.core.grid import Grid, Image
from jaxreg.core.pytree import register_fields
from jaxreg.core.sampling import map_coordinates
from jaxreg.optimize.models import Field
from jaxreg.optimize.objective import as_similarity
from jaxreg.regularizers import diffusion, folding, jacobian_determinant_field
from jaxreg.transforms.dense import (
    DisplacementField,
    exp_voxel_field,
    from_voxel_displacement,
    to_voxel_displacement,
)
from jaxreg.warp import sample_points

__all__ = ["NeuralField", "siren_init", "siren_apply"]


def siren_init(key: jax.Array, ndim: int, hidden: tuple[int, ...], omega0: float) -> list[dict[str, jax.Array]]:
    """SIREN weights (Sitzmann et al. 2020): first layer ``U(-1/n, 1/n)``, hidden ``U(-sqrt(6/n)/omega0, ...)``
    (``n`` the fan-in), the output layer zero (``u_theta = 0`` at the start).

    Args:
      key: PRNG key.
      ndim: 2 or 3 (input and output width).
      hidden: widths of the sine layers.
      omega0: frequency of the first layer.

    Returns:
      ``[{"w": (n_in, n_out), "b": (n_out,)}, ...]``, ``len(hidden) + 1`` layers.
    """
    widths = (ndim, *hidden)
    keys = jax.random.split(key, 2 * len(hidden))
    layers = []
    for k, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        bound = 1.0 / a if k == 0 else math.sqrt(6.0 / a) / omega0
        w = jax.random.uniform(keys[2 * k], (a, b), jnp.float32, -bound, bound)
        bb = jax.random.uniform(keys[2 * k + 1], (b,), jnp.float32, -1.0 / math.sqrt(a), 1.0 / math.sqrt(a))
        if k > 0:
            bb = bb / omega0  # the phase omega_0 b of a hidden unit stays within +-1/sqrt(n) rad
        layers.append({"w": w, "b": bb})
    layers.append({"w": jnp.zeros((widths[-1], ndim), jnp.float32), "b": jnp.zeros((ndim,), jnp.float32)})
    return layers


def siren_apply(layers: list[dict[str, jax.Array]], x: jax.Array, omega0: float) -> jax.Array:
    """The SIREN of :func:`siren_init` at points ``x`` ``(..., ndim)`` (normalised coordinates); ``(..., ndim)``.

    Every sine layer is ``sin(omega_0 (W h + b))`` (Sitzmann et al. 2020, Sec. 3.2): with the hidden weights of
    :func:`siren_init` the pre-activations ``omega_0 W h`` are of unit scale. (Without ``omega_0`` on the hidden
    layers they are ``omega_0`` times smaller, the sines act as linear maps and the network can only represent
    the first layer's frequencies.)
    """
    h = jnp.sin(omega0 * (x @ layers[0]["w"] + layers[0]["b"]))
    for layer in layers[1:-1]:
        h = jnp.sin(omega0 * (h @ layer["w"] + layer["b"]))
    return h @ layers[-1]["w"] + layers[-1]["b"]


@dataclasses.dataclass(frozen=True, eq=False)
class NeuralField:
    """Per-pair implicit neural displacement field (see the module docstring) as a registration method.

    A pytree whose leaves are the two regulariser weights (traced: a sweep is a ``vmap``); everything else is
    static. Equality and hashing are by value, so equal settings reuse one compiled kernel.

    Attributes:
      hidden: widths of the SIREN's sine layers.
      omega0: first-layer frequency ``omega_0`` (higher: finer detail; 30 in the SIREN paper).
      similarity: global similarity of the batch intensities (registry spec or function).
      points: voxels (patch centres when ``patch > 0``) per random batch.
      patch: radius ``r`` (voxels of the level's fixed grid) of the patches whose similarities are averaged;
        0: one similarity of the whole batch.
      learning_rate: Adam's (initial) step size, on every level of the stage (a level with its own step size
        is a second ``NeuralField`` stage on that level: it continues the first stage's displacement field).
      schedule: ``"cosine"`` (decay to 5 % over the level) or ``"constant"``.
      jacobian_weight: ``w_J``, weight of ``mean |1 - det(I + J)|`` (traced).
      diffusion_weight: ``w_D``, weight of ``mean ||J||_F^2`` (traced).
      seed: seed of the weights and of the batches (no global RNG: same seed, same result).
      chunk: voxels per MLP evaluation when the field is written on the grid (memory bound).
      output: ``"displacement"`` (``u_theta`` on point batches) or ``"velocity"`` (``exp(v_theta)`` on whole
        images; see the module docstring).
      lattice: smallest spacing (mm) of the velocity lattice (velocity output only).
      stride: smallest step of the velocity lattice in voxels of the level grid: each level's fixed grid is
        downsampled by ``max(stride, round(lattice / spacing))`` per axis (velocity output only).
      exp_steps: scaling-and-squaring steps of ``exp(v_theta)`` (velocity output only).
      folding_weight: ``w_F``, weight of the folding penalty of the level's displacement on the level grid
        (velocity output only; traced).
      symmetric: velocity output only: compare the images half way (mid-space, SyN-like: ``F o exp(-v/2)``
        against ``M o outer o (id + u_0) o exp(v/2)``) instead of ``F`` against ``M o outer o T``; the
        stage's transform is ``(id + u_0) o exp(v)`` either way.
    """

    hidden: tuple[int, ...] = (64, 64, 64)
    omega0: float = 30.0
    similarity: Any = "ncc"
    points: int = 4096
    patch: int = 0
    learning_rate: float = 3e-4
    schedule: str = "cosine"
    jacobian_weight: Any = 0.1
    diffusion_weight: Any = 0.0
    seed: int = 0
    chunk: int = 65536
    output: str = "displacement"
    lattice: float = 0.0
    stride: int = 1
    exp_steps: int = 7
    folding_weight: Any = 0.0
    symmetric: bool = False

    def __post_init__(self) -> None:
        hidden = tuple(self.hidden) if isinstance(self.hidden, (list, tuple)) else self.hidden
        if not isinstance(hidden, tuple) or not hidden or not all(
            isinstance(h, (int, np.integer)) and not isinstance(h, bool) and h > 0 for h in hidden
        ):
            raise ValueError(f"hidden: expected a non-empty tuple of positive ints, got {self.hidden!r}")
        object.__setattr__(self, "hidden", tuple(int(h) for h in hidden))
        for name in ("omega0", "learning_rate"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name}: expected a positive finite number, got {v!r}")
        if self.output not in ("displacement", "velocity"):
            raise ValueError(f"output: expected 'displacement' or 'velocity', got {self.output!r}")
        lat = self.lattice
        ok = isinstance(lat, (int, float)) and not isinstance(lat, bool) and math.isfinite(lat) and lat >= 0
        if not ok:
            raise ValueError(f"lattice: expected a non-negative spacing in mm, got {self.lattice!r}")
        for name in ("points", "chunk", "stride"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name}: expected a positive int, got {v!r}")
        if isinstance(self.patch, bool) or not isinstance(self.patch, (int, np.integer)) or self.patch < 0:
            raise ValueError(f"patch: expected a non-negative int (voxels), got {self.patch!r}")
        if not isinstance(self.symmetric, (bool, np.bool_)):
            raise ValueError(f"symmetric: expected a bool, got {self.symmetric!r}")
        if self.symmetric and self.output != "velocity":
            raise ValueError("symmetric: the mid-space form needs output='velocity'")
        object.__setattr__(self, "symmetric", bool(self.symmetric))
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule: expected 'cosine' or 'constant', got {self.schedule!r}")
        st = self.exp_steps
        if not (isinstance(st, (int, np.integer)) and not isinstance(st, bool) and st >= 0):
            raise ValueError(f"exp_steps: expected a non-negative int, got {self.exp_steps!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)):
            raise ValueError(f"seed: expected an int, got {self.seed!r}")
        for name in ("jacobian_weight", "diffusion_weight", "folding_weight"):
            v = getattr(self, name)
            if isinstance(v, (int, float)) and not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name}: expected a non-negative finite weight, got {v!r}")
        as_similarity(self.similarity, "similarity")  # a clear error for an unknown spec, now

    # -- value semantics ---------------------------------------------------------------------------------------
    def _key(self) -> tuple:
        w = tuple(float(np.asarray(getattr(self, n))) for n in ("jacobian_weight", "diffusion_weight", "folding_weight"))
        sim = self.similarity if isinstance(self.similarity, (str, int, float, tuple)) else id(self.similarity)
        return (self.hidden, self.omega0, repr(sim), self.points, int(self.patch), self.learning_rate,
                self.schedule, w, self.seed, self.chunk, self.output, float(self.lattice), int(self.stride),
                int(self.exp_steps), self.symmetric)  # fmt: skip

    def __eq__(self, other: object) -> bool:
        return type(other) is NeuralField and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    # -- the method contract -----------------------------------------------------------------------------------
    def resolved(self, grid: Grid) -> NeuralField:
        """Nothing to resolve."""
        return self

    @property
    def default_model(self) -> Field:
        """:class:`~jaxreg.optimize.Field` ``"displacement"``: the stage's output is a displacement field."""
        return Field("displacement")

    def level_kernel(self, fixed_grid: Grid, moving_grid: Grid, iterations: int) -> Callable:
        """The pure per-level kernel: ``iterations`` Adam steps on the SIREN, then the field on the grid.

        ``losses[k]`` is the batch loss of iteration ``k``; the level runs all its iterations (``converged``
        is False).
        """
        cap = int(iterations)
        n = fixed_grid.ndim
        shape = tuple(fixed_grid.shape)
        sim = as_similarity(self.similarity, "similarity")
        omega0, k_points, chunk = float(self.omega0), int(self.points), int(self.chunk)
        lr = float(self.learning_rate)
        rate = optax.cosine_decay_schedule(lr, max(cap, 1), alpha=0.05) if self.schedule == "cosine" else lr
        optimizer = optax.adam(rate)
        r = int(self.patch)
        offsets = np.stack(np.meshgrid(*([np.arange(-r, r + 1)] * n), indexing="ij"), -1).reshape(-1, n)
        offsets = jnp.asarray(offsets, jnp.int32)  # (P, n) voxel offsets of a patch, P = (2r + 1)^n
        aff = jnp.asarray(fixed_grid.affine, jnp.float32)
        # normalised coordinates: the grid's bounding box (world mm) onto [-1, 1]^n
        centre = jnp.asarray(fixed_grid.center, jnp.float32)
        half_box = np.abs(fixed_grid.affine[:n, :n]) @ ((np.asarray(shape) - 1) / 2.0)
        half = jnp.asarray(np.maximum(half_box, 1e-6), jnp.float32)
        scale = jnp.asarray(np.asarray(fixed_grid.spacing, np.float64), jnp.float32)  # mm per output unit
        init = siren_init(jax.random.key(int(self.seed)), n, self.hidden, omega0)
        base_key = jax.random.fold_in(jax.random.key(int(self.seed)), 1)
        steps = int(self.exp_steps)
        # velocity lattice: the level grid downsampled by max(stride, round(lattice / spacing)) per axis
        factor = np.floor(float(self.lattice) / np.asarray(fixed_grid.spacing) + 0.5)
        factor = np.maximum(int(self.stride), factor).astype(int)
        vgrid = fixed_grid.downsample(tuple(int(f) for f in factor)) if np.any(factor > 1) else fixed_grid
        vpts = vgrid.world_coords(jnp.float32).reshape(-1, n)

        def u_theta(layers, x):  # world mm (..., n) -> displacement mm (..., n)
            return siren_apply(layers, (x - centre) / half, omega0) * scale

        def kernel(method, params, fixed, moving, fmask, mmask, outer):
            if mmask is not None:
                raise ValueError("moving_mask: the neural field weights the similarity by the fixed mask only")
            dtype = fixed.dtype if jnp.issubdtype(fixed.dtype, jnp.floating) else jnp.float32
            if not isinstance(params, DisplacementField):
                raise TypeError(f"model: the neural field continues a displacement field, got {type(params).__name__}")
            if params.grid != fixed_grid:
                params = params.on_grid(fixed_grid)
            u0 = params.displacement.astype(jnp.float32)
            moving_img = Image(moving, moving_grid)
            flat_f = fixed.reshape(-1)
            flat_u0 = u0.reshape(-1, n)
            flat_w = None if fmask is None else fmask.reshape(-1).astype(jnp.float32)
            size = int(np.prod(shape))
            wj, wd, wf = method.jacobian_weight, method.diffusion_weight, method.folding_weight

            def world(idx):  # integer voxel indices (..., n) -> world mm
                return idx.astype(jnp.float32) @ aff[:n, :n].T + aff[:n, n]

            hi = jnp.asarray(shape, jnp.int32) - 1 - r

            def loss(layers, key):
                # patch centres at least r voxels inside the grid (r = 0: any voxel)
                centres = jax.random.randint(key, (k_points, n), r, hi + 1)
                idx = centres[:, None, :] + offsets[None]  # (K, P, n)
                sel = jnp.ravel_multi_index(tuple(jnp.moveaxis(idx, -1, 0)), shape, mode="clip")  # (K, P)
                xc = world(centres)
                jac = jax.vmap(jax.jacfwd(lambda p: u_theta(layers, p)))(xc)  # (K, n, n) mm/mm
                x = world(idx)
                y = x + flat_u0[sel] + u_theta(layers, x)
                if outer is not None:
                    y = outer(y)
                m = sample_points(moving_img, y.reshape(-1, n), order=1, mode="constant", cval=0.0)
                m = m.reshape(sel.shape).astype(jnp.float32)
                f = flat_f[sel].astype(jnp.float32)
                w = None if flat_w is None else flat_w[sel]
                if r == 0:
                    val = jnp.asarray(sim(f[:, 0], m[:, 0], None if w is None else w[:, 0]), jnp.float32)
                else:
                    per = jax.vmap(lambda a, b, c: jnp.asarray(sim(a, b, c), jnp.float32))(
                        f, m, jnp.ones_like(f) if w is None else w
                    )
                    val = jnp.mean(per)
                det = jnp.linalg.det(jnp.eye(n, dtype=jnp.float32) + jac)
                val = val + wj * jnp.mean(jnp.abs(1.0 - det)) + wd * jnp.mean(jnp.sum(jac * jac, axis=(-2, -1)))
                return val

            if self.output == "velocity":
                x_level = fixed_grid.world_coords(jnp.float32)  # (*shape, n) mm
                fixed32 = fixed.astype(jnp.float32)
                fmask32 = None if fmask is None else fmask.astype(jnp.float32)

                def composed(w_level):  # x + w(x) + u_0(x + w(x)), u_0 edge-extended (not zero) off the grid
                    p = x_level + w_level
                    idx = fixed_grid.world_to_index(p)
                    return p + map_coordinates(u0, idx, order=1, mode="nearest")

                def flow(v, t):  # exp(t v) - id on the velocity grid (mm)
                    vox = to_voxel_displacement(t * v, vgrid)
                    return from_voxel_displacement(exp_voxel_field(vox, steps), vgrid)

                def stationary(layers):  # v on the velocity grid and w = exp(v) - id there, both mm
                    v = u_theta(layers, vpts).reshape(*vgrid.shape, n)
                    return v, flow(v, 1.0)

                def on_level(w):  # a displacement on the velocity grid, linearly onto the level grid
                    return DisplacementField(w, vgrid).on_grid(fixed_grid).displacement

                def loss(layers, key):
                    del key  # every voxel of the level, every iteration
                    v, w = stationary(layers)
                    y_inner = composed(on_level(w))  # (id + u_0) o exp(v_theta)
                    if self.symmetric:  # mid-space: F o exp(-v/2) against M o outer o (id + u_0) o exp(v/2)
                        y = composed(on_level(flow(v, 0.5)))
                        idx = fixed_grid.world_to_index(x_level + on_level(flow(v, -0.5)))
                        f_img = map_coordinates(fixed32, idx, order=1, mode="nearest")
                    else:
                        y, f_img = y_inner, fixed32
                    if outer is not None:
                        y = outer(y)
                    m = sample_points(moving_img, y, order=1, mode="constant", cval=0.0).astype(jnp.float32)
                    val = jnp.asarray(sim(f_img, m, fmask32), jnp.float32)
                    det = jacobian_determinant_field(w, grid=vgrid)
                    val = val + wj * jnp.mean(jnp.abs(1.0 - det)) + wd * diffusion(v, grid=vgrid)
                    # folds of the level's whole displacement (u_0 included) on the level grid
                    return val + wf * folding(y_inner - x_level, grid=fixed_grid, eps=0.01)

            def body(k, carry):
                layers, state, losses = carry
                val, grads = jax.value_and_grad(loss)(layers, jax.random.fold_in(base_key, k))
                updates, state = optimizer.update(grads, state, layers)
                return optax.apply_updates(layers, updates), state, losses.at[k].set(val)

            layers, _, losses = jax.lax.fori_loop(
                0, cap, body, (init, optimizer.init(init), jnp.full((cap,), jnp.nan, jnp.float32))
            )
            if self.output == "velocity":
                w_level = on_level(stationary(layers)[1])
                out = composed(w_level) - x_level  # u(x) = w(x) + u_0(x + w(x))
                out = DisplacementField(out.astype(params.displacement.dtype), params.grid)
                return out, losses.astype(dtype), jnp.asarray(cap, jnp.int32), jnp.zeros((), bool)
            pts = fixed_grid.world_coords(jnp.float32).reshape(-1, n)
            pad = (-size) % min(chunk, size)
            blocks = jnp.pad(pts, ((0, pad), (0, 0))).reshape(-1, min(chunk, size), n)
            u = jax.lax.map(lambda b: u_theta(layers, b), blocks).reshape(-1, n)[:size].reshape(*shape, n)
            out = DisplacementField((u0 + u).astype(params.displacement.dtype), params.grid)
            return out, losses.astype(dtype), jnp.asarray(cap, jnp.int32), jnp.zeros((), bool)

        return kernel


register_fields(NeuralField, ("jacobian_weight", "diffusion_weight", "folding_weight"))
