"""PyTorch bridge: autograd Functions and modules on normlab's core, and CPU SyncBatchNorm.

Requires the optional extra: ``pip install "normlab[torch]"`` (torch 2.13).

- ``batch_norm``, ``layer_norm``, ``group_norm``: drop-ins for the
  torch.nn.functional ones whose backward is normlab's closed form.
- ``BatchNorm``, ``LayerNorm``, ``GroupNorm``: modules with torch.nn's
  parameters, buffers, state_dict keys and semantics.
- ``SyncBatchNorm``, ``convert_sync_batchnorm``: batch norm synchronized over
  torch.distributed, on CPU tensors (gloo) as well.
- ``fold_batchnorm``: fold eval-mode batch norms into the preceding Linear/Conv.
- ``update_bn_stats``: precise BN, running statistics set to the population statistics of data.
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

from .fold import fold_batchnorm
from .functions import batch_norm, group_norm, layer_norm
from .modules import BatchNorm, GroupNorm, LayerNorm
from .precise_bn import update_bn_stats
from .sync_batchnorm import SyncBatchNorm, convert_sync_batchnorm

__all__ = [
    "BatchNorm",
    "GroupNorm",
    "LayerNorm",
    "SyncBatchNorm",
    "batch_norm",
    "convert_sync_batchnorm",
    "fold_batchnorm",
    "group_norm",
    "layer_norm",
    "update_bn_stats",
]
