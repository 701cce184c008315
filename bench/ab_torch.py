"""Two-library A/B of one convolution, forward+backward: cnnx and PyTorch alternate
call by call (the order flips every round), in one process at the same thread count.

    python bench/ab_torch.py [--threads 1] [--rounds 15] [--case conv_cifar]

A cross-check of ``bench/run_bench.py`` for a single case, with every individual time
printed.  Like ``cnnx bench`` it first tells glibc's malloc to keep freed memory in the
process (``--malloc system`` leaves it alone): without that, each library's fresh arrays
page-fault in again after the other one ran (cnnx.benchmark.steady_malloc).
"""

import argparse
import json
import pathlib
import time

import numpy as np

import cnnx
from cnnx import functional as F
from cnnx.benchmark import MALLOC_CHOICES, steady_malloc

CASES = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "bench_cases.json"
BUILTIN = {"conv_cifar": {"x": [64, 32, 32, 32], "out": 64, "k": 3, "p": 1},
           "conv_resnet": {"x": [32, 64, 56, 56], "out": 64, "k": 3, "p": 1}}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--case", default="conv_cifar")
    ap.add_argument("--malloc", choices=MALLOC_CHOICES, default="steady")
    args = ap.parse_args()
    if args.malloc == "steady":
        print("memory:", steady_malloc()[1])
    import torch

    cases = dict(BUILTIN)
    if CASES.exists():
        cases.update({c["name"]: c for c in json.loads(CASES.read_text()) if c["op"] == "conv"})
    case = cases[args.case]
    cnnx.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    N, C = case["x"][:2]
    kw = dict(stride=case.get("s", 1), padding=case.get("p", 0))
    x = rng.standard_normal(case["x"], dtype=np.float32)
    w = rng.standard_normal((case["out"], C, case["k"], case["k"]), dtype=np.float32)
    w /= np.float32((C * case["k"] ** 2) ** 0.5)
    b = np.zeros(case["out"], np.float32)
    g = rng.standard_normal(F.conv2d(x, w, b, **kw).shape, dtype=np.float32)
    tx, tw, tb = (torch.from_numpy(a).requires_grad_() for a in (x, w, b))
    tg = torch.from_numpy(g)

    def run_cnnx():
        F.conv2d(x, w, b, **kw)
        F.conv2d_backward(g, x, w, **kw)

    def run_torch():
        y = torch.nn.functional.conv2d(tx, tw, tb, **kw)
        torch.autograd.grad(y, (tx, tw, tb), tg)

    times = {"cnnx": [], "torch": []}
    pair = [("cnnx", run_cnnx), ("torch", run_torch)]
    for fn in (run_cnnx, run_torch, run_cnnx, run_torch):
        fn()
    for r in range(args.rounds):
        for name, fn in (pair if r % 2 else pair[::-1]):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    for name, ts in times.items():
        print(f"{name:6s} ms: {' '.join(f'{t * 1e3:.1f}' for t in sorted(ts))}")
    ratio = np.median(times["cnnx"]) / np.median(times["torch"])
    print(f"{args.case}, {args.threads} thread(s), forward+backward: cnnx / PyTorch = "
          f"{ratio:.2f} (medians of {args.rounds})")


if __name__ == "__main__":
    main()
