// Element-wise kernels over n contiguous elements (grid-stride loops, any grid size works).
// For the bias kernels the row of element idx is idx % rows (column-major, contiguous).
// Included by kernels.cu.
#ifndef DPMLP_ELEMENTWISE_CUH
#define DPMLP_ELEMENTWISE_CUH

#include "common.cuh"


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

// The regularised SGD step in one pass: the same two multiply-adds per element as axpy(reg, W, dW)
// on the weights' ranges followed by axpy(-lr, grads, params), so the same bits.
extern "C" __global__ void sgd_step(real* __restrict__ params, real* __restrict__ grads, int n,
                                    int lo0, int hi0, int lo1, int hi1, real reg, real neg_lr)
{
    GRID_STRIDE_LOOP(idx, n) {
        real g = grads[idx];
        if ((idx >= lo0 && idx < hi0) || (idx >= lo1 && idx < hi1)) {
            g += reg * params[idx];
            grads[idx] = g;
        }
        params[idx] += neg_lr * g;
    }
}

#endif  // DPMLP_ELEMENTWISE_CUH
