"""The dual-modulated byte embedding of the byte model (seeds 000 and 001).

A byte embedding E8 (256 x D) is modulated, per token, by a conditioning signal made of a
nibble embedding E4 (16 x d4) and, for ``nibble_acc``, an accumulator embedding Ea (256 x da):

    c = combine(E4[nibble], Ea[acc])          # (B, N, Dc): "concat" (Dc = d4 + da) or "sum" (d4 = da)
    x = conditioner.modulate(E8[byte], c)     # FiLM by default: gamma(c) * E8[byte] + beta(c)

Any registered conditioner that *modulates* (reads the vector / per-token signal) fits; the ones
that read conditioning tokens (``concat``, ``cross_attention``) make no sense for one token at a
time and are refused at build time, as is ``none`` (it would leave the nibble path unused: that
is the ``byte`` variant). The conditioner is built at the ``final`` site: an embedding has no
residual branch to gate, so ``adaln_zero`` is ``adaln`` here, as at a transformer's final layer,
and every accepted conditioner is the identity at init, so ``nibble`` and ``nibble_acc`` start
exactly as ``byte`` with the same byte weights.

Legend: B batch, N tokens, D width (``dim``), d4 nibble width, da accumulator width,
Dc conditioning width (``cond_dim``).
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import nn

from lightning_film.nn.conditioners.base import Conditioner
from lightning_film.nn.conditioners.simple import NoConditioning
from lightning_film.nn.conditioning import Combine, Conditioning, combine_signals, combined_dim
from lightning_film.registry import CONDITIONERS, Spec, build_conditioner

__all__ = ["VARIANTS", "DualModulatedEmbedding", "Variant", "check_modulating", "modulating_conditioners"]

Variant = Literal["byte", "nibble", "nibble_acc"]
VARIANTS: tuple[str, ...] = get_args(Variant)
#: GPT-2's embedding std; also what keeps a tied head's logits small at init.
EMBED_STD = 0.02


def modulating_conditioners() -> list[str]:
    """Registered conditioners that modulate per token (not ``none``, not token readers)."""
    names = []
    for name in CONDITIONERS.names():
        factory = CONDITIONERS.get(name)
        if isinstance(factory, type) and (
            getattr(factory, "reads_tokens", False) or issubclass(factory, NoConditioning)
        ):
            continue
        names.append(name)
    return names


def check_modulating(conditioner: Conditioner, spec: Spec, what: str) -> None:
    """Raise a clear error unless ``conditioner`` (built from ``spec``) modulates per token."""
    if not isinstance(conditioner, Conditioner):
        raise TypeError(f"{what} {spec!r} built a {type(conditioner).__name__}, not a lightning_film Conditioner")
    if conditioner.reads_tokens or isinstance(conditioner, NoConditioning):
        why = (
            "reads conditioning tokens, which make no sense per token"
            if conditioner.reads_tokens
            else ("ignores the conditioning (for no modulation use variant='byte')")
        )
        raise ValueError(
            f"{what} {spec!r} {why}; accepted modulating conditioners: {', '.join(modulating_conditioners())}"
        )


class DualModulatedEmbedding(nn.Module):
    """Byte embedding modulated per token by nibble (and accumulator) embeddings.

    Args:
        dim: D, the width of the byte embedding (the transformer's width).
        variant: ``"byte"`` (plain byte embedding, the baseline), ``"nibble"`` (modulated by the
            nibble embedding) or ``"nibble_acc"`` (by the nibble and the accumulator embeddings).
        nibble_dim: d4, width of the nibble embedding (16 ids).
        acc_dim: da, width of the accumulator embedding (256 ids); ``nibble_acc`` only.
        conditioner: a registered modulating conditioner (name, path or ``{"name": ..., **options}``).
        combine: how the nibble and accumulator signals become one: ``"concat"`` (Dc = d4 + da) or
            ``"sum"`` (needs d4 = da; Dc = d4).
    """

    def __init__(
        self,
        dim: int,
        variant: Variant = "nibble_acc",
        nibble_dim: int = 32,
        acc_dim: int = 16,
        conditioner: Spec = "film",
        combine: Combine = "concat",
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"DualModulatedEmbedding: unknown variant {variant!r}; accepted: {', '.join(VARIANTS)}")
        if combine not in get_args(Combine):
            raise ValueError(f"DualModulatedEmbedding: unknown combine {combine!r}; accepted: 'sum', 'concat'")
        for name, value in (("dim", dim), ("nibble_dim", nibble_dim), ("acc_dim", acc_dim)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"DualModulatedEmbedding: {name} must be a positive int, got {value!r}")
        if variant == "nibble_acc" and combine == "sum" and nibble_dim != acc_dim:
            raise ValueError(
                f"DualModulatedEmbedding: combine='sum' adds the nibble and accumulator signals, so nibble_dim "
                f"({nibble_dim}) must equal acc_dim ({acc_dim}); use combine='concat'"
            )
        self.dim, self.variant, self.combine = dim, variant, combine
        self.byte = nn.Embedding(256, dim)
        nn.init.normal_(self.byte.weight, std=EMBED_STD)
        self.nibble = nn.Embedding(16, nibble_dim) if variant != "byte" else None
        self.acc = nn.Embedding(256, acc_dim) if variant == "nibble_acc" else None
        widths = [e.embedding_dim for e in (self.nibble, self.acc) if e is not None]
        #: Dc, the width of :meth:`signal` (0 for ``byte``: there is no signal).
        self.cond_dim = combined_dim(widths, combine) if widths else 0
        self.conditioner: Conditioner | None = None
        if widths:
            for emb in (self.nibble, self.acc):
                if emb is not None:
                    nn.init.normal_(emb.weight, std=EMBED_STD)
            self.conditioner = build_conditioner(conditioner, dim, self.cond_dim, site="final")
            check_modulating(self.conditioner, conditioner, "DualModulatedEmbedding: conditioner")

    def signal(self, nibble_ids: torch.Tensor | None, acc_ids: torch.Tensor | None = None) -> torch.Tensor | None:
        """The per-token conditioning (B, N, Dc) from nibbles (B, N) and acc (B, N); ``None`` for ``byte``."""
        if self.nibble is None:
            return None
        self._check_ids("nibble_ids", nibble_ids, 16)
        signals = [self.nibble(nibble_ids)]  # [(B, N, d4)]
        if self.acc is not None:
            self._check_ids("acc_ids", acc_ids, 256)
            if acc_ids.shape != nibble_ids.shape:
                raise ValueError(
                    f"DualModulatedEmbedding: acc_ids {tuple(acc_ids.shape)} and nibble_ids "
                    f"{tuple(nibble_ids.shape)} must have the same shape (B, N)"
                )
            signals.append(self.acc(acc_ids))  # [(B, N, d4), (B, N, da)]
        return combine_signals(signals, self.combine)  # (B, N, Dc)

    def forward(
        self, byte_ids: torch.Tensor, nibble_ids: torch.Tensor | None = None, acc_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """byte_ids, nibble_ids, acc_ids: (B, N) long -> (B, N, D) embeddings."""
        self._check_ids("byte_ids", byte_ids, 256)
        x = self.byte(byte_ids)  # (B, N, D)
        c = self.signal(nibble_ids, acc_ids)  # (B, N, Dc) | None
        if c is None:
            return x
        if c.shape[:2] != x.shape[:2]:
            raise ValueError(
                f"DualModulatedEmbedding: nibble/acc ids of shape {tuple(c.shape[:2])} do not match "
                f"byte_ids {tuple(byte_ids.shape)}"
            )
        if self.conditioner.ablated:
            return x
        return self.conditioner.modulate(x, Conditioning(per_token=c))  # (B, N, D)

    def _check_ids(self, name: str, ids: torch.Tensor | None, vocab: int) -> None:
        if ids is None:
            needs = "nibble_ids" if name == "nibble_ids" else "nibble_ids and acc_ids"
            raise ValueError(
                f"DualModulatedEmbedding(variant={self.variant!r}) needs {needs} (B, N); got {name}=None "
                f"(variant 'byte' needs byte_ids only, 'nibble' nibble_ids too, 'nibble_acc' acc_ids too)"
            )
        if (
            not isinstance(ids, torch.Tensor)
            or ids.dim() != 2
            or ids.dtype.is_floating_point
            or ids.dtype == torch.bool
        ):
            shape = tuple(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__
            raise ValueError(f"DualModulatedEmbedding: {name} must be an integer tensor (B, N), got {shape}")
        # The value check reads the data, which a graph capture (torch.export for Core ML, torch.compile)
        # cannot do; the checks of shape and dtype above still run there.
        if torch.compiler.is_compiling() or torch.compiler.is_exporting():
            return
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
            raise ValueError(
                f"DualModulatedEmbedding: {name} must hold ids 0..{vocab - 1}, "
                f"got values in [{int(ids.min())}, {int(ids.max())}]"
            )

    def extra_repr(self) -> str:
        return f"dim={self.dim}, variant={self.variant!r}, cond_dim={self.cond_dim}, combine={self.combine!r}"
