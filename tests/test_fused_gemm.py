"""The fused GEMMs of core.ops (gemm_bias_sigmoid, gemm_sigmoid_backward, gemm_with_bias_grad)
without a GPU: the NumPy references against the contract's default compositions, the model's
gradients through them against the unfused ops, their planning (gemm_plan.GEMM_VARIANTS) and their
dispatch on the recording CUDA backend, and the kernel launches one training step saves.

On a GPU, tests/test_kernel_parity.py runs each of them (their op-table entries) against the NumPy
reference, and tests every tile of each variant.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from backends import gemm_plan, op_table
from backends.ops_numpy import NumpyBackend
from core.model import CLASSES, INPUTS, MLP, ParamLayout, init_params
from core.ops import Backend
from gpu_helpers import RecordingBackend, step_launches
from op_cases import OP_CASES

FUSED_GEMMS = ("gemm_bias_sigmoid", "gemm_sigmoid_backward", "gemm_with_bias_grad")
TOL = {"float64": 1e-12, "float32": 1e-5}
# (rows, cols) handed to the op-table cases: M <= 16 and M > 16, one column, zero columns
SHAPES = [(10, 1), (10, 33), (7, 0), (1, 100), (100, 77), (33, 785)]


def _unfused(cls):
    """`cls` with the fused GEMMs computed by core.ops.Backend's defaults (the contract's ops)."""
    return type(f"Unfused{cls.__name__}", (cls,),
                {name: getattr(Backend, name) for name in FUSED_GEMMS})


UnfusedNumpy = _unfused(NumpyBackend)
UnfusedRecording = _unfused(RecordingBackend)


def _rel(got, ref):
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert got.shape == ref.shape
    if ref.size == 0:
        return 0.0
    scale = np.max(np.abs(ref))
    return float(np.max(np.abs(got - ref)) / (scale if scale else 1.0))


def test_fused_gemms_are_fused_ops_with_entries():
    from core.ops import FUSED_OPS
    for name in FUSED_GEMMS:
        assert name in FUSED_OPS and name in op_table.OP_BY_NAME
        assert name not in Backend.__abstractmethods__
        op = op_table.OP_BY_NAME[name]
        assert op.planned and op.tolerance == "gemm" and op.writes == ("out",)
        assert {launch.kernel for launch in op.launches} == set(
            gemm_plan.GEMM_VARIANTS[name].kernels)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", FUSED_GEMMS)
def test_reference_equals_default_composition(name, shape, dtype):
    """NumpyBackend's one-formula reference == the contract's default (gemm + element-wise op,
    or gemm + a gemm against ones) on the op table's cases (K = 0, 10, 300)."""
    ref, default = NumpyBackend(dtype), UnfusedNumpy(dtype)
    for case in OP_CASES[name](np.random.default_rng(3), *shape, np.dtype(dtype)):
        outs = []
        for be in (ref, default):
            args = {k: (v.copy(order="F") if isinstance(v, np.ndarray) else v)
                    for k, v in case.items()}
            getattr(be, name)(**args)
            outs.append(args["out"])
        assert not np.isnan(outs[0]).any() and not np.isnan(outs[1]).any()
        assert _rel(outs[1], outs[0]) <= TOL[dtype]


def test_bias_grad_default_reuses_its_ones():
    be = UnfusedNumpy("float64")
    rng = np.random.default_rng(0)
    for k in (5, 3, 5):
        out = np.empty((4, 3), order="F")
        a = rng.standard_normal((4, k))
        be.gemm_with_bias_grad(a, rng.standard_normal((2, k)), out)
        assert np.allclose(out[:, 2], a.sum(axis=1))
    first = be._bias_grad_ones
    be.gemm_with_bias_grad(np.ones((4, 2)), np.ones((2, 2)), np.empty((4, 3), order="F"))
    assert be._bias_grad_ones is first  # no new allocation for a shorter K


# ------------------------------------------------------------------------------ the model
H, NS = 7, 13


def _model_grads(cls, split, seed=5):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (INPUTS, NS))
    labels = rng.integers(0, CLASSES, NS)
    params = init_params(H, seed)
    params["W1"] *= 5.0
    params["b1"] = 0.3 * rng.standard_normal(H)
    be = cls("float64")
    model = MLP(be, H, NS, params)
    X, Y = be.from_host(x), be.from_host(labels)
    total, lo = np.zeros(model.size), 0
    for count in split:
        xs, ys = be.cols(X, lo, lo + count), be.cols(Y, lo, lo + count)
        a1 = yhat = None
        if count:
            a1, yhat = model.forward(xs)
        model.backward(xs, ys, a1, yhat, global_batch=NS)
        total += model.flat_grads
        lo += count
    return total, model


@pytest.mark.parametrize("split", [[NS], [5, 0, 8]], ids=["whole", "pieces"])
def test_model_gradient_fused_equals_unfused(split):
    fused, model = _model_grads(NumpyBackend, split)
    unfused, _ = _model_grads(UnfusedNumpy, split)
    assert _rel(fused, unfused) <= 1e-12
    for p in model.layout.params:  # every part of the buffer was written
        assert np.any(fused[p.offset:p.offset + p.size] != 0), p.name


def test_grad_blocks_are_views_of_the_flat_gradients():
    layout = ParamLayout(H)
    assert [(n, o, s) for n, o, s in layout.grad_blocks] == [
        ("dW1b1", 0, (H, INPUTS + 1)), ("dW2b2", layout["W2"].offset, (CLASSES, H + 1))]
    model = MLP(NumpyBackend("float64"), H, 4, init_params(H, 0))
    model.flat_grads[...] = np.arange(model.size)
    assert np.shares_memory(model.dW1b1, model.flat_grads)
    assert np.array_equal(model.dW1b1[:, :INPUTS], model.dW1)
    assert np.array_equal(model.dW1b1[:, INPUTS], model.db1)
    assert np.array_equal(model.dW2b2[:, :H], model.dW2)
    assert np.array_equal(model.dW2b2[:, H], model.db2)


# ---------------------------------------------------------------------- planning and dispatch
def test_variant_plans():
    v = gemm_plan.GEMM_VARIANTS
    # z1 = W1 x at H = 1024, n = 800: the GEMM's own pick (t64), the fused kernel
    plan = gemm_plan.plan_gemm((1024, 784), (784, 800), (1024, 800), False, False, 132,
                               variant=v["gemm_bias_sigmoid"])
    assert plan.kernel == "gemm_t64_nn_bias_sigmoid" and plan.grid == (16, 13, 1)
    plan = gemm_plan.plan_gemm((4096, 784), (784, 800), (4096, 800), False, False, 132,
                               variant=v["gemm_bias_sigmoid"])
    assert plan.kernel == "gemm_t128_nn_bias_sigmoid"
    plan = gemm_plan.plan_gemm((10, 4), (10, 3), (4, 3), True, False, 132,
                               variant=v["gemm_sigmoid_backward"])
    assert plan.kernel == "gemm_s16_tn_sigmoid_backward"
    # da1 = W2^T diff: t64 (short K); a forced t128 runs as t64, which the variant has
    plan = gemm_plan.plan_gemm((10, 4096), (10, 3200), (4096, 3200), True, False, 132,
                               variant=v["gemm_sigmoid_backward"])
    assert plan.kernel == "gemm_t64_tn_sigmoid_backward"
    plan = gemm_plan.plan_gemm((10, 4096), (10, 3200), (4096, 3200), True, False, 132, "t128",
                               variant=v["gemm_sigmoid_backward"])
    assert plan.kernel == "gemm_t64_tn_sigmoid_backward"
    # [dW1 db1] = dz1 [x^T 1] and [dW2 db2]: C has one column more than op(B)
    plan = gemm_plan.plan_gemm((1024, 800), (784, 800), (1024, 785), False, True, 132,
                               variant=v["gemm_with_bias_grad"])
    assert plan.kernel == "gemm_t64_nt_bias_grad" and (plan.m, plan.n, plan.k) == (1024, 785, 800)
    plan = gemm_plan.plan_gemm((10, 800), (1024, 800), (10, 1025), False, True, 132,
                               variant=v["gemm_with_bias_grad"])
    assert plan.kernel == "gemm_s16_nt_bias_grad_split" and plan.grid == (1, 65, 4)
    plan = gemm_plan.plan_gemm((10, 0), (0, 0), (10, 1), False, True, 132,
                               variant=v["gemm_with_bias_grad"])
    assert (plan.n, plan.k) == (1, 0)  # zero samples, no columns: the bias column (of zeros)
    with pytest.raises(ValueError, match="mismatch"):
        gemm_plan.plan_gemm((10, 8), (5, 8), (10, 5), False, True, 132,
                            variant=v["gemm_with_bias_grad"])
    with pytest.raises(ValueError, match="tn product"):
        gemm_plan.plan_gemm((4, 10), (10, 3), (4, 3), False, False, 132,
                            variant=v["gemm_sigmoid_backward"])
    for variant in v.values():
        assert variant.fallback in variant.tiles and set(variant.tiles) <= set(gemm_plan.GEMM_TILES)


def test_dispatch_of_the_model_shapes():
    """What the CUDA dispatch passes: C's columns including the ones column, C's leading dimension,
    act's own leading dimension; and the plan is cached (a second call plans nothing)."""
    be = RecordingBackend("float64")
    h, n = 40, 9
    dz1, x = be.empty((h, n)), be.empty((INPUTS, n + 3))[:, 1:1 + n]
    flat = be.empty((h * (INPUTS + 1) + 5,))
    (dw1b1,) = be.flat_views(be.cols(flat, 0, h * (INPUTS + 1)), [(h, INPUTS + 1)])
    be.gemm_with_bias_grad(dz1, x, dw1b1)
    kernel, grid, block, args = be.launches[-1]
    assert kernel == "gemm_t64_nt_bias_grad" and args[3:9] == [h, INPUTS + 1, n, h, INPUTS, h]
    assert args[0] is dz1 and args[1] is x and args[2] is dw1b1 and grid == (1, 13, 1)

    w2, diff = be.empty((CLASSES, h)), be.empty((CLASSES, n))
    a1_big = be.empty((h + 6, n))
    a1, out = a1_big[3:3 + h], be.empty((h, n))  # act read through its own leading dimension
    be.gemm_sigmoid_backward(w2, diff, a1, out)
    kernel, grid, block, args = be.launches[-1]
    assert kernel == "gemm_t64_tn_sigmoid_backward"
    assert args[3:9] == [h, n, CLASSES, CLASSES, CLASSES, h] and args[9] is a1 and args[10] == h + 6

    plans = len(be._gemm_plans)
    be.gemm_sigmoid_backward(w2, diff, a1, out)
    assert len(be._gemm_plans) == plans and be.launches[-1][0] == kernel

    with pytest.raises(ValueError, match="bias"):
        be.gemm_bias_sigmoid(be.empty((h, INPUTS)), x, be.empty((h + 1,)), be.empty((h, n)))
    with pytest.raises(ValueError, match="act"):
        be.gemm_sigmoid_backward(w2, diff, be.empty((h, n + 1)), out)
    with pytest.raises(TypeError, match="float64"):
        be.gemm_bias_sigmoid(be.empty((h, INPUTS)), x, be.empty((h,), np.float32),
                             be.empty((h, n)))


# -------------------------------------------------------------------- launches per step
class GemmsBackward(RecordingBackend):
    fused_output_backward = False  # (output_backward as the two fused GEMMs: the default)


def test_fused_gemms_save_four_launches_per_step():
    fused, unfused = step_launches(GemmsBackward), step_launches(_unfused(GemmsBackward))
    print(f"launches per training step: {len(unfused)} unfused -> {len(fused)} fused: {fused}")
    assert len(unfused) - len(fused) == 4
    # (z1 at H = 64, n = 50 is one tile with K = 784: split over K, gemm_plan.pick_gemm_split)
    assert {"gemm_t64_nn_bias_sigmoid", "gemm_t64_tn_sigmoid_backward", "gemm_t64_nt_bias_grad",
            "gemm_s16_nt_bias_grad"} <= {kernel.removesuffix("_split") for kernel in fused}
    for gone in ("bias_sigmoid", "sigmoid_backward"):
        assert gone not in fused and gone in unfused
    assert "reduce_cols" not in fused
    # the one-pass output_backward: [dW2 db2] and da1 in one launch instead of two
    one_pass = step_launches(RecordingBackend)
    assert len(one_pass) == len(fused) - 1 and "output_backward" in one_pass
    assert not {"gemm_t64_tn_sigmoid_backward", "gemm_s16_nt_bias_grad"} & set(one_pass)


# ---------------------------------------------------------------------------- split-K planning
# (gemm_plan.pick_gemm_split, gemm.cuh SplitK; on a GPU: tests/test_kernel_parity.py, "split-K")
def _z1_plan(h, n, sms=132, split=None):
    return gemm_plan.plan_gemm((h, INPUTS), (INPUTS, n), (h, n), False, False, sms,
                               variant=gemm_plan.GEMM_VARIANTS["gemm_bias_sigmoid"], split=split)


def _dw1_plan(h, n, sms=132, split=None):
    return gemm_plan.plan_gemm((h, n), (INPUTS, n), (h, INPUTS + 1), False, True, sms,
                               variant=gemm_plan.GEMM_VARIANTS["gemm_with_bias_grad"], split=split)


def test_split_picks_at_the_model_shapes():
    """On an H100 (132 SMs), the picks the H100 sweep measured fastest (gemm_plan.split_cost): the
    under-occupied z1, [dW1 db1] and [dW2 db2] split, and the deep [dW1 db1] at n = 3200; the
    rest do not."""
    v = gemm_plan.GEMM_VARIANTS
    # H = 256, n = 800: 4 x 13 = 52 tiles of 64 x 64 -> 5 splits (260 blocks, one wave)
    plan = _z1_plan(256, 800)
    assert plan.kernel == "gemm_t64_nn_bias_sigmoid_split" and plan.grid == (4, 13, 5)
    assert plan.split == 5
    plan = _dw1_plan(256, 800)
    assert plan.kernel == "gemm_t64_nt_bias_grad_split" and plan.grid == (4, 13, 5)
    # n = 3200: [dW1 db1] (K = 3200) still 52 tiles; z1 256 x 3200 has 200 tiles: unsplit
    assert _dw1_plan(256, 3200).grid == (4, 13, 5)
    assert _z1_plan(256, 3200).kernel == "gemm_t64_nn_bias_sigmoid" and _z1_plan(256, 3200).split == 1
    # H = 1024, n = 800: 208 tiles, K = 800: unsplit, the kernels and bits of before
    assert _z1_plan(1024, 800).kernel == "gemm_t64_nn_bias_sigmoid"
    assert _dw1_plan(1024, 800).kernel == "gemm_t64_nt_bias_grad"
    assert _z1_plan(1024, 800).grid == (16, 13, 1)
    # ... n = 3200: [dW1 db1]'s K = 3200 in 5 ranges of 640 (1040 blocks: 4 full waves)
    assert _dw1_plan(1024, 3200).grid == (16, 13, 5)
    # H = 4096: 128 x 128 tiles, no split kernel
    assert _z1_plan(4096, 800).kernel == "gemm_t128_nn_bias_sigmoid"
    assert _dw1_plan(4096, 3200).kernel == "gemm_t128_nt_bias_grad"
    # the 10-class layer's [dW2 db2] (s16): 17 tiles at H = 256 -> 6 splits of 160 (134 rounded
    # up to 32) would leave one empty: 5; 65 tiles at H = 1024 -> 4; 257 at H = 4096: unsplit
    for hidden, n, split in ((256, 800, 5), (1024, 800, 4), (256, 3200, 8), (4096, 800, 1),
                             (4096, 3200, 1)):
        plan = gemm_plan.plan_gemm((10, n), (hidden, n), (10, hidden + 1), False, True, 132,
                                   variant=v["gemm_with_bias_grad"])
        assert plan.kernel.startswith("gemm_s16_nt_bias_grad") and plan.split == split, plan
    # da1 (K = 10) never splits
    plan = gemm_plan.plan_gemm((10, 256), (10, 800), (256, 800), True, False, 132,
                               variant=v["gemm_sigmoid_backward"])
    assert plan.kernel == "gemm_t64_tn_sigmoid_backward" and plan.split == 1
    # the plain GEMM: the same picks, its own split kernels
    plan = gemm_plan.plan_gemm((256, INPUTS), (INPUTS, 800), (256, 800), False, False, 132)
    assert plan.kernel == "gemm_t64_nn_split" and plan.grid == (4, 13, 5)
    plan = gemm_plan.plan_gemm((256, 800), (INPUTS, 800), (256, INPUTS), False, True, 132)
    assert plan.kernel == "gemm_t64_nt_split" and plan.grid == (4, 13, 5)
    # fewer SMs: fewer splits
    assert _z1_plan(256, 800, sms=80).split == 3
    assert _z1_plan(256, 800, sms=26).split == 1
    # float64 on the FP64 tensor cores (tc64): the same model
    plan = gemm_plan.plan_gemm((256, INPUTS), (INPUTS, 800), (256, 800), False, False, 132,
                               variant=v["gemm_bias_sigmoid"], tc64=True)
    assert plan.kernel == "gemm_tc64_nn_bias_sigmoid_split" and plan.grid == (4, 13, 5)


@pytest.mark.parametrize("sms", [20, 108, 132, 148])
def test_split_rules_over_shapes(sms):
    """S = 1 where K is short or no split tile; otherwise S has the least split_cost of every
    feasible S (at most GEMM_SPLIT_MAX, each split GEMM_SPLIT_MIN_K deep, within the workspace),
    S = 1 on a tie, and none of the kernel's K ranges is empty."""
    for tile in gemm_plan.GEMM_SPLIT_TILES:
        for m in (5, 16, 17, 64, 100, 256, 513, 1024, 2000):
            for n in (1, 50, 100, 785, 800, 3200):
                for k in (0, 10, 100, 255, 256, 784, 3200, 60000):
                    split = gemm_plan.pick_gemm_split(tile, m, n, k, sms)
                    gx, gy, _ = gemm_plan.gemm_grid(tile, m, n)
                    tiles = gx * gy
                    where = (tile, m, n, k, split)
                    assert 1 <= split <= gemm_plan.GEMM_SPLIT_MAX
                    if k < 2 * gemm_plan.GEMM_SPLIT_MIN_K:
                        assert split == 1, where
                    if split > 1:
                        assert gemm_plan.split_fits(tile, tiles, split), where
                        assert k // split >= gemm_plan.GEMM_SPLIT_MIN_K, where
                        chunk = gemm_plan.split_chunk(k, split)
                        assert (split - 1) * chunk < k <= split * chunk, where  # none empty
                    cost = gemm_plan.split_cost(tiles, k, split, sms)
                    assert cost < gemm_plan.split_cost(tiles, k, 1, sms) or split == 1, where
                    for other in range(2, min(gemm_plan.GEMM_SPLIT_MAX,
                                              k // gemm_plan.GEMM_SPLIT_MIN_K) + 1):
                        if gemm_plan.split_fits(tile, tiles, other):
                            assert cost <= gemm_plan.split_cost(tiles, k, other, sms), (where, other)
    assert gemm_plan.pick_gemm_split("t128", 256, 800, 784, sms) == 1  # no split kernel
    assert gemm_plan.pick_gemm_split("tc128", 256, 800, 784, sms) == 1


def test_forced_split_plans():
    """The override (CudaBackend.gemm_split): any S on a tile with a split kernel, where it fits;
    S = 1 otherwise (no split kernel: t128, tc128, the tn/tt plain GEMMs, gemm_sigmoid_backward)."""
    v = gemm_plan.GEMM_VARIANTS
    for split in (2, 3, 5):
        plan = gemm_plan.plan_gemm((100, 333), (333, 70), (100, 70), False, False, 132, "t64",
                                   split=split)
        assert plan.kernel == "gemm_t64_nn_split" and plan.grid == (2, 2, split)
        plan = gemm_plan.plan_gemm((65, 50), (1, 50), (65, 2), False, True, 132,
                                   variant=v["gemm_with_bias_grad"], split=split)  # K < S * 32
        assert plan.kernel == "gemm_t64_nt_bias_grad_split" and plan.grid == (2, 1, split)
        plan = gemm_plan.plan_gemm((65, 0), (0, 9), (65, 9), False, False, 132, split=split)  # K = 0
        assert plan.kernel == "gemm_t64_nn_split" and plan.split == split
    assert _z1_plan(256, 800, split=1).kernel == "gemm_t64_nn_bias_sigmoid"
    assert _z1_plan(4096, 800, split=3).kernel == "gemm_t128_nn_bias_sigmoid"
    assert gemm_plan.plan_gemm((100, 333), (333, 70), (100, 70), False, False, 132, "t128",
                               split=3).kernel == "gemm_t128_nn"
    plan = gemm_plan.plan_gemm((10, 800), (256, 800), (10, 257), False, True, 132,
                               variant=v["gemm_with_bias_grad"], split=3)
    assert plan.kernel == "gemm_s16_nt_bias_grad_split" and plan.grid == (1, 17, 3)
    assert gemm_plan.plan_gemm((333, 100), (333, 70), (100, 70), True, False, 132,
                               split=3).kernel == "gemm_t64_tn"
    assert gemm_plan.plan_gemm((10, 256), (10, 800), (256, 800), True, False, 132,
                               variant=v["gemm_sigmoid_backward"], split=3).split == 1
    # forced (208 tiles): within the workspace, S = 5 (1040 slots); beyond it (S = 6: 1248
    # slots), unsplit; s16 partials take a sixteenth of a slot
    assert _z1_plan(1024, 800, split=5).split == 5
    assert _z1_plan(1024, 800, split=6).split == 1
    assert _z1_plan(1024, 800, split=1).split == 1
    assert gemm_plan.split_fits("s16", 257, 8) and not gemm_plan.split_fits("t64", 257, 8)
    with pytest.raises(ValueError, match="split"):
        _z1_plan(256, 800, split=0)


def test_split_workspace():
    """Fixed capacity, allocated by _start (never at plan time: CUDA-graph capture): the partial
    tiles in the backend's dtype, the tickets int32 zeros; a 64 x 64 slot per split and tile."""
    assert gemm_plan.GEMM_SPLIT_TILE_ELEMS == gemm_plan.GEMM_TILES["t64"].bm * gemm_plan.GEMM_TILES["t64"].bn
    assert set(gemm_plan.GEMM_SPLIT_TILES) <= set(gemm_plan.GEMM_TILES)
    # one wave of two split blocks per SM fits a GPU of 148 SMs, and so does the deep [dW1 db1]
    # at H = 1024 (208 tiles x 5)
    assert gemm_plan.GEMM_SPLIT_SLOTS >= 2 * 148 and gemm_plan.GEMM_SPLIT_TICKETS >= 148
    assert gemm_plan.split_fits("t64", 208, 5)
    for dtype in ("float64", "float32"):
        be = RecordingBackend(dtype)
        partials, tickets = be._gemm_partials, be._gemm_tickets
        assert partials.shape == (gemm_plan.GEMM_SPLIT_SLOTS * gemm_plan.GEMM_SPLIT_TILE_ELEMS,)
        assert partials.dtype == np.dtype(dtype)
        assert tickets.dtype == np.int32 and tickets.shape == (gemm_plan.GEMM_SPLIT_TICKETS,)
        assert not tickets.any()
        assert op_table.WORKSPACE["gemm_partials"] == (partials.size, "real")
        assert op_table.WORKSPACE["gemm_tickets"] == (tickets.size, "int32")


def test_split_dispatch():
    """What the CUDA dispatch passes to a split kernel: the operands and sizes of the unsplit one,
    then the two workspaces; grid.z = S. gemm_split is part of the plan's key."""
    be = RecordingBackend("float32")
    h, n = 256, 800
    w1, x, b1 = be.empty((h, INPUTS)), be.empty((INPUTS, n)), be.empty((h,))
    z1 = be.empty((h, n))
    be.gemm_bias_sigmoid(w1, x, b1, z1)
    kernel, grid, block, args = be.launches[-1]
    assert kernel == "gemm_t64_nn_bias_sigmoid_split" and grid == (4, 13, 5) and block == (256, 1, 1)
    assert args[:3] == [w1, x, z1] and args[3:9] == [h, n, INPUTS, h, INPUTS, h]
    assert args[9] is b1 and args[10] is be._gemm_partials and args[11] is be._gemm_tickets
    assert len(args) == len(op_table.KERNEL_SIGNATURES[kernel]) == 12

    dw1b1 = be.empty((h, INPUTS + 1))
    be.gemm_with_bias_grad(z1, x, dw1b1)
    kernel, grid, _, args = be.launches[-1]
    assert kernel == "gemm_t64_nt_bias_grad_split" and grid == (4, 13, 5)
    assert args[3:9] == [h, INPUTS + 1, n, h, INPUTS, h]
    assert args[9] is be._gemm_partials and args[10] is be._gemm_tickets and len(args) == 11

    c = be.empty((h, n))
    be.gemm(w1, x, c, 0.5, 2.0)
    kernel, grid, _, args = be.launches[-1]
    assert kernel == "gemm_t64_nn_split" and grid == (4, 13, 5)
    assert args[9:11] == [0.5, 2.0] and args[11] is be._gemm_partials and args[12] is be._gemm_tickets

    be.gemm_split = 3  # forced: replanned (the key holds gemm_split), then back to the pick
    be.gemm_bias_sigmoid(w1, x, b1, z1)
    assert be.launches[-1][0] == "gemm_t64_nn_bias_sigmoid_split" and be.launches[-1][1] == (4, 13, 3)
    be.gemm_split = 1
    be.gemm_bias_sigmoid(w1, x, b1, z1)
    assert be.launches[-1][0] == "gemm_t64_nn_bias_sigmoid" and be.launches[-1][1] == (4, 13, 1)
    assert len(be.launches[-1][3]) == 10
    be.gemm_split = None
    be.gemm_bias_sigmoid(w1, x, b1, z1)
    assert be.launches[-1][1] == (4, 13, 5)


def test_split_kernels_in_the_table():
    """Every split kernel is an op-table launch of its op, with the unsplit kernel's parameters
    and the two workspaces; the source defines them (tests/test_cuda_compile.py checks kinds)."""
    for op, kernels in (("gemm", gemm_plan.GEMM_SPLIT_KERNELS),
                        ("gemm_bias_sigmoid", ("gemm_t64_nn_bias_sigmoid_split",
                                               "gemm_s16_nn_bias_sigmoid_split",
                                               "gemm_tc64_nn_bias_sigmoid_split")),
                        ("gemm_with_bias_grad", ("gemm_t64_nt_bias_grad_split",
                                                 "gemm_s16_nt_bias_grad_split",
                                                 "gemm_tc64_nt_bias_grad_split"))):
        launches = {launch.kernel: launch for launch in op_table.OP_BY_NAME[op].launches}
        for kernel in kernels:
            split, plain = launches[kernel], launches[kernel.removesuffix("_split")]
            assert split.parameters == plain.parameters + (
                op_table.Workspace("gemm_partials"), op_table.Counter("gemm_tickets"))
    assert gemm_plan.GEMM_SPLIT_KERNELS == ("gemm_t64_nn_split", "gemm_t64_nt_split",
                                            "gemm_s16_nn_split", "gemm_s16_nt_split",
                                            "gemm_tc64_nn_split", "gemm_tc64_nt_split")


def _plannable_kernels(dtype: str) -> set[str]:
    """Every GEMM kernel a plan can name in the build for `dtype`: each tile forced (and picked),
    each transpose pair of the plain GEMM and each variant, unsplit and split, in every mode and
    tensor-core setting the backend allows that dtype (float64: simt with or without the FP64
    tensor cores; float32: simt, or tf32x3 with or without the Hopper wgmma twins)."""
    settings = ([("simt", False, False), ("simt", True, False)] if dtype == "float64"
                else [("simt", False, False), ("tf32x3", False, False), ("tf32x3", False, True)])
    products = [((False, False), None)] + [((o[0] == "t", o[1] == "t"), None) for o in
                                            gemm_plan.GEMM_OPS[1:]]
    products += [((v.ops[0] == "t", v.ops[1] == "t"), v) for v in gemm_plan.GEMM_VARIANTS.values()]
    kernels = set()
    # (the Hopper tile is picked by size: w64 at 256 x 256, w128 at 4096 x 4096)
    for ((ta, tb), variant), (m, n) in itertools.product(products, [(256, 256), (4096, 4096)]):
        k = 1024
        a, b = ((k, m) if ta else (m, k)), ((n, k) if tb else (k, n))
        c = (m, n + 1) if variant is not None and variant.ones else (m, n)
        for (mode, tc64, wgmma), tile, split in itertools.product(
                settings, (None, *gemm_plan.GEMM_TILES), (1, 4)):
            plan = gemm_plan.plan_gemm(a, b, c, ta, tb, 132, tile, variant, split, mode, tc64,
                                       wgmma=wgmma)
            kernels.add(plan.kernel)
    return kernels


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_each_build_has_exactly_the_kernels_its_plans_name(dtype):
    """No plan of a build names a kernel that build lacks, and the build compiles no GEMM kernel
    that no plan names (gemm_kernels_for: the table's rows of that build)."""
    assert _plannable_kernels(dtype) == set(gemm_plan.gemm_kernels_for(dtype))


def test_kernel_table_rows():
    """The planner's tiles, the TF32x3 twins (mma.sync) and the Hopper tiles (wgmma), from
    gemm_kernels.cuh's table: each twin has its SIMT tile's geometry and kernels (but the split
    ones), in the float32 build only; the Hopper tiles are 128 rows (two consumer warpgroups of 64)
    by 128 or 64, a producer warpgroup more (384 threads), with the split-K family but not the
    short-K one (K = 10 stays on the mma.sync twins); the FP64
    tensor-core tiles are in the float64 build only."""
    rows = gemm_plan.GEMM_TILE_TABLE
    assert set(rows) == (set(gemm_plan.GEMM_TILES) | set(gemm_plan.GEMM_X3_TILE.values())
                         | set(gemm_plan.GEMM_WGMMA_TILES))
    for simt, x3 in gemm_plan.GEMM_X3_TILE.items():
        assert (rows[x3].bm, rows[x3].bn, rows[x3].threads) == (
            rows[simt].bm, rows[simt].bn, rows[simt].threads)
        assert rows[x3].build == "float" and rows[simt].build == "any"
        assert rows[x3].families == tuple(f for f in rows[simt].families if f != "split")
    for hopper, bn in zip(gemm_plan.GEMM_WGMMA_TILES, (128, 64)):
        assert (rows[hopper].bm, rows[hopper].bn, rows[hopper].threads) == (128, bn, 384)
        assert rows[hopper].build == "float" and rows[hopper].families == ("base", "split")
    assert {t for t, row in rows.items() if row.build == "double"} == set(gemm_plan.TC64_TILES)
    assert gemm_plan.tile_kernels("t64")[:4] == ("gemm_t64_nn", "gemm_t64_nt", "gemm_t64_tn",
                                                 "gemm_t64_tt")
    assert len(gemm_plan.GEMM_KERNEL_BUILD) == sum(len(gemm_plan.tile_kernels(t)) for t in rows)
