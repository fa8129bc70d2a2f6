"""CUDA graphs (--cuda-graphs): when they are used, and that a replayed epoch computes exactly what
the eager launches compute (bit for bit), for both GPU backends and both dtypes."""

from __future__ import annotations

import numpy as np
import pytest

from backends.ops_numpy import NumpyBackend
from comm.single import SingleCommunicator
from conftest import backend_or_skip
from core.data_parallel import DataParallelTrainer, TrainConfig, scale_images
from core.errors import UserError
from core.model import PARAM_NAMES


def _data(n=1000, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 784), dtype=np.uint8)
    return images, rng.integers(0, 10, n).astype(np.int32)


def _trainer(backend, graphs, comm=None, epochs=2):
    images, labels = _data()
    x = scale_images(images[:900], "unit", backend.dtype.type)
    vx = scale_images(images[900:], "unit", backend.dtype.type)
    # 900 = 13 * 67 + 29: a smaller last batch inside the captured epoch
    config = TrainConfig(hidden=33, reg=0.1, lr=0.5, epochs=epochs, batch_size=67, seed=5,
                         dtype=backend.dtype.name)
    return DataParallelTrainer(backend, comm or SingleCommunicator(), config, x, labels[:900],
                               vx, labels[900:], cuda_graphs=graphs)


# ------------------------------------------------------------------ the decision (CPU)
def test_host_backend_auto_is_eager_and_says_why():
    trainer = _trainer(NumpyBackend("float64"), "auto")
    assert not trainer.use_graphs and "numpy" in trainer.graph_note and "graph" in trainer.graph_note


def test_on_where_graphs_cannot_work_is_a_user_error_naming_the_flag():
    with pytest.raises(UserError, match="--cuda-graphs on"):
        _trainer(NumpyBackend("float64"), "on")


class _GraphableStaged(NumpyBackend):
    """Claims graphs and device memory, so the trainer must stage the exchange through the host."""

    name = "graphable-staged"
    host_resident = False

    def graph_support(self):
        return True, ""


class _TwoRanks(SingleCommunicator):
    size = 2
    accepts_device_buffers = False  # a host MPI

    def allreduce_sum(self, buf):
        buf *= 2


def test_staged_exchange_falls_back_to_eager_with_the_reason():
    trainer = _trainer(_GraphableStaged("float64"), "auto", comm=_TwoRanks())
    assert trainer.exchange.mode == "staged"
    assert not trainer.use_graphs and "staged through host memory" in trainer.graph_note
    with pytest.raises(UserError, match="--cuda-graphs on: .*staged"):
        _trainer(_GraphableStaged("float64"), "on", comm=_TwoRanks())


# ------------------------------------------------------------------ replay == eager (GPU)
def _gpu_backend(name, dtype):
    """A new instance of GPU backend `name` on device 0, or skip (unavailable, or no graphs)."""
    backend = backend_or_skip(name, dtype, 0)
    ok, why = backend.graph_support()
    if not ok:
        pytest.skip(f"CUDA graphs unavailable with {name}: {why}")
    return backend


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", ["cupy", "pycuda"])
def test_graph_epochs_are_bit_identical_to_eager(name, dtype):
    runs = {}
    for graphs in ("off", "on"):
        trainer = _trainer(_gpu_backend(name, dtype), graphs, epochs=3)
        assert trainer.use_graphs == (graphs == "on")
        history = trainer.train()
        runs[graphs] = (trainer.params(), [(h.loss, h.val_accuracy) for h in history])
    eager, graph = runs["off"], runs["on"]
    for p in PARAM_NAMES:
        assert np.array_equal(eager[0][p], graph[0][p]), f"{name} {dtype} {p} differs"
    assert eager[1] == graph[1]  # the same losses and validation accuracies, epoch by epoch
    assert eager[1][-1][0] < eager[1][0][0]  # and it trained


@pytest.mark.gpu
def test_graph_replays_are_not_recaptured():
    trainer = _trainer(_gpu_backend("cupy", "float32"), "on", epochs=1)
    trainer.train_epoch()
    first = trainer._epoch_graph
    trainer.train_epoch()
    assert first is not None and trainer._epoch_graph is first
