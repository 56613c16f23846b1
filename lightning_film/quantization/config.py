"""Per-role bit widths as plain data: what a config line, a CLI flag or a checkpoint carries.

A *scheme* maps every role (:data:`~lightning_film.quantization.roles.ROLES`) to a weight format
and names the group size of the grouped (int4) formats. It is written as

- a preset name: ``"int8"``, ``"int4"``, ``"int4_film"`` (the seeds' plan: conditioner projections
  in int4, everything else in int8), and for Core ML also ``"fp16"`` and ``"palettize4"``;
- a mapping ``{"conditioner": "int4", "backbone": "int8", "embedding": "int8", "head": "int8"}``,
  where ``"*"`` stands for every role not named and a role left out stays unquantized;
- the same as text, ``"conditioner=int4,*=int8"`` (the CLI's ``--roles``).

Formats for torchao (``target="torchao"``): ``float`` (left as is), ``int8`` (per output channel,
symmetric) and ``int4`` (per group of ``group_size`` input weights, symmetric). For Core ML
(``target="coreml"``): ``fp16`` (no compression), ``int8`` (per channel), ``int4`` (per block of
``group_size``) and ``palettize4`` (a 16-entry k-means look-up table per tensor).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from lightning_film.errors import check_int
from lightning_film.quantization.roles import ROLES

__all__ = ["FORMATS", "PRESETS", "Scheme", "Target", "effective_group_size", "parse_roles"]

Target = Literal["torchao", "coreml"]
#: The weight formats each target accepts; the first one means "not compressed".
FORMATS: dict[str, tuple[str, ...]] = {
    "torchao": ("float", "int8", "int4"),
    "coreml": ("fp16", "int8", "int4", "palettize4"),
}
#: Preset schemes: role -> format, for each target.
PRESETS: dict[str, dict[str, dict[str, str]]] = {
    "torchao": {
        "int8": dict.fromkeys(ROLES, "int8"),
        "int4": dict.fromkeys(ROLES, "int4"),
        "int4_film": {**dict.fromkeys(ROLES, "int8"), "conditioner": "int4"},
    },
    "coreml": {
        "fp16": dict.fromkeys(ROLES, "fp16"),
        "int8": dict.fromkeys(ROLES, "int8"),
        "int4": dict.fromkeys(ROLES, "int4"),
        "int4_film": {**dict.fromkeys(ROLES, "int8"), "conditioner": "int4"},
        "palettize4": dict.fromkeys(ROLES, "palettize4"),
    },
}
#: Groups smaller than this are not worth their scales: such a weight falls back to per channel.
MIN_GROUP = 8


def effective_group_size(length: int, group_size: int) -> int | None:
    """The group a weight of reduction length ``length`` gets: the largest divisor of ``length``
    that also divides ``group_size`` (the gcd), or ``None`` (per channel) when that is under
    :data:`MIN_GROUP` and shorter than the row. A FiLM projection reading 48 conditioning
    features gets groups of 16 when 32 is asked for."""
    g = math.gcd(length, group_size)
    if g == length or g >= MIN_GROUP:
        return g
    return None


def parse_roles(spec: str | Mapping[str, str], target: Target = "torchao") -> dict[str, str]:
    """A preset name, a mapping or ``"role=format,..."`` text -> ``{role: format}`` for every role.

    Unknown presets, roles and formats raise a ``ValueError`` that lists the accepted ones.
    """
    _check_target(target)
    formats, presets, none = FORMATS[target], PRESETS[target], FORMATS[target][0]
    if isinstance(spec, str) and "=" not in spec:
        name = spec.strip()
        if name not in presets:
            raise ValueError(
                f"unknown {target} weight scheme {spec!r}; accepted presets: {', '.join(presets)}; "
                f"or per role, e.g. 'conditioner=int4,*=int8' (roles: {', '.join(ROLES)}; formats: "
                f"{', '.join(formats)})"
            )
        return dict(presets[name])
    if isinstance(spec, str):
        pairs: list[tuple[str, str]] = []
        for item in filter(None, (s.strip() for s in spec.split(","))):
            role, eq, fmt = item.partition("=")
            if not eq:
                raise ValueError(
                    f"bad role setting {item!r} in {spec!r}: expected role=format, e.g. 'conditioner=int4'"
                )
            pairs.append((role.strip(), fmt.strip()))
    elif isinstance(spec, Mapping):
        pairs = [(str(k), v) for k, v in spec.items()]
    else:
        raise ValueError(
            f"a weight scheme is a preset name, a mapping role -> format or 'role=format,...'; got {spec!r}"
        )
    if not pairs:
        raise ValueError(f"empty weight scheme {spec!r}; name a preset ({', '.join(presets)}) or roles")
    roles = dict.fromkeys(ROLES, none)
    default = dict(pairs).get("*")
    if default is not None:
        _check_format(default, formats, "*", target)
        roles = dict.fromkeys(ROLES, default)
    for role, fmt in pairs:
        if role == "*":
            continue
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; accepted roles: {', '.join(ROLES)} (and '*' for the rest)")
        _check_format(fmt, formats, role, target)
        roles[role] = fmt
    return roles


def _check_format(fmt: Any, formats: tuple[str, ...], role: str, target: str) -> None:
    if fmt not in formats:
        raise ValueError(f"unknown {target} format {fmt!r} for role {role!r}; accepted formats: {', '.join(formats)}")


def _check_target(target: str) -> None:
    if target not in FORMATS:
        raise ValueError(f"unknown quantization target {target!r}; accepted: {', '.join(FORMATS)}")


@dataclass(frozen=True)
class Scheme:
    """A resolved scheme: ``roles`` (every role -> format), ``group_size`` and its ``label``.

    The label names the quantized metrics (``val/bpb`` -> ``val/bpb_<label>``): the preset's name,
    or for a custom mapping a compact ``c4-b8-e8-h8`` (role initial, bits; ``f`` unquantized,
    ``p4`` palettized).
    """

    roles: dict[str, str]
    group_size: int = 32
    label: str = ""
    target: str = "torchao"

    @classmethod
    def parse(
        cls,
        spec: str | Mapping[str, str] | Scheme,
        target: Target = "torchao",
        group_size: int = 32,
        label: str | None = None,
    ) -> Scheme:
        if isinstance(spec, Scheme):
            return spec
        check_int("group_size", group_size, 1)
        roles = parse_roles(spec, target)
        if label is None:
            label = _label(spec, roles, target)
        if not isinstance(label, str) or not label or any(c in label for c in " /\\"):
            raise ValueError(f"label must be a non-empty name without spaces or slashes, got {label!r}")
        return cls(roles=roles, group_size=group_size, label=label, target=target)

    @property
    def quantized_roles(self) -> list[str]:
        """Roles whose weights this scheme compresses."""
        return [r for r in ROLES if self.roles[r] != FORMATS[self.target][0]]

    def as_dict(self) -> dict[str, Any]:
        """Plain data (checkpoints, JSON reports)."""
        return {"target": self.target, "roles": dict(self.roles), "group_size": self.group_size, "label": self.label}


def _label(spec: Any, roles: dict[str, str], target: str) -> str:
    for name, preset in PRESETS[target].items():
        if preset == roles:
            return name
    short = {"float": "f", "fp16": "f", "int8": "8", "int4": "4", "palettize4": "p4"}
    return "-".join(f"{role[0]}{short[roles[role]]}" for role in ROLES)
