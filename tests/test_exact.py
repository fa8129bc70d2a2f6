"""``--exact`` on the CPU (core/exact.py, core/exact_math.py, the NumPy backend's exact ops).

* exact_math's exp / log / sigmoid against NumPy's (a few ulp) and on special values, and its
  constants against backends/exact.cuh's (the same doubles);
* exact_split / exact_combine against Python's ``fractions`` (the digits are exact, the products
  of the digits are exact, the combine rounds as documented);
* an exact GEMM that equals itself bit for bit under a re-ordered product (reversed k, random
  split-K chunks summed in another order, the digit GEMM split over "ranks");
* the CLI: one SHA-256 for 1, 2, 3, 4 ranks under mpirun (uneven splits, a short last batch, a
  rank with zero samples), the hash line and metrics.jsonl, learning like float64, range errors
  (exit 3), ``--exact --dtype float32`` (exit 2), and checkpoint/resume bit-identical.

The GPU backends' bits are compared with these in tests/test_exact_gpu.py.
"""

from __future__ import annotations

import json
import re
from fractions import Fraction

import numpy as np
import pytest

from conftest import REPO, cli, run_mpi
from backends.ops_numpy import NumpyBackend
from core import exact_math
from core.exact import ExactMLP, ExactRangeError, Slicing, input_bound, params_sha256
from core.model import CLASSES, INPUTS, init_params


def ulps(actual, expected):
    """|actual - expected| in units of the last place of expected (float64)."""
    expected = np.asarray(expected, np.float64)
    spacing = np.spacing(np.abs(expected))
    return np.abs(np.asarray(actual, np.float64) - expected) / spacing


# ------------------------------------------------------------------ exact_math
def test_exp_is_within_a_few_ulp_of_numpy():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-745, 709, 200_000), rng.uniform(-1, 1, 100_000),
                        rng.uniform(-1e-8, 1e-8, 10_000), np.arange(-700, 700, 0.5)])
    got, want = exact_math.exp(x), np.exp(x)
    normal = want > 2.3e-308  # the subnormal results are checked absolutely below
    assert ulps(got[normal], want[normal]).max() <= 2
    assert np.abs(got[~normal] - want[~normal]).max() <= 2 * 5e-324


def test_log_is_within_a_few_ulp_of_numpy():
    rng = np.random.default_rng(1)
    x = np.concatenate([10.0 ** rng.uniform(-307, 308, 200_000), rng.uniform(0.5, 2, 100_000),
                        1 + rng.uniform(-1e-6, 1e-6, 10_000), [5e-324, 1e-310, 2.2e-308,
                                                               1.7e308, 1.0, 2.0, 0.5]])
    got, want = exact_math.log(x), np.log(x)
    assert ulps(got, want)[want != 0].max() <= 2
    assert got[x == 1.0].tolist() == [0.0] * int(np.sum(x == 1.0))


def test_special_values():
    inf, nan = np.inf, np.nan
    e = exact_math.exp(np.array([0.0, -0.0, inf, -inf, nan, 710.5, 1e300, -746.5, -1e300]))
    assert e[:4].tolist() == [1.0, 1.0, inf, 0.0] and np.isnan(e[4])
    assert e[5:].tolist() == [inf, inf, 0.0, 0.0]
    lg = exact_math.log(np.array([0.0, -0.0, inf, -1.0, -inf, nan, 1.0]))
    assert lg[:3].tolist() == [-inf, -inf, inf] and np.isnan(lg[3:6]).all() and lg[6] == 0.0
    s = exact_math.sigmoid(np.array([0.0, inf, -inf, 800.0, -800.0, 40.0]))
    assert s.tolist()[:5] == [0.5, 1.0, 0.0, 1.0, 0.0] and s[5] == 1.0
    assert np.isnan(exact_math.sigmoid(np.array([nan])))[0]


def test_sigmoid_is_within_a_few_ulp():
    x = np.random.default_rng(2).uniform(-40, 40, 100_000)
    # both round 1 + e and 1 / (1 + e): the reference is not exact either
    assert ulps(exact_math.sigmoid(x), 1.0 / (1.0 + np.exp(-x))).max() <= 4


def test_constants_match_exact_cuh():
    """exact.cuh writes the same doubles as exact_math.py (its #defines and coefficient arrays)."""
    text = (REPO / "backends" / "exact.cuh").read_text()

    def define(name):
        return float.fromhex(re.search(rf"#define EXACT_{name} (\S+)", text).group(1)) \
            if "0x" in re.search(rf"#define EXACT_{name} (\S+)", text).group(1) \
            else float(re.search(rf"#define EXACT_{name} (\S+)", text).group(1))

    for name in ("INV_LN2", "LN2_HI", "LN2_LO", "EXP_MAX", "EXP_MIN", "SQRT_HALF"):
        assert define(name) == getattr(exact_math, name), name

    def array(name):
        body = re.search(rf"EXACT_{name}\[\d+\] = \{{(.*?)\}};", text, re.S).group(1)
        return tuple(float.fromhex(v.strip()) for v in body.split(",") if v.strip())

    assert array("EXP_COEFFS") == exact_math.EXP_COEFFS
    assert array("LOG_COEFFS") == exact_math.LOG_COEFFS


# ------------------------------------------------------------------ split / combine
@pytest.fixture
def be():
    return NumpyBackend("float64")


def split(be, x, exps, shift, cut, reverse=False, ones_row=False, ones_col=False, trans=False):
    rows = x.T if trans else x
    p, q = rows.shape[0] + ones_row, rows.shape[1] + ones_col
    out = be.empty((p, cut.slices * q))
    flag = be.zeros((1,))
    be.exact_split(x, trans, ones_row, ones_col, exps, shift, cut.beta, cut.slices, reverse,
                   out, flag)
    return out, flag[0]


def test_split_digits_are_exact_against_fractions(be):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 40)) * np.exp2(rng.integers(-30, 30, (5, 1)))
    x[2, :5] = [0.0, -0.0, 5e-324, -1e-310, 0.0]
    exps = be.empty((5,))
    be.exact_row_exponents(x, False, exps)
    assert (np.abs(x).max(axis=1) < np.exp2(exps)).all()
    cut = Slicing.for_depth(40)
    digits, flag = split(be, x, exps, 0, cut)
    assert flag == 0
    s, q, beta = cut.slices, 40, cut.beta
    assert (digits == np.rint(digits)).all() and np.abs(digits).max() <= 2.0 ** beta
    for i in range(5):
        for k in range(q):
            value = sum(Fraction(digits[i, t * q + k]) * Fraction(2) ** -((t + 1) * beta)
                        for t in range(s)) * Fraction(2) ** int(exps[i])
            rest = abs(Fraction(x[i, k]) - value)
            assert rest <= Fraction(2) ** (int(exps[i]) - s * beta - 1)
            if s * beta >= 53 + 30:  # every bit of a float64 element above the grid's floor
                assert rest == 0 or abs(x[i, k]) < 2.0 ** (int(exps[i]) - s * beta + 53)


def test_split_flags_values_outside_the_grid(be):
    cut = Slicing.for_depth(4)
    zero = be.zeros((2,))
    assert split(be, np.array([[1.0, -1.0], [0.5, 0.25]]), zero, 0, cut)[1] == 0  # |x| <= 2^0
    assert split(be, np.array([[1.0, 1.0 + 2**-52], [0.5, 0.25]]), zero, 0, cut)[1] == 1
    assert split(be, np.array([[np.inf, 0.0], [0.5, 0.25]]), zero, 4, cut)[1] == 1
    assert split(be, np.array([[np.nan, 0.0], [0.5, 0.25]]), zero, 4, cut)[1] == 1
    # the ones row and column count: on a grid of 2^-1 they are outside
    assert split(be, np.array([[0.5]]), be.zeros((2,)), -1, cut, ones_row=True)[1] == 1


def exact_gemm(be, a, b, chunks=None, reverse_k=False):
    """op: C = A B^T (A m x k, B n x k) through exact_split / digit GEMMs / exact_combine, with
    the grid of each row of A and of B from exact_row_exponents. ``chunks``: k split into these
    pieces (split-K), each piece's digit GEMM computed alone and the pieces summed in reverse
    order; ``reverse_k``: the k axis of both operands reversed."""
    m, k = a.shape
    n = b.shape[0]
    cut = Slicing.for_depth(k)
    ea, eb = be.empty((m,)), be.empty((n,))
    be.exact_row_exponents(a, False, ea)
    be.exact_row_exponents(b, False, eb)
    if reverse_k:
        a, b = a[:, ::-1].copy(order="F"), b[:, ::-1].copy(order="F")
    da, _ = split(be, a, ea, 0, cut)
    db, _ = split(be, b, eb, 0, cut, reverse=True)
    s = cut.slices
    groups = np.zeros((m, s * n), order="F")
    for g in range(s):
        pieces = [(lo, hi) for lo, hi in (chunks or [(0, k)])]
        total = None
        for lo, hi in reversed(pieces):  # each piece: slice pairs (t, g - t) over k in [lo, hi)
            part = sum(da[:, t * k + lo:t * k + hi] @ db[:, (s - 1 - g + t) * k + lo:
                                                            (s - 1 - g + t) * k + hi].T
                       for t in range(g + 1)[::-1])
            total = part if total is None else total + part
        groups[:, g * n:(g + 1) * n] = total
    out = be.empty((m, n))
    be.exact_combine(groups, ea, 0, eb, 0, cut.beta, out)
    return out, groups


def test_exact_gemm_is_independent_of_the_order_of_its_sums(be):
    rng = np.random.default_rng(4)
    m, n, k = 7, 9, 785
    a = np.asfortranarray(rng.standard_normal((m, k)) * np.exp2(rng.integers(-8, 8, (m, 1))))
    b = np.asfortranarray(rng.uniform(0, 1, (n, k)))
    b[:, -1] = 1.0  # the bias's ones column
    plain, groups = exact_gemm(be, a, b)
    cuts = np.sort(rng.choice(np.arange(1, k), 6, replace=False))
    chunks = list(zip([0, *cuts], [*cuts, k]))
    rng.shuffle(chunks)
    for other in (exact_gemm(be, a, b, reverse_k=True),
                  exact_gemm(be, a, b, chunks=chunks),
                  exact_gemm(be, a, b, chunks=[(i, i + 1) for i in range(k)][::-1])):
        assert other[0].tobytes() == plain.tobytes()
        assert other[1].tobytes() == groups.tobytes()
    # the groups are exact integer sums: those of Python's exact arithmetic
    cut = Slicing.for_depth(k)
    assert np.abs(groups).max() <= 2.0 ** 53 and (groups == np.rint(groups)).all()
    # and the result is as accurate as float64 (against Fractions, a few elements)
    for i, j in ((0, 0), (3, 5), (6, 8)):
        exact = sum(Fraction(a[i, t]) * Fraction(b[j, t]) for t in range(k))
        scale = float(np.abs(a[i]).max() * np.abs(b[j]).max())
        dropped = 4 * k * scale * 2.0 ** -(cut.slices * cut.beta)  # the digits left out
        assert abs(float(Fraction(plain[i, j]) - exact)) <= dropped + abs(float(exact)) * 2.0 ** -51


def test_combine_rounds_in_the_documented_order(be):
    rng = np.random.default_rng(5)
    groups = np.asfortranarray(rng.integers(-2**52, 2**52, (3, 3 * 4)).astype(np.float64))
    out = be.empty((3, 4))
    row, col = np.array([2.0, -1.0, 0.0]), np.array([0.0, 1.0, 3.0, -2.0])
    be.exact_combine(groups, row, 1, col, -1, 20, out)
    for i in range(3):
        for j in range(4):
            acc = groups[i, 8 + j]
            acc = groups[i, 4 + j] + acc * 2.0 ** -20
            acc = groups[i, j] + acc * 2.0 ** -20
            assert out[i, j] == np.ldexp(acc, int(row[i] + 1 + col[j] - 1 - 40))


def test_slicing_keeps_every_group_sum_below_2_pow_53():
    for k in (1, 10, 33, 257, 785, 1025, 4097, 60000):
        cut = Slicing.for_depth(k)
        assert k * cut.slices * 2.0 ** (2 * cut.beta) <= 2.0 ** 53
        assert cut.slices * cut.beta >= 53


def test_input_bound_is_the_scale_not_the_subset():
    assert input_bound(np.array([[0.0, 0.5]])) == 1.0
    assert input_bound(np.array([[0.0, 1.0]]), None) == 1.0
    assert input_bound(np.array([[3.0, 200.0]])) == 255.0
    assert input_bound(np.zeros((784, 0))) == 1.0


# ------------------------------------------------------------------ the model, in process
def test_exact_mlp_forward_rejects_a_broken_grid():
    be = NumpyBackend("float64")
    model = ExactMLP(be, 8, 5, init_params(8, 0), 5, 1.0)
    x = np.asfortranarray(np.random.default_rng(6).uniform(0, 1, (INPUTS, 5)))
    model.forward(x)
    assert not model.out_of_range()
    x[3, 2] = 2.5  # beyond the unit scale's grid of 2
    model.forward(x)
    assert model.out_of_range()


def test_exact_mlp_needs_float64():
    with pytest.raises(Exception, match="float64"):
        ExactMLP(NumpyBackend("float32"), 8, 5, init_params(8, 0), 5, 1.0)


# ------------------------------------------------------------------ the command line
def sha_of(out: str) -> str:
    found = re.findall(r"^params sha256 ([0-9a-f]{64})$", out, re.M)
    assert len(found) == 1, out
    return found[0]


def small(epochs=2, batch=10, hidden=12, train=93):
    return ["--exact", "--backend", "numpy", "--train-size", str(train), "--val-size", "50",
            "-e", str(epochs), "-b", str(batch), "-n", str(hidden), "-r", "0.05", "--quiet"]


#: 93 samples in batches of 10: 10 steps, the last of 3 samples (1/1/1/0 on 4 ranks, one rank
#: without samples); 10 on 3 ranks is 4/3/3, on 4 ranks 3/3/2/2; a large reg (counted once)
SMALL = small()


@pytest.mark.mpi
def test_one_hash_for_1_2_3_4_ranks(cli_env, tmp_path):
    one = cli([*SMALL, "--save", str(tmp_path / "p1.npz")], cli_env)
    assert one.returncode == 0, one.stderr
    want = sha_of(one.stdout)
    saved = np.load(tmp_path / "p1.npz")
    flat = np.concatenate([saved[k].reshape(-1, order="F") for k in ("W1", "b1", "W2", "b2")])
    assert params_sha256(flat) == want  # the hash is of the saved parameters
    for ranks in (1, 2, 3, 4):
        loud = [a for a in SMALL if a != "--quiet"]  # (--quiet hides the rank count)
        code, out, err, _ = run_mpi(ranks, ["-m", "core.train", *loud], timeout=180, env=cli_env)
        assert code == 0, out + err
        assert f"{ranks} rank(s)" in out
        assert sha_of(out) == want, f"{ranks} ranks"


@pytest.mark.mpi
def test_one_hash_with_fewer_samples_than_ranks(cli_env):
    """B = 2 on 3 ranks: one rank never has a sample."""
    args = small(epochs=1, batch=2, hidden=8, train=21)
    one = cli(args, cli_env)
    assert one.returncode == 0, one.stderr
    code, out, err, _ = run_mpi(3, ["-m", "core.train", *args], timeout=180, env=cli_env)
    assert code == 0, out + err
    assert sha_of(out) == sha_of(one.stdout)


def test_hash_line_and_metrics(cli_env, tmp_path):
    run = tmp_path / "run"
    proc = cli([*SMALL, "--run-dir", str(run)], cli_env)
    assert proc.returncode == 0, proc.stderr
    assert "dpmlp: backend" not in proc.stdout  # --quiet: the hash and the summary only
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(len(r["params_sha256"]) == 64 for r in records)
    assert records[-1]["params_sha256"] == sha_of(proc.stdout)
    assert records[0]["params_sha256"] != records[1]["params_sha256"]
    assert json.loads((run / "config.json").read_text())["flags"]["exact"] is True


def test_resume_is_bit_identical(cli_env, tmp_path):
    whole = cli([*SMALL, "--run-dir", str(tmp_path / "whole")], cli_env)
    assert whole.returncode == 0, whole.stderr
    half = cli([*small(epochs=1), "--run-dir", str(tmp_path / "half")], cli_env)
    assert half.returncode == 0, half.stderr
    rest = cli([*SMALL, "--resume", str(tmp_path / "half")], cli_env)
    assert rest.returncode == 0, rest.stderr
    assert sha_of(rest.stdout) == sha_of(whole.stdout)
    assert "note:" not in rest.stdout + rest.stderr


def test_exact_learns_like_float64(cli_env):
    common = ["--backend", "numpy", "--train-size", "2000", "--val-size", "500", "-e", "2",
              "-b", "50", "-n", "32", "--quiet"]
    exact = cli(["--exact", *common], cli_env)
    plain = cli(["--dtype", "float64", *common], cli_env)
    assert exact.returncode == 0 and plain.returncode == 0, exact.stderr + plain.stderr
    acc = [float(re.search(r"test acc(?:uracy)? ([\d.]+)%", p.stdout).group(1)) for p in (exact, plain)]
    assert acc[0] > 70.0 and abs(acc[0] - acc[1]) <= 0.5, acc


def test_exact_with_float32_is_a_user_error(cli_env):
    proc = cli(["--exact", "--dtype", "float32", "--train-size", "100"], cli_env)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "--exact" in lines[0] and "float32" in lines[0] and "Traceback" not in proc.stderr


def test_inf_parameters_end_with_exit_3(cli_env):
    proc = cli([*SMALL, "-l", "1e308"], cli_env)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert len(lines) == 1 and lines[0].startswith("dpmlp: error:"), proc.stderr


def test_a_value_off_its_grid_ends_with_exit_3(monkeypatch, capsys, tmp_path):
    """A grid too small for the inputs (as a broken bound would be): raw pixels on the unit
    scale's grid. One line, exit 3."""
    from core import data_parallel, train

    monkeypatch.setattr(data_parallel, "input_bound", lambda *arrays: 1.0)
    monkeypatch.setenv("DPMLP_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("DPMLP_DATA_DIR", raising=False)
    code = train.main([*SMALL, "--scale", "raw", "-l", "0.01"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 3 and len(lines) == 1, err
    assert "--exact" in lines[0] and "grid" in lines[0]
    assert ExactRangeError.exit_code == 3


def test_model_shapes_match_layout():
    be = NumpyBackend("float64")
    m = ExactMLP(be, 4, 3, init_params(4, 0), 3, 1.0)
    assert m.G_W1b1.shape == (4, m.grad_cut.slices * (INPUTS + 1))
    assert m.G_W2b2.shape == (CLASSES, m.grad_cut.slices * 5)
    assert int(m.exchange_buffer.shape[0]) == m.grad_cut.slices * m.size


def test_split_scaling_is_ldexp_bit_for_bit(be):
    """The reference scales by a power of two where it is a normal number (one multiply) and by
    ldexp elsewhere: the digits are those of the contract's ldexp either way, subnormals too."""
    rng = np.random.default_rng(8)
    x = np.asfortranarray(rng.standard_normal((4, 30)) * np.exp2(rng.integers(-1070, -1000,
                                                                              (4, 30))))
    cut = Slicing.for_depth(30)
    for exps in (np.array([-20.0, 0.0, 5.0, 1000.0]), np.array([-1060.0, -1030.0, 0.0, 3.0])):
        got, _ = split(be, x, exps, 0, cut, ones_col=True)
        with np.errstate(all="ignore"):  # the ones column is far off a grid of 2^-1060: inf
            want = _ldexp_digits(x, exps, cut)
        assert got.tobytes() == want.tobytes()


def _ldexp_digits(x, exps, cut):
    """The contract's digits, written directly with ldexp."""
    r = np.ldexp(np.concatenate([x, np.ones((4, 1))], axis=1), -exps.astype(np.int64)[:, None])
    want = np.empty((4, cut.slices * 31))
    for s in range(cut.slices):
        r = r * 2.0 ** cut.beta
        d = np.rint(r)
        want[:, s * 31:(s + 1) * 31] = d
        r = r - d
    return np.asfortranarray(want)


def test_exact_cuh_holds_the_output_layers_classes():
    text = (REPO / "backends" / "exact.cuh").read_text()
    from backends import op_table

    found = re.search(r"#define EXACT_MAX_CLASSES (\d+)", text)
    assert found and int(found.group(1)) == op_table.OUTPUT_MAX_CLASSES


@pytest.mark.mpi
def test_resume_at_another_rank_count_is_bit_identical(cli_env, tmp_path):
    """One epoch on one process, the second on 3 ranks: the hash of two epochs on one process."""
    whole = cli(SMALL, cli_env)
    assert whole.returncode == 0, whole.stderr
    half = cli([*small(epochs=1), "--run-dir", str(tmp_path / "half")], cli_env)
    assert half.returncode == 0, half.stderr
    code, out, err, _ = run_mpi(3, ["-m", "core.train", *SMALL, "--resume",
                                    str(tmp_path / "half")], timeout=180, env=cli_env)
    assert code == 0, out + err
    assert sha_of(out) == sha_of(whole.stdout)
    assert "note:" not in out + err


def test_a_backend_without_the_exact_ops_is_named():
    from core.errors import UserError
    from core.ops import Backend

    class NoExact(NumpyBackend):
        name = "noexact"
        exact_split = Backend.exact_split

    with pytest.raises(UserError, match="noexact.*exact_split"):
        ExactMLP(NoExact("float64"), 8, 5, init_params(8, 0), 5, 1.0)


def _scalbn(a: float, e: int) -> float:
    """exact.cuh's x_ldexp (musl's scalbn), operation for operation, in Python's IEEE doubles."""
    def pow2(n):
        return float(np.frombuffer(np.int64((0x3FF + n) << 52).tobytes(), np.float64)[0])

    if e > 1023:
        a, e = a * pow2(1023), e - 1023
        if e > 1023:
            a, e = a * pow2(1023), min(e - 1023, 1023)
    elif e < -1022:
        a, e = a * pow2(-1022 + 53), e + 1022 - 53
        if e < -1022:
            a, e = a * pow2(-1022 + 53), max(e + 1022 - 53, -1022)
    return a * pow2(e)


def test_the_cuda_ldexp_is_numpys():
    """x_ldexp of exact.cuh (written out so as not to depend on the device library) gives
    np.ldexp's bits: normal, subnormal, overflowing and underflowing results, ties included."""
    rng = np.random.default_rng(9)
    a = np.concatenate([rng.standard_normal(4000) * np.exp2(rng.integers(-60, 60, 4000)),
                        rng.integers(1, 2**53, 1000) * 1.0, [1.5, -1.5, 3.0, 2.0**53 - 1, 0.0]])
    e = np.concatenate([rng.integers(-1200, 1100, a.size - 5), [-1075, -1075, -1074, -1100, 5]])
    with np.errstate(all="ignore"):
        want = np.ldexp(a, e)
        got = np.array([_scalbn(float(x), int(k)) for x, k in zip(a, e)])
    assert got.tobytes() == want.tobytes()
    assert (want[(e < -1030)] != 0).any() and np.isinf(want).any()  # the ranges were reached
