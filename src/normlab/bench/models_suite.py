"""Whole training steps of ordinary CPU models: torch.nn's norms against normlab.torch's, in one process.

A user does not run kernels, they run steps. Each model is built once with
torch.nn norms and once with the same weights and normlab.torch norms in their
place; a step is what a training loop does (zero_grad, forward, cross-entropy,
backward, SGD step), or a no_grad forward in eval mode for the inference row.
The two twins run step by step in the same process, in pairs whose first step
alternates between them, so load from elsewhere falls on both; the ratio is
the median over pairs of torch.nn's step time over normlab's (> 1: normlab
is faster), with a bootstrap 95% interval.

By default the suite runs in the environment it was started in (no thread
variables are set: that is what users run). ``environments`` reruns it in
child processes with variables such as OMP_WAIT_POLICY=PASSIVE set, and
with busy processes beside it, so the interaction of the two thread pools
(PyTorch's OpenMP and Numba's) is visible.
"""

from __future__ import annotations

import copy
import json
import os
import random
import statistics
import subprocess
import sys
import time
from typing import Callable, NamedTuple

import numpy as np

from .runner import _times as timed_runs
from .runner import check_repeat, machine_info


class Model(NamedTuple):
    """build() -> (torch.nn model, input, target); mode: what one timed step is (``STEPS``)."""

    name: str
    description: str
    build: Callable
    mode: str = "train"


#: What a timed step does: a training step (zero_grad, forward, cross-entropy, backward, SGD step), an
#: inference step (eval mode, no_grad forward), or the model's forward and backward alone (fixed costs).
STEPS = ("train", "eval", "fwd+bwd")


def _cnn(batch=64):
    import torch
    from torch import nn

    layers, channels = [], 3
    for width in (32, 32, 64, 64):
        layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
        channels = width
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10))
    return model, torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))


def _mlp(batch=128):
    import torch
    from torch import nn

    model = nn.Sequential(nn.Linear(256, 512, bias=False), nn.BatchNorm1d(512), nn.ReLU(),
                          nn.Linear(512, 512, bias=False), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, 10))
    return model, torch.randn(batch, 256), torch.randint(0, 10, (batch,))


def _transformer(batch=32, tokens=64, width=256):
    import torch
    from torch import nn

    class Classifier(nn.Module):
        """A transformer encoder block (post-norm LayerNorms) with a mean-pool head."""

        def __init__(self):
            super().__init__()
            self.block = nn.TransformerEncoderLayer(width, 4, dim_feedforward=4 * width, dropout=0.0,
                                                    batch_first=True)
            self.head = nn.Linear(width, 10)

        def forward(self, x):
            return self.head(self.block(x).mean(dim=1))

    return Classifier(), torch.randn(batch, tokens, width), torch.randint(0, 10, (batch,))


def _resblock(batch):
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, c=64):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
            self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10))

        def forward(self, x):
            h = torch.relu(self.bn1(self.conv1(x)))
            return self.head(torch.relu(x + self.bn2(self.conv2(h))))

    return Block(), torch.randn(batch, 64, 16, 16), torch.randint(0, 10, (batch,))


def _tiny_bn():
    import torch
    from torch import nn

    return nn.Sequential(nn.BatchNorm1d(16)), torch.randn(8, 16), torch.randint(0, 16, (8,))


MODELS = {m.name: m for m in (
    Model("cnn", "4 x (Conv3x3, BatchNorm2d, ReLU), batch 64x3x32x32", _cnn),
    Model("mlp", "256-512-512-10 with BatchNorm1d, batch 128", _mlp),
    Model("transformer", "encoder block d=256, 4 heads, LayerNorm, batch 32x64 tokens", _transformer),
    Model("resblock-8", "ResNet basic block, 64 channels 16x16, BatchNorm2d, batch 8", lambda: _resblock(8)),
    Model("resblock-128", "ResNet basic block, 64 channels 16x16, BatchNorm2d, batch 128", lambda: _resblock(128)),
    Model("cnn-eval", "the CNN in eval mode, no_grad forward (inference), batch 64", _cnn, mode="eval"),
    Model("tiny-bn", "one BatchNorm1d on (8, 16), forward+backward: the fixed cost per call", _tiny_bn,
          mode="fwd+bwd"),
)}
QUICK = ("mlp", "tiny-bn")

#: Environments the suite can rerun itself in (child processes): variables to set, busy processes beside it.
ENVIRONMENTS = {
    "default": ({}, 0),
    "passive": ({"OMP_WAIT_POLICY": "PASSIVE"}, 0),
    "default+load": ({}, 1),
    "workqueue": ({"NUMBA_THREADING_LAYER": "workqueue"}, 0),
    "numba-1-thread": ({"NUMBA_NUM_THREADS": "1"}, 0),
}


def normlab_twin(model):
    """A deep copy of ``model`` with every torch.nn norm replaced by its normlab.torch counterpart, same state."""
    from torch import nn

    import normlab.torch as nt

    twin = copy.deepcopy(model)
    for parent in twin.modules():
        for name, child in list(parent.named_children()):
            replacement = None
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                replacement = nt.BatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                           child.track_running_stats)
            elif isinstance(child, nn.LayerNorm):
                replacement = nt.LayerNorm(child.normalized_shape, child.eps, child.elementwise_affine,
                                           child.bias is not None)
            elif isinstance(child, nn.GroupNorm):
                replacement = nt.GroupNorm(child.num_groups, child.num_channels, child.eps, child.affine)
            if replacement is not None:
                replacement.load_state_dict(child.state_dict())
                replacement.train(child.training)
                setattr(parent, name, replacement)
    return twin


def _stepper(model, x, y, mode: str):
    import torch

    if mode == "eval":
        model.eval()

        def infer():
            with torch.no_grad():
                model(x)
        return infer
    model.train()
    if mode == "fwd+bwd":
        x = x.clone().requires_grad_()
        dout = torch.randn_like(model(x))

        def forward_backward():
            model(x).backward(dout)
        return forward_backward
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step():
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return step


#: The steps a row times, in pairs (reference, twin); ``compiled`` adds the second pair.
EAGER, COMPILED = ("torch.nn", "normlab.torch"), ("torch.nn compiled", "normlab.torch compiled")


def time_model(spec: Model, repeat: int, rounds: int, seed: int = 0, twin: Callable = None,
               compiled: bool = False) -> dict:
    """Step ms of the torch.nn model and its twin (``twin(model)``, default :func:`normlab_twin`), and their
    ratio (> 1: the twin is faster); with ``compiled`` also both under ``torch.compile`` (row["compiled"]).

    ``rounds`` x ``repeat`` turns, each one step of every variant. Two variants alternate which goes first
    (ABBA: each follows itself and the other equally often); four (eager and compiled) run in an order
    shuffled every turn (seeded), since reversing four runs one member of each pair twice in a row at
    alternate turn boundaries (the compiled A/A read 1.013 in both processes of a run that way, 0.999
    shuffled: docs/benchmarks.md). The ratio
    is the median over turns of torch.nn's step time over the twin's: two steps a few milliseconds apart see
    the same state of the machine, so load that comes and goes cancels (a ratio of medians pooled over
    blocks of steps moved far more between runs: docs/benchmarks.md); its 95% interval is a bootstrap of
    that median. Compiled variants are compiled copies of the same two models; their first step (compiling
    forward and backward) is timed apart, as compile_s.
    """
    import torch

    torch.manual_seed(seed)
    model, x, y = spec.build()
    models = {EAGER[0]: model, EAGER[1]: (twin or normlab_twin)(model)}
    pairs = [EAGER]
    if compiled:
        models.update({COMPILED[0]: torch.compile(copy.deepcopy(model)), COMPILED[1]: torch.compile(
            (twin or normlab_twin)(model))})
        pairs.append(COMPILED)
    steps = {name: _stepper(m, x, y, spec.mode) for name, m in models.items()}
    # warm-up, 3 steps each: caches, allocator; a compiled step's first call compiles forward and backward
    first_step_s = {name: timed_runs(step, 3, warmup=0)[0] for name, step in steps.items()}
    samples = {name: [] for name in steps}
    turn_ratios = {pair: [] for pair in pairs}
    round_ratios = {pair: [] for pair in pairs}
    order = list(steps)
    shuffle = random.Random(seed).shuffle if len(order) > 2 else None
    for _ in range(rounds):
        this_round = {pair: [] for pair in pairs}
        for _ in range(repeat):
            if shuffle:
                shuffle(order)
            took = {name: timed_runs(steps[name], 1, warmup=0)[0] for name in order}
            if not shuffle:
                order.reverse()
            for name, seconds in took.items():
                samples[name].append(seconds)
            for pair in pairs:
                this_round[pair].append(took[pair[0]] / took[pair[1]])
        for pair in pairs:
            turn_ratios[pair] += this_round[pair]
            round_ratios[pair].append(statistics.median(this_round[pair]))

    def summary(pair) -> dict:
        ref, ours = (samples[name] for name in pair)
        return {"torch_ms": statistics.median(ref) * 1e3, "normlab_ms": statistics.median(ours) * 1e3,
                "torch_min_ms": min(ref) * 1e3, "normlab_min_ms": min(ours) * 1e3,
                "ratio": statistics.median(turn_ratios[pair]),
                "ratio_interval": _median_interval(turn_ratios[pair], seed),
                # each round's median ratio: how far the ratio moves within this run
                "round_ratios": round_ratios[pair]}

    row = {"model": spec.name, "description": spec.description, "mode": spec.mode, **summary(EAGER),
           "loadavg": os.getloadavg()[0]}
    if compiled:
        row["compiled"] = dict(summary(COMPILED), torch_compile_s=first_step_s[COMPILED[0]],
                               normlab_compile_s=first_step_s[COMPILED[1]])
    return row


def _median_interval(values, seed: int, resamples: int = 2000) -> list:
    """A 95% bootstrap interval [low, high] of the median of ``values``."""
    data = np.asarray(values, dtype=float)
    draws = np.random.default_rng(seed).integers(0, len(data), (resamples, len(data)))
    low, high = np.quantile(np.median(data[draws], axis=1), [0.025, 0.975])
    return [float(low), float(high)]


def run_here(models=None, repeat: int = 7, rounds: int = 3, log: Callable[[str], None] = print,
             control: bool = False, compiled: bool = False, compute_dtype: str = "float64") -> dict:
    """The suite in this process and its environment (threads as they are: no variable is set).

    control: also time each torch.nn model against an identical copy of itself, the same way (an A/A
    run: the ratios a run gives with nothing changed; row["control"]). compiled: also both models under
    torch.compile, in the same turns (row["compiled"], row["control"]["compiled"]). compute_dtype: the
    arithmetic of normlab's compiled norms (``normlab.torch.set_compute_dtype``; the eager ones do not read it).
    """
    import torch

    import normlab.torch as nt

    check_repeat(repeat)
    names = list(models or MODELS)
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        raise ValueError(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(MODELS)}")
    info = machine_info(torch.get_num_threads())
    info["loadavg_start"] = os.getloadavg()
    if compute_dtype not in ("float64", "float32"):
        raise ValueError(f"compute_dtype must be float64 or float32, got {compute_dtype!r}")
    previous = nt.set_compute_dtype(getattr(torch, compute_dtype))
    try:
        rows = [_time_row(name, repeat, rounds, log, control, compiled) for name in names]
    finally:
        nt.set_compute_dtype(previous)
    info["loadavg_end"] = os.getloadavg()
    return {"machine": info, "rows": rows, **_summary(rows)}


def _time_row(name: str, repeat: int, rounds: int, log, control: bool, compiled: bool) -> dict:
    """One model's row of :func:`run_here`, logged as it comes."""
    row = time_model(MODELS[name], repeat, rounds, compiled=compiled)
    for label, r in _variants(row):
        log(f"{name:>14}: torch.nn{label} {r['torch_ms']:9.3f} ms  normlab.torch{label} {r['normlab_ms']:9.3f} "
            f"ms  torch.nn/normlab x{r['ratio']:.3f} (95% {_interval(r)}, rounds {_spread(r)})"
            + (f"; compiling {r['torch_compile_s']:.1f} s and {r['normlab_compile_s']:.1f} s" if label else ""))
    if control:
        same = time_model(MODELS[name], repeat, rounds, twin=copy.deepcopy, compiled=compiled)
        row["control"] = _ratios(same)
        if compiled:
            row["control"]["compiled"] = _ratios(same["compiled"])
        for label, r in _variants(row["control"]):
            log(f"{'':>14}  torch.nn{label} against its own copy x{r['ratio']:.3f} (95% {_interval(r)}, "
                f"rounds {_spread(r)})")
    return row


def _ratios(row: dict) -> dict:
    return {k: row[k] for k in ("ratio", "ratio_interval", "round_ratios")}


def _variants(row: dict) -> list:
    """(label, ratios) of a row or its control: eager ("") and, when timed, compiled (" compiled")."""
    return [("", row)] + ([(" compiled", row["compiled"])] if "compiled" in row else [])


def _summary(rows: list) -> dict:
    """The geometric mean and the slowest of the models' ratios (train and eval steps), and normlab's fixed
    cost per call as a multiple of torch.nn's (the tiny fwd+bwd row's ratio); compiled likewise."""
    models = [r for r in rows if r["mode"] != "fwd+bwd"] or rows
    fixed = [r for r in rows if r["mode"] == "fwd+bwd"]
    out = {}
    for label, key in (("", None), ("compiled_", "compiled")):
        if key and key not in rows[0]:
            break
        ratios = [(r[key] if key else r)["ratio"] for r in models]
        out.update({f"{label}geomean": float(np.exp(np.mean(np.log(ratios)))), f"{label}slowest_ratio": min(ratios),
                    f"{label}fixed_cost_multiple": 1.0 / (fixed[0][key] if key else fixed[0])["ratio"]
                    if fixed else None})
    return out


def _busy() -> subprocess.Popen:
    """A process that keeps one core busy until killed (load from elsewhere on the machine)."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)


def run_models(models=None, repeat: int = 7, rounds: int = 3, environments=("default",), timeout_s: float = 1800.0,
               log: Callable[[str], None] = print, control: bool = False, processes: int = 1,
               compiled: bool = False, compute_dtype: str = "float64") -> dict:
    """The suite once per environment of ``ENVIRONMENTS``, each in a fresh child process; JSON-ready dict.

    A fresh process per environment: OpenMP and Numba read their variables at start-up. control, compiled,
    compute_dtype: see :func:`run_here`. processes > 1: the suite in that many fresh processes per environment,
    one after another, summed up by :func:`across_processes` (a process's allocator state moves its ratios by
    more than the norms do: docs/benchmarks.md). timeout_s holds for each process.
    """
    unknown = sorted(set(environments) - set(ENVIRONMENTS))
    if unknown:
        raise ValueError(f"unknown environment(s) {', '.join(unknown)}; known: {', '.join(ENVIRONMENTS)}")
    check_repeat(repeat)
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    results = {}
    for env_name in environments:
        variables, load = ENVIRONMENTS[env_name]
        log(f"models suite, environment {env_name}: {variables or 'no variables'}"
            + (f", {load} busy process(es) beside it" if load else ""))
        busy = [_busy() for _ in range(load)]
        try:
            runs = []
            for k in range(processes):
                if processes > 1:
                    log(f"process {k + 1} of {processes}")
                runs.append(_child_run(models, repeat, rounds, variables, timeout_s, log, control, compiled,
                                       compute_dtype))
        finally:
            for p in busy:
                p.kill()
                p.wait()
        results[env_name] = runs[0] if processes == 1 else across_processes(runs)
        results[env_name]["variables"], results[env_name]["busy_processes"] = variables, load
    return {"suite": "models", "repeat": repeat, "rounds": rounds, "control": control, "processes": processes,
            "compiled": compiled, "compute_dtype": compute_dtype, "environments": results}


def across_processes(runs: list) -> dict:
    """:func:`run_here` results of several processes as one: per model, the median of the processes' step
    times and ratios; ``ratio_interval`` becomes the lowest and highest process's ratio (``process_ratios``
    keeps them all), ``round_ratios`` every round of every process; the control likewise."""
    def merged(rows: list) -> dict:
        ratios = [r["ratio"] for r in rows]
        return {"ratio": statistics.median(ratios), "ratio_interval": [min(ratios), max(ratios)],
                "process_ratios": ratios, "round_ratios": [x for r in rows for x in r["round_ratios"]]}

    out_rows = []
    for rows in zip(*(run["rows"] for run in runs)):
        row = {k: rows[0][k] for k in ("model", "description", "mode")}
        for key in ("torch_ms", "normlab_ms"):
            row[key] = statistics.median(r[key] for r in rows)
        for key in ("torch_min_ms", "normlab_min_ms"):
            row[key] = min(r[key] for r in rows)
        row.update(merged(rows))
        row["loadavg"] = rows[-1]["loadavg"]
        if "compiled" in rows[0]:
            row["compiled"] = merged([r["compiled"] for r in rows])
            for key in ("torch_ms", "normlab_ms", "torch_compile_s", "normlab_compile_s"):
                row["compiled"][key] = statistics.median(r["compiled"][key] for r in rows)
        if "control" in rows[0]:
            row["control"] = merged([r["control"] for r in rows])
            if "compiled" in rows[0]["control"]:
                row["control"]["compiled"] = merged([r["control"]["compiled"] for r in rows])
        out_rows.append(row)
    machine = dict(runs[0]["machine"], loadavg_end=runs[-1]["machine"]["loadavg_end"])
    return {"machine": machine, "rows": out_rows, "processes": len(runs), **_summary(out_rows)}


def _child_run(models, repeat, rounds, variables, timeout_s, log, control=False, compiled=False,
               compute_dtype="float64") -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "NUMBA_THREADING_LAYER", "NUMBA_NUM_THREADS")}
    env.update(variables)
    code = ("import json, sys; from normlab.bench.models_suite import run_here; "
            f"r = run_here({list(models) if models else None!r}, {repeat}, {rounds}, "
            f"log=lambda s: print(s, file=sys.stderr, flush=True), control={bool(control)}, "
            f"compiled={bool(compiled)}, compute_dtype={compute_dtype!r}); "
            "print(json.dumps(r))")
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise RuntimeError(f"models suite: no result within {timeout_s:.0f} s") from None
    for line in err.splitlines():
        log(line)
    if proc.returncode != 0:
        raise RuntimeError(f"models suite failed (exit {proc.returncode}): {err.strip().splitlines()[-1:]}")
    return json.loads(out.strip().splitlines()[-1])


def _spread(row: dict) -> str:
    """The lowest and highest per-round ratio of a row, e.g. "0.97-1.04"."""
    ratios = row["round_ratios"]
    return f"{min(ratios):.2f}-{max(ratios):.2f}"


def _interval(row: dict) -> str:
    """A row's 95% interval of the ratio, e.g. "0.995-1.012"."""
    low, high = row["ratio_interval"]
    return f"{low:.3f}-{high:.3f}"


def _ratio_text(result: dict, processes: int) -> str:
    """What the ratio columns of one environment's table mean."""
    pairs = (f"the median over {result['rounds'] * result['repeat']} turns (one step of each twin"
             + (", eager and compiled, in an order shuffled every turn" if result.get("compiled") else
                ", the first of a pair alternating") + ", after 3 warm-up steps each) of torch.nn's step time over "
             "normlab's in the same mode")
    rounds = (f"rounds: the lowest and highest median of a round of {result['repeat']} turns, how far the ratio "
              "moves within a process.")
    if processes > 1:
        text = (f"Ratio: the median over {processes} fresh processes, one after another, of each process's ratio, "
                f"{pairs}; processes: the lowest and highest process's ratio; {rounds} Step times: the median "
                "over the processes.")
    else:
        text = f"Ratio: {pairs}; 95%: a bootstrap interval of that median; {rounds}"
    return text + (" A/A: torch.nn's model timed the same way against an identical copy of itself, the ratio "
                   "this run gives with nothing changed." if result.get("control") else "")


def _arithmetic(result: dict) -> str:
    """The compiled table's note on normlab's arithmetic (``normlab.torch.set_compute_dtype``)."""
    dtype = result.get("compute_dtype", "float64")
    return "; normlab's arithmetic " + (dtype if dtype == "float64" else
                                        f"{dtype}, `normlab.torch.set_compute_dtype(torch.{dtype})`")


def markdown_models(result: dict, command: str | None = None) -> str:
    lines = [f"Command: `{command}`", ""] if command else []
    control = bool(result.get("control"))
    for env_name, res in result["environments"].items():
        m = res["machine"]
        processes = res.get("processes", 1)
        setting = ", ".join(f"{k}={v}" for k, v in res["variables"].items()) or "no thread variables set"
        load = f", {res['busy_processes']} busy process(es) beside it" if res["busy_processes"] else ""
        lines += [f"### Environment `{env_name}` ({setting}{load})", "",
                  f"Machine: {m['cpu']}, {m['cores']} cores, torch threads {m.get('torch_threads')}, "
                  f"numba {m.get('numba')} (threading layer {m.get('numba_threading_layer')}), torch {m.get('torch')}; "
                  f"load average {m['loadavg_start'][0]:.2f} at start, {m['loadavg_end'][0]:.2f} at end.",
                  _ratio_text(result, processes), ""]
        compiled = "compiled" in res["rows"][0]
        for label, key in (("eager", None), ("compiled", "compiled"))[:1 + compiled]:
            if compiled:
                lines += [f"**{label.capitalize()}**" + (" (`torch.compile(model)`, inductor; compiling: the first "
                                                         "step's seconds, torch.nn and normlab"
                                                         + _arithmetic(result) + ")" if key else ""), ""]
            lines += _table(res, key, control, "processes" if processes > 1 else "95%")
        lines.append("")
    return "\n".join(lines)


def _table(res: dict, key, control: bool, spread: str) -> list:
    """The Markdown table of one environment's eager rows (key None) or compiled rows (key "compiled")."""
    def part(row):
        return row[key] if key else row

    lines = [f"| model | step | torch.nn ms | normlab.torch ms | torch.nn / normlab | {spread} | rounds |"
             + (" compiling s |" if key else "") + (f" A/A | A/A {spread} |" if control else ""),
             "|---|---|---:|---:|---:|---:|---:|" + ("---:|" if key else "") + ("---:|---:|" if control else "")]
    for row in res["rows"]:
        r = part(row)
        line = (f"| {row['model']}: {row['description']} | {row['mode']} "
                f"| {r['torch_ms']:.3f} | {r['normlab_ms']:.3f} | {r['ratio']:.3f} | {_interval(r)} | {_spread(r)} |")
        if key:
            line += f" {r['torch_compile_s']:.1f}, {r['normlab_compile_s']:.1f} |"
        if control:
            line += f" {part(row['control'])['ratio']:.3f} | {_interval(part(row['control']))} |"
        lines.append(line)
    prefix = "compiled_" if key else ""
    lines += ["", f"Models (train and eval steps): geometric mean {res[prefix + 'geomean']:.3f}x; slowest "
              f"{res[prefix + 'slowest_ratio']:.3f}x."]
    if control:
        same = [part(r["control"])["ratio"] for r in res["rows"] if r["mode"] != "fwd+bwd"]
        lines.append(f"A/A (torch.nn against its own copy): {min(same):.3f}x to {max(same):.3f}x over the models.")
    if res.get(prefix + "fixed_cost_multiple") is not None:
        lines.append(f"Fixed cost per forward+backward (tiny-bn): normlab.torch takes "
                     f"{res[prefix + 'fixed_cost_multiple']:.2f}x torch.nn's time.")
    return lines + [""]
