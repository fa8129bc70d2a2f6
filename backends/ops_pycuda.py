"""PyCUDA backend: the kernels of backends/kernels.cu, compiled by nvcc through ``SourceModule``.

PyCUDA is used for memory, compilation and launches only (prepared calls, no gpuarray math, no
cuBLAS); the ops are written once in cuda_backend.py. Arrays are ``DeviceMatrix`` objects: a device
pointer plus a column-major shape and leading dimension, so ``cols`` and ``flat_views`` are pointer
arithmetic (zero-copy views).

The backend runs in the device's *primary* context, the one the CUDA runtime (and so CuPy) uses:
PyCUDA and CuPy can then share one process, one device and each other's pointers. All work is queued
on one non-blocking stream owned by the backend. The element-wise kernels need contiguous operands,
which column slices and flat views always are; the GEMM honours the leading dimension.
"""

from __future__ import annotations

import atexit
import functools
import math
import operator
from dataclasses import dataclass

import numpy as np

from backends import cuda_compile, cuda_graphs, gemm_plan, op_table
from backends.cuda_backend import CudaBackend
from core.hookspecs import hookimpl

# device index -> pycuda.driver.Context (the retained primary context)
_CONTEXTS: dict[int, object] = {}


@dataclass
class _ContextStack:
    """What this module has pushed onto PyCUDA's context stack."""

    #: device index of the context this module pushed last (None: nothing pushed)
    current: int | None = None
    #: pushes not yet popped
    pushes: int = 0


_STACK = _ContextStack()
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
    if _STACK.current != index:
        ctx.push()
        _STACK.current = index
        _STACK.pushes += 1
        if _STACK.pushes == 1:
            atexit.register(_pop_contexts)
    return ctx


def _pop_contexts():
    import pycuda.driver as cuda

    # Functions and modules first: unloading them needs their context.
    _KERNELS.clear()
    while _STACK.pushes > 0:
        _STACK.pushes -= 1
        try:
            cuda.Context.pop()
        except Exception:
            break
    _STACK.current = None
    _CONTEXTS.clear()


def _kernels_for(dtype: np.dtype, device: int, capability: tuple[int, int]):
    key = (dtype.name, device)
    if key not in _KERNELS:
        import pycuda.driver as cuda
        from pycuda.compiler import SourceModule

        nvcc = cuda_compile.find_nvcc() or "nvcc"
        options = list(cuda_compile.compile_options(dtype))
        # sm_90a where the kernels use its features (cuda_compile.ARCH_SPECIFIC); None: nvcc's
        # -arch for the current device, PyCUDA's default
        arch = cuda_compile.build_arch(capability)
        # the headers are expanded into the source (cuda_compile): nvcc runs in a temporary
        # directory and needs no include path
        try:
            module = SourceModule(cuda_compile.read_source(), nvcc=nvcc, options=options,
                                  no_extern_c=True, arch=arch)
        except Exception:  # pycuda.driver.CompileError: an nvcc without the arch-specific target
            if arch is None:
                raise
            arch = None  # the default build (no wgmma; the probe below says so)
            module = SourceModule(cuda_compile.read_source(), nvcc=nvcc, options=options,
                                  no_extern_c=True, arch=arch)
        probe = SourceModule(cuda_compile.FEATURE_PROBE, nvcc=nvcc, options=options,
                             no_extern_c=True, arch=arch)
        out = np.zeros(2, dtype=np.int32)
        probe.get_function("build_features")(cuda.Out(out), block=(1, 1, 1), grid=(1, 1))
        features = int(out[0]), int(out[1])
        kernels = {}
        for name in cuda_compile.kernel_names(dtype):
            func = module.get_function(name)
            func.prepare(op_table.pycuda_format(op_table.KERNEL_SIGNATURES[name], dtype))
            dyn = gemm_plan.launch_dyn_smem(name, bool(features[1]))
            if dyn:  # past 48 KB: the kernel's limit raised once (_launcher gives it each launch)
                func.set_attribute(cuda.function_attribute.MAX_DYNAMIC_SHARED_SIZE_BYTES, dyn)
            kernels[name] = func
        kernels["_module"] = module  # keeps the module loaded while the functions live
        _KERNELS[key] = kernels, features
    return _KERNELS[key]


def _launcher(func, name: str, wgmma: bool):
    """The prepared call of a kernel: (grid, block, stream, *args), with the dynamic shared
    memory of its tile where it takes some in this build (gemm_plan.launch_dyn_smem)."""
    dyn = gemm_plan.launch_dyn_smem(name, wgmma)
    if dyn:
        return functools.partial(func.prepared_async_call, shared_size=dyn)
    return func.prepared_async_call


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


class PycudaBackend(CudaBackend):
    name = "pycuda"
    description = "CUDA via PyCUDA (nvcc-compiled kernels.cu, prepared calls), float32 and float64"
    priority = 10

    _LIBRARY = "pycuda.driver"
    # A launch: a prepared call, with the device pointer of each array and the ints and floats as
    # they are (the prepare() format packs them as int and float/double).
    _ARG = {"P": operator.attrgetter("ptr"), "i": int, "r": float}
    _contiguous = operator.attrgetter("contiguous")
    _layout = operator.attrgetter("ld")

    @classmethod
    def _count_devices(cls, cuda) -> int:
        cuda.init()
        return int(cuda.Device.count())

    @classmethod
    def _device_name(cls, cuda, index: int) -> str:
        return cuda.Device(index).name()

    @classmethod
    def _missing(cls) -> str | None:
        if cuda_compile.find_nvcc() is None:
            return "nvcc not found (PyCUDA compiles kernels.cu with it): add it to PATH"
        return None

    def __init__(self, dtype: str = "float64", device_index: int | None = None):
        super().__init__(dtype, device_index)
        import pycuda.driver as cuda

        self._cuda = cuda
        cuda.init()
        self._context = _primary_context(self.device_index)
        self._dev = cuda.Device(self.device_index)
        self._stream = cuda.Stream(1)  # CU_STREAM_NON_BLOCKING: no implicit sync with stream 0
        capability = tuple(self._dev.compute_capability())
        self._fns, features = _kernels_for(self.dtype, self.device_index, capability)
        self._start({name: _launcher(self._fns[name], name, bool(features[1]))
                     for name in cuda_compile.kernel_names(self.dtype)},
                    int(self._dev.get_attribute(cuda.device_attribute.MULTIPROCESSOR_COUNT)),
                    capability, features)

    def _call(self, fn, grid, block, args):
        fn(grid, block, self._stream, *args)

    def describe_device(self) -> str:
        return f"cuda:{self.device_index} ({self._dev.name()})"

    def _leading_dim(self, arr) -> int:
        return arr.ld

    # ----------------------------------------------------------------- memory and transfers
    def empty(self, shape, dtype=None):
        dtype = np.dtype(dtype or self.dtype)
        shape = tuple(int(s) for s in shape)
        # cuMemAlloc refuses 0 bytes: an empty array still gets one element of memory
        alloc = self._cuda.mem_alloc(max(math.prod(shape), 1) * dtype.itemsize)
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

    def _view(self, flat, offset, shape):
        return flat.view(offset, shape)

    def cols(self, arr, start, stop):
        start, stop, _ = slice(start, stop).indices(arr.shape[-1])
        if len(arr.shape) == 1:
            return arr.view(start, (max(stop - start, 0),))
        return arr.view(start * arr.ld, (arr.shape[0], max(stop - start, 0)), arr.ld)

    def device_pointer(self, arr):
        return int(arr.ptr)

    def stream_handle(self):
        return int(self._stream.handle)

    def device_memory(self):
        free, total = self._cuda.mem_get_info()  # of the current context: this backend's
        return int(free), int(total)

    def graph_support(self):
        return cuda_graphs.driver_available()

    def begin_capture(self):
        cuda_graphs.begin_driver_capture(self.stream_handle())

    def end_capture(self):
        return cuda_graphs.end_driver_capture(self.stream_handle())


@hookimpl
def register_backends(register):
    register(PycudaBackend)
