"""Samplers: DDPM ancestral and DDIM graph loops, classifier-free guidance, stateless seeds."""

import numpy as np
import tensorflow as tf

__all__ = [
    "SAMPLERS",
    "seed_pair",
    "fold_in",
    "random_normal",
    "random_uniform",
    "classifier_free_guidance",
    "p_sample_loop",
    "ddim_sample_loop",
]

SAMPLERS = ("ddpm", "ddim")


def seed_pair(seed=None):
    """A `[2]` int64 seed for stateless random ops.

    Args:
        seed: None (fresh entropy), a Python int, a scalar int tensor, or a
            `[2]` int tensor (returned as int64).
    """
    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1, np.uint32)[0])
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        return tf.constant([seed, 0], dtype=tf.int64)
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
    if seed.shape.rank == 0:
        return tf.stack([seed, tf.constant(0, tf.int64)])
    return seed


# One named algorithm: "auto_select" may pick different ones eagerly and under XLA.
_RNG_ALG = "philox"


def fold_in(seed, data):
    """A new `[2]` seed derived from `seed` and an integer `data` (e.g. a step index)."""
    return tf.random.experimental.stateless_fold_in(seed, tf.cast(data, tf.int64), alg=_RNG_ALG)


def random_normal(shape, seed):
    """Standard normal float32 of `shape` from a `[2]` seed; the same eagerly and under XLA."""
    return tf.random.stateless_normal(shape, seed, alg=_RNG_ALG)


def random_uniform(shape, seed):
    """Uniform [0, 1) float32 of `shape` from a `[2]` seed; the same eagerly and under XLA."""
    return tf.random.stateless_uniform(shape, seed, alg=_RNG_ALG)


def classifier_free_guidance(model_fn, guidance_scale, null_label, num_channels):
    """Wraps a class-conditional `model_fn` with classifier-free guidance.

    The guided output is `uncond + s * (cond - uncond)` on the first
    `num_channels` channels (the mean prediction, whatever its type); further
    channels (a learned variance) are taken from the conditional output.
    Both halves run in one batched call.

    Args:
        model_fn: `model_fn(x_t, t, y=labels, **kwargs)`.
        guidance_scale: s; 1 is plain conditional sampling, 0 unconditional.
        null_label: the label meaning "no class" (the model's extra class).
        num_channels: channels of the mean prediction (the image's C).

    Returns:
        A `model_fn` with the same signature.

    References:
        Ho & Salimans 2022, "Classifier-Free Diffusion Guidance", Eq. 6.
    """

    def guided(x_t, t, y, **kwargs):
        y = tf.convert_to_tensor(y, tf.int32)
        both = model_fn(tf.concat([x_t, x_t], 0), tf.concat([t, t], 0),
                        y=tf.concat([y, tf.fill(tf.shape(y), null_label)], 0), **kwargs)
        cond, uncond = tf.split(both, 2, axis=0)
        mean_cond, extra = cond[..., :num_channels], cond[..., num_channels:]
        guided_mean = uncond[..., :num_channels] + guidance_scale * (mean_cond - uncond[..., :num_channels])
        return tf.concat([guided_mean, extra], axis=-1)

    return guided


def _denoising_loop(diffusion, step_fn, shape, noise, seed):
    """Runs `x <- step_fn(x, t, step_seed)` for t = T-1 .. 0 in a `tf.while_loop`."""
    base_seed = seed_pair(seed)
    if noise is None:
        noise = random_normal(shape, fold_in(base_seed, -1))
    x_T = tf.convert_to_tensor(noise, tf.float32)
    if not tf.TensorShape(x_T.shape).is_compatible_with(tf.TensorShape(shape)):
        raise ValueError(f"`noise` must have the sample shape {list(shape)}. Received {x_T.shape}")
    num_steps = diffusion.num_timesteps
    batch = tf.shape(x_T)[0]

    def body(i, x):
        t = tf.fill([batch], num_steps - 1 - i)
        return [i + 1, step_fn(x, t, fold_in(base_seed, i))]

    # A fixed trip count: XLA compiles it, and a SavedModel serves it.
    _, x_0 = tf.while_loop(lambda i, x: i < num_steps, body, [tf.constant(0), x_T])
    return x_0


def p_sample_loop(diffusion, model_fn, shape, noise=None, seed=None, clip_denoised=True,
                  model_kwargs=None):
    """DDPM ancestral sampling: x_{t-1} = mean + sigma_t z (Ho et al. 2020, Algorithm 2).

    See `GaussianDiffusion.p_sample_loop`.
    """

    def step(x, t, step_seed):
        out = diffusion.p_mean_variance(model_fn, x, t, clip_denoised, model_kwargs)
        z = random_normal(tf.shape(x), step_seed)
        nonzero = tf.reshape(tf.cast(t > 0, tf.float32), [-1] + [1] * (x.shape.rank - 1))
        return out["mean"] + nonzero * tf.exp(0.5 * out["log_variance"]) * z

    return _denoising_loop(diffusion, step, shape, noise, seed)


def ddim_sample_loop(diffusion, model_fn, shape, eta=0.0, noise=None, seed=None,
                     clip_denoised=True, model_kwargs=None):
    """DDIM over all steps of `diffusion` (already respaced to the wanted steps).

    See `GaussianDiffusion.ddim_sample_loop`.
    """

    def step(x, t, step_seed):
        out = diffusion.p_mean_variance(model_fn, x, t, clip_denoised, model_kwargs)
        # epsilon re-derived from the (clipped) x_0, as improved-diffusion does.
        eps = diffusion._predict_eps_from_xstart(x, t, out["pred_xstart"])
        abar = diffusion._extract("abar", t, x)
        abar_prev = diffusion._extract("abar_prev", t, x)
        # Song et al. 2021, Eq. 16: sigma_t(eta).
        sigma = eta * tf.sqrt((1.0 - abar_prev) / (1.0 - abar) * (1.0 - abar / abar_prev))
        # Eq. 12: x_{t-1} = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma z.
        x_prev = (tf.sqrt(abar_prev) * out["pred_xstart"]
                  + tf.sqrt(tf.maximum(1.0 - abar_prev - tf.square(sigma), 0.0)) * eps)
        if eta:
            nonzero = tf.reshape(tf.cast(t > 0, tf.float32), [-1] + [1] * (x.shape.rank - 1))
            x_prev += nonzero * sigma * random_normal(tf.shape(x), step_seed)
        return x_prev

    return _denoising_loop(diffusion, step, shape, noise, seed)
