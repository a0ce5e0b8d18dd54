"""`collapse` as a library call: one pass per layer, the collapse metrics, NC4's second pass.

``collapse_dump("ckpt.h5")["layers"][-1]["metrics"]["nc1"]`` is NC1 of the last layer; the
document is the one `actgeom collapse --format json` prints (per file).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from actgeom.core import __version__
from actgeom.core.collapse import (
    REGISTRY,
    CollapseOptions,
    collapse_metrics,
    geometry,
    kept_classes,
    options_record,
    per_class,
    separation_law,
)
from actgeom.core.dump import Dump, DumpSpec, LayerInfo
from actgeom.core.engine import PassOptions, Progress, TokenSelection
from actgeom.core.engine import options_record as pass_record
from actgeom.core.partial import statistics_for
from actgeom.core.stats import ClassStats
from actgeom.core.stream import iter_blocks
from actgeom.core.summary import nonfinite_notes

_TILE_BYTES = 32 << 20  # scores of a row block against a tile of classes


def collapse_dump(dump: str | Path | Dump, spec: DumpSpec | None = None, options: CollapseOptions = CollapseOptions(),
                  pass_options: PassOptions = PassOptions(), progress: Progress | None = None,
                  precomputed: dict | None = None) -> dict:
    """Every collapse metric for every selected layer of one dump (a JSON-ready dict).

    ``precomputed``: statistics by layer (``load_partial(...)[0]``, e.g. merged shards) to use
    instead of a pass; the dump still provides the classifier, predictions and NC4's pass."""
    if not isinstance(dump, Dump):
        with Dump(dump, spec) as opened:
            return collapse_dump(opened, options=options, pass_options=pass_options, progress=progress,
                                 precomputed=precomputed)
    pass_options = replace(pass_options, reservoir=0, units="none")  # collapse needs only class moments
    stats = statistics_for(dump, precomputed, options=pass_options, progress=progress)
    classifier = dump.classifier()
    layers = []
    for layer in dump.layers:
        layer_stats = stats[layer.name]
        fed = classifier is not None and dump.classifier_layer == layer.name
        layers.append(_layer_report(dump, layer, layer_stats, classifier if fed else None, options, pass_options,
                                    progress, classifier_elsewhere=classifier is not None and not fed))
    fuzziness = [entry["metrics"].get("separation_fuzziness", float("nan")) for entry in layers]
    return {
        "tool": "actgeom", "version": __version__, "command": "collapse", "file": str(dump.path),
        "checkpoint": dump.attrs.get("checkpoint"), "step": dump.attrs.get("step"),
        "options": options_record(options), "pass": pass_record(pass_options),
        "layers": layers,
        "separation_law": separation_law(fuzziness) if len(layers) >= 2 else None,
    }


def _layer_report(dump: Dump, layer: LayerInfo, layer_stats, classifier, options: CollapseOptions,
                  pass_options: PassOptions, progress, *, classifier_elsewhere: bool) -> dict:
    class_stats = layer_stats.classes.finalize()
    counts = class_stats.counts
    kept = kept_classes(counts, options.min_count)
    weight, bias, weight_problem = _classifier_rows(classifier, counts.size)
    dropped = np.flatnonzero((counts > 0) & (counts < options.min_count))
    report = {
        "layer": layer.name, "n_rows": layer_stats.n_rows, "n_units": layer.n_units, "dtype": layer.logical_dtype,
        "n_rows_used": int(counts[kept].sum()), "n_unlabeled": layer_stats.n_unlabeled,
        "n_nonfinite_dropped": layer_stats.n_nonfinite, "n_classes_kept": int(kept.size),
        "n_classes_dropped": int(dropped.size), "n_classes_empty": int((counts == 0).sum()),
    }
    if kept.size < 2:
        reason = f"{kept.size} class(es) with ≥ {options.min_count} rows; collapse needs 2"
        names = [name for metric in REGISTRY.values() for name in metric.outputs] + ["nc4_mismatch"]
        return report | {"metrics": {}, "nonfinite": {}, "unavailable": dict.fromkeys(names, reason)}
    decision = _decision_source(dump, weight, bias, options)
    second = None
    if decision[0] is not None or (dropped.size and (counts[dropped] > 1).any()):
        second = _second_pass(dump, layer, class_stats, kept, dropped, decision, options, pass_options, progress)
    g = geometry(class_stats, options, weight=weight, bias=bias,
                 dropped_scatter=None if second is None else second["dropped_scatter"])
    values, missing = collapse_metrics(g, options)
    reads = f"layer '{dump.classifier_layer}'" if dump.classifier_layer else "a layer not selected by --layers"
    problem = weight_problem or (classifier_elsewhere and f"the classifier ({dump.weight_path}) reads {reads}, not this one")
    if problem:
        missing = {name: problem if reason.startswith("no classifier") else reason for name, reason in missing.items()}
    if decision[0] is None:
        missing["nc4_mismatch"] = decision[1]
    else:
        values["nc4_mismatch"] = second["mismatch"]
        report["nc4_decision"] = decision[0]
    report["metrics"] = values
    report["nonfinite"] = nonfinite_notes(values)
    report["unavailable"] = missing
    if options.per_class:
        report["per_class"] = per_class(g)
    return report


def _classifier_rows(classifier, n_classes: int):
    """(W, b, problem): W needs a row for every class index that has rows."""
    if classifier is None:
        return None, None, None
    weight, bias = classifier
    if weight.shape[0] < n_classes:
        return None, None, (f"the classifier has {weight.shape[0]} rows but labels go up to {n_classes - 1}; "
                            "W-metrics need one row per class")
    return weight, bias, None


def _decision_source(dump: Dump, weight, bias, options: CollapseOptions) -> tuple[str | None, str]:
    """Which network decision NC4 compares with: (mode, "") or (None, why there is none)."""
    wanted = options.nc4_decision
    has = {"predictions": dump.predictions_path is not None, "logits": weight is not None and bias is not None,
           "logits-nobias": weight is not None}
    if wanted == "auto":
        for mode in ("predictions", "logits", "logits-nobias"):
            if has[mode]:
                return mode, ""
        return None, "no predictions (--predictions) and no classifier for this layer (--weight)"
    if has[wanted]:
        return wanted, ""
    need = {"predictions": "predictions (--predictions)", "logits": "a classifier weight and bias for this layer",
            "logits-nobias": "a classifier weight for this layer"}[wanted]
    return None, f"--nc4-decision {wanted} needs {need}"


def _argmax_tiled(X: np.ndarray, rows: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """argmax_c (X rows_cᵀ + offsets_c), over class tiles small enough to keep memory bounded."""
    tile = max(1, _TILE_BYTES // max(8 * X.shape[0], 1))
    best = np.full(X.shape[0], -np.inf)
    arg = np.zeros(X.shape[0], dtype=np.int64)
    for start in range(0, rows.shape[0], tile):
        scores = X @ rows[start : start + tile].T + offsets[start : start + tile]
        local = scores.argmax(axis=1)
        value = scores[np.arange(X.shape[0]), local]
        better = value > best
        best[better], arg[better] = value[better], local[better] + start
    return arg


def _second_pass(dump: Dump, layer: LayerInfo, class_stats: ClassStats, kept, dropped, decision, options,
                 pass_options: PassOptions, progress) -> dict:
    """NC4 (network decision vs nearest class mean) and the scatter of dropped classes' rows."""
    mode = decision[0]
    means = class_stats.means
    centre = means[kept].mean(axis=0)
    m = means[kept] - centre  # NCC on centred means: argmax x̃·m_c − ½‖m_c‖² (no offset cancellation)
    half_sq = -0.5 * np.einsum("ij,ij->i", m, m)
    classifier = dump.classifier() if mode in ("logits", "logits-nobias") else None
    is_kept = np.zeros(means.shape[0], dtype=bool)
    is_kept[kept] = True
    multi = dropped[class_stats.counts[dropped] > 1]
    is_dropped = np.zeros(means.shape[0], dtype=bool)
    is_dropped[multi] = True
    mismatches = considered = 0
    dropped_scatter = np.zeros((layer.n_units, layer.n_units)) if multi.size else None
    start, stop = pass_options.row_range or (0, dump.n_rows)
    block_rows = pass_options.block_rows or dump.block_rows(layer)
    selection = TokenSelection(dump, pass_options)
    for block in iter_blocks(dump, layer, start, stop, block_rows):
        y = np.zeros(block.X.shape[0], dtype=np.int64) if block.labels is None else block.labels
        selected = selection.mask(block.start, block.start + block.X.shape[0])
        known = (y >= 0) & (y < means.shape[0])  # rows outside --tokens may carry labels never seen
        labelled = known & np.isfinite(block.X).all(axis=1) & (True if selected is None else selected)
        y = np.where(known, y, 0)
        if dropped_scatter is not None:
            rows = labelled & is_dropped[y]
            dev = block.X[rows] - means[y[rows]]
            dropped_scatter += dev.T @ dev
        if mode is None:
            continue
        rows = labelled & is_kept[y]
        X = block.X[rows]
        ncc = kept[_argmax_tiled(X - centre, m, half_sq)]
        if mode == "predictions":
            network = dump.predictions(block.start, block.start + block.X.shape[0])[rows]
        else:
            weight, bias = classifier
            offsets = bias if mode == "logits" else np.zeros(weight.shape[0])
            network = _argmax_tiled(X, weight, offsets)
        mismatches += int((network != ncc).sum())
        considered += int(rows.sum())
        if progress is not None:
            progress(f"{layer.name} (NC4)", block.start + block.X.shape[0] - start, stop - start)
    return {"mismatch": mismatches / considered if considered else float("nan"), "dropped_scatter": dropped_scatter}

