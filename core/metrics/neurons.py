"""Unit-level metrics (docs/metrics.md, "Units"): one pure function per per-unit score, and the layer
summaries (fractions of dead, dormant, selective, token-detector, positional units; VAE active
units and collapsed latents) in a registry. All float64; every score of every unit is a vector
of length D (NaN where a unit has no value, e.g. the kurtosis of a constant unit)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from actgeom.core.base.options import SCORES, NeuronsOptions  # noqa: F401 (re-exported)
from actgeom.core.base.registry import Unavailable, registry
from actgeom.core.metrics.uncertainty import bh_qvalues
from actgeom.core.metrics.unitstats import GroupSums, UnitMoments

TOP_TOKENS = 5  # k of token_concentration: a token detector puts its mass on a few token ids
TOP_CLASSES = 3  # classes listed per unit, by class-conditional mean
# A ranked unit fires on at least max(10, 0.1 % of the rows) rows by default: a unit seen on one row
# has the largest kurtosis possible (≈ N), selectivity 1 and token concentration 1 from that row alone.
MIN_SUPPORT_ROWS = 10
MIN_SUPPORT_SHARE = 0.001
_UNIT_TILE = 64  # units per argpartition of a V × D (or C × D) table: 64 × V int64 at a time

# -- per-unit scores ------------------------------------------------------------------------------

def moment_scores(moments: UnitMoments) -> dict[str, np.ndarray]:
    """mean, std = √(M₂/n), min, max, skewness g₁ = √n·M₃/M₂^{3/2} and excess kurtosis
    g₂ = n·M₄/M₂² − 3 of every unit, M_k = Σ(a − mean)^k (population estimators, as
    ``scipy.stats.skew`` / ``kurtosis`` with bias=True). Normal → 0, 0. Constant units: std 0,
    skewness and kurtosis NaN (0/0)."""
    n = moments.n
    m2 = np.where(moments.constant, 0.0, moments.m2)
    with np.errstate(divide="ignore", invalid="ignore"):
        skewness = np.where(m2 > 0, math.sqrt(n) * moments.m3 / m2**1.5, np.nan)
        kurtosis = np.where(m2 > 0, n * moments.m4 / m2**2 - 3.0, np.nan)
    return {"mean": moments.mean.copy(), "std": np.sqrt(moments.variance), "min": moments.min.copy(),
            "max": moments.max.copy(), "skewness": skewness, "kurtosis": kurtosis}


def firing_rates(n_active: np.ndarray, n_rows: int) -> np.ndarray:
    """P(a_u > threshold) over the rows; a unit is dead when its rate is 0 (Voita et al. 2024)."""
    return n_active / max(n_rows, 1)


def dormant_scores(sum_abs: np.ndarray, n_rows: int) -> np.ndarray:
    """s_u = mean|a_u| / mean_j mean|a_j| (Sokar et al. 2023, ReDo): 1 for a unit of average
    activity, 0 for a silent one; dormant when s_u ≤ τ. All units silent: 0."""
    mean_abs = sum_abs / max(n_rows, 1)
    average = mean_abs.mean() if mean_abs.size else 0.0
    return mean_abs / average if average > 0 else np.zeros_like(mean_abs)


def dead_units(firing_rate: np.ndarray) -> np.ndarray:
    """Dead: firing rate 0, never above the threshold on any row (Voita et al. 2024)."""
    return firing_rate == 0


def dormant_units(dormant_score: np.ndarray, tau: float) -> np.ndarray:
    """Dormant: s_u ≤ τ (:func:`dormant_scores`; Sokar et al. 2023, ReDo)."""
    return dormant_score <= tau


def dead_fraction(firing_rate: np.ndarray) -> float:
    """Share of :func:`dead_units`: the entropy family's dead_fraction, the neurons family's
    dead_unit_fraction."""
    return float(dead_units(firing_rate).mean())


def dormant_fraction(dormant_score: np.ndarray, tau: float) -> float:
    """Share of :func:`dormant_units`: the entropy family's dormant_fraction, the neurons family's
    dormant_unit_fraction."""
    return float(dormant_units(dormant_score, tau).mean())


def class_selectivity(means: np.ndarray) -> np.ndarray:
    """Selectivity index (Morcos et al. 2018): (μ_max − μ_rest)/(μ_max + μ_rest), μ_max the
    largest class-conditional mean of the unit, μ_rest the mean of the other classes' means.
    ``means`` (C, D), C ≥ 2 classes with rows, non-negative activations: the index is in [0, 1],
    0 for a unit equal on every class, 1 for one silent outside its class. NaN when every class
    mean is 0."""
    c = means.shape[0]
    top = means.max(axis=0)
    rest = (means.sum(axis=0) - top) / (c - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(top + rest > 0, (top - rest) / (top + rest), np.nan)


def unit_p_values(observed: np.ndarray, null: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-unit permutation p-values and Benjamini–Hochberg q-values of a score (larger: more
    extreme) from its values under K label permutations ``null`` (K, D): p_u = (1 + #{k: s_k,u ≥
    s_u}) / (K + 1) (Phipson & Smyth 2010; a NaN null value is not as extreme), q over the units
    with a score. NaN for a unit without one. The smallest p is 1/(K + 1): with D units, BH can call
    a unit at q only when K + 1 ≥ D/(q·j) for the j units it calls."""
    with np.errstate(invalid="ignore"):
        extreme = (null >= observed).sum(axis=0)
    scored = np.isfinite(observed)
    p = np.where(scored, (1.0 + extreme) / (null.shape[0] + 1), np.nan)
    q = np.full(p.shape, np.nan)
    q[scored] = bh_qvalues(p[scored])
    return p, q


def probeless_scores(means: np.ndarray) -> np.ndarray:
    """Probeless ranking score (Antverg & Belinkov 2022): Σ over class pairs c < c′ of
    |μ_{u,c} − μ_{u,c′}|, from the sorted means s_0 ≤ … ≤ s_{C−1}: Σ_j (2j − C + 1)·s_j
    (shifted by the smallest mean first: exact under offsets). ≥ 0; 0 for a unit equal on
    every class; scales with the unit."""
    s = np.sort(means, axis=0)
    s -= s[0]
    c = means.shape[0]
    return (2 * np.arange(c) - c + 1) @ s


def top_k(table: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per column (unit) of ``table`` (G, D): the row indices of its k′ = min(k, G) largest
    entries and their values, largest first → two (D, k′) arrays. Tiled over units, so the index
    array argpartition needs is tile × G, never G × D (G = 50 000 token ids at D = 512: 205 MB)."""
    g, d = table.shape
    k = min(k, g)
    ids, values = np.zeros((d, k), dtype=np.int64), np.zeros((d, k))
    for start in range(0, d, _UNIT_TILE):
        negated = -np.ascontiguousarray(table[:, start:start + _UNIT_TILE].T)  # (tile, G): contiguous rows
        part = np.argpartition(negated, k - 1, axis=1)[:, :k] if k < g else np.broadcast_to(np.arange(g), negated.shape)
        top = -np.take_along_axis(negated, part, axis=1)
        order = np.argsort(-top, axis=1, kind="stable")
        ids[start:start + _UNIT_TILE] = np.take_along_axis(part, order, axis=1)
        values[start:start + _UNIT_TILE] = np.take_along_axis(top, order, axis=1)
    return ids, values


def top_classes(means: np.ndarray, class_ids: np.ndarray, k: int = TOP_CLASSES) -> list[list[int]]:
    """Per unit, the ids of up to k classes of largest class-conditional mean, largest first, of
    those above the unit's lowest class mean: the classes it responds to more than to its least
    preferred one (a ReLU unit: the classes it fired on at all). None for a unit equal on every
    class. ``means`` (C, D), ``class_ids`` (C,)."""
    ids, values = top_k(means, k)
    responds = values > means.min(axis=0)[:, None]
    return [class_ids[row[keep]].tolist() for row, keep in zip(ids, responds)]


def default_min_support(n_rows: int) -> int:
    """Rows a ranked unit must fire on when --min-support is not given: max(10, ⌈0.1 % of N⌉)."""
    return max(MIN_SUPPORT_ROWS, math.ceil(MIN_SUPPORT_SHARE * n_rows))


def token_concentration(mass: np.ndarray, k: int = TOP_TOKENS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Token concentration (token / n-gram detectors, Voita et al. 2024): the share of
    Σ_rows max(a_u, 0) on the unit's k token ids of largest mass. ``mass`` (V, D): Σ max(a, 0)
    per token id and unit. → (share (D,) in [k/V, 1], NaN for a unit never positive; top ids
    (D, k′), −1 for a unit never positive; their shares (D, k′)), k′ = min(k, V), largest first."""
    ids, top = top_k(mass, k)
    total = mass.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        shares = np.where(total[:, None] > 0, top / total[:, None], np.nan)
    ids[total <= 0] = -1  # never positive: no top tokens
    return shares.sum(axis=1), ids, shares


def position_eta2(positions: GroupSums, m2: np.ndarray, constant: np.ndarray) -> np.ndarray:
    """Correlation ratio of each unit over positions (positional neurons, Voita et al. 2024):
    η² = Σ_p n_p (μ_p − μ)² / Σ_i (a_i − μ)², the share of the unit's variance explained by the
    token position (positions ≥ the pooling limit are one group). In [0, 1]; 1 for a unit that
    is a function of position; NaN for a constant unit. From per-unit-shifted sums S_p: μ_p − μ
    = S_p/n_p − ΣS/N (no offset left to cancel)."""
    counts = positions.counts[: positions.n_groups].astype(np.float64)
    sums = positions.sums[: positions.n_groups]
    present = counts > 0
    if not present.any():
        return np.full(m2.shape, np.nan)
    centred = sums[present] / counts[present, None] - sums.sum(axis=0) / counts.sum()
    between = counts[present] @ centred**2
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(constant | (m2 <= 0), np.nan, np.minimum(between / m2, 1.0))


def vae_kl(mu_mean: np.ndarray, mu_variance: np.ndarray, logvar_mean: np.ndarray,
           logvar_log_mean_exp: np.ndarray) -> np.ndarray:
    """Mean over rows of KL(N(μ_u, e^{ℓ_u}) ‖ N(0, 1)) = ½(μ_u² + e^{ℓ_u} − ℓ_u − 1) per latent u,
    from E[μ²] = mean² + Var, E[ℓ] and log E[e^ℓ]. ≥ 0; 0 for a latent whose posterior is the
    prior on every row (collapsed; Burda et al. 2016, "Be more active!")."""
    return 0.5 * (mu_mean**2 + mu_variance + np.exp(logvar_log_mean_exp) - logvar_mean - 1.0)


# -- the layer summaries --------------------------------------------------------------------------

@dataclass
class NeuronInputs:
    """One layer's per-unit scores ({name: (D,) array}; absent when unavailable) and facts."""

    scores: dict = field(default_factory=dict)
    reasons: dict = field(default_factory=dict)  # why a score is absent, by score name
    n_tokens: int = 0  # distinct token ids with rows


def dead_of(e: NeuronInputs, o: NeuronsOptions) -> dict:
    """:func:`dead_fraction` of the units."""
    return {"dead_unit_fraction": dead_fraction(e.scores["firing_rate"])}


def dormant_of(e: NeuronInputs, o: NeuronsOptions) -> dict:
    """:func:`dormant_fraction` of the units."""
    return {"dormant_unit_fraction": dormant_fraction(e.scores["dormant_score"], o.tau)}


def kurtosis_of(e: NeuronInputs, o: NeuronsOptions) -> dict:
    """Mean excess kurtosis over the non-constant units (heavy-tailed, outlier units raise it)."""
    k = e.scores["kurtosis"]
    finite = np.isfinite(k)
    return {"mean_excess_kurtosis": float(k[finite].mean()) if finite.any() else Unavailable("every unit is constant")}


def _fraction(e: NeuronInputs, name: str, o: NeuronsOptions) -> float:
    """Share of units whose score ≥ the cutoff (units without a value, NaN, do not count)."""
    with np.errstate(invalid="ignore"):
        return float((e.scores[name] >= o.cutoff).mean())


def selective_of(e: NeuronInputs, o: NeuronsOptions) -> dict:
    """Fraction of units with class_selectivity ≥ the cutoff."""
    if "class_selectivity" not in e.scores:
        return {"selective_unit_fraction": Unavailable(e.reasons["class_selectivity"])}
    return {"selective_unit_fraction": _fraction(e, "class_selectivity", o)}


def selective_fdr_of(e: NeuronInputs, o: NeuronsOptions) -> dict:
    """Fraction of units whose class selectivity is significant at false discovery rate ``fdr``:
    BH q-value of the unit's permutation p-value ≤ fdr (:func:`unit_p_values`; units without a
    selectivity do not count)."""
    if "q_value" not in e.scores:
        return {"selective_unit_fraction_fdr": Unavailable(e.reasons.get("q_value") or e.reasons["class_selectivity"])}
    with np.errstate(invalid="ignore"):
        return {"selective_unit_fraction_fdr": float((e.scores["q_value"] <= o.fdr).mean())}


def tokens_of(e: NeuronInputs, o: NeuronsOptions) -> dict:
    """Fraction of units with token_concentration ≥ the cutoff (token detectors)."""
    if e.n_tokens <= TOP_TOKENS:
        return {"token_detector_fraction": Unavailable(f"{e.n_tokens} distinct token ids: every unit has all its mass "
                                                       f"on its top {TOP_TOKENS}")}
    return {"token_detector_fraction": _fraction(e, "token_concentration", o)}


def positions_of(e: NeuronInputs, o: NeuronsOptions) -> dict:
    """Fraction of units with position_eta2 ≥ the cutoff (positional units)."""
    return {"positional_unit_fraction": _fraction(e, "position_eta2", o)}


def vae_active_of(e: NeuronInputs, o: NeuronsOptions) -> dict:
    """Active latents: Var_x(μ_u(x)) > δ (Burda et al. 2016), a count."""
    return {"vae_active_units": int(e.scores["vae_active"].sum())}


def vae_kl_of(e: NeuronInputs, o: NeuronsOptions) -> dict:
    """Fraction of collapsed latents (mean KL < collapsed_kl nats) and the total KL Σ_u KL_u
    (the KL term of the ELBO, averaged over rows)."""
    if "vae_kl" not in e.scores:
        reason = e.reasons["vae_kl"]
        return {"vae_collapsed_fraction": Unavailable(reason), "vae_kl_total": Unavailable(reason)}
    kl = e.scores["vae_kl"]
    return {"vae_collapsed_fraction": float((kl < o.collapsed_kl).mean()), "vae_kl_total": float(kl.sum())}


_TEST = "tests/test_neurons.py::test_streamed_scores_match_the_in_memory_reference"
_PLANTED = "tests/test_neurons.py::test_planted_units_are_found"
_SCALE = frozenset({"scale"})

REGISTRY = registry(
    "neurons",
    dict(name="dead_unit_fraction", formula="share of units with no row above the threshold (firing rate 0)", compute=dead_of,
         needs=("threshold",), ideal=0.0, range=(0, 1),
         invariant=_SCALE, source="Voita et al., ACL 2024", test=_PLANTED),
    dict(name="dormant_unit_fraction", formula="share of units with s_u ≤ τ, s_u = mean|a_u| / mean over units of mean|a_j|",
         compute=dormant_of, ideal=0.0, range=(0, 1), invariant=_SCALE,
         source="Sokar et al., ICML 2023", test=_TEST),
    dict(name="mean_excess_kurtosis",
         formula="mean over non-constant units of n·M₄/M₂² − 3, M_k = Σ(a_u − mean)^k (streamed central sums)",
         compute=kurtosis_of, direction="neither", range=(-2, math.inf),
         invariant=frozenset({"scale", "shift"}), source="Pébay 2008 (streamed central moments)", test=_TEST),
    dict(name="selective_unit_fraction",
         formula="share of units with (μ_max − μ_rest)/(μ_max + μ_rest) ≥ cutoff over class-conditional means "
                 "(non-negative layers)", compute=selective_of, needs=("labels",), direction="neither", range=(0, 1),
         invariant=_SCALE, source="Morcos et al., ICLR 2018", test=_PLANTED),
    dict(name="selective_unit_fraction_fdr",
         formula="share of units whose BH q-value of p_u = (1 + #{k: selectivity under permutation k ≥ observed})/(K + 1) "
                 "is ≤ fdr (--null K label permutations, --fdr)", compute=selective_fdr_of, needs=("labels",),
         direction="neither", range=(0, 1), invariant=_SCALE,
         source="Morcos et al., ICLR 2018; Phipson & Smyth 2010; Benjamini & Hochberg 1995",
         test="tests/test_nulls.py::test_planted_selective_units_are_found_at_the_fdr"),
    dict(name="token_detector_fraction", formula="share of units whose top-5 token ids hold ≥ cutoff of Σ max(a_u, 0)",
         compute=tokens_of, needs=("token_ids",), direction="neither", range=(0, 1),
         invariant=_SCALE, source="Voita et al., ACL 2024", test=_PLANTED),
    dict(name="positional_unit_fraction",
         formula="share of units with η² = Σ_p n_p(μ_p − μ)² / Σ_i (a_i − μ)² ≥ cutoff over token positions",
         compute=positions_of, needs=("positions",), direction="neither",
         range=(0, 1), invariant=frozenset({"scale", "shift"}), source="Voita et al., ACL 2024", test=_PLANTED),
    dict(name="vae_active_units", formula="number of latents with Var_x(μ_u(x)) > δ (population variance over rows)",
         compute=vae_active_of, needs=("vae_mu",), direction="higher", range=(0, math.inf),
         invariant=frozenset({"shift"}), source="Burda et al., ICLR 2016", test=_PLANTED),
    dict(name="vae_collapsed_fraction",
         formula="share of latents with mean over rows of ½(μ_u² + e^{ℓ_u} − ℓ_u − 1) < collapsed_kl nats", compute=vae_kl_of,
         needs=("vae_logvar",), ideal=0.0, range=(0, 1),
         source="Burda et al., ICLR 2016; Lucas et al. 2019", test=_PLANTED),
    dict(name="vae_kl_total", formula="Σ over latents of the mean over rows of ½(μ_u² + e^{ℓ_u} − ℓ_u − 1) (the ELBO's KL term)",
         compute=vae_kl_of, needs=("vae_logvar",), direction="neither", range=(0, math.inf),
         source="Kingma & Welling 2014 (the ELBO's KL term)", test=_PLANTED),
)
