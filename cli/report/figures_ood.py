"""The report's OOD figures (``report --ood``; the data: cli/report/ood.py, helpers: figures.py).

AUROC of every score across depth (one panel per checkpoint, one line per score), NC5 across depth
(one line per checkpoint) — both with their jackknife error bars under --ci — and at the last
checkpoint each score's histograms of the ID test and OOD rows at the layer where its AUROC is highest.
"""

from __future__ import annotations

import math

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from actgeom.cli.report.document import checkpoint_label, layer_names
from actgeom.cli.report.figures import (
    LEGEND_COLUMNS,
    OKABE_ITO,
    _grid,
    _layer_ticks,
    _slant_room,
    _top_legend,
    checkpoint_colours,
)
from actgeom.cli.report.ood import score_names
from actgeom.cli.report.uncertainty import error_bars, legend_entries

NO_OOD = "no OOD dump was given (--ood)"
SCORE_COLOURS = (*OKABE_ITO, "#999999")  # nine scores: Okabe–Ito and grey
ID_COLOUR, OOD_COLOUR = "#0072B2", "#D55E00"
SCORE_LABELS = {"msp": "MSP", "max_logit": "MaxLogit", "energy": "energy", "mahalanobis": "Mahalanobis",
                "relative_mahalanobis": "relative Mahalanobis", "vim": "ViM", "neco": "NECO",
                "neco_max_logit": "NECO × MaxLogit", "knn": "kNN"}


def ood_files(document: dict) -> list[dict]:
    """The file entries that have an OOD section (every one with --ood)."""
    return [entry for entry in document["files"] if entry.get("ood")]


def ood_value(entry: dict, layer: str, name: str) -> float:
    """An OOD metric of one checkpoint × layer (e.g. mahalanobis_auroc, nc5); NaN when absent."""
    for record in entry["ood"]["layers"]:
        if record["layer"] == layer:
            value = record["metrics"].get(name)
            return float(value) if isinstance(value, (int, float)) else math.nan
    return math.nan


def ood_bounds(entry: dict, layer: str, name: str) -> tuple[float, float]:
    """(ci_low, ci_high) of an OOD metric of one checkpoint × layer (--ci); NaNs when it has none."""
    for record in entry["ood"]["layers"]:
        if record["layer"] == layer:
            found = (record.get("intervals") or {}).get(name) or {}
            return tuple(float(found[k]) if isinstance(found.get(k), (int, float)) else math.nan
                         for k in ("ci_low", "ci_high"))
    return math.nan, math.nan


def _bars(ax, entry: dict, layers: list[str], name: str, depth: np.ndarray, values, colour, gid: str) -> bool:
    """The metric's jackknife error bars across depth, where it has an interval (--ci). True when drawn."""
    lows, highs = np.array([ood_bounds(entry, layer, name) for layer in layers], dtype=np.float64).reshape(-1, 2).T
    return error_bars(ax, depth, np.asarray(values, dtype=np.float64), lows, highs, colour, gid)


def scores(document: dict) -> list[str]:
    """Every score of the OOD section, in the registry's order."""
    return score_names([record for entry in ood_files(document) for record in entry["ood"]["layers"]])


def why_absent(document: dict, name: str) -> str:
    """Why score ``name`` has no AUROC anywhere (the first reason found)."""
    for entry in ood_files(document):
        for record in entry["ood"]["layers"]:
            if f"{name}_auroc" in record["unavailable"]:
                return record["unavailable"][f"{name}_auroc"]
    return "not computed"


def _shown(document: dict, layers: list[str]) -> tuple[list[str], dict[str, str]]:
    """The scores with an AUROC somewhere, and {score label: reason} for the others."""
    shown, unavailable = [], {}
    for name in scores(document):
        values = [ood_value(entry, layer, f"{name}_auroc") for entry in ood_files(document) for layer in layers]
        if np.isfinite(values).any():
            shown.append(name)
        else:
            unavailable[SCORE_LABELS.get(name, name)] = why_absent(document, name)
    return shown, unavailable


def fig_ood_depth(document: dict) -> Figure | str:
    """AUROC (ID positive) across depth: one panel per checkpoint, one line per score."""
    files, layers = ood_files(document), layer_names(document)
    if not files:
        return NO_OOD
    names, unavailable = _shown(document, layers)
    if not names:
        return "no score has an AUROC" + "".join(f"; {title}: {why}" for title, why in unavailable.items())
    depth = np.arange(1, len(layers) + 1, dtype=np.float64)
    columns = max(2, 2 * min(len(files), 4))  # the legend's columns: as many as the panels' width holds
    rows = math.ceil((len(names) + 1) / columns)
    fig, axes = _grid(len(files), legend_entries=rows * LEGEND_COLUMNS, room=_slant_room(layers))
    handles, drawn = [], False
    for ax, entry in zip(axes, files):
        for i, name in enumerate(names):
            values = [ood_value(entry, layer, f"{name}_auroc") for layer in layers]
            (line,) = ax.plot(depth, values, color=SCORE_COLOURS[i % len(SCORE_COLOURS)], marker="o", markersize=3.5,
                              linewidth=1.4, gid=f"ood-auroc-{checkpoint_label(entry)}-{name}")
            drawn |= _bars(ax, entry, layers, f"{name}_auroc", depth, values, line.get_color(),
                           f"ood-auroc-ci-{checkpoint_label(entry)}-{name}")
            if len(handles) < len(names):
                handles.append(line)
        ax.axhline(0.5, color="0.35", linestyle="--", linewidth=1)
        ax.set_ylim(min(0.0, ax.get_ylim()[0]), 1.02)
        ax.set_title(f"AUROC at {checkpoint_label(entry)} (↑ better)", fontsize=9)
        _depth_axis(ax, depth, layers, "AUROC")
    chance = matplotlib.lines.Line2D([], [], color="0.35", linestyle="--", linewidth=1)
    more, words = legend_entries(document, drawn, False)  # what the error bars are (the caption says it too)
    fig.legend(handles + [chance] + more, [SCORE_LABELS.get(name, name) for name in names] + ["chance (0.5)"] + words,
               loc="upper center", bbox_to_anchor=(0.5, 1.0), ncols=columns, fontsize=8, frameon=False, borderaxespad=0.2)
    fig.uncertainty, fig.unavailable = (drawn, False), unavailable
    return fig


def _depth_axis(ax, depth: np.ndarray, layers: list[str], ylabel: str) -> None:
    _layer_ticks(ax, depth, layers)
    ax.set_xlim(depth[0] - 0.25, depth[-1] + 0.25)
    ax.set_xlabel("layer (depth)", fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)


def fig_ood_nc5(document: dict) -> Figure | str:
    """NC5 across depth, one line per checkpoint."""
    files, layers = ood_files(document), layer_names(document)
    if not files:
        return NO_OOD
    series = np.array([[ood_value(entry, layer, "nc5") for layer in layers] for entry in files])
    if not np.isfinite(series).any():
        reasons = {r["unavailable"].get("nc5") for e in files for r in e["ood"]["layers"]} - {None}
        return "NC5 is unavailable: " + ("; ".join(sorted(reasons)) or "not computed")
    depth = np.arange(1, len(layers) + 1, dtype=np.float64)
    fig, (ax,) = _grid(1, legend_entries=len(files), room=_slant_room(layers), panel_w=4.6)
    colours = checkpoint_colours(len(files))
    handles = [ax.plot(depth, series[i], color=colours[i], marker="o", markersize=4, linewidth=1.5,
                       gid=f"ood-nc5-{checkpoint_label(entry)}")[0] for i, entry in enumerate(files)]
    drawn = False
    for i, entry in enumerate(files):
        drawn |= _bars(ax, entry, layers, "nc5", depth, series[i], colours[i], f"ood-nc5-ci-{checkpoint_label(entry)}")
    ax.axhline(0.0, color="0.35", linestyle="--", linewidth=1)
    arrow = {"lower": " (↓ better)", "higher": " (↑ better)"}.get(document["metrics_info"].get("nc5", {}).get("direction"), "")
    ax.set_title(f"NC5: mean |cos(μ_OOD − μ_G, μ_c − μ_G)|{arrow}", fontsize=9)
    _depth_axis(ax, depth, layers, "mean |cosine|")
    more, words = legend_entries(document, drawn, False)
    _top_legend(fig, handles + more, [checkpoint_label(entry) for entry in files] + words)
    fig.uncertainty = (drawn, False)
    return fig


def fig_ood_histograms(document: dict) -> Figure | str:
    """At the last checkpoint, per score: the ID test and OOD rows' scores (densities) at the layer
    where the score's AUROC is highest."""
    files = ood_files(document)
    if not files:
        return NO_OOD
    entry = files[-1]
    found = entry["ood"]["histograms"]
    names = [name for name in scores(document) if name in found]
    if not names:
        return "no score has an AUROC at the last checkpoint"
    fig, axes = _grid(len(names), legend_entries=2)
    handles = []
    for ax, name in zip(axes, names):
        part = found[name]
        edges = np.asarray(part["edges"], dtype=np.float64)
        for counts, total, colour, role in ((part["id"], part["n_id"], ID_COLOUR, "id"),
                                            (part["ood"], part["n_ood"], OOD_COLOUR, "ood")):
            density = np.asarray(counts, dtype=np.float64) / (max(total, 1) * np.diff(edges))
            step = ax.stairs(density, edges, color=colour, linewidth=1.4, fill=False, gid=f"ood-hist-{name}-{role}")
            ax.stairs(density, edges, color=colour, alpha=0.18, fill=True)
            if len(handles) < 2:
                handles.append(step)
        auroc = ood_value(entry, part["layer"], f"{name}_auroc")
        ax.set_title(f"{SCORE_LABELS.get(name, name)} at {part['layer']}\nAUROC {auroc:.3f}", fontsize=9)
        ax.set_xlabel("score (higher: more in-distribution)", fontsize=8)
        ax.set_ylabel("density", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    test = entry["ood"]["test"] or f"{entry['ood']['fit_split']:g} of {checkpoint_label(entry)} held out"
    _top_legend(fig, handles, [f"ID test rows ({test})", f"OOD rows ({entry['ood']['set']})"])
    fig.unavailable = {SCORE_LABELS.get(n, n): why_absent(document, n) for n in scores(document) if n not in found}
    return fig
