"""``lightning-film reproduce world-kid`` and ``world-conditioning``: the world-model tables.

    lightning-film reproduce world-kid --preset quick            # the seed's rows (and a same-total pretrained row) x seeds
    lightning-film reproduce world-conditioning --preset quick   # every conditioner (rmsnorm), every norm (film)

**world-kid** reproduces the seed's comparison (not its digits: its data is not ours): base
(LayerNorm + additive), filmcond (RMSNorm + FiLM), filmcond_pre (the same, finetuned from an
unconditional pretraining run made by the table itself) and flow_clsfg (FiLM + classifier-free
guidance, flow matching), each over several seeds at the same conditional-training budget
(the ``_pre`` row's pretraining steps are reported on top; ``_pre_half`` pretrains and finetunes
half the budget each, the same total as the rows from scratch). The unconditional pretraining run
is tested too and shown as a reference row. Every row: mean ± 95% CI over seeds, and paired
comparisons against ``world_filmcond`` (:mod:`lightning_film.reproduce.world_report`).

**world-conditioning** trains ``configs/world/filmcond.yaml`` with every registered conditioner
under RMSNorm, and with FiLM under every other registered normalizer, at equal budget; per row
it also reports parameters, forward GFLOPs of one denoiser call (``FlopCounterMode``) and the
training-step time against ``none`` (interleaved, same run). DiT's own ablation (ImageNet
256, FID-50K at 400K steps) and Nano World Model's action-injection ablation (RT-1, PSNR / FID)
are shown beside it as reference orderings; whether ``none`` comes out clearly worst (every other
row better by the paired test) is computed.

Every run is the real ``lightning-film fit`` + ``test`` (resumable; see
:mod:`lightning_film.reproduce.runner`). Results: ``benchmarks/results/world/<table>/<preset>/``
``results.md``, ``results.json`` and ``kid.png`` (bars: mean KID, error bars: std over seeds).
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lightning_film.reproduce.report import add_override_option, config_tree, mean_std
from lightning_film.reproduce.runner import Run
from lightning_film.reproduce.table import Plan, Table
from lightning_film.reproduce.world_measure import copy_baseline, model_args, model_costs
from lightning_film.reproduce.world_report import (
    analyse,
    kid_verdict,
    render_conditioning,
    render_kid,
    render_png,
    render_recipe,
)
from lightning_film.reproduce.world_rows import (
    DIT_FID,
    KID_REFERENCE,
    KID_ROWS,
    NANOWM,
    NONE_ROW,
    PRETRAIN,
    PRETRAIN_HALF,
    RECIPE_REFERENCE,
    RECIPE_ROWS,
)
from lightning_film.reproduce.world_runs import (
    PRESETS,
    Preset,
    conditioning_rows,
    conditioning_runs,
    kid_runs,
    recipe_runs,
)

__all__ = [
    "CONDITIONING",
    "KID",
    "PRESETS",
    "RECIPE",
    "Preset",
    "analyse_conditioning",
    "analyse_kid",
    "analyse_recipe",
    "conditioning_rows",
    "conditioning_runs",
    "kid_runs",
    "recipe_runs",
]

CONFIGS = Path("configs/world")


# -- the commands --------------------------------------------------------------------------------------
def _add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--configs", type=Path, default=CONFIGS, help="folder of the world configs")
    parser.add_argument("--max-steps", type=int, help="override the preset's steps per run (and pretraining's)")
    add_override_option(parser, "a config override for every run, e.g. model.net.dim=64 (repeatable)")
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs at a time (each a subprocess; set OMP_NUM_THREADS so they share the cores)",
    )
    parser.add_argument("--rows", nargs="+", metavar="ROW", help="run only these rows (names as in the table)")
    parser.add_argument(
        "--finished-only",
        action="store_true",
        help="score and render the runs that have finished in --runs, train none (say how many are missing)",
    )
    parser.add_argument(
        "--runs-note", help="where and how the runs were made, when not by this command here (a header line)"
    )


def _plan(table: str, runs_of: Callable[..., list[Run]], args: argparse.Namespace) -> Plan:
    """``runs_of``: the table's runs from (preset, configs folder, seeds, overrides)."""
    if not args.configs.is_dir():
        raise ValueError(
            f"config folder {str(args.configs)!r} does not exist; run from the repository root or pass --configs"
        )
    preset = PRESETS[table][args.preset]
    changes = {}
    if args.max_steps is not None:
        changes.update(max_steps=args.max_steps, pretrain_steps=args.max_steps if preset.pretrain_steps else 0)
    if args.repeats is not None:
        changes["repeats"] = args.repeats
    if any(v < 1 for k, v in changes.items() if k != "pretrain_steps"):
        raise ValueError(f"--max-steps and --repeats must be >= 1, got {changes}")
    preset = Preset(**{**asdict(preset), **changes})
    seeds = tuple(args.seeds) if args.seeds else preset.seeds
    root = args.runs / args.preset
    runs = _select(runs_of(preset, args.configs, seeds, args.overrides), args.rows, args.finished_only, root)
    for run in runs:  # the pretrained checkpoint's path depends on where the runs live
        run.fit_args = [a.replace("{runs}", str(root)) for a in run.fit_args]
    return Plan(preset, seeds, runs, f"{table}, preset {args.preset}", jobs=args.jobs)


def _select(runs: list[Run], rows: list[str] | None, finished_only: bool, root: Path) -> list[Run]:
    """``--rows`` (a chosen run's ``after`` runs come along) and ``--finished-only`` (a table cut
    short, say by a budget that ran out: what finished, and no more)."""
    if rows:
        known = list(dict.fromkeys(r.labels["row"] for r in runs))
        unknown = [r for r in rows if r not in known]
        if unknown:
            raise ValueError(f"--rows: unknown row(s) {unknown}; this table's rows: {', '.join(known)}")
        keep = {r.key for r in runs if r.labels["row"] in rows}
        keep |= {k for r in runs if r.key in keep for k in r.after}
        runs = [r for r in runs if r.key in keep]
    if finished_only:
        done = [r for r in runs if (root / r.key / "result.json").is_file()]
        missing = [r.key for r in runs if r not in done]
        print(f"--finished-only: {len(done)} of {len(runs)} runs finished; not run: {', '.join(missing) or 'none'}")
        runs = done
    return runs


def _collect(results: dict[str, dict], metric: str) -> dict[str, list[float]]:
    by_row: dict[str, list[float]] = {}
    for result in results.values():
        if metric in result["test"]:
            by_row.setdefault(result["row"], []).append(result["test"][metric])
    return by_row


def analyse_kid(report: dict[str, Any]) -> dict[str, Any]:
    """The world-kid report's derived parts: KID and PSNR per row, the orderings, the statistics."""
    kid, psnr = _collect(report["runs"], "test/kid_mean"), _collect(report["runs"], "test/psnr")
    return analyse({**report, "kid": kid, "psnr": psnr, "verdict": kid_verdict(kid)}, KID_REFERENCE)


def analyse_recipe(report: dict[str, Any]) -> dict[str, Any]:
    return analyse(report, RECIPE_REFERENCE)


def analyse_conditioning(report: dict[str, Any]) -> dict[str, Any]:
    kid, psnr = _collect(report["runs"], "test/kid_mean"), _collect(report["runs"], "test/psnr")
    return analyse({**report, "kid": kid, "psnr": psnr, "dit_fid": DIT_FID, "nanowm": NANOWM}, NONE_ROW)


# -- what each table measures here, and the tables -------------------------------------------------------
def _baseline(args: argparse.Namespace, plan: Plan) -> dict[str, Any]:
    print("scoring the copy-last-frame baseline on the same test windows ...")
    return {"baseline": copy_baseline(args.configs / "filmcond.yaml", args.overrides, plan.preset)}


def _measure_kid(args: argparse.Namespace, plan: Plan, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {**_baseline(args, plan), "seed_kid": {r.name: r.seed_kid for r in KID_ROWS}}


def _measure_recipe(args: argparse.Namespace, plan: Plan, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {**_baseline(args, plan), "rows": [asdict(r) for r in RECIPE_ROWS]}


def _measure_conditioning(args: argparse.Namespace, plan: Plan, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    baseline = _baseline(args, plan)
    print("measuring parameters, FLOPs and step time of every row (interleaved) ...")
    base_args = model_args(args.configs / "filmcond.yaml", args.overrides)
    batch = int(config_tree(args.configs / "filmcond.yaml", args.overrides)["data"]["init_args"].get("batch_size", 32))
    costs = model_costs(base_args, conditioning_rows(), plan.preset.repeats, plan.preset.steps_per_repeat, batch)
    return {**baseline, "costs": costs}


def _kid_png(report: dict[str, Any]) -> bytes:
    order = [r.name for r in (*KID_ROWS, PRETRAIN, PRETRAIN_HALF)]
    return render_png(report["kid"], order, "World model: the seed's rows", report["seed_kid"])


def _conditioning_png(report: dict[str, Any]) -> bytes:
    kid = report["kid"]
    order = sorted(report["costs"], key=lambda r: mean_std(kid[r])[0] if kid.get(r) else float("inf"))
    return render_png(kid, order, "World model: conditioner / normalizer at equal budget", None)


def _table(
    name: str,
    runs: Callable[..., list[Run]],
    measure: Callable[..., dict[str, Any]],
    analyse_: Callable[[dict[str, Any]], dict[str, Any]],
    render: Callable[[dict[str, Any]], str],
    png: Callable[[dict[str, Any]], bytes] | None,
) -> Table:
    return Table(
        name=name,
        description=__doc__.split("\n\n")[0],
        presets=PRESETS[name],
        published=f"benchmarks/results/world/{name}",
        add_options=_add_options,
        plan=functools.partial(_plan, name, runs),
        measure=measure,
        analyse=analyse_,
        render=render,
        plot=png,
        plot_name="kid.png",
    )


KID = _table("world-kid", kid_runs, _measure_kid, analyse_kid, render_kid, _kid_png)
RECIPE = _table("world-recipe", recipe_runs, _measure_recipe, analyse_recipe, render_recipe, None)
CONDITIONING = _table(
    "world-conditioning",
    conditioning_runs,
    _measure_conditioning,
    analyse_conditioning,
    render_conditioning,
    _conditioning_png,
)
