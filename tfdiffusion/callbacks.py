"""Keras callbacks of a training run: atomic whole-model checkpoints (by epoch and by steps), stop at a step."""

import glob
import os
from typing import List, Optional

import keras
import numpy as np

from tfdiffusion import files
from tfdiffusion import validation

__all__ = ["optimizer_step", "AtomicCheckpoint", "StopAtStep", "remove_stale_temp_files"]


def remove_stale_temp_files(directory: str) -> List[str]:
    """Deletes the hidden `.NAME.*.tmp*` files that killed atomic writes left in `directory`.

    Returns:
        The removed paths.
    """
    removed = []
    for path in glob.glob(os.path.join(glob.escape(directory), ".*.tmp*")):
        if os.path.isfile(path):
            os.remove(path)
            removed.append(path)
    return removed



def optimizer_step(model) -> int:
    """The optimizer's step count as an int (also for a variable mirrored across the workers of a cluster)."""
    return int(np.asarray(keras.ops.convert_to_numpy(model.optimizer.iterations)))

class AtomicCheckpoint(keras.callbacks.Callback):
    """Saves the whole model (weights, EMA, optimizer state, step) to one .keras file.

    After every epoch and, with `every_steps`, every that many training
    steps. Unlike `keras.callbacks.ModelCheckpoint`, which writes in place,
    the file is written beside the target and renamed over it, so a kill at
    any moment leaves the previous complete checkpoint (and at most a hidden
    temporary file, which `remove_stale_temp_files` clears).

    Args:
        path: the `.keras` file.
        every_steps: also save when the optimizer's step count is a
            multiple of this (None: per epoch only).
    """

    def __init__(self, path: str, every_steps: Optional[int] = None):
        super().__init__()
        self.path = path
        self.every_steps = validation.check_optional_int("every_steps", every_steps)
        self._saved_at = None

    def _save(self):
        step = optimizer_step(self.model)
        if step == self._saved_at:
            return
        with files.atomic_output(self.path) as tmp:
            self.model.save(tmp)
        self._saved_at = step

    def on_train_batch_end(self, batch, logs=None):
        if self.every_steps and optimizer_step(self.model) % self.every_steps == 0:
            self._save()

    def on_epoch_end(self, epoch, logs=None):
        self._save()


class StopAtStep(keras.callbacks.Callback):
    """Stops `fit` once the optimizer has taken `total_steps` steps."""

    def __init__(self, total_steps: int):
        super().__init__()
        self.total_steps = validation.check_int("total_steps", total_steps)

    def on_train_batch_end(self, batch, logs=None):
        if optimizer_step(self.model) >= self.total_steps:
            self.model.stop_training = True
