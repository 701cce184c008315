"""Pure-Python twins of every op in :mod:`cnnx.functional`.

Each function has the same signature, the same argument checking (everything
goes through :mod:`cnnx._shapes`, so the error messages are identical) and the
same PyTorch semantics as its compiled counterpart, but computes the result
with plain nested ``for`` loops over Python floats, written the way the
textbook states the formula.  It is slow on purpose and meant to be *read*:
the tests use it as the oracle for the compiled kernels.

Notation (as in the textbook): ``x`` is the input feature map, ``a`` the output
feature map, ``d`` the depth (channel), ``i, j`` an output row/column, ``m, n``
a row/column inside the filter, ``F`` the filter size, ``S`` the stride and
``P`` the zero padding.  In the code these are spelt like the fields of the
``ConvSpec``/``PoolSpec`` from :mod:`cnnx._shapes`: ``KH, KW`` (F),
``stride_h, stride_w`` (S), ``pad_top, pad_left, ...`` (P), ``dilation_h,
dilation_w``, ``H_out, W_out``.

All sums are accumulated in float64 (Python floats); each result is converted
to the ``result_dtype`` chosen by :mod:`cnnx._shapes` at the very end.
"""

from __future__ import annotations

import math

import numpy as np

from ._shapes import (
    prepare_avg_pool2d,
    prepare_avg_pool2d_backward,
    prepare_conv2d,
    prepare_conv2d_backward,
    prepare_max_pool2d,
    prepare_max_pool2d_backward,
    prepare_relu,
    prepare_relu_backward,
    restore_batch,
)

__all__ = [
    "avg_pool2d",
    "avg_pool2d_backward",
    "conv2d",
    "conv2d_backward",
    "max_pool2d",
    "max_pool2d_backward",
    "relu",
    "relu_backward",
]

def _zeros(*shape):
    """Nested Python lists of 0.0 with the given shape."""
    if len(shape) == 1:
        return [0.0] * shape[0]
    return [_zeros(*shape[1:]) for _ in range(shape[0])]


def _to_array(nested, shape, dtype):
    """Nested lists -> ndarray of ``shape`` (also right for an empty batch) and ``dtype``."""
    return np.array(nested, dtype=np.float64).reshape(shape).astype(dtype, copy=False)


# --------------------------------------------------------------------------
# convolution
# --------------------------------------------------------------------------
def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, algorithm="auto"):
    """2-D convolution (cross-correlation, as in PyTorch), by the textbook formula.

    For output channel ``o`` (the ``o``-th filter) in group ``g``::

        a[n, o, i, j] = b[o] + sum_{d in group g} sum_{m < KH} sum_{k < KW}
                        w[o, d, m, k] * x_pad[n, d, i*S_h + m*D_h, j*S_w + k*D_w]

    where ``x_pad`` is ``x`` with ``pad_top``/``pad_bottom`` rows and
    ``pad_left``/``pad_right`` columns of zeros (``'same'`` puts the odd extra
    one at the bottom/right) and ``D`` is the dilation.  Output size (the
    textbook's ``W2 = (W1 - F + 2P)/S + 1`` generalised)::

        H_out = floor((H + pad_top + pad_bottom - D_h*(KH - 1) - 1) / S_h) + 1

    ``algorithm`` is accepted and ignored (there is only one way here).
    """
    del algorithm  # accepted so the reference is a drop-in for functional; one way here
    x, weight, bias, spec, result_dtype = prepare_conv2d(
        x, weight, bias, stride, padding, dilation, groups)
    N, C_in, H, W = spec.in_shape
    C_out, KH, KW = spec.C_out, spec.KH, spec.KW
    H_out, W_out = spec.H_out, spec.W_out
    C_in_per_group = C_in // spec.groups
    C_out_per_group = C_out // spec.groups

    x = x.tolist()
    w = weight.tolist()
    b = [0.0] * C_out if bias is None else bias.tolist()

    a = _zeros(N, C_out, H_out, W_out)
    for n in range(N):
        for o in range(C_out):
            g = o // C_out_per_group                 # the group filter o belongs to
            for i in range(H_out):
                for j in range(W_out):
                    total = b[o]
                    for d_g in range(C_in_per_group):
                        d = g * C_in_per_group + d_g  # input channel
                        for m in range(KH):
                            h = i * spec.stride_h - spec.pad_top + m * spec.dilation_h
                            if h < 0 or h >= H:
                                continue             # a zero of the padding
                            for k in range(KW):
                                c = j * spec.stride_w - spec.pad_left + k * spec.dilation_w
                                if c < 0 or c >= W:
                                    continue
                                total += w[o][d_g][m][k] * x[n][d][h][c]
                    a[n][o][i][j] = total
    y = _to_array(a, spec.out_shape, result_dtype)
    return restore_batch(y, spec.batched)


def conv2d_backward(grad_out, x, weight, stride=1, padding=0, dilation=1, groups=1, *,
                    algorithm="auto"):
    """Gradients of :func:`conv2d` -> ``(grad_x, grad_weight, grad_bias)``.

    With ``delta[n, o, i, j] = dL/da[n, o, i, j]`` (``grad_out``), every term
    ``w[o, d, m, k] * x_pad[n, d, h, c]`` of the forward sum (``h = i*S_h -
    pad_top + m*D_h``, ``c = j*S_w - pad_left + k*D_w``) sends back::

        grad_x[n, d, h, c]      += delta[n, o, i, j] * w[o, d, m, k]   (h, c inside x)
        grad_weight[o, d, m, k] += delta[n, o, i, j] * x[n, d, h, c]
        grad_bias[o]            += delta[n, o, i, j]

    i.e. the sensitivity map is spread back over each window (a "full"
    convolution with the flipped filter), terms falling in the padding are
    dropped, and ``grad_bias`` is ``delta`` summed over ``n, i, j``.
    """
    del algorithm  # accepted so the reference is a drop-in for functional; one way here
    grad_out, x, weight, spec, result_dtype = prepare_conv2d_backward(
        grad_out, x, weight, stride, padding, dilation, groups)
    N, C_in, H, W = spec.in_shape
    C_out, KH, KW = spec.C_out, spec.KH, spec.KW
    H_out, W_out = spec.H_out, spec.W_out
    C_in_per_group = C_in // spec.groups
    C_out_per_group = C_out // spec.groups

    delta = grad_out.tolist()
    x = x.tolist()
    w = weight.tolist()

    grad_x = _zeros(N, C_in, H, W)
    grad_w = _zeros(C_out, C_in_per_group, KH, KW)
    grad_b = _zeros(C_out)
    for n in range(N):
        for o in range(C_out):
            g = o // C_out_per_group
            for i in range(H_out):
                for j in range(W_out):
                    dy = delta[n][o][i][j]
                    grad_b[o] += dy
                    for d_g in range(C_in_per_group):
                        d = g * C_in_per_group + d_g
                        for m in range(KH):
                            h = i * spec.stride_h - spec.pad_top + m * spec.dilation_h
                            if h < 0 or h >= H:
                                continue
                            for k in range(KW):
                                c = j * spec.stride_w - spec.pad_left + k * spec.dilation_w
                                if c < 0 or c >= W:
                                    continue
                                grad_x[n][d][h][c] += dy * w[o][d_g][m][k]
                                grad_w[o][d_g][m][k] += dy * x[n][d][h][c]
    grad_x = restore_batch(_to_array(grad_x, spec.in_shape, result_dtype), spec.batched)
    grad_w = _to_array(grad_w, (C_out, C_in_per_group, KH, KW), result_dtype)
    grad_b = _to_array(grad_b, (C_out,), result_dtype)
    return grad_x, grad_w, grad_b


# --------------------------------------------------------------------------
# max pooling
# --------------------------------------------------------------------------
def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """Max pooling -> ``(a, indices)``, by the textbook formula.

    Per channel ``d`` (the textbook's depth; here every ``(n, c)`` plane)::

        a[d, i, j] = max x[d, i*S : i*S+F, j*S : j*S+F]

    generalised to padding ``P`` (acts as ``-inf``: it is never picked),
    dilation ``D`` (the window takes every ``D``-th element) and ceil_mode.
    ``indices[d, i, j]`` is the flat position ``h*W + w`` of the maximum inside
    the ``(H, W)`` plane, as PyTorch's ``return_indices``.  Output size is
    ``(W - F + 2P)/S + 1`` (rounded down, or up with ``ceil_mode``; see
    :func:`cnnx._shapes.pool_output_size`).

    Ties and NaN exactly as PyTorch: the window is scanned row by row, the
    running maximum starts at ``-inf`` with the index of the window's first
    in-bounds element, and is replaced when ``val > maxval or isnan(val)``
    (the first of equal maxima wins, the last NaN wins, NaN propagates).
    """
    x, spec, result_dtype = prepare_max_pool2d(x, kernel_size, stride, padding, dilation,
                                               ceil_mode)
    N, C, H, W = spec.in_shape
    H_out, W_out = spec.H_out, spec.W_out
    x = x.tolist()

    a = _zeros(N, C, H_out, W_out)
    indices = _zeros(N, C, H_out, W_out)
    for n in range(N):
        for d in range(C):
            plane = x[n][d]
            for i in range(H_out):
                for j in range(W_out):
                    # window rows h_start, h_start + D_h, ... below h_end (clipped to x)
                    h_start = i * spec.stride_h - spec.pad_h
                    w_start = j * spec.stride_w - spec.pad_w
                    h_end = min(h_start + (spec.KH - 1) * spec.dilation_h + 1, H)
                    w_end = min(w_start + (spec.KW - 1) * spec.dilation_w + 1, W)
                    while h_start < 0:               # skip the padding rows
                        h_start += spec.dilation_h
                    while w_start < 0:
                        w_start += spec.dilation_w
                    max_val = -math.inf
                    max_idx = h_start * W + w_start  # the first in-bounds element
                    for h in range(h_start, h_end, spec.dilation_h):
                        for c in range(w_start, w_end, spec.dilation_w):
                            val = plane[h][c]
                            if val > max_val or math.isnan(val):
                                max_val = val
                                max_idx = h * W + c
                    a[n][d][i][j] = max_val
                    indices[n][d][i][j] = max_idx
    y = _to_array(a, spec.out_shape, result_dtype)
    idx = np.array(indices, dtype=np.int64).reshape(spec.out_shape)
    return restore_batch(y, spec.batched), restore_batch(idx, spec.batched)


def max_pool2d_backward(grad_out, indices, input_shape):
    """Gradient of :func:`max_pool2d`: only the arg-max receives the gradient.

    ``dL/dx[d, h, w] = sum of delta[d, i, j] over the windows (i, j) whose
    maximum was x[d, h, w]`` (``indices[d, i, j] == h*W + w``); every other
    element of the window gets 0.  Overlapping windows that picked the same
    element add up.
    """
    grad_out, indices, input_shape, batched, result_dtype = prepare_max_pool2d_backward(
        grad_out, indices, input_shape)
    N, C, H, W = input_shape
    _, _, H_out, W_out = grad_out.shape
    delta = grad_out.tolist()
    indices = indices.tolist()

    grad_x = _zeros(N, C, H, W)
    for n in range(N):
        for d in range(C):
            for i in range(H_out):
                for j in range(W_out):
                    h, c = divmod(indices[n][d][i][j], W)
                    grad_x[n][d][h][c] += delta[n][d][i][j]
    return restore_batch(_to_array(grad_x, (N, C, H, W), result_dtype), batched)


# --------------------------------------------------------------------------
# average pooling
# --------------------------------------------------------------------------
def _avg_window(i, j, spec, count_include_pad, divisor):
    """Window of output ``(i, j)`` clipped to the input, and its divisor (PyTorch CPU rule).

    The window first spans ``[i*S - P, i*S - P + F)`` cut at ``H + P`` (so in
    ceil_mode it does not run past the right padding); ``pool_size`` counts
    that area including padding.  Then it is clipped to the input ``[0, H)``.
    """
    H, W = spec.H, spec.W
    h_start = i * spec.stride_h - spec.pad_h
    w_start = j * spec.stride_w - spec.pad_w
    h_end = min(h_start + spec.KH, H + spec.pad_h)
    w_end = min(w_start + spec.KW, W + spec.pad_w)
    pool_size = (h_end - h_start) * (w_end - w_start)
    h_start, w_start = max(h_start, 0), max(w_start, 0)
    h_end, w_end = min(h_end, H), min(w_end, W)
    if divisor:                      # divisor_override
        divide_by = divisor
    elif count_include_pad:
        divide_by = pool_size
    else:
        divide_by = (h_end - h_start) * (w_end - w_start)
    return h_start, h_end, w_start, w_end, divide_by


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    """Average pooling, by the textbook formula::

        a[d, i, j] = sum x[d, i*S : i*S+F, j*S : j*S+F] / (F*F)

    generalised as PyTorch (CPU) does it: padding ``P`` contributes zeros; the
    divisor is ``divisor_override`` if given, else the window's size including
    padding (``count_include_pad=True``; a ceil_mode window is first cut at
    ``H + P``) or the number of input elements it covers.  Output size
    ``(W - F + 2P)/S + 1`` (floor, or ceil with ``ceil_mode``).
    """
    x, spec, count_include_pad, divisor, result_dtype = prepare_avg_pool2d(
        x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
    N, C, H, W = spec.in_shape
    x = x.tolist()

    a = _zeros(N, C, spec.H_out, spec.W_out)
    for n in range(N):
        for d in range(C):
            for i in range(spec.H_out):
                for j in range(spec.W_out):
                    h_start, h_end, w_start, w_end, divide_by = _avg_window(
                        i, j, spec, count_include_pad, divisor)
                    if h_start >= h_end or w_start >= w_end:
                        continue             # window entirely in the padding: 0
                    total = 0.0
                    for h in range(h_start, h_end):
                        for c in range(w_start, w_end):
                            total += x[n][d][h][c]
                    a[n][d][i][j] = total / divide_by
    return restore_batch(_to_array(a, spec.out_shape, result_dtype), spec.batched)


def avg_pool2d_backward(grad_out, input_shape, kernel_size, stride=None, padding=0,
                        ceil_mode=False, count_include_pad=True, divisor_override=None):
    """Gradient of :func:`avg_pool2d`: each ``delta[d, i, j]`` is split evenly.

    Every input element of window ``(i, j)`` (clipped to the input) receives
    ``delta[d, i, j] / divisor``, with the same divisor as the forward pass,
    so with the textbook's ``F*F`` divisor the gradient sum is preserved.
    """
    grad_out, spec, count_include_pad, divisor, result_dtype = prepare_avg_pool2d_backward(
        grad_out, input_shape, kernel_size, stride, padding, ceil_mode, count_include_pad,
        divisor_override)
    N, C, H, W = spec.in_shape
    delta = grad_out.tolist()

    grad_x = _zeros(N, C, H, W)
    for n in range(N):
        for d in range(C):
            for i in range(spec.H_out):
                for j in range(spec.W_out):
                    h_start, h_end, w_start, w_end, divide_by = _avg_window(
                        i, j, spec, count_include_pad, divisor)
                    share = delta[n][d][i][j] / divide_by
                    for h in range(h_start, h_end):
                        for c in range(w_start, w_end):
                            grad_x[n][d][h][c] += share
    return restore_batch(_to_array(grad_x, spec.in_shape, result_dtype), spec.batched)


# --------------------------------------------------------------------------
# relu
# --------------------------------------------------------------------------
def relu(x):
    """``f(x) = max(0, x)`` elementwise, any shape; NaN stays NaN (as PyTorch)."""
    x, result_dtype = prepare_relu(x)
    shape = x.shape
    values = x.ravel().tolist()
    out = [v if (v > 0 or math.isnan(v)) else 0.0 for v in values]
    return _to_array(out, shape, result_dtype)


def relu_backward(grad_out, x):
    """``dL/dx = delta if x > 0 else 0`` (0 at ``x == 0``, as PyTorch; NaN ``x`` passes ``delta``)."""
    grad_out, x, result_dtype = prepare_relu_backward(grad_out, x)
    shape = x.shape
    delta = grad_out.ravel().tolist()
    values = x.ravel().tolist()
    out = [0.0 if v <= 0 else g for g, v in zip(delta, values)]
    return _to_array(out, shape, result_dtype)
