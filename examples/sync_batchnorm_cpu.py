"""Data-parallel training on CPUs with synchronized batch norm (normlab.torch.SyncBatchNorm over gloo).

One machine, K processes on loopback (the script spawns them):

    python examples/sync_batchnorm_cpu.py --nproc 2 --steps 5

Several machines, K processes each: run on every machine (HOST:PORT is
reachable from all of them, e.g. the first machine's address):

    torchrun --nnodes=2 --nproc-per-node=K --rdzv-backend=c10d \
        --rdzv-endpoint=HOST:PORT examples/sync_batchnorm_cpu.py --steps 5

Each rank trains a tiny conv net on its shard of every global batch; the
batch norms normalize with statistics of the whole global batch, so training
follows one process on the whole batch however it is split (up to float32
rounding): compare --nproc 1, 2 and 3.
"""

from __future__ import annotations

import argparse
import gc
import os
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

import normlab.torch as nt
from normlab import procs

GLOBAL_BATCH = 32
CLASSES = 4


def tiny_convnet() -> torch.nn.Module:
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, CLASSES),
    )
    # torch.nn.BatchNorm2d -> normlab.torch.SyncBatchNorm (works on CPU tensors), state copied.
    return nt.convert_sync_batchnorm(model)


def global_batch(step: int):
    """The same batch on every rank: noisy images whose class sets the brightness of one quadrant."""
    g = torch.Generator().manual_seed(step)
    labels = torch.randint(0, CLASSES, (GLOBAL_BATCH,), generator=g)
    images = torch.randn(GLOBAL_BATCH, 1, 8, 8, generator=g)
    for i, c in enumerate(labels.tolist()):
        r, q = divmod(c, 2)
        images[i, 0, 4 * r:4 * r + 4, 4 * q:4 * q + 4] += 2.0
    return images, labels


def train(steps: int) -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # same initial weights everywhere (DDP also broadcasts them from rank 0)
    model = DistributedDataParallel(tiny_convnet())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for step in range(steps):
        images, labels = global_batch(step)
        shard = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
        # Scaled so that DDP's average over ranks is the mean loss over the global batch,
        # whatever the shard sizes: the gradient is then that of one process on the whole batch.
        loss = torch.nn.functional.cross_entropy(model(images[shard]), labels[shard], reduction="sum")
        loss = loss * world / GLOBAL_BATCH
        optimizer.zero_grad()
        loss.backward()  # DDP averages parameter gradients; SyncBatchNorm syncs its statistics' gradients
        optimizer.step()
        total = loss.detach() / world
        dist.all_reduce(total)
        if rank == 0:
            print(f"step {step}: loss {total.item():.4f}", flush=True)
    bn = model.module[1]
    if rank == 0:
        print(f"{world} ranks; first batch norm's running mean: {bn.running_mean[:4].tolist()}", flush=True)


def run(steps: int) -> None:
    """Train, then shut down in step: gloo can abort a process whose peers leave while DDP's
    work objects are still alive, so free them (gc) and wait for every rank before leaving."""
    try:
        train(steps)
        gc.collect()
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _spawned(rank: int, world: int, init_method: str, steps: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world,
                            timeout=timedelta(seconds=30))
    run(steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2, help="processes to spawn on this machine (no torchrun)")
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    if "TORCHELASTIC_RUN_ID" in os.environ or "RANK" in os.environ:  # launched by torchrun
        dist.init_process_group("gloo", timeout=timedelta(seconds=60))
        run(args.steps)
    else:
        # A file in a private temporary directory is the rendezvous: no port to pick.
        with procs.local_rendezvous() as init_method:
            # torch's own launcher: a failing process stops the rest
            mp.spawn(_spawned, args=(args.nproc, init_method, args.steps), nprocs=args.nproc)


if __name__ == "__main__":
    main()
