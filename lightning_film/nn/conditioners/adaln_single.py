"""adaLN-single (PixArt-alpha, Chen et al. 2023): one modulation projection per stack.

DiT's adaLN projects the conditioning in every block (6 D outputs per block). adaLN-single
projects it once per stack, in the final-site conditioner's ``prepare``, to six chunks (shift,
scale, gate for attention and for the MLP) that every block reads, and each site adds a small
table of its own: shift, scale, gate = shared chunk + table row. Unlike PixArt (random
table), the projection and the tables start at zero, so every gate is zero and every block
starts as the identity, as with ``adaln_zero``. The final layer reads the shared attention
shift and scale plus its own table (PixArt adds the time embedding itself there, which
needs Dc = D).

Legend: B batch, N tokens, D width, Dc conditioning width.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from lightning_film.nn.channels_first import Affine, ChannelsFirst
from lightning_film.nn.conditioners.base import Conditioner, Site, projection
from lightning_film.nn.conditioners.fast import modulate_affine
from lightning_film.nn.conditioning import Conditioning
from lightning_film.registry import register_conditioner

__all__ = ["AdaLNSingle"]

#: the name under which the stack's projection travels in ``Conditioning.shared``
SHARED = "adaln_single"


@register_conditioner("adaln_single")
class AdaLNSingle(Conditioner):
    """adaLN-single: the stack's one projection of SiLU(c) (B, 1 | N, 6 D) plus this site's table.

    The final-site instance owns the projection (built once per stack); the block sites own
    only their table (3, D): shift, scale, gate. Outside a stack (an embedding's ``final``
    conditioner) the final site projects for itself.
    """

    # every gate starts at zero: the blocks are the identity at init, this conditioner is not
    identity_at_init = False

    def __init__(self, dim: int, cond_dim: int, site: Site = "attn") -> None:
        super().__init__(dim, cond_dim, site)
        self.table = nn.Parameter(torch.zeros(2 if site == "final" else 3, dim))  # (rows, D)
        self.modulation = projection(cond_dim, 6 * dim, pre_activation=True) if site == "final" else None
        self.first = 3 if site == "mlp" else 0  # this site's first chunk of the six

    def prepare(self, x: torch.Tensor, cond: Conditioning) -> Conditioning:
        shared = self.modulation(self.signal(x, cond))  # (B, 1 | N, 6 D), once for every site
        return replace(cond, shared={**cond.shared, SHARED: shared})

    def _chunks(self, h: torch.Tensor, cond: Conditioning, rows: int) -> list[torch.Tensor]:
        """This site's first ``rows`` chunks, each (B, 1 | N, D), table rows added."""
        shared = cond.shared.get(SHARED) if isinstance(cond, Conditioning) else None
        if shared is None:
            if self.modulation is None:
                raise ValueError(
                    f"adaln_single at site {self.site!r} reads the modulation its stack projects once (the "
                    f"final-site conditioner's prepare); use it as a Transformer's conditioner"
                )
            shared = self.modulation(self.signal(h, cond))
        if shared.shape[-1] != 6 * self.dim:
            raise ValueError(
                f"adaln_single: the stack's modulation has width {shared.shape[-1]}, expected {6 * self.dim}"
            )
        d, first = self.dim, self.first
        return [shared[..., (first + i) * d : (first + i + 1) * d] + self.table[i] for i in range(rows)]

    def modulate(self, h: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        shift, scale = self._chunks(h, cond, 2)  # (B, 1 | N, D) each
        gamma = 1.0 + scale
        self.observe(gamma=gamma, beta=shift)
        return modulate_affine(h, gamma, shift)  # (B, N, D)

    def gate(self, y: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        if self.site == "final":
            return y
        g = self._chunks(y, cond, 3)[2]  # (B, 1 | N, D)
        self.observe(gate=g)
        return modulate_affine(y, g)  # (B, N, D)

    def channels_first(self, cf: ChannelsFirst) -> Affine:
        """The chunks of the shared modulation (B, 6 D, 1, 1 | S) plus this site's table, on (B, D, 1, S);
        the final site's ``prepare`` publishes the modulation."""
        share = None if self.modulation is None else cf.convert(self.modulation)
        gate = None if self.site == "final" else self.first + 2
        return Affine(
            self.dim,
            [],
            shift=self.first,
            scale=self.first + 1,
            gate=gate,
            shared=SHARED,
            share=share,
            table=self.table,
        )
