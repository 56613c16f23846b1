"""The transformer's feed-forward branch."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MLP"]


class MLP(nn.Module):
    """Linear -> GELU (tanh approximation, as DiT) -> Linear.

    Args:
        dim: D in and out. hidden_dim: width of the hidden layer.
    """

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        if hidden_dim <= 0:
            raise ValueError(f"MLP: hidden_dim must be positive, got {hidden_dim!r}")
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, D) -> (B, N, D)."""
        return self.fc2(self.act(self.fc1(x)))
