"""Neural-collapse metrics (docs/metrics.md, "Neural collapse"): pure functions of finalised class statistics.

Every metric takes a :class:`Geometry` (core/metrics/collapse_geometry.py: the kept classes' counts, means, within-class
covariance, variances, and the classifier restricted to them) and returns named floats. The
REGISTRY lists every metric with what it needs; adding a metric is one function and one entry.
Nothing here reads files or loops over rows.
"""

from __future__ import annotations

import math

import numpy as np

from actgeom.core.base.options import COLLAPSE_PRESETS as PRESETS
from actgeom.core.base.options import GLOBAL_MEANS, NC1_INVERSES, NC4_DECISIONS, CollapseOptions  # noqa: F401 (re-exported)
from actgeom.core.base.presets import resolve
from actgeom.core.base.registry import INVARIANCES, Unavailable, registry
from actgeom.core.base.threads import blas_threads
from actgeom.core.metrics.collapse_geometry import (  # noqa: F401 (Geometry, geometry, kept_classes re-exported)
    Geometry,
    eig_between,
    eig_of_gram,
    etf_error,
    frame_error,
    geometry,
    kept_classes,
    pinv_rank,
    row_norms,
    std_over_mean,
    trace_against_regular_inverse,
    unavailable_all,
    variance,
    weighted_between,
    why_no_spread,
    why_no_within,
)
from actgeom.core.metrics.collapse_null import LowRankScatter, dense, trace, trace_against, trace_ratio


def resolve_options(preset: str | None = None, **given) -> CollapseOptions:
    """Defaults, then the preset's conventions, then every option given explicitly (not None)."""
    return resolve(CollapseOptions, PRESETS, preset, given)


# -- the metrics ----------------------------------------------------------------------------

def nc1(g: Geometry, o: CollapseOptions) -> dict:
    """NC1 = Tr(Σ_W Σ_B⁺)/C (Papyan et al. 2020), Σ_B = (1/C) Σ_c m_c m_cᵀ. Ideal 0.

    ``topk``: Σ_B⁺ from the top k = min(C−1, D) positive eigenpairs (the Papyan notebook);
    ``pinv``: every eigenvalue above D·eps·λ_max. Without /C under ``divide_by_c=False``.
    Unavailable (with nc1_rank_used) when every class has one row (Σ_W undefined) or the class
    means coincide (Σ_B = 0); 0 when every class is one point (Σ_W = 0: perfect collapse).
    """
    why = why_no_within(g) or why_no_spread(g)
    if why:
        return unavailable_all(("nc1", "nc1_rank_used"), why)
    if g.n_classes > g.n_units and not isinstance(g.sigma_w, LowRankScatter):  # Σ_B may be regular: no eigensolve
        value = trace_against_regular_inverse(g.sigma_w, g.centred_gram / g.n_classes, g.n_classes)
        if value is not None:  # every eigenpair kept, by either convention
            return {"nc1": value / g.n_classes if o.divide_by_c else value, "nc1_rank_used": g.n_units}
    lam, vectors = eig_between(g)
    if o.nc1_inverse == "topk":
        k = min(g.n_classes - 1, g.n_units, int((lam > 0).sum()))
    else:
        k = pinv_rank(lam, max(g.n_units, g.n_classes))
    value = trace_against(g.sigma_w, lam, vectors, k)
    return {"nc1": value / g.n_classes if o.divide_by_c else value, "nc1_rank_used": k}


def nc1_quotient(g: Geometry, o: CollapseOptions) -> dict:
    """Tr Σ_W / Tr Σ_B (Tirer et al. 2023). Ideal 0; scale-invariant. Unavailable as NC1 is."""
    why = why_no_within(g) or why_no_spread(g)
    if why:
        return {"nc1_quotient": Unavailable(why)}
    trace_b = float(np.einsum("ij,ij->", g.centred, g.centred)) / g.n_classes
    return {"nc1_quotient": trace(g.sigma_w) / trace_b if trace_b else float("nan")}


def vci(g: Geometry, o: CollapseOptions) -> dict:
    """Variability collapse index 1 − Tr(Σ_T⁺ Σ_B)/rank(Σ_B), Σ_T = Σ_W + Σ_B, rank = min(D, C−1)
    (Xu & Liu, ICML 2023). In [0, 1], ideal 0, invariant under invertible affine maps.
    Unavailable when Σ_T = 0 (all rows identical: 0/0) or every class has one row (Σ_W
    undefined); 1 when the class means coincide but the rows vary (no class information)."""
    why = why_no_within(g) or (why_no_spread(g) if not g.sigma_w.any() else None)
    if why:
        return {"vci": Unavailable(why)}
    m = g.centred
    if isinstance(g.sigma_w, LowRankScatter):  # under a label permutation: Woodbury when no eigenvalue is cut
        forms = g.sigma_w.inverse_forms(m, float(np.einsum("ij,ij->", m, m)) / g.n_classes)
        if forms is not None:
            return {"vci": _vci(trace_ratio(forms / g.n_classes), g)}
    sigma_b = g.centred_gram / g.n_classes
    sigma_t = dense(g.sigma_w) + sigma_b
    explained = trace_against_regular_inverse(sigma_b, sigma_t, g.n_units)
    if explained is not None:
        return {"vci": _vci(explained, g)}
    with blas_threads(sigma_t.shape[0]):
        lam, vectors = np.linalg.eigh(sigma_t)
    lam, vectors = lam[::-1], vectors[:, ::-1]
    k = pinv_rank(lam, g.n_units)
    projected = m @ vectors[:, :k]  # Tr(Σ_T⁺ Σ_B) = (1/C) Σ_c m_cᵀ Σ_T⁺ m_c
    return {"vci": _vci(float((projected**2 / lam[:k]).sum()) / g.n_classes, g)}


def _vci(explained: float, g: Geometry) -> float:
    """1 − Tr(Σ_T⁺ Σ_B)/rank(Σ_B) from the trace (``explained``)."""
    rank_b = min(g.n_units, g.n_classes - 1)
    return 1.0 - explained / rank_b if rank_b > 0 else float("nan")


def separation_fuzziness(g: Geometry, o: CollapseOptions) -> dict:
    """Tr(SS_W SS_B⁺) (He & Su, PNAS 2023), SS_B = (1/N) Σ_c n_c (μ_c − x̄)(μ_c − x̄)ᵀ, x̄ the
    sample mean, SS_W = Σ_W. Ideal 0; falls geometrically with depth in trained networks.
    Unavailable as NC1 is."""
    why = why_no_within(g) or why_no_spread(g)
    if why:
        return {"separation_fuzziness": Unavailable(why)}
    weights = np.sqrt(g.counts / g.counts.sum())
    if g.n_classes > g.n_units and not isinstance(g.sigma_w, LowRankScatter):  # SS_B may be regular: no eigensolve
        value = trace_against_regular_inverse(g.sigma_w, weighted_between(g, weights), g.n_classes)
        if value is not None:
            return {"separation_fuzziness": value}
    lam, vectors = eig_of_gram(weights[:, None] * (g.means - g.sample_mean))
    k = pinv_rank(lam, max(g.n_units, g.n_classes))
    return {"separation_fuzziness": trace_against(g.sigma_w, lam, vectors, k)}


def nc2_means(g: Geometry, o: CollapseOptions) -> dict:
    """NC2 on the centred means (Papyan Figs. 2–4; Zhu et al.; Linguistic Collapse):
    equinorm std/mean of ‖m_c‖ (ddof=1) and var(log‖m_c‖) (ddof=1); equiangular = population
    std over pairs of cos(m_c, m_c'); max-angle = mean |cos + 1/(C−1)|; ETF error; GNC2
    (mean and population variance over pairs of log 1/‖p_c − p_c'‖). All ideal 0 but the
    GNC2 mean.

    Unavailable when the class means coincide (every m_c = 0); the log-variance, the angles and
    GNC2 also when one m_c is 0 (no direction); GNC2 when two mean directions coincide (log 1/0)."""
    m, pairs = g.centred, g.pairs_means
    why = why_no_spread(g)
    if why:
        return unavailable_all(_NC2_MEANS, why) | {"gnc2_coincident_pairs": pairs.n_coincident_directions}
    norms = row_norms(m)
    gram_fro = float(np.linalg.norm(g.centred_gram))
    total = m.sum(axis=0)
    values = {"nc2_equinorm_means": std_over_mean(norms),
              "nc2_etf_error_means": etf_error(float(norms @ norms), float(total @ total), gram_fro, g.n_classes),
              "gnc2_coincident_pairs": pairs.n_coincident_directions}
    at_centre = g.classes[norms == 0]
    if at_centre.size:
        why = f"class {at_centre[0]}'s mean is the global mean (m_c = 0): it has no norm to log, no direction"
        return values | unavailable_all(("nc2_equinorm_logvar_means", "nc2_equiangular_means", "nc2_maxangle_means",
                                      "gnc2_log_mean", "gnc2_log_var"), why)
    values |= {"nc2_equinorm_logvar_means": variance(np.log(norms), 1),
               "nc2_equiangular_means": math.sqrt(pairs.cos.variance()), "nc2_maxangle_means": pairs.abs_cos_plus}
    if pairs.n_coincident_directions:
        why = (f"{pairs.n_coincident_directions} class pair(s) have the same mean direction: "
               "log 1/‖p_c − p_c′‖ is infinite")
        return values | unavailable_all(("gnc2_log_mean", "gnc2_log_var"), why)
    return values | {"gnc2_log_mean": pairs.log_inv_dist.mean, "gnc2_log_var": pairs.log_inv_dist.variance()}


_NC2_MEANS = ("nc2_equinorm_means", "nc2_equinorm_logvar_means", "nc2_equiangular_means", "nc2_maxangle_means",
              "nc2_etf_error_means", "gnc2_log_mean", "gnc2_log_var")


def cdnv(g: Geometry, o: CollapseOptions) -> dict:
    """Class-distance normalised variance (Galanti et al. 2022): mean over pairs of
    (v_c + v_c')/(2‖μ_c − μ_c'‖²); cdnv_lc divides by ‖Δμ‖⁴ (Linguistic Collapse code).
    Ideal 0. Unavailable when two class means coincide (division by 0; the pairs are counted)
    or every class has one row (v_c undefined)."""
    pairs = g.pairs_means
    values = {"cdnv_coincident_pairs": pairs.n_coincident_means}
    why = why_no_within(g)
    if pairs.n_coincident_means:
        why = why or (f"{pairs.n_coincident_means} of {pairs.n_pairs} class pairs have coincident means: "
                      "CDNV divides by ‖μ_c − μ_c′‖² = 0")
    if why:
        return values | unavailable_all(("cdnv", "cdnv_lc"), why)
    return values | {"cdnv": pairs.cdnv, "cdnv_lc": pairs.cdnv_lc}


def nc2_weights(g: Geometry, o: CollapseOptions) -> dict:
    """NC2 on the classifier rows w_c (not centred): equinorm, equiangular, max-angle, ETF.
    Unavailable when every w_c is 0; the angles also when one w_c is 0 (no direction)."""
    w = g.weight
    if not w.any():
        return unavailable_all(_NC2_WEIGHTS, "every classifier row is 0")
    norms = row_norms(w)
    total = w.sum(axis=0)
    values = {"nc2_equinorm_weights": std_over_mean(norms),
              "nc2_etf_error_weights": etf_error(float(norms @ norms), float(total @ total),
                                                  float(np.linalg.norm(w.T @ w)), g.n_classes)}
    if not norms.all():
        why = f"class {g.classes[norms == 0][0]}'s classifier row is 0: it has no direction"
        return values | unavailable_all(("nc2_equiangular_weights", "nc2_maxangle_weights"), why)
    pairs = g.pairs_weights
    return values | {"nc2_equiangular_weights": math.sqrt(pairs.cos.variance()), "nc2_maxangle_weights": pairs.abs_cos_plus}


_NC2_WEIGHTS = ("nc2_equinorm_weights", "nc2_equiangular_weights", "nc2_maxangle_weights", "nc2_etf_error_weights")


def nc3(g: Geometry, o: CollapseOptions) -> dict:
    """Self-duality ‖W/‖W‖_F − M̃/‖M̃‖_F‖_F² in [0, 4] (Papyan Fig. 5); ETF error of W M̃ᵀ
    (Zhu et al.); uniform duality: mean and var (ddof=1) over classes of cos(w_c, m_c), and
    var of the dot products w_c·m_c (Linguistic Collapse). Ideal 0 (cos → 1). Unavailable when
    the class means coincide (M̃ = 0); the cosines also when one w_c or m_c is 0."""
    w, m = g.weight, g.centred
    why = why_no_spread(g) or (None if w.any() else "every classifier row is 0")
    if why:
        return unavailable_all(("nc3_self_duality", "nc3_wh_etf_error", "unc3_cos_mean", "unc3_cos_var", "unc3_dot_var"), why)
    dots = np.einsum("ij,ij->i", w, m)
    wm_fro = math.sqrt(max(float(np.einsum("ij,ji->", w.T @ w, m.T @ m)), 0.0))  # ‖W M̃ᵀ‖_F
    values = {"nc3_self_duality": float(((w / np.linalg.norm(w) - m / np.linalg.norm(m)) ** 2).sum()),
              "nc3_wh_etf_error": etf_error(float(dots.sum()), float(w.sum(axis=0) @ m.sum(axis=0)), wm_fro, g.n_classes),
              "unc3_dot_var": variance(dots, 1)}
    lengths = row_norms(w) * row_norms(m)
    if not lengths.all():
        why = f"class {g.classes[lengths == 0][0]}'s classifier row or centred mean is 0: its cosine is undefined"
        return values | unavailable_all(("unc3_cos_mean", "unc3_cos_var"), why)
    cosines = dots / lengths
    return values | {"unc3_cos_mean": float(cosines.mean()), "unc3_cos_var": variance(cosines, 1)}


def bias_collapse(g: Geometry, o: CollapseOptions) -> dict:
    """‖W μ_G + b‖ (Zhu et al., whose code calls it NC4). Ideal 0."""
    return {"bias_collapse": float(np.linalg.norm(g.weight @ g.global_mean + g.bias))}


def _orthogonal_frame(rows: np.ndarray, suffix: str, gram: np.ndarray | None = None) -> dict:
    """``gram``: rowsᵀrows when already known."""
    sq = np.einsum("ij,ij->i", rows, rows)
    fro = float(np.linalg.norm(rows.T @ rows if gram is None else gram))  # ‖G‖_F without the C×C matrix
    if fro == 0:
        why = f"every {'class mean' if suffix == 'means' else 'classifier row'} is 0: G = 0 has no shape"
        return unavailable_all((f"of_error_{suffix}", f"gof_offdiag_ratio_{suffix}"), why)
    offdiag = math.sqrt(max(fro**2 - float(sq @ sq), 0.0))
    return {f"of_error_{suffix}": frame_error(float(sq.sum()), fro, rows.shape[0]),
            f"gof_offdiag_ratio_{suffix}": offdiag / fro}


def orthogonal_frame_means(g: Geometry, o: CollapseOptions) -> dict:
    """Bias-free geometry (Dang et al. 2023) of the uncentred means, G = M Mᵀ:
    ‖G/‖G‖_F − I/√C‖_F and ‖offdiag G‖_F/‖G‖_F (0 for any orthogonal frame). Ideal 0."""
    m, mu = g.centred, g.global_mean  # MᵀM = M̃ᵀM̃ + s μᵀ + μ sᵀ + C μμᵀ, s = Σ_c m_c: no second C·D² product
    cross = np.outer(m.sum(axis=0), mu)
    return _orthogonal_frame(g.means, "means", g.centred_gram + cross + cross.T + g.n_classes * np.outer(mu, mu))


def orthogonal_frame_weights(g: Geometry, o: CollapseOptions) -> dict:
    """The same for the classifier, G = W Wᵀ."""
    return _orthogonal_frame(g.weight, "weights")


def nc4_mismatch(g: Geometry, o: CollapseOptions) -> dict:
    """Fraction of rows whose network decision differs from the nearest class mean
    argmin_c ‖x − μ_c‖ over the kept classes (Papyan et al. 2020, Fig. 7). Ideal 0, in [0, 1].
    Computed in the second pass (it needs the final means); here only read back."""
    return {"nc4_mismatch": g.nc4}


_PAPYAN = "Papyan, Han & Donoho, PNAS 2020"
_ZHU = "Zhu et al., NeurIPS 2021"
_LC = "Wu & Papyan, NeurIPS 2024 (Linguistic Collapse)"
_DANG = "Dang et al., ICML 2023"
_REF = "tests/test_collapse.py::test_every_metric_matches_the_reference"
_ALL = frozenset(INVARIANCES) - {"affine"}  # scale, rotation, shift of the rows (W rotated with them)
_GEOMETRIC = frozenset({"rotation", "shift"})  # carries units: not scale-invariant
_W = ("labels", "weight")


def _diag(name, formula, compute, source, needs=("labels",)):
    return dict(name=name, formula=formula, compute=compute, needs=needs, direction="neither", range=(0, math.inf), source=source,
                diagnostic=True, exempt="a count describing how another metric was computed")


REGISTRY = registry(
    "collapse",
    dict(name="nc1", formula="Tr(Σ_W Σ_B⁺)/C, Σ_B⁺ from the top min(C−1, D) eigenpairs (--nc1-inverse topk) or a pseudo-inverse",
         compute=nc1, needs=("labels",), ideal=0.0, range=(0, math.inf), invariant=_ALL, source=_PAPYAN,
         test=_REF, log_scale=True),
    _diag("nc1_rank_used", "number of eigenpairs of Σ_B kept in Σ_B⁺", nc1, _PAPYAN),
    dict(name="nc1_quotient", formula="Tr Σ_W / Tr Σ_B", compute=nc1_quotient, needs=("labels",), ideal=0.0, range=(0, math.inf),
         invariant=_ALL,
         source="Tirer, Huang & Niles-Weed, ICML 2023", test=_REF, log_scale=True),
    dict(name="cdnv", formula="mean over class pairs of (v_c + v_c′) / (2‖μ_c − μ_c′‖²), v_c = E_{x∈c}‖x − μ_c‖²", compute=cdnv,
         needs=("labels",), ideal=0.0, range=(0, math.inf), invariant=_ALL,
         source="Galanti et al., ICLR 2022", test=_REF, log_scale=True),
    dict(name="cdnv_lc", formula="mean over class pairs of (v_c + v_c′) / (2‖μ_c − μ_c′‖⁴)", compute=cdnv, needs=("labels",),
         ideal=0.0, range=(0, math.inf), invariant=_GEOMETRIC,
         source=_LC, test=_REF, log_scale=True),
    _diag("cdnv_coincident_pairs", "class pairs with coincident means (CDNV divides by 0: unavailable)", cdnv,
          "Galanti et al., ICLR 2022"),
    dict(name="vci", formula="1 − Tr(Σ_T⁺ Σ_B) / min(D, C−1), Σ_T = Σ_W + Σ_B", compute=vci, needs=("labels",), ideal=0.0,
         range=(0, 1), invariant=frozenset(INVARIANCES),
         source="Xu & Liu, ICML 2023", test=_REF),
    dict(name="separation_fuzziness", formula="Tr(SS_W SS_B⁺), SS_B = (1/N) Σ_c n_c (μ_c − x̄)(μ_c − x̄)ᵀ",
         compute=separation_fuzziness, needs=("labels",), ideal=0.0, range=(0, math.inf),
         invariant=_ALL, source="He & Su, PNAS 2023", test=_REF, log_scale=True),
    dict(name="nc2_equinorm_means", formula="std(‖m_c‖) / mean(‖m_c‖), ddof 1, m_c = μ_c − μ_G", compute=nc2_means,
         needs=("labels",), ideal=0.0, range=(0, math.inf),
         invariant=_ALL, source=_PAPYAN, test=_REF),
    dict(name="nc2_equinorm_logvar_means", formula="var(log ‖m_c‖), ddof 1", compute=nc2_means, needs=("labels",), ideal=0.0,
         range=(0, math.inf),
         invariant=_ALL, source=_LC, test=_REF),
    dict(name="nc2_equiangular_means", formula="std over class pairs of cos(m_c, m_c′) (population)", compute=nc2_means,
         needs=("labels",), ideal=0.0, range=(0, 1), invariant=_ALL,
         source=_PAPYAN, test=_REF),
    dict(name="nc2_maxangle_means", formula="mean over class pairs of |cos(m_c, m_c′) + 1/(C−1)|", compute=nc2_means,
         needs=("labels",), ideal=0.0, range=(0, 2), invariant=_ALL,
         source=_PAPYAN, test=_REF),
    dict(name="nc2_etf_error_means", formula="‖M̃M̃ᵀ/‖M̃M̃ᵀ‖_F − (I − 11ᵀ/C)/√(C−1)‖_F", compute=nc2_means, needs=("labels",),
         ideal=0.0, range=(0, 2), invariant=_ALL,
         source=_ZHU, test=_REF),
    dict(name="gnc2_log_mean", formula="mean over class pairs of log 1/‖p_c − p_c′‖, p_c = m_c/‖m_c‖", compute=nc2_means,
         needs=("labels",), direction="neither", invariant=_ALL,
         source=_LC, test=_REF),
    dict(name="gnc2_log_var", formula="population variance over class pairs of log 1/‖p_c − p_c′‖", compute=nc2_means,
         needs=("labels",), ideal=0.0, range=(0, math.inf), invariant=_ALL,
         source=_LC, test=_REF),
    _diag("gnc2_coincident_pairs", "class pairs with coincident mean directions (GNC2 is then unavailable)", nc2_means, _LC),
    dict(name="nc2_equinorm_weights", formula="std(‖w_c‖) / mean(‖w_c‖), ddof 1", compute=nc2_weights, needs=_W, ideal=0.0,
         range=(0, math.inf), invariant=_ALL,
         source=_PAPYAN, test=_REF),
    dict(name="nc2_equiangular_weights", formula="std over class pairs of cos(w_c, w_c′)", compute=nc2_weights, needs=_W,
         ideal=0.0, range=(0, 1), invariant=_ALL,
         source=_PAPYAN, test=_REF),
    dict(name="nc2_maxangle_weights", formula="mean over class pairs of |cos(w_c, w_c′) + 1/(C−1)|", compute=nc2_weights,
         needs=_W, ideal=0.0, range=(0, 2), invariant=_ALL,
         source=_PAPYAN, test=_REF),
    dict(name="nc2_etf_error_weights", formula="‖WWᵀ/‖WWᵀ‖_F − (I − 11ᵀ/C)/√(C−1)‖_F", compute=nc2_weights, needs=_W, ideal=0.0,
         range=(0, 2), invariant=_ALL,
         source=_ZHU, test=_REF),
    dict(name="nc3_self_duality", formula="‖W/‖W‖_F − M̃/‖M̃‖_F‖_F²", compute=nc3, needs=_W, ideal=0.0, range=(0, 4),
         invariant=_ALL, source=_PAPYAN,
         test=_REF),
    dict(name="nc3_wh_etf_error", formula="ETF error of W M̃ᵀ", compute=nc3, needs=_W, ideal=0.0, range=(0, 2), invariant=_ALL,
         source=_ZHU,
         test=_REF),
    dict(name="unc3_cos_mean", formula="mean over classes of cos(w_c, m_c)", compute=nc3, needs=_W, ideal=1.0, range=(-1, 1),
         direction="higher", invariant=_ALL,
         source=_LC, test=_REF),
    dict(name="unc3_cos_var", formula="variance (ddof 1) over classes of cos(w_c, m_c)", compute=nc3, needs=_W, ideal=0.0,
         range=(0, math.inf), invariant=_ALL, source=_LC,
         test=_REF),
    dict(name="unc3_dot_var", formula="variance (ddof 1) over classes of w_c·m_c", compute=nc3, needs=_W, ideal=0.0,
         range=(0, math.inf), invariant=_GEOMETRIC,
         source=_LC, test=_REF),
    dict(name="bias_collapse", formula="‖W μ_G + b‖", compute=bias_collapse, needs=_W + ("bias",), ideal=0.0, range=(0, math.inf),
         invariant=frozenset({"rotation"}), source=_ZHU, test=_REF),
    dict(name="of_error_means", formula="‖G/‖G‖_F − I/√C‖_F, G = MMᵀ of the uncentred means", compute=orthogonal_frame_means,
         needs=("labels",), ideal=0.0, range=(0, math.sqrt(2)),
         invariant=frozenset({"scale", "rotation"}), source=_DANG, test=_REF),
    dict(name="gof_offdiag_ratio_means", formula="‖offdiag(G)‖_F / ‖G‖_F, G = MMᵀ", compute=orthogonal_frame_means,
         needs=("labels",), ideal=0.0, range=(0, 1),
         invariant=frozenset({"scale", "rotation"}), source=_DANG, test=_REF),
    dict(name="of_error_weights", formula="‖G/‖G‖_F − I/√C‖_F, G = WWᵀ", compute=orthogonal_frame_weights, needs=_W, ideal=0.0,
         range=(0, math.sqrt(2)),
         invariant=frozenset({"scale", "rotation", "shift"}), source=_DANG, test=_REF),
    dict(name="gof_offdiag_ratio_weights", formula="‖offdiag(G)‖_F / ‖G‖_F, G = WWᵀ", compute=orthogonal_frame_weights, needs=_W,
         ideal=0.0, range=(0, 1),
         invariant=frozenset({"scale", "rotation", "shift"}), source=_DANG, test=_REF),
    dict(name="nc4_mismatch", formula="fraction of rows where the network's decision ≠ argmin_c ‖x − μ_c‖", compute=nc4_mismatch,
         needs=("labels", "decision"), ideal=0.0, range=(0, 1),
         invariant=_ALL, source=_PAPYAN, test=_REF, log_scale=True),  # 0.88 → 0.012 over training on sample_data
)

UNAVAILABLE = {
    "weight": "no classifier weight in the dump (name one with --weight)",
    "bias": "no classifier bias in the dump (name one with --bias)",
    "decision": "no predictions (--predictions) and no classifier for this layer (--weight)",
}


def per_class(g: Geometry) -> list[dict]:
    """n_c, ‖m_c‖, ‖w_c‖ and v_c of every kept class (for imbalance / minority collapse)."""
    norms = row_norms(g.centred)
    w_norms = None if g.weight is None else row_norms(g.weight)
    return [{"class": int(c), "n": int(n), "mean_norm": float(r), "weight_norm": None if w_norms is None else float(w_norms[i]),
             "variance": float(v)} for i, (c, n, r, v) in enumerate(zip(g.classes, g.counts, norms, g.variances))]


def separation_law(values: list[float]) -> dict:
    """Fit ln D_l = a + l·ln ρ over layers l = 1..L (He & Su): ρ, and R² of the fit (NaN unless
    every D_l is positive and finite)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size < 2 or not (np.isfinite(values) & (values > 0)).all():
        return {"rho": float("nan"), "r2": float("nan"), "n_layers": int(values.size)}
    y = np.log(values)
    layer = np.arange(1, y.size + 1, dtype=np.float64)
    slope, intercept = np.polyfit(layer, y, 1)
    residual = y - (intercept + slope * layer)
    spread = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((residual**2).sum()) / spread if spread else float("nan")
    return {"rho": float(np.exp(slope)), "r2": r2, "n_layers": int(y.size)}
