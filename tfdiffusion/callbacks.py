"""Keras callbacks of a training run: atomic whole-model checkpoints (by epoch and by steps), stop at a step,
and a fixed-seed sample grid (with an optional FID/KID) to PNG and TensorBoard."""

import glob
import os
from typing import Any, Callable, List, Optional

import keras
import numpy as np
import tensorflow as tf

from tfdiffusion import features
from tfdiffusion import files
from tfdiffusion import images as tfd_images
from tfdiffusion import metrics
from tfdiffusion import samplers
from tfdiffusion import validation

__all__ = ["optimizer_step", "AtomicCheckpoint", "SampleGrid", "StopAtStep", "remove_stale_temp_files"]


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


class SampleGrid(keras.callbacks.Callback):
    """Every `every_epochs` epochs: a fixed-seed sample grid to PNG and TensorBoard, and optionally FID/KID.

    The same seed (hence the same x_T and labels) at every point, so the
    grids show the model changing, not the noise. The grid is
    `directory/samples_step{step:07d}.png` (atomic) and, with `log_dir`, a
    TensorBoard image `samples` at the optimizer step. With `real_images`
    and `feature_extractor`, `metric_images` images are drawn (the grid is
    their first `num_images`) and `fid` and/or `kid` against `real_images`
    go to TensorBoard scalars and to the epoch's logs (hence the History).

    Args:
        directory: where the PNGs go (created).
        num_images: images in the grid.
        every_epochs: draw after every this many epochs.
        sampler, num_steps, guidance_scale, seed: as `DiffusionModel.generate`'s.
        labels: `[num_images]` (or `[metric_images]`) labels of a conditional
            model; None cycles through the classes.
        columns: grid columns (default: about square).
        log_dir: TensorBoard log folder (images and scalars), or None.
        real_images: uint8 `[M, H, W, C]` held-out images for FID/KID, or None.
        feature_extractor: images -> features (e.g. `features.shapes_features()`).
        metric_images: generated images for the metrics (at least 2).
        metric_names: a subset of ("fid", "kid").
        skip_from_step: draw nothing once the optimizer step reaches this
            (a run's last epoch, whose samples the run draws anyway).
    """

    def __init__(self, directory: str, num_images: int = 16, every_epochs: int = 1, sampler: str = "ddim",
                 num_steps: int = 50, guidance_scale: float = 1.0, seed: int = 0, labels: Any = None,
                 columns: Optional[int] = None, log_dir: Optional[str] = None, real_images: Any = None,
                 feature_extractor: Optional[Callable] = None, metric_images: int = 256,
                 metric_names=("fid", "kid"), skip_from_step: Optional[int] = None):
        super().__init__()
        self.directory = os.fspath(directory)
        self.num_images = validation.check_int("num_images", num_images, 1)
        self.every_epochs = validation.check_int("every_epochs", every_epochs, 1)
        self.generate_kwargs = dict(sampler=samplers.get_sampler(sampler).name,
                                    num_steps=validation.check_int("num_steps", num_steps, 1),
                                    guidance_scale=validation.check_number("guidance_scale", guidance_scale),
                                    seed=validation.check_seed("seed", seed))
        self.labels = labels
        self.columns = validation.check_optional_int("columns", columns)
        self.log_dir = log_dir
        if (real_images is None) != (feature_extractor is None):
            raise ValueError("`real_images` and `feature_extractor` go together (both for FID/KID, or neither). "
                             f"Received: real_images={'given' if real_images is not None else None}, "
                             f"feature_extractor={feature_extractor!r}")
        if feature_extractor is not None:
            validation.check_callable("feature_extractor", feature_extractor, None, call="feature_extractor(images)")
        self.real_images = real_images
        self.feature_extractor = feature_extractor
        self.metric_images = validation.check_int("metric_images", metric_images, 2)
        if isinstance(metric_names, str):
            raise TypeError(f"`metric_names` must be a sequence of names from ('fid', 'kid'), not one string. "
                            f"Received: metric_names={metric_names!r} (write ({metric_names!r},))")
        self.metric_names = tuple(metric_names)
        for name in self.metric_names:
            validation.check_choice("metric_names", name, ("fid", "kid"))
        self.skip_from_step = validation.check_optional_int("skip_from_step", skip_from_step, 0)
        self.paths: List[str] = []
        self._writer = None

    def _summary_writer(self):
        if self.log_dir is None:
            return None
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "samples"))
        return self._writer

    def _count(self) -> int:
        """Images drawn per grid: the grid's, or the metrics' when there are more."""
        return max(self.num_images, self.metric_images) if self.real_images is not None else self.num_images

    def on_train_begin(self, logs=None):
        """Checks the grid's `generate` arguments against the model (labels, steps, guidance), and the real
        images' shape, before training."""
        self.model.check_generate_arguments(self._count(), labels=self.labels, **self.generate_kwargs)
        if self.real_images is not None:
            real = features.as_float_images(self.real_images, "real_images")
            if tuple(real.shape[1:]) != tuple(self.model.image_shape) or real.shape[0] < 2:
                raise ValueError(f"`real_images` must be at least 2 images of the model's shape [M, "
                                 f"{', '.join(map(str, self.model.image_shape))}]. Received shape {tuple(real.shape)}")

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_epochs:
            return
        step = optimizer_step(self.model)
        if self.skip_from_step is not None and step >= self.skip_from_step:
            return
        with_metrics = self.real_images is not None
        # A diverged (NaN) model's grid is black with a warning; the run itself goes on as Keras would.
        generated = self.model.generate(self._count(), labels=self.labels, on_non_finite="warn",
                                        **self.generate_kwargs)
        grid = generated[:self.num_images]
        os.makedirs(self.directory, exist_ok=True)
        path = os.path.join(self.directory, f"samples_step{step:07d}.png")
        tfd_images.save_grid(grid, path, columns=self.columns)
        self.paths.append(path)
        values = {}
        if with_metrics:
            for name in self.metric_names:
                metric = (metrics.FrechetInceptionDistance if name == "fid"
                          else metrics.KernelInceptionDistance)(self.feature_extractor)
                metric.update_state(self.real_images, generated)
                values[name] = float(metric.result())
            if logs is not None:
                logs.update(values)
        writer = self._summary_writer()
        if writer is not None:
            with writer.as_default():
                tf.summary.image("samples", tfd_images.make_grid(grid, self.columns)[None], step=step)
                for name, value in values.items():
                    tf.summary.scalar(name, value, step=step)
            writer.flush()
