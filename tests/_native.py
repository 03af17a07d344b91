"""normlab.torch's native node for a test: skipped where it cannot be built here, a failure where it should be."""

import os
import shutil

import pytest


def node_or_skip():
    """The node's module; a skip with NORMLAB_NATIVE=0 or without a C++ compiler, a failure if it did not build
    although a compiler is here (the warning says why)."""
    pytest.importorskip("torch")
    from normlab.torch import fused_node

    node = fused_node.load()
    if node is None:
        if os.environ.get("NORMLAB_NATIVE") == "0" or shutil.which("c++") is None:
            pytest.skip("the native node is switched off (NORMLAB_NATIVE=0) or there is no C++ compiler")
        pytest.fail("the native node did not build although a C++ compiler is here (see the warning)")
    return node
