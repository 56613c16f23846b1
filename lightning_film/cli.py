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

import difflib
import importlib
import inspect
import os
import re
import signal
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from jsonargparse import DefaultHelpFormatter
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info

import lightning_film.callbacks  # noqa: F401  (so configs name our callbacks and DataModules by class name)
import lightning_film.data.bytes  # noqa: F401
import lightning_film.data.world  # noqa: F401
import lightning_film.models  # noqa: F401
from lightning_film.callbacks.sigterm import SIGTERMException, add_sigterm_checkpoint
from lightning_film.checkpoints import (
    AtomicCheckpointIO,
    check_model_class,
    last_checkpoint,
    loaded_class,
    read_checkpoint,
    trusted_hyper_parameters,
)  # fmt: skip
from lightning_film.errors import CommandParser, UsageError
from lightning_film.io import folder_problem, yaml_problem
from lightning_film.quiet import quiet_library_notices
from lightning_film.registry import Registry, RegistryError
from lightning_film.user_modules import IMPORTS_HELP, import_user_modules

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
    parser = CommandParser(prog=f"{PROG} list", description=EXTRA_COMMANDS["list"][0])
    parser.add_argument("kinds", nargs="*", metavar="KIND", help=f"only these: {', '.join(regs)}")
    parser.add_argument("--imports", action="append", default=[], metavar="MODULE", help=IMPORTS_HELP)
    parsed = parser.parse_args(argv)
    if parsed.imports:
        import_user_modules([m for spec in parsed.imports for m in spec.split(",")])
        regs = {r.plural: r for r in registries()}
    kinds = [k.replace("_", " ") for k in parsed.kinds] or list(regs)
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
    "export": (
        "Export a checkpoint's inference step to Core ML (.mlpackage + JSON report).",
        "lightning_film.export.cli:export_command",
    ),
    "reproduce": (
        "Train and score a results table (byte, quant, world-recipe, world-kid, world-conditioning); "
        "--plan first shows the runs and a rough time.",
        "lightning_film.reproduce:reproduce_command",
    ),
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


def _subcommand_description(subcommand: str) -> str:
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
_NOISE = ("Does not validate against any of the Union subtypes", "Subtypes:", "Errors:", "Given value",
          "Expected a <class 'NoneType'>", "Expected a dot import path string")  # fmt: skip


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
    module, _, name = owner.rpartition(".")
    try:
        params = list(inspect.signature(getattr(importlib.import_module(module), name)).parameters)
    except (ImportError, AttributeError, ValueError, TypeError):
        return f"{option!r} is not accepted by {name}"
    params = [p for p in params if p not in ("self", "args", "kwargs")]
    close = difflib.get_close_matches(option, params, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{option!r} is not accepted by {name}{hint}; accepted: {', '.join(params)}"


class FilmCLI(LightningCLI):
    """LightningCLI whose checkpoints stay in one place across runs, so ``--ckpt_path last`` resumes,
    and whose checkpoint arguments are checked before anything is built."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--imports", type=list[str] | str, default=[], help=IMPORTS_HELP)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        self._cli_model_keys = _cli_model_keys(args)
        super().parse_arguments(parser, args)
        _check_config(self.config)

    def before_instantiate_classes(self) -> None:
        # the model's __init__ reads the registries: the user's registrations must be in by then
        section = self.config.get(self.subcommand) if self.subcommand else self.config
        configs = [Path(str(c)).parent for c in (section.get("config") or []) if c is not None]
        import_user_modules(section.get("imports"), search=configs)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        # every trainer.* value has passed jsonargparse's type check by now, so what Trainer's own
        # checks reject (devices "abc" on a CPU, say) is a setting to fix, not a bug to trace
        try:
            trainer = super().instantiate_trainer(**kwargs)
        except (TypeError, ValueError) as err:
            raise UsageError(f"the Trainer rejected its settings (trainer.*): {' '.join(str(err).split())}") from err
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # not a user's own plugin
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer

    def after_instantiate_classes(self) -> None:
        # Lightning's default checkpoint directory is the logger's version_N/, and a resumed run
        # logs to a new version, where it finds no last.ckpt. Unset directories become
        # <default_root_dir>/checkpoints, so --trainer.default_root_dir moves a whole run.
        root = str(self.trainer.default_root_dir)
        for callback in self.trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.dirpath is None and "://" not in root:
                callback.dirpath = os.path.join(os.path.realpath(root), "checkpoints")
        add_sigterm_checkpoint(self.trainer)

    def _parse_ckpt_path(self) -> None:
        """Lightning's merge of a checkpoint's hyper-parameters into the model config, through the
        checkpoint gate: read weights only, of this run's model class, and never naming code the
        user's own config does not name (a ``module:attr`` spec would be imported and called)."""
        subcommand = self.config.get("subcommand")
        section = self.config.get(subcommand) if subcommand else None
        ckpt_path = section.get("ckpt_path") if section is not None else None
        if not isinstance(ckpt_path, (str, os.PathLike)) or str(ckpt_path) in _TRAINER_NAMES:
            return  # unset, or resolved by the Trainer and gated in _prepare_subcommand_kwargs
        checkpoint = read_checkpoint(ckpt_path)
        model = section.get("model")
        class_path = model.get("class_path") if hasattr(model, "get") else None
        if not class_path:
            return
        check_model_class(checkpoint, ckpt_path, class_path, "this run's model")
        given = model.get("init_args")
        given = given.as_dict() if hasattr(given, "as_dict") else {}
        cls = loaded_class(class_path)
        takes = list(inspect.signature(cls).parameters) if cls is not None else None
        hparams = trusted_hyper_parameters(checkpoint, ckpt_path, given, takes)
        # Lightning lets the checkpoint overwrite everything; an option typed on this command line
        # (--model.sample_steps 50 at test time) is the user's latest word, so it wins
        kept = sorted(k for k in getattr(self, "_cli_model_keys", ()) if k in hparams and hparams[k] != given.get(k))
        for key in kept:
            del hparams[key]
        if kept:
            rank_zero_info(f"{PROG}: model settings from checkpoint {str(ckpt_path)!r}, except from the command line: "
                           + ", ".join(f"{k}={given.get(k)!r}" for k in kept))  # fmt: skip
        if hparams:
            # the class stays the user's: the checkpoint only fills in its settings
            merged = {subcommand: {"model": {"class_path": class_path, "init_args": hparams}}}
            try:
                self.config = self.parser.parse_object(merged, self.config)
            except UsageError as err:
                raise UsageError(f"checkpoint {str(ckpt_path)!r}'s hyper-parameters: {err}") from None

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict[str, Any]:
        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        if kwargs.get("ckpt_path") == "last":
            kwargs["ckpt_path"] = last_checkpoint(self.trainer, subcommand)
            if kwargs["ckpt_path"] is not None:
                check_model_class(read_checkpoint(kwargs["ckpt_path"]), kwargs["ckpt_path"], type(self.model),
                                  "this run's model")  # fmt: skip
        return kwargs


def _cli_model_keys(args: Any) -> set[str]:
    """The model settings named on the command line: ``--model.X`` / ``--model.init_args.X`` (``=v`` or not)."""
    keys = set()
    for arg in args if isinstance(args, (list, tuple)) else ():
        if isinstance(arg, str) and arg.startswith("--model."):
            name = arg[len("--model.") :].split("=", 1)[0]
            name = name[len("init_args.") :] if name.startswith("init_args.") else name
            if name and name not in ("help", "class_path"):
                keys.add(name.split(".", 1)[0])
    return keys


#: ``--ckpt_path`` values the Trainer resolves itself
_TRAINER_NAMES = ("last", "best", "hpc")


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
                **{
                    sub: {
                        # argparse's usage lists every Trainer option (~90 lines) before the description
                        "usage": f"{PROG} {sub} [-h] [-c CONFIG] [--imports MODULE] [--SECTION.OPTION VALUE ...]",
                        "description": _subcommand_description(sub),
                        "formatter_class": _HelpFormatter,
                    }
                    for sub in LightningCLI.subcommands()
                },
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
        if option.startswith("-"):
            _check_inline_yaml(option, value)
        if option in ("-c", "--config"):
            what, is_path = "config file", value.lower().endswith((".yaml", ".yml", ".json"))
        elif option == "--ckpt_path":
            what, is_path = "checkpoint", value.endswith(".ckpt") and "://" not in value
        else:
            continue
        if is_path and not Path(value).exists():
            raise UsageError(f"{what} {value!r} does not exist (relative paths start at {os.getcwd()})")
        if is_path and what == "config file" and not Path(value).is_file():  # a FIFO would hang the reader
            raise UsageError(f"{what} {value!r} is not a regular file (a folder, FIFO or device)")
        if is_path and what == "config file":
            _check_yaml(value)


def _check_inline_yaml(option: str, value: str) -> None:
    """An option's value is YAML to jsonargparse (``--config`` inline, ``--trainer.callbacks '[...]'``):
    the same bounds as a config file (aliases that expand past the limit, keys given twice)."""
    if any(c in value for c in "&*{[:\n"):
        problem = yaml_problem(value)
        if problem:
            raise UsageError(f"the value of {option} is refused: {problem}")


def _check_yaml(path: str) -> None:
    """A config that is not valid YAML, named with the line of the problem (jsonargparse names
    neither the file nor the line)."""
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
        problem = yaml_problem(text)
        if problem:
            raise UsageError(f"config file {path!r} is refused: {problem}")
        yaml.safe_load(text)
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"config file {path!r} cannot be read: {err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UsageError(f"config file {path!r} is not valid YAML: {problem}{at}") from None


def _check_config(config: Any) -> None:
    """What a parsed config names on disk, checked before anything is built or trained.

    ``model.init_from``: a readable checkpoint (weights only); ``--ckpt_path`` is checked next, where
    LightningCLI reads it (:meth:`FilmCLI._parse_ckpt_path`). And ``trainer.default_root_dir`` must
    be a folder that can be created.
    """
    subcommand = config.get("subcommand")
    section = config.get(subcommand) if subcommand else None
    if section is None:
        return
    trainer = section.get("trainer")
    root = trainer.get("default_root_dir") if hasattr(trainer, "get") else None
    if isinstance(root, (str, os.PathLike)) and "://" not in str(root):
        problem = folder_problem(root)
        if problem:
            raise UsageError(f"trainer.default_root_dir {str(root)!r} cannot be written: {problem}")
    model = section.get("model")
    init_args = model.get("init_args") if hasattr(model, "get") else None
    init_from = init_args.get("init_from") if hasattr(init_args, "get") else None
    if isinstance(init_from, (str, os.PathLike)) and init_from:
        read_checkpoint(init_from, "init_from checkpoint", lightning=False)


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


def _check_command(args: list[str]) -> None:
    """A misspelled command, named with every command there is (jsonargparse lists only LightningCLI's)."""
    if not args or args[0].startswith("-") or args[0] in LightningCLI.subcommands():
        return
    commands = [*LightningCLI.subcommands(), *EXTRA_COMMANDS]
    close = difflib.get_close_matches(args[0], commands, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise UsageError(f"unknown command {args[0]!r}{hint}; commands: {', '.join(commands)}")


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
    quiet_library_notices()
    with _working_dir_importable():
        try:
            if args and args[0] in EXTRA_COMMANDS:
                _command(args[0])(args[1:])
            else:
                _check_command(args)
                run_lightning_cli(args)
        except SIGTERMException as err:
            # a cluster asking the run to stop: not a success, whatever Lightning's exit code says
            saved = "; ".join(getattr(err, "__notes__", [])) or "no checkpoint saved (checkpointing is off)"
            print(f"{PROG}: error: stopped by SIGTERM; {saved}; resume with --ckpt_path last", file=sys.stderr)
            raise SystemExit(128 + signal.SIGTERM) from None
        except KeyboardInterrupt:
            print(f"{PROG}: error: interrupted (Ctrl-C); finished work is kept: rerun the same command to go on",
                  file=sys.stderr)  # fmt: skip
            raise SystemExit(128 + signal.SIGINT) from None
        except Exception as err:
            shown = None if os.environ.get(DEBUG_ENV, "0") not in ("", "0") else user_error(err)
            if shown is None:
                raise
            print(f"{PROG}: error: {shown}", file=sys.stderr)
            raise SystemExit(2) from None


if __name__ == "__main__":
    main()
