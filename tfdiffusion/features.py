"""Feature extractors for FID/KID: Keras' InceptionV3 pool features and the small shapes network shipped here.

A feature extractor is a callable `images -> features`: images uint8
`[N, H, W, C]` in [0, 255] or float `[N, H, W, C]` in [-1, 1] (C = 1 or 3),
features float32 `[N, D]`. `FeatureExtractor` wraps a Keras model behind
those checks, the scaling to [-1, 1], the resizing to the model's input size
and batching, so a metric can take any of them, or any other callable.
"""

import os
from typing import Any, Optional

import keras
import tensorflow as tf

from tfdiffusion import shapes
from tfdiffusion import validation

__all__ = [
    "INCEPTION_WEIGHTS_FILE",
    "SHAPES_INPUT_SIZE",
    "SHAPES_WEIGHTS_PATH",
    "FeatureExtractor",
    "as_float_images",
    "build_shapes_network",
    "inception_features",
    "inception_weights_path",
    "shapes_features",
]

# Keras' ImageNet weights of InceptionV3 without the classifier (87 MB), as
# `keras.applications.InceptionV3` downloads them into `$KERAS_HOME/models`.
INCEPTION_WEIGHTS_FILE = "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"
_INCEPTION_ORIGIN = ("https://storage.googleapis.com/tensorflow/keras-applications/inception_v3/"
                     + INCEPTION_WEIGHTS_FILE)
_INCEPTION_MD5 = "bcbd6486424b2319ff4ef7d526e38f63"
_INCEPTION_INPUT_SIZE = 299

# The shapes network sees every image at 16x16, the "shapes" preset's size
# (8x8 is upsampled, 32x32 and larger antialiased down); it was trained on 8,
# 16 and 32 pixel renderings of the shapes training split resized that way
# (benchmarks/train_shapes_features.py).
SHAPES_INPUT_SIZE = 16
SHAPES_WEIGHTS_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets",
                                   "shapes_features.weights.h5")
_SHAPES_OUTPUTS = ("features", "logits")


def as_float_images(images: Any, name: str = "images") -> tf.Tensor:
    """Checks images and maps them to float32 in [-1, 1].

    Args:
        images: uint8 `[N, H, W, C]` in [0, 255], or float (16, 32 or 64 bit)
            `[N, H, W, C]` in [-1, 1]; C = 1 or 3.
        name: the argument's name, for the messages.

    Returns:
        float32 `[N, H, W, C]` in [-1, 1]: uint8 values k become k / 127.5 - 1.

    Raises:
        TypeError: another dtype (integers other than uint8, bools, strings).
        ValueError: not `[N, H, W, C]` with C = 1 or 3; float values not finite
            or outside [-1, 1] (when executing eagerly; in a graph the same
            checks raise `tf.errors.InvalidArgumentError` when run).
    """
    try:
        images = tf.convert_to_tensor(images)
    except (TypeError, ValueError) as error:
        raise TypeError(f"`{name}` must be an array of images. Received: {name} of type "
                        f"{type(images).__name__}") from error
    expected = "uint8 in [0, 255] or float in [-1, 1]"
    if images.dtype != tf.uint8 and not images.dtype.is_floating:
        raise TypeError(f"`{name}` must be {expected}. Received: {name}.dtype={images.dtype.name}")
    shape = images.shape
    if shape.rank != 4 or shape[-1] not in (1, 3):
        raise ValueError(f"`{name}` must have shape [N, H, W, C] with C = 1 or 3. "
                         f"Received: {name}.shape={shape}")
    if images.dtype == tf.uint8:
        return tf.cast(images, tf.float32) / 127.5 - 1.0
    return _check_unit_range(tf.cast(images, tf.float32), name)


def _check_unit_range(images, name):
    """Refuses NaN, infinities and values outside [-1, 1]."""
    message = f"`{name}` holds float images, which must be finite and in [-1, 1]"
    if tf.executing_eagerly():
        if images.shape.num_elements() == 0:
            return images
        low, high = float(tf.reduce_min(images)), float(tf.reduce_max(images))
        if not tf.reduce_all(tf.math.is_finite(images)):
            raise ValueError(f"{message}. Received: {name} containing NaN or infinity")
        if low < -1.0 or high > 1.0:
            raise ValueError(f"{message} (scale uint8 with x / 127.5 - 1, or pass uint8). "
                             f"Received: {name} with values in [{low:g}, {high:g}]")
        return images
    checks = [
        tf.debugging.assert_all_finite(images, f"{message}: it contains NaN or infinity"),
        tf.debugging.assert_greater_equal(images, -1.0, message=message),
        tf.debugging.assert_less_equal(images, 1.0, message=message),
    ]
    with tf.control_dependencies(checks):
        return tf.identity(images)


class FeatureExtractor:
    """Images -> features through a Keras model, after checking, scaling and resizing.

    Args:
        model: Keras model mapping float32 `[B, S, S, 3]` in [-1, 1] to `[B, D]`.
        input_size: S, the side the images are resized to (bilinear,
            antialiased when shrinking) unless they already have it.
        feature_dim: D.
        batch_size: images per model call, bounding the memory of one call.
        name: a name for messages and summaries.

    Attributes:
        model, input_size, feature_dim, batch_size, name: as given.
    """

    def __init__(self, model: keras.Model, input_size: int, feature_dim: int,
                 batch_size: int = 256, name: str = "features"):
        self.model = model
        self.input_size = validation.check_int("input_size", input_size)
        self.feature_dim = validation.check_int("feature_dim", feature_dim)
        self.batch_size = validation.check_int("batch_size", batch_size)
        self.name = name

    def preprocess(self, images: Any) -> tf.Tensor:
        """Checked images -> the model's input: float32 `[N, S, S, 3]` in [-1, 1]."""
        images = as_float_images(images)
        if images.shape[-1] == 1:
            images = tf.tile(images, [1, 1, 1, 3])
        if tuple(images.shape[1:3]) != (self.input_size, self.input_size):
            size = [self.input_size, self.input_size]
            images = tf.image.resize(images, size, method="bilinear", antialias=True)
        return images

    def __call__(self, images: Any) -> tf.Tensor:
        """Features of `images` (see `as_float_images`): float32 `[N, D]`."""
        images = self.preprocess(images)
        num = images.shape[0]
        if num is None or num <= self.batch_size:
            return tf.cast(self.model(images, training=False), tf.float32)
        parts = [self.model(images[i:i + self.batch_size], training=False)
                 for i in range(0, num, self.batch_size)]
        return tf.cast(tf.concat(parts, axis=0), tf.float32)

    def __repr__(self):
        return (f"FeatureExtractor(name={self.name!r}, input_size={self.input_size}, "
                f"feature_dim={self.feature_dim})")


def _keras_home():
    """Where `keras.utils.get_file` caches downloads: `$KERAS_HOME` or ~/.keras."""
    return os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")


def inception_weights_path(cache_dir: Optional[str] = None) -> str:
    """Where `inception_features("imagenet")` looks for (and downloads) the weights: `CACHE/models/FILE`.

    Args:
        cache_dir: Keras' cache directory; None for `$KERAS_HOME` or ~/.keras.
    """
    cache_dir = _keras_home() if cache_dir is None else os.fspath(cache_dir)
    return os.path.join(cache_dir, "models", INCEPTION_WEIGHTS_FILE)


def _inception_weights(download, cache_dir):
    """The path of the cached ImageNet weights, downloading them if allowed."""
    cache_dir = _keras_home() if cache_dir is None else os.fspath(cache_dir)
    path = inception_weights_path(cache_dir)
    if os.path.exists(path):
        return path
    advice = (f"Copy {INCEPTION_WEIGHTS_FILE} (from {_INCEPTION_ORIGIN}) to {path}, or pass "
              "`weights=` the path of a local copy. Offline, the built-in shapes data can use "
              "`shapes_features()` instead.")
    if not download:
        raise FileNotFoundError(f"InceptionV3 ImageNet weights are not available offline: {path} "
                                f"does not exist and download=False. {advice}")
    try:
        return keras.utils.get_file(INCEPTION_WEIGHTS_FILE, _INCEPTION_ORIGIN, cache_subdir="models",
                                    file_hash=_INCEPTION_MD5, cache_dir=cache_dir)
    except Exception as error:  # get_file raises a bare Exception on URL errors.
        raise OSError(f"Could not download the InceptionV3 ImageNet weights ({error}). "
                      f"{advice}") from error


def inception_features(weights: str = "imagenet", *, download: bool = True,
                       cache_dir: Optional[str] = None, batch_size: int = 64) -> FeatureExtractor:
    """InceptionV3 pool features (2048-d), the feature space of FID and KID.

    Images are resized to 299x299 (bilinear, antialiased when shrinking) and
    fed in [-1, 1], which is InceptionV3's preprocessing; grayscale is
    repeated to RGB. The features are the global average pool of the last
    convolutional block (`include_top=False, pooling="avg"`).

    Keras' ImageNet weights are not the 2015 TensorFlow Inception graph that
    the FID reference code uses, so FIDs computed with them are comparable
    with each other but not with published numbers.

    Args:
        weights: "imagenet" for Keras' weights, cached in
            `cache_dir/models/` (downloaded there, 87 MB, if `download`), or
            the path of a weights file of the same network.
        download: With "imagenet", download missing weights; with False a
            missing file raises instead of reaching the network.
        cache_dir: Keras' cache directory; None for `$KERAS_HOME` or ~/.keras.
        batch_size: Images per network call.

    Returns:
        `FeatureExtractor` with `feature_dim` 2048 and `input_size` 299.

    Raises:
        FileNotFoundError: ImageNet weights not cached and `download=False`,
            or a `weights` path that does not exist.
        OSError: the download failed (e.g. offline).

    References:
        Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge
        to a Local Nash Equilibrium", NeurIPS 2017 (FID on pool3 features).
    """
    validation.check_bool("download", download)
    if not isinstance(weights, (str, os.PathLike)):
        raise TypeError(f"`weights` must be 'imagenet' or a file path. Received: weights={weights!r}")
    if weights == "imagenet":
        weights = _inception_weights(download, cache_dir)
    elif not os.path.exists(weights):
        raise FileNotFoundError(f"`weights` must be 'imagenet' or an existing weights file. "
                                f"Received: weights={weights!r}, which does not exist")
    model = keras.applications.InceptionV3(
        include_top=False, weights=os.fspath(weights), pooling="avg",
        input_shape=(_INCEPTION_INPUT_SIZE, _INCEPTION_INPUT_SIZE, 3))
    return FeatureExtractor(model, _INCEPTION_INPUT_SIZE, 2048, batch_size, name="inception_v3")


def build_shapes_network(seed: Optional[int] = None) -> keras.Model:
    """The shapes classifier's architecture (untrained), 75k parameters.

    Four 3x3 convolutions (32, 32, 64, 64 channels, ReLU, a 2x2 max pool
    after each pair), global average pooling, a 128-unit ReLU layer named
    "features" (the FID/KID features) and a linear layer named "logits".

    Args:
        seed: Seed of the initial weights; None for a random one.

    Returns:
        Keras model: float32 `[B, SHAPES_INPUT_SIZE, SHAPES_INPUT_SIZE, 3]`
        in [-1, 1] -> logits `[B, len(shapes.CLASS_NAMES)]`.
    """
    seed = validation.check_seed("seed", seed, minimum=0)

    def init(k):  # layer k's seed, within int64
        return keras.initializers.HeNormal(None if seed is None else (seed + k) % (validation.SEED_MAX + 1))

    size = SHAPES_INPUT_SIZE
    inputs = keras.Input((size, size, 3), name="images")
    x = inputs
    for k, channels in enumerate((32, 32, 64, 64)):
        x = keras.layers.Conv2D(channels, 3, padding="same", activation="relu",
                                kernel_initializer=init(k), name=f"conv{k}")(x)
        if k % 2 == 1:
            x = keras.layers.MaxPooling2D(name=f"pool{k // 2}")(x)
    x = keras.layers.GlobalAveragePooling2D(name="average")(x)
    x = keras.layers.Dense(128, activation="relu", kernel_initializer=init(4), name="features")(x)
    logits = keras.layers.Dense(len(shapes.CLASS_NAMES), kernel_initializer=init(5),
                                name="logits")(x)
    return keras.Model(inputs, logits, name="shapes_network")


def shapes_features(output: str = "features", *, weights: Optional[str] = None,
                    batch_size: int = 256) -> FeatureExtractor:
    """The shipped shapes network as a feature extractor; works offline.

    Trained on the shapes training split (seed 0) rendered at 8, 16 and 32
    pixels, every image resized to 16x16, by
    `benchmarks/train_shapes_features.py`. Images of any other size are
    resized to 16x16 (bilinear, antialiased when shrinking).

    Args:
        output: "features" for the 128-d penultimate ReLU layer (FID/KID;
            scaled to a mean square of 0.25 per unit on the training split),
            or "logits" for the 8 class logits (`shapes.CLASS_NAMES` order).
        weights: A `.weights.h5` file; None for the shipped
            `SHAPES_WEIGHTS_PATH`.
        batch_size: Images per network call.

    Returns:
        `FeatureExtractor` with `feature_dim` 128 (features) or 8 (logits).
    """
    validation.check_choice("output", output, _SHAPES_OUTPUTS)
    weights = SHAPES_WEIGHTS_PATH if weights is None else os.fspath(weights)
    if not os.path.exists(weights):
        raise FileNotFoundError(f"`weights` must be an existing .weights.h5 file. Received: "
                                f"weights={weights!r}, which does not exist")
    network = build_shapes_network(seed=0)
    network.load_weights(weights)
    layer = network.get_layer(output)
    model = keras.Model(network.input, layer.output, name=f"shapes_{output}")
    return FeatureExtractor(model, SHAPES_INPUT_SIZE, layer.units, batch_size,
                            name=f"shapes_{output}")
