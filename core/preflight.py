"""The pre-flight checks of a training run: what can be found wrong before anything large is
allocated is one line and exit 2, not a traceback or an out-of-memory kill minutes later.

Rank 0 test-writes --save, reads the checkpoint to --resume and prepares --run-dir
(``check_outputs``); every rank selects its data by --train-size/--val-size (``split_data``) and
estimates the host memory it needs, all ranks of the node together (``check_memory``).
"""

from __future__ import annotations

import math

import numpy as np

from core.checkpoint import Checkpoint, CheckpointError, check_writable_target, load_checkpoint
from core.errors import UserError
from core.exact import Slicing
from core.model import INPUTS, ParamLayout
from core.rundir import RunDir


def check_outputs(args) -> tuple[RunDir | None, Checkpoint | None]:
    """Rank 0's checks of what the run will write and read: --save can be written, --resume is a
    checkpoint, --run-dir holds no run unless resuming. Returns (the run directory, the
    checkpoint to resume), None for those not asked for."""
    rundir, ckpt = None, None
    if args.save:
        check_writable_target("--save", args.save, "file")
    if args.resume:
        try:
            ckpt = load_checkpoint(args.resume)
        except CheckpointError as exc:
            raise UserError(f"--resume {exc}") from None
    if args.run_dir:
        rundir = RunDir.prepare(args.run_dir)
        if ckpt is None and rundir.has_run():
            raise UserError(f"--run-dir {args.run_dir}: already holds a run; continue it "
                            f"with --resume {args.run_dir}, or choose another directory")
    return rundir, ckpt


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
    if val_size >= total:
        raise UserError(f"--val-size {val_size}: must be smaller than the {total} training images")
    available = total - val_size
    train_size = args.train_size if args.train_size is not None else available
    if train_size > available:
        raise UserError(f"--train-size {train_size}: only {available} training images remain "
                        f"after holding out --val-size {val_size} (from {data.source})")
    return (data.train_images[:train_size], data.train_labels[:train_size],
            data.train_images[total - val_size:], data.train_labels[total - val_size:])
