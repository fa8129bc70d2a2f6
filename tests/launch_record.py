"""Every kernel launch the CUDA dispatch makes, written down: the record that shows a change of the
dispatch (backends/op_table.py, backends/cuda_backend.py) launches the same kernels, with the same
arguments and the same geometry, and raises the same errors, as the code it replaces.

``record()`` drives a ``RecordingBackend`` (tests/gpu_helpers.py) through

* every op of the table on the parity inputs of tests/op_cases.py, for many shapes and both dtypes,
  positionally, by keyword and in place (each alias the contract allows);
* each array operand of each op made wrong in turn (the other dtype, int32 for int64, a strided
  view, one row or element more, a row block whose leading dimension exceeds its rows);
* the GEMM and the fused GEMMs over shapes, transposes, forced tiles and splits, --gemm modes,
  float64 on a device with and without FP64 tensor cores, column and row-block views, and their
  shape and operand errors;
* a training step of the model, a step of the --exact model, and the table's kernel signatures;

and returns, per call, its launches (kernel, grid, block and each argument: which operand or
workspace buffer it is, or an array's place, or a scalar's type and value) or the error it raised
(type and message). ``tests/data/launches.json.gz`` holds the record of the dispatch as it was at
commit 3847ca4 (before the op table became typed Python); tests/test_op_table.py compares the
dispatch of today with it, call by call.

    python tests/launch_record.py tests/data/launches.json.gz   # the record of today's code

A helper module, not a test module.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))      # gpu_helpers, op_cases
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # backends, core

from backends import gemm_plan, op_table  # noqa: E402
from gpu_helpers import RecordingBackend  # noqa: E402
from op_cases import OP_CASES  # noqa: E402

RECORD = Path(__file__).resolve().parent / "data" / "launches.json.gz"

DTYPES = ("float64", "float32")
#: (rows, cols) handed to the op cases: odd sizes, one row or column, zero columns
SHAPES = [(10, 1), (10, 33), (100, 1013), (7, 0), (1, 100), (784, 7), (1013, 10), (1, 1),
          (3, 2), (33, 785)]
TRANSPOSES = [(False, False), (False, True), (True, False), (True, True)]
GEMM_SHAPES = [(1, 1, 1), (7, 33, 100), (33, 7, 1013), (100, 1013, 7), (784, 100, 33),
               (1013, 1, 784), (1, 1013, 33), (10, 800, 1024), (10, 1024, 800), (1024, 800, 784),
               (1024, 800, 10), (7, 33, 0), (7, 0, 33), (0, 7, 33), (256, 800, 784),
               (4096, 800, 784), (4096, 3200, 10), (256, 784, 3200), (16, 17, 1013)]
FUSED_SHAPES = [(133, 77, 65), (17, 129, 300), (5, 3, 1), (70, 1, 0), (16, 64, 257),
                (200, 300, 10), (256, 800, 784), (1024, 784, 3200), (10, 256, 800),
                (4096, 800, 784), (7, 0, 5), (0, 4, 5)]
#: (dtype, compute capability, --gemm mode): the planner's inputs besides the shapes
GEMM_CONFIGS = [("float64", (9, 0), "simt"), ("float64", (7, 5), "simt"),
                ("float32", (9, 0), "simt"), ("float32", (9, 0), "tf32x3")]


class Recorder(RecordingBackend):
    """The recording backend on a device of the given compute capability."""

    def __init__(self, dtype="float64", capability=(0, 0)):
        self._capability = tuple(capability)
        super().__init__(dtype)


class CupyArgs(Recorder):
    """The recorder converting the arguments as CupyBackend does (np.int32, the dtype's scalar)."""

    def __init__(self, dtype="float64", capability=(0, 0)):
        super().__init__(dtype, capability)
        self._ARG = {"P": lambda value: value, "i": np.int32, "r": self.dtype.type}
        self._start({name: name for name in op_table.KERNEL_NAMES}, num_sms=132)


def _root(arr):
    while isinstance(arr.base, np.ndarray):
        arr = arr.base
    return arr


class Describer:
    """Names the values a launch passes: operands by name, workspace buffers by attribute, other
    arrays by the order they first appear in (and their place in the allocation they view)."""

    def __init__(self, backend, operands=None):
        self.names = {}
        for name, value in (operands or {}).items():
            if isinstance(value, np.ndarray):
                self.names.setdefault(id(value), f"operand {name}")
        for attr in ("_scratch", "_total", "_output_partials", "_output_ticket", "_gemm_partials",
                     "_gemm_tickets"):
            self.names.setdefault(id(getattr(backend, attr)), f"workspace {attr}")
        self.roots = {}
        self.keep = []  # ids stay unique while the arrays live

    def array(self, arr):
        self.keep.append(arr)
        layout = [list(arr.shape), arr.dtype.str, list(arr.strides)]
        if id(arr) in self.names:
            return [self.names[id(arr)], *layout]
        root = _root(arr)
        self.keep.append(root)
        index = self.roots.setdefault(id(root), len(self.roots))
        offset = arr.__array_interface__["data"][0] - root.__array_interface__["data"][0]
        return [f"array {index} +{offset}", *layout]

    def value(self, value):
        if isinstance(value, np.ndarray):
            return self.array(value)
        return f"{type(value).__name__} {value!r}"

    def launch(self, launch):
        kernel, grid, block, args = launch
        return [kernel, repr(grid), repr(block), [self.value(a) for a in args]]


def _call(log, label, backend, fn, operands=None, describer=None):
    """Run fn() on `backend`, append (label, launches and result, or the error) to `log`."""
    describer = describer or Describer(backend, operands)
    backend.launches.clear()
    try:
        result = fn()
    except Exception as exc:  # noqa: BLE001 - the error is what is recorded
        outcome = {"error": [type(exc).__name__, str(exc)]}
    else:
        # (a value read back from the recorder's workspace is whatever np.empty held: its type)
        outcome = {"result": None if result is None else describer.value(result)
                   if not backend.launches else type(result).__name__}
    outcome["launches"] = [describer.launch(launch) for launch in backend.launches]
    log.append([label, outcome])


def _positional(op, case):
    return [case[p] for p in op.param_names if p in case]


# ------------------------------------------------------------------ the table's ops
def _table_calls(log):
    for dtype in DTYPES:
        for cls in (Recorder, CupyArgs):
            backend = cls(dtype)
            for op in op_table.OPS:
                for shape in SHAPES:
                    cases = OP_CASES[op.name](np.random.default_rng(1), *shape, np.dtype(dtype))
                    for i, case in enumerate(cases):
                        label = f"{cls.__name__} {dtype} {op.name} {shape} case {i}"
                        _call(log, label, backend,
                              lambda: getattr(backend, op.name)(*_positional(op, case)), case)
                        if cls is not Recorder:
                            continue
                        _call(log, label + " by keyword", backend,
                              lambda: getattr(backend, op.name)(**case), case)
                        for out, inp in op.aliases:
                            aliased = dict(case, **{out: case[inp]})
                            _call(log, f"{label} {out} is {inp}", backend,
                                  lambda: getattr(backend, op.name)(*_positional(op, aliased)),
                                  {k: v for k, v in aliased.items() if k != out})


def _wrong_versions(value):
    """(what was done, the operand made wrong) for one array operand."""
    if value.dtype == np.int32:
        yield "int64", value.astype(np.int64)
        yield "float", value.astype(np.float64)
    elif value.dtype == np.float64:
        with np.errstate(over="ignore"):  # (the exact ops' special values: 1e300)
            single = value.astype(np.float32, order="F")
        yield "float32", single
    else:
        yield "float64", value.astype(np.float64, order="F")
    if value.ndim == 2:
        rows, cols = value.shape
        wide = np.zeros((rows, 2 * cols + 1), value.dtype, order="F")
        yield "strided", wide[:, ::2][:, :cols]
        tall = np.zeros((rows + 3, cols), value.dtype, order="F")
        yield "row block", tall[1:1 + rows]
        yield "one row more", np.zeros((rows + 1, cols), value.dtype, order="F")
        yield "one column more", np.zeros((rows, cols + 1), value.dtype, order="F")
        yield "transposed shape", np.zeros((cols, rows), value.dtype, order="F")
        yield "flat", np.zeros(value.size, value.dtype)
    else:
        yield "strided", np.zeros(2 * value.size + 1, value.dtype)[::2][:value.size]
        yield "one element more", np.zeros(value.size + 1, value.dtype)
        yield "a matrix", np.zeros((value.size, 1), value.dtype, order="F")


def _check_calls(log):
    for dtype in DTYPES:
        backend = Recorder(dtype, (9, 0))
        for op in op_table.OPS:
            for shape in [(10, 33), (3, 1)]:
                cases = OP_CASES[op.name](np.random.default_rng(2), *shape, np.dtype(dtype))
                for i, case in enumerate(cases[:3]):
                    for name, value in case.items():
                        if not isinstance(value, np.ndarray):
                            continue
                        for what, wrong in _wrong_versions(value):
                            bad = dict(case, **{name: wrong})
                            _call(log, f"{dtype} {op.name} {shape} case {i}: {name} {what}",
                                  backend,
                                  lambda: getattr(backend, op.name)(*_positional(op, bad)), bad)
        x = np.zeros((4, 3), order="F")
        for axis in (2, -1, 1.0):
            _call(log, f"{dtype} softmax axis {axis!r}", backend,
                  lambda: backend.softmax(x.astype(dtype), x.astype(dtype), axis))
        n = 12
        p, g = np.zeros(n, dtype), np.zeros(n, dtype)
        for ranges in [((0, 3), (4, 12)), ((0, 3),), (), ((0, 13),), ((5, 3),),
                       ((0, 1), (1, 2), (2, 3)), ((-1, 2),), [[0, 4], [6, 8]]]:
            for op in ("sgd_step", "exact_sgd_step"):
                _call(log, f"{dtype} {op} ranges {ranges!r}", backend,
                      lambda: getattr(backend, op)(p, g, 0.25, 0.5, ranges))
                _call(log, f"{dtype} {op} ranges {ranges!r} reg 0", backend,
                      lambda: getattr(backend, op)(p, g, 0.25, 0.0, ranges))
        for value in (3.0, 2, -1.5, True, np.float32(4.0)):
            _call(log, f"{dtype} fill int32 {value!r}", backend,
                  lambda: backend.fill(np.zeros(5, np.int32), value))
            _call(log, f"{dtype} fill real {value!r}", backend,
                  lambda: backend.fill(np.zeros(5, dtype), value))
        for classes in (0, 11):
            w2 = np.zeros((classes, 4), dtype, order="F")
            _call(log, f"{dtype} output_layer {classes} classes", backend,
                  lambda: backend.output_layer(w2, np.zeros(classes, dtype),
                                               np.zeros((4, 3), dtype, order="F"),
                                               np.zeros(3, np.int32), 0.5,
                                               np.zeros((classes, 3), dtype, order="F"),
                                               np.zeros(1, dtype)))
            _call(log, f"{dtype} exact_output_layer {classes} classes", backend,
                  lambda: backend.exact_output_layer(np.zeros((classes, 3), dtype, order="F"),
                                                     np.zeros(3, np.int32), 0.5,
                                                     np.zeros((classes, 3), dtype, order="F"),
                                                     np.zeros(1, dtype)))


# ------------------------------------------------------------------ the GEMMs
def _gemm_operands(rng, m, n, k, ta, tb, dtype):
    return {"a": np.zeros((k, m) if ta else (m, k), dtype, order="F"),
            "b": np.zeros((n, k) if tb else (k, n), dtype, order="F"),
            "c": np.zeros((m, n), dtype, order="F")}


def _fused_operands(op, m, n, k, dtype):
    z = lambda *shape: np.zeros(shape, dtype, order="F")  # noqa: E731
    if op == "gemm_bias_sigmoid":
        return {"a": z(m, k), "b": z(k, n), "bias": z(m), "out": z(m, n)}
    if op == "gemm_sigmoid_backward":
        return {"a": z(k, m), "b": z(k, n), "act": z(m, n), "out": z(m, n)}
    return {"a": z(m, k), "b": z(n, k), "out": z(m, n + 1)}


def _gemm_calls(log):
    rng = np.random.default_rng(3)
    for dtype, capability, mode in GEMM_CONFIGS:
        backend = Recorder(dtype, capability)
        backend.set_gemm_mode(mode)
        config = f"{dtype} sm{capability[0]}{capability[1]} {mode}"
        forcing = [(None, None)] + [(tile, split) for tile in sorted(gemm_plan.GEMM_TILES)
                                    for split in (None, 1, 3)] + [(None, 5), (None, 2)]
        for tile, split in forcing:
            backend.gemm_tile, backend.gemm_split = tile, split
            shapes = GEMM_SHAPES if (tile, split) == (None, None) else GEMM_SHAPES[:8:2] + [
                (256, 800, 784), (100, 70, 333), (10, 257, 800), (130, 129, 1013)]
            for m, n, k in shapes:
                for ta, tb in TRANSPOSES:
                    ops = _gemm_operands(rng, m, n, k, ta, tb, dtype)
                    for again in ("", " again"):  # again: the cached plan
                        _call(log, f"{config} tile {tile} split {split} gemm {m}x{n}x{k} "
                                   f"{ta:d}{tb:d}{again}", backend,
                              lambda: backend.gemm(ops["a"], ops["b"], ops["c"], 0.75, -1.25,
                                                   ta, tb), ops)
            for op in gemm_plan.GEMM_VARIANTS:
                for m, n, k in FUSED_SHAPES if (tile, split) == (None, None) else FUSED_SHAPES[:6]:
                    ops = _fused_operands(op, m, n, k, dtype)
                    for again in ("", " again"):
                        _call(log, f"{config} tile {tile} split {split} {op} {m}x{n}x{k}{again}",
                              backend, lambda: getattr(backend, op)(**ops), ops)
        backend.gemm_tile = backend.gemm_split = None
        _gemm_views(log, backend, config, dtype)
        _gemm_errors(log, backend, config, dtype)


def _gemm_views(log, backend, config, dtype):
    """Column slices (as a rank's minibatch), row blocks (a leading dimension beyond the rows)."""
    for ta, tb in TRANSPOSES:
        m, n, k = 100, 33, 784
        a_big = np.zeros((k, m + 9) if ta else (m, k + 9), dtype, order="F")
        b_big = np.zeros((n, k + 5) if tb else (k, n + 5), dtype, order="F")
        c_big = np.zeros((m, n + 11), dtype, order="F")
        a = a_big[:, 4:4 + (m if ta else k)]
        b = b_big[:, 2:2 + (k if tb else n)]
        c = c_big[:, 6:6 + n]
        _call(log, f"{config} gemm column views {ta:d}{tb:d}", backend,
              lambda: backend.gemm(a, b, c, -0.5, 0.25, ta, tb), {"a": a, "b": b, "c": c})
        m, n, k = 37, 45, 70
        rows_a, rows_b = (k if ta else m), (n if tb else k)
        a = np.zeros((rows_a + 13, m if ta else k), dtype, order="F")[5:5 + rows_a]
        b = np.zeros((rows_b + 3, k if tb else n), dtype, order="F")[1:1 + rows_b]
        c = np.zeros((m + 8, n), dtype, order="F")[2:2 + m]
        _call(log, f"{config} gemm row blocks {ta:d}{tb:d}", backend,
              lambda: backend.gemm(a, b, c, 1.25, 0.5, ta, tb), {"a": a, "b": b, "c": c})
    h, n = 40, 9
    x = np.zeros((784, n + 3), dtype, order="F")[:, 1:1 + n]
    flat = np.zeros(h * 785 + 5, dtype)
    dw1b1 = flat[:h * 785].reshape((h, 785), order="F")
    a1 = np.zeros((h + 6, n), dtype, order="F")[3:3 + h]
    ops = {"dz1": np.zeros((h, n), dtype, order="F"), "x": x, "dw1b1": dw1b1, "a1": a1,
           "w2": np.zeros((10, h), dtype, order="F"), "diff": np.zeros((10, n), dtype, order="F"),
           "out": np.zeros((h, n), dtype, order="F")}
    _call(log, f"{config} gemm_with_bias_grad into a flat view", backend,
          lambda: backend.gemm_with_bias_grad(ops["dz1"], x, dw1b1), ops)
    _call(log, f"{config} gemm_sigmoid_backward act row block", backend,
          lambda: backend.gemm_sigmoid_backward(ops["w2"], ops["diff"], a1, ops["out"]), ops)


def _gemm_errors(log, backend, config, dtype):
    z = lambda *shape, dt=dtype: np.zeros(shape, dt, order="F")  # noqa: E731
    other = "float32" if dtype == "float64" else "float64"
    h, n = 40, 9
    calls = {
        "gemm shape mismatch": lambda: backend.gemm(z(5, 3), z(4, 7), z(5, 7)),
        "gemm C shape": lambda: backend.gemm(z(5, 3), z(3, 7), z(5, 8)),
        "gemm vector": lambda: backend.gemm(z(5), z(5, 7), z(5, 7)),
        "gemm other dtype": lambda: backend.gemm(z(5, 3, dt=other), z(3, 7), z(5, 7)),
        "gemm C-order": lambda: backend.gemm(np.zeros((5, 3), dtype), z(3, 7), z(5, 7)),
        "bias_sigmoid bias shape": lambda: backend.gemm_bias_sigmoid(z(h, 784), z(784, n),
                                                                     z(h + 1), z(h, n)),
        "bias_sigmoid bias dtype": lambda: backend.gemm_bias_sigmoid(z(h, 784), z(784, n),
                                                                     z(h, dt=other), z(h, n)),
        "bias_sigmoid bias strided": lambda: backend.gemm_bias_sigmoid(
            z(h, 784), z(784, n), z(2 * h)[::2], z(h, n)),
        "bias_sigmoid empty bias shape": lambda: backend.gemm_bias_sigmoid(z(h, 784), z(784, 0),
                                                                           z(h + 1), z(h, 0)),
        "bias_sigmoid shapes": lambda: backend.gemm_bias_sigmoid(z(h, 784), z(783, n), z(h),
                                                                 z(h, n)),
        "sigmoid_backward act shape": lambda: backend.gemm_sigmoid_backward(
            z(10, h), z(10, n), z(h, n + 1), z(h, n)),
        "sigmoid_backward act dtype": lambda: backend.gemm_sigmoid_backward(
            z(10, h), z(10, n), z(h, n, dt=other), z(h, n)),
        "sigmoid_backward empty act": lambda: backend.gemm_sigmoid_backward(
            z(10, h), z(10, 0), z(h, 1), z(h, 0)),
        "bias_grad shapes": lambda: backend.gemm_with_bias_grad(z(h, n), z(784, n), z(h, 784)),
        "bias_grad out dtype": lambda: backend.gemm_with_bias_grad(z(h, n), z(784, n),
                                                                   z(h, 785, dt=other)),
    }
    for label, fn in calls.items():
        _call(log, f"{config} {label}", backend, fn)
    for mode in ("tf32x3", "fp16", "simt"):
        _call(log, f"{config} set_gemm_mode {mode}", backend,
              lambda: backend.set_gemm_mode(mode))


# ------------------------------------------------------------------ the models
def _model_calls(log):
    from comm.single import SingleCommunicator
    from core.data_parallel import DataParallelTrainer, TrainConfig
    from core.exact import ExactMLP
    from core.model import CLASSES, INPUTS, init_params

    for dtype, capability, hidden, n in [("float32", (9, 0), 33, 21),
                                         ("float64", (9, 0), 256, 80),
                                         ("float64", (7, 5), 64, 50),
                                         ("float32", (8, 0), 1024, 40)]:
        backend = Recorder(dtype, capability)
        backend.fused_output_backward = False  # (the record's step: the default, two GEMMs)
        rng = np.random.default_rng(0)
        cfg = TrainConfig(hidden=hidden, batch_size=n, dtype=dtype, reg=0.01)
        trainer = DataParallelTrainer(backend, SingleCommunicator(), cfg,
                                      rng.uniform(0, 1, (INPUTS, 3 * n)).astype(dtype),
                                      rng.integers(0, CLASSES, 3 * n).astype(np.int32))
        describer = Describer(backend)
        for step in range(2):
            _call(log, f"{dtype} sm{capability} H={hidden} n={n} training step {step}", backend,
                  lambda: trainer.step(step * n, (step + 1) * n), describer=describer)
    backend = Recorder("float64", (9, 0))
    describer = Describer(backend)
    for n in (7, 0):
        model = ExactMLP(backend, 33, 7, init_params(33, 0), 20, 1.0)
        x = backend.from_host(np.random.default_rng(0).uniform(0, 1, (INPUTS, n)))
        y = backend.from_host(np.zeros(n, np.int32))

        def exact_step():
            a1, z2 = model.forward_hidden(x)
            model.backward(x, y, a1, z2, global_batch=20, nll_acc=backend.zeros((1,)))
            model.update(0.1, 0.5)
        _call(log, f"exact model n={n}", backend, exact_step, describer=describer)


#: workspace buffers added after the record was made (logged under a label of their own, so the
#: record's "workspace" stays comparable)
WORKSPACE_SINCE_THE_RECORD = ("backward_partials", "backward_tickets")


def _table_facts(log):
    for kernel, signature in op_table.KERNEL_SIGNATURES.items():
        log.append([f"kernel {kernel}", {"signature": signature, "pycuda": {
            dtype: op_table.pycuda_format(signature, dtype) for dtype in DTYPES}}])
    log.append(["workspace", {k: list(v) for k, v in op_table.WORKSPACE.items()
                              if k not in WORKSPACE_SINCE_THE_RECORD}])
    log.append(["workspace since the record",
                {k: list(op_table.WORKSPACE[k]) for k in WORKSPACE_SINCE_THE_RECORD}])


def record() -> list:
    """[label, outcome] per call (see the module docstring), in a fixed order; the labels are
    unique (an op added later adds calls of its own, and leaves the others as they were)."""
    log: list = []
    _table_facts(log)
    _table_calls(log)
    _check_calls(log)
    _gemm_calls(log)
    _model_calls(log)
    return log


def load(path: Path = RECORD) -> list:
    """A record written by main(), as record() returns it (JSON: lists for tuples)."""
    with gzip.open(path, "rt") as f:
        return json.load(f)


def main(argv):
    path = Path(argv[1]) if len(argv) > 1 else RECORD
    path.parent.mkdir(parents=True, exist_ok=True)
    log = record()
    text = json.dumps(log, separators=(",", ":"), sort_keys=True) + "\n"
    with open(path, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as f:
        f.write(text.encode())  # (mtime 0: the same record gives the same bytes)
    launches = sum(len(outcome["launches"]) for _, outcome in log if "launches" in outcome)
    print(f"{len(log)} calls, {launches} launches -> {path}")


if __name__ == "__main__":
    main(sys.argv)
