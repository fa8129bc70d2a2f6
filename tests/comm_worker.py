"""Run under mpirun by tests/test_gradient_exchange.py and tests/test_job_failures.py (not a test
module itself).

    mpirun -n P python tests/comm_worker.py staged OUTDIR
        Train with a NumPy backend that pretends to keep its arrays on a device, so the trainer
        must stage gradients through its host buffer; rank 0 saves params and the metrics.
    mpirun -n P python tests/comm_worker.py long OUTDIR
        Train "forever" after writing OUTDIR/rank<r>.pid; the test kills one rank.
    mpirun -n P python tests/comm_worker.py hang
        The last rank stops arriving at collectives after a few steps; the watchdog must abort.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

from backends.ops_numpy import NumpyBackend
from core.data_parallel import DataParallelTrainer
from core.job import Job
from subset_training import STAGED_CASE as CASE, StagedNumpy, config_of, dataset


class StallingNumpy(NumpyBackend):
    """The last rank sleeps inside the forward pass after 3 steps, as a hung GPU would."""

    calls = 0

    def gemm_bias_sigmoid(self, a, b, bias, out):  # the hidden layer's forward pass
        StallingNumpy.calls += 1
        if self.stall and StallingNumpy.calls > 3:
            time.sleep(3600)
        super().gemm_bias_sigmoid(a, b, bias, out)


def staged(outdir: str) -> None:
    comm = Job.start("mpi").comm
    backend = StagedNumpy("float64")
    comm.bind_backend(backend)
    x, y = dataset(CASE["n"])
    vx, vy = dataset(400)
    trainer = DataParallelTrainer(backend, comm, config_of(CASE), x, y, vx[:, 300:], vy[300:])
    history = trainer.train()
    if comm.rank == 0:
        np.savez(f"{outdir}/staged.npz", **trainer.params())
        with open(f"{outdir}/metrics.json", "w") as fh:
            json.dump({"mode": trainer.exchange.mode,
                       "loss": [h.loss for h in history],
                       "val": [h.val_accuracy for h in history]}, fh)


def long(outdir: str) -> None:
    """Train for a long time, after writing this rank's pid (the test kills one rank)."""
    import os

    comm = Job.start("mpi").comm
    with open(f"{outdir}/rank{comm.rank}.pid", "w") as fh:
        fh.write(str(os.getpid()))
    x, y = dataset(CASE["n"])
    config = config_of(dict(CASE, epochs=100000))
    DataParallelTrainer(NumpyBackend("float64"), comm, config, x, y).train()


def hang() -> None:
    comm = Job.start("mpi").comm
    backend = StallingNumpy("float64")
    backend.stall = comm.rank == comm.size - 1
    x, y = dataset(CASE["n"])
    DataParallelTrainer(backend, comm, config_of(CASE), x, y).train()


if __name__ == "__main__":
    if sys.argv[1] == "staged":
        staged(sys.argv[2])
    elif sys.argv[1] == "long":
        long(sys.argv[2])
    else:
        hang()
