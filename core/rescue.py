"""Nothing lost: when --save, a checkpoint or metrics.jsonl cannot be written (no space, an I/O
error, a file system gone read-only), the parameters are written somewhere else, and one line
says what failed and where they are (exit 5, core/errors.py).

The places tried, in order: the run directory (for --save), then the fallback locations:
``DPMLP_RESCUE_DIR`` when set, the temporary directory (``TMPDIR``, else /tmp) and the home
directory. The rescued file's name holds the process id, so a rescue never overwrites another.
Rank 0 only (it is the one that writes).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Iterable

from core.checkpoint import why

RESCUE_ENV = "DPMLP_RESCUE_DIR"


def fallback_dirs(first: Iterable[str | os.PathLike | None] = ()) -> list[Path]:
    """``first`` (those given), then DPMLP_RESCUE_DIR, the temporary and the home directory,
    each once."""
    candidates = [*first, os.environ.get(RESCUE_ENV) or None, tempfile.gettempdir(),
                  os.path.expanduser("~")]
    found: list[Path] = []
    for c in candidates:
        if c and Path(c).is_dir() and Path(c).resolve() not in [p.resolve() for p in found]:
            found.append(Path(c))
    return found


def rescue(write: Callable[[Path], object], name: str,
           first: Iterable[str | os.PathLike | None] = ()) -> Path | None:
    """``write(path)`` into the first place that takes it (see fallback_dirs); the path
    written, or None when none did."""
    target_name = f"dpmlp-rescued-{os.getpid()}-{name}"
    for directory in fallback_dirs(first):
        target = directory / target_name
        try:
            write(target)
        except OSError:
            continue
        return target
    return None


def failure_line(what: str, exc: OSError, saved: Path | None, resume: bool) -> str:
    """The one line: what failed and why, and where the parameters are now."""
    line = f"{what}: cannot write: {why(exc)}; "
    if saved is None:
        return line + ("no fallback location could take the parameters either (set "
                       f"{RESCUE_ENV} to a directory with space)")
    line += f"the parameters are safe in {saved}"
    if resume:
        line += f" (a checkpoint: continue with --resume {saved} --run-dir NEW_DIR)"
    return line
