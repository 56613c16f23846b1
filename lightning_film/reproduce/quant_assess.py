"""One checkpoint of the quant table, in this process: loaded weights only, quantized per variant,
each copy scored on the test split (with CPU timing and Core ML packages where asked), the result
kept beside the checkpoint while neither it nor the settings change."""

from __future__ import annotations

import copy
import json
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from lightning_film.errors import UsageError
from lightning_film.io import write_atomic
from lightning_film.reproduce.quant_deploy import coreml_packages, forward_speed
from lightning_film.reproduce.quant_specs import GROUP, REFERENCE, VARIANTS

__all__ = ["assess_checkpoint", "assessed", "load_for_scoring", "quantized_copy", "quiet_trainers", "score"]


def load_for_scoring(ckpt: Path) -> tuple[Any, Any, dict[str, Any]]:
    """(model, its data module, facts) of a ``lightning-film fit`` checkpoint, read weights only;
    the data module is rebuilt from the checkpoint's own data settings."""
    from lightning_film.checkpoints import load_model, loaded_class, read_checkpoint, trusted_hyper_parameters

    model = load_model(ckpt)
    checkpoint = read_checkpoint(ckpt)
    hp = checkpoint.get("datamodule_hyper_parameters") or {}
    class_path = str(hp.get("_class_path") or "") if isinstance(hp, dict) else ""
    # looked up among imported modules, never imported: a checkpoint does not choose code
    data_class = loaded_class(class_path)
    if data_class is None:
        raise UsageError(
            f"checkpoint {str(ckpt)!r} does not name a data module of lightning_film ({class_path or 'none saved'}); "
            "score checkpoints written by lightning-film fit"
        )
    data_args = trusted_hyper_parameters(checkpoint, ckpt, section="datamodule_hyper_parameters")
    facts = {
        "path": str(ckpt),
        "global_step": checkpoint.get("global_step"),
        "model_class": type(model).__name__,
        "model": {k: v for k, v in model.hparams.items() if not k.startswith("_")},
        "data": data_args,
    }
    return model, data_class(**data_args), facts


def quantized_copy(model: nn.Module, label: str, group_size: int = GROUP) -> nn.Module:
    """An eval-mode copy of ``model``: as it is (``float``), torchao-quantized per role (a
    :data:`VARIANTS` preset) or :data:`REFERENCE`; ``model`` is not changed."""
    from lightning_film.quantization import Scheme, quantize
    from lightning_film.quantization.torchao import require_torchao

    q = copy.deepcopy(model).eval()
    if label == REFERENCE:
        ao = require_torchao("int8 dynamic quantization")
        ao.quantize_(q, ao.Int8DynamicActivationInt8WeightConfig(), filter_fn=lambda m, fqn: isinstance(m, nn.Linear))
    elif label != "float":
        quantize(q, Scheme.parse(label, group_size=group_size))
    return q


def score(model: nn.Module, datamodule: Any, root: Path) -> dict[str, float]:
    """``model``'s test metrics on ``datamodule``'s test split (what ``lightning-film test`` logs), from a
    silent one-device Trainer; what the model writes itself (world sample sheets) goes under ``root``."""
    import lightning.pytorch as pl

    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
    return {
        k: float(v) for result in trainer.test(model, datamodule=datamodule, verbose=False) for k, v in result.items()
    }


def assess_checkpoint(
    ckpt: Path,
    work: Path,
    variants: tuple[str, ...] = VARIANTS,
    repeats: int = 0,
    steps_per_repeat: int = 5,
    coreml: tuple[str, ...] = (),
    group_size: int = GROUP,
    known: dict[str, dict[str, float]] | None = None,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Quantize ``ckpt``'s model per variant and score every copy on the test split (``known``: scores
    already measured, by variant, e.g. the run's own test of its float model); with ``repeats`` time
    them against ``float`` (batch 1 and the data's batch size); with ``coreml`` export the float
    weights per compression into ``work/coreml``. Sample sheets go to ``work/scored``."""
    from lightning_film.quantization import Scheme, plan, size_bytes

    if "float" not in variants:
        raise ValueError(f"variants must include 'float' (the reference), got {variants}")
    model, dm, facts = load_for_scoring(ckpt)
    copies = {label: quantized_copy(model, label, group_size) for label in variants}
    entries = {
        label: plan(model, Scheme.parse(label, group_size=group_size)) for label in variants if label in VARIANTS[1:]
    }
    out: dict[str, Any] = {
        "checkpoint": facts,
        "group_size": group_size,
        "schemes": {label: Scheme.parse(label, group_size=group_size).as_dict() for label in entries},
        "quantized_modules": {label: [e.as_dict() for e in es] for label, es in entries.items()},
        "sizes": {label: size_bytes(copies[label], entries.get(label)) for label in variants if label != REFERENCE},
    }
    if repeats:
        batches = tuple(dict.fromkeys((1, int(facts["data"].get("batch_size") or 1))))
        say(f"  timing {', '.join(variants)} ({repeats} repeats, batch {' and '.join(map(str, batches))})")
        out["speed"] = forward_speed(copies, batches, repeats, steps_per_repeat)
    out["scores"], out["scored_here"] = dict(known or {}), []
    for label, q in copies.items():
        if label not in out["scores"]:
            say(f"  scoring {label} on the test split")
            out["scores"][label] = score(q, dm, work / "scored" / label)
            out["scored_here"].append(label)
    if coreml:
        say(f"  Core ML: {', '.join(coreml)}")
        out["coreml"] = coreml_packages(model, work / "coreml", coreml, type(model).__name__.lower(), group_size)
    return out


def assessed(
    ckpt: Path, work: Path, job: dict[str, Any], known: dict[str, dict[str, float]], say: Callable[[str], None]
) -> dict[str, Any]:
    """:func:`assess_checkpoint`, or its saved result while the checkpoint and ``job`` are unchanged."""
    if not ckpt.is_file():
        raise UsageError(f"{str(ckpt)!r} is missing: its run finished but has no last checkpoint to quantize")
    stat = ckpt.stat()
    key = {"checkpoint": str(ckpt.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, **job}
    path = work / "assessment.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("key") == key:
            say(f"  assessed before, read from {path}")
            return saved
    measured = assess_checkpoint(
        ckpt,
        work,
        tuple(job["variants"]),
        job["repeats"],
        job["steps_per_repeat"],
        tuple(job["coreml"]),
        job["group_size"],
        known,
        say,
    )
    result = {"key": key, **measured}
    write_atomic(path, json.dumps(result, indent=1, default=str) + "\n")
    return json.loads(path.read_text())  # as JSON reads it back: the same whether assessed now or before


def quiet_trainers() -> None:
    """The in-process Trainers' banners and data-loader hints are noise between progress lines."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*(does not have many workers|GPU available but not used|treespec).*")
