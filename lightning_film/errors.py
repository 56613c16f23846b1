"""The errors that reach a user as one line (``lightning-film: error: ...``), never a traceback."""

from __future__ import annotations

__all__ = ["UsageError"]


class UsageError(Exception):
    """A mistake in how a command was called, or a step of it that failed for a reason the
    message states in full; the CLI prints it as one line and exits with status 2."""
