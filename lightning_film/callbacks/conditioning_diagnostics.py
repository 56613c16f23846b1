"""Watch what every conditioner does while a model trains: gamma/beta/gate statistics.

Seed 000's debugging handle: "inspect learned gamma histograms: are they bounded (e.g.
within ~[0.2, 5])? Exploding values signal over-conditioning." Works on any
LightningModule that contains lightning_film conditioners, whatever its architecture.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_film.errors import check_int
from lightning_film.nn.diagnostics import named_conditioners, observe_conditioning

__all__ = ["ConditioningDiagnostics"]

#: Summary statistics logged for every observed quantity, in this order.
STATS: tuple[str, ...] = ("mean", "std", "min", "max")


class ConditioningDiagnostics(Callback):
    """Log gamma/beta/gate statistics of every conditioner, and warn when gamma leaves a band.

    On one training batch every ``every_n_steps`` optimizer steps (and, with
    ``on_validation``, on the first batch of each validation epoch) every conditioner
    records the gamma, beta and gate it computes. For each conditioner (its qualified
    module name, e.g. ``model.blocks.0.cond1``) and each quantity it produced, the callback
    logs to every logger of the trainer::

        cond/<name>/<quantity>_{mean,std,min,max}     # training batches
        cond/<name>/gamma_out_of_band                 # fraction of gamma outside gamma_band
        cond_val/<name>/...                           # the same, first validation batch

    With ``histograms=True`` and a :class:`~lightning.pytorch.loggers.TensorBoardLogger`,
    the values also go to TensorBoard as histograms (``cond/<name>/<quantity>``); other
    loggers get the summary scalars only. The latest values are kept in
    :attr:`last_metrics` either way, even without a logger.

    When gamma leaves ``gamma_band`` a warning names the conditioner, the observed
    min/max and the band, once per conditioner per epoch.

    Observing changes neither outputs nor gradients (values are detached copies) and is
    switched off after the batch, on exceptions too; steps that are not observed cost one
    integer comparison. Metrics come from global rank 0's batch only.

    Args:
        every_n_steps: observe one training batch every this many optimizer steps
            (steps 0, n, 2n, ...).
        on_validation: also observe the first batch of every validation epoch.
        gamma_band: ``(low, high)``: gamma outside it is counted and warned about.
        histograms: send histograms to TensorBoard when a TensorBoardLogger is present.
    """

    def __init__(
        self,
        every_n_steps: int = 100,
        on_validation: bool = True,
        gamma_band: tuple[float, float] = (0.2, 5.0),
        histograms: bool = True,
    ) -> None:
        super().__init__()
        check_int("every_n_steps", every_n_steps, 1, who="ConditioningDiagnostics")
        for arg, value in (("on_validation", on_validation), ("histograms", histograms)):
            if not isinstance(value, bool):
                raise ValueError(f"ConditioningDiagnostics: {arg} must be a bool, got {value!r}")
        self.every_n_steps = every_n_steps
        self.on_validation = on_validation
        self.gamma_band = _check_band(gamma_band)
        self.histograms = histograms
        #: The metrics of the latest observed batch, ``{key: value}``.
        self.last_metrics: dict[str, float] = {}
        self._observer: AbstractContextManager[dict[str, dict[str, torch.Tensor]]] | None = None
        self._stats: dict[str, dict[str, torch.Tensor]] | None = None
        self._last_step = -1
        self._warned: dict[str, int] = {}  # conditioner name -> epoch of its last warning

    # -- Lightning hooks ---------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.histograms and trainer.loggers and not _tensorboards(trainer):
            rank_zero_info(
                "ConditioningDiagnostics: histograms=True but no TensorBoardLogger is in use; "
                "logging summary scalars (mean, std, min, max) only"
            )

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        _require_conditioners(pl_module)
        self._last_step = -1

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.on_validation:
            _require_conditioners(pl_module)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._stop()  # a batch skipped by a hook never reached on_train_batch_end
        step = trainer.global_step
        # global_step stays put over accumulated batches: observe only the first of them.
        if step % self.every_n_steps or step == self._last_step or not trainer.is_global_zero:
            return
        self._last_step = step
        self._start(pl_module)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._observer is not None:
            self._report(trainer, "cond", self._stop())

    def on_validation_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._stop()
        if (
            self.on_validation
            and batch_idx == 0
            and dataloader_idx == 0
            and not trainer.sanity_checking
            and trainer.is_global_zero
        ):
            self._start(pl_module)

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._observer is not None:
            self._report(trainer, "cond_val", self._stop())

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._stop()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._stop()

    # -- internals ---------------------------------------------------------------------
    def _start(self, pl_module: pl.LightningModule) -> None:
        self._observer = observe_conditioning(pl_module)
        self._stats = self._observer.__enter__()

    def _stop(self) -> dict[str, dict[str, torch.Tensor]]:
        """Switch observing off (idempotent) and return what was recorded."""
        if self._observer is None:
            return {}
        observer, stats = self._observer, self._stats
        self._observer = self._stats = None
        observer.__exit__(None, None, None)  # the context manager's finally clears the flags
        return stats or {}

    def _report(self, trainer: pl.Trainer, prefix: str, stats: dict[str, dict[str, torch.Tensor]]) -> None:
        if not stats:
            return
        metrics = self._summarize(prefix, stats)
        self.last_metrics = metrics
        step = _logging_step(trainer)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        if self.histograms:
            for logger in _tensorboards(trainer):
                for name, values in stats.items():
                    for quantity, tensor in values.items():
                        logger.experiment.add_histogram(f"{prefix}/{name}/{quantity}", tensor.float().cpu(), step)
        self._warn(trainer, metrics, prefix, stats)

    def _summarize(self, prefix: str, stats: dict[str, dict[str, torch.Tensor]]) -> dict[str, float]:
        """All statistics as floats, with one device sync for the whole model."""
        low, high = self.gamma_band
        keys: list[str] = []
        rows: list[torch.Tensor] = []
        for name, values in stats.items():
            for quantity, tensor in values.items():
                t = tensor.detach().float()
                row = [t.mean(), t.std(correction=0), t.min(), t.max()]
                keys += [f"{prefix}/{name}/{quantity}_{s}" for s in STATS]
                if quantity == "gamma":
                    row.append(((t < low) | (t > high)).float().mean())
                    keys.append(f"{prefix}/{name}/gamma_out_of_band")
                rows.append(torch.stack(row))
        return dict(zip(keys, torch.cat(rows).tolist()))

    def _warn(
        self, trainer: pl.Trainer, metrics: dict[str, float], prefix: str, stats: dict[str, dict[str, torch.Tensor]]
    ) -> None:
        low, high = self.gamma_band
        epoch = trainer.current_epoch
        for name, values in stats.items():
            if "gamma" not in values or not metrics[f"{prefix}/{name}/gamma_out_of_band"] > 0:
                continue
            if self._warned.get(name) == epoch:
                continue
            self._warned[name] = epoch
            lo, hi = metrics[f"{prefix}/{name}/gamma_min"], metrics[f"{prefix}/{name}/gamma_max"]
            frac = metrics[f"{prefix}/{name}/gamma_out_of_band"]
            rank_zero_warn(
                f"ConditioningDiagnostics: gamma of conditioner '{name}' left the band [{low:g}, {high:g}] "
                f"at step {trainer.global_step} (epoch {epoch}): observed min {lo:.4g}, max {hi:.4g}, "
                f"{frac:.1%} of values outside. Exploding or vanishing gamma signals over-conditioning."
            )


def _check_band(band: Sequence[float]) -> tuple[float, float]:
    rule = "gamma_band must be two finite numbers (low, high) with low < high"
    if isinstance(band, (str, bytes)) or not isinstance(band, Sequence) or len(band) != 2:
        raise ValueError(f"ConditioningDiagnostics: {rule}, got {band!r}")
    try:
        low, high = float(band[0]), float(band[1])
    except (TypeError, ValueError):
        raise ValueError(f"ConditioningDiagnostics: {rule}, got {band!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"ConditioningDiagnostics: {rule}, got {band!r}")
    return low, high


def _require_conditioners(pl_module: pl.LightningModule) -> None:
    if not named_conditioners(pl_module):
        raise ValueError(
            f"ConditioningDiagnostics: {type(pl_module).__name__} contains no lightning_film Conditioner, "
            f"so there is nothing to observe; remove the callback or build the model from lightning_film.nn"
        )


def _tensorboards(trainer: pl.Trainer) -> list[TensorBoardLogger]:
    return [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]


def _logging_step(trainer: pl.Trainer) -> int:
    # The step Lightning itself logs ``self.log`` metrics at (as LearningRateMonitor does),
    # so the curves line up; it differs from global_step with several optimizers.
    return getattr(trainer.fit_loop.epoch_loop, "_batches_that_stepped", trainer.global_step)
