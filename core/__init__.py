"""dpmlp core: the ops contract, the model, the data-parallel trainer and the CLI.

Nothing here imports a GPU library or MPI; backends and communicators do that lazily.
"""

__version__ = "0.1.0"


def _launched_as_a_program() -> bool:
    """``python -m core.X`` (sys.argv[0] is "-m" while runpy imports this package) or the
    ``dpmlp`` command: SIGINT and SIGTERM are one line and exit 130 from here on
    (core/startup.py)."""
    import os
    import sys

    first = sys.argv[0] if sys.argv else ""
    return first == "-m" or os.path.basename(first) == "dpmlp"

if _launched_as_a_program():  # (a library import, pytest's included, changes no handler)
    from core.startup import install_signal_handlers  # (os and _signal only: quick to load)

    install_signal_handlers(importing=True)
