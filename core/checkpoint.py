"""Checkpoints: atomic writes from rank 0, loading, and validation against the current run.

A checkpoint is a ``.npz`` holding W1, b1, W2, b2 (in the run's dtype) and ``__meta__``, a JSON
document (as uint8 bytes) with the format tag, the training position, the full config, the dtype
and the dpmlp version. The training position is

    epoch  completed epochs;
    step   completed steps of epoch ``epoch + 1`` (0 at an epoch boundary);

so a run resumed from it starts epoch ``epoch + 1`` at sample ``step * batch_size``, which replays
exactly the batches the uninterrupted run would have taken (the loop runs in file order).

Every write goes through :func:`atomic_write`: a temporary file in the target's directory, fsync,
rename over the target, fsync of the directory. A writer killed half-way leaves the previous file
intact and a temporary ``.NAME.PID.XXXX.tmp`` that no reader looks at and the next write to that
directory removes. Every problem with a checkpoint is a :class:`core.errors.UserError` of one line
naming the file and what is wrong with it.
"""

from __future__ import annotations

import errno
import io
import json
import math
import os
import re
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np

from core import __version__
from core.errors import UserError

FORMAT = "dpmlp-checkpoint"
FORMAT_VERSION = 1
META_KEY = "__meta__"
PARAM_NAMES = ("W1", "b1", "W2", "b2")
INPUTS, CLASSES = 784, 10

#: run-directory layout: DIR/checkpoints/ckpt-EEEE-SSSSSSSS.npz (epoch, step within next epoch)
CHECKPOINT_SUBDIR = "checkpoints"
_CKPT_NAME = re.compile(r"^ckpt-(\d{4,})-(\d{8,})\.npz$")
_TMP_NAME = re.compile(r"^\..+\.(\d+)\.[^.]+\.tmp$")

#: Config keys that must be equal for a resumed run to continue the same computation, and the
#: flag each one is set by (for the error message).
MUST_MATCH = {
    "hidden": "--hidden",
    "dtype": "--dtype",
    "batch_size": "--batch-size",
    "lr": "--lr",
    "reg": "--reg",
    "scale": "--scale",
    "train_size": "--train-size",
    "val_size": "--val-size",
    "exact": "--exact",
}
#: Keys that may differ; a difference is reported as a note (results then differ by rounding).
MAY_DIFFER = {"ranks": "ranks", "backend": "--backend", "comm": "--comm", "seed": "--seed",
              "gemm": "--gemm"}


class CheckpointError(UserError):
    """A checkpoint that cannot be read or does not fit this run; names the file."""


# ---------------------------------------------------------------------------- atomic writes
def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # e.g. a platform without directory fds: the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def remove_stale_temporaries(directory: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Remove temporaries left by writers that no longer run (killed before their rename).

    A temporary is ``.NAME.PID.XXXX.tmp``; it is removed when its PID is not a live process on
    this host, or is this process (a write of ours that did not finish). ``name`` restricts the
    sweep to one target's temporaries. Returns what was removed."""
    removed = []
    directory = Path(directory)
    try:
        entries = list(directory.iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = _TMP_NAME.match(entry.name)
        if not m or (name is not None and not entry.name.startswith(f".{name}.")):
            continue
        pid = int(m.group(1))
        if pid != os.getpid() and _pid_alive(pid):
            continue
        try:
            entry.unlink()
            removed.append(entry)
        except OSError:
            pass
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Write ``path`` atomically: ``write(fh)`` into a temporary in the same directory, fsync,
    rename over ``path``, fsync the directory. On any failure (or Ctrl-C) the temporary is removed
    and ``path`` is untouched."""
    path = Path(path)
    directory = path.parent
    remove_stale_temporaries(directory, path.name)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), _default_mode())
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(directory)
    return path


def save_params(path: str | os.PathLike, params: dict[str, np.ndarray]) -> Path:
    """``--save``: W1, b1, W2, b2 only (the historical format), written atomically."""
    return atomic_write(path, lambda fh: np.savez(fh, **{k: params[k] for k in PARAM_NAMES}))


# ---------------------------------------------------------------------------- the checkpoint
@dataclass
class Checkpoint:
    params: dict[str, np.ndarray]
    epoch: int                 # completed epochs
    step: int                  # completed steps of epoch ``epoch + 1`` (0 at a boundary)
    config: dict[str, Any]     # the run's full config (flags after defaults, ranks, backend ...)
    dtype: str
    version: str = __version__
    extras: dict[str, Any] = field(default_factory=dict)  # e.g. the partial epoch's loss sum
    path: Path | None = None

    @property
    def hidden(self) -> int:
        return int(self.params["W1"].shape[0])

    @property
    def at_epoch_boundary(self) -> bool:
        return self.step == 0

    def describe(self) -> str:
        """The position as every message says it (1-based): "epoch 1 step 69" (69 steps of
        epoch 1 done), or "the end of epoch 2"."""
        return (f"epoch {self.epoch + 1} step {self.step}" if self.step
                else f"the end of epoch {self.epoch}")


def save_checkpoint(path: str | os.PathLike, params: dict[str, np.ndarray], *, epoch: int,
                    step: int, config: dict[str, Any], dtype: str,
                    extras: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint file atomically (call on rank 0 only)."""
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "dpmlp_version": __version__,
        "epoch": int(epoch), "step": int(step), "dtype": str(dtype),
        "hidden": int(params["W1"].shape[0]), "config": _jsonable(config),
        "extras": _jsonable(extras or {}),
    }
    arrays = {k: np.asarray(params[k], dtype=dtype) for k in PARAM_NAMES}
    blob = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)

    def write(fh):
        np.savez(fh, **arrays, **{META_KEY: blob})

    return atomic_write(path, write)


def _jsonable(value):
    """Config values as JSON: numpy scalars to Python, paths to str, anything else to repr."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return repr(value)


# ---------------------------------------------------------------------------- run directories
def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / CHECKPOINT_SUBDIR


def checkpoint_name(epoch: int, step: int, steps_per_epoch: int | None = None) -> str:
    """``ckpt-EEEE-SSSSSSSS.npz`` in the messages' convention (1-based): step S of epoch E is
    the last one done. After ``epoch`` completed epochs and ``step`` steps of the next, that is
    epoch ``epoch + 1`` step ``step``; at an epoch's end (step 0), epoch ``epoch`` step
    ``steps_per_epoch``. The names sort in the order the run reached them."""
    if step or not steps_per_epoch or not epoch:
        return f"ckpt-{epoch + (1 if step else 0):04d}-{step:08d}.npz"
    return f"ckpt-{epoch:04d}-{steps_per_epoch:08d}.npz"


def _steps_per_epoch(config: dict[str, Any]) -> int | None:
    try:
        return max(1, -(-int(config["train_size"]) // int(config["batch_size"])))
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None


def _name_key(path: Path) -> tuple[int, int]:
    m = _CKPT_NAME.match(path.name)
    return (int(m.group(1)), int(m.group(2))) if m else (-1, -1)


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """The run directory's checkpoints, oldest first (temporaries are not checkpoints)."""
    found = []
    directory = checkpoint_dir(run_dir)
    if directory.is_dir():
        for entry in directory.iterdir():
            if _CKPT_NAME.match(entry.name) and entry.is_file():
                found.append(entry)
    return sorted(found, key=_name_key)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def write_run_checkpoint(run_dir: str | os.PathLike, params: dict[str, np.ndarray], *,
                         epoch: int, step: int, config: dict[str, Any], dtype: str,
                         extras: dict[str, Any] | None = None, keep: int = 2) -> Path:
    """Write ``DIR/checkpoints/ckpt-EEEE-SSSSSSSS.npz`` (rank 0), then keep only the newest
    ``keep`` checkpoints. Older ones go only after the new one is safely in place, and
    checkpoints from a later position than this one (a previous attempt that diverged or was
    resumed from further back) are removed too, so "latest" is always this one."""
    directory = checkpoint_dir(run_dir)
    directory.mkdir(parents=True, exist_ok=True)
    name = checkpoint_name(epoch, step, _steps_per_epoch(config))
    path = save_checkpoint(directory / name, params, epoch=epoch, step=step, config=config,
                           dtype=dtype, extras=extras)
    remove_stale_temporaries(directory)
    others = [p for p in list_checkpoints(run_dir) if p != path]
    later = [p for p in others if _name_key(p) > _name_key(path)]
    earlier = [p for p in others if _name_key(p) < _name_key(path)]
    for old in later + earlier[:max(0, len(earlier) - (keep - 1))]:
        try:
            old.unlink()
        except OSError:
            pass
    _fsync_dir(directory)
    return path


# ---------------------------------------------------------------------------- loading
def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file as given, or the latest checkpoint of a run directory."""
    path = Path(path)
    if path.is_dir():
        latest = latest_checkpoint(path)
        if latest is None and (path / "config.json").exists():
            raise CheckpointError(f"{path}: a run directory without checkpoints (its run stopped "
                                  f"before the first); start it again in itself with --resume "
                                  f"{path}, or replace it with --run-dir {path} --overwrite")
        if latest is None:
            raise CheckpointError(f"{path}: a directory without checkpoints (expected a checkpoint "
                                  f"file or a run directory with {CHECKPOINT_SUBDIR}/ckpt-*.npz)")
        return latest
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    return path


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint (a file, or a run directory's latest). Raises CheckpointError (one line
    naming the file) for a missing, truncated, corrupt or foreign file."""
    path = resolve_checkpoint(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint: {exc.strerror or exc}") from None
    if not raw.startswith(b"PK"):
        raise CheckpointError(f"{path}: not a dpmlp checkpoint (not an .npz archive)")
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            names = set(z.files)
            if META_KEY not in names:
                what = "a --save parameters file" if set(PARAM_NAMES) <= names else "an .npz"
                raise CheckpointError(f"{path}: not a dpmlp checkpoint ({what} without the "
                                      f"{META_KEY} entry)")
            arrays = {name: z[name] for name in names}  # reads and CRC-checks every member
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, EOFError, ValueError, OSError, KeyError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({reason})") from None
    try:
        meta = json.loads(arrays.pop(META_KEY).tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: corrupt checkpoint metadata ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a dpmlp checkpoint (format tag "
                              f"{meta.get('format') if isinstance(meta, dict) else None!r})")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {meta['format_version']} written by "
                              f"dpmlp {meta.get('dpmlp_version')} is newer than this dpmlp "
                              f"({__version__}) reads")
    missing = [k for k in PARAM_NAMES if k not in arrays]
    if missing:
        raise CheckpointError(f"{path}: corrupt checkpoint (no {', '.join(missing)})")
    hidden, dtype, epoch, step = _checked_meta(path, meta)
    _check_arrays(path, arrays, hidden, dtype)
    params = {k: np.asfortranarray(arrays[k]) for k in PARAM_NAMES}
    return Checkpoint(params=params, epoch=epoch, step=step, config=meta["config"],
                      dtype=dtype, version=str(meta.get("dpmlp_version", "?")),
                      extras=meta["extras"], path=path)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _field(path, name: str, problem: str) -> CheckpointError:
    return CheckpointError(f"{path}: field {name} {problem}; not a checkpoint to resume from")


def _checked_meta(path, meta: dict) -> tuple[int, str, int, int]:
    """Every field of the metadata against its range and the others: (hidden, dtype, epoch,
    step), or CheckpointError naming the file and the field."""
    for name in ("hidden", "epoch", "step"):
        if not _is_int(meta.get(name)) or meta[name] < (1 if name == "hidden" else 0):
            raise _field(path, name, f"is {meta.get(name)!r}, expected an integer "
                                     f">= {1 if name == 'hidden' else 0}")
    hidden, epoch, step, dtype = meta["hidden"], meta["epoch"], meta["step"], meta.get("dtype")
    if dtype not in ("float32", "float64"):
        raise _field(path, "dtype", f"is {dtype!r}, expected float32 or float64")
    config, extras = meta.get("config"), meta.get("extras", {})
    if not isinstance(config, dict):
        raise _field(path, "config", "is missing")
    if not isinstance(extras, dict):
        raise _field(path, "extras", f"is {extras!r}, expected an object")
    # (a key this run has and the checkpoint lacks is refused by check_same_computation)
    for key, value in (("hidden", hidden), ("dtype", dtype)):
        if key in config and config[key] != value:
            raise _field(path, f"config.{key}", f"is {config[key]!r} but the parameters are "
                                                f"{key} {value!r}")
    _check_position(path, config, extras, epoch, step)
    return hidden, dtype, epoch, step


def _check_position(path, config: dict, extras: dict, epoch: int, step: int) -> None:
    """The position within the run the checkpoint records: within its epochs, a step within an
    epoch of its training set, a partial epoch's loss sum finite."""
    for key in ("epochs", "train_size", "batch_size"):
        if key in config and (not _is_int(config[key]) or config[key] < 1):
            raise _field(path, f"config.{key}", f"is {config[key]!r}, expected an integer >= 1")
    if "epochs" in config and (epoch > config["epochs"] or (step and epoch >= config["epochs"])):
        raise _field(path, "epoch", f"is {epoch} (step {step}) in a run of "
                                    f"{config['epochs']} epoch(s)")
    if "train_size" not in config or "batch_size" not in config:
        return
    spe = -(-config["train_size"] // config["batch_size"])
    if step >= spe:
        raise _field(path, "step", f"is {step}, but an epoch of {config['train_size']} images "
                                   f"in batches of {config['batch_size']} has {spe} steps")
    if step:
        nll = extras.get("epoch_nll_sum")
        if isinstance(nll, bool) or not isinstance(nll, (int, float)) or not (
                math.isfinite(nll) and nll >= 0):
            raise _field(path, "extras.epoch_nll_sum", f"is {nll!r}, expected the partial "
                                                       f"epoch's loss sum (a finite number >= 0)")


def _check_arrays(path, arrays: dict, hidden: int, dtype: str) -> None:
    """W1, b1, W2, b2: the shapes of ``hidden``, the dtype of the metadata, finite values."""
    expected = {"W1": (hidden, INPUTS), "b1": (hidden,), "W2": (CLASSES, hidden), "b2": (CLASSES,)}
    for name, shape in expected.items():
        arr = arrays[name]
        if arr.shape != shape:
            raise CheckpointError(f"{path}: corrupt checkpoint ({name} has shape {arr.shape}, "
                                  f"expected {shape} for hidden {hidden})")
        if arr.dtype != np.dtype(dtype):
            raise CheckpointError(f"{path}: corrupt checkpoint ({name} is {arr.dtype}, metadata "
                                  f"says {dtype})")
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        if bad:
            raise _field(path, name, f"holds {bad} non-finite value(s) (inf or nan: a diverged "
                                     f"run's parameters)")


def validate_checkpoint(ckpt: Checkpoint, current: dict[str, Any], *,
                        epochs: int | None = None, steps_per_epoch: int | None = None) -> list[str]:
    """Check that ``ckpt`` can continue the run described by ``current`` (the same keys as the
    checkpoint's config: hidden, dtype, batch_size, lr, ...). A difference in a MUST_MATCH key,
    a position past the end of training, or a step past the end of an epoch raises
    CheckpointError naming the file and the difference; differences that only change rounding
    (ranks, backend, comm) come back as one-line notes."""
    where = f"--resume {ckpt.path}" if ckpt.path is not None else "checkpoint"
    # hidden and dtype from the arrays themselves, whatever the stored config says
    saved = dict(ckpt.config, hidden=ckpt.hidden, dtype=ckpt.dtype)
    check_same_computation(saved, current, where)
    if steps_per_epoch is not None and ckpt.step >= steps_per_epoch:
        raise CheckpointError(f"{where}: step {ckpt.step} of epoch {ckpt.epoch + 1} is past the end "
                              f"of an epoch of {steps_per_epoch} steps (other training data?)")
    if epochs is not None and (ckpt.epoch > epochs or (ckpt.epoch == epochs and ckpt.step == 0)):
        raise CheckpointError(f"{where}: already trained {ckpt.epoch} epoch(s); pass --epochs "
                              f"greater than {ckpt.epoch} to train further")
    notes = []
    exact = bool(current.get("exact")) and bool(saved.get("exact"))
    for key, flag in MAY_DIFFER.items():
        if exact and key != "seed":
            continue  # --exact: ranks, backend and communicator do not change a bit
        if key in current and key in saved and not _same(saved[key], current[key]):
            notes.append(f"note: {where} was trained with {flag} {_show(saved[key])}, this run "
                         f"has {_show(current[key])}; the result differs from an uninterrupted "
                         f"run by rounding only")
    return notes


def check_same_computation(saved: dict[str, Any], current: dict[str, Any], where) -> None:
    """CheckpointError naming ``where`` and the flag when a MUST_MATCH key differs between the
    run recorded in ``saved`` and this one (or is missing from the record)."""
    for key, flag in MUST_MATCH.items():
        if key not in current:
            continue
        if key not in saved:
            raise CheckpointError(f"{where}: field config.{key} is missing ({flag}); not a "
                                  f"checkpoint to resume from")
        if not _same(saved[key], current[key]):
            raise CheckpointError(f"{where}: was trained with {flag} {_show(saved[key])}, this run "
                                  f"has {flag} {_show(current[key])}; resume with the same "
                                  f"{flag} or start a new run")


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


def _show(value) -> str:
    return "(default)" if value is None else str(value)


# ---------------------------------------------------------------------------- pre-flight
def check_writable_target(flag: str, path: str | os.PathLike, kind: str = "file") -> None:
    """Fail before training when ``path`` (given with ``flag``) cannot be written.

    kind "file" (--save): ``path`` must not be a directory, and its directory must exist and
    take a new file. kind "dir" (--run-dir): ``path`` is an existing directory that takes a new
    file, or does not exist and its parent takes a new directory (only the last component is
    created). The test is an actual write of a temporary file (os.access says yes to root and
    knows nothing of read-only mounts)."""
    if kind not in ("file", "dir"):
        raise ValueError(f"kind must be 'file' or 'dir', not {kind!r}")
    path = Path(path)
    where = f"{flag} {path}"
    if kind == "file":
        if path.is_dir():
            raise UserError(f"{where}: is a directory; give a file name, e.g. {path / 'params.npz'}")
        if path.exists() and not path.is_file():
            raise UserError(f"{where}: exists and is not a regular file")
        probe_in = path.absolute().parent
    else:
        if path.exists() and not path.is_dir():
            raise UserError(f"{where}: exists and is not a directory")
        probe_in = path if path.is_dir() else path.absolute().parent
    if not probe_in.exists():
        raise UserError(f"{where}: directory {probe_in} does not exist")
    if not probe_in.is_dir():
        raise UserError(f"{where}: {probe_in} is not a directory")
    try:
        _probe_write(probe_in)
    except OSError as exc:
        raise UserError(f"{where}: cannot write in {probe_in}: {_why(exc)}") from None


def _probe_write(directory: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".dpmlp-probe.{os.getpid()}.", suffix=".tmp", dir=directory)
    try:
        os.write(fd, b"x")
    finally:
        os.close(fd)
        os.unlink(tmp)


def why(exc: OSError) -> str:
    """An OSError in the words of a one-line message: 'no space left on device', ..."""
    return _why(exc)


def _why(exc: OSError) -> str:
    return {errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
            errno.EPERM: "permission denied", errno.ENOSPC: "no space left on device",
            errno.EDQUOT: "disk quota exceeded"}.get(exc.errno, exc.strerror or str(exc))
