"""How jaxreg compiles its programs: XLA options chosen per program, by its work and by how often it will run.

XLA's CPU compiler spends most of a registration program's compile time in LLVM optimising the fused loops. A
program that runs many times (a warm process, a persistent compilation cache, a batch, a template's rounds)
earns that back; a small program that runs once does not. On the 2-D brain pair (256 x 256, default pipeline,
2-core CPU) the five level kernels took 4.6 s to compile with XLA's defaults and 0.3 s to run; with the options
of :data:`FAST_COMPILE` they compile in 1.3 s and run in 1.1 s. A 3-D level does 40-300x more work per
iteration, so there the optimised code wins even for one run.

The choice is per program and scoped, never a process-wide flag:

* :func:`single_use` marks a block whose programs run once each (``jaxreg register`` without the persistent
  compilation cache: one pair, one process); outside it every program gets XLA's default options.
* :func:`compiler_options` gives the options of a program from its *work* (voxels times iterations) inside such
  a block: :data:`FAST_COMPILE` up to :data:`FAST_COMPILE_MAX_WORK`, XLA's defaults above, and always the
  defaults off the CPU (the options are LLVM-CPU ones).
* :func:`jit` is ``jax.jit`` whose compiled variant is chosen at each call by those rules from the size of its
  array arguments (one variant per option set, each cached by JAX as usual).

Fast-compiled code computes the same operations with less optimised machine code; float32 results differ in
the last bits: on the 2-D pair the registered transform moves by at most 0.0004 mm (mean 2e-5 mm), the report's
NCC after registration is unchanged (0.99246), NMI 1.42851 -> 1.42852, SDlogJ 0.23153 -> 0.231529.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import numpy as np

__all__ = ["FAST_COMPILE", "FAST_COMPILE_MAX_WORK", "compiler_options", "is_single_use", "jit", "single_use"]

FAST_COMPILE: dict[str, Any] = {
    "xla_backend_optimization_level": 0,
    "xla_llvm_disable_expensive_passes": True,
    "xla_cpu_use_fusion_emitters": False,
}
"""XLA debug options of a fast-compiled CPU program: LLVM at -O0 without its expensive passes, and fusions
emitted by XLA's classic elemental emitters instead of the MLIR fusion emitters (compile time of the 2-D level
kernels 0.7-1.1 s -> 0.2-0.35 s each, run time 2-6x longer)."""

FAST_COMPILE_MAX_WORK = 1 << 20
"""Largest work (voxels x iterations) of a single-use program compiled with :data:`FAST_COMPILE`. A greedy
level's fast code costs about 1.1 us more per voxel-iteration on a 2-core CPU and saves about 0.7 s of
compilation (break-even near 640k); a linear level stops early and breaks even later. Every level of a 2-D
256 x 256 pipeline is below (at most 128^2 x 50 = 819k), every level of a 3-D brain above (40 x 48 x 56 x 40
= 4.3M at the coarsest)."""

_SINGLE_USE: contextvars.ContextVar[bool] = contextvars.ContextVar("jaxreg_single_use", default=False)


@contextlib.contextmanager
def single_use(enabled: bool = True) -> Iterator[None]:
    """Within the block, programs are compiled for one run each (see the module docstring).

    Args:
      enabled: ``False`` leaves the block with the default (programs compiled for reuse).
    """
    token = _SINGLE_USE.set(bool(enabled))
    try:
        yield
    finally:
        _SINGLE_USE.reset(token)


def is_single_use() -> bool:
    """Whether the current block compiles its programs for one run (:func:`single_use`)."""
    return _SINGLE_USE.get()


def compiler_options(work: float, *, platform: str | None = None) -> dict[str, Any] | None:
    """The ``compiler_options`` of a program that does ``work`` (voxels x iterations), or ``None`` (defaults).

    Args:
      work: the program's work: voxels processed times iterations (a batch multiplies it).
      platform: the platform it compiles for (default: JAX's default backend).

    Returns:
      :data:`FAST_COMPILE` inside :func:`single_use` for ``work <= FAST_COMPILE_MAX_WORK`` on the CPU, else
      ``None``.
    """
    if not _SINGLE_USE.get() or float(work) > FAST_COMPILE_MAX_WORK:
        return None
    if (platform or jax.default_backend()) != "cpu":
        return None
    return dict(FAST_COMPILE)


def _size(args: Sequence[Any]) -> int:
    """The largest number of elements of an array leaf of ``args`` (the program's voxels)."""
    sizes = [int(np.size(x)) for x in jax.tree_util.tree_leaves(args) if isinstance(x, (jax.Array, np.ndarray))]
    return max(sizes, default=0)


def _tracing(args: Any) -> bool:
    """Whether a call happens while JAX traces (arguments are tracers, or an outer ``jit`` is staging)."""
    if any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(args)):
        return True
    try:
        from jax._src.core import trace_state_clean
    except ImportError:  # pragma: no cover - another JAX: tracer arguments are the test
        return False
    return not trace_state_clean()


def jit(
    fn: Callable,
    *,
    static_argnums: int | Sequence[int] = (),
    static_argnames: str | Sequence[str] = (),
    work: Callable[..., float] | None = None,
) -> Callable:
    """``jax.jit(fn)`` whose compiler options follow :func:`compiler_options` at each call.

    Args:
      fn: the function to compile.
      static_argnums: as for ``jax.jit``.
      static_argnames: as for ``jax.jit``.
      work: ``work(*args, **kwargs) -> voxels x iterations`` of a call (default: the largest array argument's
        size, for one pass over the data).

    Returns:
      A callable with ``fn``'s signature; under an outer ``jax.jit`` it is ``fn`` traced inline as usual.
    """
    variants: dict[Any, Callable] = {}

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        opts = None
        if _SINGLE_USE.get() and not _tracing((args, kwargs)):  # options apply to top-level programs only
            opts = compiler_options(work(*args, **kwargs) if work is not None else _size((args, kwargs)))
        key = None if opts is None else tuple(sorted(opts.items()))
        f = variants.get(key)
        if f is None:
            f = variants[key] = jax.jit(
                fn, static_argnums=static_argnums, static_argnames=static_argnames, compiler_options=opts
            )
        return f(*args, **kwargs)

    return call
