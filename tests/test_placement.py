"""Nodes done right (core/placement.py): each rank's local rank and GPU from the launcher's
variables or the hostname table, the start-up line of hosts x ranks x GPUs, the note when ranks
share GPUs, and BLAS threads per rank per node, on simulated multi-node layouts (a rank ->
hostname table and each rank's environment, as Open MPI, Slurm, Hydra or PMIx would set it)."""

from __future__ import annotations

import pytest

from core.job import device_for
from core.placement import (Place, launcher_local_rank, local_rank_of, local_ranks_by_host,
                            my_place, placement_line, sharing_lines, visible_gpus)
from core.threads import threads_per_rank


def _gpus(count):
    class FakeGpuBackend:
        @classmethod
        def device_count(cls):
            return count
    return FakeGpuBackend


def simulate(hosts, gpus_per_host=4, envs=None, cores=64):
    """Every rank's Place as the job would build it: local rank (launcher, else hostnames), GPU
    = local rank mod the GPUs it sees, BLAS threads = its node's cores / the node's ranks."""
    envs = envs or [{} for _ in hosts]
    told = [Place(h, launcher_local_rank(e)) for h, e in zip(hosts, envs)]
    places = []
    for rank, (host, env) in enumerate(zip(hosts, envs)):
        local, size = local_rank_of(rank, told)
        visible = visible_gpus(gpus_per_host, env)
        if "CUDA_VISIBLE_DEVICES" in env:
            visible = visible_gpus(len(env["CUDA_VISIBLE_DEVICES"].split(",")), env)
        device = device_for(_gpus(len(visible)), local)
        threads = threads_per_rank(size, cores, cores)[0]
        places.append(my_place(len(visible), device, threads, env, host))
    return places


def test_two_nodes_four_ranks_four_gpus_each():
    places = simulate(["n1"] * 4 + ["n2"] * 4)
    assert [p.visible[p.device] for p in places] == ["0", "1", "2", "3"] * 2
    assert placement_line(places) == ("placement: 2 host(s) x 4 rank(s) x 4 GPU(s): n1 ranks 0-3 "
                                      "on GPU 0-3, 16 BLAS thread(s) each; n2 ranks 4-7 on GPU "
                                      "0-3, 16 BLAS thread(s) each")
    assert sharing_lines(places) == []


def test_uneven_tasks_per_node():
    hosts = ["a", "a", "a", "b", "c", "c"]
    assert local_ranks_by_host(hosts) == [(0, 3), (1, 3), (2, 3), (0, 1), (0, 2), (1, 2)]
    places = simulate(hosts, gpus_per_host=4)
    line = placement_line(places)
    assert line.startswith("placement: 3 host(s) x 3+1+2 rank(s) x 4 GPU(s): ")
    assert "a ranks 0-2 on GPU 0-2, 21 BLAS thread(s) each" in line
    assert "b ranks 3 on GPU 0, 64 BLAS thread(s) each" in line
    assert "c ranks 4,5 on GPU 0,1, 32 BLAS thread(s) each" in line


def test_cyclic_distribution_numbers_each_host_in_rank_order():
    places = simulate(["a", "b", "a", "b"], gpus_per_host=2)
    assert [(p.host, p.visible[p.device]) for p in places] == [
        ("a", "0"), ("b", "0"), ("a", "1"), ("b", "1")]


def test_more_ranks_than_gpus_on_a_node_is_one_clear_line():
    places = simulate(["big"] * 6 + ["small"] * 2, gpus_per_host=4)
    (line,) = sharing_lines(places)
    assert line == ("note: big runs 6 ranks on 4 GPU(s), so ranks share GPUs (GPU 0: ranks 0,4; "
                    "GPU 1: ranks 1,5); fine for --comm mpi, --comm nccl needs at most 4 rank(s) "
                    "on big (one GPU each)")


def test_slurm_binding_one_gpu_per_task():
    # srun --gpus-per-task=1: each task sees only its own GPU, numbered by the host
    envs = [{"SLURM_LOCALID": str(i), "CUDA_VISIBLE_DEVICES": str(i)} for i in range(4)] * 2
    places = simulate(["g1"] * 4 + ["g2"] * 4, envs=envs)
    assert all(p.device == 0 for p in places)
    assert [p.visible[0] for p in places] == ["0", "1", "2", "3"] * 2
    assert "2 host(s) x 4 rank(s) x 4 GPU(s)" in placement_line(places)
    assert sharing_lines(places) == []


def test_launcher_local_rank_wins_where_containers_share_a_hostname():
    # two nodes whose containers are both called "localhost": only the launcher knows better
    envs = [{"OMPI_COMM_WORLD_LOCAL_RANK": str(i % 2), "OMPI_COMM_WORLD_LOCAL_SIZE": "2"}
            for i in range(4)]
    places = simulate(["localhost"] * 4, gpus_per_host=2, envs=envs)
    assert [p.device for p in places] == [0, 1, 0, 1]
    # without the launcher's word the hostname table numbers them 0..3 (GPUs shared round-robin)
    assert [p.device for p in simulate(["localhost"] * 4, gpus_per_host=2)] == [0, 1, 0, 1]
    assert local_rank_of(3, [Place("localhost")] * 4) == (3, 4)


@pytest.mark.parametrize("env, expected", [
    ({"OMPI_COMM_WORLD_LOCAL_RANK": "3", "OMPI_COMM_WORLD_LOCAL_SIZE": "4"}, (3, 4)),
    ({"SLURM_LOCALID": "1"}, (1, None)),
    ({"MPI_LOCALRANKID": "2", "MPI_LOCALNRANKS": "8"}, (2, 8)),
    ({"PMIX_LOCAL_RANK": "0", "PMIX_LOCAL_SIZE": "2"}, (0, 2)),
    ({}, None),
    ({"SLURM_LOCALID": "x"}, None),
])
def test_launcher_variables(env, expected):
    assert launcher_local_rank(env) == expected


def test_slurm_local_size_comes_from_the_hostnames():
    told = [Place(h, (i, None)) for h, i in zip(["a", "a", "a", "b"], [0, 1, 2, 0])]
    assert [local_rank_of(r, told) for r in range(4)] == [(0, 3), (1, 3), (2, 3), (0, 1)]


def test_many_hosts_are_summarised_and_cpu_runs_say_no_gpus():
    places = [Place(f"h{i:02d}", threads=2) for i in range(20) for _ in range(2)]
    line = placement_line(places)
    assert line.startswith("placement: 20 host(s) x 2 rank(s) x no GPU(s): h00 ranks 0,1, 2 BLAS")
    assert line.endswith("... 12 more host(s)")


@pytest.mark.mpi
def test_cli_under_mpirun_prints_the_placement_and_buckets(tmp_path):
    from conftest import one_job_env, run_mpi

    env = one_job_env(tmp_path)
    code, out, err, _ = run_mpi(2, ["-m", "core.train", "--backend", "numpy", "-e", "1", "--train-size", "200",
                                    "-n", "16"], timeout=180, env=env)
    assert code == 0, err
    assert "dpmlp: placement: 1 host(s) x 2 rank(s) x no GPU(s): " in out
    assert "dpmlp: gradient buckets: 1 (the hidden layer's" in out
