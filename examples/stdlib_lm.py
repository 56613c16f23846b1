"""A class-conditional byte-level language model on data that ships with Python itself.

The corpus is the ``.py`` source of a few CPython standard-library packages (present in
every CPython >= 3.10), read as raw bytes; a window's class is the package it comes from.
``val/bpb_other_class`` (the same windows told the wrong package) shows how much the model
reads its conditioning. What the class can save is small: at most log2(C) / N bits per
byte (0.023 for 8 classes and N = 128) against ``--model.conditioner none``, more for short
windows. The job: ``configs/example.yaml``.

Legend: B batch, N bytes per window (``seq_len``), D width (``dim``), V = 256 byte values.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import sysconfig
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule, LightningModule
from torch import nn
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from lightning_film.nn import Conditioning, Transformer

#: Packages present in every CPython >= 3.10; a window's class is its index here.
DEFAULT_PACKAGES = ("asyncio", "concurrent", "email", "http", "importlib", "json", "unittest", "xml")
_SKIP_DIRS = {"test", "tests", "idle_test", "__pycache__"}  # keep test suites out of the corpus
_HELD_OUT = 0.1  # share of each package's bytes for val, and again for test
STDLIB = Path(sysconfig.get_paths()["stdlib"])


def available_packages() -> list[str]:
    """Names of the standard-library packages (directories with an ``__init__.py``)."""
    return sorted(p.name for p in STDLIB.iterdir() if (p / "__init__.py").is_file() and p.name[0] != "_")


def _check_ints(who: str, minimum: int, **values: Any) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ValueError(f"{who}: {name} must be an int >= {minimum}, got {value!r}")


def split_files(package: str) -> dict[str, list[Path]]:
    """A package's source files -> {"train", "val", "test"}, the same on every machine.

    In the order of the SHA-1 of their paths, files go to val, else test, while they fit in
    its share (``_HELD_OUT`` of the bytes; twice that for its first file), else to train.
    """
    pkg = STDLIB / package
    files = [f for f in pkg.rglob("*.py") if not _SKIP_DIRS & set(f.relative_to(pkg).parts[:-1])]
    files.sort(key=lambda f: hashlib.sha1(f.relative_to(STDLIB).as_posix().encode()).hexdigest())
    sizes = [f.stat().st_size for f in files]
    out: dict[str, list[Path]] = {"train": [], "val": [], "test": []}
    held, share = {"val": 0, "test": 0}, _HELD_OUT * sum(sizes)
    for f, size in zip(files, sizes):
        fits = [s for s in held if held[s] + size <= share or (held[s] == 0 and size <= 2 * share)]
        split = fits[0] if fits else "train"
        out[split].append(f)
        held[split] = held.get(split, 0) + size
    if not all(out.values()):
        raise ValueError(f"StdlibBytes: package {package!r} has too few source files ({len(files)}) to split")
    return out


class ByteWindows(Dataset):
    """Item i -> (x (N,), y (N,), c ()): the i-th window of the class streams, one after another."""

    def __init__(self, streams: list[torch.Tensor], seq_len: int) -> None:
        self.streams, self.seq_len = streams, seq_len
        self.counts = [len(s) - seq_len for s in streams]  # windows per class
        self.starts = [sum(self.counts[:c]) for c in range(len(streams))]  # first item of each class

    def __len__(self) -> int:
        return sum(self.counts)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c = bisect.bisect_right(self.starts, i) - 1
        o = i - self.starts[c]
        w = self.streams[c][o : o + self.seq_len + 1].long()  # (N + 1,)
        return w[:-1], w[1:], torch.tensor(c)


class StdlibBytes(LightningDataModule):
    """Byte windows of CPython stdlib packages; the class of a window is its package's index.

    Args:
        packages: stdlib package names, one class each (default: ``DEFAULT_PACKAGES``).
        seq_len: N, bytes per window (the model predicts each next byte).
        batch_size: windows per batch.
        train_windows_per_epoch: random training windows drawn per epoch.
        val_windows: fixed, evenly spaced windows for validation (and as many for test).
        seed: seed of the training windows.
        num_workers: DataLoader workers.
    """

    def __init__(
        self,
        packages: list[str] | None = None,
        seq_len: int = 128,
        batch_size: int = 32,
        train_windows_per_epoch: int = 3200,
        val_windows: int = 512,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        _check_ints(
            "StdlibBytes",
            1,
            seq_len=seq_len,
            batch_size=batch_size,
            val_windows=val_windows,
            train_windows_per_epoch=train_windows_per_epoch,
        )
        _check_ints("StdlibBytes", 0, num_workers=num_workers)
        self.packages = list(DEFAULT_PACKAGES if packages is None else packages)
        available = available_packages()
        unknown = [p for p in self.packages if p not in available]
        if unknown or not self.packages or len(set(self.packages)) != len(self.packages):
            why = f" (unknown: {unknown})" if unknown else ""
            raise ValueError(
                f"StdlibBytes: packages must be distinct stdlib packages, got {self.packages}{why}; "
                f"available in {STDLIB}: {', '.join(available)}"
            )
        self.seq_len, self.batch_size, self.seed, self.num_workers = seq_len, batch_size, seed, num_workers
        self.train_windows_per_epoch, self.val_windows = train_windows_per_epoch, val_windows
        self.streams: dict[str, list[torch.Tensor]] = {}

    @property
    def num_classes(self) -> int:
        return len(self.packages)

    def setup(self, stage: str | None = None) -> None:
        if self.streams:
            return
        self.streams = {"train": [], "val": [], "test": []}
        for package in self.packages:
            for split, files in split_files(package).items():
                data = b"\n".join(f.read_bytes() for f in files)
                if len(data) <= self.seq_len:
                    raise ValueError(f"StdlibBytes: {package!r} has {len(data)} {split} bytes; seq_len is too long")
                self.streams[split].append(torch.frombuffer(bytearray(data), dtype=torch.uint8))

    def _loader(self, split: str) -> DataLoader:
        data = ByteWindows(self.streams[split], self.seq_len)
        if split == "train":  # random windows, each class equally likely, seeded
            weights = torch.cat([torch.full((n,), 1.0 / n) for n in data.counts])
            generator = torch.Generator().manual_seed(self.seed)
            sampler: Any = WeightedRandomSampler(weights, self.train_windows_per_epoch, generator=generator)
        else:  # fixed, evenly spaced windows, as many from every class
            per_class = max(1, self.val_windows // self.num_classes)
            spaced = [torch.linspace(0, n - 1, per_class).long() + s for s, n in zip(data.starts, data.counts)]
            sampler = torch.cat(spaced).tolist()
        return DataLoader(data, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    predict_dataloader = test_dataloader


class ConditionalByteLM(LightningModule):
    """Causal byte transformer conditioned on a class (the stdlib package of the window).

    Args:
        dim: D, the width (also the conditioning width).
        depth: transformer blocks.
        num_heads: attention heads (divides ``dim``).
        seq_len: the longest window the learned positions cover.
        num_classes: classes the class embedding covers (at least the data's).
        normalizer: a registered normalizer name or ``{"name": ..., **options}``.
        conditioner: a registered conditioner name, ``"module:Class"`` or ``{"name": ..., ...}``.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        log_other_class: log ``val/bpb_other_class``, the bits per byte given the wrong package.
    """

    def __init__(
        self,
        dim: int = 128,
        depth: int = 2,
        num_heads: int = 4,
        seq_len: int = 128,
        num_classes: int = 8,
        normalizer: str | dict = "rmsnorm",
        conditioner: str | dict = "film",
        lr: float = 3e-3,
        weight_decay: float = 0.0,
        log_other_class: bool = True,
    ) -> None:
        super().__init__()
        _check_ints("ConditionalByteLM", 1, dim=dim, seq_len=seq_len, num_classes=num_classes)
        if not lr > 0 or not weight_decay >= 0:
            raise ValueError(f"ConditionalByteLM: need lr > 0 and weight_decay >= 0, got {lr!r}, {weight_decay!r}")
        self.save_hyperparameters()
        self.embed = nn.Embedding(256, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(1, seq_len, dim))
        self.class_embed = nn.Embedding(num_classes, dim)
        self.transformer = Transformer(
            dim, depth, num_heads, cond_dim=dim, normalizer=normalizer, conditioner=conditioner, causal=True
        )
        self.head = nn.Linear(dim, 256)
        # DiT's std: with N(0, 1) class vectors, zero-init FiLM moves ~0.3 from identity per Adam step.
        nn.init.normal_(self.class_embed.weight, std=0.02)

    def setup(self, stage: str) -> None:
        """Check the data fits the model before any step (not as an index error from torch)."""
        for what in ("num_classes", "seq_len"):
            theirs, mine = getattr(self.trainer.datamodule, what, None), self.hparams[what]
            if isinstance(theirs, int) and theirs > mine:
                raise ValueError(
                    f"ConditionalByteLM: the data has {what}={theirs} but the model {what}={mine}; "
                    f"set model.{what} to at least {theirs}"
                )

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x: (B, N) bytes, c: (B,) class ids -> (B, N, V) next-byte logits."""
        if x.dim() != 2 or x.shape[1] > self.pos.shape[1]:
            raise ValueError(f"ConditionalByteLM expects (B, N <= {self.pos.shape[1]}) bytes, got {tuple(x.shape)}")
        h = self.embed(x) + self.pos[:, : x.shape[1]]  # (B, N, D)
        cond = Conditioning.from_signals([self.class_embed(c)])  # vector (B, D), tokens (B, 1, D)
        h = self.transformer(h, cond)  # (B, N, D)
        return self.head(h)  # (B, N, V)

    def bits_per_byte(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """(x, y, c) batch -> (B,) mean bits per predicted byte of each window."""
        x, y, c = batch
        nll = F.cross_entropy(self(x, c).transpose(1, 2), y, reduction="none")  # (B, V, N) -> (B, N) nats
        return nll.mean(1) / math.log(2)  # (B,)

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        loss = self.bits_per_byte(batch).mean() * math.log(2)  # nats per byte
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def _evaluate(self, batch: tuple[torch.Tensor, ...], split: str) -> None:
        x, y, c = batch
        self.log(f"{split}/bpb", self.bits_per_byte(batch).mean(), prog_bar=True)
        if self.hparams.log_other_class:
            other = (c + 1) % self.hparams.num_classes  # (B,) always another class (if C > 1)
            self.log(f"{split}/bpb_other_class", self.bits_per_byte((x, y, other)).mean())

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def predict_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        return self.bits_per_byte(batch)  # (B,)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
