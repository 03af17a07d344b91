"""normlab: batch normalization and its siblings, derived, verified and fast.

Functional API: ``*_forward(x, gamma, beta, ...) -> (out, cache)`` and
``*_backward(dout, cache) -> (dx, dgamma, dbeta)`` for batch, spatial batch,
layer and group norm, all on one core with the closed-form backward.
Layers with state: ``BatchNorm``, ``LayerNorm``, ``GroupNorm``.
"""

from . import gradcheck
from .backends import available_backends, get_backend
from .core import Layout, NormCache
from .fold import fold_batchnorm
from .layers import BatchNorm, GroupNorm, LayerNorm, RunningStats
from .lab import FullyConnectedNet, Solver
from .norms import (
    batchnorm_backward,
    batchnorm_backward_graph,
    batchnorm_forward,
    groupnorm_backward,
    groupnorm_forward,
    layernorm_backward,
    layernorm_forward,
    spatial_batchnorm_backward,
    spatial_batchnorm_forward,
)
from .threads import get_num_threads, set_num_threads

__version__ = "0.1.0"

__all__ = [
    "BatchNorm",
    "FullyConnectedNet",
    "GroupNorm",
    "LayerNorm",
    "Layout",
    "NormCache",
    "RunningStats",
    "Solver",
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
    "layernorm_backward",
    "layernorm_forward",
    "spatial_batchnorm_backward",
    "set_num_threads",
    "spatial_batchnorm_forward",
]
