"""Normalizers over the last dimension. They never see the conditioning.

Every factory has the same shape: ``f(dim, eps=..., affine=True, **own_options)``,
input and output ``(..., dim)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lightning_film.registry import register_normalizer

__all__ = ["LayerNorm", "RMSNorm", "DyT", "Identity"]


def _check_dim(dim: int, who: str) -> None:
    if not isinstance(dim, int) or dim <= 0:
        raise ValueError(f"{who}: dim must be a positive int, got {dim!r}")


@register_normalizer("layernorm")
class LayerNorm(nn.LayerNorm):
    """LayerNorm: subtract the mean, divide by the std, then an optional affine."""

    def __init__(self, dim: int, eps: float = 1e-6, affine: bool = True) -> None:
        _check_dim(dim, "layernorm")
        super().__init__(dim, eps=eps, elementwise_affine=affine)


@register_normalizer("rmsnorm")
class RMSNorm(nn.Module):
    """RMSNorm: divide by the root mean square (no centring), then an optional scale."""

    def __init__(self, dim: int, eps: float = 1e-6, affine: bool = True) -> None:
        super().__init__()
        _check_dim(dim, "rmsnorm")
        self.dim, self.eps = dim, eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., D) -> (..., D)."""
        return F.rms_norm(x, (self.dim,), self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}, affine={self.weight is not None}"


@register_normalizer("dyt")
class DyT(nn.Module):
    """Dynamic Tanh (Zhu et al., 2025): weight * tanh(alpha * x) + bias, no statistics."""

    def __init__(self, dim: int, eps: float = 0.0, affine: bool = True, alpha_init: float = 0.5) -> None:
        super().__init__()
        _check_dim(dim, "dyt")
        if alpha_init <= 0:
            raise ValueError(f"dyt: alpha_init must be > 0, got {alpha_init!r}")
        # eps is accepted so every normalizer shares one constructor shape; tanh needs none.
        self.dim = dim
        self.alpha = nn.Parameter(torch.full((1,), float(alpha_init)))
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None
        self.bias = nn.Parameter(torch.zeros(dim)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., D) -> (..., D)."""
        y = torch.tanh(self.alpha * x)
        if self.weight is not None:
            y = torch.addcmul(self.bias, y, self.weight)
        return y

    def extra_repr(self) -> str:
        return f"{self.dim}, affine={self.weight is not None}"


@register_normalizer("identity")
class Identity(nn.Module):
    """No normalization (a baseline for the normalizer grid)."""

    def __init__(self, dim: int, eps: float = 0.0, affine: bool = False) -> None:
        super().__init__()
        _check_dim(dim, "identity")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x
