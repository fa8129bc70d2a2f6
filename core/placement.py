"""Where the ranks run: each rank's node-local rank (which picks its GPU), the GPUs of each host,
and the one start-up line listing hosts x ranks x GPUs.

The node-local rank comes from the launcher when it says (Open MPI's mpirun/prterun, Slurm's
srun, MPICH's Hydra, PMIx), else from the table of every rank's hostname (the ranks of one host
numbered in rank order, as MPI's shared-memory split numbers them). A rank's GPU is its local
rank modulo the GPUs it sees (``core.job.device_for``): with ``CUDA_VISIBLE_DEVICES`` set per
rank (``srun --gpus-per-task=1``, ``--gpu-bind``) that is GPU 0 of its own set; with every GPU
visible (``mpirun`` inside the allocation) the local ranks take GPUs 0, 1, ... in turn. More
ranks than GPUs on a host is allowed (ranks share GPUs round-robin: fine for --comm mpi, refused
by NCCL) and said in one line.

The functions below work on plain tables, so that multi-node layouts are tested on one machine
(tests/test_placement.py); ``gather_places`` is the one collective.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import Mapping, Sequence

#: (local rank, local size) variables of each launcher, in the order they are trusted
LAUNCHER_LOCAL_VARS = (
    ("OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"),  # Open MPI (mpirun, prterun)
    ("SLURM_LOCALID", None),                                      # Slurm srun: size by hostname
    ("MPI_LOCALRANKID", "MPI_LOCALNRANKS"),                        # MPICH / Intel MPI (Hydra)
    ("PMIX_LOCAL_RANK", "PMIX_LOCAL_SIZE"),                        # PMIx launchers
)
HOSTS_LISTED = 8  # hosts named one by one in the start-up line; the rest are summarised


@dataclass(frozen=True)
class Place:
    """What one rank tells the others about itself (picklable: it travels by allgather)."""

    host: str
    launcher_local: tuple[int, int | None] | None = None  # (local rank, local size) if told
    visible: tuple[str, ...] = ()   # the GPUs it sees, by the host's numbering (empty: CPU)
    device: int | None = None       # its GPU among ``visible`` (None: host backend)
    threads: int | None = None      # its BLAS threads (None: left to the BLAS)


def launcher_local_rank(environ: Mapping[str, str] = os.environ) -> tuple[int, int | None] | None:
    """(local rank, local size or None) as the launcher set them, or None when it did not."""
    for rank_var, size_var in LAUNCHER_LOCAL_VARS:
        rank = environ.get(rank_var, "")
        if rank.isdigit():
            size = environ.get(size_var, "") if size_var else ""
            return int(rank), int(size) if size.isdigit() and int(size) > 0 else None
    return None


def local_ranks_by_host(hosts: Sequence[str]) -> list[tuple[int, int]]:
    """(local rank, local size) of every rank from the hostname table: the ranks of one host
    numbered 0, 1, ... in rank order."""
    seen: dict[str, int] = {}
    local = []
    for host in hosts:
        local.append(seen.get(host, 0))
        seen[host] = local[-1] + 1
    return [(lr, seen[host]) for lr, host in zip(local, hosts)]


def local_rank_of(rank: int, places: Sequence[Place]) -> tuple[int, int]:
    """This rank's (local rank, local size): the launcher's when it told every rank (it knows the
    nodes even where containers share one hostname), else the hostname table's."""
    told = [p.launcher_local for p in places]
    if all(t is not None for t in told):
        local, size = told[rank]
        if size is None:  # Slurm's SLURM_LOCALID: the size is the host's count
            size = sum(1 for t, p in zip(told, places) if p.host == places[rank].host)
        return local, size
    return local_ranks_by_host([p.host for p in places])[rank]


def apply_local_rank(comm, places: Sequence[Place]) -> None:
    """Set the communicator's local rank and size (which pick the GPU and share the cores)."""
    comm.local_rank, comm.local_size = local_rank_of(comm.rank, places)


def visible_gpus(count: int, environ: Mapping[str, str] = os.environ) -> tuple[str, ...]:
    """The host's numbers of the ``count`` GPUs a backend sees (CUDA_VISIBLE_DEVICES when set)."""
    if count <= 0:
        return ()
    listed = [d.strip() for d in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return tuple(listed[:count]) if len(listed) >= count else tuple(str(i) for i in range(count))


@dataclass
class HostSummary:
    host: str
    ranks: list[int] = field(default_factory=list)
    gpus: list[str] = field(default_factory=list)      # the host's GPUs any of its ranks see
    use: dict[str, list[int]] = field(default_factory=dict)  # GPU -> ranks on it
    threads: set = field(default_factory=set)


def summarise(places: Sequence[Place]) -> list[HostSummary]:
    """Per host, in order of first rank: its ranks, the GPUs they see and which ranks use each."""
    hosts: dict[str, HostSummary] = {}
    for rank, place in enumerate(places):
        summary = hosts.setdefault(place.host, HostSummary(place.host))
        summary.ranks.append(rank)
        summary.gpus += [g for g in place.visible if g not in summary.gpus]
        if place.device is not None and place.visible:
            summary.use.setdefault(place.visible[place.device], []).append(rank)
        summary.threads.add(place.threads)
    return list(hosts.values())


def _span(numbers: Sequence) -> str:
    """0,1,2,3 -> '0-3'; anything else comma-separated."""
    ints = [int(n) for n in numbers] if all(str(n).isdigit() for n in numbers) else None
    if ints and len(ints) > 2 and ints == list(range(ints[0], ints[0] + len(ints))):
        return f"{ints[0]}-{ints[-1]}"
    return ",".join(str(n) for n in numbers)


def _counts(values: Sequence[int]) -> str:
    """Equal counts as one number, uneven ones as a sum (4+4+2)."""
    return str(values[0]) if len(set(values)) == 1 else "+".join(map(str, values))


def placement_line(places: Sequence[Place]) -> str:
    """The start-up line: hosts x ranks x GPUs, then each host's ranks and GPUs (and threads)."""
    hosts = summarise(places)
    ranks = [len(h.ranks) for h in hosts]
    gpus = [len(h.gpus) for h in hosts]
    head = (f"placement: {len(hosts)} host(s) x {_counts(ranks)} rank(s) x "
            f"{_counts(gpus) if any(gpus) else 'no'} GPU(s)")
    parts = []
    for h in hosts[:HOSTS_LISTED]:
        what = f"{h.host} ranks {_span(h.ranks)}"
        if h.use:
            what += " on GPU " + _span(sorted(h.use, key=lambda g: (len(g), g)))
        threads = sorted(t for t in h.threads if t is not None)
        if threads:
            what += f", {_span(threads)} BLAS thread(s) each"
        parts.append(what)
    if len(hosts) > HOSTS_LISTED:
        parts.append(f"... {len(hosts) - HOSTS_LISTED} more host(s)")
    return head + ": " + "; ".join(parts)


def sharing_lines(places: Sequence[Place]) -> list[str]:
    """One line per host where more ranks than GPUs share them (nothing when none do)."""
    lines = []
    for h in summarise(places):
        shared = {g: r for g, r in h.use.items() if len(r) > 1}
        if not shared or not h.gpus:
            continue
        pairs = "; ".join(f"GPU {g}: ranks {_span(r)}" for g, r in sorted(shared.items()))
        lines.append(f"note: {h.host} runs {len(h.ranks)} ranks on {len(h.gpus)} GPU(s), so "
                     f"ranks share GPUs ({pairs}); fine for --comm mpi, --comm nccl needs at "
                     f"most {len(h.gpus)} rank(s) on {h.host} (one GPU each)")
    return lines


def gather_places(comm, place: Place) -> list[Place]:
    """Every rank's Place, by rank (collective)."""
    return list(comm.allgather(place))


def my_place(device_count: int = 0, device: int | None = None, threads: int | None = None,
             environ: Mapping[str, str] = os.environ, host: str | None = None) -> Place:
    """This rank's Place: its hostname, what the launcher said, the GPUs it sees and uses."""
    return Place(host or socket.gethostname(), launcher_local_rank(environ),
                 visible_gpus(device_count, environ), device, threads)


def placement_lines(comm, backend, threads: int | None) -> list[str]:
    """The start-up line and any GPU-sharing notes, from every rank's backend (collective)."""
    count = 0 if backend.host_resident else type(backend).device_count()
    places = gather_places(comm, my_place(count, backend.device_index, threads))
    return [placement_line(places)] + sharing_lines(places)
