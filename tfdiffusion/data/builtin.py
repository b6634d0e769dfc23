"""`load_shapes`: the built-in shapes data set as a batched pipeline; needs no download."""

import tensorflow as tf

from tfdiffusion import shapes
from tfdiffusion import validation
from tfdiffusion.data import pipeline

__all__ = ["load_shapes"]

# The built-in splits: fixed data seeds (so "test" is held out from "train")
# and default sizes.
_SHAPES_SPLITS = {"train": (0, 20000), "test": (1, 2000)}


def load_shapes(
    split="train",
    image_size=16,
    batch_size=64,
    *,
    num_images=None,
    shuffle=True,
    seed=0,
    drop_remainder=True,
    repeat=False,
    with_labels=True,
):
    """Loads the built-in shapes data set; needs no download.

    The images of a split are fixed: "train" is
    `shapes.make_shapes(num_images, image_size, seed=0)` (20000 images by
    default) and "test" is `make_shapes(num_images, image_size, seed=1)`
    (2000 by default), so the test images are held out from training.
    Classes: `shapes.CLASS_NAMES`.

    Args:
        split: "train" or "test".
        image_size: H = W in pixels, an integer >= 8.
        batch_size: Images per batch B.
        num_images: Images in the split; None for the default size.
        shuffle: Shuffle the whole split, anew on every pass.
        seed: Seed of the shuffle order (not of the images).
        drop_remainder: Drop a last, smaller batch (static batch shape).
        repeat: Repeat indefinitely.
        with_labels: Yield `(images, labels)` rather than `images`.

    Returns:
        `ImageDataset` with channels 3 and, when `with_labels`,
        num_classes `len(shapes.CLASS_NAMES)`; see `ImageDataset.batches`.
    """
    if split not in _SHAPES_SPLITS:
        raise ValueError(
            f"`split` must be one of {sorted(_SHAPES_SPLITS)}. Received: split={split!r}"
        )
    batch_size = validation.check_int("batch_size", batch_size)
    seed = pipeline.check_options(seed, with_labels, shuffle=shuffle, drop_remainder=drop_remainder, repeat=repeat)
    data_seed, default_size = _SHAPES_SPLITS[split]
    num_images = default_size if num_images is None else validation.check_int("num_images", num_images)
    pipeline.check_enough_examples(
        num_images, batch_size, drop_remainder, repeat, f"shapes split {split!r}"
    )
    images, labels = shapes.make_shapes(num_images, image_size, seed=data_seed)
    ds = tf.data.Dataset.from_tensor_slices({"image": images, "label": labels})
    ds = pipeline.batch_and_scale(
        ds,
        batch_size=batch_size,
        shuffle_buffer=num_images if shuffle else None,
        seed=seed,
        random_flip=False,
        drop_remainder=drop_remainder,
        repeat=repeat,
        with_labels=with_labels,
    )
    return pipeline.ImageDataset(
        batches=ds,
        image_size=int(image_size),
        channels=3,
        num_classes=len(shapes.CLASS_NAMES) if with_labels else None,
        class_names=shapes.CLASS_NAMES if with_labels else None,
        num_examples=num_images,
    )


