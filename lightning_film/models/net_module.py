"""``NetModule``: the LightningModule base of both models, each a training loop around a plain network
given as its ``net`` argument (``ByteLM(ByteNet(...))``)."""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from typing import Any

from lightning.pytorch import LightningModule
from torch import nn

from lightning_film.checkpoints import nest_network_arguments, read_checkpoint

__all__ = ["NetModule", "network"]


class NetModule(LightningModule):
    """A LightningModule whose ``__init__`` takes its network as ``net`` (annotated with the network's
    class) and stores the network's arguments as ``hparams.net``."""

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any) -> Any:
        """Lightning's, and a checkpoint written before the network was ``net`` (its arguments flat
        beside ``lr``) loads too: they are handed over nested, as ``net``."""
        if "net" not in kwargs and isinstance(checkpoint_path, (str, os.PathLike)) and os.path.isfile(checkpoint_path):
            hparams = read_checkpoint(checkpoint_path).get("hyper_parameters")
            if nest_network_arguments(hparams, cls):
                kwargs["net"] = hparams["net"]
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)


def network(net: Any, cls: type[nn.Module], who: str) -> Any:
    """``net`` as a ``cls``: itself, or built from a mapping of ``cls``'s arguments (how a checkpoint
    stores it, ``hparams.net``); anything else, or an argument ``cls`` does not take, a ValueError."""
    if isinstance(net, cls):
        return net
    if not isinstance(net, Mapping):
        raise ValueError(f"{who}: net must be a {cls.__name__} or a mapping of its arguments; got {type(net).__name__}")
    takes = [p for p in inspect.signature(cls).parameters if p != "self"]
    unknown = sorted(set(net) - set(takes))
    if unknown:
        raise ValueError(f"{who}: net has no argument {', '.join(unknown)}; {cls.__name__} takes: {', '.join(takes)}")
    return cls(**net)
