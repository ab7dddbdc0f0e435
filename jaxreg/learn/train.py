"""Training infrastructure for Flax NNX registration networks: pure jitted steps, data parallelism, checkpoints.

The network is split once into a static graph definition and its parameters,
``graphdef, params = nnx.split(model, nnx.Param)`` (:func:`split_model`), and every step is a pure function of
pytrees that merges them back inside ``jit``:

* :func:`make_optimizer` builds an Adam/AdamW optax chain with an optional schedule and gradient clipping.
* :func:`make_train_step` turns ``loss_fn(model, batch, key) -> (loss, metrics)`` (and an optional on-device
  ``augment(key, batch) -> batch``) into ``train_step(params, opt_state, batch, key) -> (params, opt_state,
  metrics)``; :func:`make_eval_step` turns ``eval_fn(model, batch) -> metrics`` into
  ``eval_step(params, batch) -> metrics``.
* Data parallelism uses :mod:`jax.sharding`: a 1D :class:`~jax.sharding.Mesh` over ``jax.devices()`` with the
  axis ``"data"`` (:func:`jaxreg.parallel.make_mesh`, re-exported here with
  :func:`~jaxreg.parallel.initialize_distributed`); parameters and optimiser state are replicated (``P()``) and every batch
  array is split along its leading axis (``P("data")``, :func:`shard_batch`). One device is the same code path.
* :func:`fit` is the stateful edge: it feeds batches, derives the key of step ``s`` as
  ``jax.random.fold_in(key, s)`` (so a resumed run follows the uninterrupted trajectory), evaluates, logs to
  ``workdir/metrics.csv`` and ``workdir/metrics.png``, and checkpoints with orbax into ``workdir/checkpoints``
  (latest ``max_to_keep``) and ``workdir/best`` (the best by a validation metric).
* :func:`export_model` writes a trained network as a small folder (``model.json`` + ``params.npz``, float32);
  such folders under ``jaxreg/models/<name>/`` ship with the package (:func:`available_models`).
  :func:`load_model` rebuilds a trained network from a work directory, an exported folder or a shipped name.

Step numbering: update ``s = 0, 1, ...`` consumes the ``s``-th batch and the key ``fold_in(key, s)``; checkpoints,
log rows and history entries are labelled with the number of completed updates ``s + 1``.
"""

from __future__ import annotations

import csv
import dataclasses
import errno
import io
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxreg._models import available_models, shipped_model
from jaxreg.parallel import DATA_AXIS, initialize_distributed, make_mesh

__all__ = [
    "FitResult",
    "available_models",
    "export_model",
    "fit",
    "initialize_distributed",
    "load_model",
    "make_eval_step",
    "make_mesh",
    "make_optimizer",
    "make_train_step",
    "resolve_model",
    "shard_batch",
    "split_model",
]

Batch = Mapping[str, Any]
Metrics = dict[str, jax.Array]
LossFn = Callable[[nnx.Module, Batch, jax.Array], tuple[jax.Array, Mapping[str, jax.Array]]]
AugmentFn = Callable[[jax.Array, Batch], Batch]
EvalFn = Callable[[nnx.Module, Batch], Mapping[str, jax.Array]]

_SCHEDULES = ("constant", "cosine", "warmup_cosine")
_PLOT_INTERVAL_S = (
    30.0  # metrics.png is re-drawn at a log point at most this often, and after the last update
)


# --------------------------------------------------------------------------------------------------------------
# optimiser
# --------------------------------------------------------------------------------------------------------------


def make_optimizer(
    learning_rate: float = 1e-4,
    *,
    schedule: str = "constant",
    total_steps: int | None = None,
    warmup_steps: int = 0,
    clip_norm: float | None = None,
    weight_decay: float = 0.0,
) -> optax.GradientTransformation:
    """Adam (or AdamW when ``weight_decay > 0``) with an optional learning-rate schedule and gradient clipping.

    The chain is ``clip_by_global_norm(clip_norm)`` (if given) followed by ``adam``/``adamw`` with the schedule
    ``lr(t)``:

    * ``"constant"``: ``lr(t) = learning_rate``; a positive ``warmup_steps`` adds a linear ramp from 0.
    * ``"cosine"``: ``lr(t) = learning_rate * (1 + cos(pi t / total_steps)) / 2``, then 0.
    * ``"warmup_cosine"``: linear ramp from 0 over ``warmup_steps``, then cosine decay to 0 at ``total_steps``.

    Args:
      learning_rate: peak learning rate (> 0).
      schedule: ``"constant"``, ``"cosine"`` or ``"warmup_cosine"``.
      total_steps: number of updates; required by the cosine schedules.
      warmup_steps: number of linear warm-up updates (>= 0, < ``total_steps`` for the cosine schedules).
      clip_norm: clip the gradient's global L2 norm to this value (> 0); ``None`` disables clipping.
      weight_decay: decoupled weight decay (AdamW, Loshchilov & Hutter 2019); 0 gives plain Adam.

    Returns:
      An optax gradient transformation.

    Raises:
      ValueError: an argument is out of range, or ``total_steps`` is missing for a cosine schedule.
    """
    if not (isinstance(learning_rate, (int, float)) and learning_rate > 0):
        raise ValueError(f"learning_rate must be a positive number, got {learning_rate!r}")
    if schedule not in _SCHEDULES:
        raise ValueError(f"schedule must be one of {_SCHEDULES}, got {schedule!r}")
    if not (isinstance(warmup_steps, int) and warmup_steps >= 0):
        raise ValueError(f"warmup_steps must be a non-negative int, got {warmup_steps!r}")
    if clip_norm is not None and not clip_norm > 0:
        raise ValueError(f"clip_norm must be positive or None, got {clip_norm!r}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    lr: float | optax.Schedule
    if schedule == "constant":
        lr = learning_rate
        if warmup_steps > 0:
            lr = optax.join_schedules(
                [
                    optax.linear_schedule(0.0, learning_rate, warmup_steps),
                    optax.constant_schedule(learning_rate),
                ],
                [warmup_steps],
            )
    else:
        if not (isinstance(total_steps, int) and total_steps > 0):
            raise ValueError(
                f"total_steps must be a positive int for schedule={schedule!r}, got {total_steps!r}"
            )
        if schedule == "cosine":
            lr = optax.cosine_decay_schedule(learning_rate, total_steps)
        else:
            if warmup_steps >= total_steps:
                raise ValueError(f"warmup_steps ({warmup_steps}) must be < total_steps ({total_steps})")
            lr = optax.warmup_cosine_decay_schedule(
                0.0, learning_rate, warmup_steps, total_steps, end_value=0.0
            )
    parts = []
    if clip_norm is not None:
        parts.append(optax.clip_by_global_norm(float(clip_norm)))
    parts.append(optax.adamw(lr, weight_decay=weight_decay) if weight_decay > 0 else optax.adam(lr))
    return optax.chain(*parts)


# --------------------------------------------------------------------------------------------------------------
# model splitting, sharding
# --------------------------------------------------------------------------------------------------------------


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State]:
    """Split a network into its static graph definition and its parameters, ``nnx.split(model, nnx.Param)``.

    Args:
      model: a Flax NNX module whose only state is ``nnx.Param`` variables.

    Returns:
      ``(graphdef, params)``; ``nnx.merge(graphdef, params)`` rebuilds the network.

    Raises:
      TypeError: ``model`` is not an ``nnx.Module``.
      ValueError: the model holds state other than parameters (batch statistics, stored RNG streams, ...),
        which the pure training steps would silently freeze.
    """
    if not isinstance(model, nnx.Module):
        raise TypeError(f"model must be a flax.nnx.Module, got {type(model).__name__}")
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    if jax.tree.leaves(rest):
        paths = [".".join(map(str, path)) for path, _ in nnx.to_flat_state(rest)]
        raise ValueError(
            "model must hold only nnx.Param state (the training steps are pure functions of the parameters); "
            f"found other state at {paths[:8]}. Use deterministic layers and pass randomness through the loss "
            "function's `key`."
        )
    return graphdef, params


def _replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def _data_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def _check_batch(batch: Batch, mesh: Mesh, *, name: str = "batch") -> int:
    """Validate a batch dict; return its (process-local) batch size."""
    if not isinstance(batch, Mapping) or not batch:
        raise TypeError(
            f"{name} must be a non-empty dict of arrays with a leading batch axis, got {type(batch)}"
        )
    sizes = {}
    for k, v in batch.items():
        shape = np.shape(v)
        if len(shape) == 0:
            raise ValueError(f"{name}[{k!r}] must have a leading batch axis, got a scalar")
        sizes[k] = shape[0]
    if len(set(sizes.values())) != 1:
        raise ValueError(f"{name}: all arrays must share the leading batch size, got {sizes}")
    size = next(iter(sizes.values()))
    local = len(mesh.local_devices)
    if size % local != 0:
        raise ValueError(
            f"{name}: batch size {size} must be divisible by the number of local devices ({local}) for data "
            "parallelism; choose a batch size that is a multiple of it"
        )
    return size


def shard_batch(batch: Batch, *, mesh: Mesh | None = None) -> dict[str, jax.Array]:
    """Place a process-local batch on the mesh, split along its leading axis (``P("data")``).

    With several processes each contributes its local batch and the global batch is their concatenation
    (``jax.make_array_from_process_local_data``).

    Args:
      batch: dict of arrays, each of shape ``(B, ...)`` with ``B`` divisible by the number of local devices.
      mesh: the mesh; default :func:`make_mesh`.

    Returns:
      The same dict of global ``jax.Array`` values sharded over ``"data"``.

    Raises:
      TypeError, ValueError: ``batch`` is not a dict of arrays with one common, divisible leading size.
    """
    mesh = make_mesh() if mesh is None else mesh
    _check_batch(batch, mesh)
    sharding = _data_sharding(mesh)
    out = {}
    for k, v in batch.items():
        if isinstance(v, jax.Array) and v.sharding == sharding:
            out[k] = v
        elif jax.process_count() == 1:
            out[k] = jax.device_put(v, sharding)
        else:
            out[k] = jax.make_array_from_process_local_data(sharding, np.asarray(v))
    return out


def _check_graphdef(graphdef: Any) -> None:
    if not isinstance(graphdef, nnx.GraphDef):
        raise TypeError(
            f"graphdef must be an nnx.GraphDef (from split_model / nnx.split), got {type(graphdef)}"
        )


def _scalar_metrics(metrics: Any, name: str) -> dict[str, jax.Array]:
    if not isinstance(metrics, Mapping):
        raise TypeError(f"{name} must return a dict of scalar metrics, got {type(metrics).__name__}")
    out = {}
    for k, v in metrics.items():
        v = jnp.asarray(v)
        if v.shape != ():
            raise ValueError(f"{name}: metric {k!r} must be a scalar, got shape {v.shape}")
        out[str(k)] = v.astype(jnp.float32)
    return out


# --------------------------------------------------------------------------------------------------------------
# steps
# --------------------------------------------------------------------------------------------------------------


def make_train_step(
    graphdef: nnx.GraphDef,
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    *,
    augment: AugmentFn | None = None,
    mesh: Mesh | None = None,
) -> Callable[[nnx.State, optax.OptState, Batch, jax.Array], tuple[nnx.State, optax.OptState, Metrics]]:
    """A jitted, data-parallel optimisation step.

    ``train_step(params, opt_state, batch, key)`` splits ``key`` into ``(key_augment, key_loss)``, computes
    ``batch = augment(key_augment, batch)`` on device (if given), merges ``model = nnx.merge(graphdef, params)``,
    differentiates ``loss_fn(model, batch, key_loss) -> (loss, metrics)`` with respect to ``params`` and applies
    the optimiser. ``params`` and ``opt_state`` are donated (do not reuse the arrays passed in); they are
    replicated over ``mesh`` and the batch is split over its ``"data"`` axis, so XLA averages the gradient
    across devices. The function is traced once per batch shape/dtype signature.

    Args:
      graphdef: static graph of the network (:func:`split_model`).
      loss_fn: ``loss_fn(model, batch, key) -> (loss, metrics)``: ``batch`` is a dict of arrays with a leading
        batch axis, ``loss`` a scalar (lower is better), ``metrics`` a dict of scalars.
      optimizer: optax transformation (:func:`make_optimizer`).
      augment: optional ``augment(key, batch) -> batch`` (synthesis or augmentation on device).
      mesh: device mesh (:func:`make_mesh`); default all devices.

    Returns:
      ``train_step(params, opt_state, batch, key) -> (params, opt_state, metrics)``; ``metrics`` holds
      ``"loss"`` and the loss function's metrics, as float32 scalars. ``batch`` may be NumPy; its leading size
      must be divisible by the number of local devices.

    Raises:
      TypeError: ``graphdef`` is not an ``nnx.GraphDef`` or a function is not callable.
    """
    _check_graphdef(graphdef)
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    if augment is not None and not callable(augment):
        raise TypeError(f"augment must be callable or None, got {type(augment).__name__}")
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(f"optimizer must be an optax.GradientTransformation, got {type(optimizer).__name__}")
    mesh = make_mesh() if mesh is None else mesh
    rep, data = _replicated(mesh), _data_sharding(mesh)

    def step(params, opt_state, batch, key):
        key_augment, key_loss = jax.random.split(key)
        if augment is not None:
            batch = augment(key_augment, batch)

        def objective(p):
            loss, metrics = loss_fn(nnx.merge(graphdef, p), batch, key_loss)
            loss = jnp.asarray(loss)
            if loss.shape != ():
                raise ValueError(f"loss_fn must return a scalar loss, got shape {loss.shape}")
            return loss, metrics

        (loss, metrics), grads = jax.value_and_grad(objective, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        out = {"loss": loss.astype(jnp.float32), **_scalar_metrics(metrics, "loss_fn")}
        return params, opt_state, out

    jitted = jax.jit(
        step,
        in_shardings=(rep, rep, data, rep),
        out_shardings=(rep, rep, rep),
        donate_argnums=(0, 1),
    )

    def train_step(params, opt_state, batch, key):
        _check_batch(batch, mesh)
        # committing every input to its mesh sharding first keeps the traced types (which carry the sharding)
        # identical between the first call and later calls: no retrace; a no-op for arrays already placed
        params, opt_state, key = jax.device_put((params, opt_state, key), rep)
        return jitted(params, opt_state, shard_batch(batch, mesh=mesh), key)

    train_step.__doc__ = "train_step(params, opt_state, batch, key) -> (params, opt_state, metrics)"
    train_step.jitted = jitted  # type: ignore[attr-defined]
    return train_step


def make_eval_step(
    graphdef: nnx.GraphDef, eval_fn: EvalFn, *, mesh: Mesh | None = None
) -> Callable[[nnx.State, Batch], Metrics]:
    """A jitted, data-parallel evaluation step ``eval_step(params, batch) -> metrics``.

    Args:
      graphdef: static graph of the network (:func:`split_model`).
      eval_fn: ``eval_fn(model, batch) -> dict of scalars`` (e.g. ``{"dice": ...}``, natural units).
      mesh: device mesh (:func:`make_mesh`); default all devices.

    Returns:
      ``eval_step(params, batch) -> metrics`` (float32 scalars); ``batch`` as in :func:`make_train_step`.
    """
    _check_graphdef(graphdef)
    if not callable(eval_fn):
        raise TypeError(f"eval_fn must be callable, got {type(eval_fn).__name__}")
    mesh = make_mesh() if mesh is None else mesh
    rep, data = _replicated(mesh), _data_sharding(mesh)

    def step(params, batch):
        return _scalar_metrics(eval_fn(nnx.merge(graphdef, params), batch), "eval_fn")

    jitted = jax.jit(step, in_shardings=(rep, data), out_shardings=rep)

    def eval_step(params, batch):
        _check_batch(batch, mesh)
        return jitted(jax.device_put(params, rep), shard_batch(batch, mesh=mesh))

    eval_step.__doc__ = "eval_step(params, batch) -> metrics"
    eval_step.jitted = jitted  # type: ignore[attr-defined]
    return eval_step


# --------------------------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------------------------


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    # temporary file in the same folder, fsync, rename (jaxreg.io.atomic_write): never a half-written file
    from jaxreg.io import atomic_write

    atomic_write(path, write)


def _write_text(path: Path, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    _atomic_write(path, write)


def _model_config(model: nnx.Module) -> Any:
    config = getattr(model, "config", None)
    if config is None:
        return None
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    elif hasattr(config, "to_dict"):
        config = config.to_dict()
    elif hasattr(config, "_asdict"):
        config = config._asdict()
    return config


def _json_text(obj: Any, name: str) -> str:
    try:
        return json.dumps(obj, indent=2, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be JSON-serialisable (dicts, lists, str, numbers): {e}") from None


class _CsvLog:
    """``metrics.csv``: one row per log point; complete lines only, appended with fsync."""

    def __init__(self, path: Path, start: int, write: bool):
        self.path = path
        self.write = write
        self.header: list[str] | None = None
        self.rows: list[dict[str, str]] = []
        if path.exists():
            text = path.read_text(encoding="utf-8")
            if text and not text.endswith("\n"):  # a killed writer left a partial line
                text = text[: text.rfind("\n") + 1]
            reader = csv.DictReader(io.StringIO(text))
            self.header = list(reader.fieldnames or []) or None
            # rows logged after the checkpoint we resume from are recomputed: drop them
            self.rows = [r for r in reader if r.get("step") and int(float(r["step"])) <= start]
            if write:
                _write_text(path, self._render(self.header, self.rows) if self.header else "")

    @staticmethod
    def _render(header: list[str], rows: list[Mapping[str, Any]]) -> str:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=header, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        return buf.getvalue()

    def append(self, row: dict[str, Any]) -> None:
        row = {k: (f"{v:.8g}" if isinstance(v, float) else str(v)) for k, v in row.items()}
        if self.header is None:
            self.header = list(row)
            if self.write:
                _write_text(self.path, self._render(self.header, []))
        self.rows.append(row)
        if self.write:
            buf = io.StringIO()
            csv.DictWriter(buf, fieldnames=self.header, extrasaction="ignore", lineterminator="\n").writerow(
                row
            )
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
            try:
                os.write(fd, buf.getvalue().encode("utf-8"))  # one write call: no half line on a kill
                os.fsync(fd)
            finally:
                os.close(fd)


def _plot(path: Path, header: list[str] | None, rows: list[dict[str, str]]) -> None:
    """Re-draw ``metrics.png`` (skipped when matplotlib is missing)."""
    if not header or not rows:
        return
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except Exception:  # noqa: BLE001 - plotting is optional
        return
    cols = [c for c in header if c not in ("step", "time_s")]
    steps = np.array([float(r["step"]) for r in rows])
    fig, axes = plt.subplots(1, max(len(cols), 1), figsize=(3.2 * max(len(cols), 1), 2.8), squeeze=False)
    for ax, c in zip(axes[0], cols):
        vals = np.array([float(r[c]) if r.get(c) not in (None, "") else np.nan for r in rows])
        ok = np.isfinite(vals)
        ax.plot(steps[ok], vals[ok], marker="." if ok.sum() < 50 else None)
        ax.set_title(c, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.18, top=0.88, wspace=0.35)
    try:
        _atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=80))
    finally:
        plt.close(fig)


# --------------------------------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------------------------------


def _manager(directory: Path, **options: Any) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        directory.absolute(),
        options=ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False, **options),
    )


def _abstract(tree: Any, sharding: jax.sharding.Sharding) -> Any:
    def leaf(x):
        return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)

    return jax.tree.map(leaf, tree)


def _restore(mgr: ocp.CheckpointManager, step: int, sharding: jax.sharding.Sharding, **targets: Any) -> Any:
    args = {name: ocp.args.StandardRestore(_abstract(t, sharding)) for name, t in targets.items()}
    return mgr.restore(step, args=ocp.args.Composite(**args))


# --------------------------------------------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------------------------------------------


class FitResult(NamedTuple):
    """Result of :func:`fit`.

    Attributes:
      model: the trained network, merged from the final parameters (uncommitted single-device arrays).
      history: ``{"train": {...}, "eval": {...}}``; ``history["train"]`` maps ``"step"`` (completed updates)
        and ``"loss"`` plus every training metric to NumPy arrays with one entry per update run in this call;
        ``history["eval"]`` maps ``"step"`` and every validation metric to one entry per evaluation.
    """

    model: nnx.Module
    history: dict[str, dict[str, np.ndarray]]


def _check_positive_int(value: Any, name: str, *, allow_zero: bool = False) -> None:
    if (
        not isinstance(value, (int, np.integer))
        or isinstance(value, bool)
        or value < (0 if allow_zero else 1)
    ):
        raise ValueError(
            f"{name} must be a {'non-negative' if allow_zero else 'positive'} int, got {value!r}"
        )


def fit(
    model: nnx.Module,
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    train_data: Callable[[int], Iterable[Batch]],
    *,
    steps: int,
    key: jax.Array,
    workdir: str | os.PathLike,
    augment: AugmentFn | None = None,
    eval_fn: EvalFn | None = None,
    eval_data: Callable[[], Iterable[Batch]] | None = None,
    eval_every: int = 100,
    save_every: int = 100,
    log_every: int | None = None,
    max_to_keep: int = 3,
    best_metric: str = "dice",
    best_mode: str = "max",
    resume: bool = True,
    progress: bool = True,
    metadata: Mapping[str, Any] | None = None,
) -> FitResult:
    """Train a network for ``steps`` updates with checkpointing, validation, logging and resumption.

    ``key`` is the root PRNG key: update ``s`` uses ``jax.random.fold_in(key, s)``, so a run resumed from a
    checkpoint at step ``n`` (with ``train_data(n)`` yielding the same batches) reproduces the uninterrupted run.

    Files in ``workdir``:

    * ``checkpoints/<step>``: orbax checkpoints of ``params`` and ``opt_state`` every ``save_every`` updates and
      at the end (the newest ``max_to_keep`` are kept); the newest is restored when ``resume`` is true.
    * ``best/<step>``: the parameters at the evaluation with the best ``best_metric`` (``best_mode`` ``"max"``
      for Dice, ``"min"`` for losses).
    * ``metrics.csv``: one row per log point (every ``log_every`` updates, every evaluation and the last
      update) with columns ``step``, ``time_s`` (wall seconds since this call started), ``train_loss`` and
      ``train_<name>`` in sorted order (means over the updates since the previous row), and ``val_<name>``
      (empty when not evaluated at that step).
      Rows are whole lines appended with fsync; on resume, rows after the restored step are dropped.
    * ``metrics.png``: the columns plotted against ``step`` (when matplotlib is installed), re-drawn at a log
      point at most every 30 s and after the last update.
    * ``model.json``: ``{"config": model.config, "metadata": metadata}`` (``config`` is ``None`` when the model
      has no ``config`` attribute; dataclasses are converted to dicts), written atomically.

    Args:
      model: Flax NNX network whose only state is ``nnx.Param`` (see :func:`split_model`); not modified.
      loss_fn: ``loss_fn(model, batch, key) -> (loss, metrics)`` (see :func:`make_train_step`).
      optimizer: optax transformation (:func:`make_optimizer`).
      train_data: ``train_data(start)`` returns an iterable of NumPy batch dicts for updates ``start``,
        ``start + 1``, ...; each array has a leading batch axis divisible by the number of local devices.
      steps: total number of updates (including those of a resumed run).
      key: root PRNG key.
      workdir: output directory (created if needed).
      augment: optional on-device ``augment(key, batch) -> batch``.
      eval_fn: optional ``eval_fn(model, batch) -> dict of scalars``; requires ``eval_data``.
      eval_data: ``eval_data()`` returns an iterable of validation batch dicts; metrics are averaged over all
        samples (batches weighted by their size).
      eval_every: evaluate every this many updates (and after the last one).
      save_every: checkpoint every this many updates (and after the last one).
      log_every: log a row every this many updates; default ``eval_every``.
      max_to_keep: number of latest checkpoints kept.
      best_metric: validation metric that selects the best checkpoint.
      best_mode: ``"max"`` or ``"min"``.
      resume: restore the newest checkpoint of ``workdir`` if there is one. If false, the run starts from
        scratch and deletes the checkpoints, best checkpoint and ``metrics.csv`` of a previous run there.
      progress: show a tqdm bar (a plain line per log point when tqdm is missing).
      metadata: JSON-serialisable data stored in ``model.json`` (e.g. the training grid's shape and affine).

    Returns:
      :class:`FitResult` with the trained model and this call's history.

    Raises:
      TypeError, ValueError: invalid arguments, a non-divisible batch size, a missing ``best_metric``, or
        ``train_data`` running out of batches.
    """
    _check_positive_int(steps, "steps")
    for name, value in (("eval_every", eval_every), ("save_every", save_every), ("max_to_keep", max_to_keep)):
        _check_positive_int(value, name)
    log_every = eval_every if log_every is None else log_every
    _check_positive_int(log_every, "log_every")
    if best_mode not in ("max", "min"):
        raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}")
    if not callable(train_data):
        raise TypeError(
            f"train_data must be a callable train_data(start_step) -> iterable of batches, got "
            f"{type(train_data).__name__}"
        )
    if (eval_fn is None) != (eval_data is None):
        raise ValueError("eval_fn and eval_data must be given together")
    if eval_data is not None and not callable(eval_data):
        raise TypeError(
            f"eval_data must be a callable eval_data() -> iterable of batches, got {type(eval_data).__name__}"
        )
    if not isinstance(key, jax.Array):
        raise TypeError(f"key must be a JAX PRNG key (jax.random.key(seed)), got {type(key).__name__}")
    meta_text = _json_text(
        {"config": _model_config(model), "metadata": dict(metadata or {})}, "metadata/config"
    )

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    is_main = jax.process_index() == 0
    mesh = make_mesh()
    rep = _replicated(mesh)

    graphdef, params = split_model(model)
    params = jax.device_put(jax.tree.map(jnp.array, params), rep)  # a copy: the caller's model stays valid
    opt_state = jax.device_put(optimizer.init(params), rep)
    train_step = make_train_step(graphdef, loss_fn, optimizer, augment=augment, mesh=mesh)
    eval_step = make_eval_step(graphdef, eval_fn, mesh=mesh) if eval_fn is not None else None

    ckpt = _manager(workdir / "checkpoints", max_to_keep=max_to_keep)
    best = None
    if eval_fn is not None:
        best = _manager(
            workdir / "best",
            max_to_keep=1,
            best_fn=lambda m: float(m[best_metric]),
            best_mode=best_mode,
        )
    start = 0
    if resume and ckpt.latest_step() is not None:
        start = int(ckpt.latest_step())
        restored = _restore(ckpt, start, rep, params=params, opt_state=opt_state)
        params, opt_state = restored.params, restored.opt_state
    elif not resume:
        # start afresh: forget the old run's checkpoints and log so steps and rows do not collide
        for s in list(ckpt.all_steps()):
            ckpt.delete(s)
        if best is not None:
            for s in list(best.all_steps()):
                best.delete(s)
        if is_main and (workdir / "metrics.csv").exists():
            (workdir / "metrics.csv").unlink()
    if is_main:
        _write_text(workdir / "model.json", meta_text + "\n")
    log = _CsvLog(workdir / "metrics.csv", start, write=is_main)

    def evaluate(p) -> dict[str, float]:
        sums: dict[str, float] = {}
        count = 0
        pending = []
        for batch in eval_data():  # type: ignore[misc]
            n = _check_batch(batch, mesh, name="eval batch")
            pending.append((n, eval_step(p, batch)))  # type: ignore[misc]
        for n, m in pending:
            for k, v in jax.device_get(m).items():
                sums[k] = sums.get(k, 0.0) + float(v) * n
            count += n
        if count == 0:
            raise ValueError("eval_data() yielded no batches")
        out = {k: v / count for k, v in sums.items()}
        if best_metric not in out:
            raise ValueError(f"best_metric {best_metric!r} is not among the eval_fn metrics {sorted(out)}")
        return out

    bar = None
    if progress and is_main:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=steps, initial=start, desc="fit", dynamic_ncols=True)
        except ImportError:
            bar = None

    train_hist: dict[str, list[float]] = {}
    eval_hist: dict[str, list[float]] = {}
    window: list[Metrics] = []
    t0 = last_plot = time.perf_counter()
    step = start
    try:
        if start < steps:
            it = iter(train_data(start))
            while step < steps:
                try:
                    batch = next(it)
                except StopIteration:
                    raise ValueError(
                        f"train_data({start}) ran out of batches at update {step} of {steps}"
                    ) from None
                params, opt_state, metrics = train_step(
                    params, opt_state, batch, jax.random.fold_in(key, step)
                )
                window.append(metrics)
                step += 1
                if bar is not None:
                    bar.update(1)
                is_last = step == steps
                do_eval = eval_step is not None and (step % eval_every == 0 or is_last)
                do_log = do_eval or is_last or step % log_every == 0
                if do_log:
                    host = jax.device_get(window)
                    window = []
                    train_hist.setdefault("step", []).extend(range(step - len(host) + 1, step + 1))
                    for m in host:
                        for k, v in m.items():
                            train_hist.setdefault(k, []).append(float(v))
                    row: dict[str, Any] = {"step": step, "time_s": round(time.perf_counter() - t0, 3)}
                    for k in ["loss"] + sorted(k for k in host[0] if k != "loss"):
                        row[f"train_{k}"] = float(np.mean([m[k] for m in host]))
                    if do_eval:
                        val = evaluate(params)
                        eval_hist.setdefault("step", []).append(step)
                        for k, v in val.items():
                            eval_hist.setdefault(k, []).append(v)
                            row[f"val_{k}"] = v
                        if best is not None and step not in best.all_steps():
                            best.save(
                                step,
                                args=ocp.args.Composite(params=ocp.args.StandardSave(params)),
                                metrics=val,
                            )
                    elif eval_step is not None:
                        for k in log.header or []:
                            if k.startswith("val_"):
                                row[k] = ""
                    log.append(row)
                    if is_main and (is_last or time.perf_counter() - last_plot >= _PLOT_INTERVAL_S):
                        _plot(workdir / "metrics.png", log.header, log.rows)
                        last_plot = time.perf_counter()
                    summary = {k: v for k, v in row.items() if k not in ("step", "time_s")}
                    if bar is not None:
                        bar.set_postfix({k: f"{v:.4g}" for k, v in summary.items() if isinstance(v, float)})
                    elif progress and is_main:
                        print(
                            f"step {step}/{steps} "
                            + " ".join(f"{k}={v:.4g}" for k, v in summary.items() if isinstance(v, float)),
                            flush=True,
                        )
                if (step % save_every == 0 or is_last) and step not in ckpt.all_steps():
                    ckpt.save(
                        step,
                        args=ocp.args.Composite(
                            params=ocp.args.StandardSave(params), opt_state=ocp.args.StandardSave(opt_state)
                        ),
                    )
        ckpt.wait_until_finished()
        if best is not None:
            best.wait_until_finished()
    finally:
        if bar is not None:
            bar.close()
        ckpt.close()
        if best is not None:
            best.close()

    trained = nnx.merge(graphdef, jax.tree.map(jnp.asarray, jax.device_get(params)))
    history = {
        "train": {
            k: np.asarray(v, dtype=np.int64 if k == "step" else np.float64) for k, v in train_hist.items()
        },
        "eval": {
            k: np.asarray(v, dtype=np.int64 if k == "step" else np.float64) for k, v in eval_hist.items()
        },
    }
    return FitResult(trained, history)


# --------------------------------------------------------------------------------------------------------------
# trained models: work folders, exported folders, shipped names
# --------------------------------------------------------------------------------------------------------------

_EXPORT_FILES = ("model.json", "params.npz")
_EXPORT_DTYPES = ("float32", "float16")


def resolve_model(model: str | os.PathLike) -> Path:
    """The folder of a trained model given as a folder or as the name of a shipped model.

    An existing folder wins: a plain name (no path separator) is looked up under ``jaxreg/models/`` only when no
    folder of that name exists. Whether the folder holds ``model.json`` is checked by :func:`load_model`, which
    reads it.

    Args:
      model: a ``jaxreg train`` work folder (:func:`fit`'s ``workdir``), a folder written by :func:`export_model`,
        or the name of a shipped model (one of :func:`available_models`).

    Returns:
      The folder.

    Raises:
      FileNotFoundError: ``model`` is neither an existing folder nor a shipped model's name (the message lists
        the shipped names).
    """
    return _resolve(model, "model")


def _resolve(model: str | os.PathLike, name: str) -> Path:
    path = Path(model)
    if path.is_dir():
        return path
    text = os.fspath(model)
    shipped = shipped_model(text) if isinstance(model, str) else None
    if shipped is not None:
        return shipped
    names = available_models()
    raise FileNotFoundError(
        errno.ENOENT,
        f"{name} {text!r}: neither a model folder (a folder must contain model.json: a 'jaxreg train' work "
        f"folder or an exported model) nor the name of a shipped model (shipped: "
        f"{', '.join(names) if names else 'none'})",
    )


def _default_build(config: Any) -> nnx.Module:
    from jaxreg.learn.networks import RegistrationNet  # the only architecture `jaxreg train` writes

    if isinstance(config, Mapping) and config.get("kind") == "features":
        raise ValueError(
            "model: a feature network (jaxreg.learn.features, for the similarity features(model=...)), "
            "not a registration network"
        )

    return RegistrationNet.from_config(config, rngs=nnx.Rngs(0))


def _flat_params(params: nnx.State) -> dict[str, np.ndarray]:
    """``{"unet/dec/0/kernel": array, ...}``: the parameters under their ``nnx.to_flat_state`` paths."""
    return {"/".join(map(str, path)): np.asarray(jax.device_get(v.get_value())) for path, v in nnx.to_flat_state(params)}


def _read_params(path: Path, params: nnx.State) -> nnx.State:
    """Replace the values of ``params`` by the arrays of ``params.npz`` (same names and shapes)."""
    flat = list(nnx.to_flat_state(params))
    with np.load(path, allow_pickle=False) as npz:
        stored = {k: npz[k] for k in npz.files}
    names = ["/".join(map(str, p)) for p, _ in flat]
    missing = sorted(set(names) - set(stored))
    unexpected = sorted(set(stored) - set(names))
    wrong = [
        f"{n}: {stored[n].shape} vs {np.shape(v.get_value())}"
        for n, (_, v) in zip(names, flat)
        if n in stored and stored[n].shape != np.shape(v.get_value())
    ]
    if missing or unexpected or wrong:
        raise ValueError(
            f"build(config) made a model whose parameters do not match {path}: missing {missing[:8]}, "
            f"unexpected {unexpected[:8]}, shapes (stored vs model) {wrong[:8]}"
        )
    return nnx.from_flat_state(
        [(p, v.replace(value=jnp.asarray(stored[n], dtype=v.get_value().dtype))) for n, (p, v) in zip(names, flat)]
    )


def load_model(
    workdir: str | os.PathLike,
    *,
    build: Callable[[Any], nnx.Module] | None = None,
    which: str = "best",
) -> tuple[nnx.Module, dict[str, Any]]:
    """Rebuild a trained network: from a :func:`fit` work folder, an exported model folder or a shipped name.

    ``workdir`` is resolved by :func:`resolve_model`. A folder holding ``params.npz`` (written by
    :func:`export_model`, or a shipped model) is read from it; otherwise the orbax checkpoint ``which`` of the
    work folder is restored.

    Args:
      workdir: the work directory of :func:`fit`, a folder written by :func:`export_model`, or the name of a
        model shipped in the package (:func:`available_models`).
      build: ``build(config) -> nnx.Module`` rebuilding the architecture from ``model.json``'s ``config``; its
        initial parameters are replaced. Default
        ``lambda c: RegistrationNet.from_config(c, rngs=nnx.Rngs(0))``.
      which: ``"best"`` (the best validation checkpoint) or ``"latest"`` (the newest training checkpoint) of a
        work folder; an exported model holds one set of parameters and ignores it.

    Returns:
      ``(model, metadata)`` with the ``metadata`` given to :func:`fit` (plus ``metadata_extra`` of
      :func:`export_model`). The parameters keep the dtypes of the built model.

    Raises:
      FileNotFoundError: ``workdir`` is neither a folder nor a shipped name, or has no ``model.json`` or no
        checkpoint of the requested kind.
      ValueError: ``which`` is invalid or the built model's parameters do not match the stored ones.
    """
    if which not in ("best", "latest"):
        raise ValueError(f"which must be 'best' or 'latest', got {which!r}")
    folder = _resolve(workdir, "workdir")
    build = _default_build if build is None else build
    model, metadata, _ = _load(folder, build, which)
    return model, metadata


def _load(folder: Path, build: Callable[[Any], nnx.Module], which: str) -> tuple[nnx.Module, dict, dict]:
    """``(model, metadata, model.json content)`` of a resolved folder (see :func:`load_model`)."""
    meta_path = folder / "model.json"
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"{meta_path}: not found; is workdir a directory written by fit() or export_model()?"
        )
    info = json.loads(meta_path.read_text(encoding="utf-8"))
    model = build(info.get("config"))
    graphdef, params = split_model(model)
    if (folder / "params.npz").is_file():
        params = _read_params(folder / "params.npz", params)
        return nnx.merge(graphdef, params), info.get("metadata") or {}, info
    directory = folder / ("best" if which == "best" else "checkpoints")
    if not directory.is_dir():
        hint = " (fit ran without eval_fn; use which='latest')" if which == "best" else ""
        raise FileNotFoundError(f"{directory}: no {which} checkpoint{hint}")
    mgr = ocp.CheckpointManager(
        directory.absolute(),
        options=ocp.CheckpointManagerOptions(create=False, read_only=True, enable_async_checkpointing=False),
    )
    try:
        step = mgr.latest_step()  # workdir/best keeps exactly one checkpoint, the best
        if step is None:
            raise FileNotFoundError(f"{directory}: no {which} checkpoint")
        try:
            device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
            restored = _restore(mgr, step, device, params=params)
        except (ValueError, KeyError) as e:
            raise ValueError(
                f"build(config) made a model whose parameters do not match the checkpoint: {e}"
            ) from e
    finally:
        mgr.close()
    info = {**info, "export": {"which": which, "step": int(step)}}
    return nnx.merge(graphdef, restored.params), info.get("metadata") or {}, info


def _is_exported(folder: Path) -> bool:
    return all((folder / name).is_file() for name in _EXPORT_FILES)


def _check_export_dest(dest: str | os.PathLike) -> Path:
    """``dest`` as a Path if :func:`export_model` may write it (absent, empty, or an exported model folder)."""
    path = Path(dest)
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            raise FileExistsError(errno.EEXIST, f"dest {os.fspath(dest)}: exists and is not a folder")
        if any(path.iterdir()) and not _is_exported(path):
            raise FileExistsError(
                errno.EEXIST,
                f"dest {os.fspath(dest)}: a non-empty folder that is not an exported model (no "
                f"{' and '.join(_EXPORT_FILES)}); choose an empty or new folder",
            )
    return path


def export_model(
    workdir: str | os.PathLike,
    dest: str | os.PathLike,
    *,
    which: str = "best",
    build: Callable[[Any], nnx.Module] | None = None,
    dtype: str = "float32",
    metadata_extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a trained network as a small self-contained folder, loadable by :func:`load_model`.

    ``dest`` receives ``model.json`` (``{"config", "metadata", "export"}``: the architecture, the metadata of
    :func:`fit` such as the training grid, and ``{"which", "step", "dtype"}`` of the export) and ``params.npz``
    (``np.savez_compressed`` of the flat dict ``"unet/dec/0/kernel" -> array``, the names of
    ``nnx.to_flat_state``). Both are written into a temporary sibling folder that is then renamed to ``dest``,
    so ``dest`` is never half-written. An existing ``dest`` must be an empty folder or an exported model folder;
    the latter is replaced (its ``model.json`` and ``params.npz``; other files in it, e.g. a ``train.toml``, are
    kept).

    Copy the folder to ``jaxreg/models/<name>/`` to ship it as the model ``<name>``.

    Args:
      workdir: the work folder of :func:`fit` (``jaxreg train``'s), an exported folder or a shipped model's name.
      dest: the folder to write; its parent folder is created if needed.
      which: ``"best"`` or ``"latest"`` checkpoint of a work folder (see :func:`load_model`).
      build: ``build(config) -> nnx.Module``; default a :class:`~jaxreg.learn.networks.RegistrationNet` (see
        :func:`load_model`). It checks that the stored parameters rebuild the network.
      dtype: storage dtype of the floating-point parameters, ``"float32"`` (exact) or ``"float16"`` (half the
        size; :func:`load_model` casts back to the network's dtype, so outputs change slightly).
      metadata_extra: JSON-serialisable entries added to (and overriding) the metadata (e.g. a description,
        the training data's licence).

    Returns:
      ``dest`` as a Path.

    Raises:
      FileNotFoundError: ``workdir`` or its checkpoint is missing (see :func:`load_model`).
      FileExistsError: ``dest`` exists and is neither an empty folder nor an exported model folder.
      TypeError: ``metadata_extra`` is not a JSON-serialisable mapping.
      ValueError: ``which`` or ``dtype`` is invalid.
    """
    if which not in ("best", "latest"):
        raise ValueError(f"which must be 'best' or 'latest', got {which!r}")
    if dtype not in _EXPORT_DTYPES:
        raise ValueError(f"dtype must be one of {_EXPORT_DTYPES}, got {dtype!r}")
    if metadata_extra is not None and not isinstance(metadata_extra, Mapping):
        raise TypeError(f"metadata_extra must be a mapping or None, got {type(metadata_extra).__name__}")
    dest = _check_export_dest(dest)
    folder = _resolve(workdir, "workdir")
    model, metadata, info = _load(folder, _default_build if build is None else build, which)
    flat = _flat_params(nnx.state(model, nnx.Param))
    flat = {k: v.astype(dtype) if np.issubdtype(v.dtype, np.floating) else v for k, v in flat.items()}
    export = {**(info.get("export") or {}), "dtype": dtype}
    text = _json_text(
        {
            "config": info.get("config"),
            "metadata": {**metadata, **dict(metadata_extra or {})},
            "export": export,
        },
        "metadata_extra",
    )

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp"))
    old: Path | None = None
    try:
        with open(tmp / "params.npz", "wb") as f:
            np.savez_compressed(f, **flat)
            f.flush()
            os.fsync(f.fileno())
        with open(tmp / "model.json", "w", encoding="utf-8") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
        if dest.is_dir():
            _check_export_dest(dest)  # still empty or an exported model
            for p in dest.iterdir():  # keep what else the folder holds (train.toml, README.md, ...)
                if p.name not in _EXPORT_FILES:
                    (shutil.copytree if p.is_dir() else shutil.copy2)(p, tmp / p.name)
            old = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".old"))
            old.rmdir()  # a fresh unused name: the old folder moves there, then the new one takes its place
            os.replace(dest, old)
            try:
                os.replace(tmp, dest)
            except BaseException:
                os.replace(old, dest)
                old = None
                raise
        else:
            os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return dest
