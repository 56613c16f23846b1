"""Lightning callbacks that work on any LightningModule containing lightning_film conditioners.

Importing this package makes the short names usable in LightningCLI configs
(``class_path: ConditioningDiagnostics``). The quantization and export callbacks import torchao /
coremltools only when they run.
"""

from lightning_film.callbacks.ane_export import ANEExportCallback
from lightning_film.callbacks.compile import TorchCompile
from lightning_film.callbacks.conditioning_ablation import ConditioningAblation
from lightning_film.callbacks.conditioning_diagnostics import ConditioningDiagnostics
from lightning_film.callbacks.cpu_memory import ReuseFreedMemory
from lightning_film.callbacks.ema import EMA
from lightning_film.callbacks.quantization import QuantizationCallback
from lightning_film.models.print_samples import PrintSamples

__all__ = [
    "ANEExportCallback",
    "ConditioningAblation",
    "ConditioningDiagnostics",
    "EMA",
    "PrintSamples",
    "QuantizationCallback",
    "ReuseFreedMemory",
    "TorchCompile",
]
