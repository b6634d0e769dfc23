"""`GaussianDiffusion`: forward process, posterior, the model's predictions for any parameterisation, losses."""

from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
import tensorflow as tf

from tfdiffusion import bounds
from tfdiffusion import random as tfd_random
from tfdiffusion import samplers
from tfdiffusion import schedules
from tfdiffusion import validation

__all__ = ["GaussianDiffusion", "MEAN_TYPES", "VAR_TYPES", "LOSS_TYPES"]

MEAN_TYPES = ("epsilon", "x0", "v")
VAR_TYPES = ("fixed_small", "fixed_large", "learned_range")
LOSS_TYPES = ("mse", "kl", "hybrid")

# Improved DDPM's weight of the bound in the hybrid loss: L_simple + 0.001 * L_vlb.
HYBRID_VLB_WEIGHT = 0.001

# Schedule values the conversions between eps, x0 and v use.
_CONVERSION_COEFFICIENTS = ("sqrt_abar", "sqrt_one_minus_abar", "sqrt_recip_abar", "sqrt_recipm1_abar")


def posterior_coefficients(alphas_cumprod, alphas_cumprod_prev):
    """The step t-1 <- t of a process with alpha_bar_t and alpha_bar_{t-1} (DDPM Eq. 6-7).

    Arithmetic operators only, so the same formula fills the float64 numpy
    tables of a `GaussianDiffusion` and the float64 tensors a sampler computes
    in its graph loop for respaced steps.

    Returns:
        `(beta, posterior_variance, coef_x0, coef_xt)` with beta = 1 -
        abar_t / abar_{t-1}, beta-tilde = beta (1 - abar_{t-1}) / (1 - abar_t)
        and mean = coef_x0 x_0 + coef_xt x_t.
    """
    beta = 1.0 - alphas_cumprod / alphas_cumprod_prev
    one_minus = 1.0 - alphas_cumprod
    variance = beta * (1.0 - alphas_cumprod_prev) / one_minus
    coef_x0 = beta * alphas_cumprod_prev ** 0.5 / one_minus
    coef_xt = (1.0 - alphas_cumprod_prev) * (1.0 - beta) ** 0.5 / one_minus
    return beta, variance, coef_x0, coef_xt


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
            from `get_beta_schedule`. The last may be exactly 1 (zero terminal
            SNR, Lin et al. 2024) for "x0" and "v" prediction.
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
        validate_args: check the values of inputs (x_start in [-1, 1] and
            finite, timesteps in range) at a cost of a pass over the data;
            dtypes and shapes are always checked. Off for speed once the
            pipeline is trusted (as TFP's `validate_args`).

    References:
        Ho et al. 2020, "Denoising Diffusion Probabilistic Models".
        Nichol & Dhariwal 2021, "Improved Denoising Diffusion Probabilistic Models".
        Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy".
    """

    def __init__(self, betas: Any, model_mean_type: str = "epsilon", model_var_type: str = "fixed_small",
                 loss_type: str = "mse", timestep_map: Any = None, min_snr_gamma: Optional[float] = None,
                 validate_args: bool = True):
        if isinstance(betas, str):
            raise TypeError(f"`betas` must be an array of noise variances, e.g. "
                            f"get_beta_schedule({betas!r}, 1000). Received the string {betas!r}")
        validation.check_choice("model_mean_type", model_mean_type, MEAN_TYPES)
        validation.check_choice("model_var_type", model_var_type, VAR_TYPES)
        validation.check_choice("loss_type", loss_type, LOSS_TYPES)
        if loss_type == "hybrid" and model_var_type != "learned_range":
            raise ValueError(
                "loss_type='hybrid' needs model_var_type='learned_range': its bound term is "
                "stop-gradiented through the mean and trains only a learned variance, so with "
                f"model_var_type={model_var_type!r} it would train nothing. Use loss_type='mse' "
                "(or 'kl' to train the mean on the bound).")
        if loss_type == "mse" and model_var_type == "learned_range":
            raise ValueError(
                "loss_type='mse' gives the variance output of model_var_type='learned_range' no "
                "gradient. Use loss_type='hybrid' (Improved DDPM) or 'kl'.")
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or betas.size < 1:
            raise ValueError(f"`betas` must be a 1-D array of at least 1 value. Received shape {betas.shape}")
        terminal_one = betas.size > 1 and betas[-1] == 1.0
        inner = betas[:-1] if terminal_one else betas
        if not np.all((inner > 0) & (inner < 1)):
            raise ValueError(
                "`betas` must lie in (0, 1), the last may be 1 (zero terminal SNR): a beta of 1 "
                f"elsewhere loses x_0. Received min={betas.min()}, max={betas.max()}")
        if terminal_one and model_mean_type == "epsilon":
            raise ValueError(
                "A zero-terminal-SNR schedule (last beta = 1, alpha_bar_T = 0) cannot be used with "
                "model_mean_type='epsilon': at t = T-1 the noise prediction says nothing about x_0 "
                "(Lin et al. 2024, Sec. 3.2). Use model_mean_type='v' (or 'x0').")
        if min_snr_gamma is not None:
            min_snr_gamma = validation.check_number("min_snr_gamma", min_snr_gamma, 0.0, min_inclusive=False)
        self.min_snr_gamma = min_snr_gamma
        self.betas = betas
        self.model_mean_type = model_mean_type
        self.model_var_type = model_var_type
        self.loss_type = loss_type
        self.validate_args = validation.check_bool("validate_args", validate_args)
        self.num_timesteps = int(betas.shape[0])
        if timestep_map is None:
            timestep_map = np.arange(self.num_timesteps)
        self.timestep_map = np.asarray(timestep_map, dtype=np.int64)
        if self.timestep_map.shape != betas.shape:
            raise ValueError(f"`timestep_map` must have one entry per beta ({betas.shape[0]}). "
                             f"Received shape {self.timestep_map.shape}")
        self._set_constants()

    def _set_constants(self):
        # All in float64, cast once (improved-diffusion: "use float64 for accuracy").
        betas = self.betas
        abar = np.cumprod(1.0 - betas)
        abar_prev = np.append(1.0, abar[:-1])
        self.alphas_cumprod = abar
        self.alphas_cumprod_prev = abar_prev
        with np.errstate(divide="ignore", invalid="ignore"):
            _, posterior_variance, coef_x0, coef_xt = posterior_coefficients(abar, abar_prev)
        # beta-tilde_0 = 0: clip its log to that of t = 1 (to beta_0 for a one-step process).
        first = posterior_variance[1] if len(betas) > 1 else betas[0]
        fixed_large_variance = np.append(first, betas[1:])
        snr = abar / (1.0 - abar)
        if self.min_snr_gamma is None:
            mse_weight = np.ones_like(betas)
        else:
            clipped = np.minimum(snr, self.min_snr_gamma)
            with np.errstate(divide="ignore", invalid="ignore"):
                mse_weight = {"epsilon": clipped / snr, "x0": clipped, "v": clipped / (snr + 1.0)}[
                    self.model_mean_type]
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
                posterior_log_variance=np.log(np.append(first, posterior_variance[1:])),
                posterior_mean_coef1=coef_x0,
                posterior_mean_coef2=coef_xt,
                fixed_large_variance=fixed_large_variance,
                fixed_large_log_variance=np.log(fixed_large_variance),
                log_betas=np.log(betas),
                mse_weight=mse_weight,
            )
        self._tf = {name: _constant(value) for name, value in self._np.items()}
        self._timestep_map = tf.constant(self.timestep_map, dtype=tf.int32)

    # ------------------------------------------------------------------ config
    def get_config(self) -> Dict[str, Any]:
        """JSON-friendly constructor arguments."""
        config = dict(betas=self.betas.tolist(), model_mean_type=self.model_mean_type,
                      model_var_type=self.model_var_type, loss_type=self.loss_type)
        if self.min_snr_gamma is not None:
            config["min_snr_gamma"] = self.min_snr_gamma
        if not np.array_equal(self.timestep_map, np.arange(self.num_timesteps)):
            config["timestep_map"] = self.timestep_map.tolist()
        if not self.validate_args:
            config["validate_args"] = False
        return config

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> "GaussianDiffusion":
        return cls(**config)

    def __repr__(self) -> str:
        return (f"GaussianDiffusion(num_timesteps={self.num_timesteps}, "
                f"model_mean_type={self.model_mean_type!r}, model_var_type={self.model_var_type!r}, "
                f"loss_type={self.loss_type!r})")

    @property
    def learn_sigma(self) -> bool:
        """Whether `model_fn` outputs variances too (model_var_type "learned_range", UNet `learn_sigma`)."""
        return self.model_var_type == "learned_range"

    def respace(self, num_steps: int, spacing: str = "leading") -> "GaussianDiffusion":
        """A process over `num_steps` of the T steps, for faster sampling or bounds.

        Its betas are 1 - abar[t_i] / abar[t_{i-1}] over the kept timesteps,
        so its marginals q(x_t | x_0) at kept steps equal this process's; the
        model is still called with the original timesteps.

        Args:
            num_steps: steps to keep, in [1, T].
            spacing: "leading", "trailing" or "linspace", see `space_timesteps`.

        Returns:
            A `GaussianDiffusion` with `num_steps` timesteps.
        """
        kept = schedules.space_timesteps(self.num_timesteps, num_steps, spacing)
        abar = self.alphas_cumprod[kept]
        new_betas = 1.0 - abar / np.append(1.0, abar[:-1])
        return GaussianDiffusion(new_betas, self.model_mean_type, self.model_var_type, self.loss_type,
                                 timestep_map=self.timestep_map[kept], min_snr_gamma=self.min_snr_gamma,
                                 validate_args=self.validate_args)

    # ------------------------------------------------- schedule values at t
    def extract(self, name: str, t: tf.Tensor, like: tf.Tensor) -> tf.Tensor:
        """Schedule value `name` at timesteps `t` `[B]`, shaped to broadcast against `like`.

        Names: sqrt_abar, sqrt_one_minus_abar, abar, abar_prev,
        posterior_variance, posterior_log_variance (clipped at t = 0),
        posterior_mean_coef1 / 2, fixed_large_variance, log_betas, ...
        """
        values = tf.gather(self._tf[name], t)
        return tf.reshape(values, [-1] + [1] * (like.shape.rank - 1))

    def model_timesteps(self, t: tf.Tensor) -> tf.Tensor:
        """The trained-process timesteps the model is called with at this process's `t`.

        Integer `t` gathers `timestep_map` (int32); float `t` (a noise level
        between steps, e.g. `samplers.levels.timestep_from_sigma`) interpolates
        it linearly (float32).
        """
        t = tf.convert_to_tensor(t)
        if t.dtype.is_integer:
            return tf.gather(self._timestep_map, t)
        t = tf.clip_by_value(tf.cast(t, tf.float32), 0.0, float(self.num_timesteps - 1))
        low = tf.minimum(tf.cast(tf.floor(t), tf.int32), max(self.num_timesteps - 2, 0))
        high = tf.minimum(low + 1, self.num_timesteps - 1)
        mapped = tf.cast(self._timestep_map, tf.float32)
        return tf.gather(mapped, low) + (t - tf.cast(low, tf.float32)) * (
            tf.gather(mapped, high) - tf.gather(mapped, low))

    def _check_t(self, t, x):
        return validation.check_timesteps(t, self.num_timesteps, batch=x.shape[0], validate=self.validate_args)

    # ------------------------------------------- conversions between targets
    def _coefficients(self, t: tf.Tensor, like: tf.Tensor) -> Dict[str, tf.Tensor]:
        """The schedule values the conversions need, at table timesteps `t` `[B]`."""
        return {name: self.extract(name, t, like) for name in _CONVERSION_COEFFICIENTS}

    @staticmethod
    def _coefficients_at(alphas_cumprod: Any, like: tf.Tensor) -> Dict[str, tf.Tensor]:
        """The same values at any alpha_bar (a scalar or `[B]`), computed in float64, cast once."""
        abar = tf.cast(alphas_cumprod, tf.float64)
        if abar.shape.rank:
            abar = tf.reshape(abar, [-1] + [1] * (like.shape.rank - 1))
        values = dict(sqrt_abar=tf.sqrt(abar), sqrt_one_minus_abar=tf.sqrt(1.0 - abar),
                      sqrt_recip_abar=1.0 / tf.sqrt(abar), sqrt_recipm1_abar=tf.sqrt(1.0 / abar - 1.0))
        return {name: tf.cast(value, tf.float32) for name, value in values.items()}

    @staticmethod
    def _xstart_from_eps(x_t, eps, coef):
        return coef["sqrt_recip_abar"] * x_t - coef["sqrt_recipm1_abar"] * eps

    @staticmethod
    def _eps_from_xstart(x_t, pred_xstart, coef):
        return (x_t - coef["sqrt_abar"] * pred_xstart) / coef["sqrt_one_minus_abar"]

    @staticmethod
    def _xstart_from_v(x_t, v, coef):
        return coef["sqrt_abar"] * x_t - coef["sqrt_one_minus_abar"] * v

    def predict_xstart_from_eps(self, x_t: tf.Tensor, t: tf.Tensor, eps: tf.Tensor) -> tf.Tensor:
        """x_0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar) (DDPM Eq. 4 solved for x_0)."""
        return self._xstart_from_eps(x_t, eps, self._coefficients(t, x_t))

    def predict_eps_from_xstart(self, x_t: tf.Tensor, t: tf.Tensor, pred_xstart: tf.Tensor) -> tf.Tensor:
        """eps = (x_t - sqrt(abar) x_0) / sqrt(1 - abar); finite also where abar = 0."""
        return self._eps_from_xstart(x_t, pred_xstart, self._coefficients(t, x_t))

    def predict_xstart_from_v(self, x_t: tf.Tensor, t: tf.Tensor, v: tf.Tensor) -> tf.Tensor:
        """x_0 = sqrt(abar) x_t - sqrt(1 - abar) v (Salimans & Ho 2022, Eq. 9 solved for x_0)."""
        return self._xstart_from_v(x_t, v, self._coefficients(t, x_t))

    # ---------------------------------------------------------- forward process
    def q_mean_variance(self, x_start: Any, t: Any) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Mean, variance and log-variance of q(x_t | x_0) (DDPM Eq. 4)."""
        x_start = validation.check_images(x_start, "x_start", self.validate_args)
        t = self._check_t(t, x_start)
        mean = self.extract("sqrt_abar", t, x_start) * x_start
        variance = 1.0 - self.extract("abar", t, x_start)
        log_variance = self.extract("log_one_minus_abar", t, x_start)
        return mean, variance, log_variance

    def q_sample(self, x_start: Any, t: Any, noise: Any = None, seed: Any = None) -> tf.Tensor:
        """Draws x_t ~ q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) (DDPM Eq. 4).

        Args:
            x_start: float `[B, ...]`, the clean data x_0 in [-1, 1].
            t: int `[B]` timesteps in [0, T).
            noise: optional standard normal noise shaped like `x_start`.
            seed: int or `[2]` int tensor for drawing `noise` when not given.

        Returns:
            float32 `[B, ...]` x_t.
        """
        x_start = validation.check_images(x_start, "x_start", self.validate_args)
        t = self._check_t(t, x_start)
        return self._q_sample(x_start, t, noise, seed)

    def _q_sample(self, x_start, t, noise=None, seed=None):
        if noise is None:
            noise = tfd_random.random_normal(tf.shape(x_start), tfd_random.seed_pair(seed))
        noise = tf.convert_to_tensor(noise, tf.float32)
        return self.extract("sqrt_abar", t, x_start) * x_start + self.extract("sqrt_one_minus_abar", t,
                                                                                x_start) * noise

    def q_posterior_mean_variance(self, x_start: Any, x_t: Any, t: Any
                                  ) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Mean, variance, clipped log-variance of q(x_{t-1} | x_t, x_0) (DDPM Eq. 6-7).

        Returns:
            `(mean, variance, log_variance)`, each broadcast to `x_t`'s shape.
        """
        x_start = tf.convert_to_tensor(x_start, tf.float32)
        x_t = tf.convert_to_tensor(x_t, tf.float32)
        return self._q_posterior_mean_variance(x_start, x_t, self._check_t(t, x_t))

    def _q_posterior_mean_variance(self, x_start, x_t, t):
        mean = (self.extract("posterior_mean_coef1", t, x_t) * x_start
                + self.extract("posterior_mean_coef2", t, x_t) * x_t)
        variance = self.extract("posterior_variance", t, x_t) * tf.ones_like(x_t)
        log_variance = self.extract("posterior_log_variance", t, x_t) * tf.ones_like(x_t)
        return mean, variance, log_variance

    # ---------------------------------------------------------- reverse process
    def _call_model(self, model_fn, x_t, t, model_kwargs):
        output = tf.cast(model_fn(x_t, self.model_timesteps(t), **(model_kwargs or {})), tf.float32)
        channels = x_t.shape[-1]
        expected = channels * (2 if self.learn_sigma else 1)
        if output.shape[-1] is not None and channels is not None and output.shape[-1] != expected:
            raise ValueError(f"model_fn must return {expected} channels for model_var_type="
                             f"{self.model_var_type!r} on inputs with {channels} channels. "
                             f"Received an output of shape {output.shape}")
        return output

    def predictions_from_output(self, output: tf.Tensor, x_t: tf.Tensor, t: tf.Tensor,
                                clip_denoised: bool = True,
                                denoised_fn: Optional[Callable] = None) -> Dict[str, Any]:
        """x_0 and epsilon implied by a model output at `(x_t, t)`, whatever `model_mean_type`.

        Returns:
            dict with `model_output` (the mean channels), `var_values` (the
            variance channels, or None), `pred_xstart` (after `denoised_fn`,
            then clipped to [-1, 1] when `clip_denoised`) and `pred_eps` (the
            epsilon re-derived from that x_0, as improved-diffusion does).
        """
        return self._predictions(output, x_t, self._coefficients(t, x_t), clip_denoised, denoised_fn)

    def _predictions(self, output, x_t, coef, clip_denoised, denoised_fn):
        var_values = None
        if self.learn_sigma:
            output, var_values = tf.split(output, 2, axis=-1)
        if self.model_mean_type == "epsilon":
            pred_xstart = self._xstart_from_eps(x_t, output, coef)
        elif self.model_mean_type == "v":
            pred_xstart = self._xstart_from_v(x_t, output, coef)
        else:
            pred_xstart = output
        if denoised_fn is not None:
            pred_xstart = denoised_fn(pred_xstart)
        if clip_denoised:
            pred_xstart = tf.clip_by_value(pred_xstart, -1.0, 1.0)
        if self.model_mean_type == "epsilon" and not clip_denoised and denoised_fn is None:
            pred_eps = output
        else:
            pred_eps = self._eps_from_xstart(x_t, pred_xstart, coef)
        return dict(model_output=output, var_values=var_values, pred_xstart=pred_xstart, pred_eps=pred_eps)

    def model_predictions(self, model_fn: Callable, x_t: tf.Tensor, t: tf.Tensor, clip_denoised: bool = True,
                          denoised_fn: Optional[Callable] = None,
                          model_kwargs: Optional[dict] = None) -> Dict[str, Any]:
        """Calls the model once at `(x_t, t)`; see `predictions_from_output` for the dict."""
        x_t = tf.convert_to_tensor(x_t, tf.float32)
        t = self._check_t(t, x_t)
        output = self._call_model(model_fn, x_t, t, model_kwargs)
        return self.predictions_from_output(output, x_t, t, clip_denoised, denoised_fn)

    def model_predictions_at(self, model_fn: Callable, x_t: tf.Tensor, t: tf.Tensor, alphas_cumprod: Any,
                             clip_denoised: bool = True, denoised_fn: Optional[Callable] = None,
                             model_kwargs: Optional[dict] = None) -> Dict[str, Any]:
        """Calls the model once at a noise level given by its alpha_bar, on or between the table's steps.

        For solvers that visit noise levels between the trained timesteps
        (Karras sigmas, stochastic churn): the model gets the (fractional)
        timestep `t` (`samplers.levels.timestep_from_sigma`), mapped by `model_timesteps`;
        its output is converted with `alphas_cumprod` itself, not with a table
        value. On the table (integer `t`, its alpha_bar) this equals
        `model_predictions` up to float32 rounding of the coefficients.

        Args:
            model_fn: `model_fn(x_t, t, **model_kwargs)`; `t` float32 here
                when given as floats (the tfdiffusion `UNet` accepts them).
            x_t: float32 `[B, ...]`.
            t: `[B]` timesteps in [0, T - 1], integer or float.
            alphas_cumprod: alpha_bar of the level, a float scalar or `[B]`,
                in [0, 1) (0 only for "x0" and "v" prediction).
            clip_denoised, denoised_fn, model_kwargs: as in `model_predictions`.

        Returns:
            The dict of `predictions_from_output`.
        """
        x_t = tf.convert_to_tensor(x_t, tf.float32)
        t = tf.convert_to_tensor(t)
        if t.dtype.is_integer:
            t = self._check_t(t, x_t)
        elif t.shape.rank != 1 or (t.shape[0] is not None and x_t.shape[0] is not None
                                   and t.shape[0] != x_t.shape[0]):
            raise ValueError(f"`t` must be a vector of timesteps, one per example ({x_t.shape[0]}). "
                             f"Received shape {t.shape}")
        output = self._call_model(model_fn, x_t, t, model_kwargs)
        return self._predictions(output, x_t, self._coefficients_at(alphas_cumprod, x_t), clip_denoised,
                                 denoised_fn)

    def reverse_log_variance(self, log_small: tf.Tensor, log_beta: tf.Tensor, log_large: tf.Tensor,
                             var_values: Optional[tf.Tensor], like: tf.Tensor) -> tf.Tensor:
        """log-variance of p(x_{t-1} | x_t) for `model_var_type`, shaped like `like`.

        Args:
            log_small: log beta-tilde_t, clipped at the first step (fixed_small).
            log_beta: log beta_t (the upper end of learned_range).
            log_large: log beta_t with the first step's replaced by beta-tilde_1 (fixed_large).
            var_values: the model's variance channels in [-1, 1] (learned_range).
            like: a tensor of the sample's shape.
        """
        cast = lambda v: tf.cast(v, tf.float32)  # noqa: E731
        if self.learn_sigma:
            # Improved DDPM Eq. 15: v in [-1, 1] interpolates log beta-tilde .. log beta.
            frac = (var_values + 1.0) / 2.0
            return frac * cast(log_beta) + (1.0 - frac) * cast(log_small)
        chosen = log_small if self.model_var_type == "fixed_small" else log_large
        return cast(chosen) * tf.ones_like(like)

    @staticmethod
    def posterior_coefficients(alphas_cumprod, alphas_cumprod_prev):
        """See the module function `posterior_coefficients` (DDPM Eq. 6-7)."""
        return posterior_coefficients(alphas_cumprod, alphas_cumprod_prev)

    def _mean_variance_from_output(self, output, x_t, t, clip_denoised):
        """p(x_{t-1} | x_t) from a model output; see `p_mean_variance`."""
        out = self.predictions_from_output(output, x_t, t, clip_denoised)
        log_variance = self.reverse_log_variance(
            self.extract("posterior_log_variance", t, x_t), self.extract("log_betas", t, x_t),
            self.extract("fixed_large_log_variance", t, x_t), out["var_values"], x_t)
        mean = (self.extract("posterior_mean_coef1", t, x_t) * out["pred_xstart"]
                + self.extract("posterior_mean_coef2", t, x_t) * x_t)
        return dict(mean=mean, variance=tf.exp(log_variance), log_variance=log_variance,
                    pred_xstart=out["pred_xstart"])

    def p_mean_variance(self, model_fn: Callable, x_t: Any, t: Any, clip_denoised: bool = True,
                        model_kwargs: Optional[dict] = None) -> Dict[str, tf.Tensor]:
        """Mean and variance of the model's p(x_{t-1} | x_t).

        The mean is the posterior mean at the predicted x_0 (clipped to
        [-1, 1] when `clip_denoised`), as in improved-diffusion.

        Args:
            model_fn: `model_fn(x_t, t, **model_kwargs)`.
            x_t: float32 `[B, ...]`.
            t: int `[B]` in [0, T).
            clip_denoised: clip the predicted x_0 to [-1, 1].
            model_kwargs: extra keyword arguments for `model_fn` (e.g. `y`).

        Returns:
            dict with `mean`, `variance`, `log_variance`, `pred_xstart`, each
            float32 shaped like `x_t`.
        """
        x_t = tf.convert_to_tensor(x_t, tf.float32)
        t = self._check_t(t, x_t)
        output = self._call_model(model_fn, x_t, t, model_kwargs)
        return self._mean_variance_from_output(output, x_t, t, clip_denoised)

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

    # ---------------------------------------------------------------- sampling
    def _sample_loop(self, name, model_fn, shape, num_steps, noise, seed, clip_denoised, model_kwargs,
                     spacing="leading", **options):
        base_seed = tfd_random.seed_pair(seed)
        if noise is None:
            noise = tfd_random.random_normal(shape, tfd_random.fold_in(base_seed, -1))
        noise = tf.convert_to_tensor(noise, tf.float32)
        if not noise.shape.is_compatible_with(tf.TensorShape(shape)):
            raise ValueError(f"`noise` must have the sample shape {list(shape)}. Received {noise.shape}")
        sampler = samplers.get_sampler(name)(self, spacing=spacing, clip_denoised=clip_denoised)
        return sampler.sample(model_fn, noise, num_steps, base_seed, model_kwargs, **options)

    def p_sample_loop(self, model_fn: Callable, shape: Any, noise: Any = None, seed: Any = None,
                      clip_denoised: bool = True, model_kwargs: Optional[dict] = None) -> tf.Tensor:
        """Ancestral (DDPM) sampling over all of this process's steps.

        For fewer steps, sample from `self.respace(num_steps)` (or use the
        "ddpm" sampler of `tfdiffusion.samplers` with `num_steps`).

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
        return self._sample_loop("ddpm", model_fn, shape, self.num_timesteps, noise, seed, clip_denoised,
                                 model_kwargs)

    def ddim_sample_loop(self, model_fn: Callable, shape: Any, num_steps: int = 50, eta: float = 0.0,
                         noise: Any = None, seed: Any = None, clip_denoised: bool = True,
                         model_kwargs: Optional[dict] = None, spacing: str = "leading") -> tf.Tensor:
        """DDIM sampling over `num_steps` evenly spaced steps (Song et al. 2021, Eq. 12).

        Args:
            num_steps: steps in [1, T].
            eta: 0 for deterministic DDIM, 1 for DDPM-like noise.
            spacing: "leading" (default), "trailing" or "linspace".
            Others as in `p_sample_loop`.

        Returns:
            float32 samples of `shape`.
        """
        return self._sample_loop("ddim", model_fn, shape, num_steps, noise, seed, clip_denoised,
                                 model_kwargs, spacing=spacing, eta=eta)
