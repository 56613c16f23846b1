"""The quant table's summary: scores over seeds per model, conditioner and variant, the PTQ and QAT
arms side by side, the paired comparisons, and the verdict on the seed's film_tanh claim."""

from __future__ import annotations

import statistics
from typing import Any

from lightning_film.reproduce.quant_specs import (
    CONDITIONERS,
    QAT_WEIGHTS,
    SPECS,
    MetricSpec,
    change,
    change_digits,
    change_unit,
)
from lightning_film.reproduce.stats import compare, fmt_ci, fmt_p, holm, paired

__all__ = ["add_scores", "analyse", "claim_verdict", "paired_comparisons", "summarize"]


def add_scores(variants: dict[str, Any], scores: dict[str, dict[str, float]], metrics: tuple[MetricSpec, ...]) -> None:
    """Append one checkpoint's ``scores`` (variant -> score key -> value) to ``variants``: variant -> key
    -> {"values": [...], "changes": [...]}, the change against this checkpoint's float, for ``metrics``."""
    by_key = {m.key: m for m in metrics}
    for label, s in scores.items():
        cells = variants.setdefault(label, {})
        for k, value in s.items():
            cell = cells.setdefault(k, {"values": [], "changes": []})
            cell["values"].append(value)
            if k in by_key:
                cell["changes"].append(change(by_key[k], value, scores["float"][k]))


def summarize(assessments: dict[str, dict], runs: dict[str, dict], models: tuple[str, ...]) -> dict[str, Any]:
    """``table``: model -> conditioner -> variant -> score key -> {"values": over seeds, "changes": vs that
    seed's float (for the model's metrics)}; ``qat``: model -> arm (``ptq``, ``qat``) -> ``float`` /
    ``int4`` -> metric -> values over seeds (empty for a model without a QAT arm)."""
    table: dict[str, Any] = {m: {} for m in models}
    qat: dict[str, Any] = {m: {} for m in models}
    for key, a in assessments.items():
        run, scores = runs[key], a["scores"]
        model, metrics = run["model"], SPECS[run["model"]].metrics
        if "qat" not in run:
            add_scores(table[model].setdefault(run["conditioner"], {}), scores, metrics)
            continue
        arms = {"ptq": assessments[f"{model}/film/seed{run['seed']}"]["scores"], "qat": scores}
        for arm, s in arms.items():
            for part in ("float", QAT_WEIGHTS):
                for m in metrics:
                    qat[model].setdefault(arm, {}).setdefault(part, {}).setdefault(m.key, []).append(s[part][m.key])
    return {"table": table, "qat": qat}


def claim_verdict(summary: dict[str, Any], models: tuple[str, ...], seeds: int) -> list[str]:
    """film vs film_tanh at ``int4_film`` and ``int4``: what quantization costs each (> 0: worse than its
    own float), which loses less, and whether a paired t-test over the seeds (Holm-adjusted over these
    comparisons) establishes the gap: the verdict, then a table."""
    found: list[tuple[str, MetricSpec, str, dict, dict]] = []
    for model in models:
        table = summary["table"][model]
        if not all(c in table for c in CONDITIONERS):
            continue
        for metric in SPECS[model].metrics:
            sign = 1 if metric.lower_is_better else -1
            for scheme in ("int4_film", "int4"):
                cost = {c: [sign * x for x in table[c][scheme][metric.key]["changes"]] for c in CONDITIONERS}
                test = paired(dict(enumerate(cost["film"])), dict(enumerate(cost["film_tanh"])))  # film - film_tanh
                found.append((model, metric, scheme, cost, test))
    if not found:
        return []
    holm([t for *_, t in found])
    rows: list[str] = []
    hints, firm = {"film": 0, "film_tanh": 0, "neither": 0}, {"film": 0, "film_tanh": 0, "neither": 0}
    for model, metric, scheme, cost, test in found:
        digits, unit, table = change_digits(metric), change_unit(metric), summary["table"][model]
        less = "film_tanh" if test["diff"] > 0 else "film" if test["diff"] < 0 else "neither"
        hints[less] += 1
        firm[less] += test["verdict"] == "established"
        judged = "one seed: no test" if test["p"] is None else f"{test['verdict']} (Holm p {fmt_p(test['p_holm'])})"
        cells = []
        for c in CONDITIONERS:
            before, after = (statistics.fmean(table[c][v][metric.key]["values"]) for v in ("float", scheme))
            cells += [f"{before:.{metric.digits}f} → {after:.{metric.digits}f}", fmt_ci(cost[c], digits, True, unit)]
        rows.append(f"| {model} | {metric.name} | {scheme} | " + " | ".join(cells) + f" | {less} | {judged} |")
    total, one = len(rows), seeds < 2 or all(t["p"] is None for *_, t in found)
    if one:
        head = (
            "**Verdict on the seed's claim (a bounded gamma survives low bits): not established by this preset.** "
            f"With one seed, film_tanh lost less in {hints['film_tanh']} of {total} comparisons and film in "
            f"{hints['film']}: single measurements, their direction a hint at most (the `full` preset runs 3 seeds)."
        )
    elif firm["film_tanh"] and not firm["film"]:
        head = (
            f"**Verdict on the seed's claim: supported**: film_tanh loses less, established by the paired test, "
            f"in {firm['film_tanh']} of {total} comparisons, film in none."
        )
    elif firm["film"] and not firm["film_tanh"]:
        head = (
            f"**Verdict on the seed's claim: contradicted**: film loses less, established by the paired test, "
            f"in {firm['film']} of {total} comparisons, film_tanh in none."
        )
    elif firm["film"] or firm["film_tanh"]:
        head = (
            f"**Verdict on the seed's claim: mixed**: established by the paired test, film_tanh loses less in "
            f"{firm['film_tanh']} of {total} comparisons, film in {firm['film']}."
        )
    else:
        head = (
            f"**Verdict on the seed's claim: not shown**: the paired test establishes no gap (on average "
            f"film_tanh lost less in {hints['film_tanh']} of {total} comparisons, film in {hints['film']})."
        )
    return [
        head,
        "",
        "| model | metric | scheme | film: float → quantized | film: cost | film_tanh: float → quantized | "
        "film_tanh: cost | loses less | paired test of the costs |",
        "|---|---|---|---:|---:|---:|---:|---|---|",
        *rows,
        "",
        "**cost**: the quantized model against its own float (% for bpb and loss, a difference for PSNR and KID), "
        "signed so that > 0 is worse, mean ± 95% CI half-width over seeds; `int4_film` puts only the conditioner's "
        "projections (FiLM's gamma and beta) at int4, so it tests the claim most directly; `int4` quantizes "
        "everything. The paired test compares the two costs seed by seed, Holm-adjusted over this table's rows.",
    ]


def paired_comparisons(summary: dict[str, Any], models: list[str], seeds: list[int]) -> list[dict[str, Any]]:
    """Per model, metric and conditioner: every quantized variant against the same runs' float; and the
    QAT arm's int4 against PTQ's int4. Paired by seed, Holm-adjusted over the whole table."""
    found = []
    for model in models:
        for m in SPECS[model].metrics:
            label = f"{model} {m.name}"
            for cond, variants in summary["table"][model].items():
                rows = {f"{cond} {v}": dict(zip(seeds, c[m.key]["values"])) for v, c in variants.items()}
                found += compare(rows, reference=f"{cond} float", metric=label)
            arms = summary["qat"][model]
            if arms:
                rows = {
                    f"{arm} {QAT_WEIGHTS}": dict(zip(seeds, arms[arm][QAT_WEIGHTS][m.key])) for arm in ("qat", "ptq")
                }
                found += compare(rows, reference=f"ptq {QAT_WEIGHTS}", metric=label)
    return holm(found)


def analyse(report: dict[str, Any]) -> dict[str, Any]:
    """``report`` with what its summary implies: the claim's verdict and the paired comparisons."""
    models, seeds = report["models"], report["seeds"]
    return {
        **report,
        "verdict": claim_verdict(report["summary"], tuple(models), len(seeds)),
        "stats": {"paired": paired_comparisons(report["summary"], models, seeds)},
    }
