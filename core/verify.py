"""``--verify``: check the implementation step by step against core/reference.py.

Lockstep (the default, ``--verify`` or ``--verify=lockstep``)
-------------------------------------------------------------
Beside the training, rank 0 runs the float64 NumPy reference. At every checked step (every step,
or every K-th with ``--verify-every K``) it computes that step from the parameters the backend had
BEFORE the step, on the same global minibatch, and compares with what the backend produced: the
summed gradient after the exchange (reg term included) and the updated parameters. Then the
reference takes the backend's parameters again, so errors never compound: each step is judged on
its own rounding, not on the chaotic growth of rounding differences over a long run. Before the
first step it also checks what the trainer was given against the reference's own reading of
docs/spec.md ("Minibatches", "Initialisation"): the training and validation images (first N
rows; validation from the END of the file) and the initial parameters (its own draw from the
seed). On every step, on every rank, it checks the trainer's schedule: ceil(N / B) steps an epoch, in file order, the last one smaller.

Errors are relative max-norms, as the course's check: ``||S - P||_inf / ||S||_inf`` per
parameter (S the reference, P the backend), for each of W1, b1, W2, b2 and each of "gradient"
and "updated value".

Tolerance of one step (``step_tolerance``)
------------------------------------------
One step chains four accumulations per output element: z1 = W1 x (K = 784 terms), z2 = W2 a1
(K = H), da1 = W2^T diff (K = 10) and the gradient sums over the minibatch (K = B, split over the
ranks and summed by the allreduce: B/P + P <= B terms). Rounding a sum of K terms in unit
roundoff u (2^-53 for float64, 2^-24 for float32) errs by at most gamma_K = K u / (1 - K u) of the
sum of the magnitudes of its terms (Higham, *Accuracy and Stability*, 3.1); errors entering a sum
are carried through it, so the chain's bound adds up to K u with K = 784 + H + 10 + B. That
worst case assumes every rounding error has the same sign; rounding errors behave like independent
zero-mean variables, and then the error is below lambda sqrt(K) u with probability at least
1 - 2 exp(-lambda^2 / 2) per element (Higham & Mary, SIAM J. Sci. Comput. 41(5), 2019, thm 2.8).
We take::

    tolerance = C * sqrt(784 + H + 10 + B) * u,    C = 10

C covers lambda (about 5 for the ~10^5 elements of a step) and two effects the bound leaves out:
the relative max-norm divides by ||S||_inf instead of the sum of the magnitudes (a minibatch
gradient is a mean of terms of both signs; measured ratio up to 25 for db2, 5 for dW1), and the
conditioning of the elementwise functions on raw pixels (|z1| up to tens, so sigmoid and its
derivative a (1 - a) amplify the error of z1; this dominates float32). The float32 backend is
judged against the float64 reference, so its whole float32 rounding counts. For the course's
grading shape (H = 100, B = 800; K = 1694) this gives 4.6e-14 in float64 and 2.5e-5 in float32.
Measured on full MNIST, grading mode 2 (raw pixels, lr 0.01, 10 epochs, 680 steps), the worst
per-step error of a correct run is 4.2e-15 (float64) and 7.7e-6 (float32) with the NumPy
backend, 3.6e-15 / 1.6e-6 with a gemm that sums sequentially like a GPU thread. A bug is
caught when it changes a result by more than that: a product that drops one term of a 784- or
800-term sum, a sign, an index, a missing or doubled reg, a local instead of global
normalisation. A one-ulp error in a single intermediate element is below the rounding every
correct implementation commits and cannot be told apart from it by any tolerance.

Final (``--verify=final``)
--------------------------
Train the reference from its own initialisation for the whole run and compare the final
parameters (and those after every epoch, to show how the difference grew). Over many steps the
rounding differences of two correct implementations are amplified by the training dynamics (6e-5
after 680 steps of grading mode 2 under ``mpirun -n 2`` in float64), so for a run of more than
one step the result is information, not pass/fail; for a single step it is exactly the lockstep
check and fails above the step tolerance.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from core import reference
from core.errors import EXIT_VERIFY

#: exit code of a run whose --verify failed (2 is a user error, 1 a crash)
VERIFY_FAILED_EXIT = EXIT_VERIFY
#: unit roundoff u of each dtype
UNIT_ROUNDOFF = {"float64": 2.0 ** -53, "float32": 2.0 ** -24}
#: safety factor C of step_tolerance (see the module docstring)
SAFETY = 10.0
QUANTITIES = ("gradient", "updated")
CAUSAL_ORDER = ("W2", "b2", "W1", "b1")  # backprop computes the output layer first


def step_tolerance(dtype: str, hidden: int, batch: int) -> float:
    """Largest relative max-norm error of one correct step: C sqrt(784 + H + 10 + B) u."""
    return SAFETY * math.sqrt(reference.INPUTS + hidden + reference.CLASSES + batch) \
        * UNIT_ROUNDOFF[str(dtype)]


def relative_max_error(expected: np.ndarray, actual: np.ndarray) -> float:
    """||S - P||_inf / ||S||_inf over all elements (the course's check); the absolute error when
    S is all zeros; inf for a shape mismatch or a NaN."""
    expected = np.asarray(expected, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    if expected.shape != actual.shape:
        return math.inf
    if expected.size == 0:
        return 0.0
    diff = np.abs(expected - actual)
    if np.isnan(diff).any():
        return math.inf
    worst = float(np.max(diff))
    scale = float(np.max(np.abs(expected)))
    return worst / scale if scale else worst


def worst_element(expected: np.ndarray, actual: np.ndarray) -> tuple[tuple[int, ...], float, float]:
    """(index, reference value, backend value) of the element with the largest |S - P|
    (a NaN counts as the largest)."""
    diff = np.abs(np.asarray(expected, np.float64) - np.asarray(actual, np.float64))
    diff = np.where(np.isnan(diff), np.inf, diff)
    index = np.unravel_index(int(np.argmax(diff)), diff.shape)
    return tuple(int(i) for i in index), float(expected[index]), float(actual[index])


class VerifyFailed(Exception):
    """--verify found a difference; every rank raises it at the same step. ``str`` is the
    one-line summary."""


@dataclass
class Finding:
    quantity: str   # "gradient" or "updated"
    name: str       # W1, b1, W2, b2
    error: float
    index: tuple
    expected: float
    actual: float

    def label(self) -> str:
        return f"{'d' if self.quantity == 'gradient' else ''}{self.name}"

    def where(self) -> str:
        return f"{self.label()}[{', '.join(map(str, self.index))}]"


def compare(expected: dict, actual: dict, quantity: str) -> list[Finding]:
    out = []
    for name in CAUSAL_ORDER:
        err = relative_max_error(expected[name], actual[name])
        if expected[name].shape == actual[name].shape and expected[name].size:
            idx, ref, got = worst_element(expected[name], actual[name])
        else:
            idx, ref, got = (), math.nan, math.nan
        out.append(Finding(quantity, name, err, idx, ref, got))
    return out


def _unpack(flat: np.ndarray, hidden: int) -> dict[str, np.ndarray]:
    """The flat buffer's documented layout: W1, b1, W2, b2 back to back, column-major."""
    shapes = {"W1": (hidden, reference.INPUTS), "b1": (hidden,),
              "W2": (reference.CLASSES, hidden), "b2": (reference.CLASSES,)}
    out, offset = {}, 0
    for name in reference.NAMES:
        size = int(np.prod(shapes[name]))
        out[name] = flat[offset:offset + size].reshape(shapes[name], order="F")
        offset += size
    if offset != flat.size:
        raise VerifyFailed(f"verify FAILED: the gradient buffer holds {flat.size} values, the "
                           f"model has {offset}")
    return out


class Lockstep:
    """Observer of DataParallelTrainer.train(observe=...) on every rank; the numerical checks run
    on rank 0 and their verdict is broadcast, so that every rank stops at the same step."""

    def __init__(self, comm, trainer, train: tuple, val: tuple, scale: str, every: int = 1,
                 say=print):
        """``train``, ``val``: the reference's own (uint8 images one per row, labels)."""
        cfg = trainer.config
        self.comm, self.trainer, self.cfg, self.say = comm, trainer, cfg, say
        self.images, self.labels = train[0], np.asarray(train[1])
        self.val_reference = (val[0], np.asarray(val[1]))
        self.scale = scale
        self.every = max(1, int(every))
        self.plan = reference.schedule(len(self.labels), cfg.batch_size)
        self.tolerance = step_tolerance(cfg.dtype, cfg.hidden, cfg.batch_size)
        self.dtype = cfg.dtype
        self.prev = None              # backend parameters before the next checked step (rank 0)
        self.worst = (0.0, None)      # (error, description)
        self.checked = 0
        self.epoch, self.count = 0, 0  # epoch being observed, steps seen in it
        self.seconds = 0.0

    # ------------------------------------------------------------------ before training
    def begin(self, train_x, train_y, val_x, val_y) -> None:
        """Check the data the trainer was given and its initial parameters (all ranks)."""
        verdict = None
        if self.comm.rank == 0:
            began = time.perf_counter()
            verdict = self._check_data(train_x, train_y, val_x, val_y) or self._check_init()
            self.seconds += time.perf_counter() - began
        self._agree(verdict)

    def _check_data(self, train_x, train_y, val_x, val_y):
        tol = 2 * UNIT_ROUNDOFF[self.dtype]  # float32 scaling may round the other way once
        for what, x, y, (img, lab) in (("training", train_x, train_y, (self.images, self.labels)),
                                       ("validation", val_x, val_y, self.val_reference)):
            if x.shape[1] != len(lab) or len(y) != len(lab):
                return (f"verify FAILED before training: the trainer got {x.shape[1]} {what} "
                        f"images, the reference reads {len(lab)} from the training file "
                        f"(docs/spec.md, Minibatches: first N for training, validation held out "
                        f"from the END)")
            if not np.array_equal(np.asarray(y), lab):
                return f"verify FAILED before training: the {what} labels differ from the file's"
            for lo in range(0, len(lab), 4096):
                hi = min(lo + 4096, len(lab))
                ref = reference.scale(img[lo:hi], self.scale)
                err = relative_max_error(ref, x[:, lo:hi])
                if err > tol:
                    idx, a, b = worst_element(ref, x[:, lo:hi])
                    return (f"verify FAILED before training: {what} image {lo + idx[1]} differs "
                            f"from the reference's (relative error {err:.1e}; pixel {idx[0]}: "
                            f"trainer {b:.9g}, reference {a:.9g})")
        return None

    def _check_init(self):
        """Both draw the same float64 numbers: the trainer's must be them, rounded to its dtype."""
        expected = {k: v.astype(self.dtype) for k, v in
                    reference.init_params(self.cfg.hidden, self.cfg.seed).items()}
        self.prev = self.trainer.params()
        for f in compare(expected, self.prev, "initial"):
            if f.error != 0.0:
                return (f"verify FAILED before training: initial {f.name} differs from the "
                        f"reference's draw (W = 0.01 N(0,1) from seed {self.cfg.seed}, W1 before "
                        f"W2, b = 0): relative error {f.error:.3e}; worst element "
                        f"{f.name}[{', '.join(map(str, f.index))}]: backend {f.actual:.17g}, "
                        f"reference {f.expected:.17g}")
        return None

    # ------------------------------------------------------------------ each step
    def on_step(self, info) -> None:
        """After each step (every rank): the schedule always; the numbers on checked steps."""
        self._check_schedule(info)
        if info.step % self.every:
            if self.comm.rank == 0 and (info.step + 1) % self.every == 0:
                self.prev = self.trainer.params()  # the next step is checked: keep its start
            return
        verdict = None
        if self.comm.rank == 0:
            began = time.perf_counter()
            verdict = self._check_numbers(info)
            self.seconds += time.perf_counter() - began
        self._agree(verdict)

    def _check_schedule(self, info) -> None:
        if info.epoch != self.epoch:
            self._check_epoch_complete()
            if info.epoch != self.epoch + 1 or info.index != 0:
                self._fail_everywhere(f"verify FAILED: step {info.index + 1} of epoch "
                                      f"{info.epoch} "
                                      f"follows epoch {self.epoch}")
            self.epoch, self.count = info.epoch, 0
        where = f"epoch {info.epoch} step {info.index + 1}"  # 1-based, as every message
        if info.index != self.count:
            self._fail_everywhere(f"verify FAILED at {where}: expected step {self.count + 1}")
        if info.index >= len(self.plan):
            self._fail_everywhere(f"verify FAILED at {where}: an epoch of {len(self.labels)} "
                                  f"samples in batches of {self.cfg.batch_size} has only "
                                  f"{len(self.plan)} steps")
        start, size = self.plan[info.index]
        if (info.start, info.batch) != (start, size):
            self._fail_everywhere(f"verify FAILED at {where}: the trainer's minibatch is samples "
                                  f"[{info.start}, {info.start + info.batch}), the reference's "
                                  f"[{start}, {start + size})")
        self.count += 1

    def _check_epoch_complete(self) -> None:
        if self.epoch and self.count != len(self.plan):
            last_start, last_size = self.plan[-1]
            self._fail_everywhere(
                f"verify FAILED in epoch {self.epoch}: the trainer took {self.count} steps, the "
                f"reference {len(self.plan)} (ceil({len(self.labels)} / {self.cfg.batch_size}); "
                f"the last one samples [{last_start}, {last_start + last_size}))")

    def _check_numbers(self, info):
        """The verdict of one checked step on rank 0: None, or the one-line summary. Returns it
        rather than raising, so that the other ranks (waiting in the broadcast) hear it too."""
        try:
            return self._compare_step(info)
        except VerifyFailed as failure:
            return str(failure)

    def _compare_step(self, info):
        be, model = self.trainer.backend, self.trainer.model
        start, size = info.start, info.batch
        before = {k: v.astype(np.float64) for k, v in self.prev.items()}
        x = reference.scale(self.images[start:start + size], self.scale)
        grad, updated = reference.step(before, x, self.labels[start:start + size],
                                       self.cfg.reg, self.cfg.lr)
        got_grad = _unpack(be.to_host(model.flat_grads), self.cfg.hidden)
        got = self.trainer.params()
        self.prev = got
        self.checked += 1
        findings = compare(grad, got_grad, "gradient") + compare(updated, got, "updated")
        where = f"epoch {info.epoch} step {info.index + 1}"  # 1-based, as every message
        for f in findings:
            if f.error > self.worst[0] or self.worst[1] is None:
                self.worst = (f.error, f"{f.quantity} {f.name}, {where}")
        bad = [f for f in findings if not f.error <= self.tolerance]
        if not bad:
            return None
        fmt = ".17g" if self.dtype == "float64" else ".9g"
        self.say(f"verify: step check at {where} (training step {info.step + 1}, samples "
                 f"[{start}, {start + size})), {self.dtype}, tolerance {self.tolerance:.1e}:")
        for f in findings:
            mark = "FAILED" if f in bad else "ok"
            self.say(f"verify:   {f.quantity:8s} {f.name:2s} relative max-norm error "
                     f"{f.error:.3e}  {mark:6s} worst {f.where()}: backend {f.actual:{fmt}}, "
                     f"reference {f.expected:{fmt}}")
        f = bad[0]
        what = "gradient of" if f.quantity == "gradient" else "updated"
        return (f"verify FAILED at {where} (samples [{start}, {start + size})): {what} {f.name} "
                f"relative max-norm error {f.error:.3e} > tolerance {self.tolerance:.1e} "
                f"({self.dtype}); worst element {f.where()}: backend {f.actual:{fmt}}, reference "
                f"{f.expected:{fmt}}")

    # ------------------------------------------------------------------ after training
    def end(self) -> str:
        """Check the last epoch and the number of epochs (all ranks); return the success line."""
        self._check_epoch_complete()
        if self.epoch != self.cfg.epochs:
            self._fail_everywhere(f"verify FAILED: the trainer ran {self.epoch} epochs, "
                                  f"asked for {self.cfg.epochs}")
        err, where = self.worst
        return (f"verify passed: {self.checked} of {self.cfg.epochs * len(self.plan)} steps checked "
                f"in lockstep against the float64 NumPy reference; worst per-step relative error "
                f"{err:.2e} ({where}), tolerance {self.tolerance:.1e} ({self.dtype}); "
                f"reference took {self.seconds:.1f} s on rank 0")

    # ------------------------------------------------------------------ agreement
    def _agree(self, verdict) -> None:
        verdict = self.comm.bcast(verdict) if self.comm.size > 1 else verdict
        if verdict:
            raise VerifyFailed(verdict)

    @staticmethod
    def _fail_everywhere(message: str):
        """A schedule mismatch is seen by every rank alike: no communication needed."""
        raise VerifyFailed(message)


def lockstep_for(args, comm, trainer, data, train_x, train_y, say) -> Lockstep:
    """The Lockstep observer of a CLI run, its data checked: the reference reads the training file
    itself (core/reference.py's split and scaling). Call on every rank before training."""
    train_rows, val_rows = reference.split(len(data.train_labels), args.train_size,
                                           args.val_size)
    rows = lambda r: (data.train_images[r.start:r.stop], data.train_labels[r.start:r.stop])
    checker = Lockstep(comm, trainer, rows(train_rows), rows(val_rows), args.scale,
                       args.verify_every, say)
    val_x, val_y = np.zeros((reference.INPUTS, 0)), np.zeros(0, np.int32)
    if comm.rank == 0 and trainer.val is not None:  # what the trainer holds, back from its device
        val_x, val_y = (trainer.backend.to_host(a) for a in trainer.val)
    checker.begin(train_x, train_y, val_x, val_y)
    return checker


def final_for(args, data, snapshots: list[dict], cfg, say) -> int:
    """--verify=final of a CLI run, on rank 0: the reference, on its own training rows
    (core/reference.py's split), against the parameters after each epoch (``snapshots``)."""
    rows, _ = reference.split(len(data.train_labels), args.train_size, args.val_size)
    take = slice(rows.start, rows.stop)
    return final(snapshots, data.train_images[take], data.train_labels[take], args.scale, cfg, say)


def final(trainer_epochs: list[dict], images, labels, scale: str, cfg, say) -> int:
    """--verify=final on rank 0: train the reference from the seed for the whole run; print the
    relative error per parameter after every epoch (how it grew). Pass/fail only for a one-step
    run (then it is exactly one lockstep check); otherwise information, exit status 0."""
    began = time.perf_counter()
    steps = cfg.epochs * len(reference.schedule(len(labels), cfg.batch_size))
    growth = []

    def on_epoch(epoch, params):
        growth.append(max(relative_max_error(params[k], trainer_epochs[epoch - 1][k])
                          for k in reference.NAMES))

    expected = reference.train(images, labels, scale, cfg.hidden, cfg.batch_size, cfg.epochs,
                               cfg.reg, cfg.lr, cfg.seed, on_epoch)
    got = trainer_epochs[-1]
    errors = {k: relative_max_error(expected[k], got[k]) for k in reference.NAMES}
    for k in reference.NAMES:
        say(f"verify final {k:2s}: relative max-norm error {errors[k]:.3e}")
    say("verify final: worst error after each epoch: "
        + ", ".join(f"{i + 1}: {e:.1e}" for i, e in enumerate(growth)))
    worst = max(errors.values())
    tolerance = step_tolerance(cfg.dtype, cfg.hidden, cfg.batch_size)
    seconds = time.perf_counter() - began
    if steps == 1:
        verdict = "passed" if worst <= tolerance else "FAILED"
        say(f"verify final {verdict}: one step, worst {worst:.3e}, tolerance {tolerance:.1e} "
            f"({cfg.dtype}); reference took {seconds:.1f} s")
        return 0 if worst <= tolerance else VERIFY_FAILED_EXIT
    say(f"verify final (information, not pass/fail): worst {worst:.3e} after {steps} steps "
        f"against the float64 reference trained from the seed; over many steps rounding "
        f"differences of correct implementations grow with the training dynamics (one step's "
        f"tolerance is {tolerance:.1e}); --verify checks every step; reference took "
        f"{seconds:.1f} s")
    return 0
