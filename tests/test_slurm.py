"""The Slurm path, against a real Slurm: tests/slurm_cluster.py brings up a single-node Slurm on
this machine (munged, slurmctld and slurmd on localhost, started and stopped here), and
examples/slurm/dpmlp.sbatch is submitted with 2 tasks on the NumPy backend: its output, its run
directory per job id, and a ``scancel --batch --signal=TERM`` of the running job, whose checkpoint
a second job resumes to the bits of an uninterrupted one.

Skipped, with the one reason, where Slurm and munge are not installed (CI's fresh machine: Debian
``apt-get install slurm-wlm munge``), where not root, or where the daemons do not come up."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import MPI_MISSING, REPO, mpi_env
from slurm_cluster import LocalSlurm, why_not

pytestmark = pytest.mark.mpi
SCRIPT = REPO / "examples" / "slurm" / "dpmlp.sbatch"
FLAGS = ["--backend", "numpy", "--train-size", "2000", "-n", "32", "-b", "10", "-l", "0.5",
         "-e", "30", "--progress", "none"]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    reason = why_not() or MPI_MISSING
    if reason:
        pytest.skip(f"no local Slurm: {reason}")
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
    except (RuntimeError, OSError) as exc:
        cluster.stop()
        pytest.skip(f"no local Slurm: it did not start: {str(exc).splitlines()[0]}")
    yield cluster
    cluster.stop()


def _job_env(slurm, work: Path, **extra) -> dict:
    cache = work / "empty-cache"
    cache.mkdir(exist_ok=True)
    env = mpi_env(SLURM_CONF=slurm.env["SLURM_CONF"], DPMLP_CACHE_DIR=str(cache),
                  DPMLP_RUNS=str(work / "runs"), DPMLP_VENV=sys.prefix,
                  PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    for var in [v for v in env if v.startswith(("SLURM_", "OMPI_COMM_WORLD", "PMIX_"))]:
        if var != "SLURM_CONF":
            env.pop(var)
    env.update(extra)
    return env


def submit(slurm, work: Path, name: str, *flags, **env) -> str:
    out = slurm.run(["sbatch", "--parsable", f"--chdir={REPO}", f"--output={work}/{name}-%j.out",
                     f"--job-name={name}", str(SCRIPT), *FLAGS, *flags],
                    env=_job_env(slurm, work, **env))
    return out.stdout.strip().split(";")[0]


def output(work: Path, name: str, job: str) -> str:
    return (work / f"{name}-{job}.out").read_text()


def _wait_for_epochs(slurm, run_dir: Path, job: str, epochs: int, timeout: float) -> None:
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= epochs:
            return
        assert slurm.job_state(job) in ("PENDING", "RUNNING", "CONFIGURING"), slurm.job_state(job)
        time.sleep(0.5)
    pytest.fail(f"job {job}: no {epochs} epoch(s) in {metrics} after {timeout} s")


def test_batch_script_trains_interrupts_and_resumes_bit_identically(slurm, tmp_path):
    ref = submit(slurm, tmp_path, "ref", "--save", str(tmp_path / "ref.npz"))
    cut = submit(slurm, tmp_path, "cut", "--save", str(tmp_path / "cut.npz"))
    cut_dir = tmp_path / "runs" / cut
    _wait_for_epochs(slurm, cut_dir, cut, 2, timeout=240)
    slurm.run(["scancel", "--batch", "--signal=TERM", cut])
    assert slurm.wait_job(cut, timeout=120) in ("FAILED", "COMPLETED")
    log = output(tmp_path, "cut", cut)
    assert "dpmlp.sbatch: SIGTERM: asking the ranks to checkpoint and stop" in log, log
    assert "dpmlp.sbatch: exit 130" in log, log
    stopped = len((cut_dir / "metrics.jsonl").read_text().splitlines())
    assert 2 <= stopped < 30, log
    assert list((cut_dir / "checkpoints").glob("ckpt-*.npz")), log

    resumed = submit(slurm, tmp_path, "resume", "--save", str(tmp_path / "resumed.npz"),
                     DPMLP_RUN_DIR=str(cut_dir))
    assert slurm.wait_job(resumed, timeout=300) == "COMPLETED", output(tmp_path, "resume", resumed)
    log = output(tmp_path, "resume", resumed)
    assert "dpmlp: resuming from" in log, log

    assert slurm.wait_job(ref, timeout=300) == "COMPLETED", output(tmp_path, "ref", ref)
    log = output(tmp_path, "ref", ref)
    assert f"dpmlp.sbatch: job {ref} (restart 0) on " in log and "2 rank(s)" in log, log
    assert "dpmlp: placement: 1 host(s) x 2 rank(s)" in log, log
    assert "done: 30 epoch(s)" in log and "dpmlp.sbatch: exit 0" in log, log
    ref_dir = tmp_path / "runs" / ref
    assert json.loads((ref_dir / "config.json").read_text())["ranks"] == 2
    assert len((ref_dir / "metrics.jsonl").read_text().splitlines()) == 30
    with np.load(tmp_path / "ref.npz") as a, np.load(tmp_path / "resumed.npz") as b:
        for name in ("W1", "b1", "W2", "b2"):
            assert np.array_equal(a[name], b[name]), f"{name}: resumed differs from uninterrupted"
