"""lightning_film: compare, train and ship conditioned transformers with PyTorch Lightning.

``import lightning_film`` fills every built-in registry.
"""

from lightning_film import data, metrics, nn  # noqa: F401  (fill the built-in registries: nn's, data's, metrics')
from lightning_film.nn import Conditioner, Conditioning, Transformer, TransformerBlock
from lightning_film.registry import (
    RegistryError,
    build_conditioner,
    build_normalizer,
    list_conditioners,
    list_normalizers,
    register_conditioner,
    register_normalizer,
)

__version__ = "0.1.0"

__all__ = [
    "Conditioner",
    "Conditioning",
    "RegistryError",
    "Transformer",
    "TransformerBlock",
    "__version__",
    "build_conditioner",
    "build_normalizer",
    "list_conditioners",
    "list_normalizers",
    "register_conditioner",
    "register_normalizer",
]
