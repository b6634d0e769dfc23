"""DDPM ancestral sampling: x_{t-1} ~ p(x_{t-1} | x_t) over all or evenly spaced steps."""

import tensorflow as tf

from tfdiffusion import random as tfd_random
from tfdiffusion.samplers.registry import Sampler
from tfdiffusion.samplers.registry import bounded_loop
from tfdiffusion.samplers.registry import register_sampler
from tfdiffusion.samplers.steps import StepSchedule

__all__ = ["DDPMSampler"]


@register_sampler
class DDPMSampler(Sampler):
    """Ancestral sampling (Ho et al. 2020, Algorithm 2) over a respaced process.

    With `num_steps` < T the reverse process runs over the spaced timesteps
    t_0 < ... < t_{n-1}, with betas 1 - alpha_bar(t_i) / alpha_bar(t_{i-1})
    so that its marginals equal the trained process's (Nichol & Dhariwal
    2021, Sec. 4). Each step draws from the model's p(x_{t-1} | x_t): the
    posterior mean at the predicted x_0 and the variance of
    `model_var_type`; the last step returns the mean itself, with no noise.
    """

    name = "ddpm"

    def _sample(self, model_fn, x_T, num_steps, seed, model_kwargs):
        diffusion = self.diffusion
        schedule = StepSchedule(diffusion, num_steps, self.spacing)
        batch = tf.shape(x_T)[0]
        # Clipped log-variance of the first step (beta-tilde at step 0 is 0): that of step 1
        # (improved-diffusion), or beta_0 for a one-step process.
        one_step = tf.equal(schedule.num_steps, 1)
        beta_0 = 1.0 - schedule.alphas_cumprod(0)
        _, first_variance, _, _ = diffusion.posterior_coefficients(
            schedule.alphas_cumprod(1), schedule.alphas_cumprod(0))
        first_variance = tf.where(one_step, beta_0, first_variance)

        def body(j, x):
            i = schedule.num_steps - 1 - j
            t = tf.fill([batch], schedule.timestep(i))
            abar, abar_prev = schedule.alphas_cumprod(i), schedule.alphas_cumprod(i - 1)
            # DDPM Eq. 6-7 for the (respaced) step t_{i-1} <- t_i.
            beta, variance, coef_x0, coef_xt = diffusion.posterior_coefficients(abar, abar_prev)
            first = tf.equal(i, 0)
            small = tf.math.log(tf.where(first, first_variance, variance))
            large = tf.math.log(tf.where(first, first_variance, beta))
            out = self.predictions(model_fn, x, t, model_kwargs)
            log_variance = diffusion.reverse_log_variance(small, tf.math.log(beta), large,
                                                          out["var_values"], x)
            mean = tf.cast(coef_x0, tf.float32) * out["pred_xstart"] + tf.cast(coef_xt, tf.float32) * x
            noise = self.batch_noise(x, tfd_random.fold_in(seed, i))
            # Algorithm 2, line 4: no noise at the last step (i = 0).
            scale = tf.where(first, tf.zeros_like(log_variance), tf.exp(0.5 * log_variance))
            return (mean + scale * noise,)

        (x_0,) = bounded_loop(num_steps, diffusion.num_timesteps, body, (x_T,))
        return x_0
