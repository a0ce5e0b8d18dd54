"""The report's figures (matplotlib, Agg, no pyplot state), drawn from the report document.

Each ``fig_*`` function takes the document and returns a Figure, or a sentence saying why the
document holds nothing to draw. A metric unavailable on every layer gets no panel: the figure's
``unavailable`` ({panel title: reason}) lists it, and the page shows that list under the figure.
Colours: Okabe–Ito for layers (categorical), viridis for checkpoints (ordered); both are
colour-blind safe.

Drawing cost (most of a cached report's time): the panels are placed once, in inches, with no
layout engine (constrained layout draws every figure twice and measures every text), titles sit
at a fixed height (their automatic placement measures the tick labels again), and log axes are
labelled 10⁻² in plain text (mathtext's parser costs more than the rest of a panel).
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")  # no display: figures are only ever written to files and strings

import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from actgeom.cli.report import uncertainty  # noqa: E402
from actgeom.cli.report.document import (  # noqa: E402
    checkpoint_label,
    layer_names,
    metric,
    training_axis,
    unavailable_reason,
)

OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#000000", "#F0E442")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
DECADES_FOR_LOG = 1.5  # a positive series spanning more than this many decades gets a log axis
PANEL_W, PANEL_H = 3.4, 2.5  # inches per small multiple
# inches around each panel's axes: left (tick labels and y label), right, top (a two-line title), bottom
# (tick labels and x label); slanted tick labels add room (_slant_room)
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 0.72, 0.18, 0.46, 0.5
LEGEND_ROW = 0.26  # inches per row of a figure's legend above its panels
LEGEND_COLUMNS = 6
CHAR_W = 7 * 0.6 / 72  # inches per character of a 7-pt tick label (DejaVu Sans, average)
X_PAD = 0.05  # the x range reaches this fraction of the data's span past the first and last point
# a fixed title height (automatic placement measures every tick label again); no offset text
# ("1e-11+1.01e1" over a flat series), which would sit under the title
AXES_RC = {"axes.titley": 1.0, "axes.formatter.useoffset": False}
SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")

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

def _grid(n_panels: int, columns: int = 4, *, legend_entries: int = 0, panel_w: float = PANEL_W,
          room: tuple[float, float] = (MARGIN_BOTTOM, 0.0), right_extra: float = 0.0) -> tuple[Figure, list]:
    """A figure of ``n_panels`` axes in rows of ``columns``, each panel ``panel_w`` × PANEL_H inches,
    a band above them for a legend of ``legend_entries``, ``room`` for slanted tick labels
    (_slant_room) and ``right_extra`` inches at the right (a colour bar). No layout engine: the
    positions are fixed here, so a figure is drawn once."""
    columns = max(1, min(columns, n_panels))
    rows = math.ceil(n_panels / columns)
    band = LEGEND_ROW * math.ceil(legend_entries / LEGEND_COLUMNS) + (0.08 if legend_entries else 0.0)
    bottom, left_extra = room
    panel_h = PANEL_H + bottom - MARGIN_BOTTOM
    width, height = left_extra + panel_w * columns + right_extra, panel_h * rows + band
    fig = Figure(figsize=(width, height))
    axes = []
    with matplotlib.rc_context(AXES_RC):
        for i in range(n_panels):
            row, column = divmod(i, columns)
            left = left_extra + column * panel_w + MARGIN_LEFT
            low = height - band - (row + 1) * panel_h + bottom
            axes.append(fig.add_axes((left / width, low / height, (panel_w - MARGIN_LEFT - MARGIN_RIGHT) / width,
                                      (panel_h - MARGIN_TOP - bottom) / height)))
    return fig, axes


def _slant_room(names: list[str], slanted: bool | None = None) -> tuple[float, float]:
    """(inches under each panel, inches before the first column) for tick labels ``names``,
    slanted by 30° when ``slanted`` (by default when crowded, as _layer_ticks slants them): the
    longest name's sin 30° under the panel, its cos 30° reaching left of the first one."""
    if not (_crowded(names) if slanted is None else slanted):
        return MARGIN_BOTTOM, 0.0
    length = CHAR_W * max(map(len, names), default=0)
    return MARGIN_BOTTOM + 0.5 * length, max(0.0, 0.87 * length - MARGIN_LEFT + 0.1)


def _crowded(names: list[str]) -> bool:
    return sum(map(len, names)) > 24


def _power_label(value: float, _position=None) -> str:
    """A tick label in plain text: 10⁻², −10³, 0, or the number (mathtext costs more than the panel)."""
    if value == 0:
        return "0"
    exponent = math.log10(abs(value))
    if not math.isclose(exponent, round(exponent), abs_tol=1e-9):
        return f"{value:g}"
    sign = "−" if value < 0 else ""
    if -3 <= round(exponent) <= 3:
        return sign + f"{abs(value):g}"
    return sign + "10" + str(round(exponent)).translate(SUPERSCRIPT)


def _plain_log_ticks(axis) -> None:
    """Major decades labelled by _power_label, no minor ticks (each tick is an artist to draw)."""
    axis.set_major_formatter(matplotlib.ticker.FuncFormatter(_power_label))
    axis.set_minor_locator(matplotlib.ticker.NullLocator())


def _log_if_decades(ax, values: np.ndarray, allowed: bool) -> None:
    finite = values[np.isfinite(values)]
    if allowed and finite.size and (finite > 0).all() and math.log10(finite.max() / finite.min()) > DECADES_FOR_LOG:
        ax.set_yscale("log")
        _plain_log_ticks(ax.yaxis)


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
    crowded = _crowded(names)
    ax.set_xticks(positions, names, rotation=30 if crowded else 0, ha="right" if crowded else "center", **options)


def drawable(document: dict, names, values_of) -> tuple[list[str], dict[str, str]]:
    """The metrics of ``names`` with a finite value somewhere (``values_of(name)``: an array), and
    {panel title: reason} for the others (they get no panel)."""
    shown, unavailable = [], {}
    for name in names:
        if np.isfinite(values_of(name)).any():
            shown.append(name)
        else:
            unavailable[LABELS.get(name, name)] = unavailable_reason(document, name)
    return shown, unavailable


def _top_legend(fig: Figure, handles: list, labels: list[str]) -> None:
    """One legend for every panel, in the band above them (each panel draws the same series)."""
    columns = min(len(labels), LEGEND_COLUMNS)
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 1.0), ncols=columns, fontsize=8,
               frameon=False, borderaxespad=0.2)


# -- the figures ----------------------------------------------------------------------------

ONE_CHECKPOINT = "one checkpoint: nothing changes over training (the across-depth figures show its values)"


def fig_training(document: dict) -> Figure | str:
    """Metrics vs training step, one line per layer (small multiples); none for one checkpoint."""
    layers = layer_names(document)
    if not layers:
        return "the dumps hold no activation layers"
    if len(document["files"]) < 2:
        return ONE_CHECKPOINT
    x, ticks, xlabel = training_axis(document)
    series = {name: np.array([[metric(entry, layer, name) for entry in document["files"]] for layer in layers])
              for name in drawn_metrics(document, TRAINING_METRICS)}
    names, unavailable = drawable(document, series, series.get)
    if not names:
        return "the families run (--families) have no metric drawn over training" + _reasons_text(unavailable)
    fig, axes = _grid(len(names), legend_entries=len(layers) + 1 + uncertainty.legend_room(document),
                      room=_slant_room(ticks, slanted=xlabel.startswith("checkpoint")))
    colours = layer_colours(len(layers))
    handles, drawn = [], (False, False)
    cells = [[(entry, layer) for entry in document["files"]] for layer in layers]
    for ax, name in zip(axes, names):
        info = document["metrics_info"].get(name)
        for i, layer in enumerate(layers):
            (line,) = ax.plot(x, series[name][i], color=colours[i], marker=MARKERS[i % len(MARKERS)], markersize=4,
                              linewidth=1.5, label=layer)
            if len(handles) < len(layers):
                handles.append(line)
        drawn = _or(drawn, uncertainty.draw(ax, document, x, cells, name, series[name], colours, MARKERS))
        _log_if_decades(ax, series[name].ravel(), (info or {}).get("log_scale", False))
        _ideal(ax, info)
        _title(ax, name, info)
        _training_x(ax, x, ticks, xlabel)
        ax.set_ylabel(_unit(name), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    dashed = matplotlib.lines.Line2D([], [], color="0.35", linestyle="--", linewidth=1)
    more, words = uncertainty.legend_entries(document, *drawn)
    fig.uncertainty = drawn
    _top_legend(fig, handles + [dashed] + more, [f"layer {name}" for name in layers] + ["ideal value"] + words)
    fig.unavailable = unavailable
    return fig


def _or(drawn: tuple[bool, bool], more: tuple[bool, bool]) -> tuple[bool, bool]:
    """(error bars drawn on some panel, baseline drawn on some panel)."""
    return drawn[0] or more[0], drawn[1] or more[1]


def _reasons_text(unavailable: dict[str, str]) -> str:
    return "".join(f"; {title}: {reason}" for title, reason in unavailable.items())


def _training_x(ax, x: np.ndarray, ticks: list[str], xlabel: str) -> None:
    """The training axis: symlog when the steps span decades; every panel gets the same range, the
    data's plus X_PAD of its span on each side (in the drawn scale), so no end marker is clipped."""
    positive = x[x > 0]
    if xlabel == "training step" and positive.size >= 2 and positive.max() / positive.min() >= 30:
        ax.set_xscale("symlog", linthresh=float(positive.min()), linscale=0.5)  # step 0 stays on the axis
        xlabel += " (log beyond the first step)"
        ax.set_xticks(x, [f"{step:g}" for step in x])
        ax.minorticks_off()
    if xlabel.startswith("checkpoint"):
        ax.set_xticks(x, ticks, rotation=30, ha="right")
    scale = ax.xaxis.get_transform()
    drawn = scale.transform(x.reshape(-1, 1)).ravel()
    pad = X_PAD * (drawn.max() - drawn.min()) or 0.5
    ax.set_xlim(*scale.inverted().transform(np.array([[drawn.min() - pad], [drawn.max() + pad]])).ravel())
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
    files = document["files"]
    series = {name: np.array([[metric(entry, layer, name) for layer in layers] for entry in files])
              for name in drawn_metrics(document, DEPTH_METRICS)}
    names, unavailable = drawable(document, series, series.get)
    if not names:
        return "the families run (--families) have no metric drawn across depth" + _reasons_text(unavailable)
    depth = np.arange(1, len(layers) + 1, dtype=np.float64)
    colours = checkpoint_colours(len(files))
    fig, axes = _grid(len(names), legend_entries=len(files) + 1 + uncertainty.legend_room(document),
                      room=_slant_room(layers))
    handles, labels, drawn = [], [], (False, False)
    cells = [[(entry, layer) for layer in layers] for entry in files]
    for ax, name in zip(axes, names):
        info = document["metrics_info"].get(name)
        values = series[name]
        for i, entry in enumerate(files):
            (line,) = ax.plot(depth, values[i], color=colours[i], marker="o", markersize=4, linewidth=1.5)
            if len(handles) < len(files):
                handles.append(line)
                labels.append(checkpoint_label(entry))
        drawn = _or(drawn, uncertainty.draw(ax, document, depth, cells, name, values, colours, once=True))
        _log_if_decades(ax, values.ravel(), (info or {}).get("log_scale", False))
        if name == "separation_fuzziness":
            _separation_law(ax, files, depth, values, colours)
        _ideal(ax, info)
        _title(ax, name, info)
        _layer_ticks(ax, depth, layers)
        ax.set_xlim(depth[0] - 0.25, depth[-1] + 0.25)
        ax.set_xlabel("layer (depth)", fontsize=8)
        ax.set_ylabel(_unit(name), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fit = matplotlib.lines.Line2D([], [], color="0.35", linestyle=":", linewidth=1.2)
    labels = [label + _law_text(entry) for label, entry in zip(labels, files)]
    more, words = uncertainty.legend_entries(document, *drawn)
    fig.uncertainty = drawn
    _top_legend(fig, handles + [fit] + more, labels + ["separation-law fit"] + words)
    fig.unavailable = unavailable
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
