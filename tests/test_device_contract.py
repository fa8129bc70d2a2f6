"""The device contract of core/ops.py held on a CPU, and the conformance suite run in CI.

* The conformance suite (``pytest --pyargs core.conformance --dpmlp-backend NAME``) passes for
  ``numpy``, for ``numpy-defaults`` (core.ops' default fused ops: the floored loss, the lazily
  allocated ones vector) and for ``shape-only`` (tests/shape_only_backends.py: opaque arrays with
  nothing but ``.shape``, device-like, recorded "graphs" that fail on any allocation, transfer or
  synchronisation during capture). The example plugin's run is in tests/test_example_plugin.py.
* Training with ``shape-only`` under ``--cuda-graphs on`` gives the eager run's bits (the trainer
  warms every captured op up first, so the lazy allocations happen outside capture).
* The device pre-flight: a model a device backend cannot index (``max_elements``) or hold
  (``device_memory()``) is one line on stderr and exit 2, before anything large is allocated.
* Parameters are drawn straight into the backend dtype: ``init_flat_params`` is ``init_params``
  packed and rounded, bit for bit, without the float64 copies.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, TESTS
from core.hookspecs import ENTRY_POINT_GROUP

TRAIN = ["--comm", "single", "-e", "2", "--train-size", "400", "-n", "16", "-b", "60"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """One process, the bundled subset, tests/shape_only_backends.py installed as a plugin."""
    root = tmp_path_factory.mktemp("device-contract")
    cache, site = root / "empty-cache", root / "site"
    cache.mkdir()
    info = site / "dpmlp_shape_only-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: dpmlp-shape-only\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\nshape_only = shape_only_backends\n")
    (info / "RECORD").write_text("")
    environment = dict(os.environ, DPMLP_CACHE_DIR=str(cache),
                       PYTHONPATH=os.pathsep.join([str(REPO), str(TESTS), str(site)]))
    for var in ("DPMLP_DATA_DIR", "DPMLP_TEST_DEVICE_FREE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE",
                "PMIX_SIZE", "SLURM_NTASKS"):
        environment.pop(var, None)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        environment.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return environment


def run(args, env, timeout=600, **extra):
    return subprocess.run([sys.executable, *args], cwd=REPO, env={**env, **extra},
                          capture_output=True, text=True, timeout=timeout)


def conformance(backend: str, env) -> str:
    """Run the suite against ``backend``; return its summary line (every test passed or was
    skipped for a stated reason; nothing failed)."""
    proc = run(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "core.conformance.plugin",
                "--pyargs", "core.conformance", "--dpmlp-backend", backend, "-rs"], env)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert re.search(r"\d+ passed", summary) and "failed" not in summary, summary
    return summary


@pytest.mark.parametrize("backend", ("numpy", "numpy-defaults", "shape-only"))
def test_conformance_suite_passes(backend, env):
    summary = conformance(backend, env)
    print(f"conformance {backend}: {summary}")


def test_shape_only_graph_epochs_equal_eager(env, tmp_path):
    saved = {}
    for graphs in ("on", "off"):
        out = tmp_path / f"{graphs}.npz"
        proc = run(["-m", "core.train", "--backend", "shape-only", *TRAIN, "--cuda-graphs",
                    graphs, "--save", str(out)], env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert ("CUDA graphs on" in proc.stdout) == (graphs == "on"), proc.stdout
        saved[graphs] = dict(np.load(out))
    for name, value in saved["off"].items():
        assert saved["on"][name].tobytes() == value.tobytes(), name


def _one_line_exit_2(proc, *words):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def test_a_model_beyond_max_elements_is_one_line(env):
    proc = run(["-m", "core.train", "--backend", "shape-only", "--comm", "single",
                "-n", "3000000"], env)
    _one_line_exit_2(proc, "--hidden 3000000")


def test_a_model_beyond_free_device_memory_is_one_line(env):
    proc = run(["-m", "core.train", "--backend", "shape-only", "--comm", "single",
                "-n", "300000"], env, DPMLP_TEST_DEVICE_FREE="1e9")
    _one_line_exit_2(proc, "--hidden 300000", "GB free", "test device 0")


def test_device_estimate_counts_ranks_sharing_a_device():
    from argparse import Namespace

    from core.device_preflight import check_device_memory, ranks_sharing_device
    from core.errors import UserError
    from shape_only_backends import ShapeOnlyBackend

    assert [ranks_sharing_device(r, 3, 2) for r in range(3)] == [2, 1, 2]
    assert ranks_sharing_device(0, 4, 0) == 1
    args = Namespace(hidden=1000, batch_size=100, exact=False)
    be = ShapeOnlyBackend("float32")
    check_device_memory(args, be, 0, 1, 1, 1000, 100, 100, free=10**8)  # ~7 MB fits
    with pytest.raises(UserError, match="GB free"):
        check_device_memory(args, be, 0, 1, 1, 1000, 100, 100, free=10**6)
    be.host_resident = True  # host backends: the host check's business, not this one's
    check_device_memory(args, be, 0, 1, 1, 1000, 100, 100, free=0)


@pytest.mark.parametrize("dtype", ("float32", "float64"))
def test_init_flat_params_is_init_params_rounded(dtype, monkeypatch):
    import core.model as model

    monkeypatch.setattr(model, "INIT_CHUNK_ROWS", 5)  # cut the stream in many places
    for hidden in (1, 12, 33):
        want = model.ParamLayout(hidden).pack(model.init_params(hidden, 4)).astype(dtype)
        got = model.init_flat_params(hidden, 4, dtype)
        assert got.dtype == np.dtype(dtype) and got.tobytes() == want.tobytes()
