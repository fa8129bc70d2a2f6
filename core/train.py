"""Command line: ``python -m core.train`` (one process) or ``mpirun -n P python -m core.train``.

Errors that are the user's (flags, files, environment) are one line on stderr and exit code 2.
Setup runs on every rank and the ranks agree on the outcome before training, so a bad file on one
rank ends all of them cleanly; a failure during training aborts the whole job naming the rank
(the job's lifecycle is core/job.py).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from core.errors import UserError
from core.job import Job, comm_options, run_with_error_policy
from core.plugins import Registry
from core.data_parallel import (CUDA_GRAPH_CHOICES, DataParallelTrainer, TrainConfig,
                                scale_images)



class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) printed by rank 0 only."""

    def error(self, message):
        raise UserError(message)


def _positive_int(text):
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _positive_float(text):
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _non_negative_float(text):
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
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
    model.add_argument("--seed", type=int, default=0, help="seed of the initial weights (0)")
    model.add_argument("--dtype", choices=("float32", "float64"), default="float32")
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
def check_save_path(path: str | None) -> None:
    """Fail before training, not after it, when --save cannot be written."""
    if path is None:
        return
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise UserError(f"--save {path}: directory {directory} does not exist")
    if not os.access(directory, os.W_OK):
        raise UserError(f"--save {path}: directory {directory} is not writable")


def save_params(path: str, params: dict[str, np.ndarray]) -> None:
    """Write W1, b1, W2, b2 to ``path`` atomically (temporary file, then rename)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as fh:
            np.savez(fh, **params)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


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


# ---------------------------------------------------------------------------- main
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    registry = Registry.load()
    if args.list_backends:
        print(list_backends(registry))
        return 0
    check_save_path(args.save)
    job = Job.start(args.comm, comm_options(args.cuda_aware_mpi or None, args.collective_timeout),
                    registry)
    comm, say = job.comm, job.say

    def setup():
        from core.data import locate_and_load  # imported late: only needed once flags are valid

        entry, backend = job.make_backend(args.backend, args.dtype)
        data = locate_and_load(args.data_dir, args.download, log=say)
        train_img, train_lab, val_img, val_lab = split_data(data, args)
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
    say(f"dpmlp: backend {entry.name} ({args.dtype}, {backend.describe_device()}), comm {comm.name}, "
        f"{comm.size} rank(s); H={config.hidden} B={config.batch_size} lr={config.lr} "
        f"reg={config.reg} scale={args.scale}; {train_x.shape[1]} train / {val_x.shape[1]} val "
        f"images from {data.source}")
    if config.batch_size < comm.size:
        say(f"dpmlp: note: batch size {config.batch_size} < {comm.size} ranks: "
            f"ranks {config.batch_size}..{comm.size - 1} get no samples but still take part")

    trainer = job.agree(lambda: DataParallelTrainer(
        backend, comm, config, train_x, train_y, val_x, val_y, cuda_graphs=args.cuda_graphs))
    if not backend.host_resident or args.cuda_graphs == "on":
        say("dpmlp: CUDA graphs " + ("on: each epoch replays one graph" if trainer.use_graphs
                                     else f"off: {trainer.graph_note}"))
    try:
        status = train_and_report(args, comm, trainer, data, train_x, train_y, say)
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - one rank failing must end every rank
        job.abort(exc)
    job.finish()
    return status


def train_and_report(args, comm, trainer, data, train_x, train_y, say) -> int:
    from core import verify as checks

    config = trainer.config
    lockstep, snapshots = None, []
    try:
        if args.verify == "lockstep":
            lockstep = checks.lockstep_for(args, comm, trainer, data, train_x, train_y, say)

        def on_epoch(s):
            say(f"epoch {s.epoch:3d}/{config.epochs}  loss {s.loss:.4f}  "
                + (f"val acc {100 * s.val_accuracy:6.2f}%  " if s.val_accuracy is not None else "")
                + f"time {s.seconds:.3f} s", flush=True)
            if args.verify == "final" and comm.rank == 0:
                snapshots.append(trainer.params())  # to show how the difference grew

        trainer.train(on_epoch=on_epoch, on_step=lockstep.on_step if lockstep else None)
        if lockstep:
            say(lockstep.end(), flush=True)
    except checks.VerifyFailed as failure:
        say(str(failure), flush=True)
        return checks.VERIFY_FAILED_EXIT
    test_x = scale_images(data.test_images, args.scale, np.dtype(args.dtype).type)
    test_acc = trainer.evaluate_host(test_x, data.test_labels)
    say(f"test accuracy {100 * test_acc:.2f}% ({len(data.test_labels)} images)")
    params = trainer.params()
    if args.save and comm.rank == 0:
        save_params(args.save, params)
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
