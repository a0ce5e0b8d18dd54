"""The collapse family: class moments in one pass, the metrics of core/metrics/collapse.py per layer,
NC4 (and the scatter of dropped classes) in the shared second pass, the separation law per file."""

from __future__ import annotations

import dataclasses

import numpy as np

from actgeom.core.base.registry import evaluate
from actgeom.core.base.stats import ClassStats
from actgeom.core.families.protocol import DumpFacts, Family, LayerContext, LayerRecord
from actgeom.core.metrics.collapse import (
    REGISTRY,
    UNAVAILABLE,
    CollapseOptions,
    Geometry,
    geometry,
    kept_classes,
    per_class,
    separation_law,
)
from actgeom.core.metrics.collapse_null import LowRankScatter, between_rows, total_basis
from actgeom.core.state.accumulators import MomentsSpec
from actgeom.core.state.collapse_pass import Decisions, NC4Pass
from actgeom.core.state.grouped_pass import with_twins

DETAIL_CLASSES = 50  # class-mean cosines for plots: the most frequent classes


def needs(options: CollapseOptions, facts: DumpFacts) -> list:
    return [MomentsSpec(by_class=True)]


def _classes(ctx: LayerContext) -> ClassStats:
    return ctx.stats.get("moments").classes


def _classifier(ctx: LayerContext, n_classes: int):
    """(W, b, problem): W needs a row for every class index that has rows."""
    if ctx.classifier is None:
        return None, None, ctx.classifier_problem
    weight, bias = ctx.classifier
    if weight.shape[0] < n_classes:
        return None, None, (f"the classifier has {weight.shape[0]} rows but labels go up to {n_classes - 1}; "
                            "W-metrics need one row per class")
    return weight, bias, None


def decision_source(ctx: LayerContext, options: CollapseOptions) -> tuple[str | None, str]:
    """Which network decision NC4 compares with: (mode, "") or (None, why there is none)."""
    weight, bias, _ = _classifier(ctx, _classes(ctx).counts.size)
    wanted = options.nc4_decision
    has = {"predictions": ctx.dump is not None and ctx.dump.predictions_path is not None,
           "logits": weight is not None and bias is not None, "logits-nobias": weight is not None}
    if wanted == "auto":
        for mode in ("predictions", "logits", "logits-nobias"):
            if has[mode]:
                return mode, ""
        return None, UNAVAILABLE["decision"]
    if has[wanted]:
        return wanted, ""
    need = {"predictions": "predictions (--predictions)", "logits": "a classifier weight and bias for this layer",
            "logits-nobias": "a classifier weight for this layer"}[wanted]
    return None, f"--nc4-decision {wanted} needs {need}"


def second_pass(ctx: LayerContext, options: CollapseOptions):
    """The NC4 consumer of the shared second pass, when there is a decision source or a dropped
    class with rows to remove from the pooled scatter; else None. On grouped statistics with the
    twins made from the class moments without each jackknife group, fed the rows outside it
    (core/state/grouped_pass.py)."""
    if ctx.dump is None:
        return None
    decisions = Decisions()  # the network's decisions: the same for the consumer and its twins
    return with_twins(ctx.stats, ("moments",), lambda stats: _nc4(dataclasses.replace(ctx, stats=stats), options, decisions),
                      ctx.dump, ctx.pass_options)


def _nc4(ctx: LayerContext, options: CollapseOptions, decisions: Decisions) -> NC4Pass | None:
    """The NC4 consumer of a layer's statistics ``ctx.stats`` (see :func:`second_pass`)."""
    stats = _classes(ctx)
    kept = kept_classes(stats.counts, options.min_count)
    dropped = np.flatnonzero((stats.counts > 0) & (stats.counts < options.min_count))
    mode, _ = decision_source(ctx, options)
    if kept.size < 2 or (mode is None and not (stats.counts[dropped] > 1).any()):
        return None
    weight, bias, _ = _classifier(ctx, stats.counts.size)
    return NC4Pass(ctx.dump, stats, kept, dropped, mode, weight, bias, decisions)


def layer(ctx: LayerContext, options: CollapseOptions) -> LayerRecord:
    stats = _classes(ctx)
    counts = stats.counts
    kept = kept_classes(counts, options.min_count)
    dropped = np.flatnonzero((counts > 0) & (counts < options.min_count))
    fields = {"n_rows_used": int(counts[kept].sum()), "n_unlabeled": ctx.stats.n_unlabeled,
              "n_classes_kept": int(kept.size), "n_classes_dropped": int(dropped.size),
              "n_classes_empty": int((counts == 0).sum())}
    if kept.size < 2:
        reason = (f"{kept.size} class(es) with ≥ {options.min_count} rows; collapse needs 2"
                  + ("" if kept.size or ctx.dump is None or ctx.dump.labels_path else ": no labels (give --labels)"))
        return LayerRecord(unavailable=dict.fromkeys(REGISTRY, reason), fields=fields)
    weight, bias, problem = _classifier(ctx, counts.size)
    mode, no_decision = decision_source(ctx, options)
    nc4 = ctx.second.get("collapse")
    g = geometry(_factored(ctx, stats, kept), options, weight=weight, bias=bias,
                 dropped_scatter=None if nc4 is None else nc4.dropped_scatter,
                 nc4=None if nc4 is None else nc4.mismatch)
    values, unavailable = metrics(g, options, classifier_problem=problem, no_decision=no_decision)
    if mode is not None and g.nc4 is not None:
        fields["nc4_decision"] = mode
    if options.per_class:
        fields["per_class"] = per_class(g)
    details = _details(g) if ctx.details else {}
    return LayerRecord(metrics=values, unavailable=unavailable, fields=fields, details=details)


def _factored(ctx: LayerContext, stats: ClassStats, kept: np.ndarray) -> ClassStats:
    """Under a label permutation (``ctx.permuted``), the class statistics with their within scatter kept
    as S_T − ZᵀZ (core/metrics/collapse_null.py: no D × D eigensolve per permutation), the eigenpairs
    of the total scatter S_T made once for the K permutations; otherwise ``stats`` as they are. Not with
    C ≥ D kept classes (Σ_B's eigenpairs then come from a D × D matrix anyway) nor with a second pass
    (its dropped classes' scatter is subtracted from the matrix)."""
    fixed = ctx.permuted
    if fixed is None or stats.within_scatter is None or kept.size >= stats.means.shape[1] or "collapse" in ctx.second:
        return stats
    if "collapse" not in fixed:
        fixed["collapse"] = total_basis(fixed["total"])
    basis = fixed["collapse"]
    scatter = LowRankScatter(basis, between_rows(stats.counts, stats.means, basis.mean), stats.within_scatter)
    return dataclasses.replace(stats, within_scatter=scatter)


def metrics(g: Geometry, options: CollapseOptions, *, classifier_problem: str | None = None,
            no_decision: str | None = None) -> tuple[dict, dict]:
    """Every registered metric the geometry allows → (values, reasons for the others): W-metrics
    need a classifier (``classifier_problem``: why the dump's cannot be used), NC4 the second
    pass's mismatch (``no_decision``: why there is no network decision)."""
    missing = {"weight": classifier_problem or UNAVAILABLE["weight"], "bias": classifier_problem or UNAVAILABLE["bias"]}
    missing = {need: reason for need, reason in missing.items() if getattr(g, need) is None}
    if g.nc4 is None:
        missing["decision"] = no_decision or "NC4 needs a second pass over the dump's rows"
    return evaluate(REGISTRY, g, options, missing)


def _details(g) -> dict:
    """Class-mean cosines (and classifier–mean duality) of the most frequent classes, for plots."""
    top = np.sort(np.argsort(-g.counts, kind="stable")[:DETAIL_CLASSES])
    m = g.centred[top]
    unit = m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), np.finfo(float).tiny)
    details = {"class_ids": g.classes[top].tolist(), "class_mean_cosine": (unit @ unit.T).tolist(),
               "n_classes_total": g.n_classes, "duality_cosine": None}
    if g.weight is not None:
        w = g.weight[top]
        details["duality_cosine"] = (np.einsum("ij,ij->i", w, unit) / np.linalg.norm(w, axis=1)).tolist()
    return details


def file_record(records: list[LayerRecord], options: CollapseOptions) -> dict:
    """He & Su's separation law across the layers of one file (two layers or more)."""
    if len(records) < 2:
        return {"separation_law": None}
    return {"separation_law": separation_law([r.metrics.get("separation_fuzziness", float("nan")) for r in records])}


FAMILY = Family(name="collapse", options_class=CollapseOptions, metrics=REGISTRY, needs=needs, layer=layer,
                second_pass=second_pass, file_record=file_record)
