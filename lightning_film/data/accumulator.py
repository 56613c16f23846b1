"""The dead-energy accumulator: an 8-bit counter of rare nibble pairs since the document start.

Patterns are nibble *pairs*: the 4-bit id of byte ``t-1`` and of byte ``t`` under the chosen
scheme, 256 pair types, a bool ``(16, 16)`` table indexed ``[previous, current]``. Pairs, not
single nibble values, because with the ``utf8`` scheme every single value is common in some
script (CONT3 is every emoji), while pairs such as "digit then continuation" or "invalid then
lead" are what never happens in clean text; with 256 types a 5% cut is also finer than 16 values
allow. The first byte of a document has no pair and is never an event.

Which pairs are rare (:func:`rare_table`): sort the 256 types by their count in the *training*
split, rarest first, ties by pair id ``16 * previous + current`` (so the table is deterministic);
the rare ones are the longest such prefix whose total count is at most ``rare_fraction`` of all
training pairs. The cut is by *mass*, so ``rare_fraction`` bounds the event rate on training data
(about 5% of bytes fire by default), and pairs never seen in training are always rare.

``acc_t = (number of rare events at positions <= t since the document start) & 0xFF``, computed
with a cumulative sum; the same numbers come out of

- :func:`accumulate` on a whole stream,
- :func:`accumulate` on a window, given the count before it (``count``) and the nibble before it
  (``prev``),
- :class:`StreamingAccumulator`, fed raw byte chunks one after another (inference).

A *document* is one item of a corpus (a play, a language's sample text) or one file; the counter
and the nibble context restart at each document start (``doc_start`` masks mark them).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_film.data.nibbles import NibbleScheme, build_nibble_scheme, position_in_document

__all__ = ["StreamingAccumulator", "accumulate", "pair_counts", "rare_events", "rare_table"]


def _pairs(nibbles: Tensor, prev: Tensor | int | None, doc_start: Tensor | None) -> tuple[Tensor, Tensor]:
    """(pair ids 16 * previous + current, bool: a pair exists there), both (..., N)."""
    cur = nibbles.long()
    if prev is None:
        before = torch.zeros((*cur.shape[:-1], 1), dtype=torch.long)
    else:
        before = torch.as_tensor(prev, dtype=torch.long).expand(cur.shape[:-1]).unsqueeze(-1)
    previous = torch.cat([before, cur[..., :-1]], dim=-1)  # (..., N)
    has_pair = torch.ones_like(cur, dtype=torch.bool)
    if prev is None:
        has_pair[..., 0] = False
    if doc_start is not None:
        has_pair &= ~doc_start.bool()
    return previous * 16 + cur, has_pair


def pair_counts(nibbles: Tensor, doc_start: Tensor | None = None, valid: Tensor | None = None) -> Tensor:
    """Counts (16, 16) of nibble pairs ``[previous, current]`` in a stream (..., N).

    Args:
        nibbles: 4-bit ids (..., N), the first starting a document.
        doc_start: bool (..., N), True where a document starts (no pair there).
        valid: bool (..., N), count only the pairs ending where this is True (e.g. the training
            positions whose whole context lies in the training split).
    """
    ids, has_pair = _pairs(nibbles, None, doc_start)
    if valid is not None:
        has_pair &= valid.bool()
    return torch.bincount(ids[has_pair], minlength=256).view(16, 16)


def rare_table(counts: Tensor, rare_fraction: float = 0.05) -> Tensor:
    """Bool (16, 16): the rarest pair types holding at most ``rare_fraction`` of the pair mass.

    Ties are broken by pair id; types never seen (count 0) are always rare.
    """
    if not 0.0 <= rare_fraction <= 1.0:
        raise ValueError(f"rare_fraction must be in [0, 1], got {rare_fraction}")
    counts = torch.as_tensor(counts).reshape(-1).long()
    if counts.numel() != 256:
        raise ValueError(f"pair counts must have 256 entries (16 x 16), got {counts.numel()}")
    # stable sort on count keeps pair-id order among equal counts
    order = torch.sort(counts, stable=True).indices
    within = counts[order].cumsum(0) <= rare_fraction * counts.sum()
    table = torch.zeros(256, dtype=torch.bool)
    table[order[within]] = True
    return table.view(16, 16)


def rare_events(
    nibbles: Tensor, table: Tensor, prev: Tensor | int | None = None, doc_start: Tensor | None = None
) -> Tensor:
    """Bool (..., N): the pair ending at each position is rare. ``prev`` is the nibble before ``nibbles``."""
    ids, has_pair = _pairs(nibbles, prev, doc_start)
    return table.reshape(256).to(torch.bool)[ids] & has_pair


def accumulate(
    nibbles: Tensor,
    table: Tensor,
    count: Tensor | int = 0,
    prev: Tensor | int | None = None,
    doc_start: Tensor | None = None,
) -> Tensor:
    """The accumulator ``acc`` (..., N) uint8 of a stream or of a window of one.

    Args:
        nibbles: 4-bit ids (..., N).
        table: bool (16, 16) rare-pair table (:func:`rare_table`).
        count: rare events in the document before the window (int or (...,)); only its value
            mod 256 matters.
        prev: the nibble just before the window (int or (...,)), ``None`` if it starts a document.
        doc_start: bool (..., N), True where a document starts inside the window.
    """
    events = rare_events(nibbles, table, prev, doc_start).long()  # (..., N)
    total = events.cumsum(dim=-1)  # (..., N)
    carried = torch.as_tensor(count, dtype=torch.long)
    carried = carried.unsqueeze(-1) if carried.dim() else carried  # broadcasts over N
    if doc_start is None or not bool(doc_start.any()):
        return ((total + carried) & 0xFF).to(torch.uint8)
    n = nibbles.shape[-1]
    pos = position_in_document(n, doc_start, nibbles.shape)  # (..., N)
    start = torch.arange(n).expand(nibbles.shape) - pos  # (..., N) latest document start (or 0)
    restarted = doc_start.bool().long().cummax(dim=-1).values.bool()  # a document started at or before t
    # events at a document start are 0, so total at the start equals the count before it
    base = torch.where(restarted, total.gather(-1, start), -carried.expand_as(total))
    return ((total - base) & 0xFF).to(torch.uint8)


class StreamingAccumulator:
    """Nibbles and ``acc`` of a byte stream fed chunk by chunk, as :func:`accumulate` gives on the whole.

    Keeps the last bytes of context for the scheme, the last nibble and the running count.

    Example::

        stream = StreamingAccumulator("utf8", dm.rare_table)
        for chunk in chunks:  # uint8 tensors (n,)
            nibbles, acc = stream(chunk)
        stream.reset()  # a new document
    """

    def __init__(self, scheme: NibbleScheme | str, table: Tensor) -> None:
        self.scheme = build_nibble_scheme(scheme) if not isinstance(scheme, NibbleScheme) else scheme
        self.table = torch.as_tensor(table).to(torch.bool).reshape(16, 16)
        self.reset()

    def reset(self) -> None:
        """Start a new document."""
        self.context = torch.zeros(0, dtype=torch.long)  # last scheme.context_bytes bytes
        self.prev: int | None = None
        self.count = 0

    def __call__(self, chunk: Tensor, doc_start: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(nibbles, acc) of the next bytes (n,), both uint8 (n,); ``doc_start`` (n,) marks documents inside."""
        chunk = torch.as_tensor(chunk).reshape(-1)
        if chunk.numel() == 0:
            return torch.zeros(0, dtype=torch.uint8), torch.zeros(0, dtype=torch.uint8)
        nibbles = self.scheme(chunk, self.context, doc_start)  # (n,)
        acc = accumulate(nibbles, self.table, self.count, self.prev, doc_start)  # (n,)
        # the running count is acc's last value; keeping it mod 256 loses nothing
        self.count, self.prev = int(acc[-1]), int(nibbles[-1])
        keep = self.scheme.context_bytes
        if doc_start is not None and bool(doc_start.any()):
            last = int(doc_start.nonzero()[-1, 0])
            self.context = chunk[last:].long()[-keep:] if keep else self.context[:0]
        else:
            self.context = torch.cat([self.context, chunk.long()])[-keep:] if keep else self.context
        return nibbles, acc
