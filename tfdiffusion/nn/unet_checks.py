"""Argument checks of the `UNet`: integers, shapes, class labels and its levels' channels and resolutions."""

import numpy as np
import tensorflow as tf
from keras import ops

from tfdiffusion import validation
from tfdiffusion.nn.normalization import check_num_groups

__all__ = ["check_labels", "check_levels", "check_positive_int", "format_shape", "int_tuple"]


def check_positive_int(name, value, minimum=1):
    """`validation.check_int`: an integer (not a bool or float) >= `minimum`."""
    return validation.check_int(name, value, minimum)


def int_tuple(name, values):
    """`values` as a tuple of positive ints (`validation.check_int_tuple`)."""
    return validation.check_int_tuple(name, values)


def format_shape(shape):
    """`(None, 32, 32, 3)` -> "[B, 32, 32, 3]" for error messages."""
    dims = ["B" if i == 0 else str(d) for i, d in enumerate(shape)]
    return "[" + ", ".join(dims) + "]"


def check_labels(y, num_classes):
    """Checks labels `y` against a UNet's `num_classes` (None: unconditional); returns them as a tensor.

    `num_classes` itself is the null label.
    """
    if num_classes is None:
        if y is not None:
            raise ValueError(
                "This UNet is unconditional (num_classes=None) but labels "
                "`y` were given. Build it with `num_classes` to condition "
                "on classes."
            )
        return None
    if y is None:
        raise ValueError(
            f"This UNet is class-conditional (num_classes="
            f"{num_classes}) and needs labels `y`: int32 [B] in "
            f"[0, {num_classes}], where {num_classes} is the "
            "null label. Received: y=None"
        )
    y = ops.convert_to_tensor(y)
    if "int" not in str(y.dtype):
        raise TypeError(
            f"`y` must be an integer tensor. Received dtype {y.dtype}"
        )
    if y.shape.rank not in (1, None):
        raise ValueError(
            "`y` must be a vector of labels, shape [B]. "
            f"Received shape {tuple(y.shape)}"
        )
    if tf.executing_eagerly():
        values = np.asarray(y)
        bad = values[(values < 0) | (values > num_classes)]
        if bad.size:
            raise ValueError(
                f"Labels `y` must be in [0, {num_classes}] "
                f"({num_classes} is the null label). "
                f"Received out-of-range labels {sorted(set(bad.tolist()))}"
            )
    else:
        message = (
            f"Labels `y` must be in [0, {num_classes}] "
            f"({num_classes} is the null label)."
        )
        tf.debugging.assert_non_negative(y, message=message)
        tf.debugging.assert_less_equal(
            y, tf.cast(num_classes, y.dtype), message=message
        )
    return y


def check_levels(image_size, base_channels, channel_mult, attention_resolutions, num_groups, num_heads,
                 num_head_channels, middle_attention):
    """Each level's resolution and channels, checked against the image size, groups and heads.

    Args:
        image_size, base_channels, channel_mult, attention_resolutions,
        num_groups, num_heads, num_head_channels, middle_attention: the
            `UNet`'s arguments, each already checked on its own
            (`channel_mult` and `attention_resolutions` tuples of ints).

    Returns:
        `(resolutions, level_channels)`: the tuple of each level's resolution
        (`image_size // 2**i`) and the list of its channel count
        (`base_channels * channel_mult[i]`).

    Raises:
        ValueError: `image_size` is not divisible by `2 ** (len(channel_mult)
            - 1)`, an attention resolution is not one the UNet reaches,
            `num_groups` does not divide a channel count, or the heads
            (`num_head_channels`, else `num_heads`) do not divide an
            attention block's channels.
    """
    factor = 2 ** (len(channel_mult) - 1)
    if image_size % factor:
        raise ValueError(
            f"`image_size` must be divisible by {factor} "
            f"(2 ** (len(channel_mult) - 1)) to downsample "
            f"{len(channel_mult) - 1} times. Received: "
            f"image_size={image_size}, channel_mult={channel_mult}"
        )
    resolutions = tuple(
        image_size // 2**i for i in range(len(channel_mult))
    )
    unreached = [r for r in attention_resolutions if r not in resolutions]
    if unreached:
        raise ValueError(
            "`attention_resolutions` must be resolutions the UNet "
            f"reaches: {resolutions}. Received: "
            f"attention_resolutions={attention_resolutions}"
        )
    level_channels = [base_channels * m for m in channel_mult]
    for channels in [base_channels] + level_channels:
        check_num_groups(num_groups, channels)
    attention_channels = [
        c for r, c in zip(resolutions, level_channels)
        if r in attention_resolutions
    ] + ([level_channels[-1]] if middle_attention else [])
    for channels in attention_channels:
        if num_head_channels is not None and channels % num_head_channels:
            raise ValueError(
                "`num_head_channels` must divide the channel count of "
                "every attention block. Received: num_head_channels="
                f"{num_head_channels}, channels={channels}"
            )
        if num_head_channels is None and channels % num_heads:
            raise ValueError(
                "`num_heads` must divide the channel count of every "
                f"attention block. Received: num_heads={num_heads}, "
                f"channels={channels}"
            )
    return resolutions, level_channels
