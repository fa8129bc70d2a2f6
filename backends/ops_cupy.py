"""CuPy backend: the kernels of backends/kernels.cu, compiled by NVRTC through ``cupy.RawModule``.

CuPy is used for memory, compilation and launches only; every op is one of our kernels (no cuBLAS,
no CuPy array math), written once in cuda_backend.py. Arrays are Fortran-ordered ``cupy.ndarray``s
of the backend dtype (labels: int32). All work is queued on one non-blocking stream owned by the
backend; allocation happens under that stream too, so CuPy's memory pool only hands a freed block
back to work ordered after it.

The element-wise kernels need contiguous operands; column slices (``cols``) and ``flat_views`` of a
Fortran-ordered array always are. The GEMM honours leading dimensions.
"""

from __future__ import annotations

import functools

import math
import operator

import numpy as np

from backends import cuda_compile, cuda_graphs, gemm_plan, op_table
from backends.cuda_backend import CudaBackend
from core.hookspecs import hookimpl

# (dtype name, device index) -> ({kernel name: cupy Function}, the build's features); compiled
# once per process
_KERNELS: dict[tuple[str, int], tuple[dict[str, object], tuple[int, int]]] = {}


def _kernels_for(dtype: np.dtype, device: int, capability: tuple[int, int]):
    key = (dtype.name, device)
    if key not in _KERNELS:
        import cupy

        with cupy.cuda.Device(device):
            # sm_90a where the kernels use its features (cuda_compile.ARCH_SPECIFIC); NVRTC takes
            # the last target option, ours after the -arch=sm_<cc> that CuPy adds
            options = (cuda_compile.compile_options(dtype)
                       + cuda_compile.arch_options(cuda_compile.build_arch(capability)))
            module = cupy.RawModule(code=cuda_compile.read_source(), options=options)
            names = cuda_compile.kernel_names(dtype)
            try:
                # compiles (NVRTC, cached on disk by CuPy) and loads the module on this device
                raws = {name: module.get_function(name) for name in names}
            except cupy.cuda.compiler.CompileException:
                if options == cuda_compile.compile_options(dtype):
                    raise
                # an NVRTC without the arch-specific target: the default build (no wgmma; the
                # probe below says so)
                options = cuda_compile.compile_options(dtype)
                module = cupy.RawModule(code=cuda_compile.read_source(), options=options)
                raws = {name: module.get_function(name) for name in names}
            # RawKernel.kernel is the cupy.cuda.Function, whose call takes the stream explicitly:
            # no `with stream:` (and its bookkeeping) around every launch.
            probe = cupy.RawModule(code=cuda_compile.FEATURE_PROBE, options=options)
            out = cupy.zeros(2, dtype=np.int32)
            probe.get_function("build_features")((1,), (1,), (out,))
            arch, wgmma = (int(v) for v in cupy.asnumpy(out))
            kernels = {}
            for name, raw in raws.items():
                dyn = gemm_plan.launch_dyn_smem(name, bool(wgmma))
                if dyn:  # past 48 KB: the kernel's limit raised once, every launch given it
                    raw.max_dynamic_shared_size_bytes = dyn
                    kernels[name] = functools.partial(raw.kernel, shared_mem=dyn)
                else:
                    kernels[name] = raw.kernel
            _KERNELS[key] = kernels, (arch, wgmma)
    return _KERNELS[key]


def _as_is(value):
    return value


class CupyBackend(CudaBackend):
    name = "cupy"
    description = "CUDA via CuPy (NVRTC-compiled kernels.cu, no cuBLAS), float32 and float64"
    priority = 20

    _LIBRARY = "cupy"
    _contiguous = operator.attrgetter("flags.f_contiguous")
    _layout = operator.attrgetter("strides")

    @classmethod
    def _count_devices(cls, cupy) -> int:
        return int(cupy.cuda.runtime.getDeviceCount())

    @classmethod
    def _device_name(cls, cupy, index: int) -> str:
        name = cupy.cuda.runtime.getDeviceProperties(index)["name"]
        return name.decode() if isinstance(name, bytes) else str(name)

    def __init__(self, dtype: str = "float64", device_index: int | None = None):
        super().__init__(dtype, device_index)
        import cupy
        import cupyx

        self._cp = cupy
        self._cupyx = cupyx
        self._device = cupy.cuda.Device(self.device_index)
        # one device per process (per rank): make it current for every later CuPy call
        self._device.use()
        self._stream = cupy.cuda.Stream(non_blocking=True)
        # Arrays go to the kernel as they are, scalars as NumPy scalars of their C types (CuPy
        # would pass a Python int as a 64-bit integer).
        self._ARG = {"P": _as_is, "i": np.int32, "r": self.dtype.type}
        cc = self._device.compute_capability  # "90" for 9.0
        capability = (int(cc[:-1]), int(cc[-1]))
        kernels, features = _kernels_for(self.dtype, self.device_index, capability)
        self._start(kernels, int(self._device.attributes["MultiProcessorCount"]), capability,
                    features)

    def _call(self, fn, grid, block, args):
        fn(grid, block, tuple(args), stream=self._stream)

    def describe_device(self) -> str:
        return f"cuda:{self.device_index} ({self._device_name(self._cp, self.device_index)})"

    def _leading_dim(self, arr) -> int:
        if arr.size == 0:  # never dereferenced; its strides may be anything
            return max(arr.shape[0], 1)
        if arr.shape[0] > 1 and arr.strides[0] != arr.itemsize:
            raise ValueError("matrices must be column-major (Fortran order)")
        return op_table.leading_dim(arr.shape, arr.strides[1] // arr.itemsize)

    # ----------------------------------------------------------------- memory and transfers
    def empty(self, shape, dtype=None):
        with self._stream:
            return self._cp.empty(tuple(shape), dtype=np.dtype(dtype or self.dtype), order="F")

    def _h2d(self, host: np.ndarray, arr) -> None:
        if host.nbytes != arr.nbytes:
            raise ValueError(f"size mismatch: host {host.nbytes} bytes, device {arr.nbytes} bytes")
        self._copy(arr.data.ptr, host.ctypes.data, host.nbytes, "memcpyHostToDevice")

    def _d2h(self, arr, host: np.ndarray) -> None:
        if host.nbytes != arr.nbytes:
            raise ValueError(f"size mismatch: device {arr.nbytes} bytes, host {host.nbytes} bytes")
        self._copy(host.ctypes.data, arr.data.ptr, host.nbytes, "memcpyDeviceToHost")

    def _copy(self, dst: int, src: int, nbytes: int, direction: str) -> None:
        """nbytes from src to dst on the stream, then synchronise (the caller may reuse the host
        buffer on return); `direction` names the cupy.cuda.runtime memcpy kind."""
        if nbytes:
            rt = self._cp.cuda.runtime
            rt.memcpyAsync(dst, src, nbytes, getattr(rt, direction), self._stream.ptr)
            self._stream.synchronize()

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

    def _view(self, flat, offset, shape):
        return flat[offset:offset + math.prod(shape)].reshape(shape, order="F")

    def cols(self, arr, start, stop):
        return arr[start:stop] if arr.ndim == 1 else arr[:, start:stop]

    def device_pointer(self, arr):
        return int(arr.data.ptr)

    def stream_handle(self):
        return int(self._stream.ptr)

    def device_memory(self):
        with self._device:
            free, total = self._cp.cuda.runtime.memGetInfo()
        return int(free), int(total)

    def graph_support(self):
        return True, ""

    def begin_capture(self):
        cuda_graphs.begin_cupy_capture(self._stream)

    def end_capture(self):
        return cuda_graphs.end_cupy_capture(self._stream)


@hookimpl
def register_backends(register):
    register(CupyBackend)
