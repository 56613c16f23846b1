"""The one gate every checkpoint read goes through, with one clear error for a file that is not usable.

The trust model (README, "Resuming, several processes, bad input"): the user's own config and
command line are trusted, a file being loaded is not. So a checkpoint

- is a local regular file: a URL is refused (torch hub's download cache is keyed by file name, so a
  second URL could silently score the first file; and a remote file can change between runs), and
  so are folders, FIFOs (which would hang the reader) and devices;
- is read with ``torch.load(..., weights_only=True)``: tensors and plain containers only, so a
  pickled object (which could run code when unpickled) is refused, never executed;
- holds stored (uncompressed) zip entries no larger than the file, as ``torch.save`` writes: a small
  compressed file that would inflate to gigabytes is refused before anything is inflated;
- never chooses code: a ``module:attr`` import path or a ``class_path`` in its hyper-parameters is
  refused unless the user's own config names the same value (:func:`trusted_hyper_parameters`),
  and a class it names is looked up only among modules already imported, never imported.

A missing, truncated or random file, a ``torch.save`` of something that is not a checkpoint, and a
checkpoint of another model class are each a :class:`UsageError` naming the file and what was
expected (the CLI prints it as one ``lightning-film: error:`` line). Lightning's own reads (a resume,
``--ckpt_path last``) come here through :class:`AtomicCheckpointIO`.
"""

from __future__ import annotations

import os
import pickle
import re
import stat
import sys
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO
from torch import Tensor

from lightning_film.errors import UsageError
from lightning_film.io import atomic_path

__all__ = [
    "LIGHTNING_KEYS",
    "AtomicCheckpointIO",
    "check_model_class",
    "check_weights_fit",
    "checkpoint_class",
    "last_checkpoint",
    "load_model",
    "loaded_class",
    "nest_checkpoint",
    "nest_keys",
    "nest_network_arguments",
    "network_class",
    "read_checkpoint",
    "trusted_hyper_parameters",
]

#: what makes a dict a Lightning checkpoint (Lightning's own loader needs both)
LIGHTNING_KEYS = ("state_dict", "pytorch-lightning_version")
_BOILERPLATE = ("Weights only load failed", "Check the documentation")


def _refusal(err: pickle.UnpicklingError) -> str:
    """The part of torch's long weights_only refusal that says what was refused."""
    text = str(err)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return f"it pickles {found[1]}"
    parts = [p.strip() for p in text.split("\n\n") if p.strip() and not p.strip().startswith(_BOILERPLATE)]
    return " ".join(" ".join(parts).split())[:200] or type(err).__name__


def _describe(obj: object) -> str:
    if isinstance(obj, dict):
        return f"a dict with keys {sorted(map(str, obj))[:8]}"
    return f"a {type(obj).__name__}"


def _local_file(path: str | os.PathLike[str], what: str) -> Path:
    """``path`` as a local regular file, or the one-line reason it is not one (nothing is opened)."""
    text = str(path)
    if "://" in text:
        raise UsageError(
            f"{what} {text!r} is remote: lightning-film reads only local checkpoint files (a download can change "
            f"between runs and torch caches it by file name). Download it yourself, check where it came from, and "
            f"give the local path"
        )
    path = Path(path).expanduser()
    shown = repr(str(path))
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise UsageError(f"{what} {shown} does not exist (relative paths start at {os.getcwd()})") from None
    except OSError as err:
        raise UsageError(f"{what} {shown} cannot be read: {err.strerror or err}") from None
    if stat.S_ISDIR(mode):
        raise UsageError(f"{what} {shown} is a folder, not a checkpoint file")
    if not stat.S_ISREG(mode):
        # a FIFO would block the reader forever, a device could stream without end
        raise UsageError(f"{what} {shown} is not a regular file (a FIFO, socket or device); give a .ckpt file")
    return path


def _check_archive(path: Path, what: str) -> None:
    """Refuse what torch.save never writes before torch inflates anything: compressed entries, or
    entries that claim more bytes than the file holds (a small file that would fill the memory)."""
    shown = repr(str(path))
    # torch.save writes a zip archive whose directory is at the end: a truncated copy has none
    if not zipfile.is_zipfile(path):
        raise UsageError(
            f"{what} {shown} is not a PyTorch checkpoint ({path.stat().st_size} bytes, not the zip archive torch.save "
            f"writes): it is truncated or another kind of file; give a .ckpt written by lightning-film fit"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise UsageError(f"{what} {shown} is damaged and cannot be read ({err}); use another checkpoint") from None
    packed = [e.filename for e in entries if e.compress_type != zipfile.ZIP_STORED]
    claimed, size = sum(e.file_size for e in entries), path.stat().st_size
    if packed or claimed > size:
        why = f"compressed entries ({packed[0]!r} ...)" if packed else f"entries of {claimed} bytes in a file of {size}"
        raise UsageError(
            f"{what} {shown} holds {why}; torch.save writes stored entries no larger than the file, so it is refused "
            f"before anything is inflated. Give a .ckpt written by lightning-film fit"
        )


def read_checkpoint(path: str | os.PathLike[str], what: str = "checkpoint", lightning: bool = True) -> dict[str, Any]:
    """The dict saved in local file ``path``, read with ``weights_only=True``.

    ``lightning=True``: it must be a Lightning checkpoint (``state_dict`` and the Lightning version);
    ``False``: a bare ``state_dict`` (names -> tensors) is accepted too. ``what`` starts every message
    (``"checkpoint"``, ``"init_from checkpoint"``).
    """
    path = _local_file(path, what)
    shown = repr(str(path))
    _check_archive(path, what)
    try:
        # read into memory, not memory-mapped: a file truncated under a mapping kills the process
        # with SIGBUS, where a read fails with an error we can name
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UsageError(
            f"{what} {shown} holds Python objects beyond tensors and plain containers ({_refusal(err)}); checkpoints "
            f"are read with weights_only=True, so such a file is refused rather than run. Give a checkpoint written "
            f"by lightning-film fit, or re-save this one as a state_dict of tensors"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, RecursionError, zipfile.BadZipFile) as err:
        reason = " ".join(str(err).split())[:160]
        raise UsageError(
            f"{what} {shown} is damaged and cannot be read ({type(err).__name__}: {reason}); it may be truncated: "
            f"use another checkpoint"
        ) from None
    if lightning:
        missing = [k for k in LIGHTNING_KEYS if not isinstance(checkpoint, dict) or k not in checkpoint]
        if missing:
            raise UsageError(
                f"{what} {shown} is not a Lightning checkpoint (no {' / '.join(missing)}): it holds "
                f"{_describe(checkpoint)}; give a .ckpt written by lightning-film fit (<default_root_dir>/checkpoints/)"
            )
    else:
        state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
        if not state or not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
            raise UsageError(
                f"{what} {shown} holds neither a Lightning checkpoint nor a state_dict (names -> tensors): it holds "
                f"{_describe(checkpoint)}"
            )
    return checkpoint


def checkpoint_class(checkpoint: dict[str, Any]) -> str | None:
    """The model class path a ``lightning-film fit`` checkpoint names (``hyper_parameters._class_path``)."""
    hparams = checkpoint.get("hyper_parameters")
    name = hparams.get("_class_path") if isinstance(hparams, dict) else None
    return name if isinstance(name, str) and name else None


def loaded_class(class_path: str) -> type | None:
    """The class ``class_path`` names (``package.module.Class`` or ``package.module:Class``) if its module
    is already imported, else None. Never imports: a name read from a checkpoint must not choose
    which module's import-time code runs."""
    module, _, name = class_path.replace(":", ".").rpartition(".")
    found = getattr(sys.modules.get(module), name, None)
    return found if isinstance(found, type) else None


def check_model_class(
    checkpoint: dict[str, Any], path: str | os.PathLike[str], expected: str | type, what: str
) -> None:
    """Raise if the checkpoint names a model class unrelated to ``expected`` (a class or class path):
    a ByteLM checkpoint given to a WorldModel run, say. ``what`` names the run's side
    (``"this config's model"``, ``"--model"``). A checkpoint that names no class passes."""
    saved = checkpoint_class(checkpoint)
    if saved is None:
        return
    theirs, ours = loaded_class(saved), expected if isinstance(expected, type) else loaded_class(expected)
    if theirs is None or ours is None:
        related = saved.rpartition(".")[2] == str(getattr(ours, "__name__", expected)).rpartition(".")[2]
    else:
        related = issubclass(theirs, ours) or issubclass(ours, theirs)
    if not related:
        name = ours.__qualname__ if isinstance(ours, type) else str(expected)
        raise UsageError(
            f"checkpoint {str(path)!r} holds a {saved.rpartition('.')[2]} ({saved}), but {what} is {name}; "
            f"give a checkpoint of {name}"
        )


def check_weights_fit(module: torch.nn.Module, checkpoint: dict[str, Any], strict: bool = True) -> None:
    """Raise if ``checkpoint["state_dict"]`` does not load into ``module``: a tensor of another
    shape, or (``strict``) a missing or unexpected key. The message names the first such weight and
    the hyper-parameters the checkpoint was made with that differ from the module's (``--model.dim
    24`` typed against a checkpoint of dim 16, say), so it reads as one line instead of PyTorch's
    list of every size mismatch. Call it from ``on_load_checkpoint``, which Lightning runs before it
    loads the weights."""
    state = checkpoint.get("state_dict")
    if not isinstance(state, Mapping):
        return
    ours = module.state_dict()
    shapes = [
        f"{k} is {tuple(v.shape)} in the checkpoint, {tuple(ours[k].shape)} here"
        for k, v in state.items()
        if k in ours and isinstance(v, Tensor) and v.shape != ours[k].shape
    ]
    missing = [k for k in ours if k not in state] if strict else []
    unexpected = [k for k in state if k not in ours] if strict else []
    problems = shapes + [f"{k} is missing from the checkpoint" for k in missing[:1]]
    problems += [f"the checkpoint has {k}, which this model lacks" for k in unexpected[:1]]
    if not problems:
        return
    saved, current = checkpoint.get("hyper_parameters"), getattr(module, "hparams", {})
    differ = []
    if isinstance(saved, Mapping):
        # the network's arguments one level down (net.dim), where they decide the shapes
        saved, current = dict(_strings(saved, "")), dict(_strings(dict(current), ""))
        differ = [
            f"{k}={saved[k]!r} there, {current[k]!r} here"
            for k in current
            if k in saved and not k.startswith("_") and saved[k] != current[k]
        ]
    settings = f"; settings that differ: {', '.join(differ[:4])}" if differ else ""
    count = len(shapes) + len(missing) + len(unexpected)
    raise UsageError(
        f"the checkpoint's weights do not fit this {type(module).__name__}: {problems[0]}"
        f"{f' (and {count - 1} more)' if count > 1 else ''}{settings}; build the model with the settings "
        f"it was trained with (drop the --model options that change its shape) or start a new run"
    )


def nest_keys(state: dict[str, Tensor], modules: tuple[str, ...], prefix: str = "net") -> list[str]:
    """Rename, in place, the keys of ``state`` whose first part is one of ``modules`` to
    ``prefix.<key>`` (a state_dict written before those modules moved into the network
    ``prefix``: ``transformer.blocks.0...`` -> ``net.transformer.blocks.0...``); returns the old names."""
    old = [k for k in state if k.split(".", 1)[0] in modules]
    for key in old:
        state[f"{prefix}.{key}"] = state.pop(key)
    return old


def nest_checkpoint(checkpoint: dict[str, Any], modules: tuple[str, ...], prefix: str = "net") -> bool:
    """:func:`nest_keys` on a Lightning checkpoint's ``state_dict`` and EMA's ``current_model_state``;
    whether any key was renamed. Call it from ``on_load_checkpoint`` (before the weights load)."""
    states = [checkpoint[k] for k in ("state_dict", "current_model_state") if isinstance(checkpoint.get(k), dict)]
    return any([nest_keys(state, modules, prefix) for state in states])


def network_class(model_class: type) -> type | None:
    """The network class a LightningModule class takes as ``net`` (its annotation), or None."""
    import typing

    init = getattr(model_class, "__init__", None)
    try:
        hint = typing.get_type_hints(init).get("net") if init is not None else None
    except (NameError, TypeError):
        return None
    return hint if isinstance(hint, type) and issubclass(hint, torch.nn.Module) else None


def nest_network_arguments(hparams: dict[str, Any], model_class: type) -> list[str]:
    """A checkpoint written before the network was ``net`` holds the network's arguments flat
    (``dim``, ``depth``, ...): move them, in place, under ``hparams["net"]``; returns their names."""
    import inspect

    net_class = network_class(model_class)
    if net_class is None or not isinstance(hparams, dict) or "net" in hparams:
        return []
    flat = [p for p in inspect.signature(net_class).parameters if p != "self" and p in hparams]
    if flat:
        hparams["net"] = {name: hparams.pop(name) for name in flat}
    return flat


def load_model(path: str | os.PathLike[str], model_class: str | None = None) -> Any:
    """The LightningModule saved in checkpoint ``path`` (read only, on CPU, in eval mode). Its class is
    ``model_class`` (``package.module.Class`` or ``package.module:Class``: the user's word, imported) or
    else the checkpoint's ``_class_path``, found only among modules already imported (lightning_film's
    models are). Its hyper-parameters may not name code (:func:`trusted_hyper_parameters`)."""
    import importlib
    import inspect

    from lightning.pytorch import LightningModule

    checkpoint = read_checkpoint(path)
    saved = checkpoint_class(checkpoint)
    if model_class:
        module, _, name = model_class.replace(":", ".").rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError, ValueError):
            raise UsageError(f"cannot import the model class {model_class!r}") from None
    elif saved is None:
        raise UsageError(
            f"{str(path)!r} does not name its model class (saved outside lightning-film); pass it, e.g. "
            f"--model lightning_film.models.ByteLM"
        )
    else:
        cls = loaded_class(saved)
        if cls is None:
            raise UsageError(
                f"checkpoint {str(path)!r} names the model class {saved!r}, which is not one of lightning_film's and "
                f"is not imported: a checkpoint never chooses which code to import; pass the class yourself, e.g. "
                f"--model {saved}"
            )
    if not (isinstance(cls, type) and issubclass(cls, LightningModule)):
        raise UsageError(
            f"model class {model_class or saved!r} is not a LightningModule; pass one with --model, e.g. "
            f"lightning_film.models.ByteLM"
        )
    if model_class:
        check_model_class(checkpoint, path, cls, "--model")
    takes = [p for p in inspect.signature(cls).parameters if p not in ("self", "args", "kwargs")]
    moved = nest_network_arguments(checkpoint.get("hyper_parameters"), cls)  # as the class's loader does
    hparams = trusted_hyper_parameters(checkpoint, path, accepted=takes)
    given = {"net": hparams["net"]} if moved else {}  # Lightning reads the file again
    return cls.load_from_checkpoint(path, map_location="cpu", weights_only=True, **given).eval()


def last_checkpoint(trainer: Any, subcommand: str) -> str | None:
    """The file ``--ckpt_path last`` means, found as Lightning finds it (the newest ``last*.ckpt`` in
    the checkpoint folders). None for a first ``fit`` (it starts fresh, so one command both starts
    and resumes a run); an error for validate/test/predict, which would score an untrained model."""
    from lightning.pytorch.callbacks import ModelCheckpoint as _ModelCheckpoint

    found = [
        path
        for cb in trainer.checkpoint_callbacks
        if isinstance(cb, _ModelCheckpoint)
        for path in cb._find_last_checkpoints(trainer)
    ]
    if found:
        return max(found, key=os.path.getmtime)
    if subcommand == "fit":
        return None
    folders = sorted({str(cb.dirpath) for cb in trainer.checkpoint_callbacks if isinstance(cb, _ModelCheckpoint)})
    raise UsageError(
        f"--ckpt_path last: no last checkpoint in {', '.join(folders) or 'any checkpoint folder (checkpointing is off)'}"
        f"; {subcommand} would score an untrained model. Run fit first with the same trainer.default_root_dir, "
        f"or give a checkpoint file"
    )


#: a registry spec that imports code (``"package.module:attr"``, registry.py's ``_import_path``)
_IMPORT_PATH = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


def _strings(value: Any, key: str) -> Iterator[tuple[str, Any]]:
    """(dotted key, leaf value) of every leaf in nested dicts and lists."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            yield from _strings(v, f"{key}.{k}" if key else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _strings(v, f"{key}[{i}]")
    else:
        yield key, value


def _code_names(hparams: Mapping[str, Any]) -> dict[str, str]:
    """Key -> value of every value that would import code: a ``module:attr`` string, or any
    ``class_path`` (jsonargparse imports it)."""
    return {
        key: value
        for key, value in _strings(hparams, "")
        if isinstance(value, str) and (_IMPORT_PATH.fullmatch(value.strip()) or key.rpartition(".")[2] == "class_path")
    }


def trusted_hyper_parameters(
    checkpoint: Mapping[str, Any],
    path: str | os.PathLike[str],
    given: Mapping[str, Any] | None = None,
    accepted: list[str] | None = None,
    section: str = "hyper_parameters",
) -> dict[str, Any]:
    """A checkpoint's model settings (``section``, without Lightning's ``_class_path``/``_instantiator``),
    refused if they would run code the user did not name.

    ``given``: the user's own settings for the same model (their config and command line); a
    ``module:attr`` or ``class_path`` value in the checkpoint passes only where ``given`` holds the
    same value under the same key. ``accepted``: the parameter names of the user's model class;
    others are refused by name (a checkpoint of another version or model).
    """
    shown = repr(str(path))
    hparams = checkpoint.get(section) or {}
    if not isinstance(hparams, Mapping) or not all(isinstance(k, str) for k in hparams):
        raise UsageError(
            f"checkpoint {shown}: its {section} are {type(hparams).__name__}, not a mapping of names to settings; "
            f"give a .ckpt written by lightning-film fit"
        )
    hparams = {k: v for k, v in hparams.items() if k not in ("_class_path", "_instantiator")}
    trusted = dict(_strings(given or {}, ""))
    untrusted = {k: v for k, v in _code_names(hparams).items() if trusted.get(k) != v}
    if untrusted:
        key, value = next(iter(untrusted.items()))
        raise UsageError(
            f"checkpoint {shown} names code to import in its {section} ({key}={value!r}"
            f"{f' and {len(untrusted) - 1} more' if len(untrusted) > 1 else ''}); a file being loaded never chooses "
            f"code: only your own config or command line does. If you trust it, name it there (e.g. --model.{key} "
            f"{value}), or use a checkpoint written by lightning-film fit"
        )
    unknown = sorted(set(hparams) - set(accepted)) if accepted is not None else []
    if unknown:
        raise UsageError(
            f"checkpoint {shown} holds {section} this run's model does not take ({', '.join(unknown)}); it was "
            f"written by another model or version. Accepted: {', '.join(accepted or [])}"
        )
    return hparams


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO``, but every checkpoint Lightning reads (a resume, ``last``)
    goes through :func:`read_checkpoint`, and a local checkpoint is written beside its final name
    and renamed over it when complete (:func:`lightning_film.io.atomic_path`).

    Lightning's own save goes through an fsspec transaction whose temporary file lives in the
    system temp folder; when that is another filesystem the final "rename" is a copy, and a kill
    during the copy leaves a truncated ``last.ckpt``: the very file ``--ckpt_path last`` resumes
    from. Remote paths (``s3://`` ...) keep Lightning's behaviour. ``lightning-film`` installs
    this in place of the default.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)

    def load_checkpoint(self, path: Any, map_location: Any | None = None, weights_only: bool | None = None) -> dict:
        return read_checkpoint(path)
