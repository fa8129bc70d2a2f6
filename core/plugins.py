"""Plugin discovery: backends and communicators, built-in or third-party, through one hook path.

The built-ins are plugin modules loaded in-process from ``BUILTIN_PLUGINS`` (as pytest's
``default_plugins`` and datasette's ``DEFAULT_PLUGINS``), so a fresh clone works with
``PYTHONPATH=.`` and no install. Third-party packages are found through the ``dpmlp`` entry-point
group. Both then register through the same hooks (core/hookspecs.py). A plugin that fails to
import, or whose registration hook raises, is recorded as unavailable with its reason and never
breaks the others; ``--backend NAME`` of a plugin that failed to load names that failure.
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
from dataclasses import dataclass, field
from typing import Any

import pluggy

import core
from core import hookspecs
from core.errors import UserError

#: The built-in plugin modules, registered in-process under these names (module names are strings:
#: backends and communicators depend on core, never the other way round).
BUILTIN_PLUGINS: tuple[tuple[str, str], ...] = (
    ("numpy", "backends.ops_numpy"),
    ("cupy", "backends.ops_cupy"),
    ("pycuda", "backends.ops_pycuda"),
    ("single", "comm.single"),
    ("mpi", "comm.mpi"),
    ("nccl", "comm.nccl"),
)
BUILTIN_PACKAGE = "dpmlp"


@dataclass
class Entry:
    """One backend or communicator as ``--list-backends`` shows it."""

    name: str
    kind: str  # "backend" or "communicator"
    cls: type | None
    plugin: str  # the plugin (entry point or in-process registration) that provided it
    package: str
    version: str
    available: bool
    reason: str


@dataclass
class _PluginOrigin:
    package: str
    version: str


@dataclass
class Registry:
    """The plugin manager plus what it found. ``Registry.load()`` builds the usual one."""

    manager: pluggy.PluginManager = field(default_factory=lambda: _new_manager())
    origins: dict[str, _PluginOrigin] = field(default_factory=dict)
    broken: dict[str, Entry] = field(default_factory=dict)  # plugin name -> why

    @classmethod
    def load(cls) -> "Registry":
        """The built-ins, then every installed third-party plugin; ``check_pending()`` after."""
        registry = cls()
        registry.load_builtins()
        registry.load_entry_points()
        return registry

    def load_builtins(self) -> None:
        for name, module in BUILTIN_PLUGINS:
            self._load(name, lambda module=module: importlib.import_module(module),
                       BUILTIN_PACKAGE, core.__version__)
        self.manager.check_pending()

    def load_entry_points(self) -> None:
        builtin_modules = {module for _, module in BUILTIN_PLUGINS}
        for ep in metadata.entry_points(group=hookspecs.ENTRY_POINT_GROUP):
            if ep.value in builtin_modules:
                continue  # an old install of dpmlp itself that still lists its built-ins
            if self.manager.has_plugin(ep.name) or ep.name in self.broken:
                self.broken.setdefault(f"{ep.name} ({ep.value})", Entry(
                    ep.name, "plugin", None, ep.name, ep.dist.name if ep.dist else ep.module,
                    ep.dist.version if ep.dist else "?", False,
                    f"plugin name {ep.name!r} is already taken; not loaded"))
                continue
            self._load(ep.name, ep.load, ep.dist.name if ep.dist else ep.module,
                       ep.dist.version if ep.dist else "?")
        self.manager.check_pending()

    def _load(self, name: str, load, package: str, version: str) -> None:
        try:
            self.manager.register(load(), name=name)
        except Exception as exc:  # noqa: BLE001 - isolate any broken plugin
            self.broken[name] = Entry(name, "plugin", None, name, package, version, False,
                                      f"failed to load: {type(exc).__name__}: {exc}")
            return
        self.origins[name] = _PluginOrigin(package, version)

    def register(self, plugin: Any, name: str, package: str = "", version: str = "") -> None:
        """Register an in-process plugin (tests, notebooks)."""
        self.manager.register(plugin, name=name)
        self.manager.check_pending()
        self.origins[name] = _PluginOrigin(package or name, version or "-")

    def unregister(self, name: str) -> None:
        self.manager.unregister(name=name)
        self.origins.pop(name, None)

    # ------------------------------------------------------------------ queries
    def backends(self) -> list[Entry]:
        return self._collect("register_backends", "backend")

    def communicators(self) -> list[Entry]:
        return self._collect("register_communicators", "communicator")

    def _collect(self, hook_name: str, kind: str) -> list[Entry]:
        entries: dict[str, Entry] = {}
        hook = getattr(self.manager.hook, hook_name)
        # Call each plugin's hook on its own, so one that raises is reported, not fatal.
        for impl in hook.get_hookimpls():
            origin = self.origins.get(impl.plugin_name, _PluginOrigin(impl.plugin_name, "-"))
            found: list[type] = []
            try:
                impl.function(found.append)
            except Exception as exc:  # noqa: BLE001
                self.broken[impl.plugin_name] = Entry(
                    impl.plugin_name, "plugin", None, impl.plugin_name, origin.package,
                    origin.version, False, f"{hook_name} raised {type(exc).__name__}: {exc}")
                continue
            for cls in found:
                available, reason = _availability(cls)
                name = getattr(cls, "name", cls.__name__)
                if name in entries:  # first registration wins; say so instead of hiding it
                    available, reason = False, f"name already taken by plugin {entries[name].plugin!r}"
                    name = f"{name} ({impl.plugin_name})"
                entries[name] = Entry(name, kind, cls, impl.plugin_name, origin.package,
                                      origin.version, available, reason)
        return sorted(entries.values(), key=lambda e: e.name)

    def backend(self, name: str | None, flag: str = "--backend") -> Entry:
        """The backend called ``name`` (None: the best available one); UserError if unusable,
        naming ``flag`` (the option that named it)."""
        return _pick(self.backends(), name, flag, "backend", self.broken)

    def communicator(self, name: str) -> Entry:
        return _pick(self.communicators(), name, "--comm", "communicator", self.broken)


def _new_manager() -> pluggy.PluginManager:
    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    return manager


def _availability(cls: type) -> tuple[bool, str]:
    try:
        available, reason = cls.availability()
        return bool(available), str(reason)
    except Exception as exc:  # noqa: BLE001 - availability must never take the listing down
        return False, f"availability check raised {type(exc).__name__}: {exc}"


def _pick(entries: list[Entry], name: str | None, flag: str, what: str,
          broken: dict[str, Entry]) -> Entry:
    if name is None:
        # Only a backend that states a priority may become the default: a plugin left at the
        # default (None) is used when asked for by name, never silently instead of a built-in.
        usable = [e for e in entries if e.available and getattr(e.cls, "priority", None) is not None]
        if not usable:
            raise UserError(f"{flag}: no {what} is available (see --list-backends)")
        return max(usable, key=lambda e: e.cls.priority)
    for entry in entries:
        if entry.name == name:
            if not entry.available:
                raise UserError(f"{flag} {name}: {what} is not available here: {entry.reason}")
            return entry
    if name in broken:  # the plugin of that name failed to load: say why, not "unknown"
        raise UserError(f"{flag} {name}: plugin {name!r} ({broken[name].package}) "
                        f"{broken[name].reason}")
    known = ", ".join(e.name for e in entries) or "none"
    raise UserError(f"{flag} {name}: unknown {what} (known: {known})")
