"""Argument checks of the `UNet`: integers, shapes and class labels."""

import numpy as np
import tensorflow as tf
from keras import ops

from tfdiffusion import validation

__all__ = ["check_labels", "check_positive_int", "format_shape", "int_tuple"]


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
