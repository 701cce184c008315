"""cnnx.losses.SoftmaxCrossEntropy."""

import numpy as np
import pytest

from cnnx.losses import SoftmaxCrossEntropy, log_softmax, softmax
from cnnx.testing import numerical_gradient


def _naive(z, y):
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    return -np.mean(np.log(p[np.arange(len(y)), y]))


def test_value_matches_formula():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((7, 4))
    y = rng.integers(0, 4, 7)
    loss = SoftmaxCrossEntropy()
    assert isinstance(loss(z, y), float)
    assert loss.forward(z, y) == pytest.approx(_naive(z, y), rel=1e-12)
    assert SoftmaxCrossEntropy("sum").forward(z, y) == pytest.approx(7 * _naive(z, y), rel=1e-12)
    # uniform logits: log(C)
    assert loss.forward(np.zeros((3, 10)), np.array([0, 5, 9])) == pytest.approx(np.log(10))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_gradient_matches_finite_differences(reduction):
    rng = np.random.default_rng(1)
    z = rng.standard_normal((5, 3)) * 3
    y = np.array([0, 2, 1, 1, 0])
    loss = SoftmaxCrossEntropy(reduction)
    loss.forward(z, y)
    g = loss.backward()
    np.testing.assert_allclose(g, numerical_gradient(lambda v: loss.forward(v, y), z),
                               rtol=1e-6, atol=1e-9)
    loss.forward(z, y)
    np.testing.assert_allclose(loss.backward(2.5), 2.5 * g, rtol=1e-12)


def test_numerically_stable_for_huge_logits():
    z = np.array([[1000.0, 0.0, -1000.0], [-1e4, 1e4, 0.0]])
    y = np.array([0, 0])
    loss = SoftmaxCrossEntropy()
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        value = loss.forward(z, y)
        g = loss.backward()
    assert value == pytest.approx((0 + 2e4) / 2)
    np.testing.assert_allclose(g, [[0, 0, 0], [-0.5, 0.5, 0]], atol=1e-12)
    assert np.all(np.isfinite(log_softmax(z)))
    np.testing.assert_allclose(softmax(z).sum(axis=1), 1)


def test_float32_stays_float32():
    z = np.random.default_rng(2).standard_normal((4, 10)).astype(np.float32)
    loss = SoftmaxCrossEntropy()
    loss.forward(z, np.arange(4))
    assert loss.backward().dtype == np.float32


def test_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    z = rng.standard_normal((6, 5)) * 4
    y = rng.integers(0, 5, 6)
    zt = torch.from_numpy(z).requires_grad_(True)
    lt = torch.nn.functional.cross_entropy(zt, torch.from_numpy(y))
    lt.backward()
    loss = SoftmaxCrossEntropy()
    assert loss.forward(z, y) == pytest.approx(lt.item(), rel=1e-12)
    np.testing.assert_allclose(loss.backward(), zt.grad.numpy(), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("z, y, exc, match", [
    (np.zeros((3, 4)), np.array([0, 1, 4]), ValueError, r"labels must lie in \[0, 4\).*found 4"),
    (np.zeros((3, 4)), np.array([0, -1, 2]), ValueError, r"found -1"),
    (np.zeros((3, 4)), np.array([0, 1]), ValueError, r"labels must have shape \(N,\) = \(3,\)"),
    (np.zeros((3, 4)), np.array([[0, 1, 2]]), ValueError, "labels must have shape"),
    (np.zeros((3, 4)), np.array([0.0, 1.0, 2.0]), TypeError, "labels must be an integer"),
    (np.zeros((3, 4)), np.array([True, False, True]), TypeError, "labels must be an integer"),
    (np.zeros(4), np.array([0]), ValueError, r"logits must be 2-D"),
    (np.zeros((0, 4)), np.zeros(0, dtype=int), ValueError, "non-empty"),
    (np.zeros((2, 2), dtype=complex), np.array([0, 1]), TypeError, "real array"),
])
def test_input_errors(z, y, exc, match):
    with pytest.raises(exc, match=match):
        SoftmaxCrossEntropy().forward(z, y)


def test_backward_before_forward_and_bad_reduction():
    with pytest.raises(RuntimeError, match="before forward"):
        SoftmaxCrossEntropy().backward()
    with pytest.raises(ValueError, match="reduction"):
        SoftmaxCrossEntropy("none")
