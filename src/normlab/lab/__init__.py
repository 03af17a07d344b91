"""The normlab lab: fully-connected nets with and without normalization, trained end to end.

``ops`` (layers in the ``(out, cache)`` style), ``model`` (FullyConnectedNet),
``optim`` (pure update rules), ``solver`` (Solver), ``checkpoint`` (atomic
.npz + JSON).
"""

from .model import NORMALIZATIONS, FullyConnectedNet
from .optim import UPDATE_RULES
from .solver import Solver

__all__ = ["FullyConnectedNet", "NORMALIZATIONS", "Solver", "UPDATE_RULES"]
