"""The GPU backends' methods of the op table's entries, and the launchers they call.

``table_method(name)`` is the method of op ``name`` of op_table.OPS, an ordinary closure over its
entry; CudaBackend names each one (``softmax = table_method("softmax")``). A call does what a
method written out for the op would: bind the arguments to the contract's parameters, run the
shape rule (nothing more when it returns None), check the operands in the order the kernels take
them (arrays: dtype, then contiguity; matrices: their leading dimension), then launch each kernel
with its geometry and its parameters' values. Everything that depends on the entry alone (which
argument goes where, which check, which geometry) is worked out once, when the method is made.

``kernel_launcher`` turns a kernel's parameters into the backend's arguments (``_ARG`` of each
kind of its signature), once per backend and kernel; the GEMM plans use it too.

Pure Python: importing this module imports no GPU library.
"""

from __future__ import annotations

import inspect
import operator
from typing import Any, Callable

import numpy as np

from backends import op_table
from backends.op_table import (Array, Counter, IntArg, Labels, LeadingDim, Matrix, RealArg, Size,
                               Workspace)
from core.ops import Backend

_INT32 = np.dtype(np.int32)


# ------------------------------------------------------------------ launchers
def kernel_launcher(backend, kernel: str, fixed: dict[str, Any] | None = None) -> Callable:
    """``launch(grid, block, *args)`` for `kernel` on `backend`: args are the kernel's parameters
    in order, as the ops hold them (arrays, Python ints and floats), each converted by the
    backend's ``_ARG`` function for its kind (op_table.KERNEL_SIGNATURES: P pointer, i int, r real).

    Some parameters are no arguments of the launcher, but constants converted once, here: the
    Workspace and Counter buffers (the backend's ``_<name>``) and the values of `fixed` (parameter
    name -> value: a GEMM plan fixes the sizes)."""
    fixed = fixed or {}
    fn, call, convert = backend._kernel_fns[kernel], backend._call, backend._ARG
    params = op_table.KERNELS[kernel].parameters
    constants = {pos: convert[p.passed_as](fixed[p.name] if p.name in fixed
                                           else getattr(backend, f"_{p.name}"))
                 for pos, p in enumerate(params)
                 if p.name in fixed or isinstance(p, (Workspace, Counter))}
    converters = [convert[p.passed_as] for pos, p in enumerate(params) if pos not in constants]
    if not constants:
        def launch(grid, block, *args):
            call(fn, grid, block, [conv(a) for conv, a in zip(converters, args)])
        return launch
    template = [constants.get(pos) for pos in range(len(params))]
    free = [pos for pos in range(len(params)) if pos not in constants]

    def launch_with_constants(grid, block, *args):
        full = template.copy()
        for pos, conv, a in zip(free, converters, args):
            full[pos] = conv(a)
        call(fn, grid, block, full)
    return launch_with_constants


# ------------------------------------------------------------------ the table's methods
def _binder(op: op_table.Op) -> Callable[[tuple, dict], tuple]:
    """(args, kwargs) -> every parameter's value, in the contract's order, defaults filled in.
    The method takes a full positional call (the training step's) as it is, without this; what
    the quick binding below does not bind goes to inspect.Signature.bind, whose TypeError (for a
    call the contract refuses) names the op."""
    signature = op.signature
    names = tuple(signature.parameters)[1:]  # without self
    defaults = tuple(p.default for p in signature.parameters.values())[1:]
    index = {name: at for at, name in enumerate(names)}
    empty = inspect.Parameter.empty

    def bind(args, kwargs):
        values = [*args, *defaults[len(args):]]
        for name, value in kwargs.items():
            at = index.get(name, -1)
            if not len(args) <= at:  # unknown, or given twice
                break
            values[at] = value
        else:
            if len(values) == len(names) and not any(v is empty for v in values):
                return tuple(values)
        try:
            bound = signature.bind(None, *args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{op.name}(): {exc}") from None
        bound.apply_defaults()
        return tuple(bound.arguments.values())[1:]
    return bind


def _picker(positions: list[int]) -> Callable[[tuple], tuple]:
    """pool -> (pool[p] for p in positions), as a tuple (operator.itemgetter: one C call)."""
    if len(positions) == 1:
        (at,) = positions
        return lambda pool: (pool[at],)
    return operator.itemgetter(*positions)


class _Launches:
    """One op's launches (its `launches` or its `int_launches`), worked out from the entry: the
    operand checks, then per kernel its geometry and where each argument comes from.

    A launch's arguments are picked from one pool, the op's argument values, then its sizes, then
    the leading dimensions of its matrix operands; IntArg and a negated RealArg are converted
    after the pick. The Workspace and Counter parameters are no arguments: the launcher holds
    them."""

    def __init__(self, op: op_table.Op, launches: tuple[op_table.Launch, ...]):
        names, fields = op.param_names, op.sizes._fields
        params = [p for launch in launches for p in launch.parameters]
        # the operand checks in the kernels' order (the first failing one raises), and by kind
        self.ordered = [(names.index(p.name), type(p)) for p in params
                        if isinstance(p, (Array, Labels, Matrix))]
        self.real_at = [at for at, kind in self.ordered if kind is Array]
        self.int32_at = [at for at, kind in self.ordered if kind is Labels]
        self.ld_at = list(dict.fromkeys(at for at, kind in self.ordered if kind is Matrix))
        ld_base = len(names) + len(fields)
        self.kernels = []
        for launch in launches:
            positions, converts = [], []
            for p in launch.parameters:
                match p:
                    case Workspace() | Counter():
                        continue
                    case Size(name):
                        positions.append(len(names) + fields.index(name))
                    case LeadingDim(name):
                        positions.append(ld_base + self.ld_at.index(names.index(name)))
                    case IntArg(name):
                        converts.append((len(positions), int))
                        positions.append(names.index(name))
                    case RealArg(name, negated=True):
                        converts.append((len(positions), operator.neg))
                        positions.append(names.index(name))
                    case Array(name) | Labels(name) | Matrix(name) | RealArg(name):
                        positions.append(names.index(name))
                    case _:
                        raise TypeError(f"{op.name}: no dispatch for parameter {p!r}")
            over = None if launch.over is None else fields.index(launch.over)
            self.kernels.append((launch.kernel, launch.geometry, over, _picker(positions),
                                 converts))

    def check_in_order(self, backend, values: tuple) -> None:
        """Run every check in the kernels' order: the first that fails raises."""
        real = backend.dtype
        for at, kind in self.ordered:
            arr = values[at]
            if kind is Matrix:
                backend._ld(arr)
            else:
                dtype = real if kind is Array else _INT32
                if arr.dtype != dtype or not backend._contiguous(arr):
                    backend._reject(arr, dtype)

    def run(self, backend, values: tuple, sizes: tuple) -> None:
        real, contiguous = backend.dtype, backend._contiguous
        for at in self.real_at:
            arr = values[at]
            if arr.dtype != real or not contiguous(arr):
                self.check_in_order(backend, values)
        for at in self.int32_at:
            arr = values[at]
            if arr.dtype != _INT32 or not contiguous(arr):
                self.check_in_order(backend, values)
        pool = values + sizes
        if self.ld_at:
            pool += tuple(backend._ld(values[at]) for at in self.ld_at)
        launchers = backend._launch
        for kernel, geometry, over, pick, converts in self.kernels:
            grid, block = geometry() if over is None else geometry(sizes[over])
            args = pick(pool)
            if converts:
                args = list(args)
                for pos, convert in converts:
                    args[pos] = convert(args[pos])
            launchers[kernel](grid, block, *args)


def table_method(name: str) -> Callable:
    """The GPU backends' method of op `name` of op_table.OPS (not a planned GEMM): the contract's
    signature and docstring, the entry's shape rule, checks and launches (see the module
    docstring); ``method.op`` is the entry."""
    op = op_table.OP_BY_NAME[name]
    if op.planned:
        raise ValueError(f"{name}: planned ops have a written-out method (cuda_gemm.py)")
    bind, shape, count = _binder(op), op.shape, len(op.param_names)
    shape_args = (None if op.shape_args in ((), op.param_names)
                  else _picker([op.param_names.index(p) for p in op.shape_args]))
    launches = _Launches(op, op.launches)
    int_launches = _Launches(op, op.int_launches) if op.int_launches else None
    int_at = op.param_names.index(op.int_operand) if op.int_operand else None
    result, empty_result = op.result, op.empty_result

    def method(self, *args, **kwargs):
        values = args if len(args) == count and not kwargs else bind(args, kwargs)
        sizes = shape(*values) if shape_args is None else shape(*shape_args(values))
        if sizes is None:
            return empty_result
        if int_launches is not None and values[int_at].dtype == _INT32:
            int_launches.run(self, values, sizes)
        else:
            launches.run(self, values, sizes)
        return None if result is None else result(self)

    method.__name__ = name
    method.__qualname__ = f"CudaBackend.{name}"
    method.__module__ = "backends.cuda_backend"
    method.__doc__ = getattr(Backend, name).__doc__
    method.__signature__ = op.signature
    method.op = op
    return method
