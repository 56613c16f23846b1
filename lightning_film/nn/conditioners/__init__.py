"""Built-in conditioners; importing this package registers every one of them."""

from lightning_film.nn.conditioners.adaln import AdaLN, AdaLNZero
from lightning_film.nn.conditioners.adaln_single import AdaLNSingle
from lightning_film.nn.conditioners.base import SITES, Conditioner, ProjectedConditioner, Site, projection
from lightning_film.nn.conditioners.film import FiLM, FiLMExp, FiLMTanh, Gate
from lightning_film.nn.conditioners.simple import Additive, NoConditioning, conditions_nothing
from lightning_film.nn.conditioners.tokens import Concat, CrossAttentionConditioner

__all__ = [
    "SITES",
    "AdaLN",
    "AdaLNSingle",
    "AdaLNZero",
    "Additive",
    "Concat",
    "Conditioner",
    "CrossAttentionConditioner",
    "FiLM",
    "FiLMExp",
    "FiLMTanh",
    "Gate",
    "NoConditioning",
    "ProjectedConditioner",
    "Site",
    "conditions_nothing",
    "projection",
]
