"""The Triton example backend: registered, and passing dpmlp's conformance suite.

Skips, with the reason, where torch or triton is missing, or where there is no CUDA GPU and
Triton's interpreter is not asked for. On a CPU, ``TRITON_INTERPRET=1 python -m pytest
examples/dpmlp-triton-backend/tests`` runs the kernels in the interpreter (the op checks only:
training in the interpreter takes minutes); on a GPU the whole suite runs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch", reason="the Triton example needs torch (and triton)")
pytest.importorskip("triton", reason="the Triton example needs triton")

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
if not INTERPRETED and not torch.cuda.is_available():
    pytest.skip("no CUDA GPU (set TRITON_INTERPRET=1 to run the kernels in Triton's interpreter)",
                allow_module_level=True)


def _run(args, timeout=1800):
    env = dict(os.environ)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_listed_and_available():
    proc = _run(["-m", "core.train", "--list-backends"])
    assert proc.returncode == 0, proc.stderr
    row = next((line.split() for line in proc.stdout.splitlines()
                if line.split()[:2] == ["backend", "triton"]), None)
    assert row is not None, proc.stdout
    assert row[2:5] == ["dpmlp-triton-backend", "0.1.0", "yes"], row


def test_conformance_suite():
    modules = (["core.conformance.test_arrays", "core.conformance.test_ops"] if INTERPRETED
               else ["core.conformance"])
    proc = _run(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "core.conformance.plugin",
                 "--pyargs", *modules, "--dpmlp-backend", "triton", "-rs"])
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-3000:]
    assert re.search(r"\d+ passed", summary) and "failed" not in summary, summary
