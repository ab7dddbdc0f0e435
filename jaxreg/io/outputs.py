"""The files of a registration run, written all or nothing.

A run (``jaxreg register``, ``jaxreg predict``, ``jaxreg demo``, or a script) first computes everything it will
write, in memory, as one :class:`Outputs` (:func:`jaxreg.evaluation.summarize` builds it), and then
:func:`write_outputs` writes it into a folder:

=====================  ============================  ====================================================
key                    file                          content
=====================  ============================  ====================================================
``warped``             ``warped.nii.gz``             the moving image on the fixed grid
``affine``             ``affine.mat``                the linear part, ITK/ANTs ``AffineTransform`` (MATLAB)
``warp``               ``warp.nii.gz``               the deformable part as an ITK displacement field on the
                                                     fixed grid (deformable runs only)
``inverse_warp``       ``inverse_warp.nii.gz``       its inverse, same layout and grid (deformable runs only)
``composite``          ``Composite.h5``              affine and warp in one ITK HDF5 composite (``composite=True``)
``inverse_composite``  ``InverseComposite.h5``       the inverse chain in one file (``composite=True``)
``warped_labels``      ``warped_labels.nii.gz``      moving labels on the fixed grid (with labels only)
``dice``               ``dice.json``                 Dice/HD95 per label (with labels only)
``report_png``         ``report.png``                the report figure (when matplotlib is installed)
``report_json``        ``report.json``               options, metrics, stages, timings, the files written
=====================  ============================  ====================================================

``antsApplyTransforms -t warp.nii.gz -t affine.mat`` (or ``jaxreg apply``) reproduces ``warped.nii.gz``; the
other direction, fixed-space images and labels into the moving space, is ``jaxreg apply --fixed MOVING --moving
FIXED -t [affine.mat,1] -t inverse_warp.nii.gz`` (``antsApplyTransforms -r MOVING -i FIXED -t [affine.mat,1] -t
inverse_warp.nii.gz``, as with ANTs' ``1InverseWarp.nii.gz``). With ``composite=True`` the two chains are also
written as single files, as ``antsRegistration --write-composite-transform 1`` does: ``-t Composite.h5`` maps
like ``-t warp.nii.gz -t affine.mat`` and ``-t InverseComposite.h5`` like ``-t [affine.mat,1] -t
inverse_warp.nii.gz`` (:func:`composite_transforms`).

Writing is transactional: the folder is checked before anything is created (:func:`check_output_folder`: it is
not a file, and none of its output names is an input of the run); every file is written atomically
(:func:`jaxreg.io.atomic_write`: a temporary file renamed into place); if any write fails, the files this call
created are removed again, files that existed before are left whole (old or new, never half-written), and a
folder this call created is removed if it is empty. ``report.json`` is written last, so its presence marks a
complete result (:func:`is_complete`).

:func:`write_outputs_folder` writes a whole *new* folder atomically: into a hidden temporary folder next to it
(``.NAME.tmp-XXXX``), renamed into place when complete, so the folder either exists whole or not at all (many-pair
runs resume by skipping the folders that exist, :func:`jaxreg.optimize.cohort.register_pairs`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from jaxreg.io._atomic import PathLike, atomic_write, check_not_input
from jaxreg.io.itk import write_transform
from jaxreg.io.nifti import save_image

__all__ = [
    "OUTPUT_NAMES",
    "Outputs",
    "check_output_folder",
    "composite_transforms",
    "is_complete",
    "output_paths",
    "write_outputs",
    "write_outputs_folder",
]

OUTPUT_NAMES = {
    "warped": "warped.nii.gz",
    "affine": "affine.mat",
    "warp": "warp.nii.gz",
    "inverse_warp": "inverse_warp.nii.gz",
    "composite": "Composite.h5",
    "inverse_composite": "InverseComposite.h5",
    "warped_labels": "warped_labels.nii.gz",
    "dice": "dice.json",
    "report_json": "report.json",
    "report_png": "report.png",
}
"""File names of the outputs in a run's folder (``warp``, ``inverse_warp``: deformable runs; ``warped_labels``/``dice``: runs
with label maps)."""


class Outputs(NamedTuple):
    """Everything a registration run writes, computed in memory first (see :func:`write_outputs`).

    Attributes:
      warped: moving image on the fixed grid (:class:`~jaxreg.core.grid.Image`).
      affine: the linear part (a linear transform).
      field: the deformable part as a ``DisplacementField`` on the fixed grid, or ``None``.
      warped_labels: moving labels on the fixed grid (nearest neighbour), or ``None``.
      dice: the Dice/HD95 summary (JSON values), or ``None``.
      report: the ``report.json`` content (JSON values).
      figure_png: ``report.png`` bytes, or ``None`` (no figure: matplotlib is missing).
      text: the lines a command prints for the run (summary and Dice table).
      inverse_field: the inverse of ``field`` as a ``DisplacementField`` on the fixed grid (``None`` with no
        deformable part).
    """

    warped: Any
    affine: Any
    field: Any
    warped_labels: Any
    dice: dict | None
    report: dict
    figure_png: bytes | None
    text: list[str]
    inverse_field: Any


def output_paths(outdir: PathLike) -> dict[str, Path]:
    """``{key: outdir / name}`` for every possible output (:data:`OUTPUT_NAMES`)."""
    return {k: Path(outdir) / v for k, v in OUTPUT_NAMES.items()}


def check_output_folder(outdir: PathLike, inputs: Sequence[PathLike]) -> None:
    """Check an output folder before a run computes anything; creates nothing.

    Args:
      outdir: the folder (it may not exist yet).
      inputs: the run's input files.

    Raises:
      ValueError: ``outdir`` exists and is not a folder, or one of its output names is one of ``inputs``.
    """
    out = Path(outdir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{os.fspath(outdir)}: exists and is not a folder")
    for p in output_paths(out).values():
        check_not_input(p, inputs)


def composite_transforms(outputs: Outputs) -> tuple[Any, Any]:
    """The forward and inverse chains of a run as single transforms (ITK composites when deformable).

    Forward (fixed-space point -> moving space, what images are pulled through): ``affine(warp(x))``, i.e.
    ``compose(affine, field)`` (ITK queue ``[affine, warp]``: the last member acts on the point first). Inverse
    (moving-space point -> fixed space): ``warp^-1(affine^-1(y))``, ``compose(inverse_field, invert(affine))``.

    Args:
      outputs: a run's :class:`Outputs`.

    Returns:
      ``(forward, inverse)``; the affine alone (and its inverse) for linear runs.

    Raises:
      ValueError: a deformable run without its ``inverse_field``.
    """
    from jaxreg.transforms.compose import compose, invert

    inv_affine = invert(outputs.affine)
    if outputs.field is None:
        return outputs.affine, inv_affine
    if outputs.inverse_field is None:
        raise ValueError("outputs: a composite of a deformable run needs its inverse_field")
    return compose(outputs.affine, outputs.field), compose(outputs.inverse_field, inv_affine)


def _text_writer(text: str) -> Callable[[str], None]:
    return lambda tmp: Path(tmp).write_text(text)


def write_outputs(
    outdir: PathLike,
    outputs: Outputs,
    *,
    inputs: Sequence[PathLike] = (),
    extra_files: Sequence[tuple[str, Callable[[str], None]]] = (),
    composite: bool = False,
) -> list[Path]:
    """Write :class:`Outputs` into ``outdir`` (created if needed), all or nothing (see the module docstring).

    Args:
      outdir: output folder.
      outputs: what the run computed.
      inputs: the run's input files, never overwritten.
      extra_files: more ``(file name, writer(tmp_path))`` pairs written into ``outdir`` the same way (before
        ``report.png`` and ``report.json``).
      composite: also write ``Composite.h5`` and ``InverseComposite.h5`` (:func:`composite_transforms`).

    Returns:
      The paths written, in order (``report.json`` last).

    Raises:
      ValueError: see :func:`check_output_folder`.
      OSError: a write failed (the files this call created are removed again).
    """
    out = Path(outdir)
    check_output_folder(out, inputs)
    paths = output_paths(out)
    jobs: list[tuple[Path, Callable[[Path], None]]] = []
    jobs.append((paths["warped"], lambda p: save_image(outputs.warped, p, inputs=inputs)))
    jobs.append((paths["affine"], lambda p: write_transform(outputs.affine, p, inputs=inputs)))
    if outputs.field is not None:
        jobs.append((paths["warp"], lambda p: write_transform(outputs.field, p, inputs=inputs)))
    if outputs.inverse_field is not None:
        jobs.append((paths["inverse_warp"], lambda p: write_transform(outputs.inverse_field, p, inputs=inputs)))
    if composite:
        forward, backward = composite_transforms(outputs)
        jobs.append((paths["composite"], lambda p: write_transform(forward, p, inputs=inputs)))
        jobs.append((paths["inverse_composite"], lambda p: write_transform(backward, p, inputs=inputs)))
    if outputs.warped_labels is not None:
        jobs.append((paths["warped_labels"], lambda p: save_image(outputs.warped_labels, p, inputs=inputs)))
    if outputs.dice is not None:
        dice_text = json.dumps(outputs.dice, indent=2, allow_nan=False) + "\n"
        jobs.append((paths["dice"], lambda p: atomic_write(p, _text_writer(dice_text), inputs=inputs)))
    for name, writer in extra_files:
        jobs.append((out / name, lambda p, w=writer: atomic_write(p, w, inputs=inputs)))
    if outputs.figure_png is not None:
        png = outputs.figure_png
        jobs.append(
            (
                paths["report_png"],
                lambda p: atomic_write(p, lambda tmp: Path(tmp).write_bytes(png), inputs=inputs),
            )
        )
    report = dict(outputs.report)
    report["files"] = [p.name for p, _ in jobs] + [paths["report_json"].name]
    report_text = json.dumps(report, indent=2, allow_nan=False) + "\n"
    jobs.append((paths["report_json"], lambda p: atomic_write(p, _text_writer(report_text), inputs=inputs)))

    made_dir = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    created: list[Path] = []
    written: list[Path] = []
    try:
        for path, job in jobs:
            existed = path.exists()
            job(path)
            written.append(path)
            if not existed:
                created.append(path)
    except BaseException:
        for p in created:
            try:
                p.unlink()
            except OSError:
                pass
        if made_dir:
            try:
                out.rmdir()
            except OSError:
                pass
        raise
    return written


TEMP_MARK = ".tmp-"
"""Infix of the temporary folders of :func:`write_outputs_folder` (``.NAME.tmp-XXXX``, next to ``NAME``)."""


def is_complete(outdir: PathLike) -> bool:
    """Whether ``outdir`` holds a complete run (its ``report.json``, written last, exists)."""
    return output_paths(outdir)["report_json"].is_file()


def write_outputs_folder(
    outdir: PathLike,
    outputs: Outputs,
    *,
    inputs: Sequence[PathLike] = (),
    extra_files: Sequence[tuple[str, Callable[[str], None]]] = (),
) -> list[Path]:
    """Write :class:`Outputs` as a new folder ``outdir`` that appears complete or not at all.

    The files are written (:func:`write_outputs`) into a temporary folder ``.NAME.tmp-XXXX`` beside ``outdir``,
    which is then renamed to ``outdir`` (one ``os.rename``, atomic within a file system). An interrupted call
    leaves at most that temporary folder, never a partial ``outdir``; a later run removes such leftovers
    (:func:`jaxreg.optimize.cohort.register_pairs`).

    Args:
      outdir: the folder to create; its parent is created if needed. It must not exist.
      outputs: what the run computed.
      inputs: the run's input files (never overwritten).
      extra_files: more ``(file name, writer(tmp_path))`` pairs (see :func:`write_outputs`).

    Returns:
      The paths of the files in ``outdir`` (``report.json`` last).

    Raises:
      FileExistsError: ``outdir`` exists.
      OSError: a write failed (the temporary folder is removed).
    """
    out = Path(outdir)
    if out.exists():
        raise FileExistsError(17, f"{os.fspath(outdir)}: exists already", os.fspath(outdir))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}{TEMP_MARK}"))
    try:
        written = write_outputs(tmp, outputs, inputs=inputs, extra_files=extra_files)
        os.chmod(tmp, 0o777 & ~_umask())
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [out / p.name for p in written]


def _umask() -> int:
    from jaxreg.io._atomic import _UMASK

    return _UMASK
