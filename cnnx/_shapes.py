"""Argument normalisation and output-size formulas.

This module is shared by :mod:`cnnx.functional` (the compiled path) and
:mod:`cnnx.reference` (the pure-Python twin).  It checks every argument, turns
``int``/pair/``'same'``/``'valid'`` options into plain integers, computes the
output sizes and converts arrays to a contiguous float32/float64 copy (or view)
that the kernels can read.  Nothing here computes a convolution or a pooling:
both implementations only share the *arguments*, never the arithmetic.

Output sizes (PyTorch's formulas; the textbook's ``(W - F + 2P)/S + 1`` is the
``dilation=1`` case)::

    conv:  H_out = floor((H + P_top + P_bottom - D*(F-1) - 1) / S) + 1
    pool:  H_out = floor_or_ceil((H + 2P - D*(F-1) - 1) / S) + 1
           and, with ceil_mode, the last window must start inside the input or
           the left padding: if (H_out - 1)*S >= H + P then H_out -= 1
"""

from __future__ import annotations

import functools
import numbers
import operator
from typing import NamedTuple

import numpy as np

__all__ = [
    "ConvSpec",
    "PoolSpec",
    "conv_output_size",
    "pool_output_size",
    "prepare_conv2d",
    "prepare_conv2d_backward",
    "prepare_max_pool2d",
    "prepare_max_pool2d_backward",
    "prepare_avg_pool2d",
    "prepare_avg_pool2d_backward",
    "prepare_relu",
    "prepare_relu_backward",
    "restore_batch",
]

# Largest dimension a 32-bit BLAS integer can hold; the GEMM path checks it.
BLAS_INT_MAX = 2**31 - 1

# Largest stride, padding, dilation, kernel size or divisor accepted.  No array
# dimension can reach 2**56 on a 64-bit machine, so larger values never describe
# a real window; refusing them keeps every index sum the kernels form (a few such
# terms) exact in 64-bit integers instead of wrapping around.
GEOMETRY_MAX = 2**56


# --------------------------------------------------------------------------
# memoised geometry: the same layer calls with the same options every step
# --------------------------------------------------------------------------
# Parsing and checking a call's options costs more than a small kernel does (a 2x2 max
# pooling of a (2, 3, 8, 8) input: 13 of its 37 us), so the spec functions remember their
# last results.  The key holds every argument's type, inside tuples too, so values that
# compare equal but are validated differently (2, 2.0, True; (2, 2) and (2, 2.0)) never
# share an entry; arguments of other types (lists, NumPy scalars) are not remembered.
# Failed calls raise every time (nothing is stored).
SPEC_CACHE_SIZE = 512
_PLAIN_TYPES = frozenset((int, bool, str, type(None)))


def _spec_key(value):
    """(value, its type or its items' types) for a plain value or a flat tuple of them."""
    t = type(value)
    if t is tuple:
        types = tuple(map(type, value))
        return (value, types) if _PLAIN_TYPES.issuperset(types) else None
    return (value, t) if t in _PLAIN_TYPES else None


def _memoised(fn):
    cache = {}

    @functools.wraps(fn)
    def remembered(*args):
        key = tuple(_spec_key(a) for a in args)
        if None in key:
            return fn(*args)
        spec = cache.get(key)
        if spec is None:
            spec = fn(*args)
            if len(cache) >= SPEC_CACHE_SIZE:
                cache.clear()
            cache[key] = spec
        return spec

    remembered.cache = cache
    return remembered


# --------------------------------------------------------------------------
# scalar options
# --------------------------------------------------------------------------
def _as_int(value, name):
    """``value`` as a Python int; bools, floats and strings are rejected."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"{name} must be an int or a pair of ints, got {value!r} "
            f"of type {type(value).__name__}"
        )
    return operator.index(value)


def _geometry_int(value, name):
    """An int for a window option, refused (ValueError) beyond ``GEOMETRY_MAX``."""
    v = _as_int(value, name)
    if abs(v) > GEOMETRY_MAX:
        raise ValueError(
            f"{name} must be at most 2**56 in magnitude (no array dimension is that large), "
            f"got {value!r}"
        )
    return v


def as_pair(value, name):
    """An int or a sequence of one or two ints -> ``(h, w)``."""
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    try:
        items = tuple(value)
    except TypeError:
        v = _geometry_int(value, name)
        return (v, v)
    if len(items) == 1:
        v = _geometry_int(items[0], name)
        return (v, v)
    if len(items) != 2:
        raise ValueError(
            f"{name} must be an int or a pair of ints, got a sequence of length "
            f"{len(items)}: {value!r}"
        )
    return (_geometry_int(items[0], name), _geometry_int(items[1], name))


def _positive_pair(value, name):
    pair = as_pair(value, name)
    if pair[0] <= 0 or pair[1] <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return pair


def _nonnegative_pair(value, name):
    pair = as_pair(value, name)
    if pair[0] < 0 or pair[1] < 0:
        raise ValueError(f"{name} must be non-negative, got {value!r}")
    return pair


def as_bool(value, name):
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral) and value in (0, 1):
        return bool(value)
    raise TypeError(f"{name} must be a bool, got {value!r}")


# --------------------------------------------------------------------------
# output-size formulas
# --------------------------------------------------------------------------
def conv_output_size(size, kernel, stride, pad_before, pad_after, dilation):
    """``floor((size + pad_before + pad_after - dilation*(kernel-1) - 1)/stride) + 1``."""
    return (size + pad_before + pad_after - dilation * (kernel - 1) - 1) // stride + 1


def pool_output_size(size, kernel, stride, pad, dilation, ceil_mode):
    """PyTorch's ``pooling_output_shape`` (floor or ceil, with the ceil_mode rule)."""
    numerator = size + 2 * pad - dilation * (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)
    out = numerator // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        # the last window would start in the right padding: drop it
        out -= 1
    return out


# --------------------------------------------------------------------------
# arrays and dtypes
# --------------------------------------------------------------------------
def _as_numeric_array(a, name):
    if a is None:
        raise TypeError(f"{name} must be an array, got None")
    try:
        arr = np.asarray(a)
    except Exception as exc:  # ragged lists and similar
        raise TypeError(f"{name} could not be converted to a numeric array: {exc}") from None
    if arr.dtype.kind not in "biuf":
        raise TypeError(
            f"{name} must have a real numeric dtype (float, int or bool), "
            f"got dtype {arr.dtype} with shape {arr.shape}"
        )
    return arr


def _dtypes_of(arr):
    """(compute dtype, result dtype) for one array."""
    dt = arr.dtype
    if dt.kind == "f":
        if dt.itemsize == 4:
            return np.dtype(np.float32), np.dtype(np.float32)
        if dt.itemsize == 8:
            return np.dtype(np.float64), np.dtype(np.float64)
        if dt.itemsize < 4:  # float16: computed in float32, returned as float16
            return np.dtype(np.float32), dt.newbyteorder("=")
        # longdouble: computed in float64, returned as longdouble
        return np.dtype(np.float64), dt.newbyteorder("=")
    # ints and bools promote as NumPy does with a Python float
    return np.dtype(np.float64), np.dtype(np.float64)


_DTYPE_CACHE = {}


def _common_dtypes(arrays):
    key = tuple(a.dtype for a in arrays)
    found = _DTYPE_CACHE.get(key)
    if found is None:
        compute = [_dtypes_of(a)[0] for a in arrays]
        result = [_dtypes_of(a)[1] for a in arrays]
        found = (np.result_type(*compute), np.result_type(*result))
        if len(_DTYPE_CACHE) >= SPEC_CACHE_SIZE:
            _DTYPE_CACHE.clear()
        _DTYPE_CACHE[key] = found
    return found


def _contiguous(arr, dtype):
    """C-contiguous, native-endian array of ``dtype`` (a view when already so; 0-d stays 0-d)."""
    return np.asarray(arr, dtype=dtype, order="C")


def restore_batch(arr, batched):
    """Drop the batch axis that was added to an unbatched (C, H, W) input."""
    return arr if batched else arr[0]


def _as_4d(arr, name, what="(N, C, H, W) or (C, H, W)"):
    if arr.ndim == 4:
        return arr, True
    if arr.ndim == 3:
        return arr[np.newaxis], False
    raise ValueError(f"{name} must be 3-D or 4-D {what}, got {arr.ndim}-D shape {arr.shape}")


def _shape_str(shape):
    return "(" + ", ".join(str(int(s)) for s in shape) + ")"


# --------------------------------------------------------------------------
# convolution
# --------------------------------------------------------------------------
class ConvSpec(NamedTuple):
    """Every integer a convolution kernel needs (already validated)."""

    N: int
    C_in: int
    H: int
    W: int
    C_out: int
    KH: int
    KW: int
    stride_h: int
    stride_w: int
    pad_top: int
    pad_left: int
    pad_bottom: int
    pad_right: int
    dilation_h: int
    dilation_w: int
    groups: int
    H_out: int
    W_out: int
    batched: bool

    @property
    def out_shape(self):
        return (self.N, self.C_out, self.H_out, self.W_out)

    @property
    def in_shape(self):
        return (self.N, self.C_in, self.H, self.W)


def _conv_padding(padding, kernel, stride, dilation):
    """-> (top, bottom, left, right) for int/pair/'same'/'valid'."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same":
            if stride != (1, 1):
                raise ValueError(
                    f"padding='same' is not supported for strided convolutions (stride={stride})"
                )
            pads = []
            for k, d in zip(kernel, dilation):
                total = d * (k - 1)
                before = total // 2
                pads.append((before, total - before))  # the extra one goes bottom/right
            return (pads[0][0], pads[0][1], pads[1][0], pads[1][1])
        raise ValueError(f"padding must be an int, a pair, 'same' or 'valid', got {padding!r}")
    ph, pw = _nonnegative_pair(padding, "padding")
    return (ph, ph, pw, pw)


@_memoised
def _conv_spec(x_shape, w_shape, b_shape, stride, padding, dilation, groups, batched):
    N, C_in, H, W = (int(s) for s in x_shape)
    if len(w_shape) != 4:
        raise ValueError(
            f"weight must be 4-D (out_channels, in_channels/groups, kH, kW), "
            f"got shape {_shape_str(w_shape)}"
        )
    C_out, C_in_g, KH, KW = (int(s) for s in w_shape)
    groups = _as_int(groups, "groups")
    if groups <= 0:
        raise ValueError(f"groups must be a positive int, got {groups}")
    stride = _positive_pair(stride, "stride")
    dilation = _positive_pair(dilation, "dilation")
    if C_out <= 0 or C_in_g <= 0 or KH <= 0 or KW <= 0:
        raise ValueError(f"weight must have no zero-size dimension, got shape {_shape_str(w_shape)}")
    if C_in <= 0 or H <= 0 or W <= 0:
        raise ValueError(
            f"x must have non-zero channels, height and width (only the batch may be empty), "
            f"got shape {_shape_str(x_shape)}"
        )
    if C_out % groups != 0:
        raise ValueError(
            f"weight's out_channels ({C_out}) must be divisible by groups ({groups}); "
            f"weight shape {_shape_str(w_shape)}"
        )
    if C_in_g * groups != C_in:
        raise ValueError(
            f"x has {C_in} channels but weight of shape {_shape_str(w_shape)} with groups={groups} "
            f"expects {C_in_g * groups} (in_channels/groups = {C_in_g}); x shape {_shape_str(x_shape)}"
        )
    if b_shape is not None and tuple(b_shape) != (C_out,):
        raise ValueError(
            f"bias must have shape ({C_out},) to match weight {_shape_str(w_shape)}, "
            f"got shape {_shape_str(b_shape)}"
        )
    top, bottom, left, right = _conv_padding(padding, (KH, KW), stride, dilation)
    H_out = conv_output_size(H, KH, stride[0], top, bottom, dilation[0])
    W_out = conv_output_size(W, KW, stride[1], left, right, dilation[1])
    if H_out <= 0 or W_out <= 0:
        raise ValueError(
            f"kernel is larger than the padded input: padded input size per channel "
            f"({H + top + bottom} x {W + left + right}), dilated kernel size "
            f"({dilation[0] * (KH - 1) + 1} x {dilation[1] * (KW - 1) + 1}); "
            f"x shape {_shape_str(x_shape)}, weight shape {_shape_str(w_shape)}"
        )
    return ConvSpec(N, C_in, H, W, C_out, KH, KW, stride[0], stride[1], top, left, bottom, right,
                    dilation[0], dilation[1], groups, H_out, W_out, batched)


def prepare_conv2d(x, weight, bias, stride, padding, dilation, groups):
    """Validate conv2d's arguments.

    Returns ``(x, weight, bias, spec, result_dtype)`` with contiguous arrays of
    one compute dtype (``x`` always 4-D; ``bias`` may be ``None``).
    """
    x = _as_numeric_array(x, "x")
    weight = _as_numeric_array(weight, "weight")
    x, batched = _as_4d(x, "x")
    arrays = [x, weight]
    if bias is not None:
        bias = _as_numeric_array(bias, "bias")
        arrays.append(bias)
    spec = _conv_spec(x.shape, weight.shape, None if bias is None else bias.shape,
                      stride, padding, dilation, groups, batched)
    compute, result = _common_dtypes(arrays)
    x = _contiguous(x, compute)
    weight = _contiguous(weight, compute)
    if bias is not None:
        bias = _contiguous(bias, compute)
    return x, weight, bias, spec, result


def prepare_conv2d_backward(grad_out, x, weight, stride, padding, dilation, groups):
    """Validate conv2d_backward's arguments -> ``(grad_out, x, weight, spec, result_dtype)``."""
    grad_out = _as_numeric_array(grad_out, "grad_out")
    x = _as_numeric_array(x, "x")
    weight = _as_numeric_array(weight, "weight")
    x, batched = _as_4d(x, "x")
    spec = _conv_spec(x.shape, weight.shape, None, stride, padding, dilation, groups, batched)
    expected = spec.out_shape if batched else spec.out_shape[1:]
    if grad_out.shape != expected:
        raise ValueError(
            f"grad_out must have the shape of conv2d's output {_shape_str(expected)} "
            f"for x {_shape_str(x.shape if batched else x.shape[1:])} and weight "
            f"{_shape_str(weight.shape)}, got {_shape_str(grad_out.shape)}"
        )
    compute, result = _common_dtypes([grad_out, x, weight])
    grad_out = _contiguous(grad_out.reshape(spec.out_shape), compute)
    return grad_out, _contiguous(x, compute), _contiguous(weight, compute), spec, result


# --------------------------------------------------------------------------
# pooling
# --------------------------------------------------------------------------
class PoolSpec(NamedTuple):
    """Every integer a pooling kernel needs (already validated)."""

    N: int
    C: int
    H: int
    W: int
    KH: int
    KW: int
    stride_h: int
    stride_w: int
    pad_h: int
    pad_w: int
    dilation_h: int
    dilation_w: int
    ceil_mode: bool
    H_out: int
    W_out: int
    batched: bool

    @property
    def out_shape(self):
        return (self.N, self.C, self.H_out, self.W_out)

    @property
    def in_shape(self):
        return (self.N, self.C, self.H, self.W)


@_memoised
def _pool_spec(in_shape, kernel_size, stride, padding, dilation, ceil_mode, batched,
               name="x"):
    N, C, H, W = (int(s) for s in in_shape)
    kernel = _positive_pair(kernel_size, "kernel_size")
    stride = kernel if stride is None else _positive_pair(stride, "stride")
    pad = _nonnegative_pair(padding, "padding")
    dil = _positive_pair(dilation, "dilation")
    ceil_mode = as_bool(ceil_mode, "ceil_mode")
    if C <= 0 or H <= 0 or W <= 0:
        raise ValueError(
            f"{name} must have non-zero channels, height and width (only the batch may be "
            f"empty), got shape {_shape_str(in_shape if batched else in_shape[1:])}"
        )
    if pad[0] > kernel[0] // 2 or pad[1] > kernel[1] // 2:
        raise ValueError(
            f"padding should be at most half of kernel_size, got padding={pad} "
            f"and kernel_size={kernel}"
        )
    H_out = pool_output_size(H, kernel[0], stride[0], pad[0], dil[0], ceil_mode)
    W_out = pool_output_size(W, kernel[1], stride[1], pad[1], dil[1], ceil_mode)
    if H_out <= 0 or W_out <= 0:
        raise ValueError(
            f"output size is too small: input size ({C}x{H}x{W}), calculated output size "
            f"({C}x{H_out}x{W_out}) for kernel_size={kernel}, stride={stride}, "
            f"padding={pad}, dilation={dil}"
        )
    for axis, size, out in (("height", H, H_out), ("width", W, W_out)):
        i = 0 if axis == "height" else 1
        empty = _first_empty_window(size, out, kernel[i], stride[i], pad[i], dil[i])
        if empty is not None:
            raise ValueError(
                f"pooling window {empty} along the {axis} lies entirely in the padding "
                f"(input {axis} {size}, kernel_size={kernel}, stride={stride}, padding={pad}, "
                f"dilation={dil}); it has no input element to take (PyTorch returns -inf with "
                f"an out-of-range index here, cnnx refuses)"
            )
    return PoolSpec(N, C, H, W, kernel[0], kernel[1], stride[0], stride[1], pad[0], pad[1],
                    dil[0], dil[1], ceil_mode, H_out, W_out, batched)


def _first_empty_window(size, out, kernel, stride, pad, dilation):
    """Index of the first output whose dilated window holds no input element, else None.

    With dilation 1 every window overlaps the input (padding <= kernel/2 and the
    ceil_mode rule guarantee it); a dilated window can straddle the input.
    """
    if dilation == 1:
        return None
    for o in range(out):
        start = o * stride - pad
        if not any(0 <= start + k * dilation < size for k in range(kernel)):
            return o
    return None


def _input_shape(input_shape):
    if (type(input_shape) is tuple and len(input_shape) in (3, 4)
            and all(type(d) is int and d >= 0 for d in input_shape)):   # (the usual x.shape)
        return (input_shape, True) if len(input_shape) == 4 else ((1,) + input_shape, False)
    if isinstance(input_shape, (str, bytes)):
        raise TypeError(f"input_shape must be a tuple of 3 or 4 ints, got {input_shape!r}")
    try:
        dims = tuple(input_shape)
    except TypeError:
        raise TypeError(f"input_shape must be a tuple of 3 or 4 ints, got {input_shape!r}") from None
    if len(dims) not in (3, 4):
        raise ValueError(f"input_shape must have 3 or 4 entries (N, C, H, W), got {input_shape!r}")
    dims = tuple(_as_int(d, "input_shape") for d in dims)
    if any(d < 0 for d in dims):
        raise ValueError(f"input_shape must not be negative, got {input_shape!r}")
    if len(dims) == 4:
        return dims, True
    return (1,) + dims, False


def _check_grad_shape(grad_out, spec, what):
    expected = spec.out_shape if spec.batched else spec.out_shape[1:]
    if grad_out.shape != expected:
        given_in = spec.in_shape if spec.batched else spec.in_shape[1:]
        raise ValueError(
            f"grad_out must have the shape of {what}'s output {_shape_str(expected)} for input "
            f"shape {_shape_str(given_in)}, got {_shape_str(grad_out.shape)}"
        )


def prepare_max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode):
    """-> ``(x, spec, result_dtype)``, ``x`` contiguous 4-D."""
    x = _as_numeric_array(x, "x")
    x, batched = _as_4d(x, "x")
    spec = _pool_spec(x.shape, kernel_size, stride, padding, dilation, ceil_mode, batched)
    compute, result = _common_dtypes([x])
    return _contiguous(x, compute), spec, result


def index_error(bad, input_shape):
    """The IndexError for an index ``bad`` outside the (H, W) plane of ``input_shape``."""
    H, W = tuple(input_shape)[-2:]
    found = "" if bad is None else f"found {bad}, but "
    return IndexError(
        f"indices out of range: {found}every index must lie in [0, {H * W}) "
        f"for input_shape {tuple(input_shape)!r} (flat h*W + w within each plane)"
    )


def prepare_max_pool2d_backward(grad_out, indices, input_shape, check_indices=True):
    """-> ``(grad_out, indices, (N, C, H, W), batched, result_dtype)``.

    ``indices`` must be an integer array of grad_out's shape whose entries are
    flat ``h*W + w`` positions inside the (H, W) plane; anything else raises.
    ``check_indices=False`` leaves the range check to the caller (the compiled
    kernel checks every index as it reads it).
    """
    grad_out = _as_numeric_array(grad_out, "grad_out")
    if indices is None:
        raise TypeError("indices must be an integer array, got None")
    indices = np.asarray(indices)
    if indices.dtype.kind not in "iu":
        raise TypeError(
            f"indices must be an integer array (as returned by max_pool2d), got dtype "
            f"{indices.dtype} with shape {indices.shape}"
        )
    shape, batched = _input_shape(input_shape)
    N, C, H, W = shape
    if C <= 0 or H <= 0 or W <= 0:
        raise ValueError(f"input_shape must have non-zero C, H and W, got {input_shape!r}")
    want_ndim = 4 if batched else 3
    if grad_out.ndim != want_ndim:
        raise ValueError(
            f"grad_out must be {want_ndim}-D to match input_shape {tuple(input_shape)!r}, got "
            f"shape {_shape_str(grad_out.shape)}"
        )
    if indices.shape != grad_out.shape:
        raise ValueError(
            f"indices must have grad_out's shape {_shape_str(grad_out.shape)}, "
            f"got {_shape_str(indices.shape)}"
        )
    g4 = grad_out if batched else grad_out[np.newaxis]
    if g4.shape[:2] != (N, C):
        raise ValueError(
            f"grad_out's batch and channel sizes {_shape_str(grad_out.shape)} do not match "
            f"input_shape {tuple(input_shape)!r}"
        )
    if check_indices:
        bad = first_bad_index(indices, H * W)
        if bad is not None:
            raise index_error(bad, input_shape)
    compute, result = _common_dtypes([grad_out])
    g4 = _contiguous(g4, compute)
    idx4 = _contiguous(indices if batched else indices[np.newaxis], np.int64)
    return g4, idx4, shape, batched, result


def first_bad_index(indices, plane_size):
    """An entry of ``indices`` outside ``[0, plane_size)`` (the lowest negative or the
    largest too-large one), or None."""
    if indices.size:
        lo, hi = int(indices.min()), int(indices.max())
        if lo < 0:
            return lo
        if hi >= plane_size:
            return hi
    return None


def _divisor(divisor_override):
    if divisor_override is None:
        return 0
    d = _geometry_int(divisor_override, "divisor_override")
    if d == 0:
        raise ValueError("divisor_override must not be zero")
    return d


def prepare_avg_pool2d(x, kernel_size, stride, padding, ceil_mode, count_include_pad,
                       divisor_override):
    """-> ``(x, spec, count_include_pad, divisor, result_dtype)``; divisor 0 = none."""
    x = _as_numeric_array(x, "x")
    x, batched = _as_4d(x, "x")
    spec = _pool_spec(x.shape, kernel_size, stride, padding, 1, ceil_mode, batched)
    count_include_pad = as_bool(count_include_pad, "count_include_pad")
    divisor = _divisor(divisor_override)
    compute, result = _common_dtypes([x])
    return _contiguous(x, compute), spec, count_include_pad, divisor, result


def prepare_avg_pool2d_backward(grad_out, input_shape, kernel_size, stride, padding, ceil_mode,
                                count_include_pad, divisor_override):
    """-> ``(grad_out, spec, count_include_pad, divisor, result_dtype)``."""
    grad_out = _as_numeric_array(grad_out, "grad_out")
    shape, batched = _input_shape(input_shape)
    spec = _pool_spec(shape, kernel_size, stride, padding, 1, ceil_mode, batched, "input_shape")
    count_include_pad = as_bool(count_include_pad, "count_include_pad")
    divisor = _divisor(divisor_override)
    _check_grad_shape(grad_out, spec, "avg_pool2d")
    compute, result = _common_dtypes([grad_out])
    g4 = _contiguous(grad_out.reshape(spec.out_shape), compute)
    return g4, spec, count_include_pad, divisor, result


# --------------------------------------------------------------------------
# relu
# --------------------------------------------------------------------------
def prepare_relu(x):
    """-> ``(x, result_dtype)`` with ``x`` contiguous (any shape)."""
    x = _as_numeric_array(x, "x")
    compute, result = _common_dtypes([x])
    return _contiguous(x, compute), result


def prepare_relu_backward(grad_out, x):
    """-> ``(grad_out, x, result_dtype)``: same shape, one compute dtype."""
    grad_out = _as_numeric_array(grad_out, "grad_out")
    x = _as_numeric_array(x, "x")
    if grad_out.shape != x.shape:
        raise ValueError(
            f"grad_out must have x's shape {_shape_str(x.shape)}, got {_shape_str(grad_out.shape)}"
        )
    compute, result = _common_dtypes([grad_out, x])
    return _contiguous(grad_out, compute), _contiguous(x, compute), result
