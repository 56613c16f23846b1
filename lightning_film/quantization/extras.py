"""Optional heavy libraries (torchao, coremltools, scikit-learn), imported only where needed.

A missing one is a :class:`MissingExtraError` naming the pip command that installs it, which the
CLI prints as one line.
"""

from __future__ import annotations

import importlib
import logging
from contextlib import contextmanager
from types import ModuleType

from lightning_film.errors import MissingExtraError

__all__ = ["EXTRAS", "MissingExtraError", "require"]

#: extra -> the distributions it installs (the lead's pyproject mirrors this).
EXTRAS: dict[str, str] = {"quant": "torchao==0.18.0", "coreml": "coremltools==9.0 scikit-learn"}


@contextmanager
def _quiet(*loggers: str):
    """Silence import-time chatter (torchao's CUDA kernels that cannot load on a CPU machine,
    coremltools' untested-version notices) without hiding later warnings."""
    saved = [(logging.getLogger(name), logging.getLogger(name).level) for name in loggers]
    for logger, _ in saved:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` naming ``pip install 'lightning_film[extra]'``."""
    try:
        with _quiet("torchao", "coremltools", "torch.utils._pytree"):
            imported = importlib.import_module(module)
            if module == "torchao.quantization":
                importlib.import_module("torchao.quantization.qat")  # its import-time notices too
            return imported
    except ImportError as err:
        raise MissingExtraError(
            f"{purpose} needs {module.split('.')[0]} ({EXTRAS[extra]}), which is not installed: "
            f"pip install 'lightning_film[{extra}]'"
        ) from err
