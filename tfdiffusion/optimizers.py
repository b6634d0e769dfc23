"""`FusedAdamW`: Keras' AdamW with one fused TensorFlow kernel per variable.

Keras 3's AdamW builds its update from about thirty small ops per variable
(casts, powers, the two moment updates, the step), and a weight decay of
0.0 still adds a multiply-and-subtract per variable. For a UNet with ~330
variables that is over ten thousand ops in the training graph: most of the
time `fit` spends tracing and optimising the first step, and executor
overhead on every step without XLA. `FusedAdamW` computes the bias
corrections once per step and updates each variable with TensorFlow's
`ResourceApplyAdam` kernel (which XLA also compiles), the same arithmetic
as Keras' `Adam.update_step` (Kingma & Ba 2015, Algorithm 1 with the
"epsilon hat" form):

    alpha_t = lr * sqrt(1 - beta_2**t) / (1 - beta_1**t)
    m <- m + (g - m) * (1 - beta_1)
    v <- v + (g**2 - v) * (1 - beta_2)
    w <- w - alpha_t * m / (sqrt(v) + epsilon)

with decoupled weight decay (Loshchilov & Hutter 2019) `w <- w - lr * wd * w`
before it when `weight_decay` is not 0. Everything else (learning-rate
schedules, clipping, loss scaling, `tf.distribute` updates per device,
saving) is Keras' own.
"""

import keras
import tensorflow as tf

__all__ = ["FusedAdamW"]


@keras.saving.register_keras_serializable(package="tfdiffusion")
class FusedAdamW(keras.optimizers.AdamW):
    """`keras.optimizers.AdamW` whose update is one `ResourceApplyAdam` kernel per variable.

    Takes `keras.optimizers.AdamW`'s arguments; `amsgrad=True` falls back
    to Keras' own update. A `weight_decay` of 0.0 adds no ops.
    """

    def _apply_weight_decay(self, variables):
        if not self.weight_decay:  # None or 0.0: Keras would still multiply every variable by 0
            return
        super()._apply_weight_decay(variables)

    def _distributed_tf_update_step(self, distribution, grads_and_vars, learning_rate):
        if self.amsgrad:
            return super()._distributed_tf_update_step(distribution, grads_and_vars, learning_rate)
        # The bias corrections as Keras computes them, once for all variables (float32).
        step = tf.cast(self.iterations + 1, tf.float32)
        beta_1 = tf.cast(self.beta_1, tf.float32)
        beta_2 = tf.cast(self.beta_2, tf.float32)
        scalars = dict(lr=tf.cast(learning_rate, tf.float32), beta1_power=tf.pow(beta_1, step),
                       beta2_power=tf.pow(beta_2, step), beta1=beta_1, beta2=beta_2,
                       epsilon=tf.cast(self.epsilon, tf.float32))

        def apply_adam(variable, gradient):
            index = self._get_variable_index(variable)
            momentum, velocity = self._momentums[index].value, self._velocities[index].value
            dtype = variable.dtype.base_dtype
            if isinstance(gradient, tf.IndexedSlices):  # e.g. a class embedding's gather
                gradient = tf.convert_to_tensor(gradient)
            return tf.raw_ops.ResourceApplyAdam(
                var=variable.handle, m=momentum.handle, v=velocity.handle,
                grad=tf.cast(gradient, dtype),
                **{name: tf.cast(value, dtype) for name, value in scalars.items()})

        for gradient, variable in grads_and_vars:
            distribution.extended.update(variable, apply_adam, args=(gradient,), group=False)
