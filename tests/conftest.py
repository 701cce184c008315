"""Shared pytest configuration.

Hypothesis profiles (pick one with ``--hypothesis-profile NAME``):

* ``ci`` (default): bounded, ~60 examples per property, no deadline.
* ``long``: 2000 examples per property, for fuzzing sessions.

Unless ``--hypothesis-seed N`` is given, a random seed is drawn for the
session and printed in the header; rerun with ``--hypothesis-seed N`` to get
the same examples again.  A failing example also prints a
``@reproduce_failure`` blob.
"""

import os
import random
import sys

import pytest
from hypothesis import HealthCheck, settings

# make tests/_helpers.py importable (pytest runs with --import-mode=importlib)
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

settings.register_profile(
    "ci",
    max_examples=60,
    deadline=None,
    derandomize=False,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "long",
    max_examples=2000,
    deadline=None,
    derandomize=False,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
# the hypothesis pytest plugin loads --hypothesis-profile later, overriding this
settings.load_profile("ci")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    # runs before the hypothesis plugin's pytest_configure, which applies the seed
    if getattr(config.option, "hypothesis_seed", None) is None:
        config.option.hypothesis_seed = str(random.SystemRandom().randrange(2**32))
        config._cnnx_seed_drawn = True


def pytest_report_header(config):
    seed = getattr(config.option, "hypothesis_seed", None)
    how = "drawn for this session" if getattr(config, "_cnnx_seed_drawn", False) else "given"
    return f"hypothesis seed: {seed} ({how}; reproduce with --hypothesis-seed={seed})"


def pytest_sessionstart(session):
    try:
        import cnnx._conv  # noqa: F401
    except ImportError as exc:
        raise pytest.UsageError(
            "build/install cnnx first: pip install .  "
            f"(cannot import the compiled module cnnx._conv: {exc})"
        ) from None
