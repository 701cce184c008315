"""Shared by the test modules: hypothesis strategies for op configurations,
random inputs for them, and PyTorch oracles (torch imported lazily; callers
skip with ``pytest.importorskip("torch")`` first).

Shapes are kept tiny (N <= 2, C <= 4, H, W <= 7) because the reference is
plain Python loops.
"""

import warnings

import numpy as np
from hypothesis import assume
from hypothesis import strategies as st

from cnnx._shapes import pool_output_size

MAX_HW = 7


# --------------------------------------------------------------------------
# strategies
# --------------------------------------------------------------------------
def _pair(draw, h, w):
    """An (h, w) option written the ways users write it: int, tuple or list."""
    if h == w:
        return draw(st.sampled_from([h, (h, w), [h, w]]))
    return draw(st.sampled_from([(h, w), [h, w]]))


@st.composite
def conv_configs(draw, allow_empty_batch=True, max_w=MAX_HW):
    """Keyword arguments of a valid conv2d call plus shapes and a data seed (width up to
    ``max_w``: wide rows reach the kernels' vectorised loops)."""
    groups = draw(st.integers(1, 4))
    c_in_per_group = draw(st.integers(1, max(1, 4 // groups)))
    c_out_per_group = draw(st.integers(1, max(1, 4 // groups)))
    C_in, C_out = groups * c_in_per_group, groups * c_out_per_group
    KH, KW = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    dil = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    kinds = ["int", "int", "valid"] + (["same", "same"] if stride == (1, 1) else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "int":
        ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
        padding = _pair(draw, ph, pw)
        pads_h, pads_w = 2 * ph, 2 * pw
    elif kind == "valid":
        padding, pads_h, pads_w = "valid", 0, 0
    else:
        padding, pads_h, pads_w = "same", dil[0] * (KH - 1), dil[1] * (KW - 1)
    H_min = max(1, dil[0] * (KH - 1) + 1 - pads_h)
    W_min = max(1, dil[1] * (KW - 1) + 1 - pads_w)
    H = draw(st.integers(H_min, MAX_HW))
    W = draw(st.integers(W_min, max(W_min, max_w)))
    unbatched = draw(st.booleans())
    N = 1 if unbatched else draw(st.integers(0 if allow_empty_batch else 1, 2))
    x_shape = (C_in, H, W) if unbatched else (N, C_in, H, W)
    return dict(
        x_shape=x_shape,
        w_shape=(C_out, c_in_per_group, KH, KW),
        bias=draw(st.booleans()),
        kwargs=dict(
            stride=_pair(draw, *stride),
            padding=padding,
            dilation=_pair(draw, *dil),
            groups=groups,
        ),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


@st.composite
def pool_configs(draw, kind="max", allow_empty_batch=True, max_w=MAX_HW):
    """Shape + keyword arguments of a valid max_pool2d / avg_pool2d call (width up to
    ``max_w``: wide rows reach the kernels' vectorised loops)."""
    C = draw(st.integers(1, 3))
    KH, KW = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    # one call in four: windows that tile the input exactly (stride = kernel, no padding,
    # sizes multiples of the window; mostly 2x2), which the kernels write once per element
    tiled = draw(st.integers(0, 3)) == 0
    if tiled:
        KH, KW = draw(st.sampled_from([(2, 2), (2, 2), (KH, KW)]))
    ph, pw = (0, 0) if tiled else (draw(st.integers(0, KH // 2)), draw(st.integers(0, KW // 2)))
    dil = ((draw(st.integers(1, 2)), draw(st.integers(1, 2))) if kind == "max" and not tiled
           else (1, 1))
    if tiled or draw(st.booleans()):
        stride, sh, sw = None, KH, KW
    else:
        sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
        stride = _pair(draw, sh, sw)
    ceil_mode = draw(st.booleans())
    H_min = max(1, dil[0] * (KH - 1) + 1 - 2 * ph)
    W_min = max(1, dil[1] * (KW - 1) + 1 - 2 * pw)
    if tiled:
        H = KH * draw(st.integers(1, MAX_HW // KH))
        W = KW * draw(st.integers(1, max(1, max_w // KW)))
    else:
        H = draw(st.integers(H_min, MAX_HW))
        W = draw(st.integers(W_min, max(W_min, max_w)))
    assert pool_output_size(H, KH, sh, ph, dil[0], ceil_mode) > 0
    unbatched = draw(st.booleans())
    N = 1 if unbatched else draw(st.integers(0 if allow_empty_batch else 1, 2))
    kwargs = dict(kernel_size=_pair(draw, KH, KW), stride=stride, padding=_pair(draw, ph, pw),
                  ceil_mode=ceil_mode)
    if kind == "max":
        kwargs["dilation"] = _pair(draw, *dil)
        # cnnx refuses a dilated window that holds no input element (PyTorch does not)
        assume(window_has_input((H, W), kwargs))
    else:
        kwargs["count_include_pad"] = draw(st.booleans())
        kwargs["divisor_override"] = draw(
            st.one_of(st.none(), st.none(), st.integers(-3, 6).filter(bool)))
    return dict(
        x_shape=(C, H, W) if unbatched else (N, C, H, W),
        kwargs=kwargs,
        seed=draw(st.integers(0, 2**32 - 1)),
    )


def window_has_input(x_shape, kwargs):
    """False if some max-pool window lies entirely in the padding (possible with
    dilation; PyTorch then returns -inf with an out-of-range index, cnnx raises)."""
    H, W = x_shape[-2:]

    def ok(size, k, s, p, d, ceil):
        n_out = pool_output_size(size, k, s, p, d, ceil)
        for i in range(n_out):
            if not any(0 <= i * s - p + m * d < size for m in range(k)):
                return False
        return True

    k = _as_pair(kwargs["kernel_size"])
    s = k if kwargs.get("stride") is None else _as_pair(kwargs["stride"])
    p = _as_pair(kwargs.get("padding", 0))
    d = _as_pair(kwargs.get("dilation", 1))
    ceil = kwargs.get("ceil_mode", False)
    return ok(H, k[0], s[0], p[0], d[0], ceil) and ok(W, k[1], s[1], p[1], d[1], ceil)


def _as_pair(v):
    if isinstance(v, (tuple, list)):
        return tuple(v) if len(v) == 2 else (v[0], v[0])
    return (v, v)


# --------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------
def normal(rng, shape, dtype=np.float64):
    return rng.standard_normal(shape).astype(dtype)


def with_ties(rng, shape, dtype=np.float64):
    """Small integers: many equal values, so max-pool tie-breaking is exercised."""
    return rng.integers(-3, 4, size=shape).astype(dtype)


def with_specials(rng, shape, dtype=np.float64, fraction=0.3):
    """Small integers with NaN, +inf and -inf sprinkled in."""
    x = with_ties(rng, shape, dtype)
    mask = rng.random(shape) < fraction
    specials = rng.choice(np.array([np.nan, np.inf, -np.inf], dtype=dtype), size=shape)
    x[mask] = specials[mask]
    return x


def conv_arrays(cfg, dtype=np.float64):
    rng = np.random.default_rng(cfg["seed"])
    x = normal(rng, cfg["x_shape"], dtype)
    w = normal(rng, cfg["w_shape"], dtype)
    b = normal(rng, (cfg["w_shape"][0],), dtype) if cfg["bias"] else None
    return x, w, b


def conv_out_shape(cfg):
    from cnnx import reference

    x, w, b = conv_arrays(cfg)
    return reference.conv2d(x, w, b, **cfg["kwargs"]).shape


# --------------------------------------------------------------------------
# PyTorch oracles (float32/float64 numpy in, numpy out)
# --------------------------------------------------------------------------
def _t(a, requires_grad=False):
    import torch

    t = torch.from_numpy(np.ascontiguousarray(a))
    if requires_grad:
        t.requires_grad_(True)
    return t


def _torch_pair(v):
    return tuple(v) if isinstance(v, list) else v


def _torch_kwargs(kwargs):
    return {k: _torch_pair(v) for k, v in kwargs.items()}


def torch_conv2d(x, w, b, **kwargs):
    import torch.nn.functional as F

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)   # 'same' + even kernel: a padded copy
        return F.conv2d(_t(x), _t(w), None if b is None else _t(b),
                        **_torch_kwargs(kwargs)).numpy()


def torch_conv2d_backward(g, x, w, **kwargs):
    """(grad_x, grad_weight, grad_bias) by autograd."""
    import torch
    import torch.nn.functional as F

    tx, tw = _t(x, True), _t(w, True)
    tb = torch.zeros(w.shape[0], dtype=tw.dtype, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        y = F.conv2d(tx, tw, tb, **_torch_kwargs(kwargs))
    y.backward(_t(g))
    return tx.grad.numpy(), tw.grad.numpy(), tb.grad.numpy()


def torch_max_pool2d(x, **kwargs):
    import torch.nn.functional as F

    y, idx = F.max_pool2d(_t(x), return_indices=True, **_torch_kwargs(kwargs))
    return y.numpy(), idx.numpy()


def torch_max_pool2d_backward(g, x, **kwargs):
    """grad_x by autograd through max_pool2d (which routes grad_out via its indices)."""
    import torch.nn.functional as F

    tx = _t(x, True)
    y, _ = F.max_pool2d(tx, return_indices=True, **_torch_kwargs(kwargs))
    y.backward(_t(g))
    return tx.grad.numpy()


def torch_avg_pool2d(x, **kwargs):
    import torch.nn.functional as F

    return F.avg_pool2d(_t(x), **_torch_kwargs(kwargs)).numpy()


def torch_avg_pool2d_backward(g, x, **kwargs):
    import torch.nn.functional as F

    tx = _t(x, True)
    F.avg_pool2d(tx, **_torch_kwargs(kwargs)).backward(_t(g))
    return tx.grad.numpy()


def torch_relu(x):
    import torch

    return torch.relu(_t(x)).numpy()


def torch_relu_backward(g, x):
    import torch

    tx = _t(x, True)
    torch.relu(tx).backward(_t(g))
    return tx.grad.numpy()


# --------------------------------------------------------------------------
# memory layouts: the same values in another layout (never C-contiguous and
# writeable at once, except "unaligned", which is misaligned instead)
# --------------------------------------------------------------------------
def strided(a):
    """A view with every third element of a bigger buffer along the last axis."""
    if a.ndim == 0:
        return a
    big = np.zeros(a.shape[:-1] + (3 * a.shape[-1],), a.dtype)
    big[..., ::3] = a
    return big[..., ::3]


def negative_strides(a):
    """A view with negative strides along every axis."""
    if a.ndim == 0:
        return a
    flipped = np.ascontiguousarray(a[(slice(None, None, -1),) * a.ndim])
    return flipped[(slice(None, None, -1),) * a.ndim]


def readonly(a):
    out = a.copy()
    out.flags.writeable = False
    return out


def unaligned(a):
    """A copy whose data starts one byte into its buffer."""
    buf = np.zeros(a.nbytes + 1, dtype=np.uint8)
    out = buf[1:].view(a.dtype).reshape(a.shape)
    out[...] = a
    assert not out.flags.aligned or a.dtype.itemsize == 1 or a.size == 0   # empty: "aligned"
    return out


def fortran_readonly(a):
    out = np.asfortranarray(a)
    if out is a:
        out = out.copy(order="F")
    out.flags.writeable = False
    return out


LAYOUTS = {
    "fortran": np.asfortranarray,
    "strided": strided,
    "negative-strides": negative_strides,
    "readonly": readonly,
    "unaligned": unaligned,
    "fortran-readonly": fortran_readonly,
    "transposed": lambda a: np.ascontiguousarray(a.T).T if a.ndim > 1 else a,
}


# --------------------------------------------------------------------------
# child processes
# --------------------------------------------------------------------------
def run_python(code, env=None):
    """Run ``python -c code`` in a child that imports the same cnnx as this process (not
    the source tree, which `python -c` would put first on sys.path from the repo root);
    returns its stdout, raising CalledProcessError (with stderr) if it fails."""
    import os
    import subprocess
    import sys

    import cnnx

    env = dict(os.environ if env is None else env)
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    cnnx_parent = os.path.dirname(os.path.dirname(os.path.abspath(cnnx.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([cnnx_parent, env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, cwd=tests_dir, timeout=120)
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, code, proc.stdout, proc.stderr)
    return proc.stdout
