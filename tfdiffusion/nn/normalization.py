"""Group normalization as the DDPM/ADM UNet uses it, with its divisibility check."""

import keras

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
    if not isinstance(num_groups, int) or num_groups < 1:
        raise ValueError(
            "`num_groups` must be a positive integer. "
            f"Received: num_groups={num_groups!r}"
        )
    if channels is not None and channels % num_groups:
        raise ValueError(
            "`num_groups` must divide every block's channel count. "
            f"Received: num_groups={num_groups}, channels={channels}"
        )


def group_norm(num_groups, dtype, name):
    """Returns a `keras.layers.GroupNormalization` over the channel axis.

    Keras computes the group statistics in float32 even under a
    mixed-precision policy.

    Note: with `num_groups` equal to the channel count each channel is
    normalized on its own and loses its mean; small models need fewer groups
    (e.g. 8 groups at 32 channels).

    Args:
        num_groups: Number of groups; must divide the input's channel count.
        dtype: Dtype policy of the layer.
        name: Layer name.

    Returns:
        An unbuilt GroupNormalization layer, input and output `[B, H, W, C]`.
    """
    return keras.layers.GroupNormalization(
        groups=num_groups, epsilon=GROUP_NORM_EPSILON, dtype=dtype, name=name
    )
