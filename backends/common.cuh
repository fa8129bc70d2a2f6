// Shared by every kernel header: the precision, math overloads per precision, warp and block
// reductions, the last-block ticket and the grid-stride loop. Included first by each kernel header
// (guarded), so each header also compiles on its own.
#ifndef DPMLP_COMMON_CUH
#define DPMLP_COMMON_CUH

#ifndef REAL
#error "compile with -DREAL=float or -DREAL=double"
#endif

typedef REAL real;

// REAL_IS_DOUBLE: 1 in the -DREAL=double build, 0 in the float one, for #if (which cannot compare
// type names: REAL is pasted onto a prefix instead).
#define DPMLP_CAT_(a, b) a##b
#define DPMLP_CAT(a, b) DPMLP_CAT_(a, b)
#define DPMLP_IS_DOUBLE_double 1
#define DPMLP_IS_DOUBLE_float 0
#define REAL_IS_DOUBLE DPMLP_CAT(DPMLP_IS_DOUBLE_, REAL)

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
// The last-block ticket: a sum over blocks in one launch, deterministic and without float atomics
// (the split-K GEMMs' partial tiles, output_layer's loss). Each of `count` blocks writes its part to
// global memory and takes an int ticket; the block that takes the last one adds the parts in an
// order fixed by the launch alone (its own part read back like the others', so the sum never
// depends on which block came last) and resets the ticket to 0 for the next launch or graph
// replay. The result depends only on the operands and the launch shape: reruns, graph replays and
// the two backends agree bit for bit.
// ------------------------------------------------------------------------------------------------

// Called by every thread of the block, after each thread that wrote part of the block's result has
// made it visible with __threadfence(). Returns, to every thread, whether this block is the last of
// `count` to arrive; the last block then reads the others' parts through volatile pointers (never
// a stale cached line) and ends with reset_ticket.
__device__ __forceinline__ bool last_block_to_arrive(int* ticket, int count)
{
    __shared__ int last;
    __syncthreads();  // every part of this block is written and fenced
    if (threadIdx.x == 0) last = (atomicAdd(ticket, 1) == count - 1);
    __syncthreads();
    const bool is_last = last;
    if (is_last) __threadfence();  // the other blocks' parts, seen after their tickets
    return is_last;
}

// The last block, once it has read every part: the ticket is ready for the next launch.
__device__ __forceinline__ void reset_ticket(int* ticket)
{
    if (threadIdx.x == 0) *ticket = 0;
}

// A grid-stride loop over n elements: any grid size covers them (the host caps the grid).
#define GRID_STRIDE_LOOP(idx, n)                                                                   \
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < (n); idx += blockDim.x * gridDim.x)

#endif  // DPMLP_COMMON_CUH
