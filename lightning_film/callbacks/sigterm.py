"""Save a resumable checkpoint when a run is asked to stop (SIGTERM) during fit.

Clusters send SIGTERM some time before a kill. Lightning's signal connector already catches it
(``trainer.received_sigterm``) and its loops raise :class:`SIGTERMException` at the end of the
current batch; by itself that exits with status 0 and loses the steps since the last checkpoint.
:class:`SigtermCheckpoint` saves then, with ``trainer.save_checkpoint``, to ``last.ckpt`` where
``--ckpt_path last`` looks, and the CLI exits with status 143. It is not Lightning's
``OnExceptionCheckpoint``: with one of those in the callbacks, a plain ``fit`` silently resumes
from ``last`` (Lightning's checkpoint connector), and it saves on any exception, so a run that
failed for another reason (NaN weights, a bug) would replace a good ``last.ckpt``.
"""

from __future__ import annotations

import os
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, OnExceptionCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

__all__ = ["SIGTERMException", "SigtermCheckpoint", "add_sigterm_checkpoint"]


class SigtermCheckpoint(Callback):
    """Save ``ckpt_path`` when fit stops on SIGTERM; the saved path is added to the exception as a
    note, for the CLI's message."""

    def __init__(self, ckpt_path: str) -> None:
        self.ckpt_path = ckpt_path

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException) and trainer.state.fn == TrainerFn.FITTING:
            trainer.save_checkpoint(self.ckpt_path)
            exception.add_note(f"saved {self.ckpt_path} at step {trainer.global_step}")


def add_sigterm_checkpoint(trainer: Trainer) -> Any:
    """Add a :class:`SigtermCheckpoint` writing the first ``save_last`` ModelCheckpoint's last file,
    unless the run has no such checkpoint or already has an on-exception checkpoint of its own."""
    if any(isinstance(cb, (OnExceptionCheckpoint, SigtermCheckpoint)) for cb in trainer.callbacks):
        return None
    for cb in trainer.checkpoint_callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.save_last and cb.dirpath and "://" not in str(cb.dirpath):
            saver = SigtermCheckpoint(os.path.join(cb.dirpath, cb.CHECKPOINT_NAME_LAST + cb.FILE_EXTENSION))
            trainer.callbacks.append(saver)
            return saver
    return None
