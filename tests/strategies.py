"""The one 2-replica `MirroredStrategy` of a test process (on the 2 logical CPUs that conftest.py configures).

Every `MirroredStrategy` numbers its collective all-reduces from the same group and instance keys, and
TensorFlow's collective executor remembers the tensor shape it first saw under a key for the whole
process: a second strategy over the same devices that all-reduces a tensor of another shape under a
key the first one used fails ("Shape mismatch in the collective instance 100 ... expected shape [2]
but another member in the group expected shape [45259]"). Tests that run in one process therefore
share this one strategy, whose keys never repeat.
"""

import functools

import tensorflow as tf

__all__ = ["two_cpu_replicas"]


@functools.lru_cache(maxsize=None)
def two_cpu_replicas() -> tf.distribute.MirroredStrategy:
    """The process's `MirroredStrategy(["/cpu:0", "/cpu:1"])`, made on first use."""
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
