"""jaxreg.learn.data: NIfTI folders -> arrays on a common grid -> deterministic pair batches."""

import threading
import time

import nibabel as nib
import numpy as np
import pytest
import scipy.ndimage as ndi

from jaxreg.core import Grid
from jaxreg.learn.data import (
    PairLoader,
    atlas_pairs,
    common_grid,
    list_images,
    load_volumes,
    match_labels,
    random_pairs,
    sample_pairs,
)


def _save(path, data, affine4):
    nib.Nifti1Image(np.asarray(data), affine4).to_filename(str(path))
    return path


def _affine4(lin, offset):
    a = np.eye(4)
    n = len(offset)
    a[:n, :n] = lin
    a[:n, 3] = offset
    return a


def _rotation3(deg):
    t = np.deg2rad(deg)
    return np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1.0]])


# -- finding files ---------------------------------------------------------------------------------------------
def test_list_images_and_match_labels(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    for name in ["b_T1.nii.gz", "a_T1.nii", "notes.txt"]:
        (tmp_path / "img" / name).write_bytes(b"")
    for name in ["a_seg.nii.gz", "b_seg.nii"]:
        (tmp_path / "lab" / name).write_bytes(b"")
    imgs = list_images(tmp_path / "img")
    assert [p.name for p in imgs] == ["a_T1.nii", "b_T1.nii.gz"]
    assert [p.name for p in list_images(str(tmp_path / "img" / "b*"))] == ["b_T1.nii.gz"]
    labs = match_labels(imgs, tmp_path / "lab", image_suffix="_T1", label_suffix="_seg")
    assert [p.name for p in labs] == ["a_seg.nii.gz", "b_seg.nii"]
    with pytest.raises(FileNotFoundError, match="b_T1"):
        (tmp_path / "lab" / "b_seg.nii").unlink()
        match_labels(imgs, tmp_path / "lab", image_suffix="_T1", label_suffix="_seg")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no NIfTI"):
        list_images(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="folder"):
        list_images(tmp_path / "missing")


# -- common_grid -----------------------------------------------------------------------------------------------
def test_common_grid_variants(tmp_path):
    aff = _affine4(_rotation3(20) @ np.diag([1.0, 1.5, 2.0]), [-10.0, 4.0, 7.0])
    p = _save(tmp_path / "ref.nii.gz", np.zeros((10, 12, 8), np.float32), aff)
    ref = common_grid(p)
    np.testing.assert_allclose(ref.affine, aff, atol=1e-5)
    assert ref.shape == (10, 12, 8)
    resized = common_grid(p, shape=(5, 6, 4))
    np.testing.assert_allclose(resized.extent, ref.extent, atol=1e-5)
    np.testing.assert_allclose(resized.center, ref.center, atol=1e-5)
    both = common_grid(ref, shape=(16, 16, 16), spacing=2.0)
    assert both.shape == (16, 16, 16)
    np.testing.assert_allclose(both.spacing, 2.0)
    np.testing.assert_allclose(both.center, ref.center, atol=1e-5)
    np.testing.assert_allclose(both.direction, ref.direction, atol=1e-6)
    np.testing.assert_allclose(common_grid(ref, spacing=3.0).spacing, 3.0)
    assert common_grid(None, shape=(8, 8), spacing=2.0) == Grid.centered((8, 8), 2.0)
    with pytest.raises(ValueError, match="shape"):
        common_grid(None, shape=(8, 8))
    with pytest.raises(ValueError, match="shape"):
        common_grid(ref, shape=(8, 8))


# -- load_volumes ----------------------------------------------------------------------------------------------
def _scipy_resample(data, src_affine, grid, order):
    """Reference: world mapping index(target) -> world -> index(source) with scipy.ndimage.affine_transform."""
    n = grid.ndim
    src = np.eye(n + 1)
    src[:n, :n] = src_affine[:n, :n]
    src[:n, n] = src_affine[:n, 3]
    m = np.linalg.inv(src) @ grid.affine  # target index -> source index
    return ndi.affine_transform(data, m[:n, :n], offset=m[:n, n], output_shape=grid.shape, order=order,
                                mode="constant", cval=0.0)


def test_load_volumes_images_match_scipy_world_resampling(tmp_path):
    rng = np.random.default_rng(0)
    affs = [
        _affine4(np.diag([1.0, 1.0, 1.0]), [-8.0, -8.0, -8.0]),
        _affine4(_rotation3(15) @ np.diag([1.2, 0.9, 1.5]), [-9.0, -6.0, -10.0]),
        _affine4(np.diag([-1.0, 1.3, 1.1]), [8.0, -9.0, -7.0]),
    ]
    paths, datas = [], []
    for i, a in enumerate(affs):
        d = ndi.gaussian_filter(rng.random((16, 14, 12)), 1.5).astype(np.float32) * 100 + 20
        datas.append(d)
        paths.append(_save(tmp_path / f"im{i}.nii.gz", d, a))
    grid = Grid.centered((12, 12, 10), 1.4)
    raw = load_volumes(paths, grid, normalize=False)
    assert raw.shape == (3, *grid.shape) and raw.dtype == np.float32
    for d, a, got in zip(datas, affs, raw):
        ref = _scipy_resample(d, a, grid, order=1)
        # scipy treats points a hair outside [0, n-1] as inside with constant mode: compare strictly inside
        inside = _scipy_resample(np.ones_like(d), a, grid, order=0) > 0
        np.testing.assert_allclose(got[inside], ref[inside], rtol=1e-4, atol=1e-3)
    norm = load_volumes(paths, grid)
    assert norm.min() >= 0 and norm.max() <= 1
    for d, a, got in zip(datas, affs, norm):
        lo, hi = np.percentile(d, (0.5, 99.5))
        ref = _scipy_resample(np.clip((d - lo) / (hi - lo), 0, 1), a, grid, order=1)
        inside = _scipy_resample(np.ones_like(d), a, grid, order=0) > 0
        np.testing.assert_allclose(got[inside], ref[inside], atol=1e-4)


@pytest.mark.parametrize("ndim", [2, 3])
def test_load_volumes_labels_exact_for_integer_shift(tmp_path, ndim):
    rng = np.random.default_rng(1)
    shape = (12, 10, 8)[:ndim]
    lab = rng.choice([0, 3, 17, 1000], size=shape).astype(np.int16)
    offset = np.array([-5.0, 2.0, 4.0])[:ndim]
    aff = _affine4(np.diag([2.0, 2.0, 2.0])[:ndim, :ndim], offset)
    p = _save(tmp_path / "lab.nii.gz", lab, aff)
    # the common grid: same spacing, shifted by whole voxels (+3, -2, +1)
    shift = np.array([3, -2, 1])[:ndim]
    grid = Grid.from_spacing(shape, 2.0, origin=offset + 2.0 * shift)
    out = load_volumes([p], grid, labels=True)
    assert out.dtype == np.int32 and out.shape == (1, *shape)
    expected = np.zeros(shape, np.int32)
    src = tuple(slice(max(s, 0), min(n + s, n)) for s, n in zip(shift, shape))
    dst = tuple(slice(max(-s, 0), min(n - s, n)) for s, n in zip(shift, shape))
    expected[dst] = lab[src]
    np.testing.assert_array_equal(out[0], expected)
    assert set(np.unique(out)) <= {0, 3, 17, 1000}


def test_load_volumes_errors(tmp_path):
    p2 = _save(tmp_path / "flat.nii.gz", np.zeros((8, 8), np.float32), np.eye(4))
    grid3 = Grid.centered((8, 8, 8))
    with pytest.raises(ValueError, match="2-D image, expected 3-D"):
        load_volumes([p2], grid3)
    with pytest.raises(FileNotFoundError, match="missing.nii.gz"):
        load_volumes([p2, tmp_path / "missing.nii.gz"], Grid.centered((8, 8)))
    with pytest.raises(ValueError, match="paths"):
        load_volumes([], grid3)
    with pytest.raises(TypeError, match="grid"):
        load_volumes([p2], (8, 8))


def test_load_real_label_maps_onto_small_grid(shared_data):
    folder = shared_data / "labelmaps"
    if not folder.is_dir():
        pytest.skip("../shared/data/labelmaps not found")
    paths = list_images(folder)[:2]
    grid = common_grid(paths[0], shape=(32, 32, 32))
    labs = load_volumes(paths, grid, labels=True)
    assert labs.shape == (2, 32, 32, 32) and labs.dtype == np.int32
    for p, lab in zip(paths, labs):
        values = set(np.unique(np.asarray(nib.load(str(p)).dataobj)).astype(int).tolist())
        assert set(np.unique(lab).tolist()) <= values
        assert 0.05 < np.mean(lab > 0) < 0.95  # the head is inside the field of view
    # two subjects, same anatomy: their brains overlap well on the common grid
    a, b = labs[0] > 0, labs[1] > 0
    assert 2 * np.sum(a & b) / (a.sum() + b.sum()) > 0.7


# -- pair sampling ---------------------------------------------------------------------------------------------
def test_random_pairs_deterministic_distinct_and_uniform():
    f1, m1 = random_pairs(7, 64, seed=3, step=11)
    f2, m2 = random_pairs(7, 64, seed=3, step=11)
    np.testing.assert_array_equal(f1, f2)
    np.testing.assert_array_equal(m1, m2)
    f3, _ = random_pairs(7, 64, seed=3, step=12)
    assert not np.array_equal(f1, f3)
    counts = np.zeros((5, 5))
    for step in range(400):
        f, m = random_pairs(5, 16, seed=0, step=step)
        assert np.all(f != m) and f.min() >= 0 and m.max() < 5
        np.add.at(counts, (f, m), 1)
    off = counts[~np.eye(5, dtype=bool)]
    assert np.all(np.diag(counts) == 0)
    assert off.min() > 0.6 * off.mean()  # every ordered pair occurs, roughly uniformly


def test_atlas_pairs_and_sample_pairs():
    f, m = atlas_pairs(6, 50, seed=1, step=2, atlas=4)
    assert np.all(f == 4) and np.all(m != 4) and set(m.tolist()) == {0, 1, 2, 3, 5}
    f2, m2 = sample_pairs(6, 50, seed=1, step=2, mode="atlas", atlas=4)
    np.testing.assert_array_equal(m, m2)
    np.testing.assert_array_equal(sample_pairs(6, 5, seed=1, step=2)[0], random_pairs(6, 5, seed=1, step=2)[0])
    with pytest.raises(ValueError, match="mode"):
        sample_pairs(6, 5, seed=1, step=2, mode="all")
    with pytest.raises(ValueError, match="atlas"):
        atlas_pairs(6, 5, seed=1, step=2, atlas=6)
    with pytest.raises(ValueError, match="num_items"):
        random_pairs(1, 5, seed=1, step=2)


# -- PairLoader ------------------------------------------------------------------------------------------------
def _data(n=5, shape=(6, 5, 4)):
    rng = np.random.default_rng(0)
    return rng.random((n, *shape)).astype(np.float32), rng.integers(0, 4, (n, *shape)).astype(np.int32)


def _take(loader, k):
    return [next(loader) for _ in range(k)]


@pytest.mark.parametrize("shape", [(6, 5), (6, 5, 4)])
def test_loader_batches_shapes_dtypes_and_contents(shape):
    imgs, labs = _data(shape=shape)
    with PairLoader(imgs, labs, batch_size=3, seed=0, prefetch=2) as loader:
        batches = _take(loader, 4)
    for step, b in enumerate(batches):
        assert set(b) == {"fixed", "moving", "fixed_labels", "moving_labels"}
        assert b["fixed"].shape == (3, *shape, 1) and b["fixed"].dtype == np.float32
        assert b["moving_labels"].shape == (3, *shape) and b["moving_labels"].dtype == np.int32
        f, m = random_pairs(5, 3, seed=0, step=step)
        np.testing.assert_array_equal(b["fixed"][..., 0], imgs[f])
        np.testing.assert_array_equal(b["moving"][..., 0], imgs[m])
        np.testing.assert_array_equal(b["fixed_labels"], labs[f])
        np.testing.assert_array_equal(b["moving_labels"], labs[m])
    only = PairLoader(labels=labs, batch_size=2, seed=0, prefetch=0, mode="atlas", atlas=1)
    b = next(only)
    assert set(b) == {"fixed_labels", "moving_labels"}
    np.testing.assert_array_equal(b["fixed_labels"], labs[[1, 1]])


def test_loader_prefetch_does_not_change_batches_and_resume_matches_tail():
    imgs, labs = _data()
    seqs = {}
    for prefetch in (0, 2):
        with PairLoader(imgs, labs, batch_size=2, seed=5, prefetch=prefetch, num_steps=6) as loader:
            seqs[prefetch] = list(loader)
            assert loader.step == 6
    assert len(seqs[0]) == len(seqs[2]) == 6
    for a, b in zip(seqs[0], seqs[2]):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    with PairLoader(imgs, labs, batch_size=2, seed=5, start_step=4, num_steps=2) as resumed:
        tail = list(resumed)
    assert len(tail) == 2
    for a, b in zip(seqs[0][4:], tail):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_loader_augment_hook_is_seeded_per_step():
    imgs, _ = _data()

    def augment(batch, rng):
        return {k: v + rng.normal(size=v.shape).astype(np.float32) for k, v in batch.items()}

    runs = []
    for prefetch in (0, 3):
        with PairLoader(imgs, batch_size=2, seed=1, prefetch=prefetch, augment=augment) as loader:
            runs.append(_take(loader, 3))
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a["fixed"], b["fixed"])
        np.testing.assert_array_equal(a["moving"], b["moving"])
    plain = PairLoader(imgs, batch_size=2, seed=1, prefetch=0)
    for step, b in enumerate(runs[0]):
        rng = np.random.default_rng([1, step, 1])
        ref = augment(plain.make_batch(step), rng)
        np.testing.assert_array_equal(b["fixed"], ref["fixed"])
        assert not np.array_equal(b["fixed"], plain.make_batch(step)["fixed"])


def test_loader_worker_exception_propagates():
    imgs, _ = _data()

    def bad(batch, rng):
        raise RuntimeError("augmentation exploded")

    loader = PairLoader(imgs, batch_size=2, seed=0, prefetch=2, augment=bad)
    with pytest.raises(RuntimeError, match="augmentation exploded"):
        next(loader)
    loader.close()
    assert not loader.running
    with pytest.raises(RuntimeError, match="augmentation exploded"):
        next(PairLoader(imgs, batch_size=2, seed=0, prefetch=0, augment=bad))


def test_loader_close_stops_the_thread():
    imgs, labs = _data()
    before = threading.active_count()
    loader = PairLoader(imgs, labs, batch_size=2, seed=0, prefetch=2)
    next(loader)
    assert loader.running
    time.sleep(0.2)  # let the worker fill the queue and block on it
    loader.close()
    assert not loader.running
    with pytest.raises(StopIteration):
        next(loader)
    with PairLoader(imgs, batch_size=2, seed=0, prefetch=1) as ctx:
        next(ctx)
    assert not ctx.running
    assert threading.active_count() <= before


def test_loader_bad_input():
    imgs, labs = _data()
    with pytest.raises(ValueError, match="images, labels"):
        PairLoader(batch_size=2, seed=0)
    with pytest.raises(ValueError, match="images, labels"):
        PairLoader(imgs, labs[:, :3], batch_size=2, seed=0)
    with pytest.raises(ValueError, match="labels"):
        PairLoader(labels=labs.astype(np.float32), batch_size=2, seed=0)
    with pytest.raises(ValueError, match="mode"):
        PairLoader(imgs, batch_size=2, seed=0, mode="pairs")
    with pytest.raises(ValueError, match="batch_size"):
        PairLoader(imgs, batch_size=0, seed=0)
    with pytest.raises(ValueError, match="prefetch"):
        PairLoader(imgs, batch_size=2, seed=0, prefetch=-1)
