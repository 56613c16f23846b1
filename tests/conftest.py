"""Shared fixtures: the repository root, and configs/example.yaml shrunk to a few seconds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def repo_root() -> Path:
    return REPO


@pytest.fixture
def tiny_cli_args(tmp_path: Path) -> list[str]:
    """Arguments after ``fit``/``validate``/... that run configs/example.yaml in seconds on CPU.

    Everything it writes goes under ``tmp_path``; ``last.ckpt`` to ``tmp_path / "checkpoints"``.
    """
    overrides = {
        "trainer.default_root_dir": tmp_path,
        "trainer.max_steps": 2,
        "trainer.val_check_interval": 2,
        "trainer.limit_val_batches": 1,
        "trainer.limit_test_batches": 1,
        "trainer.limit_predict_batches": 1,
        "trainer.log_every_n_steps": 1,
        "trainer.enable_progress_bar": "false",
        "trainer.enable_model_summary": "false",
        # the tests read metrics.csv; with TensorBoard installed Lightning's default logger is TensorBoard's
        "trainer.logger": json.dumps(
            {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(tmp_path)}}
        ),
        "model.dim": 16,
        "model.num_heads": 2,
        "data.seq_len": 16,
        "data.batch_size": 4,
        "data.val_windows": 8,
    }
    config = REPO / "configs" / "example.yaml"
    return ["--config", str(config)] + [a for k, v in overrides.items() for a in (f"--{k}", str(v))]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tests run on tiny tensors, which gain nothing from intra-op threads; on a busy 2-core
    machine OpenMP's waiting threads slow them down a hundredfold (measured: a tiny world-model
    step 0.55 s with 2 threads vs 0.003 s with 1). Subprocess tests set their own threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _registries_as_they_were():
    """A test that imports a module registering a name (examples/custom_conditioner.py registers
    ``lowrank_film``) leaves it registered for every later test: tests that read the registry
    would then depend on the order they run in. Each test gets the registries back as it found them."""
    from lightning_film.registry import Registry

    before = {id(r): (r, dict(r._entries)) for r in Registry.every()}
    yield
    for registry, entries in before.values():
        registry._entries.clear()
        registry._entries.update(entries)


@pytest.fixture(autouse=True)
def _no_bf16_units(monkeypatch: pytest.MonkeyPatch):
    """The command picks bf16-mixed where the chip has bf16 units (``lightning_film.precision``);
    in-process tests see a chip without them, so their numbers do not depend on the machine. The
    precision tests put units back themselves."""
    from lightning_film import precision

    monkeypatch.setattr(precision, "_cpu_bf16_units", lambda: None)
    monkeypatch.setattr(precision, "_cuda_bf16_units", lambda: None)
