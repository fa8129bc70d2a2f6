"""Issue 21: bad input and faults at every stage of a run, as a new user and as an adversary.

Each case asserts the exit code (core/errors.py's table), the one line on stderr, no traceback,
nothing lost and no process left behind. In one process (NumPy, CPU) on the bundled subset, with
tiny runs; the disk-full cases mount a small tmpfs where the machine allows it (a user and mount
namespace through ``unshare``), else inject ENOSPC at each write site (tests/disk_full_train.py).
"""

from __future__ import annotations

import json
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

from conftest import REPO, TESTS, one_job_env

TINY = ["--backend", "numpy", "--train-size", "200", "--val-size", "100", "-n", "16", "-b", "10",
        "-e", "2"]


@pytest.fixture
def env(tmp_path):
    environment = one_job_env(tmp_path)
    rescue = tmp_path / "fallback"
    rescue.mkdir()
    environment["TMPDIR"] = str(rescue)  # where rescued parameters land
    return environment


def cli(args, env, timeout=120, module="core.train"):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def one_line(proc, code=2) -> str:
    """The exit code is ``code``, stderr is one line, and nothing anywhere is a traceback."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert len(lines) == 1, proc.stderr
    return lines[0]


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def params_of(path):
    with np.load(path) as z:
        return {k: z[k] for k in ("W1", "b1", "W2", "b2")}


# ------------------------------------------------------------------ run directories: owned
def test_a_second_job_on_a_locked_run_dir_is_one_line_naming_the_pid(env, tmp_path):
    from core.runlock import RunLock

    run = tmp_path / "run"
    run.mkdir()
    lock = RunLock.acquire(run)  # held by this (test) process, as a running job holds it
    try:
        line = one_line(cli(TINY + ["--run-dir", str(run)], env))
    finally:
        lock.release()
    assert line.startswith(f"dpmlp: error: --run-dir {run}: in use by another run "
                           f"(pid {os.getpid()} on "), line
    assert sorted(p.name for p in run.iterdir()) == [".lock"]  # nothing of the run written
    assert cli(TINY + ["--run-dir", str(run), "--quiet"], env).returncode == 0  # released


def test_two_jobs_on_one_run_dir_one_refused_history_unmixed(env, tmp_path):
    run = tmp_path / "run"
    args = ["--backend", "numpy", "--train-size", "2000", "--val-size", "100", "-n", "16",
            "-b", "1", "-e", "50", "--run-dir", str(run)]
    first = subprocess.Popen([sys.executable, "-m", "core.train", *args], cwd=REPO, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in first.stdout:
            if line.startswith("epoch "):
                break
        line = one_line(cli(TINY + ["--run-dir", str(run)], env))
        assert f"in use by another run (pid {first.pid} on " in line, line
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)
    assert first.returncode == 130
    epochs = [r["epoch"] for r in metrics(run)]
    assert epochs == sorted(set(epochs))  # each epoch once
    assert json.loads((run / "config.json").read_text())["flags"]["batch_size"] == 1


def test_a_killed_run_leaves_its_directory_unlocked(env, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "core.train", *TINY, "-e", "500",
                             "--run-dir", str(run)], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for line in proc.stdout:
        if line.startswith("epoch "):
            proc.kill()
            break
    proc.communicate(timeout=30)
    line = one_line(cli(TINY + ["--run-dir", str(run)], env))
    assert "in use" not in line and f"--resume {run}" in line  # a run to continue, not a lock


def test_resume_of_another_run_into_a_run_dir_touches_nothing(env, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli(TINY + ["-e", "6", "--run-dir", str(a), "--checkpoint-every", "1",
                       "--quiet"], env).returncode == 0
    assert cli(TINY + ["-e", "2", "--run-dir", str(b), "--quiet"], env).returncode == 0
    before = {p.relative_to(a): p.read_bytes() for p in a.rglob("*") if p.is_file() and p.name != ".lock"}
    other = next((b / "checkpoints").iterdir())
    for resume in (str(other), str(b)):
        line = one_line(cli(TINY + ["-e", "8", "--resume", resume, "--run-dir", str(a)], env))
        assert line == (f"dpmlp: error: --run-dir {a}: holds another run; --resume {resume} is "
                        f"not one of its checkpoints, and resuming there would rewrite that "
                        f"run's history: give a new --run-dir")
    after = {p.relative_to(a): p.read_bytes() for p in a.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == before
    # into a new directory it is fine, and b's own history stays
    new = tmp_path / "new"
    assert cli(TINY + ["-e", "3", "--resume", str(b), "--run-dir", str(new), "--quiet"],
               env).returncode == 0
    assert [r["epoch"] for r in metrics(new)] == [3]
    assert [r["epoch"] for r in metrics(b)] == [1, 2]


def _run_without_checkpoint(env, run):
    """A run killed (-9) before its first checkpoint: config.json, no checkpoint."""
    proc = subprocess.Popen([sys.executable, "-m", "core.train", *TINY, "-e", "500",
                             "--run-dir", str(run)], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for line in proc.stdout:
        if line.startswith("epoch "):
            proc.kill()
            break
    proc.communicate(timeout=30)
    assert (run / "config.json").exists() and not list(run.glob("checkpoints/*.npz"))


def test_a_run_killed_before_its_first_checkpoint_can_go_on(env, tmp_path):
    run = tmp_path / "run"
    _run_without_checkpoint(env, run)
    line = one_line(cli(TINY + ["--run-dir", str(run)], env))
    assert line == (f"dpmlp: error: --run-dir {run}: holds a run that stopped before its first "
                    f"checkpoint; start it again from the beginning with --resume {run} (the "
                    f"same flags), or replace it with --overwrite")
    line = one_line(cli(TINY + ["-n", "8", "--resume", str(run)], env))
    assert "--hidden 16" in line and "--hidden 8" in line and "config.json" in line
    proc = cli(TINY + ["--resume", str(run)], env)  # from the beginning, the same flags
    assert proc.returncode == 0, proc.stderr
    assert "starting it again from the beginning" in proc.stdout
    whole = tmp_path / "whole"
    assert cli(TINY + ["--run-dir", str(whole), "--quiet"], env).returncode == 0
    assert [r["loss"] for r in metrics(run)] == [r["loss"] for r in metrics(whole)]


def test_overwrite_replaces_only_a_run_without_checkpoints(env, tmp_path):
    run = tmp_path / "run"
    _run_without_checkpoint(env, run)
    proc = cli(TINY + ["--run-dir", str(run), "--overwrite", "--quiet"], env)
    assert proc.returncode == 0, proc.stderr
    assert [r["epoch"] for r in metrics(run)] == [1, 2]
    line = one_line(cli(TINY + ["--run-dir", str(run), "--overwrite"], env))
    assert line.startswith(f"dpmlp: error: --overwrite: {run} holds checkpoints (latest ")
    assert [r["epoch"] for r in metrics(run)] == [1, 2]


def test_resume_of_an_empty_directory_agrees_with_run_dir(env, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    line = one_line(cli(TINY + ["--resume", str(empty)], env))
    assert line == (f"dpmlp: error: --resume {empty}: holds no run yet (no config.json, no "
                    f"checkpoint); start one with --run-dir {empty}")


def test_a_failed_start_leaves_no_empty_run_dir(env, tmp_path):
    run = tmp_path / "new-run"
    one_line(cli(TINY + ["--run-dir", str(run), "--resume", str(tmp_path / "nothing.npz")], env))
    assert not run.exists()
    one_line(cli(TINY + ["--run-dir", str(run), "--train-size", "999999"], env))
    assert not run.exists()


# ------------------------------------------------------------------ nothing lost: disk full
def _can_mount_tmpfs(tmp_path) -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = tmp_path / "probe-mount"
    probe.mkdir()
    proc = subprocess.run(["unshare", "-rm", "sh", "-c",
                           f"mount -t tmpfs -o size=64k tmpfs {probe} && touch {probe}/x"],
                          capture_output=True, timeout=30)
    return proc.returncode == 0


@pytest.fixture(params=["fill", "inject"])
def disk_mode(request, tmp_path):
    """fill: a real tmpfs filled to its last byte; inject: OSError(ENOSPC) at each write."""
    if request.param == "fill" and not _can_mount_tmpfs(tmp_path):
        pytest.skip("no small file system can be mounted here (unshare -rm); inject covers it")
    return request.param


def disk_full_run(env, tmp_path, when, args, mode, size_kb=400):
    """A run whose file system (a tmpfs of ``size_kb`` under tmp_path/small, or injected
    ENOSPC there) fills at ``when`` (tests/disk_full_train.py). Returns (proc, small)."""
    small = tmp_path / "small"
    small.mkdir()
    script = [sys.executable, str(TESTS / "disk_full_train.py")]
    argv = [*args]
    if mode == "fill":
        cmd = ["unshare", "-rm", "sh", "-c",
               f'mount -t tmpfs -o size={size_kb}k tmpfs "{small}" && exec "$@"', "sh",
               *script, "fill", str(small), when, "--", *argv]
    else:
        cmd = [*script, "inject", str(small), when, "--", *argv]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    return proc, small


def test_save_on_a_disk_that_fills_keeps_the_parameters_and_says_where(env, tmp_path, disk_mode):
    expected = tmp_path / "expected.npz"
    assert cli(TINY + ["--save", str(expected), "--quiet"], env).returncode == 0
    proc, _ = disk_full_run(env, tmp_path, "end", TINY + ["--save", str(tmp_path / "small" /
                                                                     "p.npz")], disk_mode)
    line = one_line(proc, code=5)
    m = re.fullmatch(rf"dpmlp: error: --save {tmp_path}/small/p\.npz: cannot write: no space "
                     rf"left on device; the parameters are safe in (\S+)", line)
    assert m, line
    rescued = Path(m.group(1))
    assert rescued.parent == tmp_path / "fallback"
    for k, v in params_of(expected).items():
        np.testing.assert_array_equal(params_of(rescued)[k], v)
    assert proc.stdout.splitlines()[-1].startswith("done: 2 epoch(s)")  # the summary too


def test_save_and_run_dir_on_a_full_disk_keep_the_parameters(env, tmp_path, disk_mode):
    small = tmp_path / "small"
    proc, _ = disk_full_run(env, tmp_path, "end", TINY + ["--save", str(small / "p.npz"),
                                                          "--run-dir", str(small / "r")],
                            disk_mode)
    line = one_line(proc, code=5)
    rescued = Path(re.search(r"the parameters are safe in (\S+)$", line).group(1))
    assert rescued.exists() and params_of(rescued)["W1"].shape == (16, 784)


def test_checkpoint_on_a_full_disk_is_rescued_and_resumable(env, tmp_path, disk_mode):
    small = tmp_path / "small"
    expected = tmp_path / "expected.npz"
    args = TINY + ["-e", "3"]
    assert cli(args + ["--save", str(expected), "--quiet"], env).returncode == 0
    proc, _ = disk_full_run(env, tmp_path, "epoch:2", args + ["--run-dir", str(small / "r"),
                                                              "--checkpoint-every", "1"],
                            disk_mode)
    line = one_line(proc, code=5)
    assert line.startswith("dpmlp: error: training stopped at the end of epoch 2: "), line
    assert "no space left on device" in line
    rescued = re.search(r"continue with --resume (\S+) --run-dir NEW_DIR\)$", line).group(1)
    assert Path(rescued).parent == tmp_path / "fallback"
    out = tmp_path / "resumed.npz"
    done = cli(args + ["--resume", rescued, "--run-dir", str(tmp_path / "new"), "--save",
                       str(out), "--quiet"], env)
    assert done.returncode == 0, done.stderr
    for k, v in params_of(expected).items():
        np.testing.assert_array_equal(params_of(out)[k], v)


def test_free_space_is_checked_before_training(env, tmp_path):
    if not _can_mount_tmpfs(tmp_path):
        pytest.skip("no small file system can be mounted here (unshare -rm)")
    small = tmp_path / "small"
    small.mkdir()
    proc = subprocess.run(["unshare", "-rm", "sh", "-c",
                           f'mount -t tmpfs -o size=100k tmpfs "{small}" && exec "$@"', "sh",
                           sys.executable, "-m", "core.train", *TINY, "-n", "64", "--save",
                           str(small / "p.npz"), "--run-dir", str(small / "r")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    line = one_line(proc)
    assert re.fullmatch(rf"dpmlp: error: --save {small}/p\.npz and --run-dir {small}/r: need "
                        rf"about \S+ [kM]B on their file system, \d+ kB free", line), line
    assert not (small / "r").exists()


# ------------------------------------------------------------------ checkpoints: validated
def forge(src: Path, dst: Path, meta=None, config=None, extras=None, drop=(), arrays=None):
    """A copy of checkpoint ``src`` with metadata fields (``meta``), config keys (``config``;
    ``drop`` removes some), extras and arrays replaced, as a hand edit or a bug would."""
    with np.load(src) as z:
        members = {k: z[k] for k in z.files}
    doc = json.loads(members.pop("__meta__").tobytes().decode())
    doc.update(meta or {})
    doc["config"].update(config or {})
    doc["extras"].update(extras or {})
    for key in drop:
        doc["config"].pop(key)
    members.update(arrays or {})
    blob = np.frombuffer(json.dumps(doc).encode(), dtype=np.uint8)
    np.savez(dst, **members, __meta__=blob)
    return dst


@pytest.fixture(scope="module")
def a_checkpoint(tmp_path_factory):
    """The checkpoint at the end of epoch 1 of a tiny run (20 steps an epoch), recorded as a
    run of 3 epochs so that ``-e 3`` resumes it; every forgery starts from it."""
    base = tmp_path_factory.mktemp("ckpt")
    env = one_job_env(base)
    run = base / "run"
    proc = cli(TINY + ["-e", "1", "--run-dir", str(run), "--quiet"], env)
    assert proc.returncode == 0, proc.stderr
    src = next((run / "checkpoints").iterdir())
    # the same position written as a 3-epoch run's, so that -e 3 may resume it
    return forge(src, base / "base.npz", config={"epochs": 3})


W1_NAN = np.full((16, 784), np.nan, dtype=np.float32)


@pytest.mark.parametrize("change, words", [
    (dict(meta={"epoch": -1}), "field epoch is -1, expected an integer >= 0"),
    (dict(meta={"epoch": "1"}), "field epoch is '1', expected an integer >= 0"),
    (dict(meta={"step": 7.5}), "field step is 7.5"),
    (dict(meta={"step": 5000}), "field step is 5000, but an epoch of 200 images in batches of "
                                "10 has 20 steps"),
    (dict(meta={"epoch": 9}), "field epoch is 9 (step 0) in a run of 3 epoch(s)"),
    (dict(meta={"step": 5}, extras={"epoch_nll_sum": "nan"}), "field extras.epoch_nll_sum is"),
    (dict(meta={"step": 5}), "field extras.epoch_nll_sum is None"),
    (dict(meta={"dtype": "int8"}), "field dtype is 'int8', expected float32 or float64"),
    (dict(meta={"hidden": 0}), "field hidden is 0, expected an integer >= 1"),
    (dict(config={"hidden": 32}), "field config.hidden is 32 but the parameters are hidden 16"),
    (dict(drop=("lr",)), "field config.lr is missing"),
    (dict(drop=("exact",)), "field config.exact is missing"),
    (dict(config={"batch_size": 0}), "field config.batch_size is 0, expected an integer >= 1"),
    (dict(config={"epochs": 2.5}), "field config.epochs is 2.5"),
    (dict(arrays={"W1": W1_NAN}), "field W1 holds 12544 non-finite value(s)"),
])
def test_an_inconsistent_checkpoint_is_one_line_naming_file_and_field(env, tmp_path,
                                                                      a_checkpoint, change,
                                                                      words):
    bad = forge(a_checkpoint, tmp_path / "bad.npz", **change)
    line = one_line(cli(TINY + ["-e", "3", "--resume", str(bad)], env))
    assert re.match(rf"dpmlp: error: (--resume )?{re.escape(str(bad))}: field ", line), line
    assert words in line, line


def test_the_forged_base_checkpoint_itself_resumes(env, tmp_path, a_checkpoint):
    proc = cli(TINY + ["-e", "3", "--resume", str(a_checkpoint), "--quiet"], env)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("flag, value", [("--lr", "0.5"), ("--reg", "0"), ("--scale", "raw"),
                                         ("--val-size", "50"), ("--batch-size", "20")])
def test_resume_with_another_computation_is_refused(env, a_checkpoint, flag, value):
    line = one_line(cli(TINY + ["-e", "3", "--resume", str(a_checkpoint), flag, value], env))
    assert f"was trained with {flag} " in line and f"this run has {flag} {value}" in line


def test_resume_with_another_seed_says_so(env, a_checkpoint):
    proc = cli(TINY + ["-e", "3", "--resume", str(a_checkpoint), "--seed", "7"], env)
    assert proc.returncode == 0 and "was trained with --seed 0" in proc.stdout


# ------------------------------------------------------------------ flags mean what they say
@pytest.mark.parametrize("args, line", [
    (["-r", "-1e-5"], "argument -r/--reg: must be a number >= 0, got '-1e-5'"),
    (["--reg", "-.5"], "argument -r/--reg: must be a number >= 0, got '-.5'"),
    (["-l", "-1"], "argument -l/--lr: must be a positive number, got '-1'"),
    (["-l", "-inf"], "argument -l/--lr: must be a positive number, got '-inf'"),
    (["--collective-timeout", "-3"], "argument --collective-timeout: must be a number >= 0, "
                                     "got '-3'"),
    (["--collective-timeout", "inf"], "argument --collective-timeout: must be a number >= 0, "
                                      "got 'inf'"),
    (["--seed", "100000000000000000000"], "argument --seed: must be an integer from 0 to "
                                          "9223372036854775807 (2**63 - 1), got "
                                          "'100000000000000000000'"),
    (["--seed", "1e20"], "argument --seed: must be an integer >= 0, got '1e20'"),
    (["-b", "1e20"], "argument -b/--batch-size: must be a positive integer, got '1e20'"),
    (["-e", "0"], "argument -e/--epochs: must be a positive integer, got '0'"),
    (["--overwrite"], "--overwrite: replaces the run of --run-dir DIR, so it needs --run-dir "
                      "and no --resume"),
])
def test_flag_values_follow_the_flags_rules(env, args, line):
    assert one_line(cli(TINY + args, env)) == f"dpmlp: error: {line}"


@pytest.mark.parametrize("var, value, line", [
    ("DPMLP_COLLECTIVE_TIMEOUT", "inf", "must be a number of seconds >= 0 (0 = off), as "
                                        "--collective-timeout"),
    ("DPMLP_COLLECTIVE_TIMEOUT", "nan", "must be a number of seconds >= 0"),
    ("DPMLP_COLLECTIVE_TIMEOUT", "-1", "must be a number of seconds >= 0"),
    ("DPMLP_COLLECTIVE_TIMEOUT", "soon", "must be a number of seconds"),
    ("DPMLP_CUDA_AWARE_MPI", "maybe", "must be 1 or 0 (as --cuda-aware-mpi)"),
])
def test_environment_forms_follow_the_flags_rules(env, var, value, line):
    env = dict(env, **{var: value})
    assert one_line(cli(TINY, env)).startswith(f"dpmlp: error: {var}={value!r}: {line}")


def test_a_batch_larger_than_the_training_set_is_clamped_everywhere(env):
    huge = cli(TINY + ["-e", "1", "-b", "100000000000000000000", "--verify"], env)
    whole = cli(TINY + ["-e", "1", "-b", "200", "--verify"], env)
    assert huge.returncode == 0 and whole.returncode == 0, huge.stderr + whole.stderr
    assert ("dpmlp: note: --batch-size 100000000000000000000 is larger than the 200 training "
            "images; using 200 (one step an epoch: batch gradient descent)") in huge.stdout
    assert " B=200 " in huge.stdout
    tolerance = [re.search(r"tolerance (\S+) \(float32\)", p.stdout).group(1)
                 for p in (huge, whole)]
    assert tolerance[0] == tolerance[1] != "6.0e+03"
    exact = cli(TINY + ["-e", "1", "-b", "100000000000000000000", "--exact", "--quiet"], env)
    assert exact.returncode == 0 and "Traceback" not in exact.stderr, exact.stderr


def _idx(path: Path, magic: int, dims: tuple, payload: bytes = b"") -> None:
    import gzip
    import struct

    with gzip.open(path, "wb") as fh:
        fh.write(struct.pack(f">I{len(dims)}I", magic, *dims) + payload)


def test_an_empty_training_file_is_named(env, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(REPO / "core" / "data" / name, data / name)
    _idx(data / "train-images-idx3-ubyte.gz", 2051, (0, 28, 28))
    _idx(data / "train-labels-idx1-ubyte.gz", 2049, (0,))
    line = one_line(cli(["--backend", "numpy", "-e", "1", "--data-dir", str(data)], env))
    assert line.startswith(f"dpmlp: error: {data}/train-images-idx3-ubyte.gz: holds no images")
    assert "--val-size" not in line


# ------------------------------------------------------------------ signals at every stage
STARTING = re.compile(r"dpmlp: interrupted \((SIGINT|SIGTERM)\) while (starting up|checking "
                      r"--save, --run-dir and --resume|loading the data|setting up the "
                      r"training); no epoch was trained")
TRAINING = re.compile(r"dpmlp: interrupted at epoch \d+ step \d+; resume with --resume (\S+)")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("delay", [0.25, 0.6, 1.0, 1.6])
def test_a_signal_at_any_moment_of_start_up_is_one_line_and_130(env, tmp_path, sig, delay):
    """From the program's first line (the interpreter's own start, some 50 ms, is before it):
    during imports, the pre-flight, data loading, set-up or training."""
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "core.train", *TINY, "--train-size", "2000",
                             "-b", "1", "-e", "30", "--run-dir", str(run)], cwd=REPO, env=env,
                            text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(delay)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 130, out + err
    assert "Traceback" not in err and len(lines) == 1, err
    if STARTING.fullmatch(lines[0]):
        assert not run.exists() or (run / "config.json").exists()  # no empty directory left
    else:
        assert TRAINING.fullmatch(lines[0]), lines[0]
        assert list((run / "checkpoints").glob("*.npz"))


def test_deferred_holds_a_signal_until_the_write_is_done():
    from core import startup

    before = {sig: signal.getsignal(sig) for sig in startup.SIGNALS}
    startup.install_signal_handlers()
    try:
        written = []
        with pytest.raises(SystemExit) as info:
            with startup.deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)
                written.append("whole")  # the write goes on
        assert info.value.code == 130 and written == ["whole"]
    finally:
        startup._state["fired"] = False
        for sig, handler in before.items():
            signal.signal(sig, handler)


# ------------------------------------------------------------------ every subcommand
def dpmlp(args, env, timeout=120):
    return subprocess.run([sys.executable, "-c", "import sys; from core.cli import main; "
                           "sys.exit(main())", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("args, words", [
    (["bench", "--hidden", "abc"], "argument --hidden: must be comma-separated positive "
                                   "integers, got 'abc'"),
    (["bench", "--epochs", "0"], "argument --epochs: must be a positive integer, got '0'"),
    (["bench", "--samples", "-5"], "argument --samples: must be a positive integer, got '-5'"),
    (["bench", "--backends", "foo", "--samples", "100"], "--backends foo: unknown backend"),
    (["bench", "--modes", "bogus", "--samples", "100"], "--modes: bogus is none of"),
    (["bench", "--bogus"], "unrecognized arguments: --bogus"),
    (["train", "-r", "-1"], "argument -r/--reg: must be a number >= 0, got '-1'"),
    (["plot", "/no/such/run"], "not found"),
    (["backends", "extra"], "dpmlp backends takes no arguments"),
    (["fly"], "unknown command 'fly'"),
])
def test_every_subcommand_is_one_line_exit_2(env, args, words):
    line = one_line(dpmlp(args, env))
    assert line.startswith("dpmlp: error: ") and words in line, line


def test_bench_json_on_a_read_only_directory_is_one_line(env, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        proc = dpmlp(["bench", "--samples", "100", "--json", str(ro / "b.json")], env)
        if proc.returncode == 0:
            pytest.skip("this user writes into a read-only directory (root)")
        assert "cannot write" in one_line(proc)
    finally:
        ro.chmod(0o755)


@pytest.mark.parametrize("command", ["train", "bench", "plot", "backends"])
def test_each_subcommand_has_its_own_help(env, command):
    proc = dpmlp([command, "--help"], env)
    assert proc.returncode == 0 and proc.stdout.startswith(f"usage: dpmlp {command}"), proc.stdout


def test_bare_dpmlp_prints_its_usage_on_stderr_exit_2(env):
    proc = dpmlp([], env)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("usage: dpmlp {train,bench,plot,backends}")


# ------------------------------------------------------------------ what the run prints
def test_the_bar_shows_the_running_loss(env):
    proc = cli(TINY + ["--train-size", "9000", "-b", "1", "-e", "2", "--progress", "bar"], env)
    assert proc.returncode == 0, proc.stderr
    postfixes = re.findall(r"steps \[[^\]]*samples/s, loss (\d+\.\d{4})\]", proc.stdout)
    assert postfixes and all(0 < float(v) < 10 for v in postfixes), proc.stdout[-2000:]


def test_progress_none_and_lines(env):
    none = cli(TINY + ["--progress", "none"], env)
    lines = cli(TINY + ["--progress", "lines"], env)
    assert none.returncode == lines.returncode == 0
    assert not re.search(r"^epoch ", none.stdout, re.M) and "steps [" not in none.stdout
    assert len(re.findall(r"^epoch +\d+/2 ", lines.stdout, re.M)) == 2
    assert "\r" not in lines.stdout


@pytest.mark.mpi
def test_under_mpirun_in_a_terminal_rank_0_draws_the_bar(tmp_path):
    import fcntl
    import pty
    import struct
    import termios

    from conftest import MPIRUN

    main, sub = pty.openpty()
    fcntl.ioctl(sub, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    proc = subprocess.Popen([MPIRUN, "--oversubscribe", "-n", "2", sys.executable, "-m",
                             "core.train", *TINY, "--train-size", "2000", "-b", "2", "-e", "1"],
                            cwd=REPO, env=one_job_env(tmp_path), stdout=sub,
                            stderr=subprocess.PIPE)
    os.close(sub)
    out = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.close(main)
    proc.wait(timeout=120)
    assert proc.returncode == 0, proc.stderr.read()
    assert b"steps [" in out and b"done: 1 epoch(s)" in out


def test_quiet_prints_only_the_summary_and_errors(env, tmp_path):
    proc = cli(TINY + ["--quiet", "--save", str(tmp_path / "p.npz"), "--verify"], env)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert re.fullmatch(r"done: 2 epoch\(s\), [^\n]*; test acc \d+\.\d\d%\n", proc.stdout), \
        proc.stdout


@pytest.mark.parametrize("extra", [["--exact"], ["--verify=final"], ["--verify"]])
def test_done_is_the_last_line(env, extra):
    proc = cli(TINY + ["-e", "1"] + extra, env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1].startswith("done: 1 epoch(s)"), proc.stdout


def test_one_step_numbering_in_messages_file_names_and_resume(env, tmp_path):
    run = tmp_path / "run"
    args = TINY + ["--train-size", "2000", "-b", "1", "-e", "3"]
    proc = subprocess.Popen([sys.executable, "-m", "core.train", *args, "--run-dir", str(run)],
                            cwd=REPO, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    for line in proc.stdout:
        if line.startswith("epoch "):
            time.sleep(0.3)  # into epoch 2
            proc.send_signal(signal.SIGINT)
            break
    out, err = proc.communicate(timeout=60)
    m = TRAINING.fullmatch(err.strip())
    assert proc.returncode == 130 and m, err
    epoch, step = map(int, re.search(r"epoch (\d+) step (\d+)", err).groups())
    assert 1 <= step < 2000, err  # inside the epoch: step S of it done, 1-based
    assert f"ckpt-{epoch:04d}-{step:08d}.npz" in [p.name for p in (run / "checkpoints").iterdir()]
    resumed = cli(args + ["--resume", str(run)], env)
    assert resumed.returncode == 0, resumed.stderr
    assert (f"dpmlp: resuming from {run}/checkpoints/ckpt-{epoch:04d}-{step:08d}.npz at epoch "
            f"{epoch} step {step}\n") in resumed.stdout
    again = cli(args + ["--resume", str(run), "-e", "4", "--progress", "none"], env)
    assert "at the end of epoch 3\n" in again.stdout and again.returncode == 0


# ------------------------------------------------------------------ what slipped through
def test_a_resume_inside_an_epoch_records_every_epochs_loss_as_the_uninterrupted_run(env,
                                                                                  tmp_path):
    """The parameters of a resumed run are bit-identical whether or not the partial epoch's loss
    sum is restored; metrics.jsonl is not: every epoch's loss must equal the uninterrupted one."""
    args = TINY + ["--dtype", "float64", "--train-size", "2000", "-b", "1", "-e", "3"]
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert cli(args + ["--run-dir", str(whole), "--quiet"], env).returncode == 0
    for attempt in range(3):  # a signal may land on an epoch's end; then once more
        shutil.rmtree(part, ignore_errors=True)
        proc = subprocess.Popen([sys.executable, "-m", "core.train", *args, "--run-dir",
                                 str(part)], cwd=REPO, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for line in proc.stdout:
            if line.startswith("epoch "):
                time.sleep(0.2 + 0.1 * attempt)
                proc.send_signal(signal.SIGTERM)
                break
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        step = int(re.search(r"step (\d+);", err).group(1))
        if step:
            break
    assert step, "every signal landed on an epoch boundary"
    resumed = cli(args + ["--resume", str(part), "--quiet"], env)
    assert resumed.returncode == 0, resumed.stderr
    assert [r["epoch"] for r in metrics(part)] == [1, 2, 3]
    assert [r["loss"] for r in metrics(part)] == [r["loss"] for r in metrics(whole)]
