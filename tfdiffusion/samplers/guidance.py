"""Classifier-free guidance: one batched call gives the conditional and unconditional predictions."""

from typing import Any, Callable

import tensorflow as tf

from tfdiffusion import validation

__all__ = ["classifier_free_guidance"]


def classifier_free_guidance(model_fn: Callable, guidance_scale: Any, null_label: int,
                             num_channels: int) -> Callable:
    """Wraps a class-conditional `model_fn` with classifier-free guidance.

    The guided output is `uncond + s * (cond - uncond)` on the first
    `num_channels` channels (the mean prediction, whatever its type); further
    channels (a learned variance) are taken from the conditional output.
    Both halves run in one batched call. With a tensor `s`, a scale of
    exactly 1 runs the conditional half alone (`tf.cond`), so a SavedModel
    serves guided and unguided requests from one graph.

    Args:
        model_fn: `model_fn(x_t, t, y=labels, **kwargs)`.
        guidance_scale: s, a Python number or a float32 scalar tensor;
            1 is plain conditional sampling, 0 unconditional.
        null_label: the label meaning "no class" (the model's extra class).
        num_channels: channels of the mean prediction (the image's C).

    Returns:
        A `model_fn` with the same signature.

    References:
        Ho & Salimans 2022, "Classifier-Free Diffusion Guidance", Eq. 6.
    """
    if null_label is None:
        raise ValueError("Classifier-free guidance needs the network's null label (`null_label`, the "
                         "label meaning 'no class'); this network has none.")
    validation.check_callable("model_fn", model_fn, None, None, y=None, call="model_fn(x_t, t, y=labels)")
    if not tf.is_tensor(guidance_scale):
        guidance_scale = validation.check_number("guidance_scale", guidance_scale)
    validation.check_int("null_label", null_label, 0)
    validation.check_int("num_channels", num_channels)

    def guided(x_t, t, y, **kwargs):
        y = tf.convert_to_tensor(y, tf.int32)
        both = model_fn(tf.concat([x_t, x_t], 0), tf.concat([t, t], 0),
                        y=tf.concat([y, tf.fill(tf.shape(y), null_label)], 0), **kwargs)
        cond, uncond = tf.split(both, 2, axis=0)
        scale = tf.cast(guidance_scale, cond.dtype)
        mean_cond, extra = cond[..., :num_channels], cond[..., num_channels:]
        guided_mean = uncond[..., :num_channels] + scale * (mean_cond - uncond[..., :num_channels])
        return tf.concat([guided_mean, extra], axis=-1)

    if not tf.is_tensor(guidance_scale):
        return guided

    def maybe_guided(x_t, t, y, **kwargs):
        return tf.cond(tf.equal(guidance_scale, 1.0), lambda: model_fn(x_t, t, y=y, **kwargs),
                       lambda: guided(x_t, t, y, **kwargs))

    return maybe_guided
