"""GhostBatchNorm: batch norm per chunk of virtual_batch_size samples, on one core call."""

import numpy as np
import pytest

import normlab
from normlab.distributed import synchronized
from normlab.gradcheck import check_forward_backward


@pytest.mark.parametrize("shape", [(12, 3), (8, 3, 5), (6, 3, 2, 3)])
def test_each_chunk_is_batch_norm_of_that_chunk(shape, backend):
    rng = np.random.default_rng(len(shape))
    x = rng.normal(1.0, 2.0, shape)
    gamma, beta = rng.normal(size=3), rng.normal(size=3)
    v = shape[0] // 2 if len(shape) > 2 else 3
    ghost = normlab.GhostBatchNorm(3, v, backend=backend)
    bn = normlab.BatchNorm(3, backend=backend)
    out, cache, new = ghost.apply(x, gamma, beta, normlab.RunningStats(3))
    dout = rng.standard_normal(shape)
    dx, dgamma, dbeta = ghost.apply_backward(dout, cache)
    sum_dgamma, sum_dbeta, chunk_vars = 0, 0, []
    for start in range(0, shape[0], v):
        part = slice(start, start + v)
        want, part_cache, _ = bn.apply(x[part], gamma, beta, None)
        np.testing.assert_allclose(out[part], want, rtol=1e-12, atol=1e-12)
        pdx, pdg, pdb = bn.apply_backward(dout[part], part_cache)
        np.testing.assert_allclose(dx[part], pdx, rtol=1e-10, atol=1e-12)
        sum_dgamma, sum_dbeta = sum_dgamma + pdg, sum_dbeta + pdb
        chunk_vars.append(x[part].var(axis=(0, *range(2, x.ndim)), ddof=1))
    np.testing.assert_allclose(dgamma, sum_dgamma, rtol=1e-10)
    np.testing.assert_allclose(dbeta, sum_dbeta, rtol=1e-10)
    # Running statistics: the chunks' mean (= the batch mean) and their average unbiased variance, once per batch.
    np.testing.assert_allclose(new.mean, 0.1 * x.mean(axis=(0, *range(2, x.ndim))), rtol=1e-12)
    np.testing.assert_allclose(new.var, 0.9 + 0.1 * np.mean(chunk_vars, axis=0), rtol=1e-12)
    assert new.num_batches_tracked == 1


def test_gradients_against_centred_differences():
    rng = np.random.default_rng(1)
    ghost = normlab.GhostBatchNorm(3, 4)
    x = rng.normal(0.5, 1.5, (8, 3, 3))
    results = check_forward_backward(lambda x, g, b: ghost.apply(x, g, b)[:2], ghost.apply_backward,
                                     [x, rng.normal(size=3), rng.normal(size=3)], ["dx", "dgamma", "dbeta"])
    assert all(r.passed for r in results), results


def test_a_small_batch_is_one_chunk_and_eval_is_batch_norm():
    rng = np.random.default_rng(2)
    x, running = rng.normal(size=(5, 3, 4)), normlab.RunningStats(3)
    running.mean, running.var = rng.normal(size=3), rng.uniform(0.5, 2, 3)
    ghost, bn = normlab.GhostBatchNorm(3, 8), normlab.BatchNorm(3)
    for training in (True, False):
        got, want = ghost.apply(x, None, None, running, training=training), bn.apply(x, None, None, running,
                                                                                     training=training)
        np.testing.assert_array_equal(got[0], want[0])
    # Eval mode ignores the chunking: any batch size.
    np.testing.assert_array_equal(normlab.GhostBatchNorm(3, 2).apply(x, None, None, running, training=False)[0],
                                  bn.apply(x, None, None, running, training=False)[0])


def test_unequal_chunks_are_refused_and_change_nothing():
    layer = normlab.GhostBatchNorm(3, 4)
    before = layer.state_dict()
    with pytest.raises(ValueError, match="at most 4 samples or a multiple of 4, got 6"):
        layer.forward(np.ones((6, 3)))
    for key, value in layer.state_dict().items():
        np.testing.assert_array_equal(value, before[key])
    with pytest.raises(ValueError, match="virtual_batch_size"):
        normlab.GhostBatchNorm(3, 0)
    with pytest.raises(ValueError, match="GhostBatchNorm has no synchronized form"):
        synchronized(layer)
    assert "virtual_batch_size=4" in repr(layer)
