"""Tests for the diffusers-style schedules in `tfdiffusion.schedules`, against float64 numpy."""

import numpy as np
import pytest

from tfdiffusion import schedules


def test_linear_betas_are_unscaled():
    betas = schedules.linear_betas(100, 0.001, 0.05)
    expected = 0.001 + np.arange(100) / 99 * (0.05 - 0.001)
    np.testing.assert_allclose(betas, expected, rtol=1e-14, atol=0)
    assert betas.dtype == np.float64
    # At T = 1000 DDPM's scaled schedule is the same.
    np.testing.assert_allclose(schedules.linear_betas(1000),
                               schedules.get_beta_schedule("linear", 1000), rtol=1e-14)


def test_scaled_linear_betas():
    betas = schedules.scaled_linear_betas(10, 0.00085, 0.012)
    roots = np.sqrt(0.00085) + np.arange(10) / 9 * (np.sqrt(0.012) - np.sqrt(0.00085))
    np.testing.assert_allclose(betas, roots**2, rtol=1e-14, atol=0)


def test_rescale_zero_terminal_snr_matches_its_definition():
    betas = schedules.linear_betas(1000)
    rescaled = schedules.rescale_zero_terminal_snr(betas)
    old = np.sqrt(np.cumprod(1.0 - betas))
    new = np.sqrt(np.cumprod(1.0 - rescaled))
    # Lin et al. 2024, Alg. 1: sqrt(abar) shifted to end at 0 and scaled to keep its start.
    expected = (old - old[-1]) / (old[0] - old[-1]) * old[0]
    np.testing.assert_allclose(new, expected, rtol=0, atol=1e-12)
    assert rescaled[-1] == 1.0 and new[-1] == 0.0
    assert np.all((rescaled[:-1] > 0) & (rescaled[:-1] < 1))


@pytest.mark.parametrize("bad, error", [(dict(beta_start=0.0), ValueError), (dict(beta_end=1.5), ValueError),
                                        (dict(beta_start=True), TypeError)])
def test_linear_betas_reject_bad_range(bad, error):
    with pytest.raises(error, match=next(iter(bad))):
        schedules.linear_betas(10, **{"beta_start": 1e-4, "beta_end": 0.02, **bad})


def test_rescale_rejects_a_beta_of_one():
    with pytest.raises(ValueError, match="betas"):
        schedules.rescale_zero_terminal_snr([0.1, 1.0])
