"""Inference sections: byte-model sampling with and without the key/value cache, world-model
frames/s per sampler and step count, and the time of KID on generated frames with cached real
features.

Legend: B batch, K context frames, C channels, H, W frame size.
"""

from __future__ import annotations

import functools
import statistics
import time
from typing import Any

import numpy as np
import torch

from benchmarks.performance.common import Settings, Shape, log, summary, time_interleaved
from lightning_film.measure import repeat_times

PROMPT = b"ROMEO:\n"


# -- byte model sampling --------------------------------------------------------------------------
def byte_sampling_section(s: Settings, shape: Shape) -> dict[str, Any]:
    """Bytes/s of greedy sampling after a short prompt, cache vs no cache, interleaved.

    ``sample_bytes`` new bytes stay within the context (``seq_len``), where the cache applies;
    a second pair samples past it, where both re-run the sliding window.
    """
    from lightning_film.models import ByteLM, ByteNet

    args = {k: v for k, v in shape.extra.items() if k in ("variant", "nibble_dim", "acc_dim", "mlp_ratio")}
    torch.manual_seed(0)
    model = ByteLM(ByteNet(**args, dim=shape.dim, depth=shape.depth, num_heads=shape.heads, seq_len=shape.seq))
    model.rare_table_known.fill_(True)  # an all-common table: the timing does not depend on it
    within = min(s.sample_bytes, shape.seq - len(PROMPT))
    beyond = shape.seq + (8 if s.quick else 32)
    same = model.generate(PROMPT, within, temperature=0, use_cache=True) == model.generate(
        PROMPT, within, temperature=0, use_cache=False
    )

    def sample(n: int, use_cache: bool) -> None:
        model.generate(PROMPT, n, temperature=0, use_cache=use_cache)

    fns = {
        "cache": functools.partial(sample, within, True),
        "no cache": functools.partial(sample, within, False),
        "beyond context, cache": functools.partial(sample, beyond, True),
        "beyond context, no cache": functools.partial(sample, beyond, False),
    }
    raw = time_interleaved(
        fns, Settings(**{**vars(s), "steps_per_repeat": 1, "warmup": 1, "repeats": max(2, s.repeats // 2)})
    )
    stats = summary(raw, "cache")
    rows = []
    for name, st in stats.items():
        n = beyond if name.startswith("beyond") else within
        rows.append({"case": name, "new_bytes": n, "s": st["s"], "bytes_per_s": n / st["s"]})
    speedup = summary({k: raw[k] for k in ("cache", "no cache")}, "cache")["no cache"]["ratio"]
    log("byte sampling: done")
    return {
        "rows": rows,
        "cache_speedup": speedup,
        "greedy_identical": same,
        "prompt": PROMPT.decode(),
        "seq_len": shape.seq,
    }


# -- world model ------------------------------------------------------------------------------------
def _world_model(shape: Shape, objective: str, sampler: str, guidance: float = 1.0):
    from lightning_film.models import WorldDenoiser, WorldModel

    keep = (
        "frame_size",
        "channels",
        "context_frames",
        "num_actions",
        "patch_size",
        "dim",
        "depth",
        "num_heads",
        "mlp_ratio",
        "normalizer",
        "conditioner",
        "combine",
    )
    torch.manual_seed(0)
    net = WorldDenoiser(**{k: v for k, v in shape.extra.items() if k in keep})
    return WorldModel(net, objective=objective, sampler=sampler, guidance_scale=guidance, kid_feature="tiny")


def _contexts(model, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Context windows (n, K, C, H, W) uint8 from bounce_room episodes, and actions (n,)."""
    from lightning_film.data.environments import build_world

    hp = model.net
    world = build_world("bounce_room", hp.frame_size)
    rng = np.random.default_rng(seed)
    frames = [world.reset(seed)]
    while len(frames) < n + hp.context_frames:
        frames.append(world.step(int(rng.integers(world.num_actions))))
    video = torch.as_tensor(np.stack(frames)).permute(0, 3, 1, 2)  # (T, C, H, W)
    ctx = torch.stack([video[i : i + hp.context_frames] for i in range(n)])  # (n, K, C, H, W)
    return ctx.contiguous(), torch.as_tensor(rng.integers(0, hp.num_actions, n), dtype=torch.long)


def world_sampling_section(s: Settings, shape: Shape) -> dict[str, Any]:
    """Frames/s of ``WorldModel.sample_next`` per sampler and step count (batch ``world_batch``)."""
    cases = {}
    for objective, sampler in (("diffusion", "ddim"), ("flow", "euler"), ("flow", "heun")):
        model = _world_model(shape, objective, sampler)
        for steps in s.world_steps:
            cases[f"{sampler}/{steps}"] = (model, steps, sampler, 1.0)
    middle = s.world_steps[len(s.world_steps) // 2]
    cases[f"ddim/{middle} + guidance 2"] = (_world_model(shape, "diffusion", "ddim", 2.0), middle, "ddim", 2.0)
    ctx, act = _contexts(next(iter(cases.values()))[0], s.world_batch)
    fns = {}
    for name, (model, steps, _, _) in cases.items():

        def run(model=model, steps=steps) -> None:
            model.sample_next(ctx, act, steps=steps, generator=torch.Generator().manual_seed(0))

        fns[name] = run
    raw = time_interleaved(
        fns, Settings(**{**vars(s), "steps_per_repeat": 1, "warmup": 1, "repeats": max(2, s.repeats // 2)})
    )
    rows = []
    for name, (_, steps, sampler, guidance) in cases.items():
        t = statistics.median(repeat_times(raw[name]))
        evals = steps * (2 if sampler == "heun" else 1)
        rows.append(
            {
                "case": name,
                "sampler": sampler,
                "steps": steps,
                "guidance": guidance,
                "s": t,
                "frames_per_s": s.world_batch / t,
                "denoiser_calls": evals,
            }
        )
    log("world sampling: done")
    return {"rows": rows, "batch": s.world_batch}


def kid_section(s: Settings, shape: Shape) -> dict[str, Any]:
    """Wall time of KID on ``kid_frames`` generated frames, real features read from the cache.

    Timed: sampling the frames (the config's sampler and step count), their features, reading
    the cached real features, KID over subsets. Not timed: computing the real features once.
    """
    from lightning_film.metrics.kid import (
        build_kid_feature,
        compute_kid,
        inception_weights_path,
        kid_metric,
        real_features,
    )

    if s.kid_feature == "inception":
        try:
            inception_weights_path()
        except ModuleNotFoundError as err:
            log(f"KID: skipped ({err})")
            return {"skipped": str(err)}
    hp = shape.extra
    model = _world_model(shape, hp.get("objective", "diffusion"), hp.get("sampler", "ddim"))
    steps = int(hp.get("sample_steps", 20))
    n = s.kid_frames
    ctx, act = _contexts(model, n, seed=1)
    real, _ = _contexts(model, n, seed=2)
    real = real[:, -1]  # (n, C, H, W) frames of other episodes
    extractor = build_kid_feature(s.kid_feature, batch_size=16)
    # the evaluation's own cache ($LIGHTNING_FILM_CACHE/kid): the seeded frames hit it from the second run on
    start = time.perf_counter()
    real_features(extractor, real, "performance_benchmark", "real")
    real_s = time.perf_counter() - start
    log(f"KID: real features of {n} frames ready in {real_s:.0f} s")
    g = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    fake = torch.cat(
        [model.sample_next(c, a, steps=steps, generator=g) for c, a in zip(ctx.split(100), act.split(100))]
    )
    sampled = time.perf_counter()
    metric = kid_metric(extractor, subsets=50, subset_size=min(100, n))
    metric.update(fake, real=False)
    embedded = time.perf_counter()
    metric.real_features.append(real_features(extractor, real, "performance_benchmark", "real"))
    kid_mean, _ = compute_kid(metric)
    done = time.perf_counter()
    log(f"KID of {n} frames: {done - start:.0f} s")
    return {
        "frames": n,
        "feature": s.kid_feature,
        "sampler": model.sampler,
        "steps": steps,
        "sample_s": sampled - start,
        "features_s": embedded - sampled,
        "kid_s": done - embedded,
        "total_s": done - start,
        "features_per_s": n / (embedded - sampled),
        "real_features_s": real_s,
        "kid": float(kid_mean),
    }
