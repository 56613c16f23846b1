"""The tables' statistics (95% CIs over seeds, paired t-tests, Holm) against scipy, and the renderers
on fake run results: no training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lightning_film.reproduce.stats import (
    compare,
    fmt_ci,
    holm,
    interval,
    paired,
    paired_section,
    t_quantile,
    two_sided_p,
)

stats = pytest.importorskip("scipy.stats")
REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("df", [1, 2, 3, 4, 5, 8, 9, 30])
def test_t_quantile_and_p_match_scipy(df: int) -> None:
    assert t_quantile(0.95, df) == pytest.approx(stats.t.ppf(0.975, df), rel=1e-9)
    for t in (0.3, 1.7, 4.2):
        assert two_sided_p(t, df) == pytest.approx(2 * stats.t.sf(t, df), rel=1e-9)


def test_interval_and_paired_match_scipy_on_hand_made_data() -> None:
    a, b = [2.1, 2.5, 1.9, 2.8], [1.8, 2.4, 1.5, 2.2]
    ci = interval(a)
    sem = stats.sem(a)
    assert ci["n"] == 4 and ci["half"] == pytest.approx(stats.t.ppf(0.975, 3) * sem, rel=1e-9)
    got = paired(dict(enumerate(a)), dict(enumerate(b)))
    ref = stats.ttest_rel(a, b)
    assert got["t"] == pytest.approx(ref.statistic) and got["p"] == pytest.approx(ref.pvalue, rel=1e-9)
    diffs = [x - y for x, y in zip(a, b)]
    low, high = stats.t.interval(0.95, 3, loc=sum(diffs) / 4, scale=stats.sem(diffs))
    assert (got["low"], got["high"]) == (pytest.approx(low), pytest.approx(high))
    assert got["verdict"] == ("established" if ref.pvalue < 0.05 else "not established")


def test_only_shared_seeds_are_paired() -> None:
    got = paired({0: 1.0, 1: 2.0, 2: 3.0, 5: 9.0}, {1: 1.5, 2: 2.0, 3: 7.0, 0: 0.5})
    assert got["seeds"] == [0, 1, 2] and got["n"] == 3
    assert got["p"] == pytest.approx(stats.ttest_rel([1.0, 2.0, 3.0], [0.5, 1.5, 2.0]).pvalue)


def test_verdicts_identical_separated_and_one_seed_rows() -> None:
    same = {0: 2.0, 1: 2.3, 2: 1.9}
    assert paired(same, dict(same))["verdict"] == "not established"
    assert paired({0: 2.0, 1: 2.1, 2: 1.9}, {0: 1.0, 1: 1.12, 2: 0.91})["verdict"] == "established"
    noisy = paired({0: 2.0, 1: 2.9, 2: 1.1}, {0: 1.9, 1: 1.0, 2: 2.2})
    assert noisy["verdict"] == "not established" and noisy["low"] < 0 < noisy["high"]
    one = paired({0: 2.0}, {0: 1.0})
    assert one["verdict"] == "n/a" and one["p"] is None and one["half"] is None and one["diff"] == 1.0
    assert interval([2.0])["half"] is None
    assert fmt_ci([2.0]) == "2.000" and fmt_ci([]) == "–"  # one seed: never a fake "± 0"
    assert fmt_ci([1.0, 2.0, 3.0], 2) == f"2.00 ± {stats.t.ppf(0.975, 2) * stats.sem([1, 2, 3]):.2f}"


def test_holm_matches_the_step_down_rule_and_sets_the_verdict() -> None:
    rows = {"a": {0: 1.0, 1: 1.1, 2: 0.9}, "b": {0: 3.0, 1: 3.2, 2: 2.9}, "c": {0: 1.05, 1: 1.0, 2: 1.0}}
    found = holm(compare(rows, reference="a", metric="m"))
    assert [(c["a"], c["b"]) for c in found] == [("b", "a"), ("c", "a")]
    ps = sorted(c["p"] for c in found)
    assert sorted(c["p_holm"] for c in found) == pytest.approx([min(1, 2 * ps[0]), max(min(1, 2 * ps[0]), ps[1])])
    assert [c["verdict"] for c in found] == ["established", "not established"]
    assert len(compare(rows)) == 3  # no reference: every pair
    lines = paired_section(found, 2)
    assert lines[0] == "## Paired comparisons" and "| m | b − a | 3 | +2.03 |" in lines[6]


# -- the renderers, on fake results ---------------------------------------------------------------------
BASICS = {
    "command": "lightning-film reproduce x",
    "date": "d",
    "commit": "abc1234",
    "wall_s": 60.0,
    "machine": {"cpu": "cpu", "cpu_count": 2, "torch": "2", "torch_threads": 2},
    "preset_name": "quick",
    "overrides": [],
}
NEW = {
    "test/agent_acc": 0.8,
    "test/agent_acc_wrong": 0.3,
    "test/agent_acc_copy": 0.4,
    "test/psnr_copy": 15.0,
    "test/rollout_agent_acc": 0.6,
    "test/ssim": 0.5,
    "test/ssim_copy": 0.6,
    "test/x0_psnr": 20.0,
    "test/rollout_psnr": 13.0,
    "test/rollout_psnr_copy": 12.0,
}


def _run(row: str, seed: int, kid: float, psnr: float, new: bool, acc: float = 0.8) -> dict:
    test = {"test/kid_mean": kid, "test/psnr": psnr, **({**NEW, "test/agent_acc": acc} if new else {})}
    return {"row": row, "seed": seed, "test": test}


def _conditioning_report(none_acc: list[float], new: bool = True) -> dict:
    from lightning_film.reproduce.world import PRESETS, analyse_conditioning

    rows = {"rmsnorm + none": none_acc, "rmsnorm + film": [0.80, 0.82, 0.79], "rmsnorm + adaln": [0.70, 0.73, 0.71]}
    runs = {
        f"{r}/seed{s}": _run(r, s, 0.2 + 0.01 * s, 15.0 + 0.1 * s, new, acc)
        for r, accs in rows.items()
        for s, acc in enumerate(accs)
    }
    cost = {
        "params": 1000,
        "forward_gflops": 0.1,
        "step_ms": 80.0,
        "step_ratio_vs_none": {"median": 1.0, "q1": 1.0, "q3": 1.0},
    }
    report = {
        **BASICS,
        "preset": PRESETS["world-conditioning"]["quick"].__dict__,
        "seeds": [0, 1, 2],
        "runs": runs,
        "costs": dict.fromkeys(rows, cost),
        "baseline": {"kid_mean": 0.0, "kid_std": 0.001, "psnr": 15.4},
    }
    return analyse_conditioning(report)


@pytest.mark.parametrize(
    ("none_acc", "clear"), [([0.20, 0.22, 0.19], True), ([0.75, 0.90, 0.60], False)], ids=["worst", "not-worst"]
)
def test_none_is_worst_is_computed_both_ways(none_acc: list[float], clear: bool) -> None:
    from lightning_film.reproduce.world_report import render_conditioning

    report = _conditioning_report(none_acc)
    verdict = report["stats"]["none_worst"]
    assert verdict["metric"] == "test/agent_acc" and verdict["clear"] is clear
    md = render_conditioning(report)
    assert ("`none` comes out clearly worst" in md) is clear and ("answers nothing" in md) is not clear
    assert "| rmsnorm + film | 3 |" in md and "NanoWM PSNR / FID" in md and "23.20 / 40.62" in md
    assert "| 0.803 ± " in md  # film's agent accuracy over its 3 seeds
    json.dumps(report)  # the numbers go to results.json as they are


def test_world_tables_render_runs_with_and_without_the_new_metrics() -> None:
    from lightning_film.reproduce.world import PRESETS, analyse_kid
    from lightning_film.reproduce.world_report import render_conditioning, render_kid

    old = _conditioning_report([0.2, 0.2, 0.2], new=False)
    md = render_conditioning(old)
    assert old["stats"]["none_worst"]["metric"] == "test/kid_mean"  # no agent accuracy logged: KID decides
    assert "| rmsnorm + film | 3 | 0.2100 ± " in md and "| – | – | – | – |" in md
    runs = {
        f"{r}/seed{s}": _run(r, s, 0.2 + 0.01 * s + 0.01 * i, 15.0, new=i % 2 == 0)
        for i, r in enumerate(["world_base", "world_filmcond", "world_filmcond_pre_half"])
        for s in range(2)
    }
    report = analyse_kid(
        {**BASICS, "preset": PRESETS["world-kid"]["quick"].__dict__, "seeds": [0, 1], "runs": runs, "baseline": None}
    )
    md = render_kid(report)
    assert "| world_filmcond_pre_half | RMSNorm |" in md and "## Paired comparisons" in md
    assert "world_base − world_filmcond" in md and "PSNR − copy (dB)" in md
    base = next(line for line in md.splitlines() if line.startswith("| world_base |"))
    film = next(line for line in md.splitlines() if line.startswith("| world_filmcond |"))
    assert "0.800" in base and film.count("| – ") >= 4  # the filmcond runs lack the new metrics


def test_committed_byte_table_rerenders_to_the_same_numbers(tmp_path: Path) -> None:
    from lightning_film.reproduce.byte_report import analyse, render_markdown
    from lightning_film.reproduce.report import rerender

    shutil.copy(REPO / "benchmarks/results/byte/quick/results.json", tmp_path / "results.json")
    before = json.loads((tmp_path / "results.json").read_text())
    md = rerender(tmp_path, analyse, render_markdown)
    after = json.loads((tmp_path / "results.json").read_text())
    for key in ("runs", "summary", "facts", "throughput", "seeds", "commit", "command"):
        assert after[key] == before[key]
    committed = (REPO / "benchmarks/results/byte/quick/results.md").read_text()
    row = next(line for line in committed.splitlines() if line.startswith("| byte | 3 | "))
    assert "Re-rendered at commit" in md and "## Paired comparisons" in md and row in md.splitlines()
    assert {c["verdict"] for c in after["stats"]["paired"]} <= {"established", "not established"}


def test_the_run_plan_names_each_row_its_seeds_and_steps() -> None:
    from lightning_film.reproduce.runner import plan_lines
    from lightning_film.reproduce.world import PRESETS, kid_runs, recipe_runs

    lines = plan_lines(kid_runs(PRESETS["world-kid"]["quick"], REPO / "configs/world", (0, 1, 2), []))
    assert "  pretrain_half (2000 steps): seeds 0, 1, 2" in lines
    assert "  world_filmcond_pre_half (2000 steps): seeds 0, 1, 2" in lines
    assert "  world_filmcond (4000 steps): seeds 0, 1, 2" in lines
    recipe = plan_lines(recipe_runs(PRESETS["world-recipe"]["quick"], REPO / "configs/world", (0,), []))
    assert "  1500 steps (1500 steps): seeds 0" in recipe  # a row's own budget wins


def test_recipe_table_plans_one_run_per_row_and_seed_and_renders_against_shipped() -> None:
    from lightning_film.reproduce.world import PRESETS, analyse_recipe, recipe_runs
    from lightning_film.reproduce.world_report import render_recipe
    from lightning_film.reproduce.world_rows import RECIPE_ROWS

    preset = PRESETS["world-recipe"]["quick"]
    runs = recipe_runs(preset, REPO / "configs/world", (0, 1, 2), [("model.net.dim", "64")])
    assert len(runs) == 3 * len(RECIPE_ROWS) and runs[0].key == f"{RECIPE_ROWS[0].name}/seed0"
    for run, row in zip(runs[::3], RECIPE_ROWS):  # the row's own arguments come after the budget, so they win
        assert run.args[-4:] == ["--model.init_from", "null", "--model.net.dim", "64"]
        assert run.args[len(run.args) - 4 - len(row.args) : len(run.args) - 4] == list(row.args)
    rows = {"shipped": [0.95, 0.97, 0.96], "noise_shift 1": [0.60, 0.62, 0.58]}
    fake = {f"{r}/seed{s}": _run(r, s, 0.02, 19.0, True, acc) for r, accs in rows.items() for s, acc in enumerate(accs)}
    report = analyse_recipe(
        {
            **BASICS,
            "preset": preset.__dict__,
            "seeds": [0, 1, 2],
            "runs": fake,
            "baseline": None,
            "rows": [{"name": r, "change": "c"} for r in rows],
        }
    )
    md = render_recipe(report)
    assert "- Runs: " not in md  # the header says where the runs were made only when told
    assert "- Runs: on a lent GPU" in render_recipe({**report, "runs_note": "on a lent GPU"})
    assert "| shipped | c | 3 |" in md and "noise_shift 1 − shipped" in md
    acc = next(c for c in report["stats"]["paired"] if c["metric"] == "test/agent_acc")
    assert acc["verdict"] == "established" and acc["diff"] < 0


def test_finished_only_reads_the_finished_runs_and_trains_none(tmp_path: Path, capsys) -> None:
    from lightning_film.reproduce.world import PRESETS, _select, recipe_runs

    runs = recipe_runs(PRESETS["world-recipe"]["quick"], REPO / "configs/world", (0, 1), [])
    done = runs[1]
    (tmp_path / done.key).mkdir(parents=True)
    (tmp_path / done.key / "result.json").write_text(json.dumps({"key": done.key, "test": {"test/psnr": 20.0}}))
    assert _select(runs, None, True, tmp_path) == [done]
    assert f"--finished-only: 1 of {len(runs)} runs finished; not run: {runs[0].key}, " in capsys.readouterr().out


def test_rows_picks_rows_and_brings_their_pretraining_along(tmp_path: Path) -> None:
    from lightning_film.reproduce.world import PRESETS, _select, kid_runs

    runs = kid_runs(PRESETS["world-kid"]["quick"], REPO / "configs/world", (0,), [])
    assert {r.key for r in _select(runs, ["world_filmcond_pre_half"], False, tmp_path)} == {
        "pretrain_half/seed0",
        "world_filmcond_pre_half/seed0",
    }
    with pytest.raises(ValueError, match=r"--rows: unknown row\(s\) \['nope'\]; this table's rows: pretrain"):
        _select(runs, ["nope"], False, tmp_path)


def test_an_ordering_beside_a_reference_says_which_neighbouring_gaps_the_seeds_establish() -> None:
    from lightning_film.reproduce.world_report import _orderings
    from lightning_film.reproduce.world_rows import NANOWM

    # film beats adaln by 2 dB on every seed; adaln, additive and cross_attention differ by seed noise
    psnr = {
        "film": [22.0, 22.1, 21.9],
        "adaln": [20.0, 20.1, 19.9],
        "additive": [19.95, 20.2, 19.8],
        "cross_attention": [19.8, 19.9, 19.95],
    }
    values = {"test/psnr": {f"rmsnorm + {c}": dict(enumerate(v)) for c, v in psnr.items()}}
    (line,) = _orderings(values, "test/psnr", {c: v[0] for c, v in NANOWM.items()}, "NanoWM", "our PSNR", True)
    assert "our PSNR orders the same 4: film, adaln, additive, cross_attention" in line
    assert "the seeds establish 1 (film vs adaln established, adaln vs additive not" in line
    values["test/psnr"].pop("rmsnorm + film")
    assert _orderings(values, "test/psnr", {c: v[0] for c, v in NANOWM.items()}, "NanoWM", "ours", True) == []
