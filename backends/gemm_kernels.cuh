// The GEMM kernels: one row per tile in GEMM_TILE_TABLE, each row expanding to the tile's kernels
// (GEMM_TILE_KERNELS). backends/gemm_plan.py reads this table (its tiles, their geometry, the
// build each is in and its kernel families) and the families' kernel names, so the planner names
// exactly the kernels this file defines, and each build defines only kernels its planner launches.
// Adding a tile is its GemmTile_<name> (a pipeline over a slab multiply, gemm.cuh) and one row.
// Included by kernels.cu after the tile headers.
#ifndef DPMLP_GEMM_KERNELS_CUH
#define DPMLP_GEMM_KERNELS_CUH

#include "common.cuh"
#include "gemm.cuh"
#include "gemm_simt.cuh"
#include "gemm_tc64.cuh"
#include "gemm_tf32x3.cuh"
#include "gemm_wgmma.cuh"

// One row per tile:
//   tile      the tile's name (gemm_plan.GEMM_TILES, GEMM_X3_TILE) and type GemmTile_<tile>
//   build     the build that has its kernels: any, float or double (the -DREAL they run in)
//   BM, BN    its tile of C, and threads: its block (the planner's grid and block; checked
//             against the tile's own below)
//   short_k   1: the short-K family too (da1 = W2^T diff; the tiles the planner gives K <= 64)
//   split     1: the split-K family too (gridDim.z blocks per tile over K; gemm.cuh SplitK)
//   dyn_smem  bytes of dynamic shared memory a block takes (0: static, at most 48 KB); the
//             backends set each kernel's limit to it and launch with it (checked below)
// clang-format off
//                tile   build   BM   BN threads short_k split dyn_smem
#define GEMM_TILE_TABLE(X)                                                                         \
    X(t128,  any,    128, 128, 256,    0,      0,     0)                                           \
    X(t64,   any,     64,  64, 256,    1,      1,     0)                                           \
    X(s16,   any,     16,  16, 256,    1,      1,     0)                                           \
    X(tc64,  double,  64,  64, 128,    1,      1,     0)                                           \
    X(tc128, double, 128,  64, 256,    0,      0,     0)                                           \
    X(x128,  float,  128, 128, 256,    0,      0,     0)                                           \
    X(x64,   float,   64,  64, 256,    1,      0,     0)                                           \
    X(x16,   float,   16,  16, 256,    1,      0,     0)                                           \
    X(w128,  float,  128, 128, 384,    0,      1, 196656)                                           \
    X(w64,   float,  128,  64, 384,    0,      1, 122976)
// clang-format on

// The kernels' parameters (gemm_plan.GEMM_PARAMS, GemmVariant.params, GEMM_SPLIT_PARAMS): the
// kernel gemm_<tile>_<ops><suffix> takes GEMM<SUFFIX>_ARGS.
#define GEMM_ARGS GEMM_CORE_ARGS, real alpha, real beta
#define GEMM_BIAS_SIGMOID_ARGS GEMM_CORE_ARGS, const real *__restrict__ bias
#define GEMM_SIGMOID_BACKWARD_ARGS GEMM_CORE_ARGS, const real *__restrict__ act, int ldact
#define GEMM_BIAS_GRAD_ARGS GEMM_CORE_ARGS
#define GEMM_WS_ARGS real *__restrict__ ws, int *__restrict__ tickets
#define GEMM_SPLIT_ARGS GEMM_ARGS, GEMM_WS_ARGS
#define GEMM_BIAS_SIGMOID_SPLIT_ARGS GEMM_BIAS_SIGMOID_ARGS, GEMM_WS_ARGS
#define GEMM_BIAS_GRAD_SPLIT_ARGS GEMM_BIAS_GRAD_ARGS, GEMM_WS_ARGS

// The kernel gemm_<tile>_<ops><suffix>(args): op(A) op(B) through the epilogue (the arguments
// after ONES), on the whole K (entry gemm_tile) or on the block's range of it (gemm_tile_split).
#define GEMM_KERNEL(tile, ops, TA, TB, suffix, args, entry, ONES, ...)                             \
    extern "C" __global__ void __launch_bounds__(GemmTile_##tile::THREADS,                         \
                                                 GemmTile_##tile::MIN_BLOCKS)                      \
        gemm_##tile##_##ops##suffix(args)                                                          \
    {                                                                                              \
        entry<GemmTile_##tile, TA, TB, ONES>(GEMM_CORE_PASS, __VA_ARGS__);                         \
    }

// The kernel families (GEMM_<FAMILY>_KERNELS, one line a kernel; gemm_plan reads them).
// Every tile: the plain GEMM for each transpose pair, C = alpha op(A) op(B) + beta C; z1 = W1 x
// with the bias and the sigmoid (nn); [dW db] = dz [x^T 1], the bias gradient as the last column
// of C from a virtual ones column of op(B) (nt; writes C, never reads it).
#define GEMM_BASE_KERNELS(tile)                                                                    \
    GEMM_KERNEL(tile, nn, false, false, , GEMM_ARGS, gemm_tile, false, EpiScale{alpha, beta})      \
    GEMM_KERNEL(tile, nt, false, true, , GEMM_ARGS, gemm_tile, false, EpiScale{alpha, beta})       \
    GEMM_KERNEL(tile, tn, true, false, , GEMM_ARGS, gemm_tile, false, EpiScale{alpha, beta})       \
    GEMM_KERNEL(tile, tt, true, true, , GEMM_ARGS, gemm_tile, false, EpiScale{alpha, beta})        \
    GEMM_KERNEL(tile, nn, false, false, _bias_sigmoid, GEMM_BIAS_SIGMOID_ARGS, gemm_tile, false,   \
                EpiBiasSigmoid{bias})                                                              \
    GEMM_KERNEL(tile, nt, false, true, _bias_grad, GEMM_BIAS_GRAD_ARGS, gemm_tile, true,           \
                EpiScale{real(1), real(0)})
// short_k: da1 = W2^T diff with the sigmoid backward, dz1 = da1 * a1 * (1 - a1) (tn, K = 10)
#define GEMM_SHORT_K_KERNELS(tile)                                                                 \
    GEMM_KERNEL(tile, tn, true, false, _sigmoid_backward, GEMM_SIGMOID_BACKWARD_ARGS, gemm_tile,   \
                false, EpiSigmoidBackward{act, ldact})
// split: the plain GEMM's nn and nt (the model's tn and tt products have K = 10, never split),
// z1 and [dW db]; two parameters more, the partial tiles' workspace and the tiles' tickets
#define GEMM_SPLIT_KERNELS(tile)                                                                   \
    GEMM_KERNEL(tile, nn, false, false, _split, GEMM_SPLIT_ARGS, gemm_tile_split, false,           \
                EpiScale{alpha, beta}, ws, tickets)                                                \
    GEMM_KERNEL(tile, nt, false, true, _split, GEMM_SPLIT_ARGS, gemm_tile_split, false,            \
                EpiScale{alpha, beta}, ws, tickets)                                                \
    GEMM_KERNEL(tile, nn, false, false, _bias_sigmoid_split, GEMM_BIAS_SIGMOID_SPLIT_ARGS,         \
                gemm_tile_split, false, EpiBiasSigmoid{bias}, ws, tickets)                         \
    GEMM_KERNEL(tile, nt, false, true, _bias_grad_split, GEMM_BIAS_GRAD_SPLIT_ARGS,                \
                gemm_tile_split, true, EpiScale{real(1), real(0)}, ws, tickets)

// GEMM_IN_BUILD_<build>(kernels): the kernels where this build has the tile, nothing elsewhere
#define GEMM_IN_BUILD_any(...) __VA_ARGS__
#if REAL_IS_DOUBLE
#define GEMM_IN_BUILD_double(...) __VA_ARGS__
#define GEMM_IN_BUILD_float(...)
#else
#define GEMM_IN_BUILD_double(...)
#define GEMM_IN_BUILD_float(...) __VA_ARGS__
#endif
#define GEMM_IF_1(...) __VA_ARGS__
#define GEMM_IF_0(...)

// A row's kernels, after checking that the table gives the planner the tile's own geometry
#define GEMM_TILE_KERNELS(tile, build, bm, bn, threads, short_k, split, dyn_smem)                  \
    GEMM_IN_BUILD_##build(                                                                         \
        static_assert(GemmTile_##tile::BM == bm && GemmTile_##tile::BN == bn &&                    \
                          GemmTile_##tile::THREADS == threads,                                     \
                      "GEMM_TILE_TABLE gives the planner the tile's block and tile of C");         \
        static_assert(GemmTileDynamicSmem<GemmTile_##tile>::value == dyn_smem,                     \
                      "GEMM_TILE_TABLE gives the backends the tile's dynamic shared memory");      \
        GEMM_BASE_KERNELS(tile) GEMM_IF_##short_k(GEMM_SHORT_K_KERNELS(tile))                      \
            GEMM_IF_##split(GEMM_SPLIT_KERNELS(tile)))

GEMM_TILE_TABLE(GEMM_TILE_KERNELS)

#endif  // DPMLP_GEMM_KERNELS_CUH
