"""GaussianDiffusion against float64 numpy written from the DDPM / Improved DDPM / DDIM papers."""

import numpy as np
import pytest
import tensorflow as tf

from tfdiffusion import schedules
from tfdiffusion.diffusion import LOSS_TYPES, MEAN_TYPES, VAR_TYPES, GaussianDiffusion

# float32 computation against float64 references: values are O(1) with
# coefficients up to sqrt(1/abar) ~ 1e2 at the noisiest steps of T = 20.
ATOL = 2e-4
RTOL = 1e-4
T = 20


def _betas():
    return schedules.get_beta_schedule("cosine", T)


def _reference(betas):
    """Paper quantities in float64, written from the definitions."""
    alphas = 1.0 - betas
    abar = np.array([np.prod(alphas[: t + 1]) for t in range(len(betas))])
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    return alphas, abar, abar_prev


def _data(seed, shape=(4, 4, 4, 3)):
    rng = np.random.default_rng(seed)
    x0 = rng.integers(0, 256, size=shape) / 127.5 - 1.0
    noise = rng.standard_normal(shape)
    t = rng.integers(0, T, size=shape[0])
    return x0, noise, t


def _bcast(values, t, x):
    return values[t].reshape([-1] + [1] * (x.ndim - 1))


def test_q_sample_matches_eq4():
    x0, noise, t = _data(0)
    _, abar, _ = _reference(_betas())
    expected = np.sqrt(_bcast(abar, t, x0)) * x0 + np.sqrt(1 - _bcast(abar, t, x0)) * noise
    diffusion = GaussianDiffusion(_betas())
    got = diffusion.q_sample(x0.astype(np.float32), t, noise=noise.astype(np.float32))
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=RTOL)


def test_q_sample_statistics_monte_carlo():
    # Mean sqrt(abar) x0 and variance 1 - abar, by sampling (seeded; 4e4 draws: 3-sigma ~ 0.015).
    diffusion = GaussianDiffusion(_betas())
    _, abar, _ = _reference(_betas())
    x0 = np.full([40000, 1], 0.5, np.float32)
    t = np.full([40000], 7)
    samples = diffusion.q_sample(x0, t, seed=3).numpy()
    assert samples.mean() == pytest.approx(np.sqrt(abar[7]) * 0.5, abs=0.015)
    assert samples.var() == pytest.approx(1 - abar[7], rel=0.03)


@pytest.mark.parametrize("t", [999, 998])
def test_x0_from_epsilon_is_accurate_where_abar_is_tiny(t):
    # x_0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar) (DDPM Eq. 4 solved for x_0), float64 from the same
    # float32 inputs. At the cosine schedule's last steps (abar = 2.4e-9 at t = 999, 2.4e-6 at 998) x_t
    # and eps nearly cancel and the difference is scaled by up to 2e4. Tolerance 1e-3, an eighth of an
    # 8-bit level (2 / 255): the expanded form sqrt(1/abar) x_t - sqrt(1/abar - 1) eps, which rounds two
    # nearly equal float32 coefficients first, is off by 5e-3 at t = 999; the form above by 1e-4.
    betas = schedules.get_beta_schedule("cosine", 1000)
    abar = np.cumprod(1.0 - betas)[t]
    rng = np.random.default_rng(t)
    eps = rng.standard_normal((64, 4, 4, 3)).astype(np.float32)
    x_t = (np.sqrt(abar) * rng.uniform(-1, 1, eps.shape) + np.sqrt(1 - abar) * eps).astype(np.float32)
    reference = (x_t.astype(np.float64) - np.sqrt(1 - abar) * eps) / np.sqrt(abar)
    got = GaussianDiffusion(betas).predict_xstart_from_eps(tf.constant(x_t), tf.fill([64], t), tf.constant(eps))
    np.testing.assert_allclose(got.numpy(), reference, rtol=0, atol=1e-3)


def test_posterior_matches_bayes_rule():
    # Independent derivation: x_{t-1} | x0 ~ N(sqrt(abar_{t-1}) x0, 1 - abar_{t-1}) and
    # x_t | x_{t-1} ~ N(sqrt(alpha_t) x_{t-1}, beta_t); condition on x_t (product of Gaussians).
    betas = _betas()
    alphas, abar, abar_prev = _reference(betas)
    x0, noise, t = _data(1)
    t = np.maximum(t, 1)  # beta-tilde_0 = 0 is degenerate; t = 0 is checked below
    xt = np.sqrt(_bcast(abar, t, x0)) * x0 + np.sqrt(1 - _bcast(abar, t, x0)) * noise
    precision = 1 / (1 - abar_prev) + alphas / betas
    variance = 1 / precision
    mean = _bcast(variance, t, x0) * (
        np.sqrt(_bcast(abar_prev, t, x0)) * x0 / (1 - _bcast(abar_prev, t, x0))
        + np.sqrt(_bcast(alphas, t, x0)) * xt / _bcast(betas, t, x0))
    diffusion = GaussianDiffusion(betas)
    got_mean, got_var, got_logvar = diffusion.q_posterior_mean_variance(
        x0.astype(np.float32), xt.astype(np.float32), t)
    np.testing.assert_allclose(got_mean, mean, atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(got_var, np.broadcast_to(_bcast(variance, t, x0), x0.shape), rtol=1e-5)
    np.testing.assert_allclose(got_logvar, np.log(np.broadcast_to(_bcast(variance, t, x0), x0.shape)),
                               atol=1e-5)


def test_posterior_at_t0_returns_x0_and_clips_log_variance():
    betas = _betas()
    alphas, abar, abar_prev = _reference(betas)
    x0, noise, _ = _data(2)
    t = np.zeros([x0.shape[0]], np.int64)
    xt = np.sqrt(abar[0]) * x0 + np.sqrt(1 - abar[0]) * noise
    mean, var, logvar = GaussianDiffusion(betas).q_posterior_mean_variance(
        x0.astype(np.float32), xt.astype(np.float32), t)
    np.testing.assert_allclose(mean, x0, atol=1e-6)
    np.testing.assert_allclose(var, 0.0, atol=1e-12)
    beta_tilde_1 = betas[1] * (1 - abar[0]) / (1 - abar[1])
    np.testing.assert_allclose(logvar, np.log(beta_tilde_1), rtol=1e-5)


def _reference_p_mean_variance(betas, mean_type, var_type, output, xt, t, clip):
    alphas, abar, abar_prev = _reference(betas)
    c = xt.shape[-1]
    mean_out, v = (output[..., :c], output[..., c:]) if var_type == "learned_range" else (output, None)
    a, s = np.sqrt(_bcast(abar, t, xt)), np.sqrt(1 - _bcast(abar, t, xt))
    if mean_type == "epsilon":
        x0 = (xt - s * mean_out) / a
    elif mean_type == "x0":
        x0 = mean_out
    else:  # v = a eps - s x0, x_t = a x0 + s eps  =>  x0 = a x_t - s v
        x0 = a * xt - s * mean_out
    if clip:
        x0 = np.clip(x0, -1, 1)
    beta_tilde = betas * (1 - abar_prev) / (1 - abar)
    beta_tilde_clipped = np.concatenate([[beta_tilde[1]], beta_tilde[1:]])
    mean = (_bcast(np.sqrt(abar_prev) * betas / (1 - abar), t, xt) * x0
            + _bcast(np.sqrt(alphas) * (1 - abar_prev) / (1 - abar), t, xt) * xt)
    if var_type == "fixed_small":
        logvar = np.log(_bcast(beta_tilde_clipped, t, xt)) * np.ones_like(xt)
    elif var_type == "fixed_large":
        logvar = np.log(_bcast(np.concatenate([[beta_tilde[1]], betas[1:]]), t, xt)) * np.ones_like(xt)
    else:  # Improved DDPM Eq. 15 with v in [-1, 1] mapped to [0, 1]
        frac = (v + 1) / 2
        logvar = frac * np.log(_bcast(betas, t, xt)) + (1 - frac) * np.log(_bcast(beta_tilde_clipped, t, xt))
    return mean, logvar, x0


@pytest.mark.parametrize("mean_type", MEAN_TYPES)
@pytest.mark.parametrize("var_type", VAR_TYPES)
@pytest.mark.parametrize("clip", [True, False])
def test_p_mean_variance_all_types(mean_type, var_type, clip):
    betas = _betas()
    x0, noise, t = _data(3)
    rng = np.random.default_rng(4)
    xt = rng.standard_normal(x0.shape)
    channels = 6 if var_type == "learned_range" else 3
    output = rng.uniform(-1, 1, size=x0.shape[:-1] + (channels,)) * np.where(
        np.arange(channels) < 3, 1.5, 1.0)
    loss = "hybrid" if var_type == "learned_range" else "mse"
    diffusion = GaussianDiffusion(betas, mean_type, var_type, loss)
    got = diffusion.p_mean_variance(lambda x, tt: tf.constant(output, tf.float32),
                                    xt.astype(np.float32), t, clip_denoised=clip)
    mean, logvar, x0_ref = _reference_p_mean_variance(betas, mean_type, var_type, output, xt, t, clip)
    np.testing.assert_allclose(got["pred_xstart"], x0_ref, atol=2e-3 if mean_type == "epsilon" else ATOL,
                               rtol=RTOL)
    np.testing.assert_allclose(got["mean"], mean, atol=2e-3 if mean_type == "epsilon" else ATOL, rtol=RTOL)
    np.testing.assert_allclose(got["log_variance"], logvar, atol=1e-4)
    np.testing.assert_allclose(got["variance"], np.exp(logvar), rtol=1e-4)


@pytest.mark.parametrize("mean_type", MEAN_TYPES)
def test_mse_targets(mean_type):
    betas = _betas()
    _, abar, _ = _reference(betas)
    x0, noise, t = _data(5)
    output = np.random.default_rng(6).standard_normal(x0.shape)
    a, s = np.sqrt(_bcast(abar, t, x0)), np.sqrt(1 - _bcast(abar, t, x0))
    target = {"epsilon": noise, "x0": x0, "v": a * noise - s * x0}[mean_type]
    expected = ((target - output) ** 2).mean(axis=(1, 2, 3))
    diffusion = GaussianDiffusion(betas, mean_type)
    losses = diffusion.training_losses(lambda x, tt: tf.constant(output, tf.float32),
                                       x0.astype(np.float32), t, noise=noise.astype(np.float32))
    np.testing.assert_allclose(losses["mse"], expected, rtol=1e-5)
    np.testing.assert_allclose(losses["loss"], expected, rtol=1e-5)
    assert losses["vb"].shape == (x0.shape[0],)


@pytest.mark.parametrize("mean_type", MEAN_TYPES)
def test_min_snr_weighting_is_x0_error_times_clipped_snr(mean_type):
    # Min-SNR-gamma (Hang et al. 2023): whatever the network predicts, the
    # weighted loss is the x0-space squared error times min(SNR_t, gamma).
    gamma = 5.0
    betas = _betas()
    _, abar, _ = _reference(betas)
    x0, noise, t = _data(7, shape=(T, 4, 4, 3))
    t = np.arange(T)  # every step, from SNR >> gamma to SNR << gamma
    output = np.random.default_rng(8).standard_normal(x0.shape)
    a, s = np.sqrt(_bcast(abar, t, x0)), np.sqrt(1 - _bcast(abar, t, x0))
    x_t = a * x0 + s * noise
    x0_hat = {"epsilon": (x_t - s * output) / a, "x0": output, "v": a * x_t - s * output}[mean_type]
    snr = abar / (1 - abar)
    assert snr.max() > gamma > snr.min()
    expected = np.minimum(snr, gamma) * ((x0 - x0_hat) ** 2).mean(axis=(1, 2, 3))
    diffusion = GaussianDiffusion(betas, mean_type, min_snr_gamma=gamma)
    losses = diffusion.training_losses(lambda x, tt: tf.constant(output, tf.float32),
                                       x0.astype(np.float32), t, noise=noise.astype(np.float32))
    np.testing.assert_allclose(losses["loss"], expected, rtol=2e-4)
    # `mse` stays the unweighted error against the target.
    unweighted = GaussianDiffusion(betas, mean_type).training_losses(
        lambda x, tt: tf.constant(output, tf.float32), x0.astype(np.float32), t,
        noise=noise.astype(np.float32))
    np.testing.assert_allclose(losses["mse"], unweighted["mse"], rtol=1e-6)
    # The weighting survives respacing and the config round trip.
    assert diffusion.respace(5).min_snr_gamma == gamma
    assert GaussianDiffusion.from_config(diffusion.get_config()).min_snr_gamma == gamma


def test_model_receives_inputs_and_kwargs():
    seen = {}

    def model_fn(x, t, y=None):
        seen.update(x=x, t=t, y=y)
        return tf.zeros_like(x)

    diffusion = GaussianDiffusion(_betas())
    x0, noise, t = _data(7)
    diffusion.training_losses(model_fn, x0.astype(np.float32), t, noise=noise.astype(np.float32),
                              model_kwargs={"y": tf.constant([1, 2, 3, 4])})
    _, abar, _ = _reference(_betas())
    np.testing.assert_allclose(seen["x"], np.sqrt(_bcast(abar, t, x0)) * x0
                               + np.sqrt(1 - _bcast(abar, t, x0)) * noise, atol=ATOL)
    np.testing.assert_array_equal(seen["t"], t)
    np.testing.assert_array_equal(seen["y"], [1, 2, 3, 4])


def test_respace_keeps_marginals_and_maps_timesteps():
    betas = schedules.get_beta_schedule("linear", 100)
    _, abar, _ = _reference(betas)
    spaced = GaussianDiffusion(betas).respace(10, "leading")
    kept = np.arange(0, 100, 10)
    _, spaced_abar, _ = _reference(spaced.betas)
    np.testing.assert_allclose(spaced_abar, abar[kept], rtol=1e-12)
    np.testing.assert_array_equal(spaced.timestep_map, kept)
    seen = []
    spaced.p_mean_variance(lambda x, t: (seen.append(t), tf.zeros_like(x))[1], tf.zeros([2, 3]), [9, 3])
    np.testing.assert_array_equal(seen[0], [90, 30])


def test_config_round_trip():
    diffusion = GaussianDiffusion(_betas(), "v", "learned_range", "hybrid").respace(5)
    again = GaussianDiffusion.from_config(diffusion.get_config())
    np.testing.assert_array_equal(again.betas, diffusion.betas)
    np.testing.assert_array_equal(again.timestep_map, diffusion.timestep_map)
    assert (again.model_mean_type, again.model_var_type, again.loss_type) == ("v", "learned_range", "hybrid")


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(model_mean_type="score"), ValueError, "model_mean_type"),
    (dict(model_var_type="learned"), ValueError, "model_var_type"),
    (dict(loss_type="l1"), ValueError, "loss_type"),
    (dict(loss_type="hybrid"), ValueError, "needs model_var_type='learned_range'"),
    (dict(loss_type="mse", model_var_type="learned_range"), ValueError, "no gradient"),
    (dict(betas=np.array([1.0, 0.1])), ValueError, r"\(0, 1\)"),
    (dict(betas=np.array([0.1, 0.0])), ValueError, r"\(0, 1\)"),
    (dict(betas=np.array([0.1, 1.0])), ValueError, "zero-terminal-SNR.*epsilon"),
    (dict(betas="cosine"), TypeError, "get_beta_schedule"),
    (dict(min_snr_gamma=0.0), ValueError, "min_snr_gamma=0.0"),
    (dict(min_snr_gamma=float("nan")), ValueError, "min_snr_gamma=nan"),
    (dict(min_snr_gamma="5"), TypeError, "finite number"),
    (dict(validate_args=1), TypeError, "validate_args"),
    (dict(betas=np.ones([2, 2]) * 0.1), ValueError, "1-D"),
])
def test_bad_constructor_arguments(kwargs, error, match):
    kwargs = {"betas": _betas(), **kwargs}
    with pytest.raises(error, match=match):
        GaussianDiffusion(**kwargs)


def test_zero_terminal_snr_with_v_prediction():
    # Last beta = 1: alpha_bar_T = 0, so x_{T-1} is pure noise and x0 = sqrt(abar) x_t - sqrt(1 - abar) v = -v.
    betas = np.append(_betas()[:-1], 1.0)
    diffusion = GaussianDiffusion(betas, "v")
    _, abar, abar_prev = _reference(betas)
    assert abar[-1] == 0.0
    rng = np.random.default_rng(11)
    x_t, v = rng.standard_normal((2, 3, 2, 2, 1))
    t = np.full([3], T - 1)
    got = diffusion.p_mean_variance(lambda x, tt: tf.constant(v, tf.float32), x_t.astype(np.float32), t,
                                    clip_denoised=False)
    np.testing.assert_allclose(got["pred_xstart"], -v, rtol=1e-6)
    # Posterior mean at abar_t = 0: coef1 = sqrt(abar_prev), coef2 = 0.
    np.testing.assert_allclose(got["mean"], np.sqrt(abar_prev[-1]) * -v, rtol=1e-5, atol=1e-6)
    assert np.all(np.isfinite(got["log_variance"]))
    x0 = (rng.integers(0, 256, (3, 2, 2, 1)) / 127.5 - 1).astype(np.float32)
    losses = diffusion.training_losses(lambda x, tt: tf.zeros_like(x), x0, t, seed=0)
    assert np.all(np.isfinite(losses["loss"])) and np.all(np.isfinite(losses["vb"]))
    # The prior term is exactly 0: q(x_T | x_0) = N(0, I).
    np.testing.assert_allclose(diffusion.prior_bpd(x0), 0.0, atol=1e-7)


def test_wrong_model_output_channels():
    diffusion = GaussianDiffusion(_betas(), model_var_type="learned_range", loss_type="hybrid")
    with pytest.raises(ValueError, match="must return 6 channels"):
        diffusion.p_mean_variance(lambda x, t: x, tf.zeros([2, 4, 4, 3]), [1, 2])


def test_all_loss_types_listed():
    assert LOSS_TYPES == ("mse", "kl", "hybrid")
