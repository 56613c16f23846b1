"""``lightning-film reproduce``: a plan before any work, and the committed results left alone."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from lightning_film.cli import main
from lightning_film.reproduce import TABLES
from lightning_film.reproduce.report import header, results_folder

REPO = Path(__file__).resolve().parents[1]


def _tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


@pytest.mark.parametrize("table", list(TABLES))
def test_plan_prints_runs_and_time_and_writes_nothing(
    table: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(REPO)
    before = _tree_digest(REPO / "benchmarks" / "results")
    main(["reproduce", table, "--plan", "--runs", str(tmp_path / "runs")])
    out = capsys.readouterr().out
    assert "steps" in out and "roughly" in out
    assert not (tmp_path / "runs").exists()  # nothing created, nothing trained
    assert _tree_digest(REPO / "benchmarks" / "results") == before


def test_without_out_results_go_beside_the_runs_never_into_benchmarks(tmp_path: Path) -> None:
    assert results_folder(None, tmp_path / "runs", "quick") == tmp_path / "runs" / "quick" / "results"
    assert results_folder(tmp_path / "mine", tmp_path / "runs", "quick") == tmp_path / "mine"


def test_preset_help_says_what_quick_and_full_mean(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["reproduce", "byte", "--help"])
    assert "quick: 3 seeds x 600 steps" in " ".join(capsys.readouterr().out.split())


def test_results_header_says_when_the_machine_was_loaded() -> None:
    machine = {"cpu": "x", "cpu_count": 2, "torch": "2", "torch_threads": 2}
    report = {"command": "c", "date": "d", "commit": "c", "wall_s": 60.0}
    idle = header({**report, "machine": {**machine, "load_average_1_5_15": [0.2, 0.3, 0.3]}})
    busy = header({**report, "machine": {**machine, "load_average_1_5_15": [6.0, 5.0, 4.0]}})
    assert not any("load average" in line for line in idle)
    assert any("load average 6.0" in line for line in busy)


def test_top_level_help_names_every_table(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert all(table in out for table in TABLES)
