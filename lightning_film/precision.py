"""The precision a run gets when its config names none: ``bf16-mixed`` where the chip has bf16 units.

Lightning's own default is ``32-true`` everywhere. On a CPU with AVX512-BF16 or AMX, or a GPU with
bf16 tensor cores, ``bf16-mixed`` trains both models 1.6x faster at equal quality (README,
Performance); on one without them autocast emulates bf16 and a step is 15-23x slower. So the
``lightning-film`` command resolves an unset ``trainer.precision`` by the chip the run will use, and
says so in one line; any value the user gives (``32-true`` turns it off) is kept as given.
"""

from __future__ import annotations

import torch

__all__ = ["bf16_units", "default_precision"]


def _cpu_bf16_units() -> str | None:
    # private to torch.cpu, but the checks torch's own CPU kernels and Inductor dispatch on
    checks = (("AMX", "_is_amx_tile_supported"), ("AVX512-BF16", "_is_avx512_bf16_supported"))
    found = [name for name, check in checks if getattr(torch.cpu, check, lambda: False)()]
    return " and ".join(found) or None


def _cuda_bf16_units() -> str | None:
    if not torch.cuda.is_available() or not torch.cuda.is_bf16_supported(including_emulation=False):
        return None
    return f"{torch.cuda.get_device_name()} (bf16 tensor cores)"


def bf16_units(accelerator: object) -> str | None:
    """The bf16 units the run's chip has (``"AVX512-BF16"``, a GPU's name), or None when it has
    none or its kind is not one we know (MPS, TPU, an Accelerator instance).

    ``accelerator`` is ``trainer.accelerator`` as configured: ``"auto"`` is resolved as Lightning
    does (MPS, then CUDA, then the CPU)."""
    name = accelerator.lower() if isinstance(accelerator, str) else None
    if name == "auto":
        if torch.backends.mps.is_available():
            return None
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return _cpu_bf16_units()
    if name in ("cuda", "gpu"):
        return _cuda_bf16_units()
    return None


def default_precision(accelerator: object) -> tuple[str, str]:
    """(precision, why) for a run whose config sets no ``trainer.precision``."""
    units = bf16_units(accelerator)
    if units is None:
        return "32-true", "no bf16 units found"
    return "bf16-mixed", f"this chip has {units}"
