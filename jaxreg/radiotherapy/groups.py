"""Organ groups of adaptive radiotherapy: which labels move rigidly, keep their volume, or deform freely.

In an MR-guided prostate treatment the planning CT's organs fall in three groups (Zachiu et al. 2020):

* ``rigid`` -- bones (sacrum, vertebrae, hips, femurs): each moves as a rigid body;
* ``incompressible`` -- the target (prostate): moves and may bend slightly but keeps its volume (``det J = 1``);
* ``compressible`` -- bladder, rectum, bowel: fill, empty and deform freely.

:class:`OrganGroups` holds the three tuples of label values. It is a hashable value (a NamedTuple of int tuples),
so it can configure compiled code and be compared by value. It is read from a TOML file (``rigid = [25, 26]``
...), a JSON file with the same keys (TotalSegmentator ``labels.json`` of the shared data) or built from flags,
and checked against a label map before anything is computed or written.

Reference: C. Zachiu et al., "Anatomically-adaptive multi-modal image registration for image-guided external-beam
radiotherapy", Phys. Med. Biol. 65(21), 2020.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Iterable
from typing import Any, NamedTuple

import numpy as np

from jaxreg.core.grid import Image

__all__ = ["GROUP_NAMES", "OrganGroups", "load_groups"]

GROUP_NAMES = ("rigid", "incompressible", "compressible")


def _values(x: Any, name: str) -> tuple[int, ...]:
    if x is None:
        return ()
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        x = [x]
    if isinstance(x, str):
        x = [p for p in x.replace(",", " ").split() if p]
    if isinstance(x, (bytes, dict)) or not isinstance(x, Iterable):
        raise TypeError(f"{name}: expected a sequence of integer label values, got {type(x).__name__}")
    out = []
    for v in x:
        if isinstance(v, str):
            try:
                v = int(v)
            except ValueError:
                raise ValueError(f"{name}: expected integer label values, got {v!r}") from None
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{name}: expected integer label values, got {v!r}")
        if int(v) <= 0:
            raise ValueError(f"{name}: expected positive label values (0 is background), got {int(v)}")
        if int(v) in out:
            raise ValueError(f"{name}: label {int(v)} is listed twice")
        out.append(int(v))
    return tuple(out)


class OrganGroups(NamedTuple):
    """Label values of the rigid, incompressible and compressible organs (a hashable value).

    Attributes:
      rigid: labels of bones; each label moves as one rigid body.
      incompressible: labels that keep their volume (the prostate).
      compressible: labels free to deform (bladder, rectum, bowel).
    """

    rigid: tuple[int, ...] = ()
    incompressible: tuple[int, ...] = ()
    compressible: tuple[int, ...] = ()

    @classmethod
    def create(cls, rigid: Any = (), incompressible: Any = (), compressible: Any = ()) -> OrganGroups:
        """Groups from sequences (or comma-separated strings) of label values, checked.

        Args:
          rigid: label values of bones.
          incompressible: label values of volume-preserving organs.
          compressible: label values of freely deforming organs.

        Returns:
          The :class:`OrganGroups`.

        Raises:
          TypeError, ValueError: a non-integer or non-positive value, a label listed twice or in two groups, or
            no label at all.
        """
        g = cls(
            _values(rigid, "rigid"),
            _values(incompressible, "incompressible"),
            _values(compressible, "compressible"),
        )
        seen: dict[int, str] = {}
        for name, vals in zip(GROUP_NAMES, g):
            for v in vals:
                if v in seen:
                    raise ValueError(f"{name}: label {v} is also listed in {seen[v]}; a label belongs to one group")
                seen[v] = name
        if not seen:
            raise ValueError("groups: expected at least one label in rigid, incompressible or compressible")
        return g

    @classmethod
    def from_mapping(cls, mapping: Any, *, source: str = "groups") -> OrganGroups:
        """Groups from a mapping with (some of) the keys ``rigid``, ``incompressible``, ``compressible``.

        Other keys are ignored (a TotalSegmentator ``labels.json`` also holds names).
        """
        if not isinstance(mapping, dict):
            raise TypeError(f"{source}: expected a table with keys {GROUP_NAMES}, got {type(mapping).__name__}")
        if not any(k in mapping for k in GROUP_NAMES):
            raise ValueError(f"{source}: expected at least one of the keys {GROUP_NAMES}, got {sorted(mapping)}")
        try:
            return cls.create(*(mapping.get(k, ()) for k in GROUP_NAMES))
        except (TypeError, ValueError) as e:
            raise type(e)(f"{source}: {e}") from None

    @property
    def labels(self) -> tuple[int, ...]:
        """All label values of the three groups."""
        return self.rigid + self.incompressible + self.compressible

    def check(self, labels: Image, *, name: str = "labels", image: Image | None = None) -> None:
        """Check the groups against a label map (and the label map against its image).

        Args:
          labels: the integer label map the groups refer to.
          name: the argument name used in error messages.
          image: the intensity image ``labels`` belongs to; its grid must equal the label map's.

        Raises:
          TypeError: ``labels`` is not an :class:`~jaxreg.core.grid.Image`.
          ValueError: ``labels`` on another grid than ``image``, non-integer labels, a group label absent from the
            map (an empty organ mask).
        """
        if not isinstance(labels, Image):
            raise TypeError(f"{name}: expected a jaxreg Image (a label map), got {type(labels).__name__}")
        if image is not None and labels.grid != image.grid:
            raise ValueError(
                f"{name}: expected the grid of its image {image.grid.shape} "
                f"(spacing {tuple(np.round(image.grid.spacing, 4))}), got {labels.grid.shape} "
                f"(spacing {tuple(np.round(labels.grid.spacing, 4))}); resample the labels onto the image first"
            )
        lab = np.asarray(labels.data)
        if np.issubdtype(lab.dtype, np.floating) and np.any(lab != np.round(lab)):
            raise ValueError(f"{name}: expected integer label values, got non-integer floats")
        present = set(np.unique(lab).astype(np.int64).tolist())
        for gname, vals in zip(GROUP_NAMES, self):
            absent = [v for v in vals if v not in present]
            if absent:
                raise ValueError(
                    f"{gname}: label value(s) {absent} do not occur in {name} (an empty organ mask); "
                    f"present: {sorted(present - {0})[:30]}"
                )


def load_groups(path: str | os.PathLike) -> OrganGroups:
    """Read :class:`OrganGroups` from a TOML (``.toml``) or JSON file.

    TOML example::

        rigid = [25, 26, 75, 76, 77, 78]   # sacrum, S1, femurs, hips
        incompressible = [22]               # prostate
        compressible = [20, 21]             # colon, bladder

    A ``[groups]`` table holding these keys is accepted too. JSON files use the same keys at the top level (the
    shared data's ``labels.json``).

    Args:
      path: the file.

    Returns:
      The checked :class:`OrganGroups`.

    Raises:
      FileNotFoundError: no such file.
      ValueError: unparsable file, unknown suffix, or invalid groups (see :meth:`OrganGroups.create`).
    """
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise FileNotFoundError(f"groups: no such file {p!r}")
    try:
        if p.endswith(".toml"):
            with open(p, "rb") as f:
                data = tomllib.load(f)
        elif p.endswith(".json"):
            with open(p) as f:
                data = json.load(f)
        else:
            raise ValueError(f"groups: expected a .toml or .json file, got {p!r}")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"groups: cannot parse {p!r}: {e}") from None
    if isinstance(data, dict) and isinstance(data.get("groups"), dict):
        data = data["groups"]
    return OrganGroups.from_mapping(data, source=f"groups ({os.path.basename(p)})")
