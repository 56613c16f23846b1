"""`lightning-film reproduce`: a table runs the real fit/test per run, resumes, and never redoes a
finished run. A tiny byte table (2 variants x 1 seed x 4 steps on a small file)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from lightning_film.cli import main
from lightning_film.reproduce.runner import read_metrics

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "model.net.dim=16",
    "model.net.depth=1",
    "model.net.num_heads=2",
    "data.seq_len=16",
    "data.batch_size=4",
    "data.split_blocks=10",
    "trainer.val_check_interval=2",
]


def table(tmp_path: Path, source: Path) -> list[str]:
    sets = [a for s in [*TINY, f"data.sources=[{source}]"] for a in ("--set", s)]
    return [
        "reproduce",
        "byte",
        "--config",
        str(REPO / "configs/byte/nibble_acc.yaml"),
        "--seeds",
        "0",
        "--max-steps",
        "4",
        "--repeats",
        "2",
        "--variants",
        "byte",
        "nibble_acc",
        *sets,
        "--runs",
        str(tmp_path / "runs"),
        "--out",
        str(tmp_path / "out"),
    ]


def test_byte_table_runs_resumes_and_reports(tmp_path: Path, capsys) -> None:
    source = tmp_path / "text.txt"
    source.write_text("To be, or not to be, that is the question. Ὅλοι οἱ ἄνθρωποι 人人生而自由\n" * 150)
    main(table(tmp_path, source))
    out = capsys.readouterr().out
    assert "[1/2] byte/seed0: done" in out and "[2/2] nibble_acc/seed0: done" in out
    report = json.loads((tmp_path / "out/results.json").read_text())
    assert set(report["summary"]) == {"byte", "nibble_acc"}
    for variant in ("byte", "nibble_acc"):
        run = report["runs"][f"{variant}/seed0"]
        assert run["test"]["test/bpb"] > 0 and run["test"]["test/bpb/text.txt"] == pytest.approx(
            run["test"]["test/bpb"]
        )
        assert [s for s, _ in run["val_curves"]["val/bpb"]] == [1, 3]  # every 2 steps, 0-based step of the log
        assert report["throughput"][variant]["train_tokens_per_s"] > 0
    assert report["throughput"]["byte"]["train_ratio"]["median"] == 1.0
    facts = report["facts"]
    assert facts["nibble_acc"]["params"] > facts["byte"]["params"]
    md = (tmp_path / "out/results.md").read_text()
    assert "| nibble_acc | 1 |" in md and "lightning-film reproduce byte" in md
    assert (tmp_path / "out/val_curves.png").read_bytes()[:4] == b"\x89PNG"
    # fp32 as every committed table, also on a machine whose bf16 units would make it the default
    (saved,) = (tmp_path / "runs/quick/byte/seed0/fit").glob("version_*/config.yaml")
    assert "precision: 32-true" in saved.read_text()

    # finished runs are read, not redone
    main(table(tmp_path, source))
    assert "finished before" in capsys.readouterr().out
    # a run killed after its checkpoint (no result.json yet) resumes from last.ckpt
    run_dir = tmp_path / "runs/quick/nibble_acc/seed0"
    (run_dir / "result.json").unlink()
    shutil.rmtree(run_dir / "test")
    main(table(tmp_path, source))
    out = capsys.readouterr().out
    assert "[2/2] nibble_acc/seed0: resuming" in out and "[1/2] byte/seed0: finished before" in out
    steps = [row["step"] for row in read_metrics(run_dir / "fit") if "val/bpb" in row]
    assert steps == [1, 3]  # the resumed fit was already at max_steps: nothing trained twice


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["reproduce", "nosuch"], "unknown table 'nosuch'; tables: byte, world-kid, world-recipe, world-conditioning"),
        (["reproduce", "byte", "--config", "missing.yaml"], "config 'missing.yaml' does not exist"),
        (["reproduce", "byte", "--max-steps", "0"], "--max-steps and --repeats must be >= 1"),
    ],
)
def test_reproduce_bad_input_is_one_line(argv: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


# -- the world tables: run plans and cost measurement (the training path is the runner's, tested above) --
def test_world_kid_plan_chains_pretraining_and_tests_the_finetuned_model(tmp_path: Path) -> None:
    from lightning_film.reproduce.world import PRESETS, kid_runs
    from lightning_film.reproduce.world_rows import KID_ROWS

    preset = PRESETS["world-kid"]["quick"]
    runs = kid_runs(preset, REPO / "configs/world", (0, 1), [("model.net.dim", "16")])
    keys = [r.key for r in runs]
    assert keys[:7] == ["pretrain/seed0", "pretrain_half/seed0", *(f"{r.name}/seed0" for r in KID_ROWS)]
    assert len(runs) == 14 and len(preset.seeds) >= 3
    pre = next(r for r in runs if r.key == "world_filmcond_pre/seed1")
    assert pre.after == ["pretrain/seed1"] and pre.fit_args[-1] == "{runs}/pretrain/seed1/checkpoints/last.ckpt"
    assert pre.test_args == ["--model.init_from", "null"]

    def steps(key: str) -> int:
        run = next(r for r in runs if r.key == key)
        return int(run.args[run.args.index("--trainer.max_steps") + 1])

    # the split row: pretraining + finetuning = the steps of a row trained from scratch
    half = next(r for r in runs if r.key == "world_filmcond_pre_half/seed1")
    assert half.after == ["pretrain_half/seed1"] and "pretrain_half/seed1/checkpoints" in half.fit_args[-1]
    assert steps("pretrain_half/seed1") + steps("world_filmcond_pre_half/seed1") == steps("world_filmcond/seed1")
    assert steps("pretrain/seed1") + steps("world_filmcond_pre/seed1") == 2 * steps("world_filmcond/seed1")
    for run in runs:
        assert run.config.is_file() and run.args[run.args.index("--model.net.dim") + 1] == "16"


def test_world_conditioning_covers_every_registered_pair_and_measures_costs() -> None:
    from lightning_film.registry import list_conditioners
    from lightning_film.reproduce.world import conditioning_rows
    from lightning_film.reproduce.world_measure import model_costs

    rows = conditioning_rows()
    assert {c for n, c in rows if n == "rmsnorm"} == set(list_conditioners())
    assert ("layernorm", "film") in rows and ("dyt", "film") in rows
    tiny = {"net": {"frame_size": 16, "dim": 16, "depth": 1, "num_heads": 2, "patch_size": 4}, "kid_feature": "tiny"}
    costs = model_costs(tiny, [("rmsnorm", "none"), ("rmsnorm", "film"), ("layernorm", "film")], 1, 1, 2)
    assert costs["rmsnorm + none"]["step_ratio_vs_none"]["median"] == 1.0
    assert costs["rmsnorm + film"]["params"] > costs["rmsnorm + none"]["params"]
    assert costs["rmsnorm + film"]["forward_gflops"] > costs["rmsnorm + none"]["forward_gflops"] > 0


def test_copy_baseline_scores_the_last_context_frame_on_the_test_windows(tmp_path: Path, monkeypatch) -> None:
    from torchmetrics.functional.image import peak_signal_noise_ratio

    from lightning_film.data.world import WorldDataModule
    from lightning_film.measure import machine_info
    from lightning_film.reproduce.world import PRESETS, Preset, analyse_kid
    from lightning_film.reproduce.world_measure import copy_baseline
    from lightning_film.reproduce.world_report import render_kid
    from tests.helpers.configs import world_config

    monkeypatch.setenv("LIGHTNING_FILM_CACHE", str(tmp_path / "cache"))
    config = world_config(tmp_path, 2, 2)
    preset = Preset(**{**PRESETS["world-kid"]["quick"].__dict__, "eval_samples": 10, "kid_subset_size": 4})
    got = copy_baseline(config, [], preset)
    dm = WorldDataModule(
        episodes=12, episode_length=8, frame_size=16, val_episodes=2, test_episodes=2, batch_size=4, max_eval_windows=16
    )
    dm.setup("test")
    batches = list(dm.test_dataloader())
    last = torch.cat([b["context"][:, -1] for b in batches])[:10].float()
    truth = torch.cat([b["target"] for b in batches])[:10].float()
    assert got["windows"] == 10
    assert got["psnr"] == pytest.approx(float(peak_signal_noise_ratio(last, truth, data_range=255.0)), rel=1e-5)
    assert abs(got["kid_mean"]) < 0.5 and got["kid_std"] >= 0
    report = {
        "preset_name": "quick",
        "preset": preset.__dict__,
        "seeds": [0],
        "overrides": [],
        "runs": {},
        "baseline": got,
        "command": "c",
        "date": "d",
        "commit": "x",
        "machine": machine_info(),
        "wall_s": 1.0,
    }
    assert "copy the last context frame" in render_kid(analyse_kid(report))


def test_execute_all_runs_jobs_at_a_time_and_keeps_after_first(tmp_path, monkeypatch) -> None:
    import threading
    import time as _time

    from lightning_film.reproduce import runner

    active, peak, finished = [0], [0], []
    lock = threading.Lock()

    def fake(run, root):
        with lock:
            assert all(k in finished for k in run.after), (run.key, finished)
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        _time.sleep(0.05)
        with lock:
            active[0] -= 1
            finished.append(run.key)
        return {"key": run.key, "test": {"test/x": 1.0}}, True

    monkeypatch.setattr(runner, "execute", fake)
    runs = [runner.Run("pre/seed0", Path("c.yaml")), runner.Run("pre/seed1", Path("c.yaml"))]
    runs += [runner.Run(f"row{i}/seed{s}", Path("c.yaml"), after=[f"pre/seed{s}"]) for i in range(3) for s in (0, 1)]
    lines: list[str] = []
    results = runner.execute_all(runs, tmp_path, say=lines.append, jobs=3)
    assert list(results) == [r.key for r in runs] and peak[0] == 3
    assert sum("done in" in line for line in lines) == len(runs)
    with pytest.raises(ValueError, match="jobs must be an integer >= 1, got 0"):
        runner.execute_all(runs, tmp_path, jobs=0)
    with pytest.raises(ValueError, match=r"run 'b' must come after \['a'\] in the list"):
        runner.execute_all([runner.Run("b", Path("c.yaml"), after=["a"]), runner.Run("a", Path("c.yaml"))], tmp_path)


def test_table_runs_train_in_fp32_unless_their_set_names_a_precision(tmp_path: Path) -> None:
    from lightning_film.reproduce import runner

    command = runner._command(
        "fit", runner.Run("a", Path("c.yaml"), ["--trainer.precision", "bf16-mixed"]), tmp_path, []
    )
    given = [command[i + 1] for i, arg in enumerate(command) if arg == "--trainer.precision"]
    assert given == ["32-true", "bf16-mixed"]  # the last one given wins: --set trainer.precision=...
    assert runner._command("test", runner.Run("b", Path("c.yaml")), tmp_path, []).count("32-true") == 1


def test_set_names_the_networks_arguments_under_net_as_the_older_commands_did_not() -> None:
    """``--set model.dim=64`` (the commands of tables made before ``model.net``) means ``model.net.dim``;
    the model's own settings and the data's stay where they are."""
    from lightning_film.reproduce.report import parse_override

    assert parse_override("model.dim=64") == ("model.net.dim", "64")
    assert parse_override("model.activation=gelu_tanh") == ("model.net.activation", "gelu_tanh")
    assert parse_override("model.net.dim=64") == ("model.net.dim", "64")
    assert parse_override("model.lr=0.1") == ("model.lr", "0.1")
    assert parse_override("data.seq_len=64") == ("data.seq_len", "64")
