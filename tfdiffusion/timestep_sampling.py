"""Samplers of training timesteps: uniform, and Improved DDPM's loss-second-moment importance sampling."""

import keras
import tensorflow as tf

from tfdiffusion import random as tfd_random
from tfdiffusion import validation

__all__ = ["TIMESTEP_SAMPLERS", "UniformTimesteps", "LossSecondMomentTimesteps", "create"]

TIMESTEP_SAMPLERS = ("uniform", "loss-second-moment")


class UniformTimesteps(keras.layers.Layer):
    """t ~ Uniform{0, ..., T-1}, every example weighted 1."""

    kind = "uniform"

    def __init__(self, num_timesteps, **kwargs):
        super().__init__(**kwargs)
        self.num_timesteps = validation.check_int("num_timesteps", num_timesteps)
        self.built = True  # its state (if any) is created in __init__

    def probabilities(self):
        """float32 `[T]` probabilities of each timestep."""
        return tf.fill([self.num_timesteps], 1.0 / self.num_timesteps)

    def sample(self, batch_size, seed):
        """Draws timesteps for a batch.

        Args:
            batch_size: int scalar B.
            seed: `[2]` int seed.

        Returns:
            `(t int32 [B], weights float32 [B])` with weights 1 / (T p(t)), so
            that the weighted mean of per-step losses is an unbiased estimate
            of their uniform average.
        """
        # Inverse-CDF sampling (XLA has no stateless multinomial with int64 seeds).
        cdf = tf.math.cumsum(self.probabilities())
        u = tfd_random.random_uniform([batch_size], seed) * cdf[-1]
        t = tf.minimum(tf.searchsorted(cdf, u, side="right", out_type=tf.int32), self.num_timesteps - 1)
        return t, self.importance_weights(t)

    def importance_weights(self, t):
        """float32 `[B]` importance weights 1 / (T p(t)) of timesteps `t` `[B]`."""
        return 1.0 / (self.num_timesteps * tf.gather(self.probabilities(), t))

    def update(self, t, losses, recorded=None):
        """Records per-example losses `[B]` at timesteps `t` `[B]` (no-op here).

        `recorded`: optional bool `[B]`, False for examples not to record
        (those of weight zero: not part of the objective).
        """
        del t, losses, recorded


class LossSecondMomentTimesteps(UniformTimesteps):
    """p(t) proportional to sqrt(E[L_t^2]) over the last `history` losses per t.

    Uniform until every timestep has `history` recorded losses; then mixed
    with `uniform_prob` of the uniform distribution. With several examples at
    the same t in a batch, the last of them is recorded; examples of sample
    weight zero are not (they are not part of the objective), the others'
    losses are recorded unweighted. Under a distribution strategy the first
    replica's losses are recorded.

    References:
        Nichol & Dhariwal 2021, Sec. 3.3 (Eq. 18), Improved DDPM.
    """

    kind = "loss-second-moment"

    def __init__(self, num_timesteps, history=10, uniform_prob=0.001, **kwargs):
        super().__init__(num_timesteps, **kwargs)
        self.history = int(history)
        self.uniform_prob = float(uniform_prob)
        self.loss_history = self.add_weight(
            shape=(self.num_timesteps, self.history), initializer="zeros", trainable=False,
            name="loss_history", aggregation="only_first_replica")
        self.loss_counts = self.add_weight(
            shape=(self.num_timesteps,), initializer="zeros", dtype="int32", trainable=False,
            name="loss_counts", aggregation="only_first_replica")

    def probabilities(self):
        warm = tf.reduce_all(self.loss_counts >= self.history)
        weights = tf.sqrt(tf.reduce_mean(tf.square(self.loss_history), axis=1))
        weights = weights / tf.reduce_sum(weights)
        weights = weights * (1.0 - self.uniform_prob) + self.uniform_prob / self.num_timesteps
        return tf.where(warm, weights, tf.fill([self.num_timesteps], 1.0 / self.num_timesteps))

    def update(self, t, losses, recorded=None):
        t = tf.cast(t, tf.int32)
        # 1 + the index of the last recorded example at each timestep; <= 0 where none is (an empty
        # segment's max is the lowest int). Dense [T, history] updates, the same on every device and
        # under XLA (a scatter with repeated indices is not).
        order = tf.range(1, tf.shape(t)[0] + 1)
        if recorded is not None:
            order = tf.where(recorded, order, 0)
        last = tf.math.unsorted_segment_max(order, t, self.num_timesteps)
        found = last > 0
        values = tf.gather(tf.cast(losses, tf.float32), tf.maximum(last, 1) - 1)
        slots = self.loss_counts % self.history
        write = found[:, None] & tf.equal(tf.range(self.history)[None, :], slots[:, None])
        self.loss_history.assign(tf.where(write, values[:, None], self.loss_history))
        self.loss_counts.assign(self.loss_counts + tf.cast(found, tf.int32))


def create(name, num_timesteps):
    """Builds the timestep sampler called `name` (one of `TIMESTEP_SAMPLERS`)."""
    validation.check_choice("timestep_sampler", name, TIMESTEP_SAMPLERS)
    cls = UniformTimesteps if name == "uniform" else LossSecondMomentTimesteps
    return cls(num_timesteps, name="timestep_sampler")
