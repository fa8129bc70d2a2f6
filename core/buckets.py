"""Gradient buckets: the hidden layer's gradient computed in column blocks, each bucket's sum over
ranks started while the next blocks are computed (as DDP's gradient buckets), ``--bucket-mb``.

[dW1 db1] is one H x 785 column-major matrix at the head of the flat gradient buffer
(``ParamLayout.grad_blocks``), so a range of its columns is one contiguous range of the buffer:
a bucket is such a range, summed with one ``allreduce_sum_start`` (MPI Iallreduce; NCCL on its
second stream) as soon as its columns are computed.

Why the bits do not depend on the bucket size:

* **The blocks are fixed.** Whenever buckets are in use (more than one rank, not --exact) the
  hidden layer's gradient is computed in the same column blocks of ``BLOCK_COLS`` columns (7
  blocks of 785 columns, the last with the bias column), whatever ``--bucket-mb`` is; a bucket is
  a run of whole blocks. Every GEMM call, and so every rounding, is the same for every bucket
  size: a backend whose GEMM plans its tiling or split-K from the shape (the GPU backends) gives
  the same bits too. ``--bucket-mb 0`` is the unbucketed exchange: the same blocks, one sum of
  the whole hidden layer after its last block.
* **A sum per element does not change with the message.** MPI's Iallreduce must then sum each
  element in an order that does not depend on the message's size or offset. Open MPI's
  non-blocking collectives (coll/libnbc) reduce an in-place buffer with a binomial tree
  (independent of the count) unless told otherwise; its ring algorithm is not (an element's
  order follows its segment). comm/mpi.py pins the binomial choice (``OMPI_MCA_...``, unless the
  user set it), tests/test_buckets.py checks the bits under mpirun -n 1..4. With two ranks every
  algorithm gives the same bits (a + b = b + a). NCCL's ring and tree with three or more ranks
  order each element by its chunk of the message: there a bucket size changes the rounding.

The blocks need the rows of the rank's samples x[j0:j1, lo:hi], which are not a column view of
the 784 x N data set; so the data set is kept a second time, cut by rows into one
(j1 - j0) x N matrix per block, whose column views are contiguous (the ops contract has no row
views). That doubles the training set's memory on each rank (core/preflight.py counts it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.model import INPUTS

#: columns of [dW1 db1] per block (the GPU GEMM tiles are 64 or 128 wide): 785 = 6 x 128 + 17
BLOCK_COLS = 128
#: --bucket-mb's default, MiB: [dW1 db1] at H=256 (0.8 MB in float32) is one bucket, at H=1024
#: (3.2 MB) four, at H=4096 (12.9 MB) seven, one block each
DEFAULT_BUCKET_MB = 1.0
MIB = 1 << 20


def column_blocks(cols: int = INPUTS + 1, width: int = BLOCK_COLS) -> list[tuple[int, int]]:
    """The fixed column blocks [j0, j1) of [dW1 db1] (``cols`` columns, the bias last)."""
    bounds = list(range(0, cols, width)) + [cols]
    return list(zip(bounds[:-1], bounds[1:]))


def plan_buckets(hidden: int, itemsize: int, bucket_mb: float,
                 blocks: list[tuple[int, int]] | None = None) -> list[tuple[int, int]]:
    """Buckets as ranges [first, stop) of block indices: consecutive blocks while the bucket
    stays within ``bucket_mb`` MiB, at least one block each; 0 (or less): one bucket of all."""
    blocks = column_blocks() if blocks is None else blocks
    if bucket_mb <= 0:
        return [(0, len(blocks))]
    limit, buckets, first, size = bucket_mb * MIB, [], 0, 0
    for k, (j0, j1) in enumerate(blocks):
        block = (j1 - j0) * hidden * itemsize
        if k > first and size + block > limit:
            buckets.append((first, k))
            first, size = k, 0
        size += block
    buckets.append((first, len(blocks)))
    return buckets


def describe_buckets(hidden: int, itemsize: int, bucket_mb: float) -> str:
    """One line: how the hidden layer's gradient is bucketed (for the CLI's start-up lines)."""
    blocks = column_blocks()
    buckets = plan_buckets(hidden, itemsize, bucket_mb, blocks)
    sizes = [hidden * itemsize * (blocks[b - 1][1] - blocks[a][0]) / MIB for a, b in buckets]
    if bucket_mb <= 0:
        return (f"gradient buckets off (--bucket-mb 0): the hidden layer's {sizes[0]:.2f} MiB "
                f"summed once, after its {len(blocks)} column blocks")
    if len(buckets) == 1:
        return (f"gradient buckets: 1 (the hidden layer's {sizes[0]:.2f} MiB fits --bucket-mb "
                f"{bucket_mb:g}), summed after its last block")
    return (f"gradient buckets: {len(buckets)} of about {max(sizes):.2f} MiB "
            f"(--bucket-mb {bucket_mb:g}) for the hidden layer's {sum(sizes):.2f} MiB, each "
            f"summed while the next is computed")


def buckets_apply(ranks: int, exact: bool) -> bool:
    """Whether a run computes the hidden layer in blocks and exchanges it by buckets."""
    return ranks > 1 and not exact


@dataclass
class _Block:
    cols: tuple[int, int]   # [j0, j1) of [dW1 db1]
    x_rows: object          # the data set's rows [j0, min(j1, 784)) as one matrix
    out: object             # columns [j0, j1) of [dW1 db1]: a view of the flat gradient
    bias: bool              # the last block: its last column is db1


class BucketedHiddenGrad:
    """The hidden layer's backward pass in fixed column blocks, a bucket's sum started as soon
    as its blocks are done. Built once per trainer from the host data set; allocates nothing
    per step."""

    def __init__(self, backend, model, train_x: np.ndarray, bucket_mb: float):
        self.backend, self.model = backend, model
        blocks = column_blocks()
        self.buckets = plan_buckets(model.hidden, backend.dtype.itemsize, bucket_mb, blocks)
        self.hidden = model.hidden
        self.blocks = [
            _Block((j0, j1), backend.from_host(np.asfortranarray(train_x[j0:min(j1, INPUTS)])),
                   backend.cols(model.dW1b1, j0, j1), j1 > INPUTS)
            for j0, j1 in blocks]

    def flat_range(self, bucket: tuple[int, int]) -> tuple[int, int]:
        """Elements [lo, hi) of the flat gradient buffer that a bucket of blocks covers."""
        first, stop = bucket
        return self.blocks[first].cols[0] * self.hidden, self.blocks[stop - 1].cols[1] * self.hidden

    def _block(self, block: _Block, dz1, lo: int, hi: int) -> None:
        be = self.backend
        x = be.cols(block.x_rows, lo, hi)
        if block.bias:   # dW1 of the last pixels and db1 = sum_j dz1: the ones column
            be.gemm_with_bias_grad(dz1, x, block.out)
        else:            # dW1[:, j0:j1] = dz1 x[j0:j1]^T
            be.gemm(dz1, x, block.out, trans_b=True)

    def backward(self, exchange, x, a1, diff, lo: int, hi: int) -> None:
        """Each bucket's blocks from the dz1 that backward_output computed, and the bucket's sum
        (``exchange.start_span``); every rank starts every bucket, one without samples with its
        zeros (backward_output wrote them)."""
        n = hi - lo
        dz1 = self.model.hidden_error(n) if n > 0 else None
        for bucket in self.buckets:
            if n > 0:
                for block in self.blocks[bucket[0]:bucket[1]]:
                    self._block(block, dz1, lo, hi)
            exchange.start_span(*self.flat_range(bucket))
