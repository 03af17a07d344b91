"""The plan record (normlab.backends.plan_record): Python writes it by name, Numba and C++ read the same fields.

The native node hands the record to the kernels' C entry points; a field read at
another position than the one written is an out-of-bounds read, so each reader
is checked against what Python wrote, field by field.
"""

import ctypes
import os
import shutil

import numpy as np
import pytest

from normlab.backends import plan_record

# Distinct values, consistent as one view: group norm on (n, groups * per_group, length).
VALUES = {"forward": 1001, "backward": 1002, "update_float": 1003, "update_double": 1004, "numel": 210, "stats": 6,
          "params": 15, "n": 2, "groups": 3, "per_group": 5, "length": 7, "width": 11, "row_blocks": 13,
          "huge_page_bytes": 17}


def test_a_record_has_exactly_the_named_fields():
    assert set(VALUES) == set(plan_record.FIELDS)
    record = plan_record.record(**VALUES)
    assert [record[plan_record.INDEX[name]] for name in plan_record.FIELDS] == [VALUES[n] for n in plan_record.FIELDS]
    with pytest.raises(ValueError, match=r"missing \['width'\]"):
        plan_record.record(**{k: v for k, v in VALUES.items() if k != "width"})
    with pytest.raises(ValueError, match=r"unknown \['dims'\]"):
        plan_record.record(**VALUES, dims=3)
    assert plan_record.c_header().count("X(") == len(plan_record.FIELDS)


def _native():
    torch = pytest.importorskip("torch")  # noqa: F841
    from normlab.torch import fused_node

    node = fused_node.load()
    if node is None:
        if os.environ.get("NORMLAB_NATIVE") == "0" or shutil.which("c++") is None:
            pytest.skip("the native node is switched off (NORMLAB_NATIVE=0) or there is no C++ compiler")
        pytest.fail("the native node did not build although a C++ compiler is here (see the warning)")
    return node


def test_the_native_node_reads_every_field_python_wrote():
    node = _native()
    assert node.PLAN_FIELDS == plan_record.FIELDS
    plan = node.Plan("group", [3], plan_record.record(**VALUES))
    assert {name: getattr(plan, name) for name in plan_record.FIELDS} == VALUES


def test_the_native_node_refuses_a_record_of_another_length_or_inconsistent_sizes():
    node = _native()
    with pytest.raises(RuntimeError, match="a plan record has 14 fields, got 13"):
        node.Plan("group", [3], plan_record.record(**VALUES)[:-1])
    for name, value in [("numel", 211), ("params", 14), ("stats", 3)]:
        with pytest.raises(RuntimeError, match="do not describe one view"):
            node.Plan("group", [3], plan_record.record(**{**VALUES, name: value}))


def test_the_numba_entry_points_read_the_view_from_the_named_fields():
    """A group norm through the rows entry points, the record written by name with the other fields set to
    values a positional reader would trip over: the result is the NumPy backend's."""
    from normlab.backends import _numba_entry_points as ep
    from normlab.backends import numpy_backend

    n, g, k, length = 2, 3, 2, 4
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, g, k, length)) * 3 + 1
    gamma, beta = rng.uniform(0.5, 1.5, g * k), rng.normal(size=g * k)
    forward, _ = ep.rows_entry_points("rows_elementwise", False, True, np.float64)
    record = np.array(plan_record.record(**{**VALUES, "n": n, "groups": g, "per_group": k, "length": length,
                                            "numel": x.size, "stats": n * g, "params": g * k}), dtype=np.int64)
    stats, out = np.empty((3, n * g)), np.empty_like(x)
    p, i64, f64 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double
    call = ctypes.CFUNCTYPE(i64, p, p, p, f64, i64, p, p, p)(forward)
    assert call(x.ctypes.data, gamma.ctypes.data, beta.ctypes.data, 1e-5, 0, stats.ctypes.data, out.ctypes.data,
                record.ctypes.data) == 1
    want, mean, var, _, _ = numpy_backend.forward(x, gamma.reshape(g, k), beta.reshape(g, k), 1e-5, False)
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(stats[0], mean.ravel(), rtol=1e-12, atol=1e-12)
