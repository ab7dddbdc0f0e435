"""Where the trained models shipped with the package live: ``jaxreg/models/<name>/`` (no Flax import).

A shipped model is a folder written by :func:`jaxreg.learn.train.export_model` (``model.json`` and
``params.npz``) and copied under ``jaxreg/models/``; :func:`jaxreg.learn.train.load_model` loads it by
``<name>``. This module only finds the folders, so that the command line can list the names in its help without
importing Flax.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["MODELS_DIR", "available_models", "shipped_model"]

MODELS_DIR = Path(__file__).resolve().parent / "models"


def available_models() -> tuple[str, ...]:
    """Names of the models shipped in the package (loadable by name with :func:`jaxreg.learn.train.load_model`).

    A shipped model is a folder ``jaxreg/models/<name>/`` holding ``model.json`` (and ``params.npz``, as written
    by :func:`jaxreg.learn.train.export_model`).

    Returns:
      The sorted folder names; empty when no model is shipped.
    """
    if not MODELS_DIR.is_dir():
        return ()
    return tuple(sorted(p.name for p in MODELS_DIR.iterdir() if (p / "model.json").is_file()))


def shipped_model(name: str) -> Path | None:
    """The folder of the shipped model ``name``, or ``None`` when ``name`` is not one (or not a plain name).

    Args:
      name: a folder name under ``jaxreg/models/`` (no path separator).

    Returns:
      ``jaxreg/models/<name>`` if it holds ``model.json``, else ``None``.
    """
    if not isinstance(name, str) or not name or name in (".", "..") or Path(name).name != name:
        return None
    folder = MODELS_DIR / name
    return folder if (folder / "model.json").is_file() else None
