"""The training session of ``python -m core.train``: what the CLI adds to the data-parallel loop
(core/data_parallel.py) while it runs, and the report after it.

Per step and epoch: the progress bar or lines, metrics.jsonl and checkpoints of --run-dir, the
stop flag of Ctrl-C/SIGTERM (exit 130 after a checkpoint) and the divergence check (exit 3).
After training: the test accuracy, --exact's parameter hash, --save, and --verify=final.
Every rank calls every method (they hold collectives); only rank 0 writes and prints.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import numpy as np

from core import checkpoint
from core.checkpoint import (CHECKPOINT_SUBDIR, checkpoint_name, save_checkpoint,
                             write_run_checkpoint)
from core.data_parallel import scale_images
from core.errors import EXIT_DIVERGED, EXIT_OUTPUT, OutputError, UserError
from core.job import launched_size
from core.progress import Progress, wants_bar
from core.rescue import failure_line, rescue
from core.startup import deferred, phase
from core.verify import VERIFY_FAILED_EXIT, VerifyFailed, final_for, lockstep_for


class Diverged(UserError):
    """The loss (the parameters) became inf or nan: exit 3."""

    exit_code = EXIT_DIVERGED


class StopRequest:
    """SIGINT/SIGTERM ask every rank to stop at the next step boundary (the ranks agree through
    a small allreduce of [stop, nonfinite] at the same steps); a second one exits at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, comm):
        self.comm, self.signum, self._previous = comm, None, {}

    def _handle(self, signum, frame):
        if self.signum is not None:  # the second Ctrl-C: now
            if self.comm.size > 1:
                self.comm.abort(130)
            os._exit(130)
        self.signum = signum

    def __enter__(self):
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


class TrainingSession:
    """The CLI's part of a training run: progress, metrics, checkpoints, stop and divergence
    checks (every rank calls every method; only rank 0 writes and prints)."""

    def __init__(self, args, comm, trainer, rundir, run_config, ckpt):
        self.args, self.comm, self.trainer, self.rundir = args, comm, trainer, rundir
        self.run_config, self.ckpt = run_config, ckpt
        self.config = trainer.config
        self.root = comm.rank == 0
        choice = getattr(args, "progress", "auto")
        self.progress = Progress(epochs=self.config.epochs,
                                 steps_per_epoch=trainer.steps_per_epoch,
                                 enabled=self.root, quiet=args.quiet, silent=choice == "none",
                                 bar=wants_bar(choice, sys.stdout, launched_size() > 1))
        # How often (in steps; and at every epoch's end) the ranks compare the stop/non-finite
        # flags: every step in one process on the host; every 10 steps across ranks (one more
        # small collective per step would cost more than the step at small batches); every 20
        # on a GPU (reading the flags synchronises the device). The same steps on every rank.
        self.check_every = (20 if not trainer.backend.host_resident
                            else 1 if comm.size == 1 else 10)
        self.stop = StopRequest(comm)
        self.last_checkpoint_epoch = ckpt.epoch if ckpt is not None and not ckpt.step else None
        self.observe = None  # per-step observer: --verify's lockstep check
        self.snapshots: list = []  # --verify=final: rank 0's parameters after each epoch
        self._done = 0
        self._epoch = None

    # ------------------------------------------------------------------ per step / epoch
    def on_step(self, epoch: int, done: int) -> bool:
        trainer, spe = self.trainer, self.trainer.steps_per_epoch
        if epoch != self._epoch:
            first = (self.ckpt.step if self.ckpt is not None and epoch == self.ckpt.epoch + 1
                     else 0)
            self.progress.start_epoch(epoch, first_step=first)
            self._epoch, self._done = epoch, first
        n, b = trainer.n_train, self.config.batch_size
        self.progress.on_step(samples=min(done * b, n) - min(self._done * b, n),
                              steps=done - self._done,
                              loss=lambda: self._running_loss(min(done * b, n)))
        self._done = done
        if done % self.check_every and done != spe:
            return False
        nonfinite = not trainer.params_finite()
        flags = self.comm.allreduce_host(np.array([self.stop.signum is not None, nonfinite],
                                                  dtype=np.float64))
        if flags[1]:
            self.progress.close()
            hint = " (--scale raw needs --lr near 0.01)" if self.args.scale == "raw" else ""
            raise Diverged(f"loss is not finite at epoch {epoch} step {done}; lower --lr{hint}")
        return bool(flags[0])

    def _running_loss(self, samples: int) -> float | None:
        """The bar's running loss: the epoch's loss sum so far over its samples, from rank 0's
        share (no collective: called only when the bar is redrawn, on rank 0)."""
        nll = getattr(self.trainer, "_nll", None)
        if nll is None or not samples:
            return None
        local = float(self.trainer.backend.to_host(nll)[0])
        return local * self.comm.size / samples

    def on_epoch(self, stats) -> None:
        self.progress.end_stats(stats)
        if self.args.verify == "final" and self.root:
            self.snapshots.append(self.trainer.params())  # to show how the difference grew
        self._epoch = None
        spe = self.trainer.steps_per_epoch
        if self.args.run_dir:
            self._append_metrics(stats, spe)
        every = self.args.checkpoint_every
        if every and (stats.epoch % every == 0 or stats.epoch == self.config.epochs):
            self.write_checkpoint(stats.epoch, 0)

    def write_checkpoint(self, epoch: int, step: int) -> str | None:
        """Checkpoint after ``epoch`` completed epochs and ``step`` steps of the next (collective:
        the partial loss is summed over ranks, and the ranks hear whether the write worked);
        rank 0 writes. A failed write is rescued elsewhere and ends the run (OutputError, exit
        5) on every rank. Returns the path on rank 0."""
        if not self.args.run_dir:  # (self.rundir exists on rank 0 only)
            return None
        extras = {"epoch_nll_sum": self.trainer.partial_nll()} if step else {}
        path, failure = None, None
        if self.root:
            try:
                with deferred():  # a signal now waits for the checkpoint to be whole
                    path = write_run_checkpoint(self.rundir.path, self.trainer.params(),
                                                epoch=epoch, step=step, config=self.run_config,
                                                dtype=self.config.dtype, extras=extras)
            except OSError as exc:
                where = self.rundir.path / CHECKPOINT_SUBDIR / checkpoint_name(
                    epoch, step, self.trainer.steps_per_epoch)
                failure = self._rescue_checkpoint(f"checkpoint {where}", exc, epoch, step, extras)
        self._agree_on(failure)
        if not step:
            self.last_checkpoint_epoch = epoch
        return str(path) if path is not None else None

    def _append_metrics(self, stats, spe: int) -> None:
        """metrics.jsonl's line of an epoch (rank 0); a failed write is rescued as a checkpoint
        of the epoch's end and ends the run on every rank (exit 5)."""
        failure = None
        if self.root:
            samples = self.progress.totals.history[-1][4] if self.progress.totals.history else 0
            more = {"params_sha256": self.trainer.params_sha256()} if self.args.exact else {}
            try:
                self.rundir.append_metrics(self.rundir.epoch_record(
                    epoch=stats.epoch, step=stats.epoch * spe, loss=stats.loss,
                    val_accuracy=stats.val_accuracy, seconds=stats.seconds, samples=samples,
                    **more))
            except OSError as exc:
                failure = self._rescue_checkpoint(f"--run-dir {self.rundir.metrics_path}", exc,
                                                  stats.epoch, 0, {})
        self._agree_on(failure)

    def _rescue_checkpoint(self, what: str, exc: OSError, epoch: int, step: int,
                           extras: dict) -> str:
        """Rank 0: the checkpoint of this position written to a fallback location; the line."""
        params = self.trainer.params()

        def write(path):
            save_checkpoint(path, params, epoch=epoch, step=step, config=self.run_config,
                            dtype=self.config.dtype, extras=extras)

        with deferred():
            saved = rescue(write, checkpoint_name(epoch, step, self.trainer.steps_per_epoch))
        pos = (f"epoch {epoch + 1} step {step}" if step else f"the end of epoch {epoch}")
        return f"training stopped at {pos}: " + failure_line(what, exc, saved, resume=True)

    def _agree_on(self, failure: str | None) -> None:
        """Every rank hears rank 0's write failure (one small broadcast) and stops with it."""
        if self.comm.size > 1:
            failure = self.comm.bcast(failure)
        if failure:
            self.progress.close()
            raise OutputError(failure)

    # ------------------------------------------------------------------ the run
    def train(self) -> None:
        """Train to the end, or stop for a signal (exit 130 after a checkpoint and --save) or a
        divergence (Diverged, exit 3, the last good checkpoint kept)."""
        ckpt, trainer = self.ckpt, self.trainer
        start_epoch = ckpt.epoch + 1 if ckpt is not None else 1
        first_step = ckpt.step if ckpt is not None else 0
        phase("training")  # (ends here if a start-up signal was swallowed)
        with self.stop, np.errstate(all="ignore"):
            trainer.train(on_epoch=self.on_epoch, start_epoch=start_epoch,
                          first_step=first_step, on_step=self.on_step, observe=self.observe)
        self.progress.close()
        if trainer.stopped_at is None:
            if self.args.run_dir and self.last_checkpoint_epoch != self.config.epochs:
                self.write_checkpoint(self.config.epochs, 0)  # the end of a run resumes nowhere
            return
        epoch, step = trainer.stopped_at
        self.write_checkpoint(epoch - 1, step)
        failure = save_final(self, trainer.params()) if self.args.save else None
        if failure:
            raise OutputError(failure)
        where = (f"resume with --resume {self.args.run_dir}" if self.args.run_dir
                 else "no --run-dir, so no checkpoint to resume from")
        if self.root:
            print(f"dpmlp: interrupted at epoch {epoch} step {step}; {where}", file=sys.stderr,
                  flush=True)
        raise SystemExit(130)


def train_and_report(session: TrainingSession, data, train_x, train_y, say) -> int:
    """Train (with --verify's lockstep check beside it), then the test accuracy, --exact's hash,
    --save, --verify=final and the summary line, last: the run's exit status (4 when --verify
    failed, 5 when --save could not be written where asked)."""
    args, comm, trainer = session.args, session.comm, session.trainer
    try:
        lockstep = None
        if args.verify == "lockstep":
            lockstep = lockstep_for(args, comm, trainer, data, train_x, train_y, say)
            session.observe = lockstep.on_step
        session.train()
        phase("testing and writing the results", trained=True)
        if lockstep:
            say(lockstep.end(), flush=True)
    except VerifyFailed as failure:
        session.progress.close()
        say(str(failure), flush=True)
        if comm.rank == 0:  # the failure's first line where errors go: on stderr
            print(f"dpmlp: error: {str(failure).splitlines()[0]}", file=sys.stderr, flush=True)
        return VERIFY_FAILED_EXIT
    test_acc = _test_accuracy(session, data, say)
    params = trainer.params()
    if args.exact:
        trainer.check_exact_range(trainer.config.epochs)  # the test pass's products (exit 3)
        sha = trainer.params_sha256()
        if comm.rank == 0:  # --exact's result: printed with --quiet too
            print(f"params sha256 {sha}", flush=True)
    failure = save_final(session, params) if args.save else None
    if failure is None and args.save:
        say(f"saved W1, b1, W2, b2 to {args.save}")
    status = 0
    if args.verify == "final":
        with comm.unwatched():  # the other ranks wait while rank 0 runs the reference
            status = comm.bcast(final_for(args, data, session.snapshots, trainer.config, say)
                                if comm.rank == 0 else None)
    session.progress.finish(test_accuracy=test_acc)
    if failure:
        say(f"dpmlp: error: {failure}", file=sys.stderr, flush=True)
        return EXIT_OUTPUT
    return status


def _test_accuracy(session: TrainingSession, data, say) -> float:
    args, trainer = session.args, session.trainer
    test_x = scale_images(data.test_images, args.scale, np.dtype(args.dtype).type)
    with session.progress.task("test", total=len(data.test_labels)) as task, \
            np.errstate(all="ignore"):  # saturated sigmoids of a poor run are not news
        test_acc = trainer.evaluate_host(test_x, data.test_labels)
        task.update(len(data.test_labels))
    say(f"test accuracy {100 * test_acc:.2f}% ({len(data.test_labels)} images)")
    return test_acc


def save_final(session: TrainingSession, params: dict) -> str | None:
    """--save (rank 0); where it cannot be written, the parameters go to the run directory or
    a fallback location (core/rescue.py). Returns the failure's line (every rank), or None."""
    failure = None
    if session.root:
        try:
            with deferred():  # a signal now waits for --save to be written
                checkpoint.save_params(session.args.save, params)
        except OSError as exc:
            first = [session.rundir.path] if session.rundir is not None else []
            with deferred():
                saved = rescue(lambda path: checkpoint.save_params(path, params),
                               Path(session.args.save).name, first)
            failure = failure_line(f"--save {session.args.save}", exc, saved, resume=False)
    return session.comm.bcast(failure) if session.comm.size > 1 else failure
