"""SIGINT and SIGTERM from the first line of a dpmlp program: one line and exit 130.

Installed by the entry points before their heavy imports (``python -m core.train``, the
``dpmlp`` command), so that a Ctrl-C while numpy or MPI load is one line, not a traceback, and a
SIGTERM during start-up is not a silent death. The handler raises ``SystemExit(130)``, so
``finally`` blocks still run (a run directory the job made and wrote nothing to is removed);
a second signal ends the process at once. While the training loop runs, its own handler
(core/session.py's StopRequest) takes over and this one comes back after it.

``phase(what)`` names what the program is doing, for the line; ``deferred()`` holds a signal
back until a write in progress (--save, a checkpoint) is complete. Standard library only: this
module is imported before anything else.
"""

from __future__ import annotations

import os
import signal
from contextlib import contextmanager
from typing import Iterator

_RANK_VARS = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID")
SIGNALS = (signal.SIGINT, signal.SIGTERM)

_state = {"phase": "starting up", "trained": False, "held": 0, "pending": None, "fired": False}


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
    _state["phase"], _state["trained"] = what, trained


def interrupted_line(signum: int) -> str:
    name = signal.Signals(signum).name
    tail = "" if _state["trained"] else "; no epoch was trained"
    return f"dpmlp: interrupted ({name}) while {_state['phase']}{tail}"


def _stop(signum: int):
    _state["fired"] = True
    if _is_rank0():
        try:
            os.write(2, (interrupted_line(signum) + "\n").encode())
        except OSError:
            pass
    raise SystemExit(130)


def _handle(signum, frame) -> None:
    if _state["fired"]:
        os._exit(130)  # the second signal: now
    if _state["held"]:
        _state["pending"] = signum
        return
    _stop(signum)


def install_signal_handlers() -> None:
    """SIGINT and SIGTERM end the program with one line and exit 130 (see the module)."""
    for sig in SIGNALS:
        try:
            signal.signal(sig, _handle)
        except (ValueError, OSError):  # not the main thread
            return


@contextmanager
def deferred() -> Iterator[None]:
    """Hold a signal back until the block (a write that must complete) is done."""
    _state["held"] += 1
    try:
        yield
    finally:
        _state["held"] -= 1
        pending, _state["pending"] = _state["pending"], None
        if pending is not None and not _state["held"] and signal.getsignal(pending) is _handle:
            _stop(pending)
