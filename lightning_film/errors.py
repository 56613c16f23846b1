"""The errors that reach a user as one line (``lightning-film: error: ...``), never a traceback."""

from __future__ import annotations

import argparse
import numbers
from typing import NoReturn

__all__ = ["CommandParser", "MissingExtraError", "UsageError", "check_int"]


def check_int(name: str, value: object, minimum: int, maximum: int | None = None, who: str = "") -> int:
    """``value`` as an int if it is an integer (not a bool; numpy's count) in [minimum, maximum], else
    a ValueError naming ``name`` (prefixed ``who: ``), the accepted range and the value given."""
    integer = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not integer or value < minimum or (maximum is not None and value > maximum):
        most = "" if maximum is None else f" and <= {maximum}"
        raise ValueError(f"{who + ': ' if who else ''}{name} must be an integer >= {minimum}{most}, got {value!r}")
    return int(value)


def check_ints(who: str, **values: tuple[object, int]) -> None:
    """:func:`check_int` of each ``name=(value, minimum)``, messages prefixed ``who: ``."""
    for name, (value, minimum) in values.items():
        check_int(name, value, minimum, who=who)


class UsageError(Exception):
    """A mistake in how a command was called, or a step of it that failed for a reason the
    message states in full; the CLI prints it as one line and exits with status 2."""


class MissingExtraError(UsageError, ModuleNotFoundError):
    """An optional library is not installed; the message names the pip extra that installs it
    (``pip install 'lightning_film[quant]'``). Still a ModuleNotFoundError for code that checks."""


class CommandParser(argparse.ArgumentParser):
    """argparse for our own commands (``record``, ``export``, ...): a bad argument raises
    :class:`UsageError` instead of printing a usage block and exiting, so it ends as the same one
    ``lightning-film: error:`` line as every other mistake (``--help`` still prints and exits 0)."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("lightning-film").strip()
        where = f"{command}: " if command else ""
        raise UsageError(f"{where}{message} (see '{self.prog} --help')")
