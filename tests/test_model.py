"""DiffusionModel: fit, EMA, save/load, checkpoints, generate, evaluate, distribution, bad input."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfdiffusion as tfdiff
from tfdiffusion import timestep_sampling
from tests import strategies
from tests.nn.layer_checks import perturb_weights

T = 20
NUM_CLASSES = 3


def _unet(num_classes=NUM_CLASSES, **kwargs):
    return tfdiff.UNet(image_size=8, in_channels=3, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                       attention_resolutions=(4,), dropout=0.0, num_classes=num_classes, num_groups=4, **kwargs)


def _model(num_classes=NUM_CLASSES, num_timesteps=T, **kwargs):
    diffusion = tfdiff.GaussianDiffusion(tfdiff.get_beta_schedule("cosine", num_timesteps))
    model = tfdiff.DiffusionModel(_unet(num_classes), diffusion, ema_decay=0.9, **kwargs)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    return model


def _data(num=8, batch=4, labels=True, seed=0):
    rng = np.random.default_rng(seed)
    images = (rng.integers(0, 256, (num, 8, 8, 3)) / 127.5 - 1).astype(np.float32)
    ys = rng.integers(0, NUM_CLASSES, num).astype(np.int32)
    ds = tf.data.Dataset.from_tensor_slices((images, ys) if labels else images)
    return ds.batch(batch, drop_remainder=True)


def _weights(layer):
    return [w.numpy().copy() for w in layer.weights]


@pytest.fixture(scope="module")
def trained():
    """A conditional model after one step, with its weights before and after."""
    model = _model()
    # Zero-initialised output layers pass no gradient upstream at step 1: perturb them.
    perturb_weights(model.network, scale=0.05)
    model.ema_network.set_weights(model.network.get_weights())
    before = _weights(model.network)
    np.testing.assert_array_equal(np.concatenate([w.ravel() for w in before]),
                                  np.concatenate([w.ravel() for w in _weights(model.ema_network)]))
    history = model.fit(_data().take(1), epochs=1, verbose=0, shuffle=False)
    return dict(model=model, before=before, after=_weights(model.network),
                ema=_weights(model.ema_network), history=history.history)


def test_fit_reports_losses(trained):
    for key in ("loss", "mse", "vb"):
        assert np.isfinite(trained["history"][key][0])


def test_one_step_ema_follows_warmup_formula(trained):
    # Update n = 1: decay = min(0.9, (1 + 1) / (10 + 1)); ema = d * w_0 + (1 - d) * w_1.
    decay = min(0.9, 2 / 11)
    changed = 0
    for w0, w1, ema in zip(trained["before"], trained["after"], trained["ema"]):
        np.testing.assert_allclose(ema, decay * w0 + (1 - decay) * w1, rtol=1e-5, atol=1e-7)
        changed += int(not np.array_equal(w0, w1))
    assert changed > 10  # the step trained most weights


def test_second_fit_continues_from_trained_weights(trained):
    model = trained["model"]
    # fit did not copy the averages over the trained weights (as optimizer use_ema would)
    for w, after in zip(model.network.weights, trained["after"]):
        np.testing.assert_array_equal(w.numpy(), after)
    model.fit(_data(seed=1).take(1), epochs=1, verbose=0, shuffle=False)
    assert int(model.optimizer.iterations.numpy()) == 2
    assert any(not np.array_equal(w.numpy(), a) for w, a in zip(model.network.weights, trained["after"]))


def test_generate_is_uint8_seeded_and_uses_labels(trained):
    model = trained["model"]
    images = model.generate(4, num_steps=3, seed=1)
    assert images.shape == (4, 8, 8, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images, model.generate(4, num_steps=3, seed=1))
    assert not np.array_equal(images, model.generate(4, num_steps=3, seed=2))
    assert not np.array_equal(images, model.generate(4, num_steps=3, seed=1, labels=[2, 2, 2, 2]))
    # batch_size splits the work: the first chunk is the same images.
    np.testing.assert_array_equal(model.generate(4, num_steps=3, seed=1, batch_size=2)[:2],
                                  model.generate(2, num_steps=3, seed=1))


def test_generate_ddpm_with_guidance(trained):
    images = trained["model"].generate(2, sampler="ddpm", num_steps=4, seed=0, guidance_scale=2.0,
                                       jit_compile=False)
    assert images.shape == (2, 8, 8, 3) and images.dtype == np.uint8


def test_keras_save_load_round_trip(trained, tmp_path):
    model = trained["model"]
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, tfdiff.DiffusionModel)
    assert loaded.diffusion.num_timesteps == T and loaded.num_classes == NUM_CLASSES
    for a, b in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert int(loaded.optimizer.iterations.numpy()) == int(model.optimizer.iterations.numpy())
    np.testing.assert_array_equal(loaded.generate(4, num_steps=3, seed=5), model.generate(4, num_steps=3, seed=5))


def test_model_checkpoint_and_timestep_mismatch(trained, tmp_path):
    model = trained["model"]
    path = str(tmp_path / "ckpt.weights.h5")
    callback = keras.callbacks.ModelCheckpoint(path, save_weights_only=True)
    model.fit(_data(seed=2).take(1), epochs=1, verbose=0, shuffle=False, callbacks=[callback])
    fresh = _model()
    fresh.load_weights(path)
    for a, b in zip(model.network.weights + model.ema_network.weights,
                    fresh.network.weights + fresh.ema_network.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    with pytest.raises(ValueError, match="trained with a diffusion of 20 timesteps.*has 30"):
        _model(num_timesteps=30).load_weights(path)


def test_evaluate_reports_bits_per_dim(trained):
    model = trained["model"]
    model.set_bpd_evaluation(4)
    results = model.evaluate(_data(seed=3), verbose=0, return_dict=True)
    assert np.isfinite(results["bpd"]) and results["bpd"] > 0
    model.set_bpd_evaluation(0)
    assert "bpd" not in model.evaluate(_data(seed=3), verbose=0, return_dict=True)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(num_images=0), ValueError, "num_images"),
    (dict(num_images=2.0), TypeError, "num_images"),
    (dict(num_steps=0), ValueError, r"`num_steps` must be an integer in \[1, 20\]"),
    (dict(num_steps=21), ValueError, r"`num_steps` must be an integer in \[1, 20\]"),
    (dict(sampler="euler-maruyama"), ValueError, "sampler"),
    (dict(labels=[0, 1]), ValueError, "4 integers"),
    (dict(labels=[0, 1, 2, 3]), ValueError, r"in \[0, 3\)"),
    (dict(labels=[0, 1, 2, -1]), ValueError, r"in \[0, 3\)"),
    (dict(labels=[0.5, 1.7, 0.0, 1.0]), TypeError, "labels"),
    (dict(seed=1.5), TypeError, "seed"),
    (dict(seed=True), TypeError, "seed"),
    (dict(guidance_scale=float("nan")), ValueError, "guidance_scale"),
    (dict(guidance_scale=float("inf")), ValueError, "guidance_scale"),
    (dict(eta=float("nan")), ValueError, "eta"),
    (dict(eta=-1.0), ValueError, "eta"),
    (dict(sampler="ddpm", eta=0.5), ValueError, "'ddpm' takes no options"),
])
def test_generate_bad_arguments(trained, kwargs, error, match):
    kwargs = {"num_images": 4, "num_steps": 3, **kwargs}
    with pytest.raises(error, match=match):
        trained["model"].generate(**kwargs)


def test_unconditional_model_rejects_labels_and_guidance():
    model = _model(num_classes=None)
    with pytest.raises(ValueError, match="unconditional"):
        model.generate(2, num_steps=2, labels=[0, 1])
    with pytest.raises(ValueError, match="guidance_scale"):
        model.generate(2, num_steps=2, guidance_scale=3.0)
    with pytest.raises(ValueError, match="yields labels"):
        model.fit(_data(labels=True), verbose=0)


@pytest.mark.parametrize("images, labels, error, match", [
    (np.zeros([4, 8, 8, 1]), [0, 0, 0, 0], ValueError, r"shape \[B, 8, 8, 3\]"),
    (np.zeros([4, 8, 8]), [0, 0, 0, 0], ValueError, r"shape \[B, 8, 8, 3\]"),
    (np.zeros([4, 8, 8, 3], np.uint8), [0, 0, 0, 0], TypeError, "float images"),
    (np.full([4, 8, 8, 3], 3.0), [0, 0, 0, 0], ValueError, r"\[-1, 1\]"),
    (np.full([4, 8, 8, 3], np.nan), [0, 0, 0, 0], ValueError, "NaN"),
    (np.zeros([4, 8, 8, 3]), [0, 1, 2, 3], ValueError, r"labels.*\[0, 3\)"),
    (np.zeros([4, 8, 8, 3]), [0.5, 1.7, 0.0, 1.0], TypeError, "integer labels"),
    (np.zeros([4, 8, 8, 3]), None, ValueError, "yields no labels"),
])
def test_fit_rejects_bad_batches(images, labels, error, match):
    model = _model()
    model.compile(optimizer=keras.optimizers.Adam(1e-2), run_eagerly=True)  # the same checks, no tracing
    before = _weights(model.network)
    images = images if images.dtype == np.uint8 else images.astype(np.float32)
    labels = None if labels is None else np.array(labels)
    data = images if labels is None else (images, labels if labels.dtype.kind == "f" else labels.astype(np.int32))
    with pytest.raises(error, match=match):
        model.fit(tf.data.Dataset.from_tensors(data), verbose=0)
    for w, b in zip(model.network.weights, before):  # nothing was trained
        np.testing.assert_array_equal(w.numpy(), b)


def test_bad_constructor_arguments():
    diffusion = tfdiff.GaussianDiffusion(tfdiff.get_beta_schedule("cosine", T))
    with pytest.raises(ValueError, match="ema_decay"):
        tfdiff.DiffusionModel(_unet(), diffusion, ema_decay=1.5)
    with pytest.raises(ValueError, match="timestep_sampler"):
        tfdiff.DiffusionModel(_unet(), diffusion, timestep_sampler="importance")
    with pytest.raises(TypeError, match="GaussianDiffusion"):
        tfdiff.DiffusionModel(_unet(), "linear")


def test_label_dropout_rate():
    model = _model(label_dropout=0.3)
    labels = tf.zeros([20000], tf.int32)
    dropped = model._drop_labels(labels, tf.constant([1, 2], tf.int64), None).numpy()
    assert set(np.unique(dropped)) == {0, NUM_CLASSES}
    # 20000 draws: standard error of the rate 0.0032.
    assert np.mean(dropped == NUM_CLASSES) == pytest.approx(0.3, abs=0.015)


def test_loss_second_moment_sampler_against_numpy():
    sampler = timestep_sampling.LossSecondMomentTimesteps(4, history=2, uniform_prob=0.1)
    uniform_t, uniform_w = sampler.sample(1000, tf.constant([0, 1], tf.int64))
    np.testing.assert_allclose(uniform_w, 1.0)  # not warm yet: uniform, weight 1
    for losses in ([1.0, 2.0, 3.0, 4.0], [3.0, 2.0, 1.0, 0.0]):
        sampler.update(tf.constant([0, 1, 2, 3]), tf.constant(losses))
    history = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0], [4.0, 0.0]])
    weights = np.sqrt((history ** 2).mean(axis=1))
    expected = weights / weights.sum() * 0.9 + 0.1 / 4
    np.testing.assert_allclose(sampler.probabilities(), expected, rtol=1e-6)
    t, w = sampler.sample(40000, tf.constant([3, 4], tf.int64))
    counts = np.bincount(t.numpy(), minlength=4) / 40000
    np.testing.assert_allclose(counts, expected, atol=0.01)
    np.testing.assert_allclose(w, 1 / (4 * expected[t.numpy()]), rtol=1e-5)


def test_fit_with_xla_and_importance_sampled_kl_loss():
    # One XLA compilation covers the kl loss and the loss-second-moment sampler's state updates.
    diffusion = tfdiff.GaussianDiffusion(tfdiff.get_beta_schedule("cosine", T), loss_type="kl")
    model = tfdiff.DiffusionModel(_unet(), diffusion, timestep_sampler="loss-second-moment")
    model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=True)
    history = model.fit(_data(num=16).repeat(3), verbose=0)
    assert np.isfinite(history.history["loss"][0])
    counts = model.timestep_sampler.loss_counts.numpy()
    assert counts.sum() >= 6 and np.isfinite(model.timestep_sampler.loss_history.numpy()).all()
    assert np.abs(model.timestep_sampler.loss_history.numpy()).sum() > 0


def test_two_replicas_train_exactly_like_one_device():
    # One SGD step on a global batch of 4: 2 replicas x 2 examples against 1 device x 4. Noise,
    # timesteps and label dropout come from each example's global index, and the loss is averaged
    # over the global batch, so the weights (and EMA) agree; dividing by the per-replica batch
    # would double the update.
    keras.utils.set_random_seed(0)
    single = _model(label_dropout=0.5)
    perturb_weights(single.network, scale=0.05)
    initial = single.network.get_weights()
    single.ema_network.set_weights(initial)
    single.compile(optimizer=keras.optimizers.SGD(0.1))
    strategy = strategies.two_cpu_replicas()
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
        mirrored = _model(label_dropout=0.5)
        mirrored.network.set_weights(initial)
        mirrored.ema_network.set_weights(initial)
        mirrored.compile(optimizer=keras.optimizers.SGD(0.1))
    single.fit(_data(num=4, batch=4), verbose=0)
    mirrored.fit(_data(num=4, batch=4), verbose=0)
    assert int(mirrored.optimizer.iterations.numpy()) == 1
    moved = 0
    for a, b, w0 in zip(single.network.weights, mirrored.network.weights, initial):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-4, atol=1e-6)
        moved += int(not np.allclose(a.numpy(), w0))
    assert moved > 10
    for a, b in zip(single.ema_network.weights, mirrored.ema_network.weights):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-4, atol=1e-6)
        for replica_value in b.value.values:  # every replica holds the same average
            np.testing.assert_array_equal(replica_value.numpy(), b.numpy())
    for variable in mirrored.network.trainable_variables:
        replicas = variable.value.values
        np.testing.assert_array_equal(replicas[0].numpy(), replicas[1].numpy())
    assert mirrored.generate(2, num_steps=2, seed=0).shape == (2, 8, 8, 3)


# ----------------------------------------------------- fixed bugs (issue 7)
def _sgd_step_update(policy, initial_scale=2.0 ** 10):
    """The weight change of one SGD step from fixed weights, data and seed under `policy`."""
    keras.mixed_precision.set_global_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        model = _model()
        perturb_weights(model.network, scale=0.05)
        optimizer = keras.optimizers.SGD(0.1)
        if policy == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer, initial_scale=initial_scale)
        model.compile(optimizer=optimizer)
        before = [w.numpy().astype(np.float64) for w in model.network.trainable_weights]
        model.fit(_data(batch=4).take(1), verbose=0)
        after = [w.numpy().astype(np.float64) for w in model.network.trainable_weights]
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(after, before)))


def test_mixed_float16_step_moves_weights_as_far_as_float32():
    # Bug: the loss was never scaled, so the LossScaleOptimizer divided true gradients by its
    # scale (2^10 here): the update came out ~1000x too small.
    full, mixed = _sgd_step_update("float32"), _sgd_step_update("mixed_float16")
    assert full > 0
    # float16 activations: a few percent of difference, not orders of magnitude.
    assert mixed == pytest.approx(full, rel=0.05)


def test_set_evaluation_seed_takes_effect_after_the_first_evaluate(trained):
    model = trained["model"]
    seed_before = model.seed

    def loss_with(seed):
        model.set_evaluation_seed(seed)
        return model.evaluate(_data(seed=3), verbose=0, return_dict=True)["loss"]

    first, other, again = loss_with(0), loss_with(1), loss_with(0)
    assert first == again and first != other
    assert model.seed == seed_before and model.get_config()["seed"] == seed_before  # training seed kept


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_generate_one_image_and_batches_that_do_not_divide(trained, sampler):
    model = trained["model"]
    for jit in (False, True):
        one = model.generate(1, sampler=sampler, num_steps=2, seed=3, jit_compile=jit)
        assert one.shape == (1, 8, 8, 3) and one.dtype == np.uint8
    five = model.generate(5, sampler=sampler, num_steps=2, seed=3, batch_size=2, jit_compile=False)
    assert five.shape == (5, 8, 8, 3)
    # Each batch's noise comes from the seed and the batch's first index: the first batch of 2
    # is generate(2), the last (one image) is as reproducible as the rest.
    np.testing.assert_array_equal(five[:2], model.generate(2, sampler=sampler, num_steps=2, seed=3,
                                                           jit_compile=False))
    np.testing.assert_array_equal(five, model.generate(5, sampler=sampler, num_steps=2, seed=3, batch_size=2,
                                                       jit_compile=False))


def test_summary_works_fresh_and_loaded(trained, tmp_path, capsys):
    model = trained["model"]
    path = str(tmp_path / "m.keras")
    model.save(path)
    for m in (model, keras.models.load_model(path)):
        m.summary()
        text = capsys.readouterr().out
        assert m.ema_network.name == f"{m.network.name}_ema"
        assert f"{m.network.name} (UNet)" in text and f"{m.ema_network.name} (UNet)" in text
        assert "Total params" in text


@keras.saving.register_keras_serializable(package="tfdiffusion_tests")
class NullLabelCounter(keras.Model):
    """A tiny conditional network that counts the null labels it is trained on."""

    image_size, in_channels, num_classes, null_label = 8, 3, NUM_CLASSES, NUM_CLASSES

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv = keras.layers.Conv2D(3, 3, padding="same")
        self.embed = keras.layers.Embedding(NUM_CLASSES + 1, 3)
        self.null_seen = self.add_weight(shape=(), initializer="zeros", trainable=False, name="null_seen")

    def build(self, input_shape):
        self.conv.build(input_shape)
        self.embed.build((None,))

    def call(self, x, t, y=None, training=None):
        if training:
            self.null_seen.assign_add(tf.reduce_sum(tf.cast(tf.equal(y, self.null_label), tf.float32)))
        return self.conv(x) + self.embed(y)[:, None, None, :]


def test_fit_applies_label_dropout():
    # 64 labels at dropout 0.5: 32 null labels expected (binomial std 4); a fit that skipped
    # the dropout would show none.
    diffusion = tfdiff.GaussianDiffusion(tfdiff.get_beta_schedule("cosine", T))
    model = tfdiff.DiffusionModel(NullLabelCounter(), diffusion, label_dropout=0.5)
    model.compile(optimizer=keras.optimizers.SGD(1e-3))
    model.fit(_data(num=64, batch=64), verbose=0)
    assert 16 <= float(model.network.null_seen.numpy()) <= 48


def test_conditional_network_without_null_label_needs_no_dropout():
    class NoNull(NullLabelCounter):
        null_label = None

    diffusion = tfdiff.GaussianDiffusion(tfdiff.get_beta_schedule("cosine", T))
    with pytest.raises(ValueError, match="no `null_label` attribute.*label_dropout=0.0"):
        tfdiff.DiffusionModel(NoNull(), diffusion)
    tfdiff.DiffusionModel(NoNull(), diffusion, label_dropout=0.0)  # fine without guidance


def test_guidance_without_trained_null_label_warns():
    model = _model(label_dropout=0.0)
    with pytest.warns(UserWarning, match="label_dropout=0"):
        model.generate(2, num_steps=1, guidance_scale=2.0, jit_compile=False)


# --------------------------------------------------- bad input (issue 8)
def test_second_fit_on_another_image_size_is_refused_before_training(trained):
    model = trained["model"]
    before = _weights(model.network)
    other = tf.data.Dataset.from_tensor_slices((np.zeros([4, 16, 16, 3], np.float32),
                                                np.zeros([4], np.int32))).batch(4)
    with pytest.raises(ValueError, match=r"images of shape \[B, 8, 8, 3\].*\(None, 16, 16, 3\)"):
        model.fit(other, verbose=0)
    for w, b in zip(model.network.weights, before):
        np.testing.assert_array_equal(w.numpy(), b)


def test_errors_inside_the_compiled_step_come_with_their_message_first():
    # The first batch is fine (checked eagerly before training); the second has a label out of
    # range, found by the in-graph check of the (non-XLA) train step.
    model = _model()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=False)
    labels = np.array([0, 1, 2, 0, 0, 1, 2, 7], np.int32)
    images = (np.random.default_rng(0).integers(0, 256, (8, 8, 8, 3)) / 127.5 - 1).astype(np.float32)
    with pytest.raises(ValueError, match=r"^`labels` must be in \[0, 3\).*checked in the compiled step") as info:
        model.fit(tf.data.Dataset.from_tensor_slices((images, labels)).batch(4), verbose=0)
    assert "Graph execution error" not in str(info.value)
