"""core.threads: BLAS threads per rank."""

from __future__ import annotations

import numpy as np  # noqa: F401 - loads the BLAS that threadpoolctl limits
import pytest

from core import threads


@pytest.fixture(autouse=True)
def restore():
    yield
    threads.restore_blas_threads()


def blas_threads():
    from threadpoolctl import threadpool_info

    return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}


@pytest.mark.parametrize("local,usable,total,expect", [
    (1, 16, 16, 16), (4, 16, 16, 4), (3, 16, 16, 5), (32, 16, 16, 1), (2, 1, 16, 1),
    (2, 4, 16, 4),  # bound by the launcher to 4 cores: those are this rank's
])
def test_threads_per_rank(local, usable, total, expect):
    assert threads.threads_per_rank(local, usable, total)[0] == expect


def test_limits_blas_when_ranks_share_the_cores():
    line = threads.limit_blas_threads(4, environ={}, usable=4, total=4)
    assert line.startswith("BLAS threads: 1 per rank") and "4 ranks" in line and "\n" not in line
    if blas_threads():  # a NumPy linked to a BLAS threadpoolctl knows
        assert blas_threads() == {1}


@pytest.mark.parametrize("var", threads.BLAS_ENV_VARS)
def test_user_setting_is_left_alone(var):
    before = blas_threads()
    line = threads.limit_blas_threads(4, environ={var: "3"}, usable=4, total=4)
    assert f"{var}=3" in line and "left as set" in line
    assert blas_threads() == before


def test_single_rank_with_the_whole_node_changes_nothing():
    before = blas_threads()
    assert threads.limit_blas_threads(1, environ={}, usable=8, total=8) is None
    assert blas_threads() == before


def test_local_ranks_from_launcher_env_and_hostnames():
    assert threads.local_ranks_from_env({"OMPI_COMM_WORLD_LOCAL_SIZE": "3"}) == 3
    assert threads.local_ranks_from_env({}) is None
    assert threads.count_local_ranks(["a", "a", "b", "a"], 3) == 3
    assert threads.count_local_ranks(["a", "a", "b", "a"], 2) == 1
    line = threads.limit_blas_threads(environ={"OMPI_COMM_WORLD_LOCAL_SIZE": "2"},
                                      usable=8, total=8)
    assert "4 per rank" in line


def test_without_threadpoolctl_it_says_what_to_set(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "threadpoolctl", None)
    line = threads.limit_blas_threads(4, environ={}, usable=8, total=8)
    assert "not installed" in line and "OMP_NUM_THREADS=2" in line
