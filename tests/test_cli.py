"""The command line end to end: ``python -m core.train`` in a subprocess, one process.

Runs on the bundled subset (DPMLP_CACHE_DIR points at an empty directory and DPMLP_DATA_DIR is
removed, so the search order falls through to core/data/). Every user mistake must end with exit
code 2 and exactly one stderr line naming the flag or file, never a traceback. The accuracy test
trains the defaults on full MNIST where it is available (conftest's locator: $DPMLP_DATA_DIR or
../shared/data/mnist beside the checkout) and expects >= 97% test accuracy. The same CLI under
mpirun is tested in test_cli_mpirun.py.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil

import numpy as np
import pytest

from conftest import TINY, assert_user_error, cli
from core import data



# ------------------------------------------------------------------ a normal run
def test_tiny_run_on_bundled_subset(cli_env):
    proc = cli(TINY, cli_env)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "bundled subset" in out  # says where the data came from
    epochs = re.findall(r"^epoch\s+1/1\s+loss (\S+)\s+val acc\s+(\S+)%", out, re.M)
    assert len(epochs) == 1, out
    loss, val = map(float, epochs[0])
    assert np.isfinite(loss) and 0 <= val <= 100
    m = re.search(r"^test accuracy (\S+)% \((\d+) images\)", out, re.M)
    assert m, out
    assert 0 <= float(m.group(1)) <= 100 and int(m.group(2)) == 2000
    assert "500 train / 100 val" in out
    assert "Traceback" not in proc.stderr


def test_tiny_run_learns_something(cli_env):
    """A few epochs on the subset with defaults-like settings beat chance clearly."""
    proc = cli(["--backend", "numpy", "--train-size", "2000", "--val-size", "500", "-e", "3",
                "-n", "32"], cli_env)
    assert proc.returncode == 0, proc.stderr
    acc = float(re.search(r"^test accuracy (\S+)%", proc.stdout, re.M).group(1))
    assert acc > 60, proc.stdout


# ------------------------------------------------------------------ --save
def test_save_writes_params_atomically(cli_env, tmp_path):
    outdir = tmp_path / "out"
    outdir.mkdir()
    target = outdir / "params.npz"
    proc = cli(TINY + ["--save", str(target)], cli_env)
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(outdir)) == ["params.npz"]  # no temporary file left behind
    with np.load(target) as z:
        assert sorted(z.files) == ["W1", "W2", "b1", "b2"]
        shapes = {k: z[k].shape for k in z.files}
        assert shapes == {"W1": (16, 784), "b1": (16,), "W2": (10, 16), "b2": (10,)}
        assert all(np.isfinite(z[k]).all() for k in z.files)
        assert z["W1"].dtype == np.float32  # the default dtype


def test_save_is_deterministic_and_follows_seed(cli_env, tmp_path):
    paths = [tmp_path / f"{n}.npz" for n in ("a", "b", "c")]
    for path, seed in zip(paths, ("0", "0", "1")):
        proc = cli(TINY + ["--dtype", "float64", "--seed", seed, "--save", str(path)], cli_env)
        assert proc.returncode == 0, proc.stderr
    with np.load(paths[0]) as a, np.load(paths[1]) as b, np.load(paths[2]) as c:
        for k in ("W1", "b1", "W2", "b2"):
            np.testing.assert_array_equal(a[k], b[k])
        assert not np.array_equal(a["W1"], c["W1"])


def test_save_into_missing_directory_fails_before_training(cli_env, tmp_path):
    target = tmp_path / "no" / "such" / "dir" / "p.npz"
    proc = cli(TINY + ["--save", str(target)], cli_env)
    assert_user_error(proc, "--save")
    assert "epoch" not in proc.stdout and "test accuracy" not in proc.stdout
    assert not target.parent.exists()


# ------------------------------------------------------------------ --verify
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_verify_passes_single_process(cli_env, dtype):
    proc = cli(TINY + ["--dtype", dtype, "--verify"], cli_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"^verify passed: 5 of 5 steps checked in lockstep .* worst per-step relative "
                     r"error \S+ \((gradient|updated) (W1|b1|W2|b2), epoch 1 step \d+\)",
                     proc.stdout, re.M), proc.stdout


# ------------------------------------------------------------------ user errors
BAD_FLAGS = {
    "unknown backend": (["--backend", "nosuchbackend"], ["--backend", "nosuchbackend", "numpy"]),
    "hidden zero": (["-n", "0"], ["--hidden"]),
    "negative lr": (["-l", "-1"], ["--lr"]),
    "zero lr": (["-l", "0"], ["--lr"]),
    "batch zero": (["-b", "0"], ["--batch-size"]),
    "epochs not a number": (["--epochs", "x"], ["--epochs"]),
    "epochs zero": (["-e", "0"], ["--epochs"]),
    "negative reg": (["-r", "-0.1"], ["--reg"]),
    "dtype float16": (["--dtype", "float16"], ["--dtype", "float16"]),
    "unknown flag": (["--bogus-flag"], ["--bogus-flag"]),
    "train size too large": (["--train-size", "9901"], ["--train-size", "9901"]),
    "val size too large": (["--val-size", "10000"], ["--val-size", "10000"]),
    "unknown comm": (["--comm", "smoke-signals"], ["--comm", "smoke-signals"]),
}


@pytest.mark.parametrize("case", sorted(BAD_FLAGS))
def test_bad_flag_is_one_line(cli_env, case):
    args, names = BAD_FLAGS[case]
    base = ["--backend", "numpy", "--val-size", "100", "-e", "1", "-n", "16"]
    proc = cli(base + args, cli_env)  # later flags override the base ones
    assert_user_error(proc, *names)


def test_train_size_exactly_available_is_fine(cli_env):
    proc = cli(["--backend", "numpy", "--train-size", "9900", "--val-size", "100", "-e", "1",
                "-n", "8", "-b", "1000"], cli_env)
    assert proc.returncode == 0, proc.stderr


def test_data_dir_empty(cli_env, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    line = assert_user_error(cli(TINY + ["--data-dir", str(empty)], cli_env), "--data-dir",
                             str(empty))
    assert "train-images-idx3-ubyte.gz" in line


def test_data_dir_missing(cli_env, tmp_path):
    missing = tmp_path / "does-not-exist"
    assert_user_error(cli(TINY + ["--data-dir", str(missing)], cli_env), "--data-dir", str(missing))


@pytest.mark.parametrize("victim", ["train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"])
def test_data_dir_with_truncated_gz_names_the_file(cli_env, tmp_path, victim):
    directory = tmp_path / "mnist"
    shutil.copytree(data.BUNDLED_DIR, directory)
    path = directory / victim
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])  # an interrupted download
    line = assert_user_error(cli(TINY + ["--data-dir", str(directory)], cli_env), str(path))
    assert "truncated" in line


def test_data_dir_with_corrupt_idx_names_the_file(cli_env, tmp_path):
    directory = tmp_path / "mnist"
    shutil.copytree(data.BUNDLED_DIR, directory)
    path = directory / "train-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[0:4] = (1234).to_bytes(4, "big")  # wrong magic number
    path.write_bytes(gzip.compress(bytes(raw)))
    line = assert_user_error(cli(TINY + ["--data-dir", str(directory)], cli_env), str(path))
    assert "magic" in line


def test_bundled_copy_in_data_dir_works(cli_env, tmp_path):
    directory = tmp_path / "mnist"
    shutil.copytree(data.BUNDLED_DIR, directory)
    proc = cli(TINY + ["--data-dir", str(directory)], cli_env)
    assert proc.returncode == 0, proc.stderr
    assert "bundled subset" not in proc.stdout
    assert str(directory) in proc.stdout


# ------------------------------------------------------------------ accuracy on full MNIST
def test_defaults_reach_97_percent_on_full_mnist(cli_env, full_mnist_dir):
    """The default flags (H=256, lr=1, reg=1e-5, B=100, 10 epochs, float32) on 54k images.
    Takes about 15 s on 2 cores; allowed up to a few minutes on a loaded machine."""
    proc = cli(["--data-dir", str(full_mnist_dir), "--backend", "numpy"], cli_env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "54000 train / 6000 val" in proc.stdout
    m = re.search(r"^test accuracy (\S+)% \((\d+) images\)", proc.stdout, re.M)
    assert m, proc.stdout
    assert int(m.group(2)) == 10000
    assert float(m.group(1)) >= 97.0, proc.stdout
