"""Stop and resume on the GPU backends: a run stopped at a step boundary and continued from its
parameters, position and partial loss ends with parameters bit-identical to the run that never
stopped, with CUDA graphs (epochs replayed from one graph) and without."""

from __future__ import annotations

import numpy as np
import pytest

from comm.single import SingleCommunicator
from conftest import backend_or_skip
from core.data_parallel import DataParallelTrainer, TrainConfig, scale_images

pytestmark = pytest.mark.gpu


def _trainer(backend, graphs, params=None):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (280, 784), dtype=np.uint8)
    labels = rng.integers(0, 10, 280).astype(np.int32)
    x = scale_images(images[:230], "unit", backend.dtype.type)
    vx = scale_images(images[230:], "unit", backend.dtype.type)
    # 230 samples in batches of 20: 12 steps an epoch, the last one of 10
    config = TrainConfig(hidden=24, epochs=3, batch_size=20, dtype=backend.dtype.name, lr=0.5,
                         reg=0.01)
    return DataParallelTrainer(backend, SingleCommunicator(), config, x, labels[:230], vx,
                               labels[230:], params=params, cuda_graphs=graphs)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", ["cupy", "pycuda"])
@pytest.mark.parametrize("stop_at,graphs", [((1, 12), "auto"), ((2, 12), "on"),
                                            ((2, 7), "off"), ((1, 1), "off")])
def test_stop_and_resume_is_bit_identical(name, dtype, stop_at, graphs):
    whole = _trainer(backend_or_skip(name, dtype), graphs)
    whole.train()
    first = _trainer(backend_or_skip(name, dtype), graphs)
    first.train(on_step=lambda e, s: (e, s) == stop_at)
    epoch, step = stop_at
    expected = (epoch + 1, 0) if step == first.steps_per_epoch else (epoch, step)
    assert first.stopped_at == expected
    nll = first.partial_nll()
    # the rest with graphs wherever they work: a partial first epoch runs eagerly
    second = _trainer(backend_or_skip(name, dtype), "auto", params=first.params())
    second.set_partial_nll(nll)
    second.train(start_epoch=expected[0], first_step=expected[1])
    for key, value in whole.params().items():
        np.testing.assert_array_equal(value, second.params()[key], err_msg=key)
