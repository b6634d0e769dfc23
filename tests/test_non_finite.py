"""Non-finite images are reported, not returned black: `generate`, the exported signatures and `ServedModel`."""

import warnings

import numpy as np
import pytest
import tensorflow as tf

import tfdiffusion
from tests import export_helpers as helpers
from tfdiffusion import export
from tfdiffusion.export_signatures import NON_FINITE_IMAGES
from tfdiffusion.generation import non_finite_weights


def _model(bias=None, kernel_scale=None):
    """The tiny unconditional model with its EMA `conv_in` bias set to `bias` (e.g. NaN in one entry) or its
    `conv_in` kernel scaled by `kernel_scale` (kept finite in float32)."""
    model = helpers.tiny_model(num_classes=None, seed=1)
    if bias is not None:
        values = model.ema_network.conv_in.bias.numpy()
        values[0] = bias
        model.ema_network.conv_in.bias.assign(values)
    if kernel_scale is not None:
        kernel = model.ema_network.conv_in.kernel
        kernel.assign(np.clip(kernel.numpy() * kernel_scale, -3e38, 3e38))
    return model


@pytest.fixture(scope="module")
def nan_model():
    return _model(bias=np.nan)


def test_generate_refuses_images_of_nan_weights_naming_them(nan_model):
    with pytest.raises(ValueError, match=r"3 of 3 generated images hold NaN or infinite values .*The EMA network's "
                                         r"weights hold 1 non-finite value\(s\) in 1 variable\(s\), e.g. "
                                         r"'[\w/]*conv_in/bias' \(1\)"):
        nan_model.generate(3, num_steps=2, seed=0, jit_compile=False)
    # Stopped after the first batch that held one.
    batches = []
    with pytest.raises(ValueError, match="2 of 2 generated images"):
        nan_model.generate(6, num_steps=2, seed=0, jit_compile=False, batch_size=2,
                           progress=lambda done, total: batches.append(done))
    assert batches == [0]  # the (0, total) call before sampling, then no batch reported


def test_warn_returns_what_uint8_makes_of_nan(nan_model):
    """What generate returned before: black images, now with a warning saying why."""
    with pytest.warns(UserWarning, match="2 of 2 generated images hold NaN"):
        images = nan_model.generate(2, num_steps=2, seed=0, jit_compile=False, on_non_finite="warn")
    assert images.dtype == np.uint8 and not images.any()
    with pytest.raises(ValueError, match="on_non_finite"):
        nan_model.generate(2, num_steps=2, jit_compile=False, on_non_finite="ignore")


def test_finite_images_pass_and_the_weights_are_named_only_when_broken(nan_model):
    model = _model()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        images = model.generate(2, num_steps=2, seed=0, jit_compile=False)
    assert images.shape == (2, 8, 8, 3) and len(np.unique(images)) > 10
    assert non_finite_weights(model.ema_network) == {}
    assert list(non_finite_weights(nan_model.ema_network).values()) == [1]


def test_overflow_with_finite_weights_points_at_the_settings():
    """Finite but huge weights: the first convolution's sums overflow to inf, its GroupNorm makes NaN of them."""
    model = _model(kernel_scale=1e38)
    assert non_finite_weights(model.ema_network) == {}
    with pytest.raises(ValueError, match="weights are all finite, so its outputs overflow for these settings"):
        model.generate(2, num_steps=2, seed=0, jit_compile=False)


def test_exported_nan_model_fails_the_request_instead_of_black_images(nan_model, tmp_path):
    version_dir = export.export_saved_model(nan_model, tmp_path / "nan", samplers=("ddim",), max_images=2,
                                            warmup_requests=False)
    generate = tf.saved_model.load(version_dir).signatures["generate"]
    with pytest.raises(tf.errors.InvalidArgumentError, match=rf"{NON_FINITE_IMAGES[:40]}.*batch size:\] \[2\] \[2\]"):
        generate(seed=tf.constant(0, tf.int64), num_steps=tf.constant(2), num_images=tf.constant(2),
                 eta=tf.constant(0.0))
    served = tfdiffusion.load_saved_model(version_dir)
    with pytest.raises(ValueError, match=r"2 of 2 images sampled by .* hold NaN or infinite values"):
        served.generate(2, num_steps=2, seed=0)
    # The same export of finite weights answers.
    finite_dir = export.export_saved_model(_model(), tmp_path / "finite", samplers=("ddim",), max_images=2,
                                           warmup_requests=False)
    assert tfdiffusion.load_saved_model(finite_dir).generate(2, num_steps=2, seed=0).any()
