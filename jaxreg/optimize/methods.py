"""Registration methods: frozen strategy objects, each with one pure per-level kernel.

A *method* says how the parameters of a transform are updated on one resolution level. It is a small frozen
value (like an optax transformation or a diffrax solver): it hashes and compares by its configuration, so two
equal methods built independently share one compiled kernel, and it is a pytree whose leaves are its numeric
weights (traced: a sweep of weights is a ``vmap``, a weight can be differentiated) while everything that shapes
the computation (terms, optimiser, iteration counts, smoothing widths) is static metadata.

Every method implements one contract, used by :func:`jaxreg.optimize.register` and nothing else::

    kernel = method.level_kernel(fixed_grid, moving_grid, iterations)
    params, losses, iterations_done, converged = kernel(method, params, fixed, moving, fixed_mask,
                                                        moving_mask, outer)

``params`` is the transform being optimised (a pytree), ``fixed``/``moving`` the level's image arrays on
``fixed_grid``/``moving_grid``, the masks arrays or ``None``, ``outer`` a fixed transform applied after
``params`` (pull: the moving image is sampled at ``outer(params(x))``) or ``None``; ``losses`` is
``(iterations,)`` with NaN after stopping. The kernel is pure (no host loop, nothing printed), so the batched
form of every method is ``jax.vmap(kernel)``.

* :class:`Gradient`: gradient-based optimisation of any transform with an optax optimiser against an
  :class:`~jaxreg.optimize.Objective` (weighted similarity, field and transform terms), ``lax.while_loop`` with
  a relative-change stopping rule.
* :class:`Greedy`: greedy diffeomorphic registration (demons-like, SyN-like) of a stationary velocity field or
  a displacement field with compositive/additive updates (Thirion 1998; Vercauteren et al. 2008, 2009; Avants
  et al. 2008).

A new method is one class here with ``level_kernel`` and ``default_model``. A method may also implement
``preparation() -> (term, method) | None``: its similarity is a *prepared* one (``term.prepare(image)``, e.g.
the feature maps of :func:`jaxreg.similarity.features`), which the engine applies once per image and level
before running the returned ``method`` on the prepared arrays.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxreg.core.diff import index_gradient
from jaxreg.core.grid import Grid, Image
from jaxreg.core.pytree import register_fields
from jaxreg.core.sampling import map_coordinates
from jaxreg.optimize.objective import Objective, as_similarity
from jaxreg.transforms.compose import compose
from jaxreg.transforms.dense import (
    DisplacementField,
    VelocityField,
    exp_voxel_field,
    from_voxel_displacement,
    to_voxel_displacement,
)
from jaxreg.warp import sample_points
from jaxreg.warp.pyramid import smooth_array

__all__ = ["Gradient", "Greedy", "Optimizer", "Stopping"]


class Stopping(NamedTuple):
    """Stopping rule of :class:`Gradient`: relative loss change below ``tol`` over ``window`` iterations.

    A level stops at iteration ``k >= max(window, min_iterations)`` when
    ``|L[k - window] - L[k]| <= tol * |L[k - window]|``, or at its iteration cap.

    With ``return_best=True`` the level returns the parameters of its lowest loss, ``argmin_k L(p_k)`` over the
    iterates it evaluated, instead of the last iterate (ITK's ``ReturnBestParametersAndValue``): an optimiser
    that oscillates or drifts near the optimum (Adam with a constant step, a noisy sampled metric) then never
    ends a level worse than the best point it saw. The losses reported are unchanged (one per iteration).

    Attributes:
      tol: relative loss change that counts as converged.
      window: iterations over which the change is measured.
      min_iterations: iterations before the rule may stop a level.
      return_best: return the lowest-loss iterate (True) or the last one (False, the default).
    """

    tol: float = 1e-5
    window: int = 10
    min_iterations: int = 10
    return_best: bool = False


_UNIT = {
    "offset": "mm",
    "translation": "mm",
    "matrix": "lin",
    "rotation": "lin",
    "log_scale": "lin",
    "center": "frozen",
}


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """A value-hashed optax optimiser specification (equal specifications compile once).

    ``Optimizer("adam", 1e-2)`` builds ``optax.adam(1e-2)``; any optax alias name works, with extra keyword
    ``options`` as ``(("b1", 0.8),)``. With ``radius_mm`` set, parameters are scaled by their unit (for linear
    transforms): translations and offsets move by about ``learning_rate`` mm per iteration, matrix entries,
    rotations (radians) and log-scales by ``learning_rate / radius_mm`` (which moves a point at ``radius_mm``
    from the centre by about ``learning_rate`` mm), and rotation centres are frozen. ``radius_mm="auto"`` is
    resolved by :func:`~jaxreg.optimize.register` to a quarter of the fixed grid's diagonal extent.

    Attributes:
      name: optax alias (``"adam"``, ``"sgd"``, ``"adamw"``, ...).
      learning_rate: step size (mm per iteration for displacement-like parameters).
      radius_mm: ``None`` (one learning rate for all leaves), a radius in mm, or ``"auto"``.
      options: extra keyword arguments of the optax alias, a tuple of ``(name, value)`` pairs.
    """

    name: str = "adam"
    learning_rate: float = 1e-2
    radius_mm: float | str | None = None
    options: tuple = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not callable(getattr(optax, self.name, None)):
            raise ValueError(f"name: expected an optax optimiser name such as 'adam', got {self.name!r}")
        if not (isinstance(self.learning_rate, (int, float)) and self.learning_rate > 0):
            raise ValueError(f"learning_rate: expected a positive number, got {self.learning_rate!r}")
        if not (
            self.radius_mm is None
            or self.radius_mm == "auto"
            or (isinstance(self.radius_mm, (int, float)) and self.radius_mm > 0)
        ):
            raise ValueError(
                f"radius_mm: expected None, 'auto' or a positive number of mm, got {self.radius_mm!r}"
            )
        object.__setattr__(self, "options", tuple((str(k), v) for k, v in dict(self.options).items()))

    def resolved(self, grid: Grid) -> Optimizer:
        """This specification with ``radius_mm="auto"`` replaced by a quarter of ``grid``'s diagonal (mm)."""
        if self.radius_mm != "auto":
            return self
        return dataclasses.replace(self, radius_mm=round(float(0.25 * np.linalg.norm(grid.extent)), 1))

    def build(self) -> optax.GradientTransformation:
        """The optax gradient transformation."""
        if self.radius_mm == "auto":
            raise ValueError("radius_mm: 'auto' must be resolved against a grid first (Optimizer.resolved)")
        make = getattr(optax, self.name)
        kw = dict(self.options)
        if self.radius_mm is None:
            return make(self.learning_rate, **kw)

        def labels(t: Any) -> Any:
            names = getattr(t, "__dataclass_fields__", None)
            if names is None:
                return jax.tree_util.tree_map(lambda _: "mm", t)
            return type(t)(**{k: _UNIT.get(k, "lin") for k in names})

        return optax.multi_transform(
            {
                "mm": make(self.learning_rate, **kw),
                "lin": make(self.learning_rate / float(self.radius_mm), **kw),
                "frozen": optax.set_to_zero(),
            },
            labels,
        )


def _as_optimizer(opt: Any) -> Any:
    if isinstance(opt, (Optimizer, optax.GradientTransformation)):
        return opt
    raise TypeError(
        f"optimizer: expected a jaxreg.optimize.Optimizer (or an optax GradientTransformation), got {type(opt).__name__}"
    )


def _build(opt: Any) -> optax.GradientTransformation:
    return opt.build() if isinstance(opt, Optimizer) else opt


def _lattice_up(x: jax.Array, strides: tuple[int, ...], shape: tuple[int, ...]) -> jax.Array:
    """Separable linear interpolation from a lattice (every ``strides[d]``-th voxel) to ``shape`` voxels.

    Level voxel ``i`` along axis ``d`` takes ``(1 - t) x[j] + t x[j + 1]`` with ``j = floor(i / k_d)``,
    ``t = i / k_d - j``, the last lattice value repeated past the lattice's end. Static gathers only.
    """
    for d, (k, n) in enumerate(zip(strides, shape)):
        if k == 1:
            continue
        m = x.shape[d]
        pos = np.arange(n) / k
        j0 = np.minimum(np.floor(pos).astype(np.int32), m - 1)
        j1 = np.minimum(j0 + 1, m - 1)
        t = (pos - j0).astype(np.float32)
        t = np.where(j1 == j0, 0.0, t).astype(np.float32)
        bshape = [1] * x.ndim
        bshape[d] = n
        tt = jnp.asarray(t.reshape(bshape), x.dtype)
        x = jnp.take(x, jnp.asarray(j0), axis=d) * (1 - tt) + jnp.take(x, jnp.asarray(j1), axis=d) * tt
    return x


def _pull(moving: jax.Array, grid: Grid, points: jax.Array) -> jax.Array:
    """The one pull sampler (:func:`jaxreg.warp.sample_points`): linear, zero outside."""
    return sample_points(Image(moving, grid), points, order=1, mode="constant", cval=0.0)


# -- gradient-based optimisation --------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class Gradient:
    """Gradient descent on the transform's parameters with an optax optimiser.

    Each iteration: ``L(p) = sum_k w_k term_k`` of the moving image pulled at ``outer(p(x))``, then
    ``p <- p + optimizer.update(grad L(p))``, until :class:`Stopping` holds or the level's cap is reached.

    A pytree whose only leaves are the objective's weights (traced); the terms, optimiser and stopping rule
    are static. Equality and hashing are by configuration (terms, weights' values, optimiser, stopping).

    Attributes:
      objective: :class:`~jaxreg.optimize.Objective` (weighted terms).
      optimizer: :class:`Optimizer` specification (an optax ``GradientTransformation`` is accepted too, but
        then compiled kernels are cached by its identity only).
      stopping: :class:`Stopping` rule.
    """

    objective: Objective
    optimizer: Any = Optimizer("adam", 1e-2)
    stopping: Stopping = Stopping()

    def __post_init__(self) -> None:
        if not isinstance(self.objective, Objective):
            raise TypeError(
                f"objective: expected a jaxreg.optimize.Objective, got {type(self.objective).__name__}"
            )
        _as_optimizer(self.optimizer)
        if not isinstance(self.stopping, Stopping):
            raise TypeError(
                f"stopping: expected a jaxreg.optimize.Stopping, got {type(self.stopping).__name__}"
            )
        if not isinstance(self.stopping.return_best, (bool, np.bool_)):
            raise TypeError(f"stopping.return_best: expected a bool, got {self.stopping.return_best!r}")

    def _key(self) -> tuple:
        w = np.asarray(self.objective.weights)
        return (self.objective.terms, w.shape, w.tobytes(), self.optimizer, self.stopping)

    def __eq__(self, other: object) -> bool:
        return type(other) is Gradient and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def resolved(self, grid: Grid) -> Gradient:
        """With grid-dependent settings (``Optimizer(radius_mm="auto")``) resolved on the fixed ``grid``."""
        if isinstance(self.optimizer, Optimizer):
            return dataclasses.replace(self, optimizer=self.optimizer.resolved(grid))
        return self

    def preparation(self) -> tuple[Any, Gradient] | None:
        """The prepared-similarity protocol: ``(term, method on prepared images)``, or ``None``.

        When the objective's similarity has ``prepare`` (a prepared similarity such as ``features``), the engine
        calls ``term.prepare`` once per image and level and runs the returned method, whose similarity terms are
        ``term.prepared``, on the prepared arrays. Every similarity term must then be that one term.
        """
        sims = [t for t in self.objective.terms if t.kind == "similarity"]
        prepped = [t.fn for t in sims if getattr(t.fn, "prepare", None) is not None]
        if not prepped:
            return None
        term = prepped[0]
        if any(t.fn != term for t in sims):
            raise ValueError(
                "objective: a prepared similarity (e.g. features) must be the objective's only similarity term; "
                "its own options mix in other measures (features(nmi=...))"
            )
        terms = tuple(t._replace(fn=term.prepared) if t.kind == "similarity" else t for t in self.objective.terms)
        return term, dataclasses.replace(self, objective=Objective(terms, self.objective.weights))

    @property
    def default_model(self):
        """The transform model when a stage names none: an affine transform."""
        from jaxreg.optimize.models import Linear

        return Linear("affine")

    def loss_fn(self, fixed_grid: Grid, moving_grid: Grid) -> Callable:
        """``loss(method, params, fixed, moving, fixed_mask, moving_mask, outer) -> scalar`` on one level."""

        def loss(method, params, fixed, moving, fmask, mmask, outer):
            full = params if outer is None else compose(outer, params)
            pts = full.sample_grid(fixed_grid, fixed.dtype)
            warped = _pull(moving, moving_grid, pts)
            mask = fmask
            if mmask is not None:
                wm = _pull(mmask, moving_grid, pts)
                mask = wm if mask is None else mask * wm
            return method.objective(params, fixed, warped, mask, fixed_grid, outer)

        return loss

    def level_kernel(self, fixed_grid: Grid, moving_grid: Grid, iterations: int) -> Callable:
        """The pure per-level kernel (see the module docstring)."""
        loss = self.loss_fn(fixed_grid, moving_grid)
        vg = jax.value_and_grad(loss, argnums=1)
        opt = _build(self.optimizer)
        stop = self.stopping
        cap = int(iterations)

        def kernel(method, params, fixed, moving, fmask, mmask, outer):
            if cap == 0:  # a level with no iterations leaves the parameters as they are
                return params, jnp.zeros((0,), fixed.dtype), jnp.zeros((), jnp.int32), jnp.zeros((), bool)

            def cond(state):
                return ~state[4]

            def body(state):
                p, opt_state, losses, k, _, conv, best = state
                value, grads = vg(method, p, fixed, moving, fmask, mmask, outer)
                if best is not None:  # (lowest loss so far, its parameters): the iterate p was evaluated at
                    better = value < best[0]  # a NaN loss is never better
                    best = (jnp.where(better, value, best[0]).astype(best[0].dtype),
                            jax.tree_util.tree_map(lambda a, b: jnp.where(better, a, b), p, best[1]))  # fmt: skip
                updates, opt_state = opt.update(grads, opt_state, p)
                p = optax.apply_updates(p, updates)
                losses = losses.at[k].set(value)
                past = losses[jnp.maximum(k - stop.window, 0)]
                rel = jnp.abs(past - value) <= stop.tol * jnp.abs(past)
                conv = (k >= max(stop.window, stop.min_iterations)) & rel & jnp.isfinite(value)
                k = k + 1
                return p, opt_state, losses, k, conv | (k >= cap) | ~jnp.isfinite(value), conv, best

            state = (
                params,
                opt.init(params),
                jnp.full((cap,), jnp.nan, fixed.dtype),
                jnp.zeros((), jnp.int32),
                jnp.asarray(cap <= 0),
                jnp.zeros((), bool),
                (jnp.asarray(jnp.inf, fixed.dtype), params) if stop.return_best else None,
            )
            p, _, losses, k, _, conv, best = jax.lax.while_loop(cond, body, state)
            if best is not None:  # the start itself when no iterate had a finite loss
                p = best[1]
            return p, losses, k, conv

        return kernel


register_fields(Gradient, ("objective",))


# -- greedy diffeomorphic registration --------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Greedy:
    """Greedy (demons-like, SyN-like) registration of a dense field with smoothed metric forces.

    Autodiff through a whole scaling-and-squaring integration is exact but costly. Greedy methods instead take,
    at each iteration, the *force*: the derivative of the similarity ``S(F, W)`` with respect to the sampling
    position of each fixed voxel, ``dS/dW(x) grad W(x)`` (the chain rule through the pull), smooth it ("fluid"),
    scale it to a step, add it to the parameters and smooth them ("diffusion"). Each iteration::

        delta = -G_{sigma_update} * force            (RMS scaled to step / 3, each voxel clipped at step)
        v    <- G_{sigma_field} * (v + delta)        (update="svf": log-domain, Vercauteren et al. 2008)

    so every iterate ``exp(v)`` is a diffeomorphism up to the scaling-and-squaring discretisation. With
    ``symmetric=True`` (SyN, Avants et al. 2008) both images are warped half way (``F o exp(-v/2)``,
    ``M o exp(v/2)``) and the force is the average of both sides; the transform is still ``exp(v)``.
    ``force="demons"`` replaces the metric force by Thirion's ``(W - F) grad W / (|grad W|^2 + (W - F)^2)``
    (Thirion 1998). The displacement updates ``"additive"`` (``u <- G_f * (u + delta)``), ``"compositive"``
    (``u <- G_f * (u o (id + delta))``) and ``"diffeomorphic"`` (``u <- G_f * (u o exp(delta))``, Vercauteren et
    al. 2009) optimise a :class:`~jaxreg.transforms.DisplacementField` instead. ``outer`` must be linear.

    All settings are static; the method has no traced leaves.

    Attributes:
      similarity: ``sim(fixed, warped, mask=None) -> scalar`` (lower is better) or a registry spec such as
        ``"lncc(window=5)"``; unused by ``force="demons"`` (whose loss history is the mean squared difference).
      step: maximum update per iteration, voxels of the level grid.
      sigma_update: Gaussian sigma (voxels) of the update smoothing.
      sigma_field: Gaussian sigma (voxels) of the field smoothing.
      symmetric: mid-space (SyN-like) forces; needs ``update="svf"``.
      exp_steps: scaling-and-squaring steps of ``exp(v)`` (the most, with ``exp_tolerance``; the result's
        :class:`~jaxreg.transforms.VelocityField` always integrates with ``exp_steps``).
      exp_tolerance: the iterations' ``exp(+-v/2)`` use the fewest squarings (at most ``exp_steps``) for which
        the scaled velocity moves no voxel by more than this many voxels of the level grid (ITK's automatic
        rule, :func:`~jaxreg.transforms.exp_voxel_field`); 0: always ``exp_steps``. Scaling and squaring is
        most of an iteration, and early iterations and coarse levels have small fields: 0.5 made the default
        pipeline 25-30 % faster on brain2d with NCC and SDlogJ unchanged to 3e-4.
      step_decay: the step falls linearly over each level's iterations from ``step`` to ``step_decay * step``
        (1: constant, the default). The fixed-RMS update never shrinks by itself, so the last iterates dither by
        about ``step / 3`` voxels; a decay trades overlap for regularity. brain3d subj2 -> subj1, deformable
        stage (``benchmarks/greedy_sweep.py``): constant Dice 0.7852 / SDlogJ 0.220; ``step_decay=0.25`` 0.7708 /
        0.162; ``step=1, step_decay=0.25`` 0.7845 / 0.213, at equal time.
      force: ``"metric"`` or ``"demons"``.
      field_spacing: coarsest lattice spacing (mm) of the velocity (``update="svf"`` only; 0: every voxel). On
        a level whose voxels are finer than this, ``v`` lives on every ``k_d``-th voxel along axis ``d``
        (``k_d = round(field_spacing / spacing_d)``, at least 1): ``exp(v)`` is integrated on the lattice and
        interpolated (separable linear) to the level grid, where the images are pulled and the force is
        computed and smoothed, and the update is the smoothed force sampled on the lattice. The fine level
        then costs a fraction of a full-resolution field (scaling and squaring is most of an iteration) for
        a smoother field ("fields at reduced resolution"). ``sigma_field`` stays in voxels of the level grid.
      update: ``"svf"``, ``"additive"``, ``"compositive"`` or ``"diffeomorphic"``.
    """

    uses_moving_mask: ClassVar[bool] = False  # the force is weighted by the fixed mask only

    similarity: Any = "lncc(window=5)"
    step: float = 0.5
    sigma_update: float = 1.732
    sigma_field: float = 0.707
    symmetric: bool = True
    exp_steps: int = 6
    exp_tolerance: float = 0.5
    step_decay: float = 1.0
    force: str = "metric"
    update: str = "svf"
    field_spacing: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "similarity", as_similarity(self.similarity, "similarity"))
        if self.force not in ("metric", "demons"):
            raise ValueError(f"force: expected 'metric' or 'demons', got {self.force!r}")
        if self.update not in ("svf", "additive", "compositive", "diffeomorphic"):
            raise ValueError(
                f"update: expected 'svf', 'additive', 'compositive' or 'diffeomorphic', got {self.update!r}"
            )
        if self.symmetric and self.update != "svf":
            raise ValueError("symmetric: the symmetric (mid-space) variant needs update='svf'")
        for name in ("step", "sigma_update", "sigma_field"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and np.isfinite(v) and v >= (0 if name != "step" else 1e-12)):
                raise ValueError(
                    f"{name}: expected a {'positive' if name == 'step' else 'non-negative'} number of voxels, got {v!r}"
                )
        if not isinstance(self.exp_steps, (int, np.integer)) or self.exp_steps < 0:
            raise ValueError(f"exp_steps: expected a non-negative int, got {self.exp_steps!r}")
        sd = self.step_decay
        if isinstance(sd, bool) or not (isinstance(sd, (int, float)) and np.isfinite(sd) and 0 <= sd <= 1):
            raise ValueError(f"step_decay: expected a fraction in [0, 1] of the step, got {sd!r}")
        for name, unit in (("exp_tolerance", "voxels"), ("field_spacing", "mm")):
            x = getattr(self, name)
            if isinstance(x, bool) or not (isinstance(x, (int, float)) and np.isfinite(x) and x >= 0):
                raise ValueError(f"{name}: expected a non-negative number of {unit}, got {x!r}")
        if self.field_spacing > 0 and self.update != "svf":
            raise ValueError("field_spacing: a velocity lattice needs update='svf'")

    def lattice_strides(self, grid: Grid) -> tuple[int, ...]:
        """Per-axis stride ``k_d = max(1, round(field_spacing / spacing_d))`` of the velocity lattice on ``grid``."""
        if self.field_spacing <= 0:
            return (1,) * grid.ndim
        return tuple(max(1, round(self.field_spacing / float(sp))) for sp in grid.spacing)

    def resolved(self, grid: Grid) -> Greedy:
        """Nothing to resolve (all settings are in voxels of each level)."""
        return self

    def preparation(self) -> tuple[Any, Greedy] | None:
        """The prepared-similarity protocol (see :meth:`Gradient.preparation`): ``(term, method)`` or ``None``."""
        if getattr(self.similarity, "prepare", None) is None or self.force == "demons":
            return None
        return self.similarity, dataclasses.replace(self, similarity=self.similarity.prepared)

    @property
    def default_model(self):
        """A velocity field (``update="svf"``) or a displacement field on the fixed grid."""
        from jaxreg.optimize.models import Field

        return Field("velocity" if self.update == "svf" else "displacement", steps=self.exp_steps)

    def level_kernel(self, fixed_grid: Grid, moving_grid: Grid, iterations: int) -> Callable:
        """The pure per-level kernel (see the module docstring); ``outer`` must be linear or ``None``."""
        n = fixed_grid.ndim
        fg = fixed_grid
        cap = int(iterations)
        opts = self
        sim = self.similarity
        strides = self.lattice_strides(fixed_grid)
        lattice = any(k > 1 for k in strides)
        kvec = np.asarray(strides, np.float32)

        def to_lattice(x):  # level-grid vectors (voxels) -> lattice samples in lattice voxels
            return x[tuple(slice(None, None, k) for k in strides)] / kvec.astype(x.dtype)

        def from_lattice(x):  # lattice vectors (lattice voxels) -> level grid (voxels)
            return _lattice_up(x * kvec.astype(x.dtype), strides, fg.shape)

        def exp_level(v, sign):  # displacement (level voxels) of exp(sign v) on the level grid
            u = exp_voxel_field(sign * v, opts.exp_steps, tolerance=opts.exp_tolerance)
            return from_lattice(u) if lattice else u

        def chain(dimage, image):
            # dS/dposition = sum over channels of dS/dW_c * grad W_c (index units)
            g = index_gradient(image, n)
            return (dimage[..., None] * g).sum(axis=-2) if image.ndim > n else dimage[..., None] * g

        def force_of(fixed_w, moving_w, mask):
            if opts.force == "demons":
                if moving_w.ndim > n:
                    raise ValueError("force: 'demons' needs scalar images; use force='metric' with channels")
                diff = moving_w - fixed_w
                gw = index_gradient(moving_w, n)
                denom = jnp.sum(gw**2, -1) + diff**2
                f = diff[..., None] * gw / jnp.where(denom > 1e-9, denom, 1.0)[..., None]
                f = jnp.where((denom > 1e-9)[..., None], f, 0.0)
                if mask is not None:
                    f = f * mask[..., None]
                return f, jnp.mean(diff**2)
            val, (dfix, dmov) = jax.value_and_grad(sim, argnums=(0, 1))(fixed_w, moving_w, mask)
            force = chain(dmov, moving_w)
            if opts.symmetric:
                force = 0.5 * (force - chain(dfix, fixed_w))
            return force, val

        def kernel(method, params, fixed, moving, fmask, mmask, outer):
            del method
            if mmask is not None:
                raise ValueError(
                    "moving_mask: the greedy method weights the similarity by the fixed mask only"
                )
            dtype = fixed.dtype
            index = fg.index_coords(dtype)
            lin = None if outer is None else outer.linear_part()
            if outer is not None and lin is None:
                raise ValueError("outer: the greedy method needs a linear outer transform (the linear stage)")
            h = jnp.eye(n + 1, dtype=dtype) if lin is None else lin.homogeneous().astype(dtype)
            # fixed index -> fixed world -> outer -> moving world: one matrix applied to index + u
            m = h @ jnp.asarray(fg.affine, dtype)

            def sample_moving(u):
                pts = (index + u) @ m[:n, :n].T + m[:n, n]
                return _pull(moving, moving_grid, pts)

            def apply_update(v, delta):
                if opts.update in ("svf", "additive"):
                    new = v + delta
                else:
                    step = delta if opts.update == "compositive" else exp_voxel_field(delta, 4)
                    new = step + map_coordinates(v, index + step, order=1, mode="nearest")
                return smooth_array(new, tuple(opts.sigma_field / k for k in strides))

            def body(v, k):
                if opts.symmetric:
                    mw = sample_moving(exp_level(v, 0.5))
                    fw = map_coordinates(fixed, index + exp_level(v, -0.5), order=1, mode="nearest")
                else:
                    u = exp_level(v, 1.0) if opts.update == "svf" else v
                    mw, fw = sample_moving(u), fixed
                force, val = force_of(fw, mw, fmask)
                delta = -smooth_array(force, (opts.sigma_update,) * n)
                # robust step scaling: the RMS update over moving voxels becomes step / 3, then each voxel's
                # update is clipped at step (a max-norm would let a few outliers freeze everything else)
                mag2 = jnp.sum(delta**2, -1)
                active = mag2 > 1e-6 * jnp.max(mag2)
                rms = jnp.sqrt(jnp.sum(jnp.where(active, mag2, 0.0)) / jnp.maximum(jnp.sum(active), 1))
                step = opts.step
                if opts.step_decay != 1.0 and cap > 1:  # linear from step to step_decay * step over the level
                    step = step * (1.0 - (1.0 - opts.step_decay) * k.astype(dtype) / (cap - 1))
                delta = delta * (step / (3.0 * jnp.maximum(rms, 1e-20)))
                mag = jnp.sqrt(jnp.sum(delta**2, -1, keepdims=True))
                delta = delta * jnp.minimum(1.0, step / jnp.maximum(mag, 1e-20))
                if lattice:
                    delta = to_lattice(delta)
                return apply_update(v, delta), val

            field = params.velocity if opts.update == "svf" else params.displacement
            v0 = to_voxel_displacement(field, fg)
            v, hist = jax.lax.scan(body, to_lattice(v0) if lattice else v0, jnp.arange(cap, dtype=jnp.int32))
            mm = from_voxel_displacement(from_lattice(v) if lattice else v, fg)
            out = VelocityField(mm, fg, params.steps) if opts.update == "svf" else DisplacementField(mm, fg)
            return out, hist.astype(dtype), jnp.asarray(cap, jnp.int32), jnp.zeros((), bool)

        return kernel


register_fields(Greedy, ())
