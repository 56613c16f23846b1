"""FiLM (Perez et al., 2018) and its variants: y = gamma(c) * h + beta(c).

Gamma and beta come from separate projections (the seed design), each a Linear or,
with ``hidden_dim``, a small MLP. The variants differ only in how the raw scale
output s(c) becomes gamma, and each starts at gamma = 1, beta = 0 (zeroed last layers):

- ``film``:      gamma = 1 + s(c)
- ``film_exp``:  gamma = exp(s(c))               (always positive)
- ``film_tanh``: gamma = 1 + bound * tanh(s(c))  (bounded: friendly to int4/int8)
- ``gate``:      gamma = 2 * sigmoid(s(c)), no beta  (a gate in (0, 2))
"""

from __future__ import annotations

import torch

from lightning_film.nn.channels_first import Affine, ChannelsFirst
from lightning_film.nn.conditioners.base import ProjectedConditioner, Site
from lightning_film.nn.conditioners.fast import modulate_affine
from lightning_film.nn.conditioning import Conditioning
from lightning_film.registry import register_conditioner

__all__ = ["FiLM", "FiLMExp", "FiLMTanh", "Gate"]


@register_conditioner("film")
class FiLM(ProjectedConditioner):
    """FiLM: separate gamma/beta projections, gamma = 1 + dgamma(c), identity at init."""

    has_shift = True
    batched_projections = ("scale", "shift")

    def build(self) -> None:
        self.scale = self.project(self.dim)
        self.shift = self.project(self.dim) if self.has_shift else None

    def gamma(self, s: torch.Tensor) -> torch.Tensor:
        """Raw scale output s (B, 1 | N, D) -> gamma, 1 where s = 0."""
        return 1.0 + s

    def modulate(self, h: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        if self.shift is None:
            (s,) = self.projected(h, cond, "scale")  # (B, 1 | N, D)
            gamma = self.gamma(s)
            self.observe(gamma=gamma)
            return modulate_affine(h, gamma)  # (B, N, D)
        s, beta = self.projected(h, cond, "scale", "shift")  # (B, 1 | N, D) each
        gamma = self.gamma(s)
        self.observe(gamma=gamma, beta=beta)
        return modulate_affine(h, gamma, beta)  # (B, N, D)

    def channels_first(self, cf: ChannelsFirst) -> Affine:
        """h * self.gamma(scale(c)) [+ shift(c)] on (B, D, 1, S): subclasses that change only ``gamma`` keep it."""
        shift = [] if self.shift is None else [cf.convert(self.shift)]
        return Affine(self.dim, [cf.convert(self.scale), *shift], shift=1 if shift else None, scale=0, gamma=self.gamma)


@register_conditioner("film_exp")
class FiLMExp(FiLM):
    """FiLM with gamma = exp(s(c)): a positive scale, identity at init."""

    def gamma(self, s: torch.Tensor) -> torch.Tensor:
        return torch.exp(s)


@register_conditioner("film_tanh")
class FiLMTanh(FiLM):
    """FiLM with gamma = 1 + bound * tanh(s(c)): bounded scale for low-bit quantization."""

    def __init__(
        self,
        dim: int,
        cond_dim: int,
        site: Site = "attn",
        hidden_dim: int | None = None,
        zero_init: bool = True,
        bound: float = 0.5,
    ) -> None:
        if not bound > 0:
            raise ValueError(f"film_tanh: bound must be > 0, got {bound!r}")
        self.bound = float(bound)
        super().__init__(dim, cond_dim, site, hidden_dim, zero_init)

    def gamma(self, s: torch.Tensor) -> torch.Tensor:
        return 1.0 + self.bound * torch.tanh(s)


@register_conditioner("gate")
class Gate(FiLM):
    """Sigmoid gate without shift: h * 2 sigmoid(s(c)), so the gate starts at exactly 1."""

    has_shift = False

    def gamma(self, s: torch.Tensor) -> torch.Tensor:
        return 2.0 * torch.sigmoid(s)
