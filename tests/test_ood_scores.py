"""OOD scores (core/metrics/ood.py) against in-memory float64 references written as the authors'
code computes them (scikit-learn's EmpiricalCovariance, StandardScaler + PCA; ViM's origin and
null space; brute-force k-NN)."""

from __future__ import annotations

import numpy as np
import pytest

from actgeom.core.base.stats import ClassMoments, pooled
from actgeom.core.metrics import ood

sklearn = pytest.importorskip("sklearn")
from sklearn.covariance import EmpiricalCovariance  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

RTOL = 1e-9


@pytest.fixture
def data():
    rng = np.random.default_rng(5)
    C, D, n = 4, 12, 400
    y = rng.integers(0, C, n)
    centres = 3 * rng.standard_normal((C, D))
    X = centres[y] + rng.standard_normal((n, D)) @ rng.standard_normal((D, D)) * 0.5 + 100.0  # an offset
    W, b = rng.standard_normal((C, D)), rng.standard_normal(C)
    test = np.r_[centres[rng.integers(0, C, 50)] + rng.standard_normal((50, D)), rng.standard_normal((50, D)) * 4] + 100.0
    moments = ClassMoments(D)
    for start in range(0, n, 37):  # streamed in blocks, as a pass would
        moments.update(X[start:start + 37], y[start:start + 37])
    classes = moments.finalize()
    return X, y, W, b, test, classes, pooled(classes)


def test_mahalanobis_scores_equal_the_tied_covariance_reference(data):
    X, y, W, b, test, classes, total = data
    model = ood.fit(classes, total)
    means = np.array([X[y == c].mean(axis=0) for c in range(4)])
    tied = EmpiricalCovariance(assume_centered=True).fit(X - means[y])  # Lee et al.: one covariance
    md = np.array([[(t - m) @ tied.precision_ @ (t - m) for m in means] for t in test])
    got = ood.scores(model, test)
    np.testing.assert_allclose(got["mahalanobis"], -md.min(axis=1), rtol=RTOL)
    full = EmpiricalCovariance().fit(X)  # Ren et al.: the background model about the global mean
    md0 = np.array([(t - X.mean(axis=0)) @ full.precision_ @ (t - X.mean(axis=0)) for t in test])
    np.testing.assert_allclose(got["relative_mahalanobis"], -(md.min(axis=1) - md0), rtol=RTOL)


def test_logit_scores_vim_neco_knn_equal_their_references(data):
    X, y, W, b, test, classes, total = data
    rng = np.random.default_rng(1)
    sample = X[rng.choice(X.shape[0], 100, replace=False)]
    model = ood.fit(classes, total, weight=W, bias=b, vim_dim=5, neco_dim=4, knn_sample=sample, knn_k=7,
                    temperature=2.0)
    residual = ood.vim_residual_norms(model, X)
    model = ood.OodModel(**{**model.__dict__, "vim_alpha": ood.vim_alpha((X @ W.T + b).max(axis=1).mean(), residual.mean())})
    got = ood.scores(model, test)
    logits = test @ W.T + b
    softmax = np.exp(logits - logits.max(axis=1, keepdims=True))
    softmax /= softmax.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(got["msp"], softmax.max(axis=1), rtol=RTOL)
    np.testing.assert_allclose(got["max_logit"], logits.max(axis=1), rtol=RTOL)
    np.testing.assert_allclose(got["energy"], 2.0 * np.log(np.exp(logits / 2.0).sum(axis=1)), rtol=RTOL)
    # ViM as its authors' code: u = −pinv(W)·b; eigenvectors of the covariance of X − u (assume centred) beyond DIM
    u = -np.linalg.pinv(W) @ b
    cov = EmpiricalCovariance(assume_centered=True).fit(X - u).covariance_
    values, vectors = np.linalg.eigh(cov)
    null_space = vectors[:, np.argsort(-values)[5:]]
    alpha = (X @ W.T + b).max(axis=1).mean() / np.linalg.norm((X - u) @ null_space, axis=1).mean()
    energy = np.log(np.exp(logits).sum(axis=1))
    np.testing.assert_allclose(got["vim"], energy - alpha * np.linalg.norm((test - u) @ null_space, axis=1), rtol=RTOL)
    # NECO as its authors' code: StandardScaler, PCA, ‖first d components‖ / ‖standardised row‖
    scaler = StandardScaler().fit(X)
    pca = PCA(X.shape[1]).fit(scaler.transform(X))
    z = scaler.transform(test)
    neco = np.linalg.norm(pca.transform(z)[:, :4], axis=1) / np.linalg.norm(z, axis=1)
    np.testing.assert_allclose(got["neco"], neco, rtol=1e-8)  # pca.mean_ ≈ 1e-16: the only difference
    np.testing.assert_allclose(got["neco_max_logit"], neco * logits.max(axis=1), rtol=1e-8)  # the authors' ViT variant
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    distances = np.sort(np.linalg.norm(unit(test)[:, None, :] - unit(sample)[None, :, :], axis=2), axis=1)
    np.testing.assert_allclose(got["knn"], -distances[:, 6] ** 2, rtol=1e-7)  # squared, as faiss IndexFlatL2


def test_nc5_is_the_mean_absolute_cosine_to_the_class_means(data):
    X, y, W, b, test, classes, total = data
    model = ood.fit(classes, total)
    mu_g = X.mean(axis=0)
    ood_mean = test[50:].mean(axis=0)
    expected = np.mean([abs(np.dot(X[y == c].mean(axis=0) - mu_g, ood_mean - mu_g))
                        / (np.linalg.norm(X[y == c].mean(axis=0) - mu_g) * np.linalg.norm(ood_mean - mu_g)) for c in range(4)])
    assert ood.nc5(ood_mean, model) == pytest.approx(expected, rel=RTOL)


def test_a_dead_unit_leaves_the_shared_basis_and_matches_the_pseudo_inverse_reference(data):
    """A constant unit makes Σ_W and Σ_T singular: the scores take the separate factors of each
    pseudo-inverse (no shared basis), and still equal scikit-learn's (pinvh) references."""
    X, y, W, b, test, _, _ = data
    X, test = X.copy(), test.copy()
    X[:, 3], test[:, 3] = 7.0, 7.0 + np.linspace(-1.0, 1.0, test.shape[0])  # dead in the fit rows; not in the test rows
    moments = ClassMoments(X.shape[1])
    moments.update(X, y)
    classes = moments.finalize()
    got = ood.scores(ood.fit(classes, pooled(classes)), test)
    means = np.array([X[y == c].mean(axis=0) for c in range(4)])
    tied = EmpiricalCovariance(assume_centered=True).fit(X - means[y])
    md = np.array([[(t - m) @ tied.precision_ @ (t - m) for m in means] for t in test])
    np.testing.assert_allclose(got["mahalanobis"], -md.min(axis=1), rtol=RTOL)
    full = EmpiricalCovariance().fit(X)
    md0 = np.array([(t - X.mean(axis=0)) @ full.precision_ @ (t - X.mean(axis=0)) for t in test])
    np.testing.assert_allclose(got["relative_mahalanobis"], -(md.min(axis=1) - md0), rtol=RTOL)
