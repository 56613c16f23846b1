"""Both models log training throughput through Lightning's ThroughputMonitor (attached by their
configure_callbacks): samples/s, and tokens/s for the byte model, in the logger; nothing added to
the test metrics the tables read."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning.pytorch as L
import pytest
from lightning.pytorch.loggers import CSVLogger

from lightning_film.models.throughput import WINDOW, TrainThroughput
from tests.helpers import tiny
from tests.test_byte_lm import SEQ, TINY, datamodule, sources  # noqa: F401  (sources: a fixture)
from tests.test_world_model import model as world_model
from tests.test_world_model import world_data


def _fit_and_test(tmp_path: Path, model: L.LightningModule, dm: L.LightningDataModule) -> list[dict[str, str]]:
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=WINDOW + 2,
        log_every_n_steps=1,
        limit_val_batches=1,
        limit_test_batches=1,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        logger=CSVLogger(tmp_path / "logs", name="", version=""),
        default_root_dir=tmp_path,
    )
    trainer.fit(model, dm)
    assert sum(isinstance(c, TrainThroughput) for c in trainer.callbacks) == 1
    tested = trainer.test(model, dm, verbose=False)[0]
    assert not {"test/time", "test/samples", "test/batches"} & set(tested)
    with open(tmp_path / "logs" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert not any(k.startswith("test/") and k not in tested for k in rows[0]), "test keys beyond the model's"
    return [r for r in rows if r.get("train/device/samples_per_sec")]


def test_the_byte_model_logs_samples_and_tokens_per_second(tmp_path: Path, sources: list[str]) -> None:  # noqa: F811

    L.seed_everything(0, verbose=False)
    rated = _fit_and_test(tmp_path, tiny.byte_lm(**TINY), datamodule(sources, batch_size=4))
    assert len(rated) == 3  # steps WINDOW .. WINDOW + 2: the window is full
    for row in rated:
        samples, tokens = float(row["train/device/samples_per_sec"]), float(row["train/device/items_per_sec"])
        assert samples > 0 and tokens == pytest.approx(SEQ * samples)  # every position of (4, SEQ) batches


def test_the_world_model_logs_samples_per_second(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIGHTNING_FILM_CACHE", str(tmp_path / "cache"))
    L.seed_everything(0, verbose=False)
    rated = _fit_and_test(tmp_path, world_model(rollout_steps=0, grid_windows=0), world_data())
    assert len(rated) == 3 and all(float(r["train/device/samples_per_sec"]) > 0 for r in rated)
