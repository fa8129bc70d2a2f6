"""The ``dpmlp`` console command: ``dpmlp train|bench|plot|backends [flags]`` and ``--version``.

Each subcommand hands its remaining arguments to the module that owns them (``core.train``,
``core.bench``, ``core.plot``), imported only when chosen, so ``dpmlp --version`` and
``dpmlp plot`` start without loading MPI or a GPU library. Every subcommand has its own
``--help`` under its own name (``usage: dpmlp train ...``) and the CLI's error handling: a
mistake is one line on stderr and exit 2 (core/errors.py has the table of exit codes). Bare
``dpmlp`` prints the usage on stderr and exits 2, as argparse subcommand tools do.
"""

from __future__ import annotations

import sys

from core import __version__
from core.startup import install_signal_handlers

COMMANDS = {
    "train": "train the MLP (python -m core.train)",
    "bench": "time the training loop (python -m core.bench)",
    "plot": "learning curves of run directories (python -m core.plot)",
    "backends": "list backends and communicators (python -m core.train --list-backends)",
}

USAGE = ("usage: dpmlp {train,bench,plot,backends} [flags]   (dpmlp COMMAND --help for its flags)\n"
         + "\n".join(f"  {name:9s} {what}" for name, what in COMMANDS.items())
         + "\n  --version print the version")

BACKENDS_HELP = ("usage: dpmlp backends\n\nList the backends and communicators: package, version, "
                 "whether available here, and why (python -m core.train --list-backends).")


def _backends(rest: list[str]) -> int:
    from core.train import run
    if rest and rest[0] in ("-h", "--help"):
        print(BACKENDS_HELP)
        return 0
    if rest:
        print(f"dpmlp: error: dpmlp backends takes no arguments, got {' '.join(rest)!r}",
              file=sys.stderr)
        return 2
    return run(["--list-backends"], prog="dpmlp backends")


def _bench(rest: list[str]) -> int:
    from core.bench import main as bench
    from core.job import run_with_error_policy
    return run_with_error_policy(lambda: bench(rest, prog="dpmlp bench"))


def _plot(rest: list[str]) -> int:
    from core.plot import main as plot
    return plot(rest, prog="dpmlp plot")


def _train(rest: list[str]) -> int:
    from core.train import run
    return run(rest, prog="dpmlp train")


RUNNERS = {"train": _train, "bench": _bench, "plot": _plot, "backends": _backends}


def main(argv=None) -> int:
    if argv is None:  # the console command (not a caller in-process): Ctrl-C is one line, 130
        install_signal_handlers()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print(USAGE, file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    if argv[0] in ("-V", "--version"):
        print(f"dpmlp {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command in RUNNERS:
        return RUNNERS[command](rest)
    print(f"dpmlp: error: unknown command {command!r}; choose one of {', '.join(COMMANDS)}",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
