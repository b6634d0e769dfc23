"""Euler, Heun (with optional churn) and Euler ancestral in Karras et al.'s (EDM) sigma parameterisation."""

import math
from typing import ClassVar

import tensorflow as tf

from tfdiffusion import random as tfd_random
from tfdiffusion.samplers.levels import SOLVER_SPACINGS
from tfdiffusion.samplers.levels import NoiseLevels
from tfdiffusion.samplers.levels import timestep_from_sigma
from tfdiffusion.samplers.registry import Sampler
from tfdiffusion.samplers.registry import bounded_loop
from tfdiffusion.samplers.registry import register_sampler

__all__ = ["EulerAncestralSampler", "EulerSampler", "HeunSampler"]

# EDM's cap on the churn per step: gamma <= sqrt(2) - 1 (Algorithm 2, line 4).
_MAX_GAMMA = math.sqrt(2.0) - 1.0


class _EDMSampler(Sampler):
    """Samplers on x = x_0 + sigma eps, sigma = sqrt((1 - abar) / abar) (Karras et al. 2022, Eq. 1).

    The network of a discrete-time model is the denoiser D(x; sigma): it is
    called with x / sqrt(1 + sigma^2) (the VP sample) at the fractional
    timestep of sigma (`levels.timestep_from_sigma`, float32
    timesteps) and its output gives x_0 (clipped or thresholded as
    configured; learned variances are not used). The state starts at
    x_T sqrt(1 + sigma_max^2), the same VP noise as the other samplers, and
    the last step lands on sigma = 0 with D itself. A zero-terminal-SNR
    level counts as alpha_bar = 2^-24 (sigma ~ 4096) here.
    """

    spacings = SOLVER_SPACINGS

    def denoise(self, model_fn, x, sigma, model_kwargs):
        """D(x; sigma): x_0 predicted from EDM's x `[B, ...]` at float64 scalar sigma > 0."""
        alphas_cumprod = 1.0 / (1.0 + tf.square(sigma))
        t = tf.fill(tf.shape(x)[:1], tf.cast(timestep_from_sigma(self.diffusion, sigma), tf.float32))
        x_vp = x * tf.cast(tf.sqrt(alphas_cumprod), tf.float32)
        return self.predictions_at(model_fn, x_vp, t, alphas_cumprod, model_kwargs)["pred_xstart"]

    def _sample(self, model_fn, x_T, num_steps, seed, model_kwargs, **options):
        levels = NoiseLevels(self.diffusion, num_steps, self.spacing)

        def body(j, x):
            i = levels.num_steps - 1 - j
            noise = self.batch_noise(x, tfd_random.fold_in(seed, i))
            x_next = self._step(model_fn, x, levels.sigma(i), levels.sigma(i - 1), levels.num_steps, noise,
                                model_kwargs, **options)
            return (x_next,)

        x_start = x_T * tf.cast(tf.sqrt(1.0 + tf.square(levels.sigma(levels.num_steps - 1))), tf.float32)
        (x_0,) = bounded_loop(num_steps, self.diffusion.num_timesteps, body, (x_start,))
        return x_0

    def _step(self, model_fn, x, sigma, sigma_next, num_steps, noise, model_kwargs, **options):
        raise NotImplementedError


def _euler(x, denoised, sigma, sigma_next):
    """Euler step of dx/dsigma = (x - D) / sigma (EDM Eq. 3, Algorithm 1 line 5), written as
    x_next = D + (sigma_next / sigma) (x - D) so that sigma_next = 0 gives D exactly."""
    return denoised + tf.cast(sigma_next / sigma, tf.float32) * (x - denoised)


class _ChurnSampler(_EDMSampler):
    """Euler or Heun with EDM's stochastic churn (Algorithm 2, S_tmin = 0, S_tmax = inf, S_noise = 1)."""

    options = {"churn": 0.0}
    heun: ClassVar[bool] = False

    def _step(self, model_fn, x, sigma, sigma_next, num_steps, noise, model_kwargs, churn):
        # Algorithm 2, lines 4-6: raise the noise to sigma_hat = sigma (1 + gamma).
        gamma = tf.minimum(tf.cast(churn, tf.float64) / tf.cast(num_steps, tf.float64), _MAX_GAMMA)
        sigma_hat = sigma * (1.0 + gamma)
        # sqrt(sigma_hat^2 - sigma^2) written so that XLA cannot round it below 0 (NaN) at gamma = 0.
        x_hat = x + tf.cast(sigma * tf.sqrt(gamma * (2.0 + gamma)), tf.float32) * noise
        denoised = self.denoise(model_fn, x_hat, sigma_hat, model_kwargs)
        x_euler = _euler(x_hat, denoised, sigma_hat, sigma_next)  # line 8
        if not self.heun:
            return x_euler

        def corrected():
            # Lines 9-11: the trapezoidal rule with d' = (x_next - D(x_next; sigma_next)) / sigma_next.
            d = (x_hat - denoised) / tf.cast(sigma_hat, tf.float32)
            d_next = (x_euler - self.denoise(model_fn, x_euler, sigma_next, model_kwargs)) / tf.cast(
                sigma_next, tf.float32)
            return x_hat + tf.cast(sigma_next - sigma_hat, tf.float32) * 0.5 * (d + d_next)

        # No correction onto sigma = 0 (line 9): the last step is Euler's.
        return tf.cond(sigma_next > 0.0, corrected, lambda: x_euler)


@register_sampler
class EulerSampler(_ChurnSampler):
    """Euler's method on the probability-flow ODE in sigma (Karras et al. 2022, Algorithm 1 without line 6-7).

    Equal to DDIM on the same levels when `churn` is 0; with the "karras"
    spacing the levels are EDM's sigmas (Eq. 5, rho = 7). Run-time option
    `churn` (S_churn >= 0, default 0): per step gamma = min(churn / N,
    sqrt(2) - 1) of fresh noise before the step. `num_steps` network
    evaluations.

    References:
        Karras et al. 2022, "Elucidating the Design Space of
        Diffusion-Based Generative Models", Algorithms 1 and 2.
    """

    name = "euler"


@register_sampler
class HeunSampler(_ChurnSampler):
    """Heun's second-order method (Karras et al. 2022, Algorithm 1; with `churn`, Algorithm 2).

    Each step but the last (onto sigma = 0, an Euler step) corrects Euler's
    step with a second network call: 2 N - 1 network evaluations for N
    steps. Run-time option `churn` as for "euler".
    """

    name = "heun"
    heun = True
    min_steps = 2
    min_steps_reason = "its last step is an Euler step, so with 1 step it takes no Heun step (use 'euler')."

    @classmethod
    def network_evaluations(cls, num_steps: int) -> int:
        return 2 * int(num_steps) - 1


@register_sampler
class EulerAncestralSampler(_EDMSampler):
    """Euler ancestral: an Euler step down to sigma_down, then fresh noise up to sigma_next.

    sigma_up = min(sigma_next, eta sqrt(sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2)),
    sigma_down = sqrt(sigma_next^2 - sigma_up^2): with eta = 1 (the
    default) the step draws from DDPM's posterior at the predicted x_0
    (DDIM Eq. 16 with eta = 1, in sigma units), on any levels (e.g. Karras
    sigmas); eta = 0 is Euler. Run-time option `eta` >= 0. `num_steps`
    network evaluations.
    """

    name = "euler_ancestral"
    options = {"eta": 1.0}

    def _step(self, model_fn, x, sigma, sigma_next, num_steps, noise, model_kwargs, eta):
        eta = tf.cast(eta, tf.float64)
        variance = tf.square(sigma_next) * (tf.square(sigma) - tf.square(sigma_next)) / tf.square(sigma)
        sigma_up = tf.minimum(sigma_next, eta * tf.sqrt(variance))
        sigma_down = tf.sqrt(tf.maximum(tf.square(sigma_next) - tf.square(sigma_up), 0.0))
        denoised = self.denoise(model_fn, x, sigma, model_kwargs)
        return _euler(x, denoised, sigma, sigma_down) + tf.cast(sigma_up, tf.float32) * noise
