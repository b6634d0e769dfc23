"""Image-quality metrics: FID and KID as Keras metrics over any feature extractor, and class accuracy.

    fid = FrechetInceptionDistance(features.shapes_features())   # or features.inception_features()
    for real, generated in batches:          # uint8 [B, H, W, C] or float in [-1, 1]
        fid.update_state(real, generated)
    fid.result()                              # float64 scalar

FID keeps per side the count, the feature sum and the sum of outer products
in float64 variables: O(D^2) memory whatever the number of images. KID needs
the features themselves; it keeps a uniform random sample of at most
`max_samples` of them per side (reservoir sampling).
"""

from typing import Any, Callable, Optional, Tuple

import keras
import numpy as np
import tensorflow as tf

from tfdiffusion import features
from tfdiffusion import random
from tfdiffusion import validation

__all__ = [
    "FrechetInceptionDistance",
    "KernelInceptionDistance",
    "class_accuracy",
    "frechet_distance",
    "kernel_inception_distance",
]

_SIDES = ("real", "generated")


def _require(condition, message):
    """Raises ValueError(message) eagerly; in a graph returns an assertion to depend on."""
    if tf.executing_eagerly():
        if not bool(condition):
            raise ValueError(message)
        return []
    return [tf.debugging.Assert(condition, [message])]


def _sqrt_psd(matrix):
    """Principal square root of a symmetric positive semi-definite matrix (negative eigenvalues -> 0)."""
    eigenvalues, vectors = tf.linalg.eigh(matrix)
    root = tf.sqrt(tf.maximum(eigenvalues, 0.0))
    return tf.matmul(vectors * root[None, :], vectors, transpose_b=True)


def _symmetric(matrix):
    return 0.5 * (matrix + tf.transpose(matrix))


def frechet_distance(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any) -> tf.Tensor:
    """Fréchet distance between two Gaussians, computed in float64.

    d^2 = ||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)).

    Tr (sigma1 sigma2)^(1/2) is the sum of the square roots of the
    eigenvalues of sigma1 sigma2, which are those of the symmetric PSD
    matrix sigma1^(1/2) sigma2 sigma1^(1/2): two symmetric eigendecompositions
    give it with no complex intermediate and no regularisation, also when the
    covariances are singular (fewer images than features, dead units).

    Args:
        mu1, mu2: means `[D]`.
        sigma1, sigma2: covariances `[D, D]`, symmetric PSD.

    Returns:
        float64 scalar, in squared feature units.

    References:
        Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge
        to a Local Nash Equilibrium", NeurIPS 2017 (the FID); Dowson & Landau,
        "The Fréchet distance between multivariate normal distributions", 1982.
    """
    mu1, mu2 = (tf.cast(tf.convert_to_tensor(m), tf.float64) for m in (mu1, mu2))
    sigma1, sigma2 = (tf.cast(tf.convert_to_tensor(s), tf.float64) for s in (sigma1, sigma2))
    dim = mu1.shape[-1] if mu1.shape.rank == 1 else None
    for name, value, shape in (("mu1", mu1, [dim]), ("mu2", mu2, [dim]),
                               ("sigma1", sigma1, [dim, dim]), ("sigma2", sigma2, [dim, dim])):
        if mu1.shape.rank != 1 or not value.shape.is_compatible_with(shape):
            raise ValueError(f"`mu1`, `mu2` must be [D] and `sigma1`, `sigma2` [D, D] with one D. "
                             f"Received: {name}.shape={value.shape} with mu1.shape={mu1.shape}")
    sigma1, sigma2 = _symmetric(sigma1), _symmetric(sigma2)
    root1 = _sqrt_psd(sigma1)
    inner = tf.linalg.eigvalsh(_symmetric(root1 @ sigma2 @ root1))
    trace_sqrt = tf.reduce_sum(tf.sqrt(tf.maximum(inner, 0.0)))
    diff = mu1 - mu2
    return (tf.reduce_sum(diff * diff) + tf.linalg.trace(sigma1) + tf.linalg.trace(sigma2)
            - 2.0 * trace_sqrt)


def _mmd2_unbiased(x, y):
    """Unbiased MMD^2 of equal-size samples `[m, d]` under k(a, b) = (a.b / d + 1)^3."""
    d = tf.cast(tf.shape(x)[1], tf.float64)
    m = tf.cast(tf.shape(x)[0], tf.float64)

    def kernel(a, b):
        return (tf.matmul(a, b, transpose_b=True) / d + 1.0) ** 3

    def off_diagonal_sum(k):
        return tf.reduce_sum(k) - tf.linalg.trace(k)

    within = (off_diagonal_sum(kernel(x, x)) + off_diagonal_sum(kernel(y, y))) / (m * (m - 1.0))
    return within - 2.0 * tf.reduce_mean(kernel(x, y))


def kernel_inception_distance(real_features: Any, generated_features: Any, num_subsets: int = 100,
                              subset_size: int = 1000, seed: Optional[int] = 0
                              ) -> Tuple[tf.Tensor, tf.Tensor]:
    """KID: unbiased MMD^2 with the cubic polynomial kernel, averaged over random subsets.

    Each of `num_subsets` subsets draws m = min(subset_size, N_real, N_gen)
    rows of each side without replacement and computes the unbiased
    estimate of MMD^2 under k(x, y) = (x.y / D + 1)^3, in float64.

    Args:
        real_features: `[N_real, D]`, N_real >= 2.
        generated_features: `[N_gen, D]`, N_gen >= 2.
        num_subsets: number of subsets averaged.
        subset_size: rows per side in a subset (capped to the rows available).
        seed: seed of the subset draws (the same seed, the same subsets).

    Returns:
        `(mean, std)`: float64 scalars, the mean of the subsets' estimates
        (the KID) and their standard deviation (ddof 0, a spread over
        subsets, not a standard error).

    References:
        Bińkowski et al., "Demystifying MMD GANs", ICLR 2018 (KID: the
        unbiased MMD^2 estimator with this kernel on Inception features).
    """
    num_subsets = validation.check_int("num_subsets", num_subsets)
    subset_size = validation.check_int("subset_size", subset_size, minimum=2)
    base = random.fold_in(random.seed_pair(random.check_seed(seed)), 2)
    x = tf.cast(tf.convert_to_tensor(real_features), tf.float64)
    y = tf.cast(tf.convert_to_tensor(generated_features), tf.float64)
    if x.shape.rank != 2 or y.shape.rank != 2 or not x.shape[1:].is_compatible_with(y.shape[1:]):
        raise ValueError("`real_features` and `generated_features` must be [N, D] with one D. "
                         f"Received: shapes {x.shape} and {y.shape}")
    checks = _require(tf.minimum(tf.shape(x)[0], tf.shape(y)[0]) >= 2,
                      "KID needs at least 2 real and 2 generated feature rows. Received: "
                      f"{x.shape[0]} real and {y.shape[0]} generated rows")
    with tf.control_dependencies(checks):
        values = _subset_mmd2(x, y, num_subsets, subset_size, base)
    return tf.reduce_mean(values), tf.math.reduce_std(values)


_INT = tf.TensorSpec([], tf.int32)
_INT64 = tf.TensorSpec([], tf.int64)
_SEED = tf.TensorSpec([2], tf.int64)


@tf.function(input_signature=[tf.TensorSpec([None, None], tf.float64)] * 2 + [_INT, _INT, _SEED])
def _subset_mmd2(x, y, num_subsets, subset_size, seed):
    """Unbiased MMD^2 of random subsets of m = min(subset_size, N_x, N_y) rows a side: float64 `[num_subsets]`."""
    n_x, n_y = tf.shape(x)[0], tf.shape(y)[0]
    m = tf.minimum(tf.minimum(n_x, n_y), subset_size)

    def one_subset(k):
        s = random.fold_in(seed, k)
        ix = tf.argsort(random.random_uniform([n_x], random.fold_in(s, 0)))[:m]
        iy = tf.argsort(random.random_uniform([n_y], random.fold_in(s, 1)))[:m]
        return _mmd2_unbiased(tf.gather(x, ix), tf.gather(y, iy))

    return tf.map_fn(one_subset, tf.range(num_subsets), fn_output_signature=tf.float64)


@tf.function(input_signature=[_INT64, _INT, _INT64, _SEED])
def _reservoir_slots(seen, batch, capacity, seed):
    """Where a batch goes in a reservoir (Vitter's algorithm R), vectorised.

    Row i is item t = seen + i of the stream: it fills slot t while
    t < capacity, then replaces slot j ~ U{0, ..., t} if j < capacity. When
    two rows of the batch pick one slot the later wins, as if sequential.

    Returns:
        `(slots, rows)`: int64 `[K]` slots and the int32 `[K]` batch rows to write there.
    """
    index = seen + tf.range(batch, dtype=tf.int64)
    uniform = random.random_uniform([batch], random.fold_in(seed, seen), tf.float64)
    draw = tf.cast(tf.floor(uniform * tf.cast(index + 1, tf.float64)), tf.int64)
    slot = tf.where(index < capacity, index, draw)
    chosen = slot < capacity
    last = tf.math.unsorted_segment_max(tf.boolean_mask(tf.range(batch), chosen),
                                        tf.boolean_mask(slot, chosen), num_segments=capacity)
    slots = tf.where(last >= 0)[:, 0]
    return slots, tf.gather(last, slots)


class _FeatureMetric(keras.metrics.Metric):
    """Shared by FID and KID: the extractor, the input checks, `update_state(real, generated)`."""

    def __init__(self, feature_extractor, feature_dim, name, **kwargs):
        super().__init__(name=name, dtype="float64", **kwargs)
        if not callable(feature_extractor):
            raise TypeError("`feature_extractor` must be a callable images -> [N, D] features. "
                            f"Received: feature_extractor={feature_extractor!r}")
        if feature_dim is None:
            feature_dim = getattr(feature_extractor, "feature_dim", None)
            if feature_dim is None:
                raise ValueError("`feature_dim` is required when `feature_extractor` has no "
                                 f"`feature_dim` attribute. Received: feature_dim=None, "
                                 f"feature_extractor={feature_extractor!r}")
        self.feature_extractor = feature_extractor
        self.feature_dim = validation.check_int("feature_dim", feature_dim)

    def _features(self, images, name):
        """float32 `[N, D]` features of checked images."""
        out = tf.cast(self.feature_extractor(images), tf.float32)
        expected = tf.TensorShape([images.shape[0], self.feature_dim])
        if not out.shape.is_compatible_with(expected):
            raise ValueError(f"`feature_extractor` must map {name} images {images.shape} to "
                             f"features [N, {self.feature_dim}] (feature_dim). Received: "
                             f"features of shape {out.shape}")
        return out

    def update_state(self, real: Any, generated: Any) -> None:
        """Adds a batch of real and one of generated images.

        Args:
            real: uint8 `[N_r, H, W, C]` in [0, 255] or float in [-1, 1];
                C = 1 or 3.
            generated: the same for generated images, with the same
                `[H, W, C]`; N_g may differ from N_r.

        Raises:
            TypeError, ValueError: see `features.as_float_images`; also when
                `real` and `generated` differ in `[H, W, C]`.
        """
        real = features.as_float_images(real, "real")
        generated = features.as_float_images(generated, "generated")
        if not real.shape[1:].is_compatible_with(generated.shape[1:]):
            raise ValueError("`real` and `generated` must be images of the same [H, W, C]. "
                             f"Received: real.shape={real.shape}, generated.shape={generated.shape}")
        for side, images in zip(_SIDES, (real, generated)):
            self._add(side, self._features(images, side))


class FrechetInceptionDistance(_FeatureMetric):
    """FID between real and generated images, streamed in constant memory.

    Per side it accumulates the count n, the sum of features and the sum of
    their outer products in float64 variables (2 (D^2 + D) + 2 numbers:
    67 MB for Inception's D = 2048), so any number of images fits.
    `result()` forms the means and the unbiased (n - 1) covariances and
    returns `frechet_distance` between the two Gaussians. The covariance
    comes from raw sums, (S - n mu mu^T) / (n - 1), whose cancellation costs
    about log10(mean^2 / variance) of float64's 16 digits: harmless for
    network features, whose means are within a few orders of their spread.

    Args:
        feature_extractor: callable float32 images `[N, H, W, C]` in [-1, 1]
            -> features `[N, D]`, e.g. `features.inception_features()` or
            `features.shapes_features()`.
        feature_dim: D; None to read `feature_extractor.feature_dim`.
        name: the metric's name.

    References:
        Heusel et al., NeurIPS 2017 (see `frechet_distance`).
    """

    def __init__(self, feature_extractor: Callable, feature_dim: Optional[int] = None,
                 name: str = "fid", **kwargs):
        super().__init__(feature_extractor, feature_dim, name, **kwargs)
        d = self.feature_dim
        self._state = {}
        for side in _SIDES:
            self._state[side] = (
                self.add_variable((), "zeros", dtype="int64", name=f"{side}_count"),
                self.add_variable((d,), "zeros", dtype="float64", name=f"{side}_sum"),
                self.add_variable((d, d), "zeros", dtype="float64", name=f"{side}_outer_sum"),
            )

    def _add(self, side, feats):
        count, total, outer = self._state[side]
        feats = tf.cast(feats, tf.float64)
        count.assign_add(tf.cast(tf.shape(feats)[0], tf.int64))
        total.assign_add(tf.reduce_sum(feats, axis=0))
        outer.assign_add(tf.matmul(feats, feats, transpose_a=True))

    def statistics(self, side: str) -> Tuple[tf.Tensor, tf.Tensor]:
        """`(mean [D], covariance [D, D])` of one side ("real" or "generated"), float64, n - 1."""
        validation.check_choice("side", side, _SIDES)
        count, total, outer = self._state[side]
        n = tf.cast(count, tf.float64)
        checks = _require(count >= 2, f"FID needs at least 2 {side} images for a covariance. "
                                      f"Received: {int(count) if tf.executing_eagerly() else 'fewer'}"
                                      f" {side} images; call update_state with more")
        with tf.control_dependencies(checks):
            mean = total / n
            cov = (outer - n * mean[:, None] * mean[None, :]) / (n - 1.0)
        return mean, cov

    def result(self) -> tf.Tensor:
        """The FID, a float64 scalar. Raises ValueError with fewer than 2 images on a side."""
        return frechet_distance(*self.statistics("real"), *self.statistics("generated"))

    def merge_state(self, metrics) -> None:
        """Adds the accumulated sums of other FIDs with the same `feature_dim` (e.g. from other workers)."""
        for other in metrics:
            if not isinstance(other, FrechetInceptionDistance) or other.feature_dim != self.feature_dim:
                raise ValueError("`metrics` must be FrechetInceptionDistance metrics with feature_dim="
                                 f"{self.feature_dim}. Received: {other!r}")
            for mine, theirs in zip(self.variables, other.variables):
                mine.assign_add(theirs)


class KernelInceptionDistance(_FeatureMetric):
    """KID between real and generated images, from a bounded random sample of features.

    Each side keeps a uniform random sample of at most `max_samples` of the
    features seen (reservoir sampling, Vitter's algorithm R, seeded), in
    float32 variables of 2 * max_samples * D * 4 bytes: 164 MB for
    Inception's D = 2048 at the default 10000, 10 MB for the shapes
    network's D = 128. Until `max_samples` images have been seen on a side,
    every feature is kept. `result()` is `kernel_inception_distance` on the
    kept features; `result_with_std()` also returns the spread over subsets.

    Args:
        feature_extractor: as for `FrechetInceptionDistance`.
        feature_dim: D; None to read `feature_extractor.feature_dim`.
        num_subsets: subsets averaged in `result()` (100 as in the paper's
            code and torch-fidelity).
        subset_size: images per side in a subset, capped to those kept
            (1000 as in torch-fidelity).
        max_samples: features kept per side.
        seed: seed of the reservoir and of the subsets.
        name: the metric's name.

    References:
        Bińkowski et al., "Demystifying MMD GANs", ICLR 2018.
        Vitter, "Random sampling with a reservoir", ACM TOMS 1985.
    """

    def __init__(self, feature_extractor: Callable, feature_dim: Optional[int] = None,
                 num_subsets: int = 100, subset_size: int = 1000, max_samples: int = 10000,
                 seed: int = 0, name: str = "kid", **kwargs):
        super().__init__(feature_extractor, feature_dim, name, **kwargs)
        self.num_subsets = validation.check_int("num_subsets", num_subsets)
        self.subset_size = validation.check_int("subset_size", subset_size, minimum=2)
        self.max_samples = validation.check_int("max_samples", max_samples, minimum=2)
        self.seed = validation.check_seed("seed", seed, allow_none=False)
        self._state = {}
        for side in _SIDES:
            self._state[side] = (
                self.add_variable((), "zeros", dtype="int64", name=f"{side}_seen"),
                self.add_variable((self.max_samples, self.feature_dim), "zeros", dtype="float32",
                                  name=f"{side}_features"),
            )

    def _add(self, side, feats):
        seen, kept = self._state[side]
        seed = random.fold_in(random.seed_pair(self.seed), _SIDES.index(side))
        slots, rows = _reservoir_slots(tf.convert_to_tensor(seen.value), tf.shape(feats)[0],
                                       tf.constant(self.max_samples, tf.int64), seed)
        # `.value` is the backing tf.Variable (TF backend): a sparse write, not a copy of all slots.
        kept.value.scatter_update(tf.IndexedSlices(tf.gather(feats, rows), slots))
        seen.assign_add(tf.cast(tf.shape(feats)[0], tf.int64))

    def kept_features(self, side: str) -> tf.Tensor:
        """The features kept for one side ("real" or "generated"): float32 `[min(seen, max_samples), D]`."""
        validation.check_choice("side", side, _SIDES)
        seen, kept = self._state[side]
        return kept[:tf.minimum(seen, self.max_samples)]

    def result_with_std(self) -> Tuple[tf.Tensor, tf.Tensor]:
        """`(kid, std)`, float64 scalars; see `kernel_inception_distance`."""
        return kernel_inception_distance(self.kept_features("real"), self.kept_features("generated"),
                                         self.num_subsets, self.subset_size, self.seed)

    def result(self) -> tf.Tensor:
        """The KID (mean over subsets), a float64 scalar. Raises ValueError with < 2 images a side."""
        return self.result_with_std()[0]


def class_accuracy(images: Any, labels: Any, classifier: Optional[Callable] = None) -> float:
    """Fraction of images a classifier labels with the requested class.

    Args:
        images: uint8 `[N, H, W, C]` or float in [-1, 1] (see
            `features.as_float_images`).
        labels: integer `[N]`, the requested class of each image.
        classifier: callable images -> logits `[N, K]`; None for the shipped
            shapes network (`features.shapes_features("logits")`, K = 8).

    Returns:
        Accuracy in [0, 1], a Python float.
    """
    classifier = features.shapes_features("logits") if classifier is None else classifier
    images = features.as_float_images(images, "images")
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu" or labels.shape != (images.shape[0],):
        raise ValueError(f"`labels` must be integers of shape [N] = [{images.shape[0]}] (one per "
                         f"image). Received: labels of dtype {labels.dtype} and shape {labels.shape}")
    logits = np.asarray(classifier(images))
    if logits.ndim != 2 or logits.shape[0] != labels.shape[0]:
        raise ValueError(f"`classifier` must return logits [N, K]. Received shape {logits.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= logits.shape[1]):
        raise ValueError(f"`labels` must be in [0, {logits.shape[1]}). Received: labels in "
                         f"[{labels.min()}, {labels.max()}]")
    return float(np.mean(np.argmax(logits, axis=-1) == labels))
