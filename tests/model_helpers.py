"""Parts of a training step that the product only ever takes together, taken apart for the tests.

Training adds the reg term inside the fused SGD step (``MLP.update``), sums the gradient in two
overlapped halves (``GradientExchange.start``/``finish``) and computes the loss from the logits
inside the fused output layer; the gradient checks want the regularised gradient on its own, the
exchange tests the whole sum in one call, and the loss tests the loss of the softmax.
"""

from __future__ import annotations


def add_regularisation(model, reg: float) -> None:
    """dW += reg W on the model's gradient alone (biases unpenalised), as ``update`` does before
    its step."""
    if reg:
        model.backend.axpy(reg, model.W1, model.dW1)
        model.backend.axpy(reg, model.W2, model.dW2)


def softmax_nll_sum(model, x, labels) -> float:
    """The summed -log yhat_label over the columns of host ``x``, from the softmax of the
    evaluation pass (``MLP.forward``) through ``nll_sum``: the loss as the probabilities give it,
    not as training computes it from the logits."""
    be = model.backend
    _, yhat = model.forward(be.from_host(x))
    acc = be.zeros((1,))
    be.nll_sum(yhat, be.from_host(labels), acc)
    return float(acc[0])


def exchange_whole(exchange) -> None:
    """Sum the whole flat buffer over the ranks: the output layer's part, then the hidden
    layer's, with nothing computed in between."""
    exchange.start()
    exchange.finish()
