"""Training throughput for both models: Lightning's ``ThroughputMonitor``, attached by the models'
``configure_callbacks`` so every run logs it without a config entry."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lightning.pytorch.callbacks import ThroughputMonitor

#: batches per throughput window: the logged rate is over the last WINDOW steps
WINDOW = 10


class TrainThroughput(ThroughputMonitor):
    """``ThroughputMonitor`` for training only: logs ``train/device/samples_per_sec`` (and
    ``train/device/items_per_sec`` with ``length_fn``: tokens for the byte model) at each logging
    step, over the last :data:`WINDOW` batches, wall time between batch ends (data loading and the
    optimizer step included, validation time excluded). Test and predict are left alone: their
    ``test/`` keys are the model's metrics, which the reproduce tables read whole."""

    def __init__(self, batch_size_fn: Callable[[Any], int], length_fn: Callable[[Any], int] | None = None) -> None:
        super().__init__(batch_size_fn, length_fn, window_size=WINDOW)

    def on_test_batch_end(self, *args: Any, **kwargs: Any) -> None:
        pass

    def on_predict_batch_end(self, *args: Any, **kwargs: Any) -> None:
        pass
