"""The pytest plugin of the conformance suite: its options and fixtures (core/conformance).

Loaded by the ``pytest11`` entry point of an installed dpmlp, or with
``-p core.conformance.plugin``. It adds nothing to a test run that does not collect the suite but
three options and fixtures whose names start with ``dpmlp_``.
"""

from __future__ import annotations

import os

import pytest

DTYPES = ("float32", "float64")


def pytest_addoption(parser):
    group = parser.getgroup("dpmlp", "dpmlp backend conformance suite (core/conformance)")
    group.addoption("--dpmlp-backend", default=os.environ.get("DPMLP_CONFORMANCE_BACKEND", "numpy"),
                    help="registered backend to check (default numpy, or "
                         "$DPMLP_CONFORMANCE_BACKEND)")
    group.addoption("--dpmlp-dtype", default="float32,float64",
                    help="comma-separated dtypes to check (float32,float64)")
    group.addoption("--dpmlp-quick", action="store_true",
                    help="leave out the subprocess runs (--verify, mpirun)")


def pytest_generate_tests(metafunc):
    if "dpmlp_dtype" in metafunc.fixturenames:
        wanted = [d for d in metafunc.config.getoption("--dpmlp-dtype").split(",") if d]
        bad = [d for d in wanted if d not in DTYPES]
        if bad:
            raise pytest.UsageError(f"--dpmlp-dtype: {', '.join(bad)} is none of {DTYPES}")
        metafunc.parametrize("dpmlp_dtype", wanted)


def pytest_report_header(config):
    if any("conformance" in str(a) for a in config.args):
        return f"dpmlp conformance: backend {config.getoption('--dpmlp-backend')}"
    return None


@pytest.fixture(scope="session")
def dpmlp_entry(request):
    """The registry entry of the backend under test; skips (with its reason) when unavailable."""
    from core.errors import UserError
    from core.plugins import Registry

    name = request.config.getoption("--dpmlp-backend")
    try:
        return Registry.load().backend(name)
    except UserError as exc:
        pytest.skip(f"backend {name!r} cannot be checked here: {exc}")


@pytest.fixture(scope="session")
def dpmlp_backend_cls(dpmlp_entry):
    return dpmlp_entry.cls


@pytest.fixture(scope="session")
def _dpmlp_instances():
    return {}


@pytest.fixture
def dpmlp_backend(dpmlp_backend_cls, dpmlp_dtype, _dpmlp_instances):
    """One instance per dtype for the session, on device 0 (as rank 0 would get it)."""
    from core.job import device_for

    key = dpmlp_dtype
    if key not in _dpmlp_instances:
        _dpmlp_instances[key] = dpmlp_backend_cls(dpmlp_dtype, device_for(dpmlp_backend_cls, 0))
    return _dpmlp_instances[key]


@pytest.fixture
def dpmlp_reference():
    """The NumPy reference in float64: every result is compared with it on the same inputs."""
    from backends.ops_numpy import NumpyBackend

    return NumpyBackend("float64")


@pytest.fixture
def dpmlp_quick(request) -> bool:
    return bool(request.config.getoption("--dpmlp-quick"))
