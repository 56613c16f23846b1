"""What the quant table measures: its models and their test metrics, the quantized variants, and
how a metric's change against float is computed and shown."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CONDITIONERS",
    "COREML",
    "GROUP",
    "MODELS",
    "QAT_WEIGHTS",
    "REFERENCE",
    "SCALE_BOUND",
    "SPECS",
    "VARIANTS",
    "MetricSpec",
    "ModelSpec",
    "change",
    "change_digits",
    "change_unit",
]

MODELS = ("byte", "world")
CONDITIONERS = ("film", "film_tanh")
#: torchao post-training variants, by role (:data:`lightning_film.quantization.PRESETS`), float first.
VARIANTS = ("float", "int8", "int4_film", "int4")
#: int8 weights and dynamically quantized int8 activations on every Linear: not a role format, a
#: reference for CPU speed (the only variant here with int8 matmuls).
REFERENCE = "int8_dyn"
COREML = ("fp16", "int8", "int4_film", "int4", "palettize4")
QAT_WEIGHTS = "int4"
GROUP = 32
SCALE_BOUND = 0.5  # film_tanh's default bound: gamma in (0.5, 1.5)


@dataclass(frozen=True)
class MetricSpec:
    """A test metric: its logged key, how it reads, and how a change is shown (% or difference)."""

    key: str
    name: str
    lower_is_better: bool
    relative: bool
    digits: int


@dataclass(frozen=True)
class ModelSpec:
    """A model of the table: its config and class, the option that picks its FiLM conditioner, the
    options a run's seed sets, its test metrics."""

    config: Path
    model_class: str
    conditioner_option: str
    seed_options: tuple[str, ...]
    metrics: tuple[MetricSpec, ...]
    title: str


SPECS: dict[str, ModelSpec] = {
    "byte": ModelSpec(
        Path("configs/byte/nibble_acc.yaml"),
        "ByteLM",
        "model.net.embed_conditioner",
        ("data.seed",),
        (MetricSpec("test/bpb", "test bpb", True, True, 4),),
        "Byte model (ByteLM nibble_acc: FiLM modulates the byte embedding)",
    ),
    "world": ModelSpec(
        Path("configs/world/filmcond.yaml"),
        "WorldModel",
        "model.net.conditioner",
        ("data.seed", "model.seed"),
        (
            MetricSpec("test/loss", "test loss", True, True, 4),
            MetricSpec("test/psnr", "PSNR (dB)", False, False, 2),
            MetricSpec("test/kid_mean", "KID", True, False, 4),
        ),
        "World model (WorldModel filmcond: FiLM on time + action in every block)",
    ),
}


def change(metric: MetricSpec, value: float, reference: float) -> float:
    """``value`` against ``reference``: percent for relative metrics, else the difference."""
    return 100 * (value / reference - 1) if metric.relative else value - reference


def change_unit(metric: MetricSpec) -> str:
    return "%" if metric.relative else ""


def change_digits(metric: MetricSpec) -> int:
    return 3 if metric.relative else metric.digits
