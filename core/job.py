"""The job's lifecycle, shared by the CLI, the benchmark and the test workers.

Launch detection (how many ranks the launcher started, which one this is) works before any
communicator exists, from the launcher's environment.
"""

from __future__ import annotations

import os

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


