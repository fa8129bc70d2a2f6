// GEMM kernels: C = alpha * op(A) * op(B) + beta * C for every tile of backends/gemm_plan.py and
// every transpose pair. Included by kernels.cu.
#ifndef DPMLP_GEMM_CUH
#define DPMLP_GEMM_CUH

#include "common.cuh"

// Load N consecutive reals from 16-byte aligned shared memory with 128-bit loads (LDS.128): one
// instruction instead of four keeps the GEMM inner loop issue-bound on FMAs, not on loads.
template <int N>
__device__ __forceinline__ void lds_vec(const float* p, float* r)
{
#pragma unroll
    for (int q = 0; q < N / 4; ++q) {
        const float4 v = reinterpret_cast<const float4*>(p)[q];
        r[4 * q + 0] = v.x;
        r[4 * q + 1] = v.y;
        r[4 * q + 2] = v.z;
        r[4 * q + 3] = v.w;
    }
}

template <int N>
__device__ __forceinline__ void lds_vec(const double* p, double* r)
{
#pragma unroll
    for (int q = 0; q < N / 2; ++q) {
        const double2 v = reinterpret_cast<const double2*>(p)[q];
        r[2 * q + 0] = v.x;
        r[2 * q + 1] = v.y;
    }
}

// ------------------------------------------------------------------------------------------------
// GEMM: C = alpha * op(A) * op(B) + beta * C, column-major, op(X) = X or X^T.
//
// op(A) is M x K, op(B) is K x N, C is M x N. A block computes a BM x BN tile of C; each thread
// keeps a TM x TN micro-tile of C in registers (register blocking), so a few 128-bit shared-memory
// loads feed TM*TN fused multiply-adds. The K loop walks BK-deep slabs of op(A) and op(B) through
// two shared-memory buffers: while the block multiplies one slab, every thread already holds its
// part of the next one in registers (loaded from global memory before the multiply) and stores it
// into the other buffer afterwards, so one barrier per slab suffices.
// ------------------------------------------------------------------------------------------------

// Shared rows are padded by 4 reals: keeps each row 16-byte aligned for lds_vec and spreads the
// k-fastest stores (transposed A, non-transposed B) over the banks.
#define SMEM_PAD 4

// Moves BK-deep slabs of op(A) (BM x BK) and op(B) (BK x BN) from global memory to shared memory,
// NT threads sharing the work. Element e = tid + l*NT of a slab goes to the thread that makes the
// warp's global reads consecutive: along rows for A, along k for A^T, along k for B, along columns
// for B^T. NT being a multiple of BM, BN and BK, one coordinate of a thread's elements is the same
// in all its loads, so its global offsets are computed once and advanced by a constant per slab.
// ONES: op(B) has N - 1 columns of its own and a virtual last column N - 1 of ones,
// C = op(A) [op(B) 1]: the row sums of op(A) come out as C's last column (DEFINE_GEMM_BIAS_GRAD).
template <int BM, int BN, int BK, int NT, bool TA, bool TB, bool ONES = false>
struct SlabLoader {
    static constexpr int A_LOADS = BM * BK / NT;
    static constexpr int B_LOADS = BN * BK / NT;
    // how far the varying coordinate moves between a thread's successive loads
    static constexpr int A_LSTEP = TA ? NT / BK : NT / BM;
    static constexpr int B_LSTEP = TB ? NT / BN : NT / BK;
    static_assert(NT % BM == 0 && NT % BN == 0 && NT % BK == 0, "threads must tile the slab");
    static_assert(A_LOADS * NT == BM * BK && B_LOADS * NT == BN * BK, "slab must divide evenly");

    const real* __restrict__ A;
    const real* __restrict__ B;
    int M, N, K, k0;
    int a_row, a_k, b_col, b_k;          // tile coordinates of load 0 (rows/cols relative to m0/n0)
    int a_off, a_lstride, a_sstride;     // global offset of load 0, per load, per slab
    int b_off, b_lstride, b_sstride;
    int m0, n0;
    real a[A_LOADS];
    real b[B_LOADS];

    __device__ __forceinline__ SlabLoader(const real* A_, const real* B_, int M_, int N_, int K_,
                                          int lda, int ldb, int m0_, int n0_, int tid)
        : A(A_), B(B_), M(M_), N(N_), K(K_), k0(0), m0(m0_), n0(n0_)
    {
        a_row = TA ? tid / BK : tid % BM;
        a_k = TA ? tid % BK : tid / BM;
        b_col = TB ? tid % BN : tid / BK;
        b_k = TB ? tid / BN : tid % BK;
        a_off = TA ? (m0 + a_row) * lda + a_k : a_k * lda + m0 + a_row;
        a_lstride = A_LSTEP * lda;  // rows of A^T and k of A are both lda apart
        a_sstride = TA ? BK : BK * lda;
        b_off = TB ? b_k * ldb + n0 + b_col : (n0 + b_col) * ldb + b_k;
        b_lstride = B_LSTEP * ldb;
        b_sstride = TB ? BK * ldb : BK;
    }

    // registers <- the next slab (zeros outside the matrices)
    __device__ __forceinline__ void load()
    {
#pragma unroll
        for (int l = 0; l < A_LOADS; ++l) {
            const int row = m0 + a_row + (TA ? l * A_LSTEP : 0);
            const int k = k0 + a_k + (TA ? 0 : l * A_LSTEP);
            a[l] = (row < M && k < K) ? A[a_off + l * a_lstride] : real(0);
        }
#pragma unroll
        for (int l = 0; l < B_LOADS; ++l) {
            const int col = n0 + b_col + (TB ? 0 : l * B_LSTEP);
            const int k = k0 + b_k + (TB ? l * B_LSTEP : 0);
            if (ONES)
                b[l] = (col < N - 1 && k < K) ? B[b_off + l * b_lstride]
                                              : ((col == N - 1 && k < K) ? real(1) : real(0));
            else
                b[l] = (col < N && k < K) ? B[b_off + l * b_lstride] : real(0);
        }
        k0 += BK;
        a_off += a_sstride;
        b_off += b_sstride;
    }

    // shared <- registers; As is BK rows of BM + SMEM_PAD, Bs BK rows of BN + SMEM_PAD
    __device__ __forceinline__ void store(real* As, real* Bs) const
    {
#pragma unroll
        for (int l = 0; l < A_LOADS; ++l)
            As[(a_k + (TA ? 0 : l * A_LSTEP)) * (BM + SMEM_PAD) + a_row + (TA ? l * A_LSTEP : 0)] = a[l];
#pragma unroll
        for (int l = 0; l < B_LOADS; ++l)
            Bs[(b_k + (TB ? l * B_LSTEP : 0)) * (BN + SMEM_PAD) + b_col + (TB ? 0 : l * B_LSTEP)] = b[l];
    }
};

// C tile epilogue: beta == 0 means C is never read (it may hold NaN); K == 0 leaves acc at 0,
// which gives beta * C.
__device__ __forceinline__ void store_c(real* C, int ldc, int row, int col, real alpha, real beta,
                                        real acc)
{
    real* c = C + col * ldc + row;
    const real v = alpha * acc;
    *c = (beta == real(0)) ? v : v + beta * *c;
}

// Epilogues: what finish_tile does with element (row, col) of the finished tile, acc = the dot
// product of row `row` of op(A) and column `col` of op(B). Each is the formula of the op it fuses,
// written as in elementwise.cuh, so a fused GEMM computes what the GEMM and that op compute.
// The plain GEMM: C = alpha * acc + beta * C (store_c).
struct EpiScale {
    real alpha, beta;
    __device__ __forceinline__ void apply(real* C, int ldc, int row, int col, real acc) const
    {
        store_c(C, ldc, row, col, alpha, beta, acc);
    }
};
// gemm_bias_sigmoid: C = sigmoid(acc + bias[row]) (bias_sigmoid's formula); C is never read.
struct EpiBiasSigmoid {
    const real* bias;
    __device__ __forceinline__ void apply(real* C, int ldc, int row, int col, real acc) const
    {
        const real v = acc + bias[row];
        C[col * ldc + row] = real(1) / (real(1) + r_exp(-v));
    }
};
// gemm_sigmoid_backward: C = acc * a * (1 - a), a = act(row, col) of the column-major act with
// leading dimension ld (sigmoid_backward's formula); C is never read.
struct EpiSigmoidBackward {
    const real* act;
    int ld;
    __device__ __forceinline__ void apply(real* C, int ldc, int row, int col, real acc) const
    {
        const real av = act[col * ld + row];
        C[col * ldc + row] = (acc * av) * (real(1) - av);
    }
};

// The k-groups' partial tiles added into group 0's acc: tree reduction, upper half writes, lower
// half adds, halve again. Element (i, j) of thread lt's micro-tile lives at
// red[(slot * TM*TN + i*TN + j) * GT + lt]: consecutive lt are consecutive words (no bank
// conflicts). `red` is the block's slab buffers, free by now: the caller ends its K loop with a
// barrier. Ends with a barrier when KG > 1.
template <int BM, int BN, int TM, int TN, int KG>
__device__ __forceinline__ void reduce_groups(real (&acc)[TM][TN], real* red, int g, int lt)
{
    constexpr int GT = (BM / TM) * (BN / TN);
#pragma unroll
    for (int half = KG / 2; half >= 1; half >>= 1) {
        if (g >= half && g < 2 * half) {
#pragma unroll
            for (int i = 0; i < TM; ++i)
#pragma unroll
                for (int j = 0; j < TN; ++j)
                    red[((g - half) * TM * TN + i * TN + j) * GT + lt] = acc[i][j];
        }
        __syncthreads();
        if (g < half) {
#pragma unroll
            for (int i = 0; i < TM; ++i)
#pragma unroll
                for (int j = 0; j < TN; ++j)
                    acc[i][j] += red[(g * TM * TN + i * TN + j) * GT + lt];
        }
        __syncthreads();
    }
}

// The end of every GEMM block: the KG partial tiles of the k-groups are added (reduce_groups),
// then group 0 writes its BM x BN tile of C through the epilogue `epi` (EpiScale: the plain GEMM).
template <int BM, int BN, int TM, int TN, int KG, class Epi>
__device__ __forceinline__ void finish_tile(real (&acc)[TM][TN], real* red, int g, int lt, int tx,
                                            int ty, real* __restrict__ C, int M, int N, int ldc,
                                            int m0, int n0, const Epi& epi)
{
    constexpr int RSPAN = BM / (TM / 4), CSPAN = BN / (TN / 4);
    reduce_groups<BM, BN, TM, TN, KG>(acc, red, g, lt);

    if (g != 0) return;
#pragma unroll
    for (int j = 0; j < TN; ++j) {
        const int col = n0 + (j / 4) * CSPAN + ty * 4 + (j % 4);
        if (col >= N) continue;
#pragma unroll
        for (int i = 0; i < TM; ++i) {
            const int row = m0 + (i / 4) * RSPAN + tx * 4 + (i % 4);
            if (row < M) epi.apply(C, ldc, row, col, acc[i][j]);
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Cross-block split-K (the *_split kernels): gridDim.z = S blocks share each tile of C, block z
// multiplying its own range of K (gemm_t64_split). Deterministic, without float atomics, in one
// launch, as output_layer's loss (reductions.cuh):
// * every block writes its raw partial tile (after its k-groups' reduction; before alpha, beta and
//   the epilogue) to its slot ws[(z * tiles + tile) * BM*BN], column-major within the tile, then
//   takes the tile's int ticket (tickets[tile]) after a __threadfence;
// * the block that takes the last ticket adds the S partials of the tile in the order z = 0..S-1,
//   its own read back from ws like the others (so the sum never depends on which block came
//   last), applies the epilogue and resets the ticket to 0 for the next launch (or graph replay).
// The result depends only on the operands, S and the tile: reruns, replays and the two backends
// agree bit for bit. Workspace: S * tiles slots of BM*BN reals and `tiles` tickets
// (gemm_plan.GEMM_SPLIT_SLOTS, GEMM_SPLIT_TICKETS: the planner only picks splits that fit).
// ------------------------------------------------------------------------------------------------
template <class Epi>
struct SplitK {
    Epi epi;
    real* ws;      // [gridDim.z][tiles][BM * BN] raw partial tiles
    int* tickets;  // [tiles], 0 between launches
};

// finish_tile of a split block (overload: chosen for a SplitK epilogue). Every thread of the block
// reaches its barriers (no early return before them).
template <int BM, int BN, int TM, int TN, int KG, class Epi>
__device__ __forceinline__ void finish_tile(real (&acc)[TM][TN], real* red, int g, int lt, int tx,
                                            int ty, real* __restrict__ C, int M, int N, int ldc,
                                            int m0, int n0, const SplitK<Epi>& sk)
{
    constexpr int RSPAN = BM / (TM / 4), CSPAN = BN / (TN / 4);
    constexpr int NT = (BM / TM) * (BN / TN) * KG;
    constexpr int TILE = BM * BN;
    __shared__ int last_split;
    reduce_groups<BM, BN, TM, TN, KG>(acc, red, g, lt);

    const int tiles = gridDim.x * gridDim.y;
    const int tile = blockIdx.y * gridDim.x + blockIdx.x;
    const int splits = gridDim.z;
    if (g == 0) {
        real* slot = sk.ws + ((size_t)blockIdx.z * tiles + tile) * TILE;
#pragma unroll
        for (int j = 0; j < TN; ++j)
#pragma unroll
            for (int i = 0; i < TM; ++i)
                slot[((j / 4) * CSPAN + ty * 4 + (j % 4)) * BM + (i / 4) * RSPAN + tx * 4 + (i % 4)] =
                    acc[i][j];
        __threadfence();  // this thread's part of the partial is visible before the ticket
    }
    __syncthreads();
    if (threadIdx.x == 0) last_split = (atomicAdd(sk.tickets + tile, 1) == splits - 1);
    __syncthreads();
    if (!last_split) return;  // the same for the whole block
    __threadfence();
    // Element e of the tile: row e % BM, column e / BM; consecutive threads read consecutive
    // words of each slot and write consecutive rows of C. Volatile reads (as output_layer's): the
    // other blocks' partials, never a stale cached line.
    const volatile real* parts = sk.ws + (size_t)tile * TILE;
    const size_t zstride = (size_t)tiles * TILE;
    for (int e = threadIdx.x; e < TILE; e += NT) {
        const int row = m0 + e % BM;
        const int col = n0 + e / BM;
        if (row < M && col < N) {
            real s = parts[e];
            for (int z = 1; z < splits; ++z) s += parts[z * zstride + e];
            sk.epi.apply(C, ldc, row, col, s);
        }
    }
    if (threadIdx.x == 0) sk.tickets[tile] = 0;  // ready for the next launch
}

// The GEMM block: a BM x BN tile of C computed by KG groups of (BM/TM)*(BN/TN) threads. Each
// BK = KG*KPG deep slab of K is split between the groups (group g multiplies k = g*KPG .. g*KPG +
// KPG-1 of it); with KG > 1 the groups' partial tiles are added at the end in a fixed tree order
// through shared memory (deterministic, no atomics). Splitting K inside the block shortens the
// chain of slabs a block walks and puts more warps on each multiprocessor: the model's products are
// too small to fill an H100 with tiles alone, and a block walking all of K by itself is bound by
// global-load latency, not arithmetic.
//
// A thread owns TM rows and TN columns of the tile in groups of 4: rows gr*(BM*4/TM) + tx*4 + 0..3
// for gr < TM/4 (likewise columns), so the threads of a warp read consecutive 16-byte words of a
// shared row (no bank conflicts; a thread-contiguous 8-row fragment would put every other thread
// of a quarter warp on the same banks).
// One k-group's share of a slab held in shared memory (As: BK x (BM + pad), Bs: BK x (BN + pad)):
// acc += A-fragment x B-fragment over the group's KPG values of k. Shared by both GEMM blocks.
template <int BM, int BN, int TM, int TN, int KPG>
__device__ __forceinline__ void multiply_slab(real (&acc)[TM][TN], const real* As, const real* Bs,
                                              int g, int tx, int ty)
{
    constexpr int RG = TM / 4, CG = TN / 4;    // 4-wide row / column groups per thread
    constexpr int RSPAN = BM / RG, CSPAN = BN / CG;
    constexpr int AS = BM + SMEM_PAD, BS = BN + SMEM_PAD;
#pragma unroll
    for (int q = 0; q < KPG; ++q) {
        const int kk = g * KPG + q;
        real a_frag[TM], b_frag[TN];
#pragma unroll
        for (int gr = 0; gr < RG; ++gr)
            lds_vec<4>(As + kk * AS + gr * RSPAN + tx * 4, a_frag + 4 * gr);
#pragma unroll
        for (int gc = 0; gc < CG; ++gc)
            lds_vec<4>(Bs + kk * BS + gc * CSPAN + ty * 4, b_frag + 4 * gc);
#pragma unroll
        for (int i = 0; i < TM; ++i)
#pragma unroll
            for (int j = 0; j < TN; ++j) acc[i][j] += a_frag[i] * b_frag[j];
    }
}

template <int BM, int BN, int TM, int TN, int KG, int KPG, bool TA, bool TB, bool ONES, class Epi>
__device__ __forceinline__ void gemm_block(const real* __restrict__ A, const real* __restrict__ B,
                                           real* __restrict__ C, int M, int N, int K, int lda,
                                           int ldb, int ldc, const Epi& epi)
{
    constexpr int GT = (BM / TM) * (BN / TN);  // threads per k-group
    constexpr int NT = GT * KG;
    constexpr int BK = KG * KPG;
    constexpr int AS = BM + SMEM_PAD, BS = BN + SMEM_PAD;
    constexpr int SLAB = BK * AS + BK * BS;  // one buffer of As and Bs
    static_assert(TM % 4 == 0 && TN % 4 == 0, "micro-tile is made of 4-wide groups");
    static_assert((KG / 2) * GT * TM * TN <= 2 * SLAB, "reduction must fit in the slab buffers");

    __shared__ __align__(16) real smem[2 * SLAB];

    const int tid = threadIdx.x;
    const int g = tid / GT;
    const int lt = tid % GT;
    const int tx = lt % (BM / TM);  // fastest through the warp: distinct A fragments, shared B ones
    const int ty = lt / (BM / TM);
    const int m0 = blockIdx.x * BM;
    const int n0 = blockIdx.y * BN;

    SlabLoader<BM, BN, BK, NT, TA, TB, ONES> slab(A, B, M, N, K, lda, ldb, m0, n0, tid);
    real acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = real(0);

    const int nslabs = (K + BK - 1) / BK;
    if (nslabs > 0) {
        slab.load();
        slab.store(smem, smem + BK * AS);
        __syncthreads();
        for (int s = 0; s < nslabs; ++s) {
            const int cur = s & 1;
            if (s + 1 < nslabs) slab.load();  // in flight during the multiply below
            const real* As = smem + cur * SLAB;
            const real* Bs = As + BK * AS;
            multiply_slab<BM, BN, TM, TN, KPG>(acc, As, Bs, g, tx, ty);
            // The other buffer was last read in slab s-1, and every thread passed the barrier that
            // ended slab s-1 before getting here: it is free to overwrite.
            if (s + 1 < nslabs) {
                real* nxt = smem + (cur ^ 1) * SLAB;
                slab.store(nxt, nxt + BK * AS);
            }
            __syncthreads();
        }
    }

    finish_tile<BM, BN, TM, TN, KG>(acc, smem, g, lt, tx, ty, C, M, N, ldc, m0, n0, epi);
}

// ------------------------------------------------------------------------------------------------
// Pipelined GEMM block (the large tiles): the same tile, micro-tile and k-group layout as
// gemm_block, but the slabs travel from global to shared memory by cp.async (sm_80 and newer),
// STAGES slabs deep: while the block multiplies slab s, slabs s+1 .. s+STAGES-1 are in flight, with
// no registers held for them and one barrier per slab. Each element is copied on its own (4 or 8
// bytes), so any leading dimension, offset and transpose works; elements outside the matrices are
// zero-filled by the copy itself (source size 0: nothing is read). Without cp.async (a build for
// an older target) the same code stores each element synchronously; the barriers keep it correct.
// ------------------------------------------------------------------------------------------------

// shared-state-space address of a shared-memory pointer (for cp.async)
__device__ __forceinline__ unsigned shared_addr(const void* p)
{
    unsigned r;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(r) : "l"(p));
    return r;
}

// smem[off] <- ok ? *src : 0, asynchronously where cp.async exists. src must be a valid address
// even when !ok (the caller passes the matrix's first element).
__device__ __forceinline__ void copy_elem(real* smem, unsigned sbase, int off, const real* src,
                                          bool ok)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    (void)smem;
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(
                     sbase + static_cast<unsigned>(off) * static_cast<unsigned>(sizeof(real))),
                 "l"(src), "n"(static_cast<int>(sizeof(real))),
                 "r"(ok ? static_cast<int>(sizeof(real)) : 0));
#else
    (void)sbase;
    smem[off] = ok ? *src : real(0);
#endif
}

__device__ __forceinline__ void copy_commit()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}

// wait until at most N of this thread's committed copy groups are still in flight
template <int N>
__device__ __forceinline__ void copy_wait()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

// Issues the copies of successive BK-deep slabs of op(A) and op(B) into a stage of shared memory
// (As: BK rows of BM + SMEM_PAD, then Bs: BK rows of BN + SMEM_PAD). Same thread-to-element map as
// SlabLoader (coalesced global reads); which rows (columns) of a thread's loads lie inside the
// matrix is computed once, as a bit mask.
// ONES as in SlabLoader: the virtual column N - 1 of op(B) is written into shared memory directly
// (ones for k < K, zeros past K), by the thread that would have copied it.
// PAD: the reals each shared row is padded by (SMEM_PAD; the TF32x3 tiles use their own,
// gemm_tf32x3.cuh).
template <int BM, int BN, int BK, int NT, bool TA, bool TB, bool ONES = false, int PAD = SMEM_PAD>
struct AsyncSlabLoader {
    static constexpr int A_LOADS = BM * BK / NT;
    static constexpr int B_LOADS = BN * BK / NT;
    static constexpr int A_LSTEP = TA ? NT / BK : NT / BM;
    static constexpr int B_LSTEP = TB ? NT / BN : NT / BK;
    static constexpr int AS = BM + PAD, BS = BN + PAD;
    // shared-memory distance between a thread's successive loads
    static constexpr int A_DSTEP = TA ? A_LSTEP : A_LSTEP * AS;
    static constexpr int B_DSTEP = TB ? B_LSTEP * BS : B_LSTEP;
    static_assert(NT % BM == 0 && NT % BN == 0 && NT % BK == 0, "threads must tile the slab");
    static_assert(A_LOADS * NT == BM * BK && B_LOADS * NT == BN * BK, "slab must divide evenly");
    static_assert(A_LOADS <= 32 && B_LOADS <= 32, "row masks are 32 bits");

    const real* __restrict__ A;
    const real* __restrict__ B;
    int K;
    int a_k, b_k;                        // k of load 0 in the next slab
    int a_off, a_lstride, a_sstride;     // global offset of load 0, per load, per slab
    int b_off, b_lstride, b_sstride;
    unsigned a_ok, b_ok;                 // bit l: load l's row of op(A) / column of op(B) exists
    unsigned b_one;                      // bit l: load l's column is the ones column (ONES)
    int a_dst, b_dst;                    // shared offset of load 0 within a stage

    __device__ __forceinline__ AsyncSlabLoader(const real* A_, const real* B_, int M, int N, int K_,
                                               int lda, int ldb, int m0, int n0, int tid)
        : A(A_), B(B_), K(K_)
    {
        const int a_row = TA ? tid / BK : tid % BM;
        const int b_col = TB ? tid % BN : tid / BK;
        a_k = TA ? tid % BK : tid / BM;
        b_k = TB ? tid / BN : tid % BK;
        a_off = TA ? (m0 + a_row) * lda + a_k : a_k * lda + m0 + a_row;
        a_lstride = A_LSTEP * lda;
        a_sstride = TA ? BK : BK * lda;
        b_off = TB ? b_k * ldb + n0 + b_col : (n0 + b_col) * ldb + b_k;
        b_lstride = B_LSTEP * ldb;
        b_sstride = TB ? BK * ldb : BK;
        a_ok = 0u;
#pragma unroll
        for (int l = 0; l < A_LOADS; ++l)
            if (m0 + a_row + (TA ? l * A_LSTEP : 0) < M) a_ok |= 1u << l;
        b_ok = 0u;
        b_one = 0u;
#pragma unroll
        for (int l = 0; l < B_LOADS; ++l) {
            const int col = n0 + b_col + (TB ? 0 : l * B_LSTEP);
            if (col < (ONES ? N - 1 : N)) b_ok |= 1u << l;
            if (ONES && col == N - 1) b_one |= 1u << l;
        }
        a_dst = a_k * AS + a_row;
        b_dst = BK * AS + b_k * BS + b_col;
    }

    // copies of the next slab into the stage at smem + stage (sbase: its shared address)
    __device__ __forceinline__ void issue(real* smem, unsigned sbase, int stage)
    {
#pragma unroll
        for (int l = 0; l < A_LOADS; ++l) {
            const bool ok = ((a_ok >> l) & 1u) && a_k + (TA ? 0 : l * A_LSTEP) < K;
            copy_elem(smem, sbase, stage + a_dst + l * A_DSTEP, ok ? A + (a_off + l * a_lstride) : A, ok);
        }
        if (ONES && TB && b_one) {
            // (op(B) = B^T: every load of this thread lies in its one column, here the ones
            // column; deciding once per slab keeps the other threads' copies free of the branch)
            // The stage is free: the barrier before this issue ended its last reads.
#pragma unroll
            for (int l = 0; l < B_LOADS; ++l)
                smem[stage + b_dst + l * B_DSTEP] = (b_k + l * B_LSTEP < K) ? real(1) : real(0);
        } else {
#pragma unroll
            for (int l = 0; l < B_LOADS; ++l) {
                const bool k_in = b_k + (TB ? l * B_LSTEP : 0) < K;
                if (ONES && !TB && ((b_one >> l) & 1u)) {
                    smem[stage + b_dst + l * B_DSTEP] = k_in ? real(1) : real(0);
                } else {
                    const bool ok = ((b_ok >> l) & 1u) && k_in;
                    copy_elem(smem, sbase, stage + b_dst + l * B_DSTEP,
                              ok ? B + (b_off + l * b_lstride) : B, ok);
                }
            }
        }
        a_k += BK;
        b_k += BK;
        a_off += a_sstride;
        b_off += b_sstride;
    }
};

// Shared memory of gemm_pipe, in reals: STAGES stages of a BK-deep slab of op(A) and of op(B).
template <int BM, int BN, int KG, int KPG, int STAGES>
struct PipeSmem {
    static constexpr int SIZE = STAGES * KG * KPG * (BM + SMEM_PAD + BN + SMEM_PAD);
};

// smem: PipeSmem<...>::SIZE reals of 16-byte aligned shared memory, declared by the kernel (so
// that one kernel can choose between configurations at run time on one buffer)
template <int BM, int BN, int TM, int TN, int KG, int KPG, int STAGES, bool TA, bool TB, bool ONES,
          class Epi>
__device__ __forceinline__ void gemm_pipe(real* smem, const real* __restrict__ A,
                                          const real* __restrict__ B, real* __restrict__ C, int M,
                                          int N, int K, int lda, int ldb, int ldc, const Epi& epi)
{
    constexpr int GT = (BM / TM) * (BN / TN);  // threads per k-group
    constexpr int NT = GT * KG;
    constexpr int BK = KG * KPG;
    constexpr int AS = BM + SMEM_PAD, BS = BN + SMEM_PAD;
    constexpr int SLAB = BK * AS + BK * BS;  // one stage: As and Bs
    static_assert(TM % 4 == 0 && TN % 4 == 0, "micro-tile is made of 4-wide groups");
    static_assert(STAGES >= 2, "at least double buffering");
    static_assert((KG / 2) * GT * TM * TN <= STAGES * SLAB, "reduction must fit in the stages");
    static_assert(PipeSmem<BM, BN, KG, KPG, STAGES>::SIZE == STAGES * SLAB, "smem size");

    const int tid = threadIdx.x;
    const int g = tid / GT;
    const int lt = tid % GT;
    const int tx = lt % (BM / TM);
    const int ty = lt / (BM / TM);
    const int m0 = blockIdx.x * BM;
    const int n0 = blockIdx.y * BN;

    AsyncSlabLoader<BM, BN, BK, NT, TA, TB, ONES> slab(A, B, M, N, K, lda, ldb, m0, n0, tid);
    real acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = real(0);

    const unsigned sbase = shared_addr(smem);
    const int nslabs = (K + BK - 1) / BK;
    // Prologue: slabs 0 .. STAGES-2 in flight. One commit per slab (empty groups past the last
    // slab), so that "at most STAGES-2 groups pending" always means "slab s has landed".
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < nslabs) slab.issue(smem, sbase, s * SLAB);
        copy_commit();
    }
    int rd = 0, wr = STAGES - 1;
    for (int s = 0; s < nslabs; ++s) {
        copy_wait<STAGES - 2>();  // this thread's copies of slab s are done
        // Everyone's copies of slab s are visible, and everyone has finished multiplying slab
        // s-1, whose stage (wr) the copies of slab s+STAGES-1 may now overwrite.
        __syncthreads();
        if (s + STAGES - 1 < nslabs) slab.issue(smem, sbase, wr * SLAB);
        copy_commit();
        wr = (wr + 1 == STAGES) ? 0 : wr + 1;
        const real* As = smem + rd * SLAB;
        const real* Bs = As + BK * AS;
        rd = (rd + 1 == STAGES) ? 0 : rd + 1;
        multiply_slab<BM, BN, TM, TN, KPG>(acc, As, Bs, g, tx, ty);
    }
    copy_wait<0>();   // only empty groups can remain; the stages become the reduction buffer
    __syncthreads();
    finish_tile<BM, BN, TM, TN, KG>(acc, smem, g, lt, tx, ty, C, M, N, ldc, m0, n0, epi);
}

// One extern "C" kernel per (tile, transpose pair). Names: gemm_<tile>_<op(A)><op(B)>, n = as is,
// t = transposed; backends/gemm_plan.py holds the matching table (tile sizes, threads, grid).
//
// The fused GEMMs (core/ops.py FUSED_OPS) are more kernels of the same tiles, each with its own
// epilogue (and, for the bias gradient, the ones column of op(B)); DEFINE_GEMM_<VARIANT>(tile, ops,
// ...) defines gemm_<tile>_<ops>_<variant> with the parameters GEMM_<VARIANT>_ARGS. Only the
// transpose pair each fused op needs and the tiles gemm_plan.GEMM_VARIANTS lists are instantiated.
#define GEMM_CORE_ARGS                                                                             \
    const real *__restrict__ A, const real *__restrict__ B, real *__restrict__ C, int M, int N,    \
        int K, int lda, int ldb, int ldc
#define GEMM_CORE_PASS A, B, C, M, N, K, lda, ldb, ldc
#define GEMM_ARGS GEMM_CORE_ARGS, real alpha, real beta

#define DEFINE_GEMM(tile, ops, TA, TB, call, threads, min_blocks)                                  \
    extern "C" __global__ void __launch_bounds__(threads, min_blocks)                              \
        gemm_##tile##_##ops(GEMM_ARGS)                                                             \
    {                                                                                              \
        call<TA, TB, false>(GEMM_CORE_PASS, EpiScale{alpha, beta});                                \
    }

// C = sigmoid(op(A) op(B) + bias 1^T): z1 = W1 x and the hidden layer's activation in one launch
#define GEMM_BIAS_SIGMOID_ARGS GEMM_CORE_ARGS, const real *__restrict__ bias
#define DEFINE_GEMM_BIAS_SIGMOID(tile, ops, TA, TB, call, threads, min_blocks)                     \
    extern "C" __global__ void __launch_bounds__(threads, min_blocks)                              \
        gemm_##tile##_##ops##_bias_sigmoid(GEMM_BIAS_SIGMOID_ARGS)                                 \
    {                                                                                              \
        call<TA, TB, false>(GEMM_CORE_PASS, EpiBiasSigmoid{bias});                                 \
    }

// C = (op(A) op(B)) * act * (1 - act): da1 = W2^T diff and dz1 in one launch
#define GEMM_SIGMOID_BACKWARD_ARGS GEMM_CORE_ARGS, const real *__restrict__ act, int ldact
#define DEFINE_GEMM_SIGMOID_BACKWARD(tile, ops, TA, TB, call, threads, min_blocks)                 \
    extern "C" __global__ void __launch_bounds__(threads, min_blocks)                              \
        gemm_##tile##_##ops##_sigmoid_backward(GEMM_SIGMOID_BACKWARD_ARGS)                         \
    {                                                                                              \
        call<TA, TB, false>(GEMM_CORE_PASS, EpiSigmoidBackward{act, ldact});                       \
    }

// C (M x N) = op(A) [op(B) 1]: op(B) has N - 1 columns, the last column of C is the row sums of
// op(A), from the same tile loop and reduction order (dW = dz x^T with db = dz 1 next to it, as
// they lie in the flat gradient buffer). Writes C; never reads it.
#define GEMM_BIAS_GRAD_ARGS GEMM_CORE_ARGS
#define DEFINE_GEMM_BIAS_GRAD(tile, ops, TA, TB, call, threads, min_blocks)                        \
    extern "C" __global__ void __launch_bounds__(threads, min_blocks)                              \
        gemm_##tile##_##ops##_bias_grad(GEMM_BIAS_GRAD_ARGS)                                       \
    {                                                                                              \
        call<TA, TB, true>(GEMM_CORE_PASS, EpiScale{real(1), real(0)});                            \
    }

// The split-K kernels (gemm_plan.GEMM_SPLIT_TILES; SplitK above): the kernel of the same name
// without _split, two parameters more: the partial tiles' workspace and the tiles' tickets.
// call<TA, TB, ONES>(GEMM_CORE_PASS, epilogue, ws, tickets) is the tile's split entry.
#define GEMM_WS_ARGS real *__restrict__ ws, int *__restrict__ tickets
#define GEMM_SPLIT_ARGS GEMM_ARGS, GEMM_WS_ARGS
#define DEFINE_GEMM_SPLIT(tile, ops, TA, TB, call, threads, min_blocks)                            \
    extern "C" __global__ void __launch_bounds__(threads, min_blocks)                              \
        gemm_##tile##_##ops##_split(GEMM_SPLIT_ARGS)                                               \
    {                                                                                              \
        call<TA, TB, false>(GEMM_CORE_PASS, EpiScale{alpha, beta}, ws, tickets);                   \
    }
#define GEMM_BIAS_SIGMOID_SPLIT_ARGS GEMM_BIAS_SIGMOID_ARGS, GEMM_WS_ARGS
#define DEFINE_GEMM_BIAS_SIGMOID_SPLIT(tile, ops, TA, TB, call, threads, min_blocks)               \
    extern "C" __global__ void __launch_bounds__(threads, min_blocks)                              \
        gemm_##tile##_##ops##_bias_sigmoid_split(GEMM_BIAS_SIGMOID_SPLIT_ARGS)                     \
    {                                                                                              \
        call<TA, TB, false>(GEMM_CORE_PASS, EpiBiasSigmoid{bias}, ws, tickets);                    \
    }
#define GEMM_BIAS_GRAD_SPLIT_ARGS GEMM_BIAS_GRAD_ARGS, GEMM_WS_ARGS
#define DEFINE_GEMM_BIAS_GRAD_SPLIT(tile, ops, TA, TB, call, threads, min_blocks)                  \
    extern "C" __global__ void __launch_bounds__(threads, min_blocks)                              \
        gemm_##tile##_##ops##_bias_grad_split(GEMM_BIAS_GRAD_SPLIT_ARGS)                           \
    {                                                                                              \
        call<TA, TB, true>(GEMM_CORE_PASS, EpiScale{real(1), real(0)}, ws, tickets);               \
    }

// A split block's range of K (SplitK above): block z multiplies k = z*chunk .. z*chunk + chunk-1
// (chunk: K / S rounded up to a multiple of SPLIT_K_ALIGN, which every split tile's slab depth
// divides or exceeds; gemm_plan.split_chunk computes the same). The last ranges may be short or
// empty; an empty one contributes a zero partial. Moves A and B to the range's first k; returns
// its length (and chunk).
#define SPLIT_K_ALIGN 32
template <bool TA, bool TB, class Ptr>
__device__ __forceinline__ int split_k_range(Ptr& A, Ptr& B, int K, int lda, int ldb, int& chunk)
{
    const int splits = gridDim.z;
    chunk = ((K + splits - 1) / splits + SPLIT_K_ALIGN - 1) / SPLIT_K_ALIGN * SPLIT_K_ALIGN;
    const int k0 = blockIdx.z * chunk;
    const int klen = K - k0 >= chunk ? chunk : (K - k0 > 0 ? K - k0 : 0);
    if (klen > 0) {  // op(A) and op(B) from k0 on: the columns of A (rows of A^T) ..., as B
        A += TA ? k0 : k0 * lda;
        B += TB ? k0 * ldb : k0;
    }
    return klen;
}

// Tile configurations, all 256 threads. Depths (KPG, STAGES) and micro-tiles are smaller in double,
// where the float ones would not fit in 48 KB of static shared memory or in the registers of two
// blocks per multiprocessor. The large tiles are pipelined (gemm_pipe): the K loop of these
// products is bound by global-load latency, which the stages in flight hide.
//
// t128: 128 x 128 tile, 8 x 8 per thread, one k-group, 16-deep slabs in two stages: the most FMAs
// per shared-memory load, for large products (H = 4096, or n = 3200). In float, capping registers
// at 128 lets two blocks share a multiprocessor (double needs ~210: one block).
#define T128_MIN_BLOCKS (sizeof(real) == 4 ? 2 : 1)
#define T128_KPG (sizeof(real) == 4 ? 16 : 8)
template <bool TA, bool TB, bool ONES, class Epi>
__device__ __forceinline__ void gemm_t128(GEMM_CORE_ARGS, const Epi& epi)
{
    __shared__ __align__(16) real smem[PipeSmem<128, 128, 1, T128_KPG, 2>::SIZE];
    gemm_pipe<128, 128, 8, 8, 1, T128_KPG, 2, TA, TB, ONES>(smem, GEMM_CORE_PASS, epi);
}
// t64: 64 x 64 tile, four times the tiles of t128, for the model's mid-sized products (H = 1024 x
// n = 800 fills only 56 of an H100's 132 multiprocessors with 128 x 128 tiles) and short K. The
// configuration is chosen per launch on K (uniform: no divergence), on one shared buffer:
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
template <bool TA, bool TB, bool ONES, class Epi>
__device__ __forceinline__ void gemm_t64(GEMM_CORE_ARGS, const Epi& epi)
{
    constexpr int SHORT = PipeSmem<64, 64, 2, T64_KPG, 4>::SIZE;
    constexpr int DEEP = PipeSmem<64, 64, T64_DEEP_KG, T64_DEEP_KPG, T64_DEEP_STAGES>::SIZE;
    __shared__ __align__(16) real smem[SHORT > DEEP ? SHORT : DEEP];
    if (K > T64_DEEP_K)
        gemm_pipe<64, 64, 8, T64_DEEP_TN, T64_DEEP_KG, T64_DEEP_KPG, T64_DEEP_STAGES, TA, TB, ONES>(
            smem, GEMM_CORE_PASS, epi);
    else
        gemm_pipe<64, 64, 8, 4, 2, T64_KPG, 4, TA, TB, ONES>(smem, GEMM_CORE_PASS, epi);
}
// t64 split over K across gridDim.z blocks per tile. The configuration is chosen on chunk (the
// length of the first ranges), the same for every block.
template <bool TA, bool TB, bool ONES, class Epi>
__device__ __forceinline__ void gemm_t64_split(GEMM_CORE_ARGS, const Epi& epi, real* ws,
                                               int* tickets)
{
    constexpr int SHORT = PipeSmem<64, 64, 2, T64_KPG, 4>::SIZE;
    constexpr int DEEP = PipeSmem<64, 64, T64_DEEP_KG, T64_DEEP_KPG, T64_DEEP_STAGES>::SIZE;
    __shared__ __align__(16) real smem[SHORT > DEEP ? SHORT : DEEP];
    int chunk;
    const int klen = split_k_range<TA, TB>(A, B, K, lda, ldb, chunk);
    const SplitK<Epi> sk{epi, ws, tickets};
    if (chunk > T64_DEEP_K)
        gemm_pipe<64, 64, 8, T64_DEEP_TN, T64_DEEP_KG, T64_DEEP_KPG, T64_DEEP_STAGES, TA, TB, ONES>(
            smem, A, B, C, M, N, klen, lda, ldb, ldc, sk);
    else
        gemm_pipe<64, 64, 8, 4, 2, T64_KPG, 4, TA, TB, ONES>(smem, A, B, C, M, N, klen, lda, ldb,
                                                               ldc, sk);
}
// s16: 16 x 16 tile, 4 x 4 per thread, K split over 16 groups, for M <= 16 (the 10-class layer:
// z2 = W2 a1, dW2 = diff a1^T), where tiles alone would give a handful of blocks.
#define S16_KPG (sizeof(real) == 4 ? 8 : 4)
template <bool TA, bool TB, bool ONES, class Epi>
__device__ __forceinline__ void gemm_s16(GEMM_CORE_ARGS, const Epi& epi)
{
    gemm_block<16, 16, 4, 4, 16, S16_KPG, TA, TB, ONES>(GEMM_CORE_PASS, epi);
}
// s16 split over K across gridDim.z blocks per tile ([dW2 db2] = diff [a1^T 1]: 17 tiles at
// H = 256, each walking all of n, would leave 115 of an H100's SMs idle).
template <bool TA, bool TB, bool ONES, class Epi>
__device__ __forceinline__ void gemm_s16_split(GEMM_CORE_ARGS, const Epi& epi, real* ws,
                                               int* tickets)
{
    int chunk;
    const int klen = split_k_range<TA, TB>(A, B, K, lda, ldb, chunk);
    gemm_block<16, 16, 4, 4, 16, S16_KPG, TA, TB, ONES>(A, B, C, M, N, klen, lda, ldb, ldc,
                                                         SplitK<Epi>{epi, ws, tickets});
}

DEFINE_GEMM(t128, nn, false, false, gemm_t128, 256, T128_MIN_BLOCKS)
DEFINE_GEMM(t128, nt, false, true, gemm_t128, 256, T128_MIN_BLOCKS)
DEFINE_GEMM(t128, tn, true, false, gemm_t128, 256, T128_MIN_BLOCKS)
DEFINE_GEMM(t128, tt, true, true, gemm_t128, 256, T128_MIN_BLOCKS)
DEFINE_GEMM(t64, nn, false, false, gemm_t64, 256, T64_MIN_BLOCKS)
DEFINE_GEMM(t64, nt, false, true, gemm_t64, 256, T64_MIN_BLOCKS)
DEFINE_GEMM(t64, tn, true, false, gemm_t64, 256, T64_MIN_BLOCKS)
DEFINE_GEMM(t64, tt, true, true, gemm_t64, 256, T64_MIN_BLOCKS)
DEFINE_GEMM(s16, nn, false, false, gemm_s16, 256, 1)
DEFINE_GEMM(s16, nt, false, true, gemm_s16, 256, 1)
DEFINE_GEMM(s16, tn, true, false, gemm_s16, 256, 1)
DEFINE_GEMM(s16, tt, true, true, gemm_s16, 256, 1)


// The fused GEMMs: the transpose pair each op uses, the tiles gemm_plan.GEMM_VARIANTS lists.
// z1 = W1 x (nn) and dW = dz x^T (nt) get every tile; da1 = W2^T diff (tn, K = 10) t64 and s16
// only (the planner never gives a short-K product t128; the fused op runs t64 where it would).
DEFINE_GEMM_BIAS_SIGMOID(t128, nn, false, false, gemm_t128, 256, T128_MIN_BLOCKS)
DEFINE_GEMM_BIAS_SIGMOID(t64, nn, false, false, gemm_t64, 256, T64_MIN_BLOCKS)
DEFINE_GEMM_BIAS_SIGMOID(s16, nn, false, false, gemm_s16, 256, 1)
DEFINE_GEMM_SIGMOID_BACKWARD(t64, tn, true, false, gemm_t64, 256, T64_MIN_BLOCKS)
DEFINE_GEMM_SIGMOID_BACKWARD(s16, tn, true, false, gemm_s16, 256, 1)
DEFINE_GEMM_BIAS_GRAD(t128, nt, false, true, gemm_t128, 256, T128_MIN_BLOCKS)
DEFINE_GEMM_BIAS_GRAD(t64, nt, false, true, gemm_t64, 256, T64_MIN_BLOCKS)
DEFINE_GEMM_BIAS_GRAD(s16, nt, false, true, gemm_s16, 256, 1)

// Split-K: the t64 and s16 tiles, for the products that leave most multiprocessors idle or have a
// deep K (gemm_plan.pick_gemm_split): z1 = W1 x (nn), [dW1 db1] and [dW2 db2] (nt), fused and plain (the
// plain GEMM's nn and nt only: tn and tt products of the model have K = 10, never split).
DEFINE_GEMM_SPLIT(t64, nn, false, false, gemm_t64_split, 256, T64_MIN_BLOCKS)
DEFINE_GEMM_SPLIT(t64, nt, false, true, gemm_t64_split, 256, T64_MIN_BLOCKS)
DEFINE_GEMM_BIAS_SIGMOID_SPLIT(t64, nn, false, false, gemm_t64_split, 256, T64_MIN_BLOCKS)
DEFINE_GEMM_BIAS_GRAD_SPLIT(t64, nt, false, true, gemm_t64_split, 256, T64_MIN_BLOCKS)
DEFINE_GEMM_SPLIT(s16, nn, false, false, gemm_s16_split, 256, 1)
DEFINE_GEMM_SPLIT(s16, nt, false, true, gemm_s16_split, 256, 1)
DEFINE_GEMM_BIAS_SIGMOID_SPLIT(s16, nn, false, false, gemm_s16_split, 256, 1)
DEFINE_GEMM_BIAS_GRAD_SPLIT(s16, nt, false, true, gemm_s16_split, 256, 1)

#endif  // DPMLP_GEMM_CUH
