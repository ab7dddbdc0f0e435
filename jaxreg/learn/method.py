"""A trained network as a registration method: one stage of :func:`jaxreg.optimize.register`.

:class:`Network` implements the method contract of :mod:`jaxreg.optimize.methods`::

    kernel = method.level_kernel(fixed_grid, moving_grid, iterations)
    params, losses, iterations_done, converged = kernel(method, params, fixed, moving, fixed_mask,
                                                        moving_mask, outer)

On a level it evaluates the network once (no optimisation): the fixed image is sampled on the *network grid*
(the grid the network was trained on, placed in the fixed image's world space) and the moving image is pulled
at ``outer(x)`` for the same points ``x``, both with the one pull sampler
(:func:`jaxreg.warp.sample_points`: linear, zero outside). The network's output, read in world mm by
:meth:`~jaxreg.learn.networks.RegistrationNet.to_transform`, becomes the stage's transform:

* ``output="field"``: the predicted :class:`~jaxreg.transforms.VelocityField` or
  :class:`~jaxreg.transforms.DisplacementField`, re-expressed on the level's fixed grid (linear interpolation,
  edge values repeated beyond the network grid, as :meth:`~jaxreg.transforms.Transform.on_grid` does). The
  stage's model is a :class:`~jaxreg.optimize.Field` of the network's kind, so a following
  :class:`~jaxreg.optimize.Greedy` stage with the same field kind *continues* the prediction (test-time
  instance optimisation). The field stage starts afresh: its incoming parameters are replaced.
* ``output="affine"``: the predicted affine ``A`` composed after the incoming linear transform ``P`` (the
  stage's model is :class:`~jaxreg.optimize.Linear`, which continues a previous linear stage): the stage
  returns ``P o A`` and the network sees the moving image pulled at ``outer(P(x))``.

A model that predicts both (``"affine+velocity"``) is two stages, ``output="affine"`` then ``output="field"``:
the second evaluates only the U-Net (:meth:`~jaxreg.learn.networks.RegistrationNet.predict_field`) on the
moving image pulled through the first stage's affine (one interpolation from the original image, real
intensities outside the network grid, where the one-shot network pads its internally warped image with
zeros).

``Network`` is a frozen strategy pytree: its leaves are the network's parameters (``nnx.split`` state) and the
world centre of the network grid (traced, so new weights or a new placement reuse the compiled kernel); its
static part is the graph definition, the network grid's shape and axes, what to read and an optional
similarity. Equal networks (same graph, same parameter values, same settings) compare and hash equal.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxreg.core.grid import Grid, Image
from jaxreg.core.pytree import register_fields
from jaxreg.optimize.models import Field, Linear
from jaxreg.optimize.objective import as_similarity
from jaxreg.transforms.compose import compose, to_affine
from jaxreg.transforms.linear import Affine
from jaxreg.warp import sample_points

__all__ = ["Network"]

_OUTPUTS = ("field", "affine")


def _centered(grid: Grid) -> Grid:
    """``grid`` translated so that its centre is the world origin (same shape, spacing and axes)."""
    n = grid.ndim
    aff = np.array(grid.affine, np.float64)
    aff[:n, n] -= np.asarray(grid.center, np.float64)
    return Grid(grid.shape, aff)


@dataclasses.dataclass(eq=False, init=False, repr=False)  # fields for register_fields; frozen by __setattr__
class Network:
    """A trained registration network as a method of :func:`jaxreg.optimize.register` (see the module docstring).

    Args:
      model: a :class:`~jaxreg.learn.networks.RegistrationNet` (an NNX module with ``__call__``,
        ``predict_affine``, ``predict_field``, ``to_transform``, ``affine_transform``, ``field_transform``,
        ``has_affine``, ``has_field``, ``field_kind`` and ``steps``).
      grid: the network grid: the network runs on a grid of this shape, spacing and orientation whose centre
        is ``center`` (world mm); ``None`` runs it on the level's fixed grid as it is (whose shape must then
        suit the network).
      center: world point ``(ndim,)`` mm where the network grid is centred (default: ``grid``'s own centre);
        a traced leaf, so placing the grid on each pair's centre of mass compiles once. Only with ``grid``.
      output: ``"field"`` (default for deformable models) or ``"affine"`` (default for the affine model).
      similarity: optional ``sim(fixed, warped, mask=None)`` or registry spec: the level's loss entry is the
        similarity of the fixed image and the moving image warped by the stage's full transform (on the
        level's fixed grid); without it the loss is NaN.
    """

    graphdef: Any
    grid: Grid | None
    output: str
    kind: str
    steps: int
    similarity: Any
    state: Any  # traced: the network's parameters
    center: Any  # traced: world centre of the network grid (or None)

    def __init__(
        self,
        model: Any,
        *,
        grid: Grid | None = None,
        center: Any = None,
        output: str | None = None,
        similarity: Any = None,
    ):
        from flax import nnx

        if not isinstance(model, nnx.Module) or not callable(getattr(model, "to_transform", None)):
            raise TypeError(
                f"model: expected a registration network (an NNX module with to_transform), got {type(model).__name__}"
            )
        if output is None:
            output = "field" if model.has_field else "affine"
        if output not in _OUTPUTS:
            raise ValueError(f"output: expected one of {_OUTPUTS}, got {output!r}")
        if output == "field" and not model.has_field:
            raise ValueError(f"output: the {model.transform!r} model predicts no field")
        if output == "affine" and not model.has_affine:
            raise ValueError(f"output: the {model.transform!r} model predicts no affine")
        if grid is not None:
            if not isinstance(grid, Grid):
                raise TypeError(f"grid: expected a jaxreg Grid or None, got {type(grid).__name__}")
            if grid.ndim != model.ndim:
                raise ValueError(f"grid: the network registers {model.ndim}-D images, got a {grid.ndim}-D grid")
            c = np.asarray(grid.center if center is None else center, np.float64)
            if c.shape != (grid.ndim,) or not np.all(np.isfinite(c)):
                raise ValueError(f"center: expected a finite world point of shape ({grid.ndim},), got {c.shape}")
            center = jnp.asarray(c, jnp.float32)
            grid = _centered(grid)
        elif center is not None:
            raise ValueError("center: places the network grid; pass grid too")
        graphdef, state = nnx.split(model)
        sim = None if similarity is None else as_similarity(similarity, "similarity")
        values = dict(graphdef=graphdef, grid=grid, output=output, kind=model.field_kind, steps=int(model.steps),
                      similarity=sim, state=state, center=center)
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"Network is frozen: cannot set {name!r}")

    # -- pytree and value semantics -----------------------------------------------------------------------------
    def _static(self) -> tuple:
        return (self.graphdef, self.grid, self.output, self.kind, self.steps, self.similarity)

    def _key(self) -> tuple:
        leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves((self.state, self.center))]
        return (self._static(), tuple((x.shape, x.dtype.str, x.tobytes()) for x in leaves))

    def __eq__(self, other: object) -> bool:
        return type(other) is Network and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        where = "the level's fixed grid" if self.grid is None else f"a {self.grid.shape} network grid"
        return f"Network(output={self.output!r}, kind={self.kind!r}, on {where})"

    @property
    def model(self) -> Any:
        """The network module (merged from the graph definition and the parameters)."""
        from flax import nnx

        return nnx.merge(self.graphdef, self.state)

    def network_grid(self) -> Grid | None:
        """The network grid as placed (world centre :attr:`center`), or ``None`` (the level's fixed grid)."""
        if self.grid is None:
            return None
        n = self.grid.ndim
        aff = np.array(self.grid.affine, np.float64)
        aff[:n, n] += np.asarray(self.center, np.float64)
        return Grid(self.grid.shape, aff)

    # -- the method contract ------------------------------------------------------------------------------------
    def resolved(self, grid: Grid) -> Network:
        """Nothing to resolve."""
        return self

    @property
    def default_model(self) -> Any:
        """:class:`~jaxreg.optimize.Field` of the network's kind (``output="field"``), else an affine
        :class:`~jaxreg.optimize.Linear`."""
        if self.output == "field":
            return Field(self.kind, steps=self.steps)
        return Linear("affine")

    def level_kernel(self, fixed_grid: Grid, moving_grid: Grid, iterations: int) -> Callable:
        """The pure per-level kernel (see the module docstring): one network evaluation, ``iterations_done = 1``
        and ``losses[0]`` the optional similarity (NaN without one; the other entries NaN)."""
        from flax import nnx

        cap = int(iterations)
        net_grid = self.grid if self.grid is not None else _centered(fixed_grid)
        output, template = self.output, self.default_model
        sim = self.similarity
        n = fixed_grid.ndim

        def kernel(method, params, fixed, moving, fmask, mmask, outer):
            del fmask, mmask
            dtype = fixed.dtype if jnp.issubdtype(fixed.dtype, jnp.floating) else jnp.float32
            if cap <= 0:
                return params, jnp.zeros((0,), dtype), jnp.zeros((), jnp.int32), jnp.zeros((), bool)
            net = nnx.merge(self.graphdef, method.state)
            if method.center is None:
                c = jnp.asarray(fixed_grid.center, dtype)
                pts, f_net = fixed_grid.world_coords(dtype), fixed.astype(dtype)
            else:
                c = jnp.asarray(method.center, dtype)
                pts = net_grid.world_coords(dtype) + c
                f_net = sample_points(Image(fixed, fixed_grid), pts, order=1, mode="constant", cval=0.0)
            pull = params if output == "affine" else None
            if outer is not None:
                pull = outer if pull is None else compose(outer, pull)
            m_pts = pts if pull is None else pull(pts)
            m_net = sample_points(Image(moving, moving_grid), m_pts, order=1, mode="constant", cval=0.0)
            if f_net.ndim == n:
                f_net, m_net = f_net[..., None], m_net[..., None]
            f_b, m_b = f_net[None].astype(dtype), m_net[None].astype(dtype)
            if output == "affine":
                a0 = net.affine_transform(net.predict_affine(f_b, m_b)[0], net_grid)
                # network frame -> world: x = y + c, so A = Tr(c) A0 Tr(-c)
                shift = jnp.eye(n + 1, dtype=dtype).at[:n, n].set(c)
                unshift = jnp.eye(n + 1, dtype=dtype).at[:n, n].set(-c)
                a = Affine.from_homogeneous(shift @ a0.homogeneous().astype(dtype) @ unshift, center=c)
                out = to_affine(compose(params, a))
            else:
                if net.has_affine:
                    t0 = net.field_transform(net.predict_field(f_b, m_b)[0], net_grid)
                else:
                    pred = jax.tree_util.tree_map(lambda x: x[0], net(f_b, m_b))
                    t0 = net.to_transform(pred, net_grid)
                u0, g0 = t0.regularized_field(net_grid)
                # the field of x is the network's at x - c (network frame), edge values repeated outside
                u = sample_points(Image(u0, g0), fixed_grid.world_coords(dtype) - c, order=1, mode="nearest")
                zero = template.start(fixed_grid, None)
                leaves, treedef = jax.tree_util.tree_flatten(zero)
                if len(leaves) != 1:
                    raise ValueError(f"model: expected a dense field with one leaf, got {type(zero).__name__}")
                out = jax.tree_util.tree_unflatten(treedef, [u.astype(leaves[0].dtype)])
            losses = jnp.full((cap,), jnp.nan, dtype)
            if sim is not None:
                full = out if outer is None else compose(outer, out)
                warped = sample_points(Image(moving, moving_grid), full.sample_grid(fixed_grid, dtype))
                losses = losses.at[0].set(jnp.asarray(sim(fixed, warped, None), dtype))
            return out, losses, jnp.ones((), jnp.int32), jnp.zeros((), bool)

        return kernel


register_fields(Network, ("state", "center"))
