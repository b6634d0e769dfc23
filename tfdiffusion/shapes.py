"""The built-in "shapes" data set: class-labelled anti-aliased geometric shapes drawn in numpy."""

import numpy as np

from tfdiffusion import validation

__all__ = ["CLASS_NAMES", "make_shapes"]

CLASS_NAMES = (
    "disc",
    "ring",
    "square",
    "diamond",
    "triangle",
    "plus",
    "horizontal_bar",
    "vertical_bar",
)

# Geometry lives in normalized coordinates: the image spans [-1, 1] on both
# axes with y pointing up, so a shape looks the same at every resolution.
# `size` is the shape's half-extent; a disc of size s has radius s.
_SIZE_RANGE = (0.42, 0.72)
_MARGIN = 0.95  # no part of a shape reaches closer than 0.05 to the image border
# Rotation jitter in degrees around each class's base angle. Kept well below
# the 45 degrees that would turn a square into a diamond or a bar into its
# perpendicular twin, so the class is always readable from the shape.
_MAX_ROTATION = {
    "disc": 0.0,
    "ring": 0.0,
    "square": 12.0,
    "diamond": 12.0,
    "triangle": 20.0,
    "plus": 12.0,
    "horizontal_bar": 10.0,
    "vertical_bar": 10.0,
}
_BASE_ROTATION = {"diamond": 45.0}
# Radius of the circle (in units of `size`) enclosing the shape at any angle,
# used to keep the shape inside the image when its centre is jittered.
_BOUNDING_RADIUS = {
    "disc": 1.0,
    "ring": 1.0,
    "square": 0.8 * np.sqrt(2.0),
    "diamond": 0.8 * np.sqrt(2.0),
    "triangle": 1.1,
    "plus": np.hypot(1.0, 0.3),
    "horizontal_bar": np.hypot(1.1, 0.3),
    "vertical_bar": np.hypot(1.1, 0.3),
}
_CHUNK = 2048  # images rendered at once; bounds memory at large sizes


def _sd_box(x, y, half_width, half_height):
    """Signed distance to an axis-aligned box centred at the origin."""
    dx = np.abs(x) - half_width
    dy = np.abs(y) - half_height
    outside = np.hypot(np.maximum(dx, 0.0), np.maximum(dy, 0.0))
    inside = np.minimum(np.maximum(dx, dy), 0.0)
    return outside + inside


def _sd_triangle(x, y, half_side):
    """Signed distance to an upward equilateral triangle centred on its centroid.

    References:
        I. Quilez, "2D distance functions", sdEquilateralTriangle.
    """
    k = np.sqrt(3.0)
    x = np.abs(x) - half_side
    y = y + half_side / k
    fold = x + k * y > 0.0
    x, y = np.where(fold, (x - k * y) / 2.0, x), np.where(fold, (-k * x - y) / 2.0, y)
    x = x - np.clip(x, -2.0 * half_side, 0.0)
    return -np.hypot(x, y) * np.sign(y)


def _signed_distance(name, x, y, s):
    """Signed distance (negative inside) of class `name` with size `s`."""
    if name == "disc":
        return np.hypot(x, y) - s
    if name == "ring":
        return np.abs(np.hypot(x, y) - 0.75 * s) - 0.25 * s
    if name in ("square", "diamond"):
        return _sd_box(x, y, 0.8 * s, 0.8 * s)
    if name == "triangle":
        # Circumradius 1.1 * s; half side = circumradius * sqrt(3) / 2.
        return _sd_triangle(x, y, 1.1 * s * np.sqrt(3.0) / 2.0)
    if name == "plus":
        return np.minimum(_sd_box(x, y, s, 0.3 * s), _sd_box(x, y, 0.3 * s, s))
    if name == "horizontal_bar":
        return _sd_box(x, y, 1.1 * s, 0.3 * s)
    if name == "vertical_bar":
        return _sd_box(x, y, 0.3 * s, 1.1 * s)
    raise ValueError(f"Unknown shape class. Received: {name!r}")


def _hsv_to_rgb(h, s, v):
    """Vectorized HSV -> RGB; all inputs in [0, 1], output `[..., 3]` in [0, 1]."""
    i = np.floor(h * 6.0)
    f = h * 6.0 - i
    p, q, t = v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f))
    i = i.astype(np.int64) % 6
    r = np.choose(i, [v, q, p, p, t, v])
    g = np.choose(i, [t, v, v, q, p, p])
    b = np.choose(i, [p, p, t, v, v, q])
    return np.stack([r, g, b], axis=-1)


def _draw_parameters(labels, rng):
    """Per-image shape parameters; independent of the resolution."""
    n = labels.shape[0]
    names = np.array(CLASS_NAMES)[labels]
    size = rng.uniform(*_SIZE_RANGE, size=n)
    max_rot = np.array([_MAX_ROTATION[c] for c in names])
    base_rot = np.array([_BASE_ROTATION.get(c, 0.0) for c in names])
    angle = np.deg2rad(base_rot + max_rot * rng.uniform(-1.0, 1.0, size=n))
    reach = np.maximum(_MARGIN - np.array([_BOUNDING_RADIUS[c] for c in names]) * size, 0.0)
    center = reach[:, None] * rng.uniform(-1.0, 1.0, size=(n, 2))
    # Saturated, bright fill on a dark, weakly tinted background: the shape
    # always stands out, while its colour carries no class information.
    fill = _hsv_to_rgb(
        rng.uniform(0.0, 1.0, n), rng.uniform(0.55, 1.0, n), rng.uniform(0.75, 1.0, n)
    )
    background = _hsv_to_rgb(
        rng.uniform(0.0, 1.0, n), rng.uniform(0.0, 0.6, n), rng.uniform(0.0, 0.22, n)
    )
    return size, angle, center, fill, background


def _render(labels, size, angle, center, fill, background, image_size):
    """Renders `[n, image_size, image_size, 3]` float images in [0, 1]."""
    pixel = 2.0 / image_size
    coords = (np.arange(image_size) + 0.5) * pixel - 1.0
    gx = coords[None, None, :]  # column -> x to the right
    gy = -coords[None, :, None]  # row -> y upwards
    cos = np.cos(angle)[:, None, None]
    sin = np.sin(angle)[:, None, None]
    dx = gx - center[:, 0, None, None]
    dy = gy - center[:, 1, None, None]
    # Rotate the sampling grid by -angle, i.e. the shape by +angle.
    x = cos * dx + sin * dy
    y = -sin * dx + cos * dy
    distance = np.empty((labels.shape[0], image_size, image_size))
    for k, name in enumerate(CLASS_NAMES):
        idx = labels == k
        if idx.any():
            distance[idx] = _signed_distance(name, x[idx], y[idx], size[idx, None, None])
    # Pixel coverage from the signed distance: a one-pixel-wide linear ramp
    # across the edge anti-aliases at any resolution.
    alpha = np.clip(0.5 - distance / pixel, 0.0, 1.0)[..., None]
    return background[:, None, None, :] * (1.0 - alpha) + fill[:, None, None, :] * alpha


def make_shapes(num_images, image_size=16, seed=0):
    """Generates class-labelled images of geometric shapes.

    Each image shows one anti-aliased shape of class `CLASS_NAMES[label]`
    with a random size, position, small rotation (where the shape has one)
    and bright colour on a dark background. The class is carried by the
    shape alone. Shapes are drawn from signed-distance functions, so the
    parameters do not depend on `image_size`: the same seed gives the same
    scenes at every resolution.

    Args:
        num_images: Number of images N, a positive integer.
        image_size: Height and width H = W in pixels, an integer >= 8.
        seed: Integer seed; the same seed gives identical arrays.

    Returns:
        `(images, labels)`: `images` uint8 `[N, H, W, 3]` in [0, 255],
        `labels` int32 `[N]` in [0, len(CLASS_NAMES)). Classes are balanced:
        counts differ by at most one, in random order.
    """
    num_images = validation.check_int("num_images", num_images)
    image_size = validation.check_int("image_size", image_size, 8)
    rng = np.random.default_rng(validation.check_seed("seed", seed, minimum=0, allow_none=False))
    labels = rng.permutation(np.arange(num_images) % len(CLASS_NAMES)).astype(np.int32)
    params = _draw_parameters(labels, rng)
    images = np.empty((num_images, image_size, image_size, 3), np.uint8)
    for start in range(0, num_images, _CHUNK):
        chunk = slice(start, start + _CHUNK)
        rgb = _render(labels[chunk], *(p[chunk] for p in params), image_size)
        images[chunk] = np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)
    return images, labels
