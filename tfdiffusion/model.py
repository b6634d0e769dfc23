"""`DiffusionModel(keras.Model)`: train_step/test_step on a `GaussianDiffusion`, EMA weights, `generate`."""

import contextlib
import inspect
import re
from typing import Any, Dict, Optional, Sequence

import keras
import tensorflow as tf

from tfdiffusion import batches
from tfdiffusion import generation
from tfdiffusion import lowered_steps
from tfdiffusion import random as tfd_random
from tfdiffusion import replicas
from tfdiffusion import schedules
from tfdiffusion import timestep_sampling
from tfdiffusion import validation
from tfdiffusion.diffusion import GaussianDiffusion

__all__ = ["DiffusionModel"]

# Evaluation draws come from a stream of their own, far from the training steps'.
_EVAL_STREAM = 1 << 40


@contextlib.contextmanager
def _assertion_errors_as_value_errors():
    """Re-raises a failed in-graph check (of a compiled step, or of the input pipeline) as a ValueError.

    TensorFlow reports them as "Graph execution error: Detected at node ..." with
    the message deep inside; the user gets "`images` must lie in [-1, 1] ...".
    """
    try:
        yield
    except tf.errors.InvalidArgumentError as error:
        # "assertion failed: [message] [datum] [datum]" to the end of its line; the message may hold brackets.
        found = re.search(r"assertion failed: \[(.*)\]", error.message)
        if found is None:
            raise
        message, *data = found.group(1).split("] [")
        message = " ".join([message] + [f"[{datum}]" if " " in datum else datum for datum in data])
        where = "input pipeline" if "IteratorGetNext" in error.message else "compiled step"
        raise ValueError(f"{message} (checked in the {where})") from None


@keras.saving.register_keras_serializable(package="tfdiffusion")
class DiffusionModel(replicas.ReplicaCompiledModel, lowered_steps.LoweredStepTraining, generation.ImageGeneration,
                     keras.Model):
    """A denoising network trained and sampled with a `GaussianDiffusion`.

    `fit` takes a `tf.data.Dataset` of images `[B, H, W, C]` float32 in
    [-1, 1], or of `(images, labels)` with int labels `[B]` for a
    class-conditional network, optionally with per-example weights `[B]`
    (finite, >= 0) as a third part in Keras' order: `(images, labels,
    sample_weight)`, or `(images, None, sample_weight)` for an unconditional
    network (a 2-tuple is always `(images, labels)`). Each step draws uniform
    (or importance-sampled) timesteps and noise from stateless seeds (the
    step's seed and each example's index in the global batch, so results do
    not depend on the replica count), computes `diffusion.training_losses`,
    and minimises their sum (each weighted) divided by the global batch size,
    as Keras' default "sum_over_batch_size" reduction does with
    `sample_weight`, applying the optimizer (with its loss scaling under
    `mixed_float16`). An all-zero-weight batch gives a zero loss and zero
    gradients but is still an optimizer step (the step count, momentum and
    weight decay move on, as in Keras). An exponential moving average (EMA)
    of the weights lives in `ema_network`, beside the trained `network`: a
    second `fit` continues from the trained weights, while `generate`,
    `evaluate` and export use the averages.

    `keras.models.load_model` needs `import tfdiffusion` first (Keras finds
    registered classes by importing their package).

    Args:
        network: a Keras model called as `network(x_t, t, y=labels, training=...)`,
            e.g. `tfdiffusion.UNet`; it must expose `image_size` and
            `in_channels` (and `num_classes`, `null_label` if conditional)
            or `image_shape` must be given.
        diffusion: a `GaussianDiffusion` (or its `get_config()` dict).
        ema_decay: EMA decay in [0, 1); the decay at update n is
            min(ema_decay, (1 + n) / (10 + n)) so short runs average sensibly.
        label_dropout: probability in [0, 1) of replacing a label by the null
            label during training (for classifier-free guidance); conditional only.
        timestep_sampler: "uniform" or "loss-second-moment" (Improved DDPM's
            importance sampling of t, for loss_type="kl").
        image_shape: `(H, W, C)`, when `network` does not tell.
        seed: base seed (int) of the training noise and timesteps.
        spacing: default timestep spacing of `generate` ("leading",
            "trailing", "linspace").
        clip_denoised: default of `generate`'s `clip_denoised` (clip each
            predicted x_0 to [-1, 1]).
    """

    def __init__(self, network: keras.Model, diffusion: Any, ema_decay: float = 0.9999,
                 label_dropout: float = 0.1, timestep_sampler: str = "uniform",
                 image_shape: Optional[Sequence[int]] = None, seed: int = 0, spacing: str = "leading",
                 clip_denoised: bool = True, **kwargs):
        super().__init__(**kwargs)
        if isinstance(diffusion, dict):
            diffusion = GaussianDiffusion.from_config(diffusion)
        if not isinstance(diffusion, GaussianDiffusion):
            raise TypeError(f"`diffusion` must be a GaussianDiffusion. Received: {type(diffusion).__name__}")
        if not isinstance(network, keras.layers.Layer):
            raise TypeError("`network` must be a Keras model called as network(x_t, t, y=labels, training=...), "
                            f"e.g. a tfdiffusion.UNet. Received: network={network!r}")
        self.ema_decay = validation.check_number("ema_decay", ema_decay, 0.0, 1.0, max_inclusive=False)
        self.label_dropout = validation.check_number("label_dropout", label_dropout, 0.0, 1.0,
                                                     max_inclusive=False)
        self.seed = tfd_random.check_seed(seed)
        self.spacing = validation.check_choice("spacing", spacing, schedules.SPACINGS)
        self.clip_denoised = validation.check_bool("clip_denoised", clip_denoised)
        if image_shape is None:
            if not hasattr(network, "image_size") or not hasattr(network, "in_channels"):
                raise ValueError("`image_shape` must be given for a network without `image_size` "
                                 f"and `in_channels` attributes. Received network {type(network).__name__}")
            image_shape = (network.image_size, network.image_size, network.in_channels)
        self.image_shape = validation.check_int_tuple("image_shape", image_shape)
        if len(self.image_shape) != 3:
            raise ValueError(f"`image_shape` must be (H, W, C). Received: image_shape={image_shape!r}")
        self._check_variances(network, diffusion)
        self.network = network
        self.diffusion = diffusion
        self.num_classes = getattr(network, "num_classes", None)
        self.null_label = getattr(network, "null_label", None)
        if self.num_classes is not None and self.label_dropout > 0 and self.null_label is None:
            raise ValueError(
                f"`label_dropout={self.label_dropout}` replaces labels by the network's null label, but "
                f"{type(network).__name__} has no `null_label` attribute. Give the network one (the "
                "label meaning 'no class'), or use label_dropout=0.0.")
        self.timestep_sampler = timestep_sampling.create(timestep_sampler, diffusion.num_timesteps)
        if not network.built:
            network.build((None,) + self.image_shape)
        ema_config = dict(network.get_config())
        if "name" in ema_config:  # the averaged copy is told apart in summaries and logs
            ema_config["name"] = f"{network.name}_ema"
        self.ema_network = network.__class__.from_config(ema_config)
        self.ema_network.build((None,) + self.image_shape)
        self.ema_network.set_weights(network.get_weights())
        self.ema_network.trainable = False
        # The number of timesteps the weights were trained for, saved with them.
        self.trained_num_timesteps = self.add_weight(
            shape=(), dtype="int32", trainable=False, name="trained_num_timesteps",
            initializer=keras.initializers.Constant(diffusion.num_timesteps))
        self.eval_counter = self.add_weight(
            shape=(), dtype="int64", trainable=False, name="eval_counter",
            initializer="zeros", aggregation="only_first_replica")
        self.evaluation_seed = 0
        self.bpd_eval_steps = 0
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.mse_tracker = keras.metrics.Mean(name="mse")
        self.vb_tracker = keras.metrics.Mean(name="vb")
        self.bpd_tracker = keras.metrics.Mean(name="bpd")
        self._image_samplers = {}
        self._compiled = {}
        self.traces = {}  # traces of the compiled pieces, by name (a test checks there is one per replica)
        self.built = True

    def _check_variances(self, network, diffusion):
        """Refuses a network whose output does not carry what the diffusion's variance type reads."""
        channels = self.image_shape[-1]
        learn_sigma = getattr(network, "learn_sigma", None)
        out_channels = getattr(network, "out_channels", None)
        if learn_sigma is None and validation.is_int(out_channels) and out_channels in (channels, 2 * channels):
            learn_sigma = out_channels == 2 * channels
        if learn_sigma is None or bool(learn_sigma) == diffusion.learn_sigma:
            return
        if diffusion.learn_sigma:
            raise ValueError(
                f"`diffusion` has model_var_type={diffusion.model_var_type!r}, which reads a variance from the "
                f"network's output, but `network` has learn_sigma=False (it outputs the mean's {channels} "
                "channels only). Build the network with learn_sigma=True, or use a fixed-variance diffusion "
                "(model_var_type='fixed_small' or 'fixed_large').")
        raise ValueError(
            f"`network` has learn_sigma=True (it outputs {2 * channels} channels: a mean and a variance), but "
            f"`diffusion` has model_var_type={diffusion.model_var_type!r}, whose variances are fixed. Use "
            "model_var_type='learned_range' (with loss_type='hybrid' or 'kl'), or build the network with "
            "learn_sigma=False.")

    # ------------------------------------------------------------------ config
    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(
            network=keras.saving.serialize_keras_object(self.network),
            diffusion=self.diffusion.get_config(),
            ema_decay=self.ema_decay,
            label_dropout=self.label_dropout,
            timestep_sampler=self.timestep_sampler.kind,
            image_shape=list(self.image_shape),
            seed=self.seed,
            spacing=self.spacing,
            clip_denoised=self.clip_denoised,
        )
        return config

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> "DiffusionModel":
        config = dict(config)
        config["network"] = keras.saving.deserialize_keras_object(config["network"])
        return cls(**config)

    def make_train_function(self, force=False):
        """Keras' train function, after creating the optimizer's slots for the network.

        Slots made before the first traced `train_step` keep `fit` from tracing twice.
        With `jit_compile=True` under a multi-replica `MirroredStrategy` or
        `MultiWorkerMirroredStrategy` (where Keras cannot compile the step: the
        replicas' variables live on other devices), each replica's forward and
        backward pass is compiled with XLA on its own device and the gradient
        reduction, optimizer and EMA run outside it. Under `TPUStrategy`
        everything is compiled anyway. With lowered steps on
        (`enable_compilation_cache(lowered_steps=True)`) and an eligible
        model, the train function runs `lowered_steps.LoweredTrainStep`.
        """
        self._build_optimizer_slots()
        if self._use_lowered_train_function(force):
            return self.train_function
        return self._without_whole_step_xla(super().make_train_function, force)

    def _build_optimizer_slots(self):
        if self.optimizer is not None and not self.optimizer.built:
            self.optimizer.build(self.network.trainable_variables)

    def load_weights(self, filepath, *args, **kwargs):
        """Loads weights and checks they were trained with this diffusion's T."""
        super().load_weights(filepath, *args, **kwargs)
        trained = int(keras.ops.convert_to_numpy(self.trained_num_timesteps))
        if trained != self.diffusion.num_timesteps:
            raise ValueError(
                f"The weights in {filepath} were trained with a diffusion of {trained} timesteps, "
                f"but this model's diffusion has {self.diffusion.num_timesteps}. Build the model "
                f"with the same schedule length (or `diffusion.respace(...)` it for sampling).")

    @property
    def metrics(self):
        return [self.loss_tracker, self.mse_tracker, self.vb_tracker, self.bpd_tracker]

    def call(self, x_t, t, y=None, training=None):
        """The trained network's prediction at `(x_t, t)`; see `network`."""
        return self.network(x_t, t, **self._label_kwargs(y), training=training)

    def compute_output_shape(self, input_shape, *args, **kwargs):
        return self.network.compute_output_shape(input_shape)

    # --------------------------------------------------------------- checking
    def _label_kwargs(self, labels):
        return {} if labels is None else {"y": labels}

    def _unpack(self, data):
        """`(images, labels, sample_weight)` of a batch (see `batches.BATCH_FORMS`), checked; None where absent."""
        images, labels, sample_weight = batches.split_batch(data)
        images = tf.convert_to_tensor(images)
        expected = (None,) + self.image_shape
        if images.shape.rank != 4 or any(e is not None and s is not None and s != e
                                         for s, e in zip(images.shape, expected)):
            raise ValueError(f"Expected images of shape [B, {', '.join(map(str, self.image_shape))}] "
                             f"(NHWC, float in [-1, 1]). Received shape {images.shape}")
        images = validation.check_images(images, "images", self.diffusion.validate_args)
        if self.num_classes is None and labels is not None:
            raise ValueError(batches.unconditional_labels_message("the data set"))
        if self.num_classes is not None:
            if labels is None:
                raise ValueError(f"The network is class-conditional (num_classes={self.num_classes}) "
                                 "but the data set yields no labels: give `(images, labels)` batches.")
            labels = tf.convert_to_tensor(labels)
            if not labels.dtype.is_integer:
                raise TypeError(f"Labels must be integers in [0, {self.num_classes}). Received dtype "
                                f"{labels.dtype.name}")
            labels = validation.check_timesteps(tf.reshape(labels, [-1]), self.num_classes, name="labels",
                                                validate=self.diffusion.validate_args)
        if sample_weight is not None:
            sample_weight = validation.check_sample_weight(sample_weight, images.shape[0],
                                                           validate=self.diffusion.validate_args)
        return images, labels, sample_weight

    # ---------------------------------------------------------- fit/evaluate
    def _check_dataset(self, data, what):
        """Checks a tf.data pipeline before any work: its element spec, and (with
        `diffusion.validate_args`) its first batch's values, eagerly, with clear errors."""
        spec = data.element_spec
        if isinstance(spec, tuple) and not 1 <= len(spec) <= 3:
            raise ValueError(f"{what} must yield {batches.BATCH_FORMS}. Received elements of {len(spec)} parts")
        images_spec, labels_spec, weights_spec = batches.split_batch(spec)
        if self.num_classes is None and labels_spec is not None:
            raise ValueError(batches.unconditional_labels_message(what))
        if isinstance(weights_spec, tf.TensorSpec) and (weights_spec.dtype == tf.bool or not (
                weights_spec.dtype.is_floating or weights_spec.dtype.is_integer)):
            raise TypeError(f"{what} must yield numeric `sample_weight` (the third part of a batch). "
                            f"Received dtype {weights_spec.dtype.name}")
        if not isinstance(images_spec, tf.TensorSpec):
            return
        if not images_spec.dtype.is_floating:
            raise TypeError(f"{what} must yield float images in [-1, 1]. Received dtype "
                            f"{images_spec.dtype.name}; scale uint8 images with x / 127.5 - 1")
        expected = (None,) + self.image_shape
        shape = images_spec.shape
        if shape.rank is not None and (shape.rank != 4 or any(
                s is not None and e is not None and s != e for s, e in zip(shape, expected))):
            raise ValueError(f"{what} must yield images of shape [B, {', '.join(map(str, self.image_shape))}] "
                             f"(this model's). Received element shape {shape}")
        if isinstance(labels_spec, tf.TensorSpec) and not labels_spec.dtype.is_integer:
            raise TypeError(f"{what} must yield integer labels. Received dtype {labels_spec.dtype.name}")
        if not self.diffusion.validate_args:
            return
        first = next(iter(data.take(1)), None)
        if first is None:
            raise ValueError(f"{what} yields no batch (an empty data set, or fewer images than "
                             "one batch with drop_remainder)")
        self._check_batch(first, what)

    def _check_batch(self, batch, what):
        """`_unpack(batch)` eagerly (its value checks run at once), its errors prefixed with `what`."""
        try:
            self._unpack(batch)
        except (ValueError, TypeError) as error:
            raise type(error)(f"{what}: {error}") from None

    def _check_validation_data(self, validation_data):
        """Checks `fit`'s `validation_data` as the training data (a data set, or a tuple of arrays);
        returns it with static shapes (see `batches.with_static_shapes`)."""
        what = "`validation_data`"
        if isinstance(validation_data, tf.data.Dataset):
            self._check_dataset(validation_data, what)
            return batches.with_static_shapes(validation_data, self.image_shape, what)
        if isinstance(validation_data, (tuple, list)):
            if not 1 <= len(validation_data) <= 3:
                raise ValueError(f"{what} must be {batches.BATCH_FORMS}. Received a tuple of "
                                 f"{len(validation_data)} parts")
            self._check_batch(tuple(validation_data), what)
        return validation_data

    def fit(self, x=None, *args, **kwargs):
        """Keras `fit`, with the training and validation data checked before training and in-graph
        check failures reported as ValueErrors; see `keras.Model.fit`.

        A `tf.data.Dataset` whose element spec lacks static shapes (e.g.
        `Dataset.from_generator` without output shapes) gets the model's
        (`batches.with_static_shapes`); each batch is then checked as it comes.
        """
        arguments = inspect.signature(keras.Model.fit).bind(self, x, *args, **kwargs).arguments
        arguments.pop("self")
        arguments.update(arguments.pop("kwargs", {}))
        if isinstance(x, tf.data.Dataset):
            self._check_dataset(x, "the training data")
            arguments["x"] = x = batches.with_static_shapes(x, self.image_shape, "the training data")
            self._prepare_lowered_step(x)
        if arguments.get("validation_data") is not None:
            arguments["validation_data"] = self._check_validation_data(arguments["validation_data"])
        with _assertion_errors_as_value_errors():
            return super().fit(**arguments)

    def evaluate(self, x=None, *args, **kwargs):
        """Keras `evaluate`, with the data set checked first (and given static shapes, as in `fit`);
        see `keras.Model.evaluate`."""
        if isinstance(x, tf.data.Dataset):
            self._check_dataset(x, "the evaluation data")
            x = batches.with_static_shapes(x, self.image_shape, "the evaluation data")
        with _assertion_errors_as_value_errors():
            return super().evaluate(x, *args, **kwargs)

    # --------------------------------------------------------------- training
    def _step_seed(self, counter):
        return tfd_random.fold_in(tfd_random.seed_pair(self.seed), tf.cast(counter, tf.int64))

    def _drop_labels(self, labels, seed, offset):
        """Labels with each replaced by the null label with probability `label_dropout`."""
        if labels is None or self.label_dropout == 0.0:
            return labels
        uniform = tfd_random.replica_rows(lambda n: tfd_random.random_uniform([n], seed), tf.shape(labels)[0],
                                          offset)
        return tf.where(uniform < self.label_dropout, tf.fill(tf.shape(labels), self.null_label), labels)

    def _network_fn(self, network, training):
        def model_fn(x_t, t, **kwargs):
            return network(x_t, t, training=training, **kwargs)
        return model_fn

    def _diffusion_losses(self, network, images, labels, seed, training, offset):
        """Timesteps, importance weights and losses; the draws of example k of the global batch
        depend on the step's seed and k only (`offset` places this replica's rows)."""
        batch = tf.shape(images)[0]
        t = tfd_random.replica_rows(
            lambda n: self.timestep_sampler.sample(n, tfd_random.fold_in(seed, 1))[0], batch, offset)
        weights = self.timestep_sampler.importance_weights(t)
        if training:
            labels = self._drop_labels(labels, tfd_random.fold_in(seed, 2), offset)
        noise = tfd_random.batch_normal(tf.shape(images), tfd_random.fold_in(seed, 3), offset)
        losses = self.diffusion.training_losses(
            self._network_fn(network, training), images, t, noise=noise,
            model_kwargs=self._label_kwargs(labels))
        return t, weights, losses

    # Nothing below needs AutoGraph (loops are tf.while_loop, branches tf.where); not
    # converting TFP and the network saves most of the tracing time.
    @tf.autograph.experimental.do_not_convert
    def train_step(self, data):
        images, labels, sample_weight = self._unpack(data)  # checks run here, outside any XLA computation
        seed = self._step_seed(self.optimizer.iterations)
        offset = tfd_random.batch_offset(tf.shape(images)[0])  # training batches split evenly
        gradients = (self._per_replica_compiled("gradients", self._gradients) if self._xla_per_replica
                     else self._gradients)
        t, losses, grads = gradients(images, labels, sample_weight, seed, offset)
        self.optimizer.apply_gradients(zip(grads, self.network.trainable_variables))
        # Zero-weight examples are not part of the objective: their losses are not recorded.
        self.timestep_sampler.update(t, losses["loss"], None if sample_weight is None else sample_weight > 0)
        self._update_ema()
        return self._track(losses, sample_weight)

    def _gradients(self, images, labels, sample_weight, seed, offset):
        """One replica's forward and backward pass: `(t, losses, gradients)`."""
        self.traces["gradients"] = self.traces.get("gradients", 0) + 1  # runs once per trace
        with tf.GradientTape() as tape:
            t, weights, losses = self._diffusion_losses(self.network, images, labels, seed, True, offset)
            if sample_weight is not None:
                weights = weights * sample_weight
            # Sum over the replica's (weighted) examples / global batch: gradients summed
            # across replicas then equal those of the global batch's "sum_over_batch_size".
            loss = tf.reduce_sum(losses["loss"] * weights) / tf.cast(offset[1], tf.float32)
            # Under mixed_float16 the optimizer is a LossScaleOptimizer: scale here,
            # it unscales the gradients (a no-op scale otherwise).
            scaled_loss = self.optimizer.scale_loss(loss)
        return t, losses, tape.gradient(scaled_loss, self.network.trainable_variables)

    @tf.autograph.experimental.do_not_convert
    def test_step(self, data):
        images, labels, sample_weight = self._unpack(data)
        seed = tfd_random.fold_in(tfd_random.seed_pair(self.evaluation_seed), self.eval_counter + _EVAL_STREAM)
        self.eval_counter.assign_add(1)
        # A last evaluation batch may split unevenly across replicas (the sizes are gathered here,
        # in the replica context, outside any compiled part).
        offset = tfd_random.batch_offset(tf.shape(images)[0], even=False)
        evaluation = (self._per_replica_compiled("evaluation", self._evaluation) if self._xla_per_replica
                      else self._evaluation)
        losses, total_bpd = evaluation(images, labels, seed, offset)
        if total_bpd is not None:
            # A bound in bits/dim: the weighted mean (as Keras' weighted metrics).
            self.bpd_tracker.update_state(total_bpd, sample_weight=sample_weight)
        return self._track(losses, sample_weight)

    def _evaluation(self, images, labels, seed, offset):
        """One replica's evaluation with the EMA weights: `(losses, total_bpd or None)`."""
        _, _, losses = self._diffusion_losses(self.ema_network, images, labels, seed, False, offset)
        if not self.bpd_eval_steps:
            return losses, None
        bound = self.diffusion.calc_bpd_loop(
            self._network_fn(self.ema_network, False), images,
            model_kwargs=self._label_kwargs(labels), seed=tfd_random.fold_in(seed, 4),
            num_eval_steps=None if self.bpd_eval_steps >= self.diffusion.num_timesteps
            else self.bpd_eval_steps, batch_offset=offset)
        return losses, bound["total_bpd"]

    def _track(self, losses, sample_weight=None):
        """Updates the loss, mse and vb means; with weights, of the weighted per-example values, so that
        the logged loss is Keras' with `sample_weight` (the weighted sum over the number of examples)."""
        def weighted(values):
            return values if sample_weight is None else values * sample_weight

        self.loss_tracker.update_state(weighted(losses["loss"]))
        self.mse_tracker.update_state(weighted(losses["mse"]))
        self.vb_tracker.update_state(weighted(losses["vb"]))
        results = {"loss": self.loss_tracker.result(), "mse": self.mse_tracker.result(),
                   "vb": self.vb_tracker.result()}
        if self.bpd_eval_steps:
            results["bpd"] = self.bpd_tracker.result()
        return self._reducible_logs(results)

    def set_bpd_evaluation(self, num_eval_steps: int) -> None:
        """Makes `evaluate` also report the bound `bpd` (bits/dim, EMA weights).

        Args:
            num_eval_steps: 0 to switch off; T (or more) for the exact T-term
                bound; K < T for a stratified estimate from K terms (see
                `GaussianDiffusion.bpd_timesteps`). Cost: K network calls per batch.
        """
        num_eval_steps = validation.check_int("num_eval_steps", num_eval_steps, 0)
        if num_eval_steps == 1:
            raise ValueError("`num_eval_steps` must be 0 (off) or an integer >= 2. Received: num_eval_steps=1")
        self.bpd_eval_steps = num_eval_steps
        self.test_function = None  # retrace test_step with the new setting

    def set_evaluation_seed(self, seed: int) -> None:
        """Restarts `evaluate`'s noise and timesteps from `seed` (int): reproducible bounds.

        The evaluation seed is separate from the training seed (`seed`, saved
        in the config); the next `evaluate` retraces with it.
        """
        self.evaluation_seed = tfd_random.check_seed(seed)
        self.eval_counter.assign(0)
        self.test_function = None

    def _ema_decay_now(self):
        n = tf.cast(self.optimizer.iterations, tf.float32)
        return tf.minimum(self.ema_decay, (1.0 + n) / (10.0 + n))

    def _update_ema(self):
        decay = self._ema_decay_now()
        pairs = list(zip(self.ema_network.weights, self.network.weights))

        rate = 1.0 - decay

        def move(ema_var, var):
            # ema <- ema - (1 - decay) * (ema - w) = decay * ema + (1 - decay) * w, in one kernel.
            return tf.raw_ops.ResourceApplyGradientDescent(
                var=ema_var.handle, alpha=tf.cast(rate, ema_var.dtype),
                delta=ema_var - tf.cast(var, ema_var.dtype))

        def assign_all(strategy=None):
            for ema, weight in pairs:
                if strategy is None:
                    move(ema.value, weight.value)
                else:
                    strategy.extended.update(ema.value, move, args=(weight.value,), group=False)

        replica = tf.distribute.get_replica_context()
        if tf.distribute.has_strategy() and replica is not None:
            replica.merge_call(assign_all)
        else:
            assign_all()

    # ---------------------------------------------------------------- sampling
