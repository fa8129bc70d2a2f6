"""The job's lifecycle (core/job.py): options read once from flags or environment, the
communicator chosen for "auto", each rank's device, and agreement on setup."""

from __future__ import annotations

import pytest

from core.communicator import DEFAULT_COLLECTIVE_TIMEOUT, CommOptions
from core.errors import UserError
from core.job import Job, choose_communicator, comm_options, device_for
from core.plugins import Registry


def test_options_default_without_flags_or_environment():
    assert comm_options(environ={}) == CommOptions(False, DEFAULT_COLLECTIVE_TIMEOUT)


def test_options_from_environment_when_no_flag():
    env = {"DPMLP_CUDA_AWARE_MPI": "1", "DPMLP_COLLECTIVE_TIMEOUT": "7.5"}
    assert comm_options(environ=env) == CommOptions(True, 7.5)
    assert comm_options(environ={"DPMLP_CUDA_AWARE_MPI": "0"}).cuda_aware_mpi is False


def test_flags_win_over_environment():
    env = {"DPMLP_COLLECTIVE_TIMEOUT": "7.5"}
    assert comm_options(True, 0.0, environ=env) == CommOptions(True, 0.0)


@pytest.mark.parametrize("text", ["soon", "-1"])
def test_bad_timeout_in_environment_names_the_variable(text):
    with pytest.raises(UserError, match="DPMLP_COLLECTIVE_TIMEOUT"):
        comm_options(environ={"DPMLP_COLLECTIVE_TIMEOUT": text})


def test_communicators_take_their_options_from_the_constructor(monkeypatch):
    monkeypatch.setenv("DPMLP_COLLECTIVE_TIMEOUT", "1")  # must not be read by the communicator
    comm = Registry.load().communicator("single").cls(CommOptions(collective_timeout=42.0))
    assert comm.options.collective_timeout == 42.0


def test_auto_is_single_without_a_launcher(monkeypatch):
    for var in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS"):
        monkeypatch.delenv(var, raising=False)
    assert choose_communicator(Registry.load(), "auto").name == "single"


def test_auto_is_mpi_under_a_launcher(monkeypatch):
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "3")
    registry = Registry.load()
    if not registry.communicator("mpi").available:
        pytest.skip("mpi4py is not installed")
    assert choose_communicator(registry, "auto").name == "mpi"


class _TwoGpus:
    @classmethod
    def device_count(cls):
        return 2


class _Host:
    @classmethod
    def device_count(cls):
        return 0


def test_device_is_local_rank_modulo_device_count():
    assert [device_for(_TwoGpus, r) for r in range(5)] == [0, 1, 0, 1, 0]
    assert device_for(_Host, 3) is None


def test_agree_passes_result_and_ends_on_a_user_error(capsys):
    job = Job.start("single")
    assert job.agree(lambda: 41 + 1) == 42

    def broken():
        raise UserError("--data-dir X: does not exist")
    with pytest.raises(SystemExit) as info:
        job.agree(broken)
    assert info.value.code == 2
    assert capsys.readouterr().err.strip() == "dpmlp: error: --data-dir X: does not exist"
