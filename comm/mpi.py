"""MPI communicator (mpi4py).

By default it only ever sees host buffers: the trainer stages device gradients through pinned host
memory. With ``CommOptions.cuda_aware_mpi`` (``--cuda-aware-mpi``) device buffers go to MPI
directly, which is faster on a CUDA-aware MPI and crashes (segfault) on one that is not.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

import numpy as np

from comm.watchdog import Watchdog
from core.communicator import CommOptions, Communicator, Pending
from core.hookspecs import hookimpl


#: Open MPI's choice of algorithm for the non-blocking allreduce of the gradients: the binomial
#: tree sums each element in one order whatever the message's size, so the bits do not depend on
#: --bucket-mb (core/buckets.py); its ring would. Set before MPI starts, unless the user set it.
REDUCTION_ORDER_ENV = {"OMPI_MCA_coll_libnbc_iallreduce_algorithm": "binomial"}


def pin_reduction_order(environ=os.environ) -> None:
    """Fix the reduction order of Open MPI's Iallreduce (see REDUCTION_ORDER_ENV); other MPIs
    ignore the variable. Must run before mpi4py initialises MPI."""
    for var, value in REDUCTION_ORDER_ENV.items():
        environ.setdefault(var, value)


class _DeviceBuffer:
    """A 1-D device buffer described by __cuda_array_interface__, which mpi4py understands."""

    def __init__(self, pointer: int, count: int, dtype: np.dtype):
        self.__cuda_array_interface__ = {"shape": (count,), "typestr": np.dtype(dtype).str,
                                         "data": (pointer, False), "version": 3, "strides": None}


class MpiCommunicator(Communicator):
    name = "mpi"
    description = "MPI via mpi4py; gradients staged through pinned host memory"

    @classmethod
    def availability(cls):
        try:
            import mpi4py
        except Exception as exc:  # noqa: BLE001 - any import failure means unavailable
            return False, f"mpi4py cannot be imported: {exc}"
        return True, f"mpi4py {mpi4py.__version__}"

    def __init__(self, options: CommOptions | None = None, world=None):
        super().__init__(options)
        pin_reduction_order()
        from mpi4py import MPI  # initialises MPI (thread level MULTIPLE by default)

        self._mpi = MPI
        self.world = world if world is not None else MPI.COMM_WORLD
        self.rank = self.world.Get_rank()
        self.size = self.world.Get_size()
        node = self.world.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
        node.Free()
        self.accepts_device_buffers = self.options.cuda_aware_mpi
        self.backend = None
        self.watchdog = (Watchdog(self.world, self.options.collective_timeout)
                         if self.size > 1 else None)

    @classmethod
    def wait_for_launched_ranks(cls, patience):
        """A bounded barrier over the launched world (an Ibarrier polled until ``patience``), so
        a rank that is about to exit does not take a line another rank is printing with it."""
        pin_reduction_order()
        from mpi4py import MPI

        request = MPI.COMM_WORLD.Ibarrier()
        deadline = time.monotonic() + patience
        while not request.Test() and time.monotonic() < deadline:
            time.sleep(0.01)

    @classmethod
    def abort_launched_job(cls, code):
        if "mpi4py.MPI" in sys.modules:  # MPI never started: nothing to end but this process
            sys.stderr.flush()
            sys.modules["mpi4py.MPI"].COMM_WORLD.Abort(code)

    def bind_backend(self, backend):
        self.backend = backend
        if self.accepts_device_buffers and backend.host_resident:
            self.accepts_device_buffers = False  # nothing on a device to hand over

    def watch(self, name):
        """Context for one collective under the hang watchdog."""
        return self.watchdog.collective(name) if self.watchdog else contextlib.nullcontext()

    def unwatched(self):
        """Context for a wait that is long on purpose (rank 0 running --verify's reference)."""
        if not self.watchdog:
            return contextlib.nullcontext()
        return _paused(self.watchdog)

    def _mpi_buffer(self, buf):
        if self.accepts_device_buffers and self.backend is not None and not isinstance(buf, np.ndarray):
            # MPI knows nothing of our stream: the gradients must be complete before it reads them.
            self.backend.synchronize()
            return _DeviceBuffer(self.backend.device_pointer(buf), int(buf.shape[0]),
                                 self.backend.dtype)
        return buf

    def allreduce_sum(self, buf):
        buf = self._mpi_buffer(buf)
        with self.watch("allreduce"):
            self.world.Allreduce(self._mpi.IN_PLACE, buf, op=self._mpi.SUM)

    def allreduce_sum_start(self, buf):
        request = self.world.Iallreduce(self._mpi.IN_PLACE, self._mpi_buffer(buf), op=self._mpi.SUM)
        return _MpiPending(self, request)

    def allreduce_host_inplace(self, values):
        with self.watch("allreduce (metrics)"):
            self.world.Allreduce(self._mpi.IN_PLACE, values, op=self._mpi.SUM)

    def bcast(self, obj, root=0):
        with self.watch("bcast"):
            return self.world.bcast(obj, root=root)

    def allgather(self, obj):
        with self.watch("allgather"):
            return self.world.allgather(obj)

    def barrier(self):
        with self.watch("barrier"):
            self.world.Barrier()

    def abort(self, code):
        sys.stderr.flush()
        sys.stdout.flush()
        self.world.Abort(code)
        os._exit(code)  # Abort does not return; this is for MPIs that do

    def finalize(self):
        if self.watchdog:
            self.watchdog.stop()


class _MpiPending(Pending):
    def __init__(self, comm, request):
        self.comm, self.request = comm, request

    def wait(self):
        with self.comm.watch("allreduce"):
            self.request.Wait()

    def test(self):
        return bool(self.request.Test())


@contextlib.contextmanager
def _paused(watchdog):
    saved, watchdog.timeout = watchdog.timeout, float("inf")
    try:
        yield
    finally:
        watchdog.timeout = saved


@hookimpl
def register_communicators(register):
    register(MpiCommunicator)
