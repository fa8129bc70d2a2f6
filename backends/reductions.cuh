// Reductions: softmax over lines, column sums, the output layer's per-column statistics and the
// sum of squares. Every one adds in a fixed order (no floating-point atomics): reproducible.
// Included by kernels.cu.
#ifndef DPMLP_REDUCTIONS_CUH
#define DPMLP_REDUCTIONS_CUH

#include "common.cuh"

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

#endif  // DPMLP_REDUCTIONS_CUH
