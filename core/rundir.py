"""``--run-dir DIR``: what a run was (config.json), how it went (metrics.jsonl), and where it can
be resumed from (checkpoints/, see core.checkpoint). Written by rank 0 only.

    DIR/config.json     every flag after defaults, backend, communicator, ranks, dtype, devices,
                        package versions, dpmlp version, start time, command line;
    DIR/metrics.jsonl   one JSON object per epoch: epoch, step, loss, val_accuracy, seconds,
                        samples_per_s, time; appended, flushed and fsynced each epoch. On resume
                        the lines for epochs after the checkpoint are dropped, so that each epoch
                        appears once. Non-finite losses are written as the strings "inf"/"nan".
    DIR/checkpoints/    ckpt-EEEE-SSSSSSSS.npz (core.checkpoint.write_run_checkpoint)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import socket
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

from core import __version__
from core.checkpoint import _jsonable, atomic_write, check_writable_target, list_checkpoints
from core.errors import UserError
from core.runlock import LOCK_NAME, RunLock

CONFIG = "config.json"
METRICS = "metrics.jsonl"

#: Packages whose versions config.json records (those installed).
PACKAGES = ("numpy", "pluggy", "pooch", "platformdirs", "mpi4py", "cupy", "cupy-cuda12x",
            "cupy-cuda13x", "pycuda", "tqdm", "threadpoolctl", "matplotlib")


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str]:
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


class RunDir:
    """A run directory. ``RunDir.prepare(path)`` on rank 0 before training (after the flags)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.created = False  # prepare() made the directory (discard_if_unused may remove it)
        self.lock: RunLock | None = None
        self.restart_config: dict | None = None  # a run restarted from its beginning: its config

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    @classmethod
    def prepare(cls, path: str | os.PathLike, flag: str = "--run-dir") -> "RunDir":
        """Check that ``path`` can be written (UserError naming ``flag`` otherwise) and create it
        (the last component only)."""
        check_writable_target(flag, path, "dir")
        run = cls(path)
        try:
            run.created = not run.path.exists()
            run.path.mkdir(exist_ok=True)
        except OSError as exc:
            raise UserError(f"{flag} {path}: cannot create: {exc.strerror or exc}") from None
        return run

    def acquire(self, flag: str = "--run-dir") -> "RunDir":
        """Lock the directory for this job (UserError naming the pid that holds it)."""
        self.lock = RunLock.acquire(self.path, flag)
        return self

    def has_run(self) -> bool:
        """True when the directory already holds a run (config.json, metrics.jsonl or a
        checkpoint)."""
        return self.state() != "empty"

    def state(self) -> str:
        """"empty" (nothing of a run), "started" (config.json or metrics.jsonl but no checkpoint:
        a run that stopped before its first one) or "checkpointed"."""
        if list_checkpoints(self.path):
            return "checkpointed"
        if self.config_path.exists() or self.metrics_path.exists():
            return "started"
        return "empty"

    def clear_unfinished(self) -> None:
        """--overwrite of a run without checkpoints: its config.json and metrics.jsonl go."""
        for path in (self.config_path, self.metrics_path):
            try:
                path.unlink()
            except FileNotFoundError:
                pass

    def release(self, discard_if_unused: bool = False) -> None:
        """Release the lock; with ``discard_if_unused``, remove a directory that prepare() made
        and nothing of a run was written to (a job that ended during its start-up)."""
        if discard_if_unused and self.created and self.lock is not None and self.lock.held:
            try:
                names = {p.name for p in self.path.iterdir()}
            except OSError:
                names = {"?"}
            if names <= {LOCK_NAME}:
                try:
                    (self.path / LOCK_NAME).unlink()
                    self.path.rmdir()
                except OSError:
                    pass
        if self.lock is not None:
            self.lock.release()

    # ------------------------------------------------------------------ config.json
    def write_config(self, flags: argparse.Namespace | dict[str, Any], *, backend: str,
                     comm: str, ranks: int, dtype: str, devices: Iterable[str] = (),
                     resumed_from: str | os.PathLike | None = None,
                     extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write config.json atomically and return what was written. ``flags`` is the parsed
        argparse namespace (every flag, after defaults). On a resume the earlier starts are kept
        under "previous"."""
        flags = vars(flags) if isinstance(flags, argparse.Namespace) else dict(flags)
        config: dict[str, Any] = {
            "flags": _jsonable(flags),
            "backend": backend, "comm": comm, "ranks": int(ranks), "dtype": dtype,
            "devices": list(devices),
            "dpmlp_version": __version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "host": socket.gethostname(),
            "packages": package_versions(),
            "argv": list(sys.argv),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        if resumed_from is not None:
            config["resumed_from"] = os.fspath(resumed_from)
            previous = self.read_config_or_none()
            if previous:
                config["previous"] = previous.pop("previous", []) + [previous]
        if extra:
            config.update(_jsonable(extra))
        text = json.dumps(config, indent=2, sort_keys=False) + "\n"
        atomic_write(self.config_path, lambda fh: fh.write(text.encode()))
        return config

    def read_config_or_none(self) -> dict[str, Any] | None:
        try:
            return read_config(self.path)
        except UserError:
            return None

    # ------------------------------------------------------------------ metrics.jsonl
    def append_metrics(self, record: dict[str, Any]) -> None:
        """Append one epoch's record as a JSON line, flushed and fsynced."""
        line = json.dumps(encode_record(record), sort_keys=False) + "\n"
        with open(self.metrics_path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())

    def epoch_record(self, *, epoch: int, step: int, loss: float, val_accuracy: float | None,
                     seconds: float, samples: int, **more) -> dict[str, Any]:
        """The standard record of one epoch (``samples`` trained in ``seconds``); append it with
        append_metrics. ``step`` is the global step count at the end of the epoch."""
        record = {"epoch": int(epoch), "step": int(step), "loss": float(loss),
                  "val_accuracy": None if val_accuracy is None else float(val_accuracy),
                  "seconds": float(seconds),
                  "samples_per_s": samples / seconds if seconds > 0 else None,
                  "time": time.time()}
        record.update(more)
        return record

    def truncate_metrics(self, completed_epochs: int) -> int:
        """Keep the records of epochs 1..completed_epochs (the resumed checkpoint's), drop later
        ones and any torn last line; atomic. Returns how many records were dropped."""
        if not self.metrics_path.exists():
            return 0
        kept, dropped = [], 0
        for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
                epoch = int(record["epoch"])
            except (ValueError, KeyError, TypeError):
                dropped += 1  # a line torn by a killed writer
                continue
            if epoch <= completed_epochs:
                kept.append(line)
            else:
                dropped += 1
        if dropped:
            text = "".join(line + "\n" for line in kept)
            atomic_write(self.metrics_path, lambda fh: fh.write(text.encode()))
        return dropped

    def read_metrics(self) -> list[dict[str, Any]]:
        return read_metrics(self.path)


def encode_record(record: dict[str, Any]) -> dict[str, Any]:
    """Non-finite floats become "inf", "-inf", "nan" (valid JSON that float() reads back)."""
    out = {}
    for key, value in record.items():
        if isinstance(value, float) and not math.isfinite(value):
            value = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        out[key] = _jsonable(value)
    return out


def read_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(run_dir) / CONFIG
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: not found (is {run_dir} a --run-dir?)") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read: {exc}") from None


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of metrics.jsonl, in order; a torn last line is skipped; losses as floats."""
    path = Path(run_dir) / METRICS
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(f"{path}: not found (is {run_dir} a --run-dir?)") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror or exc}") from None
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            if number == len(lines):
                continue  # torn by a killed writer
            raise UserError(f"{path}: line {number} is not JSON") from None
        for key in ("loss", "val_accuracy", "seconds", "samples_per_s"):
            if isinstance(record.get(key), str):
                record[key] = float(record[key])
        records.append(record)
    return records
