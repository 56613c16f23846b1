"""LightningModules built on :mod:`lightning_film.nn` (these import Lightning; ``nn`` does not)."""

from lightning_film.models.byte_lm import BitsPerByte, ByteLM, ByteStream
from lightning_film.models.world_model import WorldModel

__all__ = ["BitsPerByte", "ByteLM", "ByteStream", "WorldModel"]
