"""Time the bridge's backward choices on a (32, 64, 56, 56) float32 batch-norm input.

    python examples/time_bridge_backward.py [--shape 32 64 56 56] [--repeat 5]

Compares, for the backward of batch norm in training mode:
  core       normlab.core.normalize_backward (the "auto" backend) on NumPy views, as normlab.torch does;
  torch-ops  the same closed form written in eager torch ops;
and, for context, normlab.torch.BatchNorm and torch.nn.BatchNorm2d forward+backward.
Best of --repeat runs, in milliseconds; each side timed in its own block.
"""

from __future__ import annotations

import argparse
import time

import torch

import normlab
import normlab.torch as nt
from normlab.core import normalize_backward, normalize_forward
from normlab.norms import batch_layout


def best_ms(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * min(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", type=int, nargs=4, default=[32, 64, 56, 56])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    x = torch.randn(*args.shape)
    dy = torch.randn_like(x)
    c = x.shape[1]
    w, b = torch.rand(c) + 0.5, torch.randn(c)
    out, cache = normalize_forward(x.numpy(), w.numpy(), b.numpy(), batch_layout(tuple(x.shape)), 1e-5)
    mean = torch.from_numpy(cache.mean).float().view(1, -1, 1, 1)
    invstd = torch.from_numpy(cache.invstd).float().view(1, -1, 1, 1)
    m = x.numel() // c

    def torch_ops_backward():
        xhat = (x - mean) * invstd
        sum_dy, sum_dy_xhat = dy.sum((0, 2, 3)), (dy * xhat).sum((0, 2, 3))
        dx = (dy - (sum_dy / m).view(1, -1, 1, 1) - xhat * (sum_dy_xhat / m).view(1, -1, 1, 1)) \
            * (w.view(1, -1, 1, 1) * invstd)
        return dx, sum_dy_xhat, sum_dy

    rows = [("core backward (" + normlab.get_backend("auto").NAME + ")",
             best_ms(lambda: normalize_backward(dy.numpy(), cache), args.repeat)),
            ("torch-ops backward", best_ms(torch_ops_backward, args.repeat))]
    for name, module in (("normlab.torch.BatchNorm fwd+bwd", nt.BatchNorm(c)),
                         ("torch.nn.BatchNorm2d fwd+bwd", torch.nn.BatchNorm2d(c))):
        xr = x.clone().requires_grad_()
        rows.append((name, best_ms(lambda: module(xr).backward(dy), args.repeat)))
    print(f"shape {tuple(x.shape)} float32, torch threads {torch.get_num_threads()}")
    for name, ms in rows:
        print(f"  {name:36s} {ms:8.1f} ms")


if __name__ == "__main__":
    main()
