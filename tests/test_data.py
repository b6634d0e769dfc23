"""Tests of the tf.data pipelines: shapes, TFDS (mocked, offline) and image folders."""

import os
import re

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from tfdiffusion import data, shapes


def _collect(dataset):
    """All batches of a finite dataset as numpy: (images list, labels list or None)."""
    images, labels = [], []
    for element in dataset:
        if isinstance(element, tuple):
            images.append(element[0].numpy())
            labels.append(element[1].numpy())
        else:
            images.append(element.numpy())
    return images, (labels or None)


def _assert_on_8bit_grid(images):
    assert images.dtype == np.float32
    assert images.min() >= -1.0 and images.max() <= 1.0
    levels = (images.astype(np.float64) + 1.0) * 127.5
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)


def _to_uint8(images):
    return np.round((images.astype(np.float64) + 1.0) * 127.5).astype(np.uint8)


# ---------------------------------------------------------------- shapes ---


def test_shapes_batches_are_model_ready():
    loaded = data.load_shapes("train", image_size=16, batch_size=16, num_images=64)
    assert loaded.image_size == 16 and loaded.channels == 3
    assert loaded.num_classes == len(shapes.CLASS_NAMES)
    assert loaded.class_names == shapes.CLASS_NAMES
    assert loaded.num_examples == 64
    spec = loaded.batches.element_spec
    assert spec[0].shape.as_list() == [16, 16, 16, 3] and spec[0].dtype == tf.float32
    assert spec[1].shape.as_list() == [16] and spec[1].dtype == tf.int32
    images, labels = _collect(loaded.batches)
    images, labels = np.concatenate(images), np.concatenate(labels)
    _assert_on_8bit_grid(images)
    # One pass holds exactly the split: the same images and labels as the
    # generator with the train seed, in a shuffled order.
    expected_images, expected_labels = shapes.make_shapes(64, 16, seed=0)
    assert sorted(map(bytes, _to_uint8(images))) == sorted(map(bytes, expected_images))
    assert sorted(labels.tolist()) == sorted(expected_labels.tolist())
    assert not np.array_equal(labels, expected_labels)


def test_shapes_unshuffled_pairs_each_image_with_its_label():
    loaded = data.load_shapes("test", image_size=8, batch_size=10, num_images=30, shuffle=False)
    images, labels = _collect(loaded.batches)
    expected_images, expected_labels = shapes.make_shapes(30, 8, seed=1)
    np.testing.assert_array_equal(_to_uint8(np.concatenate(images)), expected_images)
    np.testing.assert_array_equal(np.concatenate(labels), expected_labels)


def test_shapes_train_and_test_are_disjoint():
    train = data.load_shapes("train", image_size=8, batch_size=500, num_images=2000)
    test = data.load_shapes("test", image_size=8, batch_size=500, num_images=500)
    train_images = np.concatenate(_collect(train.batches)[0])
    test_images = np.concatenate(_collect(test.batches)[0])
    train_keys = {image.tobytes() for image in train_images}
    assert not any(image.tobytes() in train_keys for image in test_images)


def test_shapes_shuffle_seed_sets_the_order():
    def labels(seed):
        loaded = data.load_shapes("test", image_size=8, batch_size=40, num_images=40, seed=seed)
        return np.concatenate(_collect(loaded.batches)[1])

    np.testing.assert_array_equal(labels(1), labels(1))
    assert not np.array_equal(labels(1), labels(2))


@pytest.mark.parametrize("drop_remainder, sizes", [(True, [32, 32, 32]), (False, [32, 32, 32, 4])])
def test_shapes_drop_remainder(drop_remainder, sizes):
    loaded = data.load_shapes(
        image_size=8, batch_size=32, num_images=100, drop_remainder=drop_remainder
    )
    images, _ = _collect(loaded.batches)
    assert [len(batch) for batch in images] == sizes


def test_shapes_without_labels_and_repeated():
    loaded = data.load_shapes(
        image_size=8, batch_size=8, num_images=16, with_labels=False, repeat=True
    )
    assert loaded.num_classes is None and loaded.class_names is None
    batches = list(loaded.batches.take(5))  # more than the 2 batches of one pass
    assert len(batches) == 5
    assert all(isinstance(b, tf.Tensor) and b.shape == (8, 8, 8, 3) for b in batches)


def test_shapes_dataset_feeds_keras_fit():
    loaded = data.load_shapes(image_size=8, batch_size=16, num_images=64)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Flatten(),
            keras.layers.Dense(loaded.num_classes),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    # shuffle=False: the pipeline shuffles; Keras warns otherwise.
    history = model.fit(loaded.batches, epochs=3, verbose=0, shuffle=False)
    losses = history.history["loss"]
    assert len(losses) == 3 and np.all(np.isfinite(losses))
    assert losses[-1] < losses[0]


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"batch_size": 0}, "`batch_size` must be an integer >= 1. Received: batch_size=0"),
        ({"split": "valid"}, "`split` must be one of ['test', 'train']. Received: split='valid'"),
        ({"image_size": 4}, "`image_size` must be an integer >= 8. Received: image_size=4"),
        ({"num_images": 10, "batch_size": 16}, "has 10 images, fewer than batch_size=16"),
    ],
)
def test_shapes_invalid_arguments(kwargs, error):
    with pytest.raises(ValueError, match=re.escape(error)):
        data.load_shapes(**{"image_size": 8, "num_images": 32, "batch_size": 8, **kwargs})


# ------------------------------------------------------------------ TFDS ---


def _raw_tfds(name, split, num):
    """The mocked examples as TFDS itself yields them, in file order."""
    ds = tfds.load(name, split=split, shuffle_files=False)
    examples = list(ds.take(num))
    return (
        np.stack([e["image"].numpy() for e in examples]),
        np.array([e["label"].numpy() for e in examples]),
    )


def test_tfds_cifar10_batches():
    with tfds.testing.mock_data(num_examples=12):
        loaded = data.load_tfds("cifar10", image_size=16, batch_size=4, download=False)
        images, labels = _collect(loaded.batches)
    assert loaded.channels == 3 and loaded.image_size == 16
    assert loaded.num_classes == 10
    # Mocked TFDS lacks the label-name files; real cifar10 names its classes.
    assert len(loaded.class_names) == 10
    assert len(images) == 3
    images, labels = np.concatenate(images), np.concatenate(labels)
    assert images.shape == (12, 16, 16, 3)
    _assert_on_8bit_grid(images)
    assert labels.dtype == np.int32
    assert labels.min() >= 0 and labels.max() < 10


@pytest.mark.parametrize("drop_remainder, sizes", [(True, [4, 4]), (False, [4, 4, 2])])
def test_tfds_mnist_is_grayscale_and_drops_remainder(drop_remainder, sizes):
    with tfds.testing.mock_data(num_examples=10):
        loaded = data.load_tfds(
            "mnist", image_size=8, batch_size=4, download=False, drop_remainder=drop_remainder
        )
        images, labels = _collect(loaded.batches)
    assert loaded.channels == 1
    batch_dim = 4 if drop_remainder else None
    assert loaded.batches.element_spec[0].shape.as_list() == [batch_dim, 8, 8, 1]
    assert [len(b) for b in images] == sizes
    assert [len(b) for b in labels] == sizes
    _assert_on_8bit_grid(np.concatenate(images))


def test_tfds_native_size_without_flip_is_the_raw_data():
    # Cropping a square image and resizing it to its own size are the
    # identity, so without flips the output is exactly raw / 127.5 - 1.
    with tfds.testing.mock_data(num_examples=8):
        raw_images, raw_labels = _raw_tfds("mnist", "train", 8)
        loaded = data.load_tfds(
            "mnist", image_size=28, batch_size=8, shuffle=False, random_flip=False, download=False
        )
        images, labels = _collect(loaded.batches)
    np.testing.assert_array_equal(images[0], raw_images.astype(np.float32) / 127.5 - 1.0)
    np.testing.assert_array_equal(labels[0], raw_labels)


def test_tfds_downsampling_matches_pil_bilinear():
    # Reference: PIL's antialiased bilinear reduction, computed independently.
    # Both round to uint8; fixed-point PIL may differ by one level.
    with tfds.testing.mock_data(num_examples=4):
        raw_images, _ = _raw_tfds("cifar10", "train", 4)
        loaded = data.load_tfds(
            "cifar10", image_size=16, batch_size=4, shuffle=False, random_flip=False, download=False
        )
        images, _ = _collect(loaded.batches)
    expected = np.stack(
        [np.asarray(Image.fromarray(x).resize((16, 16), Image.BILINEAR)) for x in raw_images]
    ).astype(np.int64)
    assert np.abs(_to_uint8(images[0]).astype(np.int64) - expected).max() <= 1


@pytest.mark.parametrize("random_flip", [True, False])
def test_tfds_random_flip(random_flip):
    with tfds.testing.mock_data(num_examples=32):
        raw_images, _ = _raw_tfds("mnist", "train", 32)
        loaded = data.load_tfds(
            "mnist", image_size=28, batch_size=32, shuffle=False, random_flip=random_flip,
            download=False,
        )
        images = _to_uint8(_collect(loaded.batches)[0][0])
    same = np.all(images == raw_images, axis=(1, 2, 3))
    mirrored = np.all(images == raw_images[:, :, ::-1], axis=(1, 2, 3))
    assert np.all(same | mirrored)
    if random_flip:
        assert 0 < mirrored.sum() < 32 and 0 < same.sum() < 32
    else:
        assert same.all()


def test_tfds_without_label_feature_yields_images_of_non_square_sources():
    # celeb_a has 218x178 images and no "label": auto mode yields images only.
    with tfds.testing.mock_data(num_examples=4):
        loaded = data.load_tfds("celeb_a", image_size=8, batch_size=2, download=False)
        batches = list(loaded.batches)
        assert loaded.num_classes is None and loaded.class_names is None
        assert len(batches) == 2
        assert all(isinstance(b, tf.Tensor) and b.shape == (2, 8, 8, 3) for b in batches)
        with pytest.raises(ValueError, match="has no ClassLabel feature 'label'"):
            data.load_tfds("celeb_a", batch_size=2, with_labels=True, download=False)


def test_tfds_with_labels_false_drops_labels():
    with tfds.testing.mock_data(num_examples=4):
        loaded = data.load_tfds(
            "cifar10", image_size=8, batch_size=4, with_labels=False, download=False
        )
        (batch,) = list(loaded.batches)
    assert isinstance(batch, tf.Tensor) and loaded.num_classes is None


def test_tfds_unknown_name_is_a_clear_error():
    message = r"Received: name='no_such_dataset_xyz'.*tfds.list_builders"
    with pytest.raises(ValueError, match=message):
        data.load_tfds("no_such_dataset_xyz")


def test_tfds_missing_data_without_download_says_where_it_looked(tmp_path):
    with pytest.raises(ValueError, match="is not prepared") as info:
        data.load_tfds("mnist", data_dir=str(tmp_path), download=False)
    assert str(tmp_path) in str(info.value)


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"batch_size": 0}, "`batch_size` must be an integer >= 1. Received: batch_size=0"),
        ({"image_size": -3}, "`image_size` must be an integer >= 1. Received: image_size=-3"),
        ({"shuffle_buffer": 0}, "`shuffle_buffer` must be an integer >= 1."),
        ({"image_key": "picture"}, "has no image feature 'picture'"),
    ],
)
def test_tfds_invalid_arguments(kwargs, error):
    with tfds.testing.mock_data(num_examples=4):
        with pytest.raises(ValueError, match=re.escape(error)):
            data.load_tfds("mnist", **{"download": False, **kwargs})


# --------------------------------------------------------- image folders ---

_CLASS_COLOURS = {"bird": (250, 10, 10), "cat": (10, 250, 10), "dog": (10, 10, 250)}


def _write_image(path, size, colour, mode="RGB"):
    Image.new(mode, size, colour).save(path)


@pytest.fixture
def class_folder(tmp_path):
    """Three class sub-folders of solid-colour images of varied size and format."""
    formats = [".png", ".jpg", ".bmp", ".gif", ".PNG"]
    for name, colour in _CLASS_COLOURS.items():
        os.makedirs(tmp_path / name / "nested")
        for i, ext in enumerate(formats):
            _write_image(tmp_path / name / f"{i}{ext}", (20 + 3 * i, 12 + 5 * i), colour)
        _write_image(tmp_path / name / "nested" / "extra.png", (9, 9), colour)
    (tmp_path / "README.txt").write_text("not an image")
    os.makedirs(tmp_path / "empty_dir")
    os.makedirs(tmp_path / ".hidden")
    _write_image(tmp_path / ".hidden" / "x.png", (8, 8), (0, 0, 0))
    # Hidden folders inside a class folder (a notebook's checkpoints) are no training images either.
    os.makedirs(tmp_path / "cat" / ".ipynb_checkpoints" / "deeper")
    _write_image(tmp_path / "cat" / ".ipynb_checkpoints" / "a-checkpoint.png", (8, 8), (0, 0, 0))
    _write_image(tmp_path / "cat" / ".ipynb_checkpoints" / "deeper" / "b.png", (8, 8), (0, 0, 0))
    _write_image(tmp_path / "dog" / "nested" / ".x.png", (8, 8), (0, 0, 0))
    return tmp_path


def test_folder_labels_come_from_sorted_sub_folders(class_folder):
    loaded = data.load_image_folder(class_folder, image_size=8, batch_size=6, seed=3)
    assert loaded.class_names == ("bird", "cat", "dog")
    assert loaded.num_classes == 3 and loaded.channels == 3
    assert loaded.num_examples == 18
    images, labels = _collect(loaded.batches)
    images, labels = np.concatenate(images), np.concatenate(labels)
    assert images.shape == (18, 8, 8, 3)
    _assert_on_8bit_grid(images)
    assert np.bincount(labels).tolist() == [6, 6, 6]
    # Each image has the colour of its label's folder (JPEG: within a few levels).
    mean_colours = _to_uint8(images).reshape(18, -1, 3).mean(1)
    expected = np.array([_CLASS_COLOURS[loaded.class_names[k]] for k in labels])
    assert np.abs(mean_colours - expected).max() < 8


def test_folder_grayscale_output(class_folder):
    loaded = data.load_image_folder(class_folder, image_size=8, batch_size=6, channels=1)
    images, _ = _collect(loaded.batches)
    assert loaded.channels == 1
    assert all(batch.shape == (6, 8, 8, 1) for batch in images)


def test_flat_folder_yields_images_only(tmp_path):
    for i in range(5):
        _write_image(tmp_path / f"img{i}.png", (10 + i, 30 - i), (i * 40, 100, 200))
    _write_image(tmp_path / "gray.png", (16, 16), 128, mode="L")
    loaded = data.load_image_folder(tmp_path, image_size=12, batch_size=3)
    assert loaded.num_classes is None and loaded.class_names is None
    assert loaded.num_examples == 6
    batches = list(loaded.batches)
    assert len(batches) == 2
    assert all(isinstance(b, tf.Tensor) and b.shape == (3, 12, 12, 3) for b in batches)
    with pytest.raises(ValueError, match="has no class sub-folders"):
        data.load_image_folder(tmp_path, batch_size=3, with_labels=True)


@pytest.mark.parametrize("center_crop", [True, False])
def test_folder_center_crop(tmp_path, center_crop):
    # A wide image: white middle square, green side strips. Cropping the
    # central square keeps only white; squashing keeps the green.
    image = np.zeros((20, 60, 3), np.uint8)
    image[:, :20] = image[:, 40:] = (0, 255, 0)
    image[:, 20:40] = 255
    Image.fromarray(image).save(tmp_path / "wide.png")
    loaded = data.load_image_folder(
        tmp_path, image_size=8, batch_size=1, center_crop=center_crop, random_flip=False
    )
    (batch,) = _collect(loaded.batches)[0]
    pixels = _to_uint8(batch)
    if center_crop:
        assert np.all(pixels == 255)
    else:
        assert np.all(pixels[0, :, 0] == (0, 255, 0)) and np.all(pixels[0, :, -1] == (0, 255, 0))


@pytest.mark.parametrize("random_flip", [True, False])
def test_folder_random_flip_changes_between_passes(tmp_path, random_flip):
    # Asymmetric images (red left, blue right); flips differ between epochs.
    image = np.zeros((8, 8, 3), np.uint8)
    image[:, :4] = (255, 0, 0)
    image[:, 4:] = (0, 0, 255)
    for i in range(16):
        Image.fromarray(image).save(tmp_path / f"{i:02d}.png")
    loaded = data.load_image_folder(
        tmp_path, image_size=8, batch_size=16, random_flip=random_flip, shuffle=False
    )

    def flipped():
        (batch,) = _collect(loaded.batches)[0]
        pixels = _to_uint8(batch)
        assert np.all((pixels == image).all((1, 2, 3)) | (pixels == image[:, ::-1]).all((1, 2, 3)))
        return (pixels[:, 0, 0] == (0, 0, 255)).all(-1)

    first, second = flipped(), flipped()
    if random_flip:
        assert 0 < first.sum() < 16 and not np.array_equal(first, second)
    else:
        assert not first.any() and not second.any()


def test_folder_missing_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ValueError, match=re.escape(f"Image folder not found: '{missing}'")):
        data.load_image_folder(missing)


def test_folder_without_images(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    os.makedirs(tmp_path / "sub")
    with pytest.raises(ValueError, match=re.escape(f"No images found in '{tmp_path}'")):
        data.load_image_folder(tmp_path)


def test_folder_mixing_images_and_class_folders(tmp_path):
    os.makedirs(tmp_path / "cat")
    _write_image(tmp_path / "cat" / "a.png", (8, 8), (1, 2, 3))
    _write_image(tmp_path / "stray.png", (8, 8), (1, 2, 3))
    with pytest.raises(ValueError, match="mixes image files with class sub-folders"):
        data.load_image_folder(tmp_path)


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"batch_size": 0}, "`batch_size` must be an integer >= 1. Received: batch_size=0"),
        ({"image_size": 0}, "`image_size` must be an integer >= 1. Received: image_size=0"),
        ({"channels": 4}, "`channels` must be 1 or 3. Received: channels=4"),
        ({"batch_size": 32}, "has 18 images, fewer than batch_size=32"),
    ],
)
def test_folder_invalid_arguments(class_folder, kwargs, error):
    with pytest.raises(ValueError, match=re.escape(error)):
        data.load_image_folder(class_folder, **{"image_size": 8, "batch_size": 4, **kwargs})
