"""How a minibatch is cut over ranks (core/data_parallel.py): split_counts gives the course's
sizes (the first B mod P ranks one sample more), rank_slice contiguous column ranges that cover the
minibatch without gap or overlap, including B < P (ranks with no samples).
"""

import pytest

from core.data_parallel import rank_slice, split_counts

def test_split_counts_course_example():
    assert split_counts(800, 3) == [267, 267, 266]


@pytest.mark.parametrize("batch,ranks", [(800, 3), (67, 3), (67, 4), (100, 1), (2, 3), (2, 4),
                                         (1, 4), (0, 3), (5, 5), (13, 6)])
def test_split_counts_rule(batch, ranks):
    counts = split_counts(batch, ranks)
    assert len(counts) == ranks and sum(counts) == batch
    for r, c in enumerate(counts):
        assert c == batch // ranks + (1 if r < batch % ranks else 0)
    assert max(counts) - min(counts) <= 1
    assert counts == sorted(counts, reverse=True)


def test_split_counts_batch_smaller_than_ranks():
    assert split_counts(2, 4) == [1, 1, 0, 0]
    assert split_counts(2, 3) == [1, 1, 0]


@pytest.mark.parametrize("start,batch,ranks", [(0, 800, 3), (268, 67, 3), (1000, 2, 4),
                                               (5, 32, 4), (0, 1, 2), (10, 7, 7)])
def test_rank_slice_contiguous_cover(start, batch, ranks):
    slices = [rank_slice(start, batch, ranks, r) for r in range(ranks)]
    assert slices[0][0] == start and slices[-1][1] == start + batch
    for (lo, hi), (lo2, _) in zip(slices, slices[1:]):
        assert hi == lo2  # contiguous, no gap and no overlap
    for (lo, hi), count in zip(slices, split_counts(batch, ranks)):
        assert hi - lo == count and lo <= hi


def test_rank_slice_course_example():
    assert [rank_slice(0, 800, 3, r) for r in range(3)] == [(0, 267), (267, 534), (534, 800)]
    assert [rank_slice(10, 2, 4, r) for r in range(4)] == [(10, 11), (11, 12), (12, 12), (12, 12)]
