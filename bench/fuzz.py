"""Long fuzzing run: random configurations of every op, compiled vs the pure-Python reference.

    python bench/fuzz.py --minutes 30            # all ops, random seeds from 0
    python bench/fuzz.py --minutes 5 --ops conv2d --start 100000

Each configuration (drawn by the same generators as tests/test_reliability.py's
hypothesis strategies: every option, degenerate and exactly-fitting kernels,
dilation, groups, ceil_mode, empty and unbatched inputs, NaN/inf data, several
GEMM tilings) runs through every conv algorithm at 1 thread and at 2 threads
with parallelism forced, forward and backward, and must match the reference
(and be bit-identical across thread counts).  A configuration is written to
``--last`` before it runs, so a crash leaves it behind; a mismatch prints it and
exits with status 1.  ``pytest tests/test_reliability.py -k fuzz
--hypothesis-profile=long`` is the shrinking (hypothesis) counterpart.
"""

import argparse
import json
import os
import sys
import time
import traceback
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

import _reliability_helpers as RH  # noqa: E402  (the test suite's generators)

GENERATORS = {
    "conv2d": RH.conv_config,
    "max_pool2d": lambda d: RH.pool_config(d, "max"),
    "avg_pool2d": lambda d: RH.pool_config(d, "avg"),
    "relu": RH.relu_config,
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="time budget (default 10)")
    ap.add_argument("--ops", default=",".join(GENERATORS),
                    help=f"comma-separated subset of {','.join(GENERATORS)}")
    ap.add_argument("--start", type=int, default=0, help="first seed (default 0)")
    ap.add_argument("--last", default="fuzz_last_config.json",
                    help="file holding the configuration being run (default %(default)s)")
    args = ap.parse_args(argv)
    ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    unknown = set(ops) - set(GENERATORS)
    if unknown:
        ap.error(f"unknown op(s) {sorted(unknown)}; choose from {sorted(GENERATORS)}")

    warnings.filterwarnings("ignore", category=RuntimeWarning)   # NaN/inf data on purpose
    deadline = time.monotonic() + 60 * args.minutes
    counts = {op: [0, 0] for op in ops}          # configurations, compiled calls
    seed = args.start
    while time.monotonic() < deadline:
        op = ops[seed % len(ops)]
        cfg = GENERATORS[op](RH.RandomDraw(seed))
        with open(args.last, "w") as f:
            json.dump(dict(cfg, fuzz_seed=seed), f)
        try:
            calls = RH.check_config(cfg)
        except AssertionError:
            print(f"MISMATCH at seed {seed}: {json.dumps(cfg)}")
            traceback.print_exc()
            return 1
        counts[op][0] += 1
        counts[op][1] += calls
        seed += 1
    os.remove(args.last)
    total = sum(c for c, _ in counts.values())
    print(f"fuzz: {total} configurations (seeds {args.start}..{seed - 1}) in "
          f"{args.minutes:g} min, no mismatch, no crash")
    for op, (n, calls) in counts.items():
        print(f"  {op:11s} {n:7d} configurations {calls:9d} compiled calls checked")
    return 0


if __name__ == "__main__":
    sys.exit(main())
