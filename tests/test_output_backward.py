"""output_backward: [dW2 db2] = diff [a1^T 1] and dz1 = (W2^T diff) * a1 * (1 - a1) in one op.

Without a GPU: the contract's default (the two fused GEMMs) against the formulas, the shape rule
and its split of the columns (op_table.output_backward_split: chunks that fill the GPU, fit the
workspaces and leave none empty), what the recording CUDA backend launches with the one-pass
kernel on and off (CudaBackend.fused_output_backward), and the model's step through it.

On a GPU (skipped otherwise): the kernel (reductions.cuh output_backward) against the NumPy
reference in both dtypes at edge and model shapes (hidden units off the 32 of a block, one and
many chunks, three classes, zero columns), reruns and cupy against pycuda bit for bit, and a
training step's gradients with the kernel against the step without it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from backends import op_table
from backends.ops_numpy import NumpyBackend
from core.model import INPUTS, MLP, init_params
from gpu_helpers import RecordingBackend, assert_close, make_backend, rand

DTYPES = ("float32", "float64")
#: (hidden, n): one unit; a block's 32 units and one past (the ones row alone in a block);
#: a chunk each; the model's shapes (16 chunks at H = 256 and 1024, 4 at H = 4096); wide rows
SHAPES = [(1, 1), (31, 5), (32, 17), (33, 800), (256, 800), (1024, 3200), (4096, 64), (1000, 3),
          (700, 0)]


def case(rng, classes, hidden, n, dtype):
    """Inputs of output_backward: diff a softmax's error scaled by 1/n, a1 in (0, 1); outputs NaN."""
    yhat = rng.dirichlet(np.ones(classes), size=n).T if n else np.zeros((classes, 0))
    onehot = np.zeros((classes, n))
    onehot[rng.integers(0, classes, n), np.arange(n)] = 1
    return {"w2": rand(rng, (classes, hidden), dtype, 1.0 / math.sqrt(hidden)),
            "diff": np.asfortranarray((yhat - onehot) / max(n, 1)).astype(dtype, order="F"),
            "a1": np.asfortranarray(rng.uniform(0, 1, (hidden, n))).astype(dtype, order="F"),
            "dw2b2": np.full((classes, hidden + 1), np.nan, dtype, order="F"),
            "dz1": np.full((hidden, n), np.nan, dtype, order="F")}


def formulas(c):
    """The op's outputs from its definition, in float64."""
    w2, diff, a1 = (c[k].astype(np.float64) for k in ("w2", "diff", "a1"))
    dw2b2 = np.concatenate([diff @ a1.T, diff.sum(axis=1, keepdims=True)], axis=1)
    return dw2b2, (w2.T @ diff) * a1 * (1 - a1)


# ---------------------------------------------------------------------------- without a GPU
@pytest.mark.parametrize("classes", [10, 3])
def test_default_is_the_definition(classes):
    """The contract's default (gemm_with_bias_grad, then gemm_sigmoid_backward) computes the
    definition; zero columns give [dW2 db2] = 0."""
    rng = np.random.default_rng(3)
    for hidden, n in [(33, 17), (7, 0)]:
        c = case(rng, classes, hidden, n, "float64")
        NumpyBackend("float64").output_backward(**c)
        dw2b2, dz1 = formulas(c)
        np.testing.assert_allclose(c["dw2b2"], dw2b2, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(c["dz1"], dz1, rtol=1e-12, atol=1e-15)
    assert not c["dw2b2"].any()


def test_split_fills_the_gpu_and_fits_the_workspaces():
    """Every (hidden, n) gets chunks of at least BACKWARD_MIN_CHUNK columns (or one), none
    empty, at most BACKWARD_MAX_SPLIT; split launches fit the tickets and slots; the model's
    shapes get 16 chunks at H = 256 and 1024 (B = 800: 50 columns each) and 4 at H = 4096."""
    for hidden in (1, 31, 32, 33, 255, 256, 1023, 1024, 4095, 4096, 16384, 20000):
        rows = math.ceil((hidden + 1) / op_table.BACKWARD_ROWS)
        for n in (0, 1, 15, 16, 17, 799, 800, 3200, 60000):
            chunk, split = op_table.output_backward_split(hidden, n)
            where = f"hidden {hidden}, n {n}: chunk {chunk}, split {split}"
            assert 1 <= split <= op_table.BACKWARD_MAX_SPLIT, where
            if n == 0:
                assert (chunk, split) == (0, 1), where
                continue
            assert (split - 1) * chunk < n <= split * chunk, where  # none empty, all covered
            if split > 1:
                assert chunk >= op_table.BACKWARD_MIN_CHUNK, where
                assert rows <= op_table.BACKWARD_MAX_TICKETS, where
                assert rows * split <= op_table.BACKWARD_MAX_SLOTS, where
    assert op_table.output_backward_split(256, 800) == (50, 16)
    assert op_table.output_backward_split(1024, 800) == (50, 16)
    assert op_table.output_backward_split(4096, 3200) == (800, 4)
    assert op_table.output_backward_split(20000, 3200) == (3200, 1)  # 626 rows fill the GPU
    slots = op_table.WORKSPACE["backward_partials"][0]
    assert slots == (op_table.BACKWARD_MAX_SLOTS * op_table.BACKWARD_ROWS
                     * op_table.OUTPUT_MAX_CLASSES)


def test_shape_rule_refuses_what_does_not_fit():
    rng = np.random.default_rng(0)
    good = case(rng, 10, 33, 5, "float64")
    be = RecordingBackend("float64")
    for name, shape in [("dw2b2", (10, 33)), ("dz1", (33, 4)), ("diff", (9, 5)), ("a1", (32, 5))]:
        bad = dict(good, **{name: np.zeros(shape, order="F")})
        with pytest.raises(ValueError, match="output_backward"):
            be.output_backward(**bad)
    with pytest.raises(ValueError, match="11 classes"):
        be.output_backward(**case(rng, 11, 33, 5, "float64"))


def test_recording_backend_launches_the_kernel_only_where_it_is_on():
    """With fused_output_backward one launch, grid (rows of 32 units with the ones row, chunks),
    the workspaces; without it (the default) the two fused GEMMs' kernels."""
    rng = np.random.default_rng(1)
    be = RecordingBackend("float32")
    c = case(rng, 10, 256, 800, "float32")
    be.launches.clear()
    be.output_backward(**c)
    (kernel, grid, block, args), = be.launches
    assert (kernel, grid, block) == ("output_backward", (9, 16, 1), (256, 1, 1))
    assert args[5] is be._backward_partials and args[6] is be._backward_tickets
    assert args[7:] == [10, 256, 800, 50]
    be.fused_output_backward = False
    be.launches.clear()
    be.output_backward(**c)
    kernels = [launch[0] for launch in be.launches]
    assert len(kernels) == 2 and "bias_grad" in kernels[0] and "sigmoid_backward" in kernels[1]
    from backends.cuda_backend import CudaBackend
    assert CudaBackend.fused_output_backward is False  # (until the kernel has run on a GPU)


def test_the_step_computes_dz1_in_backward_output():
    """The model's step: output_layer, then output_backward (dz1 for backward_hidden), then
    [dW1 db1] alone; no sigmoid-backward GEMM left."""
    be = RecordingBackend("float64")
    model = MLP(be, 64, 50, init_params(64, 0))
    x, y = be.empty((INPUTS, 50)), np.zeros(50, np.int32)
    a1, out = model.forward_hidden(x)
    be.launches.clear()
    model.backward_output(x, y, a1, out, global_batch=50)
    assert [launch[0] for launch in be.launches] == ["output_layer", "output_backward"]
    assert be.launches[1][3][4] is not None and be.launches[1][3][4].shape == (64, 50)
    be.launches.clear()
    model.backward_hidden(x, a1, out)
    assert len(be.launches) == 1 and "bias_grad" in be.launches[0][0]


# ============================================================================ on a GPU
gpu_test = pytest.mark.gpu


@gpu_test
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["cupy", "pycuda"])
def test_kernel_against_reference(name, dtype):
    be = make_backend(name, dtype)
    ref = NumpyBackend(dtype)
    rng = np.random.default_rng(11)
    for hidden, n in SHAPES:
        for classes in (10, 3):
            c = case(rng, classes, hidden, n, dtype)
            expected = {k: v.copy(order="F") for k, v in c.items()}
            ref.output_backward(**expected)
            dev = {k: be.from_host(v) for k, v in c.items()}
            be.output_backward(**dev)
            for out in ("dw2b2", "dz1"):
                got = be.to_host(dev[out])
                assert np.all(np.isfinite(got)), f"{hidden}x{n}, {classes}: {out} unwritten"
                assert_close(got, expected[out], be.dtype, "gemm")
            for k in ("w2", "diff", "a1"):
                assert np.array_equal(be.to_host(dev[k]), c[k]), f"changed {k}"
            again = be.from_host(c["dw2b2"])
            be.output_backward(dev["w2"], dev["diff"], dev["a1"], again, dev["dz1"])
            assert np.array_equal(be.to_host(again), be.to_host(dev["dw2b2"])), "rerun differs"


@gpu_test
@pytest.mark.parametrize("dtype", DTYPES)
def test_cupy_and_pycuda_agree_bitwise(dtype):
    results = []
    for name in ("cupy", "pycuda"):
        be = make_backend(name, dtype)
        outs = []
        for hidden, n in [(256, 800), (33, 17), (4096, 64)]:
            c = case(np.random.default_rng(hidden + n), 10, hidden, n, dtype)
            dev = {k: be.from_host(v) for k, v in c.items()}
            be.output_backward(**dev)
            outs += [be.to_host(dev["dw2b2"]), be.to_host(dev["dz1"])]
        results.append(outs)
    for a, b in zip(*results):
        assert np.array_equal(a.view(np.uint8), b.view(np.uint8))


@gpu_test
@pytest.mark.parametrize("name", ["cupy", "pycuda"])
def test_step_gradients_with_and_without_the_kernel(name):
    """One step's flat gradient with the kernel and with the two fused GEMMs: within the GEMM
    tolerance of each other (float32 and float64)."""
    for dtype in DTYPES:
        be = make_backend(name, dtype)
        rng = np.random.default_rng(5)
        x = be.from_host(np.asfortranarray(rng.uniform(0, 1, (INPUTS, 800))).astype(dtype))
        y = be.from_host(rng.integers(0, 10, 800).astype(np.int32))
        grads = []
        for fused in (True, False):
            be.fused_output_backward = fused
            model = MLP(be, 256, 800, init_params(256, 0))
            a1, out = model.forward_hidden(x)
            model.backward(x, y, a1, out, global_batch=800)
            grads.append(be.to_host(model.flat_grads))
        be.fused_output_backward = True
        assert_close(grads[0], grads[1], be.dtype, "gemm")
