"""cnnx.optim: SGD and Adam vs PyTorch's update rules."""

import math

import numpy as np
import pytest

from cnnx.layers import Linear, Sequential
from cnnx.optim import SGD, Adam


class _Model:
    """The minimal optimiser interface: params and grads dicts."""

    def __init__(self, params):
        self.params = {k: np.array(v, dtype=np.float64) for k, v in params.items()}
        self.grads = {}


def _grad_fn(step, name, shape):
    # a deterministic gradient sequence, different per step and parameter
    rng = np.random.default_rng(1000 * step + len(name))
    return rng.standard_normal(shape)


def _run(opt_factory, steps=5, dtype=np.float64):
    model = _Model({"w": [[1.0, -2.0], [0.5, 3.0]], "b": [0.1, -0.2]})
    for k in model.params:
        model.params[k] = model.params[k].astype(dtype)
    opt = opt_factory(model)
    for t in range(steps):
        for k, p in model.params.items():
            model.grads[k] = _grad_fn(t, k, p.shape).astype(dtype)
        opt.step()
    return model


def _sgd_by_hand(lr, momentum=0.0, weight_decay=0.0, nesterov=False, steps=5):
    params = {"w": np.array([[1.0, -2.0], [0.5, 3.0]]), "b": np.array([0.1, -0.2])}
    bufs = {}
    for t in range(steps):
        for k, p in params.items():
            g = _grad_fn(t, k, p.shape) + weight_decay * p
            if momentum:
                bufs[k] = g.copy() if t == 0 else momentum * bufs[k] + g
                g = g + momentum * bufs[k] if nesterov else bufs[k]
            params[k] = p - lr * g
    return params


def _adam_by_hand(lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, steps=5):
    params = {"w": np.array([[1.0, -2.0], [0.5, 3.0]]), "b": np.array([0.1, -0.2])}
    m = {k: np.zeros_like(p) for k, p in params.items()}
    v = {k: np.zeros_like(p) for k, p in params.items()}
    b1, b2 = betas
    for t in range(1, steps + 1):
        for k, p in params.items():
            g = _grad_fn(t - 1, k, p.shape) + weight_decay * p
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g * g
            mhat = m[k] / (1 - b1 ** t)
            vhat = v[k] / (1 - b2 ** t)
            params[k] = p - lr * mhat / (np.sqrt(vhat) + eps)
    return params


SGD_CASES = [dict(lr=0.1), dict(lr=0.05, momentum=0.9), dict(lr=0.05, momentum=0.9,
                                                             weight_decay=0.01),
             dict(lr=0.02, momentum=0.8, nesterov=True, weight_decay=0.1)]
ADAM_CASES = [dict(lr=1e-3), dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6),
              dict(lr=3e-3, weight_decay=0.05)]


@pytest.mark.parametrize("kw", SGD_CASES, ids=str)
def test_sgd_matches_hand_computed_rule(kw):
    model = _run(lambda m: SGD(m, **kw))
    expected = _sgd_by_hand(**kw)
    for k in expected:
        np.testing.assert_allclose(model.params[k], expected[k], rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("kw", ADAM_CASES, ids=str)
def test_adam_matches_hand_computed_rule(kw):
    model = _run(lambda m: Adam(m, **kw))
    expected = _adam_by_hand(**kw)
    for k in expected:
        np.testing.assert_allclose(model.params[k], expected[k], rtol=1e-12, atol=1e-15)


def test_sgd_first_step_by_hand():
    model = _Model({"w": [1.0, 2.0]})
    opt = SGD(model, lr=0.5, momentum=0.9, weight_decay=0.1)
    model.grads["w"] = np.array([1.0, -1.0])
    opt.step()                                  # g = [1.1, -0.8]; buf = g
    np.testing.assert_allclose(model.params["w"], [1 - 0.55, 2 + 0.4])
    opt.step()                                  # g = [1.045, -0.76]; buf = 0.9*buf + g
    np.testing.assert_allclose(model.params["w"], [0.45 - 0.5 * (0.99 + 1.045),
                                                   2.4 - 0.5 * (-0.72 - 0.76)])


def test_adam_first_step_is_lr_times_sign():
    model = _Model({"w": [1.0, 2.0, 3.0]})
    model.grads["w"] = np.array([0.3, -5.0, 1e-3])
    Adam(model, lr=0.1, eps=0).step()
    np.testing.assert_allclose(model.params["w"], [0.9, 2.1, 2.9])


def _torch_compare(torch_cls, our_cls, kw, dtype):
    torch = pytest.importorskip("torch")
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    model = _run(lambda m: our_cls(m, **kw), steps=6, dtype=dtype)
    tparams = {"w": torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=tdtype, requires_grad=True),
               "b": torch.tensor([0.1, -0.2], dtype=tdtype, requires_grad=True)}
    topt = torch_cls(list(tparams.values()), **kw)
    for t in range(6):
        for k, p in tparams.items():
            p.grad = torch.from_numpy(_grad_fn(t, k, tuple(p.shape)).astype(dtype))
        topt.step()
    rtol = 1e-12 if dtype == np.float64 else 2e-5
    for k, p in tparams.items():
        assert model.params[k].dtype == dtype
        np.testing.assert_allclose(model.params[k], p.detach().numpy(), rtol=rtol, atol=rtol)


@pytest.mark.torch
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kw", SGD_CASES, ids=str)
def test_sgd_matches_torch(kw, dtype):
    torch = pytest.importorskip("torch")
    _torch_compare(torch.optim.SGD, SGD, kw, dtype)


@pytest.mark.torch
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kw", ADAM_CASES, ids=str)
def test_adam_matches_torch(kw, dtype):
    torch = pytest.importorskip("torch")
    _torch_compare(torch.optim.Adam, Adam, kw, dtype)


def test_updates_layer_params_in_place_and_keeps_float32():
    model = Sequential(Linear(3, 2, rng=0))
    w = model.params["0.weight"]
    w0 = w.copy()
    x = np.ones((4, 3), dtype=np.float32)
    model.backward(np.ones_like(model(x)))
    for opt in (SGD(model, lr=0.1, momentum=0.9), Adam(model, lr=0.1, weight_decay=0.1)):
        opt.step()
        assert model.params["0.weight"] is w and w.dtype == np.float32
        for state in opt.state.values():
            for arr in (state.values() if isinstance(state, dict) else [state]):
                if isinstance(arr, np.ndarray):
                    assert arr.dtype == np.float32
    assert not np.array_equal(w, w0)
    SGD(model, lr=0.1).zero_grad()
    assert all(np.all(g == 0) for g in model.grads.values())


def test_params_without_grads_are_skipped():
    model = _Model({"a": [1.0], "b": [2.0]})
    model.grads["a"] = np.array([1.0])
    Adam(model, lr=0.5).step()
    SGD(model, lr=0.5, momentum=0.9).step()
    assert model.params["b"][0] == 2.0
    assert model.params["a"][0] == pytest.approx(1 - 0.5 - 0.5, abs=1e-7)


@pytest.mark.parametrize("factory, exc, match", [
    (lambda m: SGD(m, lr=-1), ValueError, "lr must be"),
    (lambda m: SGD(m, lr=math.nan), ValueError, "lr must be"),
    (lambda m: SGD(m, lr="fast"), TypeError, "lr must be a number"),
    (lambda m: SGD(m, lr=0.1, nesterov=True), ValueError, "Nesterov"),
    (lambda m: Adam(m, betas=(0.9, 1.0)), ValueError, "betas"),
    (lambda m: Adam(m, betas=0.9), TypeError, "betas"),
    (lambda m: Adam(m, weight_decay=-0.1), ValueError, "weight_decay"),
    (lambda m: SGD(object(), lr=0.1), TypeError, "params and grads"),
])
def test_argument_errors(factory, exc, match):
    with pytest.raises(exc, match=match):
        factory(_Model({"w": [1.0]}))
