"""Data-parallel minibatch SGD, exactly as docs/spec.md's "Data parallelism" section.

Every rank holds the whole (scaled) training set on its device, takes its contiguous slice of each
minibatch by the course rule, computes its gradient contribution normalised by the GLOBAL minibatch
size, and the contributions are summed with one allreduce of one flat buffer per step. The reg term
is then added once, and every rank applies the same SGD step, so parameters stay identical.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from core.buckets import DEFAULT_BUCKET_MB, BucketedHiddenGrad, buckets_apply
from core.communicator import Communicator
from core.errors import UserError
from core.exact import ExactMLP, ExactRangeError, input_bound, params_sha256
from core.model import MLP, init_flat_params
from core.ops import Backend

CUDA_GRAPH_CHOICES = ("auto", "on", "off")


def split_counts(batch: int, ranks: int) -> list[int]:
    """Course rule: rank r gets floor(B/P) samples, plus one if r < B mod P (800 on 3: 267/267/266)."""
    return [batch // ranks + (1 if r < batch % ranks else 0) for r in range(ranks)]


def rank_slice(start: int, batch: int, ranks: int, rank: int) -> tuple[int, int]:
    """Sample range [lo, hi) of ``rank`` inside the minibatch [start, start + batch)."""
    counts = split_counts(batch, ranks)
    lo = start + sum(counts[:rank])
    return lo, lo + counts[rank]


def scale_images(images: np.ndarray, scale: str, dtype) -> np.ndarray:
    """uint8 images (N x 784, one per row) -> 784 x N column-major matrix of ``dtype``.

    scale "unit" maps pixels to [0, 1]; "raw" keeps 0..255 as the course code does."""
    x = images.T.astype(dtype, order="F")  # rows of a C array are the columns of its transpose
    if scale == "unit":
        x /= 255
    return x


@dataclass
class TrainConfig:
    hidden: int = 256
    reg: float = 1e-5
    lr: float = 1.0
    epochs: int = 10
    batch_size: int = 100
    seed: int = 0
    dtype: str = "float32"


@dataclass
class StepInfo:
    """What ``on_step`` is told after each SGD step: the step's summed gradient (reg included) is
    in ``model.flat_grads`` and the updated parameters in ``model.flat_params``."""

    epoch: int   # 1-based
    index: int   # step within the epoch, 0-based
    step: int    # steps since training began, 0-based
    start: int   # first sample of the global minibatch
    batch: int   # global size of the minibatch


@dataclass
class EpochStats:
    epoch: int
    loss: float
    val_accuracy: float | None
    seconds: float


class GradientExchange:
    """Sums the flat gradient buffer over ranks, choosing the one safe path for this pairing.

    * one rank: nothing to do;
    * host-resident backend (NumPy): MPI reads the buffer directly;
    * communicator that takes device buffers (NCCL, opted-in CUDA-aware MPI): reduce on the device;
    * otherwise: copy to a reused pinned host buffer once the backend's stream has produced the
      gradients, reduce there, copy back. A device pointer never reaches an MPI that cannot read it.

    The exchange is split in two so that communication overlaps computation: ``start()`` sends the
    output layer's gradients (the buffer's tail) as soon as they exist, while the hidden layer's are
    computed; ``finish()`` sends the head and waits for both. Two calls on one flat buffer.
    """

    def __init__(self, backend: Backend, comm: Communicator, flat, split: int):
        self.backend, self.comm, self.flat = backend, comm, flat
        self.size, self.split = int(flat.shape[0]), split
        self._tail, self._heads = None, []
        if comm.size == 1:
            self.mode = "none"
        elif backend.host_resident:
            self.mode = "host"
        elif comm.accepts_device_buffers:
            self.mode = "device"
        else:
            self.mode = "staged"
            self.staging = backend.host_buffer(self.size)

    def _part(self, head: bool):
        lo, hi = (0, self.split) if head else (self.split, self.size)
        return self._span(lo, hi)

    def _span(self, lo: int, hi: int):
        if self.mode == "staged":
            self.backend.copy_to_host(self.backend.cols(self.flat, lo, hi), self.staging[lo:hi])
            return self.staging[lo:hi]
        return self.backend.cols(self.flat, lo, hi)

    def start(self) -> None:
        """Begin summing the output layer's gradients (call after Model.backward_output)."""
        if self.mode != "none":
            self._tail = self.comm.allreduce_sum_start(self._part(head=False))

    def start_span(self, lo: int, hi: int) -> None:
        """Begin summing elements [lo, hi) of the hidden layer's part: one bucket
        (core/buckets.py); ``finish`` then waits for the buckets instead of sending the head."""
        if self.mode != "none":
            for pending in [p for p in (self._tail, *self._heads) if p is not None]:
                pending.test()  # lets an MPI without a progress thread advance the earlier ones
            self._heads.append(self.comm.allreduce_sum_start(self._span(lo, hi)))

    def finish(self) -> None:
        """Sum the hidden layer's gradients (unless its buckets were started) and wait for every
        part (after backward_hidden)."""
        if self.mode == "none":
            return
        heads = self._heads or [self.comm.allreduce_sum_start(self._part(head=True))]
        self._heads = []
        self._tail.wait()
        for head in heads:
            head.wait()
        if self.mode == "staged":
            self.backend.copy_from_host(self.staging, self.flat)


class DataParallelTrainer:
    def __init__(self, backend: Backend, comm: Communicator, config: TrainConfig,
                 train_x: np.ndarray, train_y: np.ndarray,
                 val_x: np.ndarray | None = None, val_y: np.ndarray | None = None,
                 params: dict[str, np.ndarray] | None = None, cuda_graphs: str = "off",
                 exact: bool = False, bucket_mb: float = DEFAULT_BUCKET_MB):
        self.backend, self.comm, self.config = backend, comm, config
        self.n_train = int(train_x.shape[1])
        # The data set goes to the device once; each step only takes column views of it.
        self.X = backend.from_host(train_x)
        self.Y = backend.from_host(np.asarray(train_y, dtype=np.int32))
        self.val = None
        if val_x is not None and val_y is not None and val_x.shape[1] > 0:
            self.val = (backend.from_host(val_x), backend.from_host(np.asarray(val_y, np.int32)))
        if params is None:  # drawn straight into the backend dtype: no float64 model-sized copy
            params = init_flat_params(config.hidden, config.seed, backend.dtype)
        max_cols = math.ceil(min(config.batch_size, max(self.n_train, 1)) / comm.size)
        self.exact = exact
        if exact:  # every product exact: the same bits on every backend and rank count
            x_bound = input_bound(train_x, val_x)
            self.model = ExactMLP(backend, config.hidden, max_cols, params, config.batch_size,
                                  x_bound)
        else:
            self.model = MLP(backend, config.hidden, max_cols, params)
        self.exchange = GradientExchange(backend, comm, self.model.exchange_buffer,
                                         self.model.exchange_split)
        # more than one rank: the hidden layer in column blocks, summed by buckets as computed
        self.hidden_blocks = (BucketedHiddenGrad(backend, self.model, train_x, bucket_mb)
                              if buckets_apply(comm.size, exact) else None)
        self.steps_done = 0
        self._nll = backend.zeros((1,))
        self._correct = backend.zeros((1,))
        self.use_graphs, self.graph_note = self._decide_graphs(cuda_graphs)
        self._epoch_graph = None
        self._eval_graphs: dict[int, object] = {}  # id of the device data set -> its graph
        self._stop_after_epoch = False
        self.stopped_at: tuple[int, int] | None = None

    # ------------------------------------------------------------------ CUDA graphs
    def _decide_graphs(self, requested: str) -> tuple[bool, str]:
        """Whether epochs replay one captured graph, and why not when they do not ("" when they
        do). "on" where it cannot work is the user's mistake; "auto" falls back to eager."""
        if requested not in CUDA_GRAPH_CHOICES:
            raise ValueError(f"cuda_graphs must be one of {CUDA_GRAPH_CHOICES}, not {requested!r}")
        if requested == "off":
            return False, "off as asked"
        ok, why = self.backend.graph_support()
        if ok and self.exchange.mode == "staged":
            ok, why = False, ("the gradient exchange is staged through host memory (MPI): the host "
                              "allreduce cannot be part of a graph; use --comm nccl for graphs")
        if not ok and requested == "on":
            raise UserError(f"--cuda-graphs on: {why}")
        return ok, why

    def _captured(self, queue_work: Callable[[], None]):
        """A graph of the work ``queue_work()`` queues on the backend's stream."""
        self.backend.begin_capture()
        try:
            queue_work()
        finally:
            graph = self.backend.end_capture()  # also on failure: the stream leaves capture mode
        return graph

    # ------------------------------------------------------------------ training
    def step(self, start: int, batch: int) -> None:
        """One SGD step on the minibatch [start, start + batch) of the training set."""
        be, model = self.backend, self.model
        lo, hi = rank_slice(start, batch, self.comm.size, self.comm.rank)
        x, y = be.cols(self.X, lo, hi), be.cols(self.Y, lo, hi)
        a1 = out = None
        if hi > lo:
            a1, out = model.forward_hidden(x)
        # the output layer, its softmax, diff and the loss (into _nll): one fused op
        model.backward_output(x, y, a1, out, global_batch=batch, nll_acc=self._nll)
        self.exchange.start()   # output layer's sum travels while the hidden layer's is computed
        if self.hidden_blocks is not None:  # by blocks, each bucket's sum started when done
            self.hidden_blocks.backward(self.exchange, x, a1, out, lo, hi)
        else:
            model.backward_hidden(x, a1, out)  # out holds diff
        self.exchange.finish()
        model.update(self.config.reg, self.config.lr)  # reg once, on the summed gradient

    def _queue_steps(self, epoch: int, first_step: int = 0,
                     on_step: Callable[[int, int], bool] | None = None,
                     observe: Callable[[StepInfo], None] | None = None) -> int:
        """Queue steps ``first_step``.. of an epoch in file order (the loss sum restarts at 0 when
        the epoch starts at step 0), calling ``observe`` and ``on_step`` after each; returns the
        steps done in the epoch: steps_per_epoch, or fewer when on_step asked to stop."""
        cfg, total = self.config, self.steps_per_epoch
        if first_step == 0:
            self.backend.fill(self._nll, 0.0)
        for k in range(first_step, total):
            start = k * cfg.batch_size
            batch = min(cfg.batch_size, self.n_train - start)
            self.step(start, batch)
            if observe is not None:
                observe(StepInfo(epoch, k, self.steps_done, start, batch))
            self.steps_done += 1
            if on_step is not None and on_step(epoch, k + 1):
                if k + 1 == total:
                    self._stop_after_epoch = True  # finish this epoch's report, then stop
                    return total
                return k + 1
        return total

    def warm_up_steps(self) -> None:
        """Before the epoch is captured: run eagerly one step of each batch size the epoch has
        (the full one and the smaller last one), so that every op the graph will hold has been
        called with its shapes, and lazy allocations and JIT compilation of any backend happen
        outside capture (the capture protocol of core/ops.py). The parameters are then put back
        bit for bit (through the host: this is before capture) and the step counter is unchanged;
        the loss sum restarts at 0 in the captured epoch."""
        be, cfg = self.backend, self.config
        saved = be.to_host(self.model.flat_params)
        last = (self.steps_per_epoch - 1) * cfg.batch_size
        for start in sorted({0, last}):
            self.step(start, min(cfg.batch_size, self.n_train - start))
        self.comm.drain()
        be.copy_from_host(np.ascontiguousarray(saved.reshape(-1)), self.model.flat_params)

    def train_epoch_graph(self) -> None:
        """Queue one epoch as the replay of its graph (captured on first use)."""
        if self._epoch_graph is None:
            self.warm_up_steps()
            steps_before = self.steps_done
            self._epoch_graph = self._captured(lambda: self._queue_steps(0))
            self.steps_done = steps_before  # capturing ran no step
        self._epoch_graph.launch()
        self.steps_done += self.steps_per_epoch

    def train_epoch(self, epoch: int = 1) -> float:
        """One pass over the training set in file order; returns the epoch's training loss
        (mean cross-entropy over the epoch's samples, as seen during training, plus the reg term).

        With CUDA graphs the first epoch is captured (every step, the smaller last batch and the
        exchange included) and every epoch replays that one graph."""
        self._run_steps(epoch, 0, None)
        return self._epoch_loss()

    def train(self, on_epoch: Callable[[EpochStats], None] | None = None, *,
              start_epoch: int = 1, first_step: int = 0,
              on_step: Callable[[int, int], bool] | None = None,
              observe: Callable[[StepInfo], None] | None = None) -> list[EpochStats]:
        """Train epochs ``start_epoch``..``config.epochs``; the first of them from step
        ``first_step`` (a resume inside an epoch: set its partial loss with set_partial_nll).

        ``on_step(epoch, steps_done)`` is called after steps and returns True to stop; the
        position reached is then ``self.stopped_at`` = (epoch, steps done in it) and no
        EpochStats is made for an unfinished epoch. With CUDA graphs a whole epoch is one graph,
        so on_step is called once per epoch (at its end, steps_done = steps_per_epoch), and a
        partial epoch (first_step > 0) runs eagerly. ``observe(StepInfo)`` (every rank) is called
        after every step, e.g. by --verify to check it; observed epochs run eagerly."""
        history = []
        self.stopped_at = None
        for epoch in range(start_epoch, self.config.epochs + 1):
            began = time.perf_counter()
            first = first_step if epoch == start_epoch else 0
            done = self._run_steps(epoch, first, on_step, observe)
            self.check_exact_range(epoch)
            if done < self.steps_per_epoch:
                self.stopped_at = (epoch, done)
                break
            loss = self._epoch_loss()
            seconds = time.perf_counter() - began  # the loss is read back: synchronised
            val_acc = self.evaluate(*self.val) if self.val else None
            stats = EpochStats(epoch, loss, val_acc, seconds)
            history.append(stats)
            if on_epoch:
                on_epoch(stats)
            if self._stop_after_epoch:
                self.stopped_at = (epoch + 1, 0) if epoch < self.config.epochs else None
                if self.stopped_at:
                    break
        return history

    # ------------------------------------------------------------------ resumable epochs
    @property
    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(self.n_train / self.config.batch_size))

    def _run_steps(self, epoch: int, first_step: int,
                   on_step: Callable[[int, int], bool] | None,
                   observe: Callable[[StepInfo], None] | None = None) -> int:
        """Steps ``first_step``.. of an epoch: the replay of the epoch's graph where graphs are
        on and the epoch is whole and unobserved (on_step then called once, at its end), else
        eagerly (_queue_steps). Returns the steps done in the epoch; ends drained."""
        total = self.steps_per_epoch
        self._stop_after_epoch = False
        if self.use_graphs and first_step == 0 and observe is None:
            self.train_epoch_graph()
            self.comm.drain()
            self._stop_after_epoch = bool(on_step and on_step(epoch, total))
            return total
        done = self._queue_steps(epoch, first_step, on_step, observe)
        self.comm.drain()
        return done

    def _epoch_loss(self) -> float:
        nll = self.partial_nll()
        return nll / max(self.n_train, 1) + self.model.reg_loss(self.config.reg)

    def partial_nll(self) -> float:
        """The loss sum of the current epoch so far, summed over ranks (collective)."""
        self.comm.drain()
        return float(self.comm.allreduce_host(
            self.backend.to_host(self._nll).astype(np.float64))[0])

    def set_partial_nll(self, value: float) -> None:
        """Restore the loss sum of a partial epoch (a resume): on rank 0, 0 on the others."""
        self.backend.copy_from_host(
            np.array([value if self.comm.rank == 0 else 0.0], dtype=self.backend.dtype), self._nll)

    def check_exact_range(self, epoch: int) -> None:
        """--exact: raise ExactRangeError (exit 3) on every rank once any rank's exact split met
        a value outside its grid (collective; a no-op without --exact)."""
        if not self.exact:
            return
        flags = self.comm.allreduce_host(np.array([float(self.model.out_of_range())]))
        if flags[0]:
            raise ExactRangeError(
                f"--exact: a value left its exact grid by the end of epoch {epoch} (inf or nan, or "
                f"a bound of core/exact.py broken): the products would no longer be exact")

    def params_sha256(self) -> str:
        """SHA-256 of the parameters (float64, flat-buffer order): --exact's proof of identity."""
        return params_sha256(self.backend.to_host(self.model.flat_params).astype(np.float64))

    def params_finite(self) -> bool:
        """False once any parameter is inf or nan (training diverged)."""
        return math.isfinite(self.backend.sum_squares(self.model.flat_params))

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, X, Y) -> float:
        """Argmax accuracy over the columns of device arrays X, Y, the work split over ranks by
        the course rule and the counts summed over ranks (true sample counts, not a mean of means)."""
        be = self.backend
        n = int(X.shape[1])
        if self.use_graphs and self.val is not None and X is self.val[0]:
            # the validation set is evaluated every epoch: one graph for its whole pass
            graph = self._eval_graphs.get(id(X))
            if graph is None:
                self._queue_count(X, Y)  # eager warm-up of what is captured (core/ops.py)
                graph = self._eval_graphs[id(X)] = self._captured(lambda: self._queue_count(X, Y))
            graph.launch()
        else:
            self._queue_count(X, Y)
        correct = self.comm.allreduce_host(be.to_host(self._correct).astype(np.float64))[0]
        return correct / max(n, 1)

    def _queue_count(self, X, Y) -> None:
        """Queue the count of this rank's correctly classified columns into ``_correct``."""
        be, model = self.backend, self.model
        lo, hi = rank_slice(0, int(X.shape[1]), self.comm.size, self.comm.rank)
        be.fill(self._correct, 0.0)
        for start in range(lo, hi, model.max_cols):
            stop = min(start + model.max_cols, hi)
            _, yhat = model.forward(be.cols(X, start, stop))
            be.count_correct(yhat, be.cols(Y, start, stop), self._correct)

    def evaluate_host(self, x: np.ndarray, y: np.ndarray) -> float:
        """Accuracy on a host data set (e.g. the test set), uploaded once for this call."""
        return self.evaluate(self.backend.from_host(x), self.backend.from_host(np.asarray(y, np.int32)))

    def params(self) -> dict[str, np.ndarray]:
        return self.model.params_to_host()
