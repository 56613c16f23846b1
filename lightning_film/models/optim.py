"""The optimizer both models use: AdamW (decay on matrices only) with linear warmup then cosine."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from lightning.pytorch import LightningModule
from torch import nn

__all__ = ["adamw_warmup_cosine", "check_schedule", "clip_gradients", "warmup_cosine_adamw"]


def check_schedule(who: str, lr: float, weight_decay: float, min_lr_ratio: float) -> None:
    """A ValueError naming the bad one unless lr is finite and > 0, weight_decay finite and >= 0 and
    0 <= min_lr_ratio <= 1 (``lr: .inf`` is a float YAML accepts: unchecked, it trains to NaN
    weights and saves them)."""
    if not 0 < lr < math.inf or not 0 <= weight_decay < math.inf or not 0 <= min_lr_ratio <= 1:
        raise ValueError(
            f"{who}: need finite lr > 0, finite weight_decay >= 0 and 0 <= min_lr_ratio <= 1; "
            f"got lr={lr!r}, weight_decay={weight_decay!r}, min_lr_ratio={min_lr_ratio!r}"
        )


def clip_gradients(
    module: LightningModule,
    optimizer: torch.optim.Optimizer,
    gradient_clip_val: float | None = None,
    gradient_clip_algorithm: str | None = None,
) -> None:
    """``configure_gradient_clipping`` for both models: Lightning's, also under ``bf16-mixed``.

    Lightning's mixed-precision plugin refuses to clip for an optimizer that unscales its own
    gradients (our fused AdamW): fp16's GradScaler would hand it scaled gradients. bf16-mixed has
    no scaler, so the gradients are the true ones and plain clipping (the base plugin's) is right.
    """
    from lightning.pytorch.plugins.precision import MixedPrecision, Precision
    from lightning.pytorch.utilities import GradClipAlgorithmType

    plugin = module.trainer.precision_plugin
    if not (isinstance(plugin, MixedPrecision) and plugin.scaler is None):
        module.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
        return
    val = module.trainer.gradient_clip_val if gradient_clip_val is None else gradient_clip_val
    algorithm = gradient_clip_algorithm or module.trainer.gradient_clip_algorithm or "norm"
    Precision.clip_gradients(plugin, optimizer, float(val or 0.0), GradClipAlgorithmType(algorithm))


def adamw_warmup_cosine(module: LightningModule, no_decay: Iterable[nn.Parameter], betas: tuple[float, float]) -> dict:
    """``configure_optimizers``' return value from ``module.hparams`` (lr, weight_decay,
    warmup_steps, max_lr_steps, min_lr_ratio): :func:`warmup_cosine_adamw` over the module, its
    cosine over ``max_lr_steps`` or, when that is ``None``, the trainer's total steps."""
    hp = module.hparams
    total = hp.max_lr_steps
    if total is None:
        estimated = module.trainer.estimated_stepping_batches
        total = int(estimated) if math.isfinite(estimated) else None
    optimizer, scheduler = warmup_cosine_adamw(
        module, no_decay, hp.lr, hp.weight_decay, hp.warmup_steps, total, hp.min_lr_ratio, betas
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def warmup_cosine_adamw(
    module: nn.Module,
    no_decay: Iterable[nn.Parameter],
    lr: float,
    weight_decay: float,
    warmup_steps: int,
    total_steps: int | None,
    min_lr_ratio: float,
    betas: tuple[float, float],
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """Both models' optimizer, for any module (the benchmarks train peers with it): AdamW where
    matrices decay except those in ``no_decay`` (embeddings, positions) and vectors (biases, norm
    scales) never do; linear warmup over ``warmup_steps``, then a cosine down to ``min_lr_ratio *
    lr`` at ``total_steps`` (``None``: constant after warmup), then constant. Step the scheduler
    once per optimizer step."""
    skip = {id(p) for p in no_decay}
    params = [p for p in module.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2 and id(p) not in skip]
    rest = [p for p in params if p.dim() < 2 or id(p) in skip]
    # torch's fused kernel updates every tensor in one pass: the conditioners' many small
    # tensors then cost next to nothing per step (python -m benchmarks.performance, section 2)
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=lr,
        betas=betas,
        fused=fused or None,
    )

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if total_steps is None or total_steps <= warmup_steps:
            return 1.0
        progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
