"""The pipeline tail every loader shares: `ImageDataset`, crop-and-resize to the 8-bit grid, shuffle, batch, flip, scale."""

import dataclasses
from typing import Optional, Tuple

import tensorflow as tf

from tfdiffusion import validation

__all__ = ["ImageDataset", "batch_and_scale", "check_enough_examples", "check_options", "crop_resize"]


@dataclasses.dataclass(frozen=True)
class ImageDataset:
    """A batched image data set and what a model needs to know about it.

    Every loader returns one. Pass `batches` to `model.fit`.

    Attributes:
        batches: `tf.data.Dataset` of batches. Each element is
            `(images, labels)` when `num_classes` is not None, else `images`:
            `images` float32 `[B, H, W, C]` in [-1, 1] on the 8-bit grid
            (`k / 127.5 - 1` for integer k in [0, 255]); `labels` int32 `[B]`
            in [0, num_classes). B is static when `drop_remainder=True`.
        image_size: H = W, in pixels.
        channels: C, 1 (grayscale) or 3 (RGB).
        num_classes: Number of classes of the labels the data set yields, or
            None when it yields images only.
        class_names: Name of each label, `class_names[label]`, or None when
            the data set yields images only.
        num_examples: Number of images in one pass over the source (before
            batching), or None when unknown.
        num_skipped: Files left out as unreadable (image folders with
            `skip_unreadable=True`).
    """

    batches: tf.data.Dataset
    image_size: int
    channels: int
    num_classes: Optional[int]
    class_names: Optional[Tuple[str, ...]]
    num_examples: Optional[int]
    num_skipped: int = 0


def check_options(seed, with_labels=None, **switches):
    """Checks the loaders' shared options before any work: the seed (None or an int64) and the switches
    (`shuffle=`, `repeat=`, ...: True or False; `with_labels` may also be None). Returns the seed."""
    for name, value in switches.items():
        validation.check_bool(name, value)
    if with_labels is not None:
        validation.check_bool("with_labels", with_labels)
    return validation.check_seed("seed", seed)


def check_enough_examples(num_examples, batch_size, drop_remainder, repeat, source):
    """Refuses a pipeline that would yield no batch at all."""
    if num_examples is not None and drop_remainder and not repeat and num_examples < batch_size:
        raise ValueError(
            f"{source} has {num_examples} images, fewer than batch_size={batch_size}: with "
            "drop_remainder=True it would yield no batch. Use a smaller `batch_size`, "
            "`drop_remainder=False` or `repeat=True`."
        )



def crop_resize(image, image_size, channels, center_crop):
    """Maps one image to uint8 `[image_size, image_size, channels]` on the 8-bit grid.

    Args:
        image: `[H, W, C_in]` uint8 or float in [0, 255], C_in 1, 3 or 4
            (alpha is dropped; RGB is converted to gray when channels == 1).
        image_size: Output height and width.
        channels: Output channels, 1 or 3.
        center_crop: Crop the largest central square before resizing;
            otherwise the image is resized to a square, changing its aspect.

    Returns:
        uint8 `[image_size, image_size, channels]`: resized in float
        (bilinear, antialiased when downsampling), then rounded.
    """
    image = tf.cast(image, tf.float32)
    in_channels = image.shape[-1]
    if in_channels == 4:
        image = image[..., :3]
        in_channels = 3
    if channels == 1 and in_channels == 3:
        image = tf.image.rgb_to_grayscale(image)
    elif channels == 3 and in_channels == 1:
        image = tf.image.grayscale_to_rgb(image)
    if center_crop:
        height, width = tf.shape(image)[0], tf.shape(image)[1]
        side = tf.minimum(height, width)
        image = tf.image.crop_to_bounding_box(
            image, (height - side) // 2, (width - side) // 2, side, side
        )
    image = tf.image.resize(image, [image_size, image_size], method="bilinear", antialias=True)
    image = tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)
    image.set_shape([image_size, image_size, channels])
    return image



def batch_and_scale(
    ds, *, batch_size, shuffle_buffer, seed, random_flip, drop_remainder, repeat, with_labels
):
    """Shared tail of every loader: shuffle, repeat, batch, flip, scale, prefetch.

    Args:
        ds: Dataset of dicts `{"image": uint8 [H, W, C], "label": int32 []}`.
        shuffle_buffer: Shuffle buffer size, or None not to shuffle here.
        seed: Seed of the shuffle and of the flips; None for a random one.
        random_flip: Flip each image left-right with probability 1/2,
            anew on every pass over the data.
        with_labels: Yield `(images, labels)` rather than `images`.

    Returns:
        Dataset of float32 `[B, H, W, C]` in [-1, 1] (and int32 `[B]`).
    """
    if shuffle_buffer:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=drop_remainder, num_parallel_calls=tf.data.AUTOTUNE)

    def finish(batch, flip_seed=None):
        images = batch["image"]
        if flip_seed is not None:
            flip = tf.random.stateless_uniform([tf.shape(images)[0]], seed=flip_seed) < 0.5
            images = tf.where(flip[:, None, None, None], tf.reverse(images, axis=[2]), images)
        images = tf.cast(images, tf.float32) / 127.5 - 1.0
        return (images, batch["label"]) if with_labels else images

    if random_flip:
        flip_seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip((ds, flip_seeds))
    ds = ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


