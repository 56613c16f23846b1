"""Name -> factory registries for swappable components.

A registry is a dict, a decorator that fills it, and an entry-point group that
third-party packages use to add to it (timm's ``register_model`` / ``create_model``
is the model). Specs that pick a component may be:

- a registered name: ``"film"``;
- an import path: ``"my_pkg.my_module:MyConditioner"``;
- a mapping with a ``name`` and options, so YAML can carry options:
  ``{"name": "film", "hidden_dim": 64}``;
- in Python, the class or factory itself.

Unknown names raise :class:`RegistryError` naming the spec, the closest match and
every registered name. Entry-point plugins load lazily, on the first lookup that
misses (or the first listing), once.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import itertools
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Union

from torch import nn

__all__ = [
    "Registry",
    "RegistryError",
    "Spec",
    "NORMALIZERS",
    "CONDITIONERS",
    "register_normalizer",
    "register_conditioner",
    "build_normalizer",
    "build_conditioner",
    "list_normalizers",
    "list_conditioners",
]

#: What a config may carry to pick a component (a name or ``{"name": ..., **options}``).
Spec = Union[str, Mapping[str, Any]]  # noqa: UP007  (a runtime alias jsonargparse reads)


class RegistryError(ValueError):
    """A spec that names nothing registered, a taken name, or options a factory rejects."""


@dataclass(frozen=True)
class Entry:
    name: str
    factory: Callable[..., Any]
    doc: str


def _first_doc_line(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


class Registry:
    """Named factories of one kind (normalizers, conditioners, ...).

    Args:
        kind: singular noun used in messages, e.g. ``"conditioner"``.
        group: entry-point group third-party packages register under, or ``None``.
        plural: the plural of ``kind`` when it is not ``kind + "s"`` (``"corpora"``).
    """

    #: every live registry by creation order (``Registry.every``), so ``lightning-film list`` sees a
    #: registry wherever it is declared, ours or a plugin's, without a hand-kept list
    _live: weakref.WeakValueDictionary[int, Registry] = weakref.WeakValueDictionary()
    _created = itertools.count()

    def __init__(self, kind: str, group: str | None = None, plural: str | None = None) -> None:
        Registry._live[next(Registry._created)] = self
        self.kind = kind
        self.plural = plural or f"{kind}s"
        self.group = group
        self._entries: dict[str, Entry] = {}
        self._plugins_loaded = group is None

    @classmethod
    def every(cls) -> list[Registry]:
        """Every registry that exists, the first created first (ours: registry.py's, then by import)."""
        return [cls._live[k] for k in sorted(cls._live.keys())]

    # -- filling -----------------------------------------------------------------
    def register(
        self, name: str | None = None, *, override: bool = False, doc: str | None = None
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: ``@registry.register("film")`` registers the decorated factory."""

        def decorator(factory: Callable[..., Any]) -> Callable[..., Any]:
            self.add(name or factory.__name__.lower(), factory, override=override, doc=doc)
            return factory

        return decorator

    def add(self, name: str, factory: Callable[..., Any], *, override: bool = False, doc: str | None = None) -> None:
        if not isinstance(name, str) or not name or any(c in name for c in ":. "):
            raise RegistryError(f"invalid {self.kind} name {name!r}: use a non-empty string without ':', '.' or spaces")
        if not callable(factory):
            raise RegistryError(f"{self.kind} {name!r} must be a class or callable, got {factory!r}")
        taken = self._entries.get(name)
        if taken is not None and taken.factory is not factory and not override:
            raise RegistryError(
                f"{self.kind} name {name!r} is already taken by {_qualname(taken.factory)}; "
                f"pass override=True to replace it, or pick another name"
            )
        self._entries[name] = Entry(name, factory, doc if doc is not None else _first_doc_line(factory))

    # -- reading -----------------------------------------------------------------
    def names(self) -> list[str]:
        """Sorted registered names, entry-point plugins included."""
        self._load_plugins()
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: object) -> bool:
        if name in self._entries:
            return True
        self._load_plugins()
        return name in self._entries

    def get(self, name: str) -> Callable[..., Any]:
        """The factory registered as ``name``; a clear :class:`RegistryError` otherwise."""
        if name not in self._entries:
            self._load_plugins()
        if name not in self._entries:
            raise RegistryError(self._unknown_message(name))
        return self._entries[name].factory

    def resolve(self, spec: Any) -> tuple[Callable[..., Any], dict[str, Any], str]:
        """Split a spec into (factory, options, display name)."""
        options: dict[str, Any] = {}
        if isinstance(spec, Mapping):
            if "name" not in spec:
                raise RegistryError(
                    f"a {self.kind} spec mapping needs a 'name' key, got keys {sorted(spec)}; "
                    f"e.g. {{'name': {self._example()!r}, ...options}}"
                )
            options = {k: v for k, v in spec.items() if k != "name"}
            spec = spec["name"]
        if isinstance(spec, str):
            if ":" in spec:
                return _import_path(spec, self.kind), options, spec
            return self.get(spec), options, spec
        if callable(spec):
            return spec, options, _qualname(spec)
        raise RegistryError(
            f"a {self.kind} spec must be a registered name, 'package.module:Class', "
            f"a mapping with 'name', or a class; got {spec!r} ({type(spec).__name__}). "
            f"Registered {self.plural}: {', '.join(self.names())}"
        )

    def build(self, spec: Any, *args: Any, **kwargs: Any) -> Any:
        """Build the component a spec names; spec options are overridden by ``kwargs``."""
        factory, options, shown = self.resolve(spec)
        options.update(kwargs)
        _check_options(factory, args, options, f"{self.kind} {shown!r}")
        return factory(*args, **options)

    # -- helpers -----------------------------------------------------------------
    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True  # once, even if a plugin fails below
        for ep in entry_points(group=self.group):
            if ep.name in self._entries:
                continue
            try:
                obj = ep.load()
            except Exception as err:  # a broken plugin must not hide the built-ins
                raise RegistryError(
                    f"{self.kind} plugin {ep.name!r} ({ep.value}) from entry-point group "
                    f"{self.group!r} failed to import: {err}"
                ) from err
            if ep.name not in self._entries:  # importing it may have registered it already
                self.add(ep.name, obj)

    def _unknown_message(self, name: str) -> str:
        names = sorted(self._entries)
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else "."
        return (
            f"unknown {self.kind} {name!r}{hint} Registered {self.plural}: {', '.join(names)}. "
            f"A 'package.module:Class' path also works; a name registered in your own module needs that "
            f"module imported first: 'imports: [my_module]' in the config or '--imports my_module'."
        )

    def _example(self) -> str:
        return next(iter(sorted(self._entries)), "name")


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', repr(obj))}"


def _import_path(path: str, kind: str) -> Callable[..., Any]:
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise RegistryError(f"{kind} path {path!r}: cannot import module {module_name!r} ({err})") from err
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise RegistryError(f"{kind} path {path!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise RegistryError(f"{kind} path {path!r} names {obj!r}, which is not a class or callable")
    return obj


def _check_options(factory: Callable[..., Any], args: tuple, options: dict[str, Any], what: str) -> None:
    """Reject options the factory does not take, before torch ever sees them."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # builtins without a signature: let the call speak
        return
    params = signature.parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    accepted = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n != "self"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        optional = [n for n in accepted if params[n].default is not inspect.Parameter.empty]
        raise RegistryError(f"{what} got unknown option(s) {unknown}; it accepts {optional}")
    try:
        signature.bind(*args, **options)
    except TypeError as err:
        raise RegistryError(f"{what}: {err}; its signature is {signature}") from err


NORMALIZERS = Registry("normalizer", group="lightning_film.normalizers")
CONDITIONERS = Registry("conditioner", group="lightning_film.conditioners")


def register_normalizer(
    name: str | None = None, *, override: bool = False
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a normalizer factory ``f(dim, **options) -> nn.Module`` (over the last dim)."""
    return NORMALIZERS.register(name, override=override)


def register_conditioner(
    name: str | None = None, *, override: bool = False
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a conditioner factory ``f(dim, cond_dim, site=..., **options) -> Conditioner``."""
    return CONDITIONERS.register(name, override=override)


def build_normalizer(spec: Spec | Callable[..., nn.Module], dim: int, **kwargs: Any) -> nn.Module:
    """Build a normalizer over the last dimension ``dim`` from a spec (see module doc)."""
    return NORMALIZERS.build(spec, dim, **kwargs)


def build_conditioner(spec: Spec | Callable[..., nn.Module], dim: int, cond_dim: int, **kwargs: Any) -> nn.Module:
    """Build a conditioner for features of width ``dim`` and conditioning of width ``cond_dim``."""
    return CONDITIONERS.build(spec, dim, cond_dim, **kwargs)


def list_normalizers() -> list[str]:
    return NORMALIZERS.names()


def list_conditioners() -> list[str]:
    return CONDITIONERS.names()
