"""Errors that are the user's to fix, and the one table of exit codes.

A UserError is printed as one line on stderr (no traceback) and the process exits with its
``exit_code`` (2 unless a subclass says otherwise). Anything else is a bug or a machine fault and
is reported with the rank that raised it (exit 1).

Exit codes of every dpmlp command (README, "Exit codes"):

    0    success
    1    an internal error (a bug: a traceback, naming the rank)
    2    a usage or input error: flags, environment variables, data files, checkpoints, run
         directories (one line naming the flag, variable or file)
    3    the run diverged (the loss became inf or nan; --exact met a value out of its range)
    4    --verify found a mismatch
    5    an output could not be written (disk full, I/O error, read-only file system): the
         parameters were kept elsewhere, and the line says where
    6    a collective timed out (a rank hung or died; --collective-timeout)
    130  interrupted (SIGINT, SIGTERM)
"""

EXIT_OK = 0
EXIT_BUG = 1
EXIT_USAGE = 2
EXIT_DIVERGED = 3
EXIT_VERIFY = 4
EXIT_OUTPUT = 5
EXIT_TIMEOUT = 6
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """A mistake in flags, files or environment; the message names the flag, file or rank at fault."""

    exit_code = EXIT_USAGE


class OutputError(UserError):
    """An output (--save, a checkpoint, metrics.jsonl, config.json) could not be written; the
    message says what failed and where the parameters are now: exit 5."""

    exit_code = EXIT_OUTPUT
