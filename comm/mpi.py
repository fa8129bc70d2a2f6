"""MPI communicator (mpi4py). Host buffers only unless CUDA-aware MPI is explicitly enabled."""

from __future__ import annotations

import os
import sys

from comm.base import Communicator
from core.hookspecs import hookimpl


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

    def __init__(self):
        from mpi4py import MPI  # initialises MPI (thread level MULTIPLE by default)

        self._mpi = MPI
        self.world = MPI.COMM_WORLD
        self.rank = self.world.Get_rank()
        self.size = self.world.Get_size()
        node = self.world.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank = node.Get_rank()
        node.Free()

    def allreduce_sum(self, buf):
        self.world.Allreduce(self._mpi.IN_PLACE, buf, op=self._mpi.SUM)

    def allreduce_host_inplace(self, values):
        self.world.Allreduce(self._mpi.IN_PLACE, values, op=self._mpi.SUM)

    def bcast(self, obj, root=0):
        return self.world.bcast(obj, root=root)

    def allgather(self, obj):
        return self.world.allgather(obj)

    def barrier(self):
        self.world.Barrier()

    def abort(self, code):
        sys.stderr.flush()
        sys.stdout.flush()
        self.world.Abort(code)
        os._exit(code)  # Abort does not return; this is for MPIs that do


@hookimpl
def register_communicators(register):
    register(MpiCommunicator)
