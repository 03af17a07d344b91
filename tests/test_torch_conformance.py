"""normlab.torch against torch.nn on PyTorch's own test inputs: ``module_db`` and ``op_db``.

Every ModuleInfo of torch.nn's norms and every OpInfo of their functional
forms is run through torch and normlab.torch (backend "auto", the core, and
"torch", the closed form in torch ops), in train and eval mode, float64 and
float32: outputs, input and parameter gradients (random upstream gradient),
buffers after two steps, memory format of channels-last inputs, and the
error inputs. Where normlab differs on purpose the case is listed in
DELIBERATE below, with its reason, and the test asserts normlab's side of it.
"""

import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("expecttest")  # imported by PyTorch's test-input modules

from torch.testing._internal.common_methods_invocations import op_db  # noqa: E402
from torch.testing._internal.common_modules import ModuleErrorEnum, module_db  # noqa: E402

import normlab.torch as nt  # noqa: E402

# The one list of deliberate differences; each case below names the one it falls under.
DELIBERATE = {
    "eps < 0": "a negative eps can make var + eps negative and the output NaN; normlab raises a ValueError "
               "(torch computes with it; its batch_norm raises too)",
    "eps == 0 with batch statistics": "a constant row or channel would divide 0 by 0; normlab raises a ValueError "
                                      "for layer, group, instance and RMS norm as for batch norm (torch computes NaN; "
                                      "its batch_norm raises too)",
    "NaN or inf in training (CPU)": "the core checks the O(C) statistics and raises a ValueError instead of "
                                    "returning NaN everywhere (the torch-ops path propagates them, as torch does); "
                                    "no test input holds NaN",
    "single value": "batch statistics over a single value normalize it to 0 whatever it is; normlab raises a "
                    "ValueError (torch returns the bias for layer and group norm; its batch and instance norm "
                    "raise too)",
    "error words": "where both raise, normlab raises ValueError/TypeError naming the argument and shapes, "
                   "torch's C++ checks a RuntimeError or IndexError in their own words",
    "per-channel shape": "a batch norm weight or bias of C values in another shape (say (1, C)), or a 0-d "
                         "batch norm weight or bias or instance norm parameter or running statistic for C = 1: "
                         "torch normalizes with it (and batch norm's backward then fails); normlab raises a "
                         "ValueError naming the shapes",
    "empty batch (checks)": "an empty batch: normlab checks the parameters and buffers as for any batch; torch's "
                            "batch and instance norm skip some of those checks and return an empty output",
    "empty batch (instance norm)": "instance norm on an empty batch with running statistics: torch sets them "
                                   "to NaN (the mean over no instances); normlab leaves them as they are, as "
                                   "both do for batch norm",
    "what the backward saves": "normlab's backward reads x, weight and given statistics: an in-place edit of "
                               "one of those between forward and backward, or an inference tensor among them, "
                               "is refused (RuntimeError, as torch refuses); of the others (bias, running "
                               "statistics in training) it is not, where torch's kernels, which save other "
                               "tensors, refuse some",
}

MODULES = {  # torch.nn class -> normlab.torch classes that must behave like it
    torch.nn.BatchNorm1d: [nt.BatchNorm1d, nt.BatchNorm, nt.SyncBatchNorm],
    torch.nn.BatchNorm2d: [nt.BatchNorm2d, nt.BatchNorm, nt.SyncBatchNorm],
    torch.nn.BatchNorm3d: [nt.BatchNorm3d, nt.BatchNorm, nt.SyncBatchNorm],
    torch.nn.GroupNorm: [nt.GroupNorm],
    torch.nn.InstanceNorm1d: [nt.InstanceNorm1d],
    torch.nn.InstanceNorm2d: [nt.InstanceNorm2d],
    torch.nn.InstanceNorm3d: [nt.InstanceNorm3d],
    torch.nn.LayerNorm: [nt.LayerNorm],
    torch.nn.RMSNorm: [nt.RMSNorm],
}
FUNCTIONS = {
    "nn.functional.batch_norm": nt.batch_norm,
    "nn.functional.group_norm": nt.group_norm,
    "nn.functional.instance_norm": nt.instance_norm,
    "nn.functional.layer_norm": nt.layer_norm,
    "nn.functional.rms_norm": nt.rms_norm,
}
MODULE_INFOS = [info for info in module_db if info.module_cls in MODULES]
OP_INFOS = [info for info in op_db if info.name in FUNCTIONS and info.variant_test_name == ""]
DTYPES = [torch.float64, torch.float32]
BACKENDS = ["auto", "torch"]
TOL = {torch.float64: {"rtol": 1e-9, "atol": 1e-11}, torch.float32: {"rtol": 1e-4, "atol": 2e-5}}


def test_every_norm_is_covered():
    assert {info.module_cls for info in MODULE_INFOS} == set(MODULES)
    assert {info.name for info in OP_INFOS} == set(FUNCTIONS)


def _clone(value):
    if isinstance(value, torch.Tensor):
        return value.detach().clone().requires_grad_(value.requires_grad)
    if isinstance(value, (list, tuple)):
        return type(value)(_clone(v) for v in value)
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    return value


def _leaves(args, kwargs):
    tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
    return [t for t in tensors if t.requires_grad], [t for t in tensors if not t.requires_grad]


def _assert_close(ours, theirs, dtype, what):
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype, what
    torch.testing.assert_close(ours, theirs, **TOL[dtype], msg=lambda m: f"{what}: {m}")


def _outcome(fn):
    """(result, None) or (None, the exception)."""
    try:
        return fn(), None
    except Exception as exc:  # noqa: BLE001 - compared below, by kind
        return None, exc


def _assert_same_failure(ours_exc, theirs_exc, what):
    """Both raise; normlab's is a ValueError/TypeError ("error words"), the same class where torch's is one."""
    assert ours_exc is not None, f"{what}: torch raised {theirs_exc!r}, normlab did not"
    expected = type(theirs_exc) if isinstance(theirs_exc, (ValueError, TypeError)) else (ValueError, TypeError)
    assert isinstance(ours_exc, expected), f"{what}: normlab raised {ours_exc!r}, torch {theirs_exc!r}"


def _assert_deliberate(reason, ours_exc, what):
    assert reason in DELIBERATE
    assert isinstance(ours_exc, ValueError), f"{what} ({reason}): normlab must raise a ValueError, got {ours_exc!r}"
    words = "more than 1 value" if reason == "single value" else "eps"
    assert words in str(ours_exc), f"{what} ({reason}): {ours_exc}"


# ----------------------------------------------------------------------------- modules

def _randomized(module, generator):
    """Random parameters and buffers, so a mix-up of weight and bias or of mean and var shows."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.rand(p.shape, generator=generator, dtype=p.dtype) + 0.5)
        for name, b in module.named_buffers():
            if b.is_floating_point():
                b.copy_(torch.rand(b.shape, generator=generator, dtype=b.dtype) + (0.5 if "var" in name else -0.5))
    return module


def _module_steps(module, x, generator, steps=2):
    """Outputs and gradients (input, then parameters) of ``steps`` forward/backward passes."""
    results = []
    for _ in range(steps):
        xs = _clone(x)
        out = module(xs)
        dout = torch.randn(out.shape, generator=generator, dtype=out.dtype).to(memory_format=_format(out))
        targets = [xs, *module.parameters()]
        grads = torch.autograd.grad(out, targets, dout, allow_unused=True) if out.requires_grad else ()
        results.append((out.detach(), grads))
    return results


def _format(t):
    for fmt in (torch.channels_last, torch.channels_last_3d):
        if t.dim() == {torch.channels_last: 4, torch.channels_last_3d: 5}[fmt] and t.is_contiguous(memory_format=fmt) \
                and not t.is_contiguous():
            return fmt
    return torch.contiguous_format


def _compare_module(ours_cls, info, module_input, dtype, training, backend):
    ctor, fwd = module_input.constructor_input, module_input.forward_input
    what = f"{ours_cls.__name__}{ctor.args}{ctor.kwargs} {module_input.desc or 'default'} " \
           f"{'train' if training else 'eval'} {dtype} backend={backend}"
    theirs = _randomized(info.module_cls(*ctor.args, **ctor.kwargs).to(dtype), torch.Generator().manual_seed(0))
    ours = ours_cls(*ctor.args, **ctor.kwargs, backend=backend).to(dtype)
    ours.load_state_dict(theirs.state_dict())
    ours.train(training)
    theirs.train(training)
    (x,) = fwd.args
    inputs = [x]
    if x.dim() in (4, 5) and x.numel():  # torch's test_memory_format: channels-last in, out and gradient
        inputs.append(x.detach().clone().to(memory_format=torch.channels_last if x.dim() == 4
                                            else torch.channels_last_3d).requires_grad_())
    for xi in inputs:
        mine = _module_steps(ours, xi, torch.Generator().manual_seed(1))
        ref = _module_steps(theirs, xi, torch.Generator().manual_seed(1))
        for step, ((out, grads), (rout, rgrads)) in enumerate(zip(mine, ref)):
            _assert_close(out, rout, dtype, f"{what} step {step} output")
            assert _format(out) == _format(rout), f"{what}: output memory format"
            for i, (g, rg) in enumerate(zip(grads, rgrads)):
                _assert_close(g, rg, dtype, f"{what} step {step} gradient {i}")
                if i == 0:
                    assert _format(g) == _format(rg), f"{what}: gradient memory format"
        for (key, value), (rkey, rvalue) in zip(ours.state_dict().items(), theirs.state_dict().items()):
            assert key == rkey
            if value.is_floating_point():
                _assert_close(value, rvalue, dtype, f"{what} buffer {key}")
            else:
                assert torch.equal(value, rvalue), f"{what} buffer {key}"
    return 1


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("info", MODULE_INFOS, ids=lambda info: info.name)
def test_module_matches_torch_nn(info, dtype, training, backend):
    inputs = info.module_inputs_func(info, device="cpu", dtype=dtype, requires_grad=True, training=training)
    compared = sum(_compare_module(ours_cls, info, module_input, dtype, training, backend)
                   for module_input in inputs for ours_cls in MODULES[info.module_cls])
    assert compared == len(inputs) * len(MODULES[info.module_cls]) > 0


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("info", [i for i in MODULE_INFOS if i.module_error_inputs_func], ids=lambda i: i.name)
def test_module_error_inputs_fail_as_in_torch(info, training):
    errors = info.module_error_inputs_func(info, device="cpu", dtype=torch.float32, requires_grad=False,
                                           training=training)
    assert errors
    for error in errors:
        ctor, fwd = error.module_error_input.constructor_input, error.module_error_input.forward_input
        for ours_cls in MODULES[info.module_cls]:
            what = f"{ours_cls.__name__}{ctor.args}{ctor.kwargs} {'train' if training else 'eval'}"

            def run(cls):
                module = cls(*ctor.args, **ctor.kwargs)
                if error.error_on == ModuleErrorEnum.FORWARD_ERROR:
                    module.train(training)(*_clone(fwd.args))
            _, theirs_exc = _outcome(lambda: run(info.module_cls))
            _, ours_exc = _outcome(lambda: run(ours_cls))
            if theirs_exc is None:
                assert ours_exc is None, f"{what}: normlab raised {ours_exc!r}, torch did not"
            else:
                _assert_same_failure(ours_exc, theirs_exc, what)


# ----------------------------------------------------------------------------- functions

def _deliberate_for_sample(name, sample):
    """Which DELIBERATE difference a functional sample falls under, if any."""
    eps = sample.kwargs.get("eps")
    if eps is not None and eps < 0:
        return "eps < 0"
    x = sample.input
    if eps == 0 and name != "nn.functional.batch_norm" and sample.kwargs.get("use_input_stats", True):
        return "eps == 0 with batch statistics"
    if name == "nn.functional.layer_norm" and x.numel() and math.prod(sample.args[0]) == 1:
        return "single value"
    if name == "nn.functional.group_norm" and x.numel() and x.shape[1] // sample.args[0] * x[0, 0].numel() == 1:
        return "single value"
    return None


def _call(fn, sample):
    args, kwargs = _clone(sample.args), _clone(sample.kwargs)
    x = _clone(sample.input)
    out = fn(x, *args, **kwargs)
    grads, buffers = _leaves(args, kwargs)
    targets = [x, *grads] if x.requires_grad else grads
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=out.dtype)
    return out.detach(), torch.autograd.grad(out, targets, dout, allow_unused=True), buffers


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("info", OP_INFOS, ids=lambda info: info.name)
def test_function_matches_torch_nn_functional(info, dtype, backend):
    ours_fn = FUNCTIONS[info.name]
    samples = list(info.sample_inputs("cpu", dtype, requires_grad=True))
    for i, sample in enumerate(samples):
        what = f"{info.name} sample {i} {tuple(sample.input.shape)} {sample.kwargs} {dtype} backend={backend}"
        theirs, theirs_exc = _outcome(lambda: _call(info.op, sample))
        ours, ours_exc = _outcome(lambda: _call(lambda *a, **k: ours_fn(*a, **k, backend=backend), sample))
        reason = _deliberate_for_sample(info.name, sample)
        if reason is not None:
            _assert_deliberate(reason, ours_exc, what)
            continue
        if theirs_exc is not None:
            _assert_same_failure(ours_exc, theirs_exc, what)
            continue
        assert ours_exc is None, f"{what}: normlab raised {ours_exc!r}"
        (out, grads, buffers), (rout, rgrads, rbuffers) = ours, theirs
        _assert_close(out, rout, dtype, f"{what} output")
        for j, (g, rg) in enumerate(zip(grads, rgrads)):
            _assert_close(g, rg, dtype, f"{what} gradient {j}")
        for j, (b, rb) in enumerate(zip(buffers, rbuffers)):  # running statistics updated in place
            _assert_close(b, rb, dtype, f"{what} running statistic {j}")
    assert samples


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("info", [i for i in OP_INFOS if i.error_inputs_func], ids=lambda info: info.name)
def test_function_error_inputs_fail_as_in_torch(info, backend):
    errors = list(info.error_inputs("cpu"))
    assert errors
    for error in errors:
        sample = error.sample_input
        what = f"{info.name} {tuple(sample.input.shape)} {sample.args} (torch: {error.error_regex})"
        _, theirs_exc = _outcome(lambda: info.op(sample.input, *sample.args, **sample.kwargs))
        _, ours_exc = _outcome(lambda: FUNCTIONS[info.name](sample.input, *sample.args, **sample.kwargs,
                                                            backend=backend))
        assert isinstance(theirs_exc, error.error_type)
        _assert_same_failure(ours_exc, theirs_exc, what)
