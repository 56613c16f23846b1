"""What every results table shares: config overrides, the commit, the header, re-rendering.

The statistics of the tables (95% CIs, paired tests) are :mod:`lightning_film.reproduce.stats`;
``mean_std`` here is for plots' error bars."""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from lightning_film.errors import UsageError
from lightning_film.io import folder_problem, write_atomic

__all__ = [
    "commit",
    "config_tree",
    "header",
    "make_folder",
    "mean_std",
    "add_override_option",
    "override_args",
    "parse_override",
    "report_basics",
    "rerender",
]


def parse_override(text: str) -> tuple[str, str]:
    """``--set model.net.dim=64`` -> ("model.net.dim", "64"). A network argument given as ``model.X``
    (how the commands of tables made before the network was ``model.net`` name it) is ``model.net.X``."""
    key, sep, value = text.partition("=")
    if not sep or not key or key.startswith("-"):
        raise argparse.ArgumentTypeError(f"--set takes KEY=VALUE (e.g. model.net.dim=64), got {text!r}")
    section, _, name = key.partition(".")
    if section == "model" and name in _network_arguments():
        key = f"model.net.{name}"
    return key, value


def _network_arguments() -> set[str]:
    import inspect

    from lightning_film.models import ByteNet, WorldDenoiser

    return {p for net in (ByteNet, WorldDenoiser) for p in inspect.signature(net).parameters if p != "self"}


def add_override_option(
    parser: argparse.ArgumentParser, help: str, flag: str = "--set", dest: str = "overrides"
) -> None:
    """A repeatable ``flag KEY=VALUE`` option collecting (key, value) pairs in ``dest`` (default: none)."""
    parser.add_argument(
        flag, dest=dest, action="append", type=parse_override, default=[], metavar="KEY=VALUE", help=help
    )


def override_args(overrides: list[tuple[str, str]]) -> list[str]:
    """The overrides as ``lightning-film`` arguments: ``--model.net.dim 64``."""
    return [a for key, value in overrides for a in (f"--{key}", value)]


def config_tree(config: Path, overrides: list[tuple[str, str]]) -> dict[str, Any]:
    """The YAML config with the overrides applied (``model.x`` lands in ``model.init_args.x``)."""
    tree = yaml.safe_load(config.read_text())
    for key, value in overrides:
        node = tree
        *path, last = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
            if part in ("model", "data") and "init_args" in node:
                node = node["init_args"]
        node[last] = yaml.safe_load(value)
    return tree


def init_args(tree: dict[str, Any], section: str, expected: str, config: Path) -> dict[str, Any]:
    """``tree[section]["init_args"]``, checking the class is ``expected`` (by its short name)."""
    part = tree.get(section) or {}
    name = str(part.get("class_path", "")).rsplit(".", 1)[-1]
    if name != expected:
        raise ValueError(f"{config}: this table needs {section} {expected!r}, got {part.get('class_path')!r}")
    return dict(part.get("init_args") or {})


def make_folder(path: Path, option: str) -> Path:
    """Create ``path`` (``--out``, ``--runs``) before any training, or say in one line why not."""
    try:
        problem = folder_problem(path)
        if problem is None:
            path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        problem = err.strerror or str(err)
    if problem:
        raise UsageError(f"{option} {str(path)!r}: cannot create this folder: {problem}")
    return path


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def report_basics(
    table: str, argv: list[str], args: argparse.Namespace, preset: Any, seeds: tuple[int, ...], machine: dict[str, Any]
) -> dict[str, Any]:
    """What every results.json starts with: the exact command, date, commit, machine, preset
    (a dataclass) and seeds; the overrides are ``args.overrides`` as ``key=value``."""
    return {
        "command": shlex.join(["lightning-film", "reproduce", table, *argv]),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit(),
        "machine": machine,
        "preset_name": args.preset,
        "preset": asdict(preset),
        "seeds": list(seeds),
        "overrides": [f"{k}={v}" for k, v in args.overrides],
        **({"runs_note": args.runs_note} if getattr(args, "runs_note", None) else {}),
    }


def header(report: dict[str, Any]) -> list[str]:
    """Command, date, commit, wall time and machine lines of a results file."""
    m = report["machine"]
    again = report.get("rerendered")
    return [
        f"- Command: `{report['command']}`",
        f"- Date: {report['date']}; commit {report['commit']}; wall time {report['wall_s'] / 60:.1f} min "
        "(runs finished earlier are read, not redone)",
        f"- Machine: {m['cpu']}, {m['cpu_count']} cores, torch {m['torch']} ({m['torch_threads']} threads); "
        "**CPU timings**",
        *_load_line(m),
        *([f"- Re-rendered at commit {again['commit']} ({again['date']}) from {again['source']}"] if again else []),
        *([f"- Runs: {report['runs_note']}"] if report.get("runs_note") else []),
    ]


def _load_line(machine: dict[str, Any]) -> list[str]:
    """A line saying the machine was busy when it was (1-minute load above half its cores): its
    timings then measure the sharing as much as the model, and the reader must be told."""
    load, cores = machine.get("load_average_1_5_15"), machine.get("cpu_count") or 1
    if not load or load[0] <= cores / 2:
        return []
    return [
        f"- **Loaded machine**: load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1 / 5 / 15 min) on "
        f"{cores} cores when timed: throughput and times here are lower than on an idle machine"
    ]


def results_folder(out: Path | None, runs: Path, preset: str) -> Path:
    """``--out``, else ``<runs>/<preset>/results``: a trial never overwrites the committed tables under
    ``benchmarks/results/``, which change only when ``--out`` names them."""
    return out if out is not None else runs / preset / "results"


def rerender(
    out: Path, analyse: Callable[[dict[str, Any]], dict[str, Any]], render: Callable[[dict[str, Any]], str]
) -> str:
    """Write ``out``'s results.md and results.json again from the runs its results.json stores:
    ``analyse`` recomputes what is derived from them (statistics, verdicts), ``render`` the markdown.
    Nothing is trained, scored or timed again; the report says at which commit it was re-rendered."""
    path = out / "results.json"
    if not path.is_file():
        raise UsageError(f"--render-only: {str(path)!r} does not exist; run the table first")
    report = analyse(json.loads(path.read_text()))
    report["rerendered"] = {
        "commit": commit(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "source": "the per-run results stored in results.json (nothing retrained, rescored or retimed)",
    }
    markdown = render(report)
    write_atomic(out / "results.json", json.dumps(report, indent=1, default=str) + "\n")
    write_atomic(out / "results.md", markdown)
    return markdown
