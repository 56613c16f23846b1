"""The channels-first layout (B, C, 1, S) of the Neural Engine, asked of each module by one hook.

A module that can compute channels-first defines ``channels_first(self, cf) -> nn.Module``: its
own computation on (B, C, 1, S) tensors, built from its own weights with the converter ``cf``
(``cf.conv`` turns an ``nn.Linear`` into a 1x1 convolution, ``cf.eps`` floors a norm epsilon,
``cf.convert`` asks a child). Conditioners return a :class:`Hooks` (their six hooks on
:class:`Signals`), usually one of the generic forms here (:class:`Affine`, :class:`TokenPrefix`,
:class:`CrossBranch`). :mod:`lightning_film.export.ane_layout` walks a network with it; nothing
here imports coremltools.

Legend: B batch, C channels, S sequence, N tokens, D width, Dc conditioning width, H heads,
Dh = D / H, M keys (or conditioning tokens).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn

__all__ = [
    "HOOK",
    "MASK_VALUE",
    "Affine",
    "Attention",
    "ChannelDyT",
    "ChannelLayerNorm",
    "ChannelRMSNorm",
    "ChannelsFirst",
    "Conv1x1",
    "CrossBranch",
    "Hooks",
    "Signals",
    "TokenPrefix",
    "attend",
    "to_channels_first",
    "one_plus",
]

#: The method a module defines to say how it computes channels-first.
HOOK = "channels_first"
#: The additive mask of attention: finite in fp16 (max 65504), and exp of it is exactly 0.
MASK_VALUE = -1e4
#: Methods whose override below the class defining the hook would make the inherited form wrong.
_COMPUTING = ("forward", "prepare", "enter", "exit", "modulate", "gate", "branch")


def to_channels_first(x: Tensor) -> Tensor:
    """(B, S, C) -> (B, C, 1, S)."""
    return x.transpose(1, 2).unsqueeze(2)


def one_plus(s: Tensor) -> Tensor:
    """The gamma of a scale that is zero at init: 1 + s."""
    return 1.0 + s


@dataclass
class Signals:
    """The conditioning, channels-first: ``signal`` (B, Dc, 1, 1 | S), ``tokens`` (B, Dc, 1, M) and what a
    stack's ``prepare`` computed once (``shared``, by name)."""

    signal: Tensor | None = None
    tokens: Tensor | None = None
    shared: dict[str, Tensor] = field(default_factory=dict)


class Conv1x1(nn.Conv2d):
    """An ``nn.Linear`` as a 1x1 convolution (its weights copied): (B, in, 1, S) -> (B, out, 1, S).

    ``rows`` takes a slice of the Linear's outputs (q, k or v of a fused projection); ``scale``
    multiplies weight and bias (attention's 1 / sqrt(Dh), folded into q so the converter does not
    fold it under another name, out of reach of per-role compression). ``role``: the Linear's
    quantization role (conditioner, backbone, head).
    """

    def __init__(
        self, linear: nn.Linear, role: str | None = None, rows: slice = slice(None), scale: float = 1.0
    ) -> None:
        weight = linear.weight.detach()[rows] * scale  # (out, in)
        bias = None if linear.bias is None else linear.bias.detach()[rows] * scale
        super().__init__(
            weight.shape[1], weight.shape[0], 1, bias=bias is not None, dtype=weight.dtype, device=weight.device
        )
        with torch.no_grad():
            self.weight.copy_(weight[:, :, None, None])
            if bias is not None:
                self.bias.copy_(bias)
        self.role = role


def _channel_param(value: Tensor | None) -> nn.Parameter | None:
    """A per-channel (C,) vector as a (1, C, 1, 1) parameter (a copy)."""
    return None if value is None else nn.Parameter(value.detach().clone().reshape(1, -1, 1, 1))


def _unit_rms(x: Tensor, eps: Tensor) -> Tensor:
    """x / sqrt(mean(x^2) + eps) over the channels of (B, C, 1, S), safe from fp16 overflow.

    Each token is first divided by m = max(1, max |x|) (as coremltools does for ``rms_norm``), with
    eps / m^2 in place of eps: the same value in exact arithmetic, with squares <= 1. ``eps`` is a
    tensor and the root a sqrt and a division: a float over a tensor, or an rsqrt, would convert to
    Core ML ops with epsilons of their own.
    """
    m = x.abs().amax(1, keepdim=True).clamp_min(1.0)  # (B, 1, 1, S)
    xs = x / m  # (B, C, 1, S), |xs| <= 1
    return xs / torch.sqrt((xs * xs).mean(1, keepdim=True) + eps / m / m)  # (B, C, 1, S)


class ChannelRMSNorm(nn.Module):
    """RMSNorm over the channels of (B, C, 1, S); with ``center`` a LayerNorm (and its ``bias``)."""

    def __init__(self, eps: float, weight: Tensor | None, bias: Tensor | None = None, center: bool = False) -> None:
        super().__init__()
        self.register_buffer("eps", torch.tensor(float(eps)).reshape(1, 1, 1, 1), persistent=False)
        self.weight, self.bias, self.center = _channel_param(weight), _channel_param(bias), center

    def forward(self, x: Tensor) -> Tensor:
        y = _unit_rms(x - x.mean(1, keepdim=True) if self.center else x, self.eps)  # (B, C, 1, S)
        if self.weight is not None:
            y = y * self.weight
        return y if self.bias is None else y + self.bias


def ChannelLayerNorm(eps: float, weight: Tensor | None, bias: Tensor | None) -> ChannelRMSNorm:  # noqa: N802
    """LayerNorm over the channels of (B, C, 1, S)."""
    return ChannelRMSNorm(eps, weight, bias, center=True)


class ChannelDyT(nn.Module):
    """Dynamic Tanh, weight * tanh(alpha x) + bias, per channel of (B, C, 1, S)."""

    def __init__(self, alpha: Tensor, weight: Tensor | None, bias: Tensor | None) -> None:
        super().__init__()
        self.alpha = nn.Parameter(alpha.detach().clone())
        self.weight, self.bias = _channel_param(weight), _channel_param(bias)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.tanh(self.alpha * x)  # (B, C, 1, S)
        return y if self.weight is None else y * self.weight + self.bias


def attend(q: Tensor, k: Tensor, v: Tensor, num_heads: int, mask: Tensor | None = None) -> Tensor:
    """Attention head by head: q (B, D, 1, S) already scaled by 1 / sqrt(Dh), k and v (B, D, 1, M), mask
    (1, M, 1, S) additive or None -> (B, D, 1, S). Scores are (B, M, 1, S); both einsums have the form of
    Core ML's einsum op (``nchw,nwhu->nchu``), hence the keys transposed once to (B, M, 1, D)."""
    dh = q.shape[1] // num_heads
    heads = []
    for qh, kh, vh in zip(q.split(dh, 1), k.transpose(1, 3).split(dh, 3), v.split(dh, 1)):
        scores = torch.einsum("bmxc,bcxs->bmxs", kh, qh)  # (B, M, 1, S)
        if mask is not None:
            scores = scores + mask
        heads.append(torch.einsum("bcxm,bmxs->bcxs", vh, scores.softmax(dim=1)))  # (B, Dh, 1, S)
    return torch.cat(heads, dim=1)  # (B, D, 1, S)


def _swap_halves(x: Tensor, num_heads: int) -> Tensor:
    """(B, D, 1, S) -> (B, D, 1, S): each head's channels [x1, x2, rest] as [-x2, x1, rest] (RoPE's rotate-half)."""
    dh = x.shape[1] // num_heads
    half = dh // 2
    parts = []
    for head in x.split(dh, 1):
        parts += [-head[:, half : 2 * half], head[:, :half], head[:, 2 * half :]]
    return torch.cat(parts, dim=1)


def _rope_table(values: Tensor, num_heads: int, head_dim: int, rest: float) -> Tensor:
    """(L, Dh // 2) cos or sin -> (1, D, 1, L): both halves of every head, ``rest`` on an odd head's last channel."""
    length, half = values.shape
    head = torch.cat([values.T, values.T, torch.full((head_dim - 2 * half, length), rest)])  # (Dh, L)
    return head.repeat(num_heads, 1)[None, :, None, :]


class Attention(nn.Module):
    """Multi-head attention on (B, D, 1, S), projections as 1x1 convolutions; keys and values from
    ``context`` (B, Dc, 1, M) when given (cross-attention), else from x. ``rope``: the rotary angles'
    cos and sin (L, Dh // 2) at positions 0 .. L - 1, applied to queries and keys (self-attention,
    S <= L), as :func:`lightning_film.nn.attention.rotary` does."""

    def __init__(
        self,
        q: Conv1x1,
        k: Conv1x1,
        v: Conv1x1,
        proj: Conv1x1,
        num_heads: int,
        rope: tuple[Tensor, Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.q, self.k, self.v, self.proj, self.num_heads = q, k, v, proj, num_heads
        cos = sin = None
        if rope is not None:
            dh = q.out_channels // num_heads
            cos, sin = _rope_table(rope[0], num_heads, dh, 1.0), _rope_table(rope[1], num_heads, dh, 0.0)
        self.register_buffer("rope_cos", cos, persistent=False)  # (1, D, 1, L)
        self.register_buffer("rope_sin", sin, persistent=False)

    def _rotated(self, x: Tensor) -> Tensor:
        """RoPE on (B, D, 1, S) queries or keys at positions 0 .. S - 1."""
        s = x.shape[3]
        if s > self.rope_cos.shape[3]:
            raise ValueError(f"rotary positions for {s} tokens, but the tables cover {self.rope_cos.shape[3]}")
        return x * self.rope_cos[..., :s] + _swap_halves(x, self.num_heads) * self.rope_sin[..., :s]

    def forward(self, x: Tensor, context: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """x (B, D, 1, S), mask (1, M, 1, S) additive or None -> (B, D, 1, S)."""
        src = x if context is None else context
        q, k = self.q(x), self.k(src)  # (B, D, 1, S), (B, D, 1, M)
        if self.rope_cos is not None:
            q, k = self._rotated(q), self._rotated(k)
        return self.proj(attend(q, k, self.v(src), self.num_heads, mask))


# -- conditioners -------------------------------------------------------------------------------------------
class Hooks(nn.Module):
    """The conditioner hooks on (B, D, 1, S) features and :class:`Signals`; each the identity here."""

    def prepare(self, x: Tensor, c: Signals) -> Signals:
        return c

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


class Affine(Hooks):
    """``modulate``: h * gamma(scale) + shift; ``gate``: y * gate. Each is a D-channel chunk (by index) of
    the projections' outputs, in order, or of ``c.shared[shared]``, plus the row of ``table`` with the same
    role (shift 0, scale 1, gate 2). ``share``: the projection that ``prepare`` publishes as ``shared``."""

    def __init__(
        self,
        dim: int,
        projections: list[nn.Module],
        shift: int | None,
        scale: int | None,
        gate: int | None = None,
        gamma: Callable[[Tensor], Tensor] = one_plus,
        shared: str | None = None,
        share: nn.Module | None = None,
        table: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.dim, self.projections, self.index = dim, nn.ModuleList(projections), (shift, scale, gate)
        self.gamma, self.shared, self.share = gamma, shared, share
        self.table = (
            None if table is None else nn.Parameter(table.detach().clone()[:, :, None, None])
        )  # (rows, D, 1, 1)

    def prepare(self, x: Tensor, c: Signals) -> Signals:
        if self.share is None:
            return c
        return replace(c, shared={**c.shared, self.shared: self.share(c.signal)})  # (B, k D, 1, 1 | S)

    def _part(self, c: Signals, role: int) -> Tensor | None:
        """The chunk of this role, table row added: (B, D, 1, 1 | S), or None."""
        index = self.index[role]
        if index is None:
            return None
        if self.shared is not None:
            outs = [c.shared[self.shared] if self.shared in c.shared else self.share(c.signal)]
        else:
            outs = [p(c.signal) for p in self.projections]  # each (B, k D, 1, 1 | S)
        chunks = [chunk for out in outs for chunk in (out.split(self.dim, 1) if out.shape[1] > self.dim else [out])]
        part = chunks[index]
        return part if self.table is None else part + self.table[role]

    def modulate(self, h: Tensor, c: Signals) -> Tensor:
        shift, scale = self._part(c, 0), self._part(c, 1)
        y = h if scale is None else h * self.gamma(scale)  # (B, D, 1, S)
        return y if shift is None else y + shift

    def gate(self, y: Tensor, c: Signals) -> Tensor:
        g = self._part(c, 2)
        return y if g is None else y * g  # (B, D, 1, S)


class TokenPrefix(Hooks):
    """In-context tokens: ``embed(tokens)`` joined before the sequence on the S axis, dropped after the stack."""

    def __init__(self, embed: Conv1x1) -> None:
        super().__init__()
        self.embed = embed

    def enter(self, x: Tensor, c: Signals) -> Tensor:
        return torch.cat([self.embed(c.tokens), x], dim=3)  # (B, D, 1, M + N)

    def exit(self, x: Tensor, c: Signals) -> Tensor:
        return x[..., c.tokens.shape[3] :]  # (B, D, 1, N)


class CrossBranch(Hooks):
    """A residual branch of attention from the features to the conditioning tokens."""

    def __init__(self, attn: Attention) -> None:
        super().__init__()
        self.attn = attn

    def branch(self, h: Tensor, c: Signals) -> Tensor:
        return self.attn(h, c.tokens)  # (B, D, 1, S)


# -- the converter ------------------------------------------------------------------------------------------
class ChannelsFirst:
    """Asks modules for their channels-first form; a few plain torch layers are converted by class.

    ``root``: the network converted, to name where a module sits; ``roles``: {module name: quantization
    role} of its Linears; ``min_eps``: the floor of norm epsilons (None keeps them; what was raised is
    counted in ``raised``, eps -> count).
    """

    def __init__(self, root: nn.Module, roles: dict[str, str] | None = None, min_eps: float | None = None) -> None:
        self.root = root
        self.names = {id(m): name or "<root>" for name, m in root.named_modules()}
        #: the longest sequence the network takes (its ``seq_len``), which rotary tables cover; None if it has none
        seq_len = getattr(root, "seq_len", None)
        self.max_positions = seq_len if isinstance(seq_len, int) and not isinstance(seq_len, bool) else None
        self.roles, self.min_eps = roles or {}, min_eps
        self.raised: dict[float, int] = {}

    def error(self, message: str) -> Exception:
        """The exception a refusal raises (export raises its own)."""
        return ValueError(message)

    def where(self, module: nn.Module) -> str:
        return self.names.get(id(module), type(module).__name__)

    def has_form(self, module: nn.Module) -> bool:
        """Whether ``module`` has a channels-first form (its hook, or a plain torch layer's)."""
        return hasattr(module, HOOK) or type(module) in _TORCH_FORMS

    def convert(self, module: nn.Module) -> nn.Module:
        """``module``'s channels-first form; an ablated conditioner's is the identity :class:`Hooks`."""
        if getattr(module, "ablated", False):  # a conditioner switched off
            return Hooks()
        kind = type(module)
        if kind in _TORCH_FORMS:
            return _TORCH_FORMS[kind](self, module)
        hook = getattr(module, HOOK, None)
        if hook is None:
            raise self.error(
                f"layout 'ane': {kind.__name__} (at {self.where(module)}) has no channels-first form: define "
                f"{kind.__name__}.{HOOK}(self, cf) -> nn.Module (README, 'Custom conditioners'), or export with "
                f"layout 'default'"
            )
        owner = next(k for k in kind.__mro__ if HOOK in vars(k))
        for name in _COMPUTING:
            definer = next((k for k in kind.__mro__ if name in vars(k)), owner)
            if definer is not owner and issubclass(definer, owner):
                raise self.error(
                    f"layout 'ane': {kind.__name__} (at {self.where(module)}) overrides {name} but inherits {HOOK} "
                    f"from {owner.__name__}, which would compute the parent's {name}: define {kind.__name__}.{HOOK}"
                    f"(self, cf) -> nn.Module, or export with layout 'default'"
                )
        return hook(self)

    def conv(self, linear: nn.Module, rows: slice = slice(None), scale: float = 1.0) -> Conv1x1:
        """A plain ``nn.Linear`` as a :class:`Conv1x1` (its rows, scaled), tagged with its role."""
        if type(linear) is not nn.Linear or type(linear.weight) not in (nn.Parameter, Tensor):
            raise self.error(
                f"layout 'ane' copies the weights of plain nn.Linear layers into convolutions; {self.where(linear)} "
                f"is a {type(linear).__name__} with a {type(linear.weight).__name__} weight (quantized or "
                f"fake-quantized?): export the float model and compress in Core ML (weights=int8 / int4) instead"
            )
        return Conv1x1(linear, self.roles.get(self.where(linear)), rows, scale)

    def eps(self, eps: float) -> float:
        """A norm epsilon, raised to ``min_eps`` (and counted) when below it."""
        if self.min_eps is not None and eps < self.min_eps:
            self.raised[eps] = self.raised.get(eps, 0) + 1
            return self.min_eps
        return eps

    def attention(
        self,
        q: nn.Linear,
        k: nn.Linear,
        v: nn.Linear,
        proj: nn.Linear,
        num_heads: int,
        d: int,
        rope: tuple[Tensor, Tensor] | None = None,
    ) -> Attention:
        """An :class:`Attention` from q, k, v (the first, second, third D rows of their Linears) and proj
        (``rope``: rotary cos and sin (L, Dh // 2), see :class:`Attention`)."""
        scale = (d // num_heads) ** -0.5
        qc = self.conv(q, slice(0, d), scale)
        kc = self.conv(k, slice(d if k is q else 0, 2 * d if k is q else d))
        vc = self.conv(v, slice(2 * d if v is q else d, 3 * d if v is q else 2 * d))
        return Attention(qc, kc, vc, self.conv(proj), num_heads, rope)


def _norm(cf: ChannelsFirst, norm: nn.Module) -> nn.Module:
    """torch's LayerNorm / RMSNorm over the last dim, channels-first."""
    if len(norm.normalized_shape) != 1:
        raise cf.error(
            f"layout 'ane': {type(norm).__name__} (at {cf.where(norm)}) normalizes over more than the last dim"
        )
    eps = torch.finfo(torch.float32).eps if norm.eps is None else norm.eps  # RMSNorm's own default
    if isinstance(norm, nn.LayerNorm):
        return ChannelLayerNorm(cf.eps(eps), norm.weight, norm.bias)
    return ChannelRMSNorm(cf.eps(eps), norm.weight)


#: plain torch layers (no hook of their own) -> their channels-first form, matched by exact class
_TORCH_FORMS: dict[type[nn.Module], Callable[[ChannelsFirst, nn.Module], nn.Module]] = {
    nn.Linear: lambda cf, m: cf.conv(m),
    nn.Sequential: lambda cf, m: nn.Sequential(*(cf.convert(layer) for layer in m)),
    nn.SiLU: lambda cf, m: nn.SiLU(),
    nn.GELU: lambda cf, m: nn.GELU(approximate=m.approximate),
    nn.Identity: lambda cf, m: nn.Identity(),
    nn.LayerNorm: _norm,
    nn.RMSNorm: _norm,
}
