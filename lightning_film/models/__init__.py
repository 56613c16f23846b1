"""LightningModules built on :mod:`lightning_film.nn` (these import Lightning; ``nn`` does not), and the
plain networks they train (``ByteLM(ByteNet(...))``, ``WorldModel(WorldDenoiser(...))``)."""

from lightning_film.models.byte_lm import BitsPerByte, ByteLM, ByteStream
from lightning_film.models.byte_net import ByteNet
from lightning_film.models.world_model import WorldModel
from lightning_film.models.world_net import WorldDenoiser

__all__ = ["BitsPerByte", "ByteLM", "ByteNet", "ByteStream", "WorldDenoiser", "WorldModel"]
