"""Ship models: Core ML export of each model's inference step for the Apple Neural Engine, as the
model is or rebuilt in the Neural Engine's layout (``layout="ane"``, :mod:`~lightning_film.export.ane_layout`).

Nothing here imports coremltools until an export runs (``pip install 'lightning_film[coreml]'``).
"""

from lightning_film.export.ane_layout import LAYOUTS, ane_inference_step, to_ane_layout
from lightning_film.export.coreml import (
    MIN_TARGET,
    compression_scheme,
    deployment_targets,
    export_checkpoint,
    export_coreml,
    load_checkpoint_model,
    report_path,
)
from lightning_film.export.report import ane_warnings, read_package
from lightning_film.export.steps import (
    ByteLMStep,
    ExportError,
    InferenceStep,
    TensorSpec,
    WorldModelStep,
    inference_step,
)

__all__ = [
    "LAYOUTS",
    "MIN_TARGET",
    "ByteLMStep",
    "ExportError",
    "InferenceStep",
    "TensorSpec",
    "WorldModelStep",
    "ane_inference_step",
    "ane_warnings",
    "compression_scheme",
    "deployment_targets",
    "export_checkpoint",
    "export_coreml",
    "inference_step",
    "load_checkpoint_model",
    "read_package",
    "report_path",
    "to_ane_layout",
]
