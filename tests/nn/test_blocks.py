"""Tests for the UNet blocks: ResBlock, AttentionBlock, Downsample, Upsample."""

import numpy as np
import pytest

from tfdiffusion.nn import AttentionBlock
from tfdiffusion.nn import Downsample
from tfdiffusion.nn import ResBlock
from tfdiffusion.nn import Upsample

from .layer_checks import check_config_round_trip
from .layer_checks import check_layer_save_load
from .layer_checks import perturb_weights

RNG = np.random.default_rng(0)
X = RNG.standard_normal((2, 8, 8, 16)).astype("float32")
EMB = RNG.standard_normal((2, 32)).astype("float32")


def numpy(x):
    return np.asarray(x)


@pytest.mark.parametrize("out_channels", [16, 24])
def test_res_block_shape_and_zero_init(out_channels):
    block = ResBlock(out_channels, dropout=0.1, num_groups=8)
    out = numpy(block(X, EMB))
    assert out.shape == (2, 8, 8, out_channels)
    assert block.compute_output_shape(X.shape, EMB.shape) == out.shape
    # The second conv is zero-initialised: a fresh block is its skip path.
    skip = X if block.skip is None else numpy(block.skip(X))
    np.testing.assert_allclose(out, skip, atol=1e-6)
    assert (block.skip is None) == (out_channels == 16)


def test_res_block_uses_embedding():
    block = ResBlock(16, num_groups=8)
    block(X, EMB)
    perturb_weights(block)
    a = numpy(block(X, EMB))
    b = numpy(block(X, EMB + 1.0))
    assert np.abs(a - b).max() > 1e-3


def test_res_block_dropout_only_in_training():
    block = ResBlock(16, dropout=0.5, num_groups=8)
    block(X, EMB)
    perturb_weights(block)
    inference = numpy(block(X, EMB, training=False))
    np.testing.assert_array_equal(inference, numpy(block(X, EMB)))
    assert np.abs(numpy(block(X, EMB, training=True)) - inference).max() > 1e-3


def test_res_block_config_and_save(tmp_path):
    block = ResBlock(24, dropout=0.1, num_groups=8, name="res")
    check_config_round_trip(block)
    block(X, EMB)
    perturb_weights(block)
    check_layer_save_load(block, [X, EMB], tmp_path)


def test_res_block_rejects_groups_not_dividing_channels():
    with pytest.raises(ValueError, match="num_groups=32, channels=48"):
        ResBlock(48, num_groups=32)
    with pytest.raises(ValueError, match="num_groups=8, channels=12"):
        ResBlock(16, num_groups=8)(X[..., :12], EMB)


def reference_attention(block, x):
    """Multi-head attention over pixels in float64 numpy from the weights."""
    b, h, w, c = x.shape
    heads = block.num_heads
    d = c // heads
    n = numpy(block.norm(x)).astype(np.float64).reshape(b, h * w, c)

    def project(dense, v):
        kernel, bias = (numpy(t).astype(np.float64) for t in dense.weights)
        return v @ kernel + bias

    q, k, v = (
        project(layer, n).reshape(b, h * w, heads, d)
        for layer in (block.query, block.key, block.value)
    )
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(d)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    out = np.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, h * w, c)
    return x + project(block.proj_out, out).reshape(b, h, w, c)


@pytest.mark.parametrize("num_heads", [1, 2])
def test_attention_matches_reference(num_heads):
    block = AttentionBlock(num_heads=num_heads, num_groups=8)
    out = numpy(block(X))
    np.testing.assert_array_equal(out, X)  # zero-initialised output proj
    perturb_weights(block, scale=0.3)
    # float32 vs float64 attention over 64 positions: errors ~1e-6.
    np.testing.assert_allclose(
        numpy(block(X)), reference_attention(block, X), rtol=0, atol=1e-4
    )


def test_attention_config_save_and_errors(tmp_path):
    block = AttentionBlock(num_heads=2, num_groups=8, name="attn")
    check_config_round_trip(block)
    block(X)
    perturb_weights(block)
    check_layer_save_load(block, [X], tmp_path)
    with pytest.raises(ValueError, match="num_heads=3, channels=16"):
        AttentionBlock(num_heads=3, num_groups=8)(X)
    with pytest.raises(ValueError, match="num_groups=32, channels=16"):
        AttentionBlock()(X)


def set_identity_kernel(conv):
    """Makes a 3x3 conv copy its input: centre tap = identity, no bias."""
    kernel, bias = conv.weights
    value = np.zeros(kernel.shape, "float32")
    value[1, 1] = np.eye(kernel.shape[-1])
    kernel.assign(value)
    bias.assign(np.zeros(bias.shape, "float32"))


def test_upsample_is_nearest_neighbour(tmp_path):
    layer = Upsample(name="up")
    layer(X)
    set_identity_kernel(layer.conv)
    out = numpy(layer(X))
    np.testing.assert_array_equal(out, X.repeat(2, axis=1).repeat(2, axis=2))
    assert layer.compute_output_shape(X.shape) == (2, 16, 16, 16)
    check_config_round_trip(layer)
    check_layer_save_load(layer, [X], tmp_path)


def test_downsample_uses_tf_same_padding(tmp_path):
    layer = Downsample(name="down")
    layer(X)
    set_identity_kernel(layer.conv)
    # TF "same" padding at stride 2 pads only bottom/right (DDPM's code), so
    # window centres fall on the odd rows and columns.
    np.testing.assert_array_equal(numpy(layer(X)), X[:, 1::2, 1::2])
    assert layer.compute_output_shape(X.shape) == (2, 4, 4, 16)
    check_config_round_trip(layer)
    check_layer_save_load(layer, [X], tmp_path)
    with pytest.raises(ValueError, match="even spatial sizes"):
        Downsample()(X[:, :7, :7])
