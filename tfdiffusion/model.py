"""`DiffusionModel(keras.Model)`: train_step/test_step on a `GaussianDiffusion`, EMA weights, `generate`."""

import keras
import numpy as np
import tensorflow as tf

from tfdiffusion import samplers
from tfdiffusion import timestep_sampling
from tfdiffusion.diffusion import GaussianDiffusion

__all__ = ["DiffusionModel", "to_uint8"]


def to_uint8(images):
    """Maps images in [-1, 1] to uint8 [0, 255] (round to nearest, clipped)."""
    return tf.cast(tf.clip_by_value(tf.round((images + 1.0) * 127.5), 0.0, 255.0), tf.uint8)


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@keras.saving.register_keras_serializable(package="tfdiffusion")
class DiffusionModel(keras.Model):
    """A denoising network trained and sampled with a `GaussianDiffusion`.

    `fit` takes a `tf.data.Dataset` of images `[B, H, W, C]` float32 in
    [-1, 1], or of `(images, labels)` with int labels `[B]` for a
    class-conditional network. Each step draws uniform (or importance-sampled)
    timesteps and noise from stateless seeds, computes
    `diffusion.training_losses`, averages the loss over the global batch and
    applies the optimizer. An exponential moving average (EMA) of the weights
    lives in `ema_network`, beside the trained `network`: a second `fit`
    continues from the trained weights, while `generate`, `evaluate` and export
    use the averages. (Keras' `optimizer(use_ema=True)` would instead copy the
    averages over the trained weights when `fit` ends.)

    Args:
        network: a Keras model called as `network(x_t, t, y=labels, training=...)`,
            e.g. `tfdiffusion.UNet`; it must expose `image_size` and
            `in_channels` (and `num_classes`, `null_label` if conditional)
            or `image_shape` must be given.
        diffusion: a `GaussianDiffusion` (or its `get_config()` dict).
        ema_decay: EMA decay; the decay at update n is
            min(ema_decay, (1 + n) / (10 + n)) so short runs average sensibly.
        label_dropout: probability of replacing a label by the null label
            during training (for classifier-free guidance); conditional only.
        timestep_sampler: "uniform" or "loss-second-moment" (Improved DDPM's
            importance sampling of t, for loss_type="kl").
        image_shape: `(H, W, C)`, when `network` does not tell.
        seed: base seed of the training noise and timesteps.
    """

    def __init__(self, network, diffusion, ema_decay=0.9999, label_dropout=0.1,
                 timestep_sampler="uniform", image_shape=None, seed=0, **kwargs):
        super().__init__(**kwargs)
        if isinstance(diffusion, dict):
            diffusion = GaussianDiffusion.from_config(diffusion)
        if not isinstance(diffusion, GaussianDiffusion):
            raise TypeError(f"`diffusion` must be a GaussianDiffusion. Received: {type(diffusion).__name__}")
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"`ema_decay` must be in [0, 1). Received: ema_decay={ema_decay}")
        if not 0.0 <= label_dropout < 1.0:
            raise ValueError(f"`label_dropout` must be in [0, 1). Received: label_dropout={label_dropout}")
        if image_shape is None:
            if not hasattr(network, "image_size") or not hasattr(network, "in_channels"):
                raise ValueError("`image_shape` must be given for a network without `image_size` "
                                 f"and `in_channels` attributes. Received network {type(network).__name__}")
            image_shape = (network.image_size, network.image_size, network.in_channels)
        self.image_shape = tuple(int(d) for d in image_shape)
        self.network = network
        self.diffusion = diffusion
        self.ema_decay = float(ema_decay)
        self.label_dropout = float(label_dropout)
        self.seed = int(seed)
        self.num_classes = getattr(network, "num_classes", None)
        self.null_label = getattr(network, "null_label", None)
        self.sampler = timestep_sampling.create(timestep_sampler, diffusion.num_timesteps)
        self.timestep_sampler = timestep_sampler
        if not network.built:
            network.build((None,) + self.image_shape)
        self.ema_network = network.__class__.from_config(network.get_config())
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
        self.bpd_eval_steps = 0
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.mse_tracker = keras.metrics.Mean(name="mse")
        self.vb_tracker = keras.metrics.Mean(name="vb")
        self.bpd_tracker = keras.metrics.Mean(name="bpd")
        self._generate_fns = {}
        self.built = True

    # ------------------------------------------------------------------ config
    def get_config(self):
        config = super().get_config()
        config.update(
            network=keras.saving.serialize_keras_object(self.network),
            diffusion=self.diffusion.get_config(),
            ema_decay=self.ema_decay,
            label_dropout=self.label_dropout,
            timestep_sampler=self.timestep_sampler,
            image_shape=list(self.image_shape),
            seed=self.seed,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["network"] = keras.saving.deserialize_keras_object(config["network"])
        return cls(**config)

    def make_train_function(self, force=False):
        """Keras' train function, after creating the optimizer's slots for the network.

        Slots made before the first traced `train_step` keep `fit` from tracing twice.
        """
        if self.optimizer is not None and not self.optimizer.built:
            self.optimizer.build(self.network.trainable_variables)
        return super().make_train_function(force=force)

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

    # --------------------------------------------------------------- checking
    def _label_kwargs(self, labels):
        return {} if labels is None else {"y": labels}

    def _unpack(self, data):
        if isinstance(data, (tuple, list)):
            images = data[0]
            labels = data[1] if len(data) > 1 else None
        else:
            images, labels = data, None
        images = tf.convert_to_tensor(images)
        expected = (None,) + self.image_shape
        if images.shape.rank != 4 or any(e is not None and s is not None and s != e
                                         for s, e in zip(images.shape, expected)):
            raise ValueError(f"Expected images of shape [B, {', '.join(map(str, self.image_shape))}] "
                             f"(NHWC, float in [-1, 1]). Received shape {images.shape}")
        if not images.dtype.is_floating:
            raise TypeError(f"Expected float images in [-1, 1]. Received dtype {images.dtype.name}; "
                            "scale uint8 images with x / 127.5 - 1")
        images = tf.cast(images, tf.float32)
        checks = [tf.debugging.assert_less_equal(
            tf.reduce_max(tf.abs(images)), 1.0 + 1e-5,
            message="Expected images in [-1, 1]; scale uint8 images with x / 127.5 - 1")]
        if self.num_classes is None and labels is not None:
            raise ValueError("The network is unconditional (num_classes=None) but the data set "
                             "yields labels. Drop them (e.g. `with_labels=False`) or build a "
                             "conditional network.")
        if self.num_classes is not None:
            if labels is None:
                raise ValueError(f"The network is class-conditional (num_classes={self.num_classes}) "
                                 "but the data set yields no labels: give `(images, labels)` batches.")
            labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
            checks += [
                tf.debugging.assert_greater_equal(labels, 0, message="labels must be >= 0"),
                tf.debugging.assert_less(labels, self.num_classes,
                                         message=f"labels must be < num_classes={self.num_classes}"),
            ]
        with tf.control_dependencies(checks):
            images = tf.identity(images)
        return images, labels

    # --------------------------------------------------------------- training
    def _step_seed(self, counter):
        replica = tf.distribute.get_replica_context()
        replica_id = replica.replica_id_in_sync_group if replica is not None else 0
        seed = samplers.fold_in(samplers.seed_pair(self.seed), tf.cast(counter, tf.int64))
        return samplers.fold_in(seed, tf.cast(replica_id, tf.int64))

    def _drop_labels(self, labels, seed):
        if labels is None or self.label_dropout == 0.0:
            return labels
        drop = samplers.random_uniform(tf.shape(labels), seed) < self.label_dropout
        return tf.where(drop, tf.fill(tf.shape(labels), self.null_label), labels)

    def _network_fn(self, network, training):
        def model_fn(x_t, t, **kwargs):
            return network(x_t, t, training=training, **kwargs)
        return model_fn

    def _diffusion_losses(self, network, images, labels, seed, training):
        batch = tf.shape(images)[0]
        t, weights = self.sampler.sample(batch, samplers.fold_in(seed, 1))
        if training:
            labels = self._drop_labels(labels, samplers.fold_in(seed, 2))
        losses = self.diffusion.training_losses(
            self._network_fn(network, training), images, t, model_kwargs=self._label_kwargs(labels),
            seed=samplers.fold_in(seed, 3))
        return t, weights, losses

    # Nothing below needs AutoGraph (loops are tf.while_loop, branches tf.where); not
    # converting TFP and the network saves most of the tracing time.
    @tf.autograph.experimental.do_not_convert
    def train_step(self, data):
        images, labels = self._unpack(data)
        seed = self._step_seed(self.optimizer.iterations)
        strategy = tf.distribute.get_strategy()
        global_batch = tf.cast(tf.shape(images)[0] * strategy.num_replicas_in_sync, tf.float32)
        with tf.GradientTape() as tape:
            t, weights, losses = self._diffusion_losses(self.network, images, labels, seed, training=True)
            # Sum over the replica's examples / global batch: gradients summed
            # across replicas then equal those of the global-batch mean.
            loss = tf.reduce_sum(losses["loss"] * weights) / global_batch
        variables = self.network.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        self.sampler.update(t, losses["loss"])
        self._update_ema()
        return self._track(losses)

    @tf.autograph.experimental.do_not_convert
    def test_step(self, data):
        images, labels = self._unpack(data)
        seed = self._step_seed(self.eval_counter + (1 << 40))
        self.eval_counter.assign_add(1)
        _, _, losses = self._diffusion_losses(self.ema_network, images, labels, seed, training=False)
        if self.bpd_eval_steps:
            bound = self.diffusion.calc_bpd_loop(
                self._network_fn(self.ema_network, False), images,
                model_kwargs=self._label_kwargs(labels), seed=samplers.fold_in(seed, 4),
                num_eval_steps=None if self.bpd_eval_steps >= self.diffusion.num_timesteps
                else self.bpd_eval_steps)
            self.bpd_tracker.update_state(bound["total_bpd"])
        return self._track(losses)

    def _track(self, losses):
        self.loss_tracker.update_state(losses["loss"])
        self.mse_tracker.update_state(losses["mse"])
        self.vb_tracker.update_state(losses["vb"])
        results = {"loss": self.loss_tracker.result(), "mse": self.mse_tracker.result(),
                   "vb": self.vb_tracker.result()}
        if self.bpd_eval_steps:
            results["bpd"] = self.bpd_tracker.result()
        return results

    def set_bpd_evaluation(self, num_eval_steps):
        """Makes `evaluate` also report the bound `bpd` (bits/dim, EMA weights).

        Args:
            num_eval_steps: 0 to switch off; T (or more) for the exact T-term
                bound; K < T for a stratified estimate from K terms (see
                `GaussianDiffusion.bpd_timesteps`). Cost: K network calls per batch.
        """
        if not _is_int(num_eval_steps) or num_eval_steps < 0 or num_eval_steps == 1:
            raise ValueError("`num_eval_steps` must be 0 (off) or an integer >= 2. "
                             f"Received: num_eval_steps={num_eval_steps!r}")
        self.bpd_eval_steps = int(num_eval_steps)
        self.test_function = None  # retrace test_step with the new setting

    def set_evaluation_seed(self, seed):
        """Restarts `evaluate`'s noise and timesteps from `seed` (int): reproducible bounds."""
        self.seed = int(seed)
        self.eval_counter.assign(0)

    def _ema_decay_now(self):
        n = tf.cast(self.optimizer.iterations, tf.float32)
        return tf.minimum(self.ema_decay, (1.0 + n) / (10.0 + n))

    def _update_ema(self):
        decay = self._ema_decay_now()
        pairs = list(zip(self.ema_network.weights, self.network.weights))

        def assign_all(strategy=None):
            for ema, weight in pairs:
                ema_var, var = ema.value, weight.value
                if strategy is None:
                    ema_var.assign(decay * ema_var + (1.0 - decay) * var)
                else:
                    strategy.extended.update(
                        ema_var, lambda e, w: e.assign(decay * e + (1.0 - decay) * w), args=(var,))

        replica = tf.distribute.get_replica_context()
        if tf.distribute.has_strategy() and replica is not None:
            replica.merge_call(assign_all)
        else:
            assign_all()

    # ---------------------------------------------------------------- sampling
    def _check_generate_args(self, num_images, sampler, num_steps, labels, guidance_scale):
        if not _is_int(num_images) or num_images < 1:
            raise ValueError(f"`num_images` must be a positive integer. Received: num_images={num_images!r}")
        if sampler not in samplers.SAMPLERS:
            raise ValueError(f"`sampler` must be one of {samplers.SAMPLERS}. Received: sampler={sampler!r}")
        T = self.diffusion.num_timesteps
        if not _is_int(num_steps) or not 1 <= num_steps <= T:
            raise ValueError(f"`num_steps` must be between 1 and {T}. Received: num_steps={num_steps!r}")
        if self.num_classes is None:
            if labels is not None:
                raise ValueError("`labels` were given but the network is unconditional (num_classes=None).")
            if guidance_scale != 1.0:
                raise ValueError("`guidance_scale` needs a class-conditional network; this one is "
                                 f"unconditional. Received: guidance_scale={guidance_scale}")
            return None
        if labels is None:
            return np.arange(num_images, dtype=np.int32) % self.num_classes
        labels = np.asarray(labels)
        if labels.ndim == 0:
            labels = np.full([num_images], labels)
        if labels.shape != (num_images,) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"`labels` must be {num_images} integers (one per image). "
                             f"Received an array of shape {labels.shape} and dtype {labels.dtype}")
        if labels.min() < 0 or labels.max() >= self.num_classes:
            raise ValueError(f"`labels` must be in [0, {self.num_classes}). Received values from "
                             f"{labels.min()} to {labels.max()}")
        return labels.astype(np.int32)

    def _sample_fn(self, sampler, num_steps, eta, guidance_scale, clip_denoised, spacing, jit_compile):
        key = (sampler, num_steps, eta, guidance_scale, clip_denoised, spacing, jit_compile)
        if key in self._generate_fns:
            return self._generate_fns[key]
        diffusion = self.diffusion.respace(num_steps, spacing)
        model_fn = self._network_fn(self.ema_network, training=False)
        if guidance_scale != 1.0:
            model_fn = samplers.classifier_free_guidance(model_fn, guidance_scale, self.null_label,
                                                         self.image_shape[-1])

        def sample(noise, seed, labels):
            kwargs = {} if labels is None else {"y": labels}
            if sampler == "ddpm":
                x_0 = diffusion.p_sample_loop(model_fn, noise.shape, noise=noise, seed=seed,
                                              clip_denoised=clip_denoised, model_kwargs=kwargs)
            else:
                x_0 = diffusion.ddim_sample_loop(model_fn, noise.shape, num_steps=num_steps, eta=eta,
                                                 noise=noise, seed=seed, clip_denoised=clip_denoised,
                                                 model_kwargs=kwargs)
            return to_uint8(x_0)

        fn = tf.function(sample, jit_compile=jit_compile, reduce_retracing=True, autograph=False)
        self._generate_fns[key] = fn
        return fn

    def generate(self, num_images, sampler="ddim", num_steps=50, seed=None, labels=None,
                 guidance_scale=1.0, eta=0.0, clip_denoised=True, spacing="leading",
                 batch_size=None, jit_compile=None, progress=None):
        """Samples images with the EMA weights.

        Args:
            num_images: how many images.
            sampler: "ddim" or "ddpm" (ancestral).
            num_steps: sampling steps in [1, T] (evenly spaced, `spacing`).
            seed: int; the same seed gives the same images. None: random.
            labels: ints `[num_images]` (or one int) for a conditional
                network; None cycles through the classes 0, 1, ...
            guidance_scale: classifier-free guidance scale s (1: none).
            eta: DDIM noise (0 deterministic).
            clip_denoised: clip predicted x_0 to [-1, 1] at each step.
            spacing: "leading" or "trailing".
            batch_size: images per network batch (default: all at once).
            jit_compile: compile the sampling loop with XLA; None: yes,
                unless a distribution strategy is active. (XLA draws other
                random numbers than the CPU kernels for the same seed.)
            progress: optional `progress(done, total)` called after each batch.

        Returns:
            uint8 numpy array `[num_images, H, W, C]`.
        """
        labels = self._check_generate_args(num_images, sampler, num_steps, labels, guidance_scale)
        batch_size = num_images if batch_size is None else batch_size
        if not _is_int(batch_size) or batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive integer. Received: batch_size={batch_size!r}")
        if jit_compile is None:
            jit_compile = not tf.distribute.has_strategy() and \
                self.distribute_strategy.num_replicas_in_sync == 1
        fn = self._sample_fn(sampler, int(num_steps), float(eta), float(guidance_scale),
                             bool(clip_denoised), spacing, bool(jit_compile))
        base_seed = samplers.seed_pair(seed)
        outputs = []
        for start in range(0, num_images, batch_size):
            count = min(batch_size, num_images - start)
            chunk_seed = samplers.fold_in(base_seed, start)
            noise = samplers.random_normal((count,) + self.image_shape, samplers.fold_in(chunk_seed, -2))
            chunk_labels = None if labels is None else tf.constant(labels[start:start + count])
            outputs.append(fn(noise, chunk_seed, chunk_labels).numpy())
            if progress is not None:
                progress(start + count, num_images)
        return np.concatenate(outputs, axis=0)
