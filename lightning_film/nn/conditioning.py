"""The conditioning a model hands to its transformer, in every form a conditioner may read.

Legend: B batch, N tokens of the sequence, M conditioning tokens, Dc conditioning width.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

__all__ = ["Conditioning", "Combine", "combine_signals", "combined_dim"]

#: How several conditioning signals (time, action, ...) become one before the projections.
Combine = Literal["sum", "concat"]


@dataclass
class Conditioning:
    """Conditioning for one batch; any field may be ``None``.

    Attributes:
        vector: (B, Dc) one vector per sample (time + action, say).
        per_token: (B, N, Dc) one vector per sequence position (the byte model's nibbles).
        tokens: (B, M, Dc) conditioning tokens for ``concat`` and ``cross_attention``.
        mask: (B, M) bool, True where a conditioning token is real (False = padding).
        shared: tensors a stack's conditioner computed once for every site of one forward
            (``Conditioner.prepare``), by name; empty as given by a model.
    """

    vector: torch.Tensor | None = None
    per_token: torch.Tensor | None = None
    tokens: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    shared: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, rank in (("vector", 2), ("per_token", 3), ("tokens", 3), ("mask", 2)):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, torch.Tensor) or value.dim() != rank):
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise ValueError(f"Conditioning.{name} must be a rank-{rank} tensor, got {shape}")
        if self.mask is not None:
            if self.tokens is None:
                raise ValueError("Conditioning.mask given without tokens")
            if self.mask.shape != self.tokens.shape[:2] or self.mask.dtype != torch.bool:
                raise ValueError(
                    f"Conditioning.mask must be bool of shape (B, M) = {tuple(self.tokens.shape[:2])}, "
                    f"got {self.mask.dtype} {tuple(self.mask.shape)}"
                )
        if self.vector is not None and self.per_token is not None:
            if self.vector.shape[-1] != self.per_token.shape[-1]:
                raise ValueError(
                    f"Conditioning.vector (width {self.vector.shape[-1]}) and per_token "
                    f"(width {self.per_token.shape[-1]}) are summed, so their widths must match"
                )

    @classmethod
    def from_signals(
        cls, signals: Sequence[torch.Tensor], combine: Combine = "sum", mask: torch.Tensor | None = None
    ) -> Conditioning:
        """Combine per-sample signals, each (B, Dc_i), into a vector and conditioning tokens.

        ``combine="sum"`` adds them (all Dc_i equal); ``"concat"`` concatenates them. Tokens
        are the signals stacked as (B, len(signals), Dc) when their widths agree, so
        ``concat``/``cross_attention`` see time and action as separate tokens.
        """
        vector = combine_signals(signals, combine)
        widths = {s.shape[-1] for s in signals}
        tokens = torch.stack(list(signals), dim=1) if len(widths) == 1 else None
        return cls(vector=vector, tokens=tokens, mask=mask)

    def signal(self) -> torch.Tensor | None:
        """The signal modulating conditioners read: (B, 1, Dc) or (B, N, Dc), or ``None``."""
        if self.per_token is None:
            return None if self.vector is None else self.vector.unsqueeze(1)
        if self.vector is None:
            return self.per_token
        return self.per_token + self.vector.unsqueeze(1)

    def map(self, fn) -> Conditioning:
        """A copy with ``fn`` applied to every tensor field (e.g. repeat for guidance)."""
        return Conditioning(
            *(None if t is None else fn(t) for t in (self.vector, self.per_token, self.tokens, self.mask))
        )


# A pytree node, so torch.export / torch.compile take a Conditioning as a model input (Core ML
# export and quantization go through torch.export).
torch.export.register_dataclass(Conditioning, serialized_type_name="lightning_film.Conditioning")


def combine_signals(signals: Sequence[torch.Tensor], combine: Combine = "sum") -> torch.Tensor:
    """(B, Dc_i) signals -> (B, Dc): their sum, or their concatenation on the last dim."""
    if not signals:
        raise ValueError("combine_signals needs at least one signal")
    if combine == "sum":
        widths = [s.shape[-1] for s in signals]
        if len(set(widths)) != 1:
            raise ValueError(f"combine='sum' needs signals of equal width, got widths {widths}; use combine='concat'")
        return torch.stack(list(signals)).sum(0)
    if combine == "concat":
        return torch.cat(list(signals), dim=-1)
    raise ValueError(f"unknown combine mode {combine!r}; accepted: 'sum', 'concat'")


def combined_dim(widths: Sequence[int], combine: Combine = "sum") -> int:
    """The width of :func:`combine_signals`'s output for signals of these widths."""
    if combine == "sum":
        return widths[0]
    if combine == "concat":
        return sum(widths)
    raise ValueError(f"unknown combine mode {combine!r}; accepted: 'sum', 'concat'")
