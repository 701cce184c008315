"""ReLU forward and backward over flat contiguous arrays, float32 and float64.

    y = x if x > 0 else 0          (NaN propagates: relu(NaN) = NaN, as PyTorch)
    grad_x = grad_y if x > 0 else 0 (derivative 0 at x == 0; a NaN x passes grad_y,
                                     as PyTorch's threshold_backward: x <= 0 ? 0 : grad)
"""

from cython cimport floating
from cython.parallel cimport prange


def relu_forward(const floating[::1] x, floating[::1] y, int n_threads):  # y OUT
    cdef Py_ssize_t k
    cdef floating v
    for k in prange(x.shape[0], nogil=True, schedule="static", num_threads=n_threads):
        v = x[k]
        y[k] = 0 if v <= 0 else v


def relu_backward(const floating[::1] grad_out, const floating[::1] x,
                  floating[::1] grad_x, int n_threads):  # grad_x OUT
    cdef Py_ssize_t k
    for k in prange(x.shape[0], nogil=True, schedule="static", num_threads=n_threads):
        grad_x[k] = 0 if x[k] <= 0 else grad_out[k]
