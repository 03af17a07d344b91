"""normlab.torch.SyncBatchNorm over gloo on loopback against single-process torch.nn batch norm.

Every rank builds the same global batches from one seed, runs SyncBatchNorm
on its shard (unequal sizes, including 0 and 1 samples) and checks its part
of the outputs and input gradients, the summed weight/bias gradients and the
running statistics against torch.nn.BatchNorm on the whole batch, with the
collectives counted. Processes run on 127.0.0.1 with bounded timeouts.
"""

import multiprocessing
import time
from contextlib import contextmanager
from datetime import timedelta

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402

import normlab.torch as nt  # noqa: E402
from _procs import run as run_bounded  # noqa: E402
from normlab import distributed, procs  # noqa: E402
from normlab.gradcheck import rel_error  # noqa: E402

TOL = 1e-10
STEPS = 3


SPAWN_DEADLINE_S = 120  # a whole spawned equivalence run; it takes a few seconds


def _init(rank, world_size, init_method, timeout_s):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=timeout_s))


@contextmanager
def _count_collectives():
    """Count torch.distributed.all_gather / all_reduce calls made inside the block."""
    counts = {"all_gather": 0, "all_reduce": 0}
    originals = {name: getattr(dist, name) for name in counts}

    def counting(name):
        def call(*args, **kwargs):
            counts[name] += 1
            return originals[name](*args, **kwargs)
        return call

    for name in counts:
        setattr(dist, name, counting(name))
    try:
        yield counts
    finally:
        for name, fn in originals.items():
            setattr(dist, name, fn)


# ----------------------------------------------------------------------------- equivalence

CASES = [  # (reference class, per-sample shape (C, *spatial), constructor kwargs)
    (torch.nn.BatchNorm2d, (3, 4, 5), {}),
    (torch.nn.BatchNorm1d, (4,), {"momentum": None}),
    (torch.nn.BatchNorm1d, (2, 7), {"affine": False, "momentum": 0.3}),
]


def _check_case(rank, shards, reference_cls, sample_shape, kwargs, seed, backend):
    g = torch.Generator().manual_seed(seed)
    c = sample_shape[0]
    total = sum(shards)
    lo, hi = sum(shards[:rank]), sum(shards[: rank + 1])
    ref = reference_cls(c, **kwargs).double()
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.rand(p.shape, generator=g, dtype=torch.float64) + 0.5)
    ours = nt.SyncBatchNorm(c, **kwargs, backend=backend).double()
    ours.load_state_dict(ref.state_dict())
    params, ref_params = list(ours.parameters()), list(ref.parameters())

    for step in range(STEPS):
        # Data far from zero, a different offset per step: the merge must stay accurate.
        x_all = torch.randn(total, *sample_shape, dtype=torch.float64, generator=g) * 3 + 10 * (step + 1)
        dout_all = torch.randn(total, *sample_shape, dtype=torch.float64, generator=g)
        x = x_all[lo:hi].clone().requires_grad_()
        with _count_collectives() as forward_counts:
            out = ours(x)
        with _count_collectives() as backward_counts:
            grads = torch.autograd.grad(out, [x, *params], dout_all[lo:hi])
        assert forward_counts == {"all_gather": 1, "all_reduce": 0}, forward_counts
        assert backward_counts == {"all_gather": 0, "all_reduce": 1}, backward_counts
        assert out.shape == x.shape

        x_ref = x_all.clone().requires_grad_()
        out_ref = ref(x_ref)
        grads_ref = torch.autograd.grad(out_ref, [x_ref, *ref_params], dout_all)
        assert rel_error(out.detach(), out_ref.detach()[lo:hi]) < TOL
        assert rel_error(grads[0], grads_ref[0][lo:hi]) < TOL
        for local, expected in zip(grads[1:], grads_ref[1:]):
            summed = local.clone()
            dist.all_reduce(summed)  # as data-parallel training sums parameter gradients
            assert rel_error(summed, expected) < TOL
        for name, buf in ours.named_buffers():
            assert rel_error(buf.double(), getattr(ref, name).double()) < TOL, name

    # Eval mode: running statistics, no communication.
    ours.eval()
    ref.eval()
    x_all = torch.randn(total, *sample_shape, dtype=torch.float64, generator=g)
    with _count_collectives() as eval_counts:
        out = ours(x_all[lo:hi])
    assert eval_counts == {"all_gather": 0, "all_reduce": 0}
    assert rel_error(out.detach(), ref(x_all)[lo:hi].detach()) < TOL


def _equivalence_worker(rank, world_size, init_method, shards):
    _init(rank, world_size, init_method, 30)
    try:
        # "auto": the core on NumPy views; "torch": the closed form in torch ops, as on GPUs.
        for backend in ("auto", "torch"):
            for i, (reference_cls, sample_shape, kwargs) in enumerate(CASES):
                _check_case(rank, shards, reference_cls, sample_shape, kwargs, seed=100 + i, backend=backend)
        # The collectives take NumPy arrays and tensors alike, and return float64 NumPy arrays.
        mine = torch.tensor([rank, 1.0], dtype=torch.float32, requires_grad=True)
        assert np.array_equal(distributed.all_reduce_sum(mine), [sum(range(world_size)), world_size])
        assert mine.tolist() == [rank, 1.0]  # not reduced in place
        rows = distributed.all_gather_rows(np.array([rank, 2 * rank]))
        assert rows.dtype == np.float64 and np.array_equal(rows, [[r, 2 * r] for r in range(world_size)])
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("shards", [(5, 1), (3, 0, 2)], ids=["world2", "world3"])
def test_sync_batchnorm_matches_single_process_batchnorm(shards):
    with procs.local_rendezvous() as init_method:
        procs.spawn(_equivalence_worker, (len(shards), init_method, shards), len(shards), timeout=SPAWN_DEADLINE_S)


# ----------------------------------------------------------------------------- faults

FAULT_MESSAGE = "rank 1 gives up before the collective"
FAULT_TIMEOUT_S = 5


def _fault_worker(rank, world_size, init_method, results, faulty_rank_stays):
    try:
        _init(rank, world_size, init_method, FAULT_TIMEOUT_S)
        bn = nt.SyncBatchNorm(3).double()
        if rank == 1:
            raise ValueError(FAULT_MESSAGE)
        out = bn(torch.randn(4, 3, 2, 2, dtype=torch.float64))
        results.put((rank, "no error", tuple(out.shape)))
    except Exception as exc:  # report what each rank saw to the test
        results.put((rank, type(exc).__name__, str(exc)))
        if rank == 1 and faulty_rank_stays:
            # Alive but never joining the collective: only the timeout can end the peers' wait.
            time.sleep(2 * FAULT_TIMEOUT_S)


@pytest.mark.parametrize("faulty_rank_stays", [False, True], ids=["faulty-rank-exits", "faulty-rank-stays"])
def test_a_rank_that_raises_makes_the_others_fail_clearly_without_hanging(faulty_rank_stays):
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    world_size = 3
    reports = {}
    with procs.local_rendezvous() as init_method:
        workers = [ctx.Process(target=_fault_worker, args=(r, world_size, init_method, results, faulty_rank_stays))
                   for r in range(world_size)]
        for p in workers:
            p.start()
        try:
            for _ in range(world_size):
                rank, kind, message = results.get(timeout=90)
                reports[rank] = (kind, message)
        finally:
            procs.stop(workers)
    assert reports[1] == ("ValueError", FAULT_MESSAGE)
    for rank in (0, 2):
        kind, message = reports[rank]
        assert kind == "RuntimeError", reports[rank]
        assert "synchronized batch norm" in message and "all_gather" in message, message


# ----------------------------------------------------------------------------- one process

def test_without_process_group_it_is_plain_batchnorm_and_communicates_nothing():
    assert not dist.is_initialized()
    g = torch.Generator().manual_seed(7)
    ref = torch.nn.BatchNorm2d(3).double()
    ours = nt.convert_sync_batchnorm(torch.nn.Sequential(torch.nn.BatchNorm2d(3).double()))[0]
    assert isinstance(ours, nt.SyncBatchNorm)
    ours.load_state_dict(ref.state_dict())
    for _ in range(2):
        x = torch.randn(4, 3, 2, 2, dtype=torch.float64, generator=g).requires_grad_()
        dout = torch.randn(4, 3, 2, 2, dtype=torch.float64, generator=g)
        with _count_collectives() as counts:
            out = ours(x)
            grads = torch.autograd.grad(out, [x, ours.weight], dout)
        assert counts == {"all_gather": 0, "all_reduce": 0}
        out_ref = ref(x)
        grads_ref = torch.autograd.grad(out_ref, [x, ref.weight], dout)
        assert rel_error(out.detach(), out_ref.detach()) < TOL
        for a, b in zip(grads, grads_ref):
            assert rel_error(a, b) < TOL
    assert int(ours.num_batches_tracked) == 2


def test_convert_sync_batchnorm_copies_state_and_shares_parameters():
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3),
                                torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4),
                                                    nt.BatchNorm(4, momentum=None)))
    model(torch.randn(5, 2, 4, 4))  # non-trivial running statistics
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    weight = model[1].weight
    converted = nt.convert_sync_batchnorm(model)
    assert isinstance(converted[1], nt.SyncBatchNorm) and isinstance(converted[2][2], nt.SyncBatchNorm)
    assert converted[2][2].momentum is None and not converted[1].training
    assert converted[1].weight is weight
    after = converted.state_dict()
    assert list(after) == list(before)
    for k in before:
        assert torch.equal(after[k], before[k]), k


def test_merge_moments_equals_moments_of_the_concatenation():
    rng = np.random.default_rng(8)
    parts = [rng.normal(1e4, 3.0, size=(n, 5, 3)) for n in (4, 0, 1, 7)]
    moments = [distributed.local_moments(p) for p in parts]
    merged = distributed.merge_moments(*(np.stack(m_) for m_ in zip(*moments)))
    whole = np.concatenate(parts)
    mean = whole.mean(axis=(0, 2))
    assert np.all(merged.count == 12 * 3)
    assert rel_error(merged.mean, mean) < 1e-14
    assert rel_error(merged.var, whole.var(axis=(0, 2))) < 1e-10
    empty = distributed.merge_moments(np.zeros((2, 3)), np.zeros((2, 3)), np.zeros((2, 3)))
    assert np.all(empty.count == 0) and np.all(empty.mean == 0) and np.all(empty.var == 0)


def test_sync_function_gradcheck_in_one_process():
    # The synchronized closed form (global sums, given global statistics) against
    # numerical gradients; with one rank the sums are local.
    from normlab.torch.sync_batchnorm import SyncBatchNormFunction

    g = torch.Generator().manual_seed(9)
    x = (torch.randn(4, 3, 2, 3, dtype=torch.float64, generator=g) * 2 + 5).requires_grad_()
    w = (torch.rand(3, dtype=torch.float64, generator=g) + 0.5).requires_grad_()
    b = torch.randn(3, dtype=torch.float64, generator=g).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, w, b: SyncBatchNormFunction.apply(x, w, b, 1e-5, None, "auto")[0],
                                    (x, w, b))
    assert torch.autograd.gradcheck(lambda x: SyncBatchNormFunction.apply(x, None, None, 1e-5, None, "auto")[0],
                                    (x,))


def test_world_size_one_communicates_nothing():
    with procs.local_rendezvous() as init_method:
        dist.init_process_group("gloo", init_method=init_method, rank=0, world_size=1,
                                timeout=timedelta(seconds=30))
        try:
            bn = nt.SyncBatchNorm(3).double()
            x = torch.randn(4, 3, 5, dtype=torch.float64, requires_grad=True)
            with _count_collectives() as counts:
                out = bn(x)
                torch.autograd.grad(out, x, torch.randn_like(out))
            assert counts == {"all_gather": 0, "all_reduce": 0}
        finally:
            dist.destroy_process_group()


def test_example_script_trains_the_same_on_one_and_two_processes():
    import os
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "examples" / "sync_batchnorm_cpu.py"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID")}

    def losses(nproc):
        result = run_bounded([sys.executable, str(script), "--nproc", str(nproc), "--steps", "3"],
                             timeout=120, env=env)
        assert result.returncode == 0, result.stderr
        return [line for line in result.stdout.splitlines() if line.startswith("step")]

    one, two = losses(1), losses(2)
    assert len(one) == 3 and one == two
