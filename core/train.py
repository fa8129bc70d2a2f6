"""Command line: ``python -m core.train`` (one process) or ``mpirun -n P python -m core.train``.

Errors that are the user's (flags, files, environment) are one line on stderr and exit code 2.
Setup runs on every rank and the ranks agree on the outcome before training, so a bad file on one
rank ends all of them cleanly; a failure during training aborts the whole job naming the rank
(the job's lifecycle is core/job.py).
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import socket
import sys

import numpy as np

from core import __version__
from core.errors import UserError
from core import checkpoint
from core.checkpoint import (check_writable_target, load_checkpoint, validate_checkpoint,
                             write_run_checkpoint)
from core.job import (GEMM_CHOICES, Job, check_gemm_flags, comm_options,
                      run_with_error_policy)
from core.plugins import Registry
from core.progress import Progress
from core.rundir import RunDir
from core.threads import count_local_ranks, limit_blas_threads
from core.data_parallel import (CUDA_GRAPH_CHOICES, DataParallelTrainer, TrainConfig,
                                scale_images)
from core.exact import ExactRangeError, Slicing
from core.model import INPUTS, ParamLayout



class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) printed by rank 0 only."""

    def error(self, message):
        raise UserError(message)


def _number(text, convert, what):
    try:
        return convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None


def _positive_int(text):
    value = _number(text, int, "a positive integer")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _non_negative_int(text):
    value = _number(text, int, "an integer >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def _positive_float(text):
    value = _number(text, float, "a positive number")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _non_negative_float(text):
    value = _number(text, float, "a number >= 0")
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m core.train",
                description="Data-parallel training of a two-layer MLP on MNIST.")
    model = p.add_argument_group("model and optimisation (course flags)")
    model.add_argument("-n", "--hidden", type=_positive_int, default=256, help="hidden units (256)")
    model.add_argument("-r", "--reg", type=_non_negative_float, default=1e-5,
                       help="L2 regularisation strength (1e-5; the course used 1e-4)")
    model.add_argument("-l", "--lr", type=_positive_float, default=1.0, help="learning rate (1.0)")
    model.add_argument("-e", "--epochs", type=_positive_int, default=10, help="epochs (10)")
    model.add_argument("-b", "--batch-size", type=_positive_int, default=100,
                       help="global minibatch size, split over ranks (100)")
    model.add_argument("--seed", type=_non_negative_int, default=0,
                       help="seed of the initial weights (0)")
    model.add_argument("--dtype", choices=("float32", "float64"), default=None,
                       help="float32 (default) or float64 (the default with --exact)")
    model.add_argument("--exact", action="store_true",
                       help="bit-identical training on every backend and rank count: float64 with "
                            "exact products (Ozaki splitting; several times slower); prints the "
                            "parameters' SHA-256")
    model.add_argument("--scale", choices=("unit", "raw"), default="unit",
                       help="input pixels scaled to [0,1] (unit, default) or raw 0..255 as the course")
    run = p.add_argument_group("execution")
    run.add_argument("--backend", default=None,
                     help="compute backend (default: the best available; see --list-backends)")
    run.add_argument("--comm", default="auto",
                     help="communicator: auto (mpi under mpirun with >1 rank, else single), or a name")
    run.add_argument("--cuda-aware-mpi", action="store_true",
                     help="hand device buffers to MPI directly (also DPMLP_CUDA_AWARE_MPI=1); only "
                          "for a CUDA-aware MPI: any other crashes. Default: stage through host")
    run.add_argument("--collective-timeout", type=_non_negative_float, default=None,
                     metavar="SECONDS", help="abort the job, naming the ranks that did not arrive, "
                     "when a collective takes longer (default 300; 0 = off; "
                     "also DPMLP_COLLECTIVE_TIMEOUT)")
    run.add_argument("--cuda-graphs", choices=CUDA_GRAPH_CHOICES, default="auto",
                     help="replay each epoch as one captured CUDA graph: auto (wherever it works, "
                          "else eager with one line saying why), on, off")
    run.add_argument("--gemm", choices=GEMM_CHOICES, default="simt",
                     help="GEMM algorithm: simt (FP32/FP64 FMA kernels, default) or tf32x3 (GPU "
                          "backends, float32, compute capability 8.0+: tensor cores with the "
                          "error-compensated three-product TF32 split)")
    run.add_argument("--list-backends", action="store_true",
                     help="list backends and communicators with availability, then exit")
    data = p.add_argument_group("data")
    data.add_argument("--data-dir", default=None, help="directory with the four MNIST IDX files")
    data.add_argument("--download", action="store_true", help="download MNIST if missing")
    data.add_argument("--train-size", type=_positive_int, default=None,
                      help="train on the first N training images (default: all not held out)")
    data.add_argument("--val-size", type=_non_negative_int, default=None,
                      help="validation images held out from the END of the training file "
                           "(default 10%%: 6000 of MNIST's 60000)")
    out = p.add_argument_group("output and checks")
    out.add_argument("--save", default=None, metavar="PATH.npz",
                     help="write the final W1, b1, W2, b2 (rank 0, atomically)")
    out.add_argument("--verify", nargs="?", const="lockstep", choices=("lockstep", "final"),
                     default=None,
                     help="check every step against a float64 NumPy reference run beside the "
                          "training (lockstep, the default; exit 4 naming the step, parameter and "
                          "element on failure), or compare the final parameters with the "
                          "reference trained from the seed (final: information for long runs)")
    out.add_argument("--verify-every", type=_positive_int, default=1, metavar="K",
                     help="with --verify: check every K-th step only (1)")
    out.add_argument("--run-dir", default=None, metavar="DIR",
                     help="write config.json, metrics.jsonl and checkpoints/ there (rank 0)")
    out.add_argument("--checkpoint-every", type=_positive_int, default=None, metavar="N",
                     help="checkpoint every N epochs and at the end (needs --run-dir); an "
                          "interrupted run with --run-dir always leaves a checkpoint")
    out.add_argument("--resume", default=None, metavar="PATH",
                     help="continue from a checkpoint file or a run directory's latest "
                          "checkpoint (a run directory is also the --run-dir)")
    out.add_argument("--quiet", action="store_true",
                     help="no progress bar and no per-epoch lines (the summary stays)")
    out.add_argument("--version", action="version", version=f"dpmlp {__version__}")
    return p


# ---------------------------------------------------------------------------- listing
def list_backends(registry: Registry) -> str:
    rows = [("kind", "name", "package", "version", "available", "why")]
    for entry in registry.backends() + registry.communicators() + list(registry.broken.values()):
        rows.append((entry.kind, entry.name, entry.package, entry.version,
                     "yes" if entry.available else "no", entry.reason))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:5], widths)) + "  " + r[5]
                     for r in rows)


# ---------------------------------------------------------------------------- setup
def mem_available() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (None where there is no such file)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def memory_estimate(hidden: int, batch: int, ranks: int, itemsize: int, n_train: int,
                    n_val: int, n_images: int, host_resident: bool,
                    exact: bool = False) -> dict[str, int]:
    """Bytes one rank needs, by part: the device's (data set, parameters and gradients,
    activations of one step; with --exact its digits and group sums) and the host's (uint8
    images, scaled copies, parameters). A host backend's device is the host, so both count there."""
    p = ParamLayout(hidden).size
    cols = math.ceil(min(batch, max(n_train, 1)) / ranks)
    n = n_train + n_val
    parts = {"parameters and gradients": 2 * p * itemsize + p * 8,
             "data": itemsize * INPUTS * n + 4 * n + INPUTS * n_images + itemsize * INPUTS * n,
             "activations": itemsize * cols * (2 * hidden + 10)}
    if exact:  # core/exact.py: S (<= 4 below 2^14 samples a batch) digits and group sums
        slices = Slicing.for_depth(batch).slices
        parts["exact digits and group sums"] = itemsize * slices * (
            p + 2 * (INPUTS + 1) * (hidden + cols) + hidden * cols)
    if not host_resident:  # the device's copies are not in host memory
        parts["parameters and gradients"] -= 2 * p * itemsize
        parts["data"] -= itemsize * INPUTS * n + 4 * n
        parts["activations"] = 0
        parts.pop("exact digits and group sums", None)
    return parts


def check_memory(args, ranks: int, local_ranks: int, n_train: int, n_val: int, n_images: int,
                 host_resident: bool, available: int | None = None) -> None:
    """UserError before any large allocation when the run cannot fit in host memory."""
    available = mem_available() if available is None else available
    if available is None:
        return
    parts = memory_estimate(args.hidden, args.batch_size, ranks, np.dtype(args.dtype).itemsize,
                            n_train, n_val, n_images, host_resident, exact=args.exact)
    need = sum(parts.values()) * local_ranks
    if need <= available:
        return
    gb = 1e9
    detail = ", ".join(f"{k} {v * local_ranks / gb:.1f} GB" for k, v in parts.items() if v)
    per = f" for {local_ranks} ranks on this node" if local_ranks > 1 else ""
    raise UserError(f"--hidden {args.hidden} / --batch-size {args.batch_size}: needs about "
                    f"{need / gb:.1f} GB{per} ({detail}), {available / gb:.1f} GB available")


def split_data(data, args):
    """Hold out the validation set from the end of the training file; train on the first N."""
    total = len(data.train_labels)
    val_size = args.val_size if args.val_size is not None else total // 10
    if val_size >= total:
        raise UserError(f"--val-size {val_size}: must be smaller than the {total} training images")
    available = total - val_size
    train_size = args.train_size if args.train_size is not None else available
    if train_size > available:
        raise UserError(f"--train-size {train_size}: only {available} training images remain "
                        f"after holding out --val-size {val_size} (from {data.source})")
    return (data.train_images[:train_size], data.train_labels[:train_size],
            data.train_images[total - val_size:], data.train_labels[total - val_size:])


# ---------------------------------------------------------------------------- interrupts
class Diverged(UserError):
    """The loss (the parameters) became inf or nan: exit 3."""

    exit_code = 3


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


# ---------------------------------------------------------------------------- main
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.dtype is None:
        args.dtype = "float64" if args.exact else "float32"
    elif args.exact and args.dtype != "float64":
        raise UserError(f"--exact: trains in float64; drop --dtype {args.dtype}")
    registry = Registry.load()
    if args.list_backends:
        print(list_backends(registry))
        return 0
    if args.resume and args.run_dir is None and os.path.isdir(args.resume):
        args.run_dir = args.resume  # a run directory given to --resume goes on in itself
    if args.checkpoint_every and not args.run_dir:
        raise UserError("--checkpoint-every: needs --run-dir DIR (where the checkpoints go)")
    check_gemm_flags(args.gemm, args.dtype)
    job = Job.start(args.comm, comm_options(args.cuda_aware_mpi or None, args.collective_timeout),
                    registry)
    comm, say = job.comm, job.say
    local_ranks = count_local_ranks(comm.allgather(socket.gethostname()), comm.rank)

    def preflight():
        run, ckpt = None, None
        if comm.rank == 0:
            if args.save:
                check_writable_target("--save", args.save, "file")
            if args.resume:
                try:
                    ckpt = load_checkpoint(args.resume)
                except checkpoint.CheckpointError as exc:
                    raise UserError(f"--resume {exc}") from None
            if args.run_dir:
                run = RunDir.prepare(args.run_dir)
                if ckpt is None and run.has_run():
                    raise UserError(f"--run-dir {args.run_dir}: already holds a run; continue it "
                                    f"with --resume {args.run_dir}, or choose another directory")
        return run, ckpt

    run, ckpt = job.agree(preflight)
    ckpt = comm.bcast(ckpt)
    line = limit_blas_threads(local_ranks)
    if line:
        say(f"dpmlp: {line}")
    if args.download and comm.size > 1:  # rank 0 downloads, the others then read its files
        from core.data import locate_and_load
        job.agree(lambda: locate_and_load(args.data_dir, True, log=say) if comm.rank == 0 else None)

    def setup():
        from core.data import locate_and_load  # imported late: only needed once flags are valid

        entry, backend = job.make_backend(args.backend, args.dtype, args.gemm)
        data = locate_and_load(args.data_dir, args.download, log=say)
        train_img, train_lab, val_img, val_lab = split_data(data, args)
        check_memory(args, comm.size, local_ranks, len(train_lab), len(val_lab),
                     len(data.train_labels) + len(data.test_labels), backend.host_resident)
        dtype = np.dtype(args.dtype).type
        return entry, backend, data, (scale_images(train_img, args.scale, dtype), train_lab,
                                      scale_images(val_img, args.scale, dtype), val_lab)

    entry, backend, data, (train_x, train_y, val_x, val_y) = job.agree(setup)
    job.agree(lambda: comm.bind_backend(backend))  # NCCL: collective, so after agreement
    if comm.name == "mpi" and comm.accepts_device_buffers:
        say("dpmlp: warning: CUDA-aware MPI requested: device buffers go to MPI directly; if this "
            "MPI is not CUDA-aware the job will crash (segfault). Leave it off to stage through "
            "pinned host memory.", file=sys.stderr)
    config = TrainConfig(hidden=args.hidden, reg=args.reg, lr=args.lr, epochs=args.epochs,
                         batch_size=args.batch_size, seed=args.seed, dtype=args.dtype)
    run_config = {"hidden": config.hidden, "dtype": config.dtype, "batch_size": config.batch_size,
                  "lr": config.lr, "reg": config.reg, "scale": args.scale,
                  "train_size": int(train_x.shape[1]), "val_size": int(val_x.shape[1]),
                  "ranks": comm.size, "backend": entry.name, "comm": comm.name,
                  "seed": config.seed, "epochs": config.epochs, "gemm": args.gemm,
                  "exact": args.exact}
    steps_per_epoch = max(1, math.ceil(train_x.shape[1] / config.batch_size))
    if ckpt is not None:
        notes = job.agree(lambda: validate_checkpoint(ckpt, run_config, epochs=config.epochs,
                                                      steps_per_epoch=steps_per_epoch))
        for note in notes:
            say(f"dpmlp: {note}")
    mode = f"{args.dtype}, exact" if args.exact else args.dtype
    mode += "" if args.gemm == "simt" else f", gemm {args.gemm}"
    say(f"dpmlp: backend {entry.name} ({mode}, {backend.describe_device()}), comm {comm.name}, "
        f"{comm.size} rank(s); H={config.hidden} B={config.batch_size} lr={config.lr} "
        f"reg={config.reg} scale={args.scale}; {train_x.shape[1]} train / {val_x.shape[1]} val "
        f"images from {data.source}")
    if config.batch_size < comm.size:
        say(f"dpmlp: note: batch size {config.batch_size} < {comm.size} ranks: "
            f"ranks {config.batch_size}..{comm.size - 1} get no samples but still take part")

    trainer = job.agree(lambda: DataParallelTrainer(
        backend, comm, config, train_x, train_y, val_x, val_y, cuda_graphs=args.cuda_graphs,
        params=ckpt.params if ckpt is not None else None, exact=args.exact))
    if not backend.host_resident or args.cuda_graphs == "on":
        say("dpmlp: CUDA graphs " + ("on: each epoch replays one graph" if trainer.use_graphs
                                     else f"off: {trainer.graph_note}"))
    devices = comm.allgather(backend.describe_device())
    if run is not None:
        run.write_config(args, backend=entry.name, comm=comm.name, ranks=comm.size,
                         dtype=args.dtype, devices=devices,
                         resumed_from=ckpt.path if ckpt is not None else None,
                         extra={"run": run_config, "data_source": str(data.source)})
        if ckpt is not None:
            run.truncate_metrics(ckpt.epoch)
    if ckpt is not None:
        say(f"dpmlp: resuming from {ckpt.path} at {ckpt.describe()}")
        if ckpt.step:
            trainer.set_partial_nll(float(ckpt.extras.get("epoch_nll_sum", 0.0)))
    session = TrainingSession(args, comm, trainer, run, run_config, ckpt)
    try:
        status = train_and_report(args, comm, trainer, data, train_x, train_y, say, session)
    except SystemExit:
        raise
    except (Diverged, ExactRangeError) as exc:  # every rank saw the same flags: no abort needed
        say(f"dpmlp: error: {exc}", file=sys.stderr, flush=True)
        job.finish()
        return exc.exit_code
    except BaseException as exc:  # noqa: BLE001 - one rank failing must end every rank
        job.abort(exc)
    job.finish()
    return status


class TrainingSession:
    """The CLI's part of a training run: progress, metrics, checkpoints, stop and divergence
    checks (every rank calls every method; only rank 0 writes and prints)."""

    def __init__(self, args, comm, trainer, run, run_config, ckpt):
        self.args, self.comm, self.trainer, self.run = args, comm, trainer, run
        self.run_config, self.ckpt = run_config, ckpt
        self.config = trainer.config
        self.root = comm.rank == 0
        self.progress = Progress(epochs=self.config.epochs,
                                 steps_per_epoch=trainer.steps_per_epoch,
                                 enabled=self.root, quiet=args.quiet)
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
            if self._epoch is None or epoch != self._epoch:
                self.progress.start_epoch(epoch, first_step=first)
            self._epoch, self._done = epoch, first
        n, b = trainer.n_train, self.config.batch_size
        self.progress.on_step(samples=min(done * b, n) - min(self._done * b, n),
                              steps=done - self._done)
        self._done = done
        if done % self.check_every and done != spe:
            return False
        nonfinite = not trainer.params_finite()
        flags = self.comm.allreduce_host(np.array([self.stop.signum is not None, nonfinite],
                                                  dtype=np.float64))
        if flags[1]:
            self.progress.close()
            raise Diverged(f"loss is not finite at epoch {epoch} step {done}; lower --lr "
                           f"(--scale raw needs --lr near 0.01)")
        return bool(flags[0])

    def on_epoch(self, stats) -> None:
        self.progress.end_stats(stats)
        if self.args.verify == "final" and self.root:
            self.snapshots.append(self.trainer.params())  # to show how the difference grew
        self._epoch = None
        spe = self.trainer.steps_per_epoch
        if self.run is not None and self.root:
            samples = self.progress.totals.history[-1][4] if self.progress.totals.history else 0
            more = {"params_sha256": self.trainer.params_sha256()} if self.args.exact else {}
            self.run.append_metrics(self.run.epoch_record(
                epoch=stats.epoch, step=stats.epoch * spe, loss=stats.loss,
                val_accuracy=stats.val_accuracy, seconds=stats.seconds, samples=samples, **more))
        every = self.args.checkpoint_every
        if every and (stats.epoch % every == 0 or stats.epoch == self.config.epochs):
            self.write_checkpoint(stats.epoch, 0)

    def write_checkpoint(self, epoch: int, step: int) -> str | None:
        """Checkpoint after ``epoch`` completed epochs and ``step`` steps of the next (collective:
        the partial loss is summed over ranks); rank 0 writes. Returns the path on rank 0."""
        if not self.args.run_dir:  # (self.run exists on rank 0 only)
            return None
        extras = {"epoch_nll_sum": self.trainer.partial_nll()} if step else {}
        if not self.root:
            return None
        path = write_run_checkpoint(self.run.path, self.trainer.params(), epoch=epoch, step=step,
                                    config=self.run_config, dtype=self.config.dtype,
                                    extras=extras)
        if not step:
            self.last_checkpoint_epoch = epoch
        return str(path)

    # ------------------------------------------------------------------ the run
    def train(self) -> None:
        """Train to the end, or stop for a signal (exit 130 after a checkpoint and --save) or a
        divergence (Diverged, exit 3, the last good checkpoint kept)."""
        ckpt, trainer = self.ckpt, self.trainer
        start_epoch = ckpt.epoch + 1 if ckpt is not None else 1
        first_step = ckpt.step if ckpt is not None else 0
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
        if self.args.save and self.root:
            checkpoint.save_params(self.args.save, trainer.params())
        where = (f"resume with --resume {self.args.run_dir}" if self.args.run_dir
                 else "no --run-dir, so no checkpoint to resume from")
        if self.root:
            print(f"dpmlp: interrupted at epoch {epoch} step {step}; {where}", file=sys.stderr,
                  flush=True)
        raise SystemExit(130)


def train_and_report(args, comm, trainer, data, train_x, train_y, say, session=None) -> int:
    from core import verify as checks

    config = trainer.config
    if session is None:
        session = TrainingSession(args, comm, trainer, None, {}, None)
    snapshots = session.snapshots
    try:
        lockstep = None
        if args.verify == "lockstep":
            lockstep = checks.lockstep_for(args, comm, trainer, data, train_x, train_y, say)
            session.observe = lockstep.on_step
        session.train()
        if lockstep:
            say(lockstep.end(), flush=True)
    except checks.VerifyFailed as failure:
        session.progress.close()
        say(str(failure), flush=True)
        return checks.VERIFY_FAILED_EXIT
    test_x = scale_images(data.test_images, args.scale, np.dtype(args.dtype).type)
    with session.progress.task("test", total=len(data.test_labels)) as task, \
            np.errstate(all="ignore"):  # saturated sigmoids of a poor run are not news
        test_acc = trainer.evaluate_host(test_x, data.test_labels)
        task.update(len(data.test_labels))
    say(f"test accuracy {100 * test_acc:.2f}% ({len(data.test_labels)} images)")
    session.progress.finish()
    params = trainer.params()
    if args.exact:
        trainer.check_exact_range(config.epochs)  # the test pass's products, too (exit 3)
        say(f"params sha256 {trainer.params_sha256()}")
    if args.save and comm.rank == 0:
        checkpoint.save_params(args.save, params)
        say(f"saved W1, b1, W2, b2 to {args.save}")
    status = 0
    if args.verify == "final":
        with comm.unwatched():  # the other ranks wait while rank 0 runs the reference
            status = comm.bcast(verify(args, data, snapshots, config, say)
                                if comm.rank == 0 else None)
    return status


def verify(args, data, snapshots, config, say) -> int:
    """--verify=final on rank 0: the reference trained from the seed for the whole run against
    the parameters after each epoch (``snapshots``); see core/verify.py."""
    from core import verify as checks

    images, labels = checks.reference_data(args, data)
    return checks.final(snapshots, images, labels, args.scale, config, say)


def run(argv=None) -> int:
    """main() with the job's error policy (core/job.py)."""
    return run_with_error_policy(lambda: main(argv))


if __name__ == "__main__":
    sys.exit(run())
