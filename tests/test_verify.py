"""--verify: lockstep checking against the independent float64 reference.

* core/reference.py against docs/spec.md: its schedule, split and initialisation, and the trainer's
  (hand-made mutations: the last smaller minibatch dropped, validation taken from the start of
  the file, W2 drawn before W1);
* the comparison itself (relative, max, scale-free), on numbers and through the CLI with backends
  that are deliberately off (tests/wrong_backends.py, a plugin on PYTHONPATH): each is caught at
  the first step, naming the parameter, with exit code 4;
* the course's three grading configurations pass lockstep --verify in float64 under mpirun -n 1..3
  (short: 2000 images, 2 epochs), and grading mode 2 in full (mpirun -n 2, 10 epochs) when full
  MNIST is here.
"""

from __future__ import annotations

import math
import os
import re
import time
from types import SimpleNamespace

import numpy as np
import pytest

from comm.single import SingleCommunicator
from conftest import REPO, TESTS, cli
from core import data, reference, verify
from core.data_parallel import DataParallelTrainer, TrainConfig, scale_images
from core.hookspecs import ENTRY_POINT_GROUP
from core.model import init_params
from core.preflight import split_data

# N = 500 is not a multiple of B = 67: 8 steps an epoch, the last one of 31 samples
TINY = ["--backend", "numpy", "--train-size", "500", "--val-size", "100", "-e", "2", "-n", "16",
        "-b", "67", "--reg", "0.1"]


# ------------------------------------------------------------------ environment for the CLI
@pytest.fixture
def wrong_backends_env(cli_env, tmp_path):
    """cli_env with the wrong backends installed as a plugin."""
    site = tmp_path / "site"
    site.mkdir()
    info = site / "dpmlp_wrong_backends-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: dpmlp-wrong-backends\n"
                                   "Version: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nwrong = wrong_backends\n")
    (info / "RECORD").write_text("")
    environment = dict(cli_env, PYTHONPATH=os.pathsep.join([str(REPO), str(TESTS), str(site)]))
    environment.pop("DPMLP_TEST_OFF", None)
    return environment


def summary(proc) -> str:
    lines = [line for line in proc.stdout.splitlines() if line.startswith("verify passed")
             or line.startswith("verify FAILED")]
    assert len(lines) == 1, proc.stdout + proc.stderr
    return lines[0]


def assert_passed(proc) -> float:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = summary(proc)
    assert line.startswith("verify passed"), line
    m = re.search(r"worst per-step relative error (\S+) \((gradient|updated) (W1|b1|W2|b2), "
                  r"epoch \d+ step \d+\), tolerance (\S+)", line)
    assert m, line
    assert float(m.group(1)) <= float(m.group(4))
    return float(m.group(1))


def assert_failed(proc, *must_name) -> str:
    assert proc.returncode == verify.VERIFY_FAILED_EXIT, \
        f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    line = summary(proc)
    assert line.startswith("verify FAILED"), line
    for name in must_name:
        assert name in line, f"{name!r} not in {line!r}"
    assert "test accuracy" not in proc.stdout, "went on after the failure"
    errors = [l for l in proc.stderr.splitlines() if l.startswith("dpmlp: error: verify FAILED")]
    assert errors == [f"dpmlp: error: {line.splitlines()[0]}"], proc.stderr  # one line on stderr
    assert "Traceback" not in proc.stderr
    return line


# ------------------------------------------------------------------ the reference vs docs/spec.md
def test_reference_schedule_is_ceil_batches_last_smaller():
    assert reference.schedule(500, 67) == [(67 * i, 67) for i in range(7)] + [(469, 31)]
    assert reference.schedule(800, 800) == [(0, 800)]
    assert reference.schedule(3, 800) == [(0, 3)]
    assert len(reference.schedule(54000, 800)) == 68


def test_trainer_steps_follow_the_reference_schedule():
    """Mutation (a): a trainer that drops the last, smaller minibatch fails here."""
    images, labels = data.load_split(data.BUNDLED_DIR, "train")
    x = scale_images(images[:500], "unit", np.float64)
    cfg = TrainConfig(hidden=8, reg=0.0, lr=0.1, epochs=2, batch_size=67, seed=0, dtype="float64")
    from backends.ops_numpy import NumpyBackend
    trainer = DataParallelTrainer(NumpyBackend("float64"), SingleCommunicator(), cfg, x,
                                  labels[:500])
    seen = []
    trainer.train(observe=lambda info: seen.append((info.epoch, info.index, info.step,
                                                    info.start, info.batch)))
    plan = reference.schedule(500, 67)
    assert seen == [(e, i, (e - 1) * len(plan) + i, s, b)
                    for e in (1, 2) for i, (s, b) in enumerate(plan)]


def test_model_initialisation_is_the_references():
    """Mutation (c): W2 drawn before W1 (or any other draw) fails here."""
    for hidden, seed in ((16, 0), (100, 7)):
        ours, ref = init_params(hidden, seed), reference.init_params(hidden, seed)
        for name in reference.NAMES:
            np.testing.assert_array_equal(ours[name], ref[name])


def test_split_holds_out_validation_from_the_end():
    """Mutation (b): validation images taken from the start of the training file fail here."""
    total = 50
    images = np.arange(total, dtype=np.uint8)[:, None].repeat(784, axis=1)
    fake = SimpleNamespace(train_images=images, train_labels=np.arange(total) % 10,
                           source="test")
    for train_size, val_size in ((None, None), (20, 10), (None, 0), (5, 45)):
        args = SimpleNamespace(train_size=train_size, val_size=val_size)
        tx, ty, vx, vy = split_data(fake, args)
        train_rows, val_rows = reference.split(total, train_size, val_size)
        np.testing.assert_array_equal(tx, images[train_rows.start:train_rows.stop])
        np.testing.assert_array_equal(vx, images[val_rows.start:val_rows.stop])
        np.testing.assert_array_equal(vy, fake.train_labels[val_rows.start:val_rows.stop])
        assert val_rows.stop == total  # the END of the file
        if val_size:
            assert vx[-1, 0] == total - 1 and vx[0, 0] == total - val_size


def test_reference_gradient_matches_finite_differences():
    """The reference's own backward pass is the derivative of its own loss."""
    rng = np.random.default_rng(3)
    p = reference.init_params(5, 1)
    p["W1"] *= 30
    p["b1"] = rng.standard_normal(5)
    p["W2"] = rng.standard_normal((10, 5))
    p["b2"] = rng.standard_normal(10)
    x, y, reg = rng.random((784, 7)), rng.integers(0, 10, 7), 0.3

    def loss(q):
        _, yhat = reference.forward(q, x)
        return (-np.log(yhat[y, np.arange(7)]).mean()
                + 0.5 * reg * (np.sum(q["W1"] ** 2) + np.sum(q["W2"] ** 2)))

    g = reference.gradients(p, x, y, reg)
    for name, idx in (("W1", (2, 300)), ("b1", (4,)), ("W2", (3, 1)), ("b2", (9,))):
        h = 1e-6
        up = {k: v.copy() for k, v in p.items()}
        down = {k: v.copy() for k, v in p.items()}
        up[name][idx] += h
        down[name][idx] -= h
        assert abs((loss(up) - loss(down)) / (2 * h) - g[name][idx]) < 1e-7, name


# ------------------------------------------------------------------ the comparison
def test_relative_max_error_is_relative_and_takes_the_max():
    """Mutation (d) on numbers: an absolute error, or a min instead of a max, fails here."""
    rng = np.random.default_rng(0)
    s = rng.standard_normal((30, 40))
    p = s.copy()
    p[7, 11] = s[7, 11] + 1e-3 * np.max(np.abs(s))  # ONE element off
    assert verify.relative_max_error(s, p) == pytest.approx(1e-3, rel=1e-9)  # max, not min
    for scale in (1e-9, 1e9):  # scale-free: an absolute error would change by 1e18 here
        assert verify.relative_max_error(scale * s, scale * p) == pytest.approx(1e-3, rel=1e-6)
    assert verify.relative_max_error(s, s) == 0.0
    assert verify.relative_max_error(s, np.where(s > 1, np.nan, s)) == math.inf
    assert verify.relative_max_error(s, s[:, :-1]) == math.inf
    assert verify.worst_element(s, p) == ((7, 11), s[7, 11], p[7, 11])


def test_step_tolerance_from_the_rounding_bound():
    u64, u32 = 2.0 ** -53, 2.0 ** -24
    t64, t32 = (verify.step_tolerance(d, 100, 800) for d in ("float64", "float32"))
    assert t64 == pytest.approx(10 * math.sqrt(784 + 100 + 10 + 800) * u64)
    assert t64 <= 1e-13 and t32 / t64 == pytest.approx(u32 / u64)
    assert 1e-5 <= t32 <= 3e-5


# ------------------------------------------------------------------ the CLI, one process
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_lockstep_passes_and_checks_every_step(wrong_backends_env, dtype):
    proc = cli(TINY + ["--dtype", dtype, "--verify"], wrong_backends_env)
    worst = assert_passed(proc)
    assert "16 of 16 steps checked" in summary(proc)
    assert worst <= {"float64": 1e-14, "float32": 5e-6}[dtype]
    assert "test accuracy" in proc.stdout


def test_verify_every_thins_the_check(wrong_backends_env):
    proc = cli(TINY + ["--dtype", "float64", "--verify", "--verify-every", "3"], wrong_backends_env)
    assert_passed(proc)
    assert "6 of 16 steps checked" in summary(proc)  # steps 0, 3, 6, 9, 12, 15


@pytest.mark.parametrize("dtype,off", [("float64", "1e-9"), ("float32", "1e-3")])
def test_wrong_sigmoid_backward_caught_at_first_step(wrong_backends_env, dtype, off):
    wrong_backends_env["DPMLP_TEST_OFF"] = off
    proc = cli(TINY + ["--backend", "wrong-sigmoid-backward", "--dtype", dtype, "--verify"], wrong_backends_env)
    line = assert_failed(proc, "epoch 1 step 1", "gradient of W1", "worst element dW1[")
    assert re.search(r"backend \S+, reference \S+$", line), line
    # the detail block names every quantity; the output layer is right
    assert re.search(r"^verify:\s+gradient W2 .* ok ", proc.stdout, re.M), proc.stdout
    assert re.search(r"^verify:\s+gradient W1 .* FAILED ", proc.stdout, re.M), proc.stdout


def test_gemm_dropping_last_k_caught_at_first_step(wrong_backends_env):
    proc = cli(TINY + ["--backend", "wrong-gemm-drops-last-k", "--dtype", "float64", "--verify"],
               wrong_backends_env)
    assert_failed(proc, "epoch 1 step 1", "gradient of W2")


@pytest.mark.parametrize("dtype, off", [("float64", "1e-9"), ("float32", "1e-3")])
def test_an_sgd_step_with_another_learning_rate_is_caught_in_the_updated_parameters(wrong_backends_env, dtype,
                                                                                   off):
    """The gradients are right; only the update is off. A lockstep check that compared the
    gradients alone would pass it (issue 21: a mutant that survived the suite)."""
    wrong_backends_env = dict(wrong_backends_env, DPMLP_TEST_OFF=off)
    proc = cli(TINY + ["--backend", "wrong-sgd-learning-rate", "--dtype", dtype, "--verify"], wrong_backends_env)
    line = assert_failed(proc, "epoch 1 step 1", "updated ")
    assert "gradient of" not in line
    assert re.search(r"updated (W1|b1|W2|b2) relative max-norm error", line), line


def test_one_gradient_element_off_is_caught(wrong_backends_env):
    """Mutation (d) end to end: ONE element off by 1000x the tolerance. A min over elements sees
    0; relative to its parameter's max-norm the error is exactly the 1e-10 put there."""
    wrong_backends_env["DPMLP_TEST_OFF"] = "1e-10"
    proc = cli(TINY + ["--backend", "nudged-gradient", "--dtype", "float64", "--verify"], wrong_backends_env)
    line = assert_failed(proc, "epoch 1 step 1", "gradient of")
    err = float(re.search(r"relative max-norm error (\S+)", line).group(1))
    assert err == pytest.approx(1e-10, rel=1e-3)


def test_error_above_tolerance_on_small_values_is_caught(wrong_backends_env):
    """Mutation (d), absolute instead of relative: the gradient's largest element is below 0.2
    here, so an error of 5 tolerances RELATIVE is under one tolerance ABSOLUTE; only a relative
    comparison catches it."""
    tol = verify.step_tolerance("float64", 16, 67)
    wrong_backends_env["DPMLP_TEST_OFF"] = repr(5 * tol)
    proc = cli(TINY + ["--backend", "nudged-gradient", "--dtype", "float64", "--verify"], wrong_backends_env)
    line = assert_failed(proc, "epoch 1 step 1", "gradient of")
    m = re.search(r"relative max-norm error (\S+) > .* backend (\S+), reference (\S+)$", line)
    assert m, line
    err, got, ref = map(float, m.groups())
    assert err == pytest.approx(5 * tol, rel=1e-3)
    assert abs(got - ref) < tol  # the premise: absolutely, it is within the tolerance


def test_error_within_tolerance_passes_and_is_reported(wrong_backends_env):
    """A deviation of a tenth of the tolerance is what rounding may do: it passes, and the
    success line reports it as the worst error."""
    tol = verify.step_tolerance("float64", 16, 67)
    wrong_backends_env["DPMLP_TEST_OFF"] = repr(tol / 10)
    proc = cli(TINY + ["--backend", "nudged-gradient", "--dtype", "float64", "--verify"],
               wrong_backends_env)
    assert assert_passed(proc) == pytest.approx(tol / 10, rel=0.05)


def test_final_is_information_for_long_runs_and_a_check_for_one_step(wrong_backends_env):
    proc = cli(TINY + ["--dtype", "float64", "--verify=final"], wrong_backends_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "verify final (information, not pass/fail)" in proc.stdout
    growth = re.search(r"^verify final: worst error after each epoch: 1: \S+, 2: \S+$",
                       proc.stdout, re.M)
    assert growth, proc.stdout
    one = cli(["--backend", "wrong-gemm-drops-last-k", "--train-size", "67", "--val-size", "10",
               "-e", "1", "-n", "16", "-b", "100", "--dtype", "float64", "--verify=final"],
              wrong_backends_env)
    assert one.returncode == verify.VERIFY_FAILED_EXIT, one.stdout + one.stderr
    assert "verify final FAILED: one step" in one.stdout


def test_bad_verify_choice_is_a_user_error(wrong_backends_env):
    proc = cli(TINY + ["--verify=sometimes"], wrong_backends_env)
    assert proc.returncode == 2 and "--verify" in proc.stderr


# ------------------------------------------------------------------ grading configs under mpirun
#: docs/spec.md, "Grading modes": mode -> lr (H=100, B=800, reg=1e-4, raw pixels)
GRADING = {1: "0.001", 2: "0.01", 3: "0.025"}


def grading_args(mode: int, epochs: str = "2") -> list[str]:
    return ["--backend", "numpy", "--dtype", "float64", "--scale", "raw", "-n", "100", "-b", "800",
            "-r", "1e-4", "-l", GRADING[mode], "-e", epochs]


@pytest.mark.mpi
@pytest.mark.parametrize("ranks", [1, 2, 3])
@pytest.mark.parametrize("mode", sorted(GRADING))
def test_grading_configs_pass_lockstep_under_mpirun(wrong_backends_env, mode, ranks):
    """Short form: 2000 images (steps of 800, 800, 400: 800 = 267/267/266 on 3 ranks), 2 epochs."""
    proc = cli(grading_args(mode) + ["--train-size", "2000", "--val-size", "1000", "--verify"],
               wrong_backends_env, ranks=ranks)
    assert f"{ranks} rank(s)" in proc.stdout
    assert_passed(proc)
    assert "6 of 6 steps checked" in summary(proc)


@pytest.mark.mpi
def test_wrong_backend_caught_under_mpirun(wrong_backends_env):
    """Rank 0 finds it; every rank stops at the same step and the job exits 4."""
    proc = cli(TINY + ["--backend", "wrong-gemm-drops-last-k", "--dtype", "float64", "--verify"],
               wrong_backends_env, ranks=3)
    assert_failed(proc, "epoch 1 step 1", "gradient of W2")


@pytest.mark.mpi
def test_grading_mode_2_passes_lockstep_on_full_mnist(wrong_backends_env, full_mnist_dir):
    """Grading mode 2, 10 epochs, mpirun -n 2 (about 45 s on 2 cores): all 680 steps."""
    began = time.monotonic()
    proc = cli(grading_args(2, "10") + ["--verify", "--data-dir", str(full_mnist_dir)],
               wrong_backends_env, ranks=2, timeout=300)
    worst = assert_passed(proc)
    assert "680 of 680 steps checked" in summary(proc)
    assert worst <= 1e-13
    print(f"{summary(proc)} ({time.monotonic() - began:.0f} s)")
