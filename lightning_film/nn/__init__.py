"""Building blocks: normalizers, conditioners, attention, the conditioned transformer.

The built-ins are imported explicitly here, which fills the registries (no star-imports,
no import side effects elsewhere). ``nn`` never imports Lightning.
"""

from lightning_film.nn import norms  # noqa: F401  (registers the normalizers)
from lightning_film.nn.attention import CrossAttention, SelfAttention
from lightning_film.nn.conditioners import (
    AdaLN,
    AdaLNZero,
    Additive,
    Concat,
    Conditioner,
    CrossAttentionConditioner,
    FiLM,
    FiLMExp,
    FiLMTanh,
    Gate,
    NoConditioning,
    ProjectedConditioner,
)
from lightning_film.nn.conditioning import Conditioning, combine_signals, combined_dim
from lightning_film.nn.diagnostics import ablate_conditioning, named_conditioners, observe_conditioning
from lightning_film.nn.diffusion import Diffusion, Flow, Objective, TimestepEmbedder, build_objective
from lightning_film.nn.embedding import DualModulatedEmbedding
from lightning_film.nn.mlp import MLP
from lightning_film.nn.norms import DyT, Identity, LayerNorm, RMSNorm
from lightning_film.nn.transformer import Transformer, TransformerBlock

__all__ = [
    "MLP",
    "AdaLN",
    "AdaLNZero",
    "Additive",
    "Concat",
    "Conditioner",
    "Conditioning",
    "CrossAttention",
    "CrossAttentionConditioner",
    "Diffusion",
    "DualModulatedEmbedding",
    "DyT",
    "FiLM",
    "FiLMExp",
    "FiLMTanh",
    "Flow",
    "Gate",
    "Identity",
    "LayerNorm",
    "NoConditioning",
    "Objective",
    "ProjectedConditioner",
    "RMSNorm",
    "SelfAttention",
    "Transformer",
    "TimestepEmbedder",
    "TransformerBlock",
    "ablate_conditioning",
    "build_objective",
    "combine_signals",
    "combined_dim",
    "named_conditioners",
    "observe_conditioning",
]
