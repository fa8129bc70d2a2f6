"""backends/op_table.py against core.ops and against itself, and the GPU dispatch it generates, all
without a GPU.

The dispatch is run on ``RecordingBackend``: a CudaBackend over NumPy arrays whose kernel launches
are recorded instead of run, so every generated method is exercised (shape rule, operand checks,
geometry, argument list) and each launch is checked against its kernel's declared parameters. The
kernels themselves are checked against the NumPy reference on a GPU (tests/test_kernel_parity.py)
and against the .cu sources (tests/test_cuda_compile.py).
"""

from __future__ import annotations

import inspect
import numbers
import operator

import numpy as np
import pytest

from backends import op_table
from backends.cuda_backend import CudaBackend
from backends.ops_numpy import NumpyBackend
from core.ops import EXACT_OPS, FUSED_OPS, Backend

# the abstract methods of core.ops.Backend that move or view memory: every other one is an op
MEMORY = {"empty", "from_host", "to_host", "copy_to_host", "copy_from_host", "flat_views", "cols"}
DTYPES = ["float64", "float32"]
# (rows, cols): odd sizes, one column, zero columns
SHAPES = [(10, 1), (10, 33), (100, 1013), (7, 0), (1, 100)]


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


@pytest.mark.parametrize("op", op_table.OPS, ids=lambda op: op.name)
def test_entry_is_consistent(op):
    assert op.params == _signature_text(getattr(Backend, op.name)), "params differ from core.ops"
    assert op.tolerance in op_table.TOLERANCE_KINDS
    names = set(op.param_names)
    assert set(op.writes) <= names
    for out, inp in op.aliases:
        assert out in op.writes and inp in names
    if op.planned:
        return
    assert op.shape is not None and op.launches
    assert set(n.strip() for n in op.shape_args.split(",") if n.strip()) <= names
    sizes = {n.strip() for n in op.sizes.split(",")}
    for launch in op.all_launches:
        assert launch.geometry is not None, f"{launch.kernel}: no launch geometry"
        assert {n.strip() for n in launch.geometry_args.split(",") if n.strip()} <= sizes
        for kind, expr in launch.parameters:
            if kind in "RLM":
                assert expr in names, f"{launch.kernel}: {expr} is no operand of {op.name}"
    assert bool(op.int_launches) == bool(op.int_operand)


def test_every_kernel_belongs_to_one_op():
    kernels = [launch.kernel for op in op_table.OPS for launch in op.all_launches]
    assert len(kernels) == len(set(kernels)) == len(op_table.KERNEL_NAMES)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("op", op_table.OPS, ids=lambda op: op.name)
def test_reference_runs_on_the_generated_inputs(op, shape, dtype):
    """Each case names every parameter without a default; the reference writes only `writes`."""
    ref = NumpyBackend(dtype)
    method = op.reference or getattr(ref, op.name)
    cases = op.cases(np.random.default_rng(0), *shape, np.dtype(dtype))
    assert cases
    required = {p.split("=")[0].strip() for p in op.params.split(",") if "=" not in p}
    for case in cases:
        assert required <= set(case) <= set(op.param_names)
        before = {k: v.copy() for k, v in case.items() if isinstance(v, np.ndarray)}
        result = method(**case)
        assert (result is None) == (not op.result)
        for name, old in before.items():
            if name not in op.writes:
                assert np.array_equal(case[name], old, equal_nan=True), \
                    f"{op.name} changed its input {name}"
            elif case[name].size and op.name != "gemm":
                assert not np.isnan(case[name]).all(), f"{op.name} left {name} unwritten"


# ------------------------------------------------------------------- the generated dispatch
class RecordingBackend(CudaBackend):
    """CudaBackend over NumPy (column-major) arrays; kernel launches are recorded, not run."""

    name = "recording"
    _LIBRARY = "numpy"
    _contiguous = operator.attrgetter("flags.f_contiguous")
    _layout = operator.attrgetter("strides")

    def __init__(self, dtype="float64"):
        super().__init__(dtype, 0)
        self.launches = []
        self._ARG = {"P": _as_is, "i": _as_is, "r": _as_is}  # record what the ops pass
        self._start({name: name for name in op_table.KERNEL_NAMES}, num_sms=132)

    def _call(self, fn, grid, block, args):
        self.launches.append((fn, grid, block, list(args)))

    @classmethod
    def _count_devices(cls, lib):
        return 0

    @classmethod
    def _device_name(cls, lib, index):
        return "none"

    def _leading_dim(self, arr):
        if arr.size == 0:
            return max(arr.shape[0], 1)
        return op_table.leading_dim(arr.shape, arr.strides[1] // arr.itemsize)

    def empty(self, shape, dtype=None):
        return np.empty(tuple(shape), dtype=np.dtype(dtype or self.dtype), order="F")

    def _h2d(self, host, arr):
        arr.reshape(-1, order="F")[...] = host

    def _d2h(self, arr, host):
        host[...] = arr.reshape(-1, order="F")

    def to_host(self, arr):
        return np.array(arr, order="F")

    def copy_to_host(self, arr, host):
        self._d2h(arr, host)

    def copy_from_host(self, host, arr):
        self._h2d(host, arr)

    def _view(self, flat, offset, shape):
        return flat[offset:offset + int(np.prod(shape))].reshape(shape, order="F")

    def cols(self, arr, start, stop):
        return arr[start:stop] if arr.ndim == 1 else arr[:, start:stop]


def _as_is(value):
    return value


def test_generated_methods_keep_the_contract():
    """Every op but the GEMM is generated, with the signature and docstring of core.ops."""
    assert not RecordingBackend.__abstractmethods__
    for op in op_table.OPS:
        method = getattr(CudaBackend, op.name)
        assert _signature_text(method) == _signature_text(getattr(Backend, op.name))
        generated = method.__code__.co_filename == f"<op_table {op.name}>"
        assert generated != op.planned, op.name
        if generated:
            assert method.__doc__ == getattr(Backend, op.name).__doc__


def _check_launch(op, launch, case, backend):
    kernel, grid, block, args = launch
    entry = op_table.KERNELS[kernel]
    assert entry in op.all_launches, f"{op.name} launched {kernel}"
    for dims in (grid, block):
        assert len(dims) == 3 and all(isinstance(d, int) and d >= 1 for d in dims)
    assert block[0] * block[1] * block[2] <= 1024 and block[0] % 32 == 0
    assert grid[0] < 2**31 and grid[1] < 65536
    assert len(args) == len(entry.parameters)
    workspace = {name: getattr(backend, f"_{name}") for name in op_table.WORKSPACE}
    for (kind, expr), value in zip(entry.parameters, args):
        where = f"{kernel}({expr})"
        if kind in "RLM":
            assert value is case[expr], f"{where}: not the operand"
        elif kind in "WC":
            assert value is workspace[expr], f"{where}: not the workspace buffer _{expr}"
        elif kind == "i":
            assert type(value) is int and -2**31 <= value < 2**31, f"{where} = {value!r}"
        else:
            assert isinstance(value, numbers.Real) and not isinstance(value, bool), where


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("op", op_table.OPS, ids=lambda op: op.name)
def test_dispatch_launches_what_the_kernels_declare(op, shape, dtype):
    """Each op's launches on the parity inputs: the table's kernels, sane geometry, and every
    argument of the kind its kernel declares (the operands themselves, 32-bit ints, reals)."""
    backend = RecordingBackend(dtype)
    for case in op.cases(np.random.default_rng(1), *shape, np.dtype(dtype)):
        backend.launches.clear()
        result = getattr(backend, op.name)(*(case[p] for p in op.param_names if p in case))
        for launch in backend.launches:
            _check_launch(op, launch, case, backend)
        if op.result:
            assert isinstance(result, float)
        nothing_to_do = not any(np.asarray(v).size for k, v in case.items()
                                if k in op.writes) and not op.result
        if nothing_to_do:
            assert not backend.launches, f"{op.name} launched on empty operands"


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
    assert not backend.launches
    backend.fill(np.zeros(5, np.int32), 3.0)
    assert backend.launches[-1][0] == "fill_int" and backend.launches[-1][3][2] == 3
    backend.softmax(x, x, axis=1)  # keyword arguments reach the generated method
    assert backend.launches[-1][3][2:] == [4, 3, 1, 4]
    assert backend.sum_squares(np.zeros((0, 3), order="F")) == 0.0


def test_dispatch_source_reads_like_a_method():
    source, env = op_table.dispatch_source(op_table.OP_BY_NAME["sigmoid"])
    assert source.startswith("def sigmoid(self, x, out):")
    assert "self._launch['sigmoid'](grid, block, x, out, n)" in source
    with pytest.raises(ValueError, match="planned"):
        op_table.dispatch_source(op_table.OP_BY_NAME["gemm"])


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
    """core/exact.py's ExactMLP through the generated GPU methods (launches recorded, not run):
    every shape rule and operand check passes on the model's real operands, for a rank with
    samples and one without, and each launch's arguments are of the kinds its kernel declares."""
    from core.exact import ExactMLP
    from core.model import INPUTS, init_params

    backend = RecordingBackend("float64")
    for n in (7, 0):
        model = ExactMLP(backend, 33, 7, init_params(33, 0), 20, 1.0)
        x = backend.from_host(np.random.default_rng(0).uniform(0, 1, (INPUTS, n)))
        y = backend.from_host(np.zeros(n, np.int32))
        backend.launches.clear()
        a1, z2 = model.forward(x, train=True)
        model.backward(x, y, a1, z2, global_batch=20, nll_acc=backend.zeros((1,)))
        model.update(0.1, 0.5)
        kernels = {launch[0] for launch in backend.launches}
        assert {"exact_combine", "exact_row_exponents", "exact_sgd_step"} <= kernels
        if n:
            assert {"exact_split", "exact_sigmoid", "exact_sigmoid_backward",
                    "exact_output_layer"} <= kernels
            assert any(k.startswith("gemm") for k in kernels)
        for kernel, grid, block, args in backend.launches:
            entry = op_table.KERNELS.get(kernel)
            if entry is None or entry.geometry is None:
                continue  # the planned GEMMs
            assert len(args) == len(entry.parameters), kernel
            for (kind, _), value in zip(entry.parameters, args):
                if kind == "i":
                    assert type(value) is int, (kernel, value)
