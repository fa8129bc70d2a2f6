"""The op table: one entry per op of core.ops.Backend that the GPU backends compute with kernels.cu.

An entry (``Op``) says everything the Python side knows about the op, in one place:

* ``name`` and ``params``: the ``core.ops.Backend`` method and its parameters, defaults included;
* ``shape``: the shape rule. It validates the operands and returns the sizes the kernels need
  (named by ``sizes``), or None when there is nothing to launch (zero columns, say);
* ``launches``: the kernel(s) it runs, in order, each a ``Launch``: the kernel's name, its
  parameters as ``kind:expression`` (see ``KINDS``; expressions are the op's parameters, its sizes
  and ``ld_<matrix>``) and its launch geometry (a function of some of the sizes);
* ``tolerance``: the kind of error the op may show against the reference (see ``TOLERANCE_KINDS``);
* ``cases``: inputs for the parity tests; ``writes``: the operands it writes; ``aliases``: the
  (output, input) pairs the contract allows to be one array; ``reference``: the NumPy reference,
  by default the ``NumpyBackend`` method of the same name.

``backends/cuda_backend.py`` turns every entry into the GPU backends' method (``dispatch_source``
below writes its code), ``tests/test_kernel_parity.py`` runs every entry against its reference on
every GPU backend, and ``tests/test_op_table.py`` checks the table against core.ops and the .cu
sources. Adding an op is adding its kernel to a .cuh header and its entry to ``OPS``.

The GEMM is an entry too (its kernels, reference, tolerance and cases), but its launch is planned
per shape by backends/gemm_plan.py and its method is written by hand (``planned=True``); so are the
fused GEMMs (gemm_bias_sigmoid, gemm_sigmoid_backward, gemm_with_bias_grad; their kernels:
gemm_plan.GEMM_VARIANTS).

Pure Python (NumPy at most): importing this module never touches a GPU library.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from backends import gemm_plan

Dim3 = tuple[int, int, int]

# ----------------------------------------------------------------------------- launch limits
#: threads per block of the element-wise and single-block reduction kernels
BLOCK = 256
#: grid-stride kernels never need more blocks than this to saturate an H100-class GPU
MAX_GRID = 4096
#: blocks of sum_squares_partial, and so the size of each backend's device scratch buffer
SUM_PARTIAL_BLOCKS = 256
#: column groups of the reduce_cols kernel (RC_GROUPS in reductions.cuh): block = 32 rows x groups
REDUCE_COLS_GROUPS = 16
#: the fused output layer (OL_* in reductions.cuh; tests/test_cuda_compile.py checks they agree):
#: threads per block, columns per block at a time, most classes it holds in registers, and most
#: blocks (the slots of its partial-loss workspace)
OUTPUT_THREADS = 256
#: columns per group by itemsize (OL_COLS_FLOAT, OL_COLS_DOUBLE): the accumulators are registers
OUTPUT_COLS = {4: 8, 8: 4}
OUTPUT_MAX_CLASSES = 10
OUTPUT_MAX_BLOCKS = 1024
#: largest element count a kernel may index with its 32-bit ints (with headroom for a grid-stride
#: loop's last step, idx + blocks*threads, to stay below 2^31 too)
MAX_ELEMENTS = 2**31 - 1 - MAX_GRID * BLOCK

ONE_BLOCK: Dim3 = (1, 1, 1)
BLOCK_DIM: Dim3 = (BLOCK, 1, 1)

#: kinds of kernel parameters. The first letter of each is how the kernel receives it (P pointer,
#: i 32-bit int, r the REAL of the build); the rest is what the dispatch checks before launching.
KINDS = {
    "R": "pointer to the operand's elements: an array of the backend dtype, contiguous",
    "L": "pointer to the operand's elements: an int32 array (labels), contiguous",
    "M": "pointer to a matrix of the backend dtype read through its leading dimension, which the "
         "dispatch computes as ld_<name> for a later i parameter",
    "W": "pointer to the backend's workspace buffer _<name> (not an operand: no check)",
    "C": "pointer to the backend's int32 workspace counter _<name>, which every launch leaves at 0 "
         "(not an operand: no check)",
    "i": "32-bit int",
    "r": "real of the build (float or double)",
}
_KIND_LETTER = {"R": "P", "L": "P", "M": "P", "W": "P", "C": "P", "i": "i", "r": "r"}
#: the workspace buffers the W and C parameters name, as CudaBackend._start allocates them:
#: name -> (elements, "real" or "int32"); "total" is the last slot of "scratch"
WORKSPACE = {"scratch": (SUM_PARTIAL_BLOCKS + 1, "real"), "total": (1, "real"),
             "output_partials": (OUTPUT_MAX_BLOCKS, "real"), "output_ticket": (1, "int32"),
             # the split-K GEMMs' partial tiles and per-tile tickets (gemm.cuh SplitK)
             "gemm_partials": (gemm_plan.GEMM_SPLIT_SLOTS * gemm_plan.GEMM_SPLIT_TILE_ELEMS, "real"),
             "gemm_tickets": (gemm_plan.GEMM_SPLIT_TICKETS, "int32")}

#: kinds of error an op may show against the NumPy reference; tests/test_kernel_parity.py gives
#: each a relative max-norm tolerance per dtype
TOLERANCE_KINDS = ("exact", "elementwise", "reduction", "gemm")


# ------------------------------------------------------------------------------ shape rules
# The ops' shape rules (they see only .shape and .size). Each returns the sizes its entry names, or
# None when there is nothing to launch; each raises ValueError on operands that do not fit.
def check_index_range(*sizes: int) -> None:
    for size in sizes:
        if size > MAX_ELEMENTS:
            raise ValueError(
                f"{size} elements: kernels.cu indexes with 32-bit ints (max {MAX_ELEMENTS})")


def leading_dim(shape, col_stride_elems: int | None) -> int:
    """Leading dimension of a column-major matrix; a matrix of <= 1 column may report any stride."""
    rows = shape[0]
    cols = shape[1] if len(shape) > 1 else 1
    if cols <= 1 or col_stride_elems is None:
        return max(rows, 1)
    return max(int(col_stride_elems), 1)  # an empty matrix may report a stride of 0


def same_size(*arrays) -> int:
    """Common element count of same-shaped operands (an element-wise op over all of them)."""
    shape = arrays[0].shape
    for arr in arrays[1:]:
        if arr.shape != shape:
            raise ValueError(f"shape mismatch: {tuple(shape)} vs {tuple(arr.shape)}")
    size = math.prod(shape)  # math.prod: np.prod costs microseconds on a small tuple
    if size > MAX_ELEMENTS:
        check_index_range(size)
    return size


def elementwise_size(*arrays) -> int | None:
    """n of an element-wise op over same-shaped operands."""
    return same_size(*arrays) or None


def sgd_sizes(params, grads, reg, reg_ranges) -> tuple[int, int, int, int, int] | None:
    """n and the two regularised ranges (padded with empty ones; none at all when reg is 0)."""
    n = same_size(params, grads)
    if not n:
        return None
    ranges = [tuple(int(v) for v in r) for r in reg_ranges] if reg else []
    if len(ranges) > 2 or any(not 0 <= lo <= hi <= n for lo, hi in ranges):
        raise ValueError(f"sgd_step: at most two ranges within [0, {n}], got {reg_ranges}")
    ranges += [(0, 0)] * (2 - len(ranges))
    return (n, *ranges[0], *ranges[1])


def fill_size(arr) -> int | None:
    n = arr.size
    if n > MAX_ELEMENTS:
        check_index_range(n)
    return n or None


def bias_sizes(z, bias, out) -> tuple[int, int] | None:
    """(rows, elements) of z + bias 1^T."""
    if len(z.shape) != 2:
        raise ValueError(f"expected a matrix, got shape {tuple(z.shape)}")
    rows = z.shape[0]
    if tuple(bias.shape) != (rows,):
        raise ValueError(f"bias of shape {tuple(bias.shape)} for {rows} rows")
    n = same_size(z, out)
    return (rows, n) if n else None


def softmax_sizes(x, out, axis: int) -> tuple[int, int, int, int] | None:
    """(lines, line length, line stride, element stride) of a contiguous column-major x."""
    if len(x.shape) != 2:
        raise ValueError(f"expected a matrix, got shape {tuple(x.shape)}")
    same_size(x, out)
    rows, cols = x.shape
    if axis == 0:
        sizes = (cols, rows, rows, 1)
    elif axis == 1:
        sizes = (rows, cols, 1, rows)
    else:
        raise ValueError(f"softmax axis must be 0 or 1, got {axis}")
    return sizes if sizes[0] and sizes[1] else None


def reduce_sizes(x, out) -> tuple[int, int] | None:
    """(rows, cols) of a column sum; zero columns still launch (the sum over nothing is 0)."""
    if len(x.shape) != 2 or tuple(out.shape) != (x.shape[0],):
        raise ValueError(f"reduce_cols: x {tuple(x.shape)} into out {tuple(out.shape)}")
    return (x.shape[0], x.shape[1]) if x.shape[0] else None


def _label_shapes(scores, labels) -> tuple[int, int]:
    if len(scores.shape) != 2 or tuple(labels.shape) != (scores.shape[1],):
        raise ValueError(f"{tuple(labels.shape)} labels for scores of shape {tuple(scores.shape)}")
    return scores.shape[0], scores.shape[1]


def xent_sizes(yhat, labels, out) -> tuple[int, int] | None:
    """(rows, elements) of scale * (yhat - onehot(labels))."""
    rows, _ = _label_shapes(yhat, labels)
    n = same_size(yhat, out)
    return (rows, n) if n else None


def label_sizes(scores, labels) -> tuple[int, int] | None:
    """(rows, cols) of a per-column statistic of the output layer."""
    rows, cols = _label_shapes(scores, labels)
    return (rows, cols) if rows and cols else None


def output_layer_sizes(w2, b2, a1, labels, diff) -> tuple[int, int, int, int] | None:
    """(classes, hidden, n, blocks) of the fused output layer; None for zero columns."""
    if len(w2.shape) != 2 or len(a1.shape) != 2:
        raise ValueError(f"output_layer: w2 {tuple(w2.shape)} and a1 {tuple(a1.shape)} must be "
                         f"matrices")
    classes, hidden = w2.shape
    n = a1.shape[1]
    if not 1 <= classes <= OUTPUT_MAX_CLASSES:
        raise ValueError(f"output_layer: {classes} classes; the kernel holds 1 to "
                         f"{OUTPUT_MAX_CLASSES}")
    if (a1.shape[0] != hidden or tuple(b2.shape) != (classes,) or tuple(labels.shape) != (n,)
            or tuple(diff.shape) != (classes, n)):
        raise ValueError(f"output_layer: w2 {tuple(w2.shape)}, b2 {tuple(b2.shape)}, "
                         f"a1 {tuple(a1.shape)}, labels {tuple(labels.shape)}, "
                         f"diff {tuple(diff.shape)} do not fit")
    if n == 0:
        return None
    check_index_range(hidden * n, classes * n, classes * hidden)
    cols = OUTPUT_COLS[np.dtype(diff.dtype).itemsize]
    return classes, hidden, n, min(math.ceil(n / cols), OUTPUT_MAX_BLOCKS)


# --exact (core/exact.py, kernels in exact.cuh): float64 in the model; the rules do not look at
# the dtype (the kernels build for float too, without the NumPy reference's bits)
def _matrix(name, x):
    if len(x.shape) != 2:
        raise ValueError(f"{name}: expected a matrix, got shape {tuple(x.shape)}")
    return x.shape


def exact_row_exponents_sizes(x, trans, out) -> tuple[int, int] | None:
    """(p, q) of L = op(x), one exponent per row of L."""
    rows, cols = _matrix("exact_row_exponents", x)
    p, q = (cols, rows) if trans else (rows, cols)
    if tuple(out.shape) != (p,):
        raise ValueError(f"exact_row_exponents: {p} x {q} rows into out {tuple(out.shape)}")
    check_index_range(p * q)
    return (p, q) if p else None


def exact_split_sizes(x, trans, ones_row, ones_col, exps, slices, out) -> \
        tuple[int, int, int] | None:
    """(p0, q0, n) of L = op(x) (p0 x q0) with its ones row / column: n = p q elements."""
    rows, cols = _matrix("exact_split", x)
    p0, q0 = (cols, rows) if trans else (rows, cols)
    p, q = p0 + bool(ones_row), q0 + bool(ones_col)
    if tuple(exps.shape) != (p,) or tuple(out.shape) != (p, int(slices) * q):
        raise ValueError(f"exact_split: L {p} x {q}, exps {tuple(exps.shape)}, "
                         f"{slices} slices into out {tuple(out.shape)} do not fit")
    check_index_range(p * q * max(int(slices), 1))
    return (p0, q0, p * q) if p * q and int(slices) > 0 else None


def exact_combine_sizes(groups, row_exps, col_exps, out) -> tuple[int, int, int, int] | None:
    """(m, n, groups, elements) of the combine into out (m x n)."""
    m, n = _matrix("exact_combine", out)
    if (len(groups.shape) != 2 or groups.shape[0] != m or not n or groups.shape[1] % n
            or tuple(row_exps.shape) != (m,) or tuple(col_exps.shape) != (n,)):
        if m * n == 0:
            return None
        raise ValueError(f"exact_combine: groups {tuple(groups.shape)}, row_exps "
                         f"{tuple(row_exps.shape)}, col_exps {tuple(col_exps.shape)} for out "
                         f"{tuple(out.shape)}")
    count = groups.shape[1] // n
    check_index_range(m * groups.shape[1])
    return (m, n, count, m * n) if m * n and count else None


def exact_output_layer_sizes(z, labels, diff) -> tuple[int, int] | None:
    """(classes, n) of the output layer from the logits."""
    classes, n = _matrix("exact_output_layer", z)
    if not 1 <= classes <= OUTPUT_MAX_CLASSES:
        raise ValueError(f"exact_output_layer: {classes} classes; the kernel holds 1 to "
                         f"{OUTPUT_MAX_CLASSES}")
    if tuple(labels.shape) != (n,) or tuple(diff.shape) != (classes, n):
        raise ValueError(f"exact_output_layer: z {tuple(z.shape)}, labels {tuple(labels.shape)}, "
                         f"diff {tuple(diff.shape)} do not fit")
    check_index_range(classes * n)
    return (classes, n) if n else None


def sum_squares_sizes(x) -> tuple[int, int] | None:
    """(elements, blocks of the partial sums)."""
    n = x.size
    if n == 0:
        return None
    check_index_range(n)
    return n, max(1, min(math.ceil(n / BLOCK), SUM_PARTIAL_BLOCKS))


# --------------------------------------------------------------------------- launch geometry
# (grid, block) from sizes. Cached: the ops ask on every launch, for the few sizes a run has.
@functools.lru_cache(maxsize=1024)
def elementwise_launch(n: int) -> tuple[Dim3, Dim3]:
    """A grid-stride kernel over n > 0 elements."""
    return (max(1, min(math.ceil(n / BLOCK), MAX_GRID)), 1, 1), BLOCK_DIM


@functools.lru_cache(maxsize=1024)
def softmax_launch(nlines: int) -> tuple[Dim3, Dim3]:
    """One warp per line, BLOCK / 32 lines per block."""
    per_block = BLOCK // 32
    return (max(1, math.ceil(nlines / per_block)), 1, 1), BLOCK_DIM


@functools.lru_cache(maxsize=1024)
def reduce_cols_launch(rows: int) -> tuple[Dim3, Dim3]:
    """32 rows per block, REDUCE_COLS_GROUPS column groups."""
    return (max(1, math.ceil(rows / 32)), 1, 1), (32 * REDUCE_COLS_GROUPS, 1, 1)


@functools.lru_cache(maxsize=1024)
def blocks_launch(blocks: int) -> tuple[Dim3, Dim3]:
    """`blocks` blocks of BLOCK threads (a kernel that writes one result per block)."""
    return (blocks, 1, 1), BLOCK_DIM


@functools.lru_cache(maxsize=1024)
def output_layer_launch(blocks: int) -> tuple[Dim3, Dim3]:
    """`blocks` blocks of OUTPUT_THREADS (a group of OUTPUT_COLS columns each, grid-stride)."""
    return (blocks, 1, 1), (OUTPUT_THREADS, 1, 1)


def one_block_launch() -> tuple[Dim3, Dim3]:
    """A single block: a fixed reduction order over all of the work."""
    return ONE_BLOCK, BLOCK_DIM


# ------------------------------------------------------------------------- parity test inputs
# cases(rng, rows, cols, dtype) -> list of {parameter: value}: host arrays (column-major) and
# scalars, in the op's parameter names. Outputs start as NaN so that an element the op fails to
# write shows up; accumulators start non-zero so that "+=" is checked, not "=".
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


def _fill_cases(rng, rows, cols, dtype):
    return [{"arr": _normal(rng, (rows, cols), dtype), "value": 2.5},
            {"arr": _labels(rng, max(rows, 1), rows * cols), "value": 7}]


def _gemm_cases(rng, rows, cols, dtype):
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


def _gemm_bias_sigmoid_cases(rng, rows, cols, dtype):
    m, n = rows, cols
    return [{"a": _normal(rng, (m, k), dtype), "b": _normal(rng, (k, n), dtype, _fused_scale(k)),
             "bias": _normal(rng, (m,), dtype), "out": _nan((m, n), dtype)}
            for k in _FUSED_GEMM_KS]


def _gemm_sigmoid_backward_cases(rng, rows, cols, dtype):
    m, n = rows, cols
    return [{"a": _normal(rng, (k, m), dtype), "b": _normal(rng, (k, n), dtype),
             "act": _unit(rng, (m, n), dtype), "out": _nan((m, n), dtype)}
            for k in _FUSED_GEMM_KS]


def _gemm_with_bias_grad_cases(rng, rows, cols, dtype):
    """out is rows x (cols + 1): cols = 0 leaves only the bias column."""
    m, n = rows, cols
    return [{"a": _normal(rng, (m, k), dtype), "b": _normal(rng, (n, k), dtype),
             "out": _nan((m, n + 1), dtype)}
            for k in _FUSED_GEMM_KS]


def _bias_sigmoid_cases(rng, rows, cols, dtype):
    return [{"z": _normal(rng, (rows, cols), dtype, 3.0), "bias": _normal(rng, (rows,), dtype),
             "out": _nan((rows, cols), dtype)}]


def _add_bias_cases(rng, rows, cols, dtype):
    return [{"z": _normal(rng, (rows, cols), dtype, 3.0), "bias": _normal(rng, (rows,), dtype)}]


def _sigmoid_cases(rng, rows, cols, dtype):
    return [{"x": _normal(rng, (rows, cols), dtype, 3.0), "out": _nan((rows, cols), dtype)}]


def _softmax_cases(rng, rows, cols, dtype):
    return [{"x": _normal(rng, (rows, cols), dtype, 3.0), "out": _nan((rows, cols), dtype),
             "axis": axis} for axis in (0, 1)]


def _sigmoid_backward_cases(rng, rows, cols, dtype):
    return [{"grad": _normal(rng, (rows, cols), dtype), "a": _unit(rng, (rows, cols), dtype),
             "out": _nan((rows, cols), dtype)}]


def _reduce_cols_cases(rng, rows, cols, dtype):
    return [{"x": _normal(rng, (rows, cols), dtype), "out": _nan((rows,), dtype), "alpha": 0.37}]


def _xent_cases(rng, rows, cols, dtype):
    return [{"yhat": _unit(rng, (rows, cols), dtype), "labels": _labels(rng, rows, cols),
             "scale": 0.125, "out": _nan((rows, cols), dtype)}]


def _axpy_cases(rng, rows, cols, dtype):
    return [{"alpha": -0.37, "x": _normal(rng, (rows, cols), dtype, 3.0),
             "y": _normal(rng, (rows, cols), dtype)}]


def _sgd_cases(rng, rows, cols, dtype):
    n = rows * cols
    params, grads = _normal(rng, (rows, cols), dtype), _normal(rng, (rows, cols), dtype, 3.0)
    return [{"params": params, "grads": grads, "lr": 0.3, "reg": 0.1,
             "reg_ranges": ((0, n // 3), (n // 2, n))},
            {"params": params, "grads": grads, "lr": 0.7, "reg": 0.0, "reg_ranges": ()}]


def _nll_cases(rng, rows, cols, dtype):
    return [{"yhat": _softmax_columns(_normal(rng, (rows, cols), dtype)),
             "labels": _labels(rng, rows, cols), "acc": np.array([1.5], dtype)}]


def _output_layer_cases(rng, rows, cols, dtype):
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


def _exact_row_exponents_cases(rng, rows, cols, dtype):
    x = _normal(rng, (rows, cols), dtype) * np.exp2(rng.integers(-20, 20, (rows, 1))).astype(dtype)
    x = np.asfortranarray(x)
    if rows > 2 and cols:
        x[1, :] = 0.0          # a zero row
        x[2, 0] = np.inf       # a row holding inf
    return [{"x": x, "trans": False, "out": _nan((rows,), dtype)},
            {"x": x, "trans": True, "out": _nan((cols,), dtype)}]


def _exact_split_cases(rng, rows, cols, dtype):
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


def _exact_combine_cases(rng, rows, cols, dtype):
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


def _exact_sigmoid_cases(rng, rows, cols, dtype):
    return [{"x": _with_specials(_normal(rng, (rows, cols), dtype, 8.0)),
             "out": _nan((rows, cols), dtype)}]


def _exact_output_layer_cases(rng, rows, cols, dtype):
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


def _count_correct_cases(rng, rows, cols, dtype):
    return [{"scores": _normal(rng, (rows, cols), dtype), "labels": _labels(rng, rows, cols),
             "acc": np.array([2.0], dtype)}]


def _sum_squares_cases(rng, rows, cols, dtype):
    return [{"x": _normal(rng, (rows, cols), dtype)}]


# ----------------------------------------------------------------------------------- entries
@dataclass(frozen=True)
class Launch:
    """One launch of a kernel of kernels.cu by an op."""

    #: the extern "C" __global__'s name
    kernel: str
    #: its parameters in order, "kind:expression, ..." (kinds: KINDS; no commas in an expression)
    params: str
    #: (grid, block) from the sizes named by geometry_args; None: planned elsewhere (GEMM)
    geometry: Callable[..., tuple[Dim3, Dim3]] | None
    #: the op's sizes geometry takes, comma-separated ("" for none)
    geometry_args: str = ""

    @property
    def parameters(self) -> tuple[tuple[str, str], ...]:
        """((kind, expression), ...) of the kernel's parameters."""
        pairs = tuple(tuple(p.strip().split(":", 1)) for p in self.params.split(","))
        for pair in pairs:
            if len(pair) != 2 or pair[0] not in KINDS or not pair[1] or ":" in pair[1]:
                raise ValueError(f"{self.kernel}: bad parameter {':'.join(pair)!r} "
                                 f"(kinds: {sorted(KINDS)})")
        return pairs

    @property
    def signature(self) -> str:
        """The kernel's argument kinds as the backends pass them: P pointer, i int, r real."""
        return "".join(_KIND_LETTER[kind] for kind, _ in self.parameters)


@dataclass(frozen=True)
class Op:
    """One op of core.ops.Backend as the GPU backends compute it (see the module docstring)."""

    #: the core.ops.Backend method
    name: str
    #: its parameters as the contract declares them, defaults included ("x, out, axis=0")
    params: str
    #: the shape rule: validates, returns the sizes (one value or a tuple) or None (no launch)
    shape: Callable[..., Any] | None
    #: the operands the shape rule takes, comma-separated; "" means all of params, in order
    shape_args: str
    #: names of the shape rule's results, comma-separated
    sizes: str
    #: the kernels it runs, in order (for a float array; see int_launches)
    launches: tuple[Launch, ...]
    #: tolerance kind (TOLERANCE_KINDS)
    tolerance: str
    #: parity-test inputs: (rng, rows, cols, dtype) -> [{parameter: value}, ...]
    cases: Callable[..., list[dict[str, Any]]]
    #: the array parameters the op writes
    writes: tuple[str, ...] = ()
    #: (output, input) pairs the contract allows to be the same array
    aliases: tuple[tuple[str, str], ...] = ()
    #: launches that replace `launches` when the parameter int_operand is an int32 array (fill)
    int_launches: tuple[Launch, ...] = ()
    int_operand: str = ""
    #: the backend method whose value the op returns after its launches (sum_squares); with
    #: empty_result, what it returns when there is nothing to launch
    result: str = ""
    empty_result: Any = None
    #: NumPy reference (a backend-like callable of the params); None: NumpyBackend's method
    reference: Callable[..., Any] | None = None
    #: True for the GEMM: method written by hand, launches planned by backends/gemm_plan.py
    planned: bool = False

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(p.split("=")[0].strip() for p in self.params.split(","))

    @property
    def all_launches(self) -> tuple[Launch, ...]:
        return self.launches + self.int_launches


def _elementwise(name, params, kernel_params, shape_args="", tolerance="elementwise", **fields):
    """An op that runs one grid-stride kernel of the same name over its n elements."""
    return Op(name, params, elementwise_size, shape_args, "n",
              (Launch(name, kernel_params, elementwise_launch, "n"),), tolerance, **fields)


OPS: tuple[Op, ...] = (
    Op("fill", "arr, value", fill_size, "arr", "n",
       (Launch("fill_real", "R:arr, i:n, r:value", elementwise_launch, "n"),), "exact",
       _fill_cases, writes=("arr",), int_operand="arr",
       int_launches=(Launch("fill_int", "L:arr, i:n, i:int(value)", elementwise_launch, "n"),)),
    Op("gemm", "a, b, c, alpha=1.0, beta=0.0, trans_a=False, trans_b=False", None, "", "",
       tuple(Launch(kernel, gemm_plan.GEMM_PARAMS, None) for kernel in gemm_plan.GEMM_KERNELS)
       + tuple(Launch(kernel, f"{gemm_plan.GEMM_PARAMS}, {gemm_plan.GEMM_SPLIT_PARAMS}", None)
               for kernel in gemm_plan.GEMM_SPLIT_KERNELS)
       + tuple(Launch(kernel, gemm_plan.GEMM_PARAMS, None)  # --gemm tf32x3
               for kernel in gemm_plan.GEMM_X3_KERNELS),
       "gemm", _gemm_cases, writes=("c",), planned=True),
    Op("bias_sigmoid", "z, bias, out", bias_sizes, "", "rows, n",
       (Launch("bias_sigmoid", "R:z, R:bias, R:out, i:rows, i:n", elementwise_launch, "n"),),
       "elementwise", _bias_sigmoid_cases, writes=("out",), aliases=(("out", "z"),)),
    Op("add_bias", "z, bias", bias_sizes, "z, bias, z", "rows, n",
       (Launch("add_bias", "R:z, R:bias, i:rows, i:n", elementwise_launch, "n"),),
       "elementwise", _add_bias_cases, writes=("z",)),
    _elementwise("sigmoid", "x, out", "R:x, R:out, i:n", cases=_sigmoid_cases, writes=("out",),
                 aliases=(("out", "x"),)),
    # normalised by a sum over up to a line's length of terms: a reduction's tolerance
    Op("softmax", "x, out, axis=0", softmax_sizes, "", "nlines, length, line_stride, elem_stride",
       (Launch("softmax_lines", "R:x, R:out, i:nlines, i:length, i:line_stride, i:elem_stride",
               softmax_launch, "nlines"),),
       "reduction", _softmax_cases, writes=("out",), aliases=(("out", "x"),)),
    _elementwise("sigmoid_backward", "grad, a, out", "R:grad, R:a, R:out, i:n",
                 cases=_sigmoid_backward_cases, writes=("out",), aliases=(("out", "grad"),)),
    Op("reduce_cols", "x, out, alpha=1.0", reduce_sizes, "x, out", "rows, cols",
       (Launch("reduce_cols", "M:x, R:out, i:rows, i:cols, i:ld_x, r:alpha",
               reduce_cols_launch, "rows"),),
       "reduction", _reduce_cols_cases, writes=("out",)),
    Op("softmax_xent_backward", "yhat, labels, scale, out", xent_sizes, "yhat, labels, out",
       "rows, n",
       (Launch("softmax_xent_backward", "R:yhat, L:labels, R:out, i:rows, i:n, r:scale",
               elementwise_launch, "n"),),
       "elementwise", _xent_cases, writes=("out",), aliases=(("out", "yhat"),)),
    _elementwise("axpy", "alpha, x, y", "R:x, R:y, i:n, r:alpha", shape_args="x, y",
                 cases=_axpy_cases, writes=("y",)),
    Op("sgd_step", "params, grads, lr, reg=0.0, reg_ranges=()", sgd_sizes,
       "params, grads, reg, reg_ranges", "n, lo0, hi0, lo1, hi1",
       (Launch("sgd_step", "R:params, R:grads, i:n, i:lo0, i:hi0, i:lo1, i:hi1, r:reg, r:-lr",
               elementwise_launch, "n"),),
       "elementwise", _sgd_cases, writes=("params", "grads")),
    # the fused GEMMs (core.ops FUSED_OPS): planned like the GEMM (gemm_plan.GEMM_VARIANTS)
    *(Op(v.op, params, None, "", "",
         tuple(Launch(kernel, v.params, None) for kernel in v.tile_kernels)
         + tuple(Launch(kernel, f"{v.params}, {gemm_plan.GEMM_SPLIT_PARAMS}", None)
                 for kernel in v.split_kernels)
         + tuple(Launch(kernel, v.params, None) for kernel in v.x3_kernels),  # --gemm tf32x3
         "gemm", cases, writes=("out",), planned=True)
      for v, params, cases in (
          (gemm_plan.GEMM_VARIANTS["gemm_bias_sigmoid"], "a, b, bias, out",
           _gemm_bias_sigmoid_cases),
          (gemm_plan.GEMM_VARIANTS["gemm_sigmoid_backward"], "a, b, act, out",
           _gemm_sigmoid_backward_cases),
          (gemm_plan.GEMM_VARIANTS["gemm_with_bias_grad"], "a, b, out",
           _gemm_with_bias_grad_cases))),
    Op("nll_sum", "yhat, labels, acc", label_sizes, "yhat, labels", "rows, cols",
       (Launch("nll_sum", "M:yhat, L:labels, R:acc, i:rows, i:cols, i:ld_yhat",
               one_block_launch),),
       "reduction", _nll_cases, writes=("acc",)),
    # the softmax output layer and its stable cross-entropy, one launch (see reductions.cuh);
    # its dot products are over the hidden units, its loss over the columns: a reduction
    Op("output_layer", "w2, b2, a1, labels, scale, diff, nll_acc", output_layer_sizes,
       "w2, b2, a1, labels, diff", "classes, hidden, n, blocks",
       (Launch("output_layer", "R:w2, R:b2, R:a1, L:labels, R:diff, R:nll_acc, "
               "W:output_partials, C:output_ticket, i:classes, i:hidden, i:n, r:scale",
               output_layer_launch, "blocks"),),
       "reduction", _output_layer_cases, writes=("diff", "nll_acc")),
    # --exact (core/exact.py; backends/exact.cuh): each must give the NumPy reference's bits
    # (tests/test_exact_gpu.py checks them bit for bit, special values included)
    Op("exact_row_exponents", "x, trans, out", exact_row_exponents_sizes, "", "p, q",
       (Launch("exact_row_exponents", "M:x, R:out, i:p, i:q, i:ld_x, i:int(trans)",
               elementwise_launch, "p"),),
       "exact", _exact_row_exponents_cases, writes=("out",)),
    Op("exact_split", "x, trans, ones_row, ones_col, exps, exp_shift, beta, slices, reverse, out, "
       "flag", exact_split_sizes, "x, trans, ones_row, ones_col, exps, slices, out", "p0, q0, n",
       (Launch("exact_split", "M:x, R:exps, R:out, R:flag, i:p0, i:q0, i:ld_x, i:int(trans), "
               "i:int(ones_row), i:int(ones_col), i:int(exp_shift), i:int(beta), i:int(slices), "
               "i:int(reverse)", elementwise_launch, "n"),),
       "exact", _exact_split_cases, writes=("out", "flag")),
    Op("exact_combine", "groups, row_exps, row_shift, col_exps, col_shift, beta, out",
       exact_combine_sizes, "groups, row_exps, col_exps, out", "m, n, count, total",
       (Launch("exact_combine", "R:groups, R:row_exps, R:col_exps, R:out, i:m, i:n, i:count, "
               "i:int(row_shift), i:int(col_shift), i:int(beta)", elementwise_launch, "total"),),
       "exact", _exact_combine_cases, writes=("out",)),
    _elementwise("exact_sigmoid", "x, out", "R:x, R:out, i:n", tolerance="exact",
                 cases=_exact_sigmoid_cases, writes=("out",), aliases=(("out", "x"),)),
    _elementwise("exact_sigmoid_backward", "grad, a, out", "R:grad, R:a, R:out, i:n",
                 tolerance="exact", cases=_sigmoid_backward_cases, writes=("out",),
                 aliases=(("out", "grad"),)),
    # diff is exact; the loss sum over the columns is the one order-dependent sum (a reduction)
    Op("exact_output_layer", "z, labels, scale, diff, nll_acc", exact_output_layer_sizes,
       "z, labels, diff", "classes, n",
       (Launch("exact_output_layer", "R:z, L:labels, R:diff, R:nll_acc, i:classes, i:n, r:scale",
               one_block_launch),),
       "reduction", _exact_output_layer_cases, writes=("diff", "nll_acc"),
       aliases=(("diff", "z"),)),
    Op("exact_sgd_step", "params, grads, lr, reg=0.0, reg_ranges=()", sgd_sizes,
       "params, grads, reg, reg_ranges", "n, lo0, hi0, lo1, hi1",
       (Launch("exact_sgd_step", "R:params, R:grads, i:n, i:lo0, i:hi0, i:lo1, i:hi1, r:reg, "
               "r:-lr", elementwise_launch, "n"),),
       "exact", _sgd_cases, writes=("params", "grads")),
    Op("count_correct", "scores, labels, acc", label_sizes, "scores, labels", "rows, cols",
       (Launch("count_correct", "M:scores, L:labels, R:acc, i:rows, i:cols, i:ld_scores",
               one_block_launch),),
       "exact", _count_correct_cases, writes=("acc",)),
    # two deterministic passes: a partial sum per block, then one block adds the partials in order
    Op("sum_squares", "x", sum_squares_sizes, "", "n, parts",
       (Launch("sum_squares_partial", "R:x, W:scratch, i:n", blocks_launch, "parts"),
        Launch("sum_partials", "W:scratch, i:parts, W:total", one_block_launch)),
       "reduction", _sum_squares_cases, result="_read_total", empty_result=0.0),
)

OP_BY_NAME: dict[str, Op] = {op.name: op for op in OPS}

#: kernel name -> its Launch (parameters and geometry), over every op
KERNELS: dict[str, Launch] = {launch.kernel: launch for op in OPS for launch in op.all_launches}
KERNEL_NAMES: tuple[str, ...] = tuple(KERNELS)
#: kernel name -> argument kinds (P pointer, i int, r real)
KERNEL_SIGNATURES: dict[str, str] = {name: launch.signature for name, launch in KERNELS.items()}


def pycuda_format(signature: str, dtype) -> str:
    """prepare() format of a kernel signature: P stays, i stays, r becomes f or d."""
    return signature.replace("r", "f" if np.dtype(dtype).itemsize == 4 else "d")


# --------------------------------------------------------------------------------- dispatch
def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def dispatch_source(op: Op) -> tuple[str, dict[str, Any]]:
    """Python source of the GPU backends' method for `op`, and the globals it needs.

    The method is what a hand-written one would be: the shape rule, then (unless there is nothing
    to do) one check per array operand and one prepared launch per kernel, with no per-call loops
    over the table. CudaBackend provides ``dtype``, ``_contiguous``, ``_reject``, ``_ld``, the
    workspace buffers and ``_launch`` (kernel name -> launcher).
    """
    if op.planned:
        raise ValueError(f"{op.name}: planned ops have a hand-written method")
    env: dict[str, Any] = {"_shape": op.shape, "_INT32": np.dtype(np.int32)}
    sizes = _names(op.sizes)
    shape_args = op.shape_args or ", ".join(op.param_names)
    target = sizes[0] if len(sizes) == 1 else "_sizes"
    empty = "" if op.empty_result is None else f" {op.empty_result!r}"
    lines = [f"def {op.name}(self, {op.params}):",
             f"    {target} = _shape({shape_args})",
             f"    if {target} is None:",
             f"        return{empty}"]
    if len(sizes) > 1:
        lines.append(f"    {', '.join(sizes)} = _sizes")

    def emit(launches: tuple[Launch, ...], indent: str) -> None:
        kinds = {kind for launch in launches for kind, _ in launch.parameters}
        if "R" in kinds:
            lines.append(f"{indent}real = self.dtype")
        if kinds & {"R", "L"}:
            lines.append(f"{indent}contiguous = self._contiguous")
        for launch in launches:
            for kind, expr in launch.parameters:
                if kind == "R":
                    lines.append(f"{indent}if {expr}.dtype != real or not contiguous({expr}):")
                    lines.append(f"{indent}    self._reject({expr}, real)")
                elif kind == "L":
                    lines.append(f"{indent}if {expr}.dtype != _INT32 or not contiguous({expr}):")
                    lines.append(f"{indent}    self._reject({expr}, _INT32)")
                elif kind == "M":
                    lines.append(f"{indent}ld_{expr} = self._ld({expr})")
        for launch in launches:
            geometry = f"_geometry_{len(env)}"
            env[geometry] = launch.geometry
            args = ", ".join(f"self._{expr}" if kind in "WC" else expr
                             for kind, expr in launch.parameters)
            lines.append(f"{indent}grid, block = {geometry}({launch.geometry_args})")
            lines.append(f"{indent}self._launch[{launch.kernel!r}](grid, block, {args})")

    if op.int_launches:
        lines.append(f"    if {op.int_operand}.dtype == _INT32:")
        emit(op.int_launches, " " * 8)
        lines.append("    else:")
        emit(op.launches, " " * 8)
    else:
        emit(op.launches, " " * 4)
    if op.result:
        lines.append(f"    return self.{op.result}()")
    return "\n".join(lines) + "\n", env


if __name__ == "__main__":  # python -m backends.op_table: the generated GPU methods, for reading
    for _op in OPS:
        if not _op.planned:
            print(dispatch_source(_op)[0])
