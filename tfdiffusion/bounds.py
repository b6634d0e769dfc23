"""Variational-bound terms on `tfp.distributions`: Gaussian KL, discretized decoder, prior, bits/dim."""

import math
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
import tensorflow as tf

from tfdiffusion import random as tfd_random
from tfdiffusion import validation

__all__ = [
    "BIN_HALF_WIDTH",
    "normal_kl",
    "discretized_gaussian_log_likelihood",
    "mean_over_pixels",
    "nats_to_bits",
    "assert_on_8bit_grid",
    "bpd_timesteps",
    "calc_bpd_loop",
]

# Data in [-1, 1] on the 8-bit grid x = k / 127.5 - 1: bins of width 2 / 255.
BIN_HALF_WIDTH = 1.0 / 255.0
_LOG2 = math.log(2.0)


def _tfp():
    """TensorFlow Probability, imported on first use: with the tf-keras it loads, ~1 s that a process
    which only samples, exports or serves never pays."""
    import tensorflow_probability as tfp

    return tfp


def _normal(mean, log_variance):
    return _tfp().distributions.Normal(loc=mean, scale=tf.exp(0.5 * log_variance))


def normal_kl(mean1, log_variance1, mean2, log_variance2):
    """KL(N(mean1, var1) || N(mean2, var2)) elementwise, in nats.

    Args:
        mean1, log_variance1, mean2, log_variance2: broadcastable float tensors.

    Returns:
        The elementwise KL divergence in nats, broadcast shape.
    """
    return _tfp().distributions.kl_divergence(_normal(mean1, log_variance1), _normal(mean2, log_variance2))


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
    tfp = _tfp()
    standard = tfp.distributions.Normal(loc=0.0, scale=1.0)
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
        A list of assert ops (empty in eager mode, where the check runs at once).

    Raises:
        ValueError: in eager mode, for data off the grid or outside [-1, 1].
    """
    x = tf.convert_to_tensor(x)
    scaled = (tf.cast(x, tf.float32) + 1.0) * 127.5
    off_grid = tf.reduce_max(tf.abs(scaled - tf.round(scaled)))
    in_range = f"`{name}` must lie in [-1, 1] for the discretized decoder"
    on_grid = (f"`{name}` must lie on the 8-bit grid k / 127.5 - 1 (k = 0..255) for the "
               "discretized decoder; quantize continuous data first")
    if tf.executing_eagerly():
        if float(tf.reduce_max(tf.abs(x))) > 1.0:
            raise ValueError(f"{in_range}. Received max |{name}| = {float(tf.reduce_max(tf.abs(x))):g}")
        if float(off_grid) >= 1e-2:
            raise ValueError(f"{on_grid}. Received values up to {float(off_grid):g} grid steps off")
        return []
    return [
        tf.debugging.assert_less_equal(tf.reduce_max(tf.abs(x)), tf.cast(1.0, x.dtype), message=in_range),
        tf.debugging.assert_less(off_grid, 1e-2, message=on_grid),
    ]


def bpd_timesteps(num_timesteps: int, num_eval_steps: Optional[int] = None,
                  seed: Any = None) -> Tuple[tf.Tensor, tf.Tensor]:
    """Timesteps and weights for estimating the bound from a subset of its T terms.

    With `num_eval_steps=None` (or T): every step, weight 1: the exact sum.
    With K < T: t = 0 (the decoder) with weight 1, and one random
    timestep from each of K - 1 equal strata of [1, T), weighted by its
    stratum's size: a stratified importance-weighted estimate of the sum
    of the T - 1 KL terms, unbiased over the random choice (its spread
    shrinks as K grows; the exact loop has none).

    Returns:
        `(timesteps int32 [K], weights float32 [K])`.
    """
    T = num_timesteps
    if num_eval_steps is None or (validation.is_int(num_eval_steps) and num_eval_steps == T):
        return tf.range(T, dtype=tf.int32), tf.ones([T], tf.float32)
    if not validation.is_int(num_eval_steps) or not 2 <= num_eval_steps <= T:
        raise ValueError(f"`num_eval_steps` must be None or an integer in [2, {T}]. "
                         f"Received: num_eval_steps={num_eval_steps!r}")
    edges = np.linspace(1, T, num_eval_steps).round().astype(np.int64)
    low, high = edges[:-1], edges[1:]
    u = tfd_random.random_uniform([num_eval_steps - 1], tfd_random.seed_pair(seed))
    picks = tf.constant(low, tf.float32) + tf.floor(u * tf.constant(high - low, tf.float32))
    timesteps = tf.concat([[0], tf.cast(picks, tf.int32)], axis=0)
    weights = tf.constant(np.append(1.0, high - low), tf.float32)
    return timesteps, weights


def calc_bpd_loop(diffusion, model_fn: Callable, x_start: Any, clip_denoised: bool = True,
                  model_kwargs: Optional[dict] = None, seed: Any = None,
                  num_eval_steps: Optional[int] = None,
                  batch_offset: Optional[Tuple[Any, Any]] = None) -> Dict[str, tf.Tensor]:
    """The variational bound on -log p(x_0) in bits/dim, term by term.

    A graph loop (`tf.while_loop` with a fixed trip count, XLA-compatible)
    over the evaluated timesteps, each with fresh noise drawn from `seed`;
    the improved-diffusion name `GaussianDiffusion.calc_bpd_loop` calls it.

    Args:
        diffusion: the `GaussianDiffusion`.
        model_fn: `model_fn(x_t, t, **model_kwargs)`.
        x_start: float32 `[B, ...]` on the 8-bit grid in [-1, 1].
        clip_denoised: clip predicted x_0 to [-1, 1] for the model's mean.
        model_kwargs: extra keyword arguments for `model_fn`.
        seed: int or `[2]` int tensor: noise (and chosen steps).
        num_eval_steps: None for all T terms; K for a stratified
            estimate from K terms (see `bpd_timesteps`).
        batch_offset: `(first row, global batch)` of `x_start` in a batch
            split across replicas; None: found from the replica context
            (`random.batch_offset`). Pass it where that context is not
            visible (inside a per-replica compiled function).

    Returns:
        dict with `total_bpd` `[B]` (prior + weighted sum of terms),
        `prior_bpd` `[B]`, and `[B, K]` per-step `vb` (bits/dim),
        `xstart_mse` and `mse` (of the implied epsilon), plus the
        evaluated `timesteps` `[K]` and their `weights` `[K]`.

    References:
        Ho et al. 2020, Eq. 5; Nichol & Dhariwal 2021, Sec. 2 (L_vlb).
    """
    x_start = validation.check_images(x_start, "x_start", diffusion.validate_args)
    with tf.control_dependencies(assert_on_8bit_grid(x_start)):
        x_start = tf.identity(x_start)
    base_seed = tfd_random.seed_pair(seed)
    timesteps, weights = bpd_timesteps(diffusion.num_timesteps, num_eval_steps,
                                       seed=tfd_random.fold_in(base_seed, -1))
    num_steps = int(timesteps.shape[0])
    batch = tf.shape(x_start)[0]
    # Example k's noise depends on the seed and k's index in the global batch (also across replicas).
    offset = batch_offset if batch_offset is not None else tfd_random.batch_offset(batch, even=False)

    def body(i, vb_acc, xstart_acc, mse_acc):
        t = tf.fill([batch], timesteps[i])
        noise = tfd_random.batch_normal(tf.shape(x_start), tfd_random.fold_in(base_seed, i), offset)
        x_t = diffusion.q_sample(x_start, t, noise=noise)
        prediction = diffusion.p_mean_variance(model_fn, x_t, t, clip_denoised, model_kwargs)
        eps = diffusion.predict_eps_from_xstart(x_t, t, prediction["pred_xstart"])
        return [i + 1,
                vb_acc.write(i, diffusion.vb_terms_bpd(x_start, x_t, t, prediction)),
                xstart_acc.write(i, mean_over_pixels(tf.square(prediction["pred_xstart"] - x_start))),
                mse_acc.write(i, mean_over_pixels(tf.square(eps - noise)))]

    arrays = [tf.TensorArray(tf.float32, size=num_steps, element_shape=[None]) for _ in range(3)]
    _, *arrays = tf.while_loop(lambda i, *_: i < num_steps, body, [tf.constant(0)] + arrays)
    vb, xstart_mse, mse = (tf.transpose(a.stack()) for a in arrays)
    prior = diffusion.prior_bpd(x_start)
    return dict(total_bpd=tf.reduce_sum(vb * weights, axis=1) + prior, prior_bpd=prior,
                vb=vb, xstart_mse=xstart_mse, mse=mse, timesteps=timesteps, weights=weights)
