"""The exchange's cost model (core/scaling.py): the ring formula, the overlap of buckets with the
remaining compute, and the README's table (tools/scaling_table.py) in step with the model."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO
from core.scaling import (LINKS, Link, bucket_bytes, exposed_exchange, predict,
                          ring_allreduce_seconds)


def test_ring_formula():
    link = Link("x", 10e9, 5e-6)
    assert ring_allreduce_seconds(1e6, 1, link) == 0
    assert ring_allreduce_seconds(1e6, 4, link) == pytest.approx(2 * 3 / 4 * 1e-4 + 6 * 5e-6)


def test_bucket_bytes_cover_the_gradient():
    buckets, tail = bucket_bytes(1024, 4, 1.0)
    assert len(buckets) == 4 and sum(buckets) == 4 * 1024 * 785 and tail == 4 * 10 * 1025


def test_overlap_hides_an_exchange_shorter_than_the_remaining_compute():
    fast = Link("fast", 1e15, 0.0)
    assert exposed_exchange(1e-3, [1e6] * 4, 1e3, 8, fast) < 1e-8  # the last bucket only
    slow = Link("slow", 1e9, 0.0)
    serial = sum(ring_allreduce_seconds(b, 8, slow) for b in [1e6] * 4 + [1e3])
    exposed = exposed_exchange(1e-3, [1e6] * 4, 1e3, 8, slow)
    assert 0 < exposed < serial  # partly hidden behind the hidden layer's blocks


def test_predictions_are_what_the_readme_table_says():
    row = predict(4096, 800 * 8, 8)
    assert row["P"] == 8 and row["compute_us"] == pytest.approx(406, abs=1)
    out = subprocess.run([sys.executable, "tools/scaling_table.py"], cwd=REPO, text=True,
                         capture_output=True, timeout=60, env={"PYTHONPATH": str(REPO)}).stdout
    readme = (REPO / "README.md").read_text()
    table = [line for line in out.splitlines() if line.startswith("| 1024 |")
             or line.startswith("| 4096 |")]
    assert len(table) == 10
    for line in table:
        assert line in readme, f"README's scaling table is not tools/scaling_table.py's: {line}"
    assert set(LINKS) == {"nvlink", "ib", "eth"}
