"""Performance benchmark: the CPU training path at the hardware's limit, what conditioning costs,
inference speed and scaling (issue 8), all in one command:

    python -m benchmarks.performance [--quick] [--threads N] [--sections norms,conditioners,...] \
        [--repeats 7 --steps-per-repeat 3 --warmup 2] [--no-compile] [--kid-frames 1000] [--out benchmarks/results]

Sections (each a ratio against a baseline timed in the same run, interleaved):

1. ``norms``: forward + backward of every registered normalizer (and RMSNorm's reference path,
   and ``F.rms_norm``) against ``layernorm`` at the byte model's, the world model's and
   (16, 256, 256) shapes.
2. ``conditioners``: every conditioner against ``none`` at the byte and world models' default
   sizes: parameters, forward FLOPs (per token too), training-step ratio (vector and per-token
   conditioning); film/adaln/adaln_zero again with fused AdamW; where film's time goes.
3. ``step``: our transformer against an x-transformers ``Decoder`` of equal size (same batch,
   same AdamW), per norm; ours compiled (``torch.compile``); FLOPs per step against the fp32
   matmul peak measured in the same run; where the time goes.
4. ``scaling``: the byte model's step time vs sequence length and vs width, with the expected
   slopes (``performance_scaling.png``) and the FLOP utilisation at each width.
5. ``inference``: byte sampling with and without the KV cache; world-model frames/s per sampler
   and step count; KID of ``--kid-frames`` generated frames with cached real features.
6. ``allocator``: the byte step with glibc's default malloc vs freed memory kept for reuse.
7. ``precision``: bf16 mixed precision (``bf16-mixed``) against fp32: a 1024^3 matmul and both
   models' training steps at their config shapes.

Writes ``performance.md``, ``performance.json``, ``performance.png`` and
``performance_scaling.png`` into ``--out``. About 10 minutes on an idle 2-core CPU; ``--quick``
runs every section at tiny sizes in about a minute (a smoke test: its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from benchmarks.performance.common import Settings, byte_shape, log, world_shape
from lightning_film.measure import load_average, machine_info, write_atomic
from lightning_film.reproduce.report import commit

__all__ = ["main", "run"]

PROG = "python -m benchmarks.performance"


def run(settings: Settings, out: Path, command: str) -> dict[str, Any]:
    """Run the chosen sections, write the report files into ``out``; returns the JSON content."""
    from benchmarks.performance import allocator, inference, plots, precision, report, training

    began = time.perf_counter()
    result: dict[str, Any] = {
        "command": command,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": commit(),
        "machine": machine_info(("x-transformers",)),
        "load_average_at_start": load_average(),
        "quick": settings.quick,
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(settings).items()},
    }
    shapes = [byte_shape(), world_shape()]
    if settings.quick:
        shapes = [s.shrink() for s in shapes]
    sections = settings.sections
    if "norms" in sections:
        result["norms"] = training.norms_section(settings)
    if "conditioners" in sections:
        result["conditioners"] = training.conditioners_section(settings, shapes)
    if "step" in sections:
        result["step"] = training.step_section(settings, _step_shapes(shapes[0], settings))
    if "scaling" in sections:
        result["scaling"] = training.scaling_section(settings, shapes[0])
    if "inference" in sections:
        result["inference"] = {
            "byte_sampling": inference.byte_sampling_section(settings, shapes[0]),
            "world_sampling": inference.world_sampling_section(settings, shapes[1]),
            "kid": inference.kid_section(settings, shapes[1]),
        }
    if "allocator" in sections:
        result["allocator"] = allocator.allocator_section(settings)
    if "precision" in sections:
        result["precision"] = precision.precision_section(settings, shapes)
    result["wall_s"] = time.perf_counter() - began
    result["load_average_at_end"] = load_average()
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "performance.json", json.dumps(result, indent=1, default=str) + "\n")
    write_atomic(out / "performance.md", report.render_markdown(result))
    for name, data in plots.render_pngs(result).items():
        write_atomic(out / name, data)
    return result


def _step_shapes(byte, settings: Settings) -> list:
    """The byte model's shape, and the overhead benchmark's (16, 256, 256) with depth 4, heads 4."""
    from benchmarks.performance.common import Shape

    wide = Shape("wide", 16, 256, 256, 4, 4, 256, True)
    return [byte] if settings.quick else [byte, wide]


def parse_args(argv: list[str]) -> tuple[Settings, Path, int]:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="every section at tiny sizes (a smoke test)")
    p.add_argument("--sections", default=None, help=f"comma-separated subset of {','.join(Settings.sections)}")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch intra-op threads (default: all)")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--steps-per-repeat", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile row (saves a minute or two)")
    p.add_argument("--kid-frames", type=int, default=None)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    a = p.parse_args(argv)
    sections = tuple(a.sections.split(",")) if a.sections else Settings.sections
    unknown = set(sections) - set(Settings.sections)
    if unknown:
        p.error(f"unknown sections {sorted(unknown)}; accepted: {', '.join(Settings.sections)}")
    s = Settings.quick_run(sections) if a.quick else Settings(sections=sections)
    overrides = {
        k: v
        for k, v in (
            ("repeats", a.repeats),
            ("steps_per_repeat", a.steps_per_repeat),
            ("warmup", a.warmup),
            ("kid_frames", a.kid_frames),
        )
        if v is not None
    }
    for k, v in overrides.items():
        if v < (0 if k == "warmup" else 1):
            p.error(f"--{k.replace('_', '-')} must be >= {0 if k == 'warmup' else 1}, got {v}")
    if a.no_compile:
        overrides["compile"] = False
    if a.threads < 1:
        p.error(f"--threads must be >= 1, got {a.threads}")
    return Settings(**{**vars(s), **overrides}), a.out, a.threads


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    argv = sys.argv[1:] if argv is None else argv
    if "--allocator-child" in argv:  # one fresh process of the allocator section
        from benchmarks.performance.allocator import child

        cp = argparse.ArgumentParser()
        cp.add_argument("--allocator-child", choices=("default", "reuse"))
        cp.add_argument("--child-steps", type=int, default=8)
        cp.add_argument("--threads", type=int, default=1)
        cp.add_argument("--quick", action="store_true")
        a = cp.parse_args(argv)
        child(a.allocator_child, a.child_steps, 2, a.threads, a.quick)
        return None
    settings, out, threads = parse_args(argv)
    torch.set_num_threads(threads)
    command = shlex.join([*PROG.split(), *argv])
    log(f"sections {', '.join(settings.sections)}; {threads} threads; load average {load_average()}")
    result = run(settings, out, command)
    print(f"wrote {out / 'performance.md'}, performance.json and the plots in {result['wall_s']:.0f} s")
    return result
