"""The fused backend's large outputs on recycled blocks (``backends/output_pool``): reused only once dropped."""

import numpy as np
import pytest

import normlab
from normlab.backends import output_pool as pool

pytest.importorskip("numba")

SHAPE = (1024, 1024)  # 4 MiB of float32: the smallest pooled size


@pytest.fixture
def fresh_pool(monkeypatch):
    monkeypatch.setitem(pool._state, "limit", 64 << 20)
    pool.clear()
    yield
    pool.clear()


def test_a_dropped_output_serves_the_next_call_of_its_size(fresh_pool):
    a = pool.empty(SHAPE, np.float32)
    assert a.shape == SHAPE and a.dtype == np.float32 and a.flags.c_contiguous and a.flags.writeable
    address = a.ctypes.data
    del a
    assert pool.idle_bytes() == 4 << 20
    b = pool.empty((2048, 512), np.float32)  # same bytes, another shape
    assert b.ctypes.data == address and pool.idle_bytes() == 0


def test_live_outputs_and_their_views_keep_their_blocks(fresh_pool):
    a = pool.empty(SHAPE, np.float32)
    view = a[3:5]
    del a
    assert pool.idle_bytes() == 0  # the view still reads the block
    b = pool.empty(SHAPE, np.float32)
    assert not np.shares_memory(b, view)
    del view
    assert pool.idle_bytes() == 4 << 20


def test_small_outputs_and_a_zero_limit_are_plain_arrays(fresh_pool, monkeypatch):
    assert pool.empty((16, 16), np.float64).base is None
    monkeypatch.setitem(pool._state, "limit", 0)
    assert pool.empty(SHAPE, np.float32).base is None


def test_idle_blocks_beyond_the_limit_are_freed(fresh_pool, monkeypatch):
    monkeypatch.setitem(pool._state, "limit", 6 << 20)
    a, b = pool.empty(SHAPE, np.float32), pool.empty(SHAPE, np.float32)
    del a, b
    assert pool.idle_bytes() == 4 << 20


def test_limit_from_the_environment(monkeypatch):
    monkeypatch.setitem(pool._state, "limit", None)
    monkeypatch.setenv("NORMLAB_POOL_BYTES", "-1")
    with pytest.raises(ValueError, match="NORMLAB_POOL_BYTES"):
        pool.limit()
    monkeypatch.setenv("NORMLAB_POOL_BYTES", "123")
    assert pool.limit() == 123


def test_forward_and_backward_on_recycled_outputs(fresh_pool):
    """Two steps of batch norm: the second step's outputs are the first's blocks, its results its own."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=SHAPE).astype(np.float32)
    dout = rng.normal(size=SHAPE).astype(np.float32)
    first, cache = normlab.batchnorm_forward(x, None, None, backend="numba")
    dx_first = normlab.normalize_backward(dout, cache)[0].copy()
    expected = first.copy()
    address = first.ctypes.data
    del first, cache
    again, cache = normlab.batchnorm_forward(x, None, None, backend="numba")
    assert again.ctypes.data == address
    np.testing.assert_array_equal(again, expected)
    np.testing.assert_array_equal(normlab.normalize_backward(dout, cache)[0], dx_first)


def test_a_block_serves_one_live_output_at_a_time(fresh_pool):
    a = pool.empty(SHAPE, np.float32)
    del a
    b, c = pool.empty(SHAPE, np.float32), pool.empty(SHAPE, np.float32)
    b[:] = 1.0
    c[:] = 2.0
    assert not np.shares_memory(b, c) and np.all(b == 1.0)
