"""The sampler contract (`Sampler`), the registry of sampler families, and the bounded graph loop they share.

A sampler family is one module with one `Sampler` subclass decorated with
`@register_sampler`; `DiffusionModel.generate`, the CLI and the SavedModel
export look samplers up here by name, so they all offer the same set.
Samplers use only the public prediction API of `GaussianDiffusion`
(`model_predictions`, `alphas_cumprod`, `reverse_log_variance`, ...); they
never import it.
"""

import functools
from typing import Any, Callable, ClassVar, Dict, Mapping, Optional, Tuple, Type

import tensorflow as tf

from tfdiffusion import random as tfd_random
from tfdiffusion import schedules
from tfdiffusion import validation
from tfdiffusion.samplers import thresholding

__all__ = ["Sampler", "bounded_loop", "get_sampler", "register_sampler", "sampler_names"]

_REGISTRY: Dict[str, Type["Sampler"]] = {}


class Sampler:
    """A sampler family: draws x_0 from x_T with a model over a number of steps.

    Subclasses set `name`, `options` (their run-time options and defaults,
    e.g. DDIM's `{"eta": 0.0}`; each may be a Python number or a scalar
    tensor), optionally `min_steps` (with `min_steps_reason`) and `spacings`,
    and implement `_sample` (and `network_evaluations` if a step calls the
    network more than once).

    Args:
        diffusion: the `GaussianDiffusion` the model was trained with.
        spacing: how `num_steps` < T steps are spread over [0, T):
            "leading", "trailing" or "linspace" (`schedules.space_timesteps`),
            or "karras" for the families whose `spacings` include it.
        clip_denoised: clip each predicted x_0 to [-1, 1].
        denoised_fn: optional `f(pred_xstart) -> pred_xstart`, applied to each
            predicted x_0 before clipping.
        threshold: optional percentile p in (0, 1]: dynamic thresholding of
            each predicted x_0 (`thresholding.dynamic_threshold`), after
            `denoised_fn`; it leaves x_0 in [-1, 1], so clipping then changes
            nothing.
    """

    name: ClassVar[str] = ""
    options: ClassVar[Mapping[str, float]] = {}
    min_steps: ClassVar[int] = 1
    min_steps_reason: ClassVar[str] = ""  # why fewer steps cannot work, for the error message
    spacings: ClassVar[Tuple[str, ...]] = schedules.SPACINGS

    def __init__(self, diffusion, spacing: str = "leading", clip_denoised: bool = True,
                 denoised_fn: Optional[Callable[[tf.Tensor], tf.Tensor]] = None,
                 threshold: Optional[float] = None):
        if not hasattr(diffusion, "alphas_cumprod") or not hasattr(diffusion, "num_timesteps"):
            raise TypeError(f"`diffusion` must be a GaussianDiffusion. Received: diffusion={diffusion!r}")
        if denoised_fn is not None:
            validation.check_callable("denoised_fn", denoised_fn, None, call="denoised_fn(pred_xstart)")
        self.diffusion = diffusion
        self.spacing = validation.check_choice("spacing", spacing, self.spacings)
        self.clip_denoised = validation.check_bool("clip_denoised", clip_denoised)
        self.threshold = thresholding.check_threshold(threshold)
        self.denoised_fn = denoised_fn
        if self.threshold is not None:
            self.denoised_fn = functools.partial(_threshold_after, denoised_fn, self.threshold)

    def __repr__(self) -> str:
        threshold = "" if self.threshold is None else f", threshold={self.threshold}"
        return (f"{type(self).__name__}(spacing={self.spacing!r}, clip_denoised={self.clip_denoised}"
                f"{threshold})")

    def check_num_steps(self, num_steps: Any) -> int:
        """Checks a Python step count against [min_steps, T]; returns it as int."""
        if validation.is_int(num_steps) and 1 <= num_steps < self.min_steps:
            raise ValueError(f"`num_steps` must be at least {self.min_steps} for sampler {self.name!r}: "
                             f"{self.min_steps_reason} Received: num_steps={num_steps}")
        return validation.check_int("num_steps", num_steps, self.min_steps, self.diffusion.num_timesteps)

    def check_options(self, options: Mapping[str, Any]) -> Dict[str, Any]:
        """Refuses options this family does not take; checks Python values; fills defaults."""
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            takes = f"takes {sorted(self.options)}" if self.options else "takes no options"
            raise ValueError(f"sampler {self.name!r} {takes}. Received: "
                             + ", ".join(f"{k}={options[k]!r}" for k in unknown))
        checked = dict(self.options)
        for key, value in options.items():
            if value is None:
                continue
            checked[key] = value if tf.is_tensor(value) else self._check_option(key, value)
        return checked

    def _check_option(self, key: str, value: Any) -> float:
        """Checks one Python-valued option (override for bounds); default: a finite number >= 0."""
        return validation.check_number(key, value, 0.0)

    @classmethod
    def network_evaluations(cls, num_steps: int) -> int:
        """Network calls for `num_steps` steps (for guidance, each call is one batched pair)."""
        return int(num_steps)

    def sample(self, model_fn: Callable, noise: Any, num_steps: Any, seed: Any = None,
               model_kwargs: Optional[dict] = None, batch_offset: Optional[Tuple[Any, Any]] = None,
               **options) -> tf.Tensor:
        """Draws x_0 starting from `noise` = x_T.

        Args:
            model_fn: `model_fn(x_t, t, **model_kwargs)` in the diffusion's
                convention (trained timesteps, output of `model_mean_type`).
            noise: float32 `[B, ...]` standard normal x_T.
            num_steps: int in [min_steps, T], or an int32 scalar tensor
                (checked by the caller, e.g. a SavedModel signature).
            seed: int or `[2]` int tensor for the noise of stochastic steps.
            model_kwargs: extra keyword arguments for `model_fn` (e.g. `y`).
            batch_offset: `(first row, global batch)` of this batch in a
                larger one split across replicas (`random.batch_offset`);
                None: the batch is whole (or split evenly across the replicas
                of the current replica context). Stochastic steps draw their
                noise for the global batch and keep these rows, so the
                samples do not depend on how the batch was split.
            **options: the family's run-time options (see `options`).

        Returns:
            float32 `[B, ...]` samples x_0.
        """
        if not tf.is_tensor(num_steps):
            num_steps = self.check_num_steps(num_steps)
        options = self.check_options(options)
        x_T = tf.convert_to_tensor(noise, tf.float32)
        self._batch_offset = batch_offset
        try:
            return self._sample(model_fn, x_T, num_steps, tfd_random.seed_pair(seed), model_kwargs or {},
                                **options)
        finally:
            self._batch_offset = None

    def batch_noise(self, x: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        """Standard normal noise shaped like `x`, row k from the seed and k's place in the global batch."""
        return tfd_random.batch_normal(tf.shape(x), seed, getattr(self, "_batch_offset", None))

    def _sample(self, model_fn, x_T, num_steps, seed, model_kwargs, **options) -> tf.Tensor:
        raise NotImplementedError

    def predictions(self, model_fn, x, t, model_kwargs) -> Dict[str, tf.Tensor]:
        """`diffusion.model_predictions` with this sampler's clipping and `denoised_fn`."""
        return self.diffusion.model_predictions(model_fn, x, t, clip_denoised=self.clip_denoised,
                                                denoised_fn=self.denoised_fn, model_kwargs=model_kwargs)

    def predictions_at(self, model_fn, x, t, alphas_cumprod, model_kwargs) -> Dict[str, tf.Tensor]:
        """`diffusion.model_predictions_at` (a level between steps) with this sampler's clipping."""
        return self.diffusion.model_predictions_at(model_fn, x, t, alphas_cumprod,
                                                   clip_denoised=self.clip_denoised,
                                                   denoised_fn=self.denoised_fn, model_kwargs=model_kwargs)


def _threshold_after(denoised_fn, threshold, pred_xstart):
    if denoised_fn is not None:
        pred_xstart = denoised_fn(pred_xstart)
    return thresholding.dynamic_threshold(pred_xstart, threshold)


def bounded_loop(num_steps: Any, max_steps: int, body: Callable, state: Tuple) -> Tuple:
    """Runs `state <- body(j, *state)` for j = 0 .. num_steps - 1 in a `tf.while_loop`.

    The trip count may be a tensor; `max_steps` bounds it (XLA compiles the
    loop once for every count, and a SavedModel serves it). Each state
    tensor keeps its static shape across iterations.
    """
    state = tuple(tf.convert_to_tensor(s) for s in state)
    shapes = [s.shape for s in state]

    def step(j, *values):
        new = body(j, *values)
        return (j + 1,) + tuple(tf.ensure_shape(v, shape) for v, shape in zip(new, shapes))

    result = tf.while_loop(lambda j, *_: j < tf.cast(num_steps, tf.int32), step,
                           (tf.constant(0, tf.int32),) + state, maximum_iterations=max_steps)
    return result[1:]


def register_sampler(cls: Type[Sampler]) -> Type[Sampler]:
    """Class decorator: makes a `Sampler` subclass available under its `name`."""
    if not isinstance(cls, type) or not issubclass(cls, Sampler):
        raise TypeError(f"`register_sampler` takes a subclass of tfdiffusion.Sampler. Received: {cls!r}")
    if not cls.name or cls.name in _REGISTRY:
        raise ValueError(f"A sampler needs a new, non-empty `name`. Received: {cls.name!r} "
                         f"(registered: {sampler_names()})")
    _REGISTRY[cls.name] = cls
    return cls


def sampler_names() -> Tuple[str, ...]:
    """The names of the registered sampler families, in registration order."""
    return tuple(_REGISTRY)


def get_sampler(name: str) -> Type[Sampler]:
    """The `Sampler` subclass registered as `name`."""
    validation.check_choice("sampler", name, sampler_names())
    return _REGISTRY[name]
