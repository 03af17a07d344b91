"""The lab's dataset loaders: shapes, dtypes, seeded splits, mean subtraction, clear errors."""

import pickle
import random

import numpy as np
import pytest

from normlab.lab import data as labdata
from normlab.lab.data import DATASETS, DatasetError, DatasetNotFoundError, load_dataset

KEYS = ("X_train", "y_train", "X_val", "y_val", "X_test", "y_test")


def check_splits(d, features, classes=10):
    assert tuple(d) == KEYS
    for split in ("train", "val", "test"):
        X, y = d[f"X_{split}"], d[f"y_{split}"]
        assert X.dtype == np.float64 and y.dtype == np.int64
        assert X.ndim == 2 and X.shape == (len(y), features) and len(y) > 0
        assert y.min() >= 0 and y.max() < classes
    # mean-subtracted with the training mean: train is centred, val/test only approximately
    np.testing.assert_allclose(d["X_train"].mean(axis=0), 0.0, atol=1e-9)


def test_digits_splits_are_seeded_and_centred():
    a = load_dataset("digits", seed=3)
    check_splits(a, 64)
    assert sum(len(a[f"y_{s}"]) for s in ("train", "val", "test")) == 1797
    b = load_dataset("digits", seed=3)
    for k in KEYS:
        np.testing.assert_array_equal(a[k], b[k])
    c = load_dataset("digits", seed=4)
    assert not np.array_equal(a["y_train"], c["y_train"])
    np.testing.assert_array_equal(a["y_test"], c["y_test"])  # test set does not move with the seed


def test_digits_val_fraction_and_num_train():
    d = load_dataset("digits", val_fraction=0.5, num_train=100)
    assert len(d["y_train"]) == 100
    assert len(d["y_val"]) == round((1797 - 1797 // 4) * 0.5)


def test_mean_is_the_training_mean_only(monkeypatch):
    rng = np.random.default_rng(0)
    pool = rng.normal(size=(50, 3)) + np.arange(50)[:, None]  # rows differ: any leak moves the mean
    test = rng.normal(size=(7, 3))
    monkeypatch.setitem(labdata._LOADERS, "digits", lambda **_: (pool, np.arange(50) % 10, test, np.zeros(7)))
    d = load_dataset("digits", seed=5, val_fraction=0.3)
    order = np.random.default_rng(5).permutation(50)
    train_raw, val_raw = pool[order[15:]], pool[order[:15]]
    mean = train_raw.mean(axis=0)
    np.testing.assert_allclose(d["X_train"], train_raw - mean)
    np.testing.assert_allclose(d["X_val"], val_raw - mean)
    np.testing.assert_allclose(d["X_test"], test - mean)


@pytest.mark.parametrize("bad", ["mnist", "", None, 3])
def test_unknown_dataset_lists_known_names(bad):
    with pytest.raises(ValueError, match="digits, mnist1d, cifar10"):
        load_dataset(bad)


@pytest.mark.parametrize("kwargs", [{"val_fraction": 0.0}, {"val_fraction": 1.0}, {"val_fraction": "0.2"},
                                    {"num_train": 0}, {"num_train": True}, {"num_train": 2.5}])
def test_bad_split_arguments(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        load_dataset("digits", **kwargs)


def test_mnist1d_generated_offline_cached_and_rng_untouched(tmp_path, monkeypatch):
    def no_download(*a, **k):
        raise AssertionError("mnist1d must be generated, never downloaded")

    import mnist1d.data

    monkeypatch.setattr(mnist1d.data, "get_dataset", no_download)
    np.random.seed(7)
    random.seed(7)
    expected_np, expected_py = np.random.random(), random.random()
    np.random.seed(7)
    random.seed(7)
    d = load_dataset("mnist1d", seed=1, cache_dir=tmp_path)
    assert (np.random.random(), random.random()) == (expected_np, expected_py)
    check_splits(d, 40)
    assert len(d["y_train"]) + len(d["y_val"]) == 4000 and len(d["y_test"]) == 1000
    cached = list(tmp_path.glob("mnist1d-*.npz"))
    assert len(cached) == 1
    monkeypatch.setattr(mnist1d.data, "make_dataset", no_download)  # second load reads the cache
    again = load_dataset("mnist1d", seed=1, cache_dir=tmp_path)
    for k in KEYS:
        np.testing.assert_array_equal(d[k], again[k])


def test_mnist1d_cache_write_failing_part_way_leaves_no_temporary_file(tmp_path, monkeypatch):
    def disk_full(fh, **arrays):
        fh.write(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(labdata.np, "savez", disk_full)
    d = load_dataset("mnist1d", seed=1, cache_dir=tmp_path)  # the data is still returned
    check_splits(d, 40)
    assert list(tmp_path.iterdir()) == []


def write_cifar(directory, n_per_batch=6, seed=0, skip=()):
    """A tiny CIFAR-10 in the real format: pickled dicts of b"data" uint8 (n, 3072) and b"labels"."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    batches = {}
    for name in labdata.CIFAR_TRAIN_FILES + (labdata.CIFAR_TEST_FILE,):
        data = rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=n_per_batch)]
        batches[name] = (data, labels)
        if name in skip:
            continue
        with open(directory / name, "wb") as fh:
            pickle.dump({b"batch_label": name.encode(), b"data": data, b"labels": labels}, fh)
    return batches


def test_cifar10_reads_the_pickle_format(tmp_path):
    batches = write_cifar(tmp_path / "cifar-10-batches-py")
    d = load_dataset("cifar10", data_dir=tmp_path, val_fraction=0.2)  # parent dir works too
    check_splits(d, 3072)
    assert len(d["y_train"]) + len(d["y_val"]) == 30 and len(d["y_test"]) == 6
    test_data, test_labels = batches["test_batch"]
    np.testing.assert_array_equal(d["y_test"], test_labels)
    all_train = np.concatenate([batches[f][0] for f in labdata.CIFAR_TRAIN_FILES]).astype(np.float64)
    # the test split is centred with the mean of the training split only
    train_rows = d["X_train"]
    offset = test_data.astype(np.float64) - d["X_test"]
    np.testing.assert_allclose(offset, np.broadcast_to(offset[0], offset.shape))
    assert not np.allclose(offset[0], all_train.mean(axis=0))  # val rows are not in the mean
    assert train_rows.shape[0] == 24


def test_cifar10_from_environment(tmp_path, monkeypatch):
    write_cifar(tmp_path / "here")
    monkeypatch.setenv("NORMLAB_DATA", str(tmp_path / "here"))
    assert load_dataset("cifar10", val_fraction=0.2)["X_train"].shape[1] == 3072


def test_cifar10_missing_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("NORMLAB_DATA", str(tmp_path / "nowhere"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("cifar10")
    msg = str(err.value)
    assert str(tmp_path / "nowhere") in msg and str(tmp_path / "cifar-10-batches-py") in msg
    assert "--data-dir" in msg and "NORMLAB_DATA" in msg


def test_cifar10_incomplete_directory(tmp_path):
    write_cifar(tmp_path, skip=("data_batch_4",))
    with pytest.raises(DatasetNotFoundError, match="data_batch_4"):
        load_dataset("cifar10", data_dir=tmp_path)


def test_cifar10_corrupt_batch(tmp_path):
    write_cifar(tmp_path)
    (tmp_path / "data_batch_2").write_bytes(b"\x80\x04 definitely not a pickle")
    with pytest.raises(DatasetError, match="data_batch_2"):
        load_dataset("cifar10", data_dir=tmp_path)


def test_cifar10_wrong_shape(tmp_path):
    write_cifar(tmp_path)
    with open(tmp_path / "test_batch", "wb") as fh:
        pickle.dump({b"data": np.zeros((4, 100), np.uint8), b"labels": [0, 1, 2, 3]}, fh)
    with pytest.raises(DatasetError, match=r"test_batch.*\(4, 100\)"):
        load_dataset("cifar10", data_dir=tmp_path)


def test_datasets_constant():
    assert DATASETS == ("digits", "mnist1d", "cifar10")
