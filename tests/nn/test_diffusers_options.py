"""Tests for the `tfdiffusion.nn` options that diffusers' UNet2DModel layout needs.

Each option is checked against numpy written from its definition; the
whole UNet is checked against diffusers itself in `tests/convert`.
"""

import math

import numpy as np
import pytest

from tfdiffusion.nn import AttentionBlock
from tfdiffusion.nn import Downsample
from tfdiffusion.nn import ResBlock
from tfdiffusion.nn import TimestepEmbedding
from tfdiffusion.nn import UNet
from tfdiffusion.nn import timestep_embedding

from .layer_checks import check_config_round_trip
from .layer_checks import check_save_load
from .layer_checks import perturb_weights
from .test_blocks import reference_attention
from .test_blocks import set_identity_kernel

RNG = np.random.default_rng(3)
X = RNG.standard_normal((2, 8, 8, 16)).astype("float32")
EMB = RNG.standard_normal((2, 32)).astype("float32")


def sinusoid(t, dim, flip_sin_to_cos, freq_shift):
    """f_i = 10000^(-i / (half - shift)); [sin, cos] or, flipped, [cos, sin]."""
    half = dim // 2
    out = np.zeros((len(t), dim))
    for b, step in enumerate(np.asarray(t, np.float64)):
        for i in range(half):
            arg = step * math.exp(-math.log(10000) * i / (half - freq_shift))
            first, second = (math.cos(arg), math.sin(arg)) if flip_sin_to_cos else (
                math.sin(arg), math.cos(arg))
            out[b, i], out[b, half + i] = first, second
    return out


@pytest.mark.parametrize("flip, shift", [(False, 1), (True, 1), (False, 0)])
def test_timestep_embedding_order_and_shift(flip, shift):
    t = np.array([0, 3, 250, 999], np.int32)
    emb = np.asarray(timestep_embedding(t, 8, flip_sin_to_cos=flip, freq_shift=shift))
    # float32 arguments up to ~1000 rad: errors ~1e-4 (see test_embeddings).
    np.testing.assert_allclose(emb, sinusoid(t, 8, flip, shift), rtol=0, atol=2e-4)


def test_timestep_embedding_rejects_bad_options():
    t = np.zeros(2, np.int32)
    with pytest.raises(TypeError, match="flip_sin_to_cos"):
        timestep_embedding(t, 8, flip_sin_to_cos=1)
    with pytest.raises(ValueError, match="freq_shift"):
        timestep_embedding(t, 8, freq_shift=4)
    layer = TimestepEmbedding(8, 16, flip_sin_to_cos=False, freq_shift=1)
    assert check_config_round_trip(layer).freq_shift == 1


def test_downsample_symmetric_padding():
    layer = Downsample("symmetric")
    layer(X)
    set_identity_kernel(layer.conv)
    # One row/column of zeros on every side: window centres on even pixels.
    np.testing.assert_array_equal(np.asarray(layer(X)), X[:, 0::2, 0::2])
    assert layer.compute_output_shape(X.shape) == (2, 4, 4, 16)
    assert check_config_round_trip(layer).padding == "symmetric"
    with pytest.raises(ValueError, match="padding"):
        Downsample("valid")


def test_res_block_epsilon_and_output_scale():
    plain = ResBlock(16, num_groups=4)
    scaled = ResBlock(16, num_groups=4, epsilon=1e-2, output_scale_factor=2.0)
    plain(X, EMB)
    scaled(X, EMB)
    perturb_weights(plain, scale=0.3)
    scaled.set_weights(plain.get_weights())
    assert scaled.norm_1.epsilon == scaled.norm_2.epsilon == 1e-2
    plain.norm_1.epsilon = plain.norm_2.epsilon = 1e-2
    # Same weights and epsilon: the scaled block's output is exactly half.
    np.testing.assert_allclose(np.asarray(scaled(X, EMB)), np.asarray(plain(X, EMB)) / 2.0,
                               rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="output_scale_factor"):
        ResBlock(16, num_groups=4, output_scale_factor=0.0)


def test_attention_without_norm_and_scaled():
    block = AttentionBlock(num_heads=2, use_norm=False, output_scale_factor=4.0)
    block(X)
    perturb_weights(block, scale=0.3)
    assert block.norm is None

    class Identity:  # reference_attention normalizes with `block.norm`
        def __init__(self, layer):
            self.__dict__.update(layer.__dict__)
            self.norm = lambda x: x

    expected = reference_attention(Identity(block), X) / 4.0
    np.testing.assert_allclose(np.asarray(block(X)), expected, rtol=0, atol=1e-4)
    assert check_config_round_trip(block).use_norm is False


DIFFUSERS_LIKE = dict(
    image_size=8, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
    attention_resolutions=(4,), num_groups=4, dropout=0.0, flip_sin_to_cos=False,
    freq_shift=1, norm_eps=1e-5, downsample_padding="symmetric", num_head_channels=4,
    middle_attention=False, middle_scale_factor=1.5, center_input=True,
)


def test_unet_options_reach_layers_and_survive_save(tmp_path):
    unet = UNet(**DIFFUSERS_LIKE)
    unet.build((None, 8, 8, 3))
    perturb_weights(unet)
    attn = [b for b in unet.down_blocks if isinstance(b, AttentionBlock)]
    assert [b.num_heads for b in attn] == [4]  # 16 channels / 4 per head
    assert [b.name for b in unet.middle_blocks] == ["middle_res_0", "middle_res_1"]
    assert all(b.output_scale_factor == 1.5 for b in unet.middle_blocks)
    assert [b.padding for b in unet.down_blocks if isinstance(b, Downsample)] == ["symmetric"]
    assert unet.norm_out.epsilon == 1e-5 and unet.time_embedding.freq_shift == 1
    x = RNG.uniform(0, 1, (2, 8, 8, 3)).astype("float32")
    t = np.array([5, 600], np.int32)
    # center_input maps [0, 1] images to [-1, 1] before the network.
    plain = UNet(**{**DIFFUSERS_LIKE, "center_input": False})
    plain.build((None, 8, 8, 3))
    plain.set_weights(unet.get_weights())
    np.testing.assert_allclose(np.asarray(unet(x, t)), np.asarray(plain(2 * x - 1, t)),
                               rtol=0, atol=1e-6)
    check_save_load(unet, [x, t], tmp_path)


def test_unet_rejects_bad_head_channels():
    with pytest.raises(ValueError, match="num_head_channels=3, channels=16"):
        UNet(**{**DIFFUSERS_LIKE, "num_head_channels": 3})
    with pytest.raises(TypeError, match="middle_attention"):
        UNet(**{**DIFFUSERS_LIKE, "middle_attention": "yes"})
