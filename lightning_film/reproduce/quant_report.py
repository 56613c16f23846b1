"""The quant table's markdown and plot, and the tables it is made of (also used by
``benchmarks/quantization.py`` for one checkpoint)."""

from __future__ import annotations

import io
from typing import Any

from lightning_film.reproduce.quant_specs import (
    QAT_WEIGHTS,
    REFERENCE,
    SCALE_BOUND,
    SPECS,
    VARIANTS,
    MetricSpec,
    change,
    change_digits,
    change_unit,
)
from lightning_film.reproduce.report import header, mean_std
from lightning_film.reproduce.stats import fmt_ci, paired_section

__all__ = [
    "SPEED_NOTE",
    "coreml_table",
    "corpus_table",
    "qat_section",
    "render_markdown",
    "render_png",
    "speed_table",
    "variant_table",
]


def _mb(n: float) -> str:
    return f"{n / 1e6:.3f}"


def _roles(schemes: dict[str, Any], label: str) -> str:
    if label == "float":
        return "fp32"
    if label == REFERENCE:
        return "every Linear: int8 weights + dynamic int8 activations"
    roles = schemes[label]["roles"]
    return ", ".join(f"{k} {v}" for k, v in roles.items())


def variant_table(
    metrics: tuple[MetricSpec, ...], table: dict[str, Any], sizes: dict[str, Any], schemes: dict[str, Any]
) -> list[str]:
    """Rows (conditioner, variant) of ``table`` (conditioner -> :func:`add_scores`' variants): each
    metric with its change against the same checkpoint's float, and the sizes of ``sizes``."""
    lines = [
        "| conditioner | variant | roles | "
        + " | ".join(f"{m.name} | vs float" for m in metrics)
        + " | stored MB | packed MB |",
        "|---|---|---|" + "---:|---:|" * len(metrics) + "---:|---:|",
    ]
    for cond, variants in table.items():
        for label, cells in variants.items():
            row = [cond, label, _roles(schemes, label)]
            for m in metrics:
                c = cells[m.key]
                row += [
                    fmt_ci(c["values"], m.digits),
                    "–" if label == "float" else fmt_ci(c["changes"], change_digits(m), True, change_unit(m)),
                ]
            size = sizes.get(label)
            row += [_mb(size["stored"]), _mb(size["packed"])] if size else ["–", "–"]
            lines.append("| " + " | ".join(row) + " |")
    return lines


def corpus_table(table: dict[str, Any]) -> list[str]:
    """Byte model: test bpb per corpus, per (conditioner, variant), mean over seeds."""
    keys = sorted({k for variants in table.values() for cells in variants.values() for k in cells if k.count("/") == 2})
    if len(keys) < 2:  # one corpus: the main table says it all
        return []
    lines = [
        "| conditioner | variant | " + " | ".join(k.split("/", 2)[2] for k in keys) + " |",
        "|---|---|" + "---:|" * len(keys),
    ]
    for cond, variants in table.items():
        for label, cells in variants.items():
            lines.append(f"| {cond} | {label} | " + " | ".join(fmt_ci(cells[k]["values"], 4) for k in keys) + " |")
    return ["Test bpb per corpus:", "", *lines, ""]


def speed_table(speed: dict[str, Any]) -> list[str]:
    """Forward time ratio to float per variant and batch: median (IQR; median ms)."""
    shapes = list(speed)
    labels = list(next(iter(speed.values()))["ratio_to_float"])
    lines = [
        "| variant | " + " | ".join(f"{s}: ratio (IQR; ms)" for s in shapes) + " |",
        "|---|" + "---:|" * len(shapes),
    ]
    for label in labels:
        cells = []
        for s in shapes:
            r, ms = speed[s]["ratio_to_float"][label], 1e3 * speed[s]["median_s"][label]
            cells.append(
                f"1 ({ms:.2f} ms)"
                if label == "float"
                else f"{r['median']:.2f} ({r['q1']:.2f}–{r['q3']:.2f}; {ms:.2f} ms)"
            )
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def coreml_table(packages: dict[str, Any], first: str = "compression") -> list[str]:
    """Package size, weight storage and op count per compression."""
    lines = [
        f"| {first} | package MB | weights MB | weight storage | ops | warnings |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for name, c in packages.items():
        storage = ", ".join(f"{k} {v}" for k, v in c["weight_storage"].items())
        lines.append(
            f"| {name} | {_mb(c['size_bytes']['total'])} | {_mb(c['size_bytes']['weights'])} | {storage} | "
            f"{c['op_count']} | {len(c['warnings'])} |"
        )
    return lines


SPEED_NOTE = (
    "Weight-only torchao variants (`IntxWeightOnlyConfig`, torchao 0.18) dequantize the whole weight at every "
    "call and then run the float matmul (no fused low-bit CPU kernel on x86), so on this CPU they save memory, "
    "not time; `int8_dyn` quantizes activations too and runs int8 matmuls. The speed the int4/int8 formats are "
    "for is the Neural Engine's, which cannot be measured on Linux."
)


def qat_section(report: dict[str, Any]) -> list[str]:
    """PTQ vs QAT per model and metric: each arm's float weights, its int4 model, and the changes."""
    models = [m for m in report["models"] if report["summary"]["qat"][m]]
    if not models:
        return []
    lines = [
        f"## PTQ vs QAT at {QAT_WEIGHTS}",
        "",
        "`ptq`: the `film` run, float to the end, then int4 post-training quantization. `qat`: the same run's "
        "last steps again from its checkpoint, with int4 fake quantization, then converted (torchao's convert "
        "step: the same int4 per-group quantization of the QAT-trained weights). Same data, steps and "
        "learning rates; the float column scores each arm's weights unquantized.",
        "",
        "| model | arm | fake-quantized steps | metric | float weights | int4 | int4 vs its float | int4 vs ptq's float |",
        "|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for model in models:
        arms = report["summary"]["qat"][model]
        for arm, parts in arms.items():
            steps = report["preset"][model]["qat_steps"] if arm != "ptq" else 0
            for m in SPECS[model].metrics:
                own, quantized, ptq = parts["float"][m.key], parts[QAT_WEIGHTS][m.key], arms["ptq"]["float"][m.key]
                digits, unit = change_digits(m), change_unit(m)
                vs_own = fmt_ci([change(m, a, b) for a, b in zip(quantized, own)], digits, True, unit)
                vs_ptq = fmt_ci([change(m, a, b) for a, b in zip(quantized, ptq)], digits, True, unit)
                lines.append(
                    f"| {model} | {arm} | {steps} | {m.name} | {fmt_ci(own, m.digits)} | "
                    f"{fmt_ci(quantized, m.digits)} | {vs_own} | {vs_ptq} |"
                )
    return [*lines, ""]


def render_markdown(report: dict[str, Any]) -> str:
    p, models = report["preset"], report["models"]
    budgets = "; ".join(
        f"{m}: {p[m]['steps']} steps"
        + (f", QAT arm = the last {p[m]['qat_steps']} again with int4 fake quantization" if p[m]["qat_steps"] else "")
        for m in models
    )
    lines = [
        f"# Quantization of both models: metric damage, CPU speed, Core ML size (preset `{report['preset_name']}`)",
        "",
        *header(report),
        f"- Budget per run: {budgets}; seeds {report['seeds']}; configs "
        + ", ".join(f"`{report['configs'][m]}`" for m in models)
        + f"; overrides {report['overrides'] or 'none'}",
        f"- torchao {report['machine'].get('torchao')}, coremltools {report['machine'].get('coremltools')}; int4 "
        f"groups of {report['group_size']} (a row they do not divide: the largest common divisor). Every variant "
        "is scored on the whole test split (world: KID and PSNR over the first `max_eval_samples` test windows; "
        "the test loss covers every test window and is the least noisy world metric). Test settings: "
        + "; ".join(
            f"{m}: " + ", ".join(f"{k} {v}" for k, v in p[m]["test_settings"]) for m in models if p[m]["test_settings"]
        )
        + " (the preset's; overrides replace them).",
        "- Float scores: each run's own `lightning-film test`; the quantized copies are scored here the same way "
        "(a silent Trainer's `test` on the checkpoint's own data settings; for the float checkpoint this gives the "
        "same numbers, tested).",
        "",
    ]
    for model in models:
        table = report["summary"]["table"][model]
        rows = variant_table(SPECS[model].metrics, table, report["sizes"][model], report["schemes"])
        lines += [f"## {SPECS[model].title}", "", *rows, ""]
        if model == "byte":
            lines += corpus_table(table)
    lines += [
        "**vs float**: against the same run's float model (% for bpb and loss; a difference for PSNR and KID), "
        f"mean ± 95% CI half-width over the {len(report['seeds'])} seed(s) (Student t; one seed: the value alone, "
        "no interval). **stored**: `torch.save(state_dict)` bytes (torchao keeps int4 unpacked in int8 "
        "on CPU); **packed**: what the bit widths imply (bits per weight + one fp16 scale per group or channel), "
        "which is what Core ML reaches below.",
        "",
        f"## film vs film_tanh at int4: does a bounded gamma survive low bits? (film_tanh: gamma = 1 + "
        f"{SCALE_BOUND} tanh(s), in ({1 - SCALE_BOUND}, {1 + SCALE_BOUND}); film: gamma = 1 + s, unbounded)",
        "",
        *report["verdict"],
        "",
    ]
    lines += qat_section(report)
    digits = {f"{model} {m.name}": m.digits for model in models for m in SPECS[model].metrics}
    lines += paired_section(report["stats"]["paired"], digits)
    lines += ["## CPU inference speed (forward time as a ratio to float; > 1 is slower)", ""]
    for model in models:
        speed = report["speed"].get(model)
        if speed:
            shapes = "; ".join(
                f"{s}: " + ", ".join(f"{k} {tuple(v)}" for k, v in t["inputs"].items()) for s, t in speed.items()
            )
            lines += [f"**{model}** ({shapes})", "", *speed_table(speed), ""]
    lines += [
        f"Timing: the variants side by side, {p['repeats']} repeats x {p['steps_per_repeat']} forwards each, "
        "interleaved round-robin after a warm-up; a ratio is against float in the same repeat (median, IQR). "
        "**CPU timings on a shared machine: read the ratios, not the milliseconds.** " + SPEED_NOTE,
        "",
        "## Core ML packages (float `film` weights, fp16 compute, CPU_AND_NE, iOS18; compression per role)",
        "",
    ]
    for model in models:
        if report["coreml"].get(model):
            lines += [f"**{model}**", "", *coreml_table(report["coreml"][model]), ""]
    lines += [
        "Packages are converted, saved and read back; Core ML cannot run them on Linux. Their paths, op "
        "histograms and warnings: `results.json`. Plot: `quant.png`.",
        "",
    ]
    return "\n".join(lines)


def render_png(report: dict[str, Any]) -> bytes:
    """Per model metric: change vs float per variant, film vs film_tanh (mean, std over seeds), with
    the QAT arm's int4 beside int4."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(model, m) for model in report["models"] for m in SPECS[model].metrics]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2), squeeze=False)
    fig.subplots_adjust(top=0.78, wspace=0.35)
    for ax, (model, metric) in zip(axes[0], panels):
        table = report["summary"]["table"][model]
        for i, cond in enumerate(table):
            stats = [mean_std(table[cond][label][metric.key]["changes"]) for label in VARIANTS]
            ax.errorbar(
                [x + 0.06 * i for x in range(len(VARIANTS))],
                [s[0] for s in stats],
                yerr=[s[1] for s in stats],
                marker="o",
                capsize=3,
                label=cond,
            )
        ax.set_xticks(range(len(VARIANTS)), VARIANTS)
        for arm, parts in report["summary"]["qat"][model].items():
            if arm != "ptq" and "film" in table:
                base = table["film"]["float"][metric.key]["values"]
                hurt = [change(metric, a, b) for a, b in zip(parts["int4"][metric.key], base)]
                ax.errorbar(
                    [VARIANTS.index(QAT_WEIGHTS) + 0.12],
                    [mean_std(hurt)[0]],
                    yerr=[mean_std(hurt)[1]],
                    marker="*",
                    ms=11,
                    ls="none",
                    capsize=3,
                    label=f"{arm}, vs film float",
                )
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_title(f"{model}: {metric.name}")
        ax.set_ylabel(
            f"change vs float ({'%' if metric.relative else 'difference'}; "
            f"{'lower' if metric.lower_is_better else 'higher'} is better)"
        )
        ax.grid(alpha=0.3)
    # the panels share their series: one legend for all, under the title
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), bbox_to_anchor=(0.5, 0.93), fontsize=9)
    fig.suptitle(f"torchao quantization damage, film vs film_tanh (preset {report['preset_name']})")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()
