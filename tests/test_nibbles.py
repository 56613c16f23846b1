"""Nibble schemes: the registry, the lookup schemes, and ``utf8`` against Python's own decoder."""

from __future__ import annotations

import string

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from lightning_film.data.nibbles import Utf8Code, build_nibble_scheme, list_nibble_schemes
from lightning_film.registry import RegistryError

C = Utf8Code
MULTILINGUAL = [
    "All human beings are born free and equal in dignity and rights.\n",
    "Tous les êtres humains naissent libres et égaux en dignité et en droits.",
    "Все люди рождаются свободными и равными в своем достоинстве и правах.",
    "يولد جميع الناس أحراراً متساوين في الكرامة والحقوق.",
    "人人生而自由，在尊严和权利上一律平等。",
    "すべての人間は、生まれながらにして自由であり、かつ、尊厳と権利とについて平等である。",
    "모든 인간은 태어날 때부터 자유로우며 그 존엄과 권리에 있어 동등하다.",
    "सभी मनुष्यों को गौरव और अधिकारों के मामले में जन्मजात स्वतन्त्रता प्राप्त है।",
    "Ὅλοι οἱ ἄνθρωποι γεννιοῦνται ἐλεύθεροι",
    "emoji 😀👍🏽 🇫🇷 and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢, tab\tdigits 0123456789 ctrl \x00\x1b\x7f",
]
INVALID = [
    b"\x80",  # stray continuation
    b"\xbf\xbf",
    b"\xc0\xaf",  # overlong '/'
    b"\xc1\xbf",
    b"\xe0\x80\xaf",  # overlong 3-byte
    b"\xed\xa0\x80",  # surrogate U+D800
    b"\xf0\x8f\xbf\xbf",  # overlong 4-byte
    b"\xf4\x90\x80\x80",  # above U+10FFFF
    b"\xf5\x80\x80\x80",
    b"\xff\xfe",
    b"\xe2\x82A",  # truncated euro sign, then a letter
    b"\xf0\x9f\x98",  # truncated emoji at the end
    b"\xc3\xc3\xa9",  # a lead interrupted by another lead
    b"\xe2\x82\xac\xac",  # one continuation too many
]


# -- an oracle from Python's decoder ---------------------------------------------------------------
def _ascii_code(b: int) -> int:
    ch = bytes([b])
    if ch.isspace():
        return C.SPACE
    if ch.isalpha():
        return C.LETTER
    if ch.isdigit():
        return C.DIGIT
    if chr(b) in string.punctuation:
        return C.PUNCT
    return C.CONTROL


def _decodes_to_one_char(seq: bytes) -> bool:
    try:
        return len(seq.decode("utf-8")) == 1
    except UnicodeDecodeError:
        return False


def _prefix_length(prefix: bytes) -> int:
    """Length of the UTF-8 sequences ``prefix`` starts, per Python's strict decoder; 0 if none."""
    for length in (2, 3, 4):
        if len(prefix) > length:
            continue
        if len(prefix) >= 2:  # bytes after the 2nd are any continuation: pad with 0x80
            if _decodes_to_one_char(prefix + b"\x80" * (length - len(prefix))):
                return length
        elif any(_decodes_to_one_char(prefix + bytes([s]) + b"\x80" * (length - 2)) for s in range(0x80, 0xC0)):
            return length
    return 0


def oracle(data: bytes) -> list[int]:
    """Causal role of every byte: the prefix up to it, judged by Python's decoder."""
    codes = []
    for t, b in enumerate(data):
        if b < 0x80:
            codes.append(_ascii_code(b))
            continue
        code = C.INVALID
        for k in (1, 2, 3):
            if t - k >= 0 and _prefix_length(data[t - k : t + 1]):
                code = C.CONT1 + k - 1
                break
        else:
            length = _prefix_length(data[t : t + 1])
            if length:
                code = C.LEAD2 + length - 2
        codes.append(int(code))
    return codes


def codes_of(scheme, data: bytes, **kwargs) -> list[int]:
    return scheme(torch.tensor(list(data), dtype=torch.uint8), **kwargs).tolist()


# -- registry -------------------------------------------------------------------------------------
def test_builtin_schemes_are_registered():
    assert {"high_nibble", "low_nibble", "utf8"} <= set(list_nibble_schemes())


def test_unknown_scheme_names_the_registered_ones():
    with pytest.raises(RegistryError) as err:
        build_nibble_scheme("utf-8")
    msg = str(err.value)
    assert "unknown nibble scheme 'utf-8'" in msg and "did you mean 'utf8'" in msg
    assert all(name in msg for name in ("high_nibble", "low_nibble", "utf8"))


@pytest.mark.parametrize("name", list_nibble_schemes())
def test_every_scheme_maps_any_shape_to_4_bits(name):
    scheme = build_nibble_scheme(name)
    x = torch.randint(0, 256, (3, 5, 40), generator=torch.Generator().manual_seed(0))
    out = scheme(x)
    assert out.shape == x.shape and out.dtype == torch.uint8
    assert int(out.max()) < 16
    # rows are independent: a batch equals its rows
    rows = x.reshape(-1, 40)
    assert all(torch.equal(out.reshape(-1, 40)[i], scheme(rows[i])) for i in range(len(rows)))
    assert torch.equal(scheme(x.to(torch.uint8)), out)


@pytest.mark.parametrize("name", list_nibble_schemes())
@settings(max_examples=60, deadline=None)
@given(data=st.binary(min_size=1, max_size=60), cut=st.integers(0, 60))
def test_window_with_context_equals_full_stream(name, data, cut):
    scheme = build_nibble_scheme(name)
    cut = min(cut, len(data) - 1)
    full = codes_of(scheme, data)
    context = torch.tensor(list(data[max(0, cut - scheme.context_bytes) : cut]), dtype=torch.uint8)
    assert codes_of(scheme, data[cut:], context=context) == full[cut:]


def test_lookup_schemes():
    x = torch.arange(256)
    assert torch.equal(build_nibble_scheme("high_nibble")(x).long(), x >> 4)
    assert torch.equal(build_nibble_scheme("low_nibble")(x).long(), x & 15)


def test_bad_input_is_named():
    scheme = build_nibble_scheme("utf8")
    with pytest.raises(ValueError, match=r"byte values 0\.\.255.*\[0, 300\]"):
        scheme(torch.tensor([0, 300]))
    with pytest.raises(TypeError, match="integer tensor"):
        scheme(torch.tensor([1.0]))


# -- utf8 -----------------------------------------------------------------------------------------
def test_utf8_examples():
    scheme = build_nibble_scheme("utf8")
    assert codes_of(scheme, "a1 ,\x01é€😀".encode()) == [
        C.LETTER,
        C.DIGIT,
        C.SPACE,
        C.PUNCT,
        C.CONTROL,
        C.LEAD2,
        C.CONT1,
        C.LEAD3,
        C.CONT1,
        C.CONT2,
        C.LEAD4,
        C.CONT1,
        C.CONT2,
        C.CONT3,
    ]
    # a truncated sequence shows at the byte that breaks it; bad leads and strays are invalid
    assert codes_of(scheme, b"\xe2\x82A\xc0\x80\xed\xa0") == [
        C.LEAD3,
        C.CONT1,
        C.LETTER,
        C.INVALID,
        C.INVALID,
        C.LEAD3,
        C.INVALID,
    ]


@pytest.mark.parametrize("text", MULTILINGUAL)
def test_utf8_on_valid_text_follows_the_characters(text):
    """On valid UTF-8, every character gives its ASCII class or lead + continuations 1..k."""
    expected = []
    for ch in text:
        enc = ch.encode()
        if len(enc) == 1:
            expected.append(_ascii_code(enc[0]))
        else:
            expected += [C.LEAD2 + len(enc) - 2] + [C.CONT1 + k for k in range(len(enc) - 1)]
    assert codes_of(build_nibble_scheme("utf8"), text.encode()) == expected


@pytest.mark.parametrize("data", [t.encode() for t in MULTILINGUAL] + INVALID + [b" ".join(INVALID) + "€".encode()])
def test_utf8_matches_pythons_decoder(data):
    assert codes_of(build_nibble_scheme("utf8"), data) == oracle(data)


def _mixed_bytes():
    piece = st.one_of(
        st.binary(max_size=4),
        st.text(max_size=4).map(str.encode),
        st.sampled_from(INVALID),
        st.lists(st.integers(0x80, 0xFF), max_size=4).map(bytes),
    )
    return st.lists(piece, max_size=16).map(b"".join)


@settings(max_examples=200, deadline=None)
@given(data=_mixed_bytes())
def test_utf8_matches_pythons_decoder_on_random_bytes(data):
    scheme = build_nibble_scheme("utf8")
    codes = codes_of(scheme, data)
    assert codes == oracle(data)
    # and against the full decoder: bytes it decodes carry their character's codes; bytes it
    # rejects are INVALID or part of a prefix that was valid when read (cut short later)
    pos = 0
    for ch in data.decode("utf-8", errors="surrogateescape"):
        if 0xDC80 <= ord(ch) <= 0xDCFF:
            assert codes[pos] == C.INVALID or C.LEAD2 <= codes[pos] <= C.CONT3
            pos += 1
        else:
            n = len(ch.encode())
            assert codes[pos : pos + n] == codes_of(scheme, ch.encode())
            pos += n


@settings(max_examples=60, deadline=None)
@given(a=_mixed_bytes(), b=_mixed_bytes())
@example(a=b"\xf0\x9f", b=b"\x98\x80")  # an emoji split by a document start is two invalid halves
def test_utf8_document_starts_stop_the_look_back(a, b):
    scheme = build_nibble_scheme("utf8")
    doc_start = torch.zeros(len(a) + len(b), dtype=torch.bool)
    if b:
        doc_start[len(a)] = True
    assert codes_of(scheme, a + b, doc_start=doc_start) == codes_of(scheme, a) + codes_of(scheme, b)


def test_utf8_needs_exactly_three_bytes_of_context():
    scheme = build_nibble_scheme("utf8")
    emoji = "😀".encode()
    last = torch.tensor([emoji[3]])
    assert scheme(last, context=torch.tensor(list(emoji[:3]))).tolist() == [C.CONT3]
    assert scheme(last, context=torch.tensor(list(emoji[1:3]))).tolist() == [C.INVALID]
    assert scheme.context_bytes == 3


def test_utf8_on_the_udhr_corpus():
    """Every language's sample is valid UTF-8: no INVALID code, and the characters' codes."""
    pytest.importorskip("gflanguages")
    from lightning_film.data.corpora import load_corpus

    docs = load_corpus("udhr")
    scheme = build_nibble_scheme("utf8")
    data = b"".join(docs)
    codes = scheme(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    assert int((codes == C.INVALID).sum()) == 0
    leads = (codes >= C.LEAD2) & (codes <= C.LEAD4)
    assert int(leads.sum()) == sum(len(d.decode()) for d in docs) - int((codes <= C.PUNCT).sum())
