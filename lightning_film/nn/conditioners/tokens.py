"""Conditioners that read conditioning *tokens*: in-context (concat) and cross-attention.

Legend: B batch, N sequence tokens, M conditioning tokens, D width, Dc conditioning width.
"""

from __future__ import annotations

import torch
from torch import nn

from lightning_film.nn.attention import CrossAttention as _CrossAttention
from lightning_film.nn.channels_first import ChannelsFirst, CrossBranch, Hooks, TokenPrefix
from lightning_film.nn.conditioners.base import Conditioner, Site
from lightning_film.nn.conditioning import Conditioning
from lightning_film.registry import register_conditioner

__all__ = ["Concat", "CrossAttentionConditioner"]


@register_conditioner("concat")
class Concat(Conditioner):
    """In-context tokens (DiT): projected tokens prepended before the stack, dropped after.

    Blocks see the tokens only through attention. Only the final-site instance owns the
    token projection and the sequence hooks; branch sites are the identity. Not the
    identity at init: tokens take part in attention from the first step.
    """

    identity_at_init = False
    reads_tokens = True

    def __init__(self, dim: int, cond_dim: int, site: Site = "attn") -> None:
        super().__init__(dim, cond_dim, site)
        self.embed = nn.Linear(cond_dim, dim) if site == "final" else None

    def enter(self, x: torch.Tensor, cond: Conditioning) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.embed is None:
            return x, None
        tokens, mask = self.tokens(cond)  # (B, M, Dc), (B, M) | None
        if tokens.shape[0] != x.shape[0]:
            raise ValueError(f"concat: {tokens.shape[0]} token rows for a batch of {x.shape[0]}")
        x = torch.cat([self.embed(tokens), x], dim=1)  # (B, M + N, D)
        if mask is None:
            return x, None
        ones = torch.ones(x.shape[0], x.shape[1] - mask.shape[1], dtype=torch.bool, device=mask.device)
        return x, torch.cat([mask, ones], dim=1)  # (B, M + N)

    def exit(self, x: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        if self.embed is None:
            return x
        return x[:, cond.tokens.shape[1] :]  # (B, N, D)

    def channels_first(self, cf: ChannelsFirst) -> Hooks:
        """Tokens (B, Dc, 1, M) embedded and joined on the S axis of (B, D, 1, S)."""
        return Hooks() if self.embed is None else TokenPrefix(cf.conv(self.embed))


@register_conditioner("cross_attention")
class CrossAttentionConditioner(Conditioner):
    """Cross-attention branch x + CrossAttn(norm(x), tokens), zero output projection.

    One per block: the attention site owns it; the MLP and final sites are the identity.
    It reads the same normalized input as the self-attention beside it.

    Args:
        num_heads: heads of the cross-attention; default D / 64 when 64 divides D, else 1.
    """

    reads_tokens = True

    def __init__(self, dim: int, cond_dim: int, site: Site = "attn", num_heads: int | None = None) -> None:
        super().__init__(dim, cond_dim, site)
        if num_heads is None:
            num_heads = dim // 64 if dim % 64 == 0 else 1
        self.attn = _CrossAttention(dim, cond_dim, num_heads) if site == "attn" else None

    def branch(self, h: torch.Tensor, cond: Conditioning) -> torch.Tensor | None:
        if self.attn is None:
            return None
        tokens, mask = self.tokens(cond)  # (B, M, Dc), (B, M) | None
        if tokens.shape[0] != h.shape[0]:
            raise ValueError(f"cross_attention: {tokens.shape[0]} token rows for a batch of {h.shape[0]}")
        return self.attn(h, tokens, mask)  # (B, N, D)

    def channels_first(self, cf: ChannelsFirst) -> Hooks:
        """A residual cross-attention branch on (B, D, 1, S)."""
        return Hooks() if self.attn is None else CrossBranch(cf.convert(self.attn))
