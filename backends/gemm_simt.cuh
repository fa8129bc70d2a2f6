// The SIMT GEMM tiles (t128, t64, s16 of backends/gemm_plan.py): FP32/FP64 fused multiply-adds on
// the pipelines of gemm.cuh. Included by kernels.cu after gemm.cuh.
#ifndef DPMLP_GEMM_SIMT_CUH
#define DPMLP_GEMM_SIMT_CUH

#include "common.cuh"
#include "gemm.cuh"

// Four consecutive reals of 16-byte aligned shared memory in 128-bit loads (LDS.128): one
// instruction instead of four (float) or two instead of four (double) keeps the GEMM inner loop
// issue-bound on FMAs, not on loads.
__device__ __forceinline__ void lds4(const float* p, float* r)
{
    const float4 v = *reinterpret_cast<const float4*>(p);
    r[0] = v.x;
    r[1] = v.y;
    r[2] = v.z;
    r[3] = v.w;
}
__device__ __forceinline__ void lds4(const double* p, double* r)
{
    const double2 lo = reinterpret_cast<const double2*>(p)[0];
    const double2 hi = reinterpret_cast<const double2*>(p)[1];
    r[0] = lo.x;
    r[1] = lo.y;
    r[2] = hi.x;
    r[3] = hi.y;
}

// The SIMT slab multiply (gemm.cuh's Mma): a BM x BN tile computed by KG groups of
// (BM/TM)*(BN/TN) threads, each keeping a TM x TN micro-tile of C in registers (register
// blocking), so a few 128-bit shared-memory loads feed TM*TN fused multiply-adds. Group g
// multiplies k = g*KPG .. g*KPG + KPG-1 of each BK = KG*KPG deep slab.
//
// A thread owns TM rows and TN columns of the tile in groups of 4: rows gr*(BM*4/TM) + tx*4 + 0..3
// for gr < TM/4 (likewise columns), so the threads of a warp read consecutive 16-byte words of a
// shared row (no bank conflicts; a thread-contiguous 8-row fragment would put every other thread
// of a quarter warp on the same banks). Element (i, j) of the micro-tile is acc[i * TN + j].
template <int BM_, int BN_, int TM, int TN, int KG_, int KPG>
struct SimtFma {
    static constexpr int BM = BM_, BN = BN_, KG = KG_, BK = KG * KPG, PAD = SMEM_PAD;
    static constexpr int GT = (BM / TM) * (BN / TN), THREADS = GT * KG;
    static constexpr int ROWS = TM, COLS = TN, FRAG = TM * TN;
    static constexpr int RG = TM / 4, CG = TN / 4;  // 4-wide row / column groups per thread
    static constexpr int RSPAN = BM / RG, CSPAN = BN / CG;
    static_assert(TM % 4 == 0 && TN % 4 == 0, "micro-tile is made of 4-wide groups");

    int g, lt;  // k-group, thread within it
    int tx, ty;  // fastest through the warp: distinct A fragments, shared B ones

    __device__ __forceinline__ explicit SimtFma(int tid)
        : g(tid / GT), lt(tid % GT), tx(lt % (BM / TM)), ty(lt / (BM / TM))
    {
    }

    static __device__ __forceinline__ int at(int r, int c) { return r * TN + c; }
    __device__ __forceinline__ int row(int m0, int r) const
    {
        return m0 + (r / 4) * RSPAN + tx * 4 + (r % 4);
    }
    __device__ __forceinline__ int col(int n0, int c) const
    {
        return n0 + (c / 4) * CSPAN + ty * 4 + (c % 4);
    }

    // acc += this thread's A-fragment x B-fragment over its group's KPG values of k
    __device__ __forceinline__ void multiply(real (&acc)[FRAG], const real* As, const real* Bs) const
    {
        constexpr int AS = BM + PAD, BS = BN + PAD;
#pragma unroll
        for (int q = 0; q < KPG; ++q) {
            const int kk = g * KPG + q;
            real a_frag[TM], b_frag[TN];
#pragma unroll
            for (int gr = 0; gr < RG; ++gr)
                lds4(As + kk * AS + gr * RSPAN + tx * 4, a_frag + 4 * gr);
#pragma unroll
            for (int gc = 0; gc < CG; ++gc)
                lds4(Bs + kk * BS + gc * CSPAN + ty * 4, b_frag + 4 * gc);
#pragma unroll
            for (int i = 0; i < TM; ++i)
#pragma unroll
                for (int j = 0; j < TN; ++j) acc[at(i, j)] += a_frag[i] * b_frag[j];
        }
    }
};

// Tile configurations, all 256 threads. Depths (KPG, STAGES) and micro-tiles are smaller in double,
// where the float ones would not fit in 48 KB of static shared memory or in the registers of two
// blocks per multiprocessor.
//
// t128: 128 x 128 tile, 8 x 8 per thread, one k-group, 16-deep slabs in two cp.async stages: the
// most FMAs per shared-memory load, for large products (H = 4096, or n = 3200). In float, capping
// registers at 128 lets two blocks share a multiprocessor (double needs ~210: one block).
#define T128_MIN_BLOCKS (sizeof(real) == 4 ? 2 : 1)
#define T128_KPG (sizeof(real) == 4 ? 16 : 8)
typedef GemmTileOf<GemmMultistage<SimtFma<128, 128, 8, 8, 1, T128_KPG>, 2>, T128_MIN_BLOCKS>
    GemmTile_t128;

// t64: 64 x 64 tile, four times the tiles of t128, for the model's mid-sized products (H = 1024 x
// n = 800 fills only 56 of an H100's 132 multiprocessors with 128 x 128 tiles) and short K. The
// configuration is chosen per launch on K (a split launch: on its chunk):
// * short K (da1 = W2^T diff has K = 10): 8 x 4 per thread, K split over 2 groups, four stages of
//   16-deep slabs: the lightest reduction and epilogue, which is all such a product costs;
// * deep K (float): 8 x 8 per thread, K split over 4 groups, two stages of 32-deep slabs: half the
//   shared-memory loads per FMA, but a reduction that costs more than it saves below K ~ 256.
// Double keeps the short-K configuration (8 x 8 would not fit two blocks' registers).
#define T64_MIN_BLOCKS (sizeof(real) == 4 ? 2 : 1)
#define T64_DEEP_K 256
#define T64_KPG (sizeof(real) == 4 ? 8 : 4)
#define T64_DEEP_TN (sizeof(real) == 4 ? 8 : 4)
#define T64_DEEP_KG (sizeof(real) == 4 ? 4 : 2)
#define T64_DEEP_KPG (sizeof(real) == 4 ? 8 : 4)
#define T64_DEEP_STAGES (sizeof(real) == 4 ? 2 : 4)
typedef GemmTileByDepth<
    GemmMultistage<SimtFma<64, 64, 8, 4, 2, T64_KPG>, 4>,
    GemmMultistage<SimtFma<64, 64, 8, T64_DEEP_TN, T64_DEEP_KG, T64_DEEP_KPG>, T64_DEEP_STAGES>,
    T64_DEEP_K, T64_MIN_BLOCKS>
    GemmTile_t64;

// s16: 16 x 16 tile, 4 x 4 per thread, K split over 16 groups, for M <= 16 (the 10-class layer:
// z2 = W2 a1, dW2 = diff a1^T), where tiles alone would give a handful of blocks; split over K
// across blocks too ([dW2 db2] = diff [a1^T 1]: 17 tiles at H = 256, each walking all of n,
// would leave 115 of an H100's SMs idle). Register-staged: a slab is one load per thread.
#define S16_KPG (sizeof(real) == 4 ? 8 : 4)
typedef GemmTileOf<GemmRegisterStaged<SimtFma<16, 16, 4, 4, 16, S16_KPG>>, 1> GemmTile_s16;

#endif  // DPMLP_GEMM_SIMT_CUH
