"""A Sonnet module as the `model_fn` of `GaussianDiffusion`, trained in a custom `tf.function` loop.

    python examples/sonnet_model_fn.py --steps 2000

`GaussianDiffusion` takes any callable `model_fn(x_t, t, **kwargs)`: here a
small `snt.Module` convolutional denoiser, trained with `training_losses` and
`snt.optimizers.Adam`, then sampled with DDIM.
"""

import argparse
import math

import numpy as np
import sonnet as snt
import tensorflow as tf

import tfdiffusion as tfdiff


class SonnetDenoiser(snt.Module):
    """Predicts the noise of `x_t` `[B, H, W, C]` at timesteps `t` `[B]`."""

    def __init__(self, channels=3, width=64, name=None):
        super().__init__(name=name)
        self.width = width
        self.time_mlp = snt.Sequential([snt.Linear(width), tf.nn.silu, snt.Linear(width)])
        self.convs_in = [snt.Conv2D(width, 3), snt.Conv2D(width, 3)]
        self.convs_out = [snt.Conv2D(width, 3), snt.Conv2D(channels, 3)]

    def __call__(self, x_t, t):
        half = self.width // 2
        freqs = tf.exp(-math.log(10000.0) * tf.range(half, dtype=tf.float32) / half)
        angles = tf.cast(t, tf.float32)[:, None] * freqs[None]
        emb = self.time_mlp(tf.concat([tf.cos(angles), tf.sin(angles)], axis=-1))
        h = tf.nn.silu(self.convs_in[0](x_t))
        h = tf.nn.silu(self.convs_in[1](h) + emb[:, None, None, :])
        h = tf.nn.silu(self.convs_out[0](h))
        return self.convs_out[1](h)


def train(steps=2000, batch_size=64, image_size=8, num_timesteps=100, learning_rate=2e-3, seed=0):
    """Trains a `SonnetDenoiser` on the built-in shapes; returns (module, diffusion, losses)."""
    images, _ = tfdiff.make_shapes(4096, image_size=image_size, seed=seed)
    data = tf.data.Dataset.from_tensor_slices(images.astype(np.float32) / 127.5 - 1.0)
    data = data.shuffle(4096, seed=seed).repeat().batch(batch_size, drop_remainder=True)
    diffusion = tfdiff.GaussianDiffusion(tfdiff.get_beta_schedule("cosine", num_timesteps))
    module = SonnetDenoiser(channels=3)
    optimizer = snt.optimizers.Adam(learning_rate)

    @tf.function
    def train_step(x_start, step):
        seed_pair = tf.stack([tf.cast(step, tf.int64), tf.constant(seed, tf.int64)])
        t = tf.random.stateless_uniform([batch_size], seed_pair, 0, num_timesteps, dtype=tf.int32)
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(diffusion.training_losses(module, x_start, t, seed=seed_pair + 1)["loss"])
        grads = tape.gradient(loss, module.trainable_variables)
        optimizer.apply(grads, module.trainable_variables)
        return loss

    # The step as a tensor: a Python int would retrace `train_step` at every step.
    losses = [float(train_step(x, tf.constant(step, tf.int64))) for step, x in zip(range(steps), data)]
    return module, diffusion, losses


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="training steps (default: 2000)")
    args = parser.parse_args()
    module, diffusion, losses = train(steps=args.steps)
    print(f"loss: first 50 steps {np.mean(losses[:50]):.3f}, last 50 steps {np.mean(losses[-50:]):.3f}")
    samples = diffusion.ddim_sample_loop(module, [8, 8, 8, 3], num_steps=20, seed=0)
    print("samples:", samples.shape, "range", float(tf.reduce_min(samples)), float(tf.reduce_max(samples)))


if __name__ == "__main__":
    main()
