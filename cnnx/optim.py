"""Optimisers: SGD (momentum, Nesterov, weight decay) and Adam, PyTorch's rules.

Both take a model (anything with ``params`` and ``grads`` mappings, e.g. a
:class:`cnnx.layers.Sequential`) and update ``model.params`` in place from
``model.grads`` on each :meth:`step`. A parameter without a gradient is
skipped, as PyTorch skips parameters whose ``.grad`` is ``None``.

SGD (``torch.optim.SGD``), with ``g = grad + weight_decay * p``::

    buf = g                                   (first step)
    buf = momentum * buf + (1 - dampening) * g  (later steps)
    g   = g + momentum * buf  if nesterov else buf      (when momentum != 0)
    p  -= lr * g

Adam (``torch.optim.Adam``, L2 weight decay added to the gradient), step t::

    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    p -= lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

State buffers have the parameter's dtype, so float32 models stay float32.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["SGD", "Adam", "Optimizer"]


def _nonnegative(value, name):
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


class Optimizer:
    """Base class: holds the model and per-parameter state keyed by name."""

    def __init__(self, model):
        if not hasattr(model, "params") or not hasattr(model, "grads"):
            raise TypeError(f"the optimiser needs a model with params and grads, got "
                            f"{type(model).__name__}")
        self.model = model
        self.state = {}
        self.step_count = 0

    def _pairs(self):
        grads = self.model.grads
        for name, p in self.model.params.items():
            g = grads.get(name)
            if g is None:
                continue
            if g.shape != p.shape:
                raise ValueError(f"gradient {name!r} has shape {g.shape}, parameter has "
                                 f"shape {p.shape}")
            yield name, p, g

    def zero_grad(self):
        """Set every gradient of the model to zero."""
        for g in self.model.grads.values():
            g[...] = 0

    def step(self):  # pragma: no cover - abstract
        raise NotImplementedError


class SGD(Optimizer):
    """Stochastic gradient descent, ``torch.optim.SGD``'s update rule."""

    def __init__(self, model, lr, momentum=0.0, weight_decay=0.0, nesterov=False, dampening=0.0):
        super().__init__(model)
        self.lr = _nonnegative(lr, "lr")
        self.momentum = _nonnegative(momentum, "momentum")
        self.weight_decay = _nonnegative(weight_decay, "weight_decay")
        self.dampening = float(dampening)
        self.nesterov = bool(nesterov)
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("Nesterov momentum requires momentum > 0 and dampening = 0")

    def step(self):
        self.step_count += 1
        for name, p, g in self._pairs():
            if self.weight_decay:
                g = g + p.dtype.type(self.weight_decay) * p
            if self.momentum:
                buf = self.state.get(name)
                if buf is None:
                    buf = np.array(g, dtype=p.dtype, copy=True)
                    self.state[name] = buf
                else:
                    buf *= p.dtype.type(self.momentum)
                    buf += p.dtype.type(1 - self.dampening) * g
                g = g + p.dtype.type(self.momentum) * buf if self.nesterov else buf
            p -= p.dtype.type(self.lr) * g

    def __repr__(self):
        return (f"SGD(lr={self.lr}, momentum={self.momentum}, weight_decay={self.weight_decay}, "
                f"nesterov={self.nesterov})")


class Adam(Optimizer):
    """Adam, ``torch.optim.Adam``'s update rule (``amsgrad=False``)."""

    def __init__(self, model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(model)
        self.lr = _nonnegative(lr, "lr")
        try:
            b1, b2 = betas
        except (TypeError, ValueError):
            raise TypeError(f"betas must be a pair of floats, got {betas!r}") from None
        b1, b2 = float(b1), float(b2)
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ValueError(f"betas must lie in [0, 1), got {betas!r}")
        self.betas = (b1, b2)
        self.eps = _nonnegative(eps, "eps")
        self.weight_decay = _nonnegative(weight_decay, "weight_decay")

    def step(self):
        self.step_count += 1
        b1, b2 = self.betas
        for name, p, g in self._pairs():
            t = p.dtype.type
            if self.weight_decay:
                g = g + t(self.weight_decay) * p
            st = self.state.get(name)
            if st is None:
                st = {"step": 0, "m": np.zeros_like(p), "v": np.zeros_like(p)}
                self.state[name] = st
            st["step"] += 1
            k = st["step"]
            m, v = st["m"], st["v"]
            m *= t(b1)
            m += t(1 - b1) * g
            v *= t(b2)
            v += t(1 - b2) * (g * g)
            bc1 = 1 - b1 ** k
            bc2 = 1 - b2 ** k
            denom = np.sqrt(v) / t(math.sqrt(bc2))
            denom += t(self.eps)
            p -= t(self.lr / bc1) * (m / denom)

    def __repr__(self):
        return (f"Adam(lr={self.lr}, betas={self.betas}, eps={self.eps}, "
                f"weight_decay={self.weight_decay})")
