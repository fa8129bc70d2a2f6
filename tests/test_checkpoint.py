"""core.checkpoint: atomic writes, loading, validation against the run, pre-flight of targets."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

from core import checkpoint as ck
from core.errors import UserError
from core.model import init_params

REPO = Path(__file__).resolve().parent.parent
CONFIG = {"hidden": 8, "dtype": "float32", "batch_size": 50, "lr": 0.5, "reg": 1e-5,
          "scale": "unit", "train_size": 500, "val_size": 100, "seed": 0, "ranks": 1,
          "backend": "numpy", "comm": "single", "epochs": 5, "exact": False, "gemm": "simt"}
SPE = 10  # steps an epoch of CONFIG: 500 / 50


def params(hidden=8, dtype="float32", seed=0):
    return {k: v.astype(dtype) for k, v in init_params(hidden, seed).items()}


def write(path, hidden=8, dtype="float32", epoch=2, step=0, **config):
    cfg = dict(CONFIG, hidden=hidden, dtype=dtype, **config)
    return ck.save_checkpoint(path, params(hidden, dtype), epoch=epoch, step=step, config=cfg,
                              dtype=dtype, extras={"epoch_nll_sum": 1.5})


def one_line_error(fn, *args, names=(), **kwargs):
    with pytest.raises(UserError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg, msg
    for name in names:
        assert str(name) in msg, msg
    return msg


# ---------------------------------------------------------------------------- round trip
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_round_trip_is_bit_exact(tmp_path, dtype):
    path = write(tmp_path / "c.npz", dtype=dtype, epoch=3, step=7)
    c = ck.load_checkpoint(path)
    assert (c.epoch, c.step, c.dtype, c.hidden) == (3, 7, dtype, 8)
    assert c.config["lr"] == 0.5 and c.config["batch_size"] == 50
    assert c.extras == {"epoch_nll_sum": 1.5}
    assert c.version and c.path == path
    for k, v in params(8, dtype).items():
        assert c.params[k].dtype == np.dtype(dtype)
        np.testing.assert_array_equal(c.params[k], v)
    assert sorted(os.listdir(tmp_path)) == ["c.npz"]  # no temporary left


def test_run_dir_latest_and_pruning(tmp_path):
    run = tmp_path / "run"
    for epoch, step in [(1, 0), (2, 0), (2, 5), (3, 0)]:
        ck.write_run_checkpoint(run, params(), epoch=epoch, step=step, config=CONFIG,
                                dtype="float32", keep=2)
    names = [p.name for p in ck.list_checkpoints(run)]
    assert names == [ck.checkpoint_name(2, 5, SPE), ck.checkpoint_name(3, 0, SPE)]
    c = ck.load_checkpoint(run)  # a run directory means its latest
    assert (c.epoch, c.step) == (3, 0)
    # Resumed from further back: the later checkpoints of the abandoned attempt go.
    ck.write_run_checkpoint(run, params(), epoch=1, step=3, config=CONFIG, dtype="float32")
    assert [p.name for p in ck.list_checkpoints(run)] == [ck.checkpoint_name(1, 3, SPE)]


def test_save_params_is_the_plain_format(tmp_path):
    path = ck.save_params(tmp_path / "p.npz", params())
    with np.load(path) as z:
        assert sorted(z.files) == ["W1", "W2", "b1", "b2"]
    msg = one_line_error(ck.load_checkpoint, path, names=[path, "not a dpmlp checkpoint"])
    assert "--save" in msg


# ---------------------------------------------------------------------------- atomicity
KILLED_WRITER = textwrap.dedent("""
    import sys, time
    from core import checkpoint as ck
    def write(fh):
        fh.write(b"PK half a checkpoint")
        fh.flush()
        print("writing", flush=True)
        time.sleep(60)
    ck.atomic_write(sys.argv[1], write)
""")


def test_killed_writer_leaves_old_checkpoint_and_its_temporary_is_ignored_then_removed(tmp_path):
    run = tmp_path / "run"
    good = ck.write_run_checkpoint(run, params(), epoch=1, step=0, config=CONFIG, dtype="float32")
    before = good.read_bytes()
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(good)], cwd=REPO,
                            stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        assert proc.stdout.readline().strip() == "writing"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        proc.stdout.close()
    temporaries = [p for p in good.parent.iterdir() if p.name.endswith(".tmp")]
    assert len(temporaries) == 1 and temporaries[0].name.startswith(f".{good.name}.")
    # The old checkpoint is intact, and readers do not look at the temporary.
    assert good.read_bytes() == before
    assert ck.latest_checkpoint(run) == good
    assert ck.load_checkpoint(run).epoch == 1
    # The next write to that directory removes it (its writer is dead).
    ck.write_run_checkpoint(run, params(), epoch=2, step=0, config=CONFIG, dtype="float32")
    assert not temporaries[0].exists()
    assert [p.name for p in sorted(good.parent.iterdir())] == [ck.checkpoint_name(1, 0, SPE),
                                                               ck.checkpoint_name(2, 0, SPE)]


def test_failed_write_keeps_old_file_and_leaves_no_temporary(tmp_path):
    target = write(tmp_path / "c.npz")
    before = target.read_bytes()

    def broken(fh):
        fh.write(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ck.atomic_write(target, broken)
    assert target.read_bytes() == before
    assert os.listdir(tmp_path) == ["c.npz"]


def test_temporary_of_a_live_writer_is_left_alone(tmp_path):
    live = tmp_path / f".c.npz.{os.getppid()}.abcd.tmp"  # our parent: alive
    live.write_bytes(b"x")
    dead = tmp_path / ".c.npz.999999999.abcd.tmp"
    dead.write_bytes(b"x")
    removed = ck.remove_stale_temporaries(tmp_path)
    assert removed == [dead] and live.exists()


# ---------------------------------------------------------------------------- bad files
def test_truncated_checkpoint(tmp_path):
    path = write(tmp_path / "c.npz")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    one_line_error(ck.load_checkpoint, path, names=[path, "truncated or corrupt"])


def test_corrupt_checkpoint_bytes(tmp_path):
    path = write(tmp_path / "c.npz")
    blob = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("W1.npy")
    blob[info.header_offset + 200] ^= 0xFF  # inside W1's data: CRC mismatch
    path.write_bytes(bytes(blob))
    one_line_error(ck.load_checkpoint, path, names=[path, "corrupt"])


@pytest.mark.parametrize("content,expect", [
    (b"", "not an .npz"),
    (b"hello, world", "not an .npz"),
    (b"\x93NUMPY\x01\x00 not an archive", "not an .npz"),
])
def test_not_a_checkpoint(tmp_path, content, expect):
    path = tmp_path / "c.npz"
    path.write_bytes(content)
    one_line_error(ck.load_checkpoint, path, names=[path, expect])


def test_foreign_npz(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, weights=np.zeros(3))
    one_line_error(ck.load_checkpoint, path, names=[path, "not a dpmlp checkpoint"])


def test_missing_file_and_empty_run_dir(tmp_path):
    one_line_error(ck.load_checkpoint, tmp_path / "nope.npz", names=["nope.npz", "not found"])
    one_line_error(ck.load_checkpoint, tmp_path, names=[tmp_path, "without checkpoints"])


# ---------------------------------------------------------------------------- validation
def test_other_hidden_is_named(tmp_path):
    c = ck.load_checkpoint(write(tmp_path / "c.npz", hidden=8))
    msg = one_line_error(ck.validate_checkpoint, c, dict(CONFIG, hidden=16),
                         names=[c.path, "--hidden 8", "--hidden 16"])
    assert "float" not in msg


def test_other_dtype_is_named(tmp_path):
    c = ck.load_checkpoint(write(tmp_path / "c.npz", dtype="float64"))
    one_line_error(ck.validate_checkpoint, c, dict(CONFIG, dtype="float32"),
                   names=[c.path, "--dtype float64", "--dtype float32"])


@pytest.mark.parametrize("key,flag,value", [("batch_size", "--batch-size", 100),
                                            ("lr", "--lr", 0.1), ("scale", "--scale", "raw"),
                                            ("train_size", "--train-size", None)])
def test_other_training_setting_is_named(tmp_path, key, flag, value):
    c = ck.load_checkpoint(write(tmp_path / "c.npz"))
    one_line_error(ck.validate_checkpoint, c, dict(CONFIG, **{key: value}), names=[c.path, flag])


def test_fitting_checkpoint_passes_with_notes_for_rounding_only_differences(tmp_path):
    c = ck.load_checkpoint(write(tmp_path / "c.npz", epoch=2))
    assert ck.validate_checkpoint(c, CONFIG, epochs=5, steps_per_epoch=10) == []
    notes = ck.validate_checkpoint(c, dict(CONFIG, ranks=3), epochs=5)
    assert len(notes) == 1 and "ranks 1" in notes[0] and "3" in notes[0]


def test_finished_and_impossible_positions(tmp_path):
    c = ck.load_checkpoint(write(tmp_path / "c.npz", epoch=2, step=0))
    one_line_error(ck.validate_checkpoint, c, CONFIG, epochs=2, names=["already trained 2",
                                                                      "--epochs"])
    c = ck.load_checkpoint(write(tmp_path / "d.npz", epoch=1, step=7))
    one_line_error(ck.validate_checkpoint, c, CONFIG, epochs=5, steps_per_epoch=5,
                   names=["step 7"])
    # inconsistent with itself: caught when read (tests/test_adversarial.py has the others)
    one_line_error(ck.load_checkpoint, write(tmp_path / "e.npz", epoch=1, step=12),
                   names=["field step is 12", "has 10 steps"])


# ---------------------------------------------------------------------------- pre-flight
def test_writable_targets_pass(tmp_path):
    ck.check_writable_target("--save", tmp_path / "p.npz", "file")
    ck.check_writable_target("--run-dir", tmp_path / "new-run", "dir")
    ck.check_writable_target("--run-dir", tmp_path, "dir")
    assert os.listdir(tmp_path) == []  # the probe leaves nothing


def test_directory_where_a_file_belongs(tmp_path):
    one_line_error(ck.check_writable_target, "--save", tmp_path, "file",
                   names=["--save", "is a directory"])


def test_file_where_a_directory_belongs(tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    one_line_error(ck.check_writable_target, "--run-dir", f, "dir",
                   names=["--run-dir", str(f), "not a directory"])


@pytest.mark.parametrize("flag,kind", [("--save", "file"), ("--run-dir", "dir")])
def test_missing_parent(tmp_path, flag, kind):
    target = tmp_path / "no" / "such" / "x"
    one_line_error(ck.check_writable_target, flag, target, kind, names=[flag, "does not exist"])
    assert not (tmp_path / "no").exists()


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes in read-only-mode directories")
def test_unwritable_directory(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        one_line_error(ck.check_writable_target, "--save", locked / "p.npz", "file",
                       names=["--save", "permission denied"])
    finally:
        locked.chmod(0o755)


@pytest.mark.parametrize("err,words", [(errno.EROFS, "read-only file system"),
                                       (errno.EACCES, "permission denied"),
                                       (errno.ENOSPC, "no space left")])
def test_failed_test_write_is_named(tmp_path, monkeypatch, err, words):
    """A read-only mount (or root-squashed NFS) says yes to os.access; the test write says no."""
    def refuse(directory):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(ck, "_probe_write", refuse)
    one_line_error(ck.check_writable_target, "--run-dir", tmp_path / "run", "dir",
                   names=["--run-dir", words])
