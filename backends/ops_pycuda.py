"""PyCUDA backend: the kernels of backends/kernels.cu, compiled by nvcc through ``SourceModule``.

PyCUDA is used for memory, compilation and launches only (prepared calls, no gpuarray math, no
cuBLAS). Arrays are ``DeviceMatrix`` objects: a device pointer plus a column-major shape and leading
dimension, so ``cols`` and ``flat_views`` are pointer arithmetic (zero-copy views).

The backend runs in the device's *primary* context, the one the CUDA runtime (and so CuPy) uses:
PyCUDA and CuPy can then share one process, one device and each other's pointers. All work is queued
on one non-blocking stream owned by the backend. The element-wise kernels need contiguous operands,
which column slices and flat views always are; the GEMM honours the leading dimension.
"""

from __future__ import annotations

import atexit
import math

import numpy as np

from backends import cuda_source as cs
from core.hookspecs import hookimpl
from core.ops import Backend

_INT32 = np.dtype(np.int32)
_BLOCK = cs.BLOCK_DIM

# device index -> pycuda.driver.Context (the retained primary context)
_CONTEXTS: dict[int, object] = {}
# [device index of the context this module last pushed, pushes not yet popped]
_STACK = [None, 0]
# (dtype name, device index) -> {kernel name: prepared pycuda Function}; compiled once per process
_KERNELS: dict[tuple[str, int], dict[str, object]] = {}


def _primary_context(index: int):
    """Push device `index`'s primary context onto PyCUDA's context stack and pop it at exit.

    PyCUDA needs a context on ITS stack even when the CUDA runtime (CuPy) already made the same
    primary context current, so the push does not depend on what is current. PyCUDA aborts the
    interpreter if its stack is not empty at shutdown, hence the atexit pop. One device per process
    (per MPI rank): the device asked for last stays current.
    """
    ctx = _CONTEXTS.get(index)
    if ctx is None:
        import pycuda.driver as cuda

        ctx = _CONTEXTS[index] = cuda.Device(index).retain_primary_context()
    if _STACK[0] != index:
        ctx.push()
        _STACK[0] = index
        _STACK[1] += 1
        if _STACK[1] == 1:
            atexit.register(_pop_contexts)
    return ctx


def _pop_contexts():
    import pycuda.driver as cuda

    # Functions and modules first: unloading them needs their context.
    _KERNELS.clear()
    while _STACK[1] > 0:
        _STACK[1] -= 1
        try:
            cuda.Context.pop()
        except Exception:
            break
    _STACK[0] = None
    _CONTEXTS.clear()


def _kernels_for(dtype: np.dtype, device: int):
    key = (dtype.name, device)
    if key not in _KERNELS:
        from pycuda.compiler import SourceModule

        module = SourceModule(cs.read_source(), nvcc=cs.find_nvcc() or "nvcc",
                              options=list(cs.compile_options(dtype)), no_extern_c=True)
        kernels = {}
        for name, signature in cs.KERNEL_SIGNATURES.items():
            func = module.get_function(name)
            func.prepare(cs.pycuda_format(signature, dtype))
            kernels[name] = func
        kernels["_module"] = module  # keeps the module loaded while the functions live
        _KERNELS[key] = kernels
    return _KERNELS[key]


class DeviceMatrix:
    """A column-major view of device memory: (rows, cols) with leading dimension ld, or a vector.

    Holds a reference to the allocation it views, so views keep their memory alive. Exposes
    ``__cuda_array_interface__`` (v3) so CuPy, Numba or mpi4py can read it without copying; the
    interface carries no stream: call the backend's ``synchronize()`` before handing it over.
    """

    __slots__ = ("ptr", "shape", "dtype", "ld", "size", "contiguous", "_owner")

    def __init__(self, ptr: int, shape, dtype, ld: int | None = None, owner=None):
        self.ptr = int(ptr)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        # a vector (or a 0-d array) is its own single column
        rows = self.shape[0] if self.shape else 1
        self.ld = max(rows, 1) if ld is None or len(self.shape) < 2 else int(ld)
        self.size = math.prod(self.shape)
        self.contiguous = (len(self.shape) < 2 or self.shape[1] <= 1 or rows == 0
                           or self.ld == rows)
        self._owner = owner

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def itemsize(self) -> int:
        return self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    @property
    def __cuda_array_interface__(self):
        item = self.dtype.itemsize
        strides = (item,) if self.ndim == 1 else (item, self.ld * item)
        return {"shape": self.shape, "typestr": self.dtype.str, "strides": strides,
                "data": (self.ptr if self.size else 0, False), "version": 3, "stream": None}

    def view(self, offset_elems: int, shape, ld: int | None = None) -> "DeviceMatrix":
        """A view of `shape` (ints) starting `offset_elems` elements in; built without the
        constructor's normalisation, since ``cols`` runs several times per training step."""
        v = object.__new__(DeviceMatrix)
        v.ptr = self.ptr + offset_elems * self.dtype.itemsize
        v.shape = shape
        v.dtype = self.dtype
        rows = shape[0] if shape else 1
        v.ld = max(rows, 1) if ld is None or len(shape) < 2 else ld
        v.size = math.prod(shape)
        v.contiguous = len(shape) < 2 or shape[1] <= 1 or rows == 0 or v.ld == rows
        v._owner = self._owner
        return v

    def __repr__(self) -> str:
        return f"DeviceMatrix(shape={self.shape}, dtype={self.dtype}, ld={self.ld}, ptr={self.ptr:#x})"


class PycudaBackend(Backend):
    name = "pycuda"
    description = "CUDA via PyCUDA (nvcc-compiled kernels.cu, prepared calls), float32 and float64"
    host_resident = False
    priority = 10

    #: force one GEMM tile of cuda_source.GEMM_TILES (tests, tuning); None picks per shape
    gemm_tile: str | None = None

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        try:
            import pycuda.driver as cuda
        except ImportError:
            return False, "pycuda is not installed"
        except Exception as exc:  # e.g. libcuda.so missing: PyCUDA's extension fails to load
            return False, f"pycuda failed to import: {exc}"
        try:
            cuda.init()
            count = cuda.Device.count()
            if count < 1:
                return False, "no CUDA device: pycuda found 0 devices"
            name = cuda.Device(0).name()
        except Exception as exc:
            return False, f"no CUDA device: {exc}"
        if cs.find_nvcc() is None:
            return False, "nvcc not found (PyCUDA compiles kernels.cu with it): add it to PATH"
        return True, f"{count} device(s): {name}"

    @classmethod
    def device_count(cls) -> int:
        try:
            import pycuda.driver as cuda

            cuda.init()
            return int(cuda.Device.count())
        except Exception:
            return 0

    def __init__(self, dtype: str = "float64", device_index: int | None = None):
        super().__init__(dtype, device_index)
        import pycuda.driver as cuda

        self._cuda = cuda
        cuda.init()
        self.device_index = 0 if device_index is None else int(device_index)
        self._context = _primary_context(self.device_index)
        self._dev = cuda.Device(self.device_index)
        self._stream = cuda.Stream(1)  # CU_STREAM_NON_BLOCKING: no implicit sync with stream 0
        self._num_sms = int(self._dev.get_attribute(cuda.device_attribute.MULTIPROCESSOR_COUNT))
        self._fns = _kernels_for(self.dtype, self.device_index)
        self._gemm_plans: dict[tuple, tuple | None] = {}
        # sum_squares: per-block partial sums, then the total in the last slot
        self._scratch = self.empty((cs.SUM_PARTIAL_BLOCKS + 1,))
        self._scalar_host = cuda.pagelocked_empty((1,), self.dtype)

    def describe_device(self) -> str:
        return f"cuda:{self.device_index} ({self._dev.name()})"

    # ----------------------------------------------------------------- launching
    def _launch(self, name, grid, block, *args):
        """args in kernel order: device pointers as ints, Python ints and floats (the prepare()
        format packs them as int and float/double)."""
        self._fns[name].prepared_async_call(grid, block, self._stream, *args)

    def _check(self, *arrays, dtype=None):
        """The element-wise kernels read each array as .size contiguous elements of the dtype."""
        dtype = dtype or self.dtype
        for arr in arrays:
            if arr.dtype != dtype:
                raise TypeError(f"expected {dtype} array, got {arr.dtype}")
            if not arr.contiguous:
                raise ValueError("element-wise kernels need contiguous (column-slice or flat) views")

    def _ld(self, arr) -> int:
        if arr.ndim != 2:
            raise ValueError(f"expected a matrix, got shape {arr.shape}")
        if arr.dtype != self.dtype:
            raise TypeError(f"expected {self.dtype} matrix, got {arr.dtype}")
        cs.check_index_range(arr.ld * max(arr.shape[1], 1))
        return arr.ld

    # ----------------------------------------------------------------- memory and transfers
    def empty(self, shape, dtype=None):
        dtype = np.dtype(dtype or self.dtype)
        shape = tuple(int(s) for s in shape)
        # cuMemAlloc refuses 0 bytes: an empty array still gets one element of memory
        alloc = self._cuda.mem_alloc(max(int(np.prod(shape)), 1) * dtype.itemsize)
        return DeviceMatrix(int(alloc), shape, dtype, owner=alloc)

    def _h2d(self, host: np.ndarray, arr: DeviceMatrix) -> None:
        if host.nbytes != arr.nbytes or not arr.contiguous:
            raise ValueError(f"host {host.nbytes} bytes into contiguous device {arr.nbytes} bytes")
        if host.nbytes:
            self._cuda.memcpy_htod_async(arr.ptr, host, self._stream)
            self._stream.synchronize()  # the caller may reuse the host buffer on return

    def _d2h(self, arr: DeviceMatrix, host: np.ndarray) -> None:
        if host.nbytes != arr.nbytes or not arr.contiguous:
            raise ValueError(f"contiguous device {arr.nbytes} bytes into host {host.nbytes} bytes")
        if host.nbytes:
            self._cuda.memcpy_dtoh_async(host, arr.ptr, self._stream)
            self._stream.synchronize()

    def from_host(self, host):
        host = np.asarray(host)
        dtype = np.int32 if np.issubdtype(host.dtype, np.integer) else self.dtype
        # 1-D in column-major order: what the device holds, and a buffer PyCUDA accepts
        flat = np.ascontiguousarray(np.ravel(host, order="F"), dtype=dtype)
        arr = self.empty(host.shape, dtype)
        self._h2d(flat, arr)
        return arr

    def to_host(self, arr):
        flat = np.empty(arr.size, dtype=arr.dtype)
        if not arr.contiguous:  # a strided view: copy column by column
            cols = [self.to_host(self.cols(arr, j, j + 1)) for j in range(arr.shape[1])]
            return np.asfortranarray(np.hstack(cols)) if cols else np.empty(arr.shape, arr.dtype,
                                                                             order="F")
        self._d2h(arr, flat)
        return flat.reshape(arr.shape, order="F")

    def copy_to_host(self, arr, host):
        self._d2h(arr, host)

    def copy_from_host(self, host, arr):
        self._h2d(host, arr)

    def host_buffer(self, size):
        return self._cuda.pagelocked_empty((int(size),), self.dtype)

    def flat_views(self, flat, shapes):
        views, offset = [], 0
        for shape in shapes:
            shape = tuple(int(d) for d in shape)
            views.append(flat.view(offset, shape))
            offset += math.prod(shape)
        if offset > flat.size:
            raise ValueError(f"shapes need {offset} elements, flat array has {flat.size}")
        return views

    def cols(self, arr, start, stop):
        start, stop, _ = slice(start, stop).indices(arr.shape[-1])
        if len(arr.shape) == 1:
            return arr.view(start, (max(stop - start, 0),))
        return arr.view(start * arr.ld, (arr.shape[0], max(stop - start, 0)), arr.ld)

    def synchronize(self):
        self._stream.synchronize()

    def device_pointer(self, arr):
        return int(arr.ptr)

    def stream_handle(self):
        return int(self._stream.handle)

    # ----------------------------------------------------------------- math
    # Hot path: each op checks shapes, then launches one kernel through a prepared call. GEMM
    # launch plans are cached per operand layout, so a training step only looks them up.
    def fill(self, arr, value):
        n = arr.size
        if n == 0:
            return
        if arr.dtype == _INT32:
            self._check(arr, dtype=_INT32)
            self._launch("fill_int", cs.elementwise_grid(n), _BLOCK, arr.ptr, n, int(value))
        else:
            self._check(arr)
            self._launch("fill_real", cs.elementwise_grid(n), _BLOCK, arr.ptr, n, float(value))

    def _plan_gemm(self, a, b, c, trans_a, trans_b):
        lda, ldb, ldc = self._ld(a), self._ld(b), self._ld(c)
        plan = cs.plan_gemm(a.shape, b.shape, c.shape, trans_a, trans_b, self._num_sms,
                            self.gemm_tile)
        if plan is None:
            return None
        return self._fns[plan.kernel], plan.grid, plan.block, (plan.m, plan.n, plan.k, lda, ldb, ldc)

    def gemm(self, a, b, c, alpha=1.0, beta=0.0, trans_a=False, trans_b=False):
        key = (a.shape, a.ld, a.dtype, b.shape, b.ld, b.dtype, c.shape, c.ld, c.dtype, trans_a,
               trans_b, self.gemm_tile)
        try:
            plan = self._gemm_plans[key]
        except KeyError:
            if len(self._gemm_plans) > 4096:  # many shapes (evaluation sweeps): start over
                self._gemm_plans.clear()
            plan = self._gemm_plans[key] = self._plan_gemm(a, b, c, trans_a, trans_b)
        if plan is None:
            return
        fn, grid, block, ints = plan
        fn.prepared_async_call(grid, block, self._stream, a.ptr, b.ptr, c.ptr, *ints,
                               float(alpha), float(beta))

    def bias_sigmoid(self, z, bias, out):
        rows, n = cs.bias_shapes(z, bias, out)
        if n:
            self._check(z, bias, out)
            self._launch("bias_sigmoid", cs.elementwise_grid(n), _BLOCK, z.ptr, bias.ptr, out.ptr,
                         rows, n)

    def add_bias(self, z, bias):
        rows, n = cs.bias_shapes(z, bias, z)
        if n:
            self._check(z, bias)
            self._launch("add_bias", cs.elementwise_grid(n), _BLOCK, z.ptr, bias.ptr, rows, n)

    def sigmoid(self, x, out):
        n = cs.same_size(x, out)
        if n:
            self._check(x, out)
            self._launch("sigmoid", cs.elementwise_grid(n), _BLOCK, x.ptr, out.ptr, n)

    def softmax(self, x, out, axis=0):
        nlines, length, line_stride, elem_stride = cs.softmax_lines(x, out, axis)
        if nlines and length:
            self._check(x, out)
            self._launch("softmax_lines", cs.softmax_grid(nlines), _BLOCK, x.ptr, out.ptr, nlines,
                         length, line_stride, elem_stride)

    def sigmoid_backward(self, grad, a, out):
        n = cs.same_size(grad, a, out)
        if n:
            self._check(grad, a, out)
            self._launch("sigmoid_backward", cs.elementwise_grid(n), _BLOCK, grad.ptr, a.ptr,
                         out.ptr, n)

    def reduce_cols(self, x, out, alpha=1.0):
        rows, cols = cs.reduce_shapes(x, out)
        if rows:
            ld = self._ld(x)
            self._check(out)
            grid, block = cs.reduce_cols_launch(rows)
            self._launch("reduce_cols", grid, block, x.ptr, out.ptr, rows, cols, ld, float(alpha))

    def softmax_xent_backward(self, yhat, labels, scale, out):
        rows, cols = cs.label_shapes(yhat, labels)
        n = cs.same_size(yhat, out)
        if n:
            self._check(yhat, out)
            self._check(labels, dtype=_INT32)
            self._launch("softmax_xent_backward", cs.elementwise_grid(n), _BLOCK, yhat.ptr,
                         labels.ptr, out.ptr, rows, n, float(scale))

    def axpy(self, alpha, x, y):
        n = cs.same_size(x, y)
        if n:
            self._check(x, y)
            self._launch("axpy", cs.elementwise_grid(n), _BLOCK, x.ptr, y.ptr, n, float(alpha))

    def nll_sum(self, yhat, labels, acc):
        rows, cols = cs.label_shapes(yhat, labels)
        if rows and cols:
            ld = self._ld(yhat)
            self._check(labels, dtype=_INT32)
            self._check(acc)
            self._launch("nll_sum", cs.ONE_BLOCK, _BLOCK, yhat.ptr, labels.ptr, acc.ptr, rows,
                         cols, ld)

    def count_correct(self, scores, labels, acc):
        rows, cols = cs.label_shapes(scores, labels)
        if rows and cols:
            ld = self._ld(scores)
            self._check(labels, dtype=_INT32)
            self._check(acc)
            self._launch("count_correct", cs.ONE_BLOCK, _BLOCK, scores.ptr, labels.ptr, acc.ptr,
                         rows, cols, ld)

    def sum_squares(self, x):
        n = x.size
        if n == 0:
            return 0.0
        self._check(x)
        cs.check_index_range(n)
        grid = cs.sum_squares_grid(n)
        self._launch("sum_squares_partial", grid, _BLOCK, x.ptr, self._scratch.ptr, n)
        total = self.cols(self._scratch, cs.SUM_PARTIAL_BLOCKS, cs.SUM_PARTIAL_BLOCKS + 1)
        self._launch("sum_partials", cs.ONE_BLOCK, _BLOCK, self._scratch.ptr, grid[0], total.ptr)
        self._d2h(total, self._scalar_host)
        return float(self._scalar_host[0])


@hookimpl
def register_backends(register):
    register(PycudaBackend)
