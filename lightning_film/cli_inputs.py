"""What the CLI checks before LightningCLI reads anything: files named on the command line, inline
YAML, and what a parsed config names on disk (each problem one line)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lightning_film.checkpoints import read_checkpoint
from lightning_film.errors import UsageError
from lightning_film.io import folder_problem, yaml_problem

__all__ = ["SHARED_SETTINGS", "check_config", "check_paths", "check_shared_settings", "config_model_keys"]

#: settings a model and its data must agree on -> where the model takes them: given once, under
#: ``data``; the CLI links them to the model (``FilmCLI.add_arguments_to_parser``) when the data class takes them
SHARED_SETTINGS = {
    "frame_size": "net.frame_size",
    "context_frames": "net.context_frames",
    "seq_len": "net.seq_len",
    "nibble_scheme": "nibble_scheme",
}


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


def config_model_keys(args: list[str]) -> set[str]:
    """The model settings the ``--config`` files name (``model.init_args.X`` or ``model.X``; the
    network's as ``net.X``)."""
    import yaml

    keys: set[str] = set()
    for i, arg in enumerate(args):
        option, has_value, value = arg.partition("=")
        value = value if has_value else (args[i + 1] if i + 1 < len(args) else "")
        if option not in ("-c", "--config"):
            continue
        try:  # a file (checked by check_paths first) or inline YAML
            text = Path(value).read_text(encoding="utf-8") if Path(value).is_file() else value
            model = (yaml.safe_load(text) or {}).get("model")
        except (OSError, ValueError, AttributeError, yaml.YAMLError):
            continue
        if isinstance(model, dict):
            init = model.get("init_args")
            given = {**(init if isinstance(init, dict) else {}), **model}
            keys |= {k for k in given if k not in ("class_path", "init_args", "dict_kwargs")}
            net = given.get("net")
            net = net.get("init_args", net) if isinstance(net, dict) else None
            keys |= {f"net.{k}" for k in net if k != "class_path"} if isinstance(net, dict) else set()
    return keys


def check_shared_settings(config: Any, given: set[str]) -> None:
    """A shared setting given under ``model`` would be replaced, silently, by the data's (the CLI
    links it): one line saying where it goes instead. Only for data classes that take it."""
    subcommand = config.get("subcommand")
    section = config.get(subcommand) if subcommand else None
    data = section.get("data") if section is not None else None
    init = data.get("init_args") if hasattr(data, "get") else None
    taken = set(vars(init)) if init is not None and hasattr(init, "__dict__") else set()
    clash = [name for name, at in SHARED_SETTINGS.items() if at in given and name in taken]
    if clash:
        moved = ", ".join(f"model.{SHARED_SETTINGS[n]} -> data.{n}" for n in clash)
        raise UsageError(
            f"{', '.join(f'model.{SHARED_SETTINGS[n]}' for n in clash)}: the model takes these from its data (the two "
            f"must agree, so each is set once, under data); move them: {moved}"
        )


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
