"""The report's uncertainty: each metric's jackknife interval and its baseline, read from the
document (its shape: ``cli/report/__init__.py``), drawn on a panel as error bars in the series'
colour and as a grey line with a grey band, and said in words for the page and the legends.

Intervals: a layer's ``intervals`` {metric: {"ci_low", "ci_high", ...}} (``--ci``). A point without
one gets no bar. Baselines: a layer's ``baseline`` {metric: {"baseline", "difference", ...}} and the
file's ``baseline_file`` (``--baseline``); with ``--ci`` each entry also carries the baseline's own
interval (``baseline_ci_low``, ``baseline_ci_high``): the band.
"""

from __future__ import annotations

import math

import matplotlib
import numpy as np

from actgeom.cli.report.document import layer as _layer

BASELINE_COLOUR = "0.45"
BAND_COLOUR = "0.75"
NAN2 = (math.nan, math.nan)


def _number(value) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def bounds(entry: dict, layer: str, name: str) -> tuple[float, float]:
    """(ci_low, ci_high) of a metric of one file × layer; NaNs when it has no interval."""
    found = ((_layer(entry, layer) or {}).get("intervals") or {}).get(name) or {}
    return _number(found.get("ci_low")), _number(found.get("ci_high"))


def baseline(entry: dict, layer: str, name: str) -> tuple[float, float, float]:
    """(value, ci_low, ci_high) of a metric of the baseline of one file × layer: NaNs when the file
    has no baseline for it, the bounds NaN when the baseline has no interval."""
    found = ((_layer(entry, layer) or {}).get("baseline") or {}).get(name) or {}
    value = _number(found.get("baseline"))
    if not math.isfinite(value):
        return math.nan, *NAN2
    return value, _number(found.get("baseline_ci_low")), _number(found.get("baseline_ci_high"))


def interval_series(document: dict, cells: list[list[tuple[dict, str]]], name: str) -> tuple[np.ndarray, np.ndarray]:
    """(lows, highs) of ``name`` over ``cells`` [series][point] = (file entry, layer)."""
    found = np.array([[bounds(entry, layer, name) for entry, layer in row] for row in cells], dtype=np.float64)
    found = found.reshape(len(cells), -1, 2)
    return found[..., 0], found[..., 1]


def baseline_series(cells: list[list[tuple[dict, str]]], name: str) -> np.ndarray:
    """[series][point][value, low, high] of the baselines of ``name`` over ``cells``."""
    found = np.array([[baseline(entry, layer, name) for entry, layer in row] for row in cells],
                     dtype=np.float64)
    return found.reshape(len(cells), -1, 3)


def error_bars(ax, x: np.ndarray, values: np.ndarray, lows: np.ndarray, highs: np.ndarray, colour, gid: str) -> bool:
    """Vertical bars from ci_low to ci_high at the points that have both (none elsewhere), in the
    series' colour; the bars' LineCollection carries ``gid`` (an id in the SVG). True when drawn."""
    shown = np.isfinite(values) & np.isfinite(lows) & np.isfinite(highs)
    if not shown.any():
        return False
    below, above = np.maximum(values - lows, 0.0), np.maximum(highs - values, 0.0)
    bars = ax.errorbar(x[shown], values[shown], yerr=np.vstack([below[shown], above[shown]]), fmt="none",
                       ecolor=colour, elinewidth=1.1, capsize=2.5, capthick=1.1, zorder=3)
    for part in bars.lines[2]:
        part.set_gid(gid)
    return True


def baseline_band(ax, x: np.ndarray, series: np.ndarray, gid: str, marker: str = "o") -> bool:
    """The baseline's values (``series`` [point][value, low, high]) as a grey dash-dotted line, and
    its interval as a grey band where known; ``gid`` marks the line (and ``gid``-band the band)."""
    value, low, high = series[:, 0], series[:, 1], series[:, 2]
    if not np.isfinite(value).any():
        return False
    ax.plot(x, value, color=BASELINE_COLOUR, linestyle="-.", linewidth=1.2, marker=marker, markersize=3.5,
            markerfacecolor="none", zorder=1, gid=gid)
    known = np.isfinite(low) & np.isfinite(high)
    if known.any():
        ax.fill_between(x, np.where(known, low, np.nan), np.where(known, high, np.nan), color=BAND_COLOUR, alpha=0.45,
                        linewidth=0, zorder=0, gid=f"{gid}-band")
    return True


def distinct(series: np.ndarray) -> list[int]:
    """Indices of the series with values not all equal to an earlier one's (a baseline shared by
    every checkpoint is drawn once on an across-depth panel)."""
    kept: list[int] = []
    for i, row in enumerate(series):
        if not any(np.array_equal(row, series[k], equal_nan=True) for k in kept):
            kept.append(i)
    return kept


def legend_entries(document: dict, bars: bool, band: bool) -> tuple[list, list[str]]:
    """Legend handles and labels for what a figure drew: the error bars and the baseline."""
    handles, labels = [], []
    if bars:
        handles.append(matplotlib.lines.Line2D([], [], color="0.2", marker="|", markersize=9, linestyle="none"))
        labels.append(interval_words(document, short=True))
    if band:
        handles.append(matplotlib.lines.Line2D([], [], color=BASELINE_COLOUR, linestyle="-.", linewidth=1.2))
        labels.append("baseline (grey band: its interval)")
    return handles, labels


def interval_words(document: dict, short: bool = False) -> str:
    """What the error bars are: the level, the jackknife, its G groups and the sampling unit."""
    ci = (document.get("inference") or {}).get("ci") or {}
    if not ci:
        return ""
    units = "/".join(dict.fromkeys(entry.get("sampling_unit") or "row" for entry in document["files"]))
    if short:  # a legend entry: the figure's width is the panels'
        return f"{ci['level']:.0%} jackknife interval"
    return (f"{ci['level']:.0%} intervals: {ci.get('method', 'delete-a-group jackknife')} over {ci['groups']} groups "
            f"of {units}s (seed {ci.get('seed', 0)})")


def draw(ax, document: dict, x: np.ndarray, cells: list[list[tuple[dict, str]]], name: str, values: np.ndarray,
         colours: list, markers=None, once: bool = False) -> tuple[bool, bool]:
    """A panel's uncertainty: each series' error bars (``values`` [series][point], its colour) and the
    baselines of the series (``markers`` per series; ``once``: identical baseline series drawn once).
    Returns (bars drawn, baseline drawn)."""
    lows, highs = interval_series(document, cells, name)
    bars = False
    for i, colour in enumerate(colours):
        bars |= error_bars(ax, x, values[i], lows[i], highs[i], colour, f"ci-{name}-{i}")
    base = baseline_series(cells, name)
    band = False
    for i in distinct(base) if once else range(len(cells)):
        band |= baseline_band(ax, x, base[i], f"baseline-{name}-{i}", markers[i % len(markers)] if markers else "o")
    return bars, band


def legend_room(document: dict) -> int:
    """Legend entries a figure may add (legend_entries): the error bars with --ci, the baseline with
    --baseline; counted before drawing, as the figure's legend band is sized first."""
    layers = (layer for entry in document["files"] for layer in entry["layers"])
    return bool((document.get("inference") or {}).get("ci")) + any(layer.get("baseline") for layer in layers)


def extent(document: dict, cells: list[list[tuple[dict, str]]], name: str, values: np.ndarray) -> np.ndarray:
    """Every number a panel of ``name`` draws — values, interval bounds, baselines and their bounds —
    for an axis set from its data (a probe's accuracy axis)."""
    lows, highs = interval_series(document, cells, name)
    return np.concatenate([values.ravel(), lows.ravel(), highs.ravel(), baseline_series(cells, name).ravel()])
