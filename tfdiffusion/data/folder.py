"""`load_image_folder`: a directory of images (flat, or one sub-folder per class) as a batched pipeline."""

import os

import tensorflow as tf
from PIL import Image

from tfdiffusion import validation
from tfdiffusion.data import pipeline

__all__ = ["IMAGE_EXTENSIONS", "load_image_folder"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


def _is_image_file(filename):
    return filename.lower().endswith(IMAGE_EXTENSIONS) and not filename.startswith(".")


def _images_under(directory):
    """Sorted paths of all image files below `directory`, recursively, skipping hidden folders.

    A hidden folder at any depth (`.ipynb_checkpoints`, `.git`, ...) is
    pruned with everything below it.
    """
    found = []
    for root, _, files in tf.io.gfile.walk(directory):
        relative = os.path.relpath(root, directory)
        if any(part.startswith(".") for part in relative.split(os.sep) if part not in (".", "")):
            continue
        found.extend(os.path.join(root, f) for f in files if _is_image_file(f))
    return sorted(found)


def _unreadable(paths):
    """The paths PIL cannot open and verify (empty, truncated or foreign files), in order."""
    bad = []
    for path in paths:
        try:
            with tf.io.gfile.GFile(path, "rb") as file, Image.open(file) as image:
                image.verify()
        except Exception:  # PIL raises many kinds for a damaged file.
            bad.append(path)
    return bad


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
    skip_unreadable=False,
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
        skip_unreadable: Every file is opened and verified with PIL before the
            pipeline is built (a header read and, for PNG, a checksum pass);
            unreadable ones (empty, truncated, not images) are an error naming
            them, or, with True, left out and counted in `num_skipped`.

    Returns:
        `ImageDataset`; see `ImageDataset.batches`.

    Raises:
        ValueError: `path` is not a directory, holds no image, mixes images
            with class sub-folders, labels are requested of a flat folder, or
            files are unreadable (without `skip_unreadable`).
    """
    image_size = validation.check_int("image_size", image_size)
    batch_size = validation.check_int("batch_size", batch_size)
    seed = pipeline.check_options(seed, with_labels, shuffle=shuffle, random_flip=random_flip,
                                  center_crop=center_crop, drop_remainder=drop_remainder, repeat=repeat,
                                  skip_unreadable=skip_unreadable)
    if not validation.is_int(channels) or channels not in (1, 3):
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
    unreadable = set(_unreadable(paths))
    if unreadable and not skip_unreadable:
        listed = ", ".join(repr(p) for p in sorted(unreadable)[:5])
        more = f" and {len(unreadable) - 5} more" if len(unreadable) > 5 else ""
        raise ValueError(f"Image folder {path!r} has {len(unreadable)} unreadable image file(s): {listed}{more} "
                         "(empty, truncated or not an image). Remove them, or pass skip_unreadable=True.")
    if unreadable:
        kept = [i for i, p in enumerate(paths) if p not in unreadable]
        paths, labels = [paths[i] for i in kept], [labels[i] for i in kept]
    pipeline.check_enough_examples(len(paths), batch_size, drop_remainder, repeat, f"Image folder {path!r}")

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
        out = {"image": pipeline.crop_resize(image, image_size, channels, center_crop)}
        if with_labels:
            out["label"] = element["label"]
        return out

    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)
    ds = pipeline.batch_and_scale(
        ds,
        batch_size=batch_size,
        shuffle_buffer=None,
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
        num_classes=len(class_names) if with_labels else None,
        class_names=tuple(class_names) if with_labels else None,
        num_examples=len(paths),
        num_skipped=len(unreadable),
    )

