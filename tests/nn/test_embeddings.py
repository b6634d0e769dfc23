"""Tests for `tfdiffusion.nn.embeddings`."""

import math

import numpy as np
import pytest

from tfdiffusion.nn import TimestepEmbedding
from tfdiffusion.nn import timestep_embedding

from .layer_checks import check_config_round_trip
from .layer_checks import check_layer_save_load


def reference_embedding(t, dim, max_period=10000):
    """ADM's formula in float64: [cos(t f_i), sin(t f_i)], f_i = P^(-i/half)."""
    half = dim // 2
    emb = np.zeros((len(t), dim))
    for b, step in enumerate(np.asarray(t, np.float64)):
        for i in range(half):
            freq = math.exp(-math.log(max_period) * i / half)
            emb[b, i] = math.cos(step * freq)
            emb[b, half + i] = math.sin(step * freq)
    return emb


@pytest.mark.parametrize(
    "dim, max_period", [(8, 10000), (16, 10000), (7, 10000), (6, 100)]
)
def test_timestep_embedding_matches_reference(dim, max_period):
    t = np.array([0, 1, 17, 500, 999], np.int32)
    emb = np.asarray(timestep_embedding(t, dim, max_period))
    assert emb.dtype == np.float32
    assert emb.shape == (5, dim)
    # float32 rounding of t * f (t <= 999, rel. error ~6e-8 each for f and
    # the product) moves the argument by up to ~1.2e-4 rad: atol 2e-4.
    np.testing.assert_allclose(
        emb, reference_embedding(t, dim, max_period), rtol=0, atol=2e-4
    )


def test_timestep_embedding_rejects_bad_dim():
    with pytest.raises(ValueError, match="`dim` must be an integer >= 1. Received: dim=0"):
        timestep_embedding(np.zeros(2, np.int32), 0)
    with pytest.raises(TypeError, match="dim=8.0"):
        timestep_embedding(np.zeros(2, np.int32), 8.0)


def test_timestep_embedding_layer_shape_config_and_save(tmp_path):
    layer = TimestepEmbedding(8, 32, name="temb")
    t = np.array([0, 5, 999], np.int32)
    out = layer(t)
    assert tuple(out.shape) == (3, 32) == layer.compute_output_shape((3,))
    check_config_round_trip(layer)
    check_layer_save_load(layer, [t], tmp_path)
