"""The pre-flight checks of a training run: what can be found wrong before anything large is
allocated is one line and exit 2, not a traceback or an out-of-memory kill minutes later.

Rank 0 test-writes --save, reads the checkpoint to --resume and prepares --run-dir
(``check_outputs``); every rank selects its data by --train-size/--val-size (``split_data``) and
estimates the host memory it needs, all ranks of the node together (``check_memory``).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from core.checkpoint import (CHECKPOINT_SUBDIR, Checkpoint, CheckpointError,
                             check_writable_target, list_checkpoints, load_checkpoint)
from core.errors import UserError
from core.exact import Slicing
from core.model import INPUTS, ParamLayout
from core.rundir import RunDir, read_config


def check_outputs(args) -> tuple[RunDir | None, Checkpoint | None]:
    """Rank 0's checks of what the run will write and read: --save can be written, --run-dir is
    locked for this job and holds no other run, --resume is a checkpoint that may continue
    there. Returns (the run directory, the checkpoint to resume), None for those not asked for."""
    if args.save:
        check_writable_target("--save", args.save, "file")
    rundir = RunDir.prepare(args.run_dir).acquire() if args.run_dir else None
    try:
        ckpt = resume_point(args, rundir)
        check_free_space(args, rundir)
    except BaseException:
        if rundir is not None:
            rundir.release(discard_if_unused=True)
        raise
    return rundir, ckpt


def _load_resume(path) -> Checkpoint:
    try:
        return load_checkpoint(path)
    except CheckpointError as exc:
        raise UserError(f"--resume {exc}") from None


def _is_own(resume, rundir: RunDir) -> bool:
    """True when --resume names the run directory itself or one of its checkpoints."""
    target, home = Path(resume).resolve(), rundir.path.resolve()
    return target == home or target.parent == (home / CHECKPOINT_SUBDIR).resolve()


def resume_point(args, rundir: RunDir | None) -> Checkpoint | None:
    """The checkpoint to resume (None: from the start), by the rules of run directories: a
    resume into a directory continues only that directory's own run; a run that stopped before
    its first checkpoint starts again from the beginning with --resume DIR (the same flags,
    checked against its config.json) or is replaced with --overwrite."""
    if rundir is None:
        return _load_resume(args.resume) if args.resume else None
    state, where = rundir.state(), args.run_dir
    if not args.resume:
        _fresh_run_dir(args, rundir, state)
        return None
    own = _is_own(args.resume, rundir)
    if not own and state != "empty":
        raise UserError(f"--run-dir {where}: holds another run; --resume {args.resume} is not one "
                        f"of its checkpoints, and resuming there would rewrite that run's "
                        f"history: give a new --run-dir")
    if own and state == "started":
        rundir.restart_config = read_config(rundir.path).get("run", {})
        return None
    if own and state == "empty":
        raise UserError(f"--resume {args.resume}: holds no run yet (no config.json, no "
                        f"checkpoint); start one with --run-dir {where}")
    return _load_resume(args.resume)


def _fresh_run_dir(args, rundir: RunDir, state: str) -> None:
    where = args.run_dir
    if state == "checkpointed":
        latest = list_checkpoints(rundir.path)[-1].name
        if args.overwrite:
            raise UserError(f"--overwrite: {where} holds checkpoints (latest {latest}); it "
                            f"replaces only a run that has none: choose another --run-dir")
        raise UserError(f"--run-dir {where}: already holds a run (latest checkpoint {latest}); "
                        f"continue it with --resume {where}, or choose another directory")
    if state == "started":
        if not args.overwrite:
            raise UserError(f"--run-dir {where}: holds a run that stopped before its first "
                            f"checkpoint; start it again from the beginning with --resume "
                            f"{where} (the same flags), or replace it with --overwrite")
        rundir.clear_unfinished()


def output_bytes(args, rundir: RunDir | None) -> dict[str, int]:
    """Bytes the run's outputs need, by target: --save (the four arrays and the archive's
    overhead); --run-dir: config.json, a line of metrics.jsonl an epoch, and the checkpoints
    (two kept, and the next one written before the oldest goes: three at a time, less those
    already there)."""
    params = ParamLayout(args.hidden).size * np.dtype(args.dtype).itemsize
    need = {}
    if args.save:
        need["--save"] = params + 4096
    if rundir is not None:
        existing = len(list_checkpoints(rundir.path))
        need["--run-dir"] = (16384 + 512 * args.epochs
                             + max(1, 3 - existing) * (params + 16384))
    return need


def _free_bytes(path: Path) -> tuple[int, int] | None:
    """(device, bytes free to this user) of the file system holding ``path``."""
    try:
        st = os.statvfs(path)
        return os.stat(path).st_dev, st.f_bavail * st.f_frsize
    except (OSError, AttributeError):
        return None


def check_free_space(args, rundir: RunDir | None) -> None:
    """UserError before training when --save and --run-dir (together, where they share a file
    system) need more space than is free."""
    targets = {"--save": Path(args.save).absolute().parent if args.save else None,
               "--run-dir": rundir.path if rundir is not None else None}
    by_device: dict[int, list] = {}
    for flag, need in output_bytes(args, rundir).items():
        free = _free_bytes(targets[flag])
        if free is not None:
            by_device.setdefault(free[0], []).append((flag, need, free[1]))
    for entries in by_device.values():
        need, free = sum(n for _, n, _ in entries), entries[0][2]
        if need > free:
            what = " and ".join(f"{flag} {args.save if flag == '--save' else args.run_dir}"
                                for flag, _, _ in entries)
            verb = "need" if len(entries) > 1 else "needs"
            their = "their" if len(entries) > 1 else "its"
            raise UserError(f"{what}: {verb} about {_size(need)} on {their} file system, "
                            f"{_size(free)} free")


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 10**6 else f"{max(1, round(n / 1e3))} kB"


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
    parts = {"parameters and gradients": 2 * p * itemsize + p * itemsize,  # + the host init
             "data": itemsize * INPUTS * n + 4 * n + INPUTS * n_images + itemsize * INPUTS * n,
             "activations": itemsize * cols * (2 * hidden + 10)}
    if ranks > 1 and not exact and host_resident:  # core/buckets.py: the rows of each block
        parts["data"] += itemsize * INPUTS * n_train
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
    if val_size >= total and args.val_size is None:
        raise UserError(f"the training images of {data.source}: {total} are too few to hold out "
                        f"a validation set and train on the rest")
    if val_size >= total:
        raise UserError(f"--val-size {val_size}: must be smaller than the {total} training images "
                        f"of {data.source}")
    available = total - val_size
    train_size = args.train_size if args.train_size is not None else available
    if train_size > available:
        raise UserError(f"--train-size {train_size}: only {available} training images remain "
                        f"after holding out --val-size {val_size} (from {data.source})")
    return (data.train_images[:train_size], data.train_labels[:train_size],
            data.train_images[total - val_size:], data.train_labels[total - val_size:])
