"""Run the normlab benchmark suite (same options as ``normlab bench``).

    python benchmarks/run.py --json benchmarks/results.json --markdown benchmarks/results.md
    python benchmarks/run.py --suite torch      # normlab.torch.BatchNorm vs torch.nn, through autograd
    python benchmarks/run.py --suite sync       # SyncBatchNorm on 2 ranks vs local batch norm
"""

import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported anywhere

from normlab.cli import bench  # noqa: E402

if __name__ == "__main__":
    sys.exit(bench.main(prog_name="benchmarks/run.py"))
