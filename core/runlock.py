"""The lock of a run directory: one job at a time writes it.

A job holds ``DIR/.lock`` with an OS file lock (``fcntl.flock``, exclusive, non-blocking) from
its pre-flight to its exit. The operating system releases it when the process ends however it
ends (kill -9 included), so a killed run never leaves the directory locked. Under the lock the
holder writes its pid, host and start time into the file, so that a second job can say who holds
the directory. The file itself stays: removing it could let two jobs lock two different inodes.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from core.errors import UserError

try:
    import fcntl
except ImportError:  # not POSIX: no locking (the run directory is then not defended)
    fcntl = None

LOCK_NAME = ".lock"


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


class RunLock:
    """An exclusive lock on a run directory, held until ``release()`` or the process's end."""

    def __init__(self, path: Path, fd: int | None):
        self.path, self._fd = path, fd

    @classmethod
    def acquire(cls, directory: str | os.PathLike, flag: str = "--run-dir") -> "RunLock":
        """Lock ``directory`` or raise UserError naming it and the pid that holds it."""
        path = Path(directory) / LOCK_NAME
        if fcntl is None:
            return cls(path, None)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as exc:
            raise UserError(f"{flag} {directory}: cannot create its lock file {path}: "
                            f"{_why(exc)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = read_holder(fd)
            os.close(fd)
            raise UserError(f"{flag} {directory}: in use by another run ({holder}); wait for it "
                            f"to end, or choose another --run-dir") from None
        except OSError as exc:
            os.close(fd)
            raise UserError(f"{flag} {directory}: cannot lock {path}: {_why(exc)} (a file "
                            f"system without locks?)") from None
        _write_holder(fd)
        return cls(path, fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor releases the flock
            self._fd = None


def _write_holder(fd: int) -> None:
    text = (f"pid {os.getpid()} on {socket.gethostname()} since "
            f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n").encode()
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, text, 0)
    except OSError:
        pass  # the lock holds without the note; a second job then says "pid unknown"


def read_holder(fd: int) -> str:
    """What the holder wrote: 'pid P on HOST since TIME' (or 'pid unknown' before it has)."""
    try:
        text = os.pread(fd, 200, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text if text.startswith("pid ") else "pid unknown"
