"""`ResBlock`: the DDPM/ADM residual block with a timestep-embedding input."""

import keras
import tensorflow as tf

from tfdiffusion.nn.checkpointing import recompute_in_backward
from tfdiffusion.nn.normalization import check_num_groups
from tfdiffusion.nn.normalization import GROUP_NORM_EPSILON
from tfdiffusion.nn.normalization import GroupNorm
from tfdiffusion.validation import check_bool
from tfdiffusion.validation import check_int
from tfdiffusion.validation import check_number


@keras.saving.register_keras_serializable(package="tfdiffusion")
class ResBlock(keras.layers.Layer):
    """Residual block conditioned on an embedding (DDPM `resnet_block`).

    `h = Conv3x3(SiLU(GroupNorm(x))) + Dense(SiLU(emb))[:, None, None, :]`,
    `h = Conv3x3(Dropout(SiLU(GroupNorm(h))))`, output `skip(x) + h`, where
    `skip` is the identity when the channel count is unchanged and a 1x1
    convolution otherwise. With `use_scale_shift_norm` (ADM's FiLM
    conditioning) the embedding is projected to a scale and a shift instead,
    and the second norm becomes `GroupNorm(h) * (1 + scale) + shift`. The
    second convolution is zero-initialised (as in ADM), so a fresh block
    computes `skip(x)`. With `output_scale_factor` s the output is
    `(skip(x) + h) / s` (diffusers' `output_scale_factor`; 1 by default).

    With `gradient_checkpointing` a training call keeps only the block's
    inputs for the backward pass and recomputes the rest there
    (`recompute_in_backward`): less memory, one more forward pass of the
    block per step. Dropout then draws its mask from a seed taken from the
    dropout layer's generator before the block runs, so the recomputation
    sees the same mask; the masks are the ones the layer itself would draw.

    Args:
        out_channels: Output channel count.
        dropout: Dropout rate before the second convolution, in [0, 1).
        num_groups: GroupNorm groups; must divide both the input and
            the output channel counts.
        use_scale_shift_norm: Condition through a scale and shift of the
            second GroupNorm's output (ADM) rather than by adding the
            embedding after the first convolution (DDPM).
        epsilon: GroupNorm's epsilon.
        output_scale_factor: Divides the output (diffusers' mid-block
            scale), > 0.
        gradient_checkpointing: Recompute the block's activations in the
            backward pass instead of keeping them (training calls only).
        **kwargs: Passed to `keras.layers.Layer`.

    Call arguments:
        x: `[B, H, W, C_in]` feature map.
        emb: `[B, D]` conditioning embedding (time, plus class if any).
        training: Whether dropout is active.

    Returns:
        `[B, H, W, out_channels]`.

    References:
        Ho et al. 2020, App. B; Dhariwal & Nichol 2021, "Diffusion Models
        Beat GANs on Image Synthesis", App. A.
    """

    def __init__(self, out_channels, dropout=0.0, num_groups=32, use_scale_shift_norm=False,
                 epsilon=GROUP_NORM_EPSILON, output_scale_factor=1.0, gradient_checkpointing=False,
                 **kwargs):
        super().__init__(**kwargs)
        out_channels = check_int("out_channels", out_channels)
        dropout = check_number("dropout", dropout, 0.0, 1.0, max_inclusive=False)
        check_num_groups(num_groups, out_channels)
        check_bool("use_scale_shift_norm", use_scale_shift_norm)
        self.gradient_checkpointing = check_bool("gradient_checkpointing", gradient_checkpointing)
        self.use_scale_shift_norm = use_scale_shift_norm
        self.epsilon = check_number("epsilon", epsilon, 0.0, min_inclusive=False)
        self.output_scale_factor = check_number(
            "output_scale_factor", output_scale_factor, 0.0, min_inclusive=False)
        self.out_channels = out_channels
        self.dropout = dropout
        self.num_groups = num_groups

        dtype = self.dtype_policy
        self.norm_1 = GroupNorm(num_groups, self.epsilon, dtype=dtype, name="norm_1")
        self.conv_1 = keras.layers.Conv2D(
            out_channels, 3, padding="same", dtype=dtype, name="conv_1"
        )
        self.emb_proj = keras.layers.Dense(
            out_channels * (2 if use_scale_shift_norm else 1), dtype=dtype, name="emb_proj"
        )
        self.norm_2 = GroupNorm(num_groups, self.epsilon, dtype=dtype, name="norm_2")
        self.dropout_layer = keras.layers.Dropout(
            dropout, dtype=dtype, name="dropout"
        )
        self.conv_2 = keras.layers.Conv2D(
            out_channels,
            3,
            padding="same",
            kernel_initializer="zeros",
            dtype=dtype,
            name="conv_2",
        )
        # Created in build() once the input channel count is known.
        self.skip = None

    def build(self, x_shape, emb_shape):
        in_channels = x_shape[-1]
        check_num_groups(self.num_groups, in_channels)
        out_shape = tuple(x_shape[:-1]) + (self.out_channels,)
        self.norm_1.build(x_shape)
        self.conv_1.build(x_shape)
        self.emb_proj.build(emb_shape)
        self.norm_2.build(out_shape)
        self.conv_2.build(out_shape)
        if in_channels != self.out_channels:
            self.skip = keras.layers.Conv2D(
                self.out_channels, 1, dtype=self.dtype_policy, name="skip"
            )
            self.skip.build(x_shape)

    def call(self, x, emb, training=None):
        if not (training and self.gradient_checkpointing):
            return self._residual(x, emb, training=training)
        if self.dropout > 0:
            # Drawn outside the recomputed part (which must be deterministic); the
            # same seed the dropout layer would draw for itself.
            seed = self.dropout_layer.seed_generator.next()
            return recompute_in_backward(
                lambda x, emb, seed: self._residual(x, emb, training=True, dropout_seed=seed), x, emb, seed)
        return recompute_in_backward(lambda x, emb: self._residual(x, emb, training=True), x, emb)

    def _dropout(self, h, training, seed):
        if seed is None:
            return self.dropout_layer(h, training=training)
        # keras' TensorFlow backend folds its int64 seed state into int32 this way.
        seed = tf.cast(tf.math.floormod(seed, tf.int32.max - 1), tf.int32)
        return tf.nn.experimental.stateless_dropout(h, rate=self.dropout, seed=seed)

    def _residual(self, x, emb, training=None, dropout_seed=None):
        silu = keras.activations.silu
        h = self.conv_1(silu(self.norm_1(x)))
        conditioning = self.emb_proj(silu(emb))[:, None, None, :]
        if self.use_scale_shift_norm:
            scale, shift = keras.ops.split(conditioning, 2, axis=-1)
            h = self.norm_2(h) * (1.0 + scale) + shift
        else:
            h = self.norm_2(h + conditioning)
        h = self._dropout(silu(h), training, dropout_seed)
        h = self.conv_2(h)
        skip = x if self.skip is None else self.skip(x)
        if self.output_scale_factor != 1.0:
            return (skip + h) / self.output_scale_factor
        return skip + h

    def compute_output_shape(self, x_shape, emb_shape):
        return tuple(x_shape[:-1]) + (self.out_channels,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "out_channels": self.out_channels,
                "dropout": self.dropout,
                "num_groups": self.num_groups,
                "use_scale_shift_norm": self.use_scale_shift_norm,
                "epsilon": self.epsilon,
                "output_scale_factor": self.output_scale_factor,
                "gradient_checkpointing": self.gradient_checkpointing,
            }
        )
        return config
