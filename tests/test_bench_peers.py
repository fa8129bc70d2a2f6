"""The bench's limit and peers (core/flop_bound.py, core/bench_peers.py): the FLOP count against
one made here from the model's shapes, the bound and its percentage as printed, absent or failing
peers as one note line each, and each peer's epoch against mlp_epoch in NumPy on a tiny problem
with a partial last batch (JAX and PyTorch on the CPU, skipped where they are not installed)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, relative_max_error
from core import bench, bench_peers, flop_bound
from core.model import CLASSES, INPUTS, ParamLayout, init_params

H100 = flop_bound.peaks_for("NVIDIA H100 80GB HBM3")


# ---------------------------------------------------------------------------- FLOP count
@pytest.mark.parametrize("hidden", [8, 256, 1024, 4096])
def test_epoch_flop_is_the_models_gemms(hidden):
    """2 FLOP per product term of each GEMM of a step, from the parameters' shapes: forward
    W1 x and W2 a1, backward dW2, da1 (W2's shape each) and dW1 (W1's)."""
    p = init_params(hidden, 0)
    per_sample = 2 * p["W1"].size + 2 * p["W2"].size + 2 * p["W2"].size * 2 + 2 * p["W1"].size
    samples = 60000
    assert flop_bound.epoch_flop(samples, hidden) == samples * per_sample
    n = 800  # and the same from the step's GEMM shapes (C m x n = A m x k times B k x n)
    gemm_flop = sum(2 * g.m * g.n * g.k for g in ParamLayout(hidden).gemm_shapes(n))
    assert gemm_flop == flop_bound.epoch_flop(n, hidden)
    assert flop_bound.FLOP_PER_SAMPLE_PER_HIDDEN == 2 * (2 * INPUTS + 3 * CLASSES) == 3196


# ---------------------------------------------------------------------------- peaks and bound
def test_peak_table_by_device_name():
    assert (H100.fp32, H100.fp64, H100.tf32, H100.source) == (67e12, 67e12, 495e12, "table")
    assert flop_bound.peaks_for("NVIDIA H200").fp32 == 67e12
    assert flop_bound.peaks_for("NVIDIA H100 PCIe").fp32 == 51.2e12
    computed = flop_bound.peaks_for("Some GPU", sms=100, clock_khz=1_500_000, capability=(8, 6))
    assert computed.fp32 == pytest.approx(2 * 100 * 1.5e9 * 128)
    assert (computed.fp64, computed.tf32) == (None, None)
    unknown = flop_bound.peaks_for("Some GPU", sms=100, clock_khz=1_500_000, capability=(99, 0))
    assert (unknown.fp32, unknown.source) == (None, "unknown")


def _bound(mode="float32", gemm="simt", on_host=False, ranks=1, epoch_s=0.010, peaks=H100,
           hidden=256):
    return flop_bound.bound_fields(mode, gemm, on_host, 60000, hidden, ranks, epoch_s, peaks)


def test_bound_and_percentage_per_mode():
    flop = 60000 * 256 * 3196
    f32 = _bound()
    assert f32["flop"] == flop and f32["peak"] == "FP32 FMA 67 TFLOP/s"
    assert f32["bound_ms"] == pytest.approx(1e3 * flop / 67e12)
    assert f32["bound_pct"] == pytest.approx(100 * flop / 67e12 / 0.010)
    assert "tf32x3_bound_ms" not in f32
    tf32x3 = _bound(gemm="tf32x3")
    assert tf32x3["bound_ms"] == f32["bound_ms"]  # the FP32 bound first, then TF32x3's
    assert tf32x3["tf32x3_bound_ms"] == pytest.approx(1e3 * 3 * flop / 495e12)
    assert _bound(mode="float64")["peak"] == "FP64 67 TFLOP/s"
    assert _bound(mode="exact")["bound_ms"] == _bound(mode="float64")["bound_ms"]
    assert _bound(ranks=2)["bound_ms"] == pytest.approx(f32["bound_ms"] / 2)
    for none in (_bound(on_host=True), _bound(peaks=None)):
        assert none["flop"] == flop and none["bound_ms"] is None and none["bound_pct"] is None


def test_bound_formatting():
    assert flop_bound.fmt_bound(_bound()) == "  bound 0.73 ms   7.3% (FP32 FMA 67 TFLOP/s)"
    assert flop_bound.fmt_bound(_bound(gemm="tf32x3")) == (
        "  bound 0.73 ms   7.3% (FP32 FMA 67 TFLOP/s), TF32x3 0.30 ms   3.0% (3 x TF32 495 "
        "TFLOP/s)")
    assert flop_bound.fmt_bound(_bound(on_host=True)) == "  bound -"
    computed = flop_bound.peaks_for("Some GPU", sms=100, clock_khz=1_500_000, capability=(8, 6))
    text = flop_bound.fmt_bound(_bound(mode="float64", peaks=computed))
    assert text == "  bound unknown (FP64 unknown)" and "%" not in text


def test_training_row_prints_its_bound():
    row = {"backend": "cupy +graph", "gemm": "simt", "mode": "float32", "comm": "single",
           "ranks": 1, "H": 256, "B": 800, "samples": 60000, "on_host": False, "epoch_ms": 10.0,
           "samples_per_s": 6e6}
    line = bench._fmt_training(bench._with_bound(row, H100))
    assert line.endswith("samples/s  bound 0.73 ms   7.3% (FP32 FMA 67 TFLOP/s)"), line
    host = bench._fmt_training(bench._with_bound({**row, "on_host": True}, H100))
    assert host.endswith("samples/s  bound -"), host


def test_bench_on_the_cpu_prints_no_bound(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "core.bench", "--backends", "numpy", "--hidden",
                           "16", "--batch", "100", "--samples", "400", "--epochs", "1",
                           "--json", str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    row_lines = [line for line in proc.stdout.splitlines()
                 if line.startswith("numpy ") and " epoch " in line]
    assert row_lines and all(line.endswith("bound -") for line in row_lines), proc.stdout
    # (on a GPU machine the peers add their own rows, with bounds)
    (row,) = [r for r in json.loads(out.read_text())["training"] if r["backend"] == "numpy"]
    assert (row["flop"], row["bound_ms"], row["bound_pct"]) == (400 * 16 * 3196, None, None)


# ---------------------------------------------------------------------------- absent, failing
def _tiny(samples=64, seed=3):
    rng = np.random.default_rng(seed)
    x = (rng.integers(0, 256, (INPUTS, samples)) / 255.0).astype(np.float32, order="F")
    return x, rng.integers(0, CLASSES, samples)


def _args(dtype="float32"):
    return argparse.Namespace(dtype=dtype, epochs=1)


def test_absent_peers_are_one_note_each_and_no_exception(monkeypatch):
    for name in ("cupy", "torch", "jax", "jax.numpy"):
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError
    x, y = _tiny()
    notes, unavailable = [], set()
    assert bench.reference_rows(_args(), x, y, 8, 24, notes.append, unavailable) == []
    assert len(notes) == len(bench_peers.PEERS) == len(unavailable)
    for (name, _), note in zip(bench_peers.PEERS, notes):
        assert note.startswith(f"dpmlp bench: note: no {name} rows: ") and "\n" not in note
    bench.reference_rows(_args(), x, y, 8, 48, notes.append, unavailable)
    assert len(notes) == len(bench_peers.PEERS)  # noted once a run, not once a shape


def test_a_failing_peer_is_one_line_and_the_bench_goes_on(monkeypatch):
    def compile_fails(*_):
        raise ValueError("lowering failed\nsecond line")

    def runs(*_):
        return bench_peers.PeerEpoch(lambda: None, list)

    monkeypatch.setattr(bench_peers, "PEERS", (("boom", compile_fails), ("fine", runs)))
    x, y = _tiny()
    notes = []
    rows = bench.reference_rows(_args(), x, y, 8, 24, notes.append, set())
    assert notes == ["dpmlp bench: note: boom failed at H=8 B=24: ValueError: lowering failed"]
    assert [r["backend"] for r in rows] == ["fine"] and rows[0]["on_host"] is False


# ---------------------------------------------------------------------------- peers' math
def _numpy_reference(dtype, x, y, hidden, batch, epochs):
    params = bench_peers.host_params(hidden, dtype)
    ops = {"mm": np.matmul, "exp": np.exp, "sum": lambda t, a: t.sum(a, keepdims=True),
           "max": lambda t, a: t.max(a, keepdims=True), "sync": lambda: None}
    run = bench_peers.mlp_epoch(ops, x.astype(dtype), bench_peers.one_hot(y, dtype), params,
                                batch)
    for _ in range(epochs):
        run()
    return params


def _check_against_numpy(make, dtype, tolerance, epochs=2, hidden=8, batch=24):
    """The peer's parameters after ``epochs`` epochs (64 samples in batches of 24, 24 and 16)
    against mlp_epoch in NumPy: the change from the initial parameters, relative error."""
    x, y = _tiny()
    peer = make(dtype, x, y, hidden, batch)
    for _ in range(epochs):
        peer.run()
    start = bench_peers.host_params(hidden, dtype)
    expected = _numpy_reference(dtype, x, y, hidden, batch, epochs)
    for name, p0, want, got in zip(("W1", "b1", "W2", "b2"), start, expected, peer.params()):
        assert got.shape == want.shape and got.dtype == np.dtype(dtype), name
        assert np.any(want != p0), name  # the epoch moved it
        err = relative_max_error(want - p0, np.asarray(got, np.float64) - p0)
        assert err < tolerance, (name, err)


@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-4), ("float64", 1e-12)])
def test_jax_jit_epoch_matches_numpy(dtype, tolerance):
    jax = pytest.importorskip("jax", reason="JAX is an optional peer (pip install jax)")
    x64 = jax.config.jax_enable_x64
    try:
        _check_against_numpy(lambda *a: bench_peers.jax_jit_epoch(*a, gpu=False), dtype,
                             tolerance)
    finally:
        jax.config.update("jax_enable_x64", x64)


# float32: the in-place step regroups the update as (1 - lr reg) W - lr dW (one addmm_), which
# rounds differently; the change of each parameter agrees to float32's rounding of the parameter
@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-3), ("float64", 1e-12)])
def test_torch_inplace_step_matches_numpy(dtype, tolerance):
    pytest.importorskip("torch", reason="PyTorch is an optional peer")
    _check_against_numpy(lambda *a: bench_peers.torch_eager_epoch(*a, gpu=False), dtype,
                         tolerance)


def test_torch_compiled_step_matches_numpy():
    pytest.importorskip("torch", reason="PyTorch is an optional peer")
    _check_against_numpy(lambda *a: bench_peers.torch_compile_graph_epoch(*a, gpu=False),
                         "float32", 1e-4)
