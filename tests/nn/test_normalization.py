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


def _numeric_gradients(x, gamma, beta, groups, eps, weights, step=1e-6):
    """Central differences of sum(weights * GroupNorm(x)) in float64 numpy."""
    def loss(x, gamma, beta):
        return float(np.sum(weights * reference_group_norm(x, gamma, beta, groups, eps)))

    grads = []
    for index, value in enumerate((x, gamma, beta)):
        grad = np.zeros_like(value)
        for position in np.ndindex(value.shape):
            args = [x, gamma, beta]
            up, down = value.copy(), value.copy()
            up[position] += step
            down[position] -= step
            args[index] = up
            plus = loss(*args)
            args[index] = down
            grad[position] = (plus - loss(*args)) / (2 * step)
        grads.append(grad)
    return grads


@pytest.mark.parametrize("groups,spatial", [(1, (3, 3)), (4, (3, 3)), (2, None)])
def test_group_norm_gradient_matches_finite_differences(groups, spatial):
    import tensorflow as tf

    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 3, 8)) * 2 + 5  # an offset: the centred form matters
    gamma = rng.standard_normal(8)
    beta = rng.standard_normal(8)
    weights = rng.standard_normal(x.shape)
    expected = _numeric_gradients(x, gamma, beta, groups, 1e-6, weights)

    layer = GroupNorm(groups, epsilon=1e-6)
    layer.build((None, *x.shape[1:]))
    layer.gamma.assign(gamma.astype("float32"))
    layer.beta.assign(beta.astype("float32"))
    # spatial=None traces with unknown height and width (the dynamic-shape path).
    signature = tf.TensorSpec((None, *(spatial or (None, None)), 8), tf.float32)

    @tf.function(input_signature=[signature])
    def gradients(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x) * weights.astype("float32"))
        return tape.gradient(loss, [x, layer.gamma, layer.beta])

    got = gradients(tf.constant(x, tf.float32))
    for name, g, e in zip(("x", "gamma", "beta"), got, expected):
        np.testing.assert_allclose(np.asarray(g), e, atol=2e-4, rtol=1e-3, err_msg=name)
