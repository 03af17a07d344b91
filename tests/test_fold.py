"""Folding eval-mode batch norm into the preceding affine/Linear/Conv layer, NumPy and torch."""

import numpy as np
import pytest

import normlab
from normlab.gradcheck import rel_error

FOLD_TOL = 1e-6


def _trained_numpy_bn(d, rng, dtype=np.float32, **kwargs):
    bn = normlab.BatchNorm(d, dtype=dtype, **kwargs)
    bn.params["gamma"] = rng.uniform(0.5, 2.0, d).astype(dtype)
    bn.params["beta"] = rng.normal(size=d).astype(dtype)
    for _ in range(3):  # running statistics away from their initial 0 and 1
        bn.forward(rng.normal(2.0, 3.0, size=(16, d)).astype(dtype))
    return bn.eval()


@pytest.mark.parametrize("with_bias", [True, False])
def test_numpy_fold_matches_affine_then_eval_batchnorm(with_bias):
    rng = np.random.default_rng(0)
    W = rng.normal(size=(7, 5)).astype(np.float32)
    b = rng.normal(size=5).astype(np.float32) if with_bias else None
    bn = _trained_numpy_bn(5, rng)
    W_before = W.copy()
    x = rng.normal(size=(9, 7)).astype(np.float32)
    expected = bn.forward(x @ W + (0 if b is None else b))
    W_folded, b_folded = normlab.fold_batchnorm(W, b, bn)
    assert W_folded.dtype == b_folded.dtype == np.float32
    assert W_folded.shape == (7, 5) and b_folded.shape == (5,)
    assert np.array_equal(W, W_before)
    assert rel_error(x @ W_folded + b_folded, expected) < FOLD_TOL


def test_numpy_fold_rejects_what_it_cannot_fold():
    rng = np.random.default_rng(1)
    W = rng.normal(size=(4, 3))
    with pytest.raises(ValueError, match="track_running_stats"):
        normlab.fold_batchnorm(W, None, normlab.BatchNorm(3, track_running_stats=False))
    with pytest.raises(ValueError, match=r"3 output columns.*normalizes 4"):
        normlab.fold_batchnorm(W, None, normlab.BatchNorm(4))
    with pytest.raises(ValueError, match="b must have shape"):
        normlab.fold_batchnorm(W, np.zeros(4), normlab.BatchNorm(3))
    with pytest.raises(TypeError, match="normlab.BatchNorm"):
        normlab.fold_batchnorm(W, None, normlab.LayerNorm(3))


def test_torch_fold_matches_eval_model_and_leaves_it_unchanged():
    torch = pytest.importorskip("torch")
    import normlab.torch as nt

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, bias=False), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
        torch.nn.Conv2d(4, 5, 3, padding=1), nt.BatchNorm(5), torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Sequential(torch.nn.Linear(5 * 4 * 4, 6), torch.nn.BatchNorm1d(6, momentum=None)),
        torch.nn.BatchNorm1d(6),                                   # follows a Sequential: kept
        torch.nn.Linear(6, 3), torch.nn.BatchNorm1d(3, track_running_stats=False),  # no running stats: kept
    )
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.affine:
                m.weight.uniform_(0.5, 2.0)
                m.bias.normal_()
        for _ in range(3):
            model(torch.randn(8, 3, 6, 6) * 2 + 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    folded = nt.fold_batchnorm(model)
    assert model.training and folded is not model and not folded.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    kinds = [type(m) for m in folded]
    assert kinds[1] is torch.nn.Identity and kinds[4] is torch.nn.Identity
    assert type(folded[7][1]) is torch.nn.Identity
    assert kinds[8] is torch.nn.BatchNorm1d and kinds[10] is torch.nn.BatchNorm1d
    assert folded[0].bias is not None  # created for the bias-free conv

    x = torch.randn(10, 3, 6, 6) * 2 + 1
    with torch.no_grad():
        expected = model.eval()(x)
        got = folded(x)
    assert got.dtype == torch.float32
    assert rel_error(got, expected) < FOLD_TOL
