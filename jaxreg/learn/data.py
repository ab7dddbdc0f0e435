"""Host-side data pipeline for learned registration: NIfTI folders -> arrays on a common grid -> pair batches.

Training an amortised registration network needs every volume on one grid, and a stream of (fixed, moving)
pairs. This module does the host (NumPy) part:

* :func:`list_images` and :func:`match_labels` -- find ``.nii``/``.nii.gz`` files and the label map of each
  image (same base name in a labels folder, with optional suffixes such as ``_T1`` -> ``_labels``);
* :func:`common_grid` -- the grid all volumes are resampled to (a reference image's grid, resized or
  re-spaced, or a centred grid of given shape and spacing);
* :func:`load_volumes` -- read files with :mod:`jaxreg.io` and resample them onto that grid *through world
  coordinates* (so files with different shapes, spacings and orientations line up), linear for images
  (robustly normalised to [0, 1]) and nearest-neighbour for label maps;
* :func:`random_pairs`, :func:`atlas_pairs`, :func:`sample_pairs` -- pair indices for a training step, a pure
  function of ``(seed, step)`` (``numpy.random.default_rng([seed, step])``), so a run resumed at step ``k``
  sees exactly the pairs of an uninterrupted run;
* :class:`PairLoader` -- an iterator of batch dicts for steps ``start_step, start_step + 1, ...``, built on a
  background thread into a bounded queue (prefetching off the training thread).

Batches are channel-last NumPy arrays: images ``(B, *S, 1)`` float32, labels ``(B, *S)`` int32.
"""

from __future__ import annotations

import glob
import os
import queue
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import jax.numpy as jnp
import numpy as np

from jaxreg.core.grid import Grid
from jaxreg.learn.synthesis import normalize_intensity

__all__ = [
    "list_images",
    "match_labels",
    "common_grid",
    "load_volumes",
    "random_pairs",
    "atlas_pairs",
    "sample_pairs",
    "PairLoader",
]

PathLike = str | os.PathLike
_SUFFIXES = (".nii.gz", ".nii")


def _stem(path: PathLike) -> str:
    name = Path(path).name
    for s in _SUFFIXES:
        if name.lower().endswith(s):
            return name[: -len(s)]
    return name


# -- finding files ---------------------------------------------------------------------------------------------
def list_images(folder: PathLike, *, pattern: str = "*.nii*") -> list[Path]:
    """The NIfTI files in ``folder`` matching ``pattern``, sorted by name.

    Args:
      folder: a directory, or a glob pattern itself (e.g. ``"data/*_T1.nii.gz"``; ``pattern`` is then unused).
      pattern: shell pattern of the file names inside ``folder``.

    Returns:
      Sorted list of paths ending in ``.nii`` or ``.nii.gz``.

    Raises:
      FileNotFoundError: ``folder`` is neither a directory nor a pattern that matches anything.
      ValueError: no NIfTI file matches.
    """
    f = os.fspath(folder)
    if os.path.isdir(f):
        where = os.path.join(f, pattern)
    elif glob.has_magic(f):
        where = f
    else:
        raise FileNotFoundError(2, f"folder: {f} is not a directory", f)
    paths = sorted(Path(p) for p in glob.glob(where) if p.lower().endswith(_SUFFIXES) and os.path.isfile(p))
    if not paths:
        raise ValueError(f"folder: no NIfTI files (.nii, .nii.gz) match {where}")
    return paths


def match_labels(
    images: Sequence[PathLike], labels_folder: PathLike, *, image_suffix: str = "", label_suffix: str = ""
) -> list[Path]:
    """The label map of each image: same base name in ``labels_folder``, with a suffix rule.

    The base name is the file name without ``.nii``/``.nii.gz``; ``image_suffix`` is removed from its end (when
    present) and ``label_suffix`` appended. E.g. ``subj01_T1.nii.gz`` with ``image_suffix="_T1"`` and
    ``label_suffix="_labels"`` matches ``labels_folder/subj01_labels.nii.gz`` (or ``.nii``).

    Args:
      images: image paths.
      labels_folder: directory of the label maps.
      image_suffix: suffix of the image base names to drop.
      label_suffix: suffix of the label base names.

    Returns:
      One label path per image, in order.

    Raises:
      FileNotFoundError: ``labels_folder`` is missing, or some images have no label map (all are listed).
    """
    folder = Path(labels_folder)
    if not folder.is_dir():
        raise FileNotFoundError(2, f"labels_folder: {folder} is not a directory", str(folder))
    out, missing = [], []
    for p in images:
        base = _stem(p)
        if image_suffix and base.endswith(image_suffix):
            base = base[: -len(image_suffix)]
        cands = [folder / f"{base}{label_suffix}{s}" for s in _SUFFIXES]
        hit = next((c for c in cands if c.is_file()), None)
        if hit is None:
            missing.append(f"{p} -> {cands[0].name}")
        else:
            out.append(hit)
    if missing:
        raise FileNotFoundError(2, "labels_folder: no label map for " + "; ".join(missing), str(folder))
    return out


def _header_grid(path: PathLike) -> Grid:
    import nibabel as nib

    from jaxreg.io.nifti import _check_exists, nifti_grid

    _check_exists(path)
    try:
        img = nib.load(os.fspath(path))
    except Exception as e:
        raise ValueError(f"{path}: not a readable NIfTI file ({type(e).__name__}: {e})") from e
    shp = tuple(int(s) for s in img.shape)
    spatial = shp[:2] if len(shp) == 2 or (len(shp) >= 3 and shp[2] == 1) else shp[:3]
    return nifti_grid(np.asarray(img.header.get_best_affine(), np.float64), spatial)


def common_grid(
    reference: Grid | PathLike | None,
    *,
    shape: Sequence[int] | None = None,
    spacing: float | Sequence[float] | None = None,
) -> Grid:
    """The grid on which to put all training volumes.

    ============================  ===========================================================================
    arguments                     grid
    ============================  ===========================================================================
    ``reference`` only            the reference grid itself
    ``shape``                     the reference resized to ``shape`` (same extent and direction,
                                  :meth:`Grid.resize`)
    ``spacing``                   the reference re-spaced (same centre and direction, :meth:`Grid.with_spacing`)
    ``shape`` and ``spacing``     same centre and direction as the reference, given shape and spacing
    ``reference=None``            :meth:`Grid.centered` ``(shape, spacing)`` (both required)
    ============================  ===========================================================================

    Args:
      reference: a :class:`~jaxreg.core.Grid`, a NIfTI file (its header's grid; the data are not read), or
        ``None``.
      shape: spatial shape of the result.
      spacing: voxel size in mm, scalar or per axis.

    Returns:
      A :class:`~jaxreg.core.Grid`.
    """
    if reference is None:
        if shape is None or spacing is None:
            raise ValueError("shape, spacing: both are required when reference is None")
        return Grid.centered(tuple(shape), spacing)
    ref = reference if isinstance(reference, Grid) else _header_grid(reference)
    if shape is not None:
        shp = tuple(int(s) for s in shape)
        if len(shp) != ref.ndim or any(s < 1 for s in shp):
            raise ValueError(f"shape: expected {ref.ndim} positive sizes for a {ref.ndim}-D reference, got {tuple(shape)}")
    if shape is None and spacing is None:
        return ref
    if spacing is None:
        return ref.resize(shp)
    if shape is None:
        return ref.with_spacing(spacing)
    sp = np.broadcast_to(np.asarray(spacing, np.float64), (ref.ndim,))
    if np.any(sp <= 0) or not np.all(np.isfinite(sp)):
        raise ValueError(f"spacing: expected positive finite values, got {sp.tolist()}")
    n = ref.ndim
    a = np.eye(n + 1)
    a[:n, :n] = ref.direction * sp[None, :]
    a[:n, n] = ref.center - a[:n, :n] @ ((np.asarray(shp) - 1) / 2.0)
    return Grid(shp, a)


# -- loading ---------------------------------------------------------------------------------------------------
def load_volumes(
    paths: Sequence[PathLike], grid: Grid, *, labels: bool = False, normalize: bool = True
) -> np.ndarray:
    """Read NIfTI files and resample them onto ``grid`` through world coordinates.

    Each file is read with :func:`jaxreg.io.load_image` (or :func:`jaxreg.io.load_labels`) on its own grid
    (header affine) and resampled at the world positions of ``grid``'s voxel centres: linear interpolation for
    images, nearest neighbour for label maps (:func:`jaxreg.warp.resample` / :func:`jaxreg.warp.warp_labels`
    with the identity transform). Outside a file's field of view images read 0 and labels the background 0.
    With ``normalize``, each image is scaled to [0, 1] by :func:`jaxreg.learn.synthesis.normalize_intensity`
    (0.5 and 99.5 percentiles of its own voxels) *before* resampling, so the zero padding does not bias it.

    Args:
      paths: ``N`` NIfTI files (``.nii``/``.nii.gz``), 2D or 3D like ``grid``.
      grid: the common grid (see :func:`common_grid`).
      labels: the files are integer label maps.
      normalize: scale images to [0, 1] (ignored for labels).

    Returns:
      ``(N, *grid.shape)`` float32 (images) or int32 (labels) NumPy array.

    Raises:
      ValueError: ``paths`` is empty, a file is not readable NIfTI, or its dimension differs from ``grid``'s.
      FileNotFoundError: files are missing (all missing paths are listed).
    """
    from jaxreg.io import load_image, load_labels
    from jaxreg.transforms.linear import Translation
    from jaxreg.warp import resample, warp_labels

    if not isinstance(grid, Grid):
        raise TypeError(f"grid: expected a jaxreg Grid, got {type(grid).__name__}")
    if isinstance(paths, (str, os.PathLike)):
        raise TypeError("paths: expected a sequence of file paths, got a single path (wrap it in a list)")
    paths = list(paths)
    if not paths:
        raise ValueError("paths: expected at least one file, got an empty list")
    missing = [os.fspath(p) for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(2, f"paths: {len(missing)} file(s) not found: " + ", ".join(missing), missing[0])
    out = np.empty((len(paths), *grid.shape), np.int32 if labels else np.float32)
    ident = Translation.identity(grid.ndim)
    for i, p in enumerate(paths):
        img = load_labels(p) if labels else load_image(p, dtype=jnp.float32)
        if img.grid.ndim != grid.ndim:
            raise ValueError(f"{p}: a {img.grid.ndim}-D image, expected {grid.ndim}-D like grid {grid}")
        if labels:
            out[i] = np.asarray(warp_labels(img, ident, grid).data)
        else:
            if normalize:
                img = type(img)(normalize_intensity(img.data), img.grid)
            out[i] = np.asarray(resample(img, grid, order=1, mode="constant").data)
    return out


# -- pair sampling ---------------------------------------------------------------------------------------------
def _check_sampling(num_items: int, batch_size: int, seed: int, step: int, need: int) -> None:
    for name, v, lo in (("num_items", num_items, need), ("batch_size", batch_size, 1), ("seed", seed, 0),
                        ("step", step, 0)):
        if not isinstance(v, (int, np.integer)) or v < lo:
            raise ValueError(f"{name}: expected an integer >= {lo}, got {v!r}")


def random_pairs(num_items: int, batch_size: int, *, seed: int, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Random ordered pairs ``(fixed, moving)`` of distinct items for one training step.

    ``fixed`` is uniform over ``0..N-1`` and ``moving`` uniform over the other ``N - 1`` items, drawn with
    ``numpy.random.default_rng([seed, step])``: the same ``(seed, step)`` always gives the same pairs.

    Args:
      num_items: ``N >= 2``.
      batch_size: ``B`` pairs.
      seed: non-negative run seed.
      step: non-negative training step.

    Returns:
      ``(fixed_idx, moving_idx)``, two int64 arrays ``(B,)`` with ``fixed_idx != moving_idx``.
    """
    _check_sampling(num_items, batch_size, seed, step, 2)
    rng = np.random.default_rng([int(seed), int(step)])
    fixed = rng.integers(0, num_items, batch_size)
    moving = (fixed + rng.integers(1, num_items, batch_size)) % num_items
    return fixed, moving


def atlas_pairs(
    num_items: int, batch_size: int, *, seed: int, step: int, atlas: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Atlas-to-subject pairs: the atlas is the fixed image, the moving image a random other item.

    Args:
      num_items: ``N >= 2`` (the atlas included).
      batch_size: ``B`` pairs.
      seed: non-negative run seed.
      step: non-negative training step (``numpy.random.default_rng([seed, step])``).
      atlas: index of the atlas in ``0..N-1``.

    Returns:
      ``(fixed_idx, moving_idx)``: ``fixed_idx`` all ``atlas``, ``moving_idx`` uniform over the others.
    """
    _check_sampling(num_items, batch_size, seed, step, 2)
    if not isinstance(atlas, (int, np.integer)) or not 0 <= atlas < num_items:
        raise ValueError(f"atlas: expected an index in [0, {num_items}), got {atlas!r}")
    rng = np.random.default_rng([int(seed), int(step)])
    moving = (atlas + rng.integers(1, num_items, batch_size)) % num_items
    return np.full(batch_size, atlas, dtype=moving.dtype), moving


def sample_pairs(
    num_items: int, batch_size: int, *, seed: int, step: int, mode: str = "random", atlas: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`random_pairs` (``mode="random"``) or :func:`atlas_pairs` (``mode="atlas"``)."""
    if mode == "random":
        return random_pairs(num_items, batch_size, seed=seed, step=step)
    if mode == "atlas":
        return atlas_pairs(num_items, batch_size, seed=seed, step=step, atlas=atlas)
    raise ValueError(f"mode: expected 'random' or 'atlas', got {mode!r}")


# -- loader ----------------------------------------------------------------------------------------------------
class _End:
    pass


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


class PairLoader:
    """Iterator of pair batches for steps ``start_step, start_step + 1, ...``, prefetched on a thread.

    Each batch is a dict of NumPy arrays for ``B = batch_size`` pairs chosen by :func:`sample_pairs`
    (a function of ``(seed, step)`` only, so resuming at ``start_step=k`` reproduces the tail of a run):

    * ``"fixed"``, ``"moving"``: ``(B, *S, 1)`` float32, when ``images`` is given;
    * ``"fixed_labels"``, ``"moving_labels"``: ``(B, *S)`` int32, when ``labels`` is given (labels only is the
      mode of label-driven synthesis, where the images are generated on the device);
    * ``"displacement"``: ``(B, *S, ndim)`` float32, ``targets[fixed_idx, moving_idx]``, when ``targets`` (the
      fields of every ordered pair, ``(N, N, *S, ndim)``, e.g. a memory map of
      :func:`jaxreg.learn.targets.engine_targets`) is given.

    ``augment``, if given, is called as ``augment(batch, rng)`` with ``rng =
    numpy.random.default_rng([seed, step, 1])`` and returns the new batch (host-side augmentation that is
    deterministic per step).

    With ``prefetch > 0`` a daemon thread builds batches into a queue of at most ``prefetch`` batches; an
    exception raised there is re-raised by ``next()`` in the consumer. :meth:`close` (or leaving the ``with``
    block) stops and joins the thread. ``prefetch=0`` builds each batch in ``next()``. Both give identical
    batches.

    Attributes:
      step: the step of the batch that the next ``next()`` returns.
      num_items: ``N``.
      spatial_shape: ``S``.
    """

    def __init__(
        self,
        images: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        *,
        batch_size: int,
        seed: int,
        mode: str = "random",
        atlas: int = 0,
        start_step: int = 0,
        prefetch: int = 2,
        num_steps: int | None = None,
        augment: Callable[[dict[str, np.ndarray], np.random.Generator], dict[str, np.ndarray]] | None = None,
        targets: np.ndarray | None = None,
    ):
        if images is None and labels is None:
            raise ValueError("images, labels: expected at least one of them")
        if images is not None:
            images = np.asarray(images)
            if images.ndim not in (3, 4) or not np.issubdtype(images.dtype, np.number):
                raise ValueError(f"images: expected a numeric (N, *S) array with 2 or 3 spatial axes, got "
                                 f"shape {images.shape} dtype {images.dtype}")
        if labels is not None:
            labels = np.asarray(labels)
            if labels.ndim not in (3, 4) or not np.issubdtype(labels.dtype, np.integer):
                raise ValueError(f"labels: expected an integer (N, *S) array with 2 or 3 spatial axes, got "
                                 f"shape {labels.shape} dtype {labels.dtype}")
        if images is not None and labels is not None and images.shape != labels.shape:
            raise ValueError(f"images, labels: shapes differ ({images.shape} vs {labels.shape})")
        ref = images if images is not None else labels
        if targets is not None:
            n_items = ref.shape[0]
            want = (n_items, n_items, *ref.shape[1:], ref.ndim - 1)
            if tuple(np.shape(targets)) != want or not np.issubdtype(np.asarray(targets[:0]).dtype, np.floating):
                raise ValueError(f"targets: expected float displacements of every ordered pair {want}, got shape "
                                 f"{tuple(np.shape(targets))}")
        if mode not in ("random", "atlas"):
            raise ValueError(f"mode: expected 'random' or 'atlas', got {mode!r}")
        if not isinstance(prefetch, (int, np.integer)) or prefetch < 0:
            raise ValueError(f"prefetch: expected an integer >= 0, got {prefetch!r}")
        if num_steps is not None and (not isinstance(num_steps, (int, np.integer)) or num_steps < 0):
            raise ValueError(f"num_steps: expected None or an integer >= 0, got {num_steps!r}")
        if not isinstance(start_step, (int, np.integer)) or start_step < 0:
            raise ValueError(f"start_step: expected an integer >= 0, got {start_step!r}")
        # validate the sampling arguments once, eagerly
        sample_pairs(ref.shape[0], batch_size, seed=seed, step=int(start_step), mode=mode, atlas=atlas)
        self._images = None if images is None else images.astype(np.float32, copy=False)
        self._labels = None if labels is None else labels.astype(np.int32, copy=False)
        self._targets = targets
        self.num_items = int(ref.shape[0])
        self.spatial_shape = tuple(ref.shape[1:])
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.mode = mode
        self.atlas = int(atlas)
        self.start_step = int(start_step)
        self.num_steps = None if num_steps is None else int(num_steps)
        self.prefetch = int(prefetch)
        self.augment = augment
        self.step = self.start_step
        self._stop = threading.Event()
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self._done = False

    # -- batches ---------------------------------------------------------------------------------------------
    def _end_step(self) -> int | None:
        return None if self.num_steps is None else self.start_step + self.num_steps

    def make_batch(self, step: int) -> dict[str, np.ndarray]:
        """The batch of ``step`` (a pure function of the loader's data, seed and ``step``)."""
        fixed, moving = sample_pairs(self.num_items, self.batch_size, seed=self.seed, step=int(step),
                                     mode=self.mode, atlas=self.atlas)
        batch: dict[str, np.ndarray] = {}
        if self._images is not None:
            batch["fixed"] = self._images[fixed][..., None]
            batch["moving"] = self._images[moving][..., None]
        if self._labels is not None:
            batch["fixed_labels"] = self._labels[fixed]
            batch["moving_labels"] = self._labels[moving]
        if self._targets is not None:
            batch["displacement"] = np.stack([np.asarray(self._targets[i, j], np.float32) for i, j in zip(fixed, moving)])
        if self.augment is not None:
            batch = self.augment(batch, np.random.default_rng([self.seed, int(step), 1]))
        return batch

    def _worker(self) -> None:
        q = self._queue
        assert q is not None
        step = self.start_step
        end = self._end_step()

        def put(item: Any) -> bool:
            while not self._stop.is_set():
                try:
                    q.put(item, timeout=0.05)
                    return True
                except queue.Full:
                    continue
            return False

        try:
            while not self._stop.is_set() and (end is None or step < end):
                if not put(self.make_batch(step)):
                    return
                step += 1
            put(_End())
        except BaseException as e:  # re-raised in the consumer
            put(_Failure(e))

    def _start(self) -> None:
        self._queue = queue.Queue(maxsize=self.prefetch)
        self._thread = threading.Thread(target=self._worker, name="jaxreg-PairLoader", daemon=True)
        self._thread.start()

    # -- iterator protocol -----------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._done or self._stop.is_set():
            raise StopIteration
        end = self._end_step()
        if self.prefetch == 0:
            if end is not None and self.step >= end:
                self._done = True
                raise StopIteration
            batch = self.make_batch(self.step)
        else:
            if self._thread is None:
                self._start()
            assert self._queue is not None
            while True:
                try:
                    item = self._queue.get(timeout=0.1)
                    break
                except queue.Empty:
                    if self._thread is not None and not self._thread.is_alive() and self._queue.empty():
                        raise RuntimeError("PairLoader: the prefetch thread stopped without a result") from None
            if isinstance(item, _End):
                self._done = True
                raise StopIteration
            if isinstance(item, _Failure):
                self._done = True
                self.close()
                raise item.exc
            batch = item
        self.step += 1
        return batch

    def __len__(self) -> int:
        if self.num_steps is None:
            raise TypeError("PairLoader: len() is undefined without num_steps (an endless loader)")
        return self.num_steps

    # -- lifetime --------------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """Whether the prefetch thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the prefetch thread and wait for it (at most ``timeout`` seconds); idempotent."""
        self._stop.set()
        t = self._thread
        if t is not None:
            q = self._queue
            # drain so that a worker blocked on a full queue notices the stop event
            while q is not None:
                try:
                    q.get_nowait()
                except queue.Empty:
                    break
            if t is not threading.current_thread():
                t.join(timeout)

    def __enter__(self) -> "PairLoader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:  # best effort: the thread is a daemon anyway
        try:
            self._stop.set()
        except Exception:
            pass
