"""CuPy backend: the kernels of backends/kernels.cu, compiled by NVRTC through ``cupy.RawModule``.

CuPy is used for memory, compilation and launches only; every op is one of our kernels (no cuBLAS,
no CuPy array math). Arrays are Fortran-ordered ``cupy.ndarray``s of the backend dtype (labels:
int32). All work is queued on one non-blocking stream owned by the backend; allocation happens under
that stream too, so CuPy's memory pool only hands a freed block back to work ordered after it.

The element-wise kernels need contiguous operands; column slices (``cols``) and ``flat_views`` of a
Fortran-ordered array always are. The GEMM honours leading dimensions.
"""

from __future__ import annotations

import numpy as np

from backends import cuda_source as cs
from core.hookspecs import hookimpl
from core.ops import Backend

_INT32 = np.dtype(np.int32)
_i32 = np.int32
_BLOCK = cs.BLOCK_DIM

# (dtype name, device index) -> {kernel name: cupy Function}; compiled once per process
_KERNELS: dict[tuple[str, int], dict[str, object]] = {}


def _kernels_for(dtype: np.dtype, device: int):
    key = (dtype.name, device)
    if key not in _KERNELS:
        import cupy

        with cupy.cuda.Device(device):
            module = cupy.RawModule(code=cs.read_source(), options=cs.compile_options(dtype))
            # RawKernel.kernel compiles (NVRTC, cached on disk by CuPy), loads on this device and
            # returns the cupy.cuda.Function, whose call takes the stream explicitly: no
            # `with stream:` (and its bookkeeping) around every launch.
            _KERNELS[key] = {name: module.get_function(name).kernel for name in cs.KERNEL_NAMES}
    return _KERNELS[key]


def _device_name(cupy, index: int) -> str:
    name = cupy.cuda.runtime.getDeviceProperties(index)["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


class CupyBackend(Backend):
    name = "cupy"
    description = "CUDA via CuPy (NVRTC-compiled kernels.cu, no cuBLAS), float32 and float64"
    host_resident = False
    priority = 20

    #: force one GEMM tile of cuda_source.GEMM_TILES (tests, tuning); None picks per shape
    gemm_tile: str | None = None

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        try:
            import cupy
        except ImportError:
            return False, "cupy is not installed"
        except Exception as exc:  # a broken install (missing CUDA libraries) must not raise here
            return False, f"cupy failed to import: {exc}"
        try:
            count = cupy.cuda.runtime.getDeviceCount()
            if count < 1:
                return False, "no CUDA device: cupy found 0 devices"
            return True, f"{count} device(s): {_device_name(cupy, 0)}"
        except Exception as exc:
            return False, f"no CUDA device: {exc}"

    @classmethod
    def device_count(cls) -> int:
        try:
            import cupy

            return int(cupy.cuda.runtime.getDeviceCount())
        except Exception:
            return 0

    def __init__(self, dtype: str = "float64", device_index: int | None = None):
        super().__init__(dtype, device_index)
        import cupy
        import cupyx

        self._cp = cupy
        self._cupyx = cupyx
        self.device_index = 0 if device_index is None else int(device_index)
        self._device = cupy.cuda.Device(self.device_index)
        # one device per process (per rank): make it current for every later CuPy call
        self._device.use()
        self._stream = cupy.cuda.Stream(non_blocking=True)
        self._num_sms = int(self._device.attributes["MultiProcessorCount"])
        self._real = self.dtype.type
        self._fns = _kernels_for(self.dtype, self.device_index)
        self._gemm_plans: dict[tuple, tuple | None] = {}
        with self._stream:
            # sum_squares: per-block partial sums, then the total in the last slot
            self._scratch = cupy.empty(cs.SUM_PARTIAL_BLOCKS + 1, dtype=self.dtype)
        self._scalar_host = cupyx.empty_pinned((1,), dtype=self.dtype)

    def describe_device(self) -> str:
        return f"cuda:{self.device_index} ({_device_name(self._cp, self.device_index)})"

    # ----------------------------------------------------------------- launching
    def _launch(self, name, grid, block, args):
        """args in kernel order: arrays, np.int32 for int, the backend's scalar type for real."""
        self._fns[name](grid, block, args, stream=self._stream)

    def _check(self, *arrays, dtype=None):
        """The element-wise kernels read each array as .size contiguous elements of the dtype."""
        dtype = dtype or self.dtype
        for arr in arrays:
            if arr.dtype != dtype:
                raise TypeError(f"expected {dtype} array, got {arr.dtype}")
            if not arr.flags.f_contiguous:
                raise ValueError("element-wise kernels need contiguous (column-slice or flat) views")

    def _ld(self, arr) -> int:
        if arr.ndim != 2:
            raise ValueError(f"expected a matrix, got shape {arr.shape}")
        if arr.dtype != self.dtype:
            raise TypeError(f"expected {self.dtype} matrix, got {arr.dtype}")
        if arr.size == 0:  # never dereferenced; its strides may be anything
            return max(arr.shape[0], 1)
        if arr.shape[0] > 1 and arr.strides[0] != arr.itemsize:
            raise ValueError("matrices must be column-major (Fortran order)")
        ld = cs.leading_dim(arr.shape, arr.strides[1] // arr.itemsize)
        cs.check_index_range(ld * max(arr.shape[1], 1))
        return ld

    # ----------------------------------------------------------------- memory and transfers
    def empty(self, shape, dtype=None):
        with self._stream:
            return self._cp.empty(tuple(shape), dtype=np.dtype(dtype or self.dtype), order="F")

    def _h2d(self, host: np.ndarray, arr) -> None:
        if host.nbytes != arr.nbytes:
            raise ValueError(f"size mismatch: host {host.nbytes} bytes, device {arr.nbytes} bytes")
        if host.nbytes:
            rt = self._cp.cuda.runtime
            rt.memcpyAsync(arr.data.ptr, host.ctypes.data, host.nbytes, rt.memcpyHostToDevice,
                           self._stream.ptr)
            self._stream.synchronize()  # the caller may reuse the host buffer on return

    def _d2h(self, arr, host: np.ndarray) -> None:
        if host.nbytes != arr.nbytes:
            raise ValueError(f"size mismatch: device {arr.nbytes} bytes, host {host.nbytes} bytes")
        if host.nbytes:
            rt = self._cp.cuda.runtime
            rt.memcpyAsync(host.ctypes.data, arr.data.ptr, host.nbytes, rt.memcpyDeviceToHost,
                           self._stream.ptr)
            self._stream.synchronize()

    def from_host(self, host):
        host = np.asarray(host)
        dtype = np.int32 if np.issubdtype(host.dtype, np.integer) else self.dtype
        src = np.asfortranarray(host, dtype=dtype)
        arr = self.empty(src.shape, dtype)
        self._h2d(src, arr)
        return arr

    def to_host(self, arr):
        if not arr.flags.f_contiguous:
            with self._stream:
                arr = self._cp.asfortranarray(arr)
        out = np.empty(arr.shape, dtype=arr.dtype, order="F")
        self._d2h(arr, out)
        return out

    def copy_to_host(self, arr, host):
        if not arr.flags.f_contiguous or not host.flags.contiguous:
            raise ValueError("copy_to_host needs contiguous arrays")
        self._d2h(arr, host)

    def copy_from_host(self, host, arr):
        if not arr.flags.f_contiguous or not host.flags.contiguous:
            raise ValueError("copy_from_host needs contiguous arrays")
        self._h2d(host, arr)

    def host_buffer(self, size):
        return self._cupyx.empty_pinned((int(size),), dtype=self.dtype)

    def flat_views(self, flat, shapes):
        views, offset = [], 0
        for shape in shapes:
            size = int(np.prod(shape))
            views.append(flat[offset:offset + size].reshape(tuple(shape), order="F"))
            offset += size
        if offset > flat.size:
            raise ValueError(f"shapes need {offset} elements, flat array has {flat.size}")
        return views

    def cols(self, arr, start, stop):
        return arr[start:stop] if arr.ndim == 1 else arr[:, start:stop]

    def synchronize(self):
        self._stream.synchronize()

    def device_pointer(self, arr):
        return int(arr.data.ptr)

    def stream_handle(self):
        return int(self._stream.ptr)

    # ----------------------------------------------------------------- math
    # Hot path: each op checks shapes, then launches one kernel with its arguments converted to the
    # kernel's C types (np.int32, the backend dtype's scalar). GEMM launch plans are cached per
    # operand layout, so a training step only looks them up.
    def fill(self, arr, value):
        n = arr.size
        if n == 0:
            return
        if arr.dtype == _INT32:
            self._check(arr, dtype=_INT32)
            self._launch("fill_int", cs.elementwise_grid(n), _BLOCK, (arr, _i32(n), _i32(value)))
        else:
            self._check(arr)
            self._launch("fill_real", cs.elementwise_grid(n), _BLOCK,
                         (arr, _i32(n), self._real(value)))

    def _plan_gemm(self, a, b, c, trans_a, trans_b):
        lda, ldb, ldc = self._ld(a), self._ld(b), self._ld(c)
        plan = cs.plan_gemm(a.shape, b.shape, c.shape, trans_a, trans_b, self._num_sms,
                            self.gemm_tile)
        if plan is None:
            return None
        ints = tuple(_i32(v) for v in (plan.m, plan.n, plan.k, lda, ldb, ldc))
        return self._fns[plan.kernel], plan.grid, plan.block, ints

    def gemm(self, a, b, c, alpha=1.0, beta=0.0, trans_a=False, trans_b=False):
        key = (a.shape, a.strides, a.dtype, b.shape, b.strides, b.dtype, c.shape, c.strides,
               c.dtype, trans_a, trans_b, self.gemm_tile)
        try:
            plan = self._gemm_plans[key]
        except KeyError:
            if len(self._gemm_plans) > 4096:  # many shapes (evaluation sweeps): start over
                self._gemm_plans.clear()
            plan = self._gemm_plans[key] = self._plan_gemm(a, b, c, trans_a, trans_b)
        if plan is None:
            return
        fn, grid, block, ints = plan
        real = self._real
        fn(grid, block, (a, b, c, *ints, real(alpha), real(beta)), stream=self._stream)

    def bias_sigmoid(self, z, bias, out):
        rows, n = cs.bias_shapes(z, bias, out)
        if n:
            self._check(z, bias, out)
            self._launch("bias_sigmoid", cs.elementwise_grid(n), _BLOCK,
                         (z, bias, out, _i32(rows), _i32(n)))

    def add_bias(self, z, bias):
        rows, n = cs.bias_shapes(z, bias, z)
        if n:
            self._check(z, bias)
            self._launch("add_bias", cs.elementwise_grid(n), _BLOCK, (z, bias, _i32(rows), _i32(n)))

    def sigmoid(self, x, out):
        n = cs.same_size(x, out)
        if n:
            self._check(x, out)
            self._launch("sigmoid", cs.elementwise_grid(n), _BLOCK, (x, out, _i32(n)))

    def softmax(self, x, out, axis=0):
        nlines, length, line_stride, elem_stride = cs.softmax_lines(x, out, axis)
        if nlines and length:
            self._check(x, out)
            self._launch("softmax_lines", cs.softmax_grid(nlines), _BLOCK,
                         (x, out, _i32(nlines), _i32(length), _i32(line_stride),
                          _i32(elem_stride)))

    def sigmoid_backward(self, grad, a, out):
        n = cs.same_size(grad, a, out)
        if n:
            self._check(grad, a, out)
            self._launch("sigmoid_backward", cs.elementwise_grid(n), _BLOCK,
                         (grad, a, out, _i32(n)))

    def reduce_cols(self, x, out, alpha=1.0):
        rows, cols = cs.reduce_shapes(x, out)
        if rows:
            ld = self._ld(x)
            self._check(out)
            grid, block = cs.reduce_cols_launch(rows)
            self._launch("reduce_cols", grid, block,
                         (x, out, _i32(rows), _i32(cols), _i32(ld), self._real(alpha)))

    def softmax_xent_backward(self, yhat, labels, scale, out):
        rows, cols = cs.label_shapes(yhat, labels)
        n = cs.same_size(yhat, out)
        if n:
            self._check(yhat, out)
            self._check(labels, dtype=_INT32)
            self._launch("softmax_xent_backward", cs.elementwise_grid(n), _BLOCK,
                         (yhat, labels, out, _i32(rows), _i32(n), self._real(scale)))

    def axpy(self, alpha, x, y):
        n = cs.same_size(x, y)
        if n:
            self._check(x, y)
            self._launch("axpy", cs.elementwise_grid(n), _BLOCK, (x, y, _i32(n), self._real(alpha)))

    def nll_sum(self, yhat, labels, acc):
        rows, cols = cs.label_shapes(yhat, labels)
        if rows and cols:
            ld = self._ld(yhat)
            self._check(labels, dtype=_INT32)
            self._check(acc)
            self._launch("nll_sum", cs.ONE_BLOCK, _BLOCK,
                         (yhat, labels, acc, _i32(rows), _i32(cols), _i32(ld)))

    def count_correct(self, scores, labels, acc):
        rows, cols = cs.label_shapes(scores, labels)
        if rows and cols:
            ld = self._ld(scores)
            self._check(labels, dtype=_INT32)
            self._check(acc)
            self._launch("count_correct", cs.ONE_BLOCK, _BLOCK,
                         (scores, labels, acc, _i32(rows), _i32(cols), _i32(ld)))

    def sum_squares(self, x):
        n = x.size
        if n == 0:
            return 0.0
        self._check(x)
        cs.check_index_range(n)
        grid = cs.sum_squares_grid(n)
        self._launch("sum_squares_partial", grid, _BLOCK, (x, self._scratch, _i32(n)))
        total = self._scratch[cs.SUM_PARTIAL_BLOCKS:]
        self._launch("sum_partials", cs.ONE_BLOCK, _BLOCK, (self._scratch, _i32(grid[0]), total))
        self._d2h(total, self._scalar_host)
        return float(self._scalar_host[0])


@hookimpl
def register_backends(register):
    register(CupyBackend)
