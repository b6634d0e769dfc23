"""DDIM and DDPM samplers against numpy loops from the papers, Monte Carlo, guidance and seeds."""

import numpy as np
import pytest
import tensorflow as tf

from tfdiffusion import samplers, schedules
from tfdiffusion.diffusion import GaussianDiffusion

T = 20


def _eps_model_tf(x, t):
    # A fixed smooth "network": eps = 0.3 x + 0.01 t (t: the original timestep).
    return 0.3 * x + 0.01 * tf.cast(tf.reshape(t, [-1, 1, 1, 1]), tf.float32)


def _eps_model_np(x, t):
    return 0.3 * x + 0.01 * t


def _ddim_reference(betas, x_T, kept, clip):
    """DDIM (Song et al. 2021, Eq. 12 with sigma = 0) over timesteps `kept`, float64."""
    abar = np.cumprod(1 - betas)
    x = x_T.astype(np.float64)
    for i in reversed(range(len(kept))):
        t = kept[i]
        a_t = abar[t]
        a_prev = abar[kept[i - 1]] if i > 0 else 1.0
        eps = _eps_model_np(x, t)
        x0 = (x - np.sqrt(1 - a_t) * eps) / np.sqrt(a_t)
        if clip:
            x0 = np.clip(x0, -1, 1)
            eps = (x - np.sqrt(a_t) * x0) / np.sqrt(1 - a_t)
        x = np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev) * eps
    return x


@pytest.mark.parametrize("spacing, kept", [("leading", [0, 4, 8, 12, 16]), ("trailing", [3, 7, 11, 15, 19])])
@pytest.mark.parametrize("clip", [True, False])
def test_ddim_trajectory_matches_numpy(spacing, kept, clip):
    betas = schedules.get_beta_schedule("cosine", T)
    x_T = np.random.default_rng(0).standard_normal((2, 4, 4, 3)).astype(np.float32)
    got = GaussianDiffusion(betas).ddim_sample_loop(_eps_model_tf, x_T.shape, num_steps=5, noise=x_T,
                                                    clip_denoised=clip, spacing=spacing)
    np.testing.assert_allclose(got, _ddim_reference(betas, x_T, kept, clip), atol=5e-4, rtol=1e-3)


def test_one_ddim_step():
    # One trailing step from t = T-1 straight to x_0: the predicted x_0 itself (abar_prev = 1).
    betas = schedules.get_beta_schedule("cosine", T)
    abar = np.cumprod(1 - betas)
    x_T = np.random.default_rng(1).standard_normal((3, 2, 2, 1)).astype(np.float32)
    got = GaussianDiffusion(betas).ddim_sample_loop(_eps_model_tf, x_T.shape, num_steps=1, noise=x_T,
                                                    clip_denoised=False, spacing="trailing")
    expected = (x_T - np.sqrt(1 - abar[-1]) * _eps_model_np(x_T.astype(np.float64), T - 1)) / np.sqrt(abar[-1])
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3)


def _gaussian_data_eps(diffusion, mu, s):
    """The exact noise predictor for data x_0 ~ N(mu, s^2): E[eps | x_t]."""
    abar = tf.constant(np.cumprod(1 - diffusion.betas), tf.float32)

    def model_fn(x, t):
        a = tf.reshape(tf.gather(abar, t), [-1, 1])
        x0 = mu + tf.sqrt(a) * s ** 2 / (a * s ** 2 + 1 - a) * (x - tf.sqrt(a) * mu)
        return (x - tf.sqrt(a) * x0) / tf.sqrt(1 - a)
    return model_fn


@pytest.mark.parametrize("sampler", ["ddpm", "ddim-eta1", "ddim"])
def test_samplers_recover_gaussian_data_distribution(sampler):
    # With the exact denoiser for N(mu, s^2) data and T = 1000 (fine steps), samples
    # have mean mu and std s. 8000 samples: standard errors s / 89 = 0.0022 (mean),
    # ~0.0016 (std); the last DDPM step returns a posterior mean, shrinking std ~1%.
    mu, s, n = 0.3, 0.2, 8000
    diffusion = GaussianDiffusion(schedules.get_beta_schedule("linear", 1000))
    model_fn = _gaussian_data_eps(diffusion, mu, s)
    if sampler == "ddpm":
        run = lambda: diffusion.p_sample_loop(model_fn, [n, 1], seed=0, clip_denoised=False)  # noqa: E731
    else:
        eta = 1.0 if sampler == "ddim-eta1" else 0.0
        run = lambda: diffusion.ddim_sample_loop(model_fn, [n, 1], num_steps=1000, eta=eta,  # noqa: E731
                                                 seed=0, clip_denoised=False)
    x = tf.function(run)().numpy()
    assert x.mean() == pytest.approx(mu, abs=0.012)
    assert x.std() == pytest.approx(s, rel=0.04)


def test_same_seed_same_samples_other_seed_other():
    diffusion = GaussianDiffusion(schedules.get_beta_schedule("cosine", T))
    a = diffusion.p_sample_loop(_eps_model_tf, [2, 4, 4, 1], seed=5)
    b = diffusion.p_sample_loop(_eps_model_tf, [2, 4, 4, 1], seed=5)
    c = diffusion.p_sample_loop(_eps_model_tf, [2, 4, 4, 1], seed=6)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3


def test_sampling_loop_compiles_with_xla_and_is_deterministic():
    diffusion = GaussianDiffusion(schedules.get_beta_schedule("cosine", T))
    x_T = np.random.default_rng(2).standard_normal((2, 4, 4, 3)).astype(np.float32)
    fn = tf.function(lambda noise: diffusion.ddim_sample_loop(_eps_model_tf, noise.shape, num_steps=5,
                                                              noise=noise), jit_compile=True)
    np.testing.assert_allclose(fn(x_T), _ddim_reference(diffusion.betas, x_T, [0, 4, 8, 12, 16], True),
                               atol=5e-4, rtol=1e-3)
    ddpm = tf.function(lambda: diffusion.p_sample_loop(_eps_model_tf, [2, 4, 4, 3], seed=3), jit_compile=True)
    np.testing.assert_array_equal(ddpm(), ddpm())


def test_classifier_free_guidance_combines_outputs():
    def model_fn(x, t, y):
        # Conditional output depends on the label; label 10 is the null label.
        return x + tf.cast(tf.reshape(y, [-1, 1, 1, 1]), tf.float32)

    guided = samplers.classifier_free_guidance(model_fn, 3.0, null_label=10, num_channels=2)
    x = tf.zeros([2, 1, 1, 2])
    y = tf.constant([1, 4])
    out = guided(x, tf.constant([0, 0]), y=y).numpy()
    # uncond = 10, cond = y: 10 + 3 (y - 10)
    np.testing.assert_allclose(out[:, 0, 0, 0], 10 + 3 * (np.array([1, 4]) - 10))


def test_guidance_keeps_conditional_variance_channels():
    def model_fn(x, t, y):
        y = tf.cast(tf.reshape(y, [-1, 1, 1, 1]), tf.float32)
        return tf.concat([x + y, x - y], axis=-1)

    guided = samplers.classifier_free_guidance(model_fn, 2.0, null_label=5, num_channels=1)
    out = guided(tf.zeros([1, 1, 1, 1]), tf.constant([0]), y=tf.constant([2])).numpy()
    np.testing.assert_allclose(out[0, 0, 0], [5 + 2 * (2 - 5), -2])


def test_noise_shape_mismatch_is_reported():
    diffusion = GaussianDiffusion(schedules.get_beta_schedule("cosine", T))
    with pytest.raises(ValueError, match="sample shape"):
        diffusion.ddim_sample_loop(_eps_model_tf, [2, 4, 4, 3], num_steps=2, noise=tf.zeros([1, 4, 4, 3]))


@pytest.mark.parametrize("num_steps", [0, 21])
def test_num_steps_out_of_range(num_steps):
    diffusion = GaussianDiffusion(schedules.get_beta_schedule("cosine", T))
    with pytest.raises(ValueError, match="between 1 and 20"):
        diffusion.ddim_sample_loop(_eps_model_tf, [1, 2, 2, 1], num_steps=num_steps)
