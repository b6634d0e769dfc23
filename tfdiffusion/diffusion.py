"""`GaussianDiffusion`: the diffusion process, its schedule tables, forward process and posterior.

The class checks its arguments, computes the schedule values in float64
(`extract` gathers them at timesteps), respaces itself and holds q(x_t | x_0)
and q(x_{t-1} | x_t, x_0). Its other parts are mix-ins: the model's
predictions and p(x_{t-1} | x_t) (`diffusion_reverse.ReverseProcess`), the
bound and training losses (`diffusion_losses.DiffusionLosses`) and the
sampling loops (`diffusion_sampling.DiffusionSampling`).
"""

from typing import Any, Dict, Optional, Tuple

import numpy as np
import tensorflow as tf

from tfdiffusion import random as tfd_random
from tfdiffusion import schedules
from tfdiffusion import validation
from tfdiffusion.diffusion_losses import DiffusionLosses
from tfdiffusion.diffusion_losses import HYBRID_VLB_WEIGHT  # noqa: F401  (importable from here as before)
from tfdiffusion.diffusion_reverse import ReverseProcess
from tfdiffusion.diffusion_sampling import DiffusionSampling

__all__ = ["GaussianDiffusion", "MEAN_TYPES", "VAR_TYPES", "LOSS_TYPES"]

MEAN_TYPES = ("epsilon", "x0", "v")
VAR_TYPES = ("fixed_small", "fixed_large", "learned_range")
LOSS_TYPES = ("mse", "kl", "hybrid")


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


class GaussianDiffusion(ReverseProcess, DiffusionLosses, DiffusionSampling):
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
        if not noise.shape.is_compatible_with(x_start.shape):
            raise ValueError(f"`noise` must be shaped like `x_start` {x_start.shape}. Received shape {noise.shape}")
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

    @staticmethod
    def posterior_coefficients(alphas_cumprod, alphas_cumprod_prev):
        """See the module function `posterior_coefficients` (DDPM Eq. 6-7)."""
        return posterior_coefficients(alphas_cumprod, alphas_cumprod_prev)
