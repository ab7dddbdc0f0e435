"""Argument types and error reporting shared by the ``jaxreg`` subcommands.

Every subcommand module imports these from here (and :mod:`jaxreg.cli.main` imports the subcommand modules),
so no subcommand module imports :mod:`jaxreg.cli.main`: the command line has no import cycle.

User errors are reported by :func:`jaxreg.cli.main.main` as one line ``jaxreg: error: ...`` with exit status 2.
:func:`argument` prefixes an error raised by the library with the command-line argument it concerns, so that
line always says which argument to fix (``MOVING: /data/m.nii.gz: constant image ...``).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

__all__ = [
    "Parser",
    "UsageError",
    "argument",
    "int_at_least",
    "load_transforms",
    "one_line",
    "parse_transform_spec",
    "positive_float",
]


class UsageError(ValueError):
    """A bad command line (reported like any other user error: one line, exit status 2)."""


class Parser(argparse.ArgumentParser):
    """argparse with errors raised (so :func:`jaxreg.cli.main.main` reports them in one line and returns 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see '{self.prog} --help')")


def one_line(exc: BaseException) -> str:
    """A one-line description of an exception for the ``jaxreg: error:`` message."""
    if isinstance(exc, OSError) and exc.strerror:
        msg = exc.strerror
        name = exc.filename
        if name is not None and os.fspath(name) not in msg:
            msg = f"{os.fspath(name)}: {msg}"
    else:
        msg = str(exc) or type(exc).__name__
    if isinstance(exc, ImportError) and "install" not in msg:
        msg = f"{msg} (optional packages: pip install 'jaxreg[demo]')"
    return " ".join(msg.split())


@contextlib.contextmanager
def argument(name: str) -> Iterator[None]:
    """Prefix a ``ValueError``/``OSError`` raised in the block with the argument ``name`` it concerns.

    The exception keeps its class (a missing file stays a ``FileNotFoundError``); its message becomes
    ``"{name}: {message}"`` unless it already starts with ``name``.
    """
    try:
        yield
    except (ValueError, OSError) as e:
        msg = one_line(e)
        if msg.startswith(name) and msg[len(name) : len(name) + 1] in (":", " "):
            raise
        text = f"{name}: {msg}"
        if isinstance(e, OSError):
            try:
                new: Exception = type(e)(e.errno, text)
            except TypeError:  # an OSError subclass with another constructor
                new = UsageError(text)
        else:
            try:
                new = type(e)(text)
            except TypeError:  # e.g. json.JSONDecodeError(msg, doc, pos)
                new = UsageError(text)
        raise new from e


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type`` accepting integers ``>= minimum`` (1: "positive", 0: "non-negative")."""
    what = {0: "a non-negative integer", 1: "a positive integer"}.get(minimum, f"an integer >= {minimum}")

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return v

    return parse


def positive_float(text: str) -> float:
    """An argparse ``type`` accepting finite numbers ``> 0``."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not v > 0 or not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return v


def non_negative_float(text: str) -> float:
    """An argparse ``type`` accepting finite numbers ``>= 0``."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {text!r}") from None
    if not v >= 0 or not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {text!r}")
    return v


# -- transform files (-t), shared by apply and apply-points ------------------------------------------------------
_INVERSE_SPEC = re.compile(r"^\[\s*(?P<path>.+?)\s*,\s*(?P<flag>[01])\s*\]$")


def parse_transform_spec(spec: str) -> tuple[str, bool]:
    """``path`` or ANTs-style ``[path,1]`` (use the inverse) / ``[path,0]`` -> ``(path, invert)``."""
    m = _INVERSE_SPEC.match(spec.strip())
    if m:
        return m.group("path"), m.group("flag") == "1"
    if spec.strip().startswith("["):
        raise UsageError(f"-t {spec}: expected a file name or [file,0] / [file,1] (1 = use the inverse)")
    return spec, False


def load_transforms(specs: Sequence[str]) -> Any:
    """Read ``-t`` transform files and compose them as ``antsApplyTransforms`` does.

    ANTs' convention (see :func:`jaxreg.io.compose_files`): with ``-t T1 -t T2 ... -t Tn`` the fixed point
    ``x`` goes through the *first* listed transform first, and the moving image is sampled at
    ``Tn(...T2(T1(x)))``, i.e. ``jaxreg.compose(Tn, ..., T1)``. For ``antsRegistration`` output,
    ``-t 1Warp.nii.gz -t 0GenericAffine.mat`` samples at ``affine(warp(x))``. ``[file,1]`` uses the inverse of a
    linear transform (``jaxreg.invert``).

    Returns:
      A single transform (a ``Composite`` when there are several).
    """
    from jaxreg.io import compose_files

    parsed = [parse_transform_spec(s) for s in specs]
    return compose_files([p for p, _ in parsed], invert=[inv for _, inv in parsed])
