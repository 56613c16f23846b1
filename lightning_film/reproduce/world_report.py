"""The world tables' reports: what each row is, its metrics over seeds (mean ± 95% CI), the paired
comparisons, and the verdicts computed from them (:mod:`lightning_film.reproduce.stats`).

Controllability columns come from the world model's ``test`` stage when a run logged them
(``test/agent_acc``: the agent placed right with the true action; ``test/agent_acc_wrong``: sampled
with a wrong action; ``test/rollout_agent_acc``: after the last rollout step; ``test/psnr_copy``:
copying the last context frame); runs made before these metrics existed show "–".
"""

from __future__ import annotations

import io
import statistics
from typing import Any

from lightning_film.reproduce.report import header, mean_std
from lightning_film.reproduce.stats import compare, fmt_ci, fmt_p, holm, interval, paired, paired_section
from lightning_film.reproduce.world_rows import (
    BY_KEY,
    DIT_FID,
    KID_ROWS,
    METRICS,
    NANOWM,
    NANOWM_NOTE,
    NONE_ROW,
    PAIRED,
    PRETRAIN,
    PRETRAIN_HALF,
)

__all__ = [
    "analyse",
    "kid_verdict",
    "none_verdict",
    "per_seed",
    "render_conditioning",
    "render_kid",
    "render_png",
    "render_recipe",
]


def _values(test: dict[str, float]) -> dict[str, float]:
    """A run's test metrics plus ``psnr_vs_copy`` (its PSNR minus copying the last frame's) when both exist."""
    out = dict(test)
    if "test/psnr" in test and "test/psnr_copy" in test:
        out["psnr_vs_copy"] = test["test/psnr"] - test["test/psnr_copy"]
    return out


def per_seed(runs: dict[str, dict]) -> dict[str, dict[str, dict[int, float]]]:
    """metric -> row -> seed -> value, for the metrics each run has."""
    table: dict[str, dict[str, dict[int, float]]] = {}
    for result in runs.values():
        for key, value in _values(result["test"]).items():
            table.setdefault(key, {}).setdefault(result["row"], {})[result["seed"]] = value
    return table


def none_verdict(values: dict[str, dict[str, dict[int, float]]], none: str = NONE_ROW) -> dict[str, Any]:
    """Does ``none`` come out clearly worst? On the main metric (agent accuracy when logged, else KID),
    every other row against ``none``, paired over seeds, Holm over those pairs: established and better,
    for every row. {"metric", "clear", "comparisons", "sentence"}."""
    key = "test/agent_acc" if values.get("test/agent_acc", {}).get(none) else "test/kid_mean"
    metric = BY_KEY[key]
    tests = holm(compare(values.get(key, {}), reference=none, metric=key))
    better = [c for c in tests if c["verdict"] == "established" and (c["diff"] > 0) == metric.higher_is_better]
    clear = bool(tests) and len(better) == len(tests)
    if clear:
        worst_p = max(c["p_holm"] for c in tests)
        sentence = (
            f"**`none` comes out clearly worst** on {metric.name}: each of the {len(tests)} other rows beats "
            f"it, established by the paired test over the seeds (Holm over these {len(tests)} pairs, largest "
            f"adjusted p {fmt_p(worst_p)}; the paired table below adjusts over all its comparisons, a larger "
            f"family, so there the same pairs can read not established)."
        )
    else:
        untested = sum(c["p"] is None for c in tests)
        why = f"; {untested} without a test (fewer than 2 shared seeds)" if untested else ""
        sentence = (
            f"**The table answers nothing** on whether conditioning matters: `none` is not established "
            f"worst on {metric.name} (the paired test, Holm over {len(tests)} pairs, has {len(better)} of "
            f"{len(tests)} rows clearly better{why})."
        )
    return {"metric": key, "clear": clear, "comparisons": tests, "sentence": sentence}


def analyse(report: dict[str, Any], reference: str) -> dict[str, Any]:
    """``report`` with ``stats``: per metric and row the mean and 95% CI; every row against ``reference``
    on :data:`PAIRED` metrics (Holm over the table); in world-conditioning the none-is-worst check."""
    values = per_seed(report["runs"])
    rows = {k: {r: interval(list(s.values())) for r, s in by_row.items()} for k, by_row in values.items()}
    paired = holm([c for k in PAIRED if k in values for c in compare(values[k], reference=reference, metric=k)])
    stats: dict[str, Any] = {"rows": rows, "paired": paired}
    if reference == NONE_ROW:
        stats["none_worst"] = none_verdict(values)
    return {**report, "stats": stats}


def _cells(values: dict[str, dict[str, dict[int, float]]], row: str) -> list[str]:
    seeds = max((len(values[m.key].get(row, {})) for m in METRICS if m.key in values), default=0)
    return [str(seeds)] + [fmt_ci(list(values.get(m.key, {}).get(row, {}).values()), m.digits) for m in METRICS]


def _baseline_row(report: dict[str, Any], values: dict[str, dict], first: list[str], last: list[str]) -> str:
    """Copying the last context frame: its KID and PSNR (scored here), its agent accuracy (the runs')."""
    b = report.get("baseline")
    if not b:
        return ""
    copy = [v for by_seed in values.get("test/agent_acc_copy", {}).values() for v in by_seed.values()]
    by_key = {
        "test/kid_mean": f"{b['kid_mean']:.4f} ± {b['kid_std']:.4f} (subsets)",
        "test/psnr": f"{b['psnr']:.2f}",
        "test/agent_acc": f"{statistics.fmean(copy):.3f}" if copy else "–",
    }
    cells = ["copy the last context frame (no model)", *first, "–", *(by_key.get(m.key, "–") for m in METRICS), *last]
    return "| " + " | ".join(cells) + " |"


def _notes(report: dict[str, Any], values: dict[str, dict]) -> list[str]:
    lines = [
        "- Cells: mean ± 95% CI half-width over the seeds (Student t); a row of one seed shows its value alone "
        "(one seed has no interval). PSNR − copy: each run's PSNR minus copying the last context frame on the "
        "same windows (`test/psnr_copy`), > 0: better than predicting no change. Agent acc: the agent drawn in "
        "the right cell of the sampled frame with the true action; with a wrong action (a model that obeys the "
        "action scores low there); after the last rollout step. Runs that did not log a metric show –."
    ]
    if report.get("baseline"):
        lines.append(
            "- Baseline: the last context frame given as the next one, scored on the same test windows, features "
            "and KID subsets. Its frames are real frames, so its KID is near 0 and no generator beats it there; "
            "KID says how real the generated frames look, PSNR how close they are to what happened"
            + ("; its agent acc is the runs' `test/agent_acc_copy`." if "test/agent_acc_copy" in values else ".")
        )
    return lines


def _digits_names() -> tuple[dict[str, int], dict[str, str]]:
    return {m.key: m.digits for m in METRICS}, {m.key: m.name for m in METRICS}


def _ranking(means: dict[str, float]) -> str:
    return ", ".join(sorted(means, key=means.get))


def _head(report: dict[str, Any], title: str, budget: str, first: str, extra: list[str]) -> list[str]:
    columns = ["seeds", *(m.name for m in METRICS), *extra]
    return [
        f"# World model: {title} (preset `{report['preset_name']}`)",
        "",
        *header(report),
        budget,
        "",
        f"| {first} | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]


def render_kid(report: dict[str, Any]) -> str:
    p, values = report["preset"], per_seed(report["runs"])
    budget = (
        f"- Budget: {p['max_steps']} conditional-training steps per row; `world_filmcond_pre` starts from an "
        f"unconditional run of {p['pretrain_steps']} steps (more steps in total), `world_filmcond_pre_half` from one "
        f"of {p['max_steps'] // 2} and finetunes {p['max_steps'] - p['max_steps'] // 2} (the same total); seeds "
        f"{report['seeds']}; KID over {p['eval_samples']} held-out test frames (subset size {p['kid_subset_size']}), "
        f"{p['sample_steps']} sampling steps (preset values; the overrides below win); overrides "
        f"{report['overrides'] or 'none'}"
    )
    lines = _head(report, "the seed's KID table", budget, "run | normalization | conditioning", ["KID (seed's data)"])
    lines[-1] = "|---|---|---|" + lines[-1][5:]
    for row in (*KID_ROWS, PRETRAIN, PRETRAIN_HALF):
        seed_kid = f"{row.seed_kid:.3f}" if row.seed_kid is not None else "–"
        cells = [row.name, row.normalization, row.conditioning, *_cells(values, row.name), seed_kid]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [_baseline_row(report, values, ["–", "–"], ["–"]), "", *_notes(report, values), *report["verdict"], ""]
    lines += [*paired_section(report["stats"]["paired"], *_digits_names())]
    return "\n".join([*lines, "Per-run metrics, curves and commands: `results.json`; plot: `kid.png`.", ""])


def kid_verdict(kid: dict[str, list[float]]) -> list[str]:
    ours = {r.name: statistics.fmean(kid[r.name]) for r in KID_ROWS if kid.get(r.name) and r.seed_kid is not None}
    seed = {r.name: r.seed_kid for r in KID_ROWS if r.name in ours}
    if len(ours) < 2:
        return []
    agree = _ranking(ours) == _ranking(seed)
    return [
        f"- Our ordering of the seed's rows (best KID first): {_ranking(ours)}.",
        f"- The seed's ordering: {_ranking(seed)}.",
        (
            "- The orderings of the means agree"
            if agree
            else "- The orderings differ; the seed's numbers come from its own data and budget, ours from the built-in "
            "world at this preset's budget"
        )
        + f" ({min(len(kid[r]) for r in ours)}-{max(len(kid[r]) for r in ours)} seeds per row): the paired "
        "comparisons below say which of our gaps the seeds establish; an ordering of unestablished gaps is noise.",
    ]


def _references(name: str) -> list[str]:
    norm, _, cond = name.partition(" + ")
    dit = f"{DIT_FID[cond]:.2f}" if cond in DIT_FID and norm == "rmsnorm" else "–"
    nano = f"{NANOWM[cond][0]:.2f} / {NANOWM[cond][1]:.2f}" if cond in NANOWM and norm == "rmsnorm" else "–"
    return [dit, nano]


def _orderings(
    values: dict[str, dict], key: str, reference: dict[str, float], who: str, ours_by: str, higher: bool
) -> list[str]:
    """Our ordering of ``reference``'s rows beside theirs, and how many of our neighbouring gaps the
    seeds establish (paired test, Holm over those gaps): an ordering of unestablished gaps is noise."""
    seeds = {c: values[key][f"rmsnorm + {c}"] for c in reference if values.get(key, {}).get(f"rmsnorm + {c}")}
    if len(seeds) < len(reference):
        return []
    sign = -1 if higher else 1
    theirs = _ranking({c: sign * v for c, v in reference.items()})
    ours = {c: sign * statistics.fmean(s.values()) for c, s in seeds.items()}
    order = sorted(ours, key=ours.get)
    gaps = holm([{"a": a, "b": b, **paired(seeds[a], seeds[b])} for a, b in zip(order, order[1:])])
    shown = ", ".join(f"{g['a']} vs {g['b']} {'established' if g['verdict'] == 'established' else 'not'}" for g in gaps)
    return [
        f"- {who} orders its {len(reference)} (best first): {theirs}; {ours_by} orders the same "
        f"{len(reference)}: {_ranking(ours)} — {'the same' if theirs == _ranking(ours) else 'a different'} "
        f"ordering of the means; of our {len(gaps)} neighbouring gaps the seeds establish "
        f"{sum(g['verdict'] == 'established' for g in gaps)} ({shown}; paired t, Holm)."
    ]


def render_conditioning(report: dict[str, Any]) -> str:
    p, costs, values = report["preset"], report["costs"], per_seed(report["runs"])
    kid = values.get("test/kid_mean", {})
    rows = sorted(costs, key=lambda r: statistics.fmean(kid[r].values()) if kid.get(r) else float("inf"))
    budget = (
        f"- Budget: {p['max_steps']} steps per row from `configs/world/filmcond.yaml`; seeds {report['seeds']}; "
        f"KID over {p['eval_samples']} test frames (subset {p['kid_subset_size']}), {p['sample_steps']} sampling "
        f"steps; overrides {report['overrides'] or 'none'}\n"
        "- Step time: loss + backward + fused AdamW (the models' optimizer) on one batch of random frames (timing "
        f"does not depend on content), all rows interleaved, {p['repeats']} repeats x {p['steps_per_repeat']} steps; "
        "ratio to rmsnorm + none per repeat (median, IQR). GFLOPs: one denoiser forward at batch 1 (`FlopCounterMode`)."
    )
    extra = ["params", "forward GFLOPs", "step (ms)", "step vs none", "DiT FID-50K", "NanoWM PSNR / FID"]
    lines = _head(report, "conditioners and normalizers at equal budget", budget, "row (best KID first)", extra)
    for name in rows:
        c, r = costs[name], costs[name]["step_ratio_vs_none"]
        cost = [
            f"{c['params']:,}",
            f"{c['forward_gflops']:.3f}",
            f"{c['step_ms']:.1f}",
            f"{r['median']:.3f} ({r['q1']:.3f}–{r['q3']:.3f})",
        ]
        lines.append("| " + " | ".join([name, *_cells(values, name), *cost, *_references(name)]) + " |")
    lines += [_baseline_row(report, values, [], ["–"] * len(extra)), "", *_notes(report, values)]
    lines += [f"- Ablation check: {report['stats']['none_worst']['sentence']}"]
    lines += _orderings(values, "test/kid_mean", DIT_FID, "DiT (ImageNet 256, FID-50K)", "our KID", False)
    lines += [f"- Reference: {NANOWM_NOTE}."]
    lines += _orderings(
        values, "test/psnr", {c: v[0] for c, v in NANOWM.items()}, "NanoWM (RT-1 PSNR)", "our PSNR", True
    )
    lines += ["", *paired_section(report["stats"]["paired"], *_digits_names())]
    return "\n".join([*lines, "Per-run metrics and commands: `results.json`; plot: `kid.png`.", ""])


def render_recipe(report: dict[str, Any]) -> str:
    """The recipe table: one row per change to the shipped config, each against ``shipped``."""
    p, values = report["preset"], per_seed(report["runs"])
    budget = (
        f"- Budget: {p['max_steps']} steps per row from `configs/world/filmcond.yaml` (a row's own arguments win); "
        f"seeds {report['seeds']}; {p['eval_samples']} test windows (KID subset {p['kid_subset_size']}), "
        f"{p['sample_steps']} sampling steps; overrides {report['overrides'] or 'none'}"
    )
    lines = _head(report, "the training recipe, one change at a time", budget, "row | change", [])
    lines[-1] = "|---|---|" + lines[-1][5:]
    for row in report["rows"]:
        lines.append("| " + " | ".join([row["name"], row["change"], *_cells(values, row["name"])]) + " |")
    lines += [_baseline_row(report, values, ["–"], []), "", *_notes(report, values), ""]
    lines += [*paired_section(report["stats"]["paired"], *_digits_names())]
    return "\n".join([*lines, "Per-run metrics and commands: `results.json`.", ""])


def render_png(kid: dict[str, list[float]], order: list[str], title: str, reference: dict[str, float] | None) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in order if kid.get(n)]
    means = [mean_std(kid[n])[0] for n in names]
    stds = [mean_std(kid[n])[1] for n in names]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(names) + 2), 4))
    x = range(len(names))
    ax.bar(x, means, yerr=stds, capsize=4, color="tab:blue", label="ours (mean ± std over seeds)")
    if reference:
        ref = [reference.get(n) for n in names]
        ax.scatter(
            [i for i, r in zip(x, ref) if r is not None],
            [r for r in ref if r is not None],
            color="tab:red",
            marker="D",
            zorder=3,
            label="seed's KID (its own data)",
        )
        ax.legend()
    ax.set_xticks(list(x), names, rotation=30, ha="right")
    ax.set_ylabel("KID (lower is better)")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()
