"""What every section of the performance benchmark shares: settings, shapes, timing, op profiles."""

from __future__ import annotations

import collections
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.utils._python_dispatch import TorchDispatchMode

from lightning_film.measure import interleaved, paired_ratios, repeat_times, spread

REPO = Path(__file__).resolve().parents[2]
BYTE_CONFIG = REPO / "configs" / "byte" / "nibble_acc.yaml"
WORLD_CONFIG = REPO / "configs" / "world" / "base.yaml"


@dataclass(frozen=True)
class Settings:
    """How long each section times (``--quick`` shrinks everything for a smoke run)."""

    quick: bool = False
    repeats: int = 7
    steps_per_repeat: int = 3
    warmup: int = 2
    compile: bool = True
    kid_frames: int = 1000
    kid_feature: str = "inception"
    seq_lens: tuple[int, ...] = (32, 64, 128, 256, 512)
    widths: tuple[int, ...] = (64, 128, 256, 512, 1024)
    sample_bytes: int = 120
    world_batch: int = 32
    world_steps: tuple[int, ...] = (10, 20, 50)
    sections: tuple[str, ...] = ("norms", "conditioners", "step", "scaling", "inference", "allocator", "precision")

    @classmethod
    def quick_run(cls, sections: tuple[str, ...] | None = None) -> Settings:
        return cls(
            quick=True,
            repeats=2,
            steps_per_repeat=1,
            warmup=1,
            compile=False,
            kid_frames=64,
            kid_feature="tiny",
            seq_lens=(16, 32, 64),
            widths=(32, 64, 128),
            sample_bytes=24,
            world_batch=8,
            world_steps=(2, 4),
            sections=sections or cls.sections,
        )


@dataclass(frozen=True)
class Shape:
    """A model's training shape: B batch, N tokens, D width, and the rest of the transformer."""

    name: str
    batch: int
    seq: int
    dim: int
    depth: int
    heads: int
    cond_dim: int
    causal: bool
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def tokens(self) -> int:
        return self.batch * self.seq

    def shrink(self) -> Shape:
        """A tiny version for smoke runs."""
        return Shape(self.name, 2, 8, 16, 1, 2, 8, self.causal, self.extra)


def _init_args(path: Path, part: str) -> dict[str, Any]:
    try:
        tree = yaml.safe_load(path.read_text())
        return dict(tree[part].get("init_args", {}))
    except (OSError, KeyError, TypeError, AttributeError, yaml.YAMLError):
        return {}


def byte_shape() -> Shape:
    """The byte model's default shape, read from its config (the defaults below if it is missing)."""
    m, d = _init_args(BYTE_CONFIG, "model"), _init_args(BYTE_CONFIG, "data")
    cond = int(m.get("nibble_dim", 32)) + int(m.get("acc_dim", 16))  # nibble ++ acc (combine: concat)
    return Shape(
        "byte",
        int(d.get("batch_size", 32)),
        int(d.get("seq_len", 128)),
        int(m.get("dim", 128)),
        int(m.get("depth", 4)),
        int(m.get("num_heads", 4)),
        cond,
        True,
        m,
    )


def world_shape() -> Shape:
    """The world model's default shape: N = (frame_size / patch_size)^2 patches, Dc = dim."""
    d = _init_args(WORLD_CONFIG, "data")
    # the settings the model takes from its data (said once, under data) join the model's own
    m = {**_init_args(WORLD_CONFIG, "model"), **{k: d[k] for k in ("frame_size", "context_frames") if k in d}}
    grid = int(m.get("frame_size", 32)) // int(m.get("patch_size", 4))
    dim = int(m.get("dim", 128))
    return Shape(
        "world",
        int(d.get("batch_size", 32)),
        grid * grid,
        dim,
        int(m.get("depth", 4)),
        int(m.get("num_heads", 4)),
        int(m.get("cond_dim") or dim),
        False,
        m,
    )


def log(message: str) -> None:
    print(f"[performance {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def time_interleaved(fns: dict[str, Callable[[], object]], s: Settings) -> dict[str, list[list[float]]]:
    """``lightning_film.measure.interleaved`` with the run's settings."""
    return interleaved(fns, s.repeats, s.steps_per_repeat, warmup=s.warmup)


def summary(raw: dict[str, list[list[float]]], baseline: str) -> dict[str, dict[str, Any]]:
    """Per case: median time (s) and the per-repeat ratio to ``baseline`` (median, IQR, range)."""
    return {
        name: {"s": statistics.median(repeat_times(times)), "ratio": spread(paired_ratios(times, raw[baseline]))}
        for name, times in raw.items()
    }


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# -- where the time goes ------------------------------------------------------------------------
MATMUL_OPS = {"mm", "addmm", "bmm", "baddbmm", "matmul", "linear", "mv", "addmv"}


def op_category(op: str) -> str:
    if op in MATMUL_OPS:
        return "matmul"
    if "scaled_dot_product" in op or "attention" in op:
        return "attention"
    if op.endswith("_") and op not in ("copy_", "fill_", "zero_"):
        return "in-place elementwise (mostly the optimizer)"
    if op in (
        "view",
        "t",
        "transpose",
        "expand",
        "as_strided",
        "slice",
        "split",
        "unsqueeze",
        "detach",
        "_unsafe_view",
        "reshape",
        "permute",
        "select",
        "alias",
        "split_with_sizes",
        "squeeze",
        "_local_scalar_dense",
    ):
        return "views and scalars"
    return "other elementwise, reductions, copies"


class OpTimer(TorchDispatchMode):
    """Thread CPU time per aten op (``time.thread_time``): what each op costs, whatever else runs.

    Thread time does not count the time this thread waits while other processes hold the
    cores, so on a busy machine it still says where the work is. Meaningful with one intra-op
    thread (work on other threads is not seen): use it under ``torch.set_num_threads(1)``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.seconds: dict[str, float] = collections.defaultdict(float)
        self.calls: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        start = time.thread_time()
        out = func(*args, **(kwargs or {}))
        name = str(func.overloadpacket).split(".")[-1]
        self.seconds[name] += time.thread_time() - start
        self.calls[name] += 1
        return out


def op_profile(step: Callable[[], object], steps: int) -> dict[str, Any]:
    """Per-step thread CPU time by op category and the top ops of ``step`` (one thread, warm)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        step()
        timer = OpTimer()
        with timer:
            for _ in range(steps):
                step()
    finally:
        torch.set_num_threads(threads)
    per_op = {k: v / steps for k, v in timer.seconds.items()}
    categories: dict[str, float] = collections.defaultdict(float)
    for op, sec in per_op.items():
        categories[op_category(op)] += sec
    top = sorted(per_op.items(), key=lambda kv: -kv[1])[:8]
    return {
        "total_s": sum(per_op.values()),
        "ops_per_step": sum(timer.calls.values()) / steps,
        "categories_s": dict(sorted(categories.items(), key=lambda kv: -kv[1])),
        "top_ops_s": dict(top),
    }
