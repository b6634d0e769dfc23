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


def _group_norm(x, num_groups, eps):
    b, h, w, c = x.shape
    g = x.reshape(b, h * w, num_groups, c // num_groups)
    mean = g.mean(axis=(1, 3), keepdims=True)
    var = g.var(axis=(1, 3), keepdims=True)
    return ((g - mean) / np.sqrt(var + eps)).reshape(b, h, w, c)


def _conv3x3(x, kernel, bias):
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    h, w = x.shape[1:3]
    out = sum(padded[:, i:i + h, j:j + w, :] @ kernel[i, j] for i in range(3) for j in range(3))
    return out + bias


@pytest.mark.parametrize("scale_shift", [False, True])
def test_res_block_matches_numpy(scale_shift):
    # DDPM: h = conv1(silu(gn(x))) + dense(silu(emb)); out = x + conv2(silu(gn(h))).
    # ADM scale-shift: out = x + conv2(silu(gn(conv1(silu(gn(x)))) * (1 + scale) + shift)).
    block = ResBlock(16, num_groups=8, use_scale_shift_norm=scale_shift)
    block(X, EMB)
    perturb_weights(block)
    w = {v.path.split("/", 1)[1]: numpy(v).astype(np.float64) for v in block.weights}
    silu = lambda v: v / (1 + np.exp(-v))  # noqa: E731
    x, emb = X.astype(np.float64), EMB.astype(np.float64)
    eps = block.norm_1.epsilon

    def norm(v, name):
        return _group_norm(v, 8, eps) * w[f"{name}/gamma"] + w[f"{name}/beta"]

    h = _conv3x3(silu(norm(x, "norm_1")), w["conv_1/kernel"], w["conv_1/bias"])
    e = (silu(emb) @ w["emb_proj/kernel"] + w["emb_proj/bias"])[:, None, None, :]
    assert e.shape[-1] == (32 if scale_shift else 16)
    if scale_shift:
        h = norm(h, "norm_2") * (1 + e[..., :16]) + e[..., 16:]
    else:
        h = norm(h + e, "norm_2")
    expected = x + _conv3x3(silu(h), w["conv_2/kernel"], w["conv_2/bias"])
    np.testing.assert_allclose(numpy(block(X, EMB)), expected, atol=1e-4, rtol=1e-4)


def test_res_block_dropout_only_in_training():
    block = ResBlock(16, dropout=0.5, num_groups=8)
    block(X, EMB)
    perturb_weights(block)
    inference = numpy(block(X, EMB, training=False))
    np.testing.assert_array_equal(inference, numpy(block(X, EMB)))
    assert np.abs(numpy(block(X, EMB, training=True)) - inference).max() > 1e-3


def test_res_block_config_and_save(tmp_path):
    block = ResBlock(24, dropout=0.1, num_groups=8, use_scale_shift_norm=True, name="res")
    check_config_round_trip(block)
    block(X, EMB)
    perturb_weights(block)
    check_layer_save_load(block, [X, EMB], tmp_path)


def test_res_block_rejects_groups_not_dividing_channels():
    with pytest.raises(ValueError, match="num_groups=32, channels=48"):
        ResBlock(48, num_groups=32)
    with pytest.raises(TypeError, match="use_scale_shift_norm=1"):
        ResBlock(16, num_groups=8, use_scale_shift_norm=1)
    with pytest.raises(TypeError, match="out_channels=True"):  # was accepted as 1 channel
        ResBlock(True, num_groups=1)
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
