"""Exact resume: a fit killed with SIGKILL after a checkpoint and resumed with `--ckpt_path last`
continues at the same step with the same data order, and its losses equal an uninterrupted fit's.
Both models: the byte model draws nothing at random in a step; the world model draws its times,
noise and condition dropout from a generator seeded by (seed, step, batch), not the global RNG.

Runs the real `lightning-film fit` in subprocesses (a kill must not take pytest with it)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from lightning_film.reproduce.runner import read_metrics
from tests.helpers.configs import CONFIGS, run_cli


def fit(config: Path, root: Path, *extra: str):
    return run_cli("fit", config, root, *extra)


STEPS, EVERY, KILL_AT = 8, 2, 5  # checkpoints at steps 2, 4, 6, 8; killed before step 5 runs
TOLERANCE = 1e-6  # relative; CPU, one process, same ops in the same order: equal in practice


def losses(root: Path) -> dict[int, float]:
    return {int(r["step"]): r["train/loss"] for r in read_metrics(root / "log") if "train/loss" in r}


@pytest.mark.parametrize("model", ["byte", "world"])
def test_sigkill_then_resume_equals_uninterrupted(tmp_path: Path, model: str) -> None:
    config = CONFIGS[model](tmp_path, STEPS, EVERY)
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


@pytest.mark.parametrize("model", ["byte", "world"])
def test_sigterm_saves_exits_nonzero_and_resumes_exactly(tmp_path: Path, model: str) -> None:
    """No periodic checkpoint before the signal: what resumes is the checkpoint SIGTERM saved."""
    config = CONFIGS[model](tmp_path, STEPS, STEPS)
    whole = fit(config, tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-2000:]

    term = json.dumps([{"class_path": "tests.helpers.kill.TermAtStep", "init_args": {"step": KILL_AT}}])
    stopped = fit(config, tmp_path / "stopped", "--trainer.callbacks+", term)
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-2000:]
    last = tmp_path / "stopped" / "checkpoints" / "last.ckpt"
    assert stopped.stderr.strip().splitlines()[-1] == (
        f"lightning-film: error: stopped by SIGTERM; saved {last} at step {KILL_AT + 1}; resume with --ckpt_path last"
    )
    assert max(losses(tmp_path / "stopped")) == KILL_AT  # the batch under way when the signal came finished

    resumed = fit(config, tmp_path / "stopped", "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    expected, got = losses(tmp_path / "whole"), losses(tmp_path / "stopped")
    assert sorted(got) == list(range(STEPS))  # every step once: nothing lost, nothing redone
    for step in range(STEPS):
        assert got[step] == pytest.approx(expected[step], rel=TOLERANCE), f"step {step}"
