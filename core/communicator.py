"""The communicator contract: what the trainer needs from MPI, NCCL or a single process.

A communicator is constructed with ``CommOptions`` (the job reads flags and environment once, in
core/job.py, and hands them over); it never reads the environment itself.

The trainer calls these on every rank in the same order. Buffers are 1-D and summed in place.
A communicator with ``accepts_device_buffers`` False only ever receives host (NumPy) buffers: the
trainer stages device gradients through a pinned host buffer first, because handing a device pointer
to an MPI that is not CUDA-aware crashes it.
"""

from __future__ import annotations

import abc
import contextlib
from dataclasses import dataclass
from typing import Any, ClassVar, NoReturn

import numpy as np

#: seconds a collective may take before the job is aborted, when nobody says otherwise
DEFAULT_COLLECTIVE_TIMEOUT = 300.0


@dataclass(frozen=True)
class CommOptions:
    """What a job tells its communicator. Communicators ignore what does not concern them."""

    #: hand device buffers to MPI directly (only for a CUDA-aware MPI; any other crashes)
    cuda_aware_mpi: bool = False
    #: seconds before a collective that has not completed aborts the job (0 = never)
    collective_timeout: float = DEFAULT_COLLECTIVE_TIMEOUT


class Pending:
    """A started reduction; ``wait()`` returns once the result may be used (on the device: once
    work queued after it on the compute stream will see the result)."""

    def wait(self) -> None:
        pass

    def test(self) -> bool:
        """Whether the reduction has completed, without waiting; an MPI without a progress
        thread advances it only inside such calls. The default has nothing pending."""
        return True


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
    local_size: int = 1  # processes on this node (BLAS threads are shared among them)

    def __init__(self, options: CommOptions | None = None):
        self.options = options or CommOptions()

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        """Return (available, reason); must not raise."""
        return True, ""

    # Before any communicator exists (a flag mistake found on every rank alike), the job still
    # needs two things of the launcher's world. The defaults suit a job of one process.
    @classmethod
    def wait_for_launched_ranks(cls, patience: float) -> None:
        """Wait, at most ``patience`` seconds, until every launched rank has reached this call."""

    @classmethod
    def abort_launched_job(cls, code: int) -> None:
        """End every launched rank now, if this process belongs to a started multi-rank job."""

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
