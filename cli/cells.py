"""Table cells of a metric with its inference (docs/metrics.md, "Uncertainty and nulls"): value ±
half-width of its interval, its permutation p-value, its difference from a baseline."""

from __future__ import annotations

import json
import math
from pathlib import Path


def jsonable(value):
    """Plain JSON values: numpy scalars and arrays unwrapped, non-finite floats → None."""
    import numpy as np  # here, not at the top: `actgeom --help` imports no numpy

    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def flat(value) -> str:
    value = jsonable(value)
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def intervals_line(document: dict) -> dict:
    """What ± means in the table, when the document has intervals: {"intervals": text}."""
    ci = (document.get("inference") or {}).get("ci")
    if not ci:
        return {}
    units = "/".join(dict.fromkeys(file.get("sampling_unit") or "row" for file in document["files"]))
    return {"intervals": f"value ± half-width of the {ci['level']:.0%} interval ({ci['method']} over {ci['groups']} "
                         f"groups of {units}s, seed {ci['seed']})"}


def inference_shown(document: dict) -> tuple[bool, bool]:
    """Whether the table has a p-value column and a baseline-difference column per layer: when the
    document's inference turned permutation nulls / baselines on, or a layer has them."""
    turned_on = document.get("inference") or {}
    layers = [layer for file in document["files"] for layer in file["layers"]]
    return (bool(turned_on.get("null")) or any(layer.get("nulls") for layer in layers),
            bool(turned_on.get("baseline")) or any(layer.get("baseline") for layer in layers))


def layer_cells(layer: dict, column: str, reasons: dict, shown: tuple[bool, bool]) -> dict[str, dict]:
    """{metric: {table column: text}} of one layer: the value (± the half-width of its interval; a
    footnote when it has none, and "— (n)" when the metric is unavailable), and with ``shown`` its
    permutation p-value ("COLUMN p") and its difference from the baseline ("COLUMN Δ baseline"), or
    "— (n)" where the layer says why it has none.
    ``reasons`` numbers the footnotes ({reason: n}), shared by the whole table."""
    def footnote(reason: str) -> str:
        return f"({reasons.setdefault(reason, len(reasons) + 1)})"

    nulls, baseline = shown
    cells = {}
    for name, value in layer.get("metrics", {}).items():
        interval = (layer.get("intervals") or {}).get(name)
        no_interval = (layer.get("intervals_unavailable") or {}).get(name)
        text = ", ".join(flat(v) for v in value) if isinstance(value, list) else value  # per-head lists
        if interval:
            text = plus_minus(value, interval)
        elif no_interval:
            text = f"{flat(text)} {footnote(f'no interval: {no_interval}')}"
        cells[name] = {column: text}
    for name, reason in layer.get("unavailable", {}).items():
        cells[name] = {column: f"— {footnote(reason)}"}
    for name, found in cells.items():
        if nulls:
            p_value = ((layer.get("nulls") or {}).get(name) or {}).get("p_value")
            found[f"{column} p"] = _or_why("" if p_value is None else f"{p_value:.3g}", layer, "nulls", name, footnote)
        if baseline:
            text = difference_text((layer.get("baseline") or {}).get(name) or {})
            found[f"{column} Δ baseline"] = _or_why(text, layer, "baseline", name, footnote)
    return cells


def value_text(layer: dict, name: str) -> str:
    """A layer's metric as one text (summary lines): the value (± the half-width of its interval),
    with its permutation p-value and its difference from the baseline when it has them."""
    value, interval = layer["metrics"][name], (layer.get("intervals") or {}).get(name)
    text = plus_minus(value, interval) if interval else flat(value)
    null, baseline = ((layer.get(key) or {}).get(name) or {} for key in ("nulls", "baseline"))
    text += f" (p = {null['p_value']:.3g})" if null.get("p_value") is not None else ""
    return text + (f" (Δ baseline {difference_text(baseline)})" if baseline.get("difference") is not None else "")


ROUNDING = 1e-12  # a half-width below this share of the value is rounding, not sampling noise


def _or_why(text: str, layer: dict, key: str, name: str, footnote) -> str:
    """A p-value / difference cell, or "— (n)" with the reason the layer's "KEY_unavailable" gives."""
    why = (layer.get(f"{key}_unavailable") or {}).get(name)
    return text or (f"— {footnote(f'no {key}: {why}')}" if why else "")


def plus_minus(value, interval: dict, scale: float | None = None) -> str:
    """``value ± half-width`` of an interval, half-width = (ci_high − ci_low)/2 to 3 significant
    digits and the value to the same decimal place (so the digits shown are the ones that mean
    something); scientific notation when the half-width is below 1e-5 or 1e6 and over; ± 0 when
    it is within rounding (ROUNDING × the value, or × ``scale``, e.g. a difference's sides: merging
    the groups in another order moves no more).

    >>> plus_minus(0.41191413, {"ci_low": 0.38858558, "ci_high": 0.43524269})
    '0.4119 ± 0.0233'
    >>> plus_minus(4.1259655, {"ci_low": 3.874932, "ci_high": 4.376999})
    '4.126 ± 0.251'
    >>> plus_minus(123456.7, {"ci_low": 122222.0, "ci_high": 124690.0})
    '123460 ± 1230'
    >>> plus_minus(5.0e-7, {"ci_low": 4.0e-7, "ci_high": 6.2e-7})
    '5.00e-07 ± 1.10e-07'
    >>> plus_minus(0.44727614, {"ci_low": 0.44727614 - 5e-16, "ci_high": 0.44727614 + 5e-16})
    '0.447276 ± 0'
    """
    half = (interval["ci_high"] - interval["ci_low"]) / 2
    if not half > ROUNDING * (abs(value) if scale is None else scale):  # no group moves it (e.g. of the weights only)
        return f"{flat(value)} ± 0"
    exponent = math.floor(math.log10(half))
    if -5 <= exponent < 6:
        places = 2 - exponent  # the decimal place of the half-width's third significant digit
        return f"{round(value, places):.{max(places, 0)}f} ± {round(half, places):.{max(places, 0)}f}"
    magnitude = math.floor(math.log10(abs(value))) if value else exponent
    return f"{value:.{max(magnitude - exponent + 2, 0)}e} ± {half:.2e}"


def difference_text(found: dict) -> str:
    """A baseline entry as a cell: difference (± the half-width of its interval, when both sides had one)."""
    if found.get("difference") is None:
        return ""
    if found.get("difference_ci_low") is None or found.get("difference_ci_high") is None:
        return flat(found["difference"])
    interval = {"ci_low": found["difference_ci_low"], "ci_high": found["difference_ci_high"]}
    return plus_minus(found["difference"], interval, scale=abs(found["difference"]) + abs(found.get("baseline") or 0))


