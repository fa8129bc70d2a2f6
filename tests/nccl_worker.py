"""Run under mpirun by tests/test_nccl_communicator.py: the NCCL communicator's device path on one backend.

    mpirun -n P python tests/nccl_worker.py BACKEND DTYPE

Each rank binds NCCL to its GPU, sums a buffer whose values depend on the rank with both the
blocking and the overlapped (start/wait on a second stream) calls, and checks the result.
"""

import sys

import numpy as np

from core.job import Job


def main(backend_name: str, dtype: str) -> int:
    job = Job.start("nccl")
    comm = job.comm
    _, backend = job.make_backend(backend_name, dtype)
    comm.bind_backend(backend)
    n = 1013
    base = np.arange(n, dtype=np.float64)
    expected = sum(base * (r + 1) for r in range(comm.size))

    buf = backend.from_host(base * (comm.rank + 1))
    comm.allreduce_sum(buf)
    blocking = backend.to_host(buf)

    buf = backend.from_host(base * (comm.rank + 1))
    head, tail = backend.cols(buf, 0, 600), backend.cols(buf, 600, n)
    pending_tail = comm.allreduce_sum_start(tail)
    backend.axpy(0.0, head, head)  # work queued on the compute stream meanwhile
    pending_head = comm.allreduce_sum_start(head)
    pending_tail.wait()
    pending_head.wait()
    backend.axpy(1.0, buf, buf)    # ordered after the reductions by the events: doubles the sum
    comm.drain()
    overlapped = backend.to_host(buf)
    comm.finalize()

    ok = np.array_equal(blocking, expected) and np.array_equal(overlapped, 2 * expected)
    print(f"rank {comm.rank}: nccl {backend_name} {dtype} {'ok' if ok else 'WRONG'}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
