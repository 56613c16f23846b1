"""Channels-first (B, C, 1, S) layers of the Neural Engine layout (:mod:`lightning_film.export.ane_layout`).

Each mirrors one module of :mod:`lightning_film.nn` on channels-first tensors: a Linear as a 1x1
convolution, attention head by head with einsums, normalizers over the channel axis (dim 1), and
the conditioner hooks (``enter``, ``exit``, ``modulate``, ``gate``, ``branch``) on a
channels-first signal. They hold copies of the weights; :mod:`~lightning_film.export.ane_layout`
builds them from a trained model.

Legend: B batch, C channels, S sequence, N tokens, D width, Dc conditioning width, H heads,
Dh = D / H, M keys (or conditioning tokens), L the context.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from lightning_film.export.steps import ExportError

__all__ = [
    "MASK_VALUE", "AneAdaLN", "AneAdditive", "AneBlock", "AneConcat", "AneConditioner", "AneCrossAttention",
    "AneFiLM", "AneFiLMExp", "AneFiLMTanh", "AneGate", "AneMLP", "AneSelfAttention", "AneTransformer",
    "ChannelDyT", "ChannelLayerNorm", "ChannelRMSNorm", "Conv1x1", "Signals", "attend", "channels_first",
]  # fmt: skip

#: The additive mask of attention: finite in fp16 (max 65504), and exp of it is exactly 0.
MASK_VALUE = -1e4


class Signals(NamedTuple):
    """The conditioning, channels-first: ``signal`` (B, Dc, 1, 1 | S) and ``tokens`` (B, Dc, 1, M)."""

    signal: Tensor | None
    tokens: Tensor | None


def channels_first(x: Tensor) -> Tensor:
    """(B, S, C) -> (B, C, 1, S)."""
    return x.transpose(1, 2).unsqueeze(2)


# -- layers ------------------------------------------------------------------------------------------------
class Conv1x1(nn.Conv2d):
    """An ``nn.Linear`` as a 1x1 convolution with the same weights: (B, in, 1, S) -> (B, out, 1, S).

    ``rows`` takes a slice of the Linear's outputs (q, k or v of a fused projection); ``scale``
    multiplies weight and bias (attention's 1 / sqrt(Dh), folded into q's projection: a multiply
    after the convolution would be folded into its weights by the converter anyway, under another
    name, out of reach of per-role compression). ``role`` is the Linear's quantization role
    (conditioner, backbone, head), for per-role compression.
    """

    def __init__(
        self, linear: nn.Linear, role: str | None = None, rows: slice = slice(None), scale: float = 1.0
    ) -> None:
        weight = linear.weight.detach()[rows] * scale  # (out, in)
        bias = None if linear.bias is None else linear.bias.detach()[rows] * scale
        super().__init__(weight.shape[1], weight.shape[0], 1, bias=bias is not None, dtype=weight.dtype,
                         device=weight.device)  # fmt: skip
        with torch.no_grad():
            self.weight.copy_(weight[:, :, None, None])
            if bias is not None:
                self.bias.copy_(bias)
        self.role = role


def _unit_rms(x: Tensor, eps: Tensor) -> Tensor:
    """x / sqrt(mean(x^2) + eps) over the channels of (B, C, 1, S), safe from fp16 overflow.

    x^2 overflows fp16 once |x| > 256 (max 65504). Each token is first divided by m = max(1, max |x|)
    (what coremltools does for ``rms_norm`` too), with eps / m^2 in place of eps: the same value in
    exact arithmetic, with squares <= 1. Where m > 1, mean(x^2) / m^2 >= 1 / C, so eps / m^2
    underflowing to zero is harmless; where m = 1, eps is used as it is.

    ``eps`` is a tensor and the root a sqrt and a division: a float divided by a tensor, or an rsqrt,
    would convert to Core ML ops with epsilons of their own (``inverse``: 1e-4, ``rsqrt``: 1e-12).
    """
    m = x.abs().amax(1, keepdim=True).clamp_min(1.0)  # (B, 1, 1, S)
    xs = x / m  # (B, C, 1, S), |xs| <= 1
    return xs / torch.sqrt((xs * xs).mean(1, keepdim=True) + eps / m / m)  # (B, C, 1, S)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of (B, C, 1, S)."""

    def __init__(self, eps: float, weight: Tensor | None, bias: Tensor | None) -> None:
        super().__init__()
        self.register_buffer("eps", torch.tensor(float(eps)).reshape(1, 1, 1, 1), persistent=False)
        self.weight = _channel_param(weight)
        self.bias = _channel_param(bias)

    def forward(self, x: Tensor) -> Tensor:
        y = _unit_rms(x - x.mean(1, keepdim=True), self.eps)  # (B, C, 1, S)
        if self.weight is not None:
            y = y * self.weight
        return y if self.bias is None else y + self.bias


class ChannelRMSNorm(nn.Module):
    """RMSNorm over the channels of (B, C, 1, S)."""

    def __init__(self, eps: float, weight: Tensor | None) -> None:
        super().__init__()
        self.register_buffer("eps", torch.tensor(float(eps)).reshape(1, 1, 1, 1), persistent=False)
        self.weight = _channel_param(weight)

    def forward(self, x: Tensor) -> Tensor:
        y = _unit_rms(x, self.eps)  # (B, C, 1, S)
        return y if self.weight is None else y * self.weight


class ChannelDyT(nn.Module):
    """Dynamic Tanh, weight * tanh(alpha x) + bias, with per-channel weight and bias."""

    def __init__(self, alpha: Tensor, weight: Tensor | None, bias: Tensor | None) -> None:
        super().__init__()
        self.alpha = nn.Parameter(alpha.detach().clone())
        self.weight = _channel_param(weight)
        self.bias = _channel_param(bias)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.tanh(self.alpha * x)  # (B, C, 1, S)
        return y if self.weight is None else y * self.weight + self.bias


def _channel_param(value: Tensor | None) -> nn.Parameter | None:
    """A per-channel (C,) vector as a (1, C, 1, 1) parameter (a copy)."""
    return None if value is None else nn.Parameter(value.detach().clone().reshape(1, -1, 1, 1))


def attend(q: Tensor, k: Tensor, v: Tensor, num_heads: int, mask: Tensor | None = None) -> Tensor:
    """Multi-head attention head by head: q (B, D, 1, S) already scaled by 1 / sqrt(Dh) (see
    :class:`Conv1x1`), k and v (B, D, 1, M), mask (1, M, 1, S) additive or None -> (B, D, 1, S). Scores are laid out (B, M, 1, S): keys on the channel axis.

    Both einsums have the form of Core ML's own einsum op (``nchw,nwhu->nchu``: the contraction is
    the last axis of the first operand and the second of the other), so they convert to that op
    rather than to transposes and matmuls; hence the keys are transposed once, to (B, M, 1, D).
    """
    dh = q.shape[1] // num_heads
    k_rows = k.transpose(1, 3)  # (B, M, 1, D)
    heads = []
    for qh, kh, vh in zip(
        q.split(dh, 1), k_rows.split(dh, 3), v.split(dh, 1)
    ):  # (B, Dh, 1, S), (B, M, 1, Dh), (B, Dh, 1, M)
        scores = torch.einsum("bmxc,bcxs->bmxs", kh, qh)  # (B, M, 1, S)
        if mask is not None:
            scores = scores + mask
        heads.append(torch.einsum("bcxm,bmxs->bcxs", vh, scores.softmax(dim=1)))  # (B, Dh, 1, S)
    return torch.cat(heads, dim=1)  # (B, D, 1, S)


class AneSelfAttention(nn.Module):
    """Self-attention on (B, D, 1, S): q, k, v and output projections as 1x1 convolutions."""

    def __init__(self, q: Conv1x1, k: Conv1x1, v: Conv1x1, proj: Conv1x1, num_heads: int) -> None:
        super().__init__()
        self.q, self.k, self.v, self.proj = q, k, v, proj
        self.num_heads = num_heads

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x (B, D, 1, S), mask (1, S, 1, S) additive or None -> (B, D, 1, S)."""
        return self.proj(attend(self.q(x), self.k(x), self.v(x), self.num_heads, mask))


class AneMLP(nn.Module):
    """1x1 conv -> GELU -> 1x1 conv on (B, D, 1, S)."""

    def __init__(self, fc1: Conv1x1, act: nn.Module, fc2: Conv1x1) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = fc1, act, fc2

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))  # (B, D, 1, S)


# -- conditioners ------------------------------------------------------------------------------------------
class AneConditioner(nn.Module):
    """The conditioner interface of :mod:`lightning_film.nn.conditioners.base` on (B, D, 1, S)
    features and :class:`Signals`; every hook is the identity here (``none``, or an ablated one)."""

    def enter(self, x: Tensor, c: Signals) -> Tensor:
        return x

    def exit(self, x: Tensor, c: Signals) -> Tensor:
        return x

    def modulate(self, h: Tensor, c: Signals) -> Tensor:
        return h

    def gate(self, y: Tensor, c: Signals) -> Tensor:
        return y

    def branch(self, h: Tensor, c: Signals) -> Tensor | None:
        return None


class AneFiLM(AneConditioner):
    """h * gamma(scale(c)) + shift(c), gamma = 1 + s."""

    def __init__(self, scale: nn.Module, shift: nn.Module | None, bound: float = 0.0) -> None:
        super().__init__()
        self.scale, self.shift, self.bound = scale, shift, bound

    def gamma(self, s: Tensor) -> Tensor:
        return 1.0 + s

    def modulate(self, h: Tensor, c: Signals) -> Tensor:
        gamma = self.gamma(self.scale(c.signal))  # (B, D, 1, 1 | S)
        return h * gamma if self.shift is None else h * gamma + self.shift(c.signal)  # (B, D, 1, S)


class AneFiLMExp(AneFiLM):
    def gamma(self, s: Tensor) -> Tensor:
        return torch.exp(s)


class AneFiLMTanh(AneFiLM):
    def gamma(self, s: Tensor) -> Tensor:
        return 1.0 + self.bound * torch.tanh(s)


class AneGate(AneFiLM):
    def gamma(self, s: Tensor) -> Tensor:
        return 2.0 * torch.sigmoid(s)


class AneAdaLN(AneConditioner):
    """h * (1 + scale) + shift from one projection; with ``gate_proj`` (adaln_zero) y * gate."""

    def __init__(self, modulation: nn.Module, gate_proj: nn.Module | None) -> None:
        super().__init__()
        self.modulation, self.gate_proj = modulation, gate_proj

    def modulate(self, h: Tensor, c: Signals) -> Tensor:
        shift, scale = self.modulation(c.signal).chunk(2, dim=1)  # (B, D, 1, 1 | S) each
        return h * (1.0 + scale) + shift  # (B, D, 1, S)

    def gate(self, y: Tensor, c: Signals) -> Tensor:
        return y if self.gate_proj is None else y * self.gate_proj(c.signal)  # (B, D, 1, S)


class AneAdditive(AneConditioner):
    def __init__(self, shift: nn.Module) -> None:
        super().__init__()
        self.shift = shift

    def modulate(self, h: Tensor, c: Signals) -> Tensor:
        return h + self.shift(c.signal)  # (B, D, 1, S)


class AneConcat(AneConditioner):
    """In-context tokens joined before the sequence on the S axis, dropped after the stack."""

    def __init__(self, embed: Conv1x1) -> None:
        super().__init__()
        self.embed = embed

    def enter(self, x: Tensor, c: Signals) -> Tensor:
        return torch.cat([self.embed(c.tokens), x], dim=3)  # (B, D, 1, M + N)

    def exit(self, x: Tensor, c: Signals) -> Tensor:
        return x[..., c.tokens.shape[3] :]  # (B, D, 1, N)


class AneCrossAttention(AneConditioner):
    """A residual cross-attention branch from the features to the conditioning tokens."""

    def __init__(self, q: Conv1x1, k: Conv1x1, v: Conv1x1, proj: Conv1x1, num_heads: int) -> None:
        super().__init__()
        self.q, self.k, self.v, self.proj = q, k, v, proj
        self.num_heads = num_heads

    def branch(self, h: Tensor, c: Signals) -> Tensor:
        tokens = c.tokens  # (B, Dc, 1, M)
        return self.proj(attend(self.q(h), self.k(tokens), self.v(tokens), self.num_heads))  # (B, D, 1, S)


# -- the stack ---------------------------------------------------------------------------------------------
def _residual(
    norm: nn.Module, cond: AneConditioner, layer: nn.Module, x: Tensor, c: Signals, *args: Tensor | None
) -> Tensor:
    """One branch's update, as the original block computes it: x (B, D, 1, S) -> (B, D, 1, S)."""
    h = norm(x)  # (B, D, 1, S)
    y = cond.gate(layer(cond.modulate(h, c), *args), c)
    extra = cond.branch(h, c)
    return y if extra is None else y + extra


class AneBlock(nn.Module):
    def __init__(self, norm1: nn.Module, cond1: AneConditioner, attn: AneSelfAttention, norm2: nn.Module,
                 cond2: AneConditioner, mlp: AneMLP) -> None:  # fmt: skip
        super().__init__()
        self.norm1, self.cond1, self.attn = norm1, cond1, attn
        self.norm2, self.cond2, self.mlp = norm2, cond2, mlp

    def forward(self, x: Tensor, c: Signals, mask: Tensor | None) -> Tensor:
        x = x + _residual(self.norm1, self.cond1, self.attn, x, c, mask)  # (B, D, 1, S)
        return x + _residual(self.norm2, self.cond2, self.mlp, x, c)  # (B, D, 1, S)


class AneTransformer(nn.Module):
    """The conditioned pre-norm stack on (B, D, 1, S); a causal one holds its additive mask (1, L, 1, L)."""

    def __init__(self, blocks: list[AneBlock], final_norm: nn.Module, final_cond: AneConditioner,
                 causal_len: int | None) -> None:  # fmt: skip
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.final_norm, self.final_cond = final_norm, final_cond
        mask = None
        if causal_len is not None:  # mask[0, key, 0, query]: a key after its query is hidden
            mask = torch.ones(causal_len, causal_len).triu(1).mul(MASK_VALUE).T.reshape(1, causal_len, 1, causal_len)
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: Tensor, c: Signals) -> Tensor:
        """x (B, D, 1, N) -> (B, D, 1, N)."""
        x = self.final_cond.enter(x, c)  # (B, D, 1, S), S = N (+ M in-context tokens)
        mask = None
        if self.mask is not None:
            s = x.shape[3]
            if s > self.mask.shape[1]:
                raise ExportError(f"causal attention over {s} tokens, but the mask covers {self.mask.shape[1]}")
            mask = self.mask[:, :s, :, :s]  # (1, S, 1, S)
        for block in self.blocks:
            x = block(x, c, mask)  # (B, D, 1, S)
        x = self.final_cond.exit(x, c)  # (B, D, 1, N)
        return self.final_cond.modulate(self.final_norm(x), c)  # (B, D, 1, N)
