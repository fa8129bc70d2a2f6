"""The plugin author's example (examples/dpmlp-example-backend), installed and used as a user would:
so that the README's plugin guide and the example it points at can never go stale.

The package is copied to tmp_path (pip builds in the source tree) and installed with
``pip install --no-deps --no-build-isolation --no-index --target DIR`` (offline; it needs
setuptools, and for setuptools older than 70.1 the wheel package, both in the test extra). Then,
with ``PYTHONPATH=DIR:<checkout>``: ``--list-backends`` shows ``example`` with the package name
and version of its pyproject.toml; ``--backend example --verify`` trains and passes; the default
backend is never the example (it states no priority); and the example's own tests pass.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import REPO

EXAMPLE = REPO / "examples" / "dpmlp-example-backend"
TRAIN = ["--comm", "single", "-e", "1", "--train-size", "500", "-n", "16"]


def _pyproject_field(field: str) -> str:
    """name or version from the example's [project] table (no tomllib: Python 3.10 lacks it)."""
    text = (EXAMPLE / "pyproject.toml").read_text()
    project = text.split("[project]", 1)[1].split("\n[", 1)[0]
    return re.search(rf'^{field}\s*=\s*"([^"]+)"', project, re.M).group(1)


def _build_tools_missing() -> str | None:
    if importlib.util.find_spec("setuptools") is None:
        return "setuptools is not installed (pip install -e '.[test]')"
    import setuptools

    version = tuple(int(p) for p in re.findall(r"\d+", setuptools.__version__)[:2])
    if version < (70, 1) and importlib.util.find_spec("wheel") is None:
        return (f"setuptools {setuptools.__version__} builds wheels only with the wheel package, "
                "which is not installed (pip install -e '.[test]')")
    return None


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The directory the example package was installed into (its code and dist-info)."""
    missing = _build_tools_missing()
    if missing:
        pytest.skip(missing)
    root = tmp_path_factory.mktemp("example-plugin")
    source, target = root / "source", root / "site"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns(
        "build", "*.egg-info", "__pycache__", ".pytest_cache"))
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--quiet", "--target", str(target), str(source)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"pip install of the example failed:\n{proc.stdout}\n{proc.stderr}"
    assert (target / "dpmlp_example" / "ops_example.py").is_file()
    return target


@pytest.fixture
def env(installed, cli_env):
    """cli_env (one process, the bundled subset) with the example installed and this checkout
    importable."""
    return dict(cli_env, PYTHONPATH=os.pathsep.join([str(installed), str(REPO)]))


def run(args, env, timeout=300):
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_list_backends_shows_the_example_with_its_package_and_version(env):
    proc = run(["-m", "core.train", "--list-backends"], env)
    assert proc.returncode == 0, proc.stderr
    rows = {tuple(line.split()[:2]): line.split() for line in proc.stdout.splitlines() if line}
    assert ("backend", "example") in rows, proc.stdout
    assert rows[("backend", "example")][2:5] == [_pyproject_field("name"),
                                                 _pyproject_field("version"), "yes"]
    assert rows[("backend", "numpy")][2] == "dpmlp"
    assert not any(row[0] == "plugin" for row in rows.values()), proc.stdout  # nothing broken


def test_training_with_the_example_backend_verifies(env):
    proc = run(["-m", "core.train", "--backend", "example", *TRAIN, "--verify"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "dpmlp: backend example " in proc.stdout, proc.stdout
    assert any("verify" in line for line in proc.stdout.splitlines()), proc.stdout
    assert "Traceback" not in proc.stderr


def test_the_example_is_never_the_default_backend(env):
    proc = run(["-m", "core.train", *TRAIN], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    chosen = re.search(r"^dpmlp: backend (\S+) ", proc.stdout, re.M)
    assert chosen, proc.stdout
    assert chosen.group(1) != "example"
    picked = run(["-c", "from core.plugins import Registry; r = Registry.load(); "
                        "print(r.backend(None).name, r.backend('example').cls.priority)"], env)
    assert picked.returncode == 0, picked.stderr
    default, priority = picked.stdout.split()
    assert default == chosen.group(1) and priority == "None"


def test_the_examples_own_tests_pass(env):
    proc = run(["-m", "pytest", "-q", "-p", "no:cacheprovider",
                str(EXAMPLE.relative_to(REPO) / "tests")], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = proc.stdout.strip().splitlines()[-1]
    assert re.search(r"\d+ passed", summary) and "skipped" not in summary, summary


def test_the_example_passes_the_conformance_suite(env):
    """The plugin author's check, as the README's guide gives it, on the installed example."""
    proc = run(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "core.conformance.plugin",
                "--pyargs", "core.conformance", "--dpmlp-backend", "example"], env)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    summary = proc.stdout.strip().splitlines()[-1]
    assert re.search(r"\d+ passed", summary) and "failed" not in summary, summary
    print(f"conformance example: {summary}")
