"""Streams, synchronisation and CUDA-graph capture (core/ops.py, "The device contract").
Host backends skip the stream tests; backends without graphs skip the capture tests with the
reason their ``graph_support()`` gives."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def device_backend(dpmlp_backend):
    if dpmlp_backend.host_resident:
        pytest.skip(f"backend {dpmlp_backend.name} is host-resident: no stream, no device")
    return dpmlp_backend


@pytest.fixture
def graph_backend(dpmlp_backend):
    ok, why = dpmlp_backend.graph_support()
    if not ok:
        pytest.skip(f"no CUDA graphs: {why}")
    return dpmlp_backend


def test_stream_handle_is_constant(device_backend):
    be = device_backend
    handle = be.stream_handle()
    assert isinstance(handle, int)
    x = be.zeros((64, 64))
    be.gemm(x, x, be.empty((64, 64)))
    be.synchronize()
    assert be.stream_handle() == handle, "stream_handle() changed during the instance's life"
    if be.graph_support()[0]:
        assert handle != 0, "graphs cannot be captured on the legacy default stream (0)"


def test_synchronize_then_results_are_there(device_backend):
    be = device_backend
    n = 256
    a = be.from_host(np.ones((n, n)))
    c = be.empty((n, n))
    for _ in range(3):
        be.gemm(a, a, c)
    be.synchronize()
    assert np.all(be.to_host(c) == n)


def _sequence(be, st):
    """A small training-like sequence: every kind of op the trainer captures."""
    be.gemm_bias_sigmoid(st["w"], st["x"], st["b"], st["a"])
    be.output_layer(st["w2"], st["b2"], st["a"], st["labels"], 0.1, st["diff"], st["nll"])
    be.gemm_with_bias_grad(st["diff"], st["a"], st["g2"])
    be.gemm_sigmoid_backward(st["w2"], st["diff"], st["a"], st["dz"])
    be.gemm_with_bias_grad(st["dz"], st["x"], st["g1"])
    be.axpy(-0.5, be.cols(st["g1"], 0, 12), st["w"])  # parameters change: each replay differs


SHAPES = {"w": (8, 12), "x": (12, 9), "b": (8,), "w2": (10, 8), "b2": (10,), "a": (8, 9),
          "diff": (10, 9), "nll": (1,), "g2": (10, 9), "dz": (8, 9), "g1": (8, 13)}


def _state(be):
    """Every float array as a view of one flat buffer (so that one copy_from_host resets it),
    the labels apart; and the flat buffer's initial host contents."""
    g = np.random.default_rng(0)
    sizes = [int(np.prod(s)) for s in SHAPES.values()]
    init = g.standard_normal(sum(sizes)).astype(be.dtype) * 0.5
    init[sum(sizes[:7])] = 0.0  # nll (the 8th array) starts at 0
    flat = be.from_host(init)
    st = dict(zip(SHAPES, be.flat_views(flat, list(SHAPES.values()))))
    st["labels"] = be.from_host(g.integers(0, 10, 9).astype(np.int32))
    return flat, init, st


def _snapshot(be, st):
    return {k: be.to_host(v).tobytes() for k, v in st.items()}


def test_capture_replays_the_eager_bits(graph_backend):
    """The capture protocol: eager warm-up, begin_capture, the ops, end_capture; two launches
    give the bits of two eager runs."""
    be = graph_backend
    flat, init, st = _state(be)
    _sequence(be, st)  # the eager warm-up (lazy allocations, JIT compilation)
    be.copy_from_host(init, flat)
    _sequence(be, st)
    _sequence(be, st)
    be.synchronize()
    want = _snapshot(be, st)

    be.copy_from_host(init, flat)
    be.begin_capture()
    try:
        _sequence(be, st)
    finally:
        graph = be.end_capture()
    be.copy_from_host(init, flat)  # whether or not capturing ran the work, start again
    graph.launch()
    graph.launch()
    be.synchronize()
    got = _snapshot(be, st)
    assert got == want, "graph replays differ from the eager run: " + ", ".join(
        k for k in want if got[k] != want[k])
