"""Image conversion and writing: [-1, 1] floats to uint8, PNG grids (also enlarged) and .npz arrays, atomically."""

import math
from typing import Any, Optional

import numpy as np
import tensorflow as tf
from PIL import Image

from tfdiffusion import files
from tfdiffusion import validation

__all__ = ["enlarge", "make_grid", "save_grid", "save_npz", "to_uint8"]


def to_uint8(images: Any) -> tf.Tensor:
    """Maps images in [-1, 1] to uint8 [0, 255] (round to nearest, clipped)."""
    return tf.cast(tf.clip_by_value(tf.round((images + 1.0) * 127.5), 0.0, 255.0), tf.uint8)


def _check_images(images):
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.dtype != np.uint8:
        raise ValueError("Expected uint8 images of shape [N, H, W, C] with C = 1 or 3. "
                         f"Received dtype {images.dtype} and shape {images.shape}")
    if images.shape[0] == 0:
        raise ValueError("Expected at least one image. Received shape "
                         f"{images.shape}")
    return images


def make_grid(images: Any, columns: Optional[int] = None, padding: int = 1, pad_value: int = 0) -> np.ndarray:
    """Tiles images into one image, `columns` per row, left to right, top to bottom.

    Args:
        images: uint8 `[N, H, W, C]`, C = 1 (grayscale) or 3 (RGB).
        columns: images per row; None for ceil(sqrt(N)).
        padding: pixels of `pad_value` around and between images.
        pad_value: uint8 value of the padding.

    Returns:
        uint8 `[rows * (H + padding) + padding, columns * (W + padding) + padding, C]`
        with `rows = ceil(N / columns)`; cells past the last image are padding.
    """
    images = _check_images(images)
    n, height, width, channels = images.shape
    columns = math.ceil(math.sqrt(n)) if columns is None else validation.check_int("columns", columns)
    rows = math.ceil(n / columns)
    grid = np.full((rows * (height + padding) + padding, columns * (width + padding) + padding, channels),
                   pad_value, dtype=np.uint8)
    for i, image in enumerate(images):
        top = padding + (i // columns) * (height + padding)
        left = padding + (i % columns) * (width + padding)
        grid[top:top + height, left:left + width] = image
    return grid


def save_grid(images: Any, path: str, columns: Optional[int] = None, padding: int = 1,
              image_format: str = "PNG") -> None:
    """Writes `make_grid(images, columns, padding)` to `path` as a PNG (or JPEG), atomically.

    Args:
        images: uint8 `[N, H, W, C]`, C = 1 (saved as 8-bit grayscale) or 3 (RGB).
        path: the .png file to write.
        columns: images per row; None for ceil(sqrt(N)).
        padding: pixels of black around and between images.
        image_format: "PNG" (lossless) or "JPEG".
    """
    grid = make_grid(images, columns=columns, padding=padding)
    picture = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    with files.atomic_output(path) as tmp:
        picture.save(tmp, format=validation.check_choice("image_format", image_format, ("PNG", "JPEG")))


def save_npz(path: str, images: Any, labels: Any = None) -> None:
    """Writes images (and labels) to an uncompressed .npz file, atomically.

    Args:
        path: the file to write (written as given; no ".npz" is appended).
        images: uint8 `[N, H, W, C]`, stored under "images".
        labels: optional int `[N]`, stored as int32 under "labels".
    """
    arrays = {"images": _check_images(images)}
    if labels is not None:
        arrays["labels"] = np.asarray(labels, dtype=np.int32)
    with files.atomic_output(path) as tmp:
        with open(tmp, "wb") as file:
            np.savez(file, **arrays)


def enlarge(images: Any, min_size: int = 64) -> np.ndarray:
    """Scales small images up by an integer factor (nearest neighbour) so the smaller side is >= `min_size`.

    A 16x16 sample becomes 64x64 with every pixel a 4x4 block: visible in an
    image viewer without zooming, and still exactly the sampled pixels.

    Args:
        images: uint8 `[N, H, W, C]`.
        min_size: the smallest side wanted, in pixels.

    Returns:
        uint8 `[N, k H, k W, C]` with k = ceil(min_size / min(H, W)) (k >= 1).
    """
    images = _check_images(images)
    factor = max(1, math.ceil(min_size / min(images.shape[1:3])))
    return np.repeat(np.repeat(images, factor, axis=1), factor, axis=2)
