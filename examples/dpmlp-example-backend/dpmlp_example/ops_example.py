"""An example dpmlp backend: NumPy arrays, float64 arithmetic, a GEMM blocked over K.

Arrays live in host memory in the dtype dpmlp asks for (float32 or float64), column-major, as the
ops contract (core/ops.py) requires. Every op reads its inputs as float64, computes in float64 and
rounds once when it writes ``out``; the GEMM accumulates its K blocks in a float64 buffer. In
float64 this is dpmlp's NumPy reference up to summation order; in float32 each result is the
float64 result rounded once.

The parts of a backend, in the order a plugin author meets them:

1. a subclass of ``core.ops.Backend`` with a unique ``name`` (what ``--backend`` takes);
2. class attributes: ``description`` (for ``--list-backends``), ``host_resident`` and
   ``priority`` (see below);
3. ``availability()``, which says whether the backend can run here and never raises;
4. every abstract method of ``core.ops.Backend`` (memory and transfers, then the math);
5. a ``register_backends`` hook implementation, named in the ``dpmlp`` entry-point group of this
   package's pyproject.toml.

This module is imported by ``--list-backends`` on every machine, so it imports only what dpmlp
itself already needs (numpy, core). A backend built on an optional library (cupy, pycuda, a
vendor library) imports it inside ``availability()`` and the methods, never here: see
``_accelerator()``.
"""

from __future__ import annotations

import numpy as np

from core.hookspecs import hookimpl
from core.ops import Backend

F64 = np.float64


class ExampleBackend(Backend):
    name = "example"
    description = "example plugin: NumPy storage, float64 arithmetic, GEMM blocked over K"
    #: Arrays are NumPy host memory: MPI reduces the gradients in place. A backend whose arrays
    #: live on a device sets False, and the trainer then stages them through host_buffer().
    host_resident = True
    # ``priority`` is deliberately left at Backend's default, None: a backend without a priority
    # is never chosen as the default backend, only ``--backend example`` selects it. (The
    # built-ins state numpy 0, pycuda 10, cupy 20; the available one with the highest wins.)

    #: columns of op(A) (rows of op(B)) per step of the blocked GEMM
    block_k = 128

    # ----------------------------------------------------------------- can it run here?
    @classmethod
    def availability(cls):
        """(True, what was found) or (False, why not). Must never raise: a backend whose
        availability() raises is listed as unavailable with the exception as the reason."""
        accelerator = cls._accelerator()
        if accelerator is None:
            return False, "numpy is not importable"
        return True, f"numpy {accelerator.__version__}, float64 arithmetic"

    @staticmethod
    def _accelerator():
        """Where a real plugin imports its heavy or optional library: lazily, on first use, and
        turning ImportError into "unavailable" instead of breaking every other backend. NumPy
        stands in for it here."""
        try:
            import numpy
        except ImportError:
            return None
        return numpy

    def describe_device(self):
        return f"cpu, {self.dtype.name} storage, float64 arithmetic"

    # ----------------------------------------------------------------- memory and transfers
    def empty(self, shape, dtype=None):
        return np.empty(tuple(shape), dtype=dtype or self.dtype, order="F")

    def from_host(self, host):
        host = np.asarray(host)
        dtype = np.int32 if np.issubdtype(host.dtype, np.integer) else self.dtype
        return np.array(host, dtype=dtype, order="F", copy=True)

    def to_host(self, arr):
        return np.array(arr, order="F", copy=True)

    def copy_to_host(self, arr, host):
        host[...] = arr

    def copy_from_host(self, host, arr):
        arr[...] = host

    def flat_views(self, flat, shapes):
        views, offset = [], 0
        for shape in shapes:
            size = int(np.prod(shape))
            views.append(flat[offset:offset + size].reshape(tuple(shape), order="F"))
            offset += size
        return views

    def cols(self, arr, start, stop):
        return arr[start:stop] if arr.ndim == 1 else arr[:, start:stop]

    # ----------------------------------------------------------------- math
    def _store(self, out, value):
        """The one rounding: a float64 result written into ``out`` of the backend dtype."""
        out[...] = value

    def fill(self, arr, value):
        arr[...] = value

    def gemm(self, a, b, c, alpha=1.0, beta=0.0, trans_a=False, trans_b=False):
        op_a = a.T if trans_a else a
        op_b = b.T if trans_b else b
        m, k = op_a.shape
        n = op_b.shape[1]
        acc = np.zeros((m, n), dtype=F64, order="F")
        for k0 in range(0, k, self.block_k):  # K = 0: no block, the product is 0
            k1 = min(k0 + self.block_k, k)
            acc += op_a[:, k0:k1].astype(F64) @ op_b[k0:k1, :].astype(F64)
        acc *= alpha
        if beta != 0.0:  # with beta = 0 the old C is never read: it may hold NaN
            acc += beta * c.astype(F64)
        self._store(c, acc)

    def bias_sigmoid(self, z, bias, out):
        self._store(out, 1.0 / (1.0 + np.exp(-(z.astype(F64) + bias.astype(F64)[:, None]))))

    def add_bias(self, z, bias):
        self._store(z, z.astype(F64) + bias.astype(F64)[:, None])

    def sigmoid(self, x, out):
        self._store(out, 1.0 / (1.0 + np.exp(-x.astype(F64))))

    def softmax(self, x, out, axis=0):
        if x.size == 0:
            return
        x64 = x.astype(F64)
        shifted = np.exp(x64 - x64.max(axis=axis, keepdims=True))
        self._store(out, shifted / shifted.sum(axis=axis, keepdims=True))

    def sigmoid_backward(self, grad, a, out):
        a64 = a.astype(F64)
        self._store(out, grad.astype(F64) * a64 * (1.0 - a64))

    def reduce_cols(self, x, out, alpha=1.0):
        self._store(out, alpha * x.sum(axis=1, dtype=F64))

    def softmax_xent_backward(self, yhat, labels, scale, out):
        diff = yhat.astype(F64)
        diff[labels, np.arange(labels.size)] -= 1.0
        self._store(out, scale * diff)

    def axpy(self, alpha, x, y):
        self._store(y, y.astype(F64) + alpha * x.astype(F64))

    def nll_sum(self, yhat, labels, acc):
        picked = yhat[labels, np.arange(labels.size)].astype(F64)
        self._store(acc[:1], F64(acc[0]) - np.log(picked).sum())

    def count_correct(self, scores, labels, acc):
        if labels.size:
            self._store(acc[:1], F64(acc[0]) + np.count_nonzero(scores.argmax(axis=0) == labels))

    def sum_squares(self, x):
        flat = x.ravel(order="K").astype(F64)
        return float(flat @ flat)


@hookimpl
def register_backends(register):
    """Called by dpmlp once this module is loaded through the entry point: register every backend
    class the package provides (a communicator plugin implements register_communicators)."""
    register(ExampleBackend)
