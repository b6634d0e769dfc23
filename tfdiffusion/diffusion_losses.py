"""`DiffusionLosses`: the `GaussianDiffusion` mix-in for the variational bound and the training losses.

The bound's terms L_t (`vb_terms_bpd`, `prior_bpd`, `calc_bpd_loop`) and
the per-example training losses of `loss_type` ("mse", "kl", "hybrid"),
optionally Min-SNR weighted. It needs the process's `model_mean_type`,
`loss_type`, `min_snr_gamma`, `num_timesteps`, `validate_args`, its
`extract` and float32 tables, its forward process (`_q_sample`,
`_q_posterior_mean_variance`) and the `ReverseProcess` methods.
"""

from typing import Any, Callable, Dict, Optional

import tensorflow as tf

from tfdiffusion import bounds
from tfdiffusion import random as tfd_random
from tfdiffusion import validation

__all__ = ["DiffusionLosses", "HYBRID_VLB_WEIGHT"]

# Improved DDPM's weight of the bound in the hybrid loss: L_simple + 0.001 * L_vlb.
HYBRID_VLB_WEIGHT = 0.001


class DiffusionLosses:
    """Mix-in for `GaussianDiffusion`: the variational bound in bits/dim and `training_losses`."""

    # -------------------------------------------------------------- the bound
    def vb_terms_bpd(self, x_start: tf.Tensor, x_t: tf.Tensor, t: tf.Tensor,
                     prediction: Dict[str, tf.Tensor]) -> tf.Tensor:
        """L_t of the bound at `t` in bits/dim `[B]`: KL for t > 0, decoder NLL at t = 0."""
        true_mean, _, true_log_variance = self._q_posterior_mean_variance(x_start, x_t, t)
        kl = bounds.normal_kl(true_mean, true_log_variance, prediction["mean"], prediction["log_variance"])
        kl = bounds.nats_to_bits(bounds.mean_over_pixels(kl))
        decoder_ll = bounds.discretized_gaussian_log_likelihood(
            x_start, prediction["mean"], 0.5 * prediction["log_variance"])
        decoder_nll = -bounds.nats_to_bits(bounds.mean_over_pixels(decoder_ll))
        return tf.where(tf.equal(t, 0), decoder_nll, kl)

    def prior_bpd(self, x_start: Any) -> tf.Tensor:
        """KL(q(x_T | x_0) || N(0, I)) in bits/dim `[B]`; near zero for a good schedule."""
        x_start = validation.check_images(x_start, "x_start", self.validate_args)
        t = tf.fill(tf.shape(x_start)[:1], self.num_timesteps - 1)
        mean = self.extract("sqrt_abar", t, x_start) * x_start
        log_variance = self.extract("log_one_minus_abar", t, x_start)
        kl = bounds.normal_kl(mean, log_variance, tf.zeros_like(mean), tf.zeros_like(mean))
        return bounds.nats_to_bits(bounds.mean_over_pixels(kl))

    def _target(self, x_start, x_t, t, noise):
        if self.model_mean_type == "epsilon":
            return noise
        if self.model_mean_type == "x0":
            return x_start
        return self.extract("sqrt_abar", t, x_t) * noise - self.extract("sqrt_one_minus_abar", t, x_t) * x_start

    def training_losses(self, model_fn: Callable, x_start: Any, t: Any, noise: Any = None,
                        model_kwargs: Optional[dict] = None, seed: Any = None) -> Dict[str, tf.Tensor]:
        """Per-example training losses at timesteps `t`.

        Args:
            model_fn: `model_fn(x_t, t, **model_kwargs)`.
            x_start: float32 `[B, ...]` in [-1, 1] (on the 8-bit grid for
                the t = 0 decoder term of the bound to be a likelihood).
            t: int `[B]` in [0, T).
            noise: optional standard normal noise shaped like `x_start`.
            model_kwargs: extra keyword arguments for `model_fn`.
            seed: int or `[2]` int tensor for `noise` when not given.

        Returns:
            dict of float32 `[B]`: `loss` (what to minimise), `mse` (the mean
            squared error of the mean prediction against its target, before
            any `min_snr_gamma` weighting) and
            `vb` (L_t in bits/dim, with the mean stop-gradiented for "hybrid").
        """
        x_start = validation.check_images(x_start, "x_start", self.validate_args)
        t = self._check_t(t, x_start)
        if noise is None:
            noise = tfd_random.random_normal(tf.shape(x_start), tfd_random.seed_pair(seed))
        noise = tf.convert_to_tensor(noise, tf.float32)
        x_t = self._q_sample(x_start, t, noise=noise)
        output = self._call_model(model_fn, x_t, t, model_kwargs)
        mean_output = tf.split(output, 2, axis=-1)[0] if self.learn_sigma else output
        mse = bounds.mean_over_pixels(tf.square(self._target(x_start, x_t, t, noise) - mean_output))
        if self.loss_type == "hybrid":
            # The bound term trains only the variance (Improved DDPM Sec. 3.1).
            _, var_values = tf.split(output, 2, axis=-1)
            output = tf.concat([tf.stop_gradient(mean_output), var_values], axis=-1)
        prediction = self._mean_variance_from_output(output, x_t, t, clip_denoised=False)
        vb = self.vb_terms_bpd(x_start, x_t, t, prediction)
        weighted_mse = mse if self.min_snr_gamma is None else mse * tf.gather(self._tf["mse_weight"], t)
        if self.loss_type == "mse":
            loss = weighted_mse
        elif self.loss_type == "kl":
            loss = vb * self.num_timesteps
        else:
            # L_simple + 0.001 * L_vlb with L_vlb estimated as T * L_t.
            loss = weighted_mse + vb * (self.num_timesteps * HYBRID_VLB_WEIGHT)
        return dict(loss=loss, mse=mse, vb=vb)

    def bpd_timesteps(self, num_eval_steps: Optional[int] = None, seed: Any = None):
        """Timesteps and weights of the bound's terms; see `bounds.bpd_timesteps`."""
        return bounds.bpd_timesteps(self.num_timesteps, num_eval_steps, seed)

    def calc_bpd_loop(self, model_fn: Callable, x_start: Any, clip_denoised: bool = True,
                      model_kwargs: Optional[dict] = None, seed: Any = None,
                      num_eval_steps: Optional[int] = None, batch_offset=None) -> Dict[str, tf.Tensor]:
        """The variational bound on -log p(x_0) in bits/dim, term by term; see `bounds.calc_bpd_loop`."""
        return bounds.calc_bpd_loop(self, model_fn, x_start, clip_denoised=clip_denoised,
                                    model_kwargs=model_kwargs, seed=seed, num_eval_steps=num_eval_steps,
                                    batch_offset=batch_offset)
