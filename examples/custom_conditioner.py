"""Add your own conditioner: register it by name, then train the stdlib byte LM with it.

    python examples/custom_conditioner.py --steps 50
    python examples/custom_conditioner.py --steps 50 --conditioner film     # the baseline

A conditioner is an ``nn.Module`` subclassing :class:`lightning_film.nn.Conditioner` that
overrides one or more of its hooks (here ``modulate``); it must be the identity at init.
``@register_conditioner("lowrank_film")`` makes the name usable wherever a conditioner
spec is, once this module is imported. A config can also name the class by import path,
which imports it (run from the repository root, which ``lightning-film`` puts on sys.path):

    # configs/lowrank.yaml (with the rest of configs/example.yaml)
    model:
      class_path: examples.stdlib_lm.ConditionalByteLM
      init_args:
        conditioner: {name: "examples.custom_conditioner:LowRankFiLM", rank: 8}

or ``lightning-film fit --config configs/example.yaml --model.conditioner
examples.custom_conditioner:LowRankFiLM``.

Legend: B batch, N tokens, D width, Dc conditioning width, R rank.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

if not __package__:  # run as a script: make ``examples`` importable as from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning.pytorch import Trainer, seed_everything  # noqa: E402

from examples.stdlib_lm import ConditionalByteLM, StdlibBytes  # noqa: E402
from lightning_film import Conditioner, Conditioning, register_conditioner  # noqa: E402
from lightning_film.nn.channels_first import Affine, ChannelsFirst  # noqa: E402
from lightning_film.nn.conditioners.base import Site  # noqa: E402


@register_conditioner("lowrank_film")
class LowRankFiLM(Conditioner):
    """FiLM through a rank-R bottleneck, [dgamma, beta] = U V c; U starts at zero (identity).

    Args:
        rank: R, the bottleneck width (FiLM's two Dc x D maps become Dc x R and R x 2D).
    """

    def __init__(self, dim: int, cond_dim: int, site: Site = "attn", rank: int = 4) -> None:
        super().__init__(dim, cond_dim, site)
        if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
            raise ValueError(f"lowrank_film: rank must be a positive int, got {rank!r}")
        self.rank = rank
        self.down = nn.Linear(cond_dim, rank, bias=False)
        self.up = nn.Linear(rank, 2 * dim)
        nn.init.zeros_(self.up.weight)  # owns its init: gamma = 1, beta = 0 at the start
        nn.init.zeros_(self.up.bias)

    def modulate(self, h: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        c = self.signal(h, cond)  # (B, 1 | N, Dc)
        dgamma, beta = self.up(self.down(c)).chunk(2, dim=-1)  # (B, 1 | N, D) each
        self.observe(gamma=1 + dgamma, beta=beta)
        return torch.addcmul(beta, h, 1 + dgamma)  # (B, N, D)

    def channels_first(self, cf: ChannelsFirst) -> Affine:
        """The same modulation on (B, D, 1, S), for export with ``layout: ane``: chunk 0 of up(down(c))
        is the scale, chunk 1 the shift (optional: without it, ``layout: 'default'`` still exports)."""
        return Affine(self.dim, [nn.Sequential(cf.conv(self.down), cf.conv(self.up))], shift=1, scale=0)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}"


def main(argv: list[str] | None = None) -> float:
    """Train the example model with a conditioner for a few steps; print and return val/bpb."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50, help="optimizer steps (default 50)")
    parser.add_argument("--conditioner", default="lowrank_film", help="any registered name (default lowrank_film)")
    parser.add_argument("--rank", type=int, default=4, help="rank for lowrank_film (default 4)")
    parser.add_argument("--dim", type=int, default=64, help="model width (default 64)")
    parser.add_argument("--seq-len", type=int, default=64, help="bytes per window (default 64)")
    args = parser.parse_args(argv)

    seed_everything(0, verbose=False)
    spec = {"name": args.conditioner, "rank": args.rank} if args.conditioner == "lowrank_film" else args.conditioner
    model = ConditionalByteLM(dim=args.dim, num_heads=4, seq_len=args.seq_len, conditioner=spec)
    data = StdlibBytes(seq_len=args.seq_len, batch_size=16, val_windows=64)
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=args.steps,
        val_check_interval=args.steps,  # validate once, at the end
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=data)
    bpb = float(trainer.callback_metrics["val/bpb"])
    other = float(trainer.callback_metrics["val/bpb_other_class"])
    n_cond = sum(p.numel() for c in model.transformer.conditioners() for p in c.parameters())
    print(
        f"{args.conditioner}: val/bpb {bpb:.3f} (told another package: {other:.3f}) "
        f"after {args.steps} steps; {n_cond} conditioner parameters"
    )
    return bpb


if __name__ == "__main__":
    main()
