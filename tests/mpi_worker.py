"""Run under mpirun by tests/test_data_parallel_equivalence.py and tests/test_job_failures.py (not
a test module itself).

    mpirun -n P python tests/mpi_worker.py train CASES.json OUTDIR
        For every case in CASES.json ({"name": {"hidden":..,"n":..,"batch":..,"epochs":..,
        "reg":..,"lr":..,"seed":..}}), train a DataParallelTrainer (NumPy backend, float64,
        MpiCommunicator) on the first n images of the bundled MNIST subset, and have EVERY rank
        save its final parameters to OUTDIR/<name>.rank<r>.npz.

    mpirun -n P python tests/mpi_worker.py fail OUTDIR
        Train with a backend whose gemm raises on rank $DPMLP_TEST_FAIL_RANK at training step
        $DPMLP_TEST_FAIL_STEP, handled the way the CLI does it (core.job.Job.abort): the whole
        job must end promptly, naming the rank.

The same data and training function serve the test's single-process reference
(``train_params``, in subset_training.py).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

from backends.ops_numpy import NumpyBackend
from core.job import Job
from subset_training import train_params


class FailingBackend(NumpyBackend):
    """NumPy backend whose hidden-layer forward pass (gemm_bias_sigmoid) raises on one rank once
    training has reached a given step."""

    fail_rank = -1
    fail_step = 3
    rank = 0
    calls = 0

    def gemm_bias_sigmoid(self, *args, **kwargs):
        FailingBackend.calls += 1
        # one call per step on a rank with samples (MLP.forward's z1)
        if self.rank == self.fail_rank and FailingBackend.calls > self.fail_step:
            raise RuntimeError(f"injected failure at step {self.fail_step}")
        super().gemm_bias_sigmoid(*args, **kwargs)


def main(argv: list[str]) -> int:
    job = Job.start("mpi")
    comm = job.comm
    mode = argv[0]
    if mode == "train":
        cases = json.loads(Path(argv[1]).read_text())
        out = Path(argv[2])
        for name, case in cases.items():
            params = train_params(case, comm)
            np.savez(out / f"{name}.rank{comm.rank}.npz", **params)
        comm.barrier()
        comm.finalize()
        return 0
    if mode == "fail":
        backend = FailingBackend("float64")
        backend.rank = comm.rank
        backend.fail_rank = int(os.environ.get("DPMLP_TEST_FAIL_RANK", "1"))
        backend.fail_step = int(os.environ.get("DPMLP_TEST_FAIL_STEP", "3"))
        case = {"hidden": 16, "n": 400, "batch": 20, "epochs": 50, "reg": 1e-4, "lr": 0.1,
                "seed": 0}
        try:
            train_params(case, comm, backend)
        except BaseException as exc:  # noqa: BLE001 - exactly what core.train.main does
            job.abort(exc)
        # Reaching this line means the failure did not end the job.
        Path(argv[1], f"finished.rank{comm.rank}").write_text("finished\n")
        return 0
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
