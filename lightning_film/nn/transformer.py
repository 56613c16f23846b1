"""The pre-norm conditioned transformer: ``norm -> conditioner -> attention/MLP``, residual.

    x = x + gate1(attn(modulate1(norm1(x), c))) [+ branch1(norm1(x), c)]
    x = x + gate2(mlp(modulate2(norm2(x), c)))
    out = final_modulate(final_norm(x), c)

Blocks take ready-built parts (torchtune's way); :class:`Transformer` makes the choices
from registry specs, so one name in a config picks the normalizer and the conditioner.

Legend: B batch, N tokens, D width (``dim``), Dc conditioning width (``cond_dim``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lightning_film.nn.attention import SelfAttention
from lightning_film.nn.conditioners.base import Conditioner
from lightning_film.nn.conditioning import Conditioning
from lightning_film.nn.mlp import MLP
from lightning_film.registry import Spec, build_conditioner, build_normalizer

__all__ = ["TransformerBlock", "Transformer"]


def _conditioned(
    norm: nn.Module, conditioner: Conditioner, layer: nn.Module, x: torch.Tensor, cond: Conditioning, **kw: Any
) -> torch.Tensor:
    """One residual branch's update: x (B, N, D) -> (B, N, D), to be added to x."""
    h = norm(x)  # (B, N, D)
    if conditioner.ablated:
        return layer(h, **kw)
    y = conditioner.gate(layer(conditioner.modulate(h, cond), **kw), cond)  # (B, N, D)
    extra = conditioner.branch(h, cond)
    return y if extra is None else y + extra


class TransformerBlock(nn.Module):
    """One pre-norm block with a conditioner before each sub-layer."""

    def __init__(
        self,
        attn: SelfAttention,
        mlp: nn.Module,
        norm1: nn.Module,
        norm2: nn.Module,
        cond1: Conditioner,
        cond2: Conditioner,
    ) -> None:
        super().__init__()
        self.norm1, self.cond1, self.attn = norm1, cond1, attn
        self.norm2, self.cond2, self.mlp = norm2, cond2, mlp

    def forward(self, x: torch.Tensor, cond: Conditioning, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, N, D); key_mask: (B, N) bool or None -> (B, N, D)."""
        x = x + _conditioned(self.norm1, self.cond1, self.attn, x, cond, key_mask=key_mask)  # (B, N, D)
        x = x + _conditioned(self.norm2, self.cond2, self.mlp, x, cond)  # (B, N, D)
        return x


class Transformer(nn.Module):
    """A stack of conditioned pre-norm blocks, a final norm and a final conditioner.

    Args:
        dim: D, the token width.
        depth: number of blocks.
        num_heads: attention heads (divides ``dim``).
        cond_dim: Dc, the conditioning width.
        mlp_ratio: MLP hidden width as a multiple of ``dim``.
        normalizer: a registered normalizer name, path, or ``{"name": ..., **options}``.
        conditioner: a registered conditioner name, path, or ``{"name": ..., **options}``.
        causal: causal (language model) or bidirectional (denoiser) attention.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        cond_dim: int,
        mlp_ratio: float = 4.0,
        normalizer: Spec = "rmsnorm",
        conditioner: Spec = "film",
        causal: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"Transformer: depth must be a positive int, got {depth!r}")
        if not mlp_ratio > 0:
            raise ValueError(f"Transformer: mlp_ratio must be > 0, got {mlp_ratio!r}")
        self.dim, self.cond_dim = dim, cond_dim
        hidden = max(1, round(dim * mlp_ratio))
        self.blocks = nn.ModuleList(
            TransformerBlock(
                attn=SelfAttention(dim, num_heads, causal=causal),
                mlp=MLP(dim, hidden),
                norm1=build_normalizer(normalizer, dim),
                norm2=build_normalizer(normalizer, dim),
                cond1=build_conditioner(conditioner, dim, cond_dim, site="attn"),
                cond2=build_conditioner(conditioner, dim, cond_dim, site="mlp"),
            )
            for _ in range(depth)
        )
        self.final_norm = build_normalizer(normalizer, dim)
        self.final_cond = build_conditioner(conditioner, dim, cond_dim, site="final")
        if not isinstance(self.final_cond, Conditioner):
            raise TypeError(
                f"conditioner {conditioner!r} built a {type(self.final_cond).__name__}; "
                f"conditioners must subclass lightning_film.nn.Conditioner"
            )

    def forward(self, x: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """x: (B, N, D) tokens, cond: their conditioning -> (B, N, D) features."""
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"Transformer expects tokens (B, N, {self.dim}), got {tuple(x.shape)}")
        stack = self.final_cond
        key_mask = None
        if not stack.ablated:
            x, key_mask = stack.enter(x, cond)  # (B, S, D), S = N (+ M in-context tokens)
        for block in self.blocks:
            x = block(x, cond, key_mask)  # (B, S, D)
        if not stack.ablated:
            x = stack.exit(x, cond)  # (B, N, D)
        h = self.final_norm(x)  # (B, N, D)
        return h if stack.ablated else stack.modulate(h, cond)  # (B, N, D)

    def conditioners(self) -> list[Conditioner]:
        """Every conditioner in the stack, blocks first, the final one last."""
        return [m for m in self.modules() if isinstance(m, Conditioner)]
