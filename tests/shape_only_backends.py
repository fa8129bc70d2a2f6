"""Backends that hold core to the device contract on a CPU, a dpmlp plugin for
tests/test_device_contract.py (not a test module; registered through an entry point the test
writes, like tests/wrong_backends.py).

``shape-only``: the NumPy reference behind arrays that expose ``.shape`` and nothing else
(``Opaque``), with ``host_resident`` False, so the trainer treats it as a device backend: the
gradients are staged through ``host_buffer`` under MPI, the device pre-flight asks its
``device_memory()`` (``DPMLP_TEST_DEVICE_FREE`` bytes free, default 8 GB) and ``max_elements``
(2^31 - 1). Its fused ops are core.ops' defaults, built from the contract ops (the ones vector of
``gemm_with_bias_grad`` and the loss floor of ``output_layer`` are allocated lazily). It offers
"CUDA graphs" that record the ops queued between ``begin_capture`` and ``end_capture`` and replay
them on ``launch()``, and fails loudly where the capture protocol is broken: an allocation, a
transfer, ``synchronize`` or ``sum_squares`` during capture raises. So training with it under
``--cuda-graphs on`` checks the trainer's eager warm-up (the lazy allocations happen before
capture) and that core reads nothing of an array but ``.shape``.
"""

from __future__ import annotations

import os

import numpy as np

from backends.ops_numpy import NumpyBackend
from core.hookspecs import hookimpl
from core.ops import FUSED_OPS, Backend

MATH_OPS = ("fill", "gemm", "bias_sigmoid", "add_bias", "sigmoid", "softmax", "sigmoid_backward",
            "reduce_cols", "softmax_xent_backward", "axpy", "nll_sum", "count_correct")
FORBIDDEN_IN_CAPTURE = ("empty", "from_host", "to_host", "copy_to_host", "copy_from_host",
                        "host_buffer", "synchronize", "sum_squares")


class Opaque:
    """A backend array as core may see it: ``.shape`` and nothing else."""

    __slots__ = ("_a", "shape")

    def __init__(self, a: np.ndarray):
        self._a = a
        self.shape = tuple(a.shape)


def _unwrap(value):
    return value._a if isinstance(value, Opaque) else value


class CaptureError(RuntimeError):
    pass


class RecordedGraph:
    def __init__(self, calls):
        self._calls = calls

    def launch(self):
        for call in self._calls:
            call()


class ShapeOnlyBackend(Backend):
    name = "shape-only"
    description = "test backend: NumPy behind opaque arrays, device-like, recorded graphs"
    host_resident = False
    max_elements = 2**31 - 1

    def __init__(self, dtype="float64", device_index=None):
        super().__init__(dtype, device_index)
        self._np = NumpyBackend(dtype)
        self._recording = None
        self._pinned = []

    @classmethod
    def device_count(cls):
        return 1

    def describe_device(self):
        return "test device 0 (NumPy behind opaque arrays)"

    def device_memory(self):
        free = int(float(os.environ.get("DPMLP_TEST_DEVICE_FREE", 8e9)))
        return free, max(free, int(16e9))

    def stream_handle(self):
        return 0x5151  # a constant stand-in (nothing here hands it to CUDA)

    # ------------------------------------------------------------------ memory and views
    def _no_capture(self, what):
        if self._recording is not None:
            raise CaptureError(f"{what} during capture: the capture protocol of core/ops.py is "
                               f"broken (did the trainer warm up every op first?)")

    def empty(self, shape, dtype=None):
        self._no_capture("empty (an allocation)")
        return Opaque(self._np.empty(shape, dtype))

    def from_host(self, host):
        self._no_capture("from_host")
        return Opaque(self._np.from_host(host))

    def to_host(self, arr):
        self._no_capture("to_host")
        return self._np.to_host(_unwrap(arr))

    def copy_to_host(self, arr, host):
        self._no_capture("copy_to_host")
        self._np.copy_to_host(_unwrap(arr), host)

    def copy_from_host(self, host, arr):
        self._no_capture("copy_from_host")
        self._np.copy_from_host(host, _unwrap(arr))

    def host_buffer(self, size):
        self._no_capture("host_buffer")
        return self._np.host_buffer(size)

    def flat_views(self, flat, shapes):
        return [Opaque(v) for v in self._np.flat_views(_unwrap(flat), shapes)]

    def cols(self, arr, start, stop):
        return Opaque(self._np.cols(_unwrap(arr), start, stop))

    def device_pointer(self, arr):
        return int(_unwrap(arr).ctypes.data)

    def synchronize(self):
        self._no_capture("synchronize")

    def sum_squares(self, x):
        self._no_capture("sum_squares (a host read)")
        return self._np.sum_squares(_unwrap(x))

    # ------------------------------------------------------------------ "graphs"
    def graph_support(self):
        return True, ""

    def begin_capture(self):
        if self._recording is not None:
            raise CaptureError("begin_capture while capturing")
        self._recording = []

    def end_capture(self):
        calls, self._recording = self._recording, None
        return RecordedGraph(calls)


def _math(name):
    def op(self, *args, **kwargs):
        args = [_unwrap(a) for a in args]
        kwargs = {k: _unwrap(v) for k, v in kwargs.items()}
        call = lambda: getattr(self._np, name)(*args, **kwargs)  # noqa: E731
        if self._recording is not None:
            self._recording.append(call)
        else:
            call()
    op.__name__ = name
    op.__doc__ = getattr(Backend, name).__doc__
    return op


for _name in MATH_OPS:
    setattr(ShapeOnlyBackend, _name, _math(_name))
for _name in FUSED_OPS:  # core.ops' defaults, from the wrapped contract ops
    setattr(ShapeOnlyBackend, _name, getattr(Backend, _name))
ShapeOnlyBackend.__abstractmethods__ = frozenset()  # the math ops were set after the class


class DefaultsBackend(NumpyBackend):
    """The NumPy reference with every fused op left to core.ops' defaults."""

    name = "numpy-defaults"
    description = "test backend: NumPy with core.ops' default fused ops"
    priority = None


for _name in FUSED_OPS:
    setattr(DefaultsBackend, _name, getattr(Backend, _name))


@hookimpl
def register_backends(register):
    register(ShapeOnlyBackend)
    register(DefaultsBackend)
