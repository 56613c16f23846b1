"""Reading checkpoints safely, with one clear error for a file that is not a usable checkpoint.

Every checkpoint is read with ``torch.load(..., weights_only=True)``: tensors and plain containers
only, so a file that pickles an arbitrary object (which could run code when unpickled) is refused,
never executed. A missing, truncated or random file, a ``torch.save`` of something that is not a
checkpoint, and a checkpoint of another model class are each a :class:`UsageError` naming the file
and what was expected (the CLI prints it as one ``lightning-film: error:`` line).
"""

from __future__ import annotations

import importlib
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO
from torch import Tensor

from lightning_film.errors import UsageError
from lightning_film.io import atomic_path

__all__ = ["LIGHTNING_KEYS", "AtomicCheckpointIO", "check_model_class", "checkpoint_class", "read_checkpoint"]

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


def read_checkpoint(path: str | os.PathLike[str], what: str = "checkpoint", lightning: bool = True) -> dict[str, Any]:
    """The dict saved in ``path``, read with ``weights_only=True`` (tensors memory-mapped, not read).

    ``lightning=True``: it must be a Lightning checkpoint (``state_dict`` and the Lightning version);
    ``False``: a bare ``state_dict`` (names -> tensors) is accepted too. ``what`` starts every message
    (``"checkpoint"``, ``"init_from checkpoint"``).
    """
    path = Path(path).expanduser()
    shown = repr(str(path))
    if not path.exists():
        raise UsageError(f"{what} {shown} does not exist (relative paths start at {os.getcwd()})")
    if not path.is_file():
        raise UsageError(f"{what} {shown} is a folder, not a checkpoint file")
    # torch.save writes a zip archive whose directory is at the end: a truncated copy has none
    if not zipfile.is_zipfile(path):
        raise UsageError(
            f"{what} {shown} is not a PyTorch checkpoint ({path.stat().st_size} bytes, not the zip archive torch.save "
            f"writes): it is truncated or another kind of file; give a .ckpt written by lightning-film fit"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        raise UsageError(
            f"{what} {shown} holds Python objects beyond tensors and plain containers ({_refusal(err)}); checkpoints "
            f"are read with weights_only=True, so such a file is refused rather than run. Give a checkpoint written "
            f"by lightning-film fit, or re-save this one as a state_dict of tensors"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
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


def _import_class(class_path: str) -> type | None:
    module, _, name = class_path.replace(":", ".").rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None
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
    theirs, ours = _import_class(saved), expected if isinstance(expected, type) else _import_class(expected)
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


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO``, but a local checkpoint is written beside its final name
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
