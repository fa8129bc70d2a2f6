// float64 GEMM on the FP64 tensor cores (mma.sync ... .f64, sm_80 and newer): the tc64 and tc128
// tiles of backends/gemm_plan.py, a slab multiply (Fp64Mma) on gemm.cuh's cp.async pipeline,
// loader, epilogues and split-K finish: a fused TC kernel computes the same formulas as its SIMT
// twin, only the order of the dot product's additions differs. Included by kernels.cu after
// gemm.cuh; its kernels are in the float64 build only (gemm_kernels.cuh).
//
// Why: on an H100 the FP64 tensor cores have about twice the FP64 FMA pipes' throughput, and the
// f64 mma takes and returns IEEE doubles (no reduced-precision operands, unlike TF32), so the
// float64 build keeps its precision. It stays deterministic: no atomics, each element's sum built
// in an order fixed by the tile alone (k ascending, one mma per four values of k, each mma's
// result a function of its operands), so reruns and both backends give the same bits.
//
// The mma exists from sm_80 on: below that (a default-arch build) it compiles to a trap, and the
// planner never picks these tiles there (gemm_plan.plan_gemm's tc64 flag: float64 and compute
// capability >= 8.0; a forced tc64 or tc128 tile runs as t64).
#ifndef DPMLP_GEMM_TC64_CUH
#define DPMLP_GEMM_TC64_CUH

#include "common.cuh"
#include "gemm.cuh"

// The tc64 tile: 64 x 64 of C per block, 4 warps of 32 x 32 (2 x 2), BK = 8 deep slabs in four
// cp.async stages (3 in flight while one is multiplied: the loads are per element, latency-bound).
// 4 stages of (64 + 4 + 64 + 4) x 8 doubles = 34 KB of static shared memory: up to six blocks per
// multiprocessor by memory, four by registers (launch bounds 128 x 4: at most 128 registers).
#define TC64_BM 64
#define TC64_BN 64
#define TC64_WARPS_M 2
#define TC64_WARPS_N 2
#define TC64_BK 8
#define TC64_STAGES 4
#define TC64_MIN_BLOCKS 4
// tc128: 128 x 64 of C per block, 8 warps of the same 32 x 32 (4 x 2), three stages (38 KB): a
// third fewer slab loads per multiply-add than tc64, for products whose tiles fill the GPU several
// times over (H = 4096, n = 3200). Two blocks per multiprocessor by registers. No split kernels
// (its products fill the GPU without).
#define TC128_BM 128
#define TC128_BN 64
#define TC128_WARPS_M 4
#define TC128_WARPS_N 2
#define TC128_BK 8
#define TC128_STAGES 3
#define TC128_MIN_BLOCKS 2

// d (16 x 8) += a (16 x 4, row) * b (4 x 8, col), lane = 4 * gid + tig (gid = lane / 4, tig =
// lane % 4): a[0] = A(gid, tig), a[1] = A(gid + 8, tig); b = B(tig, gid); d[0..1] = D(gid, 2*tig +
// 0..1), d[2..3] = D(gid + 8, 2*tig + 0..1). sm_90 has this shape as one instruction (m16n8k4,
// PTX ISA 7.8); sm_80..89 only m8n8k4, whose fragments are the upper and lower halves of these
// (same lane mapping), so two m8n8k4 compute the same 16 x 8 block.
__device__ __forceinline__ void tc64_mma_16x8x4(double* d, const double (&a)[2], double b)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#if __CUDA_ARCH__ >= 900
    asm volatile("mma.sync.aligned.m16n8k4.row.col.f64.f64.f64.f64 {%0, %1, %2, %3}, {%4, %5}, "
                 "{%6}, {%0, %1, %2, %3};\n"
                 : "+d"(d[0]), "+d"(d[1]), "+d"(d[2]), "+d"(d[3])
                 : "d"(a[0]), "d"(a[1]), "d"(b));
#else
    asm volatile("mma.sync.aligned.m8n8k4.row.col.f64.f64.f64.f64 {%0, %1}, {%2}, {%3}, "
                 "{%0, %1};\n"
                 : "+d"(d[0]), "+d"(d[1])
                 : "d"(a[0]), "d"(b));
    asm volatile("mma.sync.aligned.m8n8k4.row.col.f64.f64.f64.f64 {%0, %1}, {%2}, {%3}, "
                 "{%0, %1};\n"
                 : "+d"(d[2]), "+d"(d[3])
                 : "d"(a[1]), "d"(b));
#endif
#else
    (void)d;
    (void)a;
    (void)b;
    __trap();  // never launched: the planner gives these tiles to sm_80+ only
#endif
}

// The FP64 mma slab multiply (gemm.cuh's Mma): WARPS_M x WARPS_N warps, one k-group, each warp's
// blocks of 16 x 8 over one BK-deep slab, k ascending in steps of 4. Fragment reads: lane (gid,
// tig) reads row k + tig at column gid (+ 8): the four k-rows of a warp's read start 2 * (BM + 4)
// = 136 words apart, 8 banks mod 32, so the 32 doubles fall on every bank exactly twice: two
// wavefronts, the least for 256 bytes.
template <int BM, int BN, int WARPS_M, int WARPS_N, int BK_>
struct Fp64Mma : WarpMmaFragment<BM, BN, WARPS_M, WARPS_N, 1> {
    using F = WarpMmaFragment<BM, BN, WARPS_M, WARPS_N, 1>;
    static constexpr int BK = BK_, PAD = SMEM_PAD;
    // (BK_ in the condition: checked where a kernel instantiates the tile, not in every build)
    static_assert(BK_ > 0 && REAL_IS_DOUBLE, "the f64 mma multiplies doubles: a float64 tile");
    static_assert(BK % 4 == 0, "slabs of whole 16 x 8 x 4 mma steps");

    __device__ __forceinline__ explicit Fp64Mma(int tid) : F(tid) {}

    __device__ __forceinline__ void multiply(double (&acc)[F::FRAG], const double* As,
                                             const double* Bs) const
    {
        constexpr int AS = BM + PAD, BS = BN + PAD;
#pragma unroll
        for (int kk = 0; kk < BK; kk += 4) {
            const double* arow = As + (kk + this->tig) * AS + this->wm0 + this->gid;
            const double* brow = Bs + (kk + this->tig) * BS + this->wn0 + this->gid;
            double a[F::MI][2], b[F::NJ];
#pragma unroll
            for (int i = 0; i < F::MI; ++i) {
                a[i][0] = arow[16 * i];
                a[i][1] = arow[16 * i + 8];
            }
#pragma unroll
            for (int j = 0; j < F::NJ; ++j) b[j] = brow[8 * j];
#pragma unroll
            for (int i = 0; i < F::MI; ++i)
#pragma unroll
                for (int j = 0; j < F::NJ; ++j) tc64_mma_16x8x4(F::block(acc, i, j), a[i], b[j]);
        }
    }
};

typedef GemmTileOf<GemmMultistage<Fp64Mma<TC64_BM, TC64_BN, TC64_WARPS_M, TC64_WARPS_N, TC64_BK>,
                                  TC64_STAGES>,
                   TC64_MIN_BLOCKS>
    GemmTile_tc64;
typedef GemmTileOf<GemmMultistage<Fp64Mma<TC128_BM, TC128_BN, TC128_WARPS_M, TC128_WARPS_N,
                                          TC128_BK>,
                                  TC128_STAGES>,
                   TC128_MIN_BLOCKS>
    GemmTile_tc128;

#endif  // DPMLP_GEMM_TC64_CUH
