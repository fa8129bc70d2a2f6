"""Parts of a training step that the product only ever takes together, taken apart for the tests.

Training adds the reg term inside the fused SGD step (``MLP.update``) and sums the gradient in
two overlapped halves (``GradientExchange.start``/``finish``); the gradient checks want the
regularised gradient on its own, and the exchange tests the whole sum in one call.
"""

from __future__ import annotations


def add_regularisation(model, reg: float) -> None:
    """dW += reg W on the model's gradient alone (biases unpenalised), as ``update`` does before
    its step."""
    if reg:
        model.backend.axpy(reg, model.W1, model.dW1)
        model.backend.axpy(reg, model.W2, model.dW2)


def exchange_whole(exchange) -> None:
    """Sum the whole flat buffer over the ranks: the output layer's part, then the hidden
    layer's, with nothing computed in between."""
    exchange.start()
    exchange.finish()
