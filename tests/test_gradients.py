"""The model's loss and gradients (core/model.py): a central finite-difference check, in float64,
of the full loss J of docs/spec.md ("Loss") w.r.t. sampled entries of W1, b1, W2, b2, through MLP.forward /
backward + the reg term; gradients of a batch cut into pieces (as ranks cut it) summing to
the whole batch's; the SGD step, the flat parameter layout and the initial weights.
"""

import numpy as np
import pytest

from backends.ops_numpy import NumpyBackend
from core.model import CLASSES, INPUTS, MLP, PARAM_NAMES, init_params
from model_helpers import add_regularisation, softmax_nll_sum

H, NS, REG = 7, 13, 0.1


def _problem(seed=5):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, size=(INPUTS, NS))
    labels = rng.integers(0, CLASSES, size=NS)
    # Weights larger than the reference 0.01 init so that every gradient entry is well above
    # the rounding noise of the finite difference (and the sigmoid is off its linear part).
    params = {
        "W1": 0.05 * rng.standard_normal((H, INPUTS)),
        "b1": 0.3 * rng.standard_normal(H),
        "W2": 0.5 * rng.standard_normal((CLASSES, H)),
        "b2": 0.3 * rng.standard_normal(CLASSES),
    }
    return x, labels, params


def _loss(params, x, labels, reg):
    """J of docs/spec.md ("Loss") written out directly in float64: mean CE + reg/2 (||W1||^2 + ||W2||^2)."""
    z1 = params["W1"] @ x + params["b1"][:, None]
    a1 = 1.0 / (1.0 + np.exp(-z1))
    z2 = params["W2"] @ a1 + params["b2"][:, None]
    z2 = z2 - z2.max(axis=0, keepdims=True)
    logp = z2 - np.log(np.exp(z2).sum(axis=0, keepdims=True))
    ce = -logp[labels, np.arange(x.shape[1])].mean()
    return ce + 0.5 * reg * (np.sum(params["W1"] ** 2) + np.sum(params["W2"] ** 2))


def _model_gradient(params, x, labels, reg, split=None):
    """Gradient from MLP.forward/backward + the reg term (model_helpers.add_regularisation).
    With ``split``, the batch is cut into contiguous pieces whose contributions are summed, the
    way ranks do it."""
    be = NumpyBackend("float64")
    model = MLP(be, H, NS, params)
    total = np.zeros(model.size)
    X, Y = be.from_host(x), be.from_host(labels)
    pieces = split or [NS]
    lo = 0
    for count in pieces:
        xs, ys = be.cols(X, lo, lo + count), be.cols(Y, lo, lo + count)
        a1 = yhat = None
        if count:
            a1, yhat = model.forward(xs)
        model.backward(xs, ys, a1, yhat, global_batch=NS)
        total += model.flat_grads
        lo += count
    model.flat_grads[...] = total
    add_regularisation(model, reg)
    grads = {"W1": model.dW1.copy(), "b1": model.db1.copy(), "W2": model.dW2.copy(),
             "b2": model.db2.copy()}
    return grads, model


def test_model_loss_matches_formula():
    x, labels, params = _problem()
    be = NumpyBackend("float64")
    model = MLP(be, H, NS, params)
    J = softmax_nll_sum(model, x, labels) / NS + model.reg_loss(REG)
    assert J == pytest.approx(_loss(params, x, labels, REG), rel=1e-13)


@pytest.mark.parametrize("reg", [REG, 0.0])
def test_gradient_finite_differences(reg):
    x, labels, params = _problem()
    grads, _ = _model_gradient(params, x, labels, reg)
    rng = np.random.default_rng(7)
    h = 1e-5
    worst = 0.0
    for name in PARAM_NAMES:
        p = params[name]
        flat_idx = rng.choice(p.size, size=min(p.size, 25), replace=False)
        for fi in flat_idx:
            idx = np.unravel_index(fi, p.shape)
            old = p[idx]
            p[idx] = old + h
            plus = _loss(params, x, labels, reg)
            p[idx] = old - h
            minus = _loss(params, x, labels, reg)
            p[idx] = old
            numeric = (plus - minus) / (2 * h)
            analytic = grads[name][idx]
            rel = abs(numeric - analytic) / max(abs(numeric), abs(analytic), 1e-300)
            worst = max(worst, rel)
            assert rel < 1e-6, f"{name}{idx}: numeric {numeric!r} analytic {analytic!r} rel {rel:.2e}"
    assert worst < 1e-6


def test_split_contributions_sum_to_whole_batch_gradient():
    """Normalising by the GLOBAL size and adding reg once makes the sum of the pieces' gradients
    (including an empty piece) equal the whole batch's, to rounding."""
    x, labels, params = _problem()
    whole, _ = _model_gradient(params, x, labels, REG)
    parts, _ = _model_gradient(params, x, labels, REG, split=[5, 0, 4, 4])
    for name in PARAM_NAMES:
        np.testing.assert_allclose(parts[name], whole[name], rtol=1e-12, atol=1e-15)


def test_backward_with_no_samples_gives_zero_gradient():
    _, _, params = _problem()
    be = NumpyBackend("float64")
    model = MLP(be, H, 4, params)
    be.fill(model.flat_grads, np.nan)
    model.backward(be.empty((INPUTS, 0)), be.from_host(np.zeros(0, np.int32)), None, None, 13)
    assert (model.flat_grads == 0).all()
    add_regularisation(model, REG)
    np.testing.assert_array_equal(model.dW1, REG * params["W1"])
    assert (model.db1 == 0).all() and (model.db2 == 0).all()


def test_sgd_step_and_flat_layout():
    x, labels, params = _problem()
    grads, model = _model_gradient(params, x, labels, REG)
    model.update(0.0, 0.5)  # the gradient already holds the reg term
    after = model.params_to_host()
    for name in PARAM_NAMES:
        np.testing.assert_allclose(after[name], params[name] - 0.5 * grads[name], rtol=1e-15,
                                   atol=1e-17)
    # W1, b1, W2, b2 back to back, each column-major
    assert model.size == H * INPUTS + H + CLASSES * H + CLASSES
    np.testing.assert_array_equal(model.flat_params, np.concatenate(
        [np.ravel(after[name], order="F") for name in PARAM_NAMES]))


def test_fused_update_equals_regularisation_then_step_bitwise():
    """update(reg, lr) is the reg term then p -= lr dp, bit for bit, biases unpenalised."""
    x, labels, params = _problem()
    _, fused = _model_gradient(params, x, labels, 0.0)
    _, plain = _model_gradient(params, x, labels, 0.0)
    fused.update(REG, 0.5)
    add_regularisation(plain, REG)
    plain.backend.axpy(-0.5, plain.flat_grads, plain.flat_params)
    np.testing.assert_array_equal(fused.flat_params, plain.flat_params)
    np.testing.assert_array_equal(fused.flat_grads, plain.flat_grads)


def test_init_params_deterministic_and_reference_scale():
    a, b = init_params(32, 3), init_params(32, 3)
    for name in PARAM_NAMES:
        np.testing.assert_array_equal(a[name], b[name])
    assert a["W1"].shape == (32, INPUTS) and a["W2"].shape == (CLASSES, 32)
    assert not a["b1"].any() and not a["b2"].any()
    assert 0.008 < a["W1"].std() < 0.012
    assert not np.array_equal(init_params(32, 4)["W1"], a["W1"])
