"""The bench's peers: the same MLP, the same initial parameters and the same batches, written
with other frameworks, timed beside the training rows on the same machine.

    cupy.matmul (cuBLAS)      the step in CuPy's own ops (mlp_epoch)
    pytorch eager             PyTorch: addmm with the bias in the GEMM, in-place updates
    pytorch cuda graph        the same step, the whole epoch captured as one CUDA graph
    torch.compile cuda graph  the step compiled by Inductor (default mode), the epoch of compiled
                              steps captured as one CUDA graph
    jax jit epoch             the whole epoch one jax.jit: lax.fori_loop over the full batches,
                              the last partial batch once more inside the same jit

Each factory takes (dtype, x, y, hidden, batch) -- x the 784 x N column batch, y the labels --
and returns a PeerEpoch; it raises PeerUnavailable (an ImportError) where its library is absent
or has no CUDA. FP32 is IEEE FP32 everywhere (TF32 off, JAX's matmul precision "highest"), so
the peers do the work our float32 rows do. The heavy imports are inside the functions.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np

from core.model import CLASSES, init_params

#: the bench's TrainConfig (core/bench.py bench_training)
LR, REG = 0.1, 1e-4


class PeerUnavailable(ImportError):
    """A peer's library is absent or has no CUDA here: its rows are skipped with a note."""


@dataclass
class PeerEpoch:
    """One peer at one shape: ``run()`` trains one epoch and returns synchronised; ``params()``
    the parameters on the host, as the bench holds them: W1 (H x 784), b1 (H x 1), W2 (10 x H),
    b2 (10 x 1)."""

    run: Callable[[], None]
    params: Callable[[], list[np.ndarray]]


def host_params(hidden: int, dtype) -> list[np.ndarray]:
    """The bench's initial parameters (init_params seed 0; biases zero) as column-bias arrays."""
    p = init_params(hidden, 0)
    return [p["W1"].astype(dtype), np.zeros((hidden, 1), dtype), p["W2"].astype(dtype),
            np.zeros((CLASSES, 1), dtype)]


def one_hot(y, dtype) -> np.ndarray:
    """The 10 x N one-hot targets of labels ``y``."""
    return np.eye(CLASSES, dtype=dtype)[:, y]


def mlp_epoch(ops, X, Y1h, params, batch, lr=LR, reg=REG):
    """An epoch of the same MLP step, written with a framework's own matmul and element-wise ops.
    ``ops``: mm, exp, sum(t, axis) and max(t, axis) keeping dims, and sync. The reference every
    peer's math follows (tests/test_bench_peers.py checks them against it)."""
    W1, b1, W2, b2 = params
    mm, exp, tsum, tmax = ops["mm"], ops["exp"], ops["sum"], ops["max"]

    def epoch(sync=True):
        for s in range(0, X.shape[1], batch):
            x, y = X[:, s:s + batch], Y1h[:, s:s + batch]
            a1 = 1 / (1 + exp(-(mm(W1, x) + b1)))
            z2 = mm(W2, a1) + b2
            e = exp(z2 - tmax(z2, 0))
            diff = (e / tsum(e, 0) - y) / x.shape[1]
            dz1 = mm(W2.T, diff) * a1 * (1 - a1)
            W2[...] -= lr * (mm(diff, a1.T) + reg * W2)  # [...]: update the closed-over arrays
            b2[...] -= lr * tsum(diff, 1)
            W1[...] -= lr * (mm(dz1, x.T) + reg * W1)
            b1[...] -= lr * tsum(dz1, 1)
        if sync:
            ops["sync"]()
    return epoch


# ---------------------------------------------------------------------------- CuPy
def cupy_epoch(dtype, x, y, hidden, batch) -> PeerEpoch:
    import cupy as cp

    try:
        cp.cuda.runtime.getDeviceCount()
    except Exception as exc:  # noqa: BLE001 - no driver, no device: CuPy without a GPU
        raise PeerUnavailable(f"CuPy finds no GPU ({type(exc).__name__}: {exc})") from None
    X = cp.asarray(x, dtype=dtype)
    Y = cp.asarray(one_hot(y, dtype))
    params = [cp.asarray(p) for p in host_params(hidden, dtype)]
    ops = {"mm": cp.matmul, "exp": cp.exp, "sum": lambda t, a: t.sum(a, keepdims=True),
           "max": lambda t, a: t.max(a, keepdims=True), "sync": cp.cuda.Device().synchronize}
    return PeerEpoch(mlp_epoch(ops, X, Y, params, batch), lambda: [cp.asnumpy(p) for p in params])


# ---------------------------------------------------------------------------- PyTorch
def _torch(gpu: bool):
    """torch, with TF32 off for matmuls and cuDNN (FP32 against FP32); PeerUnavailable without
    CUDA where ``gpu``."""
    import torch

    if gpu and not torch.cuda.is_available():
        raise PeerUnavailable("PyTorch has no CUDA here")
    with warnings.catch_warnings():  # PyTorch >= 2.9 warns that these flags will be deprecated
        warnings.simplefilter("ignore")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return torch


def torch_tensors(torch, dtype, x, y, hidden, batch, device):
    """The batches as (x^T, y^T) row blocks (B x 784, B x 10: each batch contiguous, samples as
    rows, so x^T W1^T + b1 puts the bias in the GEMM's epilogue) and [W1, b1, W2, b2] with 1-D
    biases, on ``device``."""
    kw = {"dtype": getattr(torch, dtype), "device": device}
    XT = torch.tensor(np.ascontiguousarray(x.T), **kw)
    YT = torch.tensor(np.ascontiguousarray(one_hot(y, dtype).T), **kw)
    batches = [(XT[s:s + batch], YT[s:s + batch]) for s in range(0, XT.shape[0], batch)]
    W1, b1, W2, b2 = host_params(hidden, dtype)
    params = [torch.tensor(W1, **kw), torch.tensor(b1[:, 0], **kw), torch.tensor(W2, **kw),
              torch.tensor(b2[:, 0], **kw)]
    return batches, params


def _torch_host(params) -> list[np.ndarray]:
    W1, b1, W2, b2 = (p.detach().cpu().numpy() for p in params)
    return [W1, b1[:, None], W2, b2[:, None]]


def torch_inplace_step(torch, params, batch_sizes, lr=LR, reg=REG):
    """step(xT, yT): mlp_epoch's step with the transposed activations (samples as rows), every
    output written in place into buffers allocated once per batch size:
        a1^T = sigmoid(addmm(b1, x^T, W1^T))      (the bias in the GEMM)
        z2^T = addmm(b2, a1^T, W2^T)
        diff^T = (softmax(z2^T) - y^T) / n        (softmax: exp(z - max) / sum, one kernel)
        dz1^T = sigmoid_backward(diff^T W2, a1^T) = da1 (1 - a1) a1
        W <- W - lr (dW + reg W), as W.addmm_(beta = 1 - lr reg, alpha = -lr): one GEMM
        b <- b - lr sum(diff)                     (b.sub_(..., alpha=lr))"""
    W1, b1, W2, b2 = params
    sigmoid_backward = torch.ops.aten.sigmoid_backward.grad_input
    hidden, kw = W1.shape[0], {"dtype": W1.dtype, "device": W1.device}
    buffers = {n: (torch.empty((n, hidden), **kw), torch.empty((n, CLASSES), **kw),
                   torch.empty((n, hidden), **kw)) for n in set(batch_sizes)}
    decay = 1 - lr * reg

    def step(xT, yT):
        n = xT.shape[0]
        a1, z2, dz1 = buffers[n]
        torch.addmm(b1, xT, W1.t(), out=a1).sigmoid_()
        torch.addmm(b2, a1, W2.t(), out=z2)
        diff = torch.softmax(z2, 1).sub_(yT).div_(n)
        torch.mm(diff, W2, out=dz1)
        sigmoid_backward(dz1, a1, grad_input=dz1)
        W2.addmm_(diff.t(), a1, beta=decay, alpha=-lr)
        b2.sub_(diff.sum(0), alpha=lr)
        W1.addmm_(dz1.t(), xT, beta=decay, alpha=-lr)
        b1.sub_(dz1.sum(0), alpha=lr)
    return step


def torch_eager_epoch(dtype, x, y, hidden, batch, gpu=True) -> PeerEpoch:
    torch = _torch(gpu)
    batches, params = torch_tensors(torch, dtype, x, y, hidden, batch, "cuda" if gpu else "cpu")
    step = torch_inplace_step(torch, params, [b[0].shape[0] for b in batches])

    def run():
        for xT, yT in batches:
            step(xT, yT)
        if gpu:
            torch.cuda.synchronize()
    return PeerEpoch(run, lambda: _torch_host(params))


def _graph_of_epoch(torch, step, batches):
    """run(): the epoch of ``step`` over ``batches`` captured as one CUDA graph and replayed;
    warmed up first on a side stream, as PyTorch asks (and where torch.compile compiles)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for xT, yT in batches:
            step(xT, yT)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for xT, yT in batches:
            step(xT, yT)

    def run():
        graph.replay()
        torch.cuda.synchronize()
    return run


def torch_graph_epoch(dtype, x, y, hidden, batch) -> PeerEpoch:
    """The in-place step with the whole epoch captured as one CUDA graph: PyTorch's own answer
    to launch overhead."""
    torch = _torch(True)
    batches, params = torch_tensors(torch, dtype, x, y, hidden, batch, "cuda")
    step = torch_inplace_step(torch, params, [b[0].shape[0] for b in batches])
    return PeerEpoch(_graph_of_epoch(torch, step, batches), lambda: _torch_host(params))


def torch_compiled_step(torch, params, lr=LR, reg=REG):
    """step(xT, yT): mlp_epoch's step (transposed activations, in-place parameter updates) as
    one torch.compile'd function (Inductor, default mode; static shapes: the full and the last
    batch are one compilation each), the parameters its mutated inputs."""
    def train_step(W1, b1, W2, b2, xT, yT):
        a1 = torch.sigmoid(torch.addmm(b1, xT, W1.t()))
        z2 = torch.addmm(b2, a1, W2.t())
        e = torch.exp(z2 - z2.amax(1, keepdim=True))
        diff = (e / e.sum(1, keepdim=True) - yT) / xT.shape[0]
        dz1 = (diff @ W2) * a1 * (1 - a1)
        W2.sub_(lr * (diff.t() @ a1 + reg * W2))
        b2.sub_(lr * diff.sum(0))
        W1.sub_(lr * (dz1.t() @ xT + reg * W1))
        b1.sub_(lr * dz1.sum(0))

    # Dynamo caches compilations by code object, and every shape of the bench compiles this one
    # twice: past its recompile limit it would run the step eagerly without a word. The earlier
    # shapes' compilations are of no further use, so each shape starts afresh.
    torch.compiler.reset()
    compiled = torch.compile(train_step, dynamic=False)
    return lambda xT, yT: compiled(*params, xT, yT)


def torch_compile_graph_epoch(dtype, x, y, hidden, batch, gpu=True) -> PeerEpoch:
    """The compiled step, its epoch captured as one CUDA graph (gpu; eager loop of compiled
    steps on the CPU, for the tests). Each batch is its own tensor (a copy), so that no batch is
    a view at another offset: compiled code sees the same input every step."""
    torch = _torch(gpu)
    views, params = torch_tensors(torch, dtype, x, y, hidden, batch, "cuda" if gpu else "cpu")
    batches = [(xT.clone(), yT.clone()) for xT, yT in views]
    step = torch_compiled_step(torch, params)
    if gpu:
        return PeerEpoch(_graph_of_epoch(torch, step, batches), lambda: _torch_host(params))

    def run():
        for xT, yT in batches:
            step(xT, yT)
    return PeerEpoch(run, lambda: _torch_host(params))


# ---------------------------------------------------------------------------- JAX
def jax_epoch_function(jnp, lax, samples, batch, lr=LR, reg=REG):
    """epoch(params, XT, YT) -> params: mlp_epoch's epoch as a pure function of the parameters
    (W1, b1 H x 1, W2, b2 10 x 1) and the samples as rows (XT N x 784, YT N x 10): lax.fori_loop
    over the full batches, then the last partial batch, if any, once more (static shapes, no
    padding: the same batches and the same 1/n as mlp_epoch)."""
    def step(params, x, y):  # x: 784 x n, y: 10 x n
        W1, b1, W2, b2 = params
        a1 = 1 / (1 + jnp.exp(-(W1 @ x + b1)))
        z2 = W2 @ a1 + b2
        e = jnp.exp(z2 - z2.max(0, keepdims=True))
        diff = (e / e.sum(0, keepdims=True) - y) / x.shape[1]
        dz1 = (W2.T @ diff) * a1 * (1 - a1)
        return (W1 - lr * (dz1 @ x.T + reg * W1), b1 - lr * dz1.sum(1, keepdims=True),
                W2 - lr * (diff @ a1.T + reg * W2), b2 - lr * diff.sum(1, keepdims=True))

    full = samples // batch

    def epoch(params, XT, YT):
        def body(i, p):
            rows = (lax.dynamic_slice_in_dim(t, i * batch, batch, axis=0) for t in (XT, YT))
            return step(p, *(r.T for r in rows))
        params = lax.fori_loop(0, full, body, params)
        if samples % batch:
            params = step(params, XT[full * batch:].T, YT[full * batch:].T)
        return params
    return epoch


def jax_jit_epoch(dtype, x, y, hidden, batch, gpu=True) -> PeerEpoch:
    """The whole epoch one jax.jit (compiled ahead here, the parameters donated on the GPU),
    matmuls at precision "highest" (IEEE FP32, no TF32); float64 turns on jax_enable_x64."""
    # JAX would otherwise take 75% of the GPU's memory at its first use, starving the rows after
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax
    import jax.numpy as jnp
    from jax import lax

    jax.config.update("jax_default_matmul_precision", "highest")
    if dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    if gpu and jax.default_backend() != "gpu":
        raise PeerUnavailable(f"JAX has no CUDA here (backend {jax.default_backend()})")
    XT = jnp.asarray(np.ascontiguousarray(x.T, dtype=dtype))
    YT = jnp.asarray(np.ascontiguousarray(one_hot(y, dtype).T))
    state = [tuple(jnp.asarray(p) for p in host_params(hidden, dtype))]
    epoch = jax.jit(jax_epoch_function(jnp, lax, XT.shape[0], batch),
                    donate_argnums=(0,) if gpu else ())
    compiled = epoch.lower(state[0], XT, YT).compile()

    def run():
        state[0] = jax.block_until_ready(compiled(state[0], XT, YT))
    return PeerEpoch(run, lambda: [np.asarray(p) for p in state[0]])


#: (row name, factory), in the order the rows print
PEERS = (("cupy.matmul (cuBLAS)", cupy_epoch), ("pytorch eager", torch_eager_epoch),
         ("pytorch cuda graph", torch_graph_epoch),
         ("torch.compile cuda graph", torch_compile_graph_epoch),
         ("jax jit epoch", jax_jit_epoch))
