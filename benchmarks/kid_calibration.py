"""What a KID value means on the world frames: KID of known degradations of the true next frames.

The world test scores sampled next frames by KID against the true ones (Inception, the reference
resize). This calibrates that scale on the same 512 test windows: real frames of other windows (the
floor), copying the last context frame, and the true frames with pixel noise, blur, blockiness or
a brightness offset. Nothing is trained. Writes ``kid.json`` and ``README.md`` under --out.

    python -m benchmarks.kid_calibration --out benchmarks/results/world/kid-calibration
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.world_probe_data import world_data
from lightning_film.data.world import WorldDataModule
from lightning_film.metrics.kid import build_kid_feature, compute_kid, kid_metric, real_features


def held_out(dm: WorldDataModule, stage: str, count: int) -> dict[str, torch.Tensor]:
    """The first ``count`` windows the world test (or validation) scores: context (N, K, 3, H, W), target (N, 3, H, W)."""
    loader = dm.test_dataloader() if stage == "test" else dm.val_dataloader()
    parts: dict[str, list[torch.Tensor]] = {"context": [], "target": []}
    for batch in loader:
        for key in parts:
            parts[key].append(batch[key])
        if sum(len(t) for t in parts["target"]) >= count:
            break
    return {key: torch.cat(value)[:count] for key, value in parts.items()}


def noisy(frames: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    """Frames (N, 3, H, W) uint8 plus Gaussian pixel noise of std ``sigma`` (in 0..255), rounded."""
    g = torch.Generator().manual_seed(seed)
    return (frames.float() + sigma * torch.randn(frames.shape, generator=g)).round().clamp(0, 255).to(torch.uint8)


def blurred(frames: torch.Tensor, sigma: float) -> torch.Tensor:
    """A separable Gaussian blur of std ``sigma`` pixels, edges replicated."""
    radius = max(1, round(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    img = F.pad(frames.float(), (radius, radius, radius, radius), mode="replicate")
    c = img.shape[1]
    img = F.conv2d(img, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    img = F.conv2d(img, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return img.round().clamp(0, 255).to(torch.uint8)


def blocky(frames: torch.Tensor, factor: int) -> torch.Tensor:
    """Averaged over ``factor`` x ``factor`` blocks, then repeated back to the frame size."""
    small = F.avg_pool2d(frames.float(), factor)
    return F.interpolate(small, scale_factor=factor, mode="nearest").round().clamp(0, 255).to(torch.uint8)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--count", type=int, default=512, help="test windows (the world test's max_eval_windows)")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    dm = world_data(a.count)  # the world configs' data: the test scores 512 windows
    dm.setup("validate")
    test, val = held_out(dm, "test", a.count), held_out(dm, "validate", a.count)
    truth = test["target"]
    extractor = build_kid_feature("inception")
    real = real_features(extractor, truth, dm.dataset_key, "test")
    cases = {
        "true frames of other windows (validation split)": val["target"],
        "copy of the last context frame": test["context"][:, -1],
        "truth + noise, std 2": noisy(truth, 2.0),
        "truth + noise, std 4": noisy(truth, 4.0),
        "truth + noise, std 8": noisy(truth, 8.0),
        "truth + noise, std 16": noisy(truth, 16.0),
        "truth blurred, sigma 0.5 px": blurred(truth, 0.5),
        "truth blurred, sigma 1 px": blurred(truth, 1.0),
        "truth averaged in 2 x 2 blocks": blocky(truth, 2),
        "truth + 8 on every pixel": (truth.int() + 8).clamp(0, 255).to(torch.uint8),
    }
    rows = []
    for name, fake in cases.items():
        start = time.perf_counter()
        kid = kid_metric(extractor, subsets=50, subset_size=min(100, a.count))
        kid.real_features.append(real)
        kid.update(fake, real=False)
        mean, std = compute_kid(kid, seed=0)
        psnr = 10 * torch.log10(255.0**2 / ((fake.float() - truth.float()) ** 2).mean().clamp_min(1e-10))
        rows.append({"case": name, "kid_mean": float(mean), "kid_std": float(std), "psnr": float(psnr)})
        print(
            f"{name}: KID {float(mean):.4f} +- {float(std):.4f}, PSNR {float(psnr):.2f} dB "
            f"({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    meta = {
        "command": f"python -m benchmarks.kid_calibration --out {a.out} --count {a.count} --threads {a.threads}",
        "commit": commit,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {a.threads} thread(s)",
        "load_average": [round(x, 2) for x in __import__("os").getloadavg()],
        "windows": a.count,
    }
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "kid.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [
        "# KID of known degradations of the world test's true next frames",
        "",
        f"- Command: `{meta['command']}`",
        f"- Commit {commit}, {meta['date']}; {meta['machine']}; load average {meta['load_average']}",
        f"- {a.count} test windows of `bounce_room` (the world test's), Inception features with the reference "
        "resize, 50 subsets of 100 (the world configs' KID settings)",
        "",
        "| fake frames against the true next frames | KID | KID std | PSNR (dB) |",
        "|---|---:|---:|---:|",
        *(f"| {r['case']} | {r['kid_mean']:.4f} | {r['kid_std']:.4f} | {r['psnr']:.2f} |" for r in rows),
        "",
    ]
    (a.out / "README.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
