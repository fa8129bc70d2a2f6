"""Data-parallel equivalence: P MPI ranks must compute what one process computes.

tests/mpi_worker.py trains DataParallelTrainer (NumPy backend, float64, MpiCommunicator) under
``mpirun -n P`` for P = 1, 2, 3, 4 and every rank saves its parameters; the test compares each
with the same training done here in one process (SingleCommunicator), by the course's relative
max-norm error, at 1e-12. The cases are docs/spec.md's "Known pitfalls": B not divisible by P, a
smaller last batch, B < P (ranks with no samples), and a large reg (0.1) under which counting reg
once per rank could not hide. A negative control shows that such a bug would be caught.

The CLI under mpirun is tested in test_cli_mpirun.py, failures during a job in test_job_failures.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from comm.single import SingleCommunicator
from conftest import relative_max_error, run_mpi
from core.model import PARAM_NAMES, init_params
from subset_training import train_params

WORKER = Path(__file__).resolve().parent / "mpi_worker.py"
TOLERANCE = 1e-12
RANKS = [1, 2, 3, 4]

# name -> case; each one of docs/spec.md's "Known pitfalls" (all small: H=16, <= 300 samples,
# 2 epochs)
CASES = {
    # 67 is odd and prime: uneven split on 2, 3 and 4 ranks (3: 23/22/22); last batch 300-268=32
    "uneven_lastbatch_bigreg": dict(hidden=16, n=300, batch=67, epochs=2, reg=0.1, lr=0.5, seed=1),
    # B=2 < P: ranks 2.. get no samples in any step; N odd: the last batch has 1 sample
    "batch_lt_ranks": dict(hidden=16, n=41, batch=2, epochs=2, reg=0.1, lr=0.5, seed=2),
    # course-like settings (B=32, small reg), even split on 2 and 4 ranks
    "course_like": dict(hidden=16, n=256, batch=32, epochs=2, reg=1e-4, lr=0.5, seed=3),
}


pytestmark = pytest.mark.mpi


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
        _REFERENCE[key] = train_params(case, SingleCommunicator())
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
