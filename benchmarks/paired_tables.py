"""Two reproduce tables of the same rows, one per setting, compared run by run (paired by seed).

    python -m benchmarks.paired_tables A/results.json B/results.json --names fp32 bf16 --out DIR

For each row both tables share and each ``test/`` metric both logged: the per-seed difference
(second - first), its 95% CI and the paired t-test (:mod:`lightning_film.reproduce.stats`).
Writes ``DIR/paired.md`` with both commands, commits and dates.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from lightning_film.io import write_atomic
from lightning_film.reproduce.stats import fmt_p, paired


def _by_row(report: dict) -> dict[str, dict[str, dict[int, float]]]:
    """row -> metric -> seed -> value (a run's row is its ``variant`` or ``row`` label)."""
    table: dict[str, dict[str, dict[int, float]]] = {}
    for run in report["runs"].values():
        row = run.get("variant") or run.get("row")
        for key, value in run["test"].items():
            table.setdefault(row, {}).setdefault(key, {})[run["seed"]] = value
    return table


def compare(first: dict, second: dict, names: tuple[str, str]) -> str:
    a, b = _by_row(first), _by_row(second)
    lines = [f"# {names[1]} against {names[0]}, paired by seed", ""]
    for name, report in zip(names, (first, second)):
        lines.append(f"- {name}: `{report['command']}` (commit {report['commit']}, {report['date']})")
    lines += [
        "",
        f"| row | metric | seeds | {names[0]} | {names[1]} | {names[1]} − {names[0]} | 95% CI | p | verdict |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in sorted(set(a) & set(b)):
        for metric in sorted(set(a[row]) & set(b[row])):
            r = paired(b[row][metric], a[row][metric])
            if not r["seeds"]:
                continue
            first_mean, second_mean = (statistics.fmean(d[row][metric][s] for s in r["seeds"]) for d in (a, b))
            ci = "–" if r["p"] is None else f"[{r['low']:+.4f}, {r['high']:+.4f}]"
            lines.append(
                f"| {row} | {metric} | {len(r['seeds'])} | {first_mean:.4f} | "
                f"{second_mean:.4f} | {r['diff']:+.4f} | {ci} | {fmt_p(r['p'])} | {r['verdict']} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.paired_tables", description=__doc__.split("\n\n")[0])
    p.add_argument("first", type=Path)
    p.add_argument("second", type=Path)
    p.add_argument("--names", nargs=2, default=("first", "second"))
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    md = compare(json.loads(a.first.read_text()), json.loads(a.second.read_text()), tuple(a.names))
    a.out.mkdir(parents=True, exist_ok=True)
    write_atomic(a.out / "paired.md", md)
    print(md)


if __name__ == "__main__":
    main()
