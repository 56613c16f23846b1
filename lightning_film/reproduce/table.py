"""The shape every results table has: runs -> scores -> summary -> render.

A table module defines only what is its own, as a :class:`Table` (its options, its runs, what it
measures in this process, its summary, its markdown and plot); :func:`run_table` does the rest, the
same for every table: parse, ``--render-only``, ``--plan``, train the runs
(:mod:`lightning_film.reproduce.runner`), measure, summarize, write ``results.md``, ``results.json``
and the plot.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lightning_film.errors import CommandParser
from lightning_film.io import write_atomic
from lightning_film.measure import machine_info
from lightning_film.reproduce.report import make_folder, report_basics, rerender, results_folder
from lightning_film.reproduce.runner import Run, execute_all, print_plan

__all__ = ["Plan", "Table", "add_common_options", "describe_preset", "parser", "run_table"]


@dataclass(frozen=True)
class Plan:
    """What a table makes of its arguments: the budget (a preset dataclass), the seeds, the runs, the
    title of the printed plan, and how many runs train at a time."""

    preset: Any
    seeds: tuple[int, ...]
    runs: list[Run]
    title: str
    jobs: int = 1


@dataclass(frozen=True)
class Table:
    """A results table: what is its own.

    Attributes:
        name: the table's name on the command line (``quant``), also its runs' default folder.
        description: the parser's one-line description.
        presets: preset name -> budget (a dataclass).
        published: where the committed results live (``benchmarks/results/quant``), for ``--out``'s help.
        add_options: adds the table's own options to its parser.
        plan: checks the arguments and plans the runs; fails here, before any training.
        measure: what the table measures in this process once the runs have finished (their results
            by key): the report's own fields.
        analyse: the report with what its stored parts imply (statistics, verdicts); also what
            ``--render-only`` recomputes.
        render: the report's markdown.
        plot: the report's plot (PNG bytes), written as ``plot_name``; None: no plot.
        packages: distributions whose versions the report records.
    """

    name: str
    description: str
    presets: dict[str, Any]
    published: str
    add_options: Callable[[argparse.ArgumentParser], None]
    plan: Callable[[argparse.Namespace], Plan]
    measure: Callable[[argparse.Namespace, Plan, dict[str, dict[str, Any]]], dict[str, Any]]
    analyse: Callable[[dict[str, Any]], dict[str, Any]]
    render: Callable[[dict[str, Any]], str]
    plot: Callable[[dict[str, Any]], bytes] | None = None
    plot_name: str = ""
    packages: tuple[str, ...] = ()


def add_common_options(parser: argparse.ArgumentParser, presets: dict[str, Any], published: str) -> None:
    """``--preset`` (with what each preset means), ``--out`` and ``--plan``, shared by every table."""
    meaning = "; ".join(f"{name}: {describe_preset(preset)}" for name, preset in presets.items())
    parser.add_argument("--preset", choices=sorted(presets), default="quick", help=f"the budget ({meaning})")
    parser.add_argument(
        "--out",
        type=Path,
        help=f"results folder (default <runs>/<preset>/results; the committed table is {published}/<preset>, "
        f"written only when named here)",
    )
    parser.add_argument(
        "--plan",
        action="store_true",
        help="print the runs, their steps and a rough time, and stop: trains and writes nothing",
    )


def describe_preset(preset: Any) -> str:
    """``3 seeds x 600 steps`` (and pretraining, test windows, per-model budgets where a preset has them)."""
    fields = asdict(preset)
    parts = [f"{len(fields['seeds'])} seed{'s' * (len(fields['seeds']) != 1)}"]
    if "max_steps" in fields:
        parts.append(f"x {fields['max_steps']} steps")
    if fields.get("pretrain_steps"):
        parts.append(f"(+ {fields['pretrain_steps']} pretraining)")
    if "eval_samples" in fields:
        parts.append(f", {fields['eval_samples']} test windows, {fields['sample_steps']} sampler steps")
    for model in ("byte", "world"):
        if isinstance(fields.get(model), dict):
            budget = ", ".join(f"{k} {v}" for k, v in fields[model].items() if isinstance(v, (int, float)))
            parts.append(f"; {model}: {budget}")
    return " ".join(parts).replace(" ,", ",").replace(" ;", ";")


def parser(table: Table) -> CommandParser:
    """The table's parser: the options every table has around the table's own."""
    p = CommandParser(prog=f"lightning-film reproduce {table.name}", description=table.description)
    add_common_options(p, table.presets, table.published)
    p.add_argument("--seeds", nargs="+", type=int, help="override the preset's seeds")
    table.add_options(p)
    p.add_argument("--runs", type=Path, default=Path("runs/reproduce") / table.name, help="where the runs live")
    p.add_argument("--repeats", type=int, help="timing repeats (default: the preset's)")
    p.add_argument(
        "--render-only",
        action="store_true",
        help="re-render --out's results.md/json from the runs stored in its results.json; trains nothing",
    )
    return p


def run_table(table: Table, argv: list[str]) -> None:
    """``lightning-film reproduce TABLE ...``: plan, train, measure, summarize, write."""
    args = parser(table).parse_args(argv)
    if args.render_only:
        print(rerender(results_folder(args.out, args.runs, args.preset), table.analyse, table.render))
        return
    start = time.perf_counter()
    plan = table.plan(args)
    root = args.runs / args.preset
    print_plan(plan.title, plan.runs, root)
    if args.plan:
        return
    out = make_folder(results_folder(args.out, args.runs, args.preset), "--out")
    make_folder(root, "--runs")
    results = execute_all(plan.runs, root, jobs=plan.jobs)
    fields = table.measure(args, plan, results)
    # the machine is read after the timing, so a load line says how busy it was while timed
    machine = machine_info(extra_packages=table.packages)
    basics = report_basics(table.name, argv, args, plan.preset, plan.seeds, machine)
    report = table.analyse({**basics, **fields, "runs": results, "wall_s": time.perf_counter() - start})
    markdown = table.render(report)
    files: dict[str, str | bytes] = {
        "results.md": markdown,
        "results.json": json.dumps(report, indent=1, default=str) + "\n",
    }
    if table.plot is not None:
        files[table.plot_name] = table.plot(report)
    for name, content in files.items():
        write_atomic(out / name, content)
    print(markdown)
    print("wrote " + ", ".join(str(out / name) for name in files), file=sys.stderr)
