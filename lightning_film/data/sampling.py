"""Training-sample order that survives a kill and splits across processes.

Training draws ``length`` item numbers per epoch; the number at global position ``g`` of epoch
``e`` is a pure function ``keys(e, g)`` (for bytes, random windows: :func:`window_keys`; for
world episodes, a seeded shuffle). Nothing else is random, so:

- **exact resume**: a DataModule using :class:`ResumableTrainData` saves, with every checkpoint,
  how many batches of the epoch were trained; a resumed fit starts the epoch's order right after
  them instead of replaying it from the start (Lightning does not fast-forward samplers);
- **DDP**: :class:`WindowSampler` is a ``DistributedSampler`` (so Lightning does not wrap it):
  rank ``r`` of ``W`` takes positions ``r, r + W, r + 2W, ...``, so ranks see distinct items and
  ``W`` processes with batch ``B`` see the items one process with batch ``W * B`` sees.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

__all__ = ["EvalSampler", "Keys", "ResumableTrainData", "WindowSampler", "random_keys", "window_keys"]


def window_keys(seed: int, epoch: int, index: np.ndarray | int, total: int) -> np.ndarray:
    """Item numbers in ``[0, total)`` as a pure function of ``(seed, epoch, index)`` (splitmix64)."""

    def mix(z: np.ndarray) -> np.ndarray:
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))

    golden = np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        z = mix(np.array([seed], dtype=np.int64).astype(np.uint64) + golden)
        z = mix(z + np.array([epoch], dtype=np.int64).astype(np.uint64) * golden)
        z = mix(z + np.atleast_1d(np.asarray(index, dtype=np.int64)).astype(np.uint64) * golden)
    return (z % np.uint64(total)).astype(np.int64)


#: (epoch, global positions (P,) int64) -> item numbers (P,) int64, a pure function.
Keys = Callable[[int, np.ndarray], np.ndarray]


def random_keys(seed: int, total: int, epoch: int, positions: np.ndarray) -> np.ndarray:
    """``keys`` for uniform random draws from ``[0, total)``: ``functools.partial(random_keys, seed, total)``."""
    return window_keys(seed, epoch, positions, total)


class WindowSampler(DistributedSampler):
    """``length`` item numbers per epoch, this rank's share, from global position ``start``.

    Args:
        keys: the order, ``keys(epoch, positions) -> item numbers`` (pure).
        length: draws per epoch (all ranks together).
        start: global position to begin epoch ``start_epoch`` at (a resumed epoch); every other
            epoch begins at 0.
        num_replicas, rank: the process group (default: torch.distributed's, else 1 and 0).
    """

    def __init__(
        self,
        keys: Keys,
        length: int,
        start: int = 0,
        start_epoch: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        # DistributedSampler.__init__ wants a dataset and a process group; set its fields directly.
        initialized = dist.is_available() and dist.is_initialized()
        self.num_replicas = num_replicas if num_replicas is not None else (dist.get_world_size() if initialized else 1)
        self.rank = rank if rank is not None else (dist.get_rank() if initialized else 0)
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank {self.rank} is not in [0, {self.num_replicas})")
        self.keys, self.length = keys, length
        self.start, self.start_epoch, self.epoch = start, start_epoch, start_epoch
        self.shuffle, self.drop_last = True, True

    def set_epoch(self, epoch: int) -> None:
        """Lightning calls it before each epoch."""
        self.epoch = epoch

    def _positions(self, start: int) -> np.ndarray:
        usable = self.length - self.length % self.num_replicas  # every rank gets as many
        return np.arange(start + self.rank, usable, self.num_replicas)

    def __len__(self) -> int:
        # the whole epoch's share even when resuming: Lightning sizes every epoch by it, and
        # ends the resumed one by its restored batch count, when the iterator below runs out
        return len(self._positions(0))

    def __iter__(self) -> Iterator[int]:
        positions = self._positions(self.start if self.epoch == self.start_epoch else 0)
        if not len(positions):
            return iter(())
        return iter(np.asarray(self.keys(self.epoch, positions), dtype=np.int64).tolist())


class ResumableTrainData:
    """Mixin for a LightningDataModule whose training loader uses :class:`WindowSampler`.

    Its ``state_dict`` (Lightning stores it in every checkpoint) records the epoch and the batches
    trained in it; after ``load_state_dict`` the next :meth:`train_sampler` starts right after them.
    The host class needs ``self.trainer`` (Lightning sets it) and ``batch_size`` and
    ``num_workers`` attributes; :meth:`_loader` builds every loader of the DataModule from them.
    """

    _resume: dict[str, int] | None = None

    def state_dict(self) -> dict[str, Any]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return {}
        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        # at a mid-epoch checkpoint (on_train_batch_end) the batch being finished counts as
        # "processed" but not yet "completed": it is trained, so it must not be trained again
        return {
            "epoch": int(trainer.current_epoch),
            "batches": int(progress.processed),
            "world_size": int(trainer.world_size),
            "batch_size": int(self.batch_size),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resume = dict(state) if state else None

    def _loader(self, data: Dataset, sampler: Sampler | None = None) -> DataLoader:
        return DataLoader(
            data,
            batch_size=self.batch_size,
            sampler=sampler,
            shuffle=False,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_sampler(self, keys: Keys, length: int) -> WindowSampler:
        """The epoch's sampler, starting after the batches a restored checkpoint already trained."""
        start, resume = 0, self._resume
        trainer = getattr(self, "trainer", None)
        if resume and trainer is not None and resume.get("epoch") == trainer.current_epoch:
            start = resume["batches"] * resume["batch_size"] * resume["world_size"]
        self._resume = None
        epoch = int(trainer.current_epoch) if trainer is not None else 0
        return WindowSampler(keys, length, start=start, start_epoch=epoch)


class EvalSampler(DistributedSampler):
    """Held-out items in order, split across ranks without padding: rank ``r`` of ``W`` reads
    items ``r, r + W, ...``, so every item is scored exactly once in total (``DistributedSampler``,
    which Lightning would otherwise use, repeats items to even the ranks out and biases metrics)."""

    def __init__(self, size: int, num_replicas: int | None = None, rank: int | None = None) -> None:
        initialized = dist.is_available() and dist.is_initialized()
        self.num_replicas = num_replicas if num_replicas is not None else (dist.get_world_size() if initialized else 1)
        self.rank = rank if rank is not None else (dist.get_rank() if initialized else 0)
        self.size, self.epoch, self.shuffle, self.drop_last = size, 0, False, False

    def __len__(self) -> int:
        return len(range(self.rank, self.size, self.num_replicas))

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.size, self.num_replicas))
