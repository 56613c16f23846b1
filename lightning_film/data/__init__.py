"""Data: byte data (nibble schemes, the dead-energy accumulator, named corpora, ``ByteDataModule``)
and world data (worlds, episode shards, ``WorldDataModule``).

``import lightning_film.data`` (and so ``import lightning_film``) fills the nibble-scheme, corpus
and world registries without importing Lightning; ``ByteDataModule`` and ``WorldDataModule``
(LightningDataModules) are imported on first use.
"""

from typing import Any

from lightning_film.data.accumulator import StreamingAccumulator, accumulate, pair_counts, rare_events, rare_table
from lightning_film.data.corpora import CORPORA, list_corpora, load_corpus, register_corpus
from lightning_film.data.environments import (
    WORLDS,
    BounceRoom,
    StickyRandomPolicy,
    World,
    build_world,
    list_worlds,
    register_world,
)
from lightning_film.data.gym_adapter import GymWorld  # registers the "gym" world (Gymnasium is imported on use)
from lightning_film.data.nibbles import (
    NIBBLE_SCHEMES,
    NibbleScheme,
    Utf8Code,
    build_nibble_scheme,
    list_nibble_schemes,
    register_nibble_scheme,
)
from lightning_film.data.shards import Manifest, load_episodes, read_manifest

__all__ = [
    "CORPORA",
    "NIBBLE_SCHEMES",
    "WORLDS",
    "BounceRoom",
    "ByteDataModule",
    "GymWorld",
    "Manifest",
    "NibbleScheme",
    "StickyRandomPolicy",
    "StreamingAccumulator",
    "Utf8Code",
    "World",
    "WorldDataModule",
    "accumulate",
    "build_nibble_scheme",
    "build_world",
    "list_corpora",
    "list_nibble_schemes",
    "list_worlds",
    "load_corpus",
    "load_episodes",
    "pair_counts",
    "rare_events",
    "rare_table",
    "read_manifest",
    "register_corpus",
    "register_nibble_scheme",
    "register_world",
]


def __getattr__(name: str) -> Any:
    # PEP 562: the DataModule pulls in Lightning, which the registries do not need.
    if name == "ByteDataModule":
        from lightning_film.data.bytes import ByteDataModule

        return ByteDataModule
    if name == "WorldDataModule":
        from lightning_film.data.world import WorldDataModule

        return WorldDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
