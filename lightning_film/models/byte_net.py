"""``ByteNet``: the byte model's network, a causal transformer over nibble/acc-modulated bytes.

    x = DualModulatedEmbedding(bytes, nibbles, acc) + pos      # (B, N, D)
    h = Transformer(x, Conditioning(per_token=c))              # (B, N, D), causal
    logits = head(h)                                           # (B, N, V)

c is the embedding's per-token nibble/acc signal when ``block_conditioner`` conditions the blocks,
else nothing. The network knows nothing of the data, the loss or sampling: training and sampling
(:class:`~lightning_film.models.ByteLM`), export and quantization all take this one module.
With a key/value cache (:meth:`ByteNet.new_cache`) the N bytes follow the cached ones, positions
continuing from there.

Legend: B batch, N bytes (N <= ``seq_len``), D width (``dim``), Dc conditioning width,
V = 256 byte values.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from lightning_film.errors import check_ints
from lightning_film.nn import Conditioning, Transformer
from lightning_film.nn.conditioners.simple import conditions_nothing
from lightning_film.nn.conditioning import Combine
from lightning_film.nn.embedding import EMBED_STD, DualModulatedEmbedding, Variant, check_modulating
from lightning_film.nn.mlp import Activation
from lightning_film.nn.transformer import TransformerCache
from lightning_film.registry import Spec

__all__ = ["ID_LIMITS", "NET_MODULES", "ByteNet"]

#: each id input of the network -> its number of ids (valid ids are 0 .. limit - 1)
ID_LIMITS = {"byte_ids": 256, "nibble_ids": 16, "acc_ids": 256}

#: weight inits by name: (D, depth) -> normal stds of (most weights, attention output, MLP output)
#: nanoGPT's (GPT-2's), and litgpt's pretraining one (GPT-NeoX's small init, attention output 1 / (sqrt(D) depth))
INITS = {
    "gpt2": lambda dim, depth: (0.02, 0.02 / math.sqrt(2 * depth), 0.02 / math.sqrt(2 * depth)),
    "neox": lambda dim, depth: (math.sqrt(2 / (5 * dim)), 1 / math.sqrt(dim) / depth, math.sqrt(2 / (5 * dim))),
}

#: the network's own modules, whose keys had no ``net.`` prefix before the network was split out of ByteLM
NET_MODULES = ("embed", "pos", "transformer", "head")


class ByteNet(nn.Module):
    """Causal byte transformer with a nibble/acc-modulated byte embedding (see the module docstring).

    Args:
        dim, depth, num_heads, mlp_ratio, normalizer: the transformer (D, blocks, heads dividing D).
        activation: the MLPs' GELU, ``"gelu"`` (exact) or ``"gelu_tanh"`` (DiT's approximation).
        seq_len: the context: the longest window (learned positions cover it).
        variant: ``"byte"``, ``"nibble"`` or ``"nibble_acc"`` (:mod:`lightning_film.nn.embedding`).
        embed_conditioner: the modulating conditioner of the embedding.
        block_conditioner: ``"none"`` (unconditioned blocks), or a modulating conditioner through
            which the embedding's per-token signal also conditions every block.
        combine: nibble and acc signals ``"concat"`` or ``"sum"``. nibble_dim, acc_dim: d4, da.
        positions: ``"learned"`` absolute positions, ``"rotary"`` (RoPE in every attention), or ``"none"``.
        tie_embeddings: the head reuses the byte embedding's weights.
        init: ``"torch"`` (PyTorch's layer defaults), ``"gpt2"`` (nanoGPT's: weights N(0, 0.02), residual
            output projections N(0, 0.02 / sqrt(2 depth))) or ``"neox"`` (litgpt's pretraining init:
            N(0, sqrt(2 / 5D)), attention output N(0, 1 / (sqrt(D) depth))); biases start at zero but
            with ``"torch"``; conditioners keep their own identity init.
    """

    def __init__(
        self,
        dim: int = 256,
        depth: int = 4,
        num_heads: int = 4,
        seq_len: int = 256,
        mlp_ratio: float = 4.0,
        normalizer: Spec = "rmsnorm",
        activation: Activation = "gelu",
        variant: Variant = "nibble_acc",
        embed_conditioner: Spec = "film",
        block_conditioner: Spec = "none",
        combine: Combine = "concat",
        nibble_dim: int = 32,
        acc_dim: int = 16,
        positions: Literal["learned", "rotary", "none"] = "learned",
        tie_embeddings: bool = False,
        init: Literal["torch", "gpt2", "neox"] = "torch",
    ) -> None:
        # what it was built with, the way LightningModules store it in checkpoints (``hparams.net``)
        config = {name: value for name, value in locals().items() if name not in ("self", "__class__")}
        super().__init__()
        #: the constructor's arguments, plain values: ``ByteNet(**net.config)`` builds it again
        self.config = config
        check_ints("ByteLM", seq_len=(seq_len, 1))
        if init not in ("torch", *INITS):
            raise ValueError(f"ByteLM: unknown init {init!r}; accepted: 'torch', 'gpt2', 'neox'")
        if positions not in ("learned", "rotary", "none"):
            raise ValueError(f"ByteLM: unknown positions {positions!r}; accepted: 'learned', 'rotary', 'none'")
        self.seq_len = seq_len
        self.embed = DualModulatedEmbedding(dim, variant, nibble_dim, acc_dim, embed_conditioner, combine)
        self.pos = nn.Parameter(EMBED_STD * torch.randn(1, seq_len, dim)) if positions == "learned" else None
        #: whether the blocks read the embedding's signal (any block conditioner but ``none``)
        self.blocks_conditioned = not conditions_nothing(block_conditioner)
        if self.blocks_conditioned and self.embed.cond_dim == 0:
            raise ValueError(
                f"ByteLM: block_conditioner={block_conditioner!r} conditions the blocks on the nibble/acc "
                f"signal, which variant 'byte' does not have; use variant 'nibble' or 'nibble_acc', or "
                f"block_conditioner 'none'"
            )
        self.transformer = Transformer(
            dim,
            depth,
            num_heads,
            cond_dim=max(1, self.embed.cond_dim),
            mlp_ratio=mlp_ratio,
            normalizer=normalizer,
            conditioner=block_conditioner,
            causal=True,
            activation=activation,
            positions="rotary" if positions == "rotary" else "none",
        )
        if self.blocks_conditioned:
            check_modulating(self.transformer.final_cond, block_conditioner, "ByteLM: block_conditioner")
        self.head = nn.Linear(dim, 256, bias=not tie_embeddings)
        if tie_embeddings:
            self.head.weight = self.embed.byte.weight
        if init != "torch":
            self._init_normal(*INITS[init](dim, depth))

    @torch.no_grad()
    def _init_normal(self, std: float, attn_out_std: float, mlp_out_std: float) -> None:
        # the byte embedding, the attention and MLP layers and the head; not the norms, nor the
        # conditioners, whose zero-initialised projections make them the identity at init
        layers = [(self.embed.byte, std), (self.head, std)]
        for block in self.transformer.blocks:
            layers += [(block.attn.qkv, std), (block.attn.proj, attn_out_std)]
            layers += [(block.mlp.fc1, std), (block.mlp.fc2, mlp_out_std)]
        for layer, layer_std in layers:
            nn.init.normal_(layer.weight, std=layer_std)
            if getattr(layer, "bias", None) is not None:
                nn.init.zeros_(layer.bias)

    @property
    def input_names(self) -> list[str]:
        """The id inputs this network reads, in :meth:`forward`'s order (the variant decides)."""
        return list(ID_LIMITS)[: 1 + (self.embed.nibble is not None) + (self.embed.acc is not None)]

    def forward(
        self,
        byte_ids: Tensor,
        nibble_ids: Tensor | None = None,
        acc_ids: Tensor | None = None,
        cache: TransformerCache | None = None,
    ) -> Tensor:
        """byte_ids, nibble_ids, acc_ids: (B, N <= seq_len) long -> (B, N, V) next-byte logits.

        ``cache`` (from :meth:`new_cache`): the N bytes follow the ``cache.length`` bytes already
        fed (positions continue from there; L + N <= seq_len), and join the cache.
        """
        n = byte_ids.shape[-1]
        past = 0 if cache is None else cache.length
        if byte_ids.dim() != 2 or past + n > self.seq_len:
            raise ValueError(
                f"ByteLM expects byte_ids (B, N) with N <= seq_len={self.seq_len}"
                + (f" - {past} cached bytes" if past else "")
                + f", got {tuple(byte_ids.shape)}"
            )
        x = self.embed(byte_ids, nibble_ids, acc_ids)  # (B, N, D)
        if self.pos is not None:
            x = x + self.pos[:, past : past + n]  # (B, N, D)
        signal = self.embed.signal(nibble_ids, acc_ids) if self.blocks_conditioned else None  # (B, N, Dc) | None
        h = self.transformer(x, Conditioning(per_token=signal), cache=cache)  # (B, N, D)
        return self.head(h)  # (B, N, V)

    def new_cache(self) -> TransformerCache:
        """An empty key/value cache for :meth:`forward`, holding up to ``seq_len`` bytes."""
        return self.transformer.new_cache(self.seq_len)
