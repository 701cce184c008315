"""Handwritten-digit data sets: scikit-learn's bundled digits and MNIST IDX files.

* :func:`load_digits_split` -- the 1797 8x8 images shipped inside scikit-learn
  (``sklearn.datasets.load_digits``, no download), with a fixed stratified
  train/test split.
* :func:`load_mnist` -- MNIST from the four IDX files (plain or ``.gz``) in a
  directory you downloaded them to.
* :func:`read_idx` / :func:`save_idx` -- the IDX format itself.

Images come back as ``(N, 1, H, W)`` float arrays scaled to ``[0, 1]`` and
labels as ``int64`` arrays.
"""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np

__all__ = [
    "DataError",
    "MissingDependencyError",
    "load_digits_split",
    "load_mnist",
    "read_idx",
    "save_idx",
    "stratified_split",
]


class DataError(ValueError):
    """A data file is missing or malformed (the message says which and why)."""


class MissingDependencyError(ImportError):
    """An optional dependency needed for this data set is not installed."""


# --------------------------------------------------------------------------
# scikit-learn's digits
# --------------------------------------------------------------------------
def stratified_split(labels, test_fraction, seed):
    """Indices ``(train, test)`` of a stratified split.

    For each class ``c`` (in increasing order) its indices are shuffled with
    ``numpy.random.default_rng(seed)`` and the first ``round(test_fraction *
    n_c)`` go to the test set. Both index arrays are returned sorted.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(idx.size)]
        n_test = int(round(test_fraction * idx.size))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def load_digits_split(seed=0, test_fraction=0.2, dtype=np.float32):
    """scikit-learn's 8x8 handwritten digits, split into train and test sets.

    Returns ``(X_train, y_train, X_test, y_test)``: images ``(N, 1, 8, 8)`` of
    ``dtype`` scaled from the original 0..16 to ``[0, 1]``, labels ``int64``
    in 0..9. The split is stratified by class (see :func:`stratified_split`)
    and depends only on ``seed`` and ``test_fraction``: with the defaults,
    1438 training and 359 test images (35 to 37 of each digit).

    Needs scikit-learn (``pip install 'cnnx[examples]'``); raises
    :class:`MissingDependencyError` with that hint when it is missing.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise MissingDependencyError(
            "the digits data set comes with scikit-learn, which is not installed: "
            "pip install 'cnnx[examples]' (or pip install scikit-learn), "
            "or train on MNIST files with --mnist DIR") from None
    digits = load_digits()
    X = (np.asarray(digits.images, dtype=np.float64) / 16.0).astype(dtype)[:, None, :, :]
    y = np.asarray(digits.target, dtype=np.int64)
    train, test = stratified_split(y, test_fraction, seed)
    return X[train], y[train], X[test], y[test]


# --------------------------------------------------------------------------
# IDX files
# --------------------------------------------------------------------------
# type code -> big-endian dtype (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT")
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_CODES = {(dt.kind, dt.itemsize): code for code, dt in _IDX_DTYPES.items()}


def _open(path, mode):
    path = os.fspath(path)
    if path.endswith(".gz"):
        return gzip.open(path, mode)
    return open(path, mode)


def read_idx(path):
    """Read an IDX file (plain or gzip-compressed when the name ends in ``.gz``).

    Layout: two zero bytes, a type code (0x08 ubyte, 0x09 byte, 0x0B int16,
    0x0C int32, 0x0D float32, 0x0E float64), the number of dimensions, then
    each dimension as a big-endian uint32, then the data in C order,
    big-endian. Raises :class:`DataError` when the header is wrong or the
    data size does not match the dimensions.
    """
    path = os.fspath(path)
    try:
        with _open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        if isinstance(exc, FileNotFoundError):
            raise
        raise DataError(f"{path}: cannot read the file ({exc})") from None
    if len(raw) < 4:
        raise DataError(f"{path}: too short for an IDX file ({len(raw)} bytes)")
    zero0, zero1, code, ndim = raw[0], raw[1], raw[2], raw[3]
    if zero0 != 0 or zero1 != 0 or code not in _IDX_DTYPES:
        raise DataError(
            f"{path}: not an IDX file: bad magic number 0x{raw[:4].hex()} (expected "
            f"0x0000TTDD with type TT in {sorted(hex(c) for c in _IDX_DTYPES)})")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header ({ndim} dimensions need {header} "
                        f"bytes, the file has {len(raw)})")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: IDX header says shape {shape} of {dtype.name} ({expected} data bytes) "
            f"but the file holds {len(raw) - header} data bytes")
    arr = np.frombuffer(raw, dtype=dtype, offset=header, count=expected // dtype.itemsize)
    return arr.reshape(shape).astype(dtype.newbyteorder("="))


def save_idx(path, array):
    """Write ``array`` as an IDX file (gzip-compressed when ``path`` ends in ``.gz``).

    Supported dtypes: uint8, int8, int16, int32, float32, float64.
    """
    arr = np.asarray(array)
    code = _IDX_CODES.get((arr.dtype.kind, arr.dtype.itemsize))
    if code is None or arr.dtype.kind == "u" and arr.dtype.itemsize != 1:
        raise TypeError(f"IDX cannot store dtype {arr.dtype}; use uint8, int8, int16, int32, "
                        "float32 or float64")
    if arr.ndim > 255:
        raise ValueError("IDX stores at most 255 dimensions")
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data = np.ascontiguousarray(arr, dtype=_IDX_DTYPES[code]).tobytes()
    with _open(path, "wb") as f:
        f.write(header + data)


_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _find(directory, stem):
    # the usual names, the ".gz" downloads and the "train-images.idx3-ubyte" variant
    dotted = stem.replace("-idx", ".idx")
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        p = os.path.join(directory, name)
        if os.path.isfile(p):
            return p
    return None


def load_mnist(directory, dtype=np.float32):
    """MNIST (or any data set in MNIST's layout, e.g. Fashion-MNIST) from IDX files.

    ``directory`` must hold ``train-images-idx3-ubyte``,
    ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
    ``t10k-labels-idx1-ubyte``, each plain or ``.gz``. Returns ``(X_train,
    y_train, X_test, y_test)``: images ``(N, 1, H, W)`` of ``dtype`` scaled
    from 0..255 to ``[0, 1]``, labels ``int64``. Raises
    :class:`FileNotFoundError` naming the missing files and
    :class:`DataError` for malformed ones.
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"MNIST directory {directory!r} does not exist")
    paths = {key: _find(directory, stem) for key, stem in _MNIST_FILES.items()}
    missing = [_MNIST_FILES[k] for k, p in paths.items() if p is None]
    if missing:
        raise FileNotFoundError(
            f"MNIST files missing in {directory!r}: {', '.join(missing)} (plain or .gz); "
            "download the four IDX files of the MNIST database into that directory")

    out = []
    for split in ("train", "test"):
        ipath, lpath = paths[f"{split}_images"], paths[f"{split}_labels"]
        images, labels = read_idx(ipath), read_idx(lpath)
        if images.ndim != 3 or images.dtype != np.uint8:
            raise DataError(f"{ipath}: expected 3-D uint8 images (N, H, W), got "
                            f"{images.ndim}-D {images.dtype} of shape {images.shape}")
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise DataError(f"{lpath}: expected 1-D integer labels, got {labels.ndim}-D "
                            f"{labels.dtype} of shape {labels.shape}")
        if labels.shape[0] != images.shape[0]:
            raise DataError(f"{split} set: {images.shape[0]} images in {ipath} but "
                            f"{labels.shape[0]} labels in {lpath}")
        X = (images.astype(np.float32) / np.float32(255)).astype(dtype, copy=False)[:, None]
        out += [X, labels.astype(np.int64)]
    if out[0].shape[2:] != out[2].shape[2:]:
        raise DataError(f"train images are {out[0].shape[2:]} but test images "
                        f"{out[2].shape[2:]}")
    return tuple(out)
