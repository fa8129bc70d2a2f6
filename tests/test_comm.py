"""The gradient exchange and the communicators' promises, on the CPU (CI runs these).

* staging: a backend whose arrays are not host memory gets its gradients copied to the reused host
  buffer, and only that buffer reaches the communicator; under mpirun the result still equals the
  single-process training, and the metrics (loss, validation accuracy) are the single-process ones;
* hang protection: a rank that stops arriving ends the job within seconds, and it is named.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from core.communicator import Communicator
from comm.single import SingleCommunicator
from core.model import PARAM_NAMES
from core.train import relative_max_error
from core.data_parallel import DataParallelTrainer, GradientExchange
from comm_worker import CASE, StagedNumpy
from mpi_worker import config_of, dataset
from test_parallel import HAVE_MPI4PY, MPIRUN, mpi_env, run_mpi

WORKER = Path(__file__).resolve().parent / "comm_worker.py"
needs_mpi = pytest.mark.skipif(MPIRUN is None or not HAVE_MPI4PY, reason="needs mpirun and mpi4py")


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


def test_staged_exchange_hands_only_the_host_buffer_to_the_communicator():
    backend, comm = StagedNumpy("float64"), RecordingComm()
    flat = backend.from_host(np.arange(10.0))
    exchange = GradientExchange(backend, comm, flat, split=6)
    assert exchange.mode == "staged"
    exchange.allreduce()
    assert len(comm.seen) == 2  # tail (output layer) first, then head: two calls, one buffer
    assert all(np.shares_memory(buf, exchange.staging) for buf in comm.seen)
    assert not any(np.shares_memory(buf, flat) for buf in comm.seen)
    assert comm.seen[0].size == 4 and comm.seen[1].size == 6
    np.testing.assert_array_equal(flat, 2 * np.arange(10.0))


def test_host_resident_backend_is_reduced_in_place():
    from backends.ops_numpy import NumpyBackend

    backend, comm = NumpyBackend("float64"), RecordingComm()
    flat = backend.from_host(np.arange(10.0))
    exchange = GradientExchange(backend, comm, flat, split=6)
    assert exchange.mode == "host"
    exchange.allreduce()
    assert all(np.shares_memory(buf, flat) for buf in comm.seen)


def test_single_rank_exchange_does_nothing():
    backend = StagedNumpy("float64")
    flat = backend.from_host(np.arange(4.0))
    exchange = GradientExchange(backend, SingleCommunicator(), flat, split=2)
    assert exchange.mode == "none"
    exchange.allreduce()
    np.testing.assert_array_equal(flat, np.arange(4.0))


@needs_mpi
@pytest.mark.parametrize("ranks", [2, 3])
def test_staged_exchange_under_mpi_matches_single_process(tmp_path, ranks):
    code, out, err, _ = run_mpi(ranks, [str(WORKER), "staged", str(tmp_path)], timeout=120)
    assert code == 0, out + err
    x, y = dataset(CASE["n"])
    vx, vy = dataset(400)
    single = DataParallelTrainer(StagedNumpy("float64"), SingleCommunicator(), config_of(CASE),
                                 x, y, vx[:, 300:], vy[300:])
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


@needs_mpi
def test_rank_that_stops_arriving_is_named_and_the_job_ends(tmp_path):
    env = mpi_env(DPMLP_COLLECTIVE_TIMEOUT="3")
    code, out, err, seconds = run_mpi(3, [str(WORKER), "hang"], timeout=60, env=env)
    assert code != 0, out + err
    assert seconds < 30
    assert "did not complete within 3 s" in err
    assert "ranks that did not arrive: 2" in err, err


@needs_mpi
def test_killed_rank_ends_the_job(tmp_path):
    """A rank killed mid-training (kill -9) takes the whole job down within seconds."""
    cmd = [MPIRUN, "--oversubscribe", "-n", "3", sys.executable, str(WORKER), "long", str(tmp_path)]
    proc = subprocess.Popen(cmd, cwd=WORKER.parent.parent, env=mpi_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        pid_file = tmp_path / "rank1.pid"
        deadline = time.monotonic() + 60
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert pid_file.exists(), "rank 1 never started"
        time.sleep(1.0)  # let training get going
        os.kill(int(pid_file.read_text()), signal.SIGKILL)
        killed = time.monotonic()
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("the job went on after one of its ranks was killed")
    assert proc.returncode != 0
    assert time.monotonic() - killed < 30
