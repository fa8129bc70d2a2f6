"""Every hook a dpmlp plugin can implement, in one module.

A plugin is a module (or object) with functions decorated by ``core.hookspecs.hookimpl``. Built-in
backends and communicators are plugins too, registered through these same hooks; they are loaded
in-process (``core.plugins.BUILTIN_PLUGINS``), a third-party package through the ``dpmlp``
entry-point group declared in its ``pyproject.toml``::

    [project.entry-points.dpmlp]
    mybackend = "my_package.ops_mybackend"

Keep the plugin module cheap to import: import cupy, pycuda or mpi4py inside the classes' methods.
"""

from __future__ import annotations

from typing import Callable

import pluggy

PROJECT_NAME = "dpmlp"
ENTRY_POINT_GROUP = "dpmlp"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def register_backends(register: Callable[[type], None]) -> None:
    """Register compute backends by calling ``register(BackendClass)`` once per backend.

    ``BackendClass`` subclasses ``core.ops.Backend`` and has a unique ``name``. Registration must not
    import heavy libraries; ``BackendClass.availability()`` reports whether it can run here."""


@hookspec
def register_communicators(register: Callable[[type], None]) -> None:
    """Register communicators by calling ``register(CommunicatorClass)`` once per communicator.

    ``CommunicatorClass`` subclasses ``core.communicator.Communicator`` and has a unique ``name``."""
