"""The report's figures of layers at chosen checkpoints (helpers and palettes: figures.py).

Eigenspectra at the first and last checkpoint; at the last checkpoint, the cosines between class
means, the classifier–mean duality, dead and dormant units with the firing-rate histograms, and
the attention entropy per head. Colour bars sit in a strip _grid leaves at a figure's right.
"""

from __future__ import annotations

import math

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from actgeom.cli.report.document import checkpoint_label, layer_names, metric
from actgeom.cli.report.document import layer as _layer
from actgeom.cli.report.figures import (
    AXES_RC,
    CHAR_W,
    _grid,
    _layer_ticks,
    _plain_log_ticks,
    _slant_room,
    _top_legend,
)


def fig_spectra(document: dict) -> Figure | str:
    """Eigenspectra log–log per layer at the first and last checkpoint: fit range and noise floor.
    The spectrum is the one the rank metrics used: the covariance, or with --no-center the raw
    second moment."""
    layers = layer_names(document)
    if not layers:
        return "the dumps hold no activation layers"
    centred = document["options"]["rank"]["center"]
    spectrum, noise_floor = ("spectrum", "noise_floor") if centred else ("spectrum_raw", "noise_floor_raw")
    files = document["files"]
    shown = [files[0]] if len(files) == 1 else [files[0], files[-1]]
    colours = ["#0072B2", "#D55E00"]
    fig, axes = _grid(len(layers), columns=3, legend_entries=len(shown) + 2)
    handles = {}
    for ax, layer in zip(axes, layers):
        fit, floors, n_eigs, fitted = None, [], 0, False
        for colour, entry in zip(colours, shown):
            record = _layer(entry, layer)
            if record is None or not record["details"].get(spectrum):
                continue
            details = record["details"]
            lam = np.asarray(details[spectrum], dtype=np.float64)
            n_eigs = max(n_eigs, lam.size)
            rank = np.arange(1, lam.size + 1)
            positive = lam > 0
            label = checkpoint_label(entry)
            (handles[label],) = ax.loglog(rank[positive], lam[positive], color=colour, linewidth=1.5)
            if details.get(noise_floor):
                floors.append(details[noise_floor])
                ax.axhline(details[noise_floor], color=colour, linestyle=":", linewidth=1.2)
            fit = details.get("fit_range") or fit
            fitted = fitted or "alpha_req" in record["metrics"]
        if floors:  # below the lowest floor is rounding noise: keep the axis on the signal
            ax.set_ylim(bottom=min(floors) / 100)
        title = layer
        if fit and fitted:
            handles["α-ReQ fit ranks"] = ax.axvspan(fit[0], min(fit[1], n_eigs), color="0.88", zorder=0)
        elif fit:
            title += f"\n(no α-ReQ fit: {n_eigs} eigenvalues < rank {fit[1]})"
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("rank r", fontsize=8)
        ax.set_ylabel("eigenvalue λ_r (activation units²)" if centred else
                      "eigenvalue λ_r of E[xxᵀ] (activation units²)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3, which="major")
        _plain_log_ticks(ax.xaxis)
        _plain_log_ticks(ax.yaxis)
    floor = matplotlib.lines.Line2D([], [], color="0.35", linestyle=":", linewidth=1.2)
    _top_legend(fig, list(handles.values()) + [floor], list(handles) + ["storage-noise floor (colour: checkpoint)"])
    return fig


def _last_with(document: dict, key: str) -> tuple[dict | None, list[dict]]:
    """The last checkpoint, and its layers whose details hold ``key``."""
    entry = document["files"][-1]
    return entry, [record for record in entry["layers"] if record["kind"] == "layer" and record["details"].get(key)]


def fig_class_cosine(document: dict) -> Figure | str:
    """Cosines between centred class means, per layer, at the last checkpoint."""
    entry, records = _last_with(document, "class_mean_cosine")
    if not records:
        return "no layer has two or more labelled classes"
    fig, axes = _grid(len(records), columns=3, right_extra=COLOUR_BAR_W)
    image = None
    for ax, record in zip(axes, records):
        cosine = np.asarray(record["details"]["class_mean_cosine"], dtype=np.float64)
        ids = record["details"]["class_ids"]
        image = ax.imshow(cosine, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
        step = max(1, len(ids) // 10)
        ax.set_xticks(range(0, len(ids), step), [str(i) for i in ids[::step]], fontsize=7)
        ax.set_yticks(range(0, len(ids), step), [str(i) for i in ids[::step]], fontsize=7)
        ax.set_xlabel("class", fontsize=8)
        ax.set_ylabel("class", fontsize=8)
        ax.set_title(f"{record['layer']} ({checkpoint_label(entry)})", fontsize=9)
    _colour_bar(fig, image, "cosine of centred class means")
    return fig


COLOUR_BAR_W = 1.0  # inches at a figure's right for its colour bar and label


def _colour_bar(fig: Figure, image, label: str) -> None:
    """The colour bar in the COLOUR_BAR_W inches _grid left at the right of the figure."""
    width, height = fig.get_size_inches()
    bar = fig.add_axes(((width - COLOUR_BAR_W + 0.15) / width, 0.5 / height, 0.15 / width, (height - 1.0) / height))
    fig.colorbar(image, cax=bar, label=label)


def fig_duality(document: dict) -> Figure | str:
    """cos(w_c, m_c) per class for the layer the classifier reads, at the last checkpoint."""
    entry, records = _last_with(document, "duality_cosine")
    if not records:
        return "no classifier (W) reads a selected layer, so there is no classifier–mean duality to draw"
    fig, axes = _grid(len(records), columns=2)
    for ax, record in zip(axes, records):
        ids = record["details"]["class_ids"]
        cosine = np.asarray(record["details"]["duality_cosine"], dtype=np.float64)
        ax.bar(range(len(ids)), cosine, color="#0072B2", label="cos(w_c, m_c)")
        ax.axhline(1.0, color="0.35", linestyle="--", linewidth=1, label="ideal 1 (NC3)")
        step = max(1, len(ids) // 20)
        ax.set_xticks(range(0, len(ids), step), [str(i) for i in ids[::step]], fontsize=7)
        ax.set_ylim(min(0.0, float(np.nanmin(cosine)) - 0.05), 1.3)  # room for the legend above the bars
        ax.set_xlabel("class", fontsize=8)
        ax.set_ylabel("cosine", fontsize=8)
        ax.set_title(f"{record['layer']} ({checkpoint_label(entry)})", fontsize=9)
        ax.legend(fontsize=7, loc="upper center", ncol=2, frameon=False)
        ax.tick_params(labelsize=7)
    return fig


def fig_activity(document: dict) -> Figure | str:
    """Per layer: dead and dormant fractions (last checkpoint) and a histogram of unit firing rates."""
    layers = layer_names(document)
    files = document["files"]
    shown = [files[0]] if len(files) == 1 else [files[0], files[-1]]
    with_rates = [layer for layer in layers if any((_layer(e, layer) or {}).get("details", {}).get("firing_rate")
                                                    for e in shown)]
    if not layers:
        return "the dumps hold no activation layers"
    fig, axes = _grid(len(with_rates) + 1, columns=4, legend_entries=2 + len(shown), room=_slant_room(layers))
    last = files[-1]
    x = np.arange(len(layers))
    handles = []
    for offset, (name, colour) in enumerate((("dead_fraction", "#D55E00"), ("dormant_fraction", "#0072B2"))):
        values = [metric(last, layer, name) for layer in layers]
        handles.append(axes[0].bar(x + (offset - 0.5) * 0.38, np.nan_to_num(values), width=0.38, color=colour))
    _layer_ticks(axes[0], x, layers, fontsize=7)
    axes[0].set_ylim(0, 1)
    axes[0].set_ylabel("fraction of units", fontsize=8)
    axes[0].set_xlabel("layer", fontsize=8)
    axes[0].set_title(f"dead / dormant units ({checkpoint_label(last)})", fontsize=9)
    axes[0].tick_params(labelsize=7)
    bins = np.linspace(0.0, 1.0, 21)
    for ax, layer in zip(axes[1:], with_rates):
        for colour, entry in zip(HISTOGRAM_COLOURS, shown):
            rates = (_layer(entry, layer) or {}).get("details", {}).get("firing_rate")
            if rates:
                ax.hist(rates, bins=bins, histtype="step", linewidth=1.6, color=colour)
        ax.set_title(f"{layer}: per-unit firing rate", fontsize=9)
        ax.set_xlabel("fraction of rows with value > threshold", fontsize=8)
        ax.set_ylabel("units", fontsize=8)
        ax.tick_params(labelsize=7)
    steps = [matplotlib.lines.Line2D([], [], color=colour, linewidth=1.6) for colour in HISTOGRAM_COLOURS]
    _top_legend(fig, handles + steps[: len(shown)], ["dead fraction", "dormant fraction"]
                + [f"firing rates at {checkpoint_label(entry)}" for entry in shown])
    return fig


HISTOGRAM_COLOURS = ("#0072B2", "#D55E00")  # the first and the last checkpoint


def fig_attention(document: dict) -> Figure | str:
    """Attention entropy per layer × head at the last checkpoint."""
    entry = document["files"][-1]
    records = [record for record in entry["layers"] if record["kind"] == "attention"
               and isinstance(record["metrics"].get("attention_entropy_per_head"), list)]
    if not records:
        return "the dumps hold no attention probabilities (/attention/<layer>)"
    heads = max(len(record["metrics"]["attention_entropy_per_head"]) for record in records)
    grid = np.full((len(records), heads), np.nan)
    for i, record in enumerate(records):
        per_head = [math.nan if v is None else v for v in record["metrics"]["attention_entropy_per_head"]]
        grid[i, : len(per_head)] = per_head
    names = [record["layer"] for record in records]
    left = 0.5 + CHAR_W * max(map(len, names))  # the layer names and the axis label
    width, height = left + min(0.5 * heads, 10) + 0.2 + COLOUR_BAR_W, 1.3 + 0.3 * len(records)
    fig = Figure(figsize=(width, height))
    with matplotlib.rc_context(AXES_RC):
        ax = fig.add_axes((left / width, 0.5 / height, (width - left - COLOUR_BAR_W - 0.2) / width, (height - 0.9) / height))
    image = ax.imshow(grid, cmap="viridis", aspect="auto", interpolation="nearest")
    ax.set_xticks(range(heads), [str(h) for h in range(heads)], fontsize=7)
    ax.set_yticks(range(len(records)), names, fontsize=7)
    ax.set_xlabel("head", fontsize=8)
    ax.set_ylabel("attention layer", fontsize=8)
    ax.set_title(f"attention entropy per head ({checkpoint_label(entry)})", fontsize=9)
    normalized = document["options"].get("entropy", {}).get("normalized")
    _colour_bar(fig, image, "entropy ÷ log(valid keys)" if normalized else "entropy (nats)")
    return fig
