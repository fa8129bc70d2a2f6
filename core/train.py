"""Command line: ``python -m core.train`` (one process) or ``mpirun -n P python -m core.train``.

``main`` is the order of a run: the flags (core/train_flags.py), the pre-flight checks
(core/preflight.py), the backend, data and trainer, and the training session
(core/session.py). ``run`` is ``main`` under the job's error policy: errors that are the user's
(flags, files, environment) are one line on stderr and exit code 2. Setup runs on every rank and
the ranks agree on the outcome before training, so a bad file on one rank ends all of them
cleanly; a failure during training aborts the whole job naming the rank (core/job.py).
"""

from __future__ import annotations

import math
import sys

import numpy as np

from core.buckets import buckets_apply, describe_buckets
from core.checkpoint import check_same_computation, validate_checkpoint, why
from core.data_parallel import DataParallelTrainer, TrainConfig, scale_images
from core.device_preflight import check_device_memory
from core.errors import OutputError
from core.exact import ExactRangeError
from core.job import Job, comm_options, run_with_error_policy
from core.plugins import Registry
from core.preflight import check_memory, check_outputs, split_data
from core.session import Diverged, TrainingSession, train_and_report
from core.placement import apply_local_rank, gather_places, my_place, placement_lines
from core.startup import phase
from core.threads import limit_blas_threads, planned_blas_threads
from core.train_flags import build_parser, check_run_flags, parse_flags

phase("starting up")  # the imports are done: a signal from here on unwinds (core/startup.py)

__all__ = ["build_parser", "list_backends", "main", "run"]


def list_backends(registry: Registry) -> str:
    """--list-backends: one row per backend, communicator and broken plugin."""
    rows = [("kind", "name", "package", "version", "available", "why")]
    for entry in registry.backends() + registry.communicators() + list(registry.broken.values()):
        rows.append((entry.kind, entry.name, entry.package, entry.version,
                     "yes" if entry.available else "no", entry.reason))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:5], widths)) + "  " + r[5]
                     for r in rows)


def main(argv=None, prog: str | None = None) -> int:
    """One rank's part of a training run (or --list-backends); returns the exit status."""
    args = parse_flags(argv, prog)
    registry = Registry.load()
    if args.list_backends:
        print(list_backends(registry))
        return 0
    check_run_flags(args)
    job = Job.start(args.comm, comm_options(args.cuda_aware_mpi or None, args.collective_timeout),
                    registry)
    job.quiet = args.quiet
    phase("checking --save, --run-dir and --resume")
    rundir, ckpt = job.agree(lambda: check_outputs(args) if job.is_root else (None, None))
    try:
        return _run(job, args, rundir, job.comm.bcast(ckpt))
    finally:
        if rundir is not None:  # a job that ended before writing anything leaves no directory
            rundir.release(discard_if_unused=True)


def _run(job: Job, args, rundir, ckpt) -> int:
    """The run after the pre-flight: backend, data, trainer, the record, the session."""
    comm, say = job.comm, job.say
    apply_local_rank(comm, gather_places(comm, my_place()))  # the launcher's, else by hostname
    local_ranks = comm.local_size
    line = limit_blas_threads(local_ranks)
    if line:
        say(f"dpmlp: {line}")
    if args.download and comm.size > 1:  # rank 0 downloads, the others then read its files
        from core.data import locate_and_load
        job.agree(lambda: locate_and_load(args.data_dir, True, log=say) if comm.rank == 0 else None)
    entry, backend, data, arrays = job.agree(lambda: _load(job, args, local_ranks))
    train_x, train_y, val_x, val_y = arrays
    if comm.size > 1:
        threads = planned_blas_threads(local_ranks) if backend.host_resident else None
        for text in placement_lines(comm, backend, threads):
            say(f"dpmlp: {text}")
    job.agree(lambda: comm.bind_backend(backend))  # NCCL: collective, so after agreement
    if comm.name == "mpi" and comm.accepts_device_buffers:
        say("dpmlp: warning: CUDA-aware MPI requested: device buffers go to MPI directly; if this "
            "MPI is not CUDA-aware the job will crash (segfault). Leave it off to stage through "
            "pinned host memory.", file=sys.stderr)
    config = TrainConfig(hidden=args.hidden, reg=args.reg, lr=args.lr, epochs=args.epochs,
                         batch_size=args.batch_size, seed=args.seed, dtype=args.dtype)
    run_config = _run_config(args, config, comm, entry, train_x, val_x)
    _check_resume(job, rundir, ckpt, run_config, config, train_x.shape[1])
    _say_what_runs(say, args, config, comm, entry, backend, data, train_x, val_x)
    trainer = job.agree(lambda: DataParallelTrainer(
        backend, comm, config, train_x, train_y, val_x, val_y, cuda_graphs=args.cuda_graphs,
        params=ckpt.params if ckpt is not None else None, exact=args.exact,
        bucket_mb=args.bucket_mb))
    if not backend.host_resident or args.cuda_graphs == "on":
        say("dpmlp: CUDA graphs " + ("on: each epoch replays one graph" if trainer.use_graphs
                                     else f"off: {trainer.graph_note}"))
    devices = comm.allgather(backend.describe_device())
    job.agree(lambda: _begin_record(rundir, args, comm, entry, devices, ckpt, run_config, data))
    if ckpt is not None:
        say(f"dpmlp: resuming from {ckpt.path} at {ckpt.describe()}")
        if ckpt.step:
            trainer.set_partial_nll(float(ckpt.extras.get("epoch_nll_sum", 0.0)))
    session = TrainingSession(args, comm, trainer, rundir, run_config, ckpt)
    return _train(job, session, data, train_x, train_y)


def _check_resume(job: Job, rundir, ckpt, run_config: dict, config: TrainConfig,
                  n_train: int) -> None:
    """The checkpoint to resume (or the config.json of a run started again from its beginning)
    against this run: one line and exit 2 where they differ, notes where only rounding does."""
    def check():
        notes = []
        if ckpt is not None:
            notes = validate_checkpoint(ckpt, run_config, epochs=config.epochs,
                                        steps_per_epoch=max(1, math.ceil(n_train /
                                                                         config.batch_size)))
        if rundir is not None and rundir.restart_config is not None:
            check_same_computation(rundir.restart_config, run_config, rundir.config_path)
            notes.append(f"note: {rundir.path} stopped before its first checkpoint; starting it "
                         f"again from the beginning")
        return notes

    for note in job.agree(check):
        job.say(f"dpmlp: {note}")


def _load(job: Job, args, local_ranks: int):
    """This rank's backend and data: (entry, backend, data, (train_x, train_y, val_x, val_y)),
    the images scaled to the run's dtype; checked against host memory before they are. A batch
    larger than the training set is clamped to it (with a note): batch gradient descent."""
    from core.data import locate_and_load  # imported late: only needed once flags are valid

    entry, backend = job.make_backend(args.backend, args.dtype, args.gemm)
    phase("loading the data")
    data = locate_and_load(args.data_dir, args.download, log=job.say)
    phase("setting up the training")
    train_img, train_lab, val_img, val_lab = split_data(data, args)
    if args.batch_size > len(train_lab):
        job.say(f"dpmlp: note: --batch-size {args.batch_size} is larger than the "
                f"{len(train_lab)} training images; using {len(train_lab)} (one step an epoch: "
                f"batch gradient descent)")
        args.batch_size = len(train_lab)
    check_memory(args, job.comm.size, local_ranks, len(train_lab), len(val_lab),
                 len(data.train_labels) + len(data.test_labels), backend.host_resident)
    check_device_memory(args, backend, job.comm.local_rank, local_ranks, job.comm.size,
                        len(train_lab), len(val_lab), len(data.test_labels))
    dtype = np.dtype(args.dtype).type
    return entry, backend, data, (scale_images(train_img, args.scale, dtype), train_lab,
                                  scale_images(val_img, args.scale, dtype), val_lab)


def _run_config(args, config: TrainConfig, comm, entry, train_x, val_x) -> dict:
    """What a checkpoint records of the run, and a resume compares (core/checkpoint.py)."""
    return {"hidden": config.hidden, "dtype": config.dtype, "batch_size": config.batch_size,
            "lr": config.lr, "reg": config.reg, "scale": args.scale,
            "train_size": int(train_x.shape[1]), "val_size": int(val_x.shape[1]),
            "ranks": comm.size, "backend": entry.name, "comm": comm.name,
            "seed": config.seed, "epochs": config.epochs, "gemm": args.gemm,
            "exact": args.exact}


def _say_what_runs(say, args, config, comm, entry, backend, data, train_x, val_x) -> None:
    """The line naming backend, communicator, ranks, hyper-parameters and data."""
    mode = f"{args.dtype}, exact" if args.exact else args.dtype
    mode += "" if args.gemm == "simt" else f", gemm {args.gemm}"
    say(f"dpmlp: backend {entry.name} ({mode}, {backend.describe_device()}), comm {comm.name}, "
        f"{comm.size} rank(s); H={config.hidden} B={config.batch_size} lr={config.lr} "
        f"reg={config.reg} scale={args.scale}; {train_x.shape[1]} train / {val_x.shape[1]} val "
        f"images from {data.source}")
    path = getattr(backend, "gemm_path", None)  # the GPU backends: which GEMM instruction
    if path is not None and not args.exact:
        say(f"dpmlp: {path()}")
    if buckets_apply(comm.size, args.exact):
        say(f"dpmlp: {describe_buckets(config.hidden, np.dtype(args.dtype).itemsize, args.bucket_mb)}")
    if config.batch_size < comm.size:
        say(f"dpmlp: note: batch size {config.batch_size} < {comm.size} ranks: "
            f"ranks {config.batch_size}..{comm.size - 1} get no samples but still take part")


def _begin_record(rundir, args, comm, entry, devices, ckpt, run_config, data) -> None:
    """--run-dir's config.json (rank 0), and on a resume its metrics.jsonl cut back to the
    checkpoint's epoch (to none for a run started again from its beginning). The directory is
    this run's own (core/preflight.py): no other run's history is touched."""
    if rundir is None:
        return
    try:
        rundir.write_config(args, backend=entry.name, comm=comm.name, ranks=comm.size,
                            dtype=args.dtype, devices=devices,
                            resumed_from=ckpt.path if ckpt is not None else None,
                            extra={"run": run_config, "data_source": str(data.source)})
        if rundir.restart_config is not None:
            rundir.truncate_metrics(0)
        elif ckpt is not None:
            rundir.truncate_metrics(ckpt.epoch)
    except OSError as exc:
        raise OutputError(f"--run-dir {rundir.path}: cannot write its config.json or "
                          f"metrics.jsonl: {why(exc)}; nothing trained yet") from None


def _train(job: Job, session: TrainingSession, data, train_x, train_y) -> int:
    """The session to its end: its status; a divergence is the same on every rank (exit 3, no
    abort needed); any other failure on one rank ends every rank."""
    try:
        status = train_and_report(session, data, train_x, train_y, job.say)
    except SystemExit:
        raise
    except (Diverged, ExactRangeError, OutputError) as exc:
        job.say(f"dpmlp: error: {exc}", file=sys.stderr, flush=True)
        job.finish()
        return exc.exit_code
    except BaseException as exc:  # noqa: BLE001 - one rank failing must end every rank
        job.abort(exc)
    job.finish()
    return status


def run(argv=None, prog: str | None = None) -> int:
    """main() with the job's error policy (core/job.py)."""
    return run_with_error_policy(lambda: main(argv, prog))


if __name__ == "__main__":
    sys.exit(run())
