"""`Downsample` and `Upsample`: the UNet's 2x resolution changes."""

import keras
from keras import ops

from tfdiffusion.validation import check_choice

DOWNSAMPLE_PADDINGS = ("same", "symmetric")


@keras.saving.register_keras_serializable(package="tfdiffusion")
class Downsample(keras.layers.Layer):
    """Halves the resolution with a 3x3 stride-2 convolution (DDPM).

    Padding is TensorFlow's "same" by default (one extra row/column at the
    bottom/right for even sizes), as in DDPM's reference code and diffusers'
    `downsample_padding=0`; "symmetric" pads one row/column on every side
    (ADM, diffusers' `downsample_padding=1`). The channel count is kept.

    Args:
        padding: "same" or "symmetric".
        **kwargs: Passed to `keras.layers.Layer`.

    Call arguments:
        x: `[B, H, W, C]` with even `H` and `W`.

    Returns:
        `[B, H / 2, W / 2, C]`.
    """

    def __init__(self, padding="same", **kwargs):
        super().__init__(**kwargs)
        self.padding = check_choice("padding", padding, DOWNSAMPLE_PADDINGS)
        self.conv = None  # Created in build() once C is known.

    def build(self, input_shape):
        for size in input_shape[1:3]:
            if size is not None and size % 2:
                raise ValueError(
                    "`Downsample` expects even spatial sizes. "
                    f"Received input shape {tuple(input_shape)}"
                )
        self.conv = keras.layers.Conv2D(
            input_shape[-1],
            3,
            strides=2,
            padding="same" if self.padding == "same" else "valid",
            dtype=self.dtype_policy,
            name="conv",
        )
        self.conv.build(input_shape)

    def call(self, x, training=None):
        if self.padding == "symmetric":
            x = ops.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])
        return self.conv(x)

    def get_config(self):
        config = super().get_config()
        config.update({"padding": self.padding})
        return config

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        half = lambda size: None if size is None else size // 2  # noqa: E731
        return (batch, half(height), half(width), channels)


@keras.saving.register_keras_serializable(package="tfdiffusion")
class Upsample(keras.layers.Layer):
    """Doubles the resolution: nearest-neighbour x2, then a 3x3 conv (DDPM).

    Args:
        **kwargs: Passed to `keras.layers.Layer`.

    Call arguments:
        x: `[B, H, W, C]`.

    Returns:
        `[B, 2H, 2W, C]`.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv = None  # Created in build() once C is known.

    def build(self, input_shape):
        self.conv = keras.layers.Conv2D(
            input_shape[-1],
            3,
            padding="same",
            dtype=self.dtype_policy,
            name="conv",
        )
        self.conv.build(self.compute_output_shape(input_shape))

    def call(self, x, training=None):
        batch, height, width, channels = ops.shape(x)
        # One broadcast + reshape instead of two `repeat`s.
        x = ops.broadcast_to(
            x[:, :, None, :, None, :], (batch, height, 2, width, 2, channels)
        )
        x = ops.reshape(x, (batch, 2 * height, 2 * width, channels))
        return self.conv(x)

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        double = lambda size: None if size is None else 2 * size  # noqa: E731
        return (batch, double(height), double(width), channels)
