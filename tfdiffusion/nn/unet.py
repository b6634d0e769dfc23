"""`UNet`: the DDPM/ADM noise-prediction network as a Keras model.

Its argument checks are in `unet_checks`, its memory estimate in
`unet_memory`; its layers in the other modules of `tfdiffusion.nn`.
"""

import keras
from keras import ops

from tfdiffusion.nn.attention import AttentionBlock
from tfdiffusion.nn.embeddings import TimestepEmbedding
from tfdiffusion.nn.normalization import GROUP_NORM_EPSILON
from tfdiffusion.nn.normalization import GroupNorm
from tfdiffusion.nn.res_block import ResBlock
from tfdiffusion.nn.resample import Downsample
from tfdiffusion.nn.resample import DOWNSAMPLE_PADDINGS
from tfdiffusion.nn.resample import Upsample
from tfdiffusion.nn.unet_checks import check_labels
from tfdiffusion.nn.unet_checks import check_levels
from tfdiffusion.nn.unet_checks import check_positive_int
from tfdiffusion.nn.unet_checks import format_shape
from tfdiffusion.nn.unet_checks import int_tuple
from tfdiffusion.nn.unet_checkpointing import GradientCheckpointingSwitch
from tfdiffusion.nn.unet_memory import InferenceMemory
from tfdiffusion.validation import check_bool
from tfdiffusion.validation import check_choice
from tfdiffusion.validation import check_number
from tfdiffusion.validation import check_optional_int


@keras.saving.register_keras_serializable(package="tfdiffusion")
class UNet(InferenceMemory, GradientCheckpointingSwitch, keras.Model):
    """The DDPM/ADM UNet: predicts noise (and optionally variances).

    Layout (Ho et al. 2020, App. B; Dhariwal & Nichol 2021): a 3x3 input
    conv to `base_channels`; a down path with, at each level `i`,
    `num_res_blocks` ResBlocks of `base_channels * channel_mult[i]` channels
    (each followed by an AttentionBlock when the level's resolution is in
    `attention_resolutions`) and a stride-2 Downsample except at the last
    level; a middle ResBlock, AttentionBlock, ResBlock; an up path mirroring
    the down path with `num_res_blocks + 1` ResBlocks per level, each taking
    the concatenation of the current features and the most recent unused
    down-path output, and a nearest-neighbour Upsample except at the top
    level; then GroupNorm, SiLU and a zero-initialised 3x3 conv.

    The timestep embedding (width `4 * base_channels`) feeds every ResBlock.
    With `num_classes`, a learned label embedding of `num_classes + 1` rows is
    added to it; row `num_classes` is the null label (`unet.null_label`) used
    for classifier-free guidance.

    The DDPM CIFAR-10 model is the default configuration
    (35.7M parameters).

    `build((B, H, W, C))` creates every weight from the image shape alone, so
    `keras.models.load_model` can rebuild a model that contains a UNet.

    Args:
        image_size: Height and width of the (square) images; must be
            divisible by `2 ** (len(channel_mult) - 1)`.
        in_channels: Image channel count.
        base_channels: Channel count of the first level.
        channel_mult: Channel multiplier of each level (one level per entry).
        num_res_blocks: ResBlocks per level on the down path.
        attention_resolutions: Resolutions (in pixels) at which
            AttentionBlocks follow the ResBlocks; each must be one the UNet
            reaches (`image_size / 2**i`).
        dropout: Dropout rate inside ResBlocks.
        num_classes: Number of classes for class conditioning, or None.
        learn_sigma: If True, output `2 * in_channels` channels: the noise
            prediction followed by the variance interpolation values
            (improved-diffusion's `learned_range`).
        num_heads: Attention heads; must divide every attention channel count.
        num_groups: GroupNorm groups; must divide every channel
            count (use fewer groups for small models, e.g. 8 at 32 channels).
        use_scale_shift_norm: ResBlocks condition on the embedding through
            a scale and shift of their second GroupNorm (ADM) instead of
            adding it (DDPM, the default).
        flip_sin_to_cos: Timestep sinusoid with cosines first (True, ADM)
            or sines first (False, DDPM); see `timestep_embedding`.
        freq_shift: Frequency shift of the timestep sinusoid (0: ADM; 1:
            DDPM); see `timestep_embedding`.
        norm_eps: Epsilon of every GroupNorm.
        downsample_padding: "same" (TF's padding, one row/column at the
            bottom/right: DDPM, diffusers' `downsample_padding=0`) or
            "symmetric" (one on every side: ADM, diffusers' 1).
        num_head_channels: Channels per attention head, or None to use
            `num_heads` heads everywhere; when set, a block of C channels has
            `C // num_head_channels` heads (C must be a multiple).
        middle_attention: Whether the middle block has its AttentionBlock
            (diffusers' `add_attention`).
        middle_attention_norm: Whether that AttentionBlock group-normalizes
            its input (diffusers drops it with scale-shift conditioning).
        middle_scale_factor: The middle blocks divide their outputs by it
            (diffusers' `mid_block_scale_factor`).
        center_input: Map the input x to `2 * x - 1` first (diffusers'
            `center_input_sample`, for images given in [0, 1]).
        gradient_checkpointing: Recompute each ResBlock's activations in
            the backward pass instead of keeping them (diffusers'
            `enable_gradient_checkpointing`): a training step holds less
            memory and does about one more forward pass of the ResBlocks.
            Gradients are unchanged (same dropout masks). Sampling and
            evaluation are not affected.
        **kwargs: Passed to `keras.Model` (e.g. `name`, `dtype`).

    Call arguments:
        x: float `[B, image_size, image_size, in_channels]`, in [-1, 1].
        t: int32 `[B]` timesteps in [0, T).
        y: int32 `[B]` labels in [0, num_classes] (`num_classes` = null
            label) for a conditional UNet; must be None otherwise.
        training: Whether dropout is active.

    Returns:
        float32 `[B, image_size, image_size, out_channels]` with
        `out_channels = in_channels * (2 if learn_sigma else 1)`, float32 even
        under a mixed-precision policy.

    Example:

    ```python
    unet = UNet(image_size=8, base_channels=16, channel_mult=(1, 2),
                num_res_blocks=1, attention_resolutions=(4,), num_groups=8)
    eps = unet(tf.zeros([2, 8, 8, 3]), tf.constant([0, 999]))  # [2, 8, 8, 3]
    ```
    """

    def __init__(
        self,
        image_size=32,
        in_channels=3,
        base_channels=128,
        channel_mult=(1, 2, 2, 2),
        num_res_blocks=2,
        attention_resolutions=(16,),
        dropout=0.1,
        num_classes=None,
        learn_sigma=False,
        num_heads=1,
        num_groups=32,
        use_scale_shift_norm=False,
        flip_sin_to_cos=True,
        freq_shift=0,
        norm_eps=GROUP_NORM_EPSILON,
        downsample_padding="same",
        num_head_channels=None,
        middle_attention=True,
        middle_attention_norm=True,
        middle_scale_factor=1.0,
        center_input=False,
        gradient_checkpointing=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        num_head_channels = check_optional_int(
            "num_head_channels", num_head_channels)
        check_bool("middle_attention", middle_attention)
        check_bool("middle_attention_norm", middle_attention_norm)
        check_bool("center_input", center_input)
        check_bool("gradient_checkpointing", gradient_checkpointing)
        norm_eps = check_number("norm_eps", norm_eps, 0.0, min_inclusive=False)
        middle_scale_factor = check_number(
            "middle_scale_factor", middle_scale_factor, 0.0,
            min_inclusive=False)
        check_choice("downsample_padding", downsample_padding,
                     DOWNSAMPLE_PADDINGS)
        check_positive_int("image_size", image_size)
        check_positive_int("in_channels", in_channels)
        check_positive_int("base_channels", base_channels)
        check_positive_int("num_res_blocks", num_res_blocks)
        check_positive_int("num_heads", num_heads)
        channel_mult = int_tuple("channel_mult", channel_mult)
        attention_resolutions = int_tuple(
            "attention_resolutions", attention_resolutions
        )
        if not channel_mult:
            raise ValueError(
                "`channel_mult` must have at least one level. "
                f"Received: channel_mult={channel_mult}"
            )
        if num_classes is not None:
            check_positive_int("num_classes", num_classes)
        check_bool("learn_sigma", learn_sigma)
        dropout = check_number("dropout", dropout, 0.0, 1.0, max_inclusive=False)
        resolutions, level_channels = check_levels(
            image_size, base_channels, channel_mult, attention_resolutions,
            num_groups, num_heads, num_head_channels, middle_attention
        )

        self.image_size = image_size
        self.in_channels = in_channels
        self.base_channels = base_channels
        self.channel_mult = channel_mult
        self.num_res_blocks = num_res_blocks
        self.attention_resolutions = attention_resolutions
        self.dropout = dropout
        self.num_classes = num_classes
        self.learn_sigma = learn_sigma
        self.num_heads = num_heads
        self.num_groups = num_groups
        self.use_scale_shift_norm = use_scale_shift_norm
        self.flip_sin_to_cos = flip_sin_to_cos
        self.freq_shift = freq_shift
        self.norm_eps = norm_eps
        self.downsample_padding = downsample_padding
        self.num_head_channels = num_head_channels
        self.middle_attention = middle_attention
        self.middle_attention_norm = middle_attention_norm
        self.middle_scale_factor = middle_scale_factor
        self.center_input = center_input
        self._gradient_checkpointing = gradient_checkpointing
        self.out_channels = in_channels * (2 if learn_sigma else 1)

        dtype = self.dtype_policy
        emb_dim = 4 * base_channels

        def res_block(channels, name, scale=1.0):
            return ResBlock(
                channels, dropout, num_groups, use_scale_shift_norm, norm_eps,
                scale, gradient_checkpointing=gradient_checkpointing, dtype=dtype, name=name
            )

        def attention(channels, name, use_norm=True, scale=1.0):
            heads = num_heads
            if num_head_channels is not None:
                heads = channels // num_head_channels
            return AttentionBlock(heads, num_groups, norm_eps, use_norm, scale,
                                  dtype=dtype, name=name)

        self.time_embedding = TimestepEmbedding(
            base_channels, emb_dim, flip_sin_to_cos=flip_sin_to_cos,
            freq_shift=freq_shift, dtype=dtype, name="time_embedding"
        )
        self.label_embedding = None
        if num_classes is not None:
            # N(0, 1) rows as ADM's class embedding: Keras' default U(-0.05, 0.05)
            # is too faint next to the time embedding for labels to steer early training.
            self.label_embedding = keras.layers.Embedding(
                num_classes + 1, emb_dim, dtype=dtype, name="label_embedding",
                embeddings_initializer=keras.initializers.RandomNormal(stddev=1.0),
            )
        self.conv_in = keras.layers.Conv2D(
            base_channels, 3, padding="same", dtype=dtype, name="conv_in"
        )

        # Down path. `_down_keeps[i]` says whether the output of
        # `down_blocks[i]` is kept as a skip connection for the up path.
        down_blocks, down_keeps = [], []
        last = len(channel_mult) - 1
        for level, res in enumerate(resolutions):
            channels = level_channels[level]
            for i in range(num_res_blocks):
                down_blocks.append(
                    res_block(channels, f"down_{level}_res_{i}")
                )
                down_keeps.append(res not in attention_resolutions)
                if res in attention_resolutions:
                    down_blocks.append(
                        attention(channels, f"down_{level}_attn_{i}")
                    )
                    down_keeps.append(True)
            if level != last:
                down_blocks.append(
                    Downsample(downsample_padding, dtype=dtype,
                               name=f"down_{level}_downsample")
                )
                down_keeps.append(True)
        self.down_blocks = down_blocks
        self._down_keeps = tuple(down_keeps)

        channels, scale = level_channels[-1], middle_scale_factor
        self.middle_blocks = [res_block(channels, "middle_res_0", scale)]
        if middle_attention:
            self.middle_blocks.append(attention(
                channels, "middle_attn", middle_attention_norm, scale))
        self.middle_blocks.append(res_block(channels, "middle_res_1", scale))

        # Up path: every ResBlock consumes one skip connection.
        up_blocks = []
        for level in reversed(range(len(channel_mult))):
            res, channels = resolutions[level], level_channels[level]
            for i in range(num_res_blocks + 1):
                up_blocks.append(res_block(channels, f"up_{level}_res_{i}"))
                if res in attention_resolutions:
                    up_blocks.append(
                        attention(channels, f"up_{level}_attn_{i}")
                    )
            if level != 0:
                up_blocks.append(
                    Upsample(dtype=dtype, name=f"up_{level}_upsample")
                )
        self.up_blocks = up_blocks

        self.norm_out = GroupNorm(
            num_groups, norm_eps, dtype=dtype, name="norm_out"
        )
        self.act_out = keras.layers.Activation(
            "silu", dtype=dtype, name="silu_out"
        )
        self.conv_out = keras.layers.Conv2D(
            self.out_channels,
            3,
            padding="same",
            kernel_initializer="zeros",
            dtype="float32",
            name="conv_out",
        )

    @property
    def null_label(self):
        """The label index meaning "no class" (`num_classes`), or None."""
        return self.num_classes

    def _forward(self, h, emb, apply, concat):
        """Runs the network topology; shared by `call` and `build`.

        `apply(layer, h, emb)` evaluates one layer and `concat(h, skip)` joins
        channels; they act on tensors in `call` and on shapes in `build`.
        """
        h = apply(self.conv_in, h, emb)
        skips = [h]
        for layer, keep in zip(self.down_blocks, self._down_keeps):
            h = apply(layer, h, emb)
            if keep:
                skips.append(h)
        for layer in self.middle_blocks:
            h = apply(layer, h, emb)
        for layer in self.up_blocks:
            if isinstance(layer, ResBlock):
                h = concat(h, skips.pop())
            h = apply(layer, h, emb)
        for layer in (self.norm_out, self.act_out, self.conv_out):
            h = apply(layer, h, emb)
        return h

    def _check_image_shape(self, shape):
        expected = (self.image_size, self.image_size, self.in_channels)
        shape = tuple(shape)
        if len(shape) != 4 or any(
            got is not None and got != want
            for got, want in zip(shape[1:], expected)
        ):
            raise ValueError(
                "UNet expected images of shape "
                f"{format_shape((None,) + expected)}, "
                f"received {format_shape(shape)}"
            )

    def build(self, input_shape):
        """Creates all weights from the image shape `(B, H, W, C)` alone.

        Idempotent: a model that holds a UNet may call this from its own
        `build()` even when the UNet was already built (e.g. when
        `keras.models.load_model` deserialized it with its build config).
        """
        input_shape = tuple(input_shape)
        self._check_image_shape(input_shape)
        if self.built:
            return
        batch = input_shape[0]
        self.time_embedding.build((batch,))
        emb_shape = self.time_embedding.compute_output_shape((batch,))
        if self.label_embedding is not None:
            self.label_embedding.build((batch,))

        def apply(layer, shape, emb_shape):
            args = (shape,)
            if isinstance(layer, ResBlock):
                args = (shape, emb_shape)
            if not layer.built:
                layer.build(*args)
            return tuple(layer.compute_output_shape(*args))

        def concat(shape, skip_shape):
            return shape[:-1] + (shape[-1] + skip_shape[-1],)

        self._forward(input_shape, emb_shape, apply, concat)

    def call(self, x, t, y=None, training=None):
        self._check_image_shape(x.shape)
        t = ops.convert_to_tensor(t)
        if t.shape.rank not in (1, None):
            raise ValueError(
                "`t` must be a vector of timesteps, shape [B]. "
                f"Received shape {tuple(t.shape)}"
            )
        if self.center_input:
            x = 2.0 * x - 1.0
        emb = self.time_embedding(t)
        y = check_labels(y, self.num_classes)
        if y is not None:
            emb = emb + self.label_embedding(y)

        def apply(layer, h, emb):
            if isinstance(layer, ResBlock):
                return layer(h, emb, training=training)
            return layer(h)

        def concat(h, skip):
            return ops.concatenate([h, skip], axis=-1)

        return self._forward(x, emb, apply, concat)

    def compute_output_shape(self, input_shape, t_shape=None, y_shape=None):
        # `input_shape`: the name Keras' `summary()` passes the build shape under.
        return tuple(input_shape[:-1]) + (self.out_channels,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "image_size": self.image_size,
                "in_channels": self.in_channels,
                "base_channels": self.base_channels,
                "channel_mult": list(self.channel_mult),
                "num_res_blocks": self.num_res_blocks,
                "attention_resolutions": list(self.attention_resolutions),
                "dropout": self.dropout,
                "num_classes": self.num_classes,
                "learn_sigma": self.learn_sigma,
                "num_heads": self.num_heads,
                "num_groups": self.num_groups,
                "use_scale_shift_norm": self.use_scale_shift_norm,
                "flip_sin_to_cos": self.flip_sin_to_cos,
                "freq_shift": self.freq_shift,
                "norm_eps": self.norm_eps,
                "downsample_padding": self.downsample_padding,
                "num_head_channels": self.num_head_channels,
                "middle_attention": self.middle_attention,
                "middle_attention_norm": self.middle_attention_norm,
                "middle_scale_factor": self.middle_scale_factor,
                "center_input": self.center_input,
                "gradient_checkpointing": self.gradient_checkpointing,
            }
        )
        return config
