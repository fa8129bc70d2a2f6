"""--gemm tf32x3: the TF32x3 tensor-core GEMMs of backends/gemm_tf32x3.cuh.

Without a GPU: the flag (parsing, one-line errors naming --gemm for float64 and host backends),
the backend option (core.ops.Backend.set_gemm_mode; the CUDA backends' dtype and compute-capability
checks), the planner (gemm_plan.plan_gemm's mode: the SIMT tile's TF32x3 twin, unsplit; on sm_90a the
Hopper tiles, split over K where their blocks leave SMs idle), the
dispatch on the recording CUDA backend (which kernel under which option; the default leaves every
launch as it was), the op table, checkpoints (a MAY_DIFFER key) and the PTX of the kernels (nvcc,
where present: the mma and cvt.rna instructions are there).

On a GPU (skipped otherwise): every transpose pair, tile and fused variant against the NumPy
reference at the float32 tolerance (odd sizes, K = 0, beta != 0, beta = 0 with a NaN C), the
course's integer GEMM exactly, cupy and pycuda bit for bit, reruns and CUDA-graph replays bit for
bit, and lockstep --verify of a training run with --gemm tf32x3. tools/gemm_accuracy.py measures
the accuracy against float64 and the speed at the model's shapes.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import re
import subprocess

import numpy as np
import pytest

from backends import cuda_compile, gemm_plan, op_table
from backends.ops_numpy import NumpyBackend
from core.model import INPUTS, init_params
from gpu_helpers import (FUSED_SIZES, GEMM_SHAPES, RecordingBackend, assert_close,
                         check_against_reference, check_fused_gemms_on_the_model_views,
                         check_gemm_beta_zero_never_reads_c, check_graph_replays,
                         course_matrices, fused_case, gemm_case, make_backend, nvcc_or_skip,
                         run_fused, run_op, step_launches, to_device)
from op_cases import OP_CASES

X3_OPS = ("gemm", "gemm_bias_sigmoid", "gemm_sigmoid_backward", "gemm_with_bias_grad")


class X3Recording(RecordingBackend):
    """The recording CUDA backend on a device with TF32 tensor cores (an H100's 9.0)."""

    _capability = (9, 0)


# ---------------------------------------------------------------------------- the planner
def test_plans_name_the_twin_of_the_simt_tile():
    """The SIMT pick's tile (and grid, and threads), its TF32x3 kernel, never split."""
    shapes = [((256, INPUTS), (INPUTS, 800), (256, 800), False, False),   # z1 at H=256: split in simt
              ((1024, INPUTS), (INPUTS, 800), (1024, 800), False, False),
              ((4096, INPUTS), (INPUTS, 3200), (4096, 3200), False, False),
              ((10, 256), (10, 800), (256, 800), True, False),             # da1: K = 10
              ((10, 800), (1024, 800), (10, 1024), False, True),           # dW2: M <= 16
              ((33, 7), (5, 33), (7, 5), True, True)]
    for a, b, c, ta, tb in shapes:
        simt = gemm_plan.plan_gemm(a, b, c, ta, tb, 132, split=1)
        x3 = gemm_plan.plan_gemm(a, b, c, ta, tb, 132, mode="tf32x3")
        tile = simt.kernel.split("_")[1]
        assert x3.kernel == simt.kernel.replace(f"gemm_{tile}_", f"gemm_{gemm_plan.GEMM_X3_TILE[tile]}_")
        assert x3.grid == simt.grid and x3.block == simt.block and x3.split == 1
        assert (x3.m, x3.n, x3.k) == (simt.m, simt.n, simt.k)
        assert x3.kernel in gemm_plan.GEMM_X3_KERNELS
    # a forced split or tile: the tile's twin, unsplit
    plan = gemm_plan.plan_gemm((100, 333), (333, 70), (100, 70), False, False, 132, "t64",
                               split=3, mode="tf32x3")
    assert plan.kernel == "gemm_x64_nn" and plan.grid == (2, 2, 1)
    assert gemm_plan.plan_gemm((5, 0), (0, 7), (5, 7), False, False, 132, mode="tf32x3").k == 0
    assert gemm_plan.plan_gemm((5, 3), (3, 0), (5, 0), False, False, 132, mode="tf32x3") is None
    with pytest.raises(ValueError, match="mode"):
        gemm_plan.plan_gemm((5, 3), (3, 7), (5, 7), False, False, 132, mode="tf32")


def test_wgmma_plans_pick_a_hopper_tile_by_its_own_speed():
    """With `wgmma` (an sm_90a build), tf32x3 puts the products the SIMT planner gives t128 or t64
    (K > 64) on a Hopper tile, w128 or w64, and a split over K, by pick_wgmma (waves of one block
    per SM, each a block's tile over its efficiency times its K range plus a fixed cost): w128 on
    the big products, w64 or a split where 128 x 128 blocks leave most SMs idle; each with its own
    grid and block of 384 threads (a producer warpgroup and two consumers). The 10-row products,
    short K and a variant without wgmma kernels stay on the mma.sync twins; simt ignores
    `wgmma`."""
    assert gemm_plan.GEMM_WGMMA_TILES == ("w128", "w64")
    assert len(gemm_plan.GEMM_WGMMA_KERNELS) == 8
    big = ((4096, INPUTS), (INPUTS, 3200), (4096, 3200), False, False)
    x3 = gemm_plan.plan_gemm(*big, 132, mode="tf32x3")
    w = gemm_plan.plan_gemm(*big, 132, mode="tf32x3", wgmma=True)
    assert x3.kernel == "gemm_x128_nn" and w.kernel == "gemm_w128_nn"
    assert (x3.grid, x3.block, x3.split) == ((32, 25, 1), (256, 1, 1), 1)
    assert (w.grid, w.block, w.split) == ((32, 25, 1), (384, 1, 1), 1)
    assert w.kernel in gemm_plan.GEMM_WGMMA_KERNELS
    for ta, tb in [(True, False), (False, True), (True, True)]:
        a, b = ((INPUTS, 4096) if ta else (4096, INPUTS)), ((3200, INPUTS) if tb else (INPUTS, 3200))
        plan = gemm_plan.plan_gemm(a, b, (4096, 3200), ta, tb, 132, "t128", mode="tf32x3",
                                   wgmma=True)
        assert plan.kernel == gemm_plan.gemm_kernel_name("w128", ta, tb)
    # z1 at H = 1024, B = 3200: 2 waves of w128 against 4 of w64, unsplit. At B = 800: 56 blocks
    # of w128 or 104 of w64, one wave each, and w128 split in 2 is one wave of half the K.
    assert gemm_plan.pick_wgmma(1024, 3200, INPUTS, 132) == ("w128", 1)
    mid = ((1024, INPUTS), (INPUTS, 800), (1024, 800), False, False)
    plan = gemm_plan.plan_gemm(*mid, 132, mode="tf32x3", wgmma=True)
    assert (plan.kernel, plan.grid, plan.block, plan.split) == (
        "gemm_w128_nn_split", (8, 7, 2), (384, 1, 1), 2)
    # without split kernels (the tn and tt pairs) w64; a forced SIMT tile runs on its own Hopper
    # tile, a forced split where that tile has the kernel
    assert gemm_plan.pick_wgmma(1024, 800, INPUTS, 132, can_split=lambda t: False) == ("w64", 1)
    plan = gemm_plan.plan_gemm(*mid, 132, "t64", mode="tf32x3", wgmma=True)
    assert (plan.kernel, plan.grid) == ("gemm_w64_nn", (8, 13, 1))
    plan = gemm_plan.plan_gemm(*mid, 132, "t64", split=3, mode="tf32x3", wgmma=True)
    assert (plan.kernel, plan.grid, plan.split) == ("gemm_w64_nn_split", (8, 13, 3), 3)
    plan = gemm_plan.plan_gemm(*mid, 132, "t128", split=1, mode="tf32x3", wgmma=True)
    assert (plan.kernel, plan.grid, plan.split) == ("gemm_w128_nn", (8, 7, 1), 1)
    plan = gemm_plan.plan_gemm((INPUTS, 1024), (INPUTS, 800), (1024, 800), True, False, 132,
                               split=3, mode="tf32x3", wgmma=True)
    assert (plan.kernel, plan.split) == ("gemm_w64_tn", 1)
    plan = gemm_plan.plan_gemm((4096, INPUTS), (INPUTS, 3200), (4096, 3200), False, False, 132,
                               "t64", mode="tf32x3", wgmma=True)
    assert (plan.kernel, plan.grid) == ("gemm_w64_nn", (32, 50, 1))
    # H = 256: even w64 leaves most SMs idle (26 blocks): 5 ways over K, one wave of 130
    assert gemm_plan.pick_wgmma(256, 800, INPUTS, 132) == ("w64", 5)
    assert gemm_plan.pick_wgmma(4096, INPUTS + 1, 800, 132) == ("w128", 1)
    # the 10-row products (s16) and short K (da1, K = 10) keep the mma.sync twins
    assert gemm_plan.plan_gemm((10, 1024), (1024, 800), (10, 800), False, False, 132,
                               mode="tf32x3", wgmma=True).kernel == "gemm_x16_nn"
    assert gemm_plan.plan_gemm((10, 1024), (10, 800), (1024, 800), True, False, 132,
                               mode="tf32x3", wgmma=True).kernel == "gemm_x64_tn"
    assert gemm_plan.plan_gemm(*big, 132, wgmma=True).kernel.startswith("gemm_t128_")
    v = gemm_plan.GEMM_VARIANTS
    plan = gemm_plan.plan_gemm((4096, INPUTS), (INPUTS, 800), (4096, 800), False, False, 132,
                               variant=v["gemm_bias_sigmoid"], mode="tf32x3", wgmma=True)
    assert plan.kernel == "gemm_w128_nn_bias_sigmoid"
    plan = gemm_plan.plan_gemm((256, 800), (INPUTS, 800), (256, INPUTS + 1), False, True, 132,
                               variant=v["gemm_with_bias_grad"], mode="tf32x3", wgmma=True)
    assert (plan.kernel, plan.grid) == ("gemm_w64_nt_bias_grad_split", (2, 13, 5))
    assert v["gemm_sigmoid_backward"].wgmma_kernels == ()  # no wgmma tile has the short-K family
    plan = gemm_plan.plan_gemm((10, 1024), (10, 800), (1024, 800), True, False, 132, "t128",
                               variant=v["gemm_sigmoid_backward"], mode="tf32x3", wgmma=True)
    assert plan.kernel == "gemm_x64_tn_sigmoid_backward"
    for variant in v.values():
        launches = {launch.kernel for launch in op_table.OP_BY_NAME[variant.op].launches}
        assert set(variant.wgmma_kernels) <= launches


def test_wgmma_splits_fit_and_beat_the_unsplit_plan():
    """Every split pick_wgmma gives at the model's shapes fits the workspace, leaves no K range
    empty, is modelled faster than every unsplit Hopper plan, and is one of split_candidates."""
    for h, b in itertools.product((256, 1024, 4096), (800, 3200)):
        for m, n, k in [(h, b, INPUTS), (h, INPUTS + 1, b)]:
            tile, split = gemm_plan.pick_wgmma(m, n, k, 132)
            row = gemm_plan.GEMM_TILE_TABLE[tile]
            blocks = math.ceil(m / row.bm) * math.ceil(n / row.bn)
            unsplit = min(gemm_plan.wgmma_cost(t, m, n, k, 1, 132)
                          for t in gemm_plan.GEMM_WGMMA_TILES)
            if split > 1:
                assert split in gemm_plan.split_candidates(tile, blocks, k)
                assert gemm_plan.split_fits(tile, blocks, split)
                assert (split - 1) * gemm_plan.split_chunk(k, split) < k
                assert gemm_plan.wgmma_cost(tile, m, n, k, split, 132) < unsplit
    assert gemm_plan.pick_wgmma(4096, 3200, INPUTS, 132) == ("w128", 1)
    assert not gemm_plan.split_fits("w128", 300, 8)  # 300 x 8 tiles of 128 x 128: too big


def test_wgmma_kernels_take_their_dynamic_shared_memory_only_where_the_build_has_wgmma():
    """The Hopper tiles' shared memory (w128 192 KB, w64 120 KB) is launched (and the kernel's
    limit raised) in a wgmma build only: elsewhere their kernels are traps the planner never names,
    and 192 KB would pass an A100's limit."""
    tiles = {"w128": 196656, "w64": 122976}
    hopper = {k for t in tiles for k in gemm_plan.tile_kernels(t)}
    assert set(gemm_plan.GEMM_KERNEL_DYN_SMEM) == hopper > set(gemm_plan.GEMM_WGMMA_KERNELS)
    for tile, dyn in tiles.items():
        for kernel in gemm_plan.tile_kernels(tile):
            assert gemm_plan.launch_dyn_smem(kernel, wgmma=True) == dyn > 48 * 1024
            assert gemm_plan.launch_dyn_smem(kernel, wgmma=False) == 0
    assert gemm_plan.launch_dyn_smem("gemm_w128_nn", wgmma=True) > 163 * 1024
    assert gemm_plan.launch_dyn_smem("gemm_t128_nn", wgmma=True) == 0


def test_variant_plans():
    v = gemm_plan.GEMM_VARIANTS
    plan = gemm_plan.plan_gemm((256, INPUTS), (INPUTS, 800), (256, 800), False, False, 132,
                               variant=v["gemm_bias_sigmoid"], mode="tf32x3")
    assert plan.kernel == "gemm_x64_nn_bias_sigmoid" and plan.grid == (4, 13, 1)
    plan = gemm_plan.plan_gemm((4096, INPUTS), (INPUTS, 800), (4096, 800), False, False, 132,
                               variant=v["gemm_bias_sigmoid"], mode="tf32x3")
    assert plan.kernel == "gemm_x128_nn_bias_sigmoid"
    # da1 = W2^T diff: t64; a forced t128 runs as the variant's fallback, as in simt
    plan = gemm_plan.plan_gemm((10, 4096), (10, 3200), (4096, 3200), True, False, 132, "t128",
                               variant=v["gemm_sigmoid_backward"], mode="tf32x3")
    assert plan.kernel == "gemm_x64_tn_sigmoid_backward"
    plan = gemm_plan.plan_gemm((1024, 800), (INPUTS, 800), (1024, INPUTS + 1), False, True, 132,
                               variant=v["gemm_with_bias_grad"], mode="tf32x3")
    assert plan.kernel == "gemm_x64_nt_bias_grad" and (plan.n, plan.k) == (INPUTS + 1, 800)
    plan = gemm_plan.plan_gemm((10, 800), (256, 800), (10, 257), False, True, 132,
                               variant=v["gemm_with_bias_grad"], mode="tf32x3")
    assert plan.kernel == "gemm_x16_nt_bias_grad"


def test_kernels_in_the_table():
    """Every TF32x3 kernel is a launch of its op with the parameters of its SIMT twin."""
    # every FMA tile has its twin (the float64 tensor-core tiles have none: float32 only)
    assert set(gemm_plan.GEMM_X3_TILE) == set(gemm_plan.GEMM_TILES) - set(gemm_plan.TC64_TILES)
    assert len(gemm_plan.GEMM_X3_KERNELS) == 4 * len(gemm_plan.GEMM_X3_TILE) == 12
    launches = {launch.kernel: launch for launch in op_table.OP_BY_NAME["gemm"].launches}
    for kernel in gemm_plan.GEMM_X3_KERNELS:
        tile = kernel.split("_")[1]
        simt = {x: t for t, x in gemm_plan.GEMM_X3_TILE.items()}[tile]
        assert launches[kernel].parameters == launches[kernel.replace(tile, simt, 1)].parameters
    for variant in gemm_plan.GEMM_VARIANTS.values():
        launches = {launch.kernel: launch for launch in op_table.OP_BY_NAME[variant.op].launches}
        simt_tiles = [t for t in variant.tiles if t not in gemm_plan.TC64_TILES]
        assert len(variant.x3_kernels) == len(simt_tiles)
        for tile in simt_tiles:
            x3 = variant.kernel(gemm_plan.GEMM_X3_TILE[tile])
            assert x3 in variant.kernels and launches[x3].parameters == launches[
                variant.kernel(tile)].parameters


# ---------------------------------------------------------------------------- the option
def test_set_gemm_mode_checks_dtype_and_device():
    be = X3Recording("float32")
    assert be.gemm_mode == "simt" and be.gemm_modes == ("simt", "tf32x3")
    be.set_gemm_mode("tf32x3")
    assert be.gemm_mode == "tf32x3"
    be.set_gemm_mode("simt")
    assert be.gemm_mode == "simt"
    with pytest.raises(ValueError, match="float32"):
        X3Recording("float64").set_gemm_mode("tf32x3")
    old = RecordingBackend("float32")
    old._capability = (7, 5)
    with pytest.raises(ValueError, match="8.0.*7.5"):
        old.set_gemm_mode("tf32x3")
    assert old.gemm_mode == "simt"
    with pytest.raises(ValueError, match="unknown"):
        be.set_gemm_mode("fp16")


def test_host_backend_has_only_simt():
    be = NumpyBackend("float32")
    be.set_gemm_mode("simt")
    with pytest.raises(ValueError, match="numpy has only the simt GEMM"):
        be.set_gemm_mode("tf32x3")
    assert be.gemm_mode == "simt"


def test_job_turns_refusals_into_user_errors():
    from core.errors import UserError
    from core.job import apply_gemm_mode, check_gemm_flags

    check_gemm_flags("tf32x3", "float32")
    check_gemm_flags("simt", "float64")
    with pytest.raises(UserError, match="^--gemm tf32x3: .*float64"):
        check_gemm_flags("tf32x3", "float64")
    with pytest.raises(UserError, match="^--gemm tf32x3: backend numpy"):
        apply_gemm_mode(NumpyBackend("float32"), "tf32x3")
    apply_gemm_mode(NumpyBackend("float64"), "simt")  # the default asks nothing of a backend

    class Plugin:  # a plugin backend written before --gemm: no set_gemm_mode at all
        pass
    apply_gemm_mode(Plugin(), "simt")


# ---------------------------------------------------------------------------- dispatch
def test_dispatch_under_each_mode():
    """simt: the kernels of before (split-K included); tf32x3: the twins; the mode is part of
    the plan's key, so switching back replans."""
    be = X3Recording("float32")
    h, n = 256, 800
    w1, x, b1, z1 = be.empty((h, INPUTS)), be.empty((INPUTS, n)), be.empty((h,)), be.empty((h, n))
    dw1b1 = be.empty((h, INPUTS + 1))
    be.gemm_bias_sigmoid(w1, x, b1, z1)
    be.gemm_with_bias_grad(z1, x, dw1b1)
    be.gemm(w1, x, z1, 0.5, 2.0)
    assert [launch[0] for launch in be.launches] == [
        "gemm_t64_nn_bias_sigmoid_split", "gemm_t64_nt_bias_grad_split", "gemm_t64_nn_split"]
    be.launches.clear()
    be.set_gemm_mode("tf32x3")
    be.gemm_bias_sigmoid(w1, x, b1, z1)
    be.gemm_with_bias_grad(z1, x, dw1b1)
    be.gemm(w1, x, z1, 0.5, 2.0)
    kernels = [launch[0] for launch in be.launches]
    assert kernels == ["gemm_x64_nn_bias_sigmoid", "gemm_x64_nt_bias_grad", "gemm_x64_nn"]
    args = be.launches[0][3]
    assert args[:3] == [w1, x, z1] and args[3:9] == [h, n, INPUTS, h, INPUTS, h]
    assert args[9] is b1 and len(args) == len(op_table.KERNEL_SIGNATURES[kernels[0]]) == 10
    assert be.launches[0][1] == (4, 13, 1) and be.launches[0][2] == (256, 1, 1)
    assert be.launches[2][3][9:] == [0.5, 2.0]
    for ta in (False, True):
        for tb in (False, True):
            a = be.empty((33, 17) if ta else (17, 33))
            b = be.empty((9, 33) if tb else (33, 9))
            be.gemm(a, b, be.empty((17, 9)), 1.0, 0.0, ta, tb)
            assert be.launches[-1][0] == f"gemm_x64_{'t' if ta else 'n'}{'t' if tb else 'n'}"
    be.set_gemm_mode("simt")
    be.gemm(w1, x, z1, 0.5, 2.0)
    assert be.launches[-1][0] == "gemm_t64_nn_split"


def test_every_gemm_of_a_step_is_tf32x3():
    """One training step under tf32x3 launches only TF32x3 GEMMs; the same launches otherwise."""
    class Simt(X3Recording):
        def __init__(self, dtype="float64"):
            super().__init__("float32")

    class Tf32x3(Simt):
        def __init__(self, dtype="float64"):
            super().__init__()
            self.set_gemm_mode("tf32x3")

    simt, x3 = step_launches(Simt), step_launches(Tf32x3)
    assert len(simt) == len(x3)
    gemms = [k for k in x3 if k.startswith("gemm_")]
    # z1, z2 (the evaluation forward), [dW1 db1]; [dW2 db2] and da1 are output_backward's kernel
    # (its FP32 sums: no GEMM of either mode) where it is on, two GEMMs more where it is off
    assert len(gemms) == len([k for k in simt if k.startswith("gemm_")]) >= 3
    assert all(re.match(r"gemm_x(128|64|16)_", k) for k in gemms), x3
    assert [k for k in simt if not k.startswith("gemm_")] == [
        k for k in x3 if not k.startswith("gemm_")]
    assert not any(re.match(r"gemm_x", k) for k in simt)


# ---------------------------------------------------------------------------- checkpoints, CLI
def test_gemm_may_differ_on_resume(tmp_path):
    from core import checkpoint as ck

    assert ck.MAY_DIFFER["gemm"] == "--gemm" and "gemm" not in ck.MUST_MATCH
    config = {"hidden": 4, "dtype": "float32", "batch_size": 10, "lr": 0.5, "reg": 0.0,
              "gemm": "simt"}
    params = {k: v.astype(np.float32) for k, v in init_params(4, 0).items()}
    path = ck.write_run_checkpoint(tmp_path, params, epoch=1, step=0, config=config,
                                   dtype="float32")
    c = ck.load_checkpoint(path)
    assert ck.validate_checkpoint(c, config, epochs=3) == []
    notes = ck.validate_checkpoint(c, dict(config, gemm="tf32x3"), epochs=3)
    assert len(notes) == 1 and "--gemm simt" in notes[0] and "rounding only" in notes[0]
    old = dict(config)
    del old["gemm"]  # a checkpoint from before --gemm: nothing to compare
    assert ck.validate_checkpoint(c, old, epochs=3) == []


def test_flag_parses():
    from core.ops import GEMM_MODES
    from core.train import build_parser

    assert GEMM_MODES == gemm_plan.GEMM_MODES  # core names them without importing backends

    assert build_parser().parse_args([]).gemm == "simt"
    assert build_parser().parse_args(["--gemm", "tf32x3"]).gemm == "tf32x3"
    from core.errors import UserError
    with pytest.raises(UserError, match="--gemm"):
        build_parser().parse_args(["--gemm", "tf32"])


def _env(tmp_path):
    from conftest import one_job_env

    return one_job_env(tmp_path)


def _cli(args, tmp_path, timeout=300):
    from conftest import cli
    return cli(args, _env(tmp_path), timeout=timeout)


@pytest.mark.parametrize("args,names", [
    (["--backend", "numpy", "--gemm", "tf32x3"], ["--gemm tf32x3", "numpy"]),
    (["--backend", "numpy", "--gemm", "tf32x3", "--dtype", "float64"], ["--gemm", "float64"]),
    (["--gemm", "tf32x3", "--dtype", "float64"], ["--gemm", "float64"]),
    (["--gemm", "TF32x3"], ["--gemm"]),
], ids=["numpy", "numpy-float64", "float64", "bad-choice"])
def test_cli_refusals_are_one_line(tmp_path, args, names):
    from conftest import TINY, assert_user_error
    assert_user_error(_cli(TINY + args, tmp_path), *names)


def test_run_dir_records_the_gemm(tmp_path):
    import json

    from conftest import TINY
    run = tmp_path / "run"
    proc = _cli(TINY + ["--run-dir", str(run), "--quiet"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    config = json.loads((run / "config.json").read_text())
    assert config["flags"]["gemm"] == "simt" and config["run"]["gemm"] == "simt"


def test_bench_refuses_tf32x3_in_float64(tmp_path):
    import sys

    proc = subprocess.run([sys.executable, "-m", "core.bench", "--backends", "numpy", "--gemm",
                           "tf32x3", "--dtype", "float64"], cwd=tmp_path.parent,
                          env=dict(_env(tmp_path), PYTHONPATH=str(cuda_compile.SOURCE_DIR.parent)),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--gemm tf32x3" in proc.stderr, proc.stderr


# ---------------------------------------------------------------------------- the PTX
def _float_ptx(tmp_path, arch: str) -> str:
    """The PTX of the float32 build of kernels.cu for ``arch`` (nvcc; skip without it)."""
    nvcc = nvcc_or_skip()
    src = tmp_path / "kernels.cu"
    src.write_text(cuda_compile.read_source())
    out = tmp_path / "kernels.ptx"
    cmd = [nvcc, "-ptx", f"-arch={arch}", *cuda_compile.compile_options("float32"), str(src),
           "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return out.read_text()


def test_ptx_has_the_three_product_mma(tmp_path):
    """sm_90 PTX of the float build: every TF32x3 kernel splits with cvt.rna.tf32 and multiplies
    with the m16n8k8 TF32 mma (3 products a k-step); no SIMT kernel does."""
    bodies = dict(re.findall(r"\.entry (\w+)\((.*?)\n}\n", _float_ptx(tmp_path, "sm_90"),
                             flags=re.S))
    x3 = [k for k in op_table.KERNEL_NAMES if re.match(r"gemm_x(128|64|16)_", k)]
    assert len(x3) == 12 + sum(len(v.x3_kernels) for v in gemm_plan.GEMM_VARIANTS.values())
    mma = "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32"
    for name in x3:
        body = bodies[name]
        assert mma in body and "cvt.rna.tf32.f32" in body, name
        assert body.count(mma) % 3 == 0, name
    # the wgmma twins (gemm_wgmma.cuh) split with cvt.rna.tf32 too, but have no wgmma below
    # sm_90a: their multiply traps (test_sm90a_ptx_has_the_three_product_wgmma)
    wg = [k for k in op_table.KERNEL_NAMES if re.match(r"gemm_w(128|64)_", k)]
    assert len(wg) == 8 + 4 + sum(len(v.wgmma_kernels) + len(v.wgmma_split_kernels)
                                  for v in gemm_plan.GEMM_VARIANTS.values())
    assert len(gemm_plan.GEMM_WGMMA_SPLIT_KERNELS) == 4  # nn and nt of each Hopper tile
    for name in wg:
        body = bodies[name]
        assert "cvt.rna.tf32.f32" in body and "trap;" in body, name
        assert mma not in body and "wgmma" not in body, name
    for name in cuda_compile.kernel_names("float32"):
        if name.startswith("gemm_") and name not in x3 and name not in wg:
            assert mma not in bodies[name] and "cvt.rna.tf32" not in bodies[name], name


def test_sm90a_ptx_has_the_three_product_wgmma(tmp_path):
    """sm_90a PTX of the float build: every kernel of the Hopper tiles (gemm_wgmma.cuh) splits
    with cvt.rna.tf32 and multiplies with wgmma m64n<BN>k8 TF32 (3 products a k8 step, committed
    and waited for), its slab stores fenced for the async proxy, no trap; no other kernel has
    wgmma."""
    # (each entry up to the next: the inline wgmma's { } block has a closing brace of its own)
    bodies = dict(re.findall(r"\.entry (\w+)\((.*?)(?=\.entry |\Z)",
                             _float_ptx(tmp_path, "sm_90a"), flags=re.S))
    wg = [k for k in cuda_compile.kernel_names("float32") if re.match(r"gemm_w(128|64)_", k)]
    assert set(wg) == {k for t in gemm_plan.GEMM_WGMMA_TILES for k in gemm_plan.tile_kernels(t)}
    for name in wg:
        body = bodies[name]
        bn = gemm_plan.GEMM_TILE_TABLE[name.split("_")[1]].bn
        wgmma = f"wgmma.mma_async.sync.aligned.m64n{bn}k8.f32.tf32.tf32"
        assert body.count(wgmma) > 0 and body.count(wgmma) % 3 == 0, name
        for needed in ("cvt.rna.tf32.f32", "wgmma.fence.sync.aligned",
                       "wgmma.commit_group.sync.aligned", "wgmma.wait_group.sync.aligned 0",
                       "fence.proxy.async.shared::cta"):
            assert needed in body, (name, needed)
        assert "trap;" not in body, name
    for name in cuda_compile.kernel_names("float32"):
        if name not in wg:
            assert "wgmma" not in bodies[name], name


# ============================================================================ on a GPU
gpu_test = pytest.mark.gpu
BACKENDS = ["cupy", "pycuda"]


@contextlib.contextmanager
def tf32x3(be):
    be.set_gemm_mode("tf32x3")
    try:
        yield be
    finally:
        be.gemm_mode = "simt"
        be.gemm_tile = None
        be.gemm_split = None


def x3_backend(name):
    """The cached float32 instance of gpu_helpers, or skip (no GPU, or below sm_80)."""
    be = make_backend(name, "float32")
    if tuple(be._capability) < gemm_plan.GEMM_X3_MIN_CAPABILITY:
        pytest.skip(f"{be.describe_device()}: compute capability {be._capability} < 8.0")
    return be


@pytest.fixture(params=BACKENDS)
def x3(request):
    with tf32x3(x3_backend(request.param)) as be:
        yield be


@pytest.fixture
def ref():
    return NumpyBackend("float32")


@gpu_test
@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (False, True), (True, False),
                                             (True, True)], ids=["nn", "nt", "tn", "tt"])
def test_gemm_against_reference(x3, ref, trans_a, trans_b):
    for mnk in GEMM_SHAPES:
        got, expected = gemm_case(x3, ref, *mnk, trans_a, trans_b, alpha=0.75, beta=-1.25)
        assert_close(got, expected, x3.dtype, "gemm")


@gpu_test
@pytest.mark.parametrize("tile", sorted(gemm_plan.GEMM_TILES))
@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (False, True), (True, False),
                                             (True, True)], ids=["nn", "nt", "tn", "tt"])
def test_gemm_every_tile(x3, ref, tile, trans_a, trans_b):
    x3.gemm_tile = tile
    for m, n, k, beta in [(133, 77, 65, 0.5), (17, 129, 200, 0.0), (5, 3, 1, 2.0), (7, 9, 0, -1.5),
                          (300, 260, 1013, 0.0)]:
        got, expected = gemm_case(x3, ref, m, n, k, trans_a, trans_b, 1.5, beta)
        assert_close(got, expected, x3.dtype, "gemm")


@gpu_test
@pytest.mark.parametrize("tile", sorted(gemm_plan.GEMM_TILES))
@pytest.mark.parametrize("op", list(gemm_plan.GEMM_VARIANTS))
def test_fused_gemm_every_tile(x3, ref, op, tile):
    x3.gemm_tile = tile
    rng = np.random.default_rng(41)
    for m, n, k in FUSED_SIZES + [(300, 260, 1013)]:
        got, expected = run_fused(x3, ref, op, fused_case(rng, op, m, n, k, x3.dtype))
        assert np.all(np.isfinite(got)), f"{op} {m}x{n}x{k}: unwritten elements"
        assert_close(got, expected, x3.dtype, "gemm")


@gpu_test
@pytest.mark.parametrize("split", [2, 5])
@pytest.mark.parametrize("tile", ["t128", "t64"])
def test_hopper_tiles_split_over_k(x3, ref, tile, split):
    """The Hopper tiles' split-K kernels (a forced SIMT tile runs on its Hopper tile, w128 or w64,
    S blocks a tile over K, the last one adding the partials): the plain GEMM's nn and nt and the
    fused z1 and [dW db] against the reference, edges and K ranges of every length, and bitwise
    the same on a rerun."""
    if not x3._gemm_wgmma:
        pytest.skip(f"{x3.describe_device()}: no wgmma build (sm_90a)")
    x3.gemm_tile, x3.gemm_split = tile, split
    for (m, n, k), (ta, tb) in itertools.product([(300, 260, 1013), (129, 65, 700), (256, 800, 784)],
                                                 [(False, False), (False, True)]):
        a_shape, b_shape = ((m, k), (n, k) if tb else (k, n))
        plan = gemm_plan.plan_gemm(a_shape, b_shape, (m, n), ta, tb, x3._num_sms, tile,
                                   split=split, mode="tf32x3", wgmma=True)
        assert plan.split == split and plan.kernel.endswith("_split"), plan
        got, expected = gemm_case(x3, ref, m, n, k, ta, tb, 1.5, -0.5)
        assert_close(got, expected, x3.dtype, "gemm")
        again, _ = gemm_case(x3, ref, m, n, k, ta, tb, 1.5, -0.5)
        assert np.array_equal(got, again), f"{m}x{n}x{k}: rerun differs"
    rng = np.random.default_rng(43)
    for op in ("gemm_bias_sigmoid", "gemm_with_bias_grad"):
        for m, n, k in [(300, 260, 1013), (256, INPUTS, 800)]:
            got, expected = run_fused(x3, ref, op, fused_case(rng, op, m, n, k, x3.dtype))
            assert np.all(np.isfinite(got)), f"{op} {m}x{n}x{k}: unwritten elements"
            assert_close(got, expected, x3.dtype, "gemm")


@gpu_test
@pytest.mark.parametrize("shape", [(10, 1), (10, 33), (100, 1013), (784, 7), (7, 0), (1013, 10)],
                         ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("op", X3_OPS)
def test_op_table_cases(x3, ref, op, shape):
    """The GEMM entries' own cases (beta = 0 with a NaN C, K = 0, 10, 300 for the fused ones)."""
    entry = op_table.OP_BY_NAME[op]
    for case in OP_CASES[op](np.random.default_rng(5), *shape, x3.dtype):
        check_against_reference(x3, ref, entry, case)


@gpu_test
def test_exact_on_integers(x3, ref):
    """The course's integer GEMM and the bias gradient of integers: TF32 holds the small integers
    exactly (small parts 0), the sums are integers below 2^24: exact, on every tile."""
    for tile in sorted(gemm_plan.GEMM_TILES):
        x3.gemm_tile = tile
        a, b, c = (v.astype(np.float32) for v in course_matrices(300, 200, 784))
        expected = c.copy(order="F")
        ref.gemm(a, b, expected, 2.0, 5.0)
        dc = x3.from_host(c)
        x3.gemm(x3.from_host(a), x3.from_host(b), dc, 2.0, 5.0)
        assert np.array_equal(x3.to_host(dc), expected), tile
        a, b, _ = course_matrices(37, 700, 130)
        a, bt = a.astype(np.float32), np.asfortranarray(b.T).astype(np.float32)
        expected = np.empty((37, 701), np.float32, order="F")
        ref.gemm_with_bias_grad(a, bt, expected)
        out = x3.from_host(np.full((37, 701), np.nan, np.float32))
        x3.gemm_with_bias_grad(x3.from_host(a), x3.from_host(bt), out)
        assert np.array_equal(x3.to_host(out), expected), tile


@gpu_test
def test_k_zero_and_beta_zero(x3, ref):
    c = np.arange(12, dtype=np.float32).reshape(3, 4, order="F")
    dc = x3.from_host(c)
    x3.gemm(x3.empty((3, 0)), x3.empty((0, 4)), dc, 3.0, -2.0)
    assert np.array_equal(x3.to_host(dc), -2.0 * c)
    check_gemm_beta_zero_never_reads_c(x3, ref)


@gpu_test
def test_model_views(x3, ref):
    """The model's operands: column slices, [dW db] views of one flat buffer (other elements
    untouched)."""
    check_fused_gemms_on_the_model_views(x3, ref)


@gpu_test
def test_differs_from_simt_and_reruns_bitwise(x3):
    """The TF32x3 kernels run (not the SIMT ones: other bits on random data), and a rerun gives
    the same bits."""
    rng = np.random.default_rng(42)
    a, b = rng.standard_normal((256, INPUTS)), rng.standard_normal((INPUTS, 800))
    da, db, dc = x3.from_host(a), x3.from_host(b), x3.empty((256, 800))
    runs = []
    for _ in range(2):
        x3.gemm(da, db, dc)
        runs.append(x3.to_host(dc))
    assert np.array_equal(runs[0], runs[1])
    x3.gemm_mode = "simt"
    x3.gemm(da, db, dc)
    simt = x3.to_host(dc)
    x3.set_gemm_mode("tf32x3")
    assert not np.array_equal(simt, runs[0])
    ref64 = a @ b
    err = lambda c: np.max(np.abs(c - ref64)) / np.max(np.abs(ref64))  # noqa: E731
    assert err(runs[0]) <= 2 * err(simt) + 1e-7, (err(runs[0]), err(simt))


@gpu_test
def test_cupy_and_pycuda_agree_bitwise():
    with tf32x3(x3_backend("cupy")) as be_cupy, tf32x3(x3_backend("pycuda")) as be_pycuda:
        for op in X3_OPS:
            entry = op_table.OP_BY_NAME[op]
            for tile in [None, *sorted(gemm_plan.GEMM_TILES)]:
                be_cupy.gemm_tile = be_pycuda.gemm_tile = tile
                for shape in [(10, 33), (1013, 10), (784, 7), (300, 260)]:
                    for case in OP_CASES[op](np.random.default_rng(7), *shape, np.float32):
                        outs = []
                        for be in (be_cupy, be_pycuda):
                            device = to_device(be, case)
                            run_op(be, entry, case, device)
                            outs.append([be.to_host(device[w]) for w in entry.writes])
                        for a, b in zip(*outs):
                            assert np.array_equal(a, b), f"{op} tile {tile} {shape}: differs"


@gpu_test
@pytest.mark.parametrize("name", BACKENDS)
def test_graph_replays(name):
    """Planned and launched inside a CUDA-graph capture, replayed twice: the eager bits."""
    with tf32x3(x3_backend(name)) as be:
        # 137 x 91 x 1003: a shape no other test plans: planned during the capture
        check_graph_replays(be, 44, 137, 91, 1003)


@gpu_test
def test_real_backend_refuses_float64():
    be = make_backend("cupy", "float64")
    with pytest.raises(ValueError, match="float32"):
        be.set_gemm_mode("tf32x3")
    assert be.gemm_mode == "simt"


@gpu_test
@pytest.mark.parametrize("name", BACKENDS)
def test_lockstep_verify_passes(name, tmp_path):
    """A training run with --gemm tf32x3, every step checked against the float64 reference."""
    x3_backend(name)
    proc = _cli(["--backend", name, "--gemm", "tf32x3", "--train-size", "3000", "--val-size",
                 "300", "-e", "2", "-n", "100", "-b", "100", "--verify"], tmp_path,
                timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "gemm tf32x3" in proc.stdout
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("verify passed")]
    assert len(line) == 1, proc.stdout
    assert "60 of 60 steps checked" in line[0], line[0]


@gpu_test
def test_training_cupy_and_pycuda_bitwise(tmp_path):
    """Two short runs with --gemm tf32x3, one per backend: bit-identical final parameters."""
    for name in BACKENDS:
        x3_backend(name)
    params = []
    for name in BACKENDS:
        save = tmp_path / f"{name}.npz"
        (tmp_path / name).mkdir()
        proc = _cli(["--backend", name, "--gemm", "tf32x3", "--train-size", "2000", "--val-size",
                     "200", "-e", "1", "-n", "64", "-b", "100", "--quiet", "--save", str(save)],
                    tmp_path / name, timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        with np.load(save) as z:
            params.append({k: z[k] for k in ("W1", "b1", "W2", "b2")})
    for key in params[0]:
        assert np.array_equal(params[0][key], params[1][key]), key


# ---------------------------------------------------------------------------- the accuracy tool
def test_accuracy_tool_host_parts():
    """tools/gemm_accuracy.py without a GPU: TF32 rounding (nearest, ties away, as cvt.rna), the
    model's operands and products, the float64 reference with its ones column."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "gemm_accuracy", cuda_compile.SOURCE_DIR.parent / "tools" / "gemm_accuracy.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    ulp = 2.0 ** -10
    x = np.array([1.0, 1 + ulp / 2, 1 + ulp / 4, -(1 + ulp / 2), 1 + 3 * ulp / 4, 0.0, np.inf],
                 np.float32)
    assert np.array_equal(tool.tf32_round(x),
                          np.array([1.0, 1 + ulp, 1.0, -(1 + ulp), 1 + ulp, 0.0, np.inf],
                                   np.float32))
    r = tool.tf32_round(np.random.default_rng(0).standard_normal(1000).astype(np.float32))
    assert not (r.view(np.uint32) & 0x1FFF).any()
    ops = tool.operands(np.random.default_rng(1), 32, 50)
    assert ops["x"].min() >= 0 and ops["x"].max() <= 1 and (ops["x"] == 0).mean() > 0.5
    for name, op, a, b, ta, tb, ones in tool.products(ops):
        ref = tool.reference(a, b, ta, tb, ones)
        m = a.shape[1] if ta else a.shape[0]
        n = (b.shape[0] if tb else b.shape[1]) + ones
        assert ref.shape == (m, n), name
        if ones:
            assert np.allclose(ref[:, -1], a.astype(np.float64).sum(axis=1))
        tf32 = tool.reference(tool.tf32_round(a), tool.tf32_round(b), ta, tb, ones)
        assert 1e-5 < tool.rel_err(tf32, ref) < 1e-2, name  # one TF32 product: ~1e-4
