"""The class's statements, memory and transfers, views, labels and device pointers (core/ops.py:
"The array contract", "The device contract")."""

from __future__ import annotations

import numpy as np
import pytest

from core.ops import GEMM_MODES, Backend


def _host(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


# ---------------------------------------------------------------------------- the class
def test_class_statements(dpmlp_backend_cls):
    cls = dpmlp_backend_cls
    assert issubclass(cls, Backend)
    assert isinstance(cls.name, str) and cls.name and " " not in cls.name
    assert isinstance(cls.description, str)
    assert isinstance(cls.host_resident, bool)
    assert cls.priority is None or isinstance(cls.priority, int)
    assert "simt" in cls.gemm_modes and set(cls.gemm_modes) <= set(GEMM_MODES)
    assert cls.max_elements is None or (isinstance(cls.max_elements, int) and cls.max_elements > 0)
    available, reason = cls.availability()
    assert available is True and isinstance(reason, str)


def test_device_count(dpmlp_backend_cls):
    """A device backend that is available has a device; a host backend has none."""
    count = dpmlp_backend_cls.device_count()
    assert isinstance(count, int) and count >= 0
    if not dpmlp_backend_cls.host_resident:
        assert count >= 1, "an available device backend must see at least one device"


def test_rejects_unknown_dtype(dpmlp_backend_cls):
    with pytest.raises(ValueError):
        dpmlp_backend_cls("float16", None)


def test_instance_statements(dpmlp_backend, dpmlp_dtype):
    be = dpmlp_backend
    assert be.dtype == np.dtype(dpmlp_dtype)
    assert isinstance(be.describe_device(), str) and be.describe_device()
    assert be.gemm_mode == "simt"
    be.set_gemm_mode("simt")
    with pytest.raises(ValueError):
        be.set_gemm_mode("no-such-gemm")
    memory = be.device_memory()
    if memory is not None:
        free, total = memory
        assert 0 < int(free) <= int(total)


# ---------------------------------------------------------------------------- memory, transfers
@pytest.mark.parametrize("shape", ((3,), (4, 5), (4, 0), (0,), (1, 1)))
def test_empty_zeros_shape(dpmlp_backend, shape):
    be = dpmlp_backend
    for arr in (be.empty(shape), be.zeros(shape)):
        assert tuple(int(s) for s in arr.shape) == shape
    assert np.all(be.to_host(be.zeros(shape)) == 0)


@pytest.mark.parametrize("order", ("C", "F"))
def test_from_host_to_host_round_trip(dpmlp_backend, order):
    be = dpmlp_backend
    host = np.array(_host((7, 5)), order=order)
    arr = be.from_host(host)
    assert tuple(arr.shape) == (7, 5)
    back = be.to_host(arr)
    assert isinstance(back, np.ndarray) and back.shape == (7, 5)
    assert back.flags.f_contiguous, "to_host returns a column-major array"
    assert np.array_equal(back, host.astype(be.dtype)), "from_host rounds to the dtype, once"
    host[0, 0] = 1e6
    assert be.to_host(arr)[0, 0] != 1e6, "from_host copies"


def test_labels(dpmlp_backend):
    """Integer arrays: any integer dtype in; values out (the backend chooses its int type)."""
    be = dpmlp_backend
    for host in (np.array([0, 9, 3, 3, 1], np.int32), np.array([2, 0, 7], np.int64)):
        arr = be.from_host(host)
        back = be.to_host(arr)
        assert np.issubdtype(back.dtype, np.integer)
        assert np.array_equal(back, host)
        assert np.array_equal(be.to_host(be.cols(arr, 1, 3)), host[1:3])


def test_flat_views_are_views(dpmlp_backend):
    be = dpmlp_backend
    flat = be.from_host(np.arange(30, dtype=np.float64))
    a, b, c = be.flat_views(flat, [(2, 3), (4,), (5, 4)])
    assert tuple(a.shape) == (2, 3) and tuple(b.shape) == (4,) and tuple(c.shape) == (5, 4)
    assert np.array_equal(be.to_host(a), np.arange(6).reshape((2, 3), order="F"))
    assert np.array_equal(be.to_host(c), np.arange(10, 30).reshape((5, 4), order="F"))
    be.fill(b, -1.0)
    got = be.to_host(flat)
    assert np.all(got[6:10] == -1) and np.array_equal(got[10:], np.arange(10, 30))
    # a view of a column range of the flat buffer (the model's [dW b] blocks)
    (inner,) = be.flat_views(be.cols(flat, 10, 22), [(3, 4)])
    be.fill(inner, 5.0)
    assert np.all(be.to_host(flat)[10:22] == 5) and be.to_host(flat)[22] == 22


def test_cols_are_views(dpmlp_backend):
    be = dpmlp_backend
    m = be.from_host(_host((4, 9)))
    host = be.to_host(m)
    view = be.cols(m, 2, 5)
    assert tuple(view.shape) == (4, 3)
    assert np.array_equal(be.to_host(view), host[:, 2:5])
    assert tuple(be.cols(m, 3, 3).shape) == (4, 0)
    assert tuple(be.cols(m, 0, 9).shape) == (4, 9)
    be.fill(view, 0.0)
    host[:, 2:5] = 0
    assert np.array_equal(be.to_host(m), host)
    v = be.from_host(np.arange(10.0))
    assert np.array_equal(be.to_host(be.cols(v, 3, 7)), np.arange(3.0, 7.0))
    assert tuple(be.cols(v, 4, 4).shape) == (0,)
    # a column range of a column range (a rank's slice of a minibatch's columns)
    inner = be.cols(be.cols(m, 1, 8), 2, 4)
    assert np.array_equal(be.to_host(inner), be.to_host(m)[:, 3:5])


def test_staged_copies_of_flat_ranges(dpmlp_backend):
    """The host-staged MPI exchange: a column range of the flat buffer to and from a slice of
    ``host_buffer``."""
    be = dpmlp_backend
    flat = be.from_host(_host(50))
    staging = be.host_buffer(50)
    assert isinstance(staging, np.ndarray) and staging.shape == (50,)
    assert staging.dtype == be.dtype
    be.copy_to_host(be.cols(flat, 20, 50), staging[20:50])
    be.copy_to_host(be.cols(flat, 0, 20), staging[0:20])
    assert np.array_equal(staging, be.to_host(flat))
    staging *= 2
    be.copy_from_host(staging, flat)
    staging[:] = 0  # the host buffer may be reused once copy_from_host returns
    assert np.array_equal(be.to_host(flat), 2 * be.to_host(be.from_host(_host(50))))
    part = np.arange(5, dtype=be.dtype)
    be.copy_from_host(part, be.cols(flat, 10, 15))
    assert np.array_equal(be.to_host(flat)[10:15], part)


# ---------------------------------------------------------------------------- device pointers
def test_device_pointer(dpmlp_backend):
    """The address of the view's first element, stable; host backends raise."""
    be = dpmlp_backend
    flat = be.zeros((100,))
    if be.host_resident:
        with pytest.raises(NotImplementedError):
            be.device_pointer(flat)
        return
    size = be.dtype.itemsize
    base = be.device_pointer(flat)
    assert isinstance(base, int) and base != 0
    assert be.device_pointer(flat) == base, "the same array has the same address"
    assert be.device_pointer(be.cols(flat, 30, 60)) == base + 30 * size
    w, v = be.flat_views(flat, [(4, 5), (7,)])
    assert be.device_pointer(w) == base and be.device_pointer(v) == base + 20 * size
    m = be.zeros((6, 10))
    assert be.device_pointer(be.cols(m, 3, 7)) == be.device_pointer(m) + 3 * 6 * size
