"""Run whole trainer stages with every conditioner switched to the identity.

Seed 000's debugging handle: "ablate: set gamma=1, beta=0 at eval to measure the
contribution of conditioning". Works on any LightningModule that contains
lightning_film conditioners.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from lightning_film.nn.conditioners.base import Conditioner
from lightning_film.nn.diagnostics import named_conditioners, set_ablation

__all__ = ["ConditioningAblation", "STAGES"]

#: The trainer functions a stage name may refer to.
STAGES: tuple[str, ...] = ("fit", "validate", "test", "predict")


class ConditioningAblation(Callback):
    """Make every conditioner the identity during the chosen trainer stages.

    While ``trainer.<stage>(...)`` runs for a stage in ``stages``, every conditioner in the
    LightningModule is ablated (gamma = 1, beta = 0, no gate, no extra branch, no
    in-context tokens); the previous switches are restored when the stage ends, on
    exceptions too. A stage is the trainer function that runs: ``"validate"`` means
    ``trainer.validate()``, not the validation loop inside ``trainer.fit()`` (that belongs
    to ``"fit"``).

    To measure what conditioning contributes, test twice and compare::

        conditioned = trainer.test(model, datamodule=dm)
        ablated = Trainer(callbacks=[ConditioningAblation()]).test(model, datamodule=dm)

    or, without a callback, ``with ablate_conditioning(model): trainer.test(model, dm)``.

    Args:
        stages: the trainer functions to ablate, a subset of
            ``("fit", "validate", "test", "predict")``.
    """

    def __init__(self, stages: Sequence[str] = ("test",)) -> None:
        super().__init__()
        if isinstance(stages, str):
            stages = [stages]
        if not isinstance(stages, Sequence) or not stages:
            raise ValueError(
                f"ConditioningAblation: stages must be a non-empty list of stage names from {list(STAGES)}, "
                f"got {stages!r}"
            )
        unknown = [s for s in stages if s not in STAGES]
        if unknown:
            raise ValueError(
                f"ConditioningAblation: unknown stage(s) {unknown} in stages={list(stages)}; accepted: {list(STAGES)}"
            )
        self.stages: tuple[str, ...] = tuple(dict.fromkeys(stages))
        self._previous: list[tuple[Conditioner, bool]] | None = None

    # -- Lightning hooks ---------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._begin(trainer, pl_module, "fit")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end(trainer, "fit")

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._begin(trainer, pl_module, "validate")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end(trainer, "validate")

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._begin(trainer, pl_module, "test")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end(trainer, "test")

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._begin(trainer, pl_module, "predict")

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end(trainer, "predict")

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._restore()

    # -- internals ---------------------------------------------------------------------
    @property
    def active(self) -> bool:
        """Whether this callback currently holds the model's conditioners ablated."""
        return self._previous is not None

    def _begin(self, trainer: pl.Trainer, pl_module: pl.LightningModule, fn: str) -> None:
        # Hooks such as on_validation_start also fire inside other functions (fit):
        # only the one matching the running function counts.
        if trainer.state.fn != fn or fn not in self.stages or self._previous is not None:
            return
        conds = [c for _, c in named_conditioners(pl_module)]
        if not conds:
            raise ValueError(
                f"ConditioningAblation: {type(pl_module).__name__} contains no lightning_film Conditioner, "
                f"so ablating stages={list(self.stages)} would change nothing"
            )
        self._previous = list(zip(conds, set_ablation(pl_module, True)))

    def _end(self, trainer: pl.Trainer, fn: str) -> None:
        if trainer.state.fn == fn:
            self._restore()

    def _restore(self) -> None:
        if self._previous is None:
            return
        for cond, state in self._previous:
            cond.ablated = state
        self._previous = None
