"""An example dpmlp GPU backend: kernels written in Triton (dpmlp_triton/kernels.py), arrays in
PyTorch device memory. The GPU plugin author's counterpart of examples/dpmlp-example-backend: how
each rule of the device contract (core/ops.py, "The array contract" and "The device contract") is
met with another library's arrays and another kernel toolchain.

* Layout: a column-major (rows, cols) matrix is a torch tensor of shape (rows, cols) and strides
  (1, rows): the row-major (cols, rows) allocation, transposed. torch calls it "not contiguous";
  for dpmlp it is (column-major contiguous), and ``cols`` of it is one dense block. ``.shape`` is
  the logical shape, as core requires.
* Streams: the backend owns one ``torch.cuda.Stream``; ``stream_handle()`` is its raw handle.
  Triton launches on PyTorch's *current* stream, which is per thread, so every op first makes the
  backend's stream current (``_on_stream``): several instances can live in one thread.
* Pointers: ``data_ptr()`` of a view is its first element (the storage offset included).
* Allocation: PyTorch's caching allocator, under the backend's stream (blocks are reused only by
  work ordered after their last use). Ops allocate nothing; the base class's fused defaults this
  backend keeps (``gemm_with_bias_grad``'s ones vector) allocate on first use, which the trainer's
  eager warm-up does before any capture. Reduction workspaces are made in ``__init__``.
* CUDA graphs: ``torch.cuda.CUDAGraph`` captures the backend's stream (relaxed mode, as the
  built-ins); ``launch()`` replays it with the backend's stream current.
* Labels: int32, which Triton loads directly (a library whose gather needs int64 would convert in
  ``from_host``; the contract allows it).
* Precision: every float32 ``tl.dot`` asks for IEEE FP32 (Triton's default is TF32).
* Memory pre-flight: ``device_memory()`` is ``torch.cuda.mem_get_info``; offsets are 32-bit,
  hence ``max_elements``.

With ``TRITON_INTERPRET=1`` (Triton's interpreter, numpy on the CPU) the same kernels run on CPU
tensors: the backend is then available without a GPU (no streams, no graphs), which is how its
kernels are developed and tested on a machine without one.

Heavy imports (torch, triton) happen in ``availability()`` and ``__init__``, never at module level:
``--list-backends`` imports this module on every machine.
"""

from __future__ import annotations

import math
import os

import numpy as np

from core.hookspecs import hookimpl
from core.ops import Backend

#: elementwise kernels' block, GEMM tiles, reduction workspace slots
BLOCK = 1024
GEMM_TILES = {4: (64, 64, 32), 8: (32, 32, 8)}  # itemsize -> (BM, BN, BK)
PARTIALS = 1024


def interpreted() -> bool:
    """True under Triton's interpreter (TRITON_INTERPRET=1): kernels run on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


class TritonGraph:
    """A ``torch.cuda.CUDAGraph`` of the backend's stream; ``launch()`` replays it there."""

    def __init__(self, graph, backend):
        self._graph, self._backend = graph, backend

    def launch(self) -> None:
        self._backend._on_stream()
        self._graph.replay()


class TritonBackend(Backend):
    name = "triton"
    description = "example plugin: kernels in Triton, arrays in PyTorch device memory"
    host_resident = False
    #: the kernels' offsets are 32-bit (Triton's default index type)
    max_elements = 2**31 - 1
    # priority left unset (None): only --backend triton selects it

    # ----------------------------------------------------------------- can it run here?
    @classmethod
    def availability(cls):
        try:
            import torch
            import triton
        except Exception as exc:  # noqa: BLE001 - any failure means "not here"
            return False, f"torch and triton are needed: {type(exc).__name__}: {exc}"
        versions = f"triton {triton.__version__}, torch {torch.__version__}"
        if interpreted():
            return True, f"{versions}; Triton interpreter on the CPU (TRITON_INTERPRET=1)"
        if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
            return False, f"{versions}, but torch sees no CUDA GPU"
        return True, f"{versions}, {torch.cuda.device_count()} GPU(s)"

    @classmethod
    def device_count(cls):
        if interpreted():
            return 1  # the CPU stands in for the device
        try:
            import torch

            return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
        except Exception:  # noqa: BLE001
            return 0

    def __init__(self, dtype="float64", device_index=None):
        super().__init__(dtype, device_index)
        import torch

        from dpmlp_triton import kernels

        self._torch, self._k = torch, kernels
        self._tdtype = {4: torch.float32, 8: torch.float64}[self.dtype.itemsize]
        self._interpreted = interpreted()
        if self._interpreted:
            from dpmlp_triton import _interpreter_compat

            _interpreter_compat.apply()
            self._device, self._stream = torch.device("cpu"), None
        else:
            self._device = torch.device("cuda", device_index or 0)
            torch.cuda.set_device(self._device)
            self._stream = torch.cuda.Stream(self._device)
        self._ieee_dot = self.dtype.itemsize == 4  # float64: broadcast-and-sum products
        self._pinned = []  # host_buffer's tensors, kept alive with their numpy views
        self._partials = self.empty((PARTIALS,), np.float64)  # reduction workspaces
        self._loss_partials = self.empty((PARTIALS,))

    def describe_device(self):
        if self._interpreted:
            return "cpu (Triton interpreter)"
        return f"cuda:{self._device.index} ({self._torch.cuda.get_device_name(self._device)})"

    def _on_stream(self):
        """Make the backend's stream PyTorch's current one (Triton launches there)."""
        if self._stream is not None:
            self._torch.cuda.set_stream(self._stream)

    def _torch_dtype(self, dtype):
        if dtype is None:
            return self._tdtype
        return {np.dtype(np.float32): self._torch.float32, np.dtype(np.float64): self._torch.float64,
                np.dtype(np.int32): self._torch.int32,
                np.dtype(np.int64): self._torch.int64}[np.dtype(dtype)]

    # ----------------------------------------------------------------- memory and transfers
    def empty(self, shape, dtype=None):
        self._on_stream()
        shape = tuple(int(s) for s in shape)
        tdtype = self._torch_dtype(dtype)
        if len(shape) == 2:  # column-major: the transpose of a row-major (cols, rows) tensor
            return self._torch.empty((shape[1], shape[0]), dtype=tdtype, device=self._device).t()
        return self._torch.empty(shape, dtype=tdtype, device=self._device)

    def from_host(self, host):
        host = np.asarray(host)
        dtype = np.int32 if np.issubdtype(host.dtype, np.integer) else self.dtype
        arr = self.empty(host.shape, dtype)
        arr.copy_(self._torch.from_numpy(np.array(host, dtype=dtype, order="F")))
        return arr

    def to_host(self, arr):
        self._on_stream()
        # a copy (in interpreter mode .cpu() would return the very tensor), column-major
        return np.array(arr.detach().cpu().numpy(), order="F", copy=True)

    def copy_to_host(self, arr, host):
        self._on_stream()
        self._torch.from_numpy(host).copy_(arr)  # synchronous: the stream's work, then the copy

    def copy_from_host(self, host, arr):
        self._on_stream()
        arr.copy_(self._torch.from_numpy(np.ascontiguousarray(host)))

    def host_buffer(self, size):
        pinned = not self._interpreted
        buf = self._torch.empty(int(size), dtype=self._tdtype, pin_memory=pinned)
        self._pinned.append(buf)
        return buf.numpy()

    def flat_views(self, flat, shapes):
        views, offset = [], 0
        for shape in shapes:
            size = math.prod(shape)
            part = flat[offset:offset + size]
            views.append(part.view(shape[1], shape[0]).t() if len(shape) == 2 else part)
            offset += size
        return views

    def cols(self, arr, start, stop):
        return arr[start:stop] if arr.dim() == 1 else arr[:, start:stop]

    def device_pointer(self, arr):
        return int(arr.data_ptr())  # the view's first element

    def stream_handle(self):
        return 0 if self._stream is None else int(self._stream.cuda_stream)

    def synchronize(self):
        if self._stream is not None:
            self._stream.synchronize()

    def device_memory(self):
        if self._interpreted:
            return None
        free, total = self._torch.cuda.mem_get_info(self._device)
        return int(free), int(total)

    # ----------------------------------------------------------------- CUDA graphs
    def graph_support(self):
        if self._interpreted:
            return False, "the Triton interpreter runs on the CPU: no CUDA graphs"
        if not hasattr(self._torch.cuda, "CUDAGraph"):
            return False, f"torch {self._torch.__version__} has no torch.cuda.CUDAGraph"
        return True, ""

    def begin_capture(self):
        self._on_stream()
        self._graph = self._torch.cuda.CUDAGraph()
        self._graph.capture_begin(capture_error_mode="relaxed")

    def end_capture(self):
        graph, self._graph = self._graph, None
        graph.capture_end()
        return TritonGraph(graph, self)

    # ----------------------------------------------------------------- launches
    def _grid1(self, n):
        return (triton_cdiv(n, BLOCK),)

    def _ld(self, arr):
        """Column stride of a column-major matrix (its rows; any value for one column)."""
        return int(arr.stride(1)) if arr.dim() == 2 else int(arr.shape[0])

    def _mat(self, arr, trans):
        """(row stride, column stride) of op(arr) for a column-major matrix."""
        s_row, s_col = (1, self._ld(arr))
        return (s_col, s_row) if trans else (s_row, s_col)

    def _gemm(self, a, b, c, alpha, beta, trans_a, trans_b, epilogue=0, bias=None, act=None):
        m, n = int(c.shape[0]), int(c.shape[1])
        k = int(a.shape[0] if trans_a else a.shape[1])
        if m == 0 or n == 0:
            return
        self._on_stream()
        bm, bn, bk = GEMM_TILES[self.dtype.itemsize]
        sam, sak = self._mat(a, trans_a)
        sbk, sbn = self._mat(b, trans_b)
        grid = (triton_cdiv(m, bm), triton_cdiv(n, bn))
        self._k.gemm_kernel[grid](
            a, b, c, c if bias is None else bias, c if act is None else act, m, n, k,
            sam, sak, sbk, sbn, 1, self._ld(c), float(alpha), float(beta),
            EPILOGUE=epilogue, BETA_ZERO=beta == 0, IEEE_DOT=self._ieee_dot,
            BM=bm, BN=bn, BK=bk, num_warps=4)

    # ----------------------------------------------------------------- math
    def fill(self, arr, value):
        if arr.numel():
            self._on_stream()
            arr.fill_(value)  # a PyTorch kernel on the backend's stream: capturable

    def gemm(self, a, b, c, alpha=1.0, beta=0.0, trans_a=False, trans_b=False):
        self._gemm(a, b, c, alpha, beta, trans_a, trans_b)

    def gemm_bias_sigmoid(self, a, b, bias, out):
        self._gemm(a, b, out, 1.0, 0.0, False, False, epilogue=1, bias=bias)

    def gemm_sigmoid_backward(self, a, b, act, out):
        self._gemm(a, b, out, 1.0, 0.0, True, False, epilogue=2, act=act)

    def _bias(self, z, bias, out, sigmoid):
        n = z.numel()
        if n:
            self._on_stream()
            self._k.bias_sigmoid_kernel[self._grid1(n)](z, bias, out, n, int(z.shape[0]),
                                                        SIGMOID=sigmoid, BLOCK=BLOCK)

    def bias_sigmoid(self, z, bias, out):
        self._bias(z, bias, out, True)

    def add_bias(self, z, bias):
        self._bias(z, bias, z, False)

    def sigmoid(self, x, out):
        n = x.numel()
        if n:
            self._on_stream()
            self._k.sigmoid_kernel[self._grid1(n)](x, out, n, BLOCK=BLOCK)

    def softmax(self, x, out, axis=0):
        if not x.numel():
            return
        self._on_stream()
        rows, cols = int(x.shape[0]), int(x.shape[1])
        ld = self._ld(x)
        lines, length, s_elem, s_line = (cols, rows, 1, ld) if axis == 0 else (rows, cols, ld, 1)
        block = min(BLOCK, max(16, triton_next_pow2(length)))
        self._k.softmax_kernel[(lines,)](x, out, length, s_elem, s_line, BLOCK=block)

    def sigmoid_backward(self, grad, a, out):
        n = grad.numel()
        if n:
            self._on_stream()
            self._k.sigmoid_backward_kernel[self._grid1(n)](grad, a, out, n, BLOCK=BLOCK)

    def reduce_cols(self, x, out, alpha=1.0):
        rows, cols = int(x.shape[0]), int(x.shape[1])
        if rows:
            self._on_stream()
            self._k.reduce_cols_kernel[(triton_cdiv(rows, 64),)](
                x, out, rows, cols, self._ld(x), float(alpha), BR=64, BC=32)

    def softmax_xent_backward(self, yhat, labels, scale, out):
        n = yhat.numel()
        if n:
            self._on_stream()
            self._k.xent_backward_kernel[self._grid1(n)](yhat, labels, out, n,
                                                         int(yhat.shape[0]), float(scale),
                                                         BLOCK=BLOCK)

    def axpy(self, alpha, x, y):
        n = x.numel()
        if n:
            self._on_stream()
            self._k.axpy_kernel[self._grid1(n)](x, y, n, float(alpha), BLOCK=BLOCK)

    def nll_sum(self, yhat, labels, acc):
        cols = int(yhat.shape[1])
        if cols:
            self._on_stream()
            self._k.nll_sum_kernel[(1,)](yhat, labels, acc, cols, self._ld(yhat), BLOCK=256)

    def count_correct(self, scores, labels, acc):
        rows, cols = int(scores.shape[0]), int(scores.shape[1])
        if cols and rows:
            self._on_stream()
            self._k.count_correct_kernel[(1,)](scores, labels, acc, rows, cols,
                                               self._ld(scores), BLOCK=256)

    def output_layer(self, w2, b2, a1, labels, scale, diff, nll_acc):
        """The fused output layer in two launches, the loss from the logits (log-sum-exp)."""
        classes, hidden, n = int(w2.shape[0]), int(w2.shape[1]), int(a1.shape[1])
        if n == 0:
            return
        self._on_stream()
        cp = max(16, triton_next_pow2(classes))
        bn, bk = (32, 32) if self._ieee_dot else (16, 8)
        programs = min(PARTIALS, triton_cdiv(n, bn))
        self._k.output_layer_kernel[(programs,)](
            w2, b2, a1, labels, diff, self._loss_partials, classes, hidden, n, self._ld(w2),
            self._ld(a1), self._ld(diff), triton_cdiv(triton_cdiv(n, bn), programs),
            float(scale), IEEE_DOT=self._ieee_dot, CP=cp, BN=bn,
            BK=bk, num_warps=4)
        self._k.add_partials_kernel[(1,)](self._loss_partials, nll_acc, programs, BLOCK=1024)

    def sum_squares(self, x):
        n = x.numel()
        if n == 0:
            return 0.0
        self._on_stream()
        programs = min(PARTIALS, triton_cdiv(n, BLOCK))
        chunk = triton_cdiv(n, programs)
        self._k.sum_squares_kernel[(programs,)](x, self._partials, n, chunk, BLOCK=BLOCK)
        return float(np.sum(self.to_host(self._partials)[:programs]))


def triton_cdiv(a: int, b: int) -> int:
    return -(-int(a) // int(b))


def triton_next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


@hookimpl
def register_backends(register):
    register(TritonBackend)
