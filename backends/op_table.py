"""The op table: one entry per op of core.ops.Backend that the GPU backends compute with kernels.cu.

An entry (``Op``) says, in one place, everything the Python side knows about the op:

* ``shape``: the shape rule. It validates the operands (it sees only .shape and .size) and returns
  the sizes the kernels need as a NamedTuple (``sizes``, e.g. ``SoftmaxLines``), or None when there
  is nothing to launch (zero columns, say); it raises ValueError on operands that do not fit;
* ``launches``: the kernel(s) it runs, in order, each a ``Launch``: the kernel's name, its
  parameters in the kernel's order as typed ``Param``s (``Array("x")``: the operand x, checked to
  be a contiguous array of the backend dtype; ``Size("n")``: the sizes' field n;
  ``IntArg("trans")``: the op's argument as an int; ...) and its launch geometry (a function of
  one of the sizes);
* ``tolerance``: the kind of error the op may show against the NumPy reference
  (``TOLERANCE_KINDS``);
* ``writes``: the operands it writes; ``aliases``: the (output, input) pairs the contract allows to
  be one array. Its parameters are core.ops.Backend's (``param_names``, ``signature``).

Each op's shape rule, sizes and entry stand together below, grouped by the kernels' kind. The GPU
backends' method of an entry is ``cuda_dispatch.table_method`` (CudaBackend names each:
``softmax = table_method("softmax")``); tests/test_kernel_parity.py runs every entry against the
NumPy reference on every GPU backend, on the inputs of tests/op_cases.py; tests/test_op_table.py
checks the table against core.ops and the launches of its methods (recorded, without a GPU), and
tests/test_cuda_compile.py against the .cu sources. Adding an op is adding its kernel to a .cuh
header, its entry to ``OPS``, its method's name to CudaBackend and its inputs to tests/op_cases.py.

The GEMM is an entry too (its kernels, their parameters and its tolerance), but its launch is
planned per shape by backends/gemm_plan.py and its method is written out (``planned=True``,
backends/cuda_gemm.py); so are the fused GEMMs (gemm_bias_sigmoid, gemm_sigmoid_backward,
gemm_with_bias_grad; their kernels: gemm_plan.GEMM_VARIANTS).

Pure Python (NumPy at most): importing this module never touches a GPU library.
"""

from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, NamedTuple

import numpy as np

from backends import gemm_plan
from core.ops import Backend

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
#: output_backward (OB_* in reductions.cuh; tests/test_cuda_compile.py checks they agree): hidden
#: units per block (a lane each), threads, most chunks of the columns, and, split over chunks, most
#: rows of blocks (one ticket each) and blocks (one partial slot each)
BACKWARD_ROWS = 32
BACKWARD_THREADS = 256
BACKWARD_MAX_SPLIT = 16
BACKWARD_MAX_TICKETS = 512
BACKWARD_MAX_SLOTS = 1024
#: the blocks output_backward aims at (about four an SM of an H100: where the rows of hidden
#: units alone leave SMs idle, the columns are split into chunks), and the fewest columns a chunk
#: gets (two for each warp)
BACKWARD_TARGET_BLOCKS = 512
BACKWARD_MIN_CHUNK = 16
#: largest element count a kernel may index with its 32-bit ints (with headroom for a grid-stride
#: loop's last step, idx + blocks*threads, to stay below 2^31 too)
MAX_ELEMENTS = 2**31 - 1 - MAX_GRID * BLOCK

ONE_BLOCK: Dim3 = (1, 1, 1)
BLOCK_DIM: Dim3 = (BLOCK, 1, 1)

#: the workspace buffers the Workspace and Counter parameters name, as CudaBackend allocates them
#: (attribute _<name>): name -> (elements, "real" or "int32"); "total" is the last slot of "scratch"
WORKSPACE = {"scratch": (SUM_PARTIAL_BLOCKS + 1, "real"), "total": (1, "real"),
             "output_partials": (OUTPUT_MAX_BLOCKS, "real"), "output_ticket": (1, "int32"),
             # the split-K GEMMs' partial tiles and per-tile tickets (gemm.cuh SplitK)
             "gemm_partials": (gemm_plan.GEMM_SPLIT_SLOTS * gemm_plan.GEMM_SPLIT_TILE_ELEMS, "real"),
             "gemm_tickets": (gemm_plan.GEMM_SPLIT_TICKETS, "int32"),
             # output_backward's partial [dW2 db2] columns and per-row tickets
             "backward_partials": (BACKWARD_MAX_SLOTS * BACKWARD_ROWS * OUTPUT_MAX_CLASSES, "real"),
             "backward_tickets": (BACKWARD_MAX_TICKETS, "int32")}

#: kinds of error an op may show against the NumPy reference; tests/gpu_helpers.py gives each a
#: relative max-norm tolerance per dtype
TOLERANCE_KINDS = ("exact", "elementwise", "reduction", "gemm")


# ------------------------------------------------------------------------ kernel parameters
@dataclass(frozen=True)
class Param:
    """One parameter of a kernel: its class says what the dispatch passes for it (an operand, a
    size, an argument or a workspace buffer, all named by `name`), and ``passed_as`` how the
    kernel receives it, and so how a backend converts it (P pointer, i 32-bit int, r the REAL of
    the build): the kernel signatures."""

    name: str
    passed_as: ClassVar[str] = "P"


class Array(Param):
    """The operand `name`: an array of the backend dtype, read as .size contiguous elements
    (checked before the launch: dtype, then contiguity)."""


class Labels(Param):
    """The operand `name`: an int32 array, contiguous (checked like Array)."""


class Matrix(Param):
    """The operand `name`: a matrix of the backend dtype read through its leading dimension (a
    LeadingDim parameter; checked: a matrix, of the dtype, column-major)."""


class Workspace(Param):
    """The backend's workspace buffer ``_<name>`` (WORKSPACE; not an operand: no check)."""


class Counter(Param):
    """The backend's int32 workspace counter ``_<name>``, which every launch leaves at 0."""


class Size(Param):
    """The field `name` of the sizes the shape rule returns (a GEMM plan's, for the GEMMs)."""

    passed_as = "i"


class LeadingDim(Param):
    """The leading dimension of the Matrix operand `name`."""

    passed_as = "i"


class IntArg(Param):
    """The op's argument `name` (a flag or a small int), passed as int(value)."""

    passed_as = "i"


@dataclass(frozen=True)
class RealArg(Param):
    """The op's argument `name` (a scalar), as it is or, with `negated`, as -value."""

    negated: bool = False
    passed_as = "r"


#: gemm_plan declares its kernels' parameters as text, "kind:name, ..." (it stays free of this
#: module); the parameter class of each kind letter
_GEMM_KINDS: dict[str, type[Param]] = {"M": Matrix, "R": Array, "L": Labels, "W": Workspace,
                                       "C": Counter, "i": Size, "r": RealArg}


def gemm_params(text: str) -> tuple[Param, ...]:
    """The typed parameters of gemm_plan's declaration `text` ("M:a, i:m, r:alpha, ..."): a GEMM
    kernel's int parameters are sizes of its plan (m, n, k, lda, ..., ld_act)."""
    params = []
    for item in text.split(","):
        kind, _, name = item.strip().partition(":")
        if kind not in _GEMM_KINDS or not name.isidentifier():
            raise ValueError(f"bad GEMM parameter {item.strip()!r} in {text!r}")
        params.append(_GEMM_KINDS[kind](name))
    return tuple(params)


# ----------------------------------------------------------------------------------- entries
@dataclass(frozen=True)
class Launch:
    """One launch of a kernel of kernels.cu by an op."""

    #: the extern "C" __global__'s name
    kernel: str
    #: its parameters, in the kernel's order
    parameters: tuple[Param, ...]
    #: (grid, block) from the size named by `over` (none if None); None: planned elsewhere (GEMM)
    geometry: Callable[..., tuple[Dim3, Dim3]] | None
    over: str | None = None

    @property
    def signature(self) -> str:
        """The kernel's argument kinds as the backends pass them: P pointer, i int, r real."""
        return "".join(param.passed_as for param in self.parameters)


@dataclass(frozen=True, kw_only=True)
class Op:
    """One op of core.ops.Backend as the GPU backends compute it (see the module docstring)."""

    #: the core.ops.Backend method
    name: str
    #: the kernels it runs, in order (for a float array; see int_launches)
    launches: tuple[Launch, ...]
    #: tolerance kind (TOLERANCE_KINDS)
    tolerance: str
    #: the shape rule and the NamedTuple of sizes it returns; None for the planned GEMMs
    shape: Callable[..., Any] | None = None
    sizes: type | None = None
    #: the op's parameters the shape rule takes, in order; () means all of them
    shape_args: tuple[str, ...] = ()
    #: the array parameters the op writes
    writes: tuple[str, ...] = ()
    #: (output, input) pairs the contract allows to be the same array
    aliases: tuple[tuple[str, str], ...] = ()
    #: launches that replace `launches` when the parameter int_operand is an int32 array (fill)
    int_launches: tuple[Launch, ...] = ()
    int_operand: str = ""
    #: what the op returns after its launches, read from the backend (sum_squares' total); with
    #: empty_result, what it returns when there is nothing to launch
    result: Callable[[Any], Any] | None = None
    empty_result: Any = None
    #: True for the GEMMs: method written out (cuda_gemm.py), launches planned by gemm_plan.py
    planned: bool = False

    @property
    def signature(self) -> inspect.Signature:
        """core.ops.Backend's signature of the op (self included)."""
        return inspect.signature(getattr(Backend, self.name))

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(self.signature.parameters)[1:]

    @property
    def all_launches(self) -> tuple[Launch, ...]:
        return self.launches + self.int_launches

    @property
    def returns_result(self) -> bool:
        return self.result is not None


# ------------------------------------------------------------------ shared checks and geometry
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


# (grid, block) from a size. Cached: the ops ask on every launch, for the few sizes a run has.
@functools.lru_cache(maxsize=1024)
def elementwise_launch(n: int) -> tuple[Dim3, Dim3]:
    """A grid-stride kernel over n > 0 elements."""
    return (max(1, min(math.ceil(n / BLOCK), MAX_GRID)), 1, 1), BLOCK_DIM


def one_block_launch() -> tuple[Dim3, Dim3]:
    """A single block: a fixed reduction order over all of the work."""
    return ONE_BLOCK, BLOCK_DIM


# ------------------------------------------------------- element-wise ops: n grid-stride elements
class Elements(NamedTuple):
    n: int


def elementwise_size(*arrays) -> Elements | None:
    """n of an element-wise op over same-shaped operands."""
    n = same_size(*arrays)
    return Elements(n) if n else None


def _elementwise(name, parameters, tolerance="elementwise", **fields) -> Op:
    """An op that runs one grid-stride kernel of the same name over its n elements."""
    return Op(name=name, shape=elementwise_size, sizes=Elements,
              launches=(Launch(name, parameters, elementwise_launch, "n"),), tolerance=tolerance,
              **fields)


SIGMOID = _elementwise("sigmoid", (Array("x"), Array("out"), Size("n")), writes=("out",),
                       aliases=(("out", "x"),))
SIGMOID_BACKWARD = _elementwise("sigmoid_backward",
                                (Array("grad"), Array("a"), Array("out"), Size("n")),
                                writes=("out",), aliases=(("out", "grad"),))
AXPY = _elementwise("axpy", (Array("x"), Array("y"), Size("n"), RealArg("alpha")),
                    shape_args=("x", "y"), writes=("y",))


def fill_size(arr) -> Elements | None:
    n = arr.size
    if n > MAX_ELEMENTS:
        check_index_range(n)
    return Elements(n) if n else None


FILL = Op(name="fill", shape=fill_size, sizes=Elements, shape_args=("arr",),
          launches=(Launch("fill_real", (Array("arr"), Size("n"), RealArg("value")),
                           elementwise_launch, "n"),),
          int_operand="arr",
          int_launches=(Launch("fill_int", (Labels("arr"), Size("n"), IntArg("value")),
                               elementwise_launch, "n"),),
          tolerance="exact", writes=("arr",))


class MatrixElements(NamedTuple):
    """The n elements of a matrix of `rows` rows (the kernel finds an element's row or column)."""

    rows: int
    n: int


def bias_sizes(z, bias, out) -> MatrixElements | None:
    """z + bias 1^T."""
    if len(z.shape) != 2:
        raise ValueError(f"expected a matrix, got shape {tuple(z.shape)}")
    rows = z.shape[0]
    if tuple(bias.shape) != (rows,):
        raise ValueError(f"bias of shape {tuple(bias.shape)} for {rows} rows")
    n = same_size(z, out)
    return MatrixElements(rows, n) if n else None


BIAS_SIGMOID = Op(name="bias_sigmoid", shape=bias_sizes, sizes=MatrixElements,
                  launches=(Launch("bias_sigmoid", (Array("z"), Array("bias"), Array("out"),
                                                    Size("rows"), Size("n")),
                                   elementwise_launch, "n"),),
                  tolerance="elementwise", writes=("out",), aliases=(("out", "z"),))
ADD_BIAS = Op(name="add_bias", shape=bias_sizes, sizes=MatrixElements,
              shape_args=("z", "bias", "z"),
              launches=(Launch("add_bias", (Array("z"), Array("bias"), Size("rows"), Size("n")),
                               elementwise_launch, "n"),),
              tolerance="elementwise", writes=("z",))


def _label_shapes(scores, labels) -> tuple[int, int]:
    if len(scores.shape) != 2 or tuple(labels.shape) != (scores.shape[1],):
        raise ValueError(f"{tuple(labels.shape)} labels for scores of shape {tuple(scores.shape)}")
    return scores.shape[0], scores.shape[1]


def xent_sizes(yhat, labels, out) -> MatrixElements | None:
    """scale * (yhat - onehot(labels))."""
    rows, _ = _label_shapes(yhat, labels)
    n = same_size(yhat, out)
    return MatrixElements(rows, n) if n else None


SOFTMAX_XENT_BACKWARD = Op(
    name="softmax_xent_backward", shape=xent_sizes, sizes=MatrixElements,
    shape_args=("yhat", "labels", "out"),
    launches=(Launch("softmax_xent_backward", (Array("yhat"), Labels("labels"), Array("out"),
                                               Size("rows"), Size("n"), RealArg("scale")),
                     elementwise_launch, "n"),),
    tolerance="elementwise", writes=("out",), aliases=(("out", "yhat"),))


class SgdRanges(NamedTuple):
    """n elements and the two regularised ranges [lo, hi) (empty ones where there are fewer)."""

    n: int
    lo0: int
    hi0: int
    lo1: int
    hi1: int


def sgd_sizes(params, grads, reg, reg_ranges) -> SgdRanges | None:
    """n and the two regularised ranges (padded with empty ones; none at all when reg is 0)."""
    n = same_size(params, grads)
    if not n:
        return None
    ranges = [tuple(int(v) for v in r) for r in reg_ranges] if reg else []
    if len(ranges) > 2 or any(not 0 <= lo <= hi <= n for lo, hi in ranges):
        raise ValueError(f"sgd_step: at most two ranges within [0, {n}], got {reg_ranges}")
    ranges += [(0, 0)] * (2 - len(ranges))
    return SgdRanges(n, *ranges[0], *ranges[1])


def _sgd_step(name, tolerance) -> Op:
    """sgd_step or exact_sgd_step: the kernels take -lr (params += -lr * (grads + reg params))."""
    return Op(name=name, shape=sgd_sizes, sizes=SgdRanges,
              shape_args=("params", "grads", "reg", "reg_ranges"),
              launches=(Launch(name, (Array("params"), Array("grads"), Size("n"), Size("lo0"),
                                      Size("hi0"), Size("lo1"), Size("hi1"), RealArg("reg"),
                                      RealArg("lr", negated=True)),
                               elementwise_launch, "n"),),
              tolerance=tolerance, writes=("params", "grads"))


SGD_STEP = _sgd_step("sgd_step", "elementwise")


# ---------------------------------------------------------------- softmax: one warp per line
class SoftmaxLines(NamedTuple):
    """The lines softmax normalises, of a contiguous column-major x."""

    nlines: int
    length: int
    line_stride: int
    elem_stride: int


def softmax_sizes(x, out, axis: int) -> SoftmaxLines | None:
    if len(x.shape) != 2:
        raise ValueError(f"expected a matrix, got shape {tuple(x.shape)}")
    same_size(x, out)
    rows, cols = x.shape
    if axis == 0:
        sizes = SoftmaxLines(cols, rows, rows, 1)
    elif axis == 1:
        sizes = SoftmaxLines(rows, cols, 1, rows)
    else:
        raise ValueError(f"softmax axis must be 0 or 1, got {axis}")
    return sizes if sizes.nlines and sizes.length else None


@functools.lru_cache(maxsize=1024)
def softmax_launch(nlines: int) -> tuple[Dim3, Dim3]:
    """One warp per line, BLOCK / 32 lines per block."""
    per_block = BLOCK // 32
    return (max(1, math.ceil(nlines / per_block)), 1, 1), BLOCK_DIM


# normalised by a sum over up to a line's length of terms: a reduction's tolerance
SOFTMAX = Op(name="softmax", shape=softmax_sizes, sizes=SoftmaxLines,
             launches=(Launch("softmax_lines", (Array("x"), Array("out"), Size("nlines"),
                                                Size("length"), Size("line_stride"),
                                                Size("elem_stride")),
                              softmax_launch, "nlines"),),
             tolerance="reduction", writes=("out",), aliases=(("out", "x"),))


# ---------------------------------------------------------- reductions over a matrix's columns
class MatrixShape(NamedTuple):
    rows: int
    cols: int


def reduce_sizes(x, out) -> MatrixShape | None:
    """A column sum; zero columns still launch (the sum over nothing is 0)."""
    if len(x.shape) != 2 or tuple(out.shape) != (x.shape[0],):
        raise ValueError(f"reduce_cols: x {tuple(x.shape)} into out {tuple(out.shape)}")
    return MatrixShape(x.shape[0], x.shape[1]) if x.shape[0] else None


@functools.lru_cache(maxsize=1024)
def reduce_cols_launch(rows: int) -> tuple[Dim3, Dim3]:
    """32 rows per block, REDUCE_COLS_GROUPS column groups."""
    return (max(1, math.ceil(rows / 32)), 1, 1), (32 * REDUCE_COLS_GROUPS, 1, 1)


REDUCE_COLS = Op(name="reduce_cols", shape=reduce_sizes, sizes=MatrixShape, shape_args=("x", "out"),
                 launches=(Launch("reduce_cols", (Matrix("x"), Array("out"), Size("rows"),
                                                  Size("cols"), LeadingDim("x"), RealArg("alpha")),
                                  reduce_cols_launch, "rows"),),
                 tolerance="reduction", writes=("out",))


def label_sizes(scores, labels) -> MatrixShape | None:
    """A per-column statistic of the output layer."""
    rows, cols = _label_shapes(scores, labels)
    return MatrixShape(rows, cols) if rows and cols else None


def _per_column_statistic(name, scores, tolerance) -> Op:
    """nll_sum or count_correct: one block over the columns of `scores`, added to `acc`."""
    return Op(name=name, shape=label_sizes, sizes=MatrixShape, shape_args=(scores, "labels"),
              launches=(Launch(name, (Matrix(scores), Labels("labels"), Array("acc"),
                                      Size("rows"), Size("cols"), LeadingDim(scores)),
                               one_block_launch),),
              tolerance=tolerance, writes=("acc",))


NLL_SUM = _per_column_statistic("nll_sum", "yhat", "reduction")
COUNT_CORRECT = _per_column_statistic("count_correct", "scores", "exact")


class PartialSums(NamedTuple):
    """n elements summed in `parts` partial sums (one per block)."""

    n: int
    parts: int


def sum_squares_sizes(x) -> PartialSums | None:
    n = x.size
    if n == 0:
        return None
    check_index_range(n)
    return PartialSums(n, max(1, min(math.ceil(n / BLOCK), SUM_PARTIAL_BLOCKS)))


@functools.lru_cache(maxsize=1024)
def blocks_launch(blocks: int) -> tuple[Dim3, Dim3]:
    """`blocks` blocks of BLOCK threads (a kernel that writes one result per block)."""
    return (blocks, 1, 1), BLOCK_DIM


def read_total(backend) -> float:
    """sum_squares' value: the total its last launch left in the workspace (synchronises)."""
    return backend._read_total()


# two deterministic passes: a partial sum per block, then one block adds the partials in order
SUM_SQUARES = Op(name="sum_squares", shape=sum_squares_sizes, sizes=PartialSums,
                 launches=(Launch("sum_squares_partial", (Array("x"), Workspace("scratch"),
                                                          Size("n")),
                                  blocks_launch, "parts"),
                           Launch("sum_partials", (Workspace("scratch"), Size("parts"),
                                                   Workspace("total")),
                                  one_block_launch)),
                 tolerance="reduction", result=read_total, empty_result=0.0)


# ------------------------------------------------------------------------ the output layer
class OutputLayerSizes(NamedTuple):
    classes: int
    hidden: int
    n: int
    blocks: int


def output_layer_sizes(w2, b2, a1, labels, diff) -> OutputLayerSizes | None:
    """The fused output layer's sizes; None for zero columns."""
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
    return OutputLayerSizes(classes, hidden, n, min(math.ceil(n / cols), OUTPUT_MAX_BLOCKS))


@functools.lru_cache(maxsize=1024)
def output_layer_launch(blocks: int) -> tuple[Dim3, Dim3]:
    """`blocks` blocks of OUTPUT_THREADS (a group of OUTPUT_COLS columns each, grid-stride)."""
    return (blocks, 1, 1), (OUTPUT_THREADS, 1, 1)


# the softmax output layer and its stable cross-entropy, one launch (see reductions.cuh); its dot
# products are over the hidden units, its loss over the columns: a reduction
OUTPUT_LAYER = Op(
    name="output_layer", shape=output_layer_sizes, sizes=OutputLayerSizes,
    shape_args=("w2", "b2", "a1", "labels", "diff"),
    launches=(Launch("output_layer", (Array("w2"), Array("b2"), Array("a1"), Labels("labels"),
                                      Array("diff"), Array("nll_acc"), Workspace("output_partials"),
                                      Counter("output_ticket"), Size("classes"), Size("hidden"),
                                      Size("n"), RealArg("scale")),
                     output_layer_launch, "blocks"),),
    tolerance="reduction", writes=("diff", "nll_acc"))


class OutputBackwardSizes(NamedTuple):
    classes: int
    hidden: int
    n: int
    #: columns per chunk (0 for no columns)
    chunk: int
    #: (rows of OB_ROWS hidden units, the ones row included; chunks of the columns)
    grid: tuple[int, int]


def output_backward_split(hidden: int, n: int) -> tuple[int, int]:
    """(chunk, chunks) of output_backward's columns: as many chunks as bring the launch to
    BACKWARD_TARGET_BLOCKS blocks, at most BACKWARD_MAX_SPLIT, each at least BACKWARD_MIN_CHUNK
    columns, none empty; one where the rows alone fill the GPU or pass the tickets. From the
    shapes alone, so every GPU and both backends launch the same (the same bits)."""
    rows = math.ceil((hidden + 1) / BACKWARD_ROWS)
    if n == 0:
        return 0, 1
    split = min(math.ceil(BACKWARD_TARGET_BLOCKS / rows), BACKWARD_MAX_SPLIT,
                n // BACKWARD_MIN_CHUNK)
    if rows > BACKWARD_MAX_TICKETS or split < 1:
        split = 1
    chunk = math.ceil(n / split)
    return chunk, math.ceil(n / chunk)


def output_backward_sizes(w2, diff, a1, dw2b2, dz1) -> OutputBackwardSizes:
    """output_backward's sizes (zero columns still launch: [dW2 db2] = 0)."""
    for name, arr in (("w2", w2), ("diff", diff), ("a1", a1), ("dw2b2", dw2b2), ("dz1", dz1)):
        if len(arr.shape) != 2:
            raise ValueError(f"output_backward: {name} {tuple(arr.shape)} must be a matrix")
    classes, hidden = w2.shape
    n = a1.shape[1]
    if not 1 <= classes <= OUTPUT_MAX_CLASSES:
        raise ValueError(f"output_backward: {classes} classes; the kernel holds 1 to "
                         f"{OUTPUT_MAX_CLASSES}")
    if (tuple(diff.shape) != (classes, n) or tuple(a1.shape) != (hidden, n)
            or tuple(dw2b2.shape) != (classes, hidden + 1) or tuple(dz1.shape) != (hidden, n)):
        raise ValueError(f"output_backward: w2 {tuple(w2.shape)}, diff {tuple(diff.shape)}, "
                         f"a1 {tuple(a1.shape)}, dw2b2 {tuple(dw2b2.shape)}, "
                         f"dz1 {tuple(dz1.shape)} do not fit")
    check_index_range(hidden * n, classes * n, classes * (hidden + 1))
    chunk, split = output_backward_split(hidden, n)
    return OutputBackwardSizes(classes, hidden, n, chunk,
                               (math.ceil((hidden + 1) / BACKWARD_ROWS), split))


@functools.lru_cache(maxsize=1024)
def output_backward_launch(grid: tuple[int, int]) -> tuple[Dim3, Dim3]:
    """A block of BACKWARD_THREADS per row of hidden units and chunk of the columns."""
    return (grid[0], grid[1], 1), (BACKWARD_THREADS, 1, 1)


# [dW2 db2] and dz1 from the output layer's error in one pass over a1 (see reductions.cuh): sums
# over the columns and over the classes, as the GEMMs it replaces
OUTPUT_BACKWARD = Op(
    name="output_backward", shape=output_backward_sizes, sizes=OutputBackwardSizes,
    launches=(Launch("output_backward", (Array("w2"), Array("diff"), Array("a1"), Array("dw2b2"),
                                         Array("dz1"), Workspace("backward_partials"),
                                         Counter("backward_tickets"), Size("classes"),
                                         Size("hidden"), Size("n"), Size("chunk")),
                     output_backward_launch, "grid"),),
    tolerance="gemm", writes=("dw2b2", "dz1"))


# ---------------------------------------------------------------------------------- --exact
# core/exact.py, kernels in exact.cuh: float64 in the model; the rules do not look at the dtype
# (the kernels build for float too, without the NumPy reference's bits). Each op must give the
# NumPy reference's bits (tests/test_exact_gpu.py checks them bit for bit, special values included).
def _matrix(name, x):
    if len(x.shape) != 2:
        raise ValueError(f"{name}: expected a matrix, got shape {tuple(x.shape)}")
    return x.shape


class RowExponentSizes(NamedTuple):
    """L = op(x) is p x q: one exponent per row of L."""

    p: int
    q: int


def exact_row_exponents_sizes(x, trans, out) -> RowExponentSizes | None:
    rows, cols = _matrix("exact_row_exponents", x)
    p, q = (cols, rows) if trans else (rows, cols)
    if tuple(out.shape) != (p,):
        raise ValueError(f"exact_row_exponents: {p} x {q} rows into out {tuple(out.shape)}")
    check_index_range(p * q)
    return RowExponentSizes(p, q) if p else None


EXACT_ROW_EXPONENTS = Op(
    name="exact_row_exponents", shape=exact_row_exponents_sizes, sizes=RowExponentSizes,
    launches=(Launch("exact_row_exponents", (Matrix("x"), Array("out"), Size("p"), Size("q"),
                                             LeadingDim("x"), IntArg("trans")),
                     elementwise_launch, "p"),),
    tolerance="exact", writes=("out",))


class SplitSizes(NamedTuple):
    """L = op(x) is p0 x q0, n = p q elements with its ones row and column."""

    p0: int
    q0: int
    n: int


def exact_split_sizes(x, trans, ones_row, ones_col, exps, slices, out) -> SplitSizes | None:
    rows, cols = _matrix("exact_split", x)
    p0, q0 = (cols, rows) if trans else (rows, cols)
    p, q = p0 + bool(ones_row), q0 + bool(ones_col)
    if tuple(exps.shape) != (p,) or tuple(out.shape) != (p, int(slices) * q):
        raise ValueError(f"exact_split: L {p} x {q}, exps {tuple(exps.shape)}, "
                         f"{slices} slices into out {tuple(out.shape)} do not fit")
    check_index_range(p * q * max(int(slices), 1))
    return SplitSizes(p0, q0, p * q) if p * q and int(slices) > 0 else None


EXACT_SPLIT = Op(
    name="exact_split", shape=exact_split_sizes, sizes=SplitSizes,
    shape_args=("x", "trans", "ones_row", "ones_col", "exps", "slices", "out"),
    launches=(Launch("exact_split", (Matrix("x"), Array("exps"), Array("out"), Array("flag"),
                                     Size("p0"), Size("q0"), LeadingDim("x"), IntArg("trans"),
                                     IntArg("ones_row"), IntArg("ones_col"), IntArg("exp_shift"),
                                     IntArg("beta"), IntArg("slices"), IntArg("reverse")),
                     elementwise_launch, "n"),),
    tolerance="exact", writes=("out", "flag"))


class CombineSizes(NamedTuple):
    """out is m x n, from `count` groups: total = m n elements."""

    m: int
    n: int
    count: int
    total: int


def exact_combine_sizes(groups, row_exps, col_exps, out) -> CombineSizes | None:
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
    return CombineSizes(m, n, count, m * n) if m * n and count else None


EXACT_COMBINE = Op(
    name="exact_combine", shape=exact_combine_sizes, sizes=CombineSizes,
    shape_args=("groups", "row_exps", "col_exps", "out"),
    launches=(Launch("exact_combine", (Array("groups"), Array("row_exps"), Array("col_exps"),
                                       Array("out"), Size("m"), Size("n"), Size("count"),
                                       IntArg("row_shift"), IntArg("col_shift"), IntArg("beta")),
                     elementwise_launch, "total"),),
    tolerance="exact", writes=("out",))

EXACT_SIGMOID = _elementwise("exact_sigmoid", (Array("x"), Array("out"), Size("n")),
                             tolerance="exact", writes=("out",), aliases=(("out", "x"),))
EXACT_SIGMOID_BACKWARD = _elementwise("exact_sigmoid_backward",
                                      (Array("grad"), Array("a"), Array("out"), Size("n")),
                                      tolerance="exact", writes=("out",),
                                      aliases=(("out", "grad"),))


class ClassColumns(NamedTuple):
    """`classes` logits for each of n columns."""

    classes: int
    n: int


def exact_output_layer_sizes(z, labels, diff) -> ClassColumns | None:
    """The output layer from the logits."""
    classes, n = _matrix("exact_output_layer", z)
    if not 1 <= classes <= OUTPUT_MAX_CLASSES:
        raise ValueError(f"exact_output_layer: {classes} classes; the kernel holds 1 to "
                         f"{OUTPUT_MAX_CLASSES}")
    if tuple(labels.shape) != (n,) or tuple(diff.shape) != (classes, n):
        raise ValueError(f"exact_output_layer: z {tuple(z.shape)}, labels {tuple(labels.shape)}, "
                         f"diff {tuple(diff.shape)} do not fit")
    check_index_range(classes * n)
    return ClassColumns(classes, n) if n else None


# diff is exact; the loss sum over the columns is the one order-dependent sum (a reduction)
EXACT_OUTPUT_LAYER = Op(
    name="exact_output_layer", shape=exact_output_layer_sizes, sizes=ClassColumns,
    shape_args=("z", "labels", "diff"),
    launches=(Launch("exact_output_layer", (Array("z"), Labels("labels"), Array("diff"),
                                            Array("nll_acc"), Size("classes"), Size("n"),
                                            RealArg("scale")),
                     one_block_launch),),
    tolerance="reduction", writes=("diff", "nll_acc"), aliases=(("diff", "z"),))
EXACT_SGD_STEP = _sgd_step("exact_sgd_step", "exact")


# ------------------------------------------------------------------------ the planned GEMMs
def _planned(name, writes, params, kernels, split_kernels, x3_kernels, x3_split_kernels) -> Op:
    """A GEMM: its kernels (the tiles', then the split ones, which take the split-K workspaces
    too, then the --gemm tf32x3 ones: mma.sync, then wgmma, then wgmma split), launched as
    backends/gemm_plan.py plans them."""
    params = gemm_params(params)
    split_params = params + gemm_params(gemm_plan.GEMM_SPLIT_PARAMS)
    return Op(name=name, planned=True, tolerance="gemm", writes=writes,
              launches=tuple(Launch(kernel, params, None) for kernel in kernels)
              + tuple(Launch(kernel, split_params, None) for kernel in split_kernels)
              + tuple(Launch(kernel, params, None) for kernel in x3_kernels)
              + tuple(Launch(kernel, split_params, None) for kernel in x3_split_kernels))


GEMM = _planned("gemm", ("c",), gemm_plan.GEMM_PARAMS, gemm_plan.GEMM_KERNELS,
                gemm_plan.GEMM_SPLIT_KERNELS,
                gemm_plan.GEMM_X3_KERNELS + gemm_plan.GEMM_WGMMA_KERNELS,
                gemm_plan.GEMM_WGMMA_SPLIT_KERNELS)
# the fused GEMMs (core.ops FUSED_OPS): planned like the GEMM (gemm_plan.GEMM_VARIANTS)
GEMM_BIAS_SIGMOID, GEMM_SIGMOID_BACKWARD, GEMM_WITH_BIAS_GRAD = (
    _planned(v.op, ("out",), v.params, v.tile_kernels, v.split_kernels,
             v.x3_kernels + v.wgmma_kernels, v.wgmma_split_kernels)
    for v in (gemm_plan.GEMM_VARIANTS[name] for name in
              ("gemm_bias_sigmoid", "gemm_sigmoid_backward", "gemm_with_bias_grad")))


# ------------------------------------------------------------------------------- the table
OPS: tuple[Op, ...] = (
    FILL, GEMM, BIAS_SIGMOID, ADD_BIAS, SIGMOID, SOFTMAX, SIGMOID_BACKWARD, REDUCE_COLS,
    SOFTMAX_XENT_BACKWARD, AXPY, SGD_STEP, GEMM_BIAS_SIGMOID, GEMM_SIGMOID_BACKWARD,
    GEMM_WITH_BIAS_GRAD, NLL_SUM, OUTPUT_LAYER, OUTPUT_BACKWARD, EXACT_ROW_EXPONENTS, EXACT_SPLIT,
    EXACT_COMBINE, EXACT_SIGMOID, EXACT_SIGMOID_BACKWARD, EXACT_OUTPUT_LAYER, EXACT_SGD_STEP, COUNT_CORRECT,
    SUM_SQUARES,
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
