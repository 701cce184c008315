"""``cnnx`` command line: ``train``, ``evaluate``, ``bench``, ``demo``, ``info``.

Each subcommand lives in its own module, which registers its parser through a
``register(subparsers)`` function; this file only dispatches.
"""

import argparse
import sys


def _register_info(subparsers):
    p = subparsers.add_parser("info", help="version, build flags, OpenMP, BLAS and threads")
    p.set_defaults(func=_info_command)


def _info_command(args):
    from . import info_dict

    info = info_dict()
    width = max(map(len, info))
    for key, value in info.items():
        print(f"{key:>{width}}: {value}")
    return 0


def _register_demo(subparsers):
    p = subparsers.add_parser(
        "demo", help="run the textbook's worked examples through the kernels and the reference")
    p.set_defaults(func=_demo_command)


def _demo_command(args):
    from ._demo import run_demo

    return run_demo()


def build_parser():
    from . import __version__, benchmark, training

    parser = argparse.ArgumentParser(
        prog="cnnx", description="Fast, readable CNN convolution and pooling kernels.")
    parser.add_argument("--version", action="version", version=f"cnnx {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    training.register(sub)
    benchmark.register(sub)
    _register_demo(sub)
    _register_info(sub)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
