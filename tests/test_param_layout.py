"""The one description of the parameters (core.model.ParamLayout) and what is derived from it."""

import numpy as np

from core.model import CLASSES, INPUTS, ParamLayout, init_params


def test_offsets_pack_and_unpack_agree():
    layout = ParamLayout(7)
    params = init_params(7, seed=3)
    params["b1"][:] = np.arange(7)
    flat = layout.pack(params)
    assert flat.size == layout.size == 7 * INPUTS + 7 + CLASSES * 7 + CLASSES
    assert layout.output_layer_offset == 7 * (INPUTS + 1)
    assert np.array_equal(flat[layout["b1"].offset:layout["b1"].offset + 7], np.arange(7))
    back = layout.unpack(flat)
    for name, value in params.items():
        assert np.array_equal(back[name], value) and back[name].flags.f_contiguous


def test_gemm_shapes_are_the_step_products():
    """Each (m, n, k) is the shape NumPy gives the product written with the real operands."""
    h, n = 5, 3
    p = {k: np.ones(v.shape) for k, v in init_params(h, 0).items()}
    x, a1, diff, dz1 = np.ones((INPUTS, n)), np.ones((h, n)), np.ones((CLASSES, n)), np.ones((h, n))
    products = {"z1=W1 x": (p["W1"], x), "z2=W2 a1": (p["W2"], a1), "dW2=diff a1^T": (diff, a1.T),
                "da1=W2^T diff": (p["W2"].T, diff), "dW1=dz1 x^T": (dz1, x.T)}
    shapes = ParamLayout(h).gemm_shapes(n)
    assert [g.name for g in shapes] == list(products)
    for g in shapes:
        a, b = products[g.name]
        assert (g.m, g.n, g.k) == (a.shape[0], b.shape[1], a.shape[1]) == (*(a @ b).shape, b.shape[0])
