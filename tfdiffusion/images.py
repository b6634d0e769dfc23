"""Writing generated images to disk: PNG grids and .npz arrays, each written atomically."""

import contextlib
import math
import os
import tempfile

import numpy as np
from PIL import Image

__all__ = ["atomic_output", "make_grid", "save_grid", "save_npz"]


@contextlib.contextmanager
def atomic_output(path):
    """Yields a temporary path beside `path`; renames it to `path` on success.

    The temporary file lives in the same directory (so `os.replace` is an
    atomic rename) and keeps `path`'s extension (Keras insists on `.keras`).
    If the body raises, the temporary file is removed and `path` is left as
    it was: no reader ever sees a half-written file.

    Args:
        path: the final file path.

    Yields:
        The temporary path to write to.
    """
    directory, name = os.path.split(os.path.abspath(path))
    _, extension = os.path.splitext(name)
    handle, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=f".tmp{extension}", dir=directory)
    os.close(handle)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def _check_images(images):
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.dtype != np.uint8:
        raise ValueError("Expected uint8 images of shape [N, H, W, C] with C = 1 or 3. "
                         f"Received dtype {images.dtype} and shape {images.shape}")
    if images.shape[0] == 0:
        raise ValueError("Expected at least one image. Received shape "
                         f"{images.shape}")
    return images


def make_grid(images, nrow=None, padding=1, pad_value=0):
    """Tiles images into one image, `nrow` per row, left to right, top to bottom.

    Args:
        images: uint8 `[N, H, W, C]`, C = 1 (grayscale) or 3 (RGB).
        nrow: images per row (columns); None for ceil(sqrt(N)).
        padding: pixels of `pad_value` around and between images.
        pad_value: uint8 value of the padding.

    Returns:
        uint8 `[rows * (H + padding) + padding, nrow * (W + padding) + padding, C]`
        with `rows = ceil(N / nrow)`; cells past the last image are padding.
    """
    images = _check_images(images)
    n, height, width, channels = images.shape
    nrow = math.ceil(math.sqrt(n)) if nrow is None else int(nrow)
    if nrow < 1:
        raise ValueError(f"`nrow` must be a positive integer. Received: nrow={nrow}")
    rows = math.ceil(n / nrow)
    grid = np.full((rows * (height + padding) + padding, nrow * (width + padding) + padding, channels),
                   pad_value, dtype=np.uint8)
    for i, image in enumerate(images):
        top = padding + (i // nrow) * (height + padding)
        left = padding + (i % nrow) * (width + padding)
        grid[top:top + height, left:left + width] = image
    return grid


def save_grid(images, path, nrow=None, padding=1):
    """Writes `make_grid(images, nrow, padding)` to `path` as a PNG, atomically.

    Args:
        images: uint8 `[N, H, W, C]`, C = 1 (saved as 8-bit grayscale) or 3 (RGB).
        path: the .png file to write.
        nrow: images per row; None for ceil(sqrt(N)).
        padding: pixels of black around and between images.
    """
    grid = make_grid(images, nrow=nrow, padding=padding)
    picture = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    with atomic_output(path) as tmp:
        picture.save(tmp, format="PNG")


def save_npz(path, images, labels=None):
    """Writes images (and labels) to an uncompressed .npz file, atomically.

    Args:
        path: the file to write (written as given; no ".npz" is appended).
        images: uint8 `[N, H, W, C]`, stored under "images".
        labels: optional int `[N]`, stored as int32 under "labels".
    """
    arrays = {"images": _check_images(images)}
    if labels is not None:
        arrays["labels"] = np.asarray(labels, dtype=np.int32)
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as file:
            np.savez(file, **arrays)
