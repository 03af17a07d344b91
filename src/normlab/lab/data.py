"""Datasets for the lab: digits (bundled, the default), mnist1d (generated) and CIFAR-10 (local copy).

``load_dataset(name)`` returns a dict with ``X_train, y_train, X_val, y_val,
X_test, y_test``: X float64 of shape (n, features), y int64 of shape (n,),
every X mean-subtracted with the *training* mean (so no statistic leaks from
validation or test data). Splits are drawn from ``np.random.default_rng(seed)``.

Nothing here downloads: digits ships with scikit-learn, mnist1d is generated
by ``mnist1d.data.make_dataset`` (its downloading ``get_dataset`` is never
called) and CIFAR-10 is read from a ``cifar-10-batches-py`` directory the
user points to.
"""

from __future__ import annotations

import numbers
import os
import pickle
import random
from pathlib import Path

import numpy as np

from .. import _checks
from .._files import write_atomic

DATASETS = ("digits", "mnist1d", "cifar10")

#: One sample's shape, channels first, per dataset (X comes flattened; conv nets reshape it to this).
INPUT_SHAPES = {"digits": (1, 8, 8), "mnist1d": (1, 40), "cifar10": (3, 32, 32)}

#: Fraction of the labelled training pool held out for validation, per dataset.
DEFAULT_VAL_FRACTION = {"digits": 0.2, "mnist1d": 0.2, "cifar10": 0.02}

CIFAR_DIRNAME = "cifar-10-batches-py"
CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_FILE = "test_batch"
CIFAR_FEATURES = 3 * 32 * 32


class DatasetError(RuntimeError):
    """A dataset is missing, unreadable or not in the expected format."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """A dataset's files are not where the loader looked (the message lists where)."""


def load_dataset(name="digits", *, seed=0, data_dir=None, val_fraction=None,
                 num_train=None, cache_dir=None):
    """Load dataset ``name`` split into train/val/test, mean-subtracted with the training mean.

    seed: seeds the split (and the ``num_train`` subsample); same seed, same arrays.
    data_dir: CIFAR-10 only: the ``cifar-10-batches-py`` directory or its parent
        (default: ``$NORMLAB_DATA``, then ``./cifar-10-batches-py``).
    val_fraction: share of the training pool held out for validation
        (default per dataset: ``DEFAULT_VAL_FRACTION``).
    num_train: keep at most this many training examples (a seeded subsample).
    cache_dir: mnist1d only: where the generated arrays are cached as ``.npz``
        (default: ``$NORMLAB_CACHE``, else ``$XDG_CACHE_HOME/normlab``, else ``~/.cache/normlab``).
    """
    if not isinstance(name, str) or name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    if val_fraction is None:
        val_fraction = DEFAULT_VAL_FRACTION[name]
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, numbers.Real) or not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be a number in (0, 1), got {val_fraction!r}")
    if num_train is not None:  # None: all
        _checks.check_positive_int(num_train, "num_train")

    X_pool, y_pool, X_test, y_test = _LOADERS[name](data_dir=data_dir, cache_dir=cache_dir)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y_pool))
    n_val = max(1, int(round(len(order) * float(val_fraction))))
    if n_val >= len(order):
        raise ValueError(f"val_fraction={val_fraction} leaves no training data from {len(order)} examples")
    val_idx, train_idx = order[:n_val], order[n_val:]
    if num_train is not None:
        train_idx = train_idx[:num_train]
    return _finish(X_pool[train_idx], y_pool[train_idx], X_pool[val_idx], y_pool[val_idx], X_test, y_test)


def num_classes(data: dict) -> int:
    """Number of classes: one more than the largest label in any split of a ``load_dataset`` dict."""
    return int(max(data[k].max() for k in ("y_train", "y_val", "y_test") if k in data)) + 1


def _finish(X_train, y_train, X_val, y_val, X_test, y_test):
    """Cast to float64/int64 and subtract the training mean from every split."""
    X_train, X_val, X_test = (np.asarray(x, dtype=np.float64).reshape(len(x), -1)
                              for x in (X_train, X_val, X_test))
    mean = X_train.mean(axis=0)
    return {
        "X_train": X_train - mean, "y_train": np.asarray(y_train, dtype=np.int64),
        "X_val": X_val - mean, "y_val": np.asarray(y_val, dtype=np.int64),
        "X_test": X_test - mean, "y_test": np.asarray(y_test, dtype=np.int64),
    }


# --- digits -----------------------------------------------------------------

def _load_digits(**_):
    """scikit-learn's bundled 8x8 digits: 1797 examples, 64 features in 0..16, 10 classes.

    A fixed seeded quarter is the test set, independent of ``seed`` so that
    test numbers stay comparable across seeds.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    X, y = bunch.data, bunch.target
    order = np.random.default_rng(20_24).permutation(len(y))
    n_test = len(y) // 4
    test, pool = order[:n_test], order[n_test:]
    return X[pool], y[pool], X[test], y[test]


# --- mnist1d ----------------------------------------------------------------

def _default_cache_dir():
    if os.environ.get("NORMLAB_CACHE"):
        return Path(os.environ["NORMLAB_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "normlab"


def _load_mnist1d(cache_dir=None, **_):
    """MNIST-1D with its standard arguments: 4000 train + 1000 test signals of length 40.

    Generated offline by ``mnist1d.data.make_dataset`` and cached as ``.npz``
    (no pickle). make_dataset seeds NumPy's and Python's global RNGs; their
    states are restored afterwards so loading data never disturbs a caller's RNG.
    """
    try:
        import mnist1d
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as exc:  # pragma: no cover - mnist1d is a dependency
        raise DatasetError("the mnist1d dataset needs the mnist1d package: pip install mnist1d") from exc

    args = get_dataset_args()
    version = getattr(mnist1d, "__version__", None) or _dist_version("mnist1d")
    cache = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
    path = cache / f"mnist1d-{version}-n{args.num_samples}-seed{args.seed}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                return z["x"], z["y"], z["x_test"], z["y_test"]
        except Exception:  # a truncated or foreign cache file: regenerate it
            pass

    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    arrays = {k: np.asarray(data[k]) for k in ("x", "y", "x_test", "y_test")}
    try:
        cache.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda fh: np.savez(fh, **arrays))  # a reader never sees half a file
    except OSError:
        pass  # an unwritable cache only costs regeneration next time
    return arrays["x"], arrays["y"], arrays["x_test"], arrays["y_test"]


def _dist_version(dist):
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:  # pragma: no cover
        return "unknown"


# --- CIFAR-10 ---------------------------------------------------------------

def cifar10_candidates(data_dir=None):
    """Directories searched for CIFAR-10, in order: ``data_dir``, ``$NORMLAB_DATA``, ``./cifar-10-batches-py``.

    For ``data_dir`` and ``$NORMLAB_DATA`` both the directory itself and its
    ``cifar-10-batches-py`` child are tried.
    """
    roots = []
    if data_dir is not None:
        roots.append(Path(data_dir))
    elif os.environ.get("NORMLAB_DATA"):
        roots.append(Path(os.environ["NORMLAB_DATA"]))
    candidates = []
    for root in roots:
        candidates += [root, root / CIFAR_DIRNAME]
    if data_dir is None:
        candidates.append(Path.cwd() / CIFAR_DIRNAME)
    return candidates


def _load_cifar10(data_dir=None, **_):
    """CIFAR-10 from a local ``cifar-10-batches-py``: 50000 train + 10000 test, 3072 features in 0..255.

    The batches are Python pickles (the dataset's own distribution format),
    read with ``encoding="bytes"``. Only files in the directory the user
    points to are opened; do not point it at files you do not trust.
    """
    candidates = cifar10_candidates(data_dir)
    for directory in candidates:
        if (directory / CIFAR_TEST_FILE).is_file() and (directory / CIFAR_TRAIN_FILES[0]).is_file():
            break
    else:
        looked = "\n  ".join(str(c) for c in candidates)
        raise DatasetNotFoundError(
            f"CIFAR-10 not found: no directory holding {CIFAR_TRAIN_FILES[0]} and {CIFAR_TEST_FILE}. Looked in:\n  "
            f"{looked}\nDownload and unpack cifar-10-python.tar.gz from "
            "https://www.cs.toronto.edu/~kriz/cifar.html, then pass --data-dir or set NORMLAB_DATA.")
    missing = [f for f in CIFAR_TRAIN_FILES if not (directory / f).is_file()]
    if missing:
        raise DatasetNotFoundError(f"CIFAR-10 in {directory} is incomplete: missing {', '.join(missing)}")
    train = [_read_cifar_batch(directory / f) for f in CIFAR_TRAIN_FILES]
    X_test, y_test = _read_cifar_batch(directory / CIFAR_TEST_FILE)
    X = np.concatenate([x for x, _ in train])
    y = np.concatenate([t for _, t in train])
    return X, y, X_test, y_test


def _read_cifar_batch(path):
    """One CIFAR-10 batch: a pickled dict with b"data" uint8 (n, 3072) and b"labels" (n,) in 0..9."""
    try:
        with open(path, "rb") as fh:
            batch = pickle.load(fh, encoding="bytes")
    except Exception as exc:
        raise DatasetError(f"cannot read CIFAR-10 batch {path}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise DatasetError(f"CIFAR-10 batch {path} is not a dict with b'data' and b'labels' (got {keys})")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"])
    if data.ndim != 2 or data.shape[1] != CIFAR_FEATURES or labels.shape != (data.shape[0],):
        raise DatasetError(f"CIFAR-10 batch {path} has data of shape {data.shape} and labels of shape "
                           f"{labels.shape}; expected (n, {CIFAR_FEATURES}) and (n,)")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DatasetError(f"CIFAR-10 batch {path} has labels outside 0..9")
    return data, labels.astype(np.int64)


_LOADERS = {"digits": _load_digits, "mnist1d": _load_mnist1d, "cifar10": _load_cifar10}
