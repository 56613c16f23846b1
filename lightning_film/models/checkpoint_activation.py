"""The MLP activation a checkpoint's weights were trained with, which their shapes do not show."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info

from lightning_film.nn.mlp import ACTIVATIONS, set_activation

__all__ = ["BEFORE_RECORDED", "adopt_checkpoint_activation"]

#: the activation of checkpoints written before ``activation`` was a model argument
BEFORE_RECORDED = "gelu_tanh"


def adopt_checkpoint_activation(model: LightningModule, checkpoint: dict[str, Any]) -> str:
    """Give ``model.net`` the activation ``checkpoint`` was trained with, if it differs from the
    model's (the weights learned with it; an info line says so); returns that activation.

    The checkpoint's ``hyper_parameters["net"]["activation"]`` (flat ``["activation"]`` in checkpoints
    written before the network was ``net``); without either it predates the argument: ``"gelu_tanh"``.
    """
    hparams = checkpoint.get("hyper_parameters") or {}
    net = hparams.get("net") if isinstance(hparams.get("net"), dict) else hparams
    trained = net.get("activation", BEFORE_RECORDED)
    if trained not in ACTIVATIONS:
        raise ValueError(f"the checkpoint's activation {trained!r} is unknown; accepted: {', '.join(ACTIVATIONS)}")
    current = model.net.config["activation"]
    if trained != current:
        set_activation(model.net, trained)
        rank_zero_info(
            f"{type(model).__name__}: the checkpoint was trained with activation {trained!r}, not this model's "
            f"{current!r}; its weights load with {trained!r}"
        )
        model.net.config["activation"] = trained  # also hparams.net, the same mapping
    return trained
