"""Landmark (fiducial) files <-> ``(N, ndim)`` arrays of world points in RAS+ mm.

Formats (chosen by ``format=``; ``"auto"`` decides from the suffix and, for ``.csv``, the header):

* ``"csv"``: plain comma-separated values in **RAS** mm. An optional header names the columns (``x,y[,z]``,
  case-insensitive, plus an optional ``label`` or ``name`` column); without a header each row is
  ``x,y[,z][,label]`` or ``label,x,y[,z]``. Blank lines and lines starting with ``#`` are ignored.
* ``"fcsv"``: 3D Slicer markups fiducial files (``.fcsv``)::

      # Markups fiducial file version = 4.11
      # CoordinateSystem = LPS
      # columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID
      vtkMRMLMarkupsFiducialNode_0,-12.5,30.1,4.0,0,0,0,1,1,1,0,F-1,,

  ``CoordinateSystem`` is ``RAS`` or ``LPS`` (older Slicer wrote ``0`` for RAS and ``1`` for LPS; files without
  the line are read as RAS, the only convention before it existed). Points are converted to RAS on reading;
  written files use LPS, the default of current Slicer.
* ``"ants"``: the CSV of ``antsApplyTransformsToPoints`` / ANTsPy's ``apply_transforms_to_points``: header
  ``x,y,z,t`` and **LPS** coordinates (ITK's physical space), converted to RAS with ``(x, y, z) -> (-x, -y,
  z)`` (2-D: ``(-x, -y)``). ``"auto"`` reads a ``.csv`` whose header has a ``t`` column after ``x,y,z`` as ANTs;
  writing ANTs needs ``format="ants"``, since a plain ``.csv`` is written as RAS.

Direction of point mappings (all transforms are fixed -> moving, the pull direction of the image warp):

* ``jaxreg.transform_points(T, p)`` maps fixed-space points to the moving space. A landmark pair fitted with
  :func:`jaxreg.points.fit_rigid` (``T(fixed_i) ~ moving_i``) therefore gives the same ``T`` as an intensity
  registration, and ``warp(moving, T, fixed_grid)`` moves moving-image features onto the fixed landmarks.
* ANTs maps points with the same transform files in the same direction: ``antsApplyTransformsToPoints -t T.mat``
  computes ``T(p)`` for fixed-space points ``p``, the *opposite* of the direction in which the image moves when
  ``antsApplyTransforms -t T.mat`` warps the moving image into the fixed space. To carry moving-space points into
  the fixed space, pass the inverse (``-t [T.mat,1]``, or ``jaxreg.invert(T)``; ``*InverseWarp.nii.gz`` for
  fields). Verified with ANTsPy 0.6.3: a jaxreg ``Affine`` written with :func:`jaxreg.io.write_transform` and
  applied by ``ants.apply_transforms_to_points(3, points_lps, ["T.mat"])`` gave ``F T(F p)`` (``F =
  diag(-1, -1, 1)``) to 5e-6 mm (ANTs holds the points in float32), and ``whichtoinvert=[True]`` gave
  ``F T^-1(F p)``; ``tests/test_landmarks_io.py`` repeats this when ANTsPy is installed. Note ANTsPy's default:
  for a two-element list ``[*.mat, *Warp.nii.gz]`` it inverts the matrix unless ``whichtoinvert`` is given
  (meant for ``invtransforms``).

Every writer is atomic (see :func:`jaxreg.io.atomic_write`).
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from jaxreg.io._atomic import PathLike, atomic_write

__all__ = ["FORMATS", "Landmarks", "landmark_format", "match_landmarks", "read_landmarks", "write_landmarks"]

FORMATS = ("csv", "fcsv", "ants")
_FCSV_VERSION = "4.11"
_FCSV_COLUMNS = [
    "id",
    "x",
    "y",
    "z",
    "ow",
    "ox",
    "oy",
    "oz",
    "vis",
    "sel",
    "lock",
    "label",
    "desc",
    "associatedNodeID",
]
_LABEL_NAMES = ("label", "name", "id")


class Landmarks(NamedTuple):
    """Points read from a landmark file.

    Attributes:
      points: ``(N, ndim)`` float64 world coordinates, RAS+ mm.
      labels: ``N`` strings (empty where the file has none).
    """

    points: np.ndarray
    labels: tuple[str, ...]


def _flip(ndim: int) -> np.ndarray:
    return np.array([-1.0, -1.0] + [1.0] * (ndim - 2))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _rows(text: str) -> list[tuple[int, list[str]]]:
    """``(line number, fields)`` of the non-blank, non-comment CSV rows."""
    out = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = next(csv.reader([line], skipinitialspace=True))
        out.append((lineno, [f.strip() for f in fields]))
    return out


def _format_of(path: PathLike, text: str | None, fmt: str) -> str:
    if fmt != "auto":
        if fmt not in FORMATS:
            raise ValueError(f"format: expected 'auto' or one of {', '.join(FORMATS)}, got {fmt!r}")
        return fmt
    suffix = Path(path).suffix.lower()
    if suffix == ".fcsv":
        return "fcsv"
    if text is not None and suffix in (".csv", ".txt", ""):
        rows = _rows(text)
        if rows and not all(_is_number(f) for f in rows[0][1][:2]):
            header = [h.lower() for h in rows[0][1]]
            if header[:4] == ["x", "y", "z", "t"]:
                return "ants"
    if suffix in (".csv", ".txt"):
        return "csv"
    raise ValueError(f"{path}: cannot tell the landmark format from the suffix {suffix!r}; pass format=")


def _coords(lineno: int, fields: list[str], cols: Sequence[int], path: PathLike) -> list[float]:
    try:
        vals = [float(fields[c]) for c in cols]
    except (ValueError, IndexError):
        raise ValueError(
            f"{path}:{lineno}: expected numbers in columns {[c + 1 for c in cols]}, got {fields}"
        ) from None
    if not all(math.isfinite(v) for v in vals):
        raise ValueError(f"{path}:{lineno}: non-finite coordinate in {fields}")
    return vals


def _finish(points: list[list[float]], labels: list[str], path: PathLike, ndim: int | None) -> Landmarks:
    if not points:
        raise ValueError(f"{path}: no landmarks found")
    arr = np.asarray(points, dtype=np.float64)
    if ndim is not None and ndim != arr.shape[1]:
        if ndim == 2 and arr.shape[1] == 3:
            if np.any(arr[:, 2] != 0):
                raise ValueError(f"{path}: ndim=2 asked for, but the points have non-zero z coordinates")
            arr = arr[:, :2]
        else:
            raise ValueError(
                f"{path}: expected {ndim}-D points, the file has {arr.shape[1]} coordinates per point"
            )
    return Landmarks(arr, tuple(labels))


def _read_csv(text: str, path: PathLike, ndim: int | None) -> Landmarks:
    rows = _rows(text)
    if not rows:
        raise ValueError(f"{path}: no landmarks found")
    first = rows[0][1]
    label_col = None
    if not any(_is_number(f) for f in first):
        header = [h.lower() for h in first]
        want = ["x", "y", "z"] if ndim != 2 else ["x", "y"]
        if ndim is None and "z" not in header:
            want = ["x", "y"]
        missing = [c for c in want if c not in header]
        if missing:
            raise ValueError(f"{path}: header {first} lacks column(s) {', '.join(missing)}")
        cols = [header.index(c) for c in want]
        label_col = next((header.index(n) for n in _LABEL_NAMES if n in header), None)
        rows = rows[1:]
    else:
        lead = 1 if not _is_number(first[0]) else 0
        run = 0
        while lead + run < len(first) and _is_number(first[lead + run]):
            run += 1
        n = run
        if n not in (2, 3):
            raise ValueError(
                f"{path}:{rows[0][0]}: expected rows x,y[,z][,label] (or label,x,y[,z]) with 2 or 3 coordinates, got "
                f"{first}; add a header (x,y,z[,label]) naming the columns"
            )
        cols = list(range(lead, lead + n))
        if lead:
            label_col = 0
        elif len(first) > n and not _is_number(first[n]):
            label_col = n
    points, labels = [], []
    for lineno, fields in rows:
        points.append(_coords(lineno, fields, cols, path))
        labels.append(fields[label_col] if label_col is not None and label_col < len(fields) else "")
    return _finish(points, labels, path, ndim)


def _read_ants(text: str, path: PathLike, ndim: int | None) -> Landmarks:
    rows = _rows(text)
    if not rows:
        raise ValueError(f"{path}: no landmarks found")
    header = [h.lower() for h in rows[0][1]]
    if header[:3] != ["x", "y", "z"] and header[:2] != ["x", "y"]:
        raise ValueError(f"{path}: an ANTs point file starts with the header x,y,z,t, got {rows[0][1]}")
    n = 3 if "z" in header else 2
    label_col = next((header.index(c) for c in _LABEL_NAMES if c in header), None)
    points, labels = [], []
    for lineno, fields in rows[1:]:
        points.append(_coords(lineno, fields, list(range(n)), path))
        labels.append(fields[label_col] if label_col is not None and label_col < len(fields) else "")
    lm = _finish(points, labels, path, None)
    pts = lm.points * _flip(lm.points.shape[1])
    return _finish(pts.tolist(), list(lm.labels), path, ndim)


_CS_RE = re.compile(r"^#\s*CoordinateSystem\s*=\s*(\S+)", re.IGNORECASE)
_COLUMNS_RE = re.compile(r"^#\s*columns\s*=\s*(.+)$", re.IGNORECASE)


def _read_fcsv(text: str, path: PathLike, ndim: int | None) -> Landmarks:
    system = "RAS"
    columns = _FCSV_COLUMNS
    for line in text.splitlines():
        if not line.startswith("#"):
            continue
        m = _CS_RE.match(line)
        if m:
            code = m.group(1).upper()
            if code in ("RAS", "0"):
                system = "RAS"
            elif code in ("LPS", "1"):
                system = "LPS"
            else:
                raise ValueError(
                    f"{path}: unknown CoordinateSystem {m.group(1)!r}; expected RAS, LPS, 0 or 1"
                )
        m = _COLUMNS_RE.match(line)
        if m:
            columns = [c.strip() for c in m.group(1).split(",")]
    low = [c.lower() for c in columns]
    try:
        cols = [low.index("x"), low.index("y"), low.index("z")]
    except ValueError:
        raise ValueError(f"{path}: the columns line {columns} lacks x, y or z") from None
    label_col = low.index("label") if "label" in low else None
    points, labels = [], []
    for lineno, fields in _rows(text):
        points.append(_coords(lineno, fields, cols, path))
        labels.append(fields[label_col] if label_col is not None and label_col < len(fields) else "")
    lm = _finish(points, labels, path, None)
    pts = lm.points * _flip(3) if system == "LPS" else lm.points
    return _finish(pts.tolist(), list(lm.labels), path, ndim)


def landmark_format(path: PathLike, *, format: str = "auto") -> str:
    """The format :func:`read_landmarks` reads ``path`` as: ``"csv"``, ``"fcsv"`` or ``"ants"``.

    Args:
      path: an existing landmark file (its header decides between plain and ANTs CSV).
      format: ``"auto"`` (decide from the suffix and header) or one of :data:`FORMATS` (checked and returned).

    Raises:
      FileNotFoundError: missing file (with ``format="auto"``).
      ValueError: unknown format, or a suffix that says nothing.
    """
    if format != "auto":
        return _format_of(path, None, format)
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(2, f"{path}: no such landmark file", str(path))
    return _format_of(path, p.read_text(encoding="utf-8-sig"), format)


def read_landmarks(path: PathLike, *, format: str = "auto", ndim: int | None = None) -> Landmarks:
    """Read a landmark file as RAS+ world points (mm).

    Args:
      path: ``.csv`` (plain RAS, or ANTs LPS with an ``x,y,z,t`` header), ``.fcsv`` (3D Slicer) or ``.txt``.
      format: ``"auto"``, ``"csv"``, ``"fcsv"`` or ``"ants"`` (see the module docstring).
      ndim: 2 or 3 to insist on a dimension (``2`` drops a zero ``z`` column); None infers it.

    Returns:
      :class:`Landmarks` with ``points`` ``(N, ndim)`` float64 RAS mm and ``labels``.

    Raises:
      FileNotFoundError: missing file.
      ValueError: unknown format, malformed rows (the message names ``path:line``), no points.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(2, f"{path}: no such landmark file", str(path))
    if ndim not in (None, 2, 3):
        raise ValueError(f"ndim: expected 2, 3 or None, got {ndim}")
    text = p.read_text(encoding="utf-8-sig")
    fmt = _format_of(path, text, format)
    return {"csv": _read_csv, "fcsv": _read_fcsv, "ants": _read_ants}[fmt](text, path, ndim)


def _num(v: float) -> str:
    return repr(float(v))


def write_landmarks(
    path: PathLike,
    points: Any,
    *,
    labels: Sequence[str] | None = None,
    format: str = "auto",
    inputs: Iterable[PathLike] = (),
) -> None:
    """Write RAS+ world points (mm) as a landmark file, atomically.

    Args:
      path: destination; ``"auto"`` writes ``.fcsv`` as Slicer (LPS) and anything else as plain RAS CSV.
      points: ``(N, ndim)`` RAS mm (``ndim`` 2 or 3; ``fcsv`` needs 3).
      labels: ``N`` labels (Slicer default ``F-1, F-2, ...`` for ``fcsv``); not stored by ``ants`` (ANTs reads
        numeric columns only).
      format: ``"auto"``, ``"csv"`` (header ``x,y,z[,label]``), ``"fcsv"`` or ``"ants"`` (header ``x,y,z,t``,
        LPS; 2-D points get ``z = 0``).
      inputs: paths that must not be overwritten (ValueError).

    Raises:
      ValueError: bad shape, non-finite values, wrong number of labels, unknown format.
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] not in (2, 3) or pts.shape[0] == 0:
        raise ValueError(
            f"points: expected shape (N, ndim) with N >= 1 and ndim 2 or 3, RAS mm, got {pts.shape}"
        )
    if not np.all(np.isfinite(pts)):
        raise ValueError("points: expected finite coordinates")
    n_pts, n = pts.shape
    if labels is not None:
        labels = [str(v) for v in labels]
        if len(labels) != n_pts:
            raise ValueError(f"labels: expected {n_pts} labels, one per point, got {len(labels)}")
    fmt = format if format != "auto" else ("fcsv" if Path(path).suffix.lower() == ".fcsv" else "csv")
    if fmt not in FORMATS:
        raise ValueError(f"format: expected 'auto' or one of {', '.join(FORMATS)}, got {format!r}")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if fmt == "csv":
        w.writerow(["x", "y", "z"][:n] + (["label"] if labels is not None else []))
        for i, p in enumerate(pts):
            w.writerow([_num(v) for v in p] + ([labels[i]] if labels is not None else []))
    elif fmt == "ants":
        lps = pts * _flip(n) + 0.0  # + 0.0: no negative zeros in the file
        if n == 2:
            lps = np.concatenate([lps, np.zeros((n_pts, 1))], axis=1)
        w.writerow(["x", "y", "z", "t"])
        for p in lps:
            w.writerow([_num(v) for v in p] + ["0"])
    else:
        if n != 3:
            raise ValueError(f"points: Slicer .fcsv files hold 3-D points, got {n}-D")
        buf.write(f"# Markups fiducial file version = {_FCSV_VERSION}\n# CoordinateSystem = LPS\n")
        buf.write("# columns = " + ",".join(_FCSV_COLUMNS) + "\n")
        lps = pts * _flip(3) + 0.0
        for i, p in enumerate(lps):
            label = labels[i] if labels is not None else f"F-{i + 1}"
            w.writerow(
                [str(i + 1)] + [_num(v) for v in p] + ["0", "0", "0", "1", "1", "1", "0", label, "", ""]
            )
    text = buf.getvalue()

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)

    atomic_write(path, write, inputs=inputs)


def match_landmarks(
    fixed: Landmarks, moving: Landmarks, *, by: str = "order"
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Pair two landmark sets: row by row (``by="order"``) or by their labels (``by="label"``).

    Args:
      fixed: landmarks in the fixed space.
      moving: the corresponding landmarks in the moving space.
      by: ``"order"`` (same number of rows, paired in order) or ``"label"`` (every label unique and non-empty
        in both files; pairs the labels they share, in the fixed file's order).

    Returns:
      ``(fixed_points (K, ndim), moving_points (K, ndim), labels)``.

    Raises:
      ValueError: different counts or dimensions, missing/duplicate labels, fewer than one shared label.
    """
    if fixed.points.shape[1] != moving.points.shape[1]:
        raise ValueError(
            f"fixed/moving: the landmark files have {fixed.points.shape[1]}-D and {moving.points.shape[1]}-D points"
        )
    if by == "order":
        if len(fixed.points) != len(moving.points):
            raise ValueError(
                f"fixed/moving: expected the same number of landmarks (paired row by row), got {len(fixed.points)} and "
                f"{len(moving.points)}"
            )
        labels = tuple(f or m for f, m in zip(fixed.labels, moving.labels))
        return fixed.points, moving.points, labels
    if by != "label":
        raise ValueError(f"by: expected 'order' or 'label', got {by!r}")
    for name, lm in (("fixed", fixed), ("moving", moving)):
        if any(not lab for lab in lm.labels):
            raise ValueError(f"{name}: pairing by label needs a label on every landmark")
        if len(set(lm.labels)) != len(lm.labels):
            dup = sorted({lab for lab in lm.labels if lm.labels.count(lab) > 1})
            raise ValueError(f"{name}: duplicate labels {dup}")
    index = {lab: i for i, lab in enumerate(moving.labels)}
    shared = [lab for lab in fixed.labels if lab in index]
    if not shared:
        raise ValueError("fixed/moving: no label appears in both landmark files")
    fi = [fixed.labels.index(lab) for lab in shared]
    mi = [index[lab] for lab in shared]
    return fixed.points[fi], moving.points[mi], tuple(shared)
