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

from actgeom.cli.report import uncertainty
from actgeom.cli.report.document import checkpoint_label, layer_names, metric, training_axis, unavailable_reason
from actgeom.cli.report.document import layer as _layer
from actgeom.cli.report.figures import (
    MARKERS,
    ONE_CHECKPOINT,
    _grid,
    _layer_ticks,
    _or,
    _plain_log_ticks,
    _slant_room,
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


ACCURACY_PAD = 0.15  # of the accuracies' span (at least MIN_SPAN), above and below them
MIN_SPAN = 0.02  # an accuracy axis spans at least this much: 0.96 and 0.99 stay apart, 1.0 stays readable


def _accuracy_axes(ax, name: str, values: np.ndarray, x: np.ndarray, chance: np.ndarray) -> bool:
    """The accuracies' own range (a 0–1 axis hides 0.96 vs 0.99); chance dashed where it falls
    in that range, else named in the title. True when chance is drawn."""
    finite = values[np.isfinite(values)]
    pad = ACCURACY_PAD * max(float(finite.max() - finite.min()), MIN_SPAN)
    bottom, top = float(finite.min()) - pad, float(finite.max()) + pad
    title = PROBE_LABELS[name] + " (↑ better)"
    drawn = np.isfinite(chance).any() and np.nanmax(chance) >= bottom
    if drawn:
        ax.plot(x, chance, **CHANCE)
        bottom = min(bottom, float(np.nanmin(chance)) - pad)
    elif np.isfinite(chance).any():
        title += f"\nchance {np.nanmax(chance):.3g}: below the axis"
    ax.set_ylim(bottom, top)
    ax.set_title(title, fontsize=9)
    ax.set_ylabel("accuracy on the test rows", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    return bool(drawn)


def _probe_series(document: dict, values_of) -> tuple[dict, dict[str, str]]:
    """{metric: values} of the probe metrics with a finite value, and {title: reason} of the others."""
    series = {name: values_of(name) for name in PROBE_METRICS}
    shown = {name: values for name, values in series.items() if np.isfinite(values).any()}
    return shown, {PROBE_LABELS[name]: unavailable_reason(document, name) for name in series if name not in shown}


def fig_probe_depth(document: dict) -> Figure | str:
    """Probe accuracy vs depth, one line per checkpoint; chance dashed."""
    layers = layer_names(document)
    files = document["files"]
    if not layers:
        return "the dumps hold no activation layers"
    series, unavailable = _probe_series(document, lambda name: np.array(
        [[metric(entry, layer, name) for layer in layers] for entry in files]))
    if not series:
        return "no layer has a probe score: " + unavailable_reason(document, "lda_accuracy")
    depth = np.arange(1, len(layers) + 1, dtype=np.float64)
    colours = checkpoint_colours(len(files))
    fig, axes = _grid(len(series), columns=3, legend_entries=len(files) + 1 + uncertainty.legend_room(document),
                      room=_slant_room(layers))
    handles, chance_drawn, drawn = [], False, (False, False)
    chance = np.array([metric(files[-1], layer, "chance") for layer in layers])
    cells = [[(entry, layer) for layer in layers] for entry in files]
    for ax, (name, values) in zip(axes, series.items()):
        for i in range(len(files)):
            (line,) = ax.plot(depth, values[i], color=colours[i], marker="o", markersize=4, linewidth=1.5)
            if len(handles) < len(files):
                handles.append(line)
        drawn = _or(drawn, uncertainty.draw(ax, document, depth, cells, name, values, colours, once=True))
        chance_drawn |= _accuracy_axes(ax, name, uncertainty.extent(document, cells, name, values), depth, chance)
        _layer_ticks(ax, depth, layers)
        ax.set_xlim(depth[0] - 0.25, depth[-1] + 0.25)
        ax.set_xlabel("layer (depth)", fontsize=8)
    labels = [checkpoint_label(entry) for entry in files]
    _probe_legend(fig, handles, labels, chance_drawn, uncertainty.legend_entries(document, *drawn))
    fig.uncertainty = drawn
    fig.unavailable = unavailable
    return fig


def fig_probe_training(document: dict) -> Figure | str:
    """Probe accuracy vs training step, one line per layer (chance dashed), and the cosine of each
    layer's concept direction with the previous checkpoint's; none for one checkpoint."""
    layers = layer_names(document)
    files = document["files"]
    if not layers:
        return "the dumps hold no activation layers"
    if len(files) < 2:
        return ONE_CHECKPOINT
    series, unavailable = _probe_series(document, lambda name: np.array(
        [[metric(entry, layer, name) for entry in files] for layer in layers]))
    if not series:
        return "no layer has a probe score: " + unavailable_reason(document, "lda_accuracy")
    cosines = _direction_cosines(document, layers)
    if cosines is None:
        unavailable[DIRECTION_TITLE] = unavailable_reason(document, "direction_norm")
    x, ticks, xlabel = training_axis(document)
    colours = layer_colours(len(layers))
    fig, axes = _grid(len(series) + (cosines is not None), columns=4,
                      legend_entries=len(layers) + 1 + uncertainty.legend_room(document),
                      room=_slant_room(ticks, slanted=xlabel.startswith("checkpoint")))
    handles, chance_drawn, drawn = [], False, (False, False)
    chance = np.array([metric(entry, layers[0], "chance") for entry in files])
    cells = [[(entry, layer) for entry in files] for layer in layers]
    for ax, (name, values) in zip(axes, series.items()):
        for i in range(len(layers)):
            (line,) = ax.plot(x, values[i], color=colours[i], marker=MARKERS[i % len(MARKERS)], markersize=4,
                              linewidth=1.5)
            if len(handles) < len(layers):
                handles.append(line)
        drawn = _or(drawn, uncertainty.draw(ax, document, x, cells, name, values, colours, MARKERS))
        chance_drawn |= _accuracy_axes(ax, name, uncertainty.extent(document, cells, name, values), x, chance)
        _training_x(ax, x, ticks, xlabel)
    if cosines is not None:
        _draw_direction_cosines(axes[-1], cosines, colours, (x, ticks, xlabel))
    _probe_legend(fig, handles, [f"layer {name}" for name in layers], chance_drawn,
                  uncertainty.legend_entries(document, *drawn))
    fig.uncertainty = drawn
    fig.unavailable = unavailable
    return fig


def _probe_legend(fig: Figure, handles: list, labels: list[str], chance_drawn: bool, more: tuple[list, list]) -> None:
    """The series, the dashed chance line when a panel draws it, and ``more`` (handles, labels: the
    error bars and the baseline)."""
    dashed = [matplotlib.lines.Line2D([], [], **CHANCE)] if chance_drawn else []
    _top_legend(fig, handles + dashed + more[0], labels + ["chance 1/C"] * bool(dashed) + more[1])


DIRECTION_TITLE = "concept direction μ₊ − μ₋: cosine with the previous checkpoint"


def _direction_cosines(document: dict, layers: list[str]) -> dict[str, np.ndarray] | None:
    """cos(direction at checkpoint k, direction at k − 1) per layer, at checkpoint k; None when no
    layer has one."""
    by_layer = {layer: np.full(len(document["files"]), np.nan) for layer in layers}
    index = {entry["file"]: k for k, entry in enumerate(document["files"])}
    for pair in document.get("direction_cosines_across_files", []):
        if pair["layer"] in by_layer and pair["cosine"] is not None:
            by_layer[pair["layer"]][index[pair["files"][1]]] = pair["cosine"]
    return by_layer if any(np.isfinite(values).any() for values in by_layer.values()) else None


def _draw_direction_cosines(ax, by_layer: dict[str, np.ndarray], colours: list, axis) -> None:
    x, ticks, xlabel = axis
    for i, values in enumerate(by_layer.values()):
        ax.plot(x, values, color=colours[i], marker=MARKERS[i % len(MARKERS)], markersize=4, linewidth=1.5)
    ax.axhline(1.0, **CHANCE)
    ax.set_title(DIRECTION_TITLE.replace(": ", ":\n"), fontsize=9)
    ax.set_ylabel("cosine (1: same direction)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    _training_x(ax, x, ticks, xlabel)


VIOLIN_W = 4.6  # inches per violin panel: the layers' violins and a two-line title


def fig_neurons(document: dict) -> Figure | str:
    """Per layer at the last checkpoint: the distribution over units of the class selectivity
    index (cutoff dashed) and of the score that ranks the units (--score)."""
    entry = document["files"][-1]
    options = document["options"]["neurons"]
    layers = [name for name in layer_names(document) if (_layer(entry, name) or {}).get("neurons", {}).get("units")]
    if not layers:
        return "no layer of the last checkpoint has per-unit scores"
    scores = ["class_selectivity"] + ([options["score"]] if options["score"] != "class_selectivity" else [])
    data = {score: {name: _finite(_layer(entry, name)["neurons"]["units"].get(score)) for name in layers}
            for score in scores}
    shown = [score for score in scores if any(values.size for values in data[score].values())]
    unavailable = {score: next((reason for name in layers if (reason := _layer(entry, name)["neurons"]
                                                              ["scores_unavailable"].get(score))), "not computed")
                   for score in scores if score not in shown}
    if not shown:
        return "no unit score has a value: " + "; ".join(f"{score}: {why}" for score, why in unavailable.items())
    cutoff = "class_selectivity" in shown
    fig, axes = _grid(len(shown), columns=2, panel_w=VIOLIN_W, legend_entries=int(cutoff), room=_slant_room(layers))
    for ax, score in zip(axes, shown):
        drawn = [name for name in layers if data[score][name].size]
        parts = ax.violinplot([data[score][name] for name in drawn], showmedians=True, showextrema=True)
        for body, colour in zip(parts["bodies"], layer_colours(len(layers))):
            body.set_facecolor(colour)
            body.set_alpha(0.55)
        _layer_ticks(ax, range(1, len(drawn) + 1), drawn, fontsize=7)
        ax.set_xlabel("layer", fontsize=8)
        ax.set_ylabel(f"{score} of each unit", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3, axis="y")
        if score == "class_selectivity":
            ax.axhline(options["cutoff"], **CHANCE)
            ax.set_ylim(0, 1.05)
            ax.set_title(f"class selectivity per unit\nat {checkpoint_label(entry)}", fontsize=9)
        else:
            _symlog_if_decades(ax, np.concatenate([data[score][name] for name in drawn]))
            ax.set_title(f"{score} per unit (the ranking score)\nat {checkpoint_label(entry)}", fontsize=9)
    if cutoff:  # above the panels: inside one it covers a violin
        _top_legend(fig, [matplotlib.lines.Line2D([], [], **CHANCE)],
                    [f"class selectivity cutoff {options['cutoff']:g}: units above it are selective"])
    fig.unavailable = unavailable
    return fig


def _finite(values) -> np.ndarray:
    array = np.array([math.nan if v is None else v for v in (values or [])], dtype=np.float64)
    return array[np.isfinite(array)]


def _symlog_if_decades(ax, values: np.ndarray) -> None:
    """Symmetric log when the magnitudes span decades: linear up to the power of ten above the
    typical unit's magnitude, so every labelled tick is a decade apart (a threshold between decades
    put ±10⁻¹ and 0 on top of each other)."""
    magnitude = np.abs(values[values != 0])
    if magnitude.size and math.log10(magnitude.max() / magnitude.min()) > DECADES_FOR_SYMLOG:
        linthresh = 10.0 ** math.ceil(math.log10(np.median(magnitude)))
        ax.set_yscale("symlog", linthresh=linthresh, linscale=1.0)
        ax.yaxis.set_major_locator(matplotlib.ticker.SymmetricalLogLocator(base=10, linthresh=linthresh, subs=[1.0]))
        _plain_log_ticks(ax.yaxis)
