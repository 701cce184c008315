"""``cnnx demo``: the textbook's worked examples through the compiled kernels and the reference."""

import numpy as np

# The textbook's conv example: a 3x5x5 input, two 3x3x3 filters, stride 2, zero padding 1.
CONV_X = [
    [[0, 1, 1, 0, 2], [2, 2, 2, 2, 1], [1, 0, 0, 2, 0], [0, 1, 1, 0, 0], [1, 2, 0, 0, 2]],
    [[1, 0, 2, 2, 0], [0, 0, 0, 2, 0], [1, 2, 1, 2, 1], [1, 0, 0, 0, 0], [1, 2, 1, 1, 1]],
    [[2, 1, 2, 0, 0], [1, 0, 0, 1, 0], [0, 2, 1, 0, 1], [0, 1, 2, 2, 2], [2, 1, 0, 0, 1]],
]
CONV_W = [
    [[[-1, 1, 0], [0, 1, 0], [0, 1, 1]], [[-1, -1, 0], [0, 0, 0], [0, -1, 0]],
     [[0, 0, -1], [0, 1, 0], [1, -1, -1]]],
    [[[1, 1, -1], [-1, -1, 1], [0, -1, 1]], [[0, 1, 0], [-1, 0, -1], [-1, 1, 0]],
     [[-1, 0, 0], [-1, 0, 1], [-1, 0, 0]]],
]
CONV_B = [1, 0]
CONV_EXPECTED = [[[6, 7, 5], [3, -1, -1], [2, -1, 4]], [[2, -5, -8], [1, -4, -4], [0, -5, -5]]]

# The textbook's max-pooling example: 2x4x4 input, 2x2 filter, stride 2.
POOL_X = [
    [[1, 1, 2, 4], [5, 6, 7, 8], [3, 2, 1, 0], [1, 2, 3, 4]],
    [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 1], [3, 4, 5, 6]],
]
POOL_EXPECTED = [[[6, 8], [3, 4]], [[5, 7], [9, 6]]]
POOL_GRAD_OUT = [[[1, 2], [2, 4]], [[3, 5], [8, 2]]]


def _show(title, arr):
    import textwrap

    print(title)
    print(textwrap.indent(np.array2string(np.asarray(arr)), "  "))


def run_demo():
    from . import functional as F
    from . import info_dict, reference as R

    x = np.array(CONV_X, dtype=np.float32)[None]
    w = np.array(CONV_W, dtype=np.float32)
    b = np.array(CONV_B, dtype=np.float32)
    y = F.conv2d(x, w, b, stride=2, padding=1)
    y_ref = R.conv2d(x, w, b, stride=2, padding=1)
    _show("conv2d, textbook example (3x5x5 input, two 3x3x3 filters, stride 2, padding 1):", y[0])
    ok_conv = np.array_equal(y[0], CONV_EXPECTED) and np.array_equal(y, y_ref)

    px = np.array(POOL_X, dtype=np.float32)[None]
    py, idx = F.max_pool2d(px, 2, 2)
    gx = F.max_pool2d_backward(np.array(POOL_GRAD_OUT, dtype=np.float32)[None], idx, px.shape)
    py_ref, idx_ref = R.max_pool2d(px, 2, 2)
    gx_ref = R.max_pool2d_backward(np.array(POOL_GRAD_OUT, dtype=np.float32)[None], idx_ref,
                                   px.shape)
    _show("max_pool2d 2x2/2 forward:", py[0])
    _show("max_pool2d backward (grad goes to each window's arg-max):", gx[0])
    ok_pool = (np.array_equal(py[0], POOL_EXPECTED) and np.array_equal(py, py_ref)
               and np.array_equal(idx, idx_ref) and np.array_equal(gx, gx_ref))

    info = info_dict()
    print(f"compiled kernels match the textbook and the pure-Python reference: "
          f"{'yes' if ok_conv and ok_pool else 'NO'}  "
          f"(OpenMP: {info['openmp']}, threads: {F.get_num_threads()})")
    return 0 if ok_conv and ok_pool else 1
