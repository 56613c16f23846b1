"""Section 7, ``precision``: bf16 mixed precision against fp32 on this CPU, interleaved.

bf16 is what Lightning's ``--trainer.precision bf16-mixed`` runs: ``torch.autocast("cpu",
torch.bfloat16)`` around the step, weights and optimizer state in fp32. Timed: a 1024^3 matmul
(the hardware's two rates), and each model's training step (forward, loss, backward, fused
AdamW, as the models train) at its config's shape, fp32 vs bf16 on identical copies.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from typing import Any

import torch

from benchmarks.performance.common import Settings, Shape, log, summary, time_interleaved

__all__ = ["precision_section"]

MATMUL = 1024


def _matmuls(n: int) -> dict[str, Callable[[], object]]:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    a16, b16 = a.bfloat16(), b.bfloat16()
    return {"matmul fp32": lambda: a @ b, "matmul bf16": lambda: a16 @ b16}


def _step(model: torch.nn.Module, loss: Callable[[torch.nn.Module], torch.Tensor], bf16: bool) -> Callable[[], None]:
    """One training step of ``model`` (fused AdamW, as both models' optimizer), under autocast if bf16."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext

    def step() -> None:
        with autocast():
            value = loss(model)
        value.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def _byte(shape: Shape) -> tuple[torch.nn.Module, Callable[[torch.nn.Module], torch.Tensor]]:
    from benchmarks.performance.training import _byte_batch, _byte_lm

    model, batch = _byte_lm(shape, shape.dim, shape.seq), _byte_batch(shape.batch, shape.seq)
    mask = batch["mask"]
    return model, lambda m: (m.nll(batch) * mask).sum() / mask.sum()


def _world(shape: Shape) -> tuple[torch.nn.Module, Callable[[torch.nn.Module], torch.Tensor]]:
    from benchmarks.performance.inference import _world_model

    model = _world_model(shape, "diffusion", "ddim")
    hp, g = model.net, torch.Generator().manual_seed(1)
    size = (shape.batch, hp.channels, hp.frame_size, hp.frame_size)
    batch = {
        "context": torch.randint(0, 256, (shape.batch, hp.context_frames, *size[1:]), generator=g, dtype=torch.uint8),
        "action": torch.randint(0, hp.num_actions, (shape.batch,), generator=g),
        "target": torch.randint(0, 256, size, generator=g, dtype=torch.uint8),
    }
    return model, lambda m: m.loss(batch, torch.Generator().manual_seed(2))


def precision_section(s: Settings, shapes: list[Shape]) -> dict[str, Any]:
    """The matmul rates and both models' step times, fp32 against bf16: {case: ratio summary}."""
    n = 64 if s.quick else MATMUL
    raw = time_interleaved(_matmuls(n), s)
    matmul = summary(raw, "matmul fp32")
    gflops = {k: 2 * n**3 / v["s"] / 1e9 for k, v in matmul.items()}
    log(f"precision: matmul {n}^3 fp32 {gflops['matmul fp32']:.0f}, bf16 {gflops['matmul bf16']:.0f} GFLOP/s")
    models = {}
    for shape, build in zip(shapes, (_byte, _world)):
        model, loss = build(shape)
        twin = copy.deepcopy(model)
        raw = time_interleaved({"fp32": _step(model, loss, False), "bf16": _step(twin, loss, True)}, s)
        models[shape.name] = summary(raw, "fp32")
        speedup = 1 / models[shape.name]["bf16"]["ratio"]["median"]
        log(f"precision: {shape.name} model step bf16 {speedup:.2f}x faster than fp32")
    return {"matmul_size": n, "matmul": matmul, "matmul_gflops": gflops, "models": models}
