"""Registration of frozen dataclasses as pytrees with attribute key paths.

:func:`register_fields` registers a class with :func:`jax.tree_util.register_pytree_with_keys` and flatten
functions of its own: the named data fields are children (with ``GetAttrKey`` paths), the other fields static
metadata compared by value. Each class gets its own node type, so two classes with the same number of leaves
never share a treedef (``jax.tree_util.register_dataclass`` treedefs of distinct classes compared equal with jax
0.10). Transforms (:func:`jaxreg.transforms.base.pytree_dataclass`) and registration methods use it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax

__all__ = ["register_fields"]


def register_fields(cls: type, data: Sequence[str]) -> type:
    """Register the dataclass ``cls`` as a pytree: fields in ``data`` are children, the rest static metadata.

    Args:
      cls: a dataclass (usually frozen).
      data: names of the fields that are pytree children (arrays, traced values, nested pytrees).

    Returns:
      ``cls`` (registered in place).
    """
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError(f"data: {unknown} are not fields of {cls.__name__}")
    data = tuple(n for n in names if n in data)
    meta = tuple(n for n in names if n not in data)
    keys = tuple(jax.tree_util.GetAttrKey(n) for n in data)

    def flatten_with_keys(obj: Any) -> tuple[list, tuple]:
        return [(k, getattr(obj, n)) for k, n in zip(keys, data)], tuple(getattr(obj, n) for n in meta)

    def flatten(obj: Any) -> tuple[list, tuple]:
        return [getattr(obj, n) for n in data], tuple(getattr(obj, n) for n in meta)

    def unflatten(aux: tuple, children: Any) -> Any:
        obj = object.__new__(cls)
        for n, v in zip(data, children):
            object.__setattr__(obj, n, v)
        for n, v in zip(meta, aux):
            object.__setattr__(obj, n, v)
        return obj

    jax.tree_util.register_pytree_with_keys(cls, flatten_with_keys, unflatten, flatten)
    return cls
