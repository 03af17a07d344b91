"""Convolution and pooling (1-d and 2-d): float64 centred differences with a random dout, PyTorch as oracle."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import normlab
from normlab.gradcheck import check_forward_backward, rel_error
from normlab.lab import conv_ops


def _assert_checks(results, tol=1e-8):
    assert results and all(r.error < tol for r in results), results


def _torch_grads(fn, arrays, dout):
    tensors = [torch.tensor(a, requires_grad=True) for a in arrays]
    out = fn(*tensors)
    out.backward(torch.from_numpy(dout))
    return out.detach().numpy(), [t.grad.numpy() for t in tensors]


CONV_CASES = [  # (spatial shape, kernel, stride, pad)
    ((7,), (3,), 1, 0), ((8,), (5,), 2, 2), ((9,), (3,), 3, 1),
    ((5, 6), (3, 3), 1, 1), ((6, 5), (3, 2), 2, 0), ((7, 7), (3, 3), (2, 3), (1, 2)),
]


@pytest.mark.parametrize("spatial, kernel, stride, pad", CONV_CASES)
def test_conv_gradients_and_torch(spatial, kernel, stride, pad):
    rng = np.random.default_rng(len(spatial) * 10 + kernel[0])
    x = rng.standard_normal((2, 3, *spatial))
    w, b = rng.standard_normal((4, 3, *kernel)), rng.standard_normal(4)
    fwd = lambda x, w, b: conv_ops.conv_forward(x, w, b, stride, pad)  # noqa: E731
    _assert_checks(check_forward_backward(fwd, conv_ops.conv_backward, [x, w, b], ["x", "w", "b"]))
    out, cache = fwd(x, w, b)
    assert out.flags.c_contiguous and out.dtype == x.dtype
    dout = rng.standard_normal(out.shape)
    conv = F.conv1d if len(spatial) == 1 else F.conv2d
    want, grads = _torch_grads(lambda x, w, b: conv(x, w, b, stride=stride, padding=pad), [x, w, b], dout)
    assert rel_error(out, want) < 1e-12
    for got, expected in zip(conv_ops.conv_backward(dout, cache), grads):
        assert rel_error(got, expected) < 1e-12


@pytest.mark.parametrize("kind", conv_ops.POOL_KINDS)
@pytest.mark.parametrize("spatial, size, stride", [((8,), 2, None), ((9,), 3, 2), ((7,), 3, 1),
                                                    ((4, 6), 2, None), ((7, 6), (3, 2), (2, 1)), ((5, 5), 3, 1)])
def test_pool_gradients_and_torch(kind, spatial, size, stride):
    rng = np.random.default_rng(len(spatial) + 5)
    x = rng.standard_normal((2, 3, *spatial))
    fwd = lambda x: conv_ops.pool_forward(x, kind, size, stride)  # noqa: E731
    _assert_checks(check_forward_backward(fwd, conv_ops.pool_backward, [x], ["x"]))
    out, cache = fwd(x)
    dout = rng.standard_normal(out.shape)
    pool = getattr(F, f"{kind}_pool{len(spatial)}d")
    want, (dx,) = _torch_grads(lambda x: pool(x, size, stride), [x], dout)
    assert rel_error(out, want) < 1e-12 and rel_error(conv_ops.pool_backward(dout, cache), dx) < 1e-12


@pytest.mark.parametrize("shape", [(3, 4, 5), (2, 3, 4, 3)])
def test_global_avg_pool(shape):
    x = np.random.default_rng(0).standard_normal(shape)
    out, cache = conv_ops.global_avg_pool_forward(x)
    np.testing.assert_allclose(out, x.reshape(*shape[:2], -1).mean(axis=-1), rtol=1e-14)
    _assert_checks(check_forward_backward(conv_ops.global_avg_pool_forward, conv_ops.global_avg_pool_backward,
                                          [x], ["x"]))


@pytest.mark.parametrize("norm", [None, normlab.BatchNorm(4, affine=False, track_running_stats=False),
                                  normlab.GroupNorm(2, 4, affine=False)])
def test_conv_block_gradients(norm):
    rng = np.random.default_rng(3)
    x, w, b = rng.standard_normal((3, 2, 6, 6)), rng.standard_normal((4, 2, 3, 3)), rng.standard_normal(4)
    gamma, beta = rng.normal(1, 0.3, 4), rng.normal(size=4)

    # Inputs in the order (x, w, gamma, beta, b); gamma/beta only with a norm, b only where it matters
    # (batch norm cancels a bias before it: its gradient is 0 up to rounding, a meaningless relative error).
    names = ["x", "w"] + (["gamma", "beta"] if norm is not None else [])
    names += [] if isinstance(norm, normlab.BatchNorm) else ["b"]

    def fwd(x, w, gamma, beta, b):
        out, cache, _ = conv_ops.conv_block_forward(x, w, b if "b" in names else None, gamma, beta, norm, pad=1,
                                                    pool=("max", 2))
        return out, cache

    def bwd(dout, cache):
        dx, dw, db, dgamma, dbeta = conv_ops.conv_block_backward(dout, cache)
        grads = {"x": dx, "w": dw, "gamma": dgamma, "beta": dbeta, "b": db}
        return tuple(grads[n] for n in names)

    values = {"x": x, "w": w, "gamma": gamma, "beta": beta, "b": b}
    ordered = [values[n] for n in names] + [values[n] for n in values if n not in names]

    def fwd_named(*args):
        return fwd(**dict(zip(names + [n for n in values if n not in names], args)))

    _assert_checks(check_forward_backward(fwd_named, bwd, ordered, names))


def test_float32_and_inputs_untouched():
    rng = np.random.default_rng(4)
    x, w = rng.standard_normal((2, 3, 5, 5)).astype(np.float32), rng.standard_normal((2, 3, 3, 3)).astype(np.float32)
    x0, w0 = x.copy(), w.copy()
    out, cache = conv_ops.conv_forward(x, w, None, 1, 1)
    dx, dw, db = conv_ops.conv_backward(np.ones_like(out), cache)
    assert out.dtype == dx.dtype == dw.dtype == np.float32 and dx.shape == x.shape
    pooled, pcache = conv_ops.pool_forward(out, "max")
    assert pooled.dtype == np.float32 and conv_ops.pool_backward(np.ones_like(pooled), pcache).dtype == np.float32
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(w, w0)


def test_bad_shapes_name_the_arguments():
    x = np.zeros((2, 3, 5))
    with pytest.raises(ValueError, match=r"x must be \(N, C, L\) or \(N, C, H, W\), got shape \(2, 3\)"):
        conv_ops.conv_forward(np.zeros((2, 3)), np.zeros((4, 3, 3)))
    with pytest.raises(ValueError, match=r"w \(4, 2, 3\)"):
        conv_ops.conv_forward(x, np.zeros((4, 2, 3)))
    with pytest.raises(ValueError, match=r"b \(3,\)"):
        conv_ops.conv_forward(x, np.zeros((4, 3, 3)), np.zeros(3))
    with pytest.raises(ValueError, match="does not fit"):
        conv_ops.conv_forward(x, np.zeros((4, 3, 7)))
    with pytest.raises(ValueError, match="stride"):
        conv_ops.conv_forward(x, np.zeros((4, 3, 3)), stride=0)
    with pytest.raises(ValueError, match="pad"):
        conv_ops.conv_forward(x, np.zeros((4, 3, 3)), pad=(1, 1))
    with pytest.raises(ValueError, match="pooling kind"):
        conv_ops.pool_forward(x, "min")
    with pytest.raises(TypeError, match="floating dtype"):
        conv_ops.pool_forward(np.zeros((2, 3, 4), dtype=int))
    _, cache = conv_ops.conv_forward(x, np.zeros((4, 3, 3)))
    with pytest.raises(ValueError, match=r"dout must have the shape of the forward output \(2, 4, 3\)"):
        conv_ops.conv_backward(np.zeros((2, 4, 4)), cache)
