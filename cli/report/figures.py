"""The report's figures (matplotlib, Agg, no pyplot state), drawn from the report document.

Each ``fig_*`` function takes the document and returns a Figure, or a sentence saying why the
document holds nothing to draw. Colours: Okabe–Ito for layers (categorical), viridis for
checkpoints (ordered); both are colour-blind safe.
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")  # no display: figures are only ever written to files and strings

import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from actgeom.cli.report.document import (  # noqa: E402
    checkpoint_label,
    layer_names,
    metric,
    training_axis,
    unavailable_reason,
)
from actgeom.cli.report.document import layer as _layer  # noqa: E402

OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#000000", "#F0E442")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
DECADES_FOR_LOG = 1.5  # a positive series spanning more than this many decades gets a log axis
PANEL_W, PANEL_H = 3.4, 2.5  # inches per small multiple

TRAINING_METRICS = ("nc1", "cdnv", "nc4_mismatch", "vci", "rankme", "alpha_req", "erank", "dataset_entropy",
                    "dead_fraction", "dormant_fraction", "dead_unit_fraction", "dormant_unit_fraction", "mean_cosine",
                    "selective_unit_fraction", "mean_excess_kurtosis")
DEPTH_METRICS = ("separation_fuzziness", "nc1", "cdnv", "vci", "rankme", "erank", "alpha_req", "dataset_entropy",
                 "mean_cosine", "dead_fraction", "dead_unit_fraction", "selective_unit_fraction")
# neurons' unit fractions are entropy's dead/dormant fractions (same definition): drawn once
SAME_AS = {"dead_unit_fraction": "dead_fraction", "dormant_unit_fraction": "dormant_fraction"}
LABELS = {
    "nc1": "NC1  Tr(Σ_W Σ_B⁺)/C", "cdnv": "CDNV", "nc4_mismatch": "NC4 mismatch (fraction of rows)",
    "vci": "VCI", "rankme": "RankMe (effective dims)", "alpha_req": "α-ReQ (power-law exponent)",
    "erank": "effective rank (dims)", "dataset_entropy": "dataset entropy (nats)",
    "dead_fraction": "dead fraction (of units)", "dormant_fraction": "dormant fraction (of units)",
    "mean_cosine": "mean pairwise cosine", "separation_fuzziness": "separation fuzziness D_l",
    "dead_unit_fraction": "dead units (fraction)", "dormant_unit_fraction": "dormant units (fraction)",
    "selective_unit_fraction": "class-selective units (fraction)", "mean_excess_kurtosis": "mean excess kurtosis of units",
}


def drawn_metrics(document: dict, names: tuple[str, ...]) -> list[str]:
    """The metrics of ``names`` that the report's families compute (each drawn once)."""
    info = document["metrics_info"]
    return [name for name in names if name in info and SAME_AS.get(name) not in info]


def layer_colours(n: int) -> list:
    if n <= len(OKABE_ITO):
        return list(OKABE_ITO[:n])
    return [matplotlib.colormaps["viridis"](x) for x in np.linspace(0.0, 0.9, n)]


def checkpoint_colours(n: int) -> list:
    return [matplotlib.colormaps["viridis"](x) for x in np.linspace(0.0, 0.85, max(n, 1))][:n]


# -- helpers --------------------------------------------------------------------------------

def _grid(n_panels: int, columns: int = 4) -> tuple[Figure, list]:
    columns = max(1, min(columns, n_panels))
    rows = math.ceil(n_panels / columns)
    fig = Figure(figsize=(PANEL_W * columns, PANEL_H * rows + 0.3), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel().tolist()
    return fig, axes


def _log_if_decades(ax, values: np.ndarray, allowed: bool) -> None:
    finite = values[np.isfinite(values)]
    if allowed and finite.size and (finite > 0).all() and math.log10(finite.max() / finite.min()) > DECADES_FOR_LOG:
        ax.set_yscale("log")


def _ideal(ax, info: dict | None) -> None:
    ideal = None if info is None else info.get("ideal")
    if ideal is None or (ax.get_yscale() == "log" and ideal <= 0):
        return
    ax.axhline(ideal, color="0.35", linestyle="--", linewidth=1, label=f"ideal {ideal:g}")


def _title(ax, name: str, info: dict | None) -> None:
    arrow = {"lower": " (↓ better)", "higher": " (↑ better)"}.get((info or {}).get("direction"), "")
    ideal = (info or {}).get("ideal")
    log_hidden = ideal is not None and ideal <= 0 and ax.get_yscale() == "log"
    ax.set_title(LABELS.get(name, name) + arrow + (f"\nideal {ideal:g} (off the log axis)" if log_hidden else ""),
                 fontsize=9)


def _layer_ticks(ax, positions, names: list[str], **options) -> None:
    """Layer names under ``positions``, slanted when long or many (so they do not overlap)."""
    crowded = sum(map(len, names)) > 24
    ax.set_xticks(positions, names, rotation=30 if crowded else 0, ha="right" if crowded else "center", **options)


def _empty(ax, name: str, reason: str) -> None:
    ax.set_title(LABELS.get(name, name), fontsize=9)
    ax.text(0.5, 0.5, "not available:\n" + _wrap(reason, 38), ha="center", va="center", fontsize=7.5,
            transform=ax.transAxes, color="0.3")
    ax.set_xticks([])
    ax.set_yticks([])


def _wrap(text: str, width: int) -> str:
    words, lines, line = text.split(), [], ""
    for word in words:
        if len(line) + len(word) + 1 > width and line:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join(lines + [line])


def _top_legend(fig: Figure, handles: list, labels: list[str]) -> None:
    """One legend for every panel, above them (each panel draws the same series)."""
    columns = min(len(labels), 6)
    fig.legend(handles, labels, loc="outside upper center", ncols=columns, fontsize=8, frameon=False)


# -- the figures ----------------------------------------------------------------------------

def fig_training(document: dict) -> Figure | str:
    """Metrics vs training step, one line per layer (small multiples)."""
    layers = layer_names(document)
    if not layers:
        return "the dumps hold no activation layers"
    names = drawn_metrics(document, TRAINING_METRICS)
    if not names:
        return "the families run (--families) have no metric drawn over training"
    x, ticks, xlabel = training_axis(document)
    fig, axes = _grid(len(names))
    colours = layer_colours(len(layers))
    handles = []
    for ax, name in zip(axes, names):
        info = document["metrics_info"].get(name)
        values = np.array([[metric(entry, layer, name) for entry in document["files"]] for layer in layers])
        if not np.isfinite(values).any():
            _empty(ax, name, unavailable_reason(document, name))
            continue
        for i, layer in enumerate(layers):
            (line,) = ax.plot(x, values[i], color=colours[i], marker=MARKERS[i % len(MARKERS)], markersize=4,
                              linewidth=1.5, label=layer)
            if len(handles) < len(layers):
                handles.append(line)
        _log_if_decades(ax, values.ravel(), (info or {}).get("log_scale", False))
        _ideal(ax, info)
        _title(ax, name, info)
        _training_x(ax, x, ticks, xlabel)
        ax.set_ylabel(_unit(name), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[len(names):]:
        ax.axis("off")
    dashed = matplotlib.lines.Line2D([], [], color="0.35", linestyle="--", linewidth=1)
    _top_legend(fig, handles + [dashed], [f"layer {name}" for name in layers] + ["ideal value"])
    return fig


def _training_x(ax, x: np.ndarray, ticks: list[str], xlabel: str) -> None:
    positive = x[x > 0]
    if xlabel == "training step" and positive.size >= 2 and positive.max() / positive.min() >= 30:
        ax.set_xscale("symlog", linthresh=float(positive.min()), linscale=0.5)  # step 0 stays on the axis
        xlabel += " (log beyond the first step)"
        ax.set_xticks(x, [f"{step:g}" for step in x])
        ax.minorticks_off()
    if xlabel.startswith("checkpoint"):
        ax.set_xticks(x, ticks, rotation=30, ha="right")
    ax.set_xlabel(xlabel, fontsize=8)


def _unit(name: str) -> str:
    units = {"rankme": "dimensions", "erank": "dimensions", "dataset_entropy": "nats", "nc4_mismatch": "fraction",
             "dead_fraction": "fraction", "dormant_fraction": "fraction", "mean_cosine": "cosine",
             "dead_unit_fraction": "fraction", "dormant_unit_fraction": "fraction", "selective_unit_fraction": "fraction"}
    return units.get(name, "value (dimensionless)")


def fig_depth(document: dict) -> Figure | str:
    """Metrics vs depth, one line per checkpoint; the He–Su separation law drawn on D_l."""
    layers = layer_names(document)
    if not layers:
        return "the dumps hold no activation layers"
    names = drawn_metrics(document, DEPTH_METRICS)
    if not names:
        return "the families run (--families) have no metric drawn across depth"
    depth = np.arange(1, len(layers) + 1, dtype=np.float64)
    files = document["files"]
    colours = checkpoint_colours(len(files))
    fig, axes = _grid(len(names))
    handles, labels = [], []
    for ax, name in zip(axes, names):
        info = document["metrics_info"].get(name)
        values = np.array([[metric(entry, layer, name) for layer in layers] for entry in files])
        if not np.isfinite(values).any():
            _empty(ax, name, unavailable_reason(document, name))
            continue
        for i, entry in enumerate(files):
            (line,) = ax.plot(depth, values[i], color=colours[i], marker="o", markersize=4, linewidth=1.5)
            if len(handles) < len(files):
                handles.append(line)
                labels.append(checkpoint_label(entry))
        _log_if_decades(ax, values.ravel(), (info or {}).get("log_scale", False))
        if name == "separation_fuzziness":
            _separation_law(ax, files, depth, values, colours)
        _ideal(ax, info)
        _title(ax, name, info)
        _layer_ticks(ax, depth, layers)
        ax.set_xlabel("layer (depth)", fontsize=8)
        ax.set_ylabel(_unit(name), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[len(names):]:
        ax.axis("off")
    fit = matplotlib.lines.Line2D([], [], color="0.35", linestyle=":", linewidth=1.2)
    labels = [label + _law_text(entry) for label, entry in zip(labels, files)]
    _top_legend(fig, handles + [fit], labels + ["separation-law fit"])
    return fig


def _separation_law(ax, files: list[dict], depth: np.ndarray, values: np.ndarray, colours: list) -> None:
    """ln D_l = a + l·ln ρ: the fitted line per checkpoint (a by least squares given ρ)."""
    for i, entry in enumerate(files):
        rho = (entry.get("separation_law") or {}).get("rho")
        if rho is None or rho <= 0 or not np.isfinite(values[i]).all() or not (values[i] > 0).all():
            continue
        intercept = float(np.mean(np.log(values[i]) - depth * math.log(rho)))
        ax.plot(depth, np.exp(intercept + depth * math.log(rho)), color=colours[i], linestyle=":", linewidth=1.2)


def _law_text(entry: dict) -> str:
    law = entry.get("separation_law") or {}
    if law.get("rho") is None:
        return ""
    r2 = law.get("r2")
    return f"  (ρ = {law['rho']:.3g}" + ("" if r2 is None else f", R² = {r2:.3g}") + ")"


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
    fig, axes = _grid(len(layers), columns=3)
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
    for ax in axes[len(layers):]:
        ax.axis("off")
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
    fig, axes = _grid(len(records), columns=3)
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
    for ax in axes[len(records):]:
        ax.axis("off")
    fig.colorbar(image, ax=axes[: len(records)], shrink=0.8, label="cosine of centred class means")
    return fig


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
    for ax in axes[len(records):]:
        ax.axis("off")
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
    fig, axes = _grid(len(with_rates) + 1, columns=4)
    last = files[-1]
    x = np.arange(len(layers))
    for offset, (name, colour) in enumerate((("dead_fraction", "#D55E00"), ("dormant_fraction", "#0072B2"))):
        values = [metric(last, layer, name) for layer in layers]
        axes[0].bar(x + (offset - 0.5) * 0.38, np.nan_to_num(values), width=0.38, color=colour,
                    label=name.replace("_", " "))
    _layer_ticks(axes[0], x, layers, fontsize=7)
    axes[0].set_ylim(0, 1)
    axes[0].set_ylabel("fraction of units", fontsize=8)
    axes[0].set_xlabel("layer", fontsize=8)
    axes[0].set_title(f"dead / dormant units ({checkpoint_label(last)})", fontsize=9)
    axes[0].legend(fontsize=7)
    axes[0].tick_params(labelsize=7)
    bins = np.linspace(0.0, 1.0, 21)
    for ax, layer in zip(axes[1:], with_rates):
        for colour, entry in zip(("#0072B2", "#D55E00"), shown):
            rates = (_layer(entry, layer) or {}).get("details", {}).get("firing_rate")
            if rates:
                ax.hist(rates, bins=bins, histtype="step", linewidth=1.6, color=colour, label=checkpoint_label(entry))
        ax.set_title(f"{layer}: per-unit firing rate", fontsize=9)
        ax.set_xlabel("fraction of rows with value > threshold", fontsize=8)
        ax.set_ylabel("units", fontsize=8)
        ax.legend(fontsize=7)
        ax.tick_params(labelsize=7)
    for ax in axes[len(with_rates) + 1:]:
        ax.axis("off")
    return fig


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
    fig = Figure(figsize=(min(2 + 0.5 * heads, 12), 1.5 + 0.4 * len(records)), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(grid, cmap="viridis", aspect="auto", interpolation="nearest")
    ax.set_xticks(range(heads), [str(h) for h in range(heads)], fontsize=7)
    ax.set_yticks(range(len(records)), [record["layer"] for record in records], fontsize=7)
    ax.set_xlabel("head", fontsize=8)
    ax.set_ylabel("attention layer", fontsize=8)
    ax.set_title(f"attention entropy per head ({checkpoint_label(entry)})", fontsize=9)
    normalized = document["options"].get("entropy", {}).get("normalized")
    fig.colorbar(image, ax=ax, label="entropy ÷ log(valid keys)" if normalized else "entropy (nats)")
    return fig
