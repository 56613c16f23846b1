"""The world model's test-time evaluation: sampled next frames scored by KID and PSNR, an
autoregressive rollout, and PNG sheets in ``<log_dir>/samples/``.

- Next frames are sampled for the first ``max_eval_samples`` test windows (in batches, with
  each batch's seeded noise). KID compares them with the true next frames of the same windows;
  the real frames' features come from the cache (:func:`~lightning_film.metrics.kid.real_features`)
  after the first evaluation, so only generated frames are embedded. ``test/psnr`` is the PSNR of
  the pooled squared error to the true frames (data range 255).
- The rollout starts from the first K real frames of up to two test episodes and feeds samples
  back for ``rollout_steps`` steps, taking the episode's own actions: ``test/rollout_psnr``.
- ``next_frames.png``: per window, the K context frames, the truth, then a sample under each
  action (``num_actions`` columns; one for an unconditional model). ``rollout.png``: per episode,
  a row of true frames and a row of sampled ones, the shared context first.

Legend: B batch, K context frames, C channels, H, W frame size, A actions, R rollout steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor
from torchmetrics.functional.image import peak_signal_noise_ratio

from lightning_film.metrics.kid import compute_kid, real_features
from lightning_film.models.world_render import frame_grid, save_png

if TYPE_CHECKING:
    from lightning_film.models.world_model import WorldModel

__all__ = ["EvalState", "finish_test", "test_samples", "rollout_episodes"]

ROLLOUT_EPISODES = 2


@dataclass
class EvalState:
    """What a test epoch gathers besides its metrics (per rank)."""

    seen: int = 0
    real: list[Tensor] = field(default_factory=list)  # uint8 (n, C, H, W) on the CPU
    grid: tuple[Tensor, Tensor] | None = None  # context (W, K, C, H, W), target (W, C, H, W)


def _rgb(frames: Tensor) -> Tensor:
    """(N, C, H, W) with C = 1 or 3 -> (N, 3, H, W) for the feature networks."""
    if frames.shape[1] == 1:
        return frames.expand(-1, 3, -1, -1)
    if frames.shape[1] != 3:
        raise ValueError(f"KID needs frames with 1 or 3 channels, got {frames.shape[1]}")
    return frames


def test_samples(model: WorldModel, batch: dict[str, Tensor], generators: list[torch.Generator]) -> None:
    """Sample the next frames of this batch's windows (within ``max_eval_samples``) and score them;
    ``generators``: one per window."""
    context, action, target = model._batch(batch)
    state, hp = model._eval, model.hparams
    if state.grid is None and hp.grid_windows:
        state.grid = (context[: hp.grid_windows].cpu(), target[: hp.grid_windows].cpu())
    # this rank's share of the first max_eval_samples windows (ranks read windows r, r + W, ...)
    world = model.trainer.world_size if model._trainer is not None else 1
    n = min(target.shape[0], len(range(model.global_rank, hp.max_eval_samples, world)) - state.seen)
    if n <= 0:
        return
    fake = model.sample_next(context[:n], action[:n], generator=generators[:n])  # (n, C, H, W) uint8
    model.test_psnr.update(fake.float(), target[:n].float())
    model.test_kid.update(_rgb(fake), real=False)
    state.real.append(target[:n].cpu())
    state.seen += n


def finish_test(model: WorldModel) -> None:
    """Log test/psnr, test/kid_mean, test/kid_std and test/rollout_psnr; write the PNG sheets."""
    state, hp = model._eval, model.hparams
    total = int(model.all_gather(torch.tensor(state.seen, device=model.device)).sum())
    if total:
        model.log("test/psnr", model.test_psnr.compute())
    model.test_psnr.reset()
    if total >= 2:
        real = _rgb(torch.cat(state.real)) if state.real else None
        if real is not None:
            features = real_features(model.test_kid.inception, real, model.dataset_key, "test")
            model.test_kid.real_features.append(features.to(model.device))
        model.test_kid.subset_size = min(hp.kid_subset_size, total)
        kid_mean, kid_std = compute_kid(model.test_kid, seed=hp.seed)
        model.log("test/kid_mean", kid_mean)
        model.log("test/kid_std", kid_std)
    model.test_kid.reset()

    sheets: dict[str, np.ndarray] = {}
    rolled = rollout_episodes(model)
    if rolled is not None:
        context, truth, sampled = rolled
        model.log("test/rollout_psnr", peak_signal_noise_ratio(sampled.float(), truth.float(), data_range=255.0))
        sheets["rollout"] = frame_grid(
            [row for e in range(len(truth)) for row in ([*context[e], *truth[e]], [*context[e], *sampled[e]])]
        )
    if model.global_rank == 0 and state.grid is not None:
        sheets["next_frames"] = _next_frame_sheet(model, *state.grid)
    if model.global_rank == 0:
        _write_sheets(model, sheets)


def rollout_episodes(model: WorldModel) -> tuple[Tensor, Tensor, Tensor] | None:
    """Roll out up to two test episodes from their first K frames with their own actions:
    (context (E, K, C, H, W), truth (E, R, C, H, W), sampled (E, R, C, H, W)), uint8 on the CPU;
    ``None`` when the data has no ``episodes(split)`` or no episode is long enough."""
    hp = model.hparams
    dm = getattr(model.trainer, "datamodule", None)
    k = hp.context_frames
    if hp.rollout_steps < 1 or not callable(getattr(dm, "episodes", None)):
        return None
    episodes = [(f, a) for f, a in dm.episodes("test") if len(f) > k][:ROLLOUT_EPISODES]
    if not episodes:
        return None
    r = min(hp.rollout_steps, *(len(f) - k for f, _ in episodes))
    frames = torch.stack([torch.as_tensor(np.asarray(f[: k + r])).permute(0, 3, 1, 2) for f, _ in episodes])
    actions = torch.stack([torch.as_tensor(np.asarray(a[k - 1 : k - 1 + r]), dtype=torch.long) for _, a in episodes])
    generator = torch.Generator().manual_seed(hp.seed)
    sampled = model.rollout(frames[:, :k].contiguous(), actions, generator=generator).cpu()  # (E, R, C, H, W)
    return frames[:, :k], frames[:, k:], sampled


def _next_frame_sheet(model: WorldModel, context: Tensor, target: Tensor) -> np.ndarray:
    """Rows: the K context frames, the truth, and a sample under each action (one when unconditional)."""
    windows = context.shape[0]
    actions = [model.null_action] if model.hparams.condition == "none" else list(range(model.null_action))
    ctx = context.repeat_interleave(len(actions), dim=0)  # (W A, K, C, H, W)
    act = torch.tensor(actions * windows)
    generator = torch.Generator().manual_seed(model.hparams.seed)
    samples = model.sample_next(ctx, act, generator=generator).cpu().view(windows, len(actions), *target.shape[1:])
    return frame_grid([[*context[w], target[w], *samples[w]] for w in range(windows)])


def _write_sheets(model: WorldModel, sheets: dict[str, np.ndarray]) -> None:
    trainer = model.trainer
    root = Path(trainer.log_dir or trainer.default_root_dir) / "samples"
    for name, image in sheets.items():
        save_png(image, root / f"{name}.png")
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(f"test/{name}", image, model.global_step, dataformats="HWC")
