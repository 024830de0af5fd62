"""Errors meant for users: one sentence naming the file and the fix, never a stack trace."""

from __future__ import annotations


class UserError(Exception):
    """Bad input or configuration; the CLI prints the message alone and exits non-zero."""


class ParamsError(UserError):
    """A params file that does not validate."""


class DataError(UserError):
    """Input data the stage refuses to process (as opposed to items it quarantines)."""
