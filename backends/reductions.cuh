// Reductions: softmax over lines, column sums, the output layer's per-column statistics, the
// fused output layer and the sum of squares. Every one adds in a fixed order (no floating-point
// atomics): reproducible.
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

// ------------------------------------------------------------------------------------------------
// output_layer: the softmax output layer of a training step and its stable cross-entropy, in one
// launch (core.ops.Backend.output_layer). For each column j of a1 (hidden x n):
//     z = w2 a1[:, j] + b2 (classes values),  m = max z,  s = sum exp(z - m),
//     diff[:, j] = scale * (exp(z - m) / s - onehot(labels[j])),
//     nll_acc[0] += sum_j (log(s) + m - z[labels[j]])      (finite whenever the logits are)
//
// Block = OL_THREADS threads over one group of OL_COLS consecutive columns at a time (grid-stride
// over the groups; 8 columns in float, 4 in double, for the registers). Every thread strides over
// the hidden units (h = tid, tid + OL_THREADS, ...), loads its w2[:, h] once (classes contiguous
// values) and accumulates OL_COLS x OL_MAX_CLASSES dot products in registers; the a1 loads of a
// warp are coalesced, and w2 is read once per group instead of once per column. The dot products
// are then summed in a fixed pattern: a shuffle butterfly inside each warp (halving the values
// each lane carries), then the warps' sums in warp order through shared memory. One thread per
// (column, class) finishes: softmax, diff (coalesced: a group's diff columns are contiguous) and,
// for class 0, the column's loss. Thread 0 adds the block's column losses in column order.
//
// The loss over blocks, deterministically and without float atomics (common.cuh's last-block
// ticket): each block writes its sum to partials[blockIdx.x]; the last block to take the ticket
// adds the partials in block order with block_sum (an order fixed by the grid size alone), adds
// that to nll_acc[0] and resets the ticket for the next launch.
//
// The host launches OL_THREADS threads and at most OL_MAX_BLOCKS blocks (the partials' slots),
// never for zero columns, and only with 1 <= classes <= OL_MAX_CLASSES (backends/op_table.py has
// the same constants; tests/test_cuda_compile.py checks they agree). A label outside [0, classes)
// gives a NaN loss (and no one-hot term), so the error shows instead of reading out of bounds.
// ------------------------------------------------------------------------------------------------
#define OL_THREADS 256
#define OL_WARPS (OL_THREADS / 32)
#define OL_COLS_FLOAT 8
#define OL_COLS_DOUBLE 4
#define OL_COLS (sizeof(real) == 4 ? OL_COLS_FLOAT : OL_COLS_DOUBLE)  // columns per group
#define OL_MAX_CLASSES 10
#define OL_MAX_BLOCKS 1024
#define OL_SUMS (OL_COLS * OL_MAX_CLASSES)  // dot products per thread: a multiple of 8

// A halving stage of output_layer's butterfly over a warp: of its 2 * HALF values v, the lane
// keeps the half that its lane bit BIT (`upper`) selects and adds its partner's (lane ^ BIT) copy
// of it.
template <int HALF, int BIT>
__device__ __forceinline__ void butterfly_halve(real* v, bool upper)
{
#pragma unroll
    for (int i = 0; i < HALF; ++i) {
        const real send = upper ? v[i] : v[i + HALF];
        const real keep = upper ? v[i + HALF] : v[i];
        v[i] = keep + __shfl_xor_sync(0xffffffffu, send, BIT);
    }
}
extern "C" __global__ void __launch_bounds__(OL_THREADS, 2)
    output_layer(const real* __restrict__ w2, const real* __restrict__ b2,
                 const real* __restrict__ a1, const int* __restrict__ labels,
                 real* __restrict__ diff, real* __restrict__ nll_acc,
                 real* __restrict__ partials, int* __restrict__ ticket, int classes, int hidden,
                 int n, real scale)
{
    __shared__ real red[OL_WARPS][OL_SUMS];  // per-warp dot products, q * OL_MAX_CLASSES + k
    __shared__ real zs[OL_SUMS];             // the group's logits, column-major
    __shared__ real col_nll[OL_COLS];
    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    static_assert(OL_SUMS % 8 == 0, "the butterfly below halves the sums three times");
    const int ngroups = (n + OL_COLS - 1) / OL_COLS;
    real block_nll = real(0);  // thread 0's: this block's column losses, in column order

    for (int g = blockIdx.x; g < ngroups; g += gridDim.x) {
        const int j0 = g * OL_COLS;
        const int ncols = min(OL_COLS, n - j0);
        const real* col = a1 + j0 * hidden;

        real acc[OL_COLS][OL_MAX_CLASSES];
#pragma unroll
        for (int q = 0; q < OL_COLS; ++q)
#pragma unroll
            for (int k = 0; k < OL_MAX_CLASSES; ++k) acc[q][k] = real(0);

#pragma unroll 2
        for (int h = tid; h < hidden; h += OL_THREADS) {
            real w[OL_MAX_CLASSES];
#pragma unroll
            for (int k = 0; k < OL_MAX_CLASSES; ++k)
                w[k] = (k < classes) ? w2[h * classes + k] : real(0);
#pragma unroll
            for (int q = 0; q < OL_COLS; ++q) {
                if (q < ncols) {
                    const real a = col[q * hidden + h];
#pragma unroll
                    for (int k = 0; k < OL_MAX_CLASSES; ++k) acc[q][k] += w[k] * a;
                }
            }
        }

        // Sum each of the OL_SUMS dot products over the warp's lanes with 5 + OL_SUMS * 7/8
        // shuffles instead of 5 * OL_SUMS: the first three butterfly stages halve the values a
        // lane carries (the lane keeps the half its lane bit selects and adds its partner's copy
        // of that half), the last two add the remaining OL_SUMS/8 values whole. Then lane l
        // (l % 4 == 0) holds the sums of values [base, base + OL_SUMS/8), base from l's bits
        // 4..2. A fixed pattern: every run adds the same numbers in the same order.
        real* v = &acc[0][0];
        {
            const bool b4 = lane & 16, b3 = lane & 8, b2 = lane & 4;
            butterfly_halve<OL_SUMS / 2, 16>(v, b4);
            butterfly_halve<OL_SUMS / 4, 8>(v, b3);
            butterfly_halve<OL_SUMS / 8, 4>(v, b2);
#pragma unroll
            for (int i = 0; i < OL_SUMS / 8; ++i) {
                v[i] += __shfl_xor_sync(0xffffffffu, v[i], 2);
                v[i] += __shfl_xor_sync(0xffffffffu, v[i], 1);
            }
            if ((lane & 3) == 0) {
                const int base = (b4 ? OL_SUMS / 2 : 0) + (b3 ? OL_SUMS / 4 : 0) +
                                 (b2 ? OL_SUMS / 8 : 0);
#pragma unroll
                for (int i = 0; i < OL_SUMS / 8; ++i) red[warp][base + i] = v[i];
            }
        }
        __syncthreads();

        const int nz = ncols * classes;  // one thread per (column q, class k): t = q*classes + k
        if (tid < nz) {
            const int q = tid / classes;
            const int k = tid - q * classes;
            real z = red[0][q * OL_MAX_CLASSES + k];
#pragma unroll
            for (int v = 1; v < OL_WARPS; ++v) z += red[v][q * OL_MAX_CLASSES + k];
            zs[tid] = z + b2[k];
        }
        __syncthreads();

        if (tid < nz) {
            const int q = tid / classes;
            const int k = tid - q * classes;
            const real* zq = zs + q * classes;
            real m = zq[0];
            for (int i = 1; i < classes; ++i) m = r_max(m, zq[i]);
            real s = real(0);
            for (int i = 0; i < classes; ++i) s += r_exp(zq[i] - m);
            const int label = labels[j0 + q];
            const real onehot = (k == label) ? real(1) : real(0);
            diff[j0 * classes + tid] = scale * (r_exp(zq[k] - m) / s - onehot);
            if (k == 0)
                col_nll[q] = (label >= 0 && label < classes) ? r_log(s) + m - zq[label]
                                                             : real(0) / real(0);
        }
        __syncthreads();
        if (tid == 0)
            for (int q = 0; q < ncols; ++q) block_nll += col_nll[q];
        // the next group writes red, zs and col_nll only after two more __syncthreads
    }

    if (tid == 0) {
        partials[blockIdx.x] = block_nll;
        __threadfence();  // the partial is visible to every block before the ticket is taken
    }
    if (last_block_to_arrive(ticket, gridDim.x)) {  // the same for the whole block: block_sum's
                                                    // __syncthreads are safe
        const volatile real* parts = partials;  // written by other blocks: bypass stale caches
        real s = real(0);
        for (int b = tid; b < (int)gridDim.x; b += OL_THREADS) s += parts[b];
        s = block_sum(s);
        if (tid == 0) nll_acc[0] += s;
        reset_ticket(ticket);  // (the kernel's end orders it before the next launch)
    }
}

// ------------------------------------------------------------------------------------------------
// output_backward: the backward pass through the output layer in one launch over a1
// (core.ops.Backend.output_backward), from the error diff (classes x n) that output_layer wrote:
//     [dW2 db2] = diff [a1^T 1]                  (classes x (hidden + 1), written)
//     dz1 = (w2^T diff) * a1 * (1 - a1)          (hidden x n, written)
// Two products that read the same a1, which the fused GEMMs they replace (gemm_with_bias_grad on
// the s16 tile, gemm_sigmoid_backward on t64) each read whole, in two launches that leave most of
// the GPU idle at H <= 1024. Here a block owns OB_ROWS hidden units (row blockIdx.x: one a lane;
// the unit h = hidden is the ones row, whose a1 is 1: db2) and a chunk of the columns (blockIdx.y:
// columns [y * chunk, y * chunk + chunk) of n); each warp walks its own columns of the chunk
// (warp, warp + OB_WARPS, ...): per column one coalesced load of a1 (a lane's unit), the column's
// diff (the same classes values for every lane: broadcast loads), dz1 stored coalesced, and the
// lane's classes sums of diff * a1 (its units' part of [dW2 db2]) carried in registers.
//
// [dW2 db2] over the columns, deterministically and without float atomics: the block's warps' sums
// are added in warp order (shared memory); with one chunk (gridDim.y == 1) the block writes its
// OB_ROWS units' columns of [dW2 db2]; otherwise each block writes that partial to its slot and
// takes its row's ticket (common.cuh), and the row's last block adds the gridDim.y partials in
// chunk order, writes them and resets the ticket. The bits depend only on the operands and the
// launch shape (backends/op_table.py output_backward_sizes: from the shapes alone).
//
// The host launches OB_THREADS threads, never for zero columns, with 1 <= classes <=
// OL_MAX_CLASSES, at most OB_MAX_SPLIT chunks, and, split, at most OB_MAX_TICKETS rows and
// OB_MAX_SLOTS blocks (the workspaces; op_table.py has the same constants).
// ------------------------------------------------------------------------------------------------
#define OB_ROWS 32
#define OB_THREADS 256
#define OB_WARPS (OB_THREADS / 32)
#define OB_SLOT (OL_MAX_CLASSES * OB_ROWS)  // reals of one block's partial: class-major
#define OB_MAX_SPLIT 16
#define OB_MAX_TICKETS 512
#define OB_MAX_SLOTS 1024

extern "C" __global__ void __launch_bounds__(OB_THREADS)
    output_backward(const real* __restrict__ w2, const real* __restrict__ diff,
                    const real* __restrict__ a1, real* __restrict__ dw2b2,
                    real* __restrict__ dz1, real* __restrict__ partials, int* __restrict__ tickets,
                    int classes, int hidden, int n, int chunk)
{
    __shared__ real red[OB_WARPS][OB_SLOT];  // per-warp sums, k * OB_ROWS + lane
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int h = blockIdx.x * OB_ROWS + lane;  // the lane's unit; hidden: the ones row
    const bool unit = h < hidden;
    const int j1 = min(n, (int)(blockIdx.y + 1) * chunk);

    real w[OL_MAX_CLASSES], acc[OL_MAX_CLASSES];
#pragma unroll
    for (int k = 0; k < OL_MAX_CLASSES; ++k) {
        w[k] = (unit && k < classes) ? w2[h * classes + k] : real(0);
        acc[k] = real(0);
    }
#pragma unroll 4
    for (int j = blockIdx.y * chunk + warp; j < j1; j += OB_WARPS) {
        const real* d = diff + j * classes;
        const real a = unit ? a1[(size_t)j * hidden + h] : (h == hidden ? real(1) : real(0));
        real da = real(0);
#pragma unroll
        for (int k = 0; k < OL_MAX_CLASSES; ++k) {
            if (k < classes) {
                const real dk = d[k];
                acc[k] += dk * a;
                da += w[k] * dk;
            }
        }
        if (unit) dz1[(size_t)j * hidden + h] = (da * a) * (real(1) - a);
    }
#pragma unroll
    for (int k = 0; k < OL_MAX_CLASSES; ++k) red[warp][k * OB_ROWS + lane] = acc[k];
    __syncthreads();

    // Element t = k * OB_ROWS + r of the block's part: class k of unit blockIdx.x * OB_ROWS + r.
    const int nt = classes * OB_ROWS;
    const int row = blockIdx.x, rows = gridDim.x, splits = gridDim.y;
    real* slot = partials + ((size_t)blockIdx.y * rows + row) * OB_SLOT;
    for (int t = threadIdx.x; t < nt; t += OB_THREADS) {
        real s = red[0][t];
#pragma unroll
        for (int v = 1; v < OB_WARPS; ++v) s += red[v][t];
        const int k = t / OB_ROWS, hh = row * OB_ROWS + t % OB_ROWS;
        if (splits == 1) {
            if (hh <= hidden) dw2b2[hh * classes + k] = s;
        } else {
            slot[t] = s;
        }
    }
    if (splits == 1) return;  // (the same for the whole block)
    __threadfence();  // this thread's part of the partial is visible before the ticket
    if (!last_block_to_arrive(tickets + row, splits)) return;
    for (int t = threadIdx.x; t < nt; t += OB_THREADS) {
        const int k = t / OB_ROWS, hh = row * OB_ROWS + t % OB_ROWS;
        // the others' parts through L2 (__ldcg: never a stale L1 line), in chunk order
        const real* part = partials + (size_t)row * OB_SLOT + t;
        real s = __ldcg(part);
        for (int z = 1; z < splits; ++z) s += __ldcg(part + (size_t)z * rows * OB_SLOT);
        if (hh <= hidden) dw2b2[hh * classes + k] = s;
    }
    reset_ticket(tickets + row);
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
