"""``EMA``: an exponential moving average of the weights, for sampling from diffusion models.

A thin layer over Lightning's :class:`~lightning.pytorch.callbacks.WeightAveraging` (which keeps
a :class:`torch.optim.swa_utils.AveragedModel`, swaps it in for validation, copies it into the
model when fit ends and writes it as the checkpoint's ``state_dict`` while the raw weights ride
along for resuming). What this class adds is the two settings a short run needs:

- ``decay``: torch's EMA helper defaults to 0.999, an average over about 1000 steps; in a fit of
  1000-2000 steps that still weighs the first, untrained weights (0.999^1000 = 37%). 0.995
  (about 200 steps) suits the quick presets.
- ``start_step``: the average starts here (a copy of the weights at that step), so warm-up is
  not averaged in.

YAML::

    trainer:
      callbacks:
        - class_path: lightning_film.callbacks.EMA
          init_args: {decay: 0.995, start_step: 100}
"""

from __future__ import annotations

from lightning.pytorch.callbacks import WeightAveraging
from torch.optim.swa_utils import get_ema_multi_avg_fn

from lightning_film.errors import check_int

__all__ = ["EMA"]


class EMA(WeightAveraging):
    """Exponential moving average of parameters and buffers, updated after every optimizer step
    from ``start_step`` on (``avg = decay * avg + (1 - decay) * weights``).

    Args:
        decay: the weight of the average at each update, in (0, 1); 0.995 averages about 200 steps.
        start_step: the step at which averaging starts (warm-up is left out).
    """

    def __init__(self, decay: float = 0.995, start_step: int = 0) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA: decay must be in (0, 1), got {decay!r} (0.99-0.9999 is usual)")
        check_int("start_step", start_step, 0, who="EMA")
        super().__init__(multi_avg_fn=get_ema_multi_avg_fn(decay))
        self.decay = decay
        self.start_step = start_step

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return step_idx is not None and step_idx >= self.start_step
