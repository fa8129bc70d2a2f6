"""NumPy reference backend: slow, obviously correct, the yardstick for every other backend.

Every op is the formula from core/ops.py written directly in NumPy, with no cleverness. Arrays are
column-major ``numpy.ndarray``s.
"""

from __future__ import annotations

import numpy as np

from core import exact_math
from core.hookspecs import hookimpl
from core.ops import Backend


class NumpyBackend(Backend):
    name = "numpy"
    description = "CPU reference (NumPy), float32 and float64"
    host_resident = True
    priority = 0

    # ----------------------------------------------------------------- memory and transfers
    def empty(self, shape, dtype=None):
        return np.empty(tuple(shape), dtype=dtype or self.dtype, order="F")

    def from_host(self, host):
        host = np.asarray(host)
        dtype = np.int32 if np.issubdtype(host.dtype, np.integer) else self.dtype
        return np.asfortranarray(host, dtype=dtype).copy(order="F")

    def to_host(self, arr):
        return np.array(arr, order="F", copy=True)

    def copy_to_host(self, arr, host):
        host[...] = arr

    def copy_from_host(self, host, arr):
        arr[...] = host

    def flat_views(self, flat, shapes):
        views, offset = [], 0
        for shape in shapes:
            size = int(np.prod(shape))
            views.append(flat[offset:offset + size].reshape(tuple(shape), order="F"))
            offset += size
        return views

    def cols(self, arr, start, stop):
        return arr[start:stop] if arr.ndim == 1 else arr[:, start:stop]

    # ----------------------------------------------------------------- math
    def fill(self, arr, value):
        arr[...] = value

    def gemm(self, a, b, c, alpha=1.0, beta=0.0, trans_a=False, trans_b=False):
        op_a = a.T if trans_a else a
        op_b = b.T if trans_b else b
        product = alpha * (op_a @ op_b)
        if beta == 0.0:
            c[...] = product  # the old C is never read: it may hold NaN
        else:
            c[...] = product + beta * c

    def bias_sigmoid(self, z, bias, out):
        out[...] = 1.0 / (1.0 + np.exp(-(z + bias[:, None])))

    def add_bias(self, z, bias):
        z += bias[:, None]

    def sigmoid(self, x, out):
        out[...] = 1.0 / (1.0 + np.exp(-x))

    def softmax(self, x, out, axis=0):
        if x.size == 0:
            return
        shifted = np.exp(x - x.max(axis=axis, keepdims=True))
        out[...] = shifted / shifted.sum(axis=axis, keepdims=True)

    def sigmoid_backward(self, grad, a, out):
        out[...] = grad * a * (1.0 - a)

    def reduce_cols(self, x, out, alpha=1.0):
        out[...] = alpha * x.sum(axis=1)

    def softmax_xent_backward(self, yhat, labels, scale, out):
        onehot = np.zeros_like(yhat)
        onehot[labels, np.arange(labels.size)] = 1.0
        out[...] = scale * (yhat - onehot)

    def axpy(self, alpha, x, y):
        y += alpha * x

    def sgd_step(self, params, grads, lr, reg=0.0, reg_ranges=()):
        p, g = params.reshape(-1, order="F"), grads.reshape(-1, order="F")  # views
        if reg:
            for lo, hi in reg_ranges:
                g[lo:hi] += reg * p[lo:hi]
        p += -lr * g

    def gemm_bias_sigmoid(self, a, b, bias, out):
        out[...] = 1.0 / (1.0 + np.exp(-(a @ b + bias[:, None])))

    def gemm_sigmoid_backward(self, a, b, act, out):
        out[...] = (a.T @ b) * act * (1.0 - act)

    def gemm_with_bias_grad(self, a, b, out):
        n = b.shape[0]
        out[:, :n] = a @ b.T
        out[:, n] = a.sum(axis=1)

    def output_layer(self, w2, b2, a1, labels, scale, diff, nll_acc):
        n = a1.shape[1]
        if n == 0:
            return
        cols = np.arange(n)
        z = w2 @ a1 + b2[:, None]
        m = z.max(axis=0)
        e = np.exp(z - m)
        s = e.sum(axis=0)
        onehot = np.zeros_like(z)
        onehot[labels, cols] = 1.0
        diff[...] = scale * (e / s - onehot)
        nll_acc[0] += (np.log(s) + m - z[labels, cols]).sum()

    def nll_sum(self, yhat, labels, acc):
        acc[0] += -np.log(yhat[labels, np.arange(labels.size)]).sum()

    def count_correct(self, scores, labels, acc):
        if labels.size:
            acc[0] += np.count_nonzero(scores.argmax(axis=0) == labels)

    # ----------------------------------------------------------------- exact ops (EXACT_OPS)
    def exact_row_exponents(self, x, trans, out):
        rows = x.T if trans else x
        if rows.shape[1] == 0:  # rows of no elements: the grid of zeros
            out[...] = 0.0
            return
        big = np.abs(rows).max(axis=1)
        with np.errstate(invalid="ignore"):
            out[...] = np.frexp(np.where(np.isfinite(big), big, 0.0))[1]

    def exact_split(self, x, trans, ones_row, ones_col, exps, exp_shift, beta, slices, reverse,
                    out, flag):
        rows = x.T if trans else x
        p0, q0 = rows.shape
        p, q = p0 + bool(ones_row), q0 + bool(ones_col)
        if p == 0 or q == 0:
            return
        e = -(exps.astype(np.int64) + int(exp_shift))
        r = np.empty((p, q), order="F")
        with np.errstate(invalid="ignore", over="ignore"):
            if e.min() >= -1022 and e.max() <= 1022:
                # times 2^-e_i, a normal power of two: the bits of ldexp (both exact, or both
                # correctly rounded into the subnormals), in one pass
                np.multiply(rows, np.ldexp(1.0, e[:p0])[:, None], out=r[:p0, :q0])
            else:
                r[:p0, :q0] = np.ldexp(rows, e[:p0, None])
            if ones_row:
                r[p0, :] = np.ldexp(1.0, int(e[p0]))
            if ones_col:
                r[:, q0] = np.ldexp(np.ones(p), e)
            if not np.max(np.abs(r)) <= 1.0:  # also for nan
                flag[0] = 1.0
            scale = 2.0 ** beta  # scaling by a power of two: exact, as ldexp(r, beta)
            for s in range(slices):
                b = slices - 1 - s if reverse else s
                digit = out[:, b * q:(b + 1) * q]
                np.multiply(r, scale, out=r)
                np.rint(r, out=digit)
                np.subtract(r, digit, out=r)

    def exact_combine(self, groups, row_exps, row_shift, col_exps, col_shift, beta, out):
        m, n = out.shape
        if out.size == 0:
            return
        count = groups.shape[1] // n
        acc = groups[:, (count - 1) * n:count * n].copy()
        down = 2.0 ** -beta  # exact: acc is far above the subnormals
        for g in range(count - 2, -1, -1):
            np.multiply(acc, down, out=acc)
            np.add(groups[:, g * n:(g + 1) * n], acc, out=acc)
        e = ((row_exps.astype(np.int32) + np.int32(row_shift - 2 * beta))[:, None]
             + (col_exps.astype(np.int32) + np.int32(col_shift))[None, :])
        np.ldexp(acc, e, out=out)

    def exact_sigmoid(self, x, out):
        out[...] = exact_math.sigmoid(x)

    def exact_sigmoid_backward(self, grad, a, out):
        self.sigmoid_backward(grad, a, out)  # (grad a)(1 - a), each operation rounded on its own

    def exact_output_layer(self, z, labels, scale, diff, nll_acc):
        classes, n = z.shape
        if n == 0:
            return
        cols = np.arange(n)
        m = z[0].copy()
        for c in range(1, classes):
            m = np.where(z[c] > m, z[c], m)
        e = [exact_math.exp(z[c] - m) for c in range(classes)]
        s = e[0]
        for c in range(1, classes):
            s = s + e[c]
        loss = (exact_math.log(s) + m) - z[labels, cols]
        for c in range(classes):
            diff[c] = scale * (e[c] / s - (labels == c))
        nll_acc[0] += loss.sum()

    def exact_sgd_step(self, params, grads, lr, reg=0.0, reg_ranges=()):
        self.sgd_step(params, grads, lr, reg, reg_ranges)  # NumPy never fuses a multiply-add

    def sum_squares(self, x):
        return float(np.sum(x * x))


@hookimpl
def register_backends(register):
    register(NumpyBackend)
