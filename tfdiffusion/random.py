"""Stateless random numbers: seed pairs, fold-in, normal and uniform draws (every module that draws uses these).

Stateless ops with one named algorithm (Philox) give the same numbers for the
same seed eagerly, in a `tf.function` and under XLA on the same device kind
(XLA ignores the seeds of stateful random ops, so these are the only ones
used). A seed is a `[2]` int64 tensor; derived seeds come from `fold_in`.
"""

from typing import Any, Optional

import numpy as np
import tensorflow as tf

from tfdiffusion import validation

__all__ = ["check_seed", "fold_in", "random_normal", "random_uniform", "seed_pair"]

# One named algorithm: "auto_select" may pick different ones eagerly and under XLA.
_RNG_ALG = "philox"


def check_seed(seed: Any, name: str = "seed") -> Optional[int]:
    """Checks a user's seed: None or an integer (not a bool, float or string).

    Returns:
        The seed as a Python int, or None.
    """
    return validation.check_optional_int(name, seed, minimum=None)


def seed_pair(seed: Any = None) -> tf.Tensor:
    """A `[2]` int64 seed for stateless random ops.

    Args:
        seed: None (fresh entropy), a Python/numpy integer, a scalar integer
            tensor, or a `[2]` integer tensor (returned as int64). Floats and
            bools are refused rather than truncated.

    Raises:
        TypeError: a float, bool or non-integer tensor.
    """
    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1, np.uint32)[0])
    if validation.is_int(seed):
        return tf.constant([int(seed), 0], dtype=tf.int64)
    if isinstance(seed, (bool, float, str, np.floating, np.bool_)):
        check_seed(seed)  # raises with the message
    seed = tf.convert_to_tensor(seed)
    if not seed.dtype.is_integer:
        raise TypeError(f"`seed` must be an integer or an integer tensor. Received dtype {seed.dtype.name}")
    seed = tf.cast(seed, tf.int64)
    if seed.shape.rank == 0:
        return tf.stack([seed, tf.constant(0, tf.int64)])
    if seed.shape.rank != 1 or seed.shape[0] not in (None, 2):
        raise ValueError(f"`seed` must be a scalar or a [2] tensor. Received shape {seed.shape}")
    return seed


def fold_in(seed: tf.Tensor, data: Any) -> tf.Tensor:
    """A new `[2]` seed derived from `seed` and an integer `data` (e.g. a step index)."""
    return tf.random.experimental.stateless_fold_in(seed, tf.cast(data, tf.int64), alg=_RNG_ALG)


def random_normal(shape: Any, seed: tf.Tensor, dtype: tf.DType = tf.float32) -> tf.Tensor:
    """Standard normal values of `shape` from a `[2]` seed; the same eagerly and in graphs."""
    return tf.random.stateless_normal(shape, seed, dtype=dtype, alg=_RNG_ALG)


def random_uniform(shape: Any, seed: tf.Tensor, dtype: tf.DType = tf.float32) -> tf.Tensor:
    """Uniform [0, 1) values of `shape` from a `[2]` seed; the same eagerly and in graphs."""
    return tf.random.stateless_uniform(shape, seed, dtype=dtype, alg=_RNG_ALG)
