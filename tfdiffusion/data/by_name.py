"""`load_dataset`: a data set by name, as the command line names it: "shapes", a folder, or a TFDS name."""

import os
from typing import Optional

import tensorflow as tf

from tfdiffusion import validation
from tfdiffusion.data.builtin import load_shapes
from tfdiffusion.data.folder import load_image_folder
from tfdiffusion.data.pipeline import ImageDataset
from tfdiffusion.data.tfds_loader import load_tfds

__all__ = ["dataset_kind", "load_dataset"]


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def dataset_kind(name: str) -> str:
    """How `load_dataset` reads `name`: "shapes" (the built-in data, even where a folder of that name
    exists), "folder" (an existing path, relative to the current directory or absolute), else "tfds"."""
    if name == "shapes":
        return "shapes"
    return "folder" if os.path.exists(name) else "tfds"


def load_dataset(name: str, split: Optional[str] = None, image_size: int = 32, batch_size: int = 64, *,
                 training: bool = True, channels: int = 3, with_labels: Optional[bool] = None,
                 data_dir: Optional[str] = None, seed: int = 0, download: bool = True,
                 skip_unreadable: bool = False) -> ImageDataset:
    """Loads the built-in shapes, an image folder, or a TFDS data set, by name.

    Args:
        name: "shapes" (built in, no download), an existing directory of
            images (class sub-folders give labels), or a TFDS name such as
            "mnist" or "cifar10".
        split: shapes "train"/"test", a TFDS split ("test", "train[:10%]");
            None for "train". Not for an image folder.
        image_size: H = W in pixels.
        batch_size: images per batch.
        training: shuffle, flip and drop a last partial batch (training), or
            keep the data in order and every image (evaluation).
        channels: channels of an image folder (TFDS and shapes have their own).
        with_labels: None to yield labels when the data has them; False not to.
        data_dir: where TFDS data sets live.
        seed: shuffle and flip seed.
        download: let TFDS download a data set that is not in `data_dir`.
        skip_unreadable: leave out unreadable files of an image folder
            (`load_image_folder`) instead of refusing the folder.

    Returns:
        An `ImageDataset`.

    Raises:
        ValueError: the name is none of the three kinds, or the loader refused
            its arguments; the message names `name`.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"`name` must be a data set name or a directory. Received: name={name!r}")
    validation.check_bool("training", training)
    validation.check_bool("download", download)
    validation.check_bool("skip_unreadable", skip_unreadable)
    seed = validation.check_seed("seed", seed)
    options = dict(shuffle=training, seed=seed, drop_remainder=training)
    try:
        kind = dataset_kind(name)
        if kind == "shapes":
            return load_shapes(split or "train", image_size, batch_size, with_labels=with_labels is not False,
                               **options)
        if kind == "folder":
            if split is not None:
                raise ValueError(f"a split ({split!r}) applies to shapes and TFDS, not to the image folder")
            return load_image_folder(name, image_size, batch_size, channels=channels, random_flip=training,
                                     with_labels=with_labels, skip_unreadable=skip_unreadable, **options)
    except (ValueError, TypeError, OSError, tf.errors.OpError) as error:
        raise ValueError(f"data set {name!r}: {_one_line(error)}") from None
    try:
        return load_tfds(name, split or "train", image_size, batch_size, data_dir=data_dir, download=download,
                         random_flip=training, with_labels=with_labels, **options)
    except (ValueError, TypeError, OSError, tf.errors.OpError) as error:
        raise ValueError(f"data set {name!r} is not 'shapes' or an existing directory, and as a TFDS name: "
                         f"{_one_line(error)}") from None
