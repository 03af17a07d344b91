"""The fused backend's large outputs on recycled blocks (``backends/output_pool``): reused only once dropped."""

import numpy as np
import pytest

import normlab
from normlab import core
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


def test_a_new_size_evicts_the_longest_idle_blocks_of_a_full_pool(fresh_pool, monkeypatch):
    """A loop whose batch size changes recycles the new size rather than keeping the old one's blocks."""
    monkeypatch.setitem(pool._state, "limit", 10 << 20)
    old = [pool.empty(SHAPE, np.float32) for _ in range(2)]
    del old
    assert pool.idle_bytes() == 8 << 20  # no room for another size beside them
    new = pool.empty((5 << 20,), np.uint8)
    address = new.ctypes.data
    del new
    assert pool.idle_bytes() == (4 << 20) + (5 << 20)  # one old block made room
    again = pool.empty((5 << 20,), np.uint8)
    assert again.ctypes.data == address


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


def _head(held):
    """The first 16 values of whatever ``held`` is, copied."""
    if isinstance(held, memoryview):
        return np.frombuffer(held.tobytes()[:64], np.float32).copy()
    if type(held).__module__.startswith("torch"):
        return held.reshape(-1)[:16].clone().numpy()
    return np.array(np.asarray(held).reshape(-1)[:16].view(np.float32))


def _torch(name):
    torch = pytest.importorskip("torch")
    return getattr(torch, name)


# ways a caller keeps an output's memory without keeping the output itself
HOLDERS = {
    "slice": lambda a: a[3:5],
    "view of a view": lambda a: a[3:900][1:2, ::2],
    "reshape": lambda a: a.reshape(-1)[16:],
    "another dtype": lambda a: a.view(np.int32)[7],
    "as_strided": lambda a: np.lib.stride_tricks.as_strided(a[2:], shape=(16,), strides=(4,)),
    "memoryview": lambda a: memoryview(a)[1:],
    "frombuffer": lambda a: np.frombuffer(memoryview(a), np.float32)[1024:],
    "ndarray(buffer=)": lambda a: np.ndarray((16,), np.float32, buffer=a, offset=4096),
    "torch.from_numpy": lambda a: _torch("from_numpy")(a[9:]),
    "torch.from_dlpack": lambda a: _torch("from_dlpack")(a[11:]),
}


@pytest.mark.parametrize("how", sorted(HOLDERS))
def test_memory_held_another_way_is_not_handed_out_again(fresh_pool, how):
    """Hold part of an output (a view, a buffer, a tensor), drop the output, take two more of its size and write
    them: what is held still reads the first output's values."""
    a = pool.empty(SHAPE, np.float32)
    a[:] = np.arange(SHAPE[1], dtype=np.float32)
    held = HOLDERS[how](a)
    expected = _head(held)
    del a
    others = [pool.empty(SHAPE, np.float32) for _ in range(2)]
    for other in others:
        other.fill(-1.0)
    np.testing.assert_array_equal(_head(held), expected)
    assert pool.idle_bytes() == 0
    del held
    assert pool.idle_bytes() == 4 << 20  # the first block, back once nothing holds it
    del others, other
    assert pool.idle_bytes() == 3 * (4 << 20)


def test_a_view_of_a_library_output_outlives_the_next_step(fresh_pool):
    """A caller keeps a row of a large batch-norm output and drops the rest; the next steps' outputs are
    written elsewhere."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=SHAPE).astype(np.float32)
    out, cache = normlab.batchnorm_forward(x, None, None, backend="numba")
    row = out[5]
    expected = row.copy()
    del out, cache
    for _ in range(2):
        again, cache = normlab.batchnorm_forward(2 * x + 1, None, None, backend="numba")
        dx, _, _ = normlab.normalize_backward(x, cache)
        assert not np.shares_memory(again, row) and not np.shares_memory(dx, row)
    np.testing.assert_array_equal(row, expected)


def test_two_threads_never_share_a_live_block(fresh_pool, monkeypatch):
    """Two threads take, fill, hold a view of and drop outputs as fast as they can (small blocks, frequent
    thread switches): no held view changes, nothing raises, and the idle count matches the idle blocks."""
    import sys
    import threading

    monkeypatch.setattr(pool, "MIN_BYTES", 1 << 12)
    monkeypatch.setitem(pool._state, "limit", 6 * 8192)
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    errors = []

    def work(tag):
        try:
            for i in range(2000):
                a = pool.empty((2048 * (1 + i % 2),), np.float32)
                a.fill(tag * 10000 + i)
                view = a[::97]
                del a
                b = pool.empty((2048 * (1 + i % 3 // 2),), np.float32)
                b.fill(-1)
                if not np.all(view == tag * 10000 + i):
                    errors.append((tag, i, "held view overwritten"))
                del b, view
        except Exception as exc:  # reported below, with the thread that raised
            errors.append((tag, repr(exc)))

    threads = [threading.Thread(target=work, args=(tag,)) for tag in (1, 2)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        sys.setswitchinterval(switch)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    idle = sum(block.nbytes for block in pool._idle)
    assert pool.idle_bytes() == idle <= 6 * 8192


def _routes():
    """name -> (forward, x shape, parameter length): one of each kernel route that writes a pooled output."""
    gn = lambda groups: lambda x, g, b, **kw: normlab.groupnorm_forward(x, g, b, groups, **kw)  # noqa: E731
    return {
        "columns": (normlab.batchnorm_forward, (64, 37), 37),
        "columns-parallel": (normlab.batchnorm_forward, (2048, 24), 24),
        "channels": (normlab.spatial_batchnorm_forward, (4, 6, 8, 9), 6),
        "two-kernel columns": (normlab.spatial_batchnorm_forward, (256, 8, 4, 4), 8),
        "group rows": (gn(2), (4, 4, 6, 8), 4),
        "layer rows": (normlab.layernorm_forward, (8, 64), 64),
    }


@pytest.mark.parametrize("route", sorted(_routes()))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_route_writes_all_of_a_recycled_output(fresh_pool, monkeypatch, route, dtype):
    """A recycled block holds the last output's values, not a fresh mapping's zeros: with every pooled block
    filled with NaN before it is handed out, each route (forward with batch and given statistics, backward,
    apply_gradient) returns what it returns with the pool off."""
    forward, shape, c = _routes()[route]
    rng = np.random.default_rng(2)
    x, dout = (rng.normal(size=shape).astype(dtype) for _ in range(2))
    gamma, beta = rng.normal(size=c).astype(dtype), rng.normal(size=c).astype(dtype)

    def run():
        out, cache = forward(x, gamma, beta, backend="numba")
        results = [out, *normlab.normalize_backward(dout, cache)[:1]]
        results.append(forward(x, gamma, beta, mean=cache.mean, var=cache.var, backend="numba")[0])
        if cache.layout.batch_stats:
            results.append(core.apply_gradient(dout, cache, core.gradient_sums(dout, cache), cache.layout.count))
        return [r.copy() for r in results]

    monkeypatch.setitem(pool._state, "limit", 0)
    expected = run()
    handed_out = []
    real_empty = pool.empty

    def poisoned(shape, dtype):
        block = real_empty(shape, dtype)
        block.fill(np.nan)
        handed_out.append(block.base is not None)
        return block

    monkeypatch.setitem(pool._state, "limit", 64 << 20)
    monkeypatch.setattr(pool, "MIN_BYTES", 1)
    monkeypatch.setattr(pool, "empty", poisoned)
    got = run()
    assert handed_out and all(handed_out)  # every output of this route came from the pool
    for e, g in zip(expected, got):
        np.testing.assert_array_equal(g, e)


def test_set_limit_trims_idle_blocks_and_turns_recycling_off(fresh_pool):
    blocks = [pool.empty(SHAPE, np.float32) for _ in range(3)]
    del blocks
    assert pool.idle_bytes() == 12 << 20
    pool.set_limit(5 << 20)
    assert pool.limit() == 5 << 20 and pool.idle_bytes() == 4 << 20
    pool.set_limit(0)
    assert pool.idle_bytes() == 0 and pool.empty(SHAPE, np.float32).base is None
    for bad in (-1, 1.5, True, "1"):
        with pytest.raises(ValueError, match="pool limit"):
            pool.set_limit(bad)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="fork is POSIX")
def test_a_child_forked_while_another_thread_holds_the_lock_can_use_the_pool(fresh_pool):
    """A fork copies the pool's lock as it is: the child must get one of its own, or its first large output
    would wait for a thread that does not exist there."""
    import os
    import threading
    import time

    held, done = threading.Event(), threading.Event()

    def hold():
        with pool._lock:
            held.set()
            done.wait(30)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert held.wait(10)
        pid = os.fork()
        if pid == 0:  # the child: one pooled output, then leave without running pytest's teardown
            code = 1
            try:
                code = 0 if pool.empty(SHAPE, np.float32).shape == SHAPE else 1
            finally:
                os._exit(code)
        deadline = time.monotonic() + 20
        while (waited := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        if waited[0] == 0:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        assert waited[0] == pid and os.waitstatus_to_exitcode(waited[1]) == 0
    finally:
        done.set()
        thread.join(10)
