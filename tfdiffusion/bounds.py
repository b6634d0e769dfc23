"""Variational-bound terms on `tfp.distributions`: Gaussian KL, discretized decoder, prior, bits/dim."""

import math

import tensorflow as tf
import tensorflow_probability as tfp

tfd = tfp.distributions

__all__ = [
    "BIN_HALF_WIDTH",
    "normal_kl",
    "discretized_gaussian_log_likelihood",
    "mean_over_pixels",
    "nats_to_bits",
    "assert_on_8bit_grid",
]

# Data in [-1, 1] on the 8-bit grid x = k / 127.5 - 1: bins of width 2 / 255.
BIN_HALF_WIDTH = 1.0 / 255.0
_LOG2 = math.log(2.0)


def _normal(mean, log_variance):
    return tfd.Normal(loc=mean, scale=tf.exp(0.5 * log_variance))



def normal_kl(mean1, log_variance1, mean2, log_variance2):
    """KL(N(mean1, var1) || N(mean2, var2)) elementwise, in nats.

    Args:
        mean1, log_variance1, mean2, log_variance2: broadcastable float tensors.

    Returns:
        The elementwise KL divergence in nats, broadcast shape.
    """
    return tfd.kl_divergence(_normal(mean1, log_variance1), _normal(mean2, log_variance2))


def discretized_gaussian_log_likelihood(x, mean, log_scale):
    """Log-likelihood of 8-bit data under a Gaussian discretized into 256 bins.

    Each value x = k / 127.5 - 1 owns the bin [x - 1/255, x + 1/255]; the edge
    bins are open-ended: x = -1 owns (-inf, -1 + 1/255] and x = 1 owns
    [1 - 1/255, inf). Probabilities are differences of the standard
    `tfd.Normal` log-CDF in log space; a bin above the mean is reflected below
    it (P(a < X < b) = P(2m - b < X < 2m - a)), where the CDF is accurate, so
    tiny scales and far tails give finite values and finite gradients
    rather than log(0) or NaN.

    Args:
        x: float tensor `[...]` in [-1, 1] on the 8-bit grid.
        mean: float tensor broadcastable to `x`, the Gaussian's mean.
        log_scale: float tensor broadcastable to `x`, log standard deviation.

    Returns:
        Elementwise log-probabilities in nats, shape of `x`.

    References:
        Ho et al. 2020, Eq. 13.
    """
    standard = tfd.Normal(loc=0.0, scale=1.0)
    inv_scale = tf.exp(-log_scale)
    z_upper = (x + BIN_HALF_WIDTH - mean) * inv_scale
    z_lower = (x - BIN_HALF_WIDTH - mean) * inv_scale
    reflect = tf.where(x > mean, -1.0, 1.0)
    hi = tf.maximum(reflect * z_upper, reflect * z_lower)
    lo = tf.minimum(reflect * z_upper, reflect * z_lower)
    middle = tfp.math.log_sub_exp(standard.log_cdf(hi), standard.log_cdf(lo))
    left_edge = standard.log_cdf(z_upper)  # log P(X <= -1 + 1/255)
    right_edge = standard.log_cdf(-z_lower)  # log P(X >= 1 - 1/255)
    edge = BIN_HALF_WIDTH / 2.0
    return tf.where(x < -1.0 + edge, left_edge, tf.where(x > 1.0 - edge, right_edge, middle))


def mean_over_pixels(values):
    """Mean over all but the batch dimension: `[B, ...]` -> `[B]`."""
    rank = values.shape.rank
    return tf.reduce_mean(values, axis=list(range(1, rank)))


def nats_to_bits(values):
    """Converts nats to bits."""
    return values / _LOG2


def assert_on_8bit_grid(x, name="x_start"):
    """Checks (in-graph) that `x` lies in [-1, 1] on the 8-bit grid k / 127.5 - 1.

    The discretized decoder assigns probability to bins of the 8-bit grid, so
    a bound in bits/dim is only meaningful for such data; continuous data must
    be quantized (round((x + 1) * 127.5) / 127.5 - 1) first.

    Returns:
        A list of assert ops (empty in eager mode, where they run at once).
    """
    x = tf.convert_to_tensor(x)
    scaled = (tf.cast(x, tf.float32) + 1.0) * 127.5
    off_grid = tf.reduce_max(tf.abs(scaled - tf.round(scaled)))
    return [
        tf.debugging.assert_less_equal(
            tf.reduce_max(tf.abs(x)), tf.cast(1.0, x.dtype),
            message=f"`{name}` must lie in [-1, 1] for the discretized decoder",
        ),
        tf.debugging.assert_less(
            off_grid, 1e-2,
            message=(f"`{name}` must lie on the 8-bit grid k / 127.5 - 1 (k = 0..255) for the "
                     "discretized decoder; quantize continuous data first"),
        ),
    ]
