"""Print what ``predict`` sampled: ``lightning-film predict`` shows generated text.

Any LightningModule whose ``predict_step`` returns ``[{"prompt": bytes, "sample": bytes}, ...]``
(:class:`~lightning_film.models.ByteLM` does) gets its samples printed as they are made, and
optionally saved to one file at the end.
"""

from __future__ import annotations

import sys
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from lightning_film.io import write_atomic

__all__ = ["PrintSamples", "show_bytes"]


def show_bytes(data: bytes) -> str:
    """Bytes as text: UTF-8 where valid, ``\\xNN`` escapes where not (a byte model may emit any byte)."""
    return data.decode("utf-8", errors="backslashreplace")


class PrintSamples(Callback):
    """Print each predicted sample to stdout (prompt, then the continuation).

    Args:
        path: also write every sample (raw bytes, prompt included, samples separated by a
            blank line) to this file when ``predict`` ends; written to a temporary name and
            renamed, so an interrupted run leaves no partial file.
        show_prompt: print the prompt before its continuation.
    """

    def __init__(self, path: str | None = None, show_prompt: bool = True) -> None:
        super().__init__()
        self.path, self.show_prompt = path, show_prompt
        self._samples: list[bytes] = []

    def on_predict_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._samples = []

    def on_predict_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not trainer.is_global_zero:
            return
        for item in outputs or []:
            prompt, sample = bytes(item["prompt"]), bytes(item["sample"])
            self._samples.append(prompt + sample)
            number = len(self._samples)
            head = f"--- sample {number}: {len(prompt)} prompt bytes + {len(sample)} sampled ---"
            text = show_bytes(prompt + sample) if self.show_prompt else show_bytes(sample)
            # through the progress bar, which clears its line first: a plain print lands after the
            # bar's unfinished line, gluing the header to it
            bar = trainer.progress_bar_callback
            if bar is not None and getattr(bar, "is_enabled", False):
                bar.print(f"{head}\n{text}\n")
            else:
                print(f"{head}\n{text}\n", file=sys.stdout, flush=True)

    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.path is None or not trainer.is_global_zero:
            return
        write_atomic(self.path, b"\n\n".join(self._samples))
