"""The two-layer MLP of docs/spec.md ("Model" to "SGD"), written once over the ops contract
(core/ops.py).

    z1 = W1 x + b1,  a1 = sigmoid(z1),  z2 = W2 a1 + b2,  yhat = softmax(z2)
    diff = (yhat - y) / N_b        (N_b: the GLOBAL size of this minibatch)
    loss sum += log sum_i exp(z2_i) - z2_label     (from the logits: finite where -log yhat is not)
    dW2 = diff a1^T   db2 = sum_j diff      da1 = W2^T diff   dz1 = da1 * a1 * (1 - a1)
    dW1 = dz1 x^T     db1 = sum_j dz1
    after the sum over ranks:  dW += reg W  (once)    then  p <- p - lr dp

Parameters and gradients each live in ONE flat buffer (W1, b1, W2, b2 back to back), so the gradient
exchange is a single allreduce and the SGD step a single axpy. All work buffers are allocated here,
once, for the largest per-rank slice; the training step allocates nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from core.ops import Backend

INPUTS = 784
CLASSES = 10
PARAM_NAMES = ("W1", "b1", "W2", "b2")


@dataclass(frozen=True)
class Param:
    """One parameter's place in the flat buffer."""

    name: str
    shape: tuple[int, ...]
    offset: int

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class GemmShape:
    """One GEMM of a training step on n samples: C (m x n) = op(A) (m x k) op(B) (k x n)."""

    name: str
    m: int
    n: int
    k: int
    trans_a: bool
    trans_b: bool


@dataclass(frozen=True)
class ParamLayout:
    """The one description of the parameters: names, shapes and offsets in the flat buffer
    (W1, b1, W2, b2 back to back, each column-major). Everything derived from the parameters'
    shapes (sizes, the output layer's offset, the step's GEMM shapes) is derived from this."""

    hidden: int

    @property
    def params(self) -> tuple[Param, ...]:
        shapes = ((self.hidden, INPUTS), (self.hidden,), (CLASSES, self.hidden), (CLASSES,))
        offsets = np.cumsum([0] + [math.prod(s) for s in shapes[:-1]])
        return tuple(Param(n, s, int(o)) for n, s, o in zip(PARAM_NAMES, shapes, offsets))

    def __getitem__(self, name: str) -> Param:
        return next(p for p in self.params if p.name == name)

    @property
    def size(self) -> int:
        last = self.params[-1]
        return last.offset + last.size

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        return [p.shape for p in self.params]

    @property
    def output_layer_offset(self) -> int:
        """Where W2, b2 (and dW2, db2) start: the hidden layer's parameters come first."""
        return self["W2"].offset

    def pack(self, params: dict[str, np.ndarray]) -> np.ndarray:
        """Concatenate parameters column-major into one flat float64 vector."""
        return np.concatenate([np.ravel(params[p.name], order="F") for p in self.params])

    def unpack(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """Copies of each parameter out of a flat host vector (column-major)."""
        return {p.name: flat[p.offset:p.offset + p.size].reshape(p.shape, order="F").copy(order="F")
                for p in self.params}

    @property
    def grad_blocks(self) -> tuple[tuple[str, int, tuple[int, int]], ...]:
        """(name, offset, (M, N + 1)) of each layer's weights and bias as ONE column-major matrix:
        W (M x N) is followed by b (M) in the flat buffer, so b is the extra last column. The fused
        ``Backend.gemm_with_bias_grad`` writes dW and db through it in one launch."""
        blocks = []
        for w, b in ((self["W1"], self["b1"]), (self["W2"], self["b2"])):
            rows, cols = w.shape
            assert b.offset == w.offset + w.size and b.shape == (rows,)
            blocks.append((f"d{w.name}{b.name}", w.offset, (rows, cols + 1)))
        return tuple(blocks)

    def gemm_shapes(self, n: int) -> list[GemmShape]:
        """The five GEMMs of one training step on n samples, from W1's and W2's shapes."""
        (h, inputs), (classes, _) = self["W1"].shape, self["W2"].shape
        return [GemmShape("z1=W1 x", h, n, inputs, False, False),
                GemmShape("z2=W2 a1", classes, n, h, False, False),
                GemmShape("dW2=diff a1^T", classes, h, n, False, True),
                GemmShape("da1=W2^T diff", h, n, classes, True, False),
                GemmShape("dW1=dz1 x^T", h, inputs, n, False, True)]


def init_params(hidden: int, seed: int) -> dict[str, np.ndarray]:
    """Reference initialisation W = 0.01 N(0, 1), b = 0, in float64 from one seeded generator
    (W1 drawn first, then W2), so every rank and every backend starts from the same numbers."""
    rng = np.random.default_rng(seed)
    w1 = 0.01 * rng.standard_normal((hidden, INPUTS))
    w2 = 0.01 * rng.standard_normal((CLASSES, hidden))
    return {"W1": np.asfortranarray(w1), "b1": np.zeros(hidden),
            "W2": np.asfortranarray(w2), "b2": np.zeros(CLASSES)}


#: rows of W1 drawn at a time by init_flat_params (bounds its float64 scratch to ~6 MB)
INIT_CHUNK_ROWS = 1024


def init_flat_params(hidden: int, seed: int, dtype="float64") -> np.ndarray:
    """``init_params`` packed into the flat-buffer layout (``ParamLayout.pack``) and rounded to
    ``dtype``, the same numbers bit for bit, without the float64 copies: the weights are drawn
    INIT_CHUNK_ROWS rows at a time from the same generator stream (NumPy's draws do not depend
    on how the stream is cut), each chunk scaled in float64 and rounded once into the result.
    Peak host memory: the result (size x itemsize) plus one chunk."""
    layout = ParamLayout(hidden)
    flat = np.zeros(layout.size, dtype=dtype)
    rng = np.random.default_rng(seed)
    for name in ("W1", "W2"):  # W1 drawn first, then W2, row by row as (rows, cols) C arrays
        p = layout[name]
        rows, cols = p.shape
        view = flat[p.offset:p.offset + p.size].reshape((rows, cols), order="F")
        for lo in range(0, rows, INIT_CHUNK_ROWS):
            hi = min(rows, lo + INIT_CHUNK_ROWS)
            view[lo:hi] = 0.01 * rng.standard_normal((hi - lo, cols))
    return flat


def host_flat(layout: ParamLayout, params) -> np.ndarray:
    """The flat host vector of ``params``: a flat array as it is (init_flat_params), a dict of
    arrays packed (a checkpoint's, a caller's)."""
    return params if isinstance(params, np.ndarray) else layout.pack(params)


class FlatParamsModel:
    """What a model holding its parameters in one flat device buffer (``layout``, ``backend``,
    ``flat_params``, views ``W1`` ... ``b2``) derives from it; MLP and core/exact.py's ExactMLP."""

    @property
    def output_layer_offset(self) -> int:
        """Where dW2, db2 start in the flat buffer (W1, b1 come first)."""
        return self.layout.output_layer_offset

    def params_to_host(self) -> dict[str, np.ndarray]:
        return self.layout.unpack(self.backend.to_host(self.flat_params))

    def reg_loss(self, reg: float) -> float:
        """(reg / 2) (||W1||_F^2 + ||W2||_F^2)."""
        if not reg:
            return 0.0
        return 0.5 * reg * (self.backend.sum_squares(self.W1) + self.backend.sum_squares(self.W2))


class MLP(FlatParamsModel):
    """Parameters, gradients and work buffers on one backend, plus the forward/backward/step ops."""

    def __init__(self, backend: Backend, hidden: int, max_cols: int, params):
        self.backend = backend
        self.hidden = hidden
        self.max_cols = max(1, max_cols)
        self.layout = ParamLayout(hidden)
        shapes = self.layout.shapes
        self.size = self.layout.size

        self.flat_params = backend.from_host(host_flat(self.layout, params))
        self.W1, self.b1, self.W2, self.b2 = backend.flat_views(self.flat_params, shapes)
        self.flat_grads = backend.zeros((self.size,))
        self.dW1, self.db1, self.dW2, self.db2 = backend.flat_views(self.flat_grads, shapes)
        # [dW1 db1] (hidden x 785), [dW2 db2] (10 x hidden+1): the same memory, one matrix a layer
        (self.dW1b1,), (self.dW2b2,) = (
            backend.flat_views(backend.cols(self.flat_grads, offset, offset + math.prod(shape)),
                               [shape]) for _, offset, shape in self.layout.grad_blocks)

        cols = self.max_cols
        # Each written whole by one fused op (no intermediate z1, z2 or da1 is ever stored):
        self._a1 = backend.empty((hidden, cols))     # a1 (gemm_bias_sigmoid)
        self._yhat = backend.empty((CLASSES, cols))  # training: diff (output_layer), which
                                                     # backward_hidden reads; evaluation: z2,
                                                     # then yhat in place
        self._dz1 = backend.empty((hidden, cols))    # dz1 (output_backward)
        self._nll_discard = backend.zeros((1,))      # the loss sum of backward_output's callers
                                                     # that do not ask for it

    # ------------------------------------------------------------------ passes
    def forward_hidden(self, x) -> tuple:
        """The forward pass of a training step, over the columns of ``x`` (784 x n, n <=
        max_cols): the hidden layer only. Returns (a1, out), ``out`` the output layer's buffer,
        which ``backward_output`` fills with diff (the output layer, its softmax and the loss are
        one fused op there, ``Backend.output_layer``)."""
        be, n = self.backend, _ncols(x)
        a1 = be.cols(self._a1, 0, n)
        be.gemm_bias_sigmoid(self.W1, x, self.b1, a1)  # a1 = sigmoid(W1 x + b1)
        return a1, be.cols(self._yhat, 0, n)

    def forward(self, x) -> tuple:
        """The whole forward pass over the columns of ``x`` (784 x n, n <= max_cols), as
        evaluation uses it: returns (a1, yhat)."""
        a1, yhat = self.forward_hidden(x)
        be = self.backend
        # the softmax kept, so count_correct's first-maximum rule sees what it always saw
        be.gemm(self.W2, a1, yhat)               # z2 = W2 a1
        be.add_bias(yhat, self.b2)               # z2 += b2
        be.softmax(yhat, yhat, axis=0)           # yhat = softmax over each sample's column
        return a1, yhat

    def backward(self, x, labels, a1, out, global_batch: int, nll_acc=None) -> None:
        """Gradient contribution of this rank's samples into ``flat_grads`` (no reg term), from
        the (a1, out) of ``forward_hidden`` or ``forward``; the loss sum goes to ``nll_acc`` if
        given."""
        self.backward_output(x, labels, a1, out, global_batch, nll_acc)
        self.backward_hidden(x, a1, out)

    def backward_output(self, x, labels, a1, out, global_batch: int, nll_acc=None) -> None:
        """Output layer: dW2, db2 (the tail of ``flat_grads``, which can be exchanged while the
        hidden layer's gradients are computed) and the hidden layer's error dz1 (the buffer
        backward_hidden reads). One fused op computes z2 = W2 a1 + b2, the softmax, diff =
        (yhat - y) / N_b into ``out`` and adds the cross-entropy summed over the columns, from the
        logits (finite whenever they are), to ``nll_acc`` (a 1-element array; None: discarded);
        another, from diff, [dW2 db2] and dz1. A rank with no samples contributes zeros and no
        loss."""
        be, n = self.backend, _ncols(x)
        if n == 0:
            be.fill(self.flat_grads, 0.0)
            return
        diff = out
        be.output_layer(self.W2, self.b2, a1, labels, 1.0 / global_batch, diff,
                        self._nll_discard if nll_acc is None else nll_acc)
        # [dW2 db2] = diff [a1^T 1]; dz1 = (W2^T diff) * a1 * (1 - a1)
        be.output_backward(self.W2, diff, a1, self.dW2b2, self.hidden_error(n))

    def hidden_error(self, n: int):
        """dz1 of the step's ``n`` columns, as backward_output left it."""
        return self.backend.cols(self._dz1, 0, n)

    def backward_hidden(self, x, a1, diff) -> None:
        """Hidden layer: dW1, db1 (the head of ``flat_grads``) from the dz1 that backward_output
        computed."""
        be, n = self.backend, _ncols(x)
        if n == 0:
            return
        be.gemm_with_bias_grad(self.hidden_error(n), x, self.dW1b1)  # dW1 = dz1 x^T, db1 = sum dz1

    @property
    def exchange_buffer(self):
        """What the ranks sum after the backward passes: the flat gradient (core/exact.py's model
        exchanges something else)."""
        return self.flat_grads

    @property
    def exchange_split(self) -> int:
        """Where the output layer's part of ``exchange_buffer`` starts (it is exchanged first)."""
        return self.output_layer_offset

    def update(self, reg: float, lr: float) -> None:
        """dW += reg W (applied once to the summed gradient, identically on every rank), then
        p <- p - lr dp over the whole flat buffer: one fused op (``Backend.sgd_step``)."""
        weights = [(p.offset, p.offset + p.size) for p in self.layout.params
                   if p.name in ("W1", "W2")]
        self.backend.sgd_step(self.flat_params, self.flat_grads, lr, reg, weights)



def _ncols(x) -> int:
    return int(x.shape[1])
