"""Multi-head attention on ``F.scaled_dot_product_attention`` (fused kernels, no hand loops).

Causal self-attention can decode incrementally with a :class:`KVCache`: each call appends the
new tokens' keys and values and attends over everything cached so far.

Legend: B batch, S query tokens, M key/value tokens, L cached tokens, D width, H heads.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lightning_film.errors import check_int
from lightning_film.nn.channels_first import Attention, ChannelsFirst

__all__ = ["SelfAttention", "CrossAttention", "KVCache", "check_heads", "rotary", "rotary_angles"]

#: RoPE's base (RoFormer, litgpt's default)
ROTARY_BASE = 10000.0


def rotary_angles(
    start: int, length: int, head_dim: int, device: torch.device | str | None = None, base: float = ROTARY_BASE
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (S, Dh // 2), fp32, of the rotary angles at positions ``start .. start + S - 1``."""
    half = head_dim // 2
    freqs = base ** (-torch.arange(half, dtype=torch.float32, device=device) / half)  # (Dh / 2,)
    angles = torch.arange(start, start + length, dtype=torch.float32, device=device)[:, None] * freqs
    return angles.cos(), angles.sin()


def rotary(x: torch.Tensor, start: int, base: float = ROTARY_BASE) -> torch.Tensor:
    """Rotary positions (RoPE, litgpt's non-interleaved halves): x (B, H, S, Dh) at positions
    ``start .. start + S - 1`` -> same shape and dtype. The angles are computed in fp32."""
    half = x.shape[-1] // 2
    cos, sin = rotary_angles(start, x.shape[-2], x.shape[-1], x.device, base)  # (S, Dh / 2)
    x1, x2 = x[..., :half].float(), x[..., half : 2 * half].float()
    rotated = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos, x[..., 2 * half :].float()], dim=-1)
    return rotated.to(x.dtype)


def check_heads(dim: int, num_heads: int, who: str) -> None:
    if not isinstance(num_heads, int) or num_heads <= 0 or dim % num_heads:
        raise ValueError(f"{who}: num_heads must be a positive divisor of dim={dim}, got {num_heads!r}")


def _split_heads(t: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, S, D) -> (B, H, S, D / H)."""
    b, s, d = t.shape
    return t.view(b, s, num_heads, d // num_heads).transpose(1, 2)


def _merge_heads(t: torch.Tensor) -> torch.Tensor:
    """(B, H, S, D / H) -> (B, S, D)."""
    b, h, s, dh = t.shape
    return t.transpose(1, 2).reshape(b, s, h * dh)


class KVCache:
    """Keys and values of one self-attention layer, preallocated for ``max_len`` tokens.

    ``length`` tokens are filled; :meth:`update` appends (B, H, S, Dh) keys and values and
    returns every cached one so far, (B, H, L + S, Dh) views of the buffers.
    """

    def __init__(self, max_len: int) -> None:
        check_int("max_len", max_len, 1, who="KVCache")
        self.max_len, self.length = max_len, 0
        self.keys: torch.Tensor | None = None  # (B, H, max_len, Dh)
        self.values: torch.Tensor | None = None

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v: (B, H, S, Dh) of the new tokens -> every cached key and value (B, H, L + S, Dh)."""
        b, h, s, dh = k.shape
        if self.keys is None:
            self.keys = k.new_empty(b, h, self.max_len, dh)
            self.values = v.new_empty(b, h, self.max_len, dh)
        elif (b, h, dh) != (self.keys.shape[0], self.keys.shape[1], self.keys.shape[3]):
            raise ValueError(
                f"KVCache holds keys of shape (B, H, *, Dh) = {tuple(self.keys.shape)}, got new keys {tuple(k.shape)}"
            )
        end = self.length + s
        if end > self.max_len:
            raise ValueError(f"KVCache: {self.length} cached + {s} new tokens exceed max_len={self.max_len}")
        self.keys[:, :, self.length : end] = k
        self.values[:, :, self.length : end] = v
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """``F.scaled_dot_product_attention``, q: (B, H, S, Dh), k, v: (B, H, M, Dh) -> (B, H, S, Dh).

    On the CPU under bf16 autocast it runs in fp32 and returns bf16: torch's bf16 flash kernel on
    the CPU is 2.5x slower than its fp32 one at the byte model's shape (thread time per step 161 ms
    against 65 ms, ``benchmarks/results/performance-step-bf16``), and fp32 is also the more exact.
    """
    if (
        q.device.type == "cpu"
        and torch.is_autocast_enabled("cpu")
        and torch.get_autocast_dtype("cpu") == torch.bfloat16
    ):
        mask = kwargs.get("attn_mask")
        if mask is not None and mask.is_floating_point():
            kwargs["attn_mask"] = mask.float()
        with torch.autocast("cpu", enabled=False):
            return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), **kwargs).to(torch.bfloat16)
    return F.scaled_dot_product_attention(q, k, v, **kwargs)


class SelfAttention(nn.Module):
    """Causal or bidirectional multi-head self-attention.

    Args:
        dim: D. num_heads: H (divides D). causal: mask future positions.
        positions: ``"none"`` (the caller adds positions to x, or none) or ``"rotary"`` (RoPE on q and k).
    """

    def __init__(
        self, dim: int, num_heads: int, causal: bool = False, qkv_bias: bool = True, positions: str = "none"
    ) -> None:
        super().__init__()
        check_heads(dim, num_heads, "SelfAttention")
        if positions not in ("none", "rotary"):
            raise ValueError(f"SelfAttention: unknown positions {positions!r}; accepted: 'none', 'rotary'")
        self.num_heads, self.causal, self.positions = num_heads, causal, positions
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, key_mask: torch.Tensor | None = None, cache: KVCache | None = None
    ) -> torch.Tensor:
        """x: (B, S, D); key_mask: (B, S) bool, True = may be attended to -> (B, S, D).

        With ``cache`` (causal only), x holds the S tokens that follow the L cached ones: they
        attend to those and, causally, to each other; their keys and values join the cache.
        """
        q, k, v = (_split_heads(t, self.num_heads) for t in self.qkv(x).chunk(3, dim=-1))  # (B, H, S, Dh)
        if self.positions == "rotary":  # the new tokens follow the cached ones
            start = 0 if cache is None else cache.length
            q, k = rotary(q, start), rotary(k, start)
        if cache is not None:
            return self.proj(_merge_heads(self._cached(q, k, v, key_mask, cache)))  # (B, S, D)
        if key_mask is None:
            out = attend(q, k, v, is_causal=self.causal)  # (B, H, S, Dh)
        else:
            out = attend(q, k, v, attn_mask=self._mask(key_mask, x.shape[1]))
        return self.proj(_merge_heads(out))  # (B, S, D)

    def channels_first(self, cf: ChannelsFirst) -> Attention:
        """Head by head on (B, D, 1, S), q, k, v from the rows of ``qkv`` (the causal mask is the stack's)."""
        rope = None
        if self.positions == "rotary":  # positions 0 .. L - 1 of the longest window the network takes
            if cf.max_positions is None:
                raise cf.error(
                    f"layout 'ane': rotary positions (at {cf.where(self)}) need the network's seq_len (the longest "
                    f"window) for their tables; {type(cf.root).__name__} has none: export with layout 'default'"
                )
            rope = rotary_angles(0, cf.max_positions, self.proj.out_features // self.num_heads)
        return cf.attention(self.qkv, self.qkv, self.qkv, self.proj, self.num_heads, self.proj.out_features, rope)

    def _cached(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None, cache: KVCache
    ) -> torch.Tensor:
        """Attention of the new queries (B, H, S, Dh) over the cached and new keys -> (B, H, S, Dh)."""
        if not self.causal or key_mask is not None:
            raise ValueError("SelfAttention: a KVCache serves causal attention without a key mask only")
        past, s = cache.length, q.shape[2]
        k, v = cache.update(k, v)  # (B, H, L + S, Dh)
        if past == 0:
            return attend(q, k, v, is_causal=True)
        if s == 1:  # the one new token sees every cached one
            return attend(q, k, v)
        # query i (absolute position past + i) sees keys 0 .. past + i
        mask = torch.ones(s, past + s, dtype=torch.bool, device=q.device).tril(diagonal=past)
        return attend(q, k, v, attn_mask=mask)

    def _mask(self, key_mask: torch.Tensor, s: int) -> torch.Tensor:
        """(B, S) key mask -> (B, 1, S, S) bool attention mask (causal if asked)."""
        mask = key_mask[:, None, None, :].expand(-1, 1, s, s)
        if self.causal:
            mask = mask & torch.ones(s, s, dtype=torch.bool, device=key_mask.device).tril()
        # Every query may see itself, so a padded token's row is never empty (no NaN).
        return mask | torch.eye(s, dtype=torch.bool, device=key_mask.device)


class CrossAttention(nn.Module):
    """Queries from the sequence, keys and values from conditioning tokens.

    The output projection starts at zero, so a residual cross-attention branch adds
    nothing at init.

    Args:
        dim: D of the queries and output. context_dim: width of the tokens. num_heads: H.
    """

    def __init__(self, dim: int, context_dim: int, num_heads: int) -> None:
        super().__init__()
        check_heads(dim, num_heads, "CrossAttention")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, S, D); context: (B, M, Dc); mask: (B, M) bool, True = real token -> (B, S, D)."""
        q = _split_heads(self.q(x), self.num_heads)  # (B, H, S, Dh)
        k, v = (_split_heads(t, self.num_heads) for t in self.kv(context).chunk(2, dim=-1))  # (B, H, M, Dh)
        attn_mask = None if mask is None else mask[:, None, None, :]  # (B, 1, 1, M)
        out = attend(q, k, v, attn_mask=attn_mask)  # (B, H, S, Dh)
        return self.proj(_merge_heads(out))  # (B, S, D)

    def channels_first(self, cf: ChannelsFirst) -> Attention:
        """Head by head: queries (B, D, 1, S), keys and values from tokens (B, Dc, 1, M)."""
        return cf.attention(self.q, self.kv, self.kv, self.proj, self.num_heads, self.q.out_features)
