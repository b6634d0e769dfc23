"""`ReverseProcess`: the `GaussianDiffusion` mix-in for the model's side of the process.

The conversions between the parameterisations (epsilon, x0, v), calling
`model_fn` and reading its output as predictions of x_0 and epsilon, and the
model's p(x_{t-1} | x_t) (`p_mean_variance`). It needs the process's
`model_mean_type`, `model_var_type`, `learn_sigma`, `extract`,
`model_timesteps` and `_check_t`.
"""

from typing import Any, Callable, Dict, Optional

import tensorflow as tf

__all__ = ["ReverseProcess"]

# Schedule values the conversions between eps, x0 and v use.
_CONVERSION_COEFFICIENTS = ("sqrt_abar", "sqrt_one_minus_abar", "sqrt_recip_abar")


class ReverseProcess:
    """Mix-in for `GaussianDiffusion`: the model's predictions and its p(x_{t-1} | x_t)."""

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
                      sqrt_recip_abar=1.0 / tf.sqrt(abar))
        return {name: tf.cast(value, tf.float32) for name, value in values.items()}

    @staticmethod
    def _xstart_from_eps(x_t, eps, coef):
        # (x_t - sqrt(1 - abar) eps) / sqrt(abar): the difference is taken at the scale of x_t. The
        # expanded form sqrt(1/abar) x_t - sqrt(1/abar - 1) eps rounds two nearly equal large float32
        # coefficients first (both 2.03e4 at the cosine schedule's last step) and loses more.
        return coef["sqrt_recip_abar"] * (x_t - coef["sqrt_one_minus_abar"] * eps)

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
