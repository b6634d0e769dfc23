"""DPM-Solver++ and EDM samplers: steps against float64 numpy from the papers, convergence order, Monte Carlo, XLA."""

import math

import numpy as np
import pytest
import tensorflow as tf

import tfdiffusion as tfdiff
from tfdiffusion import random as tfd_random
from tfdiffusion import samplers, schedules
from tfdiffusion.diffusion import GaussianDiffusion
from tfdiffusion.samplers import levels

NEW = ("dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde", "euler", "heun", "euler_ancestral")
DPM = ("dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde")
EDM = ("euler", "heun", "euler_ancestral")
T_SMALL = 50


# --------------------------------------------------------------- references
def _alphas_cumprod(betas):
    return np.cumprod(1.0 - np.asarray(betas, np.float64))


def _log_sigmas(abar):
    """EDM's log sigma = log sqrt((1 - abar) / abar) per trained step (Karras et al. 2022, Table 1, VP)."""
    return 0.5 * np.log((1.0 - abar) / abar)


def _timestep_of_sigma(sigma, log_sigmas):
    """Fractional timestep: log sigma interpolated linearly over the table."""
    return np.interp(np.log(sigma), log_sigmas, np.arange(len(log_sigmas)))


def _karras_sigmas(n, sigma_min, sigma_max, rho=7.0):
    """Karras et al. 2022, Eq. 5, noisiest first, then 0; sigma_max at most their 80 (Table 1)."""
    sigma_max = min(sigma_max, 80.0)
    k = np.arange(n)
    ramp = k / max(n - 1, 1)
    sig = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return np.append(sig, 0.0)


def _sigma_at(t, log_sigmas):
    """sigma at a (fractional) timestep, tensor version for the test models."""
    t = tf.cast(t, tf.float64)
    low = tf.minimum(tf.cast(tf.floor(t), tf.int32), len(log_sigmas) - 2)
    frac = t - tf.cast(low, tf.float64)
    table = tf.constant(log_sigmas)
    return tf.exp(tf.gather(table, low) + frac * (tf.gather(table, low + 1) - tf.gather(table, low)))


def _toy_x0(x, t):
    """A smooth nonlinear x0-predicting 'network' (numpy and TF alike)."""
    if tf.is_tensor(x):
        t = tf.reshape(tf.cast(t, tf.float32), [-1] + [1] * (x.shape.rank - 1))
        return 0.8 * tf.tanh(x) + 0.002 * t
    t = np.reshape(t, [-1] + [1] * (x.ndim - 1))
    return 0.8 * np.tanh(x) + 0.002 * t


def _noise(shape, seed, level_index):
    """The documented noise stream: the draw of level i comes from fold_in(seed, i)."""
    return tfd_random.random_normal(shape, tfd_random.fold_in(tfd_random.seed_pair(seed), level_index)).numpy()


def _levels(spacing, n, abar):
    """(model timestep, alpha_bar) per level, noisiest first, then the data (None, 1)."""
    if spacing == "karras":
        log_sigmas = _log_sigmas(abar)
        sig = _karras_sigmas(n, math.exp(log_sigmas[0]), math.exp(log_sigmas[-1]))[:-1]
        levels = [(_timestep_of_sigma(s_, log_sigmas), 1.0 / (1.0 + s_ * s_)) for s_ in sig]
    else:
        levels = [(t, abar[t]) for t in schedules.space_timesteps(len(abar), n, spacing)[::-1]]
    return levels + [(None, 1.0)]


def _dpm_reference(x, levels, model, order, sde=False, seed=0):
    """DPM-Solver++ in float64 (Lu et al. 2022b): the exact solution with data prediction
    x_t = (sigma_t / sigma_s) x_s + sigma_t int e^lambda x_theta dlambda, x_theta replaced by the
    polynomial through the last `order` predictions in lambda (order 2: Algorithm 2's
    D = (1 + 1/(2r)) m0 - 1/(2r) m1), integrated by Gauss-Legendre quadrature for order 3.
    The order of step k of n is min(order, k + 1, n - k), lowered while a step in lambda is more than
    twice the one before it among those the update uses (h <= 2 h1 for order 2, also h1 <= 2 h2
    for order 3). SDE: the x_s weight gains e^-h, the x_theta weight is alpha_t (1 - e^-2h), plus
    sigma_t sqrt(1 - e^-2h) z."""
    n = len(levels) - 1
    lam = lambda a: 0.5 * (np.log(a) - np.log1p(-a)) if 0 < a < 1 else (np.inf if a == 1 else -np.inf)  # noqa: E731
    lams = [lam(a) for _, a in levels]
    steps = np.diff(lams)  # steps[k]: step k's size in lambda (inf out of a level at alpha_bar = 0)
    history = []
    for k in range(n):
        (t_s, a_s), (_, a_t) = levels[k], levels[k + 1]
        m0 = model(x, np.full([x.shape[0]], t_s))
        history.insert(0, (lam(a_s), m0))
        h = lam(a_t) - lam(a_s)
        step_order = min(order, k + 1, n - k)
        while step_order > 1 and any(steps[k - m] > 2.0 * steps[k - m - 1] for m in range(step_order - 1)):
            step_order -= 1
        alpha_t, sigma_t, sigma_s = math.sqrt(a_t), math.sqrt(1 - a_t), math.sqrt(1 - a_s)
        if step_order == 1:
            d = m0
        elif step_order == 2:
            r = (history[0][0] - history[1][0]) / h
            d = (1 + 1 / (2 * r)) * m0 - 1 / (2 * r) * history[1][1]
        if sde:
            i = n - 1 - k
            x = (sigma_t / sigma_s * math.exp(-h) * x + alpha_t * (1 - math.exp(-2 * h)) * d
                 + sigma_t * math.sqrt(1 - math.exp(-2 * h)) * _noise(x.shape, seed, i))
        elif step_order < 3:
            x = sigma_t / sigma_s * x - alpha_t * math.expm1(-h) * d
        else:
            lams = [history[j][0] for j in range(3)]
            nodes, weights = np.polynomial.legendre.leggauss(40)
            lam_s = lams[0]
            u = lam_s + (nodes + 1) / 2 * h
            integral = 0.0
            for j in range(3):  # Lagrange basis L_j(u) of the three lambdas
                basis = np.prod([(u - lams[m]) / (lams[j] - lams[m]) for m in range(3) if m != j], axis=0)
                integral = integral + history[j][1] * (h / 2 * np.sum(weights * np.exp(u) * basis))
            x = sigma_t / sigma_s * x + sigma_t * integral
    return x


def _edm_reference(x_T, sigmas, denoiser, heun=False, churn=0.0, ancestral_eta=None, seed=0):
    """Karras et al. 2022 Algorithm 2 (Algorithm 1 for churn = 0) in float64, from x_T sqrt(1 + sigma_0^2);
    with `ancestral_eta`: an Euler step to sigma_down, then noise sigma_up (DDIM Eq. 16 in sigma units)."""
    n = len(sigmas) - 1
    x = x_T * math.sqrt(1 + sigmas[0] ** 2)
    for k in range(n):
        s, s_next, i = sigmas[k], sigmas[k + 1], n - 1 - k
        z = _noise(x.shape, seed, i)
        if ancestral_eta is not None:
            up = min(s_next, ancestral_eta * math.sqrt(s_next**2 * (s**2 - s_next**2) / s**2))
            down = math.sqrt(s_next**2 - up**2)
            x = x + (down - s) * (x - denoiser(x, s)) / s + up * z
            continue
        gamma = min(churn / n, math.sqrt(2) - 1)
        s_hat = s * (1 + gamma)
        x_hat = x + math.sqrt(s_hat**2 - s**2) * z
        d = (x_hat - denoiser(x_hat, s_hat)) / s_hat
        x = x_hat + (s_next - s_hat) * d
        if heun and s_next > 0:
            d_next = (x - denoiser(x, s_next)) / s_next
            x = x_hat + (s_next - s_hat) * (d + d_next) / 2
    return x


# ------------------------------------------------------- one step vs numpy
def _toy_setup(spacing, n, schedule="cosine"):
    betas = schedules.get_beta_schedule(schedule, T_SMALL)
    abar = _alphas_cumprod(betas)
    x_T = np.random.default_rng(0).standard_normal((3, 2, 2, 2))
    return GaussianDiffusion(betas, "x0"), abar, x_T, _levels(spacing, n, abar)


@pytest.mark.parametrize("name, order", [("dpmpp_2m", 2), ("dpmpp_3m", 3)])
@pytest.mark.parametrize("spacing", ["trailing", "karras", "leading"])
def test_dpm_solver_steps_equal_numpy(name, order, spacing):
    # 7 steps: first-order start, order-2 and (3M) order-3 steps, lowered final steps; on the
    # leading grid the step onto t = 0 is 2.8 times the one before it, so it is first order.
    diffusion, _, x_T, levels = _toy_setup(spacing, 7)
    got = samplers.get_sampler(name)(diffusion, spacing=spacing, clip_denoised=False).sample(
        _toy_x0, x_T.astype(np.float32), 7)
    np.testing.assert_allclose(got, _dpm_reference(x_T, levels, _toy_x0, order), rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("spacing", ["linspace", "karras"])
def test_dpm_solver_sde_steps_equal_numpy(spacing):
    diffusion, _, x_T, levels = _toy_setup(spacing, 6)
    got = samplers.get_sampler("dpmpp_2m_sde")(diffusion, spacing=spacing, clip_denoised=False).sample(
        _toy_x0, x_T.astype(np.float32), 6, seed=7)
    np.testing.assert_allclose(got, _dpm_reference(x_T, levels, _toy_x0, 2, sde=True, seed=7),
                               rtol=2e-4, atol=2e-5)


def test_dpm_solver_sde_with_eta_zero_is_the_ode_solver():
    diffusion, _, x_T, _ = _toy_setup("karras", 6)
    x = x_T.astype(np.float32)
    sde = samplers.get_sampler("dpmpp_2m_sde")(diffusion, spacing="karras", clip_denoised=False)
    ode = samplers.get_sampler("dpmpp_2m")(diffusion, spacing="karras", clip_denoised=False)
    np.testing.assert_allclose(sde.sample(_toy_x0, x, 6, seed=1, eta=0.0), ode.sample(_toy_x0, x, 6),
                               rtol=1e-5, atol=1e-6)


def test_dpm_solver_on_a_zero_terminal_snr_schedule_equals_numpy():
    # alpha_bar = 0 at the first level (lambda = -inf): the first step is DDIM's from pure noise and
    # the following second-order step sees r = inf; v prediction, whose x_0 there is -v.
    betas = schedules.rescale_zero_terminal_snr(schedules.get_beta_schedule("cosine", T_SMALL))
    abar = _alphas_cumprod(betas)
    diffusion = GaussianDiffusion(betas, "v")
    x_T = np.random.default_rng(1).standard_normal((2, 3, 3, 1))

    def v_model(x, t):  # a toy v network; at abar = 0 its x_0 is -v
        return -_toy_x0(x, t)

    def x0_of_v(x, t):
        a = abar[np.asarray(t, int)].reshape(-1, 1, 1, 1)
        return np.sqrt(a) * x - np.sqrt(1 - a) * v_model(x, t)

    got = samplers.get_sampler("dpmpp_2m")(diffusion, spacing="trailing", clip_denoised=False).sample(
        v_model, x_T.astype(np.float32), 6)
    expected = _dpm_reference(x_T, _levels("trailing", 6, abar), x0_of_v, 2)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-5)


def _edm_case(name, spacing, n, options, seed=3):
    diffusion, abar, x_T, _ = _toy_setup(spacing, n)
    log_sigmas = _log_sigmas(abar)
    if spacing == "karras":
        sig = _karras_sigmas(n, math.exp(log_sigmas[0]), math.exp(log_sigmas[-1]))
    else:
        sig = np.append(np.exp(log_sigmas[schedules.space_timesteps(T_SMALL, n, spacing)[::-1]]), 0.0)

    def denoiser(x, s):  # D(x; sigma): the x0 network at x / sqrt(1 + sigma^2) and sigma's timestep
        return _toy_x0(x / math.sqrt(1 + s * s), np.full([x.shape[0]], _timestep_of_sigma(s, log_sigmas)))

    sampler = samplers.get_sampler(name)(diffusion, spacing=spacing, clip_denoised=False)
    got = sampler.sample(_toy_x0, x_T.astype(np.float32), n, seed=seed, **options)
    kwargs = dict(heun=name == "heun", churn=options.get("churn", 0.0), seed=seed)
    if name == "euler_ancestral":
        kwargs["ancestral_eta"] = options.get("eta", 1.0)
    return got, _edm_reference(x_T, sig, denoiser, **kwargs)


@pytest.mark.parametrize("name, options", [("euler", {}), ("heun", {}), ("heun", {"churn": 3.0}),
                                           ("euler", {"churn": 2.0}), ("euler_ancestral", {}),
                                           ("euler_ancestral", {"eta": 0.5})])
@pytest.mark.parametrize("spacing", ["leading", "karras"])
def test_edm_steps_equal_numpy(name, options, spacing):
    got, expected = _edm_case(name, spacing, 5, options)
    np.testing.assert_allclose(got, expected, rtol=2e-4, atol=5e-5)


def test_euler_on_trained_timesteps_is_ddim():
    # The Euler step of dx/dsigma = (x - D) / sigma, mapped to the VP process, is DDIM's Eq. 12.
    diffusion, _, x_T, _ = _toy_setup("trailing", 6)
    x = x_T.astype(np.float32)
    euler = samplers.get_sampler("euler")(diffusion, spacing="trailing", clip_denoised=False).sample(_toy_x0, x, 6)
    ddim = samplers.get_sampler("ddim")(diffusion, spacing="trailing", clip_denoised=False).sample(_toy_x0, x, 6)
    np.testing.assert_allclose(euler, ddim, rtol=1e-4, atol=1e-5)


def _schedule_cases():
    """(id, betas, model_mean_type) for every named schedule at T = 1000, and zero-terminal-SNR ones."""
    cases = [(name, schedules.get_beta_schedule(name, 1000), "epsilon") for name in schedules.SCHEDULES]
    cases += [(f"{name}-zero-snr", schedules.rescale_zero_terminal_snr(schedules.get_beta_schedule(name, 1000)), "v")
              for name in ("linear", "cosine")]
    return cases


SCHEDULE_CASES = _schedule_cases()


@pytest.mark.parametrize("betas, mean_type", [c[1:] for c in SCHEDULE_CASES], ids=[c[0] for c in SCHEDULE_CASES])
def test_sigma_table_is_sqrt_of_one_minus_abar_over_abar(betas, mean_type):
    # EDM's sigma = sqrt((1 - abar) / abar) (Karras et al. 2022, Table 1, VP) at every trained step,
    # however small abar is (the cosine schedule's last: 2.4e-9); only abar = 0 takes the 2^-24 floor.
    diffusion = GaussianDiffusion(betas, mean_type)
    abar = np.cumprod(1.0 - np.asarray(betas, np.float64))
    positive = abar > 0
    expected = np.sqrt((1.0 - abar[positive]) / abar[positive])
    np.testing.assert_allclose(np.exp(levels.log_sigmas(diffusion))[positive], expected, rtol=1e-12)
    floor = 2.0**-24
    np.testing.assert_allclose(np.exp(levels.log_sigmas(diffusion))[~positive], math.sqrt((1 - floor) / floor),
                               rtol=1e-12)
    # The levels a solver visits read the same table at their spaced timesteps.
    for spacing in schedules.SPACINGS:
        visited = levels.NoiseLevels(diffusion, 10, spacing)
        timesteps = schedules.space_timesteps(1000, 10, spacing)
        got = np.array([visited.sigma(i).numpy() for i in range(10)])
        at = np.where(positive[timesteps], abar[timesteps], floor)
        reference = np.sqrt((1.0 - at) / at)
        np.testing.assert_allclose(got, reference, rtol=1e-12)


@pytest.mark.parametrize("spacing", schedules.SPACINGS)
@pytest.mark.parametrize("betas, mean_type", [c[1:] for c in SCHEDULE_CASES], ids=[c[0] for c in SCHEDULE_CASES])
def test_euler_equals_ddim_on_the_same_levels(betas, mean_type, spacing):
    # The Euler step of dx/dsigma = (x - D) / sigma from sigma_s to sigma_t, mapped to the VP process,
    # is DDIM's Eq. 12 between the same alpha_bars, whatever the schedule: the same samples to float32
    # rounding, also where abar is tiny (cosine, t = 999). A zero-SNR level is where the two differ:
    # Euler starts at the floored abar = 2^-24 (x_0 predictions off by sqrt(2^-24) = 2.4e-4 x_T), DDIM at 0.
    diffusion = GaussianDiffusion(betas, mean_type)
    x = np.random.default_rng(4).standard_normal((3, 2, 2, 2)).astype(np.float32)
    model = _gaussian_model(diffusion, mean_type)
    euler = samplers.get_sampler("euler")(diffusion, spacing=spacing, clip_denoised=False).sample(model, x, 10)
    ddim = samplers.get_sampler("ddim")(diffusion, spacing=spacing, clip_denoised=False).sample(model, x, 10)
    tolerance = 2e-3 if mean_type == "v" else 2e-5
    np.testing.assert_allclose(euler, ddim, rtol=tolerance, atol=tolerance)


# --------------------------------------------- convergence on Gaussian data
MU, S = 0.2, 0.5
T_LARGE = 1000


def _gaussian_model(diffusion, mean_type="x0", learned=False, mu=MU, s=S):
    """The exact denoiser of data N(mu, s^2) in the network's output type, at any (fractional) t:
    E[x_0 | x_t] = mu + sqrt(a) s^2 / (a s^2 + 1 - a) (x_t - sqrt(a) mu), a = 1 / (1 + sigma(t)^2)."""
    log_sigmas = _log_sigmas(_alphas_cumprod(diffusion.betas))

    def model_fn(x, t):
        a = tf.reshape(1.0 / (1.0 + tf.square(_sigma_at(t, log_sigmas))), [-1] + [1] * (x.shape.rank - 1))
        x64 = tf.cast(x, tf.float64)
        x0 = mu + tf.sqrt(a) * s**2 / (a * s**2 + 1 - a) * (x64 - tf.sqrt(a) * mu)
        eps = (x64 - tf.sqrt(a) * x0) / tf.sqrt(1 - a)
        out = {"x0": x0, "epsilon": eps, "v": tf.sqrt(a) * eps - tf.sqrt(1 - a) * x0}[mean_type]
        out = tf.cast(out, tf.float32)
        return tf.concat([out, tf.tanh(x)], -1) if learned else out
    return model_fn


def _exact_flow(x_T, a_T, a_0, mu=MU, s=S):
    """The probability-flow ODE from x_T at alpha_bar a_T to a_0 (x standardised by its marginal
    N(sqrt(a) mu, a s^2 + 1 - a) is constant along the flow), then the exact denoiser at a_0."""
    z = (x_T - math.sqrt(a_T) * mu) / np.sqrt(a_T * s**2 + 1 - a_T)
    x_0 = math.sqrt(a_0) * mu + np.sqrt(a_0 * s**2 + 1 - a_0) * z
    return mu + math.sqrt(a_0) * s**2 / (a_0 * s**2 + 1 - a_0) * (x_0 - math.sqrt(a_0) * mu)


# Step counts where the error is in its asymptotic regime (local slopes within 0.15 of the fit's
# from here on, measured up to 160 steps); below them the high-noise steps dominate (e.g. 2M's
# local slope is -0.9 from 10 to 14 steps, 3M's -4.5).
@pytest.mark.parametrize("name, spacing, counts, order", [
    ("ddim", "linspace", (10, 20, 40), 1),
    ("euler", "karras", (20, 40, 80), 1),
    ("dpmpp_2m", "karras", (40, 80, 160), 2),
    ("heun", "karras", (10, 20, 40, 80), 2),
    ("dpmpp_3m", "karras", (40, 80, 160), 3),
])
def test_convergence_order_on_gaussian_data(name, spacing, counts, order):
    # Error of the final sample against the exact ODE solution, fitted as C * NFE^-p. Tolerance
    # 0.2: higher-order error terms still tilt the fit by up to ~0.15 over these ranges (measured:
    # DDIM -0.99, Euler -0.99, 2M -2.08, Heun -2.13, 3M -3.06), while one order less or more is 1 away.
    diffusion = GaussianDiffusion(schedules.get_beta_schedule("linear", T_LARGE), "x0")
    x_T = np.random.default_rng(0).standard_normal((64, 1))
    abar = _alphas_cumprod(diffusion.betas)
    # The first level: t = T-1, or Karras's sigma_max = 80 (alpha_bar = 1 / (1 + 80^2)).
    exact = _exact_flow(x_T, 1.0 / (1.0 + 80.0**2) if spacing == "karras" else abar[-1], abar[0])
    sampler = samplers.get_sampler(name)(diffusion, spacing=spacing, clip_denoised=False)
    run = tf.function(lambda n: sampler.sample(_gaussian_model(diffusion), x_T.astype(np.float32), n))
    errors = [np.sqrt(np.mean((run(tf.constant(n)).numpy() - exact) ** 2)) for n in counts]
    nfe = [sampler.network_evaluations(n) for n in counts]
    slope = np.polyfit(np.log(nfe), np.log(errors), 1)[0]
    assert slope == pytest.approx(-order, abs=0.2), (slope, errors)


@pytest.mark.parametrize("num_steps", [10, 25, 50])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_dpm_solvers_are_at_least_as_close_to_the_ode_as_ddim_on_the_default_grid(schedule, num_steps):
    # Gaussian data with a mean and spread per pixel (spreads 0.05-0.5: x_theta levels off at lambda
    # ~ -log s, for small s near the data end), the exact denoiser as an epsilon network, the
    # samplers' default leading grid, no clipping. Without the step-ratio rule, the second-order
    # extrapolation over the long step onto t = 0 left 2M 1.1-1.9 times as far from the exact solution
    # as DDIM (linear, 25 steps: 2M 0.26, 3M 0.24, DDIM 0.17); with it, 2M and 3M are 0.6-0.9 times as far.
    rng = np.random.default_rng(0)
    mu, s = rng.uniform(-0.6, 0.6, (1, 6, 6, 3)), rng.uniform(0.05, 0.5, (1, 6, 6, 3))
    x_T = rng.standard_normal((4, 6, 6, 3))
    diffusion = GaussianDiffusion(schedules.get_beta_schedule(schedule, T_LARGE))
    abar = _alphas_cumprod(diffusion.betas)
    first = schedules.space_timesteps(T_LARGE, num_steps, "leading")[-1]
    exact = _exact_flow(x_T, abar[first], abar[0], mu, s)
    model_fn = _gaussian_model(diffusion, "epsilon", mu=mu, s=s)
    distance = {}
    for name in ("ddim", "dpmpp_2m", "dpmpp_3m"):
        sampler = samplers.get_sampler(name)(diffusion, clip_denoised=False)
        distance[name] = np.max(np.abs(sampler.sample(model_fn, x_T.astype(np.float32), num_steps).numpy() - exact))
    assert distance["dpmpp_2m"] <= distance["ddim"], distance
    assert distance["dpmpp_3m"] <= distance["ddim"], distance


@pytest.mark.parametrize("name, steps, options, std_rtol", [
    ("dpmpp_2m_sde", 100, {}, 0.03),
    ("heun", 100, {"churn": 40.0}, 0.03),
    ("euler_ancestral", 400, {}, 0.06),
])
def test_stochastic_samplers_recover_gaussian_data(name, steps, options, std_rtol):
    # 8000 samples of N(0.3, 0.2^2) data with the exact denoiser, Karras levels. Standard errors:
    # mean 0.2 / sqrt(8000) = 0.0022 (tolerance 0.01 = 4.5 se), std ~0.0016 (0.8%). The rest of
    # each std tolerance is the discretisation bias measured at these step counts (2M SDE +0.3%,
    # Heun with churn +1%, Euler ancestral -4.3%: a first-order method, as DDPM's ~-3% at 1000 steps).
    mu, s = 0.3, 0.2
    diffusion = GaussianDiffusion(schedules.get_beta_schedule("linear", T_LARGE), "x0")
    model_fn = _gaussian_model(diffusion, mu=mu, s=s)
    sampler = samplers.get_sampler(name)(diffusion, spacing="karras", clip_denoised=False)
    x_T = tf.random.stateless_normal([8000, 1], [3, 4])
    x = tf.function(lambda: sampler.sample(model_fn, x_T, steps, seed=1, **options))().numpy()
    assert x.mean() == pytest.approx(mu, abs=0.01)
    assert x.std() == pytest.approx(s, rel=std_rtol)


# ------------------------------------------- prediction types, variances, guidance
@pytest.mark.parametrize("name", NEW)
def test_every_prediction_type_and_learned_variances_give_the_same_samples(name):
    # The exact denoiser written as x0, epsilon or v (with garbage variance channels for
    # learned_range) is one function: every parameterisation must give the x0 samples.
    betas = schedules.get_beta_schedule("linear", 100)
    x_T = np.random.default_rng(4).standard_normal((4, 2, 2, 1)).astype(np.float32)
    results = {}
    for mean_type, var_type, loss in [("x0", "fixed_small", "mse"), ("epsilon", "fixed_small", "mse"),
                                      ("v", "fixed_small", "mse"), ("epsilon", "learned_range", "hybrid")]:
        diffusion = GaussianDiffusion(betas, mean_type, var_type, loss)
        model_fn = _gaussian_model(diffusion, mean_type, learned=var_type == "learned_range")
        sampler = samplers.get_sampler(name)(diffusion, spacing="karras", clip_denoised=False)
        results[(mean_type, var_type)] = sampler.sample(model_fn, x_T, sampler.min_steps, seed=2).numpy()
    reference = results.pop(("x0", "fixed_small"))
    for key, value in results.items():
        np.testing.assert_allclose(value, reference, rtol=1e-3, atol=1e-4, err_msg=str(key))


@pytest.mark.parametrize("name", NEW)
def test_guidance_with_each_sampler(name):
    # A class-conditional x0 network predicting a constant per class; null label 5 predicts -0.2.
    # Guided x_0 = -0.2 + s (c_y + 0.2), constant, so every solver must land exactly on it.
    diffusion = GaussianDiffusion(schedules.get_beta_schedule("cosine", T_SMALL), "x0")
    consts = np.array([0.1, -0.3, 0.05, 0.2, 0.0, -0.2], np.float32)

    def model_fn(x, t, y):
        return tf.zeros_like(x) + tf.reshape(tf.gather(consts, y), [-1, 1, 1, 1])

    # A tensor scale, as in a SavedModel: tf.cond between the plain and the guided call.
    guided = samplers.classifier_free_guidance(model_fn, tf.constant(1.5), null_label=5, num_channels=1)
    y = np.array([0, 1, 3], np.int32)
    sampler = samplers.get_sampler(name)(diffusion, spacing="karras", clip_denoised=False)
    out = sampler.sample(guided, tf.ones([3, 2, 2, 1]), 5, seed=0, model_kwargs={"y": y}).numpy()
    expected = -0.2 + 1.5 * (consts[y] + 0.2)
    np.testing.assert_allclose(out, np.broadcast_to(expected[:, None, None, None], out.shape), atol=2e-5)


# ------------------------------------------------ graphs, seeds, evaluations
def _quiet_reference(name, n, x_T):
    """The numpy reference of sampler `name` with its noise options at 0 (Karras levels, T_SMALL)."""
    betas = schedules.get_beta_schedule("cosine", T_SMALL)
    abar = _alphas_cumprod(betas)
    if name in DPM:
        return _dpm_reference(x_T, _levels("karras", n, abar), _toy_x0, 3 if name == "dpmpp_3m" else 2)
    log_sigmas = _log_sigmas(abar)

    def denoiser(x, s):
        return _toy_x0(x / math.sqrt(1 + s * s), np.full([x.shape[0]], _timestep_of_sigma(s, log_sigmas)))
    sig = _karras_sigmas(n, math.exp(log_sigmas[0]), math.exp(log_sigmas[-1]))
    return _edm_reference(x_T, sig, denoiser, heun=name == "heun")


@pytest.mark.parametrize("name", NEW)
def test_compiles_with_xla_for_tensor_step_counts_and_batch_one(name):
    # XLA draws other random numbers than the CPU kernels: the noise options are 0 here (the noise
    # is still drawn and scaled) and the result is the numpy reference's; with noise, the same
    # seed gives the same samples under XLA.
    diffusion = GaussianDiffusion(schedules.get_beta_schedule("cosine", T_SMALL), "x0")
    sampler = samplers.get_sampler(name)(diffusion, spacing="karras", clip_denoised=False)
    x_T = np.random.default_rng(5).standard_normal((1, 2, 2, 1))
    fn = tf.function(lambda x, n, options: sampler.sample(_toy_x0, x, n, seed=4, **options), jit_compile=True)
    quiet = {key: tf.constant(0.0) for key in sampler.options}
    for n in (5, 7):  # one compilation serves every count
        np.testing.assert_allclose(fn(x_T.astype(np.float32), tf.constant(n), quiet), _quiet_reference(name, n, x_T),
                                   rtol=2e-4, atol=5e-5)
    assert fn.experimental_get_tracing_count() == 1
    if sampler.options:
        noisy = {key: tf.constant(1.0) for key in sampler.options}
        a, b = (fn(x_T.astype(np.float32), tf.constant(5), noisy).numpy() for _ in range(2))
        assert np.all(np.isfinite(a)) and np.array_equal(a, b)


@pytest.mark.parametrize("name", ["dpmpp_2m_sde", "euler_ancestral", "heun"])
def test_same_seed_same_samples_other_seed_other(name):
    diffusion = GaussianDiffusion(schedules.get_beta_schedule("cosine", T_SMALL), "x0")
    sampler = samplers.get_sampler(name)(diffusion, spacing="linspace")
    options = {"churn": 5.0} if name == "heun" else {}
    x_T = tf.random.stateless_normal([2, 3, 3, 1], [0, 1])
    a, b, c = (sampler.sample(_toy_x0, x_T, 5, seed=seed, **options).numpy() for seed in (5, 5, 6))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3


@pytest.mark.parametrize("name, n, calls", [("heun", 5, 9), ("heun", 2, 3), ("dpmpp_3m", 6, 6)])
def test_network_evaluations_counts_the_calls(name, n, calls):
    diffusion = GaussianDiffusion(schedules.get_beta_schedule("cosine", T_SMALL), "x0")
    sampler = samplers.get_sampler(name)(diffusion, spacing="karras")
    counter = tf.Variable(0)

    def counting(x, t):
        counter.assign_add(1)
        return _toy_x0(x, t)

    tf.function(lambda: sampler.sample(counting, tf.ones([1, 2, 2, 1]), n, seed=0))()
    assert int(counter.numpy()) == calls == sampler.network_evaluations(n)


# ------------------------------------------------------ dynamic thresholding
@pytest.mark.parametrize("percentile, xla", [(0.5, False), (0.9, False), (0.995, True), (1.0, False)])
def test_dynamic_threshold_against_numpy(percentile, xla):
    # Saharia et al. 2022: s = max(1, quantile_p |x0|) per sample, x0 <- clip(x0, -s, s) / s.
    rng = np.random.default_rng(6)
    x0 = (rng.standard_normal((4, 5, 5, 3)) * np.array([0.3, 1.0, 2.0, 4.0])[:, None, None, None])
    s = np.maximum(1.0, np.quantile(np.abs(x0).reshape(4, -1), percentile, axis=1))[:, None, None, None]
    expected = np.clip(x0, -s, s) / s
    fn = tf.function(lambda x: samplers.dynamic_threshold(x, percentile), jit_compile=xla)
    np.testing.assert_allclose(fn(tf.constant(x0, tf.float32)), expected, rtol=1e-5, atol=1e-6)


def test_threshold_reaches_every_prediction():
    # An x0 network predicting 3 * tanh(...) saturates; with thresholding every x_0 the solver uses is
    # divided by its own s, so the last step's output (a thresholded prediction) has max |x| = 1.
    diffusion = GaussianDiffusion(schedules.get_beta_schedule("cosine", T_SMALL), "x0")
    model_fn = lambda x, t: 3.0 * tf.tanh(x) + 0.5  # noqa: E731
    x_T = np.random.default_rng(7).standard_normal((2, 4, 4, 3)).astype(np.float32)
    for name in NEW:
        out = samplers.get_sampler(name)(diffusion, spacing="karras", threshold=1.0).sample(model_fn, x_T, 5,
                                                                                              seed=0)
        np.testing.assert_allclose(np.abs(out.numpy()).reshape(2, -1).max(axis=1), 1.0, rtol=1e-6)


# --------------------------------------------------------------- bad input
@pytest.mark.parametrize("name, n, match", [
    ("dpmpp_3m", 1, "at least 5 for sampler 'dpmpp_3m'"), ("dpmpp_3m", 4, "at least 5"),
    ("dpmpp_2m", 2, "at least 3 for sampler 'dpmpp_2m'"), ("dpmpp_2m_sde", 1, "at least 3"),
    ("heun", 1, "use 'euler'"), ("euler", 0, r"\[1, 50\]"), ("heun", 51, r"\[2, 50\]")])
def test_step_counts_a_solver_cannot_use(name, n, match):
    diffusion = GaussianDiffusion(schedules.get_beta_schedule("cosine", T_SMALL))
    with pytest.raises(ValueError, match=match):
        samplers.get_sampler(name)(diffusion).sample(_toy_x0, tf.zeros([1, 2, 2, 1]), n)


def test_bad_names_options_and_percentiles():
    diffusion = GaussianDiffusion(schedules.get_beta_schedule("cosine", T_SMALL))
    with pytest.raises(ValueError, match="`sampler` must be one of"):
        samplers.get_sampler("dpmpp_4m")
    with pytest.raises(ValueError, match=r"`spacing` must be one of \('leading', 'trailing', 'linspace', "
                                         r"'karras'\). Received: spacing='karas'"):
        samplers.get_sampler("heun")(diffusion, spacing="karas")
    with pytest.raises(ValueError, match=r"`spacing` must be one of \('leading', 'trailing', 'linspace'\)"):
        samplers.get_sampler("ddim")(diffusion, spacing="karras")
    with pytest.raises(ValueError, match="'dpmpp_2m' takes no options. Received: churn=1.0"):
        samplers.get_sampler("dpmpp_2m")(diffusion).sample(_toy_x0, tf.zeros([1, 2, 2, 1]), 4, churn=1.0)
    with pytest.raises(ValueError, match="churn"):
        samplers.get_sampler("heun")(diffusion).sample(_toy_x0, tf.zeros([1, 2, 2, 1]), 4, churn=-1.0)
    for bad, error in ((0.0, ValueError), (1.5, ValueError), (-0.1, ValueError), (float("nan"), ValueError),
                       ("0.99", TypeError), (True, TypeError)):
        with pytest.raises(error, match=r"`threshold` must be a finite number in \(0.0, 1.0\]"):
            samplers.get_sampler("dpmpp_2m")(diffusion, threshold=bad)


# ------------------------------- noise levels between trained steps
def test_timestep_from_sigma_interpolates_log_sigma():
    betas = schedules.get_beta_schedule("cosine", T_SMALL)
    log_sigmas = _log_sigmas(_alphas_cumprod(betas))
    diffusion = GaussianDiffusion(betas)
    rng = np.random.default_rng(8)
    sig = np.concatenate([np.exp(rng.uniform(log_sigmas[0], log_sigmas[-1], 20)), np.exp(log_sigmas[[0, 7, -1]]),
                          [1e-4, 1e6]])  # inside, on the table, outside (clamped)
    got = levels.timestep_from_sigma(diffusion, tf.constant(sig)).numpy()
    np.testing.assert_allclose(got, _timestep_of_sigma(sig, log_sigmas), atol=1e-9)
    np.testing.assert_allclose(got[20:23], [0, 7, T_SMALL - 1], atol=1e-9)


def test_model_timesteps_interpolate_a_respaced_map():
    diffusion = GaussianDiffusion(schedules.get_beta_schedule("cosine", 100)).respace(5, "trailing")
    kept = schedules.space_timesteps(100, 5, "trailing")
    t = np.array([0.0, 1.25, 3.5, 4.0])
    np.testing.assert_allclose(diffusion.model_timesteps(tf.constant(t, tf.float32)),
                               np.interp(t, np.arange(5), kept), rtol=1e-6)
    np.testing.assert_array_equal(diffusion.model_timesteps(tf.constant([2, 4])), kept[[2, 4]])


@pytest.mark.parametrize("mean_type", ["epsilon", "x0", "v"])
def test_model_predictions_at_a_level_between_steps(mean_type):
    # At a fractional timestep with its own alpha_bar the output converts with that alpha_bar
    # (DDPM Eq. 4, Salimans & Ho Eq. 9), float64 numpy; on the table it equals model_predictions.
    diffusion = GaussianDiffusion(schedules.get_beta_schedule("cosine", T_SMALL), mean_type)
    x = np.random.default_rng(9).standard_normal((2, 3, 3, 1)).astype(np.float32)
    out = lambda x_, t: 0.5 * x_ + 0.01 * tf.reshape(tf.cast(t, tf.float32), [-1, 1, 1, 1])  # noqa: E731
    a = 0.37
    got = diffusion.model_predictions_at(out, x, tf.constant([12.5, 12.5]), a, clip_denoised=False)
    o = 0.5 * x.astype(np.float64) + 0.125
    x0 = {"epsilon": (x - np.sqrt(1 - a) * o) / np.sqrt(a), "x0": o,
          "v": np.sqrt(a) * x - np.sqrt(1 - a) * o}[mean_type]
    np.testing.assert_allclose(got["pred_xstart"], x0, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["pred_eps"], (x - np.sqrt(a) * x0) / np.sqrt(1 - a), rtol=1e-4, atol=1e-5)
    t = tf.constant([12, 12])
    on_table = diffusion.model_predictions_at(out, x, t, diffusion.alphas_cumprod[12])
    reference = diffusion.model_predictions(out, x, t)
    np.testing.assert_allclose(on_table["pred_xstart"], reference["pred_xstart"], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ generate
def test_generate_with_a_solver_threshold_and_options():
    # generate builds one ImageSampler per (sampler, spacing, clipping, threshold), whatever the
    # family: Euler with churn covers float timesteps, run-time options and guidance in the UNet
    # (Heun's second call through the CLI: tests/test_cli.py).
    unet = tfdiff.UNet(image_size=8, in_channels=3, base_channels=8, channel_mult=(1,), num_res_blocks=1,
                       attention_resolutions=(), dropout=0.0, num_classes=2, num_groups=4)
    model = tfdiff.DiffusionModel(unet, GaussianDiffusion(schedules.get_beta_schedule("cosine", T_SMALL)))
    kwargs = dict(sampler="euler", num_steps=3, seed=3, spacing="karras", guidance_scale=2.0, threshold=0.995,
                  options={"churn": 1.0}, jit_compile=False)
    a = model.generate(3, **kwargs)
    assert a.shape == (3, 8, 8, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, model.generate(3, **kwargs))
    assert model.image_sampler("euler", "karras", True, False, 0.995).sampler.threshold == 0.995
    with pytest.raises(ValueError, match="threshold"):
        model.generate(1, sampler="dpmpp_2m", num_steps=5, threshold=1.5)
    with pytest.raises(ValueError, match="`eta` is given twice"):
        model.generate(1, sampler="euler_ancestral", eta=0.5, options={"eta": 1.0})
    with pytest.raises(ValueError, match="at least 5"):
        model.generate(1, sampler="dpmpp_3m", num_steps=3)
