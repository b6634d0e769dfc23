"""FID and KID against float64 numpy/scipy references, their streaming, and shapes FID/KID on real data."""

import numpy as np
import pytest
import tensorflow as tf
from scipy import linalg

from tfdiffusion import features, metrics, shapes


def _flatten(images):
    """A feature extractor for tests: the pixels themselves, [N, H * W * C]."""
    return tf.reshape(images, [tf.shape(images)[0], -1])


def _reference_fid(x, y):
    """FID as the reference code computes it: np.cov (n - 1) and scipy's general sqrtm."""
    mu1, mu2 = x.mean(axis=0), y.mean(axis=0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


def _reference_mmd2(x, y, unbiased=True):
    """MMD^2 under k(a, b) = (a.b / d + 1)^3 (Binkowski et al. 2018), float64 loops over the sums."""
    d = x.shape[1]
    kxx, kyy, kxy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    m = len(x)
    if not unbiased:  # the V-statistic: diagonal terms included
        return kxx.mean() + kyy.mean() - 2 * kxy.mean()
    off = lambda k: (k.sum() - np.trace(k)) / (m * (m - 1))  # noqa: E731
    return off(kxx) + off(kyy) - 2 * kxy.mean()


def _random_psd(rng, d, rank=None):
    a = rng.normal(size=(d, rank or d))
    return a @ a.T / d


def test_frechet_distance_matches_scipy_sqrtm():
    rng = np.random.default_rng(0)
    for d in (3, 16, 64):
        mu1, mu2 = rng.normal(size=(2, d))
        s1, s2 = _random_psd(rng, d) + 0.1 * np.eye(d), _random_psd(rng, d) + 0.1 * np.eye(d)
        got = metrics.frechet_distance(mu1, s1, mu2, s2)
        expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
        assert got.dtype == tf.float64
        assert float(got) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("num_zero, tolerance", [
    (0, dict(rel=1e-10)),
    # Rank-deficient: a zero eigenvalue of S1^(1/2) S2 S1^(1/2) comes out as
    # ~eps * |S| and its square root as ~sqrt(eps * |S|) ~ 2e-8, so the error
    # is absolute, a few 1e-8 per zero (scipy's sqrtm does no better there).
    (3, dict(abs=1e-6)),
])
def test_frechet_distance_closed_form_for_commuting_covariances(num_zero, tolerance):
    # Covariances diagonal in one rotated basis commute: Tr (S1 S2)^(1/2) =
    # sum sqrt(a_i b_i), so d^2 = |mu1 - mu2|^2 + sum (sqrt(a_i) - sqrt(b_i))^2.
    rng = np.random.default_rng(1)
    a, b = rng.uniform(0.1, 3, size=(2, 10))
    a[:num_zero] = 0.0
    q = linalg.qr(rng.normal(size=(10, 10)))[0]
    mu1, mu2 = rng.normal(size=(2, 10))
    got = metrics.frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert float(got) == pytest.approx(expected, **tolerance)


def test_frechet_distance_of_identical_singular_covariances_is_the_mean_term():
    s = _random_psd(np.random.default_rng(9), 8, rank=2)  # rank 2 in 8 dimensions
    assert float(metrics.frechet_distance(np.zeros(8), s, np.full(8, 0.5), s)) == pytest.approx(2.0, abs=1e-6)


def _image_batches(rng, n, low, high, shape=(2, 2, 3)):
    """Float images in [-1, 1] whose pixels (the features of `_flatten`) have a known distribution."""
    return rng.uniform(low, high, size=(n,) + shape)


@pytest.mark.parametrize("compiled", [False, True])
def test_fid_streaming_equals_numpy_reference(compiled):
    rng = np.random.default_rng(2)
    real = _image_batches(rng, 300, -1.0, 1.0)
    generated = np.clip(_image_batches(rng, 300, -0.8, 1.0) ** 3 + 0.1, -1, 1)
    fid = metrics.FrechetInceptionDistance(_flatten, feature_dim=12)
    update = tf.function(fid.update_state) if compiled else fid.update_state
    # Many small updates of uneven sizes (tf.function retraces per size; few sizes here).
    edges = np.cumsum([0] + [1, 7, 32, 60] * 5)
    for start, stop in zip(edges[:-1], edges[1:]):
        update(real[start:stop].astype(np.float32), generated[start:stop].astype(np.float32))
    got = float(tf.function(fid.result)() if compiled else fid.result())
    expected = _reference_fid(real.astype(np.float32).astype(np.float64).reshape(300, -1),
                              generated.astype(np.float32).astype(np.float64).reshape(300, -1))
    assert got == pytest.approx(expected, rel=1e-9)
    one_shot = metrics.FrechetInceptionDistance(_flatten, feature_dim=12)
    one_shot.update_state(real.astype(np.float32), generated.astype(np.float32))
    assert float(one_shot.result()) == pytest.approx(expected, rel=1e-9)


def test_fid_statistics_are_float64_sums_over_uint8_images():
    rng = np.random.default_rng(3)
    real = rng.integers(0, 256, size=(50, 2, 2, 1), dtype=np.uint8)
    generated = rng.integers(100, 256, size=(70, 2, 2, 1), dtype=np.uint8)
    fid = metrics.FrechetInceptionDistance(_flatten, feature_dim=4)
    fid.update_state(real, generated[:50])
    fid.update_state(real[:0], generated[50:])  # sides may get different numbers of images
    x = real.reshape(50, -1) / 127.5 - 1
    mean, cov = fid.statistics("real")
    assert mean.dtype == tf.float64 and cov.dtype == tf.float64
    np.testing.assert_allclose(mean, x.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(cov, np.cov(x, rowvar=False), rtol=1e-5, atol=1e-7)
    assert all(v.dtype == "float64" for v in fid.variables if "sum" in v.name)
    assert float(fid.result()) == pytest.approx(
        _reference_fid(x, generated.reshape(70, -1) / 127.5 - 1), rel=1e-5)


def test_fid_merge_and_reset_state():
    rng = np.random.default_rng(4)
    real, generated = _image_batches(rng, 40, -1, 1), _image_batches(rng, 40, -0.5, 0.5)
    halves = [metrics.FrechetInceptionDistance(_flatten, feature_dim=12) for _ in range(2)]
    halves[0].update_state(real[:25], generated[:10])
    halves[1].update_state(real[25:], generated[10:])
    halves[0].merge_state([halves[1]])
    expected = _reference_fid(real.reshape(40, -1), generated.reshape(40, -1))
    assert float(halves[0].result()) == pytest.approx(expected, rel=1e-6)
    halves[0].reset_state()
    with pytest.raises(ValueError, match=r"at least 2 real images .* Received: 0 real images"):
        halves[0].result()
    with pytest.raises(ValueError, match=r"feature_dim=12"):
        halves[0].merge_state([metrics.FrechetInceptionDistance(_flatten, feature_dim=3)])


@pytest.mark.parametrize("compiled", [False, True])
def test_kid_matches_numpy_unbiased_mmd(compiled):
    # With subsets as large as both sides, every subset is the whole sample reordered.
    rng = np.random.default_rng(5)
    real, generated = _image_batches(rng, 60, -1, 1), _image_batches(rng, 60, -0.6, 0.9)
    kid = metrics.KernelInceptionDistance(_flatten, feature_dim=12, num_subsets=3, subset_size=100)
    update = tf.function(kid.update_state) if compiled else kid.update_state
    for start in range(0, 60, 13):
        update(real[start:start + 13], generated[start:start + 13])
    mean, std = tf.function(kid.result_with_std)() if compiled else kid.result_with_std()
    expected = _reference_mmd2(real.reshape(60, -1), generated.reshape(60, -1))
    assert float(mean) == pytest.approx(expected, rel=1e-6)
    assert float(std) == pytest.approx(0.0, abs=1e-9)
    assert float(kid.result()) == float(mean)


def test_kid_is_unbiased_for_identical_distributions():
    # 200 independent pairs of samples from one distribution, 40 rows a side in
    # 4 dimensions (subsets of 20). An unbiased estimator's mean is within 4
    # standard errors of 0 (a 6e-5 false-alarm rate); the V-statistic, whose
    # bias here is ~ 2 (E k(x, x) - E k(x, x')) / 40, fails the same bound.
    rng = np.random.default_rng(6)
    kids, biased = [], []
    for trial in range(200):
        x, y = rng.normal(size=(2, 40, 4))
        kids.append(float(metrics.kernel_inception_distance(x, y, num_subsets=4, subset_size=20,
                                                            seed=trial)[0]))
        biased.append(_reference_mmd2(x, y, unbiased=False))
    kids, biased = np.array(kids), np.array(biased)
    assert abs(kids.mean()) < 4 * kids.std() / np.sqrt(len(kids))
    assert biased.mean() > 4 * biased.std() / np.sqrt(len(biased))


def test_kid_is_clearly_positive_for_different_distributions():
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(300, 8)), rng.normal(0.3, 1.2, size=(300, 8))
    mean, std = metrics.kernel_inception_distance(x, y, num_subsets=20, subset_size=100, seed=0)
    assert float(mean) > 10 * float(std) / np.sqrt(20) > 0
    # The same seed draws the same subsets; another seed others.
    again = metrics.kernel_inception_distance(x, y, num_subsets=20, subset_size=100, seed=0)[0]
    other = metrics.kernel_inception_distance(x, y, num_subsets=20, subset_size=100, seed=1)[0]
    assert float(again) == float(mean) != float(other)


@pytest.mark.parametrize("seed", [0, 1])
def test_kid_reservoir_keeps_a_uniform_sample(seed):
    # Stream 4000 numbered images through a 1000-row reservoir in batches of 200:
    # each is kept with probability 1/4 whatever its position, so each quarter of
    # the stream keeps 250 +- 12 (hypergeometric sd); keeping the first or the
    # last 1000 would give 1000 or 0. Bound: 250 +- 60, about 5 sd.
    values = (np.arange(4000) / 4000.0).astype(np.float32).reshape(4000, 1, 1, 1)
    kid = metrics.KernelInceptionDistance(_flatten, feature_dim=1, max_samples=1000, seed=seed)
    for start in range(0, 4000, 200):
        kid.update_state(values[start:start + 200], values[start:start + 200])
    for side in ("real", "generated"):
        kept = np.round(kid.kept_features(side).numpy()[:, 0] * 4000).astype(int)
        assert len(kept) == 1000 and len(set(kept)) == 1000  # distinct images of the stream
        per_quarter = np.bincount(kept // 1000, minlength=4)
        assert np.all(np.abs(per_quarter - 250) < 60), (side, per_quarter)
    # The two sides draw independently.
    assert set(kid.kept_features("real").numpy()[:, 0]) != set(kid.kept_features("generated").numpy()[:, 0])
    # Below the cap every image is kept, in order.
    kid = metrics.KernelInceptionDistance(_flatten, feature_dim=1, max_samples=100)
    kid.update_state(values[:30], values[:30])
    np.testing.assert_array_equal(kid.kept_features("generated").numpy(), values[:30, 0, 0])


@pytest.fixture(scope="module")
def shapes_halves():
    """Two halves of 2000 held-out shapes images each (data seed 1, as the test split)."""
    images, _ = shapes.make_shapes(4000, 16, seed=1)
    return images[:2000], images[2000:]


def _box_blur(images):
    """3x3 box blur of uint8 `[N, 16, 16, 3]`, edges replicated."""
    padded = np.pad(images.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    out = sum(padded[:, i:i + 16, j:j + 16] for i in range(3) for j in range(3)) / 9
    return np.round(out).astype(np.uint8)


def _noisy(images, sigma):
    """Gaussian noise of std `sigma` in [-1, 1] units (0.1 ~ 13 grey levels), clipped."""
    x = images / 127.5 - 1 + np.random.default_rng(8).normal(0, sigma, images.shape)
    return np.clip(x, -1, 1).astype(np.float32)


def test_shapes_fid_halves_near_zero_blur_and_noise_clearly_higher(shapes_halves):
    extractor = features.shapes_features()
    first, second = shapes_halves

    def fid(generated):
        metric = metrics.FrechetInceptionDistance(extractor)
        metric.update_state(first, generated)
        return float(metric.result())

    halves, blurred = fid(second), fid(_box_blur(second))
    noise_01, noise_02 = fid(_noisy(second, 0.1)), fid(_noisy(second, 0.2))
    print(f"shapes FID: halves {halves:.4f}, 3x3 blur {blurred:.4f}, "
          f"noise 0.1 {noise_01:.4f}, noise 0.2 {noise_02:.4f}")
    # Measured with the shipped weights: halves 0.037 (the finite-sample bias of
    # 2000 images a side; the features' total variance is ~10), blur 1.90, noise
    # 0.1 0.17, noise 0.2 0.79. Each bound leaves a factor of 2 or more.
    assert 0 <= halves < 0.1
    assert noise_01 > 2 * halves and noise_02 > 10 * halves and blurred > 20 * halves


def test_shapes_kid_halves_near_zero_blur_and_noise_higher(shapes_halves):
    extractor = features.shapes_features()
    first, second = shapes_halves
    results = []
    for generated in (second, _box_blur(second), _noisy(second, 0.2)):
        kid = metrics.KernelInceptionDistance(extractor, num_subsets=10, subset_size=1000)
        kid.update_state(first, generated)
        results.append([float(v) for v in kid.result_with_std()])
    print("shapes KID (mean, std over subsets): halves, blur, noise 0.2:", results)
    (halves, halves_std), (blurred, _), (noisy, _) = results
    # Measured: halves 0.0005 (spread over subsets 0.0008), blur 0.047, noise 0.2
    # 0.019. Unbiased: the halves' KID is 0 up to its noise, which the spread bounds.
    assert abs(halves) < 3 * halves_std
    assert min(blurred, noisy) > 10 * max(abs(halves), halves_std), results


def test_class_accuracy_with_the_shipped_network():
    images, labels = shapes.make_shapes(400, 16, seed=1)
    assert metrics.class_accuracy(images, labels) >= 0.99
    assert metrics.class_accuracy(images, (labels + 1) % 8) <= 0.02
    with pytest.raises(ValueError, match=r"`labels` must be integers of shape \[N\] = \[400\]"):
        metrics.class_accuracy(images, labels[:10])
    with pytest.raises(ValueError, match=r"`labels` must be in \[0, 8\)"):
        metrics.class_accuracy(images, labels + 8)


@pytest.mark.parametrize("metric_class", [metrics.FrechetInceptionDistance, metrics.KernelInceptionDistance])
@pytest.mark.parametrize("real, generated, error, match", [
    (np.zeros([4, 2, 2, 3]), np.zeros([4, 3, 3, 3]), ValueError,
     r"same \[H, W, C\].*real.shape=\(4, 2, 2, 3\), generated.shape=\(4, 3, 3, 3\)"),
    (np.zeros([4, 2, 2, 3]), np.zeros([4, 2, 2, 1]), ValueError, r"same \[H, W, C\]"),
    (np.zeros([4, 2, 2, 3], np.int64), np.zeros([4, 2, 2, 3]), TypeError, r"`real` .* real.dtype=int64"),
    (np.zeros([4, 2, 2, 3]), np.full([4, 2, 2, 3], np.nan), ValueError, r"`generated` .* NaN"),
    (np.zeros([4, 2, 2, 3]), np.full([4, 2, 2, 3], 255.0), ValueError,
     r"`generated` .* \[-1, 1\].*values in \[255, 255\]"),
    (np.zeros([2, 2, 3]), np.zeros([2, 2, 3]), ValueError, r"`real` must have shape \[N, H, W, C\]"),
])
def test_bad_images_fail_clearly(metric_class, real, generated, error, match):
    metric = metric_class(_flatten, feature_dim=12)
    with pytest.raises(error, match=match):
        metric.update_state(real, generated)


@pytest.mark.parametrize("metric_class", [metrics.FrechetInceptionDistance, metrics.KernelInceptionDistance])
def test_fewer_than_two_images_fail_clearly(metric_class):
    metric = metric_class(_flatten, feature_dim=12)
    metric.update_state(np.zeros([5, 2, 2, 3]), np.zeros([1, 2, 2, 3]))
    with pytest.raises(ValueError, match=r"at least 2 .*generated.*Received: .*1 generated"):
        metric.result()
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"at least 2 .*generated"):
        tf.function(metric.result)()


def test_bad_extractors_and_arguments_fail_clearly():
    with pytest.raises(ValueError, match=r"`feature_dim` is required"):
        metrics.FrechetInceptionDistance(_flatten)
    with pytest.raises(TypeError, match=r"`feature_extractor` must be a callable"):
        metrics.FrechetInceptionDistance("inception", feature_dim=2048)
    fid = metrics.FrechetInceptionDistance(_flatten, feature_dim=5)
    with pytest.raises(ValueError, match=r"features \[N, 5\] .* Received: features of shape \(3, 12\)"):
        fid.update_state(np.zeros([3, 2, 2, 3]), np.zeros([3, 2, 2, 3]))
    with pytest.raises(ValueError, match=r"`subset_size` must be an integer >= 2"):
        metrics.KernelInceptionDistance(_flatten, feature_dim=12, subset_size=1)
    with pytest.raises(TypeError, match=r"`max_samples` must be an integer"):
        metrics.KernelInceptionDistance(_flatten, feature_dim=12, max_samples=1e4)
    with pytest.raises(ValueError, match=r"`side` must be one of"):
        fid.statistics("fake")
    with pytest.raises(ValueError, match=r"\[D\] and `sigma1`, `sigma2` \[D, D\]"):
        metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(4))
