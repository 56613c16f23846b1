"""Pretrain -> finetune for the world model: weights copied from a checkpoint (``init_from``), and
checkpoints written before the network became ``WorldModel.net`` read with their keys renamed."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from lightning_film.checkpoints import nest_keys, read_checkpoint
from lightning_film.models.checkpoint_activation import adopt_checkpoint_activation

if TYPE_CHECKING:
    from lightning_film.models.world_model import WorldModel

__all__ = ["NET_MODULES", "init_from", "upgrade_state_dict"]


#: the network's own modules, whose keys had no ``net.`` prefix before the network was split out
NET_MODULES = ("time_embed", "action_embed", "patch_embed", "transformer", "head")


def upgrade_state_dict(state: dict[str, Tensor]) -> list[str]:
    """Rename, in place, the keys of a state_dict written before the network became ``net``
    (``transformer.blocks.0...`` -> ``net.transformer.blocks.0...``); returns the old names."""
    return nest_keys(state, NET_MODULES)


def init_from(model: WorldModel, path: str | Path) -> dict[str, list[str]]:
    """Copy the weights of a checkpoint (Lightning's, or a plain state_dict) into ``model``.

    Tensors present in both are copied; a shape that differs is an error naming every such
    tensor with both shapes. Tensors the checkpoint lacks (conditioning layers a
    ``conditioner: none`` pretraining did not have) keep their fresh, identity init; tensors
    only the checkpoint has are ignored; both lists are reported. When the checkpoint's model
    was trained with ``condition: none`` (only its null action ever trained), every action
    starts as that null action, so the finetuned model begins exactly where the pretrained
    one was, for every action. The model takes the MLP activation a Lightning checkpoint was
    trained with. Returns ``{"copied", "missing", "ignored", "actions_from_null"}``.
    """
    path = Path(path)
    checkpoint = read_checkpoint(path, "init_from checkpoint", lightning=False)
    state = dict(checkpoint.get("state_dict", checkpoint))
    if upgrade_state_dict(state):
        rank_zero_info(f"WorldModel: init_from {str(path)!r} predates WorldModel.net; its keys were renamed net.*")
    own = model.state_dict()
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    if mismatched:
        raise ValueError(
            f"init_from {str(path)!r}: {len(mismatched)} tensor(s) differ in shape from this model "
            f"(was it trained with other dim/depth/patch_size/frame settings?): " + "; ".join(mismatched)
        )
    copied = [k for k in state if k in own]
    if not copied:
        raise ValueError(
            f"init_from {str(path)!r} shares no tensor with this model (it holds {sorted(state)[:8]}); "
            "is it a checkpoint of another model?"
        )
    report = {
        "copied": copied,
        "missing": [k for k in own if k not in state],
        "ignored": [k for k in state if k not in own],
        "actions_from_null": [],
    }
    model.load_state_dict({k: state[k] for k in copied}, strict=False)
    source_hp = checkpoint.get("hyper_parameters")
    if isinstance(source_hp, dict):  # a Lightning checkpoint: it says its activation (a plain state_dict does not)
        adopt_checkpoint_activation(model, checkpoint)
    else:
        source_hp = {}
    if source_hp.get("condition") == "none" and model.hparams.condition == "action":
        with torch.no_grad():
            weight = model.net.action_embed.weight  # (A + 1, Dc)
            weight[: model.null_action] = weight[model.null_action]
        report["actions_from_null"] = ["net.action_embed.weight"]
    rank_zero_info(
        f"WorldModel: init_from {str(path)!r}: copied {len(copied)} tensors; kept the fresh init of "
        f"{len(report['missing'])} the checkpoint lacks {report['missing']}; ignored {report['ignored']}"
        + ("; every action starts as the pretrained null action" if report["actions_from_null"] else "")
    )
    return report
