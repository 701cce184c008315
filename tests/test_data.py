"""cnnx.data: IDX files, MNIST directory loading, scikit-learn's digits split."""

import gzip
import os

import numpy as np
import pytest

from cnnx.data import (DataError, MissingDependencyError, load_digits_split, load_mnist,
                       read_idx, save_idx, stratified_split)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32,
                                   np.float64])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path, dtype, suffix):
    arr = (np.arange(2 * 3 * 4) * 7 % 100).astype(dtype).reshape(2, 3, 4)
    path = tmp_path / f"a-idx3{suffix}"
    save_idx(path, arr)
    back = read_idx(path)
    assert back.dtype == dtype and back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)


def test_idx_layout_is_big_endian_mnist_header(tmp_path):
    path = tmp_path / "labels"
    save_idx(path, np.array([1, 2, 3], dtype=np.int32))
    raw = path.read_bytes()
    assert raw[:4] == bytes([0, 0, 0x0C, 1])
    assert raw[4:8] == (3).to_bytes(4, "big")
    assert raw[8:12] == (1).to_bytes(4, "big")
    gz = tmp_path / "labels.gz"
    save_idx(gz, np.array([1, 2, 3], dtype=np.int32))
    assert gzip.decompress(gz.read_bytes()) == raw


def test_idx_errors(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x00\x01\x08\x01" + (2).to_bytes(4, "big") + b"ab")
    with pytest.raises(DataError, match="bad magic number 0x00010801"):
        read_idx(bad)
    bad.write_bytes(b"\x00\x00\x07\x01" + (2).to_bytes(4, "big") + b"ab")
    with pytest.raises(DataError, match="bad magic number"):
        read_idx(bad)
    bad.write_bytes(b"\x00\x00")
    with pytest.raises(DataError, match="too short"):
        read_idx(bad)
    bad.write_bytes(b"\x00\x00\x08\x03" + (2).to_bytes(4, "big"))
    with pytest.raises(DataError, match="truncated IDX header"):
        read_idx(bad)
    bad.write_bytes(b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + b"abc")
    with pytest.raises(DataError, match=r"shape \(5,\).*holds 3 data bytes"):
        read_idx(bad)
    bad.write_bytes(b"\x00\x00\x08\x01" + (2).to_bytes(4, "big") + b"abc")
    with pytest.raises(DataError, match="holds 3 data bytes"):
        read_idx(bad)
    notgz = tmp_path / "x.gz"
    notgz.write_bytes(b"plain bytes")
    with pytest.raises(DataError, match="cannot read"):
        read_idx(notgz)
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "missing")
    with pytest.raises(TypeError, match="IDX cannot store"):
        save_idx(tmp_path / "u16", np.zeros(3, dtype=np.uint16))


def _write_mnist(directory, n_train=12, n_test=5, hw=(28, 28), gz=False, rng=None):
    rng = np.random.default_rng(0) if rng is None else rng
    os.makedirs(directory, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, *hw), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, *hw), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test).astype(np.uint8),
    }
    for name, arr in arrays.items():
        save_idx(os.path.join(directory, name + (".gz" if gz else "")), arr)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_load_mnist(tmp_path, gz):
    arrays = _write_mnist(tmp_path, gz=gz)
    X, y, Xt, yt = load_mnist(tmp_path)
    assert X.shape == (12, 1, 28, 28) and X.dtype == np.float32
    assert Xt.shape == (5, 1, 28, 28)
    assert y.dtype == np.int64 and yt.dtype == np.int64
    np.testing.assert_allclose(X[:, 0], arrays["train-images-idx3-ubyte"] / 255, rtol=1e-6)
    np.testing.assert_array_equal(yt, arrays["t10k-labels-idx1-ubyte"])
    assert 0 <= X.min() and X.max() <= 1
    assert load_mnist(str(tmp_path), dtype=np.float64)[0].dtype == np.float64


def test_load_mnist_dotted_names(tmp_path):
    arrays = _write_mnist(tmp_path)
    for name in arrays:
        os.rename(tmp_path / name, tmp_path / name.replace("-idx", ".idx"))
    assert load_mnist(tmp_path)[0].shape == (12, 1, 28, 28)


def test_load_mnist_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_mnist(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte, train-labels"):
        load_mnist(tmp_path)
    _write_mnist(tmp_path)
    save_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(4, dtype=np.uint8))
    with pytest.raises(DataError, match="5 images .* but 4 labels"):
        load_mnist(tmp_path)
    save_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(5, dtype=np.uint8))
    save_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((5, 28, 28), dtype=np.float32))
    with pytest.raises(DataError, match="expected 3-D uint8 images"):
        load_mnist(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"\x08\x03\x00\x00")
    with pytest.raises(DataError, match="bad magic number"):
        load_mnist(tmp_path)


def test_stratified_split():
    labels = np.repeat(np.arange(3), [10, 20, 5])
    train, test = stratified_split(labels, 0.2, seed=0)
    assert np.bincount(labels[test]).tolist() == [2, 4, 1]
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(35))
    t2 = stratified_split(labels, 0.2, seed=0)[1]
    np.testing.assert_array_equal(test, t2)
    assert not np.array_equal(test, stratified_split(labels, 0.2, seed=1)[1])
    with pytest.raises(ValueError, match="test_fraction"):
        stratified_split(labels, 1.0, 0)


def test_digits_split():
    pytest.importorskip("sklearn")
    X, y, Xt, yt = load_digits_split()
    assert X.shape == (1438, 1, 8, 8) and Xt.shape == (359, 1, 8, 8)
    assert X.dtype == np.float32 and y.dtype == np.int64
    assert X.min() == 0 and X.max() == 1 and Xt.max() <= 1
    counts = np.bincount(yt)
    assert counts.size == 10 and counts.min() >= 35 and counts.max() <= 37
    # deterministic, and a different seed gives a different split of the same images
    X2, y2, Xt2, yt2 = load_digits_split(seed=0)
    np.testing.assert_array_equal(Xt, Xt2)
    np.testing.assert_array_equal(yt, yt2)
    X3, _, Xt3, _ = load_digits_split(seed=1, test_fraction=0.5, dtype=np.float64)
    assert Xt3.dtype == np.float64 and abs(len(Xt3) - 1797 / 2) < 10
    assert not np.array_equal(load_digits_split(seed=1)[2], Xt)


def test_digits_without_sklearn(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "sklearn" or name.startswith("sklearn."):
            raise ImportError("No module named 'sklearn'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(MissingDependencyError, match=r"pip install 'cnnx\[examples\]'"):
        load_digits_split()
