"""The timesteps a sampler visits, computed in the graph from a step count that may be a tensor.

A SavedModel takes `num_steps` in the request, so the spacing (leading,
trailing, linspace: `schedules.space_timesteps`) is computed here with the same
integer arithmetic on scalars, step by step, which keeps every shape static
for XLA. Schedule values are gathered in float64 and the coefficients built
from them are cast to float32 once (improved-diffusion: "use float64 for
accuracy").
"""

from typing import Any

import tensorflow as tf

from tfdiffusion import schedules

__all__ = ["StepSchedule", "timestep_at"]


def _round_half_even_div(numerator: tf.Tensor, denominator: tf.Tensor) -> tf.Tensor:
    """round(numerator / denominator) for non-negative int64 scalars, halves to even."""
    quotient = numerator // denominator
    remainder = numerator - quotient * denominator
    up = (2 * remainder > denominator) | ((2 * remainder == denominator) & (quotient % 2 == 1))
    return quotient + tf.cast(up, tf.int64)


def timestep_at(index: Any, num_steps: Any, num_timesteps: int, spacing: str) -> tf.Tensor:
    """The `index`-th (ascending) of `num_steps` spaced timesteps of T, as int32.

    Equals `schedules.space_timesteps(T, num_steps, spacing)[index]` for
    `index` in [0, num_steps); works on scalar tensors inside a graph loop.
    """
    if spacing not in schedules.SPACINGS:
        raise ValueError(f"`spacing` must be one of {schedules.SPACINGS}. Received: spacing={spacing!r}")
    i = tf.cast(index, tf.int64)
    n = tf.cast(num_steps, tf.int64)
    T = tf.constant(num_timesteps, tf.int64)
    if spacing == "leading":
        t = i * (T // n)
    elif spacing == "trailing":
        t = _round_half_even_div(T * (i + 1), n) - 1
    else:
        t = tf.where(n > 1, _round_half_even_div((T - 1) * i, tf.maximum(n - 1, 1)), tf.zeros_like(i))
    return tf.cast(t, tf.int32)


class StepSchedule:
    """The timesteps and cumulative alphas of a sampler's `num_steps` steps.

    Step indices run from 0 (the timestep nearest the data) to
    `num_steps - 1` (the noisiest); a sampler visits them downwards.

    Args:
        diffusion: the `GaussianDiffusion` (its own timesteps, which a
            respaced diffusion maps to the trained ones).
        num_steps: int or int scalar tensor in [1, T].
        spacing: "leading", "trailing" or "linspace".
    """

    def __init__(self, diffusion, num_steps: Any, spacing: str = "leading"):
        self.diffusion = diffusion
        self.num_steps = tf.cast(num_steps, tf.int32)
        self.spacing = spacing
        self._alphas_cumprod = tf.constant(diffusion.alphas_cumprod, tf.float64)

    def timestep(self, index: Any) -> tf.Tensor:
        """int32 scalar: the diffusion timestep of step `index` (clamped into [0, num_steps))."""
        index = tf.clip_by_value(tf.cast(index, tf.int32), 0, self.num_steps - 1)
        return timestep_at(index, self.num_steps, self.diffusion.num_timesteps, self.spacing)

    def alphas_cumprod(self, index: Any) -> tf.Tensor:
        """float64 scalar: alpha_bar at step `index`; 1 for index -1 (the data)."""
        index = tf.cast(index, tf.int32)
        value = tf.gather(self._alphas_cumprod, self.timestep(index))
        return tf.where(index < 0, tf.constant(1.0, tf.float64), value)
