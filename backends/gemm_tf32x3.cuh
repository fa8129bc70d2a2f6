// TF32x3 GEMM (--gemm tf32x3, float32 only): the GEMM and the fused GEMMs of gemm.cuh on the
// tensor cores, with the error-compensated three-product split. Included by kernels.cu after
// gemm.cuh; backends/gemm_plan.py names these kernels (GEMM_X3_TILE: tile t128 -> x128, ...).
//
// Each float operand x is split into big = tf32(x) (cvt.rna: round to nearest, ties away, to the
// 10-bit mantissa of TF32) and small = tf32(x - big) (x - big is exact in float). A product is
//     a b ~ a_small b_big + a_big b_small + a_big b_big
// (a_small b_small, about 2^-22 relative, is dropped), each term an
// mma.sync.m16n8k8.row.col.f32.tf32.tf32.f32 accumulating in FP32, the small products first; each
// k8 step's sum of the three is added to the FP32 accumulator by an ordinary add (x3_multiply_slab
// says why).
// The result keeps FP32-level accuracy (tools/gemm_accuracy.py measures it against float64).
//
// The same pieces as the SIMT tiles, so that a fused op computes the same formulas: op(A) and
// op(B) travel to shared memory through AsyncSlabLoader (cp.async, STAGES slabs in flight, the
// ONES column of the bias gradient included), and the finished tile goes through the epilogue
// functors of gemm.cuh (EpiScale, EpiBiasSigmoid, EpiSigmoidBackward). What differs is the
// multiply: each warp owns a WM x WN piece of the block's tile as MI x NI mma tiles of 16 x 8,
// and KG k-groups of warps share each slab's K (their partial tiles added at the end in a fixed
// tree order through shared memory, as reduce_groups does). Deterministic: every element of C is
// one fixed sequence of mma instructions and adds; no atomics, no split over blocks.
//
// The mma and cvt.rna.tf32 instructions exist from sm_80 on: below that (a default-arch build)
// they compile to a trap, and the host refuses --gemm tf32x3 on such a GPU. In a double build
// (-DREAL=double) the kernels exist (one source, one kernel list for both precisions) but trap:
// the host allows --gemm tf32x3 with float32 only.
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

// One k-group's share of a slab in shared memory (As: BK x (BM + X3_PAD), k-major as the loader
// writes it; Bs likewise): acc += A-fragments x B-fragments over k = k0 .. k0 + KPG - 1, 8 at a
// time. Lane (gq = lane / 4, tq = lane % 4) holds, of each 16 x 8 mma tile, the A elements (rows
// gq, gq + 8; k tq, tq + 4), the B elements (k tq, tq + 4; column gq) and the C elements (rows gq,
// gq + 8; columns 2 tq, 2 tq + 1).
template <int MI, int NI, int AS, int BS, int KPG>
__device__ __forceinline__ void x3_multiply_slab(float (&acc)[MI][NI][4], const float* As,
                                                 const float* Bs, int k0, int mw, int nw, int gq,
                                                 int tq)
{
#pragma unroll
    for (int kk = 0; kk < KPG; kk += 8) {
        const float* a_lo = As + (k0 + kk + tq) * AS + mw + gq;
        const float* a_hi = a_lo + 4 * AS;
        const float* b_lo = Bs + (k0 + kk + tq) * BS + nw + gq;
        const float* b_hi = b_lo + 4 * BS;
        unsigned a_big[MI][4], a_small[MI][4], b_big[NI][2], b_small[NI][2];
#pragma unroll
        for (int mi = 0; mi < MI; ++mi) {
            tf32_split(a_lo[mi * 16], a_big[mi][0], a_small[mi][0]);
            tf32_split(a_lo[mi * 16 + 8], a_big[mi][1], a_small[mi][1]);
            tf32_split(a_hi[mi * 16], a_big[mi][2], a_small[mi][2]);
            tf32_split(a_hi[mi * 16 + 8], a_big[mi][3], a_small[mi][3]);
        }
#pragma unroll
        for (int ni = 0; ni < NI; ++ni) {
            tf32_split(b_lo[ni * 8], b_big[ni][0], b_small[ni][0]);
            tf32_split(b_hi[ni * 8], b_big[ni][1], b_small[ni][1]);
        }
        // Per tile: the k8 step's three products, the small ones first, summed by the tensor core
        // from zero, then added to acc by an FP32 add (round to nearest). The tensor core's own
        // accumulation truncates (rounds toward zero); fed acc itself, over K / 8 steps its
        // truncations of the ever larger |acc| would all lean one way (an error growing like K,
        // not sqrt(K)). Promoted every k8 step, each truncation is of one step's partial sum, whose
        // sign is the data's: the errors average out, as the FP32 FMA chain's roundings do.
#pragma unroll
        for (int mi = 0; mi < MI; ++mi)
#pragma unroll
            for (int ni = 0; ni < NI; ++ni) {
                float t[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                mma_tf32(t, a_small[mi], b_big[ni]);
                mma_tf32(t, a_big[mi], b_small[ni]);
                mma_tf32(t, a_big[mi], b_big[ni]);
#pragma unroll
                for (int r = 0; r < 4; ++r) acc[mi][ni][r] += t[r];
            }
    }
}

// The k-groups' partial tiles added into group 0's, in reduce_groups' fixed tree order: upper half
// writes, lower half adds, halve again. Value f of thread lt (of GT per group) lives at
// red[(slot * F + f) * GT + lt]. `red` is the block's stages, free by now. Ends with a barrier when
// KG > 1.
template <int MI, int NI, int KG, int GT>
__device__ __forceinline__ void x3_reduce_groups(float (&acc)[MI][NI][4], float* red, int g, int lt)
{
    constexpr int F = MI * NI * 4;
#pragma unroll
    for (int half = KG / 2; half >= 1; half >>= 1) {
        if (g >= half && g < 2 * half) {
#pragma unroll
            for (int mi = 0; mi < MI; ++mi)
#pragma unroll
                for (int ni = 0; ni < NI; ++ni)
#pragma unroll
                    for (int r = 0; r < 4; ++r)
                        red[((g - half) * F + (mi * NI + ni) * 4 + r) * GT + lt] = acc[mi][ni][r];
        }
        __syncthreads();
        if (g < half) {
#pragma unroll
            for (int mi = 0; mi < MI; ++mi)
#pragma unroll
                for (int ni = 0; ni < NI; ++ni)
#pragma unroll
                    for (int r = 0; r < 4; ++r)
                        acc[mi][ni][r] += red[(g * F + (mi * NI + ni) * 4 + r) * GT + lt];
        }
        __syncthreads();
    }
}

// Shared memory of gemm_x3_pipe, in floats: STAGES stages of a BK-deep slab of op(A) and op(B).
template <int BM, int BN, int BK, int STAGES>
struct X3Smem {
    static constexpr int SIZE = STAGES * BK * (BM + X3_PAD + BN + X3_PAD);
};

// The TF32x3 block: a BM x BN tile of C, 256 threads = 8 warps: (BM / WM) x (BN / WN) warps per
// k-group, KG k-groups; BK-deep slabs (BK / KG per group, a multiple of 8), STAGES in flight
// (the pipeline of gemm_pipe). Then the k-groups' reduction and group 0 writes the tile through
// `epi`, element by element (Epi::apply, as finish_tile does).
template <int BM, int BN, int WM, int WN, int KG, int BK, int STAGES, bool TA, bool TB, bool ONES,
          class Epi>
__device__ __forceinline__ void gemm_x3_pipe(float* smem, const float* __restrict__ A,
                                             const float* __restrict__ B, float* __restrict__ C,
                                             int M, int N, int K, int lda, int ldb, int ldc,
                                             const Epi& epi)
{
    constexpr int WARPS_M = BM / WM, WARPS_N = BN / WN;
    constexpr int GW = WARPS_M * WARPS_N;  // warps per k-group
    constexpr int GT = 32 * GW;            // threads per k-group
    constexpr int NT = GT * KG;
    constexpr int KPG = BK / KG;
    constexpr int MI = WM / 16, NI = WN / 8;
    constexpr int AS = BM + X3_PAD, BS = BN + X3_PAD;
    constexpr int SLAB = BK * AS + BK * BS;
    static_assert(NT == 256, "the planner launches 256 threads (gemm_plan.GEMM_TILES)");
    static_assert(WM % 16 == 0 && WN % 8 == 0 && BM % WM == 0 && BN % WN == 0, "warp tiles");
    static_assert(KPG % 8 == 0 && KPG * KG == BK, "each k-group takes whole k8 steps of a slab");
    static_assert(STAGES >= 2, "at least double buffering");
    static_assert((KG / 2) * GT * MI * NI * 4 <= STAGES * SLAB, "reduction must fit in the stages");
    static_assert(X3Smem<BM, BN, BK, STAGES>::SIZE == STAGES * SLAB, "smem size");

    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const int g = warp / GW;
    const int wg = warp % GW;
    const int mw = (wg % WARPS_M) * WM;  // the warp's rows and columns within the tile
    const int nw = (wg / WARPS_M) * WN;
    const int gq = lane >> 2, tq = lane & 3;
    const int m0 = blockIdx.x * BM;
    const int n0 = blockIdx.y * BN;

    AsyncSlabLoader<BM, BN, BK, NT, TA, TB, ONES, X3_PAD> slab(A, B, M, N, K, lda, ldb, m0, n0,
                                                               tid);
    float acc[MI][NI][4];
#pragma unroll
    for (int mi = 0; mi < MI; ++mi)
#pragma unroll
        for (int ni = 0; ni < NI; ++ni)
#pragma unroll
            for (int r = 0; r < 4; ++r) acc[mi][ni][r] = 0.0f;

    const unsigned sbase = shared_addr(smem);
    const int nslabs = (K + BK - 1) / BK;
    // the pipeline of gemm_pipe: one commit per slab, empty groups past the last one
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < nslabs) slab.issue(smem, sbase, s * SLAB);
        copy_commit();
    }
    int rd = 0, wr = STAGES - 1;
    for (int s = 0; s < nslabs; ++s) {
        copy_wait<STAGES - 2>();
        __syncthreads();
        if (s + STAGES - 1 < nslabs) slab.issue(smem, sbase, wr * SLAB);
        copy_commit();
        wr = (wr + 1 == STAGES) ? 0 : wr + 1;
        const float* As = smem + rd * SLAB;
        const float* Bs = As + BK * AS;
        rd = (rd + 1 == STAGES) ? 0 : rd + 1;
        x3_multiply_slab<MI, NI, AS, BS, KPG>(acc, As, Bs, g * KPG, mw, nw, gq, tq);
    }
    copy_wait<0>();
    __syncthreads();
    x3_reduce_groups<MI, NI, KG, GT>(acc, smem, g, tid % GT);

    if (g != 0) return;
#pragma unroll
    for (int mi = 0; mi < MI; ++mi)
#pragma unroll
        for (int ni = 0; ni < NI; ++ni)
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                const int row = m0 + mw + mi * 16 + gq + (r >> 1) * 8;
                const int col = n0 + nw + ni * 8 + 2 * tq + (r & 1);
                if (row < M && col < N) epi.apply(C, ldc, row, col, acc[mi][ni][r]);
            }
}

// The tiles (gemm_plan.GEMM_X3_TILE), each the TF32x3 twin of a SIMT tile of the same size, so
// the planner's picks and grids are the SIMT ones. Each is two overloads: the float one computes,
// the double one (a -DREAL=double build, never launched) traps.
//
// x128: 128 x 128, 8 warps of 64 x 32 (4 x 4 mma tiles), one k-group, 16-deep slabs, 2 stages
// (34.8 KB). One block per multiprocessor's worth of registers (64 accumulators + fragments).
template <bool TA, bool TB, bool ONES, class Epi>
__device__ __forceinline__ void gemm_x128(const float* __restrict__ A, const float* __restrict__ B,
                                          float* __restrict__ C, int M, int N, int K, int lda,
                                          int ldb, int ldc, const Epi& epi)
{
    __shared__ __align__(16) float smem[X3Smem<128, 128, 16, 2>::SIZE];
    gemm_x3_pipe<128, 128, 64, 32, 1, 16, 2, TA, TB, ONES>(smem, A, B, C, M, N, K, lda, ldb, ldc,
                                                           epi);
}
// x64: 64 x 64, two k-groups of 4 warps of 32 x 32 (2 x 4 mma tiles), 16-deep slabs (8 per
// group), 4 stages (36.9 KB).
template <bool TA, bool TB, bool ONES, class Epi>
__device__ __forceinline__ void gemm_x64(const float* __restrict__ A, const float* __restrict__ B,
                                         float* __restrict__ C, int M, int N, int K, int lda,
                                         int ldb, int ldc, const Epi& epi)
{
    __shared__ __align__(16) float smem[X3Smem<64, 64, 16, 4>::SIZE];
    gemm_x3_pipe<64, 64, 32, 32, 2, 16, 4, TA, TB, ONES>(smem, A, B, C, M, N, K, lda, ldb, ldc,
                                                         epi);
}
// x16: 16 x 16 for M <= 16 (dW2 = diff a1^T), four k-groups of 2 warps of 16 x 8 (one mma tile),
// 32-deep slabs (8 per group), 4 stages (24.6 KB).
template <bool TA, bool TB, bool ONES, class Epi>
__device__ __forceinline__ void gemm_x16(const float* __restrict__ A, const float* __restrict__ B,
                                         float* __restrict__ C, int M, int N, int K, int lda,
                                         int ldb, int ldc, const Epi& epi)
{
    __shared__ __align__(16) float smem[X3Smem<16, 16, 32, 4>::SIZE];
    gemm_x3_pipe<16, 16, 16, 8, 4, 32, 4, TA, TB, ONES>(smem, A, B, C, M, N, K, lda, ldb, ldc,
                                                        epi);
}
template <bool TA, bool TB, bool ONES, class Epi>
__device__ __forceinline__ void gemm_x128(const double*, const double*, double*, int, int, int,
                                          int, int, int, const Epi&)
{
    __trap();  // float32 only (the host refuses --gemm tf32x3 with float64)
}
template <bool TA, bool TB, bool ONES, class Epi>
__device__ __forceinline__ void gemm_x64(const double*, const double*, double*, int, int, int,
                                         int, int, int, const Epi&)
{
    __trap();
}
template <bool TA, bool TB, bool ONES, class Epi>
__device__ __forceinline__ void gemm_x16(const double*, const double*, double*, int, int, int,
                                         int, int, int, const Epi&)
{
    __trap();
}

// The kernels, through gemm.cuh's DEFINE_GEMM* macros (names gemm_<x-tile>_<ops>[_<variant>],
// the parameters of the SIMT kernels): the plain GEMM for every tile and transpose pair, the fused
// GEMMs for the transpose pair and tiles of their SIMT twins (gemm_plan.GEMM_VARIANTS).
DEFINE_GEMM(x128, nn, false, false, gemm_x128, 256, 1)
DEFINE_GEMM(x128, nt, false, true, gemm_x128, 256, 1)
DEFINE_GEMM(x128, tn, true, false, gemm_x128, 256, 1)
DEFINE_GEMM(x128, tt, true, true, gemm_x128, 256, 1)
DEFINE_GEMM(x64, nn, false, false, gemm_x64, 256, 2)
DEFINE_GEMM(x64, nt, false, true, gemm_x64, 256, 2)
DEFINE_GEMM(x64, tn, true, false, gemm_x64, 256, 2)
DEFINE_GEMM(x64, tt, true, true, gemm_x64, 256, 2)
DEFINE_GEMM(x16, nn, false, false, gemm_x16, 256, 2)
DEFINE_GEMM(x16, nt, false, true, gemm_x16, 256, 2)
DEFINE_GEMM(x16, tn, true, false, gemm_x16, 256, 2)
DEFINE_GEMM(x16, tt, true, true, gemm_x16, 256, 2)

DEFINE_GEMM_BIAS_SIGMOID(x128, nn, false, false, gemm_x128, 256, 1)
DEFINE_GEMM_BIAS_SIGMOID(x64, nn, false, false, gemm_x64, 256, 2)
DEFINE_GEMM_BIAS_SIGMOID(x16, nn, false, false, gemm_x16, 256, 2)
DEFINE_GEMM_SIGMOID_BACKWARD(x64, tn, true, false, gemm_x64, 256, 2)
DEFINE_GEMM_SIGMOID_BACKWARD(x16, tn, true, false, gemm_x16, 256, 2)
DEFINE_GEMM_BIAS_GRAD(x128, nt, false, true, gemm_x128, 256, 1)
DEFINE_GEMM_BIAS_GRAD(x64, nt, false, true, gemm_x64, 256, 2)
DEFINE_GEMM_BIAS_GRAD(x16, nt, false, true, gemm_x16, 256, 2)

#endif  // DPMLP_GEMM_TF32X3_CUH
