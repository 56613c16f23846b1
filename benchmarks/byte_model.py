"""Is the byte model fed fast enough, and how close does its training step run to the CPU's peak?

    python -m benchmarks.byte_model [--config configs/byte/nibble_acc.yaml --repeats 7 --out benchmarks/results]

Measures, in one run, on the config's corpora and model size:

1. **The data pipeline alone**: what ``ByteDataModule.setup()`` derives from the bytes (nibbles
   over the whole stream, rare-pair counts, the table, the accumulator), as bytes/s of corpus;
   and the training DataLoader (window lookup, tensors, collation) as bytes/s of batches.
   Reading the corpora from their packages is timed apart (once per fit).
2. **The model**: training-step tokens/s (forward, masked cross-entropy, backward, AdamW) of
   ``byte`` and ``nibble_acc``, interleaved, and their ratio per repeat (issue 5: within 10%).
3. **FLOP utilisation**: the step's FLOPs counted by ``torch.utils.flop_counter.FlopCounterMode``
   (matmuls and attention, forward and backward), divided by the step time, against this
   machine's fp32 matmul peak measured in the same run (``torch.mm`` of square matrices, the
   best of a few sizes), interleaved with the steps.

Writes ``byte_model.md`` and ``byte_model.json`` into ``--out``. CPU timings.
"""

from __future__ import annotations

import argparse
import functools
import json
import shlex
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from lightning_film.io import write_atomic
from lightning_film.measure import interleaved, load_average, machine_info, paired_ratios, repeat_times, spread
from lightning_film.reproduce.byte import build_variant, config_parts

PROG = "python -m benchmarks.byte_model"
VARIANTS = ("byte", "nibble_acc")
MM_SIZES = (512, 1024, 2048)


def pipeline(data_args: dict, batches: int, repeats: int) -> dict:
    """Bytes/s of reading the corpora, of the nibble + accumulator precompute, and of the loader."""
    from lightning_film.data.accumulator import rare_table
    from lightning_film.data.bytes import ByteDataModule, compute_acc, compute_nibbles, training_pair_counts

    dm = ByteDataModule(**data_args)
    start = time.perf_counter()
    dm.setup("fit")
    setup_s = time.perf_counter() - start
    corpus_bytes = sum(len(s.data) for s in dm.sources)

    def precompute() -> None:  # what setup() derives from the bytes, on every source
        for src in dm.sources:
            src.nibbles = compute_nibbles(src, dm.scheme)
        counts = sum(training_pair_counts(src, dm.scheme.context_bytes) for src in dm.sources)
        table = rare_table(counts, dm.hparams.rare_fraction)
        for src in dm.sources:
            src.acc = compute_acc(src, table)

    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        precompute()
        times.append(time.perf_counter() - start)
    loader = iter(dm.train_dataloader())
    next(loader)
    start = time.perf_counter()
    n = 0
    for _ in range(batches):
        n += next(loader)["mask"].numel()
    loader_s = time.perf_counter() - start
    return {
        "corpus_bytes": corpus_bytes,
        "setup_s": setup_s,
        "precompute_s": statistics.median(times),
        "precompute_bytes_per_s": corpus_bytes / statistics.median(times),
        "loader_batches": batches,
        "loader_bytes_per_s": n / loader_s,
        "dm": dm,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=Path("configs/byte/nibble_acc.yaml"))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps-per-repeat", type=int, default=3)
    parser.add_argument("--loader-batches", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    torch.set_num_threads(torch.get_num_threads())
    model_args, data_args = config_parts(args.config, [])
    load_start = load_average()
    began = time.perf_counter()

    feed = pipeline(data_args, args.loader_batches, 3)
    dm = feed.pop("dm")
    batch = next(iter(dm.train_dataloader()))
    tokens = int(batch["mask"].numel())
    models = {v: build_variant(model_args, v) for v in VARIANTS}
    opts = {v: torch.optim.AdamW(m.parameters(), lr=1e-4) for v, m in models.items()}
    for m in models.values():
        m.rare_table.copy_(dm.rare_table)

    def step(v: str) -> None:
        mask = batch["mask"]
        ((models[v].nll(batch) * mask).sum() / mask.sum()).backward()
        opts[v].step()
        opts[v].zero_grad(set_to_none=True)

    flops = {}
    for v in VARIANTS:
        with FlopCounterMode(display=False) as counter:
            mask = batch["mask"]
            ((models[v].nll(batch) * mask).sum() / mask.sum()).backward()
        models[v].zero_grad(set_to_none=True)
        flops[v] = counter.get_total_flops()

    mats = {n: (torch.randn(n, n), torch.randn(n, n)) for n in MM_SIZES}
    fns = {f"train/{v}": functools.partial(step, v) for v in VARIANTS}
    fns.update({f"mm/{n}": functools.partial(torch.mm, *mats[n]) for n in MM_SIZES})
    raw = interleaved(fns, args.repeats, args.steps_per_repeat, warmup=2)

    peak_by_size = {n: 2 * n**3 / statistics.median(repeat_times(raw[f"mm/{n}"])) for n in MM_SIZES}
    peak = max(peak_by_size.values())
    rows = {}
    for v in VARIANTS:
        t = statistics.median(repeat_times(raw[f"train/{v}"]))
        rows[v] = {
            "step_s": t,
            "tokens_per_s": tokens / t,
            "flops_per_step": flops[v],
            "flops_per_s": flops[v] / t,
            "utilisation": flops[v] / t / peak,
        }
    ratio = spread(paired_ratios(raw["train/byte"], raw["train/nibble_acc"]))  # nibble_acc tokens/s over byte's
    consume = rows["nibble_acc"]["tokens_per_s"]
    result = {
        "command": shlex.join([PROG, *(sys.argv[1:] if argv is None else argv)]),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_info(),
        "load_average_at_start": load_start,
        "load_average_at_end": load_average(),
        "wall_s": time.perf_counter() - began,
        "config": str(args.config),
        "tokens_per_step": tokens,
        "pipeline": feed,
        "pipeline_over_model": {
            "precompute": feed["precompute_bytes_per_s"] / consume,
            "loader": feed["loader_bytes_per_s"] / consume,
        },
        "models": rows,
        "nibble_acc_over_byte_tokens_per_s": ratio,
        "matmul_peak_flops_per_s": peak,
        "matmul_flops_per_s_by_size": peak_by_size,
        "raw_s": raw,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out / "byte_model.json", json.dumps(result, indent=1) + "\n")
    write_atomic(args.out / "byte_model.md", render(result))
    print(render(result))


def render(r: dict) -> str:
    m, p, po = r["machine"], r["pipeline"], r["pipeline_over_model"]
    ratio = r["nibble_acc_over_byte_tokens_per_s"]
    lines = [
        "# Byte model: data pipeline, step speed and FLOP utilisation",
        "",
        f"- Command: `{r['command']}` (config `{r['config']}`)",
        f"- Date: {r['date']}; wall time {r['wall_s']:.0f} s",
        f"- Machine: {m['cpu']}, {m['cpu_count']} cores, torch {m['torch']} ({m['torch_threads']} threads); "
        f"load average {r['load_average_at_start']} at start, {r['load_average_at_end']} at end; **CPU timings**",
        "",
        "## Pipeline vs model (issue 5: the pipeline at least 100x faster than the model consumes)",
        "",
        "| what | bytes/s | x the model's training tokens/s (nibble_acc) |",
        "|---|---:|---:|",
        f"| nibbles + rare-pair counts + table + accumulator over all {p['corpus_bytes']:,} bytes "
        f"(median of 3: {p['precompute_s']:.2f} s) | {p['precompute_bytes_per_s']:,.0f} | {po['precompute']:,.0f}x |",
        f"| training DataLoader ({p['loader_batches']} batches, 0 workers) | {p['loader_bytes_per_s']:,.0f} | "
        f"{po['loader']:,.0f}x |",
        "",
        f"The whole `setup()` (reading the corpora from their packages included: {p['setup_s']:.1f} s) runs once "
        "per fit; the precompute and the loader are what scale with the data.",
        "",
        "## Training step (forward, cross-entropy, backward, AdamW) and FLOP utilisation",
        "",
        f"fp32 matmul peak measured in this run: **{r['matmul_peak_flops_per_s'] / 1e9:.1f} GFLOP/s** (best of "
        + ", ".join(f"{n}²: {v / 1e9:.1f}" for n, v in r["matmul_flops_per_s_by_size"].items())
        + "). FLOPs per step from `FlopCounterMode` (matmuls + attention, forward and backward).",
        "",
        "| variant | step (ms) | tokens/s | GFLOP per step | GFLOP/s | of matmul peak |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for v, row in r["models"].items():
        lines.append(
            f"| {v} | {1000 * row['step_s']:.1f} | {row['tokens_per_s']:,.0f} | {row['flops_per_step'] / 1e9:.2f} | "
            f"{row['flops_per_s'] / 1e9:.1f} | {100 * row['utilisation']:.0f}% |"
        )
    lines += [
        "",
        f"nibble_acc tokens/s over byte's (per repeat, interleaved): median **{ratio['median']:.3f}** "
        f"(IQR {ratio['q1']:.3f}–{ratio['q3']:.3f}, min–max {ratio['min']:.3f}–{ratio['max']:.3f}); "
        "issue 5 asks for at least 0.90.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
