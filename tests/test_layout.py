"""The project's layering: every import arrow points down (tools/import_graph.py), and importing
core pulls in no GPU library and no MPI (the plugins import those lazily)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))

import import_graph  # noqa: E402


def test_every_import_points_down():
    edges = import_graph.graph()
    assert "core.train" in edges and "backends.ops_numpy" in edges
    assert import_graph.upward_arrows(edges) == []


def test_layer_check_catches_an_upward_import():
    edges = {"core.model": {"core.job"}, "core.ops": set(), "comm.mpi": {"backends.ops_numpy"},
             "core.data_parallel": {"comm.single"}}
    bad = "\n".join(import_graph.upward_arrows(edges))
    assert "core.model -> core.job" in bad
    assert "comm.mpi -> backends.ops_numpy" in bad
    assert "core.data_parallel -> comm.single" in bad


def test_importing_core_imports_no_gpu_library_or_mpi():
    code = ("import sys, core, core.train, core.bench, core.job, core.plugins, core.data_parallel;"
            "from core.plugins import Registry; Registry.load();"
            "heavy = {'cupy', 'pycuda', 'mpi4py', 'torch'} & {m.split('.')[0] for m in sys.modules};"
            "print(sorted(heavy))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
