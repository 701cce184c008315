#!/usr/bin/env python
"""Run cnnx's benchmark suite from a checkout: ``python bench/run_bench.py --threads 1,2``.

A thin wrapper around :mod:`cnnx.benchmark` (the same harness as ``cnnx bench``); it
benchmarks the cnnx of this checkout when that is importable (built in place), else
the installed one.  ``python bench/run_bench.py --help`` lists the options.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isdir(os.path.join(ROOT, "cnnx")) and ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from cnnx.benchmark import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
