"""PyTorch bridge: autograd Functions and modules on normlab's core, and CPU SyncBatchNorm.

Requires the optional extra: ``pip install "normlab[torch]"`` (torch 2.13).

- ``batch_norm``, ``instance_norm``, ``layer_norm``, ``group_norm``,
  ``rms_norm``: drop-ins for the torch.nn.functional ones whose backward is
  normlab's closed form.
- ``BatchNorm`` (any (N, C, *)) and ``BatchNorm1d/2d/3d``, ``InstanceNorm1d/2d/3d``,
  ``LayerNorm``, ``GroupNorm``, ``RMSNorm``: modules with torch.nn's
  constructors, parameters, buffers, state_dict keys and semantics.
- ``SyncBatchNorm``, ``convert_sync_batchnorm``: batch norm synchronized over
  torch.distributed, on CPU tensors (gloo) as well.

- ``fold_batchnorm``: fold eval-mode batch norms into the preceding Linear/Conv.
- ``update_bn_stats``: precise BN, running statistics set to the population statistics of data.
- ``set_compute_dtype``: float64 (default) or float32 arithmetic for the norms in torch ops, torch.compile's
  graphs among them: the README's numerics, or speed.

Every module and functional goes through ``normlab.torch.route``: the call's
arguments are checked once per signature (raising as torch.nn raises), and
the call runs on the native node (eager CPU calls the fused kernels serve),
the core from Python (other eager CPU calls), or torch ops (other devices,
``backend="torch"``, torch.compile, torch.func); ``route``'s docstring draws them.
"""

# Inside this package, ``import torch`` still means the top-level torch
# (absolute imports), never this subpackage.
try:
    import torch as _torch  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "normlab.torch needs PyTorch, which is an optional extra: install it with "
        "pip install \"normlab[torch]\" (or pip install \"torch==2.13.*\")"
    ) from exc

from .closed_form import set_compute_dtype
from .fold import fold_batchnorm
from .functions import batch_norm, group_norm, instance_norm, layer_norm, rms_norm
from .modules import (BatchNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d, GroupNorm, InstanceNorm1d,
                      InstanceNorm2d, InstanceNorm3d, LayerNorm, RMSNorm)
from .precise_bn import update_bn_stats
from .sync_batchnorm import SyncBatchNorm, convert_sync_batchnorm

__all__ = [
    "BatchNorm",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "GroupNorm",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "LayerNorm",
    "RMSNorm",
    "SyncBatchNorm",
    "batch_norm",
    "convert_sync_batchnorm",
    "fold_batchnorm",
    "group_norm",
    "instance_norm",
    "layer_norm",
    "rms_norm",
    "set_compute_dtype",
    "update_bn_stats",
]
