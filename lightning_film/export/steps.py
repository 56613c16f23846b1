"""What each model exports: its inference step, with fixed shapes, as a plain ``nn.Module``.

- :class:`~lightning_film.models.ByteLM`: a window of ``seq_len`` bytes (+ nibbles, + accumulator
  ids, as the variant reads them), int32 (B, N) each -> next-byte ``logits`` (B, N, 256).
- :class:`~lightning_film.models.WorldModel`: one denoiser call: ``x_t`` (B, C, H, W), ``t`` (B,),
  ``context`` (B, K, C, H, W) in [-1, 1], ``action`` (B,) int32 -> ``prediction`` (B, C, H, W).

Each step calls the model's own plain network, ``model.net`` (a
:class:`~lightning_film.models.byte_net.ByteNet` or a
:class:`~lightning_film.models.world_net.WorldDenoiser`), shared, not copied. Another
LightningModule exports if it defines ``coreml_step(batch_size, seq_len) -> InferenceStep``.
Shapes are always fixed: the Neural Engine compiles one shape per model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lightning_film.errors import UsageError, check_int
from lightning_film.models.byte_lm import ByteLM
from lightning_film.models.byte_net import ID_LIMITS
from lightning_film.models.world_model import WorldModel

__all__ = ["ByteLMStep", "ExportError", "InferenceStep", "TensorSpec", "WorldModelStep", "inference_step"]


class ExportError(UsageError):
    """An export that cannot be done as asked; the message says why and what to change."""


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output: name, fixed shape, dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype


@dataclass
class InferenceStep:
    """``module(*inputs) -> output``; ``inputs`` name and shape every argument, in order."""

    module: nn.Module
    inputs: list[TensorSpec]
    output: str

    def example(self, seed: int = 0) -> tuple[Tensor, ...]:
        """Example inputs of the right shapes: valid ids for integer inputs, N(0, 1) otherwise."""
        g = torch.Generator().manual_seed(seed)
        out = []
        for spec in self.inputs:
            if spec.dtype.is_floating_point:
                out.append(torch.randn(spec.shape, generator=g).to(spec.dtype))
            else:
                high = getattr(self.module, "id_limits", {}).get(spec.name, 2)
                out.append(torch.randint(0, high, spec.shape, generator=g, dtype=spec.dtype))
        return tuple(out)


class ByteLMStep(nn.Module):
    """ByteLM's inference step: one call of its network ``model.net`` (a
    :class:`~lightning_film.models.byte_net.ByteNet`): int32 ids (B, N) -> logits (B, N, 256)."""

    def __init__(self, model: ByteLM) -> None:
        super().__init__()
        self.net = model.net
        self.names = self.net.input_names
        self.id_limits = dict(ID_LIMITS)

    def forward(self, byte_ids: Tensor, nibble_ids: Tensor | None = None, acc_ids: Tensor | None = None) -> Tensor:
        """byte_ids, nibble_ids, acc_ids: (B, N) int32 -> (B, N, 256)."""
        return self.net(byte_ids, nibble_ids, acc_ids)  # (B, N, V)


def _fixed_shape(name: str, value: object, minimum: int, maximum: int | None = None, who: str = "") -> int:
    """check_int, as an ExportError: an exported model's shapes are fixed, so each must be given."""
    try:
        return check_int(name, value, minimum, maximum, who=who)
    except ValueError as err:
        raise ExportError(f"{err} (exported shapes are fixed)") from None


def _byte_lm(model: ByteLM, batch_size: int, seq_len: int | None) -> InferenceStep:
    context = model.net.seq_len
    n = context if seq_len is None else seq_len
    _fixed_shape("seq_len", n, 1, context, who="ByteLM export")  # at most the model's context
    step = ByteLMStep(model)
    inputs = [TensorSpec(name, (batch_size, n), torch.int32) for name in step.names]
    return InferenceStep(step, inputs, "logits")


class WorldModelStep(nn.Module):
    """WorldModel's inference step: one call of its network ``model.net`` (a
    :class:`~lightning_film.models.world_net.WorldDenoiser`, shared, not copied), with the time
    in the objective's unit as the sampler gives it (no sampler loop, no guidance)."""

    def __init__(self, model: WorldModel) -> None:
        super().__init__()
        self.net, self.objective = model.net, model.objective
        self.id_limits = {"action": self.net.num_actions + 1}

    def forward(self, x_t: Tensor, t: Tensor, context: Tensor, action: Tensor) -> Tensor:
        """x_t (B, C, H, W), t (B,), context (B, K, C, H, W), action (B,) int32 -> (B, C, H, W)."""
        return self.net(x_t, self.objective.model_time(t), context, action)  # (B, C, H, W)


def _world_model(model: WorldModel, batch_size: int, seq_len: int | None) -> InferenceStep:
    if seq_len is not None:
        raise ExportError("WorldModel export: seq_len does not apply (the frame size fixes every shape)")
    net = model.net
    frame = (net.channels, net.frame_size, net.frame_size)
    inputs = [
        TensorSpec("x_t", (batch_size, *frame), torch.float32),
        TensorSpec("t", (batch_size,), torch.float32),
        TensorSpec("context", (batch_size, net.context_frames, *frame), torch.float32),
        TensorSpec("action", (batch_size,), torch.int32),
    ]
    return InferenceStep(WorldModelStep(model), inputs, "prediction")


#: model class -> step builder; matched with isinstance, so subclasses export too.
STEPS: dict[type[nn.Module], Callable[[nn.Module, int, int | None], InferenceStep]] = {
    ByteLM: _byte_lm,
    WorldModel: _world_model,
}


def inference_step(model: nn.Module, batch_size: int = 1, seq_len: int | None = None) -> InferenceStep:
    """The fixed-shape inference step of ``model`` (see the module docstring)."""
    _fixed_shape("batch_size", batch_size, 1)
    if seq_len is not None:
        _fixed_shape("seq_len", seq_len, 1)
    if hasattr(model, "coreml_step"):
        return model.coreml_step(batch_size=batch_size, seq_len=seq_len)
    for cls, builder in STEPS.items():
        if isinstance(model, cls):
            return builder(model, batch_size, seq_len)
    known = ", ".join(cls.__name__ for cls in STEPS)
    raise ExportError(
        f"no Core ML inference step for {type(model).__name__}; supported: {known}, or any model with a "
        f"coreml_step(batch_size, seq_len) method returning an InferenceStep"
    )
