"""What the tests of the GPU backends share: a helper module, not a test module (the test modules
import it, never one another; see conftest.py).

* ``nvcc_or_skip()``: the nvcc the backends would use, or skip saying where it was looked for.
* ``RecordingBackend``: ``CudaBackend`` over NumPy (column-major) arrays whose kernel launches are
  recorded as ``(kernel, grid, block, args)`` instead of run: the whole GPU dispatch (shape rules,
  operand checks, GEMM plans, argument lists, launch geometry) without a GPU; ``step_launches``,
  the kernels of one training step on such a backend.
* The GPU backends or skip: ``GPU_BACKENDS``, ``backend_class(name)``, ``make_backend(name,
  dtype)`` (one cached instance per backend and dtype: kernels compile once per session).
* The error measure and its tolerances: ``TOLERANCES`` (per dtype and op-table tolerance kind),
  ``assert_close(got, ref, dtype, kind)``.
* Inputs and runs shared by the GEMM tests (tests/test_kernel_parity.py, test_gemm_tc64.py,
  test_tf32x3.py): ``rand``, ``course_matrices``, ``gemm_case``, the fused GEMMs' ``fused_case`` /
  ``run_fused``, the split products (``SPLIT_PRODUCTS``, ``products_at``, ``split_case``,
  ``run_split``, ``reference_split``), ``check_graph_replays`` and two checks every GEMM mode must
  pass (``check_gemm_beta_zero_never_reads_c``, ``check_fused_gemms_on_the_model_views``).
* The op table's parity run: ``check_against_reference(gpu, ref, op, case)`` and the pieces it is
  made of (``to_device``, ``run_op``), on the inputs of tests/op_cases.py.
"""

from __future__ import annotations

import importlib
import operator

import numpy as np
import pytest

from backends import cuda_compile, op_table
from backends.cuda_backend import CudaBackend
from conftest import relative_max_error
from core.ops import EXACT_OPS


def nvcc_or_skip() -> str:
    """The nvcc that cuda_compile.find_nvcc finds (backends/cuda_compile.py), or skip (the test needs the compiler)."""
    nvcc = cuda_compile.find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found on PATH, $CUDA_HOME/bin or /usr/local/cuda/bin")
    return nvcc


# ------------------------------------------------------------------ the recorded dispatch
def _as_is(value):
    return value


class RecordingBackend(CudaBackend):
    """CudaBackend over NumPy (column-major) arrays; kernel launches are recorded, not run.

    ``launches`` holds ``(kernel, grid, block, args)`` per launch, args as the ops pass them (the
    operand arrays themselves, Python ints and floats). A device of 132 SMs (an H100) and the
    class's compute capability (0, 0 unless a subclass says otherwise)."""

    name = "recording"
    _LIBRARY = "numpy"
    fused_output_backward = True  # (record the kernel the option launches)
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


def step_launches(cls, hidden=64, n=50) -> list[str]:
    """Kernel launches of one training step (forward, loss, backward, SGD step: what
    DataParallelTrainer.step queues on one rank) on a recording backend class `cls`; the second
    step's, so that one-time set-up (the default's ones vector) does not count."""
    from core.model import INPUTS, MLP, init_params

    be = cls("float64")
    model = MLP(be, hidden, n, init_params(hidden, 0))
    x, y = be.empty((INPUTS, n)), np.zeros(n, np.int32)
    nll = be.zeros((1,))
    for _ in range(2):
        be.launches.clear()
        a1, yhat = model.forward(x)
        be.nll_sum(yhat, y, nll)
        model.backward_output(x, y, a1, yhat, global_batch=n)
        model.backward_hidden(x, a1, yhat)
        model.update(0.1, 0.5)
    return [launch[0] for launch in be.launches]


# ------------------------------------------------------------------ the GPU backends
GPU_BACKENDS = {"cupy": ("backends.ops_cupy", "CupyBackend"),
                "pycuda": ("backends.ops_pycuda", "PycudaBackend")}
_INSTANCES: dict[tuple[str, str], object] = {}


def backend_class(name):
    module, cls = GPU_BACKENDS[name]
    return getattr(importlib.import_module(module), cls)


def make_backend(name, dtype):
    """A cached instance (kernels compile once) with the GEMM options at their defaults, or skip
    with the backend's own reason."""
    cls = backend_class(name)
    ok, reason = cls.availability()
    if not ok:
        pytest.skip(f"{name} unavailable: {reason}")
    key = (name, np.dtype(dtype).name)
    if key not in _INSTANCES:
        _INSTANCES[key] = cls(key[1])
    be = _INSTANCES[key]
    be.gemm_tile = None
    be.gemm_split = None
    # the one-pass output_backward kernel (off by default until verified on a GPU: every GPU test
    # runs it, so the suite is what verifies it)
    be.fused_output_backward = True
    be.gemm_mode = "simt"
    return be


# ------------------------------------------------------------------ tolerances
#: relative max-norm error allowed, per dtype and kind of op (op_table.TOLERANCE_KINDS); why these
#: numbers: tests/test_kernel_parity.py's docstring
TOLERANCES = {
    "float64": {"exact": 0.0, "gemm": 1e-12, "elementwise": 1e-14, "reduction": 1e-12},
    "float32": {"exact": 0.0, "gemm": 1e-5, "elementwise": 2e-6, "reduction": 1e-5},
}


def assert_close(got, ref, dtype, kind):
    """`got` within the tolerance of `kind` of `ref` (exactly equal for "exact", NaNs included);
    `dtype` a dtype or its name. Returns the error."""
    tol = TOLERANCES[np.dtype(dtype).name][kind]
    if kind == "exact":
        got, ref = np.asarray(got), np.asarray(ref)
        assert got.shape == ref.shape and np.array_equal(got, ref, equal_nan=True), \
            f"not exact ({dtype})"
        return 0.0
    err = relative_max_error(ref, got)
    assert err <= tol, f"{kind} relative max-norm error {err:.3e} > {tol:.0e} ({dtype})"
    return err


# ------------------------------------------------------------------ GEMM inputs and runs
def rand(rng, shape, dtype, scale=1.0):
    return np.asfortranarray(scale * rng.standard_normal(shape)).astype(dtype, order="F")


def course_matrices(m, n, k):
    """Integer-valued inputs of the course's GEMM test: A_ij = ((i*j) mod 17) - 8, and likewise."""
    def grid(rows, cols, shift):
        i, j = np.arange(rows)[:, None], np.arange(cols)[None, :]
        return np.asfortranarray(((i * j + shift) % 17) - 8).astype(np.float64)
    return grid(m, k, 0), grid(k, n, 3), grid(m, n, 5)


# (M, N, K): the sizes the brief asks for, the model's shapes, and the empty cases
GEMM_SHAPES = [
    (1, 1, 1), (7, 33, 100), (33, 7, 1013), (100, 1013, 7), (784, 100, 33), (1013, 1, 784),
    (1, 1013, 33), (10, 800, 1024), (10, 1024, 800), (1024, 800, 784), (1024, 800, 10),
    (7, 33, 0), (7, 0, 33), (0, 7, 33),
]


def gemm_case(gpu, ref, m, n, k, trans_a, trans_b, alpha, beta, seed=0):
    """(what `gpu` computes, what `ref` computes) for C = alpha op(A) op(B) + beta C on random
    M x N x K inputs."""
    rng = np.random.default_rng(seed)
    dt = gpu.dtype
    a = rand(rng, (k, m) if trans_a else (m, k), dt)
    b = rand(rng, (n, k) if trans_b else (k, n), dt)
    c = rand(rng, (m, n), dt)
    expected = c.copy(order="F")
    ref.gemm(a, b, expected, alpha, beta, trans_a, trans_b)
    dc = gpu.from_host(c)
    gpu.gemm(gpu.from_host(a), gpu.from_host(b), dc, alpha, beta, trans_a, trans_b)
    return gpu.to_host(dc), expected


#: the fused GEMMs' sizes (M, N, K): no multiple of any tile, M <= 16 and M > 16, one output
#: column, K = 0, short K (t64's short configuration) and deep K (its deep one, K > 256)
FUSED_SIZES = [(133, 77, 65), (17, 129, 300), (5, 3, 1), (70, 1, 0), (16, 64, 257), (200, 300, 10)]


def fused_case(rng, op, m, n, k, dtype):
    """Host inputs of fused GEMM `op` with an M x N product over K (gemm_with_bias_grad: op(B)
    has N columns, out N + 1)."""
    scale = 3.0 / np.sqrt(max(k, 1))
    if op == "gemm_bias_sigmoid":
        return {"a": rand(rng, (m, k), dtype), "b": rand(rng, (k, n), dtype, scale),
                "bias": rand(rng, (m,), dtype), "out": np.full((m, n), np.nan, dtype, order="F")}
    if op == "gemm_sigmoid_backward":
        return {"a": rand(rng, (k, m), dtype), "b": rand(rng, (k, n), dtype),
                "act": np.asfortranarray(rng.uniform(0, 1, (m, n))).astype(dtype, order="F"),
                "out": np.full((m, n), np.nan, dtype, order="F")}
    return {"a": rand(rng, (m, k), dtype), "b": rand(rng, (n, k), dtype),
            "out": np.full((m, n + 1), np.nan, dtype, order="F")}


def run_fused(be, ref, op, case):
    """(what `be` computes, what the reference computes) for one fused case; the inputs must come
    back unchanged."""
    expected = {k: v.copy(order="F") for k, v in case.items()}
    getattr(ref, op)(**expected)
    device = {k: be.from_host(v) for k, v in case.items()}
    getattr(be, op)(**device)
    for name, original in case.items():
        if name != "out":
            assert np.array_equal(be.to_host(device[name]), original), f"{op} changed {name}"
    return be.to_host(device["out"]), expected["out"]


# The split kernels (gemm_plan.GEMM_SPLIT_KERNELS and each variant's split_kernels; gemm.cuh
# SplitK) on sizes that are no multiple of the tile or of a split's K range: K not a multiple of
# the slab, K < S * 32 (empty splits), K = 0, one and zero columns of op(B).
SPLIT_SIZES = [(100, 70, 333), (65, 1, 50), (130, 129, 1013), (17, 0, 300), (40, 33, 0),
               (64, 64, 64), (200, 90, 2000),
               # M <= 16: the s16 tile's split kernels (the 10-class layer's [dW2 db2])
               (10, 257, 800), (1, 5, 300), (16, 17, 1013), (7, 1, 0)]
#: the split products: (name, op of the backend, plain GEMM's transpose pair or None)
SPLIT_PRODUCTS = [("gemm_nn", "gemm", (False, False)), ("gemm_nt", "gemm", (False, True)),
                  ("gemm_bias_sigmoid", "gemm_bias_sigmoid", None),
                  ("gemm_with_bias_grad", "gemm_with_bias_grad", None)]


def products_at(shapes: dict[str, list]) -> list:
    """[(split product, (m, n, k)), ...] of {product name (SPLIT_PRODUCTS): [(m, n, k), ...]}."""
    by_name = {product[0]: product for product in SPLIT_PRODUCTS}
    return [(by_name[name], mnk) for name, mnks in shapes.items() for mnk in mnks]


def split_case(rng, product, m, n, k, dtype):
    """Host inputs of one split product; `out` (or c) is what it writes."""
    name, op, trans = product
    if trans is None:
        return fused_case(rng, op, m, n, k, dtype)
    trans_a, trans_b = trans
    return {"a": rand(rng, (k, m) if trans_a else (m, k), dtype),
            "b": rand(rng, (n, k) if trans_b else (k, n), dtype),
            "c": rand(rng, (m, n), dtype), "alpha": 0.75, "beta": -1.25,
            "trans_a": trans_a, "trans_b": trans_b}


def run_split(be, product, case):
    """What `be` writes for one case (fresh device copies of the inputs each call)."""
    name, op, trans = product
    if trans is None:
        device = {key: be.from_host(v) for key, v in case.items()}
        getattr(be, op)(**device)
        return be.to_host(device["out"])
    c = be.from_host(case["c"])
    be.gemm(be.from_host(case["a"]), be.from_host(case["b"]), c, case["alpha"], case["beta"],
            case["trans_a"], case["trans_b"])
    return be.to_host(c)


def reference_split(ref, product, case):
    name, op, trans = product
    if trans is None:
        expected = {key: v.copy(order="F") for key, v in case.items()}
        getattr(ref, op)(**expected)
        return expected["out"]
    c = case["c"].copy(order="F")
    ref.gemm(case["a"], case["b"], c, case["alpha"], case["beta"], case["trans_a"],
             case["trans_b"])
    return c


def _fused_graph_replays(be, rng, m, n, k):
    """gemm_bias_sigmoid and gemm_with_bias_grad on fresh M x N x K cases, planned and launched
    inside a CUDA-graph capture, the graph replayed twice, then both launched eagerly: (replays,
    eager) on the host, each a (bias_sigmoid out, bias_grad out) pair."""
    z = {key: be.from_host(v) for key, v in
         fused_case(rng, "gemm_bias_sigmoid", m, n, k, be.dtype).items()}
    g = {key: be.from_host(v) for key, v in
         fused_case(rng, "gemm_with_bias_grad", m, n, k, be.dtype).items()}
    be.synchronize()
    be.begin_capture()
    be.gemm_bias_sigmoid(**z)
    be.gemm_with_bias_grad(**g)
    graph = be.end_capture()
    replays = []
    for _ in range(2):
        graph.launch()
        be.synchronize()
        replays.append((be.to_host(z["out"]), be.to_host(g["out"])))
    be.gemm_bias_sigmoid(**z)
    be.gemm_with_bias_grad(**g)
    return replays, (be.to_host(z["out"]), be.to_host(g["out"]))


def check_graph_replays(be, seed, m, n, k, split=None):
    """The fused GEMMs planned and launched inside a CUDA-graph capture (nothing may allocate
    there: choose a shape no other test plans), replayed twice: the eager bits each time, every
    element written, and the split tickets back at 0. `split` forces S; skips where `be` has no
    graphs."""
    ok, why = be.graph_support()
    if not ok:
        pytest.skip(f"CUDA graphs unavailable with {be.name}: {why}")
    be.gemm_split = split
    try:
        replays, eager = _fused_graph_replays(be, np.random.default_rng(seed), m, n, k)
    finally:
        be.gemm_split = None
    for replay in replays:
        assert np.array_equal(replay[0], eager[0]) and np.array_equal(replay[1], eager[1])
    assert np.all(np.isfinite(eager[0])) and np.all(np.isfinite(eager[1]))
    assert not be.to_host(be._gemm_tickets).any()


def check_gemm_beta_zero_never_reads_c(gpu, ref):
    """beta = 0 with C all NaN: every element written, within the GEMM tolerance."""
    rng = np.random.default_rng(1)
    a, b = rand(rng, (33, 100), gpu.dtype), rand(rng, (100, 7), gpu.dtype)
    dc = gpu.from_host(np.full((33, 7), np.nan, dtype=gpu.dtype))
    gpu.gemm(gpu.from_host(a), gpu.from_host(b), dc, 1.0, 0.0)
    expected = np.empty((33, 7), gpu.dtype, order="F")
    ref.gemm(a, b, expected)
    got = gpu.to_host(dc)
    assert np.all(np.isfinite(got))
    assert_close(got, expected, gpu.dtype, "gemm")


def check_fused_gemms_on_the_model_views(gpu, ref):
    """The model's operands: x and a1 column slices of wider matrices, [dW1 db1] and [dW2 db2]
    M x (N + 1) views of one flat buffer whose other elements stay untouched."""
    rng = np.random.default_rng(22)
    dt, h, n, lo = gpu.dtype, 40, 23, 5
    shapes = [(h, 784), (h,), (10, h), (10,)]
    size = sum(int(np.prod(s)) for s in shapes)
    flat = rand(rng, (size + 7,), dt)
    x_big = rand(rng, (784, n + 9), dt)
    w1, b1, w2 = rand(rng, (h, 784), dt, 0.05), rand(rng, (h,), dt), rand(rng, (10, h), dt)
    diff_big = rand(rng, (10, n + 9), dt)
    a1_big = np.full((h, n + 9), np.nan, dt, order="F")

    # reference
    x, diff = x_big[:, lo:lo + n], diff_big[:, lo:lo + n]
    r_flat, r_a1 = flat.copy(), a1_big.copy(order="F")
    r_dw1b1 = r_flat[:h * 785].reshape((h, 785), order="F")
    off2 = h * 785
    r_dw2b2 = r_flat[off2:off2 + 10 * (h + 1)].reshape((10, h + 1), order="F")
    ref.gemm_bias_sigmoid(w1, x, b1, r_a1[:, lo:lo + n])
    r_dz1 = np.empty((h, n), dt, order="F")
    ref.gemm_sigmoid_backward(w2, diff, r_a1[:, lo:lo + n], r_dz1)
    ref.gemm_with_bias_grad(r_dz1, x, r_dw1b1)
    ref.gemm_with_bias_grad(diff, r_a1[:, lo:lo + n], r_dw2b2)

    # device, through cols and flat_views as core/model.py builds them
    d_flat, d_x, d_a1 = gpu.from_host(flat), gpu.from_host(x_big), gpu.from_host(a1_big)
    d_diff = gpu.from_host(diff_big)
    (dw1b1,) = gpu.flat_views(gpu.cols(d_flat, 0, h * 785), [(h, 785)])
    (dw2b2,) = gpu.flat_views(gpu.cols(d_flat, off2, off2 + 10 * (h + 1)), [(10, h + 1)])
    xs, a1s = gpu.cols(d_x, lo, lo + n), gpu.cols(d_a1, lo, lo + n)
    diffs = gpu.cols(d_diff, lo, lo + n)
    gpu.gemm_bias_sigmoid(gpu.from_host(w1), xs, gpu.from_host(b1), a1s)
    dz1 = gpu.empty((h, n))
    gpu.gemm_sigmoid_backward(gpu.from_host(w2), diffs, a1s, dz1)
    gpu.gemm_with_bias_grad(dz1, xs, dw1b1)
    gpu.gemm_with_bias_grad(diffs, a1s, dw2b2)

    got_a1, got_flat = gpu.to_host(d_a1), gpu.to_host(d_flat)
    assert np.all(np.isnan(got_a1[:, :lo])) and np.all(np.isnan(got_a1[:, lo + n:]))
    assert_close(got_a1[:, lo:lo + n], r_a1[:, lo:lo + n], dt, "gemm")
    assert_close(gpu.to_host(dz1), r_dz1, dt, "gemm")
    assert np.array_equal(got_flat[off2 + 10 * (h + 1):], flat[off2 + 10 * (h + 1):])
    assert_close(got_flat[:h * 785], r_flat[:h * 785], dt, "gemm")
    assert_close(got_flat[off2:off2 + 10 * (h + 1)], r_flat[off2:off2 + 10 * (h + 1)], dt, "gemm")


# ------------------------------------------------------------------ the op table's parity run
def run_op(backend, op, case, device):
    """Call `op` on `backend` with the case's arguments, its arrays those of `device`."""
    return getattr(backend, op.name)(*(device.get(p, case.get(p)) for p in op.param_names
                                       if p in case))


def to_device(gpu, case, aliased=()):
    """The case's arrays on the GPU; each (out, in) pair of `aliased` becomes one array."""
    device = {k: gpu.from_host(v) for k, v in case.items() if isinstance(v, np.ndarray)}
    for out, inp in aliased:
        device[out] = device[inp]
    return device


def _host_copy(case, aliased=()):
    copy = {k: (v.copy(order="F") if isinstance(v, np.ndarray) else v) for k, v in case.items()}
    for out, inp in aliased:
        copy[out] = copy[inp]
    return copy


def check_against_reference(gpu, ref, op, case, aliased=()):
    """`op` on `gpu` against the NumPy reference `ref` (its method of the same name) on one case:
    what it writes within the op's tolerance, its other inputs unchanged, its result (if any)
    within tolerance. `aliased`: (out, in) pairs run as one array."""
    dt = gpu.dtype
    if op.name in EXACT_OPS and dt != np.float64:
        pytest.skip("--exact's ops give the reference's bits in float64 only (the model's dtype)")
    expected = _host_copy(case, aliased)
    ref_result = getattr(ref, op.name)(**expected)
    device = to_device(gpu, case, aliased)
    result = run_op(gpu, op, case, device)
    for name, original in case.items():
        if not isinstance(original, np.ndarray):
            continue
        got = gpu.to_host(device[name])
        if name in op.writes or any(name == inp for _, inp in aliased):
            assert_close(got, expected[name], dt, op.tolerance)
        else:
            assert np.array_equal(got, original, equal_nan=True), \
                f"{op.name} changed its input {name}"
    if op.returns_result:
        assert isinstance(result, float)
        assert_close(result, ref_result, dt, op.tolerance)
    else:
        assert result is None
