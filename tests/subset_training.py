"""Training on the bundled MNIST subset, shared by the mpirun workers and the tests' references.

The workers (``mpi_worker.py``, ``comm_worker.py``) are scripts that mpirun starts, so they import
this plain module (it lies beside them); the tests import it too, so that the single-process
reference a test computes is the very training a worker ran under mpirun.
"""

from __future__ import annotations

import numpy as np

from backends.ops_numpy import NumpyBackend
from core import data
from core.data_parallel import DataParallelTrainer, TrainConfig, scale_images

#: the case of the gradient-exchange tests (comm_worker.py): uneven split, smaller last batch
STAGED_CASE = dict(hidden=16, n=300, batch=67, epochs=2, reg=0.1, lr=0.5, seed=1)

_SUBSET = None


def dataset(n: int):
    """First n images of the bundled subset, scaled to [0,1], as the 784 x n float64 matrix."""
    global _SUBSET
    if _SUBSET is None:
        _SUBSET = data.load_split(data.BUNDLED_DIR, "train")
    images, labels = _SUBSET
    return scale_images(images[:n], "unit", np.float64), labels[:n].astype(np.int32)


def config_of(case: dict) -> TrainConfig:
    return TrainConfig(hidden=case["hidden"], reg=case["reg"], lr=case["lr"],
                       epochs=case["epochs"], batch_size=case["batch"], seed=case["seed"],
                       dtype="float64")


def train_params(case: dict, comm, backend=None) -> dict[str, np.ndarray]:
    x, y = dataset(case["n"])
    backend = backend or NumpyBackend("float64")
    comm.bind_backend(backend)
    trainer = DataParallelTrainer(backend, comm, config_of(case), x, y)
    trainer.train()
    return trainer.params()


class StagedNumpy(NumpyBackend):
    """Host arrays, but declared device-resident: exercises the staging path of the exchange."""

    name = "staged-numpy"
    host_resident = False
