"""Noise schedules (betas) and timestep spacings for diffusion, in float64 numpy."""

import math

import numpy as np

from tfdiffusion import validation

__all__ = [
    "SCHEDULES", "SPACINGS", "get_beta_schedule", "linear_betas", "rescale_zero_terminal_snr",
    "scaled_linear_betas", "space_timesteps",
]

SCHEDULES = ("linear", "cosine")
SPACINGS = ("leading", "trailing", "linspace")


def get_beta_schedule(name: str, num_timesteps: int) -> np.ndarray:
    """Returns the betas of a named noise schedule.

    A named schedule, once published, never changes its values.

    Args:
        name: "linear" (DDPM: betas from 1e-4 to 0.02, both scaled by
            1000 / num_timesteps so that any T gives a similar process) or
            "cosine" (Improved DDPM: alpha_bar(t) = cos^2((t/T + s) / (1 + s) * pi/2)
            with s = 0.008, betas capped at 0.999).
        num_timesteps: T, the number of diffusion steps.

    Returns:
        float64 numpy array `[T]` of betas in (0, 1).

    References:
        Ho et al. 2020, "Denoising Diffusion Probabilistic Models", Sec. 4.
        Nichol & Dhariwal 2021, "Improved Denoising Diffusion Probabilistic
        Models", Eq. 17.
    """
    validation.check_choice("name", name, SCHEDULES)
    num_timesteps = validation.check_int("num_timesteps", num_timesteps)
    if name == "linear":
        if num_timesteps <= 20:
            raise ValueError(
                "The linear schedule scales its last beta 0.02 by 1000 / T, which reaches 1 "
                f"(alpha_bar_T = 0) at T = 20: use T > 20 or 'cosine'. Received: num_timesteps={num_timesteps}")
        scale = 1000.0 / num_timesteps
        return np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)
    s = 0.008

    def alpha_bar(u):
        return math.cos((u + s) / (1.0 + s) * math.pi / 2.0) ** 2

    steps = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
    abar = np.array([alpha_bar(u) for u in steps], dtype=np.float64)
    return np.minimum(1.0 - abar[1:] / abar[:-1], 0.999)


def _round_half_even_div(numerator: np.ndarray, denominator: int) -> np.ndarray:
    """round(numerator / denominator) for non-negative integers, halves to even (as `np.round`)."""
    quotient, remainder = np.divmod(numerator, denominator)
    up = (2 * remainder > denominator) | ((2 * remainder == denominator) & (quotient % 2 == 1))
    return quotient + up.astype(np.int64)


def space_timesteps(num_timesteps: int, num_steps: int, spacing: str = "leading") -> np.ndarray:
    """Chooses `num_steps` of the `num_timesteps` steps for a shorter sampler.

    Integer arithmetic throughout, so every `num_steps` in [1, T] gives
    exactly `num_steps` distinct timesteps (diffusers' float `arange` gives
    one too many for some counts, e.g. 62 for T=1000, 61 steps "trailing").

    Args:
        num_timesteps: T of the trained diffusion.
        num_steps: how many steps the sampler takes, in [1, T].
        spacing: "leading" (DDIM paper, diffusers' default: 0, k, 2k, ... with
            k = T // num_steps; T=1000, 50 steps: 0, 20, ..., 980),
            "trailing" (round(T k / num_steps) - 1 for k = 1..num_steps, ending
            at T - 1: T=1000, 50 steps: 19, 39, ..., 999) or "linspace"
            (round((T - 1) i / (num_steps - 1)): 0, ..., T - 1 evenly). Halves
            round to even, as diffusers' `np.round` does.

    Returns:
        int64 numpy array `[num_steps]`, strictly increasing timesteps in [0, T).

    References:
        Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps Are
        Flawed", Table 2 (the three spacings).
    """
    validation.check_choice("spacing", spacing, SPACINGS)
    num_timesteps = validation.check_int("num_timesteps", num_timesteps)
    num_steps = validation.check_int("num_steps", num_steps, 1, num_timesteps)
    steps = np.arange(num_steps, dtype=np.int64)
    if spacing == "leading":
        return steps * (num_timesteps // num_steps)
    if spacing == "trailing":
        return _round_half_even_div(num_timesteps * (steps + 1), num_steps) - 1
    if num_steps == 1:
        return np.zeros([1], np.int64)
    return _round_half_even_div((num_timesteps - 1) * steps, num_steps - 1)


def _check_beta_range(beta_start, beta_end):
    for name, value in (("beta_start", beta_start), ("beta_end", beta_end)):
        validation.check_number(name, value, 0.0, 1.0, min_inclusive=False, max_inclusive=False)


def linear_betas(num_timesteps, beta_start=1e-4, beta_end=0.02):
    """Betas evenly spaced from `beta_start` to `beta_end`, without DDPM's 1000 / T scaling.

    diffusers' "linear" schedule (`get_beta_schedule("linear", T)` instead
    scales both ends by 1000 / T; the two agree at T = 1000).

    Args:
        num_timesteps: T.
        beta_start: first beta, in (0, 1).
        beta_end: last beta, in (0, 1).

    Returns:
        float64 numpy array `[T]`.
    """
    validation.check_int("num_timesteps", num_timesteps)
    _check_beta_range(beta_start, beta_end)
    return np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)


def scaled_linear_betas(num_timesteps, beta_start=0.00085, beta_end=0.012):
    """Betas whose square roots are evenly spaced (latent diffusion's "scaled_linear").

    beta_t = (sqrt(beta_start) + t / (T - 1) * (sqrt(beta_end) - sqrt(beta_start)))^2.

    Returns:
        float64 numpy array `[T]`.
    """
    validation.check_int("num_timesteps", num_timesteps)
    _check_beta_range(beta_start, beta_end)
    return np.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=np.float64) ** 2


def rescale_zero_terminal_snr(betas):
    """Rescales betas so that the last step has zero SNR (alpha_bar_T = 0).

    sqrt(alpha_bar) is shifted so that its last value is 0 and scaled so
    that its first value is unchanged; the betas are recovered from the
    rescaled alpha_bar. The last beta becomes exactly 1.

    Args:
        betas: 1-D array `[T]` of betas in (0, 1), T >= 2.

    Returns:
        float64 numpy array `[T]`; the last entry is 1.

    References:
        Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps
        are Flawed", Algorithm 1.
    """
    betas = np.asarray(betas, dtype=np.float64)
    if betas.ndim != 1 or betas.size < 2 or not np.all((betas > 0) & (betas < 1)):
        raise ValueError("`betas` must be a 1-D array of at least 2 values in (0, 1). "
                         f"Received shape {betas.shape}")
    sqrt_abar = np.sqrt(np.cumprod(1.0 - betas))
    first, last = sqrt_abar[0], sqrt_abar[-1]
    sqrt_abar = (sqrt_abar - last) * first / (first - last)
    abar = sqrt_abar**2
    alphas = np.append(abar[0], abar[1:] / abar[:-1])
    return 1.0 - alphas
