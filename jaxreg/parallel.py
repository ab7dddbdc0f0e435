"""Devices and hosts: one 1-D device mesh, multi-host start-up, and placing batches on the mesh.

Everything that runs many independent problems at once (training batches in :mod:`jaxreg.learn.train`, many
pairs in :func:`jaxreg.optimize.register` with ``mesh=``) splits its leading batch axis over the devices of a
1-D :class:`~jax.sharding.Mesh` with the axis ``"data"`` (:func:`make_mesh`), through :mod:`jax.sharding`:
arrays are placed with ``NamedSharding(mesh, P("data"))`` (:func:`shard_leading`) and a jitted program run on
them is partitioned by XLA, each device computing its own rows. One device is the same code path.

Several hosts: :func:`initialize_distributed` starts :func:`jax.distributed.initialize` from the launcher's
environment (``JAX_COORDINATOR_ADDRESS``/``JAX_NUM_PROCESSES``/``JAX_PROCESS_ID``, SLURM, Open MPI); the mesh
then spans the devices of every process and :func:`gather` brings a sharded result back to every host.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = ["DATA_AXIS", "gather", "initialize_distributed", "make_mesh", "padded_size", "shard_leading"]

DATA_AXIS = "data"
"""Name of the one axis of :func:`make_mesh` (the batch axis: training examples, registration pairs)."""


def make_mesh(*, devices: Iterable[jax.Device] | None = None) -> Mesh:
    """A 1-D device mesh with the axis ``"data"`` for data parallelism.

    Args:
      devices: the devices; default ``jax.devices()`` (all devices of all processes).

    Returns:
      ``Mesh(devices, ("data",))``.

    Raises:
      ValueError: ``devices`` is empty.
    """
    devs = list(jax.devices() if devices is None else devices)
    if not devs:
        raise ValueError("devices must not be empty")
    return Mesh(np.array(devs), (DATA_AXIS,))


def padded_size(n: int, mesh: Mesh) -> int:
    """The smallest multiple of the mesh's device count that is ``>= n`` (rows after padding a batch of ``n``)."""
    d = int(mesh.devices.size)
    return -(-int(n) // d) * d


def shard_leading(tree: Any, mesh: Mesh) -> Any:
    """Place every array leaf of ``tree`` on ``mesh``, split along its leading axis (``P("data")``).

    Args:
      tree: a pytree of arrays, each of shape ``(B, ...)`` with ``B`` a multiple of the mesh's device count
        (pad with :func:`padded_size` first). Leaves that are ``None`` stay ``None``.
      mesh: a mesh from :func:`make_mesh`.

    Returns:
      The same tree of global ``jax.Array`` s, row block ``k`` on device ``k``.

    Raises:
      ValueError: a leaf is a scalar or its leading size does not divide over the devices.
    """
    sharding = NamedSharding(mesh, P(mesh.axis_names[0]))
    d = int(mesh.devices.size)

    def put(x: Any) -> Any:
        if np.ndim(x) == 0 or np.shape(x)[0] % d:
            raise ValueError(
                f"shard_leading: every leaf needs a leading axis divisible by the {d} devices, got shape "
                f"{np.shape(x)}"
            )
        if isinstance(x, jax.Array) and x.sharding == sharding:
            return x
        return jax.device_put(x, sharding)

    return jax.tree_util.tree_map(put, tree)


def gather(tree: Any) -> Any:
    """Every array leaf of ``tree`` as a NumPy array on this host (all rows, also of multi-host arrays)."""

    def get(x: Any) -> Any:
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree_util.tree_map(get, tree)


def initialize_distributed() -> bool:
    """Initialise multi-host JAX (``jax.distributed.initialize``) when the environment asks for it.

    Call it first, before any other JAX call. It initialises when

    * ``JAX_COORDINATOR_ADDRESS`` (``host:port`` of process 0) is set, with ``JAX_NUM_PROCESSES`` and
      ``JAX_PROCESS_ID`` (read here) when given, otherwise JAX's cluster auto-detection; or
    * a multi-task SLURM job (``SLURM_NTASKS`` > 1) or an Open MPI launch (``OMPI_COMM_WORLD_SIZE`` > 1) is
      detected, using JAX's auto-detection for that cluster;

    otherwise (and when JAX is already initialised) it does nothing, so single-host runs take the same path.

    Returns:
      ``True`` if this call initialised the distributed runtime.

    Raises:
      ValueError: ``JAX_NUM_PROCESSES`` or ``JAX_PROCESS_ID`` is not an integer.
    """
    env = os.environ
    if jax.distributed.is_initialized():
        return False
    if env.get("JAX_COORDINATOR_ADDRESS"):
        kwargs: dict[str, Any] = {"coordinator_address": env["JAX_COORDINATOR_ADDRESS"]}
        for var, arg in (("JAX_NUM_PROCESSES", "num_processes"), ("JAX_PROCESS_ID", "process_id")):
            if env.get(var):
                try:
                    kwargs[arg] = int(env[var])
                except ValueError:
                    raise ValueError(
                        f"environment variable {var} must be an integer, got {env[var]!r}"
                    ) from None
        jax.distributed.initialize(**kwargs)
        return True

    def more_than_one(var: str) -> bool:
        try:
            return int(env.get(var, "1")) > 1
        except ValueError:
            return False

    if more_than_one("SLURM_NTASKS") or more_than_one("OMPI_COMM_WORLD_SIZE"):
        jax.distributed.initialize()
        return True
    return False
