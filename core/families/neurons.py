"""The neurons family: per-unit moments, activity, class means, token and position sums in one
pass; every unit's scores, a ranked list of units and the layer summaries of core/metrics/neurons.py."""

from __future__ import annotations

import numpy as np

from actgeom.core.base.errors import InvalidInputError, OptionError
from actgeom.core.base.registry import evaluate
from actgeom.core.families.protocol import DumpFacts, Family, LayerContext, LayerRecord, threshold_problem
from actgeom.core.metrics.neurons import (
    REGISTRY,
    NeuronInputs,
    NeuronsOptions,
    class_selectivity,
    dead_units,
    default_min_support,
    dormant_scores,
    dormant_units,
    firing_rates,
    moment_scores,
    position_eta2,
    probeless_scores,
    token_concentration,
    top_classes,
    unit_p_values,
    vae_kl,
)
from actgeom.core.state.accumulators import MomentsSpec, PositionSumsSpec, TokenSumsSpec, UnitMomentsSpec, UnitsSpec


def needs(options: NeuronsOptions, facts: DumpFacts) -> list:
    specs = [UnitMomentsSpec(exp_sums=options.logvar is not None), UnitsSpec(threshold=options.threshold or 0.0)]
    if facts.has_labels:
        specs.append(MomentsSpec(by_class=True, scatter=False))  # class means of every unit; no D×D product
    if "token_id" in facts.row_vectors:
        specs.append(TokenSumsSpec())
    if "position" in facts.row_vectors:
        specs.append(PositionSumsSpec(max_position=options.max_position))
    return specs


def _missing(ctx: LayerContext, options: NeuronsOptions) -> dict[str, str]:
    """Why a need is not met for this layer, by need."""
    missing = {}
    if no_threshold := threshold_problem(ctx, options.threshold):
        missing["threshold"] = no_threshold
    if ctx.stats.get("moments") is None or ctx.stats.get("moments").classes is None:
        missing["labels"] = "needs labels (--labels)"
    if ctx.stats.get("token_sums") is None:
        missing["token_ids"] = "needs token ids (/rows/token_id)"
    if ctx.stats.get("position_sums") is None:
        missing["positions"] = "needs token positions (/rows/position, or sequence offsets --offsets)"
    if options.mu is None:
        missing["vae_mu"] = "needs --mu: the layer of a VAE's posterior means"
    elif ctx.name != options.mu:
        missing["vae_mu"] = f"not the VAE's posterior-means layer (--mu {options.mu})"
    if options.logvar is None:
        missing["vae_logvar"] = missing.get("vae_mu") or "needs --logvar: the layer of the posterior log-variances"
    elif ctx.name != options.mu:
        missing["vae_logvar"] = missing["vae_mu"]
    return missing


def _vae_layers(ctx: LayerContext, options: NeuronsOptions):
    """(means layer's stats, log-variance layer's stats or None), checked, or None."""
    if options.mu is None:
        return None
    for option, name in (("mu", options.mu), ("logvar", options.logvar)):
        if name is not None and name not in ctx.layers:
            raise OptionError(option, name, f"is not a layer of this analysis; layers: {', '.join(ctx.layers)}")
    mu = ctx.layers[options.mu]
    logvar = None if options.logvar is None else ctx.layers[options.logvar]
    if logvar is not None and logvar.n_units != mu.n_units:
        raise InvalidInputError(f"--mu '{options.mu}' has {mu.n_units} units but --logvar '{options.logvar}' has "
                                f"{logvar.n_units}; they must describe the same latents")
    return mu, logvar


def unit_scores(ctx: LayerContext, options: NeuronsOptions, missing: dict[str, str]) -> NeuronInputs:
    """Every per-unit score this layer's statistics allow; the reason for each one they do not."""
    moments = ctx.stats.get("unit_moments").moments
    units = ctx.stats.get("units")
    inputs = NeuronInputs(scores=moment_scores(moments))
    scores, reasons = inputs.scores, inputs.reasons
    scores["dormant_score"] = dormant_scores(units.sum_abs, units.n_rows)
    if "threshold" in missing:
        reasons["firing_rate"] = missing["threshold"]
    else:
        scores["firing_rate"] = firing_rates(units.n_active, units.n_rows)
        scores["firing_rows"] = units.n_active.copy()  # the support of the unit's other scores
    _class_scores(ctx, moments, missing, scores, reasons)
    if "token_ids" in missing:
        reasons["token_concentration"] = missing["token_ids"]
    else:
        tokens = ctx.stats.get("token_sums")
        counts, mass = tokens.totals()
        inputs.n_tokens = int((counts > 0).sum())
        if mass.shape[0]:
            scores["token_concentration"], scores["top_tokens"], scores["top_token_shares"] = token_concentration(mass)
        else:
            reasons["token_concentration"] = "no rows with a token id"
    if "positions" in missing:
        reasons["position_eta2"] = missing["positions"]
    else:
        m2 = np.where(moments.constant, 0.0, moments.m2)
        scores["position_eta2"] = position_eta2(ctx.stats.get("position_sums"), m2, moments.constant)
    _vae_scores(ctx, options, missing, scores, reasons)
    return inputs


def _class_scores(ctx, moments, missing, scores, reasons) -> None:
    if "labels" in missing:
        reasons["class_selectivity"] = reasons["probeless_score"] = missing["labels"]
        return
    classes = ctx.stats.get("moments").classes
    present = np.flatnonzero(classes.counts > 0)
    if present.size < 2:
        reasons["class_selectivity"] = reasons["probeless_score"] = f"{present.size} class(es) with rows; needs 2"
        return
    means = classes.means[present]
    scores["probeless_score"] = probeless_scores(means)
    scores["top_classes"] = top_classes(means, present)
    lowest = float(moments.min.min())
    if lowest < 0:
        reasons["class_selectivity"] = (f"the layer has negative activations (min {lowest:.4g}); the selectivity index "
                                        "(Morcos et al. 2018) is defined for non-negative ones, e.g. after a ReLU")
    else:
        scores["class_selectivity"] = class_selectivity(means)
    _selectivity_null(ctx.stats.get("permutations"), scores, reasons)


def _selectivity_null(permuted, scores, reasons) -> None:
    """Per-unit permutation p-values and BH q-values of the class selectivity, from the class means
    under each label permutation of the pass (--null K)."""
    if "class_selectivity" not in scores:
        reasons["p_value"] = reasons["q_value"] = reasons["class_selectivity"]
        return
    if permuted is None:
        reasons["p_value"] = reasons["q_value"] = "needs label permutations (--null K)"
        return
    null = np.full((permuted.permutations, scores["class_selectivity"].size), np.nan)
    for k in range(permuted.permutations):
        present = permuted.counts[k] > 0
        if present.sum() >= 2:
            null[k] = class_selectivity(permuted.means(k)[present])
    scores["p_value"], scores["q_value"] = unit_p_values(scores["class_selectivity"], null)


def _vae_scores(ctx, options, missing, scores, reasons) -> None:
    vae = _vae_layers(ctx, options)  # checks --mu / --logvar on every layer
    if "vae_mu" in missing:
        reasons["vae_kl"] = missing["vae_logvar"]
        return
    mu, logvar = vae
    mu_moments = mu.get("unit_moments").moments
    scores["vae_active"] = mu_moments.variance > options.delta
    if logvar is None:
        reasons["vae_kl"] = missing["vae_logvar"]
        return
    lv = logvar.get("unit_moments")
    if lv.moments.n != mu_moments.n:
        reasons["vae_kl"] = (f"--mu '{options.mu}' and --logvar '{options.logvar}' used different rows "
                             f"({mu_moments.n} and {lv.moments.n}: non-finite rows dropped)")
        return
    scores["vae_kl"] = vae_kl(mu_moments.mean, mu_moments.variance, lv.moments.mean, lv.exp_sums.log_mean(lv.moments.n))
    scores["vae_collapsed"] = scores["vae_kl"] < options.collapsed_kl


def ranking(scores: dict, options: NeuronsOptions, supported: np.ndarray) -> list[int]:
    """The top units by the chosen score among the ``supported`` ones, largest first (NaN last,
    ties by unit number)."""
    units = np.flatnonzero(supported)
    values = scores[options.score][units]
    order = np.lexsort((units, -np.nan_to_num(values, nan=-np.inf), np.isnan(values)))
    return [int(u) for u in units[order[: options.top]]]


def ranked_units(inputs: NeuronInputs, options: NeuronsOptions, n_rows: int) -> dict:
    """The ranked list and its support rule: units that fire on fewer than ``min_support`` rows
    (--min-support, default max(10, 0.1 % of the rows)) are counted, not ranked — one row gives
    any unit the largest kurtosis possible (≈ N), selectivity 1 and token concentration 1. Without
    a threshold (firing undefined) every unit is ranked, and the output says so."""
    scores = inputs.scores
    if options.score not in scores:
        return {"min_support": None, "top_units": [], "top_units_unavailable": inputs.reasons[options.score]}
    if "firing_rows" in scores:
        min_support = default_min_support(n_rows) if options.min_support is None else options.min_support
        supported = scores["firing_rows"] >= min_support
        fields = {"min_support": min_support, "units_below_support": int((~supported).sum())}
    else:
        supported = np.ones(scores[options.score].size, dtype=bool)
        fields = {"min_support": None, "support_unavailable": f"ranked without a minimum support: "
                                                              f"{inputs.reasons['firing_rate']}"}
    fields["top_units"] = [{"rank": rank, "unit": unit} | {name: _item(v[unit]) for name, v in scores.items()}
                           for rank, unit in enumerate(ranking(scores, options, supported), start=1)]
    return fields


def layer(ctx: LayerContext, options: NeuronsOptions) -> LayerRecord:
    if ctx.stats.get("unit_moments").moments.n == 0:
        _vae_layers(ctx, options)  # the options are still checked
        reason = "no rows used (selected by --tokens, finite)"
        return LayerRecord(unavailable=dict.fromkeys(REGISTRY, reason),
                           fields={"score": options.score, "top_units": [], "top_units_unavailable": reason})
    missing = _missing(ctx, options)
    inputs = unit_scores(ctx, options, missing)
    scores = inputs.scores
    values, unavailable = evaluate(REGISTRY, inputs, options, missing)
    fields = {"threshold": None if "threshold" in missing else (options.threshold or 0.0), "score": options.score,
              "units": {"unit": list(range(ctx.n_units))} | {name: _item(v) for name, v in scores.items()},
              "scores_unavailable": inputs.reasons}
    if "dormant_score" in scores:
        fields["units"]["dormant"] = dormant_units(scores["dormant_score"], options.tau).tolist()
    if "firing_rate" in scores:
        fields["units"]["dead"] = dead_units(scores["firing_rate"]).tolist()
    fields |= ranked_units(inputs, options, ctx.stats.get("units").n_rows)
    tokens = ctx.stats.get("token_sums")
    if tokens is not None:
        fields["n_token_ids"] = inputs.n_tokens
        fields["token_table"] = f"{tokens.n_groups} token ids × {ctx.n_units} units float64 ({tokens.nbytes / 2**20:.1f} MiB)"
    positions = ctx.stats.get("position_sums")
    if positions is not None:
        fields["n_position_groups"] = positions.n_groups
        fields["max_position"] = options.max_position
    details = {}
    if ctx.details:
        details = {"unit_firing_rate": fields["units"].get("firing_rate"),
                   "unit_dormant_score": fields["units"]["dormant_score"],
                   "top_units": [entry["unit"] for entry in fields["top_units"]]}
    return LayerRecord(metrics=values, unavailable=unavailable, fields=fields, details=details)


def _item(value):
    """A JSON-ready value (a unit's score, flag or list of ids; a score of every unit)."""
    return value.tolist() if isinstance(value, np.ndarray) else value.item() if isinstance(value, np.generic) else value


FAMILY = Family(name="neurons", options_class=NeuronsOptions, metrics=REGISTRY, needs=needs, layer=layer)
