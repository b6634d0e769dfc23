"""tf.distribute: strategy choice, XLA per replica, results that do not depend on the replica count."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfdiffusion as tfdiff
from tfdiffusion import distribute
from tests import strategies
from tests.nn.layer_checks import perturb_weights

T = 20


def _model(label_dropout=0.5):
    unet = tfdiff.UNet(image_size=8, in_channels=3, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                       attention_resolutions=(4,), dropout=0.0, num_classes=3, num_groups=4)
    diffusion = tfdiff.GaussianDiffusion(tfdiff.get_beta_schedule("cosine", T))
    return tfdiff.DiffusionModel(unet, diffusion, ema_decay=0.9, label_dropout=label_dropout)


def _data(num=8, batch=4):
    rng = np.random.default_rng(0)
    images = (rng.integers(0, 256, (num, 8, 8, 3)) / 127.5 - 1).astype(np.float32)
    labels = rng.integers(0, 3, num).astype(np.int32)
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch, drop_remainder=True)


def _mirrored():
    return strategies.two_cpu_replicas()


def _pair(policy="float32"):
    """The same model (same weights) on one device and on 2 replicas, compiled with XLA and SGD.

    The weights come from `keras.utils.set_random_seed(0)`, so every pair starts alike."""
    keras.mixed_precision.set_global_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        single = _model()
        perturb_weights(single.network, scale=0.05)
        initial = single.network.get_weights()
        single.ema_network.set_weights(initial)
        single.compile(optimizer=keras.optimizers.SGD(0.05), jit_compile=True)
        with _mirrored().scope():
            mirrored = _model()
            mirrored.network.set_weights(initial)
            mirrored.ema_network.set_weights(initial)
            mirrored.compile(optimizer=keras.optimizers.SGD(0.05), jit_compile=True)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return single, mirrored, initial


@pytest.fixture(scope="module")
def trained_pair():
    single, mirrored, initial = _pair()
    single.first_loss = single.fit(_data(num=12), verbose=0).history["loss"][0]
    mirrored.fit(_data(num=12), verbose=0)
    return single, mirrored, initial


# ------------------------------------------------------------ the strategy
@pytest.mark.parametrize("name, environment, match", [
    ("mirrored", {}, "`strategy` must be one of"),
    ("tpu", {}, "no TPU is reachable"),
    ("gpu", {}, "no GPU"),
    ("multiworker", {}, "needs TF_CONFIG"),
    ("multiworker", {"TF_CONFIG": "{not json"}, "not valid JSON"),
    ("multiworker", {"TF_CONFIG": json.dumps({"cluster": {"worker": []}, "task": {"type": "worker", "index": 0}})},
     "cluster.worker"),
    ("multiworker", {"TF_CONFIG": json.dumps({"cluster": {"worker": ["localhost:1"]},
                                              "task": {"type": "worker", "index": 3}})}, "task"),
])
def test_bad_strategy_requests_fail_before_anything_is_built(monkeypatch, name, environment, match):
    for key in ("TF_CONFIG", "TPU_NAME", "COLAB_TPU_ADDR"):
        monkeypatch.delenv(key, raising=False)
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValueError, match=match):
        distribute.get_strategy(name)


def test_auto_and_cpu_are_one_device_here(monkeypatch):
    for key in ("TF_CONFIG", "TPU_NAME", "COLAB_TPU_ADDR"):
        monkeypatch.delenv(key, raising=False)
    lines = []
    for name in ("auto", "cpu"):
        strategy = distribute.get_strategy(name, log=lines.append)
        assert strategy.num_replicas_in_sync == 1
    assert lines == ["Strategy: one device (no distribution) on /cpu:0: 1 replica(s)"] * 2
    assert distribute.describe(_mirrored()).endswith("2 replica(s)")


def test_fp16_needs_a_gpu_and_bf16_sets_the_policy():
    with pytest.raises(ValueError, match="'fp16' .* needs a GPU"):
        distribute.set_precision("fp16")
    with pytest.raises(ValueError, match="precision"):
        distribute.set_precision("int8")
    try:
        assert distribute.set_precision("bf16") == "mixed_bfloat16"
        assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    finally:
        keras.mixed_precision.set_global_policy("float32")


# ------------------------------------------------------ training, with XLA
def test_xla_per_replica_trains_exactly_like_one_device(trained_pair):
    # 3 SGD steps on a global batch of 4: one device with Keras' XLA step, 2 replicas with each
    # replica's forward and backward pass compiled by XLA on its own device.
    single, mirrored, initial = trained_pair
    assert mirrored._xla_per_replica and not single._xla_per_replica and mirrored.jit_compile
    assert int(mirrored.optimizer.iterations.numpy()) == 3
    moved = 0
    for a, b, w0 in zip(single.network.weights, mirrored.network.weights, initial):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-4, atol=2e-6)
        moved += int(not np.allclose(a.numpy(), w0))
    assert moved > 10
    for a, b in zip(single.ema_network.weights, mirrored.ema_network.weights):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-4, atol=2e-6)


def test_each_replica_traces_its_compiled_step_once(trained_pair):
    _, mirrored, _ = trained_pair
    assert sorted(key for key in mirrored._compiled if key[0] == "gradients") == [("gradients", 0),
                                                                                  ("gradients", 1)]
    traces = mirrored.traces["gradients"]
    assert traces == 2  # once per replica, not once per step
    mirrored.fit(_data(num=8), verbose=0)  # two more steps: no new trace
    assert mirrored.traces["gradients"] == traces


def test_mixed_bfloat16_trains_per_replica_with_xla_close_to_float32(trained_pair):
    # The same start and data as the float32 pair, under mixed_bfloat16 on 2 replicas with XLA.
    _, mirrored, _ = _pair("mixed_bfloat16")
    assert mirrored.network.dtype_policy.name == "mixed_bfloat16"
    losses = mirrored.fit(_data(num=12), verbose=0).history["loss"]
    assert mirrored._xla_per_replica and np.all(np.isfinite(losses))
    # bfloat16 activations keep 8 bits of mantissa: the epoch's loss agrees to a few percent.
    assert losses[0] == pytest.approx(trained_pair[0].first_loss, rel=0.05)


# ---------------------------------------------------- sampling, evaluation
@pytest.mark.parametrize("sampler, jit_compile, options", [
    ("ddpm", True, {}),  # each replica's sampling loop compiled with XLA
    ("ddim", False, {"eta": 1.0}),
    ("dpmpp_2m_sde", False, {}),
    ("euler_ancestral", False, {}),
])
def test_distributed_generate_equals_one_device(trained_pair, sampler, jit_compile, options):
    # 3 images on 2 replicas (2 and 1); every stochastic step draws its noise for the whole batch
    # (euler_ancestral stands for the EDM family: heun and euler with churn share its loop).
    single, mirrored, _ = trained_pair
    kwargs = dict(sampler=sampler, num_steps=3, seed=11, labels=[0, 2, 1], guidance_scale=2.0,
                  jit_compile=jit_compile, options=options)
    expected = single.generate(3, **kwargs)
    mirrored.ema_network.set_weights(single.ema_network.get_weights())
    got = mirrored.generate(3, **kwargs)
    assert got.shape == (3, 8, 8, 3)
    np.testing.assert_array_equal(got, expected)


def test_distributed_bits_per_dim_equals_one_device(trained_pair):
    # 5 images in batches of 2: the last global batch (1 image) splits unevenly across replicas.
    single, mirrored, _ = trained_pair
    mirrored.ema_network.set_weights(single.ema_network.get_weights())
    images = (np.random.default_rng(3).integers(0, 256, (5, 8, 8, 3)) / 127.5 - 1).astype(np.float32)
    data = tf.data.Dataset.from_tensor_slices((images, np.array([0, 1, 2, 0, 1], np.int32))).batch(2)
    results = []
    for model in (single, mirrored):
        model.set_bpd_evaluation(4)
        model.set_evaluation_seed(5)
        results.append(model.evaluate(data, verbose=0, return_dict=True))
        model.set_bpd_evaluation(0)
    assert results[0]["bpd"] == pytest.approx(results[1]["bpd"], rel=1e-5)
    assert results[0]["loss"] == pytest.approx(results[1]["loss"], rel=1e-5)


def test_mixed_float16_and_bfloat16_loss_curves_follow_float32_on_the_shapes_data():
    # set_precision refuses fp16 without a GPU (slow kernels); Keras' policy itself runs here, with
    # the loss scaling of a LossScaleOptimizer that compile adds.
    images, labels = tfdiff.make_shapes(16, 8, seed=0)
    images = (images / 127.5 - 1).astype(np.float32)
    data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(4, drop_remainder=True)
    curves = {}
    for policy in ("float32", "mixed_float16", "mixed_bfloat16"):
        keras.mixed_precision.set_global_policy(policy)
        try:
            keras.utils.set_random_seed(0)
            unet = tfdiff.UNet(image_size=8, in_channels=3, base_channels=8, channel_mult=(1, 2),
                               num_res_blocks=1, attention_resolutions=(4,), dropout=0.0, num_classes=8,
                               num_groups=4)
            model = tfdiff.DiffusionModel(unet, tfdiff.GaussianDiffusion(tfdiff.get_beta_schedule("cosine", T)))
            model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=False)
        finally:
            keras.mixed_precision.set_global_policy("float32")
        steps = []
        model.fit(data, verbose=0, callbacks=[keras.callbacks.LambdaCallback(
            on_train_batch_end=lambda batch, logs: steps.append(float(logs["loss"])))])
        curves[policy] = np.array(steps)
        if policy == "mixed_float16":
            assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert len(curves["float32"]) == 4
    for policy in ("mixed_float16", "mixed_bfloat16"):
        assert np.all(np.isfinite(curves[policy])), policy
        np.testing.assert_allclose(curves[policy], curves["float32"], rtol=0.05, err_msg=policy)
