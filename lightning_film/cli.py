"""The ``lightning-film`` command: LightningCLI's fit/validate/test/predict, plus our own commands.

    lightning-film fit --config configs/example.yaml
    lightning-film fit --config configs/example.yaml --ckpt_path last      # resume
    lightning-film list                                                    # every registry

Model and data are chosen by ``class_path`` (LightningCLI's subclass mode), so any
LightningModule / LightningDataModule importable from the working directory works.
Checkpoints go to ``<trainer.default_root_dir>/checkpoints`` (not the logger's version_N/),
so ``--ckpt_path last`` finds the last run's ``last.ckpt``.

Our own commands live in :data:`EXTRA_COMMANDS` (one entry each: name -> (help, function))
and are dispatched *before* LightningCLI, whose ``subcommands()`` only covers Trainer
methods; they are listed in ``lightning-film --help``.

Mistakes a user can make (an unknown registry name, a value our constructors reject, a
missing config file) end as one ``lightning-film: error: ...`` line on stderr and exit
status 2; ``LIGHTNING_FILM_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from jsonargparse import DefaultHelpFormatter
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

import lightning_film.callbacks  # noqa: F401  (so configs name our callbacks and DataModules by class name)
import lightning_film.data.bytes  # noqa: F401
import lightning_film.data.world  # noqa: F401
import lightning_film.models  # noqa: F401
from lightning_film.errors import UsageError
from lightning_film.registry import Registry, RegistryError

__all__ = ["EXTRA_COMMANDS", "FilmCLI", "UsageError", "main", "registries"]

PROG = "lightning-film"
DEBUG_ENV = "LIGHTNING_FILM_DEBUG"
_PACKAGE_DIR = Path(__file__).resolve().parent


# -- extra commands --------------------------------------------------------------------------
def registries() -> list[Registry]:
    """Every :class:`Registry` in the loaded ``lightning_film`` modules, ``registry.py``'s first.

    Found by looking, not by a hand-kept list, so a registry added anywhere in the package
    (nibble schemes, say) shows up in ``lightning-film list`` by itself.
    """
    import lightning_film  # noqa: F401  (fills the built-in registries)

    names = ["lightning_film.registry"] + sorted(n for n in sys.modules if n.startswith("lightning_film."))
    found: dict[int, Registry] = {}
    for name in names:
        for value in list(getattr(sys.modules.get(name), "__dict__", {}).values()):
            if isinstance(value, Registry):
                found.setdefault(id(value), value)
    return list(found.values())


def list_command(argv: list[str]) -> None:
    """``lightning-film list [KIND ...]``: print registered names with their one-line docs."""
    regs = {r.plural: r for r in registries()}
    parser = argparse.ArgumentParser(prog=f"{PROG} list", description=EXTRA_COMMANDS["list"][0])
    parser.add_argument("kinds", nargs="*", metavar="KIND", help=f"only these: {', '.join(regs)}")
    kinds = [k.replace("_", " ") for k in parser.parse_args(argv).kinds] or list(regs)
    by_kind = {r.kind: r for r in regs.values()}
    unknown = [k for k in kinds if k not in regs and k not in by_kind]
    if unknown:
        raise UsageError(f"list: unknown kind(s) {unknown}; known kinds: {', '.join(regs)}")
    for i, kind in enumerate(kinds):
        registry = regs.get(kind) or by_kind[kind]
        entries = registry.entries()
        group = f" (plugins: entry-point group {registry.group!r})" if registry.group else ""
        print(("\n" if i else "") + f"{registry.plural}{group}:")
        width = max((len(e.name) for e in entries), default=0)
        for entry in entries:
            print(f"  {entry.name:<{width}}  {entry.doc}".rstrip())


#: name -> (one-line help, function(argv) or "module:function"); adding a command is adding a
#: line here. A "module:function" is imported only when its command runs, so heavy commands
#: (recording, exporting) cost nothing to the others.
EXTRA_COMMANDS: dict[str, tuple[str, Callable[[list[str]], None] | str]] = {
    "list": ("Print every registry (normalizers, conditioners, ...) with one-line docs.", list_command),
    "record": ("Record world-model episodes into .npz shards.", "lightning_film.data.record:record_command"),
    "export": ("Export a checkpoint's inference step to Core ML (.mlpackage + JSON report).",
               "lightning_film.export.cli:export_command"),
    "reproduce": ("Train and score a results table (byte, world-kid, world-conditioning).",
                  "lightning_film.reproduce:reproduce_command"),
}


def _command(name: str) -> Callable[[list[str]], None]:
    """The function behind extra command ``name``, importing it if it is given by path."""
    target = EXTRA_COMMANDS[name][1]
    if callable(target):
        return target
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)


# -- LightningCLI ----------------------------------------------------------------------------
class _HelpFormatter(DefaultHelpFormatter):
    """jsonargparse's formatter, but keeping the line breaks of the description and epilog."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "".join(indent + line for line in text.splitlines(keepends=True))


def _epilog() -> str:
    width = max(len(name) for name in EXTRA_COMMANDS)
    lines = [f"  {name:<{width}}  {help_}" for name, (help_, _) in EXTRA_COMMANDS.items()]
    return (
        f"extra commands (run as '{PROG} COMMAND ...', see '{PROG} COMMAND --help'):\n"
        + "\n".join(lines)
        + f"\n\nSet {DEBUG_ENV}=1 to see the traceback behind an error message."
    )


class _QuietParser(LightningArgumentParser):
    """On a parse error, print the error and a tip, without jsonargparse's 50-line usage."""

    def print_usage(self, file: Any = None) -> None:
        pass


class FilmCLI(LightningCLI):
    """LightningCLI whose checkpoints stay in one place across runs, so ``--ckpt_path last`` resumes."""

    def after_instantiate_classes(self) -> None:
        # Lightning's default checkpoint directory is the logger's version_N/, and a resumed run
        # logs to a new version, where it finds no last.ckpt. Unset directories become
        # <default_root_dir>/checkpoints, so --trainer.default_root_dir moves a whole run.
        root = str(self.trainer.default_root_dir)
        for callback in self.trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.dirpath is None and "://" not in root:
                callback.dirpath = os.path.join(os.path.realpath(root), "checkpoints")


def run_lightning_cli(args: list[str]) -> LightningCLI:
    """Build and run LightningCLI on ``args`` (``fit --config ...`` and so on)."""
    _check_paths(args)
    with warnings.catch_warnings():
        # main() always passes args explicitly; LightningCLI warns about that whenever
        # sys.argv is non-empty too (e.g. under pytest), which is noise here.
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        return FilmCLI(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            parser_class=_QuietParser,
            parser_kwargs={
                "prog": PROG,
                "description": "Train, evaluate and compare conditioned transformers (LightningCLI).",
                "epilog": _epilog(),
                "formatter_class": _HelpFormatter,
            },
            args=args,
        )


def _check_paths(args: list[str]) -> None:
    """A missing config or checkpoint file as one line, not a full usage or a traceback.

    Only values that must be local files are checked: ``--config`` also takes inline YAML,
    and ``--ckpt_path`` takes ``last``/``best`` and remote URLs.
    """
    for i, arg in enumerate(args):
        option, has_value, value = arg.partition("=")
        if not has_value:
            value = args[i + 1] if i + 1 < len(args) else ""
        if option in ("-c", "--config"):
            what, is_path = "config file", value.lower().endswith((".yaml", ".yml", ".json"))
        elif option == "--ckpt_path":
            what, is_path = "checkpoint", value.endswith(".ckpt") and "://" not in value
        else:
            continue
        if is_path and not Path(value).is_file():
            raise UsageError(f"{what} {value!r} does not exist (relative paths start at {os.getcwd()})")


# -- errors ----------------------------------------------------------------------------------
def _raised_by_us(err: BaseException) -> bool:
    """Whether ``err`` was raised in this package or in the user's own code under the working
    directory (not in torch, Lightning or jsonargparse, even inside a virtualenv there)."""
    tb = err.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    origin = Path(tb.tb_frame.f_code.co_filename).resolve()
    installed = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    if origin.is_relative_to(_PACKAGE_DIR):
        return True
    return origin.is_relative_to(Path.cwd()) and not any(origin.is_relative_to(p) for p in installed)


def user_error(err: BaseException) -> BaseException | None:
    """The user-facing error behind ``err``, if any, following explicit ``raise ... from``
    chains (jsonargparse wraps errors raised while instantiating the model and data)."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        # Lightning's own word that the run is misconfigured (e.g. `predict` on data without a
        # predict_dataloader) is a message for the user, not a bug to trace.
        if isinstance(current, (RegistryError, UsageError, MisconfigurationException)):
            return current
        if isinstance(current, (ValueError, TypeError)) and _raised_by_us(current):
            return current
        current = current.__cause__
    return None


@contextmanager
def _working_dir_importable() -> Iterator[None]:
    """Put the working directory first on ``sys.path`` for the duration of the command.

    ``python -m`` does this, but a console script puts its own ``bin/`` there instead; without
    it a config could not name the user's modules (or this repository's ``examples/``) by
    ``class_path``, nor a conditioner by ``"module:Class"``.
    """
    cwd = os.getcwd()
    added = sys.path[:1] not in ([cwd], [""])
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added and sys.path[:1] == [cwd]:
            del sys.path[0]


def main(argv: list[str] | None = None) -> None:
    """Run ``lightning-film`` with ``argv`` (default ``sys.argv[1:]``)."""
    args = sys.argv[1:] if argv is None else list(argv)
    with _working_dir_importable():
        try:
            if args and args[0] in EXTRA_COMMANDS:
                _command(args[0])(args[1:])
            else:
                run_lightning_cli(args)
        except Exception as err:
            shown = None if os.environ.get(DEBUG_ENV, "0") not in ("", "0") else user_error(err)
            if shown is None:
                raise
            print(f"{PROG}: error: {shown}", file=sys.stderr)
            raise SystemExit(2) from None


if __name__ == "__main__":
    main()
