"""A growing byte document with its nibbles and dead-energy accumulator, computed as the
DataModule computes them (generation feeds the model these ids)."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_film.data.accumulator import StreamingAccumulator
from lightning_film.data.nibbles import build_nibble_scheme
from lightning_film.registry import Spec

__all__ = ["ByteStream"]


class ByteStream:
    """A growing byte document with its nibbles and ``acc``, computed as the DataModule does.

    Feeding bytes in any chunks gives the values of the whole stream
    (:class:`~lightning_film.data.accumulator.StreamingAccumulator`).
    """

    def __init__(self, scheme: Spec, table: Tensor) -> None:
        self._acc = StreamingAccumulator(build_nibble_scheme(scheme), table.cpu())
        self._parts: list[tuple[Tensor, Tensor, Tensor]] = []

    def extend(self, data: bytes | bytearray | Tensor) -> None:
        """Append raw bytes (any values, valid UTF-8 or not)."""
        chunk = (
            torch.as_tensor(data, dtype=torch.uint8)
            if isinstance(data, Tensor)
            else (
                torch.frombuffer(bytearray(data), dtype=torch.uint8) if len(data) else torch.zeros(0, dtype=torch.uint8)
            )
        )
        if chunk.numel():
            nibbles, acc = self._acc(chunk)
            self._parts = [self._cat(self._parts + [(chunk, nibbles, acc)])]

    @staticmethod
    def _cat(parts: list[tuple[Tensor, Tensor, Tensor]]) -> tuple[Tensor, Tensor, Tensor]:
        return tuple(torch.cat([p[i] for p in parts]) for i in range(3))  # type: ignore[return-value]

    def __len__(self) -> int:
        return int(self._parts[0][0].numel()) if self._parts else 0

    @property
    def bytes(self) -> Tensor:
        """(L,) uint8."""
        return self._parts[0][0] if self._parts else torch.zeros(0, dtype=torch.uint8)

    @property
    def nibbles(self) -> Tensor:
        """(L,) uint8, 0..15."""
        return self._parts[0][1] if self._parts else torch.zeros(0, dtype=torch.uint8)

    @property
    def acc(self) -> Tensor:
        """(L,) uint8."""
        return self._parts[0][2] if self._parts else torch.zeros(0, dtype=torch.uint8)

    def window(self, n: int) -> tuple[Tensor, Tensor, Tensor]:
        """The last ``n`` bytes, nibbles and acc as long (1, <= n) model inputs."""
        return tuple(t[-n:].long().unsqueeze(0) for t in (self.bytes, self.nibbles, self.acc))  # type: ignore[return-value]
