"""Every op of the GPU backends (cupy, pycuda) against the NumPy reference backend, for float32 and
float64. The ops come from the op table (backends/op_table.py): each entry is run on every backend
and dtype, on awkward sizes (1, 7, 33, 100, 784, 1013, zero columns), with its own inputs
(tests/op_cases.py), in place where the contract allows aliasing, and on cupy and pycuda side by
side (bit for bit). Hand-written tests add what a table entry cannot say: all four GEMM transposes and every
tile, the course GEMM check, leading dimensions, column and flat views, large softmax inputs and
argmax ties. The reference itself is checked against direct NumPy formulas where that is cheap.

Error measure: relative max-norm, max|got - ref| / max|ref| (the course's measure), with the
tolerance of the entry's kind in gpu_helpers.TOLERANCES. Why these numbers (on random N(0,1)
data): a float32 dot product over K = 784..3200 terms accumulated in a different order than
NumPy's BLAS differs by about 1e-6 relative to max|C|, float64 by about 1e-15; element-wise ops
differ by the few ulps of exp/log implementations; sums (reductions, and softmax's normaliser over
up to 1013 terms) by their summation order. "exact" ops (fill, count_correct) and integer-valued GEMMs (the course
check) must match exactly.

GPU tests skip with the backend's own availability() reason where it cannot run (CI: no GPU, no
cupy, no pycuda).
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from backends import gemm_plan, op_table
from backends.ops_numpy import NumpyBackend
from conftest import relative_max_error
from gpu_helpers import (FUSED_SIZES, GEMM_SHAPES, GPU_BACKENDS, SPLIT_PRODUCTS, SPLIT_SIZES,
                         TOLERANCES, assert_close, backend_class, check_against_reference,
                         check_fused_gemms_on_the_model_views, check_gemm_beta_zero_never_reads_c,
                         check_graph_replays, course_matrices, fused_case, gemm_case, make_backend,
                         products_at, rand, reference_split, run_fused, run_op, run_split,
                         split_case, to_device)
from op_cases import OP_CASES

DTYPES = ["float64", "float32"]
TRANSPOSES = [(False, False), (False, True), (True, False), (True, True)]

# (rows, cols) handed to each entry's cases (the GEMM's: M x N, K = 33)
EW_SHAPES = [(10, 1), (10, 33), (100, 1013), (784, 7), (7, 0), (1, 100), (1013, 10)]

gpu_test = pytest.mark.gpu


@pytest.fixture(params=[(b, d) for b in GPU_BACKENDS for d in DTYPES], ids=lambda p: f"{p[0]}-{p[1]}")
def gpu(request):
    return make_backend(*request.param)


@pytest.fixture
def ref(gpu):
    return NumpyBackend(gpu.dtype.name)


def labels_for(rng, rows, cols):
    return rng.integers(0, rows, cols).astype(np.int32)


# ------------------------------------------------------------------------------- GEMM
@gpu_test
@pytest.mark.parametrize("trans_a,trans_b", TRANSPOSES, ids=["nn", "nt", "tn", "tt"])
@pytest.mark.parametrize("mnk", GEMM_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_gemm(gpu, ref, mnk, trans_a, trans_b):
    got, expected = gemm_case(gpu, ref, *mnk, trans_a, trans_b, alpha=0.75, beta=-1.25)
    assert_close(got, expected, gpu.dtype, "gemm")


@gpu_test
@pytest.mark.parametrize("tile", sorted(gemm_plan.GEMM_TILES))
@pytest.mark.parametrize("trans_a,trans_b", TRANSPOSES, ids=["nn", "nt", "tn", "tt"])
def test_gemm_every_tile(gpu, ref, tile, trans_a, trans_b):
    """Each tile kernel on sizes that are no multiple of any tile (the heuristic alone would leave
    some kernels unexercised), beta = 0 included."""
    gpu.gemm_tile = tile
    try:
        for m, n, k, beta in [(133, 77, 65, 0.5), (17, 129, 200, 0.0), (5, 3, 1, 2.0)]:
            got, expected = gemm_case(gpu, ref, m, n, k, trans_a, trans_b, 1.5, beta)
            assert_close(got, expected, gpu.dtype, "gemm")
    finally:
        gpu.gemm_tile = None


# the fused GEMMs (gemm_plan.GEMM_VARIANTS), each run with every tile forced (a tile the variant
# lacks runs as its fallback) on gpu_helpers.FUSED_SIZES
FUSED_VARIANTS = [pytest.param(v, id=v.op) for v in gemm_plan.GEMM_VARIANTS.values()]


@gpu_test
@pytest.mark.parametrize("tile", sorted(gemm_plan.GEMM_TILES))
@pytest.mark.parametrize("variant", FUSED_VARIANTS)
def test_fused_gemm_every_tile(gpu, ref, variant, tile):
    gpu.gemm_tile = tile
    try:
        rng = np.random.default_rng(21)
        for m, n, k in FUSED_SIZES:
            got, expected = run_fused(gpu, ref, variant.op, fused_case(rng, variant.op, m, n, k,
                                                                        gpu.dtype))
            assert np.all(np.isfinite(got)), f"{variant.op} {m}x{n}x{k}: unwritten elements"
            assert_close(got, expected, gpu.dtype, "gemm")
    finally:
        gpu.gemm_tile = None


# ------------------------------------------------------------------------------- split-K
# The split kernels (gemm_plan.GEMM_SPLIT_KERNELS and each variant's split_kernels; gemm.cuh
# SplitK) with S forced, on gpu_helpers.SPLIT_SIZES and SPLIT_PRODUCTS.
SPLITS = [2, 3, 5]


def split_plan(be, product, case, split):
    """The plan the backend makes for `case` with S forced (to check that it is a split one)."""
    name, op, trans = product
    if trans is None:
        variant = gemm_plan.GEMM_VARIANTS[op]
        return gemm_plan.plan_gemm(case["a"].shape, case["b"].shape, case["out"].shape,
                                   variant.ops[0] == "t", variant.ops[1] == "t", be._num_sms,
                                   variant=variant, split=split)
    return gemm_plan.plan_gemm(case["a"].shape, case["b"].shape, case["c"].shape, *trans,
                               be._num_sms, split=split)


@gpu_test
@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("product", SPLIT_PRODUCTS, ids=lambda p: p[0])
def test_split_gemm_against_reference(gpu, ref, product, split):
    """Each split kernel with S forced (on the planner's tile: t64 or tc64, s16 for M <= 16): the
    reference's result within the GEMM tolerance, every element written, a rerun bit for bit the
    same, the unsplit kernel's result within tolerance, and the tickets back at 0."""
    rng = np.random.default_rng(31)
    for m, n, k in SPLIT_SIZES:
        case = split_case(rng, product, m, n, k, gpu.dtype)
        plan = split_plan(gpu, product, case, split)
        if plan is None:  # no output columns: nothing to launch
            continue
        assert plan.split == split and plan.kernel.endswith("_split"), plan
        expected = reference_split(ref, product, case)
        gpu.gemm_split = split
        try:
            got = run_split(gpu, product, case)
            again = run_split(gpu, product, case)
        finally:
            gpu.gemm_split = None
        where = f"{product[0]} {m}x{n}x{k} S={split} {plan.kernel}"
        assert np.all(np.isfinite(got)), f"{where}: unwritten elements"
        assert_close(got, expected, gpu.dtype, "gemm")
        assert np.array_equal(got, again), f"{where}: a rerun differs"
        gpu.gemm_split = 1
        try:
            unsplit = run_split(gpu, product, case)
        finally:
            gpu.gemm_split = None
        assert_close(got, unsplit, gpu.dtype, "gemm")
        assert not gpu.to_host(gpu._gemm_tickets).any(), f"{where}: tickets left set"


@gpu_test
def test_split_gemm_at_the_model_shapes(gpu, ref):
    """The planner's own splits (H = 256, n = 800: z1 and [dW1 db1] split in 5 on an H100,
    [dW2 db2] in 5; the deep [dW1 db1] at H = 1024, n = 3200 in 5) against the reference, and
    against S = 1 within tolerance."""
    rng = np.random.default_rng(32)
    for product, (m, n, k) in products_at({
            "gemm_bias_sigmoid": [(256, 800, 784)],
            "gemm_with_bias_grad": [(256, 784, 800), (256, 784, 3200), (1024, 784, 3200),
                                    (10, 256, 800), (10, 1024, 800)]}):
        case = split_case(rng, product, m, n, k, gpu.dtype)
        expected = reference_split(ref, product, case)
        got = run_split(gpu, product, case)
        assert_close(got, expected, gpu.dtype, "gemm")
        gpu.gemm_split = 1
        try:
            assert_close(got, run_split(gpu, product, case), gpu.dtype, "gemm")
        finally:
            gpu.gemm_split = None


@gpu_test
@pytest.mark.parametrize("dtype", DTYPES)
def test_split_gemm_cupy_and_pycuda_agree_bitwise(dtype):
    be_cupy, be_pycuda = make_backend("cupy", dtype), make_backend("pycuda", dtype)
    rng = np.random.default_rng(33)
    for product in SPLIT_PRODUCTS:
        for split in SPLITS:
            for m, n, k in SPLIT_SIZES[:3]:
                case = split_case(rng, product, m, n, k, dtype)
                outs = []
                for be in (be_cupy, be_pycuda):
                    be.gemm_split = split
                    try:
                        outs.append(run_split(be, product, case))
                    finally:
                        be.gemm_split = None
                assert np.array_equal(*outs), f"{product[0]} {m}x{n}x{k} S={split}: differs"


@gpu_test
@pytest.mark.parametrize("name", list(GPU_BACKENDS))
def test_split_gemm_graph_replays(name):
    """Planned and launched inside a CUDA-graph capture (nothing may allocate there), replayed
    twice: the eager bits each time (the last block of each tile reset its ticket)."""
    # 131 x 97 x 1001: a shape no other test plans: its plan is made during the capture
    check_graph_replays(make_backend(name, "float32"), 34, 131, 97, 1001, split=3)


@gpu_test
def test_fused_gemm_bias_grad_exact(gpu, ref):
    """Integer-valued inputs: the product and the row sums are exact in both precisions, so the
    ones column must give exactly what a sum gives (on every tile)."""
    a, b, _ = course_matrices(37, 700, 130)  # a 37 x 130, b (K x N) = 130 x 700
    a, bt = a.astype(gpu.dtype), np.asfortranarray(b.T).astype(gpu.dtype)  # b: N x K
    expected = np.empty((37, 701), gpu.dtype, order="F")
    ref.gemm_with_bias_grad(a, bt, expected)
    assert np.array_equal(expected[:, 700], a.sum(axis=1))
    for tile in sorted(gemm_plan.GEMM_TILES):
        gpu.gemm_tile = tile
        try:
            out = gpu.from_host(np.full((37, 701), np.nan, gpu.dtype))
            gpu.gemm_with_bias_grad(gpu.from_host(a), gpu.from_host(bt), out)
            assert np.array_equal(gpu.to_host(out), expected), tile
        finally:
            gpu.gemm_tile = None


@gpu_test
def test_fused_gemms_on_the_model_views(gpu, ref):
    """The model's operands: x and a1 column slices of wider matrices, [dW1 db1] and [dW2 db2]
    M x (N + 1) views of one flat buffer whose other elements stay untouched."""
    check_fused_gemms_on_the_model_views(gpu, ref)


@gpu_test
@pytest.mark.parametrize("mnk", [(800, 1000, 784), (800, 10, 1000)], ids=["800x1000x784", "800x10x1000"])
def test_gemm_course_exact(gpu, ref, mnk):
    """alpha=2, beta=5, integer inputs: every partial sum is an integer below 2^24 (|sum| <= 64 K
    <= 64000), exactly representable in float32 too, so both precisions must match EXACTLY."""
    m, n, k = mnk
    a, b, c = (x.astype(gpu.dtype) for x in course_matrices(m, n, k))
    assert 2 * 64 * k + 5 * 8 < 2**24
    expected = c.copy(order="F")
    ref.gemm(a, b, expected, 2.0, 5.0)
    assert np.array_equal(expected, 2.0 * (a.astype(np.float64) @ b) + 5.0 * c)
    dc = gpu.from_host(c)
    gpu.gemm(gpu.from_host(a), gpu.from_host(b), dc, 2.0, 5.0)
    got = gpu.to_host(dc)
    assert np.array_equal(got, expected), f"max diff {np.max(np.abs(got - expected))}"


@gpu_test
def test_gemm_beta_zero_never_reads_c(gpu, ref):
    check_gemm_beta_zero_never_reads_c(gpu, ref)


@gpu_test
def test_gemm_k_zero_scales_c(gpu):
    c = np.arange(12, dtype=gpu.dtype).reshape(3, 4, order="F")
    dc = gpu.from_host(c)
    gpu.gemm(gpu.empty((3, 0)), gpu.empty((0, 4)), dc, 3.0, -2.0)
    assert np.array_equal(gpu.to_host(dc), -2.0 * c)
    gpu.gemm(gpu.empty((0, 3)), gpu.empty((4, 0)), dc, 3.0, 0.0, trans_a=True, trans_b=True)
    assert np.array_equal(gpu.to_host(dc), np.zeros_like(c))


@gpu_test
@pytest.mark.parametrize("trans_a,trans_b", TRANSPOSES, ids=["nn", "nt", "tn", "tt"])
def test_gemm_on_column_views(gpu, ref, trans_a, trans_b):
    """A, B and C are column slices of wider matrices (as a rank's slice of a minibatch is); the
    columns around C's slice stay untouched."""
    rng = np.random.default_rng(2)
    m, n, k = 100, 33, 784
    a_big = rand(rng, (k, m + 9) if trans_a else (m, k + 9), gpu.dtype)
    b_big = rand(rng, (n, k + 5) if trans_b else (k, n + 5), gpu.dtype)
    c_big = rand(rng, (m, n + 11), gpu.dtype)
    a_sl = (slice(None), slice(4, 4 + (m if trans_a else k)))
    b_sl = (slice(None), slice(2, 2 + (k if trans_b else n)))
    c_sl = (slice(None), slice(6, 6 + n))

    expected = c_big.copy(order="F")
    ref.gemm(a_big[a_sl], b_big[b_sl], expected[c_sl], -0.5, 0.25, trans_a, trans_b)

    da, db, dc = gpu.from_host(a_big), gpu.from_host(b_big), gpu.from_host(c_big)
    gpu.gemm(gpu.cols(da, a_sl[1].start, a_sl[1].stop), gpu.cols(db, b_sl[1].start, b_sl[1].stop),
             gpu.cols(dc, c_sl[1].start, c_sl[1].stop), -0.5, 0.25, trans_a, trans_b)
    got = gpu.to_host(dc)
    assert np.array_equal(got[:, :6], c_big[:, :6])
    assert np.array_equal(got[:, 6 + n:], c_big[:, 6 + n:])
    assert_close(got, expected, gpu.dtype, "gemm")


def _row_block(gpu, arr, r0, r1):
    """Rows r0:r1 of a device matrix: a view whose leading dimension exceeds its row count. Not part
    of the ops contract, but the GEMM kernels take a leading dimension and this is its only test."""
    if gpu.name == "cupy":
        return arr[r0:r1, :]
    return arr.view(r0, (r1 - r0, arr.shape[1]), arr.ld)


@gpu_test
@pytest.mark.parametrize("trans_a,trans_b", TRANSPOSES, ids=["nn", "nt", "tn", "tt"])
def test_gemm_leading_dimension(gpu, ref, trans_a, trans_b):
    rng = np.random.default_rng(3)
    m, n, k = 37, 45, 70
    a_big = rand(rng, ((k if trans_a else m) + 13, m if trans_a else k), gpu.dtype)
    b_big = rand(rng, ((n if trans_b else k) + 3, k if trans_b else n), gpu.dtype)
    c_big = rand(rng, (m + 8, n), gpu.dtype)
    ra, rb = (5, 5 + (k if trans_a else m)), (1, 1 + (n if trans_b else k))
    expected = c_big.copy(order="F")
    ref.gemm(a_big[ra[0]:ra[1]], b_big[rb[0]:rb[1]], expected[2:2 + m], 1.25, 0.5, trans_a, trans_b)
    dc = gpu.from_host(c_big)
    gpu.gemm(_row_block(gpu, gpu.from_host(a_big), *ra), _row_block(gpu, gpu.from_host(b_big), *rb),
             _row_block(gpu, dc, 2, 2 + m), 1.25, 0.5, trans_a, trans_b)
    assert_close(gpu.to_host(dc), expected, gpu.dtype, "gemm")


@gpu_test
def test_gemm_and_axpy_on_flat_views(gpu, ref):
    """The model's layout: W1, b1, W2, b2 packed in one flat buffer; ops on the views touch only
    their own part of it."""
    rng = np.random.default_rng(4)
    hidden, n = 33, 7
    shapes = [(hidden, 784), (hidden,), (10, hidden), (10,)]
    size = sum(int(np.prod(s)) for s in shapes)
    flat = rand(rng, (size,), gpu.dtype)
    x = rand(rng, (784, n), gpu.dtype)
    diff = rand(rng, (10, n), gpu.dtype)

    ref_flat = flat.copy()
    rw1, rb1, rw2, rb2 = ref.flat_views(ref_flat, shapes)
    a1 = np.empty((hidden, n), gpu.dtype, order="F")
    ref.gemm(rw1, x, a1)
    ref.gemm(diff, a1, rw2, 0.5, 1.0, trans_b=True)
    ref.axpy(-0.1, rb1, rb1)
    ref.reduce_cols(diff, rb2, 2.0)

    dflat = gpu.from_host(flat)
    w1, b1, w2, b2 = gpu.flat_views(dflat, shapes)
    da1 = gpu.empty((hidden, n))
    gpu.gemm(w1, gpu.from_host(x), da1)
    gpu.gemm(gpu.from_host(diff), da1, w2, 0.5, 1.0, trans_b=True)
    gpu.axpy(-0.1, b1, b1)
    gpu.reduce_cols(gpu.from_host(diff), b2, 2.0)
    assert_close(gpu.to_host(da1), a1, gpu.dtype, "gemm")
    assert_close(gpu.to_host(dflat), ref_flat, gpu.dtype, "gemm")
    assert np.array_equal(gpu.to_host(w1), flat[:hidden * 784].reshape(hidden, 784, order="F"))


# ------------------------------------------------------------------------------- the op table
TABLE_OPS = [pytest.param(op, id=op.name) for op in op_table.OPS]


@gpu_test
@pytest.mark.parametrize("shape", EW_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("op", TABLE_OPS)
def test_op_against_reference(gpu, ref, op, shape):
    """Every entry of the op table on its own inputs. Outputs start as NaN (an element left
    unwritten fails, e.g. reduce_cols over zero columns must write zeros), accumulators non-zero."""
    for case in OP_CASES[op.name](np.random.default_rng(5), *shape, gpu.dtype):
        check_against_reference(gpu, ref, op, case)


ALIASING_OPS = [pytest.param(op, id=op.name) for op in op_table.OPS if op.aliases]


@gpu_test
@pytest.mark.parametrize("shape", [(10, 33), (100, 7)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("op", ALIASING_OPS)
def test_op_in_place(gpu, ref, op, shape):
    """Every op whose contract allows out to alias an input, run with out IS that input."""
    for case in OP_CASES[op.name](np.random.default_rng(6), *shape, gpu.dtype):
        for pair in op.aliases:
            check_against_reference(gpu, ref, op, case, aliased=(pair,))


@gpu_test
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", TABLE_OPS)
def test_cupy_and_pycuda_agree_bitwise(op, dtype):
    """Same source, same launches: NVRTC (CuPy) and nvcc (PyCUDA) builds give the same bits."""
    be_cupy, be_pycuda = make_backend("cupy", dtype), make_backend("pycuda", dtype)
    for shape in [(10, 33), (1013, 10), (784, 7)]:
        for case in OP_CASES[op.name](np.random.default_rng(7), *shape, np.dtype(dtype)):
            outputs = []
            for be in (be_cupy, be_pycuda):
                device = to_device(be, case)
                result = run_op(be, op, case, device)
                outputs.append(([be.to_host(device[w]) for w in op.writes], result))
            (got_cupy, res_cupy), (got_pycuda, res_pycuda) = outputs
            assert res_cupy == res_pycuda or (res_cupy is None and res_pycuda is None)
            for name, a, b in zip(op.writes, got_cupy, got_pycuda):
                assert np.array_equal(a, b, equal_nan=True), f"{op.name} {shape}: {name} differs"



@gpu_test
def test_elementwise_on_column_views(gpu, ref):
    """Element-wise ops and reductions on cols() views of a wider matrix touch only the view."""
    rng = np.random.default_rng(7)
    dt = gpu.dtype
    rows, total, lo, hi = 10, 50, 13, 40
    big = rand(rng, (rows, total), dt, 3.0)
    bias = rand(rng, (rows,), dt)
    labels = labels_for(rng, rows, total)

    expected = big.copy(order="F")
    view = expected[:, lo:hi]
    ref.bias_sigmoid(view, bias, view)
    ref.softmax(view, view, 0)  # 10 rows: a short sum, element-wise tolerance still holds
    acc_ref = np.array([0.5], dt)
    ref.nll_sum(view, labels[lo:hi], acc_ref)
    cnt_ref = np.array([1.0], dt)
    ref.count_correct(view, labels[lo:hi], cnt_ref)
    ref.softmax_xent_backward(view, labels[lo:hi], 0.25, view)
    red_ref = np.empty(rows, dt)
    ref.reduce_cols(view, red_ref, 3.0)

    dbig, dlab = gpu.from_host(big), gpu.from_host(labels)
    dview, dlv = gpu.cols(dbig, lo, hi), gpu.cols(dlab, lo, hi)
    gpu.bias_sigmoid(dview, gpu.from_host(bias), dview)
    gpu.softmax(dview, dview, 0)
    acc, cnt = gpu.from_host(np.array([0.5])), gpu.from_host(np.array([1.0]))
    gpu.nll_sum(dview, dlv, acc)
    gpu.count_correct(dview, dlv, cnt)
    gpu.softmax_xent_backward(dview, dlv, 0.25, dview)
    red = gpu.empty((rows,))
    gpu.reduce_cols(dview, red, 3.0)

    got = gpu.to_host(dbig)
    assert np.array_equal(got[:, :lo], big[:, :lo]) and np.array_equal(got[:, hi:], big[:, hi:])
    assert_close(got, expected, dt, "elementwise")
    assert_close(gpu.to_host(acc), acc_ref, dt, "reduction")
    assert gpu.to_host(cnt)[0] == cnt_ref[0]
    assert_close(gpu.to_host(red), red_ref, dt, "reduction")


# ------------------------------------------------------------------------------- reductions
@gpu_test
def test_sum_squares_large(gpu, ref):
    """More elements than one pass of the partial-sum grid covers (the W1 of H=4096)."""
    x = rand(np.random.default_rng(9), (4096, 784), gpu.dtype)
    assert_close(gpu.sum_squares(gpu.from_host(x)), ref.sum_squares(x), gpu.dtype, "reduction")


@gpu_test
def test_softmax_large_inputs_stay_finite(gpu, ref):
    rng = np.random.default_rng(10)
    dt = gpu.dtype
    for offset in (1000.0, -1000.0):
        x = np.asfortranarray(offset + 50.0 * rng.standard_normal((10, 64))).astype(dt, order="F")
        x[3, 5] = 1e4 if offset > 0 else -1e4  # one dominant (or negligible) entry
        for axis in (0, 1):
            expected = np.empty_like(x)
            ref.softmax(x, expected, axis)
            dx = gpu.from_host(x)
            gpu.softmax(dx, dx, axis)
            got = gpu.to_host(dx)
            assert np.all(np.isfinite(got))
            assert_close(got, expected, dt, "reduction")
            np.testing.assert_allclose(got.sum(axis=axis), 1.0, rtol=10 * np.finfo(dt).eps * 64)


@gpu_test
def test_count_correct_ties_take_first_maximum(gpu, ref):
    dt = gpu.dtype
    scores = np.asfortranarray(np.array([
        [1, 3, 0, 5, 2, 2],
        [3, 3, 0, 5, 1, 2],
        [3, 1, 0, 4, 2, 2],
        [0, 0, 0, 5, 0, 2],
    ], dtype=dt))
    # argmax (first maximum) per column: 1, 0, 0, 0, 0, 0
    for labels, hits in [([1, 0, 0, 0, 0, 0], 6), ([2, 1, 3, 3, 2, 5 % 4], 0), ([1, 1, 0, 1, 0, 3], 3)]:
        lab = np.array(labels, np.int32)
        expected = np.array([0.0], dt)
        ref.count_correct(scores, lab, expected)
        assert expected[0] == hits
        acc = gpu.zeros((1,))
        gpu.count_correct(gpu.from_host(scores), gpu.from_host(lab), acc)
        assert gpu.to_host(acc)[0] == hits


# ------------------------------------------------------------------------------- memory
@gpu_test
def test_transfers_and_views(gpu):
    dt = gpu.dtype
    rng = np.random.default_rng(11)
    x = rng.standard_normal((7, 33))  # float64 C-order: cast and reordered on the way in
    d = gpu.from_host(x)
    assert d.dtype == dt and d.shape == (7, 33)
    back = gpu.to_host(d)
    assert back.flags.f_contiguous and back.dtype == dt
    assert np.array_equal(back, x.astype(dt))

    lab = gpu.from_host(np.arange(5, dtype=np.int64))
    assert lab.dtype == np.int32 and np.array_equal(gpu.to_host(lab), np.arange(5))
    zi = gpu.zeros((4,), np.int32)
    assert zi.dtype == np.int32 and np.array_equal(gpu.to_host(zi), np.zeros(4, np.int32))

    empty = gpu.from_host(np.zeros((7, 0)))
    assert gpu.to_host(empty).shape == (7, 0)
    assert gpu.to_host(gpu.cols(d, 5, 5)).shape == (7, 0)
    assert np.array_equal(gpu.to_host(gpu.cols(d, 3, 9)), x[:, 3:9].astype(dt))

    flat = gpu.from_host(np.arange(20.0))
    staging = gpu.host_buffer(20)
    assert staging.shape == (20,) and staging.dtype == dt
    gpu.copy_to_host(gpu.cols(flat, 4, 12), staging[4:12])
    assert np.array_equal(staging[4:12], np.arange(4.0, 12.0))
    staging[:] = -np.arange(20.0)
    gpu.copy_from_host(staging[2:6], gpu.cols(flat, 10, 14))
    expected = np.arange(20.0)
    expected[10:14] = -np.arange(2.0, 6.0)
    assert np.array_equal(gpu.to_host(flat), expected.astype(dt))

    itemsize = np.dtype(dt).itemsize
    base = gpu.device_pointer(flat)
    assert isinstance(base, int) and base != 0
    assert gpu.device_pointer(gpu.cols(flat, 3, 5)) == base + 3 * itemsize
    assert isinstance(gpu.stream_handle(), int) and gpu.stream_handle() != 0
    gpu.synchronize()
    assert gpu.describe_device().startswith("cuda:")


# ------------------------------------------------------------------------------- both at once
@gpu_test
@pytest.mark.parametrize("dtype", DTYPES)
def test_cupy_and_pycuda_share_a_process(dtype):
    """Both backends in one process (PyCUDA on the primary context CuPy uses) agree with each other
    and can read each other's memory. Same source, but NVRTC and nvcc may schedule FMAs differently,
    so agreement is asserted to the element-wise tolerance, not bit for bit."""
    be_cupy = make_backend("cupy", dtype)
    be_pycuda = make_backend("pycuda", dtype)
    rng = np.random.default_rng(12)
    w, x, bias = rand(rng, (100, 784), dtype), rand(rng, (784, 33), dtype), rand(rng, (100,), dtype)
    results = []
    for be in (be_cupy, be_pycuda):
        z = be.empty((100, 33))
        be.gemm(be.from_host(w), be.from_host(x), z)
        be.bias_sigmoid(z, be.from_host(bias), z)
        be.softmax(z, z, 1)
        s = be.empty((100,))
        be.reduce_cols(z, s, 0.5)
        results.append((be.to_host(z), be.to_host(s), be.sum_squares(z)))
    for got_cupy, got_pycuda in zip(*results):
        assert_close(got_pycuda, got_cupy, dtype, "elementwise")

    import cupy

    z = be_pycuda.from_host(w)
    be_pycuda.synchronize()
    assert np.array_equal(cupy.asnumpy(cupy.asarray(z)), w)


# ------------------------------------------------------------------------------- no GPU needed
@pytest.mark.parametrize("name", sorted(GPU_BACKENDS))
def test_backend_module_imports_and_reports_availability(name):
    """Importing a GPU backend module never needs its library; availability() never raises."""
    cls = backend_class(name)
    ok, reason = cls.availability()
    assert isinstance(ok, bool) and isinstance(reason, str) and reason
    assert cls.device_count() >= (1 if ok else 0)
    assert cls.name == name and cls.priority == {"cupy": 20, "pycuda": 10}[name]
    registered = []
    importlib.import_module(GPU_BACKENDS[name][0]).register_backends(registered.append)
    assert registered == [cls]


def test_gemm_tile_choice():
    """The picks at the model's shapes on an H100 (132 SMs); README: Performance."""
    assert gemm_plan.pick_gemm_tile(10, 800, 132, 1024) == "s16"        # z2 = W2 a1
    assert gemm_plan.pick_gemm_tile(1024, 800, 132, 784) == "t64"       # z1 at H=1024, n=800
    assert gemm_plan.pick_gemm_tile(1024, 784, 132, 3200) == "t64"      # dW1 at n=3200
    assert gemm_plan.pick_gemm_tile(4096, 800, 132, 784) == "t128"      # z1 at H=4096
    assert gemm_plan.pick_gemm_tile(1024, 3200, 132, 784) == "t128"     # z1 at n=3200
    assert gemm_plan.pick_gemm_tile(4096, 3200, 132, 10) == "t64"       # da1: K = 10
    plan = gemm_plan.plan_gemm((1024, 784), (784, 800), (1024, 800), False, False, 132)
    assert plan.kernel == "gemm_t64_nn" and plan.grid == (16, 13, 1) and (plan.m, plan.n, plan.k) == (1024, 800, 784)
    assert gemm_plan.plan_gemm((5, 0), (0, 7), (5, 7), False, False, 132).k == 0
    assert gemm_plan.plan_gemm((5, 3), (3, 0), (5, 0), False, False, 132) is None
    with pytest.raises(ValueError):
        gemm_plan.plan_gemm((5, 3), (4, 7), (5, 7), False, False, 132)


# ------------------------------------------------------------------------------- the reference
@pytest.mark.parametrize("dtype", DTYPES)
def test_reference_against_formulas(dtype):
    """The NumPy backend against element-by-element formulas on small inputs."""
    ref = NumpyBackend(dtype)
    rng = np.random.default_rng(13)
    m, n, k = 4, 3, 5
    a, b, c = rand(rng, (k, m), dtype), rand(rng, (n, k), dtype), rand(rng, (m, n), dtype)
    out = c.copy(order="F")
    ref.gemm(a, b, out, 0.5, 2.0, trans_a=True, trans_b=True)
    loops = np.array([[0.5 * sum(float(a[p, i]) * float(b[j, p]) for p in range(k)) + 2.0 * c[i, j]
                       for j in range(n)] for i in range(m)])
    assert relative_max_error(loops, out) < TOLERANCES[dtype]["gemm"]

    x = rand(rng, (m, n), dtype, 3.0)
    sm = np.empty_like(x)
    ref.softmax(x, sm, 0)
    for j in range(n):
        e = [np.exp(float(x[i, j])) for i in range(m)]
        assert relative_max_error([v / sum(e) for v in e], sm[:, j]) < \
            TOLERANCES[dtype]["elementwise"] * 10

    labels = np.array([0, 3, 1], np.int32)
    acc = np.zeros(1, dtype)
    ref.nll_sum(sm, labels, acc)
    assert relative_max_error([-sum(np.log(float(sm[labels[j], j])) for j in range(n))], acc) < 1e-6
    red = np.empty(m, dtype)
    ref.reduce_cols(x, red, 2.0)
    assert relative_max_error([2.0 * sum(float(x[i, j]) for j in range(n)) for i in range(m)],
                              red) < 1e-6
    assert abs(ref.sum_squares(x) - sum(float(v) ** 2 for v in x.ravel())) < 1e-4
