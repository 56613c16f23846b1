"""Byte data: nibble schemes, the dead-energy accumulator, named corpora and ``ByteDataModule``.

``import lightning_film.data`` (and so ``import lightning_film``) fills the nibble-scheme and
corpus registries without importing Lightning; ``ByteDataModule`` (a LightningDataModule)
is imported on first use.
"""

from typing import Any

from lightning_film.data.accumulator import (
    StreamingAccumulator,
    accumulate,
    pair_counts,
    rare_events,
    rare_table,
)
from lightning_film.data.corpora import CORPORA, list_corpora, load_corpus, register_corpus
from lightning_film.data.nibbles import (
    NIBBLE_SCHEMES,
    NibbleScheme,
    Utf8Code,
    build_nibble_scheme,
    list_nibble_schemes,
    register_nibble_scheme,
)

__all__ = [
    "CORPORA",
    "NIBBLE_SCHEMES",
    "ByteDataModule",
    "NibbleScheme",
    "StreamingAccumulator",
    "Utf8Code",
    "accumulate",
    "build_nibble_scheme",
    "list_corpora",
    "list_nibble_schemes",
    "load_corpus",
    "pair_counts",
    "rare_events",
    "rare_table",
    "register_corpus",
    "register_nibble_scheme",
]


def __getattr__(name: str) -> Any:
    # PEP 562: the DataModule pulls in Lightning, which the registries do not need.
    if name == "ByteDataModule":
        from lightning_film.data.bytes import ByteDataModule

        return ByteDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
