"""Loss functions: softmax cross-entropy on integer class labels.

``SoftmaxCrossEntropy`` is ``torch.nn.CrossEntropyLoss`` on logits::

    loss = mean_n [ logsumexp(z_n) - z_n[y_n] ]
    d loss / d z_n = (softmax(z_n) - onehot(y_n)) / N

``logsumexp`` subtracts the row maximum first, so large logits do not overflow.
The loss is computed in the logits' dtype (float32 stays float32).
"""

from __future__ import annotations

import numpy as np

__all__ = ["SoftmaxCrossEntropy", "log_softmax", "softmax"]


def log_softmax(z, axis=-1):
    """Numerically stable ``z - logsumexp(z)`` along ``axis``."""
    z = np.asarray(z)
    shifted = z - z.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def softmax(z, axis=-1):
    """Numerically stable softmax along ``axis``."""
    z = np.asarray(z)
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


class SoftmaxCrossEntropy:
    """Softmax followed by the negative log-likelihood of the true class.

    ``forward(logits, labels)`` (also ``loss(logits, labels)``) takes logits of
    shape ``(N, C)`` and integer labels of shape ``(N,)`` with values in
    ``[0, C)``, and returns the loss as a Python float (mean over the batch,
    or the sum with ``reduction="sum"``). ``backward()`` returns the gradient
    with respect to the logits, shape ``(N, C)``, in the logits' dtype.
    """

    def __init__(self, reduction="mean"):
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        self.reduction = reduction
        self._cache = None

    def __call__(self, logits, labels):
        return self.forward(logits, labels)

    @staticmethod
    def _check(logits, labels):
        z = np.asarray(logits)
        if z.dtype.kind not in "biuf":
            raise TypeError(f"logits must be a real array, got dtype {z.dtype}")
        if z.dtype.kind != "f":
            z = z.astype(np.float64)
        if z.ndim != 2:
            raise ValueError(f"logits must be 2-D (N, C), got shape {z.shape}")
        N, C = z.shape
        if N == 0 or C == 0:
            raise ValueError(f"logits must be non-empty, got shape {z.shape}")
        y = np.asarray(labels)
        if y.dtype.kind not in "iu":
            raise TypeError(f"labels must be an integer array, got dtype {y.dtype}")
        if y.shape != (N,):
            raise ValueError(f"labels must have shape (N,) = ({N},) to match logits "
                             f"{z.shape}, got {y.shape}")
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= C:
            bad = lo if lo < 0 else hi
            raise ValueError(f"labels must lie in [0, {C}) for {C} classes, found {bad}")
        return z, y.astype(np.intp, copy=False)

    def forward(self, logits, labels):
        z, y = self._check(logits, labels)
        logp = log_softmax(z, axis=1)
        rows = np.arange(z.shape[0])
        total = -logp[rows, y].sum(dtype=z.dtype)
        self._cache = (logp, y)
        if self.reduction == "mean":
            return float(total / z.shape[0])
        return float(total)

    def backward(self, grad=1.0):
        """Gradient of ``grad * loss`` with respect to the logits."""
        if self._cache is None:
            raise RuntimeError("SoftmaxCrossEntropy.backward() called before forward()")
        logp, y = self._cache
        g = np.exp(logp)
        g[np.arange(g.shape[0]), y] -= 1
        scale = grad / g.shape[0] if self.reduction == "mean" else grad
        g *= g.dtype.type(scale)
        return g

    def __repr__(self):
        return ("SoftmaxCrossEntropy()" if self.reduction == "mean"
                else f"SoftmaxCrossEntropy(reduction={self.reduction!r})")
