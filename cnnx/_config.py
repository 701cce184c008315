"""Thread-count setting shared by every kernel call.

``CNNX_NUM_THREADS`` (environment) sets the default; ``set_num_threads`` changes it
at run time.  The value is read once per call, in Python, and handed to the
kernels, so changing it while other threads run cnnx is safe.
"""

import os
import threading

_lock = threading.Lock()
_num_threads = None


def _available_cpus():
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _default_threads():
    env = os.environ.get("CNNX_NUM_THREADS", "").strip()
    if env:
        try:
            value = int(env)
        except ValueError:
            raise ValueError(f"CNNX_NUM_THREADS must be a positive integer, got {env!r}") from None
        if value <= 0:
            raise ValueError(f"CNNX_NUM_THREADS must be a positive integer, got {env!r}")
        return value
    return _available_cpus()


def get_num_threads():
    """Number of threads the kernels use (default: CNNX_NUM_THREADS or the CPUs available)."""
    global _num_threads
    n = _num_threads
    if n is None:
        with _lock:
            if _num_threads is None:
                _num_threads = _default_threads()
            n = _num_threads
    return n


def set_num_threads(n):
    """Set the number of threads the kernels use; returns the previous value."""
    import numbers

    global _num_threads
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"n must be a positive int, got {n!r}")
    if n <= 0:
        raise ValueError(f"n must be a positive int, got {n}")
    previous = get_num_threads()
    with _lock:
        _num_threads = int(n)
    return previous
