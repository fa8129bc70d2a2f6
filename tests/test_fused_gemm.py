"""The fused GEMMs of core.ops (gemm_bias_sigmoid, gemm_sigmoid_backward, gemm_with_bias_grad)
without a GPU: the NumPy references against the contract's default compositions, the model's
gradients through them against the unfused ops, their planning (gemm_plan.GEMM_VARIANTS) and their
dispatch on the recording CUDA backend, and the kernel launches one training step saves.

On a GPU, tests/test_kernel_parity.py runs each of them (their op-table entries) against the NumPy
reference, and tests every tile of each variant.
"""

from __future__ import annotations

import numpy as np
import pytest

from backends import gemm_plan, op_table
from backends.ops_numpy import NumpyBackend
from core.model import CLASSES, INPUTS, MLP, ParamLayout, init_params
from core.ops import Backend
from tests.test_op_table import RecordingBackend

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
    op = op_table.OP_BY_NAME[name]
    ref, default = NumpyBackend(dtype), UnfusedNumpy(dtype)
    for case in op.cases(np.random.default_rng(3), *shape, np.dtype(dtype)):
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
    assert plan.kernel == "gemm_s16_nt_bias_grad" and plan.grid == (1, 65, 1)
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
def _step_launches(cls, hidden=64, n=50):
    """Kernel launches of one training step (forward, loss, backward, SGD step: what
    DataParallelTrainer.step queues on one rank) on the CUDA dispatch path; the second step's, so
    that one-time set-up (the default's ones vector) does not count."""
    be = cls("float64")
    model = MLP(be, hidden, n, init_params(hidden, 0))
    x, y = be.empty((INPUTS, n)), np.zeros(n, np.int32)
    nll = be.zeros((1,))
    for _ in range(2):
        be.launches.clear()
        a1, yhat = model.forward(x)
        be.nll_sum(yhat, y, nll)
        model.backward_output(x, y, a1, yhat, global_batch=n)
        model.backward_hidden(x, a1, yhat)
        model.update(0.1, 0.5)
    return [launch[0] for launch in be.launches]


def test_fused_gemms_save_four_launches_per_step():
    fused, unfused = _step_launches(RecordingBackend), _step_launches(UnfusedRecording)
    print(f"launches per training step: {len(unfused)} unfused -> {len(fused)} fused: {fused}")
    assert len(unfused) - len(fused) == 4
    # (z1 at H = 64, n = 50 is one tile with K = 784: split over K, gemm_plan.pick_gemm_split)
    assert {"gemm_t64_nn_bias_sigmoid", "gemm_t64_tn_sigmoid_backward", "gemm_t64_nt_bias_grad",
            "gemm_s16_nt_bias_grad"} <= {kernel.removesuffix("_split") for kernel in fused}
    for gone in ("bias_sigmoid", "sigmoid_backward"):
        assert gone not in fused and gone in unfused
    assert "reduce_cols" not in fused
