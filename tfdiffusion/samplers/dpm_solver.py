"""DPM-Solver++ (Lu et al. 2022): multistep 2M and 3M and the 2M SDE solver, in log-SNR, data-prediction form."""

from typing import ClassVar

import tensorflow as tf

from tfdiffusion import random as tfd_random
from tfdiffusion.samplers.levels import SOLVER_SPACINGS
from tfdiffusion.samplers.levels import NoiseLevels
from tfdiffusion.samplers.registry import Sampler
from tfdiffusion.samplers.registry import bounded_loop
from tfdiffusion.samplers.registry import register_sampler

__all__ = ["MAX_STEP_RATIO", "DPMSolverPP2M", "DPMSolverPP2MSDE", "DPMSolverPP3M", "step_order"]


# The largest ratio between a step in lambda and the one before it that a multistep update of order > 1
# may span. The second-order update evaluates the line through the last two predictions at the step's
# midpoint (D = m0 + (h / (2 h1)) (m0 - m1), Lu et al. 2022b, Algorithm 2): with h <= 2 h1 that point
# lies at most one history step beyond the predictions the line was drawn through, and the weight on
# their difference stays <= 1. Variable-step multistep codes bound the step-size ratio for the same
# reason; 2 is the usual "at most double the step". Spaced grids at T = 1000 break it only at the step
# onto the first trained timestep of "leading" and "linspace" grids (h / h1 = 2.3-5; every other ratio,
# and every ratio of "trailing" and "karras" grids, is below 1.7), where x_theta, which levels off as
# lambda grows, would be over-extrapolated (tests/test_solvers.py measures it with an exact denoiser).
MAX_STEP_RATIO = 2.0


def _order_reason(order: int) -> str:
    """Why a solver of `order` needs 2 order - 1 steps (the `min_steps` message)."""
    return (f"its order-{order} steps need {order - 1} earlier prediction(s) and its last {order - 1} "
            f"step(s) lower the order, so fewer than {2 * order - 1} steps never take one.")


def _log_snr(alphas_cumprod: tf.Tensor) -> tf.Tensor:
    """lambda = log(alpha / sigma) = (log abar - log(1 - abar)) / 2: -inf at abar = 0, +inf at 1."""
    return 0.5 * (tf.math.log(alphas_cumprod) - tf.math.log1p(-alphas_cumprod))


class _DPMSolverPP(Sampler):
    """The multistep DPM-Solver++ loop; subclasses set `order` and whether the SDE is solved.

    Each step calls the network once at level s (x_s) for the data
    prediction m_0 = x_theta(x_s, s) (clipped or thresholded as configured)
    and moves to the next level t with the exponential integrator in
    lambda = log(alpha / sigma), h = lambda_t - lambda_s:

        x_t = (sigma_t / sigma_s) x_s + sigma_t int_{lambda_s}^{lambda_t} e^lambda x_theta dlambda

    (Lu et al. 2022b, Sec. 4.1), with x_theta extrapolated from the last
    `order` predictions (kept in the loop state). The order of a step is
    min(order, steps taken + 1, steps left), lowered further where a step
    is more than `MAX_STEP_RATIO` times the one before it (`step_order`):
    the first steps lack history, the order drops over the final steps
    ("lower order final", Lu et al. 2022b, Sec. 4.2), and the long step
    onto the first trained timestep of a leading grid is not extrapolated
    over; the last step, onto the data (h infinite), is first order and
    returns its x_0 prediction. Exact also for a zero-terminal-SNR
    schedule (lambda = -inf at the first level). Learned variances are not
    used.
    """

    spacings = SOLVER_SPACINGS
    order: ClassVar[int] = 2
    stochastic: ClassVar[bool] = False

    def _sample(self, model_fn, x_T, num_steps, seed, model_kwargs, eta=0.0):
        levels = NoiseLevels(self.diffusion, num_steps, self.spacing)
        batch = tf.shape(x_T)[0]
        eta = tf.cast(eta, tf.float64)
        minus_inf = tf.constant(-float("inf"), tf.float64)

        def body(j, x, m1, m2, lam1, lam2):
            i = levels.num_steps - 1 - j
            abar_s, abar_t = levels.alphas_cumprod(i), levels.alphas_cumprod(i - 1)
            lam_s, lam_t = _log_snr(abar_s), _log_snr(abar_t)
            out = self.predictions_at(model_fn, x, levels.timestep(i, batch), abar_s, model_kwargs)
            m0 = out["pred_xstart"]
            # Step sizes in lambda: h (this step), h1, h2 (the two before; inf after a level at abar = 0).
            h, h1, h2 = lam_t - lam_s, lam_s - lam1, lam1 - lam2
            order = step_order(self.order, j, i, h, h1, h2)
            coefficients = self._coefficients(order, h, h1, h2, tf.sqrt(abar_t),
                                              tf.sqrt((1.0 - abar_t) / (1.0 - abar_s)), eta)
            a, b0, b1, b2, noise_scale = (tf.cast(c, tf.float32) for c in coefficients)
            x_next = a * x + b0 * m0 + b1 * m1 + b2 * m2
            if self.stochastic:
                x_next += noise_scale * self.batch_noise(x, tfd_random.fold_in(seed, i))
            return x_next, m0, m1, lam_s, lam1

        zeros = tf.zeros_like(x_T)
        x_0, *_ = bounded_loop(num_steps, self.diffusion.num_timesteps, body,
                               (x_T, zeros, zeros, minus_inf, minus_inf))
        return x_0

    def _coefficients(self, order, h, h1, h2, alpha_t, sigma_ratio, eta):
        """float64 scalars (a, b0, b1, b2, noise) with x_t = a x_s + b0 m0 + b1 m1 + b2 m2 + noise z."""
        raise NotImplementedError


def step_order(max_order: int, j: tf.Tensor, i: tf.Tensor, h: tf.Tensor, h1: tf.Tensor,
               h2: tf.Tensor) -> tf.Tensor:
    """int32 scalar: the order of the multistep update from level i (the j-th step taken, 0-based).

    At most `max_order`, `j + 1` (the predictions there are: the first
    step is first order) and `i + 1` (the steps left: "lower order final",
    Lu et al. 2022b, Sec. 4.2; the last step, onto the data, is first
    order). A step of order k > 1 extrapolates x_theta from the k - 1 steps
    before it, and is taken only when no step in that chain is more than
    `MAX_STEP_RATIO` times the one before it: h <= 2 h1 for order 2, and
    also h1 <= 2 h2 for order 3; otherwise the order drops until it is.
    See `MAX_STEP_RATIO` for why.

    Args:
        max_order: the solver's order (2 or 3).
        j: int32 scalar, steps taken before this one.
        i: int32 scalar, this step's level index (the steps left minus 1).
        h, h1, h2: float64 scalars, this step's and the two earlier steps'
            sizes in lambda (inf before the first levels).
    """
    base = tf.minimum(tf.minimum(max_order, j + 1), i + 1)
    second_ok = h <= MAX_STEP_RATIO * h1
    third_ok = second_ok & (h1 <= MAX_STEP_RATIO * h2)
    allowed = tf.where(third_ok, 3, tf.where(second_ok, 2, 1))
    return tf.minimum(base, allowed)


def _select(order, first, second, third=None):
    """Per coefficient: the value of the step's order (unused orders may hold inf or NaN)."""
    third = second if third is None else third
    return tuple(tf.where(order == 1, f, tf.where(order == 2, s, t)) for f, s, t in zip(first, second, third))


class _ODESolver(_DPMSolverPP):
    def _coefficients(self, order, h, h1, h2, alpha_t, sigma_ratio, eta):
        zero = tf.zeros_like(h)
        # Zeroth-order weight alpha_t (1 - e^-h): DPM-Solver++(1) (Lu et al. 2022b, Sec. 4.1; = DDIM).
        phi0 = -alpha_t * tf.math.expm1(-h)
        first = (sigma_ratio, phi0, zero, zero)
        # Algorithm 2 (2M): D = (1 + 1/(2r)) m0 - 1/(2r) m1, r = h1 / h.
        half_inverse_r = h / (2.0 * h1)
        second = (sigma_ratio, phi0 * (1.0 + half_inverse_r), -phi0 * half_inverse_r, zero)
        third = _third_order(h, h1, h2, alpha_t, sigma_ratio, phi0) if self.order >= 3 else None
        return _select(order, first, second, third) + (zero,)


def _third_order(h, h1, h2, alpha_t, sigma_ratio, phi0):
    """3M: the Taylor expansion of x_theta in lambda to second order (Lu et al. 2022b, Sec. 4.1).

    Derivatives at lambda_s from the quadratic through (lambda_s, m0),
    (lambda_s - h1, m1), (lambda_s - h1 - h2, m2) (Newton's divided
    differences f01, f012: x' = f01 + h1 f012, x'' = 2 f012), integrated
    exactly: alpha_t int_0^h e^(u-h) u^n / n! du = alpha_t I_n with
    I_0 = 1 - e^-h, I_1 = h - I_0, I_2 = h^2/2 - I_1. (The multistep third
    order update of Lu et al.'s code and diffusers weights x'' by I_2 / 2,
    which is exact only for linear x_theta; this one is exact for quadratics.)
    """
    i1 = alpha_t * h - phi0
    i2 = alpha_t * tf.square(h) / 2.0 - i1
    # x' I_1 + x'' I_2 = i1 f01 + (i1 h1 + 2 i2) f012; f01 = (m0 - m1) / h1,
    # f012 = ((m0 - m1) / h1 - (m1 - m2) / h2) / (h1 + h2).
    curvature = (i1 * h1 + 2.0 * i2) / (h1 + h2)
    b0 = phi0 + i1 / h1 + curvature / h1
    b1 = -i1 / h1 - curvature * (1.0 / h1 + 1.0 / h2)
    b2 = curvature / h2
    return sigma_ratio, b0, b1, b2


@register_sampler
class DPMSolverPP2M(_ODESolver):
    """DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2): second order, one network call per step.

    Takes `num_steps` network evaluations. Options: none at run time;
    `spacing` may also be "karras" (Karras et al.'s sigmas). See
    `_DPMSolverPP` for the step.

    References:
        Lu et al. 2022b, "DPM-Solver++: Fast Solver for Guided Sampling of
        Diffusion Probabilistic Models", Algorithm 2.
    """

    name = "dpmpp_2m"
    order = 2
    min_steps = 3
    min_steps_reason = _order_reason(2)


@register_sampler
class DPMSolverPP3M(_ODESolver):
    """DPM-Solver++(3M): third-order multistep from the two previous predictions.

    Takes `num_steps` network evaluations; third-order steps need 5 steps
    or more (the first two and the last two steps are of lower order).
    """

    name = "dpmpp_3m"
    order = 3
    min_steps = 5
    min_steps_reason = _order_reason(3)


@register_sampler
class DPMSolverPP2MSDE(_DPMSolverPP):
    """SDE-DPM-Solver++(2M): the reverse SDE in data-prediction form, second-order multistep.

    With `eta` = 1 (the default) it solves the reverse SDE: the exponential
    integrator gives, for constant x_theta,

        x_t = (sigma_t / sigma_s) e^(-eta h) x_s + alpha_t (1 - e^(-(1 + eta) h)) x_theta
              + sigma_t sqrt(1 - e^(-2 eta h)) z,

    whose mean and variance match q(x_t | x_0) for any eta (diffusers'
    "sde-dpmsolver++" at eta = 1; eta = 0 is the ODE, as k-diffusion's `eta`);
    the second-order steps replace x_theta by Algorithm 2's
    (1 + 1/(2r)) m0 - 1/(2r) m1. Fresh noise at each step from the seed and
    the level index. Takes `num_steps` network evaluations.
    """

    name = "dpmpp_2m_sde"
    order = 2
    min_steps = 3
    min_steps_reason = _order_reason(2)
    stochastic = True
    options = {"eta": 1.0}

    def _coefficients(self, order, h, h1, h2, alpha_t, sigma_ratio, eta):
        zero = tf.zeros_like(h)
        eta_h = tf.where(eta > 0.0, eta * h, zero)  # 0 * inf would be NaN at the last step
        a = sigma_ratio * tf.exp(-eta_h)
        phi0 = -alpha_t * tf.math.expm1(-(h + eta_h))
        noise = tf.sqrt(1.0 - alpha_t**2) * tf.sqrt(-tf.math.expm1(-2.0 * eta_h))
        half_inverse_r = h / (2.0 * h1)
        first = (a, phi0, zero, zero)
        second = (a, phi0 * (1.0 + half_inverse_r), -phi0 * half_inverse_r, zero)
        return _select(order, first, second) + (noise,)


