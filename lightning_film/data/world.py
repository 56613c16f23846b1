"""``WorldDataModule``: windows of recorded world episodes for a next-frame world model.

Legend: B batch, K ``context_frames``, T ``episode_length``, H = W ``frame_size``, E episodes.

The data is either a registered world (``world``, default ``bounce_room``), recorded once into
the cache on first use (``prepare_data`` records, later runs reuse the folder; see
:mod:`lightning_film.data.record`), or a folder written by ``lightning-film record``
(``data_dir``), whose manifest then fixes the world, episodes, length and frame size.

Episodes are dealt to test, val and train by a permutation seeded with ``split_seed`` (kept
apart from ``seed``, so runs over several seeds are scored on the same episodes): no episode
is in two splits, and a window never leaves its episode.

A window is K clean context frames ``t - K + 1 .. t``, the action taken at ``t`` and the frame
``t + 1`` it led to, for ``K - 1 <= t <= T - 2`` (no padding): ``T - K`` windows per episode.
Window ``k`` of a split is episode ``k // (T - K)`` of the split (in episode order) at
``t = K - 1 + k % (T - K)``.

Training reads ``train_windows_per_epoch`` windows per epoch (default: every training window)
from one endless stream of seeded shuffles: training position ``i`` of epoch ``e`` is position
``g = e * train_windows_per_epoch + i`` of the stream, window ``perm_p[g % W]`` of the shuffle
``perm_p`` seeded by ``(seed, p = g // W)``, W the number of training windows. So every window
is read once before any is read twice, and the window at ``(epoch, index)`` is a pure function
of ``(seed, epoch, index)`` (:meth:`WorldDataModule.train_window`): a resumed fit sees the same
order, and under DDP Lightning's sampler wrapper deals distinct windows to the ranks.
Validation and test read every window of their episodes in order, or ``max_eval_windows`` of
them evenly spaced (every episode still appears while the cap is at least the episode count).

A batch is a dict::

    context  (B, K, 3, H, W) uint8   frames t - K + 1 .. t, channels first
    action   (B,) int64              actions[t], taken after seeing frame t
    target   (B, 3, H, W) uint8      frame t + 1
    episode  (B,) int64              episode number in the recording
    step     (B,) int64              t
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lightning_film.data.record import DEFAULT_WORLD, default_folder, plan_recording, record
from lightning_film.data.sampling import EvalSampler, ResumableTrainData
from lightning_film.data.shards import MANIFEST, Manifest, load_episodes, read_manifest
from lightning_film.errors import check_int

__all__ = ["EpisodeWindows", "WorldDataModule", "train_keys"]

SPLITS = ("train", "val", "test")
log = logging.getLogger(__name__)


def train_keys(seed: int, epoch: int, index: np.ndarray | int, length: int, total: int) -> np.ndarray:
    """Window numbers in ``[0, total)`` of training positions ``index`` of ``epoch`` (see the module doc).

    Position ``g = epoch * length + index`` of an endless stream of shuffles of all ``total``
    windows, shuffle ``p`` seeded by ``(seed, p)``: a pure function of its arguments.
    """
    g = epoch * length + np.atleast_1d(np.asarray(index, dtype=np.int64))
    passes = g // total
    keys = np.empty_like(g)
    for p in np.unique(passes):
        chosen = passes == p
        keys[chosen] = np.random.default_rng([seed, int(p)]).permutation(total)[g[chosen] % total]
    return keys


def _shuffle_keys(seed: int, length: int, total: int, epoch: int, positions: np.ndarray) -> np.ndarray:
    """:func:`train_keys` in the sampler's ``keys(epoch, positions)`` form."""
    return train_keys(seed, epoch, positions, length, total)


class EpisodeWindows(Dataset):
    """Windows of some episodes of a recording, as batch items (see the module doc).

    Args:
        frames: uint8 (E, T, H, W, 3), every episode of the recording.
        actions: int64 (E, T).
        episode_ids: the episodes of this split, in order.
        context_frames: K.
        keys: the window numbers item ``i`` reads (default: every window, in order).
    """

    def __init__(
        self,
        frames: np.ndarray,
        actions: np.ndarray,
        episode_ids: np.ndarray,
        context_frames: int,
        keys: np.ndarray | None = None,
    ) -> None:
        self.frames, self.actions, self.episode_ids = frames, actions, np.asarray(episode_ids, dtype=np.int64)
        self.context_frames = context_frames
        self.per_episode = frames.shape[1] - context_frames
        self.total = len(self.episode_ids) * self.per_episode
        self.keys = keys

    def locate(self, key: int) -> tuple[int, int]:
        """Window number -> (episode number in the recording, step t)."""
        if not 0 <= key < self.total:
            raise IndexError(f"window {key} is outside [0, {self.total})")
        row, offset = divmod(int(key), self.per_episode)
        return int(self.episode_ids[row]), self.context_frames - 1 + offset

    def __len__(self) -> int:
        return self.total if self.keys is None else len(self.keys)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        episode, t = self.locate(int(i if self.keys is None else self.keys[i]))
        context = self.frames[episode, t - self.context_frames + 1 : t + 1]  # (K, H, W, 3)
        return {
            "context": torch.from_numpy(np.ascontiguousarray(context.transpose(0, 3, 1, 2))),  # (K, 3, H, W)
            "action": torch.tensor(int(self.actions[episode, t]), dtype=torch.long),
            "target": torch.from_numpy(np.ascontiguousarray(self.frames[episode, t + 1].transpose(2, 0, 1))),
            "episode": torch.tensor(episode, dtype=torch.long),
            "step": torch.tensor(t, dtype=torch.long),
        }


class WorldDataModule(ResumableTrainData, LightningDataModule):
    """Windows (context frames, action, next frame) of world episodes (see the module docstring).

    Args:
        world: a registered world (``lightning-film list worlds``) or ``{"name": ..., **options}``,
            recorded into the cache on first use; default ``bounce_room``. With ``data_dir``,
            leave unset or name the folder's world.
        data_dir: a folder written by ``lightning-film record`` (with ``manifest.json``); its
            manifest fixes the four settings below, which may be left unset (or must match).
        episodes: episodes to record (default 256).
        episode_length: frames per episode, T (default 64).
        frame_size: frames are ``frame_size x frame_size`` RGB, >= 16 (default 32).
        record_seed: seed of the recording (default 0).
        context_frames: K clean frames before the action, 1 <= K < T.
        val_episodes: episodes held out for validation.
        test_episodes: episodes held out for test.
        split_seed: seed of the episode split, apart from ``seed``.
        batch_size: windows per batch.
        num_workers: DataLoader worker processes.
        seed: seed of the training window order.
        train_windows_per_epoch: training windows per epoch; default every training window once.
        max_eval_windows: cap on validation/test windows (evenly spaced); default all of them.

    Read by the model in its ``setup()``: :attr:`num_actions`, :attr:`frame_size`,
    :attr:`channels`, :attr:`context_frames`, :attr:`dataset_key`, and :meth:`episodes`.
    """

    def __init__(
        self,
        world: str | dict[str, Any] | None = None,
        data_dir: str | None = None,
        episodes: int | None = None,
        episode_length: int | None = None,
        frame_size: int | None = None,
        record_seed: int | None = None,
        context_frames: int = 2,
        val_episodes: int = 16,
        test_episodes: int = 16,
        split_seed: int = 0,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        train_windows_per_epoch: int | None = None,
        max_eval_windows: int | None = None,
    ) -> None:
        super().__init__()
        for name, value, minimum in (
            ("context_frames", context_frames, 1),
            ("val_episodes", val_episodes, 0),
            ("test_episodes", test_episodes, 0),
            ("split_seed", split_seed, 0),
            ("batch_size", batch_size, 1),
            ("num_workers", num_workers, 0),
            ("seed", seed, 0),
            ("train_windows_per_epoch", train_windows_per_epoch, 1),
            ("max_eval_windows", max_eval_windows, 1),
        ):
            if value is None and name in ("train_windows_per_epoch", "max_eval_windows"):
                continue  # None: every window
            check_int(name, value, minimum)
        given = {"episodes": episodes, "episode_length": episode_length, "frame_size": frame_size, "seed": record_seed}
        if data_dir is not None:
            self.data_dir: Path | None = Path(data_dir).expanduser()
            manifest = read_manifest(self.data_dir)
            _check_matches(manifest, world, given, self.data_dir)
        else:
            self.data_dir = None
            built, _, manifest = plan_recording(
                world if world is not None else DEFAULT_WORLD,
                frame_size=32 if frame_size is None else frame_size,
                episodes=256 if episodes is None else episodes,
                seed=0 if record_seed is None else record_seed,
                episode_length=64 if episode_length is None else episode_length,
            )
            built.close()
        T, E = manifest.episode_length, manifest.episodes
        if context_frames >= T:
            raise ValueError(
                f"context_frames must be < episode_length={T} (a window needs K context frames and the next one), "
                f"got {context_frames}"
            )
        if E - val_episodes - test_episodes < 1:
            raise ValueError(
                f"episodes={E} leave no training episode after val_episodes={val_episodes} and "
                f"test_episodes={test_episodes}; need episodes > val_episodes + test_episodes"
            )
        self.save_hyperparameters()
        self.manifest: Manifest = manifest
        self.num_actions, self.frame_size, self.channels = manifest.num_actions, manifest.frame_size, manifest.channels
        self.context_frames, self.episode_length, self.num_episodes = context_frames, T, E
        self.dataset_key: str = manifest.key
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.split_episodes: dict[str, np.ndarray] = {}  # split -> episode numbers, sorted; set in setup()
        self._frames: np.ndarray | None = None  # uint8 (E, T, H, W, 3)
        self._actions: np.ndarray | None = None  # int64 (E, T)

    @property
    def data_folder(self) -> Path:
        """The folder the episodes are read from: ``data_dir``, or the cache folder of the recording."""
        return self.data_dir if self.data_dir is not None else default_folder(self.manifest)

    def prepare_data(self) -> None:
        """Record the world into the cache unless it is there already (never with ``data_dir``)."""
        if self.data_dir is not None:
            return
        hp, m = self.hparams, self.manifest
        result = record(
            hp.world if hp.world is not None else DEFAULT_WORLD,
            frame_size=m.frame_size,
            episodes=m.episodes,
            episode_length=m.episode_length,
            seed=m.seed,
            stickiness=m.policy["stickiness"],
        )
        if result.recorded:
            log.info("recorded %s in %.1f s into %s", m.key, result.seconds, result.folder)

    def setup(self, stage: str | None = None) -> None:
        if self._frames is not None:  # once: the split does not depend on the stage
            return
        folder = self.data_folder
        if self.data_dir is None and not (folder / MANIFEST).is_file():
            self.prepare_data()  # setup() without a Trainer, or a cache emptied since
        manifest, frames, actions = load_episodes(folder)
        if manifest.key != self.dataset_key:
            raise ValueError(
                f"{folder} now holds {manifest.key}, not {self.dataset_key} as when this WorldDataModule was built"
            )
        hp = self.hparams
        order = np.random.default_rng(hp.split_seed).permutation(manifest.episodes)
        val, test = hp.val_episodes, hp.test_episodes
        self.split_episodes = {
            "val": np.sort(order[:val]),
            "test": np.sort(order[val : val + test]),
            "train": np.sort(order[val + test :]),
        }
        self._frames, self._actions = frames, actions

    # -- what the model reads ---------------------------------------------------------------------
    def episodes(self, split: str) -> list[tuple[np.ndarray, np.ndarray]]:
        """The episodes of ``split``: (frames uint8 (T, H, W, 3), actions int64 (T,)) each, for rollouts."""
        self._need_setup()
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
        return [(self._frames[e], self._actions[e]) for e in self.split_episodes[split]]

    def windows(self, split: str) -> EpisodeWindows:
        """Every window of ``split`` in order (training reads them through :meth:`train_dataloader`)."""
        self._need_setup()
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
        return EpisodeWindows(self._frames, self._actions, self.split_episodes[split], self.context_frames)

    # -- training windows -------------------------------------------------------------------------
    @property
    def train_windows_per_epoch(self) -> int:
        self._need_setup()
        n = self.hparams.train_windows_per_epoch
        return n if n is not None else self.windows("train").total

    def train_window(self, epoch: int, index: int) -> tuple[int, int]:
        """(episode, step t) of training window ``index`` of ``epoch``: pure in (seed, epoch, index)."""
        data = self.windows("train")
        key = int(train_keys(self.seed, epoch, index, self.train_windows_per_epoch, data.total)[0])
        return data.locate(key)

    # -- loaders ----------------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        data = self.windows("train")
        keys = functools.partial(_shuffle_keys, self.seed, self.train_windows_per_epoch, data.total)
        return self._loader(data, self.train_sampler(keys, self.train_windows_per_epoch))

    def val_dataloader(self) -> DataLoader:
        data = self._held_out("val")
        return self._loader(data, EvalSampler(len(data)))

    def test_dataloader(self) -> DataLoader:
        data = self._held_out("test")
        return self._loader(data, EvalSampler(len(data)))

    def predict_dataloader(self) -> DataLoader:
        # without this, `lightning-film predict` on a world config ends in Lightning's
        # "`predict_dataloader` must be implemented", which names neither the data nor the way out
        raise ValueError(
            "WorldDataModule has nothing to predict from: world models are scored and sampled by "
            "`lightning-film test` (KID, PSNR, rollouts; PNG sheets under <log dir>/samples/), not predict"
        )

    def _held_out(self, split: str) -> EpisodeWindows:
        data = self.windows(split)
        if not data.total:
            raise ValueError(f"the {split} split is empty: set {split}_episodes > 0 to get a {split} loader")
        cap = self.hparams.max_eval_windows
        if cap is not None and cap < data.total:
            data.keys = np.arange(cap, dtype=np.int64) * data.total // cap  # evenly spaced, in order
        return data

    def _need_setup(self) -> None:
        if self._frames is None:
            raise RuntimeError("WorldDataModule.setup() must run first (the Trainer calls it)")


def _check_matches(manifest: Manifest, world: Any, given: dict[str, int | None], folder: Path) -> None:
    """Settings given alongside ``data_dir`` must agree with its manifest (None: take the folder's)."""
    for name, value in given.items():
        if value is not None and value != getattr(manifest, name):
            arg = "record_seed" if name == "seed" else name
            raise ValueError(
                f"data_dir {str(folder)!r} was recorded with {name}={getattr(manifest, name)}, but {arg}={value} "
                f"was given; leave {arg} unset to take the folder's"
            )
    if world is None:
        return
    name = world.get("name") if isinstance(world, Mapping) else world
    options = {k: v for k, v in world.items() if k != "name"} if isinstance(world, Mapping) else {}
    differ = {k: v for k, v in options.items() if manifest.world_settings.get(k) != v}
    if name != manifest.world or differ:
        raise ValueError(
            f"data_dir {str(folder)!r} holds world {manifest.world!r} with {manifest.world_settings}, but world={world!r} "
            f"was given; leave world unset to take the folder's"
        )
