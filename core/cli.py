"""The ``dpmlp`` console command: ``dpmlp train|bench|plot|backends [flags]`` and ``--version``.

Each subcommand hands its remaining arguments to the module that owns them (``core.train``,
``core.bench``, ``core.plot``), imported only when chosen, so ``dpmlp --version`` and
``dpmlp plot`` start without loading MPI or a GPU library.
"""

from __future__ import annotations

import sys

from core import __version__

COMMANDS = {
    "train": "train the MLP (python -m core.train)",
    "bench": "time the training loop (python -m core.bench)",
    "plot": "learning curves of run directories (python -m core.plot)",
    "backends": "list backends and communicators (python -m core.train --list-backends)",
}

USAGE = ("usage: dpmlp {train,bench,plot,backends} [flags]   (dpmlp COMMAND --help for its flags)\n"
         + "\n".join(f"  {name:9s} {what}" for name, what in COMMANDS.items())
         + "\n  --version print the version")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        print(f"dpmlp {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command == "train":
        from core.train import run
        return run(rest)
    if command == "backends":
        from core.train import run
        return run(["--list-backends", *rest])
    if command == "bench":
        from core.bench import run as bench
        return bench(rest)
    if command == "plot":
        from core.plot import main as plot
        return plot(rest)
    print(f"dpmlp: error: unknown command {command!r}; choose one of {', '.join(COMMANDS)}",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
