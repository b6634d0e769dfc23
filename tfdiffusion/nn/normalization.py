"""`GroupNorm`: group normalization of feature maps, as DDPM/ADM use it."""

import keras
import tensorflow as tf
from keras import ops

from tfdiffusion.validation import check_int

# DDPM's reference code uses `tf.contrib.layers.group_norm`, whose epsilon is
# 1e-6 (diffusers' port of the DDPM checkpoints keeps `norm_eps=1e-6`).
GROUP_NORM_EPSILON = 1e-6


def check_num_groups(num_groups, channels=None):
    """Raises if `num_groups` is not a positive divisor of `channels`.

    Args:
        num_groups: Number of GroupNormalization groups.
        channels: A channel count that will be normalized with these groups,
            or None to check only that `num_groups` is a positive integer.

    Raises:
        ValueError: If `num_groups` is not a positive integer dividing
            `channels`.
    """
    check_int("num_groups", num_groups)
    if channels is not None and channels % num_groups:
        raise ValueError(
            "`num_groups` must divide every block's channel count. "
            f"Received: num_groups={num_groups}, channels={channels}"
        )


@keras.saving.register_keras_serializable(package="tfdiffusion")
class GroupNorm(keras.layers.Layer):
    """Group normalization over the last (channel) axis.

    The channels are split into `num_groups` contiguous groups; each example
    is normalized with the mean and variance of each group over all
    positions and the group's channels, then scaled and shifted per channel
    (`gamma`, `beta`). Statistics are computed in float32 even under a
    mixed-precision policy, in two passes (mean, then mean squared deviation)
    for accuracy. Same math as `keras.layers.GroupNormalization`, but about
    twice as fast on CPU: it reduces over positions first (a contiguous
    reduction) and applies one fused scale-and-shift.

    Note: with `num_groups` equal to the channel count each channel is
    normalized on its own and loses its mean; small models need fewer groups
    (e.g. 8 groups at 32 channels).

    Args:
        num_groups: Number of groups; must divide the channel count.
        epsilon: Added to the variance.
        **kwargs: Passed to `keras.layers.Layer`.

    Call arguments:
        x: `[B, ..., C]`, e.g. `[B, H, W, C]`.

    Returns:
        Same shape as `x`, in the layer's compute dtype.

    References:
        Wu & He 2018, "Group Normalization", Eq. (1)-(3).
    """

    def __init__(self, num_groups=32, epsilon=GROUP_NORM_EPSILON, **kwargs):
        super().__init__(**kwargs)
        check_num_groups(num_groups)
        self.num_groups = num_groups
        self.epsilon = epsilon

    def build(self, input_shape):
        channels = input_shape[-1]
        check_num_groups(self.num_groups, channels)
        # autocast=False: read in float32 even under mixed precision.
        self.gamma = self.add_weight(
            shape=(channels,), initializer="ones", name="gamma", autocast=False
        )
        self.beta = self.add_weight(
            shape=(channels,), initializer="zeros", name="beta", autocast=False
        )

    def call(self, x):
        shape = ops.shape(x)
        batch, channels = shape[0], shape[-1]
        groups = self.num_groups
        flat = ops.cast(ops.reshape(x, (batch, -1, channels)), "float32")

        def group_mean(values):
            """[B, N, C] -> [B, 1, C]: each channel gets its group's mean."""
            per_channel = ops.mean(values, axis=1)  # [B, C]
            per_group = ops.mean(
                ops.reshape(per_channel, (batch, groups, channels // groups)),
                axis=-1,
                keepdims=True,
            )
            per_group = ops.broadcast_to(
                per_group, (batch, groups, channels // groups)
            )
            return ops.reshape(per_group, (batch, 1, channels))

        mean = group_mean(flat)
        variance = group_mean(tf.math.squared_difference(flat, mean))
        scale = self.gamma * ops.rsqrt(variance + self.epsilon)  # [B, 1, C]
        shift = self.beta - mean * scale
        out = ops.reshape(flat * scale + shift, shape)
        return ops.cast(out, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"num_groups": self.num_groups, "epsilon": self.epsilon})
        return config
