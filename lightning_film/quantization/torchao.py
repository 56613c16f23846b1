"""The thin layer over torchao: post-training quantization and QAT, with a bit width per role.

Everything goes through torchao's ``quantize_(model, config, filter_fn)``; this module only turns a
:class:`~lightning_film.quantization.config.Scheme` into one ``IntxWeightOnlyConfig`` per (format,
group size) and a ``filter_fn`` that picks the modules of the roles asking for it:

- ``int8``: ``IntxWeightOnlyConfig(torch.int8, PerAxis(0))``: one symmetric scale per output channel
  (per embedding row);
- ``int4``: ``IntxWeightOnlyConfig(torch.int4, PerGroup(g))``: one scale per ``g`` input weights,
  ``g`` the scheme's group size, or the largest divisor of the row shared with it
  (:func:`~lightning_film.quantization.config.effective_group_size`).

QAT is torchao's two steps: :func:`prepare_qat` swaps the chosen Linear / Embedding modules for
fake-quantized ones (``QATConfig(base, step="prepare")``; the Parameters stay the same objects, so
an optimizer built before keeps working and ``state_dict`` keys do not change), and
:func:`convert_qat` applies the base config for real (``step="convert"``). torchao's
``Int4WeightOnlyConfig`` has no CPU path, hence ``IntxWeightOnlyConfig`` for int4. torchao keeps
int4 values unpacked in int8 storage on CPU: :func:`size_bytes` reports what is stored and what
the bit widths imply.

Pinned: torchao 0.18.0 (its API moves fast).
"""

from __future__ import annotations

import io
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from lightning_film.quantization.config import Scheme, effective_group_size
from lightning_film.quantization.extras import require
from lightning_film.quantization.roles import HEAD_NAMES, role_weights

__all__ = [
    "PlanEntry",
    "convert_qat",
    "fake_quantizers",
    "is_prepared",
    "plan",
    "prepare_qat",
    "quantize",
    "require_torchao",
    "size_bytes",
    "strip_fake_quant",
]


def require_torchao(purpose: str = "quantization") -> Any:
    """torchao.quantization, or a clear error naming the extra to install."""
    return require("torchao.quantization", "quant", purpose)


@dataclass(frozen=True)
class PlanEntry:
    """One module the scheme quantizes: where, its role, format and group (None: per channel)."""

    fqn: str
    role: str
    kind: str
    shape: tuple[int, ...]
    format: str
    group_size: int | None

    @property
    def bits(self) -> int:
        return {"int8": 8, "int4": 4, "palettize4": 4}[self.format]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan(model: nn.Module, scheme: Scheme, head_names: tuple[str, ...] = HEAD_NAMES) -> list[PlanEntry]:
    """The modules ``scheme`` quantizes in ``model`` (no torchao needed: a dry run for reports)."""
    entries = []
    for w in role_weights(model, head_names):
        fmt = scheme.roles[w.role]
        if fmt in ("float", "fp16"):
            continue
        group = None if fmt == "int8" else effective_group_size(w.reduction_dim, scheme.group_size)
        entries.append(PlanEntry(w.fqn, w.role, w.kind, w.shape, fmt, group))
    return entries


def _base_config(fmt: str, group: int | None) -> Any:
    q = require_torchao()
    from torchao.quantization.granularity import PerAxis, PerGroup

    dtype = {"int8": torch.int8, "int4": torch.int4}[fmt]
    return q.IntxWeightOnlyConfig(weight_dtype=dtype, granularity=PerAxis(0) if group is None else PerGroup(group))


def _by_config(entries: list[PlanEntry]) -> dict[tuple[str, int | None], set[str]]:
    groups: dict[tuple[str, int | None], set[str]] = defaultdict(set)
    for e in entries:
        groups[(e.format, e.group_size)].add(e.fqn)
    return groups


def _apply(model: nn.Module, entries: list[PlanEntry], step: str | None) -> None:
    q = require_torchao()
    for (fmt, group), fqns in _by_config(entries).items():
        base = _base_config(fmt, group)
        config = base if step is None else _qat_config(base, step)
        q.quantize_(model, config, filter_fn=lambda module, fqn, fqns=fqns: fqn in fqns)


def _qat_config(base: Any, step: str) -> Any:
    from torchao.quantization.qat import QATConfig

    return QATConfig(base, step=step)


def quantize(model: nn.Module, scheme: Scheme) -> list[PlanEntry]:
    """Post-training quantization of ``model`` **in place** (quantize a copy to keep the float one)."""
    entries = plan(model, scheme)
    _apply(model, entries, None)
    return entries


def prepare_qat(model: nn.Module, scheme: Scheme) -> list[PlanEntry]:
    """Swap the scheme's modules for fake-quantized ones, in place (same Parameter objects)."""
    entries = plan(model, scheme)
    _apply(model, entries, "prepare")
    return entries


def convert_qat(model: nn.Module, scheme: Scheme) -> list[PlanEntry]:
    """Turn a prepared model into a really quantized one, in place."""
    entries = plan(model, scheme)
    _apply(model, entries, "convert")
    return entries


def strip_fake_quant(model: nn.Module) -> int:
    """Swap fake-quantized modules back to plain Linear / Embedding (same Parameters); returns how many."""
    require_torchao()
    from torchao.quantization import quantize_
    from torchao.quantization.qat import FakeQuantizedEmbedding, FakeQuantizedLinear, QATConfig

    kinds = (FakeQuantizedLinear, FakeQuantizedEmbedding)
    count = sum(isinstance(m, kinds) for m in model.modules())
    if count:
        quantize_(model, QATConfig(step="convert"), filter_fn=lambda module, fqn: isinstance(module, kinds))
    return count


def _fake_quantized_kinds() -> tuple[type, ...]:
    try:
        from torchao.quantization.qat import FakeQuantizedEmbedding, FakeQuantizedLinear
    except ImportError:
        return ()
    return (FakeQuantizedLinear, FakeQuantizedEmbedding)


def is_prepared(model: nn.Module) -> bool:
    """Whether ``model`` holds fake-quantized modules (False without torchao)."""
    kinds = _fake_quantized_kinds()
    return bool(kinds) and any(isinstance(m, kinds) for m in model.modules())


def fake_quantizers(model: nn.Module) -> dict[str, nn.Module]:
    """``{fqn: fake quantizer}`` of a prepared model (weight and activation quantizers)."""
    try:
        from torchao.quantization.qat import FakeQuantizerBase
    except ImportError:
        return {}
    return {name: m for name, m in model.named_modules() if isinstance(m, FakeQuantizerBase)}


def size_bytes(model: nn.Module, entries: list[PlanEntry] | None = None) -> dict[str, int]:
    """``stored``: the bytes ``torch.save(state_dict)`` writes; ``packed``: what the bit widths
    imply (each quantized weight at its bits plus one fp16 scale per group or channel, every
    other tensor as stored), the size a packed format (Core ML) reaches."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    packed = 0
    quantized = {e.fqn + ".weight": e for e in entries or []}
    for name, tensor in model.state_dict().items():
        e = quantized.get(name)
        if e is None:
            packed += tensor.numel() * tensor.element_size()
            continue
        rows, length = e.shape[0], e.shape[-1]
        groups = rows * (1 if e.group_size is None else length // e.group_size)
        packed += (rows * length * e.bits + 7) // 8 + 2 * groups
    return {"stored": len(buffer.getvalue()), "packed": packed}
