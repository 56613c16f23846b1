"""What the CLI checks before LightningCLI reads anything: files named on the command line, inline
YAML, and what a parsed config names on disk (each problem one line)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lightning_film.checkpoints import read_checkpoint
from lightning_film.errors import UsageError
from lightning_film.io import folder_problem, yaml_problem

__all__ = ["check_config", "check_paths"]


def check_paths(args: list[str]) -> None:
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


def check_config(config: Any) -> None:
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
