"""Tests for `tfdiffusion.nn.GroupNorm`."""

import numpy as np
import pytest

from tfdiffusion.nn import GroupNorm

from .layer_checks import check_config_round_trip
from .layer_checks import check_layer_save_load


def reference_group_norm(x, gamma, beta, groups, eps):
    """Wu & He 2018, Eq. (1)-(3), in float64 numpy."""
    b, h, w, c = x.shape
    g = x.astype(np.float64).reshape(b, h, w, groups, c // groups)
    mean = g.mean(axis=(1, 2, 4), keepdims=True)
    var = g.var(axis=(1, 2, 4), keepdims=True)
    return ((g - mean) / np.sqrt(var + eps)).reshape(x.shape) * gamma + beta


@pytest.mark.parametrize("groups", [1, 4, 16])
def test_group_norm_matches_reference(groups):
    rng = np.random.default_rng(0)
    # A large common offset checks the two-pass variance.
    x = (rng.standard_normal((2, 4, 4, 16)) * 3 + 10).astype("float32")
    layer = GroupNorm(groups, epsilon=1e-6)
    layer.build(x.shape)
    gamma = rng.standard_normal(16).astype("float32")
    beta = rng.standard_normal(16).astype("float32")
    layer.gamma.assign(gamma)
    layer.beta.assign(beta)
    out = np.asarray(layer(x))
    # float32 statistics over <= 256 values of size ~10: errors ~1e-5.
    np.testing.assert_allclose(
        out, reference_group_norm(x, gamma, beta, groups, 1e-6), atol=1e-4
    )


def test_group_norm_mixed_precision_and_errors(tmp_path):
    x = np.random.default_rng(1).standard_normal((2, 4, 4, 8)).astype("float32")
    out = GroupNorm(4, dtype="mixed_float16")(x)
    assert out.dtype == "float16"
    layer = GroupNorm(4, name="gn")
    check_config_round_trip(layer)
    check_layer_save_load(layer, [x], tmp_path)
    with pytest.raises(ValueError, match="num_groups=3, channels=8"):
        GroupNorm(3)(x)
    with pytest.raises(ValueError, match="integer >= 1. Received: num_groups=0"):
        GroupNorm(0)
    with pytest.raises(TypeError, match="num_groups=True"):
        GroupNorm(True)
