"""Schedules and timestep spacings against the papers' definitions."""

import math

import numpy as np
import pytest

from tfdiffusion import schedules


@pytest.mark.parametrize("T", [21, 100, 1000, 4000])
def test_linear_matches_ddpm(T):
    # DDPM: beta_1 = 1e-4 ... beta_T = 0.02 at T = 1000, linearly; scaled by 1000 / T.
    start, end = 1e-4 * 1000 / T, 0.02 * 1000 / T
    expected = np.array([start + (end - start) * i / (T - 1) for i in range(T)])
    betas = schedules.get_beta_schedule("linear", T)
    assert betas.dtype == np.float64 and betas.shape == (T,)
    np.testing.assert_allclose(betas, expected, rtol=1e-12)


def test_linear_endpoints_at_1000():
    betas = schedules.get_beta_schedule("linear", 1000)
    assert betas[0] == pytest.approx(1e-4, rel=1e-12) and betas[-1] == pytest.approx(0.02, rel=1e-12)


@pytest.mark.parametrize("T", [20, 1000])
def test_cosine_alpha_bar_follows_improved_ddpm(T):
    # Improved DDPM Eq. 17: alpha_bar(t) = f(t) / f(0), f(t) = cos^2(((t/T + s) / (1 + s)) pi/2).
    s = 0.008
    f = [math.cos(((t / T + s) / (1 + s)) * math.pi / 2) ** 2 for t in range(T + 1)]
    betas = schedules.get_beta_schedule("cosine", T)
    raw = np.array([1 - f[t + 1] / f[t] for t in range(T)])
    np.testing.assert_allclose(betas, np.minimum(raw, 0.999), rtol=1e-12)
    uncapped = raw < 0.999
    abar = np.cumprod(1 - betas)
    np.testing.assert_allclose(abar[uncapped], (np.array(f[1:]) / f[0])[uncapped], rtol=1e-10)
    assert betas.max() <= 0.999


def test_cosine_caps_betas():
    assert schedules.get_beta_schedule("cosine", 1000)[-1] == 0.999


def test_leading_and_trailing_spacing():
    np.testing.assert_array_equal(schedules.space_timesteps(1000, 50), np.arange(0, 1000, 20))
    np.testing.assert_array_equal(schedules.space_timesteps(1000, 50, "trailing"), np.arange(19, 1000, 20))
    np.testing.assert_array_equal(schedules.space_timesteps(10, 10, "trailing"), np.arange(10))
    # diffusers: round(arange(T, 0, -T / n)) - 1 = round([10, 6.67, 3.33]) - 1.
    assert list(schedules.space_timesteps(10, 3, "trailing")) == [2, 6, 9]


@pytest.mark.parametrize("call, match", [
    (lambda: schedules.get_beta_schedule("quadratic", 10), "must be one of"),
    (lambda: schedules.get_beta_schedule("cosine", 0), "positive integer"),
    (lambda: schedules.get_beta_schedule("linear", 20), "T > 20"),
    (lambda: schedules.space_timesteps(100, 0), "between 1 and 100"),
    (lambda: schedules.space_timesteps(100, 2.5), "between 1 and 100"),
    (lambda: schedules.space_timesteps(100, 101), "between 1 and 100"),
    (lambda: schedules.space_timesteps(100, 10, "middle"), "must be one of"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
