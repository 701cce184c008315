"""cnnx.layers: gradients, parameters, saving, repr and errors."""

import math

import numpy as np
import pytest

from cnnx import layers as L
from cnnx.losses import SoftmaxCrossEntropy
from cnnx.testing import numerical_gradient

F64 = np.float64


def _check_layer_gradients(layer, x, rng, rtol=1e-6, atol=1e-8):
    """Backward vs central differences, for the input and every parameter (float64)."""
    y = layer.forward(x)
    g_out = rng.standard_normal(y.shape)
    gx = layer.backward(g_out)
    grads = {k: v.copy() for k, v in layer.grads.items()}

    num_x = numerical_gradient(layer.forward, x, grad_out=g_out)
    np.testing.assert_allclose(gx, num_x, rtol=rtol, atol=atol, err_msg="input gradient")

    for name in list(layer.params):
        original = layer.params[name].copy()

        def f(p, name=name):
            layer.params[name] = p
            return layer.forward(x)

        num_p = numerical_gradient(f, original, grad_out=g_out)
        layer.params[name] = original
        np.testing.assert_allclose(grads[name], num_p, rtol=rtol, atol=atol,
                                   err_msg=f"gradient of {name}")
    assert set(grads) == set(layer.params)


LAYER_CASES = [
    ("conv", lambda: L.Conv2d(2, 3, 3, dtype=F64, rng=0), (2, 2, 5, 5)),
    ("conv-pad-stride", lambda: L.Conv2d(2, 4, (3, 2), stride=(2, 1), padding=1, dtype=F64,
                                         rng=1), (2, 2, 5, 6)),
    ("conv-dilation-groups-nobias", lambda: L.Conv2d(4, 2, 2, dilation=2, groups=2, bias=False,
                                                     dtype=F64, rng=2), (1, 4, 6, 5)),
    ("conv-same", lambda: L.Conv2d(1, 2, 4, padding="same", dtype=F64, rng=3), (2, 1, 5, 5)),
    ("linear", lambda: L.Linear(6, 4, dtype=F64, rng=0), (3, 6)),
    ("linear-3d-nobias", lambda: L.Linear(5, 2, bias=False, dtype=F64, rng=0), (2, 3, 5)),
    ("maxpool", lambda: L.MaxPool2d(2), (2, 3, 6, 6)),
    ("maxpool-overlap-ceil", lambda: L.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
     (1, 2, 6, 7)),
    ("avgpool", lambda: L.AvgPool2d(2), (2, 2, 4, 6)),
    ("avgpool-pad-nocount", lambda: L.AvgPool2d(3, stride=2, padding=1,
                                                count_include_pad=False), (1, 2, 5, 5)),
    ("relu", lambda: L.ReLU(), (2, 3, 4, 4)),
    ("flatten", lambda: L.Flatten(), (2, 3, 2, 2)),
    ("normalize", lambda: L.Normalize([0.5, -1.0], [2.0, 0.25]), (2, 2, 3, 3)),
    ("dropout-eval", lambda: L.Dropout(0.5, rng=0).eval(), (2, 6)),
]


@pytest.mark.parametrize("make, shape", [c[1:] for c in LAYER_CASES],
                         ids=[c[0] for c in LAYER_CASES])
def test_layer_gradients(make, shape):
    rng = np.random.default_rng(42)
    layer = make()
    x = rng.standard_normal(shape)
    if isinstance(layer, (L.ReLU, L.MaxPool2d)):
        # keep finite differences away from kinks and ties
        x = np.sign(x) * (0.1 + np.abs(x)) + rng.permutation(x.size).reshape(shape) * 1e-3
    _check_layer_gradients(layer, x, rng)


def test_dropout_training_mask():
    layer = L.Dropout(0.25, rng=0)
    x = np.ones((200, 50))
    y = layer.forward(x)
    kept = y != 0
    assert 0.70 < kept.mean() < 0.80
    np.testing.assert_allclose(y[kept], 1 / 0.75)
    g = np.arange(x.size, dtype=float).reshape(x.shape)
    np.testing.assert_array_equal(layer.backward(g), g * (y / x))
    layer.eval()
    np.testing.assert_array_equal(layer.forward(x), x)
    with pytest.raises(ValueError, match="p must lie"):
        L.Dropout(1.0)


def test_sequential_with_loss_gradient():
    rng = np.random.default_rng(0)
    model = L.Sequential(
        L.Conv2d(1, 3, 3, padding=1, dtype=F64, rng=rng), L.ReLU(), L.MaxPool2d(2),
        L.Conv2d(3, 4, 3, padding=1, dtype=F64, rng=rng), L.ReLU(), L.AvgPool2d(2),
        L.Flatten(), L.Linear(4, 5, dtype=F64, rng=rng), L.ReLU(), L.Linear(5, 3, dtype=F64,
                                                                            rng=rng))
    loss = SoftmaxCrossEntropy()
    x = rng.standard_normal((4, 1, 4, 4))
    y = np.array([0, 2, 1, 2])
    loss.forward(model.forward(x), y)
    gx = model.backward(loss.backward())
    grads = {k: v.copy() for k, v in model.grads.items()}
    assert list(grads) == ["0.weight", "0.bias", "3.weight", "3.bias", "7.weight", "7.bias",
                           "9.weight", "9.bias"]

    np.testing.assert_allclose(gx, numerical_gradient(lambda v: loss.forward(model(v), y), x),
                               rtol=1e-5, atol=1e-8)
    for name in ["0.weight", "3.bias", "7.weight", "9.bias"]:
        p0 = model.params[name].copy()

        def f(p, name=name):
            model.params[name][...] = p
            return loss.forward(model(x), y)

        num = numerical_gradient(f, p0)
        model.params[name][...] = p0
        np.testing.assert_allclose(grads[name], num, rtol=1e-5, atol=1e-8, err_msg=name)


def test_matches_torch_modules():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    model = L.Sequential(L.Conv2d(2, 4, 3, stride=2, padding=1, dtype=F64, rng=rng), L.ReLU(),
                         L.MaxPool2d(2), L.Flatten(), L.Linear(4 * 2 * 2, 3, dtype=F64, rng=rng))
    tmodel = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, stride=2, padding=1), torch.nn.ReLU(),
                                 torch.nn.MaxPool2d(2), torch.nn.Flatten(),
                                 torch.nn.Linear(16, 3)).double()
    tmodel.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    x = rng.standard_normal((3, 2, 9, 9))
    g = rng.standard_normal((3, 3))
    xt = torch.from_numpy(x).requires_grad_(True)
    yt = tmodel(xt)
    yt.backward(torch.from_numpy(g))
    np.testing.assert_allclose(model(x), yt.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(model.backward(g), xt.grad.numpy(), rtol=1e-12, atol=1e-12)
    for name, p in tmodel.named_parameters():
        np.testing.assert_allclose(model.grads[name], p.grad.numpy(), rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------
# initialisation, dtypes
# --------------------------------------------------------------------------
def test_default_initialisation_bounds_and_seed():
    conv = L.Conv2d(3, 64, (5, 3), rng=0)
    bound = 1 / math.sqrt(3 * 5 * 3)
    for p in conv.params.values():
        assert p.dtype == np.float32
        assert np.abs(p).max() <= bound
        assert np.abs(p).max() > 0.9 * bound
    lin = L.Linear(400, 300, rng=np.random.default_rng(5))
    b = 1 / math.sqrt(400)
    assert np.abs(lin.params["weight"]).max() <= b
    assert abs(lin.params["weight"].std() - b / math.sqrt(3)) < 0.01 * b
    np.testing.assert_array_equal(L.Conv2d(3, 4, 3, rng=7).params["weight"],
                                  L.Conv2d(3, 4, 3, rng=7).params["weight"])
    assert not np.array_equal(L.Conv2d(3, 4, 3, rng=7).params["weight"],
                              L.Conv2d(3, 4, 3, rng=8).params["weight"])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_end_to_end(dtype):
    rng = np.random.default_rng(0)
    model = L.Sequential(L.Normalize(0.5, 0.25), L.Conv2d(1, 2, 3, dtype=dtype, rng=rng),
                         L.ReLU(), L.MaxPool2d(2), L.Flatten(), L.Dropout(0.5, rng=rng),
                         L.Linear(2, 3, dtype=dtype, rng=rng))
    x = rng.random((5, 1, 4, 4))            # float64 data is converted by the first layer
    out = model(x.astype(dtype))
    assert out.dtype == dtype
    loss = SoftmaxCrossEntropy()
    loss.forward(out, np.array([0, 1, 2, 0, 1]))
    g = loss.backward()
    assert g.dtype == dtype
    model.backward(g)
    for name, grad in model.grads.items():
        assert grad.dtype == dtype, name
    assert model.dtype == dtype
    lin = L.Linear(4, 2, dtype=dtype, rng=0)
    assert lin(np.ones((1, 4))).dtype == dtype   # float64 input into a float32 layer


# --------------------------------------------------------------------------
# params / grads, modes
# --------------------------------------------------------------------------
def test_params_in_place_edits_take_effect():
    rng = np.random.default_rng(0)
    model = L.Sequential(L.Conv2d(1, 2, 3, padding=1, rng=rng), L.ReLU(), L.Flatten(),
                         L.Linear(2 * 4 * 4, 3, rng=rng))
    x = rng.random((2, 1, 4, 4)).astype(np.float32)
    model.params["3.weight"][...] = 0
    model.params["3.bias"][...] = [1, 2, 3]
    np.testing.assert_array_equal(model(x), [[1, 2, 3], [1, 2, 3]])
    # assigning a new array also takes effect (and is converted to the layer's dtype)
    model.params["3.bias"] = np.array([5.0, 6.0, 7.0])
    assert model[3].params["bias"].dtype == np.float32
    np.testing.assert_array_equal(model(x), [[5, 6, 7], [5, 6, 7]])
    # the same arrays are reachable through the layer
    assert model.params["0.weight"] is model[0].params["weight"]
    model[0].params["weight"] *= 0
    model[0].params["bias"][...] = -1          # relu kills everything
    model.params["3.weight"][...] = 1
    np.testing.assert_array_equal(model(x), [[5, 6, 7], [5, 6, 7]])
    assert len(model.params) == 4 and model.num_parameters() == 2 * 9 + 2 + 32 * 3 + 3
    with pytest.raises(ValueError, match=r"must have shape \(3,\)"):
        model.params["3.bias"] = np.zeros(4)
    with pytest.raises(KeyError, match="no parameter"):
        model.params["3.gamma"] = np.zeros(3)


def test_zero_grad_and_modes():
    model = L.Sequential(L.Linear(3, 2, rng=0), L.Dropout(0.5, rng=0))
    x = np.ones((4, 3), dtype=np.float32)
    model.backward(np.ones_like(model(x)))
    assert np.any(model.grads["0.weight"] != 0)
    model.zero_grad()
    assert all(np.all(g == 0) for g in model.grads.values())
    assert model.training and model[1].training
    assert model.eval() is model and not model[1].training
    model.train()
    assert model[0].training and model[1].training


# --------------------------------------------------------------------------
# state dicts and files
# --------------------------------------------------------------------------
def _small_model(seed, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return L.Sequential(L.Normalize(0.3, 0.2), L.Conv2d(1, 3, 3, padding=1, dtype=dtype, rng=rng),
                        L.ReLU(), L.MaxPool2d(2), L.AvgPool2d(2, count_include_pad=False),
                        L.Flatten(), L.Dropout(0.5, rng=rng),
                        L.Linear(3 * 2 * 2, 4, dtype=dtype, rng=rng))


def test_state_dict_round_trip():
    a, b = _small_model(0), _small_model(1)
    x = np.random.default_rng(2).random((3, 1, 8, 8)).astype(np.float32)
    a.eval(), b.eval()
    assert not np.array_equal(a(x), b(x))
    sd = a.state_dict()
    sd["1.weight"][...] = sd["1.weight"]        # a copy: editing it leaves the model alone
    sd_copy = a.state_dict()
    sd_copy["1.bias"][...] = 99
    assert not np.any(a.params["1.bias"] == 99)
    w_before = b.params["1.weight"]
    b.load_state_dict(sd)
    assert b.params["1.weight"] is w_before     # loaded in place
    np.testing.assert_array_equal(a(x), b(x))


def test_load_state_dict_errors():
    m = _small_model(0)
    sd = m.state_dict()
    with pytest.raises(KeyError, match=r"missing keys \['7.bias'\]"):
        m.load_state_dict({k: v for k, v in sd.items() if k != "7.bias"})
    with pytest.raises(KeyError, match=r"unexpected keys \['9.weight'\]"):
        m.load_state_dict({**sd, "9.weight": np.zeros(2)})
    with pytest.raises(ValueError, match=r"'7.weight' has shape \(4, 12\) in the model but "
                                         r"\(4, 13\)"):
        m.load_state_dict({**sd, "7.weight": np.zeros((4, 13))})
    m.load_state_dict({"1.bias": np.zeros(3)}, strict=False)
    np.testing.assert_array_equal(m.params["1.bias"], 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_save_load_round_trip(tmp_path, dtype):
    a = _small_model(0, dtype)
    x = np.random.default_rng(2).random((5, 1, 8, 8)).astype(dtype)
    a.eval()
    path = tmp_path / "model.npz"
    a.save(path, metadata={"note": "hi"})
    # rebuilt from the file alone
    b, meta = L.load_model(path, return_metadata=True)
    assert meta == {"note": "hi"}
    assert repr(b) == repr(a)
    b.eval()
    np.testing.assert_array_equal(a(x), b(x))
    assert b(x).dtype == dtype
    # loaded into an existing model
    c = _small_model(5, dtype).load(path)
    c.eval()
    np.testing.assert_array_equal(a(x), c(x))


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no saved model"):
        L.load_model(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="not a .npz file saved by cnnx"):
        L.load_model(bad)
    plain = tmp_path / "plain.npz"
    np.savez(plain, w=np.zeros(3))
    with pytest.raises(ValueError, match="no architecture"):
        L.load_model(plain)
    wrong = tmp_path / "wrong.npz"
    L.Sequential(L.Linear(3, 2, rng=0)).save(wrong)
    with pytest.raises(KeyError, match="missing keys"):
        _small_model(0).load(wrong)


# --------------------------------------------------------------------------
# repr and errors
# --------------------------------------------------------------------------
def test_repr_like_pytorch():
    model = L.Sequential(L.Conv2d(1, 6, 5), L.ReLU(), L.MaxPool2d(2),
                         L.Conv2d(6, 16, 3, stride=2, padding=1, bias=False), L.AvgPool2d(2),
                         L.Flatten(), L.Linear(16, 10))
    assert repr(model) == (
        "Sequential(\n"
        "  (0): Conv2d(1, 6, kernel_size=(5, 5), stride=(1, 1))\n"
        "  (1): ReLU()\n"
        "  (2): MaxPool2d(kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False)\n"
        "  (3): Conv2d(6, 16, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), bias=False)\n"
        "  (4): AvgPool2d(kernel_size=2, stride=2, padding=0)\n"
        "  (5): Flatten(start_dim=1, end_dim=-1)\n"
        "  (6): Linear(in_features=16, out_features=10, bias=True)\n"
        ")")
    assert repr(L.Linear(2, 3, dtype=np.float64)) == (
        "Linear(in_features=2, out_features=3, bias=True, dtype=float64)")
    assert repr(L.Dropout(0.25)) == "Dropout(p=0.25)"
    torch = pytest.importorskip("torch")
    tm = torch.nn.Sequential(torch.nn.Conv2d(1, 6, 5), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                             torch.nn.Conv2d(6, 16, 3, stride=2, padding=1, bias=False),
                             torch.nn.AvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(16, 10))
    assert repr(model) == repr(tm)


@pytest.mark.parametrize("layer", [L.Conv2d(1, 1, 1), L.Linear(1, 1), L.MaxPool2d(2),
                                   L.AvgPool2d(2), L.ReLU(), L.Flatten(), L.Dropout(),
                                   L.Normalize(), L.Sequential(L.ReLU())],
                         ids=lambda layer: type(layer).__name__)
def test_backward_before_forward(layer):
    with pytest.raises(RuntimeError, match="backward.*before forward"):
        layer.backward(np.zeros((1, 1, 2, 2)))


@pytest.mark.parametrize("make, exc, match", [
    (lambda: L.Conv2d(3, 4, 3, groups=2), ValueError, "divisible by groups"),
    (lambda: L.Conv2d(0, 4, 3), ValueError, "in_channels must be a positive int"),
    (lambda: L.Conv2d(1, 4, 0), ValueError, "kernel_size must be positive"),
    (lambda: L.Conv2d(1, 4, 3, padding="full"), ValueError, "padding must be"),
    (lambda: L.Conv2d(1, 4, 3, stride=2, padding="same"), ValueError, "strided"),
    (lambda: L.Conv2d(1, 4, 3, dtype=np.int32), TypeError, "float32 or float64"),
    (lambda: L.Conv2d(1, 4, 3, rng="seed"), TypeError, "rng must be"),
    (lambda: L.Linear(2.5, 3), TypeError, "in_features"),
    (lambda: L.AvgPool2d(2, divisor_override=0), ValueError, "divisor_override"),
    (lambda: L.Normalize(0, 0), ValueError, "std must be positive"),
    (lambda: L.Sequential(L.ReLU(), "relu"), TypeError, "layer 1 must be"),
])
def test_constructor_errors(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_forward_backward_shape_errors():
    lin = L.Linear(4, 2)
    with pytest.raises(ValueError, match=r"in_features=4"):
        lin(np.zeros((3, 5)))
    lin(np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"grad_out must have the shape .* \(3, 2\)"):
        lin.backward(np.zeros((3, 3)))
    conv = L.Conv2d(2, 2, 3)
    with pytest.raises(ValueError):
        conv(np.zeros((1, 3, 5, 5)))            # channel mismatch, reported by functional
    with pytest.raises(TypeError, match="real numeric dtype"):
        L.ReLU()(np.zeros(3, dtype=complex))
    with pytest.raises(ValueError, match="does not fit"):
        L.Flatten(start_dim=3)(np.zeros((2, 3)))
