"""`AttentionBlock`: multi-head self-attention over a feature map's pixels."""

import keras
import tensorflow as tf
from keras import ops

from tfdiffusion.nn.normalization import check_num_groups
from tfdiffusion.nn.normalization import GROUP_NORM_EPSILON
from tfdiffusion.nn.normalization import GroupNorm
from tfdiffusion.validation import check_bool
from tfdiffusion.validation import check_int
from tfdiffusion.validation import check_number


@keras.saving.register_keras_serializable(package="tfdiffusion")
class AttentionBlock(keras.layers.Layer):
    """Residual self-attention over the `H * W` positions (DDPM `attn_block`).

    `x + proj(attention(q(n), k(n), v(n)))` with `n = GroupNorm(x)`; the q, k,
    v and output projections are 1x1 (per-pixel dense) maps of width `C`. The
    output projection is zero-initialised (as in ADM), so a fresh block is the
    identity. The softmax runs in float32 even under mixed precision.

    Options for diffusers' `Attention` block: `use_norm=False` drops the
    GroupNorm (`n = x`), and `output_scale_factor` s divides the output,
    `(x + proj(...)) / s`.

    Args:
        num_heads: Number of attention heads; must divide the channel count.
            DDPM uses 1.
        num_groups: GroupNorm groups; must divide the channel count.
        epsilon: GroupNorm epsilon (DDPM: 1e-6).
        use_norm: Whether the input is group-normalized before the q, k, v
            projections.
        output_scale_factor: Positive divisor of the output.
        **kwargs: Passed to `keras.layers.Layer`.

    Call arguments:
        x: `[B, H, W, C]` feature map.

    Returns:
        `[B, H, W, C]`.

    References:
        Ho et al. 2020, App. B; Wang et al. 2018, "Non-local Neural
        Networks".
    """

    def __init__(self, num_heads=1, num_groups=32, epsilon=GROUP_NORM_EPSILON,
                 use_norm=True, output_scale_factor=1.0, **kwargs):
        super().__init__(**kwargs)
        num_heads = check_int("num_heads", num_heads)
        check_num_groups(num_groups)
        self.num_heads = num_heads
        self.num_groups = num_groups
        self.epsilon = check_number("epsilon", epsilon, 0.0, min_inclusive=False)
        self.use_norm = check_bool("use_norm", use_norm)
        self.output_scale_factor = check_number(
            "output_scale_factor", output_scale_factor, 0.0, min_inclusive=False)
        self.norm = None
        if use_norm:
            self.norm = GroupNorm(
                num_groups, self.epsilon, dtype=self.dtype_policy, name="norm")
        # The projections are created in build() once C is known.
        self.query = self.key = self.value = self.proj_out = None

    def build(self, input_shape):
        channels = input_shape[-1]
        if self.use_norm:
            check_num_groups(self.num_groups, channels)
        if channels % self.num_heads:
            raise ValueError(
                "`num_heads` must divide the channel count. "
                f"Received: num_heads={self.num_heads}, channels={channels}"
            )

        def dense(name, initializer="glorot_uniform"):
            return keras.layers.Dense(
                channels,
                kernel_initializer=initializer,
                dtype=self.dtype_policy,
                name=name,
            )

        self.query = dense("query")
        self.key = dense("key")
        self.value = dense("value")
        self.proj_out = dense("proj_out", "zeros")
        flat_shape = (None, channels)  # the projections see [B * N, C]
        if self.norm is not None:
            self.norm.build(input_shape)
        for layer in (self.query, self.key, self.value, self.proj_out):
            layer.build(flat_shape)

    def call(self, x, training=None):
        batch, height, width, channels = ops.shape(x)
        length = height * width
        head_dim = channels // self.num_heads
        # [B * N, C] with N = H * W: a free reshape; the projections are plain
        # matmuls (a Dense layer on [B, N, C] builds a tensordot, ~4x the graph ops).
        normed = x if self.norm is None else self.norm(x)
        h = ops.reshape(normed, (-1, channels))
        # Scale q and k by d^-1/4 each rather than the logits by d^-1/2, so
        # that float16 logits do not overflow (ADM's QKVAttention).
        scale = head_dim**-0.25

        def split_heads(t):  # [B * N, C] -> [B, heads, N, d]
            t = ops.reshape(t, (batch, length, self.num_heads, head_dim))
            # Free for one head: TF moves only a size-1 axis.
            return tf.transpose(t, (0, 2, 1, 3))

        q = split_heads(self.query(h) * scale)
        k = split_heads(self.key(h) * scale)
        v = split_heads(self.value(h))
        # Batched matmuls (faster on CPU than the equivalent einsum).
        logits = tf.matmul(q, k, transpose_b=True)  # [B, heads, N, N]
        weights = ops.softmax(ops.cast(logits, "float32"), axis=-1)
        out = tf.matmul(ops.cast(weights, v.dtype), v)  # [B, heads, N, d]
        out = ops.reshape(tf.transpose(out, (0, 2, 1, 3)), (-1, channels))
        out = x + ops.reshape(self.proj_out(out), (batch, height, width, channels))
        if self.output_scale_factor != 1.0:
            out = out / self.output_scale_factor
        return out

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "num_groups": self.num_groups,
                "epsilon": self.epsilon,
                "use_norm": self.use_norm,
                "output_scale_factor": self.output_scale_factor,
            }
        )
        return config
