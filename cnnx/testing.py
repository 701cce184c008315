"""Test helpers: compare an op against its reference twin, check gradients numerically.

Examples
--------
Compare a compiled op with the pure-Python reference (same arguments)::

    from cnnx.testing import compare_with_reference
    y, y_ref = compare_with_reference("conv2d", x, w, b, stride=2, padding=1)

Check an analytic gradient against central differences (use float64)::

    from cnnx.testing import check_gradient
    g = rng.standard_normal(y.shape)              # upstream gradient dL/dy
    gx, gw, gb = cnnx.conv2d_backward(g, x, w)
    check_gradient(lambda x_: cnnx.conv2d(x_, w), x, gx, grad_out=g)
    check_gradient(lambda w_: cnnx.conv2d(x, w_), w, gw, grad_out=g)

For a layer parameter that is read in place, write the function so that it
copies the trial value into the parameter first::

    def loss_of_weight(w_):
        layer.params["weight"][...] = w_
        return loss.forward(layer.forward(x), labels)
    check_gradient(loss_of_weight, layer.params["weight"].copy(), layer.grads["weight"])
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "RTOL",
    "ATOL",
    "tolerances",
    "assert_close",
    "compare_with_reference",
    "numerical_gradient",
    "check_gradient",
]

#: Default relative tolerance per result dtype (compiled kernels vs float64 oracle).
RTOL = {
    np.dtype(np.float16): 2e-3,
    np.dtype(np.float32): 2e-5,
    np.dtype(np.float64): 1e-10,
}
#: Default absolute tolerance per dtype, *relative to the magnitude of the
#: expected values*: ``atol = ATOL[dtype] * max(1, max|finite expected|)``, so
#: sums that cancel to (nearly) zero are not held to a relative tolerance.
ATOL = {
    np.dtype(np.float16): 2e-3,
    np.dtype(np.float32): 2e-5,
    np.dtype(np.float64): 1e-12,
}

def tolerances(dtype, expected=None, rtol=None, atol=None):
    """``(rtol, atol)`` for comparing results of ``dtype``.

    ``rtol``/``atol`` override the defaults; otherwise ``rtol = RTOL[dtype]`` and
    ``atol = ATOL[dtype] * max(1, max |finite expected|)``.
    """
    dtype = np.dtype(dtype)
    key = dtype if dtype in RTOL else np.dtype(np.float64)
    if rtol is None:
        rtol = RTOL[key]
    if atol is None:
        scale = 1.0
        if expected is not None:
            e = np.asarray(expected, dtype=np.float64)
            finite = np.abs(e[np.isfinite(e)])
            if finite.size:
                scale = max(1.0, float(finite.max()))
        atol = ATOL[key] * scale
    return rtol, atol


def assert_close(actual, expected, rtol=None, atol=None, err_msg=""):
    """Assert two arrays match: same shape and dtype; values within tolerance.

    Integer arrays (max-pool indices) must be equal exactly.  For floating
    arrays NaN must meet NaN and ``±inf`` the same infinity; the tolerances
    default to :func:`tolerances` for the expected dtype.
    """
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, (
        f"{err_msg}shape mismatch: got {actual.shape}, expected {expected.shape}")
    assert actual.dtype == expected.dtype, (
        f"{err_msg}dtype mismatch: got {actual.dtype}, expected {expected.dtype}")
    if expected.dtype.kind in "biu":
        np.testing.assert_array_equal(actual, expected, err_msg=err_msg)
        return
    rtol, atol = tolerances(expected.dtype, expected, rtol, atol)
    np.testing.assert_allclose(actual.astype(np.float64), expected.astype(np.float64),
                               rtol=rtol, atol=atol, equal_nan=True, err_msg=err_msg)


def compare_with_reference(op_name, *args, rtol=None, atol=None, **kwargs):
    """Run ``cnnx.functional.<op_name>`` and ``cnnx.reference.<op_name>`` and compare.

    Both get the same ``*args``/``**kwargs``.  Tuple results (``max_pool2d``,
    ``conv2d_backward``) are compared item by item; float arrays with
    :func:`assert_close` (dtype-appropriate tolerances unless ``rtol``/``atol``
    are given), integer arrays (max-pool indices) exactly.  Shapes and dtypes
    must match too.  Returns ``(actual, expected)``.
    """
    from . import functional, reference

    actual = getattr(functional, op_name)(*args, **kwargs)
    expected = getattr(reference, op_name)(*args, **kwargs)
    if isinstance(expected, tuple):
        assert isinstance(actual, tuple) and len(actual) == len(expected), (
            f"{op_name}: expected a tuple of {len(expected)} results, got {type(actual)}")
        for k, (a, e) in enumerate(zip(actual, expected)):
            assert_close(a, e, rtol, atol, err_msg=f"{op_name} result {k}: ")
    else:
        assert_close(actual, expected, rtol, atol, err_msg=f"{op_name}: ")
    return actual, expected


def numerical_gradient(f, x, eps=1e-6, grad_out=None):
    """Central-difference gradient of ``f`` at ``x``.

    ``f`` takes an array shaped like ``x`` and returns a scalar, or an array
    that is reduced to the scalar ``sum(f(x) * grad_out)`` (``grad_out``
    defaults to all ones), so the result approximates the backward pass for
    that upstream gradient::

        g[k] = (L(x + eps*e_k) - L(x - eps*e_k)) / (2*eps)

    ``x`` is never modified: ``f`` receives float64 copies (make ``f`` compute
    in float64 too, a float32 function cannot resolve ``eps=1e-6``).
    Returns a float64 array of ``x``'s shape.
    """
    x0 = np.array(x, dtype=np.float64)           # a copy
    g_out = None if grad_out is None else np.asarray(grad_out, dtype=np.float64)

    def loss(value):
        out = np.asarray(f(value), dtype=np.float64)
        if g_out is not None:
            return float(np.sum(out * g_out))
        return float(np.sum(out))

    grad = np.zeros_like(x0)
    for k in np.ndindex(x0.shape):
        plus = x0.copy()
        plus[k] += eps
        minus = x0.copy()
        minus[k] -= eps
        grad[k] = (loss(plus) - loss(minus)) / (2.0 * eps)
    return grad


def check_gradient(f, x, analytic, *, grad_out=None, eps=1e-6, rtol=1e-5, atol=1e-6):
    """Assert ``analytic`` equals :func:`numerical_gradient` ``(f, x, eps, grad_out)``.

    Use float64 inputs and points where ``f`` is smooth (away from ReLU's kink,
    max-pool ties).  ``atol`` is scaled by ``max(1, max|numerical|)``.
    Returns the numerical gradient.
    """
    numeric = numerical_gradient(f, x, eps=eps, grad_out=grad_out)
    analytic = np.asarray(analytic, dtype=np.float64)
    assert analytic.shape == numeric.shape, (
        f"gradient shape mismatch: analytic {analytic.shape}, numerical {numeric.shape}")
    scale = max(1.0, float(np.max(np.abs(numeric), initial=0.0)))
    np.testing.assert_allclose(analytic, numeric, rtol=rtol, atol=atol * scale,
                               err_msg="analytic gradient != central differences")
    return numeric
