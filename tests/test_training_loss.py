"""The training loss DataParallelTrainer.train_epoch reports: the mean cross-entropy
over the epoch's samples plus the reg term, computed from the logits (Backend.output_layer), so it
stays finite where the old -log(softmax) overflowed to inf in float32 (a probability below the
smallest float), and agrees with the float64 formula."""

import numpy as np
import pytest

from backends.ops_numpy import NumpyBackend
from comm.single import SingleCommunicator
from core.data_parallel import DataParallelTrainer, TrainConfig
from core.model import CLASSES, INPUTS, MLP
from model_helpers import softmax_nll_sum

H, N, B, REG = 16, 45, 20, 0.01


def _problem(seed=3):
    rng = np.random.default_rng(seed)
    x = np.asfortranarray(rng.uniform(0, 1, (INPUTS, N)))
    labels = rng.integers(0, CLASSES, N).astype(np.int32)
    params = {"W1": 0.05 * rng.standard_normal((H, INPUTS)), "b1": np.zeros(H),
              "W2": 60.0 * rng.standard_normal((CLASSES, H)), "b2": np.zeros(CLASSES)}
    return x, labels, params


def _loss64(params, x, labels):
    """Mean cross-entropy from the logits, in float64, plus (reg/2)(||W1||^2 + ||W2||^2)."""
    a1 = 1.0 / (1.0 + np.exp(-(params["W1"] @ x + params["b1"][:, None])))
    z = params["W2"] @ a1 + params["b2"][:, None]
    m = z.max(axis=0)
    lse = m + np.log(np.exp(z - m).sum(axis=0))
    ce = np.mean(lse - z[labels, np.arange(x.shape[1])])
    return ce + 0.5 * REG * (np.sum(params["W1"] ** 2) + np.sum(params["W2"] ** 2))


def _cast(params, dtype):
    return {k: v.astype(dtype).astype(np.float64) for k, v in params.items()}


def test_old_loss_overflows_in_float32():
    """The premise: these logits make -log(softmax) inf in float32."""
    x, labels, params = _problem()
    model = MLP(NumpyBackend("float32"), H, N, params)
    with np.errstate(divide="ignore"):
        assert np.isinf(softmax_nll_sum(model, x, labels))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_epoch_loss_is_finite_and_matches_float64(dtype):
    """lr = 0 keeps the parameters fixed through the epoch (three steps, a smaller last batch), so
    the reported loss is the float64 loss of those parameters (as cast to the dtype)."""
    x, labels, params = _problem()
    cfg = TrainConfig(hidden=H, reg=REG, lr=0.0, epochs=1, batch_size=B, dtype=dtype)
    trainer = DataParallelTrainer(NumpyBackend(dtype), SingleCommunicator(), cfg,
                                  x.astype(dtype), labels, params=params)
    loss = trainer.train_epoch()
    expected = _loss64(_cast(params, dtype), x.astype(dtype).astype(np.float64), labels)
    assert expected > 100  # logits hundreds apart: a large but finite loss
    assert np.isfinite(loss)
    assert loss == pytest.approx(expected, rel=1e-5 if dtype == "float32" else 1e-12)
    assert trainer.train_epoch() == loss  # the sum restarts every epoch
