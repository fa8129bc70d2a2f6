// TF32x3 GEMM (--gemm tf32x3, float32 only): the GEMM and the fused GEMMs on the tensor cores,
// with the error-compensated three-product split: a slab multiply (Tf32x3Mma) on gemm.cuh's
// cp.async pipeline. Included by kernels.cu after gemm.cuh; its kernels are in the float32 build
// only (gemm_kernels.cuh), and backends/gemm_plan.py names them (GEMM_X3_TILE: t128 -> x128, ...).
//
// Each float operand x is split into big = tf32(x) (cvt.rna: round to nearest, ties away, to the
// 10-bit mantissa of TF32) and small = tf32(x - big) (x - big is exact in float). A product is
//     a b ~ a_small b_big + a_big b_small + a_big b_big
// (a_small b_small, about 2^-22 relative, is dropped), each term an
// mma.sync.m16n8k8.row.col.f32.tf32.tf32.f32 accumulating in FP32, the small products first; each
// k8 step's sum of the three is added to the FP32 accumulator by an ordinary add (Tf32x3Mma
// says why).
// The result keeps FP32-level accuracy (tools/gemm_accuracy.py measures it against float64).
//
// The same loader, pipeline, finish and epilogues as the SIMT tiles, so that a fused op computes
// the same formulas. What differs is the multiply: each warp owns a WM x WN piece of the block's
// tile as MI x NJ mma tiles of 16 x 8 (gemm.cuh's WarpMmaFragment), and KG k-groups of warps
// share each slab's K (their partial tiles added at the end by reduce_groups). Deterministic:
// every element of C is one fixed sequence of mma instructions and adds; no atomics, no split
// over blocks.
//
// The mma and cvt.rna.tf32 instructions exist from sm_80 on: below that (a default-arch build)
// they compile to a trap, and the host refuses --gemm tf32x3 on such a GPU.
#ifndef DPMLP_GEMM_TF32X3_CUH
#define DPMLP_GEMM_TF32X3_CUH

#include "common.cuh"
#include "gemm.cuh"

// Shared rows padded by 8 floats: the fragment loads of a warp (lanes 4 apart in k, 8 apart in
// rows) then fall on 32 distinct banks (row stride = 8 mod 32 banks), and rows stay 16-byte aligned
// for cp.async.
#define X3_PAD 8

// tf32(x) as the bits of a float with the low 13 mantissa bits zero (round to nearest, ties away)
__device__ __forceinline__ unsigned tf32_rna(float x)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    unsigned r;
    asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
    return r;
#else
    return __float_as_uint(x) & 0xffffe000u;  // never launched: the host refuses below sm_80
#endif
}

// x = big + small (to about 2^-22 relative): big = tf32(x), small = tf32(x - big)
__device__ __forceinline__ void tf32_split(float x, unsigned& big, unsigned& small)
{
    big = tf32_rna(x);
    small = tf32_rna(x - __uint_as_float(big));
}

// d += a b for one 16 x 8 x 8 tile (fragments as the PTX ISA lays out m16n8k8 .tf32)
__device__ __forceinline__ void mma_tf32(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2])
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
    (void)d;
    (void)a;
    (void)b;
    __trap();  // never launched: the host refuses --gemm tf32x3 below sm_80
#endif
}

// The TF32x3 slab multiply (gemm.cuh's Mma): KG k-groups of WARPS_M x WARPS_N warps; group g
// multiplies k = g*KPG .. g*KPG + KPG-1 of each BK-deep slab (As: BK x (BM + X3_PAD), k-major as
// the loader writes it; Bs likewise), 8 at a time. Lane (gid, tig) holds, of each 16 x 8 mma tile,
// the A elements (rows gid, gid + 8; k tig, tig + 4), the B elements (k tig, tig + 4; column gid)
// and the C elements (WarpMmaFragment).
template <int BM, int BN, int WARPS_M, int WARPS_N, int KG, int BK_>
struct Tf32x3Mma : WarpMmaFragment<BM, BN, WARPS_M, WARPS_N, KG> {
    using F = WarpMmaFragment<BM, BN, WARPS_M, WARPS_N, KG>;
    static constexpr int BK = BK_, KPG = BK / KG, PAD = X3_PAD;
    // (BK_ in the condition: checked where a kernel instantiates the tile, not in every build)
    static_assert(BK_ > 0 && !REAL_IS_DOUBLE, "TF32x3 splits floats: a float32 tile");
    static_assert(KPG % 8 == 0 && KPG * KG == BK, "each k-group takes whole k8 steps of a slab");

    __device__ __forceinline__ explicit Tf32x3Mma(int tid) : F(tid) {}

    __device__ __forceinline__ void multiply(float (&acc)[F::FRAG], const float* As,
                                             const float* Bs) const
    {
        constexpr int AS = BM + PAD, BS = BN + PAD;
        const int k0 = this->g * KPG;
#pragma unroll
        for (int kk = 0; kk < KPG; kk += 8) {
            const float* a_lo = As + (k0 + kk + this->tig) * AS + this->wm0 + this->gid;
            const float* a_hi = a_lo + 4 * AS;
            const float* b_lo = Bs + (k0 + kk + this->tig) * BS + this->wn0 + this->gid;
            const float* b_hi = b_lo + 4 * BS;
            unsigned a_big[F::MI][4], a_small[F::MI][4], b_big[F::NJ][2], b_small[F::NJ][2];
#pragma unroll
            for (int mi = 0; mi < F::MI; ++mi) {
                tf32_split(a_lo[mi * 16], a_big[mi][0], a_small[mi][0]);
                tf32_split(a_lo[mi * 16 + 8], a_big[mi][1], a_small[mi][1]);
                tf32_split(a_hi[mi * 16], a_big[mi][2], a_small[mi][2]);
                tf32_split(a_hi[mi * 16 + 8], a_big[mi][3], a_small[mi][3]);
            }
#pragma unroll
            for (int ni = 0; ni < F::NJ; ++ni) {
                tf32_split(b_lo[ni * 8], b_big[ni][0], b_small[ni][0]);
                tf32_split(b_hi[ni * 8], b_big[ni][1], b_small[ni][1]);
            }
            // Per tile: the k8 step's three products, the small ones first, summed by the tensor
            // core from zero, then added to acc by an FP32 add (round to nearest). The tensor
            // core's own accumulation truncates (rounds toward zero); fed acc itself, over K / 8
            // steps its truncations of the ever larger |acc| would all lean one way (an error
            // growing like K, not sqrt(K)). Promoted every k8 step, each truncation is of one
            // step's partial sum, whose sign is the data's: the errors average out, as the FP32
            // FMA chain's roundings do.
#pragma unroll
            for (int mi = 0; mi < F::MI; ++mi)
#pragma unroll
                for (int ni = 0; ni < F::NJ; ++ni) {
                    float t[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                    mma_tf32(t, a_small[mi], b_big[ni]);
                    mma_tf32(t, a_big[mi], b_small[ni]);
                    mma_tf32(t, a_big[mi], b_big[ni]);
                    float* d = F::block(acc, mi, ni);
#pragma unroll
                    for (int r = 0; r < 4; ++r) d[r] += t[r];
                }
        }
    }
};

// The tiles (gemm_plan.GEMM_X3_TILE), each the TF32x3 twin of a SIMT tile of the same size and
// threads, so the planner's picks and grids are the SIMT ones.
//
// x128: 128 x 128, 8 warps of 64 x 32 (2 x 4; 4 x 4 mma tiles each), one k-group, 16-deep slabs,
// 2 stages (34.8 KB). One block per multiprocessor's worth of registers (64 accumulators +
// fragments).
typedef GemmTileOf<GemmMultistage<Tf32x3Mma<128, 128, 2, 4, 1, 16>, 2>, 1> GemmTile_x128;
// x64: 64 x 64, two k-groups of 4 warps of 32 x 32 (2 x 2; 2 x 4 mma tiles each), 16-deep slabs
// (8 per group), 4 stages (36.9 KB).
typedef GemmTileOf<GemmMultistage<Tf32x3Mma<64, 64, 2, 2, 2, 16>, 4>, 2> GemmTile_x64;
// x16: 16 x 16 for M <= 16 (dW2 = diff a1^T), four k-groups of 2 warps of 16 x 8 (1 x 2; one mma
// tile each), 32-deep slabs (8 per group), 4 stages (24.6 KB).
typedef GemmTileOf<GemmMultistage<Tf32x3Mma<16, 16, 1, 2, 4, 32>, 4>, 2> GemmTile_x16;

#endif  // DPMLP_GEMM_TF32X3_CUH
