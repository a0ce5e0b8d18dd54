"""Slow, obviously-correct in-memory float64 statistics, to check the streamed engine against."""

from __future__ import annotations

import numpy as np


def class_statistics(X: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Counts, class means, pooled within-class scatter Σ (x−μ_y)(x−μ_y)ᵀ, per-class Σ‖x−μ_c‖².

    Two-pass per class (mean first, then deviations), everything in float64.
    """
    X = np.asarray(X, dtype=np.float64)
    n_classes = int(y.max()) + 1
    n_units = X.shape[1]
    counts = np.zeros(n_classes, dtype=np.int64)
    means = np.zeros((n_classes, n_units))
    within = np.zeros((n_units, n_units))
    sq_dev = np.zeros(n_classes)
    for c in range(n_classes):
        rows = X[y == c]
        counts[c] = rows.shape[0]
        if counts[c] == 0:
            continue
        means[c] = rows.mean(axis=0)
        dev = rows - means[c]
        within += dev.T @ dev
        sq_dev[c] = (dev * dev).sum()
    return {"counts": counts, "means": means, "within_scatter": within, "sq_dev": sq_dev}


def unit_statistics(X: np.ndarray, threshold: float = 0.0) -> dict[str, np.ndarray]:
    X = np.asarray(X, dtype=np.float64)
    norms = np.linalg.norm(X, axis=1)
    nonzero = norms > 0
    return {
        "n_active": (X > threshold).sum(axis=0),
        "sum": X.sum(axis=0),
        "sum_abs": np.abs(X).sum(axis=0),
        "unit_vector_sum": (X[nonzero] / norms[nonzero, None]).sum(axis=0),
    }


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """‖actual − expected‖_F / ‖expected‖_F (0 when both are 0)."""
    scale = np.linalg.norm(expected)
    diff = np.linalg.norm(np.asarray(actual, dtype=np.float64) - expected)
    return float(diff / scale) if scale else float(diff)


def _pinv(matrix: np.ndarray, size: int) -> np.ndarray:
    """Pseudo-inverse keeping eigenvalues > size·eps·λ_max (the convention actgeom documents)."""
    return np.linalg.pinv(matrix, rtol=size * np.finfo(np.float64).eps, hermitian=True)


def _etf_error(A: np.ndarray) -> float:
    C = A.shape[0]
    target = (np.eye(C) - np.ones((C, C)) / C) / np.sqrt(C - 1)
    return float(np.linalg.norm(A / np.linalg.norm(A) - target))


def _pairs(values: np.ndarray) -> np.ndarray:
    return values[np.triu_indices(values.shape[0], 1)]


def _nc2(rows: np.ndarray, suffix: str) -> dict:
    C = rows.shape[0]
    norms = np.linalg.norm(rows, axis=1)
    cos = _pairs(rows @ rows.T / np.outer(norms, norms))
    return {f"nc2_equinorm_{suffix}": norms.std(ddof=1) / norms.mean(),
            f"nc2_equiangular_{suffix}": cos.std(),
            f"nc2_maxangle_{suffix}": np.abs(cos + 1 / (C - 1)).mean(),
            f"nc2_etf_error_{suffix}": _etf_error(rows @ rows.T)}


def _frame(rows: np.ndarray, suffix: str) -> dict:
    G = rows @ rows.T
    off = G - np.diag(np.diag(G))
    return {f"of_error_{suffix}": float(np.linalg.norm(G / np.linalg.norm(G) - np.eye(G.shape[0]) / np.sqrt(G.shape[0]))),
            f"gof_offdiag_ratio_{suffix}": float(np.linalg.norm(off) / np.linalg.norm(G))}


def collapse_reference(X, y, W=None, b=None, predictions=None, *, min_count=1, global_mean="class",
                       nc1_inverse="topk", divide_by_c=True, nc4_decision="auto") -> dict:
    """Every collapse metric of docs/metrics.md the slow, obvious way: loops, C×C matrices, pinv."""
    X = np.asarray(X, dtype=np.float64)
    counts = np.bincount(y[y >= 0])
    kept = np.flatnonzero(counts >= max(min_count, 1))
    C, D = kept.size, X.shape[1]
    in_kept = np.isin(y, kept)
    Xk, yk = X[in_kept], y[in_kept]
    N = yk.size
    M = np.stack([Xk[yk == c].mean(axis=0) for c in kept])
    Sw = sum((Xk[yk == c] - M[i]).T @ (Xk[yk == c] - M[i]) for i, c in enumerate(kept)) / N
    v = np.array([((Xk[yk == c] - M[i]) ** 2).sum(axis=1).mean() for i, c in enumerate(kept)])
    mu_g = M.mean(axis=0) if global_mean == "class" else Xk.mean(axis=0)
    Mt = M - mu_g
    Sb = Mt.T @ Mt / C
    if nc1_inverse == "topk":
        lam, vec = np.linalg.eigh(Sb)
        k = min(C - 1, D)
        lam, vec = lam[::-1][:k], vec[:, ::-1][:, :k]
        Sb_inv = vec @ np.diag(1 / lam) @ vec.T
    else:
        Sb_inv = _pinv(Sb, max(C, D))
    out = {"nc1": np.trace(Sw @ Sb_inv) / (C if divide_by_c else 1), "nc1_quotient": np.trace(Sw) / np.trace(Sb)}
    dist2 = ((M[:, None, :] - M[None, :, :]) ** 2).sum(axis=2)
    spread = (v[:, None] + v[None, :]) / 2
    out["cdnv"] = _pairs(spread / np.where(dist2 > 0, dist2, np.nan)).mean()
    out["cdnv_lc"] = _pairs(spread / np.where(dist2 > 0, dist2, np.nan) ** 2).mean()
    out["vci"] = 1 - np.trace(_pinv(Sw + Sb, D) @ Sb) / min(D, C - 1)
    xbar = Xk.mean(axis=0)
    SSb = sum(counts[c] / N * np.outer(M[i] - xbar, M[i] - xbar) for i, c in enumerate(kept))
    out["separation_fuzziness"] = np.trace(Sw @ _pinv(SSb, max(C, D)))
    out |= _nc2(Mt, "means")
    out["nc2_equinorm_logvar_means"] = np.log(np.linalg.norm(Mt, axis=1)).var(ddof=1)
    P = Mt / np.linalg.norm(Mt, axis=1, keepdims=True)
    logs = _pairs(-np.log(np.sqrt(((P[:, None, :] - P[None, :, :]) ** 2).sum(axis=2)) + np.eye(C)))
    out["gnc2_log_mean"], out["gnc2_log_var"] = logs.mean(), logs.var()
    out |= _frame(M, "means")
    if W is not None:
        Wk = W[kept]
        out |= _nc2(Wk, "weights") | _frame(Wk, "weights")
        out["nc3_self_duality"] = np.linalg.norm(Wk / np.linalg.norm(Wk) - Mt / np.linalg.norm(Mt)) ** 2
        out["nc3_wh_etf_error"] = _etf_error(Wk @ Mt.T)
        dots = (Wk * Mt).sum(axis=1)
        cos = dots / (np.linalg.norm(Wk, axis=1) * np.linalg.norm(Mt, axis=1))
        out["unc3_cos_mean"], out["unc3_cos_var"], out["unc3_dot_var"] = cos.mean(), cos.var(ddof=1), dots.var(ddof=1)
        if b is not None:
            out["bias_collapse"] = np.linalg.norm(Wk @ mu_g + b[kept])
    ncc = kept[np.argmin(((Xk[:, None, :] - M[None, :, :]) ** 2).sum(axis=2), axis=1)]
    if predictions is not None and nc4_decision in ("auto", "predictions"):
        out["nc4_mismatch"] = np.mean(predictions[in_kept] != ncc)
    elif W is not None:
        logits = Xk @ W.T + (b if (b is not None and nc4_decision != "logits-nobias") else 0)
        out["nc4_mismatch"] = np.mean(logits.argmax(axis=1) != ncc)
    return {k: float(v) for k, v in out.items()}


def rank_reference(X: np.ndarray, *, center: bool = True, eps: float = 1e-7, fit_range=(12, 100), rtol=1e-14) -> dict:
    """The spectral metrics from an SVD of the whole (N, D) matrix, the obvious way."""
    X = np.asarray(X, dtype=np.float64)
    n = X.shape[0]
    sigma_raw = np.linalg.svd(X, compute_uv=False) / np.sqrt(n)
    sigma_c = np.linalg.svd(X - X.mean(axis=0), compute_uv=False) / np.sqrt(n)
    lam = (sigma_c if center else sigma_raw) ** 2

    def entropy_exp(p):
        p = p[p > 0]
        return float(np.exp(-(p * np.log(p)).sum()))

    out = {
        "rankme": entropy_exp(sigma_raw / sigma_raw.sum() + eps),
        "rankme_centered": entropy_exp(sigma_c / sigma_c.sum() + eps),
        "rankme_lambda": entropy_exp(sigma_c**2 / (sigma_c**2).sum() + eps),
        "erank": entropy_exp(np.sqrt(lam) / np.sqrt(lam).sum()),
        "stable_rank": lam.sum() / lam[0],
        "participation_ratio": lam.sum() ** 2 / (lam**2).sum(),
        "numerical_rank": int((lam > rtol * lam[0]).sum()),
    }
    cumulative = np.cumsum(lam) / lam.sum()
    for p in (90, 95, 99):
        out[f"k{p}"] = int(next(k for k in range(1, lam.size + 1) if cumulative[k - 1] > p / 100))
    start, stop = fit_range
    if lam.size >= stop:
        r = np.arange(start, stop + 1)
        A = np.stack([np.ones(r.size), -np.log(r)], axis=1) * np.sqrt(1 / r)[:, None]
        coef = np.linalg.lstsq(A, np.log(lam[start - 1 : stop]) * np.sqrt(1 / r), rcond=None)[0]
        out["alpha_req"] = coef[1]
    # IsoScore, step by step as Rudman et al. describe it: rotate the centred points to their
    # principal axes, take the variances there, scale them to norm √n, measure the defect.
    Xc = X - X.mean(axis=0)
    axes = np.linalg.svd(Xc, full_matrices=False)[2]
    variances = (Xc @ axes.T).var(axis=0)
    n_dims = X.shape[1]
    variances = np.r_[variances, np.zeros(n_dims - variances.size)]
    scaled = np.sqrt(n_dims) * variances / np.linalg.norm(variances)
    defect = np.linalg.norm(scaled - 1) / np.sqrt(2 * (n_dims - np.sqrt(n_dims)))
    fraction = (n_dims - defect**2 * (n_dims - np.sqrt(n_dims))) ** 2 / n_dims**2
    out["isoscore"] = (n_dims * fraction - 1) / (n_dims - 1)
    norms = np.linalg.norm(X, axis=1)
    U = X[norms > 0] / norms[norms > 0, None]
    cos = U @ U.T
    out["mean_cosine"] = (cos.sum() - np.trace(cos)) / (U.shape[0] * (U.shape[0] - 1))
    mean = X.mean(axis=0)
    out["mean_energy_fraction"] = mean @ mean / (X * X).sum(axis=1).mean()
    out["twonn_id"], out["mle_id"] = twonn_reference(X), mle_reference(X)
    return {k: float(v) for k, v in out.items()}


def _sorted_distances(X: np.ndarray) -> list[np.ndarray]:
    """For each row, its distances to every other row (differences, not the Gram trick), ascending."""
    return [np.sort(np.delete(np.sqrt(((X - x) ** 2).sum(axis=1)), i)) for i, x in enumerate(X)]


def twonn_reference(X: np.ndarray, discard: float = 0.1) -> float:
    """TwoNN, Facco et al. 2017, literally: μ_i = r2/r1; sort; drop the top 10 %; fit
    −log(1 − i/N) = d·log μ_(i) through the origin by least squares."""
    mu = np.sort([d[1] / d[0] for d in _sorted_distances(X)])
    n = mu.size
    keep = int(np.floor((1 - discard) * n))
    x = np.log(mu[:keep])
    y = np.array([-np.log(1 - (i + 1) / n) for i in range(keep)])
    return float(sum(a * b for a, b in zip(x, y, strict=True)) / sum(a * a for a in x))


def mle_reference(X: np.ndarray, k: int = 20) -> float:
    """Levina–Bickel with k neighbours, inverses averaged over rows (MacKay–Ghahramani):
    m̂ = 1 / mean_i[(1/(k−1)) Σ_{j=1}^{k−1} log(T_k(x_i) / T_j(x_i))]."""
    inverses = []
    for d in _sorted_distances(X):
        T = d[:k]
        inverses.append(sum(np.log(T[k - 1] / T[j]) for j in range(k - 1)) / (k - 1))
    return float(1.0 / np.mean(inverses))
