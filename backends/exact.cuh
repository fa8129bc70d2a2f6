// The kernels of --exact mode (core/exact.py): Ozaki's digit split and its combine, and the model's
// element-wise functions from core/exact_math.py. Each must give the NumPy reference's bits (no
// tolerance), so:
// * every floating-point operation is one correctly rounded IEEE operation, written with the
//   round-to-nearest intrinsics (__dadd_rn, __dmul_rn, ...): nvcc contracts a*b + c into one fused
//   multiply-add (one rounding instead of NumPy's two) unless told not to, and these intrinsics
//   are never contracted, whatever -fmad says, so this file alone needs no compiler flag;
// * the operations come in exactly the order of the NumPy code, including Horner's scheme;
// * only rint, ldexp and frexp beyond + - * /: exact or correctly rounded everywhere (ldexp
//   written out below, from multiplications by powers of two).
// They are meant for the float64 build (the shape rules refuse other dtypes); the float build
// compiles them too (with float intrinsics), so kernels.cu stays one source.
// Included by kernels.cu.
#ifndef DPMLP_EXACT_CUH
#define DPMLP_EXACT_CUH

#include "common.cuh"

__device__ __forceinline__ float x_add(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double x_add(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ float x_sub(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ double x_sub(double a, double b) { return __dsub_rn(a, b); }
__device__ __forceinline__ float x_mul(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double x_mul(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float x_div(float a, float b) { return __fdiv_rn(a, b); }
__device__ __forceinline__ double x_div(double a, double b) { return __ddiv_rn(a, b); }
__device__ __forceinline__ float x_rint(float a) { return rintf(a); }
__device__ __forceinline__ double x_rint(double a) { return rint(a); }
__device__ __forceinline__ float x_ldexp(float a, int e) { return ldexpf(a, e); }
// a 2^e correctly rounded (round to nearest even, subnormals and overflow included), as C's ldexp
// (glibc's, behind np.ldexp) is: musl's scalbn, whose only inexact step is its last multiply, so
// that the result does not depend on how the device library implements ldexp.
__device__ __forceinline__ double x_pow2(int e)  // 2^e for -1022 <= e <= 1023: a normal double
{
    return __longlong_as_double((long long)(0x3ff + e) << 52);
}
__device__ __forceinline__ double x_ldexp(double a, int e)
{
    if (e > 1023) {
        a = __dmul_rn(a, x_pow2(1023));
        e -= 1023;
        if (e > 1023) {
            a = __dmul_rn(a, x_pow2(1023));
            e -= 1023;
            if (e > 1023) e = 1023;
        }
    } else if (e < -1022) {
        // 2^-1022 * 2^53: exact steps that keep a normal, the final one at e < -53 (no double
        // rounding in the subnormal range)
        a = __dmul_rn(a, x_pow2(-1022 + 53));
        e += 1022 - 53;
        if (e < -1022) {
            a = __dmul_rn(a, x_pow2(-1022 + 53));
            e += 1022 - 53;
            if (e < -1022) e = -1022;
        }
    }
    return __dmul_rn(a, x_pow2(e));
}
__device__ __forceinline__ float x_frexp(float a, int* e) { return frexpf(a, e); }
__device__ __forceinline__ double x_frexp(double a, int* e) { return frexp(a, e); }
__device__ __forceinline__ real x_inf() { return real(__longlong_as_double(0x7ff0000000000000LL)); }
__device__ __forceinline__ real x_nan() { return real(__longlong_as_double(0x7ff8000000000000LL)); }

// core/exact_math.py's constants, the same doubles (tests/test_exact.py compares the lists)
#define EXACT_INV_LN2 0x1.71547652b82fep+0
#define EXACT_LN2_HI 0x1.62e42fee00000p-1
#define EXACT_LN2_LO 0x1.a39ef35793c76p-33
#define EXACT_EXP_MAX 710.0
#define EXACT_EXP_MIN -746.0
#define EXACT_SQRT_HALF 0x1.6a09e667f3bcdp-1
// the most classes exact_output_layer handles (a column is held in registers); the model has 10
#define EXACT_MAX_CLASSES 10
// EXP_COEFFS: 1/n!, n = 0..13
__device__ static const double EXACT_EXP_COEFFS[14] = {
    0x1p+0, 0x1p+0, 0x1p-1, 0x1.5555555555555p-3, 0x1.5555555555555p-5, 0x1.1111111111111p-7,
    0x1.6c16c16c16c17p-10, 0x1.a01a01a01a01ap-13, 0x1.a01a01a01a01ap-16, 0x1.71de3a556c734p-19,
    0x1.27e4fb7789f5cp-22, 0x1.ae64567f544e4p-26, 0x1.1eed8eff8d898p-29, 0x1.6124613a86d09p-33};
// LOG_COEFFS: 1/(2j+1), j = 1..12
__device__ static const double EXACT_LOG_COEFFS[12] = {
    0x1.5555555555555p-2, 0x1.999999999999ap-3, 0x1.2492492492492p-3, 0x1.c71c71c71c71cp-4,
    0x1.745d1745d1746p-4, 0x1.3b13b13b13b14p-4, 0x1.1111111111111p-4, 0x1.e1e1e1e1e1e1ep-5,
    0x1.af286bca1af28p-5, 0x1.8618618618618p-5, 0x1.642c8590b2164p-5, 0x1.47ae147ae147bp-5};

// e^x = 2^k e^r, k = rint(x / ln2), r = (x - k LN2_HI) - k LN2_LO, e^r by Taylor (exact_math.exp)
__device__ __forceinline__ real exact_exp(real x)
{
    if (x != x) return x;
    if (x > real(EXACT_EXP_MAX)) return x_inf();
    if (x < real(EXACT_EXP_MIN)) return real(0);
    const real k = x_rint(x_mul(x, real(EXACT_INV_LN2)));
    const real r = x_sub(x_sub(x, x_mul(k, real(EXACT_LN2_HI))), x_mul(k, real(EXACT_LN2_LO)));
    real p = real(EXACT_EXP_COEFFS[13]);
#pragma unroll
    for (int n = 12; n >= 0; --n) p = x_add(x_mul(p, r), real(EXACT_EXP_COEFFS[n]));
    return x_ldexp(p, int(k));
}

// ln x = (e LN2_LO + 2 atanh(f)) + e LN2_HI, x = m 2^e, m in [sqrt(1/2), sqrt(2)),
// f = (m - 1) / (m + 1) (exact_math.log)
__device__ __forceinline__ real exact_log(real x)
{
    if (x != x || x < real(0)) return x_nan();
    if (x == real(0)) return -x_inf();
    if (x == x_inf()) return x;
    int e;
    real m = x_frexp(x, &e);
    if (m < real(EXACT_SQRT_HALF)) {
        m = x_add(m, m);
        e -= 1;
    }
    const real f = x_div(x_sub(m, real(1)), x_add(m, real(1)));
    const real s = x_mul(f, f);
    real p = real(EXACT_LOG_COEFFS[11]);
#pragma unroll
    for (int j = 10; j >= 0; --j) p = x_add(x_mul(p, s), real(EXACT_LOG_COEFFS[j]));
    const real lm = x_add(f, x_mul(f, x_mul(s, p)));
    const real ed = real(e);
    return x_add(x_add(x_mul(ed, real(EXACT_LN2_LO)), x_add(lm, lm)), x_mul(ed, real(EXACT_LN2_HI)));
}

__device__ __forceinline__ real exact_sigmoid_of(real x)
{
    return x_div(real(1), x_add(real(1), exact_exp(-x)));
}

// out = (grad a)(1 - a), NumPy's order, each operation rounded on its own (sigmoid_backward's
// formula; a separate kernel so that exact mode never depends on how -fmad treats the other one).
extern "C" __global__ void exact_sigmoid_backward(const real* grad, const real* __restrict__ a,
                                                  real* out, int n)
{
    GRID_STRIDE_LOOP(idx, n)
    {
        const real av = a[idx];
        out[idx] = x_mul(x_mul(grad[idx], av), x_sub(real(1), av));
    }
}

// Element (i, k) of L = op(x) with its optional ones row (i == p0) and ones column (k == q0).
__device__ __forceinline__ real logical_element(const real* x, int i, int k, int p0, int q0, int ld,
                                                int trans)
{
    if (i >= p0 || k >= q0) return real(1);
    return trans ? x[k + (size_t)i * ld] : x[i + (size_t)k * ld];
}

// out[i] = frexp exponent of max_k |L_ik| (0 for a zero row or one with inf/nan): one thread a row.
extern "C" __global__ void exact_row_exponents(const real* __restrict__ x, real* __restrict__ out,
                                               int p, int q, int ld, int trans)
{
    GRID_STRIDE_LOOP(i, p)
    {
        real big = real(0);
        bool finite = true;
        for (int k = 0; k < q; ++k) {
            const real a = fabs(logical_element(x, i, k, p, q, ld, trans));
            if (!(a < x_inf())) finite = false;  // inf or nan
            else if (a > big) big = a;
        }
        int e = 0;
        if (finite) x_frexp(big, &e);
        out[i] = real(e);
    }
}

// Ozaki's split of each row of L (p x q, ones row / column appended) into `slices` digits on the
// grid 2^(exps[i] + shift): see core.ops.Backend.exact_split. One thread per element of L, i
// fastest, so that the digit stores of a warp are consecutive.
extern "C" __global__ void exact_split(const real* __restrict__ x, const real* __restrict__ exps,
                                       real* __restrict__ out, real* __restrict__ flag, int p0,
                                       int q0, int ld, int trans, int ones_row, int ones_col,
                                       int shift, int beta, int slices, int reverse)
{
    const int p = p0 + ones_row, q = q0 + ones_col;
    const real scale = x_ldexp(real(1), beta);
    GRID_STRIDE_LOOP(idx, p * q)
    {
        const int i = idx % p, k = idx / p;
        const int e = int(exps[i]) + shift;
        real r = x_ldexp(logical_element(x, i, k, p0, q0, ld, trans), -e);
        if (!(fabs(r) <= real(1))) flag[0] = real(1);  // also nan; a benign race: all write 1
        for (int s = 0; s < slices; ++s) {
            r = x_mul(r, scale);
            const real d = x_rint(r);
            r = x_sub(r, d);
            const int b = reverse ? slices - 1 - s : s;
            out[i + ((size_t)b * q + k) * p] = d;
        }
    }
}

// out (m x n) from the `count` group sums in groups (m x count*n): Horner in 2^-beta from the last
// group, then the grid's power of two (core.ops.Backend.exact_combine).
extern "C" __global__ void exact_combine(const real* __restrict__ groups,
                                         const real* __restrict__ row_exps,
                                         const real* __restrict__ col_exps, real* __restrict__ out,
                                         int m, int n, int count, int row_shift, int col_shift,
                                         int beta)
{
    const real down = x_ldexp(real(1), -beta);
    const size_t group = (size_t)m * n;
    GRID_STRIDE_LOOP(idx, m * n)
    {
        const int i = idx % m, j = idx / m;
        real acc = groups[(count - 1) * group + idx];
        for (int g = count - 2; g >= 0; --g) acc = x_add(groups[g * group + idx], x_mul(acc, down));
        const int e = (int(row_exps[i]) + (row_shift - 2 * beta)) + (int(col_exps[j]) + col_shift);
        out[idx] = x_ldexp(acc, e);
    }
}

extern "C" __global__ void exact_sigmoid(const real* x, real* out, int n)
{
    GRID_STRIDE_LOOP(idx, n) out[idx] = exact_sigmoid_of(x[idx]);
}

// The output layer from the logits, one block (the loss sum's order is fixed by the launch):
// core.ops.Backend.exact_output_layer. A thread reads a whole column before writing it (diff may
// alias z).
extern "C" __global__ void exact_output_layer(const real* z, const int* __restrict__ labels,
                                              real* diff, real* __restrict__ nll_acc, int classes,
                                              int n, real scale)
{
    real loss = real(0);
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        real zc[EXACT_MAX_CLASSES], ec[EXACT_MAX_CLASSES];
        const real* col = z + (size_t)j * classes;
        real m = col[0];
#pragma unroll
        for (int c = 0; c < EXACT_MAX_CLASSES; ++c) {
            if (c < classes) {
                zc[c] = col[c];
                if (c > 0 && zc[c] > m) m = zc[c];
            }
        }
        real s = real(0);
#pragma unroll
        for (int c = 0; c < EXACT_MAX_CLASSES; ++c) {
            if (c < classes) {
                ec[c] = exact_exp(x_sub(zc[c], m));
                s = c == 0 ? ec[0] : x_add(s, ec[c]);
            }
        }
        const int label = labels[j];
        loss += x_sub(x_add(exact_log(s), m), col[label]);
#pragma unroll
        for (int c = 0; c < EXACT_MAX_CLASSES; ++c) {
            if (c < classes) {
                const real y = (label == c) ? real(1) : real(0);
                diff[(size_t)j * classes + c] = x_mul(scale, x_sub(x_div(ec[c], s), y));
            }
        }
    }
    const real total = block_sum(loss);
    if (threadIdx.x == 0) nll_acc[0] += total;
}

// sgd_step with each product and sum rounded on its own (NumPy's bits).
extern "C" __global__ void exact_sgd_step(real* __restrict__ params, real* __restrict__ grads,
                                          int n, int lo0, int hi0, int lo1, int hi1, real reg,
                                          real neg_lr)
{
    GRID_STRIDE_LOOP(idx, n) {
        real g = grads[idx];
        if ((idx >= lo0 && idx < hi0) || (idx >= lo1 && idx < hi1)) {
            g = x_add(g, x_mul(reg, params[idx]));
            grads[idx] = g;
        }
        params[idx] = x_add(params[idx], x_mul(neg_lr, g));
    }
}

#endif  // DPMLP_EXACT_CUH
