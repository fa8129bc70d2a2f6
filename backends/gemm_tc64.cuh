// float64 GEMM on the FP64 tensor cores (mma.sync ... .f64, sm_80 and newer): the tc64 tile of
// backends/gemm_plan.py, plain (all four transpose pairs, alpha/beta), fused (the epilogues of
// gemm.cuh) and split over K (gemm.cuh SplitK). Included by kernels.cu after gemm.cuh, whose slab
// loader (AsyncSlabLoader, cp.async), epilogues (EpiScale, EpiBiasSigmoid, EpiSigmoidBackward),
// split-K workspace (SplitK) and kernel macros (DEFINE_GEMM*) it reuses: a fused TC kernel computes
// the same formulas as its SIMT twin, only the order of the dot product's additions differs.
//
// Why: on an H100 the FP64 tensor cores have about twice the FP64 FMA pipes' throughput, and the
// f64 mma takes and returns IEEE doubles (no reduced-precision operands, unlike TF32), so the
// float64 build keeps its precision. It stays deterministic: no atomics, each element's sum built
// in an order fixed by the tile alone (k ascending, one mma per four values of k, each mma's
// result a function of its operands), so reruns and both backends give the same bits.
//
// The kernels exist in every build (the op table lists one kernel set for both dtypes). Where the
// tensor cores cannot run them (the float build, or a target older than sm_80, such as the
// default-arch nvcc build of the tests) the same kernel computes the same tile with FP32/FP64 FMAs
// (gemm.cuh's gemm_block), so a forced launch is still correct; the planner never picks the tile
// there (gemm_plan.plan_gemm's tc64 flag: float64 and compute capability >= 8.0).
#ifndef DPMLP_GEMM_TC64_CUH
#define DPMLP_GEMM_TC64_CUH

#include "common.cuh"
#include "gemm.cuh"

// TC64_MMA: 1 where the tensor-core path is compiled (REAL is double and the target is sm_80+).
// REAL is a type name, which #if cannot compare: it is pasted onto a prefix instead.
#define TC64_CAT_(a, b) a##b
#define TC64_CAT(a, b) TC64_CAT_(a, b)
#define TC64_IS_double 1
#define TC64_IS_float 0
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800 && TC64_CAT(TC64_IS_, REAL)
#define TC64_MMA 1
#else
#define TC64_MMA 0
#endif

// The tc64 tile: 64 x 64 of C per block, 4 warps of 32 x 32 (2 x 2), BK = 8 deep slabs in four
// cp.async stages (3 in flight while one is multiplied: the loads are per element, latency-bound).
// 4 stages of (64 + 4 + 64 + 4) x 8 doubles = 34 KB of static shared memory: up to six blocks per
// multiprocessor by memory, four by registers (launch bounds 128 x 4: at most 128 registers).
#define TC64_BM 64
#define TC64_BN 64
#define TC64_WARPS_M 2
#define TC64_WARPS_N 2
#define TC64_THREADS (32 * TC64_WARPS_M * TC64_WARPS_N)
#define TC64_BK 8
#define TC64_STAGES 4
#define TC64_MIN_BLOCKS 4
// tc128: 128 x 64 of C per block, 8 warps of the same 32 x 32 (4 x 2), three stages (38 KB): a
// third fewer slab loads per multiply-add than tc64, for products whose tiles fill the GPU several
// times over (H = 4096, n = 3200). Two blocks per multiprocessor by registers. No split kernels
// (the split workspace's slots are 64 x 64).
#define TC128_BM 128
#define TC128_BN 64
#define TC128_WARPS_M 4
#define TC128_WARPS_N 2
#define TC128_THREADS (32 * TC128_WARPS_M * TC128_WARPS_N)
#define TC128_BK 8
#define TC128_STAGES 3
#define TC128_MIN_BLOCKS 2

#if TC64_MMA
// d (16 x 8) += a (16 x 4, row) * b (4 x 8, col), lane = 4 * gid + tig (gid = lane / 4, tig =
// lane % 4): a[0] = A(gid, tig), a[1] = A(gid + 8, tig); b = B(tig, gid); d[0..1] = D(gid, 2*tig +
// 0..1), d[2..3] = D(gid + 8, 2*tig + 0..1). sm_90 has this shape as one instruction (m16n8k4,
// PTX ISA 7.8); sm_80..89 only m8n8k4, whose fragments are the upper and lower halves of these
// (same lane mapping), so two m8n8k4 compute the same 16 x 8 block.
__device__ __forceinline__ void tc64_mma_16x8x4(double (&d)[4], const double (&a)[2], double b)
{
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
}

// One warp's WTM x WTN part of the tile over one BK-deep slab in shared memory (As: BK rows of
// BM + SMEM_PAD reals, k-major; Bs likewise): acc[i][j] is the 16 x 8 block (i, j) of the warp
// tile, k ascending in steps of 4. Fragment reads: lane (gid, tig) reads row k + tig at column gid
// (+ 8): the four k-rows of a warp's read start 2 * (BM + 4) = 136 words apart, 8 banks mod 32, so
// the 32 doubles fall on every bank exactly twice: two wavefronts, the least for 256 bytes.
template <int BM, int BN, int BK, int MI, int NJ>
__device__ __forceinline__ void tc64_multiply_slab(double (&acc)[MI][NJ][4], const double* As,
                                                   const double* Bs, int wm0, int wn0, int gid,
                                                   int tig)
{
    constexpr int AS = BM + SMEM_PAD, BS = BN + SMEM_PAD;
#pragma unroll
    for (int kk = 0; kk < BK; kk += 4) {
        const double* arow = As + (kk + tig) * AS + wm0 + gid;
        const double* brow = Bs + (kk + tig) * BS + wn0 + gid;
        double a[MI][2], b[NJ];
#pragma unroll
        for (int i = 0; i < MI; ++i) {
            a[i][0] = arow[16 * i];
            a[i][1] = arow[16 * i + 8];
        }
#pragma unroll
        for (int j = 0; j < NJ; ++j) b[j] = brow[8 * j];
#pragma unroll
        for (int i = 0; i < MI; ++i)
#pragma unroll
            for (int j = 0; j < NJ; ++j) tc64_mma_16x8x4(acc[i][j], a[i], b[j]);
    }
}

// The end of a tc64 block: element (r, c) of the warp's blocks through the epilogue (EpiScale: the
// plain GEMM), each written by the lane that holds it. Row/column of acc[i][j][e]: wm0 + 16 i +
// gid + 8 (e / 2), wn0 + 8 j + 2 tig + e % 2.
template <int BM, int BN, int NT, int MI, int NJ, class Epi>
__device__ __forceinline__ void tc64_finish(double (&acc)[MI][NJ][4], double* smem,
                                            double* __restrict__ C, int M, int N, int ldc, int m0,
                                            int n0, int wm0, int wn0, int gid, int tig,
                                            const Epi& epi)
{
    (void)smem;
#pragma unroll
    for (int j = 0; j < NJ; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int col = n0 + wn0 + 8 * j + 2 * tig + (e & 1);
            if (col >= N) continue;
#pragma unroll
            for (int i = 0; i < MI; ++i) {
                const int row = m0 + wm0 + 16 * i + gid + 8 * (e >> 1);
                if (row < M) epi.apply(C, ldc, row, col, acc[i][j][e]);
            }
        }
}

// tc64_finish of a split block (overload: chosen for a SplitK epilogue), the protocol of gemm.cuh's
// split finish_tile: the raw partial tile to the block's slot (column-major within the tile), the
// tile's ticket, and the last block adds the S partials in the order z = 0..S-1 and applies the
// epilogue. Every thread reaches the barriers.
template <int BM, int BN, int NT, int MI, int NJ, class Epi>
__device__ __forceinline__ void tc64_finish(double (&acc)[MI][NJ][4], double* smem,
                                            double* __restrict__ C, int M, int N, int ldc, int m0,
                                            int n0, int wm0, int wn0, int gid, int tig,
                                            const SplitK<Epi>& sk)
{
    (void)smem;
    constexpr int TILE = BM * BN;
    __shared__ int last_split;
    const int tiles = gridDim.x * gridDim.y;
    const int tile = blockIdx.y * gridDim.x + blockIdx.x;
    const int splits = gridDim.z;
    double* slot = sk.ws + ((size_t)blockIdx.z * tiles + tile) * TILE;
#pragma unroll
    for (int j = 0; j < NJ; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e)
#pragma unroll
            for (int i = 0; i < MI; ++i)
                slot[(wn0 + 8 * j + 2 * tig + (e & 1)) * BM + wm0 + 16 * i + gid + 8 * (e >> 1)] =
                    acc[i][j][e];
    __threadfence();  // this thread's part of the partial is visible before the ticket
    __syncthreads();
    if (threadIdx.x == 0) last_split = (atomicAdd(sk.tickets + tile, 1) == splits - 1);
    __syncthreads();
    if (!last_split) return;  // the same for the whole block
    __threadfence();
    const volatile double* parts = sk.ws + (size_t)tile * TILE;
    const size_t zstride = (size_t)tiles * TILE;
    for (int e = threadIdx.x; e < TILE; e += NT) {
        const int row = m0 + e % BM;
        const int col = n0 + e / BM;
        if (row < M && col < N) {
            double s = parts[e];
            for (int z = 1; z < splits; ++z) s += parts[z * zstride + e];
            sk.epi.apply(C, ldc, row, col, s);
        }
    }
    if (threadIdx.x == 0) sk.tickets[tile] = 0;  // ready for the next launch
}

// The tensor-core block (a BM x BN tile, WARPS_M x WARPS_N warps): gemm_pipe's cp.async pipeline
// (same loader, same stage layout, one barrier per slab) feeding warp-level MMAs instead of
// per-thread FMAs. smem: PipeSmem<BM, BN, 1, BK, STAGES>::SIZE reals.
template <int BM, int BN, int WARPS_M, int WARPS_N, int BK, int STAGES, bool TA, bool TB,
          bool ONES, class Epi>
__device__ __forceinline__ void gemm_tc64_pipe(double* smem, const double* __restrict__ A,
                                               const double* __restrict__ B,
                                               double* __restrict__ C, int M, int N, int K,
                                               int lda, int ldb, int ldc, const Epi& epi)
{
    constexpr int NT = 32 * WARPS_M * WARPS_N;
    constexpr int WTM = BM / WARPS_M, WTN = BN / WARPS_N;  // warp tile
    constexpr int MI = WTM / 16, NJ = WTN / 8;                      // 16 x 8 blocks per warp
    constexpr int AS = BM + SMEM_PAD;
    constexpr int SLAB = PipeSmem<BM, BN, 1, BK, 1>::SIZE;  // one stage: As and Bs
    static_assert(WTM % 16 == 0 && WTN % 8 == 0 && BK % 4 == 0, "warp tile of 16 x 8 x 4 MMAs");

    const int tid = threadIdx.x;
    const int warp = tid / 32, lane = tid % 32;
    const int gid = lane / 4, tig = lane % 4;
    const int wm0 = (warp % WARPS_M) * WTM;
    const int wn0 = (warp / WARPS_M) * WTN;
    const int m0 = blockIdx.x * BM;
    const int n0 = blockIdx.y * BN;

    AsyncSlabLoader<BM, BN, BK, NT, TA, TB, ONES> slab(A, B, M, N, K, lda, ldb, m0, n0, tid);
    double acc[MI][NJ][4];
#pragma unroll
    for (int i = 0; i < MI; ++i)
#pragma unroll
        for (int j = 0; j < NJ; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0;

    const unsigned sbase = shared_addr(smem);
    const int nslabs = (K + BK - 1) / BK;
    // as gemm_pipe: one commit per slab, empty groups past the last one
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < nslabs) slab.issue(smem, sbase, s * SLAB);
        copy_commit();
    }
    int rd = 0, wr = STAGES - 1;
    for (int s = 0; s < nslabs; ++s) {
        copy_wait<STAGES - 2>();
        __syncthreads();  // slab s visible to all; slab s-1's stage (wr) free to overwrite
        if (s + STAGES - 1 < nslabs) slab.issue(smem, sbase, wr * SLAB);
        copy_commit();
        wr = (wr + 1 == STAGES) ? 0 : wr + 1;
        const double* As = smem + rd * SLAB;
        const double* Bs = As + BK * AS;
        rd = (rd + 1 == STAGES) ? 0 : rd + 1;
        tc64_multiply_slab<BM, BN, BK, MI, NJ>(acc, As, Bs, wm0, wn0, gid, tig);
    }
    copy_wait<0>();  // only empty groups can remain
    tc64_finish<BM, BN, NT, MI, NJ>(acc, smem, C, M, N, ldc, m0, n0, wm0, wn0, gid, tig, epi);
}
#endif  // TC64_MMA

// Shared memory of a tc64 / tc128 block, in reals: the pipeline's stages (the SIMT stand-ins below
// declare their own).
#define TC64_SMEM PipeSmem<TC64_BM, TC64_BN, 1, TC64_BK, TC64_STAGES>::SIZE
#define TC128_SMEM PipeSmem<TC128_BM, TC128_BN, 1, TC128_BK, TC128_STAGES>::SIZE

// The tile entry of the tc64 kernels (gemm.cuh's call<TA, TB, ONES>(GEMM_CORE_PASS, epi)). Without
// the tensor cores: the same 64 x 64 tile by gemm_block with 128 threads (8 x 4 per thread, one
// k-group), a correct stand-in the planner does not pick.
template <bool TA, bool TB, bool ONES, class Epi>
__device__ __forceinline__ void gemm_tc64(GEMM_CORE_ARGS, const Epi& epi)
{
#if TC64_MMA
    __shared__ __align__(16) real smem[TC64_SMEM];
    gemm_tc64_pipe<TC64_BM, TC64_BN, TC64_WARPS_M, TC64_WARPS_N, TC64_BK, TC64_STAGES, TA, TB,
                   ONES>(smem, GEMM_CORE_PASS, epi);
#else
    gemm_block<TC64_BM, TC64_BN, 8, 4, 1, TC64_BK, TA, TB, ONES>(GEMM_CORE_PASS, epi);
#endif
}

// The tile entry of the tc128 kernels; without the tensor cores, gemm_block with 256 threads.
template <bool TA, bool TB, bool ONES, class Epi>
__device__ __forceinline__ void gemm_tc128(GEMM_CORE_ARGS, const Epi& epi)
{
#if TC64_MMA
    __shared__ __align__(16) real smem[TC128_SMEM];
    gemm_tc64_pipe<TC128_BM, TC128_BN, TC128_WARPS_M, TC128_WARPS_N, TC128_BK, TC128_STAGES, TA,
                   TB, ONES>(smem, GEMM_CORE_PASS, epi);
#else
    gemm_block<TC128_BM, TC128_BN, 8, 4, 1, TC128_BK, TA, TB, ONES>(GEMM_CORE_PASS, epi);
#endif
}

// tc64 split over K across gridDim.z blocks per tile: the K ranges of gemm.cuh's split_k_range
// (multiples of SPLIT_K_ALIGN, whole slabs of TC64_BK; empty ranges contribute zero partials).
template <bool TA, bool TB, bool ONES, class Epi>
__device__ __forceinline__ void gemm_tc64_split(GEMM_CORE_ARGS, const Epi& epi, real* ws,
                                                int* tickets)
{
    static_assert(SPLIT_K_ALIGN % TC64_BK == 0, "split ranges are whole slabs");
    static_assert(TC64_BM == 64 && TC64_BN == 64, "split workspace slots are 64 x 64");
    int chunk;
    const int klen = split_k_range<TA, TB>(A, B, K, lda, ldb, chunk);
    const SplitK<Epi> sk{epi, ws, tickets};
#if TC64_MMA
    __shared__ __align__(16) real smem[TC64_SMEM];
    gemm_tc64_pipe<TC64_BM, TC64_BN, TC64_WARPS_M, TC64_WARPS_N, TC64_BK, TC64_STAGES, TA, TB,
                   ONES>(smem, A, B, C, M, N, klen, lda, ldb, ldc, sk);
#else
    gemm_block<TC64_BM, TC64_BN, 8, 4, 1, TC64_BK, TA, TB, ONES>(A, B, C, M, N, klen, lda, ldb,
                                                                   ldc, sk);
#endif
}

// The kernels (names: gemm_plan.GEMM_KERNELS, GEMM_SPLIT_KERNELS and GEMM_VARIANTS for the tc64
// and tc128 tiles): every transpose pair of the plain GEMM, the fused ones of the pairs the model
// uses (tc128: the deep-K ones only, z1 and [dW1 db1]), the split ones where t64 has them.
DEFINE_GEMM(tc64, nn, false, false, gemm_tc64, TC64_THREADS, TC64_MIN_BLOCKS)
DEFINE_GEMM(tc64, nt, false, true, gemm_tc64, TC64_THREADS, TC64_MIN_BLOCKS)
DEFINE_GEMM(tc64, tn, true, false, gemm_tc64, TC64_THREADS, TC64_MIN_BLOCKS)
DEFINE_GEMM(tc64, tt, true, true, gemm_tc64, TC64_THREADS, TC64_MIN_BLOCKS)
DEFINE_GEMM_BIAS_SIGMOID(tc64, nn, false, false, gemm_tc64, TC64_THREADS, TC64_MIN_BLOCKS)
DEFINE_GEMM_SIGMOID_BACKWARD(tc64, tn, true, false, gemm_tc64, TC64_THREADS, TC64_MIN_BLOCKS)
DEFINE_GEMM_BIAS_GRAD(tc64, nt, false, true, gemm_tc64, TC64_THREADS, TC64_MIN_BLOCKS)
DEFINE_GEMM_SPLIT(tc64, nn, false, false, gemm_tc64_split, TC64_THREADS, TC64_MIN_BLOCKS)
DEFINE_GEMM_SPLIT(tc64, nt, false, true, gemm_tc64_split, TC64_THREADS, TC64_MIN_BLOCKS)
DEFINE_GEMM_BIAS_SIGMOID_SPLIT(tc64, nn, false, false, gemm_tc64_split, TC64_THREADS,
                               TC64_MIN_BLOCKS)
DEFINE_GEMM_BIAS_GRAD_SPLIT(tc64, nt, false, true, gemm_tc64_split, TC64_THREADS, TC64_MIN_BLOCKS)
DEFINE_GEMM(tc128, nn, false, false, gemm_tc128, TC128_THREADS, TC128_MIN_BLOCKS)
DEFINE_GEMM(tc128, nt, false, true, gemm_tc128, TC128_THREADS, TC128_MIN_BLOCKS)
DEFINE_GEMM(tc128, tn, true, false, gemm_tc128, TC128_THREADS, TC128_MIN_BLOCKS)
DEFINE_GEMM(tc128, tt, true, true, gemm_tc128, TC128_THREADS, TC128_MIN_BLOCKS)
DEFINE_GEMM_BIAS_SIGMOID(tc128, nn, false, false, gemm_tc128, TC128_THREADS, TC128_MIN_BLOCKS)
DEFINE_GEMM_BIAS_GRAD(tc128, nt, false, true, gemm_tc128, TC128_THREADS, TC128_MIN_BLOCKS)

#endif  // DPMLP_GEMM_TC64_CUH
