"""Split-K's K ranges cover K (issue 21: a chunk rounded down, so that the S ranges miss the end
of K, survived the whole suite). A property test over every K up to 4096 and every S, using only
backends/gemm_plan.py's public names: split_chunk, pick_gemm_split, SPLIT_K_ALIGN,
GEMM_SPLIT_MAX, GEMM_SPLIT_TILES. No GPU needed: the kernels compute the same ranges
(gemm.cuh split_k_range: block z multiplies k = z*chunk .. min(z*chunk + chunk, K) - 1)."""

from __future__ import annotations

from backends.gemm_plan import (GEMM_SPLIT_MAX, GEMM_SPLIT_TILES, SPLIT_K_ALIGN, pick_gemm_split,
                                split_chunk)

MAX_K = 4096


def ranges(k: int, split: int) -> list[tuple[int, int]]:
    """The [start, end) of K each of the ``split`` blocks multiplies, as the kernels do."""
    chunk = split_chunk(k, split)
    return [(min(z * chunk, k), min(z * chunk + chunk, k)) for z in range(split)]


def test_the_ranges_cover_k_exactly_and_are_aligned_for_every_k_and_s():
    for k in range(1, MAX_K + 1):
        for split in range(1, 2 * GEMM_SPLIT_MAX + 1):
            chunk = split_chunk(k, split)
            assert split * chunk >= k, (k, split, chunk)  # the end of K is reached
            if split > 1:
                assert chunk % SPLIT_K_ALIGN == 0 and chunk > 0, (k, split, chunk)
                assert chunk - SPLIT_K_ALIGN < -(-k // split), (k, split, chunk)  # no coarser
            else:
                assert chunk == k
            covered = ranges(k, split)
            assert covered[0][0] == 0 and covered[-1][1] == k, (k, split)
            for (_, end), (start, _) in zip(covered, covered[1:]):
                assert end == start, (k, split, covered)  # contiguous, no overlap
            assert sum(e - s for s, e in covered) == k


def test_the_planner_picks_splits_that_leave_no_range_empty():
    shapes = [(10, 800), (256, 800), (256, 3200), (1024, 800), (16, 3200), (4096, 800)]
    for tile in GEMM_SPLIT_TILES:
        for m, n in shapes:
            for k in range(1, MAX_K + 1, 3):
                split = pick_gemm_split(tile, m, n, k, 132)
                assert 1 <= split <= GEMM_SPLIT_MAX, (tile, m, n, k, split)
                covered = ranges(k, split)
                assert covered[-1][1] == k, (tile, m, n, k, split)
                assert all(e > s for s, e in covered), (tile, m, n, k, split, covered)
