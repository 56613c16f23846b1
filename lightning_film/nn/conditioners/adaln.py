"""Adaptive LayerNorm modulation as in DiT (Peebles & Xie, 2023).

One projection of SiLU(c), chunked into shift and scale: h * (1 + scale) + shift.
``adaln_zero`` also gates each residual branch with a gate that is exactly zero at init
(DiT's choice; not x-transformers' sigmoid with bias -2), so every block starts as the
identity. At the final site there is no branch to gate, so ``adaln_zero`` is ``adaln``
there, as in DiT's final layer.
"""

from __future__ import annotations

import torch

from lightning_film.nn.channels_first import Affine, ChannelsFirst
from lightning_film.nn.conditioners.base import ProjectedConditioner
from lightning_film.nn.conditioners.fast import modulate_affine
from lightning_film.nn.conditioning import Conditioning
from lightning_film.registry import register_conditioner

__all__ = ["AdaLN", "AdaLNZero"]


@register_conditioner("adaln")
class AdaLN(ProjectedConditioner):
    """AdaLN: one projection chunked into scale and shift, h * (1 + scale) + shift."""

    pre_activation = True
    batched_projections = ("modulation",)

    def build(self) -> None:
        self.modulation = self.project(2 * self.dim)

    def modulate(self, h: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        (m,) = self.projected(h, cond, "modulation")  # (B, 1 | N, 2 D)
        shift, scale = m.chunk(2, dim=-1)  # (B, 1 | N, D) each
        gamma = 1.0 + scale
        self.observe(gamma=gamma, beta=shift)
        return modulate_affine(h, gamma, shift)  # (B, N, D)

    def channels_first(self, cf: ChannelsFirst) -> Affine:
        """shift, scale = modulation(c) (and y * gate_proj(c) where there is one) on (B, D, 1, S)."""
        gate = getattr(self, "gate_proj", None)
        projections = [cf.convert(self.modulation)] + ([] if gate is None else [cf.convert(gate)])
        return Affine(self.dim, projections, shift=0, scale=1, gate=None if gate is None else 2)


@register_conditioner("adaln_zero")
class AdaLNZero(AdaLN):
    """AdaLN-Zero: AdaLN plus a per-branch gate that is exactly zero at init (DiT)."""

    # Its gate starts at zero, not one: the conditioner is not the identity at init, but
    # every block is (each branch adds zero), which the grid test checks instead.
    identity_at_init = False
    batched_projections = ("modulation", "gate_proj")

    def build(self) -> None:
        super().build()
        # A separate gate projection equals DiT's third chunk (the map is linear in SiLU(c))
        # and keeps the hooks stateless; the final site has no branch, hence no gate.
        # The gate is zero at init whatever zero_init says: that is what "-Zero" means.
        self.gate_proj = self.project(self.dim, zero_init=True) if self.site != "final" else None

    def gate(self, y: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        if self.gate_proj is None:
            return y
        (g,) = self.projected(y, cond, "gate_proj")  # (B, 1 | N, D)
        self.observe(gate=g)
        return modulate_affine(y, g)  # (B, N, D)

    channels_first = AdaLN.channels_first  # reads gate_proj too
