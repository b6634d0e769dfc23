"""The noise levels an ODE/SDE solver visits: spaced timesteps or Karras sigmas, in the graph from a tensor step count.

A level is described three ways: alpha_bar (the VP process, DPM-Solver's
alpha = sqrt(alpha_bar), sigma = sqrt(1 - alpha_bar)), EDM's noise level
sigma = sqrt((1 - alpha_bar) / alpha_bar), and the timestep the network is
called with. For the timestep spacings these come from the schedule's table
at the spaced timesteps (`StepSchedule`); for "karras" the sigmas follow
Karras et al. 2022, Eq. 5 (rho = 7) from the table's largest sigma, capped at
their sigma_max = 80, down to its smallest, and the network gets their
fractional timesteps (`timestep_from_sigma`). The cap
matters for the cosine schedule, whose last sigma is 2e4 (alpha_bar = 2.4e-9
at T = 1000): from there most Karras levels would lie where the image is
pure noise (measured on the shapes preset, Heun with 5 steps: class accuracy
0.14 uncapped, 0.67 capped).
"""

import math
from typing import Any

import numpy as np
import tensorflow as tf

from tfdiffusion import schedules
from tfdiffusion.samplers.steps import StepSchedule

__all__ = ["KARRAS", "KARRAS_RHO", "KARRAS_SIGMA_MAX", "MIN_ALPHAS_CUMPROD", "SOLVER_SPACINGS", "NoiseLevels",
           "log_sigmas", "timestep_from_sigma"]

KARRAS = "karras"
SOLVER_SPACINGS = schedules.SPACINGS + (KARRAS,)
KARRAS_RHO = 7.0
KARRAS_SIGMA_MAX = 80.0  # Karras et al. 2022, Sec. 5 / Table 1
# The alpha_bar a zero-terminal-SNR step counts as where a finite sigma is needed (as diffusers).
MIN_ALPHAS_CUMPROD = 2.0**-24


def log_sigmas(diffusion) -> np.ndarray:
    """float64 `[T]`: EDM's log sigma = log sqrt((1 - abar) / abar) per step, ascending in t.

    Only an alpha_bar of exactly 0 (zero terminal SNR) counts as
    `MIN_ALPHAS_CUMPROD`; every other entry keeps its own value, however
    small (the cosine schedule's last alpha_bar is 2.4e-9 at T = 1000, sigma
    2.0e4, below the floor's sigma of 4096).
    """
    alphas_cumprod = np.asarray(diffusion.alphas_cumprod, np.float64)
    floored = np.where(alphas_cumprod > 0.0, alphas_cumprod, MIN_ALPHAS_CUMPROD)
    return 0.5 * (np.log1p(-floored) - np.log(floored))


def timestep_from_sigma(diffusion, sigma: Any) -> tf.Tensor:
    """The fractional timestep of noise level `sigma` = sqrt((1 - abar) / abar) (EDM's sigma).

    log sigma is interpolated linearly between the two timesteps whose
    sigmas bracket it (as k-diffusion's wrappers of discrete-time models
    do), clamped to [0, T - 1]; a sigma of the table gives its integer
    timestep.

    Args:
        diffusion: the `GaussianDiffusion`.
        sigma: float tensor of positive noise levels, any shape.

    Returns:
        float64 timesteps of `sigma`'s shape, in the diffusion's numbering
        (its `model_timesteps` maps them to the trained one).
    """
    num_timesteps = diffusion.num_timesteps
    table = tf.constant(log_sigmas(diffusion), tf.float64)
    log_sigma = tf.math.log(tf.cast(sigma, tf.float64))
    flat = tf.reshape(log_sigma, [-1, 1])
    # Index of the last table entry <= log sigma (table ascending), kept in [0, T - 2].
    below = tf.reduce_sum(tf.cast(table[None, :] <= flat, tf.int32), axis=1) - 1
    low = tf.clip_by_value(below, 0, max(num_timesteps - 2, 0))
    high = tf.minimum(low + 1, num_timesteps - 1)
    lo, hi = tf.gather(table, low), tf.gather(table, high)
    step = tf.where(hi > lo, hi - lo, tf.ones_like(hi))
    frac = tf.clip_by_value((flat[:, 0] - lo) / step, 0.0, 1.0)
    return tf.reshape(tf.cast(low, tf.float64) + frac, tf.shape(log_sigma))


class NoiseLevels:
    """Levels i = 0 (the least noisy) .. num_steps - 1 (the noisiest); i = -1 is the data.

    A solver steps from level i to level i - 1, so its last step lands on
    the data (sigma = 0, alpha_bar = 1) from the least noisy level, as DDIM's.

    Args:
        diffusion: the `GaussianDiffusion`.
        num_steps: int or int32 scalar tensor in [1, T].
        spacing: "leading", "trailing", "linspace" or "karras".
        rho: Karras et al.'s rho (7: their choice).
    """

    def __init__(self, diffusion, num_steps: Any, spacing: str, rho: float = KARRAS_RHO):
        if spacing not in SOLVER_SPACINGS:
            raise ValueError(f"`spacing` must be one of {SOLVER_SPACINGS}. Received: spacing={spacing!r}")
        self.diffusion = diffusion
        self.num_steps = tf.cast(num_steps, tf.int32)
        self.spacing = spacing
        self.rho = float(rho)
        self._log_sigmas = tf.constant(log_sigmas(diffusion), tf.float64)
        self._schedule = None if spacing == KARRAS else StepSchedule(diffusion, num_steps, spacing)

    @property
    def karras(self) -> bool:
        """Whether the levels are Karras sigmas (fractional timesteps)."""
        return self._schedule is None

    def _karras_sigma(self, index: tf.Tensor) -> tf.Tensor:
        # Karras et al. 2022, Eq. 5 with their index k = N - 1 - index (k = 0: sigma_max).
        inverse_rho = 1.0 / self.rho
        high = tf.exp(tf.minimum(self._log_sigmas[-1], math.log(KARRAS_SIGMA_MAX)) * inverse_rho)
        low = tf.exp(self._log_sigmas[0] * inverse_rho)
        k = tf.cast(self.num_steps - 1 - index, tf.float64)
        ramp = k / tf.cast(tf.maximum(self.num_steps - 1, 1), tf.float64)
        return (high + ramp * (low - high)) ** self.rho

    def sigma(self, index: Any) -> tf.Tensor:
        """float64 scalar: EDM's sigma at level `index` (0 at -1; finite also for zero terminal SNR)."""
        index = tf.cast(index, tf.int32)
        if self.karras:
            value = self._karras_sigma(tf.clip_by_value(index, 0, self.num_steps - 1))
        else:
            value = tf.exp(tf.gather(self._log_sigmas, self._schedule.timestep(index)))
        return tf.where(index < 0, tf.constant(0.0, tf.float64), value)

    def alphas_cumprod(self, index: Any) -> tf.Tensor:
        """float64 scalar: alpha_bar at level `index` (1 at -1; the table's exact value, 0 included)."""
        if self.karras:
            return 1.0 / (1.0 + tf.square(self.sigma(index)))
        return self._schedule.alphas_cumprod(index)

    def timestep(self, index: Any, batch: tf.Tensor) -> tf.Tensor:
        """`[batch]` timesteps of level `index`: int32 for the spacings, float32 for "karras"."""
        if self.karras:
            t = tf.cast(timestep_from_sigma(self.diffusion, self.sigma(index)), tf.float32)
        else:
            t = self._schedule.timestep(index)
        return tf.fill([batch], t)
