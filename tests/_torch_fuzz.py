"""Differential fuzzing of normlab.torch against torch.nn: seeded cases, each run on both, outcomes compared.

A case (:func:`make_case`, a JSON-able dict drawn from its seed) is one call of a
module or functional with perturbed parameters, buffers, input and arguments:
wrong sizes, other float dtypes, ``meta`` tensors, non-contiguous and
channels_last input, inference tensors, mixed requires_grad, in-place edits
between forward and backward. :func:`run_case` builds it twice from the seed
(torch.nn's, normlab's with a backend) and compares: normlab raises where torch
raises (at the same stage, leaving its state as it was) and matches where torch
returns (output, gradients, state). The differences normlab makes on purpose
are those of tests/test_torch_conformance.py's DELIBERATE list.

A route is chosen by the process: ``native`` (the default), ``python``
(NORMLAB_NATIVE=0 set by the caller), ``numpy`` and ``torch`` (the backend
argument). As a program it runs cases and prints one JSON line per case::

    python tests/_torch_fuzz.py --route native --seeds 0:300     # a batch
    python tests/_torch_fuzz.py --route python --seeds 17:18 -v  # one case, described
    ... --cases -                                                # cases as a JSON list on stdin

:func:`run_in_children` is the parent's side: batches in child processes, a
batch that dies continued without its case, which is then run alone to name it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np
import torch

import normlab.torch as nt

F = torch.nn.functional
ROUTES = {"native": "auto", "python": "auto", "numpy": "numpy", "torch": "torch"}
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}
TOL = {"float64": (1e-7, 1e-8), "float32": (2e-3, 2e-4), "float16": (3e-2, 3e-2), "bfloat16": (8e-2, 8e-2)}
PER_CHANNEL = ("weight", "bias", "running_mean", "running_var")
BATCH_MODULES = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "BatchNorm", "SyncBatchNorm")
INSTANCE_MODULES = ("InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d")
MODULES = (*BATCH_MODULES, "LayerNorm", "GroupNorm", *INSTANCE_MODULES, "RMSNorm")
FUNCTIONS = ("batch_norm", "layer_norm", "group_norm", "instance_norm", "rms_norm")
EPS = [1e-3, 0.0, -1e-5, True, 1, 0, "np.float64"]


# ----------------------------------------------------------------------------- drawing a case

def _shape(r: random.Random, target: str) -> tuple[list, int]:
    """(x's shape, C or the normalized size) for a target; now and then large enough for the parallel kernels."""
    big = r.random() < 0.08
    n = r.choice([2, 3, 4, 8]) if not big else r.choice([64, 128])
    c = r.choice([1, 2, 3, 4, 6]) if not big else r.choice([256, 520])
    spatial = {"BatchNorm1d": r.choice([0, 1]), "BatchNorm2d": 2, "BatchNorm3d": 3, "InstanceNorm1d": 1,
               "InstanceNorm2d": 2, "InstanceNorm3d": 3}.get(target, r.choice([0, 1, 2]))
    if target in ("batch_norm", "BatchNorm", "SyncBatchNorm", "group_norm"):
        spatial = r.choice([0, 1, 2])
    if target in ("instance_norm",):
        spatial = r.choice([1, 2])
    sizes = [r.choice([1, 2, 3, 5]) if not big else 1 for _ in range(spatial)]
    return [n, c, *sizes], c


def make_case(seed: int) -> dict:
    """The case of ``seed``: what is called, on what, and which perturbations apply."""
    r = random.Random(seed)
    target = r.choice(MODULES + FUNCTIONS)
    shape, c = _shape(r, target)
    dtype = r.choices(list(DTYPES), weights=[5, 4, 1, 1])[0]
    case = {"seed": seed, "target": target, "shape": shape, "dtype": dtype, "training": r.random() < 0.7,
            "grad": r.choices(["grad", "no_grad", "inference_mode"], weights=[8, 1, 1])[0],
            "x_requires_grad": r.random() < 0.8, "warm": r.random() < 0.4, "opts": {}, "perturb": [],
            "edit": None}
    opts = case["opts"]
    if target in ("LayerNorm", "RMSNorm", "layer_norm", "rms_norm"):
        opts["normalized"] = shape[r.randrange(1, len(shape)):] if r.random() < 0.4 else shape[-1:]
        opts["affine"] = r.random() < 0.8
        opts["bias"] = r.random() < 0.8
    if target in ("GroupNorm", "group_norm"):
        opts["groups"] = r.choice([d for d in (1, 2, 3, c) if c % d == 0])
        opts["affine"] = r.random() < 0.8
    if target in BATCH_MODULES + INSTANCE_MODULES + ("batch_norm", "instance_norm"):
        instance = target in INSTANCE_MODULES or target == "instance_norm"
        opts["affine"] = r.random() < (0.3 if instance else 0.8)
        opts["track"] = r.random() < (0.4 if instance else 0.85)
        opts["momentum"] = r.choice([0.1, 0.1, 0.1, None, 0.0, 1.0])
        opts["bias"] = r.random() < 0.9
    if dtype in ("float16", "bfloat16") and r.random() < 0.5:
        opts["param_dtype"] = "float32"
    for _ in range(r.choices([0, 1, 2], weights=[3, 5, 2])[0]):
        case["perturb"].append(_perturbation(r, case, c))
    if r.random() < 0.12:
        case["edit"] = r.choice(["x", "weight", "bias", "running_mean", "running_var", "out"])
    return case


def complete(case: dict) -> dict:
    """An explicit case (target, shape and what differs from the defaults) with every field filled in."""
    target = case["target"]
    opts = {"affine": True, "bias": True}
    if target in BATCH_MODULES + INSTANCE_MODULES + ("batch_norm", "instance_norm"):
        opts.update(track=target not in INSTANCE_MODULES and target != "instance_norm", momentum=0.1)
    if target in ("LayerNorm", "RMSNorm", "layer_norm", "rms_norm"):
        opts["normalized"] = case["shape"][-1:]
    if target in ("GroupNorm", "group_norm"):
        opts["groups"] = 1
    full = {"seed": 0, "dtype": "float32", "training": True, "grad": "grad", "x_requires_grad": True, "warm": False,
            "perturb": [], "edit": None, **case}
    full["opts"] = {**opts, **case.get("opts", {})}
    return full


def _perturbation(r: random.Random, case: dict, c: int) -> list:
    """One perturbation: [what, how, argument]."""
    what = r.choice(["x", "x", "weight", "bias", "running_mean", "running_var", "num_batches_tracked", "scalar"])
    if what == "x":
        how = r.choice(["noncontig", "channels_last", "dtype", "meta", "inference", "empty", "channels", "dims",
                        "int", "unbatched", "expanded"])
        arg = r.choice(list(DTYPES)) if how == "dtype" else r.choice([-1, 1])
        return [what, how, arg]
    if what == "num_batches_tracked":
        return [what, r.choice(["inference", "float", "meta", "numel"]), 2]
    if what == "scalar":
        name = r.choice(["eps", "momentum", "shape_form", "groups"])
        values = {"eps": EPS, "momentum": [None, 0.0, 1.0, 0.5],
                  "shape_form": ["list", "size", "int", "float", "bool", "np"],
                  "groups": [c + 1, 0, True, "float", -1]}
        return ["scalar", name, r.choice(values[name])]
    how = r.choice(["numel", "numel", "2d", "0d", "dtype", "meta", "inference", "requires_grad", "none", "noncontig"])
    arg = {"numel": r.choice([c - 1, c + 1, 1000, 0, 2 * c]), "dtype": r.choice(list(DTYPES))}.get(how, 0)
    return [what, how, arg]


# ----------------------------------------------------------------------------- building it (twice, same values)

class Built:
    """One side of a case: the callable, its input, its tensors (by name) and the module (or None)."""

    def __init__(self, call, x, tensors: dict, module):
        self.call, self.x, self.tensors, self.module = call, x, tensors, module
        self.dout_dtype = x.dtype  # the upstream gradient's values are rounded to the output's dtype

    def state(self) -> dict:
        """The tensors a call may change in place (running statistics and the batch count), cloned."""
        names = ("running_mean", "running_var", "num_batches_tracked")
        if self.module is not None:
            found = {n: getattr(self.module, n, None) for n in names}
        else:
            found = {n: self.tensors.get(n) for n in names}
        return {n: None if t is None or t.device.type == "meta" else t.detach().clone() for n, t in found.items()}


def _values(g: torch.Generator, shape, dtype, positive=False):
    t = torch.rand(shape, generator=g, dtype=torch.float64) + 0.5 if positive else \
        torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 0.5
    return t.to(dtype)


def _scalar(case, name, default):
    for what, how, arg in case["perturb"]:
        if what == "scalar" and how == name:
            return np.float64(1e-4) if arg == "np.float64" else arg
    return default


def _reference_module(case, x_dim: int):
    target = case["target"]
    if target in ("BatchNorm", "SyncBatchNorm"):
        return {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d}.get(x_dim,
                                                                                            torch.nn.BatchNorm3d)
    return getattr(torch.nn, target)


def _module(case, lib: str, backend: str, x_dim: int, c: int):
    target, opts = case["target"], case["opts"]
    cls = getattr(nt, target) if lib == "normlab" else _reference_module(case, x_dim)
    extra = {"backend": backend} if lib == "normlab" else {}
    pdtype = DTYPES[opts.get("param_dtype", case["dtype"])]
    eps = _scalar(case, "eps", None)
    eps_kw = {} if eps is None else {"eps": eps}
    if target in BATCH_MODULES or target in INSTANCE_MODULES:
        momentum = _scalar(case, "momentum", opts["momentum"])
        return cls(c, momentum=momentum, affine=opts["affine"], track_running_stats=opts["track"],
                   bias=opts["bias"], dtype=pdtype, **eps_kw, **extra)
    if target == "GroupNorm":
        return cls(opts["groups"], c, affine=opts["affine"], dtype=pdtype, **eps_kw, **extra)
    normalized = tuple(opts["normalized"])
    if target == "LayerNorm":
        return cls(normalized, elementwise_affine=opts["affine"], bias=opts["bias"], dtype=pdtype, **eps_kw,
                   **extra)
    return cls(normalized, elementwise_affine=opts["affine"], dtype=pdtype, **eps_kw, **extra)  # RMSNorm


def _x_shape(case) -> list:
    """x's shape after the case's perturbations of it."""
    shape, forms = list(case["shape"]), _x_forms(case)
    if "channels" in forms:
        shape[1] = max(1, shape[1] + forms["channels"])
    if "empty" in forms:
        shape[0] = 0
    if "dims" in forms:
        shape = shape + [2] if forms["dims"] > 0 or len(shape) <= 2 else shape[:-1]
    if "unbatched" in forms:
        shape = shape[1:]
    return shape


def _make_x(case, g):
    shape, dtype = _x_shape(case), DTYPES[case["dtype"]]
    forms = _x_forms(case)
    if "dtype" in forms:
        dtype = DTYPES[forms["dtype"]]
    x = _values(g, shape, torch.float64)
    x = x.to(torch.int64) if "int" in forms else x.to(dtype)
    if "noncontig" in forms and x.dim() >= 2:
        x = x.transpose(0, -1).contiguous().transpose(0, -1)
    if "channels_last" in forms and x.dim() in (4, 5):
        x = x.contiguous(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    if "expanded" in forms and x.dim() >= 3:  # stride 0 along a spatial axis (along N: no variance at all)
        x = x[:, :, :1].expand(x.shape)
    if "inference" in forms:
        with torch.inference_mode():
            x = x.clone()
    if "meta" in forms:
        x = x.to("meta")
    if case["x_requires_grad"] and x.is_floating_point() and not x.is_inference():
        x.requires_grad_()
    return x


def _perturbed(t, how, arg, g, shape_for, dtype, param: bool):
    """A replacement for tensor t (None: absent) under perturbation ``how``."""
    base = t if t is not None else _values(g, shape_for, dtype)
    if how == "none":
        return None
    if how == "numel":
        return _values(g, (max(arg, 0),), base.dtype, positive=True)
    if how == "2d":
        return base.detach().reshape(1, -1).clone() if base.dim() <= 1 else base.detach().reshape(-1).clone()
    if how == "0d":
        return base.detach().reshape(-1)[0].clone() if base.numel() else base.detach().clone()
    if how == "dtype":
        return base.detach().to(DTYPES[arg])
    if how == "meta":
        return base.detach().to("meta")
    if how == "float":
        return base.detach().double()
    if how == "noncontig":
        doubled = torch.stack([base.detach(), base.detach()], -1)
        return doubled[..., 0]
    if how == "inference":
        with torch.inference_mode():
            return base.detach().clone()
    if how == "clone":  # (what a reference takes for an inference tensor: the same values)
        return base.detach().clone()
    if how == "requires_grad":
        return base.detach().clone().requires_grad_(not param)
    return base


def _apply_perturbations(case, tensors: dict, g, c_shape, dtype, module):
    for what, how, arg in case["perturb"]:
        if what in ("x", "scalar") or (what == "num_batches_tracked" and module is None):
            continue
        current = getattr(module, what, None) if module is not None else tensors.get(what)
        shape_for = (1,) if what == "num_batches_tracked" else c_shape
        new = _perturbed(current, how, arg, g, shape_for, torch.long if what == "num_batches_tracked" else dtype,
                         what in ("weight", "bias"))
        if module is None:
            tensors[what] = new
            continue
        if what in ("weight", "bias") and new is not None:
            requires = how == "requires_grad" or (not new.is_inference() and new.device.type != "meta"
                                                  and new.is_floating_point() and current is not None
                                                  and current.requires_grad)
            new = torch.nn.Parameter(new, requires_grad=requires and new.is_floating_point())
        setattr(module, what, new)


def build(case: dict, lib: str, backend: str = "auto", reference: bool = False) -> Built:
    """The case's call on torch.nn (lib "torch") or normlab.torch (lib "normlab"), from its seed.

    reference: the same values, every floating tensor as a contiguous float64 copy (torch's side then is
    the oracle for float16/bfloat16 cases, which torch computes less accurately than normlab, and for
    strided parameters, with which torch 2.13's CPU batch norm backward returns wrong input gradients).
    """
    g = torch.Generator().manual_seed(case["seed"])
    x = _make_x(case, g)
    c = case["shape"][1]
    target, opts = case["target"], case["opts"]
    pdtype = DTYPES[opts.get("param_dtype", case["dtype"])]
    if target in MODULES:
        module = _module(case, lib, backend, x.dim(), c)
        with torch.no_grad():
            for p in module.parameters():
                p.copy_(_values(g, p.shape, p.dtype, positive=True))
            for name, b in module.named_buffers():
                if b.is_floating_point():
                    b.copy_(_values(g, b.shape, b.dtype, positive="var" in name))
        _apply_perturbations(case, {}, g, _param_shape(case, c), pdtype, module)
        module.train(case["training"])
        if reference:
            for owner in (module._parameters, module._buffers):
                for name, t in owner.items():
                    owner[name] = None if t is None else _upcast(t, isinstance(t, torch.nn.Parameter))
        built = Built(module, _upcast(x) if reference else x, {}, module)
    else:
        tensors = _function_tensors(case, g, c, pdtype)
        _apply_perturbations(case, tensors, g, _param_shape(case, c), pdtype, None)
        if reference:
            tensors = {name: None if t is None else _upcast(t) for name, t in tensors.items()}
        built = Built(_function_call(case, lib, backend, tensors), _upcast(x) if reference else x, tensors, None)
    built.dout_dtype = x.dtype
    return built


def _upcast(t, parameter: bool = False):
    """A contiguous float64 leaf copy of a floating tensor (other tensors as they are)."""
    if not t.is_floating_point() or t.device.type == "meta":
        return t
    with torch.inference_mode(False):
        copy = t.detach().to(torch.float64).contiguous().clone().requires_grad_(t.requires_grad)
    return torch.nn.Parameter(copy, requires_grad=t.requires_grad) if parameter else copy


def _param_shape(case, c):
    return tuple(case["opts"]["normalized"]) if "normalized" in case["opts"] else (c,)


def _function_tensors(case, g, c, pdtype) -> dict:
    opts, shape = case["opts"], _param_shape(case, c)
    tensors = {}
    if opts.get("affine", True):
        tensors["weight"] = _values(g, shape, pdtype, positive=True).requires_grad_()
        if opts.get("bias", True) and case["target"] != "rms_norm":
            tensors["bias"] = _values(g, shape, pdtype).requires_grad_()
    if opts.get("track"):
        tensors["running_mean"] = _values(g, shape, pdtype)
        tensors["running_var"] = _values(g, shape, pdtype, positive=True)
    return tensors


def _normalized_arg(case):
    shape = list(case["opts"]["normalized"])
    form = _scalar(case, "shape_form", "tuple")
    return {"tuple": tuple(shape), "list": shape, "size": torch.Size(shape), "int": shape[-1],
            "float": tuple(float(d) for d in shape), "bool": tuple(bool(d) for d in shape),
            "np": tuple(np.int64(d) for d in shape)}[form]


def _function_call(case, lib, backend, tensors):
    target, opts = case["target"], case["opts"]
    fn = getattr(nt, target) if lib == "normlab" else getattr(F, target)
    kw = {"backend": backend} if lib == "normlab" else {}
    eps = _scalar(case, "eps", None)
    if eps is not None:
        kw["eps"] = eps
    w, b = tensors.get("weight"), tensors.get("bias")
    rm, rv = tensors.get("running_mean"), tensors.get("running_var")
    if target == "batch_norm":
        momentum = _scalar(case, "momentum", opts["momentum"])
        return lambda x: fn(x, rm, rv, w, b, case["training"] or rm is None, 0.0 if momentum is None else momentum,
                            **kw)
    if target == "instance_norm":
        momentum = _scalar(case, "momentum", opts["momentum"])
        return lambda x: fn(x, rm, rv, w, b, case["training"] or rm is None, 0.0 if momentum is None else momentum,
                            **kw)
    if target == "group_norm":
        groups = _scalar(case, "groups", opts["groups"])
        groups = float(opts["groups"]) if groups == "float" else groups
        return lambda x: fn(x, groups, w, b, **kw)
    if target == "layer_norm":
        return lambda x: fn(x, _normalized_arg(case), w, b, **kw)
    return lambda x: fn(x, _normalized_arg(case), w, **kw)  # rms_norm


# ----------------------------------------------------------------------------- running and comparing

def _grad_context(case):
    return {"grad": torch.enable_grad, "no_grad": torch.no_grad, "inference_mode": torch.inference_mode}[case["grad"]]()


def _edit(built: Built, out, name):
    target = out if name == "out" else (built.x if name == "x" else
                                         (getattr(built.module, name, None) if built.module is not None
                                          else built.tensors.get(name)))
    if target is None or target.device.type == "meta" or target.is_inference():
        return
    with torch.no_grad():
        try:
            target.mul_(1.5)
        except RuntimeError:  # an expanded tensor (stride 0) cannot be written in place
            pass


def execute(case: dict, lib: str, backend: str = "auto", reference: bool = False) -> dict:
    """The outcome of the case on one side: {"raised": (stage, type, message)} or output, gradients, state."""
    if case["warm"]:  # the same call without its perturbations (or with the warm-up's own) first: caches then
        # hold another signature
        warm = case["warm"] if isinstance(case["warm"], list) else []
        try:
            execute({**case, "warm": False, "perturb": warm, "edit": None}, lib, backend)
        except Exception:  # noqa: BLE001 - the warm-up's own outcome is another case's business
            pass
    built = build(case, lib, backend, reference)
    before = built.state()
    try:
        with _grad_context(case):
            out = built.call(built.x)
    except Exception as exc:  # noqa: BLE001 - compared by kind
        return {"raised": ("forward", type(exc), str(exc)), "before": before, "state": built.state()}
    value = out.detach() if out.device.type == "meta" else out.detach().clone()  # (before an edit of out)
    if case["edit"]:
        _edit(built, out, case["edit"])
    grads = None
    if out.requires_grad:
        params = [p for p in (built.module.parameters() if built.module is not None
                              else (t for n, t in built.tensors.items() if n in PER_CHANNEL))
                  if p is not None and p.requires_grad]
        targets = ([built.x] if built.x.requires_grad else []) + params
        dout = _values(torch.Generator().manual_seed(case["seed"] + 1), out.shape, torch.float64)
        dout = dout.to(built.dout_dtype if built.dout_dtype.is_floating_point else out.dtype).to(out.dtype)
        try:
            grads = torch.autograd.grad(out, targets, dout.to(out.device), allow_unused=True)
        except Exception as exc:  # noqa: BLE001
            return {"raised": ("backward", type(exc), str(exc)), "before": before, "state": built.state(),
                    "out": value}
    return {"out": value, "grads": grads, "state": built.state(), "before": before}


def deliberate(case: dict) -> str | None:
    """Which of the conformance suite's DELIBERATE differences where normlab raises a ValueError in forward
    the case falls under, if any."""
    eps = _scalar(case, "eps", 1e-5)
    eps = 1e-4 if isinstance(eps, np.floating) else eps
    target, shape, opts = case["target"], _x_shape(case), case["opts"]
    forms = _x_forms(case)
    typed = target in ("layer_norm", "rms_norm") and _scalar(case, "shape_form", "tuple") in ("int", "float", "bool")
    if "int" in forms or typed \
            or not _modules_take(case, len(shape)) or len(shape) < 2:
        return None  # torch refuses those first (or runs them without statistics)
    per_sample = target in ("layer_norm", "group_norm", "rms_norm", "LayerNorm", "GroupNorm", "RMSNorm")
    batch_stats = case["training"] or per_sample or not opts.get("track", True)
    if eps is not True and isinstance(eps, (int, float)) and (eps < 0 or (eps == 0 and batch_stats)):
        return "eps < 0" if eps < 0 else "eps == 0 with batch statistics"
    if shape[0] and _single_value(case, shape):
        return "single value"
    batch = target in BATCH_MODULES + ("batch_norm",)
    instance = target in INSTANCE_MODULES + ("instance_norm",)
    for what, how, _ in case["perturb"]:
        if what in ("weight", "bias") and ((batch and how == "2d") or ((batch or instance) and how == "0d"
                                                                         and shape[1] == 1)):
            return "per-channel shape"
        if instance and what in ("running_mean", "running_var") and how == "0d" and shape[1] == 1:
            return "per-channel shape"
    return None


def _modules_take(case, dims: int) -> bool:
    """Whether the module's own dimension check (torch.nn's _check_input_dim) takes an input of ``dims``."""
    target = case["target"]
    allowed = {"BatchNorm1d": (2, 3), "BatchNorm2d": (4,), "BatchNorm3d": (5,), "InstanceNorm1d": (2, 3),
               "InstanceNorm2d": (3, 4), "InstanceNorm3d": (4, 5)}.get(target)
    return allowed is None or dims in allowed


def _x_forms(case) -> dict:
    return {how: arg for what, how, arg in case["perturb"] if what == "x"}


def _single_value(case, shape) -> bool:
    """Per-sample statistics over one value each (torch returns the bias; normlab raises)."""
    target = case["target"]
    if target in ("LayerNorm", "layer_norm"):
        return math.prod(case["opts"]["normalized"]) == 1
    if target in ("GroupNorm", "group_norm"):
        groups = _scalar(case, "groups", case["opts"]["groups"]) if target == "group_norm" else case["opts"]["groups"]
        return isinstance(groups, int) and not isinstance(groups, bool) and groups > 0 and \
            shape[1] % groups == 0 and shape[1] // groups * math.prod(shape[2:]) == 1
    return False


def _same_failure(ours: tuple, theirs: tuple) -> bool:
    """Both raised at the same stage; normlab's exception is torch's kind or the ValueError/TypeError that
    names the argument ("error words")."""
    if ours[0] != theirs[0]:
        return False
    if issubclass(theirs[1], (ValueError, TypeError)):
        return issubclass(ours[1], theirs[1])
    return issubclass(ours[1], (ValueError, TypeError, RuntimeError, theirs[1]))


def _close(a, b, dtype) -> str | None:
    if a is None or b is None:
        return None if a is None and b is None else f"one is None ({a is None}, {b is None})"
    if a.shape != b.shape or a.dtype != b.dtype or a.device != b.device:
        return f"{tuple(a.shape)} {a.dtype} {a.device} against {tuple(b.shape)} {b.dtype} {b.device}"
    if a.device.type == "meta":
        return None
    rtol, atol = TOL[dtype]
    a64, b64 = a.detach().double(), b.detach().double()
    if not torch.allclose(a64, b64, rtol=rtol, atol=atol, equal_nan=True):
        return f"max abs difference {float((a64 - b64).abs().nan_to_num(0).max()):.3g}"
    return None


INPLACE = "modified by an inplace operation"
#: torch's own failures on valid input (torch 2.13): group norm's backward of an empty batch without weight,
#: instance norm's forward of an empty batch with parameters, layer norm's backward with float16 input and
#: float32 parameters (which its forward takes)
TORCH_BUGS = ("tensor does not have a device", "select(): index 0 out of range for tensor of size [0]",
              "expected scalar type Half but found Float", "expected scalar type BFloat16 but found Float")
INFERENCE = "Inference tensors cannot be saved for backward"


def compare(case: dict, ours: dict, theirs: dict, reference: dict | None = None, oracle: dict | None = None
            ) -> list[str]:
    """What differs between normlab's outcome and torch.nn's, in words (empty: they agree).

    reference: torch's outcome without the case's in-place edit and inference tensors, for a case torch
    refused because its kernels save one of those: normlab's backward reads x, weight and given
    statistics only, and where it does not read the edited or inference tensor it must return the
    results of the call as made (DELIBERATE, "what the backward saves").
    """
    problems = []
    reason = deliberate(case)
    if reason is not None:
        if "raised" not in ours or ours["raised"][0] != "forward" or not issubclass(ours["raised"][1], ValueError):
            problems.append(f"{reason}: normlab must raise a ValueError in forward, got {_outcome(ours)}")
    elif _saving_refusal(ours, case):
        pass  # normlab's backward reads the edited or inference tensor: its refusal is torch's answer to it
    elif "raised" in theirs and any(bug in theirs["raised"][2] for bug in TORCH_BUGS) and "raised" not in ours:
        pass  # torch fails where it should not (TORCH_BUGS); normlab's output was checked by other cases
    elif "raised" in ours and "raised" not in theirs and _x_shape(case)[0] == 0 and ours["raised"][0] == "forward" \
            and issubclass(ours["raised"][1], (ValueError, TypeError, RuntimeError)):
        pass  # DELIBERATE "empty batch (checks)": normlab checks an empty batch's arguments as any other's
    elif "raised" in theirs and not (reference is not None and "raised" not in ours):
        if "raised" not in ours or not _same_failure(ours["raised"], theirs["raised"]):
            problems.append(f"torch raised {_outcome(theirs)}; normlab {_outcome(ours)}")
    elif "raised" in ours:
        problems.append(f"normlab raised {_outcome(ours)}; torch returned")
    else:
        compared = reference if "raised" in theirs else theirs
        problems += _differences(case, ours, compared, state=compared is theirs or not case["edit"], oracle=oracle)
    if "raised" in ours and ours["raised"][0] == "forward":
        for name, value in ours["before"].items():
            after = ours["state"][name]
            if value is not None and after is not None and not torch.equal(value, after):
                problems.append(f"{name} changed by a refused call")
    return problems


def _saving_refusal(result: dict, case: dict, torch_side: bool = False) -> bool:
    """A refusal to save an edited or inference tensor for backward, in a case that has one (normlab's: of a
    tensor its backward reads, x, weight or given statistics; torch's: of any)."""
    if "raised" not in result:
        return False
    stage, _, message = result["raised"]
    inference = any(how == "inference" for _, how, _ in case["perturb"])
    edited = case["edit"] is not None if torch_side else case["edit"] in ("x", "weight", "running_mean",
                                                                          "running_var")
    return (stage == "backward" and INPLACE in message and edited) or (INFERENCE in message and inference)


def _without_saving_artifacts(case: dict) -> dict:
    """The case with plain copies in place of its inference tensors and without its in-place edit."""
    return {**case, "edit": None, "perturb": [[w, "clone" if h == "inference" else h, a] for w, h, a in case["perturb"]]}


def _differences(case, ours, theirs, state: bool = True, oracle: dict | None = None) -> list[str]:
    """Output, gradients and state of two outcomes that both returned, compared; with ``oracle`` (torch on
    contiguous float64 copies of the same values) a difference counts only where normlab is further from
    the oracle than the dtype's tolerance and than torch is."""
    problems = []
    dtype = _compute_dtype(case, theirs["out"])
    pairs = [("output", ours["out"], theirs["out"], oracle and oracle["out"])]
    for i, (a, b) in enumerate(zip(ours["grads"] or (), theirs["grads"] or ())):
        pairs.append((f"gradient {i}", a, b, oracle and oracle["grads"][i]))
    for name, value in theirs["state"].items() if state else ():
        pairs.append((f"{name} after the call", ours["state"][name], value, oracle and oracle["state"][name]))
    for what, a, b, truth in pairs:
        problem = _close(a, b, dtype)
        if problem is not None and truth is not None and a is not None and b is not None:
            problem = _closer(a, b, truth, dtype)
        if problem is not None:
            problems.append(f"{what}: {problem}")
    if (ours["grads"] is None) != (theirs["grads"] is None):
        problems.append(f"gradients: normlab {ours['grads'] is not None}, torch {theirs['grads'] is not None}")
    return problems


def _closer(ours, theirs, truth, dtype) -> str | None:
    """None if normlab is within the dtype's tolerance of the oracle, or no further from it than torch."""
    if ours.shape != truth.shape or ours.device.type == "meta":
        return f"{tuple(ours.shape)} against the oracle's {tuple(truth.shape)}"
    rtol, atol = TOL[dtype]
    truth = truth.detach().double()
    ours_err = float((ours.detach().double() - truth).abs().nan_to_num(math.inf).max()) if ours.numel() else 0.0
    torch_err = float((theirs.detach().double() - truth).abs().nan_to_num(math.inf).max()) if theirs.numel() else 0.0
    bound = atol + rtol * (float(truth.abs().max()) if truth.numel() else 0.0)
    if ours_err <= bound or ours_err <= torch_err:
        return None
    return f"{ours_err:.3g} from the float64 oracle (torch {torch_err:.3g}, tolerance {bound:.3g})"


def _compute_dtype(case, out) -> str:
    names = {v: k for k, v in DTYPES.items()}
    own = names.get(out.dtype, "float64")
    param = case["opts"].get("param_dtype")
    return "float16" if own in ("float16", "bfloat16") or param in ("float16", "bfloat16") else own


def _outcome(result: dict) -> str:
    if "raised" not in result:
        return "returned"
    stage, kind, message = result["raised"]
    return f"{kind.__name__} in {stage}: {message.splitlines()[0][:160] if message else ''}"


def run_case(case: dict, route: str) -> list[str]:
    """The problems of ``case`` on ``route`` (empty: normlab behaves as torch.nn)."""
    theirs = execute(case, "torch")
    ours = execute(case, "normlab", ROUTES[route])
    reference = None
    if _saving_refusal(theirs, case, torch_side=True):
        reference = execute(_without_saving_artifacts(case), "torch")
    if _empty_instance(case) and "raised" not in theirs and "raised" not in ours:
        theirs = {**theirs, "state": ours["before"]}  # DELIBERATE "empty batch (instance norm)"
    problems = compare(case, ours, theirs, reference)
    compared = reference if reference is not None else theirs
    if problems and "raised" not in ours and "raised" not in compared:  # values differ: who is right?
        oracle = execute(_without_saving_artifacts(case) if reference is not None else case, "torch", reference=True)
        if "raised" not in oracle:
            problems = compare(case, ours, theirs, reference, oracle)
    return problems


def _empty_instance(case) -> bool:
    return case["target"] in INSTANCE_MODULES + ("instance_norm",) and "empty" in _x_forms(case)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--route", choices=list(ROUTES), required=True)
    parser.add_argument("--seeds", help="start:stop, the seeded cases to run")
    parser.add_argument("--cases", help="a file holding a JSON list of cases (- for stdin)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print each case too")
    args = parser.parse_args(argv)
    if args.cases:
        text = sys.stdin.read() if args.cases == "-" else Path(args.cases).read_text()
        cases = [complete(c) for c in json.loads(text)]
    else:
        start, stop = (int(s) for s in args.seeds.split(":"))
        cases = [make_case(seed) for seed in range(start, stop)]
    torch.set_num_threads(1)  # torch's side is the oracle: its threads would only wait for a busy machine
    for i, case in enumerate(cases):
        print(json.dumps({"start": i}), flush=True)
        try:
            problems = run_case(case, args.route)
        except Exception:  # noqa: BLE001 - a harness error is a failing case too, with its traceback
            problems = ["the harness failed: " + traceback.format_exc(limit=4)]
        line = {"index": i, "problems": problems}
        if args.verbose:
            line["case"] = case
        print(json.dumps(line), flush=True)
    return 0


# ----------------------------------------------------------------------------- the parent's side

def _child(route: str, cases: list[dict], timeout: float) -> tuple[dict, int | None, str]:
    """Run cases in one child: ({index: problems}, the index it died in or None, its stderr's tail)."""
    env = {**os.environ, "NORMLAB_NATIVE": "0"} if route == "python" else dict(os.environ)
    try:
        proc = subprocess.run([sys.executable, __file__, "--route", route, "--cases", "-"], input=json.dumps(cases),
                              capture_output=True, text=True, timeout=timeout, env=env)
        out, err, code = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        out, err, code = exc.stdout or "", f"timed out after {timeout} s", -1
        out, err = (out.decode() if isinstance(out, bytes) else out), err
    results, started = {}, None
    for line in out.splitlines():
        item = json.loads(line)
        if "start" in item:
            started = item["start"]
        else:
            results[item["index"]] = item["problems"]
    died = None if code == 0 and len(results) == len(cases) else started
    return results, died, err[-1500:]


def run_in_children(route: str, cases: list[dict], batch: int = 150, timeout: float = 300) -> dict:
    """{position in cases: problems} of every failing case, the cases run ``batch`` to a child process.

    A child that dies (a crash, an abort, a timeout) names the case it was in: that case is run again
    alone, in a process of its own (a crash there is its failure; a pass means an earlier case of the
    batch corrupted the process, which is reported too), and the batch goes on after it in a new child.
    """
    failures, todo = {}, [list(range(i, min(i + batch, len(cases)))) for i in range(0, len(cases), batch)]
    while todo:
        positions = todo.pop(0)
        results, died, err = _child(route, [cases[p] for p in positions], timeout)
        failures.update({positions[i]: problems for i, problems in results.items() if problems})
        if died is None:
            continue
        culprit = positions[died]
        alone, alone_died, alone_err = _child(route, [cases[culprit]], timeout)
        if alone_died is not None:
            failures[culprit] = [f"the process died (crash, abort or timeout): {alone_err}"]
        else:
            earlier = [cases[p].get("seed") for p in positions[:died]]
            failures[culprit] = alone.get(0) or [f"the batch's process died in this case, which passes alone: an "
                                                 f"earlier case of the batch (seeds {earlier}) corrupted it: {err}"]
        if positions[died + 1:]:
            todo.insert(0, positions[died + 1:])
    return failures


def describe(case: dict) -> str:
    """One line naming a case, enough to rerun it (its seed, or the case itself)."""
    return json.dumps(case, default=str)


if __name__ == "__main__":
    sys.exit(main())
