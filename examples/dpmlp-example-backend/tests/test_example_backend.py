"""Every op of the example backend against dpmlp's NumPy reference (backends.ops_numpy), in float32
and float64, on the same inputs: odd shapes, all four GEMM transposes, zero columns, column views,
in-place aliasing where the contract allows it. Then the plugin's registration: the entry point
is found by dpmlp, with this package's name, and the backend is never dpmlp's default.

Run from a dpmlp checkout, with this package installed (or on PYTHONPATH):

    python -m pytest examples/dpmlp-example-backend/tests
"""

from __future__ import annotations

import numpy as np
import pytest

from backends.ops_numpy import NumpyBackend
from dpmlp_example.ops_example import ExampleBackend

#: Element by element, (rtol, atol) against the reference in the same dtype: both compute the same
#: formula; in float32 the reference also rounds its intermediate results, the example does not.
TOL = {"float64": dict(rtol=1e-12, atol=1e-13), "float32": dict(rtol=2e-5, atol=2e-6)}
#: Sums of many terms (GEMM) are compared by dpmlp's measure, the relative max-norm error
#: max|got - ref| / max|ref|: an element that cancels to near zero has no meaningful relative error.
SUM_TOL = {"float64": 1e-12, "float32": 1e-5}
DTYPES = sorted(TOL)
TRANSPOSES = [(False, False), (False, True), (True, False), (True, True)]
SHAPES = [(10, 1), (7, 33), (100, 13), (3, 0)]  # (rows, cols); 0 columns: a rank with no samples


@pytest.fixture(params=DTYPES)
def pair(request):
    """(example, reference) backends of one dtype."""
    return ExampleBackend(request.param), NumpyBackend(request.param)


def rand(shape, dtype, seed, lo=-2.0, hi=2.0):
    host = np.random.default_rng(seed).uniform(lo, hi, size=shape)
    return np.asfortranarray(host).astype(dtype, order="F")


def labels_for(rows, cols, seed):
    return np.random.default_rng(seed).integers(0, rows, cols).astype(np.int32)


def same(got, expected, dtype):
    assert got.shape == expected.shape and got.dtype == expected.dtype
    np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(expected, np.float64),
                               **TOL[str(dtype)])


def same_sum(got, expected, dtype):
    assert got.shape == expected.shape and got.dtype == expected.dtype
    if expected.size == 0:
        return
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    scale = np.max(np.abs(expected))
    err = np.max(np.abs(got - expected)) / (scale if scale > 0 else 1.0)
    assert err <= SUM_TOL[str(dtype)], f"relative max-norm error {err:.3e} ({dtype})"


def both(pair, op, *host_args):
    """Run ``op(backend, *arrays)`` on each backend with its own copies; return both copies."""
    results = []
    for be in pair:
        arrays = [be.from_host(a) if isinstance(a, np.ndarray) else a for a in host_args]
        op(be, *arrays)
        results.append(arrays)
    return results


# ------------------------------------------------------------------ what a backend declares
def test_declarations():
    ok, reason = ExampleBackend.availability()
    assert ok is True and "numpy" in reason
    assert ExampleBackend.name == "example"
    assert ExampleBackend.priority is None  # never the default backend
    assert ExampleBackend.host_resident is True
    assert ExampleBackend.device_count() == 0
    assert not getattr(ExampleBackend, "__abstractmethods__", None)  # every op implemented
    with pytest.raises(ValueError):
        ExampleBackend("float16")


# ------------------------------------------------------------------ memory and transfers
def test_memory_and_transfers(pair):
    ex, ref = pair
    host = np.arange(12, dtype=np.float64).reshape(3, 4)  # C order on purpose
    for be in pair:
        arr = be.from_host(host)
        assert arr.dtype == ex.dtype and arr.flags.f_contiguous
        np.testing.assert_array_equal(arr, host)
        host_back = be.to_host(arr)
        assert host_back.flags.f_contiguous and not np.shares_memory(host_back, arr)
        e = be.empty((3, 5))
        assert e.shape == (3, 5) and e.dtype == be.dtype and e.flags.f_contiguous
        assert not be.zeros((2, 3)).any()
        assert be.from_host(np.array([1, 2], np.uint8)).dtype == np.int32
        assert be.zeros((4,), np.int32).dtype == np.int32

    flat = ex.from_host(np.arange(20.0))
    staging = ex.host_buffer(20)
    assert staging.shape == (20,) and staging.dtype == ex.dtype
    ex.copy_to_host(ex.cols(flat, 4, 12), staging[4:12])
    np.testing.assert_array_equal(staging[4:12], np.arange(4.0, 12.0))
    ex.copy_from_host(-np.arange(4.0).astype(ex.dtype), ex.cols(flat, 10, 14))
    np.testing.assert_array_equal(flat[10:14], -np.arange(4.0))


def test_flat_views_and_cols_match_the_reference(pair):
    shapes = [(4, 3), (4,), (2, 4), (2,)]
    host = np.arange(26.0)
    views = [be.flat_views(be.from_host(host), shapes) for be in pair]
    for got, expected in zip(*views):
        np.testing.assert_array_equal(got, expected)
    ex = pair[0]
    flat = ex.from_host(host)
    w = ex.flat_views(flat, shapes)[0]
    w[0, 0] = 99.0  # views, not copies
    assert flat[0] == 99.0
    m = ex.from_host(np.arange(12.0).reshape(3, 4))
    c = ex.cols(m, 1, 3)
    assert c.shape == (3, 2) and np.shares_memory(c, m)
    assert ex.cols(ex.from_host(np.arange(5.0)), 2, 4).tolist() == [2.0, 3.0]


# ------------------------------------------------------------------ GEMM
@pytest.mark.parametrize("trans_a,trans_b", TRANSPOSES, ids=["nn", "nt", "tn", "tt"])
@pytest.mark.parametrize("mnk", [(1, 1, 1), (7, 33, 100), (33, 7, 300), (10, 13, 784),
                                 (5, 4, 0), (5, 0, 7)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("alpha,beta", [(1.0, 0.0), (0.75, -1.25)])
def test_gemm(pair, mnk, trans_a, trans_b, alpha, beta):
    m, n, k = mnk
    dt = pair[0].dtype
    a = rand((k, m) if trans_a else (m, k), dt, 1)
    b = rand((n, k) if trans_b else (k, n), dt, 2)
    c = rand((m, n), dt, 3)
    if beta == 0.0:
        c[...] = np.nan  # never read with beta = 0
    (_, _, got), (_, _, expected) = both(
        pair, lambda be, a, b, c: be.gemm(a, b, c, alpha, beta, trans_a, trans_b), a, b, c)
    assert np.all(np.isfinite(got))
    same_sum(got, expected, dt)


def test_gemm_blocks_smaller_than_k(pair):
    """K spans several blocks and ends in a partial one."""
    ex, ref = pair
    ex.block_k = 16
    a, b = rand((9, 50), ex.dtype, 4), rand((50, 6), ex.dtype, 5)
    (_, _, got), (_, _, expected) = both(pair, lambda be, a, b, c: be.gemm(a, b, c),
                                         a, b, np.zeros((9, 6), ex.dtype))
    same_sum(got, expected, ex.dtype)


def test_gemm_float32_rounds_once():
    """In float32 the example's product is the float64 product rounded once: within half an ulp
    of it, element by element (the reference, accumulating in float32, need not be)."""
    ex = ExampleBackend("float32")
    a, b = rand((20, 784), np.float32, 6), rand((784, 30), np.float32, 7)
    c = ex.empty((20, 30))
    ex.gemm(ex.from_host(a), ex.from_host(b), c)
    exact = a.astype(np.float64) @ b.astype(np.float64)
    assert np.all(np.abs(c - exact) <= 0.5 * np.spacing(np.abs(exact).astype(np.float32)) + 1e-30)


def test_gemm_on_column_views(pair):
    """A, B and C are column slices of wider matrices, as a rank's slice of a minibatch is."""
    dt = pair[0].dtype
    a, b, c = rand((8, 20), dt, 8), rand((12, 9), dt, 9), rand((8, 11), dt, 10)
    (_, _, got), (_, _, expected) = both(
        pair, lambda be, a, b, c: be.gemm(be.cols(a, 3, 15), be.cols(b, 2, 7), be.cols(c, 4, 9),
                                          0.5, 2.0), a, b, c)
    same_sum(got, expected, dt)
    np.testing.assert_array_equal(got[:, :4], c[:, :4])


# ------------------------------------------------------------------ element-wise ops
ELEMENTWISE = {
    "bias_sigmoid": lambda be, z, bias, grad, a, lab, out: be.bias_sigmoid(z, bias, out),
    "sigmoid": lambda be, z, bias, grad, a, lab, out: be.sigmoid(z, out),
    "softmax_cols": lambda be, z, bias, grad, a, lab, out: be.softmax(z, out, 0),
    "softmax_rows": lambda be, z, bias, grad, a, lab, out: be.softmax(z, out, 1),
    "sigmoid_backward": lambda be, z, bias, grad, a, lab, out: be.sigmoid_backward(grad, a, out),
    "softmax_xent_backward":
        lambda be, z, bias, grad, a, lab, out: be.softmax_xent_backward(a, lab, 0.125, out),
    "add_bias": lambda be, z, bias, grad, a, lab, out: (be.add_bias(z, bias),
                                                        be.axpy(1.0, z, out)),
    "axpy": lambda be, z, bias, grad, a, lab, out: be.axpy(-0.37, z, out),
}


@pytest.mark.parametrize("op", sorted(ELEMENTWISE))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_elementwise(pair, op, shape):
    rows, cols = shape
    dt = pair[0].dtype
    inputs = (rand(shape, dt, 11, -6, 6), rand((rows,), dt, 12), rand(shape, dt, 13),
              rand(shape, dt, 14, 0, 1), labels_for(rows, cols, 15), np.zeros(shape, dt))
    got, expected = both(pair, ELEMENTWISE[op], *inputs)
    same(got[-1], expected[-1], dt)
    same(got[0], expected[0], dt)  # add_bias works in place on z


@pytest.mark.parametrize("op", ["bias_sigmoid", "sigmoid", "softmax", "sigmoid_backward", "xent"])
def test_out_may_alias_the_input(pair, op):
    dt = pair[0].dtype
    x, bias, a = rand((10, 7), dt, 16), rand((10,), dt, 17), rand((10, 7), dt, 18, 0, 1)
    labels = labels_for(10, 7, 19)
    run = {
        "bias_sigmoid": lambda be, x, bias, a, lab: be.bias_sigmoid(x, bias, x),
        "sigmoid": lambda be, x, bias, a, lab: be.sigmoid(x, x),
        "softmax": lambda be, x, bias, a, lab: be.softmax(x, x, 0),
        "sigmoid_backward": lambda be, x, bias, a, lab: be.sigmoid_backward(x, a, x),
        "xent": lambda be, x, bias, a, lab: be.softmax_xent_backward(x, lab, 0.5, x),
    }[op]
    (got, *_), (expected, *_) = both(pair, run, x, bias, a, labels)
    same(got, expected, dt)


def test_fill(pair):
    for be in pair:
        x = be.empty((3, 4))
        be.fill(x, 2.5)
        assert (x == 2.5).all()
        lab = be.zeros((5,), np.int32)
        be.fill(lab, 7)
        assert (lab == 7).all() and lab.dtype == np.int32


# ------------------------------------------------------------------ reductions
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_reductions(pair, shape):
    rows, cols = shape
    dt = pair[0].dtype
    x, labels = rand(shape, dt, 20), labels_for(rows, cols, 21)
    yhat = np.empty(shape, dt, order="F")
    NumpyBackend(dt.name).softmax(x, yhat, 0)

    (_, out), (_, out_ref) = both(pair, lambda be, x, out: be.reduce_cols(x, out, 0.37),
                                  x, np.full(rows, np.nan, dt))  # 0 columns must write zeros
    same(out, out_ref, dt)

    (_, _, acc), (_, _, acc_ref) = both(pair, lambda be, y, lab, acc: be.nll_sum(y, lab, acc),
                                        yhat, labels, np.array([1.5], dt))
    same(acc, acc_ref, dt)

    (_, _, cnt), (_, _, cnt_ref) = both(pair, lambda be, s, lab, c: be.count_correct(s, lab, c),
                                        x, labels, np.array([2.0], dt))
    np.testing.assert_array_equal(cnt, cnt_ref)

    ex, ref = pair
    ss = ex.sum_squares(ex.from_host(x))
    assert type(ss) is float
    np.testing.assert_allclose(ss, ref.sum_squares(ref.from_host(x)), **TOL[dt.name])


def test_count_correct_first_maximum_on_ties(pair):
    dt = pair[0].dtype
    scores = np.array([[1, 3, 0], [3, 3, 0], [0, 1, 0]], dt)  # argmax per column: 1, 0, 0
    for labels, hits in [([1, 0, 0], 3), ([1, 1, 2], 1)]:
        (_, _, got), (_, _, expected) = both(
            pair, lambda be, s, lab, c: be.count_correct(s, lab, c),
            scores, np.array(labels, np.int32), np.zeros(1, dt))
        assert got[0] == expected[0] == hits


# ------------------------------------------------------------------ the plugin, through dpmlp
def test_found_through_the_entry_point_and_never_the_default():
    """Needs this package installed (its dist-info on sys.path), as an author's users have it."""
    from core.plugins import Registry

    registry = Registry.load()
    entries = {e.name: e for e in registry.backends()}
    if "example" not in entries:
        pytest.skip("dpmlp-example-backend is not installed (only on PYTHONPATH): no entry point")
    entry = entries["example"]
    assert entry.cls is ExampleBackend and entry.available
    assert entry.package == "dpmlp-example-backend" and entry.plugin == "example"
    assert registry.backend("example").cls is ExampleBackend
    assert registry.backend(None).name != "example"
