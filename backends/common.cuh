// Shared by every kernel header: the precision, math overloads per precision, warp and block
// reductions, and the grid-stride loop. Included first by each kernel header (guarded), so each
// header also compiles on its own.
#ifndef DPMLP_COMMON_CUH
#define DPMLP_COMMON_CUH

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

// A grid-stride loop over n elements: any grid size covers them (the host caps the grid).
#define GRID_STRIDE_LOOP(idx, n)                                                                   \
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < (n); idx += blockDim.x * gridDim.x)

#endif  // DPMLP_COMMON_CUH
