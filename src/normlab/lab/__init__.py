"""The normlab lab: nets with and without normalization, trained end to end (``pip install "normlab[lab]"``).

``ops`` and ``conv_ops`` (layers in the ``(out, cache)`` style), ``net`` (what
the nets share), ``model`` (FullyConnectedNet), ``convnet`` (ConvNet),
``precise_bn`` (population statistics after training),
``optim`` (pure update rules), ``solver`` (Solver), ``checkpoint`` (atomic
.npz + JSON), ``data`` (offline datasets), ``sharding`` and ``launch``
(data-parallel training), ``experiments`` (the classic normalization
experiments as plots and reports), ``cli`` (``normlab train`` and
``normlab experiment``).

The lab is built on the library (``normlab``) and never the other way round.
"""

import sys
from importlib.util import find_spec

#: import name -> distribution of what the lab needs beyond the library (the ``lab`` extra).
REQUIREMENTS = {"matplotlib": "matplotlib", "sklearn": "scikit-learn", "mnist1d": "mnist1d",
                "threadpoolctl": "threadpoolctl"}


def _missing() -> list[str]:
    # A module set to None in sys.modules counts as missing (that is how imports are blocked).
    return [dist for module, dist in REQUIREMENTS.items()
            if sys.modules.get(module, False) is None or (module not in sys.modules and find_spec(module) is None)]


if _missing():
    raise ImportError(f"normlab.lab needs the lab extra ({', '.join(_missing())} not installed): "
                      f"pip install \"normlab[lab]\"")

from .convnet import CONV_NORMALIZATIONS, ConvNet  # noqa: E402
from .model import NORMALIZATIONS, FullyConnectedNet  # noqa: E402
from .optim import UPDATE_RULES  # noqa: E402
from .solver import Solver  # noqa: E402

__all__ = ["CONV_NORMALIZATIONS", "ConvNet", "FullyConnectedNet", "NORMALIZATIONS", "Solver", "UPDATE_RULES"]
