"""The transformer's feed-forward branch."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from lightning_film.nn.channels_first import ChannelsFirst

__all__ = ["ACTIVATIONS", "MLP", "Activation", "gelu_tanh", "set_activation"]

# GELU's tanh approximation rewritten with sigmoid: 0.5 (1 + tanh(z)) = sigmoid(2 z), so
# gelu(x) = x sigmoid(x (K0 + K1 x^2)) with z = sqrt(2 / pi) (x + 0.044715 x^3).
_K0 = 2.0 * math.sqrt(2.0 / math.pi)
_K1 = _K0 * 0.044715


class _GeluTanhFunction(torch.autograd.Function):
    """GELU (tanh approximation) in a few vectorised passes, with a hand-derived backward.

    On this CPU build ``torch.tanh`` (hence ``F.gelu(approximate="tanh")`` and its backward) is
    not vectorised, while ``sigmoid`` is; the same function through sigmoid takes four passes
    forward and five backward.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        s = torch.addcmul(x.new_full((), _K0), x, x, value=_K1).mul_(x).sigmoid_()  # sigmoid(2 z)
        ctx.save_for_backward(x, s)
        return x * s

    @staticmethod
    def backward(ctx, dy: torch.Tensor) -> torch.Tensor:
        x, s = ctx.saved_tensors
        # d/dx [x s(v)] = s + x v'(x) s (1 - s), v = K0 x + K1 x^3
        dv = torch.addcmul(x.new_full((), _K0), x, x, value=3.0 * _K1).mul_(x)  # x v'(x)
        return torch.ops.aten.sigmoid_backward(dy, s).mul_(dv).addcmul_(dy, s)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """``F.gelu(x, approximate="tanh")``, through the sigmoid form on the CPU in eager mode."""
    if (
        x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
        and not torch.compiler.is_compiling()
        and not torch.compiler.is_exporting()
        and not torch.jit.is_tracing()
    ):
        if torch.is_grad_enabled() and x.requires_grad:
            return _GeluTanhFunction.apply(x)
        return x * torch.addcmul(x.new_full((), _K0), x, x, value=_K1).mul_(x).sigmoid_()
    return F.gelu(x, approximate="tanh")


class _GeluTanh(nn.GELU):
    """``nn.GELU(approximate="tanh")`` (same repr and state) computed by :func:`gelu_tanh`."""

    def __init__(self) -> None:
        super().__init__(approximate="tanh")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gelu_tanh(x)


#: MLP activations by name: the exact (erf) GELU (the default: PyTorch's and x-transformers'), and
#: DiT's tanh approximation, which costs 5-12% of a training step more on this CPU (benchmarks/results/performance-step)
ACTIVATIONS = {"gelu": nn.GELU, "gelu_tanh": _GeluTanh}
Activation = Literal["gelu", "gelu_tanh"]


class MLP(nn.Module):
    """Linear -> GELU -> Linear.

    Args:
        dim: D in and out. hidden_dim: width of the hidden layer.
        activation: ``"gelu"`` (exact, erf; the default) or ``"gelu_tanh"`` (DiT's tanh approximation).
    """

    def __init__(self, dim: int, hidden_dim: int, activation: Activation = "gelu") -> None:
        super().__init__()
        if hidden_dim <= 0:
            raise ValueError(f"MLP: hidden_dim must be positive, got {hidden_dim!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"MLP: unknown activation {activation!r}; accepted: {', '.join(ACTIVATIONS)}")
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = ACTIVATIONS[activation]()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, D) -> (B, N, D)."""
        return self.fc2(self.act(self.fc1(x)))

    def channels_first(self, cf: ChannelsFirst) -> nn.Module:
        """1x1 conv -> GELU -> 1x1 conv on (B, D, 1, S)."""
        if not isinstance(self.act, nn.GELU):
            raise cf.error(
                f"layout 'ane': MLP activation {type(self.act).__name__} (at {cf.where(self)}) is not a GELU"
            )
        return nn.Sequential(cf.conv(self.fc1), nn.GELU(approximate=self.act.approximate), cf.conv(self.fc2))


def set_activation(module: nn.Module, activation: Activation) -> int:
    """Give every :class:`MLP` in ``module`` the named activation (it has no weights); returns how many."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; accepted: {', '.join(ACTIVATIONS)}")
    mlps = [m for m in module.modules() if isinstance(m, MLP)]
    for mlp in mlps:
        mlp.act = ACTIVATIONS[activation]()
    return len(mlps)
