"""DDIM and DDPM samplers against numpy loops from the papers, Monte Carlo, guidance, seeds, the registry."""

import numpy as np
import pytest
import tensorflow as tf

from tfdiffusion import random as tfd_random
from tfdiffusion import samplers, schedules
from tfdiffusion.samplers import steps
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


@pytest.mark.parametrize("num_steps, error", [(0, ValueError), (21, ValueError), (2.0, TypeError),
                                              (True, TypeError)])
def test_num_steps_out_of_range(num_steps, error):
    diffusion = GaussianDiffusion(schedules.get_beta_schedule("cosine", T))
    with pytest.raises(error, match=r"`num_steps` must be an integer in \[1, 20\]"):
        diffusion.ddim_sample_loop(_eps_model_tf, [1, 2, 2, 1], num_steps=num_steps)


@pytest.mark.parametrize("T_", [50, 1000])
@pytest.mark.parametrize("spacing", schedules.SPACINGS)
def test_in_graph_spacing_equals_numpy_for_every_step_count(T_, spacing):
    # The SavedModel takes num_steps as a tensor: the graph computes the same timesteps.
    # All (index, count) pairs at once: the ops are elementwise.
    counts = np.arange(1, T_ + 1)
    n = np.repeat(counts, counts)
    i = np.concatenate([np.arange(c) for c in counts])
    got = tf.function(lambda i, n: steps.timestep_at(i, n, T_, spacing))(i, n).numpy()
    expected = np.concatenate([schedules.space_timesteps(T_, int(c), spacing) for c in counts])
    np.testing.assert_array_equal(got, expected)


def test_ddpm_last_step_returns_the_posterior_mean_without_noise():
    # An x0-predicting model outputting c: at the last step (abar_prev = 1) the posterior mean is
    # exactly c whatever x_1, so any noise added there would show.
    diffusion = GaussianDiffusion(schedules.get_beta_schedule("cosine", T), "x0")
    c = np.random.default_rng(3).uniform(-0.9, 0.9, (4, 3, 3, 2)).astype(np.float32)
    model_fn = lambda x, t: tf.constant(c)  # noqa: E731
    for seed in (0, 1):
        got = diffusion.p_sample_loop(model_fn, c.shape, seed=seed).numpy()
        np.testing.assert_allclose(got, c, atol=1e-6)


@pytest.mark.parametrize("var_type", ["fixed_small", "fixed_large", "learned_range"])
@pytest.mark.parametrize("spacing", schedules.SPACINGS)
def test_ddpm_with_fewer_steps_equals_ddpm_over_the_respaced_process(var_type, spacing):
    # In-graph float64 respacing (any step count, one graph) against the numpy respaced process,
    # whose marginals are tested against the papers in test_diffusion.py; same seed, same noise.
    loss = "hybrid" if var_type == "learned_range" else "mse"
    diffusion = GaussianDiffusion(schedules.get_beta_schedule("linear", 100), "epsilon", var_type, loss)

    def model_fn(x, t):
        eps = 0.3 * x + 0.001 * tf.cast(tf.reshape(t, [-1, 1, 1, 1]), tf.float32)
        return tf.concat([eps, tf.tanh(x)], -1) if var_type == "learned_range" else eps

    shape = [2, 3, 3, 1]
    reference = diffusion.respace(7, spacing).p_sample_loop(model_fn, shape, seed=4)
    sampler = samplers.get_sampler("ddpm")(diffusion, spacing=spacing)
    # p_sample_loop draws x_T from fold_in(seed, -1); give the sampler the same x_T.
    x_T = tfd_random.random_normal(shape, tfd_random.fold_in(tfd_random.seed_pair(4), -1))
    got = sampler.sample(model_fn, x_T, 7, seed=4)
    np.testing.assert_allclose(got, reference, atol=1e-4)
    # A tensor step count gives the same samples as the Python int.
    got_tensor = tf.function(lambda n: sampler.sample(model_fn, x_T, n, seed=4))(tf.constant(7))
    np.testing.assert_allclose(got_tensor, got, atol=1e-6)


def test_registry_lists_samplers_and_refuses_unknown_names_and_options():
    assert samplers.sampler_names()[:2] == ("ddpm", "ddim")
    diffusion = GaussianDiffusion(schedules.get_beta_schedule("cosine", T))
    with pytest.raises(ValueError, match="`sampler` must be one of"):
        samplers.get_sampler("euler-maruyama")
    with pytest.raises(ValueError, match="'ddpm' takes no options. Received: eta=0.5"):
        samplers.get_sampler("ddpm")(diffusion).sample(_eps_model_tf, tf.zeros([1, 2, 2, 1]), 2, eta=0.5)
    ddim = samplers.get_sampler("ddim")(diffusion)
    for eta, error in ((-1.0, ValueError), (float("nan"), ValueError), (float("inf"), ValueError),
                       ("0", TypeError), (True, TypeError)):
        with pytest.raises(error, match="eta"):
            ddim.sample(_eps_model_tf, tf.zeros([1, 2, 2, 1]), 2, eta=eta)
    with pytest.raises(ValueError, match="spacing"):
        samplers.get_sampler("ddim")(diffusion, spacing="karras")


@pytest.mark.parametrize("name", ["ddpm", "ddim"])
@pytest.mark.parametrize("batch", [1, 3])
def test_every_sampler_runs_at_batch_one_and_odd_batches_under_xla(name, batch):
    diffusion = GaussianDiffusion(schedules.get_beta_schedule("cosine", T))
    sampler = samplers.get_sampler(name)(diffusion)
    fn = tf.function(lambda noise: sampler.sample(_eps_model_tf, noise, 4, seed=0), jit_compile=True)
    out = fn(tf.random.stateless_normal([batch, 2, 2, 1], [1, 2]))
    assert out.shape == (batch, 2, 2, 1) and np.all(np.isfinite(out))
