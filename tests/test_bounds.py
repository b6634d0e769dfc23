"""Bound terms and calc_bpd_loop against closed forms, numerical integration and a numpy loop."""

import math

import numpy as np
import pytest
import tensorflow as tf
from scipy import integrate, stats

from tfdiffusion import bounds, schedules
from tfdiffusion.diffusion import GaussianDiffusion

T = 20  # cosine: the linear schedule at T = 20 would end with beta = 1


def _gaussian_kl(m1, lv1, m2, lv2):
    # KL(N1 || N2) = log(s2/s1) + (s1^2 + (m1 - m2)^2) / (2 s2^2) - 1/2.
    return 0.5 * (lv2 - lv1) + (np.exp(lv1) + (m1 - m2) ** 2) / (2 * np.exp(lv2)) - 0.5


def test_normal_kl_closed_form():
    rng = np.random.default_rng(0)
    m1, m2 = rng.normal(size=(2, 50)) * 2
    lv1, lv2 = rng.uniform(-6, 2, size=(2, 50))
    got = bounds.normal_kl(m1, lv1, m2, lv2).numpy()
    np.testing.assert_allclose(got, _gaussian_kl(m1, lv1, m2, lv2), rtol=1e-6, atol=1e-10)


def test_normal_kl_monte_carlo():
    # E_{x~N1}[log N1(x) - log N2(x)] with 2e5 seeded draws; MC std ~ 0.005 here.
    rng = np.random.default_rng(1)
    m1, lv1, m2, lv2 = 0.3, math.log(0.5), -0.2, math.log(0.8)
    x = rng.normal(m1, math.sqrt(0.5), size=200_000)
    mc = np.mean(stats.norm.logpdf(x, m1, math.sqrt(0.5)) - stats.norm.logpdf(x, m2, math.sqrt(0.8)))
    assert float(bounds.normal_kl(m1, lv1, m2, lv2)) == pytest.approx(mc, abs=0.01)


def _bin_probability(k, mean, scale):
    # Integrate the Gaussian density over bin k of the 256-bin grid on [-1, 1].
    x = k / 127.5 - 1
    low = -np.inf if k == 0 else x - 1 / 255
    high = np.inf if k == 255 else x + 1 / 255
    density = lambda u: stats.norm.pdf(u, mean, scale)  # noqa: E731
    if np.isinf(low) or np.isinf(high):
        # Split the open-ended edge bin at the bin boundary for quad's accuracy.
        edge = high if np.isinf(low) else low
        return integrate.quad(density, low, edge)[0] if np.isinf(low) else integrate.quad(density, edge, high)[0]
    return integrate.quad(density, low, high, points=[mean] if low < mean < high else None)[0]


@pytest.mark.parametrize("mean, scale", [(0.0, 0.5), (0.9, 0.05), (-0.97, 0.02), (0.3, 0.004)])
def test_decoder_against_integrated_density(mean, scale):
    ks = np.array([0, 1, 2, 100, 127, 128, 200, 253, 254, 255] + list(range(110, 146, 3)))
    x = ks / 127.5 - 1
    got = bounds.discretized_gaussian_log_likelihood(
        tf.constant(x, tf.float32), tf.constant(mean, tf.float32), tf.constant(math.log(scale), tf.float32)).numpy()
    expected = np.array([_bin_probability(k, mean, scale) for k in ks])
    finite = expected > 1e-30
    np.testing.assert_allclose(got[finite], np.log(expected[finite]), rtol=2e-3, atol=2e-3)


def test_decoder_probabilities_sum_to_one():
    x = tf.constant(np.arange(256) / 127.5 - 1, tf.float32)
    for mean, log_scale in [(0.0, 0.0), (0.99, -3.0), (-2.0, -1.0)]:
        probs = tf.exp(bounds.discretized_gaussian_log_likelihood(x, mean, log_scale))
        assert float(tf.reduce_sum(probs)) == pytest.approx(1.0, abs=1e-4)


def test_decoder_tails_and_tiny_scales_are_finite_and_accurate():
    # Far tails: compare with scipy's log-CDF differences in float64 (quad underflows there).
    cases = [(-1.0, 1.0, 0.01), (1.0, -1.0, 0.01), (0.5, -0.5, 0.02), (-0.5, 0.6, 0.05), (0.0, 0.0, 1e-6)]
    for x, mean, scale in cases:
        got = float(bounds.discretized_gaussian_log_likelihood(
            tf.constant(x), tf.constant(mean), tf.constant(math.log(scale))))
        assert np.isfinite(got), (x, mean, scale)
        if x == -1.0:
            expected = stats.norm.logcdf(x + 1 / 255, mean, scale)
        elif x == 1.0:
            expected = stats.norm.logsf(x - 1 / 255, mean, scale)
        else:
            hi, lo = (x + 1 / 255 - mean) / scale, (x - 1 / 255 - mean) / scale
            if lo > 0:  # use upper tails: log(sf(lo) - sf(hi))
                a, b = stats.norm.logsf(lo), stats.norm.logsf(hi)
            else:
                a, b = stats.norm.logcdf(hi), stats.norm.logcdf(lo)
            expected = a + np.log1p(-np.exp(b - a))
        assert got == pytest.approx(expected, rel=1e-3, abs=1e-4), (x, mean, scale)


def test_prior_bpd_closed_form():
    betas = schedules.get_beta_schedule("cosine", T)
    abar_T = np.prod(1 - betas)
    x0 = np.random.default_rng(2).integers(0, 256, (3, 4, 4, 3)) / 127.5 - 1
    mean, var = np.sqrt(abar_T) * x0, 1 - abar_T
    expected = (0.5 * (-np.log(var) + var + mean ** 2 - 1)).mean(axis=(1, 2, 3)) / np.log(2)
    got = GaussianDiffusion(betas).prior_bpd(x0.astype(np.float32))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-7)


def _reference_bound(betas, x0, c, var_type, v=None):
    """Numpy loop over the T terms for a model predicting x0 = c (and variance value v).

    With an x0-predicting model the gap between posterior and model means is
    coef1_t (x0 - c), whatever the noise, so the bound is deterministic.
    """
    alphas = 1 - betas
    abar = np.cumprod(alphas)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    beta_tilde = betas * (1 - abar_prev) / (1 - abar)
    log_tilde = np.log(np.concatenate([[beta_tilde[1]], beta_tilde[1:]]))
    coef1 = np.sqrt(abar_prev) * betas / (1 - abar)
    c = np.clip(c, -1, 1)
    vb = []
    for t in range(len(betas)):
        if var_type == "fixed_small":
            logvar = log_tilde[t]
        else:
            frac = (v + 1) / 2
            logvar = frac * np.log(betas[t]) + (1 - frac) * log_tilde[t]
        if t == 0:
            scale = np.exp(0.5 * logvar)
            upper = np.where(x0 > 0.999, 1.0, stats.norm.cdf(x0 + 1 / 255, c, scale))
            lower = np.where(x0 < -0.999, 0.0, stats.norm.cdf(x0 - 1 / 255, c, scale))
            vb.append(-np.log(upper - lower).mean(axis=(1, 2, 3)) / np.log(2))
        else:
            kl = _gaussian_kl(coef1[t] * x0, log_tilde[t], coef1[t] * c, logvar)
            vb.append(kl.mean(axis=(1, 2, 3)) / np.log(2))
    vb = np.stack(vb, axis=1)
    mean_T, var_T = np.sqrt(abar[-1]) * x0, 1 - abar[-1]
    prior = (0.5 * (-np.log(var_T) + var_T + mean_T ** 2 - 1)).mean(axis=(1, 2, 3)) / np.log(2)
    xstart_mse = np.repeat(((c - x0) ** 2).mean(axis=(1, 2, 3))[:, None], len(betas), axis=1)
    return vb, prior, vb.sum(axis=1) + prior, xstart_mse


@pytest.mark.parametrize("var_type", ["fixed_small", "learned_range"])
def test_calc_bpd_loop_against_numpy_loop(var_type):
    betas = schedules.get_beta_schedule("cosine", T)
    rng = np.random.default_rng(3)
    x0 = rng.integers(0, 256, (2, 4, 4, 3)) / 127.5 - 1
    c = np.clip(x0 + rng.normal(0, 0.1, x0.shape), -1, 1)
    v = rng.uniform(-1, 1, x0.shape)
    learned = var_type == "learned_range"
    output = np.concatenate([c, v], axis=-1) if learned else c
    diffusion = GaussianDiffusion(betas, "x0", var_type, "hybrid" if learned else "mse")
    got = diffusion.calc_bpd_loop(lambda x, t: tf.constant(output, tf.float32), x0.astype(np.float32), seed=0)
    vb, prior, total, xstart_mse = _reference_bound(betas, x0, c, var_type, v if learned else None)
    np.testing.assert_allclose(got["vb"], vb, rtol=2e-3, atol=1e-4)
    np.testing.assert_allclose(got["prior_bpd"], prior, rtol=1e-3, atol=1e-7)
    np.testing.assert_allclose(got["total_bpd"], total, rtol=2e-3)
    np.testing.assert_allclose(got["xstart_mse"], xstart_mse, rtol=1e-4)
    assert got["mse"].shape == (2, T) and np.all(np.isfinite(got["mse"]))


def test_total_includes_a_non_negligible_prior_term():
    # A short, gentle schedule (alpha_bar_T = 0.95^10 = 0.60) leaves a prior KL of over 0.1 bits/dim,
    # where the cosine T = 20 schedule's is ~1e-6: leaving the prior out of the total shows here.
    betas = np.full(10, 0.05)
    rng = np.random.default_rng(12)
    x0 = rng.integers(0, 256, (2, 4, 4, 3)) / 127.5 - 1
    c = np.clip(x0 + rng.normal(0, 0.1, x0.shape), -1, 1)
    diffusion = GaussianDiffusion(betas, "x0")
    got = diffusion.calc_bpd_loop(lambda x, t: tf.constant(c, tf.float32), x0.astype(np.float32), seed=0)
    vb, prior, total, _ = _reference_bound(betas, x0, c, "fixed_small")
    assert prior.min() > 0.1
    np.testing.assert_allclose(got["prior_bpd"], prior, rtol=1e-4)
    np.testing.assert_allclose(got["total_bpd"], total, rtol=2e-3)
    np.testing.assert_allclose(got["total_bpd"] - got["prior_bpd"], vb.sum(axis=1), rtol=2e-3)


def _oracle(diffusion, x0):
    def model_fn(x_t, t):
        a = tf.gather(tf.sqrt(tf.constant(np.cumprod(1 - diffusion.betas), tf.float32)), t)[:, None, None, None]
        return (x_t - a * x0) / tf.sqrt(1 - a ** 2)
    return model_fn


def test_oracle_model_bound_is_prior_plus_decoder():
    betas = schedules.get_beta_schedule("cosine", T)
    diffusion = GaussianDiffusion(betas)
    x0 = (np.random.default_rng(4).integers(0, 256, (3, 4, 4, 3)) / 127.5 - 1).astype(np.float32)
    got = diffusion.calc_bpd_loop(_oracle(diffusion, x0), x0, seed=1)
    np.testing.assert_allclose(got["vb"][:, 1:], 0.0, atol=1e-5)
    # Decoder at t = 0 with mean x0 and variance beta-tilde_1: the bin around the mean.
    abar = np.cumprod(1 - betas)
    scale = np.sqrt(betas[1] * (1 - abar[0]) / (1 - abar[1]))
    inner = np.log(stats.norm.cdf(1 / 255 / scale) - stats.norm.cdf(-1 / 255 / scale))
    edge = np.log(stats.norm.cdf(1 / 255 / scale))
    per_dim = np.where(np.abs(x0) > 0.999, edge, inner)
    expected_decoder = -per_dim.mean(axis=(1, 2, 3)) / np.log(2)
    np.testing.assert_allclose(got["vb"][:, 0], expected_decoder, rtol=1e-4)
    np.testing.assert_allclose(got["total_bpd"], got["prior_bpd"] + expected_decoder, rtol=1e-4)
    np.testing.assert_allclose(got["mse"], 0.0, atol=1e-6)


def test_calc_bpd_loop_compiles_with_xla():
    # XLA draws other random numbers than the CPU kernels for the same seed, so
    # compare on the constant-x0 model, whose bound does not depend on the noise.
    betas = schedules.get_beta_schedule("cosine", T)
    diffusion = GaussianDiffusion(betas, "x0")
    rng = np.random.default_rng(5)
    x0 = rng.integers(0, 256, (2, 4, 4, 3)) / 127.5 - 1
    c = np.clip(x0 + rng.normal(0, 0.1, x0.shape), -1, 1)
    model_fn = lambda x, t: tf.constant(c, tf.float32)  # noqa: E731
    xla = tf.function(lambda x: diffusion.calc_bpd_loop(model_fn, x, seed=7)["total_bpd"],
                      jit_compile=True)(x0.astype(np.float32))
    np.testing.assert_allclose(xla, _reference_bound(betas, x0, c, "fixed_small")[2], rtol=2e-3)


def test_stratified_estimate_is_unbiased():
    # Mean over random step choices of the K-term estimate equals the T-term sum
    # (the constant-x0 model makes each term deterministic, so only the choice varies).
    diffusion = GaussianDiffusion(schedules.get_beta_schedule("cosine", T), "x0")
    rng = np.random.default_rng(6)
    x0 = (rng.integers(0, 256, (1, 4, 4, 3)) / 127.5 - 1).astype(np.float32)
    c = tf.constant(np.clip(x0 + rng.normal(0, 0.2, x0.shape), -1, 1), tf.float32)
    model_fn = lambda x, t: c  # noqa: E731
    full = float(diffusion.calc_bpd_loop(model_fn, x0, seed=0)["total_bpd"][0])
    estimate = tf.function(lambda s: diffusion.calc_bpd_loop(model_fn, x0, seed=s, num_eval_steps=5)["total_bpd"][0])
    values = np.array([float(estimate(tf.constant([s, 1], tf.int64))) for s in range(300)])
    # 300 draws: the standard error of the mean is values.std() / sqrt(300).
    assert abs(values.mean() - full) < 4 * values.std() / np.sqrt(300) + 1e-6
    assert values.std() > 0  # it is an estimate, not the exact sum


@pytest.mark.parametrize("x0, match", [
    (np.full([1, 2, 2, 1], 1.5), r"\[-1, 1\]"),
    (np.full([1, 2, 2, 1], 0.001), "8-bit grid"),
])
def test_calc_bpd_loop_rejects_bad_data(x0, match):
    diffusion = GaussianDiffusion(schedules.get_beta_schedule("cosine", T))
    with pytest.raises(ValueError, match=match):  # eagerly: before any work
        diffusion.calc_bpd_loop(lambda x, t: x, x0.astype(np.float32))
    with pytest.raises(tf.errors.InvalidArgumentError, match=match):  # in a graph: asserts
        tf.function(lambda x: diffusion.calc_bpd_loop(lambda x, t: x, x)["total_bpd"])(x0.astype(np.float32))


def test_num_eval_steps_validation():
    diffusion = GaussianDiffusion(schedules.get_beta_schedule("cosine", T))
    with pytest.raises(ValueError, match=r"integer in \[2, 20\]"):
        diffusion.bpd_timesteps(21)


def test_kl_loss_is_T_times_vb_and_hybrid_trains_only_variance():
    betas = schedules.get_beta_schedule("cosine", T)
    rng = np.random.default_rng(8)
    x0 = (rng.integers(0, 256, (3, 4, 4, 3)) / 127.5 - 1).astype(np.float32)
    noise = rng.normal(size=x0.shape).astype(np.float32)
    t = np.array([0, 5, 19])
    out = tf.Variable(rng.uniform(-1, 1, (3, 4, 4, 6)).astype(np.float32))
    kl = GaussianDiffusion(betas, model_var_type="learned_range", loss_type="kl")
    hybrid = GaussianDiffusion(betas, model_var_type="learned_range", loss_type="hybrid")
    losses = kl.training_losses(lambda x, tt: out, x0, t, noise=noise)
    np.testing.assert_allclose(losses["loss"], T * losses["vb"], rtol=1e-6)
    with tf.GradientTape() as tape:
        losses = hybrid.training_losses(lambda x, tt: out, x0, t, noise=noise)
        total = tf.reduce_sum(losses["loss"])
    grad = tape.gradient(total, out).numpy()
    np.testing.assert_allclose(losses["loss"], losses["mse"] + T / 1000 * losses["vb"], rtol=1e-6)
    # Mean channels: only the mse gradient 2 (out - eps) / D per example.
    d = 4 * 4 * 3
    np.testing.assert_allclose(grad[..., :3], 2 * (out.numpy()[..., :3] - noise) / d, rtol=1e-4, atol=1e-7)
    assert np.abs(grad[..., 3:]).max() > 0  # the variance channels are trained by the bound


def test_decoder_gradients_are_finite_everywhere():
    x = tf.constant(np.arange(256) / 127.5 - 1, tf.float32)
    for mean, log_scale in [(0.0, -8.0), (0.99, -5.0), (-1.5, 0.0), (3.0, -2.0)]:
        mean_v, log_scale_v = tf.Variable(tf.fill([256], mean)), tf.Variable(tf.fill([256], log_scale))
        with tf.GradientTape() as tape:
            total = tf.reduce_sum(bounds.discretized_gaussian_log_likelihood(x, mean_v, log_scale_v))
        grads = tape.gradient(total, [mean_v, log_scale_v])
        assert np.isfinite(total.numpy())
        assert all(np.all(np.isfinite(g.numpy())) for g in grads), (mean, log_scale)
