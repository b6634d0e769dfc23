"""Sampling from an exported SavedModel in-process: `load_saved_model(path).generate(...)`, no `.keras` needed.

`ServedModel.generate` takes `DiffusionModel.generate`'s arguments, checks
them against the model's description (`assets.extra/tfdiffusion.json`) and
calls the `generate_<sampler>` signature: up to `max_images` images come
from one call and equal `DiffusionModel.generate`'s for the same seed and
settings (same XLA mode). `load_generator` loads either kind of model.

A SavedModel is a program. Before anything of it runs, its graph is checked
against the ops tfdiffusion's own exports use (`saved_model_check`): a graph
that reads or writes files, runs Python or talks to other machines is
refused, naming the op. `trust_graph=True` skips the check, for a file whose
source you trust.
"""

import json
import os
import re
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import numpy as np
import tensorflow as tf
from absl import logging as absl_logging

from tfdiffusion import random as tfd_random
from tfdiffusion import validation
from tfdiffusion.export import METADATA_FILE
from tfdiffusion.export import METADATA_FORMAT
from tfdiffusion.export import resolve_version_dir
from tfdiffusion.export_signatures import NON_FINITE_IMAGES
from tfdiffusion.generation import merge_eta
from tfdiffusion.generation import report_progress
from tfdiffusion.loading import load_model
from tfdiffusion.saved_model_check import check_saved_model_ops
from tfdiffusion.serving import generate_inputs

__all__ = ["ServedModel", "is_saved_model", "load_generator", "load_saved_model"]


def is_saved_model(path: str) -> bool:
    """True for a SavedModel version directory, or a model directory holding integer versions."""
    try:
        resolve_version_dir(path)
    except FileNotFoundError:
        return False
    return True


class ServedModel:
    """An exported tfdiffusion SavedModel, loaded with `tf.saved_model.load`.

    Attributes:
        path: the version directory loaded.
        image_shape: `(H, W, C)`.
        num_classes: classes of a conditional model, or None.
        num_timesteps: the diffusion's T.
        samplers: the exported sampler names.
        default_sampler: the sampler of `generate` / `serving_default`.
        max_images: the largest batch one signature call takes.
        jit_compile: whether the sampling loops were compiled with XLA.

    Args:
        path: a version directory, or a model directory (its latest version).
        trust_graph: skip the op check (`saved_model_check.check_saved_model_ops`)
            and run whatever the graph holds; only for a file you trust.

    Raises:
        saved_model_check.UnsafeSavedModelError: (a ValueError) the graph
            holds ops tfdiffusion's exports never use; nothing was run.
    """

    def __init__(self, path: str, trust_graph: bool = False):
        trust_graph = validation.check_bool("trust_graph", trust_graph)
        self.path = resolve_version_dir(path)
        metadata_path = os.path.join(self.path, METADATA_FILE)
        if not os.path.isfile(metadata_path):
            raise ValueError(f"{self.path!r} is a SavedModel but not one exported by tfdiffusion "
                             f"(no {METADATA_FILE}); load it with tf.saved_model.load")
        with open(metadata_path) as file:
            self.metadata: Dict[str, Any] = json.load(file)
        if self.metadata.get("format") != METADATA_FORMAT:
            raise ValueError(f"{metadata_path!r} is not a tfdiffusion export description "
                             f"(format {self.metadata.get('format')!r})")
        self.image_shape: Tuple[int, ...] = tuple(self.metadata["image_shape"])
        self.num_classes: Optional[int] = self.metadata["num_classes"]
        self.num_timesteps: int = self.metadata["num_timesteps"]
        self.samplers: Tuple[str, ...] = tuple(self.metadata["samplers"])
        self.default_sampler: str = self.metadata["default_sampler"]
        self.max_images: int = self.metadata["max_images"]
        self.jit_compile: bool = self.metadata["jit_compile"]
        if not trust_graph:
            check_saved_model_ops(self.path)  # reads saved_model.pb only; runs nothing
        # The export leaves out gradient functions (serving never differentiates); loading warns of
        # each function that has none. Those warnings would be noise here.
        verbosity = absl_logging.get_verbosity()
        absl_logging.set_verbosity(absl_logging.ERROR)
        try:
            self._loaded = tf.saved_model.load(self.path)
        finally:
            absl_logging.set_verbosity(verbosity)

    def __repr__(self) -> str:
        shape = "x".join(map(str, self.image_shape))
        classes = f"{self.num_classes} classes" if self.num_classes else "unconditional"
        return (f"ServedModel({self.path!r}: {shape}, {classes}, T={self.num_timesteps}, samplers "
                f"{', '.join(self.samplers)}, at most {self.max_images} images per call)")

    def _check_fixed(self, **given: Any) -> None:
        """Refuses settings that differ from the ones fixed in the exported graphs."""
        for name, value in given.items():
            exported = self.metadata.get(name)
            if value is not None and value != exported:
                raise ValueError(f"This SavedModel was exported with {name}={exported!r}; it is fixed in its "
                                 f"graphs. Received: {name}={value!r} (re-export to change it)")

    @staticmethod
    def _options(sampler: str, defaults: Mapping[str, float], eta: Optional[float],
                 options: Optional[Mapping[str, float]]) -> Dict[str, float]:
        """The signature's option values: `options` (and the `eta` shortcut) over the sampler's defaults."""
        given = merge_eta(eta, options)
        unknown = sorted(set(given) - set(defaults))
        if unknown:
            takes = f"takes {sorted(defaults)}" if defaults else "takes no options"
            raise ValueError(f"sampler {sampler!r} {takes}. Received: "
                             + ", ".join(f"{name}={given[name]!r}" for name in unknown))
        values = dict(defaults)
        values.update({name: validation.check_number(name, value, 0.0) for name, value in given.items()
                       if value is not None})
        return values

    def _labels(self, num_images: int, labels: Any) -> Optional[np.ndarray]:
        if self.num_classes is None:
            if labels is not None:
                raise ValueError("`labels` were given but the model is unconditional (num_classes=None).")
            return None
        if labels is None:
            return np.arange(num_images, dtype=np.int32) % self.num_classes
        values = np.asarray(labels)
        if values.dtype == bool or not np.issubdtype(values.dtype, np.integer):
            raise TypeError(f"`labels` must be integers in [0, {self.num_classes}). Received: labels={labels!r}")
        values = np.broadcast_to(values, [num_images]) if values.ndim == 0 else values
        if values.shape != (num_images,):
            raise ValueError(f"`labels` must be {num_images} integers (one per image). Received shape "
                             f"{values.shape}")
        if values.min() < 0 or values.max() >= self.num_classes:
            raise ValueError(f"`labels` must be in [0, {self.num_classes}). Received values from "
                             f"{values.min()} to {values.max()}")
        return values.astype(np.int32)

    def generate(self, num_images: int, sampler: Optional[str] = None, num_steps: int = 50,
                 seed: Optional[int] = None, labels: Any = None, guidance_scale: float = 1.0,
                 eta: Optional[float] = None, clip_denoised: Optional[bool] = None,
                 spacing: Optional[str] = None, batch_size: Optional[int] = None,
                 jit_compile: Optional[bool] = None,
                 progress: Optional[Callable[[int, int], None]] = None,
                 threshold: Optional[float] = None,
                 options: Optional[Mapping[str, float]] = None) -> np.ndarray:
        """Samples images; the arguments are `DiffusionModel.generate`'s.

        Args:
            num_images: how many images.
            sampler: an exported sampler (default: `default_sampler`).
            num_steps: sampling steps in [1, T].
            seed: int (None: random).
            labels: ints `[num_images]` or one int (conditional; None cycles
                through the classes).
            guidance_scale: classifier-free guidance scale (conditional only).
            eta: the sampler's `eta` option, if it takes one (None: its default).
            clip_denoised, spacing, threshold: fixed at export (see
                `metadata`); None or the exported value, else a ValueError.
            batch_size: images per signature call, at most `max_images`
                (default: `min(num_images, max_images)`). The first batch
                uses `seed` itself, later ones seeds derived from it, so
                batches after the first differ from `DiffusionModel.generate`'s.
            jit_compile: None or the export's XLA mode (it is fixed in the graph).
            progress: optional `progress(done, total)`, called with `(0,
                num_images)` before sampling and after each batch.
            options: the sampler's other run-time options by name, e.g.
                `{"churn": 10.0}` for "heun" (None: the defaults).

        Returns:
            uint8 numpy array `[num_images, H, W, C]`.
        """
        num_images = validation.check_int("num_images", num_images)
        sampler = self.default_sampler if sampler is None else validation.check_choice(
            "sampler", sampler, self.samplers)
        info = self.metadata["samplers"][sampler]
        num_steps = validation.check_int("num_steps", num_steps, info["min_steps"], self.num_timesteps)
        seed = tfd_random.check_seed(seed)
        seed = int(tfd_random.seed_pair(seed)[0]) if seed is None else seed
        guidance_scale = validation.check_number("guidance_scale", guidance_scale)
        if self.num_classes is None and guidance_scale != 1.0:
            raise ValueError("`guidance_scale` needs a class-conditional model; this one is unconditional. "
                             f"Received: guidance_scale={guidance_scale}")
        self._check_fixed(clip_denoised=clip_denoised, spacing=spacing, threshold=threshold)
        options = self._options(sampler, info["options"], eta, options)
        batch_size = validation.check_int("batch_size", min(num_images, self.max_images)
                                          if batch_size is None else batch_size, 1, self.max_images)
        if jit_compile is not None and validation.check_bool("jit_compile", jit_compile) != self.jit_compile:
            raise ValueError(f"This SavedModel was exported with jit_compile={self.jit_compile}; XLA is fixed in "
                             f"its graph. Received: jit_compile={jit_compile} (re-export to change it)")
        labels = self._labels(num_images, labels)
        if progress is not None:
            report_progress(progress, 0, num_images)
        signature = self._loaded.signatures[info["signature"]]
        outputs = []
        for index, start in enumerate(range(0, num_images, batch_size)):
            count = min(batch_size, num_images - start)
            batch_seed = seed if index == 0 else int(tfd_random.fold_in(tfd_random.seed_pair(seed), index)[0])
            inputs = generate_inputs(
                batch_seed, num_steps, labels=None if labels is None else labels[start:start + count],
                num_images=count if labels is None else None,
                guidance_scale=guidance_scale if self.num_classes is not None else None, **options)
            try:
                outputs.append(signature(**{name: tf.constant(value) for name, value in inputs.items()})
                               ["images"].numpy())
            except tf.errors.InvalidArgumentError as error:
                if NON_FINITE_IMAGES not in error.message:
                    raise
                counts = re.search(r"batch size:\]? \[?(\d+)\]? \[?(\d+)", error.message)
                found = f"{counts.group(1)} of {counts.group(2)} images" if counts else "some images"
                raise ValueError(f"{found} sampled by {self.path!r} (batch starting at image {start}) hold NaN or "
                                 "infinite values, which uint8 would make black: the exported weights are "
                                 "probably non-finite (a training run that diverged, or a bad conversion); "
                                 "re-export finite weights") from None
            if progress is not None:
                progress(start + count, num_images)
        return np.concatenate(outputs, axis=0)


def load_saved_model(path: str, trust_graph: bool = False) -> ServedModel:
    """Loads an exported model: a version directory `BASE/NAME/VERSION`, or `BASE/NAME` (its latest version).

    The graph is first checked against the ops tfdiffusion's exports use
    (`saved_model_check`); `trust_graph=True` skips the check (see `ServedModel`).
    """
    return ServedModel(path, trust_graph=trust_graph)


def load_generator(path: str, log: Optional[Callable[[str], None]] = None, trust_graph: bool = False):
    """A model to sample from: an exported SavedModel (`ServedModel`) or a `.keras` file / run folder.

    Args:
        path: a SavedModel directory, a `.keras` file or a `tfdiffusion train` output folder.
        log: optional `log(line)`, told which kind was loaded.
        trust_graph: for a SavedModel, skip the op check (see `ServedModel`);
            a `.keras` file is always loaded with Keras' `safe_mode`.

    Returns:
        A `ServedModel` or a `DiffusionModel`; both have `generate`,
        `num_classes`, `image_shape` and `num_timesteps`-like attributes.
    """
    trust_graph = validation.check_bool("trust_graph", trust_graph)
    if is_saved_model(path):
        model = load_saved_model(path, trust_graph=trust_graph)
        description = f"SavedModel {model.path}"
    else:
        model = load_model(path)
        description = f"Keras model {path}"
    if log is not None:
        log(f"Loaded {description}")
    return model
