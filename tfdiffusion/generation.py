"""`ImageGeneration`: the `DiffusionModel` mix-in that samples images (`generate`, `image_sampler`).

It needs the model's `ema_network`, `diffusion`, `image_shape`,
`num_classes`, `null_label`, `label_dropout`, `spacing`, `clip_denoised`
and an `_image_samplers` dict set in its `__init__`.
"""

import warnings
from typing import Any, Callable, Dict, Mapping, Optional

import numpy as np

from tfdiffusion import random as tfd_random
from tfdiffusion import samplers
from tfdiffusion import sampling
from tfdiffusion import validation

__all__ = ["NON_FINITE_ACTIONS", "ImageGeneration", "merge_eta", "non_finite_weights", "report_progress"]

# What `generate` does with images whose values were NaN or infinite before the uint8 conversion.
NON_FINITE_ACTIONS = ("raise", "warn")


def non_finite_weights(network) -> Dict[str, int]:
    """`{variable path: number of NaN or infinite values}` of a Keras network's weights (finite ones left out)."""
    found = {}
    for weight in network.weights:
        values = np.asarray(weight.numpy())
        if np.issubdtype(values.dtype, np.floating):
            bad = int(values.size - np.count_nonzero(np.isfinite(values)))
            if bad:
                found[getattr(weight, "path", weight.name)] = bad
    return found


def merge_eta(eta: Optional[float], options: Optional[Mapping[str, float]]) -> Dict[str, Any]:
    """`generate`'s `eta` shortcut and its `options` as one dict of run-time options."""
    if options is not None and not isinstance(options, Mapping):
        raise TypeError(f"`options` must be a dict of run-time sampler options. Received: options={options!r}")
    merged = dict(options or {})
    if eta is not None:
        if "eta" in merged:
            raise ValueError(f"`eta` is given twice: eta={eta!r} and options['eta']={merged['eta']!r}")
        merged["eta"] = eta
    return merged


def report_progress(progress: Callable[[int, int], None], done: int, total: int) -> None:
    """Calls a user's `progress(done, total)`, first checking that it takes those two arguments.

    Raises:
        TypeError: `progress` is not callable as `progress(done, total)`, naming it.
    """
    validation.check_callable("progress", progress, done, total, call="progress(done, total)")
    try:
        progress(done, total)
    except TypeError as error:  # a callable whose signature Python could not show, called wrongly
        raise TypeError(f"`progress` must be callable as progress(done, total); progress({done}, {total}) "
                        f"raised TypeError: {error}") from error


class ImageGeneration:
    """Mix-in for `DiffusionModel`: in-graph sampling of uint8 images with any registered sampler."""

    def _check_labels(self, num_images, labels):
        if self.num_classes is None:
            if labels is not None:
                raise ValueError("`labels` were given but the network is unconditional (num_classes=None).")
            return None
        if labels is None:
            return np.arange(num_images, dtype=np.int32) % self.num_classes
        if isinstance(labels, (bool, float)) or (isinstance(labels, (list, tuple)) and any(
                not validation.is_int(v) for v in labels)):
            raise TypeError(f"`labels` must be integers in [0, {self.num_classes}). Received: labels={labels!r}")
        labels = np.asarray(labels)
        if labels.ndim == 0:
            labels = np.full([num_images], labels)
        if not np.issubdtype(labels.dtype, np.integer):
            raise TypeError(f"`labels` must be integers in [0, {self.num_classes}). Received dtype {labels.dtype}")
        if labels.shape != (num_images,):
            raise ValueError(f"`labels` must be {num_images} integers (one per image). "
                             f"Received an array of shape {labels.shape}")
        if labels.min() < 0 or labels.max() >= self.num_classes:
            raise ValueError(f"`labels` must be in [0, {self.num_classes}). Received values from "
                             f"{labels.min()} to {labels.max()}")
        return labels.astype(np.int32)

    def _non_finite_report(self, bad: int, count: int) -> str:
        """Says how many images were non-finite and what to check: the EMA weights first."""
        message = (f"{bad} of {count} generated images hold NaN or infinite values before the conversion to "
                   "uint8 (which would make them black). ")
        weights = non_finite_weights(self.ema_network)
        if weights:
            first = next(iter(weights))
            return message + (f"The EMA network's weights hold {sum(weights.values())} non-finite value(s) in "
                              f"{len(weights)} variable(s), e.g. {first!r} ({weights[first]}): the weights are "
                              "broken (a training run that diverged, or a checkpoint converted with NaN); "
                              "retrain, or load weights that are finite.")
        return message + ("The EMA network's weights are all finite, so its outputs overflow for these settings: "
                          "check guidance_scale, threshold, the sampler and num_steps, and the precision policy "
                          "(float16 overflows beyond 65504).")

    @property
    def sampling_network(self) -> sampling.TracedNetwork:
        """The EMA network's inference call as one traced function, shared by every sampler and export."""
        traced = getattr(self, "_traced_ema_network", None)
        if traced is None or traced.network is not self.ema_network:
            traced = sampling.TracedNetwork(self.ema_network)
            self._traced_ema_network = traced
        return traced

    def image_sampler(self, sampler: str = "ddim", spacing: Optional[str] = None, clip_denoised: bool = True,
                      jit_compile: bool = False, threshold: Optional[float] = None) -> sampling.ImageSampler:
        """The traced sampling function of `generate` (and the SavedModel export), cached.

        `threshold`: dynamic-thresholding percentile in (0, 1], or None (see `generate`).
        """
        spacing = self.spacing if spacing is None else spacing
        threshold = samplers.check_threshold(threshold)
        key = (sampler, spacing, clip_denoised, jit_compile, threshold)
        if key not in self._image_samplers:
            self._image_samplers[key] = sampling.ImageSampler(
                self.sampling_network, self.diffusion, self.image_shape, sampler, num_classes=self.num_classes,
                null_label=self.null_label, spacing=spacing, clip_denoised=clip_denoised,
                jit_compile=jit_compile, threshold=threshold)
        return self._image_samplers[key]

    def generate(self, num_images: int, sampler: str = "ddim", num_steps: int = 50, seed: Optional[int] = None,
                 labels: Any = None, guidance_scale: float = 1.0, eta: Optional[float] = None,
                 clip_denoised: Optional[bool] = None, spacing: Optional[str] = None,
                 batch_size: Optional[int] = None,
                 jit_compile: Optional[bool] = None,
                 progress: Optional[Callable[[int, int], None]] = None,
                 threshold: Optional[float] = None,
                 options: Optional[Mapping[str, float]] = None,
                 on_non_finite: str = "raise") -> np.ndarray:
        """Samples images with the EMA weights.

        Args:
            num_images: how many images.
            sampler: a registered sampler (`tfdiffusion.samplers.sampler_names()`:
                "ddpm" ancestral, "ddim", "dpmpp_2m", "dpmpp_3m",
                "dpmpp_2m_sde", "euler", "heun", "euler_ancestral").
            num_steps: sampling steps in [1, T], spread by `spacing`.
            seed: int; the same seed gives the same images. None: random.
            labels: ints `[num_images]` (or one int) for a conditional
                network; None cycles through the classes 0, 1, ...
            guidance_scale: classifier-free guidance scale s (1: none);
                conditional networks only.
            eta: the noise of "ddim" (default 0), "euler_ancestral" and
                "dpmpp_2m_sde" (default 1) (None: the sampler's default);
                only for samplers that take it.
            clip_denoised: clip predicted x_0 to [-1, 1] at each step (None:
                the model's `clip_denoised`).
            spacing: "leading", "trailing" or "linspace", or "karras" for the
                DPM-Solver++ and EDM samplers (None: the model's `spacing`).
            batch_size: images per network batch (default: all at once).
            jit_compile: compile the sampling loop with XLA (per replica
                under a multi-replica strategy); None: yes. (XLA draws other
                random numbers than the CPU kernels for the same seed.)
            progress: optional `progress(done, total)`, called with
                `(0, num_images)` before sampling (a callable that cannot be
                called so is refused before any work) and after each batch.
            threshold: dynamic thresholding (Saharia et al. 2022) of each
                predicted x_0 at this percentile in (0, 1] (0.995 in the
                paper), instead of plain clipping; None: off.
            options: further run-time options of the sampler by name, e.g.
                `{"churn": 10.0}` for "heun" (`samplers.get_sampler(name).options`).
            on_non_finite: what to do with images whose values came out NaN
                or infinite (which uint8 would make black): "raise" (a
                ValueError after the first batch holding one, saying how
                many and whether the EMA weights are finite) or "warn"
                (a warning; such images are returned black).

        Returns:
            uint8 numpy array `[num_images, H, W, C]`.

        Raises:
            ValueError: a bad argument (before any work), or non-finite
                images with `on_non_finite="raise"`.
        """
        plan = self._generate_plan(num_images, sampler, num_steps, seed, labels, guidance_scale, eta,
                                   clip_denoised, spacing, batch_size, jit_compile, threshold, options)
        on_non_finite = validation.check_choice("on_non_finite", on_non_finite, NON_FINITE_ACTIONS)
        if progress is not None:
            report_progress(progress, 0, num_images)
        image_sampler, labels = plan["image_sampler"], plan["labels"]
        base_seed = tfd_random.seed_pair(plan["seed"])
        outputs, non_finite = [], 0
        for start in range(0, num_images, plan["batch_size"]):
            count = min(plan["batch_size"], num_images - start)
            noise, batch_seed = sampling.initial_noise(base_seed, start, (count,) + self.image_shape)
            batch, finite = image_sampler(noise, batch_seed, plan["num_steps"],
                                          None if labels is None else labels[start:start + count],
                                          plan["guidance_scale"], plan["options"],
                                          strategy=self.distribute_strategy)
            outputs.append(batch.numpy())
            non_finite += count - int(np.count_nonzero(finite.numpy()))
            if non_finite and on_non_finite == "raise":
                raise ValueError(self._non_finite_report(non_finite, start + count)
                                 + " (on_non_finite='warn' returns them black.)")
            if progress is not None:
                progress(start + count, num_images)
        if non_finite:
            warnings.warn(self._non_finite_report(non_finite, num_images), stacklevel=2)
        return np.concatenate(outputs, axis=0)

    def check_generate_arguments(self, num_images: int, sampler: str = "ddim", num_steps: int = 50,
                                 seed: Optional[int] = None, labels: Any = None, guidance_scale: float = 1.0,
                                 eta: Optional[float] = None, clip_denoised: Optional[bool] = None,
                                 spacing: Optional[str] = None, batch_size: Optional[int] = None,
                                 jit_compile: Optional[bool] = None, threshold: Optional[float] = None,
                                 options: Optional[Mapping[str, float]] = None) -> None:
        """Checks `generate`'s arguments as `generate` does, without sampling (e.g. a callback's, before training).

        Raises:
            ValueError, TypeError: as `generate` would.
        """
        self._generate_plan(num_images, sampler, num_steps, seed, labels, guidance_scale, eta, clip_denoised,
                            spacing, batch_size, jit_compile, threshold, options)

    def _generate_plan(self, num_images, sampler, num_steps, seed, labels, guidance_scale, eta, clip_denoised,
                       spacing, batch_size, jit_compile, threshold, options) -> Dict[str, Any]:
        """`generate`'s arguments checked (before any work): the image sampler and the values it takes."""
        num_images = validation.check_int("num_images", num_images)
        seed = tfd_random.check_seed(seed)
        guidance_scale = validation.check_number("guidance_scale", guidance_scale)
        clip_denoised = self.clip_denoised if clip_denoised is None else validation.check_bool(
            "clip_denoised", clip_denoised)
        batch_size = validation.check_int("batch_size", num_images if batch_size is None else batch_size)
        jit_compile = True if jit_compile is None else validation.check_bool("jit_compile", jit_compile)
        if self.num_classes is None and guidance_scale != 1.0:
            raise ValueError("`guidance_scale` needs a class-conditional network; this one is "
                             f"unconditional. Received: guidance_scale={guidance_scale}")
        sampling.check_sampling_memory(self.ema_network, self.image_shape, num_images, batch_size,
                                       guided=self.num_classes is not None and guidance_scale != 1.0)
        labels = self._check_labels(num_images, labels)
        image_sampler = self.image_sampler(sampler, spacing, clip_denoised, jit_compile, threshold)
        num_steps = image_sampler.sampler.check_num_steps(num_steps)
        options = image_sampler.sampler.check_options(merge_eta(eta, options))
        if guidance_scale != 1.0 and self.label_dropout == 0.0:
            warnings.warn(f"Sampling with guidance_scale={guidance_scale:g} from a model trained with "
                          "label_dropout=0: its null-label embedding never trained, so the guidance "
                          "direction is arbitrary.", stacklevel=3)
        return dict(image_sampler=image_sampler, num_steps=num_steps, seed=seed, labels=labels,
                    guidance_scale=guidance_scale, batch_size=batch_size, options=options)
