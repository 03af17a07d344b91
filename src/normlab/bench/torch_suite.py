"""Module-level benchmark: normlab.torch.BatchNorm against torch.nn.BatchNorm1d/2d, through autograd.

Both modules run in train mode as a network calls them: the forward builds
the autograd graph (x requires grad) and updates the running statistics; the
backward is ``out.backward(dout)`` with a random dout, the gradients set to
None first as ``zero_grad()`` does (so nothing accumulates). The backward phase
times repeated backwards of one forward's graph (``retain_graph=True``); the
forward+backward phase builds a fresh graph every run.

Two kernel-level rows from the kernel suite put the module times in context:
normlab's fused Numba kernels called directly (``numba``) and PyTorch's ATen
ops without autograd (``torch``). Module minus kernel is the cost of the layer
around the kernels: autograd, argument checks, tensor/array views, running
statistics.
"""

from __future__ import annotations

import gc
import os
from typing import Callable

import numpy as np

from .cases import Case, Impl, _inputs, normlab_impls, parse_case, torch_impl
from .runner import PHASES, machine_info, prepare, time_impls

TORCH_SUITE = ("bn:4096x1024", "bn:65536x64", "bn:256x4096", "sbn:32x64x56x56", "sbn:256x256x7x7")
TORCH_QUICK = ("bn:512x64", "sbn:8x16x14x14")
MODULE_IMPLS = ("normlab.torch", "torch.nn")
KERNEL_IMPLS = {"numba": "numba kernels", "torch": "ATen kernels"}


def batchnorm_case(text_or_case) -> Case:
    """A batch-norm case (bn:NxC or sbn:NxCxHxW); ValueError for the other norms."""
    case = parse_case(text_or_case) if isinstance(text_or_case, str) else text_or_case
    if case.kind not in ("bn", "sbn"):
        raise ValueError(f"case {case.id!r}: the torch and sync suites time batch norm only "
                         f"(bn:NxC or sbn:NxCxHxW)")
    return case


def module_impl(name: str, module, x, dout) -> Impl:
    """Impl timing ``module(x)`` and ``out.backward(dout)`` (grads reset to None, as zero_grad does)."""
    params = list(module.parameters())

    def forward():
        return module(x)

    def backward(out):
        x.grad = None
        for p in params:
            p.grad = None
        out.backward(dout, retain_graph=True)

    return Impl(name, forward, backward, None, False)


def module_pair(case: Case, dtype, x_np: np.ndarray | None = None, dout_np: np.ndarray | None = None):
    """(normlab.torch.BatchNorm, torch.nn.BatchNorm1d/2d) in train mode with equal parameters, and x, dout tensors."""
    import torch

    import normlab.torch as nt

    x0, gamma, beta, dout0 = _inputs(case, dtype)
    x_np = x0 if x_np is None else x_np
    dout_np = dout0 if dout_np is None else dout_np
    tdtype = torch.float32 if np.dtype(dtype) == np.float32 else torch.float64
    reference = (torch.nn.BatchNorm1d if case.kind == "bn" else torch.nn.BatchNorm2d)(case.channels, dtype=tdtype)
    ours = nt.BatchNorm(case.channels, dtype=tdtype)
    with torch.no_grad():
        for module in (ours, reference):
            module.weight.copy_(torch.from_numpy(gamma))
            module.bias.copy_(torch.from_numpy(beta))
    x = torch.from_numpy(np.ascontiguousarray(x_np)).requires_grad_()
    return ours.train(), reference.train(), x, torch.from_numpy(np.ascontiguousarray(dout_np))


def torch_module_impls(case: Case, dtype, available: list[str]) -> list[Impl]:
    """normlab.torch.BatchNorm and torch.nn.BatchNorm1d/2d, then the two kernel-level rows."""
    ours, reference, x, dout = module_pair(case, dtype)
    impls = [module_impl("normlab.torch", ours, x, dout), module_impl("torch.nn", reference, x, dout)]
    impls += [impl for impl in normlab_impls(case, dtype, available, (0.0, 1.0)) if impl.name == "numba"]
    aten = torch_impl(case, dtype, (0.0, 1.0))  # the modules' inputs
    if aten is not None:
        impls.append(aten)
    return impls


def run_torch(cases=None, dtypes=("float32", "float64"), repeat: int = 7, threads: int | None = None,
              quick: bool = False, rounds: int = 3, log: Callable[[str], None] = print) -> dict:
    """Time the modules (and the kernels under them); returns a JSON-ready dict."""
    threads = prepare(threads, repeat)
    import torch  # noqa: F401 - ImportError here says the suite needs PyTorch

    from ..backends import available_backends

    case_list = [batchnorm_case(c) for c in (cases or (TORCH_QUICK if quick else TORCH_SUITE))]
    available = available_backends()
    info = machine_info(threads)
    info["loadavg_start"] = os.getloadavg()
    rows = []
    for case in case_list:
        for dtype in dtypes:
            impls = torch_module_impls(case, dtype, available)
            timed = time_impls(impls, repeat, rounds)
            for impl in impls:
                row = {"case": case.id, "kind": case.kind, "shape": list(case.shape), "dtype": dtype,
                       "impl": impl.name, "level": "module" if impl.name in MODULE_IMPLS else "kernel",
                       "loadavg": os.getloadavg()[0]}
                for phase in PHASES:
                    row[f"{phase}_ms"], row[f"{phase}_min_ms"] = timed[impl.name][phase]
                rows.append(row)
            _add_ratios([r for r in rows if r["case"] == case.id and r["dtype"] == dtype])
            for row in rows[-len(impls):]:
                log(f"{case.id:>18} {dtype:>8} {row['impl']:>14}: fwd {row['forward_ms']:8.3f} ms  "
                    f"bwd {row['backward_ms']:8.3f} ms  both {row['both_ms']:8.3f} ms"
                    + (f"  torch/normlab x{row['both_ratio']:.2f}" if row.get("both_ratio") else ""))
            del impls, timed
            gc.collect()
    info["loadavg_end"] = os.getloadavg()
    return {"suite": "torch", "machine": info, "repeat": repeat, "rounds": rounds, "rows": rows,
            "summary": summarize_torch(rows), "notes": []}


def _add_ratios(rows: list[dict]) -> None:
    """ratio = torch's median / normlab's, per phase: torch.nn over normlab.torch, ATen over numba."""
    by_impl = {r["impl"]: r for r in rows}
    for ours, theirs in (("normlab.torch", "torch.nn"), ("numba", "torch")):
        if ours in by_impl and theirs in by_impl:
            for phase in PHASES:
                by_impl[ours][f"{phase}_ratio"] = by_impl[theirs][f"{phase}_ms"] / by_impl[ours][f"{phase}_ms"]


def summarize_torch(rows: list[dict]) -> dict:
    """Per case: torch.nn/normlab.torch (fwd+bwd), and each side's layer overhead over its kernels (ms)."""
    out = {"module_ratio_both": {}, "normlab_layer_overhead_ms": {}, "torch_layer_overhead_ms": {}}
    for key in dict.fromkeys((r["case"], r["dtype"]) for r in rows):  # in run order
        by_impl = {r["impl"]: r for r in rows if (r["case"], r["dtype"]) == key}
        label = f"{key[0]} {key[1]}"
        if "both_ratio" in by_impl.get("normlab.torch", {}):
            out["module_ratio_both"][label] = by_impl["normlab.torch"]["both_ratio"]
        if "numba" in by_impl:
            out["normlab_layer_overhead_ms"][label] = by_impl["normlab.torch"]["both_ms"] - by_impl["numba"]["both_ms"]
        if "torch" in by_impl:
            out["torch_layer_overhead_ms"][label] = by_impl["torch.nn"]["both_ms"] - by_impl["torch"]["both_ms"]
    ratios = list(out["module_ratio_both"].values())
    if ratios:
        out["module_ratio_geomean"] = float(np.exp(np.mean(np.log(ratios))))
        out["normlab_faster_everywhere"] = all(v > 1 for v in ratios)
    return out
