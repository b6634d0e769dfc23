"""Tests of the built-in shapes data set generator."""

import re

import numpy as np
import pytest

from tfdiffusion import shapes

NUM_CLASSES = len(shapes.CLASS_NAMES)


def _softmax_regression_accuracy(train_x, train_y, test_x, test_y, steps=300, lr=0.5):
    """Held-out accuracy of multinomial logistic regression fit by gradient descent."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    a, b = (train_x - mean) / std, (test_x - mean) / std
    weights = np.zeros((a.shape[1], NUM_CLASSES))
    bias = np.zeros(NUM_CLASSES)
    onehot = np.eye(NUM_CLASSES)[train_y]
    for _ in range(steps):
        logits = a @ weights + bias
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        grad = (p - onehot) / len(a)
        weights -= lr * (a.T @ grad + 1e-3 * weights)
        bias -= lr * grad.sum(0)
    return np.mean((b @ weights + bias).argmax(1) == test_y)


def _shape_features(images):
    """Colour- and translation-invariant features: |FFT| of the normalized brightness."""
    m = images.astype(np.float64).max(-1)
    m = (m - m.min((1, 2), keepdims=True)) / (np.ptp(m, (1, 2), keepdims=True) + 1e-9)
    f = np.abs(np.fft.fft2(m)).reshape(len(images), -1)
    return f / np.linalg.norm(f, axis=1, keepdims=True)


def _colour_features(images):
    """Mean colour of the brightest pixels (the shape) and of the darkest (background)."""
    x = images.reshape(len(images), -1, 3).astype(np.float64)
    order = np.argsort(x.max(-1), axis=1)
    x = np.take_along_axis(x, order[..., None], axis=1)
    k = x.shape[1] // 8
    return np.concatenate([x[:, -k:].mean(1), x[:, :k].mean(1)], axis=1)


@pytest.mark.parametrize("image_size", [8, 16, 32])
def test_shapes_dtypes_and_ranges(image_size):
    images, labels = shapes.make_shapes(40, image_size, seed=3)
    assert images.shape == (40, image_size, image_size, 3)
    assert images.dtype == np.uint8
    assert labels.shape == (40,)
    assert labels.dtype == np.int32
    assert labels.min() >= 0 and labels.max() < NUM_CLASSES
    # Every image shows a shape: bright pixels over a dark background.
    brightness = images.max(-1).reshape(40, -1)
    assert np.all(brightness.max(1) >= 0.75 * 255 * 0.9)
    assert np.all(np.percentile(brightness, 10, axis=1) <= 0.22 * 255 + 1)


def test_same_seed_is_identical_and_different_seeds_differ():
    a_images, a_labels = shapes.make_shapes(64, 16, seed=7)
    b_images, b_labels = shapes.make_shapes(64, 16, seed=7)
    c_images, c_labels = shapes.make_shapes(64, 16, seed=8)
    np.testing.assert_array_equal(a_images, b_images)
    np.testing.assert_array_equal(a_labels, b_labels)
    assert not np.array_equal(a_labels, c_labels)
    differs = np.any(a_images != c_images, axis=(1, 2, 3))
    assert differs.all()


@pytest.mark.parametrize("num_images", [80, 83, 5])
def test_classes_are_balanced(num_images):
    _, labels = shapes.make_shapes(num_images, 8, seed=0)
    counts = np.bincount(labels, minlength=NUM_CLASSES)
    assert counts.sum() == num_images
    assert counts.max() - counts.min() <= 1


def test_labels_are_shuffled_not_sorted():
    _, labels = shapes.make_shapes(80, 8, seed=0)
    assert not np.array_equal(labels, np.arange(80) % NUM_CLASSES)


def test_different_seeds_share_no_image():
    train, _ = shapes.make_shapes(2000, 8, seed=0)
    test, _ = shapes.make_shapes(500, 8, seed=1)
    train_keys = {image.tobytes() for image in train}
    assert not any(image.tobytes() in train_keys for image in test)


def test_scene_does_not_depend_on_resolution():
    # Same seed, two resolutions: averaging 4x4 blocks of the 64x64 render
    # must give (nearly) the 16x16 render, because both sample the same
    # signed-distance scene. A different scene differs by ~40 levels.
    small, small_labels = shapes.make_shapes(100, 16, seed=5)
    large, large_labels = shapes.make_shapes(100, 64, seed=5)
    np.testing.assert_array_equal(small_labels, large_labels)
    pooled = large.astype(np.float64).reshape(100, 16, 4, 16, 4, 3).mean((2, 4))
    assert np.abs(pooled - small).mean() < 2.0


def test_classes_are_learnable_from_shape_at_16x16():
    # A linear classifier on colour-free features separates the classes on
    # held-out images; the class is carried by the shape.
    train_x, train_y = shapes.make_shapes(2400, 16, seed=0)
    test_x, test_y = shapes.make_shapes(800, 16, seed=1)
    accuracy = _softmax_regression_accuracy(
        _shape_features(train_x), train_y, _shape_features(test_x), test_y
    )
    assert accuracy >= 0.95


def test_colour_does_not_reveal_the_class():
    train_x, train_y = shapes.make_shapes(2400, 16, seed=0)
    test_x, test_y = shapes.make_shapes(800, 16, seed=1)
    accuracy = _softmax_regression_accuracy(
        _colour_features(train_x), train_y, _colour_features(test_x), test_y
    )
    # Chance is 1/8; the area of the shape leaks a little through the
    # brightest-pixel average, nothing more.
    assert accuracy < 0.35


def test_every_class_appears_with_its_name():
    assert len(shapes.CLASS_NAMES) == len(set(shapes.CLASS_NAMES)) == 8
    _, labels = shapes.make_shapes(16, 8, seed=0)
    assert set(labels.tolist()) == set(range(NUM_CLASSES))


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"num_images": 0}, ValueError, "`num_images` must be an integer >= 1. Received: num_images=0"),
        ({"num_images": 2.5}, TypeError, "`num_images` must be an integer >= 1. Received: num_images=2.5"),
        ({"num_images": True}, TypeError, "`num_images` must be an integer >= 1. Received: num_images=True"),
        ({"image_size": 4}, ValueError, "`image_size` must be an integer >= 8. Received: image_size=4"),
        ({"seed": -1}, ValueError,
         "`seed` must be an integer in [0, 2**63 - 1] (a seed is an int64). Received: seed=-1"),
    ],
)
def test_invalid_arguments_raise_clear_errors(kwargs, error, message):
    arguments = {"num_images": 8, "image_size": 8, "seed": 0, **kwargs}
    with pytest.raises(error, match=re.escape(message)):
        shapes.make_shapes(**arguments)
