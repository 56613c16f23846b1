"""The dead-energy accumulator: the rare table, and windowed / streaming / whole-stream agreement."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_film.data.accumulator import StreamingAccumulator, accumulate, pair_counts, rare_events, rare_table
from lightning_film.data.nibbles import build_nibble_scheme, list_nibble_schemes


def naive_acc(nibbles: list[int], table: torch.Tensor, doc_starts: set[int]) -> list[int]:
    """The seed's loop: ``acc = (acc + 1) & 0xFF`` on each rare pair, restarting at documents."""
    out, acc = [], 0
    for t, cur in enumerate(nibbles):
        if t == 0 or t in doc_starts:
            acc = 0
        elif table[nibbles[t - 1], cur]:
            acc = (acc + 1) & 0xFF
        out.append(acc)
    return out


def random_table(seed: int) -> torch.Tensor:
    return torch.rand(16, 16, generator=torch.Generator().manual_seed(seed)) < 0.5


# -- the table ------------------------------------------------------------------------------------
def test_rare_table_takes_the_rarest_pairs_by_mass_ties_by_id():
    counts = torch.full((256,), 100)
    counts[[7, 3, 200]] = 0  # never seen: always rare
    counts[[10, 5, 9]] = 1  # a three-way tie at the cut: the lowest ids win
    # a mass of 2 admits the three zeros and two of the three ones
    table = rare_table(counts, rare_fraction=2 / int(counts.sum()))
    assert table.shape == (16, 16) and table.dtype == torch.bool
    assert set(table.reshape(-1).nonzero().reshape(-1).tolist()) == {3, 7, 200, 5, 9}
    assert not table.reshape(-1)[10]


def test_rare_table_mass_bound_and_extremes():
    counts = torch.randint(0, 1000, (16, 16), generator=torch.Generator().manual_seed(0))
    for fraction in (0.0, 0.01, 0.05, 0.3):
        table = rare_table(counts, fraction)
        assert int(counts[table].sum()) <= fraction * int(counts.sum())
        # maximal: the rarest pair left out would break the bound
        left = counts[~table]
        assert int(counts[table].sum()) + int(left.min()) > fraction * int(counts.sum())
        assert bool(table[counts == 0].all())
    assert bool(rare_table(counts, 1.0).all())
    with pytest.raises(ValueError, match=r"rare_fraction must be in \[0, 1\], got 1.5"):
        rare_table(counts, 1.5)


def test_pair_counts_skip_document_starts_and_invalid_positions():
    nib = torch.tensor([1, 2, 1, 2, 3])
    doc_start = torch.tensor([True, False, True, False, False])
    counts = pair_counts(nib, doc_start)
    assert counts[1, 2] == 2 and counts[2, 3] == 1 and int(counts.sum()) == 3  # not (2, 1): a new document
    valid = torch.tensor([True, True, True, True, False])
    assert int(pair_counts(nib, doc_start, valid).sum()) == 2


# -- accumulate ----------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(
    nibbles=st.lists(st.integers(0, 15), min_size=1, max_size=600),
    starts=st.sets(st.integers(1, 599), max_size=4),
    seed=st.integers(0, 5),
)
def test_accumulate_equals_the_naive_loop(nibbles, starts, seed):
    table = random_table(seed)
    starts = {s for s in starts if s < len(nibbles)}
    doc_start = torch.zeros(len(nibbles), dtype=torch.bool)
    doc_start[sorted(starts)] = True
    acc = accumulate(torch.tensor(nibbles), table, doc_start=doc_start)
    assert acc.dtype == torch.uint8
    assert acc.tolist() == naive_acc(nibbles, table, starts)


@settings(max_examples=60, deadline=None)
@given(
    nibbles=st.lists(st.integers(0, 15), min_size=2, max_size=400),
    cut=st.integers(1, 399),
    start=st.one_of(st.none(), st.integers(1, 399)),
)
def test_window_given_count_and_prev_equals_full_stream(nibbles, cut, start):
    table = random_table(1)
    nib = torch.tensor(nibbles)
    cut = min(cut, len(nibbles) - 1)
    doc_start = torch.zeros(len(nibbles), dtype=torch.bool)
    if start is not None and start < len(nibbles):
        doc_start[start] = True
    full = accumulate(nib, table, doc_start=doc_start)
    # the count before the window is the full stream's acc there (any multiple of 256 more is fine)
    count = int(full[cut - 1]) + 256 * 3
    window = accumulate(nib[cut:], table, count=count, prev=nib[cut - 1], doc_start=doc_start[cut:])
    assert torch.equal(window, full[cut:])


def test_batched_windows_carry_their_own_history():
    table = random_table(2)
    nib = torch.randint(0, 16, (1000,), generator=torch.Generator().manual_seed(0))
    full = accumulate(nib, table)
    starts = torch.tensor([1, 100, 517, 900])
    windows = torch.stack([nib[s : s + 64] for s in starts.tolist()])  # (4, 64)
    acc = accumulate(windows, table, count=full[starts - 1].long(), prev=nib[starts - 1])  # (4, 64)
    assert torch.equal(acc, torch.stack([full[s : s + 64] for s in starts.tolist()]))


def test_accumulator_counts_wrap_at_256():
    table = torch.ones(16, 16, dtype=torch.bool)
    acc = accumulate(torch.zeros(600, dtype=torch.long), table)
    assert acc.tolist() == [t & 0xFF for t in range(600)]
    assert int(rare_events(torch.zeros(600, dtype=torch.long), table).sum()) == 599


# -- streaming ------------------------------------------------------------------------------------
@pytest.mark.parametrize("scheme_name", list_nibble_schemes())
@settings(max_examples=40, deadline=None)
@given(
    data=st.binary(min_size=1, max_size=300),
    cuts=st.lists(st.integers(0, 300), max_size=8),
    resets=st.lists(st.integers(1, 299), max_size=2),
    seed=st.integers(0, 3),
)
def test_streaming_chunk_by_chunk_equals_the_whole_stream(scheme_name, data, cuts, resets, seed):
    scheme = build_nibble_scheme(scheme_name)
    table = random_table(seed)
    x = torch.tensor(list(data), dtype=torch.uint8)
    doc_start = torch.zeros(len(data), dtype=torch.bool)
    doc_start[[r for r in resets if r < len(data)]] = True
    nibbles = scheme(x, doc_start=doc_start)
    expected = accumulate(nibbles, table, doc_start=doc_start)

    stream = StreamingAccumulator(scheme, table)
    got_nib, got_acc = [], []
    bounds = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    for a, b in itertools.pairwise(bounds):
        nib, acc = stream(x[a:b], doc_start=doc_start[a:b])
        got_nib.append(nib)
        got_acc.append(acc)
    assert torch.equal(torch.cat(got_nib), nibbles)
    assert torch.equal(torch.cat(got_acc), expected)


def test_streaming_reset_starts_a_new_document():
    table = torch.ones(16, 16, dtype=torch.bool)
    stream = StreamingAccumulator("utf8", table)
    stream(torch.tensor(list(b"abc\xe2\x82")))
    stream.reset()
    nib, acc = stream(torch.tensor([0xAC, 0x41]))  # the euro sign's last byte, now a stray
    assert nib.tolist()[0] == 11 and acc.tolist() == [0, 1]
