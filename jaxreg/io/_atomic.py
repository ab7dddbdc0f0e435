"""Atomic file writes: write to a temporary file next to the destination, then ``os.replace`` it.

Every writer in :mod:`jaxreg.io` goes through :func:`atomic_write`, so an interrupted or failing write never
leaves a partial file at the destination and never damages a file that was already there.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = ["atomic_write", "check_not_input", "split_suffix"]

PathLike = str | os.PathLike


def split_suffix(path: PathLike) -> tuple[str, str]:
    """``(stem, suffix)`` of a file name, treating ``.nii.gz`` (any case) as one suffix."""
    name = Path(path).name
    low = name.lower()
    if low.endswith(".nii.gz"):
        return name[: -len(".nii.gz")], name[-len(".nii.gz") :]
    suffix = Path(name).suffix
    return name[: len(name) - len(suffix)], suffix


def check_not_input(path: PathLike, inputs: Iterable[PathLike]) -> None:
    """Raise ``ValueError`` if ``path`` names the same file as one of ``inputs``.

    Args:
      path: the destination about to be written.
      inputs: paths the caller has read from (e.g. the images of a registration run).

    Raises:
      ValueError: the destination is one of the inputs (same resolved path, or the same existing file).
    """
    dest = Path(path)
    for p in inputs:
        q = Path(p)
        same = dest.resolve() == q.resolve()
        if not same and dest.exists() and q.exists():
            same = os.path.samefile(dest, q)
        if same:
            raise ValueError(f"{path}: refusing to overwrite an input file of this run ({p})")


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once at import: changing the umask later, even briefly, would race with other threads creating files.
_UMASK = _read_umask()


def atomic_write(path: PathLike, write_fn: Callable[[str], None], *, inputs: Iterable[PathLike] = ()) -> None:
    """Write ``path`` atomically through ``write_fn``.

    ``write_fn(tmp_path)`` must create the complete file at ``tmp_path``, a fresh name in the destination's
    directory that ends with the destination's suffix (so suffix-driven writers such as nibabel pick the same
    format and compression). On success the temporary file is flushed to disk and renamed onto ``path`` with
    :func:`os.replace` (atomic on POSIX and Windows within one file system); on any exception it is deleted
    and
    the exception propagates, leaving an existing ``path`` untouched.

    Args:
      path: destination file. Its directory must exist.
      write_fn: callable that writes the whole file to the path it is given.
      inputs: paths that must not be overwritten (the inputs of the calling run); see :func:`check_not_input`.

    Raises:
      FileNotFoundError: the destination directory does not exist.
      ValueError: ``path`` is one of ``inputs``, or is an existing directory.
    """
    dest = Path(path)
    check_not_input(dest, inputs)
    directory = dest.parent if str(dest.parent) else Path(".")
    if not directory.is_dir():
        raise FileNotFoundError(2, f"{path}: the destination directory does not exist", str(directory))
    if dest.is_dir():
        raise ValueError(f"{path}: is a directory, expected a file name")
    _, suffix = split_suffix(dest)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{dest.name}.", suffix=".tmp" + suffix)
    os.close(fd)
    try:
        write_fn(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        # mkstemp creates the file with mode 0600; give it the permissions a plain open() would.
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, dest)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
