"""GEMM launch planning for the GPU backends: the tiles and kernels of backends/gemm_kernels.cuh
(read from its table), which tile an M x N x K product gets, and the whole launch (kernel, grid,
block, sizes) of one call's shapes.

Pure Python: importing this module never touches a GPU library. The GEMM is the one op whose launch
is chosen per shape rather than computed from the operand sizes alone, so it is planned here once
per operand layout (CudaBackend caches the plans) instead of going through the generic dispatch of
the op table; it still has its entry there (backends/op_table.py: signature, reference, tolerance).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from backends.cuda_compile import REAL_CTYPE, SOURCE_DIR

from core.ops import GEMM_MODES as CONTRACT_GEMM_MODES


# ------------------------------------------------------------------------ the kernel table
# backends/gemm_kernels.cuh defines the GEMM kernels from one table, GEMM_TILE_TABLE: a row per tile
# (its name, the build that has its kernels, its tile of C and threads, and whether it has the
# short-K and split-K kernel families), each family a macro of one GEMM_KERNEL line a kernel. This
# module reads that table: the tiles, their geometry and every kernel name below come from it, so
# the planner names exactly the kernels the builds define (tests/test_cuda_compile.py checks the
# compiled builds against it).

GEMM_KERNELS_CUH = SOURCE_DIR / "gemm_kernels.cuh"

_TABLE = re.compile(r"#define GEMM_TILE_TABLE\(X\)((?:[^\n]*\\\n)*[^\n]*)")
_ROW = re.compile(r"X\(\s*(\w+),\s*(\w+),\s*(\d+),\s*(\d+),\s*(\d+),\s*([01]),\s*([01]),\s*(\d+)\s*\)")
_FAMILY = re.compile(r"#define GEMM_(\w+)_KERNELS\(tile\)((?:[^\n]*\\\n)*[^\n]*)")
_KERNEL = re.compile(r"GEMM_KERNEL\(tile, (\w+), \w+, \w+, (\w*), (\w+),")


@dataclass(frozen=True)
class GemmTileRow:
    """A row of GEMM_TILE_TABLE: a block of `threads` threads computes bm x bn of C."""

    tile: str
    #: the build with its kernels: "any", or the C type of -DREAL ("float", "double")
    build: str
    bm: int
    bn: int
    threads: int
    #: its kernel families (GEMM_<FAMILY>_KERNELS): "base", then "short_k", "split" where it has them
    families: tuple[str, ...]
    #: bytes of dynamic shared memory a block of it takes (0: static shared memory only)
    dyn_smem: int = 0


@dataclass(frozen=True)
class GemmKernelLine:
    """A GEMM_KERNEL line of a family: the kernel gemm_<tile>_<ops><suffix>(<args>)."""

    ops: str
    suffix: str
    #: the C macro of its parameters (GEMM<SUFFIX>_ARGS)
    args: str


def read_kernel_table(text: str) -> tuple[dict[str, GemmTileRow],
                                          dict[str, tuple[GemmKernelLine, ...]]]:
    """The rows of gemm_kernels.cuh's GEMM_TILE_TABLE by tile, and each kernel family's lines."""
    table = _TABLE.search(text)
    if table is None:
        raise ValueError("no GEMM_TILE_TABLE(X) in gemm_kernels.cuh")
    rows = {}
    for tile, build, bm, bn, threads, short_k, split, dyn_smem in _ROW.findall(table.group(1)):
        families = ("base",) + (("short_k",) if short_k == "1" else ()) + (
            ("split",) if split == "1" else ())
        rows[tile] = GemmTileRow(tile, build, int(bm), int(bn), int(threads), families,
                                 int(dyn_smem))
    families = {name.lower(): tuple(GemmKernelLine(*line) for line in _KERNEL.findall(body))
                for name, body in _FAMILY.findall(text)}
    return rows, families


GEMM_TILE_TABLE, GEMM_KERNEL_FAMILIES = read_kernel_table(
    GEMM_KERNELS_CUH.read_text(encoding="utf-8"))


def gemm_kernel_name(tile: str, trans_a: bool, trans_b: bool) -> str:
    return f"gemm_{tile}_{'t' if trans_a else 'n'}{'t' if trans_b else 'n'}"


def tile_kernels(tile: str) -> tuple[str, ...]:
    """Every kernel gemm_kernels.cuh defines for `tile`, family by family."""
    return tuple(f"gemm_{tile}_{line.ops}{line.suffix}"
                 for family in GEMM_TILE_TABLE[tile].families
                 for line in GEMM_KERNEL_FAMILIES[family])


#: every GEMM kernel of the table -> the build that has it ("any", "float", "double")
GEMM_KERNEL_BUILD: dict[str, str] = {kernel: row.build for row in GEMM_TILE_TABLE.values()
                                     for kernel in tile_kernels(row.tile)}


#: every GEMM kernel whose tile takes dynamic shared memory -> its bytes (the backends set the
#: kernel's limit to it once and launch it with it)
GEMM_KERNEL_DYN_SMEM: dict[str, int] = {kernel: row.dyn_smem for row in GEMM_TILE_TABLE.values()
                                        if row.dyn_smem for kernel in tile_kernels(row.tile)}


def launch_dyn_smem(kernel: str, wgmma: bool) -> int:
    """The dynamic shared memory a build launches `kernel` with (0: none, its limit left alone):
    its tile's, but none for a wgmma kernel in a build without wgmma. That kernel is only a trap
    there, never planned, and its tile's bytes may pass the device's limit (w128's 192 KB is more
    than an A100 allows), so raising the limit would fail the whole build's load."""
    if not wgmma and any(kernel in tile_kernels(t) for t in GEMM_WGMMA_TILES):
        return 0
    return GEMM_KERNEL_DYN_SMEM.get(kernel, 0)


def gemm_kernels_for(dtype_name: str) -> tuple[str, ...]:
    """The GEMM kernels of the float32 or float64 build (no other is compiled there: each is one
    the planner can launch in that build)."""
    ctype = REAL_CTYPE[dtype_name]
    return tuple(k for k, build in GEMM_KERNEL_BUILD.items() if build in ("any", ctype))


# ------------------------------------------------------------------------ tiles
@dataclass(frozen=True)
class GemmTile:
    """A GEMM tile the planner picks: a block computes bm x bn of C with `threads` threads."""

    name: str
    bm: int
    bn: int
    threads: int
    #: relative throughput per multiply-add when the GPU is full (bigger tiles reuse more)
    efficiency: float


# ------------------------------------------------------------------------ GEMM modes (--gemm)
# simt (the default): the run's own precision, IEEE: in float32 the FP32 FMA kernels (gemm_simt.cuh),
# in float64 on sm_80+ the FP64 tensor-core tiles (gemm_tc64.cuh), below that the FP64 FMA kernels. tf32x3 (float32 only, sm_80+): the tensor-core twins of
# gemm_tf32x3.cuh, with the error-compensated three-product split. Each SIMT tile has a twin of the
# same size and threads (GEMM_X3_TILE), so the planner picks the SIMT tile and names its twin; the
# twins have no split-K kernels (the Hopper tiles below do).
GEMM_MODES = CONTRACT_GEMM_MODES  # core.ops names them: the one list (core imports no backend)
GEMM_X3_TILE = {"t128": "x128", "t64": "x64", "s16": "x16"}
#: the least compute capability with the TF32 mma and cvt.rna.tf32 instructions
GEMM_X3_MIN_CAPABILITY = (8, 0)
#: the Hopper tiles (gemm_wgmma.cuh: TF32x3 on wgmma.mma_async, a producer warpgroup and two
#: consumers). With plan_gemm's `wgmma` (a build for sm_90a; elsewhere their kernels trap) tf32x3
#: puts every product of the SIMT tiles in GEMM_WGMMA_FOR, but short K, on the tile and split
#: over K of least cost by pick_wgmma (a forced SIMT tile: on its GEMM_WGMMA_FOR tile), each tile
#: with its own speed: a block of w64 (128 x 64, half of w128's tile) takes 0.77 of a w128
#: block's time, i.e. 0.65 of its rate (H100, check_wgmma.py: z1 4096x3200x784 in 7 waves of
#: w128, 382 us, or 13 of w64, 544 us). One block per multiprocessor each (their shared memory).
#: The split costs (SPLIT_BLOCK_OVERHEAD_K) are the SIMT tiles' fit, not yet measured on these.
#: Where the variant has no wgmma kernel, the GEMM_X3_TILE twin.
GEMM_WGMMA_EFFICIENCY = {"w128": 1.0, "w64": 0.65}
GEMM_WGMMA_TILES = tuple(GEMM_WGMMA_EFFICIENCY)
GEMM_WGMMA_FOR = {"t128": "w128", "t64": "w64"}
GEMM_WGMMA_MIN_CAPABILITY = (9, 0)

#: the relative efficiency of each tile the planner picks: t128 8 x 8 per thread; t64 8 x 8 per
#: thread, K split over 4 groups (float); s16 4 x 4 per thread, K split over 16 groups; tc64, tc128
#: float64 on the FP64 tensor cores, warps of 32 x 32 mma.sync blocks (4 or 8)
_EFFICIENCY = {"t128": 1.0, "t64": 0.85, "s16": 0.5, "tc64": 1.0, "tc128": 1.0}
#: the tiles the planner picks (every row of the table but the TF32x3 twins), geometry from it
GEMM_TILES = {row.tile: GemmTile(row.tile, row.bm, row.bn, row.threads, _EFFICIENCY[row.tile])
              for row in GEMM_TILE_TABLE.values()
              if row.tile not in {*GEMM_X3_TILE.values(), *GEMM_WGMMA_TILES}}

#: the tiles that run on the FP64 tensor cores: picked only where plan_gemm's `tc64` says the
#: build and device have them (float64, compute capability >= TC64_MIN_CAPABILITY); a forced one
#: runs as TC64_FALLBACK elsewhere
TC64_TILES = tuple(t for t in GEMM_TILES if GEMM_TILE_TABLE[t].build == "double")
#: tc128 (a third fewer slab loads per multiply-add than tc64, half the blocks) once its tiles give
#: every multiprocessor this many blocks (its residency: two by registers); tc64 below
TC128_MIN_BLOCKS_PER_SM = 2
TC64_FALLBACK = "t64"
TC64_MIN_CAPABILITY = (8, 0)


def tc64_eligible(dtype_name: str, capability: tuple[int, int]) -> bool:
    """Whether the tensor-core tiles (TC64_TILES) run: a float64 build (the only one with their
    kernels) on an sm_80+ device (mma.sync .f64; below, their mma traps and they are never picked)."""
    return dtype_name == "float64" and tuple(capability) >= TC64_MIN_CAPABILITY

#: the skinny split-K tile is used for at most this many rows of C (the 10-class layer)
SKINNY_MAX_M = 16
#: at most this deep a product is all epilogue (da1 = W2^T diff has K = 10): more, smaller tiles
SHORT_K = 64

#: the transpose pairs, as they appear in the kernel names (n = as is, t = transposed): the plain
#: GEMM's, every tile has a kernel for each
GEMM_OPS = tuple(line.ops for line in GEMM_KERNEL_FAMILIES["base"] if not line.suffix)

#: parameters of every gemm_* kernel (GEMM_ARGS): kind:name, kinds as in op_table
GEMM_PARAMS = "M:a, M:b, M:c, i:m, i:n, i:k, i:lda, i:ldb, i:ldc, r:alpha, r:beta"
#: positions of the sizes in GEMM_PARAMS (m, n, k, lda, ldb, ldc): a plan fixes them
GEMM_SIZE_POSITIONS = range(3, 9)

#: the plain GEMM's kernels of the planner's tiles, one per tile and transpose pair
GEMM_KERNELS: tuple[str, ...] = tuple(gemm_kernel_name(t, ops[0] == "t", ops[1] == "t")
                                      for t in GEMM_TILES for ops in GEMM_OPS)
#: the plain GEMM's TF32x3 kernels (--gemm tf32x3), one per tile and pair
GEMM_X3_KERNELS: tuple[str, ...] = tuple(gemm_kernel_name(GEMM_X3_TILE[t], ops[0] == "t",
                                                          ops[1] == "t")
                                         for t in GEMM_X3_TILE for ops in GEMM_OPS)
#: the plain GEMM's wgmma TF32x3 kernels (tf32x3 with plan_gemm's `wgmma`), one per tile and pair
GEMM_WGMMA_KERNELS: tuple[str, ...] = tuple(gemm_kernel_name(t, ops[0] == "t", ops[1] == "t")
                                            for t in GEMM_WGMMA_TILES for ops in GEMM_OPS)

# ------------------------------------------------------------------------ cross-block split-K
# A product whose tiles leave most multiprocessors idle (z1 and [dW1 db1] at H = 256: 52 tiles of
# 64 x 64 on 132 SMs, each walking all of K; [dW2 db2]: 17 to 65 tiles of 16 x 16), or whose deep
# K is better spread over more blocks (K = 3200), runs as S blocks per tile (grid.z = S), each over
# its share of K; the last block of a tile adds the S partial tiles in a fixed order (gemm.cuh,
# SplitK). Kernels: the tile's kernel name + "_split", two parameters more (the workspaces).

#: the tiles with split kernels, and the transpose pairs of the plain GEMM's split kernels
GEMM_SPLIT_TILES = tuple(t for t in GEMM_TILES if "split" in GEMM_TILE_TABLE[t].families)
GEMM_SPLIT_OPS = tuple(line.ops for line in GEMM_KERNEL_FAMILIES["split"]
                       if line.suffix == "_split")
#: reals of one workspace slot (64 x 64, t64's and tc64's tile; an s16 partial takes a sixteenth)
GEMM_SPLIT_TILE_ELEMS = 64 * 64
#: workspace capacity, fixed (CudaBackend._start allocates it before any capture): partial-tile
#: slots (room for a deep product split over several waves: [dW1 db1] at H = 1024, n = 3200 is
#: 208 tiles x 5; 19 MB in float32, 39 MB in float64) and tickets (one per tile)
GEMM_SPLIT_SLOTS = 8 * 148
GEMM_SPLIT_TICKETS = 320
#: the most splits pick_gemm_split gives, and the least K each split gets (4 slabs of 32)
GEMM_SPLIT_MAX = 8
GEMM_SPLIT_MIN_K = 128
#: the kernels' K ranges are multiples of this (gemm.cuh SPLIT_K_ALIGN)
SPLIT_K_ALIGN = 32
#: the split cost model (split_cost): the blocks it counts as resident on an SM (t64's launch bound
#: in float; it fits the measured tc64 and s16 picks too) and a block's fixed cost in K-equivalents
#: (filling its pipeline, the partials' reduction, the epilogue). Fitted to tools/bench_gemm.py --sweep on an H100 (float32 t64; tc64 alike):
#: z1 at H = 256, n = 800 (52 tiles) is fastest at S = 5 (24.7 us; S = 3: 31.3, unsplit: more),
#: [dW1 db1] at H = 1024, n = 3200 (208 tiles, K = 3200) at S = 5 (190 us against 223 unsplit),
#: z1 and [dW1 db1] at H = 1024, n = 800 (208 tiles, K = 800) unsplit (59 us; S = 5: 64).
SPLIT_BLOCKS_PER_SM = 2
SPLIT_BLOCK_OVERHEAD_K = 128
#: the split kernels' extra parameters (GEMM_WS_ARGS), kinds as in op_table
GEMM_SPLIT_PARAMS = "W:gemm_partials, C:gemm_tickets"


def gemm_split_kernel_name(tile: str, trans_a: bool, trans_b: bool) -> str:
    return gemm_kernel_name(tile, trans_a, trans_b) + "_split"


#: the plain GEMM's split kernels
GEMM_SPLIT_KERNELS: tuple[str, ...] = tuple(
    gemm_split_kernel_name(t, ops[0] == "t", ops[1] == "t")
    for t in GEMM_SPLIT_TILES for ops in GEMM_SPLIT_OPS)
#: the plain GEMM's split kernels of the Hopper tiles (tf32x3 with plan_gemm's `wgmma`)
GEMM_WGMMA_SPLIT_KERNELS: tuple[str, ...] = tuple(
    name for t in GEMM_WGMMA_TILES for ops in GEMM_SPLIT_OPS
    if (name := gemm_split_kernel_name(t, ops[0] == "t", ops[1] == "t")) in GEMM_KERNEL_BUILD)


def split_fits(tile: str, tiles: int, split: int) -> bool:
    """Whether `split` blocks per tile over `tiles` tiles of `tile` (any row of the table) fit the
    fixed workspace."""
    t = GEMM_TILE_TABLE[tile]
    return (tiles <= GEMM_SPLIT_TICKETS
            and tiles * split * t.bm * t.bn <= GEMM_SPLIT_SLOTS * GEMM_SPLIT_TILE_ELEMS)


def split_chunk(k: int, split: int) -> int:
    """The K range of each of `split` blocks, as the split kernels compute it: K / S rounded up to
    a multiple of SPLIT_K_ALIGN (the last ranges may be short or empty). S = 1: all of K."""
    if split == 1:
        return k
    return -(-(-(-k // split)) // SPLIT_K_ALIGN) * SPLIT_K_ALIGN


def split_cost(tiles: int, k: int, split: int, num_sms: int) -> int:
    """Model of a split product's time: the waves of its tiles * S blocks over the SMs' resident
    slots, each wave as long as one block's K range plus a block's fixed cost."""
    waves = math.ceil(tiles * split / (SPLIT_BLOCKS_PER_SM * num_sms))
    return waves * (split_chunk(k, split) + SPLIT_BLOCK_OVERHEAD_K)


def split_candidates(tile: str, tiles: int, k: int) -> list[int]:
    """The splits S > 1 a product of `tiles` tiles of `tile` over K may take: at most
    GEMM_SPLIT_MAX, each at least GEMM_SPLIT_MIN_K deep, no K range empty, fitting the workspace
    (none where K is under 2 GEMM_SPLIT_MIN_K)."""
    splits = []
    for split in range(2, min(GEMM_SPLIT_MAX, k // GEMM_SPLIT_MIN_K) + 1):
        split = math.ceil(k / split_chunk(k, split))  # (fewer, where the rounding leaves one empty)
        if not split_fits(tile, tiles, split):
            break
        if split not in splits:
            splits.append(split)
    return splits


def pick_gemm_split(tile: str, m: int, n: int, k: int, num_sms: int) -> int:
    """S, the blocks per tile of C over K: the S of least split_cost among split_candidates; the
    unsplit kernel (S = 1) on a tie. Splits where tiles alone leave SMs idle (H = 256) and where
    a deep K spreads over more, fuller waves (K = 3200 at H = 1024)."""
    if tile not in GEMM_SPLIT_TILES:
        return 1
    gx, gy, _ = gemm_grid(tile, m, n)
    tiles = gx * gy
    best, best_cost = 1, split_cost(tiles, k, 1, num_sms)
    for split in split_candidates(tile, tiles, k):
        cost = split_cost(tiles, k, split, num_sms)
        if cost < best_cost:
            best, best_cost = split, cost
    return best


@dataclass(frozen=True)
class GemmVariant:
    """A fused GEMM (core.ops FUSED_OPS): the GEMM tiles with an epilogue (gemm_kernels.cuh's
    families), for one transpose pair and the tiles that have its kernels."""

    #: the fused op of core.ops.Backend
    op: str
    #: kernel-name suffix: gemm_<tile>_<ops>_<suffix>
    suffix: str
    #: the transpose pair ("nn", "tn", "nt")
    ops: str
    #: the planner's tiles with its kernel; a pick outside them becomes `fallback`
    tiles: tuple[str, ...]
    fallback: str
    #: the kernel's parameters (GEMM_<VARIANT>_ARGS), kinds as in op_table, operands named as the
    #: op's parameters
    params: str
    #: True: op(B) gets a virtual last column of ones, C one column more than op(B) (bias gradient)
    ones: bool = False
    #: the tiles with a split-K kernel (gemm_<tile>_<ops>_<suffix>_split)
    split_tiles: tuple[str, ...] = ()

    def kernel(self, tile: str, split: bool = False) -> str:
        return f"gemm_{tile}_{self.ops}_{self.suffix}" + ("_split" if split else "")

    @property
    def kernels(self) -> tuple[str, ...]:
        """Every kernel of the variant: one per tile, then the split ones, then the TF32x3 ones
        (mma.sync, then wgmma, then wgmma split over K)."""
        return (self.tile_kernels + self.split_kernels + self.x3_kernels + self.wgmma_kernels
                + self.wgmma_split_kernels)

    @property
    def x3_kernels(self) -> tuple[str, ...]:
        """The TF32x3 twins of the tile kernels (--gemm tf32x3; gemm_tf32x3.cuh)."""
        return tuple(self.kernel(GEMM_X3_TILE[t]) for t in self.tiles if t in GEMM_X3_TILE)

    @property
    def wgmma_kernels(self) -> tuple[str, ...]:
        """The wgmma TF32x3 kernels of the variant (tf32x3 with `wgmma`; gemm_wgmma.cuh): those
        of GEMM_WGMMA_TILES that the table gives its family."""
        return tuple(self.kernel(t) for t in GEMM_WGMMA_TILES
                     if self.kernel(t) in GEMM_KERNEL_BUILD)

    @property
    def wgmma_split_kernels(self) -> tuple[str, ...]:
        """The split-K kernels of the variant's Hopper tiles (those the table gives them)."""
        return tuple(self.kernel(t, split=True) for t in GEMM_WGMMA_TILES
                     if self.kernel(t, split=True) in GEMM_KERNEL_BUILD)

    @property
    def tile_kernels(self) -> tuple[str, ...]:
        return tuple(self.kernel(t) for t in self.tiles)

    @property
    def split_kernels(self) -> tuple[str, ...]:
        return tuple(self.kernel(t, split=True) for t in self.split_tiles)


def _variant(op: str, suffix: str, ops: str, params: str, ones: bool = False) -> GemmVariant:
    """The fused GEMM whose kernels are gemm_<tile>_<ops>_<suffix>[_split]: its tiles are the
    planner's tiles that have them in the table, falling back to t64."""
    has = GEMM_KERNEL_BUILD.__contains__
    tiles = tuple(t for t in GEMM_TILES if has(f"gemm_{t}_{ops}_{suffix}"))
    split = tuple(t for t in tiles if has(f"gemm_{t}_{ops}_{suffix}_split"))
    return GemmVariant(op, suffix, ops, tiles, "t64", params, ones, split)


#: parameters every fused GEMM kernel starts with (GEMM_CORE_ARGS): C is the op's `out`
GEMM_CORE_PARAMS = "M:a, M:b, M:out, i:m, i:n, i:k, i:lda, i:ldb, i:ldc"

#: the fused GEMMs by op name. da1 = W2^T diff has K = 10, which pick_gemm_tile never gives t128:
#: its variant (the table's short_k family) has t64, s16 and tc64 only (a forced or deep-K t128
#: pick runs as t64).
GEMM_VARIANTS: dict[str, GemmVariant] = {v.op: v for v in (
    _variant("gemm_bias_sigmoid", "bias_sigmoid", "nn", GEMM_CORE_PARAMS + ", R:bias"),
    _variant("gemm_sigmoid_backward", "sigmoid_backward", "tn",
             GEMM_CORE_PARAMS + ", M:act, i:ld_act"),
    _variant("gemm_with_bias_grad", "bias_grad", "nt", GEMM_CORE_PARAMS, ones=True),
)}


def pick_gemm_tile(m: int, n: int, num_sms: int, k: int | None = None, tc64: bool = False) -> str:
    """Tile for an M x N (x K) product on a GPU with `num_sms` multiprocessors; `tc64`: the FP64
    tensor-core tile may run (tc64_eligible).

    Model: blocks spread evenly over the multiprocessors, so the busiest one computes
    ceil(blocks / SMs) tiles; its time is that many tiles' multiply-adds over the tile's efficiency.
    Big tiles win on big products (H=4096), 64 x 64 on the model's mid-sized ones (H=1024, n=800,
    where 128 x 128 would leave most of the GPU idle) and on short K, and the split-K tile on
    M <= 16 rows; in float64 on sm_80+ (tc64) the FP64 tensor-core tiles on the rest, but for
    short K: tc128 where its tiles fill every SM to residency, tc64 (split over K where its tiles
    leave SMs idle) elsewhere. tests/test_kernel_parity.py and tests/test_gemm_tc64.py pin the picks at the model's
    shapes on an H100.
    """
    if m <= SKINNY_MAX_M:
        return "s16"
    if k is not None and k <= SHORT_K:
        return "t64"
    if tc64:
        # Tensor cores have about twice the FP64 FMA pipes' throughput on the deep products; the
        # 10-row ones (s16) and the short-K da1 (all epilogue) stay on the SIMT tiles above.
        big = GEMM_TILES["tc128"]
        if math.ceil(m / big.bm) * math.ceil(n / big.bn) >= TC128_MIN_BLOCKS_PER_SM * num_sms:
            return "tc128"
        return "tc64"
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
    #: blocks per tile over K (grid[2]); > 1: a split kernel, which takes the workspaces too
    split: int = 1


def _blocks(tile: str, m: int, n: int) -> int:
    """Blocks of any table tile over an M x N product."""
    row = GEMM_TILE_TABLE[tile]
    return math.ceil(m / row.bm) * math.ceil(n / row.bn)


def wgmma_cost(tile: str, m: int, n: int, k: int, split: int, num_sms: int) -> float:
    """Model of an M x N x K product's time on the Hopper tile `tile` split S ways over K: the
    waves of its blocks over the multiprocessors (one block each), each as long as a block's tile
    of C over the tile's efficiency (GEMM_WGMMA_EFFICIENCY) times its K range plus a block's fixed
    cost (SPLIT_BLOCK_OVERHEAD_K: filling the pipeline, the partials' sum)."""
    row = GEMM_TILE_TABLE[tile]
    waves = math.ceil(_blocks(tile, m, n) * split / max(num_sms, 1))
    return (waves * (split_chunk(k, split) + SPLIT_BLOCK_OVERHEAD_K) * row.bm * row.bn
            / GEMM_WGMMA_EFFICIENCY[tile])


def pick_wgmma(m: int, n: int, k: int, num_sms: int, tiles=GEMM_WGMMA_TILES,
               can_split=lambda tile: True) -> tuple[str, int]:
    """(tile, S) of least wgmma_cost among `tiles` and, where `can_split(tile)` (the tile has the
    product's split kernel), the S of split_candidates; the first tile and S = 1 on a tie. w128
    on the big products; w64 where 128 x 128 blocks leave most SMs idle (z1 1024x800: 1 wave of
    56 w128 blocks or of 104 w64); split where even w64's blocks leave most idle (z1 at H = 256,
    B = 800: 26 blocks, 5 ways over K)."""
    best, best_cost = (tiles[0], 1), math.inf
    for tile in tiles:
        splits = split_candidates(tile, _blocks(tile, m, n), k) if can_split(tile) else []
        for split in [1] + splits:
            cost = wgmma_cost(tile, m, n, k, split, num_sms)
            if cost < best_cost:
                best, best_cost = (tile, split), cost
    return best


def _x3_kernel(tile, trans_a, trans_b, variant, split=False) -> str:
    """The kernel of a TF32x3 tile for the plain GEMM's transpose pair or for `variant`."""
    if variant is not None:
        return variant.kernel(tile, split)
    return (gemm_split_kernel_name if split else gemm_kernel_name)(tile, trans_a, trans_b)


def _x3_plan(tile, forced, split, m, n, k, trans_a, trans_b, variant, wgmma, num_sms) -> GemmPlan:
    """The TF32x3 plan of a product the SIMT planner gives `tile` (or that forces it). A Hopper
    tile where the build has wgmma, the tile is one of GEMM_WGMMA_FOR, K is not short and the
    kernel exists: pick_wgmma's tile and S (the forced tile's own Hopper tile; a forced S where
    that tile has the split kernel and the workspace fits, else S = 1). Otherwise the mma.sync
    twin (GEMM_X3_TILE), unsplit. Launched with the tile's own block and tile of C."""
    x3, splits = GEMM_X3_TILE[tile], 1
    if wgmma and tile in GEMM_WGMMA_FOR and k > SHORT_K:
        tiles = tuple(t for t in ((GEMM_WGMMA_FOR[tile],) if forced else GEMM_WGMMA_TILES)
                      if _x3_kernel(t, trans_a, trans_b, variant) in GEMM_KERNEL_BUILD)
        def can_split(t):
            return _x3_kernel(t, trans_a, trans_b, variant, True) in GEMM_KERNEL_BUILD
        if tiles:
            x3, splits = pick_wgmma(m, n, k, num_sms, tiles, can_split)
            if split is not None:
                splits = split if can_split(x3) and split_fits(x3, _blocks(x3, m, n), split) else 1
    twin = GEMM_TILE_TABLE[x3]
    return GemmPlan(_x3_kernel(x3, trans_a, trans_b, variant, splits > 1),
                    (math.ceil(m / twin.bm), math.ceil(n / twin.bn), splits),
                    (twin.threads, 1, 1), m, n, k, splits)


def plan_gemm(a_shape, b_shape, c_shape, trans_a: bool, trans_b: bool, num_sms: int,
              tile: str | None = None, variant: GemmVariant | None = None,
              split: int | None = None, mode: str = "simt", tc64: bool = False,
              wgmma: bool = False) -> GemmPlan | None:
    """Check the shapes of C = op(A) op(B) and choose the launch; None when C is empty.

    K = 0 still gets a plan (the kernel then writes beta * C). `tile` forces a tile (tests, tuning).
    `variant` plans a fused GEMM of GEMM_VARIANTS instead (trans_a, trans_b must be its pair); with
    its `ones`, C has one column more than op(B) (the ones column). `split` forces S blocks per
    tile over K (tests, tuning; None: pick_gemm_split); a split the tile, transpose pair or variant
    has no kernel for, or that does not fit the workspace, runs unsplit (S = 1).
    `mode` (GEMM_MODES): "tf32x3" launches the chosen tile's TF32x3 twin (GEMM_X3_TILE), unsplit;
    the caller checks that the dtype and GPU allow it. `tc64`: the build and device run the
    FP64 tensor-core tiles (tc64_eligible); without it a tc64 tile, picked or forced, runs as
    TC64_FALLBACK. `wgmma` (tf32x3 only): the build is for sm_90a, so the products of
    GEMM_WGMMA_FOR tiles go on the Hopper tiles (_x3_plan) instead of the mma.sync twins: the
    tile and split pick_wgmma picks, or with `tile` forced that tile's own, and `split` as for
    the SIMT tiles (tests cover each so).
    """
    if mode not in GEMM_MODES:
        raise ValueError(f"gemm mode must be one of {GEMM_MODES}, got {mode!r}")
    if len(a_shape) != 2 or len(b_shape) != 2 or len(c_shape) != 2:
        raise ValueError(f"gemm takes matrices, got shapes {a_shape}, {b_shape}, {c_shape}")
    m, k = (a_shape[1], a_shape[0]) if trans_a else (a_shape[0], a_shape[1])
    kb, n = (b_shape[1], b_shape[0]) if trans_b else (b_shape[0], b_shape[1])
    if variant is not None and variant.ones:
        n += 1
    if k != kb or tuple(c_shape) != (m, n):
        raise ValueError(
            f"gemm shape mismatch: op(A) {m}x{k}, op(B) {kb}x{n}, C {c_shape[0]}x{c_shape[1]}")
    if split is not None and split < 1:
        raise ValueError(f"gemm split must be at least 1, got {split}")
    if m == 0 or n == 0:
        return None
    forced = tile is not None
    tile = tile or pick_gemm_tile(m, n, num_sms, k, tc64)
    if tile in TC64_TILES and not tc64:
        tile = TC64_FALLBACK
    ops = ("t" if trans_a else "n") + ("t" if trans_b else "n")
    if variant is not None:
        if variant.ops != ops:
            raise ValueError(f"{variant.op} is the {variant.ops} product")
        if tile not in variant.tiles:  # (a tensor-core pick stays on the tensor cores)
            tile = "tc64" if tile in TC64_TILES and "tc64" in variant.tiles else variant.fallback
        has_split = tile in variant.split_tiles
    else:
        has_split = tile in GEMM_SPLIT_TILES and ops in GEMM_SPLIT_OPS
    if mode == "tf32x3":
        return _x3_plan(tile, forced, split, m, n, k, trans_a, trans_b, variant, wgmma, num_sms)
    grid = gemm_grid(tile, m, n)
    if split is None:
        split = pick_gemm_split(tile, m, n, k, num_sms)
    if not has_split or not split_fits(tile, grid[0] * grid[1], split):
        split = 1
    if variant is None:
        kernel = (gemm_split_kernel_name if split > 1 else gemm_kernel_name)(tile, trans_a, trans_b)
    else:
        kernel = variant.kernel(tile, split=split > 1)
    threads = GEMM_TILES[tile].threads
    return GemmPlan(kernel, (grid[0], grid[1], split), (threads, 1, 1), m, n, k, split)
