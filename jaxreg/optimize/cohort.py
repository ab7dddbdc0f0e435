"""Many pairs from files: batched registration of a cohort, one output folder per pair, resumable.

:func:`register_pairs` registers a list of :class:`Pair` s (file paths; :func:`read_pairs_csv` and
:func:`folder_pairs` build it) with one pipeline and writes, for pair ``NAME``, the folder ``OUTDIR/NAME`` of a
``jaxreg register`` run (:mod:`jaxreg.io.outputs`: ``warped.nii.gz``, ``affine.mat``, ``warp.nii.gz``,
``report.json``; with label maps ``warped_labels.nii.gz`` and ``dice.json``), and ``OUTDIR/summary.csv``
(:data:`SUMMARY_COLUMNS`: Dice, NCC, folding, SDlogJ and times per pair).

* **Batched**: pairs whose fixed images share one grid and whose moving images share one grid form a group,
  registered by one :func:`jaxreg.optimize.register` call on lists of images (``jax.vmap`` of the same per-level
  kernels, one compiled program per level for the whole group), in chunks of ``batch_size`` pairs.
* **Sharded**: with a ``mesh`` (:func:`jaxreg.parallel.make_mesh`; all devices of all hosts after
  :func:`jaxreg.parallel.initialize_distributed`) each chunk's pair axis is split over the devices
  (``register(..., mesh=)``). Every process computes the same chunks; process 0 writes.
* **Atomic and resumable**: each folder is written into a hidden temporary folder and renamed into place
  (:func:`jaxreg.io.write_outputs_folder`), so ``OUTDIR/NAME`` is complete or absent. A second run skips the
  pairs whose folder is complete (:func:`jaxreg.io.is_complete`) and removes the temporary folders an
  interrupted run left.
* **Checked first**: every input file is read and checked (finite, not constant, 2-D with 2-D, labels on their
  image's grid) before anything is registered or written.

Progress is one ``tqdm`` bar over the pairs (done pairs counted from the start).
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

__all__ = ["SUMMARY_COLUMNS", "Pair", "folder_pairs", "read_pairs_csv", "register_pairs"]

SUMMARY_COLUMNS = (
    "pair",
    "fixed",
    "moving",
    "status",
    "mean_dice_before",
    "mean_dice",
    "ncc_before",
    "ncc",
    "percent_folding",
    "sdlogj",
    "registration_s",
    "evaluation_s",
    "write_s",
)
"""Columns of ``summary.csv``: the pair's name and files, ``status`` (``registered`` in this run or ``skipped``:
done by an earlier run), mean Dice before/after (with label maps, else empty), global NCC before/after, % of
``det J <= 0`` and SDlogJ of the deformable part (of the linear part for linear pipelines), and seconds: the
pair's share of its batch's registration (compilation included), its evaluation, and its writing."""

_NAME = re.compile(r"[^A-Za-z0-9._+-]+")


class Pair(NamedTuple):
    """One registration of a cohort: file paths (NIfTI) and the name of its output folder.

    Attributes:
      name: output folder name (unique within a run).
      fixed: fixed image.
      moving: moving image.
      fixed_labels: label map on the fixed grid, or ``None``.
      moving_labels: label map on the moving grid (given with ``fixed_labels``), or ``None``.
    """

    name: str
    fixed: str
    moving: str
    fixed_labels: str | None = None
    moving_labels: str | None = None


def _stem(path: str) -> str:
    """The file name without its image suffix (``.nii.gz`` counted as one)."""
    from jaxreg.io._atomic import split_suffix

    return split_suffix(path)[0]


def _pair_name(fixed: str, moving: str) -> str:
    return _NAME.sub("_", f"{_stem(moving)}_to_{_stem(fixed)}")


def read_pairs_csv(path: str | os.PathLike) -> list[Pair]:
    """Read the pairs of a CSV file: one row ``fixed,moving[,fixed_labels,moving_labels[,name]]`` per pair.

    A header row is optional (recognised by its first cell ``fixed``); relative paths are relative to the CSV's
    folder; empty lines and lines starting with ``#`` are skipped. The output name defaults to
    ``MOVING_to_FIXED`` (file stems), numbered when two pairs would share it.

    Raises:
      FileNotFoundError: the CSV does not exist.
      ValueError: no pairs, a row with another number of cells, or only one of the two label maps.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(2, f"{path}: no such file", path)
    base = Path(path).resolve().parent
    rows: list[tuple[int, list[str]]] = []
    with open(path, newline="") as fh:
        for i, row in enumerate(csv.reader(fh), start=1):
            cells = [c.strip() for c in row]
            if not any(cells) or cells[0].startswith("#"):
                continue
            if not rows and cells[0].lower() == "fixed":
                continue
            rows.append((i, cells))
    if not rows:
        raise ValueError(f"{path}: no pairs (expected rows fixed,moving[,fixed_labels,moving_labels[,name]])")

    def at(p: str) -> str:
        return os.fspath(p if os.path.isabs(p) else base / p)

    pairs = []
    for i, cells in rows:
        while cells and cells[-1] == "" and len(cells) > 2:
            cells = cells[:-1]
        if len(cells) not in (2, 4, 5) or not cells[0] or not cells[1]:
            raise ValueError(
                f"{path}: line {i}: expected fixed,moving[,fixed_labels,moving_labels[,name]], got {len(cells)} "
                f"cells {cells!r}"
            )
        fl = ml = None
        if len(cells) >= 4:
            if bool(cells[2]) != bool(cells[3]):
                raise ValueError(f"{path}: line {i}: give both label maps (fixed_labels and moving_labels) or none")
            fl, ml = (at(cells[2]), at(cells[3])) if cells[2] else (None, None)
        name = cells[4] if len(cells) == 5 and cells[4] else _pair_name(cells[0], cells[1])
        pairs.append(Pair(name, at(cells[0]), at(cells[1]), fl, ml))
    return _unique_names(pairs)


def folder_pairs(fixed: str | os.PathLike, moving_dir: str | os.PathLike) -> list[Pair]:
    """One fixed image against every NIfTI file of a folder (sorted by name; the fixed file itself is left out).

    Raises:
      FileNotFoundError: ``fixed`` or ``moving_dir`` does not exist.
      ValueError: ``moving_dir`` holds no ``.nii``/``.nii.gz`` file.
    """
    fixed, moving_dir = os.fspath(fixed), os.fspath(moving_dir)
    if not os.path.exists(fixed):
        raise FileNotFoundError(2, f"{fixed}: no such file", fixed)
    if not os.path.isdir(moving_dir):
        raise FileNotFoundError(2, f"{moving_dir}: no such folder", moving_dir)
    files = sorted(
        os.path.join(moving_dir, f)
        for f in os.listdir(moving_dir)
        if f.lower().endswith((".nii", ".nii.gz")) and not f.startswith(".")
    )
    files = [f for f in files if not (os.path.exists(f) and os.path.samefile(f, fixed))]
    if not files:
        raise ValueError(f"{moving_dir}: no .nii or .nii.gz files to register")
    return _unique_names([Pair(_pair_name(fixed, m), fixed, m) for m in files])


def _unique_names(pairs: list[Pair]) -> list[Pair]:
    seen: dict[str, int] = {}
    out = []
    for p in pairs:
        n = seen.get(p.name, 0)
        seen[p.name] = n + 1
        out.append(p if n == 0 else p._replace(name=f"{p.name}_{n + 1}"))
    if len({p.name for p in out}) != len(out):
        raise ValueError("pairs: output names are not unique; name the pairs explicitly")
    return out


# -- inputs -------------------------------------------------------------------------------------------------------
def _load(pair: Pair) -> Any:
    """The checked :class:`~jaxreg.evaluation.report.RegistrationInputs` of a pair (errors name the pair)."""
    import jax.numpy as jnp

    from jaxreg.core.grid import Image
    from jaxreg.evaluation.report import RegistrationInputs
    from jaxreg.io import check_registrable, load_image, load_labels

    where = f"pair {pair.name}"
    try:
        ims = []
        for path in (pair.fixed, pair.moving):
            im = load_image(path)
            check_registrable(im, name=path)
            ims.append(Image(jnp.asarray(im.data, jnp.float32), im.grid))
        f, m = ims
        if f.grid.ndim != m.grid.ndim:
            raise ValueError(f"{pair.moving} is {m.grid.ndim}-D but {pair.fixed} is {f.grid.ndim}-D")
        fl = ml = chosen = None
        if pair.fixed_labels is not None:
            labs = []
            for path, ref in ((pair.fixed_labels, f), (pair.moving_labels, m)):
                lab = load_labels(path, ndim=ref.grid.ndim)
                scale = max(1.0, float(np.abs(ref.grid.affine).max()))
                same = lab.grid.shape == ref.grid.shape and np.allclose(
                    lab.grid.affine, ref.grid.affine, rtol=0, atol=1e-5 * scale
                )
                if not same:
                    raise ValueError(f"{path}: the label map is not on its image's grid")
                labs.append(Image(lab.data, ref.grid))
            fl, ml = labs
            vals = np.union1d(np.unique(np.asarray(fl.data)), np.unique(np.asarray(ml.data)))
            chosen = [int(v) for v in vals if v != 0]
            if not chosen:
                raise ValueError(f"{pair.fixed_labels}, {pair.moving_labels}: no non-zero labels")
    except (ValueError, OSError) as e:
        text = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        if isinstance(e, OSError) and e.filename is not None and os.fspath(e.filename) not in text:
            text = f"{os.fspath(e.filename)}: {text}"
        msg = f"{where}: {' '.join(text.split())}"
        raise (OSError(e.errno, msg) if isinstance(e, OSError) else ValueError(msg)) from e
    paths = tuple(p for p in pair[1:] if p is not None)
    return RegistrationInputs(f, m, None, None, fl, ml, chosen, {}, paths)


def _options(method: Any) -> dict[str, Any]:
    """The report's ``options`` of a pipeline: its name and its linear and deformable levels."""
    from jaxreg.optimize.engine import _as_stages

    stages = _as_stages(method, None, None)
    lin = [tuple(lv) for st in stages if getattr(st.model, "is_linear", False) for lv in st.levels]
    rest = [tuple(lv) for st in stages if not getattr(st.model, "is_linear", False) for lv in st.levels]
    name = method if isinstance(method, str) else "custom"
    return {"pipeline": name, "linear_levels": lin, "deformable_levels": rest, "greedy": {}, "window": 5}


# -- the run ----------------------------------------------------------------------------------------------------
def _clean_leftovers(outdir: Path, names: set[str]) -> int:
    """Remove the temporary folders of interrupted writes (``.NAME.tmp-*``) of this run's pairs."""
    from jaxreg.io.outputs import TEMP_MARK

    n = 0
    if not outdir.is_dir():
        return 0
    for entry in outdir.iterdir():
        if entry.is_dir() and entry.name.startswith(".") and TEMP_MARK in entry.name:
            if entry.name[1:].split(TEMP_MARK)[0] in names:
                shutil.rmtree(entry, ignore_errors=True)
                n += 1
    return n


def _row(pair: Pair, report: dict, status: str) -> dict[str, Any]:
    m = report.get("metrics", {})
    jac = report.get("jacobian", {})
    t = report.get("timings", {})
    return {
        "pair": pair.name,
        "fixed": pair.fixed,
        "moving": pair.moving,
        "status": status,
        "mean_dice_before": m.get("mean_dice_before"),
        "mean_dice": m.get("mean_dice"),
        "ncc_before": m.get("ncc_before"),
        "ncc": m.get("ncc_after"),
        "percent_folding": jac.get("percent_nonpositive"),
        "sdlogj": jac.get("sdlogj"),
        "registration_s": t.get("registration"),
        "evaluation_s": t.get("evaluation"),
        "write_s": t.get("write"),
    }


def _write_summary(path: Path, rows: Sequence[dict]) -> None:
    from jaxreg.io import atomic_write

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(SUMMARY_COLUMNS))
            w.writeheader()
            for r in rows:
                w.writerow(
                    {k: ("" if r.get(k) is None else (f"{r[k]:.6g}" if isinstance(r[k], float) else r[k]))
                     for k in SUMMARY_COLUMNS}
                )  # fmt: skip

    atomic_write(path, write)


def register_pairs(
    pairs: Sequence[Pair],
    outdir: str | os.PathLike,
    *,
    method: Any = "default",
    options: dict[str, Any] | None = None,
    mesh: Any = None,
    batch_size: int | None = None,
    figure: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    winsorize: tuple[float, float] | None = None,
    histogram_matching: bool = False,
) -> list[dict[str, Any]]:
    """Register many pairs batched (optionally sharded over devices), one output folder per pair, resumable.

    Args:
      pairs: the pairs (:func:`read_pairs_csv`, :func:`folder_pairs`); names unique.
      outdir: output folder: ``OUTDIR/NAME`` per pair and ``OUTDIR/summary.csv``.
      method: the pipeline for :func:`jaxreg.optimize.register` (a :data:`~jaxreg.optimize.PRESETS` name or
        stages).
      options: the ``options`` entry of each ``report.json`` (:func:`jaxreg.evaluation.report.options_json`
        layout); default: the pipeline's name and levels.
      mesh: a 1-D device mesh (:func:`jaxreg.parallel.make_mesh`) to shard each batch's pairs over; ``None``:
        the default device.
      batch_size: at most this many pairs per :func:`~jaxreg.optimize.register` call (default: a whole group of
        pairs on common grids); memory grows with it.
      figure: also write ``report.png`` per pair (slower).
      progress: show a ``tqdm`` progress bar (on stderr).
      log: called with progress lines (groups, skipped pairs).
      winsorize: register images clipped to these intensity quantiles ``(lower, upper)`` and rescaled to
        ``[0, 1]``; ``None``: off (:func:`jaxreg.warp.intensity.prepare_pair`, per pair).
      histogram_matching: register each moving image matched to its fixed image's histogram. With either
        option the outputs (``warped.nii.gz``, metrics) are still of the original images; ``report.json``
        records the options under ``intensity``.

    Returns:
      One summary row per pair (:data:`SUMMARY_COLUMNS`), in the order of ``pairs``; also written to
      ``OUTDIR/summary.csv``.

    Raises:
      ValueError, OSError: bad pairs or inputs (raised before anything is registered or written; the message
        names the pair), ``outdir`` is a file, or a pair's folder exists incomplete with files that are not
        outputs of a run.
    """
    import jax

    from jaxreg.evaluation import summarize
    from jaxreg.io import OUTPUT_NAMES, is_complete, write_outputs_folder
    from jaxreg.optimize.engine import _as_stages, register

    log = log or (lambda s: None)
    pairs = list(pairs)
    if not pairs:
        raise ValueError("pairs: expected at least one pair")
    if any(not isinstance(p, Pair) for p in pairs):
        raise TypeError("pairs: expected a sequence of jaxreg.optimize.cohort.Pair")
    if len({p.name for p in pairs}) != len(pairs):
        raise ValueError("pairs: output names must be unique")
    for p in pairs:
        if not p.name or p.name.startswith(".") or _NAME.search(p.name):
            raise ValueError(
                f"pairs: {p.name!r} is not a folder name (letters, digits, '.', '_', '+', '-'; not starting with '.')"
            )
    if batch_size is not None and int(batch_size) < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    from jaxreg.warp.intensity import check_winsorize, prepare_pair

    winsorize = check_winsorize(winsorize)
    histogram_matching = bool(histogram_matching)
    prepare = winsorize is not None or histogram_matching
    out = Path(outdir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{os.fspath(outdir)}: exists and is not a folder")
    stages = _as_stages(method, None, None)
    options = dict(options) if options is not None else _options(method)
    writer = jax.process_index() == 0

    done, todo = [], []
    for p in pairs:
        folder = out / p.name
        if is_complete(folder):
            done.append(p)
            continue
        if folder.exists():
            extra = [e.name for e in folder.iterdir() if e.name not in OUTPUT_NAMES.values()]
            if not folder.is_dir() or extra:
                raise ValueError(
                    f"{folder}: exists without report.json and holds other files ({', '.join(extra[:3])}); "
                    "move it away"
                )
        todo.append(p)
    inputs = {p.name: _load(p) for p in todo}  # every input checked before anything is written
    if prepare:
        for p in todo:
            if inputs[p.name].fixed.has_channels or inputs[p.name].moving.has_channels:
                raise ValueError(f"pair {p.name}: winsorize and histogram_matching need one-channel images")

    if writer and todo:
        out.mkdir(parents=True, exist_ok=True)
        n = _clean_leftovers(out, {p.name for p in todo})
        if n:
            log(f"removed {n} temporary folder(s) of an interrupted run")
        for p in todo:  # incomplete folders of outputs only (a crash outside write_outputs_folder): redone
            if (out / p.name).exists():
                shutil.rmtree(out / p.name)
    if done:
        log(f"{len(done)} of {len(pairs)} pairs done already: skipped")

    groups: dict[tuple, list[Pair]] = {}
    for p in todo:
        inp = inputs[p.name]
        key = (inp.fixed.grid, inp.moving.grid, inp.fixed.data.shape, inp.moving.data.shape)
        groups.setdefault(key, []).append(p)
    chunks = []
    for members in groups.values():
        size = len(members) if batch_size is None else int(batch_size)
        chunks += [members[i : i + size] for i in range(0, len(members), size)]
    if todo:
        log(f"{len(todo)} pairs to register in {len(chunks)} batch(es) of common grids")

    intensity = {}
    if prepare:
        intensity = {"intensity": {"winsorize": None if winsorize is None else list(winsorize),
                                   "histogram_matching": histogram_matching}}  # fmt: skip
    rows: dict[str, dict] = {}
    for p in done:
        with open(out / p.name / OUTPUT_NAMES["report_json"]) as fh:
            rows[p.name] = _row(p, json.load(fh), "skipped")
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(pairs), initial=len(done), unit="pair", desc="register-many", disable=not writer)
    try:
        for chunk in chunks:
            ins = [inputs[p.name] for p in chunk]
            t0 = time.perf_counter()
            reg = [(i.fixed, i.moving) for i in ins]  # the images the metrics compare (the outputs: the originals)
            if prepare:
                reg = [prepare_pair(f, m, winsorize=winsorize, histogram_matching=histogram_matching) for f, m in reg]
            if len(chunk) == 1 and mesh is None:
                results = [register(reg[0][0], reg[0][1], method=stages)]
            else:
                res = register([f for f, _ in reg], [m for _, m in reg], method=stages, mesh=mesh)
                results = [res.pair(k) for k in range(len(chunk))]
            share = (time.perf_counter() - t0) / len(chunk)
            for p, inp, r in zip(chunk, ins, results):
                r = r._replace(seconds=share)
                t1 = time.perf_counter()
                outs = summarize(
                    inp,
                    r,
                    options,
                    title=f"jaxreg register-many: {p.name}",
                    extra={"command": "jaxreg register-many", "pair": p._asdict(), **intensity},
                    figure=figure,
                )
                t_eval = time.perf_counter() - t1
                outs.report["timings"]["evaluation"] = round(t_eval, 3)
                outs.report["timings"]["batch"] = {"pairs": len(chunk), "seconds": round(share * len(chunk), 3)}
                t2 = time.perf_counter()
                if writer:
                    write_outputs_folder(out / p.name, outs, inputs=inp.paths)
                row = _row(p, outs.report, "registered")
                row["write_s"] = round(time.perf_counter() - t2, 3)  # measured here, not in report.json
                rows[p.name] = row
                if bar is not None:
                    bar.update(1)
            if writer:  # a summary of what is done so far: an interrupted run still leaves one
                _write_summary(out / "summary.csv", [rows[p.name] for p in pairs if p.name in rows])
    finally:
        if bar is not None:
            bar.close()
    table = [rows[p.name] for p in pairs]
    if writer:
        out.mkdir(parents=True, exist_ok=True)
        _write_summary(out / "summary.csv", table)
    return table
