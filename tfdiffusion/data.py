"""tf.data input pipelines: TFDS data sets, image folders and the built-in shapes data set."""

import dataclasses
import os
from typing import Optional, Tuple

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from tfdiffusion import shapes

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageDataset",
    "load_image_folder",
    "load_shapes",
    "load_tfds",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")

# The built-in splits: fixed data seeds (so "test" is held out from "train")
# and default sizes.
_SHAPES_SPLITS = {"train": (0, 20000), "test": (1, 2000)}


@dataclasses.dataclass(frozen=True)
class ImageDataset:
    """A batched image data set and what a model needs to know about it.

    Every loader in this module returns one. Pass `dataset` to `model.fit`.

    Attributes:
        dataset: `tf.data.Dataset` of batches. Each element is
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
    """

    dataset: tf.data.Dataset
    image_size: int
    channels: int
    num_classes: Optional[int]
    class_names: Optional[Tuple[str, ...]]
    num_examples: Optional[int]


def _check_int(name, value, minimum=1):
    """Raises a ValueError unless `value` is an integer >= `minimum`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        expected = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"`{name}` must be {expected}. Received: {name}={value!r}")
    return int(value)


def _check_enough_examples(num_examples, batch_size, drop_remainder, repeat, source):
    """Refuses a pipeline that would yield no batch at all."""
    if num_examples is not None and drop_remainder and not repeat and num_examples < batch_size:
        raise ValueError(
            f"{source} has {num_examples} images, fewer than batch_size={batch_size}: with "
            "drop_remainder=True it would yield no batch. Use a smaller `batch_size`, "
            "`drop_remainder=False` or `repeat=True`."
        )


def _crop_resize(image, image_size, channels, center_crop):
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


def _batch_and_scale(
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
        num_classes `len(shapes.CLASS_NAMES)`; see `ImageDataset.dataset`.
    """
    if split not in _SHAPES_SPLITS:
        raise ValueError(
            f"`split` must be one of {sorted(_SHAPES_SPLITS)}. Received: split={split!r}"
        )
    batch_size = _check_int("batch_size", batch_size)
    data_seed, default_size = _SHAPES_SPLITS[split]
    num_images = default_size if num_images is None else _check_int("num_images", num_images)
    _check_enough_examples(
        num_images, batch_size, drop_remainder, repeat, f"shapes split {split!r}"
    )
    images, labels = shapes.make_shapes(num_images, image_size, seed=data_seed)
    ds = tf.data.Dataset.from_tensor_slices({"image": images, "label": labels})
    ds = _batch_and_scale(
        ds,
        batch_size=batch_size,
        shuffle_buffer=num_images if shuffle else None,
        seed=seed,
        random_flip=False,
        drop_remainder=drop_remainder,
        repeat=repeat,
        with_labels=with_labels,
    )
    return ImageDataset(
        dataset=ds,
        image_size=int(image_size),
        channels=3,
        num_classes=len(shapes.CLASS_NAMES) if with_labels else None,
        class_names=shapes.CLASS_NAMES if with_labels else None,
        num_examples=num_images,
    )


def load_tfds(
    name,
    split="train",
    image_size=32,
    batch_size=64,
    *,
    data_dir=None,
    download=True,
    shuffle=True,
    seed=0,
    random_flip=True,
    center_crop=True,
    drop_remainder=True,
    repeat=False,
    with_labels=None,
    shuffle_buffer=10000,
    image_key="image",
    label_key="label",
):
    """Loads a TensorFlow Datasets image data set as a batched pipeline.

    Each image is center-cropped to a square, resized to `image_size`
    (bilinear, antialiased), rounded to uint8, randomly flipped left-right,
    and scaled to [-1, 1]. Grayscale data sets keep one channel; an alpha
    channel is dropped.

    Args:
        name: TFDS name, optionally with config and version, e.g. "cifar10",
            "mnist", "celeb_a_hq/128".
        split: TFDS split, e.g. "train", "test", "train[:90%]".
        image_size: Output H = W in pixels.
        batch_size: Images per batch B.
        data_dir: Where TFDS data lives; None for the TFDS default
            (`$TFDS_DATA_DIR` or ~/tensorflow_datasets).
        download: Download and prepare the data set if it is not in
            `data_dir`. With False, missing data raises a ValueError instead
            of reaching the network.
        shuffle: Shuffle files and examples, anew on every pass.
        seed: Seed of the shuffle and of the flips.
        random_flip: Flip images left-right with probability 1/2.
        center_crop: Crop the largest central square before resizing;
            otherwise the image is squashed to a square.
        drop_remainder: Drop a last, smaller batch (static batch shape).
        repeat: Repeat indefinitely.
        with_labels: Yield `(images, labels)`; None to do so exactly when the
            data set has a `tfds.features.ClassLabel` under `label_key`.
        shuffle_buffer: Examples in the shuffle buffer (held after resizing).
        image_key: Feature holding the image.
        label_key: Feature holding the class label.

    Returns:
        `ImageDataset`; see `ImageDataset.dataset`.

    Raises:
        ValueError: unknown data set, no image feature, labels requested but
            absent, or data not found in `data_dir` with `download=False`.
    """
    image_size = _check_int("image_size", image_size)
    batch_size = _check_int("batch_size", batch_size)
    shuffle_buffer = _check_int("shuffle_buffer", shuffle_buffer)
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.DatasetNotFoundError as error:
        raise ValueError(
            f"Unknown TFDS data set. Received: name={name!r}. "
            "See `tfds.list_builders()` for the available names."
        ) from error
    features = builder.info.features
    image_feature = features[image_key] if image_key in features else None
    if not isinstance(image_feature, tfds.features.Image):
        raise ValueError(
            f"TFDS data set {name!r} has no image feature {image_key!r}; its features are "
            f"{sorted(features)}. Pass `image_key` to name the image feature."
        )
    if image_feature.np_dtype != np.uint8 or image_feature.shape[-1] not in (1, 3, 4):
        raise ValueError(
            f"TFDS image feature {name}[{image_key!r}] must be uint8 with 1, 3 or 4 channels. "
            f"Received: dtype={image_feature.np_dtype}, shape={image_feature.shape}"
        )
    channels = 1 if image_feature.shape[-1] == 1 else 3
    label_feature = features[label_key] if label_key in features else None
    has_labels = isinstance(label_feature, tfds.features.ClassLabel)
    if with_labels is None:
        with_labels = has_labels
    elif with_labels and not has_labels:
        raise ValueError(
            f"with_labels=True but TFDS data set {name!r} has no ClassLabel feature "
            f"{label_key!r}; its features are {sorted(features)}."
        )

    if download:
        builder.download_and_prepare()
    try:
        ds = builder.as_dataset(
            split=split, shuffle_files=shuffle, read_config=tfds.ReadConfig(shuffle_seed=seed)
        )
    except AssertionError as error:  # How TFDS reports data missing from `data_dir`.
        raise ValueError(
            f"TFDS data set {name!r} is not prepared: looked in {builder.data_dir!r} "
            f"(data_dir={data_dir!r}) with download=False. Pass download=True, run "
            f"`tfds build {name} --data_dir=...`, or point `data_dir` at prepared data."
        ) from error
    try:
        num_examples = builder.info.splits[split].num_examples
    except (KeyError, ValueError):  # Split sizes are unknown before preparation.
        num_examples = None
    _check_enough_examples(
        num_examples, batch_size, drop_remainder, repeat, f"TFDS {name!r} split {split!r}"
    )

    def preprocess(example):
        out = {"image": _crop_resize(example[image_key], image_size, channels, center_crop)}
        if with_labels:
            out["label"] = tf.cast(example[label_key], tf.int32)
        return out

    ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
    ds = _batch_and_scale(
        ds,
        batch_size=batch_size,
        shuffle_buffer=shuffle_buffer if shuffle else None,
        seed=seed,
        random_flip=random_flip,
        drop_remainder=drop_remainder,
        repeat=repeat,
        with_labels=with_labels,
    )
    return ImageDataset(
        dataset=ds,
        image_size=image_size,
        channels=channels,
        num_classes=label_feature.num_classes if with_labels else None,
        class_names=tuple(label_feature.names) if with_labels else None,
        num_examples=num_examples,
    )


def _is_image_file(filename):
    return filename.lower().endswith(IMAGE_EXTENSIONS) and not filename.startswith(".")


def _images_under(directory):
    """Sorted paths of all image files below `directory`, recursively."""
    found = []
    for root, _, files in tf.io.gfile.walk(directory):
        found.extend(os.path.join(root, f) for f in files if _is_image_file(f))
    return sorted(found)


def load_image_folder(
    path,
    image_size=32,
    batch_size=64,
    *,
    channels=3,
    shuffle=True,
    seed=0,
    random_flip=True,
    center_crop=True,
    drop_remainder=True,
    repeat=False,
    with_labels=None,
):
    """Loads a directory of images (local or any `tf.io.gfile` path, e.g. gs://).

    Two layouts are understood:

    - flat: image files directly in `path` (unlabelled);
    - class sub-folders: `path/<class_name>/**/<image>`; label k is the k-th
      folder name in sorted order, and `class_names` lists them.

    Files ending in .png, .jpg, .jpeg, .bmp or .gif (case-insensitive) are
    images; of a GIF the first frame is used. Hidden entries and sub-folders
    holding no image are ignored. Preprocessing is that of `load_tfds`.

    Args:
        path: The directory.
        image_size: Output H = W in pixels.
        batch_size: Images per batch B.
        channels: Output channels C: 3 (RGB) or 1 (grayscale).
        shuffle: Shuffle the files, anew on every pass.
        seed: Seed of the shuffle and of the flips.
        random_flip: Flip images left-right with probability 1/2.
        center_crop: Crop the largest central square before resizing;
            otherwise the image is squashed to a square.
        drop_remainder: Drop a last, smaller batch (static batch shape).
        repeat: Repeat indefinitely.
        with_labels: Yield `(images, labels)`; None to do so exactly when the
            folder has class sub-folders.

    Returns:
        `ImageDataset`; see `ImageDataset.dataset`.

    Raises:
        ValueError: `path` is not a directory, holds no image, mixes images
            with class sub-folders, or labels are requested of a flat folder.
    """
    image_size = _check_int("image_size", image_size)
    batch_size = _check_int("batch_size", batch_size)
    if channels not in (1, 3):
        raise ValueError(f"`channels` must be 1 or 3. Received: channels={channels!r}")
    path = os.fspath(path)
    if not tf.io.gfile.isdir(path):
        raise ValueError(f"Image folder not found: {path!r} is not a directory.")

    top_images, class_names, class_files = [], [], []
    for entry in sorted(e.rstrip("/") for e in tf.io.gfile.listdir(path)):
        full = os.path.join(path, entry)
        if entry.startswith("."):
            continue
        if tf.io.gfile.isdir(full):
            files = _images_under(full)
            if files:
                class_names.append(entry)
                class_files.append(files)
        elif _is_image_file(entry):
            top_images.append(full)
    if top_images and class_names:
        raise ValueError(
            f"Image folder {path!r} mixes image files with class sub-folders "
            f"{class_names}. Put every image in a class sub-folder, or all directly in the folder."
        )
    if not top_images and not class_names:
        raise ValueError(
            f"No images found in {path!r}: expected files ending in {', '.join(IMAGE_EXTENSIONS)} "
            "directly in it or in class sub-folders."
        )
    if with_labels is None:
        with_labels = bool(class_names)
    elif with_labels and not class_names:
        raise ValueError(
            f"with_labels=True but image folder {path!r} has no class sub-folders; labels "
            "come from sub-folder names (path/<class_name>/<image>)."
        )
    if class_names:
        paths = [f for files in class_files for f in files]
        labels = [k for k, files in enumerate(class_files) for _ in files]
    else:
        paths, labels = top_images, [0] * len(top_images)
    _check_enough_examples(len(paths), batch_size, drop_remainder, repeat, f"Image folder {path!r}")

    ds = tf.data.Dataset.from_tensor_slices(
        {"path": tf.constant(paths), "label": tf.constant(labels, tf.int32)}
    )
    if shuffle:
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)

    def load(element):
        image = tf.io.decode_image(
            tf.io.read_file(element["path"]), channels=3, expand_animations=False
        )
        image.set_shape([None, None, 3])
        out = {"image": _crop_resize(image, image_size, channels, center_crop)}
        if with_labels:
            out["label"] = element["label"]
        return out

    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)
    ds = _batch_and_scale(
        ds,
        batch_size=batch_size,
        shuffle_buffer=None,
        seed=seed,
        random_flip=random_flip,
        drop_remainder=drop_remainder,
        repeat=repeat,
        with_labels=with_labels,
    )
    return ImageDataset(
        dataset=ds,
        image_size=image_size,
        channels=channels,
        num_classes=len(class_names) if with_labels else None,
        class_names=tuple(class_names) if with_labels else None,
        num_examples=len(paths),
    )
