"""The report as one self-contained HTML page: inline SVG figures, inline CSS, no script, no URL.

Every string that reaches the page goes through :func:`esc`; every metric value is shown with
6 significant digits and carried exactly (``repr``) in the cell's ``data-value`` attribute.
"""

from __future__ import annotations

import json
import math
import re

from actgeom.cli.cells import difference_text, plus_minus
from actgeom.cli.report.document import checkpoint_label, layer_names
from actgeom.cli.report.html_text import esc, fmt
from actgeom.cli.report.page_ood import ood_tables
from actgeom.cli.report.uncertainty import interval_words

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       margin: 0 auto; max-width: 1360px; padding: 1.5rem 2rem 4rem; color: #1a1a1a; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; } h2 { font-size: 1.25rem; margin-top: 2.4rem;
     border-bottom: 1px solid #ccc; padding-bottom: 0.2rem; } h3 { font-size: 1.02rem; margin: 1.4rem 0 0.4rem; }
.lede { color: #444; margin-top: 0; }
table { border-collapse: collapse; font-size: 0.82rem; margin: 0.4rem 0 1rem; }
th, td { border: 1px solid #ddd; padding: 0.18rem 0.5rem; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
th { background: #f3f3f3; } tr:nth-child(even) td { background: #fafafa; }
td.na { color: #888; text-align: center; }
td .delta { display: block; color: #555; font-size: 0.92em; }
figure { margin: 0.6rem 0 1.6rem; } figcaption { font-size: 0.86rem; color: #333; max-width: 70rem; }
figure svg { display: block; width: 100%; height: auto; }
.why { color: #666; font-style: italic; }
.options { display: flex; flex-wrap: wrap; gap: 0 2rem; }
code { font-size: 0.86em; background: #f3f3f3; padding: 0 0.2em; }
ul.reasons { font-size: 0.82rem; color: #444; margin-top: 0; }
nav a { margin-right: 1rem; font-size: 0.9rem; }
ul.unavailable { font-size: 0.82rem; color: #555; margin: -1rem 0 1.6rem; }
.wide { overflow-x: auto; margin: 0 -1.8rem; }  /* the metric table may use the page's side padding */
#metrics td, #metrics th { font-size: 0.68rem; padding: 0.1rem 0.18rem; }
#metrics tbody td:first-child, #metrics thead th:first-child { position: sticky; left: 0; z-index: 1;
     background: #f3f3f3; box-shadow: 1px 0 0 #ddd; }
"""


def _num_cell(value) -> str:
    exact = json.dumps(value)
    return f'<td class="num" data-value="{esc(exact)}">{esc(fmt(value))}</td>'


def _table(header: list[str], rows: list[list[str]], table_id: str | None = None) -> str:
    ident = f' id="{esc(table_id)}"' if table_id else ""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(row) + "</tr>" for row in rows)
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _td(text) -> str:
    return f"<td>{esc(text)}</td>"


def build_page(document: dict, figures: list[tuple[str, str, str, str, dict]]) -> str:
    """The HTML page. ``figures``: (id, section title, caption, inline SVG or "" when absent,
    {panel: why it is not drawn}) in page order; the caption of an absent figure says why it is
    absent, and the panels not drawn are listed under their figure."""
    sections = [_header(document)]
    current = None
    for fig_id, section, caption, svg, unavailable in figures:
        if section != current:
            sections.append(f'<h2 id="{esc(_slug(section))}">{esc(section)}</h2>')
            current = section
        if svg:
            sections.append(f'<figure id="{esc(fig_id)}">{svg}<figcaption>{esc(caption)}</figcaption></figure>')
            sections.append(_unavailable_panels(fig_id, unavailable))
        else:
            sections.append(f'<p class="why" id="{esc(fig_id)}-absent">{esc(caption)}</p>')
    sections.append(ood_tables(document))  # the OOD section's tables, after its figures (the last ones); "" without --ood
    sections.append(_tables(document))
    title = f"actgeom report — {_models(document)}"
    nav = "".join(f'<a href="#{esc(_slug(s))}">{esc(s)}</a>' for s in _section_titles(figures) + ["Every metric"])
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{esc(title)}</title>"
            f"<style>{CSS}</style></head><body><nav>{nav}</nav>" + "\n".join(sections) + "</body></html>\n")


def _unavailable_panels(fig_id: str, unavailable: dict[str, str]) -> str:
    """“Not drawn: a, b — reason” lines: one per reason, for the panels a figure leaves out."""
    by_reason: dict[str, list[str]] = {}
    for title, reason in unavailable.items():
        by_reason.setdefault(reason, []).append(title)
    items = "".join(f"<li>not available: <b>{esc(', '.join(titles))}</b> — {esc(reason)}</li>"
                    for reason, titles in by_reason.items())
    return f'<ul class="unavailable" id="{esc(fig_id)}-unavailable">{items}</ul>' if items else ""


def _section_titles(figures) -> list[str]:
    titles: list[str] = []
    for _, section, *_ in figures:
        if section not in titles:
            titles.append(section)
    return titles


def _slug(text: str) -> str:
    return "sec-" + re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _models(document: dict) -> str:
    models = sorted({entry["model"] for entry in document["files"] if entry["model"]})
    return ", ".join(models) if models else "(model not recorded)"


def _header(document: dict) -> str:
    files = document["files"]
    parts = [f"<h1>actgeom report — {esc(_models(document))}</h1>",
             f'<p class="lede" id="provenance">{len(files)} checkpoint(s), {len(layer_names(document))} layer(s)'
             f"{_attention_count(document)}. Made by {esc(document['tool'])} {esc(document['version'])} on "
             f"{esc(document['created'])} in {esc(_elapsed(document))}. "
             f"Families: {esc(', '.join(document['options']))}.</p>"]
    rows = [[_td(checkpoint_label(e)), _num_cell(e["step"]), _td(e["file"]), _td(fmt(e.get("checkpoint")) or "—"),
             _num_cell(_first_rows(e)), _td(_law(e))] for e in files]
    parts.append(_table(["checkpoint", "step", "file", "checkpoint attribute", "rows", "separation law (ρ, R²)"],
                        rows, "files"))
    layer_rows = []
    for name in layer_names(document) + layer_names(document, "attention"):
        record = next(r for e in files for r in e["layers"] if r["layer"] == name)
        layer_rows.append([_td(name), _td(record["kind"]), _num_cell(record["n_rows"]), _num_cell(record["n_units"]),
                           _td(record["dtype"] or "—")])
    parts.append(_table(["layer", "kind", "rows", "units", "dtype"], layer_rows, "layers"))
    entropy = document["options"].get("entropy")
    if entropy is not None:
        parts.append(f'<p id="sample-note">Diffusion spectral entropy and DSMI are computed on a seeded sample of at most '
                     f"<b>{esc(entropy.get('subsample'))}</b> rows (seed {esc(entropy.get('seed'))}): their cost grows "
                     "as N³, so the report's default sample is 2 000 rows; <code>--subsample</code> raises it. Every other "
                     "option has the default of its own command, so each number here equals the one that command prints."
                     "</p>")
    parts.append(_inference_note(document))
    blocks = []
    for family, values in list(document["options"].items()) + [("pass", document["pass"])]:
        rows = [[_td(key), _td(json.dumps(value))] for key, value in values.items()]
        blocks.append(f"<div><h3>{esc(family)} options</h3>{_table(['option', 'value'], rows, f'options-{family}')}</div>")
    parts.append(f'<div class="options" id="options">{"".join(blocks)}</div>')
    return "\n".join(parts)


def _inference_note(document: dict) -> str:
    """What the error bars, the ± of the tables and the grey lines are (--ci, --baseline); "" without them."""
    words = interval_words(document)
    baselines = (document.get("inference") or {}).get("baseline") or []
    text = ""
    if words:
        text += (f"Error bars and “±” in the tables: {esc(words)}, value ± t·se (t of Student’s distribution with "
                 "G − 1 degrees of freedom). A point without an interval has no bar; why is listed under “Every "
                 "metric”. ")
    if baselines:
        text += (f"Grey dash-dotted lines: the same metric on the baseline dump {esc(', '.join(baselines))}; the grey "
                 "band is its interval where the baseline is also a checkpoint of this report (its record holds it). "
                 "“Δ baseline” in the table: value − baseline" + (" ± the half-width of its interval." if words else "."))
    return f'<p id="inference-note">{text}</p>' if text else ""


def _elapsed(document: dict) -> str:
    """What elapsed_s covers: from the command's start to the page assembled, figures included."""
    total = f"{document['elapsed_s']:.1f} s"
    drawing = document.get("drawing_s")
    return total if drawing is None else f"{total} (reading, computing and drawing; the figures took {drawing:.1f} s)"


def _attention_count(document: dict) -> str:
    n = len(layer_names(document, "attention"))
    return f" and {n} attention dataset(s)" if n else ""


def _first_rows(entry: dict):
    rows = [r["n_rows"] for r in entry["layers"] if r["n_rows"] is not None]
    return rows[0] if rows else None


def _law(entry: dict) -> str:
    law = entry.get("separation_law")
    if not law or law.get("rho") is None:
        return "—"
    r2 = law.get("r2")
    return f"ρ = {fmt(law['rho'])}, R² = {fmt(r2)} over {law['n_layers']} layers"


def _tables(document: dict) -> str:
    """One table: a row per metric, a column per checkpoint × layer; then the reasons for “—”."""
    files = document["files"]
    parts = [f'<h2 id="{_slug("Every metric")}">Every metric</h2>',
             '<p class="lede">Every metric of every checkpoint and layer (6 significant digits'
             + (", or value ± the half-width of its interval to the digits it leaves meaningful" if interval_words(document)
                else "")
             + "; the exact value is in <code>--results</code>). “—” marks a metric that is unavailable or not finite; "
             "the reasons follow the table.</p>"]
    records = [(index, entry, record) for index, entry in enumerate(files) for record in entry["layers"]]
    names: list[str] = []
    for _, _, record in sorted(records, key=lambda r: -len(r[2]["metrics"])):  # the fullest layer sets the order
        names += [n for n in list(record["metrics"]) + list(record["unavailable"]) if n not in names]
    top = "".join(f'<th colspan="{len(entry["layers"])}">{esc(checkpoint_label(entry))}</th>' for entry in files)
    second = "".join(f"<th>{esc(record['layer'])}</th>" for _, _, record in records)
    body = []
    for name in names:
        cells = [_td(name)]
        for index, _, record in records:
            value = record["metrics"].get(name)
            where = f'data-file="{index}" data-layer="{esc(record["layer"])}" data-metric="{esc(name)}"'
            if value is not None and not (isinstance(value, float) and not math.isfinite(value)):
                cells.append(_metric_cell(record, name, value, where))
            else:
                reason = record["unavailable"].get(name) or record["nonfinite"].get(name) or "not computed"
                cells.append(f'<td class="na" {where} title="{esc(reason)}">—</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    parts.append(f'<div class="wide"><table id="metrics"><thead><tr><th rowspan="2">metric</th>{top}</tr>'
                 f"<tr>{second}</tr></thead><tbody>{''.join(body)}</tbody></table></div>")
    parts.append(_reasons(files))
    parts.append(_top_units(document))
    return "\n".join(parts)


def _metric_cell(record: dict, name: str, value, where: str) -> str:
    """A value of the metric table: ``value ± half-width`` when it has an interval (its bounds in
    data-ci-low/-high), and under it the difference from the baseline and the permutation p-value
    (data-p-value) when there are."""
    interval = (record.get("intervals") or {}).get(name) or {}
    bounds = (interval.get("ci_low"), interval.get("ci_high"))
    exact = f'data-value="{esc(json.dumps(value))}"'
    if all(isinstance(bound, (int, float)) for bound in bounds) and isinstance(value, (int, float)):
        text = plus_minus(value, interval)
        exact += f' data-ci-low="{esc(json.dumps(bounds[0]))}" data-ci-high="{esc(json.dumps(bounds[1]))}"'
    else:
        text = fmt(value)
    found = (record.get("baseline") or {}).get(name) or {}
    delta = ""
    if found.get("difference") is not None:
        exact += f' data-baseline="{esc(json.dumps(found.get("baseline")))}"'
        delta = f'<span class="delta">Δ baseline {esc(difference_text(found))}</span>'
    null = (record.get("nulls") or {}).get(name) or {}
    if null.get("p_value") is not None:  # --null: the permutation p-value under the value
        exact += f' data-p-value="{esc(json.dumps(null["p_value"]))}"'
        delta += f'<span class="delta">p = {null["p_value"]:.3g} (K = {null["permutations"]})</span>'
    return f'<td class="num" {where} {exact}>{esc(text)}{delta}</td>'


TOP_UNIT_COLUMNS = ("firing_rows", "firing_rate", "class_selectivity", "top_classes")  # beside the ranking score, when computed


def _top_units(document: dict) -> str:
    """The neurons family's top units of each layer at the last checkpoint, by its --score."""
    entry = document["files"][-1]
    records = [record for record in entry["layers"] if record.get("neurons", {}).get("top_units")]
    if not records:
        return ""
    score = document["options"]["neurons"]["score"]
    columns = [name for name in TOP_UNIT_COLUMNS if name != score and any(name in unit for record in records
                                                                        for unit in record["neurons"]["top_units"])]
    rows = [[_td(record["layer"]), _num_cell(unit["rank"]), _num_cell(unit["unit"]), _num_cell(unit.get(score))]
            + [_num_cell(unit.get(name)) for name in columns]
            for record in records for unit in record["neurons"]["top_units"]]
    support = sorted({record["neurons"]["min_support"] for record in records} - {None})
    rule = f" among units firing on ≥ {' / '.join(map(str, support))} rows (--min-support)" if support else ""
    return (f'<h3 id="top-units-title">Top units by {esc(score)} at {esc(checkpoint_label(entry))}{esc(rule)}</h3>'
            + _table(["layer", "rank", "unit", score, *columns], rows, "top-units"))


def _reasons(files: list[dict]) -> str:
    """Unavailable and non-finite metrics, and notes, grouped by reason; where each applies is
    said once per group (“every checkpoint”, a layer at every checkpoint), not place by place."""
    grouped: dict[str, dict[str, set]] = {}  # reason → metric → {(checkpoint, layer)}
    for entry in files:
        for record in entry["layers"]:
            place = (checkpoint_label(entry), record["layer"])
            for name, reason in record["unavailable"].items():
                grouped.setdefault(reason, {}).setdefault(name, set()).add(place)
            for name, kind in record["nonfinite"].items():
                grouped.setdefault(f"value is {kind}", {}).setdefault(name, set()).add(place)
            for key, what in (("intervals_unavailable", "no interval"), ("baseline_unavailable", "no baseline"),
                              ("nulls_unavailable", "no permutation null")):
                for name, reason in (record.get(key) or {}).items():
                    grouped.setdefault(f"{what}: {reason}", {}).setdefault(name, set()).add(place)
            for note in record.get("notes", []):
                grouped.setdefault(f"note: {note}", {}).setdefault("", set()).add(place)
    if not grouped:
        return ""
    everywhere = {(checkpoint_label(entry), record["layer"]) for entry in files for record in entry["layers"]}
    checkpoints = [checkpoint_label(entry) for entry in files]
    items = []
    for reason, metrics in grouped.items():
        by_places: dict[str, list[str]] = {}
        for name, places in metrics.items():
            by_places.setdefault(_places(places, everywhere, checkpoints), []).append(name)
        text = "; ".join(f"{', '.join(n for n in names if n)} ({where})" if any(names) else where
                         for where, names in by_places.items())
        items.append(f"<li>{esc(reason)} — <b>{esc(text)}</b></li>")
    return f'<ul class="reasons" id="reasons">{"".join(items)}</ul>'


def _places(places: set, everywhere: set, checkpoints: list[str]) -> str:
    """Where a reason applies, short: “every checkpoint and layer”, “hidden3 at every checkpoint”,
    “hidden1 at epoch0000, epoch0030”."""
    if places == everywhere:
        return "every checkpoint and layer"
    layers: dict[str, list[str]] = {}
    for checkpoint, layer in sorted(places, key=lambda place: checkpoints.index(place[0])):
        layers.setdefault(layer, []).append(checkpoint)
    by_when: dict[str, list[str]] = {}
    for layer, at in layers.items():
        when = "every checkpoint" if len(at) == len(checkpoints) else ", ".join(at)
        by_when.setdefault(when, []).append(layer)
    return "; ".join(f"{', '.join(names)} at {when}" for when, names in by_when.items())
