"""The byte table's summary and markdown: test bpb per variant and corpus over seeds (mean ± 95% CI),
the paired comparisons and verdicts, what the nibble path and the accumulator cost, and the plot."""

from __future__ import annotations

import io
import statistics
from typing import Any

from lightning_film.reproduce.report import header
from lightning_film.reproduce.stats import compare, fmt_ci, fmt_p, holm, interval, paired_section

__all__ = ["BASELINE", "analyse", "cost_notes", "per_seed", "render_markdown", "render_png", "summarize", "verdict"]

#: the variant the others are measured against
BASELINE = "byte"
#: a character-level nanoGPT on tiny Shakespeare (1 MB): about 2.1 bits per character (issue 5)
NANOGPT_BITS_PER_CHAR = 2.1


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
    return {
        **report,
        "stats": {"rows": rows, "paired": comparisons},
        "verdict": verdict(rows, comparisons, report["variants"]),
    }


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
