"""Entropy and neuron-activity metrics (docs/metrics.md): pure functions, natural log unless noted."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import linalg

from actgeom.core.neurons import dead_fraction, dormant_fraction, dormant_scores, firing_rates
from actgeom.core.options import EntropyOptions
from actgeom.core.registry import Unavailable, registry
from actgeom.core.spectrum import without_rounding
from actgeom.core.stages import announce, eigensolve_seconds
from actgeom.core.stats import UnitStats
from actgeom.core.threads import blas_threads

KERNEL_NEAR_IDENTITY = 0.01  # off-diagonal share of K's mass below this: σ is small for the data, DSE ≈ log₂ N
DSE_PROB_FLOOR = 2.22e-16  # added to every p before the log, as Liao et al.'s code does
SAE_EPS = 1e-10  # Bereska et al.: p_i + ε, renormalised


def renyi_entropy(eigenvalues: np.ndarray, alpha: float) -> float:
    """Matrix Rényi α-entropy (Giraldo et al. 2015) of a PSD matrix A/tr A given A's eigenvalues:
    H_α = log(Σ p^α)/(1 − α), H_1 = −Σ p log p, p = λ/Σλ (negatives from rounding → 0).
    A flat spectrum of k gives log k for every α. Eigenvalues at rounding level (≤ n·eps·λ_max)
    count as 0: for α < 1 their p^α would otherwise add up to a visible amount."""
    lam = without_rounding(eigenvalues)
    total = lam.sum()
    if total <= 0:
        return float("nan")
    p = lam[lam > 0] / total
    if alpha == 1.0:
        return float(-(p * np.log(p)).sum()) + 0.0  # + 0.0: one eigenvalue gives 0, not −0.0
    return float(np.log((p**alpha).sum()) / (1.0 - alpha)) + 0.0


def dataset_entropy(direction_scatter: np.ndarray, *, alpha: float) -> float:
    """Dataset entropy of sample-level rows (Skean et al. 2025): the Rényi entropy of K/tr K,
    K the Gram of the L2-normalised rows, computed on the D×D side Σ uuᵀ (same nonzero
    eigenvalues, and D ≪ N)."""
    with blas_threads(direction_scatter.shape[0]):
        return renyi_entropy(np.linalg.eigvalsh(direction_scatter), alpha)


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


def _diffusion_spectral_entropy(X: np.ndarray, *, sigma: float, t: float) -> dict:
    n = X.shape[0]
    Z = X - X.mean(axis=0)
    sq = np.einsum("ij,ij->i", Z, Z)
    kernel = Z @ Z.T  # becomes ‖x_i − x_j‖², then G, then K, in place
    kernel *= -2.0
    kernel += sq[:, None]
    kernel += sq[None, :]
    np.maximum(kernel, 0.0, out=kernel)
    np.fill_diagonal(kernel, 0.0)
    median_distance = _median_offdiagonal(kernel) if n > 1 else float("nan")
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
        random = np.mean([diffusion_spectral_entropy(X[rng.choice(y.size, rows.size, replace=False)], sigma=sigma,
                                                     t=t)["dse"] for _ in range(repeats)])
        total += rows.size / y.size * (random - diffusion_spectral_entropy(X[rows], sigma=sigma, t=t)["dse"])
    return float(total)


def _mean_abs(units: UnitStats) -> np.ndarray:
    return units.sum_abs / max(units.n_rows, 1)


def sae_effective_features(units: UnitStats, *, layer_width: int | None = None) -> dict:
    """SAE effective features (Bereska et al. 2025): F = exp(H(p)), p_i = mean|a_i|/Σ_j mean|a_j|
    (+1e-10, renormalised). Uniform mass over F latents gives F; one latent gives 1.
    ψ = F / layer_width when the encoded layer's width is given."""
    p = _mean_abs(units)
    p = p / p.sum() + SAE_EPS
    p /= p.sum()
    features = float(np.exp(-(p * np.log(p)).sum()))
    out = {"sae_effective_features": features}
    if layer_width:
        out["superposition_ratio"] = features / layer_width
    return out


def neuron_activity(units: UnitStats, *, tau: float) -> dict:
    """Dead and dormant fractions (core/neurons.py: :func:`dead_fraction`, :func:`dormant_fraction`),
    firing entropy (mean over units of the binary entropy of P(a_i > threshold)), effective units
    exp(H(q)), q_i = Σ|a_i|/Σ_j Σ|a_j|. Every value 0: every unit dormant, effective units NaN."""
    fire = firing_rates(units.n_active, units.n_rows)
    with np.errstate(divide="ignore", invalid="ignore"):
        binary = -(np.where(fire > 0, fire * np.log(fire), 0.0) + np.where(fire < 1, (1 - fire) * np.log1p(-fire), 0.0))
    q = units.sum_abs / units.sum_abs.sum() if units.sum_abs.sum() > 0 else None
    return {
        "dead_fraction": dead_fraction(fire),
        "dormant_fraction": dormant_fraction(dormant_scores(units.sum_abs, units.n_rows), tau),
        "firing_entropy": float(binary.mean()),
        "effective_units": float(np.exp(-(q[q > 0] * np.log(q[q > 0])).sum())) if q is not None else float("nan"),
    }


def attention_entropy(blocks, *, eps: float, normalized: bool) -> dict:
    """Attention entropy (Zhai et al., ICML 2023): per head, the mean over sequences and valid
    query rows (rows with any probability) of −Σ_j A_ij log A_ij, 0 log 0 = 0; ``eps`` > 0 uses
    log(A + eps) as their code does; ``normalized`` divides by log(#valid keys) (keys with
    A_ij > 0; rows with one valid key are skipped then). ``blocks`` yields (S, H, T, T) arrays."""
    totals, counts = None, None
    for A in blocks:
        A = np.asarray(A, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            logs = np.log(A + eps) if eps > 0 else np.where(A > 0, np.log(np.where(A > 0, A, 1.0)), 0.0)
        rows = -(A * logs).sum(axis=-1)  # (S, H, T)
        valid = A.sum(axis=-1) > 0
        if normalized:
            keys = (A > 0).sum(axis=-1)
            valid &= keys > 1
            rows = np.where(valid, rows / np.log(np.maximum(keys, 2)), 0.0)
        head_total = np.where(valid, rows, 0.0).sum(axis=(0, 2))
        head_count = valid.sum(axis=(0, 2))
        totals = head_total if totals is None else totals + head_total
        counts = head_count if counts is None else counts + head_count
    if totals is None:
        return {"attention_entropy": float("nan"), "attention_entropy_per_head": []}
    per_head = np.where(counts > 0, totals / np.maximum(counts, 1), np.nan)
    return {"attention_entropy": float(totals.sum() / counts.sum()) if counts.sum() else float("nan"),
            "attention_entropy_per_head": [float(v) for v in per_head]}


class SequenceEntropy:
    """Per-sequence entropies of a token-level layer (Skean et al. 2025), fed whole sequences.

    Each sequence's rows are centred by the sequence mean and L2-normalised (Z). Prompt
    entropy: the Rényi entropy of Z Zᵀ (computed on its smaller side), averaged over sequences.
    Token-level dataset entropy: the Rényi entropy of the Gram of the sequence vectors
    v_s = mean of Z's rows, accumulated on the D×D side Σ v vᵀ. Sequences of one token or of
    identical tokens (zero after centring; counted together) and sequences holding NaN/inf are
    skipped and counted.
    """

    def __init__(self, n_units: int, alpha: float):
        self.alpha = float(alpha)
        self.prompt_sum = 0.0
        self.n_sequences = 0
        self.n_single = 0
        self.n_nonfinite = 0
        self.vector_scatter = np.zeros((n_units, n_units))

    def update(self, X: np.ndarray, boundaries: np.ndarray) -> None:
        """Rows X hold whole sequences; ``boundaries`` (k+1,) are their starts and end within X."""
        vectors = []
        with blas_threads(min(int(np.diff(boundaries).max(initial=0)), X.shape[1])):  # the Grams' side
            self._prompts(X, boundaries, vectors)
        if vectors:
            V = np.asarray(vectors)
            self.vector_scatter += V.T @ V

    def _prompts(self, X: np.ndarray, boundaries: np.ndarray, vectors: list) -> None:
        """Each sequence's prompt entropy; its vector appended to ``vectors``."""
        for a, b in zip(boundaries[:-1], boundaries[1:]):
            if b - a < 2:
                self.n_single += 1
                continue
            rows = X[a:b]
            if not np.isfinite(rows).all():
                self.n_nonfinite += 1
                continue
            Z = rows - rows.mean(axis=0)
            norms = np.linalg.norm(Z, axis=1)
            if not norms.any():  # identical tokens: zero after centring, like one token
                self.n_single += 1
                continue
            Z /= np.where(norms == 0, 1.0, norms)[:, None]
            gram = Z @ Z.T if Z.shape[0] <= Z.shape[1] else Z.T @ Z
            self.prompt_sum += renyi_entropy(np.linalg.eigvalsh(gram), self.alpha)
            self.n_sequences += 1
            vectors.append(Z.mean(axis=0))

    def merge(self, other: "SequenceEntropy") -> None:
        for name in ("prompt_sum", "n_sequences", "n_single", "n_nonfinite", "vector_scatter"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def results(self) -> dict:
        used = self.n_sequences
        with blas_threads(self.vector_scatter.shape[0]):
            eigenvalues = np.linalg.eigvalsh(self.vector_scatter)
        return {"prompt_entropy": self.prompt_sum / used if used else float("nan"),
                "dataset_entropy": renyi_entropy(eigenvalues, self.alpha),
                "n_sequences": used, "n_single_token_sequences_skipped": self.n_single,
                "n_nonfinite_sequences_skipped": self.n_nonfinite}

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"scalars": np.array([self.alpha, self.prompt_sum]),
                "counts": np.array([self.n_sequences, self.n_single, self.n_nonfinite]),
                "vector_scatter": self.vector_scatter}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "SequenceEntropy":
        acc = cls(arrays["vector_scatter"].shape[0], float(arrays["scalars"][0]))
        acc.prompt_sum = float(arrays["scalars"][1])
        acc.n_sequences, acc.n_single, acc.n_nonfinite = (int(v) for v in arrays["counts"])
        acc.vector_scatter = np.array(arrays["vector_scatter"])
        return acc


# -- the registry -----------------------------------------------------------------------------------

@dataclass
class EntropyInputs:
    """One layer's finalised statistics as the entropy metrics use them: Σ uuᵀ (sample-level) or
    the per-sequence results (token-level), the seeded sample, the unit statistics."""

    units: UnitStats
    sample: np.ndarray  # (n, D) float64
    sample_labels: np.ndarray
    direction_scatter: np.ndarray | None = None
    sequences: dict | None = None
    layer_width: int | None = None


def dataset_entropy_of(e: EntropyInputs, o: EntropyOptions) -> dict:
    """Dataset entropy (Skean et al. 2025): token-level from the sequence vectors, else from Σ uuᵀ.
    Unavailable with fewer than two nonzero rows (or sequences): one direction has no spread to
    measure, and a zero row has no direction. Rows all pointing one way give 0."""
    if e.sequences is not None:
        if e.sequences["n_sequences"] < 2:
            return {"dataset_entropy": Unavailable(f"{e.sequences['n_sequences']} sequence(s) of 2 or more finite, "
                                                   "not identical tokens; dataset entropy needs 2")}
        return {"dataset_entropy": e.sequences["dataset_entropy"]}
    n_directions = round(float(np.trace(e.direction_scatter)))  # Σ‖u‖² over rows: 1 per nonzero row
    if n_directions < 2:
        return {"dataset_entropy": Unavailable("every row is zero: no direction" if n_directions == 0 else
                                               "one nonzero row: dataset entropy needs 2")}
    return {"dataset_entropy": dataset_entropy(e.direction_scatter, alpha=o.alpha)}


def prompt_entropy_of(e: EntropyInputs, o: EntropyOptions) -> dict:
    """Prompt entropy (Skean et al. 2025): the mean over sequences of their Rényi entropy;
    unavailable when no sequence has 2 or more finite, not identical tokens."""
    if e.sequences["n_sequences"] == 0:
        return {"prompt_entropy": Unavailable("no sequence of 2 or more finite, not identical tokens")}
    return {"prompt_entropy": e.sequences["prompt_entropy"]}


def dse_of(e: EntropyInputs, o: EntropyOptions) -> dict:
    """Diffusion spectral entropy of the seeded sample and its diagnostics (see
    :func:`diffusion_spectral_entropy`)."""
    if e.sample.shape[0] < 2:
        return dict.fromkeys(_DSE_OUTPUTS, Unavailable(f"{e.sample.shape[0]} sampled rows; DSE needs 2"))
    n = e.sample.shape[0]
    announce(f"DSE: eigenvalues of a {n}×{n} kernel", lambda: eigensolve_seconds(n))
    return diffusion_spectral_entropy(e.sample, sigma=o.sigma, t=o.t)


def dsmi_of(e: EntropyInputs, o: EntropyOptions) -> dict:
    """Diffusion spectral mutual information of the sample and its labels (see :func:`dsmi`)."""
    if e.sample.shape[0] < 2:
        return {"dsmi": Unavailable(f"{e.sample.shape[0]} sampled rows; DSMI needs 2")}
    sizes = np.unique(e.sample_labels[e.sample_labels >= 0], return_counts=True)[1]
    if sizes.size:
        announce(f"DSMI: {(o.dsmi_repeats + 1) * sizes.size} kernels of up to {sizes.max()} rows",
                 lambda: (o.dsmi_repeats + 1) * sum(eigensolve_seconds(int(k)) or 0.0 for k in sizes) or None)
    return {"dsmi": dsmi(e.sample, e.sample_labels, sigma=o.sigma, t=o.t, repeats=o.dsmi_repeats, seed=o.seed)}


_SILENT = "every value is 0: no activation mass to spread over units"


def sae_of(e: EntropyInputs, o: EntropyOptions) -> dict:
    """SAE effective features and, given the encoded layer's width, the superposition ratio;
    unavailable when every value is 0 (no mass: p is 0/0)."""
    if not e.units.sum_abs.sum() > 0:
        return dict.fromkeys(("sae_effective_features", "superposition_ratio"), Unavailable(_SILENT))
    values = sae_effective_features(e.units, layer_width=e.layer_width)
    if "superposition_ratio" not in values:
        values["superposition_ratio"] = Unavailable("needs the width of the layer the SAE encodes (--layer-width)")
    return values


def activity_of(e: EntropyInputs, o: EntropyOptions) -> dict:
    """Dead and dormant fractions, firing entropy, effective units (see :func:`neuron_activity`);
    effective units unavailable when every value is 0 (q is 0/0)."""
    values = neuron_activity(e.units, tau=o.tau)
    if not e.units.sum_abs.sum() > 0:
        values["effective_units"] = Unavailable(_SILENT)
    return values


def attention_of(blocks, o: EntropyOptions) -> dict:
    """Attention entropy per head and per layer (see :func:`attention_entropy`)."""
    return attention_entropy(blocks, eps=o.eps, normalized=o.normalized)


_DSE_OUTPUTS = ("dse", "dse_median_distance", "dse_offdiag_mass", "dse_offdiag_fraction", "dse_rows")
_SKEAN = "Skean et al. 2025 (Layer by Layer)"
_LIAO = "Liao et al. 2023 (DSE/DSMI)"
_ENTROPY_REF = "tests/test_entropy.py::test_streamed_entropies_match_in_memory_references"
_NORMALISED = frozenset({"scale", "rotation"})  # rows are L2-normalised first
_UNIT_WISE = frozenset({"scale"})  # per-unit statistics: a rotation mixes units
_ANY = frozenset({"scale", "rotation", "shift"})
_DIAG = dict(direction="neither", diagnostic=True, source=_LIAO, exempt="describes the DSE kernel, not a score",
             compute=dse_of, needs=("sample",))

LAYER_METRICS = registry(
    "entropy",
    dict(name="dataset_entropy", formula="Rényi α-entropy of the eigenvalues of K/tr K, K the Gram of L2-normalised rows (token level: of sequence vectors)", compute=dataset_entropy_of, direction="neither", range=(0, math.inf),
         invariant=_NORMALISED, source=_SKEAN, test=_ENTROPY_REF),
    dict(name="prompt_entropy", formula="mean over sequences of the Rényi entropy of the Gram of its centred, L2-normalised rows", compute=prompt_entropy_of, needs=("offsets",), direction="neither",
         range=(0, math.inf), invariant=_NORMALISED, source=_SKEAN,
         test="tests/test_entropy.py::test_sequence_entropies_match_the_reference"),
    dict(name="dse", formula="−Σ p log₂ p, p ∝ |eig(D^{-1/2} G D^{-1/2})|^t + 2.22e-16, G_ij = exp(−‖x_i − x_j‖²/(2σ²))", compute=dse_of, needs=("sample",), direction="neither", range=(0, math.inf),
         invariant=frozenset({"rotation", "shift"}), source=_LIAO, test=_ENTROPY_REF),
    dict(name="dse_median_distance", formula="median pairwise distance of the sampled rows", range=(0, math.inf), invariant=frozenset({"rotation", "shift"}), **_DIAG),
    dict(name="dse_offdiag_mass", formula="mean off-diagonal entry of the DSE kernel K", range=(0, 1), invariant=frozenset({"rotation", "shift"}), **_DIAG),
    dict(name="dse_offdiag_fraction", formula="share of K's mass off the diagonal (near 0: K ≈ I, σ too small)", range=(0, 1), invariant=frozenset({"rotation", "shift"}), **_DIAG),
    dict(name="dse_rows", formula="rows the DSE kernel was built from", range=(0, math.inf), invariant=_ANY, **_DIAG),
    dict(name="dsmi", formula="Σ_c (n_c/N)[mean over R random size-n_c subsets of DSE − DSE(rows of class c)]", compute=dsmi_of, needs=("sample", "labels"), direction="higher", range=(-math.inf, math.inf),
         invariant=frozenset({"rotation", "shift"}), source=_LIAO, test=_ENTROPY_REF),
    dict(name="sae_effective_features", formula="exp(H(p)), p_i = mean|a_i| / Σ_j mean|a_j| (+1e-10, renormalised)", compute=sae_of, direction="neither", range=(1, math.inf),
         invariant=_UNIT_WISE, source="Bereska et al. 2025", test=_ENTROPY_REF),
    dict(name="superposition_ratio", formula="sae_effective_features / width of the encoded layer", compute=sae_of, needs=("layer_width",), direction="neither", range=(0, math.inf),
         invariant=_UNIT_WISE, source="Bereska et al. 2025", test="tests/test_entropy.py::test_sae_effective_features_closed_forms"),
    dict(name="dead_fraction", formula="fraction of units with no value > threshold over all rows", compute=activity_of, needs=("threshold",), ideal=0.0, range=(0, 1),
         invariant=_UNIT_WISE, source="Voita et al., ACL 2024", test=_ENTROPY_REF),
    dict(name="dormant_fraction", formula="fraction of units with mean|a_i| / mean_j mean|a_j| ≤ τ", compute=activity_of, ideal=0.0, range=(0, 1), invariant=_UNIT_WISE,
         source="Sokar et al., ICML 2023", test=_ENTROPY_REF),
    dict(name="firing_entropy", formula="mean over units of the binary entropy of P(a_i > threshold)", compute=activity_of, needs=("threshold",), direction="neither", range=(0, math.log(2)),
         invariant=_UNIT_WISE, source="binary entropy of firing rates", test=_ENTROPY_REF),
    dict(name="effective_units", formula="exp(H(q)), q_i = Σ|a_i| / Σ_j Σ|a_j|", compute=activity_of, direction="neither", range=(1, math.inf), invariant=_UNIT_WISE,
         source="exp of the entropy of |a| mass over units", test=_ENTROPY_REF),
)

ATTENTION_METRICS = registry(
    "entropy",
    dict(name="attention_entropy", formula="mean over sequences, heads and valid query rows of −Σ_j A_ij log A_ij", compute=attention_of, direction="neither", range=(0, math.inf),
         source="Zhai et al., ICML 2023", test="tests/test_entropy.py::test_attention_entropy_read_from_the_dump",
         invariant=frozenset()),
    dict(name="attention_entropy_per_head", formula="the same per head (a list in head order)", compute=attention_of, direction="neither", range=(0, math.inf),
         source="Zhai et al., ICML 2023", test="tests/test_entropy.py::test_attention_entropy_read_from_the_dump",
         invariant=frozenset()),
)

REGISTRY = LAYER_METRICS | ATTENTION_METRICS
