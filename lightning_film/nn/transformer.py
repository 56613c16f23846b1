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

from lightning_film.nn.attention import KVCache, SelfAttention
from lightning_film.nn.conditioners.base import Conditioner
from lightning_film.nn.conditioners.fast import precompute_projections
from lightning_film.nn.conditioning import Conditioning
from lightning_film.nn.mlp import MLP, Activation
from lightning_film.registry import Spec, build_conditioner, build_normalizer

__all__ = ["TransformerBlock", "Transformer", "TransformerCache"]


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


class TransformerCache:
    """One :class:`~lightning_film.nn.attention.KVCache` per block, for incremental causal decoding.

    ``length``: the tokens already seen; the next forward's tokens follow them.
    """

    def __init__(self, depth: int, max_len: int) -> None:
        self.layers = [KVCache(max_len) for _ in range(depth)]
        self.max_len = max_len

    @property
    def length(self) -> int:
        return self.layers[0].length


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

    def forward(
        self, x: torch.Tensor, cond: Conditioning, key_mask: torch.Tensor | None = None, cache: KVCache | None = None
    ) -> torch.Tensor:
        """x: (B, N, D); key_mask: (B, N) bool or None; cache: this block's keys/values -> (B, N, D)."""
        kw = {"key_mask": key_mask} if cache is None else {"key_mask": key_mask, "cache": cache}
        x = x + _conditioned(self.norm1, self.cond1, self.attn, x, cond, **kw)  # (B, N, D)
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
        activation: the MLP's, ``"gelu"`` (exact, the default) or ``"gelu_tanh"`` (DiT's).
        positions: the attention's: ``"none"`` (the caller adds its own, or none) or ``"rotary"`` (RoPE).
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
        activation: Activation = "gelu",
        positions: str = "none",
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
                attn=SelfAttention(dim, num_heads, causal=causal, positions=positions),
                mlp=MLP(dim, hidden, activation),
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

    def forward(self, x: torch.Tensor, cond: Conditioning, cache: TransformerCache | None = None) -> torch.Tensor:
        """x: (B, N, D) tokens, cond: their conditioning -> (B, N, D) features.

        ``cache`` (causal stacks, from :meth:`new_cache`): x holds the tokens after the
        ``cache.length`` already seen (per-token conditioning: theirs only), and their keys and
        values are added to it, so decoding one token costs one token's forward.
        """
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"Transformer expects tokens (B, N, {self.dim}), got {tuple(x.shape)}")
        stack = self.final_cond
        if cache is not None:
            self._check_cache(cache)
        if not stack.ablated:
            cond = stack.prepare(x, cond)  # what the stack computes once for all its sites
        # every site's projections of the signal in one matmul (read back by the hooks)
        filled = precompute_projections(self._sites(), cond, x)
        try:
            key_mask = None
            if not stack.ablated:
                x, key_mask = stack.enter(x, cond)  # (B, S, D), S = N (+ M in-context tokens)
            for i, block in enumerate(self.blocks):
                x = block(x, cond, key_mask, None if cache is None else cache.layers[i])  # (B, S, D)
            if not stack.ablated:
                x = stack.exit(x, cond)  # (B, N, D)
            h = self.final_norm(x)  # (B, N, D)
            return h if stack.ablated else stack.modulate(h, cond)  # (B, N, D)
        finally:
            for c in filled:
                c._precomputed = None

    def new_cache(self, max_len: int) -> TransformerCache:
        """An empty key/value cache for up to ``max_len`` tokens (causal stacks only)."""
        cache = TransformerCache(len(self.blocks), max_len)
        self._check_cache(cache)
        return cache

    def _check_cache(self, cache: TransformerCache) -> None:
        if not all(block.attn.causal for block in self.blocks):
            raise ValueError("Transformer: a key/value cache needs causal attention (causal=True)")
        if type(self.final_cond).enter is not Conditioner.enter:
            raise ValueError(
                f"Transformer: conditioner {type(self.final_cond).__name__} changes the sequence before the stack "
                f"(in-context tokens), which a key/value cache of the sequence alone cannot follow"
            )
        if len(cache.layers) != len(self.blocks):
            raise ValueError(f"Transformer: a cache of {len(cache.layers)} layers for {len(self.blocks)} blocks")

    def _sites(self) -> list[Conditioner]:
        """The conditioners of the blocks (attention, MLP) and the final one, in order."""
        return [c for block in self.blocks for c in (block.cond1, block.cond2)] + [self.final_cond]

    def conditioners(self) -> list[Conditioner]:
        """Every conditioner in the stack, blocks first, the final one last."""
        return [m for m in self.modules() if isinstance(m, Conditioner)]
