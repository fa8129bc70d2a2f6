"""The ops of core/ops.py for the CUDA backends, written once over the kernels of kernels.cu.

CupyBackend (ops_cupy.py) and PycudaBackend (ops_pycuda.py) launch the same kernels with the same
geometry (cuda_source.py) and differ only in the library underneath. Every op lives here; a
subclass provides the library and nothing else (the abstract members below):

* its ``__init__``: the device, a stream and the compiled kernels, handed on to ``_start``;
* how a kernel is called: ``_call`` and ``_ARG`` (see ``_launcher``);
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

from backends import cuda_source as cs
from core.ops import Backend

_INT32 = np.dtype(np.int32)
_BLOCK = cs.BLOCK_DIM
# arguments 3 to 8 of every gemm_* kernel: M, N, K, lda, ldb, ldc (cs.KERNEL_SIGNATURES)
_GEMM_SIZES = range(3, 9)


class CudaBackend(Backend):
    host_resident = False

    #: force one GEMM tile of cuda_source.GEMM_TILES (tests, tuning); None picks per shape
    gemm_tile: str | None = None

    # ----------------------------------------------------------------- what a subclass provides
    #: how an argument of each kind of cs.KERNEL_SIGNATURES (P pointer, i int, r real) is passed:
    #: a function of the value the op holds (its array, int or float); set per instance
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

    # ----------------------------------------------------------------- set-up and launching
    def __init__(self, dtype: str = "float64", device_index: int | None = None):
        super().__init__(dtype, device_index)
        self.device_index = 0 if device_index is None else int(device_index)

    def _start(self, kernels: dict[str, Any], num_sms: int) -> None:
        """The end of a subclass's ``__init__``, once its device, stream and kernels are ready.

        `kernels` maps each kernel name to what the subclass's ``_call`` launches."""
        self._kernel_fns = kernels
        self._num_sms = num_sms
        #: kernel name -> launch(grid, block, *args); the GEMM kernels launch through their plans
        self._launch = {name: self._launcher(name) for name in cs.KERNEL_NAMES
                        if not name.startswith("gemm_")}
        self._gemm_plans: dict[tuple, tuple | None] = {}
        # sum_squares: per-block partial sums, then the total in the last slot
        self._scratch = self.empty((cs.SUM_PARTIAL_BLOCKS + 1,))
        self._scalar_host = self.host_buffer(1)

    def _launcher(self, kernel: str, fixed: dict[int, Any] | None = None) -> Callable:
        """``launch(grid, block, *args)`` for `kernel`, args in the kernel's order as the ops hold
        them (arrays, Python ints and floats), each converted by the subclass's ``_ARG`` function
        for its kind in cs.KERNEL_SIGNATURES (P pointer, i int, r real).

        Arguments in `fixed` (position -> value) are converted once, here, and are no parameters
        of the launcher: a GEMM plan fixes the sizes."""
        fixed = fixed or {}
        fn, call = self._kernel_fns[kernel], self._call
        kinds = cs.KERNEL_SIGNATURES[kernel]
        converters = [self._ARG[kind] for pos, kind in enumerate(kinds) if pos not in fixed]
        if not fixed:
            def launch(grid, block, *args):
                call(fn, grid, block, [conv(a) for conv, a in zip(converters, args)])
            return launch
        constants = {pos: self._ARG[kinds[pos]](value) for pos, value in fixed.items()}

        def launch_with_constants(grid, block, *args):
            given = iter(conv(a) for conv, a in zip(converters, args))
            call(fn, grid, block, [constants[pos] if pos in constants else next(given)
                                   for pos in range(len(kinds))])
        return launch_with_constants

    def _check(self, *arrays, dtype=None):
        """The element-wise kernels read each array as .size contiguous elements of the dtype."""
        dtype = dtype or self.dtype
        contiguous = self._contiguous
        for arr in arrays:
            if arr.dtype != dtype:
                raise TypeError(f"expected {dtype} array, got {arr.dtype}")
            if not contiguous(arr):
                raise ValueError("element-wise kernels need contiguous (column-slice or flat) views")

    def _ld(self, arr) -> int:
        if arr.ndim != 2:
            raise ValueError(f"expected a matrix, got shape {arr.shape}")
        if arr.dtype != self.dtype:
            raise TypeError(f"expected {self.dtype} matrix, got {arr.dtype}")
        ld = self._leading_dim(arr)
        cs.check_index_range(ld * max(arr.shape[1], 1))
        return ld

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

    # ----------------------------------------------------------------- math
    # Hot path: each op checks shapes, then launches one kernel. GEMM launches are planned once
    # per operand layout, so a training step only looks them up.
    def fill(self, arr, value):
        n = arr.size
        if n == 0:
            return
        if arr.dtype == _INT32:
            self._check(arr, dtype=_INT32)
            self._launch["fill_int"](cs.elementwise_grid(n), _BLOCK, arr, n, int(value))
        else:
            self._check(arr)
            self._launch["fill_real"](cs.elementwise_grid(n), _BLOCK, arr, n, value)

    def _plan_gemm(self, a, b, c, trans_a, trans_b):
        lda, ldb, ldc = self._ld(a), self._ld(b), self._ld(c)
        plan = cs.plan_gemm(a.shape, b.shape, c.shape, trans_a, trans_b, self._num_sms,
                            self.gemm_tile)
        if plan is None:
            return None
        sizes = dict(zip(_GEMM_SIZES, (plan.m, plan.n, plan.k, lda, ldb, ldc)))
        return self._launcher(plan.kernel, fixed=sizes), plan.grid, plan.block

    def gemm(self, a, b, c, alpha=1.0, beta=0.0, trans_a=False, trans_b=False):
        layout = self._layout
        key = (a.shape, layout(a), a.dtype, b.shape, layout(b), b.dtype,
               c.shape, layout(c), c.dtype, trans_a, trans_b, self.gemm_tile)
        try:
            plan = self._gemm_plans[key]
        except KeyError:
            if len(self._gemm_plans) > 4096:  # many shapes (evaluation sweeps): start over
                self._gemm_plans.clear()
            plan = self._gemm_plans[key] = self._plan_gemm(a, b, c, trans_a, trans_b)
        if plan is not None:
            launch, grid, block = plan
            launch(grid, block, a, b, c, alpha, beta)

    def bias_sigmoid(self, z, bias, out):
        rows, n = cs.bias_shapes(z, bias, out)
        if n:
            self._check(z, bias, out)
            self._launch["bias_sigmoid"](cs.elementwise_grid(n), _BLOCK, z, bias, out, rows, n)

    def add_bias(self, z, bias):
        rows, n = cs.bias_shapes(z, bias, z)
        if n:
            self._check(z, bias)
            self._launch["add_bias"](cs.elementwise_grid(n), _BLOCK, z, bias, rows, n)

    def sigmoid(self, x, out):
        n = cs.same_size(x, out)
        if n:
            self._check(x, out)
            self._launch["sigmoid"](cs.elementwise_grid(n), _BLOCK, x, out, n)

    def softmax(self, x, out, axis=0):
        nlines, length, line_stride, elem_stride = cs.softmax_lines(x, out, axis)
        if nlines and length:
            self._check(x, out)
            self._launch["softmax_lines"](cs.softmax_grid(nlines), _BLOCK, x, out, nlines, length,
                                          line_stride, elem_stride)

    def sigmoid_backward(self, grad, a, out):
        n = cs.same_size(grad, a, out)
        if n:
            self._check(grad, a, out)
            self._launch["sigmoid_backward"](cs.elementwise_grid(n), _BLOCK, grad, a, out, n)

    def reduce_cols(self, x, out, alpha=1.0):
        rows, cols = cs.reduce_shapes(x, out)
        if rows:
            ld = self._ld(x)
            self._check(out)
            grid, block = cs.reduce_cols_launch(rows)
            self._launch["reduce_cols"](grid, block, x, out, rows, cols, ld, alpha)

    def softmax_xent_backward(self, yhat, labels, scale, out):
        rows, cols = cs.label_shapes(yhat, labels)
        n = cs.same_size(yhat, out)
        if n:
            self._check(yhat, out)
            self._check(labels, dtype=_INT32)
            self._launch["softmax_xent_backward"](cs.elementwise_grid(n), _BLOCK, yhat, labels, out,
                                                  rows, n, scale)

    def axpy(self, alpha, x, y):
        n = cs.same_size(x, y)
        if n:
            self._check(x, y)
            self._launch["axpy"](cs.elementwise_grid(n), _BLOCK, x, y, n, alpha)

    def _label_reduction(self, kernel, scores, labels, acc):
        """nll_sum and count_correct: one block adds a sum over the columns into acc[0]."""
        rows, cols = cs.label_shapes(scores, labels)
        if rows and cols:
            ld = self._ld(scores)
            self._check(labels, dtype=_INT32)
            self._check(acc)
            self._launch[kernel](cs.ONE_BLOCK, _BLOCK, scores, labels, acc, rows, cols, ld)

    def nll_sum(self, yhat, labels, acc):
        self._label_reduction("nll_sum", yhat, labels, acc)

    def count_correct(self, scores, labels, acc):
        self._label_reduction("count_correct", scores, labels, acc)

    def sum_squares(self, x):
        n = x.size
        if n == 0:
            return 0.0
        self._check(x)
        cs.check_index_range(n)
        grid = cs.sum_squares_grid(n)
        self._launch["sum_squares_partial"](grid, _BLOCK, x, self._scratch, n)
        total = self.cols(self._scratch, cs.SUM_PARTIAL_BLOCKS, cs.SUM_PARTIAL_BLOCKS + 1)
        self._launch["sum_partials"](cs.ONE_BLOCK, _BLOCK, self._scratch, grid[0], total)
        self._d2h(total, self._scalar_host)
        return float(self._scalar_host[0])
