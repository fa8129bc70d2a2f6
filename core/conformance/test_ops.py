"""Every contract op and fused op against the NumPy reference (float64, on the same inputs):
both dtypes, odd shapes, zero columns, every transpose and alpha/beta of gemm, every aliasing the
contract allows, and the precision promise of ``--gemm simt``."""

from __future__ import annotations

import numpy as np
import pytest

from core.conformance.support import (GEMM_SHAPES, SHAPES, TRANSPOSES, as_f64, assert_close,
                                      gemm_k, gemm_scale, rng, rounded, run_both)

ELEMENTWISE_K = 32.0


def _check(got, want, dtype, k=ELEMENTWISE_K, **kw):
    for name in want:
        assert_close(got[name], want[name], dtype, name, k=k, **kw)


# ---------------------------------------------------------------------------- fill
def test_fill_float_and_int32(dpmlp_backend):
    be = dpmlp_backend
    for shape in ((3,), (4, 5), (4, 0), (0,)):
        x = be.empty(shape)
        be.fill(x, 2.5)
        assert np.all(be.to_host(x) == 2.5) and be.to_host(x).shape == shape
    counter = be.empty((6,), np.int32)
    be.fill(counter, 3)
    assert np.array_equal(be.to_host(counter), np.full(6, 3))
    z = be.zeros((2, 3))
    assert np.array_equal(be.to_host(z), np.zeros((2, 3)))


# ---------------------------------------------------------------------------- gemm
@pytest.mark.parametrize("trans", TRANSPOSES, ids=lambda t: f"{'T' if t[0] else 'N'}"
                                                        f"{'T' if t[1] else 'N'}")
@pytest.mark.parametrize("mnk", GEMM_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("alpha, beta", ((1.0, 0.0), (-0.5, 0.0), (0.75, 1.5)))
def test_gemm(dpmlp_backend, dpmlp_reference, trans, mnk, alpha, beta):
    (ta, tb), (m, n, k) = trans, mnk
    g = rng(m * 100 + n * 10 + k)
    a = g.standard_normal((k, m) if ta else (m, k))
    b = g.standard_normal((n, k) if tb else (k, n))
    c = np.full((m, n), np.nan) if beta == 0 else g.standard_normal((m, n))  # beta 0: never read
    got, want = run_both(dpmlp_backend, dpmlp_reference, {"a": a, "b": b}, {"c": c},
                         lambda be, x: be.gemm(x["a"], x["b"], x["c"], alpha, beta, ta, tb))
    dtype = dpmlp_backend.dtype
    scale = gemm_scale(rounded(a, dtype), rounded(b, dtype), rounded(c, dtype), alpha, beta, ta, tb)
    assert_close(got["c"], want["c"], dtype, f"gemm {m}x{n}x{k} {trans}", k=gemm_k(k),
                 scale=scale)


def test_gemm_on_views(dpmlp_backend, dpmlp_reference):
    """Operands and result are column ranges of larger matrices and views of a flat buffer, as
    the trainer passes them (a minibatch's columns of the data set, the gradient buffer)."""
    g = rng(7)
    big_b, big_c = g.standard_normal((20, 40)), g.standard_normal((6, 31))
    a = g.standard_normal((6, 20))
    flat = g.standard_normal(200)

    def call(be, x):
        b = be.cols(x["big_b"], 9, 22)             # 20 x 13, offset 9 columns
        c = be.cols(x["big_c"], 11, 24)            # 6 x 13
        be.gemm(x["a"], b, c)
        (_, w) = be.flat_views(x["flat"], [(7,), (6, 20)])
        (_, out) = be.flat_views(be.cols(x["flat"], 130, 200), [(4,), (6, 11)])
        be.gemm(w, be.cols(x["big_b"], 3, 14), out, 1.0, 1.0)
    got, want = run_both(dpmlp_backend, dpmlp_reference, {"a": a, "big_b": big_b},
                         {"big_c": big_c, "flat": flat}, call)
    _check(got, want, dpmlp_backend.dtype, k=gemm_k(20) * 4)


def test_gemm_simt_is_ieee_not_tf32(dpmlp_backend):
    """--gemm simt promises IEEE arithmetic of the dtype: 1 + 2^-12 is a float32 that TF32 (10
    mantissa bits) and bf16 round to 1, so sums of 16 such products are exact in FP32 only."""
    be = dpmlp_backend
    assert be.gemm_mode == "simt"
    x = 1.0 + 2.0 ** -12
    a = be.from_host(np.full((16, 16), x))
    ones = be.from_host(np.ones((16, 16)))
    c = be.empty((16, 16))
    for ta, tb in TRANSPOSES:
        be.gemm(a, ones, c, trans_a=ta, trans_b=tb)
        got = be.to_host(c)
        assert np.all(got == 16 * x), (f"gemm (trans {ta}, {tb}) of 1 + 2^-12 gave "
                                       f"{got.flat[0]!r}, not {16 * x!r}: not IEEE {be.dtype} "
                                       f"(TF32 or another reduced-precision mode?)")
    out = be.empty((16, 17))
    be.gemm_with_bias_grad(a, ones, out)
    assert np.all(be.to_host(out) == 16 * x), "gemm_with_bias_grad is not IEEE"


# ---------------------------------------------------------------------------- element-wise
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("aliased", (False, True), ids=("out", "in-place"))
def test_bias_sigmoid(dpmlp_backend, dpmlp_reference, shape, aliased):
    g = rng(1)
    z, bias = g.standard_normal(shape) * 4, g.standard_normal(shape[0])
    ins = {"bias": bias} if aliased else {"z": z, "bias": bias}
    outs = {"z": z} if aliased else {"out": np.full(shape, np.nan)}
    got, want = run_both(dpmlp_backend, dpmlp_reference, ins, outs,
                         lambda be, x: be.bias_sigmoid(x["z"], x["bias"],
                                                       x["z"] if aliased else x["out"]))
    _check(got, want, dpmlp_backend.dtype)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_add_bias(dpmlp_backend, dpmlp_reference, shape):
    g = rng(2)
    got, want = run_both(dpmlp_backend, dpmlp_reference, {"b": g.standard_normal(shape[0])},
                         {"z": g.standard_normal(shape)},
                         lambda be, x: be.add_bias(x["z"], x["b"]))
    _check(got, want, dpmlp_backend.dtype)


@pytest.mark.parametrize("shape", SHAPES + ((17,),), ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("aliased", (False, True), ids=("out", "in-place"))
def test_sigmoid(dpmlp_backend, dpmlp_reference, shape, aliased):
    x0 = rng(3).standard_normal(shape) * 10
    ins, outs = ({}, {"x": x0}) if aliased else ({"x": x0}, {"out": np.full(shape, np.nan)})
    got, want = run_both(dpmlp_backend, dpmlp_reference, ins, outs,
                         lambda be, x: be.sigmoid(x["x"], x["x"] if aliased else x["out"]))
    _check(got, want, dpmlp_backend.dtype)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("axis", (0, 1))
@pytest.mark.parametrize("aliased", (False, True), ids=("out", "in-place"))
def test_softmax(dpmlp_backend, dpmlp_reference, shape, axis, aliased):
    """Stable: logits up to +-200 (exp alone would overflow float32)."""
    x0 = rng(4).standard_normal(shape) * 60
    x0.flat[::7] = 200.0
    ins, outs = ({}, {"x": x0}) if aliased else ({"x": x0}, {"out": np.full(shape, np.nan)})
    got, want = run_both(dpmlp_backend, dpmlp_reference, ins, outs,
                         lambda be, x: be.softmax(x["x"], x["x"] if aliased else x["out"], axis))
    _check(got, want, dpmlp_backend.dtype, k=64)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("aliased", (False, True), ids=("out", "in-place"))
def test_sigmoid_backward(dpmlp_backend, dpmlp_reference, shape, aliased):
    g = rng(5)
    grad, a = g.standard_normal(shape), g.uniform(0, 1, shape)
    ins = {"a": a} if aliased else {"grad": grad, "a": a}
    outs = {"grad": grad} if aliased else {"out": np.full(shape, np.nan)}
    got, want = run_both(dpmlp_backend, dpmlp_reference, ins, outs,
                         lambda be, x: be.sigmoid_backward(x["grad"], x["a"],
                                                           x["grad"] if aliased else x["out"]))
    _check(got, want, dpmlp_backend.dtype)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("alpha", (1.0, -0.25))
def test_reduce_cols(dpmlp_backend, dpmlp_reference, shape, alpha):
    x0 = rng(6).standard_normal(shape)
    got, want = run_both(dpmlp_backend, dpmlp_reference, {"x": x0},
                         {"out": np.full(shape[0], np.nan)},
                         lambda be, x: be.reduce_cols(x["x"], x["out"], alpha))
    scale = abs(alpha) * float(np.abs(x0).sum(axis=1).max()) if x0.size else 0.0
    _check(got, want, dpmlp_backend.dtype, k=gemm_k(shape[1]), scale=scale)


def _labels(rows: int, cols: int, seed: int = 8) -> np.ndarray:
    return rng(seed).integers(0, max(rows, 1), cols).astype(np.int32)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("aliased", (False, True), ids=("out", "in-place"))
def test_softmax_xent_backward(dpmlp_backend, dpmlp_reference, shape, aliased):
    yhat = rng(9).uniform(0, 1, shape)
    labels = _labels(*shape)
    ins = {"labels": labels} if aliased else {"yhat": yhat, "labels": labels}
    outs = {"yhat": yhat} if aliased else {"out": np.full(shape, np.nan)}
    got, want = run_both(dpmlp_backend, dpmlp_reference, ins, outs,
                         lambda be, x: be.softmax_xent_backward(
                             x["yhat"], x["labels"], 0.01, x["yhat"] if aliased else x["out"]))
    _check(got, want, dpmlp_backend.dtype)


@pytest.mark.parametrize("shape", SHAPES + ((29,),), ids=lambda s: "x".join(map(str, s)))
def test_axpy(dpmlp_backend, dpmlp_reference, shape):
    g = rng(10)
    got, want = run_both(dpmlp_backend, dpmlp_reference, {"x": g.standard_normal(shape)},
                         {"y": g.standard_normal(shape)},
                         lambda be, x: be.axpy(-0.3, x["x"], x["y"]))
    _check(got, want, dpmlp_backend.dtype)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_nll_sum_adds_to_acc(dpmlp_backend, dpmlp_reference, shape):
    yhat = rng(11).uniform(0.01, 1, shape)
    got, want = run_both(dpmlp_backend, dpmlp_reference,
                         {"yhat": yhat, "labels": _labels(*shape)}, {"acc": np.array([1.5])},
                         lambda be, x: be.nll_sum(x["yhat"], x["labels"], x["acc"]))
    _check(got, want, dpmlp_backend.dtype, k=gemm_k(shape[1]) * 8)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_count_correct_first_maximum(dpmlp_backend, dpmlp_reference, shape):
    """Integer scores with many ties: the first maximum of each column counts."""
    scores = rng(12).integers(0, 3, shape).astype(np.float64)
    labels = _labels(*shape, seed=13)
    labels[: shape[1] // 2] = 0  # many columns whose first maximum may or may not be row 0
    got, want = run_both(dpmlp_backend, dpmlp_reference, {"s": scores, "labels": labels},
                         {"acc": np.array([2.0])},
                         lambda be, x: be.count_correct(x["s"], x["labels"], x["acc"]))
    assert got["acc"][0] == want["acc"][0], (got["acc"], want["acc"])


@pytest.mark.parametrize("shape", ((0,), (1,), (1000,), (7, 9), (5, 0)))
def test_sum_squares(dpmlp_backend, shape):
    be = dpmlp_backend
    x = rounded(rng(14).standard_normal(shape), be.dtype)
    got = be.sum_squares(be.from_host(x))
    assert isinstance(got, float)
    want = float(np.sum(x * x))
    assert abs(got - want) <= 8 * (x.size + 4) * (np.finfo(be.dtype).eps / 2) * max(want, 1e-300)


# ---------------------------------------------------------------------------- fused ops
def test_sgd_step(dpmlp_backend, dpmlp_reference):
    g = rng(15)
    got, want = run_both(dpmlp_backend, dpmlp_reference, {},
                         {"p": g.standard_normal(47), "g": g.standard_normal(47)},
                         lambda be, x: be.sgd_step(x["p"], x["g"], 0.1, 0.01, [(0, 10), (20, 31)]))
    _check(got, want, dpmlp_backend.dtype)


@pytest.mark.parametrize("mnk", ((7, 5, 3), (33, 0, 9), (16, 9, 130)), ids=str)
def test_gemm_bias_sigmoid(dpmlp_backend, dpmlp_reference, mnk):
    m, n, k = mnk
    g = rng(16)
    got, want = run_both(dpmlp_backend, dpmlp_reference,
                         {"a": g.standard_normal((m, k)), "b": g.standard_normal((k, n)),
                          "bias": g.standard_normal(m)}, {"out": np.full((m, n), np.nan)},
                         lambda be, x: be.gemm_bias_sigmoid(x["a"], x["b"], x["bias"], x["out"]))
    _check(got, want, dpmlp_backend.dtype, k=gemm_k(k) * 4, scale=1.0)


@pytest.mark.parametrize("mnk", ((7, 5, 3), (33, 0, 9), (16, 9, 10)), ids=str)
def test_gemm_sigmoid_backward(dpmlp_backend, dpmlp_reference, mnk):
    m, n, k = mnk
    g = rng(17)
    a, b = g.standard_normal((k, m)), g.standard_normal((k, n))
    got, want = run_both(dpmlp_backend, dpmlp_reference,
                         {"a": a, "b": b, "act": g.uniform(0, 1, (m, n))},
                         {"out": np.full((m, n), np.nan)},
                         lambda be, x: be.gemm_sigmoid_backward(x["a"], x["b"], x["act"], x["out"]))
    scale = gemm_scale(a, b, None, 0.25, 0, True, False)
    _check(got, want, dpmlp_backend.dtype, k=gemm_k(k) * 4, scale=scale)


@pytest.mark.parametrize("mnk", ((7, 5, 3), (10, 17, 0), (16, 9, 130), (3, 4, 1)), ids=str)
def test_gemm_with_bias_grad(dpmlp_backend, dpmlp_reference, mnk):
    """out[:, :N] = a b^T, out[:, N] = row sums of a; K = 0 gives zeros."""
    m, n, k = mnk
    g = rng(18)
    a, b = g.standard_normal((m, k)), g.standard_normal((n, k))
    got, want = run_both(dpmlp_backend, dpmlp_reference, {"a": a, "b": b},
                         {"out": np.full((m, n + 1), np.nan)},
                         lambda be, x: be.gemm_with_bias_grad(x["a"], x["b"], x["out"]))
    scale = max(gemm_scale(a, b, None, 1, 0, False, True), float(np.abs(a).sum(axis=1).max(initial=0)))
    _check(got, want, dpmlp_backend.dtype, k=gemm_k(k) * 4, scale=scale)
    if k == 0:
        assert np.all(got["out"] == 0)


@pytest.mark.parametrize("hidden_n", ((7, 5), (33, 17), (16, 0)), ids=str)
def test_output_backward(dpmlp_backend, dpmlp_reference, hidden_n):
    """[dW2 db2] = diff [a1^T 1] and dz1 = (w2^T diff) a1 (1 - a1); zero columns: zeros."""
    hidden, n = hidden_n
    g = rng(20)
    w2, diff = g.standard_normal((10, hidden)), g.standard_normal((10, n))
    a1 = g.uniform(0, 1, (hidden, n))
    got, want = run_both(dpmlp_backend, dpmlp_reference, {"w2": w2, "diff": diff, "a1": a1},
                         {"dw2b2": np.full((10, hidden + 1), np.nan),
                          "dz1": np.full((hidden, n), np.nan)},
                         lambda be, x: be.output_backward(x["w2"], x["diff"], x["a1"],
                                                          x["dw2b2"], x["dz1"]))
    k, dtype = gemm_k(max(n, 10)) * 4, dpmlp_backend.dtype
    assert_close(got["dw2b2"], want["dw2b2"], dtype, "dw2b2", k=k,
                 scale=max(gemm_scale(diff, a1, None, 1, 0, False, True),
                           float(np.abs(diff).sum(axis=1).max(initial=0))))
    assert_close(got["dz1"], want["dz1"], dtype, "dz1", k=k,
                 scale=gemm_scale(w2, diff, None, 0.25, 0, True, False))
    if n == 0:
        assert np.all(got["dw2b2"] == 0)


def _output_layer(be, x):
    be.output_layer(x["w2"], x["b2"], x["a1"], x["labels"], 0.02, x["diff"], x["nll"])


@pytest.mark.parametrize("n", (1, 13, 0))
def test_output_layer(dpmlp_backend, dpmlp_reference, n):
    g = rng(19)
    hidden = 21
    ins = {"w2": g.standard_normal((10, hidden)), "b2": g.standard_normal(10),
           "a1": g.uniform(0, 1, (hidden, n)), "labels": _labels(10, n)}
    diff0 = np.full((10, n), 7.0)
    got, want = run_both(dpmlp_backend, dpmlp_reference, ins,
                         {"diff": diff0, "nll": np.array([0.5])}, _output_layer)
    dtype = dpmlp_backend.dtype
    assert_close(got["diff"], want["diff"], dtype, "diff", k=gemm_k(hidden) * 8, scale=0.02)
    assert_close(got["nll"], want["nll"], dtype, "nll", k=gemm_k(hidden) * 8 * (n + 1),
                 scale=max(float(want["nll"][0]), 1.0))
    if n == 0:
        assert np.all(got["diff"] == 7.0) and got["nll"][0] == 0.5


def test_output_layer_loss_is_finite_for_extreme_logits(dpmlp_backend, dpmlp_reference):
    """Logits 1000 apart: every probability but one underflows; the loss must stay finite
    (and positive), the gradient must match."""
    hidden, n = 4, 6
    w2 = np.zeros((10, hidden))
    w2[np.arange(10), np.arange(10) % hidden] = np.linspace(-500, 500, 10)
    ins = {"w2": w2, "b2": np.zeros(10), "a1": np.ones((hidden, n)),
           "labels": np.array([0, 1, 2, 3, 4, 9], np.int32)}
    got, want = run_both(dpmlp_backend, dpmlp_reference, ins,
                         {"diff": np.zeros((10, n)), "nll": np.array([0.0])}, _output_layer)
    assert np.isfinite(got["nll"][0]) and got["nll"][0] > 0, got["nll"]
    assert_close(got["diff"], want["diff"], dpmlp_backend.dtype, "diff", k=64, scale=0.02)


def test_ops_accept_zero_columns_everywhere(dpmlp_backend):
    """A rank without samples calls every op on zero columns: nothing fails, nothing changes."""
    be = dpmlp_backend
    z, out = be.empty((5, 0)), be.empty((5, 0))
    bias, acc = be.zeros((5,)), be.zeros((1,))
    labels = be.from_host(np.zeros(0, np.int32))
    be.bias_sigmoid(z, bias, out)
    be.add_bias(z, bias)
    be.sigmoid(z, out)
    be.softmax(z, out, 0)
    be.softmax(z, out, 1)
    be.sigmoid_backward(z, z, out)
    be.softmax_xent_backward(z, labels, 1.0, out)
    be.axpy(1.0, z, out)
    be.nll_sum(z, labels, acc)
    be.count_correct(z, labels, acc)
    red = be.empty((5,))
    be.reduce_cols(z, red)
    assert np.all(as_f64(be, red) == 0) and as_f64(be, acc)[0] == 0
