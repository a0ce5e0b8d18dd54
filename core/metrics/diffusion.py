"""Diffusion spectral entropy and mutual information (Liao et al. 2023) of sampled rows, in bits
(docs/metrics.md, "Entropy and neuron activity"): pure functions on an N×N kernel."""

from __future__ import annotations

import numpy as np
from scipy import linalg

from actgeom.core.base.threads import blas_threads
from actgeom.core.metrics.uncertainty import t_quantile

KERNEL_NEAR_IDENTITY = 0.01  # off-diagonal share of K's mass below this: σ is small for the data, DSE ≈ log₂ N
DSE_PROB_FLOOR = 2.22e-16  # added to every p before the log, as Liao et al.'s code does


def diffusion_spectral_entropy(X: np.ndarray, *, sigma: float, t: float) -> dict:
    """Diffusion spectral entropy in bits (Liao et al. 2023): G_ij = exp(−‖x_i − x_j‖²/(2σ²)),
    K = D^{-1/2} G D^{-1/2} with D = diag(rowsum G), p ∝ |eig K|^t, p += 2.22e-16,
    H = −Σ p log₂ p. Between 0 (σ → ∞: one cluster) and log₂ N (σ → 0: K = I).

    Holds one N×N float64 matrix: the kernel is built in place from the Gram matrix and handed
    to LAPACK's eigensolver to overwrite (no copy); the median distance is selected without
    copying it (see :func:`_median_offdiagonal`). Also returns the median pairwise distance and the mean
    off-diagonal entry of K (and the off-diagonal share of K's mass: near 0 means K ≈ I, σ too
    small for the data, DSE ≈ log₂ N), which say whether σ suits the data's scale.
    """
    with blas_threads(X.shape[0]):
        return _diffusion_spectral_entropy(X, sigma=sigma, t=t)


def _diffusion_spectral_entropy(X: np.ndarray, *, sigma: float, t: float, diagnostics: bool = True) -> dict:
    n = X.shape[0]
    Z = X - X.mean(axis=0)
    sq = np.einsum("ij,ij->i", Z, Z)
    kernel = Z @ Z.T  # becomes ‖x_i − x_j‖², then G, then K, in place
    kernel *= -2.0
    kernel += sq[:, None]
    kernel += sq[None, :]
    np.maximum(kernel, 0.0, out=kernel)
    np.fill_diagonal(kernel, 0.0)
    median_distance = _median_offdiagonal(kernel) if n > 1 and diagnostics else float("nan")
    kernel *= -1.0 / (2.0 * sigma**2)
    np.exp(kernel, out=kernel)
    root = 1.0 / np.sqrt(kernel.sum(axis=1))
    kernel *= root[:, None]
    kernel *= root[None, :]
    total, diagonal = float(kernel.sum()), float(np.trace(kernel))
    off_diagonal = (total - diagonal) / (n * (n - 1)) if n > 1 else float("nan")
    # K is symmetric, so its transpose (a Fortran-ordered view) is K itself: LAPACK works in place
    eigenvalues = linalg.eigh(kernel.T, eigvals_only=True, overwrite_a=True, check_finite=False)
    del kernel
    p = np.abs(eigenvalues) ** t
    p = p / p.sum() + DSE_PROB_FLOOR
    return {"dse": float(-(p * np.log2(p)).sum()), "dse_median_distance": median_distance,
            "dse_offdiag_mass": off_diagonal, "dse_offdiag_fraction": (total - diagonal) / total, "dse_rows": n}


_MEDIAN_SAMPLE = 200_000  # upper-triangle entries sampled to bracket the median
_MEDIAN_ROWS = 256  # rows scanned at a time (bounded temporaries)


def _median_offdiagonal(squared: np.ndarray) -> float:
    """√ of the median off-diagonal entry of a symmetric matrix of squared distances, exactly,
    without an N×N copy.

    The off-diagonal entries are the upper triangle's, each twice, so their median is the median
    of the triangle (the mean of its two middle values when the count is even). A seeded sample
    of the triangle brackets the median; one scan counts the entries below the bracket and keeps
    those inside it (a few thousand), where the exact order statistics are selected. Should the
    bracket miss (it is ±6 standard errors wide), the scan is repeated on the whole range.
    """
    n = squared.shape[0]
    m = n * (n - 1) // 2  # entries in the upper triangle
    middle = [(m - 1) // 2, m // 2]
    if m <= _MEDIAN_SAMPLE:  # small (DSMI's per-class kernels): the triangle itself is cheaper than a sample
        values = squared[np.triu_indices(n, 1)]
        values.partition(middle)
        return float(np.sqrt(values[middle].mean()))
    rng = np.random.default_rng(0)
    i = rng.integers(0, n - 1, _MEDIAN_SAMPLE)
    j = rng.integers(0, n - 1, _MEDIAN_SAMPLE)
    i, j = np.minimum(i, j), np.maximum(i, j) + 1
    sample = squared[i, j]
    spread = 6 * 0.5 / np.sqrt(_MEDIAN_SAMPLE)
    bracket = np.quantile(sample, [max(0.5 - spread, 0.0), min(0.5 + spread, 1.0)])
    for low, high in ((bracket[0], bracket[1]), (-np.inf, np.inf)):
        below, inside = 0, []
        for start in range(0, n, _MEDIAN_ROWS):
            rows = squared[start : start + _MEDIAN_ROWS]
            upper = np.arange(n)[None, :] > np.arange(start, start + rows.shape[0])[:, None]
            values = rows[upper]
            below += int((values < low).sum())
            inside.append(values[(values >= low) & (values <= high)])
        inside = np.concatenate(inside)
        wanted = [k - below for k in middle]
        if 0 <= wanted[0] and wanted[1] < inside.size:
            inside.partition(wanted)
            return float(np.sqrt(inside[wanted].mean()))
    raise AssertionError("the whole range always holds the median")


def dsmi(X: np.ndarray, y: np.ndarray, *, sigma: float, t: float, repeats: int, seed: int) -> float:
    """Diffusion spectral mutual information in bits (Liao et al. 2023):
    Σ_c (n_c/N)[mean over ``repeats`` random subsets of size n_c of DSE − DSE(rows of class c)].
    Subsets come from ``np.random.default_rng(seed)``; classes with one row are skipped."""
    rng = np.random.default_rng(seed)
    total = 0.0
    labelled = y >= 0
    X, y = X[labelled], y[labelled]
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        if rows.size < 2:
            continue
        random = np.mean([_dse_bits(X[rng.choice(y.size, rows.size, replace=False)], sigma=sigma, t=t)
                          for _ in range(repeats)])
        total += rows.size / y.size * (random - _dse_bits(X[rows], sigma=sigma, t=t))
    return float(total)


def _dse_bits(X: np.ndarray, *, sigma: float, t: float) -> float:
    """DSE alone, without the diagnostics (DSMI's many kernels need no median distance)."""
    with blas_threads(X.shape[0]):
        return _diffusion_spectral_entropy(X, sigma=sigma, t=t, diagnostics=False)["dse"]


# -- stochastic Lanczos quadrature (--dse-method slq) -------------------------------------------------

SLQ_DEFLATE = 128  # leading eigenvectors of K found by subspace iteration, their share of tr f(K) by Lanczos
SLQ_PROBES = 32  # Rademacher probes on the rest
SLQ_STEPS = 24  # Lanczos steps per probe (Gauss quadrature with 24 nodes)
SLQ_COARSE = 16  # nodes of the coarser quadrature whose difference bounds the quadrature error
SLQ_DEFLATE_STEPS = 4  # Lanczos steps from each leading Ritz vector (nearly an eigenvector: converges at once)
SLQ_ITERATIONS = 2  # subspace iterations for the leading eigenvectors
SLQ_LEVEL = 0.95  # dse_error: the half-width of this two-sided interval from the probes' spread
_SLQ_BLOCK = 1024  # kernel rows built at a time in float64


def diffusion_spectral_entropy_slq(X: np.ndarray, *, sigma: float, t: float, seed: int) -> dict:
    """DSE estimated by stochastic Lanczos quadrature, with ``dse_error``: the half-width of a 95 %
    interval for the estimate's error from the spread of its probes (seeded by ``seed``).

    With Z = tr K^t and p = λ^t/Z, −Σ p log₂ p = log₂ Z − (t/Z)·tr(K^t log₂ K), so DSE needs two traces
    of functions of K, never its eigenvalues one by one. K is built in float32 (half the memory;
    its rounding moves DSE by ~1e-6 relative, see tests/test_dse_slq.py); tr K = Σ 1/d_i exactly
    (K_ii = 1/d_i), so at t = 1 Z is exact. tr f(K) = tr(Uᵀ f(K) U) + E_z[zᵀ P f(K) P z] for any
    orthonormal U and P = I − UUᵀ, z Rademacher: U holds K's leading eigenvectors (subspace iteration),
    whose share is deterministic (Lanczos from each column), and the probes see only the rest, whose
    spread is small (Hutchinson's variance is 2·Σ_{i≠j} (P f(K) P)_ij²). Each quadratic form
    vᵀ f(K) v is Gauss quadrature on the Lanczos tridiagonal matrix of v (Golub & Meurant).
    ``dse_error`` comes from the probes' jackknife standard error times the t quantile; it omits
    the quadrature's own error (small at 16 nodes: the benchmark checks coverage) and the
    2.22e-16 floor added to every p by the exact method (at most N·1.2e-14 bits).
    Also returns the mean off-diagonal entry and share of K's mass (as the exact method does); the
    median distance is left out (NaN): it would need every pairwise distance kept.
    """
    with blas_threads(X.shape[0]):
        kernel, degrees = _kernel_float32(X, sigma)
        estimate = _slq_entropy(kernel, degrees, t=t, seed=seed)
    n = X.shape[0]
    total, diagonal = float(kernel.sum(dtype=np.float64)), float(np.sum(1.0 / degrees))
    return estimate | {"dse_median_distance": float("nan"), "dse_offdiag_mass": (total - diagonal) / (n * (n - 1)),
                       "dse_offdiag_fraction": (total - diagonal) / total, "dse_rows": n}


def _kernel_float32(X: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """K = D^{-1/2} G D^{-1/2} in float32, built from float64 distances a block of rows at a time
    (no N×N float64 matrix), and the degrees d = rowsum G in float64."""
    n = X.shape[0]
    Z = X - X.mean(axis=0)
    sq = np.einsum("ij,ij->i", Z, Z)
    kernel = np.empty((n, n), dtype=np.float32)
    degrees = np.empty(n)
    for start in range(0, n, _SLQ_BLOCK):
        stop = min(start + _SLQ_BLOCK, n)
        block = Z[start:stop] @ Z.T
        block *= -2.0
        block += sq[start:stop, None]
        block += sq[None, :]
        np.maximum(block, 0.0, out=block)
        block[np.arange(stop - start), np.arange(start, stop)] = 0.0
        block *= -1.0 / (2.0 * sigma**2)
        np.exp(block, out=block)
        degrees[start:stop] = block.sum(axis=1)
        kernel[start:stop] = block
    root = (1.0 / np.sqrt(degrees)).astype(np.float32)
    kernel *= root[:, None]
    kernel *= root[None, :]
    return kernel, degrees


def _slq_entropy(kernel: np.ndarray, degrees: np.ndarray, *, t: float, seed: int) -> dict:
    """DSE and its error from K (float32) and its degrees: see :func:`diffusion_spectral_entropy_slq`."""
    n = kernel.shape[0]
    rng = np.random.default_rng(seed)
    leading, leading_image = _leading_eigenvectors(kernel, min(SLQ_DEFLATE, n // 4), rng)
    probes = rng.choice([-1.0, 1.0], size=(n, SLQ_PROBES))
    probes -= leading @ (leading.T @ probes)
    f_lead, g_lead = _quadratic_forms(kernel, leading, min(SLQ_DEFLATE_STEPS, n), t)[:2]
    f_probe, g_probe, moments, coarse = _quadratic_forms(kernel, probes, min(SLQ_STEPS, n), t)
    known = np.array([n - leading.shape[1], np.sum(1.0 / degrees) - np.einsum("ij,ij->", leading, leading_image),
                      _frobenius_squared(kernel) - np.einsum("ij,ij->", leading_image, leading_image)])
    exact_z = float(np.sum(1.0 / degrees)) if t == 1 else None

    def entropy(f_rest: float, g_rest: float) -> float:
        z = exact_z if exact_z is not None else g_lead.sum() + g_rest
        return float(np.log2(z) - t * (f_lead.sum() + f_rest) / z)

    f_probe, g_probe = (_controlled(values, moments, known) for values in (f_probe, g_probe))
    quadrature = abs(entropy(f_probe.mean(), g_probe.mean())
                     - entropy(*(_controlled(values, moments, known).mean() for values in coarse)))
    m = SLQ_PROBES
    leave_out = np.array([entropy((f_probe.sum() - f_probe[i]) / (m - 1), (g_probe.sum() - g_probe[i]) / (m - 1))
                          for i in range(m)])
    se = float(np.sqrt((m - 1) / m * ((leave_out - leave_out.mean()) ** 2).sum()))
    return {"dse": entropy(f_probe.mean(), g_probe.mean()), "dse_error": t_quantile(m, SLQ_LEVEL) * se + quadrature}


def _controlled(values: np.ndarray, moments: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Control variates: vᵀ f(K) v less β·(vᵀK^j v − E vᵀK^j v), j = 0, 1, 2, whose means are known
    exactly (tr P, tr PKP, tr PK²P); β by least squares over the probes. Same mean, far less spread
    when f is close to a quadratic on the spectrum the probes see."""
    centred = moments - known
    design = centred - centred.mean(axis=0)
    beta = np.linalg.lstsq(design, values - values.mean(), rcond=None)[0]
    return values - centred @ beta


def _frobenius_squared(kernel: np.ndarray) -> float:
    """tr K² = Σ K_ij², accumulated in float64 a block of rows at a time."""
    return float(sum(np.einsum("ij,ij->", block, block, dtype=np.float64)
                     for block in np.array_split(kernel, max(1, kernel.shape[0] // _SLQ_BLOCK))))


def _leading_eigenvectors(kernel: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Ritz vectors U (N × k, orthonormal) of K's k largest eigenvalues and K U: subspace iteration
    from a seeded Gaussian block, then Rayleigh–Ritz."""
    if k == 0:
        return np.zeros((kernel.shape[0], 0)), np.zeros((kernel.shape[0], 0))
    image = _apply(kernel, rng.standard_normal((kernel.shape[0], k)))
    for _ in range(SLQ_ITERATIONS):
        basis = np.linalg.qr(image)[0]
        image = _apply(kernel, basis)
    small = basis.T @ image
    rotation = np.linalg.eigh((small + small.T) / 2)[1]
    return basis @ rotation, image @ rotation


def _apply(kernel: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """K @ V in float32 (reading K once for every column), returned in float64."""
    return (kernel @ vectors.astype(np.float32)).astype(np.float64)


def _quadratic_forms(kernel: np.ndarray, vectors: np.ndarray, steps: int, t: float) -> tuple[np.ndarray, ...]:
    """vᵀ f(K) v for f(λ) = |λ|^t log₂|λ| and for g(λ) = |λ|^t, each column v of ``vectors``, by Gauss
    quadrature: ‖v‖² Σ_k τ_k² f(θ_k), θ the eigenvalues of v's Lanczos tridiagonal matrix and τ their
    eigenvectors' first entries. Lanczos runs on every column at once (one K @ V per step), fully
    reorthogonalised (twice) against the column's own basis."""
    n, m = vectors.shape
    if m == 0:
        return np.zeros(0), np.zeros(0), np.zeros((0, 3)), (np.zeros(0), np.zeros(0))
    norms = np.einsum("ij,ij->j", vectors, vectors)
    basis = np.empty((steps, n, m))
    q = vectors / np.sqrt(norms)
    alpha, beta = np.zeros((steps, m)), np.zeros((steps, m))
    for j in range(steps):
        basis[j] = q
        w = _apply(kernel, q)
        alpha[j] = np.einsum("ij,ij->j", w, q)
        for _ in range(2):
            w -= np.einsum("jnm,jm->nm", basis[: j + 1], np.einsum("jnm,nm->jm", basis[: j + 1], w))
        beta[j] = np.sqrt(np.einsum("ij,ij->j", w, w))
        q = w / np.maximum(beta[j], np.finfo(float).tiny)
    f, g = _gauss_quadrature(alpha, beta, norms, t)
    coarse = _gauss_quadrature(alpha[:SLQ_COARSE], beta[:SLQ_COARSE], norms, t) if steps > SLQ_COARSE else (f, g)
    moments = norms[:, None] * np.stack([np.ones(m), alpha[0], alpha[0] ** 2 + beta[0] ** 2], axis=1)
    return f, g, moments, coarse


def _gauss_quadrature(alpha: np.ndarray, beta: np.ndarray, norms: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray]:
    """Per column c: ‖v‖² Σ_k τ_k² f(θ_k) for f = |λ|^t log₂|λ| and g = |λ|^t (θ, τ: the tridiagonal's
    eigenvalues and their eigenvectors' first entries)."""
    m = alpha.shape[1]
    f, g = np.empty(m), np.empty(m)
    for c in range(m):
        nodes, vecs = linalg.eigh_tridiagonal(alpha[:, c], beta[:-1, c])
        weights, lam = norms[c] * vecs[0] ** 2, np.abs(nodes)
        power = lam**t
        f[c] = float((weights * power * np.log2(np.where(lam > 0, lam, 1.0))).sum())
        g[c] = float((weights * power).sum())
    return f, g
