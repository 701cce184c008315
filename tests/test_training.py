"""cnnx.training: the loop, the LeNet factory and the train/evaluate commands."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from cnnx import training
from cnnx.cli import main
from cnnx.data import save_idx
from cnnx.losses import SoftmaxCrossEntropy
from cnnx.optim import SGD, Adam

LAST_LINE = re.compile(r"^test accuracy: [01]\.\d{4}$")


def _toy_digits(n=120, hw=8, seed=0, dtype=np.float32):
    """A learnable 3-class problem: a bright bar whose position is the class."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    X = rng.random((n, 1, hw, hw)) * 0.3
    for i, c in enumerate(y):
        X[i, 0, :, 2 * c + 1: 2 * c + 3] += 0.7
    return X.astype(dtype), y


def _small_model(dtype, rng):
    return training.lenet(n_classes=3, input_hw=(8, 8), dtype=dtype, rng=rng, channels=(4, 8),
                          hidden=16, dropout=0.25)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_short_run_lowers_the_loss(dtype):
    X, y = _toy_digits(dtype=dtype)
    model = _small_model(dtype, 0)
    opt = Adam(model, lr=1e-2)
    before = SoftmaxCrossEntropy().forward(model.eval()(X), y)
    history = training.fit(model, SoftmaxCrossEntropy(), opt, X, y, epochs=4, batch_size=16,
                           rng=0, progress=False)
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert history[-1]["loss"] < history[0]["loss"]
    after = SoftmaxCrossEntropy().forward(model.eval()(X), y)
    assert after < 0.5 * before
    assert training.evaluate(model, X, y) > 0.9
    assert all(p.dtype == dtype for p in model.params.values())


def test_float32_and_float64_train_alike():
    X, y = _toy_digits(dtype=np.float64)
    histories = {}
    for dtype in (np.float32, np.float64):
        model = _small_model(dtype, 3)
        opt = SGD(model, lr=0.1, momentum=0.9)
        histories[dtype] = training.fit(model, SoftmaxCrossEntropy(), opt, X.astype(dtype), y,
                                        epochs=3, batch_size=20, rng=1, progress=False)
    for h in histories.values():
        assert h[-1]["loss"] < h[0]["loss"]
    # the same run in both precisions: the first epoch's loss agrees closely
    assert histories[np.float32][0]["loss"] == pytest.approx(histories[np.float64][0]["loss"],
                                                              rel=1e-3)


def test_deterministic_for_a_fixed_seed():
    X, y = _toy_digits()

    def run(seed):
        rng = np.random.default_rng(seed)
        model = _small_model(np.float32, rng)
        opt = Adam(model, lr=1e-2)
        hist = training.fit(model, SoftmaxCrossEntropy(), opt, X, y, 2, 16, rng=rng,
                            progress=False, schedule="cosine")
        return [h["loss"] for h in hist], model.state_dict()

    (l1, s1), (l2, s2), (l3, _) = run(5), run(5), run(6)
    assert l1 == l2
    for k in s1:
        np.testing.assert_array_equal(s1[k], s2[k])
    assert l1 != l3


def test_cosine_schedule_and_lr_restored():
    X, y = _toy_digits(n=20)
    model = _small_model(np.float32, 0)
    opt = SGD(model, lr=0.1)
    seen = []
    original_step = opt.step

    def spy():
        seen.append(opt.lr)
        original_step()

    opt.step = spy
    training.fit(model, SoftmaxCrossEntropy(), opt, X, y, epochs=4, batch_size=20, rng=0,
                 progress=False, schedule="cosine")
    np.testing.assert_allclose(seen, [0.1, 0.1 * (1 + np.cos(np.pi / 4)) / 2, 0.05,
                                      0.1 * (1 + np.cos(3 * np.pi / 4)) / 2])
    assert opt.lr == 0.1
    with pytest.raises(ValueError, match="schedule"):
        training.fit(model, SoftmaxCrossEntropy(), opt, X, y, 1, 4, schedule="step")


def test_progress_without_tqdm_prints_epoch_lines(monkeypatch, capsys):
    monkeypatch.setattr(training, "_tqdm", lambda: None)
    X, y = _toy_digits(n=30)
    model = _small_model(np.float32, 0)
    training.fit(model, SoftmaxCrossEntropy(), Adam(model), X, y, 2, 16, rng=0, progress=True)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    assert re.match(r"epoch 2/2  loss \d+\.\d{4}  train accuracy \d\.\d{4}", lines[1])


def test_fit_and_evaluate_argument_errors():
    X, y = _toy_digits(n=10)
    model = _small_model(np.float32, 0)
    with pytest.raises(ValueError, match="same length"):
        training.fit(model, SoftmaxCrossEntropy(), Adam(model), X, y[:5], 1, 4)
    with pytest.raises(ValueError, match="batch_size"):
        training.fit(model, SoftmaxCrossEntropy(), Adam(model), X, y, 1, 0)
    with pytest.raises(ValueError, match="same length"):
        training.evaluate(model, X[:3], y)


@pytest.mark.parametrize("hw", [(8, 8), (28, 28), (9, 13)])
def test_lenet_fits_input_sizes(hw):
    model = training.lenet(input_hw=hw, rng=0)
    out = model(np.zeros((2, 1, *hw), dtype=np.float32))
    assert out.shape == (2, 10) and out.dtype == np.float32
    kinds = [type(layer).__name__ for layer in model]
    assert kinds == ["Conv2d", "ReLU", "MaxPool2d", "Conv2d", "ReLU", "MaxPool2d", "Flatten",
                     "Dropout", "Linear", "ReLU", "Dropout", "Linear"]
    with pytest.raises(ValueError, match="at least"):
        training.lenet(input_hw=(3, 8))


# --------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------
def _write_tiny_mnist(directory, n_train=40, n_test=20):
    os.makedirs(directory, exist_ok=True)
    X, y = _toy_digits(n_train + n_test, hw=28)
    X = (X[:, 0] / X.max() * 255).astype(np.uint8)
    save_idx(os.path.join(directory, "train-images-idx3-ubyte.gz"), X[:n_train])
    save_idx(os.path.join(directory, "train-labels-idx1-ubyte"), y[:n_train].astype(np.uint8))
    save_idx(os.path.join(directory, "t10k-images-idx3-ubyte"), X[n_train:])
    save_idx(os.path.join(directory, "t10k-labels-idx1-ubyte.gz"), y[n_train:].astype(np.uint8))


def test_cli_train_and_evaluate_digits(tmp_path, capsys):
    pytest.importorskip("sklearn")
    path = tmp_path / "digits_model"
    assert main(["train", "--epochs", "1", "--no-progress", "--seed", "3", "--threads", "1",
                 "--save", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert LAST_LINE.match(out[-1]), out
    assert out[0].startswith("cnnx train: LeNet-style CNN")
    assert f"saved model to {path}.npz" in out
    assert float(out[-1].split()[-1]) > 0.5
    assert main(["evaluate", "--load", f"{path}.npz"]) == 0
    out2 = capsys.readouterr().out.splitlines()
    assert out2[-1] == out[-1]                  # same model, same test split, same accuracy


def test_cli_deterministic_and_options(tmp_path, capsys):
    pytest.importorskip("sklearn")
    args = ["train", "--epochs", "1", "--no-progress", "--batch-size", "64", "--optimizer",
            "sgd", "--lr", "0.05", "--dtype", "float64"]
    assert main(args) == 0
    first = capsys.readouterr().out.splitlines()
    assert main(args) == 0
    second = capsys.readouterr().out.splitlines()
    assert first[-1] == second[-1] and LAST_LINE.match(first[-1])
    assert "float64" in first[0] and "sgd lr=0.05" in first[0] and "batch 64" in first[0]


def test_cli_mnist_round_trip(tmp_path, capsys):
    data_dir = tmp_path / "mnist"
    _write_tiny_mnist(data_dir)
    model_path = tmp_path / "m.npz"
    assert main(["train", "--mnist", str(data_dir), "--epochs", "2", "--batch-size", "8",
                 "--no-progress", "--save", str(model_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert LAST_LINE.match(out[-1])
    assert "on mnist: 40 train / 20 test images 28x28" in out[0]
    assert main(["evaluate", "--load", str(model_path), "--mnist", str(data_dir)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == out[-1]
    # a model trained on MNIST needs --mnist to be evaluated
    assert main(["evaluate", "--load", str(model_path)]) == 2
    assert "trained on MNIST; pass --mnist DIR" in capsys.readouterr().err


def test_cli_errors_are_messages_not_tracebacks(tmp_path, capsys):
    assert main(["train", "--mnist", str(tmp_path / "nope"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cnnx train: error: MNIST directory") and "Traceback" not in err
    assert main(["train", "--mnist", str(tmp_path), "--no-progress"]) == 2
    assert "MNIST files missing" in capsys.readouterr().err
    assert main(["evaluate", "--load", str(tmp_path / "none.npz")]) == 2
    assert "no saved model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--epochs", "0"])
    assert "expected a positive integer" in capsys.readouterr().err


def test_cli_without_sklearn(monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "sklearn" or name.startswith("sklearn."):
            raise ImportError("No module named 'sklearn'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    assert main(["train", "--no-progress"]) == 2
    assert "pip install 'cnnx[examples]'" in capsys.readouterr().err


def test_python_m_cnnx_train(tmp_path):
    pytest.importorskip("sklearn")
    import cnnx

    root = os.path.dirname(os.path.dirname(os.path.abspath(cnnx.__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "cnnx", "train", "--epochs", "1"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert LAST_LINE.match(proc.stdout.splitlines()[-1])
