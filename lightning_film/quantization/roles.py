"""Which role each weight of a model plays, read from the module tree.

Quantization and Core ML compression choose a bit width per *role*, never per layer type:

- ``conditioner``: every ``nn.Linear`` inside a lightning_film :class:`Conditioner` (FiLM gamma/beta
  projections, AdaLN, cross-attention), wherever the conditioner sits (an embedding, a block);
- ``embedding``: every ``nn.Embedding`` (byte, nibble, accumulator, action tables);
- ``head``: the output head, an ``nn.Linear`` outside conditioners whose own name is one of
  ``head_names`` (``head`` in our models);
- ``backbone``: every other ``nn.Linear`` (attention, MLP, patch embedding, time MLP).

Other modules (norms, positions, convolutions) have no role and stay in floating point. torchao's
fake-quantized modules subclass ``nn.Linear`` / ``nn.Embedding``, so a model prepared for QAT keeps
its roles.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from lightning_film.nn.conditioners.base import Conditioner

__all__ = ["HEAD_NAMES", "ROLES", "RoleWeight", "assign_roles", "role_weights"]

#: Every role, in the order reports list them.
ROLES: tuple[str, ...] = ("conditioner", "backbone", "embedding", "head")
#: Module names (the last part of a qualified name) that make a Linear the output head.
HEAD_NAMES: tuple[str, ...] = ("head", "lm_head")


@dataclass(frozen=True)
class RoleWeight:
    """One quantizable weight: its module's qualified name, role, kind and weight shape."""

    fqn: str
    role: str
    kind: str  # "linear" | "embedding"
    shape: tuple[int, ...]

    @property
    def reduction_dim(self) -> int:
        """The length quantization groups run along: in_features, or the embedding width."""
        return self.shape[-1]

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


def role_weights(model: nn.Module, head_names: tuple[str, ...] = HEAD_NAMES) -> list[RoleWeight]:
    """Every Linear / Embedding of ``model`` with its role, in module order."""
    conditioners = [name for name, m in model.named_modules() if isinstance(m, Conditioner)]

    def inside_conditioner(fqn: str) -> bool:
        return any(c == "" or fqn == c or fqn.startswith(c + ".") for c in conditioners)

    found: list[RoleWeight] = []
    for fqn, module in model.named_modules():
        if isinstance(module, nn.Embedding):
            role, kind = "embedding", "embedding"
        elif isinstance(module, nn.Linear):
            kind = "linear"
            if inside_conditioner(fqn):
                role = "conditioner"
            elif fqn.rsplit(".", 1)[-1] in head_names:
                role = "head"
            else:
                role = "backbone"
        else:
            continue
        found.append(RoleWeight(fqn, role, kind, tuple(module.weight.shape)))
    return found


def assign_roles(model: nn.Module, head_names: tuple[str, ...] = HEAD_NAMES) -> dict[str, str]:
    """``{module fqn: role}`` for every Linear / Embedding of ``model``."""
    return {w.fqn: w.role for w in role_weights(model, head_names)}
