"""DiffusionModel: fit, EMA, save/load, checkpoints, generate, evaluate, distribution, bad input."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfdiffusion as tfdiff
from tfdiffusion import timestep_sampling
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


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_images=0), "num_images"),
    (dict(num_steps=0), "between 1 and 20"),
    (dict(num_steps=21), "between 1 and 20"),
    (dict(sampler="euler"), "sampler"),
    (dict(labels=[0, 1]), "4 integers"),
    (dict(labels=[0, 1, 2, 3]), r"in \[0, 3\)"),
    (dict(labels=[0, 1, 2, -1]), r"in \[0, 3\)"),
])
def test_generate_bad_arguments(trained, kwargs, match):
    kwargs = {"num_images": 4, "num_steps": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
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
    (np.full([4, 8, 8, 3], 3.0), [0, 0, 0, 0], tf.errors.InvalidArgumentError, r"\[-1, 1\]"),
    (np.zeros([4, 8, 8, 3]), [0, 1, 2, 3], tf.errors.InvalidArgumentError, "num_classes=3"),
    (np.zeros([4, 8, 8, 3]), None, ValueError, "yields no labels"),
])
def test_fit_rejects_bad_batches(images, labels, error, match):
    model = _model()
    model.compile(optimizer=keras.optimizers.Adam(1e-2), run_eagerly=True)  # the same checks, no tracing
    before = _weights(model.network)
    images = images if images.dtype == np.uint8 else images.astype(np.float32)
    data = images if labels is None else (images, np.array(labels, np.int32))
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
    dropped = model._drop_labels(labels, tf.constant([1, 2], tf.int64)).numpy()
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
    counts = model.sampler.loss_counts.numpy()
    assert counts.sum() >= 6 and np.isfinite(model.sampler.loss_history.numpy()).all()
    assert np.abs(model.sampler.loss_history.numpy()).sum() > 0


def test_fit_under_mirrored_strategy():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
        model = _model()
    before = _weights(model.network)
    model.fit(_data(num=8, batch=4), verbose=0)  # two global batches of 4: 2 per replica
    assert int(model.optimizer.iterations.numpy()) == 2
    for w, w0, ema in zip(model.network.weights, before, model.ema_network.weights):
        assert np.all(np.isfinite(w.numpy()))
        # The EMA moved off the initial value wherever the trained weights did.
        if not np.array_equal(w.numpy(), w0):
            assert not np.array_equal(ema.numpy(), w0)
        for replica_value in ema.value.values:  # every replica holds the same average
            np.testing.assert_array_equal(replica_value.numpy(), ema.numpy())
    for variable in model.network.trainable_variables:
        replicas = variable.value.values
        np.testing.assert_array_equal(replicas[0].numpy(), replicas[1].numpy())
    assert model.generate(2, num_steps=2, seed=0).shape == (2, 8, 8, 3)
