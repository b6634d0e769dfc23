"""Image generation as one traced function per sampler: `DiffusionModel.generate` and the SavedModel share it.

Step count, guidance scale and the sampler's options (e.g. DDIM's eta) are
tensor inputs, so one graph (and one XLA compilation per batch size) serves
every request; the same function becomes the exported `generate` signature,
so an exported model returns exactly the images `generate` returns.
"""

import os
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from tfdiffusion import images
from tfdiffusion import random as tfd_random
from tfdiffusion import samplers

__all__ = ["ImageSampler", "TracedNetwork", "available_memory_bytes", "check_sampling_memory", "initial_noise"]

# Allocator slack and the loop's own copies on top of the network's live values.
_MEMORY_SAFETY_FACTOR = 2.0

# Seed offsets: x_T of a batch starting at image `start` comes from fold_in(fold_in(seed, start), -2).
_NOISE_STREAM = -2


def available_memory_bytes() -> Optional[int]:
    """Memory the system can still give this process (Linux MemAvailable), or None if unknown."""
    try:
        with open("/proc/meminfo") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_sampling_memory(network: Any, image_shape: Sequence[int], num_images: int, batch_size: int,
                          guided: bool, available: Optional[int] = None, *, num_images_name: str = "num_images",
                          batch_size_name: str = "batch_size") -> None:
    """Refuses, before any work, a sampling request whose batch or result cannot fit in memory.

    The estimate is the network's live float32 values per image
    (`inference_memory_elements`, for networks that report it; others are
    not checked) times the batch (twice for guidance), times a safety factor
    of 2, plus the uint8 result of all `num_images`.

    `num_images_name` and `batch_size_name` are the caller's names of the two
    counts, for the message (a training run's sample grid is `num_samples`
    images drawn in one batch).

    Raises:
        ValueError: with the estimate, the memory available and the largest
            `batch_size` that fits.
    """
    available = available_memory_bytes() if available is None else available
    if available is None:
        return
    result_bytes = num_images * int(np.prod(image_shape))
    if result_bytes > available:
        raise ValueError(f"{num_images} images of {'x'.join(map(str, image_shape))} need "
                         f"{result_bytes / 2**30:.1f} GiB for the result alone; {available / 2**30:.1f} GiB "
                         f"are available. Ask for fewer `{num_images_name}`.")
    per_image = getattr(network, "inference_memory_elements", None)
    if per_image is None:
        return
    per_image_bytes = per_image() * 4 * (2 if guided else 1) * _MEMORY_SAFETY_FACTOR
    needed = batch_size * per_image_bytes + result_bytes
    if needed > available:
        fits = int((available - result_bytes) // per_image_bytes)
        raise ValueError(f"sampling {batch_size} images at once needs about {needed / 2**30:.1f} GiB "
                         f"({per_image_bytes / 2**20:.1f} MiB per image); {available / 2**30:.1f} GiB are "
                         f"available. Use `{batch_size_name}` <= {max(fits, 1)}.")


def initial_noise(seed: tf.Tensor, start: Any, shape: Sequence) -> Tuple[tf.Tensor, tf.Tensor]:
    """x_T for the batch of images starting at `start`, and the batch's own seed.

    Returns:
        `(noise float32 shape, batch_seed [2] int64)`: the same seed and start
        give the same noise whatever the batch size around them.
    """
    batch_seed = tfd_random.fold_in(seed, start)
    return tfd_random.random_normal(shape, tfd_random.fold_in(batch_seed, _NOISE_STREAM)), batch_seed


class TracedNetwork:
    """A network's inference call (`training=False`) as one `tf.function`, shared by every caller.

    A sampling loop calls the network at several places (both branches of
    the guidance `tf.cond`, a solver's stages), and an export holds one
    loop per sampler. Called inline, every place traces the whole network
    again, and a SavedModel keeps a copy of its graph per place (19 at the
    `shapes` preset with every sampler). Called through this object, the
    network is traced once per replica and input signature, and the graphs
    hold a call of one library function; Grappler and XLA inline it, so the
    arithmetic is unchanged.

    Under a multi-replica strategy each replica traces its own function
    (`replica` argument): a function traced on one replica holds that
    replica's copies of the variables.

    Args:
        network: the denoising network, called `network(x_t, t, y=labels,
            training=False)` (`y` only when given).
    """

    def __init__(self, network: Callable):
        self.network = network
        self._functions: Dict[Optional[int], Any] = {}

    def _call(self, x_t, t, y):
        kwargs = {} if y is None else {"y": y}
        return self.network(x_t, t, training=False, **kwargs)

    def __call__(self, x_t: tf.Tensor, t: tf.Tensor, y: Optional[tf.Tensor] = None,
                 replica: Optional[int] = None) -> tf.Tensor:
        """The network's output `[N, H, W, C_out]` at `x_t` `[N, H, W, C]`, timesteps `t` `[N]`, labels `y` `[N]`."""
        if replica not in self._functions:
            self._functions[replica] = tf.function(self._call, autograph=False)
        return self._functions[replica](x_t, t, y)


class ImageSampler:
    """Draws uint8 images with one sampler family from a network and its diffusion.

    Args:
        network: the denoising network, called `network(x_t, t, y=labels,
            training=False)` (labels only when `num_classes` is set), or
            a `TracedNetwork` of it to share one trace between samplers.
        diffusion: its `GaussianDiffusion`.
        image_shape: `(H, W, C)`.
        sampler: a registered sampler name (`samplers.sampler_names()`).
        num_classes: classes of a conditional network, or None.
        null_label: the network's "no class" label (for guidance), or None.
        spacing: timestep spacing of the sampler.
        clip_denoised: clip predicted x_0 to [-1, 1] at each step.
        jit_compile: compile the sampling loop with XLA.
        threshold: dynamic thresholding percentile in (0, 1] for each
            predicted x_0 (Saharia et al. 2022), or None.
    """

    def __init__(self, network: Callable, diffusion, image_shape: Sequence[int], sampler: str,
                 num_classes: Optional[int] = None, null_label: Optional[int] = None,
                 spacing: str = "leading", clip_denoised: bool = True, jit_compile: bool = False,
                 threshold: Optional[float] = None):
        self.network = network if isinstance(network, TracedNetwork) else TracedNetwork(network)
        self.image_shape = tuple(int(d) for d in image_shape)
        self.num_classes = num_classes
        self.null_label = null_label
        self.sampler = samplers.get_sampler(sampler)(diffusion, spacing=spacing, clip_denoised=clip_denoised,
                                                     threshold=threshold)
        self.jit_compile = bool(jit_compile)
        self.function = tf.function(self._sample, jit_compile=self.jit_compile, autograph=False,
                                    input_signature=self.input_signature())
        self._replica_functions = {}
        self._distributed = {}

    @property
    def option_names(self) -> Tuple[str, ...]:
        """The sampler's run-time options, in input order (e.g. `("eta",)`)."""
        return tuple(sorted(self.sampler.options))

    def input_signature(self) -> Tuple[tf.TensorSpec, ...]:
        """noise, seed, labels (conditional only), num_steps, guidance_scale (conditional), options."""
        specs = [tf.TensorSpec((None,) + self.image_shape, tf.float32, name="noise"),
                 tf.TensorSpec([2], tf.int64, name="seed")]
        if self.num_classes is not None:
            specs += [tf.TensorSpec([None], tf.int32, name="labels")]
        specs += [tf.TensorSpec([], tf.int32, name="num_steps")]
        if self.num_classes is not None:
            specs += [tf.TensorSpec([], tf.float32, name="guidance_scale")]
        specs += [tf.TensorSpec([], tf.float32, name=name) for name in self.option_names]
        return tuple(specs)

    def _model_fn(self, guidance_scale, replica):
        def model_fn(x_t, t, y=None):
            return self.network(x_t, t, y, replica=replica)

        if self.num_classes is None:
            return model_fn
        return samplers.classifier_free_guidance(model_fn, guidance_scale, self.null_label, self.image_shape[-1])

    def _sample(self, noise, seed, *args, batch_offset=None, replica=None):
        args = list(args)
        labels = args.pop(0) if self.num_classes is not None else None
        num_steps = args.pop(0)
        guidance_scale = args.pop(0) if self.num_classes is not None else None
        options = dict(zip(self.option_names, args))
        model_kwargs = {} if labels is None else {"y": labels}
        x_0 = self.sampler.sample(self._model_fn(guidance_scale, replica), noise, num_steps, seed, model_kwargs,
                                  batch_offset=batch_offset, **options)
        # uint8 conversion maps NaN to 0: which images were finite before it is returned beside them.
        finite = tf.reduce_all(tf.math.is_finite(x_0), axis=list(range(1, len(self.image_shape) + 1)))
        return images.to_uint8(x_0), finite

    def __call__(self, noise: tf.Tensor, seed: tf.Tensor, num_steps: int, labels: Any = None,
                 guidance_scale: float = 1.0, options: Optional[Dict[str, float]] = None,
                 strategy: Optional[tf.distribute.Strategy] = None) -> Tuple[tf.Tensor, tf.Tensor]:
        """uint8 images `[N, H, W, C]` from x_T `noise` `[N, H, W, C]` (arguments already checked), and
        bool `[N]`: whether each image's x_0 was finite before the conversion to uint8 (which maps NaN to 0).
        `function` returns the same pair.

        With a multi-replica `strategy` the batch is split across the
        replicas in consecutive slices and gathered back in order; every
        random draw is made for the whole batch and sliced, so the images
        equal those of one device.
        """
        noise = tf.convert_to_tensor(noise, tf.float32)
        labels = None if self.num_classes is None else tf.convert_to_tensor(labels, tf.int32)
        options = self.sampler.check_options(options or {})
        scalars = [tf.constant(num_steps, tf.int32)]
        if self.num_classes is not None:
            scalars.append(tf.constant(guidance_scale, tf.float32))
        scalars += [tf.constant(options[name], tf.float32) for name in self.option_names]
        if strategy is not None and strategy.num_replicas_in_sync > 1:
            return self._call_distributed(strategy, noise, seed, labels, scalars)
        return self.function(noise, seed, *([] if labels is None else [labels]), *scalars)

    def _replica_function(self, *args):
        """This replica's own traced function (its own copies of the variables, its own device).

        The replica's place in the global batch is computed here, in the
        replica context, and passed in: a function traced inside it does not
        see the replica context.
        """
        replica_id = int(tf.get_static_value(tf.distribute.get_replica_context().replica_id_in_sync_group))
        if replica_id not in self._replica_functions:
            self._replica_functions[replica_id] = tf.function(
                lambda offset, total, *a: self._sample(*a, batch_offset=(offset, total), replica=replica_id),
                jit_compile=self.jit_compile, autograph=False)
        # The split may be uneven (3 images on 2 replicas: 2 and 1), so the sizes are gathered.
        offset, total = tfd_random.batch_offset(tf.shape(args[0])[0], even=False)
        return self._replica_functions[replica_id](offset, total, *args)

    def _call_distributed(self, strategy, noise, seed, labels, scalars):
        count = int(noise.shape[0])
        replicas = strategy.num_replicas_in_sync
        # Consecutive slices, the first count % replicas one image larger. No padding: XLA's random
        # draws depend on the whole shape, so every replica draws for exactly the global batch.
        sizes = [count // replicas + (1 if r < count % replicas else 0) for r in range(replicas)]
        starts = [sum(sizes[:r]) for r in range(replicas)]

        def split(values):
            return strategy.experimental_distribute_values_from_function(
                lambda context: values[starts[context.replica_id_in_sync_group]:
                                       starts[context.replica_id_in_sync_group]
                                       + sizes[context.replica_id_in_sync_group]])

        key = id(strategy)
        if key not in self._distributed:
            def run(*args):
                # int32: the collective all-gather takes no uint8 (nor bool)
                images, finite = strategy.run(
                    lambda *a: tuple(tf.cast(value, tf.int32) for value in self._replica_function(*a)), args=args)
                return (tf.cast(strategy.gather(images, axis=0), tf.uint8),
                        tf.cast(strategy.gather(finite, axis=0), tf.bool))

            self._distributed[key] = tf.function(run, autograph=False)
        args = [split(noise), seed] + ([] if labels is None else [split(labels)]) + scalars
        return self._distributed[key](*args)
