"""Measuring speed honestly: interleaved timing, robust statistics, machine facts.

Every benchmark (``benchmarks/``) and results command (``lightning-film reproduce``) times a
candidate against a baseline in the same run, interleaved, and reports per-repeat ratios as a
median with its spread; these helpers keep that uniform.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import lightning_film
from lightning_film.io import write_atomic  # noqa: F401  (re-exported for the benchmarks)

__all__ = [
    "cpu_model",
    "interleaved",
    "machine_info",
    "load_average",
    "paired_ratios",
    "repeat_times",
    "spread",
    "write_atomic",
]


def repeat_times(steps: list[list[float]]) -> list[float]:
    """Per-repeat step time (s): the median of the repeat's steps, robust to one disturbed step."""
    return [statistics.median(r) for r in steps]


def spread(values: list[float]) -> dict[str, float]:
    """Median, quartiles (inclusive method) and range of the values."""
    q1, q3 = (statistics.quantiles(values, n=4, method="inclusive")[::2]) if len(values) > 1 else (values[0],) * 2
    return {"median": statistics.median(values), "q1": q1, "q3": q3, "min": min(values), "max": max(values)}


def paired_ratios(num: list[list[float]], den: list[list[float]]) -> list[float]:
    """Per-repeat ratio of step times, each against the other's same repeat."""
    return [a / b for a, b in zip(repeat_times(num), repeat_times(den))]


def cpu_model() -> str:
    """The CPU's model name: lscpu, then /proc/cpuinfo, then platform.processor()."""
    for read in (
        lambda: subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout,
        lambda: Path("/proc/cpuinfo").read_text(),
    ):
        try:
            text = read()
        except (OSError, subprocess.SubprocessError):
            continue
        names = [ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.strip().lower().startswith("model name")]
        if names:
            return names[0]
    return platform.processor() or platform.machine() or "unknown"


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def load_average() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def machine_info(extra_packages: tuple[str, ...] = ()) -> dict[str, Any]:
    """Where the timings come from (CPU only), with the load average at call time.

    ``extra_packages``: distributions whose versions matter to the benchmark.
    """
    return {
        "cpu": cpu_model(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": "cpu",
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning_film": lightning_film.__version__,
        **{name.replace("-", "_"): _version(name) for name in extra_packages},
        "load_average_1_5_15": load_average(),
    }


def interleaved(
    steps: dict[str, Callable[[], object]], repeats: int, steps_per_repeat: int, warmup: int = 1
) -> dict[str, list[list[float]]]:
    """Time several step functions round-robin: name -> repeats x steps_per_repeat seconds.

    ``warmup`` calls of each are made first and dropped. Inside a repeat the functions take one
    step each in turn (the start rotated per repeat), so other work on the machine hits all of
    them alike; the garbage collector is paused while timing, as ``timeit`` does.
    """
    import gc

    names = list(steps)
    for name in names:
        for _ in range(warmup):
            steps[name]()
    raw: dict[str, list[list[float]]] = {name: [] for name in names}
    gc.collect()
    gc.disable()
    try:
        for r in range(repeats):
            order = names[r % len(names) :] + names[: r % len(names)]
            times: dict[str, list[float]] = {name: [] for name in names}
            for _ in range(steps_per_repeat):
                for name in order:
                    start = time.perf_counter()
                    steps[name]()
                    times[name].append(time.perf_counter() - start)
            for name in names:
                raw[name].append(times[name])
    finally:
        gc.enable()
    return raw
