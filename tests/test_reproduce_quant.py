"""`lightning-film reproduce quant`: both models' film, film_tanh and QAT runs through the real
fit/test, quantized and scored in process, timed, exported to Core ML; nothing redone on a second
call. Tiny models (4 steps, the QAT arm the last 2 again), two Core ML compressions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torchao")
pytest.importorskip("coremltools")

from lightning_film.cli import main  # noqa: E402
from lightning_film.reproduce.quant_assess import load_for_scoring, score  # noqa: E402
from lightning_film.reproduce.quant_specs import SPECS  # noqa: E402
from lightning_film.reproduce.quant_summary import claim_verdict  # noqa: E402
from tests.helpers.configs import byte_config, world_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WORLD_EVAL = ["model.max_eval_samples=8", "model.kid_subset_size=4", "model.sample_steps=2"]


def table(tmp_path: Path, byte: Path, world: Path) -> list[str]:
    sets = [a for s in WORLD_EVAL for a in ("--world-set", s)]
    return [
        "reproduce",
        "quant",
        "--byte-config",
        str(byte),
        "--world-config",
        str(world),
        "--max-steps",
        "4",
        "--qat-steps",
        "2",
        "--repeats",
        "2",
        "--coreml",
        "fp16",
        "int4",
        *sets,
        "--runs",
        str(tmp_path / "runs"),
        "--out",
        str(tmp_path / "out"),
    ]


def test_quant_table_runs_scores_and_does_not_redo_work(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("LIGHTNING_FILM_CACHE", str(tmp_path / "cache"))
    argv = table(tmp_path, byte_config(tmp_path, 4, 1), world_config(tmp_path, 4, 1))
    main(argv)
    out = capsys.readouterr().out
    keys = [f"{m}/{run}/seed0" for m in ("byte", "world") for run in ("film", "film_tanh", "film_qat_int4")]
    assert all(f"] {key}: done" in out for key in keys)
    report = json.loads((tmp_path / "out/results.json").read_text())
    md = (tmp_path / "out/results.md").read_text()
    assert "lightning-film reproduce quant" in md and "Verdict on the seed's claim" in md and "| world | qat |" in md
    assert (tmp_path / "out/quant.png").read_bytes()[:4] == b"\x89PNG"

    # the QAT arm re-ran the film run's last 2 steps from its step-2 checkpoint, fake-quantized
    runs = tmp_path / "runs/quick"
    for model in ("byte", "world"):
        film = runs / model / "film/seed0/checkpoints"
        assert (film / "qat_start_2.ckpt").is_file() and (film / "last.ckpt").is_file()
        log = (runs / model / "film_qat_int4/seed0/fit.log").read_text()
        assert str(film / "qat_start_2.ckpt") in log and "fake quantization (int4) on from step 2" in log

    for model in ("byte", "world"):
        metric = SPECS[model].metrics[0].key  # test/bpb, test/loss: relative changes in %
        film = report["summary"]["table"][model]["film"]
        assert set(film) == {"float", "int8", "int4_film", "int4", "int8_dyn"}
        assert abs(film["int8"][metric]["changes"][0]) < 3 and abs(film["int4_film"][metric]["changes"][0]) < 3
        assert set(report["summary"]["table"][model]["film_tanh"]) == {"float", "int8", "int4_film", "int4"}
        assert set(report["summary"]["qat"][model]) == {"ptq", "qat"}
        for timing in report["speed"][model].values():
            assert timing["ratio_to_float"]["float"]["median"] == 1.0 and timing["ratio_to_float"]["int4"]["median"] > 0
        sizes = report["sizes"][model]
        assert sizes["int4"]["packed"] < sizes["int8"]["packed"] < sizes["float"]["packed"]
        packages = report["coreml"][model]
        assert set(packages) == {"fp16", "int4"} and Path(packages["int4"]["path"]).is_dir()
        assert packages["int4"]["size_bytes"]["weights"] < packages["fp16"]["size_bytes"]["weights"]

        # float rows are the run's own test; the quantized copies get the same evaluation here
        model_, dm, _ = load_for_scoring(runs / model / "film/seed0/checkpoints/last.ckpt")
        assert score(model_, dm, tmp_path / "rescored" / model) == pytest.approx(
            report["runs"][f"{model}/film/seed0"]["test"]
        )

    # a second call reads every run and every assessment back
    main(argv)
    again = capsys.readouterr().out
    assert again.count("finished before") == 6 and again.count("assessed before") == 6 and ": training" not in again


def _summary(film: list[float], tanh: list[float]) -> dict:
    """A byte-only summary whose int4 / int4_film bpb changes (%) over seeds are ``film`` / ``tanh``."""

    def cells(changes: list[float]) -> dict:
        floats = [2.0] * len(changes)
        quantized = [2.0 * (1 + c / 100) for c in changes]
        return {
            "float": {"test/bpb": {"values": floats, "changes": [0.0] * len(changes)}},
            **{s: {"test/bpb": {"values": quantized, "changes": changes}} for s in ("int4_film", "int4")},
        }

    return {"table": {"byte": {"film": cells(film), "film_tanh": cells(tanh)}}, "qat": {"byte": {}}}


@pytest.mark.parametrize(
    ("film", "tanh", "verdict"),
    [
        ([1.0], [0.5], "not established by this preset"),
        ([1.0, 1.1, 0.9], [0.5, 0.55, 0.45], "supported"),
        ([0.5, 0.55, 0.45], [1.0, 1.1, 0.9], "contradicted"),
        ([1.0, 0.2, 1.8], [0.2, 1.1, 1.5], "not shown"),
        # film_tanh loses 0.1 less on every seed: the seeds' spread is large, the paired difference is not
        ([1.0, 0.2, 1.8], [0.9, 0.1, 1.7], "supported"),
    ],
)
def test_claim_verdict_tests_the_gap_paired_over_seeds(film: list[float], tanh: list[float], verdict: str) -> None:
    lines = claim_verdict(_summary(film, tanh), ("byte",), len(film))
    assert verdict in lines[0]
    assert sum(line.startswith("| byte | test bpb |") for line in lines) == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--preset", "huge"], "argument --preset: invalid choice: 'huge'"),
        (["--models", "byte", "audio"], "argument --models: invalid choice: 'audio'"),
        (["--max-steps", "4", "--qat-steps", "4"], "0 <= --qat-steps < the training steps"),
        (["--byte-config", "missing.yaml"], "config 'missing.yaml' does not exist"),
        (["--world-config", str(REPO / SPECS["byte"].config)], "this table needs model 'WorldModel', got 'ByteLM'"),
    ],
)
def test_bad_input_is_one_line(args: list[str], message: str, tmp_path: Path, capsys) -> None:
    configs = ["--byte-config", str(REPO / SPECS["byte"].config), "--world-config", str(REPO / SPECS["world"].config)]
    with pytest.raises(SystemExit) as info:
        main(["reproduce", "quant", *configs, *args, "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()  # refused before any folder or training


def test_a_film_run_without_the_qat_start_checkpoint_is_refused_before_training(tmp_path: Path, capsys) -> None:
    film = tmp_path / "runs/quick/byte/film/seed0"
    film.mkdir(parents=True)
    (film / "result.json").write_text("{}")  # finished earlier, with another --qat-steps
    with pytest.raises(SystemExit):
        main(
            [
                "reproduce",
                "quant",
                "--models",
                "byte",
                "--byte-config",
                str(REPO / SPECS["byte"].config),
                "--max-steps",
                "4",
                "--qat-steps",
                "1",
                "--runs",
                str(tmp_path / "runs"),
                "--out",
                str(tmp_path / "out"),
            ]
        )
    err = capsys.readouterr().err
    assert "finished without qat_start_3.ckpt, where the QAT arm starts" in err and "Traceback" not in err
    assert not (tmp_path / "runs/quick/byte/film_tanh").exists()
