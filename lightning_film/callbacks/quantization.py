"""Quantize a model with torchao, per role, and log its metrics next to the float ones.

Two modes (``mode``):

- ``ptq``: at the end of ``fit`` a deep **copy** of the trained model is quantized and evaluated on
  the validation data; ``trainer.test()`` / ``trainer.validate()`` likewise score a quantized copy on
  their data and return its metrics with the model's own. Every metric comes back with the
  scheme's label: ``val/bpb`` -> ``val/bpb_int8``, ``val/bpb/udhr`` ->
  ``val/bpb_int8/udhr`` (a world model's ``test/kid`` -> ``test/kid_int8``). The float model, its
  weights and its checkpoints are never touched.
- ``qat``: from ``start_step`` (or ``start_epoch``) the model trains with fake-quantized weights
  (torchao ``QATConfig(..., step="prepare")``; ``val/bpb`` is then the fake-quantized model's); at
  the end of ``fit`` a copy is converted (``step="convert"``), evaluated as above and kept as
  :attr:`quantized_model`, and the training model gets its plain modules back (the same
  Parameters). Test and validate runs score a converted copy as in ``ptq``.

What Lightning 1.x's ``QuantizationAwareTraining`` got wrong, and how this one differs:

- the forward is never wrapped: modules are swapped in place, so any forward signature works
  (``ByteLM(byte_ids, nibble_ids, acc_ids)``);
- ``state_dict`` keys do not change with fake quantization, so checkpoints written during QAT load
  into a plain model, and ``trainer.test(ckpt_path=...)`` works after conversion;
- the fake quantizers' cached scales are saved before each validation and put back after it:
  validation batches never change the quantization state;
- the QAT state (scheme, whether and from which step fake quantization is on) is saved in
  checkpoints, and a resumed fit turns fake quantization back on before its first step; resuming
  with another scheme is an error.

Several PTQ callbacks may run side by side (``int8`` and ``int4_film``, say); at most one QAT.
Quantized evaluation runs on one device (a second, silent Trainer on the same data).

    trainer:
      callbacks:
        - class_path: QuantizationCallback
          init_args: {mode: ptq, weights: {conditioner: int4, backbone: int8, embedding: int8, head: int8}}
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from lightning_film.errors import check_int
from lightning_film.io import atomic_path
from lightning_film.quantization import config as qconfig
from lightning_film.quantization import torchao as qt
from lightning_film.quantization.roles import ROLES, assign_roles

__all__ = ["MODES", "QuantizationCallback", "suffixed"]

MODES: tuple[str, ...] = ("ptq", "qat")


def suffixed(key: str, label: str) -> str:
    """``val/bpb`` -> ``val/bpb_<label>``; ``val/bpb/udhr`` -> ``val/bpb_<label>/udhr``."""
    parts = key.split("/")
    i = 1 if len(parts) > 1 else 0
    parts[i] = f"{parts[i]}_{label}"
    return "/".join(parts)


class QuantizationCallback(Callback):
    """Post-training quantization or QAT of any LightningModule, with a bit width per role.

    Args:
        mode: ``"ptq"`` (quantize a copy at fit end and on test) or ``"qat"`` (train with fake
            quantization, convert at the end).
        weights: a preset (``int8``, ``int4``, ``int4_film``), a mapping role -> format
            (roles: conditioner, backbone, embedding, head; formats: float, int8, int4; ``"*"``:
            every other role) or the same as ``"conditioner=int4,*=int8"``.
        group_size: int4 group length (a weight whose rows it does not divide gets the largest
            common divisor, see :func:`~lightning_film.quantization.config.effective_group_size`).
        label: the metric suffix; default the preset's name or a compact ``c4-b8-e8-h8``.
        start_step: QAT only: the optimizer step from which fake quantization is on.
        start_epoch: QAT only: the epoch from which it is on (instead of ``start_step``).
        evaluate: evaluate the quantized copy (fit end: validation data; test: test data).
        save_path: also write the quantized copy's ``state_dict`` (torchao tensors) there at fit end.
    """

    def __init__(
        self,
        mode: Literal["ptq", "qat"] = "ptq",
        weights: str | dict[str, str] = "int8",
        group_size: int = 32,
        label: str | None = None,
        start_step: int = 0,
        start_epoch: int | None = None,
        evaluate: bool = True,
        save_path: str | None = None,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"QuantizationCallback: unknown mode {mode!r}; accepted modes: {', '.join(MODES)}")
        self.mode = mode
        try:
            self.scheme = qconfig.Scheme.parse(weights, "torchao", group_size, label)
        except ValueError as err:
            raise ValueError(f"QuantizationCallback: {err}") from None
        if not self.scheme.quantized_roles:
            raise ValueError(f"QuantizationCallback: weights={weights!r} leaves every role in float; nothing to do")
        for name, value, minimum in (("start_step", start_step, 0), ("start_epoch", start_epoch, 0)):
            if value is not None:
                check_int(name, value, minimum, who="QuantizationCallback")
        if mode == "ptq" and (start_step != 0 or start_epoch is not None):
            raise ValueError(
                "QuantizationCallback: start_step / start_epoch choose when QAT starts; use them with mode='qat'"
            )
        if not isinstance(evaluate, bool):
            raise ValueError(f"QuantizationCallback: evaluate must be a bool, got {evaluate!r}")
        self.start_step, self.start_epoch = start_step, start_epoch
        self.evaluate, self.save_path = evaluate, save_path
        #: The quantized copy made at the end of the last fit (None before).
        self.quantized_model: pl.LightningModule | None = None
        #: The modules the scheme quantizes, with their format and group.
        self.entries: list[qt.PlanEntry] = []
        #: Quantized (and, when needed, float) metrics of the last evaluations, by logged name.
        self.metrics: dict[str, float] = {}
        #: ``{"float": {...}, label: {...}}``: stored and packed bytes of the state dicts.
        self.sizes: dict[str, dict[str, int]] = {}
        self._prepared = False
        self._prepared_at: int | None = None
        self._last_val_step: int | None = None
        self._saved_qparams: dict[str, tuple[Any, Any]] | None = None

    @property
    def label(self) -> str:
        return self.scheme.label

    @property
    def state_key(self) -> str:
        # one QAT callback per run: its key leaves out the scheme, so a resume with another one is caught
        if self.mode == "qat":
            return self._generate_state_key(mode=self.mode)
        return self._generate_state_key(mode=self.mode, label=self.label)

    # -- set-up -----------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        qt.require_torchao("QuantizationCallback")  # at the start of a run, not after hours of training
        if trainer.world_size > 1:
            raise ValueError(
                f"QuantizationCallback evaluates the quantized copy on one device; this run has "
                f"world_size={trainer.world_size}. Quantize the checkpoint afterwards on one device."
            )
        qat = [c for c in trainer.callbacks if isinstance(c, QuantizationCallback) and c.mode == "qat"]
        if len(qat) > 1:
            raise ValueError(f"QuantizationCallback: at most one mode='qat' callback per run, got {len(qat)}")
        self.entries = qt.plan(pl_module, self.scheme)
        if not self.entries:
            have = Counter(assign_roles(pl_module).values())
            raise ValueError(
                f"QuantizationCallback: {type(pl_module).__name__} has no module in the roles this scheme quantizes "
                f"({', '.join(self.scheme.quantized_roles)}); its roles: "
                f"{', '.join(f'{r}: {have[r]}' for r in ROLES) or 'none'}"
            )

    # -- QAT ----------------------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._maybe_prepare(trainer, pl_module)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._maybe_prepare(trainer, pl_module)

    def _due(self, trainer: pl.Trainer) -> bool:
        if self.start_epoch is not None:
            return trainer.current_epoch >= self.start_epoch
        return trainer.global_step >= self.start_step

    def _maybe_prepare(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.mode != "qat" or qt.is_prepared(pl_module) or not (self._prepared or self._due(trainer)):
            return
        qt.prepare_qat(pl_module, self.scheme)
        if self._prepared_at is None:
            self._prepared_at = trainer.global_step
        self._prepared = True
        rank_zero_info(
            f"QuantizationCallback: fake quantization ({self.label}) on from step {self._prepared_at}, "
            f"{len(self.entries)} modules"
        )

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        quantizers = qt.fake_quantizers(pl_module)
        if quantizers:
            self._saved_qparams = {name: (q.scale, q.zero_point) for name, q in quantizers.items()}

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._saved_qparams is not None:
            for name, quantizer in qt.fake_quantizers(pl_module).items():
                if name in self._saved_qparams:
                    quantizer.scale, quantizer.zero_point = self._saved_qparams[name]
            self._saved_qparams = None
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self._last_val_step = trainer.global_step

    # -- the quantized copy -------------------------------------------------------------------
    def quantize_copy(self, pl_module: pl.LightningModule) -> pl.LightningModule:
        """A quantized deep copy of ``pl_module`` (converted if it is prepared for QAT)."""
        with _quiet_lightning():
            model = copy.deepcopy(pl_module)
        try:
            if qt.is_prepared(model):
                qt.convert_qat(model, self.scheme)
            else:
                qt.quantize(model, self.scheme)
        except Exception as err:
            raise RuntimeError(
                f"QuantizationCallback: quantizing a copy of {type(pl_module).__name__} with {self.label} failed "
                f"({type(err).__name__}: {err}); the float model and its checkpoints are untouched"
            ) from err
        return model.eval()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        quantized = self.quantize_copy(pl_module)
        if self.mode == "qat":
            qt.strip_fake_quant(pl_module)
        self.quantized_model = quantized
        self.sizes = {"float": qt.size_bytes(pl_module), self.label: qt.size_bytes(quantized, self.entries)}
        if self.save_path is not None:
            with atomic_path(self.save_path) as tmp:
                torch.save(quantized.state_dict(), tmp)
        if not self.evaluate or not _has_data(trainer, "validate"):
            return
        metrics = {suffixed(k, self.label): v for k, v in _evaluate(trainer, quantized, "validate", self.label).items()}
        if self._last_val_step != trainer.global_step:
            # the model's own val metrics are from an earlier step: score the final float weights too
            plain = copy.deepcopy(pl_module).eval()
            metrics.update({suffixed(k, "float"): v for k, v in _evaluate(trainer, plain, "validate", "float").items()})
        self._publish(trainer, metrics)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log_beside(trainer, pl_module, "test")

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "validate":  # `trainer.validate()`, not the validation loop inside fit
            self._log_beside(trainer, pl_module, "validate")

    def _log_beside(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Score a quantized copy on this stage's data and log it with the model's own metrics, so
        ``trainer.test()`` / ``validate()`` return (and print) both."""
        if not self.evaluate or trainer.sanity_checking:
            return
        scores = _evaluate(trainer, self.quantize_copy(pl_module), stage, self.label)
        metrics = {suffixed(k, self.label): v for k, v in scores.items()}
        for key, value in metrics.items():
            pl_module.log(key, value)
        self.metrics.update(metrics)
        self._summary(trainer, metrics)

    def _publish(self, trainer: pl.Trainer, metrics: dict[str, float]) -> None:
        self.metrics.update(metrics)
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in metrics.items()})
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        self._summary(trainer, metrics)

    def _summary(self, trainer: pl.Trainer, metrics: dict[str, float]) -> None:
        lines = []
        for key, value in metrics.items():
            base = key.replace(f"_{self.label}", "", 1)
            if base == key:
                continue
            ref = metrics.get(suffixed(base, "float"), trainer.callback_metrics.get(base))
            ref_text = "" if ref is None else f"{float(ref):.4f} (float) -> "
            lines.append(f"  {base}: {ref_text}{value:.4f} ({self.label})")
        if lines:
            rank_zero_info(f"QuantizationCallback {self.mode} {self.label}:\n" + "\n".join(lines))

    # -- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if self.mode != "qat":
            return {}  # PTQ keeps nothing: a checkpoint is the same with or without this callback
        return {
            "mode": self.mode,
            "scheme": self.scheme.as_dict(),
            "prepared": self._prepared,
            "prepared_at_step": self._prepared_at,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        saved = state_dict.get("scheme", {})
        ours = self.scheme.as_dict()
        if (saved.get("roles"), saved.get("group_size")) != (ours["roles"], ours["group_size"]):
            raise ValueError(
                f"QuantizationCallback: the checkpoint was trained with QAT weights={saved.get('roles')} "
                f"group_size={saved.get('group_size')}, this callback has weights={ours['roles']} "
                f"group_size={ours['group_size']}; resume with the same settings"
            )
        self._prepared = bool(state_dict.get("prepared", False))
        self._prepared_at = state_dict.get("prepared_at_step")


def _has_data(trainer: pl.Trainer, stage: str) -> bool:
    if (trainer.limit_val_batches if stage == "validate" else trainer.limit_test_batches) == 0:
        return False
    if trainer.datamodule is not None:
        return True
    loaders = trainer.val_dataloaders if stage == "validate" else trainer.test_dataloaders
    return loaders is not None


@contextmanager
def _quiet_lightning():
    """The second Trainer's banner (GPU available, ...) and data-loader hints are noise here."""
    names = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
    saved = [(logging.getLogger(n), logging.getLogger(n).level) for n in names]
    for logger, _ in saved:
        logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
            warnings.filterwarnings("ignore", message=".*treespec.*", category=FutureWarning)
            yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)


def _evaluate(trainer: pl.Trainer, model: pl.LightningModule, stage: str, label: str) -> dict[str, float]:
    """Run ``model``'s validate or test loop on ``trainer``'s data with a silent one-device Trainer;
    whatever the model writes itself (a world model's sample sheets) goes to ``<log_dir>/quantized/<label>``."""
    from lightning.pytorch.accelerators import CPUAccelerator
    from torchmetrics import Metric

    for metric in model.modules():
        if isinstance(metric, Metric):  # a copy made mid-epoch carries the float model's running sums
            metric.reset()
    dm = trainer.datamodule
    try:
        with _quiet_lightning():
            inner = pl.Trainer(
                accelerator="cpu" if isinstance(trainer.accelerator, CPUAccelerator) else "auto",
                devices=1,
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                limit_val_batches=trainer.limit_val_batches,
                limit_test_batches=trainer.limit_test_batches,
                default_root_dir=Path(trainer.log_dir or trainer.default_root_dir) / "quantized" / label,
            )
            run = inner.validate if stage == "validate" else inner.test
            if dm is not None:
                results = run(model, datamodule=dm, verbose=False)
            else:
                loaders = trainer.val_dataloaders if stage == "validate" else trainer.test_dataloaders
                results = run(model, dataloaders=loaders, verbose=False)
    finally:
        if dm is not None:
            dm.trainer = trainer
    out: dict[str, float] = {}
    for result in results:
        out.update({k: float(v) for k, v in result.items()})
    return out
