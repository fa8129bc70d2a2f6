"""Deliberately wrong backends, a dpmlp plugin for tests/test_verify.py (not a test module).

Each is the NumPy backend with one small, realistic bug; lockstep ``--verify`` must catch every one
at the first step and name what is wrong. ``DPMLP_TEST_OFF`` sets the relative size of the
perturbation where there is one. Registered through an entry point written by the test (a
``*.dist-info`` on PYTHONPATH), so they reach a CLI subprocess or an mpirun job like any plugin.
"""

from __future__ import annotations

import os

import numpy as np

from backends.ops_numpy import NumpyBackend
from core.hookspecs import hookimpl
from core.ops import FUSED_OPS, Backend


def _off() -> float:
    return float(os.environ.get("DPMLP_TEST_OFF", "1e-9"))


class _ThroughContractOps(NumpyBackend):
    """The NumPy backend with every fused op computed by core.ops' default from the contract ops,
    so that a bug planted in one contract op shows wherever the model's fused ops use it."""


for _fused in FUSED_OPS:
    setattr(_ThroughContractOps, _fused, getattr(Backend, _fused))


class OffSigmoidBackward(_ThroughContractOps):
    """sigmoid_backward right everywhere but in its largest element, off by DPMLP_TEST_OFF."""

    name = "wrong-sigmoid-backward"

    def sigmoid_backward(self, grad, a, out):
        super().sigmoid_backward(grad, a, out)
        if out.size:
            i = np.unravel_index(np.argmax(np.abs(out)), out.shape)
            out[i] *= 1.0 + _off()


class DropLastK(_ThroughContractOps):
    """gemm that forgets the last term of every inner product (a classic tail-loop bug)."""

    name = "wrong-gemm-drops-last-k"

    def gemm(self, a, b, c, alpha=1.0, beta=0.0, trans_a=False, trans_b=False):
        op_a = a.T if trans_a else a
        op_b = b.T if trans_b else b
        k = max(op_a.shape[1] - 1, 0)
        product = alpha * (op_a[:, :k] @ op_b[:k, :])
        c[...] = product if beta == 0.0 else product + beta * c


class NudgedGradient(NumpyBackend):
    """The SGD step (the fused sgd_step over the whole flat buffer) scales the gradient's largest
    element by 1 + DPMLP_TEST_OFF once the reg term is in: one element of the summed gradient
    off, by a chosen relative amount."""

    name = "nudged-gradient"

    def sgd_step(self, params, grads, lr, reg=0.0, reg_ranges=()):
        p, g = params.reshape(-1, order="F"), grads.reshape(-1, order="F")
        if reg:
            for lo, hi in reg_ranges:
                g[lo:hi] += reg * p[lo:hi]
        i = int(np.argmax(np.abs(g)))
        g[i] *= 1.0 + _off()
        p += -lr * g


class OffLearningRate(NumpyBackend):
    """Right gradients, but the SGD step uses the learning rate times 1 + DPMLP_TEST_OFF: only
    the updated parameters are wrong, so a check of the gradients alone passes it."""

    name = "wrong-sgd-learning-rate"

    def sgd_step(self, params, grads, lr, reg=0.0, reg_ranges=()):
        super().sgd_step(params, grads, lr * (1.0 + _off()), reg, reg_ranges)


@hookimpl
def register_backends(register):
    for cls in (OffSigmoidBackward, DropLastK, NudgedGradient, OffLearningRate):
        register(cls)
