"""GPU smoke test: both models fit a few steps in ``bf16-mixed`` on CUDA, with their throughput.

    python -m benchmarks.gpu_smoke [--steps 30] [--warmup 5]

Prints one line per model: training samples/s (world model) or tokens/s (byte model) over the
steps after ``--warmup``, and the final loss (finite, or it exits 1). Without a CUDA device it
refuses in one line (exit 2). Synthetic data in a temporary folder; nothing is written elsewhere.

Status: written without a GPU (none was lent to the session that wrote it); not yet run on one.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch


class _Timer:
    """A Lightning callback: wall time of the steps after ``warmup`` (CUDA synchronised)."""

    def __init__(self, warmup: int) -> None:
        import lightning.pytorch as L

        timer = self

        class Callback(L.Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
                if trainer.global_step == warmup:
                    torch.cuda.synchronize()
                    timer.start = time.perf_counter()

            def on_train_end(self, trainer, pl_module) -> None:
                torch.cuda.synchronize()
                timer.seconds = time.perf_counter() - timer.start

        self.start, self.seconds, self.callback = 0.0, 0.0, Callback()


def _trainer(root: Path, steps: int, timer: _Timer):
    import lightning.pytorch as L

    return L.Trainer(
        accelerator="cuda",
        devices=1,
        precision="bf16-mixed",
        max_steps=steps,
        gradient_clip_val=1.0,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        callbacks=[timer.callback],
    )


def byte_lm(root: Path, steps: int, warmup: int) -> tuple[float, float]:
    """(tokens/s, final loss) of ByteLM (nibble_acc, dim 256, depth 4, 256 bytes, batch 32)."""
    from lightning_film.data.bytes import ByteDataModule
    from lightning_film.models import ByteLM, ByteNet

    text = root / "text.txt"
    text.write_bytes(b"To be, or not to be, that is the question: whether 'tis nobler in the mind. " * 4000)
    dm = ByteDataModule([str(text)], seq_len=256, batch_size=32, split_blocks=10, val_fraction=0.1, test_fraction=0.1)
    model = ByteLM(ByteNet(dim=256, depth=4, num_heads=4, seq_len=256), warmup_steps=2)
    timer = _Timer(warmup)
    trainer = _trainer(root / "byte", steps, timer)
    trainer.fit(model, dm)
    return (steps - warmup) * 32 * 256 / timer.seconds, float(trainer.callback_metrics["train/loss"])


def world_model(root: Path, steps: int, warmup: int) -> tuple[float, float]:
    """(samples/s, final loss) of WorldModel (32 x 32 frames, dim 256, depth 4, batch 64)."""
    from lightning_film.data.world import WorldDataModule
    from lightning_film.models import WorldDenoiser, WorldModel

    os.environ["LIGHTNING_FILM_CACHE"] = str(root / "cache")  # the recorded episodes go there
    dm = WorldDataModule(
        episodes=40, episode_length=16, frame_size=32, context_frames=2, val_episodes=2, test_episodes=2, batch_size=64
    )
    net = WorldDenoiser(frame_size=32, context_frames=2, dim=256, depth=4, num_heads=4)
    model = WorldModel(net, kid_feature="tiny", warmup_steps=2)
    timer = _Timer(warmup)
    trainer = _trainer(root / "world", steps, timer)
    trainer.fit(model, dm)
    return (steps - warmup) * 64 / timer.seconds, float(trainer.callback_metrics["train/loss"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_smoke", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="training steps per model (default 30)")
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the timing (default 5)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_smoke: no CUDA device here (torch.cuda.is_available() is False); nothing run", file=sys.stderr)
        return 2
    if not 0 <= args.warmup < args.steps:
        print(f"gpu_smoke: need 0 <= --warmup < --steps, got {args.warmup} and {args.steps}", file=sys.stderr)
        return 2
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, bf16-mixed, {args.steps} steps")
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for name, run, unit in (("ByteLM", byte_lm, "tokens/s"), ("WorldModel", world_model, "samples/s")):
            rate, loss = run(Path(tmp), args.steps, args.warmup)
            ok &= math.isfinite(loss)
            print(f"{name}: {rate:,.0f} {unit} (steps {args.warmup + 1}-{args.steps}), final train/loss {loss:.4f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
