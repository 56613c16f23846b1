"""Quantization by role (conditioner projections, backbone, embeddings, head) on torchao.

``roles`` reads the roles from the module tree, ``config`` holds schemes as plain data, and
``torchao`` applies them (PTQ and QAT). Nothing here imports torchao until it is used.
"""

from lightning_film.quantization.config import FORMATS, PRESETS, Scheme, effective_group_size, parse_roles
from lightning_film.quantization.extras import MissingExtraError
from lightning_film.quantization.roles import HEAD_NAMES, ROLES, RoleWeight, assign_roles, role_weights
from lightning_film.quantization.torchao import (
    PlanEntry,
    convert_qat,
    fake_quantizers,
    is_prepared,
    plan,
    prepare_qat,
    quantize,
    size_bytes,
    strip_fake_quant,
)

__all__ = [
    "FORMATS",
    "HEAD_NAMES",
    "PRESETS",
    "ROLES",
    "MissingExtraError",
    "PlanEntry",
    "RoleWeight",
    "Scheme",
    "assign_roles",
    "convert_qat",
    "effective_group_size",
    "fake_quantizers",
    "is_prepared",
    "parse_roles",
    "plan",
    "prepare_qat",
    "quantize",
    "role_weights",
    "size_bytes",
    "strip_fake_quant",
]
