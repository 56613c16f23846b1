"""The Neural Engine layout of a model's inference step (``layout: ane``): same weights, same outputs.

Apple's guidance for transformers on the Neural Engine ("Deploying Transformers on the Apple Neural
Engine", 2022) asks for a layout the converter cannot derive from an ordinary PyTorch model.
:func:`to_ane_layout` rebuilds a trained ByteLM's or WorldModel's inference step in that layout from
its plain network ``model.net`` (ByteNet, WorldDenoiser), copying its weights (no retraining, the
checkpoint is only read):

- channels-first tensors (B, C, 1, S) from the embedding to the head: the Neural Engine's native
  4D layout, whose last axis (the sequence) is the one it packs in memory;
- every ``nn.Linear`` as a 1x1 ``nn.Conv2d`` with the same weights: attention q, k, v and output,
  MLP, conditioner projections, patch embedding, time MLP, head;
- attention one head at a time: q, k and v split along channels, scores and the weighted sum as
  einsums over the (B, C, 1, S) tensors, with no reshape of the activations into (B, H, S, Dh);
- normalizers over the channel axis (dim 1): layernorm, rmsnorm, dyt, identity; layernorm and
  rmsnorm divide each token by max(1, max |x|) first, so x^2 cannot overflow fp16 (|x| > 256);
- conditioners reading the signal channels-first, (B, Dc, 1, 1) per sample or (B, Dc, 1, S) per
  token, so a modulation broadcasts over S: film, film_exp, film_tanh, gate, adaln, adaln_zero,
  additive, none, and the token readers concat (tokens joined on the S axis) and cross_attention;
- fp16-safe constants. Norm epsilons below ``min_eps`` are raised to it (default 2^-14, fp16's
  smallest normal number: the models' 1e-6, and 1e-5 too, are subnormal in fp16, which the Neural
  Engine may flush to zero, leaving x / sqrt(0) for a zero vector). The causal mask is an additive
  -1e4, not -inf: finite in fp16 (max 65504) and exp(-1e4) is exactly 0, whereas -inf gives NaN
  (inf - inf) in the softmax's max subtraction.

The step keeps the default step's inputs and output (names, shapes, dtypes: ByteLM's logits stay
(B, N, 256), one transpose after the head), so a package of either layout is used the same way.
With ``min_eps=None`` every epsilon is kept and the copy equals the original step in float32 up to
rounding; with the default it equals the original with the same epsilons raised
(tests/test_ane_layout.py checks both for every normalizer x conditioner pair). Each conversion
is matched on the exact class (a subclass may compute something else): anything without a
channels-first version is refused with an :class:`ExportError` naming it, where it sits, and what is
supported.

Legend: B batch, C channels, S sequence, N tokens, D width, Dc conditioning width, H heads,
Dh = D / H, M keys (or conditioning tokens), L the context (``seq_len``), V = 256 byte values.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_film.export.ane_layers import (
    MASK_VALUE,
    AneAdaLN,
    AneAdditive,
    AneBlock,
    AneConcat,
    AneConditioner,
    AneCrossAttention,
    AneFiLM,
    AneFiLMExp,
    AneFiLMTanh,
    AneGate,
    AneMLP,
    AneSelfAttention,
    AneTransformer,
    ChannelDyT,
    ChannelLayerNorm,
    ChannelRMSNorm,
    Conv1x1,
    Signals,
    channels_first,
)
from lightning_film.export.report import FP16_MIN_NORMAL
from lightning_film.export.steps import ExportError, InferenceStep, inference_step
from lightning_film.models.byte_lm import ByteLM
from lightning_film.models.byte_net import ID_LIMITS, ByteNet
from lightning_film.models.world_model import WorldModel
from lightning_film.nn.attention import CrossAttention, SelfAttention
from lightning_film.nn.conditioners import (
    AdaLN,
    AdaLNZero,
    Additive,
    Concat,
    Conditioner,
    CrossAttentionConditioner,
    FiLM,
    FiLMExp,
    FiLMTanh,
    Gate,
    NoConditioning,
)
from lightning_film.nn.diffusion import timestep_embedding
from lightning_film.nn.mlp import MLP
from lightning_film.nn.norms import DyT, Identity, RMSNorm
from lightning_film.nn.transformer import Transformer
from lightning_film.quantization.roles import assign_roles

__all__ = [
    "ANE_STEPS", "FP16_SAFE_EPS", "LAYOUTS", "MASK_VALUE", "SUPPORTED_CONDITIONERS", "SUPPORTED_NORMALIZERS",
    "AneByteLMStep", "AneWorldModelStep", "ane_inference_step", "to_ane_layout",
]  # fmt: skip

#: Export layouts: the model as it is, or rebuilt by :func:`to_ane_layout`.
LAYOUTS: tuple[str, ...] = ("default", "ane")
#: The default floor of norm epsilons: 2^-14, the smallest normal fp16 number.
FP16_SAFE_EPS = FP16_MIN_NORMAL
#: Registered normalizers with a channels-first version (torch's LayerNorm / RMSNorm over one dim too).
SUPPORTED_NORMALIZERS: tuple[str, ...] = ("layernorm", "rmsnorm", "dyt", "identity")
#: Registered conditioners with a channels-first version (each matched by its exact class).
SUPPORTED_CONDITIONERS: tuple[str, ...] = (
    "film", "film_exp", "film_tanh", "gate", "adaln", "adaln_zero", "additive", "none", "concat", "cross_attention",
)  # fmt: skip


# -- building the copy -------------------------------------------------------------------------------------
class _Builder:
    """Converts the modules of one model, naming each by its place in the model for errors and
    taking each Linear's quantization role from :func:`~lightning_film.quantization.assign_roles`."""

    def __init__(self, model: nn.Module, min_eps: float | None) -> None:
        self.names = {id(m): name or "<root>" for name, m in model.named_modules()}
        self.roles = assign_roles(model)
        self.min_eps = min_eps
        #: original eps -> how many normalizers had it raised to ``min_eps``
        self.raised: dict[float, int] = {}

    def where(self, module: nn.Module) -> str:
        return self.names.get(id(module), type(module).__name__)

    def refuse(self, what: str, module: nn.Module, supported: str) -> ExportError:
        return ExportError(
            f"layout 'ane': no channels-first version of {what} {type(module).__name__} (at {self.where(module)}); "
            f"supported: {supported}; export with layout 'default' instead"
        )

    def conv(self, linear: nn.Module, rows: slice = slice(None), scale: float = 1.0) -> Conv1x1:
        if type(linear) is not nn.Linear or type(linear.weight) not in (nn.Parameter, Tensor):
            raise ExportError(
                f"layout 'ane' copies the weights of plain nn.Linear layers into convolutions; {self.where(linear)} "
                f"is a {type(linear).__name__} with a {type(linear.weight).__name__} weight (quantized or "
                f"fake-quantized?): export the float model and compress in Core ML (weights=int8 / int4) instead"
            )
        return Conv1x1(linear, self.roles.get(self.where(linear)), rows, scale)

    def embedding(self, table: nn.Embedding) -> nn.Embedding:
        if type(table) is not nn.Embedding or type(table.weight) not in (nn.Parameter, Tensor):
            raise ExportError(
                f"layout 'ane' copies plain nn.Embedding tables; {self.where(table)} is a {type(table).__name__} "
                f"with a {type(table.weight).__name__} weight: export the float model instead"
            )
        out = nn.Embedding(
            table.num_embeddings, table.embedding_dim, dtype=table.weight.dtype, device=table.weight.device
        )
        with torch.no_grad():
            out.weight.copy_(table.weight)
        return out

    def projection(self, seq: nn.Module) -> nn.Sequential:
        """A conditioner projection ([SiLU,] Linear[, SiLU, Linear]) on (B, Dc, 1, 1 | S)."""
        layers: list[nn.Module] = []
        for layer in seq if isinstance(seq, nn.Sequential) else [seq]:
            if type(layer) is nn.SiLU:
                layers.append(nn.SiLU())
            elif isinstance(layer, nn.Linear):
                layers.append(self.conv(layer))
            else:
                raise self.refuse("projection layer", layer, "nn.Linear and nn.SiLU")
        return nn.Sequential(*layers)

    def norm(self, norm: nn.Module) -> nn.Module:
        if isinstance(norm, (nn.LayerNorm, nn.RMSNorm)) and len(norm.normalized_shape) != 1:
            raise self.refuse("normalizer", norm, f"{', '.join(SUPPORTED_NORMALIZERS)} over the last dim only")
        eps = getattr(norm, "eps", None)
        if isinstance(norm, nn.RMSNorm) and eps is None:
            eps = torch.finfo(torch.float32).eps  # torch's own default
        if isinstance(norm, (RMSNorm, nn.RMSNorm, nn.LayerNorm)) and self.min_eps is not None and eps < self.min_eps:
            self.raised[eps] = self.raised.get(eps, 0) + 1
            eps = self.min_eps
        if isinstance(norm, nn.LayerNorm):  # LayerNorm included
            return ChannelLayerNorm(eps, norm.weight, norm.bias)
        if isinstance(norm, (RMSNorm, nn.RMSNorm)):
            return ChannelRMSNorm(eps, norm.weight)
        if type(norm) is DyT:
            return ChannelDyT(norm.alpha, norm.weight, norm.bias)
        if type(norm) in (Identity, nn.Identity):
            return nn.Identity()
        raise self.refuse("normalizer", norm, ", ".join(SUPPORTED_NORMALIZERS))

    def conditioner(self, c: Conditioner) -> AneConditioner:
        kind = type(c)
        if getattr(c, "ablated", False) or kind is NoConditioning:
            return AneConditioner()
        if kind in _FILMS:
            shift = None if c.shift is None else self.projection(c.shift)
            return _FILMS[kind](self.projection(c.scale), shift, getattr(c, "bound", 0.0))
        if kind in (AdaLN, AdaLNZero):
            gate = getattr(c, "gate_proj", None)
            return AneAdaLN(self.projection(c.modulation), None if gate is None else self.projection(gate))
        if kind is Additive:
            return AneAdditive(self.projection(c.shift))
        if kind is Concat:
            return AneConditioner() if c.embed is None else AneConcat(self.conv(c.embed))
        if kind is CrossAttentionConditioner:
            return AneConditioner() if c.attn is None else self.cross_attention(c.attn)
        raise self.refuse("conditioner", c, ", ".join(SUPPORTED_CONDITIONERS))

    def cross_attention(self, attn: CrossAttention) -> AneCrossAttention:
        d = attn.q.out_features
        q = self.conv(attn.q, scale=(d // attn.num_heads) ** -0.5)
        k, v = self.conv(attn.kv, slice(0, d)), self.conv(attn.kv, slice(d, 2 * d))
        return AneCrossAttention(q, k, v, self.conv(attn.proj), attn.num_heads)

    def self_attention(self, attn: nn.Module) -> AneSelfAttention:
        if type(attn) is not SelfAttention:
            raise self.refuse("attention", attn, "SelfAttention")
        d = attn.proj.out_features
        q = self.conv(attn.qkv, slice(0, d), scale=(d // attn.num_heads) ** -0.5)
        k, v = self.conv(attn.qkv, slice(d, 2 * d)), self.conv(attn.qkv, slice(2 * d, 3 * d))
        return AneSelfAttention(q, k, v, self.conv(attn.proj), attn.num_heads)

    def mlp(self, mlp: nn.Module) -> AneMLP:
        if type(mlp) is not MLP or not isinstance(mlp.act, nn.GELU):
            raise self.refuse("MLP", mlp, "MLP with a GELU activation")
        return AneMLP(self.conv(mlp.fc1), nn.GELU(approximate=mlp.act.approximate), self.conv(mlp.fc2))

    def transformer(self, stack: Transformer, causal_len: int | None) -> AneTransformer:
        blocks = [
            AneBlock(self.norm(b.norm1), self.conditioner(b.cond1), self.self_attention(b.attn),
                     self.norm(b.norm2), self.conditioner(b.cond2), self.mlp(b.mlp))
            for b in stack.blocks
        ]  # fmt: skip
        causal = {b.attn.causal for b in stack.blocks}
        if len(causal) > 1 or (True in causal and causal_len is None):
            raise ExportError(
                "layout 'ane': a causal stack needs all blocks causal and its context length for the mask"
            )
        final = self.conditioner(stack.final_cond)
        return AneTransformer(blocks, self.norm(stack.final_norm), final, causal_len if True in causal else None)

    def notes(self) -> list[str]:
        return [
            f"{count} normalizer eps {eps:g} raised to {self.min_eps:g} (fp16's smallest normal; subnormals may be "
            f"flushed to zero on the Neural Engine)"
            for eps, count in sorted(self.raised.items())
        ]


_FILMS: dict[type, type[AneFiLM]] = {FiLM: AneFiLM, FiLMExp: AneFiLMExp, FiLMTanh: AneFiLMTanh, Gate: AneGate}


# -- the steps ---------------------------------------------------------------------------------------------
class AneByteLMStep(nn.Module):
    """ByteLM's inference step in the Neural Engine layout, from its :class:`ByteNet` ``model.net``:
    int32 ids (B, N) -> logits (B, N, 256)."""

    def __init__(self, model: ByteLM, min_eps: float | None = FP16_SAFE_EPS) -> None:
        super().__init__()
        net: ByteNet = model.net
        embed, build = net.embed, _Builder(net, min_eps)
        self.names = net.input_names
        self.id_limits = dict(ID_LIMITS)
        self.byte = build.embedding(embed.byte)
        self.nibble = None if embed.nibble is None else build.embedding(embed.nibble)
        self.acc = None if embed.acc is None else build.embedding(embed.acc)
        self.combine = embed.combine
        self.embed_cond = None if embed.conditioner is None else build.conditioner(embed.conditioner)
        pos = None if net.pos is None else channels_first(net.pos.detach()).clone()  # (1, D, 1, L)
        self.pos = None if pos is None else nn.Parameter(pos)
        self.blocks_conditioned = net.blocks_conditioned
        self.transformer = build.transformer(net.transformer, causal_len=net.seq_len)
        self.head = build.conv(net.head)
        self.notes = build.notes()

    def forward(self, byte_ids: Tensor, nibble_ids: Tensor | None = None, acc_ids: Tensor | None = None) -> Tensor:
        """byte_ids, nibble_ids, acc_ids: (B, N) int -> (B, N, V)."""
        n = byte_ids.shape[1]
        x = channels_first(self.byte(byte_ids))  # (B, D, 1, N)
        c = Signals(None, None)
        if self.nibble is not None:
            parts = [channels_first(self.nibble(nibble_ids))]  # [(B, d4, 1, N)]
            if self.acc is not None:
                parts.append(channels_first(self.acc(acc_ids)))  # [(B, d4, 1, N), (B, da, 1, N)]
            c = Signals(torch.cat(parts, 1) if self.combine == "concat" else sum(parts[1:], parts[0]), None)
            x = self.embed_cond.modulate(x, c)  # (B, D, 1, N)
        if self.pos is not None:
            x = x + self.pos[..., :n]  # (B, D, 1, N)
        h = self.transformer(x, c if self.blocks_conditioned else Signals(None, None))  # (B, D, 1, N)
        return self.head(h).squeeze(2).transpose(1, 2)  # (B, N, V)

    def weight_roles(self) -> dict[str, str]:
        """{parameter name: quantization role} of every convolution and embedding."""
        return _weight_roles(self)


class AneWorldModelStep(nn.Module):
    """WorldModel's denoiser call in the Neural Engine layout: x_t (B, C, H, W), t (B,), context
    (B, K, C, H, W), action (B,) int -> prediction (B, C, H, W)."""

    def __init__(self, model: WorldModel, min_eps: float | None = FP16_SAFE_EPS) -> None:
        super().__init__()
        net, build = model.net, _Builder(model.net, min_eps)  # the WorldDenoiser, as export's default step
        self.id_limits = {"action": net.num_actions + 1}
        self.patch, self.grid = net.patch_size, net.grid
        self.combine = net.combine
        self.objective = copy.deepcopy(model.objective)  # the time unit of the embedding
        self.freq_dim = net.time_embed.freq_dim
        self.time_mlp = build.projection(net.time_embed.mlp)
        self.action = build.embedding(net.action_embed)
        self.patch_embed = build.conv(net.patch_embed)
        self.register_buffer("pos", channels_first(net.pos).clone(), persistent=False)  # (1, D, 1, N)
        self.transformer = build.transformer(net.transformer, causal_len=None)
        self.head = build.conv(net.head)
        self.notes = build.notes()

    def forward(self, x_t: Tensor, t: Tensor, context: Tensor, action: Tensor) -> Tensor:
        b = x_t.shape[0]
        frames = torch.cat([context.flatten(1, 2), x_t], dim=1)  # (B, (K+1) C, H, W)
        x = self.patch_embed(F.pixel_unshuffle(frames, self.patch))  # (B, D, H / p, W / p)
        x = x.reshape(b, x.shape[1], 1, -1) + self.pos  # (B, D, 1, N)
        freqs = timestep_embedding(self.objective.model_time(t), self.freq_dim)  # (B, F)
        t_emb = self.time_mlp(freqs.to(x.dtype)[:, :, None, None])  # (B, Dc, 1, 1)
        a_emb = self.action(action)[:, :, None, None]  # (B, Dc, 1, 1)
        vector = torch.cat([t_emb, a_emb], dim=1) if self.combine == "concat" else t_emb + a_emb  # (B, Dc', 1, 1)
        h = self.transformer(x, Signals(vector, torch.cat([t_emb, a_emb], dim=3)))  # (B, D, 1, N); tokens (B, Dc, 1, 2)
        out = self.head(h).reshape(b, -1, self.grid, self.grid)  # (B, C p^2, H / p, W / p)
        return F.pixel_shuffle(out, self.patch)  # (B, C, H, W)

    def weight_roles(self) -> dict[str, str]:
        """{parameter name: quantization role} of every convolution and embedding."""
        return _weight_roles(self)


def _weight_roles(step: nn.Module) -> dict[str, str]:
    roles = {}
    for name, module in step.named_modules():
        if isinstance(module, Conv1x1) and module.role is not None:
            roles[f"{name}.weight"] = module.role
        elif isinstance(module, nn.Embedding):
            roles[f"{name}.weight"] = "embedding"
    return roles


#: model class -> its step in the Neural Engine layout; matched with isinstance, so subclasses too.
ANE_STEPS: dict[type[nn.Module], type[nn.Module]] = {ByteLM: AneByteLMStep, WorldModel: AneWorldModelStep}


def _check_min_eps(min_eps: float | None) -> None:
    if min_eps is not None and (isinstance(min_eps, bool) or not isinstance(min_eps, (int, float)) or not min_eps > 0):
        raise ExportError(f"min_eps must be a number > 0 (or None to keep every eps), got {min_eps!r}")


def to_ane_layout(model: nn.Module, min_eps: float | None = FP16_SAFE_EPS) -> nn.Module:
    """A copy of ``model``'s inference step in the Neural Engine layout (see the module docstring),
    in eval mode: ``step(*inputs)`` takes and returns what the default step does. ``model`` (a
    ByteLM or WorldModel, trained or loaded from a checkpoint) is not changed and shares no tensor
    with the copy. ``min_eps``: the floor of norm epsilons (``None``: keep them); what was raised
    is listed in the copy's ``notes``.
    """
    _check_min_eps(min_eps)
    for cls, step in ANE_STEPS.items():
        if isinstance(model, cls):
            with torch.no_grad():
                return step(model, min_eps).eval()
    known = ", ".join(cls.__name__ for cls in ANE_STEPS)
    raise ExportError(f"layout 'ane' is built for {known}; {type(model).__name__} exports with layout 'default' only")


def ane_inference_step(
    model: nn.Module, batch_size: int = 1, seq_len: int | None = None, min_eps: float | None = FP16_SAFE_EPS
) -> InferenceStep:
    """:func:`~lightning_film.export.steps.inference_step` with its module in the Neural Engine layout."""
    step = inference_step(model, batch_size, seq_len)  # checks the shapes, names the inputs
    return InferenceStep(to_ane_layout(model, min_eps), step.inputs, step.output)
