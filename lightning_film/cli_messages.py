"""The CLI's words: jsonargparse's parse errors as one line naming the key, the value and what is
accepted, and the help text that leads to the model's and data's options."""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import re
from typing import Any, NoReturn

from jsonargparse import DefaultHelpFormatter
from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningArgumentParser

from lightning_film.errors import UsageError

__all__ = ["DEBUG_ENV", "PROG", "HelpFormatter", "QuietParser", "subcommand_description"]

PROG = "lightning-film"
DEBUG_ENV = "LIGHTNING_FILM_DEBUG"


class HelpFormatter(DefaultHelpFormatter):
    """jsonargparse's formatter, but keeping the line breaks of the description and epilog."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "".join(indent + line for line in text.splitlines(keepends=True))


class QuietParser(LightningArgumentParser):
    """On a parse error, one line naming the key, the bad value and what is accepted, instead of
    jsonargparse's usage and its nested report of every Union branch it tried."""

    def print_usage(self, file: Any = None) -> None:
        pass

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error or os.environ.get(DEBUG_ENV, "0") not in ("", "0"):
            super().error(message, ex)  # jsonargparse is trying alternatives, or the user asked for it all
        # main() prints it as `lightning-film: error: ...` and exits 2, like every other mistake
        raise UsageError(f"{_one_line(message)} (see '{PROG} {self._subcommand_hint(ex)}{_help_for(message)}')") from ex

    def _subcommand_hint(self, ex: Exception | None) -> str:
        sub = getattr(getattr(ex, "subcommand_parser", None), "prog", "") or self.prog
        sub = sub.replace(" [options]", "").removeprefix(PROG).strip()
        return f"{sub} " if sub else ""


def _help_for(message: str) -> str:
    """``--model.help ByteLM`` when the mistake is in a model's or a DataModule's options (which
    ``--help`` does not list: they depend on the class), else ``--help``."""
    key = re.search(r'Parser key "(model|data)"', message)
    owner = re.search(r"Problem with given class_path '([^']+)'", message)
    if key and owner:
        module, _, name = owner[1].rpartition(".")
        shown = name if module.startswith("lightning_film.") else owner[1]
        return f"--{key[1]}.help {shown}"
    return "--help"


def subcommand_description(subcommand: str) -> str:
    """What ``lightning-film fit --help`` says first: where the options it cannot list are."""
    first = (inspect.getdoc(getattr(Trainer, subcommand)) or "").split("\n\n")[0]
    rows = [
        (f"{subcommand} --model.help ByteLM", "(or WorldModel, or your package.module.Class)"),
        (f"{subcommand} --data.help ByteDataModule", "(or WorldDataModule)"),
        (f"{subcommand} --config CONFIG --print_config", "every option of a config, with its value"),
        ("list", "registered normalizers, conditioners, ..."),
    ]
    width = max(len(command) for command, _ in rows)
    return (
        f"{first}\n\nThe model's and the data's options depend on the class the config picks, so they are "
        f"not listed here:\n"
        + "".join(f"  {PROG} {command:<{width}}  {what}\n" for command, what in rows)
        + "Your own modules (a conditioner registered by name, say) load with --imports MODULE or 'imports: [MODULE]'."
    )


#: jsonargparse report lines that say nothing about the mistake (the Union it tried, its types)
_NOISE = (
    "Does not validate against any of the Union subtypes",
    "Subtypes:",
    "Errors:",
    "Given value",
    "Expected a <class 'NoneType'>",
    "Expected a dot import path string",
)


#: the top-level keys of a LightningCLI config
_SECTIONS = ("seed_everything", "trainer", "model", "data", "optimizer", "lr_scheduler", "ckpt_path")


def _one_line(message: str) -> str:
    """jsonargparse's multi-line parse error as one line: ``model.dim: expected int, got 'abc'``.

    Keeps the dotted key (``Parser key "model"`` then ``"dim"``) and the failing check of the branch
    that matters (the class the user named, not ``NoneType``); an option a class does not take
    lists the options it does take.
    """
    keys: list[str] = []
    owner: str | None = None
    leaves: list[str] = []
    for raw in message.splitlines():
        line = raw.strip().removeprefix("- ").strip()
        if not line or line.startswith(_NOISE):
            continue
        if key := re.fullmatch(r'Parser key "([^"]+)":', line):
            keys.append(key[1])
        elif cls := re.fullmatch(r"Problem with given class_path '([^']+)':", line):
            owner = cls[1]
        else:
            leaves.append(_leaf(line, owner))
    where = ".".join(keys)
    text = "; ".join(dict.fromkeys(leaves)) or " ".join(message.split())
    return f"{where}: {text}" if where else text


def _leaf(line: str, owner: str | None) -> str:
    """One failing check, reworded to name the value and what is accepted."""
    if found := re.fullmatch(r"Expected a (.+?)\. Got value: (.*)", line):
        expected, value = found[1], found[2]
        choices = re.fullmatch(r"typing\.Literal\[(.*)\]", expected)
        kind = re.fullmatch(r"<class '(?:builtins\.)?([\w.]+)'>", expected)
        accepted = f"one of {choices[1]}" if choices else (kind[1] if kind else expected)
        return f"expected {accepted}, got {value!r}"
    if found := re.fullmatch(r"Subcommand '(\w+)' does not accept option '([^']+)'", line):
        top = found[2].split(".")[0]
        close = difflib.get_close_matches(top, _SECTIONS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"{found[2]!r} is not an option of {found[1]}{hint}; its sections: {', '.join(_SECTIONS)}"
    if found := re.fullmatch(r"Option '([^']+)' is not accepted", line):
        return _not_accepted(found[1], owner)
    if found := re.fullmatch(r"Expected a path but (.+) either not accessible or invalid", line):
        return (
            f"cannot import class {found[1]!r}: give a class importable from here, by its name if lightning_film "
            f"defines it (ByteLM, WorldModel, ByteDataModule, WorldDataModule) or as package.module.Class"
        )
    return line


def _not_accepted(option: str, owner: str | None) -> str:
    """``'dimm' is not accepted by ByteLM (did you mean 'dim'?); accepted: dim, depth, ...``."""
    if owner is None:
        return f"{option!r} is not accepted"
    from lightning_film.checkpoints import network_class

    module, _, name = owner.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
        params = list(inspect.signature(cls).parameters)
    except (ImportError, AttributeError, ValueError, TypeError):
        return f"{option!r} is not accepted by {name}"
    params = [p for p in params if p not in ("self", "args", "kwargs")]
    net = network_class(cls)  # the network's own arguments go under net: model.net.dim
    owned = [p for p in inspect.signature(net).parameters if p != "self"] if net is not None else []
    close = difflib.get_close_matches(option, params + owned, n=1)
    hint = f" (did you mean {('net.' if close[0] not in params else '') + close[0]!r}?)" if close else ""
    return f"{option!r} is not accepted by {name}{hint}; accepted: {', '.join(params)}"
