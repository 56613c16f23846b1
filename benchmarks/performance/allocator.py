"""The C allocator's share of a training step: the byte model's step in fresh processes, with
glibc's default ``malloc`` settings and with :func:`~lightning_film.callbacks.cpu_memory.reuse_freed_memory`.

Each process is new (the setting is process-wide and cannot be undone), and the two kinds
alternate, so drift of the machine lands on both.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

import torch

from benchmarks.performance.common import REPO, Settings, Shape, byte_shape, log

CHILD_FLAG = "--allocator-child"


def child(mode: str, steps: int, warmup: int, threads: int, quick: bool) -> None:
    """In a fresh process: the byte step's times and minor page faults, as one JSON line on stdout."""
    from benchmarks.performance.training import _byte_batch, _byte_lm, byte_step_fn
    from lightning_film.callbacks.cpu_memory import reuse_freed_memory

    if mode == "reuse":
        reuse_freed_memory()
    torch.set_num_threads(threads)
    shape = byte_shape()
    if quick:
        shape = Shape("byte", 4, 16, 32, 1, 2, 8, True, shape.extra)
    step = byte_step_fn(_byte_lm(shape, shape.dim, shape.seq), _byte_batch(shape.batch, shape.seq))
    for _ in range(warmup):
        step()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / steps
    print(json.dumps({"mode": mode, "step_s": times, "minor_faults_per_step": faults}))


def allocator_section(s: Settings) -> dict[str, Any]:
    pairs = 2
    steps = 2 if s.quick else 8
    runs: dict[str, list[dict]] = {"default": [], "reuse": []}
    for i in range(pairs):
        for mode in ("default", "reuse") if i % 2 == 0 else ("reuse", "default"):
            cmd = [
                sys.executable,
                "-m",
                "benchmarks.performance",
                CHILD_FLAG,
                mode,
                "--child-steps",
                str(steps),
                "--threads",
                str(torch.get_num_threads()),
            ] + (["--quick"] if s.quick else [])
            out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True)
            runs[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
    ratios = [
        statistics.median(d["step_s"]) / statistics.median(r["step_s"]) for d, r in zip(runs["default"], runs["reuse"])
    ]
    log("allocator: done")
    return {
        "step_ms": {m: 1e3 * statistics.median([statistics.median(r["step_s"]) for r in rs]) for m, rs in runs.items()},
        "minor_faults_per_step": {
            m: statistics.median([r["minor_faults_per_step"] for r in rs]) for m, rs in runs.items()
        },
        "default_over_reuse": ratios,
        "runs": runs,
    }
