"""Normalizers over the last dimension. They never see the conditioning.

Every factory has the same shape: ``f(dim, eps=..., affine=True, **own_options)``,
input and output ``(..., dim)``.

Under mixed precision (``torch.autocast``, Lightning's ``bf16-mixed``) every normalizer computes in
fp32 and returns the input's dtype: a bf16/fp16 input is upcast first (:func:`_fp32`), since a mean
of squares summed in bf16 keeps 8 bits. The models' residual streams are already fp32 there (the
sum of an fp32 embedding and bf16 branches), so this costs nothing on their path.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from lightning_film.nn.channels_first import ChannelDyT, ChannelLayerNorm, ChannelRMSNorm, ChannelsFirst
from lightning_film.registry import register_normalizer

__all__ = ["LayerNorm", "RMSNorm", "DyT", "Identity", "rms_norm_reference"]


def _fp32(x: torch.Tensor) -> torch.Tensor:
    """x in fp32 when it is a reduced-precision float (bf16, fp16); fp32/fp64 unchanged."""
    return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x


def _like(p: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
    """A parameter in x's dtype (a bf16 model's weights meet its fp32-upcast input); no copy when equal."""
    return None if p is None else p.to(x.dtype)


def _check_dim(dim: int, who: str) -> None:
    if not isinstance(dim, int) or dim <= 0:
        raise ValueError(f"{who}: dim must be a positive int, got {dim!r}")


@register_normalizer("layernorm")
class LayerNorm(nn.LayerNorm):
    """LayerNorm: subtract the mean, divide by the std, then an optional affine."""

    def __init__(self, dim: int, eps: float = 1e-6, affine: bool = True) -> None:
        _check_dim(dim, "layernorm")
        super().__init__(dim, eps=eps, elementwise_affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., D) -> (..., D) in x's dtype; mean and variance in fp32 (module doc)."""
        y = _fp32(x)
        return F.layer_norm(y, self.normalized_shape, _like(self.weight, y), _like(self.bias, y), self.eps).to(x.dtype)

    def channels_first(self, cf: ChannelsFirst) -> nn.Module:
        """Over the channels of (B, D, 1, S), eps floored by ``cf``."""
        return ChannelLayerNorm(cf.eps(self.eps), self.weight, self.bias)


#: RMSNorm implementations: ``auto`` picks the fastest exact one for the tensor, ``reference`` is the definition.
RMSNormImplementation = Literal["auto", "reference"]
_RMS_IMPLEMENTATIONS: tuple[str, ...] = get_args(RMSNormImplementation)


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """The definition, op by op (autograd derives the backward): x / sqrt(mean(x^2) + eps) * weight."""
    y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return y if weight is None else y * weight


def _rms_forward(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., D) -> y (..., D) and rstd (..., 1), in three passes over x (a norm, two scalings)."""
    rstd = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().div_(x.shape[-1]).add_(eps).rsqrt_()
    y = x * rstd
    if weight is not None:
        y.mul_(weight)
    return y, rstd


class _RMSNormFunction(torch.autograd.Function):
    """RMSNorm with a hand-derived backward built on LayerNorm's fused CPU backward kernel.

    With xhat = x rstd and g = dy w, RMSNorm's input gradient is rstd (g - xhat mean(g xhat)).
    LayerNorm's kernel, given mean 0 and our rstd, returns exactly that minus rstd mean(g) (the
    term of its mean subtraction), so one matrix-vector product (mean(g) = dy . w / D) puts it
    back; its weight gradient, sum over rows of dy xhat, is already RMSNorm's.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
        y, rstd = _rms_forward(x, weight, eps)
        ctx.save_for_backward(x, rstd, weight)
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        x, rstd, weight = ctx.saved_tensors
        d = x.shape[-1]
        want_w = weight is not None and ctx.needs_input_grad[1]
        dx, dw, _ = torch.ops.aten.native_layer_norm_backward(
            dy, x, [d], torch.zeros_like(rstd), rstd, weight, None, [True, want_w, False]
        )
        rows = dy.reshape(-1, d)  # (R, D)
        g_sum = rows.sum(-1) if weight is None else torch.mv(rows, weight)  # (R,) = sum over D of dy w
        dx.add_(g_sum.view_as(rstd).mul_(rstd), alpha=1.0 / d)  # (..., D)
        return (dx if ctx.needs_input_grad[0] else None), dw, None


def _fast_rms_applies(x: torch.Tensor) -> bool:
    """The hand-written CPU path: fp32/fp64 on the CPU, in eager mode (a compiler fuses the definition itself)."""
    return (
        x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
        and not torch.compiler.is_compiling()
        and not torch.compiler.is_exporting()
        and not torch.jit.is_tracing()
    )


@register_normalizer("rmsnorm")
class RMSNorm(nn.Module):
    """RMSNorm: divide by the root mean square (no centring), then an optional scale.

    Args:
        implementation: ``"auto"`` (default) takes the fastest exact path: on the CPU in eager
            mode, a hand-derived backward on LayerNorm's fused kernel (``F.rms_norm`` has no fused
            CPU backward: its autograd graph is a chain of elementwise ops, several times slower
            than LayerNorm's); elsewhere ``F.rms_norm`` (fused on CUDA). ``"reference"``: the
            definition op by op, for checking the fast path (same parameters, same results).
    """

    def __init__(
        self, dim: int, eps: float = 1e-6, affine: bool = True, implementation: RMSNormImplementation = "auto"
    ) -> None:
        super().__init__()
        _check_dim(dim, "rmsnorm")
        if implementation not in _RMS_IMPLEMENTATIONS:
            raise ValueError(
                f"rmsnorm: unknown implementation {implementation!r}; accepted: {', '.join(_RMS_IMPLEMENTATIONS)}"
            )
        self.dim, self.eps, self.implementation = dim, eps, implementation
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., D) -> (..., D) in x's dtype; the mean of squares in fp32 (module doc)."""
        dtype, x = x.dtype, _fp32(x)
        weight = _like(self.weight, x)
        if self.implementation == "reference":
            return rms_norm_reference(x, weight, self.eps).to(dtype)
        if not _fast_rms_applies(x):
            return F.rms_norm(x, (self.dim,), weight, self.eps).to(dtype)
        if torch.is_grad_enabled() and (x.requires_grad or (weight is not None and weight.requires_grad)):
            return _RMSNormFunction.apply(x, weight, self.eps).to(dtype)
        return _rms_forward(x, weight, self.eps)[0].to(dtype)

    def channels_first(self, cf: ChannelsFirst) -> nn.Module:
        """Over the channels of (B, D, 1, S), eps floored by ``cf``."""
        return ChannelRMSNorm(cf.eps(self.eps), self.weight)

    def extra_repr(self) -> str:
        impl = "" if self.implementation == "auto" else f", implementation={self.implementation!r}"
        return f"{self.dim}, eps={self.eps}, affine={self.weight is not None}{impl}"


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
        """x: (..., D) -> (..., D) in x's dtype; no statistics, but alpha x and tanh in fp32 (module doc)."""
        y = _fp32(x)
        y = torch.tanh(_like(self.alpha, y) * y)
        if self.weight is not None:
            y = torch.addcmul(_like(self.bias, y), y, _like(self.weight, y))
        return y.to(x.dtype)

    def channels_first(self, cf: ChannelsFirst) -> nn.Module:
        """Per channel of (B, D, 1, S)."""
        return ChannelDyT(self.alpha, self.weight, self.bias)

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

    def channels_first(self, cf: ChannelsFirst) -> nn.Module:
        return nn.Identity()
