"""What `DiffusionModel.fit` and `evaluate` take besides images and labels: per-example sample weights (Keras'
"sum_over_batch_size" convention, on one device, under XLA, across two replicas, under mixed precision),
data sets without static shapes (`Dataset.from_generator`), and `validation_data` checked before training.

Most tests use `ScaledInput`, a network whose output is known in closed form (eps_hat = scale * x_t + bias),
so that the loss and the gradient of one SGD step can be recomputed in float64 from the x_t and t it saw.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfdiffusion as tfdiff
from tfdiffusion import timestep_sampling
from tests import strategies

T = 10
NUM_CLASSES = 3
LEARNING_RATE = 0.1


@keras.saving.register_keras_serializable(package="tfdiffusion_tests")
class ScaledInput(keras.Model):
    """eps_hat = scale * x_t + bias (two trainable scalars); with `record`, keeps the last training call's x_t, t.

    `from_input=False` drops the input: eps_hat = bias, the same whatever noise and timestep were drawn.
    """

    image_size, in_channels = 8, 3

    def __init__(self, num_classes=None, batch=4, record=True, from_input=True, **kwargs):
        super().__init__(**kwargs)
        self.num_classes, self.null_label = num_classes, num_classes
        self.batch, self.record, self.from_input = batch, record, from_input
        self.scale = self.add_weight(shape=(), initializer=keras.initializers.Constant(0.3), name="scale")
        self.bias = self.add_weight(shape=(), initializer=keras.initializers.Constant(0.1), name="bias")
        if record:
            self.seen_x = self.add_weight(shape=(batch, 8, 8, 3), initializer="zeros", trainable=False,
                                          name="seen_x")
            # float32 (the EMA moves every weight with a float kernel); timesteps < 2^24 are exact
            self.seen_t = self.add_weight(shape=(batch,), initializer="zeros", trainable=False, name="seen_t")

    def build(self, input_shape):
        self.built = True

    def call(self, x, t, y=None, training=None):
        if training and self.record:
            self.seen_x.assign(tf.cast(x, tf.float32))
            self.seen_t.assign(tf.cast(t, tf.float32))
        out = self.scale * x + self.bias if self.from_input else self.bias * tf.ones_like(x)
        return tf.cast(out, tf.float32)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "batch": self.batch,
                "record": self.record, "from_input": self.from_input}


def _model(network=None, optimizer=None, jit_compile=False, **kwargs):
    diffusion = tfdiff.GaussianDiffusion(tfdiff.get_beta_schedule("cosine", T),
                                         model_mean_type=kwargs.pop("model_mean_type", "epsilon"))
    model = tfdiff.DiffusionModel(network or ScaledInput(NUM_CLASSES), diffusion, ema_decay=0.9,
                                  label_dropout=0.0, **kwargs)
    model.compile(optimizer=optimizer or keras.optimizers.SGD(LEARNING_RATE), jit_compile=jit_compile)
    return model


def _images(n=4, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n, 8, 8, 3)) / 127.5 - 1).astype(np.float32)


LABELS = np.array([0, 1, 2, 0], np.int32)
WEIGHTS = np.array([0.0, 0.5, 1.0, 3.5], np.float32)  # sum 5, not B: the divisor shows


def _batches(*parts):
    return tf.data.Dataset.from_tensor_slices(tuple(parts)).batch(len(parts[0]))


def _float64_step(model, images, weights, scale, bias):
    """Per-example losses, the loss and d loss / d (scale, bias) of the step just taken, in float64.

    The noise is recovered from the x_t the network saw: x_t = sqrt(abar) x_0 + sqrt(1 - abar) noise.
    """
    abar = np.asarray(model.diffusion.alphas_cumprod, np.float64)[model.network.seen_t.numpy().astype(np.int64)]
    x_t = model.network.seen_x.numpy().astype(np.float64)
    x_0 = images.astype(np.float64)
    noise = (x_t - np.sqrt(abar)[:, None, None, None] * x_0) / np.sqrt(1 - abar)[:, None, None, None]
    residual = noise - (scale * x_t + bias)
    per_example = np.mean(residual ** 2, axis=(1, 2, 3))
    w = weights.astype(np.float64)
    batch = len(w)
    loss = np.sum(w * per_example) / batch  # Keras' "sum_over_batch_size" with sample_weight
    d_scale = np.sum(w * np.mean(-2 * x_t * residual, axis=(1, 2, 3))) / batch
    d_bias = np.sum(w * np.mean(-2 * residual, axis=(1, 2, 3))) / batch
    return per_example, loss, d_scale, d_bias


# ------------------------------------------------------------ sample weights
@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "xla"])
def test_weighted_loss_and_gradient_match_float64(jit_compile):
    model = _model(jit_compile=jit_compile)
    images = _images()
    history = model.fit(_batches(images, LABELS, WEIGHTS), verbose=0)
    per_example, loss, d_scale, d_bias = _float64_step(model, images, WEIGHTS, 0.3, 0.1)
    assert per_example.min() > 0.05  # every example has a loss of its own to weight
    # float32 step against float64 (the noise is recovered from float32 x_t): 1e-4 relative.
    np.testing.assert_allclose(history.history["loss"][0], loss, rtol=1e-4)
    np.testing.assert_allclose(model.network.scale.numpy(), 0.3 - LEARNING_RATE * d_scale, rtol=1e-5)
    np.testing.assert_allclose(model.network.bias.numpy(), 0.1 - LEARNING_RATE * d_bias, rtol=1e-5)
    # Not the unweighted mean, nor the weighted mean over sum(w) (Keras' "mean_with_sample_weight").
    assert abs(loss - per_example.mean()) > 1e-2 and abs(loss - np.sum(WEIGHTS * per_example) / WEIGHTS.sum()) > 1e-2


def test_all_zero_weights_give_loss_zero_and_leave_the_weights():
    # Unconditional, weights as Keras' (images, None, sample_weight). A fresh Adam's update of a zero gradient
    # is exactly zero, and the EMA of unmoved weights stays put; the step itself still counts.
    model = _model(ScaledInput(record=False), optimizer=keras.optimizers.Adam(1e-2))
    history = model.fit(_batches(_images(), None, np.zeros(4, np.float32)), verbose=0)
    assert history.history["loss"][0] == 0.0 and history.history["mse"][0] == 0.0
    assert int(model.optimizer.iterations.numpy()) == 1
    for weight, ema in zip(model.network.trainable_weights, model.ema_network.trainable_weights):
        assert weight.numpy() == ema.numpy() == np.float32(0.3 if weight.name == "scale" else 0.1)
    # The same batch with weight 1 trains.
    model.fit(_batches(_images(), None, np.ones(4, np.float32)), verbose=0)
    assert model.network.scale.numpy() != np.float32(0.3)


def test_a_duplicated_example_weighs_as_one_copy_of_weight_two():
    # x_0 prediction by a constant: each example's loss is mean((x_0 - bias)^2), whatever t and noise were drawn.
    def step(images, weights):
        model = _model(ScaledInput(record=False, from_input=False), model_mean_type="x0")
        loss = model.fit(_batches(images, None, weights), verbose=0).history["loss"][0]
        return loss, float(model.network.bias.numpy())

    a, b, c, d = _images(4, seed=1)
    twice = step(np.stack([a, a, b, c]), np.ones(4, np.float32))
    double = step(np.stack([a, b, c, d]), np.array([2, 1, 1, 0], np.float32))
    np.testing.assert_allclose(double, twice, rtol=1e-6)
    per_example = [np.mean((x.astype(np.float64) - 0.1) ** 2) for x in (a, b, c)]
    np.testing.assert_allclose(twice[0], (2 * per_example[0] + per_example[1] + per_example[2]) / 4, rtol=1e-5)


def test_two_replicas_average_the_weighted_loss_over_the_global_batch():
    # Replica 0 holds weights (0, 0.5), replica 1 (1, 3.5): dividing by a replica's own batch or weights
    # would change the step. Each replica's part is XLA-compiled on its own device.
    images = _images()
    single = _model(jit_compile=True)  # XLA's draws, as the replicas'
    expected = single.fit(_batches(images, LABELS, WEIGHTS), verbose=0).history["loss"][0]
    np.testing.assert_allclose(expected, _float64_step(single, images, WEIGHTS, 0.3, 0.1)[1], rtol=1e-4)
    strategy = strategies.two_cpu_replicas()
    with strategy.scope():
        mirrored = _model(ScaledInput(NUM_CLASSES, record=False), jit_compile=True)
    history = mirrored.fit(_batches(images, LABELS, WEIGHTS), verbose=0)
    assert mirrored.traces["gradients"] == 2  # one XLA-compiled part per replica
    np.testing.assert_allclose(history.history["loss"][0], expected, rtol=1e-5)
    for name in ("scale", "bias"):
        np.testing.assert_allclose(getattr(mirrored.network, name).numpy(), getattr(single.network, name).numpy(),
                                   rtol=1e-6)
    assert mirrored.network.scale.numpy() != pytest.approx(0.3)


def test_mixed_float16_honours_the_weights():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = _model(optimizer=keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(LEARNING_RATE)))
        images = _images()
        history = model.fit(_batches(images, LABELS, WEIGHTS), verbose=0)
        zero = _model(optimizer=keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(LEARNING_RATE)))
        zero_history = zero.fit(_batches(images, LABELS, np.zeros(4, np.float32)), verbose=0)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    _, loss, d_scale, _ = _float64_step(model, images, WEIGHTS, 0.3, 0.1)
    # float16 activations (x_t and scale * x_t): about 1e-3 relative.
    np.testing.assert_allclose(history.history["loss"][0], loss, rtol=1e-2)
    np.testing.assert_allclose(0.3 - model.network.scale.numpy(), LEARNING_RATE * d_scale, rtol=1e-2)
    assert zero_history.history["loss"][0] == 0.0 and zero.network.scale.numpy() == np.float32(0.3)


def test_class_weight_becomes_per_example_weights():
    # Keras turns `class_weight` into sample weights from the labels: the same step as explicit weights.
    images = _images()
    by_class = _model()
    loss = by_class.fit(_batches(images, LABELS), class_weight={0: 2.0, 1: 0.0, 2: 1.0},
                        verbose=0).history["loss"][0]
    weights = np.array([2, 0, 1, 2], np.float32)  # of LABELS (0, 1, 2, 0)
    np.testing.assert_allclose(loss, _float64_step(by_class, images, weights, 0.3, 0.1)[1], rtol=1e-4)
    explicit = _model(ScaledInput(NUM_CLASSES, record=False))
    expected = explicit.fit(_batches(images, LABELS, weights), verbose=0).history["loss"][0]
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    np.testing.assert_allclose(by_class.network.scale.numpy(), explicit.network.scale.numpy(), rtol=1e-6)


def test_evaluate_weighs_the_loss_and_averages_the_bound():
    model = _model(ScaledInput(NUM_CLASSES, record=False))
    model.set_bpd_evaluation(3)
    images = _images()

    def evaluate(*weights):
        model.set_evaluation_seed(0)  # the same timesteps and noise each time
        return model.evaluate(_batches(images, LABELS, *weights), verbose=0, return_dict=True)

    plain, twice, zero = evaluate(), evaluate(np.full(4, 2.0, np.float32)), evaluate(np.zeros(4, np.float32))
    assert plain["loss"] > 0
    np.testing.assert_allclose(twice["loss"], 2 * plain["loss"], rtol=1e-6)
    assert zero["loss"] == 0.0
    # The bound in bits/dim is a weighted mean: scaling every weight leaves it.
    np.testing.assert_allclose(twice["bpd"], plain["bpd"], rtol=1e-6)


def test_loss_aware_timestep_sampler_does_not_record_zero_weight_examples():
    sampler = timestep_sampling.LossSecondMomentTimesteps(4, history=2)
    sampler.update(tf.constant([0, 1, 1, 2]), tf.constant([1.0, 2.0, 3.0, 4.0]),
                   tf.constant([True, True, True, False]))
    # t = 1 twice: the last one is recorded; t = 2's example weighs 0.
    np.testing.assert_array_equal(sampler.loss_counts.numpy(), [1, 1, 0, 0])
    np.testing.assert_array_equal(sampler.loss_history.numpy(), [[1, 0], [3, 0], [0, 0], [0, 0]])
    sampler.update(tf.constant([1, 3]), tf.constant([5.0, 6.0]))
    np.testing.assert_array_equal(sampler.loss_counts.numpy(), [1, 2, 0, 1])
    np.testing.assert_array_equal(sampler.loss_history.numpy(), [[1, 0], [3, 5], [0, 0], [6, 0]])
    # Through fit, compiled with XLA: two of the four examples weigh 0.
    model = _model(ScaledInput(NUM_CLASSES, record=False), jit_compile=True, timestep_sampler="loss-second-moment")
    model.fit(_batches(_images(), LABELS, np.array([0, 1, 0, 1], np.float32)), verbose=0)
    counts = model.timestep_sampler.loss_counts.numpy()
    assert 1 <= counts.sum() <= 2 and model.timestep_sampler.loss_history.numpy().max() > 0


# ------------------------------------------------ data sets without static shapes
def _generator_dataset(*image_batches):
    """`Dataset.from_generator` without output shapes: `(images, labels)` batches of these images."""
    def batches():
        for images in image_batches:
            yield images, LABELS[:len(images)]

    return tf.data.Dataset.from_generator(batches, output_signature=(tf.TensorSpec(None, tf.float32),
                                                                     tf.TensorSpec(None, tf.int32)))


def test_fit_takes_a_generator_data_set_without_static_shapes():
    data = _generator_dataset(_images(4), _images(2))
    assert data.element_spec[0].shape.rank is None
    model = _model(ScaledInput(NUM_CLASSES, record=False))
    history = model.fit(data, validation_data=data, verbose=0)
    assert np.isfinite(history.history["loss"][0]) and np.isfinite(history.history["val_loss"][0])
    assert model.network.scale.numpy() != pytest.approx(0.3)


def test_a_generator_batch_of_another_shape_is_named():
    model = _model(ScaledInput(NUM_CLASSES, record=False))
    with pytest.raises(ValueError, match=r"^the training data must yield images of shape \[B, 8, 8, 3\]\. "
                                         r"Received a batch of shape \[4 8 4 3\] \(checked in the input pipeline\)$"):
        model.fit(_generator_dataset(_images(4), _images(4)[:, :, :4]), verbose=0)
    assert model.network.scale.numpy() != pytest.approx(0.3)  # the first, well-shaped batch trained
    fresh = _model(ScaledInput(NUM_CLASSES, record=False))
    with pytest.raises(ValueError, match=r"images of shape \[B, 8, 8, 3\].*Received shape \(4, 8, 8\)"):
        fresh.fit(_generator_dataset(_images(4)[..., 0]), verbose=0)
    assert int(fresh.optimizer.iterations.numpy()) == 0  # refused before training


# ------------------------------------------------------------ validation data
def test_bad_validation_data_is_refused_before_training():
    model = _model(ScaledInput(NUM_CLASSES, record=False))
    train = _batches(_images(), LABELS)
    with pytest.raises(ValueError, match="`validation_data`.*NaN"):
        model.fit(train, validation_data=_batches(np.full((4, 8, 8, 3), np.nan, np.float32), LABELS), verbose=0)
    with pytest.raises(ValueError, match=r"`validation_data`.*\[B, 8, 8, 3\]"):
        model.fit(train, validation_data=(np.zeros((4, 16, 16, 3), np.float32), LABELS), verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 0


def test_a_lowered_training_step_takes_weighted_unconditional_batches(monkeypatch):
    # `enable_compilation_cache(lowered_steps=True)`'s saved step gets (images, None, sample_weight) batches
    # (None has no shape of its own) and trains as the traced XLA step does.
    def train(lowered):
        monkeypatch.setenv("TFDIFFUSION_LOWERED_STEPS", "1" if lowered else "0")
        keras.utils.set_random_seed(0)
        network = tfdiff.UNet(image_size=8, in_channels=3, base_channels=4, channel_mult=(1,), num_res_blocks=1,
                              attention_resolutions=(), dropout=0.0, num_groups=2)
        model = _model(network, jit_compile=True)
        # Static shapes: the batches a lowered step is kept for.
        data = tf.data.Dataset.from_tensor_slices((_images(), None, WEIGHTS)).batch(4, drop_remainder=True)
        loss = model.fit(data, verbose=0).history["loss"][0]
        return model, loss

    lowered, lowered_loss = train(True)
    step = lowered.lowered_train_step
    assert step is not None and len(step.saved + step.loaded) == 1
    traced, traced_loss = train(False)
    assert getattr(traced, "lowered_train_step", None) is None
    assert lowered_loss == pytest.approx(traced_loss, rel=1e-5)
    for a, b in zip(lowered.network.weights, traced.network.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
