"""The ``lightning-film`` command: LightningCLI's fit/validate/test/predict, plus our own commands.

    lightning-film fit --config configs/example.yaml
    lightning-film fit --config configs/example.yaml --ckpt_path last      # resume
    lightning-film list                                                    # every registry

Model and data are chosen by ``class_path`` (LightningCLI's subclass mode), so any
LightningModule / LightningDataModule importable from the working directory works.
Checkpoints go to ``<trainer.default_root_dir>/checkpoints`` (not the logger's version_N/),
so ``--ckpt_path last`` finds the last run's ``last.ckpt``. An unset ``trainer.precision`` is
``bf16-mixed`` where the chip has bf16 units, else ``32-true`` (:mod:`lightning_film.precision`).

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
import signal
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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
    nest_network_arguments,
    read_checkpoint,
    trusted_hyper_parameters,
)
from lightning_film.cli_inputs import (
    SHARED_SETTINGS,
    check_config,
    check_paths,
    check_shared_settings,
    config_model_keys,
)
from lightning_film.cli_messages import DEBUG_ENV, PROG, HelpFormatter, QuietParser, subcommand_description
from lightning_film.errors import CommandParser, UsageError
from lightning_film.precision import default_precision
from lightning_film.quiet import quiet_library_notices
from lightning_film.registry import Registry, RegistryError
from lightning_film.user_modules import IMPORTS_HELP, import_user_modules

__all__ = ["EXTRA_COMMANDS", "FilmCLI", "UsageError", "main", "registries"]

_PACKAGE_DIR = Path(__file__).resolve().parent


# -- extra commands --------------------------------------------------------------------------
def registries() -> list[Registry]:
    """Every :class:`Registry` there is once the package is loaded (``Registry.every``)."""
    import lightning_film  # noqa: F401  (fills the built-in registries)

    return Registry.every()


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
def _epilog() -> str:
    width = max(len(name) for name in EXTRA_COMMANDS)
    lines = [f"  {name:<{width}}  {help_}" for name, (help_, _) in EXTRA_COMMANDS.items()]
    return (
        f"extra commands (run as '{PROG} COMMAND ...', see '{PROG} COMMAND --help'):\n"
        + "\n".join(lines)
        + f"\n\nSet {DEBUG_ENV}=1 to see the traceback behind an error message."
    )


class FilmCLI(LightningCLI):
    """LightningCLI whose checkpoints stay in one place across runs, so ``--ckpt_path last`` resumes,
    and whose checkpoint arguments are checked before anything is built."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--imports", type=list[str] | str, default=[], help=IMPORTS_HELP)
        # said once, under data; a model and data class that both take one get the data's value
        for name, at in SHARED_SETTINGS.items():
            parser.link_arguments(f"data.init_args.{name}", "model.init_args." + at.replace("net.", "net.init_args."))

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        self._cli_model_keys = _cli_model_keys(args)
        super().parse_arguments(parser, args)
        check_config(self.config)
        if isinstance(args, (list, tuple)):
            check_shared_settings(self.config, self._cli_model_keys | config_model_keys(list(args)))

    def before_instantiate_classes(self) -> None:
        # the model's __init__ reads the registries: the user's registrations must be in by then
        section = self.config.get(self.subcommand) if self.subcommand else self.config
        configs = [Path(str(c)).parent for c in (section.get("config") or []) if c is not None]
        import_user_modules(section.get("imports"), search=configs)
        if "trainer" in section and section.get("trainer.precision") is None:
            precision, why = default_precision(section.get("trainer.accelerator"))
            section["trainer.precision"] = precision  # so the run's config.yaml says what it ran with
            if precision != "32-true":  # Lightning's own default needs no word
                rank_zero_info(
                    f"{PROG}: trainer.precision {precision}: {why} (--trainer.precision 32-true turns it off)"
                )

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
        if isinstance(given.get("net"), dict):  # as the checkpoint holds it: the arguments alone
            given["net"] = given["net"].get("init_args", given["net"])
        cls = loaded_class(class_path)
        takes = list(inspect.signature(cls).parameters) if cls is not None else None
        if cls is not None:
            nest_network_arguments(checkpoint.get("hyper_parameters"), cls)
        hparams = trusted_hyper_parameters(checkpoint, ckpt_path, given, takes)
        # Lightning lets the checkpoint overwrite everything; an option typed on this command line
        # (--model.sample_steps 50 at test time) is the user's latest word, so it wins
        keys = getattr(self, "_cli_model_keys", ())
        kept = sorted(k for k in keys if _get(hparams, k, _MISSING) not in (_MISSING, _get(given, k)))
        for key in kept:
            _pop(hparams, key)
        if kept:
            rank_zero_info(
                f"{PROG}: model settings from checkpoint {str(ckpt_path)!r}, except from the command line: "
                + ", ".join(f"{k}={_get(given, k)!r}" for k in kept)
            )
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
                check_model_class(
                    read_checkpoint(kwargs["ckpt_path"]), kwargs["ckpt_path"], type(self.model), "this run's model"
                )
        return kwargs


_MISSING = object()


def _get(settings: dict, key: str, default: Any = None) -> Any:
    """``settings[key]``, ``key`` dotted one level at most (``net.dim``)."""
    first, _, rest = key.partition(".")
    value = settings.get(first, default)
    return (value.get(rest, default) if isinstance(value, dict) else default) if rest else value


def _pop(settings: dict, key: str) -> None:
    first, _, rest = key.partition(".")
    if rest and isinstance(settings.get(first), dict):
        settings[first].pop(rest, None)
    elif not rest:
        settings.pop(first, None)


def _cli_model_keys(args: Any) -> set[str]:
    """The model settings named on the command line: ``--model.X`` / ``--model.init_args.X`` (``=v`` or not),
    the network's as ``net.X``."""
    keys = set()
    for arg in args if isinstance(args, (list, tuple)) else ():
        if isinstance(arg, str) and arg.startswith("--model."):
            name = arg[len("--model.") :].split("=", 1)[0]
            name = name[len("init_args.") :] if name.startswith("init_args.") else name
            if name and name not in ("help", "class_path"):
                first, _, rest = name.partition(".")
                rest = rest[len("init_args.") :] if rest.startswith("init_args.") else rest
                keys.add(f"net.{rest.split('.', 1)[0]}" if first == "net" and rest else first)
    return keys


#: ``--ckpt_path`` values the Trainer resolves itself
_TRAINER_NAMES = ("last", "best", "hpc")


def run_lightning_cli(args: list[str]) -> LightningCLI:
    """Build and run LightningCLI on ``args`` (``fit --config ...`` and so on)."""
    check_paths(args)
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
            parser_class=QuietParser,
            parser_kwargs={
                "prog": PROG,
                "description": "Train, evaluate and compare conditioned transformers (LightningCLI).",
                "epilog": _epilog(),
                "formatter_class": HelpFormatter,
                **{
                    sub: {
                        # argparse's usage lists every Trainer option (~90 lines) before the description
                        "usage": f"{PROG} {sub} [-h] [-c CONFIG] [--imports MODULE] [--SECTION.OPTION VALUE ...]",
                        "description": subcommand_description(sub),
                        "formatter_class": HelpFormatter,
                    }
                    for sub in LightningCLI.subcommands()
                },
            },
            args=args,
        )


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
            print(
                f"{PROG}: error: interrupted (Ctrl-C); finished work is kept: rerun the same command to go on",
                file=sys.stderr,
            )
            raise SystemExit(128 + signal.SIGINT) from None
        except Exception as err:
            shown = None if os.environ.get(DEBUG_ENV, "0") not in ("", "0") else user_error(err)
            if shown is None:
                raise
            print(f"{PROG}: error: {shown}", file=sys.stderr)
            raise SystemExit(2) from None


if __name__ == "__main__":
    main()
