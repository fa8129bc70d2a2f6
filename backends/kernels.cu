// Every CUDA kernel of the GPU backends (CuPy and PyCUDA share this one file).
//
// Compiled twice, with -DREAL=float and with -DREAL=double, so both precisions come from the same
// source. Every __global__ is extern "C" so that CuPy (NVRTC) and PyCUDA (nvcc, no_extern_c=True)
// find the same unmangled names. No headers are included: NVRTC has no system headers.
//
// Layout rules (core/ops.py):
// * matrices are column-major; element (i, j) of a matrix with leading dimension ld is x[i + j*ld];
// * the GEMM honours the leading dimensions, so it works on column-slice views of wider matrices;
// * the element-wise and reduction kernels treat their operands as rows*cols CONTIGUOUS elements.
//   They may: a column slice of a column-major matrix and a flat_views() view are contiguous. The
//   Python side checks contiguity before launching.
// * indices are 32-bit ints: every matrix must hold fewer than 2^31 elements (checked in Python).
// * no kernel is ever launched with zero blocks; the Python side skips empty work (and still
//   launches the GEMM when K == 0, which then writes beta*C).
//
// Reductions are deterministic (fixed order, no floating-point atomics), so two runs of the same
// step give bit-identical results.

#ifndef REAL
#error "compile with -DREAL=float or -DREAL=double"
#endif

typedef REAL real;

// ------------------------------------------------------------------------------------------------
// small helpers
// ------------------------------------------------------------------------------------------------

// Overloads instead of the generic names: NVRTC must not depend on which C++ math overloads a
// toolkit happens to declare.
__device__ __forceinline__ float r_exp(float x) { return expf(x); }
__device__ __forceinline__ double r_exp(double x) { return exp(x); }
__device__ __forceinline__ float r_log(float x) { return logf(x); }
__device__ __forceinline__ double r_log(double x) { return log(x); }
__device__ __forceinline__ float r_max(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ double r_max(double a, double b) { return fmax(a, b); }

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

__device__ __forceinline__ real warp_sum(real v)
{
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

__device__ __forceinline__ real warp_max(real v)
{
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v = r_max(v, __shfl_xor_sync(0xffffffffu, v, off));
    return v;
}

// Sum of v over the whole block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
// The order of additions depends only on the launch shape, so the result is reproducible.
__device__ __forceinline__ real block_sum(real v)
{
    __shared__ real partial[32];
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    v = warp_sum(v);
    __syncthreads();  // partial[] may still be read by a previous call
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    const int nwarps = blockDim.x >> 5;
    v = (lane < nwarps) ? partial[lane] : real(0);
    return warp_sum(v);
}

// ------------------------------------------------------------------------------------------------
// GEMM: C = alpha * op(A) * op(B) + beta * C, column-major, op(X) = X or X^T.
//
// op(A) is M x K, op(B) is K x N, C is M x N. A block computes a BM x BN tile of C; each of its
// (BM/TM)*(BN/TN) threads keeps a TM x TN micro-tile of C in registers (register blocking), so one
// pair of shared-memory fragments feeds TM*TN fused multiply-adds. The K loop walks BK-deep slabs
// of op(A) and op(B) through two shared-memory buffers: while the block multiplies one slab, every
// thread already holds the next one in registers (loaded from global memory before the multiply),
// and stores it into the other buffer afterwards, so only one barrier is needed per slab.
// ------------------------------------------------------------------------------------------------

// Shared rows are padded by 4 reals: keeps each row 16-byte aligned for lds_vec and spreads the
// k-fastest stores (transposed A, non-transposed B) over the banks.
#define SMEM_PAD 4

template <int BM, int BN, int BK, int TM, int TN, bool TA, bool TB>
__device__ __forceinline__ void gemm_tiled(const real* __restrict__ A, const real* __restrict__ B,
                                           real* __restrict__ C, int M, int N, int K, int lda,
                                           int ldb, int ldc, real alpha, real beta)
{
    constexpr int NT = (BM / TM) * (BN / TN);
    constexpr int A_LOADS = BM * BK / NT;
    constexpr int B_LOADS = BN * BK / NT;
    static_assert(A_LOADS * NT == BM * BK && B_LOADS * NT == BN * BK, "tile must divide evenly");

    __shared__ __align__(16) real As[2][BK][BM + SMEM_PAD];
    __shared__ __align__(16) real Bs[2][BK][BN + SMEM_PAD];

    const int tid = threadIdx.x;
    // tx runs fastest through the warp, over rows: neighbouring threads own neighbouring rows, so
    // the A fragment loads are distinct and the B fragment loads are broadcasts.
    const int tx = tid % (BM / TM);
    const int ty = tid / (BM / TM);
    const int m0 = blockIdx.x * BM;
    const int n0 = blockIdx.y * BN;

    real a_next[A_LOADS];
    real b_next[B_LOADS];
    real acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = real(0);

    // Element e of a slab maps to (row, k) so that consecutive threads read consecutive addresses
    // of global memory: rows for a non-transposed A, k for a transposed one (and likewise for B).
    auto load_slab = [&](int k0) {
#pragma unroll
        for (int l = 0; l < A_LOADS; ++l) {
            const int e = tid + l * NT;
            const int i = TA ? e / BK : e % BM;
            const int k = TA ? e % BK : e / BM;
            const int gi = m0 + i, gk = k0 + k;
            a_next[l] = (gi < M && gk < K) ? (TA ? A[gi * lda + gk] : A[gk * lda + gi]) : real(0);
        }
#pragma unroll
        for (int l = 0; l < B_LOADS; ++l) {
            const int e = tid + l * NT;
            const int j = TB ? e % BN : e / BK;
            const int k = TB ? e / BN : e % BK;
            const int gj = n0 + j, gk = k0 + k;
            b_next[l] = (gj < N && gk < K) ? (TB ? B[gk * ldb + gj] : B[gj * ldb + gk]) : real(0);
        }
    };
    auto store_slab = [&](int buf) {
#pragma unroll
        for (int l = 0; l < A_LOADS; ++l) {
            const int e = tid + l * NT;
            As[buf][TA ? e % BK : e / BM][TA ? e / BK : e % BM] = a_next[l];
        }
#pragma unroll
        for (int l = 0; l < B_LOADS; ++l) {
            const int e = tid + l * NT;
            Bs[buf][TB ? e / BN : e % BK][TB ? e % BN : e / BK] = b_next[l];
        }
    };

    const int nslabs = (K + BK - 1) / BK;
    if (nslabs > 0) {
        load_slab(0);
        store_slab(0);
        __syncthreads();
        for (int s = 0; s < nslabs; ++s) {
            const int cur = s & 1;
            if (s + 1 < nslabs) load_slab((s + 1) * BK);  // in flight during the multiply below
#pragma unroll
            for (int kk = 0; kk < BK; ++kk) {
                real a_frag[TM], b_frag[TN];
                lds_vec<TM>(&As[cur][kk][tx * TM], a_frag);
                lds_vec<TN>(&Bs[cur][kk][ty * TN], b_frag);
#pragma unroll
                for (int i = 0; i < TM; ++i)
#pragma unroll
                    for (int j = 0; j < TN; ++j) acc[i][j] += a_frag[i] * b_frag[j];
            }
            // The other buffer was last read in slab s-1, and every thread passed the barrier that
            // ended slab s-1 before getting here: it is free to overwrite.
            if (s + 1 < nslabs) store_slab(cur ^ 1);
            __syncthreads();
        }
    }

    // beta == 0 means C is never read (it may hold NaN); K == 0 leaves acc at 0, giving beta*C.
#pragma unroll
    for (int j = 0; j < TN; ++j) {
        const int col = n0 + ty * TN + j;
        if (col >= N) continue;
#pragma unroll
        for (int i = 0; i < TM; ++i) {
            const int row = m0 + tx * TM + i;
            if (row >= M) continue;
            real* c = C + col * ldc + row;
            const real v = alpha * acc[i][j];
            *c = (beta == real(0)) ? v : v + beta * *c;
        }
    }
}

// Skinny GEMM for M <= 16 (the 10-class output layer: z2 = W2 a1 and dW2 = diff a1^T). A 16 x 16
// tile of C would leave a classic tiled kernel with a handful of blocks that each walk all of K
// alone; here the block's 256 threads are KG groups that share the tile and split each BK-deep slab
// of K between them (group g takes KPG consecutive k), and the groups' partial sums are added in a
// fixed tree order through shared memory at the end (deterministic, no atomics).
template <int BM, int BN, int KG, int KPG, bool TA, bool TB>
__device__ __forceinline__ void gemm_splitk(const real* __restrict__ A, const real* __restrict__ B,
                                            real* __restrict__ C, int M, int N, int K, int lda,
                                            int ldb, int ldc, real alpha, real beta)
{
    constexpr int TM = 4, TN = 4;
    constexpr int GT = (BM / TM) * (BN / TN);  // threads per group
    constexpr int NT = GT * KG;
    constexpr int BK = KG * KPG;
    constexpr int A_LOADS = BM * BK / NT;
    constexpr int B_LOADS = BN * BK / NT;
    constexpr int A_STRIDE = BM + SMEM_PAD, B_STRIDE = BN + SMEM_PAD;
    constexpr int SLAB = BK * A_STRIDE + BK * B_STRIDE;  // one buffer of As and Bs
    static_assert(A_LOADS * NT == BM * BK && B_LOADS * NT == BN * BK, "tile must divide evenly");
    static_assert((KG / 2) * GT * TM * TN <= 2 * SLAB, "reduction must fit in the slab buffers");

    __shared__ __align__(16) real smem[2 * SLAB];

    const int tid = threadIdx.x;
    const int g = tid / GT;
    const int lt = tid % GT;
    const int tx = lt % (BM / TM);
    const int ty = lt / (BM / TM);
    const int m0 = blockIdx.x * BM;
    const int n0 = blockIdx.y * BN;

    real a_next[A_LOADS];
    real b_next[B_LOADS];
    real acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = real(0);

    auto load_slab = [&](int k0) {
#pragma unroll
        for (int l = 0; l < A_LOADS; ++l) {
            const int e = tid + l * NT;
            const int i = TA ? e / BK : e % BM;
            const int k = TA ? e % BK : e / BM;
            const int gi = m0 + i, gk = k0 + k;
            a_next[l] = (gi < M && gk < K) ? (TA ? A[gi * lda + gk] : A[gk * lda + gi]) : real(0);
        }
#pragma unroll
        for (int l = 0; l < B_LOADS; ++l) {
            const int e = tid + l * NT;
            const int j = TB ? e % BN : e / BK;
            const int k = TB ? e / BN : e % BK;
            const int gj = n0 + j, gk = k0 + k;
            b_next[l] = (gj < N && gk < K) ? (TB ? B[gk * ldb + gj] : B[gj * ldb + gk]) : real(0);
        }
    };
    auto store_slab = [&](int buf) {
        real* As = smem + buf * SLAB;
        real* Bs = As + BK * A_STRIDE;
#pragma unroll
        for (int l = 0; l < A_LOADS; ++l) {
            const int e = tid + l * NT;
            As[(TA ? e % BK : e / BM) * A_STRIDE + (TA ? e / BK : e % BM)] = a_next[l];
        }
#pragma unroll
        for (int l = 0; l < B_LOADS; ++l) {
            const int e = tid + l * NT;
            Bs[(TB ? e / BN : e % BK) * B_STRIDE + (TB ? e % BN : e / BK)] = b_next[l];
        }
    };

    const int nslabs = (K + BK - 1) / BK;
    if (nslabs > 0) {
        load_slab(0);
        store_slab(0);
        __syncthreads();
        for (int s = 0; s < nslabs; ++s) {
            const int cur = s & 1;
            if (s + 1 < nslabs) load_slab((s + 1) * BK);
            const real* As = smem + cur * SLAB;
            const real* Bs = As + BK * A_STRIDE;
#pragma unroll
            for (int q = 0; q < KPG; ++q) {
                const int kk = g * KPG + q;
                real a_frag[TM], b_frag[TN];
                lds_vec<TM>(As + kk * A_STRIDE + tx * TM, a_frag);
                lds_vec<TN>(Bs + kk * B_STRIDE + ty * TN, b_frag);
#pragma unroll
                for (int i = 0; i < TM; ++i)
#pragma unroll
                    for (int j = 0; j < TN; ++j) acc[i][j] += a_frag[i] * b_frag[j];
            }
            if (s + 1 < nslabs) store_slab(cur ^ 1);
            __syncthreads();
        }
    }

    // Tree reduction of the KG partial tiles: upper half writes, lower half adds, halve again.
    // Element (i, j) of thread lt's micro-tile lives at red[(slot * TM*TN + i*TN + j) * GT + lt]:
    // consecutive lt are consecutive words (no bank conflicts).
    real* red = smem;
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

    if (g != 0) return;
#pragma unroll
    for (int j = 0; j < TN; ++j) {
        const int col = n0 + ty * TN + j;
        if (col >= N) continue;
#pragma unroll
        for (int i = 0; i < TM; ++i) {
            const int row = m0 + tx * TM + i;
            if (row >= M) continue;
            real* c = C + col * ldc + row;
            const real v = alpha * acc[i][j];
            *c = (beta == real(0)) ? v : v + beta * *c;
        }
    }
}

// One extern "C" kernel per (tile, transpose pair). Names: gemm_<tile>_<op(A)><op(B)>, n = as is,
// t = transposed; backends/cuda_source.py holds the matching table (tile sizes, threads, grid).
#define GEMM_ARGS                                                                                  \
    const real *__restrict__ A, const real *__restrict__ B, real *__restrict__ C, int M, int N,    \
        int K, int lda, int ldb, int ldc, real alpha, real beta
#define GEMM_PASS A, B, C, M, N, K, lda, ldb, ldc, alpha, beta

#define DEFINE_GEMM(tile, ops, TA, TB, call, min_blocks)                                           \
    extern "C" __global__ void __launch_bounds__(256, min_blocks) gemm_##tile##_##ops(GEMM_ARGS)   \
    {                                                                                              \
        call<TA, TB>(GEMM_PASS);                                                                   \
    }

// 128 x 128 tile, 8 x 8 per thread: the most FMAs per shared-memory load, for large M*N. In float,
// capping registers at 128 lets two blocks share a multiprocessor (double needs ~240: one block).
#define T128_MIN_BLOCKS (sizeof(real) == 4 ? 2 : 1)
template <bool TA, bool TB>
__device__ __forceinline__ void gemm_t128(GEMM_ARGS) { gemm_tiled<128, 128, 8, 8, 8, TA, TB>(GEMM_PASS); }
// 64 x 64 tile, 4 x 4 per thread: four times the blocks, for the mid-sized shapes of the model
// (H=1024 x n=800 would fill only 56 of an H100's 132 multiprocessors with 128 x 128 tiles).
template <bool TA, bool TB>
__device__ __forceinline__ void gemm_t64(GEMM_ARGS) { gemm_tiled<64, 64, 16, 4, 4, TA, TB>(GEMM_PASS); }
// 16 x 16 tile, K split over 16 groups of 16 threads, 4 k per group per slab (BK = 64).
template <bool TA, bool TB>
__device__ __forceinline__ void gemm_s16(GEMM_ARGS) { gemm_splitk<16, 16, 16, 4, TA, TB>(GEMM_PASS); }

DEFINE_GEMM(t128, nn, false, false, gemm_t128, T128_MIN_BLOCKS)
DEFINE_GEMM(t128, nt, false, true, gemm_t128, T128_MIN_BLOCKS)
DEFINE_GEMM(t128, tn, true, false, gemm_t128, T128_MIN_BLOCKS)
DEFINE_GEMM(t128, tt, true, true, gemm_t128, T128_MIN_BLOCKS)
DEFINE_GEMM(t64, nn, false, false, gemm_t64, 1)
DEFINE_GEMM(t64, nt, false, true, gemm_t64, 1)
DEFINE_GEMM(t64, tn, true, false, gemm_t64, 1)
DEFINE_GEMM(t64, tt, true, true, gemm_t64, 1)
DEFINE_GEMM(s16, nn, false, false, gemm_s16, 1)
DEFINE_GEMM(s16, nt, false, true, gemm_s16, 1)
DEFINE_GEMM(s16, tn, true, false, gemm_s16, 1)
DEFINE_GEMM(s16, tt, true, true, gemm_s16, 1)

// ------------------------------------------------------------------------------------------------
// Element-wise kernels over n contiguous elements (grid-stride loops, any grid size works).
// For the bias kernels the row of element idx is idx % rows (column-major, contiguous).
// ------------------------------------------------------------------------------------------------

#define GRID_STRIDE_LOOP(idx, n)                                                                   \
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < (n); idx += blockDim.x * gridDim.x)

extern "C" __global__ void fill_real(real* __restrict__ x, int n, real value)
{
    GRID_STRIDE_LOOP(idx, n) x[idx] = value;
}

extern "C" __global__ void fill_int(int* __restrict__ x, int n, int value)
{
    GRID_STRIDE_LOOP(idx, n) x[idx] = value;
}

// out = sigmoid(z + bias 1^T); out may alias z (each element is read before it is written, by the
// same thread), hence no __restrict__ on z and out.
extern "C" __global__ void bias_sigmoid(const real* z, const real* __restrict__ bias, real* out,
                                        int rows, int n)
{
    GRID_STRIDE_LOOP(idx, n)
    {
        const real v = z[idx] + bias[idx % rows];
        out[idx] = real(1) / (real(1) + r_exp(-v));
    }
}

extern "C" __global__ void add_bias(real* __restrict__ z, const real* __restrict__ bias, int rows,
                                    int n)
{
    GRID_STRIDE_LOOP(idx, n) z[idx] += bias[idx % rows];
}

extern "C" __global__ void sigmoid(const real* x, real* out, int n)
{
    GRID_STRIDE_LOOP(idx, n) out[idx] = real(1) / (real(1) + r_exp(-x[idx]));
}

// out = grad * a * (1 - a), evaluated left to right like the NumPy reference.
extern "C" __global__ void sigmoid_backward(const real* grad, const real* __restrict__ a, real* out,
                                            int n)
{
    GRID_STRIDE_LOOP(idx, n)
    {
        const real av = a[idx];
        out[idx] = (grad[idx] * av) * (real(1) - av);
    }
}

// out = scale * (yhat - onehot(labels)); a label outside [0, rows) matches no row.
extern "C" __global__ void softmax_xent_backward(const real* yhat, const int* __restrict__ labels,
                                                 real* out, int rows, int n, real scale)
{
    GRID_STRIDE_LOOP(idx, n)
    {
        const int i = idx % rows;
        const int j = idx / rows;
        const real y = (labels[j] == i) ? real(1) : real(0);
        out[idx] = scale * (yhat[idx] - y);
    }
}

extern "C" __global__ void axpy(const real* __restrict__ x, real* __restrict__ y, int n,
                                real alpha)
{
    GRID_STRIDE_LOOP(idx, n) y[idx] += alpha * x[idx];
}

// ------------------------------------------------------------------------------------------------
// Softmax: one warp per line. A line is a column (axis=0: elements 1 apart, lines ld apart) or a
// row (axis=1: elements ld apart, lines 1 apart) of a column-major matrix. Subtracting the line's
// max keeps exp() finite for any input. out may alias x: exp values are written to out in the
// second pass and normalised in place in the third, each element by the lane that read it.
// ------------------------------------------------------------------------------------------------
extern "C" __global__ void softmax_lines(const real* x, real* out, int nlines, int len,
                                         int line_stride, int elem_stride)
{
    const int line = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (line >= nlines) return;  // whole warps leave together: the shuffles below stay full-warp
    const real* xl = x + line * line_stride;
    real* ol = out + line * line_stride;

    real m = xl[0];  // len >= 1 (the host skips empty lines); avoids needing an infinity constant
    for (int e = lane; e < len; e += 32) m = r_max(m, xl[e * elem_stride]);
    m = warp_max(m);

    real s = real(0);
    for (int e = lane; e < len; e += 32) {
        const real v = r_exp(xl[e * elem_stride] - m);
        ol[e * elem_stride] = v;
        s += v;
    }
    s = warp_sum(s);
    for (int e = lane; e < len; e += 32) ol[e * elem_stride] = ol[e * elem_stride] / s;
}

// ------------------------------------------------------------------------------------------------
// reduce_cols: out_i = alpha * sum_j x_ij. Block = 32 rows x RC_GROUPS column groups; thread
// (r, g) sums columns g, g+RC_GROUPS, ... of its row (reads coalesced along the rows), then the
// groups are added through shared memory in a fixed order. cols == 0 writes zeros.
// ------------------------------------------------------------------------------------------------
#define RC_GROUPS 16
extern "C" __global__ void __launch_bounds__(32 * RC_GROUPS)
    reduce_cols(const real* __restrict__ x, real* __restrict__ out, int rows, int cols, int ld,
                real alpha)
{
    __shared__ real part[RC_GROUPS][33];
    const int r = threadIdx.x & 31;
    const int grp = threadIdx.x >> 5;
    const int row = blockIdx.x * 32 + r;
    real s = real(0);
    if (row < rows)
        for (int j = grp; j < cols; j += RC_GROUPS) s += x[j * ld + row];
    part[grp][r] = s;
    __syncthreads();
    if (grp == 0 && row < rows) {
        real t = part[0][r];
#pragma unroll
        for (int q = 1; q < RC_GROUPS; ++q) t += part[q][r];
        out[row] = alpha * t;
    }
}

// ------------------------------------------------------------------------------------------------
// Per-column statistics of the output layer, accumulated into acc[0]. One block, grid-stride over
// the columns: a minibatch has at most a few thousand columns, so a single block is fast enough
// and its fixed reduction order makes the result reproducible (no atomics).
// ------------------------------------------------------------------------------------------------

// acc[0] += sum_j -log(yhat[labels[j], j]); a label outside [0, rows) contributes NaN so the error
// shows up in the loss instead of reading out of bounds.
extern "C" __global__ void nll_sum(const real* __restrict__ yhat, const int* __restrict__ labels,
                                   real* __restrict__ acc, int rows, int n, int ld)
{
    real s = real(0);
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        const int c = labels[j];
        s += (c >= 0 && c < rows) ? -r_log(yhat[j * ld + c]) : (real(0) / real(0));
    }
    s = block_sum(s);
    if (threadIdx.x == 0) acc[0] += s;
}

// acc[0] += #{j : argmax_i scores[i, j] == labels[j]}, the FIRST maximum on ties (like NumPy, which
// also treats a NaN as the maximum).
extern "C" __global__ void count_correct(const real* __restrict__ scores,
                                         const int* __restrict__ labels, real* __restrict__ acc,
                                         int rows, int n, int ld)
{
    real hits = real(0);
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        const real* col = scores + j * ld;
        int best = 0;
        real bv = col[0];
        for (int i = 1; i < rows; ++i) {
            const real v = col[i];
            if (bv == bv && (v > bv || v != v)) {  // strict >: ties keep the first; NaN wins once
                bv = v;
                best = i;
            }
        }
        hits += (best == labels[j]) ? real(1) : real(0);
    }
    hits = block_sum(hits);
    if (threadIdx.x == 0) acc[0] += hits;
}

// sum of squares in two deterministic passes: each block writes its partial sum, then one block
// adds the partials in order.
extern "C" __global__ void sum_squares_partial(const real* __restrict__ x, real* __restrict__ partial,
                                               int n)
{
    real s = real(0);
    GRID_STRIDE_LOOP(idx, n)
    {
        const real v = x[idx];
        s += v * v;
    }
    s = block_sum(s);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

extern "C" __global__ void sum_partials(const real* __restrict__ partial, int nparts,
                                        real* __restrict__ out)
{
    real s = real(0);
    for (int q = threadIdx.x; q < nparts; q += blockDim.x) s += partial[q];
    s = block_sum(s);
    if (threadIdx.x == 0) out[0] = s;
}
