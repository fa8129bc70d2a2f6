"""``--exact``: training whose parameters are bit-identical on every backend and at every rank count.

Why ordinary training is not: a dot product's rounding depends on the order of its additions, and
that order changes with the BLAS's blocking, the kernel's tiling, split-K, and the split of the
minibatch over ranks. This module removes the order from every sum of the model:

**Every GEMM is exact (Ozaki's splitting).** C = A B is computed as follows. Each row i of A gets a
power-of-two grid 2^e_i above all its magnitudes, each column j of B one, 2^f_j; ``exact_split``
cuts every element into S integer digits of at most beta bits on that grid,
A_ik = 2^e_i sum_s a_ik^(s) 2^-(s+1)beta (and alike for B). A product of two digits is an integer
below 2^2beta, a sum of K of them (times the S pairs of a group) below K S 2^2beta <= 2^53: exactly
representable in float64. So each group sum G_g = sum_(s+t=g) A^(s) B^(t) (g < S: the pairs a
truncated Ozaki product keeps) is EXACT in any order of its additions: our tiled or split-K
kernels, BLAS, a reversed k loop, a split over ranks. ``exact_combine`` then rounds the S group
sums into C in one fixed order, element by element. The remainders the digits drop are below
2^-(S beta) of the row's (column's) largest element, as accurate as float64 itself.

**The grids of the products over the minibatch are the same on every rank.** dW = dZ [A; 1]^T sums
over the samples, i.e. over ranks. A per-rank maximum would give each rank another grid, so the
grids come from bounds that every rank knows (derived from the model, not the data of one rank):
  * diff = (softmax - onehot) / N_b: every |diff| <= 1/N_b < 2^g_b  (g_b = frexp(1/N_b));
  * a1 = sigmoid(...) in [0, 1] and the ones row of the bias: <= 1 < 2^1;
  * x: the scale's bound (1 for --scale unit, 255 for raw: ``input_bound``, whatever the
    pixels of the subset), and the ones row;
  * dz1 = (W2^T diff) * a1 (1 - a1): |dz1_i| <= (sum_c |W2_ci|) / N_b / 4 <= 10 max_c |W2_ci| 2^g_b
    / 4 < 2^(e_i + g_b + 2), with e_i the exponent of column i of W2 (a parameter, equal on every
    rank). The 10/4 = 2.5 < 4 margin also covers the roundings of the product.
Every other grid is per row of a parameter matrix or per sample (a column of the batch), the same
wherever that sample is computed. No collective is needed for the grids, and a value that broke
its bound (or inf/nan) sets a flag that is checked at every epoch's end: training stops with one
line (exit 3) instead of rounding silently.

**The exchange sums integers.** A rank's gradient leaves it as its S group sums (integer-valued
float64, each |.| <= N_b S 2^2beta <= 2^53 summed over all ranks), so MPI's or NCCL's reduction
tree cannot round; the gradient is rebuilt by exact_combine after the exchange, identically on
every rank. The exchanged buffer is S times the gradient.

**Element-wise functions are core/exact_math.py's** (exp, log, sigmoid from +, -, *, /, rint, ldexp;
the sigmoid backward and the SGD step are exact ops too, each operation rounded on its own),
with fixed-order sums over the 10 classes; biases are the extra column of [W b] against a ones row,
so their gradients are part of the exact GEMMs. The loss metric's sum over samples is the only
order-dependent sum; it does not touch the parameters.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from core.errors import UserError
from core.model import CLASSES, INPUTS, FlatParamsModel, ParamLayout, host_flat
from core.ops import EXACT_OPS, Backend

#: float64's significand: every digit product sum must stay below 2^53
MANTISSA_BITS = 53


class ExactRangeError(UserError):
    """A value left the grid its exact split assumed (or was inf/nan): exit 3, like a diverged run."""

    exit_code = 3


def exact_support(backend: Backend) -> tuple[bool, str]:
    """(True, "") when ``backend`` implements every op of EXACT_OPS in float64, else (False, why)."""
    if backend.dtype != np.float64:
        return False, f"--exact trains in float64 (the backend was made for {backend.dtype})"
    missing = [op for op in EXACT_OPS
               if getattr(type(backend), op) is getattr(Backend, op)]
    if missing:
        return False, (f"--exact: backend {backend.name!r} does not implement the exact ops "
                       f"({', '.join(missing)})")
    return True, ""


@dataclass(frozen=True)
class Slicing:
    """How the operands of one product with inner dimension ``k`` are cut: ``slices`` digits of
    ``beta`` bits, the largest beta with k * slices * 2^(2 beta) <= 2^53 and enough digits for
    float64's 53 bits (slices * beta >= 53)."""

    k: int
    slices: int
    beta: int

    @classmethod
    def for_depth(cls, k: int) -> "Slicing":
        for slices in range(3, 12):
            beta = (MANTISSA_BITS - math.ceil(math.log2(max(k, 1) * slices))) // 2
            if slices * beta >= MANTISSA_BITS:
                return cls(k, slices, beta)
        raise ValueError(f"--exact: inner dimension {k} is too deep for exact float64 products")

    @property
    def products(self) -> int:
        """GEMM-equivalents of one exact product: the S (S + 1) / 2 digit pairs kept."""
        return self.slices * (self.slices + 1) // 2


def params_sha256(flat: np.ndarray) -> str:
    """SHA-256 of the parameters as float64 little-endian, in the flat-buffer order (W1, b1, W2,
    b2, each column-major): equal hashes mean bit-identical parameters."""
    return hashlib.sha256(np.ascontiguousarray(flat, dtype="<f8").tobytes()).hexdigest()


def input_bound(*arrays) -> float:
    """The bound of the inputs' grid: 1 for pixels scaled to [0, 1] (--scale unit), 255 for raw
    pixels (--scale raw), whatever the pixels of this subset are, so that a validation or test
    image (or another rank's data) can never leave it; a larger value only for other data. The
    same on every rank: every rank holds the whole training set."""
    big = max((float(np.abs(a).max()) for a in arrays if a is not None and a.size), default=0.0)
    return 1.0 if big <= 1.0 else 255.0 if big <= 255.0 else big


def _exponent(bound: float) -> int:
    """e with bound < 2^e (frexp): the grid of values known to lie within [-bound, bound]."""
    return math.frexp(bound)[1]


class ExactMLP(FlatParamsModel):
    """The MLP of core/model.py with every product exact (see the module docstring); the same
    interface as core.model.MLP, so the trainer drives either. The gradient exchange carries
    ``exchange_buffer`` (the S group sums of each gradient block) instead of ``flat_grads``;
    ``update`` rebuilds the gradient from it, then takes the SGD step."""

    def __init__(self, backend: Backend, hidden: int, max_cols: int, params: dict[str, np.ndarray],
                 batch_size: int, x_bound: float):
        ok, why = exact_support(backend)
        if not ok:
            raise UserError(why)
        self.backend = backend
        self.hidden = h = hidden
        self.max_cols = cols = max(1, max_cols)
        self.layout = ParamLayout(hidden)
        self.size = self.layout.size
        self._allocate_params(params)
        # the slicing of each product, by its inner dimension (+1: the bias column / ones row)
        self.z1_cut = Slicing.for_depth(INPUTS + 1)
        self.z2_cut = Slicing.for_depth(hidden + 1)
        self.da1_cut = Slicing.for_depth(CLASSES)
        # over the GLOBAL minibatch: the group sums are summed over ranks, too
        self.grad_cut = Slicing.for_depth(batch_size)
        self.x_exp = _exponent(max(float(x_bound), 1.0))  # pixels and the ones row
        self._allocate_exchange()
        self._allocate_work(h, cols)

    def _allocate_params(self, params: dict[str, np.ndarray]) -> None:
        """The flat parameters and gradients, their views, and [W1 b1], [W2 b2], [dW1 db1],
        [dW2 db2] as one matrix a layer (the bias the last column)."""
        be = self.backend
        self.flat_params = be.from_host(host_flat(self.layout, params))
        self.W1, self.b1, self.W2, self.b2 = be.flat_views(self.flat_params, self.layout.shapes)
        self.flat_grads = be.zeros((self.size,))

        def block_views(flat):
            return [be.flat_views(be.cols(flat, offset, offset + math.prod(shape)), [shape])[0]
                    for _, offset, shape in self.layout.grad_blocks]

        self.W1b1, self.W2b2 = block_views(self.flat_params)
        self.dW1b1, self.dW2b2 = block_views(self.flat_grads)

    def _allocate_exchange(self) -> None:
        """The exchange: [dW1 db1]'s S group sums, then [dW2 db2]'s (the output layer's: the tail,
        exchanged first while the hidden layer's are computed)."""
        be, h, gs = self.backend, self.hidden, self.grad_cut.slices
        self.exchange_buffer = be.zeros((gs * self.size,))
        self.exchange_split = gs * self.layout.output_layer_offset
        self.G_W1b1 = be.flat_views(self.exchange_buffer, [(h, gs * (INPUTS + 1))])[0]
        self.G_W2b2 = be.flat_views(be.cols(self.exchange_buffer, self.exchange_split,
                                            gs * self.size), [(CLASSES, gs * (h + 1))])[0]

    def _allocate_work(self, h: int, cols: int) -> None:
        """Activations, grid exponents, and the digit and group-sum buffers every product reuses
        (the stream orders their uses), each for the largest product it serves."""
        be = self.backend
        self._a1 = be.empty((h, cols))        # z1, then a1
        self._z2 = be.empty((CLASSES, cols))  # z2, then diff in place
        self._dz1 = be.empty((h, cols))       # da1, then dz1 in place
        self._nll_discard = be.zeros((1,))
        self.flag = be.zeros((1,))            # set by exact_split when a value leaves its grid
        self.e_W1 = be.zeros((h,))            # grid exponents of the rows of [W1 b1]
        self.e_W2 = be.zeros((CLASSES,))      # of the rows of [W2 b2]
        self.e_W2c = be.zeros((h,))           # of the columns of W2 (rows of W2^T)
        self.zeros = be.zeros((max(cols, h + 1, INPUTS + 1),))  # "no per-row part" of a grid
        z1, z2, da1, gr = self.z1_cut, self.z2_cut, self.da1_cut, self.grad_cut
        a_need = max(h * z1.slices * z1.k, CLASSES * z2.slices * z2.k, h * da1.slices * da1.k,
                     CLASSES * gr.slices * cols, h * gr.slices * cols)
        b_need = max(cols * z1.slices * z1.k, cols * z2.slices * z2.k, cols * da1.slices * da1.k,
                     (h + 1) * gr.slices * cols, (INPUTS + 1) * gr.slices * cols)
        g_need = max(h * z1.slices, CLASSES * z2.slices, h * da1.slices) * cols
        self._digits_a = be.empty((a_need,))
        self._digits_b = be.empty((b_need,))
        self._groups = be.empty((g_need,))
        self._views: dict[tuple, object] = {}
        self._g_batch = 0  # grid exponent of this step's diff (1 / N_b)

    # ------------------------------------------------------------------ helpers
    def _view(self, buffer: str, rows: int, cols: int):
        """A (rows x cols) matrix at the start of one of the scratch buffers (cached)."""
        key = (buffer, rows, cols)
        view = self._views.get(key)
        if view is None:
            flat = getattr(self, buffer)
            view = self._views[key] = self.backend.flat_views(flat, [(rows, cols)])[0]
        return view

    def _zeros(self, n: int):
        return self.backend.cols(self.zeros, 0, n)

    def _product(self, cut: Slicing, digits_a, digits_b, out_groups, n: int) -> None:
        """The S group sums of A B (digits_a: m x S k, slices in order; digits_b: n x S k, slices
        in reverse order) into out_groups (m x S n): group g pairs slice s of A with slice g - s of
        B, i.e. A's first g + 1 slices with B's last g + 1, one GEMM of depth (g + 1) k each."""
        be, k, s = self.backend, cut.k, cut.slices
        for g in range(s):
            be.gemm(be.cols(digits_a, 0, (g + 1) * k),
                    be.cols(digits_b, (s - 1 - g) * k, s * k),
                    be.cols(out_groups, g * n, (g + 1) * n), trans_b=True)

    def _exact_gemm(self, cut: Slicing, a, a_trans: bool, a_ones_col: bool, a_exps,
                    b, b_trans: bool, b_ones_col: bool, b_shift: int, m: int, n: int, out) -> None:
        """out (m x n) = L_A L_B^T exactly rounded from the groups, L_A = op(a) (m x k, grid per
        row: a_exps) and L_B = op(b) (n x k, grid per row: b_shift, a bound), each with its ones
        column when asked (the bias)."""
        be, s, k = self.backend, cut.slices, cut.k
        da = self._view("_digits_a", m, s * k)
        db = self._view("_digits_b", n, s * k)
        groups = self._view("_groups", m, s * n)
        be.exact_split(a, a_trans, False, a_ones_col, a_exps, 0, cut.beta, s, False, da, self.flag)
        be.exact_split(b, b_trans, False, b_ones_col, self._zeros(n), b_shift, cut.beta, s, True,
                       db, self.flag)
        self._product(cut, da, db, groups, n)
        be.exact_combine(groups, a_exps, 0, self._zeros(n), b_shift, cut.beta, out)

    # ------------------------------------------------------------------ passes
    def forward_hidden(self, x) -> tuple:
        """The forward pass of a training step: the hidden layer only. Returns (a1, out), ``out``
        the buffer where ``backward_output`` computes the logits, then diff, as core.model.MLP."""
        be, n = self.backend, int(x.shape[1])
        a1, out = be.cols(self._a1, 0, n), be.cols(self._z2, 0, n)
        if n == 0:
            return a1, out
        be.exact_row_exponents(self.W1b1, False, self.e_W1)
        # z1 = [W1 b1] [x; 1]: x^T's rows are samples, their grid the pixels' bound
        self._exact_gemm(self.z1_cut, self.W1b1, False, False, self.e_W1,
                         x, True, True, self.x_exp, self.hidden, n, a1)
        be.exact_sigmoid(a1, a1)
        return a1, out

    def _logits(self, a1, z2) -> None:
        """z2 = [W2 b2] [a1; 1], a1 in [0, 1]."""
        self.backend.exact_row_exponents(self.W2b2, False, self.e_W2)
        self._exact_gemm(self.z2_cut, self.W2b2, False, False, self.e_W2,
                         a1, True, True, 1, CLASSES, int(a1.shape[1]), z2)

    def forward(self, x) -> tuple:
        """(a1, z2): the hidden activations and the logits (bias included) of the columns of x,
        as evaluation uses them: it counts the argmax of the logits (the softmax's, without
        rounding ties)."""
        a1, z2 = self.forward_hidden(x)
        if a1.shape[1]:
            self._logits(a1, z2)
        return a1, z2

    def backward(self, x, labels, a1, out, global_batch: int, nll_acc=None) -> None:
        self.backward_output(x, labels, a1, out, global_batch, nll_acc)
        self.backward_hidden(x, a1, out)

    def backward_output(self, x, labels, a1, out, global_batch: int, nll_acc=None) -> None:
        """The logits into ``out``, then diff in their place and the loss; then the group sums of
        [dW2 db2] = diff [a1; 1]^T into the exchange buffer. Every rank computes W2's column grid (the grid of
        dz1, which the combine after the exchange needs), also one without samples."""
        be, n = self.backend, int(x.shape[1])
        self._g_batch = _exponent(1.0 / global_batch)
        be.exact_row_exponents(self.W2, True, self.e_W2c)
        if n == 0:
            be.fill(self.exchange_buffer, 0.0)
            return
        h, cut = self.hidden, self.grad_cut
        s = cut.slices
        self._logits(a1, out)
        be.exact_output_layer(out, labels, 1.0 / global_batch, out,
                              self._nll_discard if nll_acc is None else nll_acc)
        da = self._view("_digits_a", CLASSES, s * n)
        db = self._view("_digits_b", h + 1, s * n)
        be.exact_split(out, False, False, False, self._zeros(CLASSES), self._g_batch, cut.beta, s,
                       False, da, self.flag)
        be.exact_split(a1, False, True, False, self._zeros(h + 1), 1, cut.beta, s, True, db,
                       self.flag)
        self._product(_depth(cut, n), da, db, self.G_W2b2, h + 1)

    def backward_hidden(self, x, a1, diff) -> None:
        """dz1 = (W2^T diff) * a1 (1 - a1), then the group sums of [dW1 db1] = dz1 [x; 1]^T."""
        be, n = self.backend, int(x.shape[1])
        if n == 0:
            return
        h, cut = self.hidden, self.grad_cut
        s = cut.slices
        dz1 = be.cols(self._dz1, 0, n)
        # da1 = W2^T diff: W2^T's rows are W2's columns; diff^T's rows are samples (|.| < 2^g_b)
        self._exact_gemm(self.da1_cut, self.W2, True, False, self.e_W2c,
                         diff, True, False, self._g_batch, h, n, dz1)
        be.exact_sigmoid_backward(dz1, a1, dz1)  # (da1 a1)(1 - a1), each operation rounded
        da = self._view("_digits_a", h, s * n)
        db = self._view("_digits_b", INPUTS + 1, s * n)
        be.exact_split(dz1, False, False, False, self.e_W2c, self._g_batch + 2, cut.beta, s,
                       False, da, self.flag)
        be.exact_split(x, False, True, False, self._zeros(INPUTS + 1), self.x_exp, cut.beta, s,
                       True, db, self.flag)
        self._product(_depth(cut, n), da, db, self.G_W1b1, INPUTS + 1)

    def update(self, reg: float, lr: float) -> None:
        """Rebuild the summed gradient from the exchanged group sums (the same bits on every rank),
        then the SGD step with the reg term, each operation rounded on its own."""
        be, h, cut = self.backend, self.hidden, self.grad_cut
        be.exact_combine(self.G_W1b1, self.e_W2c, self._g_batch + 2, self._zeros(INPUTS + 1),
                         self.x_exp, cut.beta, self.dW1b1)
        be.exact_combine(self.G_W2b2, self._zeros(CLASSES), self._g_batch, self._zeros(h + 1), 1,
                         cut.beta, self.dW2b2)
        weights = [(p.offset, p.offset + p.size) for p in self.layout.params
                   if p.name in ("W1", "W2")]
        be.exact_sgd_step(self.flat_params, self.flat_grads, lr, reg, weights)

    def out_of_range(self) -> bool:
        """True once a value has left its grid since the start (reads the flag: synchronises)."""
        return bool(self.backend.to_host(self.flag)[0] != 0)


def _depth(cut: Slicing, n: int) -> Slicing:
    """The batch products' slicing (beta, S: from the global minibatch) over this rank's n
    samples: the digit blocks are n columns wide."""
    return Slicing(n, cut.slices, cut.beta)
