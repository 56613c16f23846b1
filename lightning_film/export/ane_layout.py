"""The Neural Engine layout of a model's inference step (``layout: ane``): same weights, same outputs.

Apple's guidance for transformers on the Neural Engine ("Deploying Transformers on the Apple Neural
Engine", 2022) asks for a layout the converter cannot derive from an ordinary PyTorch model.
:func:`to_ane_layout` rebuilds the default inference step with its network ``net`` converted (weights
copied, the checkpoint only read), every part asking the module it replaces for its channels-first
form (:mod:`lightning_film.nn.channels_first`, the ``channels_first(cf)`` hook):

- the transformer stack runs on (B, C, 1, S) tensors, the Neural Engine's native 4D layout: this
  module walks the real ``Transformer``, block by block, with each norm, attention, MLP and
  conditioner in the form its own hook gives (linears as 1x1 convolutions, attention head by head
  with einsums, norms over the channel axis, conditioners on channels-first signals);
- a module outside the stack with a form (a Linear, a conditioner, a Sequential of them) runs it
  between two transposes; containers (the network, its embedding) keep their own forward, so the
  step is the model's own code, and a layer with weights but no form is refused by name;
- fp16-safe constants: norm epsilons below ``min_eps`` are raised to it (default 2^-14, fp16's
  smallest normal), and the causal mask is an additive -1e4, finite in fp16.

The step keeps the default step's inputs and output. With ``min_eps=None`` it equals the default
step in float32 up to rounding (tests/test_ane_layout.py, for every normalizer x conditioner pair).

Legend: B batch, C channels, S sequence, N tokens, D width, Dc conditioning width, M conditioning tokens.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from lightning_film.export.report import FP16_MIN_NORMAL
from lightning_film.export.steps import STEPS, ExportError, InferenceStep, inference_step
from lightning_film.nn.channels_first import MASK_VALUE, ChannelsFirst, Conv1x1, Hooks, Signals, to_channels_first
from lightning_film.nn.conditioners.base import Conditioner
from lightning_film.nn.conditioning import Conditioning
from lightning_film.nn.transformer import Transformer
from lightning_film.quantization.roles import assign_roles

__all__ = ["FP16_SAFE_EPS", "LAYOUTS", "MASK_VALUE", "ane_inference_step", "to_ane_layout", "weight_roles"]

#: Export layouts: the model as it is, or rebuilt by :func:`to_ane_layout`.
LAYOUTS: tuple[str, ...] = ("default", "ane")
#: The default floor of norm epsilons: 2^-14, the smallest normal fp16 number.
FP16_SAFE_EPS = FP16_MIN_NORMAL


class _Converter(ChannelsFirst):
    """:class:`ChannelsFirst` refusing with :class:`ExportError`, tagging each Linear with its quantization role."""

    def __init__(self, net: nn.Module, min_eps: float | None) -> None:
        super().__init__(net, assign_roles(net), min_eps)

    def error(self, message: str) -> Exception:
        return ExportError(message)

    def notes(self) -> list[str]:
        return [
            f"{count} normalizer eps {eps:g} raised to {self.min_eps:g} (fp16's smallest normal; subnormals may be "
            f"flushed to zero on the Neural Engine)"
            for eps, count in sorted(self.raised.items())
        ]


# -- the stack, walked -------------------------------------------------------------------------------------
def _residual(norm: nn.Module, cond: Hooks, layer, x: Tensor, c: Signals) -> Tensor:
    """One branch's update, as ``TransformerBlock`` computes it: x (B, D, 1, S) -> (B, D, 1, S)."""
    h = norm(x)  # (B, D, 1, S)
    y = cond.gate(layer(cond.modulate(h, c)), c)
    extra = cond.branch(h, c)
    return y if extra is None else y + extra


class _Block(nn.Module):
    """A ``TransformerBlock`` with each part in its channels-first form."""

    def __init__(self, block: nn.Module, cf: ChannelsFirst) -> None:
        super().__init__()
        self.norm1, self.cond1, self.attn = cf.convert(block.norm1), cf.convert(block.cond1), cf.convert(block.attn)
        self.norm2, self.cond2, self.mlp = cf.convert(block.norm2), cf.convert(block.cond2), cf.convert(block.mlp)

    def forward(self, x: Tensor, c: Signals, mask: Tensor | None) -> Tensor:
        x = x + _residual(self.norm1, self.cond1, lambda h: self.attn(h, None, mask), x, c)  # (B, D, 1, S)
        return x + _residual(self.norm2, self.cond2, self.mlp, x, c)  # (B, D, 1, S)


class _Stack(nn.Module):
    """A :class:`Transformer` on its usual inputs, computed channels-first: (B, N, D) tokens and a
    :class:`Conditioning` in, (B, N, D) out, with one transpose each way. A causal stack holds its
    additive mask (1, L, 1, L) for the network's context L."""

    def __init__(self, stack: Transformer, cf: ChannelsFirst, context: int | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(_Block(b, cf) for b in stack.blocks)
        self.final_norm, self.final_cond = cf.convert(stack.final_norm), cf.convert(stack.final_cond)
        causal = {b.attn.causal for b in stack.blocks}
        if len(causal) > 1 or (True in causal and context is None):
            raise ExportError(
                "layout 'ane': a causal stack needs all blocks causal and its network's seq_len for the mask"
            )
        mask = None
        if True in causal:  # mask[0, key, 0, query]: a key after its query is hidden
            mask = torch.ones(context, context).triu(1).mul(MASK_VALUE).T.reshape(1, context, 1, context)
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: Tensor, cond: Conditioning, cache: object = None) -> Tensor:
        """x (B, N, D), cond -> (B, N, D)."""
        signal, tokens = cond.signal(), cond.tokens  # (B, 1 | N, Dc), (B, M, Dc)
        c = Signals(
            None if signal is None else to_channels_first(signal), None if tokens is None else to_channels_first(tokens)
        )
        x = to_channels_first(x)  # (B, D, 1, N)
        c = self.final_cond.prepare(x, c)
        x = self.final_cond.enter(x, c)  # (B, D, 1, S), S = N (+ M in-context tokens)
        mask = None
        if self.mask is not None:
            s = x.shape[3]
            if s > self.mask.shape[1]:
                raise ExportError(f"causal attention over {s} tokens, but the mask covers {self.mask.shape[1]}")
            mask = self.mask[:, :s, :, :s]  # (1, S, 1, S)
        for block in self.blocks:
            x = block(x, c, mask)  # (B, D, 1, S)
        x = self.final_cond.exit(x, c)  # (B, D, 1, N)
        return self.final_cond.modulate(self.final_norm(x), c).squeeze(2).transpose(1, 2)  # (B, N, D)


class _Conditioner(nn.Module):
    """A conditioner outside a stack (an embedding's), on its usual (B, N, D) inputs, computed channels-first."""

    def __init__(self, form: Hooks, ablated: bool) -> None:
        super().__init__()
        self.form, self.ablated = form, ablated

    def modulate(self, h: Tensor, cond: Conditioning) -> Tensor:
        signal = cond.signal()  # (B, 1 | N, Dc)
        c = Signals(None if signal is None else to_channels_first(signal))
        return self.form.modulate(to_channels_first(h), c).squeeze(2).transpose(1, 2)  # (B, N, D)


class _LastDim(nn.Module):
    """A layer over the last dim (a Linear, a projection) on (B, F) or (B, N, F), computed channels-first."""

    def __init__(self, form: nn.Module) -> None:
        super().__init__()
        self.form = form

    @property
    def weight(self) -> Tensor:
        return self.form.weight

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2:
            return self.form(x[:, :, None, None])[:, :, 0, 0]  # (B, F')
        # (B, F, 1, N) -> (B, N, 1, F) -> (B, N, F): squeezed after the transpose, so the converter keeps a conv2d
        return self.form(to_channels_first(x)).transpose(1, 3).squeeze(2)  # (B, N, F')


def _rebuild(module: nn.Module, cf: ChannelsFirst, context: int | None) -> nn.Module:
    """``module`` with every part that has a channels-first form computing in it (see the module docstring)."""
    if isinstance(module, Transformer):
        return _Stack(module, cf, context)
    if isinstance(module, Conditioner):
        return _Conditioner(cf.convert(module), module.ablated)
    if cf.has_form(module) and type(module) is not nn.Sequential:  # a Sequential keeps its indexing
        return _LastDim(cf.convert(module))
    children = module._modules
    if not children:
        if next(module.parameters(recurse=False), None) is not None and not isinstance(module, nn.Embedding):
            cf.convert(module)  # refused, by name and hook
        return copy.deepcopy(module)  # an embedding table or a layer without weights: the same in either layout
    out = copy.copy(module)
    out._parameters = {
        k: None if p is None else nn.Parameter(p.detach().clone()) for k, p in module._parameters.items()
    }
    out._buffers = {k: None if b is None else b.detach().clone() for k, b in module._buffers.items()}
    context = getattr(module, "seq_len", context)  # a causal stack's mask covers its network's context
    out._modules = {k: None if m is None else _rebuild(m, cf, context) for k, m in children.items()}
    return out


def weight_roles(step: nn.Module) -> dict[str, str]:
    """{parameter name: quantization role} of every convolution and embedding of a step in this layout."""
    roles = {}
    for name, module in step.named_modules():
        if isinstance(module, Conv1x1) and module.role is not None:
            roles[f"{name}.weight"] = module.role
        elif isinstance(module, nn.Embedding):
            roles[f"{name}.weight"] = "embedding"
    return roles


def _check_min_eps(min_eps: float | None) -> None:
    if min_eps is not None and (isinstance(min_eps, bool) or not isinstance(min_eps, (int, float)) or not min_eps > 0):
        raise ExportError(f"min_eps must be a number > 0 (or None to keep every eps), got {min_eps!r}")


def to_ane_layout(model: nn.Module, min_eps: float | None = FP16_SAFE_EPS, step: nn.Module | None = None) -> nn.Module:
    """``model``'s default inference step (or ``step``) with its network ``net`` rebuilt in the Neural
    Engine layout, in eval mode: it takes and returns what the default step does. ``model`` is not
    changed and shares no tensor with the result. ``min_eps``: the floor of norm epsilons (``None``: keep
    them); what was raised is listed in the result's ``notes``."""
    _check_min_eps(min_eps)
    step = inference_step(model).module if step is None and any(isinstance(model, c) for c in STEPS) else step
    if step is None or not isinstance(getattr(step, "net", None), nn.Module):
        known = ", ".join(cls.__name__ for cls in STEPS)
        raise ExportError(
            f"layout 'ane' is built for {known}; {type(model).__name__} exports with layout 'default' only"
        )
    cf = _Converter(step.net, min_eps)
    out = copy.copy(step)
    with torch.no_grad():
        out._modules = {k: _rebuild(m, cf, None) if k == "net" else copy.deepcopy(m) for k, m in step._modules.items()}
    out.notes = cf.notes()
    return out.eval()


def ane_inference_step(
    model: nn.Module, batch_size: int = 1, seq_len: int | None = None, min_eps: float | None = FP16_SAFE_EPS
) -> InferenceStep:
    """:func:`~lightning_film.export.steps.inference_step` with its module in the Neural Engine layout."""
    step = inference_step(model, batch_size, seq_len)  # checks the shapes, names the inputs
    return InferenceStep(to_ane_layout(model, min_eps, step.module), step.inputs, step.output)
