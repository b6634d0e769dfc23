"""Sinusoidal timestep embeddings and the UNet's time-embedding MLP."""

import math

import keras
import numpy as np
from keras import ops

from tfdiffusion.validation import check_bool
from tfdiffusion.validation import check_int


def timestep_embedding(t, dim, max_period=10000, flip_sin_to_cos=True,
                       freq_shift=0):
    """Sinusoidal embedding of (possibly fractional) timesteps.

    Follows ADM (Dhariwal & Nichol 2021, `timestep_embedding`) by default:
    with `half = dim // 2` and frequencies
    `f_i = exp(-log(max_period) * i / (half - freq_shift))` for
    `i = 0, ..., half - 1`,

        emb[:, i]        = cos(t * f_i)
        emb[:, half + i] = sin(t * f_i)

    i.e. the first half holds cosines and the second half sines. If `dim` is
    odd the last column is zero. DDPM's original code puts sines first and
    divides by `half - 1`: `flip_sin_to_cos=False, freq_shift=1` (the
    diffusers names of these two options; its ports of the DDPM checkpoints
    use those values).

    The frequencies are computed in float64 and cast once; the result is
    float32 whatever the dtype policy.

    Args:
        t: Timesteps, shape `[B]`, any real or integer dtype.
        dim: Embedding width, a positive integer.
        max_period: Controls the lowest frequency, `1 / max_period`.
        flip_sin_to_cos: Cosines first (True, ADM) or sines first (False,
            DDPM).
        freq_shift: Subtracted from `half` in the frequency exponent's
            denominator (0: ADM; 1: DDPM); must be below `half`.

    Returns:
        float32 tensor `[B, dim]` with entries in [-1, 1].

    References:
        Vaswani et al. 2017, "Attention Is All You Need", Sec. 3.5;
        Ho et al. 2020, "Denoising Diffusion Probabilistic Models", App. B.
    """
    check_int("dim", dim)
    if max_period <= 0:
        raise ValueError(
            "`max_period` must be positive. "
            f"Received: max_period={max_period!r}"
        )
    check_bool("flip_sin_to_cos", flip_sin_to_cos)
    half = dim // 2
    check_int("freq_shift", freq_shift, minimum=0,
              maximum=max(half - 1, 0))
    freqs = np.exp(-math.log(max_period) * np.arange(half) / (half - freq_shift))
    args = ops.cast(t, "float32")[:, None] * freqs.astype("float32")[None, :]
    pair = [ops.cos(args), ops.sin(args)]
    emb = ops.concatenate(pair if flip_sin_to_cos else pair[::-1], axis=-1)
    if dim % 2:
        emb = ops.pad(emb, [[0, 0], [0, 1]])
    return emb


@keras.saving.register_keras_serializable(package="tfdiffusion")
class TimestepEmbedding(keras.layers.Layer):
    """Timestep -> sinusoid -> Dense -> SiLU -> Dense (DDPM/ADM `temb`).

    Args:
        sinusoid_dim: Width of the sinusoidal embedding (DDPM: the UNet's
            `base_channels`).
        output_dim: Width of both Dense layers (DDPM: `4 * base_channels`).
        max_period: Passed to `timestep_embedding`.
        flip_sin_to_cos: Passed to `timestep_embedding` (True: cosines
            first).
        freq_shift: Passed to `timestep_embedding` (0 or, for DDPM, 1).
        **kwargs: Passed to `keras.layers.Layer`.

    Call arguments:
        t: Timesteps `[B]` (int32 in [0, T), or float).

    Returns:
        `[B, output_dim]` in the layer's compute dtype. No activation is
        applied to the output; each ResBlock applies its own SiLU.
    """

    def __init__(self, sinusoid_dim, output_dim, max_period=10000,
                 flip_sin_to_cos=True, freq_shift=0, **kwargs):
        super().__init__(**kwargs)
        for arg, value in (("sinusoid_dim", sinusoid_dim),
                           ("output_dim", output_dim)):
            check_int(arg, value)
        self.sinusoid_dim = sinusoid_dim
        self.output_dim = output_dim
        self.max_period = max_period
        self.flip_sin_to_cos = check_bool("flip_sin_to_cos", flip_sin_to_cos)
        self.freq_shift = check_int(
            "freq_shift", freq_shift, minimum=0,
            maximum=max(sinusoid_dim // 2 - 1, 0))
        self.dense_1 = keras.layers.Dense(
            output_dim, dtype=self.dtype_policy, name="dense_1"
        )
        self.dense_2 = keras.layers.Dense(
            output_dim, dtype=self.dtype_policy, name="dense_2"
        )

    def build(self, input_shape):
        batch = input_shape[0] if input_shape else None
        self.dense_1.build((batch, self.sinusoid_dim))
        self.dense_2.build((batch, self.output_dim))

    def call(self, t, training=None):
        emb = timestep_embedding(t, self.sinusoid_dim, self.max_period,
                                 self.flip_sin_to_cos, self.freq_shift)
        emb = keras.activations.silu(self.dense_1(emb))
        return self.dense_2(emb)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.output_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "sinusoid_dim": self.sinusoid_dim,
                "output_dim": self.output_dim,
                "max_period": self.max_period,
                "flip_sin_to_cos": self.flip_sin_to_cos,
                "freq_shift": self.freq_shift,
            }
        )
        return config
