"""Gradient checkpointing: recomputed activations give the same gradients and a smaller XLA memory plan."""

import json
import os
import subprocess
import sys

import types

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfdiffusion import presets
from tfdiffusion import training
from tfdiffusion.nn import ResBlock
from tfdiffusion.nn import UNet
from tfdiffusion.nn.checkpointing import recompute_in_backward

from .layer_checks import check_config_round_trip
from .layer_checks import perturb_weights

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Every part (two levels, attention at 4x4, 8 groups) and dropout, whose masks the recomputation must replay.
TINY = dict(image_size=8, in_channels=3, base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
            attention_resolutions=(4,), dropout=0.3, num_groups=8)
RNG = np.random.default_rng(0)
X = RNG.uniform(-1, 1, (2, 8, 8, 3)).astype("float32")
T = np.array([3, 900], np.int32)


def _same_unets():
    """A UNet and its checkpointed twin with the same weights and the same dropout seed states."""
    keras.utils.set_random_seed(0)  # the same weights whatever ran before in this process
    plain = UNet(**TINY)
    plain.build((None, 8, 8, 3))
    perturb_weights(plain)
    checkpointed = UNet(**TINY, gradient_checkpointing=True)
    checkpointed.build((None, 8, 8, 3))
    checkpointed.set_weights(plain.get_weights())
    blocks = [[layer for layer in unet._flatten_layers() if isinstance(layer, ResBlock)]
              for unet in (plain, checkpointed)]
    assert len(blocks[0]) == len(blocks[1]) > 0
    for a, b in zip(*blocks):
        b.dropout_layer.seed_generator.state.assign(a.dropout_layer.seed_generator.state)
    return plain, checkpointed


def _loss_and_gradients(unet, mode):
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(unet(X, T, training=True) - X))
        return loss, tape.gradient(loss, unet.trainable_variables)

    if mode == "graph":
        step = tf.function(step, jit_compile=False)
    loss, grads = step()
    return float(loss), [np.asarray(g) for g in grads]


@pytest.mark.parametrize("mode", ["eager", "graph"])  # XLA: in a fresh process, below
def test_checkpointed_unet_gives_the_gradients_of_kept_activations(mode):
    plain, checkpointed = _same_unets()
    # Dropout is on, so the masks matter: some outputs move (the mean loss alone may barely change).
    assert np.max(np.abs(plain(X, T, training=True) - plain(X, T, training=False))) > 1e-3
    plain, checkpointed = _same_unets()  # the seed states again, as before any call
    loss, grads = _loss_and_gradients(plain, mode)
    loss_c, grads_c = _loss_and_gradients(checkpointed, mode)
    assert loss_c == pytest.approx(loss, rel=1e-6)
    scale = max(float(np.max(np.abs(g))) for g in grads)
    assert len(grads_c) == len(grads) and all(g is not None for g in grads_c)
    for g, g_c in zip(grads, grads_c):
        np.testing.assert_allclose(g_c, g, rtol=0, atol=2e-6 * scale)


def test_recompute_in_backward_matches_the_closed_form_and_runs_the_function_again():
    w = tf.Variable([0.5, -2.0, 3.0])
    x = tf.constant([1.5, 0.25, -1.0])
    seed = tf.constant([4, 2])
    calls = []

    def fn(x, seed):
        calls.append(1)
        mask = tf.cast(tf.random.stateless_uniform([3], seed=seed) < 0.5, tf.float32)
        return w * tf.square(x) * mask

    with tf.GradientTape() as tape:
        tape.watch(x)
        y = recompute_in_backward(fn, x, seed)
        loss = tf.reduce_sum(y * tf.constant([1.0, 2.0, 3.0]))
    dx, dw = tape.gradient(loss, [x, w])
    assert len(calls) == 2  # once forward, once in the backward pass
    mask = (tf.random.stateless_uniform([3], seed=seed) < 0.5).numpy().astype(np.float64)
    upstream = np.array([1.0, 2.0, 3.0])
    x64, w64 = x.numpy().astype(np.float64), w.numpy().astype(np.float64)
    np.testing.assert_allclose(y.numpy(), w64 * x64**2 * mask, rtol=1e-6)
    np.testing.assert_allclose(dx.numpy(), upstream * 2 * w64 * x64 * mask, rtol=1e-6)
    np.testing.assert_allclose(dw.numpy(), upstream * x64**2 * mask, rtol=1e-6)


def test_gradient_checkpointing_round_trips_and_refuses_non_bools():
    unet = UNet(**TINY, gradient_checkpointing=True)
    clone = check_config_round_trip(unet)
    assert clone.gradient_checkpointing is True
    clone.build((None, 8, 8, 3))
    blocks = [layer for layer in clone._flatten_layers() if isinstance(layer, ResBlock)]
    assert blocks and all(block.gradient_checkpointing for block in blocks)
    assert UNet(**TINY).get_config()["gradient_checkpointing"] is False
    for bad in (1, "yes", None):
        with pytest.raises(TypeError, match="gradient_checkpointing"):
            UNet(**TINY, gradient_checkpointing=bad)
    clone.gradient_checkpointing = False  # diffusers' enable/disable_gradient_checkpointing, as an attribute
    assert not any(block.gradient_checkpointing for block in blocks)
    assert clone.get_config()["gradient_checkpointing"] is False
    with pytest.raises(TypeError, match="gradient_checkpointing"):
        clone.gradient_checkpointing = 0


def _res_block_flags(model):
    return {layer.gradient_checkpointing for layer in model.network._flatten_layers() if isinstance(layer, ResBlock)}


def test_training_runs_build_and_resume_with_the_setting():
    settings = training.resolve_settings(dict(gradient_checkpointing=True, image_size=8, num_timesteps=20, steps=2))
    preset = presets.get_preset(settings["preset"])
    dataset = types.SimpleNamespace(num_classes=3, image_size=8, channels=preset.channels)
    model = training._build_model(settings, preset, dataset, None)
    assert model.network.gradient_checkpointing is True and _res_block_flags(model) == {True}
    # A resumed run may change it (it changes neither weights nor optimizer state).
    off = training.resolve_settings(dict(gradient_checkpointing=False), saved=settings)
    assert training._build_model(off, preset, dataset, model) is model and _res_block_flags(model) == {False}
    assert training.resolve_settings({})["gradient_checkpointing"] is False
    with pytest.raises(TypeError, match="gradient_checkpointing"):
        training.resolve_settings(dict(gradient_checkpointing="yes"))


# XLA reads XLA_FLAGS (the dump folder) once per process, before its first compilation: a fresh process.
# It compiles the training gradient of TINY with and without checkpointing (same weights, same dropout seeds)
# and keeps each step's XLA memory plan and gradients.
XLA_PROGRAM = r"""
import json, os, sys
import numpy as np
sys.path.insert(0, os.path.join(sys.argv[1], "benchmarks"))
dump, out = sys.argv[2], sys.argv[3]
os.environ["XLA_FLAGS"] = f"--xla_dump_to={dump} --xla_dump_hlo_pass_re=NONE"
import tfdiffusion
import keras
import tensorflow as tf
from memory_phases import xla_memory_plan
from tfdiffusion.nn import UNet

# A batch of 64 makes the activations, which checkpointing drops, most of the step's memory.
x = tf.random.stateless_uniform((64, 8, 8, 3), seed=[1, 2], minval=-1.0, maxval=1.0)
t = tf.random.stateless_uniform([64], seed=[3, 4], maxval=1000, dtype=tf.int32)
plans, grads = {}, {}
for checkpointed in (False, True):
    keras.utils.set_random_seed(0)  # the same initial weights and dropout seed states
    unet = UNet(**json.loads(sys.argv[4]), gradient_checkpointing=checkpointed)
    unet.build((None, 8, 8, 3))
    rng = np.random.default_rng(0)
    for weight in unet.trainable_weights:  # the zero-initialised output convolutions would stop every gradient
        weight.assign(weight.numpy() + 0.1 * rng.standard_normal(weight.shape))

    @tf.function(jit_compile=True)
    def step(x, t):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(unet(x, t, training=True) - x))
        return tape.gradient(loss, unet.trainable_variables)

    grads.update({f"{checkpointed}_{i}": g.numpy() for i, g in enumerate(step(x, t))})
    plans[str(checkpointed)] = xla_memory_plan(dump)  # the largest program: the step; removes the dump
np.savez(out, **grads)
print(json.dumps(plans))
"""


def test_under_xla_checkpointing_keeps_the_gradients_and_shrinks_the_step_memory_plan(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "TF_XLA_FLAGS")}
    result = subprocess.run([sys.executable, "-c", XLA_PROGRAM, REPO, str(tmp_path / "dump"),
                             str(tmp_path / "grads.npz"), json.dumps(TINY)],
                            capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    plans = json.loads(result.stdout.strip().splitlines()[-1])
    kept, recomputed = plans["False"], plans["True"]
    assert kept["parameters_mib"] == recomputed["parameters_mib"]  # the same variables and batch
    assert recomputed["temporary_mib"] < 0.85 * kept["temporary_mib"], plans
    with np.load(tmp_path / "grads.npz") as saved:
        count = len(saved.files) // 2
        grads = [saved[f"False_{i}"] for i in range(count)]
        grads_c = [saved[f"True_{i}"] for i in range(count)]
    scale = max(float(np.max(np.abs(g))) for g in grads)
    assert scale > 0
    for g, g_c in zip(grads, grads_c):
        np.testing.assert_allclose(g_c, g, rtol=0, atol=2e-6 * scale)
