"""normlab: batch normalization and its siblings, derived, verified and fast.

Functional API: ``*_forward(x, gamma, beta, ...) -> (out, cache)`` for batch,
spatial batch, layer, group, instance and RMS norm, all on one core, and one closed-form
backward for all of them, ``normalize_backward(dout, cache) -> (dx, dgamma,
dbeta)`` (also under the per-norm names ``batchnorm_backward``, ...).
Layers with state: ``BatchNorm``, ``LayerNorm``, ``GroupNorm``, ``InstanceNorm``, ``RMSNorm``, and for
small or split batches ``BatchRenorm`` (batch renormalization) and ``GhostBatchNorm`` (statistics per chunk).

The lab (nets, training, experiments) is ``normlab.lab``, installed with the
``lab`` extra; this package never imports it.
"""

from . import gradcheck
from .backends import available_backends, get_backend
from .core import Layout, NormCache, normalize_backward
from .fold import fold_batchnorm
from .ghost import GhostBatchNorm
from .layers import BatchNorm, GroupNorm, InstanceNorm, LayerNorm, RMSNorm, RunningStats
from .norms import (
    batchnorm_backward,
    batchnorm_backward_graph,
    batchnorm_forward,
    groupnorm_backward,
    groupnorm_forward,
    instancenorm_backward,
    instancenorm_forward,
    layernorm_backward,
    layernorm_forward,
    rmsnorm_backward,
    rmsnorm_forward,
    spatial_batchnorm_backward,
    spatial_batchnorm_forward,
)
from .renorm import BatchRenorm
from .threads import get_num_threads, set_num_threads

__version__ = "0.1.0"

__all__ = [
    "BatchNorm",
    "BatchRenorm",
    "GhostBatchNorm",
    "GroupNorm",
    "InstanceNorm",
    "LayerNorm",
    "Layout",
    "NormCache",
    "RMSNorm",
    "RunningStats",
    "available_backends",
    "batchnorm_backward",
    "batchnorm_backward_graph",
    "batchnorm_forward",
    "fold_batchnorm",
    "get_backend",
    "get_num_threads",
    "gradcheck",
    "groupnorm_backward",
    "groupnorm_forward",
    "instancenorm_backward",
    "instancenorm_forward",
    "layernorm_backward",
    "layernorm_forward",
    "normalize_backward",
    "rmsnorm_backward",
    "rmsnorm_forward",
    "set_num_threads",
    "spatial_batchnorm_backward",
    "spatial_batchnorm_forward",
]
