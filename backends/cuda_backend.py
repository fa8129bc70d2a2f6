"""The ops of core/ops.py for the CUDA backends, written once over the kernels of kernels.cu.

CupyBackend (ops_cupy.py) and PycudaBackend (ops_pycuda.py) launch the same kernels with the same
geometry and differ only in the library underneath. Every op lives here: each op of the table is
``table_method`` of its entry in op_table.py (shape rule, operand checks, kernels, launch
geometry; cuda_dispatch.py), named below; the GEMM and the fused GEMMs are written out in
cuda_gemm.py (their launches are planned per shape by gemm_plan.py). A subclass provides the
library and nothing else (the abstract members below):

* its ``__init__``: the device, a stream and the compiled kernels, handed on to ``_start``;
* how a kernel is called: ``_call`` and ``_ARG`` (see cuda_dispatch.kernel_launcher);
* what the ops read off one of its arrays: ``_contiguous``, ``_layout``, ``_leading_dim``;
* memory and transfers: ``empty``, ``_h2d``, ``_d2h``, ``to_host``, ``copy_to_host``,
  ``copy_from_host``, ``host_buffer``, ``_view``, ``cols``, ``device_pointer``, ``stream_handle``;
* for ``availability``: ``_LIBRARY``, ``_count_devices``, ``_device_name``, ``_missing``.

Importing this module imports no GPU library.
"""

from __future__ import annotations

import abc
import importlib
import math
from typing import Any, Callable, ClassVar

import numpy as np

from backends import cuda_compile, gemm_plan, op_table
from backends.cuda_dispatch import kernel_launcher, table_method
from backends.cuda_gemm import CudaGemms
from core.ops import Backend


class CudaBackend(CudaGemms, Backend):
    host_resident = False
    #: kernels.cu indexes with 32-bit ints (the device pre-flight refuses larger arrays in one line)
    max_elements = op_table.MAX_ELEMENTS

    #: the device's compute capability (major, minor); set by a subclass before _start
    _capability: tuple[int, int] = (0, 0)
    #: the build has wgmma (set by _start from the build's feature probe)
    _gemm_wgmma: bool = False

    # ----------------------------------------------------------------- the ops
    # The table's ops (op_table.OPS): one closure over each entry (cuda_dispatch.table_method).
    # The GEMM and the fused GEMMs: CudaGemms (cuda_gemm.py).
    fill = table_method("fill")
    bias_sigmoid = table_method("bias_sigmoid")
    add_bias = table_method("add_bias")
    sigmoid = table_method("sigmoid")
    softmax = table_method("softmax")
    sigmoid_backward = table_method("sigmoid_backward")
    reduce_cols = table_method("reduce_cols")
    softmax_xent_backward = table_method("softmax_xent_backward")
    axpy = table_method("axpy")
    sgd_step = table_method("sgd_step")
    nll_sum = table_method("nll_sum")
    output_layer = table_method("output_layer")
    output_backward = table_method("output_backward")
    count_correct = table_method("count_correct")
    sum_squares = table_method("sum_squares")
    exact_row_exponents = table_method("exact_row_exponents")
    exact_split = table_method("exact_split")
    exact_combine = table_method("exact_combine")
    exact_sigmoid = table_method("exact_sigmoid")
    exact_sigmoid_backward = table_method("exact_sigmoid_backward")
    exact_output_layer = table_method("exact_output_layer")
    exact_sgd_step = table_method("exact_sgd_step")

    # The one-pass output_backward kernel is off by default: it landed without a GPU machine to
    # run it (README, "output_backward"). Until it has passed the GPU suite the step computes
    # output_backward as the contract's default, the two fused GEMMs; the GPU tests, the bench's
    # --fused-backward and `backend.fused_output_backward = True` run the kernel.
    #: output_backward by its kernel (op_table.OUTPUT_BACKWARD) where True, else by the default
    fused_output_backward: bool = False
    _output_backward_kernel = output_backward

    def output_backward(self, w2, diff, a1, dw2b2, dz1):
        if self.fused_output_backward:
            self._output_backward_kernel(w2, diff, a1, dw2b2, dz1)
        else:
            Backend.output_backward(self, w2, diff, a1, dw2b2, dz1)

    output_backward.__doc__ = Backend.output_backward.__doc__
    output_backward.op = op_table.OP_BY_NAME["output_backward"]

    # ----------------------------------------------------------------- what a subclass provides
    #: how an argument of each kind of op_table.KERNEL_SIGNATURES (P pointer, i int, r real) is
    #: passed: a function of the value the op holds (its array, int or float); set per instance
    _ARG: dict[str, Callable[[Any], Any]]
    # _contiguous and _layout are plain callables of one array (operator.attrgetter), no methods:
    # the hot path calls them on every op.
    #: arr -> whether the element-wise kernels may read it as .size contiguous elements
    _contiguous: ClassVar[Callable[[Any], bool]]
    #: arr -> how its elements lie beyond shape and dtype (its strides, or its leading dimension):
    #: part of a cached GEMM plan's key
    _layout: ClassVar[Callable[[Any], Any]]
    #: the module availability() imports (lazily) and hands to _count_devices and _device_name
    _LIBRARY: ClassVar[str]

    @abc.abstractmethod
    def _call(self, fn, grid, block, args: list) -> None:
        """Launch kernel `fn` on the backend's stream with the converted `args`."""

    @classmethod
    @abc.abstractmethod
    def _count_devices(cls, lib) -> int:
        """Number of CUDA devices; may raise (no driver)."""

    @classmethod
    @abc.abstractmethod
    def _device_name(cls, lib, index: int) -> str:
        """Name of device `index`."""

    @classmethod
    def _missing(cls) -> str | None:
        """Why the backend cannot run although there is a device (a tool it needs), or None."""
        return None

    @abc.abstractmethod
    def _leading_dim(self, arr) -> int:
        """Leading dimension of `arr`, a matrix of the backend dtype; raises if not column-major."""

    @abc.abstractmethod
    def _h2d(self, host: np.ndarray, arr) -> None:
        """Copy the contiguous `host` into the same-sized contiguous `arr`. Synchronises (the
        caller may reuse `host` on return)."""

    @abc.abstractmethod
    def _d2h(self, arr, host: np.ndarray) -> None:
        """Copy the contiguous `arr` into the same-sized contiguous `host`. Synchronises."""

    @abc.abstractmethod
    def _view(self, flat, offset: int, shape: tuple[int, ...]):
        """Column-major view of `shape` into the 1-D `flat`, `offset` elements in."""

    # ----------------------------------------------------------------- availability
    @classmethod
    def availability(cls) -> tuple[bool, str]:
        try:
            lib = importlib.import_module(cls._LIBRARY)
        except ImportError:
            return False, f"{cls.name} is not installed"
        except Exception as exc:  # a broken install (missing CUDA libraries) must not raise here
            return False, f"{cls.name} failed to import: {exc}"
        try:
            count = cls._count_devices(lib)
            if count < 1:
                return False, f"no CUDA device: {cls.name} found 0 devices"
            first = cls._device_name(lib, 0)
        except Exception as exc:
            return False, f"no CUDA device: {exc}"
        missing = cls._missing()
        if missing:
            return False, missing
        return True, f"{count} device(s): {first}"

    @classmethod
    def device_count(cls) -> int:
        try:
            return cls._count_devices(importlib.import_module(cls._LIBRARY))
        except Exception:
            return 0

    # ----------------------------------------------------------------- set-up
    def __init__(self, dtype: str = "float64", device_index: int | None = None):
        super().__init__(dtype, device_index)
        self.device_index = 0 if device_index is None else int(device_index)

    def _start(self, kernels: dict[str, Any], num_sms: int,
               capability: tuple[int, int] | None = None,
               features: tuple[int, int] | None = None) -> None:
        """The end of a subclass's ``__init__``, once its device, stream and kernels are ready.

        `kernels` maps each kernel name to what the subclass's ``_call`` launches; `capability` is
        the device's compute capability (major, minor); None keeps the class's (test doubles);
        `features`: what cuda_compile.FEATURE_PROBE read from the build, (__CUDA_ARCH__, wgmma)."""
        self._kernel_fns = kernels
        self._num_sms = num_sms
        if capability is not None:
            self._capability = tuple(capability)
        #: the build has wgmma (sm_90a): tf32x3 launches the Hopper tiles (gemm_wgmma.cuh)
        self._gemm_wgmma = bool(features and features[1]) and self.dtype == np.float32
        #: the GEMM planner may pick the FP64 tensor-core tile (float64 on sm_80+; gemm_tc64.cuh)
        self._gemm_tc64 = gemm_plan.tc64_eligible(self.dtype.name, self._capability)
        self._gemm_plans: dict[tuple, tuple | None] = {}
        self._allocate_workspace()
        #: kernel name -> launch(grid, block, *args), for the table's ops (its launchers hold the
        #: workspace buffers); the GEMM kernels launch through their plans
        self._launch = {launch.kernel: kernel_launcher(self, launch.kernel)
                        for op in op_table.OPS if not op.planned for launch in op.all_launches}

    def gemm_path(self) -> str:
        """One line: which GEMM instruction the kernels of this run multiply with (start-up)."""
        return cuda_compile.gemm_path(self.dtype, self._capability, self._gemm_wgmma,
                                      self.gemm_mode)

    def _allocate_workspace(self) -> None:
        """The buffers of op_table.WORKSPACE, as ``_<name>``. Allocated here, never at plan time:
        the first planned call may be captured into a CUDA graph, where nothing may allocate."""
        # sum_squares: per-block partial sums, then the total in the last slot
        self._scratch = self.empty((op_table.SUM_PARTIAL_BLOCKS + 1,))
        self._total = self.cols(self._scratch, op_table.SUM_PARTIAL_BLOCKS,
                                op_table.SUM_PARTIAL_BLOCKS + 1)
        self._scalar_host = self.host_buffer(1)
        # output_layer: a partial loss per block, and the ticket that finds the last block (zero
        # here; every launch leaves it at zero)
        self._output_partials = self.empty((op_table.OUTPUT_MAX_BLOCKS,))
        self._output_ticket = self.from_host(np.zeros(1, np.int32))
        # the split-K GEMMs (gemm.cuh SplitK): partial tiles and a ticket per tile (zero here;
        # every launch leaves them at zero)
        self._gemm_partials = self.empty((op_table.WORKSPACE["gemm_partials"][0],))
        self._gemm_tickets = self.from_host(
            np.zeros(op_table.WORKSPACE["gemm_tickets"][0], np.int32))
        # output_backward: partial [dW2 db2] columns and a ticket per row of blocks (zero here;
        # every launch leaves them at zero)
        self._backward_partials = self.empty((op_table.WORKSPACE["backward_partials"][0],))
        self._backward_tickets = self.from_host(
            np.zeros(op_table.WORKSPACE["backward_tickets"][0], np.int32))

    # ----------------------------------------------------------------- what the ops check
    def _ld(self, arr) -> int:
        """The leading dimension of the matrix operand `arr` (checked: a matrix, of the dtype,
        within the kernels' 32-bit indices)."""
        if arr.ndim != 2:
            raise ValueError(f"expected a matrix, got shape {arr.shape}")
        if arr.dtype != self.dtype:
            raise TypeError(f"expected {self.dtype} matrix, got {arr.dtype}")
        ld = self._leading_dim(arr)
        op_table.check_index_range(ld * max(arr.shape[1], 1))
        return ld

    def _reject(self, arr, dtype):
        """Raise for an operand the element-wise kernels cannot read as .size contiguous elements
        of `dtype` (the table's methods call this only once a check has failed)."""
        if arr.dtype != dtype:
            raise TypeError(f"expected {dtype} array, got {arr.dtype}")
        raise ValueError("element-wise kernels need contiguous (column-slice or flat) views")

    def _read_total(self) -> float:
        """The value sum_squares left in the workspace's last slot (synchronises)."""
        self._d2h(self._total, self._scalar_host)
        return float(self._scalar_host[0])

    # ----------------------------------------------------------------- memory and transfers
    def from_host(self, host):
        host = np.asarray(host)
        dtype = np.int32 if np.issubdtype(host.dtype, np.integer) else self.dtype
        src = np.asfortranarray(host, dtype=dtype)
        arr = self.empty(src.shape, dtype)
        self._h2d(src.ravel(order="F"), arr)  # 1-D, contiguous: what the device holds
        return arr

    def flat_views(self, flat, shapes):
        views, offset = [], 0
        for shape in shapes:
            shape = tuple(int(d) for d in shape)
            views.append(self._view(flat, offset, shape))
            offset += math.prod(shape)
        if offset > flat.size:
            raise ValueError(f"shapes need {offset} elements, flat array has {flat.size}")
        return views

    def synchronize(self):
        self._stream.synchronize()
