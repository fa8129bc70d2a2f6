"""Training with the backend: CUDA-graph epochs equal eager ones bit for bit, resuming is
bit-identical, lockstep ``--verify`` passes in one process and under ``mpirun -n 2``."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from core.conformance.support import backend_env, python, run_cli, synthetic
from core.data_parallel import DataParallelTrainer, TrainConfig, scale_images
from core.job import device_for

CONFIG = dict(hidden=16, reg=1e-3, lr=0.5, epochs=2, batch_size=50, seed=3)
N_TRAIN, N_VAL = 230, 40  # 5 steps an epoch, the last of 30 samples
CLI_RUN = ["-e", "1", "--train-size", "300", "-n", "16", "-b", "50"]


def _data(dtype):
    images, labels = synthetic(N_TRAIN + N_VAL)
    x = scale_images(images, "unit", np.dtype(dtype).type)
    return x[:, :N_TRAIN], labels[:N_TRAIN], x[:, N_TRAIN:], labels[N_TRAIN:]


def _trainer(cls, dtype, graphs="off", params=None, **overrides):
    from comm.single import SingleCommunicator

    backend = cls(dtype, device_for(cls, 0))  # a fresh instance: as a new process would have
    config = TrainConfig(**{**CONFIG, **overrides}, dtype=dtype)
    return DataParallelTrainer(backend, SingleCommunicator(), config, *_data(dtype),
                               params=params, cuda_graphs=graphs)


def _bits(trainer) -> dict[str, bytes]:
    return {k: np.ascontiguousarray(v).tobytes() for k, v in trainer.params().items()}


def test_training_learns(dpmlp_backend_cls, dpmlp_dtype):
    trainer = _trainer(dpmlp_backend_cls, dpmlp_dtype)
    history = trainer.train()
    assert all(np.isfinite(h.loss) for h in history)
    assert history[-1].loss < history[0].loss
    assert 0 <= history[-1].val_accuracy <= 1, history


def test_graph_epochs_equal_eager_bits(dpmlp_backend_cls, dpmlp_dtype):
    """--cuda-graphs on (warm-up, capture of the first epoch, replays) against eager."""
    ok, why = dpmlp_backend_cls(dpmlp_dtype, device_for(dpmlp_backend_cls, 0)).graph_support()
    if not ok:
        pytest.skip(f"no CUDA graphs: {why}")
    eager = _trainer(dpmlp_backend_cls, dpmlp_dtype, "off")
    graphed = _trainer(dpmlp_backend_cls, dpmlp_dtype, "on")
    assert graphed.use_graphs
    h_eager, h_graph = eager.train(), graphed.train()
    assert _bits(graphed) == _bits(eager)
    assert [h.val_accuracy for h in h_graph] == [h.val_accuracy for h in h_eager]
    assert [h.loss for h in h_graph] == [h.loss for h in h_eager]


@pytest.mark.parametrize("stop", ((1, 3), (2, 0)), ids=("inside-an-epoch", "at-an-epoch"))
def test_resume_is_bit_identical(dpmlp_backend_cls, dpmlp_dtype, stop):
    """Stopped after epoch E step S and resumed from its parameters in a new trainer on a new
    backend instance, as a checkpoint does: the parameters of an uninterrupted run, bit for bit."""
    whole = _trainer(dpmlp_backend_cls, dpmlp_dtype)
    whole.train()
    epoch, step = stop
    first = _trainer(dpmlp_backend_cls, dpmlp_dtype)
    if step:
        first.train(on_step=lambda e, done: (e, done) == (epoch, step))
        assert first.stopped_at == (epoch, step)
    else:
        _trainer(dpmlp_backend_cls, dpmlp_dtype)  # (a second instance alive meanwhile)
        first = _trainer(dpmlp_backend_cls, dpmlp_dtype, epochs=epoch - 1)
        first.train()
    resumed = _trainer(dpmlp_backend_cls, dpmlp_dtype, params=first.params())
    resumed.train(start_epoch=epoch, first_step=step)
    assert _bits(resumed) == _bits(whole)


def _verify_passed(proc) -> str:
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"exit {proc.returncode}\n{text[-3000:]}"
    line = re.search(r"^verify passed: .*$", proc.stdout, re.M)
    assert line, text[-3000:]
    return line.group(0)


def test_lockstep_verify_one_process(dpmlp_entry, dpmlp_dtype, dpmlp_quick, tmp_path):
    if dpmlp_quick:
        pytest.skip("--dpmlp-quick: no subprocess runs")
    proc = run_cli([python(), "-m", "core.train", "--backend", dpmlp_entry.name, "--comm",
                    "single", "--dtype", dpmlp_dtype, *CLI_RUN, "--verify"], backend_env(tmp_path))
    _verify_passed(proc)


def _mpirun() -> str | None:
    import importlib.util
    import sys

    beside = Path(sys.executable).parent / "mpirun"
    found = str(beside) if beside.is_file() else shutil.which("mpirun")
    return found if found and importlib.util.find_spec("mpi4py") else None


def test_lockstep_verify_two_ranks(dpmlp_entry, dpmlp_dtype, dpmlp_quick, tmp_path):
    """mpirun -n 2: the host-staged MPI exchange (device backends) or MPI in place (host)."""
    if dpmlp_quick:
        pytest.skip("--dpmlp-quick: no subprocess runs")
    if dpmlp_dtype != "float32":
        pytest.skip("one dtype is enough for the rank count (float32, the default)")
    mpirun = _mpirun()
    if mpirun is None:
        pytest.skip("mpirun or mpi4py is missing")
    proc = run_cli([mpirun, "--oversubscribe", "-n", "2", python(), "-m", "core.train",
                    "--backend", dpmlp_entry.name, "--comm", "mpi", *CLI_RUN, "--verify"],
                   backend_env(tmp_path))
    assert "comm mpi, 2 rank(s)" in proc.stdout, proc.stdout + proc.stderr
    _verify_passed(proc)
