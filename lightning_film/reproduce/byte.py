"""``lightning-film reproduce byte``: the byte-model table (byte vs nibble vs nibble_acc).

    lightning-film reproduce byte --preset quick        # 3 variants x 3 seeds x 600 steps
    lightning-film reproduce byte --preset full         # 3 variants x 5 seeds x 3000 steps

Every variant trains from the same config (``configs/byte/nibble_acc.yaml`` with
``--model.variant``), at the same budget (steps x batch x window), over the same seeds; each
run is the real ``lightning-film fit`` + ``test`` (see :mod:`lightning_film.reproduce.runner`),
so finished runs are not redone and a killed table continues where it stopped.

Then, in this process, the three models are built at the config's size and timed interleaved
on one real batch (training step and inference forward; ratios against ``byte`` per repeat),
and their parameters are counted. Written to ``--out`` (default
``benchmarks/results/byte/<preset>/``): ``results.md`` (the tables, the command, date and
machine), ``results.json`` (everything behind them, every run's result included) and
``val_curves.png``.
"""

from __future__ import annotations

import functools
import io
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from lightning_film.errors import CommandParser
from lightning_film.io import write_atomic
from lightning_film.measure import interleaved, machine_info, paired_ratios, repeat_times, spread
from lightning_film.reproduce.report import (
    add_common_options,
    config_tree,
    header,
    init_args,
    make_folder,
    override_args,
    parse_override,
    report_basics,
    rerender,
    results_folder,
)
from lightning_film.reproduce.runner import Run, execute_all, print_plan
from lightning_film.reproduce.stats import compare, fmt_ci, fmt_p, holm, interval, paired_section

__all__ = ["PRESETS", "Preset", "analyse", "build_runs", "build_variant", "config_parts", "main", "model_facts",
           "per_seed", "throughput"]  # fmt: skip

VARIANTS = ("byte", "nibble", "nibble_acc")
BASELINE = "byte"
CONFIG = Path("configs/byte/nibble_acc.yaml")
#: a character-level nanoGPT on tiny Shakespeare (1 MB): about 2.1 bits per character (issue 5)
NANOGPT_BITS_PER_CHAR = 2.1


@dataclass(frozen=True)
class Preset:
    """A table's budget: seeds, training steps per run, validation interval, timing repeats."""

    seeds: tuple[int, ...]
    max_steps: int
    val_every: int
    repeats: int = 7
    steps_per_repeat: int = 3


PRESETS: dict[str, Preset] = {
    "quick": Preset(seeds=(0, 1, 2), max_steps=600, val_every=150),
    "full": Preset(seeds=(0, 1, 2, 3, 4), max_steps=3000, val_every=300),
}


# -- the runs -----------------------------------------------------------------------------------------
def build_runs(
    preset: Preset, config: Path, variants: tuple[str, ...], seeds: tuple[int, ...], overrides: list[tuple[str, str]]
) -> list[Run]:
    """One run per (variant, seed): the config with that variant, seed and the preset's budget."""
    runs = []
    for variant in variants:
        for seed in seeds:
            args = [
                "--model.variant", variant, "--seed_everything", str(seed), "--data.seed", str(seed),
                "--trainer.max_steps", str(preset.max_steps), "--trainer.val_check_interval", str(preset.val_every),
                *override_args(overrides),
            ]  # fmt: skip
            runs.append(Run(f"{variant}/seed{seed}", config, args, labels={"variant": variant, "seed": seed}))
    return runs


# -- the models, measured in this process ---------------------------------------------------------------
def config_parts(config: Path, overrides: list[tuple[str, str]]) -> tuple[dict, dict]:
    """(model init_args, data init_args) of a ByteLM config with the overrides applied."""
    tree = config_tree(config, overrides)
    return init_args(tree, "model", "ByteLM", config), init_args(tree, "data", "ByteDataModule", config)


def build_variant(model_args: dict, variant: str):
    from lightning_film.models import ByteLM

    torch.manual_seed(0)
    return ByteLM(**{**model_args, "variant": variant})


def model_facts(model_args: dict, variants: tuple[str, ...]) -> dict[str, dict[str, int]]:
    """Parameters per variant: the model, the embedding, and the embedding's parts."""
    facts = {}
    for variant in variants:
        model = build_variant(model_args, variant)
        embed = model.net.embed
        parts = {name: sum(p.numel() for p in child.parameters()) for name, child in embed.named_children()}
        facts[variant] = {
            "params": sum(p.numel() for p in model.parameters()),
            "embedding_params": sum(p.numel() for p in embed.parameters()),
            **{f"embedding/{name}": n for name, n in parts.items()},
        }
    return facts


def throughput(
    model_args: dict, data_args: dict, variants: tuple[str, ...], repeats: int, steps_per_repeat: int
) -> dict[str, Any]:
    """Training-step and inference tokens/s of each variant on one real batch, timed interleaved.

    A training step is forward, masked cross-entropy, backward and AdamW; inference is a
    no-grad forward over the same windows. Ratios are tokens/s against ``byte``, per repeat.
    """
    from lightning_film.data.bytes import ByteDataModule

    dm = ByteDataModule(**data_args)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    tokens = int(batch["mask"].numel())
    models = {v: build_variant(model_args, v) for v in variants}
    for model in models.values():
        model.rare_table.copy_(dm.rare_table)
    opts = {v: torch.optim.AdamW(m.parameters(), lr=1e-4) for v, m in models.items()}

    def train(v: str) -> None:
        mask = batch["mask"]
        loss = (models[v].nll(batch) * mask).sum() / mask.sum()
        loss.backward()
        opts[v].step()
        opts[v].zero_grad(set_to_none=True)

    @torch.no_grad()
    def infer(v: str) -> None:
        models[v](batch["bytes"][:, :-1], batch["nibbles"], batch["acc"])

    out: dict[str, Any] = {"tokens_per_step": tokens, "raw_s": {}}
    for kind, fn in (("train", train), ("infer", infer)):
        for m in models.values():
            m.train(kind == "train")
        raw = interleaved({v: functools.partial(fn, v) for v in variants}, repeats, steps_per_repeat, warmup=2)
        out["raw_s"][kind] = raw
        for v in variants:
            per_repeat = repeat_times(raw[v])
            ratios = paired_ratios(raw[BASELINE], raw[v]) if BASELINE in raw else [float("nan")]
            out.setdefault(v, {})[f"{kind}_tokens_per_s"] = tokens / statistics.median(per_repeat)
            out[v][f"{kind}_ratio"] = spread(ratios)  # tokens/s of v over byte's, same repeat
    return out


# -- the report ----------------------------------------------------------------------------------------
def summarize(results: dict[str, dict], variants: tuple[str, ...]) -> dict[str, dict[str, list[float]]]:
    """variant -> test metric -> values over seeds."""
    table: dict[str, dict[str, list[float]]] = {v: {} for v in variants}
    for result in results.values():
        for metric, value in result["test"].items():
            if metric.startswith("test/bpb"):
                table[result["variant"]].setdefault(metric, []).append(value)
    return table


def per_seed(runs: dict[str, dict], variants: list[str]) -> dict[str, dict[str, dict[int, float]]]:
    """metric -> variant -> seed -> test value (the bpb metrics), from the runs' results."""
    table: dict[str, dict[str, dict[int, float]]] = {}
    for result in runs.values():
        for metric, value in result["test"].items():
            if metric.startswith("test/bpb") and result["variant"] in variants:
                table.setdefault(metric, {}).setdefault(result["variant"], {})[result["seed"]] = value
    return {m: {v: table[m][v] for v in variants if v in table[m]} for m in sorted(table)}


def analyse(report: dict[str, Any]) -> dict[str, Any]:
    """``report`` with ``stats`` (per metric and variant the mean and 95% CI; paired comparisons of
    every pair of variants, Holm-adjusted over the table) and the ``verdict`` sentences built on them."""
    seeds = per_seed(report["runs"], report["variants"])
    comparisons = holm([c for m, rows in seeds.items() for c in compare(rows, metric=m)])
    rows = {m: {v: interval(list(s.values())) for v, s in rows.items()} for m, rows in seeds.items()}
    return {**report, "stats": {"rows": rows, "paired": comparisons},
            "verdict": verdict(rows, comparisons, report["variants"])}  # fmt: skip


def render_markdown(report: dict[str, Any]) -> str:
    variants, summary, facts, speed = report["variants"], report["summary"], report["facts"], report["throughput"]
    corpora = sorted({m.split("/", 2)[2] for v in summary.values() for m in v if m.count("/") == 2})
    base = facts[BASELINE] if BASELINE in facts else None
    lines = [
        f"# Byte model: {', '.join(variants)} (preset `{report['preset_name']}`)",
        "",
        *header(report),
        f"- Budget per run: {report['preset']['max_steps']} steps x batch {report['data'].get('batch_size')} x "
        f"{report['data'].get('seq_len')} bytes; seeds {list(report['seeds'])}; config `{report['config']}` "
        f"with `--model.variant`; overrides {report['overrides'] or 'none'}",
        "",
        "## Test bits per byte (mean ± 95% CI half-width over the seeds, Student t; lower is better)",
        "",
        "| variant | seeds | all | " + " | ".join(corpora) + " |",
        "|---|---:|---:|" + "---:|" * len(corpora),
    ]
    for v in variants:
        row = summary.get(v, {})
        n = len(row.get("test/bpb", []))
        lines.append(
            f"| {v} | {n} | {fmt_ci(row.get('test/bpb'))} | "
            + " | ".join(fmt_ci(row.get(f"test/bpb/{c}")) for c in corpora)
            + " |"
        )
    if any(len(r.get("test/bpb", [])) == 1 for r in summary.values()):
        lines += ["", "A row of one seed shows its value alone: one seed has no interval."]
    lines += ["", *report["verdict"], "", *paired_section(report["stats"]["paired"])]
    lines += ["## What the nibble path and the accumulator cost", ""]
    lines += [
        "| variant | params | vs byte | embedding params | embedding vs byte's | "
        "train tokens/s | vs byte (IQR) | inference tokens/s | vs byte (IQR) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for v in variants:
        f, s = facts[v], speed[v]
        added = f"{100 * (f['params'] / base['params'] - 1):+.2f}%" if base else "–"
        emb = f"{100 * (f['embedding_params'] / base['embedding_params'] - 1):+.1f}%" if base else "–"
        tr, inf = s["train_ratio"], s["infer_ratio"]
        lines.append(
            f"| {v} | {f['params']:,} | {added} | {f['embedding_params']:,} | {emb} | "
            f"{s['train_tokens_per_s']:,.0f} | {tr['median']:.3f} ({tr['q1']:.3f}–{tr['q3']:.3f}) | "
            f"{s['infer_tokens_per_s']:,.0f} | {inf['median']:.3f} ({inf['q1']:.3f}–{inf['q3']:.3f}) |"
        )
    lines += ["", *report["cost_notes"], ""]
    lines += [
        f"Timing: the {len(variants)} models side by side, one real training batch "
        f"({speed['tokens_per_step']:,} tokens), {report['preset']['repeats']} repeats x "
        f"{report['preset']['steps_per_repeat']} steps each, interleaved round-robin, warm-up dropped; "
        "a ratio is tokens/s against `byte` in the same repeat (median, IQR).",
        "",
        "Validation curves: `val_curves.png`. Every run's metrics, curves and commands: `results.json`.",
        "",
    ]
    return "\n".join(lines)


def verdict(rows: dict[str, dict[str, dict]], comparisons: list[dict], variants: list[str]) -> list[str]:
    """Plain sentences per metric: the best variant, the runner-up, and whether the paired test over
    the seeds separates them (``rows``: metric -> variant -> :func:`interval`)."""
    lines = []
    for metric, scored in rows.items():
        if len(scored) < 2:
            continue
        best, runner_up = sorted(scored, key=lambda v: scored[v]["mean"])[:2]
        test = next(c for c in comparisons if c["metric"] == metric and {c["a"], c["b"]} == {best, runner_up})
        judged = "one seed: no test" if test["p"] is None else f"Holm p {fmt_p(test['p_holm'])}"
        base = scored.get(BASELINE) if BASELINE not in (best, runner_up) else None
        lines.append(
            f"- `{metric}`: **{best}** {scored[best]['mean']:.3f}, then {runner_up} {scored[runner_up]['mean']:.3f} "
            f"(gap {scored[runner_up]['mean'] - scored[best]['mean']:.3f} over {test['n']} shared seeds: "
            f"**{test['verdict']}**, {judged})" + (f"; {BASELINE} {base['mean']:.3f}" if base else "")
        )
    shakespeare = [s["mean"] for s in rows.get("test/bpb/shakespeare", {}).values()]
    if shakespeare:
        lines.append(
            f"- For scale: a character-level nanoGPT on tiny Shakespeare reaches about {NANOGPT_BITS_PER_CHAR} bits "
            f"per character; our best Shakespeare test score here is {min(shakespeare):.3f} bits per byte (bytes are "
            "characters for this ASCII text), on the 38 plays with their Markdown, at this preset's budget."
        )
    return lines


def cost_notes(facts: dict[str, dict[str, int]], model_args: dict) -> list[str]:
    """The seed's parameter claim against what the model really has."""
    if BASELINE not in facts:
        return []
    byte_table = facts[BASELINE]["embedding_params"]
    notes = []
    for v, f in facts.items():
        if v == BASELINE:
            continue
        tables = sum(n for k, n in f.items() if k.startswith("embedding/") and k.split("/")[1] in ("nibble", "acc"))
        projections = f["embedding_params"] - byte_table - tables
        notes.append(
            f"- `{v}`: +{f['embedding_params'] - byte_table:,} embedding parameters = the 16/256-row tables "
            f"({tables:,}, {100 * tables / byte_table:.1f}% of the byte table) + the conditioner's projections "
            f"({projections:,}, {100 * projections / byte_table:.1f}%); the seed's \"about 6% extra embedding "
            'parameters" counts a 16-row table alone.'
        )
    return notes


def render_png(report: dict[str, Any]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = sorted({k for r in report["runs"].values() for k in r["val_curves"] if k.startswith("val/bpb")})
    fig, axes = plt.subplots(1, max(1, len(metrics)), figsize=(4.5 * max(1, len(metrics)), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for v in report["variants"]:
            curves = [r["val_curves"].get(metric, []) for r in report["runs"].values() if r["variant"] == v]
            steps = sorted({int(s) for c in curves for s, _ in c})
            if not steps:
                continue
            by_step = [[dict(map(tuple, c)).get(s) for c in curves] for s in steps]
            mean = [statistics.fmean([x for x in vals if x is not None]) for vals in by_step]
            low = [min(x for x in vals if x is not None) for vals in by_step]
            high = [max(x for x in vals if x is not None) for vals in by_step]
            (line,) = ax.plot(steps, mean, marker="o", ms=3, label=v)
            ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.2)
        ax.set_title(metric)
        ax.set_xlabel("step")
        ax.set_ylabel("bits per byte")
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.suptitle(f"Byte model validation (preset {report['preset_name']}; mean over seeds, band min–max)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def main(argv: list[str]) -> None:
    """``lightning-film reproduce byte ...``"""
    parser = CommandParser(prog="lightning-film reproduce byte", description=__doc__.split("\n\n")[0])
    add_common_options(parser, PRESETS, "benchmarks/results/byte")
    parser.add_argument("--config", type=Path, default=CONFIG, help="the ByteLM config all variants start from")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, help="override the preset's seeds")
    parser.add_argument("--max-steps", type=int, help="override the preset's steps per run")
    parser.add_argument("--set", dest="overrides", action="append", type=parse_override, default=[],
                        metavar="KEY=VALUE", help="a config override for every run, e.g. model.dim=64 (repeatable)")  # fmt: skip
    parser.add_argument("--runs", type=Path, default=Path("runs/reproduce/byte"), help="where the runs live")
    parser.add_argument("--repeats", type=int, help="timing repeats (default: the preset's)")
    parser.add_argument("--render-only", action="store_true",
                        help="re-render --out's results.md/json from the runs stored in its results.json; trains nothing")  # fmt: skip
    args = parser.parse_args(argv)
    if args.render_only:
        print(rerender(results_folder(args.out, args.runs, args.preset), analyse, render_markdown))
        return
    if not args.config.is_file():
        raise ValueError(f"config {str(args.config)!r} does not exist; run from the repository root or pass --config")
    preset = PRESETS[args.preset]
    if args.max_steps is not None or args.repeats is not None:
        changes = {k: v for k, v in (("max_steps", args.max_steps), ("repeats", args.repeats)) if v is not None}
        if any(v < 1 for v in changes.values()):
            raise ValueError(f"--max-steps and --repeats must be >= 1, got {changes}")
        preset = Preset(
            **{**asdict(preset), **changes, "val_every": min(preset.val_every, changes.get("max_steps", 10**9))}
        )
    seeds = tuple(args.seeds) if args.seeds else preset.seeds
    variants = tuple(args.variants)
    runs = build_runs(preset, args.config, variants, seeds, args.overrides)
    print_plan(f"byte table, preset {args.preset}", runs, args.runs / args.preset)
    if args.plan:
        return
    out = make_folder(results_folder(args.out, args.runs, args.preset), "--out")
    make_folder(args.runs / args.preset, "--runs")
    model_args, data_args = config_parts(args.config, args.overrides)

    start = time.perf_counter()
    results = execute_all(runs, args.runs / args.preset)
    print(f"timing {', '.join(variants)} interleaved ({preset.repeats} repeats) ...")
    speed = throughput(model_args, data_args, variants, preset.repeats, preset.steps_per_repeat)
    facts = model_facts(model_args, variants)
    summary = summarize(results, variants)
    report = analyse(
        {
            **report_basics("byte", argv, args, preset, seeds, machine_info()),
            "variants": list(variants),
            "config": str(args.config),
            "model": model_args,
            "data": data_args,
            "summary": summary,
            "facts": facts,
            "cost_notes": cost_notes(facts, model_args),
            "throughput": speed,
            "runs": results,
            "wall_s": time.perf_counter() - start,
        }
    )
    write_atomic(out / "results.json", json.dumps(report, indent=1, default=str) + "\n")
    write_atomic(out / "results.md", render_markdown(report))
    write_atomic(out / "val_curves.png", render_png(report))
    print(render_markdown(report))
    print(f"wrote {out / 'results.md'}, {out / 'results.json'}, {out / 'val_curves.png'}", file=sys.stderr)
