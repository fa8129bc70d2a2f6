"""Data-parallel equivalence: P MPI ranks must compute what one process computes.

tests/mpi_worker.py trains DataParallelTrainer (NumPy backend, float64, MpiCommunicator) under
``mpirun -n P`` for P = 1, 2, 3, 4 and every rank saves its parameters; the test compares each
with the same training done here in one process (SingleCommunicator), by the course's relative
max-norm error, at 1e-12. The cases are the known pitfalls of SPEC.md: B not divisible by P, a
smaller last batch, B < P (ranks with no samples), and a large reg (0.1) under which counting reg
once per rank could not hide. A negative control shows that such a bug would be caught.

Then the CLI under mpirun (--verify, a bad flag, a bad data dir) and a failure on one rank during
training, which must end the whole job within seconds, naming the rank.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import mpi_worker
from comm.single import SingleCommunicator
from core.model import PARAM_NAMES, init_params
from core.train import relative_max_error

REPO = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "mpi_worker.py"
TOLERANCE = 1e-12
RANKS = [1, 2, 3, 4]

# name -> case; each one a pitfall of SPEC.md (all small: H=16, <= 300 samples, 2 epochs)
CASES = {
    # 67 is odd and prime: uneven split on 2, 3 and 4 ranks (3: 23/22/22); last batch 300-268=32
    "uneven_lastbatch_bigreg": dict(hidden=16, n=300, batch=67, epochs=2, reg=0.1, lr=0.5, seed=1),
    # B=2 < P: ranks 2.. get no samples in any step; N odd: the last batch has 1 sample
    "batch_lt_ranks": dict(hidden=16, n=41, batch=2, epochs=2, reg=0.1, lr=0.5, seed=2),
    # course-like settings (B=32, small reg), even split on 2 and 4 ranks
    "course_like": dict(hidden=16, n=256, batch=32, epochs=2, reg=1e-4, lr=0.5, seed=3),
}


def _mpirun():
    beside = Path(sys.executable).parent / "mpirun"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("mpirun")


MPIRUN = _mpirun()
HAVE_MPI4PY = importlib.util.find_spec("mpi4py") is not None

pytestmark = [
    pytest.mark.mpi,
    pytest.mark.skipif(MPIRUN is None, reason="mpirun not found next to sys.executable or on PATH"),
    pytest.mark.skipif(not HAVE_MPI4PY, reason="mpi4py is not installed"),
]


def mpi_env(**extra):
    env = dict(os.environ)
    env.pop("DPMLP_DATA_DIR", None)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        env["OMPI_ALLOW_RUN_AS_ROOT"] = "1"
        env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
    env.update(extra)
    return env


def run_mpi(ranks, args, timeout, env=None):
    """mpirun -n ranks --oversubscribe python ARGS; returns (returncode, stdout, stderr, seconds).
    On timeout the whole process group is killed and the test fails with what was printed."""
    cmd = [MPIRUN, "--oversubscribe", "-n", str(ranks), sys.executable, *args]
    began = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env or mpi_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(cmd)} still running after {timeout} s\nstdout:\n{out}\n"
                    f"stderr:\n{err}")
    return proc.returncode, out, err, time.monotonic() - began


# ------------------------------------------------------------------ results, computed once
@pytest.fixture(scope="module")
def case_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cases") / "cases.json"
    path.write_text(json.dumps(CASES))
    return path


_RUNS: dict[int, Path] = {}


@pytest.fixture(scope="module")
def mpi_results(tmp_path_factory, case_file):
    """ranks -> {case: [params of rank 0, rank 1, ...]}; one mpirun per P, run on first use."""

    def get(ranks):
        if ranks not in _RUNS:
            out = tmp_path_factory.mktemp(f"p{ranks}")
            code, stdout, stderr, _ = run_mpi(ranks, [str(WORKER), "train", str(case_file),
                                                      str(out)], timeout=180)
            assert code == 0, f"worker on {ranks} ranks failed ({code}):\n{stdout}\n{stderr}"
            _RUNS[ranks] = out
        out = _RUNS[ranks]
        results = {}
        for name in CASES:
            files = [out / f"{name}.rank{r}.npz" for r in range(ranks)]
            missing = [f.name for f in files if not f.is_file()]
            assert not missing, f"worker did not write {missing}"
            results[name] = []
            for f in files:
                with np.load(f) as z:
                    results[name].append({k: z[k] for k in z.files})
        return results

    return get


_REFERENCE: dict[tuple, dict] = {}


def reference(case: dict) -> dict[str, np.ndarray]:
    """The single-process run (SingleCommunicator) of the same case, in this process."""
    key = tuple(sorted(case.items()))
    if key not in _REFERENCE:
        _REFERENCE[key] = mpi_worker.train_params(case, SingleCommunicator())
    return _REFERENCE[key]


def errors(expected, actual):
    return {name: relative_max_error(expected[name], actual[name]) for name in PARAM_NAMES}


# ------------------------------------------------------------------ equivalence
@pytest.mark.parametrize("ranks", RANKS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_parallel_equals_single_process(mpi_results, case, ranks):
    ref = reference(CASES[case])
    got = mpi_results(ranks)[case][0]
    errs = errors(ref, got)
    print(f"{case} P={ranks}: " + ", ".join(f"{k} {v:.2e}" for k, v in errs.items()))
    for name, err in errs.items():
        assert got[name].shape == ref[name].shape and got[name].dtype == np.float64
        assert err <= TOLERANCE, f"{case} on {ranks} ranks: {name} relative error {err:.3e}"


@pytest.mark.parametrize("ranks", [r for r in RANKS if r > 1])
@pytest.mark.parametrize("case", sorted(CASES))
def test_all_ranks_hold_identical_parameters(mpi_results, case, ranks):
    per_rank = mpi_results(ranks)[case]
    assert len(per_rank) == ranks
    for r in range(1, ranks):
        for name in PARAM_NAMES:
            a, b = per_rank[0][name], per_rank[r][name]
            assert a.shape == b.shape and a.dtype == b.dtype
            assert a.tobytes() == b.tobytes(), f"{case}: rank {r} {name} differs from rank 0"


@pytest.mark.parametrize("case", sorted(CASES))
def test_training_moved_the_parameters(case):
    """Equality of two runs means little if neither moved: every parameter changed clearly."""
    cfg = CASES[case]
    ref, init = reference(cfg), init_params(cfg["hidden"], cfg["seed"])
    for name in PARAM_NAMES:
        change = np.max(np.abs(ref[name] - init[name]))
        assert change > 1e-3 * max(1.0, np.max(np.abs(init[name]))), (case, name, change)


def test_negative_control_reg_counted_per_rank_is_caught(mpi_results):
    """Adding reg W on each of 3 ranks before the sum is training with 3 * reg: that result is
    many orders of magnitude beyond the tolerance, so the equivalence test would catch the bug."""
    case = CASES["uneven_lastbatch_bigreg"]
    parallel = mpi_results(3)["uneven_lastbatch_bigreg"][0]
    buggy = reference(dict(case, reg=3 * case["reg"]))
    errs = errors(buggy, parallel)
    assert max(errs["W1"], errs["W2"]) > 1e6 * TOLERANCE, errs


def test_negative_control_local_normalisation_is_caught():
    """Dividing by the local size (B/P, equal shares) instead of B makes the summed data gradient
    P times too large: the step is lr (P g + reg W) = (P lr) (g + (reg/P) W), i.e. a single-process
    run with lr * P and reg / P. Checked without MPI: far beyond the tolerance too."""
    case = CASES["course_like"]  # B=32 on 4 ranks: each would normalise by 8
    right = reference(case)
    wrong = reference(dict(case, lr=4 * case["lr"], reg=case["reg"] / 4))
    assert max(errors(right, wrong).values()) > 1e6 * TOLERANCE


# ------------------------------------------------------------------ the CLI under mpirun
def cli_env(tmp_path):
    empty_cache = tmp_path / "empty-cache"
    empty_cache.mkdir(exist_ok=True)
    return mpi_env(DPMLP_CACHE_DIR=str(empty_cache))  # -> the bundled subset


def dpmlp_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("dpmlp:")]


def test_cli_verify_under_mpirun(tmp_path):
    code, out, err, _ = run_mpi(3, ["-m", "core.train", "--backend", "numpy", "--dtype",
                                    "float64", "--train-size", "300", "--val-size", "100",
                                    "-e", "1", "-b", "67", "--verify"],
                                timeout=120, env=cli_env(tmp_path))
    assert code == 0, out + err
    assert "verify passed" in out
    assert "3 rank(s)" in out and "comm mpi" in out
    assert out.count("test accuracy") == 1  # rank 0 reports, the others stay quiet


BAD_FLAG = ["--backend", "numpy", "-b", "0"]


def test_cli_bad_flag_under_mpirun_is_one_line(tmp_path):
    code, out, err, _ = run_mpi(2, ["-m", "core.train", *BAD_FLAG], timeout=60,
                                env=cli_env(tmp_path))
    assert code == 2, out + err
    lines = dpmlp_lines(err)
    assert len(lines) == 1, err
    assert "-b" in lines[0] and "batch-size" in lines[0]
    assert "Traceback" not in err


def test_cli_bad_flag_reported_when_rank0_is_slow(tmp_path):
    """Deterministic form of the race: rank 0 starts 1 s later than rank 1 (MPMD launch)."""
    delayed = ("import runpy, sys, time; time.sleep(1); "
               f"sys.argv = ['core.train'] + {BAD_FLAG!r}; "
               "runpy.run_module('core.train', run_name='__main__')")
    cmd = [MPIRUN, "--oversubscribe", "-n", "1", sys.executable, "-c", delayed,
           ":", "-n", "1", sys.executable, "-m", "core.train", *BAD_FLAG]
    proc = subprocess.run(cmd, cwd=REPO, env=cli_env(tmp_path), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = dpmlp_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert "--batch-size" in lines[0]


def test_cli_bad_data_dir_under_mpirun_is_one_line(tmp_path):
    empty = tmp_path / "nothing-here"
    empty.mkdir()
    code, out, err, _ = run_mpi(2, ["-m", "core.train", "--backend", "numpy", "--data-dir",
                                    str(empty)], timeout=60, env=cli_env(tmp_path))
    assert code == 2, out + err
    lines = dpmlp_lines(err)
    assert len(lines) == 1, err
    assert "--data-dir" in lines[0] and str(empty) in lines[0]
    assert "Traceback" not in err
    assert "epoch" not in out


def test_failure_on_one_rank_ends_the_job(tmp_path):
    env = mpi_env(DPMLP_TEST_FAIL_RANK="1", DPMLP_TEST_FAIL_STEP="3")
    code, out, err, seconds = run_mpi(3, [str(WORKER), "fail", str(tmp_path)], timeout=30, env=env)
    assert code != 0, out + err
    assert "dpmlp: error on rank 1" in err, err
    assert "injected failure" in err
    assert not list(tmp_path.glob("finished.rank*")), "some rank went on training"
    assert seconds < 30
