"""Deep iterative rigid registration: a learned pose metric and a reinforcement-learning agent.

Two classical rigid optimisers with one learned component, as methods of :func:`jaxreg.optimize.register`
(same contract as :class:`~jaxreg.optimize.Gradient`: a frozen value with ``level_kernel``; the stage's model is
:class:`~jaxreg.optimize.Linear` ``"rigid"``):

* :class:`LearnedMetric` (Haskins et al., IJCARS 2019, "Learning deep similarity metric for 3D MR-TRUS image
  registration"): a network ``E(F, M o T_theta)`` predicts the *misalignment* of the pair under the rigid pose
  ``theta`` (mean target error in mm over the fixed foreground); the pose is found by a global exploration
  (``rounds`` of ``candidates`` poses in a shrinking box around the best so far, scored in one batched network
  call each) and a local refinement (Adam on ``E`` by autodiff through the network and the resampling).
* :class:`RigidAgent` (Liao et al., AAAI 2017, "An artificial agent for robust image registration"): a network
  ``Q(F, M o T_theta)`` regresses the reward ``r_a = D(theta) - D(theta + a)`` of each of the ``2 * dof`` actions
  ``a = +/- 1 unit`` of one rigid parameter (1 degree or 1 mm), ``D`` the distance to the true pose: the paper's
  greedy supervision. Inference repeats the best action, coarse to fine: the step is a multiple ``scales[l]`` of
  the unit, and the agent moves to the next (finer) scale when the best action undoes the previous one
  (oscillation) or no action is predicted to help.

Poses: ``theta = (angles in degrees, translations in mm)``, ``dof = 3`` in 2D (one angle) and 6 in 3D (a rotation
vector in degrees); ``T_theta(x) = R(theta)(x - c) + c + t`` with ``c`` the stage's rotation centre
(:class:`~jaxreg.transforms.Rigid`). The networks see a two-channel image on the *pose grid*: a world-axis-aligned
grid of the network's ``shape`` and ``spacing_mm`` centred on the fixed image's grid centre, the fixed image
sampled at its points ``x`` and the moving image pulled at ``T_theta(x)`` (the one pull sampler,
:func:`jaxreg.warp.sample_points`), each channel standardised to zero mean and unit variance. Use a level that
smooths by about half the pose-grid spacing (:meth:`PoseNet.level`), as the training images were. As the first
stage of a pipeline, start them from a given transform (``register(..., transform=T)``) or with
``Stage(..., init="com")`` / ``"moments"`` (``"auto"`` scores candidates with a similarity these methods do not
have); a following rigid or affine :class:`~jaxreg.optimize.Gradient` stage continues their pose::

    agent = RigidAgent.from_pretrained("work/agent")
    pipeline = (Stage(agent, levels=(agent.level(200),), init="com"), *preset("rigid"))
    result = register(fixed, moving, method=pipeline)

Training (:func:`train_pose_net`) draws random poses around the known alignment of each training pair (a pair
aligned by any means, e.g. an image with itself, or two subjects aligned by the intensity-based rigid stage),
with random intensity changes, and regresses the targets above; :func:`jaxreg.learn.fit` runs it (checkpoints,
resumption, CSV and PNG logs) and :func:`load_pose_net` reads the result back.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxreg.core.grid import Grid, Image
from jaxreg.core.pytree import register_fields
from jaxreg.learn.networks import _act, _check_ndim, _check_widths, _conv, _normalized_coords
from jaxreg.optimize.engine import Level
from jaxreg.optimize.models import Linear, linear_as
from jaxreg.transforms.base import Transform
from jaxreg.transforms.compose import compose
from jaxreg.transforms.linear import Rigid
from jaxreg.warp import sample_points
from jaxreg.warp.pyramid import gaussian_smooth

__all__ = [
    "LearnedMetric",
    "PoseNet",
    "RigidAgent",
    "load_pose_net",
    "pose_error",
    "pose_grid",
    "pose_input",
    "pose_rigid",
    "pose_size",
    "pose_theta",
    "train_pose_net",
]

_DEG = math.pi / 180.0
POSE_KINDS = ("metric", "agent")


def pose_size(ndim: int) -> int:
    """Rigid degrees of freedom: 3 in 2D (angle, 2 translations), 6 in 3D (rotation vector, 3 translations)."""
    return 3 if _check_ndim(ndim) == 2 else 6


def pose_rigid(theta: jax.Array, center: jax.Array) -> Rigid:
    """The rigid transform ``T(x) = R(theta)(x - c) + c + t`` of pose parameters ``theta``.

    Args:
      theta: ``(dof,)``: 2D ``(angle_deg, tx_mm, ty_mm)``; 3D ``(rx, ry, rz, tx, ty, tz)``, the rotation vector in
        degrees then the translation in mm.
      center: ``(ndim,)`` rotation centre ``c`` (world mm).

    Returns:
      :class:`~jaxreg.transforms.Rigid`.
    """
    center = jnp.asarray(center)
    n = center.shape[-1]
    theta = jnp.asarray(theta, center.dtype)
    nr = 1 if n == 2 else 3
    rot = theta[0] * _DEG if n == 2 else theta[:3] * _DEG
    return Rigid(rot, theta[nr:], center)


def pose_theta(transform: Transform, center: Any = None) -> tuple[jax.Array, jax.Array]:
    """The pose parameters of a linear transform's rigid part about ``center``: the inverse of :func:`pose_rigid`.

    Args:
      transform: a linear transform (its rigid projection is used, :func:`~jaxreg.optimize.linear_as`).
      center: rotation centre ``(ndim,)`` mm; default the transform's own centre.

    Returns:
      ``(theta, center)``: ``theta`` ``(dof,)`` (degrees, mm) with ``pose_rigid(theta, center) == rigid part``.
    """
    r = transform if isinstance(transform, Rigid) else linear_as(transform, "rigid")
    c0 = jnp.asarray(r.center)
    c = c0 if center is None else jnp.asarray(center, c0.dtype)
    mat = r.matrix
    # R (x - c0) + c0 + t = R (x - c) + c + t', t' = t + (R - I)(c - c0)
    t = r.translation + (mat - jnp.eye(mat.shape[0], dtype=mat.dtype)) @ (c - c0)
    rot = jnp.reshape(r.rotation, (-1,)) / _DEG
    return jnp.concatenate([rot, t]).astype(c.dtype), c


def pose_error(
    transform: Transform, truth: Transform, points: jax.Array, weights: jax.Array | None = None
) -> jax.Array:
    """Mean target error ``sum_i w_i ||T(p_i) - T*(p_i)|| / sum_i w_i`` in mm (Haskins et al.'s misalignment).

    Args:
      transform: the estimate ``T`` (fixed world mm -> moving world mm).
      truth: the true mapping ``T*``.
      points: ``(..., ndim)`` world mm (e.g. the fixed image's foreground voxel centres).
      weights: optional ``points.shape[:-1]`` non-negative weights (a mask).

    Returns:
      Scalar, mm.
    """
    points = jnp.asarray(points)
    d = jnp.linalg.norm(transform(points) - truth(points), axis=-1)
    if weights is None:
        return jnp.mean(d)
    w = jnp.asarray(weights, d.dtype)
    return jnp.sum(w * d) / jnp.maximum(jnp.sum(w), 1e-12)


def pose_grid(center: Any, shape: Sequence[int], spacing_mm: float) -> Grid:
    """The world-axis-aligned grid of ``shape`` with isotropic ``spacing_mm`` centred on ``center`` (mm)."""
    c = np.asarray(center, np.float64)
    shape = tuple(int(s) for s in shape)
    n = len(shape)
    if c.shape != (n,):
        raise ValueError(f"center: expected a world point of shape ({n},), got {c.shape}")
    aff = np.eye(n + 1)
    aff[:n, :n] *= float(spacing_mm)
    aff[:n, n] = c - float(spacing_mm) * (np.asarray(shape) - 1) / 2.0
    return Grid(shape, aff)


def _standardize(v: jax.Array) -> jax.Array:
    v = v.astype(jnp.float32)
    return (v - jnp.mean(v)) / (jnp.std(v) + 1e-6)


def _sample_pair(fixed: Image, moving: Image, pull: Transform | None, grid: Grid) -> tuple[jax.Array, jax.Array]:
    pts = grid.world_coords(jnp.float32)
    f = sample_points(fixed, pts, order=1, mode="constant", cval=0.0)
    m = sample_points(moving, pts if pull is None else pull(pts), order=1, mode="constant", cval=0.0)
    return f, m


def pose_input(fixed: Image, moving: Image, pose: Transform | None, grid: Grid) -> jax.Array:
    """The networks' input: ``(*grid.shape, 2)``, the fixed image at the grid points ``x`` and the moving image at
    ``pose(x)`` (linear, zero outside), each standardised (zero mean, unit variance over the grid).

    Args:
      fixed: scalar fixed image (any grid).
      moving: scalar moving image (any grid).
      pose: the pull transform (fixed world mm -> moving world mm); ``None`` is the identity.
      grid: the pose grid (:func:`pose_grid`).
    """
    f, m = _sample_pair(fixed, moving, pose, grid)
    return jnp.stack([_standardize(f), _standardize(m)], axis=-1)


def _level(spacing_mm: float, iterations: int) -> Level:
    """Full resolution smoothed by half the pose-grid spacing: the images the networks were trained on."""
    return Level(1, float(spacing_mm) / 2.0, int(iterations))


def _moves(unit: jax.Array) -> jax.Array:
    """``(2 dof, dof)``: action ``a`` moves parameter ``a // 2`` by ``+unit`` (``a`` even) or ``-unit`` (odd)."""
    dof = unit.shape[0]
    eye = jnp.diag(unit)
    return jnp.stack([eye, -eye], axis=1).reshape(2 * dof, dof)


class PoseNet(nnx.Module):
    """A convolutional regressor of a pair on the pose grid: ``(B, *shape, 2) -> (B, outputs)``.

    CoordConv input (the pair and the ``ndim`` normalised coordinates), ``len(widths)`` stride-2 ``3^ndim``
    convolutions with LeakyReLU(0.2), the flattened map (positions kept: the direction of a misalignment is a
    position), a dense layer of ``hidden`` units and a dense output. ``outputs = 1`` is the learned metric
    (``log(1 + error_mm)``), ``outputs = 2 * dof`` the agent's action rewards (mm).

    Args:
      ndim: 2 or 3.
      shape: the pose grid's shape (the input's spatial shape).
      spacing_mm: the pose grid's isotropic spacing (mm); part of the trained model.
      outputs: number of regressed values.
      widths: channels of the stride-2 convolutions.
      hidden: width of the dense layer.
      rngs: random streams (same seed, same initial weights).
    """

    def __init__(
        self,
        ndim: int,
        shape: Sequence[int],
        spacing_mm: float,
        *,
        outputs: int,
        widths: Sequence[int] = (16, 32, 32, 64),
        hidden: int = 128,
        rngs: nnx.Rngs,
    ):
        ndim = _check_ndim(ndim)
        shape = tuple(int(s) for s in shape)
        if len(shape) != ndim or any(s < 4 for s in shape):
            raise ValueError(f"shape: expected {ndim} sizes >= 4, got {shape!r}")
        if not (isinstance(spacing_mm, (int, float)) and math.isfinite(spacing_mm) and spacing_mm > 0):
            raise ValueError(f"spacing_mm: expected a positive number of mm, got {spacing_mm!r}")
        if isinstance(outputs, bool) or not isinstance(outputs, (int, np.integer)) or outputs < 1:
            raise ValueError(f"outputs: expected a positive int, got {outputs!r}")
        widths = _check_widths(widths, "widths")
        if isinstance(hidden, bool) or not isinstance(hidden, (int, np.integer)) or hidden < 1:
            raise ValueError(f"hidden: expected a positive int, got {hidden!r}")
        self.ndim, self.shape, self.spacing_mm = ndim, shape, float(spacing_mm)
        self.outputs, self.widths, self.hidden_units = int(outputs), widths, int(hidden)
        convs, ch, size = [], 2 + ndim, np.asarray(shape)
        for w in widths:
            convs.append(_conv(ch, w, ndim, rngs, strides=2))
            ch, size = w, -(-size // 2)
        self.convs = nnx.List(convs)
        self.hidden = nnx.Linear(int(np.prod(size)) * ch, int(hidden), rngs=rngs)
        self.out = nnx.Linear(int(hidden), int(outputs), rngs=rngs)

    @property
    def config(self) -> dict[str, Any]:
        """The constructor arguments (without ``rngs``), JSON-serialisable; see :meth:`from_config`."""
        return {
            "ndim": self.ndim,
            "shape": list(self.shape),
            "spacing_mm": self.spacing_mm,
            "outputs": self.outputs,
            "widths": list(self.widths),
            "hidden": self.hidden_units,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, rngs: nnx.Rngs | None = None) -> PoseNet:
        """Rebuild the architecture of :attr:`config` (fresh weights from ``rngs``, default seed 0)."""
        if not isinstance(config, Mapping):
            raise TypeError(f"config: expected a mapping, got {type(config).__name__}")
        c = dict(config)
        return cls(
            c["ndim"], c["shape"], c["spacing_mm"], outputs=c["outputs"], widths=tuple(c["widths"]),
            hidden=c["hidden"], rngs=nnx.Rngs(0) if rngs is None else rngs,
        )

    def level(self, iterations: int) -> Level:
        """The resolution level the network expects: full resolution smoothed by half the pose-grid spacing."""
        return _level(self.spacing_mm, iterations)

    def __call__(self, x: jax.Array) -> jax.Array:
        """``x`` ``(B, *shape, 2)`` (:func:`pose_input`) -> ``(B, outputs)``."""
        n = self.ndim
        if x.ndim != n + 2 or tuple(x.shape[1:-1]) != self.shape or x.shape[-1] != 2:
            raise ValueError(f"x: expected (B, {', '.join(map(str, self.shape))}, 2), got {tuple(x.shape)}")
        coords = jnp.broadcast_to(_normalized_coords(self.shape, x.dtype), (*x.shape[:-1], n))
        h = jnp.concatenate([x, coords], axis=-1)
        for conv in self.convs:
            h = _act(conv(h))
        h = _act(self.hidden(h.reshape(h.shape[0], -1)))
        return self.out(h)


# -- the methods ---------------------------------------------------------------------------------------------------
class _PoseMethod:
    """Shared part of the two methods: the network (graph static, parameters traced) and value semantics."""

    _settings: tuple[str, ...] = ()
    _outputs: Callable[[int], int]

    def _init(self, model: Any, settings: dict[str, Any]) -> None:
        if not isinstance(model, PoseNet):
            raise TypeError(f"model: expected a jaxreg.learn.PoseNet, got {type(model).__name__}")
        want = self._outputs(model.ndim)
        if model.outputs != want:
            raise ValueError(
                f"model: {type(self).__name__} needs a network with {want} outputs, got {model.outputs} "
                f"(a {'metric' if model.outputs == 1 else 'agent'} network?)"
            )
        graphdef, state = nnx.split(model)
        object.__setattr__(self, "graphdef", graphdef)
        object.__setattr__(self, "state", state)
        object.__setattr__(self, "ndim", model.ndim)
        object.__setattr__(self, "shape", model.shape)
        object.__setattr__(self, "spacing_mm", model.spacing_mm)
        for k, v in settings.items():
            object.__setattr__(self, k, v)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen: cannot set {name!r}")

    def _static(self) -> tuple:
        return (type(self).__name__, self.graphdef, *(getattr(self, k) for k in self._settings))

    def _key(self) -> tuple:
        leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(self.state)]
        return (self._static(), tuple((x.shape, x.dtype.str, x.tobytes()) for x in leaves))

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        s = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._settings)
        return f"{type(self).__name__}({s}; network on a {self.shape} pose grid at {self.spacing_mm:g} mm)"

    @property
    def model(self) -> PoseNet:
        """The network (merged from the graph definition and the parameters)."""
        return nnx.merge(self.graphdef, self.state)

    def level(self, iterations: int) -> Level:
        """The resolution level the network expects (:meth:`PoseNet.level`)."""
        return _level(self.spacing_mm, iterations)

    def resolved(self, grid: Grid) -> Any:
        """Nothing to resolve."""
        if grid.ndim != self.ndim:
            raise ValueError(f"fixed: the network registers {self.ndim}-D images, got a {grid.ndim}-D image")
        return self

    @property
    def default_model(self) -> Linear:
        """:class:`~jaxreg.optimize.Linear` ``"rigid"``."""
        return Linear("rigid")

    uses_moving_mask = False

    def _setup(self, fixed_grid: Grid, moving_grid: Grid):
        """``(start, score_fn)``: the kernel's pose parameters of ``params`` and ``net(input(theta))``."""
        grid = pose_grid(fixed_grid.center, self.shape, self.spacing_mm)
        pts = grid.world_coords(jnp.float32)

        centre = jnp.asarray(fixed_grid.center, jnp.float32)

        def prepare(method, params, fixed, moving, outer):
            if not isinstance(params, Rigid):
                raise TypeError(
                    f"transform: {type(self).__name__} optimises a rigid pose, got a {type(params).__name__} start "
                    "(pass a Rigid, or a Stage with model=Linear('rigid') to convert it)"
                )
            net = nnx.merge(self.graphdef, method.state)
            theta0, c = pose_theta(params, centre)  # rotations about the pose grid's centre, as in training
            f = _standardize(sample_points(Image(fixed, fixed_grid), pts, order=1, mode="constant", cval=0.0))
            mov = Image(moving, moving_grid)

            def net_input(theta):
                pull = pose_rigid(theta, c)
                if outer is not None:
                    pull = compose(outer, pull)
                m = _standardize(sample_points(mov, pull(pts), order=1, mode="constant", cval=0.0))
                return jnp.stack([f, m], axis=-1)

            def score(thetas):  # (K, dof) -> (K, outputs)
                return net(jax.vmap(net_input)(thetas))

            return theta0.astype(jnp.float32), c, score

        return prepare


def _check_positive(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name}: expected a positive number, got {value!r}")
    return float(value)


def _check_count(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")
    return int(value)


@dataclasses.dataclass(eq=False, init=False, repr=False)
class LearnedMetric(_PoseMethod):
    """A learned misalignment metric as the cost of a rigid search (Haskins et al. 2019): see the module docstring.

    On each level: ``rounds`` exploration rounds (round ``r`` scores the best pose so far plus ``candidates - 1``
    poses ``best + box_r * u_k``, ``u_k`` uniform in ``[-1, 1]^dof`` from the static ``seed``, with
    ``box_0 = (search_degrees, search_mm)`` and ``box_{r+1} = shrink * box_r``, and keeps the lowest predicted
    error), then the level's ``iterations`` Adam steps of size ``refine_step`` (degrees or mm) on the predicted
    error ``E(theta)``; the result is the pose with the lowest ``E`` seen. ``losses[k]`` is ``E`` (mm) at step
    ``k``.

    Args:
      model: a trained metric :class:`PoseNet` (``outputs = 1``, :func:`train_pose_net` ``kind="metric"``).
      search_degrees: half-width of the first exploration box in degrees (each rotation parameter).
      search_mm: half-width of the first exploration box in mm (each translation).
      candidates: poses scored per round (one batched network call).
      rounds: exploration rounds (0: refinement only).
      shrink: box factor between rounds.
      refine_step: Adam's step size of the refinement (degrees and mm).
      seed: seed of the exploration's candidate offsets.
    """

    graphdef: Any
    state: Any  # traced: the network's parameters
    ndim: int
    shape: tuple
    spacing_mm: float
    search_degrees: float
    search_mm: float
    candidates: int
    rounds: int
    shrink: float
    refine_step: float
    seed: int

    _settings = ("search_degrees", "search_mm", "candidates", "rounds", "shrink", "refine_step", "seed")

    @staticmethod
    def _outputs(ndim: int) -> int:
        return 1

    def __init__(
        self,
        model: PoseNet,
        *,
        search_degrees: float = 30.0,
        search_mm: float = 30.0,
        candidates: int = 128,
        rounds: int = 4,
        shrink: float = 0.4,
        refine_step: float = 0.5,
        seed: int = 0,
    ):
        if isinstance(search_degrees, bool) or not isinstance(search_degrees, (int, float)) or search_degrees < 0:
            raise ValueError(f"search_degrees: expected a non-negative number, got {search_degrees!r}")
        if isinstance(search_mm, bool) or not isinstance(search_mm, (int, float)) or search_mm < 0:
            raise ValueError(f"search_mm: expected a non-negative number, got {search_mm!r}")
        if not (isinstance(shrink, (int, float)) and not isinstance(shrink, bool) and 0 < shrink < 1):
            raise ValueError(f"shrink: expected a number in (0, 1), got {shrink!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ValueError(f"seed: expected an int, got {seed!r}")
        self._init(
            model,
            dict(
                search_degrees=float(search_degrees),
                search_mm=float(search_mm),
                candidates=_check_count(candidates, "candidates"),
                rounds=_check_count(rounds, "rounds", 0),
                shrink=float(shrink),
                refine_step=_check_positive(refine_step, "refine_step"),
                seed=int(seed),
            ),
        )

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, **settings: Any) -> LearnedMetric:
        """The method of a trained metric folder (:func:`train_pose_net`'s work folder or an exported one)."""
        return cls(load_pose_net(folder, kind="metric"), **settings)

    def level_kernel(self, fixed_grid: Grid, moving_grid: Grid, iterations: int) -> Callable:
        """The pure per-level kernel: exploration rounds, then ``iterations`` refinement steps."""
        cap = int(iterations)
        prepare = self._setup(fixed_grid, moving_grid)
        dof = pose_size(fixed_grid.ndim)
        nr = 1 if dof == 3 else 3
        box0 = np.array([self.search_degrees] * nr + [self.search_mm] * (dof - nr), np.float32)
        k = self.candidates
        offsets = np.asarray(
            jax.random.uniform(jax.random.key(self.seed), (max(self.rounds, 1), max(k - 1, 0), dof), jnp.float32, -1, 1)
        )
        rounds, shrink = self.rounds, self.shrink
        opt = optax.adam(self.refine_step)

        def kernel(method, params, fixed, moving, fmask, mmask, outer):
            del fmask, mmask
            dtype = fixed.dtype if jnp.issubdtype(fixed.dtype, jnp.floating) else jnp.float32
            theta, c, score = prepare(method, params, fixed, moving, outer)

            def error(thetas):  # predicted mean target error (mm)
                return jnp.expm1(score(thetas)[:, 0])

            best, box = theta, jnp.asarray(box0)
            for r in range(rounds):
                cands = jnp.concatenate([best[None], best + box * offsets[r]], axis=0)
                best = cands[jnp.argmin(error(cands))]
                box = box * shrink
            e_best = error(best[None])[0]

            def body(i, carry):
                th, st, b, eb, losses = carry
                e, g = jax.value_and_grad(lambda t: error(t[None])[0])(th)
                better = e < eb
                b, eb = jnp.where(better, th, b), jnp.where(better, e, eb)
                upd, st = opt.update(g, st)
                return optax.apply_updates(th, upd), st, b, eb, losses.at[i].set(e)

            carry = (best, opt.init(best), best, e_best, jnp.full((cap,), jnp.nan, jnp.float32))
            th, _, best, e_best, losses = jax.lax.fori_loop(0, cap, body, carry)
            if cap:
                e_last = error(th[None])[0]
                best = jnp.where(e_last < e_best, th, best)
            out = _as_params(params, pose_rigid(best, c))
            return out, losses.astype(dtype), jnp.asarray(cap, jnp.int32), jnp.zeros((), bool)

        return kernel


@dataclasses.dataclass(eq=False, init=False, repr=False)
class RigidAgent(_PoseMethod):
    """A greedy-supervised registration agent (Liao et al. 2017): see the module docstring.

    Each iteration evaluates ``Q`` once at the current pose, takes the action ``a* = argmax_a Q_a`` (``+/-`` one
    parameter by ``scales[l]`` units; a unit is ``unit_degrees`` or ``unit_mm``), or, when ``Q_{a*} <= 0`` or
    ``a*`` undoes the previous action (oscillation), goes to the next scale without moving. The level ends when
    the last scale ends (``converged``) or after ``iterations`` network evaluations. Actions that would take a
    parameter more than ``max_degrees`` / ``max_mm`` from the level's start are not taken (an agent never walks
    out of the range it was trained on, where the images stop overlapping). ``losses[k] = -Q_{a*}``, the negated
    predicted improvement (mm) of step ``k``.

    Args:
      model: a trained agent :class:`PoseNet` (``outputs = 2 * dof``, :func:`train_pose_net` ``kind="agent"``).
      scales: step multiples, coarse to fine.
      unit_degrees: the rotation unit (the network's training unit by default, 1 degree).
      unit_mm: the translation unit (1 mm).
      max_degrees: largest rotation change from the level's start (each rotation parameter).
      max_mm: largest translation change from the level's start (each axis).
    """

    graphdef: Any
    state: Any  # traced: the network's parameters
    ndim: int
    shape: tuple
    spacing_mm: float
    scales: tuple
    unit_degrees: float
    unit_mm: float
    max_degrees: float
    max_mm: float

    _settings = ("scales", "unit_degrees", "unit_mm", "max_degrees", "max_mm")

    @staticmethod
    def _outputs(ndim: int) -> int:
        return 2 * pose_size(ndim)

    def __init__(
        self,
        model: PoseNet,
        *,
        scales: Sequence[float] = (8.0, 4.0, 2.0, 1.0, 0.5),
        unit_degrees: float = 1.0,
        unit_mm: float = 1.0,
        max_degrees: float = 45.0,
        max_mm: float = 45.0,
    ):
        if isinstance(scales, (str, bytes)) or not isinstance(scales, Sequence) or not scales:
            raise ValueError(f"scales: expected a non-empty sequence of positive step multiples, got {scales!r}")
        sc = tuple(_check_positive(s, "scales") for s in scales)
        self._init(
            model,
            dict(
                scales=sc,
                unit_degrees=_check_positive(unit_degrees, "unit_degrees"),
                unit_mm=_check_positive(unit_mm, "unit_mm"),
                max_degrees=_check_positive(max_degrees, "max_degrees"),
                max_mm=_check_positive(max_mm, "max_mm"),
            ),
        )

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, **settings: Any) -> RigidAgent:
        """The method of a trained agent folder (:func:`train_pose_net`'s work folder or an exported one)."""
        return cls(load_pose_net(folder, kind="agent"), **settings)

    def level_kernel(self, fixed_grid: Grid, moving_grid: Grid, iterations: int) -> Callable:
        """The pure per-level kernel: at most ``iterations`` actions, coarse to fine."""
        cap = int(iterations)
        prepare = self._setup(fixed_grid, moving_grid)
        dof = pose_size(fixed_grid.ndim)
        nr = 1 if dof == 3 else 3
        unit = jnp.asarray([self.unit_degrees] * nr + [self.unit_mm] * (dof - nr), jnp.float32)
        scales = jnp.asarray(self.scales, jnp.float32)
        n_scales = len(self.scales)
        moves = _moves(unit)
        bound = jnp.asarray([self.max_degrees] * nr + [self.max_mm] * (dof - nr), jnp.float32)

        def kernel(method, params, fixed, moving, fmask, mmask, outer):
            del fmask, mmask
            dtype = fixed.dtype if jnp.issubdtype(fixed.dtype, jnp.floating) else jnp.float32
            theta, c, score = prepare(method, params, fixed, moving, outer)

            def cond(carry):
                i, _, level, _, _ = carry
                return (i < cap) & (level < n_scales)

            def body(carry):
                i, th, level, prev, losses = carry
                step = scales[jnp.minimum(level, n_scales - 1)]
                inside = jnp.all(jnp.abs(th + step * moves - theta) <= bound + 1e-6, axis=-1)
                q = jnp.where(inside, score(th[None])[0], -jnp.inf)
                a = jnp.argmax(q)
                stop = ~(q[a] > 0) | (a == jnp.bitwise_xor(prev, 1))
                th = jnp.where(stop, th, th + step * moves[a])
                return (
                    i + 1,
                    th,
                    level + stop.astype(jnp.int32),
                    jnp.where(stop, -1, a).astype(jnp.int32),
                    losses.at[i].set(jnp.where(jnp.isfinite(q[a]), -q[a], jnp.nan)),
                )

            carry = (jnp.zeros((), jnp.int32), theta, jnp.zeros((), jnp.int32), -jnp.ones((), jnp.int32),
                     jnp.full((cap,), jnp.nan, jnp.float32))
            i, th, level, _, losses = jax.lax.while_loop(cond, body, carry)
            out = _as_params(params, pose_rigid(th, c))
            return out, losses.astype(dtype), i, level >= n_scales

        return kernel


def _as_params(params: Any, rigid: Rigid) -> Rigid:
    """``rigid`` re-expressed about the incoming ``params``' own centre, with its dtypes and shapes."""
    theta, c = pose_theta(rigid, params.center)
    r = pose_rigid(theta, c)
    return Rigid(
        jnp.asarray(r.rotation, params.rotation.dtype).reshape(params.rotation.shape),
        r.translation.astype(params.translation.dtype),
        params.center,
    )


register_fields(LearnedMetric, ("state",))
register_fields(RigidAgent, ("state",))


# -- training -----------------------------------------------------------------------------------------------------
def _stack_images(images: Sequence[Image], name: str) -> tuple[jax.Array, Grid]:
    if not images:
        raise ValueError(f"{name}: expected at least one image")
    g = images[0].grid
    for im in images:
        if not isinstance(im, Image) or im.has_channels:
            raise ValueError(f"{name}: expected scalar jaxreg Images")
        if im.grid != g:
            raise ValueError(f"{name}: every image must share one grid (resample them first)")
    return jnp.stack([jnp.asarray(im.data, jnp.float32) for im in images]), g


def _normalized(image: Image) -> Image:
    from jaxreg.learn.inference import normalize_image

    return normalize_image(image)


def train_pose_net(
    kind: str,
    fixed: Sequence[Image],
    moving: Sequence[Image],
    *,
    truths: Sequence[Transform] | None = None,
    workdir: str | os.PathLike,
    key: jax.Array,
    steps: int = 2000,
    batch: int = 16,
    shape: Sequence[int] | None = None,
    spacing_mm: float = 4.0,
    max_degrees: float = 30.0,
    max_mm: float = 30.0,
    learning_rate: float = 1e-3,
    widths: Sequence[int] = (16, 32, 32, 64),
    hidden: int = 128,
    gamma_std: float = 0.3,
    noise_std: float = 0.03,
    scale_range: float = 0.1,
    deform_mm: float = 3.0,
    shift_mm: float = 30.0,
    deform_wavelength_mm: float = 80.0,
    foreground: float = 0.05,
    progress: bool = True,
    resume: bool = True,
) -> Any:
    """Train a learned pose metric (``kind="metric"``) or a registration agent (``kind="agent"``).

    Each training sample draws a pair ``i``, a pose grid centred ``shift_mm`` or less (uniform per axis) from the
    fixed grid's centre (the networks see objects anywhere near the centre; rotations are about the grid's
    centre, as in the methods), a pose ``theta = theta*_i + delta`` with
    ``delta = u^2 * s * (max_degrees, max_mm)`` per parameter (``u, s`` uniform in ``[0, 1]`` and ``{-1, 1}``: small
    misalignments as often as large ones), the pair's images with a random gamma ``exp(N(0, gamma_std))`` and
    Gaussian noise ``noise_std`` per channel, a random shape change of the moving image that has no rigid part
    (new "subjects" from few: the moving image is read at ``phi(T_theta(x))``,
    ``phi(y) = y* + S (y - y*) + u(y)`` with ``y* = T*_i(c)``, ``S`` diagonal with entries uniform in
    ``1 +/- scale_range``, and ``u`` three random plane sine waves of wavelength ``deform_wavelength_mm`` and
    amplitude about ``deform_mm``), and the target over the fixed foreground points ``p`` (normalised fixed image
    above ``foreground``) of the pose grid, with ``D(theta) = mean_p ||T_theta(p) - T*_i(p)||`` mm:

    * metric: ``log(1 + D(theta))``, regressed by the mean squared error;
    * agent: ``r_a = D(theta) - D(theta + a)`` for the ``2 * dof`` unit actions (1 degree, 1 mm), by the mean
      squared error (Liao et al.'s greedy supervision).

    Args:
      kind: ``"metric"`` or ``"agent"``.
      fixed: fixed images (one grid), normalised to [0, 1] here (robust percentiles).
      moving: moving images (one grid), one per fixed image.
      truths: the true pull transform of each pair (fixed world mm -> moving world mm; its rigid projection is
        used); ``None``: every pair is aligned (identity), e.g. an image with a re-contrasted copy of itself.
      workdir: :func:`jaxreg.learn.fit` work folder (checkpoints, ``metrics.csv``, resumption).
      key: root PRNG key (same key and data, same network).
      steps: updates.
      batch: samples per update.
      shape: the pose grid's shape (default 64 per axis in 2D, 40 in 3D).
      spacing_mm: the pose grid's spacing; images are smoothed by half of it (:meth:`PoseNet.level`).
      max_degrees: the largest rotation drawn per parameter (degrees).
      max_mm: the largest translation drawn per parameter (mm).
      learning_rate: Adam's peak rate (cosine decay over ``steps``).
      widths: the :class:`PoseNet` convolution widths.
      hidden: the :class:`PoseNet` hidden layer sizes.
      gamma_std: intensity augmentation (log-gamma standard deviation).
      noise_std: intensity augmentation (noise standard deviation).
      scale_range: shape augmentation, scaling range (0 disables it).
      deform_mm: shape augmentation, deformation amplitude in mm (0 disables it).
      deform_wavelength_mm: shape augmentation, deformation wavelength in mm.
      shift_mm: largest offset of the pose grid from the fixed grid's centre (each axis).
      foreground: threshold of the normalised fixed image defining the error points.
      progress: show a progress bar.
      resume: continue from the newest checkpoint of ``workdir``.

    Returns:
      :class:`jaxreg.learn.FitResult` (``.model`` the trained :class:`PoseNet`).
    """
    from jaxreg.learn.train import fit, make_optimizer

    if kind not in POSE_KINDS:
        raise ValueError(f"kind: expected one of {POSE_KINDS}, got {kind!r}")
    fixed, moving = list(fixed), list(moving)
    if len(fixed) != len(moving):
        raise ValueError(f"moving: expected one moving image per fixed image ({len(fixed)}), got {len(moving)}")
    if truths is not None and len(truths) != len(fixed):
        raise ValueError(f"truths: expected one transform per pair ({len(fixed)}), got {len(truths)}")
    spacing_mm = _check_positive(spacing_mm, "spacing_mm")
    _check_count(steps, "steps")
    _check_count(batch, "batch")
    max_degrees, max_mm = _check_positive(max_degrees, "max_degrees"), _check_positive(max_mm, "max_mm")
    for name, v in (("gamma_std", gamma_std), ("noise_std", noise_std), ("scale_range", scale_range),
                    ("deform_mm", deform_mm), ("shift_mm", shift_mm)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v >= 0):
            raise ValueError(f"{name}: expected a non-negative number, got {v!r}")
    if not scale_range < 1:
        raise ValueError(f"scale_range: expected a number in [0, 1), got {scale_range!r}")
    deform_wavelength_mm = _check_positive(deform_wavelength_mm, "deform_wavelength_mm")
    f_all, fgrid = _stack_images([_normalized(im) for im in fixed], "fixed")
    m_all, mgrid = _stack_images([_normalized(im) for im in moving], "moving")
    n = fgrid.ndim
    if mgrid.ndim != n:
        raise ValueError(f"moving: expected {n}-D images like fixed, got {mgrid.ndim}-D")
    dof = pose_size(n)
    nr = 1 if n == 2 else 3
    shape = tuple(shape) if shape is not None else ((64,) * 2 if n == 2 else (40,) * 3)
    model = PoseNet(n, shape, spacing_mm, outputs=1 if kind == "metric" else 2 * dof, widths=widths,
                    hidden=hidden, rngs=nnx.Rngs(int(jax.random.randint(key, (), 0, 2**30))))
    sig = spacing_mm / 2.0
    f_all = jnp.stack([gaussian_smooth(Image(x, fgrid), sig).data for x in f_all])
    m_all = jnp.stack([gaussian_smooth(Image(x, mgrid), sig).data for x in m_all])
    grid = pose_grid(np.zeros(n), shape, spacing_mm)
    pts0 = grid.world_coords(jnp.float32)  # the pose grid about the origin; each sample shifts it
    c0 = jnp.asarray(fgrid.center, jnp.float32)
    if truths is None:
        theta_true = jnp.zeros((len(fixed), dof), jnp.float32)
    else:
        theta_true = jnp.stack([pose_theta(t, c0)[0].astype(jnp.float32) for t in truths])
    scale = jnp.asarray([max_degrees] * nr + [max_mm] * (dof - nr), jnp.float32)
    moves = _moves(jnp.ones((dof,), jnp.float32))
    p = len(fixed)

    def shape_change(k, truth, c):
        ks, kw, ka, kp = jax.random.split(k, 4)
        y0 = truth(c)
        s = 1.0 + scale_range * jax.random.uniform(ks, (n,), minval=-1.0, maxval=1.0)
        w = jax.random.normal(kw, (3, n))
        w = w / jnp.linalg.norm(w, axis=-1, keepdims=True) * (2 * math.pi / deform_wavelength_mm)
        a = jax.random.normal(ka, (3, n)) * (deform_mm / math.sqrt(3.0))
        ph = jax.random.uniform(kp, (3,), maxval=2 * math.pi)

        def phi(y):
            return y0 + s * (y - y0) + jnp.sin((y - y0) @ w.T + ph) @ a

        return phi

    def sample(k, i):
        k1, k2, k3, k4, k5, k6, k7 = jax.random.split(k, 7)
        c = c0 + shift_mm * jax.random.uniform(k7, (n,), minval=-1.0, maxval=1.0)
        pts = pts0 + c
        truth = pose_rigid(theta_true[i], c0)
        th_true = pose_theta(truth, c)[0]  # the truth about this sample's centre
        u = jax.random.uniform(k1, (dof,)) ** 2 * jnp.where(jax.random.bernoulli(k2, 0.5, (dof,)), 1.0, -1.0)
        theta = th_true + u * scale
        phi, pose = shape_change(k6, truth, c), pose_rigid(theta, c)
        f = sample_points(Image(f_all[i], fgrid), pts, order=1, mode="constant", cval=0.0)
        m = sample_points(Image(m_all[i], mgrid), phi(pose(pts)), order=1, mode="constant", cval=0.0)
        w = (f > foreground).astype(jnp.float32)
        g = jnp.exp(gamma_std * jax.random.normal(k3, (2,)))
        f = jnp.clip(f, 0, None) ** g[0] + noise_std * jax.random.normal(k4, f.shape)
        m = jnp.clip(m, 0, None) ** g[1] + noise_std * jax.random.normal(k5, m.shape)
        x = jnp.stack([_standardize(f), _standardize(m)], axis=-1)

        def dist(th):
            return pose_error(pose_rigid(th, c), truth, pts, w)

        if kind == "metric":
            y = jnp.log1p(dist(theta))[None]
        else:
            y = dist(theta) - jax.vmap(dist)(theta + moves)
        return x, y

    def augment(k, b):
        keys = jax.random.split(k, b["pair"].shape[0])
        x, y = jax.vmap(sample)(keys, b["pair"])
        return {"x": x, "y": y}

    def loss_fn(net, b, k):
        del k
        pred = net(b["x"])
        err = pred - b["y"]
        metrics = {}
        if kind == "metric":
            metrics["error_mm"] = jnp.mean(jnp.abs(jnp.expm1(pred[:, 0]) - jnp.expm1(b["y"][:, 0])))
        else:
            metrics["best_action"] = jnp.mean(jnp.argmax(pred, -1) == jnp.argmax(b["y"], -1))
        return jnp.mean(err**2), metrics

    def train_data(start: int) -> Iterator[dict[str, np.ndarray]]:
        for s in range(start, steps):
            rng = np.random.default_rng([int(s), 7])
            yield {"pair": rng.integers(0, p, batch).astype(np.int32)}

    optimizer = make_optimizer(learning_rate, schedule="cosine", total_steps=int(steps), clip_norm=1.0)
    metadata = {
        "pose_kind": kind,
        "max_degrees": max_degrees,
        "max_mm": max_mm,
        "pairs": p,
        "unit": [1.0, 1.0],
        "augment": {"gamma_std": gamma_std, "noise_std": noise_std, "scale_range": scale_range,
                    "deform_mm": deform_mm, "deform_wavelength_mm": deform_wavelength_mm, "shift_mm": shift_mm},
    }
    return fit(
        model, loss_fn, optimizer, train_data, steps=int(steps), key=key, workdir=workdir, augment=augment,
        eval_every=max(int(steps) // 10, 1), save_every=max(int(steps) // 4, 1), progress=progress,
        resume=resume, metadata=metadata,
    )


def load_pose_net(folder: str | os.PathLike, *, kind: str | None = None) -> PoseNet:
    """The trained :class:`PoseNet` of a :func:`train_pose_net` work folder or an exported folder.

    Args:
      folder: the folder.
      kind: ``"metric"`` or ``"agent"`` to check what the folder holds (``None``: no check).

    Raises:
      FileNotFoundError: not a model folder.
      ValueError: the folder holds the other kind of network.
    """
    from jaxreg.learn.train import load_model

    model, meta = load_model(folder, build=PoseNet.from_config, which="latest")
    got = meta.get("pose_kind")
    if kind is not None and got != kind:
        raise ValueError(f"folder {os.fspath(folder)!r}: holds a {got!r} pose network, expected {kind!r}")
    return model
