"""Dynamic thresholding of predicted x_0 (Saharia et al. 2022): a per-sample percentile, static shapes for XLA."""

import math
from typing import Any, Optional

import tensorflow as tf

from tfdiffusion import validation

__all__ = ["check_threshold", "dynamic_threshold"]


def check_threshold(threshold: Any) -> Optional[float]:
    """Checks a thresholding percentile: None (off) or a number in (0, 1]; returns it as float."""
    if threshold is None:
        return None
    return validation.check_number("threshold", threshold, 0.0, 1.0, min_inclusive=False)


def dynamic_threshold(x0: tf.Tensor, percentile: float) -> tf.Tensor:
    """Clips each sample's x_0 to [-s, s] and divides by s, s = max(1, quantile_p(|x_0|)).

    The quantile is numpy's default ("linear": between the order statistics
    at p (D - 1)) over the D values of one sample, found with `top_k` on the
    flattened sample (static shapes, so XLA compiles it). Where at most a
    fraction 1 - p of |x_0| exceeds 1, s = 1 and this is clipping to
    [-1, 1]; a larger s pulls saturated pixels inward instead of flattening
    them at +-1.

    Args:
        x0: float32 `[B, ...]` predicted x_0 (static non-batch dimensions).
        percentile: p in (0, 1] (0.995 in Saharia et al.; 1 is the max).

    Returns:
        float32 `[B, ...]` in [-1, 1].

    References:
        Saharia et al. 2022, "Photorealistic Text-to-Image Diffusion Models
        with Deep Language Understanding" (Imagen), Sec. 2.3; recommended for
        pixel-space models by Lu et al. 2022, "DPM-Solver++", Sec. 5.
    """
    percentile = check_threshold(percentile)
    size = x0.shape[1:].num_elements()
    if size is None:
        raise ValueError(f"Dynamic thresholding needs static sample dimensions. Received shape {x0.shape}")
    flat = tf.reshape(tf.abs(x0), [-1, size])
    position = percentile * (size - 1)
    low = int(math.floor(position))
    high = min(low + 1, size - 1)
    # The largest size - low values, descending: order statistic k (ascending) sits at size - 1 - k.
    top = tf.math.top_k(flat, k=size - low, sorted=True).values
    at_low, at_high = top[:, size - 1 - low], top[:, size - 1 - high]
    quantile = at_low + (position - low) * (at_high - at_low)
    s = tf.reshape(tf.maximum(quantile, 1.0), [-1] + [1] * (x0.shape.rank - 1))
    return tf.clip_by_value(x0, -s, s) / s
