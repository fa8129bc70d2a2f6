"""BLAS threads per rank: when several ranks share a node, each one's BLAS must not start a thread
per core, or they compete for the cores (a 2-rank NumPy run on 2 cores then runs 4 threads).

``limit_blas_threads(local_ranks)`` sets, with threadpoolctl, max(1, cores // local_ranks)
threads per rank, where ``cores`` is the CPU set this process may run on. If the launcher bound
the rank to a subset of the node's cores (Open MPI does by default), that subset is this rank's
already and is used whole. Nothing is changed when the user set OMP_NUM_THREADS,
OPENBLAS_NUM_THREADS or MKL_NUM_THREADS: that choice is theirs. Returns one line saying what was
done (the CLI prints it on rank 0), or None when there was nothing to do.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

BLAS_ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
#: Launcher variables giving the number of ranks on this node.
_LOCAL_SIZE_VARS = ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "PMIX_LOCAL_SIZE",
                    "SLURM_NTASKS_PER_NODE")

_limiter = None  # the threadpoolctl limiter in force (kept so that it is not collected)


def node_cores() -> int:
    return os.cpu_count() or 1


def usable_cores() -> int:
    """CPUs this process may run on (its affinity mask), else the node's count."""
    try:
        return len(os.sched_getaffinity(0)) or node_cores()
    except (AttributeError, OSError):
        return node_cores()


def local_ranks_from_env(environ: Mapping[str, str] = os.environ) -> int | None:
    for var in _LOCAL_SIZE_VARS:
        value = environ.get(var, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return None


def count_local_ranks(hostnames: Sequence[str], rank: int) -> int:
    """Ranks on this rank's node, from every rank's hostname (``comm.allgather(gethostname())``)."""
    return max(1, list(hostnames).count(hostnames[rank]))


def threads_per_rank(local_ranks: int, usable: int, total: int) -> tuple[int, str]:
    """(threads, why) for one rank."""
    local_ranks = max(1, local_ranks)
    if usable < total:  # bound by the launcher to its own cores
        return max(1, usable), f"{usable} core(s) this rank is bound to"
    threads = max(1, usable // local_ranks)
    return threads, f"{usable} cores / {local_ranks} ranks on this node"


def planned_blas_threads(local_ranks: int, environ: Mapping[str, str] = os.environ) -> int | None:
    """The BLAS threads limit_blas_threads gives this rank (None: left to the user's setting)."""
    if any(environ.get(v) for v in BLAS_ENV_VARS):
        return None
    return threads_per_rank(local_ranks, usable_cores(), node_cores())[0]


def limit_blas_threads(local_ranks: int | None = None, *, environ: Mapping[str, str] = os.environ,
                       usable: int | None = None, total: int | None = None) -> str | None:
    """Limit this process's BLAS threads (see the module docstring); returns the line to print."""
    user_set = [f"{v}={environ[v]}" for v in BLAS_ENV_VARS if environ.get(v)]
    if user_set:
        return f"BLAS threads: left as set by {', '.join(user_set)}"
    if local_ranks is None:
        local_ranks = local_ranks_from_env(environ) or 1
    usable = usable_cores() if usable is None else usable
    total = node_cores() if total is None else total
    threads, why = threads_per_rank(local_ranks, usable, total)
    if local_ranks <= 1 and usable >= total:
        return None  # one rank with the whole node: the BLAS default is right
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return (f"BLAS threads: not limited (threadpoolctl is not installed); set "
                f"OMP_NUM_THREADS={threads} to avoid oversubscribing the cores")
    global _limiter
    _limiter = threadpool_limits(limits=threads, user_api="blas")
    return f"BLAS threads: {threads} per rank ({why}); set OMP_NUM_THREADS to override"


def restore_blas_threads() -> None:
    """Undo limit_blas_threads (tests)."""
    global _limiter
    if _limiter is not None:
        _limiter.restore_original_limits()
        _limiter = None
