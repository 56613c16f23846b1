"""Exact resume: a fit killed with SIGKILL after a checkpoint and resumed with `--ckpt_path last`
continues at the same step with the same data order, and its losses equal an uninterrupted fit's.

Runs the real `lightning-film fit` in subprocesses (a kill must not take pytest with it)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_film.reproduce.runner import read_metrics

REPO = Path(__file__).resolve().parents[1]
STEPS, EVERY, KILL_AT = 8, 2, 5  # checkpoints at steps 2, 4, 6, 8; killed before step 5 runs
TOLERANCE = 1e-6  # relative; CPU, one process, same ops in the same order: equal in practice


def byte_config(tmp_path: Path) -> Path:
    text = tmp_path / "text.txt"
    text.write_text("To be, or not to be, that is the question. Ὅλοι οἱ ἄνθρωποι 人人生而自由\n" * 120)
    config = tmp_path / "byte.yaml"
    config.write_text(
        f"""
seed_everything: 3
trainer:
  accelerator: cpu
  devices: 1
  max_steps: {STEPS}
  limit_val_batches: 0
  log_every_n_steps: 1
  enable_progress_bar: false
  enable_model_summary: false
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{every_n_train_steps: {EVERY}, save_last: true}}
model:
  class_path: ByteLM
  init_args: {{dim: 16, depth: 1, num_heads: 2, seq_len: 16, nibble_dim: 8, acc_dim: 4, warmup_steps: 2}}
data:
  class_path: ByteDataModule
  init_args: {{sources: ["{text}"], seq_len: 16, batch_size: 4, split_blocks: 10, train_windows_per_epoch: 20}}
"""
    )
    return config


def fit(config: Path, root: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    command = [
        sys.executable, "-m", "lightning_film.cli", "fit", "--config", str(config),
        "--trainer.default_root_dir", str(root), "--trainer.logger",
        json.dumps({"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(root), "name": "log"}}),
        *extra,
    ]  # fmt: skip
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def losses(root: Path) -> dict[int, float]:
    return {int(r["step"]): r["train/loss"] for r in read_metrics(root / "log") if "train/loss" in r}


@pytest.mark.parametrize("model", ["byte"])
def test_sigkill_then_resume_equals_uninterrupted(tmp_path: Path, model: str) -> None:
    config = byte_config(tmp_path)
    whole = fit(config, tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-2000:]

    killer = json.dumps([{"class_path": "tests.helpers.kill.KillAtStep", "init_args": {"step": KILL_AT}}])
    killed = fit(config, tmp_path / "killed", "--trainer.callbacks+", killer)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    before = losses(tmp_path / "killed")
    assert max(before) == KILL_AT - 1  # it really died mid-run, at the step we chose

    resumed = fit(config, tmp_path / "killed", "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    expected, got = losses(tmp_path / "whole"), losses(tmp_path / "killed")
    assert sorted(expected) == list(range(STEPS))
    # the resumed run re-trains steps 4.. from the step-4 checkpoint: same steps, same losses
    resumed_steps = [s for s in got if s >= 4]
    assert resumed_steps == list(range(4, STEPS))
    for step in range(STEPS):
        assert got[step] == pytest.approx(expected[step], rel=TOLERANCE), f"step {step}"
