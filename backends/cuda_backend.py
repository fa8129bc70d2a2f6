"""The ops of core/ops.py for the CUDA backends, written once over the kernels of kernels.cu.

CupyBackend (ops_cupy.py) and PycudaBackend (ops_pycuda.py) launch the same kernels with the same
geometry and differ only in the library underneath. Every op lives here: the GEMM is written out
(its launches are planned per shape by gemm_plan.py); every other op is generated, when this module
is imported, from its entry in op_table.py (shape rule, operand checks, kernels, launch geometry),
so an op added to the table needs no method here. A subclass provides the library and nothing else
(the abstract members below):

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
import linecache
import math
from typing import Any, Callable, ClassVar

import numpy as np

from backends import gemm_plan, op_table
from core.ops import Backend


def _table_method(op: op_table.Op):
    """The method of `op`, compiled from op_table.dispatch_source; its source is registered with
    linecache, so tracebacks and debuggers show the generated lines."""
    source, env = op_table.dispatch_source(op)
    filename = f"<op_table {op.name}>"
    exec(compile(source, filename, "exec"), env)  # our own table's code, never input
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    method = env[op.name]
    method.__module__ = __name__
    method.__qualname__ = f"CudaBackend.{op.name}"
    method.__doc__ = getattr(Backend, op.name).__doc__
    return method


def _add_table_ops(cls):
    """Give `cls` the generated method of every op of op_table.OPS but the planned GEMMs."""
    for op in op_table.OPS:
        if not op.planned:
            setattr(cls, op.name, _table_method(op))
    abc.update_abstractmethods(cls)
    return cls


@_add_table_ops
class CudaBackend(Backend):
    host_resident = False

    #: force one GEMM tile of gemm_plan.GEMM_TILES (tests, tuning); None picks per shape
    gemm_tile: str | None = None
    #: force S blocks per GEMM tile over K (split-K; tests, tuning) where the tile has a split
    #: kernel and the workspace fits (else S = 1); None picks per shape (gemm_plan.pick_gemm_split)
    gemm_split: int | None = None
    #: --gemm: "simt" (FMA kernels) or "tf32x3" (float32 on sm_80+: the tensor-core kernels of
    #: gemm_tf32x3.cuh); set through set_gemm_mode, part of every GEMM plan's key
    gemm_modes = gemm_plan.GEMM_MODES
    gemm_mode: str = "simt"
    #: the device's compute capability (major, minor); set by a subclass before _start
    _capability: tuple[int, int] = (0, 0)

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

    # ----------------------------------------------------------------- set-up and launching
    def __init__(self, dtype: str = "float64", device_index: int | None = None):
        super().__init__(dtype, device_index)
        self.device_index = 0 if device_index is None else int(device_index)

    def _start(self, kernels: dict[str, Any], num_sms: int,
               capability: tuple[int, int] | None = None) -> None:
        """The end of a subclass's ``__init__``, once its device, stream and kernels are ready.

        `kernels` maps each kernel name to what the subclass's ``_call`` launches; `capability` is
        the device's compute capability (major, minor); None keeps the class's (test doubles)."""
        self._kernel_fns = kernels
        self._num_sms = num_sms
        if capability is not None:
            self._capability = tuple(capability)
        #: the GEMM planner may pick the FP64 tensor-core tile (float64 on sm_80+; gemm_tc64.cuh)
        self._gemm_tc64 = gemm_plan.tc64_eligible(self.dtype.name, self._capability)
        #: kernel name -> launch(grid, block, *args), for the generated ops; the GEMM kernels
        #: launch through their plans
        self._launch = {launch.kernel: self._launcher(launch.kernel)
                        for op in op_table.OPS if not op.planned for launch in op.all_launches}
        self._gemm_plans: dict[tuple, tuple | None] = {}
        # workspace of sum_squares (the W parameters of its launches): per-block partial sums,
        # then the total in the last slot
        self._scratch = self.empty((op_table.SUM_PARTIAL_BLOCKS + 1,))
        self._total = self.cols(self._scratch, op_table.SUM_PARTIAL_BLOCKS,
                                op_table.SUM_PARTIAL_BLOCKS + 1)
        self._scalar_host = self.host_buffer(1)
        # workspace of output_layer: a partial loss per block, and the ticket that finds the last
        # block (zero here; every launch leaves it at zero)
        self._output_partials = self.empty((op_table.OUTPUT_MAX_BLOCKS,))
        self._output_ticket = self.from_host(np.zeros(1, np.int32))
        # workspace of the split-K GEMMs (gemm.cuh SplitK): partial tiles and a ticket per tile
        # (zero here; every launch leaves them at zero). Allocated here, never at plan time: the
        # first planned call may be captured into a CUDA graph, where nothing may allocate.
        self._gemm_partials = self.empty(
            (op_table.WORKSPACE["gemm_partials"][0],))
        self._gemm_tickets = self.from_host(
            np.zeros(op_table.WORKSPACE["gemm_tickets"][0], np.int32))

    def _launcher(self, kernel: str, fixed: dict[int, Any] | None = None) -> Callable:
        """``launch(grid, block, *args)`` for `kernel`, args in the kernel's order as the ops hold
        them (arrays, Python ints and floats), each converted by the subclass's ``_ARG`` function
        for its kind in op_table.KERNEL_SIGNATURES (P pointer, i int, r real).

        Arguments in `fixed` (position -> value) are converted once, here, and are no parameters
        of the launcher: a GEMM plan fixes the sizes."""
        fixed = fixed or {}
        fn, call = self._kernel_fns[kernel], self._call
        kinds = op_table.KERNEL_SIGNATURES[kernel]
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

    def _ld(self, arr) -> int:
        if arr.ndim != 2:
            raise ValueError(f"expected a matrix, got shape {arr.shape}")
        if arr.dtype != self.dtype:
            raise TypeError(f"expected {self.dtype} matrix, got {arr.dtype}")
        ld = self._leading_dim(arr)
        op_table.check_index_range(ld * max(arr.shape[1], 1))
        return ld

    def set_gemm_mode(self, mode: str) -> None:
        if mode not in gemm_plan.GEMM_MODES:
            raise ValueError(f"unknown GEMM mode {mode!r} (choose from "
                             f"{', '.join(gemm_plan.GEMM_MODES)})")
        if mode == "tf32x3":
            if self.dtype != np.float32:
                raise ValueError(f"tf32x3 is a float32 GEMM; this backend computes in "
                                 f"{self.dtype.name} (use --dtype float32, or --gemm simt)")
            need = gemm_plan.GEMM_X3_MIN_CAPABILITY
            if tuple(self._capability) < need:
                have = ".".join(map(str, self._capability))
                raise ValueError(f"tf32x3 needs TF32 tensor cores (compute capability "
                                 f"{need[0]}.{need[1]} or newer); this GPU has {have}")
        self.gemm_mode = mode

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
    # Every op but the GEMM and the fused GEMMs is generated from its entry in op_table.OPS
    # (_add_table_ops, above):
    # a shape check, then one prepared launch per kernel. These are the helpers it calls.
    def _reject(self, arr, dtype):
        """Raise for an operand the element-wise kernels cannot read as .size contiguous elements
        of `dtype` (the generated ops call this only once a check has failed)."""
        if arr.dtype != dtype:
            raise TypeError(f"expected {dtype} array, got {arr.dtype}")
        raise ValueError("element-wise kernels need contiguous (column-slice or flat) views")

    def _read_total(self) -> float:
        """The value sum_squares left in the workspace's last slot (synchronises)."""
        self._d2h(self._total, self._scalar_host)
        return float(self._scalar_host[0])

    # GEMM launches are planned once per operand layout, so a training step only looks them up.
    def _plan_launcher(self, plan, fixed):
        """The planned launch; a split plan's kernel also gets the split-K workspaces, its last
        two parameters (GEMM_WS_ARGS), fixed here."""
        if plan.split > 1:
            nparams = len(op_table.KERNEL_SIGNATURES[plan.kernel])
            fixed[nparams - 2] = self._gemm_partials
            fixed[nparams - 1] = self._gemm_tickets
        return self._launcher(plan.kernel, fixed=fixed), plan.grid, plan.block

    def _plan_gemm(self, a, b, c, trans_a, trans_b):
        lda, ldb, ldc = self._ld(a), self._ld(b), self._ld(c)
        plan = gemm_plan.plan_gemm(a.shape, b.shape, c.shape, trans_a, trans_b, self._num_sms,
                                   self.gemm_tile, split=self.gemm_split, mode=self.gemm_mode,
                                   tc64=self._gemm_tc64)
        if plan is None:
            return None
        sizes = dict(zip(gemm_plan.GEMM_SIZE_POSITIONS, (plan.m, plan.n, plan.k, lda, ldb, ldc)))
        return self._plan_launcher(plan, sizes)

    def gemm(self, a, b, c, alpha=1.0, beta=0.0, trans_a=False, trans_b=False):
        layout = self._layout
        key = (a.shape, layout(a), a.dtype, b.shape, layout(b), b.dtype,
               c.shape, layout(c), c.dtype, trans_a, trans_b, self.gemm_tile, self.gemm_split,
               self.gemm_mode)
        try:
            plan = self._gemm_plans[key]
        except KeyError:
            if len(self._gemm_plans) > 4096:  # many shapes (evaluation sweeps): start over
                self._gemm_plans.clear()
            plan = self._gemm_plans[key] = self._plan_gemm(a, b, c, trans_a, trans_b)
        if plan is not None:
            launch, grid, block = plan
            launch(grid, block, a, b, c, alpha, beta)

    # The fused GEMMs (core.ops FUSED_OPS): the GEMM tiles with an epilogue, planned like the GEMM
    # (gemm_plan.GEMM_VARIANTS: kernel per tile, the variant's transpose pair) and cached in the
    # same dictionary, keyed by the op's name and every operand's shape, layout and dtype.
    def _plan_fused(self, op, a, b, out, extra):
        variant = gemm_plan.GEMM_VARIANTS[op]
        lda, ldb, ldc = self._ld(a), self._ld(b), self._ld(out)
        plan = gemm_plan.plan_gemm(a.shape, b.shape, out.shape, variant.ops[0] == "t",
                                   variant.ops[1] == "t", self._num_sms, self.gemm_tile, variant,
                                   self.gemm_split, self.gemm_mode,
                                   tc64=self._gemm_tc64)
        sizes = dict(zip(gemm_plan.GEMM_SIZE_POSITIONS,
                         (plan.m, plan.n, plan.k, lda, ldb, ldc) if plan else ()))
        if op == "gemm_bias_sigmoid":
            if tuple(extra.shape) != (out.shape[0],):
                raise ValueError(f"bias of shape {tuple(extra.shape)} for {out.shape[0]} rows")
            if extra.dtype != self.dtype or not self._contiguous(extra):
                self._reject(extra, self.dtype)
        elif op == "gemm_sigmoid_backward":
            if tuple(extra.shape) != tuple(out.shape):
                raise ValueError(f"act of shape {tuple(extra.shape)} for out {tuple(out.shape)}")
            sizes[10] = self._ld(extra)  # GEMM_SIGMOID_BACKWARD_ARGS: ..., act, ldact
        if plan is None:
            return None
        return self._plan_launcher(plan, sizes)

    def _new_plan(self, key, op, a, b, out, extra=None):
        if len(self._gemm_plans) > 4096:  # many shapes (evaluation sweeps): start over
            self._gemm_plans.clear()
        plan = self._gemm_plans[key] = self._plan_fused(op, a, b, out, extra)
        return plan

    def _fused_gemm(self, op, a, b, out, extra=None):
        """Launch the planned fused GEMM ``op`` (its plan cached per operand layout, as gemm's)."""
        layout = self._layout
        key = (op, a.shape, layout(a), a.dtype, b.shape, layout(b), b.dtype,
               out.shape, layout(out), out.dtype,
               None if extra is None else (extra.shape, layout(extra), extra.dtype),
               self.gemm_tile, self.gemm_split, self.gemm_mode)
        try:
            plan = self._gemm_plans[key]
        except KeyError:
            plan = self._new_plan(key, op, a, b, out, extra)
        if plan is not None:
            launch, grid, block = plan
            if extra is None:
                launch(grid, block, a, b, out)
            else:
                launch(grid, block, a, b, out, extra)

    def gemm_bias_sigmoid(self, a, b, bias, out):
        self._fused_gemm("gemm_bias_sigmoid", a, b, out, bias)

    def gemm_sigmoid_backward(self, a, b, act, out):
        self._fused_gemm("gemm_sigmoid_backward", a, b, out, act)

    def gemm_with_bias_grad(self, a, b, out):
        self._fused_gemm("gemm_with_bias_grad", a, b, out)

