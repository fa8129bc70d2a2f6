"""dpmlp core: the ops contract, the model, the data-parallel trainer and the CLI.

Nothing here imports a GPU library or MPI; backends and communicators do that lazily.
"""

__version__ = "0.1.0"
