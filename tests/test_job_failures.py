"""A job in trouble ends, promptly and everywhere, naming the rank: an exception on one rank
(tests/mpi_worker.py fail), a rank that stops arriving at collectives (the watchdog), and a rank
killed with SIGKILL mid-training (tests/comm_worker.py hang, long). CPU only, under mpirun.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import MPIRUN, REPO, mpi_env, run_mpi

MPI_WORKER = Path(__file__).resolve().parent / "mpi_worker.py"
COMM_WORKER = Path(__file__).resolve().parent / "comm_worker.py"

pytestmark = pytest.mark.mpi


def test_failure_on_one_rank_ends_the_job(tmp_path):
    env = mpi_env(DPMLP_TEST_FAIL_RANK="1", DPMLP_TEST_FAIL_STEP="3")
    code, out, err, seconds = run_mpi(3, [str(MPI_WORKER), "fail", str(tmp_path)], timeout=30,
                                      env=env)
    assert code != 0, out + err
    assert "dpmlp: error on rank 1" in err, err
    assert "injected failure" in err
    assert not list(tmp_path.glob("finished.rank*")), "some rank went on training"
    assert seconds < 30


def test_rank_that_stops_arriving_is_named_and_the_job_ends(tmp_path):
    env = mpi_env(DPMLP_COLLECTIVE_TIMEOUT="3")
    code, out, err, seconds = run_mpi(3, [str(COMM_WORKER), "hang"], timeout=60, env=env)
    assert code != 0, out + err
    assert seconds < 30
    assert "did not complete within 3 s" in err
    assert "ranks that did not arrive: 2" in err, err


def test_killed_rank_ends_the_job(tmp_path):
    """A rank killed mid-training (kill -9) takes the whole job down within seconds."""
    cmd = [MPIRUN, "--oversubscribe", "-n", "3", sys.executable, str(COMM_WORKER), "long",
           str(tmp_path)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=mpi_env(), stdout=subprocess.PIPE,
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
