"""What the world tables measure in this process: each conditioner's cost (parameters, FLOPs, step
time) and the copy-last-frame baseline on a run's test windows."""

from __future__ import annotations

import functools
import statistics
from pathlib import Path
from typing import Any

import torch

from lightning_film.measure import interleaved, paired_ratios, repeat_times, spread
from lightning_film.reproduce.report import config_tree, init_args

__all__ = ["copy_baseline", "model_args", "model_costs"]


def model_args(config: Path, overrides: list[tuple[str, str]]) -> dict[str, Any]:
    args = init_args(config_tree(config, overrides), "model", "WorldModel", config)
    args["init_from"] = None
    return args


def model_costs(
    base_args: dict[str, Any], rows: list[tuple[str, str]], repeats: int, steps_per_repeat: int, batch_size: int
) -> dict[str, dict[str, Any]]:
    """Per (normalizer, conditioner): parameters, forward GFLOPs of one denoiser call (batch 1) and
    training-step time (loss, backward, AdamW) against ``rmsnorm + none``, interleaved."""
    from torch.utils.flop_counter import FlopCounterMode

    from lightning_film.models import WorldDenoiser, WorldModel

    hp, net = {**base_args}, base_args.get("net", {})
    k, c, s = net.get("context_frames", 2), net.get("channels", 3), net.get("frame_size", 32)
    g = torch.Generator().manual_seed(0)
    batch = {
        "context": torch.randint(0, 256, (batch_size, k, c, s, s), generator=g, dtype=torch.uint8),
        "action": torch.randint(0, net.get("num_actions", 5), (batch_size,), generator=g),
        "target": torch.randint(0, 256, (batch_size, c, s, s), generator=g, dtype=torch.uint8),
    }
    models, opts, out = {}, {}, {}
    for norm, cond in rows:
        name = f"{norm} + {cond}"
        torch.manual_seed(0)
        model = WorldModel(**{**hp, "net": WorldDenoiser(**{**net, "normalizer": norm, "conditioner": cond})})
        one = {key: v[:1] for key, v in batch.items()}
        context, action, target = model.unpack_batch(one)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(target.float() / 127.5 - 1, torch.full((1,), 0.5), context.float() / 127.5 - 1, action)
        out[name] = {
            "params": sum(p.numel() for p in model.parameters()),
            "forward_gflops": counter.get_total_flops() / 1e9,
        }
        models[name], opts[name] = model, torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def step(name: str) -> None:
        models[name].loss(batch).backward()
        opts[name].step()
        opts[name].zero_grad(set_to_none=True)

    raw = interleaved({n: functools.partial(step, n) for n in models}, repeats, steps_per_repeat, warmup=2)
    base = "rmsnorm + none" if "rmsnorm + none" in raw else next(iter(raw))
    for name in models:
        out[name]["step_ms"] = 1000 * statistics.median(repeat_times(raw[name]))
        out[name]["step_ratio_vs_none"] = spread(paired_ratios(raw[name], raw[base]))
        out[name]["raw_step_s"] = raw[name]
    return out


def copy_baseline(config: Path, overrides: list[tuple[str, str]], preset: Any) -> dict[str, float]:
    """KID and PSNR of "predicting" the last context frame, on the windows, features and KID
    subsets a run's ``test`` uses: the score of a model that knows what the room looks like but
    nothing about what moves. Real frames look real, so its KID is near 0; its PSNR is the bar
    a model's next frames must clear."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    from lightning_film.data.world import WorldDataModule
    from lightning_film.metrics.kid import build_kid_feature, compute_kid, kid_metric, real_features

    tree = config_tree(config, overrides)
    model = init_args(tree, "model", "WorldModel", config)
    dm = WorldDataModule(**init_args(tree, "data", "WorldDataModule", config))
    dm.setup("test")
    last, truth, n = [], [], 0
    for batch in dm.test_dataloader():  # the same order as a run's test, first windows first
        take = min(len(batch["target"]), preset.eval_samples - n)
        if take <= 0:
            break
        last.append(batch["context"][:take, -1])  # (take, C, H, W) uint8
        truth.append(batch["target"][:take])
        n += take
    fake, real = torch.cat(last), torch.cat(truth)
    if fake.shape[1] == 1:  # the feature networks read RGB
        fake, real = fake.expand(-1, 3, -1, -1), real.expand(-1, 3, -1, -1)
    extractor = build_kid_feature(model.get("kid_feature", "inception"))
    metric = kid_metric(extractor, model.get("kid_subsets", 50), min(preset.kid_subset_size, n))
    metric.update(fake, real=False)
    metric.real_features.append(real_features(extractor, real, dm.dataset_key, "test"))
    kid_mean, kid_std = compute_kid(metric, seed=model.get("seed", 0))
    psnr = peak_signal_noise_ratio(fake.float(), real.float(), data_range=255.0)
    return {"kid_mean": float(kid_mean), "kid_std": float(kid_std), "psnr": float(psnr), "windows": n}
