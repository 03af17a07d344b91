"""Run the normlab benchmark suite (same options as ``normlab bench``).

    python benchmarks/run.py --json benchmarks/results.json --markdown benchmarks/results.md
"""

import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported anywhere

from normlab.cli import bench  # noqa: E402

if __name__ == "__main__":
    sys.exit(bench.main(prog_name="benchmarks/run.py"))
