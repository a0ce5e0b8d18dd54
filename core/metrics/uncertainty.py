"""Uncertainty and nulls of a metric (docs/metrics.md, "Uncertainty and nulls"): the delete-a-group
jackknife interval from leave-one-group-out values, the permutation p-value from null values,
Benjamini–Hochberg q-values, and the difference from a baseline's value."""

from __future__ import annotations

import math

import numpy as np

LEVEL = 0.95  # of every interval


def inference_record(groups: int, ci_seed: int, permutations: int = 0, null_seed: int = 0,
                     shuffled: str = "labels") -> dict:
    """A document's ``inference``, the one record of how every command made its intervals and nulls:
    ``ci`` the delete-a-group jackknife of ``groups`` groups hashed with ``ci_seed``; ``null``
    ``permutations`` seeded shuffles (``null_seed``) of what ``shuffled`` names. None: not made."""
    ci = {"method": "delete-a-group jackknife", "groups": groups, "seed": ci_seed, "level": LEVEL} if groups else None
    method = "label permutation" if shuffled == "labels" else "row permutation"
    null = {"method": method, "permutations": permutations, "seed": null_seed} if permutations else None
    if null is not None and shuffled != "labels":
        null["shuffled"] = shuffled
    return {"ci": ci, "null": null}


def finite(value) -> bool:
    """A metric value that enters an interval or a null: a finite number (not a bool, a list, None)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def collect(values: dict[str, list[float]], reasons: dict[str, str], metrics: dict, unavailable: dict, where: str,
            otherwise: str = "its value is not finite") -> None:
    """Add one replicate's value (a jackknife group left out, a permutation) of each metric still in
    ``values`` from ``metrics``; a metric without a finite one there leaves ``values``, and
    ``reasons`` says why: "no value {where}: " + its reason in ``unavailable`` (else ``otherwise``)."""
    for name in list(values):
        value = metrics.get(name)
        if finite(value):
            values[name].append(float(value))
        else:
            reasons[name] = f"no value {where}: {unavailable.get(name, otherwise)}"
            del values[name]


def t_quantile(groups: int, level: float = LEVEL) -> float:
    """t_{G−1, (1+level)/2}: the interval's multiplier of the jackknife se with G groups."""
    from scipy import stats  # here, not at import: scipy.stats takes ~1 s to load and most runs have no interval

    return float(stats.t.ppf((1 + level) / 2, groups - 1))


def jackknife(value: float, replicates, level: float = LEVEL) -> dict:
    """The delete-a-group jackknife (Efron & Tibshirani 1993) of θ̂ = ``value`` from its G
    leave-one-group-out values θ₋g: se = √((G−1)/G · Σ_g (θ₋g − θ̄)²), θ̄ the mean of the θ₋g;
    the interval θ̂ ± t_{G−1,(1+level)/2} · se; the bias estimate (G−1)(θ̄ − θ̂).

    >>> r = jackknife(2.0, [1.0, 2.0, 3.0])
    >>> round(r["se"], 6), round(r["bias"], 6)
    (1.632993, 0.0)
    """
    theta = np.asarray(replicates, dtype=np.float64)
    groups = theta.size
    mean = float(theta.mean())
    se = math.sqrt((groups - 1) / groups * float(((theta - mean) ** 2).sum()))
    half = t_quantile(groups, level) * se
    return {"se": se, "ci_low": value - half, "ci_high": value + half, "bias": (groups - 1) * (mean - value)}


def permutation_test(value: float, null, direction: str) -> dict:
    """θ̂ against its values under K label permutations: ``null_mean``, ``null_sd`` (ddof 1),
    ``z`` = (θ̂ − null_mean)/null_sd (None when null_sd is 0), and ``p_value`` = (1 + #{θ_k at
    least as extreme as θ̂}) / (K + 1) (Phipson & Smyth 2010): θ_k ≥ θ̂ for a metric whose
    direction is "higher", θ_k ≤ θ̂ for "lower", |θ_k − null_mean| ≥ |θ̂ − null_mean| for "neither".

    >>> permutation_test(1.0, [0.1, 0.2, 0.3], "higher")["p_value"]
    0.25
    """
    theta = np.asarray(null, dtype=np.float64)
    mean = float(theta.mean())
    sd = float(theta.std(ddof=1)) if theta.size > 1 else 0.0
    if direction == "higher":
        extreme = theta >= value
    elif direction == "lower":
        extreme = theta <= value
    else:
        extreme = np.abs(theta - mean) >= abs(value - mean)
    return {"null_mean": mean, "null_sd": sd, "z": (value - mean) / sd if sd > 0 else None,
            "p_value": (1 + int(extreme.sum())) / (theta.size + 1), "permutations": int(theta.size)}


def bh_qvalues(p_values) -> np.ndarray:
    """Benjamini–Hochberg q-values of m p-values: q_(i) = min_{j ≥ i} p_(j) · m / j (sorted
    ascending), at most 1; the FDR of calling every p ≤ p_i is controlled at q_i.

    >>> bh_qvalues([0.01, 0.04, 0.03, 0.5]).tolist()
    [0.04, 0.0533..., 0.0533..., 0.5]
    """
    p = np.asarray(p_values, dtype=np.float64)
    m = p.size
    if m == 0:
        return p
    order = np.argsort(p, kind="stable")
    scaled = p[order] * m / np.arange(1, m + 1)
    q = np.minimum.accumulate(scaled[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(q, 1.0)
    return out


def baseline_difference(value: float, interval: dict | None, baseline: float, baseline_interval: dict | None,
                        groups: int | None, paired=None, level: float = LEVEL) -> dict:
    """θ̂ − θ̂_baseline and, with both jackknife intervals, the baseline's own (``baseline_se``,
    ``baseline_ci_low``, ``baseline_ci_high``) and the difference's: from ``paired`` (the G
    leave-one-group-out differences θ₋g − θ_baseline,₋g of two dumps of the same sampling units: the
    jackknife of the difference, ``difference_method`` "paired"), else from the independent-samples
    se √(se² + se_baseline²) ("independent"); the interval difference ± t_{G−1} · se and whether it
    excludes 0."""
    out = {"baseline": baseline, "difference": value - baseline}
    if interval is None or baseline_interval is None or groups is None:
        return out
    out |= {"baseline_se": baseline_interval["se"], "baseline_ci_low": baseline_interval["ci_low"],
            "baseline_ci_high": baseline_interval["ci_high"]}
    if paired is not None:
        se, method = jackknife(out["difference"], paired, level)["se"], "paired"
    else:
        se, method = math.hypot(interval["se"], baseline_interval["se"]), "independent"
    half = t_quantile(groups, level) * se
    low, high = out["difference"] - half, out["difference"] + half
    return out | {"difference_method": method, "difference_se": se, "difference_ci_low": low, "difference_ci_high": high,
                  "excludes_zero": bool(low > 0 or high < 0)}
