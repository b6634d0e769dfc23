"""DDIM: the non-Markovian sampler with `eta` (0: deterministic) over evenly spaced steps."""

import tensorflow as tf

from tfdiffusion import random as tfd_random
from tfdiffusion.samplers.registry import Sampler
from tfdiffusion.samplers.registry import bounded_loop
from tfdiffusion.samplers.registry import register_sampler
from tfdiffusion.samplers.steps import StepSchedule

__all__ = ["DDIMSampler"]


@register_sampler
class DDIMSampler(Sampler):
    """DDIM sampling (Song et al. 2021) with noise scale `eta`.

    Each step predicts x_0 (clipped by default) and re-derives epsilon from
    it, as improved-diffusion does (diffusers' `use_clipped_model_output`),
    then moves to the previous spaced timestep with Eq. 12; `eta` scales
    sigma_t of Eq. 16 (0: deterministic DDIM, 1: DDPM-like noise).
    Learned variances are not used.
    """

    name = "ddim"
    options = {"eta": 0.0}

    def _sample(self, model_fn, x_T, num_steps, seed, model_kwargs, eta):
        schedule = StepSchedule(self.diffusion, num_steps, self.spacing)
        batch = tf.shape(x_T)[0]
        eta = tf.cast(eta, tf.float64)

        def body(j, x):
            i = schedule.num_steps - 1 - j
            t = tf.fill([batch], schedule.timestep(i))
            abar, abar_prev = schedule.alphas_cumprod(i), schedule.alphas_cumprod(i - 1)
            out = self.predictions(model_fn, x, t, model_kwargs)
            # Eq. 16: sigma_t(eta) = eta sqrt((1 - abar_prev) / (1 - abar)) sqrt(1 - abar / abar_prev).
            sigma = eta * tf.sqrt((1.0 - abar_prev) / (1.0 - abar) * (1.0 - abar / abar_prev))
            direction = tf.sqrt(tf.maximum(1.0 - abar_prev - tf.square(sigma), 0.0))
            # Eq. 12: x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma z.
            x_prev = (tf.cast(tf.sqrt(abar_prev), tf.float32) * out["pred_xstart"]
                      + tf.cast(direction, tf.float32) * out["pred_eps"])
            noise = self.batch_noise(x, tfd_random.fold_in(seed, i))
            return (x_prev + tf.cast(sigma, tf.float32) * noise,)

        (x_0,) = bounded_loop(num_steps, self.diffusion.num_timesteps, body, (x_T,))
        return x_0
