"""What a quantized model costs to run: CPU forward time against float, and its float weights as
Core ML packages per compression."""

from __future__ import annotations

import functools
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightning_film.measure import interleaved, paired_ratios, repeat_times, spread
from lightning_film.reproduce.quant_specs import GROUP

__all__ = ["coreml_packages", "forward_speed"]


def _forward(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
    with torch.inference_mode():
        module(*inputs)


def forward_speed(
    models: dict[str, nn.Module], batch_sizes: tuple[int, ...], repeats: int, steps_per_repeat: int
) -> dict[str, Any]:
    """Inference-step forward time of each model (``float`` among them) and its ratio to ``float``'s
    per repeat (> 1: slower), on the export's fixed-shape inputs (byte: B x seq_len ids; world: one
    denoiser call on B frames), all models interleaved."""
    from lightning_film.export import inference_step

    out: dict[str, Any] = {}
    for batch in batch_sizes:
        steps = {label: inference_step(m, batch_size=batch) for label, m in models.items()}
        inputs = steps["float"].example()
        calls = {label: functools.partial(_forward, s.module, inputs) for label, s in steps.items()}
        raw = interleaved(calls, repeats, steps_per_repeat, warmup=2)
        out[f"batch {batch}"] = {
            "inputs": {spec.name: list(spec.shape) for spec in steps["float"].inputs},
            "median_s": {k: statistics.median(repeat_times(v)) for k, v in raw.items()},
            "ratio_to_float": {k: spread(paired_ratios(v, raw["float"])) for k, v in raw.items()},
            "raw_step_s": raw,
        }
    return out


def coreml_packages(
    model: nn.Module, folder: Path, compressions: tuple[str, ...], name: str, group_size: int = GROUP
) -> dict[str, Any]:
    """Export ``model``'s float weights to ``folder/<name>-<compression>.mlpackage`` per compression:
    size, weight storage, op counts and Neural Engine warnings of each package."""
    from lightning_film.export import export_coreml

    out = {}
    for weights in compressions:
        start = time.perf_counter()
        report = export_coreml(model, folder / f"{name}-{weights}.mlpackage", weights=weights, group_size=group_size)
        keep = ("path", "size_bytes", "op_count", "op_histogram", "weight_storage", "warnings", "inputs", "outputs")
        out[weights] = {"seconds": time.perf_counter() - start, **{k: report[k] for k in keep}}
    return out
