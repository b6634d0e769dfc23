"""`GaussianDiffusion`: forward process, posterior, model mean/variance, losses and the bound."""

import numpy as np
import tensorflow as tf

from tfdiffusion import bounds
from tfdiffusion import samplers
from tfdiffusion import schedules

__all__ = ["GaussianDiffusion", "MEAN_TYPES", "VAR_TYPES", "LOSS_TYPES"]

MEAN_TYPES = ("epsilon", "x0", "v")
VAR_TYPES = ("fixed_small", "fixed_large", "learned_range")
LOSS_TYPES = ("mse", "kl", "hybrid")

# Improved DDPM's weight of the bound in the hybrid loss: L_simple + 0.001 * L_vlb.
HYBRID_VLB_WEIGHT = 0.001


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}. Received: {name}={value!r}")


def _constant(values):
    return tf.constant(np.asarray(values, dtype=np.float64).astype(np.float32))


class GaussianDiffusion:
    """Gaussian diffusion process of DDPM and its learned reverse process.

    `model_fn` arguments are any callable `model_fn(x_t, t, **model_kwargs)`
    (a Keras model, a Sonnet module, a function) returning a tensor shaped
    like `x_t`, or with twice its channels for `model_var_type="learned_range"`
    (the second half the variance interpolation value v in [-1, 1]).

    Tensors are `[B, ...]` (images `[B, H, W, C]`) float32 with `x_start` in
    [-1, 1]; timesteps `t` are int32 `[B]` in [0, T). Per-example results
    are means over the non-batch dimensions, bounds in bits per dimension.

    Args:
        betas: 1-D float64 array `[T]` of noise variances in (0, 1), e.g.
            from `get_beta_schedule`.
        model_mean_type: what the network predicts: "epsilon" (the noise),
            "x0" (the clean image) or "v" (sqrt(abar) * eps - sqrt(1 - abar) * x0,
            Salimans & Ho 2022).
        model_var_type: "fixed_small" (posterior variance beta-tilde),
            "fixed_large" (beta, first entry beta-tilde_1) or "learned_range"
            (Improved DDPM Eq. 15).
        loss_type: "mse" (L_simple), "kl" (T * L_t, an estimate of the whole
            bound) or "hybrid" (L_simple + 0.001 * T * L_t, the bound term
            training only the variance).
        timestep_map: optional int array `[T]`: the timestep each step of
            this (respaced) process has in the process the model was trained
            on; the model is called with mapped timesteps. Made by `respace`.
        min_snr_gamma: optional positive float gamma: weight the mse term of
            the loss by min(SNR_t, gamma) / SNR_t for "epsilon", min(SNR_t,
            gamma) for "x0" and min(SNR_t, gamma) / (SNR_t + 1) for "v", with
            SNR_t = abar_t / (1 - abar_t): each is the x0-space error weighted
            by min(SNR_t, gamma) (Min-SNR, Hang et al. 2023; gamma = 5 there).
            None (the default) leaves the mse unweighted (L_simple).

    References:
        Ho et al. 2020, "Denoising Diffusion Probabilistic Models".
        Nichol & Dhariwal 2021, "Improved Denoising Diffusion Probabilistic Models".
        Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy".
    """

    def __init__(self, betas, model_mean_type="epsilon", model_var_type="fixed_small",
                 loss_type="mse", timestep_map=None, min_snr_gamma=None):
        _check_choice("model_mean_type", model_mean_type, MEAN_TYPES)
        _check_choice("model_var_type", model_var_type, VAR_TYPES)
        _check_choice("loss_type", loss_type, LOSS_TYPES)
        if loss_type == "hybrid" and model_var_type != "learned_range":
            raise ValueError(
                "loss_type='hybrid' needs model_var_type='learned_range': its bound term is "
                "stop-gradiented through the mean and trains only a learned variance, so with "
                f"model_var_type={model_var_type!r} it would train nothing. Use loss_type='mse' "
                "(or 'kl' to train the mean on the bound)."
            )
        if loss_type == "mse" and model_var_type == "learned_range":
            raise ValueError(
                "loss_type='mse' gives the variance output of model_var_type='learned_range' no "
                "gradient. Use loss_type='hybrid' (Improved DDPM) or 'kl'."
            )
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or betas.size < 1:
            raise ValueError(f"`betas` must be a 1-D array of at least 1 value. Received shape {betas.shape}")
        if not np.all((betas > 0) & (betas < 1)):
            raise ValueError(
                "`betas` must lie in (0, 1): a beta of 1 makes alpha_bar_T = 0, from which x_0 "
                f"cannot be recovered. Received min={betas.min()}, max={betas.max()}")
        if min_snr_gamma is not None and (
                isinstance(min_snr_gamma, bool) or not isinstance(min_snr_gamma, (int, float))
                or not min_snr_gamma > 0):
            raise ValueError(
                f"`min_snr_gamma` must be None or a positive number. Received: "
                f"min_snr_gamma={min_snr_gamma!r}")
        self.min_snr_gamma = None if min_snr_gamma is None else float(min_snr_gamma)
        self.betas = betas
        self.model_mean_type = model_mean_type
        self.model_var_type = model_var_type
        self.loss_type = loss_type
        self.num_timesteps = int(betas.shape[0])
        if timestep_map is None:
            timestep_map = np.arange(self.num_timesteps)
        self.timestep_map = np.asarray(timestep_map, dtype=np.int64)
        if self.timestep_map.shape != betas.shape:
            raise ValueError(
                f"`timestep_map` must have one entry per beta ({betas.shape[0]}). "
                f"Received shape {self.timestep_map.shape}"
            )
        self._set_constants()

    def _set_constants(self):
        # All in float64, cast once (improved-diffusion: "use float64 for accuracy").
        betas = self.betas
        alphas = 1.0 - betas
        abar = np.cumprod(alphas)
        abar_prev = np.append(1.0, abar[:-1])
        self.alphas_cumprod = abar
        self.alphas_cumprod_prev = abar_prev
        posterior_variance = betas * (1.0 - abar_prev) / (1.0 - abar)
        # beta-tilde_0 = 0: clip its log to that of t = 1 (to beta_0 for a one-step process).
        first = posterior_variance[1] if len(betas) > 1 else betas[0]
        posterior_log_variance = np.log(np.append(first, posterior_variance[1:]))
        fixed_large_variance = np.append(first, betas[1:])
        snr = abar / (1.0 - abar)
        if self.min_snr_gamma is None:
            mse_weight = np.ones_like(betas)
        else:
            clipped = np.minimum(snr, self.min_snr_gamma)
            mse_weight = {"epsilon": clipped / snr, "x0": clipped,
                          "v": clipped / (snr + 1.0)}[self.model_mean_type]
        with np.errstate(divide="ignore"):
            self._np = dict(
                sqrt_abar=np.sqrt(abar),
                sqrt_one_minus_abar=np.sqrt(1.0 - abar),
                log_one_minus_abar=np.log(1.0 - abar),
                sqrt_recip_abar=np.sqrt(1.0 / abar),
                sqrt_recipm1_abar=np.sqrt(1.0 / abar - 1.0),
                abar=abar,
                abar_prev=abar_prev,
                posterior_variance=posterior_variance,
                posterior_log_variance=posterior_log_variance,
                posterior_mean_coef1=betas * np.sqrt(abar_prev) / (1.0 - abar),
                posterior_mean_coef2=(1.0 - abar_prev) * np.sqrt(alphas) / (1.0 - abar),
                fixed_large_variance=fixed_large_variance,
                fixed_large_log_variance=np.log(fixed_large_variance),
                log_betas=np.log(betas),
                mse_weight=mse_weight,
            )
        self._tf = {name: _constant(value) for name, value in self._np.items()}
        self._timestep_map = tf.constant(self.timestep_map, dtype=tf.int32)

    # ------------------------------------------------------------------ config
    def get_config(self):
        """JSON-friendly constructor arguments."""
        config = dict(
            betas=self.betas.tolist(),
            model_mean_type=self.model_mean_type,
            model_var_type=self.model_var_type,
            loss_type=self.loss_type,
        )
        if self.min_snr_gamma is not None:
            config["min_snr_gamma"] = self.min_snr_gamma
        if not np.array_equal(self.timestep_map, np.arange(self.num_timesteps)):
            config["timestep_map"] = self.timestep_map.tolist()
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return (f"GaussianDiffusion(num_timesteps={self.num_timesteps}, "
                f"model_mean_type={self.model_mean_type!r}, model_var_type={self.model_var_type!r}, "
                f"loss_type={self.loss_type!r})")

    @property
    def learns_variance(self):
        return self.model_var_type == "learned_range"

    def respace(self, num_steps, spacing="leading"):
        """A process over `num_steps` of the T steps, for faster sampling or bounds.

        Its betas are 1 - abar[t_i] / abar[t_{i-1}] over the kept timesteps,
        so its marginals q(x_t | x_0) at kept steps equal this process's; the
        model is still called with the original timesteps.

        Args:
            num_steps: steps to keep, in [1, T].
            spacing: "leading" or "trailing", see `space_timesteps`.

        Returns:
            A `GaussianDiffusion` with `num_steps` timesteps.
        """
        kept = schedules.space_timesteps(self.num_timesteps, num_steps, spacing)
        abar = self.alphas_cumprod[kept]
        new_betas = 1.0 - abar / np.append(1.0, abar[:-1])
        return GaussianDiffusion(new_betas, self.model_mean_type, self.model_var_type,
                                 self.loss_type, timestep_map=self.timestep_map[kept],
                                 min_snr_gamma=self.min_snr_gamma)

    # ----------------------------------------------------------------- helpers
    def _extract(self, name, t, x):
        """Gathers constant `name` at `t` `[B]`, shaped to broadcast against `x`."""
        values = tf.gather(self._tf[name], t)
        return tf.reshape(values, [-1] + [1] * (x.shape.rank - 1))

    def _model_timesteps(self, t):
        return tf.gather(self._timestep_map, t)

    def _predict_xstart_from_eps(self, x_t, t, eps):
        return self._extract("sqrt_recip_abar", t, x_t) * x_t - self._extract("sqrt_recipm1_abar", t, x_t) * eps

    def _predict_eps_from_xstart(self, x_t, t, pred_xstart):
        return ((self._extract("sqrt_recip_abar", t, x_t) * x_t - pred_xstart)
                / self._extract("sqrt_recipm1_abar", t, x_t))

    def _predict_xstart_from_v(self, x_t, t, v):
        return self._extract("sqrt_abar", t, x_t) * x_t - self._extract("sqrt_one_minus_abar", t, x_t) * v

    # ---------------------------------------------------------- forward process
    def q_mean_variance(self, x_start, t):
        """Mean, variance and log-variance of q(x_t | x_0) (DDPM Eq. 4)."""
        x_start = tf.convert_to_tensor(x_start, tf.float32)
        mean = self._extract("sqrt_abar", t, x_start) * x_start
        variance = 1.0 - self._extract("abar", t, x_start)
        log_variance = self._extract("log_one_minus_abar", t, x_start)
        return mean, variance, log_variance

    def q_sample(self, x_start, t, noise=None, seed=None):
        """Draws x_t ~ q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) (DDPM Eq. 4).

        Args:
            x_start: float `[B, ...]`, the clean data x_0.
            t: int32 `[B]` timesteps.
            noise: optional standard normal noise shaped like `x_start`.
            seed: int or `[2]` int tensor for drawing `noise` when not given.

        Returns:
            float32 `[B, ...]` x_t.
        """
        x_start = tf.convert_to_tensor(x_start, tf.float32)
        if noise is None:
            noise = samplers.random_normal(tf.shape(x_start), samplers.seed_pair(seed))
        return (self._extract("sqrt_abar", t, x_start) * x_start
                + self._extract("sqrt_one_minus_abar", t, x_start) * noise)

    def q_posterior_mean_variance(self, x_start, x_t, t):
        """Mean, variance, clipped log-variance of q(x_{t-1} | x_t, x_0) (DDPM Eq. 6-7).

        Returns:
            `(mean, variance, log_variance)`, each broadcast to `x_t`'s shape.
        """
        x_start = tf.convert_to_tensor(x_start, tf.float32)
        x_t = tf.convert_to_tensor(x_t, tf.float32)
        mean = (self._extract("posterior_mean_coef1", t, x_t) * x_start
                + self._extract("posterior_mean_coef2", t, x_t) * x_t)
        variance = self._extract("posterior_variance", t, x_t) * tf.ones_like(x_t)
        log_variance = self._extract("posterior_log_variance", t, x_t) * tf.ones_like(x_t)
        return mean, variance, log_variance

    # ---------------------------------------------------------- reverse process
    def _check_model_output(self, output, x_t):
        channels = x_t.shape[-1]
        expected = channels * (2 if self.learns_variance else 1)
        if output.shape[-1] is not None and channels is not None and output.shape[-1] != expected:
            raise ValueError(
                f"model_fn must return {expected} channels for model_var_type="
                f"{self.model_var_type!r} on inputs with {channels} channels. "
                f"Received an output of shape {output.shape}"
            )

    def _call_model(self, model_fn, x_t, t, model_kwargs):
        output = model_fn(x_t, self._model_timesteps(t), **(model_kwargs or {}))
        output = tf.cast(output, tf.float32)
        self._check_model_output(output, x_t)
        return output

    def _mean_variance_from_output(self, output, x_t, t, clip_denoised):
        """p(x_{t-1} | x_t) from a model output; see `p_mean_variance`."""
        if self.learns_variance:
            output, var_values = tf.split(output, 2, axis=-1)
            # Improved DDPM Eq. 15: v in [-1, 1] interpolates log beta-tilde .. log beta.
            frac = (var_values + 1.0) / 2.0
            min_log = self._extract("posterior_log_variance", t, x_t)
            max_log = self._extract("log_betas", t, x_t)
            log_variance = frac * max_log + (1.0 - frac) * min_log
            variance = tf.exp(log_variance)
        else:
            prefix = "posterior" if self.model_var_type == "fixed_small" else "fixed_large"
            ones = tf.ones_like(x_t)
            variance = self._extract(f"{prefix}_variance", t, x_t) * ones
            log_variance = self._extract(f"{prefix}_log_variance", t, x_t) * ones
        if self.model_mean_type == "epsilon":
            pred_xstart = self._predict_xstart_from_eps(x_t, t, output)
        elif self.model_mean_type == "v":
            pred_xstart = self._predict_xstart_from_v(x_t, t, output)
        else:
            pred_xstart = output
        if clip_denoised:
            pred_xstart = tf.clip_by_value(pred_xstart, -1.0, 1.0)
        mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x_t, t)
        return dict(mean=mean, variance=variance, log_variance=log_variance, pred_xstart=pred_xstart)

    def p_mean_variance(self, model_fn, x_t, t, clip_denoised=True, model_kwargs=None):
        """Mean and variance of the model's p(x_{t-1} | x_t).

        The mean is the posterior mean at the predicted x_0 (clipped to
        [-1, 1] when `clip_denoised`), as in improved-diffusion.

        Args:
            model_fn: `model_fn(x_t, t, **model_kwargs)`.
            x_t: float32 `[B, ...]`.
            t: int32 `[B]`.
            clip_denoised: clip the predicted x_0 to [-1, 1].
            model_kwargs: extra keyword arguments for `model_fn` (e.g. `y`).

        Returns:
            dict with `mean`, `variance`, `log_variance`, `pred_xstart`, each
            float32 shaped like `x_t`.
        """
        x_t = tf.convert_to_tensor(x_t, tf.float32)
        output = self._call_model(model_fn, x_t, t, model_kwargs)
        return self._mean_variance_from_output(output, x_t, t, clip_denoised)

    # -------------------------------------------------------------- the bound
    def _vb_terms_bpd(self, x_start, x_t, t, prediction):
        """L_t of the bound at `t` in bits/dim `[B]`: KL for t > 0, decoder NLL at t = 0."""
        true_mean, _, true_log_variance = self.q_posterior_mean_variance(x_start, x_t, t)
        kl = bounds.normal_kl(true_mean, true_log_variance, prediction["mean"], prediction["log_variance"])
        kl = bounds.nats_to_bits(bounds.mean_over_pixels(kl))
        decoder_ll = bounds.discretized_gaussian_log_likelihood(
            x_start, prediction["mean"], 0.5 * prediction["log_variance"])
        decoder_nll = -bounds.nats_to_bits(bounds.mean_over_pixels(decoder_ll))
        return tf.where(tf.equal(t, 0), decoder_nll, kl)

    def prior_bpd(self, x_start):
        """KL(q(x_T | x_0) || N(0, I)) in bits/dim `[B]`; near zero for a good schedule."""
        x_start = tf.convert_to_tensor(x_start, tf.float32)
        t = tf.fill(tf.shape(x_start)[:1], self.num_timesteps - 1)
        mean, _, log_variance = self.q_mean_variance(x_start, t)
        kl = bounds.normal_kl(mean, log_variance, tf.zeros_like(mean), tf.zeros_like(mean))
        return bounds.nats_to_bits(bounds.mean_over_pixels(kl))

    def _target(self, x_start, x_t, t, noise):
        if self.model_mean_type == "epsilon":
            return noise
        if self.model_mean_type == "x0":
            return x_start
        return self._extract("sqrt_abar", t, x_t) * noise - self._extract("sqrt_one_minus_abar", t, x_t) * x_start

    def training_losses(self, model_fn, x_start, t, noise=None, model_kwargs=None, seed=None):
        """Per-example training losses at timesteps `t`.

        Args:
            model_fn: `model_fn(x_t, t, **model_kwargs)`.
            x_start: float32 `[B, ...]` in [-1, 1] (on the 8-bit grid for
                the t = 0 decoder term of the bound to be a likelihood).
            t: int32 `[B]` in [0, T).
            noise: optional standard normal noise shaped like `x_start`.
            model_kwargs: extra keyword arguments for `model_fn`.
            seed: int or `[2]` int tensor for `noise` when not given.

        Returns:
            dict of float32 `[B]`: `loss` (what to minimise), `mse` (the mean
            squared error of the mean prediction against its target, before
            any `min_snr_gamma` weighting) and
            `vb` (L_t in bits/dim, with the mean stop-gradiented for "hybrid").
        """
        x_start = tf.convert_to_tensor(x_start, tf.float32)
        if noise is None:
            noise = samplers.random_normal(tf.shape(x_start), samplers.seed_pair(seed))
        x_t = self.q_sample(x_start, t, noise=noise)
        output = self._call_model(model_fn, x_t, t, model_kwargs)
        mean_output = tf.split(output, 2, axis=-1)[0] if self.learns_variance else output
        mse = bounds.mean_over_pixels(tf.square(self._target(x_start, x_t, t, noise) - mean_output))
        if self.loss_type == "hybrid":
            # The bound term trains only the variance (Improved DDPM Sec. 3.1).
            _, var_values = tf.split(output, 2, axis=-1)
            output = tf.concat([tf.stop_gradient(mean_output), var_values], axis=-1)
        prediction = self._mean_variance_from_output(output, x_t, t, clip_denoised=False)
        vb = self._vb_terms_bpd(x_start, x_t, t, prediction)
        weighted_mse = mse if self.min_snr_gamma is None else mse * tf.gather(self._tf["mse_weight"], t)
        if self.loss_type == "mse":
            loss = weighted_mse
        elif self.loss_type == "kl":
            loss = vb * self.num_timesteps
        else:
            # L_simple + 0.001 * L_vlb with L_vlb estimated as T * L_t.
            loss = weighted_mse + vb * (self.num_timesteps * HYBRID_VLB_WEIGHT)
        return dict(loss=loss, mse=mse, vb=vb)

    def bpd_timesteps(self, num_eval_steps=None, seed=None):
        """Timesteps and weights for estimating the bound from a subset of steps.

        With `num_eval_steps=None` (or T): every step, weight 1: the exact sum.
        With K < T: t = 0 (the decoder) with weight 1, and one random
        timestep from each of K - 1 equal strata of [1, T), weighted by its
        stratum's size: a stratified importance-weighted estimate of the sum
        of the T - 1 KL terms, unbiased over the random choice (its spread
        shrinks as K grows; the exact loop has none).

        Returns:
            `(timesteps int32 [K], weights float32 [K])`.
        """
        T = self.num_timesteps
        if num_eval_steps is None or num_eval_steps == T:
            return tf.range(T, dtype=tf.int32), tf.ones([T], tf.float32)
        if isinstance(num_eval_steps, bool) or not isinstance(num_eval_steps, (int, np.integer)) \
                or not 2 <= num_eval_steps <= T:
            raise ValueError(f"`num_eval_steps` must be None or an integer in [2, {T}]. "
                             f"Received: num_eval_steps={num_eval_steps!r}")
        edges = np.linspace(1, T, num_eval_steps).round().astype(np.int64)
        low, high = edges[:-1], edges[1:]
        u = samplers.random_uniform([num_eval_steps - 1], samplers.seed_pair(seed))
        picks = tf.constant(low, tf.float32) + tf.floor(u * tf.constant(high - low, tf.float32))
        timesteps = tf.concat([[0], tf.cast(picks, tf.int32)], axis=0)
        weights = tf.constant(np.append(1.0, high - low), tf.float32)
        return timesteps, weights

    def calc_bpd_loop(self, model_fn, x_start, clip_denoised=True, model_kwargs=None,
                      seed=None, num_eval_steps=None):
        """The variational bound on -log p(x_0) in bits/dim, term by term.

        A graph loop (`tf.while_loop` with a fixed trip count, XLA-compatible)
        over the evaluated timesteps, each with fresh noise drawn from `seed`.

        Args:
            model_fn: `model_fn(x_t, t, **model_kwargs)`.
            x_start: float32 `[B, ...]` on the 8-bit grid in [-1, 1].
            clip_denoised: clip predicted x_0 to [-1, 1] for the model's mean.
            model_kwargs: extra keyword arguments for `model_fn`.
            seed: int or `[2]` int tensor: noise (and chosen steps).
            num_eval_steps: None for all T terms; K for a stratified
                estimate from K terms (see `bpd_timesteps`).

        Returns:
            dict with `total_bpd` `[B]` (prior + weighted sum of terms),
            `prior_bpd` `[B]`, and `[B, K]` per-step `vb` (bits/dim),
            `xstart_mse` and `mse` (of the implied epsilon), plus the
            evaluated `timesteps` `[K]` and their `weights` `[K]`.
        """
        x_start = tf.convert_to_tensor(x_start, tf.float32)
        with tf.control_dependencies(bounds.assert_on_8bit_grid(x_start)):
            x_start = tf.identity(x_start)
        base_seed = samplers.seed_pair(seed)
        timesteps, weights = self.bpd_timesteps(num_eval_steps, seed=samplers.fold_in(base_seed, -1))
        num_steps = int(timesteps.shape[0])
        batch = tf.shape(x_start)[0]

        def body(i, vb_acc, xstart_acc, mse_acc):
            t = tf.fill([batch], timesteps[i])
            noise = samplers.random_normal(tf.shape(x_start), samplers.fold_in(base_seed, i))
            x_t = self.q_sample(x_start, t, noise=noise)
            prediction = self.p_mean_variance(model_fn, x_t, t, clip_denoised, model_kwargs)
            eps = self._predict_eps_from_xstart(x_t, t, prediction["pred_xstart"])
            return [i + 1,
                    vb_acc.write(i, self._vb_terms_bpd(x_start, x_t, t, prediction)),
                    xstart_acc.write(i, bounds.mean_over_pixels(tf.square(prediction["pred_xstart"] - x_start))),
                    mse_acc.write(i, bounds.mean_over_pixels(tf.square(eps - noise)))]

        arrays = [tf.TensorArray(tf.float32, size=num_steps, element_shape=[None]) for _ in range(3)]
        _, *arrays = tf.while_loop(lambda i, *_: i < num_steps, body, [tf.constant(0)] + arrays)
        vb, xstart_mse, mse = (tf.transpose(a.stack()) for a in arrays)
        prior = self.prior_bpd(x_start)
        return dict(total_bpd=tf.reduce_sum(vb * weights, axis=1) + prior, prior_bpd=prior,
                    vb=vb, xstart_mse=xstart_mse, mse=mse, timesteps=timesteps, weights=weights)

    # ---------------------------------------------------------------- sampling
    def p_sample_loop(self, model_fn, shape, noise=None, seed=None, clip_denoised=True,
                      model_kwargs=None):
        """Ancestral (DDPM) sampling over all of this process's steps.

        For fewer steps, sample from `self.respace(num_steps)`.

        Args:
            model_fn: `model_fn(x_t, t, **model_kwargs)`.
            shape: `[B, ...]` of the samples.
            noise: optional x_T, standard normal of `shape`.
            seed: int or `[2]` int tensor; the same seed gives the same samples.
            clip_denoised: clip predicted x_0 to [-1, 1].
            model_kwargs: extra keyword arguments for `model_fn`.

        Returns:
            float32 samples of `shape` (x_0, roughly in [-1, 1]).
        """
        return samplers.p_sample_loop(self, model_fn, shape, noise=noise, seed=seed,
                                      clip_denoised=clip_denoised, model_kwargs=model_kwargs)

    def ddim_sample_loop(self, model_fn, shape, num_steps=50, eta=0.0, noise=None, seed=None,
                         clip_denoised=True, model_kwargs=None, spacing="leading"):
        """DDIM sampling over `num_steps` evenly spaced steps (Song et al. 2021, Eq. 12).

        Args:
            num_steps: steps in [1, T].
            eta: 0 for deterministic DDIM, 1 for DDPM-like noise.
            spacing: "leading" (default) or "trailing".
            Others as in `p_sample_loop`.

        Returns:
            float32 samples of `shape`.
        """
        spaced = self.respace(num_steps, spacing) if num_steps != self.num_timesteps else self
        return samplers.ddim_sample_loop(spaced, model_fn, shape, eta=eta, noise=noise, seed=seed,
                                         clip_denoised=clip_denoised, model_kwargs=model_kwargs)
