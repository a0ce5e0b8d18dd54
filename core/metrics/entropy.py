"""Entropy and neuron-activity metrics (docs/metrics.md, "Entropy and neuron activity"): pure functions,
natural log unless noted; DSE and DSMI in core/metrics/diffusion.py, the token-level state in
core/state/accumulators/sequences.py."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from actgeom.core.base.options import EntropyOptions
from actgeom.core.base.registry import Unavailable, registry
from actgeom.core.base.row_stats import UnitStats
from actgeom.core.base.stages import announce, eigensolve_seconds
from actgeom.core.base.threads import blas_threads
from actgeom.core.metrics.diffusion import diffusion_spectral_entropy, diffusion_spectral_entropy_slq, dsmi
from actgeom.core.metrics.neurons import dead_fraction, dormant_fraction, dormant_scores, firing_rates
from actgeom.core.metrics.spectrum import without_rounding

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
    """Dead and dormant fractions (core/metrics/neurons.py: :func:`dead_fraction`, :func:`dormant_fraction`),
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
    if o.dse_method == "slq":
        announce(f"DSE: stochastic Lanczos quadrature on a {n}×{n} kernel", lambda: None)
        return diffusion_spectral_entropy_slq(e.sample, sigma=o.sigma, t=o.t, seed=o.seed)
    announce(f"DSE: eigenvalues of a {n}×{n} kernel", lambda: eigensolve_seconds(n))
    return diffusion_spectral_entropy(e.sample, sigma=o.sigma, t=o.t)  # no dse_error: nothing estimated


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


_DSE_OUTPUTS = ("dse", "dse_error", "dse_median_distance", "dse_offdiag_mass", "dse_offdiag_fraction", "dse_rows")
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
    dict(name="dataset_entropy",
         formula="Rényi α-entropy of the eigenvalues of K/tr K, K the Gram of L2-normalised rows "
                 "(token level: of sequence vectors)",
         compute=dataset_entropy_of, direction="neither", range=(0, math.inf), invariant=_NORMALISED, source=_SKEAN,
         test=_ENTROPY_REF),
    dict(name="prompt_entropy", formula="mean over sequences of the Rényi entropy of the Gram of its centred, L2-normalised rows",
         compute=prompt_entropy_of, needs=("offsets",), direction="neither",
         range=(0, math.inf), invariant=_NORMALISED, source=_SKEAN,
         test="tests/test_entropy.py::test_sequence_entropies_match_the_reference"),
    dict(name="dse", formula="−Σ p log₂ p, p ∝ |eig(D^{-1/2} G D^{-1/2})|^t + 2.22e-16, G_ij = exp(−‖x_i − x_j‖²/(2σ²))",
         compute=dse_of, needs=("sample",), direction="neither", range=(0, math.inf),
         invariant=frozenset({"rotation", "shift"}), source=_LIAO, test=_ENTROPY_REF),
    dict(name="dse_error", formula="--dse-method slq: half-width of a 95 % interval for DSE's error (probes' jackknife "
         "se × t quantile + the change from 16 to 24 quadrature nodes)", range=(0, math.inf),
         invariant=frozenset({"rotation", "shift"}), **_DIAG),
    dict(name="dse_median_distance", formula="median pairwise distance of the sampled rows", range=(0, math.inf),
         invariant=frozenset({"rotation", "shift"}), **_DIAG),
    dict(name="dse_offdiag_mass", formula="mean off-diagonal entry of the DSE kernel K", range=(0, 1),
         invariant=frozenset({"rotation", "shift"}), **_DIAG),
    dict(name="dse_offdiag_fraction", formula="share of K's mass off the diagonal (near 0: K ≈ I, σ too small)", range=(0, 1),
         invariant=frozenset({"rotation", "shift"}), **_DIAG),
    dict(name="dse_rows", formula="rows the DSE kernel was built from", range=(0, math.inf), invariant=_ANY, **_DIAG),
    dict(name="dsmi", formula="Σ_c (n_c/N)[mean over R random size-n_c subsets of DSE − DSE(rows of class c)]", compute=dsmi_of,
         needs=("sample", "labels"), direction="higher", range=(-math.inf, math.inf),
         invariant=frozenset({"rotation", "shift"}), source=_LIAO, test=_ENTROPY_REF),
    dict(name="sae_effective_features", formula="exp(H(p)), p_i = mean|a_i| / Σ_j mean|a_j| (+1e-10, renormalised)",
         compute=sae_of, direction="neither", range=(1, math.inf),
         invariant=_UNIT_WISE, source="Bereska et al. 2025", test=_ENTROPY_REF),
    dict(name="superposition_ratio", formula="sae_effective_features / width of the encoded layer", compute=sae_of,
         needs=("layer_width",), direction="neither", range=(0, math.inf),
         invariant=_UNIT_WISE, source="Bereska et al. 2025",
         test="tests/test_entropy.py::test_sae_effective_features_closed_forms"),
    dict(name="dead_fraction", formula="fraction of units with no value > threshold over all rows", compute=activity_of,
         needs=("threshold",), ideal=0.0, range=(0, 1),
         invariant=_UNIT_WISE, source="Voita et al., ACL 2024", test=_ENTROPY_REF),
    dict(name="dormant_fraction", formula="fraction of units with mean|a_i| / mean_j mean|a_j| ≤ τ", compute=activity_of,
         ideal=0.0, range=(0, 1), invariant=_UNIT_WISE,
         source="Sokar et al., ICML 2023", test=_ENTROPY_REF),
    dict(name="firing_entropy", formula="mean over units of the binary entropy of P(a_i > threshold)", compute=activity_of,
         needs=("threshold",), direction="neither", range=(0, math.log(2)),
         invariant=_UNIT_WISE, source="binary entropy of firing rates", test=_ENTROPY_REF),
    dict(name="effective_units", formula="exp(H(q)), q_i = Σ|a_i| / Σ_j Σ|a_j|", compute=activity_of, direction="neither",
         range=(1, math.inf), invariant=_UNIT_WISE,
         source="exp of the entropy of |a| mass over units", test=_ENTROPY_REF),
)

ATTENTION_METRICS = registry(
    "entropy",
    dict(name="attention_entropy", formula="mean over sequences, heads and valid query rows of −Σ_j A_ij log A_ij",
         compute=attention_of, direction="neither", range=(0, math.inf),
         source="Zhai et al., ICML 2023", test="tests/test_entropy.py::test_attention_entropy_read_from_the_dump",
         invariant=frozenset()),
    dict(name="attention_entropy_per_head", formula="the same per head (a list in head order)", compute=attention_of,
         direction="neither", range=(0, math.inf),
         source="Zhai et al., ICML 2023", test="tests/test_entropy.py::test_attention_entropy_read_from_the_dump",
         invariant=frozenset()),
)

REGISTRY = LAYER_METRICS | ATTENTION_METRICS
