"""The communicator contract: what the trainer needs from MPI, NCCL or a single process.

The trainer calls these on every rank in the same order. Buffers are 1-D and summed in place.
A communicator with ``accepts_device_buffers`` False only ever receives host (NumPy) buffers: the
trainer stages device gradients through a pinned host buffer first, because handing a device pointer
to an MPI that is not CUDA-aware crashes it.
"""

from __future__ import annotations

import abc
import contextlib
import os
from typing import Any, ClassVar, NoReturn

import numpy as np

# Environment variables that launchers set for each rank (Open MPI, MPICH/Hydra, PMIx, Slurm).
_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS")
_RANK_VARS = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID")


def launched_size() -> int:
    """Number of ranks the launcher started, read from its environment (1 without a launcher)."""
    for var in _SIZE_VARS:
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 1


def launched_rank() -> int:
    """This process's rank according to the launcher's environment (0 without a launcher).

    Used before any communicator exists, e.g. so that only rank 0 prints a bad-flag message."""
    for var in _RANK_VARS:
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


class Pending:
    """A started reduction; ``wait()`` returns once the result may be used (on the device: once
    work queued after it on the compute stream will see the result)."""

    def wait(self) -> None:
        pass


DONE = Pending()


class Communicator(abc.ABC):
    """Abstract communicator; one instance per process."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    #: True when ``allreduce_sum`` may be given device buffers (NCCL, CUDA-aware MPI).
    accepts_device_buffers: ClassVar[bool] = False

    rank: int = 0
    size: int = 1
    local_rank: int = 0  # rank among the processes of this node: picks the GPU

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        """Return (available, reason); must not raise."""
        return True, ""

    def bind_backend(self, backend: Any) -> None:
        """Called once the compute backend exists (device communicators need its stream)."""

    @abc.abstractmethod
    def allreduce_sum(self, buf: Any) -> None:
        """Sum ``buf`` (1-D) element-wise over all ranks, in place, on every rank."""

    def allreduce_sum_start(self, buf: Any) -> Pending:
        """Start summing ``buf`` over ranks; the caller must ``wait()`` before using it. The base
        version is blocking; MPI and NCCL overlap it with the computation queued meanwhile."""
        self.allreduce_sum(buf)
        return DONE

    def allreduce_host(self, values: np.ndarray) -> np.ndarray:
        """Sum a small host array over ranks (metrics); returns the summed copy."""
        out = np.array(values, dtype=np.float64, copy=True)
        self.allreduce_host_inplace(out)
        return out

    @abc.abstractmethod
    def allreduce_host_inplace(self, values: np.ndarray) -> None:
        """Sum a host float64 array over ranks in place."""

    @abc.abstractmethod
    def bcast(self, obj: Any, root: int = 0) -> Any:
        """Return root's ``obj`` on every rank (any picklable object)."""

    @abc.abstractmethod
    def allgather(self, obj: Any) -> list:
        """Return the list of every rank's ``obj``, ordered by rank."""

    @abc.abstractmethod
    def barrier(self) -> None:
        """Wait until every rank arrives."""

    @abc.abstractmethod
    def abort(self, code: int) -> NoReturn:
        """End every rank of the job now with exit ``code``."""

    def drain(self) -> None:
        """Wait for queued device-side reductions (NCCL) before host code reads results."""

    def unwatched(self):
        """Context manager for a wait that is long on purpose (no hang timeout inside it)."""
        return contextlib.nullcontext()

    def finalize(self) -> None:
        """Release resources at a normal end."""
