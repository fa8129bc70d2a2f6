"""Errors that are the user's to fix.

A UserError is printed as one line on stderr (no traceback) and the process exits with code 2.
Anything else is a bug or a machine fault and is reported with the rank that raised it.
"""


class UserError(Exception):
    """A mistake in flags, files or environment; the message names the flag, file or rank at fault."""

    exit_code = 2
