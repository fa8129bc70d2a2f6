"""The gradient exchange on paper: a ring allreduce per bucket, overlapped with the compute that
remains, and the step time and efficiency it predicts (README "Several GPUs and nodes"; the
table comes from ``python tools/scaling_table.py``; ``mpirun -n P python -m core.bench`` prints
the measured exchange beside this model's prediction for the same P, with the link's latency and
bandwidth probed on the spot).

    ring allreduce of S bytes on P ranks:  2 (P - 1) / P * S / BW  +  2 (P - 1) * alpha

Per step, on each rank: the compute before the hidden layer's gradient (forward, output layer,
da1: a fraction 1 - f of the step's compute), then the output layer's small gradient is sent,
then the hidden layer's gradient (a fraction f) is computed in blocks, and each bucket's
allreduce starts when its blocks are done and the link is free. What is left of the last
allreduce after the last block is the exposed exchange; the update follows it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from core.buckets import DEFAULT_BUCKET_MB, MIB, column_blocks, plan_buckets
from core.model import ParamLayout


@dataclass(frozen=True)
class Link:
    """What the allreduce sees of the network: bus bandwidth per rank and latency per ring step."""

    name: str
    bandwidth: float  # bytes/s
    alpha: float      # seconds


#: The model's inputs (NCCL on H100s; nccl-tests' bus bandwidth, rounded down): NVLink 4 through
#: NVSwitch inside an 8-GPU node, one 400 Gb/s InfiniBand NIC per GPU (NDR), and 100 Gb/s
#: Ethernet (RoCE or TCP) per node
LINKS = {
    "nvlink": Link("NVLink (8 x H100, NVSwitch)", 360e9, 1e-6),
    "ib": Link("InfiniBand NDR 400 Gb/s per GPU", 40e9, 3e-6),
    "eth": Link("Ethernet 100 Gb/s per node", 10e9, 25e-6),
}
GPUS_PER_NODE = 8
#: share of a step's compute that is the hidden layer's gradient ([dW1 db1]): 0.36-0.47 in the
#: H100's kernel table (README "Performance")
HIDDEN_GRAD_SHARE = 0.4
#: one H100, float32, one rank: a step's compute ~ t0 + c n (us; n samples on the rank), fitted
#: to the kernel table's totals at B = 800 and 3200
H100_STEP_US = {256: (55.3, 0.0296), 1024: (62.7, 0.1067), 4096: (78.0, 0.41)}


def ring_allreduce_seconds(nbytes: float, ranks: int, link: Link) -> float:
    """Time of one ring allreduce of ``nbytes`` over ``ranks`` (0 on one rank)."""
    if ranks <= 1:
        return 0.0
    return 2 * (ranks - 1) / ranks * nbytes / link.bandwidth + 2 * (ranks - 1) * link.alpha


def bucket_bytes(hidden: int, itemsize: int = 4, bucket_mb: float = DEFAULT_BUCKET_MB
                 ) -> tuple[list[float], float]:
    """(bytes of each bucket of the hidden layer, bytes of the output layer's part)."""
    blocks = column_blocks()
    buckets = plan_buckets(hidden, itemsize, bucket_mb, blocks)
    sizes = [itemsize * hidden * (blocks[b - 1][1] - blocks[a][0]) for a, b in buckets]
    layout = ParamLayout(hidden)
    return sizes, itemsize * (layout.size - layout.output_layer_offset)


def exposed_exchange(compute: float, buckets: list[float], tail: float, ranks: int, link: Link,
                     share: float = HIDDEN_GRAD_SHARE) -> float:
    """Seconds of the exchange left after the step's compute (``compute`` seconds), each bucket
    sent when its share of the hidden gradient is computed and the link is free."""
    if ranks <= 1:
        return 0.0
    before, total = compute * (1 - share), sum(buckets)
    link_free = before + ring_allreduce_seconds(tail, ranks, link)
    done = before
    for size in buckets:
        done += compute * share * size / total
        link_free = max(link_free, done) + ring_allreduce_seconds(size, ranks, link)
    return max(0.0, link_free - compute)


def link_for(ranks: int, network: str = "ib") -> Link:
    """NVLink within one node; beyond it the network's link bounds the ring."""
    return LINKS["nvlink"] if ranks <= GPUS_PER_NODE else LINKS[network]


def predict(hidden: int, global_batch: int, ranks: int, network: str = "ib",
            bucket_mb: float = DEFAULT_BUCKET_MB) -> dict:
    """One row of the model on H100s: per-step compute, exposed exchange, step time (us)."""
    t0, per_sample = H100_STEP_US[hidden]
    compute = 1e-6 * (t0 + per_sample * -(-global_batch // ranks))
    buckets, tail = bucket_bytes(hidden, 4, bucket_mb)
    exposed = exposed_exchange(compute, buckets, tail, ranks, link_for(ranks, network))
    serial = sum(ring_allreduce_seconds(b, ranks, link_for(ranks, network))
                 for b in buckets + [tail])
    return {"H": hidden, "B": global_batch, "P": ranks, "compute_us": 1e6 * compute,
            "exchange_us": 1e6 * serial, "exposed_us": 1e6 * exposed,
            "step_us": 1e6 * (compute + exposed)}


def efficiency(row: dict, single: dict, weak: bool) -> float:
    """Strong scaling: t(1) / (P t(P)) at the same global batch; weak: t(1) / t(P) at the same
    batch per rank."""
    return single["step_us"] / (row["step_us"] * (1 if weak else row["P"]))


# ---------------------------------------------------------------------------- measured on the spot
def _timed_allreduce(comm, buf, sync, repeats: int) -> float:
    comm.allreduce_sum(buf)  # warm-up
    sync()
    times = []
    for _ in range(repeats):
        comm.barrier()
        began = time.perf_counter()
        comm.allreduce_sum(buf)
        sync()
        times.append(time.perf_counter() - began)
    return float(np.median(comm.allgather(float(np.median(times)))))


def probe_link(comm, backend, large_mb: float = 8.0, repeats: int = 10) -> Link:
    """The latency and bandwidth the ring model gives this communicator's allreduce here: from
    the median time of an 8-byte and a ``large_mb`` MiB allreduce (collective)."""
    device = not backend.host_resident and comm.accepts_device_buffers
    make = backend.zeros if device else (lambda shape: np.zeros(shape, backend.dtype))

    def sync():
        comm.drain()
        backend.synchronize()

    p, item = comm.size, backend.dtype.itemsize
    small = _timed_allreduce(comm, make((max(1, 8 // item),)), sync, repeats)
    nbytes = int(large_mb * MIB) // item * item
    large = _timed_allreduce(comm, make((nbytes // item,)), sync, repeats)
    alpha = small / (2 * (p - 1))
    bandwidth = 2 * (p - 1) / p * nbytes / max(large - small, 1e-9)
    return Link(f"{comm.name} here (probed)", bandwidth, alpha)


def predicted_exchange_us(row: dict, link: Link, bucket_mb: float, itemsize: int) -> float:
    """The model's exposed exchange per step (us) for a bench row of measured compute."""
    steps = -(-row["samples"] // row["B"])
    compute = 1e-3 * row["compute_ms"] / steps
    buckets, tail = bucket_bytes(row["H"], itemsize, bucket_mb)
    return 1e6 * exposed_exchange(compute, buckets, tail, row["ranks"], link)
