"""dpmlp core: the ops contract, the model, the data-parallel trainer and the CLI.

Nothing here imports a GPU library or MPI; backends and communicators do that lazily.
"""

__version__ = "0.1.0"



def _launched_as_a_program() -> bool:
    """``python -m core.X`` (sys.argv[0] is "-m" while runpy imports this package) or the
    ``dpmlp`` command."""
    import os
    import sys

    first = sys.argv[0] if sys.argv else ""
    return first == "-m" or os.path.basename(first) == "dpmlp"


def _stop_while_loading(signum, frame) -> None:
    """SIGINT/SIGTERM before core/startup.py is even loaded: nothing exists yet, so one line
    (rank 0's, under a launcher) and exit 130 at once."""
    import os

    rank = next((os.environ[v] for v in ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK",
                                         "SLURM_PROCID") if os.environ.get(v, "").isdigit()), "0")
    if rank == "0":
        name = {2: "SIGINT", 15: "SIGTERM"}.get(signum, f"signal {signum}")
        os.write(2, f"dpmlp: interrupted ({name}) while starting up; no epoch was trained\n"
                 .encode())
    os._exit(130)


if _launched_as_a_program():  # (a library import, pytest's included, changes no handler)
    import _signal  # (the C module: importing `signal` itself takes milliseconds)

    for _sig in (_signal.SIGINT, _signal.SIGTERM):
        _signal.signal(_sig, _stop_while_loading)
    from core.startup import install_signal_handlers  # its handler from here on

    install_signal_handlers(importing=True)
