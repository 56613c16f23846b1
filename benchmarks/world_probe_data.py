"""The data both world probes (``world_recipe_probe.py``, ``world_sample_probe.py``) train and score on:
the world configs' ``bounce_room`` recording, its windows stacked into whole tensors."""

import numpy as np
import torch
from torch import Tensor

from lightning_film.data.world import EpisodeWindows, WorldDataModule


def world_data(max_eval_windows: int = 512) -> WorldDataModule:
    """The world configs' data (recorded into ``$LIGHTNING_FILM_CACHE`` on first use), set up for fit and test."""
    dm = WorldDataModule(
        world="bounce_room",
        episodes=256,
        episode_length=64,
        frame_size=32,
        context_frames=2,
        val_episodes=16,
        test_episodes=16,
        batch_size=32,
        seed=0,
        max_eval_windows=max_eval_windows,
    )
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    return dm


def stack(windows: EpisodeWindows, index: np.ndarray) -> dict[str, Tensor]:
    """The windows ``index`` as one batch: context (N, K, 3, H, W), action (N,), target (N, 3, H, W), ..."""
    items = [windows[int(i)] for i in index]
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}
