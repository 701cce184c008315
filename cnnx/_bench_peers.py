"""Implementations that ``cnnx bench`` times against cnnx.

Every peer imports its library lazily (inside :meth:`Peer.load`), so a missing
optional package only skips that peer with a note; importing this module needs
nothing but NumPy.

Peers
-----
``cnnx``       cnnx.functional (``algorithm="auto"``; ``cnnx-direct``/``cnnx-gemm``/
               ``cnnx-winograd`` force one)
``reference``  cnnx.reference, the pure-Python twin (tiny cases only)
``numpy``      NumPy im2col in the style of Stanford's CS231n assignments: im2col by fancy
               indexing + ``np.dot``, col2im with ``np.add.at``; max/avg pooling through the
               reshape trick when the windows tile the input exactly, else through im2col
               (``max_pool_forward_fast``).  The index arrays are cached per shape.
``numba``      plain loops as a textbook's numba chapter writes them: a serial ``@njit`` loop
               nest per sample inside an ``@njit(parallel=True)`` ``prange`` over the batch
               (the weight gradient is accumulated per sample, then summed); no fastmath, no
               tiling; ``cache=True`` so the JIT compile happens once per machine.
``torch``      PyTorch CPU ``torch.nn.functional``; forward under ``torch.no_grad()``,
               forward+backward through autograd (``torch.autograd.grad``).

A peer's :meth:`Peer.setup` returns a :class:`Bound` holding three callables on
fixed inputs (float32, or float64 with ``cnnx bench --dtype float64``; every peer computes
in the inputs' dtype and returns it): ``forward()``, ``forward_backward()`` and ``outputs()``
(a dict of NumPy arrays -- ``y``, ``grad_x`` and, for conv, ``grad_w``/``grad_b``;
``indices`` where the peer produces PyTorch-layout max-pool indices) that the
harness compares against cnnx before timing anything.
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = ["PEERS", "DEFAULT_PEERS", "Bound", "Peer", "Unsupported", "make_peer"]


class Unsupported(Exception):
    """A peer cannot run a given case (e.g. an option it does not implement)."""


class Bound:
    """A peer bound to one case's arrays."""

    def __init__(self, forward, forward_backward, outputs):
        self.forward = forward
        self.forward_backward = forward_backward
        self.outputs = outputs


# ---------------------------------------------------------------------------
# case helpers (the case dict is normalised by cnnx.benchmark.normalise_case)
# ---------------------------------------------------------------------------
def _out_size(size, k, s, p, d=1):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


class Peer:
    """Base class: ``name``, ``description``, lazy ``load()``, ``set_num_threads(n)``."""

    name = "?"
    description = ""
    tiny_only = False

    def load(self):
        """Import the library; raise ImportError (with a readable message) when missing."""

    def version(self):
        return None

    def set_num_threads(self, n):
        """Make the peer use ``n`` threads (BLAS limits are set by the harness)."""

    def setup(self, case, data):
        op = case["op"]
        if op == "conv":
            return self.setup_conv(case, data)
        if op == "maxpool":
            return self.setup_maxpool(case, data)
        if op == "avgpool":
            return self.setup_avgpool(case, data)
        raise Unsupported(f"unknown op {op!r}")

    def setup_conv(self, case, data):
        raise Unsupported("conv not implemented")

    def setup_maxpool(self, case, data):
        raise Unsupported("max pooling not implemented")

    def setup_avgpool(self, case, data):
        raise Unsupported("avg pooling not implemented")


# ---------------------------------------------------------------------------
# cnnx and its pure-Python reference (same signatures)
# ---------------------------------------------------------------------------
class _FunctionalPeer(Peer):
    module_name = "cnnx.functional"
    algorithm = None  # conv algorithm keyword, or None to leave the default

    def load(self):
        import importlib

        self.F = importlib.import_module(self.module_name)
        # make sure every op the harness calls is there
        for op in ("conv2d", "conv2d_backward", "max_pool2d", "max_pool2d_backward",
                   "avg_pool2d", "avg_pool2d_backward"):
            getattr(self.F, op)

    def version(self):
        import cnnx

        return cnnx.__version__

    def set_num_threads(self, n):
        import cnnx

        cnnx.set_num_threads(n)

    def setup_conv(self, case, data):
        F = self.F
        x, w, b, gy = data["x"], data["w"], data["b"], data["gy"]
        kw = dict(stride=case["s"], padding=case["p"], dilation=case["d"], groups=case["groups"])
        if self.algorithm is not None:
            kw["algorithm"] = self.algorithm

        def forward():
            return F.conv2d(x, w, b, **kw)

        def forward_backward():
            y = F.conv2d(x, w, b, **kw)
            return y, F.conv2d_backward(gy, x, w, **kw)

        def outputs():
            y, (gx, gw, gb) = forward_backward()
            return {"y": y, "grad_x": gx, "grad_w": gw, "grad_b": gb}

        return Bound(forward, forward_backward, outputs)

    def setup_maxpool(self, case, data):
        F = self.F
        x, gy = data["x"], data["gy"]
        k, s, p, d = case["k"], case["s"], case["p"], case["d"]
        shape = x.shape

        def forward():
            return F.max_pool2d(x, k, s, p, d)

        def forward_backward():
            y, idx = F.max_pool2d(x, k, s, p, d)
            return y, F.max_pool2d_backward(gy, idx, shape)

        def outputs():
            y, idx = F.max_pool2d(x, k, s, p, d)
            return {"y": y, "indices": idx, "grad_x": F.max_pool2d_backward(gy, idx, shape)}

        return Bound(forward, forward_backward, outputs)

    def setup_avgpool(self, case, data):
        F = self.F
        x, gy = data["x"], data["gy"]
        k, s, p = case["k"], case["s"], case["p"]
        shape = x.shape

        def forward():
            return F.avg_pool2d(x, k, s, p)

        def forward_backward():
            y = F.avg_pool2d(x, k, s, p)
            return y, F.avg_pool2d_backward(gy, shape, k, s, p)

        def outputs():
            y, gx = forward_backward()
            return {"y": y, "grad_x": gx}

        return Bound(forward, forward_backward, outputs)


class CnnxPeer(_FunctionalPeer):
    name = "cnnx"
    description = "cnnx.functional (compiled Cython kernels, algorithm='auto')"


class CnnxDirectPeer(_FunctionalPeer):
    name = "cnnx-direct"
    description = "cnnx.functional with conv algorithm='direct'"
    algorithm = "direct"


class CnnxGemmPeer(_FunctionalPeer):
    name = "cnnx-gemm"
    description = "cnnx.functional with conv algorithm='gemm' (im2col + BLAS)"
    algorithm = "gemm"


class CnnxWinogradPeer(_FunctionalPeer):
    name = "cnnx-winograd"
    description = "cnnx.functional with conv algorithm='winograd' (3x3, stride 1 only)"
    algorithm = "winograd"

    def setup_conv(self, case, data):
        if (case["k"], case["s"], case["d"]) != (3, 1, 1):
            raise Unsupported("winograd computes 3x3 stride-1 undilated convolutions only")
        return super().setup_conv(case, data)


class ReferencePeer(_FunctionalPeer):
    name = "reference"
    description = "cnnx.reference: pure-Python loops (tiny cases only)"
    module_name = "cnnx.reference"
    tiny_only = True

    def set_num_threads(self, n):
        pass  # pure Python: one thread whatever the setting


# ---------------------------------------------------------------------------
# NumPy im2col (CS231n style)
# ---------------------------------------------------------------------------
@functools.lru_cache(maxsize=32)
def _im2col_indices(C, H, W, KH, KW, pad, stride, dilation):
    """CS231n's ``get_im2col_indices`` (+ dilation): row (c, kh, kw), column (oh, ow)."""
    Ho = _out_size(H, KH, stride, pad, dilation)
    Wo = _out_size(W, KW, stride, pad, dilation)
    i0 = np.tile(np.repeat(np.arange(KH) * dilation, KW), C)
    i1 = stride * np.repeat(np.arange(Ho), Wo)
    j0 = np.tile(np.arange(KW) * dilation, KH * C)
    j1 = stride * np.tile(np.arange(Wo), Ho)
    i = i0.reshape(-1, 1) + i1.reshape(1, -1)
    j = j0.reshape(-1, 1) + j1.reshape(1, -1)
    k = np.repeat(np.arange(C), KH * KW).reshape(-1, 1)
    return k, i, j, Ho, Wo


def im2col(x, KH, KW, pad, stride, dilation=1, pad_value=0.0):
    """x (N, C, H, W) -> cols (C*KH*KW, Ho*Wo*N), CS231n's ``im2col_indices``."""
    N, C, H, W = x.shape
    if pad:
        x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="constant",
                   constant_values=pad_value)
    k, i, j, _, _ = _im2col_indices(C, H, W, KH, KW, pad, stride, dilation)
    cols = x[:, k, i, j]  # (N, C*KH*KW, Ho*Wo)
    return cols.transpose(1, 2, 0).reshape(C * KH * KW, -1)


def col2im(cols, x_shape, KH, KW, pad, stride, dilation=1):
    """Adjoint of :func:`im2col`: scatter-add with ``np.add.at`` (CS231n's ``col2im_indices``)."""
    N, C, H, W = x_shape
    x_padded = np.zeros((N, C, H + 2 * pad, W + 2 * pad), dtype=cols.dtype)
    k, i, j, _, _ = _im2col_indices(C, H, W, KH, KW, pad, stride, dilation)
    cols_reshaped = cols.reshape(C * KH * KW, -1, N).transpose(2, 0, 1)
    np.add.at(x_padded, (slice(None), k, i, j), cols_reshaped)
    if pad == 0:
        return x_padded
    return x_padded[:, :, pad:-pad, pad:-pad]


def numpy_conv_forward(x, w, b, stride, pad, dilation=1):
    """-> (out, x_cols); x_cols is the cache the backward pass reuses."""
    N = x.shape[0]
    F, _, KH, KW = w.shape
    x_cols = im2col(x, KH, KW, pad, stride, dilation)
    res = w.reshape(F, -1).dot(x_cols)
    if b is not None:
        res += b.reshape(-1, 1)
    Ho = _out_size(x.shape[2], KH, stride, pad, dilation)
    Wo = _out_size(x.shape[3], KW, stride, pad, dilation)
    out = res.reshape(F, Ho, Wo, N).transpose(3, 0, 1, 2)
    return np.ascontiguousarray(out), x_cols


def numpy_conv_backward(dout, x_shape, w, x_cols, stride, pad, dilation=1):
    F, _, KH, KW = w.shape
    db = dout.sum(axis=(0, 2, 3))
    dout_reshaped = dout.transpose(1, 2, 3, 0).reshape(F, -1)
    dw = dout_reshaped.dot(x_cols.T).reshape(w.shape)
    dx_cols = w.reshape(F, -1).T.dot(dout_reshaped)
    dx = col2im(dx_cols, x_shape, KH, KW, pad, stride, dilation)
    return dx, dw, db


def _pool_tiles(x_shape, k, s, p):
    """True when CS231n's reshape trick applies: square windows that tile the input exactly."""
    _, _, H, W = x_shape
    return p == 0 and k == s and H % k == 0 and W % k == 0


def numpy_maxpool_forward(x, k, s, p):
    """CS231n ``max_pool_forward_fast``: reshape when the windows tile, else im2col + argmax."""
    N, C, H, W = x.shape
    if _pool_tiles(x.shape, k, s, p):
        xr = x.reshape(N, C, H // k, k, W // k, k)
        out = xr.max(axis=3).max(axis=4)
        return out, ("reshape", xr, out)
    xs = x.reshape(N * C, 1, H, W)
    x_cols = im2col(xs, k, k, p, s, pad_value=-np.inf)
    argmax = np.argmax(x_cols, axis=0)
    cols_max = x_cols[argmax, np.arange(x_cols.shape[1])]
    Ho, Wo = _out_size(H, k, s, p), _out_size(W, k, s, p)
    out = cols_max.reshape(Ho, Wo, N, C).transpose(2, 3, 0, 1)
    return np.ascontiguousarray(out), ("im2col", x_cols, argmax)


def numpy_maxpool_backward(dout, x_shape, cache, k, s, p):
    kind, a, bb = cache
    if kind == "reshape":
        xr, out = a, bb
        dxr = np.zeros_like(xr)
        out_newaxis = out[:, :, :, np.newaxis, :, np.newaxis]
        mask = xr == out_newaxis
        dout_broadcast, _ = np.broadcast_arrays(dout[:, :, :, np.newaxis, :, np.newaxis], dxr)
        dxr[mask] = dout_broadcast[mask]
        dxr /= np.sum(mask, axis=(3, 5), keepdims=True)  # ties share the gradient
        return dxr.reshape(x_shape)
    x_cols, argmax = a, bb
    N, C, H, W = x_shape
    dout_flat = dout.transpose(2, 3, 0, 1).ravel()
    dx_cols = np.zeros_like(x_cols)
    dx_cols[argmax, np.arange(dx_cols.shape[1])] = dout_flat
    dx = col2im(dx_cols, (N * C, 1, H, W), k, k, p, s)
    return dx.reshape(x_shape)


def numpy_avgpool_forward(x, k, s, p):
    """Average pooling, count_include_pad=True (zero padding counted, divisor k*k)."""
    N, C, H, W = x.shape
    if _pool_tiles(x.shape, k, s, p):
        return x.reshape(N, C, H // k, k, W // k, k).mean(axis=(3, 5))
    x_cols = im2col(x.reshape(N * C, 1, H, W), k, k, p, s)
    Ho, Wo = _out_size(H, k, s, p), _out_size(W, k, s, p)
    out = x_cols.mean(axis=0).reshape(Ho, Wo, N, C).transpose(2, 3, 0, 1)
    return np.ascontiguousarray(out)


def numpy_avgpool_backward(dout, x_shape, k, s, p):
    N, C, H, W = x_shape
    scale = np.float32(1.0 / (k * k)) if dout.dtype == np.float32 else 1.0 / (k * k)
    if _pool_tiles(x_shape, k, s, p):
        g = (dout * scale)[:, :, :, np.newaxis, :, np.newaxis]
        dxr = np.broadcast_to(g, (N, C, H // k, k, W // k, k))
        return np.ascontiguousarray(dxr).reshape(x_shape)
    cols = np.broadcast_to((dout * scale).transpose(2, 3, 0, 1).reshape(1, -1),
                           (k * k, dout.size))
    dx = col2im(np.ascontiguousarray(cols), (N * C, 1, H, W), k, k, p, s)
    return dx.reshape(x_shape)


class NumpyPeer(Peer):
    name = "numpy"
    description = ("NumPy im2col, CS231n style (fancy-index im2col + np.dot, col2im with "
                   "np.add.at; pooling by reshape when windows tile, else im2col)")

    def load(self):
        try:
            import threadpoolctl  # noqa: F401  (the harness limits BLAS threads with it)
        except ImportError:  # pragma: no cover - threadpoolctl is a cnnx dependency
            pass

    def version(self):
        return np.__version__

    def setup_conv(self, case, data):
        if case["groups"] != 1:
            raise Unsupported("groups != 1 not implemented in the im2col peer")
        if case["p"] == "same" or case["p"] == "valid" or isinstance(case["p"], (list, tuple)):
            raise Unsupported("only int padding in the im2col peer")
        x, w, b, gy = data["x"], data["w"], data["b"], data["gy"]
        s, p, d = case["s"], case["p"], case["d"]

        def forward():
            return numpy_conv_forward(x, w, b, s, p, d)[0]

        def forward_backward():
            y, cols = numpy_conv_forward(x, w, b, s, p, d)
            return y, numpy_conv_backward(gy, x.shape, w, cols, s, p, d)

        def outputs():
            y, (gx, gw, gb) = forward_backward()
            return {"y": y, "grad_x": gx, "grad_w": gw, "grad_b": gb}

        return Bound(forward, forward_backward, outputs)

    def _check_pool(self, case):
        if case["d"] != 1:
            raise Unsupported("dilated pooling not implemented in the im2col peer")

    def setup_maxpool(self, case, data):
        self._check_pool(case)
        x, gy = data["x"], data["gy"]
        k, s, p = case["k"], case["s"], case["p"]

        def forward():
            return numpy_maxpool_forward(x, k, s, p)[0]

        def forward_backward():
            y, cache = numpy_maxpool_forward(x, k, s, p)
            return y, numpy_maxpool_backward(gy, x.shape, cache, k, s, p)

        def outputs():
            y, gx = forward_backward()
            return {"y": y, "grad_x": gx}

        return Bound(forward, forward_backward, outputs)

    def setup_avgpool(self, case, data):
        self._check_pool(case)
        x, gy = data["x"], data["gy"]
        k, s, p = case["k"], case["s"], case["p"]

        def forward():
            return numpy_avgpool_forward(x, k, s, p)

        def forward_backward():
            return forward(), numpy_avgpool_backward(gy, x.shape, k, s, p)

        def outputs():
            y, gx = forward_backward()
            return {"y": y, "grad_x": gx}

        return Bound(forward, forward_backward, outputs)


# ---------------------------------------------------------------------------
# numba: textbook loops, njit(parallel=True), prange over the batch
# ---------------------------------------------------------------------------
_NUMBA_KERNELS = None


def _numba_kernels():
    """Compile-on-first-use kernels (the module imports numba only here).

    Each op is a plain serial ``@njit`` loop nest over one sample, called from a
    ``@njit(parallel=True)`` wrapper whose ``prange`` runs over the batch.  (Writing the
    ``prange`` straight over the 7-deep loop nest gives the same machine code but takes
    numba's parallel pass about twice as long to compile.)  The weight gradient is
    accumulated per sample and summed afterwards, so the batch loop never races.
    """
    global _NUMBA_KERNELS
    if _NUMBA_KERNELS is not None:
        return _NUMBA_KERNELS
    import numba
    from numba import njit, prange

    # ---- one sample: x (C, H, W), out (F, Ho, Wo) -------------------------------
    @njit(cache=True)
    def conv_forward_one(x, w, b, sh, sw, ph, pw, dh, dw, groups, out):
        C, H, W = x.shape
        F, Cg, KH, KW = w.shape
        Ho, Wo = out.shape[1], out.shape[2]
        Fg = F // groups
        for f in range(F):
            c0 = (f // Fg) * Cg
            for i in range(Ho):
                for j in range(Wo):
                    acc = b[f]
                    for c in range(Cg):
                        for u in range(KH):
                            hi = i * sh - ph + u * dh
                            if hi < 0 or hi >= H:
                                continue
                            for v in range(KW):
                                wi = j * sw - pw + v * dw
                                if wi >= 0 and wi < W:
                                    acc += x[c0 + c, hi, wi] * w[f, c, u, v]
                    out[f, i, j] = acc

    @njit(cache=True)
    def conv_backward_one(gy, x, w, sh, sw, ph, pw, dh, dw, groups, gx, gw, gb):
        C, H, W = x.shape
        F, Cg, KH, KW = w.shape
        Ho, Wo = gy.shape[1], gy.shape[2]
        Fg = F // groups
        for f in range(F):
            c0 = (f // Fg) * Cg
            for i in range(Ho):
                for j in range(Wo):
                    g = gy[f, i, j]
                    gb[f] += g
                    for c in range(Cg):
                        for u in range(KH):
                            hi = i * sh - ph + u * dh
                            if hi < 0 or hi >= H:
                                continue
                            for v in range(KW):
                                wi = j * sw - pw + v * dw
                                if wi >= 0 and wi < W:
                                    gx[c0 + c, hi, wi] += g * w[f, c, u, v]
                                    gw[f, c, u, v] += g * x[c0 + c, hi, wi]

    @njit(cache=True)
    def maxpool_forward_one(x, KH, KW, sh, sw, ph, pw, dh, dw, out, idx):
        C, H, W = x.shape
        Ho, Wo = out.shape[1], out.shape[2]
        for c in range(C):
            for i in range(Ho):
                for j in range(Wo):
                    best = x[c, 0, 0]
                    arg = -1
                    for u in range(KH):
                        hi = i * sh - ph + u * dh
                        if hi < 0 or hi >= H:
                            continue
                        for v in range(KW):
                            wi = j * sw - pw + v * dw
                            if wi < 0 or wi >= W:
                                continue
                            val = x[c, hi, wi]
                            if arg < 0 or val > best or np.isnan(val):
                                best = val
                                arg = hi * W + wi
                    out[c, i, j] = best
                    idx[c, i, j] = arg

    @njit(cache=True)
    def maxpool_backward_one(gy, idx, gx):
        C, H, W = gx.shape
        Ho, Wo = gy.shape[1], gy.shape[2]
        for c in range(C):
            for i in range(Ho):
                for j in range(Wo):
                    a = idx[c, i, j]
                    gx[c, a // W, a % W] += gy[c, i, j]

    @njit(cache=True)
    def avgpool_forward_one(x, KH, KW, sh, sw, ph, pw, out):
        C, H, W = x.shape
        Ho, Wo = out.shape[1], out.shape[2]
        scale = x.dtype.type(1.0 / (KH * KW))  # count_include_pad=True; the data's dtype
        for c in range(C):
            for i in range(Ho):
                for j in range(Wo):
                    acc = x.dtype.type(0.0)
                    for u in range(KH):
                        hi = i * sh - ph + u
                        if hi < 0 or hi >= H:
                            continue
                        for v in range(KW):
                            wi = j * sw - pw + v
                            if wi >= 0 and wi < W:
                                acc += x[c, hi, wi]
                    out[c, i, j] = acc * scale

    @njit(cache=True)
    def avgpool_backward_one(gy, KH, KW, sh, sw, ph, pw, gx):
        C, H, W = gx.shape
        Ho, Wo = gy.shape[1], gy.shape[2]
        scale = gy.dtype.type(1.0 / (KH * KW))
        for c in range(C):
            for i in range(Ho):
                for j in range(Wo):
                    g = gy[c, i, j] * scale
                    for u in range(KH):
                        hi = i * sh - ph + u
                        if hi < 0 or hi >= H:
                            continue
                        for v in range(KW):
                            wi = j * sw - pw + v
                            if wi >= 0 and wi < W:
                                gx[c, hi, wi] += g

    # ---- the batch: prange over N -------------------------------------------------
    @njit(parallel=True, cache=True)
    def conv_forward(x, w, b, sh, sw, ph, pw, dh, dw, groups, out):
        for n in prange(x.shape[0]):
            conv_forward_one(x[n], w, b, sh, sw, ph, pw, dh, dw, groups, out[n])
        return out

    @njit(parallel=True, cache=True)
    def conv_backward(gy, x, w, sh, sw, ph, pw, dh, dw, groups, gx, gw_part, gb_part):
        for n in prange(x.shape[0]):
            conv_backward_one(gy[n], x[n], w, sh, sw, ph, pw, dh, dw, groups,
                              gx[n], gw_part[n], gb_part[n])
        return gx

    @njit(parallel=True, cache=True)
    def maxpool_forward(x, KH, KW, sh, sw, ph, pw, dh, dw, out, idx):
        for n in prange(x.shape[0]):
            maxpool_forward_one(x[n], KH, KW, sh, sw, ph, pw, dh, dw, out[n], idx[n])
        return out, idx

    @njit(parallel=True, cache=True)
    def maxpool_backward(gy, idx, gx):
        for n in prange(gx.shape[0]):
            maxpool_backward_one(gy[n], idx[n], gx[n])
        return gx

    @njit(parallel=True, cache=True)
    def avgpool_forward(x, KH, KW, sh, sw, ph, pw, out):
        for n in prange(x.shape[0]):
            avgpool_forward_one(x[n], KH, KW, sh, sw, ph, pw, out[n])
        return out

    @njit(parallel=True, cache=True)
    def avgpool_backward(gy, KH, KW, sh, sw, ph, pw, gx):
        for n in prange(gx.shape[0]):
            avgpool_backward_one(gy[n], KH, KW, sh, sw, ph, pw, gx[n])
        return gx

    _NUMBA_KERNELS = dict(
        numba=numba, conv_forward=conv_forward, conv_backward=conv_backward,
        maxpool_forward=maxpool_forward, maxpool_backward=maxpool_backward,
        avgpool_forward=avgpool_forward, avgpool_backward=avgpool_backward,
    )
    return _NUMBA_KERNELS


class NumbaPeer(Peer):
    name = "numba"
    description = ("numba textbook loops: @njit loop nest per sample, "
                   "@njit(parallel=True) prange over the batch")

    def load(self):
        self.k = _numba_kernels()

    def version(self):
        return self.k["numba"].__version__

    def set_num_threads(self, n):
        numba = self.k["numba"]
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))

    @staticmethod
    def _pads(case):
        p = case["p"]
        if not isinstance(p, int):
            raise Unsupported("only int padding in the numba peer")
        return p

    def setup_conv(self, case, data):
        k = self.k
        x, w, gy = data["x"], data["w"], data["gy"]
        b = data["b"] if data["b"] is not None else np.zeros(w.shape[0], x.dtype)
        s, d, g = case["s"], case["d"], case["groups"]
        p = self._pads(case)
        out_shape = gy.shape

        def forward():
            out = np.empty(out_shape, x.dtype)
            return k["conv_forward"](x, w, b, s, s, p, p, d, d, g, out)

        def forward_backward():
            y = forward()
            N = x.shape[0]
            gw_part = np.zeros((N,) + w.shape, x.dtype)   # one weight gradient per sample
            gb_part = np.zeros((N, w.shape[0]), x.dtype)
            gx = k["conv_backward"](gy, x, w, s, s, p, p, d, d, g, np.zeros_like(x),
                                    gw_part, gb_part)
            return y, (gx, gw_part.sum(axis=0), gb_part.sum(axis=0))

        def outputs():
            y, (gx, gw, gb) = forward_backward()
            return {"y": y, "grad_x": gx, "grad_w": gw, "grad_b": gb}

        return Bound(forward, forward_backward, outputs)

    def setup_maxpool(self, case, data):
        k = self.k
        x, gy = data["x"], data["gy"]
        kk, s, d = case["k"], case["s"], case["d"]
        p = self._pads(case)
        out_shape = gy.shape

        def forward():
            return k["maxpool_forward"](x, kk, kk, s, s, p, p, d, d, np.empty(out_shape, x.dtype),
                                        np.empty(out_shape, np.int64))

        def forward_backward():
            y, idx = forward()
            return y, k["maxpool_backward"](gy, idx, np.zeros_like(x))

        def outputs():
            y, idx = forward()
            return {"y": y, "indices": idx,
                    "grad_x": k["maxpool_backward"](gy, idx, np.zeros_like(x))}

        return Bound(forward, forward_backward, outputs)

    def setup_avgpool(self, case, data):
        k = self.k
        x, gy = data["x"], data["gy"]
        kk, s = case["k"], case["s"]
        p = self._pads(case)
        if case["d"] != 1:
            raise Unsupported("avg pooling has no dilation")
        out_shape = gy.shape

        def forward():
            return k["avgpool_forward"](x, kk, kk, s, s, p, p, np.empty(out_shape, x.dtype))

        def forward_backward():
            return forward(), k["avgpool_backward"](gy, kk, kk, s, s, p, p, np.zeros_like(x))

        def outputs():
            y, gx = forward_backward()
            return {"y": y, "grad_x": gx}

        return Bound(forward, forward_backward, outputs)


# ---------------------------------------------------------------------------
# PyTorch CPU
# ---------------------------------------------------------------------------
class TorchPeer(Peer):
    name = "torch"
    description = ("PyTorch CPU torch.nn.functional; forward under no_grad, "
                   "forward+backward via autograd")

    def load(self):
        import torch
        import torch.nn.functional as F

        self.torch = torch
        self.F = F

    def version(self):
        return self.torch.__version__

    def set_num_threads(self, n):
        self.torch.set_num_threads(n)

    def _leaf(self, a):
        return self.torch.from_numpy(a).requires_grad_(True)

    def setup_conv(self, case, data):
        torch, F = self.torch, self.F
        x, w, b, gy = (torch.from_numpy(data[n]) if data[n] is not None else None
                       for n in ("x", "w", "b", "gy"))
        xl, wl = self._leaf(data["x"]), self._leaf(data["w"])
        bl = self._leaf(data["b"]) if data["b"] is not None else None
        leaves = (xl, wl) if bl is None else (xl, wl, bl)
        kw = dict(stride=case["s"], padding=case["p"], dilation=case["d"], groups=case["groups"])

        def forward():
            with torch.no_grad():
                return F.conv2d(x, w, b, **kw)

        def forward_backward():
            y = F.conv2d(xl, wl, bl, **kw)
            return y, torch.autograd.grad(y, leaves, gy)

        def outputs():
            y, grads = forward_backward()
            out = {"y": y.detach().numpy(), "grad_x": grads[0].numpy(), "grad_w": grads[1].numpy()}
            if bl is not None:
                out["grad_b"] = grads[2].numpy()
            return out

        return Bound(forward, forward_backward, outputs)

    def setup_maxpool(self, case, data):
        torch, F = self.torch, self.F
        x, gy = torch.from_numpy(data["x"]), torch.from_numpy(data["gy"])
        xl = self._leaf(data["x"])
        kw = dict(kernel_size=case["k"], stride=case["s"], padding=case["p"], dilation=case["d"],
                  return_indices=True)

        def forward():
            with torch.no_grad():
                return F.max_pool2d(x, **kw)

        def forward_backward():
            y, idx = F.max_pool2d(xl, **kw)
            return y, torch.autograd.grad(y, (xl,), gy)

        def outputs():
            y, idx = F.max_pool2d(xl, **kw)
            (gx,) = torch.autograd.grad(y, (xl,), gy)
            return {"y": y.detach().numpy(), "indices": idx.numpy(), "grad_x": gx.numpy()}

        return Bound(forward, forward_backward, outputs)

    def setup_avgpool(self, case, data):
        torch, F = self.torch, self.F
        x, gy = torch.from_numpy(data["x"]), torch.from_numpy(data["gy"])
        xl = self._leaf(data["x"])
        kw = dict(kernel_size=case["k"], stride=case["s"], padding=case["p"])

        def forward():
            with torch.no_grad():
                return F.avg_pool2d(x, **kw)

        def forward_backward():
            y = F.avg_pool2d(xl, **kw)
            return y, torch.autograd.grad(y, (xl,), gy)

        def outputs():
            y, (gx,) = forward_backward()
            return {"y": y.detach().numpy(), "grad_x": gx.numpy()}

        return Bound(forward, forward_backward, outputs)


PEERS = {cls.name: cls for cls in (CnnxPeer, CnnxDirectPeer, CnnxGemmPeer, CnnxWinogradPeer,
                                   ReferencePeer, NumpyPeer, NumbaPeer, TorchPeer)}
DEFAULT_PEERS = ("cnnx", "torch", "numpy", "numba", "reference")


def make_peer(name):
    try:
        return PEERS[name]()
    except KeyError:
        raise ValueError(f"unknown peer {name!r}; choose from {', '.join(PEERS)}") from None
