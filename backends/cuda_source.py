"""What the CuPy and PyCUDA backends share about backends/kernels.cu: the source, the kernels'
names and signatures, the compile options per dtype, and every launch-geometry decision.

Pure Python (NumPy at most): importing this module never touches a GPU library, so the compile test
and ``--list-backends`` work anywhere. Both backends take their shapes, grids and argument lists from
here, so a kernel's launch can only be wrong in one place.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

KERNELS_CU = Path(__file__).with_name("kernels.cu")

#: C type that -DREAL names for each supported dtype
REAL_CTYPE = {"float32": "float", "float64": "double"}

#: threads per block of the element-wise and single-block reduction kernels
BLOCK = 256
#: grid-stride kernels never need more blocks than this to saturate an H100-class GPU
MAX_GRID = 4096
#: blocks of sum_squares_partial, and so the size of each backend's device scratch buffer
SUM_PARTIAL_BLOCKS = 256
#: column groups of the reduce_cols kernel (RC_GROUPS in kernels.cu): block = 32 rows x groups
REDUCE_COLS_GROUPS = 16
#: largest element count a kernel may index with its 32-bit ints (with headroom for a grid-stride
#: loop's last step, idx + blocks*threads, to stay below 2^31 too)
MAX_ELEMENTS = 2**31 - 1 - MAX_GRID * BLOCK


@functools.lru_cache(maxsize=1)
def read_source() -> str:
    """The text of kernels.cu (read once per process)."""
    return KERNELS_CU.read_text(encoding="utf-8")


def real_ctype(dtype) -> str:
    name = np.dtype(dtype).name
    if name not in REAL_CTYPE:
        raise ValueError(f"kernels.cu is built for float32 or float64, not {name}")
    return REAL_CTYPE[name]


def compile_options(dtype) -> tuple[str, ...]:
    """Compiler options that select the precision of kernels.cu (same for NVRTC and nvcc)."""
    return (f"-DREAL={real_ctype(dtype)}",)


def find_nvcc() -> str | None:
    """Path of nvcc: $PATH first, then $CUDA_HOME/bin, then /usr/local/cuda/bin; None if absent."""
    found = shutil.which("nvcc")
    if found:
        return found
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home:
            candidate = Path(home) / "bin" / "nvcc"
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    return None


# ------------------------------------------------------------------------------------------- GEMM
@dataclass(frozen=True)
class GemmTile:
    """One GEMM tile shape of kernels.cu: a block computes bm x bn of C with `threads` threads."""

    name: str
    bm: int
    bn: int
    threads: int
    #: relative throughput per multiply-add when the GPU is full (bigger tiles reuse more)
    efficiency: float


GEMM_TILES = {
    "t128": GemmTile("t128", 128, 128, 256, 1.0),  # 8 x 8 per thread
    "t64": GemmTile("t64", 64, 64, 256, 0.85),     # 8 x 8 per thread, K split over 4 groups (float)
    "s16": GemmTile("s16", 16, 16, 256, 0.5),      # 4 x 4 per thread, K split over 16 groups
}

#: the skinny split-K tile is used for at most this many rows of C (the 10-class layer)
SKINNY_MAX_M = 16
#: at most this deep a product is all epilogue (da1 = W2^T diff has K = 10): more, smaller tiles
SHORT_K = 64

GEMM_OPS = ("nn", "nt", "tn", "tt")


def gemm_kernel_name(tile: str, trans_a: bool, trans_b: bool) -> str:
    return f"gemm_{tile}_{'t' if trans_a else 'n'}{'t' if trans_b else 'n'}"


def pick_gemm_tile(m: int, n: int, num_sms: int, k: int | None = None) -> str:
    """Tile for an M x N (x K) product on a GPU with `num_sms` multiprocessors.

    Model: blocks spread evenly over the multiprocessors, so the busiest one computes
    ceil(blocks / SMs) tiles; its time is that many tiles' multiply-adds over the tile's efficiency.
    Big tiles win on big products (H=4096), 64 x 64 on the model's mid-sized ones (H=1024, n=800,
    where 128 x 128 would leave most of the GPU idle) and on short K, and the split-K tile on
    M <= 16 rows. Measured on an H100 (132 SMs) at the model's shapes; see the tests for the picks.
    """
    if m <= SKINNY_MAX_M:
        return "s16"
    if k is not None and k <= SHORT_K:
        return "t64"
    best, best_cost = "t64", math.inf
    for name in ("t128", "t64"):
        tile = GEMM_TILES[name]
        blocks = math.ceil(m / tile.bm) * math.ceil(n / tile.bn)
        cost = math.ceil(blocks / max(num_sms, 1)) * tile.bm * tile.bn / tile.efficiency
        if cost < best_cost:
            best, best_cost = name, cost
    return best


def gemm_grid(tile: str, m: int, n: int) -> tuple[int, int, int]:
    t = GEMM_TILES[tile]
    return (math.ceil(m / t.bm), math.ceil(n / t.bn), 1)


@dataclass(frozen=True)
class GemmPlan:
    kernel: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    m: int
    n: int
    k: int


def plan_gemm(a_shape, b_shape, c_shape, trans_a: bool, trans_b: bool, num_sms: int,
              tile: str | None = None) -> GemmPlan | None:
    """Check the shapes of C = op(A) op(B) and choose the launch; None when C is empty.

    K = 0 still gets a plan (the kernel then writes beta * C). `tile` forces a tile (tests, tuning).
    """
    if len(a_shape) != 2 or len(b_shape) != 2 or len(c_shape) != 2:
        raise ValueError(f"gemm takes matrices, got shapes {a_shape}, {b_shape}, {c_shape}")
    m, k = (a_shape[1], a_shape[0]) if trans_a else (a_shape[0], a_shape[1])
    kb, n = (b_shape[1], b_shape[0]) if trans_b else (b_shape[0], b_shape[1])
    if k != kb or tuple(c_shape) != (m, n):
        raise ValueError(
            f"gemm shape mismatch: op(A) {m}x{k}, op(B) {kb}x{n}, C {c_shape[0]}x{c_shape[1]}")
    if m == 0 or n == 0:
        return None
    tile = tile or pick_gemm_tile(m, n, num_sms, k)
    threads = GEMM_TILES[tile].threads
    return GemmPlan(gemm_kernel_name(tile, trans_a, trans_b), gemm_grid(tile, m, n),
                    (threads, 1, 1), m, n, k)


def leading_dim(shape, col_stride_elems: int | None) -> int:
    """Leading dimension of a column-major matrix; a matrix of <= 1 column may report any stride."""
    rows = shape[0]
    cols = shape[1] if len(shape) > 1 else 1
    if cols <= 1 or col_stride_elems is None:
        return max(rows, 1)
    return max(int(col_stride_elems), 1)  # an empty matrix may report a stride of 0


def check_index_range(*sizes: int) -> None:
    for size in sizes:
        if size > MAX_ELEMENTS:
            raise ValueError(f"{size} elements: kernels.cu indexes with 32-bit ints (max {MAX_ELEMENTS})")


# ---------------------------------------------------------------------------- other launches
# Cached: the ops ask on every launch, for the few sizes a training run has.
@functools.lru_cache(maxsize=1024)
def elementwise_grid(n: int) -> tuple[int, int, int]:
    """Grid for a grid-stride kernel over n > 0 elements."""
    return (max(1, min(math.ceil(n / BLOCK), MAX_GRID)), 1, 1)


@functools.lru_cache(maxsize=1024)
def softmax_grid(nlines: int) -> tuple[int, int, int]:
    """One warp per line, BLOCK / 32 lines per block."""
    per_block = BLOCK // 32
    return (max(1, math.ceil(nlines / per_block)), 1, 1)


@functools.lru_cache(maxsize=1024)
def reduce_cols_launch(rows: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    return (max(1, math.ceil(rows / 32)), 1, 1), (32 * REDUCE_COLS_GROUPS, 1, 1)


def sum_squares_grid(n: int) -> tuple[int, int, int]:
    return (max(1, min(math.ceil(n / BLOCK), SUM_PARTIAL_BLOCKS)), 1, 1)


ONE_BLOCK = (1, 1, 1)
BLOCK_DIM = (BLOCK, 1, 1)


# ------------------------------------------------------------------------ kernel signatures
# Argument kinds, in order: P = device pointer, i = 32-bit int, r = the REAL of the build.
# The PyCUDA backend turns these into prepare() formats, the CuPy backend into NumPy scalar types.
_GEMM_SIGNATURE = "PPPiiiiiirr"

KERNEL_SIGNATURES: dict[str, str] = {
    **{gemm_kernel_name(t, ops[0] == "t", ops[1] == "t"): _GEMM_SIGNATURE
       for t in GEMM_TILES for ops in GEMM_OPS},
    "fill_real": "Pir",
    "fill_int": "Pii",
    "bias_sigmoid": "PPPii",
    "add_bias": "PPii",
    "sigmoid": "PPi",
    "sigmoid_backward": "PPPi",
    "softmax_xent_backward": "PPPiir",
    "axpy": "PPir",
    "softmax_lines": "PPiiii",
    "reduce_cols": "PPiiir",
    "nll_sum": "PPPiii",
    "count_correct": "PPPiii",
    "sum_squares_partial": "PPi",
    "sum_partials": "PiP",
}

KERNEL_NAMES: tuple[str, ...] = tuple(KERNEL_SIGNATURES)


def pycuda_format(signature: str, dtype) -> str:
    """prepare() format of a kernel signature: P stays, i stays, r becomes f or d."""
    return signature.replace("r", "f" if real_ctype(dtype) == "float" else "d")


# ------------------------------------------------------------------------- shape checks
# The ops' shape rules, shared by both backends (they see only .shape and .size).
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


def bias_shapes(z, bias, out) -> tuple[int, int]:
    """(rows, elements) of z + bias 1^T."""
    if len(z.shape) != 2:
        raise ValueError(f"expected a matrix, got shape {tuple(z.shape)}")
    rows = z.shape[0]
    if tuple(bias.shape) != (rows,):
        raise ValueError(f"bias of shape {tuple(bias.shape)} for {rows} rows")
    return rows, same_size(z, out)


def softmax_lines(x, out, axis: int) -> tuple[int, int, int, int]:
    """(lines, line length, line stride, element stride) of a contiguous column-major x."""
    if len(x.shape) != 2:
        raise ValueError(f"expected a matrix, got shape {tuple(x.shape)}")
    same_size(x, out)
    rows, cols = x.shape
    if axis == 0:
        return cols, rows, rows, 1
    if axis == 1:
        return rows, cols, 1, rows
    raise ValueError(f"softmax axis must be 0 or 1, got {axis}")


def reduce_shapes(x, out) -> tuple[int, int]:
    if len(x.shape) != 2 or tuple(out.shape) != (x.shape[0],):
        raise ValueError(f"reduce_cols: x {tuple(x.shape)} into out {tuple(out.shape)}")
    return x.shape[0], x.shape[1]


def label_shapes(yhat, labels) -> tuple[int, int]:
    if len(yhat.shape) != 2 or tuple(labels.shape) != (yhat.shape[1],):
        raise ValueError(f"{tuple(labels.shape)} labels for scores of shape {tuple(yhat.shape)}")
    return yhat.shape[0], yhat.shape[1]
