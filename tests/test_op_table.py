"""backends/op_table.py against core.ops and against itself, and the GPU methods made from it
(backends/cuda_dispatch.py), all without a GPU.

The methods run on ``RecordingBackend`` (tests/gpu_helpers.py): a CudaBackend over NumPy arrays
whose kernel launches are recorded instead of run, so every method is exercised (shape rule,
operand checks, geometry, argument list) and each launch is checked against its kernel's typed
parameters, and the whole dispatch against the record of the code before the table became typed
Python (tests/launch_record.py). The kernels themselves are checked against the NumPy reference
on a GPU (tests/test_kernel_parity.py) and against the .cu sources (tests/test_cuda_compile.py).
"""

from __future__ import annotations

import inspect
import json
import numbers
import re

import numpy as np
import pytest

import launch_record
from backends import cuda_dispatch, op_table
from backends.cuda_backend import CudaBackend
from backends.cuda_gemm import CudaGemms
from backends.op_table import (Array, Counter, IntArg, Labels, LeadingDim, Matrix, RealArg, Size,
                               Workspace)
from backends.ops_numpy import NumpyBackend
from conftest import REPO
from core.ops import EXACT_OPS, FUSED_OPS, Backend
from gpu_helpers import RecordingBackend
from op_cases import OP_CASES

# the abstract methods of core.ops.Backend that move or view memory: every other one is an op
MEMORY = {"empty", "from_host", "to_host", "copy_to_host", "copy_from_host", "flat_views", "cols"}
DTYPES = ["float64", "float32"]
# (rows, cols): odd sizes, one column, zero columns
SHAPES = [(10, 1), (10, 33), (100, 1013), (7, 0), (1, 100)]
TABLE_OPS = [pytest.param(op, id=op.name) for op in op_table.OPS]
#: the parameters an operand of the op is passed as
OPERANDS = (Array, Labels, Matrix)


def _signature_text(method) -> str:
    params = list(inspect.signature(method).parameters.values())[1:]  # without self
    return ", ".join(p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default!r}"
                     for p in params)


# ----------------------------------------------------------------------------- the table
def test_every_op_of_the_contract_has_one_entry():
    ops = (set(Backend.__abstractmethods__) - MEMORY) | set(FUSED_OPS) | set(EXACT_OPS)
    names = [op.name for op in op_table.OPS]
    assert len(names) == len(set(names)), "an op has two entries"
    assert set(names) == ops, (f"ops without an entry: {sorted(ops - set(names))}; "
                               f"entries that are no op: {sorted(set(names) - ops)}")
    assert set(OP_CASES) == set(names), "tests/op_cases.py: an op without cases, or cases of none"


@pytest.mark.parametrize("op", TABLE_OPS)
def test_entry_is_consistent(op):
    """Every name an entry uses is a parameter of the op, a field of its sizes or a workspace
    buffer; the shape rule takes what the entry hands it."""
    names = set(op.param_names)
    assert op.tolerance in op_table.TOLERANCE_KINDS
    assert set(op.writes) <= names
    for out, inp in op.aliases:
        assert out in op.writes and inp in names
    if op.planned:
        return
    assert op.launches and op.shape is not None and op.sizes is not None
    assert set(op.shape_args) <= names
    inspect.signature(op.shape).bind(*(op.shape_args or op.param_names))
    fields = set(op.sizes._fields)
    for launch in op.all_launches:
        assert launch.geometry is not None, f"{launch.kernel}: no launch geometry"
        assert launch.over is None or launch.over in fields, launch
        inspect.signature(launch.geometry).bind(*([launch.over] if launch.over else []))
        matrices = {p.name for p in launch.parameters if isinstance(p, Matrix)}
        for param in launch.parameters:
            where = f"{launch.kernel}: {param!r}"
            if isinstance(param, (*OPERANDS, IntArg, RealArg)):
                assert param.name in names, f"{where} is no parameter of {op.name}"
            elif isinstance(param, Size):
                assert param.name in fields, f"{where} is no field of {op.sizes.__name__}"
            elif isinstance(param, LeadingDim):
                assert param.name in matrices, f"{where}: no Matrix {param.name} in the launch"
            else:
                assert isinstance(param, (Workspace, Counter)) and param.name in op_table.WORKSPACE
    assert bool(op.int_launches) == bool(op.int_operand)


@pytest.mark.parametrize("op", [op for op in TABLE_OPS if op.values[0].planned])
def test_planned_entries_name_the_plan_sizes_and_operands(op):
    """A GEMM kernel's ints are what a plan fixes (cuda_gemm.py); its operands the op's."""
    names = set(op.param_names)
    for launch in op.launches:
        for param in launch.parameters:
            if isinstance(param, Size):
                assert param.name in {"m", "n", "k", "lda", "ldb", "ldc", "ld_act"}, launch.kernel
            elif isinstance(param, (Workspace, Counter)):
                assert param.name in ("gemm_partials", "gemm_tickets") and \
                    launch.kernel.endswith("_split"), launch.kernel
            else:
                assert param.name in names, (launch.kernel, param)


def test_every_kernel_belongs_to_one_op():
    kernels = [launch.kernel for op in op_table.OPS for launch in op.all_launches]
    assert len(kernels) == len(set(kernels)) == len(op_table.KERNEL_NAMES)


def test_gemm_params_types_gemm_plans_declarations():
    assert op_table.gemm_params("M:a, R:bias, i:ld_act, r:alpha, W:gemm_partials, "
                                "C:gemm_tickets") == (Matrix("a"), Array("bias"), Size("ld_act"),
                                                      RealArg("alpha"), Workspace("gemm_partials"),
                                                      Counter("gemm_tickets"))
    for bad in ("M:a, x:b", "i:int(trans)", "M:", "r:-lr"):
        with pytest.raises(ValueError, match="bad GEMM parameter"):
            op_table.gemm_params(bad)
    assert op_table.KERNELS["gemm_t64_nn_split"].signature == "PPPiiiiiirrPP"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("op", TABLE_OPS)
def test_reference_runs_on_the_generated_inputs(op, shape, dtype):
    """Each case names every parameter without a default; the reference writes only `writes`."""
    ref = NumpyBackend(dtype)
    cases = OP_CASES[op.name](np.random.default_rng(0), *shape, np.dtype(dtype))
    assert cases
    signature = op.signature.parameters
    required = {p for p in op.param_names if signature[p].default is inspect.Parameter.empty}
    for case in cases:
        assert required <= set(case) <= set(op.param_names)
        before = {k: v.copy() for k, v in case.items() if isinstance(v, np.ndarray)}
        result = getattr(ref, op.name)(**case)
        assert (result is None) == (not op.returns_result)
        for name, old in before.items():
            if name not in op.writes:
                assert np.array_equal(case[name], old, equal_nan=True), \
                    f"{op.name} changed its input {name}"
            elif case[name].size and op.name != "gemm":
                assert not np.isnan(case[name]).all(), f"{op.name} left {name} unwritten"


# ------------------------------------------------------------------------ the GPU methods
def test_generated_methods_keep_the_contract():
    """Each table op is table_method(its name), assigned by name in CudaBackend's body (so that
    `grep "softmax ="` finds it); each planned GEMM is written out in CudaGemms. None is left to
    core.ops.Backend's default (a fused op's default would run unfused, silently)."""
    assert not RecordingBackend.__abstractmethods__
    for op in op_table.OPS:
        method = getattr(CudaBackend, op.name)
        assert _signature_text(method) == _signature_text(getattr(Backend, op.name)), op.name
        if op.planned:
            assert op.name in vars(CudaGemms), op.name
            continue
        assert vars(CudaBackend)[op.name].op is op, op.name
        assert method.__doc__ == getattr(Backend, op.name).__doc__
        assert method.__qualname__ == f"CudaBackend.{op.name}"
    source = (REPO / "backends" / "cuda_backend.py").read_text()
    named = re.findall(r'^    (\w+) = table_method\("(\w+)"\)$', source, flags=re.MULTILINE)
    assert all(a == b for a, b in named)
    assert sorted(a for a, _ in named) == sorted(op.name for op in op_table.OPS if not op.planned)
    with pytest.raises(ValueError, match="planned"):
        cuda_dispatch.table_method("gemm")


def test_no_exec_in_backends_or_core():
    """The table stays Python: no source is written and run (issue 17)."""
    for path in sorted([*(REPO / "backends").glob("*.py"), *(REPO / "core").glob("*.py")]):
        assert not re.search(r"(?<![\w.])(exec|compile)\(", path.read_text()), path.name


def _check_launch(op, launch, case, backend):
    kernel, grid, block, args = launch
    entry = op_table.KERNELS[kernel]
    assert entry in op.all_launches, f"{op.name} launched {kernel}"
    for dims in (grid, block):
        assert len(dims) == 3 and all(isinstance(d, int) and d >= 1 for d in dims)
    assert block[0] * block[1] * block[2] <= 1024 and block[0] % 32 == 0
    assert grid[0] < 2**31 and grid[1] < 65536
    assert len(args) == len(entry.parameters)
    for param, value in zip(entry.parameters, args):
        where = f"{kernel}({param!r})"
        if isinstance(param, OPERANDS):
            assert value is case[param.name], f"{where}: not the operand"
        elif isinstance(param, (Workspace, Counter)):
            assert value is getattr(backend, f"_{param.name}"), f"{where}: not the workspace"
        elif param.passed_as == "i":
            assert type(value) is int and -2**31 <= value < 2**31, f"{where} = {value!r}"
        else:
            assert isinstance(value, numbers.Real) and not isinstance(value, bool), where


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("op", TABLE_OPS)
def test_dispatch_launches_what_the_kernels_declare(op, shape, dtype):
    """Each op's launches on the parity inputs: the table's kernels, sane geometry, and every
    argument of the kind its kernel declares (the operands themselves, 32-bit ints, reals)."""
    backend = RecordingBackend(dtype)
    for case in OP_CASES[op.name](np.random.default_rng(1), *shape, np.dtype(dtype)):
        backend.launches.clear()
        result = getattr(backend, op.name)(*(case[p] for p in op.param_names if p in case))
        for launch in backend.launches:
            _check_launch(op, launch, case, backend)
        if op.returns_result:
            assert isinstance(result, float)
        nothing_to_do = not any(np.asarray(v).size for k, v in case.items()
                                if k in op.writes) and not op.returns_result
        if nothing_to_do:
            assert not backend.launches, f"{op.name} launched on empty operands"


def test_dispatch_launches_as_recorded_before_the_typed_table():
    """Every call of tests/launch_record.py (the table's ops on their cases, by position, keyword
    and in place; every operand made wrong in turn; the GEMMs over shapes, tiles, splits, modes
    and devices; training steps) launches the kernels, with the arguments and geometry, or raises
    the error, that the code of 3847ca4 did (its record: tests/data/launches.json.gz; the
    signature of each of its kernels too). A call the record lacks (an op added since) is not
    compared."""
    recorded = dict(launch_record.load())
    calls = json.loads(json.dumps(launch_record.record()))  # (tuples as the record holds them)
    today = dict(calls)
    assert len(today) == len(calls), "two calls of the record have one label"
    missing = [label for label in recorded if label not in today]
    assert not missing, f"{len(missing)} recorded calls are made no more, first: {missing[:5]}"
    differ = [label for label, then in recorded.items() if today[label] != then]
    assert not differ, f"{len(differ)} of {len(recorded)} calls differ, first: {differ[:5]}"
    launches = sum(len(o["launches"]) for o in recorded.values() if "launches" in o)
    assert len(recorded) > 10000 and launches > 10000


def test_dispatch_checks_operands():
    backend = RecordingBackend("float64")
    x = np.zeros((4, 3), order="F")
    with pytest.raises(ValueError, match="shape mismatch"):
        backend.sigmoid(x, np.zeros((3, 4), order="F"))
    with pytest.raises(TypeError, match="float64"):
        backend.sigmoid(x, np.zeros((4, 3), np.float32, order="F"))
    with pytest.raises(ValueError, match="contiguous"):
        backend.axpy(1.0, np.zeros((8, 3), order="F")[::2], x)
    with pytest.raises(TypeError, match="int32"):
        backend.nll_sum(x, np.zeros(3, np.int64), np.zeros(1))
    with pytest.raises(ValueError, match="axis"):
        backend.softmax(x, x, axis=2)
    with pytest.raises(ValueError, match="bias"):
        backend.add_bias(x, np.zeros(3))
    # two bad operands: the first the kernel takes raises (yhat's dtype before labels' int32)
    with pytest.raises(TypeError, match="expected float64 array, got float32"):
        backend.softmax_xent_backward(x.astype(np.float32), np.zeros(3, np.int64), 0.5, x)
    with pytest.raises(TypeError, match="matrix, got float32"):
        backend.count_correct(x.astype(np.float32), np.zeros(3, np.int64), np.zeros(1))
    assert not backend.launches
    backend.fill(np.zeros(5, np.int32), 3.0)
    assert backend.launches[-1][0] == "fill_int" and backend.launches[-1][3][2] == 3
    backend.softmax(x, x, axis=1)  # keyword arguments reach the method
    assert backend.launches[-1][3][2:] == [4, 3, 1, 4]
    assert backend.sum_squares(np.zeros((0, 3), order="F")) == 0.0


def test_methods_bind_as_the_contract_declares():
    """Positional, keyword and default arguments land where core.ops declares them; a call the
    contract's signature refuses raises TypeError naming the op."""
    backend = RecordingBackend("float64")
    x, p, g = np.zeros((4, 3), order="F"), np.zeros(12), np.zeros(12)
    backend.sgd_step(p, g, 0.25)
    backend.sgd_step(p, g, lr=0.25)
    backend.sgd_step(grads=g, params=p, lr=0.25, reg_ranges=((0, 3),), reg=0.5)
    launched = [args[2:] for _, _, _, args in backend.launches]
    assert launched == [[12, 0, 0, 0, 0, 0.0, -0.25]] * 2 + [[12, 0, 3, 0, 0, 0.5, -0.25]]
    backend.reduce_cols(x, np.zeros(4))
    assert backend.launches[-1][3][-1] == 1.0  # alpha's default
    for call, message in ((lambda: backend.softmax(x), "missing a required argument: 'out'"),
                          (lambda: backend.softmax(x, x, 0, 1), "too many positional"),
                          (lambda: backend.softmax(x, x, x=x), "multiple values for argument"),
                          (lambda: backend.softmax(x, x, ax=1), "unexpected keyword argument")):
        with pytest.raises(TypeError, match=rf"^softmax\(\): .*{message}"):
            call()


def test_training_step_runs_the_output_layer_in_one_launch():
    """One training step of DataParallelTrainer on the CUDA dispatch (recorded): the output layer
    (z2 = W2 a1 + b2, softmax, diff, the loss) is the single output_layer launch; no GEMM writes
    the output layer's buffer, and none of the five ops it replaces is launched."""
    from comm.single import SingleCommunicator
    from core.data_parallel import DataParallelTrainer, TrainConfig
    from core.model import CLASSES, INPUTS

    hidden, n = 33, 21
    backend = RecordingBackend("float32")
    cfg = TrainConfig(hidden=hidden, batch_size=n, dtype="float32")
    rng = np.random.default_rng(0)
    trainer = DataParallelTrainer(backend, SingleCommunicator(), cfg,
                                  rng.uniform(0, 1, (INPUTS, n)).astype(np.float32),
                                  rng.integers(0, CLASSES, n).astype(np.int32))
    backend.launches.clear()
    trainer.step(0, n)
    kernels = [launch[0] for launch in backend.launches]
    assert kernels.count("output_layer") == 1
    assert not {"softmax_lines", "add_bias", "nll_sum", "softmax_xent_backward"} & set(kernels)
    out_buffer = trainer.model._yhat
    gemms_into_output = [k for k, _, _, args in backend.launches
                         if k.startswith("gemm_") and np.shares_memory(args[2], out_buffer)]
    assert not gemms_into_output
    (launch,) = [launch for launch in backend.launches if launch[0] == "output_layer"]
    _, grid, block, args = launch
    model = trainer.model
    assert args[0] is model.W2 and args[1] is model.b2 and args[5] is trainer._nll
    assert np.shares_memory(args[4], out_buffer) and args[8:11] == [CLASSES, hidden, n]
    assert args[11] == pytest.approx(1.0 / n)
    assert block == (op_table.OUTPUT_THREADS, 1, 1)
    assert grid == (-(-n // op_table.OUTPUT_COLS[4]), 1, 1)  # float32: 8 columns a block


def test_exact_model_dispatches_on_the_gpu_backends():
    """core/exact.py's ExactMLP through the GPU methods (launches recorded, not run): every shape
    rule and operand check passes on the model's real operands, for a rank with samples and one
    without, and each launch's arguments are of the kinds its kernel declares."""
    from core.exact import ExactMLP
    from core.model import INPUTS, init_params

    backend = RecordingBackend("float64")
    for n in (7, 0):
        model = ExactMLP(backend, 33, 7, init_params(33, 0), 20, 1.0)
        x = backend.from_host(np.random.default_rng(0).uniform(0, 1, (INPUTS, n)))
        y = backend.from_host(np.zeros(n, np.int32))
        backend.launches.clear()
        a1, z2 = model.forward_hidden(x)
        model.backward(x, y, a1, z2, global_batch=20, nll_acc=backend.zeros((1,)))
        model.update(0.1, 0.5)
        kernels = {launch[0] for launch in backend.launches}
        assert {"exact_combine", "exact_row_exponents", "exact_sgd_step"} <= kernels
        if n:
            assert {"exact_split", "exact_sigmoid", "exact_sigmoid_backward",
                    "exact_output_layer"} <= kernels
            assert any(k.startswith("gemm") for k in kernels)
        for kernel, grid, block, args in backend.launches:
            entry = op_table.KERNELS[kernel]
            assert len(args) == len(entry.parameters), kernel
            for param, value in zip(entry.parameters, args):
                if param.passed_as == "i":
                    assert type(value) is int, (kernel, param, value)
