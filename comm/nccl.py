"""NCCL communicator (through CuPy): gradients summed on the GPUs, on the backend's own stream.

An MPI communicator it holds (composition, not inheritance) bootstraps it (rank 0's NCCL unique id
is broadcast) and still carries the small host-side collectives (metrics, setup agreement) under
its hang watchdog. One GPU per rank: NCCL refuses two ranks on one device, so
that case is reported before NCCL is touched. Works with any backend that exposes
``device_pointer`` and ``stream_handle`` (cupy and pycuda memory alike, handed over by pointer).
"""

from __future__ import annotations

import dataclasses
import socket

import numpy as np

from comm.mpi import MpiCommunicator
from core.communicator import CommOptions, Communicator, Pending
from core.errors import UserError
from core.hookspecs import hookimpl


class NcclCommunicator(Communicator):
    name = "nccl"
    description = "NCCL via cupy.cuda.nccl, bootstrapped over MPI; device buffers, one GPU per rank"
    accepts_device_buffers = True

    @classmethod
    def availability(cls):
        ok, reason = MpiCommunicator.availability()
        if not ok:
            return ok, reason
        try:
            from cupy.cuda import nccl
        except Exception as exc:  # noqa: BLE001
            return False, f"cupy.cuda.nccl cannot be imported: {exc}"
        try:
            version = nccl.get_version()
        except Exception as exc:  # noqa: BLE001
            return False, f"NCCL library not usable: {exc}"
        return True, f"NCCL {version // 10000}.{version // 100 % 100}.{version % 100}"

    def __init__(self, options: CommOptions | None = None, world=None):
        super().__init__(options)
        # the host side never sees a device buffer, whatever the options say
        self.host = MpiCommunicator(dataclasses.replace(self.options, cuda_aware_mpi=False), world)
        self.rank, self.size = self.host.rank, self.host.size
        self.local_rank, self.local_size = self.host.local_rank, self.host.local_size
        self.backend = None
        self.nccl_comm = None

    # The launcher's world is MPI's.
    wait_for_launched_ranks = MpiCommunicator.wait_for_launched_ranks
    abort_launched_job = MpiCommunicator.abort_launched_job

    # ------------------------------------------------------------ host collectives: MPI's
    def allreduce_host_inplace(self, values):
        self.host.allreduce_host_inplace(values)

    def bcast(self, obj, root=0):
        return self.host.bcast(obj, root)

    def allgather(self, obj):
        return self.host.allgather(obj)

    def barrier(self):
        self.host.barrier()

    def unwatched(self):
        return self.host.unwatched()

    def bind_backend(self, backend):
        """Create the NCCL communicator on the backend's device (collective over all ranks)."""
        import cupy
        from cupy.cuda import nccl

        if backend.host_resident:
            raise UserError(f"--comm nccl: backend {backend.name!r} keeps its data in host memory; "
                            "NCCL needs a GPU backend (e.g. --backend cupy or pycuda)")
        self._destroy_nccl()  # re-binding (a new backend, as the benchmark does) starts afresh
        self.backend = backend
        places = self.allgather((socket.gethostname(), backend.device_index))
        # Decided from the gathered table alone, so every rank raises the same error (or none)
        # and no rank goes on into NCCL's collective initialisation without the others.
        for place in places:
            sharing = [r for r, other in enumerate(places) if other == place]
            if len(sharing) > 1:
                gpus = len({p for p in places if p[0] == place[0]})
                raise UserError(
                    f"--comm nccl: ranks {', '.join(map(str, sharing))} would share GPU {place[1]} "
                    f"on {place[0]}; NCCL needs one GPU per rank: start at most {gpus} rank(s) "
                    f"per node, or use --comm mpi, which lets ranks share a GPU")
        self._dtype = {"float32": nccl.NCCL_FLOAT32, "float64": nccl.NCCL_FLOAT64}[backend.dtype.name]
        self._sum = nccl.NCCL_SUM
        uid = self.bcast(nccl.get_unique_id() if self.rank == 0 else None)
        with cupy.cuda.Device(backend.device_index or 0), self.host.watch("nccl init"):
            self.nccl_comm = nccl.NcclCommunicator(self.size, uid, self.rank)
            # A stream of our own lets a reduction run beside the backend's computation; events
            # (raw handles, so pycuda's stream works too) order the two streams.
            rt = cupy.cuda.runtime
            self._rt = rt
            self._comm_stream = rt.streamCreateWithFlags(rt.streamNonBlocking)
            self._ready = rt.eventCreateWithFlags(rt.eventDisableTiming)
            self._done = rt.eventCreateWithFlags(rt.eventDisableTiming)

    def allreduce_sum(self, buf):
        if self.nccl_comm is None or isinstance(buf, np.ndarray):
            self.host.allreduce_sum(buf)  # host buffers (never in training) go through MPI
            return
        pointer = self.backend.device_pointer(buf)
        self.nccl_comm.allReduce(pointer, pointer, int(buf.shape[0]), self._dtype, self._sum,
                                 self.backend.stream_handle())

    def drain(self):
        """Wait, under the hang watchdog, for the queued device work and reductions. NCCL calls
        return at once; a peer that never arrives shows up here as a stream that never drains."""
        with self.host.watch("nccl allreduce"):
            self.backend.synchronize()
            self._rt.streamSynchronize(self._comm_stream)

    def allreduce_sum_start(self, buf):
        """Queue the reduction on the communication stream once the compute stream has produced
        ``buf``; the compute stream goes on with what is queued next."""
        if self.nccl_comm is None or isinstance(buf, np.ndarray):
            return self.host.allreduce_sum_start(buf)
        rt, compute = self._rt, self.backend.stream_handle()
        rt.eventRecord(self._ready, compute)
        rt.streamWaitEvent(self._comm_stream, self._ready, 0)
        pointer = self.backend.device_pointer(buf)
        self.nccl_comm.allReduce(pointer, pointer, int(buf.shape[0]), self._dtype, self._sum,
                                 self._comm_stream)
        return _NcclPending(self)

    def abort(self, code):
        if self.nccl_comm is not None:
            try:
                self.nccl_comm.abort()
            except Exception:  # noqa: BLE001 - aborting anyway
                pass
        self.host.abort(code)

    def _destroy_nccl(self):
        if self.nccl_comm is not None:
            self.backend.synchronize()
            self._rt.streamSynchronize(self._comm_stream)
            self.nccl_comm.destroy()
            self._rt.streamDestroy(self._comm_stream)
            self._rt.eventDestroy(self._ready)
            self._rt.eventDestroy(self._done)
            self.nccl_comm = None

    def finalize(self):
        self._destroy_nccl()
        self.host.finalize()


class _NcclPending(Pending):
    def __init__(self, comm):
        self.comm = comm

    def wait(self):
        """Make the compute stream wait for the reductions queued so far (no host sync)."""
        c = self.comm
        c._rt.eventRecord(c._done, c._comm_stream)
        c._rt.streamWaitEvent(c.backend.stream_handle(), c._done, 0)


@hookimpl
def register_communicators(register):
    register(NcclCommunicator)
