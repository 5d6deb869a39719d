"""Exceptions shared across tracin_core (the TracIn classes, the workspace)."""
from __future__ import annotations

__all__ = ["TracInArgumentError", "WorkspaceError"]


class TracInArgumentError(ValueError, AssertionError):
    """An argument of a TracIn class or method is missing or invalid.

    Subclasses both ``ValueError`` (what the rest of ``tracin_core`` raises for a bad
    argument) and ``AssertionError`` (what Captum raises for the same argument, from an
    ``assert``), so that ``except ValueError`` and Captum-style ``except AssertionError``
    both catch it. The message names the argument at fault.
    """


class WorkspaceError(ValueError):
    """A workspace file or its parts are wrong; the message says which and why."""
