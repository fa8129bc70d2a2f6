"""The gradient exchange (core.data_parallel.GradientExchange) and what it hands the communicator.

A backend whose arrays are not host memory gets its gradients copied to the reused host buffer,
and only that buffer reaches the communicator; a host-resident backend is reduced in place; one
rank exchanges nothing. Under mpirun the staged result still equals the single-process training,
and the metrics (loss, validation accuracy) are the single-process ones. CPU only (CI runs these).
What happens when a rank hangs or dies is tested in test_job_failures.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from comm.single import SingleCommunicator
from conftest import relative_max_error, run_mpi
from core.communicator import Communicator
from core.data_parallel import DataParallelTrainer, GradientExchange
from core.model import PARAM_NAMES
from model_helpers import exchange_whole
from subset_training import STAGED_CASE, StagedNumpy, config_of, dataset

WORKER = Path(__file__).resolve().parent / "comm_worker.py"


class RecordingComm(Communicator):
    """Two 'ranks' that hold the same gradient: the sum doubles it. Records every buffer."""

    name = "recording"
    size = 2

    def __init__(self):
        self.seen = []

    def allreduce_sum(self, buf):
        self.seen.append(buf)
        buf *= 2

    def allreduce_host_inplace(self, values):
        values *= 2

    def bcast(self, obj, root=0):
        return obj

    def allgather(self, obj):
        return [obj, obj]

    def barrier(self):
        pass

    def abort(self, code):
        raise SystemExit(code)


def exchanged(backend, comm, size=10, split=6):
    """A flat buffer 0, 1, ... of ``size`` through a whole exchange: (the exchange, the buffer)."""
    flat = backend.from_host(np.arange(float(size)))
    exchange = GradientExchange(backend, comm, flat, split=split)
    exchange_whole(exchange)
    return exchange, flat


def test_staged_exchange_hands_only_the_host_buffer_to_the_communicator():
    comm = RecordingComm()
    exchange, flat = exchanged(StagedNumpy("float64"), comm)
    assert exchange.mode == "staged"
    assert len(comm.seen) == 2  # tail (output layer) first, then head: two calls, one buffer
    assert all(np.shares_memory(buf, exchange.staging) for buf in comm.seen)
    assert not any(np.shares_memory(buf, flat) for buf in comm.seen)
    assert comm.seen[0].size == 4 and comm.seen[1].size == 6
    np.testing.assert_array_equal(flat, 2 * np.arange(10.0))


def test_host_resident_backend_is_reduced_in_place():
    from backends.ops_numpy import NumpyBackend

    comm = RecordingComm()
    exchange, flat = exchanged(NumpyBackend("float64"), comm)
    assert exchange.mode == "host"
    assert len(comm.seen) == 2 and all(np.shares_memory(buf, flat) for buf in comm.seen)
    np.testing.assert_array_equal(flat, 2 * np.arange(10.0))


def test_single_rank_exchange_does_nothing():
    exchange, flat = exchanged(StagedNumpy("float64"), SingleCommunicator(), size=4, split=2)
    assert exchange.mode == "none"
    np.testing.assert_array_equal(flat, np.arange(4.0))


@pytest.mark.mpi
@pytest.mark.parametrize("ranks", [2, 3])
def test_staged_exchange_under_mpi_matches_single_process(tmp_path, ranks):
    code, out, err, _ = run_mpi(ranks, [str(WORKER), "staged", str(tmp_path)], timeout=120)
    assert code == 0, out + err
    x, y = dataset(STAGED_CASE["n"])
    vx, vy = dataset(400)
    single = DataParallelTrainer(StagedNumpy("float64"), SingleCommunicator(),
                                 config_of(STAGED_CASE), x, y, vx[:, 300:], vy[300:])
    history = single.train()
    expected = single.params()
    with np.load(tmp_path / "staged.npz") as got:
        worst = max(relative_max_error(expected[k], got[k]) for k in PARAM_NAMES)
    assert worst <= 1e-12
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["mode"] == "staged"
    # metrics reduced over ranks with true counts: the single-process figures, not means of means
    assert metrics["val"] == pytest.approx([h.val_accuracy for h in history], abs=1e-12)
    assert metrics["loss"] == pytest.approx([h.loss for h in history], rel=1e-12)
