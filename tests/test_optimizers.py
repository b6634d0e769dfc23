"""FusedAdamW: Adam with decoupled weight decay, checked against float64 numpy from the papers."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfdiffusion import FusedAdamW
from tfdiffusion import presets

BETA_1, BETA_2, EPSILON = 0.9, 0.999, 1e-7
SHAPES = [(3, 4), (5,), (2, 3, 3, 2)]


def reference_adamw(weights, gradient_steps, learning_rates, weight_decay):
    """Kingma & Ba 2015 Algorithm 1 (epsilon-hat form), decoupled decay (Loshchilov & Hutter 2019)."""
    weights = [w.astype(np.float64) for w in weights]
    m = [np.zeros_like(w) for w in weights]
    v = [np.zeros_like(w) for w in weights]
    for step, (gradients, lr) in enumerate(zip(gradient_steps, learning_rates), start=1):
        for i, g in enumerate(gradients):
            g = g.astype(np.float64)
            weights[i] = weights[i] - lr * weight_decay * weights[i]
            m[i] = BETA_1 * m[i] + (1 - BETA_1) * g
            v[i] = BETA_2 * v[i] + (1 - BETA_2) * g * g
            alpha = lr * np.sqrt(1 - BETA_2**step) / (1 - BETA_1**step)
            weights[i] = weights[i] - alpha * m[i] / (np.sqrt(v[i]) + EPSILON)
    return weights


def _problem(seed=0, steps=4):
    rng = np.random.default_rng(seed)
    weights = [rng.normal(size=s).astype(np.float32) for s in SHAPES]
    gradients = [[rng.normal(size=s).astype(np.float32) for s in SHAPES] for _ in range(steps)]
    return weights, gradients


def _run(make_optimizer, weights, gradient_steps, jit_compile=False, strategy=None):
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        optimizer = make_optimizer()
        variables = [keras.Variable(w) for w in weights]
        optimizer.build(variables)

    def step(gradients):
        optimizer.apply_gradients(zip(gradients, variables))

    step_fn = tf.function(step, jit_compile=jit_compile)
    for gradients in gradient_steps:
        if strategy.num_replicas_in_sync > 1:
            # Each replica holds its share (made on its device): the all-reduced sum is the full gradient.
            share = [g / strategy.num_replicas_in_sync for g in gradients]
            tf.function(lambda: strategy.run(lambda: step([tf.constant(g) for g in share])))()
        else:
            step_fn([tf.constant(g) for g in gradients])
    return [keras.ops.convert_to_numpy(v) for v in variables]


@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
@pytest.mark.parametrize("jit_compile", [False, True])
def test_matches_the_papers_update(weight_decay, jit_compile):
    weights, gradients = _problem()
    schedule = presets.LinearWarmup(1e-2, warmup_steps=3)
    got = _run(lambda: FusedAdamW(schedule, weight_decay=weight_decay, epsilon=EPSILON), weights, gradients,
               jit_compile=jit_compile)
    learning_rates = [1e-2 * min(1.0, (step + 1) / 3) for step in range(len(gradients))]
    want = reference_adamw(weights, gradients, learning_rates, weight_decay)
    for g, w, w0 in zip(got, want, weights):
        assert np.max(np.abs(w - w0)) > 1e-3  # the weights moved
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=1e-6)


TWO_REPLICAS = r"""
import sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
sys.path.insert(0, sys.argv[1])
import test_optimizers as t
from tfdiffusion import FusedAdamW
weights, gradients = t._problem(seed=1, steps=3)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
two = t._run(lambda: FusedAdamW(1e-2, weight_decay=0.0), weights, gradients, strategy=strategy)
np.savez(sys.argv[2], *two)
"""


def test_two_replicas_update_like_one_device(tmp_path):
    # A fresh process: collective ops of strategies made by earlier tests in this one can clash.
    out = tmp_path / "two.npz"
    result = subprocess.run([sys.executable, "-c", TWO_REPLICAS, os.path.dirname(__file__), str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    two = list(np.load(out).values())
    weights, gradients = _problem(seed=1, steps=3)
    one = _run(lambda: FusedAdamW(1e-2, weight_decay=0.0), weights, gradients)
    want = reference_adamw(weights, gradients, [1e-2] * 3, 0.0)
    assert len(two) == len(one) == len(SHAPES)
    for a, b, w in zip(one, two, want):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(a, w, rtol=2e-5, atol=1e-6)


def test_sparse_gradients_of_a_gather():
    table = keras.Variable(np.arange(12, dtype=np.float32).reshape(4, 3))
    optimizer = FusedAdamW(0.1, weight_decay=0.0)
    optimizer.build([table])

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.gather(table.value, [1, 1, 3]))
        gradient = tape.gradient(loss, table.value)
        assert isinstance(gradient, tf.IndexedSlices)
        optimizer.apply_gradients([(gradient, table)])

    step()
    dense = np.zeros((4, 3), np.float32)
    dense[1], dense[3] = 2.0, 1.0
    want = reference_adamw([np.arange(12, dtype=np.float32).reshape(4, 3)], [[dense]], [0.1], 0.0)[0]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(table), want, rtol=1e-5, atol=1e-6)
    assert np.array_equal(keras.ops.convert_to_numpy(table)[[0, 2]], want[[0, 2]])  # rows untouched


def test_far_fewer_graph_ops_than_keras_adamw():
    variables = [keras.Variable(np.ones(s, np.float32)) for s in SHAPES * 20]

    def count(optimizer):
        optimizer.build(variables)
        fn = tf.function(lambda grads: optimizer.apply_gradients(zip(grads, variables)))
        graph = fn.get_concrete_function([tf.TensorSpec(v.shape) for v in variables]).graph
        return len(graph.get_operations())

    fused = count(FusedAdamW(1e-3, weight_decay=0.0))
    keras_ops = count(keras.optimizers.AdamW(1e-3, weight_decay=0.0))
    assert fused * 4 < keras_ops, (fused, keras_ops)


def test_amsgrad_falls_back_to_keras():
    weights, gradients = _problem(seed=2, steps=3)
    got = _run(lambda: FusedAdamW(1e-2, amsgrad=True), weights, gradients)
    want = _run(lambda: keras.optimizers.AdamW(1e-2, amsgrad=True), weights, gradients)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)


def test_serialises_and_is_the_presets_optimizer():
    optimizer = presets.make_optimizer("shapes")
    assert isinstance(optimizer, FusedAdamW)
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert type(restored) is FusedAdamW
    assert restored.get_config() == optimizer.get_config()
