"""What conditioning costs: parameters and training-step time of every conditioner vs ``none``,
and our unconditioned transformer vs an x-transformers ``Decoder`` of the same size.

    python -m benchmarks.overhead [--dim 256 --depth 4 --heads 4 --seq 256 --batch 16 \
        --cond-dim 256 --repeats 7 --steps-per-repeat 5 --out benchmarks/results]

Writes ``overhead.md``, ``overhead.json`` (every raw step time and the summary) and
``overhead.png`` into ``--out``. A training step is forward + MSE loss + backward + AdamW.
Models of one comparison are timed interleaved: inside each repeat the models take one
step each in turn (round-robin, start rotated per repeat) until each has run
``--steps-per-repeat`` steps, so other work on the machine hits all of them alike. A
repeat's time is the median of its steps; a ratio is taken per repeat against the baseline
of the same repeat, then the median over repeats is reported with its spread (IQR, min-max).

Legend: B batch, N tokens, D width (``dim``), Dc conditioning width (``cond_dim``).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.metadata
import inspect
import io
import json
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lightning_film import Conditioner, Conditioning, Transformer, list_conditioners
from lightning_film.measure import load_average, machine_info, paired_ratios, repeat_times, spread, write_atomic

__all__ = ["BenchConfig", "run_benchmark", "main"]

BASELINE = "none"
MLP_RATIO = 4.0
PROG = "python -m benchmarks.overhead"


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark run: the model shape, the batch, and how long to time."""

    dim: int = 256
    depth: int = 4
    heads: int = 4
    seq: int = 256
    batch: int = 16
    cond_dim: int = 256
    repeats: int = 7
    steps_per_repeat: int = 5
    warmup: int = 2
    seed: int = 0
    x_transformers: bool = True


@dataclass
class Inputs:
    """The same inputs for every model of a run."""

    x: torch.Tensor  # (B, N, D)
    target: torch.Tensor  # (B, N, D)
    signals: Conditioning  # vector (B, Dc) and tokens (B, 2, Dc), from two signals
    per_token: Conditioning  # per_token (B, N, Dc)


@dataclass
class Case:
    """One model to time; ``cond`` None means the model is called as ``model(x)``."""

    id: str
    model: nn.Module
    cond: Conditioning | None
    info: dict[str, Any]


# -- inputs and models ------------------------------------------------------------------------
def make_inputs(cfg: BenchConfig) -> Inputs:
    """Seeded random tokens (B, N, D), targets (B, N, D), two signals (B, Dc), per-token (B, N, Dc)."""
    g = torch.Generator().manual_seed(cfg.seed)
    b, n, d, dc = cfg.batch, cfg.seq, cfg.dim, cfg.cond_dim
    x, target = torch.randn(b, n, d, generator=g), torch.randn(b, n, d, generator=g)
    a, c = torch.randn(b, dc, generator=g), torch.randn(b, dc, generator=g)
    per_token = Conditioning(per_token=torch.randn(b, n, dc, generator=g))
    return Inputs(x, target, Conditioning.from_signals([a, c]), per_token)


def build_ours(cfg: BenchConfig, conditioner: str, normalizer: str = "rmsnorm") -> Transformer:
    """Our causal transformer, seeded so every build starts from the same generator state."""
    torch.manual_seed(cfg.seed)
    return Transformer(
        cfg.dim,
        cfg.depth,
        cfg.heads,
        cfg.cond_dim,
        mlp_ratio=MLP_RATIO,
        normalizer=normalizer,
        conditioner=conditioner,
        causal=True,
    )


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def is_modulating(model: Transformer) -> bool:
    """Whether a conditioner of the model reads the vector signal (overrides modulate or gate)."""
    base = (Conditioner.modulate, Conditioner.gate)
    return any((type(c).modulate, type(c).gate) != base for c in model.conditioners())


def conditioner_cases(cfg: BenchConfig, inputs: Inputs) -> list[Case]:
    """Every registered conditioner with rmsnorm, then per-token rows for the modulating ones."""
    cases: list[Case] = []
    per_token: list[Case] = []
    for name in list_conditioners():
        model = build_ours(cfg, name)
        kind = "tokens" if model.final_cond.reads_tokens else "none" if name == BASELINE else "vector"
        cases.append(Case(name, model, inputs.signals, {"conditioner": name, "conditioning": kind}))
        if is_modulating(model):
            info = {"conditioner": name, "conditioning": "per_token"}
            per_token.append(Case(f"{name}/per_token", build_ours(cfg, name), inputs.per_token, info))
    if BASELINE not in {c.id for c in cases}:
        raise RuntimeError(f"the baseline conditioner {BASELINE!r} is not registered")
    return cases + per_token


def require(module: str, what: str) -> ModuleType:
    """Import an optional benchmark dependency, or fail naming the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"{what} needs the optional package {module.split('.')[0]!r}, which is not installed; "
            f"install the benchmark extra: pip install 'lightning_film[bench]'"
        ) from err


def x_transformers_norms() -> dict[str, dict[str, Any]]:
    """Norms both sides offer -> the Decoder options picking it (read from its signature)."""
    layers = require("x_transformers.x_transformers", "the x-transformers comparison")
    params = inspect.signature(layers.AttentionLayers.__init__).parameters
    norms: dict[str, dict[str, Any]] = {"layernorm": {}}  # x-transformers' default norm
    if "use_rmsnorm" in params:
        norms["rmsnorm"] = {"use_rmsnorm": True}
    return norms


def x_transformers_cases(cfg: BenchConfig) -> list[Case]:
    """Ours (``none``) and an x-transformers Decoder per norm: same D, depth, heads, MLP ratio."""
    xt = require("x_transformers", "the x-transformers comparison")
    cases: list[Case] = []
    for norm, options in x_transformers_norms().items():
        ours = build_ours(cfg, BASELINE, norm)
        torch.manual_seed(cfg.seed)
        # attn_flash: its scaled_dot_product_attention path, the kernel ours uses too.
        theirs = xt.Decoder(
            dim=cfg.dim,
            depth=cfg.depth,
            heads=cfg.heads,
            attn_dim_head=cfg.dim // cfg.heads,
            ff_mult=MLP_RATIO,
            attn_flash=True,
            **options,
        )
        cases.append(Case(f"ours/{norm}", ours, Conditioning(), {"side": "ours", "norm": norm}))
        cases.append(Case(f"x_transformers/{norm}", theirs, None, {"side": "x_transformers", "norm": norm}))
    return cases


# -- timing -----------------------------------------------------------------------------------
def train_step(case: Case, opt: torch.optim.Optimizer, inputs: Inputs) -> float:
    """One forward (B, N, D) -> (B, N, D), MSE loss, backward and AdamW step; seconds."""
    start = time.perf_counter()
    out = case.model(inputs.x) if case.cond is None else case.model(inputs.x, case.cond)  # (B, N, D)
    F.mse_loss(out, inputs.target).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def measure_interleaved(cases: list[Case], inputs: Inputs, cfg: BenchConfig) -> dict[str, list[list[float]]]:
    """Round-robin timing: case id -> repeats x steps_per_repeat step times (s), warm-up dropped."""
    opts = {c.id: torch.optim.AdamW(c.model.parameters(), lr=1e-4) for c in cases}
    for case in cases:
        for _ in range(cfg.warmup):
            train_step(case, opts[case.id], inputs)
    raw: dict[str, list[list[float]]] = {c.id: [] for c in cases}
    gc.collect()
    gc.disable()  # as timeit does: a collection would land in some model's step at random
    try:
        for r in range(cfg.repeats):
            shift = r % len(cases)  # rotate the start so no model always runs right after another
            steps = _one_repeat(cases[shift:] + cases[:shift], opts, inputs, cfg.steps_per_repeat)
            for case in cases:
                raw[case.id].append(steps[case.id])
            log(f"repeat {r + 1}/{cfg.repeats} of {len(cases)} models done")
    finally:
        gc.enable()
    return raw


def _one_repeat(
    order: list[Case], opts: dict[str, torch.optim.Optimizer], inputs: Inputs, steps: int
) -> dict[str, list[float]]:
    """One step per model in turn, ``steps`` times: a burst of other work lands on all alike."""
    times: dict[str, list[float]] = {c.id: [] for c in order}
    for _ in range(steps):
        for case in order:
            times[case.id].append(train_step(case, opts[case.id], inputs))
    return times


def log(message: str) -> None:
    """Progress on stderr, so stdout stays the report."""
    print(f"[overhead {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- summaries --------------------------------------------------------------------------------
def summarize_conditioners(cases: list[Case], raw: dict[str, list[list[float]]]) -> list[dict[str, Any]]:
    """One row per case: parameters added vs ``none`` and the step-time ratio to it."""
    base_params = count_params(next(c.model for c in cases if c.id == BASELINE))
    rows = []
    for case in cases:
        added = count_params(case.model) - base_params
        rows.append(
            {
                "id": case.id,
                **case.info,
                "params": count_params(case.model),
                "params_added": added,
                "params_added_pct": 100.0 * added / base_params,
                "step_s": statistics.median(repeat_times(raw[case.id])),
                "ratio": spread(paired_ratios(raw[case.id], raw[BASELINE])),
            }
        )
    return rows


def summarize_x_transformers(cases: list[Case], raw: dict[str, list[list[float]]], tokens: int) -> list[dict[str, Any]]:
    """One row per norm: both sides' parameters and tokens/s, and ours/x-transformers tokens/s."""
    rows = []
    for norm in dict.fromkeys(c.info["norm"] for c in cases):
        models = {c.info["side"]: c.model for c in cases if c.info["norm"] == norm}
        ours, theirs = raw[f"ours/{norm}"], raw[f"x_transformers/{norm}"]
        rows.append(
            {
                "norm": norm,
                "params": {side: count_params(m) for side, m in models.items()},
                "tokens_per_s": {
                    "ours": statistics.median(tokens / t for t in repeat_times(ours)),
                    "x_transformers": statistics.median(tokens / t for t in repeat_times(theirs)),
                },
                # tokens/s ours / theirs = step time theirs / ours, per repeat
                "ratio": spread(paired_ratios(theirs, ours)),
            }
        )
    return rows


# -- machine and reporting --------------------------------------------------------------------
def resolved_command(cfg: BenchConfig, out: Path) -> str:
    """The command line with every option spelled out."""
    args = [a for f in INT_OPTIONS for a in (_flag(f), str(getattr(cfg, f)))] + ["--out", str(out)]
    return f"{PROG} {shlex.join(args + ([] if cfg.x_transformers else ['--no-x-transformers']))}"


def _load(values: list[float] | None) -> str:
    return "n/a" if values is None else ", ".join(f"{v:.2f}" for v in values)


def _ratio_cells(r: dict[str, float]) -> str:
    return f"**{r['median']:.3f}** | {r['q1']:.3f}–{r['q3']:.3f} | {r['min']:.3f}–{r['max']:.3f}"


def render_markdown(result: dict[str, Any]) -> str:
    """The report: how it was made, then one table per comparison."""
    lines = _header_markdown(result) + _conditioners_markdown(result["conditioners"]["rows"])
    lines += _x_transformers_markdown(result.get("x_transformers"))
    return "\n".join(lines) + "\n"


def _header_markdown(result: dict[str, Any]) -> list[str]:
    cfg, m = result["config"], result["machine"]
    return [
        "# Conditioning overhead benchmark",
        "",
        "Written by `benchmarks/overhead.py`; do not edit by hand. Raw step times: `overhead.json`.",
        "",
        f"- Command: `{result['command']}`",
        f"- Every option: `{result['resolved_command']}`",
        f"- Date: {result['date']}; wall time {result['wall_s']:.0f} s",
        f"- Machine: {m['cpu']} (`platform.processor()`: {m['processor']!r}), {m['cpu_count']} cores, "
        f"{m['platform']}; **CPU timings**",
        f"- Load average (1, 5, 15 min): {_load(m['load_average_1_5_15'])} at the start, "
        f"{_load(result['load_average_at_end'])} at the end (other work on the machine shows up here)",
        f"- Software: Python {m['python']}, torch {m['torch']} ({m['torch_threads']} threads), "
        f"x-transformers {m['x_transformers']}",
        f"- Shape: dim {cfg['dim']}, depth {cfg['depth']}, heads {cfg['heads']}, MLP ratio {MLP_RATIO:g}, "
        f"seq {cfg['seq']}, batch {cfg['batch']}, cond_dim {cfg['cond_dim']}; causal; AdamW, MSE loss",
        f"- Timing: {cfg['repeats']} repeats x {cfg['steps_per_repeat']} steps per model, {cfg['warmup']} "
        "warm-up steps dropped; inside a repeat the models take one step each in turn (round-robin); a "
        "repeat's time is the median of its steps; a ratio is taken per repeat against the baseline's time "
        "in the same repeat, then the median over repeats; spread = IQR and min–max of those ratios.",
    ]


def _conditioners_markdown(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "",
        "## Conditioners vs `none` (rmsnorm)",
        "",
        "Vector rows get `Conditioning.from_signals([a, b])` (a vector; `concat` and `cross_attention` read "
        "its two tokens); `per_token` rows get (B, N, Dc) per-token conditioning instead.",
        "",
        "| conditioner | conditioning | params | params added | added % | step (ms) | step-time ratio "
        "| IQR | min–max |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| `{r['conditioner']}` | {r['conditioning']} | {r['params']:,} | {r['params_added']:,} | "
            f"{r['params_added_pct']:.2f} | {1e3 * r['step_s']:.1f} | {_ratio_cells(r['ratio'])} |"
        )
    return lines


def _x_transformers_markdown(section: dict[str, Any] | None) -> list[str]:
    if section is None:
        return ["", "## Ours vs x-transformers", "", "Skipped (`--no-x-transformers`)."]
    lines = [
        "",
        "## Ours vs x-transformers `Decoder` (unconditioned)",
        "",
        'Ours: `Transformer(..., conditioner="none", causal=True)`. Theirs: `Decoder(dim, depth, heads, '
        "attn_dim_head=dim // heads, ff_mult=4, attn_flash=True)` (+ `use_rmsnorm=True` for rmsnorm), "
        "both on `F.scaled_dot_product_attention`. Ratio > 1: ours is faster.",
        "",
        "| norm | ours params | x-transformers params | ours tokens/s | x-transformers tokens/s "
        "| ours / x-transformers | IQR | min–max |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in section["rows"]:
        p, t = r["params"], r["tokens_per_s"]
        lines.append(
            f"| {r['norm']} | {p['ours']:,} | {p['x_transformers']:,} | {t['ours']:,.0f} | "
            f"{t['x_transformers']:,.0f} | {_ratio_cells(r['ratio'])} |"
        )
    return lines


def render_png(result: dict[str, Any]) -> bytes:
    """Bar chart: step-time ratio to ``none`` (IQR error bars) and parameters added (%)."""
    matplotlib = require("matplotlib", "the overhead chart")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["conditioners"]["rows"]
    y = list(range(len(rows)))
    med = [r["ratio"]["median"] for r in rows]
    err = [[m - r["ratio"]["q1"] for m, r in zip(med, rows)], [r["ratio"]["q3"] - m for m, r in zip(med, rows)]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 1.5 + 0.35 * len(rows)), sharey=True)
    left.barh(y, [m - 1.0 for m in med], left=1.0, xerr=err, capsize=3, color="tab:blue")
    left.axvline(1.0, color="black", linewidth=0.8)
    for i, (m, r) in enumerate(zip(med, rows)):
        left.annotate(
            f"{m:.3f}",
            (max(m, r["ratio"]["q3"]), i),
            xytext=(4, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
        )
    left.set_xlabel("training-step time / none (median, IQR bars)")
    left.set_yticks(y, [r["id"] for r in rows])
    left.invert_yaxis()
    right.barh(y, [r["params_added_pct"] for r in rows], color="tab:orange")
    right.set_xlabel("parameters added vs none (%)")
    cfg, m = result["config"], result["machine"]
    fig.suptitle(
        f"dim {cfg['dim']}, depth {cfg['depth']}, seq {cfg['seq']}, batch {cfg['batch']}, rmsnorm — "
        f"CPU: {m['cpu']}, {m['torch_threads']} threads, torch {m['torch']}"
    )
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


# -- entry points -----------------------------------------------------------------------------
def run_benchmark(cfg: BenchConfig, out: Path, command: str | None = None) -> dict[str, Any]:
    """Time everything, write overhead.{md,json,png} into ``out``; returns the JSON content."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    try:
        result = _measure(cfg, out, command)
    finally:
        torch.set_num_threads(threads)
    write_atomic(out / "overhead.json", (json.dumps(result, indent=1) + "\n").encode())
    write_atomic(out / "overhead.md", render_markdown(result).encode())
    write_atomic(out / "overhead.png", render_png(result))
    return result


def _measure(cfg: BenchConfig, out: Path, command: str | None) -> dict[str, Any]:
    start = time.perf_counter()
    date = datetime.now(timezone.utc).isoformat(timespec="seconds")
    inputs = make_inputs(cfg)
    xt_cases = x_transformers_cases(cfg) if cfg.x_transformers else None  # fail early if missing
    cases = conditioner_cases(cfg, inputs)
    raw = measure_interleaved(cases, inputs, cfg)
    result: dict[str, Any] = {
        "command": command or resolved_command(cfg, out),
        "resolved_command": resolved_command(cfg, out),
        "date": date,
        "machine": machine_info(("x-transformers",)),  # its load average is the one at the start
        "config": asdict(cfg),
        "conditioners": {"rows": summarize_conditioners(cases, raw), "raw_step_s": raw},
        "x_transformers": None,
    }
    if xt_cases is not None:
        xt_raw = measure_interleaved(xt_cases, inputs, cfg)
        rows = summarize_x_transformers(xt_cases, xt_raw, cfg.batch * cfg.seq)
        result["x_transformers"] = {"rows": rows, "raw_step_s": xt_raw}
    result["wall_s"] = time.perf_counter() - start
    result["load_average_at_end"] = load_average()
    return result


#: Integer options -> the least value accepted (BenchConfig fields, spelled --with-dashes).
INT_OPTIONS = {f.name: 0 if f.name in ("warmup", "seed") else 1 for f in fields(BenchConfig) if f.type == "int"}


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def _at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}")
        return value

    return parse


def parse_args(argv: list[str]) -> tuple[BenchConfig, Path]:
    """Command-line options -> (config, output folder); bad values exit with argparse's message."""
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    for field, low in INT_OPTIONS.items():
        default = getattr(BenchConfig, field)
        p.add_argument(_flag(field), type=_at_least(low), default=default, help=f"default {default}")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="folder for overhead.*")
    p.add_argument("--no-x-transformers", action="store_true", help="skip the x-transformers comparison")
    a = p.parse_args(argv)
    if a.dim % a.heads:
        p.error(f"--heads must divide --dim, got dim {a.dim} and heads {a.heads}")
    cfg = BenchConfig(**{f: getattr(a, f) for f in INT_OPTIONS}, x_transformers=not a.no_x_transformers)
    return cfg, a.out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    cfg, out = parse_args(argv)
    command = f"{PROG} {shlex.join(argv)}".strip()
    result = run_benchmark(cfg, out, command)
    print(render_markdown(result))
    print(f"wrote {out / 'overhead.md'}, overhead.json, overhead.png in {result['wall_s']:.0f} s")
    return result


if __name__ == "__main__":
    main()
