// TF32x3 GEMM on Hopper's warpgroup tensor cores (wgmma.mma_async, sm_90a only): the slab
// multiply WgmmaTf32x3, its cp.async pipeline GemmWgmmaMultistage and loader WgmmaAsyncLoader, on
// gemm.cuh's mainloop (the same finish and epilogues as every other tile). The arithmetic is
// gemm_tf32x3.cuh's (read its header and Tf32x3Mma first): each float x = big + small,
// big = tf32(x), small = tf32(x - big); per k8 step t = a_small b_big + a_big b_small + a_big b_big
// summed by the tensor core from zero, then acc += t by an FP32 add (Tf32x3Mma says why).
//
// What differs from Tf32x3Mma is the instruction: wgmma.mma_async.m64n128k8.f32.tf32.tf32 (or
// m64n64k8), one warpgroup (4 warps, 128 threads) multiplying 64 rows x BN columns x 8 k, with
//   A from registers: warp w of the warpgroup holds rows 16 w .. 16 w + 15 of the 64, lane
//     (gid = lane / 4, tig = lane % 4) the elements (gid, tig), (gid + 8, tig), (gid, tig + 4),
//     (gid + 8, tig + 4): mma.sync m16n8k8's A fragment. The thread reads them from As (k-major,
//     as every loader writes A, but with rows XOR-swizzled instead of padded: WgmmaSlabLayout)
//     and splits them in registers, as Tf32x3Mma does;
//   B from shared memory through a matrix descriptor: for .tf32 only K-major is allowed (no
//     transpose), in 8 x 16-byte core matrices (8 columns n of op(B), 4 consecutive k each). The
//     pipeline splits op(B) in shared memory into big and small, each in that layout
//     (WgmmaSlabLayout), so the multiply reads B only through the descriptors;
//   D: the thread's BN / 2 floats of the warpgroup's 64 x BN are the C fragment of mma.sync
//     m16n8k* for the warp's 16 rows, one 16 x 8 block after another: gemm.cuh's WarpMmaFragment
//     with 16-row warps (WARPS_M = 8, WARPS_N = 1).
// Between the split's stores (generic proxy) and the wgmma reads of them (async proxy) each thread
// fences (fence.proxy.async) before the pipeline's barrier; the multiply waits for its wgmmas
// (wait_group 0) every slab, so its buffers are free once every thread is past the pipeline's
// next barrier. Deterministic: every element is one fixed sequence of wgmma and adds.
//
// wgmma exists on sm_90a only (the arch-specific target, __CUDA_ARCH_FEAT_SM90_ALL): in any other
// build (sm_90 without the a, older targets, the float64 build has no such tile) the multiply
// compiles to a trap, and nothing plans these kernels there (the backends read the build's
// features: cuda_compile.FEATURE_PROBE).
#ifndef DPMLP_GEMM_WGMMA_CUH
#define DPMLP_GEMM_WGMMA_CUH

#include "common.cuh"
#include "gemm.cuh"
#include "gemm_tf32x3.cuh"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define DPMLP_HAS_WGMMA 1
#else
#define DPMLP_HAS_WGMMA 0
#endif

// The shared layout of one slab of the wgmma tiles (offsets in floats within As and Bs):
//   As: BK rows of BM, row r of op(A) at k row k is at k BM + (r ^ 8 (k % 4)): the four k of an A
//       fragment load (tig) land on four different 8-word bank groups (no padding needed);
//   Bs: op(B) (a stage), or big then small (a split buffer), BK x BN each in core matrices of
//       8 n x 4 k (128 bytes,
//       n-th row at 16 n bytes, k at 4 k bytes within it); core matrix (k / 4, n / 8) at
//       ((n / 8) (BK / 4) + k / 4) 128 bytes. So the core matrices adjacent in k are 128 bytes
//       apart (the descriptor's leading byte offset, LBO) and those adjacent in n BK / 4 * 128
//       (stride byte offset, SBO); a k8 step's B starts 256 bytes further than the previous.
template <int BM, int BN, int BK>
struct WgmmaSlabLayout {
    static_assert(BM % 32 == 0 && BN % 8 == 0 && BK % 8 == 0, "whole swizzle groups, core matrices");
    static constexpr int B_HALF = BK * BN;           // floats of op(B) big (then small)
    static constexpr unsigned LBO = 128;             // bytes between core matrices adjacent in k
    static constexpr unsigned SBO = (BK / 4) * 128;  // ... adjacent in n
    static __device__ __forceinline__ int a(int k, int row) { return k * BM + (row ^ ((k & 3) << 3)); }
    static __device__ __forceinline__ int b(int k, int n)
    {
        return (((n >> 3) * (BK / 4) + (k >> 2)) << 5) + ((n & 7) << 2) + (k & 3);
    }
};

// The wgmma instructions (sm_90a; elsewhere never reached: the multiply traps first)
#if DPMLP_HAS_WGMMA
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_wait_all() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }

// The descriptor of a K-major, unswizzled B operand at shared address `addr` (WgmmaSlabLayout):
// start address, LBO and SBO in 16-byte units (bits 0-13, 16-29, 32-45), base offset 0, layout
// type 0 (no swizzle, bits 62-63).
__device__ __forceinline__ unsigned long long wgmma_desc(unsigned addr, unsigned lbo, unsigned sbo)
{
    return (unsigned long long)((addr & 0x3FFFFu) >> 4) |
           ((unsigned long long)((lbo >> 4) & 0x3FFFu) << 16) |
           ((unsigned long long)((sbo >> 4) & 0x3FFFu) << 32);
}

// d = (scale_d ? d : 0) + a b for the warpgroup's 64 x 128 x 8 (A: the thread's fragment, B: the
// descriptor). Asynchronous: d and a must not be touched until wgmma_wait_all.
__device__ __forceinline__ void wgmma_m64n128k8_tf32(float (&d)[64], const unsigned (&a)[4],
                                                     unsigned long long desc_b, int scale_d)
{
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "setp.ne.b32 p, %69, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k8.f32.tf32.tf32 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, "
        "%18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, "
        "%34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, "
        "%50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
        "{%64, %65, %66, %67}, %68, p, 1, 1;\n"
        "}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
          "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
          "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]),
          "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]),
          "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
          "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]),
          "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]),
          "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]),
          "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
          "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]),
          "+f"(d[62]), "+f"(d[63])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(scale_d));
}

// the same for 64 x 64 x 8 (the thread's 32 floats of the warpgroup's 64 x 64)
__device__ __forceinline__ void wgmma_m64n64k8_tf32(float (&d)[32], const unsigned (&a)[4],
                                                    unsigned long long desc_b, int scale_d)
{
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "setp.ne.b32 p, %37, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k8.f32.tf32.tf32 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
        "{%32, %33, %34, %35}, %36, p, 1, 1;\n"
        "}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),
          "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),
          "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]),
          "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),
          "+f"(d[30]), "+f"(d[31])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(scale_d));
}

// wgmma_tf32<N>: the m64nNk8 instruction for a warpgroup tile N columns wide
template <int N>
__device__ __forceinline__ void wgmma_tf32(float (&d)[N / 2], const unsigned (&a)[4],
                                           unsigned long long desc_b, int scale_d);
template <>
__device__ __forceinline__ void wgmma_tf32<128>(float (&d)[64], const unsigned (&a)[4],
                                                unsigned long long desc_b, int scale_d)
{
    wgmma_m64n128k8_tf32(d, a, desc_b, scale_d);
}
template <>
__device__ __forceinline__ void wgmma_tf32<64>(float (&d)[32], const unsigned (&a)[4],
                                               unsigned long long desc_b, int scale_d)
{
    wgmma_m64n64k8_tf32(d, a, desc_b, scale_d);
}
#endif

// The wgmma TF32x3 slab multiply (gemm.cuh's Mma): BM / 64 warpgroups, each 64 rows x all BN
// columns of the tile; one k-group; BK-deep slabs in WgmmaSlabLayout (GemmWgmmaMultistage).
//
// PROMOTE: how many k8 steps' products the tensor core sums from zero into t before t is added to
// acc by an FP32 add; 1 (the default) is Tf32x3Mma's every step. 0: the wgmmas accumulate into
// acc themselves (no t: 64 registers fewer, no add), as CUTLASS's 3xTF32 does, at the tensor
// core's own truncation of the running sum: 4.5-10.5x the SIMT kernel's error at the model's
// products on the H100 (tools/check_wgmma.py), so not a tile of the table.
template <int BM_, int BN_, int BK_, int PROMOTE = 1>
struct WgmmaTf32x3 : WarpMmaFragment<BM_, BN_, BM_ / 16, 1, 1> {
    using F = WarpMmaFragment<BM_, BN_, BM_ / 16, 1, 1>;
    using L = WgmmaSlabLayout<BM_, BN_, BK_>;
    static constexpr int BK = BK_, PAD = 0;
    static constexpr int PER_ADD = PROMOTE > 0 ? PROMOTE : 1;  // (k8 steps per t)
    static_assert(BK_ > 0 && !REAL_IS_DOUBLE, "TF32x3 splits floats: a float32 tile");
    static_assert(BM_ % 64 == 0 && (BN_ == 128 || BN_ == 64) && F::FRAG == BN_ / 2,
                  "warpgroups of 64 x BN: m64n128k8 or m64n64k8");

    __device__ __forceinline__ explicit WgmmaTf32x3(int tid) : F(tid) {}

    // acc += this warpgroup's part of one slab (As: WgmmaSlabLayout; Bs: op(B) big, then small)
    __device__ __forceinline__ void multiply(float (&acc)[F::FRAG], const float* As,
                                             const float* Bs) const
    {
        multiply_overlapped(acc, As, Bs, [] {});
    }

    // multiply, with during() run while the wgmmas of the slab's last k8 step are in flight (the
    // pipeline's work on the next slab; it must not touch acc, As or Bs)
    template <class During>
    __device__ __forceinline__ void multiply_overlapped(float (&acc)[F::FRAG], const float* As,
                                                        const float* Bs, During during) const
    {
#if DPMLP_HAS_WGMMA
        const unsigned b_big = shared_addr(Bs), b_small = b_big + L::B_HALF * 4;
        const int r0 = this->wm0 + this->gid, r1 = r0 + 8;
        float t[F::FRAG];  // (PROMOTE: the partial sum of PROMOTE k8 steps)
#pragma unroll
        for (int kk = 0; kk < BK; kk += 8) {
            const int k_lo = kk + this->tig, k_hi = k_lo + 4;
            unsigned a_big[4], a_small[4];
            tf32_split(As[L::a(k_lo, r0)], a_big[0], a_small[0]);
            tf32_split(As[L::a(k_lo, r1)], a_big[1], a_small[1]);
            tf32_split(As[L::a(k_hi, r0)], a_big[2], a_small[2]);
            tf32_split(As[L::a(k_hi, r1)], a_big[3], a_small[3]);
            const unsigned step = (kk / 4) * 128;  // bytes: two core matrices of k per k8 step
            const unsigned long long d_big = wgmma_desc(b_big + step, L::LBO, L::SBO);
            const unsigned long long d_small = wgmma_desc(b_small + step, L::LBO, L::SBO);
            // t = a_small b_big + a_big b_small + a_big b_big, from zero (scale_d = 0 first), the
            // small products first; then acc += t (Tf32x3Mma: the tensor core's accumulation
            // truncates, so each k8 step's sum is promoted by an FP32 add). Without PROMOTE the
            // same three products go into acc itself.
            const int j = kk / 8;  // the k8 step
            const bool first = PROMOTE > 0 && j % PER_ADD == 0;
            const bool last = kk + 8 >= BK || (PROMOTE > 0 && (j + 1) % PER_ADD == 0);
            float(&d)[F::FRAG] = PROMOTE > 0 ? t : acc;
            wgmma_fence();  // the A fragments (and d's registers) were written just before
            wgmma_tf32<BN_>(d, a_small, d_big, first ? 0 : 1);
            wgmma_tf32<BN_>(d, a_big, d_small, 1);
            wgmma_tf32<BN_>(d, a_big, d_big, 1);
            if (last) {
                wgmma_commit();
                if (kk + 8 >= BK) during();
                wgmma_wait_all();
                // d is written by the wgmmas: no read of it may move above the wait
#pragma unroll
                for (int f = 0; f < F::FRAG; ++f) asm volatile("" : "+f"(d[f])::"memory");
                if (PROMOTE > 0) {
#pragma unroll
                    for (int f = 0; f < F::FRAG; ++f) acc[f] += t[f];
                }
            }
        }
#else
        (void)acc;
        (void)As;
        (void)Bs;
        during();
        __trap();  // never launched: the planner names these kernels for sm_90a builds only
#endif
    }
};

// The cp.async loader of the wgmma pipeline (GemmWgmmaMultistage): AsyncSlabLoader's copies
// (every transpose, leading dimension, edge and the ones column, the same SlabEdges; zero fill
// outside the matrices),
// one element each, into WgmmaSlabLayout: As swizzled, op(B) unsplit in core matrices (the
// pipeline splits it in shared memory: GemmWgmmaMultistage::split_b). A stage: BK BM floats of As, then BK BN of
// op(B).
template <int BM, int BN, int BK, int NT, bool TA, bool TB, bool ONES, int PAD>
struct WgmmaAsyncLoader : SlabOffsets, SlabEdges {
    using Map = SlabMap<BM, BN, BK, NT, TA, TB>;
    using L = WgmmaSlabLayout<BM, BN, BK>;
    static constexpr int A_LOADS = Map::A_LOADS, B_LOADS = Map::B_LOADS;
    static constexpr int A_LSTEP = Map::A_LSTEP, B_LSTEP = Map::B_LSTEP;
    static_assert(A_LOADS <= 32 && B_LOADS <= 32, "row masks are 32 bits");
    static_assert(!ONES || TB, "the ones column is the bias gradient's, an nt product");

    // The 16-byte path (a_vec, b_vec): where the shared layout and the matrix agree on which four
    // floats are consecutive (As: four rows of op(A) = A, WgmmaSlabLayout keeps groups of 4 rows
    // together; op(B) = B: four k of a column, a row of a core matrix), the leading dimension is a
    // multiple of 4 and the matrix 16-byte aligned, each thread copies VA (VB) vectors of 4 floats
    // a slab with cp.async.cg 16: a quarter of the instructions. The copy's source size zero-fills
    // what lies past the matrix (rows past M, k past K). Elsewhere (transposed operands, the ones
    // column, odd leading dimensions) one float a copy, as above.
    static constexpr int VA = BK * BM / 4 / NT > 0 ? BK * BM / 4 / NT : 1;  // vectors a thread
    static constexpr int VB = BK * BN / 4 / NT > 0 ? BK * BN / 4 / NT : 1;
    static constexpr int A_ROW4 = BM / 4, B_KQ = BK / 4;  // vectors per k row of As, per column

    const float* __restrict__ A;
    const float* __restrict__ B;
    int M, N, K, k0;      // k0: the k of the slab the next issue copies
    int m0, n0, lda, ldb;
    bool a_vec, b_vec;    // the 16-byte paths

    __device__ __forceinline__ WgmmaAsyncLoader(const float* A_, const float* B_, int M_, int N_,
                                                int K_, int lda_, int ldb_, int m0_, int n0_,
                                                int tid)
        : SlabOffsets(Map::offsets(lda_, ldb_, m0_, n0_, tid)),
          SlabEdges(SlabEdges::of<Map, ONES>(*this, M_, N_, m0_, n0_)), A(A_), B(B_), M(M_),
          N(N_), K(K_), k0(0), m0(m0_), n0(n0_), lda(lda_), ldb(ldb_)
    {
        a_vec = !TA && (lda & 3) == 0 && (reinterpret_cast<size_t>(A) & 15) == 0;
        b_vec = !TB && !ONES && (ldb & 3) == 0 && (reinterpret_cast<size_t>(B) & 15) == 0;
    }

    // the (within-slab) k and the row / column of load l
    __device__ __forceinline__ int ak(int l) const { return a_k + (TA ? 0 : l * A_LSTEP); }
    __device__ __forceinline__ int arow(int l) const { return a_row + (TA ? l * A_LSTEP : 0); }
    __device__ __forceinline__ int bk(int l) const { return b_k + (TB ? l * B_LSTEP : 0); }
    __device__ __forceinline__ int bcol(int l) const { return b_col + (TB ? 0 : l * B_LSTEP); }

    // 16 bytes from global src to shared dst, of which the first `bytes` are read, the rest zeros
    static __device__ __forceinline__ void copy16(unsigned dst, const float* src, int bytes)
    {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
                     "r"(bytes));
#else
        (void)dst;
        (void)src;
        (void)bytes;
#endif
    }
    static __device__ __forceinline__ int valid_bytes(int left)
    {
        return left >= 4 ? 16 : (left > 0 ? 4 * left : 0);
    }

    // copies of the next slab into the stage at smem + stage (sbase: the shared address of smem)
    __device__ __forceinline__ void issue(float* smem, unsigned sbase, int stage)
    {
        const int tid = static_cast<int>(threadIdx.x);
        if (!TA && a_vec) {
#pragma unroll
            for (int v = 0; v < VA; ++v) {
                const int e = tid + v * NT;  // vector e: k row e / A_ROW4, rows 4 (e % A_ROW4) ..
                if (VA == 1 && e >= BK * A_ROW4) break;
                const int k = e / A_ROW4, row = 4 * (e % A_ROW4);
                const bool in = k0 + k < K;
                const int bytes = in ? valid_bytes(M - (m0 + row)) : 0;
                copy16(sbase + 4u * static_cast<unsigned>(stage + L::a(k, row)),
                       bytes ? A + (static_cast<size_t>(k0 + k) * lda + m0 + row) : A, bytes);
            }
        } else {
#pragma unroll
            for (int l = 0; l < A_LOADS; ++l) {
                const bool ok = ((a_ok >> l) & 1u) && k0 + ak(l) < K;
                copy_elem(smem, sbase, stage + L::a(ak(l), arow(l)),
                          ok ? A + (a_off + l * a_lstride) : A, ok);
            }
        }
        float* Bs = smem + stage + BK * BM;
        if (!TB && !ONES && b_vec) {
#pragma unroll
            for (int v = 0; v < VB; ++v) {
                const int e = tid + v * NT;  // vector e: column e / B_KQ, k 4 (e % B_KQ) ..
                if (VB == 1 && e >= BK * BN / 4) break;
                const int n = e / B_KQ, k = 4 * (e % B_KQ);
                const bool in = n0 + n < N;
                const int bytes = in ? valid_bytes(K - (k0 + k)) : 0;
                copy16(sbase + 4u * static_cast<unsigned>(stage + BK * BM + L::b(k, n)),
                       bytes ? B + (static_cast<size_t>(n0 + n) * ldb + k0 + k) : B, bytes);
            }
        } else if (ONES && b_ones) {
#pragma unroll
            for (int l = 0; l < B_LOADS; ++l) Bs[L::b(bk(l), bcol(l))] = k0 + bk(l) < K ? 1.0f : 0.0f;
        } else {
#pragma unroll
            for (int l = 0; l < B_LOADS; ++l) {
                const bool ok = ((b_ok >> l) & 1u) && k0 + bk(l) < K;
                copy_elem(smem, sbase, stage + BK * BM + L::b(bk(l), bcol(l)),
                          ok ? B + (b_off + l * b_lstride) : B, ok);
            }
        }
        k0 += BK;
        a_off += a_sstride;
        b_off += b_sstride;
    }
};

// op(B) of a stage (core-matrix layout, FLOATS of it) into big and small of a split buffer
// (big, then small, FLOATS each), element for element in the same layout (so any consecutive run of
// floats maps to itself: vectors), by the NT threads t = 0 .. NT-1; then fenced to the async proxy
// (the wgmmas read the split buffer through their descriptors).
template <int FLOATS, int NT>
__device__ __forceinline__ void split_op_b(const float* raw, float* split, int t)
{
    constexpr int PER_THREAD = FLOATS / NT;
    static_assert(PER_THREAD * NT == FLOATS && (PER_THREAD % 4 == 0 || PER_THREAD == 2),
                  "the split pass moves float4s or float2s");
    if (PER_THREAD == 2) {
        const int i = 2 * t;
        const float2 v = *reinterpret_cast<const float2*>(raw + i);
        unsigned b0, b1, s0, s1;
        tf32_split(v.x, b0, s0);
        tf32_split(v.y, b1, s1);
        *reinterpret_cast<uint2*>(split + i) = make_uint2(b0, b1);
        *reinterpret_cast<uint2*>(split + FLOATS + i) = make_uint2(s0, s1);
    } else {
#pragma unroll
        for (int j = 0; j < PER_THREAD / 4; ++j) {
            const int i = 4 * (j * NT + t);
            const float4 v = *reinterpret_cast<const float4*>(raw + i);
            unsigned b0, b1, b2, b3, s0, s1, s2, s3;
            tf32_split(v.x, b0, s0);
            tf32_split(v.y, b1, s1);
            tf32_split(v.z, b2, s2);
            tf32_split(v.w, b3, s3);
            *reinterpret_cast<uint4*>(split + i) = make_uint4(b0, b1, b2, b3);
            *reinterpret_cast<uint4*>(split + FLOATS + i) = make_uint4(s0, s1, s2, s3);
        }
    }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

// cp.async, STAGES slabs deep, for the wgmma slab multiply (WgmmaTf32x3), with op(B) split in
// shared memory one slab ahead: while the wgmmas of slab s run (asynchronously), every thread
// splits its share of slab s+1's op(B) (one float4: 4 TF32 big and 4 small) into the other of two
// split buffers, which the wgmmas of slab s+1 read through their descriptors. One barrier a slab
// orders everything:
//   before barrier s: every thread's copies of slab s+1 landed (cp.async.wait_group), its split
//     of slab s written and fenced to the async proxy (fence.proxy.async), its wgmmas of slab s-1
//     complete (the multiply waits for them);
//   so after it: slab s's split buffer is ready, and slab s-1's stage and split buffer are free
//     (the copies of slab s+STAGES-1 and the split of slab s+1 overwrite them).
// Shared memory: STAGES stages of As and op(B), then the two split buffers (big, then small).
template <class Mma_, int STAGES>
struct GemmWgmmaMultistage {
    using Mma = Mma_;
    static constexpr int BM = Mma::BM, BN = Mma::BN, BK = Mma::BK, THREADS = Mma::THREADS;
    static constexpr int STAGE = BK * BM + BK * BN;        // floats: As, op(B) unsplit
    static constexpr int SPLIT = 2 * BK * BN;              // floats: op(B) big, small
    static constexpr int SMEM = STAGES * STAGE + 2 * SPLIT;
    static_assert(STAGES >= 3, "slab s+1 lands while slab s is multiplied");
    static_assert(Mma::KG == 1, "one k-group: nothing to reduce");
    template <bool TA, bool TB, bool ONES>
    using Loader = WgmmaAsyncLoader<BM, BN, BK, THREADS, TA, TB, ONES, 0>;

    static __device__ __forceinline__ void split_b(const float* raw, float* split)
    {
        split_op_b<BK * BN, THREADS>(raw, split, static_cast<int>(threadIdx.x));
    }

    template <class Ld>
    static __device__ __forceinline__ void walk(Ld& slab, const Mma& mma, float (&acc)[Mma::FRAG],
                                                float* smem, int K)
    {
        const unsigned sbase = shared_addr(smem);
        float* split = smem + STAGES * STAGE;
        const int nslabs = (K + BK - 1) / BK;
        if (nslabs == 0) return;
        // Prologue: slabs 0 .. STAGES-2 in flight (one commit a slab, empty groups past the
        // last, so that "at most STAGES-3 pending" at slab s means "slab s+1 has landed"); slab 0
        // split.
#pragma unroll
        for (int s = 0; s < STAGES - 1; ++s) {
            if (s < nslabs) slab.issue(smem, sbase, s * STAGE);
            copy_commit();
        }
        copy_wait<STAGES - 2>();
        __syncthreads();
        split_b(smem + BK * BM, split);
        int rd = 0, wr = STAGES - 1;
        for (int s = 0; s < nslabs; ++s) {
            copy_wait<STAGES - 3>();
            __syncthreads();
            if (s + STAGES - 1 < nslabs) slab.issue(smem, sbase, wr * STAGE);
            copy_commit();
            wr = (wr + 1 == STAGES) ? 0 : wr + 1;
            const int nx = (rd + 1 == STAGES) ? 0 : rd + 1;
            const float* As = smem + rd * STAGE;
            float* cur = split + (s & 1) * SPLIT;
            // the multiply issues its wgmmas, then (before waiting for them) this splits the
            // next slab: Mma::multiply_overlapped runs `during` between the two
            mma.multiply_overlapped(acc, As, cur, [&] {
                if (s + 1 < nslabs) split_b(smem + nx * STAGE + BK * BM, split + ((s + 1) & 1) * SPLIT);
            });
            rd = nx;
        }
        copy_wait<0>();  // only empty groups can remain
    }
};

// mbarriers (sm_90: the pipeline's producer and consumer warps hand stages to each other; addr:
// the barrier's shared-state-space address, 8-byte aligned). arrive: release at CTA scope; wait:
// acquire, until the phase of the given parity has completed. Below sm_90 they are empty (the
// pipeline's kernels trap in their multiply there: never launched).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define DPMLP_HAS_MBARRIER_WAIT 1
#else
#define DPMLP_HAS_MBARRIER_WAIT 0
#endif
__device__ __forceinline__ void mbar_init(unsigned addr, unsigned count)
{
#if DPMLP_HAS_MBARRIER_WAIT
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(addr), "r"(count) : "memory");
#else
    (void)addr;
    (void)count;
#endif
}
__device__ __forceinline__ void mbar_arrive(unsigned addr)
{
#if DPMLP_HAS_MBARRIER_WAIT
    asm volatile("{\n\t.reg .b64 st;\n\tmbarrier.arrive.shared::cta.b64 st, [%0];\n\t}\n" ::"r"(addr)
                 : "memory");
#else
    (void)addr;
#endif
}
__device__ __forceinline__ void mbar_wait(unsigned addr, unsigned parity)
{
#if DPMLP_HAS_MBARRIER_WAIT
    unsigned done;
    do {
        asm volatile(
            "{\n\t.reg .pred p;\n\tmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
            "\tselp.u32 %0, 1, 0, p;\n\t}\n"
            : "=r"(done)
            : "r"(addr), "r"(parity)
            : "memory");
    } while (!done);
#else
    (void)addr;
    (void)parity;
#endif
}
// a barrier of the producer warpgroup alone (named barrier 1; 0 is __syncthreads')
__device__ __forceinline__ void producer_sync() { asm volatile("bar.sync 1, 128;\n" ::: "memory"); }

// The warp-specialised wgmma pipeline: warpgroup 0 (128 threads) is the producer, the slab
// multiply's BM / 64 warpgroups after it are the consumers, and they hand STAGES stages to each
// other through two mbarriers a stage instead of a block-wide barrier a slab, so the consumer
// warpgroups drift apart: while one adds its k8 step's products into acc, the other's wgmmas run.
//   producer: the copies of slab j into stage j % STAGES (WgmmaAsyncLoader with 128 threads; once
//     the consumers have freed the stage: `empty`), LOOKAHEAD slabs ahead of the split; for slab
//     i = j - LOOKAHEAD, once every producer thread's copies of it landed (cp.async.wait_group,
//     then the producer's own barrier), op(B) split into the stage's big and small (split_op_b,
//     fenced to the async proxy) and the stage handed over (`full`, every producer thread);
//   consumers: for slab s, wait for full, multiply (A from the stage's raw As, op(B) through the
//     descriptors of the split; the multiply waits for its wgmmas), hand the stage back (`empty`,
//     a lane of each consumer warp after the warp's last read).
// Shared memory, a stage: As (BK BM), op(B) unsplit (BK BN), op(B) big and small (2 BK BN); then
// the 2 STAGES mbarriers (full, then empty). The same arithmetic as GemmWgmmaMultistage, element
// for element: the results are bitwise those of w128 (and x128).
template <class Mma_, int STAGES, int LOOKAHEAD>
struct GemmWgmmaWarpSpecialized {
    using Mma = Mma_;
    static constexpr int BM = Mma::BM, BN = Mma::BN, BK = Mma::BK;
    static constexpr int PRODUCERS = 128, CONSUMERS = Mma::THREADS;
    static constexpr int THREADS = PRODUCERS + CONSUMERS;
    static constexpr bool OWN_BLOCK = true;  // (gemm.cuh GemmBlock: block() below, not gemm_mainloop)
    static constexpr int STAGE = BK * BM + 3 * BK * BN;  // floats
    static constexpr int SMEM = STAGES * STAGE + 2 * STAGES * 2;  // floats: stages, mbarriers
    static_assert(LOOKAHEAD >= 1 && STAGES > LOOKAHEAD, "a stage free for the copies ahead");
    static_assert(Mma::KG == 1, "one k-group: nothing to reduce");
    template <bool TA, bool TB, bool ONES>
    using Loader = WgmmaAsyncLoader<BM, BN, BK, PRODUCERS, TA, TB, ONES, 0>;

    static __device__ __forceinline__ float* raw_a(float* smem, int st) { return smem + st * STAGE; }
    static __device__ __forceinline__ float* raw_b(float* smem, int st)
    {
        return raw_a(smem, st) + BK * BM;
    }
    static __device__ __forceinline__ float* split(float* smem, int st)
    {
        return raw_b(smem, st) + BK * BN;
    }

    template <class Ld>
    static __device__ __forceinline__ void produce(Ld& slab, float* smem, unsigned full,
                                                   unsigned empty, int nslabs)
    {
        const unsigned sbase = shared_addr(smem);
        const int t = static_cast<int>(threadIdx.x);
        for (int j = 0; j < nslabs + LOOKAHEAD; ++j) {
            if (j < nslabs) {
                const int st = j % STAGES;
                if (j >= STAGES) mbar_wait(empty + 8 * st, (j / STAGES - 1) & 1);
                slab.issue(smem, sbase, st * STAGE);
            }
            copy_commit();  // (empty groups past the last slab: the wait below counts groups)
            const int i = j - LOOKAHEAD;
            if (i >= 0) {
                const int st = i % STAGES;
                copy_wait<LOOKAHEAD>();  // this thread's copies of slab i landed ...
                producer_sync();         // ... and every producer thread's
                split_op_b<BK * BN, PRODUCERS>(raw_b(smem, st), split(smem, st), t);
                mbar_arrive(full + 8 * st);
            }
        }
        copy_wait<0>();
    }

    static __device__ __forceinline__ void consume(const Mma& mma, float (&acc)[Mma::FRAG],
                                                   float* smem, unsigned full, unsigned empty,
                                                   int nslabs)
    {
        for (int s = 0; s < nslabs; ++s) {
            const int st = s % STAGES;
            mbar_wait(full + 8 * st, (s / STAGES) & 1);
            mma.multiply(acc, raw_a(smem, st), split(smem, st));
            __syncwarp();
            if ((threadIdx.x & 31) == 0) mbar_arrive(empty + 8 * st);
        }
    }

    // The finish, split by role. Whole K: the consumers put their tile through the epilogue
    // (gemm_finish); the producer has nothing left. A split block (SplitK, the *_split kernels):
    // the consumers store their partial, then all THREADS threads take the tile's ticket and, in
    // its last block, add the partials (gemm.cuh split_finish_tile: the same code and order as
    // every split tile's, so the producer's threads share the reduction).
    template <class Epi>
    static __device__ __forceinline__ void consumers_finish(const Mma& mma, float (&acc)[Mma::FRAG],
                                                            float* smem, GEMM_CORE_ARGS, int m0,
                                                            int n0, const Epi& epi)
    {
        gemm_finish(mma, acc, smem, C, M, N, ldc, m0, n0, epi);
    }
    template <class Epi>
    static __device__ __forceinline__ void consumers_finish(const Mma& mma, float (&acc)[Mma::FRAG],
                                                            float*, GEMM_CORE_ARGS, int, int,
                                                            const SplitK<Epi>& sk)
    {
        split_store_part(mma, acc, sk);
    }
    template <class Epi>
    static __device__ __forceinline__ void block_finish(GEMM_CORE_ARGS, int, int, const Epi&)
    {
    }
    template <class Epi>
    static __device__ __forceinline__ void block_finish(GEMM_CORE_ARGS, int m0, int n0,
                                                        const SplitK<Epi>& sk)
    {
        split_finish_tile<BM, BN, THREADS>(C, M, N, ldc, m0, n0, sk);
    }

    // the block (gemm.cuh GemmBlock, under GemmTileDynamic): barriers initialised, the producer's
    // and the consumers' loops, the finish (gemm_mainloop's, with the roles split)
    template <bool TA, bool TB, bool ONES, class Epi>
    static __device__ __forceinline__ void block(float* smem, GEMM_CORE_ARGS, const Epi& epi)
    {
        const unsigned full = shared_addr(smem + STAGES * STAGE), empty = full + 8 * STAGES;
        const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
        const int nslabs = (K + BK - 1) / BK;
        if (threadIdx.x == 0) {
            for (int st = 0; st < STAGES; ++st) {
                mbar_init(full + 8 * st, PRODUCERS);
                mbar_init(empty + 8 * st, CONSUMERS / 32);
            }
        }
        __syncthreads();  // (the one block-wide barrier of the K loop's side)
        if (threadIdx.x < PRODUCERS) {
            Loader<TA, TB, ONES> slab(A, B, M, N, K, lda, ldb, m0, n0, threadIdx.x);
            produce(slab, smem, full, empty, nslabs);
        } else {
            const Mma mma(threadIdx.x - PRODUCERS);
            float acc[Mma::FRAG];
#pragma unroll
            for (int f = 0; f < Mma::FRAG; ++f) acc[f] = 0.0f;
            consume(mma, acc, smem, full, empty, nslabs);
            consumers_finish(mma, acc, smem, GEMM_CORE_PASS, m0, n0, epi);
        }
        block_finish(GEMM_CORE_PASS, m0, n0, epi);
    }
};

// The Hopper tiles (gemm_plan.GEMM_WGMMA_TILES, picked per product by pick_wgmma_tile where the
// build has wgmma), both on the warp-specialised pipeline: a producer warpgroup and two consumer
// warpgroups of 64 rows (384 threads), one block per multiprocessor.
// w128: 128 x 128, 3 stages of 32-deep slabs (As, op(B), its big and small: 64 KB each), copies
// one slab ahead of the split: 192 KB of dynamic shared memory. Fastest of the 128 x 128 variants
// measured on the H100 (tools/wgmma_variants.cu ws*; z1 4096x3200x784: 382 us against 532 for
// the multistage pipeline, wm, and 502 for cuBLAS).
typedef GemmTileDynamic<GemmWgmmaWarpSpecialized<WgmmaTf32x3<128, 128, 32>, 3, 1>, 1>
    GemmTile_w128;
// w64: 128 x 64 for the mid-sized products, where 128 x 128 leaves SMs idle (z1 1024x800: 53 us
// against w128's 65; dW1 1024x784x3200: 171 against 229), 6 stages of 16-deep slabs, copies three
// slabs ahead of the split: 120 KB.
typedef GemmTileDynamic<GemmWgmmaWarpSpecialized<WgmmaTf32x3<128, 64, 16>, 6, 3>, 1> GemmTile_w64;

#endif  // DPMLP_GEMM_WGMMA_CUH
