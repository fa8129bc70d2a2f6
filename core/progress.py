"""Progress output of rank 0: a tqdm bar per epoch on a terminal, one line per epoch otherwise,
and a closing summary.

    progress = Progress(epochs=E, steps_per_epoch=S, enabled=comm.rank == 0, quiet=args.quiet)
    for each epoch:   progress.start_epoch(epoch)
        each step:    progress.on_step(samples=n, loss=lambda: running_mean_loss)
        at its end:   progress.end_epoch(epoch, loss, val_accuracy, seconds, samples)
    progress.finish()                     # prints the summary line (and returns it)
    with progress.task("test", total=M) as t: ... t.update(k)   # test set, reference run

The bar (steps, samples/s, ETA, running loss) is drawn only when the stream is a terminal, not
--quiet, and tqdm can be imported (it is imported lazily; without it the plain lines are used).
The running loss may be given as a callable: it is called only when the bar is redrawn (at most
every ``refresh`` seconds), so a GPU backend is not synchronised at every step. When the bar is
off, on_step costs one attribute update. --quiet drops the per-epoch lines but keeps the
summary. Every method is a no-op on ranks other than 0 (``enabled=False``).
"""

from __future__ import annotations

import math
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, TextIO


def load_tqdm():
    """tqdm's class, or None when it is not installed (a fallback, not an error)."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm


def format_epoch_line(epoch: int, epochs: int, loss: float, val_accuracy: float | None,
                      seconds: float, samples: int | None = None) -> str:
    """The plain per-epoch line (its start is what scripts and tests parse)."""
    line = f"epoch {epoch:3d}/{epochs}  loss {loss:.4f}  "
    if val_accuracy is not None:
        line += f"val acc {100 * val_accuracy:6.2f}%  "
    line += f"time {seconds:.3f} s"
    if samples and seconds > 0:
        line += f"  {samples / seconds:,.0f} samples/s"
    return line


@dataclass
class _Totals:
    epochs: int = 0
    samples: int = 0
    seconds: float = 0.0
    best_val: float | None = None
    best_epoch: int | None = None
    last_loss: float | None = None
    history: list = field(default_factory=list)


class _NullTask:
    def update(self, n: int = 1) -> None:
        pass


class Progress:
    def __init__(self, *, epochs: int, steps_per_epoch: int, enabled: bool = True,
                 quiet: bool = False, stream: TextIO | None = None, bar: bool | None = None,
                 refresh: float = 0.5, silent: bool = False):
        """``bar``: None decides (terminal and not quiet and tqdm importable); True/False force.
        ``silent``: neither bar nor per-epoch lines (--progress none), the rest as usual."""
        self.epochs, self.steps_per_epoch = epochs, max(1, steps_per_epoch)
        self.enabled, self.quiet, self.silent = enabled, quiet, silent
        self.stream = stream if stream is not None else sys.stdout
        self.refresh = refresh
        self._tqdm = None
        if enabled and not quiet and not silent and (bar if bar is not None
                                                     else _isatty(self.stream)):
            self._tqdm = load_tqdm()
        self.totals = _Totals()
        self._bar = None
        self._epoch = 0
        self._began = 0.0
        self._samples = 0
        self._last_postfix = 0.0

    @property
    def uses_bar(self) -> bool:
        return self._tqdm is not None

    # ------------------------------------------------------------------ epochs
    def start_epoch(self, epoch: int, first_step: int = 0) -> None:
        """Begin epoch ``epoch`` (1-based); ``first_step`` > 0 when resuming inside it."""
        if not self.enabled:
            return
        self._epoch, self._samples = epoch, 0
        self._began = self._last_postfix = time.perf_counter()
        if self._tqdm is not None:
            self._bar = self._tqdm(
                total=self.steps_per_epoch, initial=first_step, file=self.stream, leave=False,
                desc=f"epoch {epoch}/{self.epochs}", unit="step", dynamic_ncols=True,
                mininterval=min(self.refresh, 0.1),
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} steps "
                           "[{elapsed}<{remaining}{postfix}]")

    def on_step(self, samples: int, loss: float | Callable[[], float] | None = None,
                steps: int = 1) -> None:
        """``steps`` steps of ``samples`` samples (global) done; ``loss`` the running mean loss,
        or a callable giving it (called only when the bar is redrawn)."""
        if not self.enabled:
            return
        self._samples += samples
        bar = self._bar
        if bar is None:
            return
        now = time.perf_counter()
        if now - self._last_postfix >= self.refresh:
            self._last_postfix = now
            rate = self._samples / max(now - self._began, 1e-9)
            text = f"{rate:,.0f} samples/s"
            value = loss() if callable(loss) else loss
            if value is not None:
                text += f", loss {value:.4f}"
            bar.set_postfix_str(text, refresh=False)
        bar.update(steps)

    def end_epoch(self, epoch: int, loss: float, val_accuracy: float | None, seconds: float,
                  samples: int | None = None) -> str | None:
        """Close the epoch's bar and print its line (unless quiet). Returns the line."""
        if not self.enabled:
            return None
        self._close_bar()
        samples = self._samples if samples is None else samples
        t = self.totals
        t.epochs += 1
        t.samples += samples
        t.seconds += seconds
        t.last_loss = loss
        t.history.append((epoch, loss, val_accuracy, seconds, samples))
        if val_accuracy is not None and (t.best_val is None or val_accuracy > t.best_val):
            t.best_val, t.best_epoch = val_accuracy, epoch
        line = format_epoch_line(epoch, self.epochs, loss, val_accuracy, seconds, samples)
        if not self.quiet and not self.silent:
            self._print(line)
        return line

    def end_stats(self, stats, samples: int | None = None) -> str | None:
        """end_epoch from a core.data_parallel.EpochStats."""
        return self.end_epoch(stats.epoch, stats.loss, stats.val_accuracy, stats.seconds, samples)

    # ------------------------------------------------------------------ summary
    def summary(self, test_accuracy: float | None = None) -> str:
        t = self.totals
        line = "done: no epoch trained"
        if t.epochs:
            rate = t.samples / t.seconds if t.seconds > 0 else math.inf
            line = (f"done: {t.epochs} epoch(s), {t.samples:,} samples in {t.seconds:.1f} s "
                    f"({rate:,.0f} samples/s)")
        if t.best_val is not None:
            line += f"; best val acc {100 * t.best_val:.2f}% at epoch {t.best_epoch}"
        if test_accuracy is not None:
            line += f"; test acc {100 * test_accuracy:.2f}%"
        return line

    def finish(self, test_accuracy: float | None = None) -> str | None:
        """Print the summary line (also when quiet) and return it."""
        if not self.enabled:
            return None
        self._close_bar()
        line = self.summary(test_accuracy)
        self._print(line)
        return line

    # ------------------------------------------------------------------ other work
    @contextmanager
    def task(self, desc: str, total: int, unit: str = "img") -> Iterator:
        """A bar for other work (the test set, a reference run): ``with p.task("test", n) as t:
        t.update(k)``. Without a bar it does nothing."""
        if not self.enabled or self._tqdm is None:
            yield _NullTask()
            return
        bar = self._tqdm(total=total, desc=desc, unit=unit, file=self.stream, leave=False,
                         dynamic_ncols=True)
        try:
            yield bar
        finally:
            bar.close()

    def write(self, line: str) -> None:
        """Print a line without breaking a bar that is being drawn."""
        if self.enabled:
            self._print(line)

    def close(self) -> None:
        self._close_bar()

    # ------------------------------------------------------------------ helpers
    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _print(self, line: str) -> None:
        if self._bar is not None and self._tqdm is not None:
            self._tqdm.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)


#: --progress's choices: auto (a bar on a terminal, the launcher's under mpirun), bar, lines, none
PROGRESS_CHOICES = ("auto", "bar", "lines", "none")


def launcher_terminal(max_depth: int = 8) -> bool:
    """Under a launcher (mpirun: its daemon, then mpirun), whether the stdout of an ancestor
    process, the launcher's, is a terminal: rank 0's own stdout is then a pipe to it, and the
    bar, forwarded, is drawn there. Linux (/proc); False where that cannot be read."""
    pid = os.getppid()
    for _ in range(max_depth):
        if pid <= 1:
            return False
        try:
            target = os.readlink(f"/proc/{pid}/fd/1")
            if target.startswith(("/dev/pts/", "/dev/tty")):
                return True
            with open(f"/proc/{pid}/stat") as fh:
                pid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
    return False


def wants_bar(choice: str, stream, launched: bool) -> bool | None:
    """--progress to Progress's ``bar``: True (bar), False (lines), None (auto: decided there,
    with the launcher's terminal counted as this one's under a launcher)."""
    if choice == "bar":
        return True
    if choice in ("lines", "none"):
        return False
    if launched and not _isatty(stream) and launcher_terminal():
        return True
    return None


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
