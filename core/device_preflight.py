"""The pre-flight of a device backend (``host_resident`` False): before anything large is
allocated, what a rank will put on its device is checked against the backend's limits, so that a
run that cannot fit is one line and exit 2 (a UserError), not an out-of-memory traceback.

Two checks, both from the ops contract (core/ops.py, "Memory pre-flight"):

* ``Backend.max_elements``: the largest array the backend's ops can index (32-bit offsets in the
  built-in kernels and in Triton's default ones). The largest arrays of a run are the flat
  parameter (and gradient) buffer, the training images (784 x N) and the hidden activations.
* ``Backend.device_memory()``: (free, total) bytes of the device. The estimate counts the data
  sets (training, validation, and the test set uploaded after training), parameters and
  gradients, the activations of one step and, with --exact, the digits and group sums; times the
  ranks of this node that share the device. Backends that return None are not checked.
"""

from __future__ import annotations

import math

from core.errors import UserError
from core.model import CLASSES, INPUTS, ParamLayout

GB = 1e9


def device_estimate(hidden: int, batch: int, ranks: int, itemsize: int, n_train: int, n_val: int,
                    n_test: int, exact: bool = False) -> dict[str, int]:
    """Bytes one rank puts on its device, by part."""
    p = ParamLayout(hidden).size
    cols = math.ceil(min(batch, max(n_train, 1)) / ranks)
    n = n_train + n_val + n_test
    parts = {"parameters and gradients": 2 * p * itemsize,
             "data": itemsize * INPUTS * n + 8 * n,  # labels counted as int64 (the widest)
             "activations": itemsize * cols * (2 * hidden + CLASSES)}
    if exact:
        from core.exact import Slicing

        slices = Slicing.for_depth(batch).slices
        parts["exact digits and group sums"] = itemsize * slices * (
            p + 2 * (INPUTS + 1) * (hidden + cols) + hidden * cols)
    return parts


def ranks_sharing_device(local_rank: int, local_ranks: int, devices: int) -> int:
    """How many ranks of this node use this rank's device (core.job.device_for's rule)."""
    if devices <= 0:
        return 1
    return sum(1 for r in range(local_ranks) if r % devices == local_rank % devices)


def check_elements(args, backend, n_train: int, ranks: int) -> None:
    """UserError when an array of the run is larger than the backend can index."""
    limit = getattr(backend, "max_elements", None)
    if not limit:
        return
    cols = math.ceil(min(args.batch_size, max(n_train, 1)) / ranks)
    arrays = ((f"--hidden {args.hidden}", "the parameters", ParamLayout(args.hidden).size),
              (f"--hidden {args.hidden} / --batch-size {args.batch_size}",
               "a step's hidden activations", args.hidden * cols),
              (f"--train-size {n_train}", "the training images", INPUTS * n_train))
    for flag, what, size in arrays:
        if size > limit:
            raise UserError(f"{flag}: {what} are {size:,} elements; backend {backend.name} can "
                            f"index at most {limit:,} in one array (Backend.max_elements)")


def check_device_memory(args, backend, local_rank: int, local_ranks: int, ranks: int,
                        n_train: int, n_val: int, n_test: int, free: int | None = None) -> None:
    """Both checks of a device backend (nothing for a host backend): UserError naming the flags
    when the run cannot fit. ``free`` overrides the device's free bytes (tests)."""
    if backend.host_resident:
        return
    check_elements(args, backend, n_train, ranks)
    if free is None:
        info = backend.device_memory()
        if info is None:
            return
        free = int(info[0])
    itemsize = backend.dtype.itemsize
    parts = device_estimate(args.hidden, args.batch_size, ranks, itemsize, n_train, n_val, n_test,
                            exact=getattr(args, "exact", False))
    sharing = ranks_sharing_device(local_rank, local_ranks, type(backend).device_count())
    need = sum(parts.values()) * sharing
    if need <= free:
        return
    detail = ", ".join(f"{k} {v * sharing / GB:.1f} GB" for k, v in parts.items() if v)
    per = f" for the {sharing} ranks sharing it" if sharing > 1 else ""
    raise UserError(f"--hidden {args.hidden} / --batch-size {args.batch_size}: needs about "
                    f"{need / GB:.1f} GB on {backend.describe_device()}{per} ({detail}), "
                    f"{free / GB:.1f} GB free there")
