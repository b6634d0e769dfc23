"""Stateless random numbers: seed pairs, fold-in, normal and uniform draws (every module that draws uses these).

Stateless ops with one named algorithm (Philox) give the same numbers for the
same seed eagerly, in a `tf.function` and under XLA on the same device kind
(XLA ignores the seeds of stateful random ops, so these are the only ones
used). A seed is a `[2]` int64 tensor; derived seeds come from `fold_in`.
"""

from typing import Any, Callable, Optional, Tuple

import numpy as np
import tensorflow as tf

from tfdiffusion import validation

__all__ = ["batch_normal", "batch_offset", "check_seed", "fold_in", "random_normal", "random_uniform",
           "replica_rows", "seed_pair"]

# One named algorithm: "auto_select" may pick different ones eagerly and under XLA.
_RNG_ALG = "philox"


def check_seed(seed: Any, name: str = "seed") -> Optional[int]:
    """Checks a user's seed: None or an integer in [-2**63, 2**63 - 1]; see `validation.check_seed`.

    Returns:
        The seed as a Python int, or None.
    """
    return validation.check_seed(name, seed)


def seed_pair(seed: Any = None) -> tf.Tensor:
    """A `[2]` int64 seed for stateless random ops.

    Args:
        seed: None (fresh entropy), a Python/numpy integer in
            [-2**63, 2**63 - 1], a scalar integer tensor, or a `[2]` integer
            tensor (returned as int64). Floats and bools are refused rather
            than truncated.

    Raises:
        TypeError: a float, bool or non-integer tensor.
        ValueError: an integer beyond int64.
    """
    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1, np.uint32)[0])
    if validation.is_int(seed):
        return tf.constant([check_seed(seed), 0], dtype=tf.int64)
    if isinstance(seed, (bool, float, str, np.floating, np.bool_)):
        check_seed(seed)  # raises with the message
    if isinstance(seed, (list, tuple)):  # a [2] seed written as Python integers
        seed = tf.constant([check_seed(part) for part in seed], tf.int64)
    elif isinstance(seed, np.ndarray) and seed.size and np.issubdtype(seed.dtype, np.unsignedinteger):
        check_seed(int(seed.max()))  # a uint64 beyond int64 would wrap round in the cast
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


def batch_offset(local_batch: Any, even: bool = True) -> Tuple[tf.Tensor, tf.Tensor]:
    """This replica's first row in the global batch, and the global batch size.

    Outside a multi-replica context: (0, local_batch). Inside one, the
    replicas hold consecutive slices of the global batch in replica order (as
    `tf.distribute` splits it). With `even` all slices have `local_batch`
    rows (training, `drop_remainder`); otherwise the sizes are gathered from
    all replicas (a last, uneven evaluation batch), which needs a
    cross-replica collective and so cannot run inside a per-replica XLA
    computation.

    Returns:
        `(offset, global_batch)`, int32 scalars.
    """
    local_batch = tf.cast(local_batch, tf.int32)
    replica = tf.distribute.get_replica_context()
    if replica is None or replica.num_replicas_in_sync == 1:
        return tf.constant(0, tf.int32), local_batch
    replica_id = tf.cast(replica.replica_id_in_sync_group, tf.int32)
    if even:
        return replica_id * local_batch, local_batch * replica.num_replicas_in_sync
    sizes = replica.all_gather(local_batch[None], axis=0)
    return tf.reduce_sum(sizes[:replica_id]), tf.reduce_sum(sizes)


def replica_rows(draw: Callable[[tf.Tensor], tf.Tensor], local_batch: Any,
                 offset: Optional[Tuple[tf.Tensor, tf.Tensor]] = None) -> tf.Tensor:
    """`draw(global_batch)` sliced to this replica's rows.

    Every replica draws for the whole global batch from the same seed and
    keeps its own rows, so example k of the global batch gets the same
    random numbers on one device as on N replicas (stateless draws of a
    larger batch begin with those of a smaller one).

    Args:
        draw: `draw(n)` -> a tensor whose first dimension is n.
        local_batch: this replica's batch size.
        offset: `(offset, global_batch)` from `batch_offset`; default: an even split.
    """
    start, total = batch_offset(local_batch) if offset is None else offset
    replica = tf.distribute.get_replica_context()
    if offset is None and (replica is None or replica.num_replicas_in_sync == 1):
        return draw(local_batch)
    return draw(total)[start:start + tf.cast(local_batch, tf.int32)]


def batch_normal(shape: Any, seed: tf.Tensor, offset: Optional[Tuple[tf.Tensor, tf.Tensor]] = None) -> tf.Tensor:
    """Standard normal `[B, ...]` whose row k depends only on the seed and k's index in the global batch."""
    shape = tf.convert_to_tensor(shape, tf.int32)
    return replica_rows(lambda n: random_normal(tf.concat([[n], shape[1:]], 0), seed), shape[0], offset)
