"""Plugin discovery (core/plugins.py): built-ins loaded in-process, third-party entry points,
in-process registration, isolation of broken plugins, availability, picking a backend by name or by
priority (a plugin without one is never the default), and ``--list-backends``.

Third-party plugins found through an entry point are simulated by a throwaway distribution in
tmp_path: a module plus a ``*.dist-info`` directory (METADATA, entry_points.txt), put on sys.path.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import core
from core import plugins
from backends.ops_numpy import NumpyBackend
from core.errors import UserError
from core.hookspecs import ENTRY_POINT_GROUP, hookimpl
from core.plugins import Registry

REPO = Path(__file__).resolve().parent.parent


def by_name(entries):
    return {e.name: e for e in entries}


# ------------------------------------------------------------------ built-ins, in-process
def test_builtins_registered_in_process_without_any_entry_point(monkeypatch):
    """A fresh clone (nothing installed, so no entry points at all) still has every built-in."""
    monkeypatch.setattr(plugins.metadata, "entry_points", lambda group: [])
    registry = Registry.load()
    backends = by_name(registry.backends())
    comms = by_name(registry.communicators())
    numpy_entry = backends["numpy"]
    assert numpy_entry.cls is NumpyBackend and numpy_entry.available
    assert numpy_entry.kind == "backend" and numpy_entry.plugin == "numpy"
    assert numpy_entry.package == "dpmlp" and numpy_entry.version == core.__version__
    for name in ("single", "mpi"):
        assert name in comms, f"communicator {name} not found: {sorted(comms)}"
        assert comms[name].package == "dpmlp" and comms[name].kind == "communicator"
    assert comms["single"].available
    assert registry.backend("numpy") is not None
    assert registry.communicator("single").cls.__name__ == "SingleCommunicator"
    assert "numpy" not in registry.broken
    assert {name for name, _ in plugins.BUILTIN_PLUGINS} <= set(registry.origins)


def test_fresh_clone_lists_and_trains_without_install(tmp_path):
    """`PYTHONPATH=. python -m core.train` from a copy of the source tree with no dpmlp installed:
    the copy is what Python imports (not an installed dpmlp), and its built-ins are all there."""
    clone = tmp_path / "clone"
    shutil.copytree(REPO, clone, ignore=shutil.ignore_patterns(
        ".git", ".venv", "*.egg-info", "__pycache__", ".gpu", ".whl", "examples"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = "."
    listing = subprocess.run([sys.executable, "-m", "core.train", "--list-backends"], cwd=clone,
                             env=env, capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    assert re.search(r"^backend\s+numpy\s+dpmlp\s+\S+\s+yes", listing.stdout, re.M), listing.stdout
    assert re.search(r"^communicator\s+single\s+dpmlp\s+\S+\s+yes", listing.stdout, re.M)
    where = subprocess.run([sys.executable, "-c", "import core; print(core.__file__)"], cwd=clone,
                           env=env, capture_output=True, text=True, timeout=60)
    assert where.stdout.strip().startswith(str(clone)), where.stdout
    run = subprocess.run([sys.executable, "-m", "core.train", "--backend", "numpy", "--comm",
                          "single", "-e", "1", "--train-size", "300", "--val-size", "100", "-n", "16"],
                         cwd=clone, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "test accuracy" in run.stdout


def test_each_load_is_independent():
    a, b = Registry.load(), Registry.load()
    assert a.manager is not b.manager
    a.register(_Plugin(_backend_class("only_in_a")), name="only-a")
    assert "only_in_a" in by_name(a.backends())
    assert "only_in_a" not in by_name(b.backends())


# ------------------------------------------------------------------ in-process plugins
def _backend_class(name, priority=0, availability=None):
    attrs = {"name": name, "priority": priority, "description": f"test backend {name}"}
    if availability is not None:
        attrs["availability"] = classmethod(availability)
    return type(f"Backend_{name}", (NumpyBackend,), attrs)


class _Plugin:
    """An in-process plugin registering the given backend classes."""

    def __init__(self, *classes):
        self.classes = classes

    @hookimpl
    def register_backends(self, register):
        for cls in self.classes:
            register(cls)


@pytest.fixture
def registry():
    return Registry.load()


@pytest.fixture
def test_plugin(registry):
    """Register a plugin in-process, unregister it after the test (the pytest/datasette style)."""
    fast = _backend_class("testfast", priority=50)
    registry.register(_Plugin(fast), name="test-plugin", package="dpmlp-test-plugin",
                      version="9.8.7")
    yield fast
    registry.unregister("test-plugin")
    assert "testfast" not in by_name(registry.backends())


def test_in_process_plugin_listed_and_picked_by_name(registry, test_plugin):
    entries = by_name(registry.backends())
    entry = entries["testfast"]
    assert entry.cls is test_plugin and entry.available
    assert entry.plugin == "test-plugin"
    assert entry.package == "dpmlp-test-plugin" and entry.version == "9.8.7"
    assert "numpy" in entries  # the built-ins are still there
    assert registry.backend("testfast").cls is test_plugin
    backend = registry.backend("testfast").cls("float64")
    assert backend.name == "testfast"


def test_default_pick_is_highest_priority_available(registry, test_plugin):
    assert registry.backend(None).name == "testfast"
    registry.register(_Plugin(_backend_class("even-faster-but-absent", priority=100,
                                             availability=lambda cls: (False, "no such device"))),
                      name="absent")
    registry.register(_Plugin(_backend_class("slow", priority=-5)), name="slow")
    assert registry.backend(None).name == "testfast"
    registry.unregister("test-plugin")
    assert registry.backend(None).name == best_builtin()


def test_default_pick_without_any_available_backend():
    registry = Registry()  # no entry points loaded
    registry.register(_Plugin(_backend_class("x", availability=lambda cls: (False, "gone"))),
                      name="x")
    with pytest.raises(UserError, match="--backend"):
        registry.backend(None)


def test_register_backends_that_raises_is_isolated(registry, test_plugin):
    class Exploding:
        @hookimpl
        def register_backends(self, register):
            register(_backend_class("half-registered"))
            raise RuntimeError("kaboom")

    registry.register(Exploding(), name="exploding", package="dpmlp-exploding", version="0.0.1")
    entries = by_name(registry.backends())
    assert "numpy" in entries and "testfast" in entries
    assert "half-registered" not in entries
    assert "exploding" in registry.broken
    broken = registry.broken["exploding"]
    assert not broken.available and "RuntimeError" in broken.reason and "kaboom" in broken.reason
    assert broken.package == "dpmlp-exploding" and broken.version == "0.0.1"
    assert registry.backend("numpy").cls is NumpyBackend
    assert registry.backend(None).name == "testfast"


def _raises(cls):
    raise OSError("driver exploded")


@pytest.mark.parametrize("availability,why", [
    (lambda cls: (False, "needs a CUDA GPU"), "needs a CUDA GPU"),
    (_raises, "driver exploded"),
])
def test_unavailable_backend_listed_with_reason(registry, availability, why):
    registry.register(_Plugin(_backend_class("gpuonly", priority=99, availability=availability)),
                      name="gpu-plugin")
    entry = by_name(registry.backends())["gpuonly"]
    assert not entry.available and why in entry.reason
    with pytest.raises(UserError) as info:
        registry.backend("gpuonly")
    msg = str(info.value)
    assert "--backend" in msg and "gpuonly" in msg and why in msg
    assert "\n" not in msg
    assert registry.backend(None).name == best_builtin()  # never the unavailable one


def test_unknown_backend_names_the_known_ones(registry, test_plugin):
    with pytest.raises(UserError) as info:
        registry.backend("nope")
    msg = str(info.value)
    assert "--backend" in msg and "nope" in msg
    assert "numpy" in msg and "testfast" in msg
    assert "\n" not in msg


def test_unknown_communicator_names_the_flag(registry):
    with pytest.raises(UserError, match="--comm"):
        registry.communicator("carrier-pigeon")


def test_duplicate_name_does_not_replace_the_first(registry):
    impostor = _backend_class("numpy", priority=1000)
    registry.register(_Plugin(impostor), name="impostor")
    entries = by_name(registry.backends())
    assert entries["numpy"].cls is NumpyBackend
    dup = [e for e in entries.values() if e.cls is impostor]
    assert len(dup) == 1 and not dup[0].available and "already taken" in dup[0].reason
    assert registry.backend(None).name == best_builtin()  # the impostor's priority counts for nothing


def best_builtin() -> str:
    """The default backend among the built-ins here: numpy on CI, a GPU backend on a GPU machine."""
    usable = [e for e in Registry.load().backends() if e.available and e.package == "dpmlp"]
    return max(usable, key=lambda e: e.cls.priority).name


def test_plugin_without_priority_is_never_the_default(registry):
    """A third-party backend left at the default priority (None) whose name sorts first, and one
    that claims priority 0 like numpy, must not displace the built-in default."""
    quiet = _backend_class("aaa-quiet", priority=None)  # Backend.priority's default
    registry.register(_Plugin(quiet), name="quiet")
    assert registry.backend(None).name == best_builtin()
    assert registry.backend("aaa-quiet").cls is quiet  # still usable by name


def test_backend_of_a_plugin_that_failed_to_load_names_the_load_error(plugin_dir):
    make_distribution(plugin_dir, "dpmlp-broken", "0.9", BROKEN_PLUGIN, "brokenplugin")
    with pytest.raises(UserError) as info:
        Registry.load().backend("brokenplugin")
    msg = str(info.value)
    assert "--backend brokenplugin" in msg and "libfoo.so.3" in msg and "unknown" not in msg


# ------------------------------------------------------------------ entry-point plugins
_counter = itertools.count()


def make_distribution(root: Path, dist_name: str, version: str, module_source: str,
                      ep_name: str) -> str:
    """Write a minimal installed distribution into ``root``: a module and its dist-info with an
    entry point in the dpmlp group. Returns the (unique) module name."""
    module = f"dpmlp_tp_{os.getpid()}_{next(_counter)}"
    (root / f"{module}.py").write_text(textwrap.dedent(module_source))
    info = root / f"{dist_name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{ep_name} = {module}\n")
    (info / "RECORD").write_text("")
    return module


GOOD_PLUGIN = """
    from backends.ops_numpy import NumpyBackend
    from core.hookspecs import hookimpl

    class ThirdPartyBackend(NumpyBackend):
        name = "thirdparty"
        description = "a backend from another package"

    @hookimpl
    def register_backends(register):
        register(ThirdPartyBackend)
"""

BROKEN_PLUGIN = """
    raise ImportError("libfoo.so.3: cannot open shared object file")
"""


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith("dpmlp_tp_"):
            del sys.modules[name]


def test_entry_point_plugin_is_found_with_package_and_version(plugin_dir):
    make_distribution(plugin_dir, "dpmlp-thirdparty", "3.1.4", GOOD_PLUGIN, "thirdparty")
    registry = Registry.load()
    entries = by_name(registry.backends())
    assert "thirdparty" in entries, sorted(entries)
    entry = entries["thirdparty"]
    assert entry.available and entry.plugin == "thirdparty"
    assert entry.package == "dpmlp-thirdparty" and entry.version == "3.1.4"
    assert registry.backend("thirdparty").cls.__name__ == "ThirdPartyBackend"
    assert entries["numpy"].package == "dpmlp"


def test_entry_point_that_fails_to_import_is_isolated(plugin_dir):
    make_distribution(plugin_dir, "dpmlp-broken", "0.9", BROKEN_PLUGIN, "brokenplugin")
    registry = Registry.load()
    assert "brokenplugin" in registry.broken
    entry = registry.broken["brokenplugin"]
    assert not entry.available
    assert "ImportError" in entry.reason and "libfoo.so.3" in entry.reason
    assert entry.package == "dpmlp-broken" and entry.version == "0.9"
    numpy_entry = registry.backend("numpy")
    assert numpy_entry.cls is NumpyBackend
    assert registry.backend(None).available


def test_list_backends_cli_shows_third_party_and_broken(plugin_dir):
    make_distribution(plugin_dir, "dpmlp-thirdparty", "3.1.4", GOOD_PLUGIN, "thirdparty")
    make_distribution(plugin_dir, "dpmlp-broken", "0.9", BROKEN_PLUGIN, "brokenplugin")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(plugin_dir)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    proc = subprocess.run([sys.executable, "-m", "core.train", "--list-backends"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    rows = {tuple(line.split()[:2]): line.split() for line in proc.stdout.splitlines() if line}
    assert rows[("backend", "thirdparty")][2:5] == ["dpmlp-thirdparty", "3.1.4", "yes"]
    broken = rows[("plugin", "brokenplugin")]
    assert broken[2:5] == ["dpmlp-broken", "0.9", "no"] and "ImportError" in " ".join(broken)


# ------------------------------------------------------------------ --list-backends
def test_list_backends_cli_table():
    proc = subprocess.run([sys.executable, "-m", "core.train", "--list-backends"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line.split() for line in proc.stdout.splitlines() if line.strip()]
    header = lines[0]
    assert header[:5] == ["kind", "name", "package", "version", "available"]
    rows = {(r[0], r[1]): r for r in lines[1:]}
    assert rows[("backend", "numpy")][2] == "dpmlp"
    assert rows[("backend", "numpy")][4] == "yes"
    assert rows[("communicator", "single")][4] == "yes"
    assert ("communicator", "mpi") in rows
