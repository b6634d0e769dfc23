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


@pytest.mark.parametrize("call, error, match", [
    (lambda: schedules.get_beta_schedule("quadratic", 10), ValueError, "must be one of"),
    (lambda: schedules.get_beta_schedule("cosine", 0), ValueError, "integer >= 1. Received: num_timesteps=0"),
    (lambda: schedules.get_beta_schedule("cosine", 10.0), TypeError, "num_timesteps=10.0"),
    (lambda: schedules.get_beta_schedule("linear", 20), ValueError, "T > 20"),
    (lambda: schedules.space_timesteps(100, 0), ValueError, r"in \[1, 100\]"),
    (lambda: schedules.space_timesteps(100, 2.5), TypeError, r"in \[1, 100\]"),
    (lambda: schedules.space_timesteps(100, True), TypeError, "num_steps=True"),
    (lambda: schedules.space_timesteps(100, 101), ValueError, r"in \[1, 100\]"),
    (lambda: schedules.space_timesteps(100, 10, "middle"), ValueError, "must be one of"),
])
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("T", [50, 1000, 4000])
@pytest.mark.parametrize("spacing", schedules.SPACINGS)
def test_every_step_count_gives_that_many_distinct_timesteps(T, spacing):
    # Bug: float arange gave 62 "trailing" steps for T=1000, 61 steps (one of them -1).
    counts = range(1, T + 1) if T <= 1000 else list(range(1, 200)) + list(range(3900, T + 1))
    for n in counts:
        steps = schedules.space_timesteps(T, n, spacing)
        assert steps.shape == (n,) and steps.dtype == np.int64, (n, steps.shape)
        assert np.all(np.diff(steps) > 0) and steps[0] >= 0 and steps[-1] <= T - 1, n
        if spacing == "leading":
            assert steps[0] == 0
        elif spacing == "trailing":
            assert steps[-1] == T - 1
        else:
            assert steps[0] == 0 and (n == 1 or steps[-1] == T - 1)


@pytest.mark.parametrize("T, n", [(1000, 61), (1000, 103), (1000, 7), (100, 16), (1000, 16), (37, 5)])
def test_spacings_match_exact_rational_rounding(T, n):
    # Written from the definitions with exact fractions; halves round to even (numpy's rule).
    from fractions import Fraction

    def round_half_even(q):
        return int(round(q))  # Python's round of a Fraction is exact and rounds halves to even

    trailing = [round_half_even(Fraction(T * k, n)) - 1 for k in range(1, n + 1)]
    linspace = [round_half_even(Fraction((T - 1) * i, n - 1)) for i in range(n)]
    assert list(schedules.space_timesteps(T, n, "trailing")) == trailing
    assert list(schedules.space_timesteps(T, n, "linspace")) == linspace
    assert list(schedules.space_timesteps(T, n, "leading")) == [i * (T // n) for i in range(n)]
