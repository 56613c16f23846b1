"""Run a results table's trainings: one ``lightning-film fit`` + ``test`` per run, resumable.

Each run lives in its own folder (``<runs>/<table>/<preset>/<run key>/``) and goes through the
real command line in a subprocess (what users run is what the table measures, and one run's
memory or crash cannot touch the next):

1. ``result.json`` exists: the run finished before; it is read, not redone.
2. otherwise ``lightning-film fit`` runs, with ``--ckpt_path last`` when the folder already has
   ``checkpoints/last.ckpt`` (a killed run continues where its last checkpoint was), then
   ``lightning-film test --ckpt_path last``; both log through Lightning's ``CSVLogger`` into the
   run folder; ``result.json`` (metrics, validation curve, timings, the commands) is written last,
   atomically.

Output of the commands goes to ``fit.log`` / ``test.log`` in the run folder; a failed command
stops the table with the command and the end of its log.
"""

from __future__ import annotations

import csv
import json
import math
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_film.errors import UsageError, check_int
from lightning_film.io import write_atomic

__all__ = [
    "ROUGH_COST",
    "ReproduceError",
    "Run",
    "execute",
    "execute_all",
    "plan_lines",
    "print_plan",
    "read_metrics",
    "rough_seconds",
]


class ReproduceError(UsageError):
    """A run of a results table failed; the message names the run, the command and its log."""


@dataclass
class Run:
    """One training run of a table.

    Attributes:
        key: unique name inside the table, also its folder (``"nibble_acc/seed0"``).
        config: the YAML config given to ``lightning-film``.
        args: extra command-line arguments for both ``fit`` and ``test`` (``--model.net.variant byte``).
        fit_args: arguments for ``fit`` only (``--model.init_from ...``).
        test_args: arguments for ``test`` only.
        labels: what the run is, copied into its result (variant, seed, ...).
        after: keys of runs that must finish first (a pretraining run, say).
    """

    key: str
    config: Path
    args: list[str] = field(default_factory=list)
    fit_args: list[str] = field(default_factory=list)
    test_args: list[str] = field(default_factory=list)
    labels: dict[str, Any] = field(default_factory=dict)
    after: list[str] = field(default_factory=list)


def _csv_logger(directory: Path, name: str) -> str:
    return json.dumps(
        {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(directory), "name": name}}
    )


def _command(stage: str, run: Run, directory: Path, extra: Sequence[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "lightning_film.cli",
        stage,
        "--config",
        str(run.config),
        # a table's numbers must not depend on the machine's bf16 units (lightning_film.precision):
        # fp32, as every committed table was trained, unless the table's --set names another
        "--trainer.precision",
        "32-true",
        *run.args,
        *extra,
        "--trainer.default_root_dir",
        str(directory),
        "--trainer.logger",
        _csv_logger(directory, stage),
        "--trainer.enable_progress_bar",
        "false",
    ]


def _run_command(command: list[str], log: Path, run: Run) -> float:
    start = time.perf_counter()
    # the one file not written through lightning_film.io: a log the command streams into as it runs,
    # appended to on purpose, so a killed run keeps the lines that say how far it got
    with open(log, "ab") as out:
        out.write(f"\n$ {shlex.join(command)}\n".encode())
        out.flush()
        status = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
    if status != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise ReproduceError(
            f"run {run.key!r} failed (exit {status}): {shlex.join(command)}\n--- end of {log} ---\n{tail}"
        )
    return time.perf_counter() - start


def read_metrics(directory: Path) -> list[dict[str, float]]:
    """Every row of every ``version_*/metrics.csv`` under ``directory``, versions in order,
    as {column: value} with empty cells dropped (a resumed fit logs into a new version)."""
    rows: list[dict[str, float]] = []
    versions = sorted(directory.glob("version_*"), key=lambda p: int(p.name.split("_")[-1]))
    for version in versions:
        path = version / "metrics.csv"
        if not path.is_file():
            continue
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                rows.append({k: float(v) for k, v in row.items() if v not in ("", None)})
    return rows


def _curves(rows: list[dict[str, float]], prefix: str) -> dict[str, list[list[float]]]:
    """metric -> [[step, value], ...] for metrics starting with ``prefix``; a later version's
    value at a step replaces an earlier one's (the resumed run re-logs from its checkpoint)."""
    curves: dict[str, dict[int, float]] = {}
    for row in rows:
        for key, value in row.items():
            if key.startswith(prefix) and "step" in row and math.isfinite(value):
                curves.setdefault(key, {})[int(row["step"])] = value
    return {k: [[s, v] for s, v in sorted(c.items())] for k, c in sorted(curves.items())}


def execute(run: Run, root: Path) -> tuple[dict[str, Any], bool]:
    """Run ``run`` (or read its finished result) in ``root / run.key``: (result, was it redone)."""
    directory = root / run.key
    result_file = directory / "result.json"
    if result_file.is_file():
        try:
            result = json.loads(result_file.read_text())
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
            result = err
        if not isinstance(result, dict):
            why = f"{type(result).__name__}: {result}" if isinstance(result, Exception) else type(result).__name__
            raise UsageError(
                f"run result {str(result_file)!r} is damaged ({' '.join(why.split())[:120]}); delete it and rerun the "
                f"same command: the run is scored again from its last checkpoint"
            )
        return result, False
    directory.mkdir(parents=True, exist_ok=True)
    resume = ["--ckpt_path", "last"] if (directory / "checkpoints" / "last.ckpt").is_file() else []
    fit = _command("fit", run, directory, [*run.fit_args, *resume])
    fit_s = _run_command(fit, directory / "fit.log", run)
    test = _command("test", run, directory, [*run.test_args, "--ckpt_path", "last"])
    test_s = _run_command(test, directory / "test.log", run)
    fit_rows, test_rows = read_metrics(directory / "fit"), read_metrics(directory / "test")
    test_metrics = {k: v for row in test_rows for k, v in row.items() if k.startswith("test/")}
    if not test_metrics:
        raise ReproduceError(f"run {run.key!r}: the test logged no test/ metrics (see {directory / 'test.log'})")
    train_curves = _curves(fit_rows, "train/")
    result = {
        "key": run.key,
        **run.labels,
        "test": test_metrics,
        "val_curves": _curves(fit_rows, "val/"),
        "train_loss_curve": train_curves.get("train/loss", []),
        "train_tokens_per_s_logged": [v for _, v in train_curves.get("train/device/items_per_sec", [])],
        "fit_s_last_attempt": fit_s,
        "resumed": bool(resume),
        "test_s": test_s,
        "commands": {"fit": shlex.join(fit), "test": shlex.join(test)},
    }
    write_atomic(result_file, json.dumps(result, indent=1) + "\n")
    return result, True


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes >= 60:
        return f"{minutes // 60}h{minutes % 60:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def execute_all(
    runs: list[Run], root: Path, say: Callable[[str], None] = print, jobs: int = 1
) -> dict[str, dict[str, Any]]:
    """Run every run (``after`` first), ``jobs`` at a time, printing progress and an estimate of
    the time left. Each run is its own subprocess, so ``jobs > 1`` only waits on them in threads
    (give each child fewer threads, e.g. ``OMP_NUM_THREADS``, when they share the cores)."""
    keys = [r.key for r in runs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"run keys must be unique, got {keys}")
    check_int("jobs", jobs, 1)
    for i, run in enumerate(runs):
        missing = [k for k in run.after if k not in keys[:i]]
        if missing:
            raise ValueError(f"run {run.key!r} must come after {missing} in the list")
    results: dict[str, dict[str, Any]] = {}
    spent: list[float] = []
    number = {r.key: i for i, r in enumerate(runs, 1)}

    def one(run: Run) -> tuple[dict[str, Any], bool, float]:
        head = f"[{number[run.key]}/{len(runs)}] {run.key}"
        if not (root / run.key / "result.json").is_file():
            resumed = (root / run.key / "checkpoints" / "last.ckpt").is_file()
            say(f"{head}: {'resuming' if resumed else 'training'} ... (log: {root / run.key / 'fit.log'})")
        start = time.perf_counter()
        result, redone = execute(run, root)
        return result, redone, time.perf_counter() - start

    def report(run: Run, result: dict[str, Any], redone: bool, seconds: float) -> None:
        head = f"[{number[run.key]}/{len(runs)}] {run.key}"
        results[run.key] = result
        if not redone:
            say(f"{head}: finished before, read from {root / run.key / 'result.json'}")
            return
        spent.append(seconds)
        left = sum(1 for r in runs if r.key not in results and not (root / r.key / "result.json").is_file())
        eta = f"; about {_duration(left * sum(spent) / len(spent) / jobs)} left" if left else ""
        summary = ", ".join(f"{k} {v:.4g}" for k, v in result["test"].items() if k.count("/") == 1)
        say(f"{head}: done in {_duration(seconds)} ({summary}){eta}")

    if jobs == 1:
        for run in runs:
            report(run, *one(run))
        return results
    waiting = list(runs)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        running: dict[Future, Run] = {}
        while waiting or running:
            ready = [r for r in waiting if all(k in results for k in r.after)]
            for run in ready[: jobs - len(running)]:
                waiting.remove(run)
                running[pool.submit(one, run)] = run
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:  # a failed run raises here, after the others in flight finish
                report(running.pop(future), *future.result())
    return {r.key: results[r.key] for r in runs}


def _steps(run: Run) -> int | None:
    args = [*run.args, *run.fit_args]
    # the last --trainer.max_steps wins on the command line, and so here
    at = [i for i, a in enumerate(args) if a == "--trainer.max_steps"]
    return int(args[at[-1] + 1]) if at and args[at[-1] + 1].isdigit() else None


def plan_lines(runs: list[Run]) -> list[str]:
    """The run plan, one line per row: its seeds and steps (``--trainer.max_steps``), in run order."""
    rows: dict[str, list[str]] = {}
    for run in runs:
        row, _, seed = run.key.rpartition("/seed")
        steps = _steps(run)
        rows.setdefault(f"{row or run.key} ({steps if steps is not None else '?'} steps)", []).append(seed)
    return [f"  {row}: seeds {', '.join(seeds)}" for row, seeds in rows.items()]


#: rough cost on 2 idle CPU cores of this project's machine, by the config's folder: seconds per
#: training step, seconds of test per run (filmcond: 4000 steps in 6.5 min, its test ~2 min; the
#: byte model: 1200 steps in ~5 min). Shared cores took 3-4x longer; a GPU far less.
ROUGH_COST: dict[str, tuple[float, float]] = {"byte": (0.25, 15.0), "world": (0.1, 120.0)}


def rough_seconds(runs: list[Run], root: Path) -> tuple[int, float]:
    """(runs still to train, their rough seconds at :data:`ROUGH_COST`); finished runs cost nothing."""
    todo = [r for r in runs if not (root / r.key / "result.json").is_file()]
    seconds = 0.0
    for run in todo:
        per_step, test = ROUGH_COST.get(Path(run.config).parent.name, (0.25, 30.0))
        seconds += per_step * (_steps(run) or 0) + test
    return len(todo), seconds


def print_plan(title: str, runs: list[Run], root: Path, say: Callable[[str], None] = print) -> None:
    say(f"{title}: {len(runs)} runs into {root}")
    for line in plan_lines(runs):
        say(line)
    todo, seconds = rough_seconds(runs, root)
    say(
        f"  to train: {todo} of {len(runs)} ({len(runs) - todo} already done); roughly {_duration(seconds)} on 2 idle CPU "
        f"cores, one run at a time (3-4x that on shared cores), plus the table's own scoring and timing"
    )
