"""``ByteDataModule``: raw bytes, their nibbles and the dead-energy accumulator, in windows.

Legend: B batch, N ``seq_len`` (inputs per window), S number of sources.

Sources are corpus names (``lightning-film list corpora``), files, folders (every file below,
recursively, in sorted order) or glob patterns, in any mix. A path is read as raw bytes, never
decoded, and read into memory, never memory-mapped (a mapped file truncated while fit reads it
would kill the process with SIGBUS). Two sources may not read the same file. Every file and every corpus item is
one *document*: the nibble context and the accumulator restart there.

Each source is cut into ``split_blocks`` contiguous blocks of near-equal size, dealt to
train/val/test by a permutation seeded with ``split_seed`` and the source's name, so a source is
split the same whatever else is loaded, and whatever the training ``seed`` (runs over several
seeds are scored on the same bytes). The split depends on sizes only, never on content.

Nibbles and ``acc`` are computed once per source in :meth:`ByteDataModule.setup`, over the whole
stream (2 more bytes of memory per byte), so every window gets the
values the full stream has, which are the values streaming inference computes
(:class:`~lightning_film.data.accumulator.StreamingAccumulator`). The rare-pair table comes from
training positions only: pairs whose bytes and nibble context all lie inside a training block.

Training samples ``train_windows_per_epoch`` random windows of N + 1 bytes lying inside training
blocks, uniformly over all such windows of all sources (so sources mix by size); the window
``index`` of epoch ``epoch`` is a pure function of ``(seed, epoch, index)``
(:meth:`ByteDataModule.train_window`), so a resumed fit sees the same order. Validation and
test walk their blocks in non-overlapping windows: every byte of the split is a target exactly
once (except a source's very first byte, which has nothing before it); the last window of a
block is padded and ``mask`` marks its real targets.

A batch is a dict::

    bytes    (B, N + 1) long   inputs are bytes[:, :-1], targets bytes[:, 1:]
    nibbles  (B, N) long       4-bit ids of the inputs
    acc      (B, N) long       accumulator of the inputs, 0..255
    mask     (B, N) bool       True where the target is real (False: padding)
    source   (B,) long         index into ``dm.source_names``

The model must take windows of N tokens: call ``dm.connect(max_seq_len=model_context)`` once, or
check ``dm.seq_len`` against the model's context yourself.
"""

from __future__ import annotations

import codecs
import difflib
import functools
import glob
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lightning_film.data.accumulator import accumulate, pair_counts, rare_table
from lightning_film.data.corpora import CORPORA, load_corpus
from lightning_film.data.nibbles import NibbleScheme, build_nibble_scheme
from lightning_film.data.sampling import EvalSampler, ResumableTrainData, random_keys, window_keys
from lightning_film.errors import check_int

__all__ = ["ByteDataModule", "ByteSource", "prompt_bytes", "window_keys"]

SPLITS = ("train", "val", "test")
_CHUNK = 1 << 22  # bytes per step when computing nibbles and acc (bounds temporary memory)
_GLOB_CHARS = "*?["


@dataclass
class ByteSource:
    """One source: its bytes (docs concatenated), document starts, and derived streams."""

    name: str
    data: np.ndarray  # (n,) uint8
    doc_offsets: np.ndarray  # (D,) int64, document start offsets, the first 0
    nibbles: np.ndarray | None = None  # (n,) uint8
    acc: np.ndarray | None = None  # (n,) uint8
    segments: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # split -> [(start, end))

    def doc_start(self, start: int, end: int) -> np.ndarray:
        """Bool (end - start,): True where a document starts."""
        mask = np.zeros(end - start, dtype=bool)
        offs = self.doc_offsets[(self.doc_offsets >= start) & (self.doc_offsets < end)]
        mask[offs - start] = True
        return mask


# -- reading sources -----------------------------------------------------------------------------
def _source_files(spec: str) -> list[Path] | None:
    """The files a path/folder/glob spec names, or None if it names nothing on disk."""
    path = Path(spec).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    if any(c in spec for c in _GLOB_CHARS):
        return sorted(Path(p) for p in glob.glob(os.path.expanduser(spec), recursive=True) if Path(p).is_file())
    return None


def _unknown_source(spec: str) -> ValueError:
    corpora = CORPORA.names()
    close = difflib.get_close_matches(spec, corpora, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ValueError(
        f"source {spec!r} is neither a registered corpus nor an existing file, folder or glob pattern.{hint} "
        f"Registered corpora: {', '.join(corpora)}; or give a path to raw bytes."
    )


def _check_disjoint(sources: list[str]) -> None:
    """Refuse two sources that read the same file (``text.txt`` and ``./text.txt``, a file and its
    folder): each source is split by its own name, so one copy's held-out bytes would be the
    other's training bytes."""
    owners: dict[Path, str] = {}
    for spec in sources:
        for path in [] if spec in CORPORA else _source_files(spec) or []:
            real = Path(path).resolve()
            if real in owners and owners[real] != spec:
                raise ValueError(
                    f"sources {owners[real]!r} and {spec!r} both read {str(real)!r}: its bytes would be training data "
                    f"of one and held-out data of the other; list each file once"
                )
            owners[real] = spec


def check_source(spec: str) -> None:
    """Raise a clear error if ``spec`` names no corpus and no non-empty file (cheap: no reading)."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"a source must be a corpus name or a path (a non-empty string), got {spec!r}")
    if spec in CORPORA:
        return
    files = _source_files(spec)
    if files is None:
        raise _unknown_source(spec)
    if not files:
        raise ValueError(f"source {spec!r} ({'folder' if Path(spec).is_dir() else 'glob'}) contains no files")
    if len(files) == 1 and Path(spec).is_file() and files[0].stat().st_size == 0:
        raise ValueError(f"source file {spec!r} is empty (0 bytes)")


def _read_file(path: Path, spec: str) -> np.ndarray:
    """The bytes of ``path``, all of them: a file that shrinks or grows while being read is an error."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        data = np.frombuffer(f.read(size + 1), dtype=np.uint8)
    if len(data) != size:
        raise ValueError(
            f"source {spec!r}: file {str(path)!r} changed while being read ({len(data)} bytes, "
            f"{size} a moment before); read it when nothing is writing it"
        )
    return data


def read_source(spec: str) -> ByteSource:
    """The bytes of one source spec: a corpus name, a file, a folder or a glob pattern."""
    check_source(spec)
    if spec in CORPORA:
        docs = [bytes(d) for d in load_corpus(spec) if len(d)]
        data = np.frombuffer(b"".join(docs), dtype=np.uint8)
        lengths = [len(d) for d in docs]
    else:
        files = [f for f in _source_files(spec) or [] if f.stat().st_size > 0]
        if not files:
            raise ValueError(f"source {spec!r}: every file it names is empty (0 bytes)")
        # read, never memory-mapped: a mapped file truncated while fit reads it kills the process with
        # SIGBUS (no checkpoint, no message); a read sees the change and says so
        parts = [_read_file(f, spec) for f in files]
        data = np.concatenate(parts)
        lengths = [len(part) for part in parts]
    if len(data) == 0:
        raise ValueError(f"source {spec!r} is empty (0 bytes)")
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return ByteSource(spec, data, offsets)


# -- splits and windows ---------------------------------------------------------------------------
def split_segments(
    n: int, *, seq_len: int, split_blocks: int, val_fraction: float, test_fraction: float, seed: int, name: str
) -> dict[str, list[tuple[int, int]]]:
    """Contiguous ``[start, end)`` segments of each split of a source of ``n`` bytes.

    Blocks hold at least ``seq_len + 1`` bytes; each split with a non-zero fraction gets at
    least one block, train at least one.
    """
    window = seq_len + 1
    fractions = {"val": val_fraction, "test": test_fraction}
    needed = 1 + sum(f > 0 for f in fractions.values())
    if n < needed * window:
        raise ValueError(
            f"source {name!r} has {n} bytes, fewer than one window of seq_len + 1 = {window} bytes for each of "
            f"its {needed} splits ({needed * window} bytes); lower seq_len or add data"
        )
    blocks = max(needed, min(split_blocks, n // window))
    counts = {s: (max(1, round(f * blocks)) if f > 0 else 0) for s, f in fractions.items()}
    while counts["val"] + counts["test"] >= blocks:  # keep a training block
        big = max(counts, key=lambda s: counts[s])
        counts[big] -= 1
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    owner = np.zeros(blocks, dtype=np.int64)  # 0 train, 1 val, 2 test
    perm = rng.permutation(blocks)
    owner[perm[: counts["val"]]] = 1
    owner[perm[counts["val"] : counts["val"] + counts["test"]]] = 2
    bounds = np.linspace(0, n, blocks + 1).round().astype(np.int64)
    segments: dict[str, list[tuple[int, int]]] = {s: [] for s in SPLITS}
    for b in range(blocks):
        seg = segments[SPLITS[owner[b]]]
        start, end = int(bounds[b]), int(bounds[b + 1])
        if seg and seg[-1][1] == start:  # merge neighbours of the same split
            seg[-1] = (seg[-1][0], end)
        else:
            seg.append((start, end))
    return segments


def _item(src: ByteSource, source: int, start: int, targets: int, seq_len: int) -> dict[str, Tensor]:
    """Inputs at ``[start, start + targets)``, targets one byte later, padded to ``seq_len``."""
    window = np.zeros(seq_len + 1, dtype=np.int64)
    window[: targets + 1] = src.data[start : start + targets + 1]
    nibbles, acc = np.zeros(seq_len, dtype=np.int64), np.zeros(seq_len, dtype=np.int64)
    nibbles[:targets] = src.nibbles[start : start + targets]
    acc[:targets] = src.acc[start : start + targets]
    mask = np.arange(seq_len) < targets
    return {
        "bytes": torch.from_numpy(window),
        "nibbles": torch.from_numpy(nibbles),
        "acc": torch.from_numpy(acc),
        "mask": torch.from_numpy(mask),
        "source": torch.tensor(source),
    }


class _TrainWindows(Dataset):
    """Window number (from the sampler) -> a full training window."""

    def __init__(self, sources: list[ByteSource], seq_len: int) -> None:
        self.sources, self.seq_len = sources, seq_len
        rows = [
            (i, a, b - a - seq_len) for i, s in enumerate(sources) for a, b in s.segments["train"] if b - a > seq_len
        ]
        self.seg_source = np.array([r[0] for r in rows], dtype=np.int64)
        self.seg_start = np.array([r[1] for r in rows], dtype=np.int64)
        self.cum = np.cumsum([r[2] for r in rows]).astype(np.int64)  # windows up to each segment
        self.total = int(self.cum[-1])

    def locate(self, key: int) -> tuple[int, int]:
        """Window number -> (source index, start offset)."""
        seg = int(np.searchsorted(self.cum, key, side="right"))
        before = int(self.cum[seg - 1]) if seg else 0
        return int(self.seg_source[seg]), int(self.seg_start[seg]) + key - before

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, key: int) -> dict[str, Tensor]:
        source, start = self.locate(int(key))
        return _item(self.sources[source], source, start, self.seq_len, self.seq_len)


class _HeldOutWindows(Dataset):
    """Non-overlapping windows whose targets cover a split once."""

    def __init__(self, sources: list[ByteSource], split: str, seq_len: int) -> None:
        self.sources, self.seq_len = sources, seq_len
        self.items: list[tuple[int, int, int]] = []  # (source, input start, number of targets)
        for i, s in enumerate(sources):
            for a, b in s.segments[split]:
                first = max(a, 1)  # byte 0 of a source has no input before it
                for t in range(first, b, seq_len):
                    self.items.append((i, t - 1, min(seq_len, b - t)))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        source, start, targets = self.items[i]
        return _item(self.sources[source], source, start, targets, self.seq_len)


# -- derived streams -------------------------------------------------------------------------------
def compute_nibbles(src: ByteSource, scheme: NibbleScheme) -> np.ndarray:
    """Nibbles (n,) uint8 of a whole source, chunk by chunk, with documents restarting the context."""
    n, out = len(src.data), np.empty(len(src.data), dtype=np.uint8)
    for i in range(0, n, _CHUNK):
        j = min(i + _CHUNK, n)
        x = torch.from_numpy(np.array(src.data[i:j]))
        context = torch.from_numpy(np.array(src.data[max(0, i - scheme.context_bytes) : i]))
        out[i:j] = scheme(x, context, torch.from_numpy(src.doc_start(i, j))).numpy()
    return out


def training_pair_counts(src: ByteSource, context_bytes: int) -> Tensor:
    """Counts (16, 16) of the pairs whose bytes and nibble context all lie in training segments."""
    counts = torch.zeros(16, 16, dtype=torch.long)
    margin = context_bytes + 1  # the nibble of byte t-1 reads bytes t-1-context_bytes .. t-1
    for a, b in src.segments["train"]:
        for i in range(a + margin, b, _CHUNK):
            j = min(i + _CHUNK, b)
            lo = i - 1  # the first pair counted ends at i and starts at i - 1
            nib = torch.from_numpy(src.nibbles[lo:j])
            valid = torch.ones(j - lo, dtype=torch.bool)
            valid[0] = False
            counts += pair_counts(nib, torch.from_numpy(src.doc_start(lo, j)), valid)
    return counts


def compute_acc(src: ByteSource, table: Tensor) -> np.ndarray:
    """Accumulator (n,) uint8 of a whole source, carrying the count from chunk to chunk."""
    n, out = len(src.data), np.empty(len(src.data), dtype=np.uint8)
    count, prev = 0, None
    for i in range(0, n, _CHUNK):
        j = min(i + _CHUNK, n)
        nib = torch.from_numpy(src.nibbles[i:j])
        acc = accumulate(nib, table, count, prev, torch.from_numpy(src.doc_start(i, j)))
        out[i:j] = acc.numpy()
        count, prev = int(acc[-1]), int(nib[-1])
    return out


# -- the DataModule ---------------------------------------------------------------------------------
class ByteDataModule(ResumableTrainData, LightningDataModule):
    """Raw-byte windows with nibbles and the dead-energy accumulator (see the module docstring).

    Args:
        sources: corpus names, files, folders or glob patterns (any mix); each is reported apart.
        seq_len: inputs per window (N); a window reads N + 1 bytes.
        batch_size: windows per batch.
        val_fraction: share of each source's blocks held out for validation.
        test_fraction: share of each source's blocks held out for test.
        split_blocks: contiguous blocks per source that the split deals out (fewer for small
            sources: a block holds at least seq_len + 1 bytes).
        split_seed: seed of the split; kept apart from ``seed`` so runs over several seeds are
            scored on the same bytes.
        nibble_scheme: a registered nibble scheme (``lightning-film list "nibble schemes"``).
        rare_fraction: share of the training pair mass whose rarest pair types are rare events.
        train_windows_per_epoch: windows per training epoch; default: the training bytes over
            seq_len + 1 (one epoch reads about as many bytes as the training split holds).
        seed: seed of the training window order.
        num_workers: DataLoader worker processes.
        prompts: texts for ``predict`` to continue (one sample each). They are bytes to the model:
            UTF-8 encoded, then Python bytes-literal escapes are applied, so ``\\xNN`` gives any
            byte, valid UTF-8 or not (``"\\xff\\xfeTo be"``), and ``\\\\`` a backslash.
    """

    def __init__(
        self,
        sources: list[str] = ["shakespeare", "udhr"],  # noqa: B006  (copied below; shown in --help)
        seq_len: int = 256,
        batch_size: int = 32,
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        split_blocks: int = 100,
        split_seed: int = 0,
        nibble_scheme: str = "utf8",
        rare_fraction: float = 0.05,
        train_windows_per_epoch: int | None = None,
        seed: int = 0,
        num_workers: int = 0,
        prompts: list[str] | None = None,
    ) -> None:
        super().__init__()
        sources = [sources] if isinstance(sources, str) else list(sources)
        prompts = [prompts] if isinstance(prompts, str) else prompts
        if prompts is not None and (not prompts or not all(isinstance(p, str) and p for p in prompts)):
            raise ValueError(f"prompts must be a list of non-empty strings, got {prompts!r}")
        self._prompts = None if prompts is None else [prompt_bytes(p) for p in prompts]
        check_int("seq_len", seq_len, 1)
        check_int("batch_size", batch_size, 1)
        check_int("split_blocks", split_blocks, 1)
        check_int("num_workers", num_workers, 0)
        if train_windows_per_epoch is not None:
            check_int("train_windows_per_epoch", train_windows_per_epoch, 1)
        for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if val_fraction + test_fraction >= 1.0:
            raise ValueError(
                f"val_fraction + test_fraction must leave data for training (sum < 1), "
                f"got {val_fraction} + {test_fraction}"
            )
        if not 0.0 <= rare_fraction <= 1.0:
            raise ValueError(f"rare_fraction must be in [0, 1], got {rare_fraction}")
        if not sources:
            raise ValueError(f"sources must name at least one corpus or path; registered corpora: {CORPORA.names()}")
        if len(set(sources)) != len(sources):
            raise ValueError(f"sources lists a source twice: {sources}")
        for spec in sources:
            check_source(spec)
        _check_disjoint(sources)
        self.scheme = build_nibble_scheme(nibble_scheme)
        self.save_hyperparameters()
        self.source_names = sources
        self.seq_len, self.batch_size, self.num_workers, self.seed = seq_len, batch_size, num_workers, seed
        self.sources: list[ByteSource] = []
        self.rare_table: Tensor | None = None  # bool (16, 16), set in setup()
        self._train: _TrainWindows | None = None

    def connect(self, max_seq_len: int) -> None:
        """The one setting only the model knows: its context. Windows must fit in it."""
        if self.seq_len > max_seq_len:
            raise ValueError(
                f"data seq_len={self.seq_len} is longer than the model's context max_seq_len={max_seq_len}; "
                f"set data.seq_len <= {max_seq_len}"
            )

    def setup(self, stage: str | None = None) -> None:
        if self.sources:  # once: the table and the streams do not depend on the stage
            return
        hp = self.hparams
        sources = [read_source(spec) for spec in self.source_names]
        for src in sources:
            src.segments = split_segments(
                len(src.data),
                seq_len=self.seq_len,
                split_blocks=hp.split_blocks,
                val_fraction=hp.val_fraction,
                test_fraction=hp.test_fraction,
                seed=hp.split_seed,
                name=src.name,
            )
            src.nibbles = compute_nibbles(src, self.scheme)
        counts = sum(training_pair_counts(src, self.scheme.context_bytes) for src in sources)
        self.sources = sources
        self.use_rare_table(rare_table(counts, hp.rare_fraction))
        self._train = _TrainWindows(sources, self.seq_len)

    def use_rare_table(self, table: Tensor) -> None:
        """Compute every source's ``acc`` with this bool (16, 16) table (a checkpoint's, say)."""
        self._need_setup()
        table = torch.as_tensor(table).detach().cpu().to(torch.bool)
        if table.numel() != 256:
            raise ValueError(f"a rare-pair table has 16 x 16 entries, got shape {tuple(table.shape)}")
        self.rare_table = table.reshape(16, 16).clone()
        for src in self.sources:
            src.acc = compute_acc(src, self.rare_table)

    # -- training windows -------------------------------------------------------------------------
    @property
    def train_windows_per_epoch(self) -> int:
        self._need_setup()
        if self.hparams.train_windows_per_epoch is not None:
            return self.hparams.train_windows_per_epoch
        train_bytes = sum(b - a for s in self.sources for a, b in s.segments["train"])
        return max(1, train_bytes // (self.seq_len + 1))

    def train_window(self, epoch: int, index: int) -> tuple[int, int]:
        """(source index, start offset) of training window ``index`` of ``epoch``: pure in (seed, epoch, index)."""
        self._need_setup()
        key = int(window_keys(self.seed, epoch, index, self._train.total)[0])
        return self._train.locate(key)

    # -- loaders ----------------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        self._need_setup()
        keys = functools.partial(random_keys, self.seed, self._train.total)
        sampler = self.train_sampler(keys, self.train_windows_per_epoch)
        return self._loader(self._train, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        data = self._held_out("val")
        return self._loader(data, sampler=EvalSampler(len(data)))

    def test_dataloader(self) -> DataLoader:
        data = self._held_out("test")
        return self._loader(data, sampler=EvalSampler(len(data)))

    def predict_dataloader(self) -> DataLoader:
        """The prompts as raw bytes, one per batch: ``[b"..."]``."""
        if self._prompts is None:
            raise ValueError("predict needs prompts to continue: set data.prompts, e.g. --data.prompts '[\"ROMEO:\"]'")
        return DataLoader(self._prompts, batch_size=1, shuffle=False, collate_fn=list)

    def _held_out(self, split: str) -> _HeldOutWindows:
        self._need_setup()
        data = _HeldOutWindows(self.sources, split, self.seq_len)
        if not len(data):
            raise ValueError(f"the {split} split is empty: set {split}_fraction > 0 to get a {split} loader")
        return data

    def _need_setup(self) -> None:
        if not self.sources:
            raise RuntimeError("ByteDataModule.setup() must run first (the Trainer calls it)")


def prompt_bytes(prompt: str) -> bytes:
    """A prompt's bytes: UTF-8, then bytes-literal escapes (``\\xNN``, ``\\n``, ``\\\\``) applied."""
    try:
        data = codecs.escape_decode(prompt.encode("utf-8", "surrogateescape"))[0]
    except ValueError as err:
        raise ValueError(
            f"prompt {prompt!r} has a bad escape ({err}); write \\xNN for a byte and \\\\ for a backslash"
        ) from None
    if not data:
        raise ValueError(f"prompt {prompt!r} is empty after escapes; give at least one byte")
    return data
