"""SIGINT and SIGTERM from the first line of a dpmlp program: one line and exit 130.

Installed by core/__init__.py when a program starts (``python -m core.X``, the ``dpmlp``
command) and by the ``dpmlp`` entry point, before any heavy import, so that a Ctrl-C while numpy or MPI load is one line, not a traceback, and a
SIGTERM during start-up is not a silent death. While the program's modules import (until its
first ``phase()``) the handler ends the process at once (nothing exists yet to clean up, and a
SystemExit raised inside an extension module's import would surface as that module's
ImportError); after that it raises ``SystemExit(130)``, so ``finally`` blocks still run (a
run directory the job made and wrote nothing to is removed); a second signal ends the process at once. While the training loop runs, its own handler
(core/session.py's StopRequest) takes over and this one comes back after it.

``phase(what)`` names what the program is doing, for the line; ``deferred()`` holds a signal
back until a write in progress (--save, a checkpoint) is complete. Standard library only: this
module is imported before anything else.
"""

from __future__ import annotations

import _signal  # the C module: `signal` builds enums at import, milliseconds of traceback window
import os

# (os and _signal only: contextlib, typing or signal would cost milliseconds in which a signal is
# still a traceback)

_RANK_VARS = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID")
SIGNALS = (_signal.SIGINT, _signal.SIGTERM)
_NAMES = {_signal.SIGINT: "SIGINT", _signal.SIGTERM: "SIGTERM"}

# importing: a program's modules are still being imported (from core/__init__.py's
# install_signal_handlers(importing=True) until the program's first phase())
_state = {"phase": "starting up", "trained": False, "held": 0, "pending": None, "fired": False,
          "importing": False}


def _is_rank0() -> bool:
    for var in _RANK_VARS:
        value = os.environ.get(var, "")
        if value.isdigit():
            return int(value) == 0
    return True


def phase(what: str, trained: bool = False) -> None:
    """What the program does now ("loading the data"), and whether training has happened. A
    signal whose SystemExit some library swallowed (a bare ``except:`` during an import) ends
    the program here, at the next phase."""
    if _state["fired"]:
        raise SystemExit(130)
    _state["phase"], _state["trained"], _state["importing"] = what, trained, False


def interrupted_line(signum: int) -> str:
    name = _NAMES.get(signum, f"signal {signum}")
    tail = "" if _state["trained"] else "; no epoch was trained"
    return f"dpmlp: interrupted ({name}) while {_state['phase']}{tail}"


def _stop(signum: int):
    _state["fired"] = True
    if _is_rank0():
        try:
            os.write(2, (interrupted_line(signum) + "\n").encode())
        except OSError:
            pass
    if _state["importing"]:
        # Nothing made yet, nothing to clean up: end here. A SystemExit raised while an
        # extension module imports (numpy's C core) would become that module's ImportError
        # and a traceback.
        os._exit(130)
    raise SystemExit(130)


def _handle(signum, frame) -> None:
    if _state["fired"]:
        os._exit(130)  # the second signal: now
    if _state["held"]:
        _state["pending"] = signum
        return
    _stop(signum)


def install_signal_handlers(importing: bool = False) -> None:
    """SIGINT and SIGTERM end the program with one line and exit 130 (see the module);
    ``importing``: the program's modules are loading, a signal ends it at once."""
    if importing:
        _state["importing"] = True
    for sig in SIGNALS:
        try:
            _signal.signal(sig, _handle)
        except (ValueError, OSError):  # not the main thread
            return


class _Deferred:
    """``with deferred():`` holds a signal back until the block (a write that must complete)
    is done."""

    def __enter__(self) -> None:
        _state["held"] += 1

    def __exit__(self, *exc) -> None:
        _state["held"] -= 1
        pending, _state["pending"] = _state["pending"], None
        if pending is not None and not _state["held"] and _signal.getsignal(pending) is _handle:
            _stop(pending)


def deferred() -> _Deferred:
    """Hold a signal back until the block (a write that must complete) is done."""
    return _Deferred()
