"""Post-hoc out-of-distribution scores of rows, from the statistics of the in-distribution (ID) fit
rows (docs/metrics.md, "Out-of-distribution scores"). Every score is "higher = more in-distribution".

A :class:`OodModel` is fitted once per layer from the fit rows' class moments (class means, pooled
within-class scatter), their total moments and the classifier; then each block of rows to score
costs products with D × D or C × D matrices. ViM also needs two means over the fit rows
(max-logit, residual norm), which :func:`vim_alpha` takes from a pass scoring them. The model's maps
of a row are stacked in one D × k matrix (:class:`Projection`): one GEMM per block.

Conventions follow the authors' code: Mahalanobis (Lee et al. 2018) with the tied covariance
Σ_W = within scatter / N and its pseudo-inverse, no input preprocessing; relative Mahalanobis (Ren
et al. 2021) with the total covariance Σ_T about the global mean; ViM (Wang et al. 2022) with the
origin o = −W⁺b, the principal subspace of the uncentred second moment of x − o, and the virtual
logit α‖(x − o)_⊥‖; NECO (Ben Ammar et al. 2024) on standardised rows (per-unit mean and population
standard deviation of the fit rows, as scikit-learn's StandardScaler), the top-d principal
directions of their covariance, and its max-logit variant (the authors' score for ViT, Swin and
DeiT: the ratio times max_c ℓ_c); kNN (Sun et al. 2022) on L2-normalised rows against a seeded
sample of normalised fit rows, the negated *squared* distance to the k-th nearest (faiss'
IndexFlatL2 in the authors' code; a monotone map of the distance, so every measure is the same).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from actgeom.core.base.registry import registry
from actgeom.core.base.stats import ClassStats
from actgeom.core.metrics.knn import kth_largest_similarity
from actgeom.core.metrics.ood_eval import aupr_in, aupr_out, auroc, fpr_at_tpr
from actgeom.core.metrics.probesplit import is_test, split_keys

SPLIT_SEED_OFFSET = 1  # --fit-split hashes units with seed + 1: independent of the sample's keys (seed)


@dataclass(frozen=True)
class OodModel:
    """What scoring a row needs, fitted on the ID fit rows of one layer."""

    means: np.ndarray  # (C, D) class means of the fit rows (classes with rows)
    within_precision: np.ndarray  # (D, D) Σ_W⁺
    global_mean: np.ndarray  # (D,)
    total_precision: np.ndarray  # (D, D) Σ_T⁺
    weight: np.ndarray | None = None  # (C', D) classifier
    bias: np.ndarray | None = None  # (C',)
    vim_origin: np.ndarray | None = None  # o = −W⁺b
    vim_residual: np.ndarray | None = None  # (D, D − d) orthonormal basis of the residual space
    vim_alpha: float | None = None
    neco_scale: tuple[np.ndarray, np.ndarray] | None = None  # (mean, std) of the standardisation
    neco_basis: np.ndarray | None = None  # (D, d) top principal directions of the standardised fit rows
    knn_rows: np.ndarray | None = None  # (k_sample, D) normalised fit rows
    knn_k: int = 50
    temperature: float = 1.0
    projection: Projection | None = None  # the maps above stacked (:func:`stacked`), made by fit


@dataclass(frozen=True)
class Projection:
    """The model's linear maps of a row, stacked so that a block of rows costs one GEMM:
    Y = (X − μ) @ matrix + offset, μ the global mean, its columns named by ``columns``: "within"
    y = L_Wᵀ(x − μ) with Σ_W⁺ = L_W L_Wᵀ, so (x − μ)ᵀΣ_W⁺(x − μ) = ‖y‖²; "classes" (x − μ)ᵀΣ_W⁺(μ_c − μ);
    "total" t = L_Tᵀ(x − μ) with Σ_T⁺ = L_T diag(w) L_Tᵀ, so (x − μ)ᵀΣ_T⁺(x − μ) = Σ_j w_j t_j² (the same
    columns as "within" when one basis diagonalises both: :func:`_precision_roots`); "logits" Wx + b;
    "vim" (x − o)ᵀV_⊥; "neco" zᵀP_d. The affine shifts (x − o, z = (x − mean)/scale) are constants of
    the offset."""

    matrix: np.ndarray  # (D, k)
    offset: np.ndarray  # (k,)
    columns: dict[str, slice]
    centres: np.ndarray  # (C,) (μ_c − μ)ᵀΣ_W⁺(μ_c − μ)
    total_weights: np.ndarray  # (r_T,) w


def _psd_root(matrix: np.ndarray, power: float) -> np.ndarray:
    """V Λ^power over the kept eigenpairs of a symmetric PSD matrix (eigenvalues below n·eps·λ_max
    count as 0): power −½ gives L with L Lᵀ the pseudo-inverse, ½ a factor of the matrix itself."""
    values, vectors = np.linalg.eigh(matrix)
    keep = values > matrix.shape[0] * np.finfo(float).eps * max(values.max(initial=0.0), 0.0)
    return vectors[:, keep] * values[keep] ** power


def _precision_roots(within: np.ndarray, cov_total: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(L_W, L_T, w) with Σ_W⁺ = L_W L_Wᵀ and Σ_T⁺ = L_T diag(w) L_Tᵀ. When both covariances have full
    rank, one basis A diagonalises both (AᵀΣ_W A = I, AᵀΣ_T A = Γ: A = L_W Q, Q the eigenvectors of
    L_WᵀΣ_T L_W), so L_T = L_W = A and w = 1/γ: the scoring GEMM needs D columns fewer. Its rounding
    grows with the conditioning as the separate roots' do (within a factor of a few, in float64);
    a rank below D (dead units) or a γ below the pseudo-inverse's cut keeps the separate roots."""
    within_root, total_root = _psd_root(within, -0.5), _psd_root(cov_total, -0.5)
    d = within.shape[0]
    if within_root.shape[1] == total_root.shape[1] == d:
        gammas, rotation = np.linalg.eigh(within_root.T @ cov_total @ within_root)
        if gammas.min() > d * np.finfo(float).eps * gammas.max():
            basis = within_root @ rotation
            return basis, basis, 1.0 / gammas
    return within_root, total_root, np.ones(total_root.shape[1])


def stacked(model: OodModel, roots: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> Projection:
    """The :class:`Projection` of a model, from the roots (L_W, L_T, w) of its precisions
    (:func:`_precision_roots`: fit passes those of its covariances; else factored from the precisions)."""
    mu = model.global_mean
    blocks: dict[str, tuple[np.ndarray, np.ndarray | float]] = {}
    centres = weights = np.zeros(0)
    if model.means.shape[0]:
        if roots is None:  # a model not made by fit: its precisions factored
            total = _psd_root(model.total_precision, 0.5)
            roots = _psd_root(model.within_precision, 0.5), total, np.ones(total.shape[1])
        within, total, weights = roots
        means = (model.means - mu) @ within  # the centred class means in y's coordinates
        centres = np.einsum("cj,cj->c", means, means)
        blocks |= {"within": (within, 0.0), "classes": (within @ means.T, 0.0)}
        if total is not within:  # else "total" reads the columns of "within"
            blocks["total"] = (total, 0.0)
    if model.weight is not None:
        bias = 0.0 if model.bias is None else model.bias
        blocks["logits"] = (model.weight.T, mu @ model.weight.T + bias)
    if model.vim_residual is not None:
        blocks["vim"] = (model.vim_residual, (mu - model.vim_origin) @ model.vim_residual)
    if model.neco_basis is not None:
        mean, scale = model.neco_scale
        basis = model.neco_basis / scale[:, None]
        blocks["neco"] = (basis, (mu - mean) @ basis)
    widths = np.cumsum([0] + [m.shape[1] for m, _ in blocks.values()])
    columns = {name: slice(int(a), int(b)) for name, a, b in zip(blocks, widths[:-1], widths[1:])}
    if "within" in columns:
        columns.setdefault("total", columns["within"])
    matrix = np.zeros((mu.size, widths[-1]))
    offset = np.zeros(widths[-1])
    for name, (part, shift) in blocks.items():
        matrix[:, columns[name]], offset[columns[name]] = part, shift
    return Projection(matrix=matrix, offset=offset, columns=columns, centres=centres, total_weights=weights)


def fit(classes: ClassStats, total: ClassStats, *, weight=None, bias=None, vim_dim: int | None = None,
        neco_dim: int | None = None, knn_sample: np.ndarray | None = None, knn_k: int = 50,
        temperature: float = 1.0) -> OodModel:
    """An :class:`OodModel` from the fit rows' class statistics and total statistics (one class of
    every fit row), the classifier (W, b), the seeded sample for kNN; ``vim_dim``/``neco_dim``: the
    principal dimensions (ViM default as its authors: 1 000 for D ≥ 2 048, 512 for D ≥ 768, else D/2)."""
    n, n_all = classes.counts.sum(), total.counts.sum()
    present = classes.counts > 0
    mean = total.means[0]
    cov_total = total.within_scatter / n_all
    within = classes.within_scatter / n if n else np.zeros_like(cov_total)  # no labelled rows: no class scores
    roots = _precision_roots(within, cov_total)
    within_root, total_root, weights = roots
    model = OodModel(means=classes.means[present], within_precision=within_root @ within_root.T,
                     global_mean=mean, total_precision=(total_root * weights) @ total_root.T, weight=weight,
                     bias=bias, knn_k=knn_k, temperature=temperature)
    d = mean.size
    if weight is not None and bias is not None:
        origin = -np.linalg.pinv(weight) @ bias
        shift = mean - origin
        second = cov_total + np.outer(shift, shift)  # E[(x − o)(x − o)ᵀ]
        _, vectors = np.linalg.eigh(second)  # ascending: the residual space is the first D − d
        dim = vim_dim if vim_dim is not None else (1000 if d >= 2048 else 512 if d >= 768 else d // 2)
        model = replace(model, vim_origin=origin, vim_residual=vectors[:, : d - dim])
    if neco_dim is not None:
        std = np.sqrt(np.diag(cov_total))
        scale = np.where(std > 0, std, 1.0)  # StandardScaler leaves constant units unscaled
        correlation = cov_total / np.outer(scale, scale)
        _, vectors = np.linalg.eigh(correlation)
        model = replace(model, neco_scale=(mean, scale), neco_basis=vectors[:, ::-1][:, :neco_dim])
    if knn_sample is not None:
        rows = _normalised(np.asarray(knn_sample, dtype=np.float64))  # shuffled once: kNN's search is fast on mixed rows
        model = replace(model, knn_rows=rows[np.random.default_rng(0).permutation(rows.shape[0])])
    return replace(model, projection=stacked(model, roots))


def _normalised(X: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(norms > 0, norms, 1.0)


def _logsumexp(z: np.ndarray) -> np.ndarray:
    top = z.max(axis=1)
    return top + np.log(np.exp(z - top[:, None]).sum(axis=1))


def _squared_norms(Y: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", Y, Y)


def _min_mahalanobis(y: np.ndarray, dots: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """min_c (x − μ_c)ᵀΣ_W⁺(x − μ_c) per row, as ‖y‖² − 2 (x − μ)ᵀΣ_W⁺(μ_c − μ) + (μ_c − μ)ᵀΣ_W⁺(μ_c − μ)
    from the columns "within" (y) and "classes" (dots) of the :class:`Projection`."""
    return (_squared_norms(y)[:, None] - 2 * dots + centres[None, :]).min(axis=1)


def scores(model: OodModel, X: np.ndarray) -> dict[str, np.ndarray]:
    """Every score the model allows for the rows X (n, D) float64: one GEMM of the centred rows with
    the stacked maps (:class:`Projection`), then reductions per row."""
    projection = model.projection if model.projection is not None else stacked(model)
    # about the fit rows' mean: no cancellation against a large offset
    Y = (X - model.global_mean) @ projection.matrix
    Y += projection.offset
    columns = {name: Y[:, where] for name, where in projection.columns.items()}
    out = {}
    if "within" in columns:
        nearest = _min_mahalanobis(columns["within"], columns["classes"], projection.centres)
        md0 = columns["total"] ** 2 @ projection.total_weights
        out = {"mahalanobis": -nearest, "relative_mahalanobis": -(nearest - md0)}
    if "logits" in columns:
        logits = columns["logits"]
        lse = _logsumexp(logits)
        out["max_logit"] = logits.max(axis=1)
        out["msp"] = np.exp(out["max_logit"] - lse)
        out["energy"] = model.temperature * _logsumexp(logits / model.temperature)
        if "vim" in columns and model.vim_alpha is not None:
            out["vim"] = lse - model.vim_alpha * np.linalg.norm(columns["vim"], axis=1)
    if "neco" in columns:
        mean, scale = model.neco_scale
        norms = np.linalg.norm((X - mean) / scale, axis=1)
        out["neco"] = np.linalg.norm(columns["neco"], axis=1) / np.where(norms > 0, norms, 1.0)
        if "max_logit" in out:
            out["neco_max_logit"] = out["neco"] * out["max_logit"]
    if model.knn_rows is not None:
        out["knn"] = -kth_squared_distance(_normalised(X), model.knn_rows, model.knn_k)
    return out


def vim_residual_norms(model: OodModel, X: np.ndarray) -> np.ndarray:
    """‖(x − o)_⊥‖: the norm of x − o outside ViM's principal subspace."""
    return np.linalg.norm((X - model.vim_origin) @ model.vim_residual, axis=1)


def vim_alpha(mean_max_logit: float, mean_residual: float) -> float:
    """ViM's α: the fit rows' mean max-logit over their mean residual norm."""
    return mean_max_logit / mean_residual


def kth_squared_distance(Z: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """The squared distance of each normalised row of Z to its k-th nearest of the normalised
    ``rows``: 2 − 2 z·r at the k-th largest z·r (exact as in float64: core/metrics/knn.py), clipped
    at 0 (what faiss' IndexFlatL2 returns in the authors' code)."""
    return np.maximum(2.0 - 2.0 * kth_largest_similarity(Z, rows, min(k, rows.shape[0])), 0.0)


def held_out(units: np.ndarray, seed: int, fraction: float) -> np.ndarray:
    """--fit-split: whether each row is a held-out ID test row — the splitmix64 key of its sampling
    unit (core/metrics/probesplit.py: the row, or the first row of its sequence) with seed + 1 is
    below fraction·2⁶⁴. The same rows in the fit pass and the scoring pass, in any chunking."""
    return is_test(split_keys(units, seed + SPLIT_SEED_OFFSET), fraction)


def nc5(ood_mean: np.ndarray, model: OodModel) -> float:
    """NC5 (NECO's ID/OOD orthogonality): mean over ID classes of |cos(μ_OOD − μ_G, μ_c − μ_G)|."""
    ood = ood_mean - model.global_mean
    centred = model.means - model.global_mean
    cosines = centred @ ood / (np.linalg.norm(centred, axis=1) * np.linalg.norm(ood))
    return float(np.abs(cosines).mean())


# -- evaluation per OOD set, and the registry ---------------------------------------------------------

MEASURES = {"auroc": ("AUROC, ID positive (ties count ½)", "higher", auroc),
            "aupr_in": ("average precision, ID positive, higher scores first", "higher", aupr_in),
            "aupr_out": ("average precision, OOD positive, lower scores first", "higher", aupr_out),
            "fpr95": ("share of OOD rows accepted at the threshold keeping 95 % of the ID rows", "lower", fpr_at_tpr)}
SCORES = {
    "msp": ("max_c softmax(ℓ(x))_c", ("weight", "bias"), "Hendrycks & Gimpel, ICLR 2017"),
    "max_logit": ("max_c ℓ_c(x)", ("weight", "bias"), "Hendrycks et al., ICML 2022"),
    "energy": ("T · logsumexp(ℓ(x)/T)", ("weight", "bias"), "Liu et al., NeurIPS 2020"),
    "mahalanobis": ("−min_c (x − μ_c)ᵀ Σ_W⁺ (x − μ_c)", ("labels",), "Lee et al., NeurIPS 2018"),
    "relative_mahalanobis": ("−min_c [MD_c(x) − MD_0(x)], MD_0 about the global mean with Σ_T⁺", ("labels",),
                             "Ren et al., 2021"),
    "vim": ("logsumexp ℓ(x) − α‖(x − o)_⊥‖, o = −W⁺b, ⊥: outside the top-d subspace of E[(x−o)(x−o)ᵀ]",
            ("weight", "bias", "sample"), "Wang et al., CVPR 2022"),
    "neco": ("‖P_dᵀ z‖ / ‖z‖, z the standardised row, P_d its top-d principal directions", (), "Ben Ammar et al., ICLR 2024"),
    "neco_max_logit": ("NECO's ratio × max_c ℓ_c(x) (its authors' score for ViT, Swin, DeiT)",
                       ("weight", "bias"), "Ben Ammar et al., ICLR 2024"),
    "knn": ("−‖z − z_(k)‖², z = x/‖x‖, z_(k) its k-th nearest normalised fit row of the seeded sample", ("sample",),
            "Sun et al., ICML 2022"),
}
OOD_TEST = "tests/test_ood.py::test_scores_and_measures_equal_an_in_memory_reference"


@dataclass(frozen=True)
class OodSet:
    """One OOD set's rows next to the ID test rows: every score of both, and the OOD rows' mean."""

    id_scores: dict[str, np.ndarray]
    ood_scores: dict[str, np.ndarray]
    nc5: float | None = None


def _evaluator(score: str):
    def evaluate_score(inputs: OodSet, options) -> dict:
        if score not in inputs.id_scores:
            return {}
        return {f"{score}_{name}": measure(inputs.id_scores[score], inputs.ood_scores[score])
                for name, (_, _, measure) in MEASURES.items()}
    evaluate_score.__doc__ = f"AUROC, AUPR-In, AUPR-Out and FPR95 of the {score} score (core/metrics/ood_eval.py)."
    return evaluate_score


def nc5_of(inputs: OodSet, options) -> dict:
    """NC5 of the OOD set's mean (:func:`nc5`)."""
    return {} if inputs.nc5 is None else {"nc5": inputs.nc5}


def _entries() -> list[dict]:
    entries = []
    for score, (formula, needs, source) in SCORES.items():
        compute = _evaluator(score)
        for name, (meaning, direction, _) in MEASURES.items():
            entries.append(dict(name=f"{score}_{name}", formula=f"{meaning} of the score {formula}", compute=compute,
                                needs=needs, direction=direction, range=(0.0, 1.0), ideal=1.0 if direction == "higher" else 0.0,
                                invariant=frozenset(), source=source, test=OOD_TEST))
    entries.append(dict(name="nc5", formula="mean over ID classes of |cos(μ_OOD − μ_G, μ_c − μ_G)|", compute=nc5_of,
                        needs=("labels",), direction="lower", range=(0.0, 1.0), ideal=0.0, source="Ben Ammar et al., ICLR 2024",
                        test=OOD_TEST))
    return entries


REGISTRY = registry("ood", *_entries())
