"""`load_tfds`: any TensorFlow Datasets image data set as a batched pipeline."""

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from tfdiffusion import validation
from tfdiffusion.data import pipeline

__all__ = ["load_tfds"]


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
        `ImageDataset`; see `ImageDataset.batches`.

    Raises:
        ValueError: unknown data set, no image feature, labels requested but
            absent, or data not found in `data_dir` with `download=False`.
    """
    image_size = validation.check_int("image_size", image_size)
    batch_size = validation.check_int("batch_size", batch_size)
    shuffle_buffer = validation.check_int("shuffle_buffer", shuffle_buffer)
    seed = pipeline.check_options(seed, with_labels, download=download, shuffle=shuffle, random_flip=random_flip,
                                  center_crop=center_crop, drop_remainder=drop_remainder, repeat=repeat)
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.DatasetNotFoundError as error:
        raise ValueError(
            f"Unknown TFDS data set. Received: name={name!r}. "
            "See `tfds.list_builders()` for the available names."
        ) from error
    except ImportError as error:  # A data set whose builder needs an optional package.
        raise ValueError(
            f"TFDS data set {name!r} needs a package that is not installed: {error}. "
            f"Install it (pip install {getattr(error, 'name', None) or 'the named package'}) and retry."
        ) from None
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
        try:
            builder.download_and_prepare()
        except ImportError as error:
            raise ValueError(
                f"Preparing TFDS data set {name!r} needs a package that is not installed: {error}"
            ) from None
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
    pipeline.check_enough_examples(
        num_examples, batch_size, drop_remainder, repeat, f"TFDS {name!r} split {split!r}"
    )

    def preprocess(example):
        out = {"image": pipeline.crop_resize(example[image_key], image_size, channels, center_crop)}
        if with_labels:
            out["label"] = tf.cast(example[label_key], tf.int32)
        return out

    ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
    ds = pipeline.batch_and_scale(
        ds,
        batch_size=batch_size,
        shuffle_buffer=shuffle_buffer if shuffle else None,
        seed=seed,
        random_flip=random_flip,
        drop_remainder=drop_remainder,
        repeat=repeat,
        with_labels=with_labels,
    )
    return pipeline.ImageDataset(
        batches=ds,
        image_size=image_size,
        channels=channels,
        num_classes=label_feature.num_classes if with_labels else None,
        class_names=tuple(label_feature.names) if with_labels else None,
        num_examples=num_examples,
    )


