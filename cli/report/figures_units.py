"""The report's figures of the neurons and probe families (helpers and palettes: figures.py).

Probe accuracy against depth (one line per checkpoint) and against the training step (one line
per layer), chance dashed; the concept direction's cosine between consecutive checkpoints; and
the distribution over units of the per-unit scores at the last checkpoint, one violin per layer.
"""

from __future__ import annotations

import math

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from actgeom.cli.report.document import checkpoint_label, layer_names, metric, training_axis, unavailable_reason
from actgeom.cli.report.document import layer as _layer
from actgeom.cli.report.figures import (
    MARKERS,
    _empty,
    _grid,
    _layer_ticks,
    _top_legend,
    _training_x,
    checkpoint_colours,
    layer_colours,
)

PROBE_METRICS = ("lda_accuracy", "ridge_accuracy", "ncc_accuracy")
PROBE_LABELS = {"lda_accuracy": "LDA probe accuracy", "ridge_accuracy": "ridge probe accuracy",
                "ncc_accuracy": "nearest-class-mean accuracy"}
CHANCE = dict(color="0.35", linestyle="--", linewidth=1)
DECADES_FOR_SYMLOG = 1.5  # a per-unit score spanning more decades than this gets a symmetric-log axis


def _chance_line(ax, x: np.ndarray, chance: np.ndarray) -> None:
    """Chance (1/C of the train classes) at each x; one flat dashed line when it does not change."""
    if np.isfinite(chance).any():
        ax.plot(x, chance, **CHANCE)


def _accuracy_axes(ax, name: str) -> None:
    ax.set_title(PROBE_LABELS[name] + " (↑ better)", fontsize=9)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("accuracy on the test rows", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)


def fig_probe_depth(document: dict) -> Figure | str:
    """Probe accuracy vs depth, one line per checkpoint; chance dashed."""
    layers = layer_names(document)
    files = document["files"]
    if not layers:
        return "the dumps hold no activation layers"
    depth = np.arange(1, len(layers) + 1, dtype=np.float64)
    colours = checkpoint_colours(len(files))
    fig, axes = _grid(len(PROBE_METRICS), columns=3)
    handles = []
    for ax, name in zip(axes, PROBE_METRICS):
        values = np.array([[metric(entry, layer, name) for layer in layers] for entry in files])
        if not np.isfinite(values).any():
            _empty(ax, name, unavailable_reason(document, name))
            continue
        for i in range(len(files)):
            (line,) = ax.plot(depth, values[i], color=colours[i], marker="o", markersize=4, linewidth=1.5)
            if len(handles) < len(files):
                handles.append(line)
        _chance_line(ax, depth, np.array([metric(files[-1], layer, "chance") for layer in layers]))
        _accuracy_axes(ax, name)
        _layer_ticks(ax, depth, layers)
        ax.set_xlabel("layer (depth)", fontsize=8)
    if not handles:
        return "no layer has a probe score: " + unavailable_reason(document, "lda_accuracy")
    labels = [checkpoint_label(entry) for entry in files]
    _top_legend(fig, handles + [matplotlib.lines.Line2D([], [], **CHANCE)], labels + ["chance 1/C"])
    return fig


def fig_probe_training(document: dict) -> Figure | str:
    """Probe accuracy vs training step, one line per layer (chance dashed), and the cosine of each
    layer's concept direction with the previous checkpoint's."""
    layers = layer_names(document)
    files = document["files"]
    if not layers:
        return "the dumps hold no activation layers"
    x, ticks, xlabel = training_axis(document)
    colours = layer_colours(len(layers))
    fig, axes = _grid(len(PROBE_METRICS) + 1, columns=4)
    handles = []
    for ax, name in zip(axes, PROBE_METRICS):
        values = np.array([[metric(entry, layer, name) for entry in files] for layer in layers])
        if not np.isfinite(values).any():
            _empty(ax, name, unavailable_reason(document, name))
            continue
        for i in range(len(layers)):
            (line,) = ax.plot(x, values[i], color=colours[i], marker=MARKERS[i % len(MARKERS)], markersize=4,
                              linewidth=1.5)
            if len(handles) < len(layers):
                handles.append(line)
        _chance_line(ax, x, np.array([metric(entry, layers[0], "chance") for entry in files]))
        _accuracy_axes(ax, name)
        _training_x(ax, x, ticks, xlabel)
    _direction_cosines(axes[len(PROBE_METRICS)], document, layers, colours, (x, ticks, xlabel))
    if not handles:
        return "no layer has a probe score: " + unavailable_reason(document, "lda_accuracy")
    _top_legend(fig, handles + [matplotlib.lines.Line2D([], [], **CHANCE)],
                [f"layer {name}" for name in layers] + ["chance 1/C"])
    return fig


def _direction_cosines(ax, document: dict, layers: list[str], colours: list, axis) -> None:
    """cos(direction at checkpoint k, direction at k − 1) per layer, drawn at checkpoint k."""
    x, ticks, xlabel = axis
    name = "direction cosine with the previous checkpoint"
    by_layer = {layer: np.full(len(document["files"]), np.nan) for layer in layers}
    index = {entry["file"]: k for k, entry in enumerate(document["files"])}
    for pair in document.get("direction_cosines_across_files", []):
        if pair["layer"] in by_layer and pair["cosine"] is not None:
            by_layer[pair["layer"]][index[pair["files"][1]]] = pair["cosine"]
    if not any(np.isfinite(values).any() for values in by_layer.values()):
        reason = ("one checkpoint only" if len(document["files"]) < 2
                  else unavailable_reason(document, "direction_norm"))
        _empty(ax, name, reason)
        return
    for i, layer in enumerate(layers):
        ax.plot(x, by_layer[layer], color=colours[i], marker=MARKERS[i % len(MARKERS)], markersize=4, linewidth=1.5)
    ax.axhline(1.0, **CHANCE)
    ax.set_title("concept direction μ₊ − μ₋:\ncosine with the previous checkpoint", fontsize=9)
    ax.set_ylabel("cosine (1: same direction)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    _training_x(ax, x, ticks, xlabel)


def fig_neurons(document: dict) -> Figure | str:
    """Per layer at the last checkpoint: the distribution over units of the class selectivity
    index (cutoff dashed) and of the score that ranks the units (--score)."""
    entry = document["files"][-1]
    options = document["options"]["neurons"]
    layers = [name for name in layer_names(document) if (_layer(entry, name) or {}).get("neurons", {}).get("units")]
    if not layers:
        return "no layer of the last checkpoint has per-unit scores"
    shown = ["class_selectivity"] + ([options["score"]] if options["score"] != "class_selectivity" else [])
    fig, axes = _grid(len(shown), columns=2)
    for ax, score in zip(axes, shown):
        data = {name: _finite(_layer(entry, name)["neurons"]["units"].get(score)) for name in layers}
        drawn = [name for name in layers if data[name].size]
        if not drawn:
            reasons = [_layer(entry, name)["neurons"]["scores_unavailable"].get(score) for name in layers]
            _empty(ax, score, next((r for r in reasons if r), "not computed"))
            continue
        parts = ax.violinplot([data[name] for name in drawn], showmedians=True, showextrema=True)
        for body, colour in zip(parts["bodies"], layer_colours(len(layers))):
            body.set_facecolor(colour)
            body.set_alpha(0.55)
        _layer_ticks(ax, range(1, len(drawn) + 1), drawn, fontsize=7)
        ax.set_xlabel("layer", fontsize=8)
        ax.set_ylabel(f"{score} of each unit", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3, axis="y")
        if score == "class_selectivity":
            ax.axhline(options["cutoff"], label=f"cutoff {options['cutoff']:g}: selective above", **CHANCE)
            ax.set_ylim(0, 1.05)
            ax.legend(fontsize=7, loc="lower right")
            ax.set_title(f"class selectivity per unit ({checkpoint_label(entry)})", fontsize=9)
        else:
            _symlog_if_decades(ax, np.concatenate([data[name] for name in drawn]))
            ax.set_title(f"{score} per unit, the ranking score ({checkpoint_label(entry)})", fontsize=9)
    return fig


def _finite(values) -> np.ndarray:
    array = np.array([math.nan if v is None else v for v in (values or [])], dtype=np.float64)
    return array[np.isfinite(array)]


def _symlog_if_decades(ax, values: np.ndarray) -> None:
    magnitude = np.abs(values[values != 0])
    if magnitude.size and math.log10(magnitude.max() / magnitude.min()) > DECADES_FOR_SYMLOG:
        ax.set_yscale("symlog", linthresh=float(np.median(magnitude)))  # linear around 0 up to the typical unit
