"""The one interface every conditioner implements, so blocks never branch on the kind.

A conditioner sits at one *site*: before the attention branch (``"attn"``), before the
MLP branch (``"mlp"``) or before the output head (``"final"``; this instance also owns
the stack-level hooks and any part built once per stack). It may override any of six
hooks, each the identity by default:

- ``prepare(x, cond) -> cond``: once per stack forward, before the blocks, on the final
  site only: what every site then reads from ``cond.shared`` (adaLN-single's one projection);
- ``enter(x, cond) -> (x, key_mask)`` / ``exit(x, cond) -> x``: change the sequence
  before and after the stack (in-context tokens); called on the final site only;
- ``modulate(h, cond) -> h``: the normalized input of a branch (FiLM, AdaLN, ...);
- ``gate(y, cond) -> y``: the branch output before the residual add (AdaLN-Zero);
- ``branch(h, cond) -> Tensor | None``: a residual branch of its own (cross-attention).

Each conditioner owns its initialisation and, unless ``identity_at_init`` is False
(``concat``: tokens in attention cannot be invisible), adds exactly nothing at init.

Legend: B batch, N tokens, D width, Dc conditioning width.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from lightning_film.nn.conditioning import Conditioning

__all__ = [
    "Conditioner", "ProjectedConditioner", "Site", "SITES", "modulate_affine", "precompute_projections", "projection",
]

Site = Literal["attn", "mlp", "final"]
SITES: tuple[str, ...] = get_args(Site)


class Conditioner(nn.Module):
    """Base class: identity hooks, argument checks, and the diagnostics/ablation switches.

    Args:
        dim: D, the width of the features it conditions.
        cond_dim: Dc, the width of the conditioning it reads.
        site: where it sits (``"attn"``, ``"mlp"`` or ``"final"``).
    """

    #: Whether the conditioner adds exactly nothing at init (tested for every registered one).
    identity_at_init: bool = True
    #: Whether it reads ``Conditioning.tokens`` (else the vector / per-token signal).
    reads_tokens: bool = False

    def __init__(self, dim: int, cond_dim: int, site: Site = "attn") -> None:
        super().__init__()
        name = type(self).__name__
        for arg, value in (("dim", dim), ("cond_dim", cond_dim)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name}: {arg} must be a positive int, got {value!r}")
        if site not in SITES:
            raise ValueError(f"{name}: site must be one of {SITES}, got {site!r}")
        self.dim, self.cond_dim, self.site = dim, cond_dim, site
        #: When True, every conditioner hook is skipped (see ``ablate_conditioning``).
        self.ablated = False
        #: When True, hooks record their gamma/beta/gate in ``observed`` (see diagnostics).
        self.observing = False
        self.observed: dict[str, torch.Tensor] = {}
        #: (conditioning, {projection name: output}) set by :func:`precompute_projections` for
        #: the duration of one Transformer forward; ``None`` otherwise.
        self._precomputed: tuple[Conditioning, dict[str, torch.Tensor]] | None = None

    # -- hooks (identity defaults) ------------------------------------------------------
    def prepare(self, x: torch.Tensor, cond: Conditioning) -> Conditioning:
        """x: (B, N, D) the stack's input -> the conditioning every site of this forward reads."""
        return cond

    def enter(self, x: torch.Tensor, cond: Conditioning) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: (B, N, D) -> (B, S, D) and a key mask (B, S) bool or None."""
        return x, None

    def exit(self, x: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """x: (B, S, D) -> (B, N, D), undoing ``enter``."""
        return x

    def modulate(self, h: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """h: (B, N, D) normalized branch input -> (B, N, D)."""
        return h

    def gate(self, y: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """y: (B, N, D) branch output -> (B, N, D)."""
        return y

    def branch(self, h: torch.Tensor, cond: Conditioning) -> torch.Tensor | None:
        """h: (B, N, D) normalized input -> an extra residual (B, N, D), or None."""
        return None

    # -- helpers for subclasses ---------------------------------------------------------
    def signal(self, h: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """The checked vector/per-token signal for features h (B, N, D): (B, 1 | N, Dc)."""
        name = type(self).__name__
        s = cond.signal() if isinstance(cond, Conditioning) else None
        if s is None:
            raise ValueError(
                f"{name} needs a conditioning vector (B, {self.cond_dim}) or per-token conditioning "
                f"(B, N, {self.cond_dim}); got {cond!r}"
            )
        if s.shape[-1] != self.cond_dim:
            raise ValueError(f"{name} was built for cond_dim={self.cond_dim} but got conditioning of width {s.shape[-1]}")
        if s.shape[0] != h.shape[0] or s.shape[1] not in (1, h.shape[1]):
            raise ValueError(
                f"{name}: conditioning of shape {tuple(s.shape)} does not fit features {tuple(h.shape)}; "
                f"per-token conditioning must be (B, N, Dc) with the features' B and N"
            )
        return s

    def tokens(self, cond: Conditioning) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The checked conditioning tokens (B, M, Dc) and mask (B, M) or None."""
        name = type(self).__name__
        if not isinstance(cond, Conditioning) or cond.tokens is None:
            raise ValueError(
                f"{name} reads conditioning tokens (B, M, {self.cond_dim}) but Conditioning.tokens is None; "
                f"build it with Conditioning(tokens=...) or Conditioning.from_signals([...])"
            )
        if cond.tokens.shape[-1] != self.cond_dim:
            raise ValueError(
                f"{name} was built for cond_dim={self.cond_dim} but got tokens of width {cond.tokens.shape[-1]}"
            )
        return cond.tokens, cond.mask

    def observe(self, **tensors: torch.Tensor) -> None:
        """Keep detached copies of modulation parameters while diagnostics ask for them."""
        if self.observing:
            self.observed.update({k: v.detach() for k, v in tensors.items()})

    def extra_repr(self) -> str:
        return f"dim={self.dim}, cond_dim={self.cond_dim}, site={self.site!r}"


def projection(
    cond_dim: int,
    out_dim: int,
    hidden_dim: int | None = None,
    pre_activation: bool = False,
    zero_init: bool = True,
) -> nn.Sequential:
    """Conditioning (..., Dc) -> (..., out_dim): Linear, or Linear-SiLU-Linear with ``hidden_dim``.

    ``pre_activation`` puts a SiLU in front (DiT's adaLN reads SiLU(c)). ``zero_init`` zeroes
    the last layer, so whatever the output parameterises starts at its neutral value.
    """
    if hidden_dim is not None and (not isinstance(hidden_dim, int) or hidden_dim <= 0):
        raise ValueError(f"hidden_dim must be a positive int or None, got {hidden_dim!r}")
    layers: list[nn.Module] = [nn.SiLU()] if pre_activation else []
    if hidden_dim is None:
        layers.append(nn.Linear(cond_dim, out_dim))
    else:
        layers += [nn.Linear(cond_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, out_dim)]
    if zero_init:
        nn.init.zeros_(layers[-1].weight)
        nn.init.zeros_(layers[-1].bias)
    return nn.Sequential(*layers)


def _grad_needed(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _eager() -> bool:
    return not (torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.jit.is_tracing())


class _AffineFunction(torch.autograd.Function):
    """h * gamma (+ beta) with gamma, beta broadcast over tokens, and the minimal backward.

    Autograd's ``addcmul`` backward also multiplies the full-size h by ``value`` (a third
    full-size pass); this one reads dy twice and h once: dh = dy gamma, dgamma = sum(dy h),
    dbeta = sum(dy).
    """

    @staticmethod
    def forward(ctx, h: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(h if ctx.needs_input_grad[1] else None, gamma if ctx.needs_input_grad[0] else None)
        ctx.beta_shape = None if beta is None else beta.shape
        ctx.gamma_shape = gamma.shape
        return h * gamma if beta is None else torch.addcmul(beta, h, gamma)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        h, gamma = ctx.saved_tensors
        need_h, need_gamma, need_beta = ctx.needs_input_grad
        dh = dy * gamma if need_h else None
        dgamma = (dy * h).sum_to_size(ctx.gamma_shape) if need_gamma else None
        dbeta = dy.sum_to_size(ctx.beta_shape) if need_beta and ctx.beta_shape is not None else None
        return dh, dgamma, dbeta


def modulate_affine(h: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor | None = None) -> torch.Tensor:
    """h (B, N, D) * gamma (+ beta), gamma and beta (B, 1 | N, D): ``torch.addcmul(beta, h, gamma)``.

    Equal to the plain expression; in eager training (same dtypes, h full size) its backward
    skips a full-size pass of autograd's ``addcmul`` backward.
    """
    same = gamma.dtype == h.dtype and (beta is None or beta.dtype == h.dtype)
    if same and _eager() and _grad_needed(h, gamma, beta) and gamma.dim() == h.dim():
        return _AffineFunction.apply(h, gamma, beta)
    return h * gamma if beta is None else torch.addcmul(beta, h, gamma)


def _plain_linear(seq: nn.Module | None, pre_activation: bool) -> nn.Linear | None:
    """The Linear of a one-layer projection ([SiLU,] Linear) that may join a batched matmul, else None.

    Anything else (an MLP projection, a swapped or hooked module, a quantized or parametrized
    weight) keeps its own forward.
    """
    if not isinstance(seq, nn.Sequential) or len(seq) != 1 + pre_activation:
        return None
    layers = list(seq)
    if pre_activation and type(layers[0]) is not nn.SiLU:
        return None
    linear = layers[-1]
    if type(linear) is not nn.Linear or linear.bias is None:
        return None
    if any(type(p) is not nn.Parameter for p in (linear.weight, linear.bias)):
        return None
    if any(m._forward_hooks or m._forward_pre_hooks for m in (seq, *layers)) or hasattr(linear, "parametrizations"):
        return None
    return linear


def precompute_projections(conditioners: list[Conditioner], cond: Conditioning, x: torch.Tensor) -> list[Conditioner]:
    """Compute the projections of every conditioner in one matmul per input; returns those filled.

    A transformer's conditioners project the same signal (B, 1 | N, Dc) with 2 depth + 1 small
    Linears (4 depth + 2 for FiLM); run one by one, their per-op overhead (forward, backward
    and gradient accumulation of each) costs more than their arithmetic. Here the weights are
    concatenated and applied once (SiLU(c) once for the pre-activated ones), and each
    conditioner's hooks read their slice through :meth:`ProjectedConditioner.projected` for the
    conditioning ``cond`` only. The caller clears ``_precomputed`` of the returned conditioners
    after the forward. Eager mode only: a compiler sees the plain per-site graph.
    """
    if not _eager():
        return []
    groups: dict[bool, list[tuple[ProjectedConditioner, str, nn.Linear]]] = {False: [], True: []}
    for c in conditioners:
        if c.ablated or not isinstance(c, ProjectedConditioner):
            continue
        for name in c.batched_projections:
            linear = _plain_linear(getattr(c, name, None), c.pre_activation)
            if linear is not None:
                groups[c.pre_activation].append((c, name, linear))
    items = groups[False] + groups[True]
    if len(items) < 2:
        return []
    signal = items[0][0].signal(x, cond)  # (B, 1 | N, Dc), checked once for the whole stack
    weights = [lin.weight for _, _, lin in items]
    if any(c.cond_dim != signal.shape[-1] for c, _, _ in items) or any(
        w.dtype != signal.dtype or w.device != signal.device for w in weights
    ):
        return []
    outputs: dict[Conditioner, dict[str, torch.Tensor]] = {}
    for pre, group in groups.items():
        if not group:
            continue
        inp = F.silu(signal) if pre else signal  # (B, 1 | N, Dc)
        weight = torch.cat([lin.weight for _, _, lin in group])  # (sum of outputs, Dc)
        bias = torch.cat([lin.bias for _, _, lin in group])
        pieces = F.linear(inp, weight, bias).split([lin.out_features for _, _, lin in group], dim=-1)
        for (c, name, _), piece in zip(group, pieces):
            outputs.setdefault(c, {})[name] = piece  # (B, 1 | N, out)
    for c, found in outputs.items():
        c._precomputed = (cond, found)
    return list(outputs)


class ProjectedConditioner(Conditioner):
    """A conditioner whose modulation parameters are projections of the conditioning.

    Subclasses create their projections in :meth:`build` with :meth:`project`, which
    applies the shared options.

    Args:
        hidden_dim: if set, each projection is a Linear-SiLU-Linear MLP of this width.
        zero_init: zero the projections' last layers, so the conditioner starts as the
            identity (the default). False keeps PyTorch's default init.
    """

    #: Whether projections read SiLU(c), as DiT's adaLN does.
    pre_activation: bool = False
    #: Projections (attribute names) that the hooks read only through :meth:`projected`, so a
    #: Transformer may compute them together with every other site's in one matmul.
    batched_projections: tuple[str, ...] = ()

    def __init__(
        self,
        dim: int,
        cond_dim: int,
        site: Site = "attn",
        hidden_dim: int | None = None,
        zero_init: bool = True,
    ) -> None:
        super().__init__(dim, cond_dim, site)
        self.hidden_dim, self.zero_init = hidden_dim, zero_init
        self.build()

    def build(self) -> None:
        """Create the projections (called once from ``__init__``)."""

    def project(self, out_dim: int, zero_init: bool | None = None) -> nn.Sequential:
        """A projection (..., Dc) -> (..., out_dim) with this conditioner's options."""
        zero = self.zero_init if zero_init is None else zero_init
        return projection(self.cond_dim, out_dim, self.hidden_dim, self.pre_activation, zero)

    def projected(self, h: torch.Tensor, cond: Conditioning, *names: str) -> list[torch.Tensor]:
        """The outputs of the named projections for features h (B, N, D): each (B, 1 | N, out).

        ``getattr(self, name)(self.signal(h, cond))``, or the slice a Transformer computed in its
        batched matmul for this very ``cond`` (:func:`precompute_projections`).
        """
        pre = getattr(self, "_precomputed", None)  # absent on a module unpickled from before it existed
        found = pre[1] if pre is not None and pre[0] is cond else {}
        signal = None
        outs = []
        for name in names:
            out = found.get(name)
            if out is None:
                if signal is None:
                    signal = self.signal(h, cond)  # (B, 1 | N, Dc)
                out = getattr(self, name)(signal)
            outs.append(out)
        return outs
