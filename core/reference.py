"""The yardstick of ``--verify``: the MLP of docs/spec.md as a plain single-process SGD loop in
NumPy float64.

Written from docs/spec.md's formulas alone, beside the trainer rather than on top of it (as llm.c
keeps ``train_gpt2.c`` beside its kernels): its own data split, scaling, initialisation, minibatch
schedule, forward, backward, softmax and update. It imports nothing from the trainer, the model,
the ops contract or any backend, so a bug in the shared training loop cannot cancel out of a
comparison with it. Arrays are ordinary NumPy float64; matrices hold one sample per column.
"""

from __future__ import annotations

import math

import numpy as np

INPUTS = 784
CLASSES = 10
NAMES = ("W1", "b1", "W2", "b2")


# ---------------------------------------------------------------------------- data
def split(total: int, train_size: int | None, val_size: int | None) -> tuple[range, range]:
    """(training rows, validation rows) of the training file: the validation set is held out from
    the END of the file (default a tenth, 6000 of 60000), training uses the first rows."""
    val = total // 10 if val_size is None else val_size
    train = total - val if train_size is None else train_size
    return range(0, train), range(total - val, total)


def scale(images: np.ndarray, how: str) -> np.ndarray:
    """uint8 images, one per row -> float64 matrix with one image per column; "unit": / 255."""
    x = np.asarray(images, dtype=np.float64).T
    return x / 255.0 if how == "unit" else x


def schedule(n: int, batch: int) -> list[tuple[int, int]]:
    """(start, size) of every minibatch of an epoch: ceil(n / B) batches in file order, the last
    one holding what is left (n - B (nb - 1))."""
    nb = math.ceil(n / batch)
    return [(i * batch, batch if i < nb - 1 else n - batch * (nb - 1)) for i in range(nb)]


# ---------------------------------------------------------------------------- model
def init_params(hidden: int, seed: int) -> dict[str, np.ndarray]:
    """W = 0.01 N(0, 1) from ``np.random.default_rng(seed)``, W1 drawn before W2; b = 0."""
    rng = np.random.default_rng(seed)
    w1 = 0.01 * rng.standard_normal((hidden, INPUTS))
    w2 = 0.01 * rng.standard_normal((CLASSES, hidden))
    return {"W1": w1, "b1": np.zeros(hidden), "W2": w2, "b2": np.zeros(CLASSES)}


def forward(p: dict[str, np.ndarray], x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """a1 = sigmoid(W1 x + b1), yhat = softmax(W2 a1 + b2) (stable: the column max subtracted)."""
    with np.errstate(over="ignore"):  # exp(-z) = inf for very negative z gives sigmoid 0: right
        a1 = 1.0 / (1.0 + np.exp(-(p["W1"] @ x + p["b1"][:, None])))
    z2 = p["W2"] @ a1 + p["b2"][:, None]
    e = np.exp(z2 - z2.max(axis=0, keepdims=True))
    return a1, e / e.sum(axis=0, keepdims=True)


def gradients(p: dict[str, np.ndarray], x: np.ndarray, labels: np.ndarray,
              reg: float) -> dict[str, np.ndarray]:
    """The whole minibatch's gradient of J = mean cross-entropy + (reg/2)(|W1|^2 + |W2|^2)."""
    n = x.shape[1]
    a1, yhat = forward(p, x)
    diff = yhat.copy()
    diff[np.asarray(labels, dtype=np.intp), np.arange(n)] -= 1.0
    diff /= n
    da1 = p["W2"].T @ diff
    dz1 = da1 * a1 * (1.0 - a1)
    return {"W1": dz1 @ x.T + reg * p["W1"], "b1": dz1.sum(axis=1),
            "W2": diff @ a1.T + reg * p["W2"], "b2": diff.sum(axis=1)}


def sgd(p: dict[str, np.ndarray], g: dict[str, np.ndarray], lr: float) -> dict[str, np.ndarray]:
    """p - lr g, parameter by parameter."""
    return {k: p[k] - lr * g[k] for k in NAMES}


def step(p, x, labels, reg, lr):
    """One SGD step: returns (gradient, new parameters)."""
    g = gradients(p, x, labels, reg)
    return g, sgd(p, g, lr)


def train(images: np.ndarray, labels: np.ndarray, how: str, hidden: int, batch: int, epochs: int,
          reg: float, lr: float, seed: int, on_epoch=None) -> dict[str, np.ndarray]:
    """The whole training from the seed (``--verify=final``); ``on_epoch(epoch, params)``."""
    p = init_params(hidden, seed)
    plan = schedule(len(labels), batch)
    for epoch in range(1, epochs + 1):
        for start, size in plan:
            _, p = step(p, scale(images[start:start + size], how), labels[start:start + size],
                        reg, lr)
        if on_epoch:
            on_epoch(epoch, p)
    return p
