"""The NumPy reference backend (backends/ops_numpy.py): every op against a NumPy formula written
independently here, in float32 and float64, including zero-column inputs and the aliasing the
contract (core/ops.py) allows.

Expected values are computed in float64 from the very inputs the backend saw (cast to the dtype
first), so the tolerance only has to absorb the backend's own rounding in its dtype.
"""

import math

import numpy as np
import pytest

from backends.ops_numpy import NumpyBackend
from core.model import CLASSES

# One tolerance table per dtype: (rtol, atol) for assert_allclose against the float64 formula.
TOL = {
    "float32": {"rtol": 2e-5, "atol": 1e-6},
    "float64": {"rtol": 1e-12, "atol": 1e-14},
}
DTYPES = sorted(TOL)


@pytest.fixture(params=DTYPES)
def be(request):
    return NumpyBackend(request.param)


def close(actual, expected, dtype, **override):
    tol = dict(TOL[str(dtype)], **override)
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), expected, **tol)


def rand(be, shape, seed, lo=-1.0, hi=1.0):
    """A backend array of the backend dtype with uniform entries, plus its float64 twin."""
    host = np.random.default_rng(seed).uniform(lo, hi, size=shape).astype(be.dtype)
    return be.from_host(host), host.astype(np.float64)


def ref_sigmoid(x):
    """sigmoid via tanh: an algebraically different formula from 1 / (1 + exp(-x))."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def ref_softmax(x, axis):
    """Softmax in float64 via a log-sum-exp per column / row, written with explicit loops."""
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    lines = range(x.shape[1]) if axis == 0 else range(x.shape[0])
    for k in lines:
        v = x[:, k] if axis == 0 else x[k, :]
        m = max(v)
        lse = m + math.log(sum(math.exp(t - m) for t in v))
        res = [math.exp(t - lse) for t in v]
        if axis == 0:
            out[:, k] = res
        else:
            out[k, :] = res
    return out


# ------------------------------------------------------------------ memory
def test_empty_zeros_from_host_to_host(be):
    e = be.empty((3, 5))
    assert e.shape == (3, 5) and e.dtype == be.dtype and e.flags.f_contiguous
    z = be.zeros((4, 2))
    assert z.dtype == be.dtype and z.flags.f_contiguous and not z.any()
    host = np.arange(12, dtype=np.float64).reshape(3, 4)  # C order on purpose
    arr = be.from_host(host)
    assert arr.dtype == be.dtype and arr.flags.f_contiguous
    np.testing.assert_array_equal(arr, host)
    host[0, 0] = 99  # a copy, not a view
    assert arr[0, 0] == 0
    labels = be.from_host(np.array([1, 2, 3], dtype=np.uint8))
    assert labels.dtype == np.int32
    back = be.to_host(arr)
    assert isinstance(back, np.ndarray) and back.flags.f_contiguous
    back[0, 1] = -5
    assert arr[0, 1] == 1


def test_copy_to_from_host(be):
    arr, _ = rand(be, (7,), 1)
    host = be.host_buffer(7)
    assert host.dtype == be.dtype and host.shape == (7,)
    be.copy_to_host(arr, host)
    np.testing.assert_array_equal(host, arr)
    host *= 2
    be.copy_from_host(host, arr)
    np.testing.assert_array_equal(arr, host)


def test_flat_views_are_column_major_views(be):
    flat = be.from_host(np.arange(2 * 3 + 4 + 0 + 5, dtype=np.float64))
    a, v, empty, w = be.flat_views(flat, [(2, 3), (4,), (0, 3), (5, 1)])
    assert a.shape == (2, 3) and v.shape == (4,) and empty.shape == (0, 3) and w.shape == (5, 1)
    for view in (a, v, w):
        assert np.shares_memory(view, flat)
    # column-major: element (i, j) of the first view is flat[i + 2 j]
    for i in range(2):
        for j in range(3):
            assert a[i, j] == flat[i + 2 * j]
    np.testing.assert_array_equal(v, [6, 7, 8, 9])
    np.testing.assert_array_equal(w[:, 0], [10, 11, 12, 13, 14])
    # writes go through both ways
    a[1, 2] = -1
    assert flat[5] == -1
    flat[7] = 42
    assert v[1] == 42
    be.fill(w, 3.0)
    assert (flat[10:] == 3).all()


def test_cols_are_views(be):
    m, _ = rand(be, (4, 6), 2)
    c = be.cols(m, 2, 5)
    assert c.shape == (4, 3) and np.shares_memory(c, m)
    c[0, 0] = 123
    assert m[0, 2] == 123
    assert be.cols(m, 3, 3).shape == (4, 0)
    vec, _ = rand(be, (6,), 3)
    cv = be.cols(vec, 1, 4)
    assert cv.shape == (3,) and np.shares_memory(cv, vec)
    cv[0] = 7
    assert vec[1] == 7
    assert be.cols(vec, 6, 6).shape == (0,)


def test_fill(be):
    m, _ = rand(be, (3, 4), 4)
    be.fill(m, 2.5)
    assert (m == 2.5).all() and m.dtype == be.dtype


# ------------------------------------------------------------------ gemm
GEMM_SHAPES = [(5, 7, 3), (1, 1, 1), (10, 16, 13), (4, 0, 3), (4, 5, 0), (0, 5, 3)]  # M, K, N


def gemm_by_loops(alpha, opa, opb, beta=0.0, c=None):
    """alpha op(A) op(B) + beta C element by element, each a plain sum over k (C unread when
    beta is 0)."""
    (M, K), N = opa.shape, opb.shape[1]
    return np.array([[alpha * sum(opa[i, k] * opb[k, j] for k in range(K))
                      + (beta * c[i, j] if beta else 0.0) for j in range(N)]
                     for i in range(M)]).reshape(M, N)


@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("mkn", GEMM_SHAPES)
@pytest.mark.parametrize("alpha,beta", [(2.0, 5.0), (-0.5, 0.0)], ids=["beta5", "beta0-nan-c"])
def test_gemm_alpha_beta(be, trans_a, trans_b, mkn, alpha, beta):
    """C = alpha op(A) op(B) + beta C; with beta = 0 a C of NaNs is never read."""
    M, K, N = mkn
    a, a64 = rand(be, (K, M) if trans_a else (M, K), 10)
    b, b64 = rand(be, (N, K) if trans_b else (K, N), 11)
    c, c64 = rand(be, (M, N), 12)
    if not beta:
        be.fill(c, np.nan)
    expected = gemm_by_loops(alpha, a64.T if trans_a else a64, b64.T if trans_b else b64, beta, c64)
    be.gemm(a, b, c, alpha=alpha, beta=beta, trans_a=trans_a, trans_b=trans_b)
    assert c.shape == (M, N) and c.dtype == be.dtype and np.isfinite(c).all()
    close(c, expected, be.dtype)


def test_gemm_default_alpha_beta(be):
    a, a64 = rand(be, (3, 4), 30)
    b, b64 = rand(be, (4, 2), 31)
    c = be.empty((3, 2))
    be.fill(c, np.nan)
    be.gemm(a, b, c)
    close(c, np.einsum("ik,kj->ij", a64, b64), be.dtype)


def test_gemm_k_zero_gives_beta_c(be):
    a, b = be.empty((4, 0)), be.empty((0, 3))
    c, c64 = rand(be, (4, 3), 32)
    be.gemm(a, b, c, alpha=3.0, beta=0.25)
    close(c, 0.25 * c64, be.dtype)
    be.fill(c, np.nan)
    be.gemm(a, b, c, alpha=3.0, beta=0.0)
    assert (c == 0).all()


def test_gemm_on_column_views(be):
    """The model multiplies column views of larger buffers (a rank's slice of the batch)."""
    big, big64 = rand(be, (6, 20), 33)
    w, w64 = rand(be, (4, 6), 34)
    out_buf = be.empty((4, 20))
    be.fill(out_buf, np.nan)
    out = be.cols(out_buf, 0, 7)
    be.gemm(w, be.cols(big, 5, 12), out)
    close(out, w64 @ big64[:, 5:12], be.dtype)
    assert np.isnan(out_buf[:, 7:]).all()  # nothing written past the view


def test_gemm_integer_inputs_exact(be):
    """The course's GEMM check in small: integer-valued inputs ((i*j mod 17) - 8), alpha=2,
    beta=5, must match exactly (all partial sums are small integers, exact in float32 too)."""
    M, K, N = 40, 50, 30
    ia = np.array([[(i * j) % 17 - 8 for j in range(K)] for i in range(M)], dtype=np.int64)
    ib = np.array([[(i * j) % 17 - 8 for j in range(N)] for i in range(K)], dtype=np.int64)
    ic = np.array([[(i * j) % 17 - 8 for j in range(N)] for i in range(M)], dtype=np.int64)
    a = be.from_host(ia.astype(np.float64))
    b = be.from_host(ib.astype(np.float64))
    c = be.from_host(ic.astype(np.float64))
    be.gemm(a, b, c, alpha=2.0, beta=5.0)
    np.testing.assert_array_equal(c, 2 * (ia @ ib) + 5 * ic)


# ------------------------------------------------------------------ element-wise
def test_sigmoid(be):
    x, x64 = rand(be, (6, 9), 40, -8, 8)
    out = be.empty((6, 9))
    be.sigmoid(x, out)
    close(out, ref_sigmoid(x64), be.dtype)
    be.sigmoid(x, x)  # out may alias x
    close(x, ref_sigmoid(x64), be.dtype)


def test_sigmoid_huge_inputs_stay_finite(be):
    x = be.from_host(np.array([[-1e4, -800.0, 0.0, 800.0, 1e4]]))
    out = be.empty(x.shape)
    with np.errstate(over="ignore"):
        be.sigmoid(x, out)
    assert np.isfinite(out).all()
    close(out, [[0.0, 0.0, 0.5, 1.0, 1.0]], be.dtype)


def test_bias_sigmoid(be):
    z, z64 = rand(be, (5, 8), 41, -4, 4)
    bias, b64 = rand(be, (5,), 42)
    expected = np.empty((5, 8))
    for j in range(8):
        expected[:, j] = ref_sigmoid(z64[:, j] + b64)
    out = be.empty((5, 8))
    be.bias_sigmoid(z, bias, out)
    close(out, expected, be.dtype)
    be.bias_sigmoid(z, bias, z)  # out may alias z
    close(z, expected, be.dtype)


def test_add_bias(be):
    z, z64 = rand(be, (4, 6), 43)
    bias, b64 = rand(be, (4,), 44)
    be.add_bias(z, bias)
    close(z, z64 + np.outer(b64, np.ones(6)), be.dtype)


def test_sigmoid_backward(be):
    g, g64 = rand(be, (5, 7), 45)
    a, a64 = rand(be, (5, 7), 46, 0, 1)
    out = be.empty((5, 7))
    be.sigmoid_backward(g, a, out)
    close(out, g64 * a64 * (1 - a64), be.dtype)
    be.sigmoid_backward(g, a, g)  # out may alias grad
    close(g, g64 * a64 * (1 - a64), be.dtype)


def test_axpy(be):
    x, x64 = rand(be, (3, 5), 47)
    y, y64 = rand(be, (3, 5), 48)
    be.axpy(-0.75, x, y)
    close(y, y64 - 0.75 * x64, be.dtype)
    v, v64 = rand(be, (9,), 49)
    w, w64 = rand(be, (9,), 50)
    be.axpy(2.0, v, w)
    close(w, w64 + 2 * v64, be.dtype)


# ------------------------------------------------------------------ softmax
@pytest.mark.parametrize("axis", [0, 1])
def test_softmax(be, axis):
    x, x64 = rand(be, (10, 7), 51, -5, 5)
    out = be.empty((10, 7))
    be.softmax(x, out, axis=axis)
    expected = ref_softmax(x64, axis)
    close(out, expected, be.dtype)
    np.testing.assert_allclose(out.sum(axis=axis), 1.0, rtol=TOL[str(be.dtype)]["rtol"] * 10)
    be.softmax(x, x, axis=axis)  # out may alias x
    close(x, expected, be.dtype)


def test_softmax_default_axis_is_columns(be):
    x, x64 = rand(be, (4, 3), 52)
    out = be.empty((4, 3))
    be.softmax(x, out)
    close(out, ref_softmax(x64, 0), be.dtype)


@pytest.mark.parametrize("axis", [0, 1])
def test_softmax_huge_inputs_stay_finite(be, axis):
    """Raw pixels and large weights give logits far beyond exp's range: subtract the max."""
    big = np.array([[1e30, 1e30, -1e30],
                    [1000.0, 999.0, -1000.0],
                    [-1e30, 1e4, 1e4 - 1]])
    x = be.from_host(big if axis == 1 else big.T.copy())
    out = be.empty(x.shape)
    be.softmax(x, out, axis=axis)
    assert np.isfinite(out).all()
    e = 1.0 / (1.0 + math.exp(-1.0))
    expected = np.array([[0.5, 0.5, 0.0], [e, 1 - e, 0.0], [0.0, e, 1 - e]])
    close(out, expected if axis == 1 else expected.T, be.dtype)


@pytest.mark.parametrize("axis", [0, 1])
def test_softmax_shift_invariant(be, axis):
    x, x64 = rand(be, (5, 4), 53, -3, 3)
    shifted = be.from_host(x64 + 700.0)  # exp(700+) overflows float32 and nearly float64
    out = be.empty((5, 4))
    be.softmax(shifted, out, axis=axis)
    close(out, ref_softmax(x64, axis), be.dtype, rtol=TOL[str(be.dtype)]["rtol"] * 50,
          atol=TOL[str(be.dtype)]["atol"] * 50)


# ------------------------------------------------------------------ reductions and losses
def test_reduce_cols(be):
    x, x64 = rand(be, (6, 11), 54)
    out = be.empty((6,))
    be.fill(out, np.nan)
    be.reduce_cols(x, out)
    close(out, [sum(x64[i, j] for j in range(11)) for i in range(6)], be.dtype)
    be.reduce_cols(x, out, alpha=-3.0)
    close(out, [-3 * sum(x64[i, j] for j in range(11)) for i in range(6)], be.dtype)


def test_softmax_xent_backward(be):
    yhat, y64 = rand(be, (CLASSES, 9), 55, 0, 1)
    labels = be.from_host(np.array([0, 9, 3, 3, 5, 1, 9, 0, 7]))
    expected = y64.copy()
    for j, lab in enumerate([0, 9, 3, 3, 5, 1, 9, 0, 7]):
        expected[lab, j] -= 1.0
    expected *= 1.0 / 9
    out = be.empty(yhat.shape)
    be.fill(out, np.nan)
    be.softmax_xent_backward(yhat, labels, 1.0 / 9, out)
    close(out, expected, be.dtype)
    be.softmax_xent_backward(yhat, labels, 1.0 / 9, yhat)  # out may alias yhat
    close(yhat, expected, be.dtype)


def test_nll_sum_accumulates(be):
    yhat, y64 = rand(be, (CLASSES, 6), 56, 0.01, 1)
    labs = [2, 2, 0, 9, 4, 7]
    labels = be.from_host(np.array(labs))
    acc = be.from_host(np.array([1.5]))
    be.nll_sum(yhat, labels, acc)
    expected = 1.5 + sum(-math.log(y64[lab, j]) for j, lab in enumerate(labs))
    assert acc.shape == (1,) and acc.dtype == be.dtype
    close(acc, [expected], be.dtype)
    be.nll_sum(yhat, labels, acc)  # += again
    close(acc, [2 * expected - 1.5], be.dtype)


def test_count_correct_first_maximum_on_ties(be):
    scores = be.from_host(np.array([
        [0.1, 0.5, 0.3, 0.2, 0.0],
        [0.7, 0.5, 0.3, 0.2, 0.0],
        [0.2, 0.0, 0.3, 0.6, 0.0],
    ]))
    # columns: argmax 1 | tie 0,1 -> 0 | tie 0,1,2 -> 0 | argmax 2 | all equal -> 0
    labels = be.from_host(np.array([1, 1, 0, 2, 0]))  # correct: yes, no (tie), yes, yes, yes
    acc = be.from_host(np.array([10.0]))
    be.count_correct(scores, labels, acc)
    assert acc.dtype == be.dtype
    assert acc[0] == 14.0
    labels2 = be.from_host(np.array([0, 0, 1, 1, 2]))  # no, yes, no (tie), no, no
    be.count_correct(scores, labels2, acc)
    assert acc[0] == 15.0


def test_sum_squares(be):
    x, x64 = rand(be, (7, 5), 57)
    s = be.sum_squares(x)
    assert type(s) is float
    close([s], [sum(v * v for v in x64.ravel())], be.dtype)
    assert be.sum_squares(be.empty((3, 0))) == 0.0


# ------------------------------------------------------------------ zero columns
def test_zero_column_inputs(be):
    """A rank that received no samples: every op does the mathematically right thing."""
    H = 4
    z = be.empty((H, 0))
    bias, _ = rand(be, (H,), 60)
    out = be.empty((H, 0))
    be.bias_sigmoid(z, bias, out)
    be.add_bias(z, bias)
    be.sigmoid(z, out)
    be.softmax(be.empty((CLASSES, 0)), be.empty((CLASSES, 0)), axis=0)
    be.softmax(be.empty((CLASSES, 0)), be.empty((CLASSES, 0)), axis=1)
    be.sigmoid_backward(z, z, out)
    assert out.shape == (H, 0)

    red = be.empty((H,))
    be.fill(red, np.nan)
    be.reduce_cols(z, red)
    assert (red == 0).all()  # a sum over nothing is 0

    labels = be.from_host(np.zeros(0, dtype=np.int32))
    yhat = be.empty((CLASSES, 0))
    be.softmax_xent_backward(yhat, labels, 0.5, yhat)
    acc = be.from_host(np.array([3.0]))
    be.nll_sum(yhat, labels, acc)
    be.count_correct(yhat, labels, acc)
    assert acc[0] == 3.0

    # gemm with N = 0 (z1 = W1 x for no samples) and K = 0 (dW = diff a1^T over no samples)
    w, _ = rand(be, (H, 6), 61)
    c = be.empty((H, 0))
    be.gemm(w, be.empty((6, 0)), c)
    dw = be.empty((H, 6))
    be.fill(dw, np.nan)
    be.gemm(z, be.empty((6, 0)), dw, trans_b=True)
    assert (dw == 0).all()
    assert be.sum_squares(z) == 0.0


# ------------------------------------------------------------------ the fused output layer
def _output_layer_problem(be, seed, hidden=6, n=9, w_scale=1.0):
    rng = np.random.default_rng(seed)
    w2 = (w_scale * rng.standard_normal((CLASSES, hidden))).astype(be.dtype)
    b2 = rng.standard_normal(CLASSES).astype(be.dtype)
    a1 = rng.uniform(0, 1, (hidden, n)).astype(be.dtype)
    labs = (np.arange(n) * 7 + 3) % CLASSES  # every class for n >= 10
    return w2, b2, a1, labs


def _output_layer_expected(w2, b2, a1, labs, scale):
    """float64, written out per column: z, the log-sum-exp, diff and the loss sum."""
    w2, b2, a1 = (np.asarray(v, np.float64) for v in (w2, b2, a1))
    diff = np.empty((w2.shape[0], a1.shape[1]))
    loss = 0.0
    for j, lab in enumerate(labs):
        z = w2 @ a1[:, j] + b2
        m = max(z)
        s = sum(math.exp(v - m) for v in z)
        diff[:, j] = [scale * (math.exp(v - m) / s - (i == lab)) for i, v in enumerate(z)]
        loss += math.log(s) + m - z[lab]
    return diff, loss


def test_output_layer(be):
    w2, b2, a1, labs = _output_layer_problem(be, 70, n=13)
    diff = be.empty((CLASSES, 13))
    be.fill(diff, np.nan)
    acc = be.from_host(np.array([1.5]))
    be.output_layer(be.from_host(w2), be.from_host(b2), be.from_host(a1),
                    be.from_host(labs), 1.0 / 13, diff, acc)
    exp_diff, exp_loss = _output_layer_expected(w2, b2, a1, labs, 1.0 / 13)
    close(diff, exp_diff, be.dtype)
    assert acc.dtype == be.dtype
    close(acc, [1.5 + exp_loss], be.dtype)


def test_output_layer_default_composition(be):
    """Backend.output_layer's default (contract ops only) gives the same diff and, on moderate
    logits, the same loss as the fused reference."""
    from core.ops import Backend
    w2, b2, a1, labs = _output_layer_problem(be, 71, n=11)
    args = [be.from_host(v) for v in (w2, b2, a1)] + [be.from_host(labs), 0.25]
    outs = []
    for method in (be.output_layer, lambda *a: Backend.output_layer(be, *a)):
        diff, acc = be.empty((CLASSES, 11)), be.from_host(np.array([2.0]))
        method(*args, diff, acc)
        outs.append((diff, acc))
    close(outs[1][0], np.asarray(outs[0][0], np.float64), be.dtype)
    close(outs[1][1], np.asarray(outs[0][1], np.float64), be.dtype)


def test_output_layer_zero_columns(be):
    diff, acc = be.empty((CLASSES, 0)), be.from_host(np.array([3.0]))
    be.output_layer(be.from_host(np.ones((CLASSES, 4))), be.from_host(np.zeros(CLASSES)),
                    be.empty((4, 0)), be.from_host(np.zeros(0, np.int32)), 0.5, diff, acc)
    assert acc[0] == 3.0


def test_output_layer_loss_is_stable_where_log_softmax_is_not():
    """Logits hundreds apart: in float32, -log(softmax) gives inf for the columns whose label's
    probability underflows (the old loss); the fused op's loss from the logits stays finite and
    matches float64. The op table's large-logit parity case is checked to be such a case too."""
    from op_cases import OP_CASES
    be = NumpyBackend("float32")
    w2, b2, a1, labs = _output_layer_problem(be, 72, hidden=30, n=20, w_scale=40.0)
    W2, B2, A1, L = be.from_host(w2), be.from_host(b2), be.from_host(a1), be.from_host(labs)
    old = be.empty((CLASSES, 20))
    be.gemm(W2, A1, old)
    be.add_bias(old, B2)
    be.softmax(old, old)
    old_acc = be.zeros((1,))
    with np.errstate(divide="ignore"):
        be.nll_sum(old, L, old_acc)
    assert np.isinf(old_acc[0])
    diff, acc = be.empty((CLASSES, 20)), be.zeros((1,))
    be.output_layer(W2, B2, A1, L, 1.0 / 20, diff, acc)
    exp_diff, exp_loss = _output_layer_expected(w2, b2, a1, labs, 1.0 / 20)
    assert np.isfinite(acc[0]) and exp_loss > 1e3
    close(acc, [exp_loss], be.dtype)
    close(diff, exp_diff, be.dtype)

    case = OP_CASES["output_layer"](np.random.default_rng(0), 33, 21, np.dtype("float32"))[1]
    with np.errstate(divide="ignore"):
        z = case["w2"].astype(np.float64) @ case["a1"] + case["b2"][:, None]
        yhat32 = np.exp((z - z.max(axis=0)).astype(np.float32))
        old32 = -np.log((yhat32 / yhat32.sum(axis=0))[case["labels"], np.arange(21)])
    assert np.isinf(old32).any()
    acc = np.zeros(1, np.float32)
    be.output_layer(case["w2"], case["b2"], case["a1"], case["labels"], 0.125,
                    be.empty((CLASSES, 21)), acc)
    assert np.isfinite(acc[0])
