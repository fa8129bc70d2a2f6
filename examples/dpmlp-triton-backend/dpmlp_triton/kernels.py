"""The Triton kernels of the example backend (imported by TritonBackend.__init__, never at plugin
import: importing triton is heavy and needs it installed).

Every matrix is addressed through (row stride, column stride), so one kernel serves column-major
arrays and their transposes: a column-major (rows, cols) matrix has strides (1, rows); op(A) = A^T
is the same memory with the strides swapped. Offsets are 32-bit (Triton's default), hence
``TritonBackend.max_elements``.

Two rules of the device contract (core/ops.py) shape this file:

* Precision (``--gemm simt`` is IEEE): ``tl.dot`` on float32 defaults to TF32 on tensor cores, so
  every float32 dot asks for ``input_precision="ieee"``; float64 products are written as a
  broadcast multiply and a sum (FMA), which needs no tensor-core support for FP64.
* Capture: Triton compiles a kernel on its first launch for each specialisation. Integers are
  specialised on their value (1, divisible by 16) and pointers on their alignment by default, so a
  minibatch slice at another offset could compile a new variant inside a CUDA-graph capture. The
  ``kernel`` decorator below turns both off: one compilation per kernel, dtype and block sizes,
  all of which the trainer's eager warm-up reaches before it captures.

Scalars that must keep float64 precision (alpha, beta, scales) are annotated ``tl.float64`` (a
plain Python float would be passed as float32) and enter the arithmetic through
``tl.full(shape, value, dtype)``, which converts once to the array dtype in compiled kernels and
in the interpreter alike (the interpreter passes Python floats through, and a cast of one goes
through float32). Reductions are in a fixed order (no atomics):
reruns and graph replays give the same bits.
"""

import inspect

import triton
import triton.language as tl


def kernel(fn):
    """triton.jit, without value specialisation of integers or alignment specialisation of
    pointers (see the module docstring: no new compilation inside a capture)."""
    params = inspect.signature(fn).parameters
    pointers = [p for p in params if p.endswith("_ptr")]
    integers = [p for p, v in params.items() if not p.endswith("_ptr")
                and v.annotation is inspect.Parameter.empty]
    return triton.jit(fn, do_not_specialize=integers, do_not_specialize_on_alignment=pointers)


# ---------------------------------------------------------------------------- GEMM
@kernel
def gemm_kernel(a_ptr, b_ptr, c_ptr, bias_ptr, act_ptr, M, N, K, sam, sak, sbk, sbn, scm, scn,
                alpha: tl.float64, beta: tl.float64,
                EPILOGUE: tl.constexpr, BETA_ZERO: tl.constexpr, IEEE_DOT: tl.constexpr,
                BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """C = epilogue(alpha op(A) op(B) + beta C) on a BM x BN tile; EPILOGUE 0: none, 1:
    sigmoid(. + bias[m]) (gemm_bias_sigmoid), 2: (.) act (1 - act) (gemm_sigmoid_backward; act
    has C's strides). BETA_ZERO: the old C is never read."""
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    dtype = c_ptr.dtype.element_ty
    acc = tl.zeros((BM, BN), dtype=dtype)
    for k0 in range(0, K, BK):
        ks = k0 + rk
        a = tl.load(a_ptr + rm[:, None] * sam + ks[None, :] * sak,
                    mask=(rm[:, None] < M) & (ks[None, :] < K), other=0.0)
        b = tl.load(b_ptr + ks[:, None] * sbk + rn[None, :] * sbn,
                    mask=(ks[:, None] < K) & (rn[None, :] < N), other=0.0)
        if IEEE_DOT:
            acc += tl.dot(a, b, input_precision="ieee")
        else:
            acc += tl.sum(a[:, :, None] * b[None, :, :], axis=1)
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    c_offs = rm[:, None] * scm + rn[None, :] * scn
    out = acc * tl.full((BM, BN), alpha, dtype)
    if not BETA_ZERO:
        out += tl.full((BM, BN), beta, dtype) * tl.load(c_ptr + c_offs, mask=mask, other=0.0)
    if EPILOGUE == 1:
        bias = tl.load(bias_ptr + rm, mask=rm < M, other=0.0)
        out = 1.0 / (1.0 + tl.exp(-(out + bias[:, None])))
    if EPILOGUE == 2:
        act = tl.load(act_ptr + c_offs, mask=mask, other=0.0)
        out = out * act * (1.0 - act)
    tl.store(c_ptr + c_offs, out.to(dtype), mask=mask)


# ---------------------------------------------------------------------------- element-wise
@kernel
def bias_sigmoid_kernel(z_ptr, bias_ptr, out_ptr, n, rows, SIGMOID: tl.constexpr,
                        BLOCK: tl.constexpr):
    """out = z + bias[row] (add_bias, out = z), or its sigmoid (bias_sigmoid)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    z = tl.load(z_ptr + offs, mask=mask) + tl.load(bias_ptr + offs % rows, mask=mask)
    if SIGMOID:
        z = 1.0 / (1.0 + tl.exp(-z))
    tl.store(out_ptr + offs, z, mask=mask)


@kernel
def sigmoid_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask)
    tl.store(out_ptr + offs, 1.0 / (1.0 + tl.exp(-x)), mask=mask)


@kernel
def sigmoid_backward_kernel(g_ptr, a_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    g = tl.load(g_ptr + offs, mask=mask)
    a = tl.load(a_ptr + offs, mask=mask)
    tl.store(out_ptr + offs, g * a * (1.0 - a), mask=mask)


@kernel
def axpy_kernel(x_ptr, y_ptr, n, alpha: tl.float64, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    y = tl.load(y_ptr + offs, mask=mask)
    x = tl.load(x_ptr + offs, mask=mask)
    tl.store(y_ptr + offs, y + tl.full((BLOCK,), alpha, y.dtype) * x, mask=mask)


@kernel
def xent_backward_kernel(yhat_ptr, labels_ptr, out_ptr, n, rows, scale: tl.float64,
                         BLOCK: tl.constexpr):
    """out = scale (yhat - onehot(labels)), element by element of a column-major matrix."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    yhat = tl.load(yhat_ptr + offs, mask=mask)
    label = tl.load(labels_ptr + offs // rows, mask=mask)
    y = tl.where(offs % rows == label, 1.0, 0.0).to(yhat.dtype)
    tl.store(out_ptr + offs, tl.full((BLOCK,), scale, yhat.dtype) * (yhat - y), mask=mask)


# ---------------------------------------------------------------------------- reductions
@kernel
def softmax_kernel(x_ptr, out_ptr, length, s_elem, s_line, BLOCK: tl.constexpr):
    """Stable softmax of one line (a column for axis 0, a row for axis 1) per program."""
    base = tl.program_id(0) * s_line
    idx = tl.arange(0, BLOCK)
    dtype = out_ptr.dtype.element_ty
    m = tl.full((BLOCK,), float("-inf"), dtype)
    for start in range(0, length, BLOCK):
        i = start + idx
        m = tl.maximum(m, tl.load(x_ptr + base + i * s_elem, mask=i < length, other=float("-inf")))
    top = tl.max(m, axis=0)
    s = tl.zeros((BLOCK,), dtype)
    for start in range(0, length, BLOCK):
        i = start + idx
        x = tl.load(x_ptr + base + i * s_elem, mask=i < length, other=float("-inf"))
        s += tl.where(i < length, tl.exp(x - top), 0.0)
    total = tl.sum(s, axis=0)
    for start in range(0, length, BLOCK):
        i = start + idx
        x = tl.load(x_ptr + base + i * s_elem, mask=i < length, other=0.0)
        tl.store(out_ptr + base + i * s_elem, tl.exp(x - top) / total, mask=i < length)


@kernel
def reduce_cols_kernel(x_ptr, out_ptr, rows, cols, ld, alpha: tl.float64,
                       BR: tl.constexpr, BC: tl.constexpr):
    """out_i = alpha sum_j x_ij for a block of BR rows, the columns in blocks of BC in order."""
    r = tl.program_id(0) * BR + tl.arange(0, BR)
    c = tl.arange(0, BC)
    dtype = out_ptr.dtype.element_ty
    acc = tl.zeros((BR, BC), dtype)
    for start in range(0, cols, BC):
        cc = start + c
        acc += tl.load(x_ptr + r[:, None] + cc[None, :] * ld,
                       mask=(r[:, None] < rows) & (cc[None, :] < cols), other=0.0)
    tl.store(out_ptr + r, tl.full((BR,), alpha, dtype) * tl.sum(acc, axis=1), mask=r < rows)


@kernel
def nll_sum_kernel(yhat_ptr, labels_ptr, acc_ptr, cols, ld, BLOCK: tl.constexpr):
    """acc[0] += sum_j -log(yhat[labels[j], j]): one program, the columns in order of blocks."""
    c = tl.arange(0, BLOCK)
    dtype = acc_ptr.dtype.element_ty
    s = tl.zeros((BLOCK,), dtype)
    for start in range(0, cols, BLOCK):
        cc = start + c
        label = tl.load(labels_ptr + cc, mask=cc < cols, other=0)
        p = tl.load(yhat_ptr + label + cc * ld, mask=cc < cols, other=1.0)
        s += -tl.log(p)
    tl.store(acc_ptr, tl.load(acc_ptr) + tl.sum(s, axis=0))


@kernel
def count_correct_kernel(scores_ptr, labels_ptr, acc_ptr, rows, cols, ld, BLOCK: tl.constexpr):
    """acc[0] += #columns whose first maximum is at their label: one program."""
    c = tl.arange(0, BLOCK)
    dtype = acc_ptr.dtype.element_ty
    total = tl.zeros((BLOCK,), dtype)
    for start in range(0, cols, BLOCK):
        cc = start + c
        live = cc < cols
        best = tl.load(scores_ptr + cc * ld, mask=live, other=0.0)
        arg = tl.zeros((BLOCK,), tl.int32)
        for r in range(1, rows):
            v = tl.load(scores_ptr + r + cc * ld, mask=live, other=0.0)
            better = v > best  # strictly: the first maximum stays
            best = tl.where(better, v, best)
            arg = tl.where(better, r, arg)
        label = tl.load(labels_ptr + cc, mask=live, other=-1)
        total += tl.where(live & (arg == label), 1.0, 0.0).to(dtype)
    tl.store(acc_ptr, tl.load(acc_ptr) + tl.sum(total, axis=0))


@kernel
def sum_squares_kernel(x_ptr, partial_ptr, n, chunk, BLOCK: tl.constexpr):
    """partial[p] = sum of x^2 over elements [p chunk, (p + 1) chunk), in float64."""
    pid = tl.program_id(0)
    idx = tl.arange(0, BLOCK)
    acc = tl.zeros((BLOCK,), tl.float64)
    for start in range(0, chunk, BLOCK):
        j = start + idx
        i = pid * chunk + j
        x = tl.load(x_ptr + i, mask=(i < n) & (j < chunk), other=0.0).to(tl.float64)
        acc += x * x
    tl.store(partial_ptr + pid, tl.sum(acc, axis=0))


# ---------------------------------------------------------------------------- output layer
@kernel
def output_layer_kernel(w2_ptr, b2_ptr, a1_ptr, labels_ptr, diff_ptr, partial_ptr, classes,
                        hidden, n, ld_w2, ld_a1, ld_diff, iters, scale: tl.float64,
                        IEEE_DOT: tl.constexpr, CP: tl.constexpr, BN: tl.constexpr,
                        BK: tl.constexpr):
    """The fused output layer (core.ops.Backend.output_layer) with the log-sum-exp loss: program
    p computes the column blocks p, p + P, ..., (iters of them, P programs) of z = w2 a1 + b2,
    writes diff and stores the loss of its columns in partial[p] (summed in order by a second
    launch: deterministic)."""
    pid, programs = tl.program_id(0), tl.num_programs(0)
    rc = tl.arange(0, CP)
    rk = tl.arange(0, BK)
    dtype = diff_ptr.dtype.element_ty
    loss = tl.zeros((BN,), dtype)
    bias = tl.load(b2_ptr + rc, mask=rc < classes, other=0.0)
    for it in range(0, iters):  # a block past the last column is all masked
        cn = (pid + it * programs) * BN + tl.arange(0, BN)
        z = tl.zeros((CP, BN), dtype)
        for k0 in range(0, hidden, BK):
            ks = k0 + rk
            w = tl.load(w2_ptr + rc[:, None] + ks[None, :] * ld_w2,
                        mask=(rc[:, None] < classes) & (ks[None, :] < hidden), other=0.0)
            a = tl.load(a1_ptr + ks[:, None] + cn[None, :] * ld_a1,
                        mask=(ks[:, None] < hidden) & (cn[None, :] < n), other=0.0)
            if IEEE_DOT:
                z += tl.dot(w, a, input_precision="ieee")
            else:
                z += tl.sum(w[:, :, None] * a[None, :, :], axis=1)
        z = z + bias[:, None]
        valid = rc[:, None] < classes
        z = tl.where(valid, z, float("-inf"))
        m = tl.max(z, axis=0)
        e = tl.where(valid, tl.exp(z - m[None, :]), 0.0)
        s = tl.sum(e, axis=0)
        label = tl.load(labels_ptr + cn, mask=cn < n, other=0)
        onehot = rc[:, None] == label[None, :]
        diff = tl.full((CP, BN), scale, dtype) * (e / s[None, :] - tl.where(onehot, 1.0, 0.0).to(dtype))
        tl.store(diff_ptr + rc[:, None] + cn[None, :] * ld_diff, diff,
                 mask=valid & (cn[None, :] < n))
        z_label = tl.sum(tl.where(onehot & valid, z, 0.0), axis=0)
        loss += tl.where(cn < n, tl.log(s) + m - z_label, 0.0)
    tl.store(partial_ptr + pid, tl.sum(loss, axis=0))


@kernel
def add_partials_kernel(partial_ptr, acc_ptr, count, BLOCK: tl.constexpr):
    """acc[0] += partial[0] + ... + partial[count - 1], in one fixed order (one program)."""
    idx = tl.arange(0, BLOCK)
    dtype = acc_ptr.dtype.element_ty
    s = tl.zeros((BLOCK,), dtype)
    for start in range(0, count, BLOCK):
        i = start + idx
        s += tl.load(partial_ptr + i, mask=i < count, other=0.0).to(dtype)
    tl.store(acc_ptr, tl.load(acc_ptr) + tl.sum(s, axis=0))
