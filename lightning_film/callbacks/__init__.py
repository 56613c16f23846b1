"""Lightning callbacks that work on any LightningModule containing lightning_film conditioners.

Importing this package makes the short names usable in LightningCLI configs
(``class_path: ConditioningDiagnostics``).
"""

from lightning_film.callbacks.conditioning_ablation import ConditioningAblation
from lightning_film.callbacks.conditioning_diagnostics import ConditioningDiagnostics
from lightning_film.callbacks.print_samples import PrintSamples

__all__ = ["ConditioningAblation", "ConditioningDiagnostics", "PrintSamples"]
