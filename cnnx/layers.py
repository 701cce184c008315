"""A small layer API on top of :mod:`cnnx.functional`.

Every layer has the same interface::

    y  = layer.forward(x)          # also layer(x); caches what backward needs
    gx = layer.backward(grad_out)  # returns d(loss)/d(x); fills layer.grads
    layer.params                   # name -> ndarray ({"weight": W, "bias": b})
    layer.grads                    # same keys, filled by backward

``params`` holds the arrays the layer computes with: editing them in place
(``layer.params["weight"][...] = 0``) or assigning a new array of the same shape
(``layer.params["weight"] = W``) takes effect at the next ``forward``.
:class:`Sequential` exposes its children's parameters under the keys
``"<index>.<name>"`` (``"0.weight"``, ``"3.bias"``, ...), as PyTorch does.

Weights use PyTorch's default initialisation: ``kaiming_uniform_(a=sqrt(5))``,
i.e. ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, and the same bound for the bias.
``rng`` is an int seed, a :class:`numpy.random.Generator` or ``None``.

Layers with parameters compute in their ``dtype`` (float32 by default, or
float64): inputs of another real dtype are converted to it, so a float32
model stays float32 end to end. Parameter-free layers keep the input's dtype.

Convolution, pooling and ReLU go through :mod:`cnnx.functional` (the compiled
kernels); :class:`Linear` is a dense layer and uses NumPy's matrix product.
Models are saved with :meth:`Module.save` to a ``.npz`` file holding the
weights and the architecture, so :func:`load_model` can rebuild them.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import MutableMapping

import numpy as np

from . import functional as F
from ._shapes import as_bool, as_pair

__all__ = [
    "AvgPool2d",
    "Conv2d",
    "Dropout",
    "Flatten",
    "Linear",
    "MaxPool2d",
    "Module",
    "Normalize",
    "ReLU",
    "Sequential",
    "from_config",
    "load_model",
]

_CONFIG_KEY = "__cnnx_config__"
_METADATA_KEY = "__cnnx_metadata__"


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------
def _as_rng(rng):
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or (isinstance(rng, numbers.Integral) and not isinstance(rng, bool)):
        return np.random.default_rng(rng)
    raise TypeError(f"rng must be None, an int seed or a numpy.random.Generator, got {rng!r}")


def _as_float_dtype(dtype):
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return dt


def _positive_int(value, name):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive int, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return int(value)


def _as_real_array(x, name, dtype=None):
    """``x`` as an ndarray of a real dtype; converted to ``dtype`` when given."""
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must have a real numeric dtype, got dtype {arr.dtype}")
    if dtype is not None and arr.dtype != dtype:
        arr = arr.astype(dtype)
    elif dtype is None and arr.dtype.kind != "f":
        arr = arr.astype(np.float64)
    return arr


def _uniform(rng, bound, shape, dtype):
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


def _fmt_pair(p):
    return f"({p[0]}, {p[1]})"


class _ParamDict(MutableMapping):
    """The ``params``/``grads`` of a layer: a dict whose keys are fixed.

    Assigning an array to an existing key checks its shape and converts it to
    the layer's dtype; unknown keys are rejected so a typo cannot silently
    create a parameter the layer never reads.
    """

    def __init__(self, owner, kind, data):
        self._owner = owner
        self._kind = kind
        self._data = data

    def __getitem__(self, key):
        return self._data[key]

    def __setitem__(self, key, value):
        owner = self._owner
        if key not in owner._param_shapes:
            raise KeyError(
                f"{type(owner).__name__} has no parameter {key!r}; "
                f"its parameters are {sorted(owner._param_shapes)}")
        arr = np.asarray(value)
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"{self._kind}[{key!r}] must be a real array, got dtype {arr.dtype}")
        shape = owner._param_shapes[key]
        if arr.shape != shape:
            raise ValueError(
                f"{self._kind}[{key!r}] of {type(owner).__name__} must have shape {shape}, "
                f"got {arr.shape}")
        if arr.dtype != owner.dtype:
            arr = arr.astype(owner.dtype)
        self._data[key] = arr

    def __delitem__(self, key):
        if self._kind == "params":
            raise TypeError("parameters cannot be deleted")
        del self._data[key]

    def __iter__(self):
        return iter(self._data)

    def __len__(self):
        return len(self._data)

    def __repr__(self):
        return repr({k: v.shape for k, v in self._data.items()})


class _SequentialDict(MutableMapping):
    """``Sequential.params``/``grads``: a live view of the children's dicts."""

    def __init__(self, seq, kind):
        self._seq = seq
        self._kind = kind

    def _split(self, key):
        if not isinstance(key, str) or "." not in key:
            raise KeyError(key)
        idx, _, name = key.partition(".")
        if not idx.isdigit() or int(idx) >= len(self._seq._layers):
            raise KeyError(key)
        return getattr(self._seq._layers[int(idx)], self._kind), name

    def __getitem__(self, key):
        d, name = self._split(key)
        return d[name]

    def __setitem__(self, key, value):
        try:
            d, name = self._split(key)
        except KeyError:
            raise KeyError(f"Sequential has no parameter {key!r}; its parameters are "
                           f"{list(self._seq.params)}") from None
        d[name] = value

    def __delitem__(self, key):
        d, name = self._split(key)
        del d[name]

    def __iter__(self):
        for i, layer in enumerate(self._seq._layers):
            for name in getattr(layer, self._kind):
                yield f"{i}.{name}"

    def __len__(self):
        return sum(len(getattr(layer, self._kind)) for layer in self._seq._layers)

    def __repr__(self):
        return repr({k: self[k].shape for k in self})


# --------------------------------------------------------------------------
# base class
# --------------------------------------------------------------------------
class Module:
    """Base class: ``forward``/``backward``, ``params``/``grads``, modes, saving."""

    dtype = None  # parameter-free layers keep the input's dtype

    def __init__(self):
        self._param_shapes = {}
        self.params = _ParamDict(self, "params", {})
        self.grads = _ParamDict(self, "grads", {})
        self.training = True
        self._cache = None

    # ---- computing -------------------------------------------------------
    def __call__(self, x):
        return self.forward(x)

    def forward(self, x):  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(self, grad_out):  # pragma: no cover - abstract
        raise NotImplementedError

    def _cached(self):
        if self._cache is None:
            raise RuntimeError(
                f"{type(self).__name__}.backward() called before forward(): run a forward pass "
                "first, backward uses the values it caches")
        return self._cache

    def _check_grad_out(self, grad_out, out_shape, dtype):
        g = _as_real_array(grad_out, "grad_out", dtype)
        if g.shape != tuple(out_shape):
            raise ValueError(
                f"{type(self).__name__}.backward: grad_out must have the shape of the last "
                f"forward output {tuple(out_shape)}, got {g.shape}")
        return g

    # ---- modes -----------------------------------------------------------
    def train(self, mode=True):
        """Set training mode (``mode=True``) or evaluation mode; returns self."""
        self.training = bool(mode)
        for child in self.children():
            child.train(mode)
        return self

    def eval(self):
        """Evaluation mode (same as ``train(False)``); returns self."""
        return self.train(False)

    def children(self):
        return []

    def zero_grad(self):
        """Set every gradient in ``grads`` to zero."""
        for g in self.grads.values():
            g[...] = 0

    def num_parameters(self):
        """Total number of scalar parameters."""
        return int(sum(p.size for p in self.params.values()))

    # ---- state -----------------------------------------------------------
    def state_dict(self):
        """A dict ``name -> copy of the parameter array``."""
        return {k: np.array(v, copy=True) for k, v in self.params.items()}

    def load_state_dict(self, state_dict, strict=True):
        """Copy the arrays of ``state_dict`` into ``params`` (in place).

        Keys and shapes must match; with ``strict=False`` missing and unexpected
        keys are ignored (shapes are still checked). Values are converted to
        the model's dtype.
        """
        own = list(self.params.keys())
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in self.params]
        if strict and (missing or unexpected):
            parts = []
            if missing:
                parts.append(f"missing keys {missing}")
            if unexpected:
                parts.append(f"unexpected keys {unexpected}")
            raise KeyError(f"load_state_dict for {type(self).__name__}: " + " and ".join(parts))
        for key in own:
            if key not in state_dict:
                continue
            value = np.asarray(state_dict[key])
            target = self.params[key]
            if value.shape != target.shape:
                raise ValueError(
                    f"load_state_dict for {type(self).__name__}: parameter {key!r} has shape "
                    f"{target.shape} in the model but {value.shape} in the state dict")
            if value.dtype.kind not in "biuf":
                raise TypeError(f"load_state_dict: {key!r} has non-numeric dtype {value.dtype}")
            np.copyto(target, value, casting="unsafe")
        return self

    def config(self):
        """A JSON-able description of the architecture (see :func:`from_config`)."""
        return {"type": type(self).__name__, "args": self._args()}

    def _args(self):
        return {}

    def save(self, path, metadata=None):
        """Save the weights and the architecture to a ``.npz`` file.

        ``metadata`` is an optional JSON-able dict stored alongside (see
        :func:`load_model`). NumPy appends ``.npz`` when ``path`` lacks it.
        """
        arrays = self.state_dict()
        for key in arrays:
            if key.startswith("__"):
                raise ValueError(f"parameter names may not start with '__': {key!r}")
        arrays[_CONFIG_KEY] = np.array(json.dumps(self.config()))
        arrays[_METADATA_KEY] = np.array(json.dumps(metadata if metadata is not None else {}))
        np.savez(path, **arrays)

    def load(self, path, strict=True):
        """Load weights saved by :meth:`save` into this model (in place); returns self."""
        state, _config, _meta = _read_npz(path)
        return self.load_state_dict(state, strict=strict)

    # ---- display ---------------------------------------------------------
    def extra_repr(self):
        return ""

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"


# --------------------------------------------------------------------------
# layers with parameters
# --------------------------------------------------------------------------
class Conv2d(Module):
    """2-D convolution, ``torch.nn.Conv2d`` semantics (NCHW).

    ``weight`` has shape ``(out_channels, in_channels // groups, kH, kW)``,
    ``bias`` ``(out_channels,)``. ``padding`` is an int, a pair, ``'same'`` or
    ``'valid'``. Forward and backward are :func:`cnnx.functional.conv2d` and
    :func:`cnnx.functional.conv2d_backward`.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, *, dtype=np.float32, rng=None, algorithm="auto"):
        super().__init__()
        self.in_channels = _positive_int(in_channels, "in_channels")
        self.out_channels = _positive_int(out_channels, "out_channels")
        self.groups = _positive_int(groups, "groups")
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(
                f"in_channels ({in_channels}) and out_channels ({out_channels}) must both be "
                f"divisible by groups ({groups})")
        self.kernel_size = as_pair(kernel_size, "kernel_size")
        if min(self.kernel_size) <= 0:
            raise ValueError(f"kernel_size must be positive, got {kernel_size!r}")
        self.stride = as_pair(stride, "stride")
        if min(self.stride) <= 0:
            raise ValueError(f"stride must be positive, got {stride!r}")
        self.dilation = as_pair(dilation, "dilation")
        if min(self.dilation) <= 0:
            raise ValueError(f"dilation must be positive, got {dilation!r}")
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"padding must be an int, a pair, 'same' or 'valid', "
                                 f"got {padding!r}")
            if padding == "same" and self.stride != (1, 1):
                raise ValueError("padding='same' is not supported for strided convolutions")
            self.padding = padding
        else:
            self.padding = as_pair(padding, "padding")
            if min(self.padding) < 0:
                raise ValueError(f"padding must be non-negative, got {padding!r}")
        self.algorithm = algorithm
        self.dtype = _as_float_dtype(dtype)
        rng = _as_rng(rng)

        kh, kw = self.kernel_size
        w_shape = (self.out_channels, self.in_channels // self.groups, kh, kw)
        fan_in = w_shape[1] * kh * kw
        bound = 1.0 / math.sqrt(fan_in)
        self._param_shapes["weight"] = w_shape
        self.params["weight"] = _uniform(rng, bound, w_shape, self.dtype)
        if bias:
            self._param_shapes["bias"] = (self.out_channels,)
            self.params["bias"] = _uniform(rng, bound, (self.out_channels,), self.dtype)

    @property
    def has_bias(self):
        return "bias" in self.params

    def _conv_kwargs(self):
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation,
                    groups=self.groups, algorithm=self.algorithm)

    def forward(self, x):
        x = _as_real_array(x, "x", self.dtype)
        y = F.conv2d(x, self.params["weight"], self.params.get("bias"), **self._conv_kwargs())
        self._cache = (x, y.shape)
        return y

    def backward(self, grad_out):
        x, out_shape = self._cached()
        g = self._check_grad_out(grad_out, out_shape, self.dtype)
        gx, gw, gb = F.conv2d_backward(g, x, self.params["weight"], **self._conv_kwargs())
        self.grads["weight"] = gw
        if self.has_bias:
            self.grads["bias"] = gb
        return gx

    def _args(self):
        return dict(in_channels=self.in_channels, out_channels=self.out_channels,
                    kernel_size=list(self.kernel_size), stride=list(self.stride),
                    padding=self.padding if isinstance(self.padding, str) else list(self.padding),
                    dilation=list(self.dilation), groups=self.groups, bias=self.has_bias,
                    dtype=self.dtype.name)

    def extra_repr(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={_fmt_pair(self.kernel_size)}"
             f", stride={_fmt_pair(self.stride)}")
        if isinstance(self.padding, str):
            s += f", padding={self.padding!r}"
        elif self.padding != (0, 0):
            s += f", padding={_fmt_pair(self.padding)}"
        if self.dilation != (1, 1):
            s += f", dilation={_fmt_pair(self.dilation)}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if not self.has_bias:
            s += ", bias=False"
        if self.dtype != np.float32:
            s += f", dtype={self.dtype.name}"
        return s


class Linear(Module):
    """Dense layer ``y = x @ weight.T + bias`` (``torch.nn.Linear``).

    ``weight`` has shape ``(out_features, in_features)``; ``x`` has shape
    ``(*, in_features)``.
    """

    def __init__(self, in_features, out_features, bias=True, *, dtype=np.float32, rng=None):
        super().__init__()
        self.in_features = _positive_int(in_features, "in_features")
        self.out_features = _positive_int(out_features, "out_features")
        self.dtype = _as_float_dtype(dtype)
        rng = _as_rng(rng)
        bound = 1.0 / math.sqrt(self.in_features)
        w_shape = (self.out_features, self.in_features)
        self._param_shapes["weight"] = w_shape
        self.params["weight"] = _uniform(rng, bound, w_shape, self.dtype)
        if bias:
            self._param_shapes["bias"] = (self.out_features,)
            self.params["bias"] = _uniform(rng, bound, (self.out_features,), self.dtype)

    @property
    def has_bias(self):
        return "bias" in self.params

    def forward(self, x):
        x = _as_real_array(x, "x", self.dtype)
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"Linear: x must have shape (*, in_features={self.in_features}), got {x.shape}")
        x2 = x.reshape(-1, self.in_features)
        y = x2 @ self.params["weight"].T
        if self.has_bias:
            y += self.params["bias"]
        y = y.reshape(x.shape[:-1] + (self.out_features,))
        self._cache = (x, y.shape)
        return y

    def backward(self, grad_out):
        x, out_shape = self._cached()
        g = self._check_grad_out(grad_out, out_shape, self.dtype)
        g2 = g.reshape(-1, self.out_features)
        x2 = x.reshape(-1, self.in_features)
        self.grads["weight"] = g2.T @ x2
        if self.has_bias:
            self.grads["bias"] = g2.sum(axis=0)
        return (g2 @ self.params["weight"]).reshape(x.shape)

    def _args(self):
        return dict(in_features=self.in_features, out_features=self.out_features,
                    bias=self.has_bias, dtype=self.dtype.name)

    def extra_repr(self):
        s = (f"in_features={self.in_features}, out_features={self.out_features}, "
             f"bias={self.has_bias}")
        if self.dtype != np.float32:
            s += f", dtype={self.dtype.name}"
        return s


# --------------------------------------------------------------------------
# parameter-free layers
# --------------------------------------------------------------------------
def _pool_repr(value):
    if isinstance(value, tuple) and value[0] == value[1]:
        return str(value[0])
    return _fmt_pair(value) if isinstance(value, tuple) else str(value)


class MaxPool2d(Module):
    """Max pooling (``torch.nn.MaxPool2d``); ``stride=None`` means ``kernel_size``."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
        super().__init__()
        self.kernel_size = as_pair(kernel_size, "kernel_size")
        self.stride = self.kernel_size if stride is None else as_pair(stride, "stride")
        self.padding = as_pair(padding, "padding")
        self.dilation = as_pair(dilation, "dilation")
        self.ceil_mode = as_bool(ceil_mode, "ceil_mode")

    def _kwargs(self):
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation,
                    ceil_mode=self.ceil_mode)

    def forward(self, x):
        x = _as_real_array(x, "x")
        y, idx = F.max_pool2d(x, self.kernel_size, **self._kwargs())
        self._cache = (idx, x.shape, y.shape, y.dtype)
        return y

    def backward(self, grad_out):
        idx, in_shape, out_shape, dtype = self._cached()
        g = self._check_grad_out(grad_out, out_shape, dtype)
        return F.max_pool2d_backward(g, idx, in_shape)

    def _args(self):
        return dict(kernel_size=list(self.kernel_size), stride=list(self.stride),
                    padding=list(self.padding), dilation=list(self.dilation),
                    ceil_mode=self.ceil_mode)

    def extra_repr(self):
        return (f"kernel_size={_pool_repr(self.kernel_size)}, stride={_pool_repr(self.stride)}, "
                f"padding={_pool_repr(self.padding)}, dilation={_pool_repr(self.dilation)}, "
                f"ceil_mode={self.ceil_mode}")


class AvgPool2d(Module):
    """Average pooling (``torch.nn.AvgPool2d``); ``stride=None`` means ``kernel_size``."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True, divisor_override=None):
        super().__init__()
        self.kernel_size = as_pair(kernel_size, "kernel_size")
        self.stride = self.kernel_size if stride is None else as_pair(stride, "stride")
        self.padding = as_pair(padding, "padding")
        self.ceil_mode = as_bool(ceil_mode, "ceil_mode")
        self.count_include_pad = as_bool(count_include_pad, "count_include_pad")
        if divisor_override is not None:
            divisor_override = _positive_int(divisor_override, "divisor_override")
        self.divisor_override = divisor_override

    def _kwargs(self):
        return dict(stride=self.stride, padding=self.padding, ceil_mode=self.ceil_mode,
                    count_include_pad=self.count_include_pad,
                    divisor_override=self.divisor_override)

    def forward(self, x):
        x = _as_real_array(x, "x")
        y = F.avg_pool2d(x, self.kernel_size, **self._kwargs())
        self._cache = (x.shape, y.shape, y.dtype)
        return y

    def backward(self, grad_out):
        in_shape, out_shape, dtype = self._cached()
        g = self._check_grad_out(grad_out, out_shape, dtype)
        return F.avg_pool2d_backward(g, in_shape, self.kernel_size, **self._kwargs())

    def _args(self):
        return dict(kernel_size=list(self.kernel_size), stride=list(self.stride),
                    padding=list(self.padding), ceil_mode=self.ceil_mode,
                    count_include_pad=self.count_include_pad,
                    divisor_override=self.divisor_override)

    def extra_repr(self):
        s = (f"kernel_size={_pool_repr(self.kernel_size)}, stride={_pool_repr(self.stride)}, "
             f"padding={_pool_repr(self.padding)}")
        if self.ceil_mode:
            s += ", ceil_mode=True"
        if not self.count_include_pad:
            s += ", count_include_pad=False"
        if self.divisor_override is not None:
            s += f", divisor_override={self.divisor_override}"
        return s


class ReLU(Module):
    """``max(x, 0)``; the derivative at ``x == 0`` is 0, as in PyTorch."""

    def forward(self, x):
        x = _as_real_array(x, "x")
        y = F.relu(x)
        self._cache = (x, y.shape, y.dtype)
        return y

    def backward(self, grad_out):
        x, out_shape, dtype = self._cached()
        g = self._check_grad_out(grad_out, out_shape, dtype)
        return F.relu_backward(g, x)


class Flatten(Module):
    """Flatten dimensions ``start_dim..end_dim`` into one (``torch.nn.Flatten``)."""

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        for name, v in (("start_dim", start_dim), ("end_dim", end_dim)):
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise TypeError(f"{name} must be an int, got {v!r}")
        self.start_dim = int(start_dim)
        self.end_dim = int(end_dim)

    def forward(self, x):
        x = _as_real_array(x, "x")
        nd = x.ndim
        s = self.start_dim + nd if self.start_dim < 0 else self.start_dim
        e = self.end_dim + nd if self.end_dim < 0 else self.end_dim
        if not (0 <= s < max(nd, 1) and 0 <= e < max(nd, 1)) or s > e:
            raise ValueError(
                f"Flatten(start_dim={self.start_dim}, end_dim={self.end_dim}) does not fit an "
                f"input of shape {x.shape}")
        shape = x.shape[:s] + (int(np.prod(x.shape[s:e + 1])),) + x.shape[e + 1:]
        y = x.reshape(shape)
        self._cache = (x.shape, y.shape, y.dtype)
        return y

    def backward(self, grad_out):
        in_shape, out_shape, dtype = self._cached()
        g = self._check_grad_out(grad_out, out_shape, dtype)
        return g.reshape(in_shape)

    def _args(self):
        return dict(start_dim=self.start_dim, end_dim=self.end_dim)

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Dropout(Module):
    """Inverted dropout (``torch.nn.Dropout``): in training mode each element is
    zeroed with probability ``p`` and the survivors are scaled by ``1/(1-p)``;
    in evaluation mode (``eval()``) it is the identity. ``rng`` (int seed or
    Generator) draws the masks.
    """

    def __init__(self, p=0.5, *, rng=None):
        super().__init__()
        try:
            p = float(p)
        except (TypeError, ValueError):
            raise TypeError(f"p must be a probability, got {p!r}") from None
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability p must lie in [0, 1), got {p}")
        self.p = p
        self.rng = _as_rng(rng)

    def forward(self, x):
        x = _as_real_array(x, "x")
        if not self.training or self.p == 0:
            self._cache = (None, x.shape, x.dtype)
            return x
        # float64 draws whatever x's dtype: the same seed gives the same masks
        keep = self.rng.random(x.shape) >= self.p
        mask = keep.astype(x.dtype) * x.dtype.type(1.0 / (1.0 - self.p))
        self._cache = (mask, x.shape, x.dtype)
        return x * mask

    def backward(self, grad_out):
        mask, shape, dtype = self._cached()
        g = self._check_grad_out(grad_out, shape, dtype)
        return g if mask is None else g * mask

    def _args(self):
        return dict(p=self.p)

    def extra_repr(self):
        return f"p={self.p}"


class Normalize(Module):
    """Fixed standardisation ``(x - mean) / std`` (no trainable parameters).

    ``mean`` and ``std`` are numbers, or sequences with one value per channel
    (axis 1). Stored in the model's config, so a saved model carries the
    statistics of the data it was trained on.
    """

    def __init__(self, mean=0.0, std=1.0):
        super().__init__()
        self.mean = self._stat(mean, "mean")
        self.std = self._stat(std, "std")
        if np.any(np.asarray(self.std) <= 0):
            raise ValueError(f"std must be positive, got {std!r}")

    @staticmethod
    def _stat(v, name):
        arr = np.asarray(v, dtype=np.float64)
        if arr.ndim > 1 or not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} must be a finite number or a 1-D sequence, got {v!r}")
        return float(arr) if arr.ndim == 0 else [float(a) for a in arr]

    def _broadcast(self, value, x):
        arr = np.asarray(value, dtype=x.dtype)
        if arr.ndim == 0:
            return arr
        if x.ndim < 2 or x.shape[1] != arr.size:
            raise ValueError(f"Normalize has {arr.size} per-channel values but the input has "
                             f"shape {x.shape}")
        return arr.reshape((1, -1) + (1,) * (x.ndim - 2))

    def forward(self, x):
        x = _as_real_array(x, "x")
        y = (x - self._broadcast(self.mean, x)) / self._broadcast(self.std, x)
        self._cache = (x, y.shape, y.dtype)
        return y

    def backward(self, grad_out):
        x, shape, dtype = self._cached()
        g = self._check_grad_out(grad_out, shape, dtype)
        return g / self._broadcast(self.std, x)

    def _args(self):
        return dict(mean=self.mean, std=self.std)

    def extra_repr(self):
        def fmt(v):
            if isinstance(v, float):
                return f"{v:.4g}"
            return "[" + ", ".join(f"{a:.4g}" for a in v) + "]"
        return f"mean={fmt(self.mean)}, std={fmt(self.std)}"


# --------------------------------------------------------------------------
# containers
# --------------------------------------------------------------------------
class Sequential(Module):
    """Layers applied in order; ``backward`` runs them in reverse.

    ``params``/``grads`` are live views keyed ``"<index>.<name>"``.
    """

    def __init__(self, *layers):
        super().__init__()
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"Sequential: layer {i} must be a cnnx.layers.Module, "
                                f"got {type(layer).__name__}")
        self._layers = list(layers)
        self.params = _SequentialDict(self, "params")
        self.grads = _SequentialDict(self, "grads")

    @property
    def dtype(self):
        dtypes = {layer.dtype for layer in self._layers if layer.dtype is not None}
        return dtypes.pop() if len(dtypes) == 1 else None

    def children(self):
        return list(self._layers)

    def __len__(self):
        return len(self._layers)

    def __iter__(self):
        return iter(self._layers)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return Sequential(*self._layers[i])
        return self._layers[i]

    def forward(self, x):
        for layer in self._layers:
            x = layer.forward(x)
        self._cache = True
        return x

    def backward(self, grad_out):
        self._cached()
        g = grad_out
        for layer in reversed(self._layers):
            g = layer.backward(g)
        return g

    def config(self):
        return {"type": "Sequential", "layers": [layer.config() for layer in self._layers]}

    def __repr__(self):
        if not self._layers:
            return "Sequential()"
        lines = []
        for i, layer in enumerate(self._layers):
            inner = repr(layer).replace("\n", "\n  ")
            lines.append(f"  ({i}): {inner}")
        return "Sequential(\n" + "\n".join(lines) + "\n)"


# --------------------------------------------------------------------------
# rebuilding from a config / a file
# --------------------------------------------------------------------------
_LAYERS = {cls.__name__: cls for cls in
           (Conv2d, Linear, MaxPool2d, AvgPool2d, ReLU, Flatten, Dropout, Normalize, Sequential)}


def from_config(config, rng=None):
    """Build a model from :meth:`Module.config` output (weights freshly initialised)."""
    if not isinstance(config, dict) or "type" not in config:
        raise ValueError(f"not a cnnx model config: {config!r}")
    kind = config["type"]
    if kind not in _LAYERS:
        raise ValueError(f"unknown layer type {kind!r} in model config; "
                         f"known types: {sorted(_LAYERS)}")
    rng = _as_rng(rng)
    if kind == "Sequential":
        return Sequential(*[from_config(c, rng) for c in config.get("layers", [])])
    args = dict(config.get("args", {}))
    for key in ("kernel_size", "stride", "padding", "dilation"):
        if isinstance(args.get(key), list):
            args[key] = tuple(args[key])
    cls = _LAYERS[kind]
    if cls in (Conv2d, Linear, Dropout):
        args["rng"] = rng
    return cls(**args)


def _read_npz(path):
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise FileNotFoundError(f"no saved model at {path!r}") from None
    except (ValueError, OSError) as exc:
        raise ValueError(f"{path!r} is not a .npz file saved by cnnx: {exc}") from None
    config = arrays.pop(_CONFIG_KEY, None)
    meta = arrays.pop(_METADATA_KEY, None)
    config = json.loads(str(config)) if config is not None else None
    meta = json.loads(str(meta)) if meta is not None else {}
    return arrays, config, meta


def load_model(path, *, return_metadata=False):
    """Rebuild a model saved with :meth:`Module.save` (architecture and weights).

    With ``return_metadata=True`` returns ``(model, metadata)``.
    """
    state, config, meta = _read_npz(path)
    if config is None:
        raise ValueError(f"{path!r} holds weights but no architecture; it was not written by "
                         "cnnx's Module.save (use model.load(path) on a model you build)")
    model = from_config(config, rng=0)
    model.load_state_dict(state)
    return (model, meta) if return_metadata else model
