"""The float64 GEMM on the FP64 tensor cores (backends/gemm_tc64.cuh, the tc64 tile of
backends/gemm_plan.py).

Without a GPU: which tile the planner gives for which dtype, shape and compute capability (tc64
only for float64 on sm_80+, the SIMT plans of before everywhere else), what the CUDA dispatch
launches on a recording backend, the header's constants against the planner's tile, and (with nvcc)
that the sm_80 and sm_90 builds use mma.sync .f64 without spilling while the float and default-arch
builds have none.

On a GPU (skipped elsewhere): every tc64 kernel against the NumPy reference with the float64 GEMM
tolerance (every transpose pair, odd sizes, K = 0, beta != 0, C never read when beta = 0, the fused
variants, split-K), reruns and cupy vs pycuda bit for bit, the planner's own picks at the model's
shapes, and a CUDA-graph replay of the split kernels. tests/test_kernel_parity.py also forces the
tc64 tile in its every-tile tests (GEMM_TILES includes it).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from backends import cuda_compile, gemm_plan, op_table
from backends.ops_numpy import NumpyBackend
from core.model import CLASSES, INPUTS, ParamLayout
from gpu_helpers import (GPU_BACKENDS, SPLIT_PRODUCTS, SPLIT_SIZES, RecordingBackend,
                         assert_close, check_graph_replays, fused_case, make_backend,
                         nvcc_or_skip, products_at, rand, reference_split, run_fused, run_split,
                         split_case)

H100_SMS = 132
H100 = (9, 0)
HIDDENS = (256, 1024, 4096)
BATCHES = (800, 3200)
V = gemm_plan.GEMM_VARIANTS


# ------------------------------------------------------------------------------- planning
def test_eligibility():
    assert gemm_plan.tc64_eligible("float64", (9, 0))
    assert gemm_plan.tc64_eligible("float64", (8, 0))
    assert gemm_plan.tc64_eligible("float64", (10, 0))
    assert not gemm_plan.tc64_eligible("float64", (7, 5))
    assert not gemm_plan.tc64_eligible("float64", (0, 0))
    assert not gemm_plan.tc64_eligible("float32", (9, 0))


def _model_plans(hidden, n, tc64, sms=H100_SMS):
    """name -> plan of the model's products at (hidden, n), as core/model.py calls them: z1 with
    bias and sigmoid, [dW1 db1] and [dW2 db2] with the ones column, da1 with the sigmoid backward,
    and the plain GEMM of every product."""
    plans = {
        "z1": gemm_plan.plan_gemm((hidden, INPUTS), (INPUTS, n), (hidden, n), False, False, sms,
                                  variant=V["gemm_bias_sigmoid"], tc64=tc64),
        "dW1": gemm_plan.plan_gemm((hidden, n), (INPUTS, n), (hidden, INPUTS + 1), False, True,
                                   sms, variant=V["gemm_with_bias_grad"], tc64=tc64),
        "dW2": gemm_plan.plan_gemm((CLASSES, n), (hidden, n), (CLASSES, hidden + 1), False, True,
                                   sms, variant=V["gemm_with_bias_grad"], tc64=tc64),
        "da1": gemm_plan.plan_gemm((CLASSES, hidden), (CLASSES, n), (hidden, n), True, False, sms,
                                   variant=V["gemm_sigmoid_backward"], tc64=tc64),
    }
    for g in ParamLayout(hidden).gemm_shapes(n):
        a = (g.k, g.m) if g.trans_a else (g.m, g.k)
        b = (g.n, g.k) if g.trans_b else (g.k, g.n)
        plans["gemm " + g.name] = gemm_plan.plan_gemm(a, b, (g.m, g.n), g.trans_a, g.trans_b, sms,
                                                      tc64=tc64)
    return plans


@pytest.mark.parametrize("hidden", HIDDENS)
@pytest.mark.parametrize("n", BATCHES)
def test_picks_at_the_model_shapes(hidden, n):
    """float64 on an H100: z1 and [dW1 db1] (and the plain deep products) on the tensor cores:
    tc128 where its 128 x 64 tiles give every SM two blocks, else tc64, split where its tiles leave
    SMs idle; the 10-row products (s16) and da1 (K = 10, all epilogue) on the SIMT kernels of
    before."""
    plans = _model_plans(hidden, n, tc64=True)
    z1, dw1 = plans["z1"], plans["dW1"]
    for plan, name in ((z1, "nn_bias_sigmoid"), (dw1, "nt_bias_grad")):
        big = gemm_plan.gemm_grid("tc128", plan.m, plan.n)
        tile = "tc128" if big[0] * big[1] >= 2 * H100_SMS else "tc64"
        assert plan.kernel.removesuffix("_split") == f"gemm_{tile}_{name}"
        assert plan.block == (gemm_plan.GEMM_TILES[tile].threads, 1, 1)
        assert plan.grid[:2] == gemm_plan.gemm_grid(tile, plan.m, plan.n)[:2]
        tiles = plan.grid[0] * plan.grid[1]
        assert plan.split == gemm_plan.pick_gemm_split(tile, plan.m, plan.n, plan.k, H100_SMS)
        if tiles < H100_SMS:  # (tiles that leave SMs idle always split; a deep K may too)
            assert plan.split > 1, plan
        assert plan.kernel.endswith("_split") == (plan.split > 1)
    # the 4096-row products and z1 at n = 3200 on the big tile
    assert (z1.kernel == "gemm_tc128_nn_bias_sigmoid") == (hidden == 4096 or n == 3200 and
                                                            hidden == 1024)
    assert (dw1.kernel == "gemm_tc128_nt_bias_grad") == (hidden == 4096)
    # (the 10-row products split over K where their 16 x 16 tiles leave SMs idle)
    assert plans["dW2"].kernel.removesuffix("_split") == "gemm_s16_nt_bias_grad"
    assert plans["da1"].kernel == "gemm_t64_tn_sigmoid_backward"
    assert plans["gemm z1=W1 x"].kernel == z1.kernel.replace("_bias_sigmoid", "")
    assert plans["gemm dW1=dz1 x^T"].kernel.removesuffix("_split") in ("gemm_tc64_nt",
                                                                       "gemm_tc128_nt")
    assert plans["gemm z2=W2 a1"].kernel.removesuffix("_split") == "gemm_s16_nn"
    assert plans["gemm dW2=diff a1^T"].kernel.removesuffix("_split") == "gemm_s16_nt"
    assert plans["gemm da1=W2^T diff"].kernel == "gemm_t64_tn"


def test_split_picks_at_h256():
    """H = 256, n = 800: 4 x 13 = 52 tiles of 64 x 64 on 132 SMs -> 5 splits, as t64's (the H100
    sweep: 33.7 us against 37.0 unsplit for z1)."""
    plans = _model_plans(256, 800, tc64=True)
    assert plans["z1"].kernel == "gemm_tc64_nn_bias_sigmoid_split"
    assert plans["z1"].grid == (4, 13, 5)
    assert plans["dW1"].kernel == "gemm_tc64_nt_bias_grad_split"
    assert plans["dW1"].grid == (4, 13, 5)
    # H = 1024, n = 800: 208 tiles, unsplit
    assert _model_plans(1024, 800, tc64=True)["z1"].kernel == "gemm_tc64_nn_bias_sigmoid"


@pytest.mark.parametrize("hidden", HIDDENS)
@pytest.mark.parametrize("n", BATCHES)
def test_without_tc64_the_plans_of_before(hidden, n):
    """float32, or a device below sm_80: the planner never gives tc64, and its plans are those of
    a call without the flag (the SIMT kernels and bits of before)."""
    for name, plan in _model_plans(hidden, n, tc64=False).items():
        assert "tc64" not in plan.kernel, name
    old = {name: p for name, p in _model_plans(hidden, n, tc64=False).items()}
    for name, plan in old.items():
        assert plan == _plan_without_flag(hidden, n, name), name


def _plan_without_flag(hidden, n, name):
    """The plan of `name` with plan_gemm called as before this tile existed (no tc64 argument)."""
    if name == "z1":
        return gemm_plan.plan_gemm((hidden, INPUTS), (INPUTS, n), (hidden, n), False, False,
                                   H100_SMS, variant=V["gemm_bias_sigmoid"])
    if name == "dW1":
        return gemm_plan.plan_gemm((hidden, n), (INPUTS, n), (hidden, INPUTS + 1), False, True,
                                   H100_SMS, variant=V["gemm_with_bias_grad"])
    if name == "dW2":
        return gemm_plan.plan_gemm((CLASSES, n), (hidden, n), (CLASSES, hidden + 1), False, True,
                                   H100_SMS, variant=V["gemm_with_bias_grad"])
    if name == "da1":
        return gemm_plan.plan_gemm((CLASSES, hidden), (CLASSES, n), (hidden, n), True, False,
                                   H100_SMS, variant=V["gemm_sigmoid_backward"])
    g = next(g for g in ParamLayout(hidden).gemm_shapes(n) if "gemm " + g.name == name)
    a = (g.k, g.m) if g.trans_a else (g.m, g.k)
    b = (g.n, g.k) if g.trans_b else (g.k, g.n)
    return gemm_plan.plan_gemm(a, b, (g.m, g.n), g.trans_a, g.trans_b, H100_SMS)


@pytest.mark.parametrize("ops", gemm_plan.GEMM_OPS)
def test_every_transpose_pair_and_forcing(ops):
    ta, tb = ops[0] == "t", ops[1] == "t"
    m, n, k = 300, 200, 100
    a, b = ((k, m) if ta else (m, k)), ((n, k) if tb else (k, n))
    plan = gemm_plan.plan_gemm(a, b, (m, n), ta, tb, H100_SMS, tc64=True, split=1)
    assert plan.kernel == f"gemm_tc64_{ops}" and plan.block == (128, 1, 1)
    assert plan.grid == (5, 4, 1)
    big = gemm_plan.plan_gemm(a, b, (m, n), ta, tb, H100_SMS, tc64=True, tile="tc128")
    assert big.kernel == f"gemm_tc128_{ops}" and big.block == (256, 1, 1) and big.grid == (3, 4, 1)
    # forced without the tensor cores: the SIMT tile t64
    for tile in gemm_plan.TC64_TILES:
        forced = gemm_plan.plan_gemm(a, b, (m, n), ta, tb, H100_SMS, tile=tile, split=1)
        assert forced.kernel == f"gemm_t64_{ops}" and forced.block == (256, 1, 1)
    # forced SIMT tiles still run in float64 (benchmarks, tests)
    assert gemm_plan.plan_gemm(a, b, (m, n), ta, tb, H100_SMS, tile="t128",
                               tc64=True).kernel == f"gemm_t128_{ops}"
    # short K stays SIMT; so do <= 16 rows
    short = ((10, m) if ta else (m, 10)), ((n, 10) if tb else (10, n))
    assert gemm_plan.plan_gemm(*short, (m, n), ta, tb, H100_SMS, tc64=True).kernel \
        == f"gemm_t64_{ops}"
    skinny = ((k, 10) if ta else (10, k))
    assert gemm_plan.plan_gemm(skinny, b, (10, n), ta, tb, H100_SMS, tc64=True).kernel \
        == f"gemm_s16_{ops}"


def test_forced_tc64_splits():
    """tc64 has split kernels for the plain nn/nt and the bias_sigmoid/bias_grad variants; a split
    asked of tn/tt or sigmoid_backward runs unsplit."""
    for ta, tb, name in ((False, False, "gemm_tc64_nn_split"), (False, True, "gemm_tc64_nt_split")):
        a, b = (100, 333), ((70, 333) if tb else (333, 70))
        plan = gemm_plan.plan_gemm(a, b, (100, 70), ta, tb, H100_SMS, tc64=True, split=3)
        assert plan.kernel == name and plan.grid == (2, 2, 3) and plan.split == 3
    plan = gemm_plan.plan_gemm((333, 100), (333, 70), (100, 70), True, False, H100_SMS, tc64=True,
                               split=3)
    assert plan.kernel == "gemm_tc64_tn" and plan.split == 1
    plan = gemm_plan.plan_gemm((333, 100), (333, 70), (100, 70), True, False, H100_SMS, tc64=True,
                               split=3, variant=V["gemm_sigmoid_backward"])
    assert plan.kernel == "gemm_tc64_tn_sigmoid_backward" and plan.split == 1
    plan = gemm_plan.plan_gemm((100, 333), (70, 333), (100, 71), False, True, H100_SMS, tc64=True,
                               split=5, variant=V["gemm_with_bias_grad"])
    assert plan.kernel == "gemm_tc64_nt_bias_grad_split" and plan.grid == (2, 2, 5)
    # tc128 has no split kernels, and sigmoid_backward no tc128 kernel (it runs tc64)
    plan = gemm_plan.plan_gemm((100, 333), (333, 70), (100, 70), False, False, H100_SMS,
                               tc64=True, tile="tc128", split=3)
    assert plan.kernel == "gemm_tc128_nn" and plan.split == 1
    plan = gemm_plan.plan_gemm((333, 100), (333, 70), (100, 70), True, False, H100_SMS, tc64=True,
                               tile="tc128", variant=V["gemm_sigmoid_backward"])
    assert plan.kernel.removesuffix("_split") == "gemm_tc64_tn_sigmoid_backward"


def test_tc64_kernels_in_the_table():
    expected = {f"gemm_{t}_{ops}" for ops in gemm_plan.GEMM_OPS for t in ("tc64", "tc128")} | {
        "gemm_tc64_nn_split", "gemm_tc64_nt_split", "gemm_tc64_nn_bias_sigmoid",
        "gemm_tc64_nn_bias_sigmoid_split", "gemm_tc64_tn_sigmoid_backward",
        "gemm_tc64_nt_bias_grad", "gemm_tc64_nt_bias_grad_split", "gemm_tc128_nn_bias_sigmoid",
        "gemm_tc128_nt_bias_grad"}
    assert {k for k in op_table.KERNEL_NAMES if "_tc" in k} == expected
    assert gemm_plan.GEMM_TILES["tc64"].bm * gemm_plan.GEMM_TILES["tc64"].bn \
        == gemm_plan.GEMM_SPLIT_TILE_ELEMS


# ------------------------------------------------------------------------------- dispatch
class RecordingDevice(RecordingBackend):
    """The recording backend on a device of the given compute capability (132 SMs)."""

    def __init__(self, dtype="float64", capability=H100):
        super().__init__(dtype)
        self._start({name: name for name in op_table.KERNEL_NAMES}, num_sms=H100_SMS,
                    capability=capability)


@pytest.mark.parametrize("dtype,capability,tc", [("float64", (9, 0), True),
                                                  ("float64", (8, 0), True),
                                                  ("float64", (7, 5), False),
                                                  ("float32", (9, 0), False)])
def test_dispatch(dtype, capability, tc):
    be = RecordingDevice(dtype, capability)
    assert be._gemm_tc64 == tc
    h, n = 1024, 800
    w1, x, b1 = be.empty((h, INPUTS)), be.empty((INPUTS, n)), be.empty((h,))
    z1 = be.empty((h, n))
    be.gemm_bias_sigmoid(w1, x, b1, z1)
    kernel, grid, block, args = be.launches[-1]
    if tc:
        assert kernel == "gemm_tc64_nn_bias_sigmoid" and block == (128, 1, 1)
        assert grid == (16, 13, 1)
    else:
        assert "tc64" not in kernel and block == (256, 1, 1)
    be.gemm(w1, x, z1, 0.5, 1.5)
    kernel, grid, block, args = be.launches[-1]
    assert (kernel == "gemm_tc64_nn") == tc
    assert args[3:9] == [h, n, INPUTS, h, INPUTS, h] and args[9:] == [0.5, 1.5]
    dw1 = be.empty((h, INPUTS + 1))
    be.gemm_with_bias_grad(z1, x, dw1)
    assert (be.launches[-1][0] == "gemm_tc64_nt_bias_grad") == tc
    # forcing a SIMT tile, as the benchmark does
    be.gemm_tile = "t128"
    be.gemm(w1, x, z1)
    assert be.launches[-1][0] == "gemm_t128_nn"
    be.gemm_tile = "tc64"
    be.gemm(w1, x, z1)
    assert be.launches[-1][0] == ("gemm_tc64_nn" if tc else "gemm_t64_nn")


# ------------------------------------------------------------------------------- source
def _defines(source):
    return {name: int(value) for name, value in
            re.findall(r"^#define (TC\d+_\w+) (\d+)\s*$", source, flags=re.MULTILINE)}


def test_header_matches_the_planner():
    source = (cuda_compile.SOURCE_DIR / "gemm_tc64.cuh").read_text()
    d = _defines(source)
    for name in gemm_plan.TC64_TILES:
        tile, p = gemm_plan.GEMM_TILES[name], name.upper()
        assert (d[f"{p}_BM"], d[f"{p}_BN"]) == (tile.bm, tile.bn)
        assert 32 * d[f"{p}_WARPS_M"] * d[f"{p}_WARPS_N"] == tile.threads
        assert d[f"{p}_BK"] % 4 == 0 and tile.bm % (16 * d[f"{p}_WARPS_M"]) == 0
        assert tile.bn % (8 * d[f"{p}_WARPS_N"]) == 0
    assert d["TC128_MIN_BLOCKS"] == gemm_plan.TC128_MIN_BLOCKS_PER_SM
    # split ranges are whole slabs (gemm.cuh SPLIT_K_ALIGN)
    align = int(re.search(r"^#define SPLIT_K_ALIGN (\d+)", cuda_compile.read_source(),
                          flags=re.MULTILINE).group(1))
    assert align % d["TC64_BK"] == 0 and d["TC64_BK"] % 4 == 0
    assert align == gemm_plan.SPLIT_K_ALIGN  # (the planner's split_chunk computes the same ranges)
    # the tensor-core code only where it can compile (sm_80+, double)
    assert re.search(r"#if defined\(__CUDA_ARCH__\) && __CUDA_ARCH__ >= 800", source)


def _ptx(tmp_path, dtype, arch):
    src = tmp_path / "kernels.cu"
    src.write_text(cuda_compile.read_source())
    out = tmp_path / f"k_{dtype}_{arch}.ptx"
    cmd = [nvcc_or_skip(), "-ptx", f"-arch={arch}", *cuda_compile.compile_options(dtype), str(src),
           "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr}"
    return out


def test_mma_only_in_the_float64_builds(tmp_path):
    # (the float build has the TF32x3 mma of gemm_tf32x3.cuh, never an f64 one)
    assert ".f64.f64.f64.f64" not in _ptx(tmp_path, "float32", "sm_90").read_text()
    assert "mma.sync.aligned.m8n8k4.row.col.f64.f64.f64.f64" in _ptx(tmp_path, "float64",
                                                                       "sm_80").read_text()


def test_hopper_build_mma_and_no_spills(tmp_path):
    """sm_90, float64: the m16n8k4 instruction, and ptxas -v: every tensor-core kernel within its
    launch bounds (at most 128 registers: four tc64 or two tc128 blocks a multiprocessor), no
    spills."""
    ptx = _ptx(tmp_path, "float64", "sm_90")
    assert "mma.sync.aligned.m16n8k4.row.col.f64.f64.f64.f64" in ptx.read_text()
    ptxas = Path(nvcc_or_skip()).with_name("ptxas")
    if not ptxas.is_file():
        pytest.skip(f"no ptxas beside {nvcc_or_skip()}")
    cmd = [str(ptxas), "-arch=sm_90", "-v", str(ptx), "-o", str(tmp_path / "k.cubin")]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    reports = re.findall(r"Compiling entry function '(\w+)' for 'sm_90'\s*\n(.*?)(?=ptxas info\s*:"
                         r" Compiling|\Z)", proc.stderr, flags=re.S)
    tc = {name: text for name, text in reports if "_tc" in name}
    assert len(tc) == sum("_tc" in k for k in op_table.KERNEL_NAMES)
    for name, text in tc.items():
        assert "0 bytes spill stores, 0 bytes spill loads" in text, (name, text)
        regs = int(re.search(r"Used (\d+) registers", text).group(1))
        assert regs <= 128, (name, regs)


# ------------------------------------------------------------------------------- on a GPU
gpu_test = pytest.mark.gpu


def _tc_backend(name):
    be = make_backend(name, "float64")
    if not be._gemm_tc64:
        pytest.skip(f"{name}: device compute capability {be._capability} < 8.0: no FP64 mma")
    return be


def _gemm(be, case, ta, tb, alpha, beta):
    c = be.from_host(case["c"])
    be.gemm(be.from_host(case["a"]), be.from_host(case["b"]), c, alpha, beta, ta, tb)
    return be.to_host(c)


def _gemm_inputs(rng, m, n, k, ta, tb, nan_c=False):
    dt = np.float64
    return {"a": rand(rng, (k, m) if ta else (m, k), dt),
            "b": rand(rng, (n, k) if tb else (k, n), dt),
            "c": np.full((m, n), np.nan, order="F") if nan_c else rand(rng, (m, n), dt)}


TC_SIZES = [(1, 1, 1), (17, 129, 200), (64, 64, 64), (65, 63, 129), (133, 77, 65), (100, 1013, 7),
            (1013, 1, 784), (7, 33, 0), (300, 250, 1000)]


TC_TILES = list(gemm_plan.TC64_TILES)


@gpu_test
@pytest.mark.parametrize("name", list(GPU_BACKENDS))
@pytest.mark.parametrize("tile", TC_TILES)
@pytest.mark.parametrize("ops", gemm_plan.GEMM_OPS)
def test_tc64_gemm_against_reference(name, tile, ops):
    """Each tensor-core tile forced (unsplit) on odd sizes, alpha/beta, K = 0, beta = 0 with C all NaN; reruns
    bit-equal; against the SIMT tile within tolerance."""
    be = _tc_backend(name)
    ref = NumpyBackend("float64")
    ta, tb = ops[0] == "t", ops[1] == "t"
    rng = np.random.default_rng(41)
    be.gemm_split = 1
    try:
        for m, n, k in TC_SIZES:
            for alpha, beta, nan_c in ((0.75, -1.25, False), (1.0, 0.0, True)):
                case = _gemm_inputs(rng, m, n, k, ta, tb, nan_c)
                expected = case["c"].copy(order="F")
                ref.gemm(case["a"], case["b"], expected, alpha, beta, ta, tb)
                be.gemm_tile = tile
                got = _gemm(be, case, ta, tb, alpha, beta)
                again = _gemm(be, case, ta, tb, alpha, beta)
                be.gemm_tile = "t64"
                simt = _gemm(be, case, ta, tb, alpha, beta)
                where = f"{ops} {m}x{n}x{k} beta={beta}"
                assert np.all(np.isfinite(got)), f"{where}: unwritten elements"
                assert_close(got, expected, "float64", "gemm")
                assert_close(got, simt, "float64", "gemm")
                assert np.array_equal(got, again), f"{where}: a rerun differs"
    finally:
        be.gemm_tile = None
        be.gemm_split = None


@gpu_test
@pytest.mark.parametrize("name", list(GPU_BACKENDS))
@pytest.mark.parametrize("tile", TC_TILES)
@pytest.mark.parametrize("variant", [pytest.param(v, id=v.op) for v in V.values()])
def test_tc64_fused_against_reference(name, variant, tile):
    be = _tc_backend(name)
    ref = NumpyBackend("float64")
    rng = np.random.default_rng(42)
    be.gemm_tile, be.gemm_split = tile, 1
    try:
        for m, n, k in [(133, 77, 65), (17, 129, 300), (5, 3, 1), (70, 1, 0), (64, 64, 257),
                        (200, 300, 10), (1024, 800, 784)]:
            got, expected = run_fused(be, ref, variant.op,
                                      fused_case(rng, variant.op, m, n, k, np.float64))
            assert np.all(np.isfinite(got)), f"{variant.op} {m}x{n}x{k}: unwritten elements"
            assert_close(got, expected, "float64", "gemm")
    finally:
        be.gemm_tile = be.gemm_split = None


@gpu_test
@pytest.mark.parametrize("name", list(GPU_BACKENDS))
@pytest.mark.parametrize("split", [2, 3, 5])
@pytest.mark.parametrize("product", SPLIT_PRODUCTS, ids=lambda p: p[0])
def test_tc64_split_against_reference(name, product, split):
    """The tc64 split kernels with S forced: the reference within tolerance, every element
    written, reruns bit-equal, tickets back at 0."""
    be = _tc_backend(name)
    ref = NumpyBackend("float64")
    rng = np.random.default_rng(43)
    for m, n, k in SPLIT_SIZES:
        case = split_case(rng, product, m, n, k, np.float64)
        expected = reference_split(ref, product, case)
        be.gemm_tile, be.gemm_split = "tc64", split
        try:
            got, again = run_split(be, product, case), run_split(be, product, case)
        finally:
            be.gemm_tile = be.gemm_split = None
        where = f"{product[0]} {m}x{n}x{k} S={split}"
        assert np.all(np.isfinite(got)), f"{where}: unwritten elements"
        assert_close(got, expected, "float64", "gemm")
        assert np.array_equal(got, again), f"{where}: a rerun differs"
        assert not be.to_host(be._gemm_tickets).any(), f"{where}: tickets left set"


@gpu_test
@pytest.mark.parametrize("name", list(GPU_BACKENDS))
def test_tc64_planned_at_the_model_shapes(name):
    """Unforced: the planner's own tc64 picks (split at H = 256) against the reference."""
    be = _tc_backend(name)
    ref = NumpyBackend("float64")
    rng = np.random.default_rng(44)
    for product, (m, n, k) in products_at({  # (4096 rows: tc128)
            "gemm_bias_sigmoid": [(256, 800, 784), (1024, 800, 784), (4096, 800, 784)],
            "gemm_with_bias_grad": [(256, 784, 800), (1024, 784, 3200), (4096, 784, 800)],
            "gemm_nn": [(1024, 800, 784)], "gemm_nt": [(256, 784, 800)]}):
        case = split_case(rng, product, m, n, k, np.float64)
        assert_close(run_split(be, product, case), reference_split(ref, product, case),
                     np.float64, "gemm")


@gpu_test
def test_tc64_cupy_and_pycuda_agree_bitwise():
    be_cupy, be_pycuda = _tc_backend("cupy"), _tc_backend("pycuda")
    rng = np.random.default_rng(45)
    for product in SPLIT_PRODUCTS:
        for split in (1, 3):
            for m, n, k in SPLIT_SIZES[:3] + [(256, 800, 784)]:
                case = split_case(rng, product, m, n, k, np.float64)
                outs = []
                for be in (be_cupy, be_pycuda):
                    be.gemm_tile, be.gemm_split = "tc64", split
                    try:
                        outs.append(run_split(be, product, case))
                    finally:
                        be.gemm_tile = be.gemm_split = None
                assert np.array_equal(*outs), f"{product[0]} {m}x{n}x{k} S={split}: differs"
    for tile in TC_TILES:
        for ops in gemm_plan.GEMM_OPS:
            ta, tb = ops[0] == "t", ops[1] == "t"
            case = _gemm_inputs(rng, 133, 77, 65, ta, tb)
            outs = []
            for be in (be_cupy, be_pycuda):
                be.gemm_tile = tile
                try:
                    outs.append(_gemm(be, case, ta, tb, 0.75, -1.25))
                finally:
                    be.gemm_tile = None
            assert np.array_equal(*outs), (tile, ops)
    case = fused_case(rng, "gemm_sigmoid_backward", 133, 77, 300, np.float64)
    outs = []
    for be in (be_cupy, be_pycuda):
        be.gemm_tile = "tc64"
        try:
            outs.append(run_fused(be, NumpyBackend("float64"), "gemm_sigmoid_backward", case)[0])
        finally:
            be.gemm_tile = None
    assert np.array_equal(*outs)


@gpu_test
@pytest.mark.parametrize("name", list(GPU_BACKENDS))
def test_tc64_split_graph_replays(name):
    # 139 x 95 x 1003: a shape no other test plans: planned during the capture
    check_graph_replays(_tc_backend(name), 46, 139, 95, 1003, split=3)
