"""Benchmarks; ``normlab bench`` and ``benchmarks/run.py`` call ``main``.

Suites: ``kernels`` (the normalization kernels against PyTorch's native CPU
kernels and the memory-bandwidth bound), ``torch`` (normlab.torch.BatchNorm
against torch.nn.BatchNorm1d/2d through autograd), ``sync``
(normlab.torch.SyncBatchNorm at world size 2 against local batch norm),
``models`` (whole training steps of ordinary models, torch.nn's norms against
normlab.torch's).
"""

from __future__ import annotations

import json
import shlex
import sys

from .cases import QUICK, SUITE, parse_case
from .models_suite import markdown_models
from .report import markdown, markdown_kernel_threads, markdown_sync, markdown_torch
from .runner import run_kernel_threads, run_kernels

__all__ = ["QUICK", "SUITE", "SUITES", "main", "markdown", "parse_case", "run_kernels"]

SUITES = ("kernels", "torch", "sync", "models")
DEFAULT_DTYPES = {"kernels": ("float32", "float64"), "torch": ("float32", "float64"), "sync": ("float32",),
                  "models": ("float32",)}


def _run_suite(suite, dtypes, log, timeout_s, environments, **options) -> dict:
    """The result of one suite (the torch, sync and models suites import torch: ImportError without it)."""
    dtypes = dtypes or DEFAULT_DTYPES[suite]
    control = options.pop("control", False)  # the models suite's alone
    processes = options.pop("processes", 1)
    compiled = options.pop("compiled", False)
    compute_dtype = options.pop("compute_dtype", "float64")
    if suite == "kernels":
        threads = options.pop("threads")
        if isinstance(threads, (tuple, list)) and len(threads) > 1:
            return run_kernel_threads(threads, dtypes=dtypes, log=log, **options)
        return run_kernels(dtypes=dtypes, log=log, threads=_one_count(threads), **options)
    if suite == "models":
        from .models_suite import QUICK as MODELS_QUICK
        from .models_suite import run_models

        if tuple(dtypes) != ("float32",):
            raise ValueError("the models suite trains float32 models: leave out --dtype")
        models = options["cases"] or (MODELS_QUICK if options["quick"] else None)
        return run_models(models, options["repeat"], options["rounds"], environments, timeout_s, log,
                          control=control, processes=processes, compiled=compiled, compute_dtype=compute_dtype)
    options["threads"] = _one_count(options["threads"])
    if suite == "torch":
        from .torch_suite import run_torch
        return run_torch(dtypes=dtypes, log=log, **options)
    from .sync_suite import run_sync
    return run_sync(dtypes=dtypes, log=log, timeout_s=timeout_s, **options)


def _one_count(threads):
    """threads as one count (or None): several are the kernel suite's alone."""
    if isinstance(threads, (tuple, list)):
        if len(threads) != 1:
            raise ValueError(f"several thread counts ({', '.join(map(str, threads))}) are for the kernel suite only")
        return threads[0]
    return threads


REPORTS = {"kernels": markdown, "torch": markdown_torch, "sync": markdown_sync, "models": markdown_models}


def main(cases=None, dtypes=None, repeat=7, threads=None, quick=False, rounds=3,
         json_path=None, markdown_path=None, command=None, suite="kernels", sync_timeout_s=600.0,
         environments=("default",), control=False, processes=1, compiled=False, compute_dtype="float64") -> dict:
    """Run ``suite`` (kernels, torch, sync or all), print the Markdown report, write JSON/Markdown files
    when asked; returns the result (for ``all``: {"suite": "all", "kernels": ..., "torch": ..., "sync": ...}).

    dtypes None: float32 and float64, float32 only for sync. threads None: all cores, 1 per rank for sync; the
    kernel suite also takes several counts (a tuple), run one after another in this process.
    sync_timeout_s: the sync and models suites fail (their processes stopped) if they take longer.
    environments: the models suite's environments (``models_suite.ENVIRONMENTS``), each a child process.
    control: the models suite also times each torch.nn model against a copy of itself (A/A).
    processes: the models suite runs each environment in that many fresh processes (ratios across them).
    compiled: the models suite also times both models under torch.compile; compute_dtype: the arithmetic of
    normlab's compiled norms there (``normlab.torch.set_compute_dtype``).
    """
    if suite not in (*SUITES, "all"):
        raise ValueError(f"suite must be one of {', '.join(SUITES)} or all, got {suite!r}")
    if command is None:
        prog = sys.argv[0]
        prog = "normlab" if prog.endswith(("__main__.py", "normlab")) else f"python {prog}"
        command = " ".join([prog, *(shlex.quote(a) for a in sys.argv[1:])])
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    texts, results = [], {}
    for name in (SUITES if suite == "all" else (suite,)):
        result = _run_suite(name, dtypes, log, sync_timeout_s, environments, cases=cases, repeat=repeat,
                            threads=threads, quick=quick, rounds=rounds, control=control, processes=processes,
                            compiled=compiled, compute_dtype=compute_dtype)
        result["command"] = command
        results[name] = result
        text = (markdown_kernel_threads if "runs" in result else REPORTS[name])(result, command)
        texts.append(f"## Suite: {name}\n\n{text}" if suite == "all" else text)
    text = "\n".join(texts)
    print(text)
    out = results[suite] if suite != "all" else {"suite": "all", "command": command, **results}
    if json_path:
        with open(json_path, "w") as fh:
            json.dump(out, fh, indent=1)
    if markdown_path:
        with open(markdown_path, "w") as fh:
            fh.write(text)
    return out
