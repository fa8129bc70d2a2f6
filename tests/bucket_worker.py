"""Run under mpirun by tests/test_buckets.py (not a test module itself).

    mpirun -n P python tests/bucket_worker.py OUTDIR [BACKEND]

Trains the same case once per (dtype, --bucket-mb) of ``RUNS`` on the bundled subset, on the NumPy
backend (BACKEND ``numpy``, the default: the exchange reduces the host buffer in place) or on a
NumPy backend declared device-resident (``staged``: the GPU backends' path, the gradient staged
through a host buffer), and rank 0 writes every run's final flat parameters to
OUTDIR/<dtype>-<bucket_mb>.npy. ``unblocked`` is the run without column blocks (the hidden
layer's gradient in one GEMM, as on one rank).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from backends.ops_numpy import NumpyBackend
from core.data_parallel import DataParallelTrainer, TrainConfig
from core.job import Job
from subset_training import StagedNumpy, dataset

#: H = 64: a block of 128 columns is 32 KiB in float32, so 0.03 MiB gives one block a bucket,
#: 0.07 two, 0.2 six, 1 one bucket of all seven; 0 the unbucketed exchange
BUCKET_MBS = ("0", "0.03", "0.07", "0.2", "1", "unblocked")
CASE = dict(hidden=64, n=400, batch=67, epochs=2, reg=1e-3, lr=0.5, seed=3)


def train(comm, backend_cls, dtype: str, bucket: str) -> np.ndarray:
    x, y = dataset(CASE["n"])
    backend = backend_cls(dtype)
    comm.bind_backend(backend)
    config = TrainConfig(hidden=CASE["hidden"], reg=CASE["reg"], lr=CASE["lr"],
                         epochs=CASE["epochs"], batch_size=CASE["batch"], seed=CASE["seed"],
                         dtype=dtype)
    trainer = DataParallelTrainer(backend, comm, config, x.astype(dtype, order="F"), y,
                                  bucket_mb=0.0 if bucket == "unblocked" else float(bucket))
    if bucket == "unblocked":
        trainer.hidden_blocks = None
    trainer.train()
    return backend.to_host(trainer.model.flat_params)


def main(argv: list[str]) -> int:
    out = Path(argv[0])
    backend_cls = StagedNumpy if argv[1:] == ["staged"] else NumpyBackend
    comm = Job.start("mpi").comm
    for dtype in ("float32", "float64"):
        for bucket in BUCKET_MBS:
            flat = train(comm, backend_cls, dtype, bucket)
            if comm.rank == 0:
                np.save(out / f"{dtype}-{bucket}.npy", flat)
    comm.barrier()
    comm.finalize()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
