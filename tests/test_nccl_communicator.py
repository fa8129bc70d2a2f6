"""The NCCL communicator's device path with each GPU backend (PyCUDA memory handed over by
pointer): blocking and overlapped sums, ordered with the backend's stream. One rank per GPU, so
on a one-GPU machine this runs with one rank (NCCL still reduces, over one member); with two or
more GPUs, with two ranks. Skips with the reason where there is no GPU, cupy or NCCL."""

from pathlib import Path

import pytest

from conftest import backend_entry_or_skip, communicator_entry_or_skip, mpi_env, run_mpi

WORKER = Path(__file__).resolve().parent / "nccl_worker.py"

pytestmark = [pytest.mark.gpu, pytest.mark.mpi]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("backend", ["cupy", "pycuda"])
def test_nccl_sums_device_buffers(backend, dtype):
    entry = backend_entry_or_skip(backend)
    communicator_entry_or_skip("nccl")
    ranks = min(2, entry.cls.device_count())
    code, out, err, _ = run_mpi(ranks, [str(WORKER), backend, dtype], timeout=120, env=mpi_env())
    assert code == 0, out + err
    assert out.count(" ok") == ranks, out
