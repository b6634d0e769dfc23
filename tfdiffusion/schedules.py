"""Noise schedules (betas) and timestep spacings for diffusion, in float64 numpy."""

import math

import numpy as np

__all__ = ["SCHEDULES", "SPACINGS", "get_beta_schedule", "space_timesteps"]

SCHEDULES = ("linear", "cosine")
SPACINGS = ("leading", "trailing")


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")


def get_beta_schedule(name, num_timesteps):
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
    if name not in SCHEDULES:
        raise ValueError(f"`name` must be one of {SCHEDULES}. Received: name={name!r}")
    _check_positive_int("num_timesteps", num_timesteps)
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


def space_timesteps(num_timesteps, num_steps, spacing="leading"):
    """Chooses `num_steps` of the `num_timesteps` steps for a shorter sampler.

    Args:
        num_timesteps: T of the trained diffusion.
        num_steps: how many steps the sampler takes, in [1, T].
        spacing: "leading" (DDIM paper, diffusers' default: 0, k, 2k, ... with
            k = T // num_steps; T=1000, 50 steps: 0, 20, ..., 980) or
            "trailing" (ends at T - 1: T=1000, 50 steps: 19, 39, ..., 999).

    Returns:
        int64 numpy array `[num_steps]`, strictly increasing timesteps.
    """
    if spacing not in SPACINGS:
        raise ValueError(f"`spacing` must be one of {SPACINGS}. Received: spacing={spacing!r}")
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) \
            or not 1 <= num_steps <= num_timesteps:
        raise ValueError(
            f"`num_steps` must be between 1 and {num_timesteps} (the diffusion's "
            f"number of timesteps). Received: num_steps={num_steps}"
        )
    if spacing == "leading":
        return np.arange(num_steps, dtype=np.int64) * (num_timesteps // num_steps)
    ratio = num_timesteps / num_steps
    return (np.round(np.arange(num_timesteps, 0, -ratio)) - 1).astype(np.int64)[::-1].copy()
