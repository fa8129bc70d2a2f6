"""The job's lifecycle, shared by the CLI, the benchmark and the test workers: launch detection,
the communicator's options (the one place their environment variables are read) and choice, the
device of each rank, the rank-0 printer, agreement on setup, and ending every rank on a failure.

Launch detection (how many ranks the launcher started, which one this is) works before any
communicator exists, from the launcher's environment. MPI itself is only touched through the
communicator plugins.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Callable, Mapping, NoReturn, TypeVar

from core.communicator import DEFAULT_COLLECTIVE_TIMEOUT, CommOptions, Communicator
from core.errors import UserError
from core.plugins import Entry, Registry

T = TypeVar("T")

CUDA_AWARE_ENV = "DPMLP_CUDA_AWARE_MPI"
TIMEOUT_ENV = "DPMLP_COLLECTIVE_TIMEOUT"

# Environment variables that launchers set for each rank (Open MPI, MPICH/Hydra, PMIx, Slurm).
_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS")
_RANK_VARS = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID")


def launched_size() -> int:
    """Number of ranks the launcher started, read from its environment (1 without a launcher)."""
    for var in _SIZE_VARS:
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 1


def launched_rank() -> int:
    """This process's rank according to the launcher's environment (0 without a launcher).

    Used before any communicator exists, e.g. so that only rank 0 prints a bad-flag message."""
    for var in _RANK_VARS:
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0




# ---------------------------------------------------------------------------- options
def comm_options(cuda_aware_mpi: bool | None = None, collective_timeout: float | None = None,
                 environ: Mapping[str, str] | None = None) -> CommOptions:
    """The communicator's options: a flag when given, else its environment variable, else the
    default. This is the one place the environment is read for them."""
    environ = os.environ if environ is None else environ
    if not cuda_aware_mpi:
        cuda_aware_mpi = _env_switch(environ, CUDA_AWARE_ENV, "--cuda-aware-mpi")
    if collective_timeout is None:
        text = environ.get(TIMEOUT_ENV, "")
        collective_timeout = DEFAULT_COLLECTIVE_TIMEOUT
        if text.strip():
            try:
                collective_timeout = float(text)
            except ValueError:
                raise UserError(f"{TIMEOUT_ENV}={text!r}: must be a number of seconds") from None
            if not 0 <= collective_timeout < float("inf"):
                raise UserError(f"{TIMEOUT_ENV}={text!r}: must be a number of seconds >= 0 "
                                f"(0 = off), as --collective-timeout")
    return CommOptions(cuda_aware_mpi=cuda_aware_mpi, collective_timeout=collective_timeout)


_SWITCH = {"": False, "0": False, "false": False, "no": False, "off": False,
           "1": True, "true": True, "yes": True, "on": True}


def _env_switch(environ: Mapping[str, str], name: str, flag: str) -> bool:
    """An on/off environment variable (1/0, true/false, yes/no, on/off), as its flag."""
    text = environ.get(name, "")
    try:
        return _SWITCH[text.strip().lower()]
    except KeyError:
        raise UserError(f"{name}={text!r}: must be 1 or 0 (as {flag})") from None




def check_gemm_flags(gemm: str, dtype: str) -> None:
    """--gemm against the other flags, before any backend exists (UserError naming --gemm)."""
    if gemm == "tf32x3" and dtype != "float32":
        raise UserError(f"--gemm tf32x3: a float32 GEMM; this run has --dtype {dtype} "
                        f"(use --dtype float32, or --gemm simt)")


def apply_gemm_mode(backend, gemm: str) -> None:
    """Set --gemm on the backend (core.ops.Backend.set_gemm_mode); what it refuses (a host
    backend, a GPU without TF32 tensor cores, float64) is one line naming --gemm."""
    if gemm == "simt" and getattr(backend, "gemm_mode", "simt") == "simt":
        return  # the default: nothing to ask of any backend, plugins included
    try:
        backend.set_gemm_mode(gemm)
    except ValueError as exc:
        raise UserError(f"--gemm {gemm}: {exc}") from None


# ---------------------------------------------------------------------------- the job
def choose_communicator(registry: Registry, name: str = "auto") -> Entry:
    """``auto``: ``mpi`` when the launcher started more than one rank, else ``single``."""
    if name != "auto":
        return registry.communicator(name)
    size = launched_size()
    try:
        return registry.communicator("mpi" if size > 1 else "single")
    except UserError as exc:
        raise UserError(f"--comm auto: launched with {size} ranks, but {exc}") from None


def device_for(backend_cls: type, local_rank: int) -> int | None:
    """The GPU of a rank: node-local rank modulo the devices this backend sees (None: host)."""
    count = backend_cls.device_count()
    return local_rank % count if count else None


@dataclass
class Job:
    """One process's part of a (possibly multi-rank) run: the registry, the communicator, and
    what every entry point does alike with them."""

    registry: Registry
    comm: Communicator
    quiet: bool = False  # --quiet: say() prints only to stderr (errors, warnings)

    @classmethod
    def start(cls, comm_name: str = "auto", options: CommOptions | None = None,
              registry: Registry | None = None) -> "Job":
        registry = registry or Registry.load()
        return cls(registry, choose_communicator(registry, comm_name).cls(options or comm_options()))

    @property
    def rank(self) -> int:
        return self.comm.rank

    @property
    def is_root(self) -> bool:
        return self.comm.rank == 0

    def say(self, *args, **kwargs) -> None:
        """print() on rank 0 only: one copy of every line, however many ranks; with --quiet only
        what goes to stderr."""
        if self.quiet and kwargs.get("file") is not sys.stderr:
            return
        if self.comm.rank == 0:
            print(*args, **kwargs)

    def make_backend(self, name: str | None, dtype: str, gemm: str = "simt"):
        """The backend ``name`` (None: the default) on this rank's device, its GEMM algorithm set
        to ``gemm`` (--gemm): (entry, instance)."""
        entry = self.registry.backend(name)
        backend = entry.cls(dtype, device_for(entry.cls, self.comm.local_rank))
        apply_gemm_mode(backend, gemm)
        return entry, backend

    def agree(self, setup: Callable[[], T]) -> T:
        """Run ``setup()`` on every rank, then agree: if any rank failed, every rank exits 2 (or 1
        for a bug) after rank 0 has printed each distinct failure once, naming the rank where
        they differ."""
        comm = self.comm
        result, error, code = None, None, 0
        try:
            result = setup()
        except UserError as exc:
            error, code = str(exc), exc.exit_code
        except Exception as exc:  # noqa: BLE001 - reported below with the rank
            traceback.print_exc()
            error, code = f"{type(exc).__name__}: {exc}", 1
        outcomes = comm.allgather((error, code))
        failed = [(rank, msg, c) for rank, (msg, c) in enumerate(outcomes) if msg]
        if failed:
            if comm.rank == 0:
                messages = {msg for _, msg, _ in failed}
                if len(failed) == comm.size and len(messages) == 1:
                    print(f"dpmlp: error: {failed[0][1]}", file=sys.stderr)
                else:
                    for rank, msg, _ in failed:
                        print(f"dpmlp: error on rank {rank}: {msg}", file=sys.stderr)
            raise SystemExit(max(c for _, _, c in failed))
        return result

    def abort(self, exc: BaseException) -> NoReturn:
        """Report a failure during the run with this rank's number, then end every rank."""
        if isinstance(exc, UserError):
            code = exc.exit_code
        elif isinstance(exc, KeyboardInterrupt):
            code = 130
        else:
            traceback.print_exc()
            code = 1
        print(f"dpmlp: error on rank {self.comm.rank}: "
              + (str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"),
              file=sys.stderr, flush=True)
        if self.comm.size > 1:
            self.comm.abort(code)
        raise SystemExit(code)

    def finish(self) -> None:
        self.comm.finalize()


# ---------------------------------------------------------------------------- error policy
def run_with_error_policy(main: Callable[[], int]) -> int:
    """Run an entry point's ``main()`` with the error policy: a user's mistake is one line (by
    rank 0) and exit 2; anything else names the rank and ends every rank."""
    try:
        return main()
    except UserError as exc:
        report_before_setup(exc)
        return exc.exit_code
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    except KeyboardInterrupt:
        if launched_rank() == 0:
            print("dpmlp: interrupted (SIGINT)", file=sys.stderr, flush=True)
        return 130
    except Exception as exc:  # noqa: BLE001
        traceback.print_exc()
        print(f"dpmlp: error on rank {launched_rank()}: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        _launcher_world().abort_launched_job(1)
        return 1


def report_before_setup(exc: UserError, patience: float = 10.0) -> None:
    """A mistake found before the communicator exists (a flag, --save, --comm) is the same on
    every rank: rank 0 prints it once. The other ranks must not exit before it has printed, or the
    launcher may kill rank 0 first and the line is lost; so they meet in a bounded barrier (bounded
    in case the mistake was on some ranks only)."""
    if launched_rank() == 0:
        print(f"dpmlp: error: {exc}", file=sys.stderr, flush=True)
    if launched_size() == 1:
        return
    world = _launcher_world()
    if world is Communicator:
        if launched_rank() != 0:
            time.sleep(1.0)  # no MPI to meet in: give rank 0 a moment to print
        return
    world.wait_for_launched_ranks(patience)


def _launcher_world() -> type[Communicator]:
    """The communicator class that speaks for the launcher's world (the MPI one when it is
    available), or the contract's single-process defaults."""
    if launched_size() > 1:
        try:
            return Registry.load().communicator("mpi").cls
        except UserError:
            pass
    return Communicator
