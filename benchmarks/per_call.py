"""Each norm's forward and backward per call inside a training step: torch.nn's against normlab.torch's.

    python benchmarks/per_call.py transformer [--steps 200] [--control]

Builds a model of the models suite (``normlab.bench.models_suite.MODELS``) and its normlab twin, and runs
their training steps alternating, one of each per turn, the first alternating. Clocks: a forward pre-hook and
hook around each norm module's call, and a pre-hook and hook on the autograd node of its output around its
backward (the node's own work, with whatever the engine does between the two hooks). Prints, per norm in
model order, the median and the 10th percentile of each twin's times, in microseconds, and their ratio
(torch.nn / normlab: > 1 means normlab's call is faster). The hooks cost the same on both twins.

``--control`` runs the same steps with the twin's norms left torch.nn's (an identical copy of the model): the
ratios it prints are what the measurement gives with nothing changed (an A/A run), the band to read the real
run's ratios against (the two twins' calls differ in cache state and in what ran before them).
"""

import argparse
import copy
import os
import statistics
import sys
import time

import numpy as np
import torch

from normlab.bench.models_suite import MODELS, _stepper, normlab_twin

_NORMS = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.RMSNorm)


def clock_norms(model) -> list:
    """Hooks on each norm of ``model``; returns [(name, {"forward": [s...], "backward": [s...]})] filled as it runs."""
    found = []
    for name, module in model.named_modules():
        if not isinstance(module, _NORMS):
            continue
        times = {"forward": [], "backward": []}
        found.append((f"{name} ({type(module).__module__.split('.')[0]} {type(module).__name__})", times))

        def before(mod, args, times=times):
            times["_t"] = time.perf_counter()

        def after(mod, args, out, times=times):
            times["forward"].append(time.perf_counter() - times.pop("_t"))
            node = out.grad_fn if isinstance(out, torch.Tensor) else None
            if node is not None:
                def node_before(grad_outputs):
                    times["_b"] = time.perf_counter()

                def node_after(grad_inputs, grad_outputs):
                    times["backward"].append(time.perf_counter() - times.pop("_b"))
                node.register_prehook(node_before)
                node.register_hook(node_after)

        module.register_forward_pre_hook(before)
        module.register_forward_hook(after)
    return found


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model", choices=sorted(MODELS))
    ap.add_argument("--steps", type=int, default=200, help="timed steps of each twin (after 5 warm-up steps)")
    ap.add_argument("--control", action="store_true",
                    help="A/A: the twin keeps torch.nn's norms (an identical copy), so the ratios show the noise")
    args = ap.parse_args()
    torch.manual_seed(0)
    model, x, y = MODELS[args.model].build()
    twin = copy.deepcopy(model) if args.control else normlab_twin(model)
    clocks = {"torch.nn": clock_norms(model), "normlab": clock_norms(twin)}
    steps = {"torch.nn": _stepper(model, x, y, "train"), "normlab": _stepper(twin, x, y, "train")}
    for _ in range(5):
        for step in steps.values():
            step()
    for found in clocks.values():
        for _, times in found:
            times["forward"].clear()
            times["backward"].clear()
    order = list(steps)
    for _ in range(args.steps):
        for name in order:
            steps[name]()
        order.reverse()
    print(f"{args.model}: {args.steps} steps of each twin, alternating; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}"
          + ("; CONTROL (A/A): the second twin is an identical torch.nn copy" if args.control else ""))
    kinds = sorted({name.split(" (")[1].split()[0] for name, _ in clocks["normlab"]})
    print(f"the second column's norms: {', '.join(kinds)}")
    print(f"{'norm':40s} {'pass':8s} {'torch.nn us (p10)':>18s} {'normlab us (p10)':>18s} {'nn/normlab':>10s}")
    for (ref_name, ref), (_, ours) in zip(clocks["torch.nn"], clocks["normlab"]):
        for phase in ("forward", "backward"):
            a, b = np.array(ref[phase]) * 1e6, np.array(ours[phase]) * 1e6
            if not len(a) or not len(b):
                continue
            print(f"{ref_name.split(' (')[0]:40s} {phase:8s} {statistics.median(a):10.1f} ({np.percentile(a, 10):5.1f})"
                  f" {statistics.median(b):10.1f} ({np.percentile(b, 10):5.1f}) {statistics.median(a) / statistics.median(b):10.3f}")


if __name__ == "__main__":
    sys.exit(main())
