"""What the test modules share, in one place (the test modules never import one another).

* ``REPO``: the checkout's root, computed from this file (never an absolute machine path).
* The mpirun runner: ``MPIRUN`` (mpirun beside ``sys.executable`` or on PATH), ``HAVE_MPI4PY``,
  ``mpi_env(**extra)`` (the environment for a launched job: root allowed, ``DPMLP_DATA_DIR``
  removed) and ``run_mpi(ranks, args, timeout, env=None)``. Every test marked ``mpi`` skips, with
  the reason, where mpirun or mpi4py is missing: mark a test (or a module, through ``pytestmark``)
  ``pytest.mark.mpi`` instead of repeating that check.
* The command line: the ``cli_env`` fixture (``one_job_env``: one process, the bundled subset,
  no launcher variables) and ``cli(args, env, timeout=180, ranks=None)``, which runs ``python -m
  core.train`` (under mpirun with ``ranks``).
* Backend or skip: ``backend_entry_or_skip(name)`` gives a backend's registry entry and
  ``backend_or_skip(name, dtype)`` an instance of it, or skip with the reason its
  ``availability()`` gave (or that it is not registered, or that its plugin failed to load).
* The full-data locator: ``FULL_MNIST`` (a directory or None) and the ``full_mnist_dir`` fixture,
  which skips with the reason where full MNIST is absent. Looked for in ``$DPMLP_DATA_DIR``, then
  ``../shared/data/mnist`` relative to the checkout; read once, when the test session starts, so
  that tests which clear ``DPMLP_DATA_DIR`` for the code under test do not hide it.
* ``relative_max_error(expected, actual)``: the course's error measure, written here on its own so
  that a test never measures the code under test with that code's own ruler.

Plain names are imported by the test modules (``from conftest import run_mpi``); the workers run
by mpirun (``mpi_worker.py``, ``comm_worker.py``, ``nccl_worker.py``) are scripts, not tests, and
share their training code with the tests through ``subset_training.py`` instead.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent


# ------------------------------------------------------------------ relative error
def relative_max_error(expected, actual) -> float:
    """max |expected - actual| / max |expected| over all elements, in float64; the absolute
    difference where ``expected`` is all zeros; 0 for empty arrays. Shapes must agree."""
    expected = np.asarray(expected, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    assert expected.shape == actual.shape, (expected.shape, actual.shape)
    if expected.size == 0:
        return 0.0
    diff = float(np.max(np.abs(expected - actual)))
    scale = float(np.max(np.abs(expected)))
    return diff / scale if scale > 0 else diff


# ------------------------------------------------------------------ mpirun
def _find_mpirun() -> str | None:
    beside = Path(sys.executable).parent / "mpirun"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("mpirun")


MPIRUN = _find_mpirun()
HAVE_MPI4PY = importlib.util.find_spec("mpi4py") is not None
MPI_MISSING = ("mpirun not found next to sys.executable or on PATH" if MPIRUN is None
               else "mpi4py is not installed" if not HAVE_MPI4PY else None)


def mpi_env(**extra) -> dict[str, str]:
    """The environment of a launched job: this one, without DPMLP_DATA_DIR (jobs read the bundled
    subset unless told otherwise), with Open MPI allowed to run as root, plus ``extra``."""
    env = dict(os.environ)
    env.pop("DPMLP_DATA_DIR", None)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        env["OMPI_ALLOW_RUN_AS_ROOT"] = "1"
        env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
    env.update(extra)
    return env


def one_job_env(tmp_path: Path) -> dict[str, str]:
    """mpi_env with an empty data cache under tmp_path (so the job reads the bundled subset) and
    no launcher variables (one process, even when pytest itself runs under a launcher)."""
    cache = tmp_path / "empty-cache"
    cache.mkdir(exist_ok=True)
    env = mpi_env(DPMLP_CACHE_DIR=str(cache))
    for var in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "SLURM_NTASKS"):
        env.pop(var, None)
    return env


@pytest.fixture
def cli_env(tmp_path) -> dict[str, str]:
    """The environment of a command-line run (``cli``, or ``run_mpi`` of ``-m core.train``): one
    process unless launched, the bundled subset, Open MPI allowed to run as root."""
    return one_job_env(tmp_path)


def cli(args: list[str], env: dict[str, str], timeout: float = 180, ranks: int | None = None,
        cwd: Path = REPO) -> subprocess.CompletedProcess:
    """``python -m core.train ARGS`` in ``cwd`` (the checkout), under ``mpirun -n ranks`` when
    ``ranks`` is given; its output captured as text."""
    cmd = [sys.executable, "-m", "core.train", *args]
    if ranks is not None:
        if MPI_MISSING:
            pytest.skip(MPI_MISSING)
        cmd = [MPIRUN, "--oversubscribe", "-n", str(ranks), *cmd]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def run_mpi(ranks: int, args: list[str], timeout: float, env: dict | None = None):
    """mpirun -n ranks --oversubscribe python ARGS in the checkout; returns (returncode, stdout,
    stderr, seconds). On timeout the whole process group is killed and the test fails with what
    was printed."""
    if MPI_MISSING:
        pytest.skip(MPI_MISSING)
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


def pytest_runtest_setup(item):
    """A test marked ``mpi`` skips, with the reason, where mpirun or mpi4py is missing."""
    if MPI_MISSING and item.get_closest_marker("mpi") is not None:
        pytest.skip(MPI_MISSING)


# ------------------------------------------------------------------ backend or skip
_REGISTRY = None


def registry():
    """One plugin registry for the test session (built on first use)."""
    global _REGISTRY
    if _REGISTRY is None:
        from core.plugins import Registry

        _REGISTRY = Registry.load()
    return _REGISTRY


def backend_entry_or_skip(name: str):
    """The registry entry of backend ``name``, or skip saying why it cannot run here."""
    reg = registry()
    entry = {e.name: e for e in reg.backends()}.get(name)
    if entry is None:
        broken = reg.broken.get(name)
        pytest.skip(f"backend {name} is not registered"
                    + (f": plugin {broken.package} {broken.reason}" if broken else ""))
    if not entry.available:
        pytest.skip(f"backend {name} unavailable: {entry.reason}")
    return entry


def communicator_entry_or_skip(name: str):
    """The registry entry of communicator ``name``, or skip saying why it cannot run here."""
    entry = {e.name: e for e in registry().communicators()}.get(name)
    if entry is None:
        pytest.skip(f"communicator {name} is not registered")
    if not entry.available:
        pytest.skip(f"communicator {name} unavailable: {entry.reason}")
    return entry


def backend_or_skip(name: str, dtype: str = "float64", device_index: int | None = None):
    """A new instance of backend ``name`` in ``dtype``, or skip with its availability() reason."""
    return backend_entry_or_skip(name).cls(dtype, device_index)


# ------------------------------------------------------------------ full MNIST
FULL_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                    "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _holds_mnist(directory: Path) -> bool:
    return directory.is_dir() and all(
        (directory / name).is_file() or (directory / f"{name}.gz").is_file()
        for name in FULL_MNIST_FILES)


def locate_full_mnist() -> Path | None:
    """$DPMLP_DATA_DIR, else ../shared/data/mnist beside the checkout: the first that holds the
    four MNIST files (.gz or raw), or None."""
    candidates = []
    if os.environ.get("DPMLP_DATA_DIR"):
        candidates.append(Path(os.environ["DPMLP_DATA_DIR"]))
    candidates.append(REPO.parent / "shared" / "data" / "mnist")
    return next((c for c in candidates if _holds_mnist(c)), None)


FULL_MNIST = locate_full_mnist()
FULL_MNIST_MISSING = ("full MNIST not found: set DPMLP_DATA_DIR to a directory holding the four "
                      "MNIST files, or put them in ../shared/data/mnist beside the checkout")


@pytest.fixture
def full_mnist_dir() -> Path:
    """The directory holding full MNIST, or skip saying where it was looked for."""
    if FULL_MNIST is None:
        pytest.skip(FULL_MNIST_MISSING)
    return FULL_MNIST


#: the smallest useful command-line run (the bundled subset, one epoch)
TINY = ["--backend", "numpy", "--train-size", "500", "--val-size", "100", "-e", "1", "-n", "16"]


def assert_user_error(proc, *must_name):
    """Exit 2, exactly one non-empty stderr line, naming everything in ``must_name``."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert len(lines) == 1, f"expected one stderr line, got:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    line = lines[0]
    assert line.startswith("dpmlp: error"), line
    for name in must_name:
        assert name in line, f"{name!r} not in {line!r}"
    assert not re.search(r"^epoch ", proc.stdout, re.M), "trained before failing"
    return line
