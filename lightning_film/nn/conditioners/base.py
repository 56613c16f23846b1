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

The measured fast paths (one matmul for every site's projections, a leaner affine backward)
live in :mod:`~lightning_film.nn.conditioners.fast`.

For Core ML's Neural Engine layout a conditioner also defines ``channels_first(self, cf)``
(:mod:`lightning_film.nn.channels_first`): its hooks on (B, C, 1, S) tensors, usually a generic
form built from its own projections; without it, ``export --layout ane`` refuses it by name.

Legend: B batch, N tokens, D width, Dc conditioning width.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import nn

from lightning_film.nn.conditioning import Conditioning

__all__ = ["Conditioner", "ProjectedConditioner", "Site", "SITES", "projection"]

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
            raise ValueError(
                f"{name} was built for cond_dim={self.cond_dim} but got conditioning of width {s.shape[-1]}"
            )
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
    cond_dim: int, out_dim: int, hidden_dim: int | None = None, pre_activation: bool = False, zero_init: bool = True
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
        self, dim: int, cond_dim: int, site: Site = "attn", hidden_dim: int | None = None, zero_init: bool = True
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
