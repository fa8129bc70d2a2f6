"""The inputs of the op-table parity tests: for each op of backends/op_table.py, the cases its
kernels are checked on (tests/test_kernel_parity.py against the NumPy reference on every GPU
backend, tests/test_op_table.py through the recorded dispatch, and the tests of the fused GEMMs,
the exact ops and TF32x3).

``OP_CASES[name](rng, rows, cols, dtype)`` -> a list of ``{parameter: value}``: host arrays
(column-major) and scalars, named as the op's parameters. Outputs start as NaN so that an element
the op fails to write shows up; accumulators start non-zero so that "+=" is checked, not "=".

A helper module, not a test module (the test modules import it, never one another).
"""

from __future__ import annotations

import math

import numpy as np

from backends.op_table import OUTPUT_MAX_CLASSES


def _normal(rng, shape, dtype, scale=1.0):
    return np.asfortranarray(scale * rng.standard_normal(shape)).astype(dtype, order="F")


def _unit(rng, shape, dtype):
    return np.asfortranarray(rng.uniform(0.0, 1.0, shape)).astype(dtype, order="F")


def _nan(shape, dtype):
    return np.full(shape, np.nan, dtype=dtype, order="F")


def _labels(rng, rows, cols):
    return rng.integers(0, rows, cols).astype(np.int32)


def _softmax_columns(x):
    e = np.exp(x - x.max(axis=0, keepdims=True))
    return np.asfortranarray(e / e.sum(axis=0, keepdims=True)).astype(x.dtype, order="F")


def fill_cases(rng, rows, cols, dtype):
    return [{"arr": _normal(rng, (rows, cols), dtype), "value": 2.5},
            {"arr": _labels(rng, max(rows, 1), rows * cols), "value": 7}]


def gemm_cases(rng, rows, cols, dtype):
    m, n, k = rows, cols, 33
    cases = []
    for trans_a in (False, True):
        for trans_b in (False, True):
            cases.append({"a": _normal(rng, (k, m) if trans_a else (m, k), dtype),
                          "b": _normal(rng, (n, k) if trans_b else (k, n), dtype),
                          "c": _normal(rng, (m, n), dtype), "alpha": 0.75, "beta": -1.25,
                          "trans_a": trans_a, "trans_b": trans_b})
    cases.append({"a": _normal(rng, (m, k), dtype), "b": _normal(rng, (k, n), dtype),
                  "c": _nan((m, n), dtype), "alpha": 1.0, "beta": 0.0,  # C is never read
                  "trans_a": False, "trans_b": False})
    return cases


#: K of the fused GEMMs' cases: none, short (da1's K = 10: t64's short-K configuration) and deep
#: (past T64_DEEP_K = 256: t64's deep configuration in float)
_FUSED_GEMM_KS = (0, 10, 300)


def _fused_scale(k):
    """Inputs scaled so that the products are about N(0, 9): the sigmoid is neither flat nor 0/1."""
    return 3.0 / math.sqrt(max(k, 1))


def gemm_bias_sigmoid_cases(rng, rows, cols, dtype):
    m, n = rows, cols
    return [{"a": _normal(rng, (m, k), dtype), "b": _normal(rng, (k, n), dtype, _fused_scale(k)),
             "bias": _normal(rng, (m,), dtype), "out": _nan((m, n), dtype)}
            for k in _FUSED_GEMM_KS]


def gemm_sigmoid_backward_cases(rng, rows, cols, dtype):
    m, n = rows, cols
    return [{"a": _normal(rng, (k, m), dtype), "b": _normal(rng, (k, n), dtype),
             "act": _unit(rng, (m, n), dtype), "out": _nan((m, n), dtype)}
            for k in _FUSED_GEMM_KS]


def gemm_with_bias_grad_cases(rng, rows, cols, dtype):
    """out is rows x (cols + 1): cols = 0 leaves only the bias column."""
    m, n = rows, cols
    return [{"a": _normal(rng, (m, k), dtype), "b": _normal(rng, (n, k), dtype),
             "out": _nan((m, n + 1), dtype)}
            for k in _FUSED_GEMM_KS]


def bias_sigmoid_cases(rng, rows, cols, dtype):
    return [{"z": _normal(rng, (rows, cols), dtype, 3.0), "bias": _normal(rng, (rows,), dtype),
             "out": _nan((rows, cols), dtype)}]


def add_bias_cases(rng, rows, cols, dtype):
    return [{"z": _normal(rng, (rows, cols), dtype, 3.0), "bias": _normal(rng, (rows,), dtype)}]


def sigmoid_cases(rng, rows, cols, dtype):
    return [{"x": _normal(rng, (rows, cols), dtype, 3.0), "out": _nan((rows, cols), dtype)}]


def softmax_cases(rng, rows, cols, dtype):
    return [{"x": _normal(rng, (rows, cols), dtype, 3.0), "out": _nan((rows, cols), dtype),
             "axis": axis} for axis in (0, 1)]


def sigmoid_backward_cases(rng, rows, cols, dtype):
    return [{"grad": _normal(rng, (rows, cols), dtype), "a": _unit(rng, (rows, cols), dtype),
             "out": _nan((rows, cols), dtype)}]


def reduce_cols_cases(rng, rows, cols, dtype):
    return [{"x": _normal(rng, (rows, cols), dtype), "out": _nan((rows,), dtype), "alpha": 0.37}]


def xent_cases(rng, rows, cols, dtype):
    return [{"yhat": _unit(rng, (rows, cols), dtype), "labels": _labels(rng, rows, cols),
             "scale": 0.125, "out": _nan((rows, cols), dtype)}]


def axpy_cases(rng, rows, cols, dtype):
    return [{"alpha": -0.37, "x": _normal(rng, (rows, cols), dtype, 3.0),
             "y": _normal(rng, (rows, cols), dtype)}]


def sgd_cases(rng, rows, cols, dtype):
    n = rows * cols
    params, grads = _normal(rng, (rows, cols), dtype), _normal(rng, (rows, cols), dtype, 3.0)
    return [{"params": params, "grads": grads, "lr": 0.3, "reg": 0.1,
             "reg_ranges": ((0, n // 3), (n // 2, n))},
            {"params": params, "grads": grads, "lr": 0.7, "reg": 0.0, "reg_ranges": ()}]


def nll_cases(rng, rows, cols, dtype):
    return [{"yhat": _softmax_columns(_normal(rng, (rows, cols), dtype)),
             "labels": _labels(rng, rows, cols), "acc": np.array([1.5], dtype)}]


def output_layer_cases(rng, rows, cols, dtype):
    """rows = hidden units, cols = samples. (1) The model's regime: 10 classes, w2 ~ N(0, 1/H),
    a1 in (0, 1) like sigmoid outputs, logits O(1). (2) Large logits with every label: integer
    w2 (multiples of 4), a1 in quarters and integer biases 64 apart, so every logit is an exact
    integer in any summation order (|z| < 2^24) and only exp/log round; logits hundreds apart,
    where -log(softmax) is inf in float32 (tests/test_numpy_ops.py checks that it is). (3) Three
    classes, labels at every class. Outputs start as NaN, the accumulator at 1.5."""
    hidden, n = rows, cols
    every = (np.arange(n) % 10).astype(np.int32)
    quarters = np.asfortranarray(rng.integers(0, 5, (hidden, n)) / 4.0).astype(dtype, order="F")
    return [
        {"w2": _normal(rng, (10, hidden), dtype, 1.0 / math.sqrt(max(hidden, 1))),
         "b2": _normal(rng, (10,), dtype), "a1": _unit(rng, (hidden, n), dtype),
         "labels": _labels(rng, 10, n), "scale": 1.0 / 3.0, "diff": _nan((10, n), dtype),
         "nll_acc": np.array([1.5], dtype)},
        {"w2": np.asfortranarray(4 * rng.integers(-4, 5, (10, hidden))).astype(dtype, order="F"),
         "b2": (64.0 * np.arange(10) - 288.0).astype(dtype), "a1": quarters, "labels": every,
         "scale": 0.125, "diff": _nan((10, n), dtype), "nll_acc": np.array([1.5], dtype)},
        {"w2": _normal(rng, (3, hidden), dtype, 2.0 / math.sqrt(max(hidden, 1))),
         "b2": _normal(rng, (3,), dtype), "a1": _unit(rng, (hidden, n), dtype),
         "labels": every % 3, "scale": 0.5, "diff": _nan((3, n), dtype),
         "nll_acc": np.array([-2.0], dtype)},
    ]


def output_backward_cases(rng, rows, cols, dtype):
    """rows = hidden units, cols = samples: (1) the model's regime, 10 classes, diff a softmax's
    error (columns summing to 0, O(1/n)), a1 in (0, 1); (2) three classes, diff and w2 N(0, 1).
    Outputs start as NaN."""
    hidden, n = rows, cols
    yhat = _softmax_columns(_normal(rng, (10, n), dtype))
    onehot = np.zeros((10, n), dtype, order="F")
    onehot[_labels(rng, 10, n), np.arange(n)] = 1
    diff = np.asfortranarray((yhat - onehot) / max(n, 1)).astype(dtype, order="F")
    return [
        {"w2": _normal(rng, (10, hidden), dtype, 1.0 / math.sqrt(max(hidden, 1))), "diff": diff,
         "a1": _unit(rng, (hidden, n), dtype), "dw2b2": _nan((10, hidden + 1), dtype),
         "dz1": _nan((hidden, n), dtype)},
        {"w2": _normal(rng, (3, hidden), dtype), "diff": _normal(rng, (3, n), dtype),
         "a1": _unit(rng, (hidden, n), dtype), "dw2b2": _nan((3, hidden + 1), dtype),
         "dz1": _nan((hidden, n), dtype)},
    ]


#: values that exact_math must get right too (the parity of the special cases)
_SPECIALS = (0.0, -0.0, np.inf, -np.inf, np.nan, 1e300, -1e300, 745.5, -745.5, 709.9, -709.9,
             5e-324, -1e-310, 36.7, -36.7, 1.0)


def _with_specials(x):
    if x.size:
        flat = x.reshape(-1, order="F")
        k = min(flat.size, len(_SPECIALS))
        with np.errstate(over="ignore"):  # 1e300 is inf in float32
            flat[:k] = np.array(_SPECIALS[:k], dtype=x.dtype)
    return x


def exact_row_exponents_cases(rng, rows, cols, dtype):
    x = _normal(rng, (rows, cols), dtype) * np.exp2(rng.integers(-20, 20, (rows, 1))).astype(dtype)
    x = np.asfortranarray(x)
    if rows > 2 and cols:
        x[1, :] = 0.0          # a zero row
        x[2, 0] = np.inf       # a row holding inf
    return [{"x": x, "trans": False, "out": _nan((rows,), dtype)},
            {"x": x, "trans": True, "out": _nan((cols,), dtype)}]


def exact_split_cases(rng, rows, cols, dtype):
    """Rows on their own grid (exact_row_exponents of x), the ones row / column, reversed slices,
    a transposed operand, and one case with values off the grid (the flag)."""
    x = np.asfortranarray(_normal(rng, (rows, cols), dtype)
                          * np.exp2(rng.integers(-20, 20, (rows, 1))).astype(dtype))
    big = np.abs(x).max(axis=1) if cols else np.zeros(rows)
    exps = np.frexp(big)[1].astype(dtype)
    cases = []
    for ones_row, ones_col, reverse, slices, beta in ((False, False, False, 3, 20),
                                                       (True, True, True, 4, 13),
                                                       (False, True, False, 2, 26)):
        p, q = rows + ones_row, cols + ones_col
        e = np.concatenate([exps, [1.0]]).astype(dtype) if ones_row else exps
        cases.append({"x": x, "trans": False, "ones_row": ones_row, "ones_col": ones_col,
                      "exps": e, "exp_shift": 0, "beta": beta, "slices": slices,
                      "reverse": reverse, "out": _nan((p, slices * q), dtype),
                      "flag": np.zeros(1, dtype)})
    xt = np.asfortranarray(x.T)
    cases.append({"x": xt, "trans": True, "ones_row": False, "ones_col": True, "exps": exps,
                  "exp_shift": 1, "beta": 20, "slices": 3, "reverse": True,
                  "out": _nan((rows, 3 * (cols + 1)), dtype), "flag": np.zeros(1, dtype)})
    off = _with_specials(x.copy(order="F"))  # inf, nan, 1e300 off the grid: the flag
    cases.append({"x": off, "trans": False, "ones_row": False, "ones_col": False, "exps": exps,
                  "exp_shift": -2, "beta": 20, "slices": 3, "reverse": False,
                  "out": _nan((rows, 3 * cols), dtype), "flag": np.zeros(1, dtype)})
    return cases


def exact_combine_cases(rng, rows, cols, dtype):
    m, n = rows, cols
    cases = []
    for count, beta in ((3, 20), (4, 13), (1, 24)):
        groups = rng.integers(-2**52, 2**52, (m, count * n)).astype(dtype)
        cases.append({"groups": np.asfortranarray(groups),
                      "row_exps": rng.integers(-30, 30, m).astype(dtype), "row_shift": -3,
                      "col_exps": rng.integers(-30, 30, n).astype(dtype), "col_shift": 2,
                      "beta": beta, "out": _nan((m, n), dtype)})
    tiny = np.asfortranarray(rng.integers(-2**20, 2**20, (m, 2 * n)).astype(dtype))
    cases.append({"groups": tiny, "row_exps": np.full(m, -1000.0, dtype), "row_shift": 0,
                  "col_exps": np.full(n, -40.0, dtype), "col_shift": 0, "beta": 20,
                  "out": _nan((m, n), dtype)})  # results in the subnormals
    return cases


def exact_sigmoid_cases(rng, rows, cols, dtype):
    return [{"x": _with_specials(_normal(rng, (rows, cols), dtype, 8.0)),
             "out": _nan((rows, cols), dtype)}]


def exact_output_layer_cases(rng, rows, cols, dtype):
    """rows x cols logits (rows <= 10 classes): O(1), large (hundreds apart) and tied."""
    classes = min(max(rows, 1), OUTPUT_MAX_CLASSES)
    n = cols
    labels = (np.arange(n) % classes).astype(np.int32)
    ties = np.asfortranarray(np.round(_normal(rng, (classes, n), dtype, 2.0)))
    return [{"z": _normal(rng, (classes, n), dtype, s), "labels": labels, "scale": 1.0 / 3.0,
             "diff": _nan((classes, n), dtype), "nll_acc": np.array([1.5], dtype)}
            for s in (1.0, 300.0)] + [
            {"z": ties, "labels": labels, "scale": 0.125, "diff": _nan((classes, n), dtype),
             "nll_acc": np.array([-2.0], dtype)}]


def count_correct_cases(rng, rows, cols, dtype):
    return [{"scores": _normal(rng, (rows, cols), dtype), "labels": _labels(rng, rows, cols),
             "acc": np.array([2.0], dtype)}]


def sum_squares_cases(rng, rows, cols, dtype):
    return [{"x": _normal(rng, (rows, cols), dtype)}]


#: op name -> its cases, for every op of op_table.OPS (backends/op_table.py)
OP_CASES = {
    "fill": fill_cases,
    "gemm": gemm_cases,
    "bias_sigmoid": bias_sigmoid_cases,
    "add_bias": add_bias_cases,
    "sigmoid": sigmoid_cases,
    "softmax": softmax_cases,
    "sigmoid_backward": sigmoid_backward_cases,
    "reduce_cols": reduce_cols_cases,
    "softmax_xent_backward": xent_cases,
    "axpy": axpy_cases,
    "sgd_step": sgd_cases,
    "gemm_bias_sigmoid": gemm_bias_sigmoid_cases,
    "gemm_sigmoid_backward": gemm_sigmoid_backward_cases,
    "gemm_with_bias_grad": gemm_with_bias_grad_cases,
    "nll_sum": nll_cases,
    "output_layer": output_layer_cases,
    "output_backward": output_backward_cases,
    "exact_row_exponents": exact_row_exponents_cases,
    "exact_split": exact_split_cases,
    "exact_combine": exact_combine_cases,
    "exact_sigmoid": exact_sigmoid_cases,
    "exact_sigmoid_backward": sigmoid_backward_cases,
    "exact_output_layer": exact_output_layer_cases,
    "exact_sgd_step": sgd_cases,
    "count_correct": count_correct_cases,
    "sum_squares": sum_squares_cases,
}
