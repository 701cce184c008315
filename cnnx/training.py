"""Training loop, a LeNet-style model and the ``cnnx train`` / ``cnnx evaluate`` commands.

>>> import numpy as np
>>> from cnnx import data, training, losses, optim
>>> X, y, X_test, y_test = data.load_digits_split()       # (1438, 1, 8, 8) float32, ...
>>> rng = np.random.default_rng(0)
>>> model = training.lenet(input_hw=(8, 8), rng=rng, normalize=(X.mean(), X.std()))
>>> opt = optim.Adam(model, lr=3e-3)
>>> history = training.fit(model, losses.SoftmaxCrossEntropy(), opt, X, y, epochs=50,
...                        batch_size=32, rng=rng, schedule="cosine")   # doctest: +SKIP
>>> training.evaluate(model, X_test, y_test)                           # doctest: +SKIP
0.98...

This is what ``cnnx train`` runs with its defaults (see ``DEFAULTS``).
"""

from __future__ import annotations

import math
import os
import sys
import time

import numpy as np

from . import layers as L
from .losses import SoftmaxCrossEntropy
from .optim import SGD, Adam

__all__ = ["evaluate", "fit", "lenet", "predict", "register", "DEFAULTS"]

# Defaults of ``cnnx train`` (tuned for scikit-learn's 8x8 digits on 2 cores).
DEFAULTS = {
    "epochs": 50,          # on MNIST (60000 images per epoch) the default is 3
    "epochs_mnist": 3,
    "batch_size": 32,
    "optimizer": "adam",
    "lr": {"adam": 3e-3, "sgd": 0.05},
    "schedule": "cosine",
    "momentum": 0.9,
    "seed": 0,
    "dtype": "float32",
    "channels": (32, 64),
    "hidden": 256,
    "dropout": 0.5,
}
_SPLIT_SEED = 0          # the digits train/test split never depends on --seed
_TEST_FRACTION = 0.2


# --------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------
def lenet(in_channels=1, n_classes=10, input_hw=(8, 8), dtype=np.float32, rng=None,
          channels=DEFAULTS["channels"], hidden=DEFAULTS["hidden"], kernel_size=3,
          dropout=DEFAULTS["dropout"], normalize=None):
    """A LeNet-style CNN for small grey images.

    ``[normalize] -> conv(k, pad k//2) -> relu -> maxpool 2 -> conv(k, pad k//2)
    -> relu -> maxpool 2 -> flatten -> [dropout] -> linear(hidden) -> relu ->
    [dropout] -> linear(n_classes)``. The padded convolutions keep the image size, each
    pooling halves it (rounding down), so it fits 8x8 digits (8 -> 4 -> 2) as
    well as 28x28 MNIST (28 -> 14 -> 7). ``normalize=(mean, std)`` prepends a
    fixed :class:`~cnnx.layers.Normalize`; ``dropout=0`` drops the dropout.
    """
    if isinstance(input_hw, int):
        input_hw = (input_hw, input_hw)
    H, W = (int(v) for v in input_hw)
    if H < 4 or W < 4:
        raise ValueError(f"input_hw must be at least (4, 4) for two 2x2 poolings, got {input_hw}")
    if kernel_size % 2 != 1:
        raise ValueError(f"kernel_size must be odd so padding keeps the size, got {kernel_size}")
    c1, c2 = (int(c) for c in channels)
    rng = L._as_rng(rng)
    pad = kernel_size // 2
    h, w = H // 2 // 2, W // 2 // 2
    head = [L.Normalize(*normalize)] if normalize is not None else []

    def drop():
        return [L.Dropout(dropout, rng=rng)] if dropout else []

    return L.Sequential(
        *head,
        L.Conv2d(in_channels, c1, kernel_size, padding=pad, dtype=dtype, rng=rng),
        L.ReLU(),
        L.MaxPool2d(2),
        L.Conv2d(c1, c2, kernel_size, padding=pad, dtype=dtype, rng=rng),
        L.ReLU(),
        L.MaxPool2d(2),
        L.Flatten(),
        *drop(),
        L.Linear(c2 * h * w, hidden, dtype=dtype, rng=rng),
        L.ReLU(),
        *drop(),
        L.Linear(hidden, n_classes, dtype=dtype, rng=rng),
    )


# --------------------------------------------------------------------------
# loop
# --------------------------------------------------------------------------
def _single_threaded_blas():
    """Keep NumPy's BLAS on one thread while the cnnx kernels run theirs.

    The dense layers' small matrix products gain nothing from BLAS threads,
    and BLAS threads spinning next to the kernels' OpenMP threads on the same
    cores slowed training several-fold (measured on 2 cores).
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _tqdm():
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm


def _check_xy(X, y):
    X = np.asarray(X)
    y = np.asarray(y)
    if X.ndim < 2 or y.ndim != 1 or X.shape[0] != y.shape[0]:
        raise ValueError(f"X (N, ...) and y (N,) must have the same length, got X {X.shape} "
                         f"and y {y.shape}")
    if X.shape[0] == 0:
        raise ValueError("X and y are empty")
    return X, y


def fit(model, loss, optimizer, X, y, epochs, batch_size, rng=None, progress=True, file=None,
        schedule=None):
    """Mini-batch training: each epoch visits the samples in a fresh random order.

    Per batch: ``logits = model(x)``, ``loss(logits, y)``, ``model.backward(
    loss.backward())``, ``optimizer.step()``. ``rng`` (int seed or Generator)
    drives the shuffling, so a fixed seed gives the same run. ``progress``:
    a tqdm bar per epoch when tqdm is installed, else one line per epoch on
    ``file`` (stdout); ``False`` prints nothing. ``schedule="cosine"`` sets
    the learning rate of epoch ``e`` (0-based) to ``lr * (1 + cos(pi*e/epochs))/2``;
    ``None`` keeps ``optimizer.lr``, which is restored at the end either way.

    Returns a list of per-epoch dicts ``{"epoch", "loss", "accuracy",
    "seconds"}`` (mean training loss and accuracy over the epoch).
    """
    X, y = _check_xy(X, y)
    if isinstance(epochs, bool) or int(epochs) != epochs or epochs < 0:
        raise ValueError(f"epochs must be a non-negative int, got {epochs!r}")
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    epochs, batch_size = int(epochs), int(batch_size)
    if schedule not in (None, "cosine"):
        raise ValueError(f"schedule must be None or 'cosine', got {schedule!r}")
    rng = L._as_rng(rng)
    base_lr = optimizer.lr
    try:
        with _single_threaded_blas():
            return _fit(model, loss, optimizer, X, y, epochs, batch_size, rng, progress, file,
                        schedule, base_lr)
    finally:
        optimizer.lr = base_lr


def _fit(model, loss, optimizer, X, y, epochs, batch_size, rng, progress, file, schedule,
         base_lr):
    file = sys.stdout if file is None else file
    tqdm = _tqdm() if progress else None
    n = X.shape[0]
    n_batches = -(-n // batch_size)
    history = []
    model.train()
    bar = None
    if tqdm is not None:
        bar = tqdm(total=epochs * n_batches, unit="batch", leave=True, dynamic_ncols=True,
                   desc="training")
    try:
        for epoch in range(1, epochs + 1):
            if schedule == "cosine":
                optimizer.lr = base_lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / epochs))
            t0 = time.perf_counter()
            order = rng.permutation(n)
            total_loss, correct, seen = 0.0, 0, 0
            if bar is not None:
                bar.set_description(f"epoch {epoch}/{epochs}", refresh=False)
            for b in range(n_batches):
                idx = order[b * batch_size:(b + 1) * batch_size]
                xb, yb = X[idx], y[idx]
                logits = model.forward(xb)
                value = loss.forward(logits, yb)
                model.backward(loss.backward())
                optimizer.step()
                total_loss += value * len(idx)
                correct += int((logits.argmax(axis=1) == yb).sum())
                seen += len(idx)
                if bar is not None:
                    if b % 5 == 4 or b == n_batches - 1:
                        bar.set_postfix(loss=f"{total_loss / seen:.4f}",
                                        acc=f"{correct / seen:.4f}", refresh=False)
                    bar.update(1)
            record = {"epoch": epoch, "loss": total_loss / seen, "accuracy": correct / seen,
                      "seconds": time.perf_counter() - t0}
            if not np.isfinite(record["loss"]):
                raise FloatingPointError(
                    f"training diverged at epoch {epoch} (loss {record['loss']}); lower the "
                    "learning rate")
            history.append(record)
            if progress and bar is None:
                print(f"epoch {epoch}/{epochs}  loss {record['loss']:.4f}  "
                      f"train accuracy {record['accuracy']:.4f}  ({record['seconds']:.1f} s)",
                      file=file, flush=True)
    finally:
        if bar is not None:
            bar.close()
    return history


def predict(model, X, batch_size=512):
    """Predicted class of every sample (argmax of the logits), in evaluation mode."""
    X = np.asarray(X)
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        with _single_threaded_blas():
            out = [model.forward(X[i:i + batch_size]).argmax(axis=1)
                   for i in range(0, X.shape[0], batch_size)]
    finally:
        model.train(was_training)
    return np.concatenate(out) if out else np.zeros(0, dtype=np.intp)


def evaluate(model, X, y, batch_size=512):
    """Accuracy (fraction of correctly classified samples) of ``model`` on ``(X, y)``."""
    X, y = _check_xy(X, y)
    return float(np.mean(predict(model, X, batch_size) == y))


# --------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------
class _CLIError(Exception):
    """An error reported as one line on stderr (exit status 2), not a traceback."""


def _load_data(mnist, dtype):
    from .data import DataError, MissingDependencyError, load_digits_split, load_mnist

    try:
        if mnist:
            return "mnist", load_mnist(mnist, dtype=dtype)
        return "digits", load_digits_split(seed=_SPLIT_SEED, test_fraction=_TEST_FRACTION,
                                           dtype=dtype)
    except (MissingDependencyError, FileNotFoundError, DataError) as exc:
        raise _CLIError(str(exc)) from None


def _set_threads(n):
    if n is not None:
        from . import set_num_threads

        set_num_threads(n)


def _positive(text):
    import argparse

    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def _positive_float(text):
    import argparse

    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not v > 0 or not np.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return v


def _npz_path(path):
    path = os.fspath(path)
    return path if path.endswith(".npz") else path + ".npz"


def _run(func):
    def wrapper(args):
        try:
            return func(args)
        except _CLIError as exc:
            print(f"cnnx {args.command}: error: {exc}", file=sys.stderr)
            return 2
    return wrapper


@_run
def _train_command(args):
    dtype = np.dtype(args.dtype)
    _set_threads(args.threads)
    from . import get_num_threads

    dataset, (X, y, X_test, y_test) = _load_data(args.mnist, dtype)
    if args.epochs is None:
        args.epochs = DEFAULTS["epochs_mnist"] if args.mnist else DEFAULTS["epochs"]
    hw = tuple(int(v) for v in X.shape[2:])
    n_classes = int(max(y.max(), y_test.max())) + 1
    lr = args.lr if args.lr is not None else DEFAULTS["lr"][args.optimizer]
    rng = np.random.default_rng(args.seed)
    # the model standardises its input with the training set's statistics (kept in the model)
    stats = (float(X.mean(dtype=np.float64)), float(X.std(dtype=np.float64)))
    model = lenet(in_channels=X.shape[1], n_classes=n_classes, input_hw=hw, dtype=dtype, rng=rng,
                  normalize=stats)
    if args.optimizer == "adam":
        opt = Adam(model, lr=lr)
        opt_text = f"adam lr={lr:g}"
    else:
        opt = SGD(model, lr=lr, momentum=DEFAULTS["momentum"])
        opt_text = f"sgd lr={lr:g} momentum={DEFAULTS['momentum']:g}"
    print(f"cnnx train: LeNet-style CNN ({model.num_parameters()} parameters, {dtype.name}) "
          f"on {dataset}: {len(y)} train / {len(y_test)} test images {hw[0]}x{hw[1]}; "
          f"{opt_text} ({DEFAULTS['schedule']} schedule), batch {args.batch_size}, "
          f"{args.epochs} epochs, seed {args.seed}, "
          f"{get_num_threads()} threads", flush=True)
    t0 = time.perf_counter()
    history = fit(model, SoftmaxCrossEntropy(), opt, X, y, args.epochs, args.batch_size,
                  rng=rng, progress=not args.no_progress, schedule=DEFAULTS["schedule"])
    seconds = time.perf_counter() - t0
    final = history[-1] if history else None
    summary = (f"trained in {seconds:.1f} s" + (
        f"; last epoch: loss {final['loss']:.4f}, train accuracy {final['accuracy']:.4f}"
        if final else ""))
    print(summary, flush=True)
    if args.save:
        path = _npz_path(args.save)
        meta = {"dataset": dataset, "input_hw": list(hw), "n_classes": n_classes,
                "seed": args.seed, "epochs": args.epochs}
        try:
            model.save(path, metadata=meta)
        except OSError as exc:
            raise _CLIError(f"cannot save the model to {path!r}: {exc}") from None
        print(f"saved model to {path}", flush=True)
    acc = evaluate(model, X_test, y_test)
    print(f"test accuracy: {acc:.4f}", flush=True)
    return 0


@_run
def _evaluate_command(args):
    _set_threads(args.threads)
    path = args.load
    try:
        model, meta = L.load_model(path, return_metadata=True)
    except (FileNotFoundError, ValueError, KeyError, TypeError) as exc:
        raise _CLIError(str(exc)) from None
    dtype = model.dtype or np.dtype(np.float32)
    saved_on = meta.get("dataset", "digits")
    if saved_on == "mnist" and not args.mnist:
        raise _CLIError(f"{path} was trained on MNIST; pass --mnist DIR with the IDX files")
    dataset, (_X, _y, X_test, y_test) = _load_data(args.mnist, dtype)
    hw = list(X_test.shape[2:])
    if "input_hw" in meta and list(meta["input_hw"]) != hw:
        raise _CLIError(f"{path} expects {meta['input_hw'][0]}x{meta['input_hw'][1]} images "
                        f"but the {dataset} test images are {hw[0]}x{hw[1]}")
    print(f"cnnx evaluate: {path} ({model.num_parameters()} parameters, {dtype.name}) on "
          f"{dataset}: {len(y_test)} test images", flush=True)
    acc = evaluate(model, X_test, y_test)
    print(f"test accuracy: {acc:.4f}", flush=True)
    return 0


def register(subparsers):
    """Add the ``train`` and ``evaluate`` subcommands to an argparse subparsers object."""
    p = subparsers.add_parser(
        "train", help="train a LeNet-style CNN on handwritten digits",
        description="Train a LeNet-style CNN (conv-relu-pool x2, two dense layers) on "
                    "scikit-learn's bundled 8x8 digits (fixed stratified 80/20 split) or on "
                    "MNIST IDX files. The last line printed is 'test accuracy: 0.XXXX'.")
    p.add_argument("--epochs", type=_positive, default=None,
                   help=f"passes over the training set (default: {DEFAULTS['epochs']} on the "
                        f"digits, {DEFAULTS['epochs_mnist']} on MNIST)")
    p.add_argument("--batch-size", type=_positive, default=DEFAULTS["batch_size"],
                   help="mini-batch size (default: %(default)s)")
    p.add_argument("--lr", type=_positive_float, default=None,
                   help=f"learning rate (default: {DEFAULTS['lr']['adam']:g} for adam, "
                        f"{DEFAULTS['lr']['sgd']:g} for sgd)")
    p.add_argument("--optimizer", choices=("adam", "sgd"), default=DEFAULTS["optimizer"],
                   help="adam, or sgd with momentum 0.9 (default: %(default)s)")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"],
                   help="seed for the initial weights and the batch order (default: "
                        "%(default)s); the train/test split is fixed")
    p.add_argument("--threads", type=_positive, default=None,
                   help="threads for the kernels (default: CNNX_NUM_THREADS or all CPUs)")
    p.add_argument("--mnist", metavar="DIR", default=None,
                   help="train on MNIST: directory with the four IDX files (plain or .gz)")
    p.add_argument("--save", metavar="PATH", default=None,
                   help="save the trained model (architecture + weights) to PATH (.npz)")
    p.add_argument("--dtype", choices=("float32", "float64"), default=DEFAULTS["dtype"],
                   help="floating-point type of weights and data (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar and no per-epoch lines")
    p.set_defaults(func=_train_command)

    p = subparsers.add_parser(
        "evaluate", help="test accuracy of a model saved by 'cnnx train --save'",
        description="Reload a model saved by 'cnnx train --save PATH' and print "
                    "'test accuracy: 0.XXXX' on the held-out split.")
    p.add_argument("--load", metavar="PATH", required=True, help="saved model (.npz)")
    p.add_argument("--mnist", metavar="DIR", default=None,
                   help="evaluate on MNIST's t10k files in DIR (default: the digits test split)")
    p.add_argument("--threads", type=_positive, default=None,
                   help="threads for the kernels (default: CNNX_NUM_THREADS or all CPUs)")
    p.set_defaults(func=_evaluate_command)
