"""LightningModules built on :mod:`lightning_film.nn` (these import Lightning; ``nn`` does not)."""

from lightning_film.models.byte_lm import BitsPerByte, ByteLM, ByteStream

__all__ = ["BitsPerByte", "ByteLM", "ByteStream"]
