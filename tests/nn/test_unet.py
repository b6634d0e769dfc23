"""Tests for `tfdiffusion.nn.UNet`: shapes, saving, XLA, errors, size."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfdiffusion.nn import ResBlock
from tfdiffusion.nn import UNet

from .layer_checks import check_config_round_trip
from .layer_checks import check_save_load
from .layer_checks import perturb_weights

# A tiny UNet with every part: two levels, attention at 4x4, 8 groups.
TINY = dict(
    image_size=8,
    in_channels=3,
    base_channels=16,
    channel_mult=(1, 2),
    num_res_blocks=1,
    attention_resolutions=(4,),
    dropout=0.1,
    num_groups=8,
)
RNG = np.random.default_rng(0)
X = RNG.uniform(-1, 1, (2, 8, 8, 3)).astype("float32")
T = np.array([3, 900], np.int32)
Y = np.array([1, 4], np.int32)  # 4 is the null label when num_classes=4


def perturbed_unet(**overrides):
    unet = UNet(**{**TINY, **overrides})
    unet.build((None, 8, 8, 3))
    perturb_weights(unet)
    return unet


def numpy(x):
    return np.asarray(x)


@pytest.mark.parametrize("learn_sigma", [False, True])
@pytest.mark.parametrize("num_classes", [None, 4])
def test_output_shape_and_dtype(learn_sigma, num_classes):
    unet = UNet(**TINY, learn_sigma=learn_sigma, num_classes=num_classes)
    y = None if num_classes is None else Y
    out = unet(X, T, y=y)
    channels = 6 if learn_sigma else 3
    assert tuple(out.shape) == (2, 8, 8, channels)
    assert out.dtype == "float32"
    assert unet.compute_output_shape(X.shape, T.shape) == (2, 8, 8, channels)
    # The output conv is zero-initialised (DDPM/ADM).
    np.testing.assert_array_equal(numpy(out), 0.0)
    assert unet.null_label == num_classes


def test_mixed_precision_output_is_float32():
    unet = UNet(**TINY, dtype="mixed_float16")
    unet.build((None, 8, 8, 3))
    perturb_weights(unet)
    out = unet(X, T)
    assert out.dtype == "float32"
    assert unet.conv_in.compute_dtype == "float16"
    assert np.isfinite(numpy(out)).all()


def test_ddpm_cifar10_parameter_count():
    unet = UNet(
        image_size=32,
        in_channels=3,
        base_channels=128,
        channel_mult=(1, 2, 2, 2),
        num_res_blocks=2,
        attention_resolutions=(16,),
        dropout=0.1,
    )
    unet.build((None, 32, 32, 3))
    # Ho et al. 2020, Table/Sec. 4: 35.7M parameters for CIFAR-10.
    assert abs(unet.count_params() - 35.7e6) <= 0.01 * 35.7e6


def test_build_creates_all_weights_from_image_shape():
    built = UNet(**TINY, num_classes=4)
    built.build((None, 8, 8, 3))
    called = UNet(**TINY, num_classes=4)
    called(X, T, y=Y)
    assert len(built.weights) == len(called.weights)
    assert built.count_params() == called.count_params()


@pytest.mark.parametrize("num_classes", [None, 4])
def test_config_round_trip_and_save_load(num_classes, tmp_path):
    unet = perturbed_unet(num_classes=num_classes)
    check_config_round_trip(unet)
    inputs = dict(x=X, t=T)
    if num_classes is not None:
        inputs["y"] = Y
    loaded = check_save_load(unet, inputs, tmp_path)
    assert loaded.null_label == num_classes


def test_scale_shift_norm_reaches_every_res_block(tmp_path):
    plain = perturbed_unet()
    film = perturbed_unet(use_scale_shift_norm=True)
    blocks = [layer for layer in film._flatten_layers() if isinstance(layer, ResBlock)]
    assert blocks and all(block.use_scale_shift_norm for block in blocks)
    # Each block's embedding projection doubles: (emb_dim + 1) * C more weights.
    emb_dim = 4 * TINY["base_channels"]
    extra = sum((emb_dim + 1) * block.out_channels for block in blocks)
    assert film.count_params() - plain.count_params() == extra
    check_config_round_trip(film)
    check_save_load(film, dict(x=X, t=T), tmp_path)


@keras.saving.register_keras_serializable(package="tfdiffusion_tests")
class Wrapper(keras.Model):
    """Holds a UNet and builds it from the image shape (like DiffusionModel)."""

    def __init__(self, unet, **kwargs):
        super().__init__(**kwargs)
        self.unet = unet

    def build(self, input_shape):
        self.unet.build(input_shape)

    def call(self, x, t):
        return self.unet(x, t)

    def get_config(self):
        config = super().get_config()
        config["unet"] = keras.layers.serialize(self.unet)
        return config

    @classmethod
    def from_config(cls, config):
        config["unet"] = keras.layers.deserialize(config["unet"])
        return cls(**config)


def test_model_containing_unet_saves_and_loads(tmp_path):
    wrapper = Wrapper(UNet(**TINY))
    wrapper.build((None, 8, 8, 3))
    wrapper.build((None, 8, 8, 3))  # Building twice is harmless.
    perturb_weights(wrapper)
    with warnings.catch_warnings():
        # Keras only warns (and goes on) when build_from_config fails.
        warnings.filterwarnings("error", message=".*cannot be built")
        check_save_load(wrapper, [X, T], tmp_path)


def test_xla_matches_eager():
    unet = perturbed_unet(num_classes=4)
    eager = numpy(unet(X, T, y=Y))
    compiled = tf.function(
        lambda x, t, y: unet(x, t, y=y, training=False), jit_compile=True
    )
    # Same float32 ops, possibly fused and reordered by XLA.
    np.testing.assert_allclose(
        numpy(compiled(X, T, Y)), eager, rtol=0, atol=1e-5
    )


def test_output_depends_on_t_and_y():
    unet = perturbed_unet(num_classes=4)
    base = numpy(unet(X, T, y=Y))
    other_t = numpy(unet(X, T[::-1], y=Y))
    other_y = numpy(unet(X, T, y=Y[::-1]))
    assert np.abs(base - other_t).max() > 1e-3
    assert np.abs(base - other_y).max() > 1e-3


def test_dropout_only_in_training():
    unet = perturbed_unet(dropout=0.5)
    inference = numpy(unet(X, T))
    np.testing.assert_array_equal(numpy(unet(X, T, training=False)), inference)
    assert np.abs(numpy(unet(X, T, training=True)) - inference).max() > 1e-3


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(image_size=10, channel_mult=(1, 2, 2)), "divisible by 4"),
        (dict(num_groups=32), "num_groups=32, channels=16"),
        (dict(base_channels=12), "num_groups=8, channels=12"),
        (dict(attention_resolutions=(16,)), "resolutions the UNet reaches"),
        (dict(num_heads=3), "num_heads=3, channels=32"),
        (dict(channel_mult=()), "at least one level"),
        (dict(dropout=1.0), "dropout"),
        (dict(num_classes=0), "num_classes"),
    ],
)
def test_constructor_errors(overrides, match):
    with pytest.raises(ValueError, match=match):
        UNet(**{**TINY, **overrides})


def test_wrong_image_shape_errors():
    unet = UNet(**TINY)
    with pytest.raises(ValueError, match=r"expected images of shape "
                       r"\[B, 8, 8, 3\], received \[B, 8, 8, 1\]"):
        unet(X[..., :1], T)
    with pytest.raises(ValueError, match=r"received \[B, 4, 4, 3\]"):
        unet.build((None, 4, 4, 3))


def test_label_errors():
    with pytest.raises(ValueError, match="unconditional"):
        UNet(**TINY)(X, T, y=Y)
    conditional = UNet(**TINY, num_classes=4)
    with pytest.raises(ValueError, match="needs labels `y`"):
        conditional(X, T)
    with pytest.raises(ValueError, match=r"out-of-range labels \[5\]"):
        conditional(X, T, y=np.array([0, 5], np.int32))
    with pytest.raises(TypeError, match="integer"):
        conditional(X, T, y=np.array([0.0, 1.0], np.float32))


def test_label_range_checked_at_run_time_in_graphs():
    conditional = UNet(**TINY, num_classes=4)
    graph = tf.function(lambda y: conditional(X, T, y=y))
    graph(Y)  # In range, including the null label: fine.
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"\[0, 4\]"):
        graph(np.array([-1, 0], np.int32))
