"""Nibble schemes: a 4-bit id (0..15) for every byte, the second input channel of the byte model.

A scheme maps an integer byte tensor of any shape ``(..., N)`` (uint8 or long, values 0..255)
to a uint8 tensor of the same shape with values 0..15. Every built-in scheme is a 256-entry
lookup table, plus, for ``utf8``, a few shifted comparisons along the last dim: no Python loop
over bytes.

Built-in schemes (``lightning-film list "nibble schemes"``):

- ``high_nibble``: ``b >> 4``; context-free.
- ``low_nibble``: ``b & 15``; context-free.
- ``utf8``: the byte's role in UTF-8 (table below). Needs 3 bytes of left context.

The ``utf8`` code table (:class:`Utf8Code`)::

    0  CONTROL   0x00-0x1F and 0x7F, except whitespace
    1  SPACE     whitespace: \\t \\n \\v \\f \\r and ' '
    2  LETTER    A-Z a-z
    3  DIGIT     0-9
    4  PUNCT     other printable ASCII (0x21-0x7E)
    5  LEAD2     lead byte of a 2-byte sequence (0xC2-0xDF)
    6  LEAD3     lead byte of a 3-byte sequence (0xE0-0xEF)
    7  LEAD4     lead byte of a 4-byte sequence (0xF0-0xF4)
    8  CONT1     1st continuation byte of a sequence that is valid so far
    9  CONT2     2nd continuation byte ...
    10 CONT3     3rd continuation byte (of a 4-byte sequence)
    11 INVALID   0xC0, 0xC1, 0xF5-0xFF, and continuation bytes (0x80-0xBF) that continue nothing
    12-15        unused

The code is *causal*: the code of byte ``t`` depends on bytes ``t-3 .. t`` only, never on
later bytes, because it is an input of a next-byte predictor: a lead byte marked "invalid"
because its continuation never comes would tell the model what the next byte is not.
So a lead byte is a lead as soon as it is read, and a continuation byte is ``CONTk`` when bytes
``t-k .. t`` are a valid *prefix* of a UTF-8 sequence, judged as strictly as Python's decoder
(overlongs ``E0 80..9F`` / ``F0 80..8F``, surrogates ``ED A0..BF`` and code points above
U+10FFFF ``F4 90..BF`` make the continuation byte INVALID). A sequence cut short is visible at
the byte that breaks it, which is coded by its own role. On valid UTF-8 the codes equal those
of the complete characters.

Context: a window ``x`` gets the codes of the full stream when given the (up to) 3 bytes before
it in the same document as ``context``. Fewer bytes (or none) mean the window starts that close
to (or at) a document start; ``doc_start`` marks document starts inside the window, where the
look-back stops.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from lightning_film.registry import Registry

__all__ = [
    "NIBBLE_SCHEMES",
    "LookupScheme",
    "NibbleScheme",
    "Utf8Code",
    "Utf8Scheme",
    "build_nibble_scheme",
    "get",
    "list_nibble_schemes",
    "register_nibble_scheme",
]

NIBBLE_SCHEMES = Registry("nibble scheme", group="lightning_film.nibble_schemes")


class Utf8Code(enum.IntEnum):
    """The 4-bit ids of the ``utf8`` scheme (see the module docstring)."""

    CONTROL = 0
    SPACE = 1
    LETTER = 2
    DIGIT = 3
    PUNCT = 4
    LEAD2 = 5
    LEAD3 = 6
    LEAD4 = 7
    CONT1 = 8
    CONT2 = 9
    CONT3 = 10
    INVALID = 11


def _as_bytes(x: Tensor, what: str = "bytes") -> Tensor:
    """``x`` as a long tensor, after checking it holds bytes (the error names what was given)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{what} must be a torch.Tensor of byte values 0..255, got {type(x).__name__}")
    if x.dtype == torch.uint8:
        return x.long()
    if x.dtype.is_floating_point or x.dtype == torch.bool or x.dtype.is_complex:
        raise TypeError(f"{what} must be an integer tensor (uint8 or long) of byte values, got dtype {x.dtype}")
    x = x.long()
    if x.numel() and (int(x.min()) < 0 or int(x.max()) > 255):
        raise ValueError(f"{what} must hold byte values 0..255, got values in [{int(x.min())}, {int(x.max())}]")
    return x


class NibbleScheme:
    """Maps bytes ``(..., N)`` to 4-bit ids ``(..., N)`` (uint8, 0..15).

    Subclasses set :attr:`context_bytes` (how many bytes of left context the code of a byte
    depends on) and implement :meth:`_codes`.
    """

    #: bytes of left context the code of one byte depends on
    context_bytes: int = 0
    #: ids this scheme uses (all < 16)
    num_codes: int = 16

    def __call__(self, x: Tensor, context: Tensor | None = None, doc_start: Tensor | None = None) -> Tensor:
        """Codes of ``x`` (..., N), as on the full stream.

        Args:
            x: bytes (..., N), uint8 or long.
            context: the bytes (..., C) just before ``x`` in the same document (only the last
                :attr:`context_bytes` matter); ``None`` means ``x`` starts a document.
            doc_start: bool (..., N), True where a document starts inside ``x``.

        Returns:
            uint8 (..., N), values 0..15.
        """
        x = _as_bytes(x)
        if doc_start is not None and doc_start.shape != x.shape:
            raise ValueError(
                f"doc_start must have the shape of the bytes {tuple(x.shape)}, got {tuple(doc_start.shape)}"
            )
        if self.context_bytes == 0 or context is None or context.shape[-1] == 0:
            return self._codes(x, doc_start)
        context = _as_bytes(context, "context")[..., -self.context_bytes :]
        if context.shape[:-1] != x.shape[:-1]:
            raise ValueError(
                f"context {tuple(context.shape)} must match the leading dims of the bytes {tuple(x.shape)}"
            )
        c = context.shape[-1]
        full = torch.cat([context, x], dim=-1)  # (..., C + N)
        starts = None
        if doc_start is not None:
            starts = torch.cat([torch.zeros_like(context, dtype=torch.bool), doc_start.bool()], dim=-1)
        return self._codes(full, starts)[..., c:]

    def _codes(self, x: Tensor, doc_start: Tensor | None) -> Tensor:  # (..., L) long -> (..., L) uint8
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class LookupScheme(NibbleScheme):
    """A context-free scheme: one 256-entry table of 4-bit ids."""

    def __init__(self, table: Tensor) -> None:
        table = torch.as_tensor(table)
        if table.shape != (256,) or int(table.min()) < 0 or int(table.max()) > 15:
            raise ValueError(f"a nibble lookup table must have shape (256,) and values 0..15, got {tuple(table.shape)}")
        self.table = table.to(torch.uint8)
        self.num_codes = int(self.table.max()) + 1

    def _codes(self, x: Tensor, doc_start: Tensor | None) -> Tensor:
        return self.table[x]


# -- utf8 ---------------------------------------------------------------------------------------
def _utf8_tables() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(role of a byte on its own, sequence length of a lead, 2nd-byte range lo, hi)."""
    role = torch.full((256,), Utf8Code.INVALID, dtype=torch.uint8)
    for b in range(128):
        ch = bytes([b])
        role[b] = (
            Utf8Code.SPACE
            if ch.isspace()
            else Utf8Code.LETTER
            if ch.isalpha()
            else Utf8Code.DIGIT
            if ch.isdigit()
            else Utf8Code.PUNCT
            if 0x21 <= b <= 0x7E
            else Utf8Code.CONTROL
        )
    length = torch.zeros(256, dtype=torch.uint8)
    length[0xC2:0xE0], length[0xE0:0xF0], length[0xF0:0xF5] = 2, 3, 4
    role[0xC2:0xE0], role[0xE0:0xF0], role[0xF0:0xF5] = Utf8Code.LEAD2, Utf8Code.LEAD3, Utf8Code.LEAD4
    # the 2nd byte of a sequence is restricted after a few leads (Unicode Table 3-7)
    lo = torch.full((256,), 0x80, dtype=torch.uint8)
    hi = torch.full((256,), 0xBF, dtype=torch.uint8)
    lo[0xE0], hi[0xED], lo[0xF0], hi[0xF4] = 0xA0, 0x9F, 0x90, 0x8F
    return role, length, lo, hi


_ROLE, _LENGTH, _LO, _HI = _utf8_tables()


def _shift_right(x: Tensor, k: int, fill: int | bool) -> Tensor:
    """``x`` moved ``k`` places along the last dim: out[..., t] = x[..., t - k]."""
    pad = torch.full((*x.shape[:-1], k), fill, dtype=x.dtype)
    return torch.cat([pad, x[..., :-k]], dim=-1)[..., : x.shape[-1]]


def position_in_document(length: int, doc_start: Tensor | None, shape: torch.Size) -> Tensor:
    """Bytes since the last document start (the first position counts as one): long ``shape``."""
    t = torch.arange(length).expand(shape)
    if doc_start is None:
        return t
    start_at = torch.where(doc_start.bool(), t, torch.zeros_like(t))
    return t - start_at.cummax(dim=-1).values


class Utf8Scheme(NibbleScheme):
    """Role of the byte in UTF-8: ASCII class, lead 2/3/4, continuation 1/2/3, invalid."""

    context_bytes = 3
    num_codes = 12

    def _codes(self, x: Tensor, doc_start: Tensor | None) -> Tensor:
        n = x.shape[-1]
        code = _ROLE[x]  # (..., L) uint8; continuation bytes start as INVALID
        if n == 0:
            return code
        # per-byte tables once, then shifted: uint8 keeps the shifts cheap
        byte = x.to(torch.uint8)  # (..., L)
        length, lo, hi = _LENGTH[x], _LO[x], _HI[x]  # (..., L) uint8: as a lead, its length and 2nd-byte range
        is_cont = (byte & 0xC0) == 0x80  # (..., L)
        # the shifts fill with byte 0 (length 0), so nothing looks back past the first position;
        # only document starts inside need the position
        pos = None if doc_start is None else position_in_document(n, doc_start, x.shape)  # (..., L)
        # continuation k: the lead is k bytes back, expects more than k bytes, and all between are
        # continuations; at most one k can hold, since a lead is not a continuation
        run = is_cont  # all of t-k+1 .. t are continuations
        for k in (1, 2, 3):
            second = _shift_right(byte, k - 1, 0x80) if k > 1 else byte  # byte t-k+1
            ok = run & (_shift_right(length, k, 0) > k)
            ok &= (second >= _shift_right(lo, k, 0)) & (second <= _shift_right(hi, k, 0))
            if pos is not None:
                ok &= pos >= k
            code.masked_fill_(ok, int(Utf8Code.CONT1) + k - 1)
            if k < 3:
                run = run & _shift_right(is_cont, k, False)
        return code


# -- registry -----------------------------------------------------------------------------------
def register_nibble_scheme(
    name: str | None = None, *, override: bool = False
) -> Callable[[Callable[..., NibbleScheme]], Callable[..., NibbleScheme]]:
    """Register a scheme factory ``f(**options) -> NibbleScheme`` (or any ``(x, context, doc_start)`` callable)."""
    return NIBBLE_SCHEMES.register(name, override=override)


def build_nibble_scheme(spec: Any = "utf8", **kwargs: Any) -> NibbleScheme:
    """Build the scheme a spec names: ``"utf8"``, ``{"name": ..., **options}``, a path or a class."""
    return NIBBLE_SCHEMES.build(spec, **kwargs)


get = build_nibble_scheme


def list_nibble_schemes() -> list[str]:
    return NIBBLE_SCHEMES.names()


@register_nibble_scheme("high_nibble")
def high_nibble() -> NibbleScheme:
    """The byte's high 4 bits (b >> 4): ASCII vs. lead vs. continuation ranges, coarse letter case."""
    return LookupScheme(torch.arange(256) >> 4)


@register_nibble_scheme("low_nibble")
def low_nibble() -> NibbleScheme:
    """The byte's low 4 bits (b & 15)."""
    return LookupScheme(torch.arange(256) & 15)


@register_nibble_scheme("utf8")
def utf8() -> NibbleScheme:
    """The byte's role in UTF-8: ASCII letter/digit/space/punct/control, lead 2-4, continuation 1-3, invalid."""
    return Utf8Scheme()
