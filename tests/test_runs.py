"""Runs of the command line: flags, pre-flight, progress, run directories, checkpoints,
interrupts (SIGTERM/SIGINT -> checkpoint, exit 130, resume bit-identical) and divergence (exit 3).

In one process (NumPy, CPU) on the bundled subset; the same under ``mpirun -n 2`` where mpirun
and mpi4py exist (tests marked ``mpi``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import MPIRUN, REPO, cli, relative_max_error
from core import __version__
from core.checkpoint import list_checkpoints, load_checkpoint
from core.data_parallel import DataParallelTrainer, TrainConfig

SMALL = ["--backend", "numpy", "--dtype", "float64", "--train-size", "3000", "--val-size", "200",
         "-n", "32", "-b", "10"]


def one_error_line(proc, code=2):
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not re.search(r"^epoch ", proc.stdout, re.M)
    return lines[0]


def params_of(path):
    with np.load(path) as z:
        return {k: z[k] for k in ("W1", "b1", "W2", "b2")}


def assert_identical(a, b):
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# ------------------------------------------------------------------ flags
def test_version(cli_env):
    proc = cli(["--version"], cli_env)
    assert proc.returncode == 0 and proc.stdout.strip() == f"dpmlp {__version__}"


@pytest.mark.parametrize("args, expected", [
    (["--seed", "-5"], "argument --seed: must be an integer >= 0, got '-5'"),
    (["-b", "abc"], "argument -b/--batch-size: must be a positive integer, got 'abc'"),
    (["-n", "1.5"], "argument -n/--hidden: must be a positive integer, got '1.5'"),
    (["-l", "fast"], "argument -l/--lr: must be a positive number, got 'fast'"),
    (["--checkpoint-every", "2"], "--checkpoint-every: needs --run-dir"),
])
def test_flag_mistakes_are_one_line(cli_env, args, expected):
    line = one_error_line(cli(SMALL + ["-e", "1"] + args, cli_env))
    assert expected in line and "_positive" not in line


def test_memory_preflight_is_one_line_before_allocating(cli_env):
    began = time.monotonic()
    line = one_error_line(cli(["--backend", "numpy", "-n", "100000000", "-e", "1"], cli_env))
    assert "--hidden 100000000 / --batch-size 100: needs about" in line and "available" in line
    assert time.monotonic() - began < 30


def test_memory_estimate_fits_a_normal_run():
    from core.preflight import check_memory
    from core.train_flags import build_parser

    args = build_parser().parse_args([])
    check_memory(args, 1, 1, 54000, 6000, 70000, True, available=2 * 10**9)  # fits
    with pytest.raises(Exception, match="needs about .* GB available"):
        check_memory(args, 1, 1, 54000, 6000, 70000, True, available=10**6)


@pytest.mark.parametrize("flag", ["--save", "--run-dir"])
def test_unwritable_targets_are_one_line(cli_env, tmp_path, flag):
    a_file = tmp_path / "f"
    a_file.write_text("x")
    target = {"--save": tmp_path, "--run-dir": a_file}[flag]
    line = one_error_line(cli(SMALL + ["-e", "1", flag, str(target)], cli_env))
    assert line.startswith(f"dpmlp: error: {flag} {target}")
    missing = tmp_path / "no" / "such" / "x"
    line = one_error_line(cli(SMALL + ["-e", "1", flag, str(missing)], cli_env))
    assert flag in line and "does not exist" in line


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes anywhere")
def test_read_only_directory_is_one_line(cli_env, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        line = one_error_line(cli(SMALL + ["-e", "1", "--save", str(ro / "p.npz")], cli_env))
        assert "--save" in line and "cannot write" in line
    finally:
        ro.chmod(0o755)


def test_run_dir_with_a_run_needs_resume(cli_env, tmp_path):
    run = tmp_path / "run"
    assert cli(SMALL + ["-e", "1", "--run-dir", str(run)], cli_env).returncode == 0
    line = one_error_line(cli(SMALL + ["-e", "1", "--run-dir", str(run)], cli_env))
    assert "already holds a run" in line and "--resume" in line


def test_resume_missing_is_one_line(cli_env, tmp_path):
    line = one_error_line(cli(SMALL + ["-e", "1", "--resume", str(tmp_path / "nothing")], cli_env))
    assert "--resume" in line and "not found" in line


# ------------------------------------------------------------------ output
def test_quiet_keeps_only_the_summary(cli_env):
    proc = cli(SMALL + ["-e", "2", "--quiet"], cli_env)
    assert proc.returncode == 0, proc.stderr
    assert not re.search(r"^epoch ", proc.stdout, re.M)
    assert re.fullmatch(r"done: 2 epoch\(s\), .*\n", proc.stdout)  # the summary line only


def test_run_dir_config_metrics_checkpoints_and_plot(cli_env, tmp_path):
    run = tmp_path / "run"
    proc = cli(SMALL + ["-e", "3", "--run-dir", str(run), "--checkpoint-every", "2"], cli_env)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^done: 3 epoch\(s\)", proc.stdout, re.M)
    config = json.loads((run / "config.json").read_text())
    assert config["flags"]["hidden"] == 32 and config["backend"] == "numpy"
    assert config["ranks"] == 1
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert [r["step"] for r in records] == [300, 600, 900]
    # every 2 epochs and at the end
    assert [p.name for p in list_checkpoints(run)] == ["ckpt-0002-00000300.npz",
                                                       "ckpt-0003-00000300.npz"]
    pytest.importorskip("matplotlib")
    plot = subprocess.run([sys.executable, "-m", "core.plot", str(run)], cwd=REPO, env=cli_env,
                          capture_output=True, text=True, timeout=120)
    assert plot.returncode == 0, plot.stderr
    assert (run / "curves.png").read_bytes().startswith(b"\x89PNG")


def test_resume_from_an_epoch_checkpoint_is_bit_identical(cli_env, tmp_path):
    full, part, run = tmp_path / "full.npz", tmp_path / "part.npz", tmp_path / "run"
    assert cli(SMALL + ["-e", "3", "--save", str(full), "--quiet"], cli_env).returncode == 0
    assert cli(SMALL + ["-e", "2", "--run-dir", str(run)], cli_env).returncode == 0
    proc = cli(SMALL + ["-e", "3", "--resume", str(run), "--save", str(part)], cli_env)
    assert proc.returncode == 0, proc.stderr
    assert "resuming from" in proc.stdout
    assert re.findall(r"^epoch\s+(\d+)/3", proc.stdout, re.M) == ["3"]
    assert_identical(params_of(full), params_of(part))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]


def test_resume_with_other_hidden_is_one_line(cli_env, tmp_path):
    run = tmp_path / "run"
    assert cli(SMALL + ["-e", "1", "--run-dir", str(run)], cli_env).returncode == 0
    line = one_error_line(cli(SMALL + ["-e", "2", "-n", "16", "--resume", str(run)], cli_env))
    assert "--hidden 32" in line and "--hidden 16" in line


# ------------------------------------------------------------------ the trainer
def _trainer(params=None, ranks_comm=None):
    from backends.ops_numpy import NumpyBackend
    from comm.single import SingleCommunicator

    rng = np.random.default_rng(1)
    x = np.asfortranarray(rng.random((784, 230)))
    y = rng.integers(0, 10, 230)
    config = TrainConfig(hidden=8, epochs=3, batch_size=20, dtype="float64", lr=0.5)
    return DataParallelTrainer(NumpyBackend("float64"), ranks_comm or SingleCommunicator(),
                               config, x, y, x[:, :50], y[:50], params=params)


@pytest.mark.parametrize("stop_at", [(1, 1), (2, 7), (2, 12), (3, 11)])
def test_trainer_stop_and_restart_is_bit_identical(stop_at):
    whole = _trainer()
    history = whole.train()
    first = _trainer()
    assert first.steps_per_epoch == 12
    first.train(on_step=lambda e, s: (e, s) == stop_at)
    epoch, step = stop_at
    expected = (epoch + 1, 0) if step == 12 else (epoch, step)
    if expected[0] > 3:
        assert first.stopped_at is None
        return
    assert first.stopped_at == expected
    nll = first.partial_nll()
    second = _trainer(params=first.params())
    second.set_partial_nll(nll)
    rest = second.train(start_epoch=expected[0], first_step=expected[1])
    assert_identical(whole.params(), second.params())
    assert rest[0].loss == pytest.approx(history[expected[0] - 1].loss, rel=1e-12)


# ------------------------------------------------------------------ interrupts
def _wait_for_epoch(proc, epoch, pids=None, sig=signal.SIGTERM):
    """Read stdout until ``epoch E/`` has been printed, then send ``sig`` to ``pids`` (default:
    the process). Returns what was read."""
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if re.match(rf"^epoch\s+{epoch}/", line):
            for pid in (pids() if pids else [proc.pid]):
                os.kill(pid, sig)
            break
    return "".join(seen)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_checkpoints_exits_130_and_resume_is_bit_identical(cli_env, tmp_path, sig):
    full, part, run = tmp_path / "full.npz", tmp_path / "part.npz", tmp_path / "run"
    args = SMALL + ["-e", "8"]
    assert cli(args + ["--save", str(full), "--quiet"], cli_env).returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "core.train", *args, "--run-dir", str(run),
                             "--save", str(part)], cwd=REPO, env=cli_env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    head = _wait_for_epoch(proc, 2, sig=sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, head + out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    m = re.match(rf"dpmlp: interrupted at epoch (\d+) step (\d+); resume with --resume {run}$",
                 lines[0])
    assert m, lines[0]
    ckpt = load_checkpoint(run)
    assert (ckpt.epoch + 1, ckpt.step) == (int(m.group(1)), int(m.group(2)))
    assert part.exists()  # --save written on interrupt too
    proc = cli(args + ["--resume", str(run), "--save", str(part)], cli_env)
    assert proc.returncode == 0, proc.stderr
    assert_identical(params_of(full), params_of(part))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(1, 9))


def test_second_signal_exits_at_once(monkeypatch):
    from comm.single import SingleCommunicator
    from core.session import StopRequest

    exits = []
    monkeypatch.setattr(os, "_exit", lambda code: exits.append(code))
    # whatever was there before (default_int_handler, or SIG_IGN under nohup or a background job)
    before = {sig: signal.getsignal(sig) for sig in StopRequest.SIGNALS}
    with StopRequest(SingleCommunicator()) as stop:
        stop._handle(signal.SIGINT, None)
        assert stop.signum == signal.SIGINT and exits == []
        stop._handle(signal.SIGINT, None)
        assert exits == [130]
    assert {sig: signal.getsignal(sig) for sig in StopRequest.SIGNALS} == before  # restored


def test_divergence_exits_3_with_one_line(cli_env, tmp_path):
    run = tmp_path / "run"
    proc = cli(["--backend", "numpy", "--train-size", "2000", "--val-size", "100", "-n", "16",
                "-e", "2", "--scale", "raw", "-l", "1e6", "--run-dir", str(run)], cli_env)
    line = one_error_line(proc, code=3)
    assert re.fullmatch(r"dpmlp: error: loss is not finite at epoch 1 step \d+; lower --lr "
                        r"\(--scale raw needs --lr near 0\.01\)", line), line
    assert "Warning" not in proc.stderr
    assert list_checkpoints(run) == []  # nothing non-finite is kept


def test_a_healthy_raw_run_with_an_infinite_float32_loss_is_not_stopped(cli_env):
    """-log(softmax) can be inf in float32 for one sample while the parameters are fine."""
    proc = cli(["--backend", "numpy", "--train-size", "2000", "--val-size", "100", "-n", "16",
                "-e", "1", "--scale", "raw", "-l", "50"], cli_env)
    assert proc.returncode == 0, proc.stderr
    assert "Warning" not in proc.stderr


# ------------------------------------------------------------------ under mpirun
def _rank_pids(root: int) -> list[int]:
    """The python ranks under mpirun ``root`` (its descendants running core.train)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                cmd = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            parents[int(entry.name)] = (int(stat.rsplit(")", 1)[1].split()[1]), cmd)
    found = []
    for pid, (_, cmd) in parents.items():
        p = pid
        while p in parents and p != root:
            p = parents[p][0]
        if p == root and (b"core.train" in cmd or b"wrap.py" in cmd) and pid != root:
            found.append(pid)
    return found


def mpirun(ranks, args):
    """The command line of ``python -m core.train ARGS`` on ``ranks`` ranks."""
    return [MPIRUN, "--oversubscribe", "-n", str(ranks), sys.executable, "-m", "core.train",
            *args]


@pytest.mark.mpi
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to find the ranks")
def test_sigterm_under_mpirun_then_resume_is_bit_identical(cli_env, tmp_path):
    """mpirun -n 2 -e 6 --run-dir R --checkpoint-every 1, SIGTERM during epoch 4, --resume R:
    bit-identical to an uninterrupted -e 6 run, six epochs in metrics.jsonl, a plot; and the
    checkpoint resumed in one process matches within 1e-10 (float64)."""
    args = ["--backend", "numpy", "--dtype", "float64", "--train-size", "4000", "--val-size",
            "500", "-n", "64", "-b", "20", "-e", "6"]
    full, part, run = tmp_path / "full.npz", tmp_path / "part.npz", tmp_path / "R"
    done = subprocess.run(mpirun(2, args + ["--save", str(full)]), cwd=REPO,
                          env=cli_env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("dpmlp: BLAS threads") == 1  # rank 0 only
    proc = subprocess.Popen(mpirun(2, args + ["--run-dir", str(run), "--checkpoint-every", "1"]),
                            cwd=REPO, env=cli_env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        # signalled as a batch system signals a job: every rank (mpirun would end them at once)
        head = _wait_for_epoch(proc, 3, pids=lambda: _rank_pids(proc.pid))
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0
    lines = [line for line in err.splitlines() if line.startswith("dpmlp:")]
    assert len(lines) == 1, head + out + err
    m = re.match(rf"dpmlp: interrupted at epoch 4 step (\d+); resume with --resume {run}$",
                 lines[0])
    assert m, lines[0]
    assert "Traceback" not in err
    ckpt = load_checkpoint(run)
    assert (ckpt.epoch, ckpt.step) == (3, int(m.group(1)))
    # the checkpoint taken at 2 ranks, resumed in 1: within 1e-10
    one = subprocess.run([sys.executable, "-m", "core.train", *args, "--resume",
                          str(ckpt.path), "--save", str(part)], cwd=REPO, env=cli_env,
                         capture_output=True, text=True, timeout=120)
    assert one.returncode == 0, one.stderr
    assert "note:" in one.stdout and "ranks 2" in one.stdout
    expected, got = params_of(full), params_of(part)
    for k in expected:
        assert relative_max_error(expected[k], got[k]) < 1e-10, k
    # resumed at 2 ranks: bit-identical
    resumed = subprocess.run(mpirun(2, args + ["--resume", str(run), "--save", str(part)]),
                             cwd=REPO, env=cli_env, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert_identical(params_of(full), params_of(part))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4, 5, 6]
    pytest.importorskip("matplotlib")
    plot = subprocess.run([sys.executable, "-m", "core.plot", str(run)], cwd=REPO, env=cli_env,
                          capture_output=True, text=True, timeout=120)
    assert plot.returncode == 0, plot.stderr
    assert (run / "curves.png").read_bytes().startswith(b"\x89PNG")
