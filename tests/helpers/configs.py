"""Tiny configs and a subprocess runner for tests that run the real `lightning-film` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DIST_VARS = ("LOCAL_RANK", "RANK", "WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE")


def _write_config(
    config: Path, max_steps: int, every: int, val: bool, model: tuple[str, str], data: tuple[str, str]
) -> Path:
    """A config file: a short fp32 CPU trainer checkpointing every ``every`` steps (validating once at
    the end if ``val``), then ``model`` and ``data`` as (class_path, inline init_args)."""
    validation = f"val_check_interval: {max_steps}\n  check_val_every_n_epoch: null" if val else "limit_val_batches: 0"
    config.write_text(
        f"""
seed_everything: 3
trainer:
  accelerator: cpu
  devices: 1
  precision: 32-true  # not the machine's pick (lightning_film.precision): these tests compare numbers
  max_steps: {max_steps}
  {validation}
  log_every_n_steps: 1
  enable_progress_bar: false
  enable_model_summary: false
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{every_n_train_steps: {every}, save_last: true}}
model:
  class_path: {model[0]}
  init_args: {model[1]}
data:
  class_path: {data[0]}
  init_args: {data[1]}
"""
    )
    return config


def byte_config(
    tmp_path: Path,
    max_steps: int,
    every: int,
    batch_size: int = 4,
    val: bool = False,
    windows: int = 20,
    name: str = "byte.yaml",
) -> Path:
    """A tiny ByteLM config on a small multilingual file, checkpointing every ``every`` steps.

    The file is ``tmp_path/text.txt`` for every config of a test: a source's split is seeded by
    its name (its path), so two configs compare only if they read the same path."""
    text = tmp_path / "text.txt"
    text.write_text("To be, or not to be, that is the question. Ὅλοι οἱ ἄνθρωποι 人人生而自由\n" * 120)
    model = "{net: {dim: 16, depth: 1, num_heads: 2, nibble_dim: 8, acc_dim: 4}, warmup_steps: 2}"
    data = (
        f'{{sources: ["{text}"], seq_len: 16, batch_size: {batch_size}, split_blocks: 10, '
        f"train_windows_per_epoch: {windows}}}"
    )
    return _write_config(tmp_path / name, max_steps, every, val, ("ByteLM", model), ("ByteDataModule", data))


def world_config(
    tmp_path: Path,
    max_steps: int,
    every: int,
    batch_size: int = 4,
    val: bool = False,
    windows: int = 20,
    name: str = "world.yaml",
) -> Path:
    """A tiny WorldModel config (16x16 frames, one block, the ``tiny`` KID features, classifier-free
    dropout on) on a small bounce_room recording (made in the test's cache on first use),
    checkpointing every ``every`` steps."""
    model = (
        "{net: {patch_size: 4, dim: 16, depth: 1, num_heads: 2}, sample_steps: 2, kid_feature: tiny, "
        "kid_subset_size: 4, kid_subsets: 2, max_eval_samples: 8, rollout_steps: 2, warmup_steps: 2, "
        "cond_dropout: 0.25}"
    )
    data = (
        f"{{episodes: 12, episode_length: 8, frame_size: 16, val_episodes: 2, test_episodes: 2, "
        f"batch_size: {batch_size}, train_windows_per_epoch: {windows}, max_eval_windows: 16}}"
    )
    return _write_config(tmp_path / name, max_steps, every, val, ("WorldModel", model), ("WorldDataModule", data))


CONFIGS = {"byte": byte_config, "world": world_config}


def run_cli(stage: str, config: Path, root: Path, *extra: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``lightning-film STAGE --config CONFIG`` in a subprocess, logging to ``root/log`` (CSV),
    with the distributed environment variables cleared (a DDP child of pytest must not inherit them)
    and the data cache in ``config``'s folder (a world recording is made there once per test)."""
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    env["LIGHTNING_FILM_CACHE"] = str(config.parent / "cache")
    logger = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(root), "name": "log"}}
    command = [
        sys.executable,
        "-m",
        "lightning_film.cli",
        stage,
        "--config",
        str(config),
        "--trainer.default_root_dir",
        str(root),
        "--trainer.logger",
        json.dumps(logger),
        *extra,
    ]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
