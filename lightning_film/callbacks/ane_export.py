"""Export the trained model to Core ML for the Apple Neural Engine at the end of ``fit``.

Writes ``<dirpath>/<filename>.mlpackage`` and ``<filename>.json`` (the report: size, op histogram,
weight storage per role, inputs/outputs with shapes, Neural Engine warnings); see
:mod:`lightning_film.export.coreml`. The LightningModule and its checkpoints are never touched:
a copy is exported, and a failed export leaves no file behind.

    trainer:
      callbacks:
        - class_path: ANEExportCallback
          init_args: {weights: int4_film, deployment_target: iOS18, layout: ane}

``lightning-film export --ckpt PATH --to coreml`` does the same from a checkpoint, on demand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

__all__ = ["ANEExportCallback"]


class ANEExportCallback(Callback):
    """Export the model's inference step to a ``.mlpackage`` (fp16, CPU_AND_NE) at fit end.

    Args:
        dirpath: the folder (default ``<trainer.default_root_dir>/export``).
        filename: the package name, without ``.mlpackage``.
        weights: compression per role: ``fp16``, ``int8``, ``int4``, ``int4_film``, ``palettize4``
            or a mapping role -> format (roles: conditioner, backbone, embedding, head).
        roles: per-role overrides of ``weights`` (``"conditioner=int4"`` or a mapping).
        group_size: int4 block length.
        deployment_target: coremltools target (``iOS18``, ``macOS15``, ...); int4 needs iOS18.
        batch_size: the fixed batch size of the inputs.
        seq_len: ByteLM's fixed window (default its context).
        from_quantization: export the torchao-quantized copy made by the QuantizationCallback with
            this label (its int8 / int4 weights go to Core ML as they are) instead of the float model.
        layout: ``"default"`` exports the model as it is; ``"ane"`` a copy rebuilt for the Neural
            Engine (channels-first (B, C, 1, S), linears as 1x1 convolutions, attention per head,
            fp16-safe epsilons and mask; same weights, inputs and output; see
            :mod:`lightning_film.export.ane_layout`).
    """

    def __init__(
        self,
        dirpath: str | None = None,
        filename: str = "model",
        weights: str | dict[str, str] = "fp16",
        roles: str | dict[str, str] | None = None,
        group_size: int = 32,
        deployment_target: str = "iOS18",
        batch_size: int = 1,
        seq_len: int | None = None,
        from_quantization: str | None = None,
        layout: Literal["default", "ane"] = "default",
    ) -> None:
        super().__init__()
        from lightning_film.export.coreml import compression_scheme

        if not isinstance(filename, str) or not filename or "/" in filename or filename.endswith(".mlpackage"):
            raise ValueError(
                f"ANEExportCallback: filename must be a plain name without '/' or .mlpackage, got {filename!r}"
            )
        try:
            self.scheme = compression_scheme(weights, roles, group_size)
        except ValueError as err:
            raise ValueError(f"ANEExportCallback: {err}") from None
        if from_quantization is not None and self.scheme.quantized_roles:
            raise ValueError(
                "ANEExportCallback: from_quantization exports torchao's int8/int4 weights as they are; "
                f"leave weights at 'fp16' (got {self.scheme.label})"
            )
        if layout not in ("default", "ane"):
            raise ValueError(f"ANEExportCallback: unknown layout {layout!r}; accepted: 'default', 'ane'")
        if layout == "ane" and from_quantization is not None:
            raise ValueError(
                "ANEExportCallback: layout 'ane' rebuilds the float model's linears as convolutions, which a "
                "torchao-quantized copy cannot give; drop from_quantization and choose weights (int8, int4_film, ...)"
            )
        self.layout = layout
        self.dirpath, self.filename = dirpath, filename
        self.weights, self.roles, self.group_size = weights, roles, group_size
        self.deployment_target = deployment_target
        self.batch_size, self.seq_len = batch_size, seq_len
        self.from_quantization = from_quantization
        #: The report of the last export (None before).
        self.report: dict[str, Any] | None = None

    def path(self, trainer: pl.Trainer) -> Path:
        root = Path(self.dirpath) if self.dirpath is not None else Path(trainer.default_root_dir) / "export"
        return root / f"{self.filename}.mlpackage"

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        # the checks that need no model run now, not after training
        from lightning_film.export.coreml import check_output, check_target
        from lightning_film.quantization.extras import require

        ct = require("coremltools", "coreml", "ANEExportCallback")
        try:
            check_target(ct, self.deployment_target, self.scheme)
        except ValueError as err:
            raise ValueError(f"ANEExportCallback: {err}") from None
        if trainer.is_global_zero:
            check_output(self.path(trainer))
        if self.from_quantization is not None and self._quantization(trainer) is None:
            from lightning_film.callbacks.quantization import QuantizationCallback

            labels = [c.label for c in trainer.callbacks if isinstance(c, QuantizationCallback)]
            raise ValueError(
                f"ANEExportCallback: from_quantization={self.from_quantization!r} names no QuantizationCallback "
                f"of this trainer; their labels: {labels or 'none'}"
            )

    def _quantization(self, trainer: pl.Trainer) -> Any:
        from lightning_film.callbacks.quantization import QuantizationCallback

        return next(
            (c for c in trainer.callbacks if isinstance(c, QuantizationCallback) and c.label == self.from_quantization),
            None,
        )

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        model = pl_module
        if self.from_quantization is not None:
            quant = self._quantization(trainer)
            model = quant.quantized_model if quant.quantized_model is not None else quant.quantize_copy(pl_module)
        self.export(model, self.path(trainer))

    def export(self, model: pl.LightningModule, path: str | Path) -> dict[str, Any]:
        """Export ``model`` to ``path`` now (on demand); returns the report."""
        from lightning_film.export.coreml import export_coreml, report_path

        self.report = export_coreml(
            model,
            path,
            weights=self.weights,
            roles=self.roles,
            group_size=self.group_size,
            deployment_target=self.deployment_target,
            batch_size=self.batch_size,
            seq_len=self.seq_len,
            source=f"{type(model).__name__} at fit end",
            layout=self.layout,
        )
        size = self.report["size_bytes"]["total"]
        rank_zero_info(
            f"ANEExportCallback: wrote {path} ({size / 1e6:.2f} MB, layout {self.layout}, "
            f"{self.report['op_count']} ops, weights "
            f"{self.report['weight_storage']}) and {report_path(path)}; {len(self.report['warnings'])} warning(s)"
        )
        return self.report
