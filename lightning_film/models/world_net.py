"""``WorldDenoiser``: the world model's network, a DiT-style denoiser of the next frame.

    frames = cat(context_1..K, x_t)                       # (B, (K+1) C, H, W), channel concat
    tokens = pixel_unshuffle(frames, p) -> Linear + pos   # (B, N, D), N = (H / p)(W / p)
    c = Conditioning.from_signals([time(t), action(a)])   # vector (B, Dc') and 2 tokens (B, 2, Dc)
    h = Transformer(tokens, c)                            # (B, N, D), bidirectional
    out = pixel_shuffle(head(h), p)                       # (B, C, H, W), head zero-initialised

Context frames enter *per patch* (each token sees its own patch of every context frame), with
``F.pixel_unshuffle`` rather than a rank-6 reshape, which Core ML export cannot convert. The
network knows nothing of the objective: its time input is already in the embedding's unit
(:meth:`~lightning_film.nn.diffusion.Objective.model_time`), so training
(:class:`~lightning_film.models.WorldModel`), export and quantization all take this one module.
Frames are in [-1, 1] (:func:`to_unit`, :func:`to_uint8` convert from and to uint8).

Legend: B batch, K context frames, C channels, H = W = ``frame_size``, p ``patch_size``,
N tokens, D width (``dim``), Dc conditioning width (``cond_dim``), A actions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_film.errors import check_ints
from lightning_film.nn import Conditioning, Transformer
from lightning_film.nn.conditioning import Combine, combined_dim
from lightning_film.nn.diffusion import TimestepEmbedder
from lightning_film.nn.mlp import Activation
from lightning_film.registry import Spec

__all__ = ["WorldDenoiser", "sincos_2d", "to_uint8", "to_unit"]


def to_unit(frames: Tensor) -> Tensor:
    """uint8 frames [0, 255] -> float [-1, 1]."""
    return frames.float() / 127.5 - 1.0


def to_uint8(x: Tensor) -> Tensor:
    """float [-1, 1] -> uint8 frames [0, 255] (rounded, clamped)."""
    return ((x.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


def sincos_2d(grid: int, dim: int) -> Tensor:
    """Fixed 2D sine-cosine positions of a grid x grid patch map -> (1, grid^2, dim), row-major.

    Half the channels encode the row, half the column, each as [sin, cos] of geometric
    frequencies (MAE/DiT's layout); ``dim`` must be a multiple of 4.
    """
    if dim % 4:
        raise ValueError(f"2D sin-cos positions need dim divisible by 4, got dim={dim}")
    freqs = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    coords = torch.arange(grid, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")

    def encode(pos: Tensor) -> Tensor:
        angles = pos.reshape(-1, 1) * freqs  # (N, dim / 4)
        return torch.cat([angles.sin(), angles.cos()], dim=1)  # (N, dim / 2)

    return torch.cat([encode(rows), encode(cols)], dim=1).float().unsqueeze(0)  # (1, N, dim)


class WorldDenoiser(nn.Module):
    """Next-frame denoiser conditioned on context frames (per patch), time and action.

    Args:
        frame_size: H = W of the frames, divisible by ``patch_size``. channels: C.
        context_frames: K past frames given. num_actions: A; index A is the null action
            (classifier-free guidance, unconditional models).
        patch_size: p. dim, depth, num_heads, mlp_ratio: the transformer.
        cond_dim: Dc of the time and action embeddings (default ``dim``).
        normalizer, conditioner: registry specs applied in every block and the final layer.
        activation: the MLPs' GELU, ``"gelu"`` (exact) or ``"gelu_tanh"`` (DiT's approximation).
        combine: time and action embeddings ``"sum"`` (width Dc) or ``"concat"`` (2 Dc) into
            the conditioning vector; token-reading conditioners see them as 2 tokens either way.
    """

    def __init__(
        self,
        frame_size: int = 32,
        channels: int = 3,
        context_frames: int = 2,
        num_actions: int = 5,
        patch_size: int = 4,
        dim: int = 128,
        depth: int = 4,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        cond_dim: int | None = None,
        normalizer: Spec = "rmsnorm",
        conditioner: Spec = "film",
        combine: Combine = "sum",
        activation: Activation = "gelu",
    ) -> None:
        # what it was built with, the way LightningModules store it in checkpoints (``hparams.net``)
        config = {name: value for name, value in locals().items() if name not in ("self", "__class__")}
        super().__init__()
        #: the constructor's arguments, plain values: ``WorldDenoiser(**net.config)`` builds it again
        self.config = config
        check_ints(
            "WorldDenoiser",
            frame_size=(frame_size, 1),
            channels=(channels, 1),
            context_frames=(context_frames, 0),
            num_actions=(num_actions, 1),
            patch_size=(patch_size, 1),
            cond_dim=(dim if cond_dim is None else cond_dim, 1),
        )
        if frame_size % patch_size:
            raise ValueError(
                f"WorldDenoiser: frame_size={frame_size} is not divisible by patch_size={patch_size}; "
                f"pick a patch_size that divides it (e.g. {max(d for d in range(1, 9) if frame_size % d == 0)})"
            )
        cond_dim = dim if cond_dim is None else cond_dim
        self.frame_size, self.channels, self.context_frames = frame_size, channels, context_frames
        self.num_actions, self.patch_size, self.combine = num_actions, patch_size, combine
        self.grid = frame_size // patch_size
        self.time_embed = TimestepEmbedder(cond_dim)
        self.action_embed = nn.Embedding(num_actions + 1, cond_dim)  # row num_actions: the null action
        nn.init.normal_(self.action_embed.weight, std=0.02)
        self.patch_embed = nn.Linear((context_frames + 1) * channels * patch_size**2, dim)
        self.register_buffer("pos", sincos_2d(self.grid, dim), persistent=False)  # (1, N, D)
        self.transformer = Transformer(
            dim,
            depth,
            num_heads,
            combined_dim([cond_dim, cond_dim], combine),
            mlp_ratio,
            normalizer=normalizer,
            conditioner=conditioner,
            causal=False,
            activation=activation,
        )
        self.head = nn.Linear(dim, channels * patch_size**2)
        nn.init.zeros_(self.head.weight)  # the network predicts exactly 0 at init
        nn.init.zeros_(self.head.bias)

    def conditioning(self, t_model: Tensor, action: Tensor) -> Conditioning:
        """Times (B,) in the embedding's unit, actions (B,) in 0..A (A = null) -> Conditioning."""
        t_emb = self.time_embed(t_model)  # (B, Dc)
        a_emb = self.action_embed(action)  # (B, Dc)
        return Conditioning.from_signals([t_emb, a_emb], self.combine)

    def forward(self, x_t: Tensor, t_model: Tensor, context: Tensor, action: Tensor) -> Tensor:
        """x_t: (B, C, H, W) noisy frame, t_model: (B,) float time in the embedding's unit,
        context: (B, K, C, H, W) in [-1, 1], action: (B,) long in 0..A (A = null)
        -> (B, C, H, W) the objective's prediction."""
        p, b = self.patch_size, x_t.shape[0]
        frame = (self.channels, self.frame_size, self.frame_size)
        if tuple(x_t.shape[1:]) != frame or tuple(context.shape) != (b, self.context_frames, *frame):
            raise ValueError(
                f"WorldModel expects x_t (B, {', '.join(map(str, frame))}) and context "
                f"(B, {self.context_frames}, {', '.join(map(str, frame))}); got {tuple(x_t.shape)} and {tuple(context.shape)}"
            )
        frames = torch.cat([context.flatten(1, 2), x_t], dim=1)  # (B, (K+1) C, H, W)
        patches = F.pixel_unshuffle(frames, p).flatten(2).transpose(1, 2)  # (B, N, (K+1) C p^2)
        x = self.patch_embed(patches) + self.pos  # (B, N, D)
        h = self.transformer(x, self.conditioning(t_model, action))  # (B, N, D)
        out = self.head(h).transpose(1, 2)  # (B, C p^2, N)
        return F.pixel_shuffle(out.reshape(b, -1, self.grid, self.grid), p)  # (B, C, H, W)
