"""The fused Numba backend: agreement with the NumPy reference on every loop shape,
out= buffers, non-contiguous inputs, threads, the auto fallback and read-only installs."""

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import normlab

pytest.importorskip("numba")
from normlab.backends import numba_backend  # noqa: E402

SRC = Path(normlab.__file__).resolve().parent.parent


def _run_python(code, env=None, timeout=240, **kwargs):
    full_env = {**os.environ, "PYTHONPATH": str(SRC), **(env or {})}
    for key in [k for k, v in full_env.items() if v is None]:
        del full_env[key]
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=full_env, **kwargs)


# ----------------------------------------------------------------------------- agreement

def _norms():
    """(id, forward(x, g, b, **kw), x shape, parameter shape)."""
    return [
        ("bn", normlab.batchnorm_forward, (37, 11), (11,)),
        ("bn-tiny", normlab.batchnorm_forward, (2, 3), (3,)),
        ("bn-folded", normlab.batchnorm_forward, (48, 5), (5,)),   # narrow: 16 rows folded into one
        ("sbn-short", normlab.spatial_batchnorm_forward, (5, 3, 3, 5), (3,)),
        ("sbn-long", normlab.spatial_batchnorm_forward, (3, 4, 7, 9), (4,)),
        ("sbn-tinyN", normlab.spatial_batchnorm_forward, (1, 2, 1, 2), (2,)),
        ("ln", normlab.layernorm_forward, (9, 13), (13,)),
        ("ln-3d", lambda x, g, b, **kw: normlab.layernorm_forward(x, g, b, normalized_shape=(5, 7), **kw),
         (3, 5, 7), (5, 7)),
        ("gn-short", lambda x, g, b, **kw: normlab.groupnorm_forward(x, g, b, 3, **kw), (7, 6, 2, 3), (6,)),
        ("gn-long", lambda x, g, b, **kw: normlab.groupnorm_forward(x, g, b, 2, **kw), (3, 4, 5, 9), (4,)),
    ]


@pytest.fixture(params=["serial", "parallel-rows", "parallel-cols"])
def loop_shape(request, monkeypatch):
    """Force each loop shape and thread mode on small inputs."""
    if request.param != "serial":
        monkeypatch.setattr(numba_backend, "SERIAL_BELOW", 0)
    if request.param == "parallel-rows":
        monkeypatch.setattr(numba_backend, "ROWS_MIN_LENGTH", 1)
    if request.param == "parallel-cols":
        monkeypatch.setattr(numba_backend, "ROWS_MIN_LENGTH", 10**9)
    return request.param


@pytest.mark.parametrize("name,forward,shape,pshape", _norms(), ids=[c[0] for c in _norms()])
def test_numba_matches_numpy_float64(name, forward, shape, pshape, loop_shape):
    rng = np.random.default_rng(7)
    x = rng.normal(3.0, 2.0, shape)
    gamma, beta = rng.normal(size=pshape), rng.normal(size=pshape)
    dout = rng.standard_normal(shape)
    for g, b in ((gamma, beta), (None, None)):
        out_np, cache_np = forward(x, g, b, backend="numpy")
        out_nb, cache_nb = forward(x, g, b, backend="numba")
        np.testing.assert_allclose(out_nb, out_np, rtol=0, atol=1e-12)
        for a, b_ in zip((cache_nb.mean, cache_nb.var), (cache_np.mean, cache_np.var)):
            np.testing.assert_allclose(a, b_, rtol=1e-12, atol=1e-12)
        for mine, ref in zip(normlab.normalize_backward(dout, cache_nb), normlab.normalize_backward(dout, cache_np)):
            if ref is None:
                assert mine is None
            else:
                np.testing.assert_allclose(mine, ref, rtol=0, atol=1e-11 * max(1.0, np.abs(ref).max()))
        assert cache_nb.saved is None and cache_nb.backend == "numba"
    # Given statistics (inference): constants in backward.
    mean, var = cache_np.mean + 0.1, cache_np.var + 0.5
    ref = forward(x, gamma, beta, mean=mean, var=var, backend="numpy")
    got = forward(x, gamma, beta, mean=mean, var=var, backend="numba")
    np.testing.assert_allclose(got[0], ref[0], rtol=0, atol=1e-12)
    for mine, theirs in zip(normlab.normalize_backward(dout, got[1]), normlab.normalize_backward(dout, ref[1])):
        np.testing.assert_allclose(mine, theirs, rtol=0, atol=1e-11 * max(1.0, np.abs(theirs).max()))


@pytest.mark.parametrize("shape,forward", [
    ((4096, 16), normlab.batchnorm_forward),
    ((16, 8, 16, 16), normlab.spatial_batchnorm_forward),
    ((4096, 16), normlab.layernorm_forward),
    ((16, 8, 16, 16), lambda x, g, b, **kw: normlab.groupnorm_forward(x, g, b, 4, **kw)),
], ids=["bn", "sbn", "ln", "gn"])
def test_float32_large_offset_on_every_loop_shape(shape, forward, loop_shape):
    """float32 x = 1e6 + N(0, 1): within 0.05 of float64 on the same values."""
    x32 = (1e6 + np.random.default_rng(3).standard_normal(shape)).astype(np.float32)
    c = shape[1]
    g, b = np.linspace(0.5, 2, c), np.linspace(-1, 1, c)
    out32, _ = forward(x32, g.astype(np.float32), b.astype(np.float32), backend="numba")
    out64, _ = forward(x32.astype(np.float64), g, b, backend="numpy")
    assert out32.dtype == np.float32
    assert np.max(np.abs(out32 - out64)) <= 0.05


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_columns_kernels_on_every_task_grid(dtype):
    """The (N, C) kernels split x into row blocks times channel blocks (uneven ones too); each grid, on both
    twins, with batch and with given statistics, against the closed form in float64 NumPy. The row blocks'
    sums are merged in a second parallel loop: fused with the first, it would read sums not yet written."""
    from normlab.backends import _numba_batch_kernels as kb

    rng = np.random.default_rng(11)
    n, c = 203, 37
    x = (rng.normal(5.0, 2.0, (n, c))).astype(dtype)
    dy = rng.standard_normal((n, c)).astype(dtype)
    gam, bet = rng.normal(size=c), rng.normal(size=c)
    xd, dyd = x.astype(np.float64), dy.astype(np.float64)
    mu, var = xd.mean(0), xd.var(0)
    invstd = 1 / np.sqrt(var + 1e-5)
    xhat = (xd - mu) * invstd
    tol = 1e-12 if dtype == np.float64 else 1e-5
    for width, row_blocks in [(c, 1), (16, 1), (c, 2), (c, 7), (16, 3), (32, 2)]:
        for twin in kb.columns_forward[0], kb.columns_forward[1]:
            for given in (False, True):
                m, v = (mu.copy(), var.copy()) if given else (np.zeros(c), np.zeros(c))
                s, out = np.zeros(c), np.empty_like(x)
                twin(x, gam, bet, 1e-5, given, m, v, s, out, width, row_blocks)
                np.testing.assert_allclose(out, gam * xhat + bet, rtol=0, atol=tol * 10)
                np.testing.assert_allclose(np.stack([m, v, s]), np.stack([mu, var, invstd]), rtol=1e-12)
        for twin in kb.columns_backward[0], kb.columns_backward[1]:
            for given in (False, True):
                dgamma, dbeta, dx = np.zeros(c), np.zeros(c), np.empty_like(x)
                twin(x, dy, gam, mu, invstd, given, dgamma, dbeta, dx, width, row_blocks)
                closed = dyd - (0 if given else dyd.mean(0) + xhat * (dyd * xhat).mean(0))
                np.testing.assert_allclose(dx, gam * invstd * closed, rtol=0, atol=tol * 10)
                np.testing.assert_allclose(dgamma, (dyd * xhat).sum(0), rtol=1e-10, atol=1e-10)
                np.testing.assert_allclose(dbeta, dyd.sum(0), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("per_run, groups, runs, length", [(False, 1, 37, 1), (False, 3, 4, 8), (True, 3, 4, 8)],
                         ids=["layer", "elementwise-groups", "per-run"])
def test_fused_rows_backward_on_every_row_block_count(per_run, groups, runs, length):
    """The fused-rows backward sums dgamma/dbeta per block of rows (several per thread); any count, even or
    uneven, on both twins, against the closed form in float64 NumPy. Rows (n, g) of runs*length values,
    parameters per run (group norm) or per element (layer norm; group norm on short runs)."""
    from normlab.backends import _numba_kernels as k

    rng = np.random.default_rng(12)
    n, width = 67, runs * length
    rows = n * groups
    x = rng.normal(5.0, 2.0, (rows, width)).astype(np.float32)
    dy = rng.standard_normal((rows, width)).astype(np.float32)
    gam_runs = rng.normal(size=(groups, runs))
    xd, dyd = x.astype(np.float64), dy.astype(np.float64)
    mean, invstd = xd.mean(1), 1 / np.sqrt(xd.var(1) + 1e-5)
    xhat = (xd - mean[:, None]) * invstd[:, None]
    gamma = np.tile(np.repeat(gam_runs, length, axis=1), (n, 1))  # (rows, width): row r is group r % G
    dxhat = dyd * gamma
    dx_want = invstd[:, None] * (dxhat - dxhat.mean(1, keepdims=True) - xhat * (dxhat * xhat).mean(1, keepdims=True))
    per_group = lambda a: a.reshape(n, groups, runs, length).sum(axis=(0, 3))  # (G, runs)
    gam = gam_runs if per_run else np.repeat(gam_runs, length, axis=1)
    kernels = k.fused_rows_backward if per_run else k.fused_rows_backward_elementwise
    for blocks in (1, 2, 3, 8, rows):
        for twin in kernels:
            dgp, dbp = np.zeros((blocks, *gam.shape)), np.zeros((blocks, *gam.shape))
            dx = np.empty_like(x)
            twin(x, dy, gam, mean, invstd, k.STATS_BATCH, dgp, dbp, np.empty((3, rows)), dx)
            np.testing.assert_allclose(dx, dx_want, rtol=0, atol=1e-5)
            dgamma, dbeta = np.empty(groups * runs), np.empty(groups * runs)
            k.fold_param_grads(dgp, runs, dgamma)
            k.fold_param_grads(dbp, runs, dbeta)
            np.testing.assert_allclose(dgamma, per_group(dyd * xhat).ravel(), rtol=1e-10, atol=1e-10)
            np.testing.assert_allclose(dbeta, per_group(dyd).ravel(), rtol=1e-10, atol=1e-10)


def test_fused_rows_backward_takes_several_row_blocks_per_thread():
    """One block per thread ran the backward 1.1-1.7x slower in most processes (docs/benchmarks.md); the
    plan asks for more, never more than rows, and one for the serial twins."""
    import numba

    from normlab.backends.numba_backend import RowsPlan

    assert RowsPlan((2048, 1, 1, 256), True).entry_points(np.float32)["row_blocks"] >= 2 * numba.get_num_threads()
    assert RowsPlan((3, 1, 1, 1 << 15), True).entry_points(np.float32)["row_blocks"] == 3
    assert RowsPlan((8, 1, 1, 16), True).entry_points(np.float32)["row_blocks"] == 1


def test_column_grid_takes_row_blocks_first(monkeypatch):
    monkeypatch.setattr(numba_backend, "_threads", lambda size: 4)
    assert numba_backend._column_grid(128, 512, 1 << 16) == (512, 4)  # rows: a block per thread
    assert numba_backend._column_grid(40, 512, 1 << 16) == (256, 2)  # 2 blocks of >= 16 rows, 2 of channels
    assert numba_backend._column_grid(8, 4096, 1 << 16) == (1024, 1)  # too few rows: channels
    monkeypatch.setattr(numba_backend, "_threads", lambda size: 1)
    assert numba_backend._column_grid(128, 512, 1 << 10) == (512, 1)


# ----------------------------------------------------------------------------- buffers and layouts

def test_out_buffer_is_filled_and_returned():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 6)).astype(np.float32)
    g, b = np.ones(6, np.float32), np.zeros(6, np.float32)
    out = np.full_like(x, np.nan)
    y, _ = normlab.batchnorm_forward(x, g, b, backend="numba", out=out)
    assert np.shares_memory(y, out)
    np.testing.assert_allclose(out, normlab.batchnorm_forward(x, g, b, backend="numpy")[0], atol=1e-6)
    # A non-contiguous buffer is filled too (through a contiguous temporary).
    big = np.full((40, 12), np.nan, np.float32)
    y2, _ = normlab.batchnorm_forward(x, g, b, backend="numba", out=big[:, ::2])
    np.testing.assert_array_equal(big[:, ::2], out)
    assert np.isnan(big[:, 1::2]).all()


def test_out_buffers_forward_and_backward_on_both_backends(backend):
    """out= for y and dx: filled in place, also through a non-contiguous buffer; bad buffers rejected."""
    rng = np.random.default_rng(6)
    x = rng.normal(2.0, 1.5, (6, 4, 5, 7))
    dout = rng.standard_normal(x.shape)
    g, b = rng.normal(size=4), rng.normal(size=4)
    y_ref, cache = normlab.spatial_batchnorm_forward(x, g, b, backend=backend)
    dx_ref, dg_ref, db_ref = normlab.normalize_backward(dout, cache)
    for make in (np.empty_like, lambda a: np.empty(a.shape[::-1]).T):  # contiguous, and not
        y_buf, dx_buf = make(x), make(x)
        y, cache = normlab.spatial_batchnorm_forward(x, g, b, backend=backend, out=y_buf)
        dx, dg, db = normlab.normalize_backward(dout, cache, out=dx_buf)
        assert np.shares_memory(y, y_buf) and np.shares_memory(dx, dx_buf)
        np.testing.assert_allclose(y_buf, y_ref, atol=1e-12)
        np.testing.assert_allclose(dx_buf, dx_ref, atol=1e-12)
        np.testing.assert_allclose(dg, dg_ref, atol=1e-12)
    for bad in (np.empty((6, 4, 5, 6)), np.empty(x.shape, np.float32), [0.0]):
        with pytest.raises(ValueError, match="out must"):
            normlab.normalize_backward(dout, cache, out=bad)


def test_float16_computes_in_float32_and_returns_float16():
    x = (np.random.default_rng(1).standard_normal((64, 5)) * 3 + 50).astype(np.float16)
    y, cache = normlab.batchnorm_forward(x, None, None, backend="numba")
    ref, _ = normlab.batchnorm_forward(x.astype(np.float64), None, None, backend="numpy")
    assert y.dtype == np.float16
    assert np.max(np.abs(y.astype(np.float64) - ref)) < 1e-2
    dx, _, _ = normlab.normalize_backward(np.ones_like(x) * np.arange(5, dtype=np.float16), cache)
    assert dx.dtype == np.float16


@pytest.mark.parametrize("make", [
    lambda a: a[:, ::2],                                   # strided columns
    lambda a: np.asfortranarray(a),                        # column-major
    lambda a: a.T.copy().T,                                # a transposed view
], ids=["strided", "fortran", "transposed"])
def test_non_contiguous_inputs(make):
    rng = np.random.default_rng(2)
    base = rng.normal(1.0, 2.0, (30, 16))
    x = make(base)
    c = x.shape[1]
    g, b = rng.normal(size=c), rng.normal(size=c)
    dout = make(rng.standard_normal(base.shape))
    for fw in (normlab.batchnorm_forward, normlab.layernorm_forward):
        ref_out, ref_cache = fw(np.ascontiguousarray(x), g, b, backend="numpy")
        out, cache = fw(x, g, b, backend="numba")
        np.testing.assert_allclose(out, ref_out, atol=1e-12)
        for mine, ref in zip(normlab.normalize_backward(dout, cache),
                             normlab.normalize_backward(np.ascontiguousarray(dout), ref_cache)):
            np.testing.assert_allclose(mine, ref, atol=1e-11)
    # NHWC memory seen as NCHW.
    nhwc = rng.standard_normal((4, 5, 6, 3))
    x4 = nhwc.transpose(0, 3, 1, 2)
    out, _ = normlab.spatial_batchnorm_forward(x4, None, None, backend="numba")
    np.testing.assert_allclose(out, normlab.spatial_batchnorm_forward(x4.copy(), None, None, backend="numpy")[0],
                               atol=1e-12)


def test_nan_in_x_reaches_the_statistics():
    x = np.random.default_rng(3).standard_normal((50, 4))
    x[7, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        normlab.batchnorm_forward(x, None, None, backend="numba")


def test_cache_holds_only_statistics():
    x = np.random.default_rng(4).standard_normal((256, 32))
    _, cache = normlab.batchnorm_forward(x, np.ones(32), np.zeros(32), backend="numba")
    assert cache.saved is None and cache.x is x
    assert sum(a.nbytes for a in (cache.mean, cache.var, cache.invstd)) == 3 * 32 * 8


# ----------------------------------------------------------------------------- threads

def test_set_num_threads_round_trip_and_same_result(monkeypatch):
    monkeypatch.setattr(numba_backend, "SERIAL_BELOW", 0)
    rng = np.random.default_rng(5)
    x, dout = rng.standard_normal((203, 9)), rng.standard_normal((203, 9))
    before = normlab.get_num_threads()
    results = []
    try:
        for n in sorted({1, normlab.threads.max_threads()}):
            normlab.set_num_threads(n)
            assert normlab.get_num_threads() == n
            out, cache = normlab.batchnorm_forward(x, np.ones(9), np.zeros(9), backend="numba")
            results.append((out, *normlab.normalize_backward(dout, cache)))
    finally:
        normlab.set_num_threads(before)
    for a, b in zip(results[0], results[-1]):
        np.testing.assert_allclose(a, b, atol=1e-12)
    for bad in (0, normlab.threads.max_threads() + 1, 1.5, True):
        with pytest.raises(ValueError, match="NUMBA_NUM_THREADS"):
            normlab.set_num_threads(bad)


def test_numba_num_threads_is_honoured():
    proc = _run_python("""
        import normlab
        assert normlab.threads.max_threads() == 1 and normlab.get_num_threads() == 1
        try:
            normlab.set_num_threads(2)
        except ValueError:
            print("refused")
    """, env={"NUMBA_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "refused" in proc.stdout


# ----------------------------------------------------------------------------- auto and fallback

def test_auto_picks_numba():
    assert normlab.get_backend("auto").NAME == "numba"
    _, cache = normlab.batchnorm_forward(np.random.default_rng(0).standard_normal((8, 3)), None, None)
    assert cache.backend == "numba"


@pytest.mark.parametrize("failure", ["ImportError", "RuntimeError"])
def test_auto_falls_back_to_numpy_without_numba(failure):
    """numba missing (ImportError) or broken at import (any other error): auto -> numpy, silently."""
    proc = _run_python(f"""
        import sys, warnings
        class Blocker:
            def find_spec(self, name, path=None, target=None):
                if name == "numba" or name.startswith("numba."):
                    raise {failure}("numba is unusable here")
        sys.meta_path.insert(0, Blocker())
        warnings.simplefilter("error")
        import numpy as np, normlab
        assert normlab.available_backends() == ["numpy"], normlab.available_backends()
        assert normlab.get_backend().NAME == "numpy"
        out, cache = normlab.batchnorm_forward(np.random.default_rng(0).standard_normal((6, 2)), None, None)
        assert cache.backend == "numpy"
        assert normlab.get_num_threads() == 1
        try:
            normlab.get_backend("numba")
        except ImportError as exc:
            print("numba refused:", exc)
    """)
    assert proc.returncode == 0, proc.stderr
    assert "numba refused" in proc.stdout and proc.stderr == ""


# ----------------------------------------------------------------------------- read-only installs

def _readonly_copy(tmp_path):
    """The package copied into a read-only tree, readable by everyone."""
    site = tmp_path / "site"
    shutil.copytree(SRC / "normlab", site / "normlab", ignore=shutil.ignore_patterns("__pycache__"))
    for root, dirs, files in os.walk(site):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o555)
        for f in files:
            os.chmod(os.path.join(root, f), 0o444)
    os.chmod(site, 0o555)
    os.chmod(tmp_path, 0o755)
    return site


def _without_root_override():
    """preexec_fn for root: drop the capabilities that let root ignore file modes.

    Dropped from the bounding set, so they stay dropped across exec; the
    process keeps uid 0 (and so its access to the interpreter under /root)
    but a mode-0555 directory is now read-only to it. None when not root.
    """
    if os.geteuid() != 0:
        return None
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    pr_capbset_drop = 24
    dac_override, dac_read_search, fowner = 1, 2, 3

    def drop():
        for cap in (dac_override, dac_read_search, fowner):
            if libc.prctl(pr_capbset_drop, cap, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")
    return drop


@pytest.mark.parametrize("tmp_writable", [True, False], ids=["temp-cache", "no-cache"])
def test_read_only_install_imports_and_runs(tmp_path, tmp_writable):
    site = _readonly_copy(tmp_path)
    home = tmp_path / "home"
    home.mkdir(mode=0o555)
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    os.chmod(tmpdir, 0o777 if tmp_writable else 0o555)
    # tempfile.gettempdir() would fall back from an unwritable TMPDIR to /tmp:
    # pin it to simulate a machine where no temp dir is writable either.
    pin = "" if tmp_writable else f"import tempfile; tempfile.gettempdir = lambda: {str(tmpdir)!r}\n"
    code = pin + textwrap.dedent("""
        import json, os, numpy as np, normlab
        from normlab.backends import _numba_kernels
        x = np.random.default_rng(0).normal(5.0, 2.0, (40, 3))
        out, cache = normlab.batchnorm_forward(x, None, None)
        dx, _, _ = normlab.normalize_backward(np.random.default_rng(1).standard_normal(x.shape), cache)
        print(json.dumps({"backend": cache.backend, "cache": _numba_kernels.CACHE,
                          "cache_dir": os.environ.get("NUMBA_CACHE_DIR"), "file": normlab.__file__,
                          "mean_ok": bool(abs(out.mean()) < 1e-12)}))
    """)
    env = {"PYTHONPATH": str(site), "HOME": str(home), "TMPDIR": str(tmpdir), "NUMBA_CACHE_DIR": None,
           "XDG_CACHE_HOME": None}
    drop = _without_root_override()
    # Prove the tree really is read-only for this process, else the test would prove nothing.
    probe = _run_python(f"open({str(site / 'normlab' / 'probe')!r}, 'w')", env=env, preexec_fn=drop)
    assert probe.returncode != 0 and "PermissionError" in probe.stderr, probe.stderr
    proc = _run_python(code, env=env, preexec_fn=drop)
    assert proc.returncode == 0, proc.stderr
    assert "cannot cache" not in proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["backend"] == "numba" and report["mean_ok"]
    assert report["file"].startswith(str(site))
    if tmp_writable:
        assert report["cache"] is True and report["cache_dir"].startswith(str(tmpdir))
        assert any(Path(report["cache_dir"]).rglob("*.nbi")), "nothing was cached"
    else:
        assert report["cache"] is False


def _edit(path, old, new):
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} not found once in {path.name}"
    path.write_text(text.replace(old, new))


def test_cached_entry_points_follow_kernel_edits(tmp_path):
    """The C entry points (the native node's way into the kernels) are cached wrappers in another file than
    the kernels they call; Numba checks a cache against the function's own file only. Edit a kernel and
    the running-statistics rule after a first run: the next process, same cache, must run the new code."""
    site = tmp_path / "site"
    shutil.copytree(SRC / "normlab", site / "normlab", ignore=shutil.ignore_patterns("__pycache__"))
    code = """
        import ctypes, json, numpy as np
        from normlab.backends import _numba_entry_points as ep, plan_record
        p, i64, f64 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double
        forward = ctypes.CFUNCTYPE(i64, p, p, p, f64, i64, p, p, p)(ep.batch_entry_point("columns", False,
                                                                                         np.float64, "forward"))
        update = ctypes.CFUNCTYPE(None, p, p, p, i64, i64, f64)(ep.update_entry_point(np.float64))
        x = np.arange(12.0).reshape(4, 3)
        gamma, beta, stats, out = np.ones(3), np.zeros(3), np.empty((3, 3)), np.empty((4, 3))
        plan = np.array(plan_record.record(forward=0, backward=0, update_float=0, update_double=0, numel=12,
                                           stats=3, params=3, n=4, groups=3, per_group=1, length=1, width=3,
                                           row_blocks=1, huge_page_bytes=0), dtype=np.int64)
        forward(x.ctypes.data, gamma.ctypes.data, beta.ctypes.data, 1e-5, 0, stats.ctypes.data,
                out.ctypes.data, plan.ctypes.data)
        running_mean, running_var = np.zeros(3), np.ones(3)
        update(running_mean.ctypes.data, running_var.ctypes.data, stats.ctypes.data, 3, 4, 0.1)
        print(json.dumps({"out": out.mean(), "running_mean": running_mean.tolist()}))
    """
    env = {"PYTHONPATH": str(site), "NUMBA_CACHE_DIR": str(tmp_path / "cache")}

    def run():
        proc = _run_python(code, env=env)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout.strip().splitlines()[-1])

    before = run()
    assert abs(before["out"]) < 1e-12 and before["running_mean"] == pytest.approx([0.45, 0.55, 0.65])
    _edit(site / "normlab" / "backends" / "_numba_batch_kernels.py",
          "oi[j] = (np.float64(xi[j]) - mu[j]) * scale[j] + shift_b[j]",
          "oi[j] = (np.float64(xi[j]) - mu[j]) * scale[j] + shift_b[j] + 100.0")
    _edit(site / "normlab" / "running_rule.py", "return factor * batch_mean", "return 7.0 + factor * batch_mean")
    after = run()
    assert after["out"] == pytest.approx(100.0), "the cached entry point still runs the old kernel"
    assert after["running_mean"] == pytest.approx([7.45, 7.55, 7.65]), "the cached update runs the old rule"


# ----------------------------------------------------------------------------- bench smoke

def test_bench_quick_smoke(tmp_path):
    from click.testing import CliRunner

    from normlab.cli import main

    path = tmp_path / "bench.json"
    md = tmp_path / "bench.md"
    result = CliRunner().invoke(main, ["bench", "--cases", "bn:64x8,gn2:2x4x3x3", "--dtype", "float64",
                                       "--json", str(path), "--markdown", str(md)])
    assert result.exit_code == 0, result.output
    data = json.loads(path.read_text())
    impls = {r["impl"] for r in data["rows"]}
    assert {"numpy", "numba"} <= impls and "numpy-graph" in impls
    assert data["bandwidth_gbps"] > 0
    assert all(r["both_ms"] > 0 and r["forward_ms"] > 0 for r in data["rows"])
    if "torch" in impls:
        torch_rows = [r for r in data["rows"] if r["impl"] == "torch"]
        assert all(r["both_vs_torch"] == 1.0 for r in torch_rows)
        assert data["summary"]["numba_vs_torch_geomean"] > 0
    assert "| bn:64x8 | float64 | numba |" in md.read_text()
    bad = CliRunner().invoke(main, ["bench", "--cases", "bn:64", "--repeat", "7"])
    assert bad.exit_code != 0 and "bn:4096x1024" in bad.output


def test_bench_kernel_suite_at_several_thread_counts(tmp_path):
    """--threads 1,2: one run per count in one process, their ratios and shares of the bound side by side;
    other suites take one count."""
    from click.testing import CliRunner

    from normlab.cli import main

    path, md = tmp_path / "bench.json", tmp_path / "bench.md"
    result = CliRunner().invoke(main, ["bench", "--cases", "bn:64x8", "--dtype", "float32", "--threads", "1,2",
                                       "--rounds", "1", "--json", str(path), "--markdown", str(md)])
    assert result.exit_code == 0, result.output
    data = json.loads(path.read_text())
    assert data["threads"] == [1, 2] and set(data["runs"]) == {"1", "2"}
    assert [run["machine"]["threads"] for run in data["runs"].values()] == [1, 2]
    text = md.read_text()
    assert "| % of bound, fresh (1 thr / 2 thr) |" in text and "### 2 thread(s)" in text
    assert "| bn:64x8 | float32 | 2.0 KiB |" in text
    bad = CliRunner().invoke(main, ["bench", "--suite", "torch", "--threads", "1,2"])
    assert bad.exit_code != 0 and "kernel suite only" in bad.output


# ----------------------------------------------------------------------------- parameters' gradients alone

WITHOUT_DX = [  # every backward path: columns (one and several row blocks), channels, the two-kernel batch
    # path (above the fused sizes), rows per element (layer norm), rows per run (group norm), RMS
    ("bn", normlab.batchnorm_forward, {}, (37, 11)),
    ("bn-blocks", normlab.batchnorm_forward, {}, (4096, 64)),
    ("sbn-channels", normlab.spatial_batchnorm_forward, {}, (4, 3, 8, 8)),
    ("sbn-two-kernel", normlab.spatial_batchnorm_forward, {}, (64, 8, 32, 64)),
    ("ln", normlab.layernorm_forward, {}, (300, 64)),
    ("gn", normlab.groupnorm_forward, {"groups": 2}, (6, 8, 8, 8)),
    ("rms", normlab.rmsnorm_forward, {}, (300, 64)),
]


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("name,forward,kw,shape", WITHOUT_DX, ids=[c[0] for c in WITHOUT_DX])
def test_parameter_gradients_without_dx_match_the_full_backward(backend, name, forward, kw, shape):
    """core.run_backward(want_dx=False), what the PyTorch bridge's core route asks for an input that needs no
    gradient: no dx, and dgamma, dbeta as the backward with dx gives them (to rounding: other loops)."""
    from normlab import core

    rng = np.random.default_rng(11)
    x = (3 + 2 * rng.standard_normal(shape)).astype(np.float32)
    c = shape[1] if name != "ln" and name != "rms" else shape[-1]
    g, b = rng.uniform(0.5, 1.5, c).astype(np.float32), rng.standard_normal(c).astype(np.float32)
    dout = rng.standard_normal(shape).astype(np.float32)
    if name == "rms":
        _, cache = forward(x, g, backend=backend)
    else:
        _, cache = forward(x, g, b, backend=backend, **kw)
    dx, dg, db = core.run_backward(dout, cache, None)
    none, dg0, db0 = core.run_backward(dout, cache, None, want_dx=False)
    assert none is None and dx is not None
    np.testing.assert_allclose(dg0, dg, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(db0, db, rtol=1e-6, atol=1e-5)
