"""The command line under mpirun: --verify on 3 ranks, and a user mistake (a bad flag, a bad data
directory) reported in exactly one line by the whole job, even when rank 0 starts late.

Runs on the bundled subset (DPMLP_CACHE_DIR points at an empty directory, DPMLP_DATA_DIR is
removed). The same CLI in one process is tested in test_cli.py.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import MPIRUN, REPO, run_mpi

pytestmark = pytest.mark.mpi


def dpmlp_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("dpmlp:")]


def test_cli_verify_under_mpirun(cli_env, tmp_path):
    code, out, err, _ = run_mpi(3, ["-m", "core.train", "--backend", "numpy", "--dtype",
                                    "float64", "--train-size", "300", "--val-size", "100",
                                    "-e", "1", "-b", "67", "--verify"],
                                timeout=120, env=cli_env)
    assert code == 0, out + err
    assert "verify passed" in out
    assert "3 rank(s)" in out and "comm mpi" in out
    assert out.count("test accuracy") == 1  # rank 0 reports, the others stay quiet


BAD_FLAG = ["--backend", "numpy", "-b", "0"]


def test_cli_bad_flag_under_mpirun_is_one_line(cli_env, tmp_path):
    code, out, err, _ = run_mpi(2, ["-m", "core.train", *BAD_FLAG], timeout=60,
                                env=cli_env)
    assert code == 2, out + err
    lines = dpmlp_lines(err)
    assert len(lines) == 1, err
    assert "-b" in lines[0] and "batch-size" in lines[0]
    assert "Traceback" not in err


def test_cli_bad_flag_reported_when_rank0_is_slow(cli_env, tmp_path):
    """Deterministic form of the race: rank 0 starts 1 s later than rank 1 (MPMD launch)."""
    delayed = ("import runpy, sys, time; time.sleep(1); "
               f"sys.argv = ['core.train'] + {BAD_FLAG!r}; "
               "runpy.run_module('core.train', run_name='__main__')")
    cmd = [MPIRUN, "--oversubscribe", "-n", "1", sys.executable, "-c", delayed,
           ":", "-n", "1", sys.executable, "-m", "core.train", *BAD_FLAG]
    proc = subprocess.run(cmd, cwd=REPO, env=cli_env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = dpmlp_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert "--batch-size" in lines[0]


def test_cli_bad_data_dir_under_mpirun_is_one_line(cli_env, tmp_path):
    empty = tmp_path / "nothing-here"
    empty.mkdir()
    code, out, err, _ = run_mpi(2, ["-m", "core.train", "--backend", "numpy", "--data-dir",
                                    str(empty)], timeout=60, env=cli_env)
    assert code == 2, out + err
    lines = dpmlp_lines(err)
    assert len(lines) == 1, err
    assert "--data-dir" in lines[0] and str(empty) in lines[0]
    assert "Traceback" not in err
    assert "epoch" not in out
