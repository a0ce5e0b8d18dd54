"""The report's OOD tables (``report --ood``), in the page's OOD section after its figures.

AUROC of every score and NC5 per checkpoint × layer; at the last checkpoint every metric of every
score per layer. Each number in its cell's ``data-value`` exactly, as in the page's other tables (with
--ci: value ± half-width, the bounds in ``data-ci-low``/``data-ci-high``).
"""

from __future__ import annotations

import json

from actgeom.cli.cells import plus_minus
from actgeom.cli.report.document import checkpoint_label, layer_names
from actgeom.cli.report.figures_ood import SCORE_LABELS, ood_files, scores
from actgeom.cli.report.html_text import esc, fmt

MEASURES = (("auroc", "AUROC"), ("aupr_in", "AUPR-In"), ("aupr_out", "AUPR-Out"), ("fpr95", "FPR95"))


def _cell(entry_index: int, record: dict | None, name: str) -> str:
    where = f'data-file="{entry_index}" data-layer="{esc((record or {}).get("layer", ""))}" data-metric="{esc(name)}"'
    value = None if record is None else record["metrics"].get(name)
    if value is None:
        reason = "not computed" if record is None else record["unavailable"].get(name, "not computed")
        return f'<td class="na" {where} title="{esc(reason)}">—</td>'
    interval = (record.get("intervals") or {}).get(name)
    if interval is not None:  # --ci: value ± half-width, the bounds exact
        bounds = f' data-ci-low="{esc(json.dumps(interval["ci_low"]))}" data-ci-high="{esc(json.dumps(interval["ci_high"]))}"'
        return f'<td class="num" {where} data-value="{esc(json.dumps(value))}"{bounds}>{esc(plus_minus(value, interval))}</td>'
    return f'<td class="num" {where} data-value="{esc(json.dumps(value))}">{esc(fmt(value))}</td>'


def _table(table_id: str, header: list[str], rows: list[str]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def ood_tables(document: dict) -> str:
    """The OOD section's tables; "" without --ood."""
    files = ood_files(document)
    if not files:
        return ""
    names, layers = scores(document), layer_names(document)
    index = {id(entry): i for i, entry in enumerate(document["files"])}
    rows = []
    for entry in files:
        for layer in layers:
            record = next((r for r in entry["ood"]["layers"] if r["layer"] == layer), None)
            cells = "".join(_cell(index[id(entry)], record, f"{name}_auroc") for name in names)
            rows.append(f"<tr><td>{esc(checkpoint_label(entry))}</td><td>{esc(layer)}</td>{cells}"
                        f"{_cell(index[id(entry)], record, 'nc5')}</tr>")
    parts = ['<h3 id="ood-auroc-title">AUROC of each score (ID positive) and NC5, per checkpoint and layer</h3>',
             _table("ood-auroc", ["checkpoint", "layer", *(SCORE_LABELS.get(n, n) for n in names), "NC5"], rows)]
    last = files[-1]
    rows = []
    for record in last["ood"]["layers"]:
        for name in names:
            cells = "".join(_cell(index[id(last)], record, f"{name}_{measure}") for measure, _ in MEASURES)
            rows.append(f"<tr><td>{esc(record['layer'])}</td><td>{esc(SCORE_LABELS.get(name, name))}</td>{cells}</tr>")
    set_words = _rows_words(last)
    parts += [f'<h3 id="ood-last-title">Every OOD measure at {esc(checkpoint_label(last))} ({esc(set_words)})</h3>',
              _table("ood-last", ["layer", "score", *(label for _, label in MEASURES)], rows)]
    return "\n".join(parts)


def _rows_words(entry: dict) -> str:
    """Which rows were fitted and scored: the counts of the first layer and the dumps."""
    record, ood = entry["ood"]["layers"][0], entry["ood"]
    test = ood["test"] or f"a seeded {ood['fit_split']:g} share of {entry['file']} held out"
    return (f"fitted on {record['n_fit_rows']} ID rows; scored {record['n_test_rows']} ID test rows ({test}) "
            f"and {record['n_ood_rows']} OOD rows of {ood['set']}")
