"""Hostile input to the functional API and the layers: each case asserts the exact behaviour on every backend.

Either the value against a float64 reference on a plain ndarray, or the
error type and a message naming the argument. The input policy (README,
"Errors and NaN"): array subclasses are read as plain arrays of their values,
masked arrays are refused, out= problems are ValueErrors, loaded state is
finite and in range or refused with nothing changed.
"""

import numpy as np
import pytest

import normlab

F32MAX = float(np.finfo(np.float32).max)
pytestmark = pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")


def data(shape=(6, 4), dtype=np.float64, seed=0):
    return np.random.default_rng(seed).normal(1.0, 2.0, shape).astype(dtype)


# name -> (forward(x, gamma, beta, **kw), x shape, gamma length)
FORWARDS = {
    "batch": (normlab.batchnorm_forward, (6, 4), 4),
    "spatial": (normlab.spatial_batchnorm_forward, (3, 4, 2, 2), 4),
    "layer": (normlab.layernorm_forward, (6, 4), 4),
    "group": (lambda x, g, b, **kw: normlab.groupnorm_forward(x, g, b, 2, **kw), (3, 4, 2, 2), 4),
    "instance": (normlab.instancenorm_forward, (3, 4, 5), 4),
    "rms": (normlab.rmsnorm_forward, (6, 4), 4),
}


def run(name, x, backend, **kw):
    forward, _, c = FORWARDS[name]
    return forward(x, np.linspace(0.5, 2.0, c), np.linspace(-1.0, 1.0, c), backend=backend, **kw)


def reference(name, x):
    """The float64 NumPy path on a plain ndarray copy of x's values."""
    return run(name, np.array(x, dtype=np.float64), "numpy")[0]


# ----------------------------------------------------------------------------- the examples

@pytest.mark.parametrize("name", FORWARDS)
def test_f32max_pattern_is_finite_and_right(backend, name):
    shape = FORWARDS[name][1]
    x = np.full(shape, F32MAX, np.float32)
    x.reshape(-1)[1::4] = -F32MAX
    out, _ = run(name, x, backend)
    np.testing.assert_allclose(out, reference(name, x), rtol=3e-7, atol=1e-7)


@pytest.mark.parametrize("name", FORWARDS)
def test_variance_beyond_float64_says_overflow(backend, name):
    x = 1e200 * data(FORWARDS[name][1])
    with pytest.raises(ValueError, match=r"variance of x .*overflows float64") as info:
        run(name, x, backend)
    assert "NaN" not in str(info.value)


@pytest.mark.parametrize("name", FORWARDS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_x_in_training_is_named(backend, name, bad):
    x = data(FORWARDS[name][1])
    x.reshape(-1)[3] = bad
    with pytest.raises(ValueError, match=r"x \(shape .*\) contains NaN or inf"):
        run(name, x, backend)


@pytest.mark.parametrize("name", FORWARDS)
def test_masked_x_is_refused_on_every_backend(backend, name):
    x = np.ma.masked_array(data(FORWARDS[name][1]), mask=False)
    x.mask.reshape(-1)[0] = True
    with pytest.raises(TypeError, match=r"x is a numpy.ma.MaskedArray .*would ignore its mask"):
        run(name, x, backend)


@pytest.mark.parametrize("name", ["batch", "layer", "rms"])
def test_matrix_x_is_read_as_its_values(backend, name):
    x = np.matrix(data())
    out, _ = run(name, x, backend)
    assert type(out) is np.ndarray
    np.testing.assert_allclose(out, reference(name, x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", FORWARDS)
def test_read_only_and_memmap_x_are_read_as_their_values(backend, name, tmp_path):
    x = data(FORWARDS[name][1])
    frozen = x.copy()
    frozen.flags.writeable = False
    mapped = np.memmap(tmp_path / "x.bin", dtype=x.dtype, mode="w+", shape=x.shape)
    mapped[:] = x
    for same in (frozen, mapped):
        out, cache = run(name, same, backend)
        np.testing.assert_allclose(out, reference(name, x), rtol=1e-12, atol=1e-12)
        dx, _, _ = normlab.normalize_backward(data(x.shape, seed=1), cache)
        assert type(out) is type(dx) is np.ndarray and np.all(np.isfinite(dx))


@pytest.mark.parametrize("kind", ["gamma", "dout"])
def test_masked_parameters_and_dout_are_refused(backend, kind):
    x = data()
    masked = np.ma.masked_array(np.ones(4 if kind == "gamma" else x.shape))
    if kind == "gamma":
        with pytest.raises(TypeError, match="gamma is a numpy.ma.MaskedArray"):
            normlab.batchnorm_forward(x, masked, np.zeros(4), backend=backend)
    else:
        _, cache = normlab.batchnorm_forward(x, None, None, backend=backend)
        with pytest.raises(TypeError, match="dout is a numpy.ma.MaskedArray"):
            normlab.normalize_backward(masked, cache)


# ----------------------------------------------------------------------------- out=

def _read_only(a):
    a.flags.writeable = False
    return a


BAD_OUTS = {
    "read-only": (lambda x: _read_only(np.empty_like(x)), r"out \(shape \(6, 4\)\) is read-only"),
    "float32 for float64": (lambda x: np.empty(x.shape, np.float32),
                            r"dtype float64, got shape \(6, 4\) and dtype float32"),
    "transposed shape": (lambda x: np.empty(x.shape[::-1]), r"x's shape \(6, 4\).*got shape \(4, 6\)"),
    "masked": (lambda x: np.ma.masked_array(np.empty_like(x)), "got MaskedArray"),
    "matrix": (lambda x: np.matrix(np.empty_like(x)), "got matrix"),
    "list": (lambda x: np.empty_like(x).tolist(), "got list"),
    "x itself": (lambda x: x, "out must not share memory with x"),
    "a view of x": (lambda x: x[:, :], "out must not share memory with x"),
}


@pytest.mark.parametrize("case", BAD_OUTS)
@pytest.mark.parametrize("where", ["forward", "backward"])
def test_bad_out_is_a_value_error(backend, case, where):
    make, message = BAD_OUTS[case]
    x = data()
    if where == "forward":
        with pytest.raises(ValueError, match=message):
            normlab.batchnorm_forward(x, None, None, backend=backend, out=make(x))
        return
    _, cache = normlab.batchnorm_forward(x, None, None, backend=backend)
    with pytest.raises(ValueError, match=message):
        normlab.normalize_backward(data(seed=1), cache, out=make(x))


def test_out_sharing_memory_with_gamma_or_dout_is_refused(backend):
    x = data()
    buffer = np.empty((7, 4))
    with pytest.raises(ValueError, match="out must not share memory with gamma"):
        normlab.batchnorm_forward(x, buffer[0], np.zeros(4), backend=backend, out=buffer[:6])
    dout = data(seed=1)
    _, cache = normlab.batchnorm_forward(x, None, None, backend=backend)
    with pytest.raises(ValueError, match="out must not share memory with dout"):
        normlab.normalize_backward(dout, cache, out=dout)


@pytest.mark.parametrize("layout", ["memmap", "non-contiguous"])
def test_memmap_and_strided_out_are_filled(backend, layout, tmp_path):
    x = data()
    if layout == "memmap":
        out = np.memmap(tmp_path / "out.bin", dtype=x.dtype, mode="w+", shape=x.shape)
    else:
        out = np.empty((4, 6)).T
    y, _ = normlab.batchnorm_forward(x, None, None, backend=backend, out=out)
    np.testing.assert_allclose(np.asarray(out), normlab.batchnorm_forward(x, None, None, backend="numpy")[0],
                               rtol=1e-13, atol=1e-13)
    assert np.shares_memory(y, out)


# ----------------------------------------------------------------------------- arguments

BAD_CALLS = {
    "scalar gamma for layer norm": (lambda be: normlab.layernorm_forward(data(), 1.0, 0.0, backend=be),
                                    ValueError, r"gamma must have shape \(4,\).*got shape \(\)"),
    "scalar gamma for rms norm": (lambda be: normlab.rmsnorm_forward(data(), 1.0, backend=be),
                                  ValueError, r"gamma must have shape \(4,\).*got shape \(\)"),
    "empty normalized_shape": (lambda be: normlab.layernorm_forward(data(), None, None, normalized_shape=(),
                                                                    backend=be), ValueError, "must not be empty"),
    "float normalized_shape": (lambda be: normlab.layernorm_forward(data(), None, None, normalized_shape=4.0,
                                                                    backend=be), TypeError, "int or a sequence"),
    "bool normalized_shape": (lambda be: normlab.layernorm_forward(data(), None, None, normalized_shape=True,
                                                                   backend=be), TypeError, "int or a sequence"),
    "zero in normalized_shape": (lambda be: normlab.layernorm_forward(data(), None, None, normalized_shape=(0,),
                                                                      backend=be), ValueError,
                                 "normalized_shape entries must be a positive integer, got 0"),
    "string normalized_shape": (lambda be: normlab.layernorm_forward(data(), None, None, normalized_shape="4",
                                                                     backend=be), ValueError,
                                "normalized_shape entries must be a positive integer, got '4'"),
    "float groups": (lambda be: normlab.groupnorm_forward(data((3, 4, 2)), None, None, 2.0, backend=be),
                     ValueError, "groups must be a positive integer, got 2.0"),
    "bool groups": (lambda be: normlab.groupnorm_forward(data((3, 4, 2)), None, None, True, backend=be),
                    ValueError, "groups must be a positive integer, got True"),
    "nan eps": (lambda be: normlab.batchnorm_forward(data(), None, None, eps=float("nan"), backend=be),
                ValueError, "eps must be finite and >= 0, got nan"),
    "inf eps": (lambda be: normlab.batchnorm_forward(data(), None, None, eps=float("inf"), backend=be),
                ValueError, "eps must be finite and >= 0, got inf"),
    "string eps": (lambda be: normlab.batchnorm_forward(data(), None, None, eps="1e-5", backend=be),
                   TypeError, "eps must be a real number, got str"),
    "bool eps": (lambda be: normlab.batchnorm_forward(data(), None, None, eps=True, backend=be),
                 TypeError, "eps must be a real number, got bool"),
    "nan given var": (lambda be: normlab.batchnorm_forward(data(), None, None, mean=np.zeros(4),
                                                           var=np.array([1, np.nan, 1, 1]), backend=be),
                      ValueError, r"var must be finite, got 1 NaN or inf"),
    "inf given mean": (lambda be: normlab.batchnorm_forward(data(), None, None, mean=np.full(4, np.inf),
                                                            var=np.ones(4), backend=be),
                       ValueError, r"mean must be finite, got 4 NaN or inf"),
    "object x": (lambda be: normlab.batchnorm_forward(np.array([[1, "a"], [2, "b"]], dtype=object), None, None,
                                                      backend=be), TypeError, "x must have a floating dtype"),
    "string x": (lambda be: normlab.batchnorm_forward("abc", None, None, backend=be), TypeError,
                 "x must have a floating dtype"),
    "0-d x": (lambda be: normlab.batchnorm_forward(np.float64(3.0), None, None, backend=be), ValueError,
              r"x must have at least 2 dimensions, got shape \(\)"),
    "float16 gamma with int beta": (lambda be: normlab.batchnorm_forward(data(), np.ones(4, np.float16),
                                                                         np.zeros(4, int), backend=be),
                                    TypeError, "beta must have a floating dtype"),
    "cache of the wrong kind": (lambda be: normlab.normalize_backward(data(), (1, 2)), TypeError,
                                "cache must be the NormCache"),
}


@pytest.mark.parametrize("case", BAD_CALLS)
def test_bad_arguments_are_named(backend, case):
    call, error, message = BAD_CALLS[case]
    with pytest.raises(error, match=message):
        call(backend)


@pytest.mark.parametrize("shape_arg", [np.int64(4), np.int32(4), (np.int64(4),), [4]])
def test_numpy_integer_normalized_shape_works(backend, shape_arg):
    x = data()
    out, _ = normlab.layernorm_forward(x, None, None, normalized_shape=shape_arg, backend=backend)
    np.testing.assert_allclose(out, normlab.layernorm_forward(x, None, None, backend="numpy")[0], rtol=1e-12)
    assert normlab.LayerNorm(shape_arg).normalized_shape == (4,)


def test_list_input_is_read_as_an_array(backend):
    x = data()
    out, _ = normlab.batchnorm_forward(x.tolist(), None, None, backend=backend)
    np.testing.assert_allclose(out, normlab.batchnorm_forward(x, None, None, backend="numpy")[0], rtol=1e-12)


# ----------------------------------------------------------------------------- layer state

def _trained(layer_cls=normlab.BatchNorm, **kw):
    layer = layer_cls(4, **kw)
    layer.forward(data((6, 4, 3)))
    return layer


def _with(state, key, value):
    return {**state, key: value}


BAD_STATES = {
    "NaN running_var": (lambda s: _with(s, "running_var", np.array([1.0, np.nan, 1.0, 1.0])), ValueError,
                        r"'running_var' holds 1 NaN or inf"),
    "inf running_var": (lambda s: _with(s, "running_var", np.full(4, np.inf)), ValueError,
                        r"'running_var' holds 4 NaN or inf"),
    "negative running_var": (lambda s: _with(s, "running_var", np.array([1.0, -0.5, 1.0, 1.0])), ValueError,
                             r"'running_var' must be >= 0, got minimum -0.5"),
    "NaN running_mean": (lambda s: _with(s, "running_mean", np.full(4, np.nan)), ValueError,
                         r"'running_mean' holds 4 NaN or inf"),
    "int running_mean": (lambda s: _with(s, "running_mean", np.zeros(4, int)), TypeError,
                         r"state dict entry 'running_mean' must have a floating dtype"),
    "complex running_var": (lambda s: _with(s, "running_var", np.ones(4, complex)), TypeError,
                            r"state dict entry 'running_var' must have a floating dtype"),
    "string running_var": (lambda s: _with(s, "running_var", "1,1,1,1"), TypeError,
                           r"state dict entry 'running_var' must have a floating dtype"),
    "short running_mean": (lambda s: _with(s, "running_mean", np.zeros(3)), ValueError,
                           r"'running_mean' has shape \(3,\), expected \(4,\)"),
    "2-d running_var": (lambda s: _with(s, "running_var", np.ones((4, 1))), ValueError,
                        r"'running_var' has shape \(4, 1\), expected \(4,\)"),
    "negative num_batches_tracked": (lambda s: _with(s, "num_batches_tracked", -1), ValueError,
                                     "'num_batches_tracked' must be an integer >= 0"),
    "float num_batches_tracked": (lambda s: _with(s, "num_batches_tracked", 1.5), ValueError,
                                  "'num_batches_tracked' must be an integer >= 0"),
    "bool num_batches_tracked": (lambda s: _with(s, "num_batches_tracked", True), ValueError,
                                 "'num_batches_tracked' must be an integer >= 0"),
    "NaN gamma": (lambda s: _with(s, "gamma", np.array([1.0, np.nan, 1.0, 1.0])), ValueError,
                  r"'gamma' holds 1 NaN or inf"),
    "inf beta": (lambda s: _with(s, "beta", np.full(4, -np.inf)), ValueError, r"'beta' holds 4 NaN or inf"),
    "missing running_var": (lambda s: {k: v for k, v in s.items() if k != "running_var"}, ValueError,
                            r"missing \['running_var'\]"),
    "unexpected key": (lambda s: _with(s, "weight", np.ones(4)), ValueError, r"unexpected \['weight'\]"),
    "float32 overflow": (lambda s: _with(s, "running_var", np.full(4, 1e300)), ValueError,
                         r"'running_var' holds 4 NaN or inf value\(s\) in float32"),
}


@pytest.mark.parametrize("layer_cls", [normlab.BatchNorm, normlab.InstanceNorm])
@pytest.mark.parametrize("case", BAD_STATES)
def test_bad_state_is_refused_naming_the_key_and_nothing_changes(layer_cls, case):
    make, error, message = BAD_STATES[case]
    kwargs = dict(dtype=np.float32, affine=True, track_running_stats=True) if case == "float32 overflow" \
        else dict(affine=True, track_running_stats=True)
    layer = _trained(layer_cls, **kwargs)
    before = layer.state_dict()
    with pytest.raises(error, match=message):
        layer.load_state_dict(make(layer.state_dict()))
    after = layer.state_dict()
    assert before.keys() == after.keys() and all(np.array_equal(before[k], after[k]) for k in before)


def test_eval_after_a_refused_load_is_still_finite():
    layer = _trained()
    with pytest.raises(ValueError):
        layer.load_state_dict(_with(layer.state_dict(), "running_var", np.full(4, np.nan)))
    assert np.all(np.isfinite(layer.eval().forward(data((5, 4)))))


def test_running_stats_refuse_a_state_that_is_not_a_dict():
    stats = normlab.RunningStats(3)
    with pytest.raises(TypeError, match="state must be a dict of arrays, got list"):
        stats.load_state_dict([np.zeros(3), np.ones(3), 0])


def test_float32_state_loads_into_a_float64_layer_exactly():
    layer = _trained()
    state = {k: (v.astype(np.float32) if v.dtype.kind == "f" else v) for k, v in layer.state_dict().items()}
    layer.load_state_dict(state)
    assert layer.running_var.dtype == np.float64
    np.testing.assert_array_equal(layer.running_var, state["running_var"].astype(np.float64))


@pytest.mark.parametrize("make, error, message", [
    (lambda: normlab.BatchNorm(4.0), ValueError, "num_features must be a positive integer, got 4.0"),
    (lambda: normlab.BatchNorm(4, momentum=float("nan")), ValueError, "momentum must be a number in"),
    (lambda: normlab.BatchNorm(4, momentum=1.5), ValueError, "momentum must be a number in"),
    (lambda: normlab.BatchNorm(4, eps=float("inf")), ValueError, "eps must be finite and >= 0"),
    (lambda: normlab.LayerNorm((3, 0)), ValueError, "normalized_shape entries must be a positive integer, got 0"),
    (lambda: normlab.LayerNorm(()), ValueError, "normalized_shape must not be empty"),
    (lambda: normlab.RMSNorm(2.5), TypeError, "normalized_shape must be an int or a sequence of ints"),
    (lambda: normlab.GroupNorm(3, 4), ValueError, r"num_groups \(3\) must divide num_channels \(4\)"),
    (lambda: normlab.GroupNorm(0, 4), ValueError, "num_groups must be a positive integer, got 0"),
])
def test_bad_layer_settings_are_named(make, error, message):
    with pytest.raises(error, match=message):
        make()


@pytest.mark.parametrize("layer", [normlab.BatchNorm(4), normlab.LayerNorm(4), normlab.GroupNorm(2, 4),
                                   normlab.RMSNorm(4)], ids=repr)
def test_layers_refuse_masked_and_read_matrices(backend, layer):
    layer.backend = backend
    with pytest.raises(TypeError, match="x is a numpy.ma.MaskedArray"):
        layer.forward(np.ma.masked_array(data()))
    x = data()
    np.testing.assert_allclose(layer.forward(np.matrix(x)), layer.forward(x), rtol=1e-13)


@pytest.mark.parametrize("name", FORWARDS)
@pytest.mark.parametrize("which, size", [("gamma", -1), ("gamma", +1), ("beta", -1)])
def test_parameters_of_the_wrong_length_are_refused_before_any_kernel(backend, name, which, size):
    """Every norm, every backend: gamma or beta one value short or long is a ValueError naming it (the compiled
    calls read G*K parameters; only the check stands between them and a short array)."""
    forward, shape, c = FORWARDS[name]
    gamma, beta = np.linspace(0.5, 2.0, c), np.linspace(-1.0, 1.0, c)
    if which == "gamma":
        gamma = np.linspace(0.5, 2.0, c + size)
    else:
        beta = np.linspace(-1.0, 1.0, c + size)
    # (layer and RMS norm would otherwise take normalized_shape from gamma's shape)
    kwargs = {"normalized_shape": (c,)} if name in ("layer", "rms") else {}
    with pytest.raises(ValueError, match=rf"{which} must have shape"):
        forward(data(shape), gamma, beta, backend=backend, **kwargs)


@pytest.mark.parametrize("name", FORWARDS)
def test_strided_and_float16_parameters_give_the_contiguous_result(backend, name):
    """gamma/beta as every-other-element views and as float16: the values they hold, on every backend."""
    forward, shape, c = FORWARDS[name]
    x = data(shape)
    gamma, beta = np.linspace(0.5, 2.0, c).astype(np.float16), np.linspace(-1.0, 1.0, c).astype(np.float16)
    want = forward(x, gamma.astype(np.float64), beta.astype(np.float64), backend="numpy")[0]
    wide_g, wide_b = np.zeros(2 * c), np.zeros(2 * c)
    wide_g[::2], wide_b[::2] = gamma, beta
    for g, b in ((gamma, beta), (wide_g[::2], wide_b[::2])):
        out, cache = forward(x, g, b, backend=backend)
        np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-12)
        dx, dgamma, _ = normlab.normalize_backward(data(shape, seed=1), cache)
        assert dgamma.shape == (c,) and np.all(np.isfinite(dx))
