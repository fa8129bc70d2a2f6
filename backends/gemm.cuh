// The GEMM mainloop: C = alpha * op(A) * op(B) + beta * C (column-major, op(X) = X or X^T) and
// the fused GEMMs, for every tile of backends/gemm_plan.py, composed as CUTLASS composes its
// collectives (sm80_mma_multistage, sgemm_sm80):
//
//   a loader      moves BK-deep slabs of op(A) (BM x BK) and op(B) (BK x BN) into shared memory:
//                 AsyncSlabLoader (cp.async) or SlabLoader (through registers);
//   a pipeline    walks K slab by slab over the loader's stages: GemmMultistage (STAGES slabs in
//                 flight, one barrier a slab) or GemmRegisterStaged (two buffers, the next slab
//                 held in registers during the multiply);
//   a slab        multiplies one slab in shared memory into the thread's fragment of the tile
//     multiply    (the "Mma"): SimtFma (FP32/FP64 FMAs, gemm_simt.cuh), Fp64Mma (FP64 mma.sync,
//                 gemm_tc64.cuh), Tf32x3Mma (TF32x3 mma.sync, gemm_tf32x3.cuh),
//                 WgmmaTf32x3 (TF32x3 wgmma, sm_90a, gemm_wgmma.cuh, on its own pipeline and
//                 loader, GemmWgmmaMultistage and WgmmaAsyncLoader);
//   a finish      adds the k-groups' partial tiles (reduce_groups) and writes the tile through
//                 an epilogue (EpiScale, EpiBiasSigmoid, EpiSigmoidBackward) or, split over K
//                 across blocks, through the last-block ticket of common.cuh (SplitK).
//
// gemm_mainloop composes them for one block; a tile (GemmTileOf, GemmTileByDepth) is a pipeline
// over a slab multiply with its launch bounds, and backends/gemm_kernels.cuh turns each row of its
// table into the tile's kernels (entries gemm_tile, gemm_tile_split). Every
// element's sum is a fixed sequence of FMAs or mma instructions and adds, fixed by the tile alone
// (no atomics): reruns, graph replays and the two backends agree bit for bit.
//
// A slab multiply `Mma` provides:
//   BM, BN         the block's tile of C;   BK: slab depth;   PAD: reals each shared row is padded by
//   KG, GT         k-groups (each multiplies its share of every slab) and threads per k-group;
//                  THREADS = KG * GT
//   g, lt          the thread's k-group and its index in it
//   FRAG           the reals of the thread's partial tile acc[FRAG] (registers gemm_mainloop holds)
//   ROWS, COLS     element at(r, c) is row r and column c of the thread's fragment, at row
//                  row(m0, r) and column col(n0, c) of the tile at m0, n0
//   Mma(tid)       the thread's coordinates;   multiply(acc, As, Bs): acc += its part of a slab
#ifndef DPMLP_GEMM_CUH
#define DPMLP_GEMM_CUH

#include "common.cuh"

// The parameters every GEMM entry starts with (gemm_plan.GEMM_CORE_PARAMS), and their names.
#define GEMM_CORE_ARGS                                                                             \
    const real *__restrict__ A, const real *__restrict__ B, real *__restrict__ C, int M, int N,    \
        int K, int lda, int ldb, int ldc
#define GEMM_CORE_PASS A, B, C, M, N, K, lda, ldb, ldc

// Shared rows are padded by 4 reals: keeps each row 16-byte aligned for 128-bit loads and spreads
// the k-fastest stores (transposed A, non-transposed B) over the banks.
#define SMEM_PAD 4

// ------------------------------------------------------------------------------------------------
// cp.async (sm_80 and newer). Each element is copied on its own (4 or 8 bytes), so any leading
// dimension, offset and transpose works; elements outside the matrices are zero-filled by the copy
// itself (source size 0: nothing is read). Without cp.async (a build for an older target) the
// element is stored synchronously; the pipeline's barriers keep that correct.
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

// ------------------------------------------------------------------------------------------------
// Loaders. A slab in shared memory is As (BK rows of BM + PAD reals, k-major) then Bs (BK rows of
// BN + PAD). ONES: op(B) has N - 1 columns of its own and a virtual last column N - 1 of ones,
// C = op(A) [op(B) 1]: the row sums of op(A) come out as C's last column (the bias gradient, an
// nt product: ONES needs TB).
// ------------------------------------------------------------------------------------------------

// Which elements of a slab a thread moves, NT threads sharing the work. Element e = tid + l*NT of a
// slab goes to the thread that makes the warp's global reads consecutive: along rows for A, along
// k for A^T, along k for B, along columns for B^T. NT being a multiple of BM, BN and BK, one
// coordinate of a thread's elements is the same in all its loads, so its global offsets are
// computed once (offsets) and advanced by a constant per slab.
struct SlabOffsets {
    int a_row, a_k, b_col, b_k;       // tile coordinates of load 0 (rows/cols relative to m0/n0)
    int a_off, a_lstride, a_sstride;  // global offset of load 0, per load, per slab
    int b_off, b_lstride, b_sstride;
};

template <int BM, int BN, int BK, int NT, bool TA_, bool TB_>
struct SlabMap {
    static constexpr bool TA = TA_, TB = TB_;
    static constexpr int A_LOADS = BM * BK / NT;
    static constexpr int B_LOADS = BN * BK / NT;
    // how far the varying coordinate moves between a thread's successive loads
    static constexpr int A_LSTEP = TA ? NT / BK : NT / BM;
    static constexpr int B_LSTEP = TB ? NT / BN : NT / BK;
    static_assert(NT % BM == 0 && NT % BN == 0 && NT % BK == 0, "threads must tile the slab");
    static_assert(A_LOADS * NT == BM * BK && B_LOADS * NT == BN * BK, "slab must divide evenly");

    static __device__ __forceinline__ SlabOffsets offsets(int lda, int ldb, int m0, int n0, int tid)
    {
        SlabOffsets o;
        o.a_row = TA ? tid / BK : tid % BM;
        o.a_k = TA ? tid % BK : tid / BM;
        o.b_col = TB ? tid % BN : tid / BK;
        o.b_k = TB ? tid / BN : tid % BK;
        o.a_off = TA ? (m0 + o.a_row) * lda + o.a_k : o.a_k * lda + m0 + o.a_row;
        o.a_lstride = A_LSTEP * lda;  // rows of A^T and k of A are both lda apart
        o.a_sstride = TA ? BK : BK * lda;
        o.b_off = TB ? o.b_k * ldb + n0 + o.b_col : (n0 + o.b_col) * ldb + o.b_k;
        o.b_lstride = B_LSTEP * ldb;
        o.b_sstride = TB ? BK * ldb : BK;
        return o;
    }
};

// Which of a thread's loads lie inside the matrices, as bit masks (computed once per block): bit l
// of a_ok / b_ok, load l's row of op(A) / column of op(B) exists; b_ones (ONES): the thread's
// column (op(B) = B^T: all its loads) is the virtual ones column. The cp.async loaders'.
struct SlabEdges {
    unsigned a_ok, b_ok;
    bool b_ones;

    template <class Map, bool ONES>
    static __device__ __forceinline__ SlabEdges of(const SlabOffsets& o, int M, int N, int m0, int n0)
    {
        SlabEdges e;
        e.a_ok = 0u;
#pragma unroll
        for (int l = 0; l < Map::A_LOADS; ++l)
            if (m0 + o.a_row + (Map::TA ? l * Map::A_LSTEP : 0) < M) e.a_ok |= 1u << l;
        e.b_ok = 0u;
#pragma unroll
        for (int l = 0; l < Map::B_LOADS; ++l)
            if (n0 + o.b_col + (Map::TB ? 0 : l * Map::B_LSTEP) < (ONES ? N - 1 : N)) e.b_ok |= 1u << l;
        e.b_ones = ONES && n0 + o.b_col == N - 1;
        return e;
    }
};

// The register-staged loader (GemmRegisterStaged): load() brings the thread's part of the next
// slab into registers (zeros outside the matrices), store() puts it into a shared buffer.
template <int BM, int BN, int BK, int NT, bool TA, bool TB, bool ONES, int PAD>
struct SlabLoader : SlabOffsets {
    using Map = SlabMap<BM, BN, BK, NT, TA, TB>;
    static constexpr int A_LOADS = Map::A_LOADS, B_LOADS = Map::B_LOADS;
    static constexpr int A_LSTEP = Map::A_LSTEP, B_LSTEP = Map::B_LSTEP;
    static_assert(!ONES || TB, "the ones column is the bias gradient's, an nt product");

    const real* __restrict__ A;
    const real* __restrict__ B;
    int M, N, K, k0;
    int m0, n0;
    real a[A_LOADS];
    real b[B_LOADS];

    __device__ __forceinline__ SlabLoader(const real* A_, const real* B_, int M_, int N_, int K_,
                                          int lda, int ldb, int m0_, int n0_, int tid)
        : SlabOffsets(Map::offsets(lda, ldb, m0_, n0_, tid)), A(A_), B(B_), M(M_), N(N_), K(K_), k0(0), m0(m0_), n0(n0_)
    {
    }

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

    __device__ __forceinline__ void store(real* As, real* Bs) const
    {
#pragma unroll
        for (int l = 0; l < A_LOADS; ++l)
            As[(a_k + (TA ? 0 : l * A_LSTEP)) * (BM + PAD) + a_row + (TA ? l * A_LSTEP : 0)] = a[l];
#pragma unroll
        for (int l = 0; l < B_LOADS; ++l)
            Bs[(b_k + (TB ? l * B_LSTEP : 0)) * (BN + PAD) + b_col + (TB ? 0 : l * B_LSTEP)] = b[l];
    }
};

// The cp.async loader (GemmMultistage): issue() starts the copies of the next slab into a stage.
// Which rows (columns) of a thread's loads lie inside the matrix is computed once, as a bit mask;
// the virtual ones column (ONES) is written into shared memory directly (ones for k < K, zeros
// past K) by the thread whose loads all lie in it.
template <int BM, int BN, int BK, int NT, bool TA, bool TB, bool ONES, int PAD>
struct AsyncSlabLoader : SlabOffsets, SlabEdges {
    using Map = SlabMap<BM, BN, BK, NT, TA, TB>;
    static constexpr int A_LOADS = Map::A_LOADS, B_LOADS = Map::B_LOADS;
    static constexpr int A_LSTEP = Map::A_LSTEP, B_LSTEP = Map::B_LSTEP;
    static constexpr int AS = BM + PAD, BS = BN + PAD;
    // shared-memory distance between a thread's successive loads
    static constexpr int A_DSTEP = TA ? A_LSTEP : A_LSTEP * AS;
    static constexpr int B_DSTEP = TB ? B_LSTEP * BS : B_LSTEP;
    static_assert(A_LOADS <= 32 && B_LOADS <= 32, "row masks are 32 bits");
    static_assert(!ONES || TB, "the ones column is the bias gradient's, an nt product");

    const real* __restrict__ A;
    const real* __restrict__ B;
    int K;
    int a_dst, b_dst;     // shared offset of load 0 within a stage

    __device__ __forceinline__ AsyncSlabLoader(const real* A_, const real* B_, int M, int N, int K_,
                                               int lda, int ldb, int m0, int n0, int tid)
        : SlabOffsets(Map::offsets(lda, ldb, m0, n0, tid)),
          SlabEdges(SlabEdges::of<Map, ONES>(*this, M, N, m0, n0)), A(A_), B(B_), K(K_)
    {
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
        if (ONES && b_ones) {
            // (deciding once per slab keeps the other threads' copies free of the branch; the
            // stage is free: the barrier before this issue ended its last reads)
#pragma unroll
            for (int l = 0; l < B_LOADS; ++l)
                smem[stage + b_dst + l * B_DSTEP] = (b_k + l * B_LSTEP < K) ? real(1) : real(0);
        } else {
#pragma unroll
            for (int l = 0; l < B_LOADS; ++l) {
                const bool ok = ((b_ok >> l) & 1u) && b_k + (TB ? l * B_LSTEP : 0) < K;
                copy_elem(smem, sbase, stage + b_dst + l * B_DSTEP,
                          ok ? B + (b_off + l * b_lstride) : B, ok);
            }
        }
        a_k += BK;  // (now the k of load 0 in the next slab)
        b_k += BK;
        a_off += a_sstride;
        b_off += b_sstride;
    }
};

// ------------------------------------------------------------------------------------------------
// Epilogues: what the finish does with element (row, col) of the finished tile, acc = the dot
// product of row `row` of op(A) and column `col` of op(B). Each is the formula of the op it fuses,
// written as in elementwise.cuh, so a fused GEMM computes what the GEMM and that op compute.
// ------------------------------------------------------------------------------------------------

// The plain GEMM: C = alpha * acc + beta * C. beta == 0 means C is never read (it may hold NaN);
// K == 0 leaves acc at 0, which gives beta * C.
struct EpiScale {
    real alpha, beta;
    __device__ __forceinline__ void apply(real* C, int ldc, int row, int col, real acc) const
    {
        real* c = C + col * ldc + row;
        const real v = alpha * acc;
        *c = (beta == real(0)) ? v : v + beta * *c;
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

// Cross-block split-K (the *_split kernels): gridDim.z = S blocks share each tile of C, block z
// multiplying its own range of K (split_k_range), through common.cuh's last-block ticket: every
// block writes its raw partial tile (after its k-groups' reduction; before alpha, beta and the
// epilogue) to its slot ws[(z * tiles + tile) * BM*BN], column-major within the tile, and takes
// the tile's ticket (tickets[tile]); the last block adds the S partials in the order z = 0..S-1
// and applies the epilogue. The result depends only on the operands, S and the tile. Workspace:
// S * tiles slots of BM*BN reals and `tiles` tickets (gemm_plan.GEMM_SPLIT_SLOTS,
// GEMM_SPLIT_TICKETS: the planner only picks splits that fit).
template <class Epi>
struct SplitK {
    Epi epi;
    real* ws;      // [gridDim.z][tiles][BM * BN] raw partial tiles
    int* tickets;  // [tiles], 0 between launches
};

// ------------------------------------------------------------------------------------------------
// The finish
// ------------------------------------------------------------------------------------------------

// The k-groups' partial tiles added into group 0's acc: tree reduction, upper half writes, lower
// half adds, halve again. Element f of thread lt's fragment (of GT per group) lives at
// red[(slot * F + f) * GT + lt]: consecutive lt are consecutive words (no bank conflicts). `red`
// is the block's slab buffers, free by now (the pipeline ends its K loop with a barrier where
// KG > 1). Ends with a barrier when KG > 1.
template <int KG, int GT, int F>
__device__ __forceinline__ void reduce_groups(real (&acc)[F], real* red, int g, int lt)
{
#pragma unroll
    for (int half = KG / 2; half >= 1; half >>= 1) {
        if (g >= half && g < 2 * half) {
#pragma unroll
            for (int f = 0; f < F; ++f) red[((g - half) * F + f) * GT + lt] = acc[f];
        }
        __syncthreads();
        if (g < half) {
#pragma unroll
            for (int f = 0; f < F; ++f) acc[f] += red[(g * F + f) * GT + lt];
        }
        __syncthreads();
    }
}

// The end of every GEMM block: the k-groups' partial tiles added, then group 0 writes its part of
// the BM x BN tile of C through the epilogue, column by column.
template <class Mma, class Epi>
__device__ __forceinline__ void gemm_finish(const Mma& mma, real (&acc)[Mma::FRAG], real* red,
                                            real* __restrict__ C, int M, int N, int ldc, int m0,
                                            int n0, const Epi& epi)
{
    reduce_groups<Mma::KG, Mma::GT>(acc, red, mma.g, mma.lt);
    if (mma.g != 0) return;
#pragma unroll
    for (int c = 0; c < Mma::COLS; ++c) {
        const int col = mma.col(n0, c);
        if (col >= N) continue;
#pragma unroll
        for (int r = 0; r < Mma::ROWS; ++r) {
            const int row = mma.row(m0, r);
            if (row < M) epi.apply(C, ldc, row, col, acc[Mma::at(r, c)]);
        }
    }
}

// A split block's partial tile, written to its slot by the threads that hold it (k-group 0 once
// the groups are reduced): column-major within the tile, fenced before the ticket.
template <class Mma, class Epi>
__device__ __forceinline__ void split_store_part(const Mma& mma, const real (&acc)[Mma::FRAG],
                                                 const SplitK<Epi>& sk)
{
    constexpr int TILE = Mma::BM * Mma::BN;
    const int tiles = gridDim.x * gridDim.y;
    const int tile = blockIdx.y * gridDim.x + blockIdx.x;
    real* slot = sk.ws + ((size_t)blockIdx.z * tiles + tile) * TILE;
#pragma unroll
    for (int c = 0; c < Mma::COLS; ++c)
#pragma unroll
        for (int r = 0; r < Mma::ROWS; ++r)
            slot[mma.col(0, c) * Mma::BM + mma.row(0, r)] = acc[Mma::at(r, c)];
    __threadfence();  // this thread's part of the partial is visible before the ticket
}

// The rest of a split block's finish, run by all THREADS threads of the block (its barriers: no
// early return before them): the tile's ticket, and in the tile's last block the S partials added
// in the order z = 0..S-1 and put through the epilogue. Element e of the tile: row e % BM, column
// e / BM; consecutive threads read consecutive words of each slot and write consecutive rows of C.
template <int BM, int BN, int THREADS, class Epi>
__device__ __forceinline__ void split_finish_tile(real* __restrict__ C, int M, int N, int ldc,
                                                  int m0, int n0, const SplitK<Epi>& sk)
{
    constexpr int TILE = BM * BN;
    const int tiles = gridDim.x * gridDim.y;
    const int tile = blockIdx.y * gridDim.x + blockIdx.x;
    const int splits = gridDim.z;
    if (!last_block_to_arrive(sk.tickets + tile, splits)) return;  // the same for the whole block
    const volatile real* parts = sk.ws + (size_t)tile * TILE;
    const size_t zstride = (size_t)tiles * TILE;
    for (int e = threadIdx.x; e < TILE; e += THREADS) {
        const int row = m0 + e % BM;
        const int col = n0 + e / BM;
        if (row < M && col < N) {
            real s = parts[e];
            for (int z = 1; z < splits; ++z) s += parts[z * zstride + e];
            sk.epi.apply(C, ldc, row, col, s);
        }
    }
    reset_ticket(sk.tickets + tile);
}

// gemm_finish of a split block (overload: chosen for a SplitK epilogue). Every thread of the
// block reaches the ticket's barriers (no early return before them).
template <class Mma, class Epi>
__device__ __forceinline__ void gemm_finish(const Mma& mma, real (&acc)[Mma::FRAG], real* red,
                                            real* __restrict__ C, int M, int N, int ldc, int m0,
                                            int n0, const SplitK<Epi>& sk)
{
    reduce_groups<Mma::KG, Mma::GT>(acc, red, mma.g, mma.lt);
    if (mma.g == 0) split_store_part(mma, acc, sk);
    split_finish_tile<Mma::BM, Mma::BN, Mma::THREADS>(C, M, N, ldc, m0, n0, sk);
}

// ------------------------------------------------------------------------------------------------
// Pipelines: how K is walked, slab by slab, through NSTAGES shared-memory stages (SlabStages): a
// pipeline names its Loader and walks K with it, each slab multiplied by the slab multiply;
// gemm_mainloop around it. Splitting K inside the block (KG > 1) shortens the chain of slabs a
// block walks and puts more warps on each multiprocessor: the model's products are too small to
// fill an H100 with tiles alone, and a block walking all of K by itself is bound by global-load
// latency, not arithmetic.
// ------------------------------------------------------------------------------------------------

// The shared memory of a pipeline: NSTAGES stages of As and Bs, which become the k-groups'
// reduction buffer at the end.
template <class Mma_, int NSTAGES>
struct SlabStages {
    using Mma = Mma_;
    static constexpr int BM = Mma::BM, BN = Mma::BN, BK = Mma::BK, THREADS = Mma::THREADS;
    static constexpr int AS = BM + Mma::PAD, BS = BN + Mma::PAD;
    static constexpr int STAGE = BK * AS + BK * BS;  // one stage: As and Bs
    static constexpr int SMEM = NSTAGES * STAGE;     // reals, 16-byte aligned
    static_assert(NSTAGES >= 2, "at least double buffering");
    static_assert((Mma::KG / 2) * Mma::GT * Mma::FRAG <= SMEM, "reduction must fit in the stages");
};

// cp.async, STAGES slabs deep: while the block multiplies slab s, slabs s+1 .. s+STAGES-1 are in
// flight, with no registers held for them and one barrier per slab (the large tiles: the K loop
// of these products is bound by global-load latency, which the stages in flight hide).
template <class Mma, int STAGES>
struct GemmMultistage : SlabStages<Mma, STAGES> {
    using S = SlabStages<Mma, STAGES>;
    template <bool TA, bool TB, bool ONES>
    using Loader = AsyncSlabLoader<S::BM, S::BN, S::BK, S::THREADS, TA, TB, ONES, Mma::PAD>;

    template <class L>
    static __device__ __forceinline__ void walk(L& slab, const Mma& mma, real (&acc)[Mma::FRAG],
                                                real* smem, int K)
    {
        const unsigned sbase = shared_addr(smem);
        const int nslabs = (K + S::BK - 1) / S::BK;
        // Prologue: slabs 0 .. STAGES-2 in flight. One commit per slab (empty groups past the
        // last slab), so that "at most STAGES-2 groups pending" always means "slab s has landed".
#pragma unroll
        for (int s = 0; s < STAGES - 1; ++s) {
            if (s < nslabs) slab.issue(smem, sbase, s * S::STAGE);
            copy_commit();
        }
        int rd = 0, wr = STAGES - 1;
        for (int s = 0; s < nslabs; ++s) {
            copy_wait<STAGES - 2>();  // this thread's copies of slab s are done
            // Everyone's copies of slab s are visible, and everyone has finished multiplying slab
            // s-1, whose stage (wr) the copies of slab s+STAGES-1 may now overwrite.
            __syncthreads();
            if (s + STAGES - 1 < nslabs) slab.issue(smem, sbase, wr * S::STAGE);
            copy_commit();
            wr = (wr + 1 == STAGES) ? 0 : wr + 1;
            const real* As = smem + rd * S::STAGE;
            rd = (rd + 1 == STAGES) ? 0 : rd + 1;
            mma.multiply(acc, As, As + S::BK * S::AS);
        }
        copy_wait<0>();  // only empty groups can remain
        if (Mma::KG > 1) __syncthreads();  // the stages become the reduction buffer
    }
};

// Two buffers: while the block multiplies one slab, every thread already holds its part of the
// next one in registers (loaded from global memory before the multiply) and stores it into the
// other buffer afterwards, so one barrier per slab suffices (the skinny tile, whose slabs are a
// few loads per thread).
template <class Mma>
struct GemmRegisterStaged : SlabStages<Mma, 2> {
    using S = SlabStages<Mma, 2>;
    template <bool TA, bool TB, bool ONES>
    using Loader = SlabLoader<S::BM, S::BN, S::BK, S::THREADS, TA, TB, ONES, Mma::PAD>;

    template <class L>
    static __device__ __forceinline__ void walk(L& slab, const Mma& mma, real (&acc)[Mma::FRAG],
                                                real* smem, int K)
    {
        const int nslabs = (K + S::BK - 1) / S::BK;
        if (nslabs == 0) return;
        slab.load();
        slab.store(smem, smem + S::BK * S::AS);
        __syncthreads();
        for (int s = 0; s < nslabs; ++s) {
            const int cur = s & 1;
            if (s + 1 < nslabs) slab.load();  // in flight during the multiply below
            const real* As = smem + cur * S::STAGE;
            mma.multiply(acc, As, As + S::BK * S::AS);
            // The other buffer was last read in slab s-1, and every thread passed the barrier
            // that ended slab s-1 before getting here: it is free to overwrite.
            if (s + 1 < nslabs) {
                real* nxt = smem + (cur ^ 1) * S::STAGE;
                slab.store(nxt, nxt + S::BK * S::AS);
            }
            __syncthreads();  // (the last one: the buffers become the reduction buffer)
        }
    }
};

// The mainloop of every GEMM block: the thread's fragment of the block's tile (the pipeline's
// slab multiply) and accumulators, the pipeline's loader over op(A) and op(B), K walked slab by
// slab, then the finish through the epilogue. smem: Pipeline::SMEM reals of shared memory,
// declared by the tile (so that one kernel can choose between configurations at run time on one
// buffer).
template <class Pipeline, bool TA, bool TB, bool ONES, class Epi>
__device__ __forceinline__ void gemm_mainloop(real* smem, GEMM_CORE_ARGS, const Epi& epi)
{
    using Mma = typename Pipeline::Mma;
    const Mma mma(threadIdx.x);
    const int m0 = blockIdx.x * Pipeline::BM;
    const int n0 = blockIdx.y * Pipeline::BN;
    typename Pipeline::template Loader<TA, TB, ONES> slab(A, B, M, N, K, lda, ldb, m0, n0,
                                                          threadIdx.x);
    real acc[Mma::FRAG];
#pragma unroll
    for (int f = 0; f < Mma::FRAG; ++f) acc[f] = real(0);
    Pipeline::walk(slab, mma, acc, smem, K);
    gemm_finish(mma, acc, smem, C, M, N, ldc, m0, n0, epi);
}

// ------------------------------------------------------------------------------------------------
// Tiles: what a kernel runs (gemm_kernels.cuh): run(GEMM_CORE_ARGS, depth, epi) computes the
// block's tile of C; `depth` is the K that chooses a configuration (a split block's: its chunk).
// ------------------------------------------------------------------------------------------------

// One configuration (a pipeline over a slab multiply: gemm_mainloop), with its launch bounds.
template <class Pipeline, int MIN_BLOCKS_>
struct GemmTileOf {
    static constexpr int BM = Pipeline::BM, BN = Pipeline::BN, THREADS = Pipeline::THREADS;
    static constexpr int MIN_BLOCKS = MIN_BLOCKS_;

    template <bool TA, bool TB, bool ONES, class Epi>
    static __device__ __forceinline__ void run(GEMM_CORE_ARGS, int depth, const Epi& epi)
    {
        (void)depth;
        __shared__ __align__(16) real smem[Pipeline::SMEM];
        gemm_mainloop<Pipeline, TA, TB, ONES>(smem, GEMM_CORE_PASS, epi);
    }
};

// The block of a pipeline: gemm_mainloop, or the pipeline's own block() where it has one
// (OWN_BLOCK: a warp-specialised pipeline, whose threads split into producer and consumers, where
// gemm_mainloop gives every thread both roles)
template <class Pipeline, class = void>
struct GemmBlock {
    template <bool TA, bool TB, bool ONES, class Epi>
    static __device__ __forceinline__ void run(real* smem, GEMM_CORE_ARGS, const Epi& epi)
    {
        gemm_mainloop<Pipeline, TA, TB, ONES>(smem, GEMM_CORE_PASS, epi);
    }
};
template <class Pipeline>
struct GemmBlock<Pipeline, decltype(void(Pipeline::OWN_BLOCK))> {
    template <bool TA, bool TB, bool ONES, class Epi>
    static __device__ __forceinline__ void run(real* smem, GEMM_CORE_ARGS, const Epi& epi)
    {
        Pipeline::template block<TA, TB, ONES>(smem, GEMM_CORE_PASS, epi);
    }
};

// One configuration whose stages take more than the 48 KB of static shared memory a block may
// have: the same as GemmTileOf on the dynamic shared memory the launch gives (DYN_SMEM bytes; the
// table's dyn_smem column, which the backends set as the kernel's limit and launch with).
template <class Pipeline, int MIN_BLOCKS_>
struct GemmTileDynamic {
    static constexpr int BM = Pipeline::BM, BN = Pipeline::BN, THREADS = Pipeline::THREADS;
    static constexpr int MIN_BLOCKS = MIN_BLOCKS_;
    static constexpr int DYN_SMEM = Pipeline::SMEM * static_cast<int>(sizeof(real));

    template <bool TA, bool TB, bool ONES, class Epi>
    static __device__ __forceinline__ void run(GEMM_CORE_ARGS, int depth, const Epi& epi)
    {
        (void)depth;
        extern __shared__ __align__(16) unsigned char gemm_dynamic_smem[];
        GemmBlock<Pipeline>::template run<TA, TB, ONES>(reinterpret_cast<real*>(gemm_dynamic_smem),
                                                       GEMM_CORE_PASS, epi);
    }
};

// A tile's dynamic shared memory in bytes: its DYN_SMEM, 0 for tiles of static shared memory
template <class Tile, class = void>
struct GemmTileDynamicSmem {
    static constexpr int value = 0;
};
template <class Tile>
struct GemmTileDynamicSmem<Tile, decltype(void(Tile::DYN_SMEM))> {
    static constexpr int value = Tile::DYN_SMEM;
};

// Two configurations of one tile on one shared buffer, chosen per launch on depth (uniform: no
// divergence): Deep above DEEP_K, Short otherwise.
template <class Short, class Deep, int DEEP_K, int MIN_BLOCKS_>
struct GemmTileByDepth {
    static_assert(Short::BM == Deep::BM && Short::BN == Deep::BN &&
                      Short::THREADS == Deep::THREADS, "one tile, one launch shape");
    static constexpr int BM = Short::BM, BN = Short::BN, THREADS = Short::THREADS;
    static constexpr int MIN_BLOCKS = MIN_BLOCKS_;

    template <bool TA, bool TB, bool ONES, class Epi>
    static __device__ __forceinline__ void run(GEMM_CORE_ARGS, int depth, const Epi& epi)
    {
        __shared__ __align__(16) real smem[Short::SMEM > Deep::SMEM ? Short::SMEM : Deep::SMEM];
        if (depth > DEEP_K)
            gemm_mainloop<Deep, TA, TB, ONES>(smem, GEMM_CORE_PASS, epi);
        else
            gemm_mainloop<Short, TA, TB, ONES>(smem, GEMM_CORE_PASS, epi);
    }
};

// The entry of a kernel: the block's tile over all of K.
template <class Tile, bool TA, bool TB, bool ONES, class Epi>
__device__ __forceinline__ void gemm_tile(GEMM_CORE_ARGS, const Epi& epi)
{
    Tile::template run<TA, TB, ONES>(GEMM_CORE_PASS, K, epi);
}

// A split block's range of K (SplitK above): block z multiplies k = z*chunk .. z*chunk + chunk-1
// (chunk: K / S rounded up to a multiple of SPLIT_K_ALIGN; gemm_plan.split_chunk computes the
// same). The last ranges may be short or empty; an empty one contributes a zero partial. Moves A
// and B to the range's first k; returns its length (and chunk).
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

// The entry of a split kernel: the block's range of K, its partial through SplitK. A tile that
// chooses its configuration on depth chooses on chunk, the same for every block of the launch.
template <class Tile, bool TA, bool TB, bool ONES, class Epi>
__device__ __forceinline__ void gemm_tile_split(GEMM_CORE_ARGS, const Epi& epi, real* ws,
                                                int* tickets)
{
    int chunk;
    const int klen = split_k_range<TA, TB>(A, B, K, lda, ldb, chunk);
    Tile::template run<TA, TB, ONES>(A, B, C, M, N, klen, lda, ldb, ldc, chunk,
                                     SplitK<Epi>{epi, ws, tickets});
}

// ------------------------------------------------------------------------------------------------
// The fragment of the warp-level mma tiles (Fp64Mma, Tf32x3Mma): each warp owns a WM x WN piece
// of the block's tile as MI x NJ blocks of 16 x 8, the C fragment of mma.sync m16n8k*: lane
// (gid = lane / 4, tig = lane % 4) holds, of block (i, j), rows gid and gid + 8, columns 2 tig and
// 2 tig + 1, as acc[(i * NJ + j) * 4 + e] (e = 2 * (row half) + column parity). KG k-groups of
// WARPS_M x WARPS_N warps share each slab's K.
// ------------------------------------------------------------------------------------------------
template <int BM_, int BN_, int WARPS_M, int WARPS_N, int KG_>
struct WarpMmaFragment {
    static constexpr int BM = BM_, BN = BN_, KG = KG_;
    static constexpr int WM = BM / WARPS_M, WN = BN / WARPS_N;  // warp tile
    static constexpr int MI = WM / 16, NJ = WN / 8;             // 16 x 8 blocks per warp
    static constexpr int GW = WARPS_M * WARPS_N;                // warps per k-group
    static constexpr int GT = 32 * GW, THREADS = GT * KG;
    static constexpr int ROWS = 2 * MI, COLS = 2 * NJ, FRAG = 4 * MI * NJ;
    static_assert(WM % 16 == 0 && WN % 8 == 0 && WM * WARPS_M == BM && WN * WARPS_N == BN,
                  "warp tiles of 16 x 8 blocks");

    int g, lt;     // k-group, thread within it
    int wm0, wn0;  // the warp's first row and column within the tile
    int gid, tig;

    __device__ __forceinline__ explicit WarpMmaFragment(int tid)
    {
        const int warp = tid >> 5, lane = tid & 31;
        const int wg = KG == 1 ? warp : warp % GW;  // the warp within its k-group
        g = KG == 1 ? 0 : warp / GW;
        lt = tid % GT;
        wm0 = (wg % WARPS_M) * WM;
        wn0 = (wg / WARPS_M) * WN;
        gid = lane >> 2;
        tig = lane & 3;
    }

    // the accumulators of block (i, j), as mma.sync's four C registers
    static __device__ __forceinline__ real* block(real (&acc)[FRAG], int i, int j)
    {
        return acc + (i * NJ + j) * 4;
    }
    static __device__ __forceinline__ int at(int r, int c)
    {
        return ((r / 2) * NJ + c / 2) * 4 + 2 * (r % 2) + c % 2;
    }
    __device__ __forceinline__ int row(int m0, int r) const
    {
        return m0 + wm0 + 16 * (r / 2) + gid + 8 * (r % 2);
    }
    __device__ __forceinline__ int col(int n0, int c) const
    {
        return n0 + wn0 + 8 * (c / 2) + 2 * tig + c % 2;
    }
};

#endif  // DPMLP_GEMM_CUH
